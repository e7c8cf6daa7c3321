//! The kubeadm driver: from the facts the shell reports about this node
//! (host prepared, kubeadm files present), the membership view and the
//! bootstrap lock, decide what kubeadm work runs next (docs/kubernetes.md,
//! "Bootstrap"; the join order rule is docs/PROTOCOL.md §3.6).
//!
//! - A control plane with no kubeadm files and a prepared host wants to init
//!   (`Input::WantInit` to the lock). The lock's winner runs `RunInit`; on
//!   success this driver applies the CNI manifest once (`Job::ApplyCni`).
//! - Every other node, once an init node is known and a joined control plane
//!   is alive, fetches join material from it and joins: workers at once,
//!   control planes one at a time (the join slot, [`join_slot`]).
//! - A node with `kubelet.conf` has joined and never joins again. A failed
//!   join is reset (`kubeadm reset -f`) and retried with back-off. A control
//!   plane publishes `joining` while its reset runs (reset removes its etcd
//!   member, a membership change), so no other control plane joins until
//!   the reset has ended.
//!
//! Pure: time is an argument, jobs leave as effects.

use std::time::Duration;

use crate::config::Role;
use crate::lock::LockPhase;
use crate::membership::MembershipView;
use crate::node::{Job, JobId, Out};
use crate::time::Time;
use crate::timing::Timing;

/// `kube` gossip values (DESIGN.md §6).
pub mod kube_value {
    pub const NONE: &str = "none";
    pub const INITIALIZING: &str = "initializing";
    pub const JOINING: &str = "joining";
    pub const CONTROL_PLANE: &str = "control-plane";
    pub const WORKER: &str = "worker";
    pub const FAILED: &str = "failed";
}

/// Back-off after the first failure; doubled per failure up to
/// [`MAX_BACKOFF_FACTOR`] times this.
pub fn base_backoff(t: &Timing) -> Duration {
    t.lease * 2
}
pub const MAX_BACKOFF_FACTOR: u32 = 32;

/// What the shell observed on this node. Sent as `Input::KubeFacts`
/// whenever it changes; a node that never sends it (no `[kubernetes]`) has
/// the driver disabled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubeFacts {
    /// The node has the `control-plane` role.
    pub control_plane: bool,
    /// `hostprep::may_bootstrap`: the host is prepared and control planes
    /// agree on the kubeadm minor; the error is the reason to wait.
    pub ready: Result<(), String>,
    /// `<etc_dir>/admin.conf` exists.
    pub admin_conf: bool,
    /// `<etc_dir>/kubelet.conf` exists: this node has joined (or init'ed).
    pub kubelet_conf: bool,
    /// `cni_manifest` is configured.
    pub cni: bool,
}

impl KubeFacts {
    /// Any kubeadm file on this node.
    pub fn has_files(&self) -> bool {
        self.admin_conf || self.kubelet_conf
    }
}

/// Longest command-output part of a [`failure_summary`], in characters.
pub const SUMMARY_MAX: usize = 400;

/// What `last_error` says of a failed kubeadm (or kubectl) run, from the
/// runner's error text (`` `ARGV` failed (exit status: 1); stderr: TAIL ``):
/// the part before `; stderr:` (argv with secrets already redacted, exit
/// status), then kubeadm's own summary, its last `error execution phase …`
/// line and what follows it up to the stack-trace hint (lines joined with
/// ` `), else the last stderr line that is not that hint; trimmed to
/// [`SUMMARY_MAX`] characters. Anything shaped like a bootstrap token or a
/// certificate key is replaced by `<redacted>` ([`redact_secrets`]): the
/// agent does not know the token `kubeadm init` makes up.
pub fn failure_summary(error: &str) -> String {
    let (head, tail) = match error.split_once("; stderr: ") {
        Some((h, t)) => (Some(h.trim()), t),
        None => (None, error),
    };
    let lines: Vec<&str> = tail
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let hint = |l: &&str| l.starts_with("To see the stack trace");
    let summary = match lines
        .iter()
        .rposition(|l| l.starts_with("error execution phase"))
    {
        Some(i) => lines[i..]
            .iter()
            .take_while(|l| !hint(l))
            .copied()
            .collect::<Vec<_>>()
            .join(" "),
        None => lines
            .iter()
            .rev()
            .find(|l| !hint(l))
            .copied()
            .unwrap_or("")
            .to_string(),
    };
    let mut summary = summary;
    if summary.chars().count() > SUMMARY_MAX {
        summary = summary.chars().take(SUMMARY_MAX).collect::<String>() + "…";
    }
    let text = match (head, summary.is_empty()) {
        (Some(h), false) => format!("{h}: {summary}"),
        (Some(h), true) => format!("{h}; stderr: (empty)"),
        (None, _) => summary,
    };
    redact_secrets(&text)
}

/// `s` with every bootstrap-token-shaped word (`[a-z0-9]{6}.[a-z0-9]{16}`)
/// and every run of 32 or more hex digits (certificate keys are 64; CA
/// hashes are public but look the same) replaced by `<redacted>`.
pub fn redact_secrets(s: &str) -> String {
    let b = s.as_bytes();
    let tok = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let word = |c: u8| c.is_ascii_alphanumeric();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    let mut last = 0;
    while i < b.len() {
        let boundary = i == 0 || !word(b[i - 1]);
        if boundary {
            // A token: 6 + '.' + 16, not followed by a word character.
            let is_token = b.len() >= i + 23
                && b[i..i + 6].iter().all(|&c| tok(c))
                && b[i + 6] == b'.'
                && b[i + 7..i + 23].iter().all(|&c| tok(c))
                && b.get(i + 23).is_none_or(|&c| !word(c));
            if is_token {
                out.push_str(&s[last..i]);
                out.push_str("<redacted>");
                i += 23;
                last = i;
                continue;
            }
            let run = b[i..].iter().take_while(|c| c.is_ascii_hexdigit()).count();
            if run >= 32 && b.get(i + run).is_none_or(|&c| !word(c)) {
                out.push_str(&s[last..i]);
                out.push_str("<redacted>");
                i += run;
                last = i;
                continue;
            }
        }
        i += 1;
    }
    out.push_str(&s[last..]);
    out
}

/// The line of `kubeadm reset` output that says it could not remove this
/// node's etcd member (kubeadm's remove-etcd-member phase warns, `[reset]
/// Failed to remove etcd member: …, please manually remove this etcd member
/// using etcdctl`, then goes on and exits 0), trimmed and redacted. A reset
/// with such a line left a voting member behind that no longer runs: in a
/// two-member etcd that is quorum lost.
pub fn etcd_member_left(reset_output: &str) -> Option<String> {
    reset_output
        .lines()
        .find(|l| {
            l.to_ascii_lowercase()
                .contains("failed to remove etcd member")
        })
        .map(|l| {
            let mut l: String = l.trim().chars().take(SUMMARY_MAX).collect();
            l = redact_secrets(&l);
            l
        })
}

/// `kubernetes.phase` (DESIGN.md §6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KubePhase {
    Disabled,
    Waiting,
    Initializing,
    Joining,
    Joined,
    Failed,
}

impl KubePhase {
    pub fn as_str(self) -> &'static str {
        match self {
            KubePhase::Disabled => "disabled",
            KubePhase::Waiting => "waiting",
            KubePhase::Initializing => "initializing",
            KubePhase::Joining => "joining",
            KubePhase::Joined => "joined",
            KubePhase::Failed => "failed",
        }
    }
}

/// The driver's part of the status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubeStatus {
    pub phase: KubePhase,
    /// While waiting: what for (host preparation, the init node, the join
    /// slot).
    pub waiting_for: Option<String>,
    /// The last failure (kubeadm, kubectl, join material), cleared by a
    /// success of the same step.
    pub last_error: Option<String>,
    /// Failed join attempts since the last success.
    pub join_failures: u32,
    /// When the next attempt starts, while backing off.
    pub retry_at: Option<Time>,
    /// The CNI manifest was applied by this agent run.
    pub cni_applied: bool,
}

/// What the driver is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Idle,
    /// A job of ours runs (its id).
    Running(JobId, Work),
    /// Waiting before the next attempt.
    Backoff {
        until: Time,
        after_join_failure: bool,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Work {
    CheckInit,
    Cni,
    Fetch,
    Join,
    Reset,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cni {
    NotNeeded,
    Pending,
    Done,
}

/// What the node hands the driver at each step.
pub struct DriveCtx<'a> {
    pub me: &'a str,
    pub lock_phase: LockPhase,
    pub init_node: Option<String>,
    pub view: &'a MembershipView,
    pub timing: &'a Timing,
}

#[derive(Clone, Debug)]
pub struct KubeDriver {
    facts: Option<KubeFacts>,
    want_init_sent: bool,
    /// A join of this agent run succeeded.
    joined: bool,
    /// This run started a join attempt: from then on only its own outcome
    /// says joined (a failed join can leave `kubelet.conf` behind).
    attempted: bool,
    step: Step,
    /// The next join attempt resets first (a failed join, or files left).
    needs_reset: bool,
    join_failures: u32,
    cni_failures: u32,
    cni: Cni,
    cni_retry_at: Time,
    last_error: Option<String>,
    waiting_for: Option<String>,
}

impl Default for KubeDriver {
    fn default() -> Self {
        KubeDriver {
            facts: None,
            want_init_sent: false,
            joined: false,
            attempted: false,
            step: Step::Idle,
            needs_reset: false,
            join_failures: 0,
            cni_failures: 0,
            cni: Cni::NotNeeded,
            cni_retry_at: Time::ZERO,
            last_error: None,
            waiting_for: None,
        }
    }
}

/// Whether this control plane may join now. The slot rule (PROTOCOL §3.6):
/// no other alive control plane is `joining`, and every alive control plane
/// that sorts before this one has joined (`control-plane`), or is
/// `failed` (it resets and backs off, and sees our `joining` when it
/// retries). Dead members do not hold the slot. Err = who holds it.
pub fn join_slot(view: &MembershipView, me: &str) -> Result<(), String> {
    let cps = view
        .members
        .values()
        .filter(|m| m.name != me && m.alive() && m.roles.contains(&Role::ControlPlane));
    for m in cps {
        if m.kube == kube_value::JOINING || m.kube == kube_value::INITIALIZING {
            return Err(format!("{} is {}", m.name, m.kube));
        }
        if m.name.as_str() < me && m.kube == kube_value::NONE {
            return Err(format!("{} joins first (it sorts before {me})", m.name));
        }
    }
    Ok(())
}

/// A joined control plane to fetch join material from: the init node if
/// it is alive and joined, else the first alive joined control plane.
pub fn join_server(view: &MembershipView, me: &str, init_node: Option<&str>) -> Option<String> {
    let joined = |m: &&crate::membership::MemberInfo| {
        m.name != me
            && m.alive()
            && m.roles.contains(&Role::ControlPlane)
            && m.kube == kube_value::CONTROL_PLANE
    };
    if let Some(m) = init_node.and_then(|n| view.get(n)).filter(joined) {
        return Some(m.name.clone());
    }
    view.members.values().find(joined).map(|m| m.name.clone())
}

impl KubeDriver {
    /// The driver runs once the shell reported facts.
    pub fn active(&self) -> bool {
        self.facts.is_some()
    }

    pub fn set_facts(&mut self, f: KubeFacts) {
        self.facts = Some(f);
    }

    /// Joined in this run, or `kubelet.conf` was there before this run
    /// tried to join.
    fn joined(&self) -> bool {
        self.joined || (!self.attempted && self.facts.as_ref().is_some_and(|f| f.kubelet_conf))
    }

    fn backoff(&self, t: &Timing, failures: u32) -> Duration {
        let shift = failures
            .saturating_sub(1)
            .min(MAX_BACKOFF_FACTOR.trailing_zeros());
        base_backoff(t) * (1u32 << shift)
    }

    /// Decide the next work; returns true when the lock should get
    /// `WantInit` (the node calls it, this driver only says so once).
    pub fn drive(&mut self, now: Time, ctx: &DriveCtx, out: &mut Out) -> bool {
        let Some(facts) = self.facts.clone() else {
            return false;
        };
        self.waiting_for = None;
        if let Step::Backoff { until, .. } = self.step {
            if now < until {
                self.waiting_for = Some("the retry back-off".into());
                return false;
            }
            self.step = Step::Idle;
        }
        if matches!(self.step, Step::Running(..)) {
            return false;
        }
        match ctx.lock_phase {
            LockPhase::CheckNeeded => {
                let id = out.start_job(Job::CheckInit);
                self.step = Step::Running(id, Work::CheckInit);
                return false;
            }
            LockPhase::Initializing | LockPhase::Failed => return false,
            LockPhase::Initialized => {
                if self.cni == Cni::Pending && now >= self.cni_retry_at {
                    let id = out.start_job(Job::ApplyCni);
                    self.step = Step::Running(id, Work::Cni);
                }
                return false;
            }
            _ => {}
        }
        if self.joined() {
            return false;
        }
        if let Err(reason) = &facts.ready {
            self.waiting_for = Some(reason.clone());
            return false;
        }
        // Init: a control plane without kubeadm files wants the lock.
        if facts.control_plane && !facts.has_files() && !self.want_init_sent {
            self.want_init_sent = true;
            return true;
        }
        // Claiming (or about to): the lock decides first.
        if matches!(
            ctx.lock_phase,
            LockPhase::Waiting | LockPhase::Claiming | LockPhase::Committing | LockPhase::Verifying
        ) {
            self.waiting_for = Some("the bootstrap lock".into());
            return false;
        }
        let Some(init_node) = ctx.init_node.clone() else {
            self.waiting_for = Some("an init node".into());
            return false;
        };
        if init_node == ctx.me {
            return false;
        }
        let Some(server) = join_server(ctx.view, ctx.me, Some(&init_node)) else {
            self.waiting_for = Some(format!("a joined control plane (init node {init_node})"));
            return false;
        };
        if facts.control_plane
            && let Err(holder) = join_slot(ctx.view, ctx.me)
        {
            self.waiting_for = Some(format!("the control-plane join slot: {holder}"));
            return false;
        }
        self.attempted = true;
        if self.needs_reset || facts.has_files() {
            let id = out.start_job(Job::Reset);
            self.step = Step::Running(id, Work::Reset);
            return false;
        }
        let id = out.start_job(Job::FetchJoinMaterial {
            server,
            control_plane: facts.control_plane,
        });
        self.step = Step::Running(id, Work::Fetch);
        false
    }

    /// `RunInit` (or the init check) ended: with `ok`, the CNI manifest is
    /// due; else `error` (the runner's text, when the shell has it) goes to
    /// `last_error` as its [`failure_summary`].
    pub fn init_done(&mut self, id: Option<JobId>, ok: bool, error: Option<String>) {
        if let (Some(id), Step::Running(r, Work::CheckInit)) = (id, self.step)
            && r == id
        {
            self.step = Step::Idle;
        }
        if ok {
            self.last_error = None;
            if self.facts.as_ref().is_some_and(|f| f.cni) && self.cni != Cni::Done {
                self.cni = Cni::Pending;
            }
        } else {
            self.last_error = Some(match error {
                Some(e) => format!("kubeadm init failed: {}", failure_summary(&e)),
                None => "kubeadm init failed".into(),
            });
        }
    }

    /// A job of ours ended with `error`.
    pub fn job_done(
        &mut self,
        now: Time,
        id: JobId,
        error: Option<String>,
        t: &Timing,
        out: &mut Out,
    ) {
        let Step::Running(r, work) = self.step else {
            return;
        };
        if r != id {
            return;
        }
        self.step = Step::Idle;
        let control_plane = self.facts.as_ref().is_some_and(|f| f.control_plane);
        match (work, error) {
            (Work::CheckInit, _) => {}
            (Work::Cni, None) => {
                self.cni = Cni::Done;
                self.cni_failures = 0;
                self.last_error = None;
            }
            (Work::Cni, Some(e)) => {
                self.cni_failures += 1;
                let wait = self.backoff(t, self.cni_failures);
                self.cni_retry_at = now + wait;
                self.last_error = Some(format!(
                    "applying the CNI manifest failed (retry in {:.1} s): {e}",
                    wait.as_secs_f64()
                ));
            }
            (Work::Fetch, None) => {
                let id = out.start_job(Job::Join { control_plane });
                self.step = Step::Running(id, Work::Join);
            }
            (Work::Fetch, Some(e)) => {
                self.join_failures += 1;
                let wait = self.backoff(t, self.join_failures);
                self.last_error = Some(format!(
                    "getting join material failed (attempt {}, retry in {:.1} s): {e}",
                    self.join_failures,
                    wait.as_secs_f64()
                ));
                self.step = Step::Backoff {
                    until: now + wait,
                    after_join_failure: false,
                };
            }
            (Work::Join, None) => {
                self.joined = true;
                self.join_failures = 0;
                self.needs_reset = false;
                self.last_error = None;
            }
            (Work::Join, Some(e)) => {
                self.join_failures += 1;
                self.needs_reset = true;
                self.last_error = Some(format!(
                    "kubeadm join failed (attempt {}; resetting, then retrying): {}",
                    self.join_failures,
                    failure_summary(&e)
                ));
                let id = out.start_job(Job::Reset);
                self.step = Step::Running(id, Work::Reset);
            }
            (Work::Reset, result) => {
                let after_join_failure = self.needs_reset && self.join_failures > 0;
                if let Some(e) = result {
                    // Reset again before the next attempt.
                    self.needs_reset = true;
                    let prev = self.last_error.take().unwrap_or_default();
                    self.last_error = Some(format!(
                        "{prev}; kubeadm reset failed too: {}",
                        failure_summary(&e)
                    ));
                } else {
                    self.needs_reset = false;
                }
                let wait = self.backoff(t, self.join_failures.max(1));
                self.step = Step::Backoff {
                    until: now + wait,
                    after_join_failure,
                };
            }
        }
    }

    pub fn next_wakeup(&self) -> Option<Time> {
        match self.step {
            Step::Backoff { until, .. } => Some(until),
            // A retry after a failed apply (the first try runs in the step
            // that saw the init succeed).
            Step::Idle if self.cni == Cni::Pending && self.cni_failures > 0 => {
                Some(self.cni_retry_at)
            }
            _ => None,
        }
    }

    /// The `kube` value this node publishes, given the lock's phase.
    pub fn kube(&self, lock: LockPhase) -> &'static str {
        let cp = self.facts.as_ref().is_some_and(|f| f.control_plane);
        match lock {
            LockPhase::Initializing | LockPhase::CheckNeeded => return kube_value::INITIALIZING,
            LockPhase::Initialized => return kube_value::CONTROL_PLANE,
            LockPhase::Failed => return kube_value::FAILED,
            _ => {}
        }
        if self.joined() {
            return if cp {
                kube_value::CONTROL_PLANE
            } else {
                kube_value::WORKER
            };
        }
        match self.step {
            Step::Running(_, Work::Fetch | Work::Join) => kube_value::JOINING,
            // A control plane's reset removes its etcd member: a membership
            // change like a join, so it holds the join slot (PROTOCOL §3.6)
            // until it ends; no other control plane adds a learner meanwhile.
            // A failed join goes from `joining` straight on to this, with
            // no gap in which the slot looks free.
            Step::Running(_, Work::Reset) if cp => kube_value::JOINING,
            Step::Running(_, Work::Reset) if self.join_failures > 0 => kube_value::FAILED,
            Step::Backoff {
                after_join_failure: true,
                ..
            } => kube_value::FAILED,
            _ => kube_value::NONE,
        }
    }

    pub fn status(&self, lock: LockPhase) -> KubeStatus {
        let phase = if self.facts.is_none() {
            KubePhase::Disabled
        } else {
            match self.kube(lock) {
                kube_value::INITIALIZING => KubePhase::Initializing,
                kube_value::CONTROL_PLANE | kube_value::WORKER => KubePhase::Joined,
                kube_value::JOINING => KubePhase::Joining,
                kube_value::FAILED => KubePhase::Failed,
                _ => KubePhase::Waiting,
            }
        };
        let last_error = if lock == LockPhase::Failed {
            Some(
                "kubeadm init failed and left files on this node: run `kubeadm reset -f`, \
                 then restart kubeha-agent"
                    .to_string(),
            )
        } else {
            self.last_error.clone()
        };
        KubeStatus {
            phase,
            waiting_for: self.waiting_for.clone(),
            last_error,
            join_failures: self.join_failures,
            retry_at: match self.step {
                Step::Backoff { until, .. } => Some(until),
                _ => None,
            },
            cni_applied: self.cni == Cni::Done,
        }
    }
}

#[cfg(test)]
mod tests;
