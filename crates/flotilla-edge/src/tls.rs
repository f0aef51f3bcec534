//! TLS termination with rustls: certificates from PEM files and managed (ACME) ones, chosen by
//! SNI (managed, then exact file name, then wildcard, then the first file certificate as
//! default), ALPN for h2 and http/1.1, and `acme-tls/1` answered with the challenge
//! certificate when TLS-ALPN-01 is configured.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use flotilla_config::{AcmeChallenge, TlsConfig, TlsVersion};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::managed::{ManagedTls, ACME_TLS_ALPN};
use crate::EdgeError;

/// Builds the acceptor for a TLS config. Fails with the file and reason on a bad cert or key.
pub(crate) fn acceptor(cfg: &TlsConfig, managed: &Arc<ManagedTls>) -> Result<tokio_rustls::TlsAcceptor, EdgeError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let acme_names = cfg.acme.iter().flat_map(|a| a.domains.iter().cloned()).collect();
    let mut resolver = SniResolver { by_name: HashMap::new(), default: None, managed: managed.clone(), acme_names };
    for files in &cfg.certificates {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
            .and_then(|it| it.collect::<Result<_, _>>())
            .map_err(|e| EdgeError::Tls(format!("{}: {e}", files.cert.display())))?;
        let leaf = chain
            .first()
            .ok_or_else(|| EdgeError::Tls(format!("{}: no certificate in file", files.cert.display())))?
            .clone();
        let key = PrivateKeyDer::from_pem_file(&files.key)
            .map_err(|e| EdgeError::Tls(format!("{}: {e}", files.key.display())))?;
        let signer = provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| EdgeError::Tls(format!("{}: {e}", files.key.display())))?;
        let certified = Arc::new(CertifiedKey::new(chain, signer));
        certified.keys_match().map_err(|e| {
            EdgeError::Tls(format!("{} does not match {}: {e}", files.key.display(), files.cert.display()))
        })?;
        let parsed = webpki::EndEntityCert::try_from(&leaf)
            .map_err(|e| EdgeError::Tls(format!("{}: {e:?}", files.cert.display())))?;
        for name in parsed.valid_dns_names() {
            resolver.by_name.entry(name.to_ascii_lowercase()).or_insert_with(|| certified.clone());
        }
        resolver.default.get_or_insert(certified);
    }
    let versions: &[&rustls::SupportedProtocolVersion] = match cfg.min_version {
        TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::V1_3 => &[&rustls::version::TLS13],
    };
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|e| EdgeError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    if cfg.acme.iter().any(|a| a.challenge == AcmeChallenge::TlsAlpn01) {
        server.alpn_protocols.push(ACME_TLS_ALPN.to_vec());
    }
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(server)))
}

#[derive(Debug)]
struct SniResolver {
    by_name: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
    managed: Arc<ManagedTls>,
    /// Names ACME manages: until their certificate exists they are refused, not given the
    /// default certificate (which would not name them).
    acme_names: HashSet<String>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name().map(str::to_ascii_lowercase);
        if hello.alpn().is_some_and(|mut protocols| protocols.any(|p| p == ACME_TLS_ALPN)) {
            // A CA validating TLS-ALPN-01: only the challenge certificate will do (RFC 8737).
            return name.and_then(|n| self.managed.alpn_cert(&n));
        }
        let Some(name) = name else { return self.default.clone().or_else(|| self.managed.any()) };
        if let Some(c) = self.managed.cert(&name) {
            return Some(c);
        }
        if self.acme_names.contains(&name) {
            self.managed.note_missing(&name);
            return None;
        }
        if let Some(c) = self.by_name.get(&name) {
            return Some(c.clone());
        }
        if let Some((_, parent)) = name.split_once('.') {
            if let Some(c) = self.by_name.get(&format!("*.{parent}")) {
                return Some(c.clone());
            }
        }
        self.default.clone()
    }
}
