//! Router tests with `oneshot`: no admin socket, a real edge bound to an ephemeral port.

use std::path::Path;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;

use super::*;

struct NoReload;
impl Control for NoReload {
    fn reload(&self) -> Result<(), String> {
        Err("f.toml:1:1: nope".into())
    }
}

struct NoRegistrar;
impl flotilla_fleet::Registrar for NoRegistrar {
    fn register(&self, _: &str, _: std::net::SocketAddr, _: Option<&str>) -> Result<(), String> {
        Err("no".into())
    }
    fn deregister(&self, _: &str, _: std::net::SocketAddr) {}
    fn status(&self, _: &str, _: std::net::SocketAddr) -> Option<flotilla_fleet::TargetStatus> {
        None
    }
}

fn state() -> AdminState {
    let text = r#"
[edge]
listen = ["127.0.0.1:0"]
access_log = false
[[routes]]
target_group = "web"
[target_groups.web]
targets = ["127.0.0.1:1"]
[target_groups.web.health_check]
interval = "1h"
timeout = "1s"
"#;
    let cfg = flotilla_config::parse(Path::new("t.toml"), text, &|_| None).unwrap();
    let edge = Arc::new(Edge::new(&cfg).unwrap());
    edge.start(&cfg).unwrap();
    let fleet = Arc::new(flotilla_fleet::Fleet::start(&cfg, Arc::new(NoRegistrar)));
    let (e2, f2) = (edge.clone(), fleet.clone());
    let watch = flotilla_watch::Watch::start(&cfg, Arc::new(move || exposition_for_watch(&e2, &f2, &NoReload)));
    AdminState {
        edge,
        fleet,
        watch,
        access: access::Access::token_only(Some("secret".into())),
        control: Arc::new(NoReload),
        cluster: None,
    }
}

async fn call(state: &AdminState, method: &str, uri: &str, token: Option<&str>, body: &str) -> (StatusCode, String) {
    let mut req = Request::builder().method(method).uri(uri).header("content-type", "application/json");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = router(state.clone()).oneshot(req.body(Body::from(body.to_string())).unwrap()).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

#[tokio::test]
async fn health_lists_groups() {
    let s = state();
    let (status, body) = call(&s, "GET", "/health", None, "").await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("\"status\":\"ok\"") && body.contains("\"web\""), "{body}");
}

#[tokio::test]
async fn mutating_calls_need_the_token() {
    let s = state();
    let add = r#"{"addr":"127.0.0.1:2","zone":"b"}"#;
    assert_eq!(call(&s, "POST", "/api/v1/target-groups/web/targets", None, add).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(
        call(&s, "POST", "/api/v1/target-groups/web/targets", Some("bad"), add).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(call(&s, "POST", "/api/v1/reload", None, "").await.0, StatusCode::UNAUTHORIZED);
    let (status, _) = call(&s, "POST", "/api/v1/target-groups/web/targets", Some("secret"), add).await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, list) = call(&s, "GET", "/api/v1/target-groups", None, "").await;
    assert!(list.contains("127.0.0.1:2") && list.contains("\"initial\""), "{list}");
    let (status, _) = call(&s, "DELETE", "/api/v1/target-groups/web/targets/127.0.0.1:2", Some("secret"), "").await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (_, list) = call(&s, "GET", "/api/v1/target-groups", None, "").await;
    assert!(list.contains("\"draining\"") || !list.contains("127.0.0.1:2"), "{list}");
}

#[tokio::test]
async fn bad_input_gets_clear_errors() {
    let s = state();
    let (status, body) =
        call(&s, "POST", "/api/v1/target-groups/web/targets", Some("secret"), r#"{"addr":"nope"}"#).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, _) =
        call(&s, "POST", "/api/v1/target-groups/nope/targets", Some("secret"), r#"{"addr":"127.0.0.1:3"}"#).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = call(&s, "POST", "/api/v1/reload", Some("secret"), "").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(body.contains("f.toml:1:1"), "{body}");
}

#[tokio::test]
async fn metrics_are_prometheus_text() {
    let s = state();
    let (status, body) = call(&s, "GET", "/metrics", None, "").await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("flotilla_targets{target_group=\"web\",state=\"initial\"} 1"), "{body}");
    assert!(body.contains("# TYPE flotilla_active_connections gauge"), "{body}");
}
