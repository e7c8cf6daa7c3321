//! The few kube-apiserver endpoints that kubeadm (and kubeha) use, served by
//! the fake apiserver from the cluster state in etcd ([`super::cluster`]):
//!
//! | request | auth | what |
//! |---|---|---|
//! | `GET /api/v1/namespaces/kube-public/configmaps/cluster-info` | none | CA kubeconfig + `jws-kubeconfig-<id>` per live token |
//! | `GET /api/v1/namespaces/kube-system/configmaps/kubeadm-config` | none | `ClusterConfiguration` |
//! | `GET /api/v1/namespaces/kube-system/secrets/kubeadm-certs` | bootstrap token | sealed certificates, 404 after 2 h |
//! | `GET /api/v1/namespaces/kube-system/pods` | none | the etcd pods (any `labelSelector` is ignored) |
//! | `GET /api/v1/nodes`, `GET`/`DELETE /api/v1/nodes/{name}` | none | Node objects |
//! | `POST /api/v1/nodes` | bootstrap token | register a Node (the kubelet's TLS bootstrap stands behind it) |
//!
//! Unlike kube-apiserver there is no authorization: reads and deletes are
//! open, and only the two bootstrap-token paths check a bearer token.

use serde_json::{Value, json};

use super::cluster::{self, Clock};
use super::etcd::EtcdClient;

/// What the fake apiserver needs to serve the API.
#[derive(Clone)]
pub struct Backend {
    pub etcd: EtcdClient,
    pub clock: Clock,
}

pub struct Reply {
    pub status: u16,
    pub body: String,
}

fn ok(v: Value) -> Reply {
    Reply {
        status: 200,
        body: v.to_string(),
    }
}

fn status(code: u16, reason: &str, message: String, details: Value) -> Reply {
    Reply {
        status: code,
        body: json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": if code < 300 { "Success" } else { "Failure" },
            "message": message, "reason": reason, "details": details, "code": code,
        })
        .to_string(),
    }
}

fn not_found(kind: &str, name: &str) -> Reply {
    status(
        404,
        "NotFound",
        format!("{kind} {name:?} not found"),
        json!({"name": name, "kind": kind}),
    )
}

fn unauthorized() -> Reply {
    status(401, "Unauthorized", "Unauthorized".into(), json!({}))
}

fn internal(e: impl std::fmt::Display) -> Reply {
    status(500, "InternalError", format!("etcd: {e}"), json!({}))
}

/// `true` when `path` is one of ours (else the health/404 handler answers).
pub fn handles(path: &str) -> bool {
    path.starts_with("/api/") || path == "/api"
}

/// Is etcd answering (for `/readyz`)?
pub fn etcd_ok(b: &Backend) -> bool {
    b.etcd.get(cluster::CLUSTER_INFO).is_ok()
}

pub fn handle(b: &Backend, method: &str, path: &str, bearer: Option<&str>, body: &[u8]) -> Reply {
    match route(b, method, path, bearer, body) {
        Ok(r) => r,
        Err(e) => internal(e),
    }
}

fn route(
    b: &Backend,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: &[u8],
) -> Result<Reply, super::Error> {
    let path = path.split('?').next().unwrap_or("");
    let now = b.clock.now();
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let authed = || -> Result<bool, super::Error> {
        match bearer {
            Some(t) => cluster::authenticate(&b.etcd, t, now),
            None => Ok(false),
        }
    };
    Ok(match (method, segs.as_slice()) {
        (
            "GET",
            [
                "api",
                "v1",
                "namespaces",
                "kube-public",
                "configmaps",
                "cluster-info",
            ],
        ) => {
            let Some(info) = b.etcd.get_json(cluster::CLUSTER_INFO)? else {
                return Ok(not_found("configmaps", "cluster-info"));
            };
            let kubeconfig = info["kubeconfig"].as_str().unwrap_or("").to_string();
            let mut data = json!({"kubeconfig": kubeconfig});
            for t in cluster::live_tokens(&b.etcd, now)? {
                if t.usages.iter().any(|u| u == "signing") {
                    data[format!("jws-kubeconfig-{}", t.id)] =
                        json!(cluster::jws(&t.id, &t.secret, &kubeconfig));
                }
            }
            ok(json!({
                "kind": "ConfigMap", "apiVersion": "v1",
                "metadata": {"name": "cluster-info", "namespace": "kube-public"},
                "data": data,
            }))
        }
        (
            "GET",
            [
                "api",
                "v1",
                "namespaces",
                "kube-system",
                "configmaps",
                "kubeadm-config",
            ],
        ) => {
            let Some(cfg) = b.etcd.get_json(cluster::KUBEADM_CONFIG)? else {
                return Ok(not_found("configmaps", "kubeadm-config"));
            };
            ok(json!({
                "kind": "ConfigMap", "apiVersion": "v1",
                "metadata": {"name": "kubeadm-config", "namespace": "kube-system"},
                "data": {"ClusterConfiguration": cfg.to_string()},
            }))
        }
        (
            "GET",
            [
                "api",
                "v1",
                "namespaces",
                "kube-system",
                "secrets",
                "kubeadm-certs",
            ],
        ) => {
            if !authed()? {
                return Ok(unauthorized());
            }
            match cluster::kubeadm_certs(&b.etcd, now)? {
                None => not_found("secrets", "kubeadm-certs"),
                Some(v) => ok(json!({
                    "kind": "Secret", "apiVersion": "v1", "type": "Opaque",
                    "metadata": {"name": "kubeadm-certs", "namespace": "kube-system"},
                    "data": v["data"],
                })),
            }
        }
        ("GET", ["api", "v1", "namespaces", "kube-system", "pods"]) => {
            let items: Vec<Value> = b
                .etcd
                .list(cluster::ETCD_PODS)?
                .into_iter()
                .filter_map(|(_, v)| serde_json::from_slice(&v).ok())
                .collect();
            ok(json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items}))
        }
        ("GET", ["api", "v1", "nodes"]) => {
            let items: Vec<Value> = b
                .etcd
                .list(cluster::NODES)?
                .into_iter()
                .filter_map(|(_, v)| serde_json::from_slice(&v).ok())
                .collect();
            ok(json!({"kind": "NodeList", "apiVersion": "v1", "metadata": {}, "items": items}))
        }
        ("POST", ["api", "v1", "nodes"]) => {
            if !authed()? {
                return Ok(unauthorized());
            }
            let node: Value = match serde_json::from_slice(body) {
                Ok(v) => v,
                Err(e) => {
                    return Ok(status(
                        400,
                        "BadRequest",
                        format!("bad Node: {e}"),
                        json!({}),
                    ));
                }
            };
            let Some(name) = node["metadata"]["name"].as_str().filter(|n| !n.is_empty()) else {
                return Ok(status(
                    422,
                    "Invalid",
                    "Node \"\" is invalid: metadata.name: Required value".into(),
                    json!({}),
                ));
            };
            if b.etcd.create(
                &format!("{}{name}", cluster::NODES),
                node.to_string().as_bytes(),
            )? {
                Reply {
                    status: 201,
                    body: node.to_string(),
                }
            } else {
                status(
                    409,
                    "AlreadyExists",
                    format!("nodes {name:?} already exists"),
                    json!({"name": name, "kind": "nodes"}),
                )
            }
        }
        ("GET", ["api", "v1", "nodes", name]) => {
            match b.etcd.get_json(&format!("{}{name}", cluster::NODES))? {
                Some(v) => ok(v),
                None => not_found("nodes", name),
            }
        }
        ("DELETE", ["api", "v1", "nodes", name]) => {
            if b.etcd.delete(&format!("{}{name}", cluster::NODES))? == 0 {
                not_found("nodes", name)
            } else {
                status(
                    200,
                    "",
                    String::new(),
                    json!({"name": name, "kind": "nodes"}),
                )
            }
        }
        (_, ["api", "v1", "nodes", ..]) | (_, ["api", "v1", "namespaces", ..]) => status(
            405,
            "MethodNotAllowed",
            format!("{method} {path} is not served by the fake apiserver"),
            json!({}),
        ),
        _ => status(
            404,
            "NotFound",
            "the server could not find the requested resource".into(),
            json!({}),
        ),
    })
}
