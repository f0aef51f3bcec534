//! Accept loops and per-connection serving: the connection cap, TLS handshake with a deadline,
//! HTTP/1.1 + HTTP/2 (ALPN or prior knowledge) via hyper-util's auto builder, graceful drain.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit};

use crate::context::Conn;
use crate::framing::{FramingFlags, Tracked, Tracker};
use crate::prefixed::Prefixed;
use crate::proxy;
use crate::streams::{StreamExec, WithStreams};
use crate::{EdgeError, Shared};

/// Binds a listening socket for one worker: SO_REUSEPORT so every worker has its own accept
/// queue on the same address (the kernel spreads connections), a deep backlog (the std default
/// of 128 drops SYNs under load), non-blocking, ready to hand to any runtime.
pub(crate) fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, EdgeError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let bind = || -> std::io::Result<std::net::TcpListener> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(4096)?;
        Ok(socket.into())
    };
    bind().map_err(|source| EdgeError::Bind { addr, source })
}

/// Runs a hyper connection until it ends; when `stop` turns true, asks it to finish gracefully
/// (HTTP/1.1: close after the in-flight response; HTTP/2: GOAWAY) and keeps driving it.
macro_rules! drive {
    ($conn:expr, $stop:expr) => {{
        let conn = $conn;
        tokio::pin!(conn);
        let mut stop = $stop;
        tokio::select! {
            r = conn.as_mut() => r,
            _ = async { let _ = stop.wait_for(|s| *s).await; } => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        }
    }};
}

/// `drive!` for HTTP/2: the connection with its streams polled on its own task.
macro_rules! drive_h2 {
    ($builders:expr, $io:expr, $svc:expr, $stop:expr, $idle:expr) => {{
        let exec = StreamExec::default();
        let conn = $builders.h2(exec.clone()).serve_connection($io, $svc);
        let mut conn = WithStreams::new(conn, exec, $idle, |c: std::pin::Pin<&mut _>| c.graceful_shutdown());
        let mut stop = $stop;
        tokio::select! {
            r = &mut conn => r,
            _ = async { let _ = stop.wait_for(|s| *s).await; } => {
                conn.conn().graceful_shutdown();
                conn.await
            }
        }
    }};
}

/// The HTTP/1.1 and HTTP/2 server settings, built once.
#[derive(Clone)]
pub(crate) struct ServerBuilders {
    h1: http1::Builder,
    max_header_list_size: u32,
}

pub(crate) fn server_builders(cfg: &flotilla_config::EdgeConfig) -> ServerBuilders {
    let mut h1 = http1::Builder::new();
    // hyper runs the head timer from the moment a connection waits for a request head, so it
    // also bounds keep-alive idle time and slow (slowloris) heads.
    h1.timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(cfg.timeouts.header_read)
        .max_buf_size(cfg.limits.max_header_bytes.max(8192))
        .max_headers(cfg.limits.max_headers);
    ServerBuilders { h1, max_header_list_size: cfg.limits.max_header_bytes as u32 }
}

impl ServerBuilders {
    /// HTTP/2 settings for one connection, whose streams its own task polls (`streams.rs`).
    fn h2(&self, exec: StreamExec) -> http2::Builder<StreamExec> {
        let mut h2 = http2::Builder::new(exec);
        h2.timer(TokioTimer::new())
            .max_concurrent_streams(256)
            .max_header_list_size(self.max_header_list_size)
            .keep_alive_interval(Some(Duration::from_secs(30)))
            .keep_alive_timeout(Duration::from_secs(20));
        h2
    }
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Decides between HTTP/1.1 and prior-knowledge HTTP/2 on a plain connection from its first
/// bytes, read into `buf` (replayed to hyper afterwards) within `limit`: a client that sends
/// nothing, or a partial preface and then nothing, is dropped at the deadline and costs nothing
/// until then. `None`: closed or too slow.
async fn sniff_h2(stream: &mut TcpStream, buf: &mut Vec<u8>, limit: Duration) -> Option<bool> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let n = buf.len().min(H2_PREFACE.len());
        if buf[..n] != H2_PREFACE[..n] {
            return Some(false);
        }
        if n == H2_PREFACE.len() {
            return Some(true);
        }
        match crate::prefixed::read_more(stream, buf, deadline).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// What every connection task of one worker shares (the worker's thread owns it).
pub(crate) struct Worker {
    pub pool: Arc<crate::pool::Pool>,
    /// Each connection holds a clone; the worker waits for all of them before it exits.
    pub alive: mpsc::Sender<()>,
}

pub(crate) async fn accept_loop(
    listener: TcpListener,
    tls: bool,
    shared: Arc<Shared>,
    worker: Arc<Worker>,
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
        let alive = worker.alive.clone();
        tokio::spawn(serve(
            shared.clone(),
            worker.clone(),
            stream,
            peer,
            local_port,
            tls,
            (stop.clone(), alive),
            permit,
        ));
    }
}

/// Open connections per client address, for `limits.max_connections_per_ip`: one short lock
/// per accepted connection (never per request), and nothing at all when there is no limit.
#[derive(Default)]
pub(crate) struct PerIp(Mutex<HashMap<IpAddr, usize>>);

/// Counts one connection until dropped.
pub(crate) struct PerIpGuard {
    map: Option<(Arc<PerIp>, IpAddr)>,
}

impl PerIp {
    /// A guard for a new connection from `ip`, or `None` if it already has `limit` open.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr, limit: usize) -> Option<PerIpGuard> {
        if limit == 0 {
            return Some(PerIpGuard { map: None });
        }
        let mut open = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n >= limit {
            return None;
        }
        *n += 1;
        Some(PerIpGuard { map: Some((self.clone(), ip)) })
    }
}

impl Drop for PerIpGuard {
    fn drop(&mut self) {
        if let Some((per_ip, ip)) = &self.map {
            let mut open = per_ip.0.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = open.get_mut(ip) {
                *n -= 1;
                if *n == 0 {
                    open.remove(ip);
                }
            }
        }
    }
}

/// Who a new connection is from: its TCP peer, or with `edge.proxy_protocol` the client its
/// PROXY header names (read within the head deadline into `buf`, which keeps what followed the
/// header; a connection without a valid one, or from a peer outside a non-empty
/// `edge.trusted_proxies`, is closed). `None`: close it.
async fn client_of(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    peer: SocketAddr,
    rt: &crate::Runtime,
) -> Option<SocketAddr> {
    if !rt.proxy_protocol {
        return Some(peer);
    }
    if !rt.trusted_proxies.is_empty() && !flotilla_config::any_contains(&rt.trusted_proxies, peer.ip()) {
        tracing::debug!(peer = %peer, "connection refused: PROXY header from a peer outside edge.trusted_proxies");
        return None;
    }
    match crate::proxy_protocol::read(stream, buf, rt.timeouts.header_read).await {
        Ok(client) => Some(client.unwrap_or(peer)),
        Err(e) => {
            tracing::debug!(peer = %peer, error = %e, "connection closed: no valid PROXY header");
            None
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn serve(
    shared: Arc<Shared>,
    worker: Arc<Worker>,
    mut stream: TcpStream,
    tcp_peer: SocketAddr,
    local_port: u16,
    tls: bool,
    (stop, _alive): (watch::Receiver<bool>, mpsc::Sender<()>),
    _permit: OwnedSemaphorePermit,
) {
    let _ = stream.set_nodelay(true);
    shared.metrics.connections.inc();
    shared.metrics.active_connections.inc();
    let _active = scopeguard(&shared);
    let rt = shared.runtime.load_full();
    // Bytes read before hyper or rustls take over (a PROXY header's leftovers, the sniffed
    // preface), replayed to them first.
    let mut first = Vec::new();
    let Some(peer) = client_of(&mut stream, &mut first, tcp_peer, &rt).await else { return };
    let per_ip_limit = rt.limits.max_connections_per_ip;
    let Some(_ip_guard) = shared.per_ip.admit(peer.ip(), per_ip_limit) else {
        shared.metrics.connections_refused_per_ip.inc();
        tracing::debug!(client = %peer, limit = per_ip_limit, "connection refused: too many from this address");
        return;
    };
    let framing = FramingFlags::new();
    let tracker = Tracker::new(framing.clone(), rt.limits.max_header_bytes);
    let client_addr = crate::forwarding::ClientAddr::new(peer.ip(), local_port);
    let client = crate::forwarding::Client::direct(peer.ip(), client_addr.xff.clone(), tls);
    let trusted = flotilla_config::any_contains(&rt.trusted_proxies, peer.ip());
    let conn = Arc::new(Conn { peer, tls, framing, client_addr, client, trusted, pool: worker.pool.clone() });
    let (h2_shared, h2_conn) = (shared.clone(), conn.clone());
    let svc_shared = shared.clone();
    let svc = service_fn(move |req| proxy::handle(svc_shared.clone(), conn.clone(), req));
    // hyper spawns each HTTP/2 stream's future as a task and moves it several times on the way
    // (into its stream wrapper, the executor, the task cell): boxed, each move is a pointer
    // rather than the whole multi-KB state machine (memcpy was 3 % of h2 CPU under perf).
    let h2_svc = service_fn(move |req| Box::pin(proxy::handle(h2_shared.clone(), h2_conn.clone(), req)));
    let builders = shared.server_builders.load_full();
    let (timeout, idle) = (rt.timeouts.header_read, rt.timeouts.idle);
    drop(rt);
    let result = if tls {
        let Some(acceptor) = shared.tls.load_full() else { return };
        let stream = match tokio::time::timeout(timeout, acceptor.accept(Prefixed::new(first, stream))).await {
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
        if stream.get_ref().1.alpn_protocol() == Some(crate::managed::ACME_TLS_ALPN) {
            // A TLS-ALPN-01 validation: the handshake was the answer; nothing follows.
            tracing::debug!(client = %peer, "acme-tls/1 handshake answered");
            return;
        }
        let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
        let io = TokioIo::new(Tracked::new(stream, tracker));
        if h2 {
            drive_h2!(builders, io, h2_svc, stop, idle)
        } else {
            drive!(builders.h1.serve_connection(io, svc).with_upgrades(), stop)
        }
    } else {
        let Some(h2) = sniff_h2(&mut stream, &mut first, timeout).await else {
            tracing::debug!(client = %peer, "connection closed or silent before a request");
            return;
        };
        let io = TokioIo::new(Tracked::new(Prefixed::new(first, stream), tracker));
        if h2 {
            drive_h2!(builders, io, h2_svc, stop, idle)
        } else {
            drive!(builders.h1.serve_connection(io, svc).with_upgrades(), stop)
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_ip_limit_counts_open_connections_and_forgets_closed_ones() {
        let per_ip = Arc::new(PerIp::default());
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let first = per_ip.admit(a, 2).unwrap();
        let second = per_ip.admit(a, 2).unwrap();
        assert!(per_ip.admit(a, 2).is_none(), "a third from the same address");
        let other = per_ip.admit(b, 2).unwrap();
        drop(first);
        let third = per_ip.admit(a, 2).unwrap();
        drop((second, third, other));
        assert!(per_ip.0.lock().unwrap().is_empty(), "closed connections leave no entry behind");
        assert!(per_ip.admit(a, 0).is_some() && per_ip.0.lock().unwrap().is_empty(), "0 = no limit, no tracking");
    }
}
