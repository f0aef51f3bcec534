//! Active health checks: one task per target, consecutive-success / consecutive-failure
//! thresholds as in ALB and pingora. Passive ejection lives in `group.rs`; this loop is what
//! brings an ejected target back.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use flotilla_config::HealthCheck;
use http_body_util::Empty;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::group::TargetGroup;
use crate::target::{Target, TargetState};

pub(crate) type Client = hyper_util::client::legacy::Client<HttpConnector, Empty<Bytes>>;

pub(crate) fn client() -> Client {
    let mut conn = HttpConnector::new();
    conn.set_nodelay(true);
    conn.set_connect_timeout(Some(Duration::from_secs(5)));
    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(1)
        .build(conn)
}

pub(crate) fn spawn(group: Arc<TargetGroup>, target: Arc<Target>) {
    tokio::spawn(async move {
        // A short random delay spreads checks of many targets and makes new targets usable fast.
        tokio::time::sleep(Duration::from_millis(fastrand::u64(0..50))).await;
        while !target.removed.load(Ordering::Acquire) {
            let cfg = group.config();
            let hc = &cfg.health_check;
            if !hc.enabled {
                target.transition(TargetState::Healthy);
                return;
            }
            let result = probe(group.health_client(), &target, hc).await;
            record(&group, &target, hc, result);
            tokio::time::sleep(hc.interval).await;
        }
    });
}

/// One check: `Ok(status)` if the target answered in time, else why not.
async fn probe(client: &Client, target: &Target, hc: &HealthCheck) -> Result<u16, String> {
    let uri = format!("http://{}{}", target.addr, hc.path);
    let req = http::Request::get(uri)
        .header(http::header::USER_AGENT, "flotilla-health-check")
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(hc.timeout, client.request(req)).await {
        Ok(Ok(resp)) => Ok(resp.status().as_u16()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("timed out after {:?}", hc.timeout)),
    }
}

fn record(group: &TargetGroup, target: &Target, hc: &HealthCheck, result: Result<u16, String>) {
    let passed = matches!(result, Ok(s) if hc.is_healthy_status(s));
    let state = target.state();
    if passed {
        target.fail_streak.store(0, Ordering::Relaxed);
        let n = target.ok_streak.fetch_add(1, Ordering::Relaxed) + 1;
        if matches!(state, TargetState::Initial | TargetState::Unhealthy) && n >= hc.healthy_threshold {
            if let Some(from) = target.transition(TargetState::Healthy) {
                tracing::info!(target_group = %group.name, target = %target.addr, from = from.as_str(), "target healthy");
            }
        }
    } else {
        target.ok_streak.store(0, Ordering::Relaxed);
        let n = target.fail_streak.fetch_add(1, Ordering::Relaxed) + 1;
        if matches!(state, TargetState::Initial | TargetState::Healthy) && n >= hc.unhealthy_threshold {
            if let Some(from) = target.transition(TargetState::Unhealthy) {
                let reason = match &result {
                    Ok(status) => format!("status {status}"),
                    Err(e) => e.clone(),
                };
                tracing::warn!(target_group = %group.name, target = %target.addr, from = from.as_str(), reason, "target unhealthy");
            }
        }
    }
}
