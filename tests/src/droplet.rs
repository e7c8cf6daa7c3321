//! Real droplets: a Debian 12 root booted with systemd in a network
//! namespace, with the built `kubeha_*.deb` installed by apt, so the unit,
//! the conffile, the maintainer scripts and `Restart=always` are what runs.
//!
//! - [`RootCache`]: a `debootstrap --variant=minbase bookworm` root with
//!   systemd and the package's dependencies, made once and kept under
//!   `/var/cache/kubeha-tests/`, keyed by its package list. The mirror comes
//!   from the host's apt configuration.
//! - [`Droplet`]: one container on that root: a private overlay (the cache
//!   stays read-only), `systemd-nspawn -b --network-namespace-path=…`,
//!   commands run with `nsenter` into the container's init. Dropping it
//!   powers it off (SIGTERM to the nspawn it started, SIGKILL after a
//!   deadline) and removes the overlay and its cgroups.
//! - [`TestNet`]: namespaces for tests that have no lab: a bridge in its own
//!   namespace and one namespace per droplet, `khdeb-<pid>-…`, addresses
//!   from 198.18.0.0/24, nothing in the host namespace, removed on drop.
//!
//! Everything a run creates carries the creating process id in its name
//! (`khdeb-<pid>-…`); [`cleanup_stale`] removes what a killed run left.
//! All of it needs root, `systemd-nspawn` (systemd-container) and
//! `debootstrap`.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Name prefix of every namespace, cgroup, machine and directory made here.
pub const PREFIX: &str = "khdeb-";
/// Where cached roots live.
pub const CACHE_DIR: &str = "/var/cache/kubeha-tests";
/// Where droplet overlays live while they run.
pub const RUN_DIR: &str = "/var/tmp/kubeha-droplets";
/// The Debian release of the droplets.
pub const SUITE: &str = "bookworm";
/// Installed into every cached root besides the package's own dependencies:
/// systemd to boot, dbus for `systemctl`'s friends, iproute2 and procps to
/// look around, haproxy because the package recommends it (and its enabled
/// `haproxy.service` exercises the unit's `Conflicts=`).
pub const BASE_PACKAGES: &[&str] = &["systemd", "dbus", "iproute2", "procps", "haproxy"];
/// Where the directory holding the .deb is bind-mounted (read-only) in a droplet.
pub const DEB_MOUNT: &str = "/kubeha-deb";

const PATH_ENV: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, thiserror::Error)]
pub enum DropletError {
    #[error("`{argv}` failed ({status}): {stderr}")]
    Command {
        argv: String,
        status: String,
        stderr: String,
    },
    #[error("cannot run `{argv}`: {source}")]
    Spawn {
        argv: String,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("droplet `{droplet}`: {what} did not happen within {limit:?}{detail}")]
    Timeout {
        droplet: String,
        what: String,
        limit: Duration,
        detail: String,
    },
    #[error("no Debian mirror for `{SUITE}` in {searched}; set `KUBEHA_DEBIAN_MIRROR`")]
    NoMirror { searched: String },
    #[error("{0}")]
    Other(String),
}

type Result<T, E = DropletError> = std::result::Result<T, E>;

fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> DropletError {
    let path = path.into();
    move |source| DropletError::Io { path, source }
}

fn argv_string(cmd: &Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    parts.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    parts.join(" ")
}

/// Run a host command; its stdout, or an error with argv, status and stderr.
fn run(cmd: &mut Command) -> Result<String> {
    let out = output(cmd)?;
    check(cmd, out)
}

fn output(cmd: &mut Command) -> Result<Output> {
    cmd.stdin(Stdio::null())
        .output()
        .map_err(|source| DropletError::Spawn {
            argv: argv_string(cmd),
            source,
        })
}

fn check(cmd: &Command, out: Output) -> Result<String> {
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(DropletError::Command {
            argv: argv_string(cmd),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Poll `cond` every 50 ms until it holds or `limit` passes.
pub fn wait_for<T>(limit: Duration, mut cond: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = cond() {
            return Some(v);
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// FNV-1a: a stable hash for the cache key (std's hasher may change
/// between Rust releases, which would rebuild the cache for nothing).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

// ---------------------------------------------------------------- the root

/// A cached Debian root with systemd and the package's dependencies.
#[derive(Debug, Clone)]
pub struct RootCache {
    dir: PathBuf,
    packages: Vec<String>,
    /// How long making it took; `None` when it was already cached.
    pub built_in: Option<Duration>,
}

/// Serializes cache builds inside one process (threads); `flock` does it
/// between processes.
static BUILD: Mutex<()> = Mutex::new(());

impl RootCache {
    /// The root for `deb`: [`BASE_PACKAGES`] plus the names in its `Depends`.
    pub fn for_deb(deb: &Path) -> Result<RootCache> {
        let depends = run(Command::new("dpkg-deb").arg("-f").arg(deb).arg("Depends"))?;
        let mut packages: Vec<String> = BASE_PACKAGES.iter().map(|s| s.to_string()).collect();
        packages.extend(depends_names(&depends));
        RootCache::ensure(&packages)
    }

    /// The root with exactly these packages (plus minbase), made if missing.
    pub fn ensure(packages: &[String]) -> Result<RootCache> {
        let set: BTreeSet<String> = packages.iter().cloned().collect();
        let packages: Vec<String> = set.into_iter().collect();
        let key = format!(
            "{:016x}",
            fnv1a(format!("v1 {SUITE} minbase {}", packages.join(",")).as_bytes())
        );
        let dir = Path::new(CACHE_DIR).join(format!("debroot-{SUITE}-{key}"));
        let mut cache = RootCache {
            dir,
            packages,
            built_in: None,
        };
        if cache.is_complete() {
            return Ok(cache);
        }
        let _guard = BUILD.lock().unwrap_or_else(|e| e.into_inner());
        fs::create_dir_all(CACHE_DIR).map_err(io_err(CACHE_DIR))?;
        let lock_path = Path::new(CACHE_DIR).join("debroot.lock");
        let lock = fs::File::create(&lock_path).map_err(io_err(&lock_path))?;
        // SAFETY: flock on a file descriptor we own; released when `lock` closes.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io_err(&lock_path)(std::io::Error::last_os_error()));
        }
        if !cache.is_complete() {
            let start = Instant::now();
            cache.build()?;
            cache.built_in = Some(start.elapsed());
        }
        drop(lock);
        Ok(cache)
    }

    /// The root directory (read-only for droplets: they run on an overlay).
    pub fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    pub fn packages(&self) -> &[String] {
        &self.packages
    }

    fn is_complete(&self) -> bool {
        self.dir.join("complete").exists() && self.root().join("usr/lib/systemd/systemd").exists()
    }

    fn build(&self) -> Result<()> {
        let mirror = debian_mirror()?;
        let tmp = self.dir.with_extension("partial");
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
        }
        if self.dir.exists() {
            fs::remove_dir_all(&self.dir).map_err(io_err(&self.dir))?;
        }
        fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
        let root = tmp.join("root");
        run(Command::new("debootstrap")
            .arg("--variant=minbase")
            .arg(format!("--include={}", self.packages.join(",")))
            .arg(SUITE)
            .arg(&root)
            .arg(&mirror))?;
        // debootstrap copies the host's name; droplets get theirs from nspawn.
        let _ = fs::remove_file(root.join("etc/hostname"));
        // The downloaded .debs are not needed to boot.
        let archives = root.join("var/cache/apt/archives");
        if let Ok(entries) = fs::read_dir(&archives) {
            for e in entries.flatten() {
                if e.path().extension() == Some(OsStr::new("deb")) {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        let list = tmp.join("packages");
        fs::write(&list, self.packages.join("\n") + "\n").map_err(io_err(&list))?;
        let done = tmp.join("complete");
        fs::write(&done, format!("{SUITE} from {mirror}\n")).map_err(io_err(&done))?;
        fs::rename(&tmp, &self.dir).map_err(io_err(&self.dir))
    }
}

/// Package names of a `Depends` field: first alternative, no versions.
pub fn depends_names(field: &str) -> Vec<String> {
    field
        .split(',')
        .filter_map(|dep| {
            let first = dep.split('|').next()?.trim();
            let name = first.split([' ', '(', ':']).next()?.trim();
            (!name.is_empty()).then(|| name.to_string())
        })
        .collect()
}

/// The Debian mirror of the host's apt configuration (`KUBEHA_DEBIAN_MIRROR`
/// overrides it): the first `deb` source for [`SUITE`] with `main`.
pub fn debian_mirror() -> Result<String> {
    if let Ok(m) = std::env::var("KUBEHA_DEBIAN_MIRROR")
        && !m.trim().is_empty()
    {
        return Ok(m.trim().to_string());
    }
    let mut searched = Vec::new();
    let mut files: Vec<PathBuf> = Vec::new();
    if let Ok(entries) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut v: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        v.sort();
        files.extend(v);
    }
    files.push(PathBuf::from("/etc/apt/sources.list"));
    for f in files {
        let Ok(text) = fs::read_to_string(&f) else {
            continue;
        };
        searched.push(f.display().to_string());
        let found = match f.extension().and_then(OsStr::to_str) {
            Some("sources") => mirror_from_deb822(&text, SUITE),
            Some("list") => mirror_from_one_line(&text, SUITE),
            _ => None,
        };
        if let Some(m) = found {
            return Ok(m);
        }
    }
    Err(DropletError::NoMirror {
        searched: searched.join(", "),
    })
}

/// From deb822 `.sources` text.
pub fn mirror_from_deb822(text: &str, suite: &str) -> Option<String> {
    for para in text.split("\n\n") {
        let mut fields: Vec<(String, String)> = Vec::new();
        for line in para.lines() {
            if line.trim_start().starts_with('#') || line.trim().is_empty() {
                continue;
            }
            if line.starts_with([' ', '\t']) {
                if let Some(last) = fields.last_mut() {
                    last.1.push(' ');
                    last.1.push_str(line.trim());
                }
            } else if let Some((k, v)) = line.split_once(':') {
                fields.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let get = |k: &str| {
            fields
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
                .unwrap_or("")
        };
        let words = |k: &str| {
            get(k)
                .split_whitespace()
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        if get("enabled").eq_ignore_ascii_case("no") {
            continue;
        }
        if words("types").iter().any(|t| t == "deb")
            && words("suites").iter().any(|s| s == suite)
            && words("components").iter().any(|c| c == "main")
            && let Some(uri) = words("uris").into_iter().next()
        {
            return Some(uri);
        }
    }
    None
}

/// From one-line `sources.list` text.
pub fn mirror_from_one_line(text: &str, suite: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let line = line.split('#').next()?.trim();
        let mut words = line.split_whitespace();
        if words.next()? != "deb" {
            return None;
        }
        let mut uri = words.next()?;
        if uri.starts_with('[') {
            // options: `[arch=amd64 signed-by=…]`
            while !uri.ends_with(']') {
                uri = words.next()?;
            }
            uri = words.next()?;
        }
        let s = words.next()?;
        let comps: Vec<&str> = words.collect();
        (s == suite && comps.contains(&"main")).then(|| uri.to_string())
    })
}

// ---------------------------------------------------------------- droplets

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
    name: String,
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

    /// `apt-get install --no-install-recommends ./kubeha_*.deb` (offline: the
    /// dependencies are in the cached root; the recommended Kubernetes
    /// packages are not, and HAProxy already is); returns how long it took.
    pub fn install_deb(&self) -> Result<Duration> {
        let start = Instant::now();
        self.exec_ok([
            OsStr::new("apt-get"),
            OsStr::new("install"),
            OsStr::new("-y"),
            OsStr::new("-q"),
            OsStr::new("--no-install-recommends"),
            self.deb_file.as_os_str(),
        ])?;
        Ok(start.elapsed())
    }

    /// `systemctl start kubeha-agent`, then wait until the unit is active.
    pub fn start_agent(&self) -> Result<()> {
        self.exec_ok(["systemctl", "start", "kubeha-agent"])?;
        self.wait_agent_active(Duration::from_secs(20)).map(|_| ())
    }

    /// A property of the agent's unit (`systemctl show -p NAME --value`).
    pub fn unit_property(&self, name: &str) -> Result<String> {
        Ok(self
            .exec_ok([
                "systemctl",
                "show",
                "-p",
                name,
                "--value",
                "kubeha-agent.service",
            ])?
            .trim()
            .to_string())
    }

    /// The agent's main PID inside the droplet, if it runs.
    pub fn agent_pid(&self) -> Result<Option<u32>> {
        let p: u32 = self.unit_property("MainPID")?.parse().unwrap_or(0);
        Ok((p != 0).then_some(p))
    }

    /// Wait until the unit is `active` with a main process; its PID.
    pub fn wait_agent_active(&self, limit: Duration) -> Result<u32> {
        wait_for(limit, || {
            let active = self.unit_property("ActiveState").ok()? == "active";
            let pid = self.agent_pid().ok()??;
            active.then_some(pid)
        })
        .ok_or_else(|| {
            let journal = self
                .exec(["journalctl", "-u", "kubeha-agent", "-n", "20", "--no-pager"])
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            DropletError::Timeout {
                droplet: self.name.clone(),
                what: "kubeha-agent.service to become active".into(),
                limit,
                detail: format!("; journal:\n{journal}"),
            }
        })
    }

    /// `kill -9` the agent's main process (not the unit: systemd sees a
    /// crash); returns the PID it had.
    pub fn kill_agent(&self) -> Result<u32> {
        let pid = self.agent_pid()?.ok_or_else(|| {
            DropletError::Other(format!("droplet `{}`: the agent is not running", self.name))
        })?;
        self.exec_ok(["kill", "-9", &pid.to_string()])?;
        Ok(pid)
    }

    /// `kubeha-ctl status -o json`, parsed.
    pub fn status(&self) -> Result<serde_json::Value> {
        let out = self.exec_ok(["kubeha-ctl", "status", "-o", "json"])?;
        serde_json::from_str(&out).map_err(|e| {
            DropletError::Other(format!(
                "droplet `{}`: `kubeha-ctl status -o json` printed no JSON ({e}): {out}",
                self.name
            ))
        })
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
fn cgroup_hierarchies() -> Vec<PathBuf> {
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
fn remove_cgroup(cg: &Path) -> Result<()> {
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

fn remove_overlay(dir: &Path) -> Result<()> {
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

// ------------------------------------------------------------ test network

/// Namespaces for droplets when there is no lab: `khdeb-<pid>-br` holds a
/// bridge, each `khdeb-<pid>-<name>` a veth `eth0` on it with
/// `198.18.0.<first_host + i>/24`. Nothing is routed; nothing touches the
/// host namespace. Dropping it deletes the namespaces (and so the links).
pub struct TestNet {
    tag: String,
    pub bridge_ns: String,
    /// `(name, namespace, address)` per droplet.
    pub nodes: Vec<(String, String, String)>,
}

impl TestNet {
    /// `names[i]` gets `198.18.0.<first_host + i>`.
    pub fn new(label: &str, names: &[&str], first_host: u8) -> Result<TestNet> {
        let tag = format!("{PREFIX}{}-{label}", std::process::id());
        let bridge_ns = format!("{tag}-br");
        let mut net = TestNet {
            tag,
            bridge_ns: bridge_ns.clone(),
            nodes: Vec::new(),
        };
        run(Command::new("ip").args(["netns", "add", &bridge_ns]))?;
        let ipb = |args: &[&str]| run(Command::new("ip").args(["-n", &bridge_ns]).args(args));
        ipb(&["link", "add", "br0", "type", "bridge"])?;
        ipb(&["link", "set", "br0", "up"])?;
        ipb(&["link", "set", "lo", "up"])?;
        for (i, name) in names.iter().enumerate() {
            let host = u32::from(first_host) + i as u32;
            if !(1..=254).contains(&host) {
                return Err(DropletError::Other(format!(
                    "198.18.0.{host} is not a host address"
                )));
            }
            let ns = format!("{}-{name}", net.tag);
            let addr = format!("198.18.0.{host}");
            run(Command::new("ip").args(["netns", "add", &ns]))?;
            net.nodes.push((name.to_string(), ns.clone(), addr.clone()));
            let port = format!("p{i}");
            // Made inside the bridge namespace, then one end moved: no
            // link ever exists in the host namespace.
            ipb(&["link", "add", &port, "type", "veth", "peer", "name", "eth0"])?;
            ipb(&["link", "set", "eth0", "netns", &ns])?;
            ipb(&["link", "set", &port, "master", "br0"])?;
            ipb(&["link", "set", &port, "up"])?;
            let ipn = |args: &[&str]| run(Command::new("ip").args(["-n", &ns]).args(args));
            ipn(&["addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
            ipn(&["link", "set", "eth0", "up"])?;
            ipn(&["link", "set", "lo", "up"])?;
        }
        Ok(net)
    }

    /// `(namespace, address)` of a node.
    pub fn node(&self, name: &str) -> (&str, &str) {
        let n = self
            .nodes
            .iter()
            .find(|n| n.0 == name)
            .unwrap_or_else(|| panic!("no node `{name}` in the test network"));
        (&n.1, &n.2)
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        for (_, ns, _) in &self.nodes {
            let _ = run(Command::new("ip").args(["netns", "del", ns]));
        }
        let _ = run(Command::new("ip").args(["netns", "del", &self.bridge_ns]));
    }
}

// ------------------------------------------------------------------ stale

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// `khdeb-<pid>-…` → pid.
fn owner_pid(name: &str) -> Option<u32> {
    name.strip_prefix(PREFIX)?.split('-').next()?.parse().ok()
}

/// Remove what runs killed before their cleanup left behind: containers
/// (killed by PID through their cgroups), overlays, cgroups and namespaces
/// whose creating process is gone. Returns what was removed.
pub fn cleanup_stale() -> Vec<String> {
    let mut removed = Vec::new();
    let stale = |name: &str| owner_pid(name).is_some_and(|p| !pid_alive(p));
    for h in cgroup_hierarchies() {
        for e in fs::read_dir(&h).into_iter().flatten().flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if stale(&n) && remove_cgroup(&e.path()).is_ok() {
                removed.push(e.path().display().to_string());
            }
        }
    }
    for e in fs::read_dir(RUN_DIR).into_iter().flatten().flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if stale(&n) && remove_overlay(&e.path()).is_ok() {
            removed.push(e.path().display().to_string());
        }
    }
    for e in fs::read_dir("/run/netns").into_iter().flatten().flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if stale(&n) && run(Command::new("ip").args(["netns", "del", &n])).is_ok() {
            removed.push(format!("netns {n}"));
        }
    }
    for e in fs::read_dir("/run/systemd/nspawn/propagate")
        .into_iter()
        .flatten()
        .flatten()
    {
        let n = e.file_name().to_string_lossy().into_owned();
        if stale(&n) {
            let _ = fs::remove_dir_all(e.path());
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deb822_mirror() {
        let text = "Types: deb\n# http://snapshot.example/archive\nURIs: http://mirror.example/debian\n\
                    Suites: bookworm bookworm-updates\nComponents: main\nSigned-By: /k.gpg\n\n\
                    Types: deb\nURIs: http://security.example/debian-security\n\
                    Suites: bookworm-security\nComponents: main\n";
        assert_eq!(
            mirror_from_deb822(text, "bookworm").as_deref(),
            Some("http://mirror.example/debian")
        );
        assert_eq!(mirror_from_deb822(text, "trixie"), None);
        let disabled = "Enabled: no\nTypes: deb\nURIs: http://a.example/\nSuites: bookworm\nComponents: main\n";
        assert_eq!(mirror_from_deb822(disabled, "bookworm"), None);
        let src_only =
            "Types: deb-src\nURIs: http://a.example/\nSuites: bookworm\nComponents: main\n";
        assert_eq!(mirror_from_deb822(src_only, "bookworm"), None);
    }

    #[test]
    fn one_line_mirror() {
        let text = "# deb http://old.example/ bookworm main\n\
                    deb-src http://src.example/ bookworm main\n\
                    deb [arch=amd64 signed-by=/k.gpg] http://m.example/debian bookworm main contrib\n";
        assert_eq!(
            mirror_from_one_line(text, "bookworm").as_deref(),
            Some("http://m.example/debian")
        );
        assert_eq!(
            mirror_from_one_line("deb http://m.example/ bookworm contrib\n", "bookworm"),
            None
        );
    }

    #[test]
    fn depends_field() {
        assert_eq!(
            depends_names("libc6 (>= 2.34), libgcc-s1 (>= 4.2) | libgcc1, foo:any"),
            vec!["libc6", "libgcc-s1", "foo"]
        );
        assert!(depends_names("").is_empty());
    }

    #[test]
    fn owners_and_hash() {
        assert_eq!(owner_pid("khdeb-123-n1"), Some(123));
        assert_eq!(owner_pid("khdeb-x-n1"), None);
        assert_eq!(owner_pid("khlab-123-n1"), None);
        // FNV-1a test vectors.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
