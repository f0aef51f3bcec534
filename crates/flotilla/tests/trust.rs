//! The edge's trust boundary, end to end against a real nginx origin: nothing a client sends
//! that is not part of the cache key can change what the origin answers for everyone. After
//! each crafted request, an ordinary visitor's next request gets the right page.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::nginx::{Nginx, ECHO};
use common::tls::*;
use common::*;

/// One request on a fresh connection, answered in full (`Connection: close` is added to what
/// the request's own `Connection` says).
fn send(port: u16, head: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn status(resp: &str) -> u16 {
    resp.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// A cached route in front of nginx's echo, with the default 1-day `default_ttl`.
const CACHED: &str =
    "[cache_behaviors.main]\n\n[[routes]]\npath = \"/*\"\ntarget_group = \"origin\"\ncache = \"main\"\n\n";

fn origin_group(n: &Nginx) -> String {
    format!("[target_groups.origin]\ntargets = [\"{}\"]\nhealth_check = {{ enabled = false }}\n", n.addr())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cannot_nominate_host_and_the_cached_page_survives() {
    let ngx = Nginx::start("hop", &format!("location / {{ {ECHO} }}"));
    let f = Flotilla::start("trust-hop", &(CACHED.to_string() + &origin_group(&ngx)));
    // The attack from the issue: strip Host with a Connection nomination while forcing a refetch.
    let r = send(
        f.port,
        "GET /index.html HTTP/1.1\r\nHost: site\r\nConnection: host, close\r\nCache-Control: no-cache\r\n\r\n",
    );
    assert_eq!(status(&r), 200, "the origin must still see Host: {r}");
    assert!(r.contains("host=site "), "{r}");
    let r = send(f.port, "GET /index.html HTTP/1.1\r\nHost: site\r\nConnection: close\r\n\r\n");
    assert_eq!(status(&r), 200, "an ordinary visitor gets the page: {r}");
    assert!(r.contains("host=site ") && r.contains("hit"), "{r}");
    // Nominating forwarding headers or credentials does not remove them either; a real extension
    // header does go.
    let r = send(
        f.port,
        "GET /nominated HTTP/1.1\r\nHost: site\r\nConnection: close, x-forwarded-for, authorization, x-hop\r\nAuthorization: Bearer t\r\nX-Hop: 1\r\n\r\n",
    );
    assert!(r.contains("xff=127.0.0.1 ") && r.contains("auth=Bearer t"), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unkeyed_inputs_never_reach_the_origin() {
    let ngx = Nginx::start("unkeyed", &format!("location / {{ {ECHO} }}"));
    let body = "[cache_behaviors.main]\n[cache_behaviors.main.key]\nquery = [\"v\"]\n\n[[routes]]\npath = \"/*\"\ntarget_group = \"origin\"\ncache = \"main\"\n\n"
        .to_string()
        + &origin_group(&ngx);
    let f = Flotilla::start("trust-unkeyed", &body);
    // A port in Host is part of the key: the origin's answer for it is not served to others.
    let r = send(f.port, "GET /p HTTP/1.1\r\nHost: site:8080\r\nConnection: close\r\n\r\n");
    assert!(r.contains("host=site:8080 "), "{r}");
    let r = send(f.port, "GET /p HTTP/1.1\r\nHost: site\r\nConnection: close\r\n\r\n");
    assert!(r.contains("host=site ") && r.contains("fwd=miss"), "a port must not share the key: {r}");
    // The default port is the same authority.
    let r = send(f.port, "GET /p HTTP/1.1\r\nHost: SITE:80\r\nConnection: close\r\n\r\n");
    assert!(r.contains("host=site ") && r.contains("hit"), "{r}");
    // Client-sent forwarding headers are replaced, URL-rewriting headers dropped.
    let r = send(
        f.port,
        "GET /q HTTP/1.1\r\nHost: site\r\nConnection: close\r\nForwarded: for=1.2.3.4;host=evil.example;proto=https\r\nX-Forwarded-Host: evil.example\r\nX-Forwarded-Proto: https\r\nX-Forwarded-For: 1.2.3.4\r\nX-Real-IP: 1.2.3.4\r\nX-Original-URL: /admin\r\n\r\n",
    );
    assert!(
        r.contains("xff=127.0.0.1 xfp=http xfh=site fwd=for=127.0.0.1;host=\"site\";proto=http real= orig= "),
        "{r}"
    );
    let r = send(f.port, "GET /q HTTP/1.1\r\nHost: site\r\nConnection: close\r\n\r\n");
    assert!(r.contains("xfh=site ") && !r.contains("evil"), "{r}");
    // Query parameters the key ignores are not forwarded, nor method overrides on a GET.
    let r = send(
        f.port,
        "GET /r?debug=1&v=2&utm=x HTTP/1.1\r\nHost: site\r\nConnection: close\r\nX-HTTP-Method-Override: DELETE\r\n\r\n",
    );
    assert!(r.contains("uri=/r?v=2 ") && r.contains("override= "), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_canonical_path_for_routes_limits_keys_and_the_origin() {
    let ngx = Nginx::start("paths", &format!("location / {{ {ECHO} }}"));
    let body = format!(
        "[cache_behaviors.main]\n\n\
         [[routes]]\npath = \"/login\"\ntarget_group = \"origin\"\nrate_limit = {{ rate = \"1/min\", burst = 1 }}\n\n\
         [[routes]]\npath = \"/static/*\"\ntarget_group = \"origin\"\ncache = \"main\"\n\n\
         [[routes]]\npath = \"/*\"\ntarget_group = \"origin\"\n\n{}",
        origin_group(&ngx)
    );
    let f = Flotilla::start("trust-paths", &body);
    let get = |p: &str| send(f.port, &format!("GET {p} HTTP/1.1\r\nHost: site\r\nConnection: close\r\n\r\n"));
    // An encoded slash is refused; dot segments resolve before routing, so the cached /static/*
    // route never answers for /private.
    assert_eq!(status(&get("/static/..%2fprivate")), 400);
    assert_eq!(status(&get("/static/..%5Cprivate")), 400);
    assert_eq!(status(&get("/static/..;/private")), 400);
    for p in ["/static/../private", "/static/%2e%2e/private", "/static/.%2E/private"] {
        let r = get(p);
        assert!(r.contains("uri=/private ") && !r.to_ascii_lowercase().contains("cache-status"), "{p}: {r}");
    }
    let r = get("/static//a/./b/%7Ex");
    assert!(r.contains("uri=/static/a/b/~x ") && r.contains("cache-status"), "{r}");
    // An exact-path rate limit holds however the path is spelled.
    assert_eq!(status(&get("/login")), 200);
    for p in ["//login", "/LOGIN", "/login/", "/login/.", "/x/../login", "/%6cogin"] {
        assert_eq!(status(&get(p)), 429, "{p} slipped past the /login rate limit");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_names_the_client_for_logs_limits_and_forwarding() {
    let ngx = Nginx::start("pp", &format!("location / {{ {ECHO} }}"));
    let body = format!(
        "[[routes]]\npath = \"/limited\"\ntarget_group = \"origin\"\nrate_limit = {{ rate = \"1/min\", burst = 1 }}\n\n{ROUTE}{}",
        origin_group(&ngx),
        ROUTE = "[[routes]]\npath = \"/*\"\ntarget_group = \"origin\"\n\n"
    );
    let f = Flotilla::start_with_edge("trust-pp", "proxy_protocol = true", &body);
    let v1 = |ip: &str, path: &str| {
        send(
            f.port,
            &format!(
                "PROXY TCP4 {ip} 127.0.0.1 40000 80\r\nGET {path} HTTP/1.1\r\nHost: site\r\nConnection: close\r\n\r\n"
            ),
        )
    };
    let r = v1("203.0.113.7", "/");
    assert!(r.contains("xff=203.0.113.7 "), "{r}");
    // Version 2 (binary), as AWS NLB and HAProxy's send-proxy-v2 write it.
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
    v2.extend_from_slice(&[198, 51, 100, 9, 127, 0, 0, 1, 0x9c, 0x40, 0, 80]);
    v2.extend_from_slice(b"GET / HTTP/1.1\r\nHost: site\r\nConnection: close\r\n\r\n");
    let mut s = TcpStream::connect(("127.0.0.1", f.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&v2).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(out.contains("xff=198.51.100.9 "), "{out}");
    // Without the header the connection is closed unanswered.
    let r = send(f.port, "GET / HTTP/1.1\r\nHost: site\r\nConnection: close\r\n\r\n");
    assert!(r.is_empty(), "{r}");
    // Rate limits key on the client the header names, not the balancer.
    assert_eq!(status(&v1("203.0.113.7", "/limited")), 200);
    assert_eq!(status(&v1("203.0.113.7", "/limited")), 429);
    assert_eq!(status(&v1("203.0.113.8", "/limited")), 200);
    // And the access log records it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(f.log().contains("203.0.113.8"), "{}", f.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_trusted_proxies_are_believed() {
    let ngx = Nginx::start("trusted", &format!("location / {{ {ECHO} }}"));
    let body = format!(
        "[[routes]]\npath = \"/limited\"\ntarget_group = \"origin\"\nrate_limit = {{ rate = \"1/min\", burst = 1 }}\n\n[[routes]]\npath = \"/*\"\ntarget_group = \"origin\"\n\n{}",
        origin_group(&ngx)
    );
    let f = Flotilla::start_with_edge("trust-proxies", "trusted_proxies = [\"127.0.0.0/8\"]", &body);
    let via = |client: &str, path: &str| {
        send(
            f.port,
            &format!("GET {path} HTTP/1.1\r\nHost: site\r\nConnection: close\r\nX-Forwarded-For: 10.9.9.9, {client}\r\nX-Forwarded-Proto: https\r\n\r\n"),
        )
    };
    let r = via("203.0.113.9", "/");
    assert!(r.contains("xff=10.9.9.9, 203.0.113.9, 127.0.0.1 xfp=https "), "{r}");
    assert_eq!(status(&via("203.0.113.9", "/limited")), 200);
    assert_eq!(status(&via("203.0.113.9", "/limited")), 429);
    assert_eq!(status(&via("203.0.113.10", "/limited")), 200, "each forwarded client has its own bucket");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_websocket_upgrades_are_tunnelled() {
    let ngx = Nginx::start("h2c", &format!("location / {{ {ECHO} }}"));
    let f = Flotilla::start(
        "trust-h2c",
        &format!("[[routes]]\npath = \"/*\"\ntarget_group = \"origin\"\n\n{}", origin_group(&ngx)),
    );
    let r = send(
        f.port,
        "GET / HTTP/1.1\r\nHost: site\r\nConnection: Upgrade, HTTP2-Settings, close\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    );
    assert_eq!(status(&r), 200, "{r}");
    assert!(r.contains("upgrade= "), "the h2c upgrade must not reach the target: {r}");
}

/// A child edge behind TLS asks its `redirect_http` parent over plain HTTP: the parent believes
/// the child's X-Forwarded-Proto (it lists the child in `trusted_proxies`), so it answers the
/// page instead of a redirect the child would cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shield_parent_sees_the_scheme_and_host_its_child_keyed() {
    let ngx = Nginx::start("shield", &format!("location / {{ {ECHO} }}"));
    let (pdir, cdir) = (scratch_dir("trust-parent"), scratch_dir("trust-child"));
    let (ppki, cpki) = (make_pki(&pdir, &["site"]), make_pki(&cdir, &["site"]));
    let _ = ppki;
    let (pport, ptls, padmin) = (free_port(), free_port(), free_port());
    let parent_text = format!(
        "[edge]\nlisten = [\"127.0.0.1:{pport}\"]\ntrusted_proxies = [\"127.0.0.1\"]\n[edge.tls]\nlisten = [\"127.0.0.1:{ptls}\"]\ncertificates = [{{ cert = \"cert.pem\", key = \"key.pem\" }}]\nredirect_http = true\n\n[admin]\nlisten = \"127.0.0.1:{padmin}\"\n\n{CACHED}{}",
        origin_group(&ngx)
    );
    let _parent = Flotilla::start_raw("trust-parent", &pdir, &parent_text, pport, padmin);
    let (cport, ctls, cadmin) = (free_port(), free_port(), free_port());
    let child_text = format!(
        "[edge]\nlisten = [\"127.0.0.1:{cport}\"]\n[edge.tls]\nlisten = [\"127.0.0.1:{ctls}\"]\ncertificates = [{{ cert = \"cert.pem\", key = \"key.pem\" }}]\n\n[admin]\nlisten = \"127.0.0.1:{cadmin}\"\n\n[cache]\nparent = \"http://127.0.0.1:{pport}\"\n\n{CACHED}{}",
        origin_group(&ngx)
    );
    let child = Flotilla::start_raw("trust-child", &cdir, &child_text, cport, cadmin);
    wait_for_port(ctls);
    // Wait for the child's health checks to find its parent.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, body) = get(&child.admin("/api/v1/target-groups")).await;
        if body.contains("\"healthy\"") && body.contains("flotilla-shield") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "parent never healthy: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = https_get(&cpki, ctls, "site", "/page", &[]).await;
    assert_eq!(status(&r), 200, "the child must not get (and cache) the parent's redirect: {r}");
    assert!(r.contains("xfp=https ") && r.contains("host=site "), "{r}");
    let again = https_get(&cpki, ctls, "site", "/page", &[]).await;
    assert_eq!(status(&again), 200, "{again}");
}

/// A body nobody forwards, or nobody keys, is refused rather than smuggled: a `Content-Length`
/// copied onto a request sent empty (an upgrade, a background refresh, a shield ask) made the
/// target read the next client's request as its body, and a body on a cached GET reached
/// frameworks that read it while the key did not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_that_would_be_smuggled_or_unkeyed_are_refused() {
    let ngx = Nginx::start("smuggle", &format!("location / {{ {ECHO} }}"));
    let body = format!("[[routes]]\npath = \"/nc/*\"\ntarget_group = \"origin\"\n\n{CACHED}{}", origin_group(&ngx));
    let f = Flotilla::start_with_edge("trust-smuggle", "workers = 1", &body);
    // The reviewer's attack: an "upgrade" announcing a body it does not send...
    let a = send(
        f.port,
        "GET /nc/a HTTP/1.1\r\nHost: site\r\nConnection: Upgrade, close\r\nUpgrade: websocket\r\nContent-Length: 120\r\n\r\n",
    );
    assert_eq!(status(&a), 400, "{a}");
    // ...then a request whose body is the request to smuggle.
    let smuggled = "GET /nc/POISONED HTTP/1.1\r\nHost: evil.example\r\n\r\n";
    let b = send(
        f.port,
        &format!(
            "GET /victim HTTP/1.1\r\nHost: site\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{smuggled}",
            smuggled.len()
        ),
    );
    assert_eq!(status(&b), 400, "a GET body on a cached route: {b}");
    let v = send(f.port, "GET /victim HTTP/1.1\r\nHost: site\r\nConnection: close\r\n\r\n");
    assert!(v.contains("uri=/victim ") && !v.contains("POISONED"), "{v}");
    // Bodies still flow where they are forwarded: a POST, and a GET on an uncached route.
    let p = send(f.port, "POST /nc/p HTTP/1.1\r\nHost: site\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello");
    assert_eq!(status(&p), 200, "{p}");
    let g = send(f.port, "GET /nc/g HTTP/1.1\r\nHost: site\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello");
    assert_eq!(status(&g), 200, "{g}");
    // The pooled connections were not desynchronised: every answer is its own.
    for i in 0..5 {
        let r = send(f.port, &format!("GET /nc/check{i} HTTP/1.1\r\nHost: site\r\nConnection: close\r\n\r\n"));
        assert!(r.contains(&format!("uri=/nc/check{i} ")), "{r}");
    }
}

/// Header names with underscores (read as dashes by CGI-style servers) and a client's shield
/// marker never reach the origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn underscored_headers_and_a_clients_shield_marker_are_dropped() {
    let app = DemoApp::start("underscore");
    let f = Flotilla::start("trust-underscore", &(ROUTE_ALL.to_string() + &group_toml("web", &[&app], "")));
    f.wait_target_state("web", &app.addr(), "healthy", Duration::from_secs(10)).await;
    let r = send(
        f.port,
        "GET /echo HTTP/1.1\r\nHost: site\r\nConnection: close\r\nX_Forwarded_Host: evil.example\r\nX_Original_URL: /admin\r\nX-Flotilla-Shield: 1\r\nX-App: kept\r\n\r\n",
    );
    assert_eq!(status(&r), 200, "{r}");
    let lower = r.to_ascii_lowercase();
    assert!(
        !lower.contains("evil.example") && !lower.contains("/admin") && !lower.contains("x-flotilla-shield"),
        "{r}"
    );
    assert!(lower.contains("x-app"), "{r}");
}

/// Review mends on the cache side: one Accept-Encoding reaches the origin, and an encoded body
/// is keyed on it even when the origin does not say `Vary` (Debian's nginx `gzip on`); a keyed
/// cookie named twice bypasses the cache; only methods that change something invalidate; and a
/// Range on something that is not stored is answered by the origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encodings_duplicate_cookies_odd_methods_and_ranges_on_passes() {
    let ngx = Nginx::start(
        "review-cache",
        &format!(
            "location /gz/ {{ gzip on; gzip_types text/plain; gzip_min_length 1; gzip_vary off; {ECHO} }}\n    location /files/ {{ }}\n    location / {{ return 200 \"uri=$request_uri lang=$cookie_lang\\n\"; }}"
        ),
    );
    std::fs::create_dir_all(ngx.root.join("files")).unwrap();
    let big: String = (0..5000).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
    std::fs::write(ngx.root.join("files/big.txt"), &big).unwrap();
    let body = format!(
        "[cache]\nmax_object = \"1KiB\"\n\n[cache_behaviors.main]\n[cache_behaviors.main.key]\ncookies = [\"lang\"]\n\n[[routes]]\npath = \"/*\"\ntarget_group = \"origin\"\ncache = \"main\"\n\n{}",
        origin_group(&ngx)
    );
    let f = Flotilla::start("trust-review-cache", &body);
    let get = |head: &str| send(f.port, &format!("GET {head}\r\nConnection: close\r\n\r\n"));
    // An encoded body without Vary is not served to a client that did not ask for it.
    let gz = get("/gz/a HTTP/1.1\r\nHost: site\r\nAccept-Encoding: gzip");
    assert!(gz.to_ascii_lowercase().contains("content-encoding: gzip"), "{gz}");
    let plain = get("/gz/a HTTP/1.1\r\nHost: site");
    assert!(!plain.to_ascii_lowercase().contains("content-encoding"), "{plain}");
    assert!(plain.contains("uri=/gz/a "), "{plain}");
    // Two spellings of "no gzip" reach the origin as one.
    let odd = get("/gz/b HTTP/1.1\r\nHost: site\r\nAccept-Encoding: gzip, gzip;q=0");
    assert!(!odd.to_ascii_lowercase().contains("content-encoding"), "{odd}");
    let after = get("/gz/b HTTP/1.1\r\nHost: site");
    assert!(!after.to_ascii_lowercase().contains("content-encoding"), "{after}");
    // A keyed cookie named twice is no one's shared answer.
    let dup = get("/c HTTP/1.1\r\nHost: site\r\nCookie: lang=en; lang=evil");
    assert!(dup.contains("fwd=bypass"), "{dup}");
    let en = get("/c HTTP/1.1\r\nHost: site\r\nCookie: lang=en");
    assert!(en.contains("fwd=miss"), "the duplicate's answer must not have been stored: {en}");
    // An unknown method does not evict.
    let _ = get("/hot HTTP/1.1\r\nHost: site");
    let foo = send(f.port, "FOO /hot HTTP/1.1\r\nHost: site\r\nConnection: close\r\n\r\n");
    assert_eq!(status(&foo), 200, "{foo}");
    let hot = get("/hot HTTP/1.1\r\nHost: site");
    assert!(hot.contains("hit"), "FOO evicted /hot: {hot}");
    // A Range on an object too large to store is the origin's to answer.
    let first = get("/files/big.txt HTTP/1.1\r\nHost: site");
    assert!(first.contains("too-large"), "{first}");
    let ranged = get("/files/big.txt HTTP/1.1\r\nHost: site\r\nRange: bytes=0-9");
    assert_eq!(status(&ranged), 206, "{ranged}");
    assert!(ranged.ends_with("abcdefghij"), "{ranged}");
}
