//! Two Flotillas on one Docker host (and one swarm), each with a group of the same name: each
//! finds, cleans up and removes only its own containers and services (they carry the
//! deployment id in their names and labels), and a restart of one deployment still cleans up
//! what its crashed run left. Skipped, with a message, where no Docker daemon runs.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::docker::{image, swarm_image, IMAGE};
use common::*;
use serde_json::Value;

/// A Flotilla with one container group `group` (`driver`: docker or swarm) behind `/*`, with
/// `env` in its own environment.
fn start(name: &str, group: &str, driver: &str, env: &[(&str, &str)]) -> Flotilla {
    let (port, admin_port, dir) = (free_port(), free_port(), scratch_dir(name));
    let text = format!(
        r#"[edge]
listen = ["127.0.0.1:{port}"]

[admin]
listen = "127.0.0.1:{admin_port}"
token = "test-token"

{ROUTE_ALL}{tg}
[groups.{group}]
target_group = "web"
instance_warmup = "0s"
stop_timeout = "2s"
min = 1
health_check_grace = "30s"

[groups.{group}.launch]
driver = "{driver}"
image = "{IMAGE}"
port = 8080
command = ["demo-app", "--port", "{{port}}", "--bind", "0.0.0.0", "--id", "{{instance}}"]
env = {{ APP = "configured" }}
"#,
        tg = group_toml("web", &[], "deregistration_delay = \"1s\"")
    );
    Flotilla::start_env(&dir, &text, port, admin_port, "info", env)
}

/// The same deployment started again: same config file, same ports.
fn restart(f: &Flotilla) -> Flotilla {
    let text = std::fs::read_to_string(&f.config).unwrap();
    Flotilla::start_raw("", &f.dir, &text, f.port, f.admin_port)
}

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Whether container (or service, with `what` = "service") `id` still exists.
fn exists(what: &str, id: &str) -> bool {
    Command::new("docker").args([what, "inspect", id]).output().unwrap().status.success()
}

/// Removes what a test's Flotillas leave if it fails half-way (their deployment ids are derived
/// from scratch directories, so no later run would sweep them up). Declared first in a test, so
/// it drops after the Flotillas are killed.
struct Sweep(&'static str);

impl Drop for Sweep {
    fn drop(&mut self) {
        let group = format!("label=flotilla.group={}", self.0);
        for (list, rm) in [(["service", "ls", "-q"], ["service", "rm"]), (["ps", "-a", "-q"], ["rm", "-f"])] {
            let ids = docker(&[&list[..], &["--filter", &group, "--filter", "label=flotilla.deployment"]].concat());
            for id in ids.split_whitespace() {
                let _ = Command::new("docker").args(rm).arg(id).output();
            }
        }
    }
}

async fn in_service(f: &Flotilla, group: &str) -> Value {
    let g = f
        .wait_group(group, "1 in service", Duration::from_secs(120), |g| {
            g["instances"].as_array().unwrap().iter().filter(|i| i["state"] == "in_service").count() == 1
        })
        .await;
    g["instances"][0].clone()
}

#[tokio::test]
async fn two_flotillas_on_one_host_never_remove_each_others_containers() {
    if image().is_none() {
        return;
    }
    let _sweep = Sweep("twin");
    const SECRET: &str = "admin-secret-docker-5e1";
    let a = start("deploy-a", "twin", "docker", &[("FLOTILLA_ADMIN_TOKEN", SECRET)]);
    let ca = in_service(&a, "twin").await["container"].as_str().unwrap().to_string();
    // B starts with a group of the same name: its stale-container sweep must leave A's alone.
    let b = start("deploy-b", "twin", "docker", &[]);
    let cb = in_service(&b, "twin").await["container"].as_str().unwrap().to_string();
    assert!(exists("container", &ca), "B's start removed A's container");
    assert_eq!(a.group("twin").await["instances"][0]["container"], ca.as_str(), "A's instance was replaced");
    let label = |c: &str| docker(&["inspect", "--format", "{{index .Config.Labels \"flotilla.deployment\"}}", c]);
    let (da, db) = (label(&ca), label(&cb));
    assert!(!da.is_empty() && da != db, "deployment labels {da:?} and {db:?}");
    let name = docker(&["inspect", "--format", "{{.Name}}", &ca]);
    assert_eq!(name, format!("/flotilla-{da}-twin-0001"));
    // A container's environment is its configured env and Flotilla's three, nothing of A's own.
    let env = docker(&["inspect", "--format", "{{json .Config.Env}}", &ca]);
    assert!(env.contains("APP=configured") && env.contains("FLOTILLA_INSTANCE=twin-0001"), "{env}");
    assert!(!env.contains(SECRET) && !env.contains("FLOTILLA_ADMIN_TOKEN"), "{env}");

    // A crashes, leaving its container; restarted, the same deployment sweeps it up, not B's.
    let mut a = a;
    a.proc.kill9();
    assert!(exists("container", &ca), "a killed flotilla's container stays until the next start");
    let mut a = restart(&a);
    let ca2 = in_service(&a, "twin").await["container"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    while exists("container", &ca) {
        assert!(Instant::now() < deadline, "the restarted deployment did not remove its crashed run's container");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(label(&ca2), da, "the restarted deployment has the same id");
    assert!(exists("container", &cb), "A's restart removed B's container");

    // A stops: its container goes, B's stays and B keeps serving.
    a.proc.signal("TERM");
    assert_eq!(a.proc.wait_exit(Duration::from_secs(30)), Some(0));
    assert!(!exists("container", &ca2));
    assert!(exists("container", &cb), "A's shutdown removed B's container");
    assert_eq!(get(&b.url("/whoami")).await, (200, "twin-0001".to_string()));
}

#[tokio::test]
async fn two_flotillas_on_one_swarm_never_remove_each_others_services() {
    if swarm_image().is_none() {
        return;
    }
    let _sweep = Sweep("stwin");
    let services = |dep: &str| {
        docker(&[
            "service",
            "ls",
            "-q",
            "--filter",
            "label=flotilla.group=stwin",
            "--filter",
            &format!("label=flotilla.deployment={dep}"),
        ])
    };
    let a = start("deploy-sa", "stwin", "swarm", &[]);
    let ca = in_service(&a, "stwin").await["container"].as_str().unwrap().to_string();
    let da = docker(&["inspect", "--format", "{{index .Config.Labels \"flotilla.deployment\"}}", &ca]);
    let sa = services(&da);
    assert_eq!(sa.lines().count(), 1, "{sa}");
    let mut b = start("deploy-sb", "stwin", "swarm", &[]);
    in_service(&b, "stwin").await;
    assert_eq!(services(&da), sa, "B's start removed A's service");
    b.proc.signal("TERM");
    assert_eq!(b.proc.wait_exit(Duration::from_secs(60)), Some(0));
    assert_eq!(services(&da), sa, "B's shutdown removed A's service");
    assert_eq!(a.group("stwin").await["instances"][0]["container"], ca.as_str(), "A's instance was replaced");
}
