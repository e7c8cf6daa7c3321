//! The kubeadm configuration files the agent hands to `kubeadm init` and
//! `kubeadm join --config`, rendered from kubeha.toml, the installed kubeadm's
//! version and the node's roles.
//!
//! Output is a stream of JSON documents separated by `---` lines: JSON is
//! YAML, and kubeadm reads its config with a YAML document reader that accepts
//! JSON documents (`SplitConfigDocuments`: "reads the YAML/JSON bytes
//! per-document"). Rendering from a small ordered [`Tree`] keeps the output
//! deterministic (snapshot-tested) without a YAML library.
//!
//! On `control-plane` + `lb` nodes kube-apiserver must not listen on every
//! address, or HAProxy cannot bind VIP:6443. `bind-address` is per node, so it
//! is not put in `ClusterConfiguration.apiServer.extraArgs` (kubeadm stores the
//! ClusterConfiguration in the cluster and every joining control plane would
//! get the init node's address): it is a kubeadm patch
//! (`kube-apiserver+json.json`, see [`Render::patches`]) in a directory that
//! InitConfiguration/JoinConfiguration name in `patches.directory`.
//!
//! Users add their own settings in `[kubernetes.cluster_configuration]`,
//! `[kubernetes.init_configuration]` and `[kubernetes.join_configuration]`
//! (field names as in kubeadm's API). They are merged into the render: unknown
//! top-level fields are refused, fields the agent owns are refused with the
//! key named, `apiServer.certSANs` are appended to the agent's, and
//! `extraArgs` tables (`name = "value"`) are written in the form the installed
//! kubeadm takes (a `{name, value}` list in v1beta4, a map in v1beta3).

use std::fmt;
use std::net::IpAddr;

use crate::config::{Config, Role};

/// A kubeadm release, from `kubeadm version -o short` (`v1.31.2`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub major: u64,
    pub minor: u64,
    pub patch: u64,
}

impl Version {
    /// `v1.31.2`, `1.31.2`, `v1.32.0-rc.1`; `None` for anything else.
    pub fn parse(s: &str) -> Option<Version> {
        let s = s.trim();
        let s = s.strip_prefix('v').unwrap_or(s);
        let core = s.split(['-', '+']).next()?;
        let mut it = core.split('.');
        let v = Version {
            major: it.next()?.parse().ok()?,
            minor: it.next()?.parse().ok()?,
            patch: it.next().unwrap_or("0").parse().ok()?,
        };
        if it.next().is_some() {
            return None;
        }
        Some(v)
    }

    /// `1.31`: what nodes gossip and compare.
    pub fn minor_string(&self) -> String {
        format!("{}.{}", self.major, self.minor)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// The kubeadm config API the installed kubeadm takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiVersion {
    /// kubeadm 1.22 to 1.30.
    V1beta3,
    /// kubeadm 1.31 and later.
    V1beta4,
}

impl ApiVersion {
    pub fn for_kubeadm(v: Version) -> Result<ApiVersion, KubeadmError> {
        match (v.major, v.minor) {
            (1, m) if m >= 31 => Ok(ApiVersion::V1beta4),
            (1, m) if m >= 22 => Ok(ApiVersion::V1beta3),
            (1, _) => Err(KubeadmError::TooOld(v)),
            _ => Err(KubeadmError::UnknownMajor(v)),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ApiVersion::V1beta3 => "kubeadm.k8s.io/v1beta3",
            ApiVersion::V1beta4 => "kubeadm.k8s.io/v1beta4",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KubeadmError {
    #[error(
        "kubeadm {0} is too old: kubeha needs kubeadm 1.22 or later (config API kubeadm.k8s.io/v1beta3); upgrade the kubeadm package"
    )]
    TooOld(Version),
    #[error("kubeadm {0}: kubeha knows the config APIs of kubeadm 1.x only")]
    UnknownMajor(Version),
    #[error("`kubeadm version -o short` printed `{0}`, not a version like v1.31.2")]
    BadVersion(String),
    /// A user setting that cannot be merged; `key` is the dotted config key.
    #[error("`{key}`: {message}")]
    Setting { key: String, message: String },
}

/// A JSON value with ordered maps: what the renders are built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tree {
    Str(String),
    /// A number as written (TOML integers and floats).
    Num(String),
    Bool(bool),
    List(Vec<Tree>),
    Map(Vec<(String, Tree)>),
}

impl Tree {
    fn map() -> Tree {
        Tree::Map(Vec::new())
    }

    fn s(v: impl Into<String>) -> Tree {
        Tree::Str(v.into())
    }

    fn get_mut(&mut self, key: &str) -> Option<&mut Tree> {
        match self {
            Tree::Map(m) => m.iter_mut().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    fn get(&self, key: &str) -> Option<&Tree> {
        match self {
            Tree::Map(m) => m.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    fn remove(&mut self, key: &str) -> Option<Tree> {
        match self {
            Tree::Map(m) => {
                let i = m.iter().position(|(k, _)| k == key)?;
                Some(m.remove(i).1)
            }
            _ => None,
        }
    }

    /// Set `key` (replacing its value, or appending the key).
    fn set(&mut self, key: &str, value: Tree) {
        if let Some(v) = self.get_mut(key) {
            *v = value;
        } else if let Tree::Map(m) = self {
            m.push((key.to_string(), value));
        }
    }

    /// The map at `key`, created if missing.
    fn child(&mut self, key: &str) -> &mut Tree {
        if !matches!(self.get(key), Some(Tree::Map(_))) {
            self.set(key, Tree::map());
        }
        self.get_mut(key).expect("just set")
    }

    /// From a TOML value; datetimes are refused (kubeadm has none).
    pub fn from_toml(v: &toml::Value) -> Result<Tree, String> {
        Ok(match v {
            toml::Value::String(s) => Tree::Str(s.clone()),
            toml::Value::Integer(i) => Tree::Num(i.to_string()),
            toml::Value::Float(f) if f.is_finite() => Tree::Num(f.to_string()),
            toml::Value::Float(_) => return Err("is not a finite number".into()),
            toml::Value::Boolean(b) => Tree::Bool(*b),
            toml::Value::Datetime(_) => {
                return Err(
                    "is a date; kubeadm settings are strings, numbers, lists or tables".into(),
                );
            }
            toml::Value::Array(a) => {
                Tree::List(a.iter().map(Tree::from_toml).collect::<Result<_, _>>()?)
            }
            toml::Value::Table(t) => {
                let mut entries: Vec<(String, Tree)> = Vec::new();
                for (k, v) in t {
                    entries.push((k.clone(), Tree::from_toml(v)?));
                }
                entries.sort_by(|a, b| a.0.cmp(&b.0));
                Tree::Map(entries)
            }
        })
    }

    /// Pretty JSON, two-space indents, keys in tree order.
    pub fn to_json(&self) -> String {
        let mut out = String::new();
        self.write(&mut out, 0);
        out
    }

    fn write(&self, out: &mut String, depth: usize) {
        let pad = |out: &mut String, d: usize| out.push_str(&"  ".repeat(d));
        match self {
            Tree::Str(s) => write_json_string(out, s),
            Tree::Num(n) => out.push_str(n),
            Tree::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Tree::List(items) if items.is_empty() => out.push_str("[]"),
            Tree::Map(items) if items.is_empty() => out.push_str("{}"),
            Tree::List(items) => {
                out.push_str("[\n");
                for (i, v) in items.iter().enumerate() {
                    pad(out, depth + 1);
                    v.write(out, depth + 1);
                    out.push_str(if i + 1 < items.len() { ",\n" } else { "\n" });
                }
                pad(out, depth);
                out.push(']');
            }
            Tree::Map(items) => {
                out.push_str("{\n");
                for (i, (k, v)) in items.iter().enumerate() {
                    pad(out, depth + 1);
                    write_json_string(out, k);
                    out.push_str(": ");
                    v.write(out, depth + 1);
                    out.push_str(if i + 1 < items.len() { ",\n" } else { "\n" });
                }
                pad(out, depth);
                out.push('}');
            }
        }
    }
}

fn write_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Which kubeadm document a user table extends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Cluster,
    Init,
    Join,
}

impl Kind {
    /// The kubeha.toml table it is written in.
    pub fn config_table(self) -> &'static str {
        match self {
            Kind::Cluster => "kubernetes.cluster_configuration",
            Kind::Init => "kubernetes.init_configuration",
            Kind::Join => "kubernetes.join_configuration",
        }
    }

    fn kind(self) -> &'static str {
        match self {
            Kind::Cluster => "ClusterConfiguration",
            Kind::Init => "InitConfiguration",
            Kind::Join => "JoinConfiguration",
        }
    }

    /// Top-level fields of this kind in `api` (kubeadm's API types).
    fn fields(self, api: ApiVersion) -> &'static [&'static str] {
        use ApiVersion::*;
        match (self, api) {
            (Kind::Cluster, V1beta3) => &[
                "etcd",
                "networking",
                "kubernetesVersion",
                "controlPlaneEndpoint",
                "apiServer",
                "controllerManager",
                "scheduler",
                "dns",
                "certificatesDir",
                "imageRepository",
                "featureGates",
                "clusterName",
            ],
            (Kind::Cluster, V1beta4) => &[
                "etcd",
                "networking",
                "kubernetesVersion",
                "controlPlaneEndpoint",
                "apiServer",
                "controllerManager",
                "scheduler",
                "dns",
                "proxy",
                "certificatesDir",
                "imageRepository",
                "featureGates",
                "clusterName",
                "encryptionAlgorithm",
                "certificateValidityPeriod",
                "caCertificateValidityPeriod",
            ],
            (Kind::Init, V1beta3) => &[
                "bootstrapTokens",
                "nodeRegistration",
                "localAPIEndpoint",
                "certificateKey",
                "skipPhases",
                "patches",
            ],
            (Kind::Init, V1beta4) => &[
                "bootstrapTokens",
                "dryRun",
                "nodeRegistration",
                "localAPIEndpoint",
                "certificateKey",
                "skipPhases",
                "patches",
                "timeouts",
            ],
            (Kind::Join, V1beta3) => &[
                "nodeRegistration",
                "caCertPath",
                "discovery",
                "controlPlane",
                "skipPhases",
                "patches",
            ],
            (Kind::Join, V1beta4) => &[
                "dryRun",
                "nodeRegistration",
                "caCertPath",
                "discovery",
                "controlPlane",
                "skipPhases",
                "patches",
                "timeouts",
            ],
        }
    }

    /// Dotted fields the agent sets, with why a user may not.
    fn owned(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Kind::Cluster => &[
                (
                    "apiVersion",
                    "kubeha writes the API version the installed kubeadm takes",
                ),
                ("kind", "kubeha writes the kind"),
                (
                    "controlPlaneEndpoint",
                    "set `kubernetes.control_plane_endpoint` instead",
                ),
            ],
            Kind::Init => &[
                (
                    "apiVersion",
                    "kubeha writes the API version the installed kubeadm takes",
                ),
                ("kind", "kubeha writes the kind"),
                (
                    "localAPIEndpoint",
                    "kubeha sets it from `advertise_addr` and `kubernetes.apiserver_port`",
                ),
                ("nodeRegistration.name", "kubeha sets it from `node_name`"),
                (
                    "bootstrapTokens",
                    "tokens are secrets: kubeha issues them, kubeha.toml is not root-only",
                ),
                (
                    "certificateKey",
                    "the certificate key is a secret: kubeha issues it, kubeha.toml is not root-only",
                ),
                (
                    "patches",
                    "kubeha owns the patches directory (it binds kube-apiserver on control-plane + lb nodes)",
                ),
            ],
            Kind::Join => &[
                (
                    "apiVersion",
                    "kubeha writes the API version the installed kubeadm takes",
                ),
                ("kind", "kubeha writes the kind"),
                (
                    "discovery",
                    "kubeha fetches join material from a healthy control plane",
                ),
                (
                    "controlPlane",
                    "kubeha sets it from `advertise_addr`, `kubernetes.apiserver_port` and the issued certificate key",
                ),
                ("nodeRegistration.name", "kubeha sets it from `node_name`"),
                (
                    "patches",
                    "kubeha owns the patches directory (it binds kube-apiserver on control-plane + lb nodes)",
                ),
            ],
        }
    }
}

/// The user's kubeadm settings, from kubeha.toml.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Extra {
    pub cluster: Option<Tree>,
    pub init: Option<Tree>,
    pub join: Option<Tree>,
}

/// Check one user table without a kubeadm version: its top-level fields must
/// exist in some supported API, owned fields are refused, and on nodes that
/// bind kube-apiserver to their address `apiServer.extraArgs.bind-address`
/// too. Errors carry the dotted kubeha.toml key.
pub fn validate(kind: Kind, tree: &Tree, binds_apiserver: bool) -> Result<(), KubeadmError> {
    let known = |f: &str| {
        kind.fields(ApiVersion::V1beta3).contains(&f)
            || kind.fields(ApiVersion::V1beta4).contains(&f)
    };
    check_tree(kind, tree, binds_apiserver, &known, "kubeadm 1.22 or later")
}

fn check_tree(
    kind: Kind,
    tree: &Tree,
    binds_apiserver: bool,
    known: &dyn Fn(&str) -> bool,
    which: &str,
) -> Result<(), KubeadmError> {
    let table = kind.config_table();
    let err = |key: &str, message: String| KubeadmError::Setting {
        key: format!("{table}.{key}"),
        message,
    };
    let Tree::Map(entries) = tree else {
        return Err(KubeadmError::Setting {
            key: table.to_string(),
            message: "must be a table".into(),
        });
    };
    for (owned, why) in kind.owned() {
        let mut at = Some(tree);
        for seg in owned.split('.') {
            at = at.and_then(|t| t.get(seg));
        }
        if at.is_some() {
            return Err(err(owned, format!("is set by kubeha: {why}")));
        }
    }
    for (k, _) in entries {
        if !known(k) {
            return Err(err(
                k,
                format!(
                    "unknown {} field for {which} (see `kubeadm config print {}-defaults`)",
                    kind.kind(),
                    if kind == Kind::Join { "join" } else { "init" }
                ),
            ));
        }
    }
    if kind == Kind::Cluster
        && let Some(api) = tree.get("apiServer")
    {
        if let Some(sans) = api.get("certSANs")
            && !matches!(sans, Tree::List(l) if l.iter().all(|v| matches!(v, Tree::Str(_))))
        {
            return Err(err(
                "apiServer.certSANs",
                "must be a list of strings".into(),
            ));
        }
        if let Some(args) = api.get("extraArgs") {
            let pairs = extra_args(args).map_err(|m| err("apiServer.extraArgs", m))?;
            if binds_apiserver && pairs.iter().any(|(n, _)| n == "bind-address") {
                return Err(err(
                    "apiServer.extraArgs.bind-address",
                    "is set by kubeha on control-plane + lb nodes (kube-apiserver listens on the node address so HAProxy can own the VIP's port)".into(),
                ));
            }
        }
    }
    Ok(())
}

/// `extraArgs` as written by the user: a table `name = "value"`, or a list
/// of `{ name, value }` tables (v1beta4's own form).
fn extra_args(t: &Tree) -> Result<Vec<(String, String)>, String> {
    let value = |v: &Tree| match v {
        Tree::Str(s) | Tree::Num(s) => Ok(s.clone()),
        Tree::Bool(b) => Ok(b.to_string()),
        _ => Err("values must be strings".to_string()),
    };
    match t {
        Tree::Map(m) => m.iter().map(|(k, v)| Ok((k.clone(), value(v)?))).collect(),
        Tree::List(l) => l
            .iter()
            .map(|e| match (e.get("name"), e.get("value")) {
                (Some(Tree::Str(n)), Some(v)) => Ok((n.clone(), value(v)?)),
                _ => Err("list entries must be `{ name = \"...\", value = \"...\" }`".to_string()),
            })
            .collect(),
        _ => Err("must be a table of `name = \"value\"`".into()),
    }
}

/// `extraArgs` in the form `api` takes.
fn args_tree(api: ApiVersion, pairs: &[(String, String)]) -> Tree {
    match api {
        ApiVersion::V1beta4 => Tree::List(
            pairs
                .iter()
                .map(|(n, v)| {
                    Tree::Map(vec![
                        ("name".into(), Tree::s(n)),
                        ("value".into(), Tree::s(v)),
                    ])
                })
                .collect(),
        ),
        ApiVersion::V1beta3 => {
            Tree::Map(pairs.iter().map(|(n, v)| (n.clone(), Tree::s(v))).collect())
        }
    }
}

/// Merge `user` into `base`: maps recursively, anything else replaced.
fn merge(base: &mut Tree, user: &Tree) {
    match (base, user) {
        (b @ Tree::Map(_), Tree::Map(u)) => {
            for (k, v) in u {
                match b.get_mut(k) {
                    Some(existing) => merge(existing, v),
                    None => b.set(k, v.clone()),
                }
            }
        }
        (b, u) => *b = u.clone(),
    }
}

/// Normalise every `extraArgs` (and `kubeletExtraArgs`) under `t` to `api`'s form.
fn normalise_args(t: &mut Tree, api: ApiVersion, path: &str) -> Result<(), KubeadmError> {
    if let Tree::Map(entries) = t {
        for (k, v) in entries.iter_mut() {
            let here = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            if k == "extraArgs" || k == "kubeletExtraArgs" {
                let pairs = extra_args(v).map_err(|message| KubeadmError::Setting {
                    key: here.clone(),
                    message,
                })?;
                *v = args_tree(api, &pairs);
            } else {
                normalise_args(v, api, &here)?;
            }
        }
    }
    Ok(())
}

/// What the shell writes before running kubeadm.
#[derive(Clone, PartialEq, Eq)]
pub struct Render {
    /// The `--config` file (JSON documents separated by `---`).
    pub config: String,
    /// `(file name, contents)` to write in the patches directory; empty when
    /// the node needs none.
    pub patches: Vec<(String, String)>,
}

impl fmt::Debug for Render {
    /// Join renders hold the token and certificate key: never printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Render")
            .field("config", &format_args!("<{} bytes>", self.config.len()))
            .field(
                "patches",
                &self.patches.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// The per-node facts every render needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFacts {
    pub node_name: String,
    pub advertise_addr: IpAddr,
    pub apiserver_port: u16,
    pub control_plane_endpoint: String,
    /// Names and addresses for the apiserver certificate: the VIP and the
    /// endpoint's host.
    pub cert_sans: Vec<String>,
    pub control_plane: bool,
    /// control-plane + lb: kube-apiserver binds the node address.
    pub binds_apiserver: bool,
    /// Where [`Render::patches`] are written (absolute).
    pub patches_dir: String,
}

impl NodeFacts {
    /// From a config with a `[kubernetes]` section.
    pub fn from_config(c: &Config, patches_dir: &str) -> Option<NodeFacts> {
        let k = c.kubernetes.as_ref()?;
        let mut cert_sans = Vec::new();
        if let Some(v) = &c.vip {
            cert_sans.push(v.address.to_string());
        }
        if let Some(a) = k.endpoint_address {
            cert_sans.push(a.to_string());
        }
        let host = endpoint_host(&k.control_plane_endpoint);
        cert_sans.push(host.to_string());
        let mut seen = std::collections::BTreeSet::new();
        cert_sans.retain(|s| seen.insert(s.clone()));
        Some(NodeFacts {
            node_name: c.node_name.clone(),
            advertise_addr: c.advertise_addr,
            apiserver_port: k.apiserver_port,
            control_plane_endpoint: k.control_plane_endpoint.clone(),
            cert_sans,
            control_plane: c.has_role(Role::ControlPlane),
            binds_apiserver: binds_apiserver(c),
            patches_dir: patches_dir.to_string(),
        })
    }
}

/// Control-plane + lb nodes bind kube-apiserver to their own address.
pub fn binds_apiserver(c: &Config) -> bool {
    c.has_role(Role::ControlPlane) && c.has_role(Role::Lb)
}

/// `k8s-api` from `k8s-api:6443`, `fd00::1` from `[fd00::1]:6443`.
pub fn endpoint_host(endpoint: &str) -> &str {
    let host = endpoint.rsplit_once(':').map_or(endpoint, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// The kube-apiserver patch that binds it to `addr`.
fn bind_patch(addr: IpAddr) -> (String, String) {
    let patch = Tree::List(vec![Tree::Map(vec![
        ("op".into(), Tree::s("add")),
        ("path".into(), Tree::s("/spec/containers/0/command/-")),
        ("value".into(), Tree::s(format!("--bind-address={addr}"))),
    ])]);
    ("kube-apiserver+json.json".into(), patch.to_json() + "\n")
}

fn doc(api: ApiVersion, kind: Kind) -> Tree {
    Tree::Map(vec![
        ("apiVersion".into(), Tree::s(api.as_str())),
        ("kind".into(), Tree::s(kind.kind())),
    ])
}

fn local_endpoint(n: &NodeFacts) -> Tree {
    Tree::Map(vec![
        (
            "advertiseAddress".into(),
            Tree::s(n.advertise_addr.to_string()),
        ),
        ("bindPort".into(), Tree::Num(n.apiserver_port.to_string())),
    ])
}

fn apply_user(
    base: &mut Tree,
    kind: Kind,
    user: Option<&Tree>,
    api: ApiVersion,
    n: &NodeFacts,
    version: Version,
) -> Result<(), KubeadmError> {
    let Some(user) = user else {
        return Ok(());
    };
    let which = format!("kubeadm {version} ({})", api.as_str());
    check_tree(
        kind,
        user,
        n.binds_apiserver,
        &|f| kind.fields(api).contains(&f),
        &which,
    )?;
    let mut user = user.clone();
    // certSANs are appended to the agent's, not replacing them.
    let extra_sans = match user.get_mut("apiServer") {
        Some(a) if kind == Kind::Cluster => a.remove("certSANs"),
        _ => None,
    };
    if let Some(Tree::List(extra_sans)) = extra_sans {
        let api_server = base.child("apiServer");
        let mut list = match api_server.get("certSANs") {
            Some(Tree::List(l)) => l.clone(),
            _ => Vec::new(),
        };
        for s in extra_sans {
            if !list.contains(&s) {
                list.push(s);
            }
        }
        api_server.set("certSANs", Tree::List(list));
    }
    normalise_args(&mut user, api, kind.config_table())?;
    merge(base, &user);
    Ok(())
}

/// The file `kubeadm init --config` reads on the node elected to init.
pub fn render_init(version: Version, n: &NodeFacts, extra: &Extra) -> Result<Render, KubeadmError> {
    let api = ApiVersion::for_kubeadm(version)?;
    let mut init = doc(api, Kind::Init);
    init.set("localAPIEndpoint", local_endpoint(n));
    init.child("nodeRegistration")
        .set("name", Tree::s(&n.node_name));
    let mut patches = Vec::new();
    if n.binds_apiserver {
        init.child("patches")
            .set("directory", Tree::s(&n.patches_dir));
        patches.push(bind_patch(n.advertise_addr));
    }
    apply_user(&mut init, Kind::Init, extra.init.as_ref(), api, n, version)?;

    let mut cluster = doc(api, Kind::Cluster);
    cluster.set("controlPlaneEndpoint", Tree::s(&n.control_plane_endpoint));
    cluster.child("apiServer").set(
        "certSANs",
        Tree::List(n.cert_sans.iter().map(Tree::s).collect()),
    );
    apply_user(
        &mut cluster,
        Kind::Cluster,
        extra.cluster.as_ref(),
        api,
        n,
        version,
    )?;

    Ok(Render {
        config: documents(&[init, cluster]),
        patches,
    })
}

/// Join material from a healthy control plane. Secrets: no `Debug` of values.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinSecrets {
    /// `abcdef.0123456789abcdef`.
    pub token: String,
    /// `sha256:<hex>` of the cluster CA's public key.
    pub ca_cert_hashes: Vec<String>,
    /// For control-plane joins: the key of the uploaded certificates.
    pub certificate_key: Option<String>,
}

impl fmt::Debug for JoinSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinSecrets")
            .field("token", &"<secret>")
            .field("ca_cert_hashes", &self.ca_cert_hashes)
            .field(
                "certificate_key",
                &self.certificate_key.as_ref().map(|_| "<secret>"),
            )
            .finish()
    }
}

/// The file `kubeadm join --config` reads. It holds the token (and the
/// certificate key): the shell writes it root-only (0600) and passes only its
/// path on the command line.
pub fn render_join(
    version: Version,
    n: &NodeFacts,
    extra: &Extra,
    secrets: &JoinSecrets,
) -> Result<Render, KubeadmError> {
    let api = ApiVersion::for_kubeadm(version)?;
    let mut join = doc(api, Kind::Join);
    join.child("discovery").set(
        "bootstrapToken",
        Tree::Map(vec![
            (
                "apiServerEndpoint".into(),
                Tree::s(&n.control_plane_endpoint),
            ),
            ("token".into(), Tree::s(&secrets.token)),
            (
                "caCertHashes".into(),
                Tree::List(secrets.ca_cert_hashes.iter().map(Tree::s).collect()),
            ),
        ]),
    );
    join.child("nodeRegistration")
        .set("name", Tree::s(&n.node_name));
    let mut patches = Vec::new();
    if n.control_plane {
        let cp = join.child("controlPlane");
        cp.set("localAPIEndpoint", local_endpoint(n));
        if let Some(k) = &secrets.certificate_key {
            cp.set("certificateKey", Tree::s(k));
        }
        if n.binds_apiserver {
            join.child("patches")
                .set("directory", Tree::s(&n.patches_dir));
            patches.push(bind_patch(n.advertise_addr));
        }
    }
    apply_user(&mut join, Kind::Join, extra.join.as_ref(), api, n, version)?;
    Ok(Render {
        config: documents(&[join]),
        patches,
    })
}

fn documents(docs: &[Tree]) -> String {
    docs.iter()
        .map(|d| d.to_json() + "\n")
        .collect::<Vec<_>>()
        .join("---\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(binds: bool) -> NodeFacts {
        NodeFacts {
            node_name: "cp-0".into(),
            advertise_addr: "10.108.0.3".parse().unwrap(),
            apiserver_port: 6443,
            control_plane_endpoint: "k8s-api:6443".into(),
            cert_sans: vec!["10.108.0.10".into(), "k8s-api".into()],
            control_plane: true,
            binds_apiserver: binds,
            patches_dir: "/var/lib/kubeha/kubeadm/patches".into(),
        }
    }

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    fn table(text: &str) -> Tree {
        Tree::from_toml(&toml::Value::Table(text.parse().unwrap())).unwrap()
    }

    fn snapshot(got: &str, file: &str, expected: &str) {
        if got != expected {
            let diff = got
                .lines()
                .zip(expected.lines())
                .enumerate()
                .find(|(_, (a, b))| a != b)
                .map(|(i, (a, b))| format!("line {}: got `{a}`, want `{b}`", i + 1))
                .unwrap_or_else(|| "lengths differ".into());
            panic!("render differs from kubeadm/snapshots/{file}: {diff}\n--- got ---\n{got}");
        }
    }

    #[test]
    fn versions() {
        assert_eq!(
            v("v1.31.2"),
            Version {
                major: 1,
                minor: 31,
                patch: 2
            }
        );
        assert_eq!(v("1.30.0-rc.1").minor, 30);
        assert_eq!(v("v1.29").patch, 0);
        assert_eq!(Version::parse("kubeadm"), None);
        assert_eq!(Version::parse("v1.2.3.4"), None);
        assert_eq!(v("v1.31.2").minor_string(), "1.31");
        assert_eq!(
            ApiVersion::for_kubeadm(v("v1.31.0")),
            Ok(ApiVersion::V1beta4)
        );
        assert_eq!(
            ApiVersion::for_kubeadm(v("v1.34.1")),
            Ok(ApiVersion::V1beta4)
        );
        assert_eq!(
            ApiVersion::for_kubeadm(v("v1.30.9")),
            Ok(ApiVersion::V1beta3)
        );
        assert_eq!(
            ApiVersion::for_kubeadm(v("v1.22.0")),
            Ok(ApiVersion::V1beta3)
        );
        let e = ApiVersion::for_kubeadm(v("v1.21.14")).unwrap_err();
        assert!(e.to_string().contains("too old"), "{e}");
        assert!(e.to_string().contains("v1.21.14"), "{e}");
        assert!(ApiVersion::for_kubeadm(v("v2.0.0")).is_err());
    }

    #[test]
    fn snapshot_init_v1beta4_compact() {
        let extra = Extra {
            cluster: Some(table(
                "kubernetesVersion = \"v1.31.2\"\n[networking]\npodSubnet = \"10.244.0.0/16\"\n[apiServer]\ncertSANs = [\"api.example.com\", \"k8s-api\"]\n[apiServer.extraArgs]\naudit-log-maxage = \"7\"\n",
            )),
            init: Some(table(
                "[nodeRegistration]\ncriSocket = \"unix:///run/containerd/containerd.sock\"\n",
            )),
            join: None,
        };
        let r = render_init(v("v1.31.2"), &facts(true), &extra).unwrap();
        snapshot(
            &r.config,
            "init-v1beta4-compact.yaml",
            include_str!("kubeadm/snapshots/init-v1beta4-compact.yaml"),
        );
        assert_eq!(r.patches.len(), 1);
        assert_eq!(r.patches[0].0, "kube-apiserver+json.json");
        snapshot(
            &r.patches[0].1,
            "kube-apiserver+json.json",
            include_str!("kubeadm/snapshots/kube-apiserver+json.json"),
        );
    }

    #[test]
    fn snapshot_init_v1beta3_guide() {
        let extra = Extra {
            cluster: Some(table("[apiServer.extraArgs]\naudit-log-maxage = \"7\"\n")),
            ..Extra::default()
        };
        let r = render_init(v("v1.30.4"), &facts(false), &extra).unwrap();
        snapshot(
            &r.config,
            "init-v1beta3-guide.yaml",
            include_str!("kubeadm/snapshots/init-v1beta3-guide.yaml"),
        );
        assert!(r.patches.is_empty());
    }

    #[test]
    fn snapshot_join_control_plane_and_worker() {
        let secrets = JoinSecrets {
            token: "abcdef.0123456789abcdef".into(),
            ca_cert_hashes: vec!["sha256:2b".into()],
            certificate_key: Some("c0ffee".into()),
        };
        let r = render_join(v("v1.31.2"), &facts(true), &Extra::default(), &secrets).unwrap();
        snapshot(
            &r.config,
            "join-control-plane-v1beta4.yaml",
            include_str!("kubeadm/snapshots/join-control-plane-v1beta4.yaml"),
        );
        assert_eq!(r.patches.len(), 1);
        // Secrets never in Debug.
        let dbg = format!("{r:?} {secrets:?}");
        assert!(
            !dbg.contains("0123456789abcdef") && !dbg.contains("c0ffee"),
            "{dbg}"
        );

        let mut w = facts(false);
        w.node_name = "worker-0".into();
        w.control_plane = false;
        let worker = JoinSecrets {
            certificate_key: None,
            ..secrets
        };
        let r = render_join(v("v1.30.1"), &w, &Extra::default(), &worker).unwrap();
        snapshot(
            &r.config,
            "join-worker-v1beta3.yaml",
            include_str!("kubeadm/snapshots/join-worker-v1beta3.yaml"),
        );
        assert!(r.patches.is_empty());
    }

    #[test]
    fn owned_and_unknown_settings_are_refused_with_the_key() {
        let e = |kind: Kind, text: &str, binds: bool| {
            validate(kind, &table(text), binds).unwrap_err().to_string()
        };
        let m = e(Kind::Cluster, "controlPlaneEndpoint = \"x:6443\"\n", false);
        assert!(
            m.starts_with(
                "`kubernetes.cluster_configuration.controlPlaneEndpoint`: is set by kubeha"
            ),
            "{m}"
        );
        let m = e(
            Kind::Cluster,
            "[apiServer.extraArgs]\nbind-address = \"0.0.0.0\"\n",
            true,
        );
        assert!(
            m.starts_with("`kubernetes.cluster_configuration.apiServer.extraArgs.bind-address`"),
            "{m}"
        );
        assert!(
            validate(
                Kind::Cluster,
                &table("[apiServer.extraArgs]\nbind-address = \"0.0.0.0\"\n"),
                false
            )
            .is_ok()
        );
        let m = e(Kind::Cluster, "podSubnet = \"10.0.0.0/8\"\n", false);
        assert!(
            m.contains(
                "`kubernetes.cluster_configuration.podSubnet`: unknown ClusterConfiguration field"
            ),
            "{m}"
        );
        let m = e(Kind::Init, "[localAPIEndpoint]\nbindPort = 1\n", false);
        assert!(m.contains("init_configuration.localAPIEndpoint"), "{m}");
        let m = e(Kind::Init, "[nodeRegistration]\nname = \"x\"\n", false);
        assert!(
            m.contains("init_configuration.nodeRegistration.name"),
            "{m}"
        );
        let m = e(Kind::Init, "bootstrapTokens = []\n", false);
        assert!(m.contains("secrets"), "{m}");
        let m = e(Kind::Join, "[discovery]\ntimeout = \"5m\"\n", false);
        assert!(m.contains("join_configuration.discovery"), "{m}");
        let m = e(Kind::Cluster, "[apiServer]\ncertSANs = \"x\"\n", false);
        assert!(m.contains("certSANs`: must be a list"), "{m}");
        // Allowed: nodeRegistration other than the name.
        assert!(
            validate(
                Kind::Init,
                &table("[nodeRegistration]\ntaints = []\n"),
                false
            )
            .is_ok()
        );
    }

    #[test]
    fn v1beta4_only_fields_are_refused_for_older_kubeadm() {
        let extra = Extra {
            cluster: Some(table("encryptionAlgorithm = \"ECDSA-P256\"\n")),
            ..Extra::default()
        };
        assert!(render_init(v("v1.31.0"), &facts(false), &extra).is_ok());
        let e = render_init(v("v1.30.0"), &facts(false), &extra)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cluster_configuration.encryptionAlgorithm") && e.contains("v1.30.0"),
            "{e}"
        );
    }

    #[test]
    fn v1beta4_list_form_of_extra_args_is_accepted() {
        let extra = Extra {
            cluster: Some(table(
                "[[apiServer.extraArgs]]\nname = \"v\"\nvalue = \"2\"\n",
            )),
            ..Extra::default()
        };
        let r = render_init(v("v1.30.0"), &facts(false), &extra).unwrap();
        assert!(
            r.config
                .contains("\"extraArgs\": {\n      \"v\": \"2\"\n    }"),
            "{}",
            r.config
        );
    }

    #[test]
    fn json_escaping() {
        let t = Tree::Map(vec![("k\"".into(), Tree::s("a\\b\n\u{1}é"))]);
        assert_eq!(t.to_json(), "{\n  \"k\\\"\": \"a\\\\b\\n\\u0001é\"\n}");
        assert_eq!(Tree::List(vec![]).to_json(), "[]");
    }

    #[test]
    fn facts_from_config() {
        let text = "cluster = \"lab\"\nnode_name = \"cp-0\"\nroles = [\"control-plane\", \"lb\"]\nadvertise_addr = \"10.108.0.3\"\nvoters = [\"cp-0\"]\ncontrol_key_file = \"/etc/kubeha/control.key\"\n\
                    [vip]\naddress = \"10.108.0.10/32\"\ninterface = \"eth1\"\n[kubernetes]\ncontrol_plane_endpoint = \"k8s-api:6443\"\n";
        let c = Config::parse(std::path::Path::new("/k.toml"), text, "h").unwrap();
        let n = NodeFacts::from_config(&c, "/var/lib/kubeha/kubeadm/patches").unwrap();
        assert_eq!(n, facts(true));
        let worker = text
            .replace("[\"control-plane\", \"lb\"]", "[\"worker\"]")
            .replace(
                "[vip]\naddress = \"10.108.0.10/32\"\ninterface = \"eth1\"\n",
                "",
            );
        let c = Config::parse(std::path::Path::new("/k.toml"), &worker, "h").unwrap();
        let n = NodeFacts::from_config(&c, "/p").unwrap();
        assert!(!n.control_plane && !n.binds_apiserver);
        assert_eq!(n.cert_sans, ["k8s-api"]);
    }

    #[test]
    fn endpoint_hosts() {
        assert_eq!(endpoint_host("k8s-api:6443"), "k8s-api");
        assert_eq!(endpoint_host("10.0.0.1:6443"), "10.0.0.1");
        assert_eq!(endpoint_host("[fd00::1]:6443"), "fd00::1");
    }
}
