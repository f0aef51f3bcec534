//! Per-worker HTTP/1.1 connection pool to targets, built on hyper's connection-level client.
//!
//! Why not hyper-util's pooled client: its keyed maps, checkout futures and per-request
//! bookkeeping cost about a sixth of the edge's instructions per request (callgrind), and it
//! hides the one fact retries need — whether a request reached the target. Here a stale pooled
//! connection hands the request back untouched (`try_send_request`), so that race is retried
//! on a fresh connection without counting against the target.
//!
//! A connection returns to the pool when its response body has been read to the end (see
//! [`LeasedBody`]); one whose body was abandoned is closed instead, because its byte stream is
//! no longer at a message boundary.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustc_hash::FxBuildHasher;

use crate::body::Body;
use crate::target::InFlight;

/// Idle connections older than this are closed rather than reused: many app servers close idle
/// keep-alive connections after ~5 s (Node's default), and reusing one just as the target
/// closes it can fail a request that was already sent.
const IDLE_TIMEOUT: Duration = Duration::from_secs(4);
const MAX_IDLE_PER_TARGET: usize = 256;

pub(crate) struct Pool {
    idle: Mutex<HashMap<SocketAddr, Vec<Idle>, FxBuildHasher>>,
    connect_timeout: Duration,
    builder: hyper::client::conn::http1::Builder,
}

struct Idle {
    sender: SendRequest<Body>,
    since: Instant,
}

/// Why sending failed, and so whether a retry is safe.
#[derive(Debug)]
pub(crate) enum SendError {
    /// No connection could be made: the target saw nothing.
    Connect(String),
    /// The connection failed while the request was (maybe) in flight.
    Failed(hyper::Error),
}

/// The connection a response arrived on; give it back with [`Lease::release`] once the
/// response body is complete.
pub(crate) struct Lease {
    pool: Arc<Pool>,
    addr: SocketAddr,
    sender: SendRequest<Body>,
}

impl Lease {
    fn release(self) {
        if self.sender.is_closed() {
            return;
        }
        let mut idle = self.pool.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.entry(self.addr).or_default();
        if list.len() < MAX_IDLE_PER_TARGET {
            list.push(Idle { sender: self.sender, since: Instant::now() });
        }
    }
}

impl Pool {
    pub(crate) fn new(connect_timeout: Duration) -> Arc<Self> {
        let mut builder = hyper::client::conn::http1::Builder::new();
        builder.max_buf_size(64 * 1024);
        Arc::new(Self { idle: Mutex::new(HashMap::default()), connect_timeout, builder })
    }

    fn take_idle(&self, addr: SocketAddr) -> Option<SendRequest<Body>> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.get_mut(&addr)?;
        while let Some(entry) = list.pop() {
            if !entry.sender.is_closed() && entry.since.elapsed() < IDLE_TIMEOUT {
                return Some(entry.sender);
            }
        }
        None
    }

    async fn connect(&self, addr: SocketAddr) -> Result<SendRequest<Body>, SendError> {
        let stream = match tokio::time::timeout(self.connect_timeout, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(SendError::Connect(e.to_string())),
            Err(_) => return Err(SendError::Connect(format!("connect timed out after {:?}", self.connect_timeout))),
        };
        let _ = stream.set_nodelay(true);
        let (sender, conn) =
            self.builder.handshake(TokioIo::new(stream)).await.map_err(|e| SendError::Connect(e.to_string()))?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(target = %addr, error = %e, "target connection ended with error");
            }
        });
        Ok(sender)
    }

    /// Sends `req` to `addr` on a pooled connection if one is usable, else on a new one.
    pub(crate) async fn send(
        self: &Arc<Self>,
        addr: SocketAddr,
        mut req: Request<Body>,
    ) -> Result<(Response<Incoming>, Lease), SendError> {
        while let Some(mut sender) = self.take_idle(addr) {
            if sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok((resp, Lease { pool: self.clone(), addr, sender })),
                Err(mut e) => match e.take_message() {
                    // Not sent (the connection closed under us): try the next one.
                    Some(back) => req = back,
                    None => return Err(SendError::Failed(e.into_error())),
                },
            }
        }
        // Boxed: connecting is the uncommon path, and its state (connect + handshake) would
        // otherwise enlarge every request's future.
        let mut sender = Box::pin(self.connect(addr)).await?;
        match sender.try_send_request(req).await {
            Ok(resp) => Ok((resp, Lease { pool: self.clone(), addr, sender })),
            Err(e) if e.message().is_some() => Err(SendError::Connect(e.into_error().to_string())),
            Err(e) => Err(SendError::Failed(e.into_error())),
        }
    }
}

/// A target's response body on its way to the client. It holds the request's in-flight guard
/// (draining and least-outstanding balancing count until the last byte) and the connection
/// lease, which goes back to the pool only if the body was read to its end.
pub(crate) struct LeasedBody {
    inner: Incoming,
    lease: Option<Lease>,
    _in_flight: InFlight,
}

impl LeasedBody {
    pub(crate) fn new(inner: Incoming, lease: Option<Lease>, in_flight: InFlight) -> Self {
        Self { inner, lease, _in_flight: in_flight }
    }
}

impl HttpBody for LeasedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if frame.is_none() {
            if let Some(lease) = self.lease.take() {
                lease.release();
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LeasedBody {
    fn drop(&mut self) {
        // A body with a known length may end without a final `None` poll.
        if let Some(lease) = self.lease.take() {
            if self.inner.is_end_stream() {
                lease.release();
            }
        }
    }
}
