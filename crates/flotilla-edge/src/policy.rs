//! Per-route policies applied around the origin: response headers (security headers such as
//! HSTS, CSP, X-Frame-Options) and a rate limit per client.
//!
//! The limiter is GCRA (the generic cell rate algorithm, a token bucket kept as one timestamp):
//! each client key holds its "theoretical arrival time" in one `AtomicU64`, updated by CAS, so
//! workers share buckets without a lock. Keys live in a bounded moka cache and are forgotten once
//! idle long enough for their bucket to be full again (forgetting then changes nothing).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_config::{HeaderPolicy, RateKey, RateLimitConfig};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use prometheus_client::metrics::counter::Counter;

/// A route's header policy with names and values parsed once.
pub(crate) struct Headers {
    set: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
    hsts: Option<HeaderValue>,
}

impl Headers {
    pub(crate) fn new(p: &HeaderPolicy) -> Self {
        let pair = |(k, v): &(String, String)| {
            Some((HeaderName::from_bytes(k.as_bytes()).ok()?, HeaderValue::from_str(v).ok()?))
        };
        Headers {
            set: p.set.iter().filter_map(pair).collect(),
            remove: p.remove.iter().filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok()).collect(),
            hsts: p.hsts.as_deref().and_then(|h| HeaderValue::from_str(h).ok()),
        }
    }

    /// Applies the policy to a response; HSTS only over TLS (RFC 6797 §7.2).
    pub(crate) fn apply(&self, headers: &mut HeaderMap, tls: bool) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (k, v) in &self.set {
            headers.insert(k.clone(), v.clone());
        }
        if let (true, Some(h)) = (tls, &self.hsts) {
            headers.insert(http::header::STRICT_TRANSPORT_SECURITY, h.clone());
        }
    }
}

/// Keys remembered at most; beyond this the least used are dropped (their clients start full).
const MAX_KEYS: u64 = 100_000;

pub(crate) struct RateLimiter {
    /// Names the route's buckets in a shared store (the same on every node with the same config).
    name: String,
    interval: u64,
    burst: u32,
    /// interval × burst, in nanoseconds.
    tolerance: u64,
    key: RateKey,
    buckets: moka::sync::Cache<String, Arc<AtomicU64>>,
    epoch: Instant,
    pub limited: Counter,
}

pub(crate) enum Verdict {
    Allow,
    Deny { retry_after: Duration },
}

/// A shared store's answer for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SharedVerdict {
    Allow,
    Deny {
        retry_after: Duration,
    },
    /// The store did not answer in time: the node decides with its share of the limit.
    Unavailable,
}

/// Buckets kept outside this node, so a limit holds across every node of a cluster (the binary
/// implements it over Redis). Implementations must answer within a small bounded time.
pub trait SharedLimiter: Send + Sync + 'static {
    /// One decision on bucket `key`: `interval` between requests, `burst` at once.
    fn check(
        &self,
        key: String,
        interval: Duration,
        burst: u32,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = SharedVerdict> + Send + '_>>;
    /// How many nodes share each limit; while the store is away each enforces 1/n of it.
    fn nodes(&self) -> usize;
}

impl RateLimiter {
    pub(crate) fn new(name: String, cfg: &RateLimitConfig, limited: Counter) -> Self {
        let interval = (cfg.interval.as_nanos() as u64).max(1);
        let tolerance = interval.saturating_mul(u64::from(cfg.burst));
        RateLimiter {
            name,
            interval,
            burst: cfg.burst,
            tolerance,
            key: cfg.key.clone(),
            buckets: moka::sync::Cache::builder()
                .max_capacity(MAX_KEYS)
                .time_to_idle(Duration::from_nanos(tolerance) + Duration::from_secs(1))
                .build(),
            epoch: Instant::now(),
            limited,
        }
    }

    /// The key a request is counted under: its client address, or a header's value.
    /// The bucket a request falls in. By address, an IPv6 client is its /64: one subscriber is
    /// usually given a whole /64, so keying the full address would let it rotate through 2^64
    /// buckets (Cloudflare and nginx deployments key IPv6 the same way). By header, several
    /// lines of it are one value joined, so a duplicate cannot pick another bucket.
    pub(crate) fn key_of(&self, headers: &HeaderMap, peer: std::net::IpAddr) -> String {
        let by_ip = || match peer {
            std::net::IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
                let s = v6.segments();
                format!("ip:{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
            std::net::IpAddr::V6(v6) => format!("ip:{}", v6.to_ipv4_mapped().map_or(peer, std::net::IpAddr::V4)),
            v4 => format!("ip:{v4}"),
        };
        match &self.key {
            RateKey::Header(name) => {
                let mut values = headers.get_all(name.as_str()).iter().filter_map(|v| v.to_str().ok()).peekable();
                if values.peek().is_none() {
                    return by_ip();
                }
                let joined: Vec<&str> = values.collect();
                format!("h:{}", joined.join(","))
            }
            RateKey::Ip => by_ip(),
        }
    }

    pub(crate) fn check(&self, key: &str) -> Verdict {
        let now = self.epoch.elapsed().as_nanos() as u64;
        self.check_at(key, now, 1)
    }

    /// Asks the shared store; when it cannot answer, enforces this node's share locally.
    pub(crate) async fn check_shared(&self, store: &dyn SharedLimiter, key: &str) -> Verdict {
        let interval = Duration::from_nanos(self.interval);
        match store.check(format!("{}|{key}", self.name), interval, self.burst).await {
            SharedVerdict::Allow => Verdict::Allow,
            SharedVerdict::Deny { retry_after } => {
                self.limited.inc();
                Verdict::Deny { retry_after }
            }
            SharedVerdict::Unavailable => {
                let now = self.epoch.elapsed().as_nanos() as u64;
                self.check_at(key, now, store.nodes().max(1) as u64)
            }
        }
    }

    /// GCRA at `1/share` of the configured rate (a node's share while the store is away). The
    /// burst stays the whole burst in time (at least one request), so a share never refuses all.
    fn check_at(&self, key: &str, now: u64, share: u64) -> Verdict {
        let interval = self.interval.saturating_mul(share);
        let tolerance = self.tolerance.max(interval);
        let cell = self.buckets.get_with_by_ref(key, || Arc::new(AtomicU64::new(0)));
        let mut tat = cell.load(Ordering::Acquire);
        loop {
            let next = tat.max(now) + interval;
            if next - now > tolerance {
                self.limited.inc();
                return Verdict::Deny { retry_after: Duration::from_nanos(next - now - tolerance) };
            }
            match cell.compare_exchange_weak(tat, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Verdict::Allow,
                Err(current) => tat = current,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(per_sec: u64, burst: u32) -> RateLimiter {
        let cfg = RateLimitConfig { interval: Duration::from_secs(1) / per_sec as u32, burst, key: RateKey::Ip };
        RateLimiter::new("/*".into(), &cfg, Counter::default())
    }

    #[test]
    fn burst_then_steady_rate() {
        let l = limiter(10, 5);
        let ms = 1_000_000u64;
        // Five at once pass, the sixth is refused with the time until a token returns.
        for _ in 0..5 {
            assert!(matches!(l.check_at("a", 1000 * ms, 1), Verdict::Allow));
        }
        match l.check_at("a", 1000 * ms, 1) {
            Verdict::Deny { retry_after } => assert_eq!(retry_after, Duration::from_millis(100)),
            Verdict::Allow => panic!("sixth request in the burst passed"),
        }
        // Another client has its own bucket.
        assert!(matches!(l.check_at("b", 1000 * ms, 1), Verdict::Allow));
        // 100 ms later one token is back, not two.
        assert!(matches!(l.check_at("a", 1100 * ms, 1), Verdict::Allow));
        assert!(matches!(l.check_at("a", 1100 * ms, 1), Verdict::Deny { .. }));
        // After a long pause the bucket is full again (burst, not more).
        let passed = (0..10).filter(|_| matches!(l.check_at("a", 9000 * ms, 1), Verdict::Allow)).count();
        assert_eq!(passed, 5);
        assert_eq!(l.limited.get(), 7);
    }

    #[test]
    fn a_share_is_the_rate_over_n_with_the_burst_kept() {
        let l = limiter(10, 4);
        let ms = 1_000_000u64;
        // A quarter of 10/s: the burst of four still passes at once...
        assert_eq!((0..10).filter(|_| matches!(l.check_at("a", 1000 * ms, 4), Verdict::Allow)).count(), 1);
        // ...as one request of 400 ms each: the next is allowed 400 ms later, not 100 ms.
        assert!(matches!(l.check_at("a", 1100 * ms, 4), Verdict::Deny { .. }));
        assert!(matches!(l.check_at("a", 1400 * ms, 4), Verdict::Allow));
        // A burst smaller than the share still lets one request through.
        let tight = limiter(10, 1);
        assert!(matches!(tight.check_at("a", 1000 * ms, 3), Verdict::Allow));
        assert!(matches!(tight.check_at("a", 1000 * ms, 3), Verdict::Deny { .. }));
    }

    #[test]
    fn keys_group_an_ipv6_64_and_join_duplicate_headers() {
        let l = limiter(10, 5);
        let h = HeaderMap::new();
        let a = l.key_of(&h, "2001:db8:1:2:aaaa::1".parse().unwrap());
        let b = l.key_of(&h, "2001:db8:1:2:ffff:ffff:ffff:ffff".parse().unwrap());
        assert_eq!(a, b, "one /64, one bucket");
        assert_ne!(a, l.key_of(&h, "2001:db8:1:3::1".parse().unwrap()));
        assert_eq!(l.key_of(&h, "::ffff:10.1.2.3".parse().unwrap()), "ip:10.1.2.3");
        let cfg =
            RateLimitConfig { interval: Duration::from_secs(1), burst: 1, key: RateKey::Header("x-api-key".into()) };
        let by_header = RateLimiter::new("/*".into(), &cfg, Counter::default());
        let mut two = HeaderMap::new();
        two.append("x-api-key", "a".parse().unwrap());
        two.append("x-api-key", "b".parse().unwrap());
        assert_eq!(by_header.key_of(&two, "10.0.0.1".parse().unwrap()), "h:a,b");
    }

    #[test]
    fn header_policy() {
        let p = HeaderPolicy {
            set: vec![("x-frame-options".into(), "DENY".into())],
            remove: vec!["server".into()],
            hsts: Some("max-age=60".into()),
        };
        let h = Headers::new(&p);
        let mut m = HeaderMap::new();
        m.insert("server", HeaderValue::from_static("app/1.0"));
        m.insert("x-frame-options", HeaderValue::from_static("ALLOWALL"));
        h.apply(&mut m, false);
        assert_eq!(m.get("x-frame-options").unwrap(), "DENY");
        assert!(m.get("server").is_none() && m.get("strict-transport-security").is_none());
        h.apply(&mut m, true);
        assert_eq!(m.get("strict-transport-security").unwrap(), "max-age=60");
    }
}
