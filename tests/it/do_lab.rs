//! Issue 13, lab mode: a guide-topology lab whose lb agents run the
//! `digitalocean` VIP provider against the lab's stand-in of the API
//! (`kubeha_tests::lab::cloud`). The stand-in decides which node the
//! Reserved IP (the lab's VIP) routes to; the client reaches HAProxy on that
//! node's anchor address through it, fake apiservers behind HAProxy.
//!
//! Needs root, `apt-get install -y haproxy nftables` and `cargo build
//! --workspace --bins`. `KUBEHA_TEST_KEEP=1` keeps the run directory.

use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use kubeha_tests::lab::cloud::{self, LeaseSampler, uncovered_assigns};
use kubeha_tests::lab::cloud_bench::{fake_apiserver_ca, lbs_serving, start_fake_apiservers};
use kubeha_tests::lab::{self, Lab, LabSpec, SerialGuard, Topology, VipProvider, wait_until};
use kubeha_tests::lab_haproxy::{TlsProber, kill_haproxy, wait_status};

fn guard() -> Option<SerialGuard> {
    crate::support::haproxy_lab_guard(&["kubeha-agent", "fake-apiserver"])
}

/// The node each `assign` request at the stand-in came from, with its time.
fn assign_calls(c: &cloud::Cloud) -> Vec<(Instant, String)> {
    c.standin()
        .assign_calls()
        .iter()
        .map(|a| {
            let node = a
                .droplet
                .and_then(|d| c.node_of(d))
                .unwrap_or("unknown droplet");
            (a.at, node.to_string())
        })
        .collect()
}

/// The first successful probe after the first failed one since `t`.
fn recovered(p: &TlsProber, t: Instant, timeout: Duration) -> (Instant, Instant) {
    let mut fail = None;
    assert!(
        wait_until(timeout, Duration::from_millis(5), || {
            fail = p.since(t).into_iter().find(|x| !x.ok()).map(|x| x.start);
            fail.is_some()
        }),
        "the client never failed after the crash: it did not depend on the crashed node"
    );
    let fail = fail.unwrap();
    let ok = p
        .wait_ok(fail, timeout)
        .expect("the client was not answered again through the Reserved IP");
    (fail, ok.end)
}

#[test]
fn do_lab_reserved_ip_follows_the_lease_holder() {
    let Some(_g) = guard() else { return };
    let keep = std::env::var_os("KUBEHA_TEST_KEEP").is_some();
    let lab = Lab::up(
        LabSpec::new(Topology::Guide)
            .vip_provider(VipProvider::Digitalocean)
            .keep_dir(keep),
    )
    .expect("lab up");
    if keep {
        eprintln!("lab run directory kept: {}", lab.dir().display());
    }
    let cloud = lab.cloud().expect("a digitalocean lab has its stand-in");
    let mode = std::fs::metadata(cloud.token_file()).unwrap().mode() & 0o777;
    assert_eq!(mode, 0o600, "the token file");
    let leases = LeaseSampler::start(&lab, Duration::from_millis(10)).unwrap();
    let _fakes = start_fake_apiservers(&lab).unwrap();
    let t_up = Instant::now();

    // Settled: lb-0 (priority 150) holds the lease, the stand-in has the
    // Reserved IP on lb-0's droplet and the client's route follows it
    // (`converged` checks the route against the agents' holder).
    let holder = lab.wait_settled(Duration::from_secs(60)).unwrap();
    assert_eq!(holder, "lb-0");
    assert!(
        wait_until(Duration::from_secs(10), Duration::from_millis(20), || {
            cloud.assigned_node().as_deref() == Some("lb-0")
                && cloud.routed_node().as_deref() == Some("lb-0")
        }),
        "the stand-in assigned the IP to {:?}, routed to {:?}",
        cloud.assigned_node(),
        cloud.routed_node()
    );
    assert!(
        lab.vip_holders().unwrap().is_empty(),
        "no kernel VIP in a cloud lab"
    );
    let lb0 = lab.node("lb-0").unwrap();
    let lb1 = lab.node("lb-1").unwrap();
    let st = wait_status(&lb0, Duration::from_secs(10), |s| {
        s.vip
            .as_ref()
            .and_then(|v| v.provider.as_ref())
            .is_some_and(|p| p.state == "assigned")
    })
    .unwrap();
    let p = st.vip.as_ref().unwrap().provider.as_ref().unwrap();
    assert_eq!(p.droplet_id, cloud.droplet_of("lb-0"));
    assert_eq!(p.assigned_to, cloud.droplet_of("lb-0"));
    // HAProxy binds the anchor address the metadata service gave it.
    for n in [&lb0, &lb1] {
        let anchor = cloud::anchor_addr(n.addr());
        let cfg = std::fs::read_to_string(n.paths().haproxy_cfg()).unwrap();
        assert!(
            cfg.contains(&format!("bind {anchor}:6443")),
            "{}'s HAProxy does not bind its anchor {anchor}:\n{cfg}",
            n.name()
        );
    }
    assert!(
        wait_until(Duration::from_secs(15), Duration::from_millis(50), || {
            lbs_serving(&lab)
        }),
        "HAProxy on both lb nodes with every backend up"
    );
    let prober = TlsProber::start(
        lab.client_ns(),
        lab.vip_target(),
        &fake_apiserver_ca(&lab),
        Duration::from_millis(10),
        Duration::from_millis(200),
    )
    .unwrap();
    assert!(
        prober
            .wait_ok(Instant::now(), Duration::from_secs(5))
            .is_some(),
        "the client is not answered through the Reserved IP"
    );

    // lb-0 crashes: its agent and its HAProxy, kill -9.
    let t0 = Instant::now();
    lb0.kill().unwrap();
    kill_haproxy(&lb0).unwrap();
    assert!(
        wait_until(Duration::from_secs(20), Duration::from_millis(10), || {
            cloud.routed_node().as_deref() == Some("lb-1")
        }),
        "the stand-in did not move the IP to lb-1: assigned {:?}, routed {:?}",
        cloud.assigned_node(),
        cloud.routed_node()
    );
    let routed = t0.elapsed();
    let (fail, back) = recovered(&prober, t0, Duration::from_secs(10));
    assert!(fail >= t0);
    let st = wait_status(&lb1, Duration::from_secs(5), |s| {
        s.vip.as_ref().is_some_and(|v| {
            v.held_here && v.provider.as_ref().is_some_and(|p| p.state == "assigned")
        })
    })
    .unwrap();
    assert_eq!(
        st.vip.unwrap().provider.unwrap().assigned_to,
        cloud.droplet_of("lb-1")
    );
    eprintln!(
        "lb-0 crashed: IP routed to lb-1 after {} ms, client answered again after {} ms",
        routed.as_millis(),
        (back - t0).as_millis()
    );

    // lb-0 comes back and takes the lease back (a handover while lb-1's
    // agent runs: lb-1 lets go, lb-0 assigns).
    lb0.start().unwrap();
    let t1 = Instant::now();
    assert!(
        wait_until(Duration::from_secs(30), Duration::from_millis(10), || {
            cloud.routed_node().as_deref() == Some("lb-0")
        }),
        "the IP did not come back to lb-0: assigned {:?}",
        cloud.assigned_node()
    );
    assert!(
        prober
            .wait_ok(Instant::now(), Duration::from_secs(10))
            .is_some(),
        "the client is not answered after the move back"
    );

    // The stand-in's record against the lease holders as sampled: every
    // assign request came from a node that, at the status sample right
    // before or right after it, said it held the lease (none fell between
    // two samples saying "not holding", i.e. after the node's lease ended).
    let calls = assign_calls(&cloud);
    let samples = leases.samples();
    assert!(
        samples.iter().filter(|s| s.sent >= t_up).count() > 100,
        "the lease sampler stalled"
    );
    let from = |node: &str, a: Instant, b: Instant| {
        calls
            .iter()
            .filter(|(t, n)| n == node && *t >= a && *t <= b)
            .count()
    };
    assert!(from("lb-1", t0, t1) >= 1, "lb-1 assigned after the crash");
    assert_eq!(from("lb-0", t0, t1), 0, "a dead lb-0 called the API");
    assert!(
        from("lb-0", t1, Instant::now()) >= 1,
        "lb-0 assigned after its restart"
    );
    let bad = uncovered_assigns(&calls, &samples);
    assert!(
        bad.is_empty(),
        "assign requests outside their node's lease: {bad:?}\ncalls {calls:?}"
    );
    // Completed assignments: the IP ended on lb-0, was on lb-1 in between.
    let hist: Vec<String> = cloud
        .standin()
        .history()
        .iter()
        .filter_map(|d| cloud.node_of(*d).map(str::to_string))
        .collect();
    assert!(
        hist.ends_with(&["lb-0".into(), "lb-1".into(), "lb-0".into()]),
        "history {hist:?}"
    );
    assert_eq!(cloud.assigned_node().as_deref(), Some("lb-0"));
}

/// A holder frozen (SIGSTOP, as a stopped VM) while its `assign` action is
/// in progress: its lease runs out, lb-1 takes the lease and, once the
/// frozen node's action has completed, the IP. Thawed, lb-0 must not assign
/// again before it holds the lease again (it preempts back legitimately
/// `preempt_after` later): no `assign` request from lb-0 and no route to it
/// between the thaw and its first status sample saying it holds.
#[test]
#[ignore = "1 of its last 4 runs failed the sampled assign check, cause not found yet (docs/testing.md); run it with --ignored"]
fn do_lab_a_holder_frozen_mid_assignment_makes_no_assign_after_its_lease() {
    let Some(_g) = guard() else { return };
    let lab = Lab::up(LabSpec::new(Topology::Guide).vip_provider(VipProvider::Digitalocean))
        .expect("lab up");
    let cloud = lab.cloud().expect("a digitalocean lab has its stand-in");
    let leases = LeaseSampler::start(&lab, Duration::from_millis(10)).unwrap();
    let _fakes = start_fake_apiservers(&lab).unwrap();
    assert_eq!(lab.wait_settled(Duration::from_secs(60)).unwrap(), "lb-0");
    assert!(
        wait_until(Duration::from_secs(15), Duration::from_millis(50), || {
            lbs_serving(&lab) && cloud.routed_node().as_deref() == Some("lb-0")
        }),
        "lb-0 routed and both HAProxies serving"
    );
    let lb0 = lab.node("lb-0").unwrap();
    let s = cloud.standin();
    let latency = Duration::from_secs(4);
    s.set_action_latency(latency);

    // lb-0 hands over (drain) and waits until lb-1 has the IP ...
    lb0.drain().unwrap();
    assert!(
        wait_until(Duration::from_secs(20), Duration::from_millis(10), || {
            cloud.routed_node().as_deref() == Some("lb-1")
        }),
        "the drain did not move the IP to lb-1"
    );
    // ... then comes back and preempts: freeze it as soon as its action runs.
    let lb0_id = cloud.droplet_of("lb-0");
    let before = s.assign_action_log().len();
    let t_undrain = Instant::now();
    lb0.undrain().unwrap();
    // Frozen once its action runs and a lease sample has seen it hold (so
    // the sampled check below has a sample of the hold its assign came in).
    assert!(
        wait_until(Duration::from_secs(20), Duration::from_millis(2), || {
            s.assign_action_log()
                .iter()
                .skip(before)
                .any(|a| a.droplet == lb0_id && a.status == "in-progress")
                && leases.first_held("lb-0", t_undrain).is_some()
        }),
        "lb-0 did not start an assign action after the undrain: {:?}",
        s.assign_action_log()
    );
    assert!(
        s.assign_action_log()
            .iter()
            .skip(before)
            .any(|a| a.droplet == lb0_id && a.status == "in-progress"),
        "lb-0's action completed before the freeze"
    );
    let frozen = lb0.freeze(lab::Freeze::Agent).unwrap();
    let t_frozen = Instant::now();
    // lb-0's action completes (the IP briefly on the frozen node), then lb-1
    // (which found the IP on itself but `locked`, and looked again) gets it.
    assert!(
        wait_until(
            latency + Duration::from_secs(15),
            Duration::from_millis(10),
            || {
                cloud
                    .routes()
                    .iter()
                    .any(|r| r.at >= t_frozen && r.node.as_deref() == Some("lb-1"))
            }
        ),
        "lb-1 did not get the IP while lb-0 was frozen: routes {:?}",
        cloud.routes()
    );
    let busy = s
        .assign_calls()
        .iter()
        .filter(|c| c.at >= t_frozen && c.droplet == cloud.droplet_of("lb-1") && c.status == 422)
        .count();
    eprintln!("lb-1's assign was refused (422) {busy} time(s) while lb-0's action ran");
    s.set_action_latency(Duration::ZERO);
    frozen.thaw();
    let t_thaw = Instant::now();

    // lb-0 holds again (a legitimate preemption) ...
    assert!(
        wait_until(Duration::from_secs(30), Duration::from_millis(10), || {
            leases.first_held("lb-0", t_thaw).is_some()
                && cloud.routed_node().as_deref() == Some("lb-0")
        }),
        "lb-0 did not take the IP back after the thaw"
    );
    let held_again = leases.first_held("lb-0", t_thaw).unwrap().sent;
    // It gained the lease after its last sample saying "not holding" was
    // sent (the sample read the state between `sent` and `done`).
    let gained_after = leases
        .samples()
        .into_iter()
        .filter(|x| {
            x.node == "lb-0"
                && x.held_here == Some(false)
                && x.sent >= t_thaw
                && x.sent < held_again
        })
        .map(|x| x.sent)
        .max()
        .expect("a sample of lb-0 saying it does not hold, after the thaw");
    // ... and made no assign request, nor got the IP, before that.
    let calls = assign_calls(&cloud);
    let early: Vec<_> = calls
        .iter()
        .filter(|(t, n)| n == "lb-0" && *t >= t_thaw && *t < gained_after)
        .map(|(t, _)| (*t - t_thaw).as_millis())
        .collect();
    assert!(
        early.is_empty(),
        "lb-0 asked for the IP {early:?} ms after the thaw, while it did not hold the lease (last seen not holding {} ms, holding {} ms after the thaw)",
        (gained_after - t_thaw).as_millis(),
        (held_again - t_thaw).as_millis()
    );
    let routed_early: Vec<_> = cloud
        .routes()
        .into_iter()
        .filter(|r| r.at >= t_thaw && r.at < gained_after && r.node.as_deref() == Some("lb-0"))
        .collect();
    assert!(routed_early.is_empty(), "{routed_early:?}");
    let bad: Vec<_> = uncovered_assigns(&calls, &leases.samples())
        .into_iter()
        .map(|(t, n, why)| {
            let rel = |x: Instant| t.checked_duration_since(x).map(|d| d.as_millis() as i128);
            format!(
                "{n}: {why}; {:?} ms after the freeze, {:?} ms after the thaw",
                rel(t_frozen),
                rel(t_thaw)
            )
        })
        .collect();
    assert!(
        bad.is_empty(),
        "assign requests outside their node's lease: {bad:?}"
    );
    eprintln!(
        "thawed lb-0 seen not holding until {} ms and holding {} ms after the thaw, no assign before it held",
        (gained_after - t_thaw).as_millis(),
        (held_again - t_thaw).as_millis()
    );
}
