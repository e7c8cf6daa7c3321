//! Scripting for tests: run to a time or condition, act, inspect.

use super::*;

impl World {
    /// Process events up to real time `t` (from the start of the run).
    pub fn run_until(&mut self, t: Duration) {
        self.run_until_true(t, |_| false);
    }

    /// Process events until `cond` holds (checked after every event) or
    /// real time `limit` is reached. Whether `cond` holds at the end.
    pub fn run_until_true(&mut self, limit: Duration, cond: impl Fn(&World) -> bool) -> bool {
        let until = limit.as_micros() as u64;
        while !cond(self) {
            match self.queue.peek() {
                Some(Reverse(e)) if e.t <= until => {
                    let Reverse(e) = self.queue.pop().unwrap();
                    self.now = e.t;
                    self.events += 1;
                    self.handle(e.ev);
                }
                _ => {
                    self.now = self.now.max(until);
                    return cond(self);
                }
            }
        }
        true
    }

    /// From now on gossip reports every node's `kube` as `none`: only the
    /// lock stands between the cluster and a second init.
    pub fn blind_gossip(&mut self) {
        self.blind_kube = true;
    }

    pub fn now(&self) -> Duration {
        Duration::from_micros(self.now)
    }

    pub fn act(&mut self, a: Action) {
        let ev = match a {
            Action::Crash { node, power_off } => Ev::Crash { node, power_off },
            Action::Restart { node, wipe } => Ev::Restart { node, wipe },
            Action::Destroy { node } => Ev::Destroy { node },
            Action::Release { by, holder } => Ev::Input {
                node: by,
                epoch: self.nodes[by].epoch,
                input: Input::ReleaseInit {
                    holder: self.nodes[holder].spec.name.clone(),
                },
            },
            Action::Isolate { node } => Ev::Block {
                links: self.links_of(node),
            },
            Action::Rejoin { node } => Ev::Unblock {
                links: self.links_of(node),
            },
            Action::Pause { node, dur } => Ev::Pause {
                node,
                dur: dur.as_micros() as u64,
            },
            Action::Drain { node, on } => Ev::Drain { node, on },
            Action::PauseGuardian { node, dur } => Ev::Fence(fence::FenceEv::PauseGuardian {
                node,
                dur: dur.as_micros() as u64,
            }),
            Action::PauseAll { node, dur } => Ev::Fence(fence::FenceEv::PauseAll {
                node,
                dur: dur.as_micros() as u64,
            }),
            Action::FreezeVm { node, dur } => Ev::Fence(fence::FenceEv::FreezeVm {
                node,
                dur: dur.as_micros() as u64,
            }),
            Action::KillAll { node } => Ev::Fence(fence::FenceEv::KillAll { node }),
        };
        self.handle(ev);
    }

    pub(super) fn links_of(&self, node: usize) -> Vec<(usize, usize)> {
        (0..self.nodes.len())
            .filter(|&o| o != node)
            .flat_map(|o| [(node, o), (o, node)])
            .collect()
    }

    pub fn node(&self, name: &str) -> usize {
        self.names[name]
    }

    pub fn name(&self, i: usize) -> &str {
        &self.nodes[i].spec.name
    }

    /// The VIP priority the node's agent gets at its next (re)start, as an
    /// operator's config edit would.
    pub fn set_priority(&mut self, node: usize, prio: u8) {
        self.nodes[node].spec.prio = Some(prio);
    }

    pub fn vip_holders(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].vip)
            .collect()
    }

    /// Whether node `i`'s agent, as it stands, would accept
    /// `kubeha-ctl bootstrap release HOLDER`.
    pub fn release_allowed(&self, i: usize, holder: usize) -> Result<(), String> {
        let n = &self.nodes[i];
        match n.core.as_ref() {
            None => Err("down".into()),
            Some(c) => c
                .check_release(&self.nodes[holder].spec.name)
                .map_err(|e| e.to_string()),
        }
    }

    /// The trace so far (with `Opts::trace`), for failure messages.
    pub fn trace_tail(&self, lines: usize) -> String {
        let t = self.trace.as_deref().unwrap_or_default();
        t[t.len().saturating_sub(lines)..].join("\n")
    }

    pub fn init_runs(&self) -> &[InitRun] {
        &self.inits
    }

    pub fn violations(&self) -> &[String] {
        &self.violations
    }

    /// Voters whose state (as the core last asked to persist it) holds a
    /// committed lock vote.
    pub fn committed_voters(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].spec.voter)
            .filter(|&i| {
                self.nodes[i]
                    .core
                    .as_ref()
                    .is_some_and(|c| c.persisted().vote.as_ref().is_some_and(|v| v.committed))
            })
            .collect()
    }
}
