//! A read-side tracker that follows HTTP/1.1 request boundaries on a client connection and flags
//! requests whose head carries both `Transfer-Encoding` and `Content-Length`.
//!
//! Why: hyper handles that case the RFC 9112 §6.1 way (decode as chunked, close afterwards) but
//! drops `Content-Length` before our service sees the request, so the service cannot refuse it.
//! Refusing with 400 is what HAProxy does and what users of a public edge expect from a request
//! that only an attacker sends. The tracker never changes a byte; it only observes.
//!
//! It follows framing exactly as far as it needs to (heads, Content-Length bodies, chunked
//! bodies with trailers) and stops tracking — harmlessly — on anything else (HTTP/2 preface,
//! upgrades, CONNECT, parse errors hyper will reject anyway, heads over the size limit).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What is wrong with a flagged request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Transfer-Encoding and Content-Length together: 400.
    Ambiguous,
    /// The head is larger than `max_header_bytes`: 431. (hyper checks its buffer limit only
    /// while a head is incomplete, so a large head arriving in one read would pass.)
    HeadTooLarge,
}

/// Shared between the tracker (reader side) and the service: the sequence number (0-based) of
/// the first flagged request on this connection (`u64::MAX` if none) and why. After a flagged
/// request the tracker stops, and the service closes the connection.
#[derive(Debug)]
pub(crate) struct FramingFlags {
    first_bad: AtomicU64,
    kind: std::sync::atomic::AtomicU8,
    /// Requests the service has seen so far on this connection.
    served: AtomicU64,
}

impl FramingFlags {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            first_bad: AtomicU64::new(u64::MAX),
            kind: std::sync::atomic::AtomicU8::new(0),
            served: AtomicU64::new(0),
        })
    }

    fn flag(&self, seq: u64, verdict: Verdict) {
        let code = match verdict {
            Verdict::Ambiguous => 1,
            Verdict::HeadTooLarge => 2,
        };
        self.kind.store(code, Ordering::Release);
        let _ = self.first_bad.compare_exchange(u64::MAX, seq, Ordering::AcqRel, Ordering::Acquire);
    }

    /// Called once per HTTP/1 request by the service: what is wrong with it, if anything.
    pub(crate) fn next_request(&self) -> Option<Verdict> {
        let seq = self.served.fetch_add(1, Ordering::Relaxed);
        if self.first_bad.load(Ordering::Acquire) != seq {
            return None;
        }
        match self.kind.load(Ordering::Acquire) {
            1 => Some(Verdict::Ambiguous),
            _ => Some(Verdict::HeadTooLarge),
        }
    }
}

enum State {
    Head,
    Body(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkDataEnd(u8),
    Trailer {
        line_empty: bool,
    },
    /// No longer tracking (HTTP/2, upgrade, or something hyper will reject itself).
    Off,
}

pub(crate) struct Tracker {
    state: State,
    line: Vec<u8>,
    max_head: usize,
    seq: u64,
    flags: Arc<FramingFlags>,
}

impl Tracker {
    pub(crate) fn new(flags: Arc<FramingFlags>, max_head: usize) -> Self {
        Self { state: State::Head, line: Vec::new(), max_head, seq: 0, flags }
    }

    pub(crate) fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match self.state {
                State::Off => return,
                State::Head => {
                    let end = find_head_end(&self.line, data);
                    // Fast path: a whole head in this read, nothing buffered: parse in place.
                    if let (true, Some(end)) = (self.line.is_empty(), end) {
                        if end > self.max_head {
                            self.flags.flag(self.seq, Verdict::HeadTooLarge);
                            self.state = State::Off;
                            return;
                        }
                        if has_content(&data[..end], &[]) {
                            self.on_head(&data[..end]);
                        }
                        data = &data[end..];
                        continue;
                    }
                    let take = end.unwrap_or(data.len());
                    if self.line.len() + take > self.max_head {
                        self.flags.flag(self.seq, Verdict::HeadTooLarge);
                        self.state = State::Off;
                        return;
                    }
                    self.line.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    if head_complete(&self.line) {
                        let head = std::mem::take(&mut self.line);
                        self.on_head(&head);
                        self.line = head;
                        self.line.clear();
                    }
                }
                State::Body(n) => {
                    let take = (n.min(data.len() as u64)) as usize;
                    data = &data[take..];
                    self.state = if n - take as u64 == 0 { State::Head } else { State::Body(n - take as u64) };
                }
                State::ChunkSize => {
                    let Some(nl) = data.iter().position(|&b| b == b'\n') else {
                        self.push_line(data);
                        return;
                    };
                    self.push_line(&data[..nl]);
                    data = &data[nl + 1..];
                    let size = parse_chunk_size(&self.line);
                    self.line.clear();
                    self.state = match size {
                        Some(0) => State::Trailer { line_empty: true },
                        Some(n) => State::ChunkData(n),
                        None => State::Off,
                    };
                }
                State::ChunkData(n) => {
                    let take = (n.min(data.len() as u64)) as usize;
                    data = &data[take..];
                    let left = n - take as u64;
                    self.state = if left == 0 { State::ChunkDataEnd(2) } else { State::ChunkData(left) };
                }
                State::ChunkDataEnd(k) => {
                    // CRLF after chunk data (a bare LF is tolerated by skipping to it).
                    let b = data[0];
                    data = &data[1..];
                    self.state = if b == b'\n' || k == 1 { State::ChunkSize } else { State::ChunkDataEnd(k - 1) };
                }
                State::Trailer { line_empty } => {
                    let b = data[0];
                    data = &data[1..];
                    self.state = match b {
                        b'\n' if line_empty => {
                            self.seq += 1;
                            State::Head
                        }
                        b'\n' => State::Trailer { line_empty: true },
                        b'\r' => State::Trailer { line_empty },
                        _ => State::Trailer { line_empty: false },
                    };
                }
            }
        }
    }

    fn push_line(&mut self, part: &[u8]) {
        if self.line.len() + part.len() > 4096 {
            self.state = State::Off;
        } else {
            self.line.extend_from_slice(part);
        }
    }

    fn on_head(&mut self, head: &[u8]) {
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut req = httparse::Request::new(&mut headers);
        let parsed = req.parse(head);
        let next = match parsed {
            Ok(httparse::Status::Complete(_)) if req.method != Some("PRI") && req.method != Some("CONNECT") => {
                let mut cl: Option<u64> = None;
                let mut te = false;
                let mut upgrade = false;
                for h in req.headers.iter() {
                    if h.name.eq_ignore_ascii_case("content-length") {
                        cl = std::str::from_utf8(h.value).ok().and_then(|v| v.trim().parse().ok()).or(Some(u64::MAX));
                    } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                        te = true;
                    } else if h.name.eq_ignore_ascii_case("upgrade") {
                        upgrade = true;
                    }
                }
                if te && cl.is_some() {
                    self.flags.flag(self.seq, Verdict::Ambiguous);
                    State::Off
                } else if upgrade {
                    State::Off
                } else if te {
                    State::ChunkSize
                } else {
                    match cl {
                        Some(u64::MAX) => State::Off,
                        Some(0) | None => State::Head,
                        Some(n) => State::Body(n),
                    }
                }
            }
            _ => State::Off,
        };
        if matches!(next, State::Head | State::Body(_)) {
            self.seq += 1;
        }
        self.state = next;
    }
}

/// Index just past the end of the head within `data` (given what is already buffered), if the
/// terminating blank line is in `data`.
fn find_head_end(buffered: &[u8], data: &[u8]) -> Option<usize> {
    // Look for "\n\r\n" or "\n\n" across the boundary: keep up to 2 trailing bytes of context.
    let ctx = &buffered[buffered.len().saturating_sub(2)..];
    let at = |i: isize| -> u8 {
        // Byte at position i of buffered ++ data, where data starts at 0 (negative: buffered).
        if i >= 0 {
            data[i as usize]
        } else {
            let j = ctx.len() as isize + i;
            if j >= 0 {
                ctx[j as usize]
            } else {
                0
            }
        }
    };
    for i in memchr::memchr_iter(b'\n', data) {
        let i = i as isize;
        let blank = at(i - 1) == b'\n' || (at(i - 1) == b'\r' && at(i - 2) == b'\n');
        // A blank line ends the head, unless it is a leading empty line before any request
        // line (RFC 9112 §2.2 lets servers skip those).
        if blank && has_content(buffered, &data[..i as usize]) {
            return Some(i as usize + 1);
        }
    }
    None
}

fn has_content(a: &[u8], b: &[u8]) -> bool {
    a.iter().chain(b).any(|c| !matches!(c, b'\r' | b'\n'))
}

fn head_complete(buf: &[u8]) -> bool {
    has_content(buf, &[]) && (buf.ends_with(b"\r\n\r\n") || buf.ends_with(b"\n\n") || buf.ends_with(b"\n\r\n"))
}

fn parse_chunk_size(line: &[u8]) -> Option<u64> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let hex = line.split(|&b| b == b';').next()?;
    let hex = std::str::from_utf8(hex).ok()?.trim_matches([' ', '\t']);
    if hex.is_empty() || hex.len() > 15 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// A client connection whose incoming bytes pass through a [`Tracker`]. Writes pass straight on.
pub(crate) struct Tracked<IO> {
    io: IO,
    tracker: Tracker,
}

impl<IO> Tracked<IO> {
    pub(crate) fn new(io: IO, tracker: Tracker) -> Self {
        Self { io, tracker }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Tracked<IO> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let res = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = res {
            if !matches!(this.tracker.state, State::Off) {
                this.tracker.feed(&buf.filled()[before..]);
            }
        }
        res
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Tracked<IO> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in every possible two-piece split and returns the flagged sequence number.
    fn check(input: &[u8], expected: Option<u64>) {
        for split in 0..=input.len() {
            let flags = FramingFlags::new();
            let mut t = Tracker::new(flags.clone(), 64 * 1024);
            t.feed(&input[..split]);
            t.feed(&input[split..]);
            let got = flags.first_bad.load(Ordering::Relaxed);
            assert_eq!(got, expected.unwrap_or(u64::MAX), "split at {split}: {:?}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn te_with_cl_is_flagged_at_its_position() {
        check(
            b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            Some(0),
        );
        check(b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", Some(0));
    }

    #[test]
    fn follows_bodies_to_the_next_head() {
        let mut s = b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello".to_vec();
        s.extend_from_slice(
            b"POST /b HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-T: 1\r\n\r\n",
        );
        s.extend_from_slice(b"GET /c HTTP/1.1\r\nHost: a\r\n\r\n");
        s.extend_from_slice(b"GET /d HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n");
        check(&s, Some(3));
    }

    #[test]
    fn bodies_that_look_like_heads_are_not_heads() {
        let body = b"GET /x HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let mut s = format!("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        s.extend_from_slice(body);
        check(&s, None);
    }

    #[test]
    fn leading_blank_lines_and_clean_requests_are_fine() {
        check(b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", None);
    }

    #[test]
    fn http2_and_upgrades_stop_tracking() {
        check(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", None);
        check(b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\nGET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", None);
    }

    #[test]
    fn oversized_heads_are_flagged_even_in_one_read() {
        let flags = FramingFlags::new();
        let mut t = Tracker::new(flags.clone(), 1024);
        let big = format!("GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n", "a".repeat(2000));
        t.feed(big.as_bytes());
        assert_eq!(flags.next_request(), Some(Verdict::HeadTooLarge));
        assert_eq!(flags.next_request(), None);
    }

    #[test]
    fn chunk_sizes() {
        assert_eq!(parse_chunk_size(b"1a\r"), Some(26));
        assert_eq!(parse_chunk_size(b"5;name=value"), Some(5));
        assert_eq!(parse_chunk_size(b"zz"), None);
        assert_eq!(parse_chunk_size(b""), None);
    }
}
