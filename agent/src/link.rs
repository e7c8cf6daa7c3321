//! The link between the agent and its VIP guardian: one `SOCK_SEQPACKET`
//! socketpair, the guardian's end on its fd 3, and the few datagrams that
//! cross it. Both sides (guard.rs in the agent, guardian.rs in
//! `kubeha-guardian`) speak only through these functions.
//!
//! - agent → guardian: `ARM` (the instant the lease stops counting, or none)
//!   and `RELEASES` (sealed lease releases, one per voter);
//! - guardian → agent: `GONE` (the VIP left the interface).

use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, RawFd};

use kubeha_core::time::Time;
use nix::sys::socket::{
    AddressFamily, SockType, SockaddrLike, SockaddrStorage, getsockname, getsockopt, sockopt,
};
use serde::{Deserialize, Serialize};

/// The guardian's end of the link.
pub const LINK_FD: RawFd = 3;
/// The signal the kernel sends the guardian when the agent's main thread ends.
pub const DEATH_SIGNAL: libc::c_int = libc::SIGUSR1;

const MSG_ARM: u8 = b'A';
const MSG_RELEASES: u8 = b'R';
const MSG_GONE: u8 = b'G';

/// Guardian → agent: the VIP went.
pub const GONE: [u8; 1] = [MSG_GONE];

/// Agent → guardian: sealed releases, one datagram per voter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Releases(pub Vec<(SocketAddr, Vec<u8>)>);

/// What the agent sends.
#[derive(Debug, PartialEq, Eq)]
pub enum FromAgent {
    /// The VIP may be up until then; `None`: it must not be up.
    Arm(Option<Time>),
    Releases(Releases),
}

pub fn encode_arm(deadline: Option<Time>) -> [u8; 9] {
    let mut m = [0u8; 9];
    m[0] = MSG_ARM;
    m[1..].copy_from_slice(&deadline.map_or(u64::MAX, Time::as_micros).to_le_bytes());
    m
}

pub fn encode_releases(r: &Releases) -> Vec<u8> {
    let mut m = vec![MSG_RELEASES];
    m.extend(serde_json::to_vec(r).expect("releases serialize"));
    m
}

/// `None` for anything that is not a whole message of the agent's.
pub fn decode(m: &[u8]) -> Option<FromAgent> {
    match m.split_first()? {
        (&MSG_ARM, rest) => {
            let us = u64::from_le_bytes(rest.try_into().ok()?);
            Some(FromAgent::Arm(
                (us != u64::MAX).then(|| Time::from_micros(us)),
            ))
        }
        (&MSG_RELEASES, rest) => serde_json::from_slice(rest).ok().map(FromAgent::Releases),
        _ => None,
    }
}

/// Whether `fd` can be the agent's link: a Unix `SOCK_SEQPACKET` socket.
/// Anything else on fd 3 means `kubeha-guardian` was not started by the
/// agent; the error says what was found.
pub fn check(fd: impl AsFd) -> Result<(), String> {
    let ty = getsockopt(&fd, sockopt::SockType).map_err(|e| format!("not a socket ({e})"))?;
    if ty != SockType::SeqPacket {
        return Err(format!("a {ty:?} socket, not SOCK_SEQPACKET"));
    }
    let addr: SockaddrStorage =
        getsockname(fd.as_fd().as_raw_fd()).map_err(|e| format!("getsockname: {e}"))?;
    match addr.family() {
        Some(AddressFamily::Unix) => Ok(()),
        other => Err(format!("a {other:?} socket, not a Unix one")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{SockFlag, socketpair};

    #[test]
    fn messages_round_trip() {
        let t = Time::from_micros(123_456_789);
        assert_eq!(decode(&encode_arm(Some(t))), Some(FromAgent::Arm(Some(t))));
        assert_eq!(decode(&encode_arm(None)), Some(FromAgent::Arm(None)));
        let r = Releases(vec![("198.18.0.2:7946".parse().unwrap(), vec![1, 2, 3])]);
        assert_eq!(decode(&encode_releases(&r)), Some(FromAgent::Releases(r)));
        assert_eq!(decode(b""), None);
        assert_eq!(decode(b"A123"), None);
        assert_eq!(decode(b"X"), None);
        assert_eq!(decode(&GONE), None, "the agent never sends GONE");
    }

    #[test]
    fn only_a_unix_seqpacket_socket_is_a_link() {
        let (a, _b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        assert_eq!(check(&a), Ok(()));
        let (s, _t) = socketpair(
            AddressFamily::Unix,
            SockType::Stream,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        assert!(check(&s).unwrap_err().contains("SOCK_SEQPACKET"));
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        assert!(check(&udp).unwrap_err().contains("Datagram"));
        let file = std::fs::File::open("/proc/self/stat").unwrap();
        assert!(check(&file).unwrap_err().contains("not a socket"));
    }
}
