//! Who may use the admin API, with real HTTP requests to the real binary: with
//! `admin.protect_reads` every read but `/health`, the dashboard page and (if chosen)
//! `/metrics` needs a token, the read-only token reads and never changes anything; and a `Host`
//! the API does not answer to (what a DNS-rebinding page sends) is refused whatever it carries.

mod common;

use std::net::SocketAddr;

use common::*;

/// A Flotilla whose `[admin]` section has `admin_keys` besides its listen address and token.
fn start(name: &str, admin_keys: &str) -> (Flotilla, DemoApp) {
    let app = DemoApp::start(name);
    let (port, admin_port, dir) = (free_port(), free_port(), scratch_dir(name));
    let text = format!(
        "[edge]\nlisten = [\"127.0.0.1:{port}\"]\n\n[admin]\nlisten = \"127.0.0.1:{admin_port}\"\ntoken = \"test-token\"\n{admin_keys}\n\n{ROUTE_ALL}{}",
        group_toml("web", &[&app], "")
    );
    (Flotilla::start_raw(name, &dir, &text, port, admin_port), app)
}

const READS: [&str; 11] = [
    "/api/v1/target-groups",
    "/api/v1/certificates",
    "/api/v1/metrics",
    "/api/v1/metrics/query?name=http_requests_rate",
    "/api/v1/alarms",
    "/api/v1/slos",
    "/api/v1/budget",
    "/api/v1/groups",
    "/api/v1/dashboard",
    "/api/v1/invalidations/1",
    "/api/v1/no-such-endpoint",
];

async fn status(f: &Flotilla, method: &str, path: &str, token: &str, body: &str) -> u16 {
    let auth = format!("Bearer {token}");
    let headers: Vec<(&str, &str)> = if token.is_empty() { vec![] } else { vec![("authorization", &auth)] };
    request(&client(), method, &f.admin(path), &headers, body).await.unwrap().0
}

#[tokio::test]
async fn protected_reads_need_a_token_and_the_read_token_changes_nothing() {
    let (f, _app) = start("admin-reads", "read_token = \"read-token\"\nopen_metrics = true");
    for path in READS {
        assert_eq!(status(&f, "GET", path, "", "").await, 401, "GET {path} without a token");
        assert_eq!(status(&f, "HEAD", path, "", "").await, 401, "HEAD {path} without a token");
        assert_eq!(status(&f, "GET", path, "wrong", "").await, 401, "GET {path} with a wrong token");
        for token in ["read-token", "test-token"] {
            let s = status(&f, "GET", path, token, "").await;
            assert!(s == 200 || s == 404, "GET {path} with {token}: {s}");
        }
    }
    // What stays open: the health check, the dashboard's page (no data), /metrics as chosen.
    for path in ["/health", "/", "/metrics"] {
        assert_eq!(status(&f, "GET", path, "", "").await, 200, "GET {path}");
    }
    // The read token changes nothing; the admin token does.
    for (method, path, body) in [
        ("POST", "/api/v1/invalidations", r#"{"paths": ["/*"]}"#),
        ("POST", "/api/v1/reload", ""),
        ("POST", "/api/v1/deployments", ""),
        ("POST", "/api/v1/target-groups/web/targets", r#"{"addr": "127.0.0.1:9"}"#),
        ("DELETE", "/api/v1/target-groups/web/targets/127.0.0.1:9", ""),
    ] {
        assert_eq!(status(&f, method, path, "read-token", body).await, 401, "{method} {path} with the read token");
    }
    assert_eq!(status(&f, "POST", "/api/v1/invalidations", "test-token", r#"{"paths": ["/*"]}"#).await, 202);
    // The CLI sends the config's token on reads, so `flotilla status` still works.
    let out =
        std::process::Command::new(BIN).args(["status", "--config", f.config.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("target groups"));
}

#[tokio::test]
async fn protected_reads_cover_metrics_unless_chosen_and_open_reads_stay_open() {
    let (f, _app) = start("admin-metrics", "protect_reads = true");
    assert_eq!(status(&f, "GET", "/metrics", "", "").await, 401);
    assert_eq!(status(&f, "GET", "/metrics", "test-token", "").await, 200);
    assert_eq!(status(&f, "GET", "/health", "", "").await, 200);
    // Without protect_reads, reads are open as before (the dashboard's data still checks).
    let (open, _app) = start("admin-open", "");
    assert_eq!(status(&open, "GET", "/api/v1/groups", "", "").await, 200);
    assert_eq!(status(&open, "GET", "/api/v1/dashboard", "", "").await, 401);
    assert_eq!(status(&open, "POST", "/api/v1/reload", "", "").await, 401);
}

/// The first line of a raw HTTP/1.1 exchange's answer.
fn status_line(addr: SocketAddr, head: &str) -> String {
    let answer = raw(addr, format!("{head}\r\nConnection: close\r\n\r\n").as_bytes());
    answer.lines().next().unwrap_or("").to_string()
}

#[tokio::test]
async fn a_host_the_api_does_not_answer_to_is_refused_whatever_it_carries() {
    let (f, _app) = start("admin-hosts", "allowed_hosts = [\"admin.internal\"]");
    let addr: SocketAddr = format!("127.0.0.1:{}", f.admin_port).parse().unwrap();
    let p = f.admin_port;
    for host in
        [format!("127.0.0.1:{p}"), format!("localhost:{p}"), "admin.internal".into(), format!("ADMIN.internal.:{p}")]
    {
        assert!(status_line(addr, &format!("GET /health HTTP/1.1\r\nHost: {host}")).contains(" 200 "), "{host}");
    }
    // What a page on a rebinding domain sends: refused, even the health check, even with the token.
    for head in [
        format!("GET /health HTTP/1.1\r\nHost: rebind.example:{p}"),
        format!("GET /api/v1/groups HTTP/1.1\r\nHost: 127.0.0.1.nip.io:{p}"),
        format!("POST /api/v1/reload HTTP/1.1\r\nHost: rebind.example:{p}\r\nAuthorization: Bearer test-token\r\nContent-Length: 0"),
        format!("GET http://rebind.example:{p}/health HTTP/1.1\r\nHost: 127.0.0.1:{p}"),
    ] {
        let line = status_line(addr, &head);
        assert!(line.contains(" 421 "), "{head:?} -> {line}");
    }
    let answer =
        raw(addr, format!("GET /health HTTP/1.1\r\nHost: rebind.example:{p}\r\nConnection: close\r\n\r\n").as_bytes());
    assert!(
        answer.contains("admin.allowed_hosts") && answer.to_ascii_lowercase().contains("cache-control: no-store"),
        "{answer}"
    );
    // No Host at all (HTTP/1.0) or two of them: refused.
    assert!(status_line(addr, "GET /health HTTP/1.0").contains(" 400 "));
    assert!(status_line(addr, &format!("GET /health HTTP/1.1\r\nHost: 127.0.0.1:{p}\r\nHost: rebind.example"))
        .contains(" 400 "));
}
