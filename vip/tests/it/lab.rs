//! A tiny namespace lab for the VIP tests: namespaces named
//! `khvip-<pid>-<n>-<tag>`, links and addresses only inside them, addresses
//! from 198.18.0.0/24 and 2001:db8::/32, nothing routed out. Everything is
//! deleted when the `Lab` drops (also on panic), on SIGINT/SIGTERM, and
//! namespaces of test processes that died are swept at the next start.

use std::fs::File;
use std::future::Future;
use std::io::Read;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, IntoRawFd};
use std::pin::Pin;
use std::process::Command;
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};
use std::sync::{Mutex, Once};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kubeha_vip::MacAddr;
use nix::sched::{CloneFlags, setns};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

pub const PREFIX: &str = "khvip-";

/// Skip (loudly) when not root; CI runs these as root.
macro_rules! require_root {
    () => {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipping: not root (this test needs network namespaces)");
            return;
        }
    };
}
pub(crate) use require_root;

/// Namespaces this process made and has not deleted yet.
static LIVE: Mutex<Vec<String>> = Mutex::new(Vec::new());
/// `ip netns add/del` share the /run/netns mount set-up; do one at a time.
static IP_NETNS: Mutex<()> = Mutex::new(());
static SEQ: AtomicU32 = AtomicU32::new(0);
static SIGNAL_PIPE: AtomicI32 = AtomicI32::new(-1);

/// Run a command; panic with its argv, exit status and stderr if it fails.
pub fn run(argv: &[&str]) -> String {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .unwrap_or_else(|e| panic!("running {argv:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{argv:?} failed with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `ip -n <ns> <args...>`
pub fn ip(ns: &str, args: &[&str]) -> String {
    let mut argv = vec!["ip", "-n", ns];
    argv.extend_from_slice(args);
    run(&argv)
}

fn delete_ns(name: &str) {
    let _g = IP_NETNS.lock().unwrap_or_else(|p| p.into_inner());
    let _ = Command::new("ip").args(["netns", "del", name]).output();
}

extern "C" fn on_signal(_: libc::c_int) {
    let fd = SIGNAL_PIPE.load(Ordering::Relaxed);
    if fd >= 0 {
        // Only async-signal-safe work here; the cleanup thread does the rest.
        unsafe { libc::write(fd, [1u8].as_ptr().cast(), 1) };
    }
}

/// Once per process: a SIGINT/SIGTERM handler that deletes our namespaces,
/// and a sweep of namespaces left by test processes that no longer exist.
fn init_process() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        let (rd, wr) = nix::unistd::pipe().expect("pipe");
        SIGNAL_PIPE.store(wr.into_raw_fd(), Ordering::Relaxed);
        std::thread::spawn(move || {
            let mut f = File::from(rd);
            let mut b = [0u8; 1];
            if f.read(&mut b).is_ok() {
                let names = std::mem::take(&mut *LIVE.lock().unwrap_or_else(|p| p.into_inner()));
                for n in &names {
                    delete_ns(n);
                }
                eprintln!("interrupted: deleted {} test namespaces", names.len());
                std::process::exit(130);
            }
        });
        let action = nix::sys::signal::SigAction::new(
            nix::sys::signal::SigHandler::Handler(on_signal),
            nix::sys::signal::SaFlags::SA_RESTART,
            nix::sys::signal::SigSet::empty(),
        );
        for sig in [nix::sys::signal::SIGINT, nix::sys::signal::SIGTERM] {
            unsafe { nix::sys::signal::sigaction(sig, &action) }.expect("sigaction");
        }

        let list = run(&["ip", "netns", "list"]);
        for line in list.lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            let Some(rest) = name.strip_prefix(PREFIX) else {
                continue;
            };
            let pid = rest.split('-').next().unwrap_or("");
            if pid.parse::<u32>().is_ok() && !std::path::Path::new(&format!("/proc/{pid}")).exists()
            {
                eprintln!("deleting stale namespace {name}");
                delete_ns(name);
            }
        }
    });
}

/// The namespaces of one test; deleted on drop.
pub struct Lab {
    names: Vec<String>,
}

impl Lab {
    pub fn new() -> Lab {
        init_process();
        Lab { names: Vec::new() }
    }

    /// A new namespace with `lo` up.
    pub fn ns(&mut self, tag: &str) -> String {
        let name = format!(
            "{PREFIX}{}-{}-{tag}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        {
            let _g = IP_NETNS.lock().unwrap_or_else(|p| p.into_inner());
            // Register before creating so a signal in between still cleans up.
            LIVE.lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(name.clone());
            run(&["ip", "netns", "add", &name]);
        }
        self.names.push(name.clone());
        ip(&name, &["link", "set", "lo", "up"]);
        name
    }

    /// A veth pair `a_if` (in `a`) <-> `b_if` (in `b`), both up. Created
    /// inside `a`, moved straight to `b`: nothing appears in the host.
    pub fn veth(&self, a: &str, a_if: &str, b: &str, b_if: &str) {
        ip(
            a,
            &[
                "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", b,
            ],
        );
        ip(a, &["link", "set", a_if, "up"]);
        ip(b, &["link", "set", b_if, "up"]);
    }

    /// Add an address; IPv6 ones without DAD so they are usable at once.
    pub fn addr(&self, ns: &str, dev: &str, cidr: &str) {
        if cidr.contains(':') {
            ip(ns, &["-6", "addr", "add", cidr, "dev", dev, "nodad"]);
        } else {
            ip(ns, &["addr", "add", cidr, "dev", dev]);
        }
    }

    /// A bridge in `ns` without STP delay or multicast snooping (which would
    /// otherwise hold back neighbour discovery multicast).
    pub fn bridge(&self, ns: &str, name: &str) {
        ip(
            ns,
            &[
                "link",
                "add",
                name,
                "type",
                "bridge",
                "forward_delay",
                "0",
                "mcast_snooping",
                "0",
            ],
        );
        ip(ns, &["link", "set", name, "up"]);
    }

    pub fn enslave(&self, ns: &str, port: &str, bridge: &str) {
        ip(ns, &["link", "set", port, "master", bridge]);
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for n in &self.names {
            delete_ns(n);
            LIVE.lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|x| x != n);
        }
    }
}

/// The MAC of `dev` in `ns`, as `ip` reports it.
pub fn mac_of(ns: &str, dev: &str) -> MacAddr {
    let out = ip(ns, &["-o", "link", "show", "dev", dev]);
    let mac = out
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap_or_else(|| panic!("no link/ether in `ip -n {ns} link show dev {dev}`: {out}"));
    mac.parse().unwrap()
}

/// The addresses on `dev` in `ns` as `ip -o addr` lines.
pub fn addrs(ns: &str, dev: &str) -> String {
    ip(ns, &["-o", "addr", "show", "dev", dev])
}

/// The neighbour entry for `addr` on `dev` in `ns`: (MAC, state).
pub fn neigh(ns: &str, dev: &str, addr: IpAddr) -> Option<(MacAddr, String)> {
    let fam = if addr.is_ipv4() { "-4" } else { "-6" };
    let out = ip(ns, &[fam, "neigh", "show", &addr.to_string(), "dev", dev]);
    let words: Vec<&str> = out.split_whitespace().collect();
    let i = words.iter().position(|w| *w == "lladdr")?;
    let mac = words.get(i + 1)?.parse().ok()?;
    Some((mac, words.last()?.to_string()))
}

/// Poll `check` until it returns `Some`, or panic after `timeout`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Run `f` on a fresh thread that first enters namespace `ns`; the test
/// thread itself stays in the host namespace.
pub fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        enter(&path);
        f()
    })
    .join()
    .unwrap_or_else(|p| std::panic::resume_unwind(p))
}

fn enter(path: &str) {
    let f = File::open(path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
    setns(&f, CloneFlags::CLONE_NEWNET).unwrap_or_else(|e| panic!("setns {path}: {e}"));
}

type Job = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()>>> + Send>;

/// A thread inside a namespace running a tokio runtime, for providers whose
/// background tasks must keep running between calls.
pub struct NsRuntime {
    tx: Option<tokio::sync::mpsc::UnboundedSender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl NsRuntime {
    pub fn new(ns: &str) -> NsRuntime {
        let path = format!("/run/netns/{ns}");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Job>();
        let thread = std::thread::spawn(move || {
            enter(&path);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                while let Some(job) = rx.recv().await {
                    job().await;
                }
            });
        });
        NsRuntime {
            tx: Some(tx),
            thread: Some(thread),
        }
    }

    /// Run an async job on the namespace's runtime and wait for its result.
    pub fn run<T, Fut>(&self, f: impl FnOnce() -> Fut + Send + 'static) -> T
    where
        T: Send + 'static,
        Fut: Future<Output = T> + 'static,
    {
        let (rtx, rrx) = std::sync::mpsc::channel();
        let job: Job = Box::new(move || {
            Box::pin(async move {
                let _ = rtx.send(f().await);
            })
        });
        self.tx
            .as_ref()
            .unwrap()
            .send(job)
            .expect("namespace runtime is gone");
        rrx.recv().expect("namespace runtime job panicked")
    }
}

impl Drop for NsRuntime {
    fn drop(&mut self) {
        // Closing the channel ends the loop; dropping the runtime ends its
        // tasks, and the thread's reference to the namespace goes with it.
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Send one UDP datagram from `ns` to `to:9`, so the kernel resolves `to`.
pub fn poke(ns: &str, to: IpAddr) {
    in_ns(ns, move || {
        let bind = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
        let s = std::net::UdpSocket::bind(bind).expect("udp bind");
        s.send_to(b"khvip", (to, 9)).expect("udp send");
    });
}

/// A packet socket receiving every frame on one interface.
pub struct Capture {
    socket: Socket,
}

pub struct Captured {
    /// When this test read the frame.
    pub at: Instant,
    /// When the kernel received it (wall clock), exact even if the reader lagged.
    pub stamp: Duration,
    pub bytes: Vec<u8>,
}

fn stamp_ioctl(fd: std::os::fd::RawFd) -> std::io::Result<Duration> {
    const SIOCGSTAMP: libc::c_ulong = 0x8906; // the generic sockios number
    let mut tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 0,
    };
    // SAFETY: SIOCGSTAMP writes one timeval.
    if unsafe { libc::ioctl(fd, SIOCGSTAMP as _, &mut tv) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(Duration::new(tv.tv_sec as u64, tv.tv_usec as u32 * 1000))
}

/// The kernel's receive time of the last frame read from `fd`.
fn last_stamp(fd: std::os::fd::RawFd) -> Duration {
    stamp_ioctl(fd).unwrap_or_else(|e| panic!("SIOCGSTAMP: {e}"))
}

impl Capture {
    pub fn open(ns: &str, dev: &str) -> Capture {
        let dev = dev.to_string();
        // A socket stays in the namespace it was made in, whichever thread
        // reads it later.
        let socket = in_ns(ns, move || {
            let eth_p_all = (libc::ETH_P_ALL as u16).to_be();
            let s = Socket::new(
                Domain::PACKET,
                Type::RAW,
                Some(Protocol::from(i32::from(eth_p_all))),
            )
            .expect("packet socket");
            let index = nix::net::if_::if_nametoindex(dev.as_str()).expect("if_nametoindex");
            let ll = libc::sockaddr_ll {
                sll_family: libc::AF_PACKET as libc::sa_family_t,
                sll_protocol: eth_p_all,
                sll_ifindex: index as libc::c_int,
                sll_hatype: 0,
                sll_pkttype: 0,
                sll_halen: 0,
                sll_addr: [0; 8],
            };
            let ((), addr) = unsafe {
                SockAddr::try_init(|storage, len| {
                    storage.cast::<libc::sockaddr_ll>().write(ll);
                    *len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
                    Ok(())
                })
            }
            .unwrap();
            s.bind(&addr).expect("bind packet socket");
            s.set_read_timeout(Some(Duration::from_millis(10))).unwrap();
            // Stamp every frame on arrival: the first SIOCGSTAMP switches
            // that on (and fails, nothing read yet); without it the first
            // frame would be stamped when asked, not when it came in.
            let _ = stamp_ioctl(s.as_raw_fd());
            s
        });
        Capture { socket }
    }

    /// Frames matching `keep`, received until `done` says the collection is
    /// complete or `timeout` passes.
    pub fn collect(
        &self,
        timeout: Duration,
        keep: impl Fn(&[u8]) -> bool,
        done: impl Fn(&[Captured]) -> bool,
    ) -> Vec<Captured> {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::new();
        let mut buf = vec![0u8; 2048];
        while Instant::now() < deadline && !done(&got) {
            match (&self.socket).read(&mut buf) {
                Ok(n) if keep(&buf[..n]) => got.push(Captured {
                    at: Instant::now(),
                    stamp: last_stamp(self.socket.as_raw_fd()),
                    bytes: buf[..n].to_vec(),
                }),
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => panic!("capture read (fd {}): {e}", self.socket.as_raw_fd()),
            }
        }
        got
    }
}

/// Is `frame` a gratuitous ARP (request or reply) from `mac` for `ip`?
pub fn is_garp_from(frame: &[u8], mac: MacAddr, ip: std::net::Ipv4Addr) -> bool {
    frame.len() >= 42
        && frame[6..12] == mac.0
        && frame[12..14] == [0x08, 0x06]
        && frame[28..32] == ip.octets()
        && frame[38..42] == ip.octets()
}

/// ARP operation of an ARP frame.
pub fn arp_op(frame: &[u8]) -> u16 {
    u16::from_be_bytes([frame[20], frame[21]])
}

/// Is `frame` a neighbour advertisement from `mac` for `target`?
pub fn is_na_from(frame: &[u8], mac: MacAddr, target: std::net::Ipv6Addr) -> bool {
    frame.len() >= 78
        && frame[6..12] == mac.0
        && frame[12..14] == [0x86, 0xdd]
        && frame[20] == 58
        && frame[54] == 136
        && frame[62..78] == target.octets()
}
