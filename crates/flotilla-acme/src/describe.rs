//! What a certificate says about itself (names, issuer, validity, serial), for deciding when
//! to renew and for the API. Parsed with x509-parser; nothing here trusts the certificate.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The leaf certificate of a PEM chain, summarized.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertInfo {
    /// DNS names from subjectAltName (the common name when there is none).
    pub names: Vec<String>,
    pub issuer: String,
    #[serde(serialize_with = "rfc3339")]
    pub not_before: SystemTime,
    #[serde(serialize_with = "rfc3339")]
    pub not_after: SystemTime,
    /// Hex, colon-free, lower case.
    pub serial: String,
}

fn rfc3339<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&httpdate::fmt_http_date(*t))
}

impl CertInfo {
    /// When to renew: `renew_before` ahead of expiry, or once a third of the lifetime is left.
    pub fn renew_at(&self, renew_before: Option<Duration>) -> SystemTime {
        let lifetime = self.not_after.duration_since(self.not_before).unwrap_or_default();
        let ahead = renew_before.unwrap_or(lifetime / 3);
        self.not_after.checked_sub(ahead).unwrap_or(self.not_before)
    }

    /// Whether it names every one of `domains`.
    pub fn covers(&self, domains: &[String]) -> bool {
        domains.iter().all(|d| self.names.iter().any(|n| n.eq_ignore_ascii_case(d)))
    }
}

/// Summarizes the first certificate of a PEM chain.
pub fn describe_pem(pem: &str) -> Result<CertInfo, String> {
    let der = first_der(pem)?;
    describe_der(&der)
}

fn first_der(pem: &str) -> Result<Vec<u8>, String> {
    let start = pem.find("-----BEGIN CERTIFICATE-----").ok_or("no certificate in PEM")?;
    let body_start = start + "-----BEGIN CERTIFICATE-----".len();
    let end = pem[body_start..].find("-----END CERTIFICATE-----").ok_or("unterminated certificate in PEM")?;
    let b64: String = pem[body_start..body_start + end].chars().filter(|c| !c.is_whitespace()).collect();
    base64_decode(&b64).ok_or_else(|| "certificate PEM is not base64".to_string())
}

pub fn describe_der(der: &[u8]) -> Result<CertInfo, String> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let GeneralName::DNSName(d) = n {
                names.push(d.to_ascii_lowercase());
            }
        }
    }
    if names.is_empty() {
        if let Some(cn) = cert.subject().iter_common_name().next().and_then(|c| c.as_str().ok()) {
            names.push(cn.to_ascii_lowercase());
        }
    }
    let to_system = |t: i64| UNIX_EPOCH + Duration::from_secs(t.max(0) as u64);
    Ok(CertInfo {
        names,
        issuer: cert.issuer().to_string(),
        not_before: to_system(cert.validity().not_before.timestamp()),
        not_after: to_system(cert.validity().not_after.timestamp()),
        serial: cert.raw_serial().iter().map(|b| format!("{b:02x}")).collect(),
    })
}

/// Standard base64 with padding (PEM bodies); `None` on anything else.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    fn val(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let bytes = s.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut acc = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            acc |= val(*c)? << (18 - 6 * i);
        }
        let n = match chunk.len() {
            4 => 3,
            3 => 2,
            2 => 1,
            _ => return None,
        };
        out.extend_from_slice(&acc.to_be_bytes()[1..1 + n]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed(names: &[&str]) -> String {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let key = rcgen::KeyPair::generate().unwrap();
        rcgen::CertificateParams::new(names).unwrap().self_signed(&key).unwrap().pem()
    }

    #[test]
    fn names_validity_and_renewal_time() {
        let info = describe_pem(&self_signed(&["app.example.com", "www.example.com"])).unwrap();
        assert_eq!(info.names, ["app.example.com", "www.example.com"]);
        assert!(info.covers(&["www.example.com".into()]) && !info.covers(&["other.example.com".into()]));
        assert!(info.not_after > info.not_before && !info.serial.is_empty());
        let life = info.not_after.duration_since(info.not_before).unwrap();
        assert_eq!(info.renew_at(None), info.not_after - life / 3);
        assert_eq!(info.renew_at(Some(Duration::from_secs(86_400))), info.not_after - Duration::from_secs(86_400));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(describe_pem("").is_err());
        assert!(describe_pem("-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----").is_err());
        assert!(describe_pem("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----").is_err());
        assert_eq!(base64_decode("aGVsbG8="), Some(b"hello".to_vec()));
    }
}
