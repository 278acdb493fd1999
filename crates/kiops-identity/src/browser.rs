//! Browser access on the gRPC port: gRPC-Web (binary and text, HTTP/1.1 and
//! HTTP/2) translated to gRPC in front of the services, and CORS for an
//! explicit allow-list of origins.
//!
//! Credentials travel only in the `authorization` header, never in cookies,
//! and CORS never allows credentials: a page on another site cannot make the
//! browser attach anything the server would accept, so there is no CSRF
//! surface to defend. An origin that is not on the list gets no CORS headers,
//! and the browser keeps the answer from the page.

use crate::api::status::clip;
use crate::domain::DomainError;
use http::header::{HeaderName, AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderValue, Method};
use std::time::Duration;
use tower_http::cors::{AllowOrigin, CorsLayer};

pub use tonic_web::GrpcWebLayer;

/// Request headers a gRPC-Web client sends (the grpc-web and Connect
/// libraries' own, the deadline, and our request id).
const ALLOWED_HEADERS: [&str; 6] = [
    "x-grpc-web",
    "x-user-agent",
    "grpc-timeout",
    "x-request-id",
    "authorization",
    "content-type",
];

/// Response headers a browser page may read: without them it sees neither
/// the status nor the `google.rpc.Status` details with the ErrorInfo reason.
const EXPOSED_HEADERS: [&str; 4] = [
    "grpc-status",
    "grpc-message",
    "grpc-status-details-bin",
    "x-request-id",
];

/// How long a browser may cache a preflight answer.
const PREFLIGHT_MAX_AGE: Duration = Duration::from_secs(600);

/// The CORS layer for `origins`, or none when the list is empty (then no
/// answer carries CORS headers and cross-origin pages are refused by their
/// browser, as before).
pub fn cors_layer(origins: &[HeaderValue]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let headers = |names: &[&'static str]| -> Vec<HeaderName> {
        names.iter().map(|n| HeaderName::from_static(n)).collect()
    };
    debug_assert!(headers(&ALLOWED_HEADERS).contains(&AUTHORIZATION));
    debug_assert!(headers(&ALLOWED_HEADERS).contains(&CONTENT_TYPE));
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins.iter().cloned()))
            .allow_methods([Method::POST])
            .allow_headers(headers(&ALLOWED_HEADERS))
            .expose_headers(headers(&EXPOSED_HEADERS))
            .allow_credentials(false)
            .max_age(PREFLIGHT_MAX_AGE),
    )
}

/// Parses one allowed origin as a browser sends it in `Origin`:
/// `http(s)://host[:port]`, lower-cased, without a default port, path,
/// query or wildcard.
pub fn parse_origin(raw: &str) -> Result<HeaderValue, String> {
    let s = raw.trim();
    let fail = |why: &str| {
        Err(format!(
            "{s:?} is not an origin ({why}); expected scheme://host[:port], e.g. https://console.example.com"
        ))
    };
    if s == "*" || s.eq_ignore_ascii_case("null") {
        return fail("wildcards and null are not allowed: list each origin");
    }
    let Ok(uri) = s.parse::<http::Uri>() else {
        return fail("not a URL");
    };
    let scheme = match uri.scheme_str() {
        Some("http") => "http",
        Some("https") => "https",
        _ => return fail("the scheme must be http or https"),
    };
    let Some(authority) = uri.authority() else {
        return fail("no host");
    };
    if authority.as_str().contains('@') {
        return fail("user information is not part of an origin");
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return fail("an origin has no path or query");
    }
    let host = authority.host().to_ascii_lowercase();
    if host.is_empty() || host.contains('*') {
        return fail("no host");
    }
    let default_port = if scheme == "https" { 443 } else { 80 };
    let origin = match authority.port_u16() {
        Some(p) if p != default_port => format!("{scheme}://{host}:{p}"),
        _ => format!("{scheme}://{host}"),
    };
    HeaderValue::from_str(&origin).or_else(|_| fail("not a header value"))
}

/// Calls refused before any handler ran because their body is not a gRPC
/// message (grpc-web-text that is not base64, a malformed frame, no message
/// at all) come back from tonic-web and tonic as INTERNAL, which tells the
/// caller "our fault" and counts as a server error. They are the caller's:
/// this turns them into INVALID_ARGUMENT on `body` with the service's
/// ErrorInfo, like every other bad input. Other answers are not touched.
pub fn undecodable_as_invalid<B>(mut res: http::Response<B>) -> http::Response<B> {
    // Cheap test first: this runs on every answer.
    if res.headers().get("grpc-status").map(|v| v.as_bytes()) != Some(b"13") {
        return res;
    }
    let Some(status) = tonic::Status::from_header_map(res.headers()) else {
        return res;
    };
    let message = status.message();
    let why = if message == "Missing request message." {
        "holds no request message".to_string()
    } else if let Some(detail) = message.strip_prefix("tonic-web: ") {
        format!("is not gRPC-Web: {}", clip(detail, 100))
    } else {
        return res;
    };
    let fixed: tonic::Status = DomainError::invalid("body", why).into();
    let headers = res.headers_mut();
    headers.remove("grpc-status-details-bin");
    if fixed.add_header(headers).is_err() {
        headers.insert("grpc-status", HeaderValue::from_static("3"));
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_normalised_as_browsers_send_them() {
        let ok = |s: &str| parse_origin(s).map(|v| v.to_str().unwrap_or("").to_string());
        assert_eq!(
            ok("https://Console.Example.com").as_deref(),
            Ok("https://console.example.com")
        );
        assert_eq!(
            ok("https://console.example.com/").as_deref(),
            Ok("https://console.example.com")
        );
        assert_eq!(
            ok("https://c.example:443").as_deref(),
            Ok("https://c.example")
        );
        assert_eq!(
            ok("http://localhost:8080").as_deref(),
            Ok("http://localhost:8080")
        );
        assert_eq!(
            ok(" http://127.0.0.1:80 ").as_deref(),
            Ok("http://127.0.0.1")
        );
        assert_eq!(ok("http://[::1]:3000").as_deref(), Ok("http://[::1]:3000"));
    }

    #[test]
    fn wildcards_paths_and_other_schemes_are_refused() {
        for bad in [
            "*",
            "null",
            "",
            "console.example.com",
            "ftp://x.example",
            "https://x.example/app",
            "https://x.example?a=1",
            "https://user@x.example",
            "https://*.example.com",
        ] {
            assert!(parse_origin(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn undecodable_bodies_are_invalid_arguments_not_internal() {
        let answer = |status: tonic::Status| {
            let mut res = http::Response::new(());
            status.add_header(res.headers_mut()).expect("headers");
            let res = undecodable_as_invalid(res);
            tonic::Status::from_header_map(res.headers()).expect("a status")
        };
        for m in [
            "tonic-web: Invalid symbol 33, offset 0.",
            "Missing request message.",
        ] {
            let st = answer(tonic::Status::internal(m));
            assert_eq!(st.code(), tonic::Code::InvalidArgument, "{m}");
            assert!(!st.details().is_empty(), "{m}: ErrorInfo and BadRequest");
        }
        // A real internal error stays what it is.
        let st = answer(tonic::Status::internal("database on fire"));
        assert_eq!(st.code(), tonic::Code::Internal);
        assert_eq!(st.message(), "database on fire");
    }

    #[test]
    fn no_origins_means_no_cors_layer() {
        assert!(cors_layer(&[]).is_none());
        assert!(cors_layer(&[HeaderValue::from_static("https://a.example")]).is_some());
    }
}
