//! The local API between `kubeha-ctl` and the agent (a Unix socket, one JSON
//! request line, one JSON response line) and the JSON status document
//! (DESIGN.md section 6). `kubeha-ctl` depends on these types, never on the
//! agent.

use serde::{Deserialize, Serialize};

/// One request line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum Request {
    Status,
    Drain,
    Undrain,
    /// Check (and, with `host_prep`, prepare) the host now; answered with
    /// [`Response::Preflight`].
    Preflight,
    /// `kubeha-ctl bootstrap release NODE`: `node` holds the bootstrap lock,
    /// never initialized and is gone for good; let another node init.
    #[serde(rename = "release-init")]
    ReleaseInit {
        node: String,
    },
}

/// One response line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "lowercase")]
pub enum Response {
    Status(Box<Status>),
    Preflight(Box<PreflightReport>),
    Ok { message: String },
    Error { message: String },
}

/// `kubeha-ctl status -o json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub cluster: String,
    pub node: String,
    /// The agent's version (`CARGO_PKG_VERSION`).
    pub version: String,
    pub timing: String,
    /// This node is drained: it gave up the VIP and takes no new role.
    pub drained: bool,
    pub members: Vec<MemberStatus>,
    pub vip: Option<VipStatus>,
    pub haproxy: Option<HaproxyStatus>,
    pub quorum: QuorumStatus,
    pub kubernetes: KubernetesStatus,
    /// Members whose `voters` list differs from ours (should be empty).
    pub voter_mismatch: Vec<VoterMismatch>,
    /// The last host preparation report; `null` on nodes without
    /// `[kubernetes]` or before the first run finished.
    #[serde(default)]
    pub preflight: Option<PreflightReport>,
    /// Control planes whose kubeadm minor version differs from the others'
    /// (empty when they agree). `kubeadm init`/`join` wait while it is not.
    #[serde(default)]
    pub kubeadm_skew: Vec<KubeadmSkew>,
}

/// `kubeha-ctl preflight -o json`, and `preflight` in the status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreflightReport {
    /// Every check passes (warnings allowed) and nothing failed to apply.
    pub ok: bool,
    /// `kubeadm version -o short`, e.g. `v1.31.2`.
    pub kubeadm_version: Option<String>,
    /// `1.31`: what this node gossips.
    pub kubeadm_minor: Option<String>,
    pub checks: Vec<PreflightCheck>,
    /// What this run changed, in order (`modprobe br_netfilter`, `write /etc/...`).
    pub applied: Vec<String>,
    /// Why the run changed nothing or stopped: the check, file or command.
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreflightCheck {
    /// `module br_netfilter`, `sysctl net.ipv4.ip_forward`, `swap`, `kubeadm`, ...
    pub name: String,
    pub state: CheckState,
    pub detail: String,
    /// What a person should do when it fails.
    pub remedy: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckState {
    /// Was already so.
    Ok,
    /// This run made it so.
    Changed,
    /// Not fatal (swap in fstab: the agent turns it off at every start).
    Warning,
    Failed,
}

impl CheckState {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckState::Ok => "ok",
            CheckState::Changed => "changed",
            CheckState::Warning => "warning",
            CheckState::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubeadmSkew {
    pub member: String,
    /// Its kubeadm minor (`1.30`).
    pub kubeadm: String,
    /// The minor most control planes have.
    pub common: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    pub name: String,
    /// Gossip address.
    pub addr: String,
    pub roles: Vec<String>,
    pub alive: bool,
    /// `alive`, `dead` (failure detector) or `left` (announced a clean stop).
    pub state: MemberState,
    /// Incarnation: changes every time the agent starts.
    pub generation: u64,
    /// `none`, `initializing`, `joining`, `control-plane`, `worker`, `failed`.
    pub kube: String,
    /// For `lb` nodes: `healthy`, `unhealthy`, or `none` for other nodes.
    pub lb: String,
    pub drained: bool,
    /// This member says it holds the VIP.
    pub vip_holder: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    Alive,
    Dead,
    Left,
}

impl MemberState {
    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Alive => "alive",
            MemberState::Dead => "dead",
            MemberState::Left => "left",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VipStatus {
    pub address: String,
    /// The node holding the VIP, as far as this node knows; `null` if none.
    pub holder: Option<String>,
    /// This node holds it right now (its lease is valid and the address is up).
    pub held_here: bool,
    /// This node may hold the VIP (role `lb`, healthy, not drained).
    pub candidate: bool,
    /// The provider's own view (a cloud provider: its last call and action);
    /// absent for `arp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<VipProviderStatus>,
    /// What the lease makes of the cloud assignment (`digitalocean`):
    /// faults and standing aside; absent for `arp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_guard: Option<CloudGuardStatus>,
}

/// The lease's reaction to the cloud assignment (`kubeha_core::lease::cloud`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloudGuardStatus {
    /// Why this node last let the lease go because of the cloud: `timeout`
    /// (not assigned within `vip.assign_timeout`) or `permanent` (401, 403,
    /// 404); `null` once an assignment has worked again.
    pub fault: Option<String>,
    /// Faults in a row (a completed assignment resets it).
    pub faults: u32,
    /// Seconds until this node is a VIP candidate again; 0: it is.
    pub standing_aside_secs: u64,
    /// Asking with priority 0 (never preempting) until an assignment works.
    pub demoted: bool,
}

/// A cloud VIP provider's view on this node (`digitalocean`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VipProviderStatus {
    /// The provider, e.g. `digitalocean`.
    pub kind: String,
    /// `idle` (this node does not want the IP), `pending` (assigning),
    /// `assigned` (to this droplet), `failed` (keeps retrying; see `reason`).
    pub state: String,
    /// Why it is not assigned (yet): the failed call and its status.
    pub reason: Option<String>,
    /// The Reserved IP.
    pub reserved_ip: Option<String>,
    /// This droplet's id (from the metadata service), once known.
    pub droplet_id: Option<u64>,
    /// The droplet the IP was last seen assigned to.
    pub assigned_to: Option<u64>,
    pub last_action: Option<ProviderAction>,
}

/// The last cloud action this node started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderAction {
    pub id: u64,
    /// `in-progress`, `completed`, `errored`.
    pub status: String,
    /// Seconds since this node started it.
    pub age_secs: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaproxyStatus {
    pub running: bool,
    /// The last render passed `haproxy -c` and is the one running.
    pub config_ok: bool,
    /// Why the last render was refused, if it was.
    pub last_error: Option<String>,
    pub backends: Vec<BackendStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendStatus {
    pub name: String,
    pub addr: String,
    pub up: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuorumStatus {
    pub voters: usize,
    pub reachable: usize,
    pub ok: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubernetesStatus {
    /// `disabled`, `waiting`, `initializing`, `joining`, `joined`, `failed`.
    pub phase: String,
    pub init_node: Option<String>,
    pub endpoint: Option<String>,
    /// While `waiting`: what for (host preparation, the bootstrap lock, an
    /// init node, the control-plane join slot, a retry back-off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,
    /// The last kubeadm/kubectl/join-material failure on this node (the
    /// command's redacted argv, exit status and stderr tail), cleared by a
    /// success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Failed join attempts since the last success (each is reset with
    /// `kubeadm reset -f` and retried with back-off).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub join_failures: u32,
    /// On a joined control plane: etcd's members as etcd reports them
    /// (read every few seconds through the etcd API with kubeadm's
    /// `apiserver-etcd-client` certificate). Absent elsewhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd: Option<EtcdStatus>,
    /// A node that holds the bootstrap lock (or a committed vote of it),
    /// never initialized and is not alive: nobody else initializes until
    /// it is back or an operator releases it (`kubeha-ctl bootstrap
    /// release NODE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_node_down: Option<String>,
    /// The release this node sent, and the voters' answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<ReleaseStatus>,
    /// On a voter: the nodes whose bootstrap lock it released.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub released: Vec<String>,
}

/// `kubernetes.release` in the status document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseStatus {
    /// The node whose lock is released.
    pub node: String,
    /// Voters that released it.
    pub acked: Vec<String>,
    /// Voters that refused, with their reason.
    pub refused: Vec<ReleaseRefused>,
    /// Acks needed: a majority of the voters.
    pub needed: usize,
    /// A majority released it: another control plane may now init.
    pub done: bool,
}

impl ReleaseStatus {
    /// `"; refused by cp-1 (reason), …"`, or nothing when no voter refused:
    /// the tail of the one-line summaries `kubeha-ctl` prints.
    pub fn refused_suffix(&self) -> String {
        if self.refused.is_empty() {
            return String::new();
        }
        let refused: Vec<String> = self
            .refused
            .iter()
            .map(|x| format!("{} ({})", x.voter, x.reason))
            .collect();
        format!("; refused by {}", refused.join(", "))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseRefused {
    pub voter: String,
    pub reason: String,
}

/// `kubernetes.etcd` in the status document.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EtcdStatus {
    /// As the last successful read listed them, by name.
    pub members: Vec<EtcdMember>,
    /// Why the last read failed (the members are then those of the read
    /// before, if any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Seconds since the members were read.
    pub age_secs: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EtcdMember {
    pub name: String,
    /// etcd's member id, hex (as `etcdctl member list` prints it).
    pub id: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    /// Not yet promoted: no vote.
    pub learner: bool,
    /// It answered a status call through its first client URL.
    pub healthy: bool,
    /// It is the raft leader (as its own status reports).
    pub leader: bool,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoterMismatch {
    pub member: String,
    pub their_voters: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_wire_form() {
        assert_eq!(
            serde_json::to_string(&Request::Status).unwrap(),
            r#"{"cmd":"status"}"#
        );
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"cmd":"drain"}"#).unwrap(),
            Request::Drain
        );
        assert_eq!(
            serde_json::to_string(&Request::Preflight).unwrap(),
            r#"{"cmd":"preflight"}"#
        );
    }

    #[test]
    fn check_state_wire_form() {
        let c = PreflightCheck {
            name: "swap".into(),
            state: CheckState::Changed,
            detail: "off".into(),
            remedy: None,
        };
        assert_eq!(
            serde_json::to_string(&c).unwrap(),
            r#"{"name":"swap","state":"changed","detail":"off","remedy":null}"#
        );
    }

    #[test]
    fn null_fields_serialize_as_null() {
        let s = KubernetesStatus {
            phase: "disabled".into(),
            init_node: None,
            endpoint: None,
            waiting_for: None,
            last_error: None,
            join_failures: 0,
            etcd: None,
            init_node_down: None,
            release: None,
            released: vec![],
        };
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            r#"{"phase":"disabled","init_node":null,"endpoint":null}"#
        );
    }

    #[test]
    fn vip_cloud_guard_wire_form() {
        let mut v = VipStatus {
            address: "203.0.113.7/32".into(),
            holder: Some("lb-1".into()),
            held_here: false,
            candidate: false,
            provider: None,
            cloud_guard: None,
        };
        // Absent for `arp` (and older agents' documents still parse).
        let arp = serde_json::to_string(&v).unwrap();
        assert!(!arp.contains("cloud_guard"), "{arp}");
        let back: VipStatus = serde_json::from_str(&arp).unwrap();
        assert_eq!(back, v);
        v.cloud_guard = Some(CloudGuardStatus {
            fault: Some("permanent".into()),
            faults: 1,
            standing_aside_secs: 42,
            demoted: true,
        });
        let j = serde_json::to_string(&v).unwrap();
        assert!(
            j.ends_with(
                r#""cloud_guard":{"fault":"permanent","faults":1,"standing_aside_secs":42,"demoted":true}}"#
            ),
            "{j}"
        );
        assert_eq!(serde_json::from_str::<VipStatus>(&j).unwrap(), v);
    }
}
