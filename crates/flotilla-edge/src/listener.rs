//! Accept loops and per-connection serving: the connection cap, TLS handshake with a deadline,
//! HTTP/1.1 + HTTP/2 (ALPN or prior knowledge) via hyper-util's auto builder, graceful drain.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::Watcher;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit};

use crate::proxy::{self, Conn};
use crate::{EdgeError, Shared};

/// Binds with a deep backlog (the std default of 128 drops SYNs under load) and SO_REUSEADDR.
pub(crate) fn bind(addr: SocketAddr) -> Result<TcpListener, EdgeError> {
    let bind = || -> std::io::Result<TcpListener> {
        let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(4096)
    };
    bind().map_err(|source| EdgeError::Bind { addr, source })
}

pub(crate) fn server_builder(cfg: &flotilla_config::EdgeConfig) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(cfg.timeouts.header_read)
        .max_buf_size(cfg.limits.max_header_bytes.max(8192))
        .max_headers(cfg.limits.max_headers);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        .max_header_list_size(cfg.limits.max_header_bytes as u32)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    b
}

pub(crate) async fn accept_loop(
    listener: TcpListener,
    tls: bool,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let local_port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    loop {
        let permit = tokio::select! {
            p = shared.conn_limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = stop.changed() => return,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let Some(watcher) = shared.watcher() else { return };
        tokio::spawn(serve(shared.clone(), stream, peer, local_port, tls, watcher, permit));
    }
}

async fn serve(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    local_port: u16,
    tls: bool,
    watcher: Watcher,
    _permit: OwnedSemaphorePermit,
) {
    let _ = stream.set_nodelay(true);
    shared.metrics.connections.inc();
    shared.metrics.active_connections.inc();
    let _active = scopeguard(&shared);
    let conn = Arc::new(Conn { peer, local_port, tls });
    let svc_shared = shared.clone();
    let svc = service_fn(move |req| proxy::handle(svc_shared.clone(), conn.clone(), req));
    let builder = shared.server_builder.clone();
    let result = if tls {
        let Some(acceptor) = shared.tls.load_full() else { return };
        let timeout = shared.runtime.load().timeouts.header_read;
        let stream = match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(client = %peer, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(client = %peer, "TLS handshake timed out");
                return;
            }
        };
        watcher.watch(builder.serve_connection_with_upgrades(TokioIo::new(stream), svc).into_owned()).await
    } else {
        watcher.watch(builder.serve_connection_with_upgrades(TokioIo::new(stream), svc).into_owned()).await
    };
    if let Err(e) = result {
        tracing::debug!(client = %peer, error = %e, "connection ended with error");
    }
}

/// Decrements the active-connection gauge however the connection task ends.
struct ActiveGuard(Arc<Shared>);

fn scopeguard(shared: &Arc<Shared>) -> ActiveGuard {
    ActiveGuard(shared.clone())
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.metrics.active_connections.dec();
    }
}
