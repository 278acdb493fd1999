//! Requests that cannot be read are the caller's fault: a body that breaks
//! off mid-chunk, bad base64 in a grpc-web-text body, or bytes that are no
//! protobuf message are refused with INVALID_ARGUMENT (reason
//! `INVALID_ARGUMENT`), not with the INTERNAL tonic and tonic-web give them
//! (and without their messages, which quote hyper's and the decoder's
//! internals). Sits inside the gRPC-Web layer so browsers get the same.

use crate::domain::DomainError;
use http_body_util::BodyExt;
use std::task::{Context, Poll};
use tonic::body::Body;
use tonic::Status;
use tower::{Layer, Service};

/// What tonic-prost says when a message does not decode (percent-encoded,
/// as it is in `grpc-message`).
const DECODE_FAILED: &str = "failed%20to%20decode%20Protobuf%20message";

fn unreadable() -> Status {
    DomainError::invalid(
        "request",
        "the request body is not a well-formed gRPC or gRPC-Web message",
    )
    .into()
}

#[derive(Clone, Copy, Default)]
pub struct RequestBodyLayer;

impl<S> Layer<S> for RequestBodyLayer {
    type Service = RequestBody<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestBody { inner }
    }
}

#[derive(Clone)]
pub struct RequestBody<S> {
    inner: S,
}

impl<S, R> Service<http::Request<Body>> for RequestBody<S>
where
    S: Service<http::Request<Body>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let req = req.map(|b| {
            Body::new(b.map_err(|e: Status| {
                tracing::debug!(error = %e, "unreadable request body");
                unreadable()
            }))
        });
        let fut = self.inner.call(req);
        Box::pin(async move {
            let mut res = fut.await?;
            // A message that does not decode, answered trailers-only.
            let headers = res.headers_mut();
            let undecodable = headers.get("grpc-status").is_some_and(|v| v == "13")
                && headers
                    .get("grpc-message")
                    .is_some_and(|m| m.as_bytes().starts_with(DECODE_FAILED.as_bytes()));
            if undecodable {
                headers.remove("grpc-message");
                headers.remove("grpc-status-details-bin");
                let _ = unreadable().add_header(headers);
            }
            Ok(res)
        })
    }
}
