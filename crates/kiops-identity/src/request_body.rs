//! Requests that cannot be read are the caller's fault: a body that breaks
//! off mid-chunk, bad base64 in a grpc-web-text body, bytes that are no
//! protobuf message, or no message at all are refused with INVALID_ARGUMENT
//! (reason `INVALID_ARGUMENT`), not with the INTERNAL tonic and tonic-web
//! give them (and without their messages, which quote hyper's and the
//! decoder's internals). The innermost layer: browsers get the same answer
//! through gRPC-Web, and the metrics count the answer the caller gets.

use crate::domain::DomainError;
use http_body_util::BodyExt;
use std::task::{Context, Poll};
use tonic::body::Body;
use tonic::Status;
use tower::{Layer, Service};

/// Whether a trailers-only INTERNAL answer is tonic's or tonic-web's
/// refusal of an unreadable request (its message, decoded).
fn is_unreadable(message: &str) -> bool {
    message.starts_with("failed to decode Protobuf message")
        || message == "Missing request message."
        || message.starts_with("tonic-web: ")
}

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
            // A request refused as unreadable, answered trailers-only. Cheap
            // test first: this runs on every answer.
            let headers = res.headers_mut();
            let undecodable = headers.get("grpc-status").is_some_and(|v| v == "13")
                && Status::from_header_map(headers).is_some_and(|st| is_unreadable(st.message()));
            if undecodable {
                headers.remove("grpc-message");
                headers.remove("grpc-status-details-bin");
                let _ = unreadable().add_header(headers);
            }
            Ok(res)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreadable_requests_are_told_apart_from_real_internal_errors() {
        for m in [
            "tonic-web: Invalid symbol 33, offset 0.",
            "Missing request message.",
            "failed to decode Protobuf message: invalid tag value: 0",
        ] {
            assert!(is_unreadable(m), "{m}");
        }
        assert!(!is_unreadable("database on fire"));
        assert_eq!(unreadable().code(), tonic::Code::InvalidArgument);
        assert!(
            !unreadable().details().is_empty(),
            "ErrorInfo and BadRequest"
        );
    }
}
