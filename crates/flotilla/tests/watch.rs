//! The watch with real traffic: 5xx responses through the edge drive an alarm to ALARM and back
//! to OK, each change delivered to a real webhook receiver (which fails once, to show the retry);
//! alarms on absent metrics follow their missing-data treatment; series are queryable.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use tokio::sync::mpsc;

/// A webhook receiver that fails its first request (to show the retry).
async fn receiver() -> (u16, mpsc::UnboundedReceiver<Value>) {
    webhook_receiver(true).await
}

/// The next notification that `alarm` entered `state` (earlier ones are skipped).
async fn next_for(rx: &mut mpsc::UnboundedReceiver<Value>, alarm: &str, state: &str, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some(v)) if v["alarm"] == alarm && v["state"] == state => return v,
            Ok(Some(_)) => continue,
            _ => panic!("no notification of {alarm} entering {state} within {limit:?}"),
        }
    }
}

async fn alarm_state(f: &Flotilla, name: &str) -> String {
    let v: Value = serde_json::from_str(&get(&f.admin("/api/v1/alarms")).await.1).unwrap();
    v["alarms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == name)
        .map(|a| a["state"].as_str().unwrap().to_string())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alarms_follow_real_traffic_and_notify_a_webhook() {
    let app = DemoApp::start("a");
    let (hook_port, mut hooks) = receiver().await;
    let body = format!(
        r#"{ROUTE_ALL}{tg}[target_groups.web.passive]
consecutive_5xx = 0

[watch]
resolution = "250ms"

[notifiers.ops]
webhook = "http://127.0.0.1:{hook_port}/hook"

[[alarms]]
name = "high-5xx"
metric = "http_requests_5xx_rate"
labels = {{ target_group = "web" }}
statistic = "max"
period = "1s"
evaluation_periods = 2
datapoints_to_alarm = 2
threshold = 0
comparison = ">"
missing_data = "not_breaching"
notify = ["ops"]

[[alarms]]
name = "no-data"
metric = "nothing_exports_this"
period = "1s"
threshold = 1

[[alarms]]
name = "no-data-breaching"
metric = "nothing_exports_this"
period = "1s"
threshold = 1
missing_data = "breaching"
"#,
        tg = group_toml("web", &[&app], "")
    );
    let f = Flotilla::start("watch-alarms", &body);
    f.wait_target_state("web", &app.addr(), "healthy", Duration::from_secs(10)).await;

    // Healthy traffic first: the 5xx alarm settles in OK (rates of 0 are datapoints).
    let deadline = Instant::now() + Duration::from_secs(10);
    while alarm_state(&f, "high-5xx").await != "OK" {
        let _ = get(&f.url("/whoami")).await;
        assert!(Instant::now() < deadline, "high-5xx never reached OK");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(alarm_state(&f, "no-data").await, "INSUFFICIENT_DATA");
    assert_eq!(alarm_state(&f, "no-data-breaching").await, "ALARM");

    // 5xx for a few seconds: ALARM, delivered to the webhook (after one failed attempt).
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        assert_eq!(get(&f.url("/status/500")).await.0, 500);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let n = next_for(&mut hooks, "high-5xx", "ALARM", Duration::from_secs(15)).await;
    assert_eq!(n["previous_state"], "OK");
    assert!(n["reason"].as_str().unwrap().contains("2 of the last 2 datapoints"), "{n}");
    assert!(f.log().contains("notification failed"), "the first delivery should have been retried");

    // The series is there to query.
    let (_, q) =
        get(&f.admin("/api/v1/metrics/query?name=http_requests_5xx_rate&labels=target_group=web&from=-1m")).await;
    let q: Value = serde_json::from_str(&q).unwrap();
    assert!(q["points"].as_array().unwrap().iter().any(|p| p["v"].as_f64().unwrap() > 1.0), "{q}");

    // Errors stop: back to OK, notified too.
    let n = next_for(&mut hooks, "high-5xx", "OK", Duration::from_secs(15)).await;
    assert_eq!(n["previous_state"], "ALARM", "{n}");
    let (_, alarms) = get(&f.admin("/api/v1/alarms")).await;
    assert!(alarms.contains("\"from\":\"ALARM\",\"to\":\"OK\"") || alarms.contains("\"to\":\"OK\""), "{alarms}");

    // /metrics carries the edge's and the fleet's families in one exposition.
    let (_, metrics) = get(&f.admin("/metrics")).await;
    assert!(
        metrics.contains("flotilla_http_requests_total")
            && metrics.contains("# TYPE flotilla_group_desired_capacity gauge")
    );
    assert!(metrics.trim_end().ends_with("# EOF") && metrics.matches("# EOF").count() == 1);
    // `flotilla status` shows the same from the terminal (with the token from the config file).
    let out =
        std::process::Command::new(BIN).args(["status", "--config", f.config.to_str().unwrap()]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.starts_with("requests ") && text.contains("high-5xx") && text.contains("healthy"), "{text}");

    // Every metric the Grafana dashboard in contrib/ queries exists.
    let grafana =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../contrib/grafana-dashboard.json")).unwrap();
    let mut names: Vec<&str> = grafana
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("flotilla_"))
        .collect();
    names.sort();
    names.dedup();
    assert!(names.len() >= 8, "{names:?}");
    for name in names {
        let family = ["_total", "_bucket"].iter().fold(name, |n, s| n.strip_suffix(s).unwrap_or(n));
        assert!(
            metrics.contains(&format!("# TYPE {family} ")),
            "the Grafana dashboard queries {name}, which /metrics lacks"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_responses_burn_the_latency_slo_and_page() {
    let app = DemoApp::start("a");
    let (hook_port, mut hooks) = receiver().await;
    let body = format!(
        r#"{ROUTE_ALL}{tg}
[watch]
resolution = "250ms"

[notifiers.ops]
webhook = "http://127.0.0.1:{hook_port}/hook"

[[slos]]
name = "web-latency"
target_group = "web"
objective = "99%"
latency = "200ms"
window = "30d"
notify = ["ops"]

[[slos]]
name = "web-availability"
target_group = "web"
objective = "99.9%"
kind = "availability"
"#,
        tg = group_toml("web", &[&app], "")
    );
    let f = Flotilla::start("watch-slo", &body);
    f.wait_target_state("web", &app.addr(), "healthy", Duration::from_secs(10)).await;
    // A quarter of the requests take 300 ms: 25 % bad against a 1 % budget, burn rate ~25.
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        for _ in 0..3 {
            assert_eq!(get(&f.url("/whoami")).await.0, 200);
        }
        assert_eq!(get(&f.url("/slow?ms=300")).await.0, 200);
    }
    let n = next_for_slo(&mut hooks, "web-latency", "fast_burn", Duration::from_secs(15)).await;
    assert_eq!(n["state"], "firing", "{n}");
    let (_, slos) = get(&f.admin("/api/v1/slos")).await;
    let v: Value = serde_json::from_str(&slos).unwrap();
    let lat = v["slos"].as_array().unwrap().iter().find(|s| s["name"] == "web-latency").unwrap();
    assert_eq!(lat["kind"], "latency <= 0.2s", "{lat}");
    let burn = lat["burn_rates"]["5m"].as_f64().unwrap();
    assert!(burn > 14.4, "{lat}");
    assert!(lat["error_budget_remaining"].as_f64().unwrap() < 0.0, "{lat}");
    // p99 from the fine buckets: a quarter of the requests slept 300 ms, so p99 is at least that
    // (less the ~3 % bucket width), never the classic histogram's 0.2-0.5 s interpolation.
    let (_, q) = get(&f.admin("/api/v1/metrics/query?name=http_latency_p99&labels=target_group=web&from=-1m")).await;
    let q: Value = serde_json::from_str(&q).unwrap();
    let p99 = q["points"].as_array().unwrap().iter().filter_map(|p| p["v"].as_f64()).fold(0.0, f64::max);
    assert!((0.29..2.0).contains(&p99), "{q}");
    // No 5xx: the availability SLO is met in full.
    let avail = v["slos"].as_array().unwrap().iter().find(|s| s["name"] == "web-availability").unwrap();
    assert_eq!(avail["attainment"].as_f64(), Some(1.0), "{avail}");
    assert_eq!(avail["fast_burn"], false);
}

async fn next_for_slo(rx: &mut mpsc::UnboundedReceiver<Value>, slo: &str, alert: &str, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some(v)) if v["slo"] == slo && v["alert"] == alert => return v,
            Ok(Some(_)) => continue,
            _ => panic!("no {alert} notification for {slo} within {limit:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_survives_a_restart() {
    let app = DemoApp::start("a");
    let data = scratch_dir("watch-data");
    let body = format!(
        "{ROUTE_ALL}{}\n[watch]\nresolution = \"200ms\"\ndata_dir = \"{}\"\n",
        group_toml("web", &[&app], ""),
        data.display()
    );
    let mut f = Flotilla::start("watch-persist-1", &body);
    f.wait_target_state("web", &app.addr(), "healthy", Duration::from_secs(10)).await;
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        let _ = get(&f.url("/whoami")).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    f.proc.signal("TERM");
    assert_eq!(f.proc.wait_exit(Duration::from_secs(20)), Some(0));
    let stopped = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    let segments = std::fs::read_dir(data.join("watch")).unwrap().count();
    assert!(segments >= 1, "the history is in segment files");

    // A new process with the same data_dir answers queries about the time before it started.
    let f2 = Flotilla::start("watch-persist-2", &body);
    let (_, q) = get(&f2.admin(&format!("/api/v1/metrics/query?name=http_requests_rate&from=-5m&to={stopped}"))).await;
    let q: Value = serde_json::from_str(&q).unwrap();
    let points = q["points"].as_array().unwrap();
    assert!(points.iter().any(|p| p["v"].as_f64().unwrap() > 0.0), "{q}");
    assert!(f2.log().contains("watch history restored"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_budget_alerts_on_forecast_and_actual_then_caps_scale_out() {
    let (hook_port, mut hooks) = receiver().await;
    // 3600 per instance-hour = 1 per instance-second: one instance spends 4 in ~4 s.
    let body = format!(
        r#"{ROUTE_ALL}{tg}
[groups.web]
target_group = "web"
min = 1
max = 3
[groups.web.launch]
command = ["flotilla", "demo-app", "--port", "{{port}}", "--id", "{{instance}}"]

[watch]
resolution = "250ms"

[notifiers.ops]
webhook = "http://127.0.0.1:{hook_port}/hook"

[budget]
currency = "EUR"
monthly = 4
instance_hour = {{ web = 3600 }}
alerts = [0.5, 1.0]
notify = ["ops"]
hard_cap = true
"#,
        tg = group_toml("web", &[], "")
    );
    let f = Flotilla::start("watch-budget", &body);
    // The forecast crosses both thresholds as soon as the instance is billed; actual spend later.
    let v = next_budget(&mut hooks, "forecast", 1.0).await;
    assert!(v["forecast"].as_f64().unwrap() > 4.0, "{v}");
    let v = next_budget(&mut hooks, "actual", 1.0).await;
    assert!(v["spent"].as_f64().unwrap() >= 4.0 && v["currency"] == "EUR", "{v}");
    let (_, b) = get(&f.admin("/api/v1/budget")).await;
    let b: Value = serde_json::from_str(&b).unwrap();
    assert_eq!(b["capped"], true, "{b}");
    assert!(b["by_group"]["web"].as_f64().unwrap() >= 4.0, "{b}");
    // The fleet refuses to scale out while the cap holds.
    let (status, body) = f.admin_call("PUT", "/api/v1/groups/web/desired", "{\"desired\": 2}").await;
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("the account budget is spent"), "{body}");
}

/// The month's spend, the alerts already sent and both hard caps (the account's and a group's)
/// survive a restart — a crash right after an alert, then a clean stop — and no alert is sent or
/// recorded twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budget_spend_alerts_and_caps_survive_a_restart() {
    let (hook_port, mut hooks) = receiver().await;
    let data = scratch_dir("budget-data");
    // 3600 per instance-hour = 1 per instance-second.
    let body = format!(
        r#"{ROUTE_ALL}{tg}
[groups.web]
target_group = "web"
min = 1
max = 3
[groups.web.launch]
command = ["flotilla", "demo-app", "--port", "{{port}}", "--id", "{{instance}}"]
[groups.web.budget]
price_per_instance_hour = 3600
monthly = 3
alerts = [100]
hard_cap = true

[watch]
resolution = "250ms"
data_dir = "{data}"

[notifiers.ops]
webhook = "http://127.0.0.1:{hook_port}/hook"

[budget]
currency = "EUR"
monthly = 4
instance_hour = {{ web = 3600 }}
alerts = [0.5, 1.0]
notify = ["ops"]
hard_cap = true
"#,
        tg = group_toml("web", &[], ""),
        data = data.display()
    );
    let mut f = Flotilla::start("budget-keep-1", &body);
    next_budget(&mut hooks, "forecast", 1.0).await;
    next_budget(&mut hooks, "actual", 1.0).await;
    // A crash right after the alert: nothing is saved on the way out.
    f.proc.signal("KILL");
    f.proc.wait_exit(Duration::from_secs(10));

    let mut f2 = Flotilla::start("budget-keep-2", &body);
    let b: Value = serde_json::from_str(&get(&f2.admin("/api/v1/budget")).await.1).unwrap();
    assert_eq!(b["capped"], true, "the account's cap holds from the first moment: {b}");
    assert!(b["spent"].as_f64().unwrap() >= 4.0, "{b}");
    let fired = b["alerts_fired"].to_string();
    assert!(fired.contains("actual 100 %") && fired.contains("forecast 100 %"), "{b}");
    let g = f2.group("web").await;
    assert_eq!(g["budget"]["capped"], true, "the group's cap holds too: {g}");
    assert!(g["budget"]["spent"].as_f64().unwrap() >= 3.0, "{g}");
    let (status, text) = f2.admin_call("PUT", "/api/v1/groups/web/desired", "{\"desired\": 2}").await;
    assert_eq!(status, 422, "{text}");
    // Spend goes on; no alert is sent or recorded again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    while let Ok(v) = hooks.try_recv() {
        assert!(v.get("budget").is_none(), "an alert was sent twice: {v}");
    }
    let (_, activity) = get(&f2.admin("/api/v1/groups/web/activity")).await;
    assert!(!activity.contains("Budget alert"), "{activity}");
    let b: Value = serde_json::from_str(&get(&f2.admin("/api/v1/budget")).await.1).unwrap();
    let spent = b["spent"].as_f64().unwrap();
    // A clean stop saves what accrued since.
    f2.proc.signal("TERM");
    assert_eq!(f2.proc.wait_exit(Duration::from_secs(20)), Some(0));
    let f3 = Flotilla::start("budget-keep-3", &body);
    let b: Value = serde_json::from_str(&get(&f3.admin("/api/v1/budget")).await.1).unwrap();
    assert!(b["spent"].as_f64().unwrap() >= spent, "{b} after {spent}");
    assert!(f3.log().contains("the month's account budget restored"), "{}", f3.log());
}

async fn next_budget(rx: &mut mpsc::UnboundedReceiver<Value>, kind: &str, threshold: f64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some(v)) if v["kind"] == kind && v["threshold"].as_f64() == Some(threshold) => return v,
            Ok(Some(_)) => continue,
            _ => panic!("no {kind} budget alert at {threshold}"),
        }
    }
}

/// A total outage is what clients see: with the group's only target gone, every client gets the
/// edge's own 502, and the 5xx alarm, the availability SLO and the 5xx series count them, while
/// the targets' own series (`target_http_requests_5xx_rate`) show none — the ALB split between
/// `HTTPCode_ELB_5XX` and `HTTPCode_Target_5XX`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_total_outage_reaches_the_5xx_alarm_and_the_availability_slo() {
    let mut app = DemoApp::start("outage");
    let (hook_port, mut hooks) = receiver().await;
    let body = format!(
        r#"{ROUTE_ALL}{tg}
[watch]
resolution = "250ms"

[notifiers.ops]
webhook = "http://127.0.0.1:{hook_port}/hook"

[[alarms]]
name = "web-5xx"
metric = "http_requests_5xx_rate"
labels = {{ target_group = "web" }}
statistic = "max"
period = "1s"
evaluation_periods = 2
datapoints_to_alarm = 2
threshold = 0
comparison = ">"
missing_data = "not_breaching"
notify = ["ops"]

[[slos]]
name = "web-availability"
target_group = "web"
objective = "99.9%"
kind = "availability"
"#,
        tg = group_toml("web", &[&app], "retries = 0")
    );
    let f = Flotilla::start("watch-outage", &body);
    f.wait_target_state("web", &app.addr(), "healthy", Duration::from_secs(10)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while alarm_state(&f, "web-5xx").await != "OK" {
        let _ = get(&f.url("/whoami")).await;
        assert!(Instant::now() < deadline, "web-5xx never reached OK");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.proc.kill9();
    let until = Instant::now() + Duration::from_secs(4);
    let mut edge_502 = 0;
    while Instant::now() < until {
        let (status, _) = get(&f.url("/whoami")).await;
        assert!(status == 502 || status == 503, "{status}");
        edge_502 += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let n = next_for(&mut hooks, "web-5xx", "ALARM", Duration::from_secs(15)).await;
    assert_eq!(n["previous_state"], "OK", "{n}");
    let query = |name: &'static str| {
        let url = f.admin(&format!("/api/v1/metrics/query?name={name}&labels=target_group=web&from=-1m"));
        async move {
            let (_, q) = get(&url).await;
            let q: Value = serde_json::from_str(&q).unwrap();
            q["points"].as_array().unwrap().iter().filter_map(|p| p["v"].as_f64()).fold(0.0, f64::max)
        }
    };
    assert!(query("http_requests_5xx_rate").await > 1.0, "the clients' view counts the edge's 502s");
    assert_eq!(query("target_http_requests_5xx_rate").await, 0.0, "the targets answered no 5xx");
    let (_, slos) = get(&f.admin("/api/v1/slos")).await;
    let v: Value = serde_json::from_str(&slos).unwrap();
    let avail = v["slos"].as_array().unwrap().iter().find(|s| s["name"] == "web-availability").unwrap();
    assert!(avail["attainment"].as_f64().unwrap() < 0.9, "{edge_502} failed requests must burn the SLO: {avail}");
    let (_, metrics) = get(&f.admin("/metrics")).await;
    assert!(
        metrics
            .contains("flotilla_http_requests_total{target_group=\"web\",target=\"-\",class=\"5xx\",source=\"edge\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("flotilla_route_requests_total{route=\"/*\",class=\"5xx\",source=\"edge\"}"), "{metrics}");
}
