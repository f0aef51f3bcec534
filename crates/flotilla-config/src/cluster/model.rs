//! `[cluster]`: several Flotilla nodes sharing edge state through Redis.

use std::time::Duration;

/// Present only when the file has a `[cluster]` table; a node without one needs no Redis.
/// `Debug` hides the secrets (the Redis password, `secret`).
#[derive(Clone, PartialEq)]
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

impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("node", &self.node)
            .field("redis", &self.redis)
            .field("lease", &self.lease)
            .field("prefix", &self.prefix)
            .field("secret", &self.secret.as_ref().map(|_| "<hidden>"))
            .field("timeout", &self.timeout)
            .field("invalidation_wait", &self.invalidation_wait)
            .field("heartbeat", &self.heartbeat)
            .finish()
    }
}

/// Where Redis is. The password never sits in `url`: one written inside the URL
/// (`redis://:pw@host`, `redis://user:pw@host`, `unix:///sock?pass=pw`) is moved to `password`
/// when the config is read, so `url` is safe to log and to show in the API. `Debug` hides the
/// password.
#[derive(Clone, PartialEq)]
pub struct RedisConfig {
    /// `redis://[user@]host:port/db` or `unix:///path?db=N`, without the password.
    pub url: String,
    pub password: Option<String>,
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &self.url)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .finish()
    }
}

impl RedisConfig {
    /// Splits a URL as written into the URL without its password, and the password
    /// (percent-decoded). `Err` when the password is not UTF-8 once decoded.
    pub fn split_password(written: &str) -> Result<(String, Option<String>), String> {
        let Some((scheme, rest)) = written.split_once("://") else { return Ok((written.to_string(), None)) };
        if scheme == "unix" {
            let Some((path, query)) = rest.split_once('?') else { return Ok((written.to_string(), None)) };
            let mut password = None;
            let kept: Vec<&str> = query
                .split('&')
                .filter(|pair| match pair.strip_prefix("pass=") {
                    Some(p) => {
                        password = Some(p);
                        false
                    }
                    None => true,
                })
                .collect();
            let url = if kept.is_empty() {
                format!("{scheme}://{path}")
            } else {
                format!("{scheme}://{path}?{}", kept.join("&"))
            };
            return Ok((url, password.map(percent_decode).transpose()?.filter(|p| !p.is_empty())));
        }
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        let Some((userinfo, host)) = authority.rsplit_once('@') else { return Ok((written.to_string(), None)) };
        let (user, password) = match userinfo.split_once(':') {
            Some((u, p)) => (u, Some(percent_decode(p)?)),
            None => (userinfo, None),
        };
        let url = if user.is_empty() {
            format!("{scheme}://{host}{tail}")
        } else {
            format!("{scheme}://{user}@{host}{tail}")
        };
        Ok((url, password.filter(|p| !p.is_empty())))
    }

    /// Where this Redis is, written one way whatever the URL's spelling of it (no credentials,
    /// host in lower case, default port and database filled in): nodes of one cluster derive
    /// their shared deployment id from it.
    pub fn location(&self) -> String {
        let Some((scheme, rest)) = self.url.split_once("://") else { return self.url.clone() };
        if scheme == "unix" {
            let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
            let db = query.split('&').find_map(|p| p.strip_prefix("db=")).unwrap_or("0");
            return format!("unix:{path}/{db}");
        }
        let rest = rest.split(['?', '#']).next().unwrap_or("");
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h).to_ascii_lowercase();
        let has_port = match host_port.rsplit_once(':') {
            Some((h, p)) => {
                !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && (!h.starts_with('[') || h.ends_with(']'))
            }
            None => false,
        };
        let host_port = if has_port { host_port } else { format!("{host_port}:6379") };
        let db = match path.trim_matches('/') {
            "" => "0",
            d => d,
        };
        format!("tcp:{host_port}/{db}")
    }

    /// `text` with the password (as written and percent-encoded) replaced by `***`: for error
    /// messages from the Redis client before they are logged or shown.
    pub fn scrub(&self, text: String) -> String {
        match &self.password {
            Some(p) if !p.is_empty() => text.replace(p.as_str(), "***").replace(&percent_encode(p), "***"),
            _ => text,
        }
    }

    /// The URL with the password spliced in, for the client only (never log it).
    pub fn connection_url(&self) -> String {
        let Some(p) = &self.password else { return self.url.clone() };
        let enc = percent_encode(p);
        let Some((scheme, rest)) = self.url.split_once("://") else { return self.url.clone() };
        if scheme == "unix" {
            let sep = if rest.contains('?') { '&' } else { '?' };
            return format!("{}{sep}pass={enc}", self.url);
        }
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        match rest[..end].rsplit_once('@') {
            Some((user, _)) => format!("{scheme}://{user}:{enc}@{}", &rest[user.len() + 1..]),
            None => format!("{scheme}://:{enc}@{rest}"),
        }
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn percent_decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (b[i], b.get(i + 1).copied().and_then(hex), b.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| "the password in the URL is not UTF-8 once percent-decoded".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(url: &str) -> (String, Option<String>) {
        RedisConfig::split_password(url).unwrap()
    }

    #[test]
    fn a_password_in_the_url_is_moved_out_and_spliced_back_for_the_client() {
        for (written, url, pw) in [
            ("redis://:s%40cret@h:6379/0", "redis://h:6379/0", Some("s@cret")),
            ("redis://app:pw@h/1", "redis://app@h/1", Some("pw")),
            ("redis://app@h/1", "redis://app@h/1", None),
            ("redis://h:6379/0", "redis://h:6379/0", None),
            ("rediss://u:p:q@h:1/0?protocol=resp3", "rediss://u@h:1/0?protocol=resp3", Some("p:q")),
            ("unix:///run/redis.sock?db=2&pass=pw", "unix:///run/redis.sock?db=2", Some("pw")),
            ("unix:///run/redis.sock?pass=pw", "unix:///run/redis.sock", Some("pw")),
        ] {
            let (u, p) = split(written);
            assert_eq!((u.as_str(), p.as_deref()), (url, pw), "{written}");
            let back = RedisConfig { url: u, password: p }.connection_url();
            assert_eq!(split(&back), split(written), "{written} -> {back}");
        }
        let c = RedisConfig { url: "redis://app@h/1".into(), password: Some("a b".into()) };
        assert_eq!(c.connection_url(), "redis://app:a%20b@h/1");
        assert!(!format!("{c:?}").contains("a b"), "{c:?}");
    }
}
