//! A minimal rtnetlink client: dump the IPv4 addresses of a namespace.
//!
//! The VIP sampler asks every node 100 times a second which addresses it
//! has; a netlink dump costs a few microseconds where `ip -n NS addr` costs
//! a fork and exec (milliseconds), which would disturb the timing measured.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::error::Result;
use super::netns;

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTMGRP_IPV4_IFADDR: u32 = 0x10;
const RTM_GETADDR: u16 = 22;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const NLMSG_HDRLEN: usize = 16;
const IFADDRMSG_LEN: usize = 8;

/// An IPv4 address on an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddrEntry {
    pub ifindex: u32,
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
}

/// A NETLINK_ROUTE socket bound to the namespace it was opened in.
pub struct NlSocket {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

impl NlSocket {
    /// Open a socket in the caller's namespace.
    pub fn open() -> std::io::Result<NlSocket> {
        // SAFETY: plain syscalls; the fd is owned right away.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // A receive timeout, so a lost reply cannot hang the sampler.
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 200_000,
        };
        // SAFETY: valid pointer and length.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as u32,
            );
        }
        Ok(NlSocket {
            fd,
            seq: 0,
            buf: vec![0; 64 * 1024],
        })
    }

    /// Open a socket in the caller's namespace that receives IPv4 address
    /// changes (RTMGRP_IPV4_IFADDR), non-blocking.
    pub fn open_monitor() -> std::io::Result<NlSocket> {
        let s = NlSocket::open()?;
        // SAFETY: valid sockaddr_nl; plain syscalls on our descriptor.
        unsafe {
            let mut sa: libc::sockaddr_nl = std::mem::zeroed();
            sa.nl_family = libc::AF_NETLINK as u16;
            sa.nl_groups = RTMGRP_IPV4_IFADDR;
            if libc::bind(
                s.fd.as_raw_fd(),
                &sa as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            let fl = libc::fcntl(s.fd.as_raw_fd(), libc::F_GETFL);
            libc::fcntl(s.fd.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK);
        }
        Ok(s)
    }

    /// Open an address monitor inside namespace `ns`.
    pub fn open_monitor_in(ns: &str) -> Result<NlSocket> {
        let name = ns.to_string();
        netns::run_in(ns, NlSocket::open_monitor)?.map_err(|source| super::error::LabError::Netns {
            ns: name,
            what: "open netlink monitor",
            source,
        })
    }

    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }

    /// One datagram into `buf`; its length.
    fn recv(&mut self, flags: libc::c_int) -> std::io::Result<usize> {
        // SAFETY: the pointer and length describe `buf`, which we own.
        let n = unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                self.buf.as_mut_ptr() as *mut libc::c_void,
                self.buf.len(),
                flags,
            )
        };
        usize::try_from(n).map_err(|_| std::io::Error::last_os_error())
    }

    /// Drain the address changes queued on a monitor socket. An overflowed
    /// queue (ENOBUFS) is reported as an error: events were lost.
    pub fn address_events(&mut self) -> std::io::Result<Vec<(bool, AddrEntry)>> {
        let mut out = Vec::new();
        loop {
            let n = match self.recv(libc::MSG_DONTWAIT) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(out),
                Err(e) => return Err(e),
            };
            parse_addr_events(&self.buf[..n], &mut out);
        }
    }

    /// Open a socket inside namespace `ns`.
    pub fn open_in(ns: &str) -> Result<NlSocket> {
        let name = ns.to_string();
        netns::run_in(ns, NlSocket::open)?.map_err(|source| super::error::LabError::Netns {
            ns: name,
            what: "open netlink socket",
            source,
        })
    }

    /// Every IPv4 address in the namespace.
    pub fn ipv4_addrs(&mut self) -> std::io::Result<Vec<AddrEntry>> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut req = [0u8; NLMSG_HDRLEN + IFADDRMSG_LEN];
        req[0..4].copy_from_slice(&((NLMSG_HDRLEN + IFADDRMSG_LEN) as u32).to_ne_bytes());
        req[4..6].copy_from_slice(&RTM_GETADDR.to_ne_bytes());
        req[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
        req[8..12].copy_from_slice(&seq.to_ne_bytes());
        req[NLMSG_HDRLEN] = libc::AF_INET as u8;
        // SAFETY: valid buffer.
        let n = unsafe {
            libc::send(
                self.fd.as_raw_fd(),
                req.as_ptr() as *const libc::c_void,
                req.len(),
                0,
            )
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut out = Vec::new();
        loop {
            let n = self.recv(0)?;
            match parse_addr_dump(&self.buf[..n], seq, &mut out) {
                Parse::More => continue,
                Parse::Done => return Ok(out),
                Parse::Error(errno) => return Err(std::io::Error::from_raw_os_error(errno)),
            }
        }
    }
}

/// The IPv4 address carried by an RTM_NEWADDR / RTM_DELADDR message.
fn parse_addr_msg(msg: &[u8]) -> Option<AddrEntry> {
    if msg.len() < NLMSG_HDRLEN + IFADDRMSG_LEN {
        return None;
    }
    let ifa = &msg[NLMSG_HDRLEN..];
    if ifa[0] != libc::AF_INET as u8 {
        return None;
    }
    let prefix_len = ifa[1];
    let ifindex = u32_at(ifa, 4);
    let mut local = None;
    let mut address = None;
    let mut a = NLMSG_HDRLEN + IFADDRMSG_LEN;
    while a + 4 <= msg.len() {
        let alen = u16_at(msg, a) as usize;
        let aty = u16_at(msg, a + 2) & 0x3fff;
        if alen < 4 || a + alen > msg.len() {
            break;
        }
        if alen == 8 {
            let ip = Ipv4Addr::new(msg[a + 4], msg[a + 5], msg[a + 6], msg[a + 7]);
            match aty {
                IFA_LOCAL => local = Some(ip),
                IFA_ADDRESS => address = Some(ip),
                _ => {}
            }
        }
        a += align4(alen);
    }
    local.or(address).map(|addr| AddrEntry {
        ifindex,
        addr,
        prefix_len,
    })
}

/// Address changes in one datagram from the RTMGRP_IPV4_IFADDR group:
/// (added, address).
fn parse_addr_events(b: &[u8], out: &mut Vec<(bool, AddrEntry)>) {
    let mut off = 0;
    while off + NLMSG_HDRLEN <= b.len() {
        let len = u32_at(b, off) as usize;
        if len < NLMSG_HDRLEN || off + len > b.len() {
            return;
        }
        let ty = u16_at(b, off + 4);
        let msg = &b[off..off + len];
        off += align4(len);
        let added = match ty {
            RTM_NEWADDR => true,
            RTM_DELADDR => false,
            _ => continue,
        };
        if let Some(e) = parse_addr_msg(msg) {
            out.push((added, e));
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Parse {
    More,
    Done,
    Error(i32),
}

fn u16_at(b: &[u8], i: usize) -> u16 {
    u16::from_ne_bytes([b[i], b[i + 1]])
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Parse one datagram of an RTM_GETADDR dump reply, appending addresses.
/// Messages with another sequence number (a late reply to an earlier,
/// timed-out request) are skipped.
fn parse_addr_dump(b: &[u8], seq: u32, out: &mut Vec<AddrEntry>) -> Parse {
    let mut off = 0;
    while off + NLMSG_HDRLEN <= b.len() {
        let len = u32_at(b, off) as usize;
        if len < NLMSG_HDRLEN || off + len > b.len() {
            return Parse::Error(libc::EBADMSG);
        }
        let ty = u16_at(b, off + 4);
        let mseq = u32_at(b, off + 8);
        let msg = &b[off..off + len];
        off += align4(len);
        if mseq != seq {
            continue;
        }
        match ty {
            NLMSG_DONE => return Parse::Done,
            NLMSG_ERROR => {
                let errno = if msg.len() >= NLMSG_HDRLEN + 4 {
                    -(u32_at(msg, NLMSG_HDRLEN) as i32)
                } else {
                    libc::EBADMSG
                };
                return if errno == 0 {
                    Parse::Done
                } else {
                    Parse::Error(errno)
                };
            }
            RTM_NEWADDR => {
                if let Some(e) = parse_addr_msg(msg) {
                    out.push(e);
                }
            }
            _ => {}
        }
    }
    Parse::More
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(ty: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let len = NLMSG_HDRLEN + payload.len();
        let mut m = Vec::new();
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&ty.to_ne_bytes());
        m.extend_from_slice(&0u16.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(payload);
        while m.len() % 4 != 0 {
            m.push(0);
        }
        m
    }

    fn addr_payload(ifindex: u32, ip: [u8; 4], plen: u8) -> Vec<u8> {
        let mut p = vec![libc::AF_INET as u8, plen, 0, 0];
        p.extend_from_slice(&ifindex.to_ne_bytes());
        for ty in [IFA_ADDRESS, IFA_LOCAL] {
            p.extend_from_slice(&8u16.to_ne_bytes());
            p.extend_from_slice(&ty.to_ne_bytes());
            p.extend_from_slice(&ip);
        }
        // An attribute of another type and odd length, to test alignment.
        p.extend_from_slice(&5u16.to_ne_bytes());
        p.extend_from_slice(&3u16.to_ne_bytes());
        p.extend_from_slice(&[b'x', 0, 0, 0]);
        p
    }

    #[test]
    fn parses_addresses_and_done() {
        let mut b = msg(RTM_NEWADDR, 7, &addr_payload(2, [198, 18, 0, 10], 32));
        b.extend(msg(RTM_NEWADDR, 7, &addr_payload(1, [127, 0, 0, 1], 8)));
        let mut out = Vec::new();
        assert_eq!(parse_addr_dump(&b, 7, &mut out), Parse::More);
        assert_eq!(
            out,
            vec![
                AddrEntry {
                    ifindex: 2,
                    addr: Ipv4Addr::new(198, 18, 0, 10),
                    prefix_len: 32
                },
                AddrEntry {
                    ifindex: 1,
                    addr: Ipv4Addr::LOCALHOST,
                    prefix_len: 8
                }
            ]
        );
        let done = msg(NLMSG_DONE, 7, &0u32.to_ne_bytes());
        assert_eq!(parse_addr_dump(&done, 7, &mut out), Parse::Done);
    }

    #[test]
    fn skips_other_sequence_numbers_and_reports_errors() {
        let mut b = msg(RTM_NEWADDR, 6, &addr_payload(2, [198, 18, 0, 10], 32));
        b.extend(msg(NLMSG_DONE, 6, &0u32.to_ne_bytes()));
        let mut out = Vec::new();
        assert_eq!(parse_addr_dump(&b, 7, &mut out), Parse::More);
        assert!(out.is_empty());
        let err = msg(NLMSG_ERROR, 7, &(-libc::EPERM).to_ne_bytes());
        assert_eq!(
            parse_addr_dump(&err, 7, &mut out),
            Parse::Error(libc::EPERM)
        );
        let truncated = &msg(RTM_NEWADDR, 7, &addr_payload(2, [1, 2, 3, 4], 32))[..20];
        let mut t = truncated.to_vec();
        t[0..4].copy_from_slice(&64u32.to_ne_bytes());
        assert_eq!(
            parse_addr_dump(&t, 7, &mut out),
            Parse::Error(libc::EBADMSG)
        );
    }

    #[test]
    fn parses_address_events() {
        let mut b = msg(RTM_NEWADDR, 0, &addr_payload(2, [198, 18, 0, 10], 32));
        b.extend(msg(RTM_DELADDR, 0, &addr_payload(2, [198, 18, 0, 10], 32)));
        b.extend(msg(NLMSG_DONE, 0, &0u32.to_ne_bytes()));
        let mut out = Vec::new();
        parse_addr_events(&b, &mut out);
        let vip = Ipv4Addr::new(198, 18, 0, 10);
        assert_eq!(out.len(), 2);
        assert!(out[0].0 && out[0].1.addr == vip);
        assert!(!out[1].0 && out[1].1.addr == vip);
    }

    #[test]
    fn dumps_loopback_of_own_namespace() {
        let mut s = NlSocket::open().unwrap();
        let addrs = s.ipv4_addrs().unwrap();
        assert!(
            addrs.iter().any(|a| a.addr == Ipv4Addr::LOCALHOST),
            "{addrs:?}"
        );
    }
}
