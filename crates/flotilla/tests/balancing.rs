//! Load balancing end to end: spread, stickiness, active and passive health, draining.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

async fn all_healthy(f: &Flotilla, apps: &[&DemoApp]) {
    for a in apps {
        f.wait_target_state("web", &a.addr(), "healthy", Duration::from_secs(10)).await;
    }
}

async fn whoami_counts(f: &Flotilla, n: usize, headers: &[(&str, &str)]) -> HashMap<String, usize> {
    let c = client();
    let mut counts = HashMap::new();
    for _ in 0..n {
        let (status, _, body) = request(&c, "GET", &f.url("/whoami"), headers, "").await.unwrap();
        assert_eq!(status, 200, "{body}");
        *counts.entry(body).or_default() += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_spread_evenly_across_targets() {
    let apps = [DemoApp::start("a"), DemoApp::start("b"), DemoApp::start("c")];
    let refs: Vec<&DemoApp> = apps.iter().collect();
    let f =
        Flotilla::start("spread", &(ROUTE_ALL.to_string() + &group_toml("web", &refs, "algorithm = \"round_robin\"")));
    all_healthy(&f, &refs).await;
    let counts = whoami_counts(&f, 300, &[]).await;
    assert_eq!(counts.len(), 3, "{counts:?}");
    for (id, n) in &counts {
        assert_eq!(*n, 100, "round robin should be exact: {id} got {n} of 300: {counts:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_outstanding_spreads_and_weights_count() {
    let apps = [DemoApp::start("light"), DemoApp::start("heavy")];
    let toml = format!(
        "{ROUTE_ALL}[target_groups.web]\ntargets = [\"{}\", {{ addr = \"{}\", weight = 3 }}]\n[target_groups.web.health_check]\ninterval = \"200ms\"\ntimeout = \"150ms\"\n",
        apps[0].addr(),
        apps[1].addr()
    );
    let f = Flotilla::start("weights", &toml);
    all_healthy(&f, &apps.iter().collect::<Vec<_>>()).await;
    let counts = whoami_counts(&f, 400, &[]).await;
    let heavy = counts.get("heavy").copied().unwrap_or(0);
    assert!((240..=360).contains(&heavy), "weight 3 of 4 should get ~300 of 400: {counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_cookie_pins_a_client() {
    let apps = [DemoApp::start("a"), DemoApp::start("b")];
    let refs: Vec<&DemoApp> = apps.iter().collect();
    let extra = "stickiness = { enabled = true, cookie = \"flotilla_sticky\", duration = \"1h\" }";
    let f = Flotilla::start("sticky", &(ROUTE_ALL.to_string() + &group_toml("web", &refs, extra)));
    all_healthy(&f, &refs).await;
    let c = client();
    let (_, headers, first) = request(&c, "GET", &f.url("/whoami"), &[], "").await.unwrap();
    let set_cookie = headers["set-cookie"].to_str().unwrap().to_string();
    assert!(set_cookie.starts_with("flotilla_sticky=") && set_cookie.contains("Max-Age=3600"), "{set_cookie}");
    let cookie = set_cookie.split(';').next().unwrap().to_string();
    let counts = whoami_counts(&f, 30, &[("cookie", &cookie)]).await;
    assert_eq!(counts.get(&first), Some(&30), "all requests should stick to {first}: {counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_health_takes_a_target_out_and_recovery_brings_it_back() {
    let apps = [DemoApp::start("a"), DemoApp::start("b")];
    let refs: Vec<&DemoApp> = apps.iter().collect();
    let f = Flotilla::start("health", &(ROUTE_ALL.to_string() + &group_toml("web", &refs, "")));
    all_healthy(&f, &refs).await;
    let b = &apps[1];
    let (s, _) = request(&client(), "POST", &format!("http://{}/toggle-health", b.addr()), &[], "")
        .await
        .map(|r| (r.0, r.2))
        .unwrap();
    assert_eq!(s, 200);
    f.wait_target_state("web", &b.addr(), "unhealthy", Duration::from_secs(10)).await;
    let counts = whoami_counts(&f, 20, &[]).await;
    assert_eq!(counts.get("a"), Some(&20), "unhealthy b must get nothing: {counts:?}");
    request(&client(), "POST", &format!("http://{}/toggle-health", b.addr()), &[], "").await.unwrap();
    f.wait_target_state("web", &b.addr(), "healthy", Duration::from_secs(10)).await;
    let counts = whoami_counts(&f, 40, &[]).await;
    assert!(counts.get("b").copied().unwrap_or(0) > 5, "recovered b should get traffic again: {counts:?}");
    let metrics = get(&f.admin("/metrics")).await.1;
    assert!(metrics.contains("flotilla_targets{target_group=\"web\",state=\"healthy\"} 2"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_costs_no_failed_request() {
    let mut apps = [DemoApp::start("a"), DemoApp::start("b"), DemoApp::start("c")];
    let refs: Vec<&DemoApp> = apps.iter().collect();
    // Slow active checks: recovery from the kill must come from retries and passive ejection.
    let toml = ROUTE_ALL.to_string()
        + &group_toml("web", &refs, "retries = 2")
            .replace("interval = \"200ms\"", "interval = \"1s\"")
            .replace("healthy_threshold = 2", "healthy_threshold = 1");
    let f = Flotilla::start("kill9", &toml);
    all_healthy(&f, &refs).await;
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (stop, ok, url) = (stop.clone(), ok.clone(), f.url("/whoami"));
        workers.push(tokio::spawn(async move {
            let c = client();
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match request(&c, "GET", &url, &[], "").await {
                    Ok((200, _, _)) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok((s, _, b)) => failures.push(format!("{s}: {b}")),
                    Err(e) => failures.push(e),
                }
            }
            failures
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    apps[1].proc.kill9();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for w in workers {
        failures.extend(w.await.unwrap());
    }
    let served = ok.load(Ordering::Relaxed);
    assert!(
        failures.is_empty(),
        "{} of {} requests failed: {:?}",
        failures.len(),
        served,
        &failures[..failures.len().min(5)]
    );
    assert!(served > 100, "load was too light to mean anything: {served}");
    f.wait_target_state("web", &apps[1].addr(), "unhealthy", Duration::from_secs(10)).await;
    let metrics = get(&f.admin("/metrics")).await.1;
    assert!(metrics.contains("flotilla_target_ejections_total{target_group=\"web\"} 1"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deregistered_target_finishes_in_flight_request_while_new_ones_go_elsewhere() {
    let apps = [DemoApp::start("a"), DemoApp::start("b")];
    let refs: Vec<&DemoApp> = apps.iter().collect();
    let extra = "deregistration_delay = \"30s\"\nstickiness = { enabled = true }";
    let f = Flotilla::start("drain", &(ROUTE_ALL.to_string() + &group_toml("web", &refs, extra)));
    all_healthy(&f, &refs).await;
    // Learn which target a sticky cookie pins, then send a slow request there.
    let c = client();
    let (_, headers, pinned) = request(&c, "GET", &f.url("/whoami"), &[], "").await.unwrap();
    let cookie = headers["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_string();
    let pinned_app = apps.iter().find(|a| a.id == pinned).unwrap();
    let slow = {
        let (url, cookie) = (f.url("/slow?ms=1500"), cookie.clone());
        tokio::spawn(async move { request(&client(), "GET", &url, &[("cookie", &cookie)], "").await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, _, _) = request(
        &c,
        "DELETE",
        &f.admin(&format!("/api/v1/target-groups/web/targets/{}", pinned_app.addr())),
        &[("authorization", "Bearer test-token")],
        "",
    )
    .await
    .unwrap();
    assert_eq!(status, 202);
    f.wait_target_state("web", &pinned_app.addr(), "draining", Duration::from_secs(2)).await;
    let counts = whoami_counts(&f, 10, &[("cookie", &cookie)]).await;
    assert_eq!(counts.get(&pinned), None, "draining target must get no new requests: {counts:?}");
    let (status, _, body) = slow.await.unwrap().unwrap();
    assert_eq!((status, body.trim()), (200, format!("{pinned} slept 1500 ms").as_str()));
    // With its last request done, the target leaves long before the 30 s delay.
    f.wait_target_state("web", &pinned_app.addr(), "absent", Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_healthy_target_fails_open_and_says_so() {
    let apps = [DemoApp::start("a")];
    let refs: Vec<&DemoApp> = apps.iter().collect();
    let f = Flotilla::start("failopen", &(ROUTE_ALL.to_string() + &group_toml("web", &refs, "")));
    all_healthy(&f, &refs).await;
    request(&client(), "POST", &format!("http://{}/toggle-health", apps[0].addr()), &[], "").await.unwrap();
    f.wait_target_state("web", &apps[0].addr(), "unhealthy", Duration::from_secs(10)).await;
    let (status, body) = get(&f.url("/whoami")).await;
    assert_eq!((status, body.as_str()), (200, "a"));
    let metrics = get(&f.admin("/metrics")).await.1;
    assert!(metrics.contains("flotilla_fail_open_total{target_group=\"web\"} 1"), "{metrics}");
    assert!(f.log().contains("failing open"), "{}", f.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_idempotent_requests_are_retried() {
    let apps = [DemoApp::start("a"), DemoApp::start("b")];
    let refs: Vec<&DemoApp> = apps.iter().collect();
    let f = Flotilla::start("retries", &(ROUTE_ALL.to_string() + &group_toml("web", &refs, "retries = 2")));
    all_healthy(&f, &refs).await;
    let retries = || async {
        let m = get(&f.admin("/metrics")).await.1;
        m.lines()
            .find(|l| l.starts_with("flotilla_retries_total{target_group=\"web\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let c = client();
    // A GET answered 503 is tried on the other target too (and the last 503 is passed on).
    let (status, _, _) = request(&c, "GET", &f.url("/status/503"), &[], "").await.unwrap();
    assert_eq!(status, 503);
    assert_eq!(retries().await, 1, "the GET should have been retried once (two targets)");
    // A POST is never retried after it reached a target.
    let (status, _, _) = request(&c, "POST", &f.url("/status/503"), &[], "x").await.unwrap();
    assert_eq!(status, 503);
    assert_eq!(retries().await, 1, "a POST must not be retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_targets_get_504_and_large_bodies_413() {
    let app = DemoApp::start("slow");
    let edge = "timeouts = { target_response = \"300ms\" }\nlimits = { max_request_body = \"1KiB\" }";
    let f = Flotilla::start_with_edge("limits", edge, &(ROUTE_ALL.to_string() + &group_toml("web", &[&app], "")));
    f.wait_target_state("web", &app.addr(), "healthy", Duration::from_secs(10)).await;
    let c = client();
    let (status, _, body) = request(&c, "GET", &f.url("/slow?ms=3000"), &[], "").await.unwrap();
    assert_eq!(status, 504, "{body}");
    assert!(body.contains("\"request_id\""), "{body}");
    let (status, _, _) = request(&c, "POST", &f.url("/echo"), &[], &"x".repeat(2048)).await.unwrap();
    assert_eq!(status, 413);
    let (status, _, body) = request(&c, "POST", &f.url("/echo"), &[], &"x".repeat(512)).await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"body_len\":512"), "{body}");
    // One JSON access-log line per request, with the fields operators filter on.
    let log = f.log();
    let line = log.lines().find(|l| l.contains("\"status\":504")).expect("access log line for the 504");
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(v["target"], "flotilla::access");
    assert_eq!(v["method"], "GET");
    assert_eq!(v["path"], "/slow");
    assert_eq!(v["target_group"], "web");
    assert!(v["request_id"].as_str().is_some_and(|s| s.len() == 32));
}
