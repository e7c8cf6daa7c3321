//! HaproxyManager against Debian's real HAProxy and in-process fake
//! apiservers, on loopback addresses only.
//!
//! Each test uses its own 127.x.y.z addresses so that they run in parallel;
//! only `compact_topology` binds port 6443 (it needs `0.0.0.0:6443`), every
//! other test stays off that port. Every HAProxy is stopped by a guard on
//! drop (also on panic), every fake apiserver stops on drop.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kubeha_agent::haproxy::{ApplyOutcome, HaproxyError, HaproxyManager, HaproxyOptions};
use kubeha_core::config::HaproxyConfig;
use kubeha_core::haproxy::Backend;
use kubeha_tests::fake_apiserver::{Client, FakeApiserver, FakeApiserverOptions, get_once};

pub const HAPROXY: &str = "/usr/sbin/haproxy";
const T: Duration = Duration::from_secs(5);

/// Fails loudly (not skipped) when HAProxy is missing: the suite needs it.
pub fn require_haproxy() {
    assert!(
        Path::new(HAPROXY).exists(),
        "`{HAPROXY}` is missing: `apt-get install -y haproxy` (Debian's HAProxy 2.6)"
    );
}

/// Stops its HAProxy (master and workers) when dropped.
pub struct Guard(pub Option<HaproxyManager>);

impl Guard {
    pub fn m(&mut self) -> &mut HaproxyManager {
        self.0.as_mut().expect("manager present")
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(m) = self.0.take() {
            m.shutdown();
        }
    }
}

pub fn options(dir: &Path, frontend: SocketAddr, ca: Option<&Path>) -> HaproxyOptions {
    let h = HaproxyConfig {
        frontend,
        frontend_anchor: false,
        config_path: dir.join("haproxy.cfg"),
        binary: PathBuf::from(HAPROXY),
        backend_port: 16443,
        runtime_dir: dir.join("run"),
    };
    let mut o = HaproxyOptions::new(h, None);
    o.ca_file = ca.map(Path::to_path_buf);
    // Tests run on the host: do not change its sysctls, and let Ctrl-C on
    // the test reach HAProxy too.
    o.set_nonlocal_bind = false;
    o.detach = false;
    // Not the machine's own /run/haproxy.pid: results must not depend on it.
    o.debian_pid_file = dir.join("debian-haproxy.pid");
    o
}

pub fn manager(o: HaproxyOptions) -> Guard {
    require_haproxy();
    Guard(Some(HaproxyManager::start(o).expect("manager starts")))
}

pub fn fake(name: &str, addr: &str, pki: &Path) -> FakeApiserver {
    FakeApiserver::start(FakeApiserverOptions::new(name, addr.parse().unwrap(), pki))
        .unwrap_or_else(|e| panic!("fake apiserver `{name}` on {addr}: {e}"))
}

pub fn backend(f: &FakeApiserver) -> Backend {
    Backend {
        name: f.name().to_string(),
        addr: f.local_addr(),
    }
}

/// Poll until `cond` holds; the time it took, or a panic naming `what`.
pub fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if cond() {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub fn is_up(m: &mut HaproxyManager, name: &str) -> Option<bool> {
    m.poll()
        .backends
        .iter()
        .find(|b| b.name == name)
        .map(|b| b.up)
}

/// HAProxy's own status string for a server.
pub fn status_of(m: &HaproxyManager, name: &str) -> Option<String> {
    m.show_stat()
        .ok()?
        .into_iter()
        .find(|s| s.name == name)
        .map(|s| s.status)
}

#[test]
fn backends_follow_input() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let a = fake("a", "127.31.1.11:16443", &pki);
    let b = fake("b", "127.31.1.12:16443", &pki);
    let frontend: SocketAddr = "127.31.1.10:16500".parse().unwrap();
    let mut g = manager(options(dir.path(), frontend, Some(a.ca_path())));
    let m = g.m();

    assert_eq!(m.apply(&[backend(&a), backend(&b)]), ApplyOutcome::Started);
    wait_until("a and b UP", T, || {
        is_up(m, "a") == Some(true) && is_up(m, "b") == Some(true)
    });
    let st = m.poll();
    assert!(
        st.running && st.config_ok && st.last_error.is_none(),
        "{st:?}"
    );
    assert!(m.healthy());
    assert_eq!(
        m.apply(&[backend(&a), backend(&b)]),
        ApplyOutcome::Unchanged
    );
    // Checks verify the certificate against the CA once it exists.
    let cfg = std::fs::read_to_string(dir.path().join("haproxy.cfg")).unwrap();
    assert!(cfg.contains("verify required ca-file"), "{cfg}");

    // Traffic through the frontend reaches the fakes.
    let r = get_once(frontend, a.ca_path(), "/readyz", T).unwrap();
    assert_eq!(r.status, 200);
    assert!(matches!(r.server.as_deref(), Some("a" | "b")), "{r:?}");

    // A third one appears UP.
    let c = fake("c", "127.31.1.13:16443", &pki);
    assert_eq!(
        m.apply(&[backend(&a), backend(&b), backend(&c)]),
        ApplyOutcome::Reloaded
    );
    wait_until("c UP", T, || is_up(m, "c") == Some(true));

    // b dies: out of rotation within DESIGN L4's 1.5 s.
    // After a reload every server starts one failed check from DOWN
    // (`UP 1/3`); measure from the steady state, `UP` with all three.
    wait_until("b fully UP", T, || {
        status_of(m, "b").as_deref() == Some("UP")
    });
    let t0 = Instant::now();
    b.stop();
    wait_until("b DOWN", Duration::from_secs(3), || {
        is_up(m, "b") == Some(false)
    });
    let took = t0.elapsed();
    eprintln!("haproxy: killed backend DOWN after {} ms", took.as_millis());
    assert!(
        took <= Duration::from_millis(1500),
        "b DOWN after {took:?} (> 1.5 s)"
    );
    assert!(m.healthy(), "a and c still UP");

    // Applied without b: gone from the config and from HAProxy.
    assert_eq!(m.apply(&[backend(&a), backend(&c)]), ApplyOutcome::Reloaded);
    let cfg = std::fs::read_to_string(dir.path().join("haproxy.cfg")).unwrap();
    assert!(!cfg.contains("server b "), "{cfg}");
    assert!(
        cfg.contains("server a 127.31.1.11:16443") && cfg.contains("server c 127.31.1.13:16443")
    );
    let names: Vec<String> = m.poll().backends.into_iter().map(|b| b.name).collect();
    assert_eq!(names, ["a", "c"]);
    for _ in 0..4 {
        let r = get_once(frontend, a.ca_path(), "/readyz", T).unwrap();
        assert!(matches!(r.server.as_deref(), Some("a" | "c")), "{r:?}");
    }

    // No backend at all: still a valid config, HAProxy runs, not healthy.
    assert_eq!(m.apply(&[]), ApplyOutcome::Reloaded);
    let st = m.poll();
    assert!(st.running && st.backends.is_empty(), "{st:?}");
    assert!(!m.healthy());
    assert_eq!(m.stats().reloads_ok, 3);
    assert_eq!(m.stats().starts_ok, 1);
}

#[test]
fn readyz_failure_takes_a_backend_out_and_back() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let a = fake("a", "127.31.2.11:16443", &pki);
    let b = fake("b", "127.31.2.12:16443", &pki);
    let mut g = manager(options(
        dir.path(),
        "127.31.2.10:16500".parse().unwrap(),
        Some(a.ca_path()),
    ));
    let m = g.m();
    assert_eq!(m.apply(&[backend(&a), backend(&b)]), ApplyOutcome::Started);
    wait_until("a fully UP", T, || {
        status_of(m, "a").as_deref() == Some("UP")
    });
    // /readyz 503 with the process alive: the check asks the apiserver itself.
    let t0 = Instant::now();
    a.set_ready(false);
    wait_until("a DOWN on 503", T, || is_up(m, "a") == Some(false));
    let out = t0.elapsed();
    let t1 = Instant::now();
    a.set_ready(true);
    wait_until("a back UP", T, || is_up(m, "a") == Some(true));
    let back = t1.elapsed();
    eprintln!(
        "haproxy: readyz 503 -> DOWN {} ms, 200 -> UP {} ms",
        out.as_millis(),
        back.as_millis()
    );
    assert!(out <= Duration::from_millis(1500), "{out:?}");
    assert!(back <= Duration::from_millis(2000), "{back:?}");
}

#[test]
fn open_connection_survives_five_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let a = fake("a", "127.31.3.11:16443", &pki);
    let b = fake("b", "127.31.3.12:16443", &pki);
    let frontend: SocketAddr = "127.31.3.10:16500".parse().unwrap();
    let mut g = manager(options(dir.path(), frontend, Some(a.ca_path())));
    let m = g.m();
    let ab = [backend(&a), backend(&b)];
    // A third server that never answers: toggling it changes the config.
    let ghost = Backend {
        name: "ghost".into(),
        addr: "127.31.3.13:16443".parse().unwrap(),
    };
    let abg = [backend(&a), backend(&b), ghost];
    assert_eq!(m.apply(&ab), ApplyOutcome::Started);
    wait_until("a and b UP", T, || {
        is_up(m, "a") == Some(true) && is_up(m, "b") == Some(true)
    });

    let mut held = Client::connect(frontend, a.ca_path(), T).unwrap();
    let first = held.get("/readyz").unwrap();
    assert_eq!(first.status, 200);
    let worker0 = m.show_proc().unwrap().workers;
    for i in 0..5 {
        let set: &[Backend] = if i % 2 == 0 { &abg } else { &ab };
        assert_eq!(m.apply(set), ApplyOutcome::Reloaded, "reload {i}");
        // The held connection still works and still talks to the same apiserver.
        let r = held
            .get("/readyz")
            .unwrap_or_else(|e| panic!("held connection broke after reload {i}: {e}"));
        assert_eq!((r.status, &r.server), (200, &first.server), "reload {i}");
        // New connections work as well.
        let n = get_once(frontend, a.ca_path(), "/livez", T).unwrap();
        assert_eq!(n.status, 200, "new connection after reload {i}");
    }
    let p = m.show_proc().unwrap();
    assert!(
        p.old_workers.iter().any(|w| worker0.contains(w)),
        "the first worker still serves the held connection: {p:?}"
    );
    assert_eq!(m.stats().reloads_ok, 5);
}

#[test]
fn bad_render_keeps_running_config_and_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let a = fake("a", "127.31.4.11:16443", &pki);
    let frontend: SocketAddr = "127.31.4.10:16500".parse().unwrap();
    let mut g = manager(options(dir.path(), frontend, Some(a.ca_path())));
    let m = g.m();
    assert_eq!(m.apply(&[backend(&a)]), ApplyOutcome::Started);
    wait_until("a UP", T, || is_up(m, "a") == Some(true));
    let cfg_path = dir.path().join("haproxy.cfg");
    let good = std::fs::read(&cfg_path).unwrap();
    let mut held = Client::connect(frontend, a.ca_path(), T).unwrap();
    assert_eq!(held.get("/readyz").unwrap().status, 200);
    let pid = m.master_pid().unwrap();

    // 1. A render `haproxy -c` refuses.
    let bad = format!("{}    bogus-keyword here\n", m.render(&[backend(&a)]));
    let out = m.apply_raw(&bad);
    let ApplyOutcome::CheckFailed(HaproxyError::Command {
        argv,
        status,
        output,
    }) = &out
    else {
        panic!("expected CheckFailed, got {out:?}");
    };
    assert_eq!(argv[..3], [HAPROXY, "-c", "-f"]);
    assert!(status.contains('1') || status.contains("exit"), "{status}");
    assert!(output.contains("bogus-keyword"), "{output}");
    assert_eq!(
        std::fs::read(&cfg_path).unwrap(),
        good,
        "config file untouched"
    );
    let st = m.poll();
    assert!(st.running && !st.config_ok, "{st:?}");
    let le = st.last_error.unwrap();
    assert!(le.contains("-c -f") && le.contains("bogus-keyword"), "{le}");
    assert_eq!(
        held.get("/readyz").unwrap().status,
        200,
        "held connection intact"
    );
    assert_eq!(
        get_once(frontend, a.ca_path(), "/readyz", T)
            .unwrap()
            .status,
        200
    );
    assert_eq!(m.master_pid(), Some(pid));
    // Asked again with the same text: not re-run, not counted twice.
    assert!(matches!(m.apply_raw(&bad), ApplyOutcome::CheckFailed(_)));
    assert_eq!(m.stats().check_failed, 1);

    // 2. A render that passes `-c` but the master cannot load (a bind on a
    //    port another socket holds): reload fails, old config keeps running.
    let blocker = TcpListener::bind("127.31.4.20:16501").unwrap();
    let clash = m.render(&[backend(&a)]).replace(
        "    bind 127.31.4.10:16500\n",
        "    bind 127.31.4.10:16500\n    bind 127.31.4.20:16501\n",
    );
    let out = m.apply_raw(&clash);
    let ApplyOutcome::ReloadFailed(e) = &out else {
        panic!("expected ReloadFailed, got {out:?}");
    };
    assert!(e.to_string().contains("Address already in use"), "{e}");
    assert_eq!(
        std::fs::read(&cfg_path).unwrap(),
        good,
        "previous config restored"
    );
    assert_eq!(
        held.get("/readyz").unwrap().status,
        200,
        "held connection intact"
    );
    assert_eq!(
        get_once(frontend, a.ca_path(), "/readyz", T)
            .unwrap()
            .status,
        200
    );
    assert_eq!(m.stats().reload_failed, 1);
    assert!(!m.poll().config_ok);
    drop(blocker);

    // 3. Back to the good render: it is what runs, so nothing to do.
    assert_eq!(m.apply(&[backend(&a)]), ApplyOutcome::Unchanged);
    let st = m.poll();
    assert!(st.config_ok && st.last_error.is_none(), "{st:?}");
    // And a real change reloads fine after the failed reload.
    let b = fake("b", "127.31.4.12:16443", &pki);
    assert_eq!(m.apply(&[backend(&a), backend(&b)]), ApplyOutcome::Reloaded);
    wait_until("b UP", T, || is_up(m, "b") == Some(true));
}

#[test]
fn agent_restart_adopts_the_running_master() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let a = fake("a", "127.31.5.11:16443", &pki);
    let frontend: SocketAddr = "127.31.5.10:16500".parse().unwrap();
    let o = options(dir.path(), frontend, Some(a.ca_path()));
    let mut g1 = manager(o.clone());
    assert_eq!(g1.m().apply(&[backend(&a)]), ApplyOutcome::Started);
    let pid = g1.m().master_pid().unwrap();
    wait_until("a UP", T, || is_up(g1.m(), "a") == Some(true));
    let mut held = Client::connect(frontend, a.ca_path(), T).unwrap();
    assert_eq!(held.get("/readyz").unwrap().status, 200);

    // The "agent" goes away without stopping HAProxy; a new one adopts it.
    let old = g1.0.take().unwrap();
    drop(old);
    let mut g2 = manager(o);
    let m = g2.m();
    assert_eq!(m.master_pid(), Some(pid), "adopted, not respawned");
    // It cannot know what the master loaded: one hitless reload, then steady.
    assert_eq!(m.apply(&[backend(&a)]), ApplyOutcome::Reloaded);
    assert_eq!(m.apply(&[backend(&a)]), ApplyOutcome::Unchanged);
    assert_eq!(m.master_pid(), Some(pid));
    assert_eq!(held.get("/readyz").unwrap().status, 200);
    assert!(m.poll().running);
    let b = fake("b", "127.31.5.12:16443", &pki);
    assert_eq!(m.apply(&[backend(&a), backend(&b)]), ApplyOutcome::Reloaded);
    assert_eq!(m.master_pid(), Some(pid));
    wait_until("b UP", T, || is_up(m, "b") == Some(true));
}

#[test]
fn dead_master_is_restarted_by_apply() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let a = fake("a", "127.31.6.11:16443", &pki);
    let mut g = manager(options(
        dir.path(),
        "127.31.6.10:16500".parse().unwrap(),
        Some(a.ca_path()),
    ));
    let m = g.m();
    assert_eq!(m.apply(&[backend(&a)]), ApplyOutcome::Started);
    let p = m.show_proc().unwrap();
    // Kill master and workers (all ours) with SIGKILL: a crash.
    for pid in std::iter::once(p.master_pid).chain(p.workers.iter().copied()) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
    }
    wait_until("status not running", T, || !m.poll().running);
    assert!(!m.healthy());
    assert_eq!(m.apply(&[backend(&a)]), ApplyOutcome::Started);
    wait_until("a UP again", T, || is_up(m, "a") == Some(true));
}

/// Compact topology (control-plane + lb on one node), DESIGN section 5.
#[test]
fn compact_topology() {
    // Needs the host's 0.0.0.0:6443, which fake-kubeadm's apiservers take
    // too (tests/it/fake_kubeadm.rs holds the same lock).
    let _port = kubeha_tests::lab::serial().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");

    // 1. apiserver bound to the node address, HAProxy on the VIP, same port.
    {
        let api = fake("node", "127.31.7.11:6443", &pki);
        let sub = dir.path().join("one");
        let mut o = options(
            &sub,
            "127.31.7.10:6443".parse().unwrap(),
            Some(api.ca_path()),
        );
        o.haproxy.backend_port = 6443;
        let mut g = manager(o);
        let m = g.m();
        assert_eq!(m.apply(&[backend(&api)]), ApplyOutcome::Started);
        wait_until("node UP", T, || is_up(m, "node") == Some(true));
        let r = get_once(
            "127.31.7.10:6443".parse().unwrap(),
            api.ca_path(),
            "/readyz",
            T,
        )
        .unwrap();
        assert_eq!((r.status, r.server.as_deref()), (200, Some("node")));
    }

    // 2. apiserver on 0.0.0.0:6443 (kubeadm's default): HAProxy cannot bind.
    let api = FakeApiserver::start(FakeApiserverOptions::new(
        "node",
        "0.0.0.0:6443".parse().unwrap(),
        &pki,
    ))
    .unwrap_or_else(|e| panic!("0.0.0.0:6443 must be free for this test: {e}"));
    let node = Backend {
        name: "node".into(),
        addr: "127.31.7.11:6443".parse().unwrap(),
    };
    {
        let sub = dir.path().join("two");
        let mut o = options(
            &sub,
            "127.31.7.10:6443".parse().unwrap(),
            Some(api.ca_path()),
        );
        o.haproxy.backend_port = 6443;
        let mut g = manager(o);
        let m = g.m();
        let out = m.apply(std::slice::from_ref(&node));
        let ApplyOutcome::StartFailed(e @ HaproxyError::FrontendInUse { listeners, .. }) = &out
        else {
            panic!("expected FrontendInUse, got {out:?}");
        };
        let msg = e.to_string();
        eprintln!("haproxy: compact-topology error: {msg}");
        assert!(
            msg.contains("`127.31.7.10:6443`") && msg.contains("address already in use"),
            "{msg}"
        );
        assert!(
            msg.contains("bind kube-apiserver to the node address"),
            "{msg}"
        );
        assert!(
            msg.contains("move `haproxy.frontend` to another port"),
            "{msg}"
        );
        let me = std::process::id() as i32;
        assert!(
            listeners
                .iter()
                .any(|l| l.starts_with("0.0.0.0:6443") && l.contains(&format!("pid {me} "))),
            "names the wildcard listener and its process: {listeners:?}"
        );
        let st = m.poll();
        assert!(!st.running && !st.config_ok, "{st:?}");
        assert_eq!(st.last_error.as_deref(), Some(msg.as_str()));
        assert!(!m.healthy());
        assert_eq!(m.stats().start_failed, 1);
        // Retried with the same config soon after: not spawned again at once.
        assert!(matches!(
            m.apply(std::slice::from_ref(&node)),
            ApplyOutcome::StartFailed(_)
        ));
        assert_eq!(m.stats().start_failed, 1);
    }

    // 3. The alternative: the frontend on another port works next to it.
    {
        let sub = dir.path().join("three");
        let mut o = options(
            &sub,
            "127.31.7.10:7443".parse().unwrap(),
            Some(api.ca_path()),
        );
        o.haproxy.backend_port = 6443;
        let mut g = manager(o);
        let m = g.m();
        assert_eq!(m.apply(std::slice::from_ref(&node)), ApplyOutcome::Started);
        wait_until("node UP", T, || is_up(m, "node") == Some(true));
        let r = get_once(
            "127.31.7.10:7443".parse().unwrap(),
            api.ca_path(),
            "/readyz",
            T,
        )
        .unwrap();
        assert_eq!((r.status, r.server.as_deref()), (200, Some("node")));
    }
}

#[test]
fn before_the_ca_exists_checks_do_not_verify() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let a = fake("a", "127.31.8.11:16443", &pki);
    let later_ca = dir.path().join("etc-kubernetes").join("pki").join("ca.crt");
    let mut g = manager(options(
        dir.path(),
        "127.31.8.10:16500".parse().unwrap(),
        Some(&later_ca),
    ));
    let m = g.m();
    assert_eq!(m.apply(&[backend(&a)]), ApplyOutcome::Started);
    let cfg = std::fs::read_to_string(dir.path().join("haproxy.cfg")).unwrap();
    assert!(cfg.contains("check-ssl verify none"), "{cfg}");
    wait_until("a UP without a CA", T, || is_up(m, "a") == Some(true));
    // kubeadm init writes the CA: the next apply verifies against it.
    std::fs::create_dir_all(later_ca.parent().unwrap()).unwrap();
    std::fs::copy(a.ca_path(), &later_ca).unwrap();
    assert_eq!(m.apply(&[backend(&a)]), ApplyOutcome::Reloaded);
    let cfg = std::fs::read_to_string(dir.path().join("haproxy.cfg")).unwrap();
    assert!(
        cfg.contains(&format!("verify required ca-file {}", later_ca.display())),
        "{cfg}"
    );
    wait_until("a UP verified", T, || is_up(m, "a") == Some(true));
    // A CA that did not sign the apiserver: the check fails and says so.
    let other = dir.path().join("other");
    let x = fake("x", "127.31.8.12:16443", &other);
    std::fs::copy(x.ca_path(), &later_ca).unwrap();
    let mut txt = m.render(&[backend(&a)]);
    txt.push_str("# re-read the CA\n");
    assert_eq!(m.apply_raw(&txt), ApplyOutcome::Reloaded);
    wait_until("a DOWN with the wrong CA", T, || {
        is_up(m, "a") == Some(false)
    });
}

#[test]
fn debian_haproxy_service_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let a = fake("a", "127.31.10.11:16443", &pki);
    // Stand-in for Debian's haproxy.service: another HAProxy whose pid file
    // the second manager is told is Debian's.
    let mut other = manager(options(
        &dir.path().join("debian"),
        "127.31.10.10:16500".parse().unwrap(),
        Some(a.ca_path()),
    ));
    assert_eq!(other.m().apply(&[backend(&a)]), ApplyOutcome::Started);
    let other_pid = other.m().master_pid().unwrap();
    let mut o = options(
        &dir.path().join("kubeha"),
        "127.31.10.10:16501".parse().unwrap(),
        Some(a.ca_path()),
    );
    o.debian_pid_file = other.m().paths().pid_file.clone();
    let mut g = manager(o);
    let w = g.m().warnings().join("\n");
    assert!(
        w.contains(&format!("Debian's haproxy.service runs (pid {other_pid} "))
            && w.contains("systemctl disable --now haproxy"),
        "{w}"
    );
    other.0.take().unwrap().shutdown();
    g.m().poll();
    assert!(g.m().warnings().is_empty(), "{:?}", g.m().warnings());
}
