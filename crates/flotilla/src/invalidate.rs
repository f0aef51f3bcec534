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
    Ok(())
}
