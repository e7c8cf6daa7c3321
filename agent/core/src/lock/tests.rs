use std::collections::{BTreeMap, BTreeSet};

use super::*;
use crate::node::Out;
use crate::wire::{LockOp, LockReply, LockRequest, LockWithdraw, PeerMsg, Refusal, ReleaseRefusal};

const DIGEST: u64 = 77;

fn voters() -> Vec<String> {
    ["v1", "v2", "v3"].iter().map(|s| s.to_string()).collect()
}

fn ms(v: u64) -> Time {
    Time::from_millis(v)
}

/// A node with a state file that says the voter part is ready.
fn ready() -> Option<Persisted> {
    Some(Persisted {
        version: PERSISTED_VERSION,
        voter_ready: true,
        ..Persisted::default()
    })
}

fn lock(name: &str, inc: u64, persisted: Option<Persisted>) -> Lock {
    Lock::new(
        name,
        inc,
        &voters(),
        DIGEST,
        Timing::DEFAULT,
        persisted,
        ms(0),
    )
    .0
}

fn id(name: &str, inc: u64, round: u32) -> ClaimId {
    ClaimId {
        name: name.into(),
        incarnation: inc,
        round,
    }
}

fn req(op: LockOp, id: &ClaimId) -> LockRequest {
    LockRequest {
        from: id.name.clone(),
        op,
        id: id.clone(),
        voters: DIGEST,
        attempt: 0,
    }
}

/// Ask voter `l` and return its reply and the effects in order.
fn ask(l: &mut Lock, now: Time, r: LockRequest) -> (LockReply, Vec<Effect>) {
    let mut out = Out::new(&l.me);
    l.on_request(now, &r, &mut out);
    let reply = out
        .effects
        .iter()
        .find_map(|e| match e {
            Effect::Send {
                msg: PeerMsg::LockReply(r),
                ..
            } => Some(r.clone()),
            _ => None,
        })
        .expect("a reply");
    (reply, out.effects)
}

#[test]
fn vote_is_persisted_before_the_reply() {
    let mut v = lock("v1", 1, ready());
    let (r, effects) = ask(&mut v, ms(10), req(LockOp::Claim, &id("a", 1, 1)));
    assert!(r.ok);
    assert!(
        matches!(effects[0], Effect::Persist(ref p) if p.vote.as_ref().unwrap().id == id("a", 1, 1))
    );
    assert!(matches!(effects[1], Effect::Send { .. }));
    // Commit is persisted before its reply too.
    let (r, effects) = ask(&mut v, ms(11), req(LockOp::Commit, &id("a", 1, 1)));
    assert!(r.ok);
    assert!(matches!(effects[0], Effect::Persist(ref p) if p.vote.as_ref().unwrap().committed));
    assert!(matches!(effects[1], Effect::Send { .. }));
    // A repeated commit changes nothing and writes nothing.
    let (r, effects) = ask(&mut v, ms(12), req(LockOp::Commit, &id("a", 1, 1)));
    assert!(r.ok);
    assert_eq!(effects.len(), 1);
}

#[test]
fn one_vote_per_voter() {
    let mut v = lock("v1", 1, ready());
    assert!(ask(&mut v, ms(10), req(LockOp::Claim, &id("a", 1, 1))).0.ok);
    let (r, _) = ask(&mut v, ms(20), req(LockOp::Claim, &id("b", 1, 1)));
    assert!(!r.ok);
    assert_eq!(r.refusal, Some(Refusal::Taken));
    assert_eq!(r.report.vote, Some(id("a", 1, 1)));
    // The same node again (new round, or restarted) keeps the vote.
    assert!(ask(&mut v, ms(30), req(LockOp::Claim, &id("a", 1, 2))).0.ok);
    assert!(ask(&mut v, ms(40), req(LockOp::Claim, &id("a", 9, 1))).0.ok);
    // ... but a delayed claim of an older round of that incarnation does not.
    assert!(ask(&mut v, ms(50), req(LockOp::Claim, &id("a", 9, 2))).0.ok);
    assert!(!ask(&mut v, ms(60), req(LockOp::Claim, &id("a", 9, 1))).0.ok);
    // Commit and verify only for the exact claim.
    assert!(
        !ask(&mut v, ms(70), req(LockOp::Commit, &id("b", 1, 1)))
            .0
            .ok
    );
    assert!(
        !ask(&mut v, ms(70), req(LockOp::Verify, &id("a", 9, 2)))
            .0
            .ok,
        "not committed yet"
    );
    assert!(
        ask(&mut v, ms(80), req(LockOp::Commit, &id("a", 9, 2)))
            .0
            .ok
    );
    assert!(
        ask(&mut v, ms(90), req(LockOp::Verify, &id("a", 9, 2)))
            .0
            .ok
    );
}

#[test]
fn uncommitted_votes_lapse_committed_ones_never() {
    let ttl = Timing::DEFAULT.lease * 10;
    let mut v = lock("v1", 1, ready());
    assert!(ask(&mut v, ms(0), req(LockOp::Claim, &id("a", 1, 1))).0.ok);
    assert!(
        !ask(
            &mut v,
            ms(0) + ttl - Duration::from_millis(1),
            req(LockOp::Claim, &id("b", 1, 1))
        )
        .0
        .ok
    );
    assert!(
        ask(&mut v, ms(0) + ttl, req(LockOp::Claim, &id("b", 1, 1)))
            .0
            .ok
    );
    assert!(
        ask(&mut v, ms(0) + ttl, req(LockOp::Commit, &id("b", 1, 1)))
            .0
            .ok
    );
    let later = ms(0) + ttl * 100;
    assert!(!ask(&mut v, later, req(LockOp::Claim, &id("c", 1, 1))).0.ok);
}

#[test]
fn withdraw_clears_only_its_own_claim() {
    let mut v = lock("v1", 1, ready());
    assert!(ask(&mut v, ms(0), req(LockOp::Claim, &id("a", 1, 2))).0.ok);
    assert!(ask(&mut v, ms(1), req(LockOp::Commit, &id("a", 1, 2))).0.ok);
    let mut out = Out::new("v1");
    // A delayed withdraw of an earlier round, and a forged one, do nothing.
    v.on_withdraw(
        ms(2),
        &LockWithdraw {
            from: "a".into(),
            id: id("a", 1, 1),
        },
        &mut out,
    );
    v.on_withdraw(
        ms(2),
        &LockWithdraw {
            from: "b".into(),
            id: id("a", 1, 2),
        },
        &mut out,
    );
    assert!(out.effects.is_empty());
    assert!(v.report().committed);
    v.on_withdraw(
        ms(3),
        &LockWithdraw {
            from: "a".into(),
            id: id("a", 1, 2),
        },
        &mut out,
    );
    assert!(matches!(out.effects[..], [Effect::Persist(ref p)] if p.vote.is_none()));
    assert!(ask(&mut v, ms(4), req(LockOp::Claim, &id("b", 1, 1))).0.ok);
}

#[test]
fn initialized_fact_is_kept_and_returned() {
    let mut v = lock("v1", 1, ready());
    let (r, effects) = ask(&mut v, ms(0), req(LockOp::Initialized, &id("a", 1, 1)));
    assert!(r.ok);
    assert!(matches!(effects[0], Effect::Persist(ref p) if p.initialized.as_deref() == Some("a")));
    let (r, _) = ask(&mut v, ms(1), req(LockOp::Claim, &id("b", 1, 1)));
    assert_eq!(r.refusal, Some(Refusal::Initialized));
    assert_eq!(r.report.initialized.as_deref(), Some("a"));
    // Never overwritten.
    ask(&mut v, ms(2), req(LockOp::Initialized, &id("b", 1, 1)));
    assert_eq!(v.persisted().initialized.as_deref(), Some("a"));
    // A claimant that hears it follows.
    let mut c = lock("c", 5, None);
    c.want_init(ms(0), &LockCtx::default());
    let mut out = Out::new("c");
    c.claimant_tick(ms(1000), &LockCtx::default(), &mut out);
    assert_eq!(c.phase(), LockPhase::Claiming);
    c.on_reply(
        ms(1001),
        &LockReply {
            id: c.current_id(),
            ..r
        },
        &LockCtx::default(),
        &mut out,
    );
    assert_eq!(c.phase(), LockPhase::Follower);
    assert_eq!(c.init_node().as_deref(), Some("a"));
}

#[test]
fn spoofed_claims_are_refused() {
    let mut v = lock("v1", 1, ready());
    let mut r = req(LockOp::Claim, &id("a", 1, 1));
    r.from = "b".into();
    assert!(!ask(&mut v, ms(0), r).0.ok);
    let mut r = req(LockOp::Claim, &id("a", 1, 1));
    r.voters = DIGEST + 1;
    assert_eq!(
        ask(&mut v, ms(0), r).0.refusal,
        Some(Refusal::VoterMismatch)
    );
}

// ------------------------------------------------------------- amnesia

fn report(vote: Option<ClaimId>, committed: bool) -> LockReport {
    LockReport {
        recovering: false,
        vote,
        committed,
        initialized: None,
    }
}

fn recovering_report() -> LockReport {
    LockReport {
        recovering: true,
        ..LockReport::default()
    }
}

#[test]
fn a_voter_without_state_refuses_until_it_heard_enough() {
    let mut v = lock("v1", 1, None);
    assert_eq!(v.voter_phase(), Some(VoterPhase::Recovering));
    let (r, _) = ask(&mut v, ms(0), req(LockOp::Claim, &id("a", 1, 1)));
    assert_eq!(r.refusal, Some(Refusal::Recovering));
    assert!(r.report.recovering);
    // n = 3, q = 2: it needs n - q + 1 = 2 other voters.
    let mut out = Out::new("v1");
    v.on_report(ms(1), "v2", &report(None, false), &mut out);
    assert!(v.is_recovering());
    assert!(out.effects.is_empty());
    // Reports from non-voters or itself do not count.
    v.on_report(ms(1), "x", &report(None, false), &mut out);
    v.on_report(ms(1), "v1", &report(None, false), &mut out);
    assert!(v.is_recovering());
    v.on_report(ms(2), "v3", &report(None, false), &mut out);
    assert!(!v.is_recovering());
    assert!(
        matches!(out.effects[..], [Effect::Persist(ref p)] if p.voter_ready && p.vote.is_none())
    );
    assert!(ask(&mut v, ms(3), req(LockOp::Claim, &id("a", 1, 1))).0.ok);
}

#[test]
fn first_boot_all_recovering_makes_progress() {
    let mut v = lock("v1", 1, None);
    let mut out = Out::new("v1");
    v.on_report(ms(1), "v2", &recovering_report(), &mut out);
    v.on_report(ms(1), "v3", &recovering_report(), &mut out);
    assert!(!v.is_recovering());
}

#[test]
fn amnesiac_voter_adopts_the_only_dangerous_claim() {
    let mut v = lock("v1", 2, None);
    let mut out = Out::new("v1");
    // v2 has a committed vote for a; v3 an uncommitted one for b (ignored).
    v.on_report(ms(1), "v2", &report(Some(id("a", 1, 3)), true), &mut out);
    v.on_report(ms(1), "v3", &report(Some(id("b", 1, 1)), false), &mut out);
    assert!(!v.is_recovering());
    let p = v.persisted();
    assert_eq!(
        p.vote,
        Some(StoredVote {
            id: id("a", 1, 3),
            committed: true
        })
    );
    // So b cannot get this vote, and a's verify succeeds here.
    assert!(!ask(&mut v, ms(2), req(LockOp::Claim, &id("b", 1, 1))).0.ok);
    assert!(ask(&mut v, ms(2), req(LockOp::Verify, &id("a", 1, 3))).0.ok);
}

#[test]
fn amnesiac_voter_abstains_when_ambiguous() {
    let mut v = lock("v1", 2, None);
    let mut out = Out::new("v1");
    v.on_report(ms(1), "v2", &report(Some(id("a", 1, 1)), true), &mut out);
    v.on_report(ms(1), "v3", &report(Some(id("b", 1, 1)), true), &mut out);
    assert!(
        v.is_recovering(),
        "a and b may each have counted our lost vote"
    );
    assert!(out.effects.is_empty());
    assert_eq!(
        ask(&mut v, ms(2), req(LockOp::Claim, &id("a", 1, 1)))
            .0
            .refusal,
        Some(Refusal::Recovering)
    );
}

#[test]
fn amnesia_threshold_with_five_voters() {
    let five: Vec<String> = ["v1", "v2", "v3", "v4", "v5"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mk = || Lock::new("v1", 1, &five, DIGEST, Timing::DEFAULT, None, ms(0)).0;
    // n = 5, q = 3: needs 3 reports; with one voter unheard a claim is
    // dangerous from q - 1 - 1 = 1 committed report.
    let mut v = mk();
    let mut out = Out::new("v1");
    v.on_report(ms(1), "v2", &report(Some(id("a", 1, 1)), true), &mut out);
    v.on_report(ms(1), "v3", &report(None, false), &mut out);
    assert!(v.is_recovering());
    v.on_report(ms(1), "v4", &report(None, false), &mut out);
    assert!(!v.is_recovering());
    assert_eq!(v.persisted().vote.as_ref().unwrap().id, id("a", 1, 1));
    // All four heard: dangerous needs 2; a single committed report is not.
    let mut v = mk();
    v.on_report(ms(1), "v2", &report(Some(id("a", 1, 1)), true), &mut out);
    v.on_report(ms(1), "v3", &report(Some(id("b", 1, 1)), true), &mut out);
    assert!(
        v.is_recovering(),
        "3 heard, 1 unheard: a and b both dangerous"
    );
    v.on_report(ms(1), "v4", &report(None, false), &mut out);
    assert!(v.is_recovering());
    v.on_report(ms(1), "v5", &report(None, false), &mut out);
    assert!(!v.is_recovering());
    assert_eq!(v.persisted().vote, None);
}

#[test]
fn initialized_fact_is_relearned() {
    let mut v = lock("v1", 2, None);
    let mut out = Out::new("v1");
    let mut r = report(Some(id("a", 1, 1)), true);
    r.initialized = Some("a".into());
    v.on_report(ms(1), "v2", &r, &mut out);
    v.on_report(ms(1), "v3", &report(None, false), &mut out);
    assert_eq!(v.persisted().initialized.as_deref(), Some("a"));
}

#[test]
fn single_voter_without_state_starts_at_once() {
    let one = vec!["v1".to_string()];
    let (l, effects) = Lock::new("v1", 1, &one, DIGEST, Timing::DEFAULT, None, ms(0));
    assert!(!l.is_recovering());
    assert!(matches!(effects[..], [Effect::Persist(_)]));
}

#[test]
fn a_claimant_file_does_not_make_a_recovering_voter_ready() {
    // The claimant part persisted while the voter part was recovering.
    let p = Persisted {
        version: 1,
        voter_ready: false,
        init: Some(InitRecord::Failed),
        ..Persisted::default()
    };
    let l = lock("v1", 1, Some(p));
    assert!(l.is_recovering());
    assert_eq!(l.phase(), LockPhase::CheckNeeded);
}

// ------------------------------------------------------------- claimant

/// Voters v1..v3 plus claimants; routes lock messages until quiet.
struct Bench {
    locks: BTreeMap<String, Lock>,
    /// Non-send effects per node, in order.
    log: BTreeMap<String, Vec<Effect>>,
    /// Links that drop everything.
    cut: Vec<(String, String)>,
    /// Nodes whose messages go nowhere and that every voter's gossip shows
    /// dead (the others are alive).
    dead: BTreeSet<String>,
}

impl Bench {
    fn new(claimants: &[&str]) -> Bench {
        let mut locks = BTreeMap::new();
        for (i, v) in voters().iter().enumerate() {
            locks.insert(v.clone(), lock(v, 100 + i as u64, ready()));
        }
        for (i, c) in claimants.iter().enumerate() {
            locks
                .entry(c.to_string())
                .or_insert_with(|| lock(c, 200 + i as u64, None));
        }
        Bench {
            locks,
            log: BTreeMap::new(),
            cut: Vec::new(),
            dead: BTreeSet::new(),
        }
    }

    fn run(&mut self, now: Time, from: &str, out: Out) {
        let mut queue: Vec<(String, Effect)> = out
            .effects
            .into_iter()
            .map(|e| (from.to_string(), e))
            .collect();
        while !queue.is_empty() {
            let (src, e) = queue.remove(0);
            match e {
                Effect::Send { to, msg } => {
                    if self.cut.contains(&(src.clone(), to.clone()))
                        || self.dead.contains(&src)
                        || self.dead.contains(&to)
                    {
                        continue;
                    }
                    let Some(l) = self.locks.get_mut(&to) else {
                        continue;
                    };
                    let mut o = Out::new(&to);
                    match msg {
                        PeerMsg::LockRequest(r) => l.on_request(now, &r, &mut o),
                        PeerMsg::LockReply(r) => l.on_reply(now, &r, &LockCtx::default(), &mut o),
                        PeerMsg::LockWithdraw(w) => l.on_withdraw(now, &w, &mut o),
                        PeerMsg::LockRelease(m) => {
                            let alive = !self.dead.contains(&m.holder);
                            l.on_release(now, &m, alive, &mut o)
                        }
                        PeerMsg::LockReleaseReply(r) => l.on_release_reply(&r),
                        _ => {}
                    }
                    queue.extend(o.effects.into_iter().map(|e| (to.clone(), e)));
                }
                other => self.log.entry(src).or_default().push(other),
            }
        }
    }

    fn tick(&mut self, now: Time, who: &str) {
        let mut o = Out::new(who);
        self.locks
            .get_mut(who)
            .unwrap()
            .claimant_tick(now, &LockCtx::default(), &mut o);
        self.run(now, who, o);
    }

    fn release(&mut self, now: Time, who: &str, holder: &str) {
        let mut o = Out::new(who);
        self.locks
            .get_mut(who)
            .unwrap()
            .start_release(now, holder, &mut o);
        self.run(now, who, o);
    }

    fn l(&self, who: &str) -> &Lock {
        &self.locks[who]
    }

    fn ran_init(&self, who: &str) -> bool {
        self.log.get(who).is_some_and(|l| l.iter().any(is_run_init))
    }
}

#[test]
fn claim_commit_verify_then_persist_before_run_init() {
    let mut b = Bench::new(&["c"]);
    b.locks
        .get_mut("c")
        .unwrap()
        .want_init(ms(0), &LockCtx::default());
    assert_eq!(b.l("c").phase(), LockPhase::Waiting);
    b.tick(ms(500), "c");
    assert_eq!(b.l("c").phase(), LockPhase::Initializing);
    let log = &b.log["c"];
    let started = log
        .iter()
        .position(|e| matches!(e, Effect::Persist(p) if matches!(p.init, Some(InitRecord::Started { .. }))))
        .unwrap();
    let run = log.iter().position(is_run_init).unwrap();
    assert!(started < run);
    for v in voters() {
        let p = b.l(&v).persisted();
        assert!(p.vote.as_ref().unwrap().committed, "{v}");
    }
    assert_eq!(b.l("v1").init_node(), None, "v1 has heard no reports");
    assert_eq!(b.l("c").init_node().as_deref(), Some("c"));
    // Success is recorded at the voters.
    let mut o = Out::new("c");
    b.locks
        .get_mut("c")
        .unwrap()
        .init_finished(ms(600), true, false, &mut o);
    b.run(ms(600), "c", o);
    assert_eq!(b.l("c").phase(), LockPhase::Initialized);
    for v in voters() {
        assert_eq!(b.l(&v).persisted().initialized.as_deref(), Some("c"));
    }
    assert_eq!(b.l("c").next_wakeup(), None, "every voter acked");
}

#[test]
fn two_claimants_one_init() {
    let mut b = Bench::new(&["a", "b"]);
    b.locks
        .get_mut("a")
        .unwrap()
        .want_init(ms(0), &LockCtx::default());
    b.locks
        .get_mut("b")
        .unwrap()
        .want_init(ms(0), &LockCtx::default());
    // b is cut from v1, a from v3: each gets one vote first.
    b.cut.push(("b".into(), "v1".into()));
    b.cut.push(("a".into(), "v3".into()));
    b.tick(ms(1000), "a");
    b.tick(ms(1000), "b");
    assert_eq!(b.l("a").phase(), LockPhase::Initializing, "a got v1 and v2");
    assert_eq!(b.l("b").phase(), LockPhase::Claiming, "b waits for v1");
    b.cut.clear();
    b.tick(ms(1200), "b");
    assert_eq!(b.l("b").phase(), LockPhase::Waiting, "b saw it cannot win");
    for t in (1300..20_000).step_by(100) {
        b.tick(ms(t), "a");
        b.tick(ms(t), "b");
    }
    assert!(b.ran_init("a"));
    assert!(!b.ran_init("b"));
    assert_eq!(
        b.l("b").init_node().as_deref(),
        Some("a"),
        "a has committed votes at a majority"
    );
}

fn reply(from: &str, inc: u64, op: LockOp, id: &ClaimId, ok: bool) -> LockReply {
    reply_in(from, inc, op, id, ok, 0)
}

fn reply_in(from: &str, inc: u64, op: LockOp, id: &ClaimId, ok: bool, attempt: u32) -> LockReply {
    LockReply {
        from: from.into(),
        voter_incarnation: inc,
        op,
        id: id.clone(),
        attempt,
        ok,
        refusal: (!ok).then_some(Refusal::Taken),
        report: LockReport::default(),
    }
}

fn sent_ops(out: &Out) -> Vec<(String, LockOp)> {
    out.effects
        .iter()
        .filter_map(|e| match e {
            Effect::Send {
                to,
                msg: PeerMsg::LockRequest(r),
            } => Some((to.clone(), r.op)),
            _ => None,
        })
        .collect()
}

#[test]
fn verify_notices_a_restarted_voter() {
    let ctx = LockCtx::default();
    let mut c = lock("c", 1, None);
    c.want_init(ms(0), &ctx);
    let mut o = Out::new("c");
    c.claimant_tick(ms(500), &ctx, &mut o);
    let cid = c.current_id();
    for (v, inc) in [("v1", 100), ("v2", 101)] {
        c.on_reply(
            ms(501),
            &reply(v, inc, LockOp::Claim, &cid, true),
            &ctx,
            &mut o,
        );
    }
    assert_eq!(c.phase(), LockPhase::Committing);
    for (v, inc) in [("v1", 100), ("v2", 101)] {
        c.on_reply(
            ms(502),
            &reply(v, inc, LockOp::Commit, &cid, true),
            &ctx,
            &mut o,
        );
    }
    assert_eq!(c.phase(), LockPhase::Verifying);
    // v1 answers verify from a new incarnation: its commit may be lost.
    let mut o = Out::new("c");
    c.on_reply(
        ms(503),
        &reply_in("v1", 999, LockOp::Verify, &cid, true, 1),
        &ctx,
        &mut o,
    );
    assert_eq!(c.phase(), LockPhase::Committing);
    assert_eq!(sent_ops(&o), [("v1".to_string(), LockOp::Commit)]);
    c.on_reply(
        ms(504),
        &reply_in("v2", 101, LockOp::Verify, &cid, true, 1),
        &ctx,
        &mut o,
    );
    assert_eq!(
        c.phase(),
        LockPhase::Committing,
        "a verify outside the verify phase counts for nothing"
    );
    c.on_reply(
        ms(505),
        &reply("v1", 999, LockOp::Commit, &cid, true),
        &ctx,
        &mut o,
    );
    assert_eq!(c.phase(), LockPhase::Verifying);
    // A late answer of verify round 1 does not count in round 2: it may
    // predate the new commit at v1.
    let mut o = Out::new("c");
    c.on_reply(
        ms(506),
        &reply_in("v2", 101, LockOp::Verify, &cid, true, 1),
        &ctx,
        &mut o,
    );
    c.on_reply(
        ms(506),
        &reply_in("v1", 999, LockOp::Verify, &cid, true, 2),
        &ctx,
        &mut o,
    );
    assert!(o.effects.is_empty());
    assert_eq!(c.phase(), LockPhase::Verifying);
    c.on_reply(
        ms(507),
        &reply_in("v2", 101, LockOp::Verify, &cid, true, 2),
        &ctx,
        &mut o,
    );
    assert_eq!(c.phase(), LockPhase::Initializing);
    assert!(matches!(
        o.effects[..],
        [
            Effect::Persist(_),
            Effect::StartJob {
                job: crate::node::Job::RunInit,
                ..
            }
        ]
    ));
}

#[test]
fn round_timeout_withdraws() {
    let mut b = Bench::new(&["c"]);
    b.locks
        .get_mut("c")
        .unwrap()
        .want_init(ms(0), &LockCtx::default());
    b.cut.push(("c".into(), "v2".into()));
    b.cut.push(("c".into(), "v3".into()));
    b.tick(ms(500), "c");
    assert_eq!(b.l("v1").persisted().vote.as_ref().unwrap().id.name, "c");
    b.tick(ms(500) + Timing::DEFAULT.lease * 4, "c");
    assert_eq!(b.l("c").phase(), LockPhase::Waiting);
    assert!(b.l("v1").persisted().vote.is_none(), "withdrawn");
}

#[test]
fn init_outcomes() {
    let mut b = Bench::new(&["c"]);
    let c = b.locks.get_mut("c").unwrap();
    c.want_init(ms(0), &LockCtx::default());
    b.tick(ms(500), "c");
    // Clean failure: the lock stays, a new round later, init again.
    let mut o = Out::new("c");
    b.locks
        .get_mut("c")
        .unwrap()
        .init_finished(ms(600), false, false, &mut o);
    assert!(matches!(o.effects[..], [Effect::Persist(ref p)] if p.init.is_none()));
    assert_eq!(b.l("c").phase(), LockPhase::Waiting);
    b.log.clear();
    b.tick(ms(600) + Timing::DEFAULT.lease * 2, "c");
    assert!(b.ran_init("c"));
    // Failure with leftovers: failed, and it survives a restart as a check.
    let mut o = Out::new("c");
    b.locks
        .get_mut("c")
        .unwrap()
        .init_finished(ms(3000), false, true, &mut o);
    assert_eq!(b.l("c").phase(), LockPhase::Failed);
    let p = b.l("c").persisted().clone();
    assert_eq!(p.init, Some(InitRecord::Failed));
    let mut c2 = lock("c", 201, Some(p));
    assert!(c2.needs_init_check());
    c2.want_init(ms(10), &LockCtx::default());
    assert_eq!(
        c2.phase(),
        LockPhase::CheckNeeded,
        "WantInit cannot skip the check"
    );
    // The operator cleaned up: the check reports clean, init may run again.
    let mut o = Out::new("c");
    c2.init_finished(ms(20), false, false, &mut o);
    assert_eq!(c2.phase(), LockPhase::Waiting);
}

#[test]
fn restart_mid_init_needs_a_check() {
    let p = Persisted {
        version: 1,
        voter_ready: false,
        init: Some(InitRecord::Started { id: id("c", 1, 1) }),
        ..Persisted::default()
    };
    let mut c = lock("c", 2, Some(p));
    assert_eq!(c.phase(), LockPhase::CheckNeeded);
    assert_eq!(c.init_node().as_deref(), Some("c"));
    let mut o = Out::new("c");
    c.init_finished(ms(5), true, true, &mut o);
    assert_eq!(c.phase(), LockPhase::Initialized);
    assert!(matches!(o.effects[0], Effect::Persist(ref p) if p.init == Some(InitRecord::Done)));
}

#[test]
fn claimant_blocked_by_an_existing_cluster() {
    let mut c = lock("c", 1, None);
    let ctx = LockCtx {
        cluster_elsewhere: Some("cp-9".into()),
        rank: 0,
    };
    c.want_init(ms(0), &ctx);
    let mut o = Out::new("c");
    c.claimant_tick(ms(1000), &ctx, &mut o);
    assert_eq!(c.phase(), LockPhase::Blocked);
    assert_eq!(c.blocked_by(), Some("cp-9"));
    assert!(o.effects.is_empty(), "no claim sent");
    // Gossip changes its mind: claim again (safety never relied on it).
    c.claimant_tick(ms(2000), &LockCtx::default(), &mut o);
    assert_eq!(c.phase(), LockPhase::Waiting);
}

#[test]
fn state_file_round_trips_and_tolerates_missing_fields() {
    let p = Persisted {
        version: PERSISTED_VERSION,
        voter_ready: true,
        vote: Some(StoredVote {
            id: id("cp-1", 42, 3),
            committed: true,
        }),
        initialized: Some("cp-1".into()),
        init: Some(InitRecord::Started {
            id: id("cp-1", 42, 3),
        }),
        released: ["cp-9".to_string()].into(),
    };
    let text = serde_json::to_string(&p).unwrap();
    assert_eq!(serde_json::from_str::<Persisted>(&text).unwrap(), p);
    // A file from an older agent without `voter_ready` reads as recovering.
    let old: Persisted = serde_json::from_str(r#"{"version":1,"vote":null}"#).unwrap();
    assert!(!old.voter_ready);
    assert!(lock("v1", 1, Some(old)).is_recovering());
}

fn is_run_init(e: &Effect) -> bool {
    matches!(
        e,
        Effect::StartJob {
            job: crate::node::Job::RunInit,
            ..
        }
    )
}

/// The init node `a` dies mid-init for good (verified majority, RunInit
/// emitted). Nobody else can win while its committed votes stand; the
/// operator's release on `b` clears them at a majority (persisted before
/// each ack), `b` then initializes, and `a`, should it come back, is
/// refused: as a claimant it never inits, and an init it finished is not
/// recorded.
#[test]
fn a_release_frees_a_dead_holders_committed_votes_for_another_claimant() {
    let mut b = Bench::new(&["a", "b"]);
    b.locks
        .get_mut("a")
        .unwrap()
        .want_init(ms(0), &LockCtx::default());
    b.tick(ms(1000), "a");
    assert_eq!(b.l("a").phase(), LockPhase::Initializing);
    b.dead.insert("a".into());
    b.locks
        .get_mut("b")
        .unwrap()
        .want_init(ms(0), &LockCtx::default());
    for t in (1000..30_000).step_by(100) {
        b.tick(ms(t), "b");
    }
    assert!(!b.ran_init("b"), "committed votes for a dead holder hold");
    assert_eq!(b.l("b").init_node().as_deref(), Some("a"));
    // The checks on the node the command runs on.
    assert_eq!(
        b.l("b").check_release("a", true),
        Err(ReleaseError::Alive("a".into()))
    );
    assert_eq!(
        b.l("b").check_release("b", false),
        Err(ReleaseError::SelfRelease("b".into()))
    );
    assert!(matches!(
        b.l("b").check_release("v1", false),
        Err(ReleaseError::NotHolder { .. })
    ));
    assert_eq!(b.l("b").check_release("a", false), Ok(()));
    b.release(ms(30_000), "b", "a");
    let r = b.l("b").release_progress().unwrap();
    assert!(r.done(2), "{r:?}");
    assert_eq!(r.acked.len(), 3);
    for v in voters() {
        let p = b.l(&v).persisted();
        assert_eq!(p.vote, None, "{v}");
        assert!(p.released.contains("a"), "{v}");
        let persisted_first = b.log[&v]
            .iter()
            .any(|e| matches!(e, Effect::Persist(p) if p.released.contains("a")));
        assert!(persisted_first, "{v} persisted the release");
    }
    for t in (30_000..60_000).step_by(100) {
        b.tick(ms(t), "b");
    }
    assert!(b.ran_init("b"), "b initializes after the release");
    // `a` comes back with its init done: the voters do not record it.
    b.dead.clear();
    let mut o = Out::new("a");
    let a = b.locks.get_mut("a").unwrap();
    a.init_finished(ms(60_000), true, true, &mut o);
    b.run(ms(60_000), "a", o);
    assert!(b.l("a").released_me());
    assert_eq!(b.l("a").phase(), LockPhase::Failed);
    assert_eq!(b.l("a").persisted().init, Some(InitRecord::Failed));
    assert_eq!(
        b.l("a").init_node().as_deref(),
        Some("b"),
        "a names the claimant the voters committed to"
    );
    for v in voters() {
        assert_eq!(b.l(&v).persisted().initialized, None, "{v}");
    }
}

/// A voter does not release a holder its own gossip shows alive, nor once
/// an init is recorded; the releaser keeps resending to those that have
/// not acked and shows who refused.
#[test]
fn a_release_is_refused_where_the_holder_is_alive_or_the_cluster_exists() {
    let mut b = Bench::new(&["a", "b"]);
    b.locks
        .get_mut("a")
        .unwrap()
        .want_init(ms(0), &LockCtx::default());
    b.tick(ms(1000), "a");
    assert_eq!(b.l("a").phase(), LockPhase::Initializing);
    // `a` alive everywhere: every voter refuses.
    b.release(ms(2000), "b", "a");
    let r = b.l("b").release_progress().unwrap();
    assert!(!r.done(2));
    assert_eq!(r.refused.len(), 3);
    assert!(
        r.refused
            .values()
            .all(|w| *w == ReleaseRefusal::HolderAlive)
    );
    for v in voters() {
        assert!(b.l(&v).persisted().vote.as_ref().unwrap().committed, "{v}");
    }
    assert!(b.l("b").next_wakeup().is_some(), "the release is resent");
    // The init succeeds: nothing is released even where `a` looks dead.
    let mut o = Out::new("a");
    b.locks
        .get_mut("a")
        .unwrap()
        .init_finished(ms(3000), true, false, &mut o);
    b.run(ms(3000), "a", o);
    b.dead.insert("a".into());
    let mut o = Out::new("b");
    b.locks.get_mut("b").unwrap().release_tick(ms(4000), &mut o);
    b.run(ms(4000), "b", o);
    let r = b.l("b").release_progress().unwrap();
    assert!(
        r.refused
            .values()
            .all(|w| *w == ReleaseRefusal::Initialized)
    );
    assert_eq!(
        b.l("b").check_release("a", false),
        Err(ReleaseError::Initialized("a".into()))
    );
    for v in voters() {
        assert!(b.l(&v).persisted().released.is_empty(), "{v}");
    }
    // It gives up after 20 leases.
    let mut o = Out::new("b");
    let l = b.locks.get_mut("b").unwrap();
    for t in (4000..40_000).step_by(100) {
        l.release_tick(ms(t), &mut o);
    }
    assert_eq!(l.release_wakeup(), None);
}

/// A released node that restarts clean claims again: refused, it follows.
#[test]
fn a_released_claimant_never_claims_again_and_follows() {
    let mut b = Bench::new(&["a", "b"]);
    for v in voters() {
        b.locks
            .get_mut(&v)
            .unwrap()
            .persisted
            .released
            .insert("a".into());
    }
    b.locks
        .get_mut("a")
        .unwrap()
        .want_init(ms(0), &LockCtx::default());
    b.tick(ms(1000), "a");
    assert_eq!(b.l("a").phase(), LockPhase::Released);
    assert!(b.l("a").released_me());
    for t in (1000..20_000).step_by(100) {
        b.tick(ms(t), "a");
    }
    assert!(!b.ran_init("a"));
    assert_eq!(b.l("a").next_wakeup(), None, "no more claims");
}

/// Two claimants, one voter gone: each gets one of the two voters left.
/// Before the give-way rule both kept their vote until the round timeout
/// and crossed again in their next rounds. Now `b`, refused for `a`'s
/// uncommitted vote, gives way at its next resend, and `a` gets `b`'s
/// former voter when it asks again.
#[test]
fn a_claimant_gives_way_to_one_that_sorts_before_it() {
    let mut b = Bench::new(&["a", "b"]);
    b.dead.insert("v3".into());
    for c in ["a", "b"] {
        b.locks
            .get_mut(c)
            .unwrap()
            .want_init(ms(0), &LockCtx::default());
    }
    b.cut.push(("a".into(), "v2".into()));
    b.cut.push(("b".into(), "v1".into()));
    b.tick(ms(1000), "a");
    b.tick(ms(1000), "b");
    assert_eq!(b.l("a").phase(), LockPhase::Claiming);
    assert_eq!(b.l("b").phase(), LockPhase::Claiming);
    b.cut.clear();
    let retry = Timing::DEFAULT.renew_every.as_millis() as u64;
    b.tick(ms(1000 + retry), "b");
    assert_eq!(b.l("b").phase(), LockPhase::Waiting, "b gave way");
    assert_eq!(b.l("v2").persisted().vote, None, "b withdrew");
    b.tick(ms(1000 + retry), "a");
    assert_eq!(
        b.l("a").phase(),
        LockPhase::Initializing,
        "one resend later, well before the round timeout (4 L)"
    );
}
