//! The cloud assignment as a lease input (`crate::lease::cloud`), through
//! whole nodes: a holder whose assignment keeps failing lets the lease go
//! to a standby, never preempts it back, and S1 (checked by `Net::apply` on
//! every effect) holds throughout.

use super::*;
use crate::lease::{Assignment, CloudTiming};

const TIMEOUT: Duration = Duration::from_secs(5);

fn cluster() -> Net {
    let mut net = Net::with_cloud(
        &["v1", "v2", "v3"],
        &[("lb1", 200), ("lb2", 100)],
        &[],
        Some(CloudTiming {
            assign_timeout: TIMEOUT,
        }),
    );
    net.view(&[("lb1", Some(200), true), ("lb2", Some(100), true)]);
    net
}

/// How the cloud answers a node's assignment in these tests.
#[derive(Clone, Copy)]
enum Cloud {
    Works,
    Transient,
    Permanent,
}

/// Run for `d` in 50 ms slices; after each, every candidate hears what its
/// provider would say (as the shell does after each step and gossip round).
fn run(net: &mut Net, d: Duration, cloud: &dyn Fn(&str) -> Cloud) {
    let until = net.now + d;
    while net.now < until {
        net.run_for(ms(50));
        for n in ["lb1", "lb2"] {
            if net.down.contains(n) {
                continue;
            }
            let a = if net.nodes[n].holds_vip(net.now) {
                match cloud(n) {
                    Cloud::Works => Assignment::Assigned,
                    Cloud::Transient => Assignment::Failing { permanent: false },
                    Cloud::Permanent => Assignment::Failing { permanent: true },
                }
            } else {
                Assignment::Idle
            };
            net.input(n, Input::VipAssignment(a));
        }
    }
}

fn cloud_status(net: &Net, n: &str) -> crate::lease::CloudStatus {
    net.nodes[n].status(net.now).cloud.expect("a cloud guard")
}

#[test]
fn a_holder_whose_assignment_never_completes_hands_over_and_does_not_preempt_back() {
    let mut net = cluster();
    let lb1_fails = |n: &str| {
        if n == "lb1" {
            Cloud::Transient
        } else {
            Cloud::Works
        }
    };
    run(&mut net, ms(2000), &lb1_fails);
    assert_eq!(net.holder().as_deref(), Some("lb1"));
    let held_at = net
        .log
        .iter()
        .find(|(_, n, e)| n == "lb1" && *e == Effect::AddVip)
        .unwrap()
        .0;
    // Just before the bound: still the holder.
    let before = held_at + TIMEOUT - ms(100);
    let wait = before.saturating_since(net.now);
    run(&mut net, wait, &lb1_fails);
    assert_eq!(net.holder().as_deref(), Some("lb1"));
    run(&mut net, ms(1000), &lb1_fails);
    assert_eq!(
        net.holder().as_deref(),
        Some("lb2"),
        "the standby took over"
    );
    let st = cloud_status(&net, "lb1");
    assert_eq!(st.fault, Some(crate::lease::CloudFault::Timeout));
    assert!(st.out_until.is_some() && st.demoted, "{st:?}");
    let lb1 = net.nodes["lb1"].status(net.now);
    assert!(!lb1.vip_candidate && lb1.last_vip_drop == Some("ineligible"));
    // lb1 outranks lb2 (200 vs 100) but after its fault asks with priority
    // 0: long after its stand-aside it has not preempted lb2.
    run(
        &mut net,
        TIMEOUT * 2 + Timing::DEFAULT.preempt_after * 3,
        &lb1_fails,
    );
    assert!(net.nodes["lb1"].status(net.now).vip_candidate);
    assert_eq!(net.holder().as_deref(), Some("lb2"));
    // lb2 goes away: the demoted lb1 takes the free lease (it is the only
    // one left), fails again and stands aside twice as long.
    net.crash("lb2");
    let crashed = net.now;
    run(&mut net, ms(2000), &lb1_fails);
    assert_eq!(net.holder().as_deref(), Some("lb1"));
    run(&mut net, TIMEOUT + ms(500), &lb1_fails);
    assert_eq!(net.holder(), None);
    let st = cloud_status(&net, "lb1");
    assert_eq!(st.faults, 2);
    let aside = st.out_until.unwrap().saturating_since(net.now);
    assert!(aside > TIMEOUT && aside <= TIMEOUT * 2, "{aside:?}");
    assert!(net.vip_added_after(crashed).is_some());
}

#[test]
fn a_permanent_failure_hands_over_at_once() {
    let mut net = cluster();
    run(&mut net, ms(2000), &|_| Cloud::Works);
    assert_eq!(net.holder().as_deref(), Some("lb1"));
    // The token is revoked and the IP moved away by hand: the re-check and
    // the new assign get 401. lb1 already had a working assignment in this
    // hold, so it keeps the lease (the IP was routed here).
    run(&mut net, ms(2000), &|n| {
        if n == "lb1" {
            Cloud::Permanent
        } else {
            Cloud::Works
        }
    });
    assert_eq!(net.holder().as_deref(), Some("lb1"));
    // Drained and undrained: a new hold, whose first answer is a 401.
    net.input("lb1", Input::Drain(true));
    run(&mut net, ms(500), &|_| Cloud::Works);
    assert_eq!(net.holder().as_deref(), Some("lb2"));
    net.input("lb2", Input::Drain(true));
    net.input("lb1", Input::Drain(false));
    run(&mut net, ms(1000), &|_| Cloud::Permanent);
    let faulted = cloud_status(&net, "lb1");
    assert_eq!(faulted.fault, Some(crate::lease::CloudFault::Permanent));
    assert!(
        net.log
            .iter()
            .rev()
            .take_while(|(_, n, e)| !(n == "lb1" && *e == Effect::AddVip))
            .any(|(_, n, e)| n == "lb1" && *e == Effect::RemoveVip),
        "let go well before the bound"
    );
}

#[test]
fn a_flapping_api_that_completes_within_the_bound_keeps_the_holder() {
    let mut net = cluster();
    // lb1's first seconds of holding see 5xx answers, then it is assigned.
    let start = net.now;
    let flaky = move |n: &str, now: Time| {
        if n == "lb1" && now < start + ms(4000) {
            Cloud::Transient
        } else {
            Cloud::Works
        }
    };
    for _ in 0..((TIMEOUT.as_millis() as u64 + 8000) / 500) {
        let now = net.now;
        run(&mut net, ms(500), &|n| flaky(n, now));
    }
    assert_eq!(net.holder().as_deref(), Some("lb1"));
    let st = cloud_status(&net, "lb1");
    assert_eq!(st.faults_total, 0, "{st:?}");
    assert_eq!(st.assignment, Assignment::Assigned);
    assert!(
        net.log
            .iter()
            .all(|(_, n, e)| !(n == "lb2" && *e == Effect::AddVip)),
        "the lease never moved"
    );
}

#[test]
fn without_a_cloud_guard_reports_are_ignored() {
    let mut net = Net::new(&["v1", "v2", "v3"], &[("lb1", 200), ("lb2", 100)], &[]);
    net.run_for(ms(2000));
    assert_eq!(net.holder().as_deref(), Some("lb1"));
    net.input(
        "lb1",
        Input::VipAssignment(Assignment::Failing { permanent: true }),
    );
    net.run_for(TIMEOUT * 3);
    assert_eq!(net.holder().as_deref(), Some("lb1"));
    assert_eq!(net.nodes["lb1"].status(net.now).cloud, None);
}
