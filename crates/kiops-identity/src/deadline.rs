//! The per-call deadline (`--request-timeout`, or the caller's shorter
//! `grpc-timeout`), enforced inside the gRPC-Web and CORS layers.
//!
//! tonic's own timeout sits outside every layer the server adds, so its
//! "Timeout expired" answer skipped them: a browser got a native gRPC
//! answer (content type `application/grpc`) without CORS headers, which a
//! page sees as a network error instead of a status. This layer answers
//! first, with the same status (CANCELLED, "Timeout expired"): its timer is
//! set before tonic's (tonic calls the inner service, then starts its own)
//! and tonic polls the inner answer before its timer. tonic's stays as a
//! backstop.

use crate::middleware::{Answer, Middleware};
use std::time::Duration;
use tonic::Status;
use tower::Service;

#[derive(Clone)]
pub struct Deadline {
    server: Duration,
}

impl Deadline {
    pub fn new(server: Duration) -> Self {
        Self { server }
    }
}

/// `grpc-timeout`: at most 8 digits and a unit (gRPC over HTTP/2 spec).
fn parse_grpc_timeout(v: &[u8]) -> Option<Duration> {
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b"H" => Duration::from_secs(n * 3600),
        b"M" => Duration::from_secs(n * 60),
        b"S" => Duration::from_secs(n),
        b"m" => Duration::from_millis(n),
        b"u" => Duration::from_micros(n),
        b"n" => Duration::from_nanos(n),
        _ => return None,
    })
}

impl Middleware for Deadline {
    fn call<S, B, R>(&self, next: &mut S, req: http::Request<B>) -> Answer<R, S::Error>
    where
        S: Service<http::Request<B>, Response = http::Response<R>> + Send,
        S::Future: Send + 'static,
        R: Default + Send + 'static,
    {
        let wait = req
            .headers()
            .get("grpc-timeout")
            .and_then(|v| parse_grpc_timeout(v.as_bytes()))
            .map_or(self.server, |d| d.min(self.server));
        // Started now, before tonic's timer (see the module comment).
        let sleep = tokio::time::sleep(wait);
        let fut = next.call(req);
        Box::pin(async move {
            tokio::select! {
                biased;
                res = fut => res,
                _ = sleep => {
                    // Trailers-only, as tonic answers; gRPC-Web translates it.
                    let mut res = http::Response::new(R::default());
                    res.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/grpc"),
                    );
                    let _ = Status::cancelled("Timeout expired").add_header(res.headers_mut());
                    Ok(res)
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_as_the_spec_says() {
        assert_eq!(parse_grpc_timeout(b"5S"), Some(Duration::from_secs(5)));
        assert_eq!(
            parse_grpc_timeout(b"150m"),
            Some(Duration::from_millis(150))
        );
        assert_eq!(parse_grpc_timeout(b"2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout(b"123456789S"), None);
        assert_eq!(parse_grpc_timeout(b"S"), None);
        assert_eq!(parse_grpc_timeout(b"-1S"), None);
        assert_eq!(parse_grpc_timeout(b"5x"), None);
        assert_eq!(parse_grpc_timeout(b""), None);
    }
}
