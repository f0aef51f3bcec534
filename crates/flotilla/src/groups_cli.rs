//! `flotilla groups`, `flotilla scale` and `flotilla activity`: the fleet's admin API from the
//! command line, printed as tables (or raw JSON with --json).

use std::path::Path;

use serde_json::Value;

use crate::admin_client;

pub async fn list(config: &Path, json: bool) -> anyhow::Result<()> {
    let text = admin_client::call(config, http::Method::GET, "/api/v1/groups", None).await?;
    if json {
        println!("{}", text.trim());
        return Ok(());
    }
    let v: Value = serde_json::from_str(&text)?;
    for g in v["groups"].as_array().into_iter().flatten() {
        print_group(g);
    }
    Ok(())
}

pub async fn scale(config: &Path, group: &str, desired: u32, json: bool) -> anyhow::Result<()> {
    let body = serde_json::json!({ "desired": desired }).to_string();
    let path = format!("/api/v1/groups/{group}/desired");
    let text = admin_client::call(config, http::Method::PUT, &path, Some(body)).await?;
    if json {
        println!("{}", text.trim());
    } else {
        print_group(&serde_json::from_str(&text)?);
    }
    Ok(())
}

pub async fn activity(config: &Path, group: &str, json: bool) -> anyhow::Result<()> {
    let path = format!("/api/v1/groups/{group}/activity");
    let text = admin_client::call(config, http::Method::GET, &path, None).await?;
    if json {
        println!("{}", text.trim());
        return Ok(());
    }
    let v: Value = serde_json::from_str(&text)?;
    for a in v["activity"].as_array().into_iter().flatten() {
        println!(
            "{}  {:<11} {}\n{:33}{}",
            a["time"].as_str().unwrap_or(""),
            a["status"].as_str().unwrap_or(""),
            a["description"].as_str().unwrap_or(""),
            "",
            a["cause"].as_str().unwrap_or("")
        );
    }
    Ok(())
}

fn print_group(g: &Value) {
    println!(
        "{}  desired {}  (min {}, max {})  target group {}  launch template v{}",
        g["name"].as_str().unwrap_or("?"),
        g["desired"],
        g["min"],
        g["max"],
        g["target_group"].as_str().unwrap_or("?"),
        g["launch_version"]
    );
    for i in g["instances"].as_array().into_iter().flatten() {
        let cpu = i["cpu"].as_f64().map(|c| format!("{c:.0}%")).unwrap_or_else(|| "-".into());
        println!(
            "  {:<14} {:<12} {:<21} zone {:<6} v{:<3} cpu {:>5}  in flight {}",
            i["id"].as_str().unwrap_or("?"),
            i["state"].as_str().unwrap_or("?"),
            i["addr"].as_str().unwrap_or("?"),
            i["zone"].as_str().unwrap_or("-"),
            i["launch_version"],
            cpu,
            i["in_flight"]
        );
    }
}

pub struct RefreshArgs {
    pub group: String,
    pub min_healthy: u32,
    pub checkpoints: Vec<u32>,
    pub checkpoint_delay: String,
    pub no_rollback: bool,
    pub detach: bool,
}

/// Starts a refresh and, unless detached, follows it to the end with a progress line per change.
/// Exits non-zero when it fails, rolls back or is cancelled.
pub async fn refresh(config: &Path, a: RefreshArgs) -> anyhow::Result<()> {
    let body = serde_json::json!({
        "min_healthy_percentage": a.min_healthy,
        "checkpoints": a.checkpoints,
        "checkpoint_delay": a.checkpoint_delay,
        "auto_rollback": !a.no_rollback,
    });
    let path = format!("/api/v1/groups/{}/refresh", a.group);
    let text = admin_client::call(config, http::Method::POST, &path, Some(body.to_string())).await?;
    let mut v: Value = serde_json::from_str(&text)?;
    let mut last = String::new();
    loop {
        let line = format!(
            "refresh {}: {} {:>3} %  (launch template v{} -> v{}){}",
            v["id"],
            v["status"].as_str().unwrap_or("?"),
            v["percent_complete"],
            v["from_version"],
            v["to_version"],
            v["reason"].as_str().map(|r| format!("  {r}")).unwrap_or_default()
        );
        if line != last {
            println!("{line}");
            last = line;
        }
        match v["status"].as_str() {
            Some("successful") => return Ok(()),
            Some(s @ ("failed" | "rolled_back" | "cancelled")) => anyhow::bail!("refresh {}: {s}", v["id"]),
            _ if a.detach => return Ok(()),
            _ => {}
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        v = serde_json::from_str(&admin_client::call(config, http::Method::GET, &path, None).await?)?;
    }
}
