//! The fleet's docker driver against a real Docker daemon: containers of a locally built image
//! (the demo app, `FROM scratch`), published on 127.0.0.1 only. Skipped, with a message, where
//! no daemon runs (`.ci/run` installs and starts one).

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::docker::{image, swarm_image, IMAGE};
use common::*;
use serde_json::Value;

/// A docker-driven group named `group` feeding the `web` target group behind `/*`.
fn start(group: &str, keys: &str) -> Flotilla {
    start_driver(group, keys, "docker")
}

/// Like `start`, with another container driver (`swarm`). Each test's Flotilla has a
/// deployment id of its own, the same on every run, so a run sweeps up what a killed run of the
/// same test left.
fn start_driver(group: &str, keys: &str, driver: &str) -> Flotilla {
    let body = format!(
        r#"[fleet]
deployment = "t-{group}"

{ROUTE_ALL}{tg}
[groups.{group}]
target_group = "web"
instance_warmup = "0s"
stop_timeout = "3s"
{keys}
[groups.{group}.launch]
driver = "{driver}"
image = "{IMAGE}"
port = 8080
command = ["demo-app", "--port", "{{port}}", "--bind", "0.0.0.0", "--id", "{{instance}}"]
"#,
        tg = group_toml("web", &[], "deregistration_delay = \"3s\"")
    );
    Flotilla::start(&format!("{driver}-{group}"), &body)
}

/// The Swarm services labelled with `group`.
fn services(group: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args(["service", "ls", "-q", "--filter", &format!("label=flotilla.group={group}")])
        .args(["--filter", &format!("label=flotilla.deployment=t-{group}")])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).split_whitespace().map(String::from).collect()
}

fn docker_out(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().unwrap();
    assert!(out.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Each of `group`'s services with its Swarm version index (bumped by every write to it).
fn service_versions(group: &str) -> std::collections::BTreeMap<String, u64> {
    let ids = services(group);
    if ids.is_empty() {
        return Default::default();
    }
    let out = Command::new("docker")
        .args(["service", "inspect", "--format", "{{.ID}} {{.Version.Index}}"])
        .args(&ids)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(id, v)| (id.to_string(), v.trim().parse().unwrap()))
        .collect()
}

async fn wait_services(group: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while services(group).len() != n {
        assert!(Instant::now() < deadline, "expected {n} Swarm services for {group}, have {:?}", services(group));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn group(f: &Flotilla, name: &str) -> Value {
    serde_json::from_str(&get(&f.admin(&format!("/api/v1/groups/{name}"))).await.1).unwrap()
}

fn count(g: &Value, state: &str) -> usize {
    g["instances"].as_array().unwrap().iter().filter(|i| i["state"] == state).count()
}

async fn wait_group(f: &Flotilla, name: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    // Generous: a loaded 2-core machine running dockerd, Chromium and other tests is slow, and
    // this is a limit for noticing a hang, not a timing assertion.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let g = group(f, name).await;
        if pred(&g) {
            return g;
        }
        if Instant::now() > deadline {
            let act = get(&f.admin(&format!("/api/v1/groups/{name}/activity"))).await.1;
            let log = f.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            panic!("timed out waiting for {what}\n{g:#}\n{act}\nlog tail:\n{}", tail.join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn containers(group: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args(["ps", "-a", "-q", "--filter", &format!("label=flotilla.group={group}")])
        .args(["--filter", &format!("label=flotilla.deployment=t-{group}")])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).split_whitespace().map(String::from).collect()
}

#[tokio::test]
async fn docker_group_serves_scales_and_cleans_up() {
    if image().is_none() {
        return;
    }
    let mut f = start("dserve", "min = 1\ndesired = 2\nmax = 3\nmetrics_interval = \"500ms\"\n");
    let g = wait_group(&f, "dserve", "2 containers in service", |g| count(g, "in_service") == 2).await;
    assert_eq!(containers("dserve").len(), 2);
    assert!(g["instances"][0]["container"].as_str().is_some_and(|c| c.len() == 12), "{g}");
    // Published on loopback only.
    let ports = Command::new("docker")
        .args(["ps", "--filter", "label=flotilla.group=dserve", "--format", "{{.Ports}}"])
        .output()
        .unwrap();
    let ports = String::from_utf8_lossy(&ports.stdout);
    assert!(ports.lines().all(|l| l.starts_with("127.0.0.1:")), "{ports}");
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let (status, body) = get(&f.url("/whoami")).await;
        assert_eq!(status, 200);
        seen.insert(body);
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), ["dserve-0001", "dserve-0002"]);
    // CPU and memory come from Docker's stats API.
    wait_group(&f, "dserve", "container stats", |g| {
        g["instances"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["memory_bytes"].as_u64().unwrap_or(0) > 0 && i["cpu"].is_number())
    })
    .await;

    // Scale in under load: no failed requests, the drained container is stopped and removed.
    let load = Load::start(&f.url("/slow?ms=200"), 1);
    let (status, body) = f.admin_call("PUT", "/api/v1/groups/dserve/desired", "{\"desired\": 1}").await;
    assert_eq!(status, 200, "{body}");
    wait_group(&f, "dserve", "one container left", |g| g["instances"].as_array().unwrap().len() == 1).await;
    assert_eq!(load.stop().await.1, Vec::<String>::new());
    let deadline = Instant::now() + Duration::from_secs(20);
    while containers("dserve").len() != 1 {
        assert!(Instant::now() < deadline, "the drained container was not removed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // SIGTERM: flotilla stops and removes its containers before exiting.
    f.proc.signal("TERM");
    assert_eq!(f.proc.wait_exit(Duration::from_secs(30)), Some(0));
    assert_eq!(containers("dserve"), Vec::<String>::new());
}

#[tokio::test]
async fn a_killed_container_is_replaced() {
    if image().is_none() {
        return;
    }
    let f = start("dkill", "min = 1\nmax = 1\n");
    let g = wait_group(&f, "dkill", "1 container in service", |g| count(g, "in_service") == 1).await;
    let victim = g["instances"][0]["container"].as_str().unwrap().to_string();
    assert!(Command::new("docker").args(["kill", &victim]).output().unwrap().status.success());
    wait_group(&f, "dkill", "a replacement", |g| {
        count(g, "in_service") == 1 && g["instances"][0]["container"].as_str().is_some_and(|c| c != victim)
    })
    .await;
    let act = get(&f.admin("/api/v1/groups/dkill/activity")).await.1;
    assert!(act.contains("Instance dkill-0001 exited unexpectedly"), "{act}");
}

#[tokio::test]
async fn a_missing_image_fails_the_launch_with_a_clear_reason() {
    if image().is_none() {
        return;
    }
    let body = format!(
        "{ROUTE_ALL}{}\n[groups.dmissing]\ntarget_group = \"web\"\nmin = 1\n[groups.dmissing.launch]\ndriver = \"docker\"\nimage = \"flotilla-no-such-image:1\"\nport = 8080\n",
        group_toml("web", &[], "")
    );
    let f = Flotilla::start("docker-missing", &body);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let act = get(&f.admin("/api/v1/groups/dmissing/activity")).await.1;
        if act.contains("could not start the container") && act.contains("No such image") {
            break;
        }
        assert!(Instant::now() < deadline, "{act}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Swaps one line of the config file and reloads.
async fn reload_replacing(f: &Flotilla, from: &str, to: &str) {
    let text = std::fs::read_to_string(&f.config).unwrap();
    assert!(text.contains(from), "{from:?} not in the config");
    std::fs::write(&f.config, text.replace(from, to)).unwrap();
    let (status, body) = f.admin_call("POST", "/api/v1/reload", "").await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn docker_refresh_rolls_forward_then_a_broken_image_rolls_back() {
    if image().is_none() {
        return;
    }
    let f = start("drefresh", "min = 2\nmax = 3\nhealth_check_grace = \"5s\"\n");
    wait_group(&f, "drefresh", "2 in service", |g| count(g, "in_service") == 2).await;
    // v2: same image, new command line (ids prefixed v2-).
    reload_replacing(&f, "\"--id\", \"{instance}\"", "\"--id\", \"v2-{instance}\"").await;
    let (status, body) =
        f.admin_call("POST", "/api/v1/groups/drefresh/refresh", "{\"min_healthy_percentage\": 50}").await;
    assert_eq!(status, 202, "{body}");
    let g = wait_group(&f, "drefresh", "refresh to v2", |g| {
        g["refresh"]["status"] == "successful" && count(g, "in_service") == 2
    })
    .await;
    assert!(g["instances"].as_array().unwrap().iter().all(|i| i["launch_version"] == 2), "{g}");
    assert!(get(&f.url("/whoami")).await.1.starts_with("v2-drefresh-"));

    // v3: an image that does not exist. The refresh fails to launch it and rolls back to v2.
    reload_replacing(&f, &format!("image = \"{IMAGE}\""), "image = \"flotilla-no-such-image:1\"").await;
    let (status, body) = f.admin_call("POST", "/api/v1/groups/drefresh/refresh", "").await;
    assert_eq!(status, 202, "{body}");
    let g = wait_group(&f, "drefresh", "rollback to v2", |g| {
        g["refresh"]["status"] == "rolled_back" && count(g, "in_service") == 2
    })
    .await;
    assert_eq!(g["launch_version"], 2, "{g}");
    assert_eq!(get(&f.url("/whoami")).await.0, 200);
}

#[tokio::test]
async fn docker_unhealthy_container_is_replaced_and_cpu_load_scales_out() {
    if image().is_none() {
        return;
    }
    let policy = "min = 1\nmax = 3\nhealth_check_grace = \"2s\"\nmetrics_interval = \"250ms\"\ncooldown = \"30s\"\n\
        [[groups.dcpu.policies]]\ntype = \"step\"\nmetric = \"cpu\"\nperiod = \"1s\"\nevaluation_periods = 2\n\
        threshold = 40\ncomparison = \">\"\nadjustment = \"+1\"\n";
    let f = start("dcpu", policy);
    let g = wait_group(&f, "dcpu", "1 in service", |g| count(g, "in_service") == 1).await;
    // Fail the container's health checks through its published port: it is drained and replaced.
    let sick = g["instances"][0]["id"].as_str().unwrap().to_string();
    let addr = g["instances"][0]["addr"].as_str().unwrap().to_string();
    let r = request(&client(), "POST", &format!("http://{addr}/toggle-health"), &[], "").await.unwrap();
    assert_eq!(r.0, 200);
    wait_group(&f, "dcpu", "the sick container replaced", |g| {
        count(g, "in_service") == 1 && !g.to_string().contains(&format!("\"{sick}\""))
    })
    .await;
    // CPU load through the edge (Docker's stats API): the step policy adds a container.
    let load = Load::start(&f.url("/work?ms=100"), 2);
    wait_group(&f, "dcpu", "scale-out on CPU", |g| g["desired"].as_u64().unwrap_or(0) >= 2).await;
    load.stop().await;
    let act = get(&f.admin("/api/v1/groups/dcpu/activity")).await.1;
    assert!(act.contains("alarm: cpu > 40"), "{act}");
}

/// The swarm driver: a service of one task per instance (so Flotilla, not Swarm, chooses which
/// instance a scale-in removes, and drains it first), scaled out, scaled in under load with no
/// failed request, refreshed to a new launch template and rolled back from a broken image.
#[tokio::test]
async fn swarm_group_scales_refreshes_and_rolls_back() {
    if swarm_image().is_none() {
        return;
    }
    let mut f = start_driver("sw", "min = 1\ndesired = 2\nmax = 3\nhealth_check_grace = \"10s\"\n", "swarm");
    let g = wait_group(&f, "sw", "2 Swarm tasks in service", |g| count(g, "in_service") == 2).await;
    assert_eq!(services("sw").len(), 2, "one service per instance");
    assert!(g["instances"][0]["container"].as_str().is_some_and(|c| c.len() == 12), "{g}");
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let (status, body) = get(&f.url("/whoami")).await;
        assert_eq!(status, 200);
        seen.insert(body);
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), ["sw-0001", "sw-0002"]);
    // Swarm chose each task's host port (no fixed PublishedPort in the spec); Flotilla reads it
    // back from the task's PortStatus, with its node's address.
    for svc in services("sw") {
        let spec = docker_out(&["service", "inspect", "--format", "{{json .Spec.EndpointSpec.Ports}}", &svc]);
        assert!(!spec.contains("PublishedPort"), "{spec}");
        let task = docker_out(&["service", "ps", "-q", "--no-trunc", &svc]);
        let port =
            docker_out(&["inspect", "--format", "{{(index .Status.PortStatus.Ports 0).PublishedPort}}", task.trim()]);
        let addr = format!("127.0.0.1:{}", port.trim());
        assert!(
            g["instances"].as_array().unwrap().iter().any(|i| i["addr"] == addr.as_str()),
            "no instance at {addr} (the task's PortStatus): {g}"
        );
    }

    // Out to three, then in to one under load: the victims are drained before their services go.
    let (status, body) = f.admin_call("PUT", "/api/v1/groups/sw/desired", "{\"desired\": 3}").await;
    assert_eq!(status, 200, "{body}");
    wait_group(&f, "sw", "3 in service", |g| count(g, "in_service") == 3).await;
    wait_services("sw", 3).await;
    let load = Load::start(&f.url("/slow?ms=200"), 2);
    let (status, body) = f.admin_call("PUT", "/api/v1/groups/sw/desired", "{\"desired\": 1}").await;
    assert_eq!(status, 200, "{body}");
    wait_group(&f, "sw", "one instance left", |g| g["instances"].as_array().unwrap().len() == 1).await;
    let (requests, failures) = load.stop().await;
    assert!(requests > 0);
    assert_eq!(failures, Vec::<String>::new(), "scale-in under load failed requests");
    wait_services("sw", 1).await;

    // A new launch template (v2), rolled out by Flotilla's refresh.
    reload_replacing(&f, "\"--id\", \"{instance}\"", "\"--id\", \"v2-{instance}\"").await;
    let (status, body) = f.admin_call("POST", "/api/v1/groups/sw/refresh", "{\"min_healthy_percentage\": 0}").await;
    assert_eq!(status, 202, "{body}");
    let g = wait_group(&f, "sw", "refresh to v2, the old instance gone", |g| {
        g["refresh"]["status"] == "successful"
            && count(g, "in_service") == 1
            && g["instances"].as_array().unwrap().len() == 1
    })
    .await;
    assert!(g["instances"].as_array().unwrap().iter().all(|i| i["launch_version"] == 2), "{g}");
    assert!(get(&f.url("/whoami")).await.1.starts_with("v2-sw-"));
    let labels = Command::new("docker")
        .args(["service", "ls", "--filter", "label=flotilla.group=sw", "--format", "{{.Name}}"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&labels.stdout).lines().count(), 1);

    // v3: an image no node has. Swarm rejects the task; the refresh rolls back to v2.
    reload_replacing(&f, &format!("image = \"{IMAGE}\""), "image = \"flotilla-no-such-image:1\"").await;
    let (status, body) = f.admin_call("POST", "/api/v1/groups/sw/refresh", "").await;
    assert_eq!(status, 202, "{body}");
    let g = wait_group(&f, "sw", "rollback to v2", |g| {
        g["refresh"]["status"] == "rolled_back" && count(g, "in_service") == 1
    })
    .await;
    assert_eq!(g["launch_version"], 2, "{g}");
    assert_eq!(get(&f.url("/whoami")).await.0, 200);
    let act = get(&f.admin("/api/v1/groups/sw/activity")).await.1;
    assert!(act.contains("Swarm task") || act.contains("not running"), "{act}");

    // SIGTERM: flotilla removes its services before exiting.
    f.proc.signal("TERM");
    assert_eq!(f.proc.wait_exit(Duration::from_secs(60)), Some(0));
    assert_eq!(services("sw"), Vec::<String>::new());
}

/// Two nodes of a cluster configured with the same swarm group: one leads its control loop (a
/// Redis lease), the other follows and serves the same services. Killing the leader with -9
/// hands the loop to the other within the lease; it adopts the running services (none launched
/// twice, none lost) and carries on from the saved desired capacity and activity history.
#[tokio::test]
async fn killing_the_swarm_groups_leader_hands_its_loop_to_another_node() {
    if swarm_image().is_none() {
        return;
    }
    if Command::new("redis-server").arg("--version").output().is_err() {
        eprintln!("skipping: redis-server is not installed");
        return;
    }
    let redis_port = free_port();
    let redis_dir = scratch_dir("lead-redis");
    let _redis = Proc {
        child: Command::new("redis-server")
            .args(["--port", &redis_port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&redis_dir)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    };
    wait_for_port(redis_port);
    let body = |node: &str| {
        format!(
            r#"[fleet]
deployment = "t-lead"

[cluster]
node = "{node}"
redis = "redis://127.0.0.1:{redis_port}/0"
lease = "2s"
heartbeat = "300ms"

{ROUTE_ALL}{tg}
[groups.lead]
target_group = "web"
min = 1
desired = 2
max = 4
instance_warmup = "0s"
stop_timeout = "3s"
health_check_grace = "10s"

[groups.lead.launch]
driver = "swarm"
image = "{IMAGE}"
port = 8080
command = ["demo-app", "--port", "{{port}}", "--bind", "0.0.0.0", "--id", "{{instance}}"]
"#,
            tg = group_toml("web", &[], "deregistration_delay = \"2s\"")
        )
    };
    let mut a = Flotilla::start("lead-a", &body("a"));
    wait_group(&a, "lead", "a leads with 2 in service", |g| count(g, "in_service") == 2).await;
    let b = Flotilla::start("lead-b", &body("b"));
    // b follows: it serves the same two services and launches nothing.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..10 {
            let (status, body) = get(&b.url("/whoami")).await;
            if status == 200 {
                seen.insert(body);
            }
        }
        if seen.len() == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "b never served both services: {seen:?}\n{}", b.log());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(services("lead").len(), 2, "the follower launched nothing");
    let cluster: Value = serde_json::from_str(&get(&a.admin("/api/v1/cluster")).await.1).unwrap();
    let leads = |c: &Value, node: &str| {
        c["nodes"].as_array().unwrap().iter().any(|n| n["name"] == node && n["leads"][0] == "group:lead")
    };
    assert!(leads(&cluster, "a"), "{cluster}");
    // Changes go to the leader; the follower says so instead of acting on its own state.
    assert_eq!(group(&b, "lead").await["role"], "follower");
    assert_eq!(group(&a, "lead").await["role"], "leader");
    let (status, body) = b.admin_call("PUT", "/api/v1/groups/lead/desired", "{\"desired\": 4}").await;
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("does not lead"), "{body}");
    let (status, body) = a.admin_call("PUT", "/api/v1/groups/lead/desired", "{\"desired\": 3}").await;
    assert_eq!(status, 200, "{body}");
    wait_group(&a, "lead", "3 in service", |g| count(g, "in_service") == 3).await;
    wait_services("lead", 3).await;

    // Scale-in by the leader while clients use the follower: the leader marks the victim's
    // service draining (a version-checked update) and b stops routing to it before it goes.
    let load = Load::start(&b.url("/slow?ms=100"), 2);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, body) = a.admin_call("PUT", "/api/v1/groups/lead/desired", "{\"desired\": 2}").await;
    assert_eq!(status, 200, "{body}");
    wait_services("lead", 2).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (requests, failures) = load.stop().await;
    assert!(requests > 0);
    assert_eq!(failures, Vec::<String>::new(), "requests through the follower failed during the leader's scale-in");

    // The leader dies without a word: b takes over within the lease and adopts both services.
    let versions = service_versions("lead");
    assert_eq!(versions.len(), 2, "{versions:?}");
    let killed = Instant::now();
    a.proc.kill9();
    let g = wait_group(&b, "lead", "b adopts the two services", |g| count(g, "in_service") == 2).await;
    let failover = killed.elapsed();
    eprintln!("leader failover: {failover:?}");
    assert_eq!(g["desired"], 2, "the new leader carries on from the saved desired capacity: {g}");
    assert_eq!(g["role"], "leader");
    assert_eq!(services("lead").len(), 2, "no service launched twice, none lost");
    // Adopting writes nothing: the same services at the same versions (no update applied twice).
    assert_eq!(service_versions("lead"), versions, "the new leader adopted the services as they were");
    let act: Value = serde_json::from_str(&get(&b.admin("/api/v1/groups/lead/activity")).await.1).unwrap();
    let text = act.to_string();
    assert!(text.contains("Took over the group's control loop"), "{act:#}");
    assert!(text.contains("adopted 2 running Swarm services"), "{act:#}");
    let launches: Vec<String> = act
        .as_array()
        .or(act["activity"].as_array())
        .unwrap()
        .iter()
        .filter_map(|e| e["description"].as_str())
        .filter(|d| d.starts_with("Launching instance"))
        .map(String::from)
        .collect();
    assert_eq!(launches.len(), 3, "the old leader's three launches, carried over, and no new one: {launches:?}");
    // b leads now and scales on: the new instance gets the next number.
    let (status, body) = b.admin_call("PUT", "/api/v1/groups/lead/desired", "{\"desired\": 3}").await;
    assert_eq!(status, 200, "{body}");
    let g = wait_group(&b, "lead", "3 in service", |g| count(g, "in_service") == 3).await;
    assert!(g.to_string().contains("lead-0004"), "{g}");
    wait_services("lead", 3).await;
    drop(b);
    for s in services("lead") {
        let _ = Command::new("docker").args(["service", "rm", &s]).output();
    }
}
