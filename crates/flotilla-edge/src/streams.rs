//! HTTP/2 streams polled by their own connection's task instead of one spawned task each.
//!
//! hyper hands every HTTP/2 stream to an executor. With tokio's, each request costs a task
//! allocation, a trip through the scheduler and, when the target answers, a wake of the stream
//! task that then wakes the connection task to write the frames: two task runs per response.
//! Here the executor only queues the stream; the connection's task polls its streams and then
//! the connection in the same turn, so a response is encoded and written in the run that
//! produced it. Workers are single-threaded (`worker.rs`), so nothing is lost in parallelism.
//!
//! A panic in one stream is caught and ends that stream only, as a spawned task's would.
//!
//! It also bounds idleness: a connection with no stream for `timeouts.idle` is asked to shut
//! down gracefully (GOAWAY), as an HTTP/1.1 keep-alive connection is closed after its idle time —
//! otherwise a client that answers PINGs could hold a connection slot forever.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};

type Stream = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The executor given to hyper's HTTP/2 server for one connection: it queues, never spawns.
#[derive(Clone, Default)]
pub(crate) struct StreamExec {
    queued: Arc<Mutex<Vec<Stream>>>,
}

impl<F> hyper::rt::Executor<F> for StreamExec
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, fut: F) {
        // Called from inside the connection's (or a stream's) poll, on the connection's task,
        // which drains the queue before it yields: no wake-up is needed.
        if let Ok(mut q) = self.queued.lock() {
            q.push(Box::pin(fut));
        }
    }
}

impl StreamExec {
    fn take(&self) -> Vec<Stream> {
        self.queued.lock().map(|mut q| std::mem::take(&mut *q)).unwrap_or_default()
    }
}

/// A connection future together with the streams it started. Completes when the connection
/// does; streams still running then are dropped (their client is gone, and dropping a request
/// future cancels its target exchange).
pub(crate) struct WithStreams<C, F> {
    conn: Pin<Box<C>>,
    exec: StreamExec,
    running: FuturesUnordered<Stream>,
    idle: IdleBound<F>,
}

/// Idle bookkeeping: one timer per connection, re-armed only when it fires (at most once per
/// `limit`), so a busy connection pays an `Instant::now()` per transition to idle, no timer work.
struct IdleBound<F> {
    limit: Duration,
    since: Option<tokio::time::Instant>,
    timer: Pin<Box<tokio::time::Sleep>>,
    shutdown: F,
    shut: bool,
}

impl<C, F: FnMut(Pin<&mut C>)> WithStreams<C, F> {
    /// `shutdown` asks the connection to finish gracefully once it has had no stream for `idle`.
    pub(crate) fn new(conn: C, exec: StreamExec, idle: Duration, shutdown: F) -> Self {
        let idle =
            IdleBound { limit: idle, since: None, timer: Box::pin(tokio::time::sleep(idle)), shutdown, shut: false };
        WithStreams { conn: Box::pin(conn), exec, running: FuturesUnordered::new(), idle }
    }

    /// The connection itself, e.g. to ask it for a graceful shutdown.
    pub(crate) fn conn(&mut self) -> Pin<&mut C> {
        self.conn.as_mut()
    }

    /// True when the connection has had no stream for the idle limit and was asked to close.
    fn idle_expired(&mut self, cx: &mut Context<'_>) -> bool {
        let idle = &mut self.idle;
        if idle.shut {
            return false;
        }
        if self.running.is_empty() {
            idle.since.get_or_insert_with(tokio::time::Instant::now);
        } else {
            idle.since = None;
        }
        while idle.timer.as_mut().poll(cx).is_ready() {
            match idle.since {
                Some(t) if t.elapsed() >= idle.limit => {
                    idle.shut = true;
                    (idle.shutdown)(self.conn.as_mut());
                    return true;
                }
                Some(t) => idle.timer.as_mut().reset(t + idle.limit),
                None => idle.timer.as_mut().reset(tokio::time::Instant::now() + idle.limit),
            }
        }
        false
    }
}

impl<C: Future, F: FnMut(Pin<&mut C>) + Unpin> Future for WithStreams<C, F> {
    type Output = C::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<C::Output> {
        // Every field is Unpin (the connection is boxed).
        let this = self.get_mut();
        // Bounded: each round starts only streams the connection accepted in the previous
        // round, and the connection caps concurrent streams (`max_concurrent_streams`).
        for _ in 0..64 {
            // Streams first: responses they queue are then written by the connection's poll.
            while let Poll::Ready(Some(())) = this.running.poll_next_unpin(cx) {}
            let out = this.conn.as_mut().poll(cx);
            if out.is_ready() {
                return out;
            }
            let new = this.exec.take();
            if new.is_empty() {
                if this.idle_expired(cx) {
                    // GOAWAY queued: let the connection send it and finish.
                    continue;
                }
                return Poll::Pending;
            }
            for fut in new {
                this.running.push(Box::pin(AssertUnwindSafe(fut).catch_unwind().map(|r| {
                    if r.is_err() {
                        tracing::error!("an HTTP/2 stream panicked; that stream was reset");
                    }
                })));
            }
        }
        // Still busy after many rounds: let other connections run, come back at once.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::Executor;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A "connection" that starts `n` streams on its first poll, then completes once all ran.
    struct FakeConn {
        exec: StreamExec,
        done: Arc<AtomicUsize>,
        started: bool,
        n: usize,
    }

    impl Future for FakeConn {
        type Output = usize;
        fn poll(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<usize> {
            if !self.started {
                self.started = true;
                for i in 0..self.n {
                    let done = self.done.clone();
                    self.exec.execute(async move {
                        if i == 1 {
                            panic!("stream {i} fails");
                        }
                        tokio::task::yield_now().await;
                        done.fetch_add(1, Ordering::SeqCst);
                    });
                }
            }
            let d = self.done.load(Ordering::SeqCst);
            if d == self.n - 1 {
                Poll::Ready(d)
            } else {
                Poll::Pending
            }
        }
    }

    #[tokio::test]
    async fn streams_run_on_the_connection_task_and_a_panic_stays_in_its_stream() {
        let exec = StreamExec::default();
        let done = Arc::new(AtomicUsize::new(0));
        let conn = FakeConn { exec: exec.clone(), done: done.clone(), started: false, n: 5 };
        // The fake connection never wakes itself: progress comes from the streams' wakes.
        let finished = WithStreams::new(conn, exec, Duration::from_secs(60), |_: Pin<&mut FakeConn>| {}).await;
        assert_eq!(finished, 4, "every stream but the panicking one completed");
    }
}
