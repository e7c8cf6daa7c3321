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
}

impl Job {
    /// A short stable name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Job::RunInit => "run-init",
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
    Init { ok: bool, left_artifacts: bool },
}

impl JobOutcome {
    /// Whether this outcome answers `job` (a mismatched pair is ignored).
    pub fn answers(&self, job: &Job) -> bool {
        matches!((self, job), (JobOutcome::Init { .. }, Job::RunInit))
    }
}
