//! The ACME storage directory: one account per directory URL, one certificate + key per
//! configured certificate. Every file is written to a temporary name, fsynced and renamed, and
//! key material is created 0600, so a crash never leaves a torn key or a key others can read.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::AcmeError;

pub(crate) struct Storage {
    dir: PathBuf,
}

/// A certificate and its key as stored.
pub(crate) struct Stored {
    pub chain_pem: String,
    pub key_pem: String,
}

impl Storage {
    pub(crate) fn new(dir: &Path) -> Self {
        Self { dir: dir.to_path_buf() }
    }

    fn ensure_dir(&self, dir: &Path) -> Result<(), AcmeError> {
        fs::create_dir_all(dir).map_err(|e| AcmeError::Storage(format!("{}: {e}", dir.display())))?;
        // The directory holds private keys: nobody else may list or read it.
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| AcmeError::Storage(format!("{}: {e}", dir.display())))
    }

    /// Account credentials (JSON from instant-acme) for one directory URL.
    fn account_path(&self, directory: &str) -> PathBuf {
        self.dir.join(format!("account-{}.json", slug(directory)))
    }

    pub(crate) fn load_account(&self, directory: &str) -> Option<String> {
        fs::read_to_string(self.account_path(directory)).ok()
    }

    pub(crate) fn save_account(&self, directory: &str, json: &str) -> Result<(), AcmeError> {
        self.ensure_dir(&self.dir)?;
        write_atomic(&self.account_path(directory), json.as_bytes())
    }

    /// Where the certificate named by its first domain lives.
    fn cert_dir(&self, primary: &str) -> PathBuf {
        self.dir.join("certificates").join(slug(primary))
    }

    pub(crate) fn load_cert(&self, primary: &str) -> Option<Stored> {
        let dir = self.cert_dir(primary);
        let chain_pem = fs::read_to_string(dir.join("cert.pem")).ok()?;
        let key_pem = fs::read_to_string(dir.join("key.pem")).ok()?;
        Some(Stored { chain_pem, key_pem })
    }

    /// Key first, then the chain: a reader that finds the new chain also finds its key.
    pub(crate) fn save_cert(&self, primary: &str, chain_pem: &str, key_pem: &str) -> Result<(), AcmeError> {
        let dir = self.cert_dir(primary);
        self.ensure_dir(&self.dir)?;
        self.ensure_dir(&self.dir.join("certificates"))?;
        self.ensure_dir(&dir)?;
        write_atomic(&dir.join("key.pem"), key_pem.as_bytes())?;
        write_atomic(&dir.join("cert.pem"), chain_pem.as_bytes())
    }
}

/// A file-name-safe form of a URL or domain.
fn slug(s: &str) -> String {
    let s = s.trim_start_matches("https://");
    s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '_' }).collect()
}

/// tmp (0600) → write → fsync → rename → fsync the directory.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), AcmeError> {
    let err = |e: std::io::Error| AcmeError::Storage(format!("{}: {e}", path.display()));
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp).map_err(err)?;
    f.write_all(bytes).map_err(err)?;
    f.sync_all().map_err(err)?;
    fs::rename(&tmp, path).map_err(err)?;
    if let Some(parent) = path.parent() {
        if let Ok(d) = fs::File::open(parent) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_private_permissions() {
        let dir = std::env::temp_dir().join(format!("flotilla-acme-storage-{}", std::process::id()));
        let s = Storage::new(&dir);
        assert!(s.load_cert("app.example.com").is_none());
        s.save_cert("app.example.com", "CHAIN", "KEY").unwrap();
        let got = s.load_cert("app.example.com").unwrap();
        assert_eq!((got.chain_pem.as_str(), got.key_pem.as_str()), ("CHAIN", "KEY"));
        let key = dir.join("certificates/app.example.com/key.pem");
        assert_eq!(fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        s.save_account("https://acme.example/dir", "{}").unwrap();
        assert_eq!(s.load_account("https://acme.example/dir").as_deref(), Some("{}"));
        assert!(s.load_account("https://other.example/dir").is_none());
        fs::remove_dir_all(&dir).unwrap();
    }
}
