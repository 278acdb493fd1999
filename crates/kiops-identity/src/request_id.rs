//! A tower layer that gives every gRPC request an id: the caller's
//! `x-request-id` if it is sane (≤ 128 printable ASCII), otherwise a new
//! UUIDv7. The id is put back into the request (handlers store it on audit
//! events), echoed in the response headers, and carried by a tracing span
//! around the whole call, so every log line of the request names it.

use crate::middleware::{Answer, Middleware};
use http::HeaderValue;
use tower::Service;
use tracing::Instrument;

pub const HEADER: &str = "x-request-id";

/// The middleware (`middleware::Layered::new(RequestId)` is the layer).
#[derive(Clone, Default)]
pub struct RequestId;

fn sane(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_graphic())
}

impl Middleware for RequestId {
    fn call<S, B, R>(&self, next: &mut S, mut req: http::Request<B>) -> Answer<R, S::Error>
    where
        S: Service<http::Request<B>, Response = http::Response<R>> + Send,
        S::Future: Send + 'static,
        R: Default + Send + 'static,
    {
        let id = match req.headers().get(HEADER) {
            Some(v) if sane(v) => v.clone(),
            _ => HeaderValue::from_str(&uuid::Uuid::now_v7().to_string())
                .unwrap_or_else(|_| HeaderValue::from_static("invalid")),
        };
        req.headers_mut().insert(HEADER, id.clone());
        let method = req.uri().path();
        let request_id = id.to_str().unwrap_or_default();
        let span = if crate::telemetry::exporting() {
            let span = tracing::info_span!(
                "rpc",
                method = %method,
                request_id = %request_id,
                // Read by the OpenTelemetry layer.
                otel.name = %method,
                otel.kind = "server",
            );
            // The caller's trace, continued in the exported one.
            if req.headers().contains_key("traceparent") {
                use tracing_opentelemetry::OpenTelemetrySpanExt;
                let _ = span.set_parent(crate::telemetry::parent_context(req.headers()));
            }
            span
        } else {
            tracing::info_span!("rpc", method = %method, request_id = %request_id)
        };
        let fut = next.call(req);
        Box::pin(
            async move {
                let mut res = fut.await;
                if let Ok(r) = &mut res {
                    r.headers_mut().insert(HEADER, id);
                }
                res
            }
            .instrument(span),
        )
    }
}
