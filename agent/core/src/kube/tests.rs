//! The driver alone, over hand-made membership views and lock phases.

use super::*;
use crate::membership::{MemberInfo, keys};
use crate::node::Effect;

const T: Timing = Timing::DEFAULT;

fn at(ms: u64) -> Time {
    Time::from_millis(ms)
}

/// `(name, roles, kube, alive)`.
fn view(members: &[(&str, &str, &str, bool)]) -> MembershipView {
    MembershipView::from_incarnations(members.iter().map(|(n, roles, kube, alive)| {
        MemberInfo::from_kv(
            n,
            1,
            "127.0.0.1:7946".parse().unwrap(),
            *alive,
            [(keys::ROLES, *roles), (keys::KUBE, *kube)],
        )
    }))
}

fn facts(control_plane: bool) -> KubeFacts {
    KubeFacts {
        control_plane,
        ready: Ok(()),
        admin_conf: false,
        kubelet_conf: false,
        cni: false,
    }
}

fn driver(f: KubeFacts) -> KubeDriver {
    let mut d = KubeDriver::default();
    d.set_facts(f);
    d
}

/// One `drive`: (wants init, the jobs it started).
fn drive(
    d: &mut KubeDriver,
    now: Time,
    me: &str,
    lock: LockPhase,
    init_node: Option<&str>,
    v: &MembershipView,
) -> (bool, Vec<(JobId, Job)>) {
    let mut out = Out::new(me);
    let ctx = DriveCtx {
        me,
        lock_phase: lock,
        init_node: init_node.map(str::to_string),
        view: v,
        timing: &T,
    };
    let want = d.drive(now, &ctx, &mut out);
    let jobs = out
        .effects()
        .iter()
        .filter_map(|e| match e {
            Effect::StartJob { id, job } => Some((*id, job.clone())),
            _ => None,
        })
        .collect();
    (want, jobs)
}

fn done(d: &mut KubeDriver, now: Time, id: JobId, error: Option<&str>) -> Vec<(JobId, Job)> {
    let mut out = Out::new("x");
    out.next_job = id.0 + 100;
    d.job_done(now, id, error.map(str::to_string), &T, &mut out);
    out.effects()
        .iter()
        .filter_map(|e| match e {
            Effect::StartJob { id, job } => Some((*id, job.clone())),
            _ => None,
        })
        .collect()
}

fn guide(kube: &[(&str, &str)]) -> MembershipView {
    let mut m: Vec<(&str, &str, &str, bool)> = vec![
        ("cp-0", "control-plane", "none", true),
        ("cp-1", "control-plane", "none", true),
        ("cp-2", "control-plane", "none", true),
        ("w-0", "worker", "none", true),
        ("w-1", "worker", "none", true),
    ];
    for (n, k) in kube {
        for x in &mut m {
            if x.0 == *n {
                x.2 = k;
            }
        }
    }
    view(&m)
}

#[test]
fn a_control_plane_without_files_wants_init_once() {
    let mut d = driver(facts(true));
    let v = guide(&[]);
    let (want, jobs) = drive(&mut d, at(0), "cp-0", LockPhase::Idle, None, &v);
    assert!(want);
    assert!(jobs.is_empty());
    for t in 1..20 {
        let (want, jobs) = drive(&mut d, at(t * 100), "cp-0", LockPhase::Idle, None, &v);
        assert!(!want, "WantInit is said once");
        assert!(jobs.is_empty());
    }
}

#[test]
fn no_init_where_this_node_has_files_or_the_host_is_not_ready() {
    let v = guide(&[]);
    for f in [
        KubeFacts {
            admin_conf: true,
            ..facts(true)
        },
        KubeFacts {
            kubelet_conf: true,
            ..facts(true)
        },
        KubeFacts {
            ready: Err("host preparation has not finished yet".into()),
            ..facts(true)
        },
        facts(false),
    ] {
        let mut d = driver(f.clone());
        for t in 0..10 {
            let (want, _) = drive(&mut d, at(t * 100), "cp-0", LockPhase::Idle, None, &v);
            assert!(!want, "{f:?}");
        }
    }
    let mut d = driver(KubeFacts {
        ready: Err("host preparation has not finished yet".into()),
        ..facts(true)
    });
    drive(&mut d, at(0), "cp-0", LockPhase::Idle, None, &v);
    let st = d.status(LockPhase::Idle);
    assert_eq!(st.phase, KubePhase::Waiting);
    assert_eq!(
        st.waiting_for.as_deref(),
        Some("host preparation has not finished yet")
    );
}

#[test]
fn nobody_joins_before_an_init_node_has_joined() {
    let mut d = driver(facts(false));
    let v = guide(&[("cp-0", "initializing")]);
    let (_, jobs) = drive(&mut d, at(0), "w-0", LockPhase::Idle, None, &v);
    assert!(jobs.is_empty());
    let (_, jobs) = drive(&mut d, at(1), "w-0", LockPhase::Idle, Some("cp-0"), &v);
    assert!(jobs.is_empty(), "the init node is not a control plane yet");
    let v = guide(&[("cp-0", "control-plane")]);
    let (_, jobs) = drive(&mut d, at(2), "w-0", LockPhase::Idle, Some("cp-0"), &v);
    assert_eq!(
        jobs,
        [(
            JobId(1),
            Job::FetchJoinMaterial {
                server: "cp-0".into(),
                control_plane: false
            }
        )]
    );
}

#[test]
fn control_planes_join_one_at_a_time_in_name_order_workers_at_once() {
    let lost = LockPhase::Follower;
    // cp-0 initialized. cp-2 waits for cp-1; workers go.
    let v = guide(&[("cp-0", "control-plane")]);
    let mut cp2 = driver(facts(true));
    cp2.want_init_sent = true;
    let (_, jobs) = drive(&mut cp2, at(0), "cp-2", lost, Some("cp-0"), &v);
    assert!(jobs.is_empty());
    assert!(
        cp2.status(lost)
            .waiting_for
            .unwrap()
            .contains("cp-1 joins first")
    );
    let mut cp1 = driver(facts(true));
    cp1.want_init_sent = true;
    let (_, jobs) = drive(&mut cp1, at(0), "cp-1", lost, Some("cp-0"), &v);
    assert!(matches!(
        jobs[..],
        [(
            _,
            Job::FetchJoinMaterial {
                control_plane: true,
                ..
            }
        )]
    ));
    assert_eq!(cp1.kube(lost), "joining");

    // cp-1 is joining: cp-2 still waits, a worker joins beside it.
    let v = guide(&[("cp-0", "control-plane"), ("cp-1", "joining")]);
    let (_, jobs) = drive(&mut cp2, at(10), "cp-2", lost, Some("cp-0"), &v);
    assert!(jobs.is_empty());
    assert!(
        cp2.status(lost)
            .waiting_for
            .unwrap()
            .contains("cp-1 is joining")
    );
    let mut w = driver(facts(false));
    let (_, jobs) = drive(&mut w, at(10), "w-1", LockPhase::Idle, Some("cp-0"), &v);
    assert_eq!(jobs.len(), 1);

    // cp-1 joined: cp-2's turn, from the init node.
    let v = guide(&[("cp-0", "control-plane"), ("cp-1", "control-plane")]);
    let (_, jobs) = drive(&mut cp2, at(20), "cp-2", lost, Some("cp-0"), &v);
    assert_eq!(
        jobs,
        [(
            JobId(1),
            Job::FetchJoinMaterial {
                server: "cp-0".into(),
                control_plane: true
            }
        )]
    );
}

#[test]
fn a_dead_or_failed_better_ranked_control_plane_does_not_hold_the_slot() {
    let lost = LockPhase::Follower;
    let v = view(&[
        ("cp-0", "control-plane", "control-plane", true),
        ("cp-1", "control-plane", "none", false),
        ("cp-2", "control-plane", "none", true),
    ]);
    let mut d = driver(facts(true));
    d.want_init_sent = true;
    let (_, jobs) = drive(&mut d, at(0), "cp-2", lost, Some("cp-0"), &v);
    assert_eq!(jobs.len(), 1, "dead cp-1 does not block");
    let v = view(&[
        ("cp-0", "control-plane", "control-plane", true),
        ("cp-1", "control-plane", "failed", true),
        ("cp-2", "control-plane", "none", true),
    ]);
    let mut d = driver(facts(true));
    d.want_init_sent = true;
    let (_, jobs) = drive(&mut d, at(0), "cp-2", lost, Some("cp-0"), &v);
    assert_eq!(jobs.len(), 1, "failed cp-1 (backing off) does not block");
    // A joining one does, dead or not alive aside.
    let v = view(&[
        ("cp-0", "control-plane", "control-plane", true),
        ("cp-3", "control-plane", "joining", true),
        ("cp-2", "control-plane", "none", true),
    ]);
    let mut d = driver(facts(true));
    d.want_init_sent = true;
    let (_, jobs) = drive(&mut d, at(0), "cp-2", lost, Some("cp-0"), &v);
    assert!(jobs.is_empty(), "a later-ranked one joining holds the slot");
}

#[test]
fn a_joined_node_never_joins_again() {
    let v = guide(&[("cp-0", "control-plane")]);
    // Joined in this run.
    let mut d = driver(facts(false));
    let (_, jobs) = drive(&mut d, at(0), "w-0", LockPhase::Idle, Some("cp-0"), &v);
    let (fetch, _) = jobs[0].clone();
    let next = done(&mut d, at(1), fetch, None);
    let (join, job) = next[0].clone();
    assert_eq!(
        job,
        Job::Join {
            control_plane: false
        }
    );
    assert!(done(&mut d, at(2), join, None).is_empty());
    assert_eq!(d.kube(LockPhase::Idle), "worker");
    assert_eq!(d.status(LockPhase::Idle).phase, KubePhase::Joined);
    for t in 3..50 {
        let (want, jobs) = drive(
            &mut d,
            at(t * 1000),
            "w-0",
            LockPhase::Idle,
            Some("cp-0"),
            &v,
        );
        assert!(!want && jobs.is_empty());
    }
    // Joined in an earlier run (kubelet.conf): no job at all, even when
    // the facts say kubelet.conf vanished later? No: facts are what the
    // node has; with kubelet.conf it is joined.
    let mut d = driver(KubeFacts {
        kubelet_conf: true,
        admin_conf: true,
        ..facts(true)
    });
    for t in 0..50 {
        let (want, jobs) = drive(
            &mut d,
            at(t * 1000),
            "cp-1",
            LockPhase::Idle,
            Some("cp-0"),
            &v,
        );
        assert!(!want && jobs.is_empty());
    }
    assert_eq!(d.kube(LockPhase::Idle), "control-plane");
}

#[test]
fn a_failed_join_is_reset_and_retried_with_growing_back_off() {
    let lost = LockPhase::Follower;
    let v = guide(&[("cp-0", "control-plane")]);
    let mut d = driver(facts(true));
    d.want_init_sent = true;
    let mut now = at(0);
    let mut waits = Vec::new();
    for attempt in 1..=3u32 {
        let (_, jobs) = drive(&mut d, now, "cp-1", lost, Some("cp-0"), &v);
        let [(fetch, Job::FetchJoinMaterial { .. })] = jobs[..] else {
            panic!("attempt {attempt}: {jobs:?}");
        };
        let next = done(&mut d, now, fetch, None);
        let (join, _) = next[0].clone();
        let next = done(
            &mut d,
            now,
            join,
            Some("kubeadm join: exit status 1: etcd learner"),
        );
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].1, Job::Reset, "a failed join is reset first");
        // The reset removes its etcd member: the control plane still holds
        // the join slot (`joining`) until the reset ends.
        assert_eq!(d.kube(lost), "joining");
        let st = d.status(lost);
        assert_eq!(st.phase, KubePhase::Joining);
        assert!(st.last_error.as_ref().unwrap().contains("etcd learner"));
        assert_eq!(st.join_failures, attempt);
        assert!(done(&mut d, now, next[0].0, None).is_empty());
        assert_eq!(d.kube(lost), "failed", "reset done: the slot is free");
        assert_eq!(d.status(lost).phase, KubePhase::Failed);
        let until = d.status(lost).retry_at.expect("backing off");
        assert_eq!(d.next_wakeup(), Some(until));
        waits.push(until.saturating_since(now));
        // Nothing before the back-off ends, not even with the slot free.
        let (_, jobs) = drive(
            &mut d,
            now + Duration::from_millis(1),
            "cp-1",
            lost,
            Some("cp-0"),
            &v,
        );
        assert!(jobs.is_empty());
        assert_eq!(d.kube(lost), "failed", "others see it is not joining");
        now = until;
    }
    assert_eq!(waits[0], base_backoff(&T));
    assert_eq!(waits[1], base_backoff(&T) * 2);
    assert_eq!(waits[2], base_backoff(&T) * 4);
    // The next attempt works: joined, errors cleared.
    let (_, jobs) = drive(&mut d, now, "cp-1", lost, Some("cp-0"), &v);
    let next = done(&mut d, now, jobs[0].0, None);
    assert!(done(&mut d, now, next[0].0, None).is_empty());
    let st = d.status(lost);
    assert_eq!(
        (st.phase, st.last_error, st.join_failures),
        (KubePhase::Joined, None, 0)
    );
}

#[test]
fn a_failed_reset_is_run_again_before_the_next_join() {
    let lost = LockPhase::Follower;
    let v = guide(&[("cp-0", "control-plane")]);
    let mut d = driver(facts(false));
    let (_, jobs) = drive(&mut d, at(0), "w-0", lost, Some("cp-0"), &v);
    let next = done(&mut d, at(0), jobs[0].0, None);
    let next = done(&mut d, at(0), next[0].0, Some("boom"));
    assert!(done(&mut d, at(0), next[0].0, Some("reset: exit status 1")).is_empty());
    assert!(
        d.status(lost)
            .last_error
            .unwrap()
            .contains("reset failed too")
    );
    let until = d.status(lost).retry_at.unwrap();
    let (_, jobs) = drive(&mut d, until, "w-0", lost, Some("cp-0"), &v);
    assert_eq!(jobs[0].1, Job::Reset);
}

#[test]
fn join_material_failure_backs_off_without_reset() {
    let v = guide(&[("cp-0", "control-plane")]);
    let mut d = driver(facts(false));
    let (_, jobs) = drive(&mut d, at(0), "w-0", LockPhase::Idle, Some("cp-0"), &v);
    assert!(
        done(
            &mut d,
            at(0),
            jobs[0].0,
            Some("join material channel not built")
        )
        .is_empty()
    );
    assert_eq!(d.kube(LockPhase::Idle), "none", "not joining, not failed");
    let st = d.status(LockPhase::Idle);
    assert_eq!(st.phase, KubePhase::Waiting);
    assert!(
        st.last_error
            .unwrap()
            .contains("join material channel not built")
    );
    let until = st.retry_at.unwrap();
    let (_, jobs) = drive(&mut d, until, "w-0", LockPhase::Idle, Some("cp-0"), &v);
    assert!(matches!(jobs[0].1, Job::FetchJoinMaterial { .. }));
}

#[test]
fn leftover_files_without_kubelet_conf_are_reset_before_joining() {
    let v = guide(&[("cp-0", "control-plane")]);
    let mut d = driver(KubeFacts {
        admin_conf: true,
        ..facts(true)
    });
    let (want, jobs) = drive(&mut d, at(0), "cp-1", LockPhase::Idle, Some("cp-0"), &v);
    assert!(!want, "files here: no init");
    assert_eq!(jobs[0].1, Job::Reset);
}

#[test]
fn the_init_node_applies_the_cni_manifest_once_and_retries_a_failure() {
    let v = guide(&[]);
    let mut d = driver(KubeFacts {
        cni: true,
        ..facts(true)
    });
    assert!(drive(&mut d, at(0), "cp-0", LockPhase::Idle, None, &v).0);
    assert_eq!(d.kube(LockPhase::Initializing), "initializing");
    d.init_done(None, true, None);
    let (_, jobs) = drive(
        &mut d,
        at(1),
        "cp-0",
        LockPhase::Initialized,
        Some("cp-0"),
        &v,
    );
    assert_eq!(jobs[0].1, Job::ApplyCni);
    assert_eq!(d.kube(LockPhase::Initialized), "control-plane");
    assert!(done(&mut d, at(1), jobs[0].0, Some("kubectl: exit status 1")).is_empty());
    let retry = d.next_wakeup().unwrap();
    assert!(
        drive(
            &mut d,
            at(2),
            "cp-0",
            LockPhase::Initialized,
            Some("cp-0"),
            &v
        )
        .1
        .is_empty()
    );
    let (_, jobs) = drive(
        &mut d,
        retry,
        "cp-0",
        LockPhase::Initialized,
        Some("cp-0"),
        &v,
    );
    assert_eq!(jobs[0].1, Job::ApplyCni);
    assert!(done(&mut d, retry, jobs[0].0, None).is_empty());
    assert!(d.status(LockPhase::Initialized).cni_applied);
    for t in 0..20 {
        let (_, jobs) = drive(
            &mut d,
            retry + Duration::from_secs(t),
            "cp-0",
            LockPhase::Initialized,
            Some("cp-0"),
            &v,
        );
        assert!(jobs.is_empty(), "applied once");
    }
    assert_eq!(d.next_wakeup(), None);
}

#[test]
fn an_init_of_unknown_outcome_is_checked() {
    let v = guide(&[]);
    let mut d = driver(facts(true));
    let (want, jobs) = drive(
        &mut d,
        at(0),
        "cp-0",
        LockPhase::CheckNeeded,
        Some("cp-0"),
        &v,
    );
    assert!(!want);
    assert_eq!(jobs[0].1, Job::CheckInit);
    assert_eq!(d.kube(LockPhase::CheckNeeded), "initializing");
    let (_, again) = drive(
        &mut d,
        at(1),
        "cp-0",
        LockPhase::CheckNeeded,
        Some("cp-0"),
        &v,
    );
    assert!(again.is_empty(), "one check at a time");
    d.init_done(Some(jobs[0].0), false, None);
    assert_eq!(d.status(LockPhase::Failed).phase, KubePhase::Failed);
    assert!(
        d.status(LockPhase::Failed)
            .last_error
            .unwrap()
            .contains("kubeadm reset -f")
    );
}

#[test]
fn kubelet_conf_left_by_a_failed_join_is_not_joined() {
    let lost = LockPhase::Follower;
    let v = guide(&[("cp-0", "control-plane")]);
    let mut d = driver(facts(true));
    d.want_init_sent = true;
    let (_, jobs) = drive(&mut d, at(0), "cp-1", lost, Some("cp-0"), &v);
    let next = done(&mut d, at(0), jobs[0].0, None);
    // The join wrote kubelet.conf, then failed; the shell reports the file.
    d.set_facts(KubeFacts {
        kubelet_conf: true,
        admin_conf: true,
        ..facts(true)
    });
    let reset = done(&mut d, at(0), next[0].0, Some("etcd: learner not promoted"));
    assert_eq!(reset[0].1, Job::Reset);
    assert_eq!(
        d.kube(lost),
        "joining",
        "not joined: its reset holds the slot"
    );
    assert_eq!(d.status(lost).phase, KubePhase::Joining);
    // Reset failed to clean: the files are still there; the next attempt
    // resets again instead of counting the node as joined.
    assert!(done(&mut d, at(0), reset[0].0, None).is_empty());
    let until = d.status(lost).retry_at.unwrap();
    let (_, jobs) = drive(&mut d, until, "cp-1", lost, Some("cp-0"), &v);
    assert_eq!(jobs[0].1, Job::Reset, "files still there: reset first");
}

#[test]
fn a_control_plane_resetting_holds_the_join_slot_a_worker_does_not() {
    let lost = LockPhase::Follower;
    let v = guide(&[("cp-0", "control-plane")]);
    // cp-1's join failed after its etcd member was added: its reset runs.
    let mut cp1 = driver(facts(true));
    cp1.want_init_sent = true;
    let (_, jobs) = drive(&mut cp1, at(0), "cp-1", lost, Some("cp-0"), &v);
    let next = done(&mut cp1, at(0), jobs[0].0, None);
    let reset = done(&mut cp1, at(0), next[0].0, Some("kubelet-wait-bootstrap"));
    assert_eq!(reset[0].1, Job::Reset);
    // cp-2, seeing cp-1 as it publishes itself now, waits for the slot.
    let seen = guide(&[("cp-0", "control-plane"), ("cp-1", cp1.kube(lost))]);
    let mut cp2 = driver(facts(true));
    cp2.want_init_sent = true;
    let (_, jobs) = drive(&mut cp2, at(0), "cp-2", lost, Some("cp-0"), &seen);
    assert!(jobs.is_empty(), "cp-2 joined while cp-1 reset: {jobs:?}");
    assert_eq!(
        cp2.status(lost).waiting_for.as_deref(),
        Some("the control-plane join slot: cp-1 is joining")
    );
    // The reset ends: cp-1 backs off as `failed`, and cp-2 may join.
    assert!(done(&mut cp1, at(0), reset[0].0, None).is_empty());
    let seen = guide(&[("cp-0", "control-plane"), ("cp-1", cp1.kube(lost))]);
    let (_, jobs) = drive(&mut cp2, at(1), "cp-2", lost, Some("cp-0"), &seen);
    assert!(
        matches!(jobs[..], [(_, Job::FetchJoinMaterial { .. })]),
        "{jobs:?}"
    );
    // A worker's reset is no membership change: `failed`, as before.
    let mut w = driver(facts(false));
    let (_, jobs) = drive(&mut w, at(0), "w-0", lost, Some("cp-0"), &v);
    let next = done(&mut w, at(0), jobs[0].0, None);
    let reset = done(&mut w, at(0), next[0].0, Some("boom"));
    assert_eq!(reset[0].1, Job::Reset);
    assert_eq!(w.kube(lost), "failed");
}

#[test]
fn failure_summary_keeps_kubeadms_phase_error_and_redacts_secrets() {
    let e = "`/usr/bin/kubeadm join --config /var/lib/kubeha/kubeadm/join.yaml` failed \
             (exit status: 1); stderr: [preflight] Running pre-flight checks\n\
             W1202 00:01:02.000 warning about abcdef.0123456789abcdef\n\
             error execution phase kubelet-wait-bootstrap: the TLS Bootstrap of node \"cp-1\" failed\n\
             \tkey 1111111111111111111111111111111111111111111111111111111111111111 refused\n\
             To see the stack trace of this error execute with --v=5 or higher";
    assert_eq!(
        failure_summary(e),
        "`/usr/bin/kubeadm join --config /var/lib/kubeha/kubeadm/join.yaml` failed \
         (exit status: 1): error execution phase kubelet-wait-bootstrap: the TLS Bootstrap \
         of node \"cp-1\" failed key <redacted> refused"
    );
    // No phase line: the last line that is not the stack-trace hint.
    assert_eq!(
        failure_summary("`kubeadm reset -f` failed (exit status: 1); stderr: one\ntwo\n"),
        "`kubeadm reset -f` failed (exit status: 1): two"
    );
    assert_eq!(
        failure_summary("`kubeadm init` failed (exit status: 1); stderr: "),
        "`kubeadm init` failed (exit status: 1); stderr: (empty)"
    );
    // Not a runner error: summarised as it is.
    assert_eq!(
        failure_summary("join server said no"),
        "join server said no"
    );
    // Long output is cut.
    let long = format!(
        "`k` failed; stderr: error execution phase x: {}",
        "y".repeat(1000)
    );
    let cut = failure_summary(&long);
    assert!(
        cut.starts_with("`k` failed: error execution phase x: yyy"),
        "{cut}"
    );
    assert!(cut.ends_with('…'), "{cut}");
    assert_eq!(cut.chars().count(), "`k` failed: ".len() + SUMMARY_MAX + 1);
    // Tokens and keys anywhere; words that only contain such shapes stay.
    assert_eq!(
        redact_secrets(
            "t=abcdef.0123456789abcdef, id abcdefg.0123456789abcdef, sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef, member 8e9e05c52164694d"
        ),
        "t=<redacted>, id abcdefg.0123456789abcdef, sha256:<redacted>, member 8e9e05c52164694d"
    );
}

#[test]
fn an_init_failure_carries_the_commands_summary() {
    let mut d = driver(facts(true));
    d.init_done(
        None,
        false,
        Some("`kubeadm init --config /x/init.yaml --upload-certs` failed (exit status: 1); stderr: error execution phase preflight: [preflight] Some fatal errors occurred:\n\t[ERROR Port-6443]: Port 6443 is in use\nTo see the stack trace of this error execute with --v=5 or higher".into()),
    );
    assert_eq!(
        d.status(LockPhase::Follower).last_error.as_deref(),
        Some(
            "kubeadm init failed: `kubeadm init --config /x/init.yaml --upload-certs` failed (exit status: 1): \
             error execution phase preflight: [preflight] Some fatal errors occurred: [ERROR Port-6443]: Port 6443 is in use"
        )
    );
}
