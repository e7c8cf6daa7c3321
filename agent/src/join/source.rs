//! Where join material comes from. [`KubeadmSource`] mints it per join with
//! kubeadm on this (joined) control plane, so a join hours or months after
//! `kubeadm init` still works (uploaded certificates and their key live
//! 2 h, bootstrap tokens 24 h by default):
//!
//! 1. `kubeadm token create --ttl T --description D --print-join-command`:
//!    endpoint, token, CA hash parsed from the join command it prints.
//! 2. control planes only: `kubeadm certs certificate-key`, then
//!    `kubeadm init phase upload-certs --upload-certs --config FILE`, the
//!    key in `FILE`'s `InitConfiguration.certificateKey` (kubeadm reads the
//!    phase's key from its InitConfiguration; `--certificate-key` would put
//!    it in argv, readable by every user in `/proc/<pid>/cmdline`). FILE is
//!    created 0600 in a root-only directory and removed right after.
//!
//! stdout of these commands holds secrets: it is parsed and zeroed, never
//! logged; errors quote argv and stderr only.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use kubeha_core::config::Config;
use kubeha_core::join::{
    Grant, JoinMaterial, ParseError, parse_certificate_key, parse_join_command,
};
use zeroize::{Zeroize, Zeroizing};

use std::sync::Arc;

use crate::command::{Command, CommandError, Runner};

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{0}")]
    Command(#[from] CommandError),
    #[error("`{argv}`: unexpected output: {error}")]
    Parse { argv: String, error: ParseError },
    #[error("`{argv}`: {message}")]
    Unexpected { argv: String, message: String },
    #[error("{path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Mints join material for one join.
#[async_trait]
pub trait JoinMaterialSource: Send + Sync {
    /// Material for `node`. With [`Grant::ControlPlane`] it includes a
    /// certificate key valid for the certificates uploaded now.
    async fn mint(&self, node: &str, grant: Grant) -> Result<JoinMaterial, SourceError>;
}

/// Bootstrap tokens minted per join live this long: enough for one join.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(3600);

#[derive(Clone)]
pub struct KubeadmSource {
    pub kubeadm: PathBuf,
    /// kubeadm's directory: `admin.conf` and `pki/` in it.
    pub etc_dir: PathBuf,
    /// Root-only directory for the short-lived config file (the agent's
    /// runtime directory, a tmpfs).
    pub work_dir: PathBuf,
    pub advertise_addr: IpAddr,
    pub apiserver_port: u16,
    pub token_ttl: Duration,
    /// Per kubeadm command.
    pub timeout: Duration,
    /// How commands run: under systemd in a transient unit, outside the
    /// agent's sandbox, like the kubeadm jobs (`crate::transient`).
    pub runner: Arc<dyn Runner>,
}

impl std::fmt::Debug for KubeadmSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeadmSource")
            .field("kubeadm", &self.kubeadm)
            .field("etc_dir", &self.etc_dir)
            .field("work_dir", &self.work_dir)
            .finish_non_exhaustive()
    }
}

impl KubeadmSource {
    /// From the config: `None` without `[kubernetes]`. `work_dir` is the
    /// directory of `socket` (`/run/kubeha`, 0700).
    pub fn from_config(config: &Config) -> Option<KubeadmSource> {
        let k = config.kubernetes.as_ref()?;
        Some(KubeadmSource {
            kubeadm: k.kubeadm.clone(),
            etc_dir: k.etc_dir.clone(),
            work_dir: config
                .socket
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| config.state_dir.clone()),
            advertise_addr: config.advertise_addr,
            apiserver_port: k.apiserver_port,
            token_ttl: DEFAULT_TOKEN_TTL,
            timeout: Duration::from_secs(60),
            runner: crate::transient::for_agent(),
        })
    }

    fn kubeadm(&self) -> Command {
        Command::new(&self.kubeadm).timeout(self.timeout)
    }

    fn admin_conf(&self) -> PathBuf {
        self.etc_dir.join("admin.conf")
    }

    /// Run and return stdout, which may hold secrets (zeroed on drop).
    async fn secret_stdout(&self, cmd: &Command) -> Result<Zeroizing<String>, SourceError> {
        let mut out = self.runner.run(cmd).await?;
        let text = Zeroizing::new(String::from_utf8_lossy(&out.stdout).into_owned());
        out.stdout.zeroize();
        Ok(text)
    }

    async fn version(&self) -> Result<String, SourceError> {
        let cmd = self.kubeadm().args(["version", "-o", "short"]);
        let out = self.runner.run(&cmd).await?;
        let v = out.stdout_str().trim().to_string();
        let ok = v.starts_with('v')
            && v.len() < 64
            && v[1..]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'+'));
        if !ok {
            return Err(SourceError::Unexpected {
                argv: cmd.display_argv(),
                message: format!("`{v}` is not a version like v1.34.2"),
            });
        }
        Ok(v)
    }

    async fn upload_certs(&self, node: &str) -> Result<kubeha_core::join::Secret, SourceError> {
        let cmd = self.kubeadm().args(["certs", "certificate-key"]);
        let key = parse_certificate_key(&self.secret_stdout(&cmd).await?).map_err(|error| {
            SourceError::Parse {
                argv: cmd.display_argv(),
                error,
            }
        })?;
        let version = self.version().await?;
        let config = Zeroizing::new(format!(
            "apiVersion: kubeadm.k8s.io/v1beta4\n\
             kind: InitConfiguration\n\
             certificateKey: \"{key}\"\n\
             localAPIEndpoint:\n  advertiseAddress: \"{addr}\"\n  bindPort: {port}\n\
             ---\n\
             apiVersion: kubeadm.k8s.io/v1beta4\n\
             kind: ClusterConfiguration\n\
             kubernetesVersion: \"{version}\"\n\
             certificatesDir: {pki}\n",
            key = key.expose(),
            addr = self.advertise_addr,
            port = self.apiserver_port,
            pki = yaml_quoted(&self.etc_dir.join("pki").to_string_lossy()),
        ));
        let file = SecretFile::create(&self.work_dir, node, config.as_bytes())?;
        let cmd = self
            .kubeadm()
            .args([
                "init",
                "phase",
                "upload-certs",
                "--upload-certs",
                "--config",
            ])
            .arg(file.path())
            .arg("--kubeconfig")
            .arg(self.admin_conf());
        let out = self.secret_stdout(&cmd).await;
        drop(file);
        let used = parse_certificate_key(&out?).map_err(|error| SourceError::Parse {
            argv: cmd.display_argv(),
            error,
        })?;
        if used != key {
            return Err(SourceError::Unexpected {
                argv: cmd.display_argv(),
                message: "kubeadm used another certificate key than the one in its config".into(),
            });
        }
        Ok(key)
    }
}

#[async_trait]
impl JoinMaterialSource for KubeadmSource {
    async fn mint(&self, node: &str, grant: Grant) -> Result<JoinMaterial, SourceError> {
        let cmd = self
            .kubeadm()
            .args(["token", "create", "--ttl"])
            .arg(go_duration(self.token_ttl))
            .arg("--description")
            .arg(format!("kubeha join of {node}"))
            .arg("--print-join-command")
            .arg("--kubeconfig")
            .arg(self.admin_conf());
        let join = parse_join_command(&self.secret_stdout(&cmd).await?).map_err(|error| {
            SourceError::Parse {
                argv: cmd.display_argv(),
                error,
            }
        })?;
        let certificate_key = match grant {
            Grant::Worker => None,
            Grant::ControlPlane => Some(self.upload_certs(node).await?),
        };
        Ok(JoinMaterial {
            endpoint: join.endpoint,
            token: join.token,
            ca_cert_hash: join.ca_cert_hash,
            certificate_key,
        })
    }
}

/// A YAML double-quoted scalar.
fn yaml_quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `1h0m0s`, as kubeadm prints durations.
fn go_duration(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}h{}m{}s", s / 3600, s / 60 % 60, s % 60)
}

/// A root-only file holding a secret, removed (after overwriting) on drop.
struct SecretFile {
    path: PathBuf,
    len: usize,
}

impl SecretFile {
    fn create(dir: &Path, node: &str, bytes: &[u8]) -> Result<SecretFile, SourceError> {
        let path = dir.join(format!(
            ".kubeha-upload-certs-{}-{}-{}.yaml",
            node,
            std::process::id(),
            rand::random::<u32>()
        ));
        let err = |source| SourceError::File {
            path: path.clone(),
            source,
        };
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(err)?;
        let file = SecretFile {
            path: path.clone(),
            len: bytes.len(),
        };
        f.write_all(bytes).map_err(err)?;
        f.sync_all().map_err(err)?;
        Ok(file)
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SecretFile {
    fn drop(&mut self) {
        if let Ok(mut f) = fs::OpenOptions::new().write(true).open(&self.path) {
            let _ = f.write_all(&vec![0u8; self.len]);
            let _ = f.sync_all();
        }
        let _ = fs::remove_file(&self.path);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn yaml_strings_are_quoted() {
        assert_eq!(
            yaml_quoted("/etc/kubernetes/pki"),
            "\"/etc/kubernetes/pki\""
        );
        assert_eq!(yaml_quoted("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000a\"");
    }

    #[test]
    fn durations_as_kubeadm_writes_them() {
        assert_eq!(go_duration(Duration::from_secs(3600)), "1h0m0s");
        assert_eq!(go_duration(Duration::from_secs(86400)), "24h0m0s");
        assert_eq!(go_duration(Duration::from_secs(90)), "0h1m30s");
    }

    #[test]
    fn secret_file_is_root_only_and_gone_after_drop() {
        let d = tempfile::tempdir().unwrap();
        let f = SecretFile::create(d.path(), "cp-1", b"certificateKey: x").unwrap();
        let p = f.path().to_path_buf();
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        drop(f);
        assert!(!p.exists());
    }

    pub(crate) const TOKEN: &str = "abcdef.0123456789abcdef";
    pub(crate) const HASH: &str =
        "sha256:5e5b0f4f3b8fd1a4bd1c64c2c2d1c0d4e3f0a7d6d5b8f1e2c3d4a5b6c7d8e9f0";
    pub(crate) const KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    /// A kubeadm stand-in printing kubeadm's output formats (as on branch
    /// wt-fakekube's contract and kubeadm's source), recording argv, and
    /// the mode and contents of the upload-certs config file.
    pub(crate) struct FakeKubeadm {
        pub(crate) dir: tempfile::TempDir,
        pub(crate) source: KubeadmSource,
    }

    pub(crate) fn fake_kubeadm(upload_key: Option<&str>) -> FakeKubeadm {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let work = d.join("run");
        fs::create_dir(&work).unwrap();
        fs::set_permissions(&work, fs::Permissions::from_mode(0o700)).unwrap();
        // `upload_key`: print this key instead of the config's (a kubeadm
        // that ignored the config).
        let used_key = match upload_key {
            Some(k) => format!("echo {k}"),
            None => "sed -n 's/^certificateKey: \"\\(.*\\)\"$/\\1/p' \"$cfg\"".to_string(),
        };
        let script = format!(
            r#"#!/bin/sh
printf '%s\n' "$*" >> {d}/calls
case "$1 $2" in
"token create")
  printf 'kubeadm join 10.0.0.10:6443 --token {TOKEN}     --discovery-token-ca-cert-hash {HASH} \n' ;;
"certs certificate-key") echo {KEY} ;;
"version -o") echo v1.34.2 ;;
"init phase")
  cfg=""; prev=""
  for a in "$@"; do [ "$prev" = "--config" ] && cfg="$a"; prev="$a"; done
  stat -c %a "$cfg" > {d}/mode
  cp "$cfg" {d}/config.yaml
  echo '[upload-certs] Storing the certificates in Secret "kubeadm-certs" in the "kube-system" Namespace'
  echo '[upload-certs] Using certificate key:'
  {used_key} ;;
*) echo "error: unknown command \"$1\" for \"kubeadm\"" >&2; exit 1 ;;
esac
"#,
            d = d.display()
        );
        let bin = d.join("kubeadm");
        fs::write(&bin, script).unwrap();
        fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
        let source = KubeadmSource {
            kubeadm: bin,
            etc_dir: d.join("etc"),
            work_dir: work,
            advertise_addr: "10.0.0.3".parse().unwrap(),
            apiserver_port: 6443,
            token_ttl: DEFAULT_TOKEN_TTL,
            timeout: Duration::from_secs(20),
            runner: Arc::new(crate::command::SystemRunner),
        };
        FakeKubeadm { dir, source }
    }

    impl FakeKubeadm {
        pub(crate) fn read(&self, name: &str) -> String {
            fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
        }
    }

    #[tokio::test]
    async fn worker_material_from_token_create_only() {
        let f = fake_kubeadm(None);
        let m = f.source.mint("w-0", Grant::Worker).await.unwrap();
        assert_eq!(m.endpoint, "10.0.0.10:6443");
        assert_eq!(m.token.expose(), TOKEN);
        assert_eq!(m.ca_cert_hash, HASH);
        assert!(m.certificate_key.is_none());
        let etc = f.source.etc_dir.display();
        assert_eq!(
            f.read("calls"),
            format!(
                "token create --ttl 1h0m0s --description kubeha join of w-0 --print-join-command --kubeconfig {etc}/admin.conf\n"
            )
        );
    }

    #[tokio::test]
    async fn control_plane_key_goes_through_a_root_only_config_never_argv() {
        let f = fake_kubeadm(None);
        let m = f.source.mint("cp-1", Grant::ControlPlane).await.unwrap();
        assert_eq!(m.certificate_key.as_ref().map(|k| k.expose()), Some(KEY));
        assert_eq!(m.token.expose(), TOKEN);
        let calls = f.read("calls");
        let lines: Vec<&str> = calls.lines().collect();
        assert_eq!(lines.len(), 4, "{calls}");
        assert!(lines[1] == "certs certificate-key", "{calls}");
        assert!(lines[2] == "version -o short", "{calls}");
        assert!(
            lines[3].starts_with("init phase upload-certs --upload-certs --config "),
            "{calls}"
        );
        assert!(!calls.contains(KEY) && !calls.contains(TOKEN), "{calls}");
        assert!(!calls.contains("--certificate-key"), "{calls}");
        assert_eq!(f.read("mode").trim(), "600");
        let config = f.read("config.yaml");
        assert!(
            config.contains(&format!("certificateKey: \"{KEY}\"")),
            "{config}"
        );
        assert!(
            config.contains("kubernetesVersion: \"v1.34.2\""),
            "{config}"
        );
        assert!(
            config.contains("advertiseAddress: \"10.0.0.3\""),
            "{config}"
        );
        assert_eq!(
            fs::read_dir(&f.source.work_dir).unwrap().count(),
            0,
            "the config file is removed"
        );
    }

    #[tokio::test]
    async fn a_kubeadm_that_ignores_the_key_is_an_error() {
        let other = "ff".repeat(32);
        let f = fake_kubeadm(Some(&other));
        let e = f
            .source
            .mint("cp-1", Grant::ControlPlane)
            .await
            .unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("another certificate key"), "{msg}");
        assert!(msg.contains("init phase upload-certs"), "{msg}");
        assert!(!msg.contains(KEY) && !msg.contains(&other), "{msg}");
        assert_eq!(fs::read_dir(&f.source.work_dir).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn failures_name_argv_and_stderr_but_no_secret() {
        let mut f = fake_kubeadm(None);
        let bin = f.dir.path().join("failing");
        fs::write(
            &bin,
            "#!/bin/sh\necho 'failed to load admin kubeconfig: open /etc/kubernetes/admin.conf: no such file or directory' >&2\nexit 1\n",
        )
        .unwrap();
        fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
        f.source.kubeadm = bin;
        let e = f.source.mint("w-0", Grant::Worker).await.unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("token create --ttl 1h0m0s"), "{msg}");
        assert!(msg.contains("failed to load admin kubeconfig"), "{msg}");
        assert!(msg.contains("exit status: 1"), "{msg}");
    }
}
