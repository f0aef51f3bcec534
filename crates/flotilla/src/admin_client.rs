//! A small client for CLI subcommands that call the admin API named in the config file (the
//! same file `flotilla up` runs), with its bearer token.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Sends `method path` with an optional JSON body; returns the response body on 2xx. Mutations
/// carry the admin token; reads carry a token when the config has one (the admin token, else the
/// read-only one), for APIs that protect reads (`admin.protect_reads`).
pub async fn call(config: &Path, method: http::Method, path: &str, body: Option<String>) -> anyhow::Result<String> {
    let auth = method != http::Method::GET;
    send(config, method, path, body, auth).await
}

async fn send(
    config: &Path,
    method: http::Method,
    path: &str,
    body: Option<String>,
    auth: bool,
) -> anyhow::Result<String> {
    let cfg = flotilla_config::load(config).map_err(|e| anyhow::anyhow!("{e}"))?;
    let admin = cfg.admin.with_context(|| format!("{}: no [admin] section, so no API to call", config.display()))?;
    let mut req = http::Request::builder().method(method.clone()).uri(format!("http://{}{path}", admin.listen));
    let token = match auth {
        true => Some(
            admin
                .token
                .with_context(|| format!("{}: admin.token is empty; mutating calls are disabled", config.display()))?,
        ),
        false => admin.token.or(admin.read_token),
    };
    if let Some(token) = token {
        req = req.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let req = req
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.unwrap_or_default())))?;
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let resp = tokio::time::timeout(Duration::from_secs(30), client.request(req))
        .await
        .context("the admin API did not answer within 30 s")?
        .with_context(|| format!("cannot reach the admin API at {}", admin.listen))?;
    let status = resp.status();
    let text = String::from_utf8_lossy(&resp.into_body().collect().await?.to_bytes()).into_owned();
    if !status.is_success() {
        let msg = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["error"].as_str().map(String::from))
            .unwrap_or_else(|| text.trim().to_string());
        bail!("admin API answered {status}: {msg}");
    }
    Ok(text)
}
