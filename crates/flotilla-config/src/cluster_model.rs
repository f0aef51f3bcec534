//! `[cluster]`: several Flotilla nodes sharing edge state through Redis.

use std::time::Duration;

/// Present only when the file has a `[cluster]` table; a node without one needs no Redis.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterConfig {
    /// Unique per node (default: the host name); names the node in acks, leases and the API.
    pub node: String,
    pub redis: RedisConfig,
    /// Leadership lease for cluster-wide control loops.
    pub lease: Duration,
    /// Prefix of every Redis key, so several clusters can share one Redis.
    pub prefix: String,
    /// Key that signs sticky-session cookies, so any node honours a cookie another node set.
    /// `None`: cookies are still the same on every node but anyone could compute one.
    pub secret: Option<String>,
    /// The longest the data path waits on Redis (rate limits) before deciding locally.
    pub timeout: Duration,
    /// How long `POST /api/v1/invalidations` waits for every live node's acknowledgement.
    pub invalidation_wait: Duration,
    /// How often a node announces itself; it counts as gone after three missed heartbeats.
    pub heartbeat: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RedisConfig {
    /// `redis://host:port/db` (the password, if any, kept separately so logs can show the URL).
    pub url: String,
    pub password: Option<String>,
}

impl RedisConfig {
    /// The URL with the password spliced in, for the client only (never log it).
    pub fn connection_url(&self) -> String {
        match (&self.password, self.url.split_once("://")) {
            (Some(p), Some((scheme, rest))) if !rest.contains('@') => {
                let enc: String = p
                    .bytes()
                    .map(|b| match b {
                        b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
                        _ => format!("%{b:02X}"),
                    })
                    .collect();
                format!("{scheme}://:{enc}@{rest}")
            }
            _ => self.url.clone(),
        }
    }
}
