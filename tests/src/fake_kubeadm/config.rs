//! kubeadm's configuration files, `kubeadm.k8s.io/v1beta3` and `v1beta4`,
//! decoded strictly as kubeadm does: every unknown field of a kubeadm kind is
//! an error (`strict decoding error: unknown field "a.b"`, all of them in one
//! message), a wrong type too; documents of other groups
//! (`KubeletConfiguration`, `KubeProxyConfiguration`) are accepted unchecked;
//! an unknown kind of the kubeadm group is ignored with kubeadm's warning.
//!
//! Field lists follow the v1beta3/v1beta4 reference (kubeadm-config.v1beta4):
//! v1beta4 turned every `extraArgs`/`kubeletExtraArgs` map into a list of
//! `{name, value}`, added `timeouts`, `dryRun`, `extraEnvs`,
//! `encryptionAlgorithm`, `certificateValidityPeriod`,
//! `caCertificateValidityPeriod`, `proxy`, `dns.disabled`, `imagePullSerial`,
//! and dropped `apiServer.timeoutForControlPlane` and `discovery.timeout`.

use std::fmt::Write as _;

use serde_json::Value;

use super::yaml;

pub const GROUP: &str = "kubeadm.k8s.io";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1beta3,
    V1beta4,
}

impl Version {
    fn name(self) -> &'static str {
        match self {
            Version::V1beta3 => "v1beta3",
            Version::V1beta4 => "v1beta4",
        }
    }
}

/// What a field may hold.
#[derive(Debug, Clone, Copy)]
enum S {
    Str,
    Int,
    Bool,
    StrList,
    StrMap,
    /// Anything (not checked further).
    Any,
    Obj(&'static [(&'static str, S)]),
    List(&'static S),
    /// v1beta3: map of strings; v1beta4: list of `{name, value}`.
    Args,
    /// `ExtraVolumes`.
    Volumes,
    /// `ExtraEnvs` (v1beta4 only: list of EnvVar; not checked inside).
    Envs,
    /// Only in v1beta3 / only in v1beta4.
    Only3(&'static S),
    Only4(&'static S),
}

const ARG: S = S::Obj(&[("name", S::Str), ("value", S::Str)]);
const VOLUME: S = S::Obj(&[
    ("name", S::Str),
    ("hostPath", S::Str),
    ("mountPath", S::Str),
    ("readOnly", S::Bool),
    ("pathType", S::Str),
]);
const TAINT: S = S::Obj(&[
    ("key", S::Str),
    ("value", S::Str),
    ("effect", S::Str),
    ("timeAdded", S::Str),
]);
const NODE_REGISTRATION: S = S::Obj(&[
    ("name", S::Str),
    ("criSocket", S::Str),
    ("taints", S::List(&TAINT)),
    ("kubeletExtraArgs", S::Args),
    ("ignorePreflightErrors", S::StrList),
    ("imagePullPolicy", S::Str),
    ("imagePullSerial", S::Only4(&S::Bool)),
]);
const API_ENDPOINT: S = S::Obj(&[("advertiseAddress", S::Str), ("bindPort", S::Int)]);
const BOOTSTRAP_TOKEN: S = S::Obj(&[
    ("token", S::Str),
    ("description", S::Str),
    ("ttl", S::Str),
    ("expires", S::Str),
    ("usages", S::StrList),
    ("groups", S::StrList),
]);
const PATCHES: S = S::Obj(&[("directory", S::Str)]);
const TIMEOUTS: S = S::Obj(&[
    ("controlPlaneComponentHealthCheck", S::Str),
    ("kubeletHealthCheck", S::Str),
    ("kubernetesAPICall", S::Str),
    ("etcdAPICall", S::Str),
    ("tlsBootstrap", S::Str),
    ("discovery", S::Str),
    ("upgradeManifests", S::Str),
]);
const META: [(&str, S); 2] = [("apiVersion", S::Str), ("kind", S::Str)];

const INIT: &[(&str, S)] = &[
    META[0],
    META[1],
    ("bootstrapTokens", S::List(&BOOTSTRAP_TOKEN)),
    ("dryRun", S::Only4(&S::Bool)),
    ("nodeRegistration", NODE_REGISTRATION),
    ("localAPIEndpoint", API_ENDPOINT),
    ("certificateKey", S::Str),
    ("skipPhases", S::StrList),
    ("patches", PATCHES),
    ("timeouts", S::Only4(&TIMEOUTS)),
];

const COMPONENT: S = S::Obj(&[
    ("extraArgs", S::Args),
    ("extraVolumes", S::Volumes),
    ("extraEnvs", S::Envs),
]);
const CLUSTER: &[(&str, S)] = &[
    META[0],
    META[1],
    (
        "etcd",
        S::Obj(&[
            (
                "local",
                S::Obj(&[
                    ("imageRepository", S::Str),
                    ("imageTag", S::Str),
                    ("dataDir", S::Str),
                    ("extraArgs", S::Args),
                    ("extraEnvs", S::Envs),
                    ("serverCertSANs", S::StrList),
                    ("peerCertSANs", S::StrList),
                ]),
            ),
            (
                "external",
                S::Obj(&[
                    ("endpoints", S::StrList),
                    ("caFile", S::Str),
                    ("certFile", S::Str),
                    ("keyFile", S::Str),
                ]),
            ),
        ]),
    ),
    (
        "networking",
        S::Obj(&[
            ("serviceSubnet", S::Str),
            ("podSubnet", S::Str),
            ("dnsDomain", S::Str),
        ]),
    ),
    ("kubernetesVersion", S::Str),
    ("controlPlaneEndpoint", S::Str),
    (
        "apiServer",
        S::Obj(&[
            ("extraArgs", S::Args),
            ("extraVolumes", S::Volumes),
            ("extraEnvs", S::Envs),
            ("certSANs", S::StrList),
            ("timeoutForControlPlane", S::Only3(&S::Str)),
        ]),
    ),
    ("controllerManager", COMPONENT),
    ("scheduler", COMPONENT),
    (
        "dns",
        S::Obj(&[
            ("imageRepository", S::Str),
            ("imageTag", S::Str),
            ("disabled", S::Only4(&S::Bool)),
        ]),
    ),
    ("proxy", S::Only4(&S::Obj(&[("disabled", S::Bool)]))),
    ("certificatesDir", S::Str),
    ("imageRepository", S::Str),
    ("featureGates", S::Any),
    ("clusterName", S::Str),
    ("encryptionAlgorithm", S::Only4(&S::Str)),
    ("certificateValidityPeriod", S::Only4(&S::Str)),
    ("caCertificateValidityPeriod", S::Only4(&S::Str)),
];

const JOIN: &[(&str, S)] = &[
    META[0],
    META[1],
    ("dryRun", S::Only4(&S::Bool)),
    ("nodeRegistration", NODE_REGISTRATION),
    ("caCertPath", S::Str),
    (
        "discovery",
        S::Obj(&[
            (
                "bootstrapToken",
                S::Obj(&[
                    ("token", S::Str),
                    ("apiServerEndpoint", S::Str),
                    ("caCertHashes", S::StrList),
                    ("unsafeSkipCAVerification", S::Bool),
                ]),
            ),
            ("file", S::Obj(&[("kubeConfigPath", S::Str)])),
            ("tlsBootstrapToken", S::Str),
            ("timeout", S::Only3(&S::Str)),
        ]),
    ),
    (
        "controlPlane",
        S::Obj(&[
            ("localAPIEndpoint", API_ENDPOINT),
            ("certificateKey", S::Str),
        ]),
    ),
    ("skipPhases", S::StrList),
    ("patches", PATCHES),
    ("timeouts", S::Only4(&TIMEOUTS)),
];

const RESET: &[(&str, S)] = &[
    META[0],
    META[1],
    ("cleanupTmpDir", S::Bool),
    ("certificatesDir", S::Str),
    ("criSocket", S::Str),
    ("dryRun", S::Bool),
    ("force", S::Bool),
    ("ignorePreflightErrors", S::StrList),
    ("skipPhases", S::StrList),
    ("unmountFlags", S::StrList),
];

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

struct Check {
    version: Version,
    unknown: Vec<String>,
    wrong: Vec<String>,
}

impl Check {
    fn walk(&mut self, v: &Value, s: S, path: &str) {
        if v.is_null() {
            return;
        }
        let want = |c: &mut Check, expected: &str| {
            c.wrong.push(format!(
                "{path}: cannot unmarshal {} into {expected}",
                type_name(v)
            ))
        };
        match s {
            S::Any | S::Envs => {}
            S::Str if !v.is_string() => want(self, "string"),
            S::Int if !v.is_i64() && !v.is_u64() => want(self, "int32"),
            S::Bool if !v.is_boolean() => want(self, "bool"),
            S::Str | S::Int | S::Bool => {}
            S::StrList => match v.as_array() {
                Some(a) => {
                    for (i, x) in a.iter().enumerate() {
                        self.walk(x, S::Str, &format!("{path}[{i}]"));
                    }
                }
                None => want(self, "[]string"),
            },
            S::StrMap => match v.as_object() {
                Some(m) => {
                    for (k, x) in m {
                        self.walk(x, S::Str, &format!("{path}.{k}"));
                    }
                }
                None => want(self, "map[string]string"),
            },
            S::List(item) => match v.as_array() {
                Some(a) => {
                    for (i, x) in a.iter().enumerate() {
                        self.walk(x, *item, &format!("{path}[{i}]"));
                    }
                }
                None => want(self, "a list"),
            },
            S::Volumes => self.walk(v, S::List(&VOLUME), path),
            S::Args => match self.version {
                Version::V1beta3 => self.walk(v, S::StrMap, path),
                Version::V1beta4 => self.walk(v, S::List(&ARG), path),
            },
            S::Only3(inner) | S::Only4(inner) => {
                let ok = matches!(
                    (s, self.version),
                    (S::Only3(_), Version::V1beta3) | (S::Only4(_), Version::V1beta4)
                );
                if ok {
                    self.walk(v, *inner, path);
                } else {
                    self.unknown.push(path.to_string());
                }
            }
            S::Obj(fields) => match v.as_object() {
                Some(m) => {
                    for (k, x) in m {
                        let p = if path.is_empty() {
                            k.clone()
                        } else {
                            format!("{path}.{k}")
                        };
                        match fields.iter().find(|(n, _)| n == k) {
                            Some((_, fs)) => self.walk(x, *fs, &p),
                            None => self.unknown.push(p),
                        }
                    }
                }
                None => want(self, "an object"),
            },
        }
    }
}

/// The kubeadm documents of one file, checked.
#[derive(Debug, Clone, Default)]
pub struct Documents {
    pub init: Option<Value>,
    pub cluster: Option<Value>,
    pub join: Option<Value>,
    pub reset: Option<Value>,
    pub version: Option<Version>,
    /// Warnings kubeadm would print (ignored documents).
    pub warnings: Vec<String>,
}

/// Parse and strictly check a kubeadm config file's text.
pub fn decode(text: &str) -> Result<Documents, String> {
    let docs =
        yaml::parse_documents(text).map_err(|e| format!("error converting YAML to JSON: {e}"))?;
    let mut out = Documents::default();
    for doc in docs {
        let api = doc.get("apiVersion").and_then(Value::as_str).unwrap_or("");
        let kind = doc.get("kind").and_then(Value::as_str).unwrap_or("");
        if api.is_empty() || kind.is_empty() {
            return Err(format!(
                "invalid configuration for GroupVersionKind /, Kind=: kind and apiVersion is mandatory information that must be specified (apiVersion {api:?}, kind {kind:?})"
            ));
        }
        let Some(ver) = api.strip_prefix(&format!("{GROUP}/")) else {
            // Component configs (kubelet, kube-proxy) are other groups.
            continue;
        };
        let version = match ver {
            "v1beta3" => Version::V1beta3,
            "v1beta4" => Version::V1beta4,
            "v1beta1" | "v1beta2" => {
                return Err(format!(
                    "your configuration file uses an old API spec: {api:?} is no longer supported. Please use an older kubeadm version and run 'kubeadm config migrate --old-config old.yaml --new-config new.yaml', which will write the new, similar spec using a newer API version."
                ));
            }
            _ => {
                return Err(format!(
                    "no kind {kind:?} is registered for version {api:?} in scheme \"k8s.io/kubernetes/cmd/kubeadm/app/apis/kubeadm/scheme/scheme.go:31\""
                ));
            }
        };
        let fields = match kind {
            "InitConfiguration" => INIT,
            "ClusterConfiguration" => CLUSTER,
            "JoinConfiguration" => JOIN,
            "ResetConfiguration" if version == Version::V1beta4 => RESET,
            _ => {
                out.warnings.push(format!(
                    "[config] WARNING: Ignored configuration document with GroupVersionKind {GROUP}/{}, Kind={kind}",
                    version.name()
                ));
                continue;
            }
        };
        let mut c = Check {
            version,
            unknown: Vec::new(),
            wrong: Vec::new(),
        };
        c.walk(&doc, S::Obj(fields), "");
        if !c.unknown.is_empty() || !c.wrong.is_empty() {
            let mut msg = format!(
                "error unmarshaling configuration schema.GroupVersionKind{{Group:\"{GROUP}\", Version:\"{}\", Kind:\"{kind}\"}}: ",
                version.name()
            );
            if let Some(w) = c.wrong.first() {
                let _ = write!(msg, "json: {w}");
            } else {
                msg.push_str("strict decoding error: ");
                let list: Vec<String> = c
                    .unknown
                    .iter()
                    .map(|u| format!("unknown field {u:?}"))
                    .collect();
                msg.push_str(&list.join(", "));
            }
            return Err(msg);
        }
        if out.version.is_some_and(|v| v != version) {
            return Err(format!(
                "mixed kubeadm API versions in one file ({} and {}): not supported by fake-kubeadm",
                out.version.map(Version::name).unwrap_or(""),
                version.name()
            ));
        }
        out.version = Some(version);
        let slot = match kind {
            "InitConfiguration" => &mut out.init,
            "ClusterConfiguration" => &mut out.cluster,
            "JoinConfiguration" => &mut out.join,
            _ => &mut out.reset,
        };
        if slot.is_some() {
            return Err(format!(
                "duplicate {kind} document in the configuration file"
            ));
        }
        *slot = Some(doc);
    }
    Ok(out)
}

/// `v[a][b]...` as a string.
pub fn str_at<'a>(v: Option<&'a Value>, path: &[&str]) -> Option<&'a str> {
    at(v, path).and_then(Value::as_str)
}

pub fn at<'a>(v: Option<&'a Value>, path: &[&str]) -> Option<&'a Value> {
    let mut cur = v?;
    for p in path {
        cur = cur.get(*p)?;
    }
    Some(cur)
}

pub fn str_list(v: Option<&Value>, path: &[&str]) -> Vec<String> {
    at(v, path)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const INIT4: &str = "\
apiVersion: kubeadm.k8s.io/v1beta4
kind: InitConfiguration
localAPIEndpoint:
  advertiseAddress: 10.0.0.1
  bindPort: 6443
nodeRegistration:
  name: n1
  kubeletExtraArgs:
  - name: node-ip
    value: 10.0.0.1
---
apiVersion: kubeadm.k8s.io/v1beta4
kind: ClusterConfiguration
controlPlaneEndpoint: k8s-api:6443
apiServer:
  certSANs: [k8s-api]
  extraArgs:
  - name: bind-address
    value: 10.0.0.1
---
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
whatever: 1
";

    #[test]
    fn accepts_v1beta4_and_ignores_component_configs() {
        let d = decode(INIT4).unwrap();
        assert_eq!(d.version, Some(Version::V1beta4));
        assert_eq!(
            str_at(d.cluster.as_ref(), &["controlPlaneEndpoint"]),
            Some("k8s-api:6443")
        );
        assert_eq!(
            str_at(d.init.as_ref(), &["localAPIEndpoint", "advertiseAddress"]),
            Some("10.0.0.1")
        );
    }

    #[test]
    fn unknown_fields_are_named_with_their_path() {
        let bad = INIT4.replace("  name: n1\n", "  name: n1\n  nmae: x\n") + "";
        let bad = bad.replace("controlPlaneEndpoint:", "foo: 1\ncontrolPlaneEndpoint:");
        let e = decode(&bad).unwrap_err();
        assert_eq!(
            e,
            "error unmarshaling configuration schema.GroupVersionKind{Group:\"kubeadm.k8s.io\", Version:\"v1beta4\", Kind:\"InitConfiguration\"}: strict decoding error: unknown field \"nodeRegistration.nmae\""
        );
        let e = decode(&INIT4.replace("controlPlaneEndpoint:", "foo: 1\ncontrolPlaneEndpoint:"))
            .unwrap_err();
        assert!(
            e.ends_with("strict decoding error: unknown field \"foo\""),
            "{e}"
        );
    }

    #[test]
    fn extra_args_shape_follows_the_version() {
        // A v1beta3 map in a v1beta4 file is a type error, and back.
        let e = decode(&INIT4.replace(
            "  extraArgs:\n  - name: bind-address\n    value: 10.0.0.1\n",
            "  extraArgs:\n    bind-address: 10.0.0.1\n",
        ))
        .unwrap_err();
        assert!(
            e.contains("apiServer.extraArgs: cannot unmarshal object"),
            "{e}"
        );
        let v3 = INIT4.replace("v1beta4", "v1beta3");
        assert!(
            decode(&v3)
                .unwrap_err()
                .contains("nodeRegistration.kubeletExtraArgs")
        );
        let v3 = v3
            .replace(
                "  kubeletExtraArgs:\n  - name: node-ip\n    value: 10.0.0.1\n",
                "  kubeletExtraArgs:\n    node-ip: 10.0.0.1\n",
            )
            .replace(
                "  extraArgs:\n  - name: bind-address\n    value: 10.0.0.1\n",
                "  extraArgs:\n    bind-address: 10.0.0.1\n  timeoutForControlPlane: 4m0s\n",
            );
        assert_eq!(decode(&v3).unwrap().version, Some(Version::V1beta3));
        // timeoutForControlPlane is gone in v1beta4.
        let e = decode(
            "apiVersion: kubeadm.k8s.io/v1beta4\nkind: ClusterConfiguration\napiServer:\n  timeoutForControlPlane: 4m0s\n",
        )
        .unwrap_err();
        assert!(
            e.contains("unknown field \"apiServer.timeoutForControlPlane\""),
            "{e}"
        );
    }

    #[test]
    fn old_and_unknown_versions_and_kinds() {
        assert!(
            decode("apiVersion: kubeadm.k8s.io/v1beta2\nkind: InitConfiguration\n")
                .unwrap_err()
                .contains("old API spec")
        );
        let d = decode("apiVersion: kubeadm.k8s.io/v1beta4\nkind: UpgradeConfiguration\n").unwrap();
        assert_eq!(d.warnings.len(), 1);
        assert!(
            decode("kind: InitConfiguration\n")
                .unwrap_err()
                .contains("mandatory")
        );
        assert!(
            decode("apiVersion: kubeadm.k8s.io/v1beta4\nkind: InitConfiguration\nlocalAPIEndpoint:\n  bindPort: \"6443\"\n")
                .unwrap_err()
                .contains("localAPIEndpoint.bindPort: cannot unmarshal string into int32")
        );
    }
}
