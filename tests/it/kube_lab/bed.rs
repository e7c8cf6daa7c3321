//! The test bed: a loopback cluster of real agents with fake-kubeadm over
//! real etcd, the endpoint forwarder, and what the tests read back (call
//! log, statuses, etcd members, secrets).

use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use kubeha_tests::fake_kubeadm::etcd::EtcdClient;

use crate::preflight::{fresh_host, script};
use crate::support::{LoopbackCluster, bin};

pub(crate) fn api_port(i: usize) -> u16 {
    16443 + i as u16
}

/// The endpoint: forwards each connection to the first control plane
/// that accepts.
struct Forwarder {
    stop: Arc<AtomicBool>,
    addr: String,
}

impl Forwarder {
    fn start(listen: &str, backends: Vec<String>) -> Forwarder {
        let l = TcpListener::bind(listen).expect("bind the endpoint forwarder");
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        std::thread::spawn(move || {
            for c in l.incoming() {
                if s.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = c else { continue };
                let backends = backends.clone();
                std::thread::spawn(move || {
                    for b in &backends {
                        let Ok(addr) = b.parse() else { continue };
                        if let Ok(up) =
                            TcpStream::connect_timeout(&addr, Duration::from_millis(300))
                        {
                            pipe(client, up);
                            return;
                        }
                    }
                });
            }
        });
        Forwarder {
            stop,
            addr: listen.to_string(),
        }
    }
}

pub(crate) fn pipe(a: TcpStream, b: TcpStream) {
    let (mut a2, mut b2) = (a.try_clone().unwrap(), b.try_clone().unwrap());
    let t = std::thread::spawn(move || {
        let _ = std::io::copy(&mut a2, &mut b2);
        let _ = b2.shutdown(Shutdown::Write);
    });
    let (mut a, mut b) = (a, b);
    let _ = std::io::copy(&mut b, &mut a);
    let _ = a.shutdown(Shutdown::Write);
    let _ = t.join();
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(&self.addr);
    }
}

/// Kills, by PID, every etcd and fake apiserver started under `dir` (they
/// outlive kubeadm, as static pods do) when the test ends.
struct Daemons(PathBuf);

impl Drop for Daemons {
    fn drop(&mut self) {
        let needle = self.0.display().to_string();
        for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let cmd = fs::read(e.path().join("cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            let argv0 = cmd.split(' ').next().unwrap_or("");
            if (argv0.ends_with("etcd") || argv0.ends_with("fake-apiserver"))
                && cmd.contains(&needle)
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

pub(crate) struct Bed {
    pub(crate) c: LoopbackCluster,
    /// Nodes `0..cps` are control planes (and the voters), the rest workers.
    pub(crate) cps: usize,
    pub(crate) n: usize,
    _fwd: Forwarder,
    _daemons: Daemons,
    /// The lab lock, released last (fields drop in order): a bed runs real
    /// etcds and agents whose timing must not compete with another bed's
    /// or a lab's for the two cores.
    _serial: kubeha_tests::lab::SerialGuard,
}

impl Bed {
    pub(crate) fn dir(&self) -> &Path {
        self.c.dir.path()
    }
    pub(crate) fn calls(&self) -> PathBuf {
        self.dir().join("calls.log")
    }
    pub(crate) fn etc(&self, i: usize) -> PathBuf {
        self.c.node_dir(i).join("etc")
    }
    /// Make node `i`'s next `kubeadm join` fail half-way: it writes
    /// `kubelet.conf` and `pki/ca.crt`, then fails before fake-kubeadm
    /// runs (the wrapper: before any etcd step).
    pub(crate) fn fail_next_join(&self, i: usize) {
        fs::write(self.c.node_dir(i).join("fail-join-once"), "").unwrap();
    }
    /// Make the first join of node `i` that reaches fake-kubeadm's phase
    /// `kubelet-wait-bootstrap` fail there: after its etcd member was
    /// added as a learner and promoted, and its apiserver started.
    pub(crate) fn fail_join_after_etcd(&self, i: usize) {
        let state = self.c.node_dir(i).join("kstate");
        fs::create_dir_all(&state).unwrap();
        fs::write(
            state.join(kubeha_tests::fake_kubeadm::node::FAIL_PHASE_ONCE),
            "kubelet-wait-bootstrap\n",
        )
        .unwrap();
    }
}

pub(crate) fn new_bed(block: u8, cps: usize, n: usize) -> Bed {
    new_bed_with_spare(block, cps, n, 0)
}

/// `spare` more nodes (indexes `n..`) are configured but not started.
pub(crate) fn new_bed_with_spare(block: u8, cps: usize, n: usize, spare: usize) -> Bed {
    assert!(
        Path::new("/usr/bin/etcd").exists(),
        "/usr/bin/etcd is missing: run scripts/install-deps (Debian etcd-server)"
    );
    let serial = kubeha_tests::lab::serial().expect("lab lock");
    let c = LoopbackCluster::new(block, n + spare);
    let endpoint = format!("127.{block}.0.100:6443");
    let backends = (0..cps)
        .chain(n..n + spare)
        .map(|i| format!("{}:{}", c.ip(i), api_port(i)))
        .collect();
    let fwd = Forwarder::start(&endpoint, backends);
    let daemons = Daemons(c.dir.path().to_path_buf());
    Bed {
        c,
        cps,
        n,
        _fwd: fwd,
        _daemons: daemons,
        _serial: serial,
    }
}

/// Write node `i`'s prepared fake host, its kubeadm wrapper and config;
/// start its agent.
pub(crate) fn start(bed: &mut Bed, i: usize) {
    let cp = i < bed.cps;
    start_as(bed, i, cp);
}

pub(crate) fn start_as(bed: &mut Bed, i: usize, cp: bool) {
    let d = bed.c.node_dir(i);
    let (root, bin_dir) = fresh_host(&d, "v1.34.2");
    let state = d.join("kstate");
    let fail = d.join("fail-join-once");
    let fake = format!(
        "export FAKE_KUBEADM_ETC_DIR='{etc}' FAKE_KUBEADM_STATE_DIR='{state}' FAKE_KUBEADM_LOG='{log}'\n\
         export FAKE_KUBEADM_CLOCK_OFFSET_FILE='{dir}/clock-offset' FAKE_KUBEADM_APISERVER='{api}'\n\
         export FAKE_KUBEADM_DISCOVERY_TIMEOUT=5s\n\
         if [ \"$1\" = join ] && [ -e '{fail}' ]; then rm -f '{fail}'; mkdir -p '{etc}/pki'; \
         echo x > '{etc}/kubelet.conf'; echo x > '{etc}/pki/ca.crt'; \
         echo 'error execution phase kubelet-start: injected failure after kubelet.conf was written' >&2; exit 1; fi\n\
         if [ \"$1\" = init ] && [ -e '{dir}/slow-init' ]; then : > '{node}/init-started'; sleep 4; fi\n\
         if [ \"$1\" = join ] && [ \"$2\" = --config ]; then mkdir -p -m 700 '{dir}/seen'; \
         (umask 077; cp \"$3\" \"{dir}/seen/$$.yaml\"); fi\n\
         exec '{fk}' \"$@\"",
        etc = d.join("etc").display(),
        state = state.display(),
        log = bed.calls().display(),
        dir = bed.dir().display(),
        node = d.display(),
        api = bin("fake-apiserver").display(),
        fail = fail.display(),
        fk = bin("fake-kubeadm").display(),
    );
    script(&bin_dir, "kubeadm", &root, &fake);
    fs::set_permissions(bin_dir.join("kubeadm"), fs::Permissions::from_mode(0o755)).unwrap();
    let roles = if cp {
        "\"control-plane\""
    } else {
        "\"worker\""
    };
    let key = bed.dir().join("cluster.key");
    let mut base = bed.c.config(i, &key);
    if cp && !base.contains("control_key_file") {
        // A control plane beyond the voters holds the control key too.
        base.push_str(&format!(
            "control_key_file = \"{}\"\n",
            bed.c.control_key().display()
        ));
    }
    let text = format!(
        "{}timing = \"fast\"\nroles = [{roles}]\n\n[kubernetes]\ncontrol_plane_endpoint = \"{ep}\"\n\
         kubeadm = \"{b}/kubeadm\"\nkubelet = \"{b}/kubelet\"\nkubectl = \"{b}/kubectl\"\ncontainerd = \"{b}/containerd\"\n\
         host_root = \"{r}\"\netc_dir = \"{etc}\"\napiserver_port = {port}\n",
        base,
        ep = bed._fwd.addr,
        b = bin_dir.display(),
        r = root.display(),
        etc = d.join("etc").display(),
        port = api_port(i),
    );
    let cfg = d.join("kubeha.toml");
    fs::write(&cfg, &text).unwrap();
    let log = fs::File::create(d.join("agent.log")).unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let child = std::process::Command::new(bin("kubeha-agent"))
        .arg("--config")
        .arg(&cfg)
        .env("KUBEHA_LOG", "info,chitchat=warn")
        .env("PATH", path)
        .env_remove("INVOCATION_ID")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn kubeha-agent");
    bed.c.agents[i] = Some(crate::support::KillOnDrop(child));
}

/// A start order drawn from the clock's nanoseconds (printed, so a
/// failure can be replayed by reading it).
pub(crate) fn random_order(n: usize) -> Vec<usize> {
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
        | 1;
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        order.swap(i, (seed % (i as u64 + 1)) as usize);
    }
    eprintln!("start order: {order:?}");
    order
}

pub(crate) fn calls(bed: &Bed) -> Vec<serde_json::Value> {
    fs::read_to_string(bed.calls())
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

pub(crate) fn is_init(v: &serde_json::Value) -> bool {
    v["argv"][1] == "init" && v["argv"][2] != "phase"
}

pub(crate) fn all_joined(bed: &mut Bed) -> bool {
    for i in 0..bed.n {
        if let Some(a) = bed.c.agents[i].as_mut() {
            assert!(
                a.0.try_wait().unwrap().is_none(),
                "agent {} exited:\n{}",
                bed.c.names[i],
                bed.c.log(i)
            );
        }
    }
    (0..bed.n).all(|i| {
        bed.c
            .status(i)
            .is_some_and(|s| s.kubernetes.phase == "joined")
    })
}

pub(crate) fn dump(bed: &Bed) -> String {
    let mut s = String::new();
    for i in 0..bed.n {
        let st = bed.c.status(i);
        s += &format!(
            "--- {}: {:?}\n{}\n",
            bed.c.names[i],
            st.map(|s| s.kubernetes),
            bed.c
                .log(i)
                .lines()
                .filter(|l| l.contains("kube") || l.contains("job") || l.contains("join"))
                .take(40)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    s
}

/// The etcd members (name, learner) seen through node `i`'s certificates.
pub(crate) fn etcd_members(bed: &Bed, i: usize) -> Vec<(String, bool)> {
    let pki = bed.etc(i).join("pki");
    let client = EtcdClient::from_files(
        vec![format!("https://{}:2379", bed.c.ip(i))],
        &pki.join("etcd/ca.crt"),
        &pki.join("apiserver-etcd-client.crt"),
        &pki.join("apiserver-etcd-client.key"),
    )
    .unwrap();
    let mut m: Vec<(String, bool)> = client
        .member_list()
        .unwrap()
        .into_iter()
        .map(|m| (m.name, m.is_learner))
        .collect();
    m.sort();
    m
}

/// Every file under the test dir that is readable by others, and every
/// text we can read, must not contain `secrets`.
pub(crate) fn assert_no_secret_leaks(bed: &Bed, secrets: &[String]) {
    let mut stack = vec![bed.dir().to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(meta) = fs::symlink_metadata(&p) else {
            continue;
        };
        if meta.is_dir() {
            for e in fs::read_dir(&p).into_iter().flatten().flatten() {
                stack.push(e.path());
            }
            continue;
        }
        if !meta.is_file() || meta.permissions().mode() & 0o077 == 0 {
            continue;
        }
        let text = String::from_utf8_lossy(&fs::read(&p).unwrap_or_default()).into_owned();
        for s in secrets {
            assert!(!text.contains(s.as_str()), "{} holds a secret", p.display());
        }
    }
    for i in 0..bed.n {
        let st = serde_json::to_string(&bed.c.status(i)).unwrap();
        let mut metrics = String::new();
        if let Ok(mut c) = TcpStream::connect(format!("{}:9946", bed.c.ip(i))) {
            let _ = c.write_all(b"GET /metrics HTTP/1.0\r\n\r\n");
            let _ = c.read_to_string(&mut metrics);
        }
        for s in secrets {
            assert!(!st.contains(s.as_str()), "status of {}", bed.c.names[i]);
            assert!(
                !metrics.contains(s.as_str()),
                "metrics of {}",
                bed.c.names[i]
            );
            assert!(
                !bed.c.log(i).contains(s.as_str()),
                "log of {}",
                bed.c.names[i]
            );
        }
    }
}

/// The secrets the agents handled: every bootstrap token the cluster's
/// etcd holds, and every certificate key a join config carried (the
/// kubeadm wrapper keeps root-only copies in `<dir>/seen/`).
pub(crate) fn cluster_secrets(bed: &Bed, i: usize) -> Vec<String> {
    let pki = bed.etc(i).join("pki");
    let client = EtcdClient::from_files(
        vec![format!("https://{}:2379", bed.c.ip(i))],
        &pki.join("etcd/ca.crt"),
        &pki.join("apiserver-etcd-client.crt"),
        &pki.join("apiserver-etcd-client.key"),
    )
    .unwrap();
    let mut out = Vec::new();
    for (k, v) in client.list("/fake-kubeadm/tokens/").unwrap_or_default() {
        let id = k.rsplit('/').next().unwrap_or("").to_string();
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&v)
            && let Some(secret) = v["secret"].as_str()
        {
            out.push(format!("{id}.{secret}"));
            out.push(secret.to_string());
        }
    }
    for e in fs::read_dir(bed.dir().join("seen"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let text = fs::read_to_string(e.path()).unwrap_or_default();
        for doc in text.split("\n---\n") {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(doc)
                && let Some(k) = v["controlPlane"]["certificateKey"].as_str()
            {
                out.push(format!("certificate-key:{k}"));
            }
        }
    }
    out
}
