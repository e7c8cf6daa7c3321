//! Host preparation: the shell around `kubeha_core::hostprep`.
//!
//! [`HostPrep::run`] observes the host (files under its root, `/sys/module`,
//! `/proc/sys`, `/proc/swaps`, the tools' version commands), lets the core
//! plan, and then either changes nothing (a check no action can fix: the
//! report names it and what to do) or carries out every action in order,
//! observes again and reports. The managed `/etc/hosts` line is part of the
//! same run.
//!
//! The agent's systemd sandbox forbids all of this (read-only /etc and
//! /proc/sys, no module loading), so under systemd the [`PreflightWorker`]
//! runs `kubeha-agent --prepare-host` as a transient unit through
//! `systemd-run` and reads its JSON report; elsewhere (tests, a shell) it runs
//! in-process. Either way it runs on its own thread, never in the main loop.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kubeha_core::api::{PreflightReport, Request, Response};
use kubeha_core::config::{Config, KubernetesConfig};
use kubeha_core::hostprep::{self, Action, Observed, Tool};
use kubeha_core::kubeadm;
use tokio::sync::{oneshot, watch};
use tracing::{info, warn};

use crate::api::ApiCall;
use crate::command;

/// Everything a run touches; paths of files are the host's own, read and
/// written under `root`.
#[derive(Debug, Clone)]
pub struct HostPrep {
    pub root: PathBuf,
    /// Change the host; `false`: only report.
    pub fix: bool,
    pub containerd: PathBuf,
    /// Host path of containerd's config.
    pub containerd_config: String,
    pub kubelet: PathBuf,
    pub kubeadm: PathBuf,
    pub kubectl: PathBuf,
    pub modprobe: OsString,
    pub sysctl: OsString,
    pub swapoff: OsString,
    pub systemctl: OsString,
    /// The managed hosts line, if any.
    pub hosts_entry: Option<(String, IpAddr)>,
    /// For version commands, modprobe, sysctl, swapoff.
    pub timeout: Duration,
    /// For `systemctl restart containerd`.
    pub restart_timeout: Duration,
    /// What the kubeadm configs are rendered from (checked each run).
    pub kubeadm_inputs: Option<(kubeadm::NodeFacts, kubeadm::Extra)>,
}

impl HostPrep {
    /// For a config with `[kubernetes]`.
    pub fn for_config(c: &Config) -> Option<HostPrep> {
        let k = c.kubernetes.as_ref()?;
        let patches = crate::kubeadm_config::patches_dir(c);
        let mut h = HostPrep::from_config(k);
        h.kubeadm_inputs = kubeadm::NodeFacts::from_config(c, &patches.display().to_string())
            .map(|f| (f, k.kubeadm_extra.clone()));
        Some(h)
    }

    pub fn from_config(k: &KubernetesConfig) -> HostPrep {
        HostPrep {
            root: k.host_root.clone(),
            fix: k.host_prep,
            containerd: k.containerd.clone(),
            containerd_config: k.containerd_config.display().to_string(),
            kubelet: k.kubelet.clone(),
            kubeadm: k.kubeadm.clone(),
            kubectl: k.kubectl.clone(),
            modprobe: "modprobe".into(),
            sysctl: "sysctl".into(),
            swapoff: "swapoff".into(),
            systemctl: "systemctl".into(),
            hosts_entry: k.hosts_entry.clone(),
            timeout: Duration::from_secs(20),
            restart_timeout: Duration::from_secs(90),
            kubeadm_inputs: None,
        }
    }

    /// `host_path` (absolute) under the root.
    pub fn path(&self, host_path: &str) -> PathBuf {
        self.root.join(host_path.trim_start_matches('/'))
    }

    fn read(&self, host_path: &str) -> Option<String> {
        match fs::read_to_string(self.path(host_path)) {
            Ok(t) => Some(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                warn!(file = host_path, error = %e, "cannot read");
                None
            }
        }
    }

    fn tool(&self, bin: &Path, args: &[&str], parse: fn(&str) -> Result<String, String>) -> Tool {
        if !bin.exists() {
            return Tool::Missing;
        }
        let mut argv: Vec<OsString> = vec![bin.into()];
        argv.extend(args.iter().map(OsString::from));
        Tool::Present {
            version: command::run(&argv, self.timeout)
                .map_err(|e| e.to_string())
                .and_then(|o| parse(&o.stdout)),
        }
    }

    pub fn observe(&self) -> Observed {
        // Loaded modules are in /sys/module; built-in ones only when they
        // have parameters, so also look at what each one provides.
        let filesystems = self.read("/proc/filesystems").unwrap_or_default();
        let modules_present = hostprep::MODULES
            .iter()
            .filter(|m| {
                self.path(&format!("/sys/module/{m}")).exists()
                    || match **m {
                        "overlay" => filesystems
                            .lines()
                            .any(|l| l.split_whitespace().last() == Some("overlay")),
                        "br_netfilter" => self.path("/proc/sys/net/bridge").is_dir(),
                        _ => false,
                    }
            })
            .map(|m| m.to_string())
            .collect();
        let sysctls: BTreeMap<String, Option<String>> = hostprep::SYSCTLS
            .iter()
            .map(|k| {
                let p = format!("/proc/sys/{}", k.replace('.', "/"));
                (k.to_string(), self.read(&p))
            })
            .collect();
        let swaps = self
            .read("/proc/swaps")
            .unwrap_or_default()
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect();
        let containerd = self.tool(&self.containerd, &["--version"], |s| Ok(first_line(s)));
        Observed {
            modules_present,
            modules_file: self.read(hostprep::MODULES_FILE),
            sysctls,
            sysctl_file: self.read(hostprep::SYSCTL_FILE),
            swaps,
            fstab: self.read(hostprep::FSTAB),
            containerd_config_path: self.containerd_config.clone(),
            containerd_config: self.read(&self.containerd_config),
            containerd: Some(containerd),
            kubelet: Some(self.tool(&self.kubelet, &["--version"], k8s_version)),
            kubeadm: Some(self.tool(&self.kubeadm, &["version", "-o", "short"], |s| {
                let v = s.trim();
                kubeadm::Version::parse(v)
                    .map(|_| v.to_string())
                    .ok_or_else(|| kubeadm::KubeadmError::BadVersion(v.to_string()).to_string())
            })),
            kubectl: Some(self.tool(&self.kubectl, &["version", "--client"], k8s_version)),
        }
    }

    fn apply(&self, a: &Action) -> Result<(), String> {
        let run = |argv: Vec<OsString>, timeout| {
            command::run(&argv, timeout)
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        match a {
            Action::WriteFile { path, contents } => {
                let target = self.path(path);
                if *path == self.containerd_config && target.exists() {
                    // The operator's file, kept once as it was.
                    let orig = self.path(&format!("{path}.kubeha-orig"));
                    if !orig.exists() {
                        fs::copy(&target, &orig).map_err(|e| {
                            format!("{path}: cannot keep a copy as {path}.kubeha-orig: {e}")
                        })?;
                    }
                }
                crate::hosts::write_file(&target, contents.as_bytes(), 0o644)
                    .map_err(|e| format!("{path}: cannot write: {e}"))
            }
            Action::LoadModule(m) => run(vec![self.modprobe.clone(), m.into()], self.timeout),
            Action::SetSysctl { key, value } => run(
                vec![
                    self.sysctl.clone(),
                    "-w".into(),
                    format!("{key}={value}").into(),
                ],
                self.timeout,
            ),
            Action::SwapOff => run(vec![self.swapoff.clone(), "-a".into()], self.timeout),
            Action::RestartContainerd => run(
                vec![
                    self.systemctl.clone(),
                    "restart".into(),
                    "containerd".into(),
                ],
                self.restart_timeout,
            ),
        }
    }

    /// One preflight: plan everything, apply all or nothing that is
    /// unfixable, re-check, report.
    pub fn run(&self) -> PreflightReport {
        let first = hostprep::plan(&self.observe(), self.fix);
        let unfixable: Vec<String> = first.unfixable().iter().map(|c| c.name.clone()).collect();
        let mut report = if !self.fix {
            // Report only: failing checks carry what to do by hand.
            hostprep::report(None, &first, &[], &[])
        } else if !unfixable.is_empty() {
            let mut r = hostprep::report(None, &first, &[], &[]);
            r.errors.push(format!(
                "nothing changed: {} cannot be fixed by kubeha-agent (see the remedies)",
                unfixable.join(", ")
            ));
            r.ok = false;
            r
        } else {
            let actions = first.actions();
            let mut applied = Vec::new();
            let mut errors = Vec::new();
            for a in &actions {
                match self.apply(a) {
                    Ok(()) => {
                        info!(action = %a.describe(), "host preparation");
                        applied.push(a.describe());
                    }
                    Err(e) => {
                        warn!(action = %a.describe(), error = %e, "host preparation step failed");
                        errors.push(e);
                        break;
                    }
                }
            }
            if actions.is_empty() {
                hostprep::report(None, &first, &[], &[])
            } else {
                let after = hostprep::plan(&self.observe(), self.fix);
                for c in after.checks.iter().filter(|c| !c.actions.is_empty()) {
                    if errors.is_empty() {
                        errors.push(format!(
                            "`{}` still fails after preparing: {}",
                            c.check.name, c.check.detail
                        ));
                    }
                }
                hostprep::report(Some(&first), &after, &applied, &errors)
            }
        };
        if let Some((facts, extra)) = &self.kubeadm_inputs
            && let Some(c) =
                hostprep::kubeadm_config_check(report.kubeadm_version.as_deref(), facts, extra)
        {
            if c.state == kubeha_core::api::CheckState::Failed {
                report.ok = false;
            }
            report.checks.push(c);
        }
        if let Some((name, addr)) = &self.hosts_entry {
            // All or nothing: not even this line while a check is unfixable.
            let fix = self.fix && unfixable.is_empty();
            let c = crate::hosts::ensure(&self.path("/etc/hosts"), "/etc/hosts", name, *addr, fix);
            if c.state == kubeha_core::api::CheckState::Failed {
                report.ok = false;
            }
            if c.state == kubeha_core::api::CheckState::Changed {
                report.applied.push("write /etc/hosts".into());
            }
            report.checks.push(c);
        }
        report
    }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").trim().to_string()
}

/// `Kubernetes v1.31.2` / `Client Version: v1.31.2` → `v1.31.2`.
fn k8s_version(s: &str) -> Result<String, String> {
    s.split_whitespace()
        .find(|w| w.starts_with('v') && kubeadm::Version::parse(w).is_some())
        .map(str::to_string)
        .ok_or_else(|| format!("printed `{}`, no version in it", first_line(s)))
}

/// `kubeha-agent --prepare-host`: one run, the report as JSON on stdout.
pub fn prepare_host_main(config: &Config) -> std::process::ExitCode {
    let Some(prep) = HostPrep::for_config(config) else {
        eprintln!(
            "kubeha-agent: {}: no `[kubernetes]` section, nothing to prepare",
            config.path.display()
        );
        return std::process::ExitCode::from(1);
    };
    let report = prep.run();
    println!(
        "{}",
        serde_json::to_string(&report).expect("reports serialize")
    );
    std::process::ExitCode::SUCCESS
}

enum Runner {
    InProcess(Box<HostPrep>),
    /// `systemd-run … kubeha-agent --prepare-host --config PATH`.
    Systemd {
        argv: Vec<OsString>,
        timeout: Duration,
    },
}

impl Runner {
    fn run(&self) -> PreflightReport {
        match self {
            Runner::InProcess(h) => h.run(),
            Runner::Systemd { argv, timeout } => {
                let failed = |e: String| PreflightReport {
                    ok: false,
                    kubeadm_version: None,
                    kubeadm_minor: None,
                    checks: vec![],
                    applied: vec![],
                    errors: vec![e],
                };
                match command::run(argv, *timeout) {
                    Ok(o) => serde_json::from_str(o.stdout.trim()).unwrap_or_else(|e| {
                        failed(format!(
                            "`{}` printed no report: {e}",
                            command::display(argv)
                        ))
                    }),
                    Err(e) => failed(e.to_string()),
                }
            }
        }
    }
}

/// Runs preflight on its own thread: once at start, then on request.
pub struct PreflightWorker {
    requests: std::sync::mpsc::Sender<oneshot::Sender<PreflightReport>>,
    latest: Arc<Mutex<Option<PreflightReport>>>,
    minor: watch::Receiver<Option<String>>,
}

impl PreflightWorker {
    /// For nodes with `[kubernetes]`; `None` otherwise.
    pub fn spawn_for(config: &Config) -> Option<PreflightWorker> {
        let prep = HostPrep::for_config(config)?;
        let runner = match (std::env::var_os("INVOCATION_ID"), std::env::current_exe()) {
            (Some(_), Ok(exe)) => Runner::Systemd {
                argv: vec![
                    "systemd-run".into(),
                    "--quiet".into(),
                    "--wait".into(),
                    "--pipe".into(),
                    "--collect".into(),
                    "--unit=kubeha-prepare-host".into(),
                    exe.into(),
                    "--prepare-host".into(),
                    "--config".into(),
                    config.path.clone().into(),
                ],
                timeout: prep.restart_timeout + Duration::from_secs(60),
            },
            _ => Runner::InProcess(Box::new(prep)),
        };
        Some(Self::spawn(runner))
    }

    fn spawn(runner: Runner) -> PreflightWorker {
        let (tx, rx) = std::sync::mpsc::channel::<oneshot::Sender<PreflightReport>>();
        let latest = Arc::new(Mutex::new(None));
        let (minor_tx, minor) = watch::channel(None);
        let shared = latest.clone();
        std::thread::Builder::new()
            .name("kubeha-preflight".into())
            .spawn(move || {
                let mut reply: Option<oneshot::Sender<PreflightReport>> = None;
                loop {
                    let report = runner.run();
                    if report.ok {
                        info!(kubeadm = ?report.kubeadm_version, changed = report.applied.len(), "host prepared");
                    } else {
                        let failed: Vec<&str> = report
                            .checks
                            .iter()
                            .filter(|c| c.state == kubeha_core::api::CheckState::Failed)
                            .map(|c| c.name.as_str())
                            .collect();
                        warn!(failed = ?failed, errors = ?report.errors, "host not prepared: see `kubeha-ctl preflight`");
                    }
                    // The report first: whoever hears of a new minor finds it.
                    *shared.lock().expect("preflight lock") = Some(report.clone());
                    minor_tx.send_if_modified(|m| {
                        let changed = *m != report.kubeadm_minor;
                        *m = report.kubeadm_minor.clone();
                        changed
                    });
                    if let Some(r) = reply.take() {
                        let _ = r.send(report);
                    }
                    match rx.recv() {
                        Ok(r) => reply = Some(r),
                        Err(_) => return,
                    }
                }
            })
            .expect("spawning the preflight thread");
        PreflightWorker {
            requests: tx,
            latest,
            minor,
        }
    }

    /// The last finished run.
    pub fn latest(&self) -> Option<PreflightReport> {
        self.latest.lock().expect("preflight lock").clone()
    }

    /// A fresh run; the report arrives on the receiver.
    pub fn request(&self) -> oneshot::Receiver<PreflightReport> {
        let (tx, rx) = oneshot::channel();
        let _ = self.requests.send(tx);
        rx
    }

    /// The kubeadm minor to gossip (empty: none), when a run found another
    /// one; never on nodes without a worker.
    pub async fn minor_changed(worker: &mut Option<PreflightWorker>) -> String {
        if let Some(w) = worker
            && w.minor.changed().await.is_ok()
        {
            return w.minor.borrow_and_update().clone().unwrap_or_default();
        }
        std::future::pending().await
    }
}

/// Answer `Request::Preflight` without the main loop waiting for the run:
/// returns the call back when it is not one (or this node has no worker).
pub fn intercept(worker: &Option<PreflightWorker>, call: ApiCall) -> Option<ApiCall> {
    match (worker, &call.request) {
        (Some(w), Request::Preflight) => {
            let rx = w.request();
            tokio::spawn(async move {
                let response = match rx.await {
                    Ok(r) => Response::Preflight(Box::new(r)),
                    Err(_) => Response::Error {
                        message: "the preflight thread stopped".into(),
                    },
                };
                let _ = call.reply.send(response);
            });
            None
        }
        _ => Some(call),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kubeha_core::api::CheckState;
    use std::os::unix::fs::PermissionsExt;

    /// A scratch host: files under `root`, fake commands that change them
    /// and log their argv.
    struct Scratch {
        dir: tempfile::TempDir,
    }

    impl Scratch {
        fn root(&self) -> PathBuf {
            self.dir.path().join("root")
        }
        fn bin(&self, name: &str) -> PathBuf {
            self.dir.path().join("bin").join(name)
        }
        fn log(&self) -> Vec<String> {
            fs::read_to_string(self.dir.path().join("calls"))
                .unwrap_or_default()
                .lines()
                .map(str::to_string)
                .collect()
        }
        fn file(&self, host_path: &str) -> String {
            fs::read_to_string(self.root().join(host_path.trim_start_matches('/'))).unwrap()
        }
        fn put(&self, host_path: &str, text: &str) {
            let p = self.root().join(host_path.trim_start_matches('/'));
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, text).unwrap();
        }
        fn script(&self, name: &str, body: &str) {
            let p = self.bin(name);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            let log = self.dir.path().join("calls");
            let root = self.root();
            fs::write(
                &p,
                format!(
                    "#!/bin/sh\nROOT='{}'\necho \"{name} $*\" >> '{}'\n{body}\n",
                    root.display(),
                    log.display()
                ),
            )
            .unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        }

        fn prep(&self) -> HostPrep {
            HostPrep {
                root: self.root(),
                fix: true,
                containerd: self.bin("containerd"),
                containerd_config: "/etc/containerd/config.toml".into(),
                kubelet: self.bin("kubelet"),
                kubeadm: self.bin("kubeadm"),
                kubectl: self.bin("kubectl"),
                modprobe: self.bin("modprobe").into(),
                sysctl: self.bin("sysctl").into(),
                swapoff: self.bin("swapoff").into(),
                systemctl: self.bin("systemctl").into(),
                hosts_entry: Some(("k8s-api".into(), "10.108.0.10".parse().unwrap())),
                timeout: Duration::from_secs(10),
                restart_timeout: Duration::from_secs(10),
                kubeadm_inputs: None,
            }
        }
    }

    const CONTAINERD_DEFAULT: &str = "version = 2\n\n[plugins]\n  [plugins.\"io.containerd.grpc.v1.cri\"]\n    sandbox_image = \"registry.k8s.io/pause:3.8\"\n    [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc.options]\n      BinaryName = \"\"\n      SystemdCgroup = false\n";

    /// A fresh Debian host with containerd and the Kubernetes tools.
    fn fresh() -> Scratch {
        let s = Scratch {
            dir: tempfile::tempdir().unwrap(),
        };
        s.put("/proc/sys/net/ipv4/ip_forward", "0\n");
        s.put(
            "/proc/swaps",
            "Filename\tType\tSize\tUsed\tPriority\n/swapfile file 1048572 0 -2\n",
        );
        s.put(
            "/etc/fstab",
            "UUID=1 / ext4 defaults 0 1\n/swapfile none swap sw 0 0\n",
        );
        s.put("/etc/hosts", "127.0.0.1\tlocalhost\n");
        s.put("/etc/containerd/config.toml", CONTAINERD_DEFAULT);
        fs::create_dir_all(s.root().join("sys/module")).unwrap();
        s.script("modprobe", "mkdir -p \"$ROOT/sys/module/$1\"\n[ \"$1\" = br_netfilter ] && mkdir -p \"$ROOT/proc/sys/net/bridge\" && echo 0 > \"$ROOT/proc/sys/net/bridge/bridge-nf-call-iptables\" && echo 0 > \"$ROOT/proc/sys/net/bridge/bridge-nf-call-ip6tables\"\nexit 0");
        s.script("sysctl", "[ \"$1\" = -w ] || exit 2\nk=${2%%=*}; v=${2#*=}\nf=\"$ROOT/proc/sys/$(echo $k | tr . /)\"\n[ -e \"$f\" ] || { echo \"sysctl: cannot stat $f\" >&2; exit 255; }\necho $v > \"$f\"");
        s.script("swapoff", "head -n1 \"$ROOT/proc/swaps\" > \"$ROOT/proc/swaps.new\" && mv \"$ROOT/proc/swaps.new\" \"$ROOT/proc/swaps\"");
        s.script("systemctl", "exit 0");
        s.script(
            "containerd",
            "echo 'containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+b1'",
        );
        s.script("kubelet", "echo 'Kubernetes v1.31.2'");
        s.script(
            "kubeadm",
            "[ \"$*\" = 'version -o short' ] || exit 2\necho v1.31.2",
        );
        s.script(
            "kubectl",
            "echo 'Client Version: v1.31.2'; echo 'Kustomize Version: v5.4.2'",
        );
        s
    }

    #[test]
    fn fresh_host_is_prepared_then_left_alone() {
        let s = fresh();
        let r = s.prep().run();
        assert!(r.ok, "{r:#?}");
        assert_eq!(r.kubeadm_version.as_deref(), Some("v1.31.2"));
        assert_eq!(r.kubeadm_minor.as_deref(), Some("1.31"));
        let state = |n: &str| {
            r.checks
                .iter()
                .find(|c| c.name == n)
                .unwrap_or_else(|| panic!("{n}"))
                .state
        };
        for n in [
            "module overlay",
            "module br_netfilter",
            "sysctl net.ipv4.ip_forward",
            "swap",
            "containerd cgroup driver",
            "hosts line",
        ] {
            assert_eq!(state(n), CheckState::Changed, "{n}");
        }
        assert_eq!(state("swap at boot"), CheckState::Warning);
        assert_eq!(state("kubeadm"), CheckState::Ok);
        let calls = s.log();
        let changing: Vec<&String> = calls
            .iter()
            .filter(|c| {
                !c.contains("version") && !c.starts_with("containerd") && !c.starts_with("kubelet")
            })
            .collect();
        assert_eq!(
            changing,
            [
                "modprobe overlay",
                "modprobe br_netfilter",
                "sysctl -w net.bridge.bridge-nf-call-iptables=1",
                "sysctl -w net.bridge.bridge-nf-call-ip6tables=1",
                "sysctl -w net.ipv4.ip_forward=1",
                "swapoff -a",
                "systemctl restart containerd",
            ]
        );
        assert_eq!(
            s.file(hostprep::MODULES_FILE),
            hostprep::modules_file_contents()
        );
        assert_eq!(
            s.file(hostprep::SYSCTL_FILE),
            hostprep::sysctl_file_contents()
        );
        assert_eq!(
            s.file("/etc/containerd/config.toml"),
            CONTAINERD_DEFAULT.replace("SystemdCgroup = false", "SystemdCgroup = true")
        );
        assert_eq!(
            s.file("/etc/containerd/config.toml.kubeha-orig"),
            CONTAINERD_DEFAULT
        );
        assert_eq!(
            s.file("/etc/hosts"),
            "127.0.0.1\tlocalhost\n10.108.0.10\tk8s-api\t# kubeha: managed\n"
        );
        // fstab is reported, never edited.
        assert!(s.file("/etc/fstab").contains("/swapfile none swap"));

        // Second run: nothing to do, containerd not restarted.
        fs::remove_file(s.dir.path().join("calls")).unwrap();
        let r = s.prep().run();
        assert!(r.ok && r.applied.is_empty(), "{r:#?}");
        assert!(
            r.checks.iter().all(|c| c.state != CheckState::Changed),
            "{r:#?}"
        );
        assert!(
            !s.log()
                .iter()
                .any(|c| c.starts_with("systemctl") || c.starts_with("modprobe")),
            "{:?}",
            s.log()
        );
    }

    #[test]
    fn an_unfixable_check_changes_nothing() {
        let s = fresh();
        fs::remove_file(s.bin("kubelet")).unwrap();
        let r = s.prep().run();
        assert!(!r.ok);
        assert!(r.applied.is_empty(), "{:?}", r.applied);
        assert_eq!(r.errors.len(), 1);
        assert!(
            r.errors[0].contains("kubelet cannot be fixed"),
            "{:?}",
            r.errors
        );
        let kubelet = r.checks.iter().find(|c| c.name == "kubelet").unwrap();
        assert_eq!(kubelet.state, CheckState::Failed);
        assert!(kubelet.remedy.as_deref().unwrap().contains("apt"));
        // Not half-prepared: no command ran, no file written.
        assert!(
            !s.log().iter().any(|c| c.starts_with("modprobe")
                || c.starts_with("sysctl")
                || c.starts_with("swapoff")),
            "{:?}",
            s.log()
        );
        assert!(!s.root().join("etc/modules-load.d/kubeha.conf").exists());
        assert_eq!(s.file("/etc/hosts"), "127.0.0.1\tlocalhost\n");
        assert_eq!(s.file("/etc/containerd/config.toml"), CONTAINERD_DEFAULT);
    }

    #[test]
    fn a_failing_command_is_named_with_its_stderr() {
        let s = fresh();
        s.script("modprobe", "echo \"modprobe: FATAL: Module $1 not found in directory /lib/modules/6.1.0\" >&2\nexit 1");
        let r = s.prep().run();
        assert!(!r.ok);
        assert!(
            r.errors[0].contains(
                "modprobe overlay` failed (exit status: 1); stderr: modprobe: FATAL: Module overlay not found"
            ),
            "{:?}",
            r.errors
        );
        assert_eq!(
            r.applied,
            ["write /etc/modules-load.d/kubeha.conf", "write /etc/hosts"]
        );
        // Stopped at the failure: nothing after it ran.
        assert!(
            !s.log()
                .iter()
                .any(|c| c.starts_with("swapoff") || c.starts_with("systemctl")),
            "{:?}",
            s.log()
        );
    }

    #[test]
    fn report_only_changes_nothing() {
        let s = fresh();
        let mut p = s.prep();
        p.fix = false;
        let r = p.run();
        assert!(!r.ok);
        assert!(r.applied.is_empty());
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        let swap = r.checks.iter().find(|c| c.name == "swap").unwrap();
        assert_eq!(swap.state, CheckState::Failed);
        assert_eq!(swap.remedy.as_deref(), Some("run `swapoff -a`"));
        assert_eq!(s.file("/etc/hosts"), "127.0.0.1\tlocalhost\n");
        assert!(
            !s.log()
                .iter()
                .any(|c| c.starts_with("modprobe") || c.starts_with("swapoff"))
        );
    }

    #[test]
    fn built_in_modules_count_as_present() {
        let s = fresh();
        s.put("/proc/filesystems", "nodev\tsysfs\nnodev\toverlay\n");
        fs::create_dir_all(s.root().join("proc/sys/net/bridge")).unwrap();
        let o = s.prep().observe();
        assert_eq!(o.modules_present.len(), 2, "{:?}", o.modules_present);
    }

    #[test]
    fn version_parsing() {
        assert_eq!(k8s_version("Kubernetes v1.31.2\n").unwrap(), "v1.31.2");
        assert_eq!(
            k8s_version("Client Version: v1.30.1\nKustomize Version: v5.0.4\n").unwrap(),
            "v1.30.1"
        );
        assert!(k8s_version("garbage").unwrap_err().contains("garbage"));
    }

    #[test]
    fn systemd_runner_reads_the_report_of_the_transient_unit() {
        let s = fresh();
        // Stands in for `systemd-run … kubeha-agent --prepare-host`: prints
        // what `prepare_host_main` prints.
        let report = s.prep().run();
        let json = serde_json::to_string(&report).unwrap();
        fs::write(s.dir.path().join("report.json"), &json).unwrap();
        s.script(
            "systemd-run",
            &format!("cat '{}'", s.dir.path().join("report.json").display()),
        );
        let argv = vec![s.bin("systemd-run").into_os_string(), "--wait".into()];
        let got = Runner::Systemd {
            argv,
            timeout: Duration::from_secs(10),
        }
        .run();
        assert_eq!(got, report);

        s.script(
            "systemd-run",
            "echo 'Failed to start transient service unit: Access denied' >&2; exit 1",
        );
        let argv = vec![s.bin("systemd-run").into_os_string()];
        let got = Runner::Systemd {
            argv,
            timeout: Duration::from_secs(10),
        }
        .run();
        assert!(!got.ok);
        assert!(
            got.errors[0]
                .contains("(exit status: 1); stderr: Failed to start transient service unit"),
            "{:?}",
            got.errors
        );

        s.script("systemd-run", "echo not json");
        let argv = vec![s.bin("systemd-run").into_os_string()];
        let got = Runner::Systemd {
            argv,
            timeout: Duration::from_secs(10),
        }
        .run();
        assert!(
            got.errors[0].contains("printed no report"),
            "{:?}",
            got.errors
        );
    }

    #[tokio::test]
    async fn worker_runs_at_start_and_on_request() {
        let s = fresh();
        let mut worker = Some(PreflightWorker::spawn(Runner::InProcess(Box::new(
            s.prep(),
        ))));
        let minor = tokio::time::timeout(
            Duration::from_secs(30),
            PreflightWorker::minor_changed(&mut worker),
        )
        .await
        .expect("first run finishes");
        assert_eq!(minor, "1.31");
        assert!(worker.as_ref().unwrap().latest().unwrap().ok);
        let r = tokio::time::timeout(Duration::from_secs(30), worker.as_ref().unwrap().request())
            .await
            .unwrap()
            .unwrap();
        assert!(r.ok && r.applied.is_empty(), "{r:#?}");
    }
}
