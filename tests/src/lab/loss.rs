//! Random packet loss inside a lab node's namespace with nftables (the
//! kernel here has no netem): `numgen random mod 100 < N drop` on UDP and
//! VRRP (IP protocol 112) in the namespace's **input** hook only, so a packet
//! between two nodes crosses exactly one such rule and is lost with
//! probability N %. Loopback is exempt (`iifname != "lo"`): the agent relays
//! its own gossip through loopback sockets, and that is no link. The table lives in the node's namespace, never in the
//! host's ruleset, and goes with the namespace when the lab is torn down.

use std::process::Command;

use super::cmd;
use super::error::Result;

/// The nftables table the lab owns inside a node namespace.
pub const TABLE: &str = "khl_loss";

/// The nft script that (re)creates [`TABLE`] dropping `pct` % of incoming
/// UDP and VRRP packets. Creating then deleting first makes it idempotent.
pub fn script(pct: u8) -> String {
    // nft takes `mod 100 < N` only for N < 100; 100 % is a plain drop.
    let sel = if pct >= 100 {
        String::new()
    } else {
        format!("numgen random mod 100 < {pct} ")
    };
    format!(
        "add table inet {TABLE}\n\
         delete table inet {TABLE}\n\
         table inet {TABLE} {{\n\
         \x20 chain input {{\n\
         \x20   type filter hook input priority -150; policy accept;\n\
         \x20   iifname != \"lo\" meta l4proto {{ udp, 112 }} {sel}counter drop\n\
         \x20 }}\n\
         }}\n"
    )
}

/// The nft script that removes [`TABLE`] (if present).
pub fn clear_script() -> String {
    format!("add table inet {TABLE}\ndelete table inet {TABLE}\n")
}

/// Drop `pct` % of UDP and VRRP packets arriving in namespace `ns`.
pub fn set(ns: &str, pct: u8) -> Result<()> {
    cmd::nft_in(ns, TABLE, &script(pct))
}

/// Remove the loss rules from namespace `ns`.
pub fn clear(ns: &str) -> Result<()> {
    cmd::nft_in(ns, TABLE, &clear_script())
}

/// Packets the loss rule of namespace `ns` dropped so far (its counter).
pub fn dropped(ns: &str) -> Result<u64> {
    let out = cmd::run(
        Command::new("ip").args(["netns", "exec", ns, "nft", "list", "table", "inet", TABLE]),
    )?;
    Ok(parse_dropped(&String::from_utf8_lossy(&out.stdout)))
}

/// The `packets N` of the first counter in `nft list table` output.
pub fn parse_dropped(listing: &str) -> u64 {
    let mut it = listing.split_whitespace();
    while let Some(w) = it.next() {
        if w == "packets" {
            return it.next().and_then(|n| n.parse().ok()).unwrap_or(0);
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_drops_udp_and_vrrp_on_input_only() {
        let s = script(30);
        assert!(s.contains("hook input"), "{s}");
        assert!(!s.contains("hook output"), "{s}");
        assert!(
            s.contains(
                "iifname != \"lo\" meta l4proto { udp, 112 } numgen random mod 100 < 30 counter drop"
            ),
            "{s}"
        );
        assert!(s.starts_with("add table inet khl_loss\ndelete table inet khl_loss\n"));
        assert!(script(100).contains("{ udp, 112 } counter drop"));
        assert!(script(200).contains("{ udp, 112 } counter drop"));
    }

    #[test]
    fn clear_is_idempotent() {
        assert_eq!(
            clear_script(),
            "add table inet khl_loss\ndelete table inet khl_loss\n"
        );
    }

    /// Datagrams from `from_ns` to `to` (an address of `to_ns`) that
    /// arrive, out of `n` sent.
    fn delivered(from_ns: &str, to_ns: &str, to: std::net::Ipv4Addr, n: usize) -> usize {
        use std::net::UdpSocket;
        let rx = crate::lab::netns::run_in(to_ns, move || {
            let s = UdpSocket::bind((to, 0)).expect("bind receiver");
            s.set_read_timeout(Some(std::time::Duration::from_millis(300)))
                .unwrap();
            s
        })
        .expect("receiver in namespace");
        let dst = rx.local_addr().unwrap();
        crate::lab::netns::run_in(from_ns, move || {
            let s = UdpSocket::bind(("0.0.0.0", 0)).expect("bind sender");
            for i in 0..n {
                s.send_to(&(i as u32).to_be_bytes(), dst).expect("send");
            }
        })
        .expect("sender in namespace");
        let mut got = 0;
        let mut buf = [0u8; 16];
        while rx.recv(&mut buf).is_ok() {
            got += 1;
        }
        got
    }

    /// In a real lab: 100 % loss drops every UDP datagram arriving from
    /// another node (and the counter shows them) but not loopback; after
    /// `clear` everything arrives again.
    #[test]
    fn drops_udp_from_other_nodes_only_while_set() {
        use crate::lab::{Lab, LabSpec, Topology};
        if let Some(why) = crate::lab::skip_reason() {
            eprintln!("skipping lab test: {why}");
            return;
        }
        if !cmd::have_tool("nft") {
            eprintln!("skipping lab test: no nft (apt-get install -y nftables)");
            return;
        }
        let _g = crate::lab::serial().expect("lab lock");
        let lab = Lab::up(
            LabSpec::new(Topology::Vip)
                .nodes(2)
                .without_agents()
                .name(format!("loss-unit-{}", std::process::id())),
        )
        .expect("lab up");
        let n = lab.nodes();
        let (a, b) = (n[0].clone(), n[1].clone());
        assert_eq!(delivered(&a.ns, &b.ns, b.addr, 50), 50, "no rule yet");
        set(&b.ns, 100).unwrap();
        set(&b.ns, 100).unwrap(); // idempotent
        assert_eq!(delivered(&a.ns, &b.ns, b.addr, 50), 0, "100 % loss");
        assert!(dropped(&b.ns).unwrap() >= 50);
        let lo = std::net::Ipv4Addr::LOCALHOST;
        assert_eq!(delivered(&b.ns, &b.ns, lo, 50), 50, "loopback is exempt");
        // The sender's own namespace has no rule: its input is untouched.
        assert_eq!(delivered(&b.ns, &a.ns, a.addr, 50), 50, "only input");
        clear(&b.ns).unwrap();
        clear(&b.ns).unwrap(); // idempotent
        assert_eq!(delivered(&a.ns, &b.ns, b.addr, 50), 50, "cleared");
        lab.down();
    }

    #[test]
    fn counter_is_parsed() {
        let l = "table inet khl_loss {\n\tchain input {\n\t\ttype filter hook input priority -150; policy accept;\n\t\tiifname != \"lo\" meta l4proto { udp, 112 } numgen random mod 100 < 30 counter packets 417 bytes 60012 drop\n\t}\n}\n";
        assert_eq!(parse_dropped(l), 417);
        assert_eq!(parse_dropped("table inet khl_loss {}"), 0);
    }
}
