//! The fleet's [`Registrar`] over the edge's target groups: the one place the two meet.

use std::net::SocketAddr;
use std::sync::Arc;

use flotilla_config::TargetConfig;
use flotilla_edge::{Edge, TargetState};
use flotilla_fleet::{Registrar, TargetHealth, TargetStatus};

pub struct EdgeRegistrar(pub Arc<Edge>);

impl Registrar for EdgeRegistrar {
    fn register(&self, target_group: &str, addr: SocketAddr, zone: Option<&str>) -> Result<(), String> {
        let target = TargetConfig { addr, zone: zone.map(String::from), weight: 1 };
        self.0.register(target_group, target).map(|_| ()).map_err(|e| e.to_string())
    }

    fn deregister(&self, target_group: &str, addr: SocketAddr) {
        // Already gone (or draining) is fine: the fleet only needs it out of rotation.
        let _ = self.0.deregister(target_group, addr);
    }

    fn status(&self, target_group: &str, addr: SocketAddr) -> Option<TargetStatus> {
        let t = self.0.target(target_group, addr)?;
        let health = match t.state {
            TargetState::Initial => TargetHealth::Initial,
            TargetState::Healthy => TargetHealth::Healthy,
            TargetState::Unhealthy => TargetHealth::Unhealthy,
            TargetState::Draining => TargetHealth::Draining,
        };
        Some(TargetStatus { health, requests: t.requests, in_flight: t.in_flight })
    }
}
