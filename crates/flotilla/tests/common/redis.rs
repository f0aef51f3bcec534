//! A real `redis-server` for the cluster tests, on a free loopback port.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use super::{free_port, scratch_dir, wait_for_port, Proc};

/// A `redis-server` on a free port, without persistence unless asked; killed on drop.
pub struct Redis {
    pub port: u16,
    pub dir: PathBuf,
    pub proc: Option<Proc>,
    /// Extra `redis-server` arguments (e.g. `--requirepass`).
    extra: Vec<String>,
}

impl Redis {
    pub fn start(name: &str) -> Option<Redis> {
        Self::start_with(name, &[])
    }

    /// Like `start`, with extra `redis-server` arguments.
    pub fn start_with(name: &str, extra: &[&str]) -> Option<Redis> {
        if Command::new("redis-server").arg("--version").stdout(Stdio::null()).status().is_err() {
            eprintln!("SKIP: redis-server is not installed (.ci/run installs it)");
            return None;
        }
        let mut r = Redis {
            port: free_port(),
            dir: scratch_dir(&format!("redis-{name}")),
            proc: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        r.run();
        Some(r)
    }

    pub fn run(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.proc = Some(Proc { child });
        wait_for_port(self.port);
    }

    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill9();
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli").args(["-p", &self.port.to_string()]).args(args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}
