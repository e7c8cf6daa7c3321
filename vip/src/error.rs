use std::io;
use std::net::IpAddr;

/// Everything that can go wrong with a VIP. Each message names the interface
/// and address it is about.
#[derive(Debug, thiserror::Error)]
pub enum VipError {
    #[error("{what} is only supported on Linux")]
    Unsupported { what: &'static str },

    #[error("VIP provider `{provider}` is not implemented yet")]
    ProviderNotImplemented { provider: &'static str },

    #[error("invalid VIP `{address}/{prefix_len}`: {reason}")]
    InvalidAddress {
        address: IpAddr,
        prefix_len: u8,
        reason: &'static str,
    },

    #[error("invalid interface name `{interface}`: {reason}")]
    InvalidInterface {
        interface: String,
        reason: &'static str,
    },

    #[error(transparent)]
    DigitalOcean(#[from] crate::digitalocean::DoError),

    #[error("VIP provider `arp` needs `vip.interface`")]
    MissingInterface,

    #[error("interface `{interface}` not found")]
    InterfaceNotFound { interface: String },

    #[error(
        "interface `{interface}` has no Ethernet address; provider `arp` needs an Ethernet interface"
    )]
    NotEthernet { interface: String },

    #[error("opening a netlink socket: {}", os_message(.error, "CAP_NET_ADMIN"))]
    Netlink { error: io::Error },

    #[error("looking up interface `{interface}`: {}", os_message(.error, "CAP_NET_ADMIN"))]
    Lookup { interface: String, error: io::Error },

    #[error("listing the addresses of `{interface}`: {}", os_message(.error, "CAP_NET_ADMIN"))]
    List { interface: String, error: io::Error },

    #[error("adding {cidr} to `{interface}`: {}", os_message(.error, "CAP_NET_ADMIN"))]
    Add {
        interface: String,
        cidr: String,
        error: io::Error,
    },

    #[error("removing {cidr} from `{interface}`: {}", os_message(.error, "CAP_NET_ADMIN"))]
    Remove {
        interface: String,
        cidr: String,
        error: io::Error,
    },

    #[error("opening a packet socket on `{interface}`: {}", os_message(.error, "CAP_NET_RAW"))]
    PacketSocket { interface: String, error: io::Error },

    #[error("sending {what} for {address} on `{interface}`: {}", os_message(.error, "CAP_NET_RAW"))]
    Send {
        what: &'static str,
        interface: String,
        address: IpAddr,
        error: io::Error,
    },

    #[error(
        "{address} is not on `{interface}`; refusing to announce an address this node does not hold"
    )]
    NotHeld { interface: String, address: IpAddr },

    #[error("starting a runtime to release {address} from `{interface}`: {error}")]
    Runtime {
        interface: String,
        address: IpAddr,
        error: io::Error,
    },
}

impl VipError {
    /// The OS error number behind this error, if there is one (e.g. `EPERM`).
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            VipError::Netlink { error }
            | VipError::Lookup { error, .. }
            | VipError::List { error, .. }
            | VipError::Add { error, .. }
            | VipError::Remove { error, .. }
            | VipError::PacketSocket { error, .. }
            | VipError::Send { error, .. }
            | VipError::Runtime { error, .. } => error.raw_os_error(),
            _ => None,
        }
    }

    /// True when the error means the process lacks a capability.
    pub fn is_permission_denied(&self) -> bool {
        self.raw_os_error()
            .is_some_and(|e| e == libc_eperm() || e == libc_eacces())
    }
}

// The numbers are the same on every Unix; spelled out so this file needs no
// Linux-only crate.
const fn libc_eperm() -> i32 {
    1
}
const fn libc_eacces() -> i32 {
    13
}
const ENETDOWN: i32 = 100;

/// The OS's text for an error without std's "(os error N)" suffix, plus a
/// hint for the usual causes.
fn os_message(error: &io::Error, capability: &str) -> String {
    let Some(code) = error.raw_os_error() else {
        return error.to_string();
    };
    let text = error.to_string();
    let suffix = format!(" (os error {code})");
    let text = text.strip_suffix(&suffix).unwrap_or(&text);
    if code == libc_eperm() || code == libc_eacces() {
        format!("{text} (needs {capability})")
    } else if code == ENETDOWN {
        format!("{text} (is the interface up?)")
    } else {
        text.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_interface_and_address() {
        let e = VipError::Add {
            interface: "eth1".into(),
            cidr: "10.0.0.10/32".into(),
            error: io::Error::from_raw_os_error(1),
        };
        assert_eq!(
            e.to_string(),
            "adding 10.0.0.10/32 to `eth1`: Operation not permitted (needs CAP_NET_ADMIN)"
        );
        assert!(e.is_permission_denied());
        assert_eq!(e.raw_os_error(), Some(1));

        let e = VipError::InterfaceNotFound {
            interface: "eth1".into(),
        };
        assert_eq!(e.to_string(), "interface `eth1` not found");
        assert_eq!(e.raw_os_error(), None);

        let e = VipError::Send {
            what: "gratuitous ARP request",
            interface: "eth1".into(),
            address: "10.0.0.10".parse().unwrap(),
            error: io::Error::from_raw_os_error(ENETDOWN),
        };
        assert_eq!(
            e.to_string(),
            "sending gratuitous ARP request for 10.0.0.10 on `eth1`: Network is down (is the interface up?)"
        );

        let e = VipError::PacketSocket {
            interface: "eth1".into(),
            error: io::Error::from_raw_os_error(1),
        };
        assert_eq!(
            e.to_string(),
            "opening a packet socket on `eth1`: Operation not permitted (needs CAP_NET_RAW)"
        );

        let e = VipError::Remove {
            interface: "eth1".into(),
            cidr: "2001:db8::30/128".into(),
            error: io::Error::other("kernel said no"),
        };
        assert_eq!(
            e.to_string(),
            "removing 2001:db8::30/128 from `eth1`: kernel said no"
        );
        assert!(!e.is_permission_denied());
    }
}
