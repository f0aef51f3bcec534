//! The `process` driver: an instance is a child process on 127.0.0.1 with its own port.
//! Output is captured line by line into the log with the instance id; CPU and memory come from
//! `/proc/<pid>/stat`.
//!
//! An instance never inherits Flotilla's environment: that holds Flotilla's own secrets (the
//! admin token, the Redis password, the image signing key, whatever `${VAR}` the config reads),
//! and an app that logs or reports its environment would hand them on. It gets [`BASE_ENV`]
//! (what a program needs to run at all), the group's `env`, and the variables Flotilla sets.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::process::Stdio;
use std::time::Instant;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};

/// Longest output line kept in the log; the rest of the line is dropped.
const MAX_LINE: usize = 8 * 1024;

/// Variables copied from Flotilla's environment, when set. Everything else an instance needs
/// goes in the group's `env` (`FOO = "${FOO}"` passes one on explicitly).
pub const BASE_ENV: &[&str] = &["PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR"];

/// `PATH` for an instance when Flotilla itself has none.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// An instance's whole environment, in the order later entries win: the base taken from
/// `inherited` (Flotilla's environment), the group's `env` with placeholders applied, then
/// `PORT`, `FLOTILLA_INSTANCE` and `FLOTILLA_GROUP`.
pub fn instance_env(
    inherited: impl Fn(&str) -> Option<std::ffi::OsString>,
    env: &std::collections::BTreeMap<String, String>,
    p: &Placeholders<'_>,
) -> Vec<(std::ffi::OsString, std::ffi::OsString)> {
    let mut out: Vec<(std::ffi::OsString, std::ffi::OsString)> =
        BASE_ENV.iter().filter_map(|k| Some(((*k).into(), inherited(k)?))).collect();
    if !out.iter().any(|(k, _)| k == "PATH") {
        out.push(("PATH".into(), DEFAULT_PATH.into()));
    }
    out.extend(env.iter().map(|(k, v)| (k.into(), p.apply(v).into())));
    out.push(("PORT".into(), p.port.to_string().into()));
    out.push(("FLOTILLA_INSTANCE".into(), p.instance.into()));
    out.push(("FLOTILLA_GROUP".into(), p.group.into()));
    out
}

/// Values substituted into the command, arguments and environment.
pub struct Placeholders<'a> {
    pub port: u16,
    pub instance: &'a str,
    pub group: &'a str,
    pub zone: Option<&'a str>,
}

impl Placeholders<'_> {
    pub fn apply(&self, s: &str) -> String {
        s.replace("{port}", &self.port.to_string())
            .replace("{instance}", self.instance)
            .replace("{group}", self.group)
            .replace("{zone}", self.zone.unwrap_or(""))
    }
}

/// A free port on 127.0.0.1 (the kernel's choice), skipping ones the group already handed out.
pub fn free_port(taken: &dyn Fn(u16) -> bool) -> std::io::Result<u16> {
    for _ in 0..32 {
        let port = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?.local_addr()?.port();
        if !taken(port) {
            return Ok(port);
        }
    }
    Err(std::io::Error::other("no free port after 32 tries"))
}

/// Starts one instance. A leading `flotilla` in the command means this very binary, so the
/// quickstart's `flotilla demo-app` works without `flotilla` on PATH.
pub fn spawn(
    command: &[String],
    workdir: Option<&std::path::Path>,
    env: &std::collections::BTreeMap<String, String>,
    p: &Placeholders<'_>,
) -> std::io::Result<Child> {
    let program = match command.first().map(String::as_str) {
        Some("flotilla") => std::env::current_exe()?.into_os_string(),
        Some(other) => p.apply(other).into(),
        None => return Err(std::io::Error::other("empty command")),
    };
    let mut cmd = Command::new(program);
    cmd.args(command.iter().skip(1).map(|a| p.apply(a)))
        .env_clear()
        .envs(instance_env(|k| std::env::var_os(k), env, p))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(dir) = workdir {
        cmd.current_dir(dir);
    }
    // SAFETY: prctl is async-signal-safe; it only asks the kernel to SIGTERM the child when this
    // process dies, so a crashed or SIGKILLed flotilla leaves no orphans behind.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    if let Some(out) = child.stdout.take() {
        tokio::spawn(forward_lines(out, p.instance.to_string(), "stdout"));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(forward_lines(err, p.instance.to_string(), "stderr"));
    }
    Ok(child)
}

async fn forward_lines(stream: impl AsyncRead + Unpin, instance: String, name: &'static str) {
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        // Read up to a newline but keep at most MAX_LINE bytes of it.
        let mut too_long = false;
        loop {
            let buf = match reader.fill_buf().await {
                Ok([]) | Err(_) => return,
                Ok(b) => b,
            };
            let (chunk, done) = match buf.iter().position(|&b| b == b'\n') {
                Some(i) => (&buf[..i], Some(i + 1)),
                None => (buf, None),
            };
            let room = MAX_LINE.saturating_sub(line.len());
            too_long |= chunk.len() > room;
            line.extend_from_slice(&chunk[..chunk.len().min(room)]);
            let used = done.unwrap_or(buf.len());
            reader.consume(used);
            if done.is_some() {
                break;
            }
        }
        let text = String::from_utf8_lossy(&line);
        tracing::info!(instance = %instance, stream = name, truncated = too_long, "{}", text.trim_end());
    }
}

/// Sends SIGTERM (the polite stop); the caller escalates to SIGKILL after the stop timeout.
pub fn terminate(child: &Child) {
    if let Some(pid) = child.id() {
        // SAFETY: plain kill(2) on our own child's pid, which is still unreaped (id() is Some).
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGTERM);
        }
    }
}

/// CPU (% of one core) and memory of a process, from deltas of `/proc/<pid>/stat`.
#[derive(Default)]
pub struct Usage {
    last: Option<(Instant, u64)>,
}

impl Usage {
    /// Returns (cpu %, resident bytes) since the previous call; cpu is None on the first call.
    pub fn sample(&mut self, pid: u32) -> Option<(Option<f64>, u64)> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name may contain spaces; fields resume after the last ')'.
        let rest = &stat[stat.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split_ascii_whitespace().collect();
        // Field numbers from proc(5), minus the two before `rest`: utime 14, stime 15, rss 24.
        let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
        let rss_pages: u64 = f.get(21)?.parse().ok()?;
        // SAFETY: sysconf only reads a constant.
        let (hz, page) = unsafe { (libc::sysconf(libc::_SC_CLK_TCK), libc::sysconf(libc::_SC_PAGESIZE)) };
        let now = Instant::now();
        let cpu = self.last.and_then(|(t, prev)| {
            let wall = now.duration_since(t).as_secs_f64();
            (wall > 0.0 && hz > 0).then(|| ticks.saturating_sub(prev) as f64 / hz as f64 / wall * 100.0)
        });
        self.last = Some((now, ticks));
        Some((cpu, rss_pages * page.max(0) as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instance_gets_the_base_its_env_and_ours_but_nothing_else() {
        let parent = |k: &str| match k {
            "HOME" => Some("/home/app".into()),
            "FLOTILLA_ADMIN_TOKEN" | "REDIS_PASSWORD" => Some("secret".into()),
            _ => None,
        };
        let env = [("APP_MODE".to_string(), "on-{port}".to_string()), ("PORT".to_string(), "1".to_string())].into();
        let p = Placeholders { port: 9001, instance: "web-0001", group: "web", zone: None };
        let got: std::collections::BTreeMap<String, String> = instance_env(parent, &env, &p)
            .into_iter()
            .map(|(k, v)| (k.into_string().unwrap(), v.into_string().unwrap()))
            .collect();
        let want: std::collections::BTreeMap<String, String> = [
            ("HOME", "/home/app"),
            ("PATH", DEFAULT_PATH),
            ("APP_MODE", "on-9001"),
            // Flotilla's own variables win over the group's.
            ("PORT", "9001"),
            ("FLOTILLA_INSTANCE", "web-0001"),
            ("FLOTILLA_GROUP", "web"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(got, want);
    }
}
