//! Request smuggling and malformed HTTP against the edge, checked from the target's side: a
//! recording target logs every request it parses, and for each attack in the corpus it must see
//! nothing, or exactly one well-formed request — never a second, smuggled one — and the cache
//! must never be poisoned (issue 7). Then slow clients: a thousand slowloris heads and slow-body
//! POSTs must not stop normal clients, and must cost bounded memory.

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
    let (target, log) = recording_target().await;
    let body = format!(
        "[cache_behaviors.main]\ndefault_ttl = \"1h\"\n\n[[routes]]\npath = \"/c/*\"\ntarget_group = \"web\"\ncache = \"main\"\n\n{ROUTE_ALL}[target_groups.web]\ntargets = [\"{target}\"]\n[target_groups.web.health_check]\ninterval = \"200ms\"\ntimeout = \"150ms\"\nhealthy_threshold = 2\n"
    );
    let f = Flotilla::start("smuggling", &body);
    f.wait_target_state("web", &target.to_string(), "healthy", Duration::from_secs(10)).await;
    let edge = SocketAddr::from(([127, 0, 0, 1], f.port));
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

fn rss_kb(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_slowloris_connections_and_slow_bodies_do_not_stop_normal_clients() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = DemoApp::start("slow");
    let body = ROUTE_ALL.to_string() + &group_toml("web", &[&app], "");
    let f = Flotilla::start_with_edge("slowloris", "timeouts = { header_read = \"2s\" }", &body);
    f.wait_target_state("web", &app.addr(), "healthy", Duration::from_secs(10)).await;
    let edge = SocketAddr::from(([127, 0, 0, 1], f.port));
    let rss_before = rss_kb(f.proc.pid());

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
    // Normal clients meanwhile: every request answered.
    let mut served = 0;
    for _ in 0..40 {
        let (s, body) = get(&f.url("/whoami")).await;
        assert_eq!((s, body.as_str()), (200, "slow"));
        served += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rss_during = rss_kb(f.proc.pid());
    let mut closed = 0;
    for t in slow {
        if t.await.unwrap() {
            closed += 1;
        }
    }
    println!("normal requests served: {served}/40; slow connections closed or ended: {closed}/1100; RSS {rss_before} kB → {rss_during} kB");
    assert_eq!(closed, 1100, "every slowloris head is cut off by header_read");
    // 1 100 held connections cost little memory: bounded buffers per connection.
    assert!(rss_during < rss_before + 200 * 1024, "RSS grew from {rss_before} kB to {rss_during} kB");
    assert_eq!(get(&f.url("/whoami")).await.0, 200);
}
