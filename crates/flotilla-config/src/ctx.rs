//! What every section's validation shares: the context that collects errors (located by span)
//! and warnings, and the checks of values that several sections take (durations, sizes,
//! bounded integers, addresses, `${VAR}` expansion, files, names).

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{ConfigError, Locator};
use crate::raw::{SizeLit, S};
use crate::{env, units};

/// One load's validation state: where errors point (`loc`), where relative paths resolve
/// (`base_dir`), the environment for `${VAR}`, and everything found so far.
pub(crate) struct Ctx<'a> {
    pub loc: Locator<'a>,
    pub base_dir: &'a Path,
    pub env: &'a dyn Fn(&str) -> Option<String>,
    pub errors: Vec<ConfigError>,
    pub warnings: Vec<String>,
}

impl Ctx<'_> {
    pub(crate) fn err<T>(&mut self, spanned: &S<T>, msg: impl Into<String>) {
        self.err_at(spanned.span().start, msg);
    }

    pub(crate) fn err_at(&mut self, offset: usize, msg: impl Into<String>) {
        let e = self.loc.error(offset, msg);
        self.errors.push(e);
    }

    pub(crate) fn duration(&mut self, v: &Option<S<String>>, key: &str, default: Duration) -> Duration {
        let Some(v) = v else { return default };
        match units::parse_duration(v.get_ref()) {
            Ok(d) => d,
            Err(e) => {
                self.err(v, format!("{key}: {e}"));
                default
            }
        }
    }

    pub(crate) fn size(&mut self, v: &Option<S<SizeLit>>, key: &str, default: u64) -> u64 {
        let Some(v) = v else { return default };
        let parsed = match v.get_ref() {
            SizeLit::Bytes(n) if *n >= 0 => Ok(*n as u64),
            SizeLit::Bytes(n) => Err(format!("must not be negative, got {n}")),
            SizeLit::Text(t) => units::parse_size(t),
        };
        parsed.unwrap_or_else(|e| {
            self.err(v, format!("{key}: {e}"));
            default
        })
    }

    pub(crate) fn int(
        &mut self,
        v: &Option<S<i64>>,
        key: &str,
        range: std::ops::RangeInclusive<i64>,
        default: i64,
    ) -> i64 {
        let Some(v) = v else { return default };
        let n = *v.get_ref();
        if range.contains(&n) {
            n
        } else {
            self.err(v, format!("{key} must be between {} and {}, got {n}", range.start(), range.end()));
            default
        }
    }

    pub(crate) fn socket_addr(&mut self, v: &S<String>, key: &str) -> Option<SocketAddr> {
        match resolve(v.get_ref()) {
            Ok(a) => Some(a),
            Err(e) => {
                self.err(v, format!("{key}: {e}"));
                None
            }
        }
    }

    pub(crate) fn expand(&mut self, v: &S<String>, key: &str) -> String {
        match env::expand(v.get_ref(), self.env) {
            Ok((s, unset)) => {
                for name in unset {
                    self.warnings.push(format!("{key}: environment variable {name} is not set; using an empty value"));
                }
                s
            }
            Err(e) => {
                self.err(v, format!("{key}: {e}"));
                String::new()
            }
        }
    }

    pub(crate) fn existing_file(&mut self, v: &S<String>, key: &str) -> PathBuf {
        let raw = self.expand(v, key);
        let path = self.base_dir.join(raw);
        if !path.is_file() {
            self.err(v, format!("{key}: file {} does not exist", path.display()));
        }
        path
    }
}

/// Accepts "127.0.0.1:80", "[::1]:80" and "localhost:80" (resolved once, now).
pub(crate) fn resolve(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse() {
        return Ok(a);
    }
    if !s.contains(':') {
        return Err(format!("{s:?} is not an address: expected host:port, e.g. \"127.0.0.1:8080\""));
    }
    s.to_socket_addrs()
        .map_err(|e| format!("cannot resolve {s:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("{s:?} resolves to no address"))
}

/// A name of a table entry (target group, group, notifier, …): letters, digits, '-' or '_'.
pub(crate) fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// An HTTP field name (RFC 9110 token): what header and cookie names must be.
pub(crate) fn http_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}
