//! kubeha-vip: the virtual IP.
//!
//! A [`VipProvider`] makes "this node holds the VIP" true or false and tells
//! the network about it. Every operation is an idempotent "make it so" that
//! reports whether it changed anything ([`Change`]). Deciding *when* to hold
//! the VIP (leases, quorum) is not this crate's business: the agent does that
//! and calls in here.
//!
//! Provider `arp` ([`ArpVip`]) is for L2 networks (on premises, the lab):
//! the address goes on the interface through netlink (as a /32 or /128 by
//! default, so it never is a secondary that vanishes with a primary), then
//! gratuitous ARP (IPv4) or unsolicited neighbour advertisements (IPv6) move
//! the neighbours' caches to this node's MAC. Provider `digitalocean`
//! ([`digitalocean::DoVip`]) assigns a DigitalOcean Reserved IP through the
//! API, on a background task.
//!
//! Linux only; elsewhere the operations fail with [`VipError::Unsupported`]
//! (the packet builders in [`packet`] are pure and work everywhere).

// Off Linux the I/O half is compiled out; what only it uses is then unused.
#![cfg_attr(not(target_os = "linux"), allow(dead_code))]

mod arp;
pub mod digitalocean;
mod error;
#[cfg(target_os = "linux")]
mod fence;
pub mod packet;
#[cfg(target_os = "linux")]
mod sys;

use std::net::IpAddr;
use std::time::Duration;

pub use arp::ArpVip;
pub use error::VipError;
#[cfg(target_os = "linux")]
pub use fence::VipFence;
pub use packet::MacAddr;
#[cfg(target_os = "linux")]
pub use sys::AddressEvent;

use kubeha_core::config::{VipConfig, VipProviderKind};

/// Whether a "make it so" operation had to change anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Changed,
    Unchanged,
}

impl Change {
    pub fn is_changed(self) -> bool {
        self == Change::Changed
    }
}

/// How a provider announces the VIP: `count` rounds, the first at once, the
/// others `interval` apart (in the background, so `acquire` does not wait).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Announce {
    /// Rounds per announcement, at least 1.
    pub count: u32,
    pub interval: Duration,
}

impl Default for Announce {
    /// 5 rounds 100 ms apart: keepalived's `garp_master_repeat` count, sent
    /// faster so a client that missed the first frame moves within 0.1 s.
    fn default() -> Self {
        Announce {
            count: 5,
            interval: Duration::from_millis(100),
        }
    }
}

/// A way of holding a VIP. Object safe: the agent keeps a
/// `Box<dyn VipProvider>` or `Arc<dyn VipProvider>`.
///
/// Calls on one provider are serialized: a `release` waits for a running
/// `acquire` and the reverse.
#[async_trait::async_trait]
pub trait VipProvider: Send + Sync + std::fmt::Debug {
    /// Make this node hold the VIP, then announce it. `Unchanged` when it
    /// already held it (it is announced again anyway). If the address went
    /// on but the first announcement round failed (say the link is down),
    /// the error says so and the address stays: call `acquire` again to
    /// retry, or `release`.
    async fn acquire(&self) -> Result<Change, VipError>;

    /// Make this node not hold the VIP. Stops pending announcements first, so
    /// nothing claims the VIP for this node once `release` has returned.
    async fn release(&self) -> Result<Change, VipError>;

    /// Restart the address's kernel lifetime (providers that add it with
    /// one, see [`ArpVip::with_lifetime`]); call only while holding, as it
    /// puts the address back if it is missing, without announcing it.
    async fn renew(&self) -> Result<(), VipError> {
        Ok(())
    }

    /// Whether this node holds the VIP right now.
    async fn is_held(&self) -> Result<bool, VipError>;

    /// Announce again, with the full repeat schedule: after a healed
    /// partition, so that no client stays on a stale MAC. Fails with
    /// [`VipError::NotHeld`] if this node does not hold the VIP.
    async fn announce(&self) -> Result<(), VipError>;

    /// One announcement round, for periodic re-announcement while holding.
    /// Fails with [`VipError::NotHeld`] if this node does not hold the VIP.
    async fn refresh(&self) -> Result<(), VipError>;

    /// For logs, e.g. "arp 10.0.0.10/32 on `eth1`".
    fn describe(&self) -> String;

    /// The provider's own view for status (a cloud provider's last call
    /// and action); `None` for providers that have nothing to add.
    fn provider_status(&self) -> Option<kubeha_core::api::VipProviderStatus> {
        None
    }

    /// A cloud provider's view of this node's assignment, which the agent
    /// feeds to the core (`Input::VipAssignment`); `None` for providers whose
    /// `acquire` is complete when it returns.
    fn assignment(&self) -> Option<kubeha_core::lease::Assignment> {
        None
    }

    /// While this node holds the lease: how long from now it stays valid
    /// (`None`: not holding). The agent sets it after every step. A cloud
    /// provider makes no call that moves the address once it has passed:
    /// a task that runs on after its agent froze waits for its release.
    fn set_lease_deadline(&self, _remaining: Option<std::time::Duration>) {}
}

/// The provider a validated `[vip]` section asks for.
/// `lifetime`: see [`ArpVip::with_lifetime`].
pub fn from_config(
    cfg: &VipConfig,
    announce: Announce,
    lifetime: Option<u32>,
) -> Result<Box<dyn VipProvider>, VipError> {
    match cfg.provider {
        VipProviderKind::Arp => {
            let interface = cfg.interface.as_deref().ok_or(VipError::MissingInterface)?;
            let vip = ArpVip::new(interface, cfg.address, Some(cfg.prefix_len), announce)?;
            Ok(Box::new(match lifetime {
                Some(secs) => vip.with_lifetime(secs),
                None => vip,
            }))
        }
        VipProviderKind::Digitalocean => digitalocean::from_config(cfg, None),
    }
}

/// Remove `address` (with any prefix length) from `interface`, synchronously:
/// for `kubeha-agent --release-vip`, run after the agent died to remove a VIP
/// it left behind. A missing interface counts as `Unchanged`. Builds its own
/// small runtime (on a separate thread when called from inside one).
pub fn release_blocking(interface: &str, address: IpAddr) -> Result<Change, VipError> {
    arp::validate_interface(interface)?;
    #[cfg(target_os = "linux")]
    {
        let run = || -> Result<Change, VipError> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|error| VipError::Runtime {
                    interface: interface.to_string(),
                    address,
                    error,
                })?;
            rt.block_on(async {
                let nl = sys::Netlink::open()?;
                nl.remove_address(interface, address).await
            })
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            // A runtime cannot be started from inside another one. The new
            // thread inherits this thread's network namespace.
            std::thread::scope(|s| {
                s.spawn(run)
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
        } else {
            run()
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = address;
        Err(VipError::Unsupported {
            what: "releasing a VIP",
        })
    }
}

/// An interface as the `arp` provider sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub index: u32,
    /// `None` when the link is not Ethernet (loopback, WireGuard, tun ...).
    pub mac: Option<MacAddr>,
    pub up: bool,
}

/// Look up an interface's index and MAC by name.
pub async fn lookup_interface(name: &str) -> Result<Interface, VipError> {
    arp::validate_interface(name)?;
    #[cfg(target_os = "linux")]
    {
        sys::Netlink::open()?.interface(name).await
    }
    #[cfg(not(target_os = "linux"))]
    {
        Err(VipError::Unsupported {
            what: "looking up an interface",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kubeha_core::config::DigitalOceanConfig;

    fn cfg(provider: VipProviderKind, interface: Option<&str>) -> VipConfig {
        VipConfig {
            provider,
            address: "198.18.0.30".parse().unwrap(),
            prefix_len: 32,
            interface: interface.map(str::to_string),
            priority: 100,
            digitalocean: None,
        }
    }

    #[test]
    fn from_config_builds_arp() {
        let p = from_config(
            &cfg(VipProviderKind::Arp, Some("eth1")),
            Announce::default(),
            None,
        )
        .unwrap();
        assert_eq!(p.describe(), "arp 198.18.0.30/32 on `eth1`");
    }

    #[test]
    fn from_config_errors() {
        let e =
            from_config(&cfg(VipProviderKind::Arp, None), Announce::default(), None).unwrap_err();
        assert_eq!(e.to_string(), "VIP provider `arp` needs `vip.interface`");

        let mut c = cfg(VipProviderKind::Digitalocean, None);
        c.digitalocean = Some(DigitalOceanConfig {
            token_file: "/etc/kubeha/do-token".into(),
            reserved_ip: "203.0.113.7".parse().unwrap(),
            api_url: "ftp://127.0.0.1:1".into(),
            metadata_url: digitalocean::METADATA_URL.into(),
            ca_file: None,
            assign_timeout: std::time::Duration::from_secs(60),
        });
        let e = from_config(&c, Announce::default(), None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "`vip.api_url`: `ftp://127.0.0.1:1` must start with https:// or http://"
        );
    }

    #[test]
    fn release_blocking_validates_the_name_first() {
        let e = release_blocking("a/b", "198.18.0.30".parse().unwrap()).unwrap_err();
        assert!(matches!(e, VipError::InvalidInterface { .. }), "{e}");
    }

    #[test]
    fn provider_is_object_safe() {
        let p: std::sync::Arc<dyn VipProvider> = std::sync::Arc::new(
            ArpVip::new(
                "eth1",
                "2001:db8::30".parse().unwrap(),
                None,
                Announce::default(),
            )
            .unwrap(),
        );
        assert_eq!(p.describe(), "arp 2001:db8::30/128 on `eth1`");
    }
}
