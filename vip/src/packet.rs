//! Pure builders for the frames that move a VIP: gratuitous ARP (IPv4) and
//! unsolicited neighbour advertisement (IPv6). They return whole Ethernet
//! frames so the sender only has to put them on the wire.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

pub const ETHERTYPE_ARP: u16 = 0x0806;
pub const ETHERTYPE_IPV6: u16 = 0x86dd;

/// Minimum Ethernet frame without FCS. Some drivers (veth, bridges) do not
/// pad short frames, so the builders do it.
const ETH_MIN_FRAME: usize = 60;
const ETH_HEADER: usize = 14;
const ARP_BODY: usize = 28;
const IPV6_HEADER: usize = 40;
const NA_BODY: usize = 32;

const ARP_OP_REQUEST: u16 = 1;
const ARP_OP_REPLY: u16 = 2;
const ICMPV6_NEIGHBOUR_ADVERTISEMENT: u8 = 136;
const IPPROTO_ICMPV6: u8 = 58;
/// RFC 4861 7.1.2: receivers drop neighbour discovery with any other hop limit.
const ND_HOP_LIMIT: u8 = 255;
const NA_FLAG_OVERRIDE: u8 = 0x20;
const ND_OPT_TARGET_LINK_ADDR: u8 = 2;

pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

/// An Ethernet (EUI-48) address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);
    pub const ZERO: MacAddr = MacAddr([0; 6]);

    pub fn octets(self) -> [u8; 6] {
        self.0
    }

    /// 33:33 followed by the low 32 bits of the group (RFC 2464 section 7).
    pub fn ipv6_multicast(group: Ipv6Addr) -> MacAddr {
        let o = group.octets();
        MacAddr([0x33, 0x33, o[12], o[13], o[14], o[15]])
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            o[0], o[1], o[2], o[3], o[4], o[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a MAC address (expected six hex octets separated by `:`)")]
pub struct ParseMacError(String);

impl FromStr for MacAddr {
    type Err = ParseMacError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseMacError(s.to_string());
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut out {
            let part = parts.next().ok_or_else(err)?;
            if part.len() != 2 {
                return Err(err());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(MacAddr(out))
    }
}

fn ethernet_header(frame: &mut Vec<u8>, dst: MacAddr, src: MacAddr, ethertype: u16) {
    frame.extend_from_slice(&dst.0);
    frame.extend_from_slice(&src.0);
    frame.extend_from_slice(&ethertype.to_be_bytes());
}

fn arp(op: u16, mac: MacAddr, ip: Ipv4Addr, target_mac: MacAddr) -> Vec<u8> {
    let mut f = Vec::with_capacity(ETH_MIN_FRAME);
    ethernet_header(&mut f, MacAddr::BROADCAST, mac, ETHERTYPE_ARP);
    f.extend_from_slice(&1u16.to_be_bytes()); // hardware type: Ethernet
    f.extend_from_slice(&0x0800u16.to_be_bytes()); // protocol type: IPv4
    f.push(6); // hardware address length
    f.push(4); // protocol address length
    f.extend_from_slice(&op.to_be_bytes());
    f.extend_from_slice(&mac.0);
    f.extend_from_slice(&ip.octets());
    f.extend_from_slice(&target_mac.0);
    f.extend_from_slice(&ip.octets());
    debug_assert_eq!(f.len(), ETH_HEADER + ARP_BODY);
    f.resize(ETH_MIN_FRAME, 0);
    f
}

/// Gratuitous ARP request (RFC 5227 "ARP announcement"): broadcast, sender and
/// target protocol address both `ip`, target hardware address zero.
pub fn garp_request(mac: MacAddr, ip: Ipv4Addr) -> Vec<u8> {
    arp(ARP_OP_REQUEST, mac, ip, MacAddr::ZERO)
}

/// Gratuitous ARP reply, broadcast. The target hardware address repeats the
/// sender's: Linux only treats a reply as gratuitous (and overrides a fresh
/// neighbour entry) when it does (RFC 5944 4.6).
pub fn garp_reply(mac: MacAddr, ip: Ipv4Addr) -> Vec<u8> {
    arp(ARP_OP_REPLY, mac, ip, mac)
}

/// Unsolicited neighbour advertisement (RFC 4861 7.2.6) for `target`, sent
/// from `target` itself to all nodes, Override set, Solicited and Router
/// clear, with a target link-layer address option carrying `mac`.
pub fn unsolicited_na(mac: MacAddr, target: Ipv6Addr) -> Vec<u8> {
    let src = target;
    let dst = ALL_NODES;

    let mut icmp = Vec::with_capacity(NA_BODY);
    icmp.push(ICMPV6_NEIGHBOUR_ADVERTISEMENT);
    icmp.push(0); // code
    icmp.extend_from_slice(&[0, 0]); // checksum, filled in below
    icmp.extend_from_slice(&[NA_FLAG_OVERRIDE, 0, 0, 0]);
    icmp.extend_from_slice(&target.octets());
    icmp.push(ND_OPT_TARGET_LINK_ADDR);
    icmp.push(1); // option length in units of 8 octets
    icmp.extend_from_slice(&mac.0);
    debug_assert_eq!(icmp.len(), NA_BODY);
    let sum = icmpv6_checksum(src, dst, &icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());

    let mut f = Vec::with_capacity(ETH_HEADER + IPV6_HEADER + NA_BODY);
    ethernet_header(&mut f, MacAddr::ipv6_multicast(dst), mac, ETHERTYPE_IPV6);
    f.extend_from_slice(&[0x60, 0, 0, 0]); // version 6, traffic class 0, flow label 0
    f.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
    f.push(IPPROTO_ICMPV6);
    f.push(ND_HOP_LIMIT);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(&icmp);
    f
}

/// RFC 1071 one's-complement sum of 16-bit big-endian words, not yet inverted.
fn ones_complement_sum(mut acc: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u32::from(*last) << 8;
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// ICMPv6 checksum over the IPv6 pseudo-header (RFC 8200 8.1) and `message`
/// (whose checksum field must be zero).
pub(crate) fn icmpv6_checksum(src: Ipv6Addr, dst: Ipv6Addr, message: &[u8]) -> u16 {
    let mut acc = ones_complement_sum(0, &src.octets());
    acc = ones_complement_sum(acc, &dst.octets());
    acc = ones_complement_sum(acc, &(message.len() as u32).to_be_bytes());
    acc = ones_complement_sum(acc, &[0, 0, 0, IPPROTO_ICMPV6]);
    acc = ones_complement_sum(acc, message);
    !fold(acc)
}

/// One frame to put on the wire, with what the packet socket needs besides
/// the bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Frame {
    pub what: &'static str,
    pub ethertype: u16,
    pub dst: MacAddr,
    pub bytes: Vec<u8>,
}

/// The frames of one announcement round for `ip` held by `mac`.
pub(crate) fn announcement(mac: MacAddr, ip: std::net::IpAddr) -> Vec<Frame> {
    match ip {
        std::net::IpAddr::V4(ip) => vec![
            Frame {
                what: "gratuitous ARP request",
                ethertype: ETHERTYPE_ARP,
                dst: MacAddr::BROADCAST,
                bytes: garp_request(mac, ip),
            },
            Frame {
                what: "gratuitous ARP reply",
                ethertype: ETHERTYPE_ARP,
                dst: MacAddr::BROADCAST,
                bytes: garp_reply(mac, ip),
            },
        ],
        std::net::IpAddr::V6(ip) => vec![Frame {
            what: "unsolicited neighbour advertisement",
            ethertype: ETHERTYPE_IPV6,
            dst: MacAddr::ipv6_multicast(ALL_NODES),
            bytes: unsolicited_na(mac, ip),
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: MacAddr = MacAddr([0x02, 0x11, 0x22, 0x33, 0x44, 0x55]);

    #[test]
    fn garp_request_bytes() {
        let expected: Vec<u8> = [
            // ethernet: broadcast, our MAC, ARP
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff][..],
            &[0x02, 0x11, 0x22, 0x33, 0x44, 0x55],
            &[0x08, 0x06],
            // htype 1, ptype IPv4, hlen 6, plen 4, op request
            &[0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01],
            // sender 02:11:22:33:44:55 198.18.0.30
            &[0x02, 0x11, 0x22, 0x33, 0x44, 0x55, 0xc6, 0x12, 0x00, 0x1e],
            // target 00:00:00:00:00:00 198.18.0.30
            &[0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xc6, 0x12, 0x00, 0x1e],
            // padding to 60 bytes
            &[0; 18],
        ]
        .concat();
        let got = garp_request(MAC, Ipv4Addr::new(198, 18, 0, 30));
        assert_eq!(got.len(), 60);
        assert_eq!(got, expected);
    }

    #[test]
    fn garp_reply_bytes() {
        let expected: Vec<u8> = [
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff][..],
            &[0x02, 0x11, 0x22, 0x33, 0x44, 0x55],
            &[0x08, 0x06],
            // op reply
            &[0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x02],
            &[0x02, 0x11, 0x22, 0x33, 0x44, 0x55, 0xc6, 0x12, 0x00, 0x1e],
            // target hardware address = sender's
            &[0x02, 0x11, 0x22, 0x33, 0x44, 0x55, 0xc6, 0x12, 0x00, 0x1e],
            &[0; 18],
        ]
        .concat();
        assert_eq!(garp_reply(MAC, Ipv4Addr::new(198, 18, 0, 30)), expected);
    }

    #[test]
    fn unsolicited_na_bytes() {
        // Checksum by hand, 16-bit words:
        //   pseudo src 2001+0db8+0030 = 2de9, dst ff02+0001 = ff03,
        //   length 0020, next header 003a,
        //   icmp 8800 + flags 2000, target 2de9, option 0201+0211+2233+4455 = 6a9a
        //   total 2_6dc9 -> fold 6dcb -> complement 9234
        let expected: Vec<u8> = [
            // ethernet: 33:33:00:00:00:01, our MAC, IPv6
            &[0x33, 0x33, 0x00, 0x00, 0x00, 0x01][..],
            &[0x02, 0x11, 0x22, 0x33, 0x44, 0x55],
            &[0x86, 0xdd],
            // version 6, payload length 32, next header 58, hop limit 255
            &[0x60, 0x00, 0x00, 0x00, 0x00, 0x20, 0x3a, 0xff],
            // source 2001:db8::30
            &[
                0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x00, 0x30,
            ],
            // destination ff02::1
            &[0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x00, 0x01],
            // type 136, code 0, checksum
            &[0x88, 0x00, 0x92, 0x34],
            // flags: override only
            &[0x20, 0x00, 0x00, 0x00],
            // target 2001:db8::30
            &[
                0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x00, 0x30,
            ],
            // option: target link-layer address, length 1, MAC
            &[0x02, 0x01, 0x02, 0x11, 0x22, 0x33, 0x44, 0x55],
        ]
        .concat();
        let got = unsolicited_na(MAC, "2001:db8::30".parse().unwrap());
        assert_eq!(got.len(), 86);
        assert_eq!(got, expected);
    }

    #[test]
    fn na_checksum_verifies_to_zero() {
        // A receiver sums the message including the checksum and expects 0.
        let target: Ipv6Addr = "2001:db8:ffff::abcd".parse().unwrap();
        let f = unsolicited_na(MacAddr([0xfe, 0xdc, 0xba, 0x98, 0x76, 0x54]), target);
        let icmp = &f[ETH_HEADER + IPV6_HEADER..];
        assert_eq!(icmpv6_checksum(target, ALL_NODES, icmp), 0);
    }

    #[test]
    fn rfc1071_example_sum() {
        // RFC 1071 section 3 example: 0001 f203 f4f5 f6f7 sums to ddf2 after folding.
        let acc = ones_complement_sum(0, &[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]);
        assert_eq!(fold(acc), 0xddf2);
        // An odd trailing byte counts as the high half of a word.
        assert_eq!(ones_complement_sum(0, &[0x12, 0x34, 0x56]), 0x1234 + 0x5600);
    }

    #[test]
    fn announcement_frames() {
        let v4 = announcement(MAC, "198.18.0.30".parse().unwrap());
        assert_eq!(v4.len(), 2);
        assert_eq!(
            v4[0].bytes,
            garp_request(MAC, Ipv4Addr::new(198, 18, 0, 30))
        );
        assert_eq!(v4[1].bytes, garp_reply(MAC, Ipv4Addr::new(198, 18, 0, 30)));
        assert!(
            v4.iter()
                .all(|f| f.ethertype == ETHERTYPE_ARP && f.dst == MacAddr::BROADCAST)
        );
        let v6 = announcement(MAC, "2001:db8::30".parse().unwrap());
        assert_eq!(v6.len(), 1);
        assert_eq!(v6[0].ethertype, ETHERTYPE_IPV6);
        assert_eq!(v6[0].dst.to_string(), "33:33:00:00:00:01");
    }

    #[test]
    fn mac_parse_and_display() {
        let m: MacAddr = "02:11:22:33:44:55".parse().unwrap();
        assert_eq!(m, MAC);
        assert_eq!(m.to_string(), "02:11:22:33:44:55");
        assert_eq!("FE:DC:BA:98:76:54".parse::<MacAddr>().unwrap().0[0], 0xfe);
        for bad in [
            "",
            "02:11:22:33:44",
            "02:11:22:33:44:55:66",
            "2:11:22:33:44:55",
            "zz:11:22:33:44:55",
        ] {
            let e = bad.parse::<MacAddr>().unwrap_err();
            assert!(
                e.to_string()
                    .starts_with(&format!("`{bad}` is not a MAC address")),
                "{e}"
            );
        }
    }

    #[test]
    fn ipv6_multicast_mac() {
        assert_eq!(
            MacAddr::ipv6_multicast("ff02::1:ff00:30".parse().unwrap()).to_string(),
            "33:33:ff:00:00:30"
        );
    }
}
