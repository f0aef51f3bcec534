//! `flotilla invalidate`: the admin API's invalidation calls from the command line, using the
//! admin address and token from the same config file `flotilla up` runs.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

pub async fn run(config: &Path, paths: Vec<String>, tags: Vec<String>, all: bool) -> anyhow::Result<()> {
    if paths.is_empty() && tags.is_empty() && !all {
        bail!("name paths (`/app.css`, `/img/*`), --tag TAG, or --all");
    }
    let cfg = flotilla_config::load(config).map_err(|e| anyhow::anyhow!("{e}"))?;
    let admin = cfg.admin.with_context(|| format!("{}: no [admin] section, so no API to call", config.display()))?;
    let token = admin
        .token
        .with_context(|| format!("{}: admin.token is empty; mutating calls are disabled", config.display()))?;
    let (path, body) = if all {
        ("/api/v1/deployments", String::new())
    } else {
        ("/api/v1/invalidations", serde_json::json!({ "paths": paths, "tags": tags }).to_string())
    };
    let req = http::Request::post(format!("http://{}{path}", admin.listen))
        .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))?;
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let resp = tokio::time::timeout(Duration::from_secs(30), client.request(req))
        .await
        .context("the admin API did not answer within 30 s")?
        .with_context(|| format!("cannot reach the admin API at {}", admin.listen))?;
    let status = resp.status();
    let text = String::from_utf8_lossy(&resp.into_body().collect().await?.to_bytes()).into_owned();
    if !status.is_success() {
        bail!("admin API answered {status}: {}", text.trim());
    }
    println!("{}", text.trim());
    Ok(())
}
