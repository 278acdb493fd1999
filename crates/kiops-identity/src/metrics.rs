//! Prometheus metrics served on the HTTP port at `/metrics`.

use prometheus::core::Collector;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Latency buckets (seconds): sub-millisecond permission checks up to
/// password hashing and slow database calls.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Registry,
    /// gRPC requests by full method name and status code name.
    pub grpc_requests: IntCounterVec,
    /// gRPC handling time by method, until the response headers (for the
    /// one streaming RPC, until the stream starts).
    pub grpc_latency: HistogramVec,
    /// Calls refused because --max-concurrent-requests were in flight.
    pub grpc_shed: IntCounter,
    /// Password logins by result: success, failure (wrong password or unknown
    /// email), locked (the failure that locked), refused (locked or inactive
    /// account: the password was not evaluated); with a second factor (R30):
    /// second_factor (the right password, a challenge answered),
    /// second_factor_failure (a wrong or replayed code); success counts the
    /// verified ones.
    pub logins: IntCounterVec,
    /// Emails in the outbox not yet delivered.
    pub outbox_backlog: IntGauge,
    /// Database pool connections by pool and state (in_use, idle, max);
    /// refreshed on every scrape.
    pub db_pool: IntGaugeVec,
    /// PostgreSQL: statements that answered CheckPermission reads, and the
    /// reads they answered (see `store::check_batch`); copied from the
    /// store's totals on every scrape.
    pub check_batch_statements: IntCounter,
    pub check_batch_reads: IntCounter,
    /// SQLite: transactions that committed Refresh's rotations, and the
    /// rotations in them (see `store::claim_batch`); copied likewise.
    pub refresh_batch_transactions: IntCounter,
    pub refresh_batch_rotations: IntCounter,
    /// Password hashing pool: hashes run, jobs skipped because their caller
    /// had gone away (abandoned), calls refused with the queue full
    /// (overloaded); copied from the hasher's totals on every scrape.
    pub password_hashes: IntCounterVec,
    /// Two scrapes at once must not both add the same difference.
    totals_sync: std::sync::Arc<std::sync::Mutex<()>>,
}

/// `metric`, registered; the definitions are static, so they are valid.
fn registered<M: Collector + Clone + 'static>(
    registry: &Registry,
    metric: prometheus::Result<M>,
) -> M {
    let metric = metric.expect("static metric definition is valid");
    let _ = registry.register(Box::new(metric.clone()));
    metric
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    registered(registry, IntCounter::new(name, help))
}

fn counters(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    registered(registry, IntCounterVec::new(Opts::new(name, help), labels))
}

impl Metrics {
    pub fn new() -> Self {
        let registry =
            Registry::new_custom(Some("kiops_identity".into()), None).unwrap_or_default();
        let r = &registry;
        let grpc_requests = counters(
            r,
            "grpc_requests_total",
            "gRPC requests by method and status code",
            &["method", "code"],
        );
        let grpc_latency = registered(
            r,
            HistogramVec::new(
                HistogramOpts::new(
                    "grpc_request_duration_seconds",
                    "gRPC request handling time by method",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["method"],
            ),
        );
        let grpc_shed = counter(
            r,
            "grpc_requests_shed_total",
            "gRPC calls refused with RESOURCE_EXHAUSTED because the server was at its concurrency limit",
        );
        let logins = counters(r, "logins_total", "Password logins by result", &["result"]);
        let outbox_backlog = registered(
            r,
            IntGauge::new("outbox_backlog", "Emails waiting for delivery"),
        );
        let db_pool = registered(
            r,
            IntGaugeVec::new(
                Opts::new("db_pool_connections", "Database pool connections by state"),
                &["pool", "state"],
            ),
        );
        let check_batch_statements = counter(
            r,
            "check_permission_batch_statements_total",
            "Database statements that answered CheckPermission reads (PostgreSQL)",
        );
        let check_batch_reads = counter(
            r,
            "check_permission_batch_reads_total",
            "CheckPermission reads answered by batched statements (PostgreSQL)",
        );
        let refresh_batch_transactions = counter(
            r,
            "refresh_batch_transactions_total",
            "Transactions that committed Refresh's token rotations (SQLite)",
        );
        let refresh_batch_rotations = counter(
            r,
            "refresh_batch_rotations_total",
            "Refresh token rotations committed by batched transactions (SQLite)",
        );
        let password_hashes = counters(
            r,
            "password_hashes_total",
            "Password hashing jobs by result: run, abandoned (caller gone), overloaded (queue full)",
            &["result"],
        );
        Self {
            registry,
            grpc_requests,
            grpc_latency,
            grpc_shed,
            logins,
            outbox_backlog,
            db_pool,
            check_batch_statements,
            password_hashes,
            check_batch_reads,
            refresh_batch_transactions,
            refresh_batch_rotations,
            totals_sync: Default::default(),
        }
    }

    /// Records one pool reading.
    pub fn set_pool(&self, u: &crate::store::PoolUsage) {
        let in_use = u.open.saturating_sub(u.idle);
        self.db_pool
            .with_label_values(&[u.pool, "in_use"])
            .set(i64::from(in_use));
        self.db_pool
            .with_label_values(&[u.pool, "idle"])
            .set(i64::from(u.idle));
        self.db_pool
            .with_label_values(&[u.pool, "max"])
            .set(i64::from(u.max));
    }

    /// Brings the batch counters up to the store's totals (they only grow).
    pub fn set_check_batches(&self, statements: u64, reads: u64) {
        self.sync_totals([
            (&self.check_batch_statements, statements),
            (&self.check_batch_reads, reads),
        ]);
    }

    pub fn set_refresh_batches(&self, transactions: u64, rotations: u64) {
        self.sync_totals([
            (&self.refresh_batch_transactions, transactions),
            (&self.refresh_batch_rotations, rotations),
        ]);
    }

    /// Brings the hashing counters up to the hasher's totals.
    pub fn set_password_hashes(&self, stats: &crate::auth::password::HashStats) {
        use std::sync::atomic::Ordering::Relaxed;
        let c = |l: &str| self.password_hashes.with_label_values(&[l]);
        let (run, abandoned, overloaded) = (c("run"), c("abandoned"), c("overloaded"));
        self.sync_totals([
            (&run, stats.run.load(Relaxed)),
            (&abandoned, stats.abandoned.load(Relaxed)),
            (&overloaded, stats.overloaded.load(Relaxed)),
        ]);
    }

    /// Raises each counter to a total kept elsewhere.
    fn sync_totals<const N: usize>(&self, totals: [(&IntCounter, u64); N]) {
        let _one_at_a_time = self
            .totals_sync
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (c, total) in totals {
            c.inc_by(total.saturating_sub(c.get()));
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
