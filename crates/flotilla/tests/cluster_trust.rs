//! What a cluster node keeps to itself and refuses to share, against a real `redis-server`: a
//! password written in the Redis URL never shows in an API answer or the log, and two nodes
//! never run under one name.

mod common;

use std::time::{Duration, Instant};

use common::redis::Redis;
use common::*;

/// A cluster-scoped alarm: its node takes part in the `watch:notifications` lease.
const CLUSTER_ALARM: &str =
    "[[alarms]]\nname = \"c\"\nmetric = \"http_requests_5xx_rate\"\nthreshold = 1\nscope = \"cluster\"\n";

/// A cluster node's config (fresh ports) with `redis` as its `cluster.redis` value.
fn node_config(node: &str, redis: &str, body: &str) -> (String, u16, u16) {
    let (port, admin_port) = (free_port(), free_port());
    let text = format!(
        "[edge]\nlisten = [\"127.0.0.1:{port}\"]\n\n[admin]\nlisten = \"127.0.0.1:{admin_port}\"\ntoken = \"test-token\"\n\n\
         [cluster]\nnode = \"{node}\"\nredis = \"{redis}\"\nheartbeat = \"200ms\"\nlease = \"2s\"\nsecret = \"s3cret\"\n\n{body}"
    );
    (text, port, admin_port)
}

/// A running cluster node, logging at `level`.
fn node_with(name: &str, node: &str, redis: &str, level: &str, body: &str) -> Flotilla {
    let (text, port, admin_port) = node_config(node, redis, body);
    Flotilla::start_logging(&scratch_dir(name), &text, port, admin_port, level)
}

fn node(name: &str, node: &str, redis: &str, level: &str) -> Flotilla {
    node_with(name, node, redis, level, "")
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

/// `flotilla up` that is expected to refuse to start: (exit code, everything it printed).
fn up_refused(name: &str, text: &str) -> (Option<i32>, String) {
    let dir = scratch_dir(name);
    let config = dir.join("flotilla.toml");
    std::fs::write(&config, text).unwrap();
    let mut child = Proc {
        child: std::process::Command::new(BIN)
            .args(["up", "--config", config.to_str().unwrap()])
            .stdout(std::fs::File::create(dir.join("out")).unwrap())
            .stderr(std::fs::File::create(dir.join("err")).unwrap())
            .spawn()
            .unwrap(),
    };
    let code = child.wait_exit(Duration::from_secs(20));
    let out = std::fs::read_to_string(dir.join("out")).unwrap() + &std::fs::read_to_string(dir.join("err")).unwrap();
    (code, out)
}

/// The run id in a node's heartbeat key, and the holder of the notifications lease.
fn holders(redis: &Redis, node: &str) -> (String, String) {
    let info: serde_json::Value =
        serde_json::from_str(&redis.cli(&["GET", &format!("flotilla:node:{node}")])).unwrap_or_default();
    let lease = redis.cli(&["GET", "flotilla:lease:watch:notifications"]);
    (info["run"].as_str().unwrap_or("").to_string(), lease)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_node_under_a_live_nodes_name_is_refused_and_a_crashed_ones_is_not() {
    let Some(redis) = Redis::start("same-name") else { return };
    let mut a = node_with("same-name-a", "a", &redis.url(), "info", CLUSTER_ALARM);
    until(Duration::from_secs(10), "node a leads the notifications lease", async || {
        let (run, lease) = holders(&redis, "a");
        !run.is_empty() && lease.starts_with(&format!("a/{run} "))
    })
    .await;
    let (run_a, lease_a) = holders(&redis, "a");

    // A second process named "a" refuses to start, saying why; the first keeps its name and lease.
    let (text, _, _) = node_config("a", &redis.url(), CLUSTER_ALARM);
    let (code, out) = up_refused("same-name-a2", &text);
    assert_ne!(code, Some(0), "{out}");
    assert!(out.contains("cluster.node \"a\" is already used by a live node"), "{out}");
    assert!(out.contains(&format!("127.0.0.1:{}", a.admin_port)), "the error names the live node: {out}");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (run, lease) = holders(&redis, "a");
    assert_eq!(run, run_a);
    assert!(lease.starts_with(&format!("a/{run_a} ")), "{lease} (was {lease_a})");
    assert_eq!(cluster(&a).await["nodes"].as_array().unwrap().len(), 1);

    // A crashed node's name is free once its heartbeat key expires (three heartbeats): the
    // restarted node waits that long, not for ever.
    a.proc.kill9();
    let started = Instant::now();
    let b = node_with("same-name-a3", "a", &redis.url(), "info", CLUSTER_ALARM);
    let waited = started.elapsed();
    assert!(b.log().contains("another run holds this node's name"), "{}", b.log());
    until(Duration::from_secs(10), "the restarted node holds the name", async || holders(&redis, "a").0 != run_a).await;
    eprintln!("restart under the crashed node's name took {waited:?} (heartbeat 200ms)");
}

/// Two processes named "a" that could not see each other at start (Redis did not answer when
/// the second started): once Redis answers exactly one holds the name and the lease; the other
/// says so loudly, shows it in the API and its metrics, and leads nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_finds_its_name_taken_at_run_time_steps_down() {
    let Some(redis) = Redis::start("same-name-runtime") else { return };
    let first = node_with("same-name-rt-1", "a", &redis.url(), "info", CLUSTER_ALARM);
    until(Duration::from_secs(10), "the first node leads", async || holders(&redis, "a").1.starts_with("a/")).await;
    // A paused Redis (connections accepted, nothing answered) while the second one starts.
    let pid = redis.proc.as_ref().unwrap().pid().to_string();
    let signal = |sig: &str| assert!(std::process::Command::new("kill").args([sig, &pid]).status().unwrap().success());
    signal("-STOP");
    let second = node_with("same-name-rt-2", "a", &redis.url(), "info", CLUSTER_ALARM);
    signal("-CONT");
    assert!(second.log().contains("could not check that no other node runs under this name"), "{}", second.log());

    let conflict = |f: &Flotilla| {
        let url = f.admin("/metrics");
        async move { metric_value(&get(&url).await.1, "flotilla_cluster_name_conflict") == Some(1) }
    };
    let mut loser = None;
    until(Duration::from_secs(15), "one node reports the name conflict", async || {
        let (c1, c2) = (conflict(&first).await, conflict(&second).await);
        assert!(!(c1 && c2), "both nodes think they lost the name");
        loser = if c1 {
            Some(&first)
        } else if c2 {
            Some(&second)
        } else {
            None
        };
        loser.is_some()
    })
    .await;
    let loser = loser.unwrap();
    let winner = if std::ptr::eq(loser, &first) { &second } else { &first };
    assert!(loser.log().contains("another live node runs under this node's name"), "{}", loser.log());
    assert_eq!(cluster(loser).await["name_conflict"], true);
    assert_eq!(cluster(winner).await["name_conflict"], false);
    // The lease goes to the name's holder and stays there; the loser never takes it.
    until(Duration::from_secs(10), "the holder of the name leads", async || {
        let (run, lease) = holders(&redis, "a");
        lease.starts_with(&format!("a/{run} "))
    })
    .await;
    let (run, _) = holders(&redis, "a");
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (now_run, lease) = holders(&redis, "a");
        assert_eq!(now_run, run, "the name changed hands");
        assert!(lease.is_empty() || lease.starts_with(&format!("a/{run} ")), "the loser took the lease: {lease}");
        assert!(conflict(loser).await && !conflict(winner).await);
    }
}
