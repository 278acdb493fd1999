//! gRPC-Web clients for the e2e tests: the generated tonic clients over
//! tonic-web's client layer and hyper's pooled client (HTTP/1.1 as browsers
//! mostly speak it, or HTTP/2 with prior knowledge), and raw requests whose
//! frames the tests build and read by hand.

use super::TestServer;
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use tonic_web::{GrpcWebClientLayer, GrpcWebClientService};
use tower::Layer;

pub use http::{HeaderMap, Method, StatusCode, Version};

/// What the generated clients are built on: `FooClient::with_origin(ch, uri)`.
pub type WebChannel =
    GrpcWebClientService<Client<HttpConnector, tonic_web::GrpcWebCall<tonic::body::Body>>>;

/// HTTP/1.1 or HTTP/2 (cleartext, prior knowledge).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Http {
    One,
    Two,
}

impl TestServer {
    /// A gRPC-Web channel to the gRPC port; one pool per call, so tests
    /// that want separate connections make separate channels.
    pub fn web(&self, http: Http) -> WebChannel {
        let client = Client::builder(TokioExecutor::new())
            .http2_only(http == Http::Two)
            .build_http();
        GrpcWebClientLayer::new().layer(client)
    }

    pub fn web_origin(&self) -> http::Uri {
        self.grpc_url().parse().expect("uri")
    }

    /// One raw HTTP request to the gRPC port, answered in full.
    pub async fn raw(
        &self,
        http: Http,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> RawAnswer {
        let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
            .http2_only(http == Http::Two)
            .build_http();
        let mut req = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.grpc_url()));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(Bytes::from(body))).expect("request");
        let res = tokio::time::timeout(Duration::from_secs(20), client.request(req))
            .await
            .expect("answer within 20 s")
            .expect("an HTTP answer");
        let (parts, body) = res.into_parts();
        let collected = tokio::time::timeout(Duration::from_secs(20), body.collect())
            .await
            .expect("body within 20 s")
            .expect("body");
        let trailers = collected.trailers().cloned().unwrap_or_default();
        RawAnswer {
            status: parts.status,
            version: parts.version,
            headers: parts.headers,
            body: collected.to_bytes().to_vec(),
            trailers,
        }
    }

    /// Writes `bytes` on a new TCP connection to the gRPC port and reads
    /// what comes back until the server closes or 5 s pass.
    pub fn raw_tcp(&self, bytes: &[u8]) -> String {
        let mut s = TcpStream::connect(self.grpc).expect("connect grpc port");
        s.set_read_timeout(Some(Duration::from_secs(5))).ok();
        s.write_all(bytes).expect("write");
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

pub struct RawAnswer {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    /// HTTP trailers (none in gRPC-Web: its trailers are a body frame).
    pub trailers: HeaderMap,
}

impl RawAnswer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A length-prefixed gRPC message frame.
pub fn frame(msg: &impl prost::Message) -> Vec<u8> {
    let payload = msg.encode_to_vec();
    let mut out = Vec::with_capacity(5 + payload.len());
    out.push(0);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&payload);
    out
}

/// Decodes a grpc-web-text body: base64 that may be several padded chunks
/// one after another (each 4-character group decodes on its own).
pub fn unbase64(text: &[u8]) -> Vec<u8> {
    let text: Vec<u8> = text
        .iter()
        .copied()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    assert_eq!(text.len() % 4, 0, "base64 length {}", text.len());
    let mut out = Vec::new();
    for quad in text.chunks(4) {
        out.extend(
            base64::engine::general_purpose::STANDARD
                .decode(quad)
                .expect("base64"),
        );
    }
    out
}

/// The message frames and the trailer frame's fields (lower-cased names)
/// of a gRPC-Web response body.
pub fn frames(mut body: &[u8]) -> (Vec<Vec<u8>>, Vec<(String, String)>) {
    let mut messages = Vec::new();
    let mut trailers = Vec::new();
    while !body.is_empty() {
        assert!(body.len() >= 5, "a truncated frame header: {body:?}");
        let flag = body[0];
        let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        assert!(body.len() >= 5 + len, "a truncated frame");
        let payload = &body[5..5 + len];
        if flag & 0x80 != 0 {
            let text = std::str::from_utf8(payload).expect("trailers are text");
            for line in text.split("\r\n").filter(|l| !l.is_empty()) {
                let (k, v) = line.split_once(':').expect("name:value");
                trailers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        } else {
            assert_eq!(flag, 0, "uncompressed frames only");
            messages.push(payload.to_vec());
        }
        body = &body[5 + len..];
    }
    (messages, trailers)
}

/// The value of trailer `name`.
pub fn trailer<'a>(trailers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    trailers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}
