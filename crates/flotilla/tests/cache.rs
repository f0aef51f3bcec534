//! The edge cache end to end, against a real demo-app origin: hits and misses with
//! Cache-Status and Age, what must not be stored, coalescing, Vary, conditional requests,
//! invalidation (path, tag, deploy, unsafe methods) and stale-if-error.

mod common;

use std::time::Duration;

use common::nginx::Nginx;
use common::*;

const BEHAVIOR: &str =
    "[cache_behaviors.main]\ndefault_ttl = \"1h\"\nstale_if_error = \"1h\"\nkey = { query = \"all\" }\n\n";

fn cached_route(group: &str) -> String {
    format!("[[routes]]\npath = \"/*\"\ntarget_group = \"{group}\"\ncache = \"main\"\n\n")
}

async fn cached_edge(name: &str, app: &DemoApp) -> Flotilla {
    let f = Flotilla::start(name, &(BEHAVIOR.to_string() + &cached_route("web") + &group_toml("web", &[app], "")));
    f.wait_target_state("web", &app.addr(), "healthy", Duration::from_secs(10)).await;
    f
}

/// GET through the edge: (status, Cache-Status, Age, body).
async fn fetch(f: &Flotilla, path: &str, headers: &[(&str, &str)]) -> (u16, String, Option<u64>, String) {
    let (status, h, body) = request(&client(), "GET", &f.url(path), headers, "").await.unwrap();
    let cs = h.get("cache-status").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    let age = h.get("age").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    (status, cs, age, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_responses_are_served_from_cache() {
    let app = DemoApp::start("origin");
    let f = cached_edge("cache-hit", &app).await;
    let (s1, cs1, _, b1) = fetch(&f, "/cached?cc=max-age=60", &[]).await;
    assert_eq!((s1, cs1.as_str()), (200, "flotilla; fwd=miss; stored"), "{b1}");
    let (s2, cs2, age, b2) = fetch(&f, "/cached?cc=max-age=60", &[]).await;
    assert_eq!(s2, 200);
    assert!(cs2.starts_with("flotilla; hit; ttl="), "{cs2}");
    assert_eq!(b1, b2, "a hit must not reach the origin");
    assert!(age.is_some());
    // Another query string is another object.
    let (_, cs3, _, b3) = fetch(&f, "/cached?cc=max-age=60&v=2", &[]).await;
    assert!(cs3.contains("fwd=miss"), "{cs3}");
    assert_ne!(b1, b3);
    let m = get(&f.admin("/metrics")).await.1;
    assert!(m.contains("flotilla_cache_requests_total{behavior=\"main\",result=\"hit\"} 1"), "{m}");
    assert!(m.contains("flotilla_cache_memory_entries 2"), "{m}");
    assert!(!m.contains("flotilla_cache_memory_bytes 0\n"), "{m}");
    // Bytes answered from the cache vs fetched from the origin: one hit of b1, two fetches.
    let line = |prefix: &str| metric_value(&m, prefix);
    assert_eq!(
        line("flotilla_cache_body_bytes_total{behavior=\"main\",source=\"cache\"}"),
        Some(b1.len() as u64),
        "{m}"
    );
    assert_eq!(
        line("flotilla_cache_body_bytes_total{behavior=\"main\",source=\"origin\"}"),
        Some((b1.len() + b3.len()) as u64),
        "{m}"
    );
    assert!(m.contains("flotilla_cache_memory_evictions_total 0"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_must_not_be_stored_is_not() {
    let app = DemoApp::start("origin");
    let f = cached_edge("cache-nostore", &app).await;
    for (path, detail) in [
        ("/cached?cc=no-store", "no-store"),
        ("/cached?cc=private,max-age=60", "private"),
        ("/cached?cc=max-age=60&vary=*", "vary-star"),
    ] {
        let (_, cs, _, b1) = fetch(&f, path, &[]).await;
        assert!(cs.contains(&format!("detail={detail}")), "{path}: {cs}");
        let (_, _, _, b2) = fetch(&f, path, &[]).await;
        assert_ne!(b1, b2, "{path} must go to the origin every time");
    }
    // Authenticated requests are not stored unless the response allows it (RFC 9111 §3.5).
    let (_, cs, _, _) = fetch(&f, "/cached?cc=max-age=60&auth=1", &[("authorization", "Bearer x")]).await;
    assert!(cs.contains("detail=authorization"), "{cs}");
    let (_, cs, _, _) = fetch(&f, "/cached?cc=s-maxage=60&auth=2", &[("authorization", "Bearer x")]).await;
    assert!(cs.contains("stored"), "{cs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_make_one_origin_request() {
    let app = DemoApp::start("origin");
    let f = cached_edge("cache-coalesce", &app).await;
    let url = f.url("/cached?cc=max-age=60&ms=400");
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { request(&client(), "GET", &url, &[], "").await.unwrap() })
        })
        .collect();
    let mut bodies = std::collections::BTreeSet::new();
    let mut collapsed = 0;
    for t in tasks {
        let (status, h, body) = t.await.unwrap();
        assert_eq!(status, 200);
        collapsed += usize::from(h["cache-status"].to_str().unwrap().contains("collapsed"));
        bodies.insert(body);
    }
    assert_eq!(bodies.len(), 1, "20 concurrent misses must make one origin request: {bodies:?}");
    assert!(collapsed > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vary_conditionals_and_head() {
    let app = DemoApp::start("origin");
    let f = cached_edge("cache-vary", &app).await;
    let path = "/cached?cc=max-age=60&vary=Accept-Encoding&etag=%22v1%22";
    let (_, _, _, br1) = fetch(&f, path, &[("accept-encoding", "gzip, br")]).await;
    let (_, cs, _, gz1) = fetch(&f, path, &[("accept-encoding", "gzip")]).await;
    assert!(cs.contains("fwd=vary-miss"), "{cs}");
    assert_ne!(br1, gz1);
    // Same preferred encoding, different spelling: the same variant.
    let (_, cs, _, br2) = fetch(&f, path, &[("accept-encoding", "br;q=1.0, gzip;q=0.5")]).await;
    assert!(cs.contains("hit"), "{cs}");
    assert_eq!(br1, br2);
    // A matching validator gets 304 from the cache.
    let (s, h, body) =
        request(&client(), "GET", &f.url(path), &[("accept-encoding", "gzip"), ("if-none-match", "\"v1\"")], "")
            .await
            .unwrap();
    assert_eq!(s, 304, "{body}");
    assert_eq!(h["etag"], "\"v1\"");
    // HEAD is answered from the stored GET, without a body.
    let (s, h, body) = request(&client(), "HEAD", &f.url(path), &[("accept-encoding", "gzip")], "").await.unwrap();
    assert_eq!((s, body.as_str()), (200, ""));
    assert!(h["cache-status"].to_str().unwrap().contains("hit"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidation_by_path_tag_deploy_and_unsafe_method() {
    let app = DemoApp::start("origin");
    let f = cached_edge("cache-invalidate", &app).await;
    let c = client();
    let auth = [("authorization", "Bearer test-token")];
    let a = "/cached?cc=max-age=600";
    let tagged = "/cached?cc=max-age=600&tag=product-42%20all";
    let (_, _, _, a1) = fetch(&f, a, &[]).await;
    let (_, _, _, t1) = fetch(&f, tagged, &[]).await;

    let (s, _, body) =
        request(&c, "POST", &f.admin("/api/v1/invalidations"), &auth, r#"{"tags":["product-42"]}"#).await.unwrap();
    assert_eq!(s, 202, "{body}");
    let id = serde_json::from_str::<serde_json::Value>(&body).unwrap()["id"].as_u64().unwrap();
    let (s, _, body) = request(&c, "GET", &f.admin(&format!("/api/v1/invalidations/{id}")), &[], "").await.unwrap();
    assert!(s == 200 && body.contains("\"completed\""), "{body}");
    assert_ne!(fetch(&f, tagged, &[]).await.3, t1, "tag invalidation is in effect once the 202 is back");
    assert_eq!(fetch(&f, a, &[]).await.3, a1, "other objects stay cached");

    let (s, _, _) =
        request(&c, "POST", &f.admin("/api/v1/invalidations"), &auth, r#"{"paths":["/cach*"]}"#).await.unwrap();
    assert_eq!(s, 202);
    let a2 = fetch(&f, a, &[]).await.3;
    assert_ne!(a2, a1);

    // A successful POST to a URL invalidates what is cached for that URI (RFC 9111 §4.4), and
    // only that one: the same path with another query stays cached.
    let t2 = fetch(&f, tagged, &[]).await.3;
    let (s, _, _) = request(&c, "POST", &f.url(a), &[], "x").await.unwrap();
    assert_eq!(s, 200);
    let a3 = fetch(&f, a, &[]).await.3;
    assert_ne!(a3, a2);
    assert_eq!(fetch(&f, tagged, &[]).await.3, t2);

    let (s, _, _) = request(&c, "POST", &f.admin("/api/v1/deployments"), &auth, "").await.unwrap();
    assert_eq!(s, 202);
    assert_ne!(fetch(&f, a, &[]).await.3, a3);

    let (s, _, _) = request(&c, "POST", &f.admin("/api/v1/invalidations"), &[], r#"{"paths":["/x"]}"#).await.unwrap();
    assert_eq!(s, 401);
    let (s, _, _) =
        request(&c, "POST", &f.admin("/api/v1/invalidations"), &auth, r#"{"paths":["no-slash"]}"#).await.unwrap();
    assert_eq!(s, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_if_error_serves_the_stored_copy_when_the_origin_is_down() {
    let mut app = DemoApp::start("origin");
    let f = cached_edge("cache-sie", &app).await;
    let path = "/cached?cc=max-age=1";
    let strict = "/cached?cc=max-age=1,must-revalidate";
    let (_, _, _, b1) = fetch(&f, path, &[]).await;
    fetch(&f, strict, &[]).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    app.proc.kill9();
    let (s, cs, _, b2) = fetch(&f, path, &[]).await;
    assert_eq!(s, 200, "{cs}");
    assert!(cs.contains("stale-if-error"), "{cs}");
    assert_eq!(b1, b2);
    // `must-revalidate` forbids serving it stale, even when the origin is down.
    let (s, _, _, _) = fetch(&f, strict, &[]).await;
    assert_eq!(s, 502);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_invalidates_through_the_admin_api() {
    let app = DemoApp::start("origin");
    let f = cached_edge("cache-cli", &app).await;
    let path = "/cached?cc=max-age=600";
    let (_, _, _, b1) = fetch(&f, path, &[]).await;
    let cli = |args: &[&str]| {
        let mut cmd = std::process::Command::new(BIN);
        cmd.arg("invalidate").arg("--config").arg(&f.config).args(args);
        cmd.output().unwrap()
    };
    let out = cli(&["/cached"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"completed\""));
    let (_, _, _, b2) = fetch(&f, path, &[]).await;
    assert_ne!(b1, b2);
    let out = cli(&["--all"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_ne!(fetch(&f, path, &[]).await.3, b2);
    let out = cli(&[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--all"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_entries_with_validators_are_revalidated_with_304() {
    let app = DemoApp::start("origin");
    let f = cached_edge("cache-revalidate", &app).await;
    // max-age=3 leaves room for the "fresh again" check below on a loaded 2-core machine.
    let path = "/cached?cc=max-age=3&etag=%22v7%22";
    let (_, _, _, b1) = fetch(&f, path, &[]).await;
    tokio::time::sleep(Duration::from_millis(4100)).await;
    // Stale now: the edge asks the origin with If-None-Match, gets 304, serves the stored body.
    let (s, cs, _, b2) = fetch(&f, path, &[]).await;
    assert_eq!(s, 200);
    assert!(cs.contains("fwd=stale; fwd-status=304"), "{cs}");
    assert_eq!(b1, b2, "the body comes from the cache");
    // And it is fresh again.
    let (_, cs, _, _) = fetch(&f, path, &[]).await;
    assert!(cs.contains("hit"), "{cs}");
    // A request that insists (no-cache) revalidates too, still without a new body.
    let (_, cs, _, b3) = fetch(&f, path, &[("cache-control", "no-cache")]).await;
    assert!(cs.contains("fwd=request") || cs.contains("fwd-status=304"), "{cs}");
    assert_eq!(b1, b3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_while_revalidate_serves_stale_and_refreshes_in_the_background() {
    let app = DemoApp::start("origin");
    let f = cached_edge("cache-swr", &app).await;
    let path = "/cached?cc=max-age=1,stale-while-revalidate=60";
    let (_, _, _, b1) = fetch(&f, path, &[]).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (s, cs, _, b2) = fetch(&f, path, &[]).await;
    assert_eq!(s, 200);
    assert!(cs.contains("detail=stale-while-revalidate"), "{cs}");
    assert_eq!(b1, b2, "the stale copy is served at once");
    // The refresh lands without any client waiting for it.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (_, cs, _, b) = fetch(&f, path, &[]).await;
        if b != b1 {
            assert!(cs.contains("hit"), "{cs}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the background refresh never landed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_are_served_from_the_stored_object() {
    let app = DemoApp::start("origin");
    let f = cached_edge("cache-range", &app).await;
    let path = "/cached?cc=max-age=600&etag=%22r1%22";
    // A range request on a miss still stores the whole object, then answers the range.
    let c = client();
    let (s, h, body) = request(&c, "GET", &f.url(path), &[("range", "bytes=0-5")], "").await.unwrap();
    assert_eq!(s, 206, "{body}");
    assert_eq!(body, "origin");
    let full = fetch(&f, path, &[]).await.3;
    let len = full.len();
    assert_eq!(h["content-range"].to_str().unwrap(), format!("bytes 0-5/{len}"));
    let (s, h, body) = request(&c, "GET", &f.url(path), &[("range", "bytes=-4")], "").await.unwrap();
    assert_eq!((s, body.as_str()), (206, &full[len - 4..]));
    assert!(h["cache-status"].to_str().unwrap().contains("hit"));
    let (s, h, _) = request(&c, "GET", &f.url(path), &[("range", &format!("bytes={len}-"))], "").await.unwrap();
    assert_eq!(s, 416);
    assert_eq!(h["content-range"].to_str().unwrap(), format!("bytes */{len}"));
    // If-Range with another validator: the whole object.
    let (s, _, body) =
        request(&c, "GET", &f.url(path), &[("range", "bytes=0-5"), ("if-range", "\"other\"")], "").await.unwrap();
    assert_eq!((s, body.len()), (200, len));
    // Several ranges: one multipart/byteranges body, parts in order, each with its Content-Range.
    let (s, h, body) = request(&c, "GET", &f.url(path), &[("range", "bytes=4-5, 0-1")], "").await.unwrap();
    assert_eq!(s, 206);
    let ctype = h["content-type"].to_str().unwrap();
    let boundary = ctype.strip_prefix("multipart/byteranges; boundary=").unwrap_or_else(|| panic!("{ctype}"));
    let parts: Vec<&str> = body.split(&format!("--{boundary}")).collect();
    assert_eq!(parts.len(), 4, "{body}");
    assert!(
        parts[1].contains(&format!("Content-Range: bytes 0-1/{len}"))
            && parts[1].ends_with(&format!("\r\n\r\n{}\r\n", &full[0..2])),
        "{body}"
    );
    assert!(
        parts[2].contains(&format!("Content-Range: bytes 4-5/{len}"))
            && parts[2].ends_with(&format!("{}\r\n", &full[4..6])),
        "{body}"
    );
    assert_eq!(parts[3], "--\r\n");
    // Overlapping ranges are merged into one.
    let (s, _, body) = request(&c, "GET", &f.url(path), &[("range", "bytes=0-3,2-5")], "").await.unwrap();
    assert_eq!((s, body.as_str()), (206, &full[0..6]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressible_objects_are_stored_compressed_once_and_served_by_accept_encoding() {
    use std::io::Read;
    let app = DemoApp::start("origin");
    let behavior = "[cache_behaviors.main]\ndefault_ttl = \"1h\"\ncompress = true\n\n";
    let f =
        Flotilla::start("cache-gzip", &(behavior.to_string() + &cached_route("web") + &group_toml("web", &[&app], "")));
    f.wait_target_state("web", &app.addr(), "healthy", Duration::from_secs(10)).await;
    let path = "/cached?cc=max-age=600&pad=4000&etag=%22g1%22";
    let c = client();
    let (s, h, plain) = request(&c, "GET", &f.url(path), &[], "").await.unwrap();
    assert_eq!(s, 200);
    assert!(h.get("content-encoding").is_none(), "no Accept-Encoding: identity");
    assert!(h["vary"].to_str().unwrap().to_ascii_lowercase().contains("accept-encoding"));
    // The same entry answers each client in its preferred encoding: brotli first among equals,
    // then zstd, then gzip; every one decodes to the same body (one origin fetch).
    let fetch = |ae: &'static str| {
        let (c, url) = (c.clone(), f.url(path));
        async move {
            let req = http::Request::get(url)
                .header("accept-encoding", ae)
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap();
            let resp = c.request(req).await.unwrap();
            let enc = resp.headers()["content-encoding"].to_str().unwrap().to_string();
            assert_eq!(resp.headers()["etag"], "W/\"g1\"");
            assert!(resp.headers()["cache-status"].to_str().unwrap().contains("hit"));
            (enc, http_body_util::BodyExt::collect(resp.into_body()).await.unwrap().to_bytes())
        }
    };
    let (enc, br) = fetch("gzip, deflate, br, zstd").await;
    assert_eq!(enc, "br");
    let mut out = Vec::new();
    brotli::BrotliDecompress(&mut &br[..], &mut out).unwrap();
    assert_eq!(String::from_utf8(out).unwrap(), plain);
    let (enc, zs) = fetch("zstd, gzip;q=0.5").await;
    assert_eq!(enc, "zstd");
    assert_eq!(zstd::bulk::decompress(&zs, plain.len()).unwrap(), plain.as_bytes());
    let (enc, gz) = fetch("gzip").await;
    assert_eq!(enc, "gzip");
    assert!(gz.len() < plain.len() / 4, "{} vs {}", gz.len(), plain.len());
    let mut unzipped = String::new();
    flate2::read::GzDecoder::new(&gz[..]).read_to_string(&mut unzipped).unwrap();
    assert_eq!(unzipped, plain, "one origin fetch, every representation of the same body");
    // Not compressed: a body the origin already encoded or marked no-transform.
    let (_, h, _) =
        request(&c, "GET", &f.url("/cached?cc=max-age=600,no-transform&pad=4000"), &[("accept-encoding", "gzip")], "")
            .await
            .unwrap();
    assert!(h.get("content-encoding").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_origin_serves_a_directory_with_validators_and_ranges() {
    let dir = scratch_dir("cache-files-origin");
    let public = dir.join("public");
    std::fs::create_dir_all(public.join("assets/docs")).unwrap();
    let css = "body { color: #123; }\n".repeat(20);
    std::fs::write(public.join("assets/app.css"), &css).unwrap();
    std::fs::write(public.join("assets/docs/index.html"), "<h1>docs</h1>\n").unwrap();
    std::fs::write(dir.join("secret.txt"), "outside the root\n").unwrap();
    std::fs::create_dir_all(public.join("plain")).unwrap();
    std::fs::write(public.join("plain/data.txt"), "1234567890").unwrap();
    // Larger than the small-file limit (64 KiB): streamed from disk rather than read whole.
    let big: String = (0..20_000).map(|i| format!("{i:05}\n")).collect();
    std::fs::write(public.join("plain/big.txt"), &big).unwrap();
    std::os::unix::fs::symlink(dir.join("secret.txt"), public.join("assets/link.txt")).unwrap();
    let body = format!(
        "{BEHAVIOR}[[routes]]\npath = \"/assets/*\"\norigin = \"files:public\"\ncache = \"main\"\n\n[[routes]]\npath = \"/plain/*\"\norigin = \"files:public\"\n"
    );
    let f = Flotilla::start_in(&dir, &body);
    let port = f.port;
    let c = client();

    let (s, h, b) = request(&c, "GET", &f.url("/assets/app.css"), &[], "").await.unwrap();
    assert_eq!((s, b.as_str()), (200, css.as_str()));
    assert_eq!(h["content-type"], "text/css; charset=utf-8");
    assert_eq!(h["cache-status"], "flotilla; fwd=miss; stored");
    let etag = h["etag"].to_str().unwrap().to_string();
    assert!(h.contains_key("last-modified"));
    let (_, h2, _) = request(&c, "GET", &f.url("/assets/app.css"), &[], "").await.unwrap();
    assert!(h2["cache-status"].to_str().unwrap().starts_with("flotilla; hit"), "{h2:?}");
    let (s304, _, _) = request(&c, "GET", &f.url("/assets/app.css"), &[("if-none-match", &etag)], "").await.unwrap();
    assert_eq!(s304, 304);
    let (s206, h206, part) =
        request(&c, "GET", &f.url("/assets/app.css"), &[("range", "bytes=5-9")], "").await.unwrap();
    assert_eq!((s206, part.as_str()), (206, &css[5..10]));
    assert_eq!(h206["content-range"], format!("bytes 5-9/{}", css.len()).as_str());

    // Uncached: the directory server itself answers validators, ranges and HEAD.
    let (s, h, part) = request(&c, "GET", &f.url("/plain/data.txt"), &[("range", "bytes=-4")], "").await.unwrap();
    assert_eq!((s, part.as_str()), (206, "7890"));
    assert!(!h.contains_key("cache-status"));
    let lm = h["last-modified"].to_str().unwrap().to_string();
    let (s, _, _) = request(&c, "GET", &f.url("/plain/data.txt"), &[("if-modified-since", &lm)], "").await.unwrap();
    assert_eq!(s, 304);
    let (s, h, b) = request(&c, "HEAD", &f.url("/plain/data.txt"), &[], "").await.unwrap();
    assert_eq!((s, b.as_str(), h["content-length"].to_str().unwrap()), (200, "", "10"));
    let (s, _, b) = request(&c, "GET", &f.url("/plain/big.txt"), &[], "").await.unwrap();
    assert_eq!((s, b.len()), (200, big.len()));
    assert!(b == big, "the streamed file differs");
    let (s, _, part) =
        request(&c, "GET", &f.url("/plain/big.txt"), &[("range", "bytes=70000-70011")], "").await.unwrap();
    assert_eq!((s, part.as_str()), (206, &big[70_000..70_012]));
    let (s, h, _) = request(&c, "GET", &f.url("/plain/data.txt"), &[("range", "bytes=50-")], "").await.unwrap();
    assert_eq!((s, h["content-range"].to_str().unwrap()), (416, "bytes */10"));
    let (s, h, _) = request(&c, "GET", &f.url("/assets/docs"), &[], "").await.unwrap();
    assert_eq!((s, h.get("location").map(|v| v.to_str().unwrap())), (301, Some("/assets/docs/")));
    let (s, h, b) = request(&c, "GET", &f.url("/assets/docs/"), &[], "").await.unwrap();
    assert_eq!((s, b.as_str()), (200, "<h1>docs</h1>\n"));
    assert_eq!(h["content-type"], "text/html; charset=utf-8");
    let (s, _, _) = request(&c, "POST", &f.url("/assets/app.css"), &[], "x").await.unwrap();
    assert_eq!(s, 405);
    // Nothing outside the root: not by '..', not by a symlink. Dot segments are resolved before
    // routing, so `/assets/../secret.txt` is `/secret.txt`, which no route serves.
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let traversal = raw(addr, b"GET /assets/../secret.txt HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(traversal.starts_with("HTTP/1.1 404") && !traversal.contains("outside the root"), "{traversal}");
    let encoded = raw(addr, b"GET /assets/%2e%2e/%2e%2e/secret.txt HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(encoded.starts_with("HTTP/1.1 404"), "{encoded}");
    let slash = raw(addr, b"GET /assets/..%2fsecret.txt HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(slash.starts_with("HTTP/1.1 400"), "{slash}");
    let (s, _, b) = request(&c, "GET", &f.url("/assets/link.txt"), &[], "").await.unwrap();
    assert_eq!(s, 404, "{b}");
    // Small files are kept in memory for a second: a change on disk shows within it.
    std::fs::write(public.join("plain/data.txt"), "changed").unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (s, _, b) = request(&c, "GET", &f.url("/plain/data.txt"), &[], "").await.unwrap();
    assert_eq!((s, b.as_str()), (200, "changed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_disk_tier_survives_a_restart_and_honours_invalidation() {
    let app = DemoApp::start("origin");
    let dir = scratch_dir("cache-disk");
    let port = free_port();
    let admin_port = free_port();
    let text = format!(
        "[edge]\nlisten = [\"127.0.0.1:{port}\"]\n\n[admin]\nlisten = \"127.0.0.1:{admin_port}\"\ntoken = \"test-token\"\n\n[cache]\ndisk = {{ path = \"cache\", size = \"64MiB\" }}\n\n{BEHAVIOR}{}{}",
        cached_route("web"),
        group_toml("web", &[&app], "")
    );
    let start = || Flotilla::start_raw("cache-disk", &dir, &text, port, admin_port);
    let mut f = start();
    f.wait_target_state("web", &app.addr(), "healthy", Duration::from_secs(10)).await;
    let (_, cs, _, first) = fetch(&f, "/cached?cc=max-age=600", &[]).await;
    assert_eq!(cs, "flotilla; fwd=miss; stored");
    fetch(&f, "/cached?cc=max-age=600&other=1", &[]).await;
    // Written in the background: wait until both objects are on disk.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let m = get(&f.admin("/metrics")).await.1;
        if m.contains("flotilla_cache_disk_objects 2") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{m}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    f.proc.signal("TERM");
    assert_eq!(f.proc.wait_exit(Duration::from_secs(10)), Some(0));

    // A new process: the object comes from disk, with the origin's body, not a new fetch.
    let mut f = start();
    f.wait_target_state("web", &app.addr(), "healthy", Duration::from_secs(10)).await;
    let (status, cs, age, body) = fetch(&f, "/cached?cc=max-age=600", &[]).await;
    assert_eq!(status, 200);
    assert!(cs.starts_with("flotilla; hit"), "{cs}");
    assert_eq!(body, first);
    assert!(age.is_some());
    // Invalidation reaches the disk tier, and stays in effect across another restart.
    let (code, _) = f.admin_call("POST", "/api/v1/invalidations", "{\"paths\":[\"/cached\"]}").await;
    assert_eq!(code, 202);
    f.proc.signal("TERM");
    assert_eq!(f.proc.wait_exit(Duration::from_secs(10)), Some(0));
    let f = start();
    f.wait_target_state("web", &app.addr(), "healthy", Duration::from_secs(10)).await;
    let (_, cs, _, _) = fetch(&f, "/cached?cc=max-age=600", &[]).await;
    assert!(cs.contains("fwd=miss"), "{cs}");
    let m = get(&f.admin("/metrics")).await.1;
    assert!(m.contains("flotilla_cache_disk_errors_total 0"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_disk_directory_degrades_to_memory() {
    let app = DemoApp::start("origin");
    let dir = scratch_dir("cache-disk-broken");
    // A file where the cache directory should be: it cannot be created.
    std::fs::write(dir.join("blocked"), "not a directory").unwrap();
    let body = format!(
        "[cache]\ndisk = {{ path = \"{}/blocked/cache\", size = \"64MiB\" }}\n\n{BEHAVIOR}{}{}",
        dir.display(),
        cached_route("web"),
        group_toml("web", &[&app], "")
    );
    let f = Flotilla::start("cache-disk-broken-edge", &body);
    f.wait_target_state("web", &app.addr(), "healthy", Duration::from_secs(10)).await;
    fetch(&f, "/cached?cc=max-age=60", &[]).await;
    let (_, cs, _, _) = fetch(&f, "/cached?cc=max-age=60", &[]).await;
    assert!(cs.starts_with("flotilla; hit"), "memory still caches: {cs}");
    assert!(f.log().contains("cache disk tier unavailable"), "{}", f.log());
}

/// An nginx target group with fast health checks on `/index.html`.
fn nginx_group(nginx: &Nginx) -> String {
    format!(
        "[target_groups.web]\ntargets = [\"{}\"]\n[target_groups.web.health_check]\npath = \"/index.html\"\ninterval = \"200ms\"\ntimeout = \"150ms\"\nhealthy_threshold = 2\n",
        nginx.addr()
    )
}

/// The issue's case against a real nginx, which answers 400 to a request head over its 8 KiB
/// `large_client_header_buffers`: a behaviour with the default 1-day `default_ttl` stored that
/// 400 and served it to everyone. Now a crafted request gets its error, and the next ordinary
/// visitor still gets the page, whether it was cached before or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crafted_request_never_caches_the_origins_error_for_others() {
    let nginx = Nginx::start("errors", "");
    let (page, other) = ("<h1>the page</h1>\n", "<h1>the other page</h1>\n");
    std::fs::write(nginx.root.join("index.html"), page).unwrap();
    std::fs::write(nginx.root.join("other.html"), other).unwrap();
    let body = format!("[cache_behaviors.main]\n\n{}{}", cached_route("web"), nginx_group(&nginx));
    let f = Flotilla::start("cache-nginx-errors", &body);
    f.wait_target_state("web", &nginx.addr(), "healthy", Duration::from_secs(10)).await;
    let pad = "x".repeat(9 * 1024);
    let crafted = [("cache-control", "no-cache"), ("x-pad", pad.as_str())];

    // A cached page, then a forced revalidation nginx refuses: that client gets the 400.
    let (s, cs, _, b) = fetch(&f, "/index.html", &[]).await;
    assert_eq!((s, cs.as_str(), b.as_str()), (200, "flotilla; fwd=miss; stored", page));
    let (s, cs, _, _) = fetch(&f, "/index.html", &crafted).await;
    assert_eq!(s, 400, "nginx refuses the 9 KiB header: {cs}");
    assert!(cs.contains("detail="), "{cs}");
    let (s, cs, _, b) = fetch(&f, "/index.html", &[]).await;
    assert_eq!((s, b.as_str()), (200, page), "the next visitor gets the page: {cs}");
    assert!(cs.starts_with("flotilla; hit"), "{cs}");

    // Nothing cached yet: the crafted request comes first, and its 400 is not stored.
    let (s, cs, _, _) = fetch(&f, "/other.html", &[("x-pad", pad.as_str())]).await;
    assert_eq!(s, 400, "{cs}");
    assert!(cs.contains("detail=error"), "{cs}");
    let (s, cs, _, b) = fetch(&f, "/other.html", &[]).await;
    assert_eq!((s, cs.as_str(), b.as_str()), (200, "flotilla; fwd=miss; stored", other));

    // Negative caching: a 404 is kept for error_ttl (10 s by default), not default_ttl's day.
    let (s, cs, _, _) = fetch(&f, "/missing.html", &[]).await;
    assert_eq!((s, cs.as_str()), (404, "flotilla; fwd=miss; stored"));
    let (s, cs, _, _) = fetch(&f, "/missing.html", &[]).await;
    let ttl: u64 = cs.strip_prefix("flotilla; hit; ttl=").and_then(|t| t.parse().ok()).unwrap_or(u64::MAX);
    assert!(s == 404 && ttl <= 10, "{cs}");
}

/// A page the origin personalises by cookie and sends without Cache-Control (what Express,
/// Flask, Django and Go do by default) is never given to another visitor, in either order;
/// the edge's own sticky cookie is no one's credential; a response that sets a cookie is not
/// stored; cookies in the key and `other_cookies = "strip"` keep their caching.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_personalised_by_cookie_is_never_served_to_another_visitor() {
    let app = DemoApp::start("origin");
    let behaviors = "[cache_behaviors.main]\n\n\
                     [cache_behaviors.lang]\nkey = { cookies = [\"lang\"] }\n\n\
                     [cache_behaviors.strip]\nother_cookies = \"strip\"\n\n\
                     [[routes]]\nhost = \"strip.test\"\ntarget_group = \"web\"\ncache = \"strip\"\n\n";
    let routes = "[[routes]]\npath = \"/cached\"\nhost = \"lang.test\"\ntarget_group = \"web\"\ncache = \"lang\"\n\n";
    let sticky = "stickiness = { enabled = true }\n";
    let body = format!("{behaviors}{routes}{}{}", cached_route("web"), group_toml("web", &[&app], sticky));
    let f = Flotilla::start("cache-private", &body);
    f.wait_target_state("web", &app.addr(), "healthy", Duration::from_secs(10)).await;
    let alice = [("cookie", "session=alice")];

    // The personalised visitor first: its page is not stored, the next visitor gets its own.
    let (s, cs, _, b) = fetch(&f, "/cached?cookie=session", &alice).await;
    assert!(s == 200 && b.contains("hello alice"), "{b}");
    assert!(cs.contains("fwd=bypass") && cs.contains("detail=cookie"), "{cs}");
    let (_, cs, _, b) = fetch(&f, "/cached?cookie=session", &[]).await;
    assert!(b.contains("hello anonymous"), "another visitor must not get alice's page: {b}");
    assert!(cs.ends_with("stored"), "{cs}");
    // Now an anonymous copy is stored: alice still gets hers, anonymous visitors the copy.
    let (_, cs, _, b) = fetch(&f, "/cached?cookie=session", &alice).await;
    assert!(b.contains("hello alice") && cs.contains("fwd=bypass"), "{cs} {b}");
    let (_, cs, _, b) = fetch(&f, "/cached?cookie=session", &[]).await;
    assert!(b.contains("hello anonymous") && cs.starts_with("flotilla; hit"), "{cs} {b}");
    // Authorization is a credential too: it does not get the anonymous copy.
    let (_, cs, _, _) = fetch(&f, "/cached?cookie=session", &[("authorization", "Bearer a")]).await;
    assert!(cs.contains("fwd=bypass"), "{cs}");
    // What the origin marks as shared is stored from a personalised request and served to all.
    let (_, cs, _, b) = fetch(&f, "/cached?cc=public,max-age=60&x=1", &alice).await;
    assert!(cs.ends_with("stored"), "{cs}");
    let (_, cs, _, b2) = fetch(&f, "/cached?cc=public,max-age=60&x=1", &alice).await;
    assert!(cs.starts_with("flotilla; hit") && b2 == b, "{cs}");

    // The edge's sticky cookie: set on a stored response without keeping it from being stored,
    // given to that client only, and no credential when it comes back.
    let (s, h, b) = request(&client(), "GET", &f.url("/cached?x=2"), &[], "").await.unwrap();
    let set = h.get("set-cookie").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    assert!(s == 200 && set.starts_with("flotilla_sticky="), "{h:?}");
    assert!(h["cache-status"].to_str().unwrap().ends_with("stored"), "{h:?}");
    let sticky_cookie = set.split(';').next().unwrap().to_string();
    let (s, h, b2) = request(&client(), "GET", &f.url("/cached?x=2"), &[("cookie", &sticky_cookie)], "").await.unwrap();
    assert!(s == 200 && b2 == b && h["cache-status"].to_str().unwrap().starts_with("flotilla; hit"), "{h:?}");
    assert!(!h.contains_key("set-cookie"), "a hit never carries a Set-Cookie: {h:?}");

    // A response that sets its own cookie is never stored, whatever its Cache-Control says.
    let path = "/cached?cc=public,max-age=60&set-cookie=sid%3Dsecret";
    let (_, cs, _, b) = fetch(&f, path, &[]).await;
    assert!(cs.contains("detail=set-cookie"), "{cs}");
    let (_, h, b2) = request(&client(), "GET", &f.url(path), &[], "").await.unwrap();
    assert_ne!(b, b2, "fetched again, not served from a copy");
    assert_eq!(h.get_all("set-cookie").iter().filter(|v| v.to_str().unwrap() == "sid=secret").count(), 1);

    // Cookies named in the key split it; others next to them still bypass.
    let lang = |c: &'static str| [("host", "lang.test"), ("cookie", c)];
    let (_, cs, _, de) = fetch(&f, "/cached", &lang("lang=de")).await;
    assert!(cs.ends_with("stored"), "{cs}");
    let (_, cs, _, de2) = fetch(&f, "/cached", &lang("lang=de; flotilla_sticky=x")).await;
    assert!(cs.starts_with("flotilla; hit") && de == de2, "{cs}");
    let (_, cs, _, _) = fetch(&f, "/cached", &lang("lang=fr")).await;
    assert!(cs.contains("fwd=miss"), "{cs}");
    let (_, cs, _, _) = fetch(&f, "/cached", &lang("lang=de; session=alice")).await;
    assert!(cs.contains("fwd=bypass"), "{cs}");

    // other_cookies = "strip": the origin never sees them, so the page is everyone's.
    let strip = |c: &'static str| [("host", "strip.test"), ("cookie", c)];
    let (_, cs, _, b) = fetch(&f, "/cached?cookie=session", &strip("session=alice")).await;
    assert!(b.contains("hello anonymous") && cs.ends_with("stored"), "{cs} {b}");
    let (_, cs, _, b2) = fetch(&f, "/cached?cookie=session", &strip("session=bob")).await;
    assert!(cs.starts_with("flotilla; hit") && b2 == b, "{cs}");
}

/// The outside testers' race on one node: an object fetched twice (stored, then a memory hit)
/// and invalidated at once. The disk write that the first fetch started in the background used
/// to finish after the invalidation and put the old copy back; the next GET then served it
/// from disk without asking the origin. Every round must be a miss after the API answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_is_never_undone_by_a_late_disk_write() {
    let app = DemoApp::start("origin");
    let dir = scratch_dir("cache-disk-race");
    let (port, admin_port) = (free_port(), free_port());
    let text = format!(
        "[edge]\nlisten = [\"127.0.0.1:{port}\"]\n\n[admin]\nlisten = \"127.0.0.1:{admin_port}\"\ntoken = \"test-token\"\n\n[cache]\ndisk = {{ path = \"cache\", size = \"64MiB\" }}\n\n{BEHAVIOR}{}{}",
        cached_route("web"),
        group_toml("web", &[&app], "")
    );
    let f = Flotilla::start_raw("cache-disk-race", &dir, &text, port, admin_port);
    f.wait_target_state("web", &app.addr(), "healthy", Duration::from_secs(10)).await;
    let mut undone = Vec::new();
    for round in 0..60 {
        // A body large enough that writing it takes a moment.
        let path = format!("/cached?cc=max-age=600&pad=200000&r={round}");
        let (_, cs, _, first) = fetch(&f, &path, &[]).await;
        assert!(cs.ends_with("stored"), "{cs}");
        fetch(&f, &path, &[]).await;
        // Everything (a deployment) every third round, else by path.
        let (code, _) = if round % 3 == 0 {
            f.admin_call("POST", "/api/v1/deployments", "").await
        } else {
            f.admin_call("POST", "/api/v1/invalidations", "{\"paths\":[\"/cached\"]}").await
        };
        assert_eq!(code, 202);
        let (_, cs, _, after) = fetch(&f, &path, &[]).await;
        if after == first {
            undone.push(format!("round {round}: {cs}"));
        }
    }
    assert!(undone.is_empty(), "{} of 60 invalidations were undone: {undone:?}", undone.len());
}
