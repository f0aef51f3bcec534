//! A real nginx from Debian (`apt-get install -y nginx`) as an origin: a static site in a
//! scratch directory on a free loopback port, in the foreground, killed when dropped. Tests use
//! it where the issue names nginx's own behaviour (it answers 400 to a request head over its
//! `large_client_header_buffers` and to a request without `Host`).

use std::path::PathBuf;
use std::process::{Command, Stdio};

use super::{free_port, scratch_dir, wait_for_port, Proc};

pub struct Nginx {
    pub port: u16,
    /// The document root (`<dir>/www`), for the test to write pages into.
    pub root: PathBuf,
    pub dir: PathBuf,
    pub proc: Proc,
}

impl Nginx {
    /// Starts nginx with `server` added inside its one `server { }` block.
    pub fn start(name: &str, server: &str) -> Self {
        let bin = ["/usr/sbin/nginx", "/usr/local/sbin/nginx"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("nginx is not installed: apt-get install -y nginx (listed in .ci/run)");
        let dir = scratch_dir(&format!("nginx-{name}"));
        let root = dir.join("www");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(dir.join("tmp")).unwrap();
        let port = free_port();
        let d = dir.display();
        let conf = format!(
            "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n  include /etc/nginx/mime.types;\n  access_log {d}/access.log;\n\
             client_body_temp_path {d}/tmp/body;\n  proxy_temp_path {d}/tmp/proxy;\n\
             fastcgi_temp_path {d}/tmp/fastcgi;\n  uwsgi_temp_path {d}/tmp/uwsgi;\n  scgi_temp_path {d}/tmp/scgi;\n\
             server {{\n    listen 127.0.0.1:{port};\n    root {d}/www;\n    {server}\n  }}\n}}\n"
        );
        std::fs::write(dir.join("nginx.conf"), conf).unwrap();
        let child = Command::new(bin)
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .args(["-g", "daemon off; master_process off;"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for_port(port);
        Self { port, root, dir, proc: Proc { child } }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Requests nginx has logged (its access log), one per line.
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("access.log")).unwrap_or_default()
    }
}

/// A location body that echoes every input an origin could build a page from, for the
/// trust-boundary tests: `location / { ECHO }`.
pub const ECHO: &str = "return 200 \"uri=$request_uri host=$http_host xff=$http_x_forwarded_for xfp=$http_x_forwarded_proto xfh=$http_x_forwarded_host fwd=$http_forwarded real=$http_x_real_ip orig=$http_x_original_url upgrade=$http_upgrade override=$http_x_http_method_override auth=$http_authorization n=$connection_requests\\n\";";
