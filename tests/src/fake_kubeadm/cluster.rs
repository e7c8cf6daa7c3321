//! Cluster-wide kubeadm state, kept in the stacked etcd under
//! [`PREFIX`] (where kube-apiserver keeps Secrets and ConfigMaps under
//! `/registry/`): the `cluster-info` kubeconfig, the ClusterConfiguration,
//! bootstrap tokens with their expiry, the `kubeadm-certs` Secret (each file
//! sealed with the certificate key, 2 h life), Node objects, and the etcd
//! "static pods" with their advertised client URL (kubeadm finds the etcd
//! members to join through the annotation
//! `kubeadm.kubernetes.io/etcd.advertise-client-urls` of those pods).
//!
//! Also the fake's clock (real time plus a test's offset), random tokens and
//! keys, the JWS kubeadm's bootstrap signer puts into `cluster-info`, and the
//! sealing of uploaded certificates.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::Error;
use super::etcd::EtcdClient;
use super::pki;

pub const PREFIX: &str = "/fake-kubeadm/";
pub const CLUSTER_INFO: &str = "/fake-kubeadm/cluster-info";
pub const KUBEADM_CONFIG: &str = "/fake-kubeadm/kubeadm-config";
pub const KUBEADM_CERTS: &str = "/fake-kubeadm/kubeadm-certs";
pub const TOKENS: &str = "/fake-kubeadm/tokens/";
pub const NODES: &str = "/fake-kubeadm/nodes/";
pub const ETCD_PODS: &str = "/fake-kubeadm/etcd-pods/";

/// Life of uploaded certificates (kubeadm's `kubeadm-certs` Secret).
pub const CERTS_TTL: Duration = Duration::from_secs(2 * 3600);
/// Default life of a bootstrap token.
pub const TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

/// The fake's clock: real time plus `offset` plus the duration in
/// `offset_file` (read at every call, so a test can move the whole cluster
/// forward while it runs).
#[derive(Debug, Clone, Default)]
pub struct Clock {
    pub offset_secs: i64,
    pub offset_file: Option<PathBuf>,
}

/// `3h`, `90m`, `-1h`, `1h30m`.
pub fn parse_offset(s: &str) -> Result<i64, String> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(0);
    }
    let (neg, body) = match s.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let d = humantime::parse_duration(body).map_err(|e| format!("bad duration {s:?}: {e}"))?;
    let secs = d.as_secs() as i64;
    Ok(if neg { -secs } else { secs })
}

impl Clock {
    pub fn offset(&self) -> Result<i64, Error> {
        let mut off = self.offset_secs;
        if let Some(f) = &self.offset_file
            && let Ok(text) = std::fs::read_to_string(f)
        {
            off +=
                parse_offset(&text).map_err(|e| Error::Other(format!("`{}`: {e}", f.display())))?;
        }
        Ok(off)
    }

    /// Seconds since the epoch, offset applied.
    pub fn now(&self) -> i64 {
        let real = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        real + self.offset().unwrap_or(0)
    }
}

/// RFC 3339 (UTC) of `secs` since the epoch.
pub fn rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86400);
    let rem = secs.rem_euclid(86400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

pub fn random_bytes<const N: usize>() -> [u8; N] {
    use std::io::Read;
    let mut b = [0u8; N];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .expect("/dev/urandom");
    b
}

fn random_chars(n: usize) -> String {
    const SET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::new();
    while out.len() < n {
        for b in random_bytes::<32>() {
            // 252 = 7 * 36: no modulo bias.
            if b < 252 && out.len() < n {
                out.push(SET[(b % 36) as usize] as char);
            }
        }
    }
    out
}

/// A bootstrap token `[a-z0-9]{6}.[a-z0-9]{16}`.
pub fn new_token() -> String {
    format!("{}.{}", random_chars(6), random_chars(16))
}

pub fn is_token(s: &str) -> bool {
    let ok = |p: &str, n: usize| {
        p.len() == n
            && p.bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    };
    matches!(s.split_once('.'), Some((id, sec)) if ok(id, 6) && ok(sec, 16))
}

/// 32 random bytes, hex (kubeadm's `certs certificate-key`).
pub fn new_certificate_key() -> String {
    pki::hex(&random_bytes::<32>())
}

fn key_bytes(certificate_key: &str) -> Result<[u8; 32], Error> {
    pki::unhex(certificate_key)
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| {
            Error::Kubeadm(
                "error decoding certificate key: the certificate key must be 32 bytes encoded as 64 hexadecimal characters".into(),
            )
        })
}

/// nonce || ciphertext, base64 (kubeadm seals each file with AES-GCM; the
/// fake uses ChaCha20-Poly1305 with the same 32-byte key).
pub fn seal(certificate_key: &str, plain: &[u8]) -> Result<String, Error> {
    let key = key_bytes(certificate_key)?;
    let nonce = random_bytes::<12>();
    let sealed = ChaCha20Poly1305::new(&key.into())
        .encrypt(&Nonce::from(nonce), plain)
        .map_err(|_| Error::Other("seal failed".into()))?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&sealed);
    Ok(pki::b64(&out))
}

pub fn open(certificate_key: &str, sealed_b64: &str) -> Result<Vec<u8>, Error> {
    let key = key_bytes(certificate_key)?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(sealed_b64)
        .map_err(|e| Error::Kubeadm(format!("error decoding secret data: {e}")))?;
    if raw.len() < 12 {
        return Err(Error::Kubeadm(
            "error decoding secret data: too short".into(),
        ));
    }
    let nonce: [u8; 12] = raw[..12].try_into().expect("12 bytes");
    ChaCha20Poly1305::new(&key.into())
        .decrypt(&Nonce::from(nonce), &raw[12..])
        .map_err(|_| {
            Error::Kubeadm(
                "error decoding secret data with provided key: cipher: message authentication failed"
                    .into(),
            )
        })
}

fn hmac_sha256(key: &[u8], msg: &[u8]) -> Vec<u8> {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(msg);
    let ih = inner.finalize();
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(ih);
    outer.finalize().to_vec()
}

fn b64url(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// Detached JWS (HS256, `kid` = token id) of `payload` with the token
/// secret: what the bootstrap signer writes as `jws-kubeconfig-<id>`.
pub fn jws(token_id: &str, secret: &str, payload: &str) -> String {
    let header = b64url(format!(r#"{{"alg":"HS256","kid":"{token_id}"}}"#).as_bytes());
    let signing_input = format!("{header}.{}", b64url(payload.as_bytes()));
    let sig = hmac_sha256(secret.as_bytes(), signing_input.as_bytes());
    format!("{header}..{}", b64url(&sig))
}

/// A stored bootstrap token.
#[derive(Debug, Clone)]
pub struct Token {
    pub id: String,
    pub secret: String,
    pub expires: i64,
    pub usages: Vec<String>,
}

pub fn put_token(
    etcd: &EtcdClient,
    token: &str,
    expires: i64,
    usages: &[&str],
    description: &str,
) -> Result<(), Error> {
    let (id, secret) = token.split_once('.').expect("checked token");
    etcd.put_json(
        &format!("{TOKENS}{id}"),
        &json!({"secret": secret, "expires": expires, "usages": usages, "description": description}),
    )
}

pub fn get_token(etcd: &EtcdClient, id: &str) -> Result<Option<Token>, Error> {
    Ok(etcd
        .get_json(&format!("{TOKENS}{id}"))?
        .map(|v| token_of(id, &v)))
}

fn token_of(id: &str, v: &Value) -> Token {
    Token {
        id: id.to_string(),
        secret: v["secret"].as_str().unwrap_or("").to_string(),
        expires: v["expires"].as_i64().unwrap_or(0),
        usages: v["usages"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// Unexpired tokens; expired ones are deleted (kube-controller-manager's
/// token cleaner).
pub fn live_tokens(etcd: &EtcdClient, now: i64) -> Result<Vec<Token>, Error> {
    let mut out = Vec::new();
    for (k, v) in etcd.list(TOKENS)? {
        let id = k.trim_start_matches(TOKENS);
        let v: Value = serde_json::from_slice(&v).unwrap_or(Value::Null);
        let t = token_of(id, &v);
        if t.expires != 0 && t.expires <= now {
            etcd.delete(&k)?;
        } else {
            out.push(t);
        }
    }
    Ok(out)
}

/// Is `bearer` (`id.secret`) a live token with usage `authentication`?
pub fn authenticate(etcd: &EtcdClient, bearer: &str, now: i64) -> Result<bool, Error> {
    let Some((id, secret)) = bearer.split_once('.') else {
        return Ok(false);
    };
    Ok(live_tokens(etcd, now)?.iter().any(|t| {
        t.id == id && t.secret == secret && t.usages.iter().any(|u| u == "authentication")
    }))
}

/// The uploaded certificates, sealed, with their expiry; `None` once expired
/// (then deleted, as the garbage collector deletes the Secret with its
/// owning 2 h token).
pub fn kubeadm_certs(etcd: &EtcdClient, now: i64) -> Result<Option<Value>, Error> {
    let Some(v) = etcd.get_json(KUBEADM_CERTS)? else {
        return Ok(None);
    };
    if v["expires"].as_i64().unwrap_or(0) <= now {
        etcd.delete(KUBEADM_CERTS)?;
        return Ok(None);
    }
    Ok(Some(v))
}

/// A Node object as the kubelet registers it.
pub fn node_object(
    name: &str,
    address: Option<&str>,
    control_plane: bool,
    taints: &Value,
    kubelet_version: &str,
    now: i64,
) -> Value {
    let mut labels = json!({
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
    });
    let mut annotations = json!({});
    if control_plane {
        labels["node-role.kubernetes.io/control-plane"] = json!("");
        labels["node.kubernetes.io/exclude-from-external-load-balancers"] = json!("");
        annotations["kubeadm.alpha.kubernetes.io/cri-socket"] =
            json!("unix:///var/run/containerd/containerd.sock");
    }
    let addresses = match address {
        Some(a) => {
            json!([{"type": "InternalIP", "address": a}, {"type": "Hostname", "address": name}])
        }
        None => json!([{"type": "Hostname", "address": name}]),
    };
    json!({
        "kind": "Node",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "uid": pki::hex(&random_bytes::<16>()),
            "creationTimestamp": rfc3339(now),
            "labels": labels,
            "annotations": annotations,
        },
        "spec": {"taints": taints},
        "status": {
            "addresses": addresses,
            "conditions": [{
                "type": "Ready", "status": "True", "reason": "KubeletReady",
                "message": "kubelet is posting ready status",
                "lastHeartbeatTime": rfc3339(now), "lastTransitionTime": rfc3339(now),
            }],
            "nodeInfo": {"kubeletVersion": kubelet_version, "operatingSystem": "linux", "architecture": "amd64"},
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_keys_offsets_dates() {
        for _ in 0..50 {
            assert!(is_token(&new_token()));
        }
        assert!(!is_token("abcdef.0123456789abcdeF"));
        assert!(!is_token("abcde.0123456789abcdef"));
        let k = new_certificate_key();
        assert_eq!(k.len(), 64);
        let sealed = seal(&k, b"pem").unwrap();
        assert_eq!(open(&k, &sealed).unwrap(), b"pem");
        let other = new_certificate_key();
        assert!(
            open(&other, &sealed)
                .unwrap_err()
                .to_string()
                .contains("message authentication failed")
        );
        assert!(seal("abcd", b"x").is_err());
        assert_eq!(parse_offset("3h").unwrap(), 10800);
        assert_eq!(parse_offset("-1h30m").unwrap(), -5400);
        assert!(parse_offset("soon").is_err());
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_709_251_199), "2024-02-29T23:59:59Z");
    }

    #[test]
    fn hmac_matches_rfc4231_case_2() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            pki::hex(&mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
