//! What a cluster node keeps to itself and refuses to share, against a real `redis-server`: a
//! password written in the Redis URL never shows in an API answer or the log, and two nodes
//! never run under one name.

mod common;

use std::time::{Duration, Instant};

use common::redis::Redis;
use common::*;

/// A cluster node with `redis` as its `cluster.redis` value, logging at `level`.
fn node(name: &str, node: &str, redis: &str, level: &str) -> Flotilla {
    let (port, admin_port) = (free_port(), free_port());
    let dir = scratch_dir(name);
    let text = format!(
        "[edge]\nlisten = [\"127.0.0.1:{port}\"]\n\n[admin]\nlisten = \"127.0.0.1:{admin_port}\"\ntoken = \"test-token\"\n\n\
         [cluster]\nnode = \"{node}\"\nredis = \"{redis}\"\nheartbeat = \"200ms\"\nsecret = \"s3cret\"\n"
    );
    Flotilla::start_logging(&dir, &text, port, admin_port, level)
}

/// `GET /api/v1/cluster` as JSON.
async fn cluster(f: &Flotilla) -> serde_json::Value {
    serde_json::from_str(&get(&f.admin("/api/v1/cluster")).await.1).unwrap_or_default()
}

async fn until(limit: Duration, what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "{what} within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every read the admin API has, with the token (the dashboard's data needs it).
async fn every_answer(f: &Flotilla) -> String {
    let mut all = String::new();
    for path in [
        "/",
        "/health",
        "/metrics",
        "/api/v1/target-groups",
        "/api/v1/certificates",
        "/api/v1/cluster",
        "/api/v1/metrics",
        "/api/v1/alarms",
        "/api/v1/slos",
        "/api/v1/budget",
        "/api/v1/groups",
        "/api/v1/dashboard",
    ] {
        let (status, body) = f.admin_call("GET", path, "").await;
        all.push_str(&format!("{path} {status}\n{body}\n"));
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_in_the_redis_url_never_reaches_the_api_or_the_log() {
    const PASSWORD: &str = "rpw-51d3e9";
    const WRONG: &str = "wrong-pw-77c1";
    let Some(redis) = Redis::start_with("url-secret", &["--requirepass", PASSWORD]) else { return };
    let url_with = |pw: &str| format!("redis://:{pw}@127.0.0.1:{}/0", redis.port);
    // One node with the right password (it joins: the password reached the client), one with
    // a wrong one (Redis refuses it, so the errors are logged and shown).
    let good = node("url-secret-a", "a", &url_with(PASSWORD), "debug");
    let bad = node("url-secret-b", "b", &url_with(WRONG), "debug");
    until(Duration::from_secs(10), "node a sees itself through Redis", async || {
        let v = cluster(&good).await;
        v["redis"]["up"] == true && v["nodes"].as_array().is_some_and(|n| n.len() == 1)
    })
    .await;
    until(Duration::from_secs(10), "node b reports Redis refusing it", async || {
        cluster(&bad).await["redis"]["up"] == false
    })
    .await;
    let v = cluster(&good).await;
    assert_eq!(v["redis"]["url"], format!("redis://127.0.0.1:{}/0", redis.port), "{v}");

    // `flotilla status` prints the cluster section from the API.
    let status =
        std::process::Command::new(BIN).args(["status", "--config", good.config.to_str().unwrap()]).output().unwrap();
    let status = String::from_utf8_lossy(&status.stdout).into_owned() + &String::from_utf8_lossy(&status.stderr);
    assert!(status.contains(&format!("redis://127.0.0.1:{}/0", redis.port)), "{status}");

    // A reload refused for a bad URL says why without echoing it.
    let text = std::fs::read_to_string(&good.config).unwrap();
    std::fs::write(&good.config, text.replace("redis://:", "http://:")).unwrap();
    let (code, reload) = good.admin_call("POST", "/api/v1/reload", "").await;
    assert_eq!(code, 422, "{reload}");
    std::fs::write(&good.config, text).unwrap();

    for (f, pw) in [(&good, PASSWORD), (&bad, WRONG)] {
        let answers = every_answer(f).await + &status + &reload;
        assert!(!answers.contains(pw), "the password reached an answer:\n{answers}");
        let log = f.log();
        assert!(log.contains("joined the cluster"), "{log}");
        assert!(!log.contains(pw), "the password reached the log:\n{log}");
    }
    // The wrong password's failure was logged (so the check above saw the error path).
    assert!(bad.log().contains("AuthenticationFailed"), "{}", bad.log());
}
