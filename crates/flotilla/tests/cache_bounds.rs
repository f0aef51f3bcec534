//! The cache under abuse, against an origin on a real socket whose bodies are scripted (a
//! stall mid-body, a trickle, a pause): a stalled or trickling body never pins a fill and the
//! requests coalesced behind it; bodies past 256 KiB reach the client while they are stored;
//! the bytes fills buffer stay within `cache.fill_buffer`.

mod common;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;

const KIB: usize = 1024;

/// The byte at offset `i` of every scripted body (so truncation or reordering shows).
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// A body fed by a script: each step is some bytes after a delay; `None` holds it open.
struct Scripted(mpsc::Receiver<Bytes>);

impl hyper::body::Body for Scripted {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

/// (delay before, bytes) steps of one response body; `stall` keeps it open at the end, with
/// `Content-Length` promising `declared` bytes (default: what the steps send).
struct Script {
    steps: Vec<(Duration, usize)>,
    stall: bool,
    declared: Option<usize>,
}

impl Script {
    fn new(steps: Vec<(Duration, usize)>) -> Self {
        Script { steps, stall: false, declared: None }
    }
}

/// How the origin answers `path` the `n`th time (from 1).
type Plan = fn(path: &str, n: usize) -> Script;

/// An origin that answers every path with `max-age=600` and a body of `pattern(total)`, sent
/// as `plan` says; it counts requests per path.
async fn scripted_origin(plan: Plan) -> (SocketAddr, Arc<Mutex<HashMap<String, usize>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let counts = Arc::new(Mutex::new(HashMap::new()));
    let counts2 = counts.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let counts = counts2.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                    let counts = counts.clone();
                    async move {
                        let path = req.uri().path().to_string();
                        if path == "/health" {
                            let body = Scripted(mpsc::channel(1).1);
                            return Ok::<_, Infallible>(hyper::Response::new(body));
                        }
                        let n = {
                            let mut c = counts.lock().unwrap();
                            let n = c.entry(path.clone()).or_insert(0);
                            *n += 1;
                            *n
                        };
                        let script = plan(&path, n);
                        let total: usize = script.steps.iter().map(|(_, b)| b).sum();
                        let script_declared = script.declared;
                        let (tx, rx) = mpsc::channel(4);
                        tokio::spawn(async move {
                            let body = pattern(total);
                            let mut at = 0;
                            for (delay, len) in script.steps {
                                tokio::time::sleep(delay).await;
                                if tx.send(Bytes::copy_from_slice(&body[at..at + len])).await.is_err() {
                                    return;
                                }
                                at += len;
                            }
                            if script.stall {
                                tokio::time::sleep(Duration::from_secs(600)).await;
                            }
                        });
                        let mut resp = hyper::Response::new(Scripted(rx));
                        let h = resp.headers_mut();
                        h.insert("cache-control", "max-age=600".parse().unwrap());
                        h.insert("content-type", "application/octet-stream".parse().unwrap());
                        h.insert("content-length", script_declared.unwrap_or(total).into());
                        Ok(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    (addr, counts)
}

/// `len` bytes in 16 KiB chunks, `gap` apart.
fn chunks(len: usize, gap: Duration) -> Vec<(Duration, usize)> {
    (0..len.div_ceil(16 * KIB)).map(|i| (gap, (len - i * 16 * KIB).min(16 * KIB))).collect()
}

async fn edge(name: &str, origin: SocketAddr, edge_keys: &str, cache: &str) -> Flotilla {
    let body = format!(
        "[cache]\n{cache}\n\n[cache_behaviors.main]\n\n[[routes]]\npath = \"/*\"\ntarget_group = \"web\"\ncache = \"main\"\n\n\
         [target_groups.web]\ntargets = [\"{origin}\"]\n[target_groups.web.health_check]\ninterval = \"200ms\"\n\
         timeout = \"150ms\"\nhealthy_threshold = 2\n"
    );
    let f = Flotilla::start_with_edge(name, edge_keys, &body);
    f.wait_target_state("web", &origin.to_string(), "healthy", Duration::from_secs(10)).await;
    f
}

/// GET `path`: (status, Cache-Status, time to the first body byte, the body or the error).
async fn get_timed(f: &Flotilla, path: &str) -> (u16, String, Duration, Result<Vec<u8>, String>) {
    let started = Instant::now();
    let req = http::Request::get(f.url(path)).body(http_body_util::Full::new(Bytes::new())).unwrap();
    let resp = client().request(req).await.unwrap();
    let status = resp.status().as_u16();
    let cs = resp.headers().get("cache-status").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    let mut body = resp.into_body();
    let mut first = None;
    let mut bytes = Vec::new();
    let result = loop {
        match body.frame().await {
            None => break Ok(bytes),
            Some(Ok(frame)) => {
                if let Ok(d) = frame.into_data() {
                    first.get_or_insert_with(|| started.elapsed());
                    bytes.extend_from_slice(&d);
                }
            }
            Some(Err(e)) => break Err(format!("{e} after {} bytes", bytes.len())),
        }
    };
    (status, cs, first.unwrap_or_else(|| started.elapsed()), result)
}

/// The first request's body stalls after 300 KB, forever; later ones are served whole. The
/// stalled fill ends after `timeouts.target_response` (1 s) of silence, its client gets an error
/// instead of a truncated object, and the five requests coalesced behind it are answered from
/// the next fill — nothing waits on the stalled one for longer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_origin_body_never_pins_a_fill_or_its_followers() {
    let (origin, counts) = scripted_origin(|_, n| match n {
        1 => Script { steps: chunks(300 * KIB, Duration::ZERO), stall: true, declared: Some(1_000_000) },
        _ => Script::new(chunks(1_000_000, Duration::ZERO)),
    })
    .await;
    let f = edge("fill-stall", origin, "timeouts = { target_response = \"1s\" }", "").await;
    let started = Instant::now();
    let leader = tokio::spawn({
        let url = f.url("/stall");
        async move {
            let resp = client().get(url.parse().unwrap()).await.unwrap();
            resp.into_body().collect().await.map(|b| b.to_bytes().len()).map_err(|e| e.to_string())
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let followers: Vec<_> = (0..5)
        .map(|_| {
            let f_url = f.url("/stall");
            tokio::spawn(async move {
                let resp = client().get(f_url.parse().unwrap()).await.unwrap();
                let cs = resp.headers()["cache-status"].to_str().unwrap().to_string();
                (cs, resp.into_body().collect().await.unwrap().to_bytes())
            })
        })
        .collect();
    let want = pattern(1_000_000);
    for t in followers {
        let (cs, body) =
            tokio::time::timeout(Duration::from_secs(10), t).await.expect("a follower was pinned").unwrap();
        assert!(body.as_ref() == want.as_slice(), "{cs}: {} bytes", body.len());
    }
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(4), "followers waited {waited:?} behind the stalled fill");
    let leader = tokio::time::timeout(Duration::from_secs(5), leader).await.expect("the stalled client hangs").unwrap();
    assert!(leader.is_err(), "a stalled body ends in an error, not a short object: {leader:?}");
    // The origin saw the stalled fill and one more, not one per follower.
    assert_eq!(counts.lock().unwrap()["/stall"], 2);
    let (s, cs, _, body) = get_timed(&f, "/stall").await;
    assert!(s == 200 && cs.starts_with("flotilla; hit") && body.unwrap() == want, "{cs}");
}

/// A body that pauses for 1 s after its first 400 KB reaches the client before the pause
/// ends (streamed while stored), and is stored whole; one that trickles past
/// `cache.fill_timeout` (2 s) stops being stored so its followers go to the origin themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_while_stored_and_a_trickle_does_not_hold_followers() {
    let (origin, _) = scripted_origin(|path, n| match (path, n) {
        ("/pause", 1) => {
            let mut steps = chunks(400 * KIB, Duration::ZERO);
            steps.push((Duration::from_secs(1), 100 * KIB));
            Script::new(steps)
        }
        // ~5 s of trickle the first time: longer than fill_timeout (2 s).
        ("/trickle", 1) => Script::new(chunks(300 * KIB, Duration::from_millis(250))),
        _ => Script::new(chunks(300 * KIB, Duration::ZERO)),
    })
    .await;
    let f = edge("fill-stream", origin, "", "fill_timeout = \"2s\"").await;
    let (s, cs, first, body) = get_timed(&f, "/pause").await;
    assert_eq!((s, cs.as_str()), (200, "flotilla; fwd=miss; detail=storing"));
    assert!(first < Duration::from_millis(700), "first byte after {first:?}: the body was not streamed");
    assert!(body.unwrap() == pattern(500 * KIB));
    let (_, cs, _, body) = get_timed(&f, "/pause").await;
    assert!(cs.starts_with("flotilla; hit") && body.unwrap() == pattern(500 * KIB), "{cs}");

    let started = Instant::now();
    let trickle = tokio::spawn({
        let f_url = f.url("/trickle");
        async move { client().get(f_url.parse().unwrap()).await.unwrap().into_body().collect().await.is_ok() }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (s, _, _, body) = get_timed(&f, "/trickle").await;
    assert!(s == 200 && body.unwrap() == pattern(300 * KIB));
    let waited = started.elapsed();
    assert!(waited < Duration::from_millis(3500), "the follower waited {waited:?} on a trickling fill");
    assert!(trickle.await.unwrap(), "the trickling client still gets its whole body");
}

/// Eight concurrent misses of 600 KB bodies that take a second each, with `fill_buffer` at
/// 1 MiB: the bytes fills hold never pass it (sampled from `/metrics` throughout), fills that
/// would pass it stream on without storing, and every client gets its whole body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fills_stay_within_the_fill_buffer() {
    let (origin, _) = scripted_origin(|_, _| Script::new(chunks(600 * KIB, Duration::from_millis(25)))).await;
    let f = edge("fill-budget", origin, "", "fill_buffer = \"1MiB\"").await;
    let peak = Arc::new(Mutex::new(0u64));
    let sampler = tokio::spawn({
        let (url, peak) = (f.admin("/metrics"), peak.clone());
        async move {
            loop {
                let m = get(&url).await.1;
                let now = metric_value(&m, "flotilla_cache_fill_bytes").expect("the fill gauge is exported");
                {
                    let mut p = peak.lock().unwrap();
                    *p = (*p).max(now);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let f_url = f.url(&format!("/big{i}"));
            tokio::spawn(async move {
                let resp = client().get(f_url.parse().unwrap()).await.unwrap();
                resp.into_body().collect().await.unwrap().to_bytes()
            })
        })
        .collect();
    for t in tasks {
        assert!(t.await.unwrap().as_ref() == pattern(600 * KIB).as_slice());
    }
    sampler.abort();
    let peak = *peak.lock().unwrap();
    assert!(peak > 0 && peak <= 1 << 20, "fills held {peak} bytes at the peak");
    let mut stored = 0;
    for i in 0..8 {
        let (_, cs, _, body) = get_timed(&f, &format!("/big{i}")).await;
        assert!(body.unwrap() == pattern(600 * KIB));
        stored += usize::from(cs.starts_with("flotilla; hit"));
    }
    assert!(stored < 8, "eight 600 KB fills at once cannot all have been stored within 1 MiB");
    let m = get(&f.admin("/metrics")).await.1;
    assert_eq!(metric_value(&m, "flotilla_cache_fill_bytes"), Some(0), "every fill gave its bytes back");
}
