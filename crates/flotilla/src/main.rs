//! `flotilla`: the one binary. Parses the command line, sets up logging, and hands off to a
//! subcommand: `up` (run everything the config describes), `validate`, `invalidate`, `status`,
//! `groups`, `scale`, `refresh`, `activity`, `simulate`, `demo-app` (with the `demo` feature, on
//! by default: the app is the `flotilla-demo` crate).

mod admin_client;
mod certs;
mod cluster_bridge;
mod fleet_bridge;
mod groups_cli;
mod invalidate;
mod logging;
mod simulate;
mod status;
mod up;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc instead of glibc malloc: a proxied request makes dozens of short-lived allocations,
/// and glibc's spent ~17% of the edge's user-space instructions on them (callgrind, bench/).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "flotilla", version, about = "A self-hosted production edge: load balancer, cache, fleet, watch")]
struct Cli {
    /// Log format: json (one object per line; the access log is always JSON) or text.
    #[arg(long, global = true, default_value = "json", value_parser = ["json", "text"])]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the edge (and admin API) described by the config file until SIGTERM.
    Up {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Check a config file; prints every error as FILE:LINE:COL: message.
    Validate {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Invalidate cached responses through the admin API named in the config file.
    Invalidate {
        #[arg(long, short, default_value = "flotilla.toml")]
        config: PathBuf,
        /// Paths to invalidate: exact (`/app.css`) or prefix (`/img/*`).
        paths: Vec<String>,
        /// Invalidate responses tagged with this Surrogate-Key / Cache-Tag (repeatable).
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// Invalidate everything (as on a deployment).
        #[arg(long, conflicts_with_all = ["paths", "tags"])]
        all: bool,
    },
    /// Show the auto scaling groups and their instances (through the admin API).
    Groups {
        #[arg(long, short, default_value = "flotilla.toml")]
        config: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Set a group's desired capacity (within its min and max).
    Scale {
        #[arg(long, short, default_value = "flotilla.toml")]
        config: PathBuf,
        group: String,
        desired: u32,
        #[arg(long)]
        json: bool,
    },
    /// Replace every instance running an older launch template, in batches, with progress.
    Refresh {
        #[arg(long, short, default_value = "flotilla.toml")]
        config: PathBuf,
        group: String,
        /// Share of desired capacity kept in service while replacing.
        #[arg(long, default_value_t = 90)]
        min_healthy: u32,
        /// Pause when this percentage of instances is replaced (repeatable).
        #[arg(long = "checkpoint")]
        checkpoints: Vec<u32>,
        #[arg(long, default_value = "60s")]
        checkpoint_delay: String,
        /// Do not go back to the previous template when new instances fail.
        #[arg(long)]
        no_rollback: bool,
        /// Start it and return instead of following it.
        #[arg(long)]
        detach: bool,
    },
    /// A group's scaling history, newest first, with the cause of each action.
    Activity {
        #[arg(long, short, default_value = "flotilla.toml")]
        config: PathBuf,
        group: String,
        #[arg(long)]
        json: bool,
    },
    /// A compact view in the terminal: targets, groups, rates, latency, alarms, SLOs.
    Status {
        #[arg(long, short, default_value = "flotilla.toml")]
        config: PathBuf,
        /// Redraw every two seconds until interrupted.
        #[arg(long)]
        watch: bool,
    },
    /// Replay a request-rate trace (`timestamp,value` CSV) through a group's scaling policies.
    Simulate {
        #[arg(long)]
        trace: PathBuf,
        #[arg(long, short)]
        config: PathBuf,
        /// The group to simulate (needed when the file has several).
        #[arg(long)]
        group: Option<String>,
        /// Capacity model: the busiest minute at this percentile ...
        #[arg(long, default_value_t = 100.0)]
        peak_percentile: f64,
        /// ... needs this many instances at 100 % CPU.
        #[arg(long, default_value_t = 8.0)]
        peak_instances: f64,
        /// Time from launch until an instance serves.
        #[arg(long, default_value = "60s", value_parser = simulate::parse_startup)]
        startup: std::time::Duration,
        #[arg(long)]
        min: Option<u32>,
        #[arg(long)]
        max: Option<u32>,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
        /// Also print every scaling action with its time and cause.
        #[arg(long)]
        actions: bool,
    },
    /// Every certificate the edge serves (files and ACME): names, issuer, expiry, renewals.
    Certs {
        #[arg(long, short, default_value = "flotilla.toml")]
        config: PathBuf,
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// A small web app for the quickstart and tests (/, /whoami, /health, /work, /ws, /static, /photos, /orders, /chaos).
    #[cfg(feature = "demo")]
    DemoApp {
        #[arg(long)]
        port: u16,
        #[arg(long, default_value = "demo")]
        id: String,
        #[arg(long, default_value = "127.0.0.1")]
        bind: std::net::IpAddr,
        /// Serve the files of this directory at /photos/NAME (originals for `[images]`).
        #[arg(long)]
        photos: Option<std::path::PathBuf>,
        /// Append each order applied by POST /orders to this file ("ID INSTANCE" per line).
        #[arg(long)]
        journal: Option<std::path::PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate { config } => validate(&config),
        Command::Up { config } => {
            let _guard = logging::init(&cli.log_format);
            // The data path runs on its own worker threads (see flotilla-edge's worker.rs); this
            // runtime only carries the control plane: admin API, health checks, signals.
            let control = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(Into::into);
            report(control.and_then(|rt| rt.block_on(up::run(config))))
        }
        Command::Invalidate { config, paths, tags, all } => {
            report_plain(runtime().and_then(|rt| rt.block_on(invalidate::run(&config, paths, tags, all))))
        }
        Command::Status { config, watch } => {
            report_plain(runtime().and_then(|rt| rt.block_on(status::run(&config, watch))))
        }
        Command::Groups { config, json } => {
            report_plain(runtime().and_then(|rt| rt.block_on(groups_cli::list(&config, json))))
        }
        Command::Scale { config, group, desired, json } => {
            report_plain(runtime().and_then(|rt| rt.block_on(groups_cli::scale(&config, &group, desired, json))))
        }
        Command::Refresh { config, group, min_healthy, checkpoints, checkpoint_delay, no_rollback, detach } => {
            let args =
                groups_cli::RefreshArgs { group, min_healthy, checkpoints, checkpoint_delay, no_rollback, detach };
            report_plain(runtime().and_then(|rt| rt.block_on(groups_cli::refresh(&config, args))))
        }
        Command::Activity { config, group, json } => {
            report_plain(runtime().and_then(|rt| rt.block_on(groups_cli::activity(&config, &group, json))))
        }
        Command::Simulate {
            trace,
            config,
            group,
            peak_percentile,
            peak_instances,
            startup,
            min,
            max,
            json,
            actions,
        } => {
            let model = flotilla_fleet::simulate::Model { peak_percentile, peak_instances, startup, min, max };
            report_plain(simulate::run(simulate::Args { trace, config, group, model, json, actions }))
        }
        Command::Certs { config, json } => {
            report_plain(runtime().and_then(|rt| rt.block_on(certs::print(&config, json))))
        }
        #[cfg(feature = "demo")]
        Command::DemoApp { port, id, bind, photos, journal } => {
            let _guard = logging::init(&cli.log_format);
            let opts = flotilla_demo::Options { photos, journal };
            report(runtime().and_then(|rt| rt.block_on(flotilla_demo::run(bind, port, id, opts))))
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("flotilla: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// For CLI subcommands without logging: the error goes to stderr.
fn report_plain(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flotilla: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn validate(path: &std::path::Path) -> ExitCode {
    match flotilla_config::load(path) {
        Ok(cfg) => {
            for w in &cfg.warnings {
                eprintln!("{}: warning: {w}", path.display());
            }
            println!("{}: ok", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
