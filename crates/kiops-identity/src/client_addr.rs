//! The client's address behind trusted reverse proxies.
//!
//! The login throttle keys its per-peer buckets, and the audit trail records
//! `peer`, by the client address. Behind an L7 proxy every TCP connection
//! comes from the proxy, so all clients would share one bucket; trusting
//! `X-Forwarded-For` from anyone would let every client pick its own bucket.
//! So the header is believed only when the TCP peer is a configured proxy
//! (`--trusted-proxies`), and then the client is the right-most address not
//! itself a trusted proxy: proxies append, so everything left of that is
//! whatever the client chose to send.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::{Layer, Service};

/// An address range, `10.0.0.0/8` or a single address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

/// Parses `ADDR` or `ADDR/PREFIX` (IPv4 or IPv6).
pub fn parse_cidr(s: &str) -> Result<Cidr, String> {
    let s = s.trim();
    let (addr, prefix) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let net: IpAddr = addr
        .parse()
        .map_err(|_| format!("{s:?} is not an IP address or CIDR range"))?;
    let net = net.to_canonical();
    let max = if net.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        Some(p) => p
            .parse::<u8>()
            .ok()
            .filter(|p| *p <= max)
            .ok_or_else(|| format!("{s:?}: the prefix length must be 0..={max}"))?,
        None => max,
    };
    Ok(Cidr { net, prefix })
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip.to_canonical()) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// The client address of a call, put in the request's extensions by
/// `ClientAddrLayer` and read by `api::context::request_meta`.
#[derive(Debug, Clone)]
pub struct ClientAddr(pub String);

/// An address of `X-Forwarded-For`: `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1`
/// or `[2001:db8::1]:5678`.
fn parse_forwarded(entry: &str) -> Option<IpAddr> {
    let e = entry.trim();
    e.parse::<IpAddr>()
        .ok()
        .or_else(|| e.parse::<SocketAddr>().ok().map(|a| a.ip()))
        .map(|ip| ip.to_canonical())
}

/// The client address for a call from `peer` carrying `forwarded` (the
/// `X-Forwarded-For` values in order). None: the TCP peer is the client.
pub fn resolve<'a>(
    trusted: &[Cidr],
    peer: IpAddr,
    forwarded: impl DoubleEndedIterator<Item = &'a str>,
) -> Option<IpAddr> {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    if !is_trusted(peer) {
        return None;
    }
    let entries: Vec<&str> = forwarded.flat_map(|v| v.split(',')).collect();
    let mut client = None;
    for entry in entries.iter().rev() {
        // Garbage where a proxy should have written an address: believe
        // nothing further left, the proxy's own address stands.
        let ip = parse_forwarded(entry)?;
        client = Some(ip);
        if !is_trusted(ip) {
            break;
        }
    }
    client
}

#[derive(Clone)]
pub struct ClientAddrLayer {
    trusted: Arc<[Cidr]>,
}

impl ClientAddrLayer {
    pub fn new(trusted: Vec<Cidr>) -> Self {
        Self {
            trusted: trusted.into(),
        }
    }
}

impl<S> Layer<S> for ClientAddrLayer {
    type Service = ClientAddrService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ClientAddrService {
            inner,
            trusted: self.trusted.clone(),
        }
    }
}

#[derive(Clone)]
pub struct ClientAddrService<S> {
    inner: S,
    trusted: Arc<[Cidr]>,
}

fn tcp_peer<B>(req: &http::Request<B>) -> Option<SocketAddr> {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    let ext = req.extensions();
    ext.get::<TcpConnectInfo>()
        .and_then(|i| i.remote_addr())
        .or_else(|| {
            ext.get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|i| i.get_ref().remote_addr())
        })
}

impl<S, B> Service<http::Request<B>> for ClientAddrService<S>
where
    S: Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        // Nothing to do (and nothing to read) unless a proxy is trusted.
        if !self.trusted.is_empty() {
            if let Some(peer) = tcp_peer(&req) {
                // Lossy, not `to_str`: a proxy appends the address it saw
                // to whatever the client sent, and a byte the client chose
                // must not make the whole line (and so that address) vanish.
                let lines: Vec<String> = req
                    .headers()
                    .get_all("x-forwarded-for")
                    .iter()
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                    .collect();
                let forwarded = lines.iter().map(String::as_str);
                if let Some(ip) = resolve(&self.trusted, peer.ip(), forwarded) {
                    req.extensions_mut().insert(ClientAddr(ip.to_string()));
                }
            }
        }
        self.inner.call(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ranges() {
        let c = parse_cidr("10.0.0.0/8").unwrap();
        assert!(c.contains(ip("10.2.3.4")));
        assert!(!c.contains(ip("11.0.0.1")));
        assert!(c.contains(ip("::ffff:10.0.0.1")));
        assert!(parse_cidr("127.0.0.1").unwrap().contains(ip("127.0.0.1")));
        assert!(!parse_cidr("127.0.0.1").unwrap().contains(ip("127.0.0.2")));
        assert!(parse_cidr("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        assert!(parse_cidr("2001:db8::/32")
            .unwrap()
            .contains(ip("2001:db8::5")));
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("proxy").is_err());
    }

    #[test]
    fn right_most_untrusted_address() {
        let t = [parse_cidr("10.0.0.0/8").unwrap()];
        let r = |peer: &str, h: &[&str]| resolve(&t, ip(peer), h.iter().copied());
        // Untrusted peer: the header is ignored.
        assert_eq!(r("1.1.1.1", &["9.9.9.9"]), None);
        // Spoofed left part, real client appended by the proxy.
        assert_eq!(r("10.0.0.1", &["6.6.6.6, 2.2.2.2"]), Some(ip("2.2.2.2")));
        // Two proxies, two header lines.
        assert_eq!(
            r("10.0.0.1", &["6.6.6.6", "2.2.2.2:4000, 10.0.0.7"]),
            Some(ip("2.2.2.2"))
        );
        assert_eq!(
            r("10.0.0.1", &["[2001:db8::1]:443"]),
            Some(ip("2001:db8::1"))
        );
        // No header, or garbage where the proxy writes: the proxy itself.
        assert_eq!(r("10.0.0.1", &[]), None);
        assert_eq!(r("10.0.0.1", &["2.2.2.2, junk"]), None);
    }
}
