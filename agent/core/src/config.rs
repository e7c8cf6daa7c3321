//! The configuration file (`/etc/kubeha/kubeha.toml`), DESIGN.md section 6.
//!
//! Parsing is two-step: a raw serde struct that rejects unknown keys, then
//! [`Config::parse`] which checks every value and fills defaults. Both steps
//! are pure (the caller reads the file and passes the hostname) so that
//! `kubeha-agent --check-config` reports every problem before anything binds.
//! Every error names the file, the dotted key and, where it can be found, the
//! line.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::proof::ProofKey;
use crate::timing::Profile;

pub const DEFAULT_PATH: &str = "/etc/kubeha/kubeha.toml";
pub const DEFAULT_GOSSIP_PORT: u16 = 7946;
/// TCP port of the join-material TLS server (docs/join.md).
pub const DEFAULT_JOIN_PORT: u16 = 7947;
pub const DEFAULT_KEY_FILE: &str = "/etc/kubeha/cluster.key";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/kubeha";
pub const DEFAULT_SOCKET: &str = "/run/kubeha/kubeha.sock";
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9946";
pub const DEFAULT_APISERVER_PORT: u16 = 6443;

/// A problem with the configuration, with where it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    /// Dotted key, e.g. `vip.address`; `None` for syntax errors outside a key.
    pub key: Option<String>,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": `{key}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    ControlPlane,
    Worker,
    Lb,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::ControlPlane => "control-plane",
            Role::Worker => "worker",
            Role::Lb => "lb",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "control-plane" => Some(Role::ControlPlane),
            "worker" => Some(Role::Worker),
            "lb" => Some(Role::Lb),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// ---------------------------------------------------------------- raw form

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    cluster: String,
    node_name: Option<String>,
    #[serde(default)]
    roles: Vec<String>,
    advertise_addr: String,
    gossip_port: Option<u16>,
    join_port: Option<u16>,
    #[serde(default)]
    seeds: Vec<String>,
    voters: Vec<String>,
    key_file: Option<PathBuf>,
    control_key_file: Option<PathBuf>,
    #[serde(default)]
    control_public_keys: Vec<String>,
    state_dir: Option<PathBuf>,
    socket: Option<PathBuf>,
    metrics_addr: Option<String>,
    timing: Option<String>,
    vip: Option<RawVip>,
    haproxy: Option<RawHaproxy>,
    kubernetes: Option<RawKubernetes>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVip {
    provider: Option<String>,
    address: Option<String>,
    interface: Option<String>,
    priority: Option<u8>,
    token_file: Option<PathBuf>,
    reserved_ip: Option<String>,
    api_url: Option<String>,
    metadata_url: Option<String>,
    api_ca_file: Option<PathBuf>,
    assign_timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHaproxy {
    frontend: Option<String>,
    config_path: Option<PathBuf>,
    binary: Option<PathBuf>,
    backend_port: Option<u16>,
    runtime_dir: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKubernetes {
    control_plane_endpoint: Option<String>,
    apiserver_port: Option<u16>,
    kubeadm: Option<PathBuf>,
    kubectl: Option<PathBuf>,
    etc_dir: Option<PathBuf>,
    cni_manifest: Option<PathBuf>,
    dead_after: Option<String>,
    kubelet: Option<PathBuf>,
    containerd: Option<PathBuf>,
    containerd_config: Option<PathBuf>,
    host_prep: Option<bool>,
    manage_hosts: Option<bool>,
    endpoint_address: Option<String>,
    /// Test knob: every host path (`/etc`, `/proc`, `/sys`) under this root.
    host_root: Option<PathBuf>,
    cluster_configuration: Option<toml::Table>,
    init_configuration: Option<toml::Table>,
    join_configuration: Option<toml::Table>,
}

// ---------------------------------------------------------- validated form

/// A validated configuration. Every field has its final value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The file it came from, for messages.
    pub path: PathBuf,
    pub cluster: String,
    pub node_name: String,
    pub roles: BTreeSet<Role>,
    pub advertise_addr: IpAddr,
    pub gossip_port: u16,
    /// TCP port of the join-material TLS server on `advertise_addr`; the
    /// same on every node (clients use their own value for the server).
    pub join_port: u16,
    pub seeds: Vec<String>,
    /// Sorted, unique.
    pub voters: Vec<String>,
    pub key_file: PathBuf,
    /// The control-tier key file: required on voters, control planes and
    /// lb nodes (lease, lock and role claims need it); workers have none.
    pub control_key_file: Option<PathBuf>,
    /// Verify role proofs with these (`kubeha-ctl keygen --public-of`):
    /// what lets a node without the control key (a worker) tell a real
    /// control plane from a forged one. Nodes with the control key verify
    /// with its public half anyway.
    pub control_public_keys: Vec<ProofKey>,
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    pub metrics_addr: SocketAddr,
    pub timing: Profile,
    pub vip: Option<VipConfig>,
    pub haproxy: Option<HaproxyConfig>,
    pub kubernetes: Option<KubernetesConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VipProviderKind {
    Arp,
    Digitalocean,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VipConfig {
    pub provider: VipProviderKind,
    pub address: IpAddr,
    pub prefix_len: u8,
    /// Required for `arp`.
    pub interface: Option<String>,
    pub priority: u8,
    pub digitalocean: Option<DigitalOceanConfig>,
}

impl VipConfig {
    /// `10.0.0.10/32` form, as written in status output.
    pub fn cidr(&self) -> String {
        format!("{}/{}", self.address, self.prefix_len)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigitalOceanConfig {
    pub token_file: PathBuf,
    pub reserved_ip: IpAddr,
    pub api_url: String,
    /// The droplet metadata service (droplet id, anchor address).
    pub metadata_url: String,
    /// CA bundle (PEM) trusted for `api_url`; `None`: the system bundle.
    /// For tests against a local stand-in.
    pub ca_file: Option<PathBuf>,
    /// A lease hold whose assignment has not completed after this is a
    /// cloud fault: the node lets the lease go (`kubeha_core::lease::cloud`).
    pub assign_timeout: Duration,
}

pub const DIGITALOCEAN_API_URL: &str = "https://api.digitalocean.com";
pub const DIGITALOCEAN_METADATA_URL: &str = "http://169.254.169.254";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaproxyConfig {
    pub frontend: SocketAddr,
    /// Provider `digitalocean` with no `frontend` given: HAProxy binds this
    /// droplet's anchor address (where the Reserved IP's traffic arrives) on
    /// `frontend`'s port. The agent looks the address up in the metadata
    /// service at start, before it binds anything, and sets `frontend`'s IP
    /// (`0.0.0.0` until then).
    pub frontend_anchor: bool,
    pub config_path: PathBuf,
    pub binary: PathBuf,
    /// Port of the kube-apiservers the backends point at.
    pub backend_port: u16,
    /// Where the agent keeps HAProxy's master socket and pid file.
    pub runtime_dir: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubernetesConfig {
    pub control_plane_endpoint: String,
    pub apiserver_port: u16,
    pub kubeadm: PathBuf,
    pub kubectl: PathBuf,
    pub etc_dir: PathBuf,
    pub cni_manifest: Option<PathBuf>,
    pub dead_after: Duration,
    pub kubelet: PathBuf,
    pub containerd: PathBuf,
    pub containerd_config: PathBuf,
    /// Prepare the host (modules, sysctls, swap, containerd); `false`: only
    /// check and report.
    pub host_prep: bool,
    /// The `/etc/hosts` line for the endpoint's name: `(name, address)`;
    /// `None` when not managed (the endpoint is an address, no address is
    /// known, or `manage_hosts = false`).
    pub hosts_entry: Option<(String, IpAddr)>,
    /// What the hosts line points at instead of the VIP.
    pub endpoint_address: Option<IpAddr>,
    /// `/` except in tests.
    pub host_root: PathBuf,
    /// `[kubernetes.cluster_configuration]` and friends.
    pub kubeadm_extra: crate::kubeadm::Extra,
}

impl Config {
    pub fn has_role(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    pub fn is_voter(&self) -> bool {
        self.voters.contains(&self.node_name)
    }

    /// Voters, control planes and lb nodes take part in leases and the
    /// lock, and claim roles that make them backends or candidates: they
    /// need the control key.
    pub fn needs_control_tier(&self) -> bool {
        self.is_voter() || self.has_role(Role::ControlPlane) || self.has_role(Role::Lb)
    }

    /// Votes needed for a majority of the voters.
    pub fn quorum(&self) -> usize {
        self.voters.len() / 2 + 1
    }

    pub fn gossip_addr(&self) -> SocketAddr {
        SocketAddr::new(self.advertise_addr, self.gossip_port)
    }

    /// Where the join-material server listens (control planes).
    pub fn join_addr(&self) -> SocketAddr {
        SocketAddr::new(self.advertise_addr, self.join_port)
    }

    /// A node competes for the VIP when it is an `lb` node with a `[vip]`.
    pub fn is_vip_candidate(&self) -> bool {
        self.has_role(Role::Lb) && self.vip.is_some()
    }

    /// Parse and validate `text`, the contents of `path`. `hostname` is the
    /// default for `node_name`.
    pub fn parse(path: &Path, text: &str, hostname: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| toml_error(path, text, &e))?;
        let mut v = Validator {
            path,
            text,
            first: None,
        };
        let config = v.config(raw, hostname);
        match v.first {
            Some(err) => Err(err),
            None => Ok(config.expect("validator returns a config when it records no error")),
        }
    }
}

/// Collects the first error (the order of checks follows the file's order).
struct Validator<'a> {
    path: &'a Path,
    text: &'a str,
    first: Option<ConfigError>,
}

impl Validator<'_> {
    fn err(&mut self, key: &str, message: impl Into<String>) {
        if self.first.is_none() {
            self.first = Some(ConfigError {
                file: self.path.to_path_buf(),
                key: Some(key.to_string()),
                line: find_key_line(self.text, key),
                message: message.into(),
            });
        }
    }

    fn config(&mut self, raw: RawConfig, hostname: &str) -> Option<Config> {
        if let Err(m) = check_name(&raw.cluster) {
            self.err("cluster", m);
        }
        let node_name = raw.node_name.unwrap_or_else(|| hostname.to_string());
        if let Err(m) = check_name(&node_name) {
            self.err("node_name", m);
        }

        let mut roles = BTreeSet::new();
        for r in &raw.roles {
            match Role::parse(r) {
                Some(role) => {
                    if !roles.insert(role) {
                        self.err("roles", format!("role `{r}` is listed twice"));
                    }
                }
                None => self.err(
                    "roles",
                    format!("unknown role `{r}`, expected `control-plane`, `worker` or `lb`"),
                ),
            }
        }
        if roles.contains(&Role::ControlPlane) && roles.contains(&Role::Worker) {
            self.err(
                "roles",
                "`control-plane` and `worker` exclude each other (a control plane joins with kubeadm's control-plane flags)",
            );
        }

        let advertise_addr = match raw.advertise_addr.parse::<IpAddr>() {
            Ok(ip) if ip.is_unspecified() => {
                self.err(
                    "advertise_addr",
                    "must be the address peers reach this node on, not an unspecified address",
                );
                None
            }
            Ok(ip) => Some(ip),
            Err(_) => {
                self.err(
                    "advertise_addr",
                    format!(
                        "`{}` is not an IP address (e.g. \"10.108.0.3\")",
                        raw.advertise_addr
                    ),
                );
                None
            }
        };
        let gossip_port = raw.gossip_port.unwrap_or(DEFAULT_GOSSIP_PORT);
        if gossip_port == 0 {
            self.err("gossip_port", "must not be 0");
        }
        let join_port = raw.join_port.unwrap_or(DEFAULT_JOIN_PORT);
        if join_port == 0 {
            self.err("join_port", "must not be 0");
        }

        let mut seen = BTreeSet::new();
        for s in &raw.seeds {
            if let Err(m) = check_host_port(s) {
                self.err("seeds", format!("`{s}`: {m}"));
            } else if !seen.insert(s.clone()) {
                self.err("seeds", format!("`{s}` is listed twice"));
            }
        }

        if raw.voters.is_empty() {
            self.err(
                "voters",
                "must name at least one node (an odd number, normally the control planes)",
            );
        }
        let mut voters = BTreeSet::new();
        for v in &raw.voters {
            if let Err(m) = check_name(v) {
                self.err("voters", format!("`{v}`: {m}"));
            } else if !voters.insert(v.clone()) {
                self.err("voters", format!("`{v}` is listed twice"));
            }
        }

        let metrics_addr = raw
            .metrics_addr
            .unwrap_or_else(|| DEFAULT_METRICS_ADDR.to_string());
        let metrics_addr = match metrics_addr.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                self.err(
                    "metrics_addr",
                    format!("`{metrics_addr}` is not an address:port (e.g. \"127.0.0.1:9946\")"),
                );
                None
            }
        };

        let timing = match raw.timing.as_deref() {
            None | Some("default") => Profile::Default,
            Some("fast") => Profile::Fast,
            Some(other) => {
                self.err(
                    "timing",
                    format!("unknown profile `{other}`, expected \"default\" or \"fast\""),
                );
                Profile::Default
            }
        };

        let vip = raw.vip.and_then(|v| self.vip(v));
        // With a Reserved IP, that IP is the API endpoint kubeadm is given
        // unless the file names one.
        let binds_apiserver = roles.contains(&Role::ControlPlane) && roles.contains(&Role::Lb);
        let reserved_ip = vip
            .as_ref()
            .and_then(|v| v.digitalocean.as_ref())
            .map(|d| d.reserved_ip);
        let kubernetes = raw
            .kubernetes
            .map(|mut k| {
                if let Some(ip) = reserved_ip
                    && k.control_plane_endpoint.is_none()
                {
                    let port = k.apiserver_port.unwrap_or(DEFAULT_APISERVER_PORT);
                    k.control_plane_endpoint = Some(SocketAddr::new(ip, port).to_string());
                }
                k
            })
            .and_then(|k| self.kubernetes(k, vip.as_ref(), binds_apiserver));
        let haproxy = raw
            .haproxy
            .and_then(|h| self.haproxy(h, vip.as_ref(), kubernetes.as_ref()));

        self.join_port_collisions(
            join_port,
            advertise_addr,
            metrics_addr,
            haproxy.as_ref(),
            kubernetes.as_ref(),
        );

        if roles.contains(&Role::Lb) && vip.is_none() && haproxy.is_none() {
            self.err(
                "roles",
                "role `lb` needs a `[vip]` section, a `[haproxy]` section, or both",
            );
        }
        if haproxy.is_some() && !roles.contains(&Role::Lb) {
            self.err("haproxy", "`[haproxy]` is only for nodes with role `lb`");
        }

        let state_dir = raw
            .state_dir
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
        let socket = raw.socket.unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET));
        let key_file = raw
            .key_file
            .unwrap_or_else(|| PathBuf::from(DEFAULT_KEY_FILE));
        for (key, p) in [
            ("state_dir", &state_dir),
            ("socket", &socket),
            ("key_file", &key_file),
        ] {
            if !p.is_absolute() {
                self.err(key, format!("`{}` must be an absolute path", p.display()));
            }
        }
        let control_key_file = raw.control_key_file;
        if let Some(p) = &control_key_file {
            if !p.is_absolute() {
                self.err(
                    "control_key_file",
                    format!("`{}` must be an absolute path", p.display()),
                );
            } else if *p == key_file {
                self.err(
                    "control_key_file",
                    "must be another file than `key_file`: the control key must differ from the cluster key",
                );
            }
        }
        let mut control_public_keys = Vec::new();
        for (i, k) in raw.control_public_keys.iter().enumerate() {
            match ProofKey::parse(k) {
                Ok(k) => control_public_keys.push(k),
                Err(e) => self.err("control_public_keys", format!("entry {}: {e}", i + 1)),
            }
        }
        let needs_control = voters.contains(&node_name)
            || roles.contains(&Role::ControlPlane)
            || roles.contains(&Role::Lb);
        if needs_control && control_key_file.is_none() {
            self.err(
                "control_key_file",
                "required on voters, control planes and lb nodes (lease, lock and role claims need the control key; `kubeha-ctl keygen` writes one)",
            );
        }

        if self.first.is_some() {
            return None;
        }
        Some(Config {
            path: self.path.to_path_buf(),
            cluster: raw.cluster,
            node_name,
            roles,
            advertise_addr: advertise_addr?,
            gossip_port,
            join_port,
            seeds: raw.seeds,
            voters: voters.into_iter().collect(),
            key_file,
            control_key_file,
            control_public_keys,
            state_dir,
            socket,
            metrics_addr: metrics_addr?,
            timing,
            vip,
            haproxy,
            kubernetes,
        })
    }

    /// `join_port` is a TCP listener on `advertise_addr`: it must not be a
    /// port another local TCP listener takes on that address.
    fn join_port_collisions(
        &mut self,
        join_port: u16,
        advertise_addr: Option<IpAddr>,
        metrics_addr: Option<SocketAddr>,
        haproxy: Option<&HaproxyConfig>,
        kube: Option<&KubernetesConfig>,
    ) {
        let Some(ip) = advertise_addr else { return };
        let overlaps =
            |a: SocketAddr| a.port() == join_port && (a.ip() == ip || a.ip().is_unspecified());
        if metrics_addr.is_some_and(overlaps) {
            self.err(
                "join_port",
                format!("{join_port} is also the port of `metrics_addr` on this address"),
            );
        }
        if haproxy.is_some_and(|h| overlaps(h.frontend)) {
            self.err(
                "join_port",
                format!("{join_port} is also the port of `haproxy.frontend` on this address"),
            );
        }
        // kube-apiserver binds every address by default.
        if kube.is_some_and(|k| k.apiserver_port == join_port) {
            self.err(
                "join_port",
                format!("{join_port} is also `kubernetes.apiserver_port`"),
            );
        }
    }

    fn vip(&mut self, raw: RawVip) -> Option<VipConfig> {
        let provider = match raw.provider.as_deref() {
            None | Some("arp") => VipProviderKind::Arp,
            Some("digitalocean") => VipProviderKind::Digitalocean,
            Some(other) => {
                self.err(
                    "vip.provider",
                    format!("unknown provider `{other}`, expected \"arp\" or \"digitalocean\""),
                );
                return None;
            }
        };
        let raw_address = match (&raw.address, provider, &raw.reserved_ip) {
            (Some(a), _, _) => a.clone(),
            // The Reserved IP is the VIP clients use.
            (None, VipProviderKind::Digitalocean, Some(r)) => r.clone(),
            (None, VipProviderKind::Digitalocean, None) => {
                self.err(
                    "vip.reserved_ip",
                    "is required for provider \"digitalocean\"",
                );
                return None;
            }
            (None, VipProviderKind::Arp, _) => {
                self.err("vip.address", "is required for provider \"arp\"");
                return None;
            }
        };
        let (address, prefix_len) = match parse_cidr(&raw_address) {
            Ok(v) => v,
            Err(m) => {
                self.err("vip.address", format!("`{raw_address}`: {m}"));
                return None;
            }
        };
        if provider == VipProviderKind::Arp {
            match &raw.interface {
                None => self.err(
                    "vip.interface",
                    "is required for provider \"arp\" (the interface the VIP is added to)",
                ),
                Some(i) if !valid_ifname(i) => self.err(
                    "vip.interface",
                    format!("`{i}` is not a valid interface name (1-15 characters, no `/`, `:` or whitespace)"),
                ),
                _ => {}
            }
        }
        let digitalocean = match provider {
            VipProviderKind::Arp => {
                for (key, set) in [
                    ("vip.token_file", raw.token_file.is_some()),
                    ("vip.reserved_ip", raw.reserved_ip.is_some()),
                    ("vip.api_url", raw.api_url.is_some()),
                    ("vip.metadata_url", raw.metadata_url.is_some()),
                    ("vip.api_ca_file", raw.api_ca_file.is_some()),
                    ("vip.assign_timeout", raw.assign_timeout.is_some()),
                ] {
                    if set {
                        self.err(key, "is only for provider \"digitalocean\"");
                    }
                }
                None
            }
            VipProviderKind::Digitalocean => {
                let Some(token_file) = raw.token_file else {
                    self.err(
                        "vip.token_file",
                        "is required for provider \"digitalocean\"",
                    );
                    return None;
                };
                let Some(reserved_ip) = raw.reserved_ip else {
                    self.err(
                        "vip.reserved_ip",
                        "is required for provider \"digitalocean\"",
                    );
                    return None;
                };
                let Ok(reserved_ip) = reserved_ip.parse::<IpAddr>() else {
                    self.err(
                        "vip.reserved_ip",
                        format!("`{reserved_ip}` is not an IP address"),
                    );
                    return None;
                };
                if reserved_ip.is_ipv6() {
                    self.err(
                        "vip.reserved_ip",
                        format!(
                            "`{reserved_ip}`: only IPv4 Reserved IPs are supported (reserved IPv6 addresses have another API)"
                        ),
                    );
                }
                if reserved_ip != address || prefix_len != host_prefix(address) {
                    self.err(
                        "vip.address",
                        format!(
                            "`{raw_address}` must be the Reserved IP `{reserved_ip}` (or be left out) with provider \"digitalocean\""
                        ),
                    );
                }
                if raw.interface.is_some() {
                    self.err(
                        "vip.interface",
                        "is only for provider \"arp\" (a Reserved IP is not on any interface)",
                    );
                }
                let mut url = |key: &str, v: Option<String>, default: &str| {
                    let v = v.unwrap_or_else(|| default.to_string());
                    if !(v.starts_with("https://") || v.starts_with("http://"))
                        || v.len() <= "https://".len()
                    {
                        self.err(key, format!("`{v}` must start with https:// or http://"));
                    }
                    v
                };
                let api_url = url("vip.api_url", raw.api_url, DIGITALOCEAN_API_URL);
                let metadata_url = url(
                    "vip.metadata_url",
                    raw.metadata_url,
                    DIGITALOCEAN_METADATA_URL,
                );
                for (key, p) in [
                    ("vip.token_file", Some(&token_file)),
                    ("vip.api_ca_file", raw.api_ca_file.as_ref()),
                ] {
                    if let Some(p) = p
                        && !p.is_absolute()
                    {
                        self.err(key, format!("`{}` must be an absolute path", p.display()));
                    }
                }
                let default = crate::lease::CloudTiming::DEFAULT.assign_timeout;
                let assign_timeout = match raw.assign_timeout.as_deref() {
                    None => default,
                    Some(s) => match humantime::parse_duration(s) {
                        Ok(d) if d >= Duration::from_secs(1) && d <= Duration::from_secs(3600) => d,
                        Ok(_) => {
                            self.err(
                                "vip.assign_timeout",
                                format!("`{s}` is out of range: 1s to 1h"),
                            );
                            default
                        }
                        Err(e) => {
                            self.err(
                                "vip.assign_timeout",
                                format!("`{s}` is not a duration like \"60s\" or \"2m\": {e}"),
                            );
                            default
                        }
                    },
                };
                Some(DigitalOceanConfig {
                    token_file,
                    reserved_ip,
                    api_url,
                    metadata_url,
                    ca_file: raw.api_ca_file,
                    assign_timeout,
                })
            }
        };
        Some(VipConfig {
            provider,
            address,
            prefix_len,
            interface: raw.interface,
            priority: raw.priority.unwrap_or(100),
            digitalocean,
        })
    }

    fn haproxy(
        &mut self,
        raw: RawHaproxy,
        vip: Option<&VipConfig>,
        kube: Option<&KubernetesConfig>,
    ) -> Option<HaproxyConfig> {
        let frontend = match (&raw.frontend, vip) {
            (Some(f), _) => match f.parse::<SocketAddr>() {
                Ok(a) => a,
                Err(_) => {
                    self.err(
                        "haproxy.frontend",
                        format!("`{f}` is not an address:port (e.g. \"10.108.0.10:6443\")"),
                    );
                    return None;
                }
            },
            // A Reserved IP is on no interface: its traffic arrives at the
            // droplet's anchor address, which the agent looks up at start
            // (`frontend_anchor`). A control plane's apiserver binds the
            // node's own address (`kubeadm::binds_apiserver`), so the port
            // does not clash.
            (None, Some(v)) if v.provider == VipProviderKind::Digitalocean => SocketAddr::new(
                IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
                DEFAULT_APISERVER_PORT,
            ),
            (None, Some(v)) => SocketAddr::new(v.address, DEFAULT_APISERVER_PORT),
            (None, None) => {
                self.err(
                    "haproxy.frontend",
                    "is required when there is no `[vip]` (the VIP's address is the default)",
                );
                return None;
            }
        };
        let backend_port = raw
            .backend_port
            .or(kube.map(|k| k.apiserver_port))
            .unwrap_or(DEFAULT_APISERVER_PORT);
        if backend_port == 0 {
            self.err("haproxy.backend_port", "must not be 0");
        }
        let config_path = raw
            .config_path
            .unwrap_or_else(|| PathBuf::from("/etc/haproxy/haproxy.cfg"));
        let binary = raw
            .binary
            .unwrap_or_else(|| PathBuf::from("/usr/sbin/haproxy"));
        let runtime_dir = raw
            .runtime_dir
            .unwrap_or_else(|| PathBuf::from("/run/kubeha/haproxy"));
        for (key, p) in [
            ("haproxy.config_path", &config_path),
            ("haproxy.binary", &binary),
            ("haproxy.runtime_dir", &runtime_dir),
        ] {
            if !p.is_absolute() {
                self.err(key, format!("`{}` must be an absolute path", p.display()));
            }
        }
        let frontend_anchor = raw.frontend.is_none()
            && vip.is_some_and(|v| v.provider == VipProviderKind::Digitalocean);
        Some(HaproxyConfig {
            frontend,
            frontend_anchor,
            config_path,
            binary,
            backend_port,
            runtime_dir,
        })
    }

    fn kubernetes(
        &mut self,
        raw: RawKubernetes,
        vip: Option<&VipConfig>,
        binds_apiserver: bool,
    ) -> Option<KubernetesConfig> {
        let apiserver_port = raw.apiserver_port.unwrap_or(DEFAULT_APISERVER_PORT);
        if apiserver_port == 0 {
            self.err("kubernetes.apiserver_port", "must not be 0");
        }
        let control_plane_endpoint = raw
            .control_plane_endpoint
            .unwrap_or_else(|| "k8s-api:6443".to_string());
        if let Err(m) = check_host_port(&control_plane_endpoint) {
            self.err(
                "kubernetes.control_plane_endpoint",
                format!("`{control_plane_endpoint}`: {m}"),
            );
        }
        let dead_after = match raw.dead_after.as_deref() {
            None => Duration::from_secs(300),
            Some(s) => match humantime::parse_duration(s) {
                Ok(d) if d >= Duration::from_secs(30) => d,
                Ok(_) => {
                    self.err(
                        "kubernetes.dead_after",
                        format!("`{s}` is too short: at least 30s, so a reboot is not mistaken for a loss"),
                    );
                    return None;
                }
                Err(e) => {
                    self.err(
                        "kubernetes.dead_after",
                        format!("`{s}` is not a duration like \"5m\" or \"90s\": {e}"),
                    );
                    return None;
                }
            },
        };
        let kubeadm = raw
            .kubeadm
            .unwrap_or_else(|| PathBuf::from("/usr/bin/kubeadm"));
        let kubectl = raw
            .kubectl
            .unwrap_or_else(|| PathBuf::from("/usr/bin/kubectl"));
        let etc_dir = raw
            .etc_dir
            .unwrap_or_else(|| PathBuf::from("/etc/kubernetes"));
        for (key, p) in [
            ("kubernetes.kubeadm", Some(&kubeadm)),
            ("kubernetes.kubectl", Some(&kubectl)),
            ("kubernetes.etc_dir", Some(&etc_dir)),
            ("kubernetes.cni_manifest", raw.cni_manifest.as_ref()),
        ] {
            if let Some(p) = p
                && !p.is_absolute()
            {
                self.err(key, format!("`{}` must be an absolute path", p.display()));
            }
        }
        let kubelet = raw
            .kubelet
            .unwrap_or_else(|| PathBuf::from("/usr/bin/kubelet"));
        let containerd = raw
            .containerd
            .unwrap_or_else(|| PathBuf::from("/usr/bin/containerd"));
        let containerd_config = raw
            .containerd_config
            .unwrap_or_else(|| PathBuf::from(crate::hostprep::DEFAULT_CONTAINERD_CONFIG));
        let host_root = raw.host_root.unwrap_or_else(|| PathBuf::from("/"));
        for (key, p) in [
            ("kubernetes.kubelet", &kubelet),
            ("kubernetes.containerd", &containerd),
            ("kubernetes.containerd_config", &containerd_config),
            ("kubernetes.host_root", &host_root),
        ] {
            if !p.is_absolute() {
                self.err(key, format!("`{}` must be an absolute path", p.display()));
            }
        }
        let endpoint_address = match raw.endpoint_address.as_deref() {
            None => None,
            Some(a) => match a.parse::<IpAddr>() {
                Ok(ip) if !ip.is_unspecified() => Some(ip),
                _ => {
                    self.err(
                        "kubernetes.endpoint_address",
                        format!("`{a}` is not an IP address (e.g. \"10.108.0.10\")"),
                    );
                    None
                }
            },
        };
        let host = crate::kubeadm::endpoint_host(&control_plane_endpoint);
        let endpoint_is_name = host.parse::<IpAddr>().is_err();
        let address = endpoint_address.or(vip.map(|v| v.address));
        let hosts_entry = match (raw.manage_hosts, endpoint_is_name, address) {
            (Some(false), _, _) | (_, false, _) => None,
            (_, true, Some(a)) => Some((host.to_string(), a)),
            (Some(true), true, None) => {
                self.err(
                    "kubernetes.manage_hosts",
                    format!("`{host}` (from `kubernetes.control_plane_endpoint`) needs an address: set `kubernetes.endpoint_address` or add a `[vip]`"),
                );
                None
            }
            (None, true, None) => None,
        };
        let mut kubeadm_extra = crate::kubeadm::Extra::default();
        for (kind, table, slot) in [
            (
                crate::kubeadm::Kind::Cluster,
                raw.cluster_configuration,
                &mut kubeadm_extra.cluster,
            ),
            (
                crate::kubeadm::Kind::Init,
                raw.init_configuration,
                &mut kubeadm_extra.init,
            ),
            (
                crate::kubeadm::Kind::Join,
                raw.join_configuration,
                &mut kubeadm_extra.join,
            ),
        ] {
            let Some(table) = table else { continue };
            let tree = match crate::kubeadm::Tree::from_toml(&toml::Value::Table(table)) {
                Ok(t) => t,
                Err(m) => {
                    self.err(kind.config_table(), m);
                    continue;
                }
            };
            match crate::kubeadm::validate(kind, &tree, binds_apiserver) {
                Ok(()) => *slot = Some(tree),
                Err(crate::kubeadm::KubeadmError::Setting { key, message }) => {
                    self.err(&key, message)
                }
                Err(e) => self.err(kind.config_table(), e.to_string()),
            }
        }
        Some(KubernetesConfig {
            control_plane_endpoint,
            apiserver_port,
            kubeadm,
            kubectl,
            etc_dir,
            cni_manifest: raw.cni_manifest,
            dead_after,
            kubelet,
            containerd,
            containerd_config,
            host_prep: raw.host_prep.unwrap_or(true),
            hosts_entry,
            endpoint_address,
            host_root,
            kubeadm_extra,
        })
    }
}

/// Node and cluster names: what a hostname may be, so they can double as
/// kubeadm node names.
/// [`check_name`] without a message: what a frame header may carry.
pub fn is_node_name(s: &[u8]) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-' || *b == b'.')
        && !s.starts_with(b"-")
        && !s.starts_with(b".")
        && !s.ends_with(b"-")
        && !s.ends_with(b".")
}

pub fn check_name(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 63 {
        return Err("must be 1 to 63 characters".into());
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    {
        return Err(format!(
            "`{s}` may only hold lowercase letters, digits, `-` and `.`"
        ));
    }
    if s.starts_with(['-', '.']) || s.ends_with(['-', '.']) {
        return Err(format!("`{s}` must start and end with a letter or digit"));
    }
    Ok(())
}

/// `host:port` where host is an IP, a bracketed IPv6 or a DNS name.
fn check_host_port(s: &str) -> Result<(), String> {
    if s.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err("is not host:port (e.g. \"10.108.0.3:7946\")".into());
    };
    match port.parse::<u16>() {
        Ok(p) if p != 0 => {}
        _ => return Err(format!("port `{port}` is not a number from 1 to 65535")),
    }
    if host.parse::<IpAddr>().is_ok() || host.starts_with('[') {
        return Err("is not a valid address".into());
    }
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if !host_ok {
        return Err(format!(
            "host `{host}` is neither an IP address nor a DNS name"
        ));
    }
    Ok(())
}

/// `10.0.0.10/32`, `10.0.0.10` (means /32), `fd00::10/128`.
fn parse_cidr(s: &str) -> Result<(IpAddr, u8), String> {
    let (ip, len) = match s.split_once('/') {
        Some((ip, len)) => (ip, Some(len)),
        None => (s, None),
    };
    let ip: IpAddr = ip
        .parse()
        .map_err(|_| "is not an IP address with an optional /prefix".to_string())?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match len {
        None => max,
        Some(l) => l
            .parse::<u8>()
            .ok()
            .filter(|l| (1..=max).contains(l))
            .ok_or_else(|| format!("prefix length must be 1 to {max}"))?,
    };
    if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() {
        return Err("must be a unicast address a client can reach".into());
    }
    Ok((ip, len))
}

/// `/32` for IPv4, `/128` for IPv6.
fn host_prefix(ip: IpAddr) -> u8 {
    if ip.is_ipv4() { 32 } else { 128 }
}

fn valid_ifname(s: &str) -> bool {
    !s.is_empty()
        && s.len() < 16
        && s != "."
        && s != ".."
        && !s.contains(['/', ':'])
        && !s.chars().any(char::is_whitespace)
}

/// Turn a toml/serde error into a [`ConfigError`] with line and key.
fn toml_error(path: &Path, text: &str, e: &toml::de::Error) -> ConfigError {
    let line = e.span().map(|s| line_of(text, s.start));
    let mut message = e.message().trim().to_string();
    // serde names unknown fields; say which table they were found in.
    let key = line.and_then(|l| key_at_line(text, l));
    if message.starts_with("unknown field") {
        message = message.replacen("unknown field", "unknown key", 1);
    }
    if message.starts_with("missing field") {
        message = message.replacen("missing field", "missing key", 1);
    }
    ConfigError {
        file: path.to_path_buf(),
        key,
        line,
        message,
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|&b| b == b'\n')
        .count()
        + 1
}

/// The dotted key defined on `line` (1-based), with its table, if any.
fn key_at_line(text: &str, line: usize) -> Option<String> {
    let mut table = String::new();
    for (i, l) in text.lines().enumerate() {
        let t = l.trim();
        if let Some(name) = table_header(t) {
            table = name;
            if i + 1 == line {
                return Some(table.clone());
            }
            continue;
        }
        if i + 1 == line {
            let key = t.split('=').next()?.trim().trim_matches('"');
            if key.is_empty() || t.starts_with('#') {
                return None;
            }
            return Some(if table.is_empty() {
                key.to_string()
            } else {
                format!("{table}.{key}")
            });
        }
    }
    None
}

fn table_header(t: &str) -> Option<String> {
    let inner = t.strip_prefix('[')?.split(']').next()?;
    Some(inner.trim().to_string())
}

/// The line where a dotted key is set, found by scanning table headers.
fn find_key_line(text: &str, dotted: &str) -> Option<usize> {
    let (table, key) = match dotted.rsplit_once('.') {
        Some((t, k)) => (t, k),
        None => ("", dotted),
    };
    let mut current = String::new();
    for (i, l) in text.lines().enumerate() {
        let t = l.trim();
        if let Some(name) = table_header(t) {
            current = name;
            if current == dotted {
                return Some(i + 1);
            }
            continue;
        }
        if current == table
            && let Some((k, _)) = t.split_once('=')
            && k.trim().trim_matches('"') == key
        {
            return Some(i + 1);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: &str = r#"
cluster = "lab"
node_name = "cp-0"
roles = ["control-plane", "lb"]
advertise_addr = "10.108.0.3"
gossip_port = 7946
seeds = ["10.108.0.3:7946", "10.108.0.6:7946"]
voters = ["cp-0", "cp-1", "cp-2"]
join_port = 7947
key_file = "/etc/kubeha/cluster.key"
control_key_file = "/etc/kubeha/control.key"
state_dir = "/var/lib/kubeha"
socket = "/run/kubeha/kubeha.sock"
metrics_addr = "127.0.0.1:9946"
timing = "default"

[vip]
provider = "arp"
address = "10.108.0.10/32"
interface = "eth1"
priority = 100

[haproxy]
frontend = "10.108.0.10:6443"
config_path = "/etc/haproxy/haproxy.cfg"
binary = "/usr/sbin/haproxy"

[kubernetes]
control_plane_endpoint = "k8s-api:6443"
apiserver_port = 6443
kubeadm = "/usr/bin/kubeadm"
kubectl = "/usr/bin/kubectl"
etc_dir = "/etc/kubernetes"
cni_manifest = "/etc/kubeha/cni.yaml"
dead_after = "5m"
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/kubeha/kubeha.toml"), text, "host-1")
    }

    /// 1-based number of the first line of `text` that contains `needle`.
    fn line_with(text: &str, needle: &str) -> Option<usize> {
        text.lines().position(|l| l.contains(needle)).map(|i| i + 1)
    }

    fn err(text: &str) -> ConfigError {
        parse(text).expect_err("config should be rejected")
    }

    #[test]
    fn every_documented_key_is_parsed() {
        let c = parse(FULL).unwrap();
        assert_eq!(c.cluster, "lab");
        assert_eq!(c.node_name, "cp-0");
        assert_eq!(
            c.roles,
            BTreeSet::from([Role::ControlPlane, Role::Lb]),
            "roles"
        );
        assert_eq!(c.advertise_addr, "10.108.0.3".parse::<IpAddr>().unwrap());
        assert_eq!(c.gossip_port, 7946);
        assert_eq!(c.join_port, 7947);
        assert_eq!(c.join_addr(), "10.108.0.3:7947".parse().unwrap());
        assert_eq!(c.seeds, vec!["10.108.0.3:7946", "10.108.0.6:7946"]);
        assert_eq!(c.voters, vec!["cp-0", "cp-1", "cp-2"]);
        assert_eq!(c.key_file, PathBuf::from("/etc/kubeha/cluster.key"));
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/kubeha"));
        assert_eq!(c.socket, PathBuf::from("/run/kubeha/kubeha.sock"));
        assert_eq!(c.metrics_addr, "127.0.0.1:9946".parse().unwrap());
        assert_eq!(c.timing, Profile::Default);
        let v = c.vip.as_ref().unwrap();
        assert_eq!(v.provider, VipProviderKind::Arp);
        assert_eq!(v.cidr(), "10.108.0.10/32");
        assert_eq!(v.interface.as_deref(), Some("eth1"));
        assert_eq!(v.priority, 100);
        let h = c.haproxy.as_ref().unwrap();
        assert_eq!(h.frontend, "10.108.0.10:6443".parse().unwrap());
        assert_eq!(h.config_path, PathBuf::from("/etc/haproxy/haproxy.cfg"));
        assert_eq!(h.binary, PathBuf::from("/usr/sbin/haproxy"));
        assert_eq!(h.backend_port, 6443);
        let k = c.kubernetes.as_ref().unwrap();
        assert_eq!(k.control_plane_endpoint, "k8s-api:6443");
        assert_eq!(k.apiserver_port, 6443);
        assert_eq!(k.kubeadm, PathBuf::from("/usr/bin/kubeadm"));
        assert_eq!(k.kubectl, PathBuf::from("/usr/bin/kubectl"));
        assert_eq!(k.etc_dir, PathBuf::from("/etc/kubernetes"));
        assert_eq!(k.cni_manifest, Some(PathBuf::from("/etc/kubeha/cni.yaml")));
        assert_eq!(k.dead_after, Duration::from_secs(300));
        assert!(c.is_voter());
        assert!(c.is_vip_candidate());
        assert_eq!(c.quorum(), 2);
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse("cluster = \"lab\"\nadvertise_addr = \"198.18.0.11\"\nvoters = [\"n1\"]\n")
            .unwrap();
        assert_eq!(c.node_name, "host-1");
        assert!(c.roles.is_empty());
        assert_eq!(c.gossip_port, DEFAULT_GOSSIP_PORT);
        assert_eq!(c.join_port, DEFAULT_JOIN_PORT);
        assert_eq!(c.socket, PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(c.metrics_addr, DEFAULT_METRICS_ADDR.parse().unwrap());
        assert!(c.vip.is_none() && c.haproxy.is_none() && c.kubernetes.is_none());
        assert!(!c.is_voter());
    }

    const DO_VIP: &str = "provider = \"digitalocean\"\ntoken_file = \"/etc/kubeha/do-token\"\nreserved_ip = \"203.0.113.7\"";

    fn with_do_vip(vip: &str) -> String {
        FULL.replace(
            "provider = \"arp\"\naddress = \"10.108.0.10/32\"\ninterface = \"eth1\"",
            vip,
        )
    }

    #[test]
    fn digitalocean_provider() {
        let c = parse(&with_do_vip(&format!(
            "{DO_VIP}\napi_url = \"https://127.0.0.1:8443\"\nmetadata_url = \"http://127.0.0.1:8080/droplet/7\"\napi_ca_file = \"/tmp/ca.pem\"\nassign_timeout = \"90s\""
        )))
        .unwrap();
        let v = c.vip.unwrap();
        assert_eq!(v.provider, VipProviderKind::Digitalocean);
        // The VIP is the Reserved IP.
        assert_eq!(v.address.to_string(), "203.0.113.7");
        assert_eq!(v.prefix_len, 32);
        assert_eq!(v.interface, None);
        let d = v.digitalocean.unwrap();
        assert_eq!(d.reserved_ip.to_string(), "203.0.113.7");
        assert_eq!(d.api_url, "https://127.0.0.1:8443");
        assert_eq!(d.metadata_url, "http://127.0.0.1:8080/droplet/7");
        assert_eq!(d.ca_file, Some(PathBuf::from("/tmp/ca.pem")));
        assert_eq!(d.assign_timeout, Duration::from_secs(90));
        // An explicit endpoint stays.
        assert_eq!(c.kubernetes.unwrap().control_plane_endpoint, "k8s-api:6443");
    }

    #[test]
    fn digitalocean_defaults() {
        let text = with_do_vip(DO_VIP).replace("control_plane_endpoint = \"k8s-api:6443\"\n", "");
        let c = parse(&text).unwrap();
        let d = c.vip.as_ref().unwrap().digitalocean.as_ref().unwrap();
        assert_eq!(d.api_url, DIGITALOCEAN_API_URL);
        assert_eq!(d.metadata_url, DIGITALOCEAN_METADATA_URL);
        assert_eq!(d.ca_file, None);
        assert_eq!(d.assign_timeout, Duration::from_secs(60));
        // The Reserved IP is the default control-plane endpoint.
        assert_eq!(
            c.kubernetes.as_ref().unwrap().control_plane_endpoint,
            "203.0.113.7:6443"
        );
        // The explicit address form is accepted when it is the Reserved IP.
        let c = parse(&with_do_vip(&format!(
            "{DO_VIP}\naddress = \"203.0.113.7/32\""
        )))
        .unwrap();
        assert_eq!(c.vip.unwrap().address.to_string(), "203.0.113.7");

        // Without `frontend`, HAProxy binds the anchor address (which
        // receives the Reserved IP's traffic), port 6443; the agent fills the
        // address in at start.
        let lb = with_do_vip(DO_VIP)
            .replace("[\"control-plane\", \"lb\"]", "[\"lb\"]")
            .replace("frontend = \"10.108.0.10:6443\"\n", "");
        let h = parse(&lb).unwrap().haproxy.unwrap();
        assert!(h.frontend_anchor);
        assert_eq!(h.frontend.to_string(), "0.0.0.0:6443");
        // Also on a control plane + lb: its apiserver binds the node's own
        // address, not the anchor.
        let cp = with_do_vip(DO_VIP).replace("frontend = \"10.108.0.10:6443\"\n", "");
        assert!(parse(&cp).unwrap().haproxy.unwrap().frontend_anchor);
        // An explicit frontend stays, even every address.
        let all = with_do_vip(DO_VIP).replace(
            "frontend = \"10.108.0.10:6443\"",
            "frontend = \"0.0.0.0:6443\"",
        );
        let h = parse(&all).unwrap().haproxy.unwrap();
        assert!(!h.frontend_anchor);
        assert_eq!(h.frontend.to_string(), "0.0.0.0:6443");
    }

    #[test]
    fn digitalocean_rules() {
        for (vip, key) in [
            (
                "provider = \"digitalocean\"\nreserved_ip = \"203.0.113.7\"",
                "vip.token_file",
            ),
            (
                "provider = \"digitalocean\"\ntoken_file = \"/etc/kubeha/do-token\"",
                "vip.reserved_ip",
            ),
            (
                &format!("{DO_VIP}\naddress = \"10.108.0.10\""),
                "vip.address",
            ),
            (
                &format!("{DO_VIP}\naddress = \"203.0.113.7/24\""),
                "vip.address",
            ),
            (&format!("{DO_VIP}\ninterface = \"eth0\""), "vip.interface"),
            (
                &format!("{DO_VIP}\napi_url = \"api.digitalocean.com\""),
                "vip.api_url",
            ),
            (
                &format!("{DO_VIP}\nmetadata_url = \"https://\""),
                "vip.metadata_url",
            ),
            (
                &format!("{DO_VIP}\napi_ca_file = \"ca.pem\""),
                "vip.api_ca_file",
            ),
            (
                "provider = \"digitalocean\"\ntoken_file = \"do-token\"\nreserved_ip = \"203.0.113.7\"",
                "vip.token_file",
            ),
            (
                "provider = \"digitalocean\"\ntoken_file = \"/t\"\nreserved_ip = \"droplet\"",
                "vip.address",
            ),
            (&format!("{DO_VIP}\ntoken = \"dop_v1_x\""), "vip.token"),
            (
                &format!("{DO_VIP}\nassign_timeout = \"500ms\""),
                "vip.assign_timeout",
            ),
            (
                &format!("{DO_VIP}\nassign_timeout = \"2h\""),
                "vip.assign_timeout",
            ),
            (
                &format!("{DO_VIP}\nassign_timeout = \"soon\""),
                "vip.assign_timeout",
            ),
            (
                "provider = \"arp\"\naddress = \"10.108.0.10/32\"\ninterface = \"eth1\"\nassign_timeout = \"60s\"",
                "vip.assign_timeout",
            ),
            (
                "provider = \"digitalocean\"\ntoken_file = \"/t\"\nreserved_ip = \"2001:db8::7\"",
                "vip.reserved_ip",
            ),
        ] {
            let e = err(&with_do_vip(vip));
            assert_eq!(e.key.as_deref(), Some(key), "{vip}: {e}");
        }
        // A secret in the config file is an unknown key, and the message
        // does not repeat its value.
        let e = err(&with_do_vip(&format!("{DO_VIP}\ntoken = \"dop_v1_x\"")));
        assert!(!e.to_string().contains("dop_v1_x"), "{e}");
        // `arp` rejects the digitalocean keys and needs an address.
        let e = err(&FULL.replace(
            "interface = \"eth1\"",
            "interface = \"eth1\"\nmetadata_url = \"http://x\"",
        ));
        assert_eq!(e.key.as_deref(), Some("vip.metadata_url"));
        let e = err(&FULL.replace("address = \"10.108.0.10/32\"\n", ""));
        assert_eq!(e.key.as_deref(), Some("vip.address"));
    }

    #[test]
    fn unknown_key_is_named_with_line() {
        let text = FULL.replace("priority = 100", "priority = 100\nprio = 3");
        let e = err(&text);
        assert_eq!(e.key.as_deref(), Some("vip.prio"), "{e}");
        assert_eq!(e.line, line_with(&text, "prio = 3"));
        assert!(e.message.contains("unknown key `prio`"), "{e}");
        let s = e.to_string();
        let at = format!(
            "/etc/kubeha/kubeha.toml:{}: `vip.prio`: unknown key",
            line_with(&text, "prio = 3").unwrap()
        );
        assert!(s.starts_with(&at), "{s}");

        let e = err(&format!("{FULL}\n[extra]\nx = 1\n"));
        assert!(e.message.contains("unknown key `extra`"), "{e}");
    }

    #[test]
    fn wrong_type_is_named() {
        let e = err(&FULL.replace("gossip_port = 7946", "gossip_port = \"7946\""));
        assert_eq!(e.key.as_deref(), Some("gossip_port"), "{e}");
        assert_eq!(e.line, Some(6));
        assert!(e.message.contains("invalid type"), "{e}");

        let e = err(&FULL.replace("priority = 100", "priority = 300"));
        assert_eq!(e.key.as_deref(), Some("vip.priority"), "{e}");
    }

    #[test]
    fn bad_address_is_named() {
        let e = err(&FULL.replace("\"10.108.0.3\"", "\"10.108.0.300\""));
        assert_eq!(e.key.as_deref(), Some("advertise_addr"));
        assert_eq!(e.line, Some(5));
        assert!(e.message.contains("not an IP address"), "{e}");

        let e = err(&FULL.replace("\"10.108.0.6:7946\"", "\"10.108.0.6\""));
        assert_eq!(e.key.as_deref(), Some("seeds"));
        assert!(e.message.contains("10.108.0.6"), "{e}");

        let e = err(&FULL.replace("127.0.0.1:9946", "localhost"));
        assert_eq!(e.key.as_deref(), Some("metrics_addr"));

        let e = err(&FULL.replace("10.108.0.10/32", "10.108.0.10/33"));
        assert_eq!(e.key.as_deref(), Some("vip.address"));
        assert_eq!(e.line, line_with(FULL, "10.108.0.10/32"));

        let e = err(&FULL.replace("frontend = \"10.108.0.10:6443\"", "frontend = \"vip\""));
        assert_eq!(e.key.as_deref(), Some("haproxy.frontend"));
    }

    #[test]
    fn empty_voters_is_named() {
        let e = err(&FULL.replace("voters = [\"cp-0\", \"cp-1\", \"cp-2\"]", "voters = []"));
        assert_eq!(e.key.as_deref(), Some("voters"));
        assert_eq!(e.line, Some(8));
        assert!(e.message.contains("at least one"), "{e}");
    }

    #[test]
    fn duplicate_seeds_and_voters_are_named() {
        let e = err(&FULL.replace("\"10.108.0.6:7946\"", "\"10.108.0.3:7946\""));
        assert_eq!(e.key.as_deref(), Some("seeds"));
        assert!(e.message.contains("listed twice"), "{e}");
        let e = err(&FULL.replace("\"cp-2\"]", "\"cp-1\"]"));
        assert_eq!(e.key.as_deref(), Some("voters"));
        assert!(e.message.contains("listed twice"), "{e}");
    }

    #[test]
    fn missing_required_key_is_named() {
        let e = err("cluster = \"lab\"\nvoters = [\"a\"]\n");
        assert!(e.message.contains("missing key `advertise_addr`"), "{e}");
    }

    #[test]
    fn role_rules() {
        let e = err(&FULL.replace(
            "[\"control-plane\", \"lb\"]",
            "[\"control-plane\", \"gpu\"]",
        ));
        assert_eq!(e.key.as_deref(), Some("roles"));
        assert!(e.message.contains("unknown role `gpu`"));
        let e = err(&FULL.replace(
            "[\"control-plane\", \"lb\"]",
            "[\"control-plane\", \"worker\"]",
        ));
        assert!(e.message.contains("exclude each other"));
        // `[haproxy]` on a node that is not `lb`
        let e = err(&FULL.replace("[\"control-plane\", \"lb\"]", "[\"control-plane\"]"));
        assert_eq!(e.key.as_deref(), Some("haproxy"));
    }

    #[test]
    fn vip_rules() {
        let e = err(&FULL.replace("interface = \"eth1\"\n", ""));
        assert_eq!(e.key.as_deref(), Some("vip.interface"));
        let e = err(&FULL.replace(
            "interface = \"eth1\"",
            "interface = \"eth1\"\ntoken_file = \"/x\"",
        ));
        assert_eq!(e.key.as_deref(), Some("vip.token_file"));
        let e = err(&FULL.replace("provider = \"arp\"", "provider = \"gcp\""));
        assert_eq!(e.key.as_deref(), Some("vip.provider"));
    }

    #[test]
    fn vip_only_lb_node() {
        let text = FULL
            .split("[haproxy]")
            .next()
            .unwrap()
            .replace("[\"control-plane\", \"lb\"]", "[\"lb\"]");
        let c = parse(&text).unwrap();
        assert!(c.is_vip_candidate());
        assert!(c.haproxy.is_none());
    }

    #[test]
    fn the_control_tier_needs_the_control_key() {
        let c = parse(FULL).unwrap();
        assert!(c.needs_control_tier());
        assert_eq!(
            c.control_key_file,
            Some(PathBuf::from("/etc/kubeha/control.key"))
        );
        let without = FULL.replace("control_key_file = \"/etc/kubeha/control.key\"\n", "");
        let e = err(&without);
        assert_eq!(e.key.as_deref(), Some("control_key_file"), "{e}");
        assert!(
            e.message.contains("voters, control planes and lb nodes"),
            "{e}"
        );
        // A voter without other roles needs it too; a worker does not.
        let voter = "cluster = \"lab\"\nnode_name = \"n1\"\nadvertise_addr = \"198.18.0.11\"\nvoters = [\"n1\"]\n";
        assert_eq!(err(voter).key.as_deref(), Some("control_key_file"));
        let worker = "cluster = \"lab\"\nnode_name = \"w1\"\nroles = [\"worker\"]\nadvertise_addr = \"198.18.0.11\"\nvoters = [\"n1\"]\n";
        let w = parse(worker).unwrap();
        assert!(!w.needs_control_tier() && w.control_key_file.is_none());
        let e = err(&FULL.replace("/etc/kubeha/control.key", "/etc/kubeha/cluster.key"));
        assert_eq!(e.key.as_deref(), Some("control_key_file"));
        let e = err(&FULL.replace("/etc/kubeha/control.key", "control.key"));
        assert_eq!(e.key.as_deref(), Some("control_key_file"));
    }

    #[test]
    fn control_public_keys_are_parsed_and_checked() {
        let worker = "cluster = \"lab\"\nnode_name = \"w1\"\nroles = [\"worker\"]\nadvertise_addr = \"198.18.0.11\"\nvoters = [\"n1\"]\n";
        let k = ProofKey::of(&crate::frame::Key::from_bytes([5; 32]));
        let c = parse(&format!("{worker}control_public_keys = [\"{k}\"]\n")).unwrap();
        assert_eq!(c.control_public_keys, [k]);
        assert!(parse(worker).unwrap().control_public_keys.is_empty());
        let e = err(&format!(
            "{worker}control_public_keys = [\"{k}\", \"ed25519:AAAA\"]\n"
        ));
        assert_eq!(e.key.as_deref(), Some("control_public_keys"), "{e}");
        assert!(e.message.contains("entry 2"), "{e}");
    }

    #[test]
    fn names_and_timing() {
        let e = err(&FULL.replace("node_name = \"cp-0\"", "node_name = \"CP_0\""));
        assert_eq!(e.key.as_deref(), Some("node_name"));
        let e = err(&FULL.replace("timing = \"default\"", "timing = \"turbo\""));
        assert_eq!(e.key.as_deref(), Some("timing"));
        let c = parse(&FULL.replace("timing = \"default\"", "timing = \"fast\"")).unwrap();
        assert_eq!(c.timing, Profile::Fast);
        let e = err(&FULL.replace("dead_after = \"5m\"", "dead_after = \"5 parsecs\""));
        assert_eq!(e.key.as_deref(), Some("kubernetes.dead_after"));
        assert_eq!(e.line, line_with(FULL, "dead_after = "));
        let e = err(&FULL.replace("state_dir = \"/var/lib/kubeha\"", "state_dir = \"var\""));
        assert_eq!(e.key.as_deref(), Some("state_dir"));
    }

    #[test]
    fn kubernetes_host_keys() {
        let c = parse(FULL).unwrap();
        let k = c.kubernetes.unwrap();
        assert_eq!(k.kubelet, PathBuf::from("/usr/bin/kubelet"));
        assert_eq!(
            k.containerd_config,
            PathBuf::from("/etc/containerd/config.toml")
        );
        assert!(k.host_prep);
        assert_eq!(k.host_root, PathBuf::from("/"));
        // The endpoint's name points at the VIP by default.
        assert_eq!(
            k.hosts_entry,
            Some(("k8s-api".to_string(), "10.108.0.10".parse().unwrap()))
        );

        let text = FULL.replace(
            "dead_after = \"5m\"",
            "dead_after = \"5m\"\nhost_prep = false\nendpoint_address = \"10.108.0.20\"\nhost_root = \"/tmp/root\"\ncontainerd_config = \"/etc/c.toml\"",
        );
        let k = parse(&text).unwrap().kubernetes.unwrap();
        assert!(!k.host_prep);
        assert_eq!(k.host_root, PathBuf::from("/tmp/root"));
        assert_eq!(
            k.hosts_entry.unwrap().1,
            "10.108.0.20".parse::<IpAddr>().unwrap()
        );

        let off = FULL.replace(
            "dead_after = \"5m\"",
            "dead_after = \"5m\"\nmanage_hosts = false",
        );
        assert_eq!(parse(&off).unwrap().kubernetes.unwrap().hosts_entry, None);
        let by_ip = FULL.replace("\"k8s-api:6443\"", "\"10.108.0.10:6443\"");
        assert_eq!(parse(&by_ip).unwrap().kubernetes.unwrap().hosts_entry, None);

        let text = FULL.replace(
            "dead_after = \"5m\"",
            "dead_after = \"5m\"\nendpoint_address = \"api\"",
        );
        let e = err(&text);
        assert_eq!(e.key.as_deref(), Some("kubernetes.endpoint_address"));
        assert_eq!(e.line, line_with(&text, "endpoint_address = \"api\""));
        let e = err(&FULL.replace(
            "dead_after = \"5m\"",
            "dead_after = \"5m\"\nhost_root = \"tmp\"",
        ));
        assert_eq!(e.key.as_deref(), Some("kubernetes.host_root"));
        // No VIP to point the name at, and the operator asked for the line.
        let no_vip = FULL
            .replace("[vip]\nprovider = \"arp\"\naddress = \"10.108.0.10/32\"\ninterface = \"eth1\"\npriority = 100\n", "")
            .replace("dead_after = \"5m\"", "dead_after = \"5m\"\nmanage_hosts = true");
        let e = err(&no_vip);
        assert_eq!(e.key.as_deref(), Some("kubernetes.manage_hosts"), "{e}");
        assert!(e.message.contains("endpoint_address"), "{e}");
    }

    #[test]
    fn kubeadm_settings_are_validated_with_key_and_line() {
        let text = format!(
            "{FULL}\n[kubernetes.cluster_configuration]\nkubernetesVersion = \"v1.31.2\"\n[kubernetes.cluster_configuration.networking]\npodSubnet = \"10.244.0.0/16\"\n"
        );
        let k = parse(&text).unwrap().kubernetes.unwrap();
        assert!(k.kubeadm_extra.cluster.is_some());
        assert!(k.kubeadm_extra.init.is_none());

        let text = format!(
            "{FULL}\n[kubernetes.cluster_configuration]\ncontrolPlaneEndpoint = \"x:6443\"\n"
        );
        let e = err(&text);
        assert_eq!(
            e.key.as_deref(),
            Some("kubernetes.cluster_configuration.controlPlaneEndpoint")
        );
        assert_eq!(
            e.line,
            line_with(&text, "controlPlaneEndpoint = \"x:6443\"")
        );
        assert!(e.message.contains("control_plane_endpoint"), "{e}");

        // cp-0 is control-plane + lb: kubeha binds kube-apiserver itself.
        let text = format!(
            "{FULL}\n[kubernetes.cluster_configuration.apiServer.extraArgs]\nbind-address = \"0.0.0.0\"\n"
        );
        let e = err(&text);
        assert_eq!(
            e.key.as_deref(),
            Some("kubernetes.cluster_configuration.apiServer.extraArgs.bind-address")
        );
        assert_eq!(e.line, line_with(&text, "bind-address = \"0.0.0.0\""));

        let e = err(&format!(
            "{FULL}\n[kubernetes.init_configuration]\nbogus = 1\n"
        ));
        assert_eq!(
            e.key.as_deref(),
            Some("kubernetes.init_configuration.bogus")
        );
        assert!(e.message.contains("unknown InitConfiguration field"), "{e}");

        let e = err(&format!(
            "{FULL}\n[kubernetes.join_configuration.discovery]\ntimeout = \"1m\"\n"
        ));
        assert_eq!(
            e.key.as_deref(),
            Some("kubernetes.join_configuration.discovery")
        );
    }

    #[test]
    fn join_port_rules() {
        let e = err(&FULL.replace("join_port = 7947", "join_port = 0"));
        assert_eq!(e.key.as_deref(), Some("join_port"), "{e}");
        assert_eq!(e.line, Some(9));
        let e = err(&FULL.replace("join_port = 7947", "join_port = 70000"));
        assert_eq!(e.key.as_deref(), Some("join_port"), "{e}");
        // TCP listeners on this node's address it would collide with.
        let e = err(&FULL.replace("join_port = 7947", "join_port = 6443"));
        assert_eq!(e.key.as_deref(), Some("join_port"), "{e}");
        assert!(e.message.contains("apiserver_port"), "{e}");
        let e = err(&FULL
            .replace("join_port = 7947", "join_port = 9946")
            .replace("127.0.0.1:9946", "0.0.0.0:9946"));
        assert_eq!(e.key.as_deref(), Some("join_port"), "{e}");
        assert!(e.message.contains("metrics_addr"), "{e}");
        // Loopback metrics on the same port do not collide with advertise_addr.
        assert!(parse(&FULL.replace("join_port = 7947", "join_port = 9946")).is_ok());
        // UDP gossip on the same number is fine.
        assert!(parse(&FULL.replace("join_port = 7947", "join_port = 7946")).is_ok());
    }

    #[test]
    fn syntax_error_has_line() {
        let e = err("cluster = \"lab\"\nvoters = [\n");
        assert!(e.line.is_some(), "{e}");
    }
}
