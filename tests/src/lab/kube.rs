//! Kubernetes in the namespace lab ([`LabSpec::kubernetes`],
//! `kubeha-lab up --kubernetes`): zero-touch kubeadm with nobody touching a
//! node.
//!
//! Every control plane and worker gets `[kubernetes]` as docs/install.md
//! configures it (endpoint = the VIP, port 6443: HAProxy on the lb nodes in
//! front of the apiservers), with every path inside its run directory
//! ([`NodePaths`]):
//!
//! ```text
//!  <run>/<node>/bin/   kubeadm: a wrapper that sets the node's FAKE_KUBEADM_*
//!                      and execs fake-kubeadm; kubectl, kubelet, containerd,
//!                      modprobe, sysctl, swapoff, systemctl: fakes (first in
//!                      the agent's PATH, so host preparation never touches the
//!                      machine)
//!  <run>/<node>/root/  the scratch host (`host_root`): /proc/sys, /proc/swaps,
//!                      /etc/fstab, /etc/containerd/config.toml as on a fresh droplet
//!  <run>/<node>/etc/   `etc_dir`: kubeadm's files
//!  <run>/<node>/kstate/ fake-kubeadm's state: node.json, etcd data, etcd.log,
//!                      apiserver.log
//!  <run>/kube/         calls.log (fake-kubeadm's call log, all nodes), cni.yaml
//!                      (the `cni_manifest`), knobs (`slow-init`)
//! ```
//!
//! fake-kubeadm starts a real etcd on the node's own address (198.18.0.x:2379,
//! 2380) and the fake apiserver (0.0.0.0:6443 in a control plane's namespace,
//! the node's address on compact nodes through kubeha's bind patch), inside
//! the node's namespace: they are grandchildren of the agent. The lab adopts
//! them into its process records ([`Lab::record_kube_daemons`], also at every
//! teardown, so a panic or Ctrl-C kills them by pid too).
//!
//! Knob: a file `<run>/kube/slow-init` holding a number of seconds makes every
//! `kubeadm init` sleep that long before fake-kubeadm starts (a window to cut
//! the init node off while its init runs).

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use kubeha_core::api::Status;
use kubeha_core::config::Role;

use super::*;
use crate::fake_apiserver::Response;
use crate::fake_kubeadm::etcd::EtcdClient;

/// The kubeadm version the fakes report.
pub const KUBE_VERSION: &str = "v1.34.2";
/// The etcd fake-kubeadm runs.
pub const ETCD: &str = "/usr/bin/etcd";

const CONTAINERD_DEFAULT: &str = "version = 2\n\n[plugins]\n  [plugins.\"io.containerd.grpc.v1.cri\"]\n    sandbox_image = \"registry.k8s.io/pause:3.8\"\n    [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc.options]\n      BinaryName = \"\"\n      SystemdCgroup = false\n";

const CNI_MANIFEST: &str = "# kubeha-lab: the CNI manifest the init node applies once (a placeholder:\n# the lab's fake kubectl records that it was applied).\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: kubeha-lab-cni\n  namespace: kube-system\ndata:\n  cni: none\n";

/// Is the lab in `run_dir` a Kubernetes lab?
pub fn enabled(run_dir: &Path) -> bool {
    spec::kube_dir(run_dir).is_dir()
}

/// fake-kubeadm's call log, one JSON line per invocation on any node.
pub fn calls_log(run_dir: &Path) -> PathBuf {
    spec::kube_dir(run_dir).join("calls.log")
}

/// The init-slowing knob (see the module docs).
pub fn slow_init_file(run_dir: &Path) -> PathBuf {
    spec::kube_dir(run_dir).join("slow-init")
}

/// Is this call-log line a `kubeadm init` (not `init phase ...`)?
pub fn is_init(v: &serde_json::Value) -> bool {
    v["argv"][1] == "init" && v["argv"][2] != "phase"
}

/// What a Kubernetes lab needs on this machine, checked before `up` builds
/// anything.
pub(crate) fn check_tools(bin_dir: &Path) -> Result<()> {
    for (tool, hint) in [
        ("fake-kubeadm", "cargo build -p kubeha-tests --bins"),
        ("fake-apiserver", "cargo build -p kubeha-tests --bins"),
    ] {
        let p = bin_dir.join(tool);
        if !p.exists() {
            return Err(LabError::MissingTool {
                tool: p.display().to_string(),
                hint,
            });
        }
    }
    for (tool, hint) in [
        (ETCD, "scripts/install-deps (Debian etcd-server)"),
        ("/usr/sbin/haproxy", "apt-get install -y haproxy"),
        ("/usr/bin/curl", "apt-get install -y curl"),
    ] {
        if !Path::new(tool).exists() {
            return Err(LabError::MissingTool {
                tool: tool.to_string(),
                hint,
            });
        }
    }
    Ok(())
}

fn write(p: &Path, text: &str) -> Result<()> {
    if let Some(d) = p.parent() {
        mkdir(d)?;
    }
    fs::write(p, text).map_err(|e| LabError::io(p, e))
}

fn script(p: &Path, body: &str) -> Result<()> {
    write(p, &format!("#!/bin/sh\n{body}\n"))?;
    fs::set_permissions(p, fs::Permissions::from_mode(0o755)).map_err(|e| LabError::io(p, e))
}

fn sh_quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', "'\\''"))
}

/// The files every Kubernetes lab shares (`<run>/kube/`).
pub(crate) fn prepare_lab(run_dir: &Path) -> Result<()> {
    let d = spec::kube_dir(run_dir);
    mkdir(&d)?;
    write(&d.join("cni.yaml"), CNI_MANIFEST)
}

/// A node's fresh host and tools (see the module docs). `bin_dir` holds
/// fake-kubeadm and fake-apiserver.
pub(crate) fn prepare_node(run_dir: &Path, bin_dir: &Path, paths: &NodePaths) -> Result<()> {
    let root = paths.host_root();
    let tools = paths.tools();
    mkdir(&root.join("sys/module"))?;
    mkdir(&tools)?;
    mkdir(&paths.etc_dir())?;
    mkdir(&paths.kubeadm_state())?;
    let put = |host_path: &str, text: &str| write(&root.join(host_path), text);
    put("proc/sys/net/ipv4/ip_forward", "0\n")?;
    put(
        "proc/swaps",
        "Filename\tType\tSize\tUsed\tPriority\n/swapfile file 1048572 0 -2\n",
    )?;
    put("etc/fstab", "/swapfile none swap sw 0 0\n")?;
    put("etc/hosts", "127.0.0.1\tlocalhost\n")?;
    put("etc/containerd/config.toml", CONTAINERD_DEFAULT)?;
    let r = sh_quote(&root);
    script(
        &tools.join("modprobe"),
        &format!(
            "ROOT={r}\nmkdir -p \"$ROOT/sys/module/$1\"\nif [ \"$1\" = br_netfilter ]; then mkdir -p \"$ROOT/proc/sys/net/bridge\"; \
             echo 0 > \"$ROOT/proc/sys/net/bridge/bridge-nf-call-iptables\"; echo 0 > \"$ROOT/proc/sys/net/bridge/bridge-nf-call-ip6tables\"; fi"
        ),
    )?;
    script(
        &tools.join("sysctl"),
        &format!(
            "ROOT={r}\n[ \"$1\" = -w ] || exit 2\nk=${{2%%=*}}; v=${{2#*=}}\nf=\"$ROOT/proc/sys/$(echo $k | tr . /)\"\n\
             [ -e \"$f\" ] || {{ echo \"sysctl: cannot stat $f\" >&2; exit 255; }}\necho $v > \"$f\""
        ),
    )?;
    script(
        &tools.join("swapoff"),
        &format!(
            "ROOT={r}\nhead -n1 \"$ROOT/proc/swaps\" > \"$ROOT/proc/swaps.new\" && mv \"$ROOT/proc/swaps.new\" \"$ROOT/proc/swaps\""
        ),
    )?;
    script(&tools.join("systemctl"), "exit 0")?;
    script(
        &tools.join("containerd"),
        "echo 'containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+b1'",
    )?;
    script(
        &tools.join("kubelet"),
        &format!("echo 'Kubernetes {KUBE_VERSION}'"),
    )?;
    // kubectl: the client version (preflight), `apply -f` (the CNI step:
    // recorded in <node>/kubectl-applied), `get --raw PATH` (the init check
    // after a restart: a real HTTPS GET at admin.conf's server, trusting the
    // cluster CA).
    let etc = paths.etc_dir();
    script(
        &tools.join("kubectl"),
        &format!(
            "kc=''\nif [ \"$1\" = --kubeconfig ]; then kc=$2; shift 2; fi\n\
             case \"$1\" in\n\
             version) echo 'Client Version: {KUBE_VERSION}'; echo 'Kustomize Version: v5.7.1';;\n\
             apply)\n  [ \"$2\" = -f ] && [ -r \"$3\" ] || {{ echo 'error: must specify one of -f and -k' >&2; exit 1; }}\n  \
             [ -r \"$kc\" ] || {{ echo \"error: stat $kc: no such file or directory\" >&2; exit 1; }}\n  \
             echo \"$3\" >> {applied}; echo 'configmap/kubeha-lab-cni created';;\n\
             get)\n  [ \"$2\" = --raw ] && [ -r \"$kc\" ] || {{ echo 'error: unsupported' >&2; exit 1; }}\n  \
             server=$(sed -n 's/^ *server: *//p' \"$kc\" | head -n1)\n  \
             exec curl -fsS --max-time 5 --cacert {ca} \"$server$3\";;\n\
             *) echo \"error: unknown command \\\"$1\\\" for \\\"kubectl\\\"\" >&2; exit 1;;\n\
             esac",
            applied = sh_quote(&paths.dir.join("kubectl-applied")),
            ca = sh_quote(&etc.join("pki/ca.crt")),
        ),
    )?;
    let slow = slow_init_file(run_dir);
    script(
        &tools.join("kubeadm"),
        &format!(
            "export FAKE_KUBEADM_ETC_DIR={etc} FAKE_KUBEADM_STATE_DIR={state}\n\
             export FAKE_KUBEADM_LOG={log} FAKE_KUBEADM_VERSION={KUBE_VERSION}\n\
             export FAKE_KUBEADM_ETCD={ETCD} FAKE_KUBEADM_APISERVER={api}\n\
             export FAKE_KUBEADM_CLOCK_OFFSET_FILE={offset} FAKE_KUBEADM_DISCOVERY_TIMEOUT=5s\n\
             if [ \"$1\" = init ] && [ \"$2\" != phase ] && [ -r {slow} ]; then sleep \"$(cat {slow})\"; fi\n\
             exec {fk} \"$@\"",
            etc = sh_quote(&etc),
            state = sh_quote(&paths.kubeadm_state()),
            log = sh_quote(&calls_log(run_dir)),
            api = sh_quote(&bin_dir.join("fake-apiserver")),
            offset = sh_quote(&spec::kube_dir(run_dir).join("clock-offset")),
            slow = sh_quote(&slow),
            fk = sh_quote(&bin_dir.join("fake-kubeadm")),
        ),
    )
}

/// How `Node::start` runs the agent of a Kubernetes lab node: through
/// `env`, with the node's fake tools first in `PATH` (host preparation runs
/// `modprobe`, `sysctl`, ... by name) and outside any systemd unit (else
/// the agent would prepare the host through `systemd-run`).
pub(crate) fn agent_argv(agent: &Path, paths: &NodePaths) -> (PathBuf, Vec<String>) {
    let path = format!(
        "PATH={}:{}",
        paths.tools().display(),
        std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into())
    );
    (
        PathBuf::from("/usr/bin/env"),
        vec![
            "-u".into(),
            "INVOCATION_ID".into(),
            path,
            agent.to_string_lossy().into_owned(),
            "--config".into(),
            paths.config().to_string_lossy().into_owned(),
        ],
    )
}

/// etcd and fake-apiserver processes of the lab in `info`: every process
/// whose program is one of them and whose command line names a node's run
/// directory (fake-kubeadm gives both paths there). `(node, label, record)`.
fn find_daemons(info: &LabState) -> Vec<(String, String, ProcRecord)> {
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir("/proc") else {
        return out;
    };
    let node_dirs: Vec<(String, String)> = info
        .nodes
        .iter()
        .map(|n| {
            (
                n.name.clone(),
                format!("{}/", NodePaths::new(&info.dir, &n.name).dir.display()),
            )
        })
        .collect();
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(cmd) = fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let words: Vec<String> = cmd
            .split(|b| *b == 0)
            .map(|w| String::from_utf8_lossy(w).into_owned())
            .collect();
        let Some(argv0) = words.first() else { continue };
        let label = if argv0 == ETCD || argv0.ends_with("/etcd") {
            "etcd"
        } else if argv0.ends_with("/fake-apiserver") {
            "apiserver"
        } else {
            continue;
        };
        let Some((node, _)) = node_dirs
            .iter()
            .find(|(_, d)| words.iter().any(|w| w.starts_with(d.as_str())))
        else {
            continue;
        };
        if let Some(rec) = ProcRecord::of(pid) {
            out.push((node.clone(), label.to_string(), rec));
        }
    }
    out
}

impl Shared {
    /// Put the lab's etcd and apiserver processes into its records (by pid
    /// and start time), so that teardown kills them like the agents.
    /// Returns how many were new.
    pub(crate) fn adopt_kube_daemons(&self) -> usize {
        if !enabled(&self.info.dir) {
            return 0;
        }
        let found = find_daemons(&self.info);
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let mut new = 0;
        for (node, label, rec) in found {
            let s = slots.entry(node).or_default();
            let label = match s.extra.get(&label) {
                Some(old) if old.rec == rec => continue,
                // A second etcd of one node (a reset and a new join while
                // the old one dies): keep both records.
                Some(old) if old.rec.alive() => format!("{label}-{}", rec.pid),
                _ => label,
            };
            if s.extra.values().any(|o| o.rec == rec) {
                continue;
            }
            s.extra.insert(
                label,
                process::Spawned {
                    rec,
                    child: None,
                    argv: String::new(),
                },
            );
            new += 1;
        }
        new
    }
}

/// One node's Kubernetes view, for `kubeha-lab status`.
pub fn kube_table(lab: &Lab) -> String {
    let mut out = format!(
        "{:<10} {:<13} {:<14} {:<10} {}\n",
        "NODE", "PHASE", "KUBE", "INIT-NODE", "DETAIL"
    );
    for (name, st) in lab.statuses() {
        match st {
            Ok(s) => {
                let own = s
                    .members
                    .iter()
                    .find(|m| m.name == name)
                    .map(|m| m.kube.clone())
                    .unwrap_or_else(|| "-".into());
                let k = &s.kubernetes;
                let mut detail = k
                    .waiting_for
                    .clone()
                    .map(|w| format!("waiting for {w}"))
                    .or_else(|| k.last_error.clone())
                    .unwrap_or_default();
                if k.join_failures > 0 {
                    detail = format!("{} failed joins; {detail}", k.join_failures);
                }
                if detail.len() > 80 {
                    let mut end = 77;
                    while !detail.is_char_boundary(end) {
                        end -= 1;
                    }
                    detail = format!("{}...", &detail[..end]);
                }
                out.push_str(&format!(
                    "{:<10} {:<13} {:<14} {:<10} {}\n",
                    name,
                    k.phase,
                    own,
                    k.init_node.as_deref().unwrap_or("-"),
                    detail
                ));
            }
            Err(_) => out.push_str(&format!(
                "{:<10} {:<13} {:<14} {:<10} {}\n",
                name, "-", "-", "-", "agent not answering"
            )),
        }
    }
    out
}

impl Lab {
    /// Is this a Kubernetes lab?
    pub fn is_kubernetes(&self) -> bool {
        enabled(self.dir())
    }

    /// The Kubernetes nodes (control planes and workers), in address order.
    pub fn kube_nodes(&self) -> Vec<&NodeInfo> {
        self.nodes()
            .iter()
            .filter(|n| {
                n.roles
                    .iter()
                    .any(|r| matches!(r, Role::ControlPlane | Role::Worker))
            })
            .collect()
    }

    /// Adopt the etcd and apiserver processes fake-kubeadm started into the
    /// lab's records (see the module docs) and save them. Returns how many
    /// were new.
    pub fn record_kube_daemons(&self) -> Result<usize> {
        let n = self.sh.adopt_kube_daemons();
        if n > 0 {
            self.sh.save()?;
        }
        Ok(n)
    }

    /// fake-kubeadm's call log.
    pub fn kube_calls(&self) -> Vec<serde_json::Value> {
        fs::read_to_string(calls_log(self.dir()))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The `kubeadm init`s in the call log.
    pub fn kube_inits(&self) -> Vec<serde_json::Value> {
        self.kube_calls().into_iter().filter(is_init).collect()
    }

    /// The node a call-log line ran on (from its `etc_dir`).
    pub fn kube_call_node(&self, v: &serde_json::Value) -> Option<String> {
        let etc = v["etc_dir"].as_str()?;
        self.nodes()
            .iter()
            .find(|n| NodePaths::new(self.dir(), &n.name).etc_dir().to_str() == Some(etc))
            .map(|n| n.name.clone())
    }

    /// `Ok` when every Kubernetes node's agent says `joined`, else why not
    /// (also when an agent of a Kubernetes node is not running).
    pub fn kube_joined(&self) -> std::result::Result<(), String> {
        let mut waiting = Vec::new();
        for n in self.kube_nodes() {
            let node = self.node(&n.name).map_err(|e| e.to_string())?;
            if node.agent_pid().is_none() {
                return Err(format!("the agent of `{}` is not running", n.name));
            }
            match node.status() {
                Ok(s) if s.kubernetes.phase == "joined" => {}
                Ok(s) => waiting.push(format!(
                    "{} {}{}",
                    n.name,
                    s.kubernetes.phase,
                    s.kubernetes
                        .waiting_for
                        .or(s.kubernetes.last_error)
                        .map(|w| format!(" ({w})"))
                        .unwrap_or_default()
                )),
                Err(e) => waiting.push(format!("{}: {e}", n.name)),
            }
        }
        if waiting.is_empty() {
            Ok(())
        } else {
            Err(waiting.join("; "))
        }
    }

    /// Wait until every Kubernetes node has joined ([`Lab::kube_joined`]),
    /// adopting etcd and apiserver processes as they appear. Returns how
    /// long it took.
    pub fn wait_kube_joined(&self, timeout: Duration) -> Result<Duration> {
        let start = Instant::now();
        let mut last = String::from("no status yet");
        let mut adopted = Instant::now() - Duration::from_secs(1);
        while start.elapsed() < timeout {
            if adopted.elapsed() >= Duration::from_millis(500) {
                self.record_kube_daemons()?;
                adopted = Instant::now();
            }
            match self.kube_joined() {
                Ok(()) => {
                    self.record_kube_daemons()?;
                    return Ok(start.elapsed());
                }
                Err(why) => last = why,
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(LabError::Timeout {
            what: format!("every Kubernetes node to join (last: {last})"),
            secs: timeout.as_secs_f64(),
        })
    }

    /// The cluster CA (`pki/ca.crt` of the first node that has one).
    pub fn kube_ca(&self) -> Option<PathBuf> {
        self.kube_nodes()
            .iter()
            .map(|n| {
                NodePaths::new(self.dir(), &n.name)
                    .etc_dir()
                    .join("pki/ca.crt")
            })
            .find(|p| p.exists())
    }

    /// `GET path` over HTTPS from the client namespace to VIP:6443 (HAProxy
    /// on the VIP holder, then an apiserver), trusting the cluster CA.
    pub fn kube_api_get(&self, path: &str, timeout: Duration) -> io::Result<Response> {
        let ca = self.kube_ca().ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, "no node has the cluster CA yet")
        })?;
        crate::lab_haproxy::get_from(self.client_ns(), self.vip_target(), &ca, path, timeout)
    }

    /// The names in `GET /api/v1/nodes` through the VIP.
    pub fn kube_api_nodes(&self, timeout: Duration) -> io::Result<Vec<String>> {
        let r = self.kube_api_get("/api/v1/nodes", timeout)?;
        if r.status != 200 {
            return Err(io::Error::other(format!(
                "GET /api/v1/nodes: status {}: {}",
                r.status, r.body
            )));
        }
        node_names(&r.body)
    }

    /// The etcd members `(name, learner)` as node `node`'s etcd reports
    /// them (asked from inside its namespace with its own client
    /// certificate), sorted.
    pub fn etcd_members(&self, node: &str) -> Result<Vec<(String, bool)>> {
        let n = self.node(node)?;
        let pki = n.paths().etc_dir().join("pki");
        let url = format!("https://{}:2379", n.addr());
        let members = netns::run_in(n.ns(), move || {
            EtcdClient::from_files(
                vec![url],
                &pki.join("etcd/ca.crt"),
                &pki.join("apiserver-etcd-client.crt"),
                &pki.join("apiserver-etcd-client.key"),
            )
            .and_then(|c| c.member_list())
            .map_err(|e| e.to_string())
        })?
        .map_err(|e| LabError::node(node, format!("etcd member list: {e}")))?;
        let mut m: Vec<(String, bool)> = members
            .into_iter()
            .map(|m| (m.name, m.is_learner))
            .collect();
        m.sort();
        Ok(m)
    }

    /// Every node's status, or the first error.
    pub fn all_statuses(&self) -> Result<Vec<Status>> {
        self.statuses().into_iter().map(|(_, s)| s).collect()
    }
}

/// The `metadata.name`s of a NodeList.
pub fn node_names(body: &str) -> io::Result<Vec<String>> {
    let v: serde_json::Value = serde_json::from_str(body)
        .map_err(|e| io::Error::other(format!("not a NodeList: {e}: {body}")))?;
    let mut names: Vec<String> = v["items"]
        .as_array()
        .ok_or_else(|| io::Error::other(format!("no `items` in {body}")))?
        .iter()
        .filter_map(|n| n["metadata"]["name"].as_str().map(str::to_string))
        .collect();
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_list_names() {
        let body = r#"{"kind":"NodeList","items":[{"metadata":{"name":"cp-1"}},{"metadata":{"name":"cp-0"}}]}"#;
        assert_eq!(node_names(body).unwrap(), ["cp-0", "cp-1"]);
        assert!(node_names("{}").is_err());
    }

    #[test]
    fn init_lines() {
        let init: serde_json::Value =
            serde_json::json!({"argv": ["kubeadm", "init", "--config", "x"]});
        let phase: serde_json::Value =
            serde_json::json!({"argv": ["kubeadm", "init", "phase", "upload-certs"]});
        assert!(is_init(&init));
        assert!(!is_init(&phase));
    }
}
