//! Request smuggling and malformed HTTP against the edge, checked from the target's side: a
//! recording target logs every request it parses, and for each attack in the corpus it must see
//! nothing, or exactly one well-formed request — never a second, smuggled one — and the cache
//! must never be poisoned (issue 7). Then slow clients: a thousand slowloris heads and slow-body
//! POSTs must not stop normal clients, and must cost bounded memory. Last, the admin side: no
//! change without the token, strict headers, and the token never in the log.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

/// What the target parsed: method, path-and-query, headers (lower-case), body.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// A target that records every request and answers `ok {path}`, cacheable for a minute.
async fn recording_target() -> (SocketAddr, Arc<Mutex<Vec<Seen>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let log2 = log.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let log = log2.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                    let log = log.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body.collect().await.map(|b| b.to_bytes().to_vec()).unwrap_or_default();
                        let path = parts.uri.path_and_query().map(|p| p.to_string()).unwrap_or_default();
                        let headers = parts
                            .headers
                            .iter()
                            .map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
                            .collect();
                        if path != "/health" {
                            log.lock().unwrap().push(Seen {
                                method: parts.method.to_string(),
                                path: path.clone(),
                                headers,
                                body,
                            });
                        }
                        let mut resp = hyper::Response::new(Full::new(Bytes::from(format!("ok {path}"))));
                        resp.headers_mut().insert("cache-control", "public, max-age=60".parse().unwrap());
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    (addr, log)
}

/// The edge in front of a recording target, `/c/*` cached and everything else passed; returns
/// it, the target's log and the edge's address.
async fn recorded_edge(name: &str) -> (Flotilla, Arc<Mutex<Vec<Seen>>>, SocketAddr) {
    let (target, log) = recording_target().await;
    let body = format!(
        "[cache_behaviors.main]\ndefault_ttl = \"1h\"\n\n[[routes]]\npath = \"/c/*\"\ntarget_group = \"web\"\ncache = \"main\"\n\n{ROUTE_ALL}[target_groups.web]\ntargets = [\"{target}\"]\n[target_groups.web.health_check]\ninterval = \"200ms\"\ntimeout = \"150ms\"\nhealthy_threshold = 2\n"
    );
    let f = Flotilla::start(name, &body);
    f.wait_target_state("web", &target.to_string(), "healthy", Duration::from_secs(10)).await;
    let edge = SocketAddr::from(([127, 0, 0, 1], f.port));
    (f, log, edge)
}

fn well_formed(s: &Seen) -> Result<(), String> {
    let h = |name: &str| s.headers.iter().filter(|(k, _)| k == name).map(|(_, v)| v.clone()).collect::<Vec<_>>();
    if !matches!(s.method.as_str(), "GET" | "POST") {
        return Err(format!("a method the client did not send: {}", s.method));
    }
    if !s.path.starts_with('/') {
        return Err(format!("not origin-form: {}", s.path));
    }
    if !h("transfer-encoding").is_empty() && !h("content-length").is_empty() {
        return Err("both Transfer-Encoding and Content-Length".into());
    }
    if h("content-length").len() > 1 || h("host").len() != 1 {
        return Err(format!("duplicate framing or host headers: {:?}", s.headers));
    }
    if let Some(cl) = h("content-length").first() {
        if cl.parse::<usize>().ok() != Some(s.body.len()) {
            return Err(format!("Content-Length {cl} but body of {}", s.body.len()));
        }
    }
    if String::from_utf8_lossy(&s.body).contains("HTTP/1.1") {
        return Err(format!("a request hidden in the body: {:?}", String::from_utf8_lossy(&s.body)));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_corpus_reaches_the_target_as_at_most_one_well_formed_request() {
    let (f, log, edge) = recorded_edge("smuggling").await;
    let long_ext = format!("5;{}\r\nhello\r\n0\r\n\r\n", "e".repeat(20_000));
    let long_uri = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(100_000));
    let chunked_ext = format!("POST /c/page HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{long_ext}");
    let smuggled = "GET /c/page HTTP/1.1\r\nHost: x\r\n\r\n";
    let cases: Vec<(&str, String)> = vec![
        ("CL.TE", "POST /c/page HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG".to_string()),
        ("TE.CL", format!("POST /c/page HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n5c\r\n{smuggled}\r\n0\r\n\r\n")),
        ("TE.TE xchunked", format!("POST /c/page HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: xchunked\r\n\r\n5c\r\n{smuggled}\r\n0\r\n\r\n")),
        ("TE.TE space before colon", format!("POST /c/page HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding : chunked\r\n\r\n5c\r\n{smuggled}\r\n0\r\n\r\n")),
        ("TE.TE duplicate", format!("POST /c/page HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n\r\n0\r\n\r\n{smuggled}")),
        ("TE.TE tab", format!("POST /c/page HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding:\tchunked\r\n\r\n5c\r\n{smuggled}\r\n0\r\n\r\n")),
        ("TE.TE list", format!("POST /c/page HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n{smuggled}")),
        ("duplicate Content-Length", format!("POST /c/page HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 44\r\n\r\n{smuggled}")),
        ("Content-Length list", format!("POST /c/page HTTP/1.1\r\nHost: x\r\nContent-Length: 0, 44\r\n\r\n{smuggled}")),
        ("Content-Length plus sign", format!("POST /c/page HTTP/1.1\r\nHost: x\r\nContent-Length: +44\r\n\r\n{smuggled}")),
        ("obs-fold Transfer-Encoding", format!("POST /c/page HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding:\r\n chunked\r\n\r\n5c\r\n{smuggled}\r\n0\r\n\r\n")),
        ("bare LF", "GET /u/page HTTP/1.1\nHost: x\nX-A: 1\n\n".to_string()),
        ("bare CR", "GET /u/page HTTP/1.1\r\nHost: x\r\nX-A: 1\rX-B: 2\r\n\r\n".to_string()),
        ("NUL in a header", "GET /u/page HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\n\r\n".to_string()),
        ("control character in a header", "GET /u/page HTTP/1.1\r\nHost: x\r\nX-A: a\x01b\r\n\r\n".to_string()),
        ("invalid chunk size", "POST /c/page HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n".to_string()),
        ("chunk size overflow", "POST /c/page HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFFFF\r\nhello\r\n0\r\n\r\n".to_string()),
        ("oversized chunk extension", chunked_ext),
        ("request line too long", long_uri),
        ("HTTP/0.9", "GET /u/page\r\n\r\n".to_string()),
        ("absolute-form to another host", "GET http://evil.example/u/page HTTP/1.1\r\nHost: x\r\n\r\n".to_string()),
        ("two Host headers", "GET /u/page HTTP/1.1\r\nHost: x\r\nHost: evil.example\r\n\r\n".to_string()),
        ("space in the request target", "GET /u/pa ge HTTP/1.1\r\nHost: x\r\n\r\n".to_string()),
    ];
    // The cached page, stored before the attacks: it must come out of them unchanged.
    assert_eq!(get(&f.url("/c/page")).await.1, "ok /c/page");
    let mut summary = Vec::new();
    let mut absolute_form_host = None;
    for (name, data) in &cases {
        log.lock().unwrap().clear();
        let resp = raw(edge, data.as_bytes());
        let status = resp.get(9..12).unwrap_or("---").to_string();
        // Give a forwarded request time to land (a refusal never reaches the target).
        tokio::time::sleep(Duration::from_millis(100)).await;
        let seen = log.lock().unwrap().clone();
        assert!(seen.len() <= 1, "{name}: the target saw {} requests: {seen:?}", seen.len());
        if let Some(s) = seen.first() {
            well_formed(s).unwrap_or_else(|e| panic!("{name}: {e}: {s:?}"));
            if *name == "absolute-form to another host" {
                absolute_form_host = s.headers.iter().find(|(k, _)| k == "host").map(|(_, v)| v.clone());
                assert_eq!(s.path, "/u/page");
            }
        }
        if *name == "two Host headers" {
            assert_eq!(status, "400", "{name}");
        }
        assert!(resp.matches("HTTP/1.1 ").count() <= 1, "{name}: several responses to one request: {resp:?}");
        summary.push(format!("{name}: {status}, target saw {}", seen.len()));
    }
    println!("{}", summary.join("\n"));
    // Absolute-form: the target saw origin-form and the URI's host, the one the route and the
    // cache key used (not the Host header's).
    assert_eq!(absolute_form_host.as_deref(), Some("evil.example"));
    // The cached page is still the target's own answer for /c/page, never a smuggled one.
    let (s, body) = get(&f.url("/c/page")).await;
    assert_eq!((s, body.as_str()), (200, "ok /c/page"));
    // Still serving, admin still up.
    assert_eq!(get(&f.admin("/health")).await.0, 200);
}

/// An HPACK integer with an `n`-bit prefix whose high bits are `flags` (RFC 7541 §5.1).
fn hpack_int(flags: u8, n: u32, mut v: usize, out: &mut Vec<u8>) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(flags | v as u8);
        return;
    }
    out.push(flags | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

/// A header block of literal fields without indexing or Huffman coding: any bytes at all, which
/// is the point — a well-behaved h2 library refuses to send most of these.
fn hpack_block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0x00);
        hpack_int(0, 7, name.len(), &mut out);
        out.extend_from_slice(name.as_bytes());
        hpack_int(0, 7, value.len(), &mut out);
        out.extend_from_slice(value.as_bytes());
    }
    out
}

fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// The status in a response header block from hyper: an indexed static entry or a literal with
/// the :status name, its value Huffman-coded (digits only, RFC 7541 Appendix B) or plain.
fn h2_status(block: &[u8]) -> Option<u16> {
    let b = *block.first()?;
    if b & 0x80 != 0 {
        return [200, 204, 206, 304, 400, 404, 500].get(((b & 0x7f) as usize).checked_sub(8)?).copied();
    }
    let name = if b & 0xc0 == 0x40 { b & 0x3f } else { b & 0x0f };
    if name != 8 {
        return None;
    }
    let (huffman, len) = (block.get(1)? & 0x80 != 0, (block.get(1)? & 0x7f) as usize);
    let value = block.get(2..2 + len)?;
    if !huffman {
        return std::str::from_utf8(value).ok()?.parse().ok();
    }
    let bits: String = value.iter().map(|b| format!("{b:08b}")).collect();
    let (mut digits, mut i) = (String::new(), 0);
    while digits.len() < 3 {
        let five = bits.get(i..i + 5)?;
        if let Some(d) = ["00000", "00001", "00010"].iter().position(|c| *c == five) {
            digits.push(char::from(b'0' + d as u8));
            i += 5;
        } else {
            let six = bits.get(i..i + 6)?;
            let d = ["011001", "011010", "011011", "011100", "011101", "011110", "011111"]
                .iter()
                .position(|c| *c == six)?;
            digits.push(char::from(b'3' + d as u8));
            i += 6;
        }
    }
    digits.parse().ok()
}

/// Sends one h2c (prior knowledge) request made of raw `fields` and optional DATA, and says how
/// the edge answered stream 1: "status N", "reset CODE", "goaway CODE" or "nothing".
fn h2_raw(addr: SocketAddr, fields: &[(&str, &str)], data: Option<&[u8]>) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(h2_frame(0x4, 0, 0, &[]));
    out.extend(h2_frame(0x4, 0x1, 0, &[]));
    let end_stream = if data.is_none() { 0x1 } else { 0 };
    out.extend(h2_frame(0x1, 0x4 | end_stream, 1, &hpack_block(fields)));
    if let Some(d) = data {
        out.extend(h2_frame(0x0, 0x1, 1, d));
    }
    let _ = s.write_all(&out);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        while buf.len() >= 9 {
            let len = (usize::from(buf[0]) << 16) | (usize::from(buf[1]) << 8) | usize::from(buf[2]);
            if buf.len() < 9 + len {
                break;
            }
            let (kind, stream) = (buf[3], u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff);
            let payload = buf[9..9 + len].to_vec();
            buf.drain(..9 + len);
            let code = |p: &[u8]| p.get(..4).map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]])).unwrap_or(0);
            match (kind, stream) {
                (0x1, 1) => return format!("status {}", h2_status(&payload).map_or("?".into(), |s| s.to_string())),
                (0x3, 1) => return format!("reset {}", code(&payload)),
                (0x7, _) => return format!("goaway {}", code(payload.get(4..).unwrap_or(&[]))),
                _ => {}
            }
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return "nothing".into(),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// An h2 header list as sent: (name, value), pseudo-headers included.
type Fields = Vec<(&'static str, &'static str)>;

/// HTTP/2 pseudo-header abuse and h2→h1 downgrade smuggling (the edge speaks HTTP/1.1 to
/// targets, so anything that survives into the h1 request is a smuggling vector): each is a
/// stream error, a 400, or exactly one well-formed request with the host the cache keyed on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_pseudo_header_abuse_never_reaches_the_target_malformed() {
    let (f, log, edge) = recorded_edge("h2-abuse").await;
    assert_eq!(get(&f.url("/c/page")).await.1, "ok /c/page");
    let base = [(":method", "GET"), (":scheme", "http"), (":authority", "x")];
    let with = |extra: &[(&'static str, &'static str)]| -> Fields { base.iter().chain(extra).copied().collect() };
    let smuggled = "0\r\n\r\nGET /c/page HTTP/1.1\r\nHost: x\r\n\r\n";
    let post = [(":method", "POST"), (":scheme", "http"), (":authority", "x"), (":path", "/c/page")];
    let post_with = |extra: &[(&'static str, &'static str)]| -> Fields { post.iter().chain(extra).copied().collect() };
    #[rustfmt::skip]
    let cases: Vec<(&str, Fields, Option<&[u8]>)> = vec![
        ("control: a valid request", with(&[(":path", "/u/ok")]), None),
        ("missing :path", with(&[]), None),
        ("empty :path", with(&[(":path", "")]), None),
        ("duplicate :path", with(&[(":path", "/u/a"), (":path", "/c/page")]), None),
        ("pseudo-header after a regular one", vec![(":method", "GET"), (":scheme", "http"), ("x-a", "1"), (":authority", "x"), (":path", "/u/a")], None),
        ("unknown pseudo-header", with(&[(":path", "/u/a"), (":foo", "bar")]), None),
        ("response pseudo-header in a request", with(&[(":path", "/u/a"), (":status", "200")]), None),
        ("duplicate :method", vec![(":method", "GET"), (":method", "POST"), (":scheme", "http"), (":authority", "x"), (":path", "/u/a")], None),
        ("missing :method", vec![(":scheme", "http"), (":authority", "x"), (":path", "/u/a")], None),
        ("space in :method", vec![(":method", "GET /c/page HTTP/1.1\r\n"), (":scheme", "http"), (":authority", "x"), (":path", "/u/a")], None),
        (":path not origin-form", with(&[(":path", "u/a")]), None),
        ("space and CRLF in :path", with(&[(":path", "/u/a HTTP/1.1\r\nHost: evil\r\n\r\nGET /c/page")]), None),
        ("CRLF in :authority", vec![(":method", "GET"), (":scheme", "http"), (":authority", "x\r\nX-Evil: 1"), (":path", "/u/a")], None),
        ("Host differs from :authority", with(&[(":path", "/c/page"), ("host", "evil.example")]), None),
        ("uppercase header name", with(&[(":path", "/u/a"), ("X-Upper", "1")]), None),
        ("space in a header name", with(&[(":path", "/u/a"), ("x a", "1")]), None),
        ("CRLF in a header value", with(&[(":path", "/u/a"), ("x-a", "1\r\nTransfer-Encoding: chunked")]), None),
        ("NUL in a header value", with(&[(":path", "/u/a"), ("x-a", "1\0")]), None),
        ("connection header", with(&[(":path", "/u/a"), ("connection", "close")]), None),
        ("te other than trailers", with(&[(":path", "/u/a"), ("te", "gzip")]), None),
        ("transfer-encoding chunked (h2 to h1 TE smuggling)", post_with(&[("transfer-encoding", "chunked")]), Some(smuggled.as_bytes())),
        ("content-length shorter than DATA (h2 to h1 CL smuggling)", post_with(&[("content-length", "5")]), Some(smuggled.as_bytes())),
        ("content-length longer than DATA", post_with(&[("content-length", "500")]), Some(b"short")),
        ("two content-lengths", post_with(&[("content-length", "5"), ("content-length", "44")]), Some(smuggled.as_bytes())),
    ];
    let mut summary = Vec::new();
    for (name, fields, data) in &cases {
        log.lock().unwrap().clear();
        let answer = tokio::task::spawn_blocking({
            let (fields, data) = (fields.clone(), data.map(|d| d.to_vec()));
            move || h2_raw(edge, &fields, data.as_deref())
        })
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let seen = log.lock().unwrap().clone();
        assert!(seen.len() <= 1, "{name}: the target saw {} requests: {seen:?}", seen.len());
        if let Some(s) = seen.first() {
            well_formed(s).unwrap_or_else(|e| panic!("{name}: {e}: {s:?}"));
            let host: Vec<_> = s.headers.iter().filter(|(k, _)| k == "host").map(|(_, v)| v.as_str()).collect();
            assert_eq!(host, ["x"], "{name}: the target must see the host the cache keyed on: {s:?}");
            assert!(!s.headers.iter().any(|(k, _)| k == "x-evil" || k == "transfer-encoding"), "{name}: {s:?}");
        }
        if name.starts_with("control") {
            assert_eq!((answer.as_str(), seen.len()), ("status 200", 1), "{name}");
        } else {
            assert!(!answer.starts_with("status 2"), "{name}: accepted ({answer}), target saw {seen:?}");
        }
        summary.push(format!("h2 {name}: {answer}, target saw {}", seen.len()));
    }
    println!("{}", summary.join("\n"));
    let (s, body) = get(&f.url("/c/page")).await;
    assert_eq!((s, body.as_str()), (200, "ok /c/page"));
    assert_eq!(get(&f.admin("/health")).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_slowloris_connections_and_slow_bodies_do_not_stop_normal_clients() {
    slowloris(&[]).await;
}

/// The same flood against a process started with the common soft open-file limit of 1024:
/// flotilla raises it to the hard limit at start, so the 1 100 slow connections do not make
/// `accept` fail (EMFILE) and leave normal clients waiting in the kernel's queue for seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_soft_open_file_limit_of_1024_does_not_stall_clients_under_a_slowloris_flood() {
    let mut hard = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes only the struct passed.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut hard) }, 0);
    if hard.rlim_max < 4096 || !std::path::Path::new("/usr/bin/prlimit").exists() {
        eprintln!("skipping: the hard open-file limit ({}) leaves nothing to raise, or no prlimit", hard.rlim_max);
        return;
    }
    slowloris(&["/usr/bin/prlimit", "--nofile=1024:"]).await;
}

async fn slowloris(wrapper: &[&str]) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = DemoApp::start("slow");
    let body = ROUTE_ALL.to_string() + &group_toml("web", &[&app], "");
    let (port, admin_port, dir) = (free_port(), free_port(), scratch_dir("slowloris"));
    let text = format!(
        "[edge]\nlisten = [\"127.0.0.1:{port}\"]\ntimeouts = {{ header_read = \"2s\" }}\n\n[admin]\nlisten = \"127.0.0.1:{admin_port}\"\n\n{body}"
    );
    let f = Flotilla::start_wrapped(&dir, &text, port, admin_port, "info", &[], wrapper);
    f.wait_target_state("web", &app.addr(), "healthy", Duration::from_secs(10)).await;
    let edge = SocketAddr::from(([127, 0, 0, 1], f.port));
    let rss_before = proc_kib(f.proc.pid(), "VmRSS:");

    // 1 000 heads that never finish (a byte every 400 ms) and 100 POSTs whose bodies trickle.
    let mut slow = Vec::new();
    for i in 0..1100 {
        slow.push(tokio::spawn(async move {
            let Ok(mut s) = tokio::net::TcpStream::connect(edge).await else { return false };
            let head: &[u8] = if i < 1000 {
                b"GET /whoami HTTP/1.1\r\nHost: x\r\n"
            } else {
                b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"
            };
            if s.write_all(head).await.is_err() {
                return true;
            }
            // Closed by the edge within 8 s (a head after header_read; a body never finishes, so
            // it ends with the request's own timeouts, which this loop does not wait for).
            for _ in 0..20 {
                tokio::time::sleep(Duration::from_millis(400)).await;
                if s.write_all(b"X").await.is_err() {
                    return true;
                }
                let mut buf = [0u8; 512];
                match tokio::time::timeout(Duration::from_millis(1), s.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => return true,
                    Ok(Ok(_)) => return true, // an answer (408/400) and then the close
                    Err(_) => {}
                }
            }
            i >= 1000
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Normal clients meanwhile, each on a fresh connection: every request answered, promptly.
    let mut served = 0;
    let mut slowest = Duration::ZERO;
    for _ in 0..40 {
        let started = std::time::Instant::now();
        let (s, body) = get(&f.url("/whoami")).await;
        slowest = slowest.max(started.elapsed());
        assert_eq!((s, body.as_str()), (200, "slow"));
        served += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(slowest < Duration::from_secs(1), "a normal request waited {slowest:?} during the flood");
    let rss_during = proc_kib(f.proc.pid(), "VmRSS:");
    let mut closed = 0;
    for t in slow {
        if t.await.unwrap() {
            closed += 1;
        }
    }
    println!("normal requests served: {served}/40 (slowest {slowest:?}); slow connections closed or ended: {closed}/1100; RSS {rss_before} kB → {rss_during} kB");
    assert_eq!(closed, 1100, "every slowloris head is cut off by header_read");
    // 1 100 held connections cost little memory: bounded buffers per connection.
    assert!(rss_during < rss_before + 200 * 1024, "RSS grew from {rss_before} kB to {rss_during} kB");
    assert_eq!(get(&f.url("/whoami")).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_admin_change_needs_the_token_and_the_token_never_reaches_the_log() {
    let app = DemoApp::start("admin");
    let token = "fl0t1lla-s3cret-4d6f";
    let wrong = "fl0t1lla-s3cret-4d6e";
    let (port, admin_port) = (free_port(), free_port());
    let dir = scratch_dir("admin-security");
    let text = format!(
        "[edge]\nlisten = [\"127.0.0.1:{port}\"]\n\n[admin]\nlisten = \"127.0.0.1:{admin_port}\"\ntoken = \"{token}\"\n\n\
         [cache_behaviors.main]\ndefault_ttl = \"1h\"\n\n[[routes]]\npath = \"/*\"\ntarget_group = \"web\"\ncache = \"main\"\n\n{}\n\
         [groups.web]\ntarget_group = \"pool\"\nmin = 0\nmax = 1\n[groups.web.launch]\ncommand = [\"flotilla\", \"demo-app\", \"--port\", \"{{port}}\"]\n\
         [target_groups.pool]\ntargets = []\n",
        group_toml("web", &[&app], "")
    );
    let f = Flotilla::start_logging(&dir, &text, port, admin_port, "debug");
    f.wait_target_state("web", &app.addr(), "healthy", Duration::from_secs(10)).await;
    let c = client();
    let target = app.addr();
    let register = format!("{{\"addr\": \"{target}\"}}");
    let calls: Vec<(&str, String, &str)> = vec![
        ("POST", "/api/v1/target-groups/web/targets".into(), register.as_str()),
        ("DELETE", format!("/api/v1/target-groups/web/targets/{target}"), ""),
        ("POST", "/api/v1/reload".into(), ""),
        ("POST", "/api/v1/invalidations".into(), r#"{"paths":["/*"]}"#),
        ("POST", "/api/v1/deployments".into(), ""),
        ("PUT", "/api/v1/groups/web/desired".into(), r#"{"desired": 1}"#),
        ("POST", "/api/v1/groups/web/refresh".into(), "{}"),
        ("DELETE", "/api/v1/groups/web/refresh".into(), ""),
        ("POST", "/api/v1/no-such-endpoint".into(), ""),
        ("PATCH", "/api/v1/target-groups".into(), ""),
    ];
    let bad_credentials = [
        vec![],
        vec![("authorization", format!("Bearer {wrong}"))],
        vec![("authorization", format!("Bearer {}", &token[..token.len() - 1]))],
        vec![("authorization", format!("Bearer {token}x"))],
        vec![("authorization", format!("Basic {token}"))],
        vec![("authorization", token.to_string())],
        vec![("x-admin-token", token.to_string())],
    ];
    for (method, path, body) in &calls {
        for creds in &bad_credentials {
            let headers: Vec<(&str, &str)> = creds.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let (s, h, b) = request(&c, method, &f.admin(path), &headers, body).await.unwrap();
            assert_eq!(s, 401, "{method} {path} with {creds:?}: {b}");
            assert_eq!(h["www-authenticate"], "Bearer");
            assert!(!b.contains(token), "{b}");
        }
    }
    // The dashboard's data is not public either.
    let (s, _, _) =
        request(&c, "GET", &f.admin("/api/v1/dashboard"), &[("authorization", &format!("Bearer {wrong}"))], "")
            .await
            .unwrap();
    assert_eq!(s, 401);
    // Nothing was changed: the target is still registered and healthy, the group still at 0.
    let (_, groups) = get(&f.admin("/api/v1/target-groups")).await;
    assert!(groups.contains(&target) && groups.contains("healthy"), "{groups}");
    // With the token the same calls work.
    let auth = format!("Bearer {token}");
    let (s, _, b) =
        request(&c, "POST", &f.admin("/api/v1/invalidations"), &[("authorization", &auth)], r#"{"paths":["/*"]}"#)
            .await
            .unwrap();
    assert_eq!(s, 202, "{b}");
    let (s, _, b) = request(&c, "POST", &f.admin("/api/v1/reload"), &[("authorization", &auth)], "").await.unwrap();
    assert_eq!(s, 200, "{b}");

    // Every admin answer carries strict headers; the dashboard page a CSP that forbids framing.
    for path in ["/", "/health", "/api/v1/target-groups", "/metrics"] {
        let (_, h, _) = request(&c, "GET", &f.admin(path), &[], "").await.unwrap();
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(h["x-frame-options"], "DENY", "{path}");
        assert_eq!(h["referrer-policy"], "no-referrer", "{path}");
        assert!(h.contains_key("cache-control"), "{path}");
    }
    let (_, h, _) = request(&c, "GET", &f.admin("/"), &[], "").await.unwrap();
    let csp = h["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("frame-ancestors 'none'") && csp.contains("default-src 'self'"), "{csp}");

    // Requests through the edge carrying the token (a client mistake) are not logged with it.
    let (s, _, _) = request(&c, "GET", &f.url("/whoami"), &[("authorization", &auth)], "").await.unwrap();
    assert_eq!(s, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = f.log();
    assert!(log.lines().count() > 5, "the debug log should have something in it: {log}");
    assert!(!log.contains(token) && !log.contains(wrong), "a token reached the log:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_client_address_are_capped_when_configured() {
    let app = DemoApp::start("per-ip");
    let body = ROUTE_ALL.to_string() + &group_toml("web", &[&app], "");
    let f = Flotilla::start_with_edge("per-ip", "limits = { max_connections_per_ip = 20 }", &body);
    f.wait_target_state("web", &app.addr(), "healthy", Duration::from_secs(10)).await;
    let edge = SocketAddr::from(([127, 0, 0, 1], f.port));
    // 20 idle connections from 127.0.0.1 use up its share...
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(tokio::net::TcpStream::connect(edge).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // ...so the 21st is closed without an answer.
    let refused =
        tokio::task::spawn_blocking(move || raw(edge, b"GET /whoami HTTP/1.1\r\nHost: x\r\n\r\n")).await.unwrap();
    assert_eq!(refused, "", "over the limit: closed at once");
    // One closes; the next connection is served.
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(get(&f.url("/whoami")).await, (200, "per-ip".to_string()));
    let metrics = get(&f.admin("/metrics")).await.1;
    assert!(metrics.contains("flotilla_connections_refused_per_ip_total 1"), "{metrics}");
}
