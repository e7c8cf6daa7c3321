//! Cluster helpers inside a droplet: a `fake-apiserver` standing in for
//! kube-apiserver on a control plane, and the agent's HAProxy as
//! `kubeha-ctl status -o json` reports it.
//!
//! The fake runs as the transient unit [`FAKE_UNIT`] (`systemd-run`), from a
//! copy of the host's binary in [`FAKE_BIN`] (the droplet is the same Debian
//! release as the host, so its shared libraries are there). Its PKI lives in
//! [`FAKE_PKI`]; [`Droplet::start_fake_apiserver`] can be given another
//! droplet's CA so that every apiserver behind one VIP is signed by the same
//! CA, as with kubeadm.

use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use super::{Droplet, DropletError, Result, io_err, wait_for};

/// The fake apiserver's transient unit.
pub const FAKE_UNIT: &str = "fake-apiserver.service";
/// Where the binary is copied inside the droplet.
pub const FAKE_BIN: &str = "/usr/local/bin/fake-apiserver";
/// Its `--pki-dir` inside the droplet (`ca.crt`, `ca.key`).
pub const FAKE_PKI: &str = "/var/lib/fake-apiserver";

/// A CA shared by the fake apiservers of one cluster (PEM texts).
#[derive(Clone, Debug)]
pub struct FakeCa {
    pub cert: String,
    pub key: String,
}

/// The `haproxy` object of `kubeha-ctl status -o json`, the parts tests ask about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HaproxyState {
    pub running: bool,
    pub config_ok: bool,
    pub last_error: Option<String>,
    /// `(name, up)` as HAProxy reports its servers.
    pub backends: Vec<(String, bool)>,
}

impl HaproxyState {
    /// From a whole status document; `None` when it has no `haproxy`.
    pub fn from_status(status: &serde_json::Value) -> Option<HaproxyState> {
        let h = status.get("haproxy").filter(|h| !h.is_null())?;
        Some(HaproxyState {
            running: h["running"].as_bool().unwrap_or(false),
            config_ok: h["config_ok"].as_bool().unwrap_or(false),
            last_error: h["last_error"].as_str().map(str::to_string),
            backends: h["backends"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|b| {
                            (
                                b["name"].as_str().unwrap_or_default().to_string(),
                                b["up"].as_bool().unwrap_or(false),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default(),
        })
    }

    /// Running, config accepted, and exactly `names` behind it, all UP.
    pub fn serves(&self, names: &[&str]) -> bool {
        self.running
            && self.config_ok
            && self.backends.len() == names.len()
            && names
                .iter()
                .all(|n| self.backends.iter().any(|(b, up)| b == n && *up))
    }
}

impl Droplet {
    /// The agent's HAProxy from `kubeha-ctl status -o json`; `None` when the
    /// node has no `[haproxy]`.
    pub fn haproxy_state(&self) -> Result<Option<HaproxyState>> {
        Ok(HaproxyState::from_status(&self.status()?))
    }

    /// Copy `bin` (the host's `fake-apiserver`) in, write `ca` into its PKI
    /// directory if given (else the fake makes a CA), start it as
    /// [`FAKE_UNIT`] listening on `listen`, and wait until it accepts
    /// connections. Returns the CA it serves with.
    pub fn start_fake_apiserver(
        &self,
        bin: &Path,
        listen: SocketAddr,
        ca: Option<&FakeCa>,
    ) -> Result<FakeCa> {
        let bytes = fs::read(bin).map_err(io_err(bin))?;
        self.write_file(FAKE_BIN, &bytes, 0o755)?;
        if let Some(ca) = ca {
            self.write_file(&format!("{FAKE_PKI}/ca.crt"), ca.cert.as_bytes(), 0o644)?;
            self.write_file(&format!("{FAKE_PKI}/ca.key"), ca.key.as_bytes(), 0o600)?;
        }
        let listen_arg = listen.to_string();
        self.exec_ok([
            "systemd-run",
            "--quiet",
            &format!("--unit={FAKE_UNIT}"),
            "--property=Restart=no",
            FAKE_BIN,
            "--listen",
            &listen_arg,
            "--pki-dir",
            FAKE_PKI,
            "--name",
            self.name(),
        ])?;
        let limit = Duration::from_secs(20);
        let up = wait_for(limit, || {
            let out = self.exec_ok(["ss", "-Hltn", "src", &listen_arg]).ok()?;
            out.contains(&listen_arg).then_some(())
        });
        if up.is_none() {
            let journal = self
                .exec(["journalctl", "-u", FAKE_UNIT, "-n", "20", "--no-pager"])
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            return Err(DropletError::Timeout {
                droplet: self.name().to_string(),
                what: format!("{FAKE_UNIT} to listen on {listen}"),
                limit,
                detail: format!("; journal:\n{journal}"),
            });
        }
        Ok(FakeCa {
            cert: self.read_file(&format!("{FAKE_PKI}/ca.crt"))?,
            key: self.read_file(&format!("{FAKE_PKI}/ca.key"))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn haproxy_state_from_status() {
        let s: serde_json::Value = serde_json::from_str(
            r#"{"haproxy": {"running": true, "config_ok": true, "last_error": null,
                "backends": [{"name": "cp-0", "addr": "198.18.0.13:6443", "up": true},
                             {"name": "cp-1", "addr": "198.18.0.14:6443", "up": false}]}}"#,
        )
        .unwrap();
        let h = HaproxyState::from_status(&s).unwrap();
        assert!(h.running && h.config_ok && h.last_error.is_none());
        assert!(!h.serves(&["cp-0", "cp-1"]), "cp-1 is down");
        assert!(!h.serves(&["cp-0"]), "one backend too many");
        let mut all_up = h.clone();
        all_up.backends[1].1 = true;
        assert!(all_up.serves(&["cp-1", "cp-0"]));
        all_up.config_ok = false;
        assert!(!all_up.serves(&["cp-1", "cp-0"]));
        let none: serde_json::Value = serde_json::from_str(r#"{"haproxy": null}"#).unwrap();
        assert_eq!(HaproxyState::from_status(&none), None);
    }
}
