//! Certificates: the ACME manager wired to the edge's run-time TLS store (the one place the
//! two meet), the list `GET /api/v1/certificates` shows, and `flotilla certs`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use flotilla_acme::{CertificateStatus, Installer, Manager};
use flotilla_config::{AcmeConfig, Config};
use flotilla_edge::managed::ManagedTls;
use serde_json::{json, Value};

use crate::admin_client;

/// [`Installer`] over the edge's [`ManagedTls`].
struct EdgeInstaller(Arc<ManagedTls>);

impl Installer for EdgeInstaller {
    fn install(&self, domains: &[String], chain_pem: &str, key_pem: &str) -> Result<(), String> {
        self.0.install(domains, chain_pem, key_pem).map_err(|e| e.to_string())
    }

    fn http_challenge(&self, token: &str, key_authorization: Option<&str>) {
        self.0.set_http_challenge(token, key_authorization);
    }

    fn alpn_challenge(&self, domain: &str, cert: Option<(Vec<u8>, Vec<u8>)>) {
        if let Err(e) = self.0.set_alpn_challenge(domain, cert) {
            tracing::warn!(domain, error = %e, "TLS-ALPN-01 challenge certificate refused");
        }
    }
}

/// Every certificate the edge serves: files from the config and ACME-managed ones.
pub struct Certificates {
    managed: Arc<ManagedTls>,
    manager: Mutex<Option<Manager>>,
    files: Mutex<Vec<PathBuf>>,
}

fn acme_configs(cfg: &Config) -> Vec<AcmeConfig> {
    cfg.edge.tls.as_ref().map(|t| t.acme.clone()).unwrap_or_default()
}

fn cert_files(cfg: &Config) -> Vec<PathBuf> {
    cfg.edge.tls.as_ref().map(|t| t.certificates.iter().map(|c| c.cert.clone()).collect()).unwrap_or_default()
}

impl Certificates {
    /// Starts ordering/renewing on the current runtime.
    pub fn start(cfg: &Config, managed: Arc<ManagedTls>) -> Self {
        let this = Self { managed, manager: Mutex::new(None), files: Mutex::new(cert_files(cfg)) };
        this.reconfigure(cfg);
        this
    }

    /// After a reload: a changed `[edge.tls.acme]` restarts the manager (stored certificates are
    /// reused, so unchanged names cause no new order); names no longer listed stop being served.
    pub fn reconfigure(&self, cfg: &Config) {
        *self.files.lock().unwrap_or_else(|e| e.into_inner()) = cert_files(cfg);
        let wanted = acme_configs(cfg);
        let mut manager = self.manager.lock().unwrap_or_else(|e| e.into_inner());
        let current = manager.as_ref().map(Manager::configs).unwrap_or_default();
        if current == wanted {
            return;
        }
        let kept: Vec<&String> = wanted.iter().flat_map(|a| &a.domains).collect();
        let retired: Vec<String> =
            current.iter().flat_map(|a| &a.domains).filter(|d| !kept.contains(d)).cloned().collect();
        if !retired.is_empty() {
            tracing::info!(domains = ?retired, "ACME names removed from the config: no longer served");
            self.managed.retire(&retired);
        }
        *manager = None;
        if !wanted.is_empty() {
            *manager = Some(Manager::start(wanted, Arc::new(EdgeInstaller(self.managed.clone()))));
        }
    }

    /// The `GET /api/v1/certificates` answer.
    pub fn list(&self) -> Value {
        json!({ "certificates": self.all() })
    }

    /// Expiry, renewal and failure metrics for `/metrics` and the watch.
    pub fn metrics(&self) -> String {
        flotilla_acme::metrics(&self.all())
    }

    fn all(&self) -> Vec<CertificateStatus> {
        let mut all: Vec<CertificateStatus> = Vec::new();
        for path in self.files.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            match std::fs::read_to_string(path).map_err(|e| e.to_string()).and_then(|p| flotilla_acme::describe_pem(&p))
            {
                Ok(info) => all.push(CertificateStatus::from_file(&info)),
                Err(e) => tracing::warn!(file = %path.display(), error = %e, "cannot describe certificate"),
            }
        }
        if let Some(m) = self.manager.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            all.extend(m.certificates());
        }
        all
    }
}

/// `flotilla certs`: the same list from the admin API, as a table or JSON.
pub async fn print(config: &Path, json_out: bool) -> anyhow::Result<()> {
    let text = admin_client::call(config, http::Method::GET, "/api/v1/certificates", None).await?;
    if json_out {
        println!("{}", text.trim());
        return Ok(());
    }
    let v: Value = serde_json::from_str(&text)?;
    let certs = v["certificates"].as_array().cloned().unwrap_or_default();
    if certs.is_empty() {
        println!("no certificates configured");
    }
    for c in certs {
        let s = |k: &str| c[k].as_str().unwrap_or("-").to_string();
        let names: Vec<&str> = c["names"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        let days = c["expires_in_seconds"].as_i64().map_or("-".to_string(), |x| format!("{:.1}", x as f64 / 86_400.0));
        println!("{}  [{}] {}", names.join(", "), s("source"), s("state"));
        println!("    issuer {}  serial {}", s("issuer"), s("serial"));
        println!("    not after {}  ({days} days left)  renew at {}", s("not_after"), s("renew_at"));
        if c["source"] == "acme" {
            println!("    last attempt {}  renewals {}  failures {}", s("last_attempt"), c["renewals"], c["failures"]);
        }
        if let Some(e) = c["last_error"].as_str() {
            println!("    last error: {e}  (next attempt {})", s("next_attempt"));
        }
    }
    Ok(())
}
