//! keepalived (Debian's) as the comparison baseline: the VRRP settings the
//! baseline measured, rendered per node.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// The VRRP router id all lab nodes share.
pub const VRID: u8 = 51;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum KaSetting {
    /// VRRPv2, `advert_int 1` (keepalived's default).
    Default,
    /// VRRPv3, `advert_int 0.1` (VRRPv2 cannot go below 1 s).
    Fast,
}

impl KaSetting {
    pub fn as_str(self) -> &'static str {
        match self {
            KaSetting::Default => "default",
            KaSetting::Fast => "fast",
        }
    }

    pub fn version(self) -> u8 {
        match self {
            KaSetting::Default => 2,
            KaSetting::Fast => 3,
        }
    }

    pub fn advert_int(self) -> &'static str {
        match self {
            KaSetting::Default => "1",
            KaSetting::Fast => "0.1",
        }
    }

    pub fn advert(self) -> std::time::Duration {
        match self {
            KaSetting::Default => std::time::Duration::from_secs(1),
            KaSetting::Fast => std::time::Duration::from_millis(100),
        }
    }
}

/// keepalived.conf for one node: every node starts as BACKUP (the highest
/// priority wins the election), preemption on (keepalived's default),
/// multicast adverts on the lab bridge.
pub fn render(setting: KaSetting, node: &str, priority: u8, vip: Ipv4Addr, iface: &str) -> String {
    format!(
        "# written by kubeha-lab\n\
         global_defs {{\n\
         \x20   router_id {node}\n\
         \x20   vrrp_version {version}\n\
         }}\n\
         \n\
         vrrp_instance lab {{\n\
         \x20   state BACKUP\n\
         \x20   interface {iface}\n\
         \x20   virtual_router_id {VRID}\n\
         \x20   priority {priority}\n\
         \x20   advert_int {advert}\n\
         \x20   virtual_ipaddress {{\n\
         \x20       {vip}/32 dev {iface}\n\
         \x20   }}\n\
         }}\n",
        version = setting.version(),
        advert = setting.advert_int(),
    )
}

/// keepalived's arguments: foreground, log to the console (the node's
/// log file), VRRP only, our own pid files.
pub fn args(conf: &str, pid: &str, vrrp_pid: &str) -> Vec<String> {
    [
        "-n", "-l", "-D", "-G", "-P", "-f", conf, "-p", pid, "-r", vrrp_pid,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_is_vrrp3_with_100ms_adverts() {
        let c = render(
            KaSetting::Fast,
            "n1",
            150,
            Ipv4Addr::new(198, 18, 0, 10),
            "eth0",
        );
        assert!(c.contains("vrrp_version 3\n"), "{c}");
        assert!(c.contains("advert_int 0.1\n"), "{c}");
        assert!(c.contains("priority 150\n"), "{c}");
        assert!(c.contains("state BACKUP\n"), "{c}");
        assert!(c.contains("198.18.0.10/32 dev eth0\n"), "{c}");
        let d = render(
            KaSetting::Default,
            "n2",
            100,
            Ipv4Addr::new(198, 18, 0, 10),
            "eth0",
        );
        assert!(
            d.contains("vrrp_version 2\n") && d.contains("advert_int 1\n"),
            "{d}"
        );
    }
}
