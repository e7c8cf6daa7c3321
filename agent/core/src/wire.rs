//! Lease and lock messages between agents (docs/PROTOCOL.md).
//!
//! Every message names its sender (`from`); the shell seals the encoded bytes
//! in an authenticated frame ([`crate::frame`], channel `Lease`, the control
//! key's tier except for probes: [`admitted`]) whose header names the sender
//! too. The shell hands the core the header's sender (checked against the
//! address that member gossips), and the core drops a message whose `from`
//! differs from it.
//! The encoding is postcard: the order of the [`PeerMsg`] variants and of the
//! fields is the wire format, so only ever append.
//!
//! Safety never depends on a message arriving once, in order or at all: every
//! reply echoes what it answers (incarnation, sequence number, claim id) and
//! the receiver checks it against its own state.

use serde::{Deserialize, Serialize};

use crate::frame;

/// The largest encoded message that still fits one sealed datagram.
pub const MAX_MESSAGE: usize = frame::MAX_DATAGRAM - frame::OVERHEAD;
/// No lease or lock message is longer (names are at most 63 bytes); the
/// transport drops longer lease frames before any key is tried.
pub const MAX_LEASE_MESSAGE: usize = 1024;

/// One run of one agent: a restarted agent is a different holder.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct HolderId {
    pub name: String,
    pub incarnation: u64,
}

/// Why a voter said no.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    /// The voter started less than one lease ago and grants nobody yet.
    Quarantine,
    /// Another holder has an unexpired grant (`holder`, `remaining_us`).
    Held,
    /// The request is older than a release from the same holder.
    Released,
    /// The sender's voter list differs from the voter's.
    VoterMismatch,
    /// The receiver is not a voter (or has stopped).
    NotVoter,
    /// The voter lost its state and is still relearning the lock.
    Recovering,
    /// The lock vote belongs to another claimant.
    Taken,
    /// The cluster is already initialized (`report.initialized`).
    Initialized,
    /// An operator released this claimant's bootstrap lock
    /// (`kubeha-ctl bootstrap release`): it never initializes.
    InitReleased,
}

/// A candidate asks for (or renews) a voter's grant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRequest {
    pub from: String,
    pub incarnation: u64,
    /// Increases with every request of this incarnation.
    pub seq: u64,
    /// [`crate::lease::voters_digest`] of the sender's voter list.
    pub voters: u64,
    /// The sender's VIP priority: a holder yields to a higher one that a
    /// majority of voters see asking.
    pub priority: u8,
}

/// A candidate a voter refused recently, reported to the holder.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contender {
    pub name: String,
    pub priority: u8,
}

/// A voter's answer to a [`LeaseRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseReply {
    pub from: String,
    /// The requester's incarnation, echoed.
    pub candidate_incarnation: u64,
    /// The request's sequence number, echoed.
    pub seq: u64,
    pub granted: bool,
    pub refusal: Option<Refusal>,
    /// The length of this voter's grants on its own clock.
    pub lease_us: u64,
    /// Who holds this voter's grant now (the requester if granted).
    pub holder: Option<HolderId>,
    /// How long that grant (or the quarantine) still runs, voter clock.
    pub remaining_us: u64,
    /// The highest-priority candidate this voter refused recently.
    pub contender: Option<Contender>,
}

/// A holder gives its grant back; only grants up to `seq` are cleared.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRelease {
    pub from: String,
    pub incarnation: u64,
    pub seq: u64,
}

/// A voter tells a candidate it refused recently that its grant is free now
/// (released, expired, or quarantine over). A hint: it grants nothing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseFree {
    pub from: String,
}

/// Any node asks a voter what it knows (VIP holder, lock state).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probe {
    pub from: String,
    pub seq: u64,
    pub voters: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeReply {
    pub from: String,
    pub seq: u64,
    pub voter_incarnation: u64,
    pub holder: Option<String>,
    pub remaining_us: u64,
    pub lock: LockReport,
}

/// One claim of the bootstrap lock: a claimant's name, incarnation and
/// round (a claimant starts a new round after giving up an old one).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ClaimId {
    pub name: String,
    pub incarnation: u64,
    pub round: u32,
}

/// A voter's lock state as it tells others.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockReport {
    /// Started without a state file and has not relearned the lock yet.
    pub recovering: bool,
    pub vote: Option<ClaimId>,
    /// The vote is committed: permanent unless its claimant withdraws it.
    pub committed: bool,
    /// The node that initialized the cluster, once recorded.
    pub initialized: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LockOp {
    /// Vote for this claim (persisted before the reply).
    Claim,
    /// Make the vote for this claim permanent (persisted before the reply).
    Commit,
    /// Is the committed vote for this claim still here, in this incarnation?
    Verify,
    /// Record that the sender initialized the cluster.
    Initialized,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockRequest {
    pub from: String,
    pub op: LockOp,
    /// The claim; for `Initialized`, the claim that won (name = sender).
    pub id: ClaimId,
    pub voters: u64,
    /// Which verify round of this claim (echoed): a verify answer counts
    /// only in the round it answers.
    pub attempt: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockReply {
    pub from: String,
    pub voter_incarnation: u64,
    pub op: LockOp,
    /// The request's claim, echoed.
    pub id: ClaimId,
    /// The request's attempt, echoed.
    pub attempt: u32,
    pub ok: bool,
    pub refusal: Option<Refusal>,
    pub report: LockReport,
}

/// A claimant gives up a claim round it will never act on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockWithdraw {
    pub from: String,
    pub id: ClaimId,
}

/// An operator's `kubeha-ctl bootstrap release HOLDER`, sent by the agent
/// it ran on to every voter: `holder` is gone for good, so its bootstrap
/// lock votes (committed ones too) may go to another claimant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockRelease {
    pub from: String,
    pub holder: String,
    /// The sender's voter list digest.
    pub voters: u64,
}

/// Why a voter did not release a holder's lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReleaseRefusal {
    NotVoter,
    VoterMismatch,
    /// The voter lost its state and is still relearning the lock.
    Recovering,
    /// The cluster is initialized (`initialized` names by whom): there is
    /// nothing to release.
    Initialized,
    /// The holder is alive in the voter's gossip view.
    HolderAlive,
}

/// A voter's answer to [`LockRelease`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockReleaseReply {
    pub from: String,
    pub holder: String,
    pub ok: bool,
    pub refusal: Option<ReleaseRefusal>,
    pub initialized: Option<String>,
}

/// Everything agents send each other on the lease channel. Append only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerMsg {
    LeaseRequest(LeaseRequest),
    LeaseReply(LeaseReply),
    LeaseRelease(LeaseRelease),
    LeaseFree(LeaseFree),
    Probe(Probe),
    ProbeReply(ProbeReply),
    LockRequest(LockRequest),
    LockReply(LockReply),
    LockWithdraw(LockWithdraw),
    LockRelease(LockRelease),
    LockReleaseReply(LockReleaseReply),
}

impl PeerMsg {
    /// The name the sender put in the message.
    pub fn sender(&self) -> &str {
        match self {
            PeerMsg::LeaseRequest(m) => &m.from,
            PeerMsg::LeaseReply(m) => &m.from,
            PeerMsg::LeaseRelease(m) => &m.from,
            PeerMsg::LeaseFree(m) => &m.from,
            PeerMsg::Probe(m) => &m.from,
            PeerMsg::ProbeReply(m) => &m.from,
            PeerMsg::LockRequest(m) => &m.from,
            PeerMsg::LockReply(m) => &m.from,
            PeerMsg::LockWithdraw(m) => &m.from,
            PeerMsg::LockRelease(m) => &m.from,
            PeerMsg::LockReleaseReply(m) => &m.from,
        }
    }

    /// Every node name the message carries.
    pub fn names(&self) -> Vec<&str> {
        let mut v = vec![self.sender()];
        match self {
            PeerMsg::LeaseReply(m) => {
                v.extend(m.holder.as_ref().map(|h| h.name.as_str()));
                v.extend(m.contender.as_ref().map(|c| c.name.as_str()));
            }
            PeerMsg::ProbeReply(m) => {
                v.extend(m.holder.as_deref());
                v.extend(m.lock.vote.as_ref().map(|c| c.name.as_str()));
                v.extend(m.lock.initialized.as_deref());
            }
            PeerMsg::LockRequest(m) => v.push(&m.id.name),
            PeerMsg::LockReply(m) => {
                v.push(&m.id.name);
                v.extend(m.report.vote.as_ref().map(|c| c.name.as_str()));
                v.extend(m.report.initialized.as_deref());
            }
            PeerMsg::LockWithdraw(m) => v.push(&m.id.name),
            PeerMsg::LockRelease(m) => v.push(&m.holder),
            PeerMsg::LockReleaseReply(m) => {
                v.push(&m.holder);
                v.extend(m.initialized.as_deref());
            }
            _ => {}
        }
        v
    }

    /// A short name for logs and metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            PeerMsg::LeaseRequest(_) => "lease_request",
            PeerMsg::LeaseReply(_) => "lease_reply",
            PeerMsg::LeaseRelease(_) => "lease_release",
            PeerMsg::LeaseFree(_) => "lease_free",
            PeerMsg::Probe(_) => "probe",
            PeerMsg::ProbeReply(_) => "probe_reply",
            PeerMsg::LockRequest(_) => "lock_request",
            PeerMsg::LockReply(_) => "lock_reply",
            PeerMsg::LockWithdraw(_) => "lock_withdraw",
            PeerMsg::LockRelease(_) => "lock_release",
            PeerMsg::LockReleaseReply(_) => "lock_release_reply",
        }
    }
}

/// Whether a lease-channel message may arrive sealed at `tier`, on a node
/// that holds the control key (`local_control`) or not. Only a `Probe` may
/// come under the cluster key alone (workers ask voters for status), and a
/// `ProbeReply` only to a node that has no control key (the voter answers a
/// worker at the worker's tier). Votes, grants, releases and lock messages
/// need the control key: a worker can never cast or forge one.
pub fn admitted(msg: &PeerMsg, tier: frame::Tier, local_control: bool) -> bool {
    match msg {
        PeerMsg::Probe(_) => true,
        PeerMsg::ProbeReply(_) => tier == frame::Tier::Control || !local_control,
        _ => tier == frame::Tier::Control,
    }
}

/// Whether a lease-channel message must be addressed to the receiver's
/// current run and a recent epoch of it ([`frame::check_addressed`]). A
/// `Probe` is the first contact (the prober may not know the voter's run
/// yet) and has no effect but a reply to the prober's gossiped address.
pub fn needs_addressing(msg: &PeerMsg) -> bool {
    !matches!(msg, PeerMsg::Probe(_))
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("message of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("{0} trailing bytes after the message")]
    Trailing(usize),
    #[error("`{0}` is not a node name")]
    BadName(String),
}

pub fn encode(msg: &PeerMsg) -> Vec<u8> {
    // Serializing plain data to a Vec cannot fail.
    postcard::to_stdvec(msg).expect("postcard encodes owned data into a Vec")
}

/// Decode one message. Never panics; rejects oversize input and trailing bytes.
pub fn decode(bytes: &[u8]) -> Result<PeerMsg, WireError> {
    if bytes.len() > MAX_MESSAGE {
        return Err(WireError::TooLarge {
            len: bytes.len(),
            max: MAX_MESSAGE,
        });
    }
    let (msg, rest) = postcard::take_from_bytes::<PeerMsg>(bytes)
        .map_err(|e| WireError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(WireError::Trailing(rest.len()));
    }
    // Every name a peer sends may end up in status, logs and metric labels.
    if let Some(bad) = msg
        .names()
        .into_iter()
        .find(|n| crate::config::check_name(n).is_err())
    {
        return Err(WireError::BadName(bad.escape_debug().take(80).collect()));
    }
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_largest_messages_fit_a_lease_frame() {
        let name = "n".repeat(63);
        let id = ClaimId {
            name: name.clone(),
            incarnation: u64::MAX,
            round: u32::MAX,
        };
        let report = LockReport {
            recovering: true,
            vote: Some(id.clone()),
            committed: true,
            initialized: Some(name.clone()),
        };
        let big = [
            PeerMsg::LockReply(LockReply {
                from: name.clone(),
                voter_incarnation: u64::MAX,
                op: LockOp::Verify,
                id: id.clone(),
                attempt: u32::MAX,
                ok: true,
                refusal: Some(Refusal::Initialized),
                report: report.clone(),
            }),
            PeerMsg::ProbeReply(ProbeReply {
                from: name.clone(),
                seq: u64::MAX,
                voter_incarnation: u64::MAX,
                holder: Some(name.clone()),
                remaining_us: u64::MAX,
                lock: report,
            }),
            PeerMsg::LeaseReply(LeaseReply {
                from: name.clone(),
                candidate_incarnation: u64::MAX,
                seq: u64::MAX,
                granted: true,
                refusal: Some(Refusal::VoterMismatch),
                lease_us: u64::MAX,
                holder: Some(HolderId {
                    name: name.clone(),
                    incarnation: u64::MAX,
                }),
                remaining_us: u64::MAX,
                contender: Some(Contender {
                    name: name.clone(),
                    priority: 255,
                }),
            }),
        ];
        for m in &big {
            let n = encode(m).len();
            assert!(n <= MAX_LEASE_MESSAGE / 2, "{} is {n} bytes", m.kind());
        }
        const { assert!(frame::MAX_LEASE_FRAME >= MAX_LEASE_MESSAGE + frame::OVERHEAD) };
    }

    #[test]
    fn names_inside_messages_must_be_node_names() {
        for m in samples() {
            assert!(decode(&encode(&m)).is_ok(), "{}", m.kind());
        }
        let evil = PeerMsg::ProbeReply(ProbeReply {
            from: "cp-0".into(),
            seq: 1,
            voter_incarnation: 1,
            holder: Some("lb\u{1b}[2J".into()),
            remaining_us: 1,
            lock: LockReport::default(),
        });
        assert!(matches!(decode(&encode(&evil)), Err(WireError::BadName(_))));
        let long = PeerMsg::LeaseFree(LeaseFree {
            from: "a".repeat(64),
        });
        assert!(matches!(decode(&encode(&long)), Err(WireError::BadName(_))));
    }

    #[test]
    fn only_probes_pass_under_the_cluster_key() {
        use frame::Tier::{Control, Member};
        for m in samples() {
            let probe = matches!(m, PeerMsg::Probe(_));
            let reply = matches!(m, PeerMsg::ProbeReply(_));
            assert!(admitted(&m, Control, true), "{}", m.kind());
            assert_eq!(admitted(&m, Member, true), probe, "{}", m.kind());
            assert_eq!(admitted(&m, Member, false), probe || reply, "{}", m.kind());
            assert_eq!(needs_addressing(&m), !probe);
        }
    }

    fn samples() -> Vec<PeerMsg> {
        let id = ClaimId {
            name: "cp-1".into(),
            incarnation: 7,
            round: 2,
        };
        vec![
            PeerMsg::LeaseRequest(LeaseRequest {
                from: "lb-0".into(),
                incarnation: u64::MAX,
                seq: 1,
                voters: 42,
                priority: 100,
            }),
            PeerMsg::LeaseReply(LeaseReply {
                from: "cp-0".into(),
                candidate_incarnation: 3,
                seq: 9,
                granted: false,
                refusal: Some(Refusal::Held),
                lease_us: 800_000,
                holder: Some(HolderId {
                    name: "lb-1".into(),
                    incarnation: 5,
                }),
                remaining_us: 12,
                contender: Some(Contender {
                    name: "lb-0".into(),
                    priority: 200,
                }),
            }),
            PeerMsg::LeaseRelease(LeaseRelease {
                from: "lb-0".into(),
                incarnation: 3,
                seq: 10,
            }),
            PeerMsg::LeaseFree(LeaseFree {
                from: "cp-0".into(),
            }),
            PeerMsg::Probe(Probe {
                from: "w-0".into(),
                seq: 3,
                voters: 1,
            }),
            PeerMsg::ProbeReply(ProbeReply {
                from: "cp-2".into(),
                seq: 3,
                voter_incarnation: 8,
                holder: None,
                remaining_us: 0,
                lock: LockReport {
                    recovering: false,
                    vote: Some(id.clone()),
                    committed: true,
                    initialized: Some("cp-1".into()),
                },
            }),
            PeerMsg::LockRequest(LockRequest {
                from: "cp-1".into(),
                op: LockOp::Commit,
                id: id.clone(),
                voters: 5,
                attempt: 3,
            }),
            PeerMsg::LockReply(LockReply {
                from: "cp-0".into(),
                voter_incarnation: 1,
                op: LockOp::Verify,
                id: id.clone(),
                attempt: 3,
                ok: true,
                refusal: None,
                report: LockReport::default(),
            }),
            PeerMsg::LockWithdraw(LockWithdraw {
                from: "cp-1".into(),
                id,
            }),
            PeerMsg::LockRelease(LockRelease {
                from: "cp-1".into(),
                holder: "cp-2".into(),
                voters: 5,
            }),
            PeerMsg::LockReleaseReply(LockReleaseReply {
                from: "cp-0".into(),
                holder: "cp-2".into(),
                ok: false,
                refusal: Some(ReleaseRefusal::Initialized),
                initialized: Some("cp-1".into()),
            }),
        ]
    }

    #[test]
    fn round_trip_every_variant() {
        for m in samples() {
            let bytes = encode(&m);
            assert!(bytes.len() < 200, "{m:?} is {} bytes", bytes.len());
            assert_eq!(decode(&bytes).unwrap(), m);
        }
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut bytes = encode(&samples()[0]);
        bytes.push(0);
        assert_eq!(decode(&bytes), Err(WireError::Trailing(1)));
    }

    #[test]
    fn every_truncation_is_an_error() {
        for m in samples() {
            let bytes = encode(&m);
            for cut in 0..bytes.len() {
                assert!(decode(&bytes[..cut]).is_err(), "{m:?} cut at {cut}");
            }
        }
    }

    #[test]
    fn oversize_is_rejected_before_parsing() {
        let big = vec![0u8; MAX_MESSAGE + 1];
        assert!(matches!(decode(&big), Err(WireError::TooLarge { .. })));
    }

    #[test]
    fn sender_is_the_from_field() {
        for m in samples() {
            let from = match &m {
                PeerMsg::LeaseRequest(x) => x.from.clone(),
                PeerMsg::LeaseReply(x) => x.from.clone(),
                PeerMsg::LeaseRelease(x) => x.from.clone(),
                PeerMsg::LeaseFree(x) => x.from.clone(),
                PeerMsg::Probe(x) => x.from.clone(),
                PeerMsg::ProbeReply(x) => x.from.clone(),
                PeerMsg::LockRequest(x) => x.from.clone(),
                PeerMsg::LockReply(x) => x.from.clone(),
                PeerMsg::LockWithdraw(x) => x.from.clone(),
                PeerMsg::LockRelease(x) => x.from.clone(),
                PeerMsg::LockReleaseReply(x) => x.from.clone(),
            };
            assert_eq!(m.sender(), from);
            assert!(!m.kind().is_empty());
        }
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn mutated_messages_never_panic(idx in 0usize..9, pos in 0usize..200, val in any::<u8>()) {
            let mut bytes = encode(&samples()[idx]);
            let p = pos % bytes.len();
            bytes[p] = val;
            if let Ok(m) = decode(&bytes) {
                // Whatever decodes is a message that survives a round trip.
                prop_assert_eq!(decode(&encode(&m)).unwrap(), m);
            }
        }
    }
}
