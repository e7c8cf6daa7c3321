//! Issue 4: the VIP in the namespace lab, with real agents, netlink and ARP.
//! A client probes VIP:6443 every 10 ms (each node runs a responder that
//! answers with its name) and a sampler checks every node's interface for
//! the VIP every 10 ms: it must never find two holders.

use std::time::{Duration, Instant};

use kubeha_core::timing::{Profile, Timing};
use kubeha_tests::lab::{
    self, Freeze, Lab, LabSpec, Prober, Sampler, SerialGuard, Topology, wait_until,
};

fn guard() -> Option<SerialGuard> {
    if let Some(why) = lab::skip_reason() {
        eprintln!("skipping lab test: {why}");
        return None;
    }
    let bin = lab::spec::default_bin_dir().join("kubeha-agent");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --workspace --bins` first",
        bin.display()
    );
    Some(lab::serial().expect("lab lock"))
}

/// A 3-node VIP-only lab (what a keepalived user runs), converged, with
/// responders, a prober and a sampler running.
fn vip_lab(profile: Profile) -> (Lab, Prober, Sampler, String) {
    // KUBEHA_TEST_KEEP=1 keeps the run directory (configs, agent logs) for a post-mortem.
    let keep = std::env::var_os("KUBEHA_TEST_KEEP").is_some();
    let lab = Lab::up(LabSpec::new(Topology::Vip).timing(profile).keep_dir(keep)).expect("lab up");
    if keep {
        eprintln!("lab run directory kept: {}", lab.dir().display());
    }
    lab.start_responders().expect("responders");
    let holder = lab
        .wait_settled(Duration::from_secs(30))
        .expect("converged");
    let prober = Prober::start(&lab).expect("prober");
    let sampler = Sampler::start(&lab).expect("sampler");
    let p = &prober;
    let h = holder.clone();
    assert!(
        p.wait_ok_where(Instant::now(), Duration::from_secs(5), |n| n == h)
            .is_some(),
        "the client does not reach the holder `{holder}`"
    );
    (lab, prober, sampler, holder)
}

/// Never two interfaces with the VIP in any 10 ms sample since `t`.
fn assert_single_holder(sampler: &Sampler, t: Instant, what: &str) {
    let samples = sampler.since(t);
    assert!(
        samples.len() > 10,
        "the sampler stalled ({} samples) during {what}",
        samples.len()
    );
    let worst = samples.iter().max_by_key(|s| s.count()).unwrap();
    assert!(
        worst.count() <= 1,
        "two holders during {what}: {:?} at {:?} after the start",
        sampler.holder_names(worst.holders),
        worst.t - t
    );
}

/// The holder the running agents (all but `dead`) agree on, once only its
/// interface has the VIP.
fn converged_without(lab: &Lab, dead: &str, timeout: Duration) -> String {
    let mut last = String::new();
    let mut holder = None;
    let ok = wait_until(timeout, Duration::from_millis(20), || {
        let mut seen = None;
        for (name, st) in lab.statuses() {
            if name == dead {
                continue;
            }
            let Ok(st) = st else {
                last = format!("`{name}` does not answer");
                return false;
            };
            let h = st.vip.and_then(|v| v.holder);
            if h.is_none() || (seen.is_some() && seen != h) {
                last = format!("`{name}` says {h:?}, others {seen:?}");
                return false;
            }
            seen = h;
        }
        let on = holders_now(lab);
        if on.len() == 1 && seen.as_ref() == Some(&on[0]) {
            holder = seen;
            true
        } else {
            last = format!("agents say {seen:?}, interfaces {on:?}");
            false
        }
    });
    assert!(ok, "no agreed holder without `{dead}`: {last}");
    holder.unwrap()
}

fn holders_now(lab: &Lab) -> Vec<String> {
    lab.vip_holders().expect("vip holders")
}

#[test]
fn holder_crash_and_cut_move_the_vip_with_never_two_holders() {
    let Some(_g) = guard() else { return };
    let (lab, prober, sampler, first) = vip_lab(Profile::Default);
    let t_all = Instant::now();

    // kill -9 of the holder's agent: the VIP moves, and the dead agent's
    // guardian took it off its interface, so its kernel answers no ARP.
    let t0 = Instant::now();
    lab.node(&first).unwrap().kill().unwrap();
    let p = prober
        .wait_ok_where(t0, Duration::from_secs(5), |n| n != first)
        .expect("the client never reached another node after the crash");
    eprintln!(
        "crash: client reached `{}` after {:?}",
        p.outcome.node().unwrap(),
        p.end - t0
    );
    // The dead agent's guardian released its lease at once (a handover),
    // instead of the voters waiting for the grants to run out (at least
    // `L - renew_every` = 600 ms).
    let fast = Timing::DEFAULT.lease - Timing::DEFAULT.renew_every;
    assert!(
        p.end - t0 < fast,
        "kill -9 failover took {:?}: the guardian's release did not free the lease",
        p.end - t0
    );
    assert!(
        wait_until(Duration::from_secs(1), Duration::from_millis(10), || !lab
            .node(&first)
            .unwrap()
            .has_vip()
            .unwrap()),
        "the VIP stayed on the crashed agent's node"
    );
    let second = converged_without(&lab, &first, Duration::from_secs(10));
    lab.node(&first).unwrap().start().unwrap();
    let holder = lab.wait_converged(Duration::from_secs(30)).unwrap();

    // Link cut with carrier up (a partition): the cut-off holder drops the VIP
    // on its own when its lease ends, and the majority side takes over.
    let t1 = Instant::now();
    lab.node(&holder).unwrap().cut().unwrap();
    let cut_node = lab.node(&holder).unwrap();
    let dropped = wait_until(Duration::from_secs(3), Duration::from_millis(2), || {
        !cut_node.has_vip().unwrap()
    });
    let drop_after = t1.elapsed();
    assert!(dropped, "the cut-off holder `{holder}` kept the VIP");
    // It lets go when its own view of the lease ends (Timing::holder_lease
    // after its last renewal), before any voter could grant another node.
    let bound = Timing::DEFAULT.holder_lease() + Duration::from_millis(200);
    assert!(
        drop_after <= bound,
        "the cut-off holder dropped the VIP after {drop_after:?} (> {bound:?})"
    );
    let p = prober
        .wait_ok_where(t1, Duration::from_secs(5), |n| n != holder)
        .expect("the client never reached another node after the cut");
    eprintln!(
        "cut: `{holder}` dropped the VIP after {drop_after:?}; client reached `{}` after {:?}",
        p.outcome.node().unwrap(),
        p.end - t1
    );
    lab.node(&holder).unwrap().heal().unwrap();
    lab.wait_converged(Duration::from_secs(30)).unwrap();
    assert_single_holder(&sampler, t_all, "crash, restart, cut and heal");
    eprintln!(
        "holders: {first} -> {second} -> {holder} -> {:?}",
        holders_now(&lab)
    );
}

#[test]
fn drain_and_stop_hand_over_without_a_gap() {
    let Some(_g) = guard() else { return };
    let (lab, prober, sampler, first) = vip_lab(Profile::Default);
    let t_all = Instant::now();
    // The target for a planned handover (DESIGN.md L2) is 100 ms without a
    // working VIP; benchmarks hold the exact figure, this test holds a loose
    // multiple so a noisy machine does not fail it.
    let limit = Duration::from_millis(300);

    let t0 = Instant::now();
    lab.node(&first).unwrap().drain().unwrap();
    let p = prober
        .wait_ok_where(t0, Duration::from_secs(3), |n| n != first)
        .expect("no handover after drain");
    std::thread::sleep(Duration::from_millis(100));
    let gap = lab::prober::max_ok_gap(
        &prober.since(t0 - Duration::from_millis(100)),
        t0 - Duration::from_millis(50),
        p.end,
    );
    eprintln!(
        "drain: `{}` answers after {:?}, longest gap {gap:?}",
        p.outcome.node().unwrap(),
        p.end - t0
    );
    assert!(gap <= limit, "drain left the VIP unanswered for {gap:?}");
    let st = lab.node(&first).unwrap().status().unwrap();
    assert!(st.drained && !st.vip.as_ref().unwrap().candidate, "{st:?}");
    // Drained, it does not take the VIP back.
    lab.node(&first).unwrap().undrain().unwrap();
    let holder = lab.wait_converged(Duration::from_secs(30)).unwrap();

    // SIGTERM of the holder: the same planned handover.
    let t1 = Instant::now();
    lab.node(&holder).unwrap().stop().unwrap();
    let p = prober
        .wait_ok_where(t1, Duration::from_secs(3), |n| n != holder)
        .expect("no handover after stop");
    let gap = lab::prober::max_ok_gap(
        &prober.since(t1 - Duration::from_millis(100)),
        t1 - Duration::from_millis(50),
        p.end,
    );
    eprintln!(
        "stop: `{}` answers after {:?}, longest gap {gap:?}",
        p.outcome.node().unwrap(),
        p.end - t1
    );
    assert!(
        gap <= limit,
        "a clean stop left the VIP unanswered for {gap:?}"
    );
    assert!(!lab.node(&holder).unwrap().has_vip().unwrap());
    assert_single_holder(&sampler, t_all, "drain and stop");
}

#[test]
fn minority_never_holds_and_the_client_follows_after_heal() {
    let Some(_g) = guard() else { return };
    let (lab, prober, sampler, holder) = vip_lab(Profile::Default);
    let t_all = Instant::now();
    let others: Vec<String> = lab
        .nodes()
        .iter()
        .map(|n| n.name.clone())
        .filter(|n| *n != holder)
        .collect();

    // A standby cut off alone: it must never put the VIP up during 5 s.
    let lone = &others[0];
    lab.node(lone).unwrap().cut().unwrap();
    let t_cut = Instant::now();
    while t_cut.elapsed() < Duration::from_secs(5) {
        assert!(
            !lab.node(lone).unwrap().has_vip().unwrap(),
            "the cut-off standby `{lone}` took the VIP"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(prober.last_answer().as_deref(), Some(holder.as_str()));
    lab.node(lone).unwrap().heal().unwrap();
    lab.wait_converged(Duration::from_secs(30)).unwrap();

    // The holder cut off for 5 s: minority, so after its lease it no longer
    // holds, and it stays without the VIP until the partition heals.
    lab.node(&holder).unwrap().cut().unwrap();
    let t_cut = Instant::now();
    let timing = Timing::DEFAULT;
    std::thread::sleep(timing.lease);
    while t_cut.elapsed() < Duration::from_secs(5) {
        assert!(
            !lab.node(&holder).unwrap().has_vip().unwrap(),
            "the minority holder `{holder}` kept the VIP"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let t_heal = Instant::now();
    lab.node(&holder).unwrap().heal().unwrap();
    let now_holder = lab.wait_converged(Duration::from_secs(30)).unwrap();
    // Exactly one holder, the client reaches it within 1 s of the heal, and
    // its ARP entry for the VIP points at that node.
    let nh = now_holder.clone();
    let p = prober
        .wait_ok_where(t_heal, Duration::from_secs(1), |n| n == nh)
        .unwrap_or_else(|| {
            panic!("the client did not reach `{now_holder}` within 1 s of the heal")
        });
    assert!(p.end - t_heal <= Duration::from_secs(1));
    assert!(
        wait_until(Duration::from_secs(1), Duration::from_millis(20), || prober
            .stable_on(&now_holder, Duration::from_millis(200))),
        "the client does not stay on `{now_holder}` after the heal"
    );
    let neigh = lab.client_neigh().unwrap();
    assert_eq!(
        neigh.node.as_deref(),
        Some(now_holder.as_str()),
        "client ARP entry: {neigh:?}"
    );
    assert_eq!(holders_now(&lab), std::slice::from_ref(&now_holder));
    assert_single_holder(&sampler, t_all, "two partitions");
}

#[test]
fn a_killed_agent_s_node_answers_no_fresh_arp_lookup() {
    let Some(_g) = guard() else { return };
    let (lab, prober, _sampler, first) = vip_lab(Profile::Fast);
    // Its responder keeps running: if its kernel still answered ARP for the
    // VIP, a fresh lookup could land the client there.
    lab.node(&first).unwrap().kill().unwrap();
    let t0 = Instant::now();
    prober
        .wait_ok_where(t0, Duration::from_secs(3), |n| n != first)
        .expect("no failover");
    let new = converged_without(&lab, &first, Duration::from_secs(10));
    for round in 0..5 {
        lab.client_neigh_flush().unwrap();
        let t = Instant::now();
        let p = prober
            .wait_ok_where(t, Duration::from_secs(2), |_| true)
            .unwrap_or_else(|| {
                panic!("no answer after flushing the client's ARP entry (round {round})")
            });
        assert_eq!(
            p.outcome.node(),
            Some(new.as_str()),
            "round {round}: the killed agent's node answered"
        );
        let neigh = lab.client_neigh().unwrap();
        assert_eq!(
            neigh.node.as_deref(),
            Some(new.as_str()),
            "round {round}: {neigh:?}"
        );
    }
}

/// How long the kernel may take to delete an address whose lifetime ran out,
/// after the lifetime: its address worker batches expiries to whole seconds
/// (at most 250 ms late, ADDRCONF_TIMER_FUZZ) plus workqueue latency; measured
/// ~30 ms here (vip/tests/it/lifetime.rs).
const KERNEL_EXPIRY_LATE: Duration = Duration::from_millis(400);

/// The bound docs/PROTOCOL.md gives for a holder whose every kubeha process
/// is frozen or dead: its VIP is gone at most this long after the freeze
/// (its last lifetime renewal came before it).
fn kernel_bound(t: &Timing) -> Duration {
    Duration::from_secs(kubeha_agent::guard::kernel_lifetime(t).into()) + KERNEL_EXPIRY_LATE
}

/// S1 with a frozen agent (SIGSTOP of its pid alone, as VM steal, a swap
/// storm or a hung fsync freeze it): its guardian removes the VIP at the
/// lease deadline, another node takes over, and when the agent thaws it does
/// not put the address back. Not one 10 ms sample with two holders.
#[test]
fn a_frozen_agent_never_leaves_two_holders() {
    let Some(_g) = guard() else { return };
    let (lab, prober, sampler, mut holder) = vip_lab(Profile::Default);
    for secs in [1, 3, 10] {
        let t0 = Instant::now();
        let frozen = lab.node(&holder).unwrap().freeze(Freeze::Agent).unwrap();
        // The guardian fences it at the holder's own lease deadline.
        let node = lab.node(&holder).unwrap();
        assert!(
            wait_until(Duration::from_secs(2), Duration::from_millis(5), || !node
                .has_vip()
                .unwrap()),
            "{secs} s freeze: the VIP stayed on the frozen agent's node"
        );
        let fenced = t0.elapsed();
        if secs > 1 {
            let h = holder.clone();
            let p = prober
                .wait_ok_where(t0, Duration::from_secs(5), |n| n != h)
                .expect("the client never reached another node");
            eprintln!(
                "{secs} s freeze of `{holder}`: fenced after {fenced:?}, client on `{}` after {:?}",
                p.outcome.node().unwrap(),
                p.end - t0
            );
        }
        std::thread::sleep(Duration::from_secs(secs).saturating_sub(t0.elapsed()));
        frozen.thaw();
        holder = lab.wait_converged(Duration::from_secs(30)).unwrap();
        assert_single_holder(
            &sampler,
            t0,
            &format!("a {secs} s freeze of the holder's agent"),
        );
        assert_eq!(
            sampler.event_overlap(t0, Instant::now(), 0),
            Duration::ZERO,
            "{secs} s freeze: netlink notifications show two holders"
        );
    }
}

/// The agent and its guardian frozen together (a cgroup freeze): only the
/// kernel acts. The VIP's finite lifetime removes it within `kernel_bound`
/// of the freeze; two holders overlap at most from the successor's takeover
/// (a lease after the last renewal) to that instant. The same with both
/// killed: the address does not linger on the dead node.
#[test]
fn a_frozen_or_dead_agent_and_guardian_lose_the_vip_by_its_kernel_lifetime() {
    let Some(_g) = guard() else { return };
    let (lab, _prober, sampler, holder) = vip_lab(Profile::Default);
    let t = Timing::DEFAULT;
    let bound = kernel_bound(&t);
    // Earliest takeover: the voters' grants run out a lease after the last
    // renewal they received, at least `L - renew_every` after the freeze.
    let overlap_bound = bound.saturating_sub(t.lease - t.renew_every);

    let t0 = Instant::now();
    let frozen = lab
        .node(&holder)
        .unwrap()
        .freeze(Freeze::AgentAndGuardian)
        .unwrap();
    let node = lab.node(&holder).unwrap();
    assert!(
        wait_until(
            bound + Duration::from_secs(1),
            Duration::from_millis(5),
            || { !node.has_vip().unwrap() }
        ),
        "the VIP stayed on the frozen node"
    );
    let gone = t0.elapsed();
    let t1 = Instant::now();
    let overlap = sampler.event_overlap(t0, t1, 0);
    let multi = sampler.summary(t0, t1);
    eprintln!(
        "agent+guardian frozen: VIP gone after {gone:?} (bound {bound:?}); two holders for {overlap:?} \
         (notifications; {} of {} samples; bound {overlap_bound:?})",
        multi.multi_samples, multi.samples
    );
    assert!(
        gone <= bound,
        "the kernel removed the VIP after {gone:?} (> {bound:?})"
    );
    assert!(
        overlap <= overlap_bound,
        "two holders for {overlap:?} (> {overlap_bound:?})"
    );
    std::thread::sleep(Duration::from_secs(3).saturating_sub(t0.elapsed()));
    frozen.thaw();
    let holder = lab.wait_converged(Duration::from_secs(30)).unwrap();
    // Thawed, neither process puts the VIP back without a lease.
    assert_single_holder(&sampler, t1, "the thaw after an agent+guardian freeze");

    // kill -9 of both (the whole process group): nothing of kubeha is left
    // to remove the address; the kernel does.
    let t2 = Instant::now();
    assert!(lab.node(&holder).unwrap().kill_agent_group_nowait());
    let node = lab.node(&holder).unwrap();
    assert!(
        wait_until(
            bound + Duration::from_secs(1),
            Duration::from_millis(5),
            || { !node.has_vip().unwrap() }
        ),
        "the VIP stayed on the node whose agent and guardian were killed"
    );
    let gone = t2.elapsed();
    let overlap = sampler.event_overlap(t2, Instant::now(), 0);
    eprintln!("agent+guardian killed: VIP gone after {gone:?}; two holders for {overlap:?}");
    assert!(
        gone <= bound,
        "the kernel removed the VIP after {gone:?} (> {bound:?})"
    );
    assert!(
        overlap <= overlap_bound,
        "two holders for {overlap:?} (> {overlap_bound:?})"
    );
}

/// EMFILE: a process with no descriptor left still removes the VIP (the
/// `arp` provider keeps its removal connection from the first use), and a
/// flood of `/metrics` connections cannot use up the descriptors (see
/// `kubeha-agent`'s metrics tests for that bound).
#[test]
fn the_vip_comes_off_with_no_descriptor_left() {
    use kubeha_vip::{Announce, ArpVip, VipProvider};
    let Some(_g) = guard() else { return };
    let lab = Lab::up(LabSpec::new(Topology::Vip).without_agents()).expect("lab up");
    let node = lab.node("n1").unwrap();
    let ns = node.ns().to_string();
    let (held, released) = lab::netns::run_in(&ns, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let vip = ArpVip::new(
                "eth0",
                "198.18.0.10".parse().unwrap(),
                None,
                // One round: no background sender whose socket a release
                // would free first.
                Announce {
                    count: 1,
                    ..Announce::default()
                },
            )
            .unwrap();
            vip.acquire().await.expect("acquire");
            let held = vip.is_held().await.unwrap();
            // Use up every descriptor, under a lowered soft limit so this
            // stays small.
            let mut lim = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: plain syscalls on a local struct.
            assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
            let open = std::fs::read_dir("/proc/self/fd").unwrap().count() as u64;
            let low = libc::rlimit {
                rlim_cur: (open + 64).min(lim.rlim_cur),
                rlim_max: lim.rlim_max,
            };
            assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &low) }, 0);
            let mut hog = Vec::new();
            let exhausted = loop {
                match std::fs::File::open("/dev/null") {
                    Ok(f) => hog.push(f),
                    Err(e) => break e.raw_os_error() == Some(libc::EMFILE),
                }
            };
            let released = vip.release().await;
            drop(hog);
            assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);
            assert!(exhausted, "the descriptors were not used up");
            (held, released.map_err(|e| e.to_string()))
        })
    })
    .unwrap();
    assert!(held, "acquire did not put the VIP up");
    released.expect("release with no descriptor left");
    assert!(!node.has_vip().unwrap(), "the VIP is still on n1");
}

/// The soft `RLIMIT_NOFILE` of this process (children inherit it).
fn set_soft_nofile(soft: Option<u64>) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a local struct.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    let old = lim.rlim_cur;
    if let Some(s) = soft {
        lim.rlim_cur = s.min(lim.rlim_max);
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);
    }
    old
}

/// Issue 10: a flood of `/metrics` connections on the holder (agents
/// started with only 512 descriptors) does not take the agent's
/// descriptors: its API still answers, a drain still hands the VIP over,
/// and the agent counts the connections it turned away.
#[test]
fn a_metrics_flood_leaves_the_agent_answering_and_the_vip_moving() {
    use std::net::{SocketAddr, TcpStream};
    let Some(_g) = guard() else { return };
    const AGENT_NOFILE: u64 = 512;
    const FLOOD: usize = 2000;
    let before = set_soft_nofile(Some(AGENT_NOFILE));
    let lab = Lab::up(LabSpec::new(Topology::Vip).timing(Profile::Default));
    set_soft_nofile(Some(before));
    let lab = lab.expect("lab up");
    lab.start_responders().expect("responders");
    let holder = lab
        .wait_settled(Duration::from_secs(30))
        .expect("converged");
    let prober = Prober::start(&lab).expect("prober");
    let sampler = Sampler::start(&lab).expect("sampler");
    let t_all = Instant::now();
    let node = lab.node(&holder).unwrap();
    let ns = node.ns().to_string();
    let pid = node.agent_pid().expect("agent pid");
    let fds = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count()
    };
    let fds_before = fds();
    let flood = lab::netns::run_in(&ns, || {
        let addr: SocketAddr = "127.0.0.1:9946".parse().unwrap();
        (0..FLOOD)
            .map(|_| TcpStream::connect_timeout(&addr, Duration::from_secs(2)))
            .collect::<Vec<_>>()
    })
    .unwrap();
    let connected = flood.iter().filter(|c| c.is_ok()).count();
    assert!(
        connected > AGENT_NOFILE as usize,
        "only {connected} flood connections: the test shows nothing"
    );
    // The agent answers while the flood is held, holding few descriptors.
    let st = node.status().expect("status during the flood");
    let fds_flooded = fds();
    eprintln!(
        "agent descriptors: {fds_before} before, {fds_flooded} with {connected} connections to /metrics"
    );
    assert!(
        fds_flooded <= fds_before + kubeha_agent::metrics::MAX_CONNECTIONS + 8,
        "the agent holds {fds_flooded} descriptors (before: {fds_before})"
    );
    assert_eq!(
        st.vip.as_ref().and_then(|v| v.holder.as_deref()),
        Some(holder.as_str())
    );
    let t0 = Instant::now();
    node.drain().expect("drain during the flood");
    assert!(
        prober
            .wait_ok_where(t0, Duration::from_secs(5), |n| n != holder)
            .is_some(),
        "the VIP did not move off the flooded holder"
    );
    assert!(
        wait_until(Duration::from_secs(5), Duration::from_millis(20), || !node
            .has_vip()
            .unwrap()),
        "the flooded holder kept the VIP"
    );
    // Turned away, not held: once the admitted few time out, scrapes work
    // again, and they count the rest.
    let mut rejected = 0;
    assert!(
        wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
            rejected = kubeha_tests::lab_haproxy::metrics(&node)
                .map(|t| {
                    kubeha_tests::lab_haproxy::metric_value(
                        &t,
                        "kubeha_metrics_connections_rejected_total",
                        "",
                    )
                })
                .unwrap_or(0);
            rejected > 0
        }),
        "no scrape answered after the flood"
    );
    // Most were turned away (a few slots free up while a slow flood runs).
    assert!(
        rejected as usize > connected / 2,
        "rejected {rejected} of {connected}"
    );
    drop(flood);
    assert!(node.status().is_ok());
    assert_single_holder(&sampler, t_all, "the metrics flood");
}
