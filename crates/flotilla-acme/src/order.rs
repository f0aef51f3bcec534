//! One ACME order, start to finish, with instant-acme doing the protocol (JWS, nonces,
//! polling): account → order → challenges published through the [`Installer`] → CSR from a
//! fresh ECDSA P-256 key → certificate chain. Challenges are withdrawn however it ends.

use std::time::Duration;

use flotilla_config::{AcmeChallenge, AcmeConfig};
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount, NewOrder, OrderStatus,
    RetryPolicy,
};

use crate::storage::Storage;
use crate::{AcmeError, Installer};

/// A challenge response put up for the CA to check, to be taken down afterwards.
enum Published {
    Http(String),
    Alpn(String),
}

/// How long the CA may take to validate and to issue.
fn patience() -> RetryPolicy {
    RetryPolicy::new().initial_delay(Duration::from_millis(250)).backoff(1.5).timeout(Duration::from_secs(90))
}

/// Orders a certificate for `cfg.domains`; returns (chain PEM, key PEM).
pub(crate) async fn obtain(
    cfg: &AcmeConfig,
    storage: &Storage,
    installer: &dyn Installer,
) -> Result<(String, String), AcmeError> {
    let account = account(cfg, storage).await?;
    let identifiers: Vec<Identifier> = cfg.domains.iter().map(|d| Identifier::Dns(d.clone())).collect();
    let mut order = account.new_order(&NewOrder::new(&identifiers)).await?;
    let mut published = Vec::new();
    let result = async {
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz?;
            match authz.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => {
                    return Err(AcmeError::Order(format!("authorization for {} is {other:?}", authz.identifier())))
                }
            }
            let kind = match cfg.challenge {
                AcmeChallenge::Http01 => ChallengeType::Http01,
                AcmeChallenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
            };
            let mut challenge = authz.challenge(kind.clone()).ok_or_else(|| {
                AcmeError::Order(format!("the CA offers no {kind:?} challenge for {}", cfg.domains.join(", ")))
            })?;
            let name = challenge.identifier().to_string();
            let key_auth = challenge.key_authorization();
            match cfg.challenge {
                AcmeChallenge::Http01 => {
                    installer.http_challenge(&challenge.token, Some(key_auth.as_str()));
                    published.push(Published::Http(challenge.token.clone()));
                }
                AcmeChallenge::TlsAlpn01 => {
                    installer.alpn_challenge(&name, Some(alpn_certificate(&name, key_auth.digest().as_ref())?));
                    published.push(Published::Alpn(name.clone()));
                }
            }
            tracing::debug!(domain = %name, challenge = ?kind, "challenge published");
            challenge.set_ready().await?;
        }
        let status = order.poll_ready(&patience()).await?;
        if status != OrderStatus::Ready {
            return Err(refusal(&mut order, status).await);
        }
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(crypto)?;
        let mut params = rcgen::CertificateParams::new(cfg.domains.clone()).map_err(crypto)?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        let csr = params.serialize_request(&key).map_err(crypto)?;
        order.finalize_csr(csr.der()).await?;
        let chain = order.poll_certificate(&patience()).await?;
        Ok((chain, key.serialize_pem()))
    }
    .await;
    for p in published {
        match p {
            Published::Http(token) => installer.http_challenge(&token, None),
            Published::Alpn(name) => installer.alpn_challenge(&name, None),
        }
    }
    result
}

/// Why an order did not become ready: the order's problem, else the first failed challenge's.
async fn refusal(order: &mut instant_acme::Order, status: OrderStatus) -> AcmeError {
    let mut problem = order.state().error.clone();
    if problem.is_none() {
        let mut authorizations = order.authorizations();
        while let Some(Ok(authz)) = authorizations.next().await {
            if let Some(p) = authz.challenges.iter().find_map(|c| c.error.clone()) {
                problem = Some(p);
                break;
            }
        }
    }
    match problem {
        Some(p) => AcmeError::Rejected { reason: crate::problem_reason(p.r#type.as_deref()), detail: p.to_string() },
        None => AcmeError::Order(format!("the order is {status:?}")),
    }
}

fn crypto(e: rcgen::Error) -> AcmeError {
    AcmeError::Order(format!("key or CSR: {e}"))
}

/// The self-signed certificate TLS-ALPN-01 answers with (RFC 8737): the domain as its only
/// name and the key authorization's digest in the acmeIdentifier extension. (DER cert, PKCS#8
/// key.)
fn alpn_certificate(name: &str, digest: &[u8]) -> Result<(Vec<u8>, Vec<u8>), AcmeError> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(crypto)?;
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).map_err(crypto)?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let cert = params.self_signed(&key).map_err(crypto)?;
    Ok((cert.der().to_vec(), key.serialize_der()))
}

/// The stored account for this directory, or a new one (stored before it is used).
async fn account(cfg: &AcmeConfig, storage: &Storage) -> Result<Account, AcmeError> {
    let builder = || match &cfg.trust {
        Some(roots) => Account::builder_with_root(roots),
        None => Account::builder(),
    };
    if let Some(json) = storage.load_account(&cfg.directory) {
        match serde_json::from_str::<AccountCredentials>(&json) {
            Ok(creds) => match builder()?.from_credentials(creds).await {
                Ok(a) => return Ok(a),
                Err(e) => {
                    tracing::warn!(directory = %cfg.directory, error = %e, "stored ACME account unusable; creating a new one")
                }
            },
            Err(e) => {
                tracing::warn!(directory = %cfg.directory, error = %e, "stored ACME account unreadable; creating a new one")
            }
        }
    }
    let contact = cfg.email.as_ref().map(|e| format!("mailto:{e}"));
    let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
    let new = NewAccount { contact: &contacts, terms_of_service_agreed: true, only_return_existing: false };
    let (account, creds) = builder()?.create(&new, cfg.directory.clone(), None).await?;
    let json = serde_json::to_string(&creds).map_err(|e| AcmeError::Storage(e.to_string()))?;
    storage.save_account(&cfg.directory, &json)?;
    tracing::info!(directory = %cfg.directory, "ACME account created");
    Ok(account)
}
