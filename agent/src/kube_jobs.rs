//! The kubeadm jobs of a node (`Job::RunInit`, `CheckInit`, `ApplyCni`,
//! `FetchJoinMaterial`, `Join`, `Reset`), run by [`crate::jobs::JobRunner`]
//! beside the main loop. The core decides which job runs when
//! (`kubeha_core::kube`); this module only carries them out.
//!
//! - Every command goes through [`crate::command`] (argv, timeout, process
//!   group killed with the job, `PR_SET_PDEATHSIG`: kubeadm never outlives
//!   the agent).
//! - `kubeadm init` prints the bootstrap token and the certificate key on
//!   stdout: its stdout is never logged or kept.
//! - Join secrets are only in the root-only JoinConfiguration
//!   (`state_dir/kubeadm/join.yaml`, 0600, removed after the join) and in
//!   this process's memory; every error string is scrubbed of them.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use kubeha_core::config::{Config, KubernetesConfig};
use kubeha_core::kubeadm::{self, JoinSecrets, NodeFacts, Version};
use kubeha_core::node::{Job, JobId, JobOutcome};
use tracing::{info, warn};

use crate::command::{Command, Runner};
use crate::metrics::Metrics;

pub const INIT_TIMEOUT: Duration = Duration::from_secs(600);
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(600);
pub const RESET_TIMEOUT: Duration = Duration::from_secs(180);
/// Removing the files a failed `kubeadm reset` left.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(60);
pub const SHORT_TIMEOUT: Duration = Duration::from_secs(60);

/// Stem of the JoinConfiguration under `state_dir/kubeadm`.
pub const JOIN_STEM: &str = "join";
pub const INIT_STEM: &str = "init";

/// Where join material comes from: a joined control plane, over the
/// agents' TLS join channel ([`TlsJoinFetch`]; fakes in tests).
#[async_trait]
pub trait JoinMaterialFetch: Send + Sync + 'static {
    /// Token, CA hashes and (for `control_plane`) a fresh certificate key
    /// from `server` (a member name). The error names the server and why.
    async fn fetch(&self, server: &str, control_plane: bool) -> Result<JoinSecrets, String>;
}

/// The real fetch: mutual TLS to `server`'s join port, its certificate
/// pinned to the fingerprint gossip shows for it (docs/join.md).
pub struct TlsJoinFetch {
    pub node: String,
    pub identity: Arc<crate::join::Identity>,
    pub members: tokio::sync::watch::Receiver<kubeha_core::membership::MembershipView>,
    pub join_port: u16,
}

#[async_trait]
impl JoinMaterialFetch for TlsJoinFetch {
    async fn fetch(&self, server: &str, control_plane: bool) -> Result<JoinSecrets, String> {
        let target = {
            let view = self.members.borrow();
            crate::join::JoinTarget::from_view(&view, server, self.join_port)
                .map_err(|e| e.to_string())?
        };
        let tier = if control_plane {
            crate::join::Tier::ControlPlane
        } else {
            crate::join::Tier::Worker
        };
        let m = crate::join::fetch_join_material(
            &self.identity,
            &target,
            &self.node,
            tier,
            crate::join::CLIENT_TIMEOUT,
        )
        .await
        .map_err(|e| e.to_string())?;
        Ok(JoinSecrets {
            token: m.token.expose().to_string(),
            ca_cert_hashes: vec![m.ca_cert_hash.clone()],
            certificate_key: m.certificate_key.as_ref().map(|k| k.expose().to_string()),
        })
    }
}

/// Carries out a node's kubeadm jobs.
pub struct KubeWork {
    config: Config,
    runner: Arc<dyn Runner>,
    material: Arc<dyn JoinMaterialFetch>,
    metrics: Arc<Metrics>,
    /// Secret values of the last fetch, scrubbed from every error string.
    secrets: Mutex<Vec<String>>,
}

fn k8s(c: &Config) -> &KubernetesConfig {
    c.kubernetes
        .as_ref()
        .expect("KubeWork is only built for a node with [kubernetes]")
}

/// Replace every secret value in `s` with `<redacted>`.
pub fn scrub(s: &str, secrets: &[String]) -> String {
    let mut out = s.to_string();
    for v in secrets.iter().filter(|v| v.len() >= 6) {
        out = out.replace(v.as_str(), "<redacted>");
    }
    out
}

/// kubeadm's files on a node, relative to `etc_dir`, that say something
/// ran here (kubeadm reset removes them).
const KUBEADM_FILES: &[&str] = &[
    "admin.conf",
    "super-admin.conf",
    "kubelet.conf",
    "controller-manager.conf",
    "scheduler.conf",
    "bootstrap-kubelet.conf",
    "pki",
    "manifests",
];

/// Whether any kubeadm file is left under `etc_dir` (an empty `manifests`
/// or `pki` directory counts as nothing).
pub fn has_artifacts(etc_dir: &Path) -> bool {
    !artifacts(etc_dir).is_empty()
}

/// The kubeadm files and non-empty directories under `etc_dir`.
fn artifacts(etc_dir: &Path) -> Vec<PathBuf> {
    KUBEADM_FILES
        .iter()
        .map(|f| etc_dir.join(f))
        .filter(|p| match std::fs::read_dir(p) {
            Ok(mut d) => d.next().is_some(),
            Err(_) => p.exists(),
        })
        .collect()
}

impl KubeWork {
    pub fn new(
        config: Config,
        runner: Arc<dyn Runner>,
        material: Arc<dyn JoinMaterialFetch>,
        metrics: Arc<Metrics>,
    ) -> KubeWork {
        KubeWork {
            config,
            runner,
            material,
            metrics,
            secrets: Mutex::new(Vec::new()),
        }
    }

    fn k(&self) -> &KubernetesConfig {
        k8s(&self.config)
    }

    fn dir(&self) -> PathBuf {
        crate::kubeadm_config::dir(&self.config)
    }

    fn count(&self, op: &str, ok: bool) {
        self.metrics
            .kubeadm_runs
            .with_label_values(&[op, if ok { "ok" } else { "failed" }])
            .inc();
    }

    fn scrubbed(&self, s: impl std::fmt::Display) -> String {
        let secrets = self.secrets.lock().unwrap_or_else(|e| e.into_inner());
        scrub(&s.to_string(), &secrets)
    }

    async fn exec(&self, cmd: Command) -> Result<(), String> {
        self.runner
            .run(&cmd)
            .await
            .map(|_| ())
            .map_err(|e| self.scrubbed(e))
    }

    async fn version(&self) -> Result<Version, String> {
        let cmd = Command::new(&self.k().kubeadm)
            .args(["version", "-o", "short"])
            .timeout(SHORT_TIMEOUT);
        let out = self.runner.run(&cmd).await.map_err(|e| e.to_string())?;
        let text = out.stdout_str();
        Version::parse(text.trim()).ok_or_else(|| {
            format!(
                "`{}`: unreadable version {:?}",
                cmd.display_argv(),
                text.trim()
            )
        })
    }

    fn facts(&self) -> Result<NodeFacts, String> {
        let patches = crate::kubeadm_config::patches_dir(&self.config);
        NodeFacts::from_config(&self.config, &patches.display().to_string())
            .ok_or_else(|| "no [kubernetes] section".to_string())
    }

    async fn init(&self, id: JobId) -> JobOutcome {
        let etc = self.k().etc_dir.clone();
        let prepared = async {
            let v = self.version().await?;
            let render = kubeadm::render_init(v, &self.facts()?, &self.k().kubeadm_extra)
                .map_err(|e| e.to_string())?;
            crate::kubeadm_config::write(&self.dir(), INIT_STEM, &render)
                .map_err(|e| format!("writing {}: {e}", self.dir().display()))
        }
        .await;
        let path = match prepared {
            Ok(p) => p,
            Err(e) => {
                // Nothing ran: a clean failure.
                warn!(%id, error = %e, "kubeadm init not started");
                self.count("init", false);
                return JobOutcome::Init {
                    ok: false,
                    left_artifacts: has_artifacts(&etc),
                    error: Some(format!("kubeadm init not started: {e}")),
                };
            }
        };
        info!(%id, config = %path.display(), "running kubeadm init");
        // stdout holds the token and the certificate key: dropped unread.
        let cmd = Command::new(&self.k().kubeadm)
            .arg("init")
            .arg("--config")
            .arg(&path)
            .arg("--upload-certs")
            .timeout(INIT_TIMEOUT);
        match self.runner.run(&cmd).await {
            Ok(_) => {
                info!(%id, "kubeadm init succeeded");
                self.count("init", true);
                JobOutcome::Init {
                    ok: true,
                    left_artifacts: true,
                    error: None,
                }
            }
            Err(e) => {
                let left = has_artifacts(&etc);
                warn!(%id, error = %e, left_artifacts = left, "kubeadm init failed");
                self.count("init", false);
                JobOutcome::Init {
                    ok: false,
                    left_artifacts: left,
                    error: Some(kubeha_core::kube::redact_secrets(&e.to_string())),
                }
            }
        }
    }

    /// After a restart mid-init (PROTOCOL §3.3): a working control plane →
    /// ok; files but no working control plane → failed with files; nothing
    /// → clean.
    async fn check_init(&self) -> JobOutcome {
        let etc = self.k().etc_dir.clone();
        if !has_artifacts(&etc) {
            info!("init check: no kubeadm files on this node");
            self.count("check-init", true);
            return JobOutcome::Init {
                ok: false,
                left_artifacts: false,
                error: None,
            };
        }
        let admin = etc.join("admin.conf");
        let working = admin.exists() && etc.join("kubelet.conf").exists() && {
            let cmd = Command::new(&self.k().kubectl)
                .arg("--kubeconfig")
                .arg(&admin)
                .args(["get", "--raw", "/readyz"])
                .timeout(SHORT_TIMEOUT);
            match self.exec(cmd).await {
                Ok(()) => true,
                Err(e) => {
                    warn!(error = %e, "init check: the control plane does not answer");
                    false
                }
            }
        };
        info!(working, "init check: kubeadm files found");
        self.count("check-init", working);
        JobOutcome::Init {
            ok: working,
            left_artifacts: true,
            error: None,
        }
    }

    async fn apply_cni(&self) -> Result<(), String> {
        let Some(manifest) = self.k().cni_manifest.clone() else {
            return Ok(());
        };
        let cmd = Command::new(&self.k().kubectl)
            .arg("--kubeconfig")
            .arg(self.k().etc_dir.join("admin.conf"))
            .arg("apply")
            .arg("-f")
            .arg(&manifest)
            .timeout(Duration::from_secs(120));
        let r = self.exec(cmd).await;
        self.count("apply-cni", r.is_ok());
        r
    }

    async fn fetch(&self, server: &str, control_plane: bool) -> Result<(), String> {
        let r = async {
            let secrets = self.material.fetch(server, control_plane).await?;
            {
                let mut s = self.secrets.lock().unwrap_or_else(|e| e.into_inner());
                s.clear();
                s.push(secrets.token.clone());
                s.extend(secrets.certificate_key.clone());
            }
            let v = self.version().await?;
            let render = kubeadm::render_join(v, &self.facts()?, &self.k().kubeadm_extra, &secrets)
                .map_err(|e| e.to_string())?;
            crate::kubeadm_config::write(&self.dir(), JOIN_STEM, &render)
                .map(|_| ())
                .map_err(|e| format!("writing {}: {e}", self.dir().display()))
        }
        .await
        .map_err(|e| self.scrubbed(e));
        self.count("fetch-join-material", r.is_ok());
        r
    }

    fn join_config(&self) -> PathBuf {
        self.dir().join(format!("{JOIN_STEM}.yaml"))
    }

    async fn join(&self) -> Result<(), String> {
        let path = self.join_config();
        let cmd = Command::new(&self.k().kubeadm)
            .arg("join")
            .arg("--config")
            .arg(&path)
            .timeout(JOIN_TIMEOUT);
        let r = if path.exists() {
            self.exec(cmd).await
        } else {
            Err(format!("{} is missing (no join material)", path.display()))
        };
        // The token and the certificate key are of no further use here.
        let _ = std::fs::remove_file(&path);
        self.count("join", r.is_ok());
        r
    }

    async fn reset(&self) -> Result<(), String> {
        let cmd = Command::new(&self.k().kubeadm)
            .args(["reset", "-f"])
            .timeout(RESET_TIMEOUT);
        // kubeadm only warns when it cannot remove this node's etcd member:
        // that reset failed (docs/kubernetes.md, "A control-plane join that
        // fails after its etcd member was added").
        let r = match self.runner.run(&cmd).await {
            Ok(out) => {
                let text = format!(
                    "{}\n{}",
                    out.stdout_str(),
                    String::from_utf8_lossy(&out.stderr)
                );
                match kubeha_core::kube::etcd_member_left(&text) {
                    None => Ok(()),
                    Some(line) => Err(self.scrubbed(format!(
                        "`{}` left this node's etcd member in the cluster ({line}): remove it with \
                         `etcdctl member remove` on a healthy control plane",
                        cmd.display_argv()
                    ))),
                }
            }
            Err(e) => Err(self.scrubbed(e)),
        };
        // What reset may leave: kubeadm's files (when it failed half-way)
        // and our join config. CNI configuration outside etc_dir is left to
        // the CNI (docs/kubernetes.md). An empty directory is nothing of
        // kubeadm's (`has_artifacts`): kubeadm reset empties `manifests` and
        // `pki` and keeps them. The removal goes through the runner, as
        // kubeadm does: under the shipped unit etc_dir is read-only to the
        // agent itself, and the runner starts commands outside its sandbox.
        let left = artifacts(&self.k().etc_dir);
        let mut cleanup = Vec::new();
        if !left.is_empty() {
            let rm = Command::new("rm")
                .args(["-rf", "--"])
                .args(&left)
                .timeout(CLEANUP_TIMEOUT);
            if let Err(e) = self.runner.run(&rm).await {
                cleanup.push(format!("removing what reset left: {e}"));
            }
        }
        let _ = std::fs::remove_file(self.join_config());
        let r = match (r, cleanup.is_empty()) {
            (Ok(()), true) => Ok(()),
            (Ok(()), false) => Err(cleanup.join("; ")),
            (Err(e), _) => Err(e),
        };
        self.count("reset", r.is_ok());
        r
    }
}

#[async_trait]
impl crate::jobs::JobWork for KubeWork {
    async fn run(&self, id: JobId, job: Job) -> JobOutcome {
        let done = |r: Result<(), String>| JobOutcome::Done { error: r.err() };
        let outcome = match &job {
            Job::RunInit => self.init(id).await,
            Job::CheckInit => self.check_init().await,
            Job::ApplyCni => done(self.apply_cni().await),
            Job::FetchJoinMaterial {
                server,
                control_plane,
            } => done(self.fetch(server, *control_plane).await),
            Job::Join { .. } => done(self.join().await),
            Job::Reset => done(self.reset().await),
        };
        if let JobOutcome::Done { error: Some(e) } = &outcome {
            warn!(%id, job = job.kind(), error = %e, "kubeadm job failed");
        }
        outcome
    }
}

#[cfg(test)]
mod tests;
