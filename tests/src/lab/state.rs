//! A lab's record on disk, so that another process (`kubeha-lab down`,
//! `cleanup`, or the next `up`) can find and remove what it made.
//!
//! `<run dir>/state.json` holds the namespaces, the nodes and every process
//! (pid + start time). `/run/kubeha-lab/.ids/<id>` points from a lab id (the
//! part of the namespace names) to its run directory. Both are written
//! before the first namespace exists, so a namespace with the prefix and no
//! record belongs to nobody.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use kubeha_core::config::Role;
use serde::{Deserialize, Serialize};

use super::error::{LabError, Result};
use super::netns;
use super::process::ProcRecord;
use super::spec::Topology;

pub const RUN_ROOT: &str = "/run/kubeha-lab";
const STATE_FILE: &str = "state.json";

fn ids_dir() -> PathBuf {
    PathBuf::from(RUN_ROOT).join(".ids")
}

/// A node as built.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub name: String,
    pub addr: Ipv4Addr,
    /// Its namespace.
    pub ns: String,
    /// Its port on the bridge (in the switch namespace).
    pub port: String,
    /// MAC of its `eth0`.
    pub mac: String,
    pub roles: Vec<Role>,
    pub voter: bool,
    pub priority: Option<u8>,
}

impl NodeInfo {
    pub fn is_lb(&self) -> bool {
        self.roles.contains(&Role::Lb)
    }
    pub fn is_control_plane(&self) -> bool {
        self.roles.contains(&Role::ControlPlane)
    }
}

/// Processes of one node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeProcs {
    pub agent: Option<ProcRecord>,
    /// keepalived's parent; it leads its process group.
    pub keepalived: Option<ProcRecord>,
    pub keepalived_vrrp: Option<ProcRecord>,
    /// Other daemons started with `Node::spawn` (e.g. a fake apiserver),
    /// by label; each leads its own process group.
    #[serde(default)]
    pub extra: BTreeMap<String, ProcRecord>,
}

impl NodeProcs {
    pub fn all(&self) -> impl Iterator<Item = ProcRecord> + '_ {
        [self.agent, self.keepalived, self.keepalived_vrrp]
            .into_iter()
            .flatten()
            .chain(self.extra.values().copied())
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LabState {
    pub id: String,
    pub name: String,
    pub dir: PathBuf,
    pub topology: Topology,
    pub timing: String,
    pub haproxy: bool,
    pub bin_dir: PathBuf,
    pub key_file: PathBuf,
    pub sw_ns: String,
    pub client_ns: String,
    pub client_mac: String,
    pub nodes: Vec<NodeInfo>,
    /// The process that tears the lab down when it exits; `None` once
    /// detached (`kubeha-lab up`): then only `down` removes it.
    pub owner: Option<ProcRecord>,
    /// Keep the run directory on teardown.
    #[serde(default)]
    pub keep_dir: bool,
    pub procs: BTreeMap<String, NodeProcs>,
    /// Who moves the VIP (`digitalocean`: the lab's stand-in, see
    /// [`super::cloud`]).
    #[serde(default)]
    pub vip_provider: super::spec::VipProvider,
}

impl LabState {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join(STATE_FILE)
    }

    pub fn load(dir: &Path) -> Result<LabState> {
        let p = LabState::path(dir);
        let text = std::fs::read_to_string(&p).map_err(|e| LabError::io(&p, e))?;
        serde_json::from_str(&text).map_err(|e| LabError::State {
            path: p,
            message: e.to_string(),
        })
    }

    /// Write atomically (tmp file + rename), and the id record.
    pub fn save(&self) -> Result<()> {
        let p = LabState::path(&self.dir);
        let tmp = self.dir.join(".state.json.tmp");
        let text = serde_json::to_string_pretty(self).expect("lab state serializes");
        std::fs::write(&tmp, text).map_err(|e| LabError::io(&tmp, e))?;
        std::fs::rename(&tmp, &p).map_err(|e| LabError::io(&p, e))?;
        register_id(&self.id, &self.dir)
    }

    /// Every namespace of this lab (switch first).
    pub fn namespaces(&self) -> Vec<String> {
        let mut v = vec![self.sw_ns.clone(), self.client_ns.clone()];
        v.extend(self.nodes.iter().map(|n| n.ns.clone()));
        v
    }

    /// Someone still answers for this lab: a live owner process, or it was
    /// detached (then `down` is the owner).
    pub fn owned(&self) -> bool {
        match &self.owner {
            Some(o) => o.alive(),
            None => true,
        }
    }

    pub fn owner_description(&self) -> String {
        match &self.owner {
            Some(o) => format!("pid {}", o.pid),
            None => "a detached `kubeha-lab up`".to_string(),
        }
    }
}

pub fn register_id(id: &str, dir: &Path) -> Result<()> {
    let d = ids_dir();
    std::fs::create_dir_all(&d).map_err(|e| LabError::io(&d, e))?;
    let p = d.join(id);
    let want = dir.to_string_lossy();
    if std::fs::read_to_string(&p).ok().as_deref() == Some(&*want) {
        return Ok(());
    }
    std::fs::write(&p, want.as_bytes()).map_err(|e| LabError::io(&p, e))
}

pub fn id_taken(id: &str) -> bool {
    ids_dir().join(id).exists()
        || netns::list_lab()
            .iter()
            .any(|n| netns::lab_id_of(n) == Some(id))
}

fn dir_of_id(id: &str) -> Option<PathBuf> {
    std::fs::read_to_string(ids_dir().join(id))
        .ok()
        .map(|s| PathBuf::from(s.trim()))
}

fn unregister_id(id: &str) {
    let _ = std::fs::remove_file(ids_dir().join(id));
}

/// Kill every recorded process of `state` (verified by start time), every
/// other process left in its namespaces (only this lab puts processes
/// there), delete its namespaces and its records. Returns what it could not
/// do, as messages.
pub fn destroy(state: &LabState, remove_dir: bool) -> Vec<String> {
    let mut problems = Vec::new();
    for procs in state.procs.values() {
        for k in procs.keepalived.iter().chain(procs.extra.values()) {
            k.signal_group(libc::SIGKILL);
        }
        for p in procs.all() {
            p.signal(libc::SIGKILL);
        }
    }
    let mut namespaces = state.namespaces();
    for ns in netns::list_lab() {
        if netns::lab_id_of(&ns) == Some(&state.id) && !namespaces.contains(&ns) {
            namespaces.push(ns);
        }
    }
    destroy_namespaces(&namespaces, &mut problems);
    unregister_id(&state.id);
    let _ = std::fs::remove_file(LabState::path(&state.dir));
    if remove_dir && !state.keep_dir {
        let _ = std::fs::remove_dir_all(&state.dir);
    }
    problems
}

/// Kill what lives in `namespaces` (by pid, never ourselves) and delete them.
fn destroy_namespaces(namespaces: &[String], problems: &mut Vec<String>) {
    let me = std::process::id() as i32;
    for ns in namespaces {
        for pid in netns::pids(ns) {
            if pid != me
                && let Some(rec) = ProcRecord::of(pid)
            {
                rec.signal(libc::SIGKILL);
            }
        }
    }
    for ns in namespaces {
        if let Err(e) = netns::del(ns) {
            problems.push(e.to_string());
        }
    }
}

/// What [`collect_garbage`] removed.
#[derive(Debug, Default)]
pub struct Collected {
    pub namespaces: Vec<String>,
    pub problems: Vec<String>,
}

/// Remove every lab-prefixed namespace whose lab has no live owner (its
/// owner process died without tearing down, or there is no record at all).
/// With `all`, detached labs go too.
pub fn collect_garbage(all: bool) -> Collected {
    let mut out = Collected::default();
    let mut by_id: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut orphans = Vec::new();
    for ns in netns::list_lab() {
        match netns::lab_id_of(&ns) {
            Some(id) => by_id.entry(id.to_string()).or_default().push(ns),
            None => orphans.push(ns),
        }
    }
    // Records whose namespaces are gone but that still claim an id.
    if let Ok(rd) = std::fs::read_dir(ids_dir()) {
        for e in rd.flatten() {
            if let Ok(id) = e.file_name().into_string() {
                by_id.entry(id).or_default();
            }
        }
    }
    for (id, namespaces) in by_id {
        let state = dir_of_id(&id).and_then(|d| LabState::load(&d).ok());
        match state {
            Some(st) if st.owned() && !(all && st.owner.is_none()) => {}
            Some(st) => {
                out.namespaces.extend(namespaces);
                out.problems.extend(destroy(&st, true));
            }
            None => {
                // A lab being created writes its record before its first
                // namespace, so no record means nobody owns these.
                destroy_namespaces(&namespaces, &mut out.problems);
                unregister_id(&id);
                out.namespaces.extend(namespaces);
            }
        }
    }
    destroy_namespaces(&orphans, &mut out.problems);
    out.namespaces.extend(orphans);
    out
}
