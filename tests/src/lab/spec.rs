//! What a lab is made of: the topology, its nodes, their addresses and the
//! agent configuration each node gets.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use kubeha_core::config::Role;
use kubeha_core::timing::Profile;
use serde::{Deserialize, Serialize};

/// The virtual IP every lab uses.
pub const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
/// The client namespace's address.
pub const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
/// The port clients (and the prober) connect to on the VIP.
pub const VIP_PORT: u16 = 6443;
pub const GOSSIP_PORT: u16 = 7946;
/// Node addresses start here: .11, .12, ...
const FIRST_NODE_OCTET: u8 = 11;
/// The last octet a node may get (below the client's .100).
const LAST_NODE_OCTET: u8 = 99;
/// The interface inside every node and the client.
pub const IFACE: &str = "eth0";
/// The bridge in the switch namespace.
pub const BRIDGE: &str = "br0";
pub const PREFIX_LEN: u8 = 24;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Topology {
    /// 2 lb + 3 control-plane + N workers (N = `--nodes`, default 1);
    /// voters are the control planes.
    Guide,
    /// N nodes (default 3), each control-plane + lb; voters are all.
    Compact,
    /// N lb nodes (default 3) with a VIP only; voters are all: what a
    /// keepalived user would run.
    Vip,
}

impl Topology {
    pub fn as_str(self) -> &'static str {
        match self {
            Topology::Guide => "guide",
            Topology::Compact => "compact",
            Topology::Vip => "vip",
        }
    }
}

/// Who moves the VIP in a lab.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum VipProvider {
    /// The address on an interface, gratuitous ARP (the agent's `arp`).
    #[default]
    Arp,
    /// A DigitalOcean Reserved IP: the agents' `digitalocean` provider
    /// against the lab's stand-in of the API ([`super::cloud`]), which
    /// decides which node the VIP routes to.
    Digitalocean,
}

impl VipProvider {
    pub fn as_str(self) -> &'static str {
        match self {
            VipProvider::Arp => "arp",
            VipProvider::Digitalocean => "digitalocean",
        }
    }
}

/// What to build. `LabSpec::new(Topology::Vip)` plus builder methods.
#[derive(Clone, Debug)]
pub struct LabSpec {
    /// Lab name (run directory name); default `t<id>`.
    pub name: Option<String>,
    pub topology: Topology,
    /// Guide: number of workers; compact and vip: number of nodes.
    pub nodes: Option<usize>,
    pub timing: Profile,
    /// Give lb nodes a `[haproxy]` section.
    pub haproxy: bool,
    /// Kubernetes: control planes and workers get `[kubernetes]` with
    /// fake-kubeadm as their kubeadm (see [`super::kube`]); implies
    /// `haproxy`.
    pub kubernetes: bool,
    /// Start `kubeha-agent` on every node during `up`.
    pub start_agents: bool,
    /// Where `kubeha-agent` and `kubeha-ctl` are; default: see [`default_bin_dir`].
    pub bin_dir: Option<PathBuf>,
    /// Run directory; default `/run/kubeha-lab/<name>`.
    pub dir: Option<PathBuf>,
    /// Keep the run directory (logs, configs) after teardown.
    pub keep_dir: bool,
    /// Who moves the VIP; `digitalocean` implies [`LabSpec::haproxy`]
    /// (the Reserved IP's traffic goes to HAProxy on the anchor address).
    pub vip_provider: VipProvider,
    /// `digitalocean`: how long the stand-in takes to complete an action.
    pub action_latency: std::time::Duration,
}

impl LabSpec {
    pub fn new(topology: Topology) -> LabSpec {
        LabSpec {
            name: None,
            topology,
            nodes: None,
            timing: Profile::Default,
            haproxy: false,
            kubernetes: false,
            start_agents: true,
            bin_dir: None,
            dir: None,
            keep_dir: false,
            vip_provider: VipProvider::Arp,
            action_latency: std::time::Duration::ZERO,
        }
    }

    /// The VIP as a DigitalOcean Reserved IP (see [`VipProvider`]); implies
    /// [`LabSpec::haproxy`].
    pub fn vip_provider(mut self, p: VipProvider) -> Self {
        self.vip_provider = p;
        if p == VipProvider::Digitalocean {
            self.haproxy = true;
        }
        self
    }

    /// `digitalocean`: the stand-in's action latency at start.
    pub fn action_latency(mut self, d: std::time::Duration) -> Self {
        self.action_latency = d;
        self
    }

    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    pub fn nodes(mut self, n: usize) -> Self {
        self.nodes = Some(n);
        self
    }

    pub fn timing(mut self, t: Profile) -> Self {
        self.timing = t;
        self
    }

    pub fn haproxy(mut self, on: bool) -> Self {
        self.haproxy = on;
        self
    }

    /// Kubernetes in the lab: every control plane and worker gets
    /// `[kubernetes]` (fake-kubeadm over a real etcd, fake host tools under
    /// its run directory), lb nodes get `[haproxy]`; the agents bootstrap
    /// the cluster by themselves. Implies [`LabSpec::haproxy`].
    pub fn kubernetes(mut self, on: bool) -> Self {
        self.kubernetes = on;
        if on {
            self.haproxy = true;
        }
        self
    }

    /// Build the network only; start agents (or keepalived) later.
    pub fn without_agents(mut self) -> Self {
        self.start_agents = false;
        self
    }

    pub fn bin_dir(mut self, d: impl Into<PathBuf>) -> Self {
        self.bin_dir = Some(d.into());
        self
    }

    pub fn dir(mut self, d: impl Into<PathBuf>) -> Self {
        self.dir = Some(d.into());
        self
    }

    pub fn keep_dir(mut self, keep: bool) -> Self {
        self.keep_dir = keep;
        self
    }

    /// The nodes this spec makes, in address order.
    pub fn plan(&self) -> Result<Vec<NodePlan>, String> {
        plan_nodes(self.topology, self.nodes)
    }
}

/// One node of a plan, before it exists.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodePlan {
    pub name: String,
    pub addr: Ipv4Addr,
    pub roles: Vec<Role>,
    pub voter: bool,
    /// VIP priority, on lb nodes.
    pub priority: Option<u8>,
}

/// Priority of the i-th lb node: 150, 100, 50 like the keepalived baseline,
/// then 40, 30, ... so the order is total.
pub fn lb_priority(i: usize) -> u8 {
    match i {
        0..=2 => 150 - 50 * i as u8,
        _ => 50u8.saturating_sub(10u8.saturating_mul(i as u8 - 2)).max(1),
    }
}

pub fn plan_nodes(topology: Topology, nodes: Option<usize>) -> Result<Vec<NodePlan>, String> {
    let mut named: Vec<(String, Vec<Role>, bool)> = Vec::new();
    match topology {
        Topology::Guide => {
            let workers = nodes.unwrap_or(1);
            for i in 0..2 {
                named.push((format!("lb-{i}"), vec![Role::Lb], false));
            }
            for i in 0..3 {
                named.push((format!("cp-{i}"), vec![Role::ControlPlane], true));
            }
            for i in 0..workers {
                named.push((format!("worker-{i}"), vec![Role::Worker], false));
            }
        }
        Topology::Compact => {
            let n = nodes.unwrap_or(3);
            if n == 0 {
                return Err("the compact topology needs at least 1 node".into());
            }
            for i in 0..n {
                named.push((format!("cp-{i}"), vec![Role::ControlPlane, Role::Lb], true));
            }
        }
        Topology::Vip => {
            let n = nodes.unwrap_or(3);
            if n == 0 {
                return Err("the vip topology needs at least 1 node".into());
            }
            for i in 0..n {
                named.push((format!("n{}", i + 1), vec![Role::Lb], true));
            }
        }
    }
    let max = (LAST_NODE_OCTET - FIRST_NODE_OCTET + 1) as usize;
    if named.len() > max {
        return Err(format!(
            "{} nodes do not fit in 198.18.0.{FIRST_NODE_OCTET}-{LAST_NODE_OCTET} (at most {max})",
            named.len()
        ));
    }
    let mut lb_seen = 0;
    Ok(named
        .into_iter()
        .enumerate()
        .map(|(i, (name, roles, voter))| {
            let priority = roles.contains(&Role::Lb).then(|| {
                lb_seen += 1;
                lb_priority(lb_seen - 1)
            });
            NodePlan {
                name,
                addr: Ipv4Addr::new(198, 18, 0, FIRST_NODE_OCTET + i as u8),
                roles,
                voter,
                priority,
            }
        })
        .collect())
}

/// Where the agent binaries are by default: `$KUBEHA_BIN_DIR`, else the
/// directory of the running executable (`target/<profile>/`; for a test
/// binary in `target/<profile>/deps/`, its parent).
pub fn default_bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("KUBEHA_BIN_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.file_name().is_some_and(|n| n == "deps") {
        return dir.parent().map(Path::to_path_buf).unwrap_or(dir);
    }
    dir
}

/// Paths of one node inside the run directory.
#[derive(Clone, Debug)]
pub struct NodePaths {
    pub dir: PathBuf,
}

impl NodePaths {
    pub fn new(run_dir: &Path, node: &str) -> NodePaths {
        NodePaths {
            dir: run_dir.join(node),
        }
    }
    pub fn config(&self) -> PathBuf {
        self.dir.join("kubeha.toml")
    }
    pub fn socket(&self) -> PathBuf {
        self.dir.join("kubeha.sock")
    }
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }
    pub fn agent_log(&self) -> PathBuf {
        self.dir.join("agent.log")
    }
    pub fn haproxy_cfg(&self) -> PathBuf {
        self.dir.join("haproxy.cfg")
    }
    pub fn haproxy_runtime(&self) -> PathBuf {
        self.dir.join("haproxy")
    }
    pub fn keepalived_conf(&self) -> PathBuf {
        self.dir.join("keepalived.conf")
    }
    pub fn keepalived_log(&self) -> PathBuf {
        self.dir.join("keepalived.log")
    }
    /// Kubernetes labs: the node's scratch host (`kubernetes.host_root`).
    pub fn host_root(&self) -> PathBuf {
        self.dir.join("root")
    }
    /// Kubernetes labs: the node's fake host tools (first in the agent's
    /// `PATH`) and its `kubeadm` wrapper.
    pub fn tools(&self) -> PathBuf {
        self.dir.join("bin")
    }
    /// Kubernetes labs: `kubernetes.etc_dir` (kubeadm's files).
    pub fn etc_dir(&self) -> PathBuf {
        self.dir.join("etc")
    }
    /// Kubernetes labs: fake-kubeadm's state (`node.json`, etcd data,
    /// `etcd.log`, `apiserver.log`).
    pub fn kubeadm_state(&self) -> PathBuf {
        self.dir.join("kstate")
    }
}

/// Where a Kubernetes lab keeps what its nodes share: the call log of
/// fake-kubeadm, the CNI manifest, the knobs.
pub fn kube_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("kube")
}

/// Quote a string for TOML (basic string).
fn toml_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn toml_list<'a>(items: impl IntoIterator<Item = &'a str>) -> String {
    let v: Vec<String> = items.into_iter().map(toml_str).collect();
    format!("[{}]", v.join(", "))
}

/// The control key of a lab: next to its cluster key.
pub fn control_key_file(key_file: &Path) -> PathBuf {
    key_file.with_file_name("control.key")
}

/// The `[vip]` of a lab node that uses the `digitalocean` provider against
/// the lab's stand-in.
#[derive(Clone, Debug)]
pub struct CloudVip {
    pub token_file: PathBuf,
    pub api_url: String,
    /// This node's metadata service (the stand-in's per-droplet prefix).
    pub metadata_url: String,
    pub api_ca_file: PathBuf,
}

/// The `kubeha.toml` of `node` (DESIGN.md section 6).
pub fn agent_config(
    plan: &[NodePlan],
    node: &NodePlan,
    paths: &NodePaths,
    key_file: &Path,
    timing: Profile,
    haproxy: bool,
    kubernetes: bool,
) -> String {
    agent_config_with(
        plan, node, paths, key_file, timing, haproxy, kubernetes, None,
    )
}

/// [`agent_config`]; with `cloud`, lb nodes get `provider = "digitalocean"`
/// with the VIP as their Reserved IP, and HAProxy no `frontend` (the agent
/// binds the anchor address it asks the metadata service for).
#[allow(clippy::too_many_arguments)]
pub fn agent_config_with(
    plan: &[NodePlan],
    node: &NodePlan,
    paths: &NodePaths,
    key_file: &Path,
    timing: Profile,
    haproxy: bool,
    kubernetes: bool,
    cloud: Option<&CloudVip>,
) -> String {
    let seeds: Vec<String> = plan
        .iter()
        .take(3)
        .map(|n| format!("{}:{GOSSIP_PORT}", n.addr))
        .collect();
    let voters: Vec<&str> = plan
        .iter()
        .filter(|n| n.voter)
        .map(|n| n.name.as_str())
        .collect();
    let roles: Vec<&str> = node.roles.iter().map(|r| r.as_str()).collect();
    let mut s = String::new();
    s.push_str("# written by kubeha-lab\n");
    s.push_str("cluster = \"lab\"\n");
    s.push_str(&format!("node_name = {}\n", toml_str(&node.name)));
    s.push_str(&format!("roles = {}\n", toml_list(roles)));
    s.push_str(&format!("advertise_addr = \"{}\"\n", node.addr));
    s.push_str(&format!("gossip_port = {GOSSIP_PORT}\n"));
    s.push_str(&format!(
        "seeds = {}\n",
        toml_list(seeds.iter().map(String::as_str))
    ));
    s.push_str(&format!("voters = {}\n", toml_list(voters)));
    s.push_str(&format!(
        "key_file = {}\n",
        toml_str(&key_file.to_string_lossy())
    ));
    // Voters, control planes and lb nodes hold the control key; workers
    // have the cluster key alone.
    if node.voter
        || node
            .roles
            .iter()
            .any(|r| matches!(r, Role::ControlPlane | Role::Lb))
    {
        s.push_str(&format!(
            "control_key_file = {}\n",
            toml_str(&control_key_file(key_file).to_string_lossy())
        ));
    }
    s.push_str(&format!(
        "state_dir = {}\n",
        toml_str(&paths.state_dir().to_string_lossy())
    ));
    s.push_str(&format!(
        "socket = {}\n",
        toml_str(&paths.socket().to_string_lossy())
    ));
    // Each namespace has its own loopback, so every node can use the default.
    s.push_str("metrics_addr = \"127.0.0.1:9946\"\n");
    s.push_str(&format!("timing = \"{}\"\n", timing.as_str()));
    if let Some(priority) = node.priority {
        if let Some(c) = cloud {
            s.push_str("\n[vip]\nprovider = \"digitalocean\"\n");
            s.push_str(&format!("reserved_ip = \"{VIP}\"\n"));
            s.push_str(&format!(
                "token_file = {}\n",
                toml_str(&c.token_file.to_string_lossy())
            ));
            s.push_str(&format!("api_url = {}\n", toml_str(&c.api_url)));
            s.push_str(&format!("metadata_url = {}\n", toml_str(&c.metadata_url)));
            s.push_str(&format!(
                "api_ca_file = {}\n",
                toml_str(&c.api_ca_file.to_string_lossy())
            ));
        } else {
            s.push_str("\n[vip]\nprovider = \"arp\"\n");
            s.push_str(&format!("address = \"{VIP}/32\"\n"));
            s.push_str(&format!("interface = \"{IFACE}\"\n"));
        }
        s.push_str(&format!("priority = {priority}\n"));
        if haproxy {
            s.push_str("\n[haproxy]\n");
            if cloud.is_none() {
                s.push_str(&format!("frontend = \"{VIP}:{VIP_PORT}\"\n"));
            }
            s.push_str(&format!(
                "config_path = {}\n",
                toml_str(&paths.haproxy_cfg().to_string_lossy())
            ));
            s.push_str(&format!(
                "runtime_dir = {}\n",
                toml_str(&paths.haproxy_runtime().to_string_lossy())
            ));
        }
    }
    if kubernetes && is_kube_node(node) {
        s.push_str(&kubernetes_section(paths));
    }
    s
}

/// Control planes and workers are Kubernetes nodes; an lb-only node (the
/// guide topology's load balancers) is not (docs/install.md step 4).
pub fn is_kube_node(node: &NodePlan) -> bool {
    node.roles
        .iter()
        .any(|r| matches!(r, Role::ControlPlane | Role::Worker))
}

/// The `[kubernetes]` section of a node in a Kubernetes lab: the endpoint
/// is the VIP (HAProxy on the lb nodes in front of the apiservers, as
/// docs/install.md step 4 configures it), every tool and directory inside
/// the node's run directory.
fn kubernetes_section(paths: &NodePaths) -> String {
    let tools = paths.tools();
    let tool = |name: &str| toml_str(&tools.join(name).to_string_lossy());
    let run_dir = paths.dir.parent().unwrap_or(&paths.dir);
    let mut s = String::from("\n[kubernetes]\n");
    s.push_str(&format!("control_plane_endpoint = \"{VIP}:{VIP_PORT}\"\n"));
    s.push_str(&format!("kubeadm = {}\n", tool("kubeadm")));
    s.push_str(&format!("kubectl = {}\n", tool("kubectl")));
    s.push_str(&format!("kubelet = {}\n", tool("kubelet")));
    s.push_str(&format!("containerd = {}\n", tool("containerd")));
    s.push_str(&format!(
        "etc_dir = {}\n",
        toml_str(&paths.etc_dir().to_string_lossy())
    ));
    s.push_str(&format!(
        "host_root = {}\n",
        toml_str(&paths.host_root().to_string_lossy())
    ));
    s.push_str(&format!(
        "cni_manifest = {}\n",
        toml_str(&kube_dir(run_dir).join("cni.yaml").to_string_lossy())
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use kubeha_core::config::Config;

    fn parse_all(topology: Topology, nodes: Option<usize>, haproxy: bool) -> Vec<Config> {
        let plan = plan_nodes(topology, nodes).unwrap();
        plan.iter()
            .map(|n| {
                let paths = NodePaths::new(Path::new("/run/kubeha-lab/x"), &n.name);
                let text = agent_config(
                    &plan,
                    n,
                    &paths,
                    Path::new("/run/kubeha-lab/x/cluster.key"),
                    Profile::Fast,
                    haproxy,
                    false,
                );
                Config::parse(&paths.config(), &text, "host")
                    .unwrap_or_else(|e| panic!("{e}\n{text}"))
            })
            .collect()
    }

    #[test]
    fn guide_topology() {
        let c = parse_all(Topology::Guide, Some(2), false);
        let names: Vec<_> = c.iter().map(|c| c.node_name.as_str()).collect();
        assert_eq!(
            names,
            [
                "lb-0", "lb-1", "cp-0", "cp-1", "cp-2", "worker-0", "worker-1"
            ]
        );
        assert_eq!(c[0].voters, ["cp-0", "cp-1", "cp-2"]);
        assert_eq!(c[0].advertise_addr.to_string(), "198.18.0.11");
        assert_eq!(c[6].advertise_addr.to_string(), "198.18.0.17");
        assert_eq!(
            c[0].seeds,
            ["198.18.0.11:7946", "198.18.0.12:7946", "198.18.0.13:7946"]
        );
        assert!(c[0].is_vip_candidate() && c[1].is_vip_candidate());
        assert!(!c[2].is_vip_candidate() && c[2].is_voter());
        assert_eq!(c[0].vip.as_ref().unwrap().priority, 150);
        assert_eq!(c[1].vip.as_ref().unwrap().priority, 100);
        assert!(c[5].vip.is_none() && c[5].has_role(Role::Worker));
        assert_eq!(c[0].timing, Profile::Fast);
        assert_eq!(
            c[3].socket,
            PathBuf::from("/run/kubeha-lab/x/cp-1/kubeha.sock")
        );
    }

    #[test]
    fn compact_and_vip_topologies() {
        let c = parse_all(Topology::Compact, None, true);
        assert_eq!(c.len(), 3);
        for n in &c {
            assert!(n.has_role(Role::ControlPlane) && n.has_role(Role::Lb));
            assert_eq!(n.voters, ["cp-0", "cp-1", "cp-2"]);
            let h = n.haproxy.as_ref().unwrap();
            assert_eq!(h.frontend.to_string(), "198.18.0.10:6443");
            assert!(h.config_path.starts_with("/run/kubeha-lab/x"));
        }
        let c = parse_all(Topology::Vip, Some(5), false);
        let prios: Vec<u8> = c.iter().map(|c| c.vip.as_ref().unwrap().priority).collect();
        assert_eq!(prios, [150, 100, 50, 40, 30]);
        assert_eq!(c[0].vip.as_ref().unwrap().cidr(), "198.18.0.10/32");
        assert_eq!(c[4].voters.len(), 5);
        assert!(c.iter().all(|c| c.haproxy.is_none()));
    }

    #[test]
    fn kubernetes_labs_configure_control_planes_and_workers() {
        for topology in [Topology::Guide, Topology::Compact] {
            let plan = plan_nodes(topology, None).unwrap();
            for n in &plan {
                let paths = NodePaths::new(Path::new("/run/kubeha-lab/x"), &n.name);
                let text = agent_config(
                    &plan,
                    n,
                    &paths,
                    Path::new("/run/kubeha-lab/x/cluster.key"),
                    Profile::Fast,
                    true,
                    true,
                );
                let c = Config::parse(&paths.config(), &text, "host")
                    .unwrap_or_else(|e| panic!("{e}\n{text}"));
                let lb_only = n.roles == [Role::Lb];
                assert_eq!(c.kubernetes.is_none(), lb_only, "{}", n.name);
                assert_eq!(c.haproxy.is_some(), n.roles.contains(&Role::Lb));
                if let Some(k) = &c.kubernetes {
                    assert_eq!(k.control_plane_endpoint, "198.18.0.10:6443");
                    assert_eq!(
                        k.kubeadm,
                        PathBuf::from(format!("/run/kubeha-lab/x/{}/bin/kubeadm", n.name))
                    );
                    assert_eq!(
                        k.etc_dir,
                        PathBuf::from(format!("/run/kubeha-lab/x/{}/etc", n.name))
                    );
                }
            }
        }
    }

    #[test]
    fn cloud_labs_give_lb_nodes_the_digitalocean_provider() {
        use kubeha_core::config::VipProviderKind;
        let plan = plan_nodes(Topology::Guide, None).unwrap();
        let cloud = CloudVip {
            token_file: PathBuf::from("/run/kubeha-lab/x/cloud/do-token"),
            api_url: "https://198.18.0.2:4443".into(),
            metadata_url: "http://198.18.0.2:8080/droplet/3164411".into(),
            api_ca_file: PathBuf::from("/run/kubeha-lab/x/cloud/ca.pem"),
        };
        for n in &plan {
            let paths = NodePaths::new(Path::new("/run/kubeha-lab/x"), &n.name);
            let text = agent_config_with(
                &plan,
                n,
                &paths,
                Path::new("/run/kubeha-lab/x/cluster.key"),
                Profile::Default,
                true,
                false,
                Some(&cloud),
            );
            let c = Config::parse(&paths.config(), &text, "host")
                .unwrap_or_else(|e| panic!("{e}\n{text}"));
            let Some(v) = &c.vip else {
                assert!(n.priority.is_none(), "{}", n.name);
                continue;
            };
            assert_eq!(v.provider, VipProviderKind::Digitalocean);
            assert_eq!(v.address.to_string(), "198.18.0.10");
            assert!(v.interface.is_none());
            let d = v.digitalocean.as_ref().unwrap();
            assert_eq!(d.api_url, cloud.api_url);
            assert_eq!(d.metadata_url, cloud.metadata_url);
            assert_eq!(d.ca_file.as_deref(), Some(cloud.api_ca_file.as_path()));
            assert!(c.haproxy.as_ref().unwrap().frontend_anchor, "{text}");
        }
    }

    #[test]
    fn too_many_nodes_is_refused() {
        assert!(plan_nodes(Topology::Vip, Some(90)).is_err());
        assert!(plan_nodes(Topology::Vip, Some(89)).is_ok());
        assert!(plan_nodes(Topology::Compact, Some(0)).is_err());
    }

    #[test]
    fn toml_strings_are_escaped() {
        assert_eq!(toml_str("a\"b\\c"), "\"a\\\"b\\\\c\"");
    }
}
