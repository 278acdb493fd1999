//! Load shedding: at most N gRPC calls run at once across all connections;
//! the next one is answered RESOURCE_EXHAUSTED at once. Queueing instead
//! would let a burst grow memory and latency without bound, and a client
//! that is told "not now" can back off or try another replica.
//!
//! Rules: H9 (docs/rules.md).

use crate::domain::error::{reason, ERROR_DOMAIN};
use crate::metrics::Metrics;
use crate::middleware::{Answer, Middleware};
use std::sync::Arc;
use tokio::sync::Semaphore;
use tower::Service;

/// The permit a call was admitted with, in its request's extensions, so a
/// stream can keep it for as long as it stays open.
#[derive(Clone)]
pub struct CallPermit(Arc<std::sync::Mutex<Option<tokio::sync::OwnedSemaphorePermit>>>);

impl CallPermit {
    pub fn take(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.0.lock().ok().and_then(|mut p| p.take())
    }
}

/// The middleware (`middleware::Layered::new(Shed::new(..))` is the layer).
#[derive(Clone)]
pub struct Shed {
    permits: Arc<Semaphore>,
    metrics: Metrics,
}

impl Shed {
    /// `permits` is shared with the streams (`stream_limits`), which hold
    /// one each for as long as they are open.
    pub fn new(permits: Arc<Semaphore>, metrics: Metrics) -> Self {
        Self { permits, metrics }
    }
}

/// The refusal, as a trailers-only gRPC response with an ErrorInfo reason.
fn overloaded<B: Default>() -> http::Response<B> {
    use tonic_types::{ErrorDetails, StatusExt};
    let details = ErrorDetails::with_error_info(
        reason::OVERLOADED,
        ERROR_DOMAIN,
        std::collections::HashMap::new(),
    );
    tonic::Status::with_error_details(
        tonic::Code::ResourceExhausted,
        "the server is at its concurrency limit; retry with backoff",
        details,
    )
    .into_http()
}

impl Middleware for Shed {
    fn call<S, B, R>(&self, next: &mut S, req: http::Request<B>) -> Answer<R, S::Error>
    where
        S: Service<http::Request<B>, Response = http::Response<R>> + Send,
        S::Future: Send + 'static,
        R: Default + Send + 'static,
    {
        // Health checks are never shed: an orchestrator that saw them fail
        // would restart a replica that is merely busy.
        if req.uri().path().starts_with("/grpc.health.v1.Health/") {
            return Box::pin(next.call(req));
        }
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            self.metrics.grpc_shed.inc();
            return Box::pin(async { Ok(overloaded()) });
        };
        let permit = CallPermit(Arc::new(std::sync::Mutex::new(Some(permit))));
        let mut req = req;
        req.extensions_mut().insert(permit.clone());
        let fut = next.call(req);
        Box::pin(async move {
            let res = fut.await;
            // Held until the handler has answered, unless a stream took it
            // to hold for its life (`stream_limits`).
            drop(permit);
            res
        })
    }
}
