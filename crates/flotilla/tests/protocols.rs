//! Protocols end to end: WebSocket, TLS with SNI and the HTTP→HTTPS redirect, HTTP/2, and
//! malformed HTTP/1.1 that must be refused without harming the next client.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::tls::*;
use common::*;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio_tungstenite::tungstenite::Message;

async fn started(name: &str, apps: &[&DemoApp], extra_top: &str) -> Flotilla {
    let f = Flotilla::start(name, &(extra_top.to_string() + ROUTE_ALL + &group_toml("web", apps, "")));
    for a in apps {
        f.wait_target_state("web", &a.addr(), "healthy", Duration::from_secs(10)).await;
    }
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_through_the_edge() {
    let app = DemoApp::start("ws");
    let f = started("ws", &[&app], "").await;
    let (mut ws, resp) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{}/ws", f.port)).await.unwrap();
    assert_eq!(resp.status(), 101);
    for i in 0..5 {
        ws.send(Message::Text(format!("hello {i}").into())).await.unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(5), ws.next()).await.unwrap().unwrap().unwrap();
        assert_eq!(reply, Message::Text(format!("hello {i}").into()));
    }
    ws.send(Message::Binary(vec![0u8, 1, 2, 255].into())).await.unwrap();
    let reply = ws.next().await.unwrap().unwrap();
    assert_eq!(reply, Message::Binary(vec![0u8, 1, 2, 255].into()));
    ws.close(None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_prior_knowledge_and_forwarded_headers() {
    let app = DemoApp::start("h2");
    let f = started("h2", &[&app], "").await;
    let c: hyper_util::client::legacy::Client<_, Empty<Bytes>> =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new()).http2_only(true).build_http();
    for _ in 0..3 {
        let resp = c.get(f.url("/echo?x=1").parse().unwrap()).await.unwrap();
        assert_eq!(resp.version(), http::Version::HTTP_2);
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["uri"], "/echo?x=1");
        let headers: Vec<(String, String)> = serde_json::from_value(v["headers"].clone()).unwrap();
        let get = |k: &str| headers.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        assert_eq!(get("host"), Some(format!("127.0.0.1:{}", f.port)), "{headers:?}");
        assert_eq!(get("x-forwarded-for").as_deref(), Some("127.0.0.1"));
        assert_eq!(get("x-forwarded-proto").as_deref(), Some("http"));
        assert!(get("x-request-id").is_some_and(|id| id.len() == 32));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_sni_h2_over_alpn_and_http_redirect() {
    let app = DemoApp::start("tls");
    let tls_port = free_port();
    let dir = scratch_dir("tls-pki");
    let pki = make_pki(&dir, &["localhost", "app.test"]);
    let tls = format!(
        "[edge.tls]\nlisten = [\"127.0.0.1:{tls_port}\"]\ncertificates = [{{ cert = \"{0}/cert.pem\", key = \"{0}/key.pem\" }}]\nmin_version = \"1.2\"\nredirect_http = true\n\n",
        dir.display()
    );
    // [edge.tls] must follow [edge]'s keys: splice it in after the generated header.
    let port = free_port();
    let admin_port = free_port();
    let text = format!(
        "[edge]\nlisten = [\"127.0.0.1:{port}\"]\n\n{tls}[admin]\nlisten = \"127.0.0.1:{admin_port}\"\n\n{ROUTE_ALL}{}",
        group_toml("web", &[&app], "")
    );
    let f = Flotilla::start_raw("tls", &dir, &text, port, admin_port);
    wait_for_port(tls_port);
    f.wait_target_state("web", &app.addr(), "healthy", Duration::from_secs(10)).await;

    // Plain HTTP answers 301 to the HTTPS listener, keeping path and query.
    let raw_resp = raw(
        SocketAddr::from(([127, 0, 0, 1], port)),
        b"GET /whoami?a=1 HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
    );
    assert!(raw_resp.starts_with("HTTP/1.1 301"), "{raw_resp}");
    assert!(raw_resp.contains(&format!("location: https://app.test:{tls_port}/whoami?a=1")), "{raw_resp}");

    for (alpn, version) in [(&b"http/1.1"[..], http::Version::HTTP_11), (&b"h2"[..], http::Version::HTTP_2)] {
        for sni in ["localhost", "app.test"] {
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", tls_port)).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
            let stream = tls_connector(&pki, &[alpn]).connect(name, tcp).await.unwrap();
            assert_eq!(stream.get_ref().1.alpn_protocol(), Some(alpn));
            let req = http::Request::get("/echo").header("host", sni).body(Empty::<Bytes>::new()).unwrap();
            let resp = if version == http::Version::HTTP_2 {
                let (mut send, conn) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.unwrap();
                tokio::spawn(conn);
                let mut req = req;
                *req.uri_mut() = format!("https://{sni}/echo").parse().unwrap();
                send.send_request(req).await.unwrap()
            } else {
                let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
                tokio::spawn(conn);
                send.send_request(req).await.unwrap()
            };
            assert_eq!(resp.status(), 200);
            assert_eq!(resp.version(), version);
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            let text = String::from_utf8_lossy(&body);
            assert!(text.contains("[\"x-forwarded-proto\",\"https\"]"), "{text}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_4xx_and_the_next_client_is_served() {
    let app = DemoApp::start("m");
    let f = started("malformed", &[&app], "").await;
    let addr = SocketAddr::from(([127, 0, 0, 1], f.port));
    let cases: &[(&str, &[u8], &[&str])] = &[
        (
            "conflicting Content-Length",
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
            &["400"],
        ),
        (
            "non-chunked Transfer-Encoding",
            b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
            &["400", "501"],
        ),
        ("missing Host in HTTP/1.1", b"GET /echo HTTP/1.1\r\n\r\n", &["400"]),
        ("HTTP/0.9", b"GET /echo\r\n\r\n", &["400"]),
        ("bare LF in headers", b"GET /echo HTTP/1.1\nHost: x\nX-A: 1\n\n", &["200", "400"]),
        ("NUL in header value", b"GET /echo HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n", &["400"]),
        ("obs-fold", b"GET /echo HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n", &["400"]),
        (
            "invalid chunk size",
            b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
            &["400"],
        ),
    ];
    let big = format!("GET /echo HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(70 * 1024));
    let mut all: Vec<(&str, Vec<u8>, &[&str])> = cases.iter().map(|(n, d, s)| (*n, d.to_vec(), *s)).collect();
    all.push(("oversized headers", big.into_bytes(), &["431", "400"]));
    for (name, data, statuses) in all {
        let resp = raw(addr, &data);
        let status = resp.get(9..12).unwrap_or("");
        let head = &resp[..resp.len().min(300)];
        assert!(statuses.contains(&status), "{name}: expected one of {statuses:?}, got {head:?}");
        // The next request on a fresh connection is served normally.
        let (s, body) = get(&f.url("/whoami")).await;
        assert_eq!((s, body.as_str()), (200, "m"), "after {name}");
    }
    let (s, _) = get(&format!("http://127.0.0.1:{}/health", f.admin_port)).await;
    assert_eq!(s, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_idle_connections_are_closed_after_header_read() {
    use std::io::Read;
    let app = DemoApp::start("idle");
    let body = ROUTE_ALL.to_string() + &group_toml("web", &[&app], "");
    let f = Flotilla::start_with_edge("idle", "timeouts = { header_read = \"1s\" }", &body);
    let port = f.port;
    // A client that connects and never sends a byte is dropped, not held forever.
    let mut silent = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    silent.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 64];
    let n = silent.read(&mut buf).unwrap_or(usize::MAX);
    assert_eq!(n, 0, "expected the edge to close the silent connection");
    assert!(started.elapsed() < Duration::from_secs(9));
    // A slowloris head (one byte now and then) is cut off too.
    let mut slow = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    use std::io::Write;
    let mut closed = false;
    for b in b"GET /whoami HTTP/1.1\r\nHost: x\r\n".iter().cycle().take(40) {
        if slow.write_all(&[*b]).is_err() {
            closed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
        let mut probe = [0u8; 256];
        slow.set_nonblocking(true).unwrap();
        let r = slow.read(&mut probe);
        slow.set_nonblocking(false).unwrap();
        if r.is_ok() {
            closed = true;
            break;
        }
    }
    assert!(closed, "a slowloris head must not be held open for 12 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_websocket_tunnels_are_closed() {
    let app = DemoApp::start("wsidle");
    let body = ROUTE_ALL.to_string() + &group_toml("web", &[&app], "");
    let f = Flotilla::start_with_edge("wsidle", "timeouts = { idle = \"500ms\" }", &body);
    let port = f.port;
    f.wait_target_state("web", &app.addr(), "healthy", Duration::from_secs(10)).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{port}/ws")).await.unwrap();
    ws.send(Message::Text("still here".into())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::Text("still here".into()));
    // Silence longer than the idle timeout: the edge closes the tunnel.
    let end = tokio::time::timeout(Duration::from_secs(10), ws.next()).await.expect("tunnel was not closed");
    assert!(!matches!(end, Some(Ok(Message::Text(_)))), "{end:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_among_several_certificates() {
    let app = DemoApp::start("sni");
    let tls_port = free_port();
    let dir = scratch_dir("sni");
    let a = make_pki_named(&dir, &["a.test"], "a.pem", "a.key");
    let b = make_pki_named(&dir, &["*.b.test"], "b.pem", "b.key");
    let port = free_port();
    let admin_port = free_port();
    let text = format!(
        "[edge]\nlisten = [\"127.0.0.1:{port}\"]\n[edge.tls]\nlisten = [\"127.0.0.1:{tls_port}\"]\ncertificates = [{{ cert = \"a.pem\", key = \"a.key\" }}, {{ cert = \"b.pem\", key = \"b.key\" }}]\n[admin]\nlisten = \"127.0.0.1:{admin_port}\"\n{ROUTE_ALL}{}",
        group_toml("web", &[&app], "")
    );
    let _f = Flotilla::start_raw("sni", &dir, &text, port, admin_port);
    wait_for_port(tls_port);
    // Each name verifies only against its own CA, so a handshake that succeeds proves the pick.
    for (sni, pki, ok) in
        [("a.test", &a, true), ("www.b.test", &b, true), ("www.b.test", &a, false), ("other.test", &a, false)]
    {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", tls_port)).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
        let result = tls_connector(pki, &[b"http/1.1"]).connect(name, tcp).await;
        assert_eq!(result.is_ok(), ok, "SNI {sni}: {:?}", result.err());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_swaps_certificates_without_dropping_in_flight_requests() {
    let app = DemoApp::start("reload-tls");
    let tls_port = free_port();
    let dir = scratch_dir("reload-tls");
    let first = make_pki_named(&dir, &["localhost"], "cert.pem", "key.pem");
    let port = free_port();
    let admin_port = free_port();
    let text = format!(
        "[edge]\nlisten = [\"127.0.0.1:{port}\"]\n[edge.tls]\nlisten = [\"127.0.0.1:{tls_port}\"]\ncertificates = [{{ cert = \"cert.pem\", key = \"key.pem\" }}]\n[admin]\nlisten = \"127.0.0.1:{admin_port}\"\n{ROUTE_ALL}{}",
        group_toml("web", &[&app], "")
    );
    let f = Flotilla::start_raw("reload-tls", &dir, &text, port, admin_port);
    wait_for_port(tls_port);
    f.wait_target_state("web", &app.addr(), "healthy", Duration::from_secs(10)).await;
    let handshake = |pki: &Pki| {
        let connector = tls_connector(pki, &[b"http/1.1"]);
        async move {
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", tls_port)).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from("localhost".to_string()).unwrap();
            connector.connect(name, tcp).await.is_ok()
        }
    };
    assert!(handshake(&first).await);
    // A slow request is in flight while the config (and certificate) is reloaded.
    let url = f.url("/slow?ms=1500");
    let slow = tokio::spawn(async move { request(&client(), "GET", &url, &[], "").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = make_pki_named(&dir, &["localhost"], "cert.pem", "key.pem");
    f.proc.signal("HUP");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !handshake(&second).await {
        assert!(std::time::Instant::now() < deadline, "the new certificate was never served\n{}", f.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!handshake(&first).await, "the old certificate is gone");
    let (status, _, body) = slow.await.unwrap().unwrap();
    assert_eq!((status, body.trim()), (200, "reload-tls slept 1500 ms"), "the in-flight request survived the reload");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_headers_and_rate_limits() {
    let app = DemoApp::start("policies");
    let routes = "[[routes]]\npath = \"/whoami\"\ntarget_group = \"web\"\nrate_limit = { rate = \"1/min\", burst = 3 }\nheaders = { csp = \"default-src 'self'\", frame_options = \"DENY\", content_type_options = true, referrer_policy = \"no-referrer\", hsts = \"max-age=31536000\", set = { \"x-served-by\" = \"flotilla\" } }\n\n[[routes]]\npath = \"/health\"\ntarget_group = \"web\"\nrate_limit = { rate = 1, burst = 1, key = \"header:x-api-key\" }\n\n";
    let f = Flotilla::start("policies", &(routes.to_string() + &group_toml("web", &[&app], "")));
    f.wait_target_state("web", &app.addr(), "healthy", Duration::from_secs(10)).await;
    let c = client();
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let (s, h, _) = request(&c, "GET", &f.url("/whoami"), &[], "").await.unwrap();
        // Every answer on the route carries the policy, the 429s too; HSTS only over TLS.
        assert_eq!(h["content-security-policy"], "default-src 'self'");
        assert_eq!(h["x-frame-options"], "DENY");
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["referrer-policy"], "no-referrer");
        assert_eq!(h["x-served-by"], "flotilla");
        assert!(!h.contains_key("strict-transport-security"));
        if s == 429 {
            let retry: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
            assert!((1..=60).contains(&retry), "{retry}");
        }
        statuses.push(s);
    }
    assert_eq!(statuses, vec![200, 200, 200, 429, 429]);
    // Keyed by a header: each API key has its own bucket of one.
    let with_key = |k: &'static str| {
        let c = c.clone();
        let url = f.url("/health");
        async move { request(&c, "GET", &url, &[("x-api-key", k)], "").await.unwrap().0 }
    };
    assert_eq!(with_key("a").await, 200);
    assert_eq!(with_key("a").await, 429);
    assert_eq!(with_key("b").await, 200);
    let m = get(&f.admin("/metrics")).await.1;
    assert!(m.contains("flotilla_rate_limited_total{route=\"/whoami\"} 2"), "{m}");
    assert!(m.contains("flotilla_rate_limited_total{route=\"/health\"} 1"), "{m}");
}

/// An HTTP/2 connection with no stream for `edge.timeouts.idle` is closed (GOAWAY), as an idle
/// HTTP/1.1 keep-alive connection is; one in use is not, however long it lives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http2_connection_is_closed_after_the_idle_timeout() {
    let app = DemoApp::start("h2-idle");
    let f = started("h2-idle", &[&app], "[edge.timeouts]\nidle = \"1s\"\n\n").await;
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", f.port)).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await.unwrap();
    let mut closed = tokio::spawn(conn);
    // Busy for twice the idle limit: requests 300 ms apart on the one connection all succeed.
    for _ in 0..7 {
        let req =
            http::Request::get(format!("http://127.0.0.1:{}/whoami", f.port)).body(Empty::<Bytes>::new()).unwrap();
        let resp = send.send_request(req).await.expect("the busy connection was cut");
        assert_eq!(resp.status(), 200);
        resp.into_body().collect().await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!closed.is_finished(), "a connection in use was closed");
    }
    // Then idle: the edge says GOAWAY and the connection ends (hyper's client future returns).
    let ended = tokio::time::timeout(Duration::from_secs(10), &mut closed).await;
    assert!(ended.is_ok(), "an idle HTTP/2 connection stayed open past edge.timeouts.idle");
}
