//! Where the fleet meets the edge without importing it: the binary implements [`Registrar`]
//! over the edge's target groups.

use std::net::SocketAddr;

/// A target's state as the edge's health checks see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetHealth {
    /// Registered, not yet through `healthy_threshold` checks: gets no traffic.
    Initial,
    Healthy,
    Unhealthy,
    /// Deregistered; finishing in-flight requests.
    Draining,
}

/// What the edge knows about one registered target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TargetStatus {
    pub health: TargetHealth,
    /// Requests the edge has sent this target so far (monotonic).
    pub requests: u64,
    pub in_flight: u32,
}

pub trait Registrar: Send + Sync + 'static {
    /// Adds an instance to a target group; it receives traffic once its health checks pass.
    fn register(&self, target_group: &str, addr: SocketAddr, zone: Option<&str>) -> Result<(), String>;
    /// Starts draining: no new requests; the target disappears once its in-flight requests finish
    /// or the group's deregistration delay runs out. Unknown targets are ignored.
    fn deregister(&self, target_group: &str, addr: SocketAddr);
    /// None once the target is gone from the group (drained, or never registered).
    fn status(&self, target_group: &str, addr: SocketAddr) -> Option<TargetStatus>;
}
