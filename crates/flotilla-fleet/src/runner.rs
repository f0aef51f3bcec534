//! One running instance, whichever driver started it: the reconcile loop asks the same four
//! things of a process and of a container.

use std::time::Duration;

use flotilla_config::{LaunchConfig, LaunchDriver};
use tokio::process::Child;

use crate::container::{Container, Spec};
use crate::engine::Engine;
use crate::process::{self, Placeholders, Usage};

pub enum Runner {
    Process { child: Box<Child>, usage: Usage },
    Docker(Container),
}

/// What the driver needs besides the launch template.
pub struct LaunchContext<'a> {
    pub placeholders: Placeholders<'a>,
    pub group: &'a str,
    pub launch_version: u32,
    pub stop_timeout: Duration,
    pub stats_every: Duration,
    /// Names and labels containers and services with this deployment (and node).
    pub scope: &'a crate::scope::Scope,
}

impl Runner {
    pub fn start(launch: &LaunchConfig, cx: LaunchContext<'_>) -> Result<Self, String> {
        let p = &cx.placeholders;
        match &launch.driver {
            LaunchDriver::Process { command, workdir } => process::spawn(command, workdir.as_deref(), &launch.env, p)
                .map(|child| Runner::Process { child: Box::new(child), usage: Usage::default() })
                .map_err(|e| format!("could not start the command: {e}")),
            LaunchDriver::Docker { image, port, command, cpus, memory, swarm } => {
                let mut env: std::collections::BTreeMap<String, String> =
                    launch.env.iter().map(|(k, v)| (k.clone(), p.apply(v))).collect();
                env.insert("PORT".into(), port.to_string());
                env.insert("FLOTILLA_INSTANCE".into(), p.instance.to_string());
                env.insert("FLOTILLA_GROUP".into(), cx.group.to_string());
                let mut labels = cx.scope.labels(cx.group, swarm.is_some());
                labels.insert("flotilla.instance".into(), p.instance.to_string());
                labels.insert("flotilla.launch_version".into(), cx.launch_version.to_string());
                let spec = Spec {
                    name: cx.scope.name(p.instance, swarm.is_some()),
                    image: image.clone(),
                    // In the container the app listens on the image's port, not the host's.
                    command: command.as_ref().map(|c| {
                        let inner = Placeholders { port: *port, instance: p.instance, group: p.group, zone: p.zone };
                        c.iter().map(|a| inner.apply(a)).collect()
                    }),
                    env,
                    labels,
                    container_port: *port,
                    host_port: p.port,
                    cpus: *cpus,
                    memory: *memory,
                    stop_timeout: cx.stop_timeout,
                    stats_every: cx.stats_every,
                };
                let (engine, instance) = (Engine::default(), p.instance.to_string());
                Ok(Runner::Docker(match swarm {
                    Some(s) => crate::swarm::launch(engine, spec, s.constraints.clone(), instance),
                    None => crate::docker::launch(engine, spec, instance),
                }))
            }
        }
    }

    /// Why it ended, once it has.
    pub fn exited(&mut self) -> Option<String> {
        match self {
            Runner::Process { child, .. } => child.try_wait().ok().flatten().map(|s| s.to_string()),
            Runner::Docker(c) => c.exited(),
        }
    }

    /// The polite stop: SIGTERM for a process; for a container, Docker's stop (SIGTERM, then
    /// SIGKILL after the stop timeout) and removal.
    pub fn terminate(&self) {
        match self {
            Runner::Process { child, .. } => process::terminate(child),
            Runner::Docker(c) => c.terminate(),
        }
    }

    /// SIGKILL after the stop timeout (containers escalate inside Docker's stop).
    pub fn kill(&mut self) {
        if let Runner::Process { child, .. } = self {
            let _ = child.start_kill();
        }
    }

    pub fn pid(&self) -> Option<u32> {
        match self {
            Runner::Process { child, .. } => child.id(),
            Runner::Docker(_) => None,
        }
    }

    /// (cpu % of one core, memory bytes), when known.
    pub fn usage(&mut self) -> Option<(Option<f64>, u64)> {
        match self {
            Runner::Process { child, usage } => child.id().and_then(|pid| usage.sample(pid)),
            Runner::Docker(c) => c.usage(),
        }
    }

    /// Where the instance answers when the engine chose it (Swarm); None: where it was launched.
    pub fn addr(&self) -> Option<std::net::SocketAddr> {
        match self {
            Runner::Process { .. } => None,
            Runner::Docker(c) => c.addr(),
        }
    }

    pub fn container_id(&self) -> Option<String> {
        match self {
            Runner::Process { .. } => None,
            Runner::Docker(c) => c.id(),
        }
    }
}
