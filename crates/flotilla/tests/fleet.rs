//! The fleet with real processes: instances of `flotilla demo-app` launched by `flotilla up`,
//! registered into the edge, scaled through the admin API and by policies, replaced when they
//! die or fail health checks, drained before they stop.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// A fleet-managed `web` group behind `/*` with fast health checks; `group_keys` go into
/// `[groups.web]` and `policies` after it.
fn start(name: &str, group_keys: &str, policies: &str) -> Flotilla {
    let body = format!(
        r#"{ROUTE_ALL}{tg}
[groups.web]
target_group = "web"
instance_warmup = "0s"
stop_timeout = "3s"
{group_keys}
[groups.web.launch]
command = ["flotilla", "demo-app", "--port", "{{port}}", "--id", "{{instance}}"]
{policies}"#,
        tg = group_toml("web", &[], "deregistration_delay = \"3s\"")
    );
    Flotilla::start(name, &body)
}

fn count(g: &Value, state: &str) -> usize {
    g["instances"].as_array().unwrap().iter().filter(|i| i["state"] == state).count()
}

async fn activity(f: &Flotilla) -> String {
    get(&f.admin("/api/v1/groups/web/activity")).await.1
}

async fn put_desired(f: &Flotilla, n: u32) -> (u16, String) {
    f.admin_call("PUT", "/api/v1/groups/web/desired", &format!("{{\"desired\": {n}}}")).await
}

fn pids(g: &Value) -> Vec<i32> {
    g["instances"].as_array().unwrap().iter().filter_map(|i| i["pid"].as_i64()).map(|p| p as i32).collect()
}

fn alive(pid: i32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default().contains(") Z ")
}

#[tokio::test]
async fn group_starts_at_min_serves_traffic_and_stops_its_instances_on_sigterm() {
    let mut f = start("fleet-min", "min = 2\nmax = 4\n", "");
    let g = f.wait_group("web", "2 in service", Duration::from_secs(30), |g| count(g, "in_service") == 2).await;
    assert_eq!(g["desired"], 2);
    assert_eq!(g["launch_version"], 1);
    // Both instances answer through the edge, under their instance ids.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let (status, body) = get(&f.url("/whoami")).await;
        assert_eq!(status, 200);
        seen.insert(body.trim().to_string());
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), ["web-0001", "web-0002"]);
    // The edge sees them as healthy targets of `web`.
    let (_, tgs) = get(&f.admin("/api/v1/target-groups")).await;
    assert_eq!(tgs.matches("\"healthy\"").count(), 2, "{tgs}");
    let act = activity(&f).await;
    assert!(act.contains("Launching instance web-0001") && act.contains("is in service"), "{act}");

    let before = pids(&g);
    f.proc.signal("TERM");
    assert_eq!(f.proc.wait_exit(Duration::from_secs(20)), Some(0));
    for pid in before {
        assert!(!alive(pid), "instance process {pid} outlived flotilla");
    }
}

#[tokio::test]
async fn desired_capacity_scales_out_and_in_with_no_failed_requests() {
    let f = start("fleet-desired", "min = 1\nmax = 4\ndesired = 1\n", "");
    f.wait_group("web", "1 in service", Duration::from_secs(30), |g| count(g, "in_service") == 1).await;

    let (status, body) = put_desired(&f, 9).await;
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("outside the group's bounds [1, 4]"), "{body}");
    let r = request(&client(), "PUT", &f.admin("/api/v1/groups/web/desired"), &[], "{\"desired\": 2}").await.unwrap();
    assert_eq!(r.0, 401);

    // Scale out from the CLI (same admin API, token from the config file).
    let cli = |args: &[&str]| {
        let mut all = vec![args[0], "--config", f.config.to_str().unwrap()];
        all.extend_from_slice(&args[1..]);
        std::process::Command::new(BIN).args(&all).output().unwrap()
    };
    let out = cli(&["scale", "web", "3"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("web  desired 3  (min 1, max 4)"));
    let out = cli(&["scale", "web", "5"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("422 Unprocessable Entity: desired capacity 5 is outside"));
    f.wait_group("web", "3 in service", Duration::from_secs(30), |g| count(g, "in_service") == 3).await;
    let out = cli(&["groups"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).matches("in_service").count(), 3);

    // Scale in to 1 while clients keep sending requests (some slow): none may fail.
    let load = Load::start(&f.url("/slow?ms=300"), 4);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(put_desired(&f, 1).await.0, 200);
    let g = f
        .wait_group("web", "1 instance left", Duration::from_secs(30), |g| {
            g["instances"].as_array().unwrap().len() == 1
        })
        .await;
    assert_eq!(count(&g, "in_service"), 1);
    let (total, failed) = load.stop().await;
    println!("scale-in 3 -> 1 under load: {total} requests ok, {} failed", failed.len());
    assert!(failed.is_empty(), "failed requests during scale-in: {failed:?}");
    assert!(total > 10, "only {total} requests went through");
    let act = String::from_utf8_lossy(&cli(&["activity", "web"]).stdout).into_owned();
    assert!(act.contains("Draining instance") && act.contains("Terminated instance"), "{act}");
    assert!(act.contains("set through the admin API"), "{act}");
}

#[tokio::test]
async fn killed_and_unhealthy_instances_are_replaced() {
    let f = start("fleet-replace", "min = 2\nmax = 2\nhealth_check_grace = \"2s\"\n", "");
    let g = f.wait_group("web", "2 in service", Duration::from_secs(30), |g| count(g, "in_service") == 2).await;
    let first = &g["instances"][0];
    let (victim_id, victim_pid) = (first["id"].as_str().unwrap().to_string(), first["pid"].as_i64().unwrap());
    std::process::Command::new("kill").args(["-9", &victim_pid.to_string()]).status().unwrap();
    let g = f
        .wait_group("web", "a replacement in service", Duration::from_secs(30), |g| {
            count(g, "in_service") == 2 && !g.to_string().contains(&format!("\"{victim_id}\""))
        })
        .await;
    assert!(activity(&f).await.contains(&format!("Instance {victim_id} exited unexpectedly")));

    // Make one instance fail its health checks: after the grace period it is drained and replaced.
    let sick = &g["instances"][0];
    let sick_id = sick["id"].as_str().unwrap().to_string();
    let r = request(&client(), "POST", &format!("http://{}/toggle-health", sick["addr"].as_str().unwrap()), &[], "")
        .await
        .unwrap();
    assert_eq!(r.0, 200);
    f.wait_group("web", "the sick instance replaced", Duration::from_secs(30), |g| {
        count(g, "in_service") == 2 && !g.to_string().contains(&format!("\"{sick_id}\""))
    })
    .await;
    let act = activity(&f).await;
    assert!(act.contains(&format!("Replacing instance {sick_id}")) && act.contains("failed health checks"), "{act}");
}

#[tokio::test]
async fn launch_failures_back_off_instead_of_retrying_hot() {
    let body = format!(
        "{ROUTE_ALL}{}\n[groups.web]\ntarget_group = \"web\"\nmin = 1\n[groups.web.launch]\ncommand = [\"/bin/false\"]\n",
        group_toml("web", &[], "")
    );
    let f = Flotilla::start("fleet-backoff", &body);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let act = activity(&f).await;
    let launches = act.matches("Launching instance").count();
    let failures = act.matches("exited unexpectedly").count();
    // Backoff 2 s, 4 s, ...: at most three launches in four seconds, each reported.
    assert!((1..=3).contains(&launches), "{launches} launches in 4 s: {act}");
    assert!(failures >= 1, "{act}");
}

#[tokio::test]
async fn cpu_load_scales_out_by_step_policy_then_back_in_after_cooldown() {
    let policies = r#"
[[groups.web.policies]]
type = "step"
metric = "cpu"
period = "1s"
evaluation_periods = 2
threshold = 40
comparison = ">"
adjustment = "+2"
[[groups.web.policies]]
type = "step"
metric = "cpu"
period = "1s"
evaluation_periods = 3
threshold = 10
comparison = "<"
adjustment = "-1"
"#;
    let f = start("fleet-cpu", "min = 1\nmax = 3\nmetrics_interval = \"250ms\"\ncooldown = \"4s\"\n", policies);
    f.wait_group("web", "1 in service", Duration::from_secs(30), |g| count(g, "in_service") == 1).await;

    // Burn CPU through the edge: /work?ms=100 back to back from two clients.
    let load = Load::start(&f.url("/work?ms=100"), 2);
    let g = f.wait_group("web", "scale-out to 3", Duration::from_secs(40), |g| g["desired"] == 3).await;
    load.stop().await;
    let act = activity(&f).await;
    assert!(act.contains("Changing desired capacity from 1 to 3") && act.contains("alarm: cpu > 40"), "{act}\n{g}");
    // Idle now: the low alarm brings it back to 1, one step at a time, 4 s cooldown apart.
    let started = Instant::now();
    f.wait_group("web", "scale-in to 1", Duration::from_secs(60), |g| g["desired"] == 1).await;
    let act = activity(&f).await;
    assert!(act.contains("from 3 to 2") && act.contains("from 2 to 1"), "{act}");
    // Two scale-ins need at least one cooldown between them (not a timing assertion on speed).
    assert!(started.elapsed() >= Duration::from_secs(4));
}

#[test]
fn simulate_replays_a_real_trace_through_each_example_policy() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let trace = root.join("../shared/traces/elb_request_count_8c0756.csv");
    if !trace.exists() {
        eprintln!("skipping: {} is not here", trace.display());
        return;
    }
    let mut hours = vec![];
    for policy in ["step", "hpa", "recommended"] {
        let config = root.join(format!("examples/scaling/{policy}.toml"));
        let out = std::process::Command::new(BIN)
            .args(["simulate", "--trace", trace.to_str().unwrap(), "--config", config.to_str().unwrap(), "--json"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let r: Value = serde_json::from_slice(&out.stdout).unwrap();
        let (h, oracle) = (r["instance_hours"].as_f64().unwrap(), r["oracle_instance_hours"].as_f64().unwrap());
        // 14 days at 2..10 instances; nothing beats perfect foresight.
        assert!(oracle > 14.0 * 24.0 * 2.0 && h >= oracle, "{policy}: {r}");
        assert!(r["scaling_actions"].as_u64().unwrap() > 0 && r["under_capacity_minutes"].is_u64(), "{r}");
        hours.push(h);
    }
    assert!(hours[0] != hours[1] && hours[1] != hours[2], "policies should differ: {hours:?}");
    // A bad trace is refused with its line number.
    let dir = scratch_dir("simulate-bad");
    let bad = dir.join("bad.csv");
    std::fs::write(&bad, "timestamp,value\n2014-04-10 00:04:00,94\n2014-04-10 00:09:00,lots\n").unwrap();
    let config = root.join("examples/scaling/step.toml");
    let out = std::process::Command::new(BIN)
        .args(["simulate", "--trace", bad.to_str().unwrap(), "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("line 3: bad value"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn budget_alerts_then_the_hard_cap_stops_scale_out() {
    // 3600 per instance-hour = 1 per instance-second: two instances spend a budget of 6 in ~3 s.
    let f = start(
        "fleet-budget",
        "min = 2\nmax = 4\n[groups.web.budget]\nprice_per_instance_hour = 3600\nmonthly = 6\nalerts = [50, 100]\nhard_cap = true\n",
        "",
    );
    let g = f.wait_group("web", "the budget spent", Duration::from_secs(30), |g| g["budget"]["capped"] == true).await;
    assert!(g["budget"]["spent"].as_f64().unwrap() >= 6.0, "{g}");
    let act = activity(&f).await;
    assert!(act.contains("Budget alert: 50 % of the monthly budget reached"), "{act}");
    assert!(act.contains("Budget alert: 100 % of the monthly budget reached"), "{act}");
    let (status, body) = put_desired(&f, 3).await;
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("monthly budget is spent"), "{body}");
    // Scale-in is still allowed.
    let (status, body) = put_desired(&f, 2).await;
    assert_eq!(status, 200, "{body}");
}

/// Rewrites the group's launch command in the config file and reloads through the admin API.
async fn reload_with_command(f: &Flotilla, command: &str) {
    let text = std::fs::read_to_string(&f.config).unwrap();
    let start = text.find("command = [").unwrap();
    let end = start + text[start..].find('\n').unwrap();
    std::fs::write(&f.config, format!("{}command = {command}{}", &text[..start], &text[end..])).unwrap();
    let (status, body) = f.admin_call("POST", "/api/v1/reload", "").await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn refresh_replaces_every_instance_under_load_with_no_failed_requests() {
    let f = start("fleet-refresh", "min = 3\nmax = 4\n", "");
    f.wait_group("web", "3 in service", Duration::from_secs(30), |g| count(g, "in_service") == 3).await;
    reload_with_command(&f, r#"["flotilla", "demo-app", "--port", "{port}", "--id", "v2-{instance}"]"#).await;
    let g = f.group("web").await;
    assert_eq!(g["launch_version"], 2, "{g}");

    let load = Load::start(&f.url("/slow?ms=200"), 4);
    // The CLI starts the refresh and follows it to the end (exit 0 = successful).
    let config = f.config.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(BIN)
            .args(["refresh", "--config", config.to_str().unwrap(), "web", "--min-healthy", "66"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let (total, failed) = load.stop().await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("rolling refresh of 3 under load: {total} requests ok, {} failed", failed.len());
    assert!(out.status.success(), "{stdout}\n{}\n{}", String::from_utf8_lossy(&out.stderr), activity(&f).await);
    assert!(stdout.contains("successful 100 %  (launch template v1 -> v2)"), "{stdout}");
    assert!(failed.is_empty(), "failed requests during the refresh: {failed:?}");
    assert!(total > 10, "only {total} requests went through");
    let g = f
        .wait_group("web", "3 instances on v2", Duration::from_secs(20), |g| {
            g["instances"].as_array().unwrap().len() == 3 && count(g, "in_service") == 3
        })
        .await;
    assert!(g["instances"].as_array().unwrap().iter().all(|i| i["launch_version"] == 2), "{g}");
    assert!(get(&f.url("/whoami")).await.1.starts_with("v2-web-"));
}

#[tokio::test]
async fn refresh_to_a_broken_template_rolls_back() {
    let f = start("fleet-rollback", "min = 2\nmax = 3\nhealth_check_grace = \"3s\"\n", "");
    f.wait_group("web", "2 in service", Duration::from_secs(30), |g| count(g, "in_service") == 2).await;
    reload_with_command(&f, r#"["/bin/false"]"#).await;
    let (status, body) = f.admin_call("POST", "/api/v1/groups/web/refresh", "").await;
    assert_eq!(status, 202, "{body}");
    // A second refresh while one runs is refused.
    let (status, body) = f.admin_call("POST", "/api/v1/groups/web/refresh", "").await;
    assert_eq!(status, 409, "{body}");
    let g = f
        .wait_group("web", "the refresh rolled back", Duration::from_secs(60), |g| {
            g["refresh"]["status"] == "rolled_back" && count(g, "in_service") == 2
        })
        .await;
    assert_eq!(g["launch_version"], 1, "{g}");
    assert!(g["instances"].as_array().unwrap().iter().all(|i| i["launch_version"] == 1), "{g}");
    let act = activity(&f).await;
    assert!(act.contains("rolling back to launch template v1"), "{act}");
    // The site kept serving throughout.
    assert_eq!(get(&f.url("/whoami")).await.0, 200);
}

#[tokio::test]
async fn a_scheduled_action_sets_capacity_at_the_next_matching_minute() {
    // Cron has minute resolution: this waits for the next minute boundary (at most ~60 s).
    let f = start(
        "fleet-schedule",
        "min = 1\nmax = 3\n[[groups.web.schedules]]\ncron = \"* * * * *\"\ntimezone = \"Europe/Berlin\"\nmin = 2\n",
        "",
    );
    let g = f
        .wait_group("web", "the schedule to raise min to 2", Duration::from_secs(75), |g| {
            g["min"] == 2 && count(g, "in_service") == 2
        })
        .await;
    assert_eq!(g["desired"], 2);
    let act = activity(&f).await;
    assert!(act.contains("Scheduled action: min 1 -> 2, max 3 -> 3, desired 1 -> 2"), "{act}");
    assert!(act.contains("cron \\\"* * * * *\\\" in Europe/Berlin"), "{act}");
}

#[tokio::test]
async fn latency_p95_from_the_watch_drives_a_step_policy() {
    let policies = r#"
[[groups.web.policies]]
type = "step"
metric = "latency_p95"          # milliseconds, the target group's, from the watch
period = "1s"
evaluation_periods = 2
threshold = 150
comparison = ">"
adjustment = "+1"

[watch]
resolution = "250ms"
"#;
    let f = start("fleet-latency", "min = 1\nmax = 2\nmetrics_interval = \"250ms\"\ncooldown = \"30s\"\n", policies);
    f.wait_group("web", "1 in service", Duration::from_secs(30), |g| count(g, "in_service") == 1).await;
    let load = Load::start(&f.url("/slow?ms=300"), 2);
    f.wait_group("web", "scale-out on latency", Duration::from_secs(30), |g| g["desired"] == 2).await;
    let (ok, failed) = load.stop().await;
    assert!(ok > 0 && failed.is_empty(), "{failed:?}");
    let act = activity(&f).await;
    assert!(act.contains("alarm: latency_p95 > 150"), "{act}");
}

/// An instance's environment is its group's `env` plus a small base, never flotilla's own: the
/// admin token, the Redis password and the image key in flotilla's environment stay there.
#[tokio::test]
async fn instances_get_their_env_and_a_base_never_flotillas_secrets() {
    let (port, admin_port, dir) = (free_port(), free_port(), scratch_dir("fleet-env"));
    let secrets = [
        ("FLOTILLA_ADMIN_TOKEN", "admin-secret-4f1c"),
        ("REDIS_PASSWORD", "redis-secret-9b2e"),
        ("FLOTILLA_IMAGE_KEY", "image-secret-77d0"),
    ];
    // Each instance writes its environment to a file, then becomes the demo app.
    let text = format!(
        r#"[edge]
listen = ["127.0.0.1:{port}"]

[admin]
listen = "127.0.0.1:{admin_port}"
token = "${{FLOTILLA_ADMIN_TOKEN}}"

{ROUTE_ALL}{tg}
[groups.web]
target_group = "web"
instance_warmup = "0s"
stop_timeout = "3s"

[groups.web.launch]
command = ["/bin/sh", "-c", "env > '{dir}/env-{{instance}}' && exec '{BIN}' demo-app --port {{port}} --id {{instance}}"]
env = {{ APP_SETTING = "configured-{{port}}", PASSED_ON = "${{PASS_ME}}" }}
"#,
        dir = dir.display(),
        tg = group_toml("web", &[], "")
    );
    let mut env = secrets.to_vec();
    env.push(("PASS_ME", "explicitly-passed"));
    let f = Flotilla::start_env(&dir, &text, port, admin_port, "info", &env);
    let g = f.wait_group("web", "1 in service", Duration::from_secs(30), |g| count(g, "in_service") == 1).await;
    let instance = g["instances"][0]["id"].as_str().unwrap().to_string();
    let seen = std::fs::read_to_string(dir.join(format!("env-{instance}"))).unwrap();
    for (name, secret) in secrets {
        assert!(!seen.contains(secret) && !seen.contains(&format!("{name}=")), "{name} reached the instance:\n{seen}");
    }
    let vars: std::collections::BTreeMap<&str, &str> = seen.lines().filter_map(|l| l.split_once('=')).collect();
    let app_port = g["instances"][0]["addr"].as_str().unwrap().rsplit(':').next().unwrap().to_string();
    assert_eq!(vars.get("APP_SETTING"), Some(&format!("configured-{app_port}").as_str()), "{seen}");
    assert_eq!(vars.get("PASSED_ON"), Some(&"explicitly-passed"), "{seen}");
    assert_eq!(vars.get("PORT"), Some(&app_port.as_str()), "{seen}");
    assert_eq!(vars.get("FLOTILLA_INSTANCE"), Some(&instance.as_str()), "{seen}");
    assert!(vars.contains_key("PATH"), "{seen}");
    // Nothing else of the test's (flotilla's) environment got through: only the base, the
    // group's env, ours, and what the shell adds itself.
    let allowed = [
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "LANG",
        "LC_ALL",
        "LC_CTYPE",
        "TZ",
        "TMPDIR",
        "APP_SETTING",
        "PASSED_ON",
        "PORT",
        "FLOTILLA_INSTANCE",
        "FLOTILLA_GROUP",
        "PWD",
        "SHLVL",
        "_",
        "OLDPWD",
    ];
    let extra: Vec<&&str> = vars.keys().filter(|k| !allowed.contains(k)).collect();
    assert!(extra.is_empty(), "unexpected variables reached the instance: {extra:?}");
}
