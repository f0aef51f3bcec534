//! `[images]` end to end with the real photos of `../shared/corpus/images`: presets, Accept
//! negotiation, caching and coalescing, srcset, signed ad-hoc sizes, and refusals of crafted bad
//! files (each derived from a corpus photo), with the process still serving afterwards.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};

const BIG: &str = "16_lomiri_Kleiber_6028x3391.jpg";

struct Answer {
    status: u16,
    headers: http::HeaderMap,
    body: Bytes,
}

impl Answer {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

async fn fetch(f: &Flotilla, path: &str, accept: Option<&str>) -> Answer {
    let mut req = http::Request::builder().uri(f.url(path));
    if let Some(a) = accept {
        req = req.header("accept", a);
    }
    let req = req.body(Full::new(Bytes::new())).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(60), client().request(req)).await.expect("timed out").unwrap();
    let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Answer { status, headers, body }
}

fn dims(bytes: &[u8]) -> (u32, u32) {
    let p = flotilla_images::probe(bytes).unwrap_or_else(|e| panic!("output does not decode: {e}"));
    (p.width, p.height)
}

fn metric(m: &str, line_start: &str) -> u64 {
    metric_value(m, line_start).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presets_from_a_target_group_negotiated_and_cached() {
    let corpus = corpus_dir();
    let app = DemoApp::start_with("photos", &["--photos", corpus.to_str().unwrap()]);
    let body = format!("[images]\nsource = \"web\"\n\n{ROUTE_ALL}{}", group_toml("web", &[&app], ""));
    let f = Flotilla::start("images-group", &body);
    f.wait_target_state("web", &app.addr(), "healthy", Duration::from_secs(10)).await;
    let small = format!("/_img/small/photos/{BIG}");

    // AVIF for a browser that takes it, WebP for one that takes only that, JPEG for the rest.
    let avif = fetch(&f, &small, Some("image/avif,image/webp,*/*")).await;
    assert_eq!(avif.status, 200, "{}", avif.text());
    assert_eq!(avif.header("content-type"), "image/avif");
    assert_eq!(&avif.body[4..12], b"ftypavif");
    assert_eq!(avif.header("x-image-size"), "320x180");
    assert_eq!(avif.header("vary"), "Accept");
    assert_eq!(avif.header("cache-status"), "flotilla; fwd=miss; stored");
    let webp = fetch(&f, &small, Some("image/webp,*/*")).await;
    assert_eq!((webp.status, webp.header("content-type")), (200, "image/webp"));
    assert_eq!(dims(&webp.body), (320, 180));
    let jpeg = fetch(&f, &small, None).await;
    assert_eq!(jpeg.header("content-type"), "image/jpeg");
    assert_eq!(dims(&jpeg.body), (320, 180));
    assert!(jpeg.body.len() < webp.body.len() * 3, "{} vs {}", jpeg.body.len(), webp.body.len());

    // The second WebP request is a hit: the origin is not asked again.
    let served = get(&format!("http://{}/photos-served", app.addr())).await.1;
    let again = fetch(&f, &small, Some("image/webp")).await;
    assert!(again.header("cache-status").starts_with("flotilla; hit"), "{}", again.header("cache-status"));
    assert_eq!(again.body, webp.body);
    assert_eq!(get(&format!("http://{}/photos-served", app.addr())).await.1, served);

    // Thumbnails are centre-cropped squares; a PNG original works the same.
    let thumb = fetch(&f, "/_img/thumbnail/photos/18_kde_Patak_illustration_5120x2880.png", Some("image/webp")).await;
    assert_eq!((thumb.status, dims(&thumb.body)), (200, (150, 150)), "{}", thumb.text());
    // Never upscaled: "large" (1440) of a 451-wide photo stays 451 wide.
    let large = fetch(&f, "/_img/large/photos/01_skimage_chelsea_451x300.png", Some("image/webp")).await;
    assert_eq!(dims(&large.body), (451, 300));

    // Eight clients asking for one new variant at once make one transform.
    let medium = format!("/_img/medium/photos/{BIG}");
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let url = f.url(&medium);
        tasks.push(tokio::spawn(async move {
            let req =
                http::Request::builder().uri(url).header("accept", "image/webp").body(Full::new(Bytes::new())).unwrap();
            let resp = client().request(req).await.unwrap();
            let status = resp.status().as_u16();
            (status, resp.into_body().collect().await.unwrap().to_bytes())
        }));
    }
    for t in tasks {
        let (status, body) = t.await.unwrap();
        assert_eq!((status, dims(&body)), (200, (768, 432)));
    }
    let m = get(&f.admin("/metrics")).await.1;
    assert_eq!(metric(&m, "flotilla_image_transforms_total{preset=\"medium\",format=\"webp\"}"), 1, "{m}");
    assert_eq!(metric(&m, "flotilla_image_transforms_total{preset=\"small\",format=\"avif\"}"), 1, "{m}");
    assert!(metric(&m, "flotilla_image_source_bytes_total") > 4_000_000, "{m}");

    // srcset: JSON with every preset's real size, and the HTML snippet.
    let doc = fetch(&f, &format!("/_img/srcset/photos/{BIG}"), None).await;
    assert_eq!(doc.status, 200, "{}", doc.text());
    let json: serde_json::Value = serde_json::from_slice(&doc.body).unwrap();
    assert_eq!(json["width"], 6028);
    let widths: Vec<u64> = json["variants"].as_array().unwrap().iter().map(|v| v["width"].as_u64().unwrap()).collect();
    assert_eq!(widths, vec![150, 320, 768, 1440]);
    let html = fetch(&f, &format!("/_img/srcset/photos/{BIG}?html"), None).await;
    assert_eq!(html.header("content-type"), "text/html; charset=utf-8");
    let snippet = html.text();
    assert!(snippet.contains(&format!("/_img/small/photos/{BIG} 320w")), "{snippet}");
    assert!(snippet.contains("loading=\"lazy\"") && snippet.contains("sizes="), "{snippet}");

    // Invalidating the original's Surrogate-Key drops its variants.
    let (code, _) =
        f.admin_call("POST", "/api/v1/invalidations", "{\"tags\":[\"photo-16_lomiri_Kleiber_6028x3391\"]}").await;
    assert_eq!(code, 202);
    let after = fetch(&f, &small, Some("image/webp")).await;
    assert!(after.header("cache-status").contains("fwd=miss"), "{}", after.header("cache-status"));

    // Unknown presets and non-images are refused with JSON, not a crash.
    let unknown = fetch(&f, &format!("/_img/huge/photos/{BIG}"), None).await;
    assert_eq!((unknown.status, unknown.header("content-type")), (404, "application/json"));
    let not_image = fetch(&f, "/_img/small/photos/CORPUS.md", None).await;
    assert_eq!(not_image.status, 422, "{}", not_image.text());
    assert!(not_image.text().contains("unsupported_format"), "{}", not_image.text());
    let missing = fetch(&f, "/_img/small/photos/nope.jpg", None).await;
    assert_eq!(missing.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_source_signed_sizes_and_bad_files() {
    let corpus = corpus_dir();
    let dir = scratch_dir("images-files-src");
    let originals = dir.join("originals");
    std::fs::create_dir_all(&originals).unwrap();
    let read = |name: &str| std::fs::read(corpus.join(name)).unwrap();
    std::fs::write(originals.join("storm.jpg"), read("08_mate_Storm_1920x1280.jpg")).unwrap();
    std::fs::write(originals.join("big.jpg"), read(BIG)).unwrap();
    // Crafted from corpus photos: cut in half; a PNG header claiming 100000×100000; not an image.
    let storm = read("08_mate_Storm_1920x1280.jpg");
    std::fs::write(originals.join("truncated.jpg"), &storm[..storm.len() / 2]).unwrap();
    let mut bomb = read("01_skimage_chelsea_451x300.png");
    bomb[16..24].copy_from_slice(&[0, 1, 0x86, 0xA0, 0, 1, 0x86, 0xA0]);
    std::fs::write(originals.join("bomb.png"), &bomb).unwrap();
    std::fs::write(originals.join("fake.jpg"), b"<html>not a picture</html>").unwrap();
    std::os::unix::fs::symlink("/etc/hostname", originals.join("escape.jpg")).unwrap();

    let key = "test-signing-key-0123456789";
    let body = format!(
        "[images]\nsource = \"files:originals\"\nmax_source_pixels = 10_000_000\nsigning_key = \"{key}\"\nformats = [\"webp\", \"jpeg\"]\n\n[images.presets]\nsmall = {{ width = 320 }}\nbox = {{ width = 200, height = 200, fit = \"contain\" }}\n"
    );
    let f = Flotilla::start_in(&dir, &body);
    let port = f.port;

    let ok = fetch(&f, "/_img/small/storm.jpg", Some("image/webp")).await;
    assert_eq!((ok.status, dims(&ok.body)), (200, (320, 213)), "{}", ok.text());
    let boxed = fetch(&f, "/_img/box/storm.jpg", None).await;
    assert_eq!((boxed.header("content-type"), dims(&boxed.body)), ("image/jpeg", (200, 133)));

    // Ad-hoc sizes only with the right signature.
    let sig = flotilla_images::url::sign(key.as_bytes(), "w=500,q=70", "/storm.jpg");
    let signed = fetch(&f, &format!("/_img/w=500,q=70/storm.jpg?s={sig}"), Some("image/webp")).await;
    assert_eq!((signed.status, dims(&signed.body)), (200, (500, 333)), "{}", signed.text());
    for bad in [
        "/_img/w=500,q=70/storm.jpg".to_string(),
        format!("/_img/w=501,q=70/storm.jpg?s={sig}"),
        format!("/_img/w=500,q=70/big.jpg?s={sig}"),
    ] {
        let r = fetch(&f, &bad, None).await;
        assert_eq!(r.status, 403, "{bad}: {}", r.text());
    }

    // Bad originals: each a clear 422 with a reason.
    for (path, reason) in [
        ("/_img/small/truncated.jpg", "corrupt"),
        ("/_img/small/bomb.png", "too_large"),
        ("/_img/small/big.jpg", "too_large"),
        ("/_img/small/fake.jpg", "unsupported_format"),
    ] {
        let r = fetch(&f, path, None).await;
        assert_eq!(r.status, 422, "{path}: {}", r.text());
        assert_eq!(r.header("content-type"), "application/json");
        assert!(r.text().contains(&format!("\"error\":\"{reason}\"")), "{path}: {}", r.text());
    }
    // Nothing outside the directory: not through a symlink, not through '..'.
    assert_eq!(fetch(&f, "/_img/small/escape.jpg", None).await.status, 404);
    let traversal = raw(
        format!("127.0.0.1:{port}").parse().unwrap(),
        b"GET /_img/small/../flotilla.toml HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    assert!(traversal.starts_with("HTTP/1.1 400"), "{traversal}");
    assert_eq!(fetch(&f, "/_img/small/missing.jpg", None).await.status, 404);
    assert_eq!(request(&client(), "POST", &f.url("/_img/small/storm.jpg"), &[], "x").await.unwrap().0, 405);

    // Still serving, and the refusals are counted by reason.
    let again = fetch(&f, "/_img/small/storm.jpg", Some("image/webp")).await;
    assert_eq!(again.status, 200);
    let m = get(&f.admin("/metrics")).await.1;
    assert_eq!(metric(&m, "flotilla_image_refusals_total{reason=\"too_large\"}"), 2, "{m}");
    assert_eq!(metric(&m, "flotilla_image_refusals_total{reason=\"corrupt\"}"), 1, "{m}");
    assert_eq!(metric(&m, "flotilla_image_refusals_total{reason=\"bad_signature\"}"), 3, "{m}");
}

/// The image endpoint is no way around the edge's rules: a client's query string is neither a
/// new cache key nor forwarded (only an ad-hoc size's signature is read), srcset documents are
/// cached like variants, an original that will not arrive is given up after
/// `images.source_timeout`, and a route matching image URLs brings its rate limit and headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_urls_are_keyed_forwarded_and_limited_like_routes() {
    let corpus = corpus_dir();
    let locations = format!(
        "location /photos/ {{ alias {c}/; }}\n    location /slow/ {{ alias {c}/; limit_rate 2k; }}",
        c = corpus.display()
    );
    let ngx = common::nginx::Nginx::start("images", &locations);
    let body = format!(
        "[images]\nsource = \"photos\"\nsource_timeout = \"1s\"\n\n\
         [[routes]]\npath = \"/_img/*\"\ntarget_group = \"photos\"\nrate_limit = {{ rate = \"1/min\", burst = 8 }}\nheaders = {{ set = {{ \"x-policy\" = \"on\" }} }}\n\n\
         [target_groups.photos]\ntargets = [\"{}\"]\nhealth_check = {{ enabled = false }}\n",
        ngx.addr()
    );
    let f = Flotilla::start("images-rules", &body);
    let small = "/_img/small/photos/08_mate_Storm_1920x1280.jpg";
    let first = fetch(&f, &format!("{small}?x=1"), None).await;
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(first.header("x-policy"), "on", "the route's headers apply to image URLs");
    let second = fetch(&f, &format!("{small}?x=2&utm=3"), None).await;
    assert!(
        second.header("cache-status").contains("hit"),
        "a query string must not be a new key: {:?}",
        second.headers
    );
    // Nor is the client's Host: variants are keyed under the fixed source authority.
    for host in ["other.example", "site:81", "SITE."] {
        let (status, h, _) = request(&client(), "GET", &f.url(small), &[("host", host)], "").await.unwrap();
        let cs = h.get("cache-status").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
        assert!(status == 200 && cs.contains("hit"), "Host {host} must not be a new variant: {status} {cs}");
    }
    let srcset = "/_img/srcset/photos/08_mate_Storm_1920x1280.jpg";
    let s1 = fetch(&f, srcset, None).await;
    assert_eq!(s1.status, 200, "{}", s1.text());
    let s2 = fetch(&f, srcset, None).await;
    assert!(s2.header("cache-status").contains("hit"), "srcset goes through the cache: {:?}", s2.headers);
    assert_eq!(s1.body, s2.body);
    let log = ngx.access_log();
    assert_eq!(log.lines().count(), 2, "one original fetch per document: {log}");
    assert!(!log.contains('?'), "no client query reaches the origin: {log}");
    // A stalled original is given up, the worker freed.
    let started = std::time::Instant::now();
    let slow = fetch(&f, "/_img/small/slow/09_mate_LadyBird_2560x1600.jpg", None).await;
    assert_eq!(slow.status, 504, "{}", slow.text());
    assert!(slow.text().contains("source_timeout"), "{}", slow.text());
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    // The route's rate limit holds on image URLs (eight allowed, the ninth refused).
    let limited = fetch(&f, small, None).await;
    assert_eq!(limited.status, 429, "{}", limited.text());
}
