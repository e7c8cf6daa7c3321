//! The operator's `kubeha-ctl bootstrap release` (docs/PROTOCOL.md §3.7),
//! in some runs: the first node to run `kubeadm init` is destroyed while
//! the init runs (its droplet and whatever it held are gone for good: it
//! never restarts), and an operator, a while after, releases its bootstrap
//! lock from a live control plane, through the core's own checks
//! ([`Node::check_release`]). S2 then still demands one init at a time
//! among the nodes that exist, and the bootstrap must complete within the
//! usual bound of the later of the heal and the release.

use super::*;

/// What the release scenario has done so far.
#[derive(Clone, Debug)]
pub(super) enum Stage {
    /// Waiting for the first `kubeadm init`.
    Armed,
    /// That node is to be destroyed before its init ends.
    Doomed,
    /// That node is gone (at this time).
    Destroyed { node: usize, at: Us },
    /// The release was handed to a core at `at` (again after `retry`).
    Released { node: usize, at: Us },
}

#[derive(Clone, Debug)]
pub(super) struct ReleasePlan {
    pub(super) rng: Rng,
    pub(super) stage: Stage,
    /// The simulated operator releases by itself (random runs); scripted
    /// tests release with `Action::Release`.
    pub(super) auto: bool,
}

impl ReleasePlan {
    pub(super) fn destroyed(&self) -> Option<usize> {
        match self.stage {
            Stage::Armed | Stage::Doomed => None,
            Stage::Destroyed { node, .. } | Stage::Released { node, .. } => Some(node),
        }
    }
}

impl World {
    /// Called when node `i` starts `kubeadm init` lasting `dur`: the first
    /// one in a release run is destroyed before it ends.
    pub(super) fn maybe_destroy(&mut self, i: usize, dur: Us) {
        let Some(plan) = self.release.as_mut() else {
            return;
        };
        if !matches!(plan.stage, Stage::Armed) {
            return;
        }
        // A destroyed voter is a voter without its state for good: the
        // amnesia rule's assumption (at most one at a time) then needs
        // every other voter up with its state.
        let others_ready = self.nodes.iter().enumerate().all(|(j, n)| {
            j == i
                || !n.spec.voter
                || n.core.as_ref().is_some_and(|c| {
                    !c.status(n.clock.local(self.now))
                        .lock_voter
                        .is_some_and(|v| v == VoterPhase::Recovering)
                })
        });
        if !others_ready {
            return;
        }
        let Some(plan) = self.release.as_mut() else {
            return;
        };
        let at = self.now + plan.rng.range(0, dur);
        plan.stage = Stage::Doomed;
        self.push(at, Ev::Destroy { node: i });
    }

    pub(super) fn destroy(&mut self, i: usize) {
        if self.release.is_none() {
            // Scripted (`Action::Destroy`).
            self.release = Some(ReleasePlan {
                rng: self.rng.fork(31),
                stage: Stage::Doomed,
                auto: false,
            });
        }
        if !self.nodes[i].up || self.nodes[i].running_init.is_none() {
            // It crashed first, and its init may have finished: what it
            // left may already be a cluster others joined. Destroy the
            // next init node instead.
            if let Some(p) = self.release.as_mut() {
                p.stage = Stage::Armed;
            }
            return;
        }
        let name = self.nodes[i].spec.name.clone();
        self.note(|| format!("{name} DESTROYED (never comes back)"));
        self.crash(i, true);
        for r in self.inits.iter_mut().filter(|r| r.node == i) {
            r.outcome = RunOutcome::Destroyed;
        }
        self.nodes[i].kube = Kube::None;
        if let Some(p) = self.release.as_mut() {
            p.stage = Stage::Destroyed {
                node: i,
                at: self.now,
            };
        }
    }

    /// Node `i` is gone for good: it never boots again.
    pub(super) fn is_destroyed(&self, i: usize) -> bool {
        self.release.as_ref().and_then(ReleasePlan::destroyed) == Some(i)
    }

    /// The operator, 4 leases after the node is gone (and again every 20
    /// leases while no cluster exists, at most 3 times), runs the release on the
    /// first live control plane whose agent accepts it.
    pub(super) fn release_operator(&mut self) {
        let lease = self.timing.lease.as_micros() as u64;
        if !self.release.as_ref().is_some_and(|p| p.auto) {
            return;
        }
        let (holder, due) = match self.release.as_ref().map(|p| p.stage.clone()) {
            Some(Stage::Destroyed { node, at }) => (node, at + 4 * lease),
            Some(Stage::Released { node, at })
                if !self.cluster_exists() && self.stats.releases < 3 =>
            {
                (node, at + 20 * lease)
            }
            _ => return,
        };
        if self.now < due {
            return;
        }
        let name = self.nodes[holder].spec.name.clone();
        let mut order: Vec<usize> = (0..self.nodes.len())
            .filter(|&j| j != holder && self.nodes[j].spec.cp && self.nodes[j].up)
            .collect();
        if let Some(p) = self.release.as_mut() {
            let k = p.rng.below(order.len().max(1) as u64) as usize;
            order.rotate_left(k);
        }
        for j in order {
            let n = &self.nodes[j];
            let Some(core) = n.core.as_ref() else {
                continue;
            };
            if core.check_release(&name).is_err() {
                continue;
            }
            let by = n.spec.name.clone();
            let epoch = n.epoch;
            self.note(|| format!("operator: kubeha-ctl bootstrap release {name} on {by}"));
            self.push(
                self.now,
                Ev::Input {
                    node: j,
                    epoch,
                    input: Input::ReleaseInit {
                        holder: name.clone(),
                    },
                },
            );
            self.stats.releases += 1;
            if let Some(p) = self.release.as_mut() {
                p.stage = Stage::Released {
                    node: holder,
                    at: self.now,
                };
            }
            self.boot_from = self.boot_from.max(self.now);
            // The bootstrap bound counts from here: run long enough to see it.
            let bound = boot_bound(&self.timing).as_micros() as u64;
            self.end_at = self.end_at.max(self.now + bound + 500 * MS);
            return;
        }
    }
}
