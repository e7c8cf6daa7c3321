//! The lab itself: cleanup on every kind of exit, the responder, prober and
//! sampler against a VIP moved by hand, keepalived through the bench harness.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kubeha_tests::lab::bench::{self, Fault, System};
use kubeha_tests::lab::{
    self, Lab, LabSpec, LabState, Prober, Sampler, SerialGuard, Topology, netns, wait_until,
};

const CHILD_ENV: &str = "KUBEHA_LAB_TEST_CHILD_ID_FILE";

/// The lab lock, or `None` (with a message) when labs cannot run here.
fn guard() -> Option<SerialGuard> {
    if let Some(why) = lab::skip_reason() {
        eprintln!("skipping lab test: {why}");
        return None;
    }
    Some(lab::serial().expect("lab lock"))
}

fn lab_bin() -> &'static str {
    env!("CARGO_BIN_EXE_kubeha-lab")
}

fn namespaces_of(id: &str) -> Vec<String> {
    netns::list_lab()
        .into_iter()
        .filter(|n| netns::lab_id_of(n) == Some(id))
        .collect()
}

fn ip_ok(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn unique(prefix: &str) -> String {
    format!("{prefix}{}", std::process::id())
}

/// Wait for `kubeha-lab up` in `dir` to have built its switch namespace;
/// returns its state.
fn wait_lab_state(dir: &Path, child: &mut Child) -> LabState {
    let mut st = None;
    let ok = wait_until(Duration::from_secs(20), Duration::from_millis(20), || {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("kubeha-lab up exited early: {status}");
        }
        st = LabState::load(dir).ok().filter(|s| {
            s.namespaces().iter().all(|n| netns::exists(n))
                && s.nodes
                    .iter()
                    .all(|n| dir.join(&n.name).join("kubeha.toml").exists())
        });
        st.is_some()
    });
    assert!(ok, "lab in {} did not come up", dir.display());
    st.unwrap()
}

fn spawn_foreground(name: &str) -> Child {
    Command::new(lab_bin())
        .args([
            "--name",
            name,
            "up",
            "--topology",
            "vip",
            "--no-agents",
            "--foreground",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn kubeha-lab up --foreground")
}

fn wait_exit(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let end = Instant::now() + timeout;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(Instant::now() < end, "child did not exit in {timeout:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn up_and_drop_leave_no_namespace() {
    let Some(_g) = guard() else { return };
    let lab = Lab::up(LabSpec::new(Topology::Guide).nodes(1).without_agents()).unwrap();
    let id = lab.id().to_string();
    let dir = lab.dir().to_path_buf();
    // sw + client + 2 lb + 3 cp + 1 worker
    assert_eq!(namespaces_of(&id).len(), 8, "{:?}", namespaces_of(&id));
    assert!(
        lab.namespaces()
            .iter()
            .all(|n| n.starts_with(netns::PREFIX))
    );
    // Nothing in the host namespace: every link lives in the lab's namespaces.
    let host_links = Command::new("ip").args(["-o", "link"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&host_links.stdout).contains(&format!("khl{id}")));
    // Each node: loopback up, eth0 with its address, no default route.
    for n in lab.nodes() {
        let addrs = lab::cmd::ip_n(&n.ns, ["-o", "-4", "addr"]).unwrap();
        assert!(
            addrs.contains("lo") && addrs.contains("127.0.0.1"),
            "{addrs}"
        );
        assert!(addrs.contains(&format!("{}/24", n.addr)), "{addrs}");
        let routes = lab::cmd::ip_n(&n.ns, ["route"]).unwrap();
        assert!(!routes.contains("default"), "{routes}");
        assert_eq!(
            netns::read_sysctl(&n.ns, "net/ipv4/ip_nonlocal_bind").unwrap(),
            "1"
        );
        let cfg = std::fs::read_to_string(dir.join(&n.name).join("kubeha.toml")).unwrap();
        assert!(cfg.contains(&format!("advertise_addr = \"{}\"", n.addr)));
    }
    let key = dir.join("cluster.key");
    let meta = std::fs::metadata(&key).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
        0o600
    );
    // A daemon started in a node runs in that node's namespace and dies
    // with the lab.
    let node = lab.node("cp-1").unwrap();
    let pid = node
        .spawn("sleeper", Path::new("/bin/sleep"), &["1000".to_string()])
        .unwrap();
    let netns_of = |p: &str| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap());
    assert_eq!(
        netns_of(&format!("/proc/{pid}/ns/net")),
        netns_of(&format!("/run/netns/{}", node.ns()))
    );
    assert_eq!(node.spawned_pid("sleeper"), Some(pid));
    let rec = lab::ProcRecord::of(pid).unwrap();
    drop(lab);
    assert!(!rec.alive(), "pid {pid} outlived the lab");
    assert!(namespaces_of(&id).is_empty(), "{:?}", namespaces_of(&id));
    assert!(!dir.exists(), "{} left behind", dir.display());
}

#[test]
fn the_client_reaches_every_node() {
    let Some(_g) = guard() else { return };
    let lab = Lab::up(LabSpec::new(Topology::Vip).nodes(3).without_agents()).unwrap();
    // A responder on each node's own address (not the VIP), probed from the
    // client: proves the bridge carries traffic both ways.
    let mut rs = Vec::new();
    for n in lab.nodes() {
        let bind = std::net::SocketAddr::new(n.addr.into(), 7000);
        rs.push(lab::Responder::start(&n.ns, &n.name, bind).unwrap());
    }
    for n in lab.nodes() {
        let target = std::net::SocketAddr::new(n.addr.into(), 7000);
        let p = Prober::start_in(
            lab.client_ns(),
            target,
            Duration::from_millis(10),
            Duration::from_millis(50),
        )
        .unwrap();
        let hit = p.wait_ok_where(Instant::now(), Duration::from_secs(5), |x| x == n.name);
        assert!(hit.is_some(), "client got no answer from {}", n.name);
    }
    assert!(rs.iter().all(|r| r.served() > 0));
}

#[test]
fn owner_panic_removes_the_lab() {
    let Some(_g) = guard() else { return };
    let id_file = std::env::temp_dir().join(unique("kubeha-lab-panic-id-"));
    let _ = std::fs::remove_file(&id_file);
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "lab::child_builds_a_lab_then_panics",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &id_file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the child should have panicked: {stderr}"
    );
    assert!(stderr.contains("deliberate panic"), "{stderr}");
    let text = std::fs::read_to_string(&id_file).expect("the child wrote its lab id");
    let (id, dir) = text.split_once('\n').unwrap();
    assert!(namespaces_of(id).is_empty(), "{:?}", namespaces_of(id));
    // Logs are kept after a panic, the state is not.
    let dir = PathBuf::from(dir.trim());
    assert!(!LabState::path(&dir).exists());
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&id_file);
}

#[test]
#[ignore = "run as a child by owner_panic_removes_the_lab"]
fn child_builds_a_lab_then_panics() {
    let Some(id_file) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    // No lock here: the parent test holds it.
    let lab = Lab::up(LabSpec::new(Topology::Vip).without_agents()).unwrap();
    assert_eq!(namespaces_of(lab.id()).len(), 5);
    std::fs::write(&id_file, format!("{}\n{}\n", lab.id(), lab.dir().display())).unwrap();
    panic!("deliberate panic with lab {} up", lab.id());
}

#[test]
fn sigint_to_a_foreground_lab_removes_it() {
    let Some(_g) = guard() else { return };
    let name = unique("itsig");
    let dir = Lab::default_dir(&name);
    let mut child = spawn_foreground(&name);
    let st = wait_lab_state(&dir, &mut child);
    // SAFETY: plain syscall on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = wait_exit(&mut child, Duration::from_secs(20));
    assert_eq!(status.code(), Some(130), "{status}");
    assert!(
        namespaces_of(&st.id).is_empty(),
        "{:?}",
        namespaces_of(&st.id)
    );
    assert!(!dir.exists(), "{} left behind", dir.display());
}

#[test]
fn killed_owner_leftovers_are_removed_by_up_and_cleanup() {
    let Some(_g) = guard() else { return };
    let name = unique("itkill");
    let dir = Lab::default_dir(&name);
    // 1. An owner killed with SIGKILL leaves its lab behind...
    let mut child = spawn_foreground(&name);
    let st = wait_lab_state(&dir, &mut child);
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(namespaces_of(&st.id).len(), 5);
    // ...and `up` with the same name removes it first.
    let out = Command::new(lab_bin())
        .args(["--name", &name, "up", "--topology", "vip", "--no-agents"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        namespaces_of(&st.id).is_empty(),
        "{:?}",
        namespaces_of(&st.id)
    );
    let st2 = LabState::load(&dir).unwrap();
    assert_ne!(st2.id, st.id);
    assert_eq!(st2.owner, None, "a plain `up` detaches");
    assert_eq!(namespaces_of(&st2.id).len(), 5);
    // `cleanup` keeps a detached lab, `down` removes it.
    let out = Command::new(lab_bin()).arg("cleanup").output().unwrap();
    assert!(out.status.success());
    assert_eq!(namespaces_of(&st2.id).len(), 5);
    let out = Command::new(lab_bin())
        .args(["--name", &name, "down"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(namespaces_of(&st2.id).is_empty());
    assert!(!dir.exists());

    // 2. `cleanup` removes a lab whose owner was killed.
    let mut child = spawn_foreground(&name);
    let st3 = wait_lab_state(&dir, &mut child);
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(namespaces_of(&st3.id).len(), 5);
    let out = Command::new(lab_bin()).arg("cleanup").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(&format!("khl{}-sw", st3.id)), "{stdout}");
    assert!(namespaces_of(&st3.id).is_empty());
}

#[test]
fn prober_and_sampler_follow_a_vip_moved_by_hand() {
    let Some(_g) = guard() else { return };
    let lab = Lab::up(LabSpec::new(Topology::Vip).without_agents()).unwrap();
    lab.start_responders().unwrap();
    let sampler = Sampler::start(&lab).unwrap();
    let prober = Prober::start(&lab).unwrap();
    let (n1, n2) = (&lab.nodes()[0], &lab.nodes()[1]);
    let vip32 = format!("{}/32", lab::VIP);
    let t_start = Instant::now();
    assert!(sampler.wait_for(Duration::from_secs(2), |h| h.is_empty()));

    ip_ok(&["-n", &n1.ns, "addr", "add", &vip32, "dev", "eth0"]);
    assert!(sampler.wait_for(Duration::from_secs(2), |h| h == ["n1"]));
    let t = Instant::now();
    assert!(
        prober
            .wait_ok_where(t, Duration::from_secs(5), |n| n == "n1")
            .is_some(),
        "the client never reached n1"
    );
    assert_eq!(lab.client_neigh().unwrap().node.as_deref(), Some("n1"));
    assert_eq!(lab.vip_holders().unwrap(), ["n1"]);

    // Both hold it: the sampler sees two holders; the client stays on n1
    // (its ARP entry) until n2 announces itself.
    let t_both = Instant::now();
    ip_ok(&["-n", &n2.ns, "addr", "add", &vip32, "dev", "eth0"]);
    assert!(sampler.wait_for(Duration::from_secs(2), |h| h == ["n1", "n2"]));
    // (Probes from before n1 answered may still be in the window: poll.)
    assert!(wait_until(
        Duration::from_secs(3),
        Duration::from_millis(20),
        || { prober.stable_on("n1", Duration::from_millis(300)) }
    ));
    assert!(
        prober
            .since(t_both)
            .iter()
            .all(|p| p.outcome.node() != Some("n2"))
    );
    let t_arp = Instant::now();
    ip_ok(&[
        "netns",
        "exec",
        &n2.ns,
        "arping",
        "-q",
        "-U",
        "-c",
        "2",
        "-I",
        "eth0",
        &lab::VIP.to_string(),
    ]);
    let moved = prober.wait_ok_where(t_arp, Duration::from_secs(3), |n| n == "n2");
    assert!(
        moved.is_some(),
        "the client did not follow the gratuitous ARP"
    );
    assert_eq!(lab.client_neigh().unwrap().node.as_deref(), Some("n2"));

    ip_ok(&["-n", &n1.ns, "addr", "del", &vip32, "dev", "eth0"]);
    assert!(sampler.wait_for(Duration::from_secs(2), |h| h == ["n2"]));
    let t_single = Instant::now();
    let s = sampler.summary(t_both, t_single);
    assert_eq!(s.max_holders, 2);
    assert!(s.multi_time > Duration::from_millis(50), "{s:?}");
    assert!(s.multi_time <= t_single - t_both, "{s:?}");
    // The notifications agree, to the millisecond.
    let ev = sampler.event_overlap(t_both, t_single, 0);
    assert!(
        ev > Duration::from_millis(50) && ev <= t_single - t_both,
        "{ev:?}"
    );
    let events = sampler.events(t_start, None);
    let seq: Vec<(usize, bool)> = events.iter().map(|e| (e.node, e.present)).collect();
    assert_eq!(seq, [(0, true), (1, true), (0, false)], "{events:?}");
    assert!(!sampler.events_lost());
    // The sampler kept its 10 ms cadence (allow scheduling noise).
    let all = sampler.summary(t_start, t_single);
    let expected = (t_single - t_start).as_millis() as usize / 10;
    assert!(
        all.samples * 10 >= expected * 7,
        "{} of ~{expected}",
        all.samples
    );
    assert!(wait_until(
        Duration::from_secs(2),
        Duration::from_millis(20),
        || { prober.stable_on("n2", Duration::from_millis(300)) }
    ));

    // A stopped responder refuses: the client sees errors, not answers.
    let t_stop = Instant::now();
    assert!(lab.node("n2").unwrap().stop_responder());
    std::thread::sleep(Duration::from_millis(200));
    let after = prober.since(t_stop + Duration::from_millis(60));
    assert!(!after.is_empty());
    assert!(
        after.iter().all(|p| p.outcome == lab::Outcome::Refused),
        "{after:?}"
    );
}

#[test]
fn keepalived_fails_over_in_the_bench_harness() {
    let Some(_g) = guard() else { return };
    if !lab::cmd::have_tool("keepalived") {
        eprintln!("skipping: keepalived is not installed (apt-get install -y keepalived)");
        return;
    }
    let out = std::env::temp_dir().join(unique("kubeha-bench-it-"));
    let r = bench::quick(
        &[System::KeepalivedFast],
        &[Fault::Kill, Fault::Partition],
        2,
        &out,
    )
    .unwrap();
    assert!(r.skipped.is_empty(), "{:?}", r.skipped);
    assert_eq!(r.trials.len(), 4);
    for t in &r.trials {
        assert!(t.error.is_none(), "{t:?}");
        let fo = t
            .failover_ms
            .unwrap_or_else(|| panic!("no failover: {t:?}"));
        assert!(
            t.new.is_some() && t.new.as_deref() != Some(t.old.as_str()),
            "{t:?}"
        );
        // VRRPv3 at 0.1 s: master down after ~0.3 s; allow a slow machine.
        assert!(fo > 50.0 && fo < 5000.0, "{t:?}");
    }
    let kill = r.trials.iter().filter(|t| t.fault == "kill");
    for t in kill {
        // A killed keepalived leaves its address behind.
        assert!(t.stale_vip_on_old, "{t:?}");
        assert_eq!(t.multi_live_ms, 0.0, "{t:?}");
    }
    for t in r.trials.iter().filter(|t| t.fault == "partition") {
        // keepalived splits: both sides hold the VIP during the cut.
        assert!(t.multi_ms > 500.0, "{t:?}");
        assert!(t.cut_ms.unwrap() >= 2000.0);
    }
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        report.contains("| kill | keepalived-fast | 2 |"),
        "{report}"
    );
    assert!(out.join("results.json").exists());
    assert!(out.join("raw").join("keepalived-fast-kill-01.tsv").exists());
    let _ = std::fs::remove_dir_all(&out);
}

/// The agent binary the lab starts; CI builds it before the tests.
fn require_agent() {
    let bin = lab::spec::default_bin_dir().join("kubeha-agent");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --workspace --bins` before the tests",
        bin.display()
    );
}

#[test]
fn agents_in_the_lab_see_crashes_partitions_and_restarts() {
    let Some(_g) = guard() else { return };
    require_agent();
    let lab =
        Lab::up(LabSpec::new(Topology::Vip).timing(kubeha_core::timing::Profile::Fast)).unwrap();
    let took = lab.wait_members(Duration::from_secs(30)).unwrap();
    eprintln!(
        "3 agents agree on membership {} ms after start",
        took.as_millis()
    );
    for n in lab.nodes() {
        let st = lab.node(&n.name).unwrap().status().unwrap();
        assert_eq!(
            (st.cluster.as_str(), st.node.as_str()),
            ("lab", n.name.as_str())
        );
        assert_eq!(st.timing, "fast");
        assert!(st.quorum.ok && st.quorum.voters == 3, "{st:?}");
    }
    let (n1, n2, n3) = (
        lab.node("n1").unwrap(),
        lab.node("n2").unwrap(),
        lab.node("n3").unwrap(),
    );

    // A crash is noticed by the others.
    n3.kill().unwrap();
    assert!(n3.agent_pid().is_none());
    let d = lab.wait_members(Duration::from_secs(10)).unwrap();
    eprintln!("crash of n3 seen by n1 and n2 after {} ms", d.as_millis());
    n3.start().unwrap();
    lab.wait_members(Duration::from_secs(20)).unwrap();

    // A partition: n2 loses quorum, the others lose n2.
    n2.cut().unwrap();
    let seen = wait_until(Duration::from_secs(10), Duration::from_millis(20), || {
        let alone = n2.status().is_ok_and(|s| !s.quorum.ok);
        let lost = n1
            .status()
            .is_ok_and(|s| s.members.iter().any(|m| m.name == "n2" && !m.alive));
        alone && lost
    });
    assert!(seen, "n2 cut off: {:?} / {:?}", n2.status(), n1.status());
    n2.heal().unwrap();
    lab.wait_members(Duration::from_secs(20)).unwrap();

    // A clean stop.
    n1.stop().unwrap();
    let d = lab.wait_members(Duration::from_secs(10)).unwrap();
    eprintln!("clean stop of n1 seen after {} ms", d.as_millis());
    let st = n2.status().unwrap();
    assert!(st.quorum.ok, "two of three voters remain: {st:?}");
}

#[test]
fn cli_up_status_kill_down_with_agents() {
    let Some(_g) = guard() else { return };
    require_agent();
    let name = unique("itcli");
    let run = |args: &[&str]| {
        let out = Command::new(lab_bin())
            .args(["--name", &name])
            .args(args)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "kubeha-lab {args:?}: {}{text}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    run(&["up", "--topology", "vip", "--timing", "fast"]);
    let dir = Lab::default_dir(&name);
    let st = LabState::load(&dir).unwrap();
    let all_see_three = || {
        let s = run(&["status"]);
        s.lines().filter(|l| l.contains(" 3/3 ")).count() == 3
    };
    assert!(
        wait_until(
            Duration::from_secs(30),
            Duration::from_millis(100),
            all_see_three
        ),
        "{}",
        run(&["status"])
    );
    run(&["kill", "n2"]);
    let s = run(&["status"]);
    assert!(
        s.lines()
            .any(|l| l.starts_with("n2") && l.contains("agent not running")),
        "{s}"
    );
    run(&["start", "n2"]);
    assert!(wait_until(
        Duration::from_secs(30),
        Duration::from_millis(100),
        all_see_three
    ));
    let pids: Vec<i32> = LabState::load(&dir)
        .unwrap()
        .procs
        .values()
        .filter_map(|p| p.agent.map(|a| a.pid))
        .collect();
    assert_eq!(pids.len(), 3);
    run(&["down"]);
    assert!(namespaces_of(&st.id).is_empty());
    for pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|s| s.contains(") Z ")),
            "agent pid {pid} still runs after `down`"
        );
    }
}

#[test]
fn sampler_sweeps_cost_less_than_one_ip_command() {
    let Some(_g) = guard() else { return };
    let lab = Lab::up(LabSpec::new(Topology::Vip).without_agents()).unwrap();
    let sampler = Sampler::start(&lab).unwrap();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    let samples = sampler.since(t0);
    sampler.stop();
    assert!(samples.len() >= 70, "{} samples in 1 s", samples.len());
    let sweep: Duration = samples.iter().map(|s| s.took).sum::<Duration>() / samples.len() as u32;
    let n = 10;
    let t = Instant::now();
    for _ in 0..n {
        lab::cmd::ip_n(
            &lab.nodes()[0].ns,
            ["-o", "-4", "addr", "show", "dev", "eth0"],
        )
        .unwrap();
    }
    let ip_one = t.elapsed() / n;
    eprintln!(
        "netlink sweep over 3 nodes: {} us on average ({} samples/s); one `ip -n NS addr`: {} us",
        sweep.as_micros(),
        samples.len(),
        ip_one.as_micros()
    );
    assert!(sweep < ip_one, "sweep {sweep:?} vs ip {ip_one:?}");
}

#[test]
fn demo_shows_a_failover_and_leaves_nothing() {
    let Some(_g) = guard() else { return };
    require_agent();
    let before = netns::list_lab();
    let mut out = Vec::new();
    let report = lab::demo::run(
        LabSpec::new(Topology::Compact).timing(kubeha_core::timing::Profile::Fast),
        &mut out,
    )
    .unwrap();
    let text = String::from_utf8(out).unwrap();
    eprintln!("{text}");
    let failover = report.failover.expect("the client saw a failover");
    assert!(failover < Duration::from_secs(5), "{report:?}");
    let new = report.new_holder.as_deref().expect("a new holder");
    assert_ne!(new, report.old_holder);
    assert!(report.max_holders <= 1, "{report:?}");
    for needle in ["kubeha-ctl", "holds the VIP", "after the crash", "removed"] {
        assert!(text.contains(needle), "`{needle}` missing from:\n{text}");
    }
    assert_eq!(netns::list_lab(), before);
}

/// What `scripts/lab-demo` runs after the VIP demo, through the binary:
/// `up --topology guide --kubernetes`, `wait`, `status`, `api`, `holder`,
/// `kill` of the holder, `api --retry`, `down`; nothing left behind (no
/// namespace, no etcd or apiserver of the lab).
#[test]
fn kubernetes_demo_commands_bootstrap_serve_fail_over_and_leave_nothing() {
    let Some(_g) = guard() else { return };
    require_agent();
    let before = netns::list_lab();
    let name = format!("kdemo{}", std::process::id());
    let run = |args: &[&str]| -> String {
        let out = Command::new(lab_bin())
            .args(["--name", &name])
            .args(args)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "kubeha-lab {args:?}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };
    run(&[
        "up",
        "--topology",
        "guide",
        "--kubernetes",
        "--timing",
        "fast",
    ]);
    let dir = Lab::default_dir(&name);
    // Whatever happens below, the lab goes.
    struct Down(PathBuf);
    impl Drop for Down {
        fn drop(&mut self) {
            if let Ok(l) = Lab::attach(&self.0) {
                l.down();
            }
        }
    }
    let _down = Down(dir.clone());
    let waited = run(&["wait", "--timeout", "150"]);
    assert!(waited.contains("kubeadm init ran 1 time(s)"), "{waited}");
    let status = run(&["status"]);
    for needle in ["PHASE", "INIT-NODE", "joined", "disabled"] {
        assert!(
            status.contains(needle),
            "`{needle}` missing from:\n{status}"
        );
    }
    let want = ["cp-0", "cp-1", "cp-2", "worker-0"];
    let listed = |out: &str| -> Vec<String> {
        out.lines()
            .filter_map(|l| l.trim().strip_prefix("node "))
            .map(str::to_string)
            .collect()
    };
    let api = run(&["api", "/api/v1/nodes"]);
    assert_eq!(listed(&api), want, "{api}");
    let holder = run(&["holder"]).trim().to_string();
    assert!(holder.starts_with("lb-"), "{holder}");
    run(&["kill", &holder]);
    let api = run(&["api", "/api/v1/nodes", "--retry", "20"]);
    assert_eq!(listed(&api), want, "after the failover: {api}");
    let st = LabState::load(&dir).unwrap();
    let daemons: Vec<lab::ProcRecord> = st
        .procs
        .values()
        .flat_map(|p| p.extra.values().copied())
        .collect();
    assert_eq!(
        daemons.len(),
        6,
        "3 etcd + 3 apiservers recorded: {daemons:?}"
    );
    run(&["down"]);
    assert!(daemons.iter().all(|r| !r.alive()), "{daemons:?}");
    assert!(!dir.exists());
    assert_eq!(netns::list_lab(), before);
}
