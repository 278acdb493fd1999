//! A tower layer counting gRPC requests by method and status code, and
//! timing them by method.

use crate::metrics::Metrics;
use crate::middleware::{Answer, Middleware};
use tower::Service;

/// The middleware (`middleware::Layered::new(GrpcMetrics::new(..))` is the
/// layer).
#[derive(Clone)]
pub struct GrpcMetrics {
    metrics: Metrics,
}

impl GrpcMetrics {
    pub fn new(metrics: Metrics) -> Self {
        Self { metrics }
    }
}

fn code_name(code: &str) -> &'static str {
    match code {
        "0" => "OK",
        "1" => "CANCELLED",
        "2" => "UNKNOWN",
        "3" => "INVALID_ARGUMENT",
        "4" => "DEADLINE_EXCEEDED",
        "5" => "NOT_FOUND",
        "6" => "ALREADY_EXISTS",
        "7" => "PERMISSION_DENIED",
        "8" => "RESOURCE_EXHAUSTED",
        "9" => "FAILED_PRECONDITION",
        "10" => "ABORTED",
        "11" => "OUT_OF_RANGE",
        "12" => "UNIMPLEMENTED",
        "13" => "INTERNAL",
        "14" => "UNAVAILABLE",
        "15" => "DATA_LOSS",
        "16" => "UNAUTHENTICATED",
        _ => "UNKNOWN",
    }
}

impl Middleware for GrpcMetrics {
    fn call<S, B, R>(&self, next: &mut S, req: http::Request<B>) -> Answer<R, S::Error>
    where
        S: Service<http::Request<B>, Response = http::Response<R>> + Send,
        S::Future: Send + 'static,
        R: Default + Send + 'static,
    {
        let method = req.uri().path().to_string();
        let metrics = self.metrics.clone();
        let fut = next.call(req);
        Box::pin(async move {
            let started = std::time::Instant::now();
            let res = fut.await;
            let elapsed = started.elapsed().as_secs_f64();
            if let Ok(resp) = &res {
                // Errors are sent "trailers-only", with grpc-status in the
                // headers; a response without it went on to stream a body.
                let code = resp
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .map(code_name)
                    .unwrap_or("OK");
                // Paths come from the client: an unknown one (answered
                // UNIMPLEMENTED) must not become a new label value, or anyone
                // could grow the registry without bound.
                let method = if code == "UNIMPLEMENTED" {
                    "other"
                } else {
                    method.as_str()
                };
                metrics
                    .grpc_latency
                    .with_label_values(&[method])
                    .observe(elapsed);
                // The access log: inside the request's `rpc` span, so it
                // carries the method and request id. Debug level, since at
                // full load it is one line per call
                // (RUST_LOG=info,kiops_identity=debug turns it on).
                tracing::debug!(code, ms = elapsed * 1000.0, "rpc finished");
                metrics
                    .grpc_requests
                    .with_label_values(&[method, code])
                    .inc();
            }
            res
        })
    }
}
