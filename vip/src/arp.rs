//! Provider `arp`: the VIP as an address on an Ethernet interface, moved by
//! gratuitous ARP / unsolicited neighbour advertisements.

use std::net::IpAddr;
use std::sync::Mutex as StdMutex;

use tokio::task::JoinHandle;

use crate::{Announce, Change, VipError, VipProvider};

/// Interface names as the kernel accepts them (`dev_valid_name`).
pub(crate) fn validate_interface(name: &str) -> Result<(), VipError> {
    let reason = if name.is_empty() {
        Some("is empty")
    } else if name.len() > 15 {
        Some("is longer than 15 bytes")
    } else if name == "." || name == ".." {
        Some("is `.` or `..`")
    } else if name.contains(['/', ':']) || name.chars().any(char::is_whitespace) {
        Some("contains `/`, `:` or whitespace")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(VipError::InvalidInterface {
            interface: name.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

fn validate_address(address: IpAddr, prefix_len: u8) -> Result<(), VipError> {
    let max = if address.is_ipv4() { 32 } else { 128 };
    let reason = if prefix_len == 0 || prefix_len > max {
        Some(if address.is_ipv4() {
            "prefix length must be 1-32"
        } else {
            "prefix length must be 1-128"
        })
    } else if address.is_unspecified() {
        Some("the unspecified address cannot be a VIP")
    } else if address.is_multicast() {
        Some("a multicast address cannot be a VIP")
    } else if address.is_loopback() {
        Some("a loopback address cannot be a VIP")
    } else if address == IpAddr::from([255, 255, 255, 255]) {
        Some("the broadcast address cannot be a VIP")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(VipError::InvalidAddress {
            address,
            prefix_len,
            reason,
        }),
        None => Ok(()),
    }
}

/// The VIP as an address on `interface`, announced by gratuitous ARP (IPv4)
/// or unsolicited neighbour advertisement (IPv6).
///
/// Holding means: `address` is on `interface`, with any prefix length (the
/// kernel answers ARP/ND for it either way). `acquire` adds it with the
/// configured prefix; `release` removes it with every prefix it has there.
///
/// Each call opens its own netlink and packet sockets, so it acts in the
/// network namespace of the calling thread, and an interface that was
/// recreated (new index, new MAC) is picked up. The exception is removal:
/// the first `release` or `acquire` opens one netlink connection that
/// `release` keeps using, so that removing the VIP never needs a new
/// descriptor (a process out of descriptors, EMFILE, can still let go), and
/// `acquire` fails before adding if that connection cannot be opened.
#[derive(Debug)]
pub struct ArpVip {
    interface: String,
    address: IpAddr,
    prefix_len: u8,
    announce: Announce,
    /// Valid and preferred lifetime (seconds) the address is added with;
    /// `None`: permanent.
    lifetime: Option<u32>,
    /// Serializes acquire/release/announce so they never interleave.
    op: tokio::sync::Mutex<()>,
    /// The background task sending the remaining rounds of an announcement.
    repeats: StdMutex<Option<JoinHandle<()>>>,
    /// The netlink connection kept for `release`.
    #[cfg(target_os = "linux")]
    removal: tokio::sync::Mutex<Reserved>,
}

/// A netlink connection opened ahead of need.
#[cfg(target_os = "linux")]
#[derive(Default)]
struct Reserved(Option<crate::sys::Netlink>);

#[cfg(target_os = "linux")]
impl std::fmt::Debug for Reserved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "open" } else { "not open" })
    }
}

impl ArpVip {
    /// `prefix_len` defaults to 32 (IPv4) or 128 (IPv6). No I/O happens here.
    pub fn new(
        interface: &str,
        address: IpAddr,
        prefix_len: Option<u8>,
        announce: Announce,
    ) -> Result<Self, VipError> {
        validate_interface(interface)?;
        let prefix_len = prefix_len.unwrap_or(if address.is_ipv4() { 32 } else { 128 });
        validate_address(address, prefix_len)?;
        Ok(ArpVip {
            interface: interface.to_string(),
            address,
            prefix_len,
            announce: Announce {
                count: announce.count.max(1),
                interval: announce.interval,
            },
            lifetime: None,
            op: tokio::sync::Mutex::new(()),
            repeats: StdMutex::new(None),
            #[cfg(target_os = "linux")]
            removal: tokio::sync::Mutex::new(Reserved::default()),
        })
    }

    /// Add the address with a finite lifetime of `secs` seconds (at least 1)
    /// instead of a permanent one: the kernel deletes it by itself unless
    /// [`VipProvider::renew`] restarts the lifetime in time. The backstop
    /// for a holder whose every process is frozen or dead.
    pub fn with_lifetime(mut self, secs: u32) -> Self {
        self.lifetime = Some(secs.max(1));
        self
    }

    pub fn lifetime(&self) -> Option<u32> {
        self.lifetime
    }

    pub fn interface(&self) -> &str {
        &self.interface
    }

    pub fn address(&self) -> IpAddr {
        self.address
    }

    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// `10.0.0.10/32` form.
    pub fn cidr(&self) -> String {
        format!("{}/{}", self.address, self.prefix_len)
    }

    /// Stop a running repeat schedule and wait until its task has ended, so
    /// no frame of it goes out afterwards.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    async fn stop_repeats(&self) {
        let task = self
            .repeats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for ArpVip {
    fn drop(&mut self) {
        if let Some(task) = self
            .repeats
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            task.abort();
        }
    }
}

#[cfg(target_os = "linux")]
mod imp {
    use tracing::{debug, info, warn};

    use super::*;
    use crate::packet;
    use crate::sys::{Netlink, PacketSender};

    impl ArpVip {
        /// Send one round now; if more rounds are configured, and `full`,
        /// send them from a background task.
        async fn start_announcing(
            &self,
            iface: &crate::Interface,
            full: bool,
        ) -> Result<(), VipError> {
            self.stop_repeats().await;
            let mac = iface.mac.ok_or_else(|| VipError::NotEthernet {
                interface: self.interface.clone(),
            })?;
            let frames = packet::announcement(mac, self.address);
            let sender = PacketSender::open(iface)?;
            sender.send_round(&frames, self.address)?;
            debug!(vip.addr = %self.address, vip.interface = %self.interface, %mac, round = 1, "vip announced");
            let rounds = if full { self.announce.count } else { 1 };
            if rounds > 1 {
                let interval = self.announce.interval;
                let address = self.address;
                let interface = self.interface.clone();
                // Absolute deadlines, so the rounds do not drift apart.
                let start = tokio::time::Instant::now();
                let task = tokio::spawn(async move {
                    for round in 2..=rounds {
                        tokio::time::sleep_until(start + interval * (round - 1)).await;
                        match sender.send_round(&frames, address) {
                            Ok(()) => {
                                debug!(vip.addr = %address, vip.interface = %interface, round, "vip announced")
                            }
                            Err(e) => {
                                warn!(vip.addr = %address, vip.interface = %interface, round, error = %e, "vip announcement failed")
                            }
                        }
                    }
                });
                *self.repeats.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
            }
            Ok(())
        }

        /// The interface, only when the VIP is on it.
        async fn held_on(&self, nl: &Netlink) -> Result<crate::Interface, VipError> {
            let iface = nl.interface(&self.interface).await?;
            if nl.has_address(&iface, self.address).await? {
                Ok(iface)
            } else {
                Err(VipError::NotHeld {
                    interface: self.interface.clone(),
                    address: self.address,
                })
            }
        }
    }

    impl ArpVip {
        /// Open the removal connection if it is not open yet.
        async fn reserve(&self) -> Result<(), VipError> {
            let mut kept = self.removal.lock().await;
            if kept.0.is_none() {
                kept.0 = Some(Netlink::open()?);
            }
            Ok(())
        }
    }

    #[async_trait::async_trait]
    impl VipProvider for ArpVip {
        async fn acquire(&self) -> Result<Change, VipError> {
            let _op = self.op.lock().await;
            // Never hold an address we could not remove without a new descriptor.
            self.reserve().await?;
            let nl = Netlink::open()?;
            let iface = nl.interface(&self.interface).await?;
            if iface.mac.is_none() {
                // Check before adding: an address we cannot announce would
                // leave clients on the old holder's MAC.
                return Err(VipError::NotEthernet {
                    interface: self.interface.clone(),
                });
            }
            let change = nl
                .add_address(&iface, self.address, self.prefix_len, self.lifetime)
                .await?;
            if change.is_changed() {
                info!(vip.addr = %self.cidr(), vip.interface = %self.interface, "vip added");
            } else {
                debug!(vip.addr = %self.cidr(), vip.interface = %self.interface, "vip already present");
            }
            self.start_announcing(&iface, true).await?;
            Ok(change)
        }

        async fn release(&self) -> Result<Change, VipError> {
            let _op = self.op.lock().await;
            self.stop_repeats().await;
            let mut kept = self.removal.lock().await;
            if kept.0.is_none() {
                kept.0 = Some(Netlink::open()?);
            }
            let nl = kept.0.as_ref().expect("opened above");
            let change = match nl.remove_address(&self.interface, self.address).await {
                Ok(c) => c,
                Err(e) => {
                    // Maybe the connection itself broke: the next call (the
                    // agent retries) opens a fresh one.
                    kept.0 = None;
                    return Err(e);
                }
            };
            if change.is_changed() {
                info!(vip.addr = %self.address, vip.interface = %self.interface, "vip removed");
            } else {
                debug!(vip.addr = %self.address, vip.interface = %self.interface, "vip already absent");
            }
            Ok(change)
        }

        async fn renew(&self) -> Result<(), VipError> {
            if self.lifetime.is_none() {
                return Ok(());
            }
            let _op = self.op.lock().await;
            let nl = Netlink::open()?;
            let iface = nl.interface(&self.interface).await?;
            nl.add_address(&iface, self.address, self.prefix_len, self.lifetime)
                .await
                .map(drop)
        }

        async fn is_held(&self) -> Result<bool, VipError> {
            let nl = Netlink::open()?;
            match nl.interface(&self.interface).await {
                Ok(iface) => nl.has_address(&iface, self.address).await,
                Err(VipError::InterfaceNotFound { .. }) => Ok(false),
                Err(e) => Err(e),
            }
        }

        async fn announce(&self) -> Result<(), VipError> {
            let _op = self.op.lock().await;
            let iface = self.held_on(&Netlink::open()?).await?;
            self.start_announcing(&iface, true).await
        }

        async fn refresh(&self) -> Result<(), VipError> {
            let _op = self.op.lock().await;
            let iface = self.held_on(&Netlink::open()?).await?;
            let mac = iface.mac.ok_or_else(|| VipError::NotEthernet {
                interface: self.interface.clone(),
            })?;
            // One round, leaving a running schedule alone.
            PacketSender::open(&iface)?
                .send_round(&packet::announcement(mac, self.address), self.address)
        }

        fn describe(&self) -> String {
            format!("arp {} on `{}`", self.cidr(), self.interface)
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use super::*;

    const WHAT: &str = "VIP provider `arp`";

    #[async_trait::async_trait]
    impl VipProvider for ArpVip {
        async fn acquire(&self) -> Result<Change, VipError> {
            Err(VipError::Unsupported { what: WHAT })
        }
        async fn release(&self) -> Result<Change, VipError> {
            Err(VipError::Unsupported { what: WHAT })
        }
        async fn is_held(&self) -> Result<bool, VipError> {
            Err(VipError::Unsupported { what: WHAT })
        }
        async fn announce(&self) -> Result<(), VipError> {
            Err(VipError::Unsupported { what: WHAT })
        }
        async fn refresh(&self) -> Result<(), VipError> {
            Err(VipError::Unsupported { what: WHAT })
        }
        fn describe(&self) -> String {
            format!("arp {} on `{}`", self.cidr(), self.interface)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(ifname: &str, addr: &str, prefix: Option<u8>) -> Result<ArpVip, VipError> {
        ArpVip::new(ifname, addr.parse().unwrap(), prefix, Announce::default())
    }

    #[test]
    fn default_prefix_is_host() {
        assert_eq!(
            new("eth1", "198.18.0.30", None).unwrap().cidr(),
            "198.18.0.30/32"
        );
        assert_eq!(
            new("eth1", "2001:db8::30", None).unwrap().cidr(),
            "2001:db8::30/128"
        );
        assert_eq!(
            new("eth1", "198.18.0.30", Some(24)).unwrap().cidr(),
            "198.18.0.30/24"
        );
    }

    #[test]
    fn rejects_bad_addresses() {
        for (addr, prefix, reason) in [
            ("198.18.0.30", Some(33), "prefix length must be 1-32"),
            ("198.18.0.30", Some(0), "prefix length must be 1-32"),
            ("2001:db8::30", Some(129), "prefix length must be 1-128"),
            ("0.0.0.0", None, "the unspecified address cannot be a VIP"),
            ("::", None, "the unspecified address cannot be a VIP"),
            ("224.0.0.18", None, "a multicast address cannot be a VIP"),
            ("ff02::1", None, "a multicast address cannot be a VIP"),
            ("127.0.0.1", None, "a loopback address cannot be a VIP"),
            (
                "255.255.255.255",
                None,
                "the broadcast address cannot be a VIP",
            ),
        ] {
            let e = new("eth1", addr, prefix).unwrap_err();
            let VipError::InvalidAddress { reason: got, .. } = &e else {
                panic!("{addr}: {e}");
            };
            assert_eq!(*got, reason, "{addr}");
        }
        assert_eq!(
            new("eth1", "198.18.0.30", Some(40))
                .unwrap_err()
                .to_string(),
            "invalid VIP `198.18.0.30/40`: prefix length must be 1-32"
        );
    }

    #[test]
    fn rejects_bad_interface_names() {
        for (name, reason) in [
            ("", "is empty"),
            ("averyveryverylong0", "is longer than 15 bytes"),
            ("..", "is `.` or `..`"),
            ("eth1:0", "contains `/`, `:` or whitespace"),
            ("a b", "contains `/`, `:` or whitespace"),
        ] {
            let e = new(name, "198.18.0.30", None).unwrap_err();
            assert_eq!(
                e.to_string(),
                format!("invalid interface name `{name}`: {reason}")
            );
        }
        assert!(new("enp0s31f6.100", "198.18.0.30", None).is_ok());
    }

    #[test]
    fn count_is_at_least_one() {
        let v = ArpVip::new(
            "eth1",
            "198.18.0.30".parse().unwrap(),
            None,
            Announce {
                count: 0,
                interval: std::time::Duration::ZERO,
            },
        )
        .unwrap();
        assert_eq!(v.announce.count, 1);
    }
}
