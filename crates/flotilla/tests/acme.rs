//! Managed certificates against Pebble, Let's Encrypt's own test CA (Debian's `pebble` and
//! `pebble-challtestsrv`), all on loopback: the test DNS server answers every name with
//! 127.0.0.1 and Pebble's validation authority connects to the edge's own listeners, so the
//! challenges are answered by the real binary exactly as a public CA would see them.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A running Pebble and its DNS; killed on drop.
struct Pebble {
    _dns: Proc,
    _ca: Proc,
    acme_port: u16,
    mgmt_port: u16,
    /// pebble-challtestsrv's management API (to change what the test DNS answers).
    dns_mgmt: u16,
    /// The root that signed Pebble's own HTTPS certificate (what `trust` names).
    trust: PathBuf,
}

fn need(cmd: &str) {
    let found = std::process::Command::new("sh").args(["-c", &format!("command -v {cmd}")]).output().unwrap();
    assert!(found.status.success(), "{cmd} is not installed (apt-get install pebble; .ci/run does)");
}

/// Starts Pebble validating against the edge's plain (`http_port`) and TLS (`tls_port`) ports;
/// `validity` (seconds) makes short-lived certificates for renewal tests.
fn start_pebble(dir: &Path, http_port: u16, tls_port: u16, validity: Option<u64>) -> Pebble {
    need("pebble");
    need("pebble-challtestsrv");
    // Pebble's HTTPS listener needs a certificate; the edge is told to trust its CA.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "Pebble listener test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let trust = dir.join("pebble-ca.pem");
    std::fs::write(&trust, ca.pem()).unwrap();
    std::fs::write(dir.join("pebble-cert.pem"), leaf.pem()).unwrap();
    std::fs::write(dir.join("pebble-key.pem"), key.serialize_pem()).unwrap();
    let (acme_port, mgmt_port, dns_port, dns_mgmt) = (free_port(), free_port(), free_port(), free_port());
    let mut config = serde_json::json!({ "pebble": {
        "listenAddress": format!("127.0.0.1:{acme_port}"),
        "managementListenAddress": format!("127.0.0.1:{mgmt_port}"),
        "certificate": dir.join("pebble-cert.pem"),
        "privateKey": dir.join("pebble-key.pem"),
        "httpPort": http_port,
        "tlsPort": tls_port,
        "ocspResponderURL": "",
        "externalAccountBindingRequired": false,
    }});
    if let Some(v) = validity {
        config["pebble"]["certificateValidityPeriod"] = v.into();
    }
    std::fs::write(dir.join("pebble.json"), config.to_string()).unwrap();
    let log = |name: &str| std::fs::File::create(dir.join(name)).unwrap();
    let dns = std::process::Command::new("pebble-challtestsrv")
        .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
        .args(["-dns01", &format!("127.0.0.1:{dns_port}"), "-management", &format!("127.0.0.1:{dns_mgmt}")])
        .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
        .stdout(log("challtestsrv.log"))
        .stderr(log("challtestsrv.err"))
        .spawn()
        .unwrap();
    let ca = std::process::Command::new("pebble")
        .args(["-config", dir.join("pebble.json").to_str().unwrap(), "-dnsserver", &format!("127.0.0.1:{dns_port}")])
        .env("PEBBLE_VA_NOSLEEP", "1")
        .env("PEBBLE_WFE_NONCEREJECT", "0")
        // Every order validates afresh (a reused authorization would hide a failing challenge).
        .env("PEBBLE_AUTHZREUSE", "0")
        .stdout(log("pebble.log"))
        .stderr(log("pebble.err"))
        .spawn()
        .unwrap();
    let (dns, ca) = (Proc { child: dns }, Proc { child: ca });
    wait_for_port(acme_port);
    wait_for_port(mgmt_port);
    wait_for_port(dns_mgmt);
    Pebble { _dns: dns, _ca: ca, acme_port, mgmt_port, dns_mgmt, trust }
}

impl Pebble {
    fn directory(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.acme_port)
    }

    /// The root Pebble issues from (its management API), to verify the edge's certificates.
    fn issuing_root(&self) -> String {
        let out = std::process::Command::new("curl")
            .args(["-sS", "--fail", "--cacert", self.trust.to_str().unwrap()])
            .arg(format!("https://127.0.0.1:{}/roots/0", self.mgmt_port))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    /// Makes the test DNS answer `host` with `ip` (e.g. an address nothing listens on).
    fn point(&self, host: &str, ip: &str) {
        let body = serde_json::json!({ "host": host, "addresses": [ip] }).to_string();
        let out = std::process::Command::new("curl")
            .args(["-sS", "--fail", "-d", &body])
            .arg(format!("http://127.0.0.1:{}/add-a", self.dns_mgmt))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
}

/// What every test here starts with: a scratch dir, a demo app, ports (plain, TLS, admin) and a
/// Pebble validating against the first two.
struct Setup {
    dir: PathBuf,
    app: DemoApp,
    ports: (u16, u16, u16),
    pebble: Pebble,
}

fn setup(name: &str, app_id: &str, validity: Option<u64>) -> Setup {
    let dir = scratch_dir(name);
    let app = DemoApp::start(app_id);
    let ports = (free_port(), free_port(), free_port());
    let pebble = start_pebble(&dir, ports.0, ports.1, validity);
    Setup { dir, app, ports, pebble }
}

/// The edge with `[edge.tls]` on `tls_port` managed by ACME for `domains`, behind Pebble.
fn start_edge(dir: &Path, pebble: &Pebble, ports: (u16, u16, u16), app: &DemoApp, acme_extra: &str) -> Flotilla {
    let (port, tls_port, admin_port) = ports;
    let text = format!(
        "[edge]\nlisten = [\"127.0.0.1:{port}\"]\n\n[edge.tls]\nlisten = [\"127.0.0.1:{tls_port}\"]\nredirect_http = true\n\n\
         [edge.tls.acme]\nemail = \"ops@flotilla.test\"\ndirectory = \"{}\"\nstorage = \"acme\"\ntrust = \"{}\"\n{acme_extra}\n\n\
         [admin]\nlisten = \"127.0.0.1:{admin_port}\"\ntoken = \"test-token\"\n\n{ROUTE_ALL}{}",
        pebble.directory(),
        pebble.trust.display(),
        group_toml("web", &[app], "")
    );
    Flotilla::start_logging(dir, &text, port, admin_port, "info,flotilla_acme=debug")
}

async fn certificates(f: &Flotilla) -> Vec<Value> {
    let (s, body) = get(&f.admin("/api/v1/certificates")).await;
    assert_eq!(s, 200, "{body}");
    serde_json::from_str::<Value>(&body).unwrap()["certificates"].as_array().cloned().unwrap_or_default()
}

/// Waits until the ACME certificate is valid; returns its API entry.
async fn wait_valid(f: &Flotilla) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let certs = certificates(f).await;
        if let Some(c) = certs.iter().find(|c| c["source"] == "acme" && c["state"] == "valid") {
            return c.clone();
        }
        assert!(Instant::now() < deadline, "no certificate after 60 s: {certs:#?}\n{}", f.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

type TlsStream = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// A TLS handshake with the edge for `name` (SNI), verifying against `root` (PEM).
async fn connect(tls_port: u16, name: &str, root: &str) -> std::io::Result<TlsStream> {
    use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(root.as_bytes()).unwrap()).unwrap();
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", tls_port)).await?;
    let server_name = ServerName::try_from(name.to_string()).unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(server_name, tcp).await
}

/// A TLS connection to the edge for `name` (SNI), verified against `root`; sends GET /whoami
/// and returns (the served certificate's serial, the response).
async fn https_get(tls_port: u16, name: &str, root: &str) -> (String, String) {
    let mut tls = connect(tls_port, name, root).await.unwrap_or_else(|e| panic!("TLS handshake for {name}: {e}"));
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    let serial = flotilla_acme::describe_der(&leaf).unwrap().serial;
    tls.write_all(format!("GET /whoami HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut resp = String::new();
    let _ = tls.read_to_string(&mut resp).await;
    (serial, resp)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http01_certificate_for_two_names_is_served_by_sni_and_reused_after_a_restart() {
    let Setup { dir, app, ports, pebble } = setup("acme-http01", "acme-app", None);
    let names = ["app.flotilla.test", "www.flotilla.test"];
    let mut f = start_edge(&dir, &pebble, ports, &app, "domains = [\"app.flotilla.test\", \"www.flotilla.test\"]");
    let cert = wait_valid(&f).await;
    assert_eq!(cert["names"], serde_json::json!(names), "{cert}");
    assert_eq!(cert["challenge"], "http-01");
    assert!(cert["issuer"].as_str().unwrap().contains("Pebble"), "{cert}");
    assert!(cert["expires_in_seconds"].as_i64().unwrap() > 86_400, "{cert}");
    let root = pebble.issuing_root();
    let serial = cert["serial"].as_str().unwrap().to_string();
    for name in names {
        let (served, resp) = https_get(ports.1, name, &root).await;
        assert_eq!(served, serial, "{name}");
        assert!(resp.starts_with("HTTP/1.1 200") && resp.ends_with("acme-app"), "{resp}");
    }
    // The HTTP→HTTPS redirect still applies to everything but the challenge path.
    let plain =
        raw(SocketAddr::from(([127, 0, 0, 1], ports.0)), b"GET /whoami HTTP/1.1\r\nHost: app.flotilla.test\r\n\r\n");
    assert!(plain.starts_with("HTTP/1.1 301"), "{plain}");
    // Keys are private; the CLI shows the same certificate.
    let key = dir.join("acme/certificates/app.flotilla.test/key.pem");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    let out = std::process::Command::new(BIN).args(["certs", "--config", f.config.to_str().unwrap()]).output().unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && table.contains("app.flotilla.test, www.flotilla.test  [acme] valid"), "{table}");
    assert!(table.contains(&serial), "{table}");

    // A restart serves the stored certificate: same serial, no new order.
    f.proc.signal("TERM");
    assert_eq!(f.proc.wait_exit(Duration::from_secs(10)), Some(0));
    let f = start_edge(&dir, &pebble, ports, &app, "domains = [\"app.flotilla.test\", \"www.flotilla.test\"]");
    let again = wait_valid(&f).await;
    assert_eq!(again["serial"], cert["serial"]);
    assert_eq!(https_get(ports.1, "www.flotilla.test", &root).await.0, serial);
    let log = f.log();
    assert!(log.contains("using the stored certificate") && !log.contains("ordering a certificate"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn01_certificate_is_obtained_through_the_tls_listener() {
    let Setup { dir, app, ports, pebble } = setup("acme-alpn", "alpn-app", None);
    let domains = "domains = [\"alpn.flotilla.test\", \"www.alpn.flotilla.test\"]\nchallenge = \"tls-alpn-01\"";
    let f = start_edge(&dir, &pebble, ports, &app, domains);
    let cert = wait_valid(&f).await;
    assert_eq!(cert["challenge"], "tls-alpn-01");
    assert_eq!(cert["names"], serde_json::json!(["alpn.flotilla.test", "www.alpn.flotilla.test"]));
    let root = pebble.issuing_root();
    for name in ["alpn.flotilla.test", "www.alpn.flotilla.test"] {
        let (served, resp) = https_get(ports.1, name, &root).await;
        assert_eq!(served, cert["serial"].as_str().unwrap());
        assert!(resp.ends_with("alpn-app"), "{resp}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_orders_added_names_and_retires_removed_ones() {
    let Setup { dir, app, ports, pebble } = setup("acme-reload", "reload-app", None);
    let f = start_edge(&dir, &pebble, ports, &app, "domains = [\"one.flotilla.test\"]");
    let first = wait_valid(&f).await;
    let root = pebble.issuing_root();
    assert_eq!(https_get(ports.1, "one.flotilla.test", &root).await.0, first["serial"].as_str().unwrap());
    // Add a second certificate: an array of two entries, the first unchanged.
    let text = std::fs::read_to_string(&f.config).unwrap();
    let entry = |domains: &str| {
        format!(
            "[[edge.tls.acme]]\nemail = \"ops@flotilla.test\"\ndirectory = \"{}\"\nstorage = \"acme\"\ntrust = \"{}\"\ndomains = {domains}\n",
            pebble.directory(),
            pebble.trust.display()
        )
    };
    let start = text.find("[edge.tls.acme]").unwrap();
    let end = text.find("[admin]").unwrap();
    let with = |entries: &str| format!("{}{entries}\n{}", &text[..start], &text[end..]);
    std::fs::write(&f.config, with(&(entry("[\"one.flotilla.test\"]") + &entry("[\"two.flotilla.test\"]")))).unwrap();
    let (s, b) = f.admin_call("POST", "/api/v1/reload", "").await;
    assert_eq!(s, 200, "{b}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let certs = loop {
        let certs = certificates(&f).await;
        if certs.len() == 2 && certs.iter().all(|c| c["state"] == "valid") {
            break certs;
        }
        assert!(Instant::now() < deadline, "{certs:#?}\n{}", f.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(certs[0]["serial"], first["serial"], "the unchanged entry reuses its stored certificate");
    assert_eq!(https_get(ports.1, "two.flotilla.test", &root).await.0, certs[1]["serial"].as_str().unwrap());
    // Remove the first: its name is no longer served (no certificate names it now).
    std::fs::write(&f.config, with(&entry("[\"two.flotilla.test\"]"))).unwrap();
    assert_eq!(f.admin_call("POST", "/api/v1/reload", "").await.0, 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(connect(ports.1, "one.flotilla.test", &root).await.is_err(), "a retired name is refused");
    assert_eq!(https_get(ports.1, "two.flotilla.test", &root).await.0, certs[1]["serial"].as_str().unwrap());
}

/// A TLS connection kept alive across requests (HTTP/1.1), to show a certificate swap does not
/// touch it.
struct KeptAlive {
    tls: TlsStream,
    name: String,
}

impl KeptAlive {
    async fn open(tls_port: u16, name: &str, root: &str) -> Self {
        Self { tls: connect(tls_port, name, root).await.unwrap(), name: name.to_string() }
    }

    /// One GET /whoami on the kept-alive connection; the body.
    async fn whoami(&mut self) -> String {
        let req = format!("GET /whoami HTTP/1.1\r\nHost: {}\r\n\r\n", self.name);
        self.tls.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = tokio::time::timeout(Duration::from_secs(5), self.tls.read(&mut chunk)).await.unwrap().unwrap();
            assert!(n > 0, "the kept-alive connection was closed");
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf).into_owned();
            if let Some(end) = text.find("\r\n\r\n") {
                let len: usize = text[..end]
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len {
                    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
                    return text[end + 4..end + 4 + len].to_string();
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_lived_certificate_is_renewed_under_a_kept_alive_connection() {
    // 40 s certificates renewed 35 s before expiry: a new one about every 5 s.
    let Setup { dir, app, ports, pebble } = setup("acme-renew", "renew-app", Some(40));
    let f = start_edge(&dir, &pebble, ports, &app, "domains = [\"renew.flotilla.test\"]\nrenew_before = \"35s\"");
    let first = wait_valid(&f).await;
    let root = pebble.issuing_root();
    let mut conn = KeptAlive::open(ports.1, "renew.flotilla.test", &root).await;
    assert_eq!(conn.whoami().await, "renew-app");
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut requests = 1;
    let renewed = loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        // The old connection keeps working through the swap...
        assert_eq!(conn.whoami().await, "renew-app");
        requests += 1;
        // ...while new handshakes get the new certificate.
        let c = certificates(&f).await.into_iter().find(|c| c["source"] == "acme").unwrap();
        if c["serial"] != first["serial"] && c["renewals"].as_u64() >= Some(2) {
            break c;
        }
        assert!(Instant::now() < deadline, "never renewed: {c:#}\n{}", f.log());
    };
    let (served, _) = https_get(ports.1, "renew.flotilla.test", &root).await;
    assert_ne!(served, first["serial"].as_str().unwrap(), "new handshakes get the renewed certificate");
    for _ in 0..3 {
        assert_eq!(conn.whoami().await, "renew-app");
        requests += 1;
    }
    println!(
        "renewed {} -> {} with {requests} requests on one kept-alive connection",
        first["serial"], renewed["serial"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_renewal_keeps_the_old_certificate_backs_off_and_says_why() {
    let Setup { dir, app, ports, pebble } = setup("acme-fail", "fail-app", Some(60));
    let f = start_edge(&dir, &pebble, ports, &app, "domains = [\"fail.flotilla.test\"]\nrenew_before = \"52s\"");
    let first = wait_valid(&f).await;
    let root = pebble.issuing_root();
    // From now on the CA's validation finds nothing at the name's address.
    pebble.point("fail.flotilla.test", "127.0.0.2");
    let deadline = Instant::now() + Duration::from_secs(45);
    let failing = loop {
        let c = certificates(&f).await.into_iter().find(|c| c["source"] == "acme").unwrap();
        if c["failures"].as_u64() >= Some(1) {
            break c;
        }
        assert!(Instant::now() < deadline, "the renewal never failed: {c:#}\n{}", f.log());
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(failing["state"], "failing", "{failing:#}");
    // (A renewal that raced the DNS change may have succeeded first: what must hold is that the
    // certificate from before the failed attempt is the one still served.)
    assert!(failing["serial"].is_string() && first["serial"].is_string(), "{failing:#}");
    let error = failing["last_error"].as_str().unwrap();
    assert!(error.contains("connection refused") && error.contains("acme:error:connection"), "{error}");
    assert!(failing["next_attempt"].is_string(), "{failing:#}");
    // Still served, and the next attempt waits for the backoff (10 s), not a hot loop.
    let (served, resp) = https_get(ports.1, "fail.flotilla.test", &root).await;
    assert_eq!(served, failing["serial"].as_str().unwrap(), "the old certificate stays");
    assert!(resp.ends_with("fail-app"), "{resp}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let c = certificates(&f).await.into_iter().find(|c| c["source"] == "acme").unwrap();
    assert_eq!((&c["failures"], &c["serial"]), (&1.into(), &failing["serial"]), "{c:#}");
    let (_, metrics) = get(&f.admin("/metrics")).await;
    assert!(
        metrics.contains(
            "flotilla_certificate_renewal_failures_total{name=\"fail.flotilla.test\",source=\"acme\",reason=\"connection\"} 1"
        ),
        "{metrics}"
    );
    assert!(metrics.contains("flotilla_certificate_expiry_seconds{name=\"fail.flotilla.test\",source=\"acme\"}"));
    assert!(f.log().contains("certificate order failed; the current certificate (if any) keeps serving"));
}
