//! The lab as a DigitalOcean VPC: one stand-in of the Reserved IP API and
//! the metadata service ([`crate::do_standin`]) on the switch namespace, the
//! lb agents' `digitalocean` provider pointed at it, and the "Reserved IP"
//! (the lab's VIP) routed to whichever node the stand-in says it is assigned
//! to. No kernel VIP moves: the cloud decides, the client follows.
//!
//! ```text
//!  khl<id>-sw      br0 198.18.0.2/24: the stand-in, HTTPS API (its own CA,
//!                  given to the agents as `vip.api_ca_file`) and plain-HTTP
//!                  metadata (`/droplet/<id>/metadata/v1/...`)
//!  khl<id>-lb-0    eth0 198.18.0.11/24 + anchor 198.18.0.111/24: HAProxy
//!                  binds the anchor address (no `haproxy.frontend`)
//!  khl<id>-client  nftables table `ip khl_cloud`: output nat,
//!                  `ip daddr 198.18.0.10 dnat to <anchor of the assignee>`,
//!                  rewritten by a thread whenever `assigned_to()` changes
//! ```
//!
//! Droplet ids are `3164400 + last octet` of the node's address; the anchor
//! address is the node's address + 100 in the last octet (lb nodes are .11
//! and up, so anchors stay inside 198.18.0.0/24). One API token for the lab,
//! random, in `<run dir>/cloud/do-token` (0600), never on a command line.
//!
//! The stand-in runs inside the process that built the lab: a lab with this
//! provider lives as long as that process (`kubeha-lab up --foreground`,
//! `bench`, tests).

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::do_standin::{DoStandin, StandinOptions};
use kubeha_core::api::{Request, Response};

use super::error::{LabError, Result};
use super::spec::{self, CloudVip, NodePaths, VIP};
use super::state::NodeInfo;
use super::{agent, cmd, netns};

/// The stand-in's address, on the switch namespace's bridge.
pub const CLOUD_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// The nftables table in the client namespace that routes the VIP.
pub const TABLE: &str = "khl_cloud";
const DROPLET_BASE: u64 = 3_164_400;
/// How often the route follows the stand-in.
pub const ROUTE_POLL: Duration = Duration::from_millis(10);

/// The droplet id of the node at `addr`.
pub fn droplet_id(addr: Ipv4Addr) -> u64 {
    DROPLET_BASE + u64::from(addr.octets()[3])
}

/// The anchor address of the node at `addr` (last octet + 100).
pub fn anchor_addr(addr: Ipv4Addr) -> Ipv4Addr {
    let o = addr.octets();
    Ipv4Addr::new(o[0], o[1], o[2], o[3].saturating_add(100))
}

/// The nft script that (re)creates [`TABLE`]: the VIP's traffic from the
/// client goes to `target` (a node's anchor address), or nowhere when the
/// Reserved IP is assigned to no droplet (then nobody answers ARP for it).
pub fn route_script(target: Option<Ipv4Addr>) -> String {
    let rule = match target {
        Some(a) => format!("\x20   ip daddr {VIP} counter dnat ip to {a}\n"),
        None => String::new(),
    };
    format!(
        "add table ip {TABLE}\n\
         delete table ip {TABLE}\n\
         table ip {TABLE} {{\n\
         \x20 chain output {{\n\
         \x20   type nat hook output priority -100; policy accept;\n\
         {rule}\
         \x20 }}\n\
         }}\n"
    )
}

/// The DNAT target in an `nft list table ip khl_cloud` listing.
pub fn parse_route(listing: &str) -> Option<Ipv4Addr> {
    let words: Vec<&str> = listing.split_whitespace().collect();
    words
        .windows(3)
        .find(|w| w[0] == "dnat" && w[1] == "to")
        .and_then(|w| w[2].parse().ok())
        .or_else(|| {
            words
                .windows(4)
                .find(|w| w[0] == "dnat" && w[1] == "ip" && w[2] == "to")
                .and_then(|w| w[3].parse().ok())
        })
}

/// Route the VIP from namespace `ns` to `target` (atomically: one `nft -f`).
pub fn set_route(ns: &str, target: Option<Ipv4Addr>) -> Result<()> {
    cmd::nft_in(ns, TABLE, &route_script(target))
}

/// Where the VIP is routed from namespace `ns` now (read back from nft).
pub fn route_of(ns: &str) -> Result<Option<Ipv4Addr>> {
    let out = cmd::run(
        Command::new("ip").args(["netns", "exec", ns, "nft", "list", "table", "ip", TABLE]),
    )?;
    Ok(parse_route(&String::from_utf8_lossy(&out.stdout)))
}

/// The route moved (the stand-in's assignment changed and nft applied it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteChange {
    /// When the new rule was in place.
    pub at: Instant,
    pub droplet: Option<u64>,
    pub node: Option<String>,
}

/// A droplet of the lab's cloud: an lb node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Droplet {
    pub node: String,
    pub id: u64,
    pub anchor: Ipv4Addr,
}

/// The stand-in of a lab and the thread that routes the VIP after it.
pub struct Cloud {
    standin: Arc<DoStandin>,
    droplets: Vec<Droplet>,
    token_file: PathBuf,
    routes: Arc<Mutex<Vec<RouteChange>>>,
    stop: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

fn random_token() -> String {
    let mut buf = [0u8; 24];
    let mut f = std::fs::File::open("/dev/urandom").expect("/dev/urandom");
    std::io::Read::read_exact(&mut f, &mut buf).expect("read /dev/urandom");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

impl Cloud {
    /// Bring up the cloud of a lab whose network is built: the stand-in's
    /// address on the bridge, an anchor address on every lb node, the token
    /// file, the stand-in, the (empty) route and the thread that keeps it.
    pub(crate) fn start(
        dir: &Path,
        sw_ns: &str,
        client_ns: &str,
        nodes: &[NodeInfo],
        action_latency: Duration,
    ) -> Result<Cloud> {
        let cidr = |a: Ipv4Addr| format!("{a}/{}", spec::PREFIX_LEN);
        cmd::ip_n(
            sw_ns,
            ["addr", "add", &cidr(CLOUD_ADDR), "dev", spec::BRIDGE],
        )?;
        let mut droplets = Vec::new();
        for n in nodes.iter().filter(|n| n.is_lb()) {
            let anchor = anchor_addr(n.addr);
            cmd::ip_n(&n.ns, ["addr", "add", &cidr(anchor), "dev", spec::IFACE])?;
            droplets.push(Droplet {
                node: n.name.clone(),
                id: droplet_id(n.addr),
                anchor,
            });
        }
        let cloud_dir = dir.join("cloud");
        std::fs::create_dir_all(&cloud_dir).map_err(|e| LabError::io(&cloud_dir, e))?;
        let token_file = cloud_dir.join("do-token");
        let token = random_token();
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&token_file)
            .map_err(|e| LabError::io(&token_file, e))?;
        writeln!(f, "{token}").map_err(|e| LabError::io(&token_file, e))?;
        let opts = StandinOptions {
            token,
            reserved_ip: IpAddr::V4(VIP),
            droplets: droplets.iter().map(|d| (d.id, d.anchor)).collect(),
            action_latency,
            dir: cloud_dir.clone(),
            listen: IpAddr::V4(CLOUD_ADDR),
        };
        let standin = netns::run_in(sw_ns, move || DoStandin::start(opts))?
            .map_err(|e| LabError::Invalid(format!("the DigitalOcean stand-in in {sw_ns}: {e}")))?;
        let standin = Arc::new(standin);
        set_route(client_ns, None)?;
        let routes = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (s, r, stop, ns) = (
                standin.clone(),
                routes.clone(),
                stop.clone(),
                client_ns.to_string(),
            );
            let ds = droplets.clone();
            std::thread::Builder::new()
                .name("khl-cloud-route".into())
                .spawn(move || route_loop(&s, &ds, &ns, &r, &stop))
                .map_err(|e| LabError::io(Path::new("khl-cloud-route thread"), e))?
        };
        tracing::info!(api = %standin.api_url(), droplets = droplets.len(), "DigitalOcean stand-in up");
        Ok(Cloud {
            standin,
            droplets,
            token_file,
            routes,
            stop,
            thread: Mutex::new(Some(thread)),
        })
    }

    pub fn standin(&self) -> &DoStandin {
        &self.standin
    }

    pub fn droplets(&self) -> &[Droplet] {
        &self.droplets
    }

    pub fn token_file(&self) -> &Path {
        &self.token_file
    }

    pub fn droplet_of(&self, node: &str) -> Option<u64> {
        self.droplets.iter().find(|d| d.node == node).map(|d| d.id)
    }

    pub fn node_of(&self, droplet: u64) -> Option<&str> {
        self.droplets
            .iter()
            .find(|d| d.id == droplet)
            .map(|d| d.node.as_str())
    }

    /// The node the stand-in routes the Reserved IP to now.
    pub fn assigned_node(&self) -> Option<String> {
        self.standin
            .assigned_to()
            .and_then(|d| self.node_of(d))
            .map(str::to_string)
    }

    /// The node whose anchor the client's route points at now.
    pub fn routed_node(&self) -> Option<String> {
        self.routes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last()
            .and_then(|r| r.node.clone())
    }

    /// Every change of the route, in order.
    pub fn routes(&self) -> Vec<RouteChange> {
        self.routes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The `[vip]` settings of `node`.
    pub fn vip_config(&self, node: &str) -> Option<CloudVip> {
        let id = self.droplet_of(node)?;
        Some(CloudVip {
            token_file: self.token_file.clone(),
            api_url: self.standin.api_url(),
            metadata_url: self.standin.metadata_url(id),
            api_ca_file: self.standin.ca_file().to_path_buf(),
        })
    }

    fn halt(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let t = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = t {
            let _ = t.join();
        }
    }
}

impl Drop for Cloud {
    fn drop(&mut self) {
        self.halt();
    }
}

fn route_loop(
    s: &DoStandin,
    droplets: &[Droplet],
    ns: &str,
    routes: &Mutex<Vec<RouteChange>>,
    stop: &AtomicBool,
) {
    let mut last: Option<Option<u64>> = None;
    while !stop.load(Ordering::SeqCst) {
        let now = s.assigned_to();
        if last != Some(now) {
            let d = now.and_then(|id| droplets.iter().find(|d| d.id == id));
            match set_route(ns, d.map(|d| d.anchor)) {
                Ok(()) => {
                    routes
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(RouteChange {
                            at: Instant::now(),
                            droplet: now,
                            node: d.map(|d| d.node.clone()),
                        });
                    tracing::debug!(droplet = ?now, "the Reserved IP's route moved");
                    last = Some(now);
                }
                // The namespace goes away at teardown; retried otherwise.
                Err(e) => tracing::warn!(error = %e, "routing the Reserved IP"),
            }
        }
        std::thread::sleep(ROUTE_POLL);
    }
}

// ------------------------------------------------------------ lease samples

/// One status answer (or none) of an lb node's agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseSample {
    pub node: String,
    /// The status request was sent ...
    pub sent: Instant,
    /// ... and answered (or failed) here; the state is from in between.
    pub done: Instant,
    /// `None`: the agent did not answer (not running).
    pub held_here: Option<bool>,
}

/// Every `interval`, the status of every lb node's agent: who says it holds
/// the lease, as the lab sees it.
pub struct LeaseSampler {
    samples: Arc<Mutex<Vec<LeaseSample>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

/// How long a lease sample waits for the agent's status.
pub const LEASE_SAMPLE_TIMEOUT: Duration = Duration::from_millis(200);

impl LeaseSampler {
    /// One thread per lb node (a frozen agent stalls only its own samples),
    /// each status request bounded by [`LEASE_SAMPLE_TIMEOUT`].
    pub fn start(lab: &super::Lab, interval: Duration) -> Result<LeaseSampler> {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for n in lab.lb_nodes() {
            let node = n.name.clone();
            let sock = NodePaths::new(lab.dir(), &n.name).socket();
            let (sm, st) = (samples.clone(), stop.clone());
            let t = std::thread::Builder::new()
                .name(format!("khl-lease-{node}"))
                .spawn(move || {
                    while !st.load(Ordering::SeqCst) {
                        let sent = Instant::now();
                        let held_here =
                            match agent::request(&sock, &Request::Status, LEASE_SAMPLE_TIMEOUT) {
                                Ok(Response::Status(s)) => Some(s.vip.is_some_and(|v| v.held_here)),
                                _ => None,
                            };
                        let done = Instant::now();
                        sm.lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(LeaseSample {
                                node: node.clone(),
                                sent,
                                done,
                                held_here,
                            });
                        if let Some(rest) = interval.checked_sub(sent.elapsed()) {
                            std::thread::sleep(rest);
                        }
                    }
                })
                .map_err(|e| LabError::io(Path::new("khl-lease-sampler thread"), e))?;
            threads.push(t);
        }
        Ok(LeaseSampler {
            samples,
            stop,
            threads,
        })
    }

    pub fn samples(&self) -> Vec<LeaseSample> {
        self.samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The first sample sent at or after `t` in which `node` says it holds.
    pub fn first_held(&self, node: &str, t: Instant) -> Option<LeaseSample> {
        self.samples()
            .into_iter()
            .filter(|s| s.node == node && s.sent >= t && s.held_here == Some(true))
            .min_by_key(|s| s.sent)
    }
}

impl Drop for LeaseSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Assign calls that no lease hold of their node covers, as far as the
/// samples tell: for a call from `node` at `t`, the last answered sample of
/// `node` finished before `t` and the first answered one started after `t`
/// both say "not holding" (so the call fell inside a stretch in which the
/// node was seen without the lease). A call with an answered neighbour
/// sample that says "holding" is covered; so is a call with no answered
/// sample on either side (nothing is known). Returns `(t, node, why)`.
pub fn uncovered_assigns(
    calls: &[(Instant, String)],
    samples: &[LeaseSample],
) -> Vec<(Instant, String, String)> {
    let mut out = Vec::new();
    for (t, node) in calls {
        let mine = samples
            .iter()
            .filter(|s| s.node == *node && s.held_here.is_some());
        let before = mine.clone().filter(|s| s.done <= *t).max_by_key(|s| s.done);
        let after = mine.filter(|s| s.sent >= *t).min_by_key(|s| s.sent);
        let held = |s: &Option<&LeaseSample>| s.is_some_and(|s| s.held_here == Some(true));
        if (before.is_some() || after.is_some()) && !held(&before) && !held(&after) {
            out.push((
                *t,
                node.clone(),
                format!(
                    "samples around it say not holding (before: {:?}, after: {:?})",
                    before.map(|s| s.held_here),
                    after.map(|s| s.held_here)
                ),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_anchors() {
        let a = Ipv4Addr::new(198, 18, 0, 11);
        assert_eq!(droplet_id(a), 3_164_411);
        assert_eq!(anchor_addr(a), Ipv4Addr::new(198, 18, 0, 111));
    }

    #[test]
    fn route_script_dnats_the_vip_only() {
        let s = route_script(Some(Ipv4Addr::new(198, 18, 0, 112)));
        assert!(s.starts_with("add table ip khl_cloud\ndelete table ip khl_cloud\n"));
        assert!(s.contains("type nat hook output"), "{s}");
        assert!(
            s.contains("ip daddr 198.18.0.10 counter dnat ip to 198.18.0.112"),
            "{s}"
        );
        assert!(!route_script(None).contains("dnat"));
    }

    #[test]
    fn routes_are_read_back() {
        let listing = "table ip khl_cloud {\n\tchain output {\n\t\ttype nat hook output priority dstnat; policy accept;\n\t\tip daddr 198.18.0.10 counter packets 3 bytes 180 dnat to 198.18.0.111\n\t}\n}\n";
        assert_eq!(parse_route(listing), Some(Ipv4Addr::new(198, 18, 0, 111)));
        assert_eq!(
            parse_route("ip daddr 198.18.0.10 dnat ip to 198.18.0.112"),
            Some(Ipv4Addr::new(198, 18, 0, 112))
        );
        assert_eq!(parse_route("table ip khl_cloud {\n}\n"), None);
    }

    #[test]
    fn assigns_are_checked_against_the_samples_around_them() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let s = |node: &str, ms: u64, held: Option<bool>| LeaseSample {
            node: node.into(),
            sent: at(ms),
            done: at(ms + 2),
            held_here: held,
        };
        let samples = vec![
            s("lb-0", 0, Some(false)),
            s("lb-0", 20, Some(true)),
            s("lb-0", 40, Some(true)),
            s("lb-0", 60, Some(false)),
            s("lb-0", 80, Some(false)),
            s("lb-0", 100, None),
        ];
        let c = |ms: u64| (at(ms), "lb-0".to_string());
        // Just gained (before: not holding, after: holding), in the hold,
        // just before it ended: covered.
        assert!(uncovered_assigns(&[c(10), c(30), c(50)], &samples).is_empty());
        // Between two "not holding" samples: after the lease ended.
        let bad = uncovered_assigns(&[c(70)], &samples);
        assert_eq!(bad.len(), 1, "{bad:?}");
        // After the last answered "not holding" sample, nothing answered
        // after it: still uncovered (the node was last seen not holding).
        assert_eq!(uncovered_assigns(&[c(105)], &samples).len(), 1);
        // A node with no sample at all: nothing is known.
        assert!(uncovered_assigns(&[(at(10), "lb-1".into())], &samples).is_empty());
    }
}
