//! `kubeha-lab`: droplets as network namespaces on a Linux bridge.
//!
//! ```text
//!  khl<id>-sw      bridge br0, ports p11 p12 ... p100 (veth, bridge side)
//!  khl<id>-<node>  eth0 198.18.0.11/24, .12, ...  kubeha-agent (or keepalived)
//!  khl<id>-client  eth0 198.18.0.100/24           the prober
//!  VIP 198.18.0.10, no default route, nothing in the host namespace
//! ```
//!
//! [`Lab::up`] builds it, [`Lab`]'s `Drop` removes it (namespaces, and every
//! process it started, killed by pid after checking the start time). A lab
//! that must outlive its process ([`Lab::detach`], `kubeha-lab up`) is found
//! again through its run directory ([`Lab::attach`]) and removed with
//! [`Lab::down`]. Labs whose owner died are removed by the next `up` or by
//! [`collect_garbage`].
//!
//! ```no_run
//! use kubeha_tests::lab::{Lab, LabSpec, Prober, Sampler, Topology};
//! let lab = Lab::up(LabSpec::new(Topology::Vip)).unwrap();
//! lab.start_responders().unwrap();
//! let sampler = Sampler::start(&lab).unwrap();
//! let prober = Prober::start(&lab).unwrap();
//! let holder = lab.wait_converged(std::time::Duration::from_secs(20)).unwrap();
//! lab.node(&holder).unwrap().kill().unwrap();
//! ```

pub mod agent;
pub mod bench;
pub mod cloud;
pub mod cloud_bench;
pub mod cmd;
mod converge;
pub mod demo;
pub mod droplets;
pub mod error;
pub mod freeze;
pub mod keepalived;
pub mod kube;
pub mod loss;
pub mod netlink;
pub mod netns;
mod node;
pub mod prober;
pub mod process;
pub mod responder;
mod rng;
pub mod sampler;
mod serial;
pub mod signals;
pub mod soak;
pub mod spec;
pub mod state;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use kubeha_core::api::{Request, Status};
use kubeha_core::config::Config;

pub use error::{LabError, Result};
pub use freeze::{Freeze, Frozen};
pub use keepalived::KaSetting;
pub use node::Node;
pub use prober::{Outcome, Probe, Prober};
pub use process::{ProcRecord, wait_until};
pub use responder::Responder;
pub use sampler::{HolderSummary, Sample, Sampler, VipEvent};
pub use serial::{SerialGuard, serial};
pub use spec::{CLIENT_ADDR, LabSpec, NodePaths, Topology, VIP, VIP_PORT, VipProvider};
pub use state::{LabState, NodeInfo, RUN_ROOT, collect_garbage};

use process::Spawned;
use state::NodeProcs;

/// Processes of one node that this process knows about.
#[derive(Default)]
struct Slots {
    agent: Option<Spawned>,
    keepalived: Option<Spawned>,
    keepalived_vrrp: Option<ProcRecord>,
    extra: BTreeMap<String, Spawned>,
}

impl Slots {
    fn records(&self) -> NodeProcs {
        NodeProcs {
            agent: self.agent.as_ref().map(|s| s.rec),
            keepalived: self.keepalived.as_ref().map(|s| s.rec),
            keepalived_vrrp: self.keepalived_vrrp,
            extra: self.extra.iter().map(|(k, v)| (k.clone(), v.rec)).collect(),
        }
    }

    fn from_records(r: &NodeProcs) -> Slots {
        let attach = |rec: ProcRecord| Spawned {
            rec,
            child: None,
            argv: String::new(),
        };
        Slots {
            agent: r.agent.map(attach),
            keepalived: r.keepalived.map(attach),
            keepalived_vrrp: r.keepalived_vrrp,
            extra: r
                .extra
                .iter()
                .map(|(k, v)| (k.clone(), attach(*v)))
                .collect(),
        }
    }
}

pub(crate) struct Shared {
    /// As built; `procs` and `owner` here are not kept current (see `save`).
    info: LabState,
    owner: Mutex<Option<ProcRecord>>,
    slots: Mutex<BTreeMap<String, Slots>>,
    responders: Mutex<BTreeMap<String, Responder>>,
    /// `digitalocean` labs, in the process that built them: the stand-in.
    cloud: Mutex<Option<Arc<cloud::Cloud>>>,
    /// Drop tears the lab down (false once detached, or when attached).
    owns: AtomicBool,
    torn: AtomicBool,
}

impl Shared {
    fn save(&self) -> Result<()> {
        let mut st = self.info.clone();
        st.owner = *self.owner.lock().unwrap_or_else(|e| e.into_inner());
        st.procs = self
            .slots
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.records()))
            .collect();
        st.save()
    }

    /// Stop everything and delete the namespaces. Idempotent.
    pub(crate) fn teardown(&self) {
        if self.torn.swap(true, Ordering::SeqCst) {
            return;
        }
        // etcd and apiservers that fake-kubeadm started: killed by pid below.
        self.adopt_kube_daemons();
        let responders =
            std::mem::take(&mut *self.responders.lock().unwrap_or_else(|e| e.into_inner()));
        drop(responders);
        let mut slots = std::mem::take(&mut *self.slots.lock().unwrap_or_else(|e| e.into_inner()));
        for s in slots.values_mut() {
            for k in s.keepalived.iter().chain(s.extra.values()) {
                k.rec.signal_group(libc::SIGKILL);
            }
            for p in [&s.agent, &s.keepalived].into_iter().flatten() {
                p.rec.signal(libc::SIGKILL);
            }
            if let Some(v) = s.keepalived_vrrp {
                v.signal(libc::SIGKILL);
            }
        }
        for s in slots.values_mut() {
            for p in [&mut s.agent, &mut s.keepalived]
                .into_iter()
                .flatten()
                .chain(s.extra.values_mut())
            {
                p.wait_gone(Duration::from_secs(2));
            }
        }
        // After the agents: none of them calls the stand-in any more.
        let cloud = self.cloud.lock().unwrap_or_else(|e| e.into_inner()).take();
        drop(cloud);
        let keep = self.info.keep_dir || std::thread::panicking();
        let mut st = self.info.clone();
        st.keep_dir = keep;
        let problems = state::destroy(&st, true);
        for p in &problems {
            eprintln!("kubeha-lab: teardown of `{}`: {p}", self.info.name);
        }
        if keep && std::thread::panicking() {
            eprintln!(
                "kubeha-lab: lab `{}` torn down; logs kept in {}",
                self.info.name,
                self.info.dir.display()
            );
        }
    }
}

/// A running lab. Dropping it tears it down (unless detached or attached).
pub struct Lab {
    sh: Arc<Shared>,
}

/// Needs root: namespaces, veths, bridges.
pub fn require_root() -> Result<()> {
    // SAFETY: plain syscall.
    let uid = unsafe { libc::geteuid() };
    if uid != 0 {
        return Err(LabError::NotRoot(uid));
    }
    cmd::require_tool("ip", "apt-get install -y iproute2")
}

/// For tests: `Some(reason)` when the lab cannot run here.
pub fn skip_reason() -> Option<String> {
    require_root().err().map(|e| e.to_string())
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    let mut f = std::fs::File::open("/dev/urandom").expect("/dev/urandom");
    std::io::Read::read_exact(&mut f, &mut buf).expect("read /dev/urandom");
    buf
}

fn new_id() -> String {
    const ALPHA: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    loop {
        let id: String = random_bytes(4)
            .iter()
            .map(|b| ALPHA[*b as usize % ALPHA.len()] as char)
            .collect();
        if !state::id_taken(&id) {
            return id;
        }
    }
}

fn check_lab_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 40
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && !name.starts_with(['-', '.']);
    if ok {
        Ok(())
    } else {
        Err(LabError::Invalid(format!(
            "lab name `{name}`: use 1-40 lowercase letters, digits, `-` or `_`"
        )))
    }
}

fn mac_of(addr: Ipv4Addr) -> String {
    // Locally administered, c6:12 = 198.18, last byte = the last octet: a
    // MAC seen in the client's neighbour table names its node.
    format!("02:00:c6:12:00:{:02x}", addr.octets()[3])
}

/// A node without the control key (a worker) verifies role proofs with its
/// public half, as docs/install.md tells users to configure it.
fn with_public_keys(config: String, control_b64: &str) -> String {
    if config.contains("control_key_file") {
        return config;
    }
    let ring = kubeha_core::frame::Keyring::parse(control_b64).expect("the lab's own control key");
    let keys: Vec<String> = kubeha_core::proof::ProofKey::of_ring(&ring)
        .iter()
        .map(|k| format!("\"{k}\""))
        .collect();
    config.replacen(
        "\nstate_dir = ",
        &format!(
            "\ncontrol_public_keys = [{}]\nstate_dir = ",
            keys.join(", ")
        ),
        1,
    )
}

fn mkdir(p: &Path) -> Result<()> {
    std::fs::create_dir_all(p).map_err(|e| LabError::io(p, e))
}

/// The client's neighbour entry for the VIP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientNeigh {
    pub mac: Option<String>,
    /// `REACHABLE`, `STALE`, `FAILED`, ... or `none`.
    pub state: String,
    /// The node whose MAC it is.
    pub node: Option<String>,
}

impl Lab {
    /// Build a lab: namespaces, bridge, links, addresses, the cluster key and
    /// every node's config; starts the agents unless
    /// [`LabSpec::without_agents`].
    pub fn up(spec: LabSpec) -> Result<Lab> {
        require_root()?;
        let plan = spec.plan().map_err(LabError::Invalid)?;
        if spec.kubernetes && spec.vip_provider == VipProvider::Digitalocean {
            // Only the client's namespace routes the Reserved IP; the
            // Kubernetes nodes would not reach their endpoint through it.
            return Err(LabError::Invalid(
                "a Kubernetes lab with the digitalocean VIP provider is not built yet (the Reserved IP is routed from the client namespace only)".into(),
            ));
        }
        let gc = state::collect_garbage(false);
        if !gc.namespaces.is_empty() {
            tracing::info!(namespaces = ?gc.namespaces, "removed leftovers of labs whose owner died");
        }
        let id = new_id();
        let name = spec.name.clone().unwrap_or_else(|| format!("t{id}"));
        check_lab_name(&name)?;
        let dir = spec
            .dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(RUN_ROOT).join(&name));
        if LabState::path(&dir).exists() {
            match LabState::load(&dir) {
                Ok(old) if old.owned() && netns::exists(&old.sw_ns) => {
                    return Err(LabError::AlreadyUp {
                        name,
                        owner: old.owner_description(),
                    });
                }
                Ok(old) => {
                    tracing::info!(lab = %name, id = %old.id, "removing leftovers of an earlier lab of the same name");
                    for p in state::destroy(&old, false) {
                        tracing::warn!(lab = %name, problem = %p, "leftover cleanup");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "ignoring an unreadable earlier lab state"),
            }
            let _ = std::fs::remove_dir_all(&dir);
        }
        let bin_dir = spec.bin_dir.clone().unwrap_or_else(spec::default_bin_dir);
        if spec.kubernetes {
            kube::check_tools(&bin_dir)?;
        }
        mkdir(&dir)?;
        let ns = |suffix: &str| format!("{}{id}-{suffix}", netns::PREFIX);
        let nodes: Vec<NodeInfo> = plan
            .iter()
            .map(|p| NodeInfo {
                name: p.name.clone(),
                addr: p.addr,
                ns: ns(&p.name),
                port: format!("p{}", p.addr.octets()[3]),
                mac: mac_of(p.addr),
                roles: p.roles.clone(),
                voter: p.voter,
                priority: p.priority,
            })
            .collect();
        let info = LabState {
            id: id.clone(),
            name: name.clone(),
            dir: dir.clone(),
            topology: spec.topology,
            timing: spec.timing.as_str().to_string(),
            haproxy: spec.haproxy,
            bin_dir,
            key_file: dir.join("cluster.key"),
            sw_ns: ns("sw"),
            client_ns: ns("client"),
            client_mac: mac_of(CLIENT_ADDR),
            nodes,
            owner: ProcRecord::of(std::process::id() as i32),
            keep_dir: spec.keep_dir,
            procs: BTreeMap::new(),
            vip_provider: spec.vip_provider,
        };
        let sh = Arc::new(Shared {
            owner: Mutex::new(info.owner),
            slots: Mutex::new(BTreeMap::new()),
            responders: Mutex::new(BTreeMap::new()),
            cloud: Mutex::new(None),
            owns: AtomicBool::new(true),
            torn: AtomicBool::new(false),
            info,
        });
        // Recorded before the first namespace exists (see `state`).
        sh.save()?;
        signals::register(Arc::downgrade(&sh));
        let lab = Lab { sh };
        let t = Instant::now();
        lab.build_network()?;
        if spec.vip_provider == VipProvider::Digitalocean {
            let c = cloud::Cloud::start(
                lab.dir(),
                lab.switch_ns(),
                lab.client_ns(),
                lab.nodes(),
                spec.action_latency,
            )?;
            *lab.sh.cloud.lock().unwrap() = Some(Arc::new(c));
        }
        lab.write_configs(&plan, &spec)?;
        tracing::info!(lab = %name, id = %id, nodes = lab.nodes().len(), ms = t.elapsed().as_millis() as u64, "lab network up");
        if spec.start_agents {
            for n in lab.nodes() {
                lab.node(&n.name)?.start()?;
            }
        }
        Ok(lab)
    }

    /// Find a lab left running by `kubeha-lab up` (its run directory).
    /// Dropping the returned value leaves the lab running; [`Lab::down`]
    /// removes it.
    pub fn attach(dir: &Path) -> Result<Lab> {
        let info = LabState::load(dir)?;
        let slots = info
            .procs
            .iter()
            .map(|(k, v)| (k.clone(), Slots::from_records(v)))
            .collect();
        Ok(Lab {
            sh: Arc::new(Shared {
                owner: Mutex::new(info.owner),
                slots: Mutex::new(slots),
                responders: Mutex::new(BTreeMap::new()),
                cloud: Mutex::new(None),
                owns: AtomicBool::new(false),
                torn: AtomicBool::new(false),
                info,
            }),
        })
    }

    /// The run directory of the lab called `name` in the default location.
    pub fn default_dir(name: &str) -> PathBuf {
        PathBuf::from(RUN_ROOT).join(name)
    }

    /// Leave the lab running after this value is dropped: processes keep
    /// running, only `kubeha-lab down` (or [`Lab::down`]) removes it.
    pub fn detach(self) -> Result<PathBuf> {
        *self.sh.owner.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.sh.owns.store(false, Ordering::SeqCst);
        self.sh.save()?;
        Ok(self.sh.info.dir.clone())
    }

    /// Tear down now.
    pub fn down(self) {
        self.sh.teardown();
    }

    pub fn id(&self) -> &str {
        &self.sh.info.id
    }
    pub fn name(&self) -> &str {
        &self.sh.info.name
    }
    pub fn dir(&self) -> &Path {
        &self.sh.info.dir
    }
    pub fn topology(&self) -> Topology {
        self.sh.info.topology
    }
    pub fn timing(&self) -> &str {
        &self.sh.info.timing
    }
    pub fn bin_dir(&self) -> &Path {
        &self.sh.info.bin_dir
    }
    pub fn nodes(&self) -> &[NodeInfo] {
        &self.sh.info.nodes
    }
    pub fn client_ns(&self) -> &str {
        &self.sh.info.client_ns
    }
    pub fn switch_ns(&self) -> &str {
        &self.sh.info.sw_ns
    }
    pub fn key_file(&self) -> &Path {
        &self.sh.info.key_file
    }

    /// Who moves the VIP in this lab.
    pub fn vip_provider(&self) -> VipProvider {
        self.sh.info.vip_provider
    }

    /// The DigitalOcean stand-in of a `digitalocean` lab, in the process
    /// that built it (`None` elsewhere, e.g. after [`Lab::attach`]).
    pub fn cloud(&self) -> Option<Arc<cloud::Cloud>> {
        self.sh
            .cloud
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// `digitalocean` labs: the node the client's route sends the VIP's
    /// traffic to (the stand-in's assignee), read from the route itself.
    pub fn cloud_routed_node(&self) -> Result<Option<String>> {
        if let Some(c) = self.cloud() {
            return Ok(c.routed_node());
        }
        let to = cloud::route_of(self.client_ns())?;
        Ok(to.and_then(|a| {
            self.nodes()
                .iter()
                .find(|n| cloud::anchor_addr(n.addr) == a)
                .map(|n| n.name.clone())
        }))
    }

    /// The control key (voters, control planes and lb nodes hold it).
    pub fn control_key_file(&self) -> PathBuf {
        spec::control_key_file(self.key_file())
    }
    /// Every namespace of the lab.
    pub fn namespaces(&self) -> Vec<String> {
        self.sh.info.namespaces()
    }
    pub fn vip_target(&self) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(VIP, VIP_PORT))
    }

    pub fn node(&self, name: &str) -> Result<Node<'_>> {
        self.sh
            .info
            .nodes
            .iter()
            .find(|n| n.name == name)
            .map(|info| Node { lab: self, info })
            .ok_or_else(|| LabError::NoNode(name.to_string()))
    }

    /// Nodes with role `lb` (VIP candidates), in priority order.
    pub fn lb_nodes(&self) -> Vec<&NodeInfo> {
        self.nodes().iter().filter(|n| n.is_lb()).collect()
    }

    /// The node owning `mac`, if any.
    pub fn node_by_mac(&self, mac: &str) -> Option<&NodeInfo> {
        let mac = mac.to_ascii_lowercase();
        self.nodes().iter().find(|n| n.mac == mac)
    }

    fn build_network(&self) -> Result<()> {
        let i = &self.sh.info;
        netns::add(&i.sw_ns)?;
        cmd::ip_n(
            &i.sw_ns,
            [
                "link",
                "add",
                spec::BRIDGE,
                "type",
                "bridge",
                "stp_state",
                "0",
                "forward_delay",
                "0",
                "mcast_snooping",
                "0",
            ],
        )?;
        cmd::ip_n(&i.sw_ns, ["link", "set", spec::BRIDGE, "up"])?;
        let mut ends: Vec<(&str, &str, Ipv4Addr, &str)> = i
            .nodes
            .iter()
            .map(|n| (n.ns.as_str(), n.port.as_str(), n.addr, n.mac.as_str()))
            .collect();
        let client_port = format!("p{}", CLIENT_ADDR.octets()[3]);
        ends.push((&i.client_ns, &client_port, CLIENT_ADDR, &i.client_mac));
        for (ns, port, addr, mac) in ends {
            netns::add(ns)?;
            cmd::ip_n(
                &i.sw_ns,
                [
                    "link",
                    "add",
                    port,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    spec::IFACE,
                    "address",
                    mac,
                    "netns",
                    ns,
                ],
            )?;
            cmd::ip_n(
                &i.sw_ns,
                ["link", "set", port, "master", spec::BRIDGE, "up"],
            )?;
            let cidr = format!("{addr}/{}", spec::PREFIX_LEN);
            cmd::ip_n(ns, ["addr", "add", &cidr, "dev", spec::IFACE])?;
            cmd::ip_n(ns, ["link", "set", spec::IFACE, "up"])?;
        }
        for n in &i.nodes {
            // The responder binds the VIP before the node holds it.
            netns::write_sysctl(&n.ns, "net/ipv4/ip_nonlocal_bind", "1")?;
        }
        Ok(())
    }

    fn write_configs(&self, plan: &[spec::NodePlan], spec: &LabSpec) -> Result<()> {
        let key_file = self.key_file();
        let key = base64::engine::general_purpose::STANDARD.encode(random_bytes(32));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(key_file)
            .map_err(|e| LabError::io(key_file, e))?;
        writeln!(f, "{key}").map_err(|e| LabError::io(key_file, e))?;
        let control_file = self.control_key_file();
        let control = base64::engine::general_purpose::STANDARD.encode(random_bytes(32));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&control_file)
            .map_err(|e| LabError::io(&control_file, e))?;
        writeln!(f, "{control}").map_err(|e| LabError::io(&control_file, e))?;
        if spec.kubernetes {
            kube::prepare_lab(self.dir())?;
        }
        for p in plan {
            let paths = NodePaths::new(self.dir(), &p.name);
            mkdir(&paths.dir)?;
            mkdir(&paths.state_dir())?;
            if spec.haproxy && p.priority.is_some() {
                mkdir(&paths.haproxy_runtime())?;
            }
            if spec.kubernetes && spec::is_kube_node(p) {
                kube::prepare_node(self.dir(), self.bin_dir(), &paths)?;
            }
            let cloud_vip = self.cloud().and_then(|c| c.vip_config(&p.name));
            let text = spec::agent_config_with(
                plan,
                p,
                &paths,
                key_file,
                spec.timing,
                spec.haproxy,
                spec.kubernetes,
                cloud_vip.as_ref(),
            );
            let text = with_public_keys(text, &control);
            let cfg = paths.config();
            // The lab must never hand the agent a config it rejects.
            Config::parse(&cfg, &text, &p.name)
                .map_err(|e| LabError::Invalid(format!("the lab wrote a bad config: {e}")))?;
            std::fs::write(&cfg, text).map_err(|e| LabError::io(&cfg, e))?;
        }
        Ok(())
    }

    /// Where the responder of `node` listens: the VIP, except with HAProxy
    /// (HAProxy takes VIP:6443 on lb nodes; control planes then answer on
    /// their own address, as an apiserver would; lb-only nodes get none).
    pub fn responder_bind(&self, node: &NodeInfo) -> Option<SocketAddr> {
        if self.sh.info.haproxy {
            node.is_control_plane()
                .then_some(SocketAddr::V4(SocketAddrV4::new(node.addr, VIP_PORT)))
        } else {
            Some(self.vip_target())
        }
    }

    /// Start a responder on every node that gets one.
    pub fn start_responders(&self) -> Result<()> {
        for n in self.nodes() {
            if self.responder_bind(n).is_some() {
                self.node(&n.name)?.start_responder()?;
            }
        }
        Ok(())
    }

    /// Nodes whose interfaces have the VIP right now (one netlink dump each).
    pub fn vip_holders(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for n in self.nodes() {
            if self.node(&n.name)?.has_vip()? {
                out.push(n.name.clone());
            }
        }
        Ok(out)
    }

    /// The client's neighbour entry for the VIP (`ip neigh`).
    pub fn client_neigh(&self) -> Result<ClientNeigh> {
        let out = cmd::ip_n(
            self.client_ns(),
            ["neigh", "show", &VIP.to_string(), "dev", spec::IFACE],
        )?;
        Ok(self.parse_neigh(&out))
    }

    fn parse_neigh(&self, out: &str) -> ClientNeigh {
        let words: Vec<&str> = out.split_whitespace().collect();
        let mac = words
            .iter()
            .position(|w| *w == "lladdr")
            .and_then(|i| words.get(i + 1))
            .map(|m| m.to_ascii_lowercase());
        let state = words.last().map(|s| s.to_string()).unwrap_or("none".into());
        let node = mac
            .as_deref()
            .and_then(|m| self.node_by_mac(m))
            .map(|n| n.name.clone());
        ClientNeigh { mac, state, node }
    }

    /// Forget the client's neighbour entry for the VIP.
    pub fn client_neigh_flush(&self) -> Result<()> {
        cmd::ip_n(
            self.client_ns(),
            ["neigh", "flush", "to", &VIP.to_string(), "dev", spec::IFACE],
        )
        .map(|_| ())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.sh.owns.load(Ordering::SeqCst) {
            self.sh.teardown();
        }
    }
}

/// Start a daemon in `ns` through `ip netns exec` (which execs in place, so
/// the pid is the daemon's), as the leader of a new session.
fn spawn_ns(ns: &str, program: &Path, args: &[String], log: &Path) -> Result<Spawned> {
    let mut full = vec![
        "netns".to_string(),
        "exec".to_string(),
        ns.to_string(),
        program.to_string_lossy().into_owned(),
    ];
    full.extend(args.iter().cloned());
    process::spawn_in_netns(ns, Path::new("ip"), &full, log)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_name_their_node() {
        assert_eq!(mac_of(Ipv4Addr::new(198, 18, 0, 11)), "02:00:c6:12:00:0b");
        assert_eq!(mac_of(CLIENT_ADDR), "02:00:c6:12:00:64");
    }

    #[test]
    fn lab_names() {
        assert!(check_lab_name("lab").is_ok());
        assert!(check_lab_name("bench-1_x").is_ok());
        assert!(check_lab_name("Lab").is_err());
        assert!(check_lab_name("a/b").is_err());
        assert!(check_lab_name("").is_err());
    }
}
