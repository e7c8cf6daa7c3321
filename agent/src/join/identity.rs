//! The agent's TLS identity: a key pair and self-signed certificate made at
//! first start, kept in `state_dir/join-identity.pem` (0600, written
//! atomically, certificate and key in one file so they never mismatch) and
//! reused across restarts. Its fingerprint is what gossip publishes.

use std::fmt;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use kubeha_core::join::Fingerprint;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use zeroize::Zeroizing;

use crate::state::write_atomic;

/// File name inside `state_dir`.
pub const IDENTITY_FILE: &str = "join-identity.pem";

#[derive(Debug, thiserror::Error)]
#[error("{path} (join TLS identity): {message}")]
pub struct IdentityError {
    pub path: PathBuf,
    pub message: String,
}

/// Certificate and private key. `Debug` shows the fingerprint only.
pub struct Identity {
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    fingerprint: Fingerprint,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity {
            cert: self.cert.clone(),
            key: self.key.clone_key(),
            fingerprint: self.fingerprint,
        }
    }
}

impl Identity {
    /// A new key pair and certificate for `node_name` (not stored), and
    /// both as PEM (the key: secret).
    pub fn generate(node_name: &str) -> Result<(Identity, Zeroizing<String>), String> {
        let ck = rcgen::generate_simple_self_signed(vec![node_name.to_string()])
            .map_err(|e| format!("cannot make a certificate: {e}"))?;
        let cert = ck.cert.der().clone();
        let key = PrivateKeyDer::try_from(ck.signing_key.serialize_der())
            .map_err(|e| format!("cannot encode the key: {e}"))?;
        let mut pem = Zeroizing::new(ck.cert.pem());
        pem.push_str(&Zeroizing::new(ck.signing_key.serialize_pem()));
        Ok((Identity::from_parts(cert, key), pem))
    }

    fn from_parts(cert: CertificateDer<'static>, key: PrivateKeyDer<'static>) -> Identity {
        let fingerprint = Fingerprint::of_der(&cert);
        Identity {
            cert,
            key,
            fingerprint,
        }
    }

    /// Load `dir/join-identity.pem`, or make and store one if there is
    /// none. A file others can read, or one that does not parse, is an
    /// error (never silently replaced: the fingerprint would change).
    pub fn load_or_create(dir: &Path, node_name: &str) -> Result<Identity, IdentityError> {
        let path = dir.join(IDENTITY_FILE);
        let err = |message: String| IdentityError {
            path: path.clone(),
            message,
        };
        match fs::metadata(&path) {
            Ok(meta) => {
                if meta.mode() & 0o077 != 0 {
                    return Err(err(format!(
                        "mode {:o} lets others read the private key; run `chmod 600 {}`",
                        meta.mode() & 0o777,
                        path.display()
                    )));
                }
                let bytes = Zeroizing::new(fs::read(&path).map_err(|e| err(e.to_string()))?);
                let bad = |what: &str| {
                    err(format!(
                        "{what}; remove the file to make a new identity (its fingerprint changes)"
                    ))
                };
                let cert = CertificateDer::from_pem_slice(&bytes)
                    .map_err(|_| bad("no PEM certificate in it"))?;
                let key = PrivateKeyDer::from_pem_slice(&bytes)
                    .map_err(|_| bad("no PEM private key in it"))?;
                Ok(Identity::from_parts(cert, key))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let (id, pem) = Identity::generate(node_name).map_err(err)?;
                write_atomic(&path, pem.as_bytes())
                    .map_err(|e| err(format!("cannot write it: {e}")))?;
                Ok(id)
            }
            Err(e) => Err(err(e.to_string())),
        }
    }

    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    pub fn cert(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    pub(crate) fn key(&self) -> PrivateKeyDer<'static> {
        self.key.clone_key()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn made_once_root_only_and_reused() {
        let d = tempfile::tempdir().unwrap();
        let a = Identity::load_or_create(d.path(), "cp-0").unwrap();
        let path = d.path().join(IDENTITY_FILE);
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = Identity::load_or_create(d.path(), "cp-0").unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint(), "reused across restarts");
        assert_eq!(a.key().secret_der(), b.key().secret_der());
        assert_eq!(Fingerprint::of_der(b.cert()), b.fingerprint());
        let (other, _) = Identity::generate("cp-0").unwrap();
        assert_ne!(other.fingerprint(), a.fingerprint());
        assert!(!format!("{a:?}").contains("PRIVATE"));
    }

    #[test]
    fn readable_or_broken_file_is_refused() {
        let d = tempfile::tempdir().unwrap();
        Identity::load_or_create(d.path(), "w-0").unwrap();
        let path = d.path().join(IDENTITY_FILE);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let e = Identity::load_or_create(d.path(), "w-0").unwrap_err();
        assert!(e.to_string().contains("chmod 600"), "{e}");
        assert!(e.to_string().contains(IDENTITY_FILE), "{e}");
        fs::write(&path, "junk").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let e = Identity::load_or_create(d.path(), "w-0").unwrap_err();
        assert!(e.to_string().contains("no PEM certificate"), "{e}");
    }
}
