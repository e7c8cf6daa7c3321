//! Long work the shell runs beside its main loop, described as data.
//!
//! The core asks for a job with [`super::Effect::StartJob`] and hears its
//! result as [`super::Input::JobDone`]. Instant effects (send, persist, VIP,
//! publish) stay ordered in the effect list; a job only starts in that order
//! and reports back whenever it is done, so nothing slow blocks a lease.

use std::fmt;

/// Names one job of one `Node` (unique per agent start; a `JobDone` whose
/// id the node did not start, or already heard, is ignored).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct JobId(pub u64);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "job-{}", self.0)
    }
}

/// What to run. Data only: the shell decides how (which commands, files).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Job {
    /// The bootstrap lock is ours: run `kubeadm init` on this node, then
    /// report [`JobOutcome::Init`].
    RunInit,
    /// After a restart with an init of unknown outcome: inspect the node
    /// (kubeadm files, a working control plane) and report
    /// [`JobOutcome::Init`] (docs/PROTOCOL.md §3.3).
    CheckInit,
    /// This node initialized the cluster: apply `cni_manifest` with
    /// `kubectl --kubeconfig <etc_dir>/admin.conf apply -f`.
    ApplyCni,
    /// Get join material (token, CA hash, for control planes a fresh
    /// certificate key) from `server`, a joined control plane, and write
    /// this node's root-only JoinConfiguration. Secrets stay in the shell.
    FetchJoinMaterial { server: String, control_plane: bool },
    /// Run `kubeadm join --config` with the JoinConfiguration the last
    /// `FetchJoinMaterial` wrote.
    Join { control_plane: bool },
    /// `kubeadm reset -f`, then remove what reset leaves (CNI config,
    /// etcd data, the join config).
    Reset,
}

impl Job {
    /// A short stable name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Job::RunInit => "run-init",
            Job::CheckInit => "check-init",
            Job::ApplyCni => "apply-cni",
            Job::FetchJoinMaterial { .. } => "fetch-join-material",
            Job::Join { .. } => "join",
            Job::Reset => "reset",
        }
    }
}

/// How a job ended, as the core needs to know it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobOutcome {
    /// The end of `RunInit` (the same facts as `Input::InitFinished`):
    /// `ok` = a working control plane is here, `left_artifacts` = kubeadm
    /// left files (`etc_dir`, etcd data). A job that may have started
    /// kubeadm and was then killed must report `left_artifacts: true`.
    /// `error`: why it failed, fit for status (the command's redacted argv,
    /// exit status and stderr tail; never a secret), when known.
    Init {
        ok: bool,
        left_artifacts: bool,
        error: Option<String>,
    },
    /// The end of every other job: `None` = it worked, `Some(reason)` =
    /// it failed, with a reason fit for status and logs (the command's
    /// redacted argv, exit status and stderr tail; never a secret).
    Done { error: Option<String> },
}

impl JobOutcome {
    /// Whether this outcome answers `job` (a mismatched pair is ignored).
    pub fn answers(&self, job: &Job) -> bool {
        match self {
            JobOutcome::Init { .. } => matches!(job, Job::RunInit | Job::CheckInit),
            JobOutcome::Done { .. } => !matches!(job, Job::RunInit | Job::CheckInit),
        }
    }
}
