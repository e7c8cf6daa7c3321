//! The executor over fakes: ordering, fail-stop, the VIP-fault path, jobs.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use kubeha_core::membership::MemberInfo;
use kubeha_core::node::{Job, JobId, Node, NodeParams};
use kubeha_core::time::Time;
use kubeha_core::timing::Timing;
use kubeha_core::wire::LeaseFree;
use kubeha_vip::{Change, VipError};

use super::*;

/// What the fakes saw, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Ev {
    AddStart,
    AddDone,
    AddFailed,
    RemoveStart,
    RemoveDone,
    RemoveFailed,
    Send(String),
    Publish(&'static str, String),
    Persist,
    Job(JobId),
}

type Log = Arc<Mutex<Vec<Ev>>>;

fn push(log: &Log, e: Ev) {
    log.lock().unwrap().push(e);
}

#[derive(Debug)]
struct FakeVip {
    log: Log,
    fail_add: Arc<AtomicBool>,
    fail_remove: bool,
}

fn os_err() -> std::io::Error {
    std::io::Error::from_raw_os_error(libc::EMFILE)
}

#[async_trait]
impl VipProvider for FakeVip {
    async fn acquire(&self) -> Result<Change, VipError> {
        push(&self.log, Ev::AddStart);
        // Slow, so that an executor that did not await it would be caught.
        tokio::time::sleep(Duration::from_millis(20)).await;
        if self.fail_add.load(Ordering::SeqCst) {
            push(&self.log, Ev::AddFailed);
            return Err(VipError::Add {
                interface: "eth0".into(),
                cidr: "198.18.0.100/32".into(),
                error: os_err(),
            });
        }
        push(&self.log, Ev::AddDone);
        Ok(Change::Changed)
    }
    async fn release(&self) -> Result<Change, VipError> {
        push(&self.log, Ev::RemoveStart);
        tokio::time::sleep(Duration::from_millis(20)).await;
        if self.fail_remove {
            push(&self.log, Ev::RemoveFailed);
            return Err(VipError::Remove {
                interface: "eth0".into(),
                cidr: "198.18.0.100/32".into(),
                error: os_err(),
            });
        }
        push(&self.log, Ev::RemoveDone);
        Ok(Change::Changed)
    }
    async fn is_held(&self) -> Result<bool, VipError> {
        Ok(false)
    }
    async fn announce(&self) -> Result<(), VipError> {
        Ok(())
    }
    async fn refresh(&self) -> Result<(), VipError> {
        Ok(())
    }
    fn describe(&self) -> String {
        "fake 198.18.0.100/32".into()
    }
}

struct FakeSender(Log);
#[async_trait]
impl PeerSender for FakeSender {
    async fn send(
        &self,
        addr: SocketAddr,
        _to: &str,
        _member_tier: bool,
        msg: &PeerMsg,
    ) -> std::io::Result<()> {
        assert_eq!(addr, peer_addr());
        push(&self.0, Ev::Send(msg.kind().to_string()));
        Ok(())
    }
}

struct FakePublisher(Log);
#[async_trait]
impl Publisher for FakePublisher {
    async fn publish(&self, key: &'static str, value: String) {
        push(&self.0, Ev::Publish(key, value));
    }
}

struct FakeStore(Log, bool);
impl Persister for FakeStore {
    fn persist(&mut self, _p: &Persisted) -> Result<(), FailStop> {
        if self.1 {
            return Err(FailStop("disk full".into()));
        }
        push(&self.0, Ev::Persist);
        Ok(())
    }
}

struct FakeJobs(Log);
impl JobSink for FakeJobs {
    fn start(&mut self, id: JobId, _job: Job) {
        push(&self.0, Ev::Job(id));
    }
    fn cancel_all(&mut self) {}
}

struct Rig {
    log: Log,
    fail_add: Arc<AtomicBool>,
    fx: Effects,
}

fn rig(fail_remove: bool, fail_persist: bool) -> Rig {
    let log: Log = Arc::default();
    let fail_add = Arc::new(AtomicBool::new(false));
    let fx = Effects::new(
        Some(Box::new(FakeVip {
            log: log.clone(),
            fail_add: fail_add.clone(),
            fail_remove,
        })),
        Box::new(FakeSender(log.clone())),
        Box::new(FakePublisher(log.clone())),
        Box::new(FakeStore(log.clone(), fail_persist)),
        Box::new(FakeJobs(log.clone())),
        Metrics::new("n", "0"),
    );
    Rig { log, fail_add, fx }
}

impl Rig {
    fn events(&self) -> Vec<Ev> {
        self.log.lock().unwrap().clone()
    }
}

fn peer_addr() -> SocketAddr {
    "198.18.0.11:7946".parse().unwrap()
}

fn view() -> MembershipView {
    MembershipView::from_incarnations(vec![MemberInfo::from_kv("v1", 1, peer_addr(), true, [])])
}

fn free_to_v1() -> Effect {
    Effect::Send {
        to: "v1".into(),
        msg: PeerMsg::LeaseFree(LeaseFree { from: "n".into() }),
    }
}

fn publish(key: &'static str, v: &str) -> Effect {
    Effect::Publish {
        key,
        value: v.into(),
    }
}

#[tokio::test]
async fn remove_vip_is_complete_before_a_later_send() {
    let mut r = rig(false, false);
    let fb =
        r.fx.execute(vec![Effect::RemoveVip, free_to_v1()], &view())
            .await
            .unwrap();
    assert!(fb.is_empty());
    assert_eq!(
        r.events(),
        [
            Ev::RemoveStart,
            Ev::RemoveDone,
            Ev::Send("lease_free".into())
        ]
    );
}

#[tokio::test]
async fn persist_is_done_before_a_later_send() {
    let mut r = rig(false, false);
    r.fx.execute(
        vec![Effect::Persist(Persisted::default()), free_to_v1()],
        &view(),
    )
    .await
    .unwrap();
    assert_eq!(r.events(), [Ev::Persist, Ev::Send("lease_free".into())]);
}

/// S1 in the shell: a VIP that cannot be removed stops the agent before
/// anything after the removal happens (no release leaves).
#[tokio::test]
async fn a_failed_removal_is_a_fail_stop_before_the_next_effect() {
    let mut r = rig(true, false);
    let e =
        r.fx.execute(
            vec![Effect::RemoveVip, free_to_v1(), publish(keys::VIP, "0")],
            &view(),
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("cannot remove the VIP"), "{e}");
    let ev = r.events();
    assert_eq!(
        ev.iter().filter(|e| **e == Ev::RemoveFailed).count(),
        3,
        "retried: {ev:?}"
    );
    assert!(
        ev.iter()
            .all(|e| !matches!(e, Ev::Send(_) | Ev::Publish(..))),
        "{ev:?}"
    );
}

#[tokio::test]
async fn a_failed_persist_is_a_fail_stop_before_the_send() {
    let mut r = rig(false, true);
    let e =
        r.fx.execute(
            vec![Effect::Persist(Persisted::default()), free_to_v1()],
            &view(),
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("disk full"));
    assert!(r.events().is_empty(), "{:?}", r.events());
}

/// A failed `AddVip` is reported to the core as `VipFault` after the batch
/// and the batch's `vip=1` is not published; the rest of the batch runs.
#[tokio::test]
async fn a_failed_add_reports_vip_fault_and_publishes_no_held_vip() {
    let mut r = rig(false, false);
    r.fail_add.store(true, Ordering::SeqCst);
    let fb =
        r.fx.execute(
            vec![
                Effect::AddVip,
                publish(keys::VIP, "1"),
                free_to_v1(),
                publish(keys::LB, "healthy"),
            ],
            &view(),
        )
        .await
        .unwrap();
    assert!(matches!(fb[..], [Input::VipFault]), "{fb:?}");
    assert_eq!(
        r.events(),
        [
            Ev::AddStart,
            Ev::AddFailed,
            Ev::Send("lease_free".into()),
            Ev::Publish(keys::LB, "healthy".into()),
        ]
    );
    assert!(!r.fx.vip_up);
    // A working add publishes as asked.
    r.fail_add.store(false, Ordering::SeqCst);
    let fb =
        r.fx.execute(vec![Effect::AddVip, publish(keys::VIP, "1")], &view())
            .await
            .unwrap();
    assert!(fb.is_empty());
    assert_eq!(
        r.events()[4..],
        [
            Ev::AddStart,
            Ev::AddDone,
            Ev::Publish(keys::VIP, "1".into())
        ]
    );
    assert!(r.fx.vip_up);
}

#[tokio::test]
async fn jobs_start_in_order_and_are_not_awaited() {
    let mut r = rig(false, false);
    r.fx.execute(
        vec![
            Effect::Persist(Persisted::default()),
            Effect::StartJob {
                id: JobId(1),
                job: Job::RunInit,
            },
            free_to_v1(),
        ],
        &view(),
    )
    .await
    .unwrap();
    assert_eq!(
        r.events(),
        [
            Ev::Persist,
            Ev::Job(JobId(1)),
            Ev::Send("lease_free".into())
        ]
    );
}

#[tokio::test]
async fn a_send_to_an_unknown_peer_is_skipped() {
    let mut r = rig(false, false);
    r.fx.execute(
        vec![Effect::Send {
            to: "nobody".into(),
            msg: PeerMsg::LeaseFree(LeaseFree { from: "n".into() }),
        }],
        &MembershipView::default(),
    )
    .await
    .unwrap();
    assert!(r.events().is_empty());
}

/// The whole path with the real core: a single-voter candidate wins the
/// lease, its `AddVip` fails, the executor feeds `VipFault` back (after the
/// batch), and the core lets go. The node never publishes `vip=1` and the
/// VIP is removed after the failed add; with the fault gone it takes the
/// VIP and publishes it.
#[tokio::test]
async fn vip_fault_round_trip_through_the_core() {
    let mut r = rig(false, false);
    r.fail_add.store(true, Ordering::SeqCst);
    let timing = Timing::FAST;
    let mut now = Time::from_millis(1000);
    let (mut node, effects) = Node::new(
        NodeParams {
            name: "n".into(),
            voters: vec!["n".into()],
            timing,
            vip_priority: Some(1),
            incarnation: 7,
            persisted: None,
            cloud: None,
        },
        now,
    );
    let view = MembershipView::default();
    let mut inputs: VecDeque<Input> = r.fx.execute(effects, &view).await.unwrap().into();
    let end = now + timing.lease * 40;
    let mut fault_at = None;
    while now < end {
        let input = match inputs.pop_front() {
            Some(i) => i,
            None => {
                now = node.next_wakeup().unwrap().max(now);
                Input::Tick
            }
        };
        if matches!(input, Input::VipFault) && fault_at.is_none() {
            fault_at = Some(now);
            // Later adds work: the back-off must end by itself.
            r.fail_add.store(false, Ordering::SeqCst);
        }
        let fx = node.step(now, input);
        inputs.extend(r.fx.execute(fx, &view).await.unwrap());
        if r.fx.vip_up {
            break;
        }
    }
    let fault_at = fault_at.expect("the failed add was reported");
    let ev = r.events();
    let failed = ev.iter().position(|e| *e == Ev::AddFailed).unwrap();
    let vip1 = Ev::Publish(keys::VIP, "1".into());
    let first_vip1 = ev.iter().position(|e| *e == vip1);
    let removed_after = ev[failed..].iter().position(|e| *e == Ev::RemoveDone);
    assert!(removed_after.is_some(), "removed after the fault: {ev:?}");
    assert!(
        first_vip1.is_some_and(|p| p > failed + removed_after.unwrap()),
        "vip=1 only once the VIP is really up: {ev:?}"
    );
    assert!(r.fx.vip_up, "back after the fault: {ev:?}");
    assert!(
        now >= fault_at + timing.lease * kubeha_core::node::VIP_FAULT_LEASES,
        "stood aside for the back-off ({now:?} vs {fault_at:?})"
    );
}
