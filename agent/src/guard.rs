//! The VIP guardian: a separate process that fences the VIP whatever the
//! agent does: dies, freezes (SIGSTOP, VM steal, a hung fsync, cgroup
//! throttling) or comes back late.
//!
//! The agent starts `kubeha-agent --guard-vip` from its main thread before
//! anything else, with a `SOCK_SEQPACKET` socketpair on the guardian's fd 3
//! (the *link*) and `PR_SET_PDEATHSIG`. Over the link the agent arms, after
//! every step, the instant its lease stops counting (`Node::vip_deadline`,
//! CLOCK_BOOTTIME, which every process reads alike), and hands over sealed
//! `LeaseRelease` datagrams for its own incarnation. The guardian, with its
//! memory locked and at the highest priority the unit allows, and with its
//! netlink sockets opened up front:
//!
//! - removes the VIP at the armed deadline if no later one came: the agent
//!   may be frozen, and then only another process can act in time;
//! - removes the VIP the moment it appears while no deadline is in the
//!   future (a frozen agent that resumes halfway through adding it, or
//!   renewing its kernel lifetime, after its lease ended);
//! - tells the agent each time the VIP went (removed by itself, by the
//!   kernel's lifetime, or by anyone), so that an agent whose lease was in
//!   fact renewed in time puts it back;
//! - when the agent is dead (the link reads end-of-file, or the death
//!   signal), removes the VIP and then sends the release datagrams, so the
//!   voters free the lease at once and the best standby takes over as after
//!   a planned handover, instead of waiting for the lease to run out.
//!
//! Removing is always safe (S1 is about adding). The release is sent only
//! for a dead agent: a frozen one may still count grants when it resumes.
//! The guardian never holds the cluster key: the agent seals the releases
//! ([`crate::net::FrameSocket::seal`]: addressed to each voter's current
//! run, like every lease frame) and seals them again twice a lease, so one
//! sent at its death still opens; the guardian sends them from the agent's
//! own gossip address, the only source receivers accept for it.
//!
//! When every kubeha process is frozen or dead the address still goes: the
//! agent adds it with a finite kernel lifetime ([`kernel_lifetime`]) and
//! renews it while holding (docs/PROTOCOL.md §1, "pauses").

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use kubeha_core::config::Config;
use kubeha_core::time::Time;
use kubeha_core::timing::Timing;
use kubeha_vip::{AddressEvent, VipFence};
use nix::sys::socket::{AddressFamily, MsgFlags, SockFlag, SockType, recv, send, socketpair};
use serde::{Deserialize, Serialize};
use tokio::io::unix::AsyncFd;
use tracing::{error, info, warn};

use crate::clock;

/// The guardian's end of the link.
const LINK_FD: RawFd = 3;
/// The signal the kernel sends the guardian when the agent's main thread ends.
const DEATH_SIGNAL: libc::c_int = libc::SIGUSR1;
/// The guardian acts this long after an armed deadline (the agent, when it
/// runs, removes the VIP itself at the deadline).
pub const SLACK: Duration = Duration::from_millis(5);
/// While a deadline is armed the guardian wakes at least this often and
/// compares CLOCK_BOOTTIME: its timers run on CLOCK_MONOTONIC, which stands
/// still while a machine is suspended.
const MAX_SLEEP: Duration = Duration::from_millis(50);
/// How long after its last deadline a dead agent may still have live grants
/// worth releasing.
const RELEASE_HORIZON: Duration = Duration::from_secs(5);
/// Agent → guardian.
const MSG_ARM: u8 = b'A';
const MSG_RELEASES: u8 = b'R';
/// Guardian → agent: the VIP went.
const MSG_GONE: u8 = b'G';

/// The agent's end of the link, between [`spawn`] and the agent's loop.
static LINK: Mutex<Option<OwnedFd>> = Mutex::new(None);

/// The kernel lifetime (whole seconds) to add the VIP with for `timing`: the
/// kernel must never remove it while the holder's lease counts. The lease a
/// holder counts ends at most `H(L)` after its last renewal; the agent
/// renews the lifetime at most [`RENEW_LIFETIME_EVERY`] apart while holding,
/// and the kernel's address worker may act up to 20 ms before a lifetime
/// ends (ADDRCONF_TIMER_FUZZ_MINUS). Every profile gives 1 s.
pub fn kernel_lifetime(timing: &Timing) -> u32 {
    let need = timing.holder_lease() + RENEW_LIFETIME_EVERY + Duration::from_millis(20);
    need.as_secs_f64().ceil().max(1.0) as u32
}

/// While holding, the agent restarts the kernel lifetime at most this far apart.
pub const RENEW_LIFETIME_EVERY: Duration = Duration::from_millis(100);

/// Start the guardian for `config` (only VIP candidates with an interface).
/// Call from the main thread: the death signal follows the spawning thread.
pub fn spawn(config_path: &Path, config: &Config) -> io::Result<Option<Child>> {
    if !config.is_vip_candidate()
        || config
            .vip
            .as_ref()
            .and_then(|v| v.interface.as_ref())
            .is_none()
    {
        return Ok(None);
    }
    let (agent_end, guard_end) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    let guard_raw = guard_end.as_raw_fd();
    let parent = std::process::id() as i32;
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    cmd.arg("--guard-vip")
        .arg("--config")
        .arg(config_path)
        .stdin(Stdio::null());
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if guard_raw == LINK_FD {
                if libc::fcntl(LINK_FD, libc::F_SETFD, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
            } else if libc::dup2(guard_raw, LINK_FD) != LINK_FD {
                return Err(io::Error::last_os_error());
            }
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                DEATH_SIGNAL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before the prctl took effect.
            if libc::getppid() != parent {
                libc::_exit(0);
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    drop(guard_end);
    *LINK.lock().expect("guardian link lock") = Some(agent_end);
    Ok(Some(child))
}

/// The agent's end of the link to the guardian [`spawn`] started.
pub fn take_link() -> Option<OwnedFd> {
    LINK.lock().expect("guardian link lock").take()
}

/// Agent → guardian, one datagram each.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Releases(pub Vec<(SocketAddr, Vec<u8>)>);

pub(crate) fn encode_arm(deadline: Option<Time>) -> [u8; 9] {
    let mut m = [0u8; 9];
    m[0] = MSG_ARM;
    m[1..].copy_from_slice(&deadline.map_or(u64::MAX, Time::as_micros).to_le_bytes());
    m
}

pub(crate) fn encode_releases(r: &Releases) -> Vec<u8> {
    let mut m = vec![MSG_RELEASES];
    m.extend(serde_json::to_vec(r).expect("releases serialize"));
    m
}

pub(crate) const GONE: [u8; 1] = [MSG_GONE];

#[derive(Debug, PartialEq, Eq)]
enum FromAgent {
    Arm(Option<Time>),
    Releases(Releases),
}

fn decode(m: &[u8]) -> Option<FromAgent> {
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

/// `--guard-vip`: guard the VIP of `config` for the agent at the other end
/// of fd 3 until that agent is gone.
pub fn run(config: &Config) -> ExitCode {
    let Some((interface, address)) = config
        .vip
        .as_ref()
        .and_then(|v| Some((v.interface.clone()?, v.address)))
    else {
        eprintln!("kubeha-agent --guard-vip: the config has no `vip.interface`");
        return ExitCode::from(1);
    };
    // SAFETY: fd 3 is the link `spawn` put there; nothing else owns it.
    let link = unsafe { OwnedFd::from_raw_fd(LINK_FD) };
    if let Err(e) = nix::sys::socket::getsockopt(&link, nix::sys::socket::sockopt::SockType) {
        eprintln!(
            "kubeha-agent --guard-vip: fd 3 is not the agent's link ({e}); only the agent starts the guardian"
        );
        return ExitCode::from(1);
    }
    harden();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("kubeha-agent --guard-vip: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(guard(&interface, address, config.gossip_addr(), link)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(vip = %address, interface, error = format!("{e:#}"), "VIP guardian failed");
            // The agent sees the link close and stops (its VIP first).
            ExitCode::from(1)
        }
    }
}

/// Lock memory and raise priority, as far as the unit allows: a guardian
/// that must page in or wait behind the agent's load acts late.
fn harden() {
    // SAFETY: plain syscalls on this process.
    unsafe {
        if libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE) != 0 {
            warn!(error = %io::Error::last_os_error(), "VIP guardian: mlockall failed (needs CAP_IPC_LOCK); memory not locked");
        }
        let param = libc::sched_param { sched_priority: 10 };
        if libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) != 0 {
            let fifo = io::Error::last_os_error();
            if libc::setpriority(libc::PRIO_PROCESS, 0, -20) != 0 {
                warn!(sched_fifo = %fifo, nice = %io::Error::last_os_error(),
                    "VIP guardian: neither SCHED_FIFO nor nice -20 allowed (needs CAP_SYS_NICE); normal priority");
            }
        }
    }
}

struct Guard {
    fence: VipFence,
    link: AsyncFd<OwnedFd>,
    /// The VIP may be up until then; `None`: it must not be up.
    deadline: Option<Time>,
    /// The last deadline armed, for the release decision.
    last_armed: Option<Time>,
    releases: Releases,
    /// The agent's gossip address: receivers accept a frame only from the
    /// address its header names.
    source: SocketAddr,
    buf: Vec<u8>,
}

enum Read {
    Open,
    Closed,
}

async fn guard(
    interface: &str,
    address: IpAddr,
    source: SocketAddr,
    link: OwnedFd,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let fence = VipFence::open(interface, address)
        .with_context(|| format!("opening netlink for the VIP {address} on `{interface}`"))?;
    nix::fcntl::fcntl(
        &link,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )
    .context("making the agent link non-blocking")?;
    let mut death =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::from_raw(DEATH_SIGNAL))
            .context("installing the death-signal handler")?;
    // Stopping is the agent's business (it hands the VIP over); the guardian
    // keeps guarding until the agent is gone.
    let _term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let _int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let _hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let mut g = Guard {
        fence,
        // SAFETY: an OwnedFd, owned by the AsyncFd from now on, stays open
        // and the same until dropped.
        link: unsafe { AsyncFd::register_with_interest(link, tokio::io::Interest::READABLE) }
            .map_err(io::Error::from)
            .context("registering the agent link")?,
        deadline: None,
        last_armed: None,
        releases: Releases(Vec::new()),
        source,
        buf: vec![0u8; 65_536],
    };
    info!(vip = %address, interface, "VIP guardian running");
    loop {
        let nap = g.deadline.map(|d| clock::until(d + SLACK).min(MAX_SLEEP));
        tokio::select! {
            biased;
            _ = death.recv() => break,
            r = g.link.readable() => {
                let mut ready = r.context("waiting on the agent link")?;
                ready.clear_ready();
                drop(ready);
                if let Read::Closed = g.read_link()? {
                    break;
                }
            }
            ev = g.fence.next_event() => {
                let ev = ev.context("the netlink notification socket closed")?;
                // What the agent armed before it touched the address is in
                // the link already: read it before judging the event.
                if let Read::Closed = g.read_link()? {
                    break;
                }
                match ev {
                    AddressEvent::Added if !g.allowed(clock::now()) => {
                        g.remove("the VIP appeared after the lease deadline").await?;
                    }
                    AddressEvent::Added => {}
                    AddressEvent::Removed => g.tell_gone(),
                }
            }
            _ = sleep_opt(nap) => {
                let now = clock::now();
                if let Some(d) = g.deadline
                    && now >= d + SLACK
                {
                    g.deadline = None;
                    let late = now.saturating_since(d);
                    if g.fence.is_present().await.unwrap_or(true) {
                        warn!(vip = %address, late_ms = late.as_millis() as u64,
                            "VIP guardian: the agent did not renew or remove the VIP by its lease deadline");
                        g.remove("lease deadline").await?;
                    }
                }
            }
        }
    }
    g.agent_died().await
}

impl Guard {
    fn allowed(&self, now: Time) -> bool {
        self.deadline.is_some_and(|d| now < d)
    }

    /// Read every message the agent has sent so far.
    fn read_link(&mut self) -> anyhow::Result<Read> {
        loop {
            match recv(self.link.as_raw_fd(), &mut self.buf, MsgFlags::MSG_DONTWAIT) {
                Ok(0) => return Ok(Read::Closed),
                Ok(n) => match decode(&self.buf[..n]) {
                    Some(FromAgent::Arm(d)) => {
                        self.deadline = d;
                        if d.is_some() {
                            self.last_armed = d;
                        }
                    }
                    Some(FromAgent::Releases(r)) => self.releases = r,
                    None => warn!(len = n, "VIP guardian: undecodable message from the agent"),
                },
                Err(nix::errno::Errno::EAGAIN) => return Ok(Read::Open),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(nix::errno::Errno::ECONNRESET) => return Ok(Read::Closed),
                Err(e) => anyhow::bail!("reading the agent link: {e}"),
            }
        }
    }

    /// Removal must succeed; a guardian that cannot remove the VIP stops, and
    /// the agent, seeing the link close, stops too (fail-stop).
    async fn remove(&mut self, why: &str) -> anyhow::Result<()> {
        let mut last = None;
        for _ in 0..3 {
            match self.fence.remove().await {
                Ok(c) => {
                    if c.is_changed() {
                        warn!(vip = %self.fence.address(), interface = self.fence.interface(),
                            reason = why, "VIP guardian removed the VIP");
                    }
                    self.tell_gone();
                    return Ok(());
                }
                Err(e) => last = Some(e),
            }
        }
        Err(anyhow::anyhow!(
            "cannot remove the VIP {} from `{}`: {}",
            self.fence.address(),
            self.fence.interface(),
            last.map(|e| e.to_string()).unwrap_or_default()
        ))
    }

    fn tell_gone(&self) {
        // A full link means a frozen agent: it learns on its next step anyway
        // (its own deadline check), so a lost notice costs nothing.
        let _ = send(
            self.link.as_raw_fd(),
            &GONE,
            MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
        );
    }

    /// The agent is gone: VIP off first, then the voters told, so the best
    /// standby takes over now rather than when the grants run out.
    async fn agent_died(mut self) -> anyhow::Result<()> {
        let now = clock::now();
        self.deadline = None;
        self.remove("the agent died").await?;
        let recent = self.last_armed.is_some_and(|d| now < d + RELEASE_HORIZON);
        if recent && !self.releases.0.is_empty() {
            let sent = send_releases(&self.releases, self.source);
            info!(
                voters = sent,
                "VIP guardian: the agent died holding the VIP (or within 5 s of it); released its lease"
            );
        } else {
            info!("VIP guardian: the agent is gone; VIP removed");
        }
        Ok(())
    }
}

/// Send each sealed release once, from the dead agent's own gossip address
/// (receivers drop a frame whose source differs from its header). The
/// agent's socket may close a moment after the link reports its death (the
/// kernel closes a dying process's descriptors one by one), so a busy
/// address is tried again for a short while.
fn send_releases(r: &Releases, source: SocketAddr) -> usize {
    if r.0.is_empty() {
        return 0;
    }
    let mut socket = None;
    for _ in 0..100 {
        match std::net::UdpSocket::bind(source) {
            Ok(s) => {
                socket = Some(s);
                break;
            }
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => {
                warn!(%source, error = %e, "VIP guardian: cannot bind the agent's address; releases not sent");
                return 0;
            }
        }
    }
    let Some(socket) = socket else {
        warn!(%source, "VIP guardian: the agent's address stayed busy; releases not sent");
        return 0;
    };
    let mut sent = 0;
    for (to, bytes) in &r.0 {
        match socket.send_to(bytes, to) {
            Ok(_) => sent += 1,
            Err(e) => warn!(peer = %to, error = %e, "VIP guardian: release not sent"),
        }
    }
    sent
}

async fn sleep_opt(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }

    #[test]
    fn the_kernel_lifetime_outlasts_every_lease_a_holder_counts() {
        for t in [Timing::DEFAULT, Timing::FAST] {
            let secs = kernel_lifetime(&t);
            let h = t.holder_lease();
            // The kernel may act 20 ms early; the lifetime restarts at most
            // RENEW_LIFETIME_EVERY apart while the lease counts.
            assert!(
                Duration::from_secs(secs.into())
                    >= h + RENEW_LIFETIME_EVERY + Duration::from_millis(20),
                "{secs} s for H = {h:?}"
            );
            assert_eq!(secs, 1);
        }
    }
}
