//! The PROXY protocol (HAProxy's, versions 1 and 2) on client connections: a TCP balancer in
//! front of the edge (HAProxy, AWS NLB, another L4 tier) says who the client is in a header
//! before the client's first byte. With `edge.proxy_protocol = true` every connection must
//! start with one; its source address then drives access logs, rate limits, `hash_ip`,
//! `max_connections_per_ip` and the forwarding headers, as if the client had connected directly.
//!
//! Parsing is `ppp`'s; this module reads exactly the header's bytes (peeking first), so what
//! follows — a TLS ClientHello, an HTTP/2 preface, a request — is untouched.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ppp::{v1, v2, PartialResult};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

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

/// Reads the PROXY header at the start of `stream`. `Ok(Some(addr))`: the client it names;
/// `Ok(None)`: a `LOCAL` or `UNKNOWN` header (the balancer's own health check, or a client it
/// cannot describe) — the connection's own peer stands.
pub(crate) async fn read(stream: &mut TcpStream, limit: Duration) -> Result<Option<SocketAddr>, PpError> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut buf = vec![0u8; 256];
    let (len, client) = loop {
        let n = tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await.map_err(|_| PpError::Timeout)??;
        if n == 0 {
            return Err(PpError::Closed);
        }
        match parse(&buf[..n]) {
            Parsed::Done { len, client } => break (len, client),
            Parsed::Invalid => return Err(PpError::Invalid),
            Parsed::Need(total) if total > MAX_HEADER => return Err(PpError::TooLong),
            Parsed::Need(total) => {
                if total > buf.len() {
                    buf.resize(total, 0);
                } else if n == buf.len() {
                    buf.resize((buf.len() * 2).min(MAX_HEADER), 0);
                }
                // The rest has not arrived yet (rare: balancers send the header in one segment).
                tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + Duration::from_millis(5))).await;
                if tokio::time::Instant::now() >= deadline {
                    return Err(PpError::Timeout);
                }
            }
        }
    };
    let mut consumed = vec![0u8; len];
    stream.read_exact(&mut consumed).await?;
    Ok(client)
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
