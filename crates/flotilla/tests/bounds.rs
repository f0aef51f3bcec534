//! Resource bounds: the edge's memory while it carries many large uploads, many large
//! responses to clients that do not read, and a flood of distinct cache keys. Every byte it
//! holds per connection is bounded (streamed bodies, hyper's capped buffers, the cache's byte
//! budget), so peak RSS must stay far below the volume that passed through.
//!
//! The CI version moves ~1.3 GB; `FLOTILLA_BOUNDS_SCALE=4` (bench/chaos.sh) quadruples the
//! connections and keys. The bounds asserted here are the ones README documents.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MIB: u64 = 1 << 20;

/// Samples the process's RSS every 50 ms until dropped; `peak()` is the highest seen (MiB).
struct RssWatch {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl RssWatch {
    fn start(pid: i32) -> Self {
        let (peak, stop) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
        let (p, s) = (peak.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(proc_kib(pid, "VmRSS:"), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Self { peak, stop }
    }

    fn peak_mib(&self) -> u64 {
        self.peak.load(Ordering::Relaxed) / 1024
    }
}

impl Drop for RssWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn scale() -> usize {
    std::env::var("FLOTILLA_BOUNDS_SCALE").ok().and_then(|v| v.parse().ok()).unwrap_or(1).max(1)
}

/// Reads one HTTP/1.1 response head and returns it with whatever body bytes came along.
async fn read_head(s: &mut tokio::net::TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(60), s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_uploads_slow_readers_and_a_flood_of_cache_keys_keep_memory_bounded() {
    let n = scale();
    let app = DemoApp::start("bounds");
    let body = format!(
        "[cache]\nmemory = \"16MiB\"\n\n[cache_behaviors.main]\ndefault_ttl = \"1h\"\nkey = {{ query = \"all\" }}\n\n\
         [[routes]]\npath = \"/cached*\"\ntarget_group = \"web\"\ncache = \"main\"\n\n{ROUTE_ALL}{}",
        group_toml("web", &[&app], "")
    );
    let f = Flotilla::start("bounds", &body);
    f.wait_target_state("web", &app.addr(), "healthy", Duration::from_secs(10)).await;
    let edge = SocketAddr::from(([127, 0, 0, 1], f.port));
    let pid = f.proc.pid();
    let base = proc_kib(pid, "VmRSS:") / 1024;
    let mut report = vec![format!("edge RSS at start: {base} MiB")];

    // 1. Concurrent 16 MiB uploads, streamed in 64 KiB writes to an app that discards them.
    let (uploads, size) = (16 * n, 16 * MIB);
    let watch = RssWatch::start(pid);
    let tasks: Vec<_> = (0..uploads)
        .map(|_| {
            tokio::spawn(async move {
                let mut s = tokio::net::TcpStream::connect(edge).await.unwrap();
                let head =
                    format!("POST /sink HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n");
                s.write_all(head.as_bytes()).await.unwrap();
                let chunk = vec![b'u'; 64 * 1024];
                for _ in 0..size / chunk.len() as u64 {
                    s.write_all(&chunk).await.unwrap();
                }
                let mut resp = String::new();
                let _ = s.read_to_string(&mut resp).await;
                resp
            })
        })
        .collect();
    for t in tasks {
        let resp = t.await.unwrap();
        assert!(resp.starts_with("HTTP/1.1 200") && resp.ends_with(&format!("\r\n\r\n{size}\n")), "{resp}");
    }
    let uploads_peak = watch.peak_mib();
    drop(watch);
    report.push(format!(
        "{uploads} concurrent uploads of {} MiB ({} MiB in all): peak RSS {uploads_peak} MiB",
        size / MIB,
        uploads as u64 * size / MIB
    ));

    // 2. Clients that ask for 64 MiB each and read nothing for 3 s, while a normal client is
    // served; then they read it all.
    let (readers, size) = (32 * n, 64 * MIB);
    let watch = RssWatch::start(pid);
    let mut conns = Vec::new();
    for _ in 0..readers {
        let mut s = tokio::net::TcpStream::connect(edge).await.unwrap();
        s.write_all(format!("GET /bytes?n={size} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await.unwrap();
        conns.push(s);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stalled_peak = watch.peak_mib();
    assert_eq!(get(&f.url("/whoami")).await, (200, "bounds".to_string()), "normal clients are served meanwhile");
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|mut s| {
            tokio::spawn(async move {
                let head = read_head(&mut s).await;
                let body_start = head.find("\r\n\r\n").map_or(0, |i| head.len() - i - 4) as u64;
                let mut got = body_start;
                let mut buf = vec![0u8; 256 * 1024];
                while got < size {
                    match tokio::time::timeout(Duration::from_secs(60), s.read(&mut buf)).await {
                        Ok(Ok(k)) if k > 0 => got += k as u64,
                        _ => break,
                    }
                }
                (head.starts_with("HTTP/1.1 200"), got)
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), (true, size), "every slow reader gets the whole response");
    }
    let readers_peak = watch.peak_mib();
    drop(watch);
    report.push(format!(
        "{readers} clients not reading {} MiB responses for 3 s: peak RSS {stalled_peak} MiB (then read to the end: {readers_peak} MiB)",
        size / MIB
    ));

    // 3. Distinct cache keys, far more than the 16 MiB memory budget holds.
    let keys = 40_000 * n;
    let watch = RssWatch::start(pid);
    let next = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (url, next) = (f.url("/cached?cc=max-age=600&pad=300&k="), next.clone());
            tokio::spawn(async move {
                let c = client();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= keys as u64 {
                        return;
                    }
                    let (s, _, _) = request(&c, "GET", &format!("{url}{i}"), &[], "").await.unwrap();
                    assert_eq!(s, 200);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let keys_peak = watch.peak_mib();
    drop(watch);
    let metrics = get(&f.admin("/metrics")).await.1;
    let evictions = metric_value(&metrics, "flotilla_cache_memory_evictions_total").unwrap_or(0);
    report.push(format!(
        "{keys} distinct cache keys into a 16 MiB budget: peak RSS {keys_peak} MiB, {evictions} evicted"
    ));
    let hwm = proc_kib(pid, "VmHWM:") / 1024;
    report.push(format!("edge peak RSS over the whole test (VmHWM): {hwm} MiB"));
    println!("{}", report.join("\n"));

    // The documented bounds (README, "Resource bounds"): ~2x what was measured, for noise.
    // Uploads stream (~0.75 MiB per upload in flight), a reader that stops costs ~0.5 MiB
    // (hyper's capped buffers on both sides), and the cache spends about its budget.
    let n = n as u64;
    assert!(uploads_peak < base + 32 * n, "uploads: {report:?}");
    assert!(readers_peak < base + 48 * n, "slow readers: {report:?}");
    assert!(keys_peak < base + 56, "cache keys: {report:?}");
    assert!(evictions > 0, "the budget must have forced evictions: {report:?}");
    assert_eq!(get(&f.admin("/health")).await.0, 200);
}
