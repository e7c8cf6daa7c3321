//! Issue "HAProxy instances kept equal to the live control planes", in the
//! namespace lab: real agents run real HAProxy (Debian's 2.6) on the lb
//! nodes, `fake-apiserver` processes stand in for kube-apiserver on the
//! control planes' own addresses, a client namespace talks TLS to the VIP.
//!
//! Needs root, `apt-get install -y haproxy` and `cargo build --workspace
//! --bins`. `KUBEHA_TEST_KEEP=1` keeps each lab's run directory (agent
//! logs, HAProxy logs and configs) for a post-mortem.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use kubeha_core::api::{MemberState, Status};
use kubeha_tests::lab::{self, Lab, LabSpec, Node, Sampler, SerialGuard, Topology, wait_until};
use kubeha_tests::lab_haproxy::{
    self as lh, FakeApi, TlsProber, backends, connect_from, get_from, haproxy_up, kill_haproxy,
    reloads, set_haproxy_key, show_proc, show_stat, wait_status, write_check_wrapper,
};

const API_PORT: u16 = 6443;
const T: Duration = Duration::from_secs(5);
/// DESIGN L4.
const L4_DOWN: Duration = Duration::from_millis(1500);
const L4_UP: Duration = Duration::from_millis(2000);

fn guard() -> Option<SerialGuard> {
    crate::support::haproxy_lab_guard(&["kubeha-agent", "fake-apiserver"])
}

fn up(spec: LabSpec) -> Lab {
    let keep = std::env::var_os("KUBEHA_TEST_KEEP").is_some();
    let lab = Lab::up(spec.haproxy(true).keep_dir(keep)).expect("lab up");
    if keep {
        eprintln!("lab run directory kept: {}", lab.dir().display());
    }
    lab
}

fn pki(lab: &Lab) -> PathBuf {
    lab.dir().join("pki")
}

fn ca(lab: &Lab) -> PathBuf {
    pki(lab).join("ca.crt")
}

fn vip(port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(lab::VIP, port))
}

fn own(n: &Node<'_>) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(n.addr(), API_PORT))
}

/// A fake apiserver named after `node` on its own address :6443. Started
/// one at a time: the first one writes the shared CA.
fn fake_on(lab: &Lab, node: &str) -> FakeApi {
    let n = lab.node(node).unwrap();
    FakeApi::start(lab, n.ns(), node, own(&n), &pki(lab))
        .unwrap_or_else(|e| panic!("fake apiserver on `{node}`: {e}"))
}

/// A fake apiserver on `0.0.0.0:6443` in `node`'s namespace (kubeadm's
/// default bind), named after the node.
fn fake_wildcard(lab: &Lab, node: &str) -> FakeApi {
    let n = lab.node(node).unwrap();
    let any = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, API_PORT));
    FakeApi::start(lab, n.ns(), node, any, &pki(lab))
        .unwrap_or_else(|e| panic!("fake apiserver on `{node}` 0.0.0.0:6443: {e}"))
}

fn cfg_text(n: &Node<'_>) -> String {
    std::fs::read_to_string(n.paths().haproxy_cfg()).unwrap_or_default()
}

fn has_server(n: &Node<'_>, server: &str) -> bool {
    cfg_text(n).contains(&format!("    server {server} "))
}

/// The node's agent status shows `want` as its backends (name, up), HAProxy
/// running with its config.
fn wait_backends(n: &Node<'_>, want: &[(&str, bool)], timeout: Duration) -> Status {
    let want: Vec<(String, bool)> = want.iter().map(|(s, u)| (s.to_string(), *u)).collect();
    wait_status(n, timeout, |s| {
        s.haproxy.as_ref().is_some_and(|h| h.running && h.config_ok) && backends(s) == want
    })
    .unwrap_or_else(|e| panic!("backends {want:?}: {e}"))
}

/// HTTPS `GET /readyz` through `target` from the client namespace.
fn through(lab: &Lab, target: SocketAddr) -> kubeha_tests::fake_apiserver::Response {
    get_from(lab.client_ns(), target, &ca(lab), "/readyz", T)
        .unwrap_or_else(|e| panic!("GET /readyz via {target} from the client: {e}"))
}

/// Wait until the lab has converged with `want` holding the VIP (the
/// highest-priority lb node takes it once its HAProxy is healthy).
fn converged_on(lab: &Lab, want: &str) {
    let mut h = lab.wait_converged(Duration::from_secs(30)).unwrap();
    let ok = wait_until(Duration::from_secs(15), Duration::from_millis(50), || {
        lab.converged().is_ok_and(|x| {
            h = x;
            h == want
        })
    });
    assert!(ok, "`{want}` does not take the VIP (holder `{h}`)");
}

/// Never two interfaces with the VIP in any sample since `t`.
fn assert_single_holder(sampler: &Sampler, t: Instant, what: &str) {
    let s = sampler.summary(t, Instant::now());
    assert!(s.samples > 10, "the sampler stalled during {what}: {s:?}");
    assert!(s.max_holders <= 1, "two holders during {what}: {s:?}");
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

/// Poll HAProxy's own view (`show stat`) and the agent's status on every
/// node of `lbs`, all in one loop, until `server` is `up` everywhere; per
/// node, the time each view took (since `t0`). The bound is the poll round
/// (a few ms per node).
fn time_to_state(
    lab: &Lab,
    lbs: &[&str],
    server: &str,
    up: bool,
    t0: Instant,
    limit: Duration,
) -> Vec<(String, Duration, Duration)> {
    let nodes: Vec<Node<'_>> = lbs.iter().map(|n| lab.node(n).unwrap()).collect();
    let mut h_at: Vec<Option<Duration>> = vec![None; lbs.len()];
    let mut s_at: Vec<Option<Duration>> = vec![None; lbs.len()];
    let done = wait_until(limit, Duration::from_millis(2), || {
        for (i, n) in nodes.iter().enumerate() {
            if h_at[i].is_none() && haproxy_up(n, server) == Some(up) {
                h_at[i] = Some(t0.elapsed());
            }
            if s_at[i].is_none()
                && n.status().is_ok_and(|s| {
                    backends(&s)
                        .iter()
                        .any(|(name, u)| name == server && *u == up)
                })
            {
                s_at[i] = Some(t0.elapsed());
            }
        }
        h_at.iter().chain(&s_at).all(Option::is_some)
    });
    assert!(
        done,
        "`{server}` not {} on every node after {limit:?}: haproxy {h_at:?}, status {s_at:?}; {:?}",
        if up { "UP" } else { "DOWN" },
        nodes
            .iter()
            .map(|n| (n.name().to_string(), show_stat(n)))
            .collect::<Vec<_>>()
    );
    lbs.iter()
        .enumerate()
        .map(|(i, lb)| (lb.to_string(), h_at[i].unwrap(), s_at[i].unwrap()))
        .collect()
}

/// HAProxy reports `server` fully `UP` (not `UP 1/3`, one failed check from
/// DOWN, as every server starts after a reload) on every node of `lbs`.
fn wait_fully_up(lab: &Lab, lbs: &[&str], server: &str) {
    for lb in lbs {
        let n = lab.node(lb).unwrap();
        let ok = wait_until(T, Duration::from_millis(5), || {
            show_stat(&n)
                .iter()
                .any(|s| s.name == server && s.status == "UP")
        });
        assert!(ok, "`{lb}`: `{server}` not fully UP: {:?}", show_stat(&n));
    }
}

// ------------------------------------------------------------------ 1

#[test]
fn backends_follow_membership_and_readyz() {
    let Some(_g) = guard() else { return };
    let lab = up(LabSpec::new(Topology::Guide));
    let lbs = ["lb-0", "lb-1"];
    let _f0 = fake_on(&lab, "cp-0");
    let f1 = fake_on(&lab, "cp-1");

    // Two apiservers answer, the third control plane is a member without one.
    for lb in lbs {
        let n = lab.node(lb).unwrap();
        wait_backends(
            &n,
            &[("cp-0", true), ("cp-1", true), ("cp-2", false)],
            Duration::from_secs(30),
        );
        let cfg = cfg_text(&n);
        for (i, cp) in ["cp-0", "cp-1", "cp-2"].iter().enumerate() {
            let addr = lab.node(cp).unwrap().addr();
            assert!(
                cfg.contains(&format!("    server {cp} {addr}:{API_PORT}\n")),
                "`{lb}` server {i}: {cfg}"
            );
        }
        assert!(cfg.contains(&format!("bind {}", vip(API_PORT))), "{cfg}");
    }
    lab.wait_converged(Duration::from_secs(30)).unwrap();
    let r = through(&lab, vip(API_PORT));
    assert_eq!(r.status, 200);
    assert!(
        matches!(r.server.as_deref(), Some("cp-0" | "cp-1")),
        "{r:?}"
    );

    // cp-2's apiserver starts: in rotation within 2 s of answering.
    let f2 = fake_on(&lab, "cp-2");
    let t_up = Instant::now();
    let up_times = time_to_state(&lab, &lbs, "cp-2", true, t_up, Duration::from_secs(5));
    for (lb, h, s) in &up_times {
        eprintln!(
            "L4 in: `{lb}`: cp-2 UP in HAProxy {} ms, in the agent's status {} ms after its apiserver listened",
            ms(*h),
            ms(*s)
        );
        assert!(*h <= L4_UP && *s <= L4_UP, "`{lb}`: {h:?} / {s:?} (> 2 s)");
    }
    // Through the VIP, all three serve in turn (leastconn over idle servers).
    let mut seen = std::collections::BTreeSet::new();
    wait_until(T, Duration::from_millis(1), || {
        seen.insert(through(&lab, vip(API_PORT)).server.unwrap_or_default());
        seen.len() == 3
    });
    assert_eq!(seen.len(), 3, "{seen:?}");

    // cp-1's apiserver is killed: out of rotation within 1.5 s.
    wait_fully_up(&lab, &lbs, "cp-1");
    let t_down = Instant::now();
    f1.kill();
    let down_times = time_to_state(&lab, &lbs, "cp-1", false, t_down, Duration::from_secs(5));
    for (lb, h, s) in &down_times {
        eprintln!(
            "L4 out: `{lb}`: cp-1 DOWN in HAProxy {} ms, in the agent's status {} ms after its apiserver was killed",
            ms(*h),
            ms(*s)
        );
        assert!(
            *h <= L4_DOWN && *s <= L4_DOWN,
            "`{lb}`: {h:?} / {s:?} (> 1.5 s)"
        );
    }
    for _ in 0..6 {
        let r = through(&lab, vip(API_PORT));
        assert!(
            matches!(r.server.as_deref(), Some("cp-0" | "cp-2")),
            "{r:?}"
        );
    }

    // cp-2's agent stops cleanly: the member has left, its server goes from
    // the file and from HAProxy (its apiserver still runs: membership
    // decides, not the port).
    let t_left = Instant::now();
    lab.node("cp-2").unwrap().stop().unwrap();
    for lb in lbs {
        let n = lab.node(lb).unwrap();
        let st = wait_backends(
            &n,
            &[("cp-0", true), ("cp-1", false)],
            Duration::from_secs(10),
        );
        assert!(!has_server(&n, "cp-2"), "{}", cfg_text(&n));
        assert!(has_server(&n, "cp-0") && has_server(&n, "cp-1"));
        let m = st.members.iter().find(|m| m.name == "cp-2").unwrap();
        assert_eq!(m.state, MemberState::Left, "{m:?}");
        eprintln!(
            "`{lb}`: cp-2 removed from config and status {} ms after its agent stopped",
            ms(t_left.elapsed())
        );
    }
    assert_eq!(through(&lab, vip(API_PORT)).server.as_deref(), Some("cp-0"));
    drop(f2);
}

// ------------------------------------------------------------------ 2

/// The guide lab with a fake apiserver on every control plane, `lb-0`
/// holding the VIP and seeing all three backends UP.
fn guide_lab_all_up() -> (Lab, Vec<FakeApi>) {
    let lab = up(LabSpec::new(Topology::Guide));
    let fakes: Vec<FakeApi> = ["cp-0", "cp-1", "cp-2"]
        .iter()
        .map(|n| fake_on(&lab, n))
        .collect();
    converged_on(&lab, "lb-0");
    wait_backends(
        &lab.node("lb-0").unwrap(),
        &[("cp-0", true), ("cp-1", true), ("cp-2", true)],
        Duration::from_secs(10),
    );
    (lab, fakes)
}

#[test]
fn held_connection_through_the_vip_survives_five_reloads() {
    let Some(_g) = guard() else { return };
    let (lab, _fakes) = guide_lab_all_up();
    let holder = lab.node("lb-0").unwrap();
    let sampler = Sampler::start(&lab).unwrap();
    let t_all = Instant::now();

    let mut held = connect_from(lab.client_ns(), vip(API_PORT), &ca(&lab), T).unwrap();
    let first = held.get("/readyz").unwrap();
    assert_eq!(first.status, 200);
    let backend = first.server.clone().unwrap();
    // Membership changes come from a control plane the held connection
    // does not use.
    let victim = ["cp-0", "cp-1", "cp-2"]
        .into_iter()
        .find(|c| *c != backend)
        .unwrap();
    let p0 = show_proc(&holder).expect("show proc on the holder");
    let ok0 = reloads(&holder, "ok").unwrap();

    let mut workers = p0.workers.clone();
    for i in 0..5u64 {
        let present = i % 2 == 1;
        let vn = lab.node(victim).unwrap();
        if present {
            vn.start().unwrap();
        } else {
            vn.stop().unwrap();
        }
        let t = Instant::now();
        let mut last = None;
        let ok = wait_until(Duration::from_secs(15), Duration::from_millis(10), || {
            last = show_proc(&holder);
            last.as_ref().is_some_and(|p| {
                p.reloads == p0.reloads + i + 1 && p.workers.iter().any(|w| !workers.contains(w))
            }) && has_server(&holder, victim) == present
        });
        assert!(
            ok,
            "reload {} (`{victim}` {}) not seen: {last:?}",
            i + 1,
            if present { "started" } else { "stopped" }
        );
        workers = last.unwrap().workers;
        let r = held
            .get("/readyz")
            .unwrap_or_else(|e| panic!("the held connection broke after reload {}: {e}", i + 1));
        assert_eq!(
            (r.status, r.server.as_deref()),
            (200, Some(backend.as_str())),
            "reload {}",
            i + 1
        );
        assert_eq!(
            through(&lab, vip(API_PORT)).status,
            200,
            "new connection after reload {}",
            i + 1
        );
        eprintln!(
            "reload {} (`{victim}` {}) applied {} ms after the change; held connection answered",
            i + 1,
            if present { "joined" } else { "left" },
            ms(t.elapsed())
        );
    }
    let p = show_proc(&holder).unwrap();
    assert_eq!(p.reloads, p0.reloads + 5, "{p:?}");
    assert!(
        p.old_workers.iter().any(|w| p0.workers.contains(w)),
        "the first worker still serves the held connection: before {p0:?}, now {p:?}"
    );
    assert_eq!(reloads(&holder, "ok").unwrap(), ok0 + 5);
    assert_eq!(held.get("/readyz").unwrap().status, 200);
    assert_eq!(lab.vip_holders().unwrap(), ["lb-0"]);
    assert_single_holder(&sampler, t_all, "five reloads");
}

// ------------------------------------------------------------------ 3

/// A guide lab whose `lb-0` runs HAProxy through a wrapper that refuses
/// `haproxy -c` while the returned flag file exists; fake apiservers on
/// every control plane; converged with `lb-0` holding the VIP and all
/// three servers UP. Returns the lab, the fakes, the wrapper and the flag.
fn wrapped_lab() -> (Lab, Vec<FakeApi>, PathBuf, PathBuf) {
    let lab = up(LabSpec::new(Topology::Guide).without_agents());
    let lb0 = lab.node("lb-0").unwrap();
    // The lab wrote every config at `up`; lb-0's gets `binary` before its
    // agent first starts.
    let wrapper = lb0.paths().dir.join("haproxy-wrapper");
    let flag = lb0.paths().dir.join("refuse-haproxy-check");
    write_check_wrapper(&wrapper, &flag).unwrap();
    set_haproxy_key(&lb0, "binary", &format!("\"{}\"", wrapper.display())).unwrap();
    let fakes: Vec<FakeApi> = ["cp-0", "cp-1", "cp-2"]
        .iter()
        .map(|n| fake_on(&lab, n))
        .collect();
    for n in lab.nodes() {
        lab.node(&n.name).unwrap().start().unwrap();
    }
    converged_on(&lab, "lb-0");
    wait_backends(
        &lab.node("lb-0").unwrap(),
        &[("cp-0", true), ("cp-1", true), ("cp-2", true)],
        Duration::from_secs(10),
    );
    (lab, fakes, wrapper, flag)
}

#[test]
fn a_render_refused_by_haproxy_check_keeps_config_and_traffic() {
    let Some(_g) = guard() else { return };
    let (lab, _fakes, wrapper, flag) = wrapped_lab();
    let lb0 = lab.node("lb-0").unwrap();
    let all = [("cp-0", true), ("cp-1", true), ("cp-2", true)];
    let good = std::fs::read(lb0.paths().haproxy_cfg()).unwrap();
    let ok0 = reloads(&lb0, "ok").unwrap();
    let cf0 = reloads(&lb0, "check_failed").unwrap();
    let p0 = show_proc(&lb0).unwrap();
    let mut held = connect_from(lab.client_ns(), vip(API_PORT), &ca(&lab), T).unwrap();
    assert_eq!(held.get("/readyz").unwrap().status, 200);

    // `haproxy -c` refuses the next render (cp-2 leaves).
    std::fs::write(&flag, "").unwrap();
    lab.node("cp-2").unwrap().stop().unwrap();
    let st = wait_status(&lb0, Duration::from_secs(10), |s| {
        s.haproxy.as_ref().is_some_and(|h| !h.config_ok)
    })
    .unwrap();
    let h = st.haproxy.clone().unwrap();
    let err = h.last_error.clone().unwrap_or_default();
    eprintln!("refused render: status last_error: {err}");
    assert!(h.running, "{h:?}");
    assert!(
        err.contains(&format!("`{} -c -f ", wrapper.display()))
            && err.contains("exit status: 1")
            && err.contains("check refused on purpose"),
        "last_error must name the command, its exit status and output: {err}"
    );
    // The old config still runs (cp-2 is still a server there), unchanged on
    // disk, no temp file left, same master, no reload.
    assert_eq!(backends(&st), all.map(|(n, u)| (n.to_string(), u)).to_vec());
    assert_eq!(std::fs::read(lb0.paths().haproxy_cfg()).unwrap(), good);
    let tmp = lb0.paths().dir.join(".haproxy.cfg.kubeha-new");
    assert!(!tmp.exists(), "{} left behind", tmp.display());
    let p1 = show_proc(&lb0).unwrap();
    assert_eq!((p1.master_pid, p1.reloads), (p0.master_pid, p0.reloads));
    assert!(reloads(&lb0, "check_failed").unwrap() > cf0);
    assert_eq!(reloads(&lb0, "ok").unwrap(), ok0);
    // Traffic through the VIP: the held connection and new ones.
    assert_eq!(held.get("/readyz").unwrap().status, 200);
    assert_eq!(through(&lab, vip(API_PORT)).status, 200);
    // The node stays healthy and keeps the VIP; lb-1 (plain HAProxy) applied it.
    let lb1 = lab.node("lb-1").unwrap();
    wait_backends(&lb1, &[("cp-0", true), ("cp-1", true)], T);
    assert_eq!(lab.vip_holders().unwrap(), ["lb-0"]);
    let me = st.members.iter().find(|m| m.name == "lb-0").unwrap();
    assert_eq!(me.lb, "healthy", "{me:?}");

    // Flag gone: the next membership change applies. cp-2 back makes the
    // wanted set equal what runs (nothing to reload, the error clears)...
    std::fs::remove_file(&flag).unwrap();
    lab.node("cp-2").unwrap().start().unwrap();
    let st = wait_status(&lb0, Duration::from_secs(15), |s| {
        s.haproxy
            .as_ref()
            .is_some_and(|h| h.config_ok && h.last_error.is_none())
    })
    .unwrap();
    assert_eq!(backends(&st), all.map(|(n, u)| (n.to_string(), u)).to_vec());
    assert_eq!(std::fs::read(lb0.paths().haproxy_cfg()).unwrap(), good);
    // ...and cp-1 leaving is a real change: checked, written, reloaded.
    lab.node("cp-1").unwrap().stop().unwrap();
    wait_backends(
        &lb0,
        &[("cp-0", true), ("cp-2", true)],
        Duration::from_secs(10),
    );
    assert!(!has_server(&lb0, "cp-1") && has_server(&lb0, "cp-2"));
    assert_eq!(reloads(&lb0, "ok").unwrap(), ok0 + 1);
    assert_eq!(show_proc(&lb0).unwrap().reloads, p0.reloads + 1);
    assert_eq!(held.get("/readyz").unwrap().status, 200);
    assert_eq!(through(&lab, vip(API_PORT)).status, 200);
}

/// `kubeha_haproxy_reloads_total{outcome="check_failed"}` counts renders
/// `haproxy -c` refused, once each; the agent log warns once per refusal.
#[test]
fn a_refused_render_is_counted_and_logged_once() {
    let Some(_g) = guard() else { return };
    let (lab, _fakes, _wrapper, flag) = wrapped_lab();
    let lb0 = lab.node("lb-0").unwrap();
    let cf0 = reloads(&lb0, "check_failed").unwrap();
    let log0 = std::fs::read_to_string(lb0.log()).unwrap().len();
    std::fs::write(&flag, "").unwrap();
    lab.node("cp-2").unwrap().stop().unwrap();
    wait_status(&lb0, Duration::from_secs(10), |s| {
        s.haproxy.as_ref().is_some_and(|h| !h.config_ok)
    })
    .unwrap();
    // Nothing changes for 2 s: the same render stays refused.
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(2) {
        assert!(lb0.status().unwrap().haproxy.is_some_and(|h| !h.config_ok));
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = std::fs::read_to_string(lb0.log()).unwrap();
    let warned = log[log0..]
        .lines()
        .filter(|l| l.contains("haproxy configuration not applied"))
        .count();
    let counted = reloads(&lb0, "check_failed").unwrap() - cf0;
    assert_eq!(
        (counted, warned),
        (1, 1),
        "one refused render: check_failed grew by {counted}, {warned} warnings logged in 2 s"
    );
}

// ------------------------------------------------------------------ 4

#[test]
fn haproxy_killed_on_the_holder_moves_the_vip() {
    let Some(_g) = guard() else { return };
    let (lab, _fakes) = guide_lab_all_up();
    let holder = lab.node("lb-0").unwrap();
    wait_backends(
        &lab.node("lb-1").unwrap(),
        &[("cp-0", true), ("cp-1", true), ("cp-2", true)],
        Duration::from_secs(10),
    );
    let sampler = Sampler::start(&lab).unwrap();
    let prober = TlsProber::start(
        lab.client_ns(),
        vip(API_PORT),
        &ca(&lab),
        Duration::from_millis(10),
        Duration::from_millis(200),
    )
    .unwrap();
    assert!(
        prober.wait_ok(Instant::now(), T).is_some(),
        "no answer through the VIP"
    );
    let master0 = show_proc(&holder).unwrap().master_pid;

    let t0 = Instant::now();
    let killed = kill_haproxy(&holder).unwrap();
    assert!(
        sampler.wait_for(Duration::from_secs(10), |h| h == ["lb-1"]),
        "the VIP did not move to lb-1: {:?}",
        sampler.holders()
    );
    let moved = t0.elapsed();
    let back = prober
        .wait_ok(t0, T)
        .expect("no answer through the VIP after the kill");
    let failed = prober
        .since(t0)
        .iter()
        .filter(|p| !p.ok() && p.start < back.start)
        .count();
    eprintln!(
        "HAProxy pids {killed:?} killed on lb-0: VIP on lb-1 after {} ms; first answer through the VIP after {} ms ({failed} failed requests before)",
        ms(moved),
        ms(back.end - t0)
    );
    assert!(
        moved <= Duration::from_secs(3),
        "the VIP moved after {moved:?}"
    );

    // The agent restarts its HAProxy; whoever holds the VIP afterwards, there
    // is exactly one holder and the VIP answers.
    let st = wait_status(&holder, Duration::from_secs(10), |s| {
        s.haproxy
            .as_ref()
            .is_some_and(|h| h.running && h.backends.iter().any(|b| b.up))
    })
    .unwrap();
    let master1 = show_proc(&holder).unwrap().master_pid;
    assert_ne!(master0, master1, "a new master");
    let after = lab.wait_converged(Duration::from_secs(20)).unwrap();
    eprintln!(
        "after the restart of lb-0's HAProxy: holder `{after}` ({:?})",
        st.vip
    );
    assert!(prober.wait_ok(Instant::now(), T).is_some());
    assert_single_holder(&sampler, t0, "the HAProxy crash");
}

// ------------------------------------------------------------------ 5

#[test]
fn compact_nodes_share_port_6443_only_without_a_wildcard_apiserver() {
    let Some(_g) = guard() else { return };
    let lab = up(LabSpec::new(Topology::Compact));
    let names = ["cp-0", "cp-1", "cp-2"];
    let all = [("cp-0", true), ("cp-1", true), ("cp-2", true)];
    let mut fakes: Vec<Option<FakeApi>> = names.iter().map(|n| Some(fake_on(&lab, n))).collect();

    // 1. apiservers on their node's address, HAProxy on VIP:6443, same nodes.
    let holder = lab.wait_converged(Duration::from_secs(30)).unwrap();
    for n in names {
        wait_backends(&lab.node(n).unwrap(), &all, Duration::from_secs(10));
    }
    let r = through(&lab, vip(API_PORT));
    assert_eq!(r.status, 200);
    eprintln!("compact: VIP on `{holder}`, answered by `{:?}`", r.server);

    // 2. The holder's apiserver moves to 0.0.0.0:6443 while its HAProxy is
    //    down: HAProxy cannot bind VIP:6443 there any more.
    let sampler = Sampler::start(&lab).unwrap();
    let t_b = Instant::now();
    let hi = names.iter().position(|n| *n == holder).unwrap();
    let hn = lab.node(&holder).unwrap();
    hn.stop().unwrap();
    kill_haproxy(&hn).unwrap();
    fakes[hi].take().unwrap().kill();
    fakes[hi] = Some(fake_wildcard(&lab, &holder));
    hn.start().unwrap();
    let st = wait_status(&hn, Duration::from_secs(15), |s| {
        s.haproxy
            .as_ref()
            .and_then(|h| h.last_error.as_deref())
            .is_some_and(|e| e.contains("address already in use"))
    })
    .unwrap();
    let h = st.haproxy.clone().unwrap();
    let err = h.last_error.clone().unwrap();
    eprintln!("compact clash on `{holder}`: {err}");
    assert!(!h.running && !h.config_ok, "{h:?}");
    assert!(
        err.contains(&format!("`{}`", vip(API_PORT)))
            && err.contains("0.0.0.0:6443")
            && err.contains("fake-apiserver")
            && err.contains("bind kube-apiserver to the node address")
            && err.contains("move `haproxy.frontend` to another port"),
        "the error names the clash, who holds the port and both fixes: {err}"
    );
    // Not healthy, not a candidate, never the holder; the others serve.
    let others: Vec<&str> = names.iter().copied().filter(|n| *n != holder).collect();
    let new = lab.node(others[0]).unwrap();
    let ok = wait_until(Duration::from_secs(10), Duration::from_millis(20), || {
        new.status().is_ok_and(|s| {
            s.members
                .iter()
                .any(|m| m.name == holder && m.alive && m.lb == "unhealthy")
        })
    });
    assert!(
        ok,
        "others do not see `{holder}` unhealthy: {:?}",
        new.status().map(|s| s.members)
    );
    let st = hn.status().unwrap();
    let v = st.vip.clone().unwrap();
    assert!(!v.candidate && !v.held_here, "{v:?}");
    // Observe a window: the clashing node must not take the VIP back.
    let t_w = Instant::now();
    while t_w.elapsed() < Duration::from_secs(3) {
        assert!(
            !hn.has_vip().unwrap(),
            "`{holder}` holds the VIP without a working HAProxy"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let after = lab.vip_holders().unwrap();
    assert!(after.len() == 1 && after[0] != holder, "{after:?}");
    for o in &others {
        wait_backends(&lab.node(o).unwrap(), &all, T);
    }
    assert_eq!(through(&lab, vip(API_PORT)).status, 200);
    assert_single_holder(&sampler, t_b, "the port clash");
    drop(sampler);

    // 3. The alternative: every apiserver on 0.0.0.0:6443, HAProxy on VIP:7443.
    for (i, n) in names.iter().enumerate() {
        let node = lab.node(n).unwrap();
        node.stop().unwrap();
        if i == hi {
            // Its HAProxy never started.
            assert!(lh::haproxy_pids(&node).is_empty());
        } else {
            kill_haproxy(&node).unwrap();
        }
        drop(fakes[i].take());
    }
    for (i, n) in names.iter().enumerate() {
        fakes[i] = Some(fake_wildcard(&lab, n));
        let node = lab.node(n).unwrap();
        set_haproxy_key(&node, "frontend", &format!("\"{}\"", vip(7443))).unwrap();
    }
    for n in names {
        lab.node(n).unwrap().start().unwrap();
    }
    let holder = lab.wait_converged(Duration::from_secs(30)).unwrap();
    for n in names {
        let st = wait_backends(&lab.node(n).unwrap(), &all, Duration::from_secs(10));
        assert!(st.haproxy.unwrap().last_error.is_none());
        assert!(cfg_text(&lab.node(n).unwrap()).contains(&format!("bind {}", vip(7443))));
    }
    let r = through(&lab, vip(7443));
    assert_eq!(r.status, 200);
    eprintln!(
        "compact, frontend on 7443: VIP on `{holder}`, answered by `{:?}`",
        r.server
    );
}
