//! [`Droplet`]: one booted container: overlay, `systemd-nspawn -b`,
//! commands through `nsenter`, files, power-off and cleanup.

use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::{
    DEB_MOUNT, DropletError, PATH_ENV, PREFIX, RUN_DIR, Result, RootCache, argv_string, check,
    io_err, output, run, wait_for,
};

/// What [`Droplet::boot`] needs to bring up a configured, running agent.
#[derive(Debug, Clone)]
pub struct DropletSpec<'a> {
    /// Node and host name.
    pub name: &'a str,
    /// Network namespace: a name under `/run/netns` or an absolute path.
    pub netns: &'a str,
    /// The built package (`target/debian/kubeha_*.deb`).
    pub deb: &'a Path,
    /// The text of `/etc/kubeha/kubeha.toml`.
    pub config: &'a str,
    /// The text of `/etc/kubeha/cluster.key` (base64 key lines).
    pub key: &'a str,
    /// The text of [`CONTROL_KEY_PATH`], on nodes of the control tier.
    pub control_key: Option<&'a str>,
}

/// Where a droplet keeps the control key.
pub const CONTROL_KEY_PATH: &str = "/etc/kubeha/control.key";

/// A booted container. Dropping it powers it off and removes its overlay.
pub struct Droplet {
    pub(super) name: String,
    machine: String,
    dir: PathBuf,
    cgroups: Vec<PathBuf>,
    nspawn: Option<Child>,
    leader: u32,
    deb_file: PathBuf,
    /// How long from starting nspawn until systemd reported the system up.
    pub boot_time: Duration,
}

impl std::fmt::Debug for Droplet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Droplet")
            .field("name", &self.name)
            .field("machine", &self.machine)
            .field("leader", &self.leader)
            .finish()
    }
}

const BOOT_LIMIT: Duration = Duration::from_secs(90);
const STOP_LIMIT: Duration = Duration::from_secs(20);

impl Droplet {
    /// Boot, install the package with apt, write the config and the key,
    /// start the agent and wait until the unit is active: what a provisioned
    /// droplet looks like. The lab's entry point.
    pub fn boot(cache: &RootCache, spec: &DropletSpec<'_>) -> Result<Droplet> {
        let d = Droplet::boot_bare(cache, spec.netns, spec.name, spec.deb)?;
        d.install_deb()?;
        d.write_file("/etc/kubeha/kubeha.toml", spec.config.as_bytes(), 0o644)?;
        d.write_file("/etc/kubeha/cluster.key", spec.key.as_bytes(), 0o600)?;
        if let Some(k) = spec.control_key {
            d.write_file(CONTROL_KEY_PATH, k.as_bytes(), 0o600)?;
        }
        d.start_agent()?;
        Ok(d)
    }

    /// Boot the cached root in `netns` without installing anything; the
    /// directory holding `deb` is visible inside at [`DEB_MOUNT`].
    pub fn boot_bare(cache: &RootCache, netns: &str, name: &str, deb: &Path) -> Result<Droplet> {
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            return Err(DropletError::Other(format!(
                "droplet name `{name}`: letters, digits and `-` only"
            )));
        }
        let netns_path = if netns.starts_with('/') {
            PathBuf::from(netns)
        } else {
            Path::new("/run/netns").join(netns)
        };
        if !netns_path.exists() {
            return Err(io_err(&netns_path)(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "network namespace not found",
            )));
        }
        let deb = fs::canonicalize(deb).map_err(io_err(deb))?;
        let deb_dir = deb.parent().expect("a file has a parent").to_path_buf();
        let deb_file = Path::new(DEB_MOUNT).join(deb.file_name().expect("a file name"));
        let tag = format!("{PREFIX}{}-{name}", std::process::id());

        let dir = Path::new(RUN_DIR).join(&tag);
        if dir.exists() {
            // Same process, same name: another droplet of ours still uses it.
            return Err(DropletError::Other(format!(
                "droplet `{name}` already exists in this process ({})",
                dir.display()
            )));
        }
        let (upper, work, merged) = (dir.join("upper"), dir.join("work"), dir.join("merged"));
        for d in [&upper, &work, &merged] {
            fs::create_dir_all(d).map_err(io_err(d))?;
        }
        let mut droplet = Droplet {
            name: name.to_string(),
            machine: tag.clone(),
            dir: dir.clone(),
            cgroups: Vec::new(),
            nspawn: None,
            leader: 0,
            deb_file,
            boot_time: Duration::ZERO,
        };
        // From here on, Drop cleans up whatever was made.
        run(Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o"])
            .arg(format!(
                "lowerdir={},upperdir={},workdir={}",
                cache.root().display(),
                upper.display(),
                work.display()
            ))
            .arg(&merged))?;

        // Each container gets its own cgroup (on this kind of host nspawn
        // would otherwise put every container's payload in the same one).
        for h in cgroup_hierarchies() {
            let cg = h.join(&tag);
            fs::create_dir_all(&cg).map_err(io_err(&cg))?;
            droplet.cgroups.push(cg);
        }
        let mut script = String::new();
        for cg in &droplet.cgroups {
            script.push_str(&format!("echo $$ > '{}/cgroup.procs' && ", cg.display()));
        }
        script.push_str("exec systemd-nspawn \"$@\"");
        let log_path = dir.join("console.log");
        let log = fs::File::create(&log_path).map_err(io_err(&log_path))?;
        let log2 = log.try_clone().map_err(io_err(&log_path))?;
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(&script)
            .arg("sh")
            .arg("--quiet")
            .arg("--boot")
            .arg("--register=no")
            .arg("--keep-unit")
            .arg("--console=read-only")
            .arg(format!("--directory={}", merged.display()))
            .arg(format!("--machine={tag}"))
            .arg(format!("--hostname={name}"))
            .arg(format!("--network-namespace-path={}", netns_path.display()))
            // With a namespace path, this keeps CAP_NET_ADMIN and a writable
            // /proc/sys/net in the container, as on a real machine.
            .arg("--private-network")
            // nspawn's default set lacks CAP_IPC_LOCK, which a real machine's
            // root has (the unit grants it to the VIP guardian for mlockall).
            .arg("--capability=CAP_IPC_LOCK")
            .arg(format!("--bind-ro={}:{DEB_MOUNT}", deb_dir.display()))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        let start = Instant::now();
        let child = cmd.spawn().map_err(|source| DropletError::Spawn {
            argv: argv_string(&cmd),
            source,
        })?;
        let nspawn_pid = child.id();
        droplet.nspawn = Some(child);

        droplet.leader = wait_for(BOOT_LIMIT, || {
            if let Some(Ok(Some(_))) = droplet.nspawn.as_mut().map(Child::try_wait) {
                return Some(0);
            }
            container_init(nspawn_pid)
        })
        .filter(|&p| p != 0)
        .ok_or_else(|| droplet.timeout("the container's init to appear", BOOT_LIMIT))?;

        let mut last = String::new();
        let up = wait_for(BOOT_LIMIT, || {
            if let Some(Ok(Some(_))) = droplet.nspawn.as_mut().map(Child::try_wait) {
                return Some(false);
            }
            let out = droplet.exec(["systemctl", "is-system-running"]).ok()?;
            last = String::from_utf8_lossy(&out.stdout).trim().to_string();
            matches!(last.as_str(), "running" | "degraded").then_some(true)
        });
        if up != Some(true) {
            return Err(droplet.timeout(
                &format!("systemd to finish booting (last state `{last}`)"),
                BOOT_LIMIT,
            ));
        }
        droplet.boot_time = start.elapsed();
        Ok(droplet)
    }

    fn timeout(&self, what: &str, limit: Duration) -> DropletError {
        let console = fs::read_to_string(self.dir.join("console.log")).unwrap_or_default();
        let tail: Vec<&str> = console.lines().rev().take(15).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        DropletError::Timeout {
            droplet: self.name.clone(),
            what: what.to_string(),
            limit,
            detail: if tail.is_empty() {
                String::new()
            } else {
                format!("; console:\n{}", tail.join("\n"))
            },
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The container's init as seen from the host (for `nsenter -t`).
    pub fn leader_pid(&self) -> u32 {
        self.leader
    }

    /// The droplet's root directory as seen from the host.
    pub fn root_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root", self.leader))
    }

    /// Host path of a path inside the droplet.
    pub fn host_path(&self, inside: &str) -> PathBuf {
        self.root_path().join(inside.trim_start_matches('/'))
    }

    /// Run a command inside the droplet (all of its namespaces, a clean
    /// environment); its output whatever the exit status.
    pub fn exec<I, S>(&self, argv: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        output(&mut self.command(argv))
    }

    /// Like [`Droplet::exec`], but a non-zero exit is an error naming the
    /// command, its status and stderr; returns stdout.
    pub fn exec_ok<I, S>(&self, argv: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.command(argv);
        let out = output(&mut cmd)?;
        check(&cmd, out).map_err(|e| match e {
            DropletError::Command {
                argv,
                status,
                stderr,
            } => DropletError::Command {
                argv: format!("{}: {}", self.name, argv_tail(&argv)),
                status,
                stderr,
            },
            e => e,
        })
    }

    /// `sh -c script` inside the droplet; stdout, or an error.
    pub fn sh(&self, script: &str) -> Result<String> {
        self.exec_ok(["sh", "-c", script])
    }

    fn command<I, S>(&self, argv: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new("nsenter");
        cmd.arg("--target")
            .arg(self.leader.to_string())
            .args(["--all", "--root", "--wd"])
            .arg("--")
            .args(["env", "-i"])
            .arg(format!("PATH={PATH_ENV}"))
            .args([
                "LANG=C.UTF-8",
                "TERM=dumb",
                "DEBIAN_FRONTEND=noninteractive",
                "SYSTEMD_PAGER=",
                "HOME=/root",
            ])
            .args(argv);
        cmd
    }

    /// Write a file inside the droplet (parents created) with `mode`.
    pub fn write_file(&self, inside: &str, bytes: &[u8], mode: u32) -> Result<()> {
        let path = self.host_path(inside);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(io_err(&path))?;
        f.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(io_err(&path))?;
        f.write_all(bytes).map_err(io_err(&path))?;
        f.sync_all().map_err(io_err(&path))
    }

    pub fn read_file(&self, inside: &str) -> Result<String> {
        let path = self.host_path(inside);
        fs::read_to_string(&path).map_err(io_err(&path))
    }

    /// The package file as seen inside the droplet.
    pub fn deb_path(&self) -> &Path {
        &self.deb_file
    }

    /// Ask the container to power off (SIGTERM to its nspawn); [`Drop`]
    /// then only waits. Lets a caller stop many droplets in parallel.
    pub fn begin_poweroff(&self) {
        if let Some(child) = &self.nspawn {
            // SAFETY: plain kill(2) of the nspawn process this value started.
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
            }
        }
    }

    /// Power off and clean up now; how long the poweroff took.
    pub fn poweroff(mut self) -> Result<Duration> {
        let start = Instant::now();
        self.shutdown()?;
        Ok(start.elapsed())
    }

    fn shutdown(&mut self) -> Result<()> {
        if let Some(mut child) = self.nspawn.take() {
            let exited = matches!(child.try_wait(), Ok(Some(_)));
            if !exited {
                // SAFETY: kill(2) of the nspawn we started.
                unsafe {
                    libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
                }
                let done = wait_for(STOP_LIMIT, || child.try_wait().ok().flatten());
                if done.is_none() {
                    // The container's init is ours too (nspawn's child): kill it
                    // and with it every process of its PID namespace.
                    if self.leader != 0 {
                        // SAFETY: kill(2) of the container init this droplet started.
                        unsafe {
                            libc::kill(self.leader as libc::pid_t, libc::SIGKILL);
                        }
                    }
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
        }
        let mut errors = Vec::new();
        if let Err(e) = remove_overlay(&self.dir) {
            errors.push(e.to_string());
        }
        for cg in self.cgroups.drain(..) {
            if let Err(e) = remove_cgroup(&cg) {
                errors.push(e.to_string());
            }
        }
        // nspawn leaves this behind when /run is not a tmpfs it may clean.
        let _ = fs::remove_dir_all(Path::new("/run/systemd/nspawn/propagate").join(&self.machine));
        if errors.is_empty() {
            Ok(())
        } else {
            Err(DropletError::Other(format!(
                "droplet `{}` cleanup: {}",
                self.name,
                errors.join("; ")
            )))
        }
    }
}

impl Drop for Droplet {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            eprintln!("{e}");
        }
    }
}

fn argv_tail(argv: &str) -> String {
    // Hide the nsenter/env preamble: show the command as typed inside.
    argv.split(" HOME=/root ")
        .nth(1)
        .unwrap_or(argv)
        .to_string()
}

/// The child of `nspawn` that is PID 1 of its own PID namespace.
fn container_init(nspawn: u32) -> Option<u32> {
    let tasks = fs::read_dir(format!("/proc/{nspawn}/task")).ok()?;
    for t in tasks.flatten() {
        let children = fs::read_to_string(t.path().join("children")).unwrap_or_default();
        for c in children
            .split_whitespace()
            .filter_map(|c| c.parse::<u32>().ok())
        {
            let status = fs::read_to_string(format!("/proc/{c}/status")).unwrap_or_default();
            let nspid = status.lines().find(|l| l.starts_with("NSpid:"))?;
            let ids: Vec<&str> = nspid.split_whitespace().skip(1).collect();
            if ids.len() >= 2 && ids.last() == Some(&"1") {
                return Some(c);
            }
        }
    }
    None
}

/// The host's cgroup hierarchies that track systemd units: the named
/// `systemd` v1 hierarchy and/or the unified (v2) one.
pub(super) fn cgroup_hierarchies() -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    if root.join("cgroup.controllers").exists() {
        return vec![root.to_path_buf()]; // pure cgroup v2
    }
    ["systemd", "unified"]
        .iter()
        .map(|h| root.join(h))
        .filter(|p| p.join("cgroup.procs").exists())
        .collect()
}

/// Kill (by PID, SIGKILL) what is still in a cgroup of ours, then remove it
/// bottom-up.
pub(super) fn remove_cgroup(cg: &Path) -> Result<()> {
    if !cg.exists() {
        return Ok(());
    }
    let mut dirs = Vec::new();
    collect_dirs(cg, &mut dirs);
    let ok = wait_for(Duration::from_secs(10), || {
        let mut any = false;
        for d in &dirs {
            let procs = fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
            for pid in procs
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
            {
                any = true;
                // SAFETY: kill(2) of a process in a cgroup this run created.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
        (!any).then_some(())
    });
    if ok.is_none() {
        return Err(DropletError::Other(format!(
            "{}: processes would not die",
            cg.display()
        )));
    }
    // Deepest first.
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for d in dirs {
        fs::remove_dir(&d).map_err(io_err(&d))?;
    }
    Ok(())
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    out.push(dir.to_path_buf());
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                collect_dirs(&e.path(), out);
            }
        }
    }
}

fn is_mounted(path: &Path) -> bool {
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let p = path.to_string_lossy();
    mounts
        .lines()
        .any(|l| l.split_whitespace().nth(4) == Some(p.as_ref()))
}

pub(super) fn remove_overlay(dir: &Path) -> Result<()> {
    let merged = dir.join("merged");
    if is_mounted(&merged) {
        let ok = wait_for(Duration::from_secs(5), || {
            run(Command::new("umount").arg(&merged)).ok()
        });
        if ok.is_none() {
            run(Command::new("umount").arg("--lazy").arg(&merged))?;
        }
    }
    if dir.exists() {
        fs::remove_dir_all(dir).map_err(io_err(dir))?;
    }
    Ok(())
}
