//! Login throttling: token buckets per peer address and per email, checked
//! before any password hashing, so a flood of logins is refused cheaply
//! (RESOURCE_EXHAUSTED with a retry hint) instead of queueing on the hashing
//! pool. Per replica and in memory: a cluster-wide limit belongs in front of
//! the service (load balancer), this one protects each process's CPU.

use crate::domain::DomainError;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

#[derive(Debug, Clone, Copy)]
pub struct Limit {
    /// Attempts allowed per minute (also the burst).
    pub per_minute: u32,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

#[derive(Debug)]
struct Buckets {
    limit: Limit,
    map: Mutex<HashMap<String, Bucket>>,
}

impl Buckets {
    fn new(limit: Limit) -> Self {
        Self {
            limit,
            map: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token; on refusal, the seconds until one is available.
    fn take(&self, key: &str, now: Instant) -> Result<(), u64> {
        let cap = self.limit.per_minute.max(1) as f64;
        let per_sec = cap / 60.0;
        let mut map = match self.map.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        if map.len() > 100_000 {
            // Forget full buckets: they carry no state worth keeping.
            map.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * per_sec < cap);
        }
        let b = map.entry(key.to_string()).or_insert(Bucket {
            tokens: cap,
            at: now,
        });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * per_sec).min(cap);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - b.tokens) / per_sec).ceil().max(1.0) as u64)
        }
    }
}

#[derive(Debug)]
pub struct Throttle {
    per_peer: Buckets,
    per_email: Buckets,
}

/// The bucket of a peer address: the address itself for IPv4, its /64 for
/// IPv6, the smallest block one client is usually given (a client that can
/// pick any address of its /64 would otherwise get a new bucket per
/// attempt).
fn peer_bucket(ip: std::net::IpAddr) -> String {
    match ip.to_canonical() {
        std::net::IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
        v4 => v4.to_string(),
    }
}

impl Throttle {
    pub fn new(per_peer: Limit, per_email: Limit) -> Self {
        Self {
            per_peer: Buckets::new(per_peer),
            per_email: Buckets::new(per_email),
        }
    }

    fn refuse(retry_after_secs: u64) -> DomainError {
        DomainError::ResourceExhausted {
            message: "too many attempts; retry later".into(),
            retry_after_secs,
        }
    }

    /// Takes one attempt of `key`'s own bucket (the per-email limit), for
    /// actions limited per account rather than per address.
    pub fn check_key(&self, key: &str) -> Result<(), DomainError> {
        self.per_email
            .take(key, Instant::now())
            .map_err(Self::refuse)
    }

    /// Checks the peer (its IP address: `1.2.3.4:5678`, or a bare address
    /// from a trusted proxy's X-Forwarded-For) and, if given, the email.
    pub fn check(&self, peer: &str, email: Option<&str>) -> Result<(), DomainError> {
        let now = Instant::now();
        let ip = peer
            .parse::<std::net::SocketAddr>()
            .map(|a| a.ip())
            .or_else(|_| peer.parse::<std::net::IpAddr>());
        let key = match ip {
            Ok(ip) => peer_bucket(ip),
            Err(_) => peer.to_string(),
        };
        self.per_peer.take(&key, now).map_err(Self::refuse)?;
        if let Some(e) = email {
            self.per_email.take(e, now).map_err(Self::refuse)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_peers_share_a_bucket_per_64() {
        let a = peer_bucket("2001:db8:1:2:aaaa::1".parse().expect("ip"));
        let b = peer_bucket("2001:db8:1:2:ffff::9".parse().expect("ip"));
        let c = peer_bucket("2001:db8:1:3::1".parse().expect("ip"));
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(
            peer_bucket("::ffff:10.0.0.1".parse().expect("ip")),
            "10.0.0.1"
        );
        assert_eq!(peer_bucket("10.0.0.1".parse().expect("ip")), "10.0.0.1");
    }
    use std::time::Duration;

    #[test]
    fn bucket_refills() {
        let b = Buckets::new(Limit { per_minute: 60 });
        let t = Instant::now();
        for _ in 0..60 {
            assert!(b.take("k", t).is_ok());
        }
        assert_eq!(b.take("k", t), Err(1));
        assert!(b.take("k", t + Duration::from_secs(1)).is_ok());
        assert!(b.take("other", t).is_ok());
    }
}
