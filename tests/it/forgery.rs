//! Issue 11: a node with the cluster key alone (a worker, whose pods may be
//! anyone's) moves nothing, and a captured datagram replayed later changes
//! nothing. Real agents in the namespace lab; the forger is this test,
//! sending from a worker's namespace with the lab's cluster key.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kubeha_core::frame::{self, Channel, Header, Key, Keyring, Tier};
use kubeha_core::timing::Profile;
use kubeha_core::wire::{self, ClaimId, LeaseReply, LeaseRequest, LockOp, LockRequest, PeerMsg};
use kubeha_tests::lab::{self, Lab, LabSpec, SerialGuard, Topology, netns, wait_until};

use crate::support::metric;

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

const PORT: u16 = 7946;

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// `kubeha_gossip_dropped_total{reason}` of a node (its metrics listen on
/// loopback inside its namespace).
fn drops(lab: &Lab, node: &str, reason: &'static str) -> f64 {
    let ns = lab.node(node).unwrap().ns().to_string();
    netns::run_in(&ns, move || {
        metric(
            "127.0.0.1:9946",
            &format!("kubeha_gossip_dropped_total{{reason=\"{reason}\"}}"),
        )
    })
    .unwrap()
    .unwrap_or(f64::NAN)
}

fn addr_of(lab: &Lab, node: &str) -> SocketAddr {
    SocketAddr::new(lab.node(node).unwrap().addr().into(), PORT)
}

static COUNTER: AtomicU64 = AtomicU64::new(1);

/// A lease-channel frame as a cluster-key holder can make one.
fn forge(
    ring: &Keyring,
    tier: Tier,
    sender: &str,
    sender_addr: SocketAddr,
    recipient: &str,
    msg: &PeerMsg,
) -> Vec<u8> {
    let header = Header {
        channel: Channel::Lease,
        tier,
        sender: sender.to_string(),
        sender_gen: unix_ms() * 1000,
        counter: COUNTER.fetch_add(1, Ordering::Relaxed),
        sender_epoch: 0,
        sender_addr,
        recipient: recipient.to_string(),
        recipient_gen: 0,
        echo_epoch: 0,
    };
    frame::seal(
        ring,
        frame::cluster_tag("lab"),
        &header,
        rand::random(),
        unix_ms(),
        &wire::encode(msg),
    )
    .unwrap()
}

/// Send `frames` from `bind` inside `ns`.
fn send_from(ns: &str, bind: SocketAddr, frames: Vec<(SocketAddr, Vec<u8>)>) {
    netns::run_in(ns, move || {
        let s = UdpSocket::bind(bind).expect("bind the forger's socket");
        for (to, bytes) in &frames {
            s.send_to(bytes, to).expect("send a forged frame");
        }
    })
    .unwrap();
}

fn vip_holder(lab: &Lab, node: &str) -> Option<String> {
    lab.node(node)
        .unwrap()
        .status()
        .ok()
        .and_then(|s| s.vip)
        .and_then(|v| v.holder)
}

#[test]
fn a_worker_with_the_cluster_key_alone_forges_no_vote_role_or_lock_record() {
    let Some(_g) = guard() else { return };
    // Two workers: the other one checks role proofs with the control
    // public key (`control_public_keys`), as a joining worker must.
    let lab =
        Lab::up(LabSpec::new(Topology::Guide).nodes(2).timing(Profile::Fast)).expect("lab up");
    let holder = lab
        .wait_settled(Duration::from_secs(30))
        .expect("converged");
    let standby = if holder == "lb-0" { "lb-1" } else { "lb-0" };
    let voters = ["cp-0", "cp-1", "cp-2"];
    let ring = Keyring::parse(&std::fs::read_to_string(lab.key_file()).unwrap()).unwrap();
    let made_up = Keyring::new(Key::from_bytes(rand::random()));

    // The worker is compromised: its agent is gone and the attacker holds
    // its address and the cluster key.
    let worker = lab.node("worker-0").unwrap();
    worker.kill().unwrap();
    let w_addr = addr_of(&lab, "worker-0");
    let w_ns = worker.ns().to_string();

    let mut frames = Vec::new();
    let mut to_standby = 0.0;
    let mut to_voter = [0.0f64; 3];
    for seq in 1..=20u64 {
        for (vi, v) in voters.iter().enumerate() {
            // A grant in each voter's name, for the standby: two holders.
            let grant = PeerMsg::LeaseReply(LeaseReply {
                from: v.to_string(),
                candidate_incarnation: seq,
                seq,
                granted: true,
                refusal: None,
                lease_us: 240_000,
                holder: None,
                remaining_us: 240_000,
                contender: None,
            });
            // In the voter's name from the worker's address; in the
            // voter's name and address (dropped at the socket); under a
            // control key the worker made up.
            frames.push((
                addr_of(&lab, standby),
                forge(&ring, Tier::Member, v, w_addr, standby, &grant),
            ));
            frames.push((
                addr_of(&lab, standby),
                forge(&ring, Tier::Member, v, addr_of(&lab, v), standby, &grant),
            ));
            frames.push((
                addr_of(&lab, standby),
                forge(&made_up, Tier::Control, v, w_addr, standby, &grant),
            ));
            to_standby += 3.0;
            // A lock record and a lease request of the worker's own.
            let init = PeerMsg::LockRequest(LockRequest {
                from: "worker-0".into(),
                op: LockOp::Initialized,
                id: ClaimId {
                    name: "worker-0".into(),
                    incarnation: seq,
                    round: 1,
                },
                voters: 0,
                attempt: 0,
            });
            let ask = PeerMsg::LeaseRequest(LeaseRequest {
                from: "worker-0".into(),
                incarnation: seq,
                seq,
                voters: 0,
                priority: 255,
            });
            for m in [&init, &ask] {
                frames.push((
                    addr_of(&lab, v),
                    forge(&ring, Tier::Member, "worker-0", w_addr, v, m),
                ));
            }
            to_voter[vi] += 2.0;
        }
    }
    let before_standby = (
        drops(&lab, standby, "tier"),
        drops(&lab, standby, "spoofed"),
        drops(&lab, standby, "auth"),
    );
    let before_voters: Vec<f64> = voters.iter().map(|v| drops(&lab, v, "tier")).collect();
    send_from(&w_ns, w_addr, frames);

    // Every forgery is counted as a drop: at the standby one per frame
    // (tier, spoofed, auth), at each voter (tier).
    let counted = wait_until(Duration::from_secs(5), Duration::from_millis(50), || {
        let s = (
            drops(&lab, standby, "tier") - before_standby.0,
            drops(&lab, standby, "spoofed") - before_standby.1,
            drops(&lab, standby, "auth") - before_standby.2,
        );
        s.0 + s.1 + s.2 >= to_standby
            && s.0 >= to_standby / 3.0
            && s.1 >= to_standby / 3.0
            && s.2 >= to_standby / 3.0
            && voters
                .iter()
                .enumerate()
                .all(|(i, v)| drops(&lab, v, "tier") - before_voters[i] >= to_voter[i])
    });
    assert!(counted, "forged frames were not all counted as drops");
    // Nothing moved: one holder, the same; no lock record.
    assert_eq!(lab.vip_holders().unwrap(), vec![holder.clone()]);
    assert_eq!(vip_holder(&lab, standby).as_deref(), Some(holder.as_str()));
    for n in ["cp-0", "cp-1", "cp-2"] {
        let st = lab.node(n).unwrap().status().unwrap();
        assert_eq!(st.kubernetes.init_node, None, "{n} recorded a forged init");
    }

    // The worker claims the control-plane role (to become a HAProxy
    // backend and a lock claimant) with a control key it made up.
    let wrong_key = lab.dir().join("made-up-control.key");
    std::fs::write(&wrong_key, Key::from_bytes(rand::random()).to_base64()).unwrap();
    std::fs::set_permissions(
        &wrong_key,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let cfg = worker.paths().config();
    let text = std::fs::read_to_string(&cfg).unwrap();
    let claimed = text
        .replace("roles = [\"worker\"]", "roles = [\"control-plane\"]")
        .replace(
            "state_dir",
            &format!("control_key_file = \"{}\"\nstate_dir", wrong_key.display()),
        );
    assert_ne!(claimed, text);
    std::fs::write(&cfg, claimed).unwrap();
    let auth_before: f64 = voters.iter().map(|v| drops(&lab, v, "auth")).sum();
    worker.start().unwrap();
    let roles_of = |observer: &str| -> Option<Vec<String>> {
        let st = lab.node(observer).ok()?.status().ok()?;
        st.members
            .iter()
            .find(|m| m.name == "worker-0" && m.alive)
            .map(|m| m.roles.clone())
    };
    // It is a member (the cluster key is enough for that) ...
    let seen = wait_until(Duration::from_secs(20), Duration::from_millis(50), || {
        ["lb-0", "lb-1", "cp-0", "worker-1"]
            .iter()
            .all(|o| roles_of(o).is_some())
    });
    assert!(seen, "the worker did not come back as a member");
    // ... but nobody believes its claim, the other worker included.
    for o in ["lb-0", "lb-1", "cp-0", "cp-1", "cp-2", "worker-1"] {
        let r = roles_of(o).unwrap_or_default();
        assert_eq!(
            r,
            vec!["worker".to_string()],
            "{o} believes worker-0 is {r:?}"
        );
    }
    // The real control planes' proofs check out with the public key alone.
    let st = lab.node("worker-1").unwrap().status().unwrap();
    for cp in voters {
        let m = st.members.iter().find(|m| m.name == cp).unwrap();
        assert!(
            m.roles.iter().any(|r| r == "control-plane"),
            "worker-1 does not believe {cp}: {m:?}"
        );
    }
    // Its probes under the made-up control key fail authentication.
    let probed = wait_until(Duration::from_secs(5), Duration::from_millis(50), || {
        voters.iter().map(|v| drops(&lab, v, "auth")).sum::<f64>() > auth_before
    });
    assert!(
        probed,
        "the worker's control-tier frames were not refused: auth drops {auth_before} before, {:?} now; worker log:\n{}",
        voters
            .iter()
            .map(|v| drops(&lab, v, "auth"))
            .collect::<Vec<_>>(),
        std::fs::read_to_string(worker.log()).unwrap_or_default()
    );
    assert_eq!(lab.vip_holders().unwrap(), vec![holder]);
}

/// Lease frames from `src` seen in namespace `ns` for `dur`: (destination,
/// datagram), read from an AF_PACKET socket.
fn capture_lease_frames(ns: &str, src: Ipv4Addr, dur: Duration) -> Vec<(SocketAddr, Vec<u8>)> {
    netns::run_in(ns, move || {
        // SAFETY: plain socket calls on a descriptor owned here.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_DGRAM,
                i32::from((libc::ETH_P_IP as u16).to_be()),
            )
        };
        assert!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 20_000,
        };
        // SAFETY: `tv` outlives the call; the size is its size.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            );
        }
        let mut out = Vec::new();
        let mut buf = vec![0u8; 65_536];
        let end = Instant::now() + dur;
        while Instant::now() < end {
            // SAFETY: `buf` is valid for its length.
            let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n <= 0 {
                continue;
            }
            let b = &buf[..n as usize];
            if b.len() < 28 || b[0] >> 4 != 4 || b[9] != 17 {
                continue;
            }
            let ihl = usize::from(b[0] & 0x0f) * 4;
            if b.len() < ihl + 8 + 5 {
                continue;
            }
            let s = Ipv4Addr::new(b[12], b[13], b[14], b[15]);
            let d = Ipv4Addr::new(b[16], b[17], b[18], b[19]);
            let dport = u16::from_be_bytes([b[ihl + 2], b[ihl + 3]]);
            let payload = &b[ihl + 8..];
            if s == src && dport == PORT && payload[..2] == *b"KH" && payload[3] == 1 {
                out.push((SocketAddr::new(d.into(), dport), payload.to_vec()));
            }
        }
        // SAFETY: closing our own descriptor once.
        unsafe { libc::close(fd) };
        out
    })
    .unwrap()
}

/// UDP datagrams the kernel of `node`'s namespace dropped for a full
/// receive buffer.
fn rcvbuf_errors(lab: &Lab, node: &str) -> f64 {
    let ns = lab.node(node).unwrap().ns().to_string();
    netns::run_in(&ns, || {
        let text = std::fs::read_to_string("/proc/thread-self/net/snmp").unwrap();
        let mut udp = text.lines().filter(|l| l.starts_with("Udp: "));
        let names: Vec<&str> = udp.next().unwrap().split_whitespace().collect();
        let values: Vec<&str> = udp.next().unwrap().split_whitespace().collect();
        let i = names.iter().position(|n| *n == "RcvbufErrors").unwrap();
        values[i].parse().unwrap()
    })
    .unwrap()
}

/// From the crash until every live agent agrees on a new holder and only
/// that node has the VIP.
fn failover(lab: &Lab, dead: &str, t0: Instant) -> (Duration, String) {
    let mut holder = String::new();
    let ok = wait_until(Duration::from_secs(20), Duration::from_millis(5), || {
        let mut seen: Option<String> = None;
        for (name, st) in lab.statuses() {
            if name == dead {
                continue;
            }
            let Ok(st) = st else { return false };
            // Nodes without a `[vip]` show no holder.
            let Some(vip) = st.vip else { continue };
            let h = vip.holder;
            match (&seen, h) {
                (_, None) => return false,
                (_, Some(h)) if h == dead => return false,
                (Some(s), Some(h)) if *s != h => return false,
                (_, h) => seen = h,
            }
        }
        let on = lab.vip_holders().unwrap_or_default();
        match seen {
            Some(s) if on == [s.clone()] => {
                holder = s;
                true
            }
            _ => false,
        }
    });
    assert!(ok, "no failover away from `{dead}`");
    (t0.elapsed(), holder)
}

#[test]
fn replayed_lease_frames_of_a_crashed_holder_do_not_delay_failover() {
    let Some(_g) = guard() else { return };
    let lab = Lab::up(LabSpec::new(Topology::Guide).timing(Profile::Fast)).expect("lab up");
    let holder = lab
        .wait_settled(Duration::from_secs(30))
        .expect("converged");
    let h = lab.node(&holder).unwrap();
    let h_ns = h.ns().to_string();
    let h_addr = addr_of(&lab, &holder);
    let voters = ["cp-0", "cp-1", "cp-2"];
    let v_addrs: Vec<SocketAddr> = voters.iter().map(|v| addr_of(&lab, v)).collect();

    // Capture a second of the holder's lease traffic as the voters receive it.
    let src = h.addr();
    let capture: Vec<_> = voters
        .iter()
        .map(|v| {
            let ns = lab.node(v).unwrap().ns().to_string();
            std::thread::spawn(move || capture_lease_frames(&ns, src, Duration::from_secs(1)))
        })
        .collect();
    let captured: Vec<(SocketAddr, Vec<u8>)> = capture
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    assert!(
        captured.len() >= 20,
        "captured only {} lease frames",
        captured.len()
    );
    // Each replayed to its own voter and to the next one.
    let mut replay: Vec<(SocketAddr, Vec<u8>)> = Vec::new();
    for (to, bytes) in &captured {
        let i = v_addrs.iter().position(|v| v == to).unwrap();
        replay.push((*to, bytes.clone()));
        replay.push((v_addrs[(i + 1) % v_addrs.len()], bytes.clone()));
    }
    // Counted by the agents, or lost in a full socket buffer before an
    // agent saw them (the kernel's count, per namespace).
    let dropped = |lab: &Lab| -> f64 {
        voters
            .iter()
            .map(|v| {
                ["replay", "spoofed", "misaddressed", "stale", "tier"]
                    .iter()
                    .map(|r| drops(lab, v, r))
                    .sum::<f64>()
                    + rcvbuf_errors(lab, v)
            })
            .sum()
    };
    let before = dropped(&lab);

    // Crash the holder and replay, over and over until the VIP moved, from
    // another address (a worker's) and from the holder's own (spoofed: the
    // dead agent's port is free).
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let w_addr = SocketAddr::new(lab.node("worker-0").unwrap().addr().into(), 0);
    let w_ns = lab.node("worker-0").unwrap().ns().to_string();
    let t0 = Instant::now();
    h.crash().unwrap();
    let mut threads = Vec::new();
    for (ns, bind) in [(w_ns, w_addr), (h_ns.clone(), h_addr)] {
        let (stop, sent, replay) = (stop.clone(), sent.clone(), replay.clone());
        threads.push(
            netns::spawn_in(&ns, "khl-replay", move || {
                let s = UdpSocket::bind(bind).expect("bind the replayer");
                while !stop.load(Ordering::Relaxed) {
                    for (to, bytes) in &replay {
                        if s.send_to(bytes, to).is_ok() {
                            sent.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
            .unwrap(),
        );
    }
    let (with_replays, successor) = failover(&lab, &holder, t0);
    // Keep replaying a while into the new holder's lease too.
    let t = Instant::now();
    assert!(wait_until(
        Duration::from_secs(2),
        Duration::from_millis(50),
        || { t.elapsed() >= Duration::from_secs(1) }
    ));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(lab.vip_holders().unwrap(), vec![successor.clone()]);
    let sent = sent.load(Ordering::Relaxed) as f64;
    let counted = wait_until(Duration::from_secs(5), Duration::from_millis(50), || {
        dropped(&lab) - before >= sent
    });
    assert!(
        counted,
        "{sent} replayed frames, {} counted as drops",
        dropped(&lab) - before
    );

    // The same failover without replays, for comparison in this run.
    h.start().unwrap();
    let back = wait_until(Duration::from_secs(30), Duration::from_millis(50), || {
        lab.converged().is_ok_and(|x| x == holder)
    });
    assert!(back, "`{holder}` did not take the VIP back");
    let t0 = Instant::now();
    h.crash().unwrap();
    let (baseline, _) = failover(&lab, &holder, t0);
    let lease = Profile::Fast.timing().lease;
    eprintln!("failover with replays {with_replays:?}, without {baseline:?}");
    assert!(
        with_replays <= baseline + 2 * lease,
        "replays delayed the failover: {with_replays:?} against {baseline:?}"
    );
}

#[test]
fn a_probe_from_a_worker_is_answered_at_the_worker_tier() {
    // Workers hold no control key; their status still learns the voters'
    // state from probe replies.
    let Some(_g) = guard() else { return };
    let lab = Lab::up(LabSpec::new(Topology::Guide).timing(Profile::Fast)).expect("lab up");
    let holder = lab
        .wait_settled(Duration::from_secs(30))
        .expect("converged");
    assert!(!holder.is_empty());
    // The worker hears every voter: its cluster-key probes are answered
    // under the cluster key.
    let heard = wait_until(Duration::from_secs(5), Duration::from_millis(50), || {
        lab.node("worker-0")
            .unwrap()
            .status()
            .is_ok_and(|s| s.quorum.reachable == 3)
    });
    assert!(heard, "the worker does not hear the voters");
}
