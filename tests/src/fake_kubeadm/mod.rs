//! `fake-kubeadm`: kubeadm's command lines over a real etcd and the fake
//! apiserver, for tests of kubeha's kubeadm driving where kubeadm, kubelet
//! and images cannot run. See docs/testing.md, section "fake-kubeadm", for
//! the contract (commands, files, environment, what differs from kubeadm).
//!
//! - [`cli`]: the command lines. [`config`] + [`yaml`]: strict decoding of
//!   `kubeadm.k8s.io/v1beta3|v1beta4` files.
//! - [`pki`]: the certificates and kubeconfigs under `etc_dir`.
//! - [`etcd`]: the stacked member (real etcd 3.4) and an etcd v3 client.
//! - [`cluster`]: cluster-wide state in etcd (tokens, uploaded certs, Nodes),
//!   the clock with a test's offset. [`api`]: what the fake apiserver serves
//!   from it.
//! - [`node`]: per-node state (PIDs, addresses) in `state_dir`, process
//!   control, preflight, the commands themselves.
//!
//! kubeadm versions and join phases, as the fake models them (checked in
//! kubernetes/kubernetes and kubernetes/kubeadm): `EtcdLearnerMode` is GA in
//! 1.32 and its gate removed in 1.33, so a stacked control-plane join always
//! adds the etcd member as a learner and promotes it once in sync.
//! `ControlPlaneKubeletLocalMode` (alpha 1.31, beta and on by default 1.33,
//! GA and locked on in 1.35) makes a joining control plane's kubelet talk to
//! its local apiserver and moves the etcd join into the `etcd-join` phase
//! (run after `kubelet-start`, followed by `kubelet-wait-bootstrap`); in 1.35
//! the old `control-plane-join/etcd` sub-phase is deprecated and hidden. The
//! fake runs the same order (download certs, certs, kubeconfigs, etcd join as
//! learner + promote, apiserver, Node registration) whatever the version,
//! and `--skip-phases` skips `etcd-join` (or `control-plane-join/etcd-join`)
//! and `mark-control-plane` like kubeadm.
//!
//! A test makes one phase fail once with a file `state_dir/fail-phase-once`
//! naming it ([`node::FAIL_PHASE_ONCE`]); reset retries its etcd member
//! removal like kubeadm (`FAKE_KUBEADM_ETCD_API_TIMEOUT`).

pub mod api;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod etcd;
pub mod http;
pub mod node;
pub mod pki;
pub mod yaml;

use std::path::{Path, PathBuf};

use cluster::Clock;

/// kubeadm version reported when none is configured.
pub const DEFAULT_VERSION: &str = "v1.34.2";

/// Environment variables (the fake's whole configuration).
pub mod env {
    /// Where kubeadm's files go (default `/etc/kubernetes`).
    pub const ETC_DIR: &str = "FAKE_KUBEADM_ETC_DIR";
    /// The fake's own per-node state: PIDs, daemon logs, default etcd data
    /// dir (default `/var/lib/fake-kubeadm`).
    pub const STATE_DIR: &str = "FAKE_KUBEADM_STATE_DIR";
    /// Call log (JSON lines), appended by every invocation.
    pub const LOG: &str = "FAKE_KUBEADM_LOG";
    /// Reported version, e.g. `v1.33.4`; or a file holding it.
    pub const VERSION: &str = "FAKE_KUBEADM_VERSION";
    pub const VERSION_FILE: &str = "FAKE_KUBEADM_VERSION_FILE";
    /// Clock offset (`3h`, `-10m`), and a file read at every use.
    pub const CLOCK_OFFSET: &str = "FAKE_KUBEADM_CLOCK_OFFSET";
    pub const CLOCK_OFFSET_FILE: &str = "FAKE_KUBEADM_CLOCK_OFFSET_FILE";
    /// The etcd binary (default `/usr/bin/etcd`).
    pub const ETCD: &str = "FAKE_KUBEADM_ETCD";
    /// The fake apiserver binary (default: `fake-apiserver` beside this one).
    pub const APISERVER: &str = "FAKE_KUBEADM_APISERVER";
    /// etcd ports on the advertise address (default 2379 and 2380).
    pub const ETCD_CLIENT_PORT: &str = "FAKE_KUBEADM_ETCD_CLIENT_PORT";
    pub const ETCD_PEER_PORT: &str = "FAKE_KUBEADM_ETCD_PEER_PORT";
    /// How long a join retries an unreachable endpoint (default `10s`).
    pub const DISCOVERY_TIMEOUT: &str = "FAKE_KUBEADM_DISCOVERY_TIMEOUT";
    /// How long an etcd membership call (reset's member remove) is retried,
    /// as kubeadm's `timeouts.etcdAPICall` (default `2m`).
    pub const ETCD_API_TIMEOUT: &str = "FAKE_KUBEADM_ETCD_API_TIMEOUT";
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("`{path}`: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A kubeadm-style message, printed as it is.
    #[error("{0}")]
    Kubeadm(String),
    #[error("etcd: {0}")]
    Etcd(String),
    #[error("{0}")]
    Other(String),
}

impl Error {
    pub fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
        move |source| Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The fake's settings, from the environment.
#[derive(Debug, Clone)]
pub struct Env {
    pub etc_dir: PathBuf,
    pub state_dir: PathBuf,
    pub log: Option<PathBuf>,
    pub version: String,
    pub clock: Clock,
    pub etcd_bin: PathBuf,
    pub apiserver_bin: PathBuf,
    pub etcd_client_port: u16,
    pub etcd_peer_port: u16,
    pub discovery_timeout: std::time::Duration,
    pub etcd_api_timeout: std::time::Duration,
}

fn var(k: &str) -> Option<String> {
    std::env::var(k).ok().filter(|v| !v.is_empty())
}

impl Env {
    pub fn from_env() -> Result<Env, Error> {
        let bad = |k: &str, e: String| Error::Other(format!("environment {k}: {e}"));
        let version = match (var(env::VERSION), var(env::VERSION_FILE)) {
            (Some(v), _) => v,
            (None, Some(f)) => pki::read(Path::new(&f))?.trim().to_string(),
            (None, None) => DEFAULT_VERSION.to_string(),
        };
        let offset_secs = match var(env::CLOCK_OFFSET) {
            Some(v) => cluster::parse_offset(&v).map_err(|e| bad(env::CLOCK_OFFSET, e))?,
            None => 0,
        };
        let port = |k: &str, d: u16| -> Result<u16, Error> {
            match var(k) {
                Some(v) => v.parse().map_err(|e| bad(k, format!("{v:?}: {e}"))),
                None => Ok(d),
            }
        };
        let apiserver_bin = match var(env::APISERVER) {
            Some(p) => PathBuf::from(p),
            None => std::env::current_exe()
                .ok()
                .and_then(|e| e.parent().map(|d| d.join("fake-apiserver")))
                .unwrap_or_else(|| PathBuf::from("fake-apiserver")),
        };
        let discovery_timeout = match var(env::DISCOVERY_TIMEOUT) {
            Some(v) => humantime::parse_duration(&v)
                .map_err(|e| bad(env::DISCOVERY_TIMEOUT, e.to_string()))?,
            None => std::time::Duration::from_secs(10),
        };
        let etcd_api_timeout = match var(env::ETCD_API_TIMEOUT) {
            Some(v) => humantime::parse_duration(&v)
                .map_err(|e| bad(env::ETCD_API_TIMEOUT, e.to_string()))?,
            None => std::time::Duration::from_secs(120),
        };
        Ok(Env {
            etc_dir: var(env::ETC_DIR)
                .map(PathBuf::from)
                .unwrap_or_else(|| "/etc/kubernetes".into()),
            state_dir: var(env::STATE_DIR)
                .map(PathBuf::from)
                .unwrap_or_else(|| "/var/lib/fake-kubeadm".into()),
            log: var(env::LOG).map(PathBuf::from),
            version,
            clock: Clock {
                offset_secs,
                offset_file: var(env::CLOCK_OFFSET_FILE).map(PathBuf::from),
            },
            etcd_bin: var(env::ETCD)
                .map(PathBuf::from)
                .unwrap_or_else(|| "/usr/bin/etcd".into()),
            apiserver_bin,
            etcd_client_port: port(env::ETCD_CLIENT_PORT, 2379)?,
            etcd_peer_port: port(env::ETCD_PEER_PORT, 2380)?,
            discovery_timeout,
            etcd_api_timeout,
        })
    }

    pub fn pki(&self) -> PathBuf {
        self.etc_dir.join("pki")
    }
}

/// argv with secrets replaced by `<redacted>`: the values of `--token`,
/// `--discovery-token`, `--tls-bootstrap-token`, `--certificate-key`, and
/// anything shaped like a bootstrap token or a certificate key.
pub fn redact(argv: &[String]) -> Vec<String> {
    const SECRET_FLAGS: &[&str] = &[
        "--token",
        "--discovery-token",
        "--tls-bootstrap-token",
        "--certificate-key",
    ];
    let mut out = Vec::with_capacity(argv.len());
    let mut hide_next = false;
    for a in argv {
        if hide_next {
            out.push("<redacted>".to_string());
            hide_next = false;
            continue;
        }
        if let Some((flag, _)) = a.split_once('=')
            && SECRET_FLAGS.contains(&flag)
        {
            out.push(format!("{flag}=<redacted>"));
            continue;
        }
        if SECRET_FLAGS.contains(&a.as_str()) {
            hide_next = true;
            out.push(a.clone());
            continue;
        }
        let is_key = a.len() == 64 && a.bytes().all(|c| c.is_ascii_hexdigit());
        if cluster::is_token(a) || is_key {
            out.push("<redacted>".to_string());
        } else {
            out.push(a.clone());
        }
    }
    out
}

/// Append one call to the log (one JSON line, O_APPEND).
pub fn log_call(env: &Env, argv: &[String], exit: i32, started_unix_ms: u128) {
    let Some(path) = &env.log else { return };
    let cwd = std::env::current_dir()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let line = serde_json::json!({
        "argv": redact(argv),
        "cwd": cwd,
        "unix_ms": started_unix_ms as u64,
        "time": cluster::rfc3339((started_unix_ms / 1000) as i64),
        "pid": std::process::id(),
        "exit": exit,
        "etc_dir": env.etc_dir.display().to_string(),
        "version": env.version,
    })
    .to_string()
        + "\n";
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = f.write_all(line.as_bytes());
    }
}

/// Run one kubeadm command line (argv[0] included); returns the exit code.
pub fn main(argv: Vec<String>) -> i32 {
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let env = match Env::from_env() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("fake-kubeadm: {e}");
            return 1;
        }
    };
    let code = run(&env, &argv);
    log_call(&env, &argv, code, started);
    code
}

fn run(env: &Env, argv: &[String]) -> i32 {
    use clap::Parser;
    let cli = match cli::Cli::try_parse_from(argv) {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            let code = match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => 0,
                _ => 1,
            };
            let _ = e.print();
            return code;
        }
    };
    match node::dispatch(env, cli.cmd) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{e}");
            eprintln!("To see the stack trace of this error execute with --v=5 or higher");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction() {
        let argv: Vec<String> = [
            "kubeadm",
            "join",
            "10.0.0.1:6443",
            "--token",
            "abcdef.0123456789abcdef",
            "--discovery-token-ca-cert-hash",
            "sha256:0000000000000000000000000000000000000000000000000000000000000000",
            "--certificate-key=1111111111111111111111111111111111111111111111111111111111111111",
            "--tls-bootstrap-token",
            "x",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let r = redact(&argv);
        assert_eq!(r[4], "<redacted>");
        assert!(r[6].starts_with("sha256:00"), "the CA pin is public");
        assert_eq!(r[7], "--certificate-key=<redacted>");
        assert_eq!(r[9], "<redacted>");
        let bare = redact(&["create".into(), "abcdef.0123456789abcdef".into()]);
        assert_eq!(bare[1], "<redacted>");
    }
}
