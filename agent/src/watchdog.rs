//! The agent's side of the VIP fence: the link to the guardian process
//! (`kubeha-guardian`, guardian.rs) and the upkeep of the kernel-side backstop.
//!
//! The core asks for `RemoveVip` at the instant its lease stops counting, and
//! the shell must carry that out within `actuation_guard` (docs/PROTOCOL.md
//! §6). The main loop can be late (CPU starvation) or not run at all (a
//! frozen process), so after every step it arms the guardian, a separate
//! process, with that deadline ([`LeaseWatchdog::arm`]); if the deadline
//! passes while still armed, the guardian removes the address itself. It
//! reports each disappearance of the VIP ([`LeaseWatchdog::take_fired`]); if
//! the lease had in fact been renewed meanwhile, the main loop re-arms and
//! puts the address back.
//!
//! While holding, the agent also restarts the address's kernel lifetime
//! ([`LeaseWatchdog::renew_due`]) and keeps the guardian supplied with
//! sealed releases for its incarnation ([`LeaseWatchdog::releases_due`]).

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use kubeha_core::time::Time;
use kubeha_core::wire::{self, LeaseRelease, PeerMsg};
use nix::sys::socket::{MsgFlags, recv, send};
use tracing::{debug, error};

use crate::guard;
use crate::link::{self, Releases};

pub struct LeaseWatchdog {
    reseal_every: Duration,
    link: OwnedFd,
    /// What the guardian was last told.
    armed: Option<Option<Time>>,
    fired: bool,
    lost: bool,
    name: String,
    incarnation: u64,
    last_renew: Option<Time>,
    sealed: Option<(Time, Vec<SocketAddr>)>,
}

impl LeaseWatchdog {
    /// Over the link [`guard::spawn`] made; `name` and `incarnation` are
    /// this agent's, for the releases the guardian sends if it dies.
    /// `reseal_every`: how often the guardian's releases are sealed again,
    /// so that one sent at the agent's death still opens at the voters.
    pub fn connect(
        link: OwnedFd,
        name: &str,
        incarnation: u64,
        reseal_every: Duration,
    ) -> LeaseWatchdog {
        LeaseWatchdog {
            reseal_every,
            link,
            armed: None,
            fired: false,
            lost: false,
            name: name.to_string(),
            incarnation,
            last_renew: None,
            sealed: None,
        }
    }

    /// The instant the VIP must be gone unless re-armed, or `None` (it must
    /// not be up at all).
    pub fn arm(&mut self, deadline: Option<Time>) {
        if self.armed == Some(deadline) {
            return;
        }
        if self.send(&link::encode_arm(deadline)) {
            self.armed = Some(deadline);
        }
    }

    /// Whether the VIP went (the guardian removed it, or saw it removed)
    /// since the last call. After `true`, the next [`arm`](Self::arm) is
    /// sent even if unchanged: the guardian dropped its deadline.
    pub fn take_fired(&mut self) -> bool {
        let mut buf = [0u8; 16];
        loop {
            match recv(self.link.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
                Ok(0) => {
                    self.lost = true;
                    break;
                }
                Ok(n) if buf[..n] == link::GONE => self.fired = true,
                Ok(n) => debug!(len = n, "unexpected message from the VIP guardian"),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(nix::errno::Errno::EAGAIN) => break,
                Err(_) => {
                    self.lost = true;
                    break;
                }
            }
        }
        let fired = std::mem::take(&mut self.fired);
        if fired {
            self.armed = None;
        }
        fired
    }

    /// Whether the guardian is gone: nothing fences the VIP any more.
    pub fn lost(&self) -> bool {
        self.lost
    }

    /// Whether the kernel lifetime should be restarted now (while holding).
    pub fn renew_due(&mut self, now: Time) -> bool {
        let due = self
            .last_renew
            .is_none_or(|t| now.saturating_since(t) >= guard::RENEW_LIFETIME_EVERY);
        if due {
            self.last_renew = Some(now);
        }
        due
    }

    /// Whether the guardian needs freshly sealed releases for `voters`.
    pub fn releases_due(&self, now: Time, voters: &[SocketAddr]) -> bool {
        self.sealed.as_ref().is_none_or(|(at, to)| {
            to.as_slice() != voters || now.saturating_since(*at) >= self.reseal_every
        })
    }

    /// The payload of this agent's release: a seq above any it can have
    /// used, so it covers every grant of this incarnation.
    pub fn release_payload(&self) -> Vec<u8> {
        wire::encode(&PeerMsg::LeaseRelease(LeaseRelease {
            from: self.name.clone(),
            incarnation: self.incarnation,
            seq: u64::MAX,
        }))
    }

    /// Hand the guardian the sealed releases, one per voter address.
    pub fn set_releases(&mut self, now: Time, frames: Vec<(SocketAddr, Vec<u8>)>) {
        let to: Vec<SocketAddr> = frames.iter().map(|(a, _)| *a).collect();
        if self.send(&link::encode_releases(&Releases(frames))) {
            self.sealed = Some((now, to));
        }
    }

    fn send(&mut self, msg: &[u8]) -> bool {
        match send(
            self.link.as_raw_fd(),
            msg,
            MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
        ) {
            Ok(_) => true,
            // A frozen guardian: it acts on what it has, which is never less
            // safe; the next arm tries again.
            Err(nix::errno::Errno::EAGAIN) => false,
            Err(e) => {
                if !self.lost {
                    error!(error = %e, "the VIP guardian link is broken");
                }
                self.lost = true;
                false
            }
        }
    }
}
