//! Membership as gossip shows it (lagging, lying or blind), joins, the
//! bootstrap check and the final heal.

use super::*;

impl World {
    pub(super) fn connected(&self, a: usize, b: usize) -> bool {
        a == b || !(self.blocked.contains_key(&(a, b)) || self.blocked.contains_key(&(b, a)))
    }

    pub(super) fn member(&mut self, viewer: usize, m: usize) -> MemberInfo {
        let n = &self.nodes[m];
        let mut roles = Vec::new();
        if n.spec.cp {
            roles.push("control-plane");
        }
        if n.spec.worker {
            roles.push("worker");
        }
        if n.spec.prio.is_some() {
            roles.push("lb");
        }
        let voters: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| n.spec.voter)
            .map(|n| n.spec.name.clone())
            .collect();
        let mut kv: Vec<(&str, String)> = vec![
            (keys::ROLES, roles.join(",")),
            (keys::VOTERS, voters.join(",")),
            (keys::KUBE, n.kube.as_str().into()),
            (keys::DRAINED, if n.drained { "1" } else { "0" }.into()),
            (keys::LEAVING, if n.leaving { "1" } else { "0" }.into()),
        ];
        if let Some(p) = n.spec.prio {
            kv.push((keys::PRIORITY, p.to_string()));
            kv.push((
                keys::LB,
                if n.healthy { "healthy" } else { "unhealthy" }.into(),
            ));
        }
        if self.blind_kube {
            kv[2].1 = "none".into();
        }
        let live = n.up && self.connected(viewer, m);
        let mut info = MemberInfo::from_kv(
            &n.spec.name,
            n.generation,
            format!("198.18.0.{}:7946", m + 10).parse().unwrap(),
            live,
            kv.iter().map(|(k, v)| (*k, v.as_str())),
        );
        if self.rng.chance(self.lie_p) {
            // Gossip that is wrong: safety must not care.
            match self.rng.below(5) {
                0 => info.live = !info.live,
                1 => info.lb = kubeha_core::membership::LbHealth::Healthy,
                2 => info.kube = "none".into(),
                3 => info.kube = "control-plane".into(),
                _ => info.priority = Some(self.rng.below(256) as u8),
            }
        }
        info
    }

    pub(super) fn gossip(&mut self) {
        self.check_cloud();
        let n = self.nodes.len();
        for v in 0..n {
            if !self.nodes[v].up || self.nodes[v].core.is_none() {
                continue;
            }
            if !self.healed && !self.rng.chance(self.fresh_p) {
                continue;
            }
            let booted: Vec<usize> = (0..n).filter(|&m| self.nodes[m].booted).collect();
            // Skip building a view that cannot have changed.
            let mut fp: u64 = 0xcbf2_9ce4_8422_2325;
            for &m in &booted {
                let x = &self.nodes[m];
                let bits = [
                    m as u64,
                    x.up as u64,
                    self.connected(v, m) as u64,
                    x.kube as u64,
                    x.drained as u64,
                    x.healthy as u64,
                    x.leaving as u64,
                    x.generation,
                    self.blind_kube as u64,
                ];
                for b in bits {
                    fp = (fp ^ b).wrapping_mul(0x0000_0100_0000_01b3);
                }
            }
            // A view built while gossip lied is always rebuilt.
            if self.lie_p == 0.0 && self.nodes[v].view.is_some() && self.nodes[v].view_fp == fp {
                continue;
            }
            self.nodes[v].view_fp = if self.lie_p == 0.0 { fp } else { 0 };
            let members: Vec<MemberInfo> = booted.into_iter().map(|m| self.member(v, m)).collect();
            let view = MembershipView::from_incarnations(members);
            if self.nodes[v].view.as_ref() != Some(&view) {
                self.nodes[v].view = Some(view.clone());
                let epoch = self.nodes[v].epoch;
                self.push(
                    self.now,
                    Ev::Input {
                        node: v,
                        epoch,
                        input: Input::Membership(view),
                    },
                );
            }
        }
        self.joins();
        self.check_boot();
        self.check_vip();
        let next = self.now + self.timing.gossip_interval.as_micros() as u64;
        self.push(next, Ev::Gossip);
    }

    pub(super) fn cluster_exists(&self) -> bool {
        self.inits.iter().any(|r| r.outcome == RunOutcome::Success)
    }

    /// Nodes whose core knows the init node join once a cluster exists.
    pub(super) fn joins(&mut self) {
        if !self.cluster_exists() {
            return;
        }
        for i in 0..self.nodes.len() {
            let n = &self.nodes[i];
            if !n.up || n.kube != Kube::None || !(n.spec.cp || n.spec.worker) {
                continue;
            }
            let Some(core) = n.core.as_ref() else {
                continue;
            };
            let st = core.status(n.clock.local(self.now));
            let other = st.init_node.as_ref().is_some_and(|x| *x != n.spec.name);
            let follows = matches!(
                st.lock_phase,
                LockPhase::Idle
                    | LockPhase::Follower
                    | LockPhase::Blocked
                    | LockPhase::Waiting
                    | LockPhase::Released
            );
            if other && follows {
                let k = if n.spec.cp {
                    Kube::ControlPlane
                } else {
                    Kube::Worker
                };
                self.set_kube(i, k);
            }
        }
    }

    pub(super) fn check_boot(&mut self) {
        if !self.healed || self.boot_after_heal.is_some() || !self.cluster_exists() {
            return;
        }
        let destroyed = self
            .release
            .as_ref()
            .and_then(release::ReleasePlan::destroyed);
        let done = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(i, n)| n.spec.cp && Some(*i) != destroyed)
            .all(|(_, n)| {
                n.up && n
                    .core
                    .as_ref()
                    .is_some_and(|c| c.status(n.clock.local(self.now)).init_node.is_some())
            });
        if done {
            self.boot_after_heal = Some(self.now);
        }
    }

    pub(super) fn heal(&mut self) {
        self.note(|| "HEAL".into());
        self.healed = true;
        self.blocked.clear();
        self.net = NetParams {
            loss: 0.0,
            long_p: 0.0,
            ..self.base_net.clone()
        };
        self.lie_p = 0.0;
        self.fresh_p = 1.0;
        for i in 0..self.nodes.len() {
            if !self.nodes[i].up {
                self.boot(i, false);
            } else {
                if self.nodes[i].drained {
                    self.handle(Ev::Drain { node: i, on: false });
                }
                if !self.nodes[i].healthy {
                    self.handle(Ev::Health { node: i, ok: true });
                }
            }
            // A clean stop in flight: its node restarts when it is down.
            if self.nodes[i].leaving {
                self.push(
                    self.now + 100 * MS,
                    Ev::Restart {
                        node: i,
                        wipe: false,
                    },
                );
            }
            self.nodes[i].healthy = true;
        }
    }
}
