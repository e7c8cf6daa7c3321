//! The fence: what the VIP guardian (a separate process) needs to take the
//! address off and to see it come back, with every socket opened up front so
//! that acting at a deadline allocates and opens nothing.

use std::net::IpAddr;

use crate::arp::validate_interface;
use crate::sys::{AddressEvent, AddressEvents, Netlink};
use crate::{Change, VipError};

/// Removes the VIP and reports every kernel notification about it.
pub struct VipFence {
    interface: String,
    address: IpAddr,
    nl: Netlink,
    events: AddressEvents,
}

impl std::fmt::Debug for VipFence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VipFence")
            .field("interface", &self.interface)
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl VipFence {
    /// Open both netlink sockets (in the calling thread's network
    /// namespace). Call inside a tokio runtime.
    pub fn open(interface: &str, address: IpAddr) -> Result<VipFence, VipError> {
        validate_interface(interface)?;
        Ok(VipFence {
            interface: interface.to_string(),
            address,
            // Subscribe first: nothing that happens after `open` is missed.
            events: AddressEvents::open()?,
            nl: Netlink::open()?,
        })
    }

    pub fn interface(&self) -> &str {
        &self.interface
    }

    pub fn address(&self) -> IpAddr {
        self.address
    }

    /// Remove the address (every prefix length) from the interface.
    pub async fn remove(&self) -> Result<Change, VipError> {
        self.nl.remove_address(&self.interface, self.address).await
    }

    /// Whether the address is on the interface now.
    pub async fn is_present(&self) -> Result<bool, VipError> {
        match self.nl.interface(&self.interface).await {
            Ok(iface) => self.nl.has_address(&iface, self.address).await,
            Err(VipError::InterfaceNotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The next notification that the address was added (or its lifetime
    /// restarted) or removed, on any interface. `None`: the socket is gone.
    pub async fn next_event(&mut self) -> Option<AddressEvent> {
        self.events.next(self.address).await
    }
}
