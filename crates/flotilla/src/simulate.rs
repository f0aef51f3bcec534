//! `flotilla simulate`: replay a request-rate trace through a group's policies.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use flotilla_fleet::simulate::{self, Model, Trace};

pub struct Args {
    pub trace: PathBuf,
    pub config: PathBuf,
    pub group: Option<String>,
    pub model: Model,
    pub json: bool,
    pub actions: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let cfg = flotilla_config::load(&args.config).map_err(|e| anyhow::anyhow!("{e}"))?;
    let group = match &args.group {
        Some(name) => {
            cfg.groups.get(name).with_context(|| format!("no [groups.{name}] in {}", args.config.display()))?
        }
        None => match cfg.groups.values().collect::<Vec<_>>().as_slice() {
            [only] => *only,
            [] => bail!("{} has no [groups.*] to simulate", args.config.display()),
            _ => bail!("{} has several groups: pick one with --group", args.config.display()),
        },
    };
    let text = std::fs::read_to_string(&args.trace).with_context(|| format!("reading {}", args.trace.display()))?;
    let trace = Trace::parse(&text).with_context(|| format!("{}", args.trace.display()))?;
    let r = simulate::run(&trace, group, &args.model);
    if args.actions {
        for a in &r.actions {
            let at = flotilla_fleet::simulate::format_time(a.at);
            println!("{at}  {:>3} -> {:<3} {}", a.from, a.to, a.cause);
        }
    }
    if args.json {
        println!("{}", serde_json::to_string(&r)?);
        return Ok(());
    }
    let ratio = if r.oracle_instance_hours > 0.0 { r.instance_hours / r.oracle_instance_hours } else { 0.0 };
    println!("trace                    {} ({} minutes, {:?} buckets)", args.trace.display(), r.minutes, trace.bucket);
    println!(
        "group                    {} (min {}, max {})",
        group.name,
        args.model.min.unwrap_or(group.min),
        args.model.max.unwrap_or(group.max)
    );
    println!("capacity per instance    {:.1} requests/minute at 100 % CPU", r.capacity_per_instance);
    println!("instance-hours           {:.1} ({ratio:.2} x oracle {:.1})", r.instance_hours, r.oracle_instance_hours);
    println!("under-capacity minutes   {}", r.under_capacity_minutes);
    println!("scaling actions          {}", r.scaling_actions);
    println!("peak instances           {}", r.peak_instances);
    Ok(())
}

pub fn parse_startup(s: &str) -> Result<Duration, String> {
    flotilla_config::units::parse_duration(s)
}
