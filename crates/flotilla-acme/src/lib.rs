//! Managed certificates over ACME (RFC 8555): the certificates `[edge.tls.acme]` names are
//! reused from storage when still good, otherwise ordered, then renewed in the background
//! before they expire, with exponential backoff on failure while the old one keeps serving.
//!
//! The protocol is instant-acme's; keys and CSRs are rcgen's (ECDSA P-256). This crate knows
//! nothing of sockets or of the edge: it hands certificates and challenge responses to an
//! [`Installer`], which the binary implements over the edge's TLS resolver.

mod describe;
mod order;
mod storage;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use flotilla_config::{AcmeChallenge, AcmeConfig};
use serde::Serialize;

pub use describe::{describe_der, describe_pem, CertInfo};

#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error("ACME: {0}")]
    Protocol(#[from] instant_acme::Error),
    /// The CA refused: a problem document (RFC 8555 §6.7) on the order or a challenge.
    #[error("the CA refused ({reason}): {detail}")]
    Rejected { reason: String, detail: String },
    #[error("{0}")]
    Order(String),
    #[error("storage: {0}")]
    Storage(String),
    #[error("the edge refused the certificate: {0}")]
    Install(String),
}

impl AcmeError {
    /// A short, bounded label for metrics: the ACME problem type (`unauthorized`, `connection`,
    /// `rateLimited`, …) or what failed on our side.
    pub fn reason(&self) -> String {
        match self {
            AcmeError::Protocol(instant_acme::Error::Api(p)) => problem_reason(p.r#type.as_deref()),
            AcmeError::Protocol(_) => "network".into(),
            AcmeError::Rejected { reason, .. } => reason.clone(),
            AcmeError::Order(_) => "order".into(),
            AcmeError::Storage(_) => "storage".into(),
            AcmeError::Install(_) => "install".into(),
        }
    }
}

pub(crate) fn problem_reason(kind: Option<&str>) -> String {
    let kind = kind.unwrap_or("unknown");
    let short = kind.strip_prefix("urn:ietf:params:acme:error:").unwrap_or("other");
    // Label values come from the CA: keep them short and tame.
    short.chars().filter(|c| c.is_ascii_alphanumeric()).take(32).collect()
}

/// Where certificates and challenge responses go (the edge, through the binary).
pub trait Installer: Send + Sync + 'static {
    /// Serve this chain and key for `domains` from now on (new handshakes only).
    fn install(&self, domains: &[String], chain_pem: &str, key_pem: &str) -> Result<(), String>;
    /// Answer `/.well-known/acme-challenge/{token}` with the key authorization (`None`: stop).
    fn http_challenge(&self, token: &str, key_authorization: Option<&str>);
    /// Answer `acme-tls/1` handshakes for `domain` with this (DER certificate, PKCS#8 key).
    fn alpn_challenge(&self, domain: &str, cert: Option<(Vec<u8>, Vec<u8>)>);
}

/// One certificate as the API and `flotilla certs` show it.
#[derive(Debug, Clone, Serialize)]
pub struct CertificateStatus {
    pub names: Vec<String>,
    /// `acme` or `file`.
    pub source: &'static str,
    /// `pending` (none yet), `valid`, or `failing` (the last attempt failed).
    pub state: &'static str,
    pub issuer: Option<String>,
    pub not_after: Option<String>,
    pub serial: Option<String>,
    pub expires_in_seconds: Option<i64>,
    pub renew_at: Option<String>,
    pub last_attempt: Option<String>,
    pub last_error: Option<String>,
    pub next_attempt: Option<String>,
    pub renewals: u64,
    pub failures: u64,
    pub failures_by_reason: std::collections::BTreeMap<String, u64>,
    pub directory: Option<String>,
    pub challenge: Option<&'static str>,
}

impl CertificateStatus {
    /// A certificate from a file in `[edge.tls].certificates`.
    pub fn from_file(info: &CertInfo) -> Self {
        let mut s = Self::empty(info.names.clone(), "file");
        s.state = "valid";
        s.describe(info, None);
        s
    }

    fn empty(names: Vec<String>, source: &'static str) -> Self {
        Self {
            names,
            source,
            state: "pending",
            issuer: None,
            not_after: None,
            serial: None,
            expires_in_seconds: None,
            renew_at: None,
            last_attempt: None,
            last_error: None,
            next_attempt: None,
            renewals: 0,
            failures: 0,
            failures_by_reason: Default::default(),
            directory: None,
            challenge: None,
        }
    }

    fn describe(&mut self, info: &CertInfo, renew_at: Option<SystemTime>) {
        self.issuer = Some(info.issuer.clone());
        self.not_after = Some(httpdate::fmt_http_date(info.not_after));
        self.serial = Some(info.serial.clone());
        self.renew_at = renew_at.map(httpdate::fmt_http_date);
        self.refresh_expiry(info);
    }

    fn refresh_expiry(&mut self, info: &CertInfo) {
        let now = SystemTime::now();
        self.expires_in_seconds = Some(match info.not_after.duration_since(now) {
            Ok(d) => d.as_secs() as i64,
            Err(e) => -(e.duration().as_secs() as i64),
        });
    }
}

struct Entry {
    cfg: AcmeConfig,
    status: Mutex<CertificateStatus>,
    info: Mutex<Option<CertInfo>>,
}

impl Entry {
    fn update(&self, f: impl FnOnce(&mut CertificateStatus)) {
        let mut s = self.status.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut s);
    }

    fn info(&self) -> Option<CertInfo> {
        self.info.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set_valid(&self, info: CertInfo) {
        let renew_at = info.renew_at(self.cfg.renew_before);
        self.update(|s| {
            s.state = "valid";
            s.last_error = None;
            s.next_attempt = None;
            s.describe(&info, Some(renew_at));
        });
        *self.info.lock().unwrap_or_else(|e| e.into_inner()) = Some(info);
    }
}

/// Runs one background task per `[edge.tls.acme]` entry; dropping it stops them.
pub struct Manager {
    entries: Vec<Arc<Entry>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Manager {
    /// Starts the tasks on the current tokio runtime.
    pub fn start(configs: Vec<AcmeConfig>, installer: Arc<dyn Installer>) -> Self {
        let entries: Vec<Arc<Entry>> = configs
            .into_iter()
            .map(|cfg| {
                let mut status = CertificateStatus::empty(cfg.domains.clone(), "acme");
                status.directory = Some(cfg.directory.clone());
                status.challenge = Some(match cfg.challenge {
                    AcmeChallenge::Http01 => "http-01",
                    AcmeChallenge::TlsAlpn01 => "tls-alpn-01",
                });
                Arc::new(Entry { cfg, status: Mutex::new(status), info: Mutex::new(None) })
            })
            .collect();
        let tasks = entries.iter().map(|e| tokio::spawn(run(e.clone(), installer.clone()))).collect();
        Self { entries, tasks }
    }

    /// Every managed certificate's state, for the API and the CLI.
    pub fn certificates(&self) -> Vec<CertificateStatus> {
        self.entries
            .iter()
            .map(|e| {
                let mut s = e.status.lock().unwrap_or_else(|p| p.into_inner()).clone();
                if let Some(info) = e.info() {
                    s.refresh_expiry(&info);
                }
                s
            })
            .collect()
    }

    /// The configs this manager runs (a reload compares them to decide whether to restart it).
    pub fn configs(&self) -> Vec<AcmeConfig> {
        self.entries.iter().map(|e| e.cfg.clone()).collect()
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// First retry after this; doubling up to [`MAX_BACKOFF`].
const BASE_BACKOFF: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(3600);

fn backoff(failures: u32) -> Duration {
    BASE_BACKOFF.saturating_mul(1u32 << failures.saturating_sub(1).min(12)).min(MAX_BACKOFF)
}

/// The wait before the next attempt. A CA that says `rateLimited` counts its limits in hours
/// (Let's Encrypt: per week for duplicate certificates, per 3 h for failed validations), and
/// instant-acme does not hand us its Retry-After: wait at least an hour rather than burn more
/// of the allowance.
fn wait_after(failures: u32, reason: &str) -> Duration {
    let wait = backoff(failures);
    if reason == "rateLimited" {
        wait.max(Duration::from_secs(3600))
    } else {
        wait
    }
}

/// Spreads renewals of many certificates (and many nodes) so they do not hit the CA at once:
/// up to a tenth of the time left, at most an hour.
fn jitter(until: Duration) -> Duration {
    let span = (until / 10).min(Duration::from_secs(3600));
    span.mul_f64(fastrand::f64())
}

async fn run(entry: Arc<Entry>, installer: Arc<dyn Installer>) {
    let cfg = &entry.cfg;
    let storage = storage::Storage::new(&cfg.storage);
    let primary = cfg.domains.first().cloned().unwrap_or_default();
    reuse_stored(&entry, &storage, &primary, &*installer);
    let mut failures = 0u32;
    loop {
        if let Some(info) = entry.info() {
            let renew_at = info.renew_at(cfg.renew_before);
            if let Ok(wait) = renew_at.duration_since(SystemTime::now()) {
                let wait = wait.saturating_sub(jitter(wait));
                // Sleep at most an hour at a time, so a changed clock is noticed.
                tokio::time::sleep(wait.min(Duration::from_secs(3600))).await;
                continue;
            }
        }
        let renewing = entry.info().is_some();
        entry.update(|s| s.last_attempt = Some(httpdate::fmt_http_date(SystemTime::now())));
        tracing::info!(domains = ?cfg.domains, directory = %cfg.directory, renewing, "ordering a certificate");
        let outcome = async {
            let (chain, key) = order::obtain(cfg, &storage, &*installer).await?;
            let info = describe_pem(&chain).map_err(AcmeError::Order)?;
            storage.save_cert(&primary, &chain, &key)?;
            installer.install(&cfg.domains, &chain, &key).map_err(AcmeError::Install)?;
            Ok::<_, AcmeError>(info)
        }
        .await;
        match outcome {
            Ok(info) => {
                failures = 0;
                tracing::info!(domains = ?cfg.domains, serial = %info.serial, not_after = %httpdate::fmt_http_date(info.not_after), "certificate installed");
                entry.update(|s| s.renewals += 1);
                entry.set_valid(info);
            }
            Err(e) => {
                failures += 1;
                let wait = wait_after(failures, &e.reason());
                let next = SystemTime::now() + wait;
                tracing::warn!(domains = ?cfg.domains, error = %e, retry_in = ?wait, "certificate order failed; the current certificate (if any) keeps serving");
                let reason = e.reason();
                entry.update(|s| {
                    s.state = if s.serial.is_some() { "failing" } else { "pending" };
                    s.failures += 1;
                    *s.failures_by_reason.entry(reason).or_default() += 1;
                    s.last_error = Some(e.to_string());
                    s.next_attempt = Some(httpdate::fmt_http_date(next));
                });
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// A stored certificate that still covers the names and has not expired is served at once
/// (no new order after a restart); renewal then follows its own schedule.
fn reuse_stored(entry: &Entry, storage: &storage::Storage, primary: &str, installer: &dyn Installer) {
    let cfg = &entry.cfg;
    let Some(stored) = storage.load_cert(primary) else { return };
    match describe_pem(&stored.chain_pem) {
        Ok(info) if info.covers(&cfg.domains) && info.not_after > SystemTime::now() => {
            match installer.install(&cfg.domains, &stored.chain_pem, &stored.key_pem) {
                Ok(()) => {
                    tracing::info!(domains = ?cfg.domains, serial = %info.serial, "using the stored certificate");
                    entry.set_valid(info);
                }
                Err(e) => {
                    tracing::warn!(domains = ?cfg.domains, error = %e, "stored certificate refused; ordering a new one")
                }
            }
        }
        Ok(_) => {
            tracing::info!(domains = ?cfg.domains, "stored certificate expired or names other domains; ordering a new one")
        }
        Err(e) => {
            tracing::warn!(domains = ?cfg.domains, error = %e, "stored certificate unreadable; ordering a new one")
        }
    }
}

/// Prometheus text for a list of certificates: seconds to expiry (alarm on it with the watch),
/// renewals, failures by reason. `name` is the first domain.
pub fn metrics(certs: &[CertificateStatus]) -> String {
    let mut out = String::new();
    let label = |c: &CertificateStatus| {
        let name = c.names.first().map(String::as_str).unwrap_or("");
        format!("name=\"{}\",source=\"{}\"", name.replace(['"', '\\', '\n'], "_"), c.source)
    };
    out.push_str(
        "# HELP flotilla_certificate_expiry_seconds Seconds until the certificate expires (negative once expired).\n",
    );
    out.push_str("# TYPE flotilla_certificate_expiry_seconds gauge\n");
    for c in certs {
        if let Some(s) = c.expires_in_seconds {
            out.push_str(&format!("flotilla_certificate_expiry_seconds{{{}}} {s}\n", label(c)));
        }
    }
    out.push_str("# HELP flotilla_certificate_renewals Certificates obtained over ACME.\n");
    out.push_str("# TYPE flotilla_certificate_renewals counter\n");
    for c in certs.iter().filter(|c| c.source == "acme") {
        out.push_str(&format!("flotilla_certificate_renewals_total{{{}}} {}\n", label(c), c.renewals));
    }
    out.push_str("# HELP flotilla_certificate_renewal_failures Failed ACME orders, by reason.\n");
    out.push_str("# TYPE flotilla_certificate_renewal_failures counter\n");
    for c in certs.iter().filter(|c| c.source == "acme") {
        for (reason, n) in &c.failures_by_reason {
            out.push_str(&format!(
                "flotilla_certificate_renewal_failures_total{{{},reason=\"{reason}\"}} {n}\n",
                label(c)
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problem_types_become_short_labels() {
        assert_eq!(problem_reason(Some("urn:ietf:params:acme:error:rateLimited")), "rateLimited");
        assert_eq!(problem_reason(Some("urn:ietf:params:acme:error:bad\"label\"")), "badlabel");
        assert_eq!(problem_reason(Some("about:blank")), "other");
        assert_eq!(problem_reason(None), "other");
    }

    #[test]
    fn backoff_doubles_up_to_an_hour() {
        assert_eq!(backoff(1), Duration::from_secs(10));
        assert_eq!(backoff(2), Duration::from_secs(20));
        assert_eq!(backoff(5), Duration::from_secs(160));
        assert_eq!(backoff(30), MAX_BACKOFF);
        assert_eq!(wait_after(1, "connection"), Duration::from_secs(10));
        assert_eq!(wait_after(1, "rateLimited"), Duration::from_secs(3600));
    }

    #[test]
    fn jitter_stays_within_a_tenth_and_an_hour() {
        for _ in 0..100 {
            assert!(jitter(Duration::from_secs(100)) <= Duration::from_secs(10));
            assert!(jitter(Duration::from_secs(86_400 * 30)) <= Duration::from_secs(3600));
        }
    }
}
