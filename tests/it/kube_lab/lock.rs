//! The bootstrap lock end to end: its holder killed mid-init, an operator's
//! release of a holder gone for good, two control planes racing for it.

use std::fs;
use std::io::Write;
use std::time::Duration;

use crate::support::{bin, wait_until};

use super::bed::*;

/// A bed of 3 control planes and 1 worker on `block` whose `kubeadm init`
/// waits 4 s before fake-kubeadm starts, all started in random order; the
/// node that reports `initializing` (the lock holder).
fn slowed_init(block: u8) -> (Bed, usize) {
    let mut bed = new_bed(block, 3, 4);
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
    (bed, holder.unwrap())
}

/// The lock holder's agent is killed (SIGKILL) while its `kubeadm init`
/// runs (slowed down to 4 s before fake-kubeadm starts). kubeadm dies with
/// it (PR_SET_PDEATHSIG), so nothing is left; the restarted agent checks
/// the node, finds it clean and runs init again: still exactly one init in
/// the cluster's life, on that node, and every node joins.
#[test]
fn the_lock_holder_killed_mid_init_never_leads_to_a_second_init() {
    let (mut bed, h) = slowed_init(43);
    // Killed while its kubeadm init runs (inside the slowed wrapper).
    let started = bed.c.node_dir(h).join("init-started");
    assert!(
        wait_until(Duration::from_secs(30), || started.exists()).is_some(),
        "{}'s kubeadm init never started:\n{}",
        bed.c.names[h],
        dump(&bed)
    );
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
    let (mut bed, h) = slowed_init(44);
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
