//! Certificates and challenge answers installed at run time (by the ACME manager, through the
//! binary): the TLS resolver consults them before the config's files, and the plain listener
//! answers HTTP-01 tokens before routing. Swaps are atomic: a handshake sees the old or the new
//! certificate, never a mix, and established connections are untouched.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;

use crate::EdgeError;

/// The path prefix of HTTP-01 challenges (RFC 8555 §8.3).
pub(crate) const HTTP01_PREFIX: &str = "/.well-known/acme-challenge/";
/// The ALPN protocol of TLS-ALPN-01 (RFC 8737).
pub(crate) const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

#[derive(Default)]
pub struct ManagedTls {
    certs: ArcSwap<HashMap<String, Arc<CertifiedKey>>>,
    http_tokens: Mutex<HashMap<String, String>>,
    alpn: Mutex<HashMap<String, Arc<CertifiedKey>>>,
    /// Names a client asked for before their certificate existed (logged once each).
    missing_logged: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for ManagedTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagedTls").field("names", &self.certs.load().keys().collect::<Vec<_>>()).finish()
    }
}

fn signer(key: PrivateKeyDer<'static>) -> Result<Arc<dyn rustls::sign::SigningKey>, EdgeError> {
    rustls::crypto::ring::default_provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| EdgeError::Tls(format!("private key: {e}")))
}

impl ManagedTls {
    /// Serves this chain and key for `names` from the next handshake on.
    pub fn install(&self, names: &[String], chain_pem: &str, key_pem: &str) -> Result<(), EdgeError> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| EdgeError::Tls(format!("certificate chain: {e}")))?;
        if chain.is_empty() {
            return Err(EdgeError::Tls("certificate chain: no certificate".into()));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| EdgeError::Tls(format!("key: {e}")))?;
        let certified = Arc::new(CertifiedKey::new(chain, signer(key)?));
        certified.keys_match().map_err(|e| EdgeError::Tls(format!("key does not match the certificate: {e}")))?;
        let mut next = HashMap::clone(&self.certs.load());
        for n in names {
            next.insert(n.to_ascii_lowercase(), certified.clone());
        }
        self.certs.store(Arc::new(next));
        Ok(())
    }

    /// Stops serving these names (a reload removed them).
    pub fn retire(&self, names: &[String]) {
        let mut next = HashMap::clone(&self.certs.load());
        for n in names {
            next.remove(&n.to_ascii_lowercase());
        }
        self.certs.store(Arc::new(next));
    }

    pub fn set_http_challenge(&self, token: &str, key_authorization: Option<&str>) {
        let mut t = self.http_tokens.lock().unwrap_or_else(|e| e.into_inner());
        match key_authorization {
            Some(ka) => t.insert(token.to_string(), ka.to_string()),
            None => t.remove(token),
        };
    }

    pub fn set_alpn_challenge(&self, name: &str, cert: Option<(Vec<u8>, Vec<u8>)>) -> Result<(), EdgeError> {
        let mut a = self.alpn.lock().unwrap_or_else(|e| e.into_inner());
        match cert {
            None => {
                a.remove(&name.to_ascii_lowercase());
            }
            Some((der, key)) => {
                let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key));
                let certified = CertifiedKey::new(vec![CertificateDer::from(der)], signer(key)?);
                a.insert(name.to_ascii_lowercase(), Arc::new(certified));
            }
        }
        Ok(())
    }

    /// The key authorization for an HTTP-01 request path, if one is published.
    pub(crate) fn http_answer(&self, path: &str) -> Option<String> {
        let token = path.strip_prefix(HTTP01_PREFIX)?;
        self.http_tokens.lock().unwrap_or_else(|e| e.into_inner()).get(token).cloned()
    }

    pub(crate) fn alpn_cert(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        self.alpn.lock().unwrap_or_else(|e| e.into_inner()).get(name).cloned()
    }

    pub(crate) fn cert(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        self.certs.load().get(name).cloned()
    }

    /// Any installed certificate, for clients that send no SNI when no file certificate exists.
    pub(crate) fn any(&self) -> Option<Arc<CertifiedKey>> {
        self.certs.load().values().next().cloned()
    }

    /// Logs, once per name, that a handshake asked for a name with no certificate yet.
    pub(crate) fn note_missing(&self, name: &str) {
        let mut seen = self.missing_logged.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() < 1000 && seen.insert(name.to_string()) {
            tracing::warn!(
                name,
                "TLS handshake refused: no certificate for this name yet (an ACME order may be pending)"
            );
        }
    }
}
