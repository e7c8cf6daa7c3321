//! The local HAProxy, driven from its own thread.
//!
//! [`HaproxyManager`] calls block (a `haproxy -c`, a reload through the
//! master socket: up to seconds), and the main loop must never stall a lease
//! renewal behind them. So one thread owns the manager: it takes the wanted
//! backend set, applies it, polls HAProxy's own view of its servers and
//! hands back a report. Health is reported *before* a dead HAProxy is
//! restarted, so the VIP leaves a node whose HAProxy died even if the
//! restart succeeds a moment later.

use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

use kubeha_core::api::HaproxyStatus;
use kubeha_core::haproxy::Backend;
use tokio::sync::mpsc as tokio_mpsc;
use tracing::{info, warn};

use crate::haproxy::{ApplyOutcome, HaproxyManager, HaproxyOptions};
use crate::metrics::Metrics;

/// How often HAProxy's server states are read (and a dead master noticed).
pub const POLL_EVERY: Duration = Duration::from_millis(200);

#[derive(Clone, Debug, PartialEq)]
pub struct LbReport {
    pub status: HaproxyStatus,
    /// Running with at least one server UP: may hold the VIP.
    pub healthy: bool,
}

pub struct LbWorker {
    backends: mpsc::Sender<Vec<Backend>>,
    /// Every change, in order: a channel that kept only the latest value
    /// could hide a dead HAProxy that was restarted a moment later, and the
    /// VIP would stay on a node whose load balancer just failed.
    pub reports: tokio_mpsc::UnboundedReceiver<LbReport>,
}

impl LbWorker {
    /// Start the worker thread. The manager is created on it; an error there
    /// shows up as an unhealthy report naming it.
    pub fn spawn(opts: HaproxyOptions, metrics: Arc<Metrics>) -> LbWorker {
        let (btx, brx) = mpsc::channel::<Vec<Backend>>();
        let (rtx, rrx) = tokio_mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name("haproxy".into())
            .spawn(move || worker(opts, metrics, brx, rtx))
            .expect("spawning the haproxy thread");
        LbWorker {
            backends: btx,
            reports: rrx,
        }
    }

    /// The backend set HAProxy should have (applied at once by the thread).
    pub fn want(&self, backends: Vec<Backend>) {
        let _ = self.backends.send(backends);
    }
}

/// Sends a report when it differs from the last one sent.
struct Reporter {
    tx: tokio_mpsc::UnboundedSender<LbReport>,
    last: Option<LbReport>,
}

impl Reporter {
    fn send(&mut self, r: LbReport) {
        if self.last.as_ref() != Some(&r) {
            self.last = Some(r.clone());
            let _ = self.tx.send(r);
        }
    }
}

fn worker(
    opts: HaproxyOptions,
    metrics: Arc<Metrics>,
    wanted: mpsc::Receiver<Vec<Backend>>,
    reports: tokio_mpsc::UnboundedSender<LbReport>,
) {
    let mut reports = Reporter {
        tx: reports,
        last: None,
    };
    let mut mgr = loop {
        match HaproxyManager::start(opts.clone()) {
            Ok(m) => break m,
            Err(e) => {
                warn!(error = %e, "cannot prepare HAProxy; retrying");
                reports.send(LbReport {
                    status: HaproxyStatus {
                        running: false,
                        config_ok: false,
                        last_error: Some(e.to_string()),
                        backends: vec![],
                    },
                    healthy: false,
                });
                std::thread::sleep(Duration::from_secs(2));
            }
        }
    };
    for w in mgr.warnings() {
        warn!(warning = %w, "haproxy");
    }
    let mut desired: Option<Vec<Backend>> = None;
    loop {
        match wanted.recv_timeout(POLL_EVERY) {
            Ok(b) => desired = Some(b),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        // Take the newest wish only.
        while let Ok(b) = wanted.try_recv() {
            desired = Some(b);
        }
        // Report what runs now first: a dead HAProxy makes the node
        // unhealthy before it is restarted below.
        let status = mgr.poll();
        reports.send(LbReport {
            healthy: mgr.healthy(),
            status,
        });
        let Some(backends) = &desired else { continue };
        let before = mgr.stats();
        let outcome = mgr.apply(backends);
        // A render already refused (or a start that failed moments ago) is
        // answered from memory: count and log only what HAProxy really did.
        if mgr.stats() == before && !matches!(outcome, ApplyOutcome::Failed(_)) {
            continue;
        }
        let label = match &outcome {
            ApplyOutcome::Unchanged => continue,
            ApplyOutcome::Started => "started",
            ApplyOutcome::Reloaded => "ok",
            ApplyOutcome::CheckFailed(_) => "check_failed",
            ApplyOutcome::StartFailed(_) => "start_failed",
            ApplyOutcome::ReloadFailed(_) => "reload_failed",
            ApplyOutcome::Failed(_) => "failed",
        };
        metrics.haproxy_reloads.with_label_values(&[label]).inc();
        let names: Vec<&str> = backends.iter().map(|b| b.name.as_str()).collect();
        match outcome.error() {
            None => info!(outcome = label, backends = ?names, "haproxy configuration applied"),
            Some(e) => {
                warn!(outcome = label, backends = ?names, error = %e, "haproxy configuration not applied; the last good one keeps running")
            }
        }
        let status = mgr.poll();
        reports.send(LbReport {
            healthy: mgr.healthy(),
            status,
        });
    }
}
