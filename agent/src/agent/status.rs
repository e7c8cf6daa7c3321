//! The status document (`kubeha-ctl status`) and the metrics and logs that
//! follow the core's view after every step.

use kubeha_core::api;
use tracing::{info, warn};

use super::{Agent, VERSION};
use crate::clock;

impl Agent {
    /// Metrics and logs that follow the core's view after every step.
    pub(super) fn observe(&mut self) {
        let st = self.node.status(clock::now());
        self.metrics
            .quorum_reachable
            .set(st.reachable_voters as i64);
        if let Some(c) = st.cloud {
            let new = c.faults_total.saturating_sub(self.cloud_faults_seen);
            if new > 0 {
                let reason = c.fault.map_or("timeout", |f| f.as_str());
                self.metrics
                    .vip_cloud_faults
                    .with_label_values(&[reason])
                    .inc_by(new);
                warn!(
                    reason,
                    faults_in_a_row = c.faults,
                    standing_aside_secs = c
                        .out_until
                        .map_or(0, |t| t.saturating_since(clock::now()).as_secs()),
                    "the cloud assignment failed: letting the VIP lease go for a standby"
                );
                self.cloud_faults_seen = c.faults_total;
            }
            self.metrics
                .vip_cloud_standing_aside
                .set(i64::from(c.out_until.is_some()));
        }
        if st.lock_phase.as_str() != self.lock_phase_seen {
            info!(
                from = self.lock_phase_seen,
                to = st.lock_phase.as_str(),
                init_node = st.init_node.as_deref().unwrap_or("none"),
                "bootstrap lock phase changed"
            );
            self.lock_phase_seen = st.lock_phase.as_str();
        }
        if st.vip_holder != self.holder_seen {
            if let Some(old) = &self.holder_seen {
                self.metrics
                    .vip_holder
                    .with_label_values(&[old.as_str()])
                    .set(0);
            }
            if let Some(new) = &st.vip_holder {
                self.metrics
                    .vip_holder
                    .with_label_values(&[new.as_str()])
                    .set(1);
            }
            info!(
                from = self.holder_seen.as_deref().unwrap_or("none"),
                to = st.vip_holder.as_deref().unwrap_or("none"),
                "vip holder changed"
            );
            self.holder_seen = st.vip_holder;
        }
    }

    pub(super) fn status(&self) -> api::Status {
        let st = self.node.status(clock::now());
        let members = self
            .view
            .members
            .values()
            .map(|m| api::MemberStatus {
                name: m.name.clone(),
                addr: m.addr.to_string(),
                roles: m.roles.iter().map(|r| r.as_str().to_string()).collect(),
                alive: m.alive(),
                state: m.state(),
                generation: m.generation,
                kube: m.kube.clone(),
                lb: m.lb.as_str().to_string(),
                drained: m.drained,
                vip_holder: m.vip_holder,
            })
            .collect();
        api::Status {
            cluster: self.config.cluster.clone(),
            node: self.config.node_name.clone(),
            version: VERSION.to_string(),
            timing: self.config.timing.as_str().to_string(),
            drained: st.drained,
            members,
            vip: self.config.vip.as_ref().map(|v| api::VipStatus {
                address: v.cidr(),
                holder: st.vip_holder.clone(),
                held_here: self.fx.vip_up,
                candidate: st.vip_candidate,
                provider: self.fx.vip.as_ref().and_then(|p| p.provider_status()),
                cloud_guard: st.cloud.map(|c| api::CloudGuardStatus {
                    fault: c.fault.map(|f| f.as_str().to_string()),
                    faults: c.faults,
                    standing_aside_secs: c.out_until.map_or(0, |t| {
                        t.saturating_since(clock::now()).as_secs_f64().ceil() as u64
                    }),
                    demoted: c.demoted,
                }),
            }),
            haproxy: self.lb_report.as_ref().map(|r| r.status.clone()),
            quorum: api::QuorumStatus {
                voters: st.voters,
                reachable: st.reachable_voters,
                ok: st.quorum_ok,
            },
            kubernetes: api::KubernetesStatus {
                phase: st.kube.phase.as_str().to_string(),
                init_node: st.init_node.clone(),
                waiting_for: st.kube.waiting_for.clone(),
                last_error: st.kube.last_error.clone(),
                join_failures: st.kube.join_failures,
                etcd: self.etcd.as_ref().and_then(|e| e.status()),
                init_node_down: st.init_node_down.clone(),
                release: st.release.as_ref().map(|r| api::ReleaseStatus {
                    node: r.holder.clone(),
                    acked: r.acked.clone(),
                    refused: r
                        .refused
                        .iter()
                        .map(|(v, why)| api::ReleaseRefused {
                            voter: v.clone(),
                            reason: why.to_string(),
                        })
                        .collect(),
                    needed: r.needed,
                    done: r.done,
                }),
                released: st.released.clone(),
                endpoint: self
                    .config
                    .kubernetes
                    .as_ref()
                    .map(|k| k.control_plane_endpoint.clone()),
            },
            voter_mismatch: self
                .view
                .voter_mismatches(&self.config.voters)
                .iter()
                .map(|m| api::VoterMismatch {
                    member: m.name.clone(),
                    their_voters: m.voters.clone(),
                })
                .collect(),
            preflight: self.preflight.as_ref().and_then(|p| p.latest()),
            kubeadm_skew: kubeha_core::hostprep::view_skew(&self.view).to_api(),
        }
    }
}
