//! Linux I/O: rtnetlink for addresses and links, an AF_PACKET socket for
//! announcements. Netlink types stay in here.

use std::io;
use std::mem::size_of;
use std::net::IpAddr;

use futures::TryStreamExt;
use rtnetlink::packet_core::NetlinkPayload;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, CacheInfo,
};
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkLayerType};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tracing::debug;

use crate::packet::{Frame, MacAddr};
use crate::{Change, Interface, VipError};

fn io_error(e: rtnetlink::Error) -> io::Error {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.to_io(),
        other => io::Error::other(other.to_string()),
    }
}

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(-m.raw_code()),
        _ => None,
    }
}

fn family(address: IpAddr) -> AddressFamily {
    match address {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

/// The local address of an address message: IFA_LOCAL when present (IPv4,
/// and the local side of point-to-point links), IFA_ADDRESS otherwise.
fn local_address(msg: &AddressMessage) -> Option<IpAddr> {
    let mut address = None;
    for attr in &msg.attributes {
        match attr {
            AddressAttribute::Local(a) => return Some(*a),
            AddressAttribute::Address(a) => address = Some(*a),
            _ => {}
        }
    }
    address
}

/// One rtnetlink connection, closed on drop. Opened per operation: cheap
/// (one socket), and it acts in the calling thread's network namespace.
pub(crate) struct Netlink {
    handle: rtnetlink::Handle,
    conn: tokio::task::JoinHandle<()>,
}

impl Drop for Netlink {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

impl Netlink {
    pub(crate) fn open() -> Result<Netlink, VipError> {
        let (conn, handle, _) =
            rtnetlink::new_connection().map_err(|error| VipError::Netlink { error })?;
        Ok(Netlink {
            handle,
            conn: tokio::spawn(conn),
        })
    }

    pub(crate) async fn interface(&self, name: &str) -> Result<Interface, VipError> {
        let not_found = || VipError::InterfaceNotFound {
            interface: name.to_string(),
        };
        let msg = match self
            .handle
            .link()
            .get()
            .match_name(name)
            .execute()
            .try_next()
            .await
        {
            Ok(Some(msg)) => msg,
            Ok(None) => return Err(not_found()),
            Err(e) if errno(&e) == Some(libc::ENODEV) => return Err(not_found()),
            Err(e) => {
                return Err(VipError::Lookup {
                    interface: name.to_string(),
                    error: io_error(e),
                });
            }
        };
        let mac = if msg.header.link_layer_type == LinkLayerType::Ether {
            msg.attributes.iter().find_map(|a| match a {
                LinkAttribute::Address(bytes) => {
                    <[u8; 6]>::try_from(bytes.as_slice()).ok().map(MacAddr)
                }
                _ => None,
            })
        } else {
            None
        };
        Ok(Interface {
            name: name.to_string(),
            index: msg.header.index,
            mac,
            up: msg.header.flags.contains(LinkFlags::Up),
        })
    }

    /// The addresses of `address`'s family on `iface` that are `address`.
    async fn matching(
        &self,
        iface: &str,
        index: u32,
        address: IpAddr,
    ) -> Result<Vec<AddressMessage>, VipError> {
        let mut req = self.handle.address().get().set_link_index_filter(index);
        req.message_mut().header.family = family(address);
        let all: Vec<AddressMessage> =
            req.execute()
                .try_collect()
                .await
                .map_err(|e| VipError::List {
                    interface: iface.to_string(),
                    error: io_error(e),
                })?;
        Ok(all
            .into_iter()
            .filter(|m| m.header.family == family(address) && local_address(m) == Some(address))
            .collect())
    }

    pub(crate) async fn has_address(
        &self,
        iface: &Interface,
        address: IpAddr,
    ) -> Result<bool, VipError> {
        Ok(!self
            .matching(&iface.name, iface.index, address)
            .await?
            .is_empty())
    }

    /// Add `address/prefix_len` with replace semantics (never fails because
    /// it exists); `Changed` when it was not there with that prefix before.
    /// With `lifetime` (whole seconds, at least 1) the address is added, or
    /// its lifetime restarted, with that valid and preferred lifetime: the
    /// kernel deletes it by itself unless it is replaced again in time.
    pub(crate) async fn add_address(
        &self,
        iface: &Interface,
        address: IpAddr,
        prefix_len: u8,
        lifetime: Option<u32>,
    ) -> Result<Change, VipError> {
        let before = self.matching(&iface.name, iface.index, address).await?;
        let present = before.iter().any(|m| m.header.prefix_len == prefix_len);
        let mut req = self
            .handle
            .address()
            .add(iface.index, address, prefix_len)
            .replace();
        if address.is_ipv6() {
            // A VIP must answer at once: no duplicate address detection
            // (the lease already guarantees a single holder).
            let msg = req.message_mut();
            msg.header.flags |= AddressHeaderFlags::Nodad;
            msg.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        if let Some(secs) = lifetime {
            let mut ci = CacheInfo::default();
            ci.ifa_valid = secs.max(1);
            ci.ifa_preferred = secs.max(1);
            req.message_mut()
                .attributes
                .push(AddressAttribute::CacheInfo(ci));
        }
        req.execute().await.map_err(|e| VipError::Add {
            interface: iface.name.clone(),
            cidr: format!("{address}/{prefix_len}"),
            error: io_error(e),
        })?;
        Ok(if present {
            Change::Unchanged
        } else {
            Change::Changed
        })
    }

    /// Remove `address` with every prefix length it has on `name`.
    pub(crate) async fn remove_address(
        &self,
        name: &str,
        address: IpAddr,
    ) -> Result<Change, VipError> {
        let iface = match self.interface(name).await {
            Ok(iface) => iface,
            Err(VipError::InterfaceNotFound { .. }) => {
                debug!(vip.addr = %address, vip.interface = %name, "interface absent, nothing to release");
                return Ok(Change::Unchanged);
            }
            Err(e) => return Err(e),
        };
        let mut change = Change::Unchanged;
        for msg in self.matching(name, iface.index, address).await? {
            let cidr = format!("{address}/{}", msg.header.prefix_len);
            match self.handle.address().del(msg).execute().await {
                Ok(()) => change = Change::Changed,
                // Gone since the dump: someone else removed it, fine.
                Err(e) if errno(&e) == Some(libc::EADDRNOTAVAIL) => {}
                Err(e) => {
                    return Err(VipError::Remove {
                        interface: name.to_string(),
                        cidr,
                        error: io_error(e),
                    });
                }
            }
        }
        Ok(change)
    }
}

/// What happened to an address, from the kernel's notifications.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressEvent {
    /// Added, or replaced (a lifetime restart counts).
    Added,
    Removed,
}

/// A netlink socket subscribed to the address notifications of both
/// families, opened once and kept (for the guardian: nothing to allocate or
/// open when it must act).
pub(crate) struct AddressEvents {
    messages: futures::channel::mpsc::UnboundedReceiver<(
        rtnetlink::packet_core::NetlinkMessage<RouteNetlinkMessage>,
        rtnetlink::sys::SocketAddr,
    )>,
    /// Kept: the connection task ends when its last handle is dropped.
    _handle: rtnetlink::Handle,
    conn: tokio::task::JoinHandle<()>,
}

impl Drop for AddressEvents {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

impl AddressEvents {
    pub(crate) fn open() -> Result<AddressEvents, VipError> {
        let (mut conn, handle, messages) =
            rtnetlink::new_connection().map_err(|error| VipError::Netlink { error })?;
        use rtnetlink::sys::AsyncSocket;
        let groups =
            rtnetlink::constants::RTMGRP_IPV4_IFADDR | rtnetlink::constants::RTMGRP_IPV6_IFADDR;
        conn.socket_mut()
            .socket_mut()
            .bind(&rtnetlink::sys::SocketAddr::new(0, groups))
            .map_err(|error| VipError::Netlink { error })?;
        Ok(AddressEvents {
            messages,
            _handle: handle,
            conn: tokio::spawn(conn),
        })
    }

    /// The next notification about `address` (on any interface: the VIP
    /// must not be anywhere on this node when it is not held). `None` when
    /// the socket is gone.
    pub(crate) async fn next(&mut self, address: IpAddr) -> Option<AddressEvent> {
        use futures::StreamExt;
        loop {
            let (msg, _) = self.messages.next().await?;
            let (event, m) = match msg.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewAddress(m)) => {
                    (AddressEvent::Added, m)
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelAddress(m)) => {
                    (AddressEvent::Removed, m)
                }
                _ => continue,
            };
            if local_address(&m) == Some(address) {
                return Some(event);
            }
        }
    }
}

fn link_layer_addr(index: u32, protocol: u16, dst: MacAddr) -> SockAddr {
    let mut sll_addr = [0u8; 8];
    sll_addr[..6].copy_from_slice(&dst.0);
    let ll = libc::sockaddr_ll {
        sll_family: libc::AF_PACKET as libc::sa_family_t,
        sll_protocol: protocol.to_be(),
        sll_ifindex: index as libc::c_int,
        sll_hatype: 0,
        sll_pkttype: 0,
        sll_halen: 6,
        sll_addr,
    };
    // SAFETY: the storage is a zeroed sockaddr_storage, larger than and
    // aligned for a sockaddr_ll; the length is set to what was written.
    unsafe {
        let ((), addr) = SockAddr::try_init(|storage, len| {
            storage.cast::<libc::sockaddr_ll>().write(ll);
            *len = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            Ok(())
        })
        .expect("building a sockaddr_ll cannot fail");
        addr
    }
}

/// A raw AF_PACKET socket bound to one interface, for send only (protocol
/// 0: it receives nothing, so no receive buffer fills up).
pub(crate) struct PacketSender {
    socket: Socket,
    interface: String,
    index: u32,
}

impl PacketSender {
    pub(crate) fn open(iface: &Interface) -> Result<PacketSender, VipError> {
        let err = |error| VipError::PacketSocket {
            interface: iface.name.clone(),
            error,
        };
        let socket =
            Socket::new(Domain::PACKET, Type::RAW, Some(Protocol::from(0))).map_err(err)?;
        socket
            .bind(&link_layer_addr(iface.index, 0, MacAddr::ZERO))
            .map_err(err)?;
        // A send on a packet socket does not wait for the wire; the timeout
        // only guards against a wedged driver queue.
        socket
            .set_write_timeout(Some(std::time::Duration::from_millis(100)))
            .map_err(err)?;
        Ok(PacketSender {
            socket,
            interface: iface.name.clone(),
            index: iface.index,
        })
    }

    pub(crate) fn send(&self, frame: &Frame, address: IpAddr) -> Result<(), VipError> {
        let to = link_layer_addr(self.index, frame.ethertype, frame.dst);
        let err = |error| VipError::Send {
            what: frame.what,
            interface: self.interface.clone(),
            address,
            error,
        };
        let sent = self.socket.send_to(&frame.bytes, &to).map_err(err)?;
        if sent != frame.bytes.len() {
            return Err(err(io::Error::other(format!(
                "short send: {sent} of {} bytes",
                frame.bytes.len()
            ))));
        }
        Ok(())
    }

    /// Send every frame of a round; the first error wins, after trying all.
    pub(crate) fn send_round(&self, frames: &[Frame], address: IpAddr) -> Result<(), VipError> {
        let mut first = Ok(());
        for f in frames {
            if let Err(e) = self.send(f, address)
                && first.is_ok()
            {
                first = Err(e);
            }
        }
        first
    }
}
