//! etcd as etcd reports it, for `kubeha-ctl status` on a control plane.
//!
//! A task beside the main loop (never awaited by it) reads the member list
//! from this node's stacked etcd (`https://<advertise_addr>:2379`, kubeadm's
//! default) and asks every member for its status through its first client
//! URL, with kubeadm's `apiserver-etcd-client` certificate, every
//! [`EVERY`]. The status document shows the last answer and its age. It
//! decides nothing: nothing reads these figures but the status.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kubeha_core::api::{EtcdMember, EtcdStatus};
use kubeha_core::config::{Config, Role};
use kubeha_core::etcd;
use kubeha_vip::digitalocean::http::{Client, Url};

/// How often etcd is read.
pub const EVERY: Duration = Duration::from_secs(5);
/// Per call.
const TIMEOUT: Duration = Duration::from_secs(2);
/// kubeadm's client port of the stacked etcd.
pub const CLIENT_PORT: u16 = 2379;

#[derive(Default)]
struct Latest {
    /// Members of the last good read and when it was (`clock::unix_ms`).
    members: Option<(u64, Vec<EtcdMember>)>,
    error: Option<String>,
}

/// Where the client certificates are: kubeadm's `pki/` under `etc_dir`.
#[derive(Clone, Debug)]
pub struct EtcdFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl EtcdFiles {
    pub fn under(etc_dir: &Path) -> EtcdFiles {
        let pki = etc_dir.join("pki");
        EtcdFiles {
            ca: pki.join("etcd/ca.crt"),
            cert: pki.join("apiserver-etcd-client.crt"),
            key: pki.join("apiserver-etcd-client.key"),
        }
    }

    /// A joined control plane has them; before that there is nothing to read.
    fn present(&self) -> bool {
        self.ca.exists() && self.cert.exists() && self.key.exists()
    }
}

/// Reads etcd in the background; dropped with the agent.
pub struct EtcdWatcher {
    latest: Arc<Mutex<Latest>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for EtcdWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl EtcdWatcher {
    /// On control planes with `[kubernetes]`; `None` elsewhere.
    pub fn start(config: &Config) -> Option<EtcdWatcher> {
        let k = config.kubernetes.as_ref()?;
        if !config.has_role(Role::ControlPlane) {
            return None;
        }
        Some(Self::spawn(
            EtcdFiles::under(&k.etc_dir),
            endpoint(config.advertise_addr, CLIENT_PORT),
            EVERY,
        ))
    }

    pub fn spawn(files: EtcdFiles, endpoint: String, every: Duration) -> EtcdWatcher {
        let latest = Arc::new(Mutex::new(Latest::default()));
        let l = latest.clone();
        let task = tokio::spawn(async move {
            loop {
                if let Some(r) = poll(&files, &endpoint).await {
                    let mut l = l.lock().unwrap_or_else(|e| e.into_inner());
                    match r {
                        Ok(m) => {
                            l.members = Some((crate::clock::unix_ms(), m));
                            l.error = None;
                        }
                        Err(e) => l.error = Some(e),
                    }
                }
                tokio::time::sleep(every).await;
            }
        });
        EtcdWatcher { latest, task }
    }

    /// `kubernetes.etcd`: `None` until a first read was tried.
    pub fn status(&self) -> Option<EtcdStatus> {
        let l = self.latest.lock().unwrap_or_else(|e| e.into_inner());
        if l.members.is_none() && l.error.is_none() {
            return None;
        }
        let (at, members) = l.members.clone().unwrap_or_default();
        Some(EtcdStatus {
            members,
            error: l.error.clone(),
            age_secs: if at == 0 {
                0
            } else {
                crate::clock::unix_ms().saturating_sub(at) / 1000
            },
        })
    }
}

fn endpoint(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(a) => format!("https://{a}:{port}"),
        IpAddr::V6(a) => format!("https://[{a}]:{port}"),
    }
}

async fn call(client: &Client, base: &str, path: &str) -> Result<Vec<u8>, String> {
    let url = Url::parse(base).map_err(|e| format!("etcd URL `{base}`: {e}"))?;
    let r = client
        .request("POST", &url, path, None, Some(b"{}"), TIMEOUT)
        .await
        .map_err(|e| format!("POST {base}{path}: {e}"))?;
    if r.status != 200 {
        let body = String::from_utf8_lossy(&r.body);
        let body: String = body.chars().take(200).collect();
        return Err(format!("POST {base}{path}: HTTP {}: {body}", r.status));
    }
    Ok(r.body)
}

/// One read, or `None` before kubeadm wrote the client certificates.
async fn poll(files: &EtcdFiles, endpoint: &str) -> Option<Result<Vec<EtcdMember>, String>> {
    if !files.present() {
        return None;
    }
    Some(read(files, endpoint).await)
}

/// One read: the member list from `endpoint`, then each member's status.
async fn read(files: &EtcdFiles, endpoint: &str) -> Result<Vec<EtcdMember>, String> {
    let client =
        Client::with_client_cert(&files.ca, &files.cert, &files.key).map_err(|e| e.to_string())?;
    let body = call(&client, endpoint, "/v3/cluster/member/list").await?;
    let members = etcd::parse_member_list(&body).map_err(|e| format!("{endpoint}: {e}"))?;
    let mut answers = Vec::with_capacity(members.len());
    for (_, m) in &members {
        let a = match m.client_urls.first() {
            Some(u) => call(&client, u, "/v3/maintenance/status")
                .await
                .ok()
                .and_then(|b| etcd::parse_status(&b).ok()),
            None => None,
        };
        answers.push(a);
    }
    Ok(etcd::merge(members, &answers))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_and_files() {
        assert_eq!(
            endpoint("10.0.0.1".parse().unwrap(), 2379),
            "https://10.0.0.1:2379"
        );
        assert_eq!(
            endpoint("fd00::1".parse().unwrap(), 2379),
            "https://[fd00::1]:2379"
        );
        let f = EtcdFiles::under(Path::new("/etc/kubernetes"));
        assert_eq!(f.ca, Path::new("/etc/kubernetes/pki/etcd/ca.crt"));
        assert_eq!(
            f.cert,
            Path::new("/etc/kubernetes/pki/apiserver-etcd-client.crt")
        );
    }

    #[tokio::test]
    async fn nothing_is_read_before_the_certificates_exist() {
        let dir = tempfile::tempdir().unwrap();
        let files = EtcdFiles::under(dir.path());
        assert!(poll(&files, "https://127.0.0.1:1").await.is_none());
        // And the watcher shows nothing until a read was tried.
        let w = EtcdWatcher::spawn(
            files,
            "https://127.0.0.1:1".into(),
            Duration::from_millis(10),
        );
        assert_eq!(w.status(), None);
    }

    #[tokio::test]
    async fn an_unreachable_etcd_is_an_error_naming_the_call() {
        // Certificates that parse, an endpoint nobody listens on.
        let dir = tempfile::tempdir().unwrap();
        let pki = dir.path().join("pki");
        std::fs::create_dir_all(pki.join("etcd")).unwrap();
        let ca = rcgen::generate_simple_self_signed(vec!["etcd-ca".into()]).unwrap();
        std::fs::write(pki.join("etcd/ca.crt"), ca.cert.pem()).unwrap();
        std::fs::write(pki.join("apiserver-etcd-client.crt"), ca.cert.pem()).unwrap();
        std::fs::write(
            pki.join("apiserver-etcd-client.key"),
            ca.signing_key.serialize_pem(),
        )
        .unwrap();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let w = EtcdWatcher::spawn(
            EtcdFiles::under(dir.path()),
            format!("https://127.0.0.1:{port}"),
            Duration::from_millis(10),
        );
        let mut st = None;
        for _ in 0..200 {
            st = w.status();
            if st.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let st = st.expect("a status after the first read");
        assert!(st.members.is_empty());
        let e = st.error.unwrap();
        assert!(
            e.contains("/v3/cluster/member/list") && e.contains(&port.to_string()),
            "{e}"
        );
    }
}
