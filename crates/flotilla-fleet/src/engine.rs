//! The one Docker Engine API client both container drivers use ([`crate::docker`] for plain
//! containers, [`crate::swarm`] for Swarm services): HTTP/1.1 over the daemon's unix socket, every
//! answer bounded in size and time.
//!
//! A small client over hyper (already in the tree) rather than `bollard`: the fleet needs a dozen
//! endpoints, and bollard adds ~80 crates (48 s of a cold build on 2 cores). What the daemon
//! answers is input like any other: bodies are capped at [`MAX_BODY`], calls at [`CALL_TIMEOUT`].

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::UnixStream;

/// API calls that do not stream must answer within this.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest non-streaming answer read (inspect, stats and errors are a few KiB).
pub(crate) const MAX_BODY: usize = 1 << 20;
/// `/_ping` must answer within this for the daemon to count as reachable.
const PING_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot reach the Docker daemon at {path}: {source}")]
    Connect { path: String, source: std::io::Error },
    #[error("Docker API {what}: {message}")]
    Api { what: String, message: String },
}

/// The daemon's unix socket: `DOCKER_HOST=unix://…` or `/var/run/docker.sock`.
#[derive(Debug, Clone)]
pub struct Engine {
    socket: PathBuf,
}

impl Default for Engine {
    fn default() -> Self {
        let socket = std::env::var("DOCKER_HOST")
            .ok()
            .and_then(|h| h.strip_prefix("unix://").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("/var/run/docker.sock"));
        Self { socket }
    }
}

impl Engine {
    /// One request on a fresh connection; the answer's body is the caller's to read (or stream).
    pub(crate) async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<hyper::Response<Incoming>, EngineError> {
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|source| EngineError::Connect { path: self.socket.display().to_string(), source })?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| api(path, e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req =
            hyper::Request::builder().method(method).uri(format!("http://docker/v1.41{path}")).header("host", "docker");
        let body = match body {
            Some(v) => {
                req = req.header("content-type", "application/json");
                Bytes::from(v.to_string())
            }
            None => Bytes::new(),
        };
        let req = req.body(Full::new(body)).map_err(|e| api(path, e.to_string()))?;
        sender.send_request(req).await.map_err(|e| api(path, e.to_string()))
    }

    /// One call with a bounded answer; non-2xx becomes an error carrying Docker's message.
    pub(crate) async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, EngineError> {
        let fut = async {
            let resp = self.send(method, path, body).await?;
            let status = resp.status();
            let limited = http_body_util::Limited::new(resp.into_body(), MAX_BODY);
            let bytes = limited.collect().await.map_err(|e| api(path, e.to_string()))?.to_bytes();
            let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            if status.is_success() {
                Ok(v)
            } else {
                let msg = v["message"].as_str().map(String::from).unwrap_or_else(|| status.to_string());
                Err(api(&format!("{method} {path}"), msg))
            }
        };
        tokio::time::timeout(CALL_TIMEOUT, fut).await.unwrap_or_else(|_| Err(api(path, "timed out".into())))
    }

    /// True when the daemon answers `/_ping`.
    pub async fn available(&self) -> bool {
        let fut = async {
            let resp = self.send("GET", "/_ping", None).await.ok()?;
            Some(resp.status().is_success())
        };
        tokio::time::timeout(PING_TIMEOUT, fut).await.ok().flatten().unwrap_or(false)
    }
}

pub(crate) fn api(what: &str, message: String) -> EngineError {
    EngineError::Api { what: what.to_string(), message }
}

/// Percent-encodes a query value (filters are JSON).
pub(crate) fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(urlencode(r#"{"label":["a=b"]}"#), "%7B%22label%22%3A%5B%22a%3Db%22%5D%7D");
        assert_eq!(urlencode("web-1_x.y~"), "web-1_x.y~");
    }
}
