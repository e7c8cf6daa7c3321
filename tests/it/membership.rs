//! Issue 2: authenticated gossip membership with real agent processes on
//! loopback addresses.

use std::net::UdpSocket;
use std::process::Command;
use std::time::Duration;

use kubeha_core::timing::Timing;

use crate::support::{LoopbackCluster, bin, metric, wait_until, write_key};

const CONVERGE: Duration = Duration::from_secs(20);

fn all_see(c: &LoopbackCluster, observers: &[usize], expected: &[&str]) -> bool {
    observers.iter().all(|&o| {
        let mut seen = c.alive_seen_by(o);
        seen.sort();
        seen == expected
    })
}

#[test]
fn five_agents_converge_detect_a_crash_and_take_a_restart_back() {
    let mut c = LoopbackCluster::new(31, 5);
    c.start_all();
    let everyone = ["n1", "n2", "n3", "n4", "n5"];
    let t = wait_until(CONVERGE, || all_see(&c, &[0, 1, 2, 3, 4], &everyone))
        .unwrap_or_else(|| panic!("no convergence; n1 log:\n{}", c.log(0)));
    eprintln!("5 agents converged in {t:?}");

    // Voters answer direct probes within a lease period or two.
    wait_until(CONVERGE, || {
        (0..5).all(|i| c.status(i).is_some_and(|s| s.quorum.ok))
    })
    .expect("quorum never reported reachable");
    // The contract: `kubeha-ctl status -o json` on each lists 5 alive members.
    for i in 0..5 {
        let out = Command::new(bin("kubeha-ctl"))
            .arg("--socket")
            .arg(c.socket(i))
            .args(["status", "-o", "json"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let members = v["members"].as_array().unwrap();
        assert_eq!(members.len(), 5, "{v}");
        assert!(members.iter().all(|m| m["alive"] == true), "{v}");
        assert_eq!(v["node"], c.names[i].as_str());
        assert_eq!(v["quorum"]["ok"], true);
    }
    let old_generation = c
        .status(0)
        .unwrap()
        .members
        .iter()
        .find(|m| m.name == "n5")
        .unwrap()
        .generation;

    // kill -9: every other agent sees it not alive within the documented bound.
    c.kill9(4);
    let bound = Timing::DEFAULT.failure_detection_bound();
    let took = wait_until(bound * 3, || {
        (0..4).all(|o| {
            c.status(o)
                .is_some_and(|s| s.members.iter().any(|m| m.name == "n5" && !m.alive))
        })
    })
    .expect("crash never detected");
    eprintln!("crash of n5 seen by all 4 peers after {took:?} (documented bound {bound:?})");
    assert!(
        took <= bound,
        "detection took {took:?}, documented bound is {bound:?}"
    );
    let s = c.status(0).unwrap();
    assert_eq!(
        s.members
            .iter()
            .find(|m| m.name == "n5")
            .unwrap()
            .state
            .as_str(),
        "dead"
    );

    // Restart: alive again, one entry per node name, a newer incarnation.
    c.start(4);
    wait_until(CONVERGE, || all_see(&c, &[0, 1, 2, 3, 4], &everyone))
        .expect("restarted n5 not seen alive");
    for o in 0..5 {
        let s = c.status(o).unwrap();
        let n5: Vec<_> = s.members.iter().filter(|m| m.name == "n5").collect();
        assert_eq!(n5.len(), 1, "node {o} lists n5 {} times", n5.len());
        assert!(n5[0].generation > old_generation);
    }

    // A clean stop is announced: peers show `left`, not `dead`.
    let pid = c.agents[3].as_ref().unwrap().pid();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    wait_until(Duration::from_secs(5), || {
        (0..3).all(|o| {
            c.status(o).is_some_and(|s| {
                s.members
                    .iter()
                    .any(|m| m.name == "n4" && m.state.as_str() == "left")
            })
        })
    })
    .expect("clean stop not seen as left");
    let mut a = c.agents[3].take().unwrap();
    let st = a.0.wait().unwrap();
    assert!(st.success(), "agent exit status after SIGTERM: {st}");
    assert!(
        !c.socket(3).exists(),
        "the agent removes its socket on a clean stop"
    );
}

/// Hand-built chitchat SYN (wire format V0, no digest entries): what an
/// unprotected chitchat node answers with its whole state.
fn raw_chitchat_syn(cluster: &str) -> Vec<u8> {
    let mut b = vec![0x53, 0xb0, 0, 0]; // magic 45139 LE, protocol V0, SYN
    b.extend_from_slice(&0u16.to_le_bytes()); // digest: 0 nodes
    b.extend_from_slice(&(cluster.len() as u16).to_le_bytes());
    b.extend_from_slice(cluster.as_bytes());
    b
}

#[test]
fn nodes_without_the_key_never_join_and_get_no_reply() {
    let mut c = LoopbackCluster::new(32, 4);
    c.start(0);
    c.start(1);
    c.start(2);
    // n4 runs the real agent with another key.
    let wrong = c.dir.path().join("wrong.key");
    write_key(&wrong, [9; 32]);
    c.start_with_key(3, &wrong);
    wait_until(CONVERGE, || all_see(&c, &[0, 1, 2], &["n1", "n2", "n3"])).expect("no convergence");

    // A plain chitchat node (no key at all), same cluster name, seeded with n1.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let plain_addr: std::net::SocketAddr = "127.32.0.30:7946".parse().unwrap();
    let seeds = vec![format!("{}:7946", c.ip(0))];
    let plain = rt.block_on(async {
        let config = chitchat::ChitchatConfig {
            chitchat_id: chitchat::ChitchatId::new("intruder", 1, plain_addr),
            cluster_id: "it".to_string(),
            gossip_interval: Duration::from_millis(50),
            listen_addr: plain_addr,
            seed_nodes: seeds,
            failure_detector_config: chitchat::FailureDetectorConfig::default(),
            marked_for_deletion_grace_period: Duration::from_secs(60),
            catchup_callback: None,
            extra_liveness_predicate: None,
            protocol_version: chitchat::ProtocolVersion::V0,
        };
        chitchat::spawn_chitchat(config, vec![], &chitchat::transport::UdpTransport)
            .await
            .unwrap()
    });

    let m1 = format!("{}:9946", c.ip(0));
    let dropped = |reason: &str| {
        metric(
            &m1,
            &format!("kubeha_gossip_dropped_total{{reason=\"{reason}\"}}"),
        )
        .unwrap_or(0.0)
    };
    // Both intruders' packets reach n1 and are dropped for the right reason.
    wait_until(Duration::from_secs(10), || dropped("malformed") >= 5.0)
        .expect("plain chitchat packets never counted");
    wait_until(Duration::from_secs(10), || dropped("auth") >= 5.0)
        .expect("wrong-key packets never counted");

    // A raw SYN, random bytes and truncated frames: counted, never answered.
    let probe = UdpSocket::bind("127.32.0.40:0").unwrap();
    probe
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let before = dropped("malformed");
    let target = format!("{}:7946", c.ip(0));
    let syn = raw_chitchat_syn("it");
    assert!(syn.len() < 20);
    probe.send_to(&syn, &target).unwrap();
    let mut sent = 1.0;
    for len in [0usize, 1, 5, 36, 59, 200, 1400] {
        let junk: Vec<u8> = (0..len).map(|_| rand::random::<u8>()).collect();
        probe.send_to(&junk, &target).unwrap();
        sent += 1.0;
    }
    // A frame header with a truncated body.
    let mut frame = b"KH\x01\x00".to_vec();
    frame.extend_from_slice(&kubeha_core::frame::cluster_tag("it"));
    frame.extend_from_slice(&[0u8; 30]);
    probe.send_to(&frame, &target).unwrap();
    sent += 1.0;
    wait_until(Duration::from_secs(5), || {
        dropped("malformed") >= before + sent
    })
    .expect("junk not counted as malformed");
    let mut buf = [0u8; 65_536];
    match probe.recv_from(&mut buf) {
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) => {}
        other => panic!("the agent answered an unauthenticated datagram: {other:?}"),
    }

    // Nobody lists an intruder; the intruders learn nothing.
    for o in 0..3 {
        let names: Vec<String> = c
            .status(o)
            .unwrap()
            .members
            .into_iter()
            .map(|m| m.name)
            .collect();
        assert_eq!(names, ["n1", "n2", "n3"], "node {o} lists {names:?}");
    }
    let wrong_view: Vec<String> = c
        .status(3)
        .unwrap()
        .members
        .into_iter()
        .map(|m| m.name)
        .collect();
    assert_eq!(
        wrong_view,
        ["n4"],
        "the wrong-key agent learned {wrong_view:?}"
    );
    let plain_knows = rt.block_on(plain.with_chitchat(|cc| {
        cc.node_states()
            .keys()
            .map(|id| id.node_id.to_string())
            .collect::<Vec<_>>()
    }));
    assert_eq!(
        plain_knows,
        ["intruder"],
        "plain chitchat learned {plain_knows:?}"
    );
    rt.block_on(async { plain.shutdown().await.ok() });
    // The agents survived all of it.
    assert!(all_see(&c, &[0, 1, 2], &["n1", "n2", "n3"]));
}

#[test]
fn check_config_names_file_key_and_line() {
    let c = LoopbackCluster::new(33, 1);
    let key = c.dir.path().join("cluster.key");
    let cfg = c.node_dir(0).join("kubeha.toml");
    let check = |text: &str| {
        std::fs::write(&cfg, text).unwrap();
        let out = Command::new(bin("kubeha-agent"))
            .arg("--check-config")
            .arg("--config")
            .arg(&cfg)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let good = c.config(0, &key);
    let (code, err) = check(&good);
    assert_eq!(code, Some(0), "{err}");

    let (code, err) = check(&format!("{good}gossip_prot = 1\n"));
    assert_eq!(code, Some(1));
    assert!(
        err.contains(&format!("{}:11: `gossip_prot`: unknown key", cfg.display())),
        "{err}"
    );

    let (code, err) = check(&good.replace("voters = [\"n1\"]", "voters = []"));
    assert_eq!(code, Some(1));
    assert!(err.contains("`voters`") && err.contains(":5:"), "{err}");

    let (code, err) = check(&good.replace(&key.display().to_string(), "/nonexistent/cluster.key"));
    assert_eq!(code, Some(1));
    assert!(
        err.contains("/nonexistent/cluster.key") && err.contains("key_file"),
        "{err}"
    );

    // Nothing was bound: the metrics address stays free.
    assert!(std::net::TcpListener::bind(format!("{}:9946", c.ip(0))).is_ok());
}

#[test]
fn key_rotation_by_sighup_keeps_membership() {
    let mut c = LoopbackCluster::new(34, 3);
    c.start_all();
    let all = ["n1", "n2", "n3"];
    wait_until(CONVERGE, || all_see(&c, &[0, 1, 2], &all)).expect("no convergence");
    let key = c.dir.path().join("cluster.key");
    let old = kubeha_core::frame::Key::from_bytes([7; 32]).to_base64();
    let new = kubeha_core::frame::Key::from_bytes([8; 32]).to_base64();
    let auth_drops = || -> f64 {
        (0..3)
            .map(|i| {
                metric(
                    &format!("{}:9946", c.ip(i)),
                    "kubeha_gossip_dropped_total{reason=\"auth\"}",
                )
                .unwrap_or(f64::NAN)
            })
            .sum()
    };
    let reload_count = |i: usize| c.log(i).matches("key files reloaded").count();
    let control = c.control_key();
    let old_c = kubeha_core::frame::Key::from_bytes([77; 32]).to_base64();
    let new_c = kubeha_core::frame::Key::from_bytes([78; 32]).to_base64();
    // The documented procedure: add second, promote, remove; each a rolling
    // SIGHUP. The cluster key first, then the control key (the voters'
    // probes and role proofs ride on it).
    for (step, file, text) in [
        (1, &key, format!("{old}\n{new}\n")),
        (2, &key, format!("{new}\n{old}\n")),
        (3, &key, format!("{new}\n")),
        (4, &control, format!("{old_c}\n{new_c}\n")),
        (5, &control, format!("{new_c}\n{old_c}\n")),
        (6, &control, format!("{new_c}\n")),
    ] {
        std::fs::write(file, text).unwrap();
        for i in 0..3 {
            let before = reload_count(i);
            let pid = c.agents[i].as_ref().unwrap().pid();
            assert!(
                Command::new("kill")
                    .args(["-HUP", &pid.to_string()])
                    .status()
                    .unwrap()
                    .success()
            );
            wait_until(Duration::from_secs(5), || reload_count(i) > before)
                .unwrap_or_else(|| panic!("n{} did not reload (step {step})", i + 1));
            // Mixed keyrings mid-rollout: nobody drops anyone.
            std::thread::sleep(Duration::from_millis(300));
            assert!(
                all_see(&c, &[0, 1, 2], &all),
                "membership broke at step {step} after reloading n{}",
                i + 1
            );
        }
    }
    assert_eq!(
        auth_drops(),
        0.0,
        "datagrams failed authentication during a correct rotation"
    );
    // The voters still hear each other under the new control key, and
    // their role proofs (now under it) are still believed.
    let heard = wait_until(Duration::from_secs(10), || {
        (0..3).all(|i| c.status(i).is_some_and(|s| s.quorum.reachable == 3))
    });
    assert!(
        heard.is_some(),
        "voters lost each other after the control key rotation"
    );
    // A bad key file on reload is refused and the old keys stay.
    std::fs::write(&key, "not a key\n").unwrap();
    let pid = c.agents[0].as_ref().unwrap().pid();
    assert!(
        Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    wait_until(Duration::from_secs(5), || {
        c.log(0).contains("key file not reloaded")
    })
    .expect("bad key file not reported");
    std::thread::sleep(Duration::from_millis(300));
    assert!(all_see(&c, &[0, 1, 2], &all));
    for i in 0..3 {
        assert!(
            !c.log(i).contains(&new)
                && !c.log(i).contains(&old)
                && !c.log(i).contains(&new_c)
                && !c.log(i).contains(&old_c),
            "a key reached the log of n{}",
            i + 1
        );
    }
}

#[test]
fn differing_voter_lists_are_reported() {
    let mut c = LoopbackCluster::new(35, 3);
    c.start(0);
    c.start(1);
    let key = c.dir.path().join("cluster.key");
    let odd = c.config(2, &key).replace(
        "voters = [\"n1\", \"n2\", \"n3\"]",
        "voters = [\"n1\", \"n2\"]",
    );
    c.start_with_config(2, &odd);
    wait_until(CONVERGE, || all_see(&c, &[0, 1, 2], &["n1", "n2", "n3"])).expect("no convergence");
    let s = c.status(0).unwrap();
    assert_eq!(s.voter_mismatch.len(), 1, "{:?}", s.voter_mismatch);
    assert_eq!(s.voter_mismatch[0].member, "n3");
    assert_eq!(s.voter_mismatch[0].their_voters, ["n1", "n2"]);
    // n3 sees both others as differing from its own list.
    let s3 = c.status(2).unwrap();
    let names: Vec<_> = s3
        .voter_mismatch
        .iter()
        .map(|m| m.member.as_str())
        .collect();
    assert_eq!(names, ["n1", "n2"]);
    wait_until(Duration::from_secs(5), || {
        c.log(0).contains("member has a different voter list")
    })
    .expect("mismatch not logged");
    let gauge = metric(
        &format!("{}:9946", c.ip(0)),
        "kubeha_voter_mismatch_members",
    )
    .unwrap();
    assert_eq!(gauge, 1.0);
}

#[test]
fn ctl_unreachable_agent_is_one_line_exit_2_and_keygen_is_private() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("nobody.sock");
    let out = Command::new(bin("kubeha-ctl"))
        .arg("--socket")
        .arg(&sock)
        .arg("status")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(&sock.display().to_string()), "{err}");

    use std::os::unix::fs::PermissionsExt;
    let key = dir.path().join("cluster.key");
    let run = || {
        Command::new(bin("kubeha-ctl"))
            .arg("keygen")
            .arg("--out")
            .arg(&key)
            .output()
            .unwrap()
    };
    let first = run();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let text = std::fs::read_to_string(&key).unwrap();
    assert!(kubeha_core::frame::Keyring::parse(&text).is_ok());
    // The key itself is not printed, only its id.
    assert!(!String::from_utf8_lossy(&first.stderr).contains(text.trim()));
    assert!(
        !run().status.success(),
        "keygen must not overwrite an existing key"
    );
    assert_eq!(std::fs::read_to_string(&key).unwrap(), text);
}

/// The UDP ports on 127.0.0.1 that process `pid` has bound (the gossip
/// codec and its tap), from /proc.
fn loopback_udp_ports(pid: i32) -> Vec<u16> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let s = l.to_string_lossy().into_owned();
            s.strip_prefix("socket:[")?
                .strip_suffix(']')
                .map(str::to_string)
        })
        .collect();
    std::fs::read_to_string("/proc/net/udp")
        .unwrap()
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (ip, port) = f.get(1)?.split_once(':')?;
            let inode = *f.get(9)?;
            (ip == "0100007F" && inodes.iter().any(|i| i == inode))
                .then(|| u16::from_str_radix(port, 16).ok())
                .flatten()
        })
        .collect()
}

#[test]
fn a_local_flood_of_the_gossip_relay_changes_no_view_and_no_log() {
    let mut c = LoopbackCluster::new(36, 3);
    c.start_all();
    let all = ["n1", "n2", "n3"];
    wait_until(CONVERGE, || all_see(&c, &[0, 1, 2], &all)).expect("no convergence");
    let pid = c.agents[0].as_ref().unwrap().pid();
    let ports = loopback_udp_ports(pid);
    assert_eq!(ports.len(), 2, "codec and tap of n1: {ports:?}");
    let m1 = format!("{}:9946", c.ip(0));
    let malformed =
        || metric(&m1, "kubeha_gossip_dropped_total{reason=\"malformed\"}").unwrap_or(f64::NAN);
    let before = malformed();
    let log_before = c.log(0).lines().count();
    // Another local process writes plain chitchat SYNs (which decode) and
    // junk (which does not) to both loopback ports, as fast as it can.
    let flood = UdpSocket::bind("127.0.0.1:0").unwrap();
    let syn = raw_chitchat_syn("it");
    let mut syns = 0.0;
    let t = std::time::Instant::now();
    let mut i = 0u32;
    while t.elapsed() < Duration::from_secs(3) {
        for p in &ports {
            let to = format!("127.0.0.1:{p}");
            if i.is_multiple_of(2) {
                if flood.send_to(&syn, &to).is_ok() && *p == ports[0] {
                    syns += 1.0;
                }
            } else {
                let junk: Vec<u8> = (0..64).map(|_| rand::random::<u8>()).collect();
                let _ = flood.send_to(&junk, &to);
            }
        }
        i += 1;
        if i.is_multiple_of(200) {
            // Every member still sees exactly the others, all alive.
            for o in 0..3 {
                let names: Vec<String> = c
                    .status(o)
                    .unwrap()
                    .members
                    .into_iter()
                    .filter(|m| m.alive)
                    .map(|m| m.name)
                    .collect();
                assert_eq!(names, all, "node {o} sees {names:?} during the flood");
            }
        }
    }
    assert!(syns > 100.0 && i > 1000, "flood too small: {i} rounds");
    // Nothing reached the codec or the tap: both sockets are connected to
    // each other, so the kernel drops everyone else's datagrams.
    assert_eq!(malformed(), before, "flood datagrams reached the relay");
    // The log did not grow with the flood (one line per datagram would be
    // thousands).
    let grown = c.log(0).lines().count() - log_before;
    assert!(grown < 20, "the flood wrote {grown} log lines");
    assert!(all_see(&c, &[0, 1, 2], &all));
    // Gossip still flows through the relay: a restart is seen.
    c.kill9(2);
    wait_until(Duration::from_secs(15), || {
        c.status(0)
            .is_some_and(|s| s.members.iter().any(|m| m.name == "n3" && !m.alive))
    })
    .expect("n3's crash not seen after the flood");
}
