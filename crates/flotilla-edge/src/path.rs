//! One canonical request path, made before routing, keying and forwarding, so that the route,
//! the rate limiter, the cache key and the origin all read the same path.
//!
//! Without it `/static/..%2fprivate` could match a cached `/static/*` route while the origin
//! serves `/private`, and `//login` or `/login/.` could dodge an exact-path rate limit. The
//! rules (RFC 3986 §6.2.2, as Envoy's `normalize_path` + `merge_slashes` do):
//! - percent-escapes of unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded, every other
//!   escape is kept with upper-case hex (`%c3%a9` → `%C3%A9`); a malformed escape is a 400;
//! - an encoded slash or backslash (`%2F`, `%5C`) and a literal backslash follow
//!   `edge.escaped_slashes`: refused with 400 (the default), kept as data (but never next to a
//!   `.`/`..`, which an origin that decodes them would climb with), or decoded to `/`;
//! - runs of `/` become one;
//! - `.` and `..` segments (also spelled `%2e`) are resolved, never above the root, and a segment
//!   that is `.`/`..` followed by `;` (`..;/` — Tomcat reads it as `..`) is a 400.
//!
//! Route matching then compares paths ASCII-case-insensitively and an exact path also matches
//! with one trailing slash (see `flotilla_config::PathPattern`), so `/LOGIN` and `/login/` meet
//! the `/login` route's limit; the origin still gets the canonical path with its own case.

use flotilla_config::EscapedSlashes;

/// Why a path is refused (400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BadPath {
    /// `%2F`/`%5C`/`\` with `escaped_slashes = "reject"`.
    EscapedSlash,
    /// A malformed escape, a path not starting with `/`, or a `..;` segment.
    Malformed,
}

/// The canonical form of `path`, or `None` when it already is canonical (the common case,
/// decided by one scan without allocating).
pub(crate) fn canonicalize(path: &str, slashes: EscapedSlashes) -> Result<Option<String>, BadPath> {
    let b = path.as_bytes();
    if b.first() != Some(&b'/') {
        // `*` (OPTIONS) and anything else that is not origin-form is left to routing (no match).
        return if path == "*" { Ok(None) } else { Err(BadPath::Malformed) };
    }
    // One pass: an escape, a backslash, `//` or a `/.` that may start a dot segment.
    let suspicious = b
        .iter()
        .enumerate()
        .any(|(i, &c)| c == b'%' || c == b'\\' || (c == b'/' && matches!(b.get(i + 1), Some(b'/') | Some(b'.'))));
    if !suspicious {
        return Ok(None);
    }
    let canonical = rebuild(path, slashes)?;
    Ok((canonical != path).then_some(canonical))
}

fn rebuild(path: &str, slashes: EscapedSlashes) -> Result<String, BadPath> {
    // Decode what may be decoded; the result uses `/` only as a separator.
    let decoded = decode(path.as_bytes(), slashes)?;
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = decoded.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    let mut trailing_slash = false;
    for (i, seg) in segments.iter().enumerate() {
        let bare = seg.split(';').next().unwrap_or("");
        if (bare == "." || bare == "..") && seg.len() != bare.len() {
            return Err(BadPath::Malformed);
        }
        // Kept encoded, a slash is data to us but a separator to origins that decode it (nginx
        // does): `..%2F` would climb out of the route there. Refused even in `keep` mode.
        if slashes == EscapedSlashes::Keep
            && seg.contains('%')
            && seg.split("%2F").flat_map(|p| p.split("%5C")).any(|p| p == "." || p == "..")
        {
            return Err(BadPath::EscapedSlash);
        }
        match *seg {
            "" => trailing_slash = i == last,
            "." => trailing_slash = i == last,
            ".." => {
                out.pop();
                trailing_slash = i == last;
            }
            s => {
                out.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut canonical = String::with_capacity(path.len());
    for seg in &out {
        canonical.push('/');
        canonical.push_str(seg);
    }
    if trailing_slash || canonical.is_empty() {
        canonical.push('/');
    }
    Ok(canonical)
}

/// Percent-decoding as the module doc says; the output keeps every byte that is not decoded.
fn decode(b: &[u8], slashes: EscapedSlashes) -> Result<String, BadPath> {
    let mut out = String::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let (Some(&h), Some(&l)) = (b.get(i + 1), b.get(i + 2)) else { return Err(BadPath::Malformed) };
                let (Some(hi), Some(lo)) = (hex(h), hex(l)) else { return Err(BadPath::Malformed) };
                let byte = hi << 4 | lo;
                match byte {
                    b'/' | b'\\' => match slashes {
                        EscapedSlashes::Reject => return Err(BadPath::EscapedSlash),
                        EscapedSlashes::Keep => {
                            out.push('%');
                            out.push_str(if byte == b'/' { "2F" } else { "5C" });
                        }
                        EscapedSlashes::Decode => out.push('/'),
                    },
                    c if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') => out.push(c as char),
                    c => {
                        const HEX: &[u8; 16] = b"0123456789ABCDEF";
                        out.push('%');
                        out.push(HEX[usize::from(c >> 4)] as char);
                        out.push(HEX[usize::from(c & 0xf)] as char);
                    }
                }
                i += 3;
            }
            b'\\' => {
                match slashes {
                    EscapedSlashes::Reject => return Err(BadPath::EscapedSlash),
                    EscapedSlashes::Keep => out.push_str("%5C"),
                    EscapedSlashes::Decode => out.push('/'),
                }
                i += 1;
            }
            c if c.is_ascii() => {
                out.push(c as char);
                i += 1;
            }
            // hyper only hands over ASCII request targets; anything else is not a path.
            _ => return Err(BadPath::Malformed),
        }
    }
    Ok(out)
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(p: &str) -> Result<String, BadPath> {
        canonicalize(p, EscapedSlashes::Reject).map(|c| c.unwrap_or_else(|| p.to_string()))
    }

    #[test]
    fn canonical_paths_are_left_alone() {
        for p in ["/", "/index.html", "/a/b/c", "/a/b/", "/.well-known/acme-challenge/x", "/a.b/c..d/e.", "*"] {
            assert_eq!(canonicalize(p, EscapedSlashes::Reject), Ok(None), "{p}");
        }
    }

    #[test]
    fn dot_segments_slashes_and_escapes() {
        assert_eq!(canon("/static/../private").unwrap(), "/private");
        assert_eq!(canon("/static/%2e%2e/private").unwrap(), "/private");
        assert_eq!(canon("/static/.%2E/private").unwrap(), "/private");
        assert_eq!(canon("/../../etc/passwd").unwrap(), "/etc/passwd");
        assert_eq!(canon("//login").unwrap(), "/login");
        assert_eq!(canon("/login/.").unwrap(), "/login/");
        assert_eq!(canon("/a/./b//c/").unwrap(), "/a/b/c/");
        assert_eq!(canon("/a/b/..").unwrap(), "/a/");
        assert_eq!(canon("/%7euser/%41%62c").unwrap(), "/~user/Abc");
        assert_eq!(canon("/caf%c3%a9").unwrap(), "/caf%C3%A9");
        assert_eq!(canon("/a%20b").unwrap(), "/a%20b");
        assert_eq!(canon("/..").unwrap(), "/");
    }

    #[test]
    fn refused_paths() {
        assert_eq!(canon("/static/..%2fprivate"), Err(BadPath::EscapedSlash));
        assert_eq!(canon("/static/..%5Cprivate"), Err(BadPath::EscapedSlash));
        assert_eq!(canon("/static\\..\\private"), Err(BadPath::EscapedSlash));
        assert_eq!(canon("/static/..;/private"), Err(BadPath::Malformed));
        assert_eq!(canon("/static/.;x/private"), Err(BadPath::Malformed));
        assert_eq!(canon("/bad%zz"), Err(BadPath::Malformed));
        assert_eq!(canon("/bad%2"), Err(BadPath::Malformed));
        // `;` elsewhere is ordinary data.
        assert_eq!(canonicalize("/a;v=1/b", EscapedSlashes::Reject), Ok(None));
    }

    #[test]
    fn escaped_slash_policies() {
        let keep = |p| canonicalize(p, EscapedSlashes::Keep).unwrap().unwrap_or_else(|| p.to_string());
        assert_eq!(keep("/a%2fb"), "/a%2Fb", "kept as data");
        assert_eq!(keep("/a%5cb"), "/a%5Cb");
        // A dot segment behind an encoded slash is refused even when slashes are kept: an origin
        // that decodes them would climb out of the route.
        assert_eq!(canonicalize("/static/..%2fprivate", EscapedSlashes::Keep), Err(BadPath::EscapedSlash));
        assert_eq!(canonicalize("/static/x%2F..%2Fy", EscapedSlashes::Keep), Err(BadPath::EscapedSlash));
        let decode = |p| canonicalize(p, EscapedSlashes::Decode).unwrap().unwrap_or_else(|| p.to_string());
        assert_eq!(decode("/static/..%2fprivate"), "/private");
        assert_eq!(decode("/static\\..\\private"), "/private");
    }
}
