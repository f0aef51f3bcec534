//! The validated, typed configuration every other crate consumes. Built once by `load`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// A whole validated config file.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file this came from (used to reload it and to resolve relative paths).
    pub source: PathBuf,
    pub edge: EdgeConfig,
    pub admin: Option<AdminConfig>,
    /// First match wins.
    pub routes: Vec<RouteConfig>,
    pub target_groups: BTreeMap<String, TargetGroupConfig>,
    pub cache: CacheConfig,
    pub cache_behaviors: BTreeMap<String, CacheBehaviorConfig>,
    /// Auto scaling groups (`[groups.*]`), run by the fleet.
    pub groups: BTreeMap<String, crate::GroupConfig>,
    pub watch: crate::WatchConfig,
    pub alarms: Vec<crate::AlarmConfig>,
    pub slos: Vec<crate::SloConfig>,
    pub budget: Option<crate::AccountBudgetConfig>,
    pub notifiers: BTreeMap<String, crate::NotifierConfig>,
    /// On-the-fly image variants (`[images]`), served by the edge.
    pub images: Option<crate::ImagesConfig>,
    /// `[cluster]`: absent on a single node (no Redis needed).
    pub cluster: Option<crate::ClusterConfig>,
    /// `[fleet]`: the deployment id that scopes this Flotilla's containers and services.
    pub fleet: crate::FleetSettings,
    /// Non-fatal findings (unset environment variables, groups with no targets) to log at start.
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EdgeConfig {
    pub listen: Vec<SocketAddr>,
    pub zone: Option<String>,
    pub tls: Option<TlsConfig>,
    pub access_log: bool,
    /// Worker threads, each with its own listeners (SO_REUSEPORT) and backend pool; 0 = one per
    /// CPU this process may run on.
    pub workers: usize,
    pub request_id_header: String,
    pub timeouts: Timeouts,
    pub limits: Limits,
    /// Peers whose forwarding headers (`Forwarded`, `X-Forwarded-*`) and PROXY headers are
    /// believed; from anyone else those headers are replaced. Empty: nobody is trusted.
    pub trusted_proxies: Vec<crate::Cidr>,
    /// Every client connection starts with a PROXY protocol (v1 or v2) header naming the real
    /// client, as sent by a TCP load balancer in front of the edge.
    pub proxy_protocol: bool,
    /// What a request path with an encoded slash or backslash (`%2F`, `%5C`) gets.
    pub escaped_slashes: EscapedSlashes,
}

/// `edge.escaped_slashes`: Envoy's `path_with_escaped_slashes_action`. An encoded slash is a
/// path separator for some origins and not for others, so a route and an origin could read
/// `/static/..%2Fprivate` differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EscapedSlashes {
    /// 400 (the default).
    #[default]
    Reject,
    /// Kept encoded (not a separator for routing or dot segments) and forwarded as sent.
    Keep,
    /// Decoded to `/` and `\` to `/` before dot segments are resolved, as nginx does.
    Decode,
}

/// A timeout on every phase of a request, so no client or target can hold resources forever.
#[derive(Debug, Clone, PartialEq)]
pub struct Timeouts {
    /// Time a client has to send a complete request head.
    pub header_read: Duration,
    /// How long a keep-alive connection may sit with no request in flight.
    pub idle: Duration,
    /// TCP connect to a target.
    pub connect: Duration,
    /// From sending the request to a target to receiving its response head.
    pub target_response: Duration,
    /// How long SIGTERM waits for in-flight requests before exiting anyway.
    pub shutdown: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            header_read: Duration::from_secs(10),
            idle: Duration::from_secs(60),
            connect: Duration::from_secs(5),
            target_response: Duration::from_secs(60),
            shutdown: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Maximum bytes of one request head (request line plus headers).
    pub max_header_bytes: usize,
    pub max_headers: usize,
    /// Larger bodies get 413; bodies are streamed, not buffered, so this is a policy, not memory.
    pub max_request_body: u64,
    /// Concurrent client connections per listener set; beyond it new connections wait in the backlog.
    pub max_connections: usize,
    /// Concurrent connections from one client address; beyond it new ones are closed at once.
    /// 0 = no limit (the default: clients behind one NAT or proxy share an address).
    pub max_connections_per_ip: usize,
    /// Request bodies up to this size are buffered so the request can be retried on another target.
    pub max_retry_body: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            max_request_body: 100 * 1024 * 1024,
            max_connections: 10_000,
            max_connections_per_ip: 0,
            max_retry_body: 64 * 1024,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TlsConfig {
    pub listen: Vec<SocketAddr>,
    /// SNI chooses among these; the first is the default for clients that send no SNI.
    pub certificates: Vec<CertificateFiles>,
    pub min_version: TlsVersion,
    pub redirect_http: bool,
    /// Certificates obtained and renewed over ACME, one per entry.
    pub acme: Vec<AcmeConfig>,
}

/// One ACME-managed certificate (`[edge.tls.acme]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeConfig {
    pub email: Option<String>,
    /// The certificate's names; the first is its identity in storage and the API.
    pub domains: Vec<String>,
    pub directory: String,
    pub challenge: AcmeChallenge,
    /// Account key, certificates and keys live here (keys 0600, written atomically).
    pub storage: PathBuf,
    /// Extra roots for talking to the directory (test CAs such as Pebble).
    pub trust: Option<PathBuf>,
    /// Renew this long before expiry; `None`: when a third of the lifetime is left.
    pub renew_before: Option<Duration>,
}

/// Let's Encrypt's production directory, the default.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcmeChallenge {
    Http01,
    TlsAlpn01,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    V1_2,
    V1_3,
}

#[derive(Clone, PartialEq, Eq)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// Bearer token for mutating calls. `None` means mutating calls are refused.
    pub token: Option<String>,
    /// Bearer token that reads (GET, HEAD) but never changes anything.
    pub read_token: Option<String>,
    /// Reads need a token (`token` or `read_token`) too, all but `/health`, the dashboard's
    /// page (static; its data call is a read) and, with `open_metrics`, `/metrics`.
    pub protect_reads: bool,
    /// With `protect_reads`: `/metrics` stays open (a scraper without a token).
    pub open_metrics: bool,
    /// Host names the API answers to besides `localhost` and IP literals of its listen
    /// address (any IP literal when it listens on all addresses): a `Host` header naming
    /// anything else is refused, which stops DNS rebinding.
    pub allowed_hosts: Vec<String>,
}

impl std::fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hidden = |t: &Option<String>| t.as_ref().map(|_| "<hidden>");
        f.debug_struct("AdminConfig")
            .field("listen", &self.listen)
            .field("token", &hidden(&self.token))
            .field("read_token", &hidden(&self.read_token))
            .field("protect_reads", &self.protect_reads)
            .field("open_metrics", &self.open_metrics)
            .field("allowed_hosts", &self.allowed_hosts)
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConfig {
    pub host: HostPattern,
    pub path: PathPattern,
    pub origin: RouteOrigin,
    /// The cache behaviour for this route, if responses here are cached.
    pub cache: Option<String>,
    /// Response headers this route adds and removes (`headers = { … }`).
    pub headers: Option<HeaderPolicy>,
    /// Requests per client beyond which this route answers 429 (`rate_limit = { … }`).
    pub rate_limit: Option<RateLimitConfig>,
}

/// Security and other response headers for a route, set on every response it sends.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HeaderPolicy {
    /// Set (replacing what the origin sent), in order.
    pub set: Vec<(String, String)>,
    /// Removed from origin responses (e.g. `Server`, `X-Powered-By`).
    pub remove: Vec<String>,
    /// Strict-Transport-Security: sent on TLS connections only (RFC 6797 §7.2).
    pub hsts: Option<String>,
}

/// A token bucket per client: one token every `interval` on average, `burst` at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitConfig {
    /// 1 / rate (`rate = 10` → 100 ms).
    pub interval: std::time::Duration,
    pub burst: u32,
    pub key: RateKey,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateKey {
    /// The client's address (the TCP peer).
    Ip,
    /// A request header's value (e.g. an API key); clients without it are keyed by address.
    Header(String),
}

/// Where a route's requests go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteOrigin {
    /// `target_group = "web"`: proxied to the group's targets.
    TargetGroup(String),
    /// `origin = "files:./public"`: served from this directory (the request path is appended
    /// to it, as nginx's `root` does).
    Files(std::path::PathBuf),
}

/// `[cache]`: the shared storage every cached route uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    /// Byte budget of the in-memory tier (bodies plus an estimate of headers and keys).
    pub memory: u64,
    /// Larger responses pass through without being stored.
    pub max_object: u64,
    /// The disk tier (`disk = { path, size }`), which survives restarts.
    pub disk: Option<DiskCacheConfig>,
    /// Shield tier: another Flotilla node that cached routes' misses ask before the origin.
    pub parent: Option<std::net::SocketAddr>,
    /// How long a miss waits for the parent's response head before asking the origin itself
    /// (a parent that accepts connections but stalls must not hold requests for the whole
    /// `timeouts.target_response`).
    pub parent_timeout: std::time::Duration,
    /// Bytes all cache fills together may hold while they receive bodies; past it a fill
    /// streams on without storing.
    pub fill_buffer: u64,
    /// A fill not complete after this long stops storing (its followers go to the origin).
    pub fill_timeout: std::time::Duration,
}

/// The name of the target group the edge builds for `cache.parent` (reserved).
pub const SHIELD_GROUP: &str = "flotilla-shield";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskCacheConfig {
    pub path: std::path::PathBuf,
    /// Byte budget of the stored files.
    pub size: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            memory: 256 << 20,
            max_object: 8 << 20,
            disk: None,
            parent: None,
            parent_timeout: std::time::Duration::from_secs(5),
            fill_buffer: 64 << 20,
            fill_timeout: std::time::Duration::from_secs(60),
        }
    }
}

/// `[cache_behaviors.NAME]`: TTL policy and key for the routes that name it (CloudFront's model).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheBehaviorConfig {
    pub name: String,
    pub min_ttl: Duration,
    pub default_ttl: Duration,
    pub max_ttl: Duration,
    pub compress: bool,
    pub key: CacheKeyConfig,
    pub stale_while_revalidate: Duration,
    pub stale_if_error: Duration,
    /// How long a 404/410 without explicit freshness is stored; other errors are stored only
    /// with explicit freshness from the origin.
    pub error_ttl: Duration,
    /// What happens to cookies outside `key.cookies`.
    pub other_cookies: OtherCookiesConfig,
}

/// `other_cookies`: `"pass"` (forward them; such requests get only what the origin marked as
/// shared) or `"strip"` (remove them before the origin, as CloudFront does).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OtherCookiesConfig {
    #[default]
    Pass,
    Strip,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheKeyConfig {
    pub query: QueryKeyConfig,
    /// Lower-case header names.
    pub headers: Vec<String>,
    pub cookies: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryKeyConfig {
    All,
    None,
    Only(Vec<String>),
}

/// Which Host headers a route accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    Any,
    /// Lower-case exact host name.
    Exact(String),
    /// `*.example.com`: stored as ".example.com"; matches any name with that suffix.
    Suffix(String),
}

impl HostPattern {
    /// `host` must already be lower-case and stripped of its port.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Any => true,
            HostPattern::Exact(h) => h == host,
            HostPattern::Suffix(s) => host.len() > s.len() && host.ends_with(s.as_str()),
        }
    }
}

/// A path pattern: `/static/*` is a prefix match on `/static/`, anything else is exact.
///
/// Request paths reach the route table canonical (dot segments resolved, slashes merged; see
/// the edge's `path.rs`). Matching is ASCII-case-insensitive, and an exact pattern also matches
/// with or without one trailing slash, so `/LOGIN` and `/login/` cannot dodge a rule (a rate
/// limit, say) written for `/login` on an origin that treats them alike.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathPattern {
    Prefix(String),
    Exact(String),
}

impl PathPattern {
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathPattern::Prefix(p) => {
                path.len() >= p.len() && path.as_bytes()[..p.len()].eq_ignore_ascii_case(p.as_bytes())
            }
            PathPattern::Exact(p) => {
                let trim = |s: &'_ str| -> usize {
                    if s.len() > 1 && s.ends_with('/') {
                        s.len() - 1
                    } else {
                        s.len()
                    }
                };
                let (a, b) = (&path.as_bytes()[..trim(path)], &p.as_bytes()[..trim(p)]);
                a.eq_ignore_ascii_case(b)
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TargetGroupConfig {
    pub name: String,
    pub targets: Vec<TargetConfig>,
    pub algorithm: Algorithm,
    /// Header whose value is hashed when `algorithm = "hash_header"`.
    pub hash_header: Option<String>,
    pub deregistration_delay: Duration,
    pub slow_start: Duration,
    pub stickiness: Stickiness,
    pub retries: u32,
    pub health_check: HealthCheck,
    pub passive: Passive,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetConfig {
    pub addr: SocketAddr,
    pub zone: Option<String>,
    pub weight: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    RoundRobin,
    /// Power of two random choices, weighted, comparing in-flight requests per weight.
    LeastOutstanding,
    Random,
    HashHeader,
    HashIp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stickiness {
    pub enabled: bool,
    pub cookie: String,
    pub duration: Duration,
    /// Signs cookie values: `cluster.secret` (copied here so the edge needs no cluster config).
    pub secret: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub enabled: bool,
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    /// Inclusive status ranges that count as healthy.
    pub matcher: Vec<(u16, u16)>,
}

impl HealthCheck {
    pub fn is_healthy_status(&self, status: u16) -> bool {
        self.matcher.iter().any(|&(lo, hi)| (lo..=hi).contains(&status))
    }
}

/// Passive health: real traffic ejects a target at once, active checks bring it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Passive {
    /// Consecutive 5xx responses (502/503/504 or any 5xx) from a target that eject it; 0 = off.
    pub consecutive_5xx: u32,
    /// Consecutive failed connects that eject it; 0 = off.
    pub consecutive_connect_failures: u32,
}
