//! Nodes that join after the init's secrets expired: a control plane after
//! the certificate key (2 h), a worker after the bootstrap token (24 h).

use std::fs;
use std::time::Duration;

use crate::support::wait_until;

use super::bed::*;
use super::bootstrap_with;

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
