//! `kubeha-guardian`: the VIP guardian, a separate process that fences the
//! VIP whatever the agent does: dies, freezes (SIGSTOP, VM steal, a hung
//! fsync, cgroup throttling) or comes back late.
//!
//! The agent starts it (guard.rs) from its main thread before anything
//! else, with the link (link.rs) on fd 3 and `PR_SET_PDEATHSIG`. Over the
//! link the agent arms, after every step, the instant its lease stops
//! counting (`Node::vip_deadline`, CLOCK_BOOTTIME, which every process reads
//! alike), and hands over sealed `LeaseRelease` datagrams for its own
//! incarnation. The guardian, with its memory locked and at the highest
//! priority the unit allows, and with its netlink sockets opened up front:
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
//! The guardian never holds the cluster key and never reads the config: the
//! agent passes the interface, the VIP and its own gossip address on the
//! command line, and seals the releases ([`crate::net::FrameSocket::seal`]:
//! addressed to each voter's current run, like every lease frame) and seals
//! them again twice a lease, so one sent at its death still opens; the
//! guardian sends them from the agent's gossip address, the only source
//! receivers accept for it.
//!
//! Its own binary, so that what is locked in memory is only this: the
//! guardian links none of the agent's gossip, TLS, HAProxy or kubeadm code.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::ExitCode;
use std::time::Duration;

use kubeha_core::time::Time;
use kubeha_vip::{AddressEvent, VipFence};
use nix::sys::socket::{MsgFlags, recv, send};
use tokio::io::unix::AsyncFd;
use tracing::{error, info, warn};

use crate::clock;
use crate::link::{self, FromAgent, LINK_FD, Releases};

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

/// One line on what the guardian is (also its man page's).
pub const ABOUT: &str = "The VIP guardian of kubeha-agent: removes the VIP when the agent's lease deadline passes or the agent dies";
/// More about it, for `--help` and the man page.
pub const LONG_ABOUT: &str = "Only kubeha-agent starts it, beside itself, with the link to it on \
file descriptor 3; started any other way it refuses to run. It removes the VIP \
from the interface at the lease deadline the agent armed (the agent may be \
frozen), removes it whenever it appears while no deadline is in the future, and \
when the agent dies removes it and sends the lease releases the agent sealed. \
Logging: KUBEHA_LOG=error|warn|info|debug|trace (default info).";

/// A command-line option: flag, value name, help.
pub struct Opt {
    pub flag: &'static str,
    pub value: &'static str,
    pub help: &'static str,
}

/// Every option the guardian takes (all required); `--help` and the man
/// page are made from this list.
pub const OPTIONS: [Opt; 3] = [
    Opt {
        flag: "--interface",
        value: "IFACE",
        help: "The interface the VIP is on (`vip.interface`).",
    },
    Opt {
        flag: "--vip",
        value: "ADDRESS",
        help: "The VIP (`vip.address`).",
    },
    Opt {
        flag: "--source",
        value: "ADDRESS:PORT",
        help: "The agent's gossip address: the releases are sent from it.",
    },
];

fn usage() -> String {
    let mut u = String::from("usage: kubeha-guardian");
    for o in &OPTIONS {
        u += &format!(" {} {}", o.flag, o.value);
    }
    u += &format!("\n\n{ABOUT}.\n{LONG_ABOUT}\n\n");
    for o in &OPTIONS {
        u += &format!("  {} {}\n      {}\n", o.flag, o.value, o.help);
    }
    u + "  -h, --help\n  -V, --version"
}

/// What the agent passes on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Args {
    pub interface: String,
    pub vip: IpAddr,
    /// The agent's gossip address, where its releases come from.
    pub source: SocketAddr,
}

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Cmd {
    Guard(Args),
    Help,
    Version,
}

/// The argv the agent starts the guardian with.
pub fn argv(args: &Args) -> Vec<String> {
    vec![
        "--interface".into(),
        args.interface.clone(),
        "--vip".into(),
        args.vip.to_string(),
        "--source".into(),
        args.source.to_string(),
    ]
}

/// Parse the command line (without the program name). A tiny parser of
/// its own: the guardian is kept small, and only the agent calls it.
pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Cmd, String> {
    let (mut interface, mut vip, mut source) = (None, None, None);
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (a.clone(), None),
        };
        let mut value = |name: &str| {
            inline
                .clone()
                .or_else(|| it.next())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(Cmd::Help),
            "-V" | "--version" => return Ok(Cmd::Version),
            "--interface" => interface = Some(value("--interface")?),
            "--vip" => {
                let v = value("--vip")?;
                vip = Some(
                    v.parse::<IpAddr>()
                        .map_err(|e| format!("--vip {v:?}: {e}"))?,
                );
            }
            "--source" => {
                let v = value("--source")?;
                source = Some(
                    v.parse::<SocketAddr>()
                        .map_err(|e| format!("--source {v:?}: {e}"))?,
                );
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Cmd::Guard(Args {
        interface: interface.ok_or("--interface is required")?,
        vip: vip.ok_or("--vip is required")?,
        source: source.ok_or("--source is required")?,
    }))
}

/// `kubeha-guardian`'s main.
pub fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(Cmd::Guard(a)) => a,
        Ok(Cmd::Help) => {
            println!("{}", usage());
            return ExitCode::SUCCESS;
        }
        Ok(Cmd::Version) => {
            println!("kubeha-guardian {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("kubeha-guardian: {e}\n{}", usage());
            return ExitCode::from(2);
        }
    };
    init_tracing();
    run(&args)
}

/// The level from KUBEHA_LOG when it is a plain level (the agent's richer
/// filters fall back to info here), to stderr; under journald without
/// timestamps or colours.
fn init_tracing() {
    let level = std::env::var("KUBEHA_LOG")
        .ok()
        .and_then(|v| v.trim().parse::<tracing::Level>().ok())
        .unwrap_or(tracing::Level::INFO);
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_target(false);
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder.without_time().with_ansi(false).init();
    } else {
        builder.init();
    }
}

/// Guard `args.vip` on `args.interface` for the agent at the other end of
/// fd 3 until that agent is gone.
pub fn run(args: &Args) -> ExitCode {
    let refuse = |why: String| {
        eprintln!(
            "kubeha-guardian: fd {LINK_FD} is not the agent's link: {why}; only kubeha-agent starts the guardian"
        );
        ExitCode::from(1)
    };
    // SAFETY: a plain query of a descriptor number.
    if unsafe { libc::fcntl(LINK_FD, libc::F_GETFD) } == -1 {
        return refuse("it is not open".into());
    }
    // SAFETY: fd 3 is open (above) and stays open while borrowed here.
    if let Err(e) = link::check(unsafe { std::os::fd::BorrowedFd::borrow_raw(LINK_FD) }) {
        return refuse(e);
    }
    // SAFETY: fd 3 is the agent's link (checked above), put there for this
    // process alone; from here on it is owned here.
    let link = unsafe { OwnedFd::from_raw_fd(LINK_FD) };
    harden();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("kubeha-guardian: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(guard(&args.interface, args.vip, args.source, link)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(vip = %args.vip, interface = %args.interface, error = format!("{e:#}"), "VIP guardian failed");
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
    let mut death = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::from_raw(
        link::DEATH_SIGNAL,
    ))
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
                Ok(n) => match link::decode(&self.buf[..n]) {
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
            &link::GONE,
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

    fn parse_str(s: &str) -> Result<Cmd, String> {
        parse(s.split_whitespace().map(String::from))
    }

    #[test]
    fn the_agent_s_argv_parses_back() {
        let a = Args {
            interface: "eth1".into(),
            vip: "198.18.0.100".parse().unwrap(),
            source: "198.18.0.2:7946".parse().unwrap(),
        };
        assert_eq!(parse(argv(&a)), Ok(Cmd::Guard(a.clone())));
        assert_eq!(
            parse_str("--vip=198.18.0.100 --source=198.18.0.2:7946 --interface=eth1"),
            Ok(Cmd::Guard(Args {
                interface: "eth1".into(),
                vip: "198.18.0.100".parse().unwrap(),
                source: "198.18.0.2:7946".parse().unwrap(),
            }))
        );
        assert_eq!(parse_str("--help"), Ok(Cmd::Help));
        // Every documented option is one the parser takes.
        let doc: Vec<&str> = OPTIONS.iter().map(|o| o.flag).collect();
        let ours: Vec<String> = argv(&a).into_iter().step_by(2).collect();
        assert_eq!(doc, ours);
        assert!(usage().contains("--source ADDRESS:PORT"));
        assert_eq!(parse_str("-V"), Ok(Cmd::Version));
    }

    #[test]
    fn bad_command_lines_name_the_argument() {
        let e =
            parse_str("--interface eth1 --vip 198.18.0.300 --source 198.18.0.2:7946").unwrap_err();
        assert!(e.contains("--vip \"198.18.0.300\""), "{e}");
        let e = parse_str("--interface eth1 --vip 198.18.0.100").unwrap_err();
        assert!(e.contains("--source is required"), "{e}");
        let e = parse_str("--interface").unwrap_err();
        assert!(e.contains("--interface needs a value"), "{e}");
        let e = parse_str("--config /etc/kubeha/kubeha.toml").unwrap_err();
        assert!(e.contains("unknown argument \"--config\""), "{e}");
    }
}
