//! The stacked etcd member: a real `etcd` (Debian `etcd-server`, v3.4)
//! started as a daemon with kubeadm's TLS layout, and a client for etcd's v3
//! JSON gateway (`/v3/kv/*`, `/v3/cluster/member/*`) over mutual TLS.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

use super::{Error, http, pki};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: u64,
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub is_learner: bool,
}

fn member_of(v: &Value) -> Member {
    let strs = |k: &str| -> Vec<String> {
        v.get(k)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    Member {
        id: json_u64(v.get("ID")),
        name: v
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        peer_urls: strs("peerURLs"),
        client_urls: strs("clientURLs"),
        is_learner: v.get("isLearner").and_then(Value::as_bool).unwrap_or(false),
    }
}

/// grpc-gateway writes uint64 as a JSON string.
fn json_u64(v: Option<&Value>) -> u64 {
    match v {
        Some(Value::String(s)) => s.parse().unwrap_or(0),
        Some(Value::Number(n)) => n.as_u64().unwrap_or(0),
        _ => 0,
    }
}

/// A client of one or more etcd endpoints (`https://ip:port`), tried in order.
#[derive(Clone)]
pub struct EtcdClient {
    endpoints: Vec<String>,
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
}

impl EtcdClient {
    /// With the CA, client certificate and key files, as kube-apiserver's
    /// `--etcd-cafile/--etcd-certfile/--etcd-keyfile`.
    pub fn from_files(
        endpoints: Vec<String>,
        ca: &Path,
        cert: &Path,
        key: &Path,
    ) -> Result<EtcdClient, Error> {
        Self::new(
            endpoints,
            &pki::read(ca)?,
            &pki::read(cert)?,
            &pki::read(key)?,
        )
    }

    pub fn new(
        endpoints: Vec<String>,
        ca_pem: &str,
        cert_pem: &str,
        key_pem: &str,
    ) -> Result<EtcdClient, Error> {
        Ok(EtcdClient {
            endpoints,
            tls: http::tls_config(ca_pem, Some((cert_pem, key_pem)))?,
            timeout: Duration::from_secs(5),
        })
    }

    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    fn post(&self, path: &str, body: &Value) -> Result<Value, Error> {
        let body = body.to_string();
        let mut last = None;
        for ep in &self.endpoints {
            let hostport = ep.trim_start_matches("https://");
            match http::request(
                hostport,
                self.tls.clone(),
                "POST",
                path,
                &[("content-type", "application/json")],
                Some(body.as_bytes()),
                self.timeout,
            ) {
                Ok(r) if r.status == 200 => {
                    return serde_json::from_slice(&r.body).map_err(|e| {
                        Error::Other(format!("etcd {ep}{path}: bad JSON reply: {e}"))
                    });
                }
                Ok(r) => {
                    let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
                    let msg = v
                        .get("error")
                        .or_else(|| v.get("message"))
                        .and_then(Value::as_str)
                        .map(str::to_string)
                        .unwrap_or_else(|| r.text());
                    // An answer from etcd itself is final (not "try another").
                    return Err(Error::Etcd(format!("{ep}{path}: {msg}")));
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::Etcd("no etcd endpoints".into())))
    }

    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        let v = self.post("/v3/kv/range", &json!({"key": B64.encode(key)}))?;
        Ok(kvs(&v).into_iter().next().map(|(_, val)| val))
    }

    pub fn get_json(&self, key: &str) -> Result<Option<Value>, Error> {
        match self.get(key)? {
            None => Ok(None),
            Some(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| Error::Etcd(format!("value of {key}: {e}"))),
        }
    }

    /// Every key under `prefix`, sorted by key.
    pub fn list(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, Error> {
        let mut end = prefix.as_bytes().to_vec();
        if let Some(last) = end.last_mut() {
            *last += 1;
        }
        let v = self.post(
            "/v3/kv/range",
            &json!({"key": B64.encode(prefix), "range_end": B64.encode(&end)}),
        )?;
        Ok(kvs(&v))
    }

    pub fn put(&self, key: &str, value: &[u8]) -> Result<(), Error> {
        self.post(
            "/v3/kv/put",
            &json!({"key": B64.encode(key), "value": B64.encode(value)}),
        )
        .map(|_| ())
    }

    pub fn put_json(&self, key: &str, value: &Value) -> Result<(), Error> {
        self.put(key, value.to_string().as_bytes())
    }

    /// Create only if absent; false if the key existed.
    pub fn create(&self, key: &str, value: &[u8]) -> Result<bool, Error> {
        let k = B64.encode(key);
        let v = self.post(
            "/v3/kv/txn",
            &json!({
                "compare": [{"key": k, "target": "CREATE", "result": "EQUAL", "create_revision": "0"}],
                "success": [{"request_put": {"key": k, "value": B64.encode(value)}}],
            }),
        )?;
        Ok(v.get("succeeded").and_then(Value::as_bool).unwrap_or(false))
    }

    /// Number of keys deleted.
    pub fn delete(&self, key: &str) -> Result<u64, Error> {
        let v = self.post("/v3/kv/deleterange", &json!({"key": B64.encode(key)}))?;
        Ok(json_u64(v.get("deleted")))
    }

    pub fn member_list(&self) -> Result<Vec<Member>, Error> {
        let v = self.post("/v3/cluster/member/list", &json!({}))?;
        Ok(v.get("members")
            .and_then(Value::as_array)
            .map(|a| a.iter().map(member_of).collect())
            .unwrap_or_default())
    }

    /// Add a learner; returns its id and the member list after the add.
    pub fn member_add_learner(&self, peer_url: &str) -> Result<(u64, Vec<Member>), Error> {
        let v = self.post(
            "/v3/cluster/member/add",
            &json!({"peerURLs": [peer_url], "isLearner": true}),
        )?;
        let id = v.get("member").map(member_of).map(|m| m.id).unwrap_or(0);
        let members = v
            .get("members")
            .and_then(Value::as_array)
            .map(|a| a.iter().map(member_of).collect())
            .unwrap_or_default();
        Ok((id, members))
    }

    pub fn member_promote(&self, id: u64) -> Result<(), Error> {
        self.post("/v3/cluster/member/promote", &json!({"ID": id.to_string()}))
            .map(|_| ())
    }

    pub fn member_remove(&self, id: u64) -> Result<(), Error> {
        self.post("/v3/cluster/member/remove", &json!({"ID": id.to_string()}))
            .map(|_| ())
    }
}

fn kvs(v: &Value) -> Vec<(String, Vec<u8>)> {
    v.get("kvs")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|kv| {
                    let k = B64.decode(kv.get("key")?.as_str()?).ok()?;
                    let val = match kv.get("value").and_then(Value::as_str) {
                        Some(s) => B64.decode(s).ok()?,
                        None => Vec::new(),
                    };
                    Some((String::from_utf8_lossy(&k).into_owned(), val))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// How to start this node's member.
pub struct MemberSpec<'a> {
    pub etcd_bin: &'a Path,
    pub name: &'a str,
    pub data_dir: &'a Path,
    pub ip: &'a str,
    pub client_port: u16,
    pub peer_port: u16,
    /// `name=peerURL,...` including this member.
    pub initial_cluster: String,
    /// `new` or `existing`.
    pub state: &'a str,
    pub pki: &'a Path,
    pub log: PathBuf,
}

pub fn url(ip: &str, port: u16) -> String {
    if ip.contains(':') {
        format!("https://[{ip}]:{port}")
    } else {
        format!("https://{ip}:{port}")
    }
}

/// Start etcd detached (own session, survives us); returns its PID.
pub fn spawn(m: &MemberSpec) -> Result<u32, Error> {
    use std::os::unix::process::CommandExt;
    fs::create_dir_all(m.data_dir).map_err(Error::io(m.data_dir))?;
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(m.data_dir, fs::Permissions::from_mode(0o700))
        .map_err(Error::io(m.data_dir))?;
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&m.log)
        .map_err(Error::io(&m.log))?;
    let client = url(m.ip, m.client_port);
    let peer = url(m.ip, m.peer_port);
    let p = |s: &str| m.pki.join(s).display().to_string();
    let mut cmd = Command::new(m.etcd_bin);
    cmd.args([
        "--name",
        m.name,
        "--data-dir",
        &m.data_dir.display().to_string(),
        "--listen-client-urls",
        &client,
        "--advertise-client-urls",
        &client,
        "--listen-peer-urls",
        &peer,
        "--initial-advertise-peer-urls",
        &peer,
        "--initial-cluster",
        &m.initial_cluster,
        "--initial-cluster-state",
        m.state,
        "--client-cert-auth=true",
        "--trusted-ca-file",
        &p("etcd/ca.crt"),
        "--cert-file",
        &p("etcd/server.crt"),
        "--key-file",
        &p("etcd/server.key"),
        "--peer-client-cert-auth=true",
        "--peer-trusted-ca-file",
        &p("etcd/ca.crt"),
        "--peer-cert-file",
        &p("etcd/peer.crt"),
        "--peer-key-file",
        &p("etcd/peer.key"),
        "--snapshot-count",
        "10000",
        "--logger",
        "zap",
    ])
    .stdin(Stdio::null())
    .stdout(log.try_clone().map_err(Error::io(&m.log))?)
    .stderr(log)
    .process_group(0);
    let child = cmd
        .spawn()
        .map_err(|e| Error::Other(format!("cannot start `{}`: {e}", m.etcd_bin.display())))?;
    Ok(child.id())
}

/// Poll `f` until it succeeds or `limit` passes; the last error otherwise.
pub fn retry<T>(
    limit: Duration,
    every: Duration,
    mut f: impl FnMut() -> Result<T, Error>,
) -> Result<T, Error> {
    let start = Instant::now();
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if start.elapsed() >= limit => return Err(e),
            Err(_) => std::thread::sleep(every),
        }
    }
}
