//! Issue 12 (node side): host preparation through the real agent and
//! `kubeha-ctl preflight`, against a scratch host root with fake
//! `modprobe`/`sysctl`/`swapoff`/`systemctl` and fake Kubernetes tools; the
//! kubeadm minor version travels in gossip and a control plane with another
//! one is named in every node's status.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::{KillOnDrop, LoopbackCluster, bin, wait_until};

const CONTAINERD_DEFAULT: &str = "version = 2\n\n[plugins]\n  [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc.options]\n    BinaryName = \"\"\n    SystemdCgroup = false\n";

pub(crate) fn script(dir: &Path, name: &str, root: &Path, body: &str) {
    let p = dir.join(name);
    fs::write(
        &p,
        format!(
            "#!/bin/sh\nROOT='{}'\necho \"{name} $*\" >> '{}/calls'\n{body}\n",
            root.display(),
            dir.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
}

pub(crate) fn put(root: &Path, host_path: &str, text: &str) {
    let p = root.join(host_path.trim_start_matches('/'));
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, text).unwrap();
}

/// A fresh host under `<node dir>/root`, tools in `<node dir>/bin`.
pub(crate) fn fresh_host(node_dir: &Path, kubeadm: &str) -> (PathBuf, PathBuf) {
    let root = node_dir.join("root");
    let bin_dir = node_dir.join("bin");
    fs::create_dir_all(root.join("sys/module")).unwrap();
    fs::create_dir_all(&bin_dir).unwrap();
    put(&root, "/proc/sys/net/ipv4/ip_forward", "0\n");
    put(
        &root,
        "/proc/swaps",
        "Filename\tType\tSize\tUsed\tPriority\n/swapfile file 1048572 0 -2\n",
    );
    put(&root, "/etc/fstab", "/swapfile none swap sw 0 0\n");
    put(&root, "/etc/hosts", "127.0.0.1\tlocalhost\n");
    put(&root, "/etc/containerd/config.toml", CONTAINERD_DEFAULT);
    script(
        &bin_dir,
        "modprobe",
        &root,
        "mkdir -p \"$ROOT/sys/module/$1\"\nif [ \"$1\" = br_netfilter ]; then mkdir -p \"$ROOT/proc/sys/net/bridge\"; echo 0 > \"$ROOT/proc/sys/net/bridge/bridge-nf-call-iptables\"; echo 0 > \"$ROOT/proc/sys/net/bridge/bridge-nf-call-ip6tables\"; fi",
    );
    script(
        &bin_dir,
        "sysctl",
        &root,
        "k=${2%%=*}; v=${2#*=}\nf=\"$ROOT/proc/sys/$(echo $k | tr . /)\"\n[ -e \"$f\" ] || exit 255\necho $v > \"$f\"",
    );
    script(
        &bin_dir,
        "swapoff",
        &root,
        "head -n1 \"$ROOT/proc/swaps\" > \"$ROOT/proc/swaps.new\" && mv \"$ROOT/proc/swaps.new\" \"$ROOT/proc/swaps\"",
    );
    script(&bin_dir, "systemctl", &root, "exit 0");
    script(&bin_dir, "containerd", &root, "echo containerd 1.6.20");
    script(
        &bin_dir,
        "kubelet",
        &root,
        &format!("echo Kubernetes {kubeadm}"),
    );
    script(
        &bin_dir,
        "kubectl",
        &root,
        &format!("echo Client Version: {kubeadm}"),
    );
    script(&bin_dir, "kubeadm", &root, &format!("echo {kubeadm}"));
    (root, bin_dir)
}

fn kubernetes_section(bin_dir: &Path, root: &Path) -> String {
    format!(
        "roles = [\"control-plane\"]\n\n[kubernetes]\ncontrol_plane_endpoint = \"k8s-api:6443\"\nendpoint_address = \"198.18.0.100\"\n\
         kubeadm = \"{b}/kubeadm\"\nkubelet = \"{b}/kubelet\"\nkubectl = \"{b}/kubectl\"\ncontainerd = \"{b}/containerd\"\nhost_root = \"{r}\"\n",
        b = bin_dir.display(),
        r = root.display()
    )
}

/// Start node `i` with PATH leading to its fake host commands (never the
/// real modprobe or sysctl) and outside any systemd unit (in-process run).
fn start(c: &mut LoopbackCluster, i: usize, kubeadm: &str, kubelet: bool) -> PathBuf {
    let d = c.node_dir(i);
    let (root, bin_dir) = fresh_host(&d, kubeadm);
    if !kubelet {
        fs::remove_file(bin_dir.join("kubelet")).unwrap();
    }
    let key = c.dir.path().join("cluster.key");
    let text = format!(
        "{}{}",
        c.config(i, &key),
        kubernetes_section(&bin_dir, &root)
    );
    let cfg = d.join("kubeha.toml");
    fs::write(&cfg, text).unwrap();
    let log = fs::File::create(d.join("agent.log")).unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let child = Command::new(bin("kubeha-agent"))
        .arg("--config")
        .arg(&cfg)
        .env("KUBEHA_LOG", "info,chitchat=warn")
        .env("PATH", path)
        .env_remove("INVOCATION_ID")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn kubeha-agent");
    c.agents[i] = Some(KillOnDrop(child));
    root
}

fn preflight_json(socket: &Path) -> (bool, serde_json::Value) {
    let out = Command::new(bin("kubeha-ctl"))
        .arg("--socket")
        .arg(socket)
        .args(["preflight", "-o", "json"])
        .output()
        .unwrap();
    let v = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.success(), v)
}

#[test]
fn agent_prepares_its_host_and_names_a_control_plane_with_another_kubeadm() {
    let mut c = LoopbackCluster::new(36, 3);
    let root = start(&mut c, 0, "v1.31.2", true);
    start(&mut c, 1, "v1.31.4", true);
    start(&mut c, 2, "v1.30.9", true);

    // The run at start prepares the host; its report shows in the status.
    wait_until(Duration::from_secs(30), || {
        c.status(0).is_some_and(|s| s.preflight.is_some())
    })
    .unwrap_or_else(|| panic!("no preflight report; log:\n{}", c.log(0)));
    let s = c.status(0).unwrap();
    let p = s.preflight.unwrap();
    assert!(p.ok, "{p:#?}\n{}", c.log(0));
    assert_eq!(p.kubeadm_minor.as_deref(), Some("1.31"));
    let file = |host: &str| fs::read_to_string(root.join(host.trim_start_matches('/'))).unwrap();
    assert!(file("/etc/containerd/config.toml").contains("SystemdCgroup = true"));
    assert_eq!(file("/proc/sys/net/ipv4/ip_forward"), "1\n");
    assert_eq!(
        file("/etc/hosts"),
        "127.0.0.1\tlocalhost\n198.18.0.100\tk8s-api\t# kubeha: managed\n"
    );

    // On request: a fresh run, nothing left to change, exit 0.
    let (ok, v) = preflight_json(&c.socket(0));
    assert!(ok, "{v:#}");
    assert_eq!(v["ok"], true);
    assert_eq!(v["applied"].as_array().unwrap().len(), 0, "{v:#}");
    let states: Vec<(&str, &str)> = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap(), c["state"].as_str().unwrap()))
        .collect();
    assert!(states.contains(&("swap", "ok")), "{states:?}");
    assert!(states.contains(&("swap at boot", "warning")), "{states:?}");
    assert!(states.contains(&("kubeadm", "ok")), "{states:?}");
    assert!(states.contains(&("kubeadm config", "ok")), "{states:?}");

    // Gossip carries each node's kubeadm minor: n3 (1.30) is named on n1.
    let named = wait_until(Duration::from_secs(30), || {
        c.status(0).is_some_and(|s| {
            s.kubeadm_skew.len() == 1
                && s.kubeadm_skew[0].member == "n3"
                && s.kubeadm_skew[0].kubeadm == "1.30"
                && s.kubeadm_skew[0].common == "1.31"
        })
    });
    assert!(
        named.is_some(),
        "skew not reported: {:?}\n{}",
        c.status(0).map(|s| s.kubeadm_skew),
        c.log(0)
    );
    // And in the table on n2, once it sees n3 alive.
    let table = || {
        let out = Command::new(bin("kubeha-ctl"))
            .arg("--socket")
            .arg(c.socket(1))
            .arg("status")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let want = "WARNING  n3 has kubeadm 1.30, the other control planes 1.31";
    assert!(
        wait_until(Duration::from_secs(30), || table().contains(want)).is_some(),
        "{}",
        table()
    );
}

#[test]
fn a_host_that_cannot_be_prepared_is_left_as_it_was() {
    let mut c = LoopbackCluster::new(37, 1);
    let root = start(&mut c, 0, "v1.31.2", false);
    wait_until(Duration::from_secs(30), || {
        c.status(0).is_some_and(|s| s.preflight.is_some())
    })
    .unwrap_or_else(|| panic!("no preflight report; log:\n{}", c.log(0)));
    let (ok, v) = preflight_json(&c.socket(0));
    assert!(!ok, "{v:#}");
    assert_eq!(v["ok"], false);
    let kubelet = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "kubelet")
        .unwrap();
    assert_eq!(kubelet["state"], "failed");
    assert!(kubelet["remedy"].as_str().unwrap().contains("apt"), "{v:#}");
    assert!(
        v["errors"][0]
            .as_str()
            .unwrap()
            .contains("kubelet cannot be fixed"),
        "{v:#}"
    );
    // Two runs (start and request), and the host is as it was: no file
    // written, no changing command run.
    let file = |host: &str| fs::read_to_string(root.join(host.trim_start_matches('/'))).unwrap();
    assert_eq!(file("/etc/containerd/config.toml"), CONTAINERD_DEFAULT);
    assert_eq!(file("/etc/hosts"), "127.0.0.1\tlocalhost\n");
    assert!(!root.join("etc/modules-load.d/kubeha.conf").exists());
    let calls = fs::read_to_string(c.node_dir(0).join("bin/calls")).unwrap();
    assert!(
        calls
            .lines()
            .all(|l| !["modprobe", "sysctl", "swapoff", "systemctl"]
                .contains(&l.split(' ').next().unwrap())),
        "{calls}"
    );
    assert_eq!(
        calls.lines().filter(|l| l.starts_with("kubeadm")).count(),
        2,
        "{calls}"
    );
}

#[test]
fn prepare_host_flag_prints_the_report_as_json() {
    // What the agent runs through systemd-run, outside its sandbox.
    let c = LoopbackCluster::new(38, 1);
    let d = c.node_dir(0);
    let (root, bin_dir) = fresh_host(&d, "v1.30.2");
    let key = c.dir.path().join("cluster.key");
    let cfg = d.join("kubeha.toml");
    fs::write(
        &cfg,
        format!(
            "{}{}",
            c.config(0, &key),
            kubernetes_section(&bin_dir, &root)
        ),
    )
    .unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new(bin("kubeha-agent"))
        .arg("--prepare-host")
        .arg("--config")
        .arg(&cfg)
        .env("PATH", path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: kubeha_core::api::PreflightReport = serde_json::from_slice(&out.stdout).unwrap();
    assert!(r.ok, "{r:#?}");
    assert_eq!(r.kubeadm_minor.as_deref(), Some("1.30"));
    assert!(r.applied.contains(&"swapoff -a".to_string()), "{r:#?}");
    assert!(
        fs::read_to_string(root.join("etc/sysctl.d/99-kubeha.conf"))
            .unwrap()
            .contains("net.ipv4.ip_forward = 1")
    );
}
