//! The PROXY protocol (HAProxy's, versions 1 and 2) on client connections: a TCP balancer in
//! front of the edge (HAProxy, AWS NLB, another L4 tier) says who the client is in a header
//! before the client's first byte. With `edge.proxy_protocol = true` every connection must
//! start with one; its source address then drives access logs, rate limits, `hash_ip`,
//! `max_connections_per_ip` and the forwarding headers, as if the client had connected directly.
//!
//! Parsing is `ppp`'s; what arrives after the header — a TLS ClientHello, an HTTP/2 preface, a
//! request — is handed on untouched (see `prefixed.rs`).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ppp::{v1, v2, PartialResult};

/// v2 headers are 16 bytes plus a length of up to 64 KiB (TLVs); more than this is refused.
const MAX_HEADER: usize = 4096;
/// The fixed part of a v2 header: signature, version/command, family/protocol, length.
const V2_FIXED: usize = 16;

/// Why a connection that had to start with a PROXY header is closed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PpError {
    #[error("no complete PROXY header within the deadline")]
    Timeout,
    #[error("connection closed before a PROXY header")]
    Closed,
    #[error("not a valid PROXY protocol header")]
    Invalid,
    #[error("PROXY header longer than {MAX_HEADER} bytes")]
    TooLong,
    #[error("reading the PROXY header: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads the PROXY header at the start of `io` into `buf` and takes it off the front, leaving
/// what followed it (a ClientHello, a request) in `buf` for the protocol after it. `Ok(Some)`:
/// the client it names; `Ok(None)`: a `LOCAL` or `UNKNOWN` header (the balancer's own health
/// check, or a client it cannot describe) — the connection's own peer stands.
pub(crate) async fn read<R: tokio::io::AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut Vec<u8>,
    limit: Duration,
) -> Result<Option<SocketAddr>, PpError> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if !buf.is_empty() {
            match parse(buf) {
                Parsed::Done { len, client } => {
                    buf.drain(..len);
                    return Ok(client);
                }
                Parsed::Invalid => return Err(PpError::Invalid),
                Parsed::Need(total) if total > MAX_HEADER => return Err(PpError::TooLong),
                Parsed::Need(_) => {}
            }
        }
        match crate::prefixed::read_more(io, buf, deadline).await {
            Ok(0) => return Err(PpError::Closed),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return Err(PpError::Timeout),
            Err(e) => return Err(PpError::Io(e)),
        }
    }
}

enum Parsed {
    Done {
        len: usize,
        client: Option<SocketAddr>,
    },
    /// At least this many bytes are needed to decide (a guess for v1, exact for v2).
    Need(usize),
    Invalid,
}

fn parse(b: &[u8]) -> Parsed {
    if b.starts_with(v2::PROTOCOL_PREFIX) || v2::PROTOCOL_PREFIX.starts_with(b) {
        return match v2::Header::try_from(b) {
            Ok(h) => Parsed::Done { len: h.len(), client: v2_client(&h) },
            Err(v2::ParseError::Partial(_, len)) => Parsed::Need(V2_FIXED + len),
            Err(e) if e.is_incomplete() => Parsed::Need(V2_FIXED),
            Err(_) => Parsed::Invalid,
        };
    }
    match v1::Header::try_from(b) {
        Ok(h) => Parsed::Done { len: h.header.len(), client: v1_client(&h) },
        Err(e) if e.is_incomplete() => Parsed::Need(b.len() + 1),
        Err(_) => Parsed::Invalid,
    }
}

fn v1_client(h: &v1::Header<'_>) -> Option<SocketAddr> {
    match h.addresses {
        v1::Addresses::Tcp4(a) => Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port)),
        v1::Addresses::Tcp6(a) => Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port)),
        v1::Addresses::Unknown => None,
    }
}

fn v2_client(h: &v2::Header<'_>) -> Option<SocketAddr> {
    if h.command == v2::Command::Local {
        return None;
    }
    match h.addresses {
        v2::Addresses::IPv4(a) => Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port)),
        v2::Addresses::IPv6(a) => Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port)),
        v2::Addresses::Unspecified | v2::Addresses::Unix(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(b: &[u8]) -> (usize, Option<SocketAddr>) {
        match parse(b) {
            Parsed::Done { len, client } => (len, client),
            Parsed::Need(n) => panic!("needs {n}"),
            Parsed::Invalid => panic!("invalid"),
        }
    }

    #[test]
    fn v1_headers() {
        let h = b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 443\r\nGET / HTTP/1.1\r\n";
        let (len, client) = done(h);
        assert_eq!(&h[len..], b"GET / HTTP/1.1\r\n");
        assert_eq!(client, Some("203.0.113.7:51234".parse().unwrap()));
        let (_, client) = done(b"PROXY TCP6 2001:db8::1 ::1 4000 80\r\n");
        assert_eq!(client, Some("[2001:db8::1]:4000".parse().unwrap()));
        assert_eq!(done(b"PROXY UNKNOWN\r\n").1, None);
        assert!(matches!(parse(b"PROXY TCP4 203.0"), Parsed::Need(_)));
        assert!(matches!(parse(b"GET / HTTP/1.1\r\n"), Parsed::Invalid));
        assert!(matches!(parse(b"PROXY TCP4 999.0.0.1 10.0.0.1 1 2\r\n"), Parsed::Invalid));
    }

    #[test]
    fn v2_headers() {
        let src: SocketAddr = "198.51.100.9:40000".parse().unwrap();
        let dst: SocketAddr = "10.0.0.1:443".parse().unwrap();
        let mut h =
            v2::Builder::with_addresses(v2::Version::Two | v2::Command::Proxy, v2::Protocol::Stream, (src, dst))
                .write_tlv(v2::Type::NoOp, b"padding")
                .unwrap()
                .build()
                .unwrap();
        let header_len = h.len();
        h.extend_from_slice(b"\x16\x03\x01");
        let (len, client) = done(&h);
        assert_eq!((len, client), (header_len, Some(src)));
        assert!(matches!(parse(&h[..20]), Parsed::Need(n) if n == header_len));
        assert!(matches!(parse(&h[..5]), Parsed::Need(_)));
        let local = v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Local,
            v2::Protocol::Unspecified,
            v2::Addresses::Unspecified,
        )
        .build()
        .unwrap();
        assert_eq!(done(&local), (16, None));
    }
}
