//! A tower layer that gives every gRPC request an id: the caller's
//! `x-request-id` if it is sane (≤ 128 printable ASCII), otherwise a new
//! UUIDv7. The id is put back into the request (handlers store it on audit
//! events), echoed in the response headers, and carried by a tracing span
//! around the whole call, so every log line of the request names it.

use http::HeaderValue;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tower::{Layer, Service};
use tracing::Instrument;

pub const HEADER: &str = "x-request-id";

#[derive(Clone, Default)]
pub struct RequestIdLayer;

impl<S> Layer<S> for RequestIdLayer {
    type Service = RequestId<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestId { inner }
    }
}

#[derive(Clone)]
pub struct RequestId<S> {
    inner: S,
}

fn sane(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty() && b.len() <= 128 && b.iter().all(|c| c.is_ascii_graphic())
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for RequestId<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>> + Send,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<ReqBody>) -> Self::Future {
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
        let fut = self.inner.call(req);
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
