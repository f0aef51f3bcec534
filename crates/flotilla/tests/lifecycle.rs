//! The process lifecycle: `validate`, reload by SIGHUP and by API (bad configs refused, old one
//! keeps serving), SIGTERM drains in-flight requests and exits 0.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

#[test]
fn validate_reports_every_error_with_file_line_col() {
    let dir = scratch_dir("validate");
    let path = dir.join("bad.toml");
    std::fs::write(
        &path,
        "[edge]\nlisten = [\"127.0.0.1:8080\"]\n[[routes]]\ntarget_group = \"nope\"\n[target_groups.web]\nalgorithm = \"fastest\"\n",
    )
    .unwrap();
    let out = Command::new(BIN).args(["validate", "--config", path.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let p = path.display();
    assert!(stderr.contains(&format!("{p}:6:13: target_groups.web.algorithm: unknown algorithm")), "{stderr}");
    assert!(stderr.contains(&format!("{p}:4:16: routes.target_group \"nope\" is not defined")), "{stderr}");

    std::fs::write(&path, "[edge]\nlisten = [\"127.0.0.1:8080\"]\nlisen = 1\n").unwrap();
    let out = Command::new(BIN).args(["validate", "--config", path.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("{p}:3:1: unknown field `lisen`")), "{stderr}");

    // `up` refuses the same file the same way.
    let out = Command::new(BIN).args(["up", "--config", path.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("{p}:3:1:")));
}

#[test]
fn every_example_config_validates() {
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut n = 0;
    let scaling = std::fs::read_dir(examples.join("scaling")).unwrap();
    let cluster = std::fs::read_dir(examples.join("cluster")).unwrap();
    for entry in std::fs::read_dir(&examples).unwrap().chain(scaling).chain(cluster) {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let out = Command::new(BIN).args(["validate", "--config", path.to_str().unwrap()]).output().unwrap();
            assert!(out.status.success(), "{}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
            n += 1;
        }
    }
    assert!(n > 0, "no example configs found in {}", examples.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_good_configs_and_refuses_bad_ones() {
    let a = DemoApp::start("a");
    let b = DemoApp::start("b");
    let body = |routes: &str| format!("{routes}{}{}", group_toml("web", &[&a], ""), group_toml("api", &[&b], ""));
    let f = Flotilla::start("reload", &body(ROUTE_ALL));
    f.wait_target_state("web", &a.addr(), "healthy", Duration::from_secs(10)).await;
    assert_eq!(get(&f.url("/whoami")).await.1, "a");

    // A new first-match route for exactly /whoami, applied by SIGHUP.
    let header = std::fs::read_to_string(&f.config).unwrap();
    let header = &header[..header.find("[[routes]]").unwrap()];
    let api_first = "[[routes]]\npath = \"/whoami\"\ntarget_group = \"api\"\n\n".to_string() + ROUTE_ALL;
    std::fs::write(&f.config, format!("{header}{}", body(&api_first))).unwrap();
    f.proc.signal("HUP");
    f.wait_target_state("api", &b.addr(), "healthy", Duration::from_secs(10)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while get(&f.url("/whoami")).await.1 != "b" {
        assert!(std::time::Instant::now() < deadline, "reload never took effect\n{}", f.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(get(&f.url("/echo")).await.1.contains("\"id\":\"a\""));

    // A broken file is refused by the API with its errors, and the old config keeps serving.
    std::fs::write(&f.config, format!("{header}[[routes]]\ntarget_group = \"gone\"\n")).unwrap();
    let c = client();
    let (status, _, err) =
        request(&c, "POST", &f.admin("/api/v1/reload"), &[("authorization", "Bearer test-token")], "").await.unwrap();
    assert_eq!(status, 422, "{err}");
    assert!(err.contains("flotilla.toml:") && err.contains("\\\"gone\\\" is not defined"), "{err}");
    f.proc.signal("HUP");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(get(&f.url("/whoami")).await.1, "b");
    assert!(f.log().contains("reload refused"), "{}", f.log());
}

/// The header-count limit and the head-read timeout live in hyper's server settings, taken once
/// per connection: a reload must replace them for new connections, not only the routes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_new_server_limits_to_new_connections() {
    let a = DemoApp::start("a");
    let f = Flotilla::start("reload-limits", &(ROUTE_ALL.to_string() + &group_toml("web", &[&a], "")));
    f.wait_target_state("web", &a.addr(), "healthy", Duration::from_secs(10)).await;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], f.port));
    let extra: String = (0..40).map(|i| format!("X-H{i}: {i}\r\n")).collect();
    let many = format!("GET /whoami HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra}\r\n");
    let status = |resp: String| resp.get(9..12).unwrap_or("").to_string();
    assert_eq!(status(raw(addr, many.as_bytes())), "200", "42 headers are under the default limit of 100");

    let cfg = std::fs::read_to_string(&f.config).unwrap();
    let fewer = cfg.replacen("[edge]\n", "[edge]\nlimits = { max_headers = 20 }\n", 1);
    assert_ne!(cfg, fewer);
    std::fs::write(&f.config, fewer).unwrap();
    f.proc.signal("HUP");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let s = status(raw(addr, many.as_bytes()));
        if s == "431" {
            break;
        }
        assert_eq!(s, "200", "the old limit until the reload lands, then 431\n{}", f.log());
        assert!(std::time::Instant::now() < deadline, "the new header limit never took effect\n{}", f.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Requests within the new limit are still served.
    assert_eq!(get(&f.url("/whoami")).await, (200, "a".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_and_exits_zero() {
    let a = DemoApp::start("a");
    let mut f = Flotilla::start("sigterm", &(ROUTE_ALL.to_string() + &group_toml("web", &[&a], "")));
    f.wait_target_state("web", &a.addr(), "healthy", Duration::from_secs(10)).await;
    let url = f.url("/slow?ms=1000");
    let slow = tokio::spawn(async move { request(&client(), "GET", &url, &[], "").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    f.proc.signal("TERM");
    let (status, _, body) = slow.await.unwrap().unwrap();
    assert_eq!((status, body.trim()), (200, "a slept 1000 ms"));
    let code = tokio::task::spawn_blocking(move || {
        let code = f.proc.wait_exit(Duration::from_secs(10));
        (code, f)
    })
    .await
    .unwrap();
    assert_eq!(code.0, Some(0), "{}", code.1.log());
    // Once stopped, nothing listens any more.
    assert!(std::net::TcpStream::connect(("127.0.0.1", code.1.port)).is_err());
}
