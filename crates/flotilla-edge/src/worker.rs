//! Edge workers, thread-per-core as in HAProxy and nginx: each worker is an OS thread with a
//! current-thread tokio runtime, its own SO_REUSEPORT listeners and its own backend connection
//! pool, so a request never crosses threads. Shared state (routes, groups, metrics) is read
//! through atomics and `ArcSwap`. The control plane (admin API, health checks, reloads) runs on
//! the runtime that called `Edge::start`.

use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use crate::listener::{self, Worker};
use crate::pool::Pool;
use crate::Shared;

/// Starts worker `index` on its own thread. `_edge_alive` keeps `Edge::shutdown` waiting until
/// this worker has drained its connections and exited.
pub(crate) fn spawn(
    index: usize,
    shared: Arc<Shared>,
    listeners: Vec<(std::net::TcpListener, bool)>,
    stop: watch::Receiver<bool>,
    _edge_alive: mpsc::Sender<()>,
) -> std::io::Result<()> {
    std::thread::Builder::new().name(format!("flotilla-edge-{index}")).spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(worker = index, error = %e, "cannot start edge worker runtime");
                return;
            }
        };
        rt.block_on(run(shared, listeners, stop));
        drop(_edge_alive);
    })?;
    Ok(())
}

async fn run(shared: Arc<Shared>, listeners: Vec<(std::net::TcpListener, bool)>, mut stop: watch::Receiver<bool>) {
    let (alive, mut alive_rx) = mpsc::channel::<()>(1);
    let worker = Arc::new(Worker { pool: Pool::new(shared.connect_timeout), alive });
    for (l, tls) in listeners {
        match tokio::net::TcpListener::from_std(l) {
            Ok(l) => {
                tokio::spawn(listener::accept_loop(l, tls, shared.clone(), worker.clone(), stop.clone()));
            }
            Err(e) => tracing::error!(error = %e, "cannot register listener with worker runtime"),
        }
    }
    tokio::spawn(timer_anchor());
    let _ = stop.wait_for(|s| *s).await;
    // Connections finish their in-flight requests; `recv` yields None when the last one is gone.
    drop(worker);
    let limit = shared.runtime.load().timeouts.shutdown;
    let _ = tokio::time::timeout(limit, alive_rx.recv()).await;
}

/// Keeps a timer due within half a second in this worker's timer wheel, for as long as the
/// worker runs. tokio's time driver wakes itself (an eventfd write, and an epoll wake-up) each
/// time a timer is registered that is due earlier than every timer it knows of. Under load
/// that was every request: hyper arms the 10 s head-read timer as each keep-alive connection
/// waits for its next request, and the only other timers were the 60 s target-response ones
/// (strace: ~0.8 eventfd writes per proxied request; HAProxy makes none). With this anchor due
/// sooner than any per-request timer, registering those never wakes the driver; the anchor
/// itself costs two wake-ups a second.
async fn timer_anchor() {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
    }
}
