//! A cache fill: the origin's body, read by a task of its own into memory that a global
//! budget bounds, stored when complete, and streamed to the client that caused it meanwhile.
//!
//! Why a task of its own: the fill owns the key's [`Flight`], so the requests coalesced behind
//! it wait for the object however slowly the leader's client reads; the leader's client reads
//! from the same buffer at its own pace. Small bodies (most) are answered from the stored entry
//! as before (encodings, ranges, 304s); a body past [`STREAM_AFTER`] is streamed from the
//! buffer as it arrives.
//!
//! What bounds it:
//! - every byte buffered for storing is taken from the edge-wide `cache.fill_buffer` budget;
//!   past it, or past `cache.max_object`, the fill stops storing, gives its bytes back, and goes
//!   on as a plain proxy (reading only as fast as the client does);
//! - a body that sends nothing for `edge.timeouts.target_response` ends the fill (and the
//!   stream) with an error; one still not complete after `cache.fill_timeout` stops storing, so
//!   a trickling origin never pins the followers;
//! - compression runs on the blocking pool behind a semaphore (one permit per CPU).

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use flotilla_cache::{compress, Entry, Generation};
use http::header::{self, HeaderName, HeaderValue};
use hyper::body::Frame;
use tokio::sync::{oneshot, Notify, Semaphore};

use super::tiers::Flight;
use crate::body::{Body, BoxError};
use crate::route::CacheRule;
use crate::Shared;

/// Bodies up to this size are read whole before the client is answered (from the entry).
pub(super) const STREAM_AFTER: usize = 256 * 1024;

/// Bytes all fills may hold at once (`cache.fill_buffer`).
pub(crate) struct Budget {
    used: AtomicUsize,
    limit: usize,
}

impl Budget {
    pub(crate) fn new(limit: u64) -> Self {
        Self { used: AtomicUsize::new(0), limit: limit.min(usize::MAX as u64) as usize }
    }

    fn take(&self, n: usize) -> bool {
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            if used.saturating_add(n) > self.limit {
                return false;
            }
            match self.used.compare_exchange_weak(used, used + n, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(now) => used = now,
            }
        }
    }

    fn give(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }

    /// Bytes held by fills now.
    pub(crate) fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }
}

/// Concurrent compressions: one per CPU the process may use.
pub(crate) fn compression_permits() -> Semaphore {
    Semaphore::new(std::thread::available_parallelism().map_or(2, |n| n.get()).max(1))
}

/// Everything storing needs, owned (the fill outlives the request that started it).
pub(super) struct Job {
    pub shared: Arc<Shared>,
    pub rule: Arc<CacheRule>,
    pub primary: String,
    pub vary: Vec<HeaderName>,
    /// The entry as the response head makes it; the body and its encodings come last.
    pub template: Option<Entry>,
    pub compressible: bool,
    pub since: Generation,
    pub flight: Option<Flight>,
    /// No byte for this long ends the fill.
    pub idle: Duration,
    /// Not complete after this long: stop storing.
    pub deadline: Duration,
}

/// How a fill ended, for a leader that waited for it.
pub(super) enum Outcome {
    /// Complete and built; `stored` unless an invalidation since it started covers it.
    Stored {
        entry: Arc<Entry>,
        stored: bool,
    },
    /// Complete but not stored (the detail says why): the body is in the buffer.
    NotStored(&'static str),
    Failed(BoxError),
}

/// What the leader learns first.
pub(super) enum Progress {
    Complete(Outcome),
    /// Still coming, and past [`STREAM_AFTER`] or no longer stored (the detail says why):
    /// stream it.
    Stream(Option<&'static str>),
}

#[derive(Default)]
struct State {
    /// Received and not yet released: while storing, all of it (client reads by index);
    /// once not storing, only what the client has not read.
    chunks: VecDeque<Bytes>,
    /// Chunks already dropped from the front (so `read` stays an absolute index).
    dropped: usize,
    /// Absolute index of the next chunk the client reads.
    read: usize,
    total: usize,
    /// Bytes taken from the budget (all of `chunks` while storing).
    reserved: usize,
    storing: bool,
    /// Why storing stopped.
    detail: Option<&'static str>,
    end: Option<Result<(), String>>,
    client: Option<Waker>,
    client_gone: bool,
}

struct Inner {
    state: Mutex<State>,
    /// The leader waiting for "complete or large".
    progress: Notify,
    /// The reader waiting for the client to catch up (not storing).
    caught_up: Notify,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub(super) struct Fill {
    inner: Arc<Inner>,
    outcome: oneshot::Receiver<Outcome>,
    /// A client body was handed out; if not, dropping this means no one will read.
    handed: bool,
}

impl Drop for Fill {
    fn drop(&mut self) {
        if !self.handed {
            // The leader went away (its client disconnected) before reading: a fill that stops
            // storing must not wait for a reader that will never come.
            self.inner.lock().client_gone = true;
            self.inner.caught_up.notify_one();
        }
    }
}

/// Starts reading `body` for `job` in a task of its own.
pub(super) fn start(body: Body, job: Job) -> Fill {
    let inner = Arc::new(Inner {
        state: Mutex::new(State { storing: true, ..Default::default() }),
        progress: Notify::new(),
        caught_up: Notify::new(),
    });
    let (tx, outcome) = oneshot::channel();
    tokio::spawn(run(inner.clone(), body, job, tx));
    Fill { inner, outcome, handed: false }
}

impl Fill {
    /// Waits until the body is complete or past [`STREAM_AFTER`].
    pub(super) async fn progress(&mut self) -> Progress {
        loop {
            let notified = self.inner.progress.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let st = self.inner.lock();
                if st.end.is_some() {
                    break;
                }
                if st.total > STREAM_AFTER || !st.storing {
                    return Progress::Stream(st.detail);
                }
            }
            notified.await;
        }
        match (&mut self.outcome).await {
            Ok(outcome) => Progress::Complete(outcome),
            Err(_) => Progress::Complete(Outcome::Failed("cache fill ended without an outcome".into())),
        }
    }

    /// The body as the client reads it, from the fill's buffer (once).
    pub(super) fn body(&mut self) -> Body {
        use http_body_util::BodyExt;
        self.handed = true;
        FillBody { inner: self.inner.clone() }.boxed_unsync()
    }
}

async fn run(inner: Arc<Inner>, mut body: Body, mut job: Job, done: oneshot::Sender<Outcome>) {
    use http_body_util::BodyExt;
    let shared = job.shared.clone();
    let budget = &shared.cache.fill_budget;
    let max_object = shared.cache.max_object;
    let deadline = tokio::time::Instant::now() + job.deadline;
    let ended: Result<(), BoxError> = loop {
        // Once not storing, read no further ahead of the client than one chunk.
        loop {
            let waiting = inner.caught_up.notified();
            tokio::pin!(waiting);
            waiting.as_mut().enable();
            let client_gone = {
                let st = inner.lock();
                if st.storing || st.read >= st.dropped + st.chunks.len() {
                    break;
                }
                st.client_gone
            };
            if client_gone {
                // Nobody reads and nothing is stored: stop fetching.
                return finish(&inner, &mut job, Err("client gone".into()), done).await;
            }
            waiting.await;
        }
        let storing = inner.lock().storing;
        let next = if storing {
            match tokio::time::timeout_at(deadline.min(tokio::time::Instant::now() + job.idle), body.frame()).await {
                Ok(f) => f,
                Err(_) if tokio::time::Instant::now() >= deadline => {
                    stop_storing(&inner, "fill-timeout", &mut job);
                    continue;
                }
                Err(_) => break Err("origin body stalled".into()),
            }
        } else {
            match tokio::time::timeout(job.idle, body.frame()).await {
                Ok(f) => f,
                Err(_) => break Err("origin body stalled".into()),
            }
        };
        let data = match next {
            None => break Ok(()),
            Some(Err(e)) => break Err(e),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                Err(_) => continue, // trailers are not kept
            },
        };
        let n = data.len();
        let mut st = inner.lock();
        if st.storing && (st.total + n > max_object || !budget.take(n)) {
            let detail = if st.total + n > max_object { "too-large" } else { "fill-budget" };
            drop(st);
            stop_storing(&inner, detail, &mut job);
            st = inner.lock();
        } else if st.storing {
            st.reserved += n;
        }
        st.total += n;
        st.chunks.push_back(data);
        let waker = st.client.take();
        drop(st);
        if let Some(w) = waker {
            w.wake();
        }
        inner.progress.notify_one();
    };
    finish(&inner, &mut job, ended, done).await;
}

/// Storing stops (too large, over budget, too slow): the bytes go back to the budget, the
/// followers are released, and what the client has read is dropped.
fn stop_storing(inner: &Inner, detail: &'static str, job: &mut Job) {
    let budget = &job.shared.cache.fill_budget;
    let mut st = inner.lock();
    if !st.storing {
        return;
    }
    st.storing = false;
    st.detail = Some(detail);
    budget.give(std::mem::take(&mut st.reserved));
    while st.dropped < st.read && !st.chunks.is_empty() {
        st.chunks.pop_front();
        st.dropped += 1;
    }
    drop(st);
    // The leader streams from here on; the followers go to the origin on their own.
    inner.progress.notify_one();
    job.flight = None;
    if detail == "too-large" {
        // The next requests for this key go straight to the origin (hit-for-miss).
        job.shared.cache.pass.insert(job.primary.clone(), ());
    }
}

/// The body ended (or failed): store it if it may be, tell the leader, wake the client.
async fn finish(inner: &Inner, job: &mut Job, ended: Result<(), BoxError>, done: oneshot::Sender<Outcome>) {
    let shared = job.shared.clone();
    let budget = &shared.cache.fill_budget;
    let (whole, detail, total) = {
        let mut st = inner.lock();
        st.end = Some(ended.as_ref().map(|_| ()).map_err(|e| e.to_string()));
        if let Some(w) = st.client.take() {
            w.wake();
        }
        let whole = (ended.is_ok() && st.storing).then(|| {
            // One buffer for the entry; the client goes on reading slices of it.
            let mut whole = BytesMut::with_capacity(st.total);
            for c in &st.chunks {
                whole.extend_from_slice(c);
            }
            let whole = whole.freeze();
            let mut at = 0;
            for c in st.chunks.iter_mut() {
                *c = whole.slice(at..at + c.len());
                at += c.len();
            }
            whole
        });
        if whole.is_none() {
            budget.give(std::mem::take(&mut st.reserved));
        }
        (whole, st.detail.unwrap_or("not-stored"), st.total)
    };
    inner.progress.notify_one();
    job.rule.origin_bytes.inc_by(total as u64);
    let outcome = match (ended, whole) {
        (Err(e), _) => Outcome::Failed(e),
        (Ok(()), None) => Outcome::NotStored(detail),
        (Ok(()), Some(body)) => {
            let outcome = store(job, body).await;
            // Stored (the memory budget counts it now) or refused: the fill's bytes go back.
            budget.give(std::mem::take(&mut inner.lock().reserved));
            outcome
        }
    };
    job.flight = None;
    let _ = done.send(outcome);
}

/// Compresses (bounded), builds the entry and inserts it.
async fn store(job: &mut Job, body: Bytes) -> Outcome {
    let cache = &job.shared.cache;
    let Some(mut entry) = job.template.take() else { return Outcome::NotStored("not-stored") };
    if job.compressible {
        let permit = cache.compressions.acquire().await.ok();
        let raw = body.clone();
        entry.encoded = tokio::task::spawn_blocking(move || compress::all(&raw)).await.unwrap_or_default();
        drop(permit);
    }
    if !entry.encoded.is_empty() && !job.vary.contains(&header::ACCEPT_ENCODING) {
        // Downstream caches must know the representation depends on Accept-Encoding; our own
        // key does not (both representations live in this one entry).
        entry.headers.append(header::VARY, HeaderValue::from_static("accept-encoding"));
    }
    entry.body = body;
    let entry = Arc::new(entry);
    let stored = cache.insert(&job.primary, job.vary.clone(), entry.clone(), job.since);
    Outcome::Stored { entry, stored }
}

/// The client's view of a fill: the buffer's chunks in order, then its end.
struct FillBody {
    inner: Arc<Inner>,
}

impl hyper::body::Body for FillBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut st = self.inner.lock();
        let at = st.read - st.dropped;
        if let Some(chunk) = st.chunks.get(at).cloned() {
            st.read += 1;
            if !st.storing && st.end.is_none() {
                // Not kept for storing: read is gone.
                st.chunks.pop_front();
                st.dropped += 1;
                drop(st);
                self.inner.caught_up.notify_one();
            }
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        match &st.end {
            Some(Ok(())) => Poll::Ready(None),
            Some(Err(e)) => Poll::Ready(Some(Err(e.clone().into()))),
            None => {
                st.client = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl Drop for FillBody {
    fn drop(&mut self) {
        self.inner.lock().client_gone = true;
        self.inner.caught_up.notify_one();
    }
}
