//! ACME files on disk under `storage`: the account credentials (`account-HASH.json`, one per
//! directory URL) and each listener's certificate chain and key (`LISTENER/cert.pem`,
//! `LISTENER/key.pem`). Directories are created 0700 and files written 0600, whole (a
//! temporary file renamed over the old one), so a reader never sees half a file.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::tls::certs::{self, LoadedPair};

use super::AcmeError;

/// Where one listener's certificate lives.
#[derive(Debug, Clone)]
pub struct Paths {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub account: PathBuf,
}

impl Paths {
    pub fn new(storage: &Path, listener: &str, directory: &str) -> Paths {
        // A listener name is free text in the config: keep it to a safe file name.
        let safe: String = listener
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let dir = storage.join(safe);
        let hash = xxhash_rust::xxh3::xxh3_64(directory.as_bytes());
        Paths {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            account: storage.join(format!("account-{hash:016x}.json")),
        }
    }
}

fn io_error(path: &Path, e: std::io::Error) -> AcmeError {
    AcmeError::Storage {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

fn make_dir(dir: &Path) -> Result<(), AcmeError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| io_error(dir, e))
}

/// Write `bytes` to `path` (mode 0600) through a temporary file renamed over it.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), AcmeError> {
    if let Some(dir) = path.parent() {
        make_dir(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| io_error(&tmp, e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| io_error(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io_error(path, e))
}

/// The stored account credentials (JSON), if any.
pub fn read_account(paths: &Paths) -> Option<String> {
    std::fs::read_to_string(&paths.account).ok()
}

/// Store a new certificate (chain and key, PEM) and load it back as rustls serves it.
pub fn save_certificate(paths: &Paths, chain: &str, key: &str) -> Result<LoadedPair, AcmeError> {
    // The key first: a crash in between leaves the old pair's cert with a new key, which
    // `load` refuses (keys_match), and the next start orders again.
    write_private(&paths.key, key.as_bytes())?;
    write_private(&paths.cert, chain.as_bytes())?;
    load(paths).ok_or_else(|| AcmeError::Storage {
        path: paths.cert.clone(),
        reason: "the certificate just stored does not load".into(),
    })
}

/// The stored certificate, if there is a usable one.
pub fn load(paths: &Paths) -> Option<LoadedPair> {
    if !paths.cert.exists() {
        return None;
    }
    match certs::load_pair(&paths.cert, &paths.key) {
        Ok(pair) => Some(pair),
        Err(e) => {
            tracing::warn!(error = %e, "stored ACME certificate unusable: ordering a new one");
            None
        }
    }
}

/// The chain and key of the stored certificate, PEM (what the fleet shares).
pub fn read_pem(paths: &Paths) -> Option<(String, String)> {
    let chain = std::fs::read_to_string(&paths.cert).ok()?;
    let key = std::fs::read_to_string(&paths.key).ok()?;
    Some((chain, key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn files_are_private_and_names_safe() {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = Paths::new(dir.path(), "../web 1", "https://acme.example/dir");
        let sub = dir.path().join("___web_1");
        assert_eq!(paths.cert.parent(), Some(sub.as_path()));
        write_private(&paths.key, b"secret").expect("write");
        let mode = std::fs::metadata(&paths.key)
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let dmode = std::fs::metadata(&sub).expect("meta").permissions().mode();
        assert_eq!(dmode & 0o777, 0o700);
        write_private(&paths.key, b"again").expect("rewrite");
        assert_eq!(std::fs::read(&paths.key).expect("read"), b"again");
        assert!(load(&paths).is_none(), "no certificate yet");
    }
}
