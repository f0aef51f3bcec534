//! Who may use the admin API, checked in front of every route (so no route can forget it):
//!
//! - **Host**: the API answers only to `Host` (or an absolute URI's authority) naming
//!   `localhost`, an IP literal of its listen address (any IP literal when it listens on all
//!   addresses) or a configured name. A page on a domain the attacker rebinds to 127.0.0.1
//!   (DNS rebinding) sends its own domain as `Host`, so the browser can neither read the API nor
//!   drive it. Refused with 421 Misdirected Request.
//! - **Changes** (any method but GET and HEAD) need the admin token.
//! - **Reads** need the admin or the read-only token when `protect_reads` is on, except
//!   `/health`, the dashboard's static page `/`, and `/metrics` with `open_metrics`.

use std::net::IpAddr;

use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use flotilla_config::AdminConfig;

use crate::auth;

/// Paths anyone may read even when reads are protected: the health check a balancer or
/// orchestrator probes, and the dashboard page (no data; it asks for a token for its one call).
const OPEN_READS: [&str; 2] = ["/health", "/"];

#[derive(Clone, Debug, Default)]
pub struct Access {
    token: Option<String>,
    read_token: Option<String>,
    protect_reads: bool,
    open_metrics: bool,
    listen_ip: Option<IpAddr>,
    hosts: Vec<String>,
}

impl Access {
    pub fn new(cfg: &AdminConfig) -> Self {
        Self {
            token: cfg.token.clone(),
            read_token: cfg.read_token.clone(),
            protect_reads: cfg.protect_reads,
            open_metrics: cfg.open_metrics,
            listen_ip: Some(cfg.listen.ip()),
            hosts: cfg.allowed_hosts.clone(),
        }
    }

    /// The admin token only, reads open, any host: what the API did before these checks (tests).
    pub fn token_only(token: Option<String>) -> Self {
        Self { token, ..Self::default() }
    }

    /// Whether some token is configured (the dashboard's data then needs one).
    pub(crate) fn has_tokens(&self) -> bool {
        self.token.is_some() || self.read_token.is_some()
    }

    /// Carries the admin token (changes need it).
    pub(crate) fn admin(&self, headers: &HeaderMap) -> bool {
        auth::authorized(headers, self.token.as_deref())
    }

    /// Carries a token that may read.
    pub(crate) fn reader(&self, headers: &HeaderMap) -> bool {
        self.admin(headers) | auth::authorized(headers, self.read_token.as_deref())
    }

    /// What a request must carry: `Ok` to proceed, else the status and why.
    pub(crate) fn check(&self, method: &Method, uri: &Uri, headers: &HeaderMap) -> Result<(), (StatusCode, String)> {
        self.check_host(uri, headers)?;
        let read = matches!(*method, Method::GET | Method::HEAD);
        let ok = match read {
            false => self.admin(headers),
            true if !self.protect_reads => true,
            true => {
                let path = uri.path();
                OPEN_READS.contains(&path) || (self.open_metrics && path == "/metrics") || self.reader(headers)
            }
        };
        if ok {
            return Ok(());
        }
        let why = if read { "this read needs a bearer token" } else { "missing or wrong bearer token" };
        Err((StatusCode::UNAUTHORIZED, why.into()))
    }

    fn check_host(&self, uri: &Uri, headers: &HeaderMap) -> Result<(), (StatusCode, String)> {
        if self.listen_ip.is_none() {
            return Ok(()); // `token_only`: no host rule
        }
        let mut hosts = headers.get_all(header::HOST).iter();
        let host = match (hosts.next(), hosts.next()) {
            (Some(h), None) => Some(h.to_str().map_err(|_| bad("the Host header is not ASCII"))?),
            (Some(_), Some(_)) => return Err(bad("more than one Host header")),
            (None, _) => None,
        };
        // HTTP/2 carries the authority in the URI; an absolute-form HTTP/1.1 target too.
        let named: Vec<&str> = host.into_iter().chain(uri.authority().map(|a| a.as_str())).collect();
        if named.is_empty() {
            return Err(bad("a Host header is required"));
        }
        for h in named {
            if !self.host_allowed(h) {
                let shown: String = h.chars().take(100).collect();
                return Err((
                    StatusCode::MISDIRECTED_REQUEST,
                    format!("host {shown:?} is not one this admin API answers to (add it to admin.allowed_hosts)"),
                ));
            }
        }
        Ok(())
    }

    /// `host` is `name`, `name:port`, `ip:port` or `[v6]:port`, as sent.
    fn host_allowed(&self, host: &str) -> bool {
        let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
        let name = match host.strip_prefix('[') {
            Some(rest) => match rest.split_once(']') {
                Some((v6, "")) => v6,
                Some((v6, port)) if port.strip_prefix(':').is_some_and(is_port) => v6,
                _ => return false,
            },
            None => match host.rsplit_once(':') {
                Some((name, port)) if is_port(port) => name,
                Some(_) => return false,
                None => host,
            },
        };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Ok(ip) = name.parse::<IpAddr>() {
            // A rebinding page sends its own domain name, never an IP literal.
            return match self.listen_ip {
                None => true,
                Some(l) => l.is_unspecified() || l == ip || (l.is_loopback() && ip.is_loopback()),
            };
        }
        name == "localhost" || self.hosts.contains(&name)
    }
}

fn is_port(s: &str) -> bool {
    !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit())
}

fn bad(msg: &str) -> (StatusCode, String) {
    (StatusCode::BAD_REQUEST, msg.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(listen: &str, hosts: &[&str]) -> Access {
        Access {
            listen_ip: Some(listen.parse().unwrap()),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            ..Access::default()
        }
    }

    #[test]
    fn hosts_a_rebinding_page_could_send_are_refused() {
        let a = access("127.0.0.1", &["admin.internal"]);
        for ok in ["127.0.0.1:9090", "127.0.0.1", "localhost:9090", "LOCALHOST.", "admin.internal", "Admin.Internal:80"]
        {
            assert!(a.host_allowed(ok), "{ok}");
        }
        for bad in [
            "evil.example:9090",
            "127.0.0.1.nip.io",
            "10.0.0.5:9090",
            "localhost:x",
            "[::1",
            "admin.internal:99999999",
            "",
        ] {
            assert!(!a.host_allowed(bad), "{bad}");
        }
        let any = access("0.0.0.0", &[]);
        assert!(any.host_allowed("10.0.0.5:9090") && any.host_allowed("[fd00::1]:9090"));
        assert!(!any.host_allowed("evil.example"));
    }

    #[test]
    fn reads_need_a_token_only_when_protected_and_never_the_open_ones() {
        let mut a = access("127.0.0.1", &[]);
        a.token = Some("admin".into());
        a.read_token = Some("read".into());
        let uri = |p: &str| p.parse::<Uri>().unwrap();
        let with = |t: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::HOST, "127.0.0.1:9090".parse().unwrap());
            if !t.is_empty() {
                h.insert(header::AUTHORIZATION, format!("Bearer {t}").parse().unwrap());
            }
            h
        };
        assert!(a.check(&Method::GET, &uri("/api/v1/groups"), &with("")).is_ok(), "reads open by default");
        a.protect_reads = true;
        assert_eq!(a.check(&Method::GET, &uri("/api/v1/groups"), &with("")).unwrap_err().0, StatusCode::UNAUTHORIZED);
        assert!(a.check(&Method::GET, &uri("/api/v1/groups"), &with("read")).is_ok());
        assert!(a.check(&Method::HEAD, &uri("/api/v1/groups"), &with("admin")).is_ok());
        assert!(a.check(&Method::GET, &uri("/health"), &with("")).is_ok());
        assert!(a.check(&Method::GET, &uri("/"), &with("")).is_ok());
        assert!(a.check(&Method::GET, &uri("/metrics"), &with("")).is_err());
        a.open_metrics = true;
        assert!(a.check(&Method::GET, &uri("/metrics"), &with("")).is_ok());
        // The read token never changes anything.
        assert!(a.check(&Method::POST, &uri("/api/v1/reload"), &with("read")).is_err());
        assert!(a.check(&Method::POST, &uri("/api/v1/reload"), &with("admin")).is_ok());
        // The host comes first, whatever the token.
        let mut h = with("admin");
        h.insert(header::HOST, "evil.example".parse().unwrap());
        assert_eq!(a.check(&Method::GET, &uri("/health"), &h).unwrap_err().0, StatusCode::MISDIRECTED_REQUEST);
        let absolute: Uri = "http://evil.example/health".parse().unwrap();
        assert_eq!(a.check(&Method::GET, &absolute, &with("")).unwrap_err().0, StatusCode::MISDIRECTED_REQUEST);
        h.remove(header::HOST);
        assert_eq!(a.check(&Method::GET, &uri("/health"), &h).unwrap_err().0, StatusCode::BAD_REQUEST);
    }
}
