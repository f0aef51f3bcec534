//! `flotilla status`: a compact view of everything in the terminal — target health, group
//! capacity, request rates, latency, alarms and SLOs — from the dashboard's data call. With
//! `--watch` it redraws every two seconds.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::Value;

use crate::admin_client;

pub async fn run(config: &Path, watch: bool) -> anyhow::Result<()> {
    loop {
        let text = admin_client::call(config, http::Method::GET, "/api/v1/dashboard", None).await?;
        let v: Value = serde_json::from_str(&text)?;
        let mut out = render(&v);
        // A single node answers 404 here: no cluster section then.
        let has_cluster = flotilla_config::load(config).is_ok_and(|c| c.cluster.is_some());
        if has_cluster {
            match admin_client::call(config, http::Method::GET, "/api/v1/cluster", None).await {
                Ok(text) => out.push_str(&render_cluster(&serde_json::from_str(&text)?)),
                Err(e) => out.push_str(&format!("\ncluster: {e}\n")),
            }
        }
        if watch {
            // Clear the screen and home the cursor, then draw.
            print!("\x1b[2J\x1b[H{out}");
        } else {
            print!("{out}");
        }
        if !watch {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    }
}

/// The cluster as `GET /api/v1/cluster` shows it: nodes, what they lead, how far behind the
/// invalidation stream each is.
fn render_cluster(v: &Value) -> String {
    let mut o = String::new();
    let redis = if v["redis"]["up"] == true {
        "up".to_string()
    } else {
        format!("DOWN ({})", v["redis"]["error"].as_str().unwrap_or("?"))
    };
    let _ = writeln!(
        o,
        "\ncluster   redis {} {}   invalidations journaled {}",
        v["redis"]["url"].as_str().unwrap_or("?"),
        redis,
        v["invalidations_journaled"]
    );
    for n in v["nodes"].as_array().into_iter().flatten() {
        let leads: Vec<&str> = n["leads"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        let _ = writeln!(
            o,
            "  {}{:<12} {:<22} applied {:<18} {}  heartbeat {} ms ago{}{}",
            if n["this"] == true { "*" } else { " " },
            n["name"].as_str().unwrap_or("?"),
            n["address"].as_str().unwrap_or("?"),
            n["applied"].as_str().unwrap_or("?"),
            if n["behind"] == true { format!("lag {} ms", n["lag_ms"]) } else { "in step".into() },
            n["heartbeat_age_ms"],
            if leads.is_empty() { String::new() } else { format!("  leads {}", leads.join(", ")) },
            if n["config_differs"] == true { "  CONFIG DIFFERS" } else { "" },
        );
    }
    o
}

fn last(series: &Value) -> Option<f64> {
    series.as_array()?.last()?.as_array()?.get(1)?.as_f64()
}

fn num(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |x| format!("{x:.digits$}"))
}

fn render(v: &Value) -> String {
    let mut o = String::new();
    let s = &v["series"];
    let ms = |k: &str| last(&s["latency"][k]).map(|x| x * 1000.0);
    let _ = writeln!(
        o,
        "requests {}/s   2xx {}  4xx {}  5xx {}   latency p50 {} p95 {} p99 {} ms   cache hits {}",
        num(last(&s["requests"]), 1),
        num(last(&s["classes"]["2xx"]), 1),
        num(last(&s["classes"]["4xx"]), 1),
        num(last(&s["classes"]["5xx"]), 1),
        num(ms("p50"), 1),
        num(ms("p95"), 1),
        num(ms("p99"), 1),
        last(&s["cache_hit_ratio"]).map_or("-".into(), |r| format!("{:.1} %", r * 100.0)),
    );
    let _ = writeln!(o, "\ntarget groups");
    for g in v["target_groups"].as_array().into_iter().flatten() {
        let targets: Vec<String> = g["targets"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| format!("{} {}", t["addr"].as_str().unwrap_or("?"), t["state"].as_str().unwrap_or("?")))
            .collect();
        let _ = writeln!(o, "  {:<12} {}", g["name"].as_str().unwrap_or("?"), targets.join(", "));
    }
    let groups = v["groups"].as_array().cloned().unwrap_or_default();
    if !groups.is_empty() {
        let _ = writeln!(o, "\nauto scaling groups");
        for g in &groups {
            let count =
                |st: &str| g["instances"].as_array().map_or(0, |a| a.iter().filter(|i| i["state"] == st).count());
            let _ = writeln!(
                o,
                "  {:<12} desired {} [{}-{}]  in service {}  pending {}  draining {}",
                g["name"].as_str().unwrap_or("?"),
                g["desired"],
                g["min"],
                g["max"],
                count("in_service"),
                count("pending"),
                count("draining") + count("terminating")
            );
        }
    }
    let alarms = v["alarms"].as_array().cloned().unwrap_or_default();
    if !alarms.is_empty() {
        let _ = writeln!(o, "\nalarms");
        for a in &alarms {
            let _ = writeln!(
                o,
                "  {:<24} {:<18} {}",
                a["name"].as_str().unwrap_or("?"),
                a["state"].as_str().unwrap_or("?"),
                a["metric"].as_str().unwrap_or("")
            );
        }
    }
    let slos = v["slos"].as_array().cloned().unwrap_or_default();
    if !slos.is_empty() {
        let _ = writeln!(o, "\nslos");
        for x in &slos {
            let alerts = match (x["fast_burn"].as_bool(), x["slow_burn"].as_bool()) {
                (Some(true), _) => "FAST BURN",
                (_, Some(true)) => "slow burn",
                _ => "ok",
            };
            let _ = writeln!(
                o,
                "  {:<24} attainment {}  budget left {}  burn 1h {}  {alerts}",
                x["name"].as_str().unwrap_or("?"),
                x["attainment"].as_f64().map_or("-".into(), |a| format!("{:.3} %", a * 100.0)),
                x["error_budget_remaining"].as_f64().map_or("-".into(), |b| format!("{:.1} %", b * 100.0)),
                num(x["burn_rates"]["1h"].as_f64(), 2),
            );
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_lines_name_lag_and_config_drift() {
        let v = serde_json::json!({
            "redis": { "url": "redis://127.0.0.1:6379/0", "up": true },
            "invalidations_journaled": 0,
            "nodes": [
                { "name": "edge-1", "address": "127.0.0.1:9091", "applied": "5-0", "behind": false, "lag_ms": 0,
                  "heartbeat_age_ms": 120, "leads": [], "config_differs": false, "this": true },
                { "name": "edge-2", "address": "127.0.0.1:9092", "applied": "3-0", "behind": true, "lag_ms": 2500,
                  "heartbeat_age_ms": 900, "leads": ["web"], "config_differs": true, "this": false },
            ],
        });
        let out = render_cluster(&v);
        assert!(out.contains("redis redis://127.0.0.1:6379/0 up"), "{out}");
        assert!(out.contains("*edge-1") && out.contains("in step"), "{out}");
        assert!(out.contains("lag 2500 ms") && out.contains("leads web") && out.contains("CONFIG DIFFERS"), "{out}");
    }
}
