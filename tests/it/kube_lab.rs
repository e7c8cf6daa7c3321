//! Issue 12: the kubeadm bootstrap end to end with the real agents and
//! `fake-kubeadm` (a real etcd per control plane, the fake apiserver) on
//! loopback addresses 127.<block>.0.x. Three control planes (voters) and
//! two workers, started in random order: exactly one `kubeadm init` in the
//! whole cluster (fake-kubeadm's call log), every node joined, every status
//! agreeing, etcd with 3 voting members; a control-plane join that fails
//! half-way (before etcd, and after its etcd member was promoted) is reset
//! and retried, and etcd keeps quorum; no token or certificate key in any log,
//! status, metrics, call log or non-root file.
//!
//! The control-plane endpoint is a small TCP forwarder of the test at
//! 127.<block>.0.100:6443 to the first control plane whose apiserver
//! accepts (what HAProxy behind the VIP does in the netns lab). The fake
//! apiserver binds every address like kube-apiserver, so each control plane
//! gets its own `apiserver_port` ([`api_port`]) on this one host.

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
use crate::support::{LoopbackCluster, bin, median, wait_until};

fn api_port(i: usize) -> u16 {
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

fn pipe(a: TcpStream, b: TcpStream) {
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

struct Bed {
    c: LoopbackCluster,
    /// Nodes `0..cps` are control planes (and the voters), the rest workers.
    cps: usize,
    n: usize,
    _fwd: Forwarder,
    _daemons: Daemons,
    /// The lab lock, released last (fields drop in order): a bed runs real
    /// etcds and agents whose timing must not compete with another bed's
    /// or a lab's for the two cores.
    _serial: kubeha_tests::lab::SerialGuard,
}

impl Bed {
    fn dir(&self) -> &Path {
        self.c.dir.path()
    }
    fn calls(&self) -> PathBuf {
        self.dir().join("calls.log")
    }
    fn etc(&self, i: usize) -> PathBuf {
        self.c.node_dir(i).join("etc")
    }
    /// Make node `i`'s next `kubeadm join` fail half-way: it writes
    /// `kubelet.conf` and `pki/ca.crt`, then fails before fake-kubeadm
    /// runs (the wrapper: before any etcd step).
    fn fail_next_join(&self, i: usize) {
        fs::write(self.c.node_dir(i).join("fail-join-once"), "").unwrap();
    }
    /// Make the first join of node `i` that reaches fake-kubeadm's phase
    /// `kubelet-wait-bootstrap` fail there: after its etcd member was
    /// added as a learner and promoted, and its apiserver started.
    fn fail_join_after_etcd(&self, i: usize) {
        let state = self.c.node_dir(i).join("kstate");
        fs::create_dir_all(&state).unwrap();
        fs::write(
            state.join(kubeha_tests::fake_kubeadm::node::FAIL_PHASE_ONCE),
            "kubelet-wait-bootstrap\n",
        )
        .unwrap();
    }
}

fn new_bed(block: u8, cps: usize, n: usize) -> Bed {
    new_bed_with_spare(block, cps, n, 0)
}

/// `spare` more nodes (indexes `n..`) are configured but not started.
fn new_bed_with_spare(block: u8, cps: usize, n: usize, spare: usize) -> Bed {
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
fn start(bed: &mut Bed, i: usize) {
    let cp = i < bed.cps;
    start_as(bed, i, cp);
}

fn start_as(bed: &mut Bed, i: usize, cp: bool) {
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
         if [ \"$1\" = init ] && [ -e '{dir}/slow-init' ]; then sleep 4; fi\n\
         if [ \"$1\" = join ] && [ \"$2\" = --config ]; then mkdir -p -m 700 '{dir}/seen'; \
         (umask 077; cp \"$3\" \"{dir}/seen/$$.yaml\"); fi\n\
         exec '{fk}' \"$@\"",
        etc = d.join("etc").display(),
        state = state.display(),
        log = bed.calls().display(),
        dir = bed.dir().display(),
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
fn random_order(n: usize) -> Vec<usize> {
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

fn calls(bed: &Bed) -> Vec<serde_json::Value> {
    fs::read_to_string(bed.calls())
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn is_init(v: &serde_json::Value) -> bool {
    v["argv"][1] == "init" && v["argv"][2] != "phase"
}

fn all_joined(bed: &mut Bed) -> bool {
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

fn dump(bed: &Bed) -> String {
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
fn etcd_members(bed: &Bed, i: usize) -> Vec<(String, bool)> {
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
fn assert_no_secret_leaks(bed: &Bed, secrets: &[String]) {
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
fn cluster_secrets(bed: &Bed, i: usize) -> Vec<String> {
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

#[test]
fn guide_cluster_bootstraps_with_one_init_and_a_retried_control_plane_join() {
    bootstrap(new_bed(39, 3, 5));
}

#[test]
fn compact_cluster_bootstraps_with_one_init_and_a_retried_control_plane_join() {
    bootstrap(new_bed(40, 3, 3));
}

/// Start every agent in random order (each control plane's first join
/// fails half-way before etcd, its second after its etcd member was added
/// and promoted), then check the whole bootstrap. Returns how long it took
/// from the last start to every node joined.
fn bootstrap(mut bed: Bed) -> Duration {
    bootstrap_with(&mut bed, true)
}

fn bootstrap_with(bed: &mut Bed, inject_failures: bool) -> Duration {
    let order = random_order(bed.n);
    if inject_failures {
        for i in 0..bed.cps {
            bed.fail_next_join(i);
            bed.fail_join_after_etcd(i);
        }
    }
    for (k, &i) in order.iter().enumerate() {
        if k > 0 {
            std::thread::sleep(Duration::from_millis(150));
        }
        start(bed, i);
    }
    let bed = &mut *bed;
    let took = wait_until(Duration::from_secs(120), || all_joined(bed));
    assert!(took.is_some(), "not every node joined:\n{}", dump(bed));

    let log = calls(bed);
    if std::env::var_os("KUBE_LAB_TRACE").is_some() {
        let t0 = log.first().and_then(|v| v["unix_ms"].as_u64()).unwrap_or(0);
        for v in &log {
            eprintln!(
                "{:>6} ms {} {} {} {}",
                v["unix_ms"].as_u64().unwrap_or(0) - t0,
                v["etc_dir"]
                    .as_str()
                    .unwrap_or("")
                    .rsplit('/')
                    .nth(1)
                    .unwrap_or(""),
                v["argv"][1],
                v["argv"][2],
                v["exit"]
            );
        }
        for i in 0..bed.n {
            for l in bed
                .c
                .log(i)
                .lines()
                .filter(|l| l.contains("kubeadm job failed"))
            {
                eprintln!("{}: {}", bed.c.names[i], &l[l.len().saturating_sub(1200)..]);
            }
        }
    }
    let inits: Vec<_> = log.iter().filter(|v| is_init(v)).collect();
    assert_eq!(inits.len(), 1, "exactly one kubeadm init: {inits:?}");
    let init_etc = inits[0]["etc_dir"].as_str().unwrap().to_string();
    let init_node = (0..bed.cps)
        .find(|i| bed.etc(*i).display().to_string() == init_etc)
        .expect("the init ran on a control plane");
    // Every status agrees on the init node and on every member's `kube`
    // (once gossip has carried the last change).
    let agreed = wait_until(Duration::from_secs(20), || {
        (0..bed.n).all(|i| {
            bed.c.status(i).is_some_and(|st| {
                st.members.len() == bed.n
                    && st.members.iter().all(|m| {
                        let j = bed.c.names.iter().position(|n| *n == m.name).unwrap();
                        m.kube
                            == if j < bed.cps {
                                "control-plane"
                            } else {
                                "worker"
                            }
                    })
            })
        })
    });
    assert!(agreed.is_some(), "statuses do not agree:\n{}", dump(bed));
    for i in 0..bed.n {
        let st = bed.c.status(i).unwrap();
        assert_eq!(
            st.kubernetes.init_node.as_deref(),
            Some(bed.c.names[init_node].as_str()),
            "{}",
            bed.c.names[i]
        );
        for m in &st.members {
            let j = bed.c.names.iter().position(|n| *n == m.name).unwrap();
            let want = if j < bed.cps {
                "control-plane"
            } else {
                "worker"
            };
            assert_eq!(m.kube, want, "{} as seen by {}", m.name, bed.c.names[i]);
        }
    }
    // The two other control planes each failed twice (before etcd, then
    // after their etcd member was promoted), were reset each time and
    // joined on the third attempt.
    for i in (0..bed.cps).filter(|i| inject_failures && *i != init_node) {
        let name = &bed.c.names[i];
        let etc = bed.etc(i).display().to_string();
        let mine: Vec<String> = log
            .iter()
            .filter(|v| v["etc_dir"] == etc.as_str())
            .filter(|v| ["join", "reset", "init"].contains(&v["argv"][1].as_str().unwrap_or("")))
            .map(|v| format!("{} {}", v["argv"][1].as_str().unwrap_or(""), v["exit"]))
            .collect();
        let all: Vec<String> = log
            .iter()
            .map(|v| format!("{} {}", v["etc_dir"], v["argv"][1]))
            .collect();
        // The wrapper's failure stops before fake-kubeadm (not in the call
        // log): the reset that cleaned up, then the join that failed after
        // etcd and its reset, then the join that worked. (Two control
        // planes backing off side by side may both take a free slot, and
        // one join fails on the other's certificate upload: PROTOCOL §3.6.
        // Then there is one more failed join and reset.)
        assert_eq!(
            mine.first().map(String::as_str),
            Some("reset 0"),
            "{name}: {all:#?}"
        );
        assert_eq!(
            mine.last().map(String::as_str),
            Some("join 0"),
            "{name}: {all:#?}"
        );
        assert!(mine.contains(&"join 1".to_string()), "{name}: {all:#?}");
        for (k, c) in mine.iter().enumerate() {
            if c == "join 1" {
                assert_eq!(
                    mine.get(k + 1).map(String::as_str),
                    Some("reset 0"),
                    "{name}: a failed join is reset: {all:#?}"
                );
            }
        }
        let st = bed.c.status(i).unwrap();
        assert_eq!(
            st.kubernetes.join_failures, 0,
            "{name}: cleared by the success"
        );
        assert!(
            bed.c.log(i).contains("injected failure after kubelet.conf"),
            "{name}: the failure before etcd is logged"
        );
        assert!(
            bed.c
                .log(i)
                .contains("error execution phase kubelet-wait-bootstrap: injected failure"),
            "{name}: the failure after etcd is logged"
        );
    }
    // etcd: a voting member per control plane.
    let members = etcd_members(bed, init_node);
    assert_eq!(members.len(), bed.cps, "{members:?}");
    assert!(members.iter().all(|(_, learner)| !learner), "{members:?}");
    // Every control plane's status shows them as etcd reports them: all
    // voting and healthy, one leader (read every few seconds).
    for i in 0..bed.cps {
        let mut last = None;
        let shown = wait_until(Duration::from_secs(20), || {
            last = bed.c.status(i).and_then(|s| s.kubernetes.etcd);
            last.as_ref().is_some_and(|e| {
                e.members.len() == bed.cps
                    && e.members.iter().all(|m| !m.learner && m.healthy)
                    && e.members.iter().filter(|m| m.leader).count() == 1
                    && e.error.is_none()
            })
        });
        assert!(
            shown.is_some(),
            "{}: etcd in status: {last:?}",
            bed.c.names[i]
        );
    }
    // No token or certificate key anywhere it must not be.
    let tagged = cluster_secrets(bed, init_node);
    let keys = tagged
        .iter()
        .filter(|s| s.starts_with("certificate-key:"))
        .count();
    assert!(
        keys >= bed.cps - 1,
        "a certificate key per control-plane join"
    );
    assert!(tagged.len() - keys >= 2 * (bed.n - 1), "a token per join");
    let secrets: Vec<String> = tagged
        .into_iter()
        .map(|s| s.trim_start_matches("certificate-key:").to_string())
        .collect();
    assert_no_secret_leaks(bed, &secrets);
    eprintln!("bootstrap took {took:?} after the last start");
    // A summary for a reader running with --nocapture: the cluster as one
    // node's `kubeha-ctl status -o json` sees it.
    let st = bed.c.status(0).unwrap();
    println!(
        "\nkubeadm bootstrap: {} nodes, every one joined {:.1} s after the last agent started; \
         exactly one `kubeadm init` (on {}); etcd: {} voting members",
        bed.n,
        took.unwrap().as_secs_f64(),
        bed.c.names[init_node],
        members.len()
    );
    println!("as {} sees it (phase {}):", st.node, st.kubernetes.phase);
    for m in &st.members {
        println!("  {:<4} {:<14} {}", m.name, m.roles.join(","), m.kube);
    }
    took.unwrap()
}

/// Seconds node `i` spent in jobs of the given kinds (queued to finished).
fn job_seconds(bed: &Bed, i: usize, kinds: &[&str]) -> f64 {
    crate::support::job_seconds(&bed.c.log(i), kinds)
}

/// The bootstrap overhead with fake-kubeadm: from the last agent start to
/// every node joined, guide topology (3 control planes, 2 workers), no
/// injected failure, 10 runs. Beside the wall time it prints the time the
/// critical path spent in kubeadm jobs (init on the init node; fetch and
/// join of each other control plane, which join one after the other), and
/// their difference, kubeha's own part.
/// `cargo test -p kubeha-tests --test it kube_lab::bench_bootstrap -- --ignored --nocapture`
#[test]
#[ignore = "benchmark: about 2 minutes"]
fn bench_bootstrap() {
    // KUBEHA_BENCH_CPS=5: five control planes (and voters), for the cost
    // of each control plane beyond three; always 2 workers.
    let cps: usize = std::env::var("KUBEHA_BENCH_CPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let mut wall = Vec::new();
    let mut kubeadm = Vec::new();
    for _ in 0..10 {
        let mut bed = new_bed(41, cps, cps + 2);
        let t = bootstrap_with(&mut bed, false).as_secs_f64();
        let k: f64 = (0..bed.cps)
            .map(|i| job_seconds(&bed, i, &["run-init", "fetch-join-material", "join"]))
            .sum();
        eprintln!("run: {t:.2} s wall, {k:.2} s in kubeadm jobs on the critical path");
        wall.push(t);
        kubeadm.push(k);
        drop(bed);
        // The next run's etcd ports must be free.
        std::thread::sleep(Duration::from_millis(500));
    }
    let mut over: Vec<f64> = wall.iter().zip(&kubeadm).map(|(w, k)| w - k).collect();
    eprintln!(
        "bootstrap, {cps} control planes + 2 workers, 10 runs: wall median {:.2} s; in kubeadm jobs median {:.2} s; wall minus kubeadm median {:.2} s",
        median(&mut wall.clone()),
        median(&mut kubeadm.clone()),
        median(&mut over)
    );
}

/// A control plane added "3 hours later" (fake-kubeadm's clock moved by
/// 3 h: the certificates uploaded at init, 2 h life, are gone) joins with
/// a freshly uploaded certificate key; etcd then has 4 voting members.
#[test]
fn a_control_plane_added_three_hours_later_joins_with_a_fresh_certificate_key() {
    let mut bed = new_bed_with_spare(42, 3, 3, 1);
    let late = join_late(&mut bed, "3h", true);
    assert_eq!(
        count_argv(&late, "init", "phase"),
        1,
        "one certificate upload for the late join"
    );
    assert_eq!(
        calls(&bed).iter().filter(|v| is_init(v)).count(),
        1,
        "still exactly one init"
    );
    let members = etcd_members(&bed, 3);
    assert_eq!(members.len(), 4, "{members:?}");
    assert!(members.iter().all(|(_, learner)| !learner), "{members:?}");
}

/// The lock holder's agent is killed (SIGKILL) while its `kubeadm init`
/// runs (slowed down to 4 s before fake-kubeadm starts). kubeadm dies with
/// it (PR_SET_PDEATHSIG), so nothing is left; the restarted agent checks
/// the node, finds it clean and runs init again: still exactly one init in
/// the cluster's life, on that node, and every node joins.
#[test]
fn the_lock_holder_killed_mid_init_never_leads_to_a_second_init() {
    let mut bed = new_bed(43, 3, 4);
    fs::write(bed.dir().join("slow-init"), "").unwrap();
    for i in random_order(bed.n) {
        start(&mut bed, i);
    }
    let mut holder = None;
    let found = wait_until(Duration::from_secs(60), || {
        holder = (0..bed.n).find(|i| {
            bed.c
                .status(*i)
                .is_some_and(|s| s.kubernetes.phase == "initializing")
        });
        holder.is_some()
    });
    assert!(found.is_some(), "nobody initializes:\n{}", dump(&bed));
    let h = holder.unwrap();
    std::thread::sleep(Duration::from_millis(500));
    bed.c.kill9(h);
    // The init never reached fake-kubeadm: no init in the log, no files.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(calls(&bed).iter().filter(|v| is_init(v)).count(), 0);
    assert!(!bed.etc(h).join("admin.conf").exists());
    // Nobody else may init meanwhile: the lock stays with the dead node.
    for i in (0..bed.n).filter(|i| *i != h) {
        let st = bed.c.status(i).unwrap();
        assert_ne!(st.kubernetes.phase, "initializing", "{}", bed.c.names[i]);
    }
    fs::remove_file(bed.dir().join("slow-init")).unwrap();
    start(&mut bed, h);
    let joined = wait_until(Duration::from_secs(90), || all_joined(&mut bed));
    assert!(joined.is_some(), "not every node joined:\n{}", dump(&bed));
    let inits: Vec<_> = calls(&bed).into_iter().filter(is_init).collect();
    assert_eq!(inits.len(), 1, "{inits:?}");
    assert_eq!(
        inits[0]["etc_dir"].as_str().unwrap(),
        bed.etc(h).display().to_string(),
        "the init ran on the node that held the lock"
    );
    assert!(
        bed.c.log(h).contains("check-init"),
        "the restarted agent checked the node first"
    );
}

/// The lock holder's agent is killed while its `kubeadm init` runs and
/// never comes back (its droplet gone). Every other node's status names it
/// as down before its init finished, and nobody inits. `kubeha-ctl
/// bootstrap release` is refused while it runs, then, once it is gone, an
/// operator releases it on another control plane: exactly one more init,
/// on another node, and every remaining node joins that cluster.
#[test]
fn an_operator_release_of_an_init_node_gone_for_good_lets_another_node_init() {
    let mut bed = new_bed(44, 3, 4);
    fs::write(bed.dir().join("slow-init"), "").unwrap();
    for i in random_order(bed.n) {
        start(&mut bed, i);
    }
    let mut holder = None;
    let found = wait_until(Duration::from_secs(60), || {
        holder = (0..bed.n).find(|i| {
            bed.c
                .status(*i)
                .is_some_and(|s| s.kubernetes.phase == "initializing")
        });
        holder.is_some()
    });
    assert!(found.is_some(), "nobody initializes:\n{}", dump(&bed));
    let h = holder.unwrap();
    let other = (0..bed.cps).find(|i| *i != h).unwrap();
    let socket = bed.c.socket(other);
    let ctl = |args: &[&str]| {
        std::process::Command::new(bin("kubeha-ctl"))
            .arg("--socket")
            .arg(&socket)
            .args(args)
            .output()
            .expect("run kubeha-ctl")
    };
    let name = bed.c.names[h].clone();
    // The holder says "initializing" once a majority granted; a voter that
    // did not grant learns the init node from gossip a round later.
    let knows = wait_until(Duration::from_secs(30), || {
        bed.c
            .status(other)
            .is_some_and(|s| s.kubernetes.init_node.as_deref() == Some(name.as_str()))
    });
    assert!(
        knows.is_some(),
        "{} never names {name} as the init node:\n{}",
        bed.c.names[other],
        dump(&bed)
    );
    let alive = ctl(&["bootstrap", "release", &name, "--yes", "--wait", "1"]);
    assert!(!alive.status.success());
    let err = String::from_utf8_lossy(&alive.stderr);
    assert!(err.contains("is alive"), "{err}");
    bed.c.kill9(h);
    let down = wait_until(Duration::from_secs(30), || {
        (0..bed.n).filter(|i| *i != h).all(|i| {
            bed.c
                .status(i)
                .is_some_and(|s| s.kubernetes.init_node_down.as_deref() == Some(name.as_str()))
        })
    });
    assert!(
        down.is_some(),
        "not every node names the down init node:\n{}",
        dump(&bed)
    );
    fs::remove_file(bed.dir().join("slow-init")).unwrap();
    assert_eq!(calls(&bed).iter().filter(|v| is_init(v)).count(), 0);
    // Without confirmation nothing happens.
    let mut unconfirmed = std::process::Command::new(bin("kubeha-ctl"))
        .arg("--socket")
        .arg(&socket)
        .args(["bootstrap", "release", &name])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    unconfirmed
        .stdin
        .take()
        .unwrap()
        .write_all(b"no\n")
        .unwrap();
    let out = unconfirmed.wait_with_output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not confirmed"));
    let released = ctl(&["bootstrap", "release", &name, "--yes"]);
    assert!(
        released.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&released.stderr),
        dump(&bed)
    );
    assert!(String::from_utf8_lossy(&released.stdout).contains("released:"));
    let joined = wait_until(Duration::from_secs(120), || {
        (0..bed.n).filter(|i| *i != h).all(|i| {
            bed.c
                .status(i)
                .is_some_and(|s| s.kubernetes.phase == "joined")
        })
    });
    assert!(joined.is_some(), "the others did not join:\n{}", dump(&bed));
    let inits: Vec<_> = calls(&bed).into_iter().filter(is_init).collect();
    assert_eq!(inits.len(), 1, "{inits:?}");
    assert_ne!(
        inits[0]["etc_dir"].as_str().unwrap(),
        bed.etc(h).display().to_string(),
        "the init ran on another node"
    );
    let members = etcd_members(&bed, other);
    assert_eq!(members.len(), 2, "two control planes remain: {members:?}");
    for i in (0..bed.cps).filter(|i| *i != h) {
        let st = bed.c.status(i).unwrap();
        assert_eq!(
            st.kubernetes.released,
            vec![name.clone()],
            "{}",
            bed.c.names[i]
        );
        assert_eq!(st.kubernetes.init_node_down, None);
    }
}

/// Two control planes started at the same instant, before either gossips
/// the other (both rank first, so neither staggers): both claim the lock
/// (their logs show it), exactly one initializes, and every node joins.
#[test]
fn two_control_planes_racing_for_the_lock_make_one_init() {
    let mut bed = new_bed(45, 3, 4);
    start(&mut bed, 0);
    start(&mut bed, 1);
    let raced = wait_until(Duration::from_secs(30), || {
        (0..2).all(|i| {
            bed.c.log(i).lines().any(|l| {
                l.contains("bootstrap lock phase changed")
                    && l.split("to").nth(1).is_some_and(|t| t.contains("claiming"))
            })
        })
    });
    assert!(raced.is_some(), "not both claimed:\n{}", dump(&bed));
    for i in 2..bed.n {
        start(&mut bed, i);
    }
    let joined = wait_until(Duration::from_secs(120), || all_joined(&mut bed));
    assert!(joined.is_some(), "not every node joined:\n{}", dump(&bed));
    let inits: Vec<_> = calls(&bed).into_iter().filter(is_init).collect();
    assert_eq!(inits.len(), 1, "{inits:?}");
    let members = etcd_members(&bed, 0);
    assert_eq!(members.len(), 3, "{members:?}");
}

/// A worker added 25 hours after the init (fake-kubeadm's clock moved:
/// the init's bootstrap token, 24 h, has expired) joins with a token its
/// join server mints for it.
#[test]
fn a_worker_added_after_the_init_token_expired_joins_with_a_fresh_token() {
    let mut bed = new_bed_with_spare(46, 3, 3, 1);
    let late = join_late(&mut bed, "25h", false);
    assert_eq!(
        count_argv(&late, "token", "create"),
        1,
        "one fresh token for the late join"
    );
    assert_eq!(
        count_argv(&late, "init", "phase"),
        0,
        "a worker gets no certificate key"
    );
}

/// Bootstraps the bed, moves fake-kubeadm's clock by `offset`, starts the
/// first spare node (index `n`, a control plane or a worker) and waits for it to join; the
/// kubeadm calls made after the clock moved.
fn join_late(bed: &mut Bed, offset: &str, control_plane: bool) -> Vec<serde_json::Value> {
    bootstrap_with(bed, false);
    fs::write(bed.dir().join("clock-offset"), offset).unwrap();
    let moved_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let spare = bed.n;
    start_as(bed, spare, control_plane);
    let joined = wait_until(Duration::from_secs(90), || {
        bed.c
            .status(spare)
            .is_some_and(|s| s.kubernetes.phase == "joined")
    });
    assert!(
        joined.is_some(),
        "the node added {offset} later did not join:\n{}",
        bed.c.log(spare)
    );
    calls(bed)
        .into_iter()
        .filter(|v| v["unix_ms"].as_u64().unwrap_or(0) >= moved_at)
        .collect()
}

/// How many of `calls` ran `kubeadm <a> <b> …`.
fn count_argv(calls: &[serde_json::Value], a: &str, b: &str) -> usize {
    calls
        .iter()
        .filter(|v| v["argv"][1] == a && v["argv"][2] == b)
        .count()
}
