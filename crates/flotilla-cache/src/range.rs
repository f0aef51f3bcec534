//! `Range: bytes=…` (RFC 9110 §14.1.2) against a representation of known length, and the
//! `multipart/byteranges` body (§14.6) for several ranges.

use bytes::{Bytes, BytesMut};

/// At most this many ranges per request; more get the whole representation (as Apache does
/// since CVE-2011-3192: many small overlapping ranges are a cheap way to amplify a response).
const MAX_RANGES: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ranges {
    /// Ignore the header: send the whole representation with 200.
    Full,
    /// Inclusive (first, last) byte positions, sorted, merged, within the length.
    Satisfiable(Vec<(u64, u64)>),
    /// 416 with `Content-Range: bytes */len`.
    Unsatisfiable,
}

pub fn parse(spec: &str, len: u64) -> Ranges {
    let Some(set) = spec.trim().strip_prefix("bytes=") else { return Ranges::Full };
    let parts: Vec<&str> = set.split(',').map(str::trim).filter(|p| !p.is_empty()).collect();
    if parts.is_empty() || parts.len() > MAX_RANGES {
        return Ranges::Full;
    }
    let mut out = Vec::new();
    for p in parts {
        let Some((a, b)) = p.split_once('-') else { return Ranges::Full };
        let (a, b) = (a.trim(), b.trim());
        match (a, b) {
            ("", suffix) => {
                let Ok(n) = suffix.parse::<u64>() else { return Ranges::Full };
                if n > 0 && len > 0 {
                    out.push((len.saturating_sub(n), len - 1));
                }
            }
            (first, "") => {
                let Ok(first) = first.parse::<u64>() else { return Ranges::Full };
                if first < len {
                    out.push((first, len - 1));
                }
            }
            (first, last) => {
                let (Ok(first), Ok(last)) = (first.parse::<u64>(), last.parse::<u64>()) else { return Ranges::Full };
                if first > last {
                    return Ranges::Full;
                }
                if first < len {
                    out.push((first, last.min(len - 1)));
                }
            }
        }
    }
    if out.is_empty() {
        return Ranges::Unsatisfiable;
    }
    out.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(out.len());
    for (a, b) in out {
        match merged.last_mut() {
            Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
            _ => merged.push((a, b)),
        }
    }
    Ranges::Satisfiable(merged)
}

/// The `multipart/byteranges` body for `ranges` of `body`; returns (boundary, body).
pub fn multipart(
    body: &Bytes,
    ranges: &[(u64, u64)],
    content_type: Option<&str>,
    boundary_seed: u64,
) -> (String, Bytes) {
    let boundary = format!("flotilla-{boundary_seed:016x}");
    let len = body.len() as u64;
    let mut out = BytesMut::new();
    for &(a, b) in ranges {
        out.extend_from_slice(format!("\r\n--{boundary}\r\n").as_bytes());
        if let Some(ct) = content_type {
            out.extend_from_slice(format!("Content-Type: {ct}\r\n").as_bytes());
        }
        out.extend_from_slice(format!("Content-Range: bytes {a}-{b}/{len}\r\n\r\n").as_bytes());
        out.extend_from_slice(&body[a as usize..=b as usize]);
    }
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (boundary, out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_suffix_open_and_clamped() {
        assert_eq!(parse("bytes=0-9", 100), Ranges::Satisfiable(vec![(0, 9)]));
        assert_eq!(parse("bytes=90-", 100), Ranges::Satisfiable(vec![(90, 99)]));
        assert_eq!(parse("bytes=-10", 100), Ranges::Satisfiable(vec![(90, 99)]));
        assert_eq!(parse("bytes=-500", 100), Ranges::Satisfiable(vec![(0, 99)]));
        assert_eq!(parse("bytes=50-500", 100), Ranges::Satisfiable(vec![(50, 99)]));
        assert_eq!(parse("bytes=100-", 100), Ranges::Unsatisfiable);
        assert_eq!(parse("bytes=-0", 100), Ranges::Unsatisfiable);
        assert_eq!(parse("bytes=9-1", 100), Ranges::Full);
        assert_eq!(parse("items=0-1", 100), Ranges::Full);
        assert_eq!(parse("bytes=a-b", 100), Ranges::Full);
    }

    #[test]
    fn several_are_sorted_merged_and_bounded() {
        assert_eq!(parse("bytes=50-59, 0-9", 100), Ranges::Satisfiable(vec![(0, 9), (50, 59)]));
        assert_eq!(parse("bytes=0-9,5-20,21-30", 100), Ranges::Satisfiable(vec![(0, 30)]));
        assert_eq!(parse("bytes=0-1,200-300", 100), Ranges::Satisfiable(vec![(0, 1)]));
        let many = (0..17).map(|i| format!("{i}-{i}")).collect::<Vec<_>>().join(",");
        assert_eq!(parse(&format!("bytes={many}"), 100), Ranges::Full);
    }

    #[test]
    fn multipart_body() {
        let body = Bytes::from_static(b"0123456789");
        let (b, out) = multipart(&body, &[(0, 1), (8, 9)], Some("text/plain"), 7);
        let text = String::from_utf8(out.to_vec()).unwrap();
        assert_eq!(
            text,
            format!("\r\n--{b}\r\nContent-Type: text/plain\r\nContent-Range: bytes 0-1/10\r\n\r\n01\r\n--{b}\r\nContent-Type: text/plain\r\nContent-Range: bytes 8-9/10\r\n\r\n89\r\n--{b}--\r\n")
        );
    }
}
