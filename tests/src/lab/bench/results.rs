//! What a benchmark run yields: trials, loss levels, their statistics and
//! the per-system summary (with the ratio to keepalived).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::{Env, Fault, System};

/// One trial.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Trial {
    pub system: String,
    pub fault: String,
    pub trial: usize,
    /// The holder the fault hit.
    pub old: String,
    /// The node that answered the client first after the fault.
    pub new: Option<String>,
    pub phase_ms: f64,
    /// How long injecting the fault took (included in the figures).
    pub inject_ms: f64,
    /// Fault -> end of the first successful probe answered by another node.
    pub failover_ms: Option<f64>,
    /// Longest stretch without a successful probe, from the fault to the
    /// end of the observation (for a handover: the time without a VIP).
    pub outage_ms: f64,
    /// Failed probes between the fault and the first answer from another node.
    pub failed_probes: usize,
    /// Time with two or more nodes carrying the VIP (sampler).
    pub multi_ms: f64,
    /// The same, not counting a node whose process was killed.
    pub multi_live_ms: f64,
    /// Time with two or more holders according to netlink notifications
    /// (sub-millisecond; catches overlaps between samples).
    pub overlap_ms: f64,
    /// The same, not counting a node whose process was killed.
    pub overlap_live_ms: f64,
    /// Adds and removals of the VIP on any node during the trial (address
    /// notifications that changed the holder set; a renewal of the kernel
    /// lifetime is not one).
    pub vip_events: usize,
    pub max_holders: usize,
    /// A killed holder still carried the VIP at the end of the observation.
    pub stale_vip_on_old: bool,
    /// Probes answered by the old holder after another node answered.
    pub old_answers_after_switch: usize,
    /// Failed probes after the first answer from another node.
    pub errors_after_switch: usize,
    /// Partition: the cut lasted this long.
    pub cut_ms: Option<f64>,
    /// Partition: heal -> start of the final unbroken run of answers from
    /// the single holder.
    pub reconverge_ms: Option<f64>,
    pub final_holder: Option<String>,
    /// Partition: longest stretch without an answer after the heal.
    pub max_gap_after_heal_ms: Option<f64>,
    /// Partition: last time after the heal the client's ARP entry for the
    /// VIP named a node that did not hold it (0 if never).
    pub arp_wrong_ms: Option<f64>,
    /// Partition: at the end the client's ARP entry names the holder.
    pub arp_ok_at_end: Option<bool>,
    pub error: Option<String>,
    /// Waiting for a stable holder before the fault.
    pub settle_ms: f64,
    /// Putting things back after the trial.
    pub restore_ms: f64,
}

/// One loss level held on every lb node for a while (`loss`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct LossRun {
    pub system: String,
    pub loss_pct: u8,
    /// How long the loss was held.
    pub secs: f64,
    /// The holder when the loss started.
    pub start_holder: String,
    pub end_holders: Vec<String>,
    /// Changes of the (non-empty) set of VIP holders, sampler view.
    pub holder_changes: usize,
    /// Total time with no node carrying the VIP (sampler).
    pub no_holder_ms: f64,
    /// Total time with two or more holders: the longer of the sampler's
    /// and the address notifications' view.
    pub two_holders_ms: f64,
    /// Adds and removals of the VIP on any node (as for [`Trial`]).
    pub vip_events: usize,
    pub probes: usize,
    /// Client probes through the VIP that failed (timeout or refused).
    pub probe_failures: usize,
    /// Longest stretch without a successful probe.
    pub max_outage_ms: f64,
    /// Packets the loss rules dropped, all nodes together.
    pub dropped_packets: u64,
    pub error: Option<String>,
}

/// Changes of the non-empty holder set along `masks` (empty sets are
/// skipped: A, none, A is no change; A, none, B is one; A, A+B, B is two).
pub fn holder_changes(masks: impl IntoIterator<Item = u64>) -> usize {
    let mut last = None;
    let mut n = 0;
    for m in masks.into_iter().filter(|m| *m != 0) {
        if last.is_some_and(|l| l != m) {
            n += 1;
        }
        last = Some(m);
    }
    n
}

#[derive(Clone, Debug, Serialize)]
pub struct Results {
    pub env: Env,
    pub systems: Vec<String>,
    pub faults: Vec<String>,
    /// Systems that did not run, with why.
    pub skipped: BTreeMap<String, String>,
    pub trials: Vec<Trial>,
    pub summary: Vec<Summary>,
    /// `loss`: one entry per system and loss level.
    pub loss: Vec<LossRun>,
    pub wall_secs: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Stats {
    pub n: usize,
    pub min: f64,
    pub median: f64,
    pub p95: f64,
    pub max: f64,
}

/// Nearest-rank percentiles.
pub fn stats(xs: &[f64]) -> Option<Stats> {
    if xs.is_empty() {
        return None;
    }
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = |p: f64| {
        let r = (p * v.len() as f64).ceil() as usize;
        v[r.clamp(1, v.len()) - 1]
    };
    let median = if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    };
    Some(Stats {
        n: v.len(),
        min: v[0],
        median,
        p95: rank(0.95),
        max: v[v.len() - 1],
    })
}

#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub system: String,
    pub fault: String,
    pub n: usize,
    pub no_failover: usize,
    pub errors: usize,
    pub failover_ms: Option<Stats>,
    pub outage_ms: Option<Stats>,
    pub multi_ms: Option<Stats>,
    pub multi_live_ms: Option<Stats>,
    pub trials_with_two_live_holders: usize,
    pub stale_vip_on_old: usize,
    pub reconverge_ms: Option<Stats>,
    pub arp_wrong_at_end: usize,
    pub slow_reconverge: usize,
    /// Median failover of this kubeha profile / its keepalived baseline.
    pub ratio_to_keepalived: Option<f64>,
}

pub(super) fn summarize(trials: &[Trial], systems: &[System], faults: &[Fault]) -> Vec<Summary> {
    let mut out = Vec::new();
    for f in faults {
        for s in systems {
            let ts: Vec<&Trial> = trials
                .iter()
                .filter(|t| t.system == s.as_str() && t.fault == f.as_str())
                .collect();
            if ts.is_empty() {
                continue;
            }
            let col = |g: &dyn Fn(&Trial) -> Option<f64>| -> Vec<f64> {
                ts.iter()
                    .filter(|t| t.error.is_none())
                    .filter_map(|t| g(t))
                    .collect()
            };
            out.push(Summary {
                system: s.as_str().into(),
                fault: f.as_str().into(),
                n: ts.len(),
                no_failover: ts
                    .iter()
                    .filter(|t| t.error.is_none() && t.failover_ms.is_none())
                    .count(),
                errors: ts.iter().filter(|t| t.error.is_some()).count(),
                failover_ms: stats(&col(&|t| t.failover_ms)),
                outage_ms: stats(&col(&|t| Some(t.outage_ms))),
                multi_ms: stats(&col(&|t| Some(t.multi_ms.max(t.overlap_ms)))),
                multi_live_ms: stats(&col(&|t| Some(t.two_live()))),
                trials_with_two_live_holders: ts.iter().filter(|t| t.two_live() > 0.0).count(),
                stale_vip_on_old: ts.iter().filter(|t| t.stale_vip_on_old).count(),
                reconverge_ms: stats(&col(&|t| t.reconverge_ms)),
                arp_wrong_at_end: ts.iter().filter(|t| t.arp_ok_at_end == Some(false)).count(),
                slow_reconverge: ts
                    .iter()
                    .filter(|t| {
                        t.fault == "partition" && t.reconverge_ms.is_none_or(|r| r > 1000.0)
                    })
                    .count(),
                ratio_to_keepalived: None,
            });
        }
    }
    let medians: BTreeMap<(String, String), f64> = out
        .iter()
        .filter_map(|s| {
            let m = if s.fault == "partition" {
                s.reconverge_ms.as_ref()?.median
            } else {
                s.failover_ms.as_ref()?.median
            };
            Some(((s.system.clone(), s.fault.clone()), m))
        })
        .collect();
    for s in &mut out {
        let sys: System = s.system.parse().expect("summary of a known system");
        if !sys.is_kubeha() {
            continue;
        }
        let mine = medians.get(&(s.system.clone(), s.fault.clone()));
        let base = medians.get(&(sys.baseline().as_str().to_string(), s.fault.clone()));
        if let (Some(a), Some(b)) = (mine, base)
            && *b > 0.0
        {
            s.ratio_to_keepalived = Some(a / b);
        }
    }
    out
}

impl Trial {
    /// Time with two live holders: the larger of what the samples and the
    /// notifications show.
    pub fn two_live(&self) -> f64 {
        self.multi_live_ms.max(self.overlap_live_ms)
    }

    pub(super) fn line(&self) -> String {
        let f = |x: Option<f64>| x.map(|v| format!("{v:.0}")).unwrap_or_else(|| "-".into());
        let mut s = format!(
            "{} {} #{:02}: {} -> {} in {} ms (outage {:.0} ms, {} failed probes), two holders {:.0} ms (live {:.1}, {} VIP adds/removals)",
            self.system,
            self.fault,
            self.trial,
            self.old,
            self.new.as_deref().unwrap_or("nobody"),
            f(self.failover_ms),
            self.outage_ms,
            self.failed_probes,
            self.multi_ms.max(self.overlap_ms),
            self.two_live(),
            self.vip_events
        );
        if self.fault == "partition" {
            let _ = write!(
                s,
                "; after heal: steady on {} after {} ms, ARP ok {:?}",
                self.final_holder.as_deref().unwrap_or("?"),
                f(self.reconverge_ms),
                self.arp_ok_at_end
            );
        }
        if self.stale_vip_on_old {
            s.push_str("; killed node kept the VIP");
        }
        let _ = write!(
            s,
            " [settle {:.1} s, restore {:.1} s]",
            self.settle_ms / 1000.0,
            self.restore_ms / 1000.0
        );
        if let Some(e) = &self.error {
            let _ = write!(s, "; ERROR {e}");
        }
        s
    }
}

impl LossRun {
    pub(super) fn line(&self) -> String {
        let mut s = format!(
            "{} loss {}% for {:.0} s: {} holder changes ({} -> {}), no holder {:.0} ms, two holders {:.0} ms, {}/{} probes failed (longest outage {:.0} ms), {} VIP adds/removals, {} packets dropped",
            self.system,
            self.loss_pct,
            self.secs,
            self.holder_changes,
            self.start_holder,
            self.end_holders.join("+"),
            self.no_holder_ms,
            self.two_holders_ms,
            self.probe_failures,
            self.probes,
            self.max_outage_ms,
            self.vip_events,
            self.dropped_packets
        );
        if let Some(e) = &self.error {
            let _ = write!(s, "; ERROR {e}");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let xs: Vec<f64> = (1..=20).map(f64::from).collect();
        let s = stats(&xs).unwrap();
        assert_eq!(s.median, 10.5);
        assert_eq!(s.p95, 19.0);
        assert_eq!(s.max, 20.0);
        assert_eq!(stats(&[3.0]).unwrap().p95, 3.0);
        assert!(stats(&[]).is_none());
    }

    #[test]
    fn ratio_uses_the_same_profile() {
        let mk = |sys: &str, fo: f64| Trial {
            system: sys.into(),
            fault: "kill".into(),
            failover_ms: Some(fo),
            ..Default::default()
        };
        let trials = vec![
            mk("kubeha-default", 600.0),
            mk("keepalived-default", 3000.0),
            mk("kubeha-fast", 200.0),
            mk("keepalived-fast", 300.0),
        ];
        let s = summarize(&trials, &System::ALL, &[Fault::Kill]);
        let get = |n: &str| s.iter().find(|x| x.system == n).unwrap();
        assert!((get("kubeha-default").ratio_to_keepalived.unwrap() - 0.2).abs() < 1e-9);
        assert!((get("kubeha-fast").ratio_to_keepalived.unwrap() - 0.666).abs() < 1e-3);
        assert!(get("keepalived-fast").ratio_to_keepalived.is_none());
    }

    #[test]
    fn holder_changes_skip_empty_sets() {
        assert_eq!(holder_changes([]), 0);
        assert_eq!(holder_changes([0b001, 0b001, 0, 0b001]), 0);
        assert_eq!(holder_changes([0b001, 0, 0, 0b010]), 1);
        assert_eq!(holder_changes([0b001, 0b011, 0b010]), 2);
        assert_eq!(holder_changes([0, 0b100, 0b001, 0b100]), 2);
    }
}
