//! Throwaway certificates and a TLS client for tests that speak HTTPS to the edge.

use std::sync::Arc;

pub struct Pki {
    pub ca_pem: String,
}

/// A throwaway CA and a leaf for `names`, written as cert.pem/key.pem into `dir`.
pub fn make_pki(dir: &std::path::Path, names: &[&str]) -> Pki {
    make_pki_named(dir, names, "cert.pem", "key.pem")
}

pub fn make_pki_named(dir: &std::path::Path, names: &[&str], cert_file: &str, key_file: &str) -> Pki {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "Flotilla Test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    let leaf = params.signed_by(&leaf_key, &ca, &ca_key).unwrap();
    std::fs::write(dir.join(cert_file), leaf.pem()).unwrap();
    std::fs::write(dir.join(key_file), leaf_key.serialize_pem()).unwrap();
    Pki { ca_pem: ca.pem() }
}

pub fn tls_connector(pki: &Pki, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(pki.ca_pem.as_bytes()).unwrap()).unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

/// One HTTP/1.1 request over TLS to 127.0.0.1:`port` with SNI `name`; the whole response as
/// text (the connection is closed by the request's `Connection: close`).
pub async fn https_get(pki: &Pki, port: u16, name: &str, path: &str, headers: &[(&str, &str)]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let sni = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
    let mut tls = tls_connector(pki, &[b"http/1.1"]).connect(sni, tcp).await.unwrap();
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    tls.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), tls.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}
