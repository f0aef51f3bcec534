//! Webhook receivers over HTTPS on 127.0.0.1 with a throwaway CA, as Slack, PagerDuty or an
//! Alertmanager receiver would be: each answers the statuses it was scripted with first (a 500
//! to show a retry, a 400 to show a refusal), then 200, and hands the test every request it
//! accepted (path and JSON body).

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::tls::Pki;

/// One request a receiver answered 2xx.
#[derive(Debug, Clone)]
pub struct Hook {
    pub path: String,
    pub body: serde_json::Value,
}

/// A throwaway CA and a certificate for 127.0.0.1 (cert.pem, key.pem and ca.pem in `dir`).
pub fn hook_pki(dir: &std::path::Path) -> Pki {
    let pki = super::tls::make_pki(dir, &["127.0.0.1", "localhost"]);
    std::fs::write(dir.join("ca.pem"), &pki.ca_pem).unwrap();
    pki
}

/// An HTTPS receiver with the certificate in `dir` (from `hook_pki`): answers `script` in turn,
/// then 200 to everything. Returns its port and the accepted requests.
pub async fn https_receiver(dir: &std::path::Path, script: &[u16]) -> (u16, mpsc::UnboundedReceiver<Hook>) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(dir.join("cert.pem")).unwrap().map(|c| c.unwrap()).collect();
    let key = PrivateKeyDer::from_pem_file(dir.join("key.pem")).unwrap();
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::unbounded_channel();
    let script = Arc::new(std::sync::Mutex::new(script.to_vec()));
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let (acceptor, tx, script) = (acceptor.clone(), tx.clone(), script.clone());
            tokio::spawn(async move {
                // A handshake the client refuses (an untrusted CA) just ends here.
                if let Ok(tls) = acceptor.accept(tcp).await {
                    serve(tls, &script, &tx).await;
                }
            });
        }
    });
    (port, rx)
}

/// Reads one request (head, then Content-Length bytes of body), answers it and closes.
async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut conn: S,
    script: &std::sync::Mutex<Vec<u16>>,
    tx: &mpsc::UnboundedSender<Hook>,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let (head, body) = loop {
        let Ok(n) = conn.read(&mut chunk).await else { return };
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let len = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0))
                })
                .unwrap_or(0usize);
            if buf.len() >= end + 4 + len {
                break (text[..end].to_string(), buf[end + 4..end + 4 + len].to_vec());
            }
        }
    };
    let status = {
        let mut s = script.lock().unwrap();
        if s.is_empty() {
            200
        } else {
            s.remove(0)
        }
    };
    let _ = conn
        .write_all(format!("HTTP/1.1 {status} Scripted\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").as_bytes())
        .await;
    let _ = conn.shutdown().await;
    if (200..300).contains(&status) {
        let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
        let _ = tx.send(Hook { path, body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null) });
    }
}
