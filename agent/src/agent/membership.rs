//! Logs and metrics of membership changes.

use std::collections::BTreeMap;

use kubeha_core::api::MemberState;
use kubeha_core::membership::MembershipView;
use tracing::{info, warn};

use super::Agent;

impl Agent {
    /// One log event per member state change. Returns whether a member came
    /// back alive.
    pub(super) fn log_membership_changes(&self, view: &MembershipView) -> bool {
        let mut rejoined = false;
        for (name, m) in &view.members {
            let before = self.view.get(name).map(|o| o.state());
            let now = m.state();
            if before != Some(now) {
                info!(
                    member = %name,
                    generation = m.generation,
                    from = before.map_or("unknown", MemberState::as_str),
                    to = now.as_str(),
                    "member state changed"
                );
                rejoined |= before.is_some() && now == MemberState::Alive;
            }
        }
        for name in self.view.members.keys() {
            if !view.members.contains_key(name) {
                info!(member = %name, "member forgotten");
            }
        }
        let old_bad: Vec<&str> = self
            .view
            .voter_mismatches(&self.config.voters)
            .iter()
            .map(|m| m.name.as_str())
            .collect();
        for m in view.voter_mismatches(&self.config.voters) {
            if !old_bad.contains(&m.name.as_str()) {
                warn!(
                    member = %m.name,
                    theirs = ?m.voters,
                    ours = ?self.config.voters,
                    "member has a different voter list; fix `voters` so every node lists the same nodes"
                );
            }
        }
        rejoined
    }

    pub(super) fn update_membership_metrics(&self) {
        self.metrics
            .voter_mismatch
            .set(self.view.voter_mismatches(&self.config.voters).len() as i64);
        let mut by_state: BTreeMap<&str, i64> =
            BTreeMap::from([("alive", 0), ("dead", 0), ("left", 0)]);
        for m in self.view.members.values() {
            *by_state.entry(m.state().as_str()).or_default() += 1;
        }
        for (s, n) in by_state {
            self.metrics.members.with_label_values(&[s]).set(n);
        }
    }
}
