//! The reconcile loop on tokio's paused clock: its timers (the tick, launch backoff, the health
//! grace period, the stop timeout) are virtual, so these tests take no wall-clock time for them
//! and cannot be late on a loaded machine. Instances are real child processes; the edge is an
//! in-memory [`Registrar`] (the fleet cannot import the edge).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{sleep, sleep_until, Instant};

use super::coordinate::Lead;
use super::reconciler::{Event, Reconciler};
use super::{GroupHandle, InstanceState, Request};
use crate::registrar::{Registrar, TargetHealth, TargetStatus};
use crate::Coordinator;

/// Targets as the edge would hold them; deregistering drains at once.
#[derive(Default)]
struct Edge {
    targets: Mutex<HashMap<SocketAddr, TargetHealth>>,
}

impl Edge {
    fn set_all(&self, health: TargetHealth) {
        self.targets.lock().unwrap().values_mut().for_each(|h| *h = health);
    }
}

impl Registrar for Edge {
    fn register(&self, _: &str, addr: SocketAddr, _: Option<&str>) -> Result<(), String> {
        self.targets.lock().unwrap().insert(addr, TargetHealth::Initial);
        Ok(())
    }

    fn deregister(&self, _: &str, addr: SocketAddr) {
        self.targets.lock().unwrap().remove(&addr);
    }

    fn status(&self, _: &str, addr: SocketAddr) -> Option<TargetStatus> {
        let health = *self.targets.lock().unwrap().get(&addr)?;
        Some(TargetStatus { health, requests: 0, in_flight: 0 })
    }
}

/// A process group `web` with `keys` in `[groups.web]` running `command`.
fn group(keys: &str, command: &[&str]) -> Arc<GroupHandle> {
    let command: Vec<String> = command.iter().map(|a| format!("{a:?}")).collect();
    let text = format!(
        "[[routes]]\npath = \"/*\"\ntarget_group = \"web\"\n[target_groups.web]\ntargets = []\n\
         [groups.web]\ntarget_group = \"web\"\nmax = 1\npolicies = []\n{keys}\n\
         [groups.web.launch]\ncommand = [{}]\n",
        command.join(", ")
    );
    let cfg = flotilla_config::parse(std::path::Path::new("t.toml"), &text, &|_| None).unwrap();
    GroupHandle::new(cfg.groups["web"].clone(), crate::scope::Scope { deployment: "t".into(), node: None })
}

async fn reconciler(h: &Arc<GroupHandle>, edge: &Arc<Edge>) -> Reconciler {
    Reconciler::start(h.clone(), edge.clone(), Arc::new(AtomicU64::new(1)), None).await
}

/// Activity records whose description starts with `what`, with `status`.
fn count(h: &GroupHandle, what: &str, status: &str) -> usize {
    h.activity().iter().filter(|a| a.description.starts_with(what) && a.status == status).count()
}

fn state(h: &GroupHandle, id: &str) -> Option<InstanceState> {
    h.view().instances.iter().find(|i| i.id == id).map(|i| i.state)
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// A command no launch can start.
const MISSING: &[&str] = &["/nonexistent/flotilla-test-app"];

#[tokio::test(start_paused = true)]
async fn a_failing_launch_backs_off_doubling_up_to_a_minute() {
    let h = group("min = 1\ndesired = 1", MISSING);
    let t0 = Instant::now();
    tokio::spawn(reconciler(&h, &Arc::new(Edge::default())).await.run());
    let failed = || count(&h, "Launching instance", "failed");
    // Tries at 0, then after 2, 4, 8, 16, 32 s, then every 60 s (the cap).
    for (at, tries) in [(1.9, 1), (5.9, 2), (6.1, 3), (61.9, 5), (62.1, 6), (121.9, 6), (122.1, 7), (182.1, 8)] {
        sleep_until(t0 + secs(at)).await;
        assert_eq!(failed(), tries, "at {at} s");
    }
}

#[tokio::test(start_paused = true)]
async fn a_request_is_acted_on_at_once_not_at_the_next_tick() {
    let h = group("min = 0\ndesired = 0", MISSING);
    let t0 = Instant::now();
    tokio::spawn(reconciler(&h, &Arc::new(Edge::default())).await.run());
    // Between two ticks (they fall on quarter seconds here).
    sleep_until(t0 + secs(1.1)).await;
    assert_eq!(count(&h, "Launching instance", "failed"), 0);
    h.lock().desired = 1;
    h.request(Request::Desired);
    sleep(Duration::from_millis(1)).await;
    assert_eq!(count(&h, "Launching instance", "failed"), 1, "the launch waited for the tick at 1.25 s");
}

#[tokio::test(start_paused = true)]
async fn requests_that_arrive_together_make_one_event_and_the_lease_wakes_the_loop() {
    let h = group("min = 0\ndesired = 0", MISSING);
    let mut r = reconciler(&h, &Arc::new(Edge::default())).await;
    h.request(Request::Desired);
    h.request(Request::Refresh);
    h.request(Request::Stop);
    assert_eq!(r.next_event().await, Event::Requested(vec![Request::Desired, Request::Refresh, Request::Stop]));
    let t = Instant::now();
    assert_eq!(r.next_event().await, Event::Tick);
    assert_eq!(t.elapsed(), super::reconciler::RECONCILE_EVERY);

    // A lease change wakes the loop at once, leader or not.
    let (tx, rx) = watch::channel(None);
    r.lead = Some(Lead::new(Arc::new(Lease(rx)), "web"));
    tx.send_replace(Some(7));
    assert_eq!(r.next_event().await, Event::Leadership(Some(7)));
    tx.send_replace(None);
    assert_eq!(r.next_event().await, Event::Leadership(None));
    // The election ended (the cluster shut down): the loop goes on ticking.
    drop(tx);
    assert_eq!(r.next_event().await, Event::Tick);
}

/// A coordinator whose lease the test hands out.
struct Lease(watch::Receiver<Option<u64>>);

type Fut<'a, T> = Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

impl Coordinator for Lease {
    fn leadership(&self, _: &str) -> watch::Receiver<Option<u64>> {
        self.0.clone()
    }

    fn load(&self, _: &str) -> Fut<'_, Option<String>> {
        Box::pin(async { None })
    }

    fn save(&self, _: &str, _: u64, _: String) -> Fut<'_, Result<bool, String>> {
        Box::pin(async { Ok(true) })
    }
}

#[tokio::test(start_paused = true)]
async fn an_instance_never_healthy_is_replaced_after_the_grace_period_then_the_launch_backs_off() {
    let h = group("min = 1\ndesired = 1\nhealth_check_grace = \"10s\"\nstop_timeout = \"5s\"", &["/bin/sleep", "1000"]);
    let t0 = Instant::now();
    tokio::spawn(reconciler(&h, &Arc::new(Edge::default())).await.run());
    sleep_until(t0 + secs(9.9)).await;
    assert_eq!(state(&h, "web-0001"), Some(InstanceState::Pending));
    assert_eq!(count(&h, "Replacing instance", "in_progress"), 0);
    sleep_until(t0 + secs(10.1)).await;
    assert_eq!(count(&h, "Replacing instance web-0001", "in_progress"), 1);
    assert!(matches!(state(&h, "web-0001"), Some(InstanceState::Draining | InstanceState::Terminating) | None));
    // Never healthy counts as a failed launch: the replacement waits 2 s.
    sleep_until(t0 + secs(11.9)).await;
    assert_eq!(count(&h, "Launching instance", "successful"), 1);
    sleep_until(t0 + secs(12.1)).await;
    assert_eq!(count(&h, "Launching instance web-0002", "successful"), 1);
}

/// A process state from `/proc` (`Z` once it has died, until it is reaped).
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 2..].chars().next()
}

/// Waits in real time (the paused clock stands still meanwhile) until `done`, at most 10 s.
fn wait_real(what: &str, done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[tokio::test(start_paused = true)]
async fn scale_in_drains_then_sigterm_then_sigkill_after_the_stop_timeout() {
    let marker: PathBuf = std::env::temp_dir().join(format!("flf-trap-{}", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    let script = format!("trap '' TERM; touch {}; while :; do sleep 0.1; done", marker.display());
    let h = group("min = 0\ndesired = 1\nstop_timeout = \"5s\"", &["/bin/sh", "-c", &script]);
    let edge = Arc::new(Edge::default());
    tokio::spawn(reconciler(&h, &edge).await.run());
    sleep(Duration::from_millis(1)).await;
    // The process ignores SIGTERM from here on.
    wait_real("the instance never started", || marker.exists());
    let pid = h.view().instances[0].pid.unwrap();
    edge.set_all(TargetHealth::Healthy);
    sleep(Duration::from_millis(300)).await;
    assert_eq!(state(&h, "web-0001"), Some(InstanceState::InService));

    h.lock().desired = 0;
    h.request(Request::Desired);
    sleep(Duration::from_millis(1)).await;
    assert_eq!(state(&h, "web-0001"), Some(InstanceState::Draining), "scale-in drains first");
    // The edge let go (deregistering drains at once here): SIGTERM at the next tick.
    sleep(Duration::from_millis(260)).await;
    assert_eq!(state(&h, "web-0001"), Some(InstanceState::Terminating));
    let terminated = Instant::now();
    // Before the stop timeout nobody kills it, however long it takes in real time.
    sleep_until(terminated + secs(4.5)).await;
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(state(&h, "web-0001"), Some(InstanceState::Terminating));
    assert!(proc_state(pid).is_some_and(|s| s != 'Z'), "killed before the stop timeout");
    // After it: SIGKILL, then reaped on the next tick.
    sleep_until(terminated + secs(5.1)).await;
    wait_real("SIGKILL did not end it", || proc_state(pid).is_none_or(|s| s == 'Z'));
    sleep(Duration::from_millis(300)).await;
    assert_eq!(state(&h, "web-0001"), None);
    let act = h.activity();
    let done = act.iter().find(|a| a.description == "Terminated instance web-0001").unwrap();
    assert!(done.cause.contains("signal: 9"), "{}", done.cause);
    let _ = std::fs::remove_file(&marker);
}
