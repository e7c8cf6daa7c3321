//! Issue 12 in the namespace lab: zero-touch kubeadm with the real agents,
//! each droplet a network namespace on the lab's bridge
//! (`LabSpec::kubernetes`, `kubeha-lab up --kubernetes`). Control planes run
//! fake-kubeadm as their kubeadm (a real etcd on the node's own address, the
//! fake apiserver); lb nodes run HAProxy behind the VIP; the endpoint is
//! VIP:6443. Agents start in random order and nobody touches a node: exactly
//! one `kubeadm init` (fake-kubeadm's call log), every Kubernetes node joined,
//! every status agreeing, etcd with 3 voting members, `GET /api/v1/nodes`
//! from the client namespace through VIP → HAProxy → an apiserver listing
//! every node, and the same request answered again after the VIP holder's
//! agent is killed with SIGKILL. A control plane cut off the bridge while its
//! init runs still means one init, and every node joins after the heal.
//!
//! `cargo test -p kubeha-tests --test it kube_nslab -- --test-threads 1`
//! (after `cargo build -p kubeha-agent -p kubeha-ctl -p kubeha-tests --bins`;
//! needs root, `/usr/bin/etcd`, HAProxy and curl: scripts/install-deps).

use std::time::{Duration, Instant};

use kubeha_core::timing::Profile;
use kubeha_tests::lab::{self, Lab, LabSpec, SerialGuard, Topology, kube};

use crate::support::{median, wait_until};

fn guard() -> Option<SerialGuard> {
    if let Some(why) = lab::skip_reason() {
        eprintln!("skipping lab test: {why}");
        return None;
    }
    Some(lab::serial().expect("lab lock"))
}

/// A Kubernetes lab with every agent stopped.
fn kube_lab(topology: Topology) -> Lab {
    let bin = lab::spec::default_bin_dir();
    for b in ["kubeha-agent", "fake-kubeadm", "fake-apiserver"] {
        assert!(
            bin.join(b).exists(),
            "{} is missing: cargo build -p kubeha-agent -p kubeha-ctl -p kubeha-tests --bins",
            bin.join(b).display()
        );
    }
    Lab::up(
        LabSpec::new(topology)
            .kubernetes(true)
            .timing(Profile::Fast)
            .without_agents(),
    )
    .expect("a Kubernetes lab")
}

/// A start order drawn from the clock's nanoseconds (printed, so that a
/// failure names the order it ran with).
fn random_order(lab: &Lab) -> Vec<String> {
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
        | 1;
    let mut order: Vec<String> = lab.nodes().iter().map(|n| n.name.clone()).collect();
    for i in (1..order.len()).rev() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        order.swap(i, (seed % (i as u64 + 1)) as usize);
    }
    eprintln!("start order: {order:?}");
    order
}

/// Start every agent in random order, 100 ms apart. Returns when the last
/// one was started.
fn start_all(lab: &Lab) -> Instant {
    for (k, name) in random_order(lab).iter().enumerate() {
        if k > 0 {
            std::thread::sleep(Duration::from_millis(100));
        }
        lab.node(name).unwrap().start().unwrap();
    }
    Instant::now()
}

/// What went on, for a failure message: the kube table, the call log, the
/// kube lines of every agent's log.
fn dump(lab: &Lab) -> String {
    let mut s = kube::kube_table(lab);
    for v in lab.kube_calls() {
        s += &format!(
            "call {} {} {} exit {}\n",
            lab.kube_call_node(&v).unwrap_or_default(),
            v["argv"][1],
            v["argv"][2],
            v["exit"]
        );
    }
    for n in lab.nodes() {
        let log = std::fs::read_to_string(lab.node(&n.name).unwrap().log()).unwrap_or_default();
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("kube") || l.contains("job") || l.contains("join"))
            .collect();
        s += &format!(
            "--- {}\n{}\n",
            n.name,
            lines[lines.len().saturating_sub(30)..].join("\n")
        );
    }
    s
}

/// `kube` each member should show once bootstrapped.
fn expected_kube(lab: &Lab, name: &str) -> &'static str {
    let n = lab.node(name).unwrap();
    let info = n.info();
    if info.is_control_plane() {
        "control-plane"
    } else if info.roles.contains(&kubeha_core::config::Role::Worker) {
        "worker"
    } else {
        "none"
    }
}

fn kube_names(lab: &Lab) -> Vec<String> {
    let mut v: Vec<String> = lab.kube_nodes().iter().map(|n| n.name.clone()).collect();
    v.sort();
    v
}

/// After [`Lab::wait_kube_joined`]: exactly one init, on a control plane;
/// every status agrees (init node, every member's `kube`); the CNI manifest
/// applied once, on the init node; etcd with 3 voting members; every
/// Kubernetes node in `GET /api/v1/nodes` through the VIP. Returns the init
/// node.
fn check_bootstrapped(lab: &Lab) -> String {
    let inits = lab.kube_inits();
    assert_eq!(inits.len(), 1, "exactly one kubeadm init:\n{}", dump(lab));
    let init_node = lab.kube_call_node(&inits[0]).expect("the init's node");
    assert!(
        lab.node(&init_node).unwrap().info().is_control_plane(),
        "{init_node}"
    );
    let n = lab.nodes().len();
    let mut last = String::new();
    let agreed = wait_until(Duration::from_secs(20), || {
        for (name, st) in lab.statuses() {
            let Ok(st) = st else {
                last = format!("{name}: no status");
                return false;
            };
            if st.members.len() != n {
                last = format!("{name} sees {} members", st.members.len());
                return false;
            }
            for m in &st.members {
                if m.kube != expected_kube(lab, &m.name) || !m.alive {
                    last = format!("{name} sees {} as {} (alive {})", m.name, m.kube, m.alive);
                    return false;
                }
            }
            let kube_node = expected_kube(lab, &name) != "none";
            let want_phase = if kube_node { "joined" } else { "disabled" };
            if st.kubernetes.phase != want_phase {
                last = format!("{name} is {}", st.kubernetes.phase);
                return false;
            }
            if kube_node && st.kubernetes.init_node.as_deref() != Some(init_node.as_str()) {
                last = format!("{name} names {:?} the init node", st.kubernetes.init_node);
                return false;
            }
        }
        true
    });
    assert!(
        agreed.is_some(),
        "statuses do not agree ({last}):\n{}",
        dump(lab)
    );
    // The CNI manifest: applied once, by the init node.
    for n in lab.kube_nodes() {
        let applied = std::fs::read_to_string(
            lab.node(&n.name)
                .unwrap()
                .paths()
                .dir
                .join("kubectl-applied"),
        )
        .unwrap_or_default();
        let want = usize::from(n.name == init_node);
        assert_eq!(applied.lines().count(), want, "CNI applies on {}", n.name);
    }
    let members = lab.etcd_members(&init_node).unwrap();
    assert_eq!(members.len(), 3, "{members:?}");
    assert!(members.iter().all(|(_, learner)| !learner), "{members:?}");
    let want = kube_names(lab);
    let mut seen = Err(std::io::Error::other("no request yet"));
    let listed = wait_until(Duration::from_secs(10), || {
        seen = lab.kube_api_nodes(Duration::from_secs(2));
        seen.as_ref().is_ok_and(|v| *v == want)
    });
    assert!(
        listed.is_some(),
        "GET /api/v1/nodes through the VIP: {seen:?}, want {want:?}"
    );
    init_node
}

/// Kill -9 the VIP holder's agent; the same request through the VIP must
/// be answered again (by another holder's HAProxy). Returns how long the
/// client waited.
fn check_failover(lab: &Lab) -> Duration {
    let holder = lab.wait_converged(Duration::from_secs(30)).unwrap();
    let want = kube_names(lab);
    assert_eq!(
        lab.kube_api_nodes(Duration::from_secs(2)).unwrap(),
        want,
        "before the failover"
    );
    let t0 = Instant::now();
    lab.node(&holder).unwrap().kill().unwrap();
    let mut seen = Err(std::io::Error::other("no request yet"));
    let back = wait_until(Duration::from_secs(20), || {
        seen = lab.kube_api_nodes(Duration::from_millis(500));
        seen.as_ref().is_ok_and(|v| *v == want)
    });
    assert!(
        back.is_some(),
        "no answer through the VIP after `{holder}` was killed: {seen:?}\n{}",
        dump(lab)
    );
    let took = t0.elapsed();
    let on = lab.vip_holders().unwrap();
    assert_eq!(on.len(), 1, "one holder after the failover: {on:?}");
    assert_ne!(on[0], holder, "the VIP moved off the killed agent's node");
    eprintln!(
        "failover: `{holder}` killed, `{}` holds the VIP, GET /api/v1/nodes answered again after {} ms",
        on[0],
        took.as_millis()
    );
    took
}

fn bootstrap_and_fail_over(topology: Topology) {
    let lab = kube_lab(topology);
    let last = start_all(&lab);
    let took = lab.wait_kube_joined(Duration::from_secs(150));
    assert!(took.is_ok(), "{took:?}\n{}", dump(&lab));
    eprintln!(
        "{}: every Kubernetes node joined {:.1} s after the last agent started",
        topology.as_str(),
        last.elapsed().as_secs_f64()
    );
    let init = check_bootstrapped(&lab);
    eprintln!("the init ran on {init}");
    check_failover(&lab);
    // Still exactly one init after all of it.
    assert_eq!(lab.kube_inits().len(), 1);
    // The lab's records hold every control plane's etcd and apiserver (by
    // pid and start time), so teardown kills them by pid.
    let daemons = recorded_daemons(&lab);
    let cps = lab.nodes().iter().filter(|n| n.is_control_plane()).count();
    assert_eq!(daemons.len(), 2 * cps, "{daemons:?}");
    assert!(daemons.iter().all(|(_, r)| r.alive()), "{daemons:?}");
    drop(lab);
    let left: Vec<_> = daemons.iter().filter(|(_, r)| r.alive()).collect();
    assert!(left.is_empty(), "left running after teardown: {left:?}");
}

/// The etcd and apiserver records in the lab's state file.
fn recorded_daemons(lab: &Lab) -> Vec<(String, lab::ProcRecord)> {
    lab.record_kube_daemons().unwrap();
    let st = lab::LabState::load(lab.dir()).unwrap();
    let mut out = Vec::new();
    for (node, procs) in &st.procs {
        for (label, rec) in &procs.extra {
            if label.starts_with("etcd") || label.starts_with("apiserver") {
                let cmd = std::fs::read(format!("/proc/{}/cmdline", rec.pid)).unwrap_or_default();
                let argv0 = String::from_utf8_lossy(cmd.split(|b| *b == 0).next().unwrap_or(&[]))
                    .into_owned();
                assert!(
                    argv0.ends_with("etcd") || argv0.ends_with("fake-apiserver"),
                    "{node} {label}: pid {} runs {argv0:?}",
                    rec.pid
                );
                out.push((format!("{node}/{label}"), *rec));
            }
        }
    }
    out
}

#[test]
fn guide_topology_bootstraps_itself_and_serves_through_the_vip_after_a_failover() {
    let Some(_g) = guard() else { return };
    bootstrap_and_fail_over(Topology::Guide);
}

#[test]
fn compact_topology_bootstraps_itself_and_serves_through_the_vip_after_a_failover() {
    let Some(_g) = guard() else { return };
    bootstrap_and_fail_over(Topology::Compact);
}

/// The lock holder is cut off the bridge while its `kubeadm init` runs (the
/// init slowed down by 3 s before fake-kubeadm starts, so the cut lands
/// inside it): the init finishes on the isolated node, nobody else inits
/// meanwhile (the lock stays with it), and after the heal every node joins:
/// still exactly one init, on that node.
#[test]
fn a_control_plane_cut_off_while_its_init_runs_still_means_one_init() {
    let Some(_g) = guard() else { return };
    let lab = kube_lab(Topology::Guide);
    std::fs::write(kube::slow_init_file(lab.dir()), "3").unwrap();
    start_all(&lab);
    let mut initializing = None;
    let found = wait_until(Duration::from_secs(60), || {
        initializing = lab.kube_nodes().iter().map(|n| n.name.clone()).find(|n| {
            lab.node(n)
                .unwrap()
                .status()
                .is_ok_and(|s| s.kubernetes.phase == "initializing")
        });
        initializing.is_some()
    });
    assert!(found.is_some(), "nobody initializes:\n{}", dump(&lab));
    let cut = initializing.unwrap();
    lab.node(&cut).unwrap().cut().unwrap();
    let cut_at = Instant::now();
    eprintln!("cut `{cut}` off while its init runs");
    assert!(
        lab.kube_inits().is_empty(),
        "the cut landed inside the init (it had not finished)"
    );
    // The init finishes on the isolated node (its etcd and apiserver are
    // local); meanwhile nobody else initializes.
    let finished = wait_until(Duration::from_secs(30), || {
        for n in lab.kube_nodes().iter().filter(|n| n.name != cut) {
            let st = lab.node(&n.name).unwrap().status().unwrap();
            assert_ne!(
                st.kubernetes.phase, "initializing",
                "{} initializes while `{cut}` holds the lock",
                n.name
            );
        }
        !lab.kube_inits().is_empty()
    });
    assert!(
        finished.is_some(),
        "the init did not finish:\n{}",
        dump(&lab)
    );
    // Stay cut a while after the init: the others see no init node's
    // apiserver and must neither init nor join.
    let until = cut_at + Duration::from_secs(6);
    while Instant::now() < until {
        for n in lab.kube_nodes().iter().filter(|n| n.name != cut) {
            let st = lab.node(&n.name).unwrap().status().unwrap();
            assert_ne!(st.kubernetes.phase, "initializing", "{}", n.name);
            assert_ne!(
                st.kubernetes.phase, "joined",
                "{} joined a cut-off cluster",
                n.name
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    std::fs::remove_file(kube::slow_init_file(lab.dir())).unwrap();
    lab.node(&cut).unwrap().heal().unwrap();
    eprintln!("healed `{cut}`");
    let took = lab.wait_kube_joined(Duration::from_secs(150));
    assert!(took.is_ok(), "{took:?}\n{}", dump(&lab));
    let init = check_bootstrapped(&lab);
    assert_eq!(init, cut, "the init ran on the node that held the lock");
}

/// Right after the init: another control plane is cut off the moment the
/// init appears in the call log (the others are about to fetch join
/// material and take the join slot), stays cut for 5 s, is healed: still
/// one init, and every node joins, the cut one too.
#[test]
fn a_control_plane_cut_off_right_after_the_init_joins_after_the_heal() {
    let Some(_g) = guard() else { return };
    let lab = kube_lab(Topology::Compact);
    start_all(&lab);
    let inited = wait_until(Duration::from_secs(60), || !lab.kube_inits().is_empty());
    assert!(inited.is_some(), "no init:\n{}", dump(&lab));
    let init = lab.kube_call_node(&lab.kube_inits()[0]).unwrap();
    let cut = lab
        .kube_nodes()
        .iter()
        .map(|n| n.name.clone())
        .find(|n| *n != init)
        .unwrap();
    lab.node(&cut).unwrap().cut().unwrap();
    eprintln!("`{init}` ran the init; cut `{cut}` off right after it");
    std::thread::sleep(Duration::from_secs(5));
    lab.node(&cut).unwrap().heal().unwrap();
    let took = lab.wait_kube_joined(Duration::from_secs(150));
    assert!(took.is_ok(), "{took:?}\n{}", dump(&lab));
    assert_eq!(check_bootstrapped(&lab), init);
}

/// The guide bootstrap (and its checks) again and again:
/// `cargo test -p kubeha-tests --test it kube_nslab::loop_guide_bootstrap -- --ignored --nocapture --test-threads 1`
/// (`KUBE_NSLAB_RUNS`, default 20). Prints how many passed; fails if any did not.
#[test]
#[ignore = "about 20 bootstraps: several minutes"]
fn loop_guide_bootstrap() {
    loop_bootstrap(Topology::Guide);
}

/// The same for the compact topology (3 × control plane + lb):
/// `cargo test -p kubeha-tests --test it kube_nslab::loop_compact_bootstrap -- --ignored --nocapture --test-threads 1`.
#[test]
#[ignore = "about 20 bootstraps: several minutes"]
fn loop_compact_bootstrap() {
    loop_bootstrap(Topology::Compact);
}

fn loop_bootstrap(topology: Topology) {
    let Some(_g) = guard() else { return };
    let runs: usize = std::env::var("KUBE_NSLAB_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let mut passed = 0;
    let mut failures = Vec::new();
    for i in 0..runs {
        let r = std::panic::catch_unwind(|| {
            let lab = kube_lab(topology);
            let last = start_all(&lab);
            let took = lab.wait_kube_joined(Duration::from_secs(150));
            assert!(took.is_ok(), "{took:?}\n{}", dump(&lab));
            let joined = last.elapsed();
            check_bootstrapped(&lab);
            joined
        });
        match r {
            Ok(d) => {
                passed += 1;
                eprintln!(
                    "run {}: ok, joined {:.1} s after the last start",
                    i + 1,
                    d.as_secs_f64()
                );
            }
            Err(e) => {
                let msg = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                eprintln!("run {}: FAILED: {msg}", i + 1);
                failures.push(i + 1);
            }
        }
    }
    eprintln!("{topology:?} bootstrap in the namespace lab: {passed} of {runs} runs passed");
    assert!(failures.is_empty(), "failed runs: {failures:?}");
}

/// The bootstrap in the namespace lab: guide topology (2 lb, 3 control
/// planes, 1 worker), `timing = "fast"`, agents started 100 ms apart in
/// random order; from the last agent start to every Kubernetes node's status
/// `joined`, median of `KUBE_NSLAB_RUNS` (default 10) runs (BENCHMARKS.md §5).
/// `cargo test -p kubeha-tests --test it kube_nslab::bench_bootstrap -- --ignored --nocapture --test-threads 1`
#[test]
#[ignore = "benchmark: about 10 bootstraps"]
fn bench_bootstrap() {
    let Some(_g) = guard() else { return };
    let runs: usize = std::env::var("KUBE_NSLAB_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let mut wall = Vec::new();
    let mut kubeadm = Vec::new();
    for i in 0..runs {
        let lab = kube_lab(Topology::Guide);
        let last = start_all(&lab);
        let r = lab.wait_kube_joined(Duration::from_secs(150));
        let took = last.elapsed().as_secs_f64();
        assert!(r.is_ok(), "{r:?}\n{}", dump(&lab));
        assert_eq!(lab.kube_inits().len(), 1);
        let k: f64 = lab
            .nodes()
            .iter()
            .filter(|n| n.is_control_plane())
            .map(|n| job_seconds(&lab, &n.name, &["run-init", "fetch-join-material", "join"]))
            .sum();
        eprintln!(
            "run {}: {took:.2} s wall, {k:.2} s in kubeadm jobs on the critical path",
            i + 1
        );
        wall.push(took);
        kubeadm.push(k);
    }
    let mut over: Vec<f64> = wall.iter().zip(&kubeadm).map(|(w, k)| w - k).collect();
    eprintln!(
        "bootstrap in the namespace lab, {} runs: wall median {:.2} s (min {:.2} s, max {:.2} s); \
         in kubeadm jobs median {:.2} s; wall minus kubeadm median {:.2} s",
        wall.len(),
        median(&mut wall.clone()),
        wall.iter().cloned().fold(f64::INFINITY, f64::min),
        wall.iter().cloned().fold(0.0, f64::max),
        median(&mut kubeadm),
        median(&mut over)
    );
}

/// Seconds node `node` spent in jobs of the given kinds (queued to
/// finished), from its agent log.
fn job_seconds(lab: &Lab, node: &str, kinds: &[&str]) -> f64 {
    let log = std::fs::read_to_string(lab.node(node).unwrap().log()).unwrap_or_default();
    crate::support::job_seconds(&log, kinds)
}
