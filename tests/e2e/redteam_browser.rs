//! Red team on issue 23: gRPC-Web on the gRPC port and CORS. Every test
//! talks raw HTTP/1.1 to the real binary (what a browser, or an attacker
//! pretending to be one, can send) and asserts a guarantee that holds for
//! native gRPC: size and load limits, the login throttle and lockout, the
//! audit peer, sessions and streams that end, CORS answering only the exact
//! listed origins, and a server that refuses malformed HTTP/1.1 clearly
//! (a 4xx or a gRPC status other than INTERNAL/UNKNOWN, no panic, no hang)
//! and keeps serving native gRPC afterwards.

use crate::support::*;
use base64::Engine;
use kiops_proto::v1::*;
use prost::Message;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::{Code, Status};

crate::both_backends!(
    a_huge_text_body_is_refused_without_buffering_it,
    extra_messages_after_a_unary_request_are_not_buffered,
    a_stalled_body_ends_at_the_request_timeout,
    a_malformed_text_body_is_a_client_error,
    cors_answers_only_the_exact_listed_origins,
    without_the_flag_no_answer_carries_cors_headers,
    cookies_never_authenticate,
    load_shedding_holds_for_http1_connections,
    forwarded_for_from_an_untrusted_peer_changes_nothing,
    lockout_is_exact_across_grpc_web_and_native,
    revoked_session_and_refresh_token_are_refused_over_grpc_web,
    a_grpc_web_stream_ends_with_the_session,
    malformed_http1_is_refused_clearly,
    slowloris_headers_are_cut_off,
    closed_http1_streams_give_their_slot_back,
);

const ORIGIN: &str = "https://console.example.com";
const GRPC_WEB: &str = "application/grpc-web+proto";
const GRPC_WEB_TEXT: &str = "application/grpc-web-text";

/// One raw HTTP/1.1 answer.
#[derive(Debug, Default)]
struct Raw {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// The connection closed before a complete answer (or none at all).
    cut: bool,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn has_cors(&self) -> bool {
        self.headers
            .iter()
            .any(|(k, _)| k.to_ascii_lowercase().starts_with("access-control-"))
    }

    /// The gRPC status of a gRPC-Web answer (headers of a trailers-only
    /// answer, or the trailer frame), with its details.
    fn grpc(&self, _text: bool) -> (Option<Status>, Vec<Vec<u8>>) {
        // The answer's encoding follows its content type (tonic-web picks
        // it from the request's Accept).
        let text = self
            .header("content-type")
            .is_some_and(|t| t.starts_with(GRPC_WEB_TEXT));
        let body = if text {
            b64_groups(&self.body)
        } else {
            self.body.clone()
        };
        let mut fields: Vec<(String, String)> = self.headers.clone();
        let mut messages = Vec::new();
        let mut rest = &body[..];
        while rest.len() >= 5 {
            let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
            let end = (5 + len).min(rest.len());
            let payload = &rest[5..end];
            if rest[0] & 0x80 != 0 {
                for line in String::from_utf8_lossy(payload).split("\r\n") {
                    if let Some((k, v)) = line.split_once(':') {
                        fields.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
                    }
                }
            } else {
                messages.push(payload.to_vec());
            }
            rest = &rest[end..];
        }
        let get = |n: &str| {
            fields
                .iter()
                .rev()
                .find(|(k, _)| k.eq_ignore_ascii_case(n))
                .map(|(_, v)| v.clone())
        };
        let status = get("grpc-status").map(|c| {
            let code = Code::from(c.parse::<i32>().unwrap_or(2));
            let msg = get("grpc-message").unwrap_or_default();
            let details = get("grpc-status-details-bin")
                .map(|d| lenient_b64(d.as_bytes()))
                .unwrap_or_default();
            Status::with_details(code, msg, details.into())
        });
        (status, messages)
    }
}

fn lenient_b64(s: &[u8]) -> Vec<u8> {
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    engine.decode(s).unwrap_or_default()
}

/// grpc-web-text answers are separately padded base64 pieces: every group
/// of four characters decodes on its own.
fn b64_groups(s: &[u8]) -> Vec<u8> {
    let clean: Vec<u8> = s
        .iter()
        .copied()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    clean.chunks(4).flat_map(lenient_b64).collect()
}

fn b64(data: &[u8]) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .encode(data)
        .into_bytes()
}

/// One gRPC message frame.
fn frame(msg: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8];
    f.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    f.extend_from_slice(msg);
    f
}

/// Parses what the server wrote on a `Connection: close` exchange.
fn parse(mut raw: &[u8]) -> Raw {
    // Interim answers (100 Continue) come before the real one.
    while raw.starts_with(b"HTTP/1.1 1") {
        match raw.windows(4).position(|w| w == b"\r\n\r\n") {
            Some(end) => raw = &raw[end + 4..],
            None => break,
        }
    }
    let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Raw {
            cut: true,
            status: status_of(raw),
            ..Default::default()
        };
    };
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.split("\r\n");
    let status = status_of(lines.next().unwrap_or("").as_bytes());
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut rest = &raw[split + 4..];
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let mut body = Vec::new();
    let mut cut = false;
    if chunked {
        loop {
            let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") else {
                cut = true;
                break;
            };
            let size = usize::from_str_radix(
                String::from_utf8_lossy(&rest[..eol])
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .trim(),
                16,
            )
            .unwrap_or(0);
            rest = &rest[eol + 2..];
            if size == 0 {
                break;
            }
            if rest.len() < size {
                body.extend_from_slice(rest);
                cut = true;
                break;
            }
            body.extend_from_slice(&rest[..size]);
            rest = &rest[(size + 2).min(rest.len())..];
        }
    } else {
        body = rest.to_vec();
    }
    Raw {
        status,
        headers,
        body,
        cut,
    }
}

fn status_of(line: &[u8]) -> u16 {
    String::from_utf8_lossy(line)
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// Writes `request` and reads until the server closes (or `wait` passes:
/// then `None`, the server held the connection).
async fn exchange(s: &TestServer, request: &[u8], wait: Duration) -> Option<Raw> {
    let mut c = TcpStream::connect(s.grpc).await.expect("connect");
    let _ = c.write_all(request).await;
    read_all(&mut c, wait).await.map(|b| parse(&b))
}

async fn read_all(c: &mut TcpStream, wait: Duration) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    read_into(c, &mut out, wait).await.then_some(out)
}

/// Reads into `out` until the server closes (true) or `wait` passes (false).
async fn read_into(c: &mut TcpStream, out: &mut Vec<u8>, wait: Duration) -> bool {
    tokio::time::timeout(wait, async {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match c.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .is_ok()
}

/// A gRPC-Web POST (HTTP/1.1, `Connection: close`).
fn web_request(path: &str, text: bool, headers: &[(&str, &str)], msg: &[u8]) -> Vec<u8> {
    let body = if text { b64(&frame(msg)) } else { frame(msg) };
    let mut r = head(path, text, headers, Some(body.len()));
    r.extend_from_slice(&body);
    r
}

fn head(path: &str, text: bool, headers: &[(&str, &str)], len: Option<usize>) -> Vec<u8> {
    let mut r = format!(
        "POST {path} HTTP/1.1\r\nHost: identity.test\r\nContent-Type: {}\r\nX-Grpc-Web: 1\r\nConnection: close\r\n",
        if text { GRPC_WEB_TEXT } else { GRPC_WEB }
    );
    if let Some(len) = len {
        r.push_str(&format!("Content-Length: {len}\r\n"));
    }
    for (k, v) in headers {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    r.push_str("\r\n");
    r.into_bytes()
}

/// One unary gRPC-Web call: (HTTP answer, gRPC status, messages).
async fn web_call(
    s: &TestServer,
    path: &str,
    text: bool,
    headers: &[(&str, &str)],
    msg: &impl Message,
) -> (Raw, Status, Vec<Vec<u8>>) {
    let raw = exchange(
        s,
        &web_request(path, text, headers, &msg.encode_to_vec()),
        Duration::from_secs(30),
    )
    .await
    .expect("the server answered within 30 s");
    let (status, messages) = raw.grpc(text);
    let status = status.unwrap_or_else(|| {
        let tail = &raw.body[raw.body.len().saturating_sub(80)..];
        panic!(
            "no grpc-status: HTTP {} {:?} cut {} body {} bytes ending {:?}",
            raw.status,
            raw.headers,
            raw.cut,
            raw.body.len(),
            String::from_utf8_lossy(tail)
        )
    });
    (raw, status, messages)
}

const LOGIN: &str = "/kiops.identity.v1.AuthService/Login";

fn login_msg(email: &str, password: &str) -> LoginRequest {
    LoginRequest {
        email: email.into(),
        password: password.into(),
        organization_id: None,
    }
}

/// The server's resident memory in KiB.
fn rss_kib(s: &TestServer) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", s.child.id()))
        .expect("server /proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

/// After an attack: the server still answers native gRPC and never panicked.
async fn still_serving(s: &TestServer) {
    let jwks = tokio::time::timeout(Duration::from_secs(20), async {
        s.auth().await.get_jwks(GetJwksRequest {}).await
    })
    .await
    .expect("native gRPC answers after the attack");
    assert!(jwks.is_ok(), "{jwks:?}");
    assert!(!s.logs().contains("panicked"), "{}", s.logs());
}

fn not_internal(st: &Status, what: &str) {
    assert!(
        !matches!(st.code(), Code::Internal | Code::Unknown),
        "{what}: {st:?}"
    );
}

/// Streams `total` bytes of body after `head`, watching the server's RSS;
/// returns (the answer, the peak RSS growth in MiB).
async fn send_big(
    s: &TestServer,
    head: Vec<u8>,
    first: Vec<u8>,
    fill: u8,
    total: usize,
) -> (Option<Raw>, u64) {
    let base = rss_kib(s);
    let mut c = TcpStream::connect(s.grpc).await.expect("connect");
    let (mut rd, mut wr) = c.split();
    let writer = async {
        let _ = wr.write_all(&head).await;
        let _ = wr.write_all(&first).await;
        let block = vec![fill; 1 << 20];
        let mut sent = first.len();
        while sent < total {
            let n = block.len().min(total - sent);
            if wr.write_all(&block[..n]).await.is_err() {
                break;
            }
            sent += n;
        }
    };
    let reader = async {
        let mut out = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        let _ = tokio::time::timeout(Duration::from_secs(120), async {
            loop {
                match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => out.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        out
    };
    let mut peak = base;
    let watcher = async {
        loop {
            peak = peak.max(rss_kib(s));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let (_, out) = tokio::select! {
        r = async { tokio::join!(writer, reader) } => r,
        _ = watcher => unreachable!(),
    };
    peak = peak.max(rss_kib(s));
    let raw = (!out.is_empty()).then(|| parse(&out));
    (raw, (peak.saturating_sub(base)) / 1024)
}

/// --max-request-bytes over grpc-web-text: a 200 MB base64 body whose
/// frame announces a 150 MB message must be refused from the announced
/// length, not decoded into memory first.
async fn a_huge_text_body_is_refused_without_buffering_it(backend: Backend) {
    let s = TestServer::start(backend).await;
    let mut prefix = vec![0u8];
    prefix.extend_from_slice(&(150u32 << 20).to_be_bytes());
    prefix.extend_from_slice(&[0; 4]); // 9 bytes: whole base64 groups
    let first = b64(&prefix);
    let total = 200 << 20;
    let (raw, grew) = send_big(&s, head(LOGIN, true, &[], Some(total)), first, b'A', total).await;
    println!("200 MB grpc-web-text body: RSS grew {grew} MiB; answer {raw:?}");
    assert!(grew < 64, "the server buffered the body: +{grew} MiB");
    if let Some(raw) = raw {
        if let (Some(st), _) = raw.grpc(true) {
            not_internal(&st, "oversized text body");
        }
    }
    still_serving(&s).await;
}

/// A valid Login followed by 200 MB of further frames, each under the cap
/// (a unary call has one message): the rest must not pile up in memory.
async fn extra_messages_after_a_unary_request_are_not_buffered(backend: Backend) {
    let s = TestServer::start(backend).await;
    let login = login_msg("nobody@example.com", "wrong password").encode_to_vec();
    let mut first = frame(&login);
    // A 200 KiB message of zeros, then zero-length frames (zeros) to the end.
    first.extend_from_slice(&[0u8, 0, 3, 32, 0]); // 0x032000 = 204800 bytes
    let total = 200 << 20;
    let (raw, grew) = send_big(&s, head(LOGIN, false, &[], Some(total)), first, 0, total).await;
    println!("unary + 200 MB of extra frames: RSS grew {grew} MiB");
    assert!(
        grew < 64,
        "the server buffered the extra frames: +{grew} MiB"
    );
    if let Some(raw) = raw {
        if let (Some(st), _) = raw.grpc(false) {
            not_internal(&st, "extra frames");
        }
    }
    still_serving(&s).await;
}

/// A body that stops arriving: the call ends at --request-timeout with a
/// gRPC status (the connection is not held forever), and that answer is a
/// gRPC-Web one with the CORS headers, or a browser page sees a network
/// error instead of DEADLINE_EXCEEDED/CANCELLED.
async fn a_stalled_body_ends_at_the_request_timeout(backend: Backend) {
    let s = TestServer::start_with(
        backend,
        ServerOptions {
            extra_args: vec![
                "--request-timeout".into(),
                "2".into(),
                "--cors-allowed-origins".into(),
                ORIGIN.into(),
            ],
            ..Default::default()
        },
    )
    .await;
    let msg = frame(&login_msg("a@example.com", "x").encode_to_vec());
    // The server's timeout, and a caller's shorter grpc-timeout (which
    // tonic's own timer also watches, started at the same moment).
    for (text, timeout) in [
        (false, None),
        (true, None),
        (false, Some("700m")),
        (true, Some("1S")),
    ] {
        let body = if text { b64(&msg) } else { msg.clone() };
        let mut c = TcpStream::connect(s.grpc).await.expect("connect");
        let mut headers = vec![("Origin", ORIGIN)];
        if let Some(t) = timeout {
            headers.push(("grpc-timeout", t));
        }
        c.write_all(&head(LOGIN, text, &headers, Some(body.len() + 100)))
            .await
            .expect("write");
        c.write_all(&body[..4]).await.expect("write");
        let started = Instant::now();
        let out = read_all(&mut c, Duration::from_secs(15))
            .await
            .expect("the stalled call ended within 15 s");
        let took = started.elapsed();
        let raw = parse(&out);
        println!("stalled body (text={text}) ended after {took:?}: {raw:?}");
        if !out.is_empty() {
            assert!(
                raw.header("content-type")
                    .is_some_and(|t| t.starts_with("application/grpc-web")),
                "a gRPC-Web call answered in native gRPC: {raw:?}"
            );
            assert_eq!(
                raw.header("access-control-allow-origin"),
                Some(ORIGIN),
                "the timeout answer lacks CORS headers: {raw:?}"
            );
        }
        if let (Some(st), _) = raw.grpc(text) {
            not_internal(&st, "stalled body");
        } else {
            assert!(
                out.is_empty() || (400..500).contains(&raw.status),
                "{raw:?}"
            );
        }
    }
    still_serving(&s).await;
}

/// Bad base64 in a grpc-web-text body is the client's fault: INVALID_ARGUMENT
/// (or another client-side status), never INTERNAL.
async fn a_malformed_text_body_is_a_client_error(backend: Backend) {
    let s = TestServer::start(backend).await;
    for body in [&b"!!!!not base64!!"[..], b"AAAAAB", b"AAAA====AAAA"] {
        let mut r = head(LOGIN, true, &[], Some(body.len()));
        r.extend_from_slice(body);
        let raw = exchange(&s, &r, Duration::from_secs(30))
            .await
            .expect("answered");
        let (st, _) = raw.grpc(true);
        let st = st.unwrap_or_else(|| panic!("no status for {body:?}: {raw:?}"));
        println!("{:?} → {st:?}", String::from_utf8_lossy(body));
        not_internal(&st, &String::from_utf8_lossy(body));
    }
    still_serving(&s).await;
}

async fn start_cors(backend: Backend) -> TestServer {
    TestServer::start_with(
        backend,
        ServerOptions {
            extra_args: vec![
                "--cors-allowed-origins".into(),
                format!("{ORIGIN},http://localhost:8080"),
            ],
            ..Default::default()
        },
    )
    .await
}

fn preflight(origin: &str, method: &str, headers: &str) -> Vec<u8> {
    format!(
        "OPTIONS {LOGIN} HTTP/1.1\r\nHost: identity.test\r\nOrigin: {origin}\r\n\
         Access-Control-Request-Method: {method}\r\nAccess-Control-Request-Headers: {headers}\r\n\
         Connection: close\r\n\r\n"
    )
    .into_bytes()
}

/// Origin tricks: only the exact listed origins (as browsers send them)
/// get Access-Control-Allow-Origin; nobody gets Allow-Credentials; every
/// answer varies on Origin so a shared cache cannot serve one origin's
/// answer to another; preflights never widen methods or headers.
async fn cors_answers_only_the_exact_listed_origins(backend: Backend) {
    let s = start_cors(backend).await;
    let tricks = [
        "https://Console.Example.com",
        "https://console.example.com.",
        "https://console.example.com:443",
        "https://console.example.com/",
        "https://console.example.com/app",
        "http://console.example.com",
        "https://console.example.com.evil.example",
        "https://evil.console.example.com",
        "https://xn--console-example-com",
        "https://cönsole.example.com",
        "null",
        "https://console.example.com, https://evil.example",
        "https://console.example.com https://evil.example",
        "http://localhost:8081",
        "http://localhost",
        "*",
        "",
    ];
    let allowed = [ORIGIN, "http://localhost:8080"];
    for origin in tricks.iter().chain(allowed.iter()) {
        let ok = allowed.contains(origin);
        let pre = exchange(
            &s,
            &preflight(origin, "POST", "authorization,content-type,x-grpc-web"),
            Duration::from_secs(10),
        )
        .await
        .expect("preflight answered");
        let (raw, st, _) = web_call(
            &s,
            LOGIN,
            false,
            &[("Origin", origin)],
            &login_msg("nobody@example.com", "wrong password"),
        )
        .await;
        assert_eq!(st.code(), Code::Unauthenticated, "{origin}: {st:?}");
        for (what, a) in [("preflight", &pre), ("call", &raw)] {
            let acao = a.all("access-control-allow-origin");
            if ok {
                assert_eq!(acao, vec![*origin], "{what} {origin:?}: {a:?}");
                let exposed = a
                    .header("access-control-expose-headers")
                    .unwrap_or("")
                    .to_ascii_lowercase();
                if what == "call" {
                    for h in ["grpc-status", "grpc-message", "grpc-status-details-bin"] {
                        assert!(exposed.contains(h), "{origin}: {h} not exposed: {a:?}");
                    }
                }
            } else {
                assert!(acao.is_empty(), "{what} {origin:?} allowed: {a:?}");
            }
            assert!(
                a.header("access-control-allow-credentials").is_none(),
                "{what} {origin:?}: {a:?}"
            );
            let vary = a.all("vary").join(",").to_ascii_lowercase();
            assert!(
                vary.contains("origin"),
                "{what} {origin:?}: no Vary: Origin: {a:?}"
            );
        }
    }
    // Preflights for other methods or headers not on the list: nothing wider.
    for (method, headers) in [
        ("DELETE", "authorization"),
        ("PUT", "content-type"),
        ("POST", "cookie"),
        ("POST", "x-evil,authorization"),
    ] {
        let a = exchange(
            &s,
            &preflight(ORIGIN, method, headers),
            Duration::from_secs(10),
        )
        .await
        .expect("preflight answered");
        let methods = a
            .header("access-control-allow-methods")
            .unwrap_or("")
            .to_ascii_uppercase();
        assert!(
            !methods.contains(method) || method == "POST",
            "{method}: {a:?}"
        );
        let allowed_headers = a
            .header("access-control-allow-headers")
            .unwrap_or("")
            .to_ascii_lowercase();
        assert!(
            !allowed_headers.contains("cookie") && !allowed_headers.contains("x-evil"),
            "{headers}: {a:?}"
        );
        assert!(a.header("access-control-allow-credentials").is_none());
    }
    // Two Origin headers (no browser sends that): never an echo of an
    // unlisted one.
    let r = web_request(
        LOGIN,
        false,
        &[("Origin", "https://evil.example"), ("Origin", ORIGIN)],
        &login_msg("nobody@example.com", "x").encode_to_vec(),
    );
    let a = exchange(&s, &r, Duration::from_secs(30))
        .await
        .expect("answered");
    let acao = a.all("access-control-allow-origin");
    assert!(
        acao.iter().all(|o| allowed.contains(o)),
        "two Origin headers: {a:?}"
    );
    still_serving(&s).await;
}

/// Without --cors-allowed-origins nothing changes: no answer (preflight,
/// call, error) carries any Access-Control header, whatever the origin.
async fn without_the_flag_no_answer_carries_cors_headers(backend: Backend) {
    let s = TestServer::start(backend).await;
    for origin in [ORIGIN, "null", "https://evil.example"] {
        let pre = exchange(
            &s,
            &preflight(origin, "POST", "authorization,content-type"),
            Duration::from_secs(10),
        )
        .await
        .expect("preflight answered");
        assert!(!pre.has_cors(), "preflight {origin}: {pre:?}");
        assert!(pre.status != 0 && !pre.cut, "preflight {origin}: {pre:?}");
        let (raw, st, _) = web_call(
            &s,
            LOGIN,
            false,
            &[("Origin", origin)],
            &login_msg("nobody@example.com", "x"),
        )
        .await;
        assert_eq!(st.code(), Code::Unauthenticated);
        assert!(!raw.has_cors(), "call {origin}: {raw:?}");
    }
    still_serving(&s).await;
}

/// Credentials only by `authorization`: a valid access token in a cookie
/// (any name a framework might use) authenticates nothing.
async fn cookies_never_authenticate(backend: Backend) {
    let s = start_cors(backend).await;
    let token = s.admin_token().await;
    let path = "/kiops.identity.v1.UserService/ListUsers";
    let msg = ListUsersRequest::default();
    for cookie in [
        format!("authorization=Bearer {token}"),
        format!("access_token={token}"),
        format!("token={token}; session={token}"),
    ] {
        let (_, st, _) = web_call(
            &s,
            path,
            false,
            &[("Origin", ORIGIN), ("Cookie", &cookie)],
            &msg,
        )
        .await;
        assert_eq!(
            (st.code(), reason(&st)),
            (Code::Unauthenticated, "MISSING_TOKEN".to_string()),
            "{cookie}: {st:?}"
        );
    }
    // The same call with the header works (the attack above was real).
    let (_, st, _) = web_call(
        &s,
        path,
        false,
        &[("Authorization", &format!("Bearer {token}"))],
        &msg,
    )
    .await;
    assert_eq!(st.code(), Code::Ok, "{st:?}");
}

/// --max-concurrent-requests over HTTP/1.1: each browser call has its own
/// connection (so the per-connection limit never applies); the server-wide
/// limit must still shed, with a clear RESOURCE_EXHAUSTED.
async fn load_shedding_holds_for_http1_connections(backend: Backend) {
    let s = TestServer::start_with(
        backend,
        ServerOptions {
            extra_args: ["--max-concurrent-requests", "2", "--hash-concurrency", "1"]
                .map(String::from)
                .to_vec(),
            ..Default::default()
        },
    )
    .await;
    s.create_user("load@example.com", "Load", PASSWORD).await;
    let s = std::sync::Arc::new(s);
    let calls: Vec<_> = (0..24)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                let (_, st, _) = web_call(
                    &s,
                    LOGIN,
                    i % 2 == 0,
                    &[],
                    &login_msg("load@example.com", PASSWORD),
                )
                .await;
                st
            })
        })
        .collect();
    let mut shed = 0;
    let mut ok = 0;
    for c in calls {
        let st = c.await.expect("join");
        match st.code() {
            Code::Ok => ok += 1,
            Code::ResourceExhausted | Code::Unavailable => {
                assert!(!reason(&st).is_empty(), "shed without a reason: {st:?}");
                shed += 1;
            }
            _ => panic!("unexpected {st:?}"),
        }
    }
    println!("24 HTTP/1.1 logins, limit 2: {ok} ok, {shed} shed");
    assert!(ok >= 1 && shed >= 1, "{ok} ok, {shed} shed");
    still_serving(&s).await;
}

/// X-Forwarded-For from a peer that is not a trusted proxy: neither the
/// login throttle per peer nor the audit trail's peer can be steered.
async fn forwarded_for_from_an_untrusted_peer_changes_nothing(backend: Backend) {
    let s = TestServer::start_with(
        backend,
        ServerOptions {
            extra_args: ["--login-rate-per-peer", "4"].map(String::from).to_vec(),
            ..Default::default()
        },
    )
    .await;
    // The admin's own login counts against the same peer (127.0.0.1).
    let token = s.admin_token().await;
    let mut refused = 0;
    for i in 0..8 {
        let xff = format!("198.51.100.{i}");
        let rid = format!("xff-{i}");
        let (_, st, _) = web_call(
            &s,
            LOGIN,
            i % 2 == 1,
            &[
                ("X-Forwarded-For", &xff),
                ("Forwarded", &format!("for={xff}")),
                ("X-Real-IP", &xff),
                ("x-request-id", &rid),
            ],
            &login_msg(&format!("u{i}@example.com"), "wrong password"),
        )
        .await;
        not_internal(&st, "xff login");
        if st.code() == Code::ResourceExhausted {
            refused += 1;
        }
    }
    assert!(
        refused >= 4,
        "rotating X-Forwarded-For dodged the per-peer throttle: {refused} of 8 throttled"
    );
    // The throttled ones may not be audited; the evaluated ones name the
    // real peer.
    let events = s
        .audit()
        .await
        .list_audit_events(authed(
            ListAuditEventsRequest {
                action: "auth.login_failed".into(),
                page_size: 100,
                ..Default::default()
            },
            &token,
        ))
        .await
        .expect("audit")
        .into_inner()
        .audit_events;
    let ours: Vec<_> = events
        .iter()
        .filter(|e| e.request_id.starts_with("xff-"))
        .collect();
    assert!(!ours.is_empty(), "no audited attempt: {events:?}");
    for e in ours {
        assert!(
            e.peer_address.starts_with("127.0.0.1"),
            "forged peer in the audit trail: {e:?}"
        );
    }
    still_serving(&s).await;
}

/// 20 parallel wrong passwords for one account, half over gRPC-Web (binary
/// and text, HTTP/1.1) and half native: the account locks, and the right
/// password is then refused on both paths.
async fn lockout_is_exact_across_grpc_web_and_native(backend: Backend) {
    let s = std::sync::Arc::new(TestServer::start(backend).await);
    s.create_user("lock@example.com", "Lock", PASSWORD).await;
    let ch = s.channel().await;
    let calls: Vec<_> = (0..20)
        .map(|i| {
            let s = s.clone();
            let ch = ch.clone();
            tokio::spawn(async move {
                let msg = login_msg("lock@example.com", &format!("wrong password {i}"));
                if i % 2 == 0 {
                    web_call(&s, LOGIN, i % 4 == 0, &[], &msg).await.1
                } else {
                    kiops_proto::v1::auth_service_client::AuthServiceClient::new(ch)
                        .login(msg)
                        .await
                        .expect_err("a wrong password logged in")
                }
            })
        })
        .collect();
    for c in calls {
        let st = c.await.expect("join");
        assert_eq!(
            (st.code(), reason(&st)),
            (Code::Unauthenticated, "INVALID_CREDENTIALS".to_string()),
            "{st:?}"
        );
    }
    let (_, st, _) = web_call(
        &s,
        LOGIN,
        false,
        &[],
        &login_msg("lock@example.com", PASSWORD),
    )
    .await;
    assert_eq!(
        st.code(),
        Code::Unauthenticated,
        "locked account over gRPC-Web: {st:?}"
    );
    let native = s.login("lock@example.com", PASSWORD).await;
    assert!(native.is_err(), "locked account natively");
    // One lock, at most THRESHOLD (5) wrong passwords evaluated.
    let token = s.admin_token().await;
    let ev = s
        .audit()
        .await
        .list_audit_events(authed(
            ListAuditEventsRequest {
                page_size: 200,
                ..Default::default()
            },
            &token,
        ))
        .await
        .expect("audit")
        .into_inner()
        .audit_events;
    let locks = ev.iter().filter(|e| e.action == "user.locked").count();
    let evaluated = ev
        .iter()
        .filter(|e| e.action == "auth.login_failed" && !e.details_json.contains("\"reason\""))
        .count();
    assert_eq!(locks, 1, "{ev:?}");
    assert!(evaluated <= 5, "{evaluated} wrong passwords evaluated");
}

/// A session logged out natively: its access token and refresh token are
/// refused over gRPC-Web as well.
async fn revoked_session_and_refresh_token_are_refused_over_grpc_web(backend: Backend) {
    let s = TestServer::start(backend).await;
    let pair = s.login(ADMIN_EMAIL, ADMIN_PASSWORD).await.expect("login");
    s.auth()
        .await
        .logout(authed(
            LogoutRequest {
                refresh_token: pair.refresh_token.clone(),
            },
            &pair.access_token,
        ))
        .await
        .expect("logout");
    for text in [false, true] {
        let (_, st, _) = web_call(
            &s,
            "/kiops.identity.v1.UserService/ListUsers",
            text,
            &[("Authorization", &format!("Bearer {}", pair.access_token))],
            &ListUsersRequest::default(),
        )
        .await;
        assert_eq!(st.code(), Code::Unauthenticated, "{st:?}");
        let (_, st, _) = web_call(
            &s,
            "/kiops.identity.v1.AuthService/Refresh",
            text,
            &[],
            &RefreshRequest {
                refresh_token: pair.refresh_token.clone(),
                ..Default::default()
            },
        )
        .await;
        assert_eq!(st.code(), Code::Unauthenticated, "{st:?}");
    }
}

/// WatchRevocations over gRPC-Web (HTTP/1.1): logging the session out must
/// end the stream (the right is re-checked every second), as natively.
async fn a_grpc_web_stream_ends_with_the_session(backend: Backend) {
    let s = TestServer::start(backend).await;
    let pair = s.login(ADMIN_EMAIL, ADMIN_PASSWORD).await.expect("login");
    for text in [false, true] {
        let pair = if text {
            s.login(ADMIN_EMAIL, ADMIN_PASSWORD).await.expect("login")
        } else {
            pair.clone()
        };
        let auth = format!("Bearer {}", pair.access_token);
        let mut c = TcpStream::connect(s.grpc).await.expect("connect");
        c.write_all(&web_request(
            "/kiops.identity.v1.AuthService/WatchRevocations",
            text,
            &[("Authorization", &auth)],
            &WatchRevocationsRequest::default().encode_to_vec(),
        ))
        .await
        .expect("write");
        // Open for a moment: no answer yet (or only headers).
        let mut out = Vec::new();
        assert!(!read_into(&mut c, &mut out, Duration::from_secs(2)).await);
        s.auth()
            .await
            .logout(authed(
                LogoutRequest {
                    refresh_token: pair.refresh_token.clone(),
                },
                &pair.access_token,
            ))
            .await
            .expect("logout");
        assert!(
            read_into(&mut c, &mut out, Duration::from_secs(15)).await,
            "the gRPC-Web stream outlived its session by 15 s"
        );
        let raw = parse(&out);
        let (st, _) = raw.grpc(text);
        let st = st.unwrap_or_else(|| panic!("no status: {raw:?}"));
        assert_eq!(st.code(), Code::Unauthenticated, "{st:?}");
    }
    still_serving(&s).await;
}

/// Malformed or odd HTTP/1.1: each is refused with a 4xx or a clear gRPC
/// status (never INTERNAL/UNKNOWN), or the connection is closed; none hangs
/// the connection past the request timeout, and native gRPC keeps working.
async fn malformed_http1_is_refused_clearly(backend: Backend) {
    let s = TestServer::start_with(
        backend,
        ServerOptions {
            extra_args: vec!["--request-timeout".into(), "3".into()],
            ..Default::default()
        },
    )
    .await;
    let msg = frame(&login_msg("a@example.com", "wrong password").encode_to_vec());
    let chunked = |size: &str| {
        let mut r = head(LOGIN, false, &[("Transfer-Encoding", "chunked")], None);
        r.extend_from_slice(format!("{size}\r\n").as_bytes());
        r.extend_from_slice(&msg);
        r.extend_from_slice(b"\r\n0\r\n\r\n");
        r
    };
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("chunk size too small", chunked("3")),
        ("chunk size not hex", chunked("zz")),
        ("chunk size huge", chunked("ffffffffffffffffff")),
        ("negative chunk size", chunked("-5")),
        ("both content-length and chunked", {
            let mut r = head(
                LOGIN,
                false,
                &[("Transfer-Encoding", "chunked")],
                Some(msg.len()),
            );
            r.extend_from_slice(format!("{:x}\r\n", msg.len()).as_bytes());
            r.extend_from_slice(&msg);
            r.extend_from_slice(b"\r\n0\r\n\r\n");
            r
        }),
        ("content-length longer than body, then close", {
            let mut r = head(LOGIN, false, &[], Some(msg.len() + 50));
            r.extend_from_slice(&msg);
            r
        }),
        ("HTTP/1.0", {
            let mut r = format!(
                "POST {LOGIN} HTTP/1.0\r\nContent-Type: {GRPC_WEB}\r\nContent-Length: {}\r\n\r\n",
                msg.len()
            )
            .into_bytes();
            r.extend_from_slice(&msg);
            r
        }),
        ("Expect: 100-continue", {
            let mut r = head(LOGIN, false, &[("Expect", "100-continue")], Some(msg.len()));
            r.extend_from_slice(&msg);
            r
        }),
        ("h2c upgrade", {
            let mut r = head(
                LOGIN,
                false,
                &[
                    ("Upgrade", "h2c"),
                    ("HTTP2-Settings", "AAMAAABkAARAAAAAAAIAAAAA"),
                ],
                Some(msg.len()),
            );
            r.extend_from_slice(&msg);
            r
        }),
        ("GET of a method", {
            format!("GET {LOGIN} HTTP/1.1\r\nHost: x\r\nContent-Type: {GRPC_WEB}\r\nConnection: close\r\n\r\n")
                .into_bytes()
        }),
        ("not grpc-web", {
            let mut r = format!(
                "POST {LOGIN} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
            )
            .into_bytes();
            r.truncate(r.len());
            r
        }),
        (
            "unknown path",
            web_request("/nope.Service/Nope", false, &[], b""),
        ),
        ("header without colon", {
            let mut r = b"POST / HTTP/1.1\r\nHost: x\r\nthis is not a header\r\n\r\n".to_vec();
            r.extend_from_slice(&msg);
            r
        }),
        (
            "request line garbage",
            b"\x16\x03\x01\x00\xa5garbage\r\n\r\n".to_vec(),
        ),
        ("huge header", {
            let mut r = head(
                LOGIN,
                false,
                &[("X-Big", &"a".repeat(1 << 20))],
                Some(msg.len()),
            );
            r.extend_from_slice(&msg);
            r
        }),
        ("pipelined calls", {
            let one = |close: bool| {
                let mut r = format!(
                    "POST {LOGIN} HTTP/1.1\r\nHost: x\r\nContent-Type: {GRPC_WEB}\r\nContent-Length: {}\r\n{}\r\n",
                    msg.len(),
                    if close { "Connection: close\r\n" } else { "" }
                )
                .into_bytes();
                r.extend_from_slice(&msg);
                r
            };
            [one(false), one(false), one(true)].concat()
        }),
    ];
    let mut report = Vec::new();
    for (what, req) in cases.drain(..) {
        let started = Instant::now();
        let raw = exchange(&s, &req, Duration::from_secs(20))
            .await
            .unwrap_or_else(|| panic!("{what}: the connection was held for 20 s"));
        let (st, _) = raw.grpc(false);
        report.push(format!(
            "{what}: HTTP {} grpc {:?} in {:?}",
            raw.status,
            st.as_ref().map(|s| (s.code(), s.message().to_string())),
            started.elapsed()
        ));
        match st {
            Some(st) if raw.status == 200 => {
                if what == "pipelined calls" {
                    // Every answer is a proper refusal of the wrong password.
                    let text = String::from_utf8_lossy(&raw.body);
                    assert!(!text.contains("grpc-status:13"), "{what}: {raw:?}");
                }
                not_internal(&st, what)
            }
            _ => assert!(
                raw.status == 0 || (400..500).contains(&raw.status),
                "{what}: {raw:?}"
            ),
        }
    }
    println!("{}", report.join("\n"));
    still_serving(&s).await;
}

/// Slowloris: request headers trickled a byte a second are cut off (hyper's
/// HTTP/1 header read timeout), and many idle HTTP/1.1 connections do not
/// keep native gRPC from being served.
async fn slowloris_headers_are_cut_off(backend: Backend) {
    let s = TestServer::start(backend).await;
    let idle: Vec<TcpStream> = {
        let mut v = Vec::new();
        for _ in 0..200 {
            v.push(TcpStream::connect(s.grpc).await.expect("connect"));
        }
        v
    };
    let mut c = TcpStream::connect(s.grpc).await.expect("connect");
    c.write_all(b"POST ").await.expect("write");
    let started = Instant::now();
    let header = format!("{LOGIN} HTTP/1.1\r\nHost: x\r\nX-Slow: {}", "a".repeat(200));
    let mut closed = false;
    for b in header.bytes() {
        if started.elapsed() > Duration::from_secs(60) {
            break;
        }
        if c.write_all(&[b]).await.is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 1024];
        match tokio::time::timeout(Duration::from_secs(1), c.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            Ok(Ok(_)) => {
                // An answer (e.g. 408) ends the trickle too.
                closed = true;
                break;
            }
            Err(_) => {}
        }
    }
    let took = started.elapsed();
    println!("slowloris cut after {took:?} (closed: {closed})");
    assert!(closed, "a trickled header held the connection for {took:?}");
    assert!(took < Duration::from_secs(45), "{took:?}");
    still_serving(&s).await;
    drop(idle);
}

/// --max-watches-per-caller over HTTP/1.1: a browser tab that closes
/// (the TCP connection goes away, no HTTP/2 RST_STREAM to tell the server)
/// must give its WatchRevocations slot back, or a few reloads lock the
/// caller out of streams until the server restarts.
async fn closed_http1_streams_give_their_slot_back(backend: Backend) {
    let s = TestServer::start_with(
        backend,
        ServerOptions {
            extra_args: vec!["--max-watches-per-caller".into(), "2".into()],
            ..Default::default()
        },
    )
    .await;
    let token = s.admin_token().await;
    let auth = format!("Bearer {token}");
    let path = "/kiops.identity.v1.AuthService/WatchRevocations";
    let open = || {
        web_request(
            path,
            false,
            &[("Authorization", &auth)],
            &WatchRevocationsRequest::default().encode_to_vec(),
        )
    };
    let mut tabs = Vec::new();
    for _ in 0..2 {
        let mut c = TcpStream::connect(s.grpc).await.expect("connect");
        c.write_all(&open()).await.expect("write");
        let mut out = Vec::new();
        assert!(
            !read_into(&mut c, &mut out, Duration::from_secs(1)).await,
            "the watch ended at once: {:?}",
            parse(&out)
        );
        tabs.push(c);
    }
    // The third is refused: the limit holds over HTTP/1.1.
    let raw = exchange(&s, &open(), Duration::from_secs(10))
        .await
        .expect("refused at once");
    let (st, _) = raw.grpc(false);
    let st = st.expect("status");
    assert_eq!(reason(&st), "TOO_MANY_STREAMS", "{st:?}");
    // The tabs close; the slots come back.
    drop(tabs);
    let started = Instant::now();
    loop {
        let res = s
            .auth()
            .await
            .watch_revocations(authed(WatchRevocationsRequest::default(), &token))
            .await;
        match res {
            Ok(_) => break,
            Err(st) => {
                assert_eq!(reason(&st), "TOO_MANY_STREAMS", "{st:?}");
                assert!(
                    started.elapsed() < Duration::from_secs(15),
                    "closed HTTP/1.1 watches still hold their slots after {:?}",
                    started.elapsed()
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
    println!("slots back {:?} after the tabs closed", started.elapsed());
    still_serving(&s).await;
}
