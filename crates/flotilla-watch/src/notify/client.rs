//! The notifiers' HTTP client: HTTPS through rustls (ring), checked against the notifier's `ca`
//! file when it has one and the system's trusted roots otherwise — never unchecked — and plain
//! HTTP for the loopback receivers the config allows.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use flotilla_config::NotifierConfig;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;

pub type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The system's trusted roots (Debian: /etc/ssl/certs), read once for every notifier.
fn system_roots() -> &'static RootCertStore {
    static ROOTS: OnceLock<RootCertStore> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        for e in &found.errors {
            tracing::warn!(error = %e, "notifiers: cannot read some of the system's CA certificates");
        }
        let mut roots = RootCertStore::empty();
        let (added, ignored) = roots.add_parsable_certificates(found.certs);
        if added == 0 {
            tracing::warn!(
                "notifiers: no system CA certificates found (install ca-certificates, or give the notifier a ca file); \
                 https:// webhooks will fail verification"
            );
        }
        tracing::debug!(added, ignored, "notifiers: system CA certificates loaded");
        roots
    })
}

/// A client for one notifier. `Err` says why its `ca` holds no usable certificate.
pub fn build(cfg: &NotifierConfig) -> Result<HttpClient, String> {
    let roots = match &cfg.ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            let (added, _) =
                roots.add_parsable_certificates(ca.certs.iter().map(|der| CertificateDer::from(der.clone())));
            if added == 0 {
                return Err(format!("{} holds no usable CA certificate", ca.path.display()));
            }
            roots
        }
        None if cfg.webhook.starts_with("https://") => system_roots().clone(),
        None => RootCertStore::empty(),
    };
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(cfg.timeout));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new()).build(https))
}
