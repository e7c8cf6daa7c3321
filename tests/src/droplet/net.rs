//! [`TestNet`]: namespaces for droplet tests that have no lab.

use std::process::Command;

use super::{DropletError, PREFIX, Result, run};

/// Namespaces for droplets when there is no lab: `khdeb-<pid>-br` holds a
/// bridge, each `khdeb-<pid>-<name>` a veth `eth0` on it with
/// `198.18.0.<first_host + i>/24`. Nothing is routed; nothing touches the
/// host namespace. Dropping it deletes the namespaces (and so the links).
pub struct TestNet {
    tag: String,
    pub bridge_ns: String,
    /// `(name, namespace, address)` per droplet.
    pub nodes: Vec<(String, String, String)>,
}

impl TestNet {
    /// `names[i]` gets `198.18.0.<first_host + i>`.
    pub fn new(label: &str, names: &[&str], first_host: u8) -> Result<TestNet> {
        let tag = format!("{PREFIX}{}-{label}", std::process::id());
        let bridge_ns = format!("{tag}-br");
        let mut net = TestNet {
            tag,
            bridge_ns: bridge_ns.clone(),
            nodes: Vec::new(),
        };
        run(Command::new("ip").args(["netns", "add", &bridge_ns]))?;
        let ipb = |args: &[&str]| run(Command::new("ip").args(["-n", &bridge_ns]).args(args));
        ipb(&["link", "add", "br0", "type", "bridge"])?;
        ipb(&["link", "set", "br0", "up"])?;
        ipb(&["link", "set", "lo", "up"])?;
        for (i, name) in names.iter().enumerate() {
            let host = u32::from(first_host) + i as u32;
            if !(1..=254).contains(&host) {
                return Err(DropletError::Other(format!(
                    "198.18.0.{host} is not a host address"
                )));
            }
            let ns = format!("{}-{name}", net.tag);
            let addr = format!("198.18.0.{host}");
            run(Command::new("ip").args(["netns", "add", &ns]))?;
            net.nodes.push((name.to_string(), ns.clone(), addr.clone()));
            let port = format!("p{i}");
            // Made inside the bridge namespace, then one end moved: no
            // link ever exists in the host namespace.
            ipb(&["link", "add", &port, "type", "veth", "peer", "name", "eth0"])?;
            ipb(&["link", "set", "eth0", "netns", &ns])?;
            ipb(&["link", "set", &port, "master", "br0"])?;
            ipb(&["link", "set", &port, "up"])?;
            let ipn = |args: &[&str]| run(Command::new("ip").args(["-n", &ns]).args(args));
            ipn(&["addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
            ipn(&["link", "set", "eth0", "up"])?;
            ipn(&["link", "set", "lo", "up"])?;
        }
        Ok(net)
    }

    /// `(namespace, address)` of a node.
    pub fn node(&self, name: &str) -> (&str, &str) {
        let n = self
            .nodes
            .iter()
            .find(|n| n.0 == name)
            .unwrap_or_else(|| panic!("no node `{name}` in the test network"));
        (&n.1, &n.2)
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        for (_, ns, _) in &self.nodes {
            let _ = run(Command::new("ip").args(["netns", "del", ns]));
        }
        let _ = run(Command::new("ip").args(["netns", "del", &self.bridge_ns]));
    }
}
