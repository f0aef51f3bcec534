//! WebSocket (HTTP/1.1 Upgrade) pass-through: forward the handshake, and on 101 splice the two
//! upgraded connections together. The in-flight guard lives as long as the tunnel.

use std::net::SocketAddr;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::body::{empty, Body};
use crate::context::{Call, Outcome};
use crate::error::ProxyError;
use crate::group::{PickRequest, TargetGroup};
use crate::pool::SendError;
use crate::upstream::{finish, outgoing, prepare_headers};

pub(crate) async fn forward(
    call: Call<'_>,
    group: &TargetGroup,
    mut req: Request<Incoming>,
    out: &mut Outcome,
) -> Result<Response<Body>, ProxyError> {
    let Call { rt, conn, client, host, rid, .. } = call;
    let cfg = group.config();
    let client_upgrade = hyper::upgrade::on(&mut req);
    let (mut parts, _body) = req.into_parts();
    prepare_headers(&mut parts, conn, client, host, rid, &rt.request_id_header, true);
    let sticky_in =
        cfg.stickiness.enabled.then(|| crate::headers::cookie(&parts.headers, &cfg.stickiness.cookie)).flatten();
    let mut tried: Vec<SocketAddr> = Vec::new();
    loop {
        let target = group
            .pick(&PickRequest { sticky: sticky_in, hash_key: None, exclude: &tried })
            .ok_or(if tried.is_empty() { ProxyError::NoTarget } else { ProxyError::TargetConnect })?;
        out.attempts += 1;
        out.target = Some(target.addr);
        let guard = target.begin();
        let request = outgoing(&parts, empty());
        match tokio::time::timeout(rt.timeouts.target_response, conn.pool.send(target.addr, request)).await {
            Err(_) => return Err(ProxyError::TargetTimeout),
            // Nothing reached the target: safe to try another.
            Ok(Err(SendError::Connect(_))) => {
                group.report_connect_failure(&target);
                tried.push(target.addr);
                if tried.len() > cfg.retries as usize {
                    return Err(ProxyError::TargetConnect);
                }
            }
            Ok(Err(SendError::Failed(_))) => {
                group.report_connect_failure(&target);
                return Err(ProxyError::TargetReset);
            }
            Ok(Ok((mut resp, lease))) => {
                group.report_response(&target, resp.status().as_u16());
                if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
                    out.source = crate::metrics::Source::Target;
                    return Ok(finish(resp, &target, guard, Some(lease), &cfg.stickiness, sticky_in, client.https));
                }
                out.source = crate::metrics::Source::Target;
                // An upgraded connection never goes back to the pool.
                drop(lease);
                target.by_class[0].inc();
                let target_upgrade = hyper::upgrade::on(&mut resp);
                let addr = target.addr;
                let idle = rt.timeouts.idle;
                tokio::spawn(async move {
                    let _in_flight = guard;
                    match tokio::try_join!(client_upgrade, target_upgrade) {
                        Ok((c, t)) => tunnel(TokioIo::new(c), TokioIo::new(t), idle, addr).await,
                        Err(e) => tracing::debug!(target = %addr, error = %e, "upgrade failed"),
                    }
                });
                let (parts, _) = resp.into_parts();
                return Ok(Response::from_parts(parts, empty()));
            }
        }
    }
}

/// Copies bytes both ways until either side closes or nothing moves for `idle`, so abandoned
/// WebSocket connections do not pin a target forever (ALB applies its idle timeout the same way).
async fn tunnel<A, B>(client: A, target: B, idle: std::time::Duration, addr: SocketAddr)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (mut cr, mut cw) = tokio::io::split(client);
    let (mut tr, mut tw) = tokio::io::split(target);
    // On the heap: as arrays they made this future (and the spawned task) 33 KB, copied on
    // every spawn (-Zprint-type-sizes).
    let mut up = vec![0u8; 16 * 1024];
    let mut down = vec![0u8; 16 * 1024];
    loop {
        let step = tokio::time::timeout(idle, async {
            tokio::select! {
                r = cr.read(&mut up) => match r {
                    Ok(0) | Err(_) => Err(()),
                    Ok(n) => tw.write_all(&up[..n]).await.map_err(|_| ()),
                },
                r = tr.read(&mut down) => match r {
                    Ok(0) | Err(_) => Err(()),
                    Ok(n) => cw.write_all(&down[..n]).await.map_err(|_| ()),
                },
            }
        })
        .await;
        match step {
            Ok(Ok(())) => {}
            Ok(Err(())) => break,
            Err(_) => {
                tracing::debug!(target = %addr, after = ?idle, "closing idle upgraded connection");
                break;
            }
        }
    }
    let _ = cw.shutdown().await;
    let _ = tw.shutdown().await;
}
