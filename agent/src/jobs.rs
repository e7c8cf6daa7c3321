//! Long work beside the main loop: the core's [`Effect::StartJob`]s run here
//! as tokio tasks, at most [`MAX_CONCURRENT`] at a time, and their outcomes
//! come back on a channel the main loop selects on (then fed to the core as
//! `Input::JobDone`). The loop never awaits a job; a stopping agent cancels
//! all of them (a job's commands die with it: see [`crate::command`]).
//!
//! [`Effect::StartJob`]: kubeha_core::node::Effect::StartJob

use std::sync::Arc;

use async_trait::async_trait;
use kubeha_core::node::{Job, JobId, JobOutcome};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::metrics::Metrics;

/// Jobs running at once; more wait for a slot (kubeadm and etcd calls on
/// one node should not run in parallel beyond this).
pub const MAX_CONCURRENT: usize = 2;

/// A finished job, for the main loop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobReport {
    pub id: JobId,
    pub job: Job,
    pub outcome: JobOutcome,
}

/// How a job is carried out. The real one is [`NodeWork`]; tests use fakes.
#[async_trait]
pub trait JobWork: Send + Sync + 'static {
    async fn run(&self, id: JobId, job: Job) -> JobOutcome;
}

/// Where effects hand jobs to (the runner; a recorder in tests).
pub trait JobSink: Send {
    fn start(&mut self, id: JobId, job: Job);
    /// Cancel every job (the agent stops): no report comes for them.
    fn cancel_all(&mut self);
}

pub struct JobRunner {
    work: Arc<dyn JobWork>,
    slots: Arc<Semaphore>,
    tasks: JoinSet<()>,
    done: mpsc::UnboundedSender<JobReport>,
}

impl JobRunner {
    /// A runner and the receiver of its reports.
    pub fn new(
        work: Arc<dyn JobWork>,
        concurrency: usize,
    ) -> (JobRunner, mpsc::UnboundedReceiver<JobReport>) {
        let (done, rx) = mpsc::unbounded_channel();
        (
            JobRunner {
                work,
                slots: Arc::new(Semaphore::new(concurrency.max(1))),
                tasks: JoinSet::new(),
                done,
            },
            rx,
        )
    }

    /// Jobs started and not finished (or cancelled) yet.
    pub fn running(&mut self) -> usize {
        // Reap finished tasks so the count is current.
        while self.tasks.try_join_next().is_some() {}
        self.tasks.len()
    }

    /// Cancel every job: their futures are dropped (their commands killed);
    /// no report comes for them.
    pub async fn stop(&mut self) {
        let n = self.running();
        if n > 0 {
            info!(jobs = n, "cancelling running jobs");
        }
        self.tasks.shutdown().await;
    }
}

impl JobSink for JobRunner {
    fn start(&mut self, id: JobId, job: Job) {
        let work = self.work.clone();
        let slots = self.slots.clone();
        let done = self.done.clone();
        info!(%id, job = job.kind(), "job queued");
        self.tasks.spawn(async move {
            let Ok(_slot) = slots.acquire_owned().await else {
                return;
            };
            let outcome = work.run(id, job.clone()).await;
            info!(%id, job = job.kind(), ?outcome, "job finished");
            if done.send(JobReport { id, job, outcome }).is_err() {
                warn!(%id, "job finished after the main loop stopped");
            }
        });
    }

    fn cancel_all(&mut self) {
        self.tasks.abort_all();
    }
}

/// The jobs of a node without `[kubernetes]` (nodes with it use
/// [`crate::kube_jobs::KubeWork`]): no kubeadm here.
pub struct NodeWork {
    pub metrics: Arc<Metrics>,
}

#[async_trait]
impl JobWork for NodeWork {
    async fn run(&self, id: JobId, job: Job) -> JobOutcome {
        match job {
            Job::RunInit => {
                // Nothing was run, so nothing was left behind: a clean
                // failure, and the lock is free to be tried again.
                warn!(
                    %id,
                    job = job.kind(),
                    "no `[kubernetes]` section: kubeadm is not driven here; reporting a clean init failure"
                );
                self.metrics
                    .kubeadm_runs
                    .with_label_values(&["init", "not_driven"])
                    .inc();
                JobOutcome::Init {
                    ok: false,
                    left_artifacts: false,
                    error: None,
                }
            }
            Job::CheckInit => JobOutcome::Init {
                ok: false,
                left_artifacts: false,
                error: None,
            },
            other => JobOutcome::Done {
                error: Some(format!(
                    "{}: this node has no `[kubernetes]` section",
                    other.kind()
                )),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use tokio::sync::Notify;

    use super::*;

    const LIMIT: Duration = Duration::from_secs(10);

    /// Runs until released; counts how many run at once.
    #[derive(Default)]
    struct Gate {
        running: AtomicUsize,
        peak: AtomicUsize,
        started: Notify,
        release: Notify,
        dropped: AtomicUsize,
    }

    struct DropCount(Arc<Gate>);
    impl Drop for DropCount {
        fn drop(&mut self) {
            self.0.dropped.fetch_add(1, Ordering::SeqCst);
            self.0.running.fetch_sub(1, Ordering::SeqCst);
        }
    }

    struct GateWork(Arc<Gate>);

    #[async_trait]
    impl JobWork for GateWork {
        async fn run(&self, id: JobId, _job: Job) -> JobOutcome {
            let g = self.0.clone();
            let now = g.running.fetch_add(1, Ordering::SeqCst) + 1;
            g.peak.fetch_max(now, Ordering::SeqCst);
            let _guard = DropCount(g.clone());
            g.started.notify_one();
            g.release.notified().await;
            JobOutcome::Init {
                ok: id.0.is_multiple_of(2),
                left_artifacts: true,
                error: None,
            }
        }
    }

    async fn wait_until(cond: impl Fn() -> bool) {
        let start = std::time::Instant::now();
        while !cond() {
            assert!(start.elapsed() < LIMIT, "condition not reached");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    #[tokio::test]
    async fn outcomes_come_back_on_the_channel() {
        let gate = Arc::new(Gate::default());
        let (mut r, mut rx) = JobRunner::new(Arc::new(GateWork(gate.clone())), 2);
        r.start(JobId(4), Job::RunInit);
        tokio::time::timeout(LIMIT, gate.started.notified())
            .await
            .unwrap();
        assert_eq!(r.running(), 1);
        gate.release.notify_one();
        let rep = tokio::time::timeout(LIMIT, rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            rep,
            JobReport {
                id: JobId(4),
                job: Job::RunInit,
                outcome: JobOutcome::Init {
                    ok: true,
                    left_artifacts: true,
                    error: None
                }
            }
        );
    }

    #[tokio::test]
    async fn concurrency_is_bounded() {
        let gate = Arc::new(Gate::default());
        let (mut r, mut rx) = JobRunner::new(Arc::new(GateWork(gate.clone())), 2);
        for i in 1..=5 {
            r.start(JobId(i), Job::RunInit);
        }
        let mut got = Vec::new();
        while got.len() < 5 {
            // As many as may run are running, then one is let go.
            let expect = (5 - got.len()).min(2);
            wait_until(|| gate.running.load(Ordering::SeqCst) == expect).await;
            gate.release.notify_one();
            got.push(
                tokio::time::timeout(LIMIT, rx.recv())
                    .await
                    .unwrap()
                    .unwrap()
                    .id,
            );
        }
        got.sort();
        assert_eq!(got, (1..=5).map(JobId).collect::<Vec<_>>());
        assert_eq!(gate.peak.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn stop_cancels_running_and_queued_jobs() {
        let gate = Arc::new(Gate::default());
        let (mut r, mut rx) = JobRunner::new(Arc::new(GateWork(gate.clone())), 1);
        r.start(JobId(1), Job::RunInit);
        r.start(JobId(2), Job::RunInit);
        tokio::time::timeout(LIMIT, gate.started.notified())
            .await
            .unwrap();
        r.stop().await;
        assert_eq!(r.running(), 0);
        assert_eq!(gate.dropped.load(Ordering::SeqCst), 1, "the running one");
        assert_eq!(gate.running.load(Ordering::SeqCst), 0);
        drop(r);
        assert!(rx.recv().await.is_none(), "no report from a cancelled job");
    }

    #[tokio::test]
    async fn run_init_without_kubernetes_is_a_clean_failure() {
        let m = Metrics::new("n", "0");
        let out = NodeWork { metrics: m.clone() }
            .run(JobId(1), Job::RunInit)
            .await;
        assert_eq!(
            out,
            JobOutcome::Init {
                ok: false,
                left_artifacts: false,
                error: None
            }
        );
        assert_eq!(
            m.kubeadm_runs
                .with_label_values(&["init", "not_driven"])
                .get(),
            1
        );
    }
}
