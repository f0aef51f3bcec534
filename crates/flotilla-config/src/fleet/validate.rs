//! Raw → typed for `[groups.*]`: bounds, the launch template and scaling policies.

use std::collections::BTreeMap;
use std::time::Duration;

use super::model::*;
use super::policies::policy;
use super::raw::{RawBudget, RawFleet, RawGroup, RawLaunch, RawSchedule};
use crate::ctx::{valid_name, Ctx};
use crate::raw::{Num, S};
use crate::TargetGroupConfig;

pub(crate) fn groups(
    cx: &mut Ctx<'_>,
    raw: &BTreeMap<S<String>, S<RawGroup>>,
    target_groups: &BTreeMap<String, TargetGroupConfig>,
) -> BTreeMap<String, GroupConfig> {
    let mut out = BTreeMap::new();
    let mut claimed: BTreeMap<String, String> = BTreeMap::new();
    for (name, g) in raw {
        if !valid_name(name.get_ref()) {
            cx.err(name, format!("group name {:?} must be letters, digits, '-' or '_'", name.get_ref()));
        }
        let Some(group) = group(cx, name.get_ref(), g, target_groups) else { continue };
        if let Some(other) = claimed.insert(group.target_group.clone(), group.name.clone()) {
            if let Some(tg) = &g.get_ref().target_group {
                cx.err(
                    tg,
                    format!(
                        "groups.{}.target_group {:?} is already fed by group {other:?}",
                        group.name, group.target_group
                    ),
                );
            }
        }
        out.insert(name.get_ref().clone(), group);
    }
    out
}

fn group(
    cx: &mut Ctx<'_>,
    name: &str,
    raw: &S<RawGroup>,
    target_groups: &BTreeMap<String, TargetGroupConfig>,
) -> Option<GroupConfig> {
    let r = raw.get_ref();
    let key = |k: &str| format!("groups.{name}.{k}");
    let target_group = match &r.target_group {
        Some(tg) => {
            if !target_groups.contains_key(tg.get_ref()) {
                let known: Vec<_> = target_groups.keys().map(String::as_str).collect();
                cx.err(
                    tg,
                    format!("{} {:?} is not defined (known: {})", key("target_group"), tg.get_ref(), known.join(", ")),
                );
            }
            tg.get_ref().clone()
        }
        None => {
            cx.err(raw, format!("[groups.{name}] needs target_group = \"name\" (where its instances register)"));
            String::new()
        }
    };
    let min = cx.int(&r.min, &key("min"), 0..=10_000, 1) as u32;
    let max = cx.int(&r.max, &key("max"), 1..=10_000, min.max(1) as i64) as u32;
    if min > max {
        cx.err_at(
            r.max.as_ref().map_or(raw.span().start, |m| m.span().start),
            format!("{}: min ({min}) is greater than max ({max})", key("max")),
        );
    }
    let desired = cx.int(&r.desired, &key("desired"), 0..=10_000, min as i64) as u32;
    if let Some(d) = &r.desired {
        if desired < min || desired > max {
            cx.err(d, format!("{} ({desired}) must be between min ({min}) and max ({max})", key("desired")));
        }
    }
    let termination_policy = match &r.termination_policy {
        None => vec![TerminationPolicy::ZoneBalance, TerminationPolicy::OldestLaunchTemplate, TerminationPolicy::OldestInstance],
        Some(list) => list
            .iter()
            .filter_map(|p| match p.get_ref().as_str() {
                "zone_balance" => Some(TerminationPolicy::ZoneBalance),
                "oldest_launch_template" => Some(TerminationPolicy::OldestLaunchTemplate),
                "oldest_instance" => Some(TerminationPolicy::OldestInstance),
                "newest_instance" => Some(TerminationPolicy::NewestInstance),
                other => {
                    cx.err(p, format!("{}: unknown rule {other:?} (zone_balance, oldest_launch_template, oldest_instance, newest_instance)", key("termination_policy")));
                    None
                }
            })
            .collect(),
    };
    let zones = r.zones.iter().map(|z| z.get_ref().clone()).collect();
    let launch = match &r.launch {
        Some(l) => launch(cx, name, l),
        None => {
            cx.err(raw, format!("[groups.{name}] needs a [groups.{name}.launch] table (driver, command)"));
            None
        }
    };
    let policies = match &r.policies {
        Some(list) => list.iter().filter_map(|p| policy(cx, name, p)).collect(),
        None => vec![recommended_policy()],
    };
    let schedules = r.schedules.iter().filter_map(|s| schedule(cx, name, s)).collect();
    let metrics_interval = cx.duration(&r.metrics_interval, &key("metrics_interval"), Duration::from_secs(15));
    if metrics_interval < Duration::from_millis(100) {
        if let Some(m) = &r.metrics_interval {
            cx.err(m, format!("{} must be at least 100ms", key("metrics_interval")));
        }
    }
    Some(GroupConfig {
        name: name.to_string(),
        target_group,
        min,
        max,
        desired: desired.clamp(min, max.max(min)),
        health_check_grace: cx.duration(&r.health_check_grace, &key("health_check_grace"), Duration::from_secs(300)),
        instance_warmup: cx.duration(&r.instance_warmup, &key("instance_warmup"), Duration::from_secs(60)),
        cooldown: cx.duration(&r.cooldown, &key("cooldown"), Duration::from_secs(300)),
        termination_policy,
        zones,
        launch: launch?,
        policies,
        metrics_interval,
        stop_timeout: cx.duration(&r.stop_timeout, &key("stop_timeout"), Duration::from_secs(10)),
        budget: r.budget.as_ref().and_then(|b| budget(cx, name, b)),
        schedules,
    })
}

fn launch(cx: &mut Ctx<'_>, name: &str, raw: &S<RawLaunch>) -> Option<LaunchConfig> {
    let r = raw.get_ref();
    let key = |k: &str| format!("groups.{name}.launch.{k}");
    let driver = match r.driver.as_ref().map(|d| (d, d.get_ref().as_str())) {
        None | Some((_, "process")) => {
            let Some(command) = &r.command else {
                cx.err(
                    raw,
                    format!(
                        "{} is required for driver = \"process\", e.g. [\"./app\", \"--port\", \"{{port}}\"]",
                        key("command")
                    ),
                );
                return None;
            };
            if command.get_ref().is_empty() || command.get_ref()[0].is_empty() {
                cx.err(command, format!("{} must name a program", key("command")));
            }
            for (field, present) in [
                ("image", r.image.is_some()),
                ("port", r.port.is_some()),
                ("cpus", r.cpus.is_some()),
                ("memory", r.memory.is_some()),
                ("constraints", r.constraints.is_some()),
            ] {
                if present {
                    cx.err(raw, format!("{}: only the docker and swarm drivers take {field}", key(field)));
                }
            }
            LaunchDriver::Process {
                command: command.get_ref().clone(),
                workdir: r.workdir.as_ref().map(|w| cx.base_dir.join(w.get_ref())),
            }
        }
        Some((_, driver @ ("docker" | "swarm"))) => {
            let Some(image) = &r.image else {
                cx.err(
                    raw,
                    format!("{} is required for driver = \"{driver}\" (a local image, e.g. \"app:1.4\")", key("image")),
                );
                return None;
            };
            let swarm = (driver == "swarm").then(|| SwarmPlacement {
                constraints: r.constraints.as_ref().map(|c| c.get_ref().clone()).unwrap_or_default(),
            });
            if let (None, Some(c)) = (&swarm, &r.constraints) {
                cx.err(c, format!("{}: only the swarm driver takes constraints", key("constraints")));
            }
            if let Some(c) = r.constraints.as_ref().and_then(|c| {
                c.get_ref().iter().find(|c| !c.contains("==") && !c.contains("!=")).map(|bad| (c, bad.clone()))
            }) {
                cx.err(
                    c.0,
                    format!(
                        "{}: {:?} must be a Swarm constraint such as \"node.labels.zone==a\"",
                        key("constraints"),
                        c.1
                    ),
                );
            }
            if let Some(w) = &r.workdir {
                cx.err(w, format!("{}: only the process driver takes workdir", key("workdir")));
            }
            let port = cx.int(&r.port, &key("port"), 1..=65_535, 8080) as u16;
            let cpus = r.cpus.as_ref().and_then(|c| match num(cx, c, &key("cpus")) {
                Some(x) if x > 0.0 && x <= 1024.0 => Some(x),
                Some(_) => {
                    cx.err(c, format!("{} must be between 0 and 1024", key("cpus")));
                    None
                }
                None => None,
            });
            let memory = r.memory.as_ref().map(|_| cx.size(&r.memory, &key("memory"), 0));
            if memory.is_some_and(|m| m < 6 << 20) {
                if let Some(m) = &r.memory {
                    cx.err(m, format!("{} must be at least 6MiB (Docker's minimum)", key("memory")));
                }
            }
            LaunchDriver::Docker {
                image: image.get_ref().clone(),
                port,
                command: r.command.as_ref().map(|c| c.get_ref().clone()),
                cpus,
                memory,
                swarm,
            }
        }
        Some((d, other)) => {
            cx.err(d, format!("{}: unknown driver {other:?} (process, docker, swarm)", key("driver")));
            return None;
        }
    };
    let mut env = BTreeMap::new();
    for (name, value) in &r.env {
        // `${VAR}` is how an instance gets a variable from Flotilla's environment: it inherits
        // none but a small base (see flotilla-fleet's process.rs).
        let v = cx.expand(value, &key(&format!("env.{name}")));
        if name.is_empty() || name.contains(['=', '\0']) {
            cx.err(value, format!("{}: variable name {name:?} must be non-empty, without '=' or NUL", key("env")));
        } else if v.contains('\0') {
            cx.err(value, format!("{}: the value must not contain NUL", key(&format!("env.{name}"))));
        }
        env.insert(name.clone(), v);
    }
    Some(LaunchConfig { driver, env })
}

fn schedule(cx: &mut Ctx<'_>, group: &str, raw: &S<RawSchedule>) -> Option<ScheduleConfig> {
    let r = raw.get_ref();
    let key = |k: &str| format!("groups.{group}.schedules.{k}");
    let Some(text) = &r.cron else {
        cx.err(raw, format!("{} is required, e.g. \"0 8 * * MON-FRI\"", key("cron")));
        return None;
    };
    let cron = match crate::cron::Cron::parse(text.get_ref()) {
        Ok(c) => Some(c),
        Err(e) => {
            cx.err(text, format!("{}: {e}", key("cron")));
            None
        }
    };
    let timezone = match &r.timezone {
        None => "UTC".to_string(),
        Some(tz) => {
            if let Err(e) = jiff::tz::TimeZone::get(tz.get_ref()) {
                cx.err(tz, format!("{}: unknown time zone {:?} ({e})", key("timezone"), tz.get_ref()));
            }
            tz.get_ref().clone()
        }
    };
    let mut bound = |v: &Option<S<i64>>, k: &str| v.as_ref().map(|_| cx.int(v, &key(k), 0..=10_000, 0) as u32);
    let (min, max, desired) = (bound(&r.min, "min"), bound(&r.max, "max"), bound(&r.desired, "desired"));
    if min.is_none() && max.is_none() && desired.is_none() {
        cx.err(raw, format!("{}: a scheduled action needs min, max or desired", key("cron")));
    }
    if let (Some(lo), Some(hi)) = (min, max) {
        if lo > hi {
            cx.err(raw, format!("{}: min ({lo}) is greater than max ({hi})", key("min")));
        }
    }
    Some(ScheduleConfig { cron: cron?, cron_text: text.get_ref().clone(), timezone, min, max, desired })
}

fn budget(cx: &mut Ctx<'_>, group: &str, raw: &S<RawBudget>) -> Option<BudgetConfig> {
    let r = raw.get_ref();
    let key = |k: &str| format!("groups.{group}.budget.{k}");
    let mut positive = |v: &Option<S<Num>>, k: &str| -> Option<f64> {
        let Some(v) = v else {
            cx.err(raw, format!("{} is required", key(k)));
            return None;
        };
        match num(cx, v, &key(k)) {
            Some(x) if x > 0.0 => Some(x),
            Some(_) => {
                cx.err(v, format!("{} must be greater than 0", key(k)));
                None
            }
            None => None,
        }
    };
    let price = positive(&r.price_per_instance_hour, "price_per_instance_hour");
    let monthly = positive(&r.monthly, "monthly");
    let mut alerts: Vec<u32> = match &r.alerts {
        None => vec![50, 80, 100],
        Some(list) => list
            .iter()
            .filter_map(|a| {
                let v = *a.get_ref();
                if (1..=1000).contains(&v) {
                    Some(v as u32)
                } else {
                    cx.err(a, format!("{}: {v} must be a percentage between 1 and 1000", key("alerts")));
                    None
                }
            })
            .collect(),
    };
    alerts.sort_unstable();
    alerts.dedup();
    Some(BudgetConfig {
        price_per_instance_hour: price?,
        monthly: monthly?,
        alerts,
        hard_cap: r.hard_cap.unwrap_or(false),
    })
}

pub(super) fn num(cx: &mut Ctx<'_>, v: &S<Num>, key: &str) -> Option<f64> {
    match v.get_ref() {
        Num::Int(i) => Some(*i as f64),
        Num::Float(f) if f.is_finite() => Some(*f),
        _ => {
            cx.err(v, format!("{key} must be a number"));
            None
        }
    }
}

/// `[fleet]`. The deployment id, when not configured, is derived so that it is stable across
/// restarts (nothing random) and differs between deployments: on a single node from the host
/// name and the config file's path (two Flotillas on one host run from two files); in a cluster
/// from the Redis it shares and its key prefix (what makes the nodes one cluster, so they agree
/// without being told).
pub(crate) fn settings(
    cx: &mut Ctx<'_>,
    raw: Option<&S<RawFleet>>,
    source: &std::path::Path,
    cluster: Option<&crate::ClusterConfig>,
) -> FleetSettings {
    if let Some(d) = raw.and_then(|r| r.get_ref().deployment.as_ref()) {
        let v = d.get_ref().clone();
        let ok = (1..=16).contains(&v.len())
            && v.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !v.starts_with('-')
            && !v.ends_with('-');
        if !ok {
            cx.err(
                d,
                format!("fleet.deployment {v:?} must be 1-16 lower-case letters, digits or '-' (not first or last)"),
            );
        }
        return FleetSettings { deployment: v, deployment_configured: true };
    }
    let seed = match cluster {
        Some(c) => format!("cluster\0{}\0{}", c.redis.location(), c.prefix),
        None => {
            let path = std::fs::canonicalize(source).unwrap_or_else(|_| source.to_path_buf());
            format!("node\0{}\0{}", crate::cluster::validate::host_name(), path.display())
        }
    };
    FleetSettings { deployment: format!("{:08x}", fnv1a(seed.as_bytes()) as u32), deployment_configured: false }
}

/// FNV-1a, 64 bits: a hash that never changes between builds (std's `DefaultHasher` may), so
/// the derived deployment id survives upgrades.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}
