//! `kubeadm init` as the simulated shell runs it, and the operator who resets
//! a node that an init left half done.

use super::*;

impl World {
    pub(super) fn run_init(&mut self, i: usize) {
        let name = self.nodes[i].spec.name.clone();
        for (k, r) in self.inits.iter().enumerate() {
            if matches!(
                r.outcome,
                RunOutcome::Running | RunOutcome::Success | RunOutcome::Dirty
            ) {
                let msg = format!(
                    "S2: kubeadm init on {name} at {:.3} ms while init #{k} on {} is {:?}",
                    self.now as f64 / 1000.0,
                    self.nodes[r.node].spec.name,
                    r.outcome
                );
                self.violations.push(msg);
                break;
            }
        }
        self.note(|| format!("{name} RUNS KUBEADM INIT"));
        self.inits.push(InitRun {
            node: i,
            start: self.now,
            outcome: RunOutcome::Running,
        });
        let run = self.inits.len() - 1;
        self.nodes[i].running_init = Some(run);
        self.set_kube(i, Kube::Initializing);
        let dur = self.rng.range(50 * MS, 600 * MS);
        self.maybe_destroy(i, dur);
        let epoch = self.nodes[i].epoch;
        self.push(
            self.now + dur,
            Ev::InitDone {
                node: i,
                epoch,
                run,
            },
        );
    }

    pub(super) fn init_done(&mut self, i: usize, epoch: u64, run: usize) {
        if self.nodes[i].epoch != epoch || self.nodes[i].running_init != Some(run) {
            return;
        }
        self.nodes[i].running_init = None;
        let (outcome, kube, ok, left) = match self.rng.below(100) {
            0..=87 => (RunOutcome::Success, Kube::ControlPlane, true, true),
            88..=94 => (RunOutcome::Clean, Kube::None, false, false),
            _ => (RunOutcome::Dirty, Kube::Failed, false, true),
        };
        self.inits[run].outcome = outcome;
        self.set_kube(i, kube);
        self.push(
            self.now,
            Ev::Input {
                node: i,
                epoch,
                input: Input::InitFinished {
                    ok,
                    left_artifacts: left,
                },
            },
        );
    }

    /// The operator's documented action for phase `failed`: `kubeadm reset
    /// -f` on the node, then restart the agent.
    pub(super) fn operator(&mut self) {
        let delay = 4 * self.timing.lease.as_micros() as u64;
        for i in 0..self.nodes.len() {
            let n = &self.nodes[i];
            if n.kube == Kube::Failed && n.failed_since.is_some_and(|s| self.now >= s + delay) {
                for r in self.inits.iter_mut() {
                    if r.node == i && r.outcome == RunOutcome::Dirty {
                        r.outcome = RunOutcome::Reset;
                    }
                }
                self.set_kube(i, Kube::None);
                if self.nodes[i].up {
                    self.push(self.now, Ev::CleanStop { node: i });
                    self.push(
                        self.now + 50 * MS,
                        Ev::Restart {
                            node: i,
                            wipe: false,
                        },
                    );
                }
            }
        }
        self.release_operator();
        self.push(self.now + 200 * MS, Ev::Operator);
    }
}
