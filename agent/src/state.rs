//! Files the agent reads at start and writes while running: the config, the
//! key file and the state directory. All writes are atomic (temp file,
//! fsync, rename, fsync the directory) and root-only.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use kubeha_core::config::{Config, ConfigError};
use kubeha_core::frame::{Keyring, Rings};

/// Problems found before anything binds; each names its file.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{path} (`{key}`): {message}")]
    Key {
        path: PathBuf,
        key: &'static str,
        message: String,
    },
    #[error("{path}: {message}")]
    State { path: PathBuf, message: String },
}

pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .map(|h| h.split('.').next().unwrap_or_default().to_lowercase())
        .unwrap_or_default()
}

pub fn load_config(path: &Path) -> Result<Config, LoadError> {
    let text = fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(Config::parse(path, &text, &hostname())?)
}

/// Read the keyring, refusing a key file that anyone but its owner can read
/// (S4: a secret in a file that is not root-only).
pub fn load_keyring(path: &Path) -> Result<Keyring, LoadError> {
    load_key_file(path, "key_file")
}

/// The cluster key and, where configured, the control key (both files
/// root-only; the control key must share no key with the cluster key).
pub fn load_rings(config: &Config) -> Result<Rings, LoadError> {
    let member = load_key_file(&config.key_file, "key_file")?;
    let control = match &config.control_key_file {
        Some(p) => {
            let ring = load_key_file(p, "control_key_file")?;
            if ring.shares_key_with(&member) {
                return Err(LoadError::Key {
                    path: p.clone(),
                    key: "control_key_file",
                    message: format!(
                        "a key of this file is also in {} (`key_file`): the control key must differ from the cluster key",
                        config.key_file.display()
                    ),
                });
            }
            Some(ring)
        }
        None => None,
    };
    Ok(Rings { member, control })
}

fn load_key_file(path: &Path, key: &'static str) -> Result<Keyring, LoadError> {
    let key_err = |message: String| LoadError::Key {
        path: path.to_path_buf(),
        key,
        message,
    };
    let meta = fs::metadata(path).map_err(|e| {
        key_err(format!(
            "{e} (create one with `kubeha-ctl keygen --out {}`)",
            path.display()
        ))
    })?;
    if meta.mode() & 0o077 != 0 {
        return Err(key_err(format!(
            "mode {:o} lets others read the key; run `chmod 600 {}`",
            meta.mode() & 0o777,
            path.display()
        )));
    }
    let text = fs::read_to_string(path).map_err(|e| key_err(e.to_string()))?;
    Keyring::parse(&text).map_err(|e| key_err(e.to_string()))
}

/// Write `bytes` to `path` atomically with mode 0600.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("state")
    ));
    {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    fs::File::open(dir)?.sync_all()
}

/// The state directory: created root-only if missing.
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    pub fn open(dir: &Path) -> Result<StateDir, LoadError> {
        let err = |message: String| LoadError::State {
            path: dir.to_path_buf(),
            message,
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| {
                err(format!(
                    "cannot create the state directory (`state_dir`): {e}"
                ))
            })?;
        let meta = fs::metadata(dir).map_err(|e| err(e.to_string()))?;
        if meta.permissions().mode() & 0o077 != 0 {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
                .map_err(|e| err(format!("cannot make the state directory root-only: {e}")))?;
        }
        Ok(StateDir {
            dir: dir.to_path_buf(),
        })
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A new incarnation number, larger than any earlier one on this node even
    /// if the wall clock stepped back: max(unix µs, last + 1), persisted.
    pub fn next_generation(&self, unix_us: u64) -> Result<u64, LoadError> {
        let path = self.path("generation");
        let last = match fs::read_to_string(&path) {
            Ok(s) => s.trim().parse::<u64>().unwrap_or(0),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => {
                return Err(LoadError::State {
                    path,
                    message: e.to_string(),
                });
            }
        };
        let next = unix_us.max(last + 1);
        write_atomic(&path, next.to_string().as_bytes()).map_err(|e| LoadError::State {
            path,
            message: format!("cannot record the agent generation: {e}"),
        })?;
        Ok(next)
    }

    /// Read a file of the state directory; `None` if it does not exist.
    pub fn read(&self, name: &str) -> Result<Option<Vec<u8>>, LoadError> {
        let path = self.path(name);
        match fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(LoadError::State {
                path,
                message: e.to_string(),
            }),
        }
    }

    pub fn write(&self, name: &str, bytes: &[u8]) -> std::io::Result<()> {
        write_atomic(&self.path(name), bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_always_increases() {
        let d = tempfile::tempdir().unwrap();
        let s = StateDir::open(&d.path().join("state")).unwrap();
        let a = s.next_generation(1_000).unwrap();
        let b = s.next_generation(500).unwrap(); // clock stepped back
        let c = s.next_generation(9_000).unwrap();
        assert_eq!((a, b, c), (1_000, 1_001, 9_000));
        let mode = fs::metadata(d.path().join("state"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        let mode = fs::metadata(s.path("generation"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn key_file_must_be_private() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("cluster.key");
        fs::write(&p, kubeha_core::frame::Key::from_bytes([1; 32]).to_base64()).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        let e = load_keyring(&p).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
        assert!(e.contains("cluster.key"), "{e}");
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(load_keyring(&p).is_ok());
        let e = load_keyring(&d.path().join("missing"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("kubeha-ctl keygen"), "{e}");
    }

    #[test]
    fn control_key_must_differ_from_the_cluster_key() {
        let d = tempfile::tempdir().unwrap();
        let write = |name: &str, b: u8| {
            let p = d.path().join(name);
            fs::write(&p, kubeha_core::frame::Key::from_bytes([b; 32]).to_base64()).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
            p
        };
        let cluster = write("cluster.key", 1);
        let same = write("same.key", 1);
        let control = write("control.key", 2);
        let text = |c: &Path| {
            format!(
                "cluster = \"lab\"\nnode_name = \"cp-0\"\nroles = [\"control-plane\"]\nadvertise_addr = \"198.18.0.2\"\nvoters = [\"cp-0\"]\nkey_file = \"{}\"\ncontrol_key_file = \"{}\"\n",
                cluster.display(),
                c.display()
            )
        };
        let cfg = |c: &Path| Config::parse(Path::new("/k.toml"), &text(c), "h").unwrap();
        let rings = load_rings(&cfg(&control)).unwrap();
        assert!(rings.control.is_some());
        let e = load_rings(&cfg(&same)).unwrap_err().to_string();
        assert!(
            e.contains("same.key") && e.contains("control_key_file"),
            "{e}"
        );
        let e = load_rings(&cfg(&d.path().join("missing.key")))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("missing.key") && e.contains("`control_key_file`"),
            "{e}"
        );
    }
}
