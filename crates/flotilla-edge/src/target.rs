//! One backend target's live state: health, in-flight count, drain deadline, slow-start ramp.
//! Everything the request path reads is an atomic, so picking a target never takes a lock.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;

/// Lifecycle of a target, as ALB reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetState {
    /// Registered, has not yet passed `healthy_threshold` checks; takes no traffic.
    Initial,
    Healthy,
    Unhealthy,
    /// Deregistered: gets no new requests, in-flight ones finish until the delay runs out.
    Draining,
}

impl TargetState {
    pub fn as_str(self) -> &'static str {
        match self {
            TargetState::Initial => "initial",
            TargetState::Healthy => "healthy",
            TargetState::Unhealthy => "unhealthy",
            TargetState::Draining => "draining",
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            0 => TargetState::Initial,
            1 => TargetState::Healthy,
            2 => TargetState::Unhealthy,
            _ => TargetState::Draining,
        }
    }
}

/// Where a target came from: config targets are reconciled on reload, API ones are left alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetSource {
    Config,
    Api,
}

pub struct Target {
    pub addr: SocketAddr,
    pub zone: Option<String>,
    pub source: TargetSource,
    /// Opaque id used as the sticky-session cookie value (does not reveal the address).
    pub id: String,
    weight: AtomicU32,
    state: AtomicU8,
    outstanding: AtomicU32,
    /// Active-check streaks; passive ejection resets `ok_streak` so recovery needs fresh passes.
    pub(crate) ok_streak: AtomicU32,
    pub(crate) fail_streak: AtomicU32,
    /// Passive streaks from real traffic.
    pub(crate) connect_fail_streak: AtomicU32,
    pub(crate) status_5xx_streak: AtomicU32,
    healthy_since: Mutex<Option<Instant>>,
    /// Set when the target leaves the group, so its health-check task stops.
    pub(crate) removed: AtomicBool,
    /// Requests by status class 1xx..5xx, resolved once so the hot path does no label lookups.
    pub(crate) by_class: [Counter; 5],
}

impl Target {
    pub(crate) fn new(
        addr: SocketAddr,
        zone: Option<String>,
        weight: u32,
        source: TargetSource,
        initial: TargetState,
        by_class: [Counter; 5],
    ) -> Self {
        let healthy_since = (initial == TargetState::Healthy).then(Instant::now);
        Self {
            addr,
            zone,
            source,
            id: sticky_id(addr, None),
            weight: AtomicU32::new(weight.max(1)),
            state: AtomicU8::new(initial as u8),
            outstanding: AtomicU32::new(0),
            ok_streak: AtomicU32::new(0),
            fail_streak: AtomicU32::new(0),
            connect_fail_streak: AtomicU32::new(0),
            status_5xx_streak: AtomicU32::new(0),
            healthy_since: Mutex::new(healthy_since),
            removed: AtomicBool::new(false),
            by_class,
        }
    }

    /// Responses (and upgrades) this target has produced so far.
    pub fn requests(&self) -> u64 {
        self.by_class.iter().map(|c| c.get()).sum()
    }

    pub fn state(&self) -> TargetState {
        TargetState::from_u8(self.state.load(Ordering::Acquire))
    }

    /// Moves to `to` unless the target is draining (draining is final). Returns the old state
    /// if a transition happened.
    pub(crate) fn transition(&self, to: TargetState) -> Option<TargetState> {
        let mut cur = self.state.load(Ordering::Acquire);
        loop {
            let from = TargetState::from_u8(cur);
            if from == to || (from == TargetState::Draining && to != TargetState::Draining) {
                return None;
            }
            match self.state.compare_exchange(cur, to as u8, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    if to == TargetState::Healthy {
                        *self.healthy_since.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
                    }
                    return Some(from);
                }
                Err(actual) => cur = actual,
            }
        }
    }

    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    pub(crate) fn set_weight(&self, w: u32) {
        self.weight.store(w.max(1), Ordering::Relaxed);
    }

    pub fn outstanding(&self) -> u32 {
        self.outstanding.load(Ordering::Relaxed)
    }

    /// Weight scaled by 1000 and by the slow-start ramp: a target that just became healthy gets
    /// a small share that grows linearly to its full weight over `slow_start`.
    pub(crate) fn effective_weight(&self, slow_start: Duration, now: Instant) -> u64 {
        let full = u64::from(self.weight()) * 1000;
        if slow_start.is_zero() {
            return full;
        }
        let since = *self.healthy_since.lock().unwrap_or_else(|e| e.into_inner());
        match since {
            Some(t) => {
                let elapsed = now.saturating_duration_since(t);
                if elapsed >= slow_start {
                    full
                } else {
                    let frac = elapsed.as_secs_f64() / slow_start.as_secs_f64();
                    ((full as f64 * frac) as u64).max(full / 100).max(1)
                }
            }
            None => full,
        }
    }

    /// Counts one in-flight request until the guard drops (when the response body is done).
    pub(crate) fn begin(self: &Arc<Self>) -> InFlight {
        self.outstanding.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }
}

/// RAII in-flight marker: least-outstanding balancing and draining both read the count.
pub struct InFlight(Arc<Target>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A target's sticky-cookie value: an HMAC of its address under `cluster.secret` (a fixed key
/// without one), so every node with the same secret computes the same value for the same target
/// and honours a cookie another node set, with no shared state; a client can neither read the
/// address from it nor make one for another target.
pub(crate) fn sticky_id(addr: SocketAddr, secret: Option<&str>) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.map_or(&b"flotilla-sticky"[..], str::as_bytes));
    let tag = ring::hmac::sign(&key, addr.to_string().as_bytes());
    tag.as_ref()[..12].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(state: TargetState) -> Target {
        Target::new("127.0.0.1:1".parse().unwrap(), None, 2, TargetSource::Config, state, Default::default())
    }

    #[test]
    fn sticky_ids_are_signed_and_stable() {
        let a: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let first = sticky_id(a, Some("s3cret"));
        assert_eq!(first.len(), 24);
        assert_eq!(first, sticky_id(a, Some("s3cret")), "the same on every call (and every node with the same key)");
        assert_ne!(first, sticky_id("127.0.0.1:8081".parse().unwrap(), Some("s3cret")));
        assert_ne!(first, sticky_id(a, Some("other")), "another secret gives another value");
        assert_ne!(first, sticky_id(a, None));
    }

    #[test]
    fn draining_is_final() {
        let t = target(TargetState::Healthy);
        assert_eq!(t.transition(TargetState::Draining), Some(TargetState::Healthy));
        assert_eq!(t.transition(TargetState::Healthy), None);
        assert_eq!(t.state(), TargetState::Draining);
    }

    #[test]
    fn slow_start_ramps_linearly() {
        let t = target(TargetState::Initial);
        t.transition(TargetState::Healthy);
        let t0 = Instant::now();
        let ramp = Duration::from_secs(100);
        let w_early = t.effective_weight(ramp, t0);
        let w_half = t.effective_weight(ramp, t0 + Duration::from_secs(50));
        let w_full = t.effective_weight(ramp, t0 + Duration::from_secs(200));
        assert!(w_early <= 100, "{w_early}");
        assert!((950..=1050).contains(&w_half), "{w_half}");
        assert_eq!(w_full, 2000);
        assert_eq!(t.effective_weight(Duration::ZERO, t0), 2000);
    }

    #[test]
    fn in_flight_guard_counts() {
        let t = Arc::new(target(TargetState::Healthy));
        let g1 = t.begin();
        let g2 = t.begin();
        assert_eq!(t.outstanding(), 2);
        drop(g1);
        drop(g2);
        assert_eq!(t.outstanding(), 0);
    }
}
