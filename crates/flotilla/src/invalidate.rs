//! `flotilla invalidate`: the admin API's invalidation calls from the command line.

use std::path::Path;

use anyhow::bail;

use crate::admin_client;

pub async fn run(config: &Path, paths: Vec<String>, tags: Vec<String>, all: bool) -> anyhow::Result<()> {
    if paths.is_empty() && tags.is_empty() && !all {
        bail!("name paths (`/app.css`, `/img/*`), --tag TAG, or --all");
    }
    let (path, body) = if all {
        ("/api/v1/deployments", String::new())
    } else {
        ("/api/v1/invalidations", serde_json::json!({ "paths": paths, "tags": tags }).to_string())
    };
    let text = admin_client::call(config, http::Method::POST, path, Some(body)).await?;
    println!("{}", text.trim());
    // In a cluster the answer says how far the invalidation got; a script must not take
    // "not everywhere yet" for done.
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    match v["status"].as_str() {
        Some("incomplete") => bail!(
            "not acknowledged by every node within cluster.invalidation_wait: {}",
            v["cluster"]["pending"]
        ),
        Some("local") => bail!(
            "applied on this node only (Redis unreachable: {}); it is journaled and will reach the others when Redis returns",
            v["cluster"]["error"].as_str().unwrap_or("?")
        ),
        _ => Ok(()),
    }
}
