//! The package and its unit inside a droplet: `apt-get install`, the
//! agent's unit state, `kubeha-ctl status`.

use std::ffi::OsStr;
use std::time::{Duration, Instant};

use super::{Droplet, DropletError, Result, wait_for};

impl Droplet {
    /// `apt-get install --no-install-recommends ./kubeha_*.deb` (offline: the
    /// dependencies are in the cached root; the recommended Kubernetes
    /// packages are not, and HAProxy already is); returns how long it took.
    pub fn install_deb(&self) -> Result<Duration> {
        let start = Instant::now();
        self.exec_ok([
            OsStr::new("apt-get"),
            OsStr::new("install"),
            OsStr::new("-y"),
            OsStr::new("-q"),
            OsStr::new("--no-install-recommends"),
            self.deb_path().as_os_str(),
        ])?;
        Ok(start.elapsed())
    }

    /// `systemctl start kubeha-agent`, then wait until the unit is active.
    pub fn start_agent(&self) -> Result<()> {
        self.exec_ok(["systemctl", "start", "kubeha-agent"])?;
        self.wait_agent_active(Duration::from_secs(20)).map(|_| ())
    }

    /// A property of the agent's unit (`systemctl show -p NAME --value`).
    pub fn unit_property(&self, name: &str) -> Result<String> {
        Ok(self
            .exec_ok([
                "systemctl",
                "show",
                "-p",
                name,
                "--value",
                "kubeha-agent.service",
            ])?
            .trim()
            .to_string())
    }

    /// The agent's main PID inside the droplet, if it runs.
    pub fn agent_pid(&self) -> Result<Option<u32>> {
        let p: u32 = self.unit_property("MainPID")?.parse().unwrap_or(0);
        Ok((p != 0).then_some(p))
    }

    /// Wait until the unit is `active` with a main process; its PID.
    pub fn wait_agent_active(&self, limit: Duration) -> Result<u32> {
        wait_for(limit, || {
            let active = self.unit_property("ActiveState").ok()? == "active";
            let pid = self.agent_pid().ok()??;
            active.then_some(pid)
        })
        .ok_or_else(|| {
            let journal = self
                .exec(["journalctl", "-u", "kubeha-agent", "-n", "20", "--no-pager"])
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            DropletError::Timeout {
                droplet: self.name.clone(),
                what: "kubeha-agent.service to become active".into(),
                limit,
                detail: format!("; journal:\n{journal}"),
            }
        })
    }

    /// `kill -9` the agent's main process (not the unit: systemd sees a
    /// crash); returns the PID it had.
    pub fn kill_agent(&self) -> Result<u32> {
        let pid = self.agent_pid()?.ok_or_else(|| {
            DropletError::Other(format!("droplet `{}`: the agent is not running", self.name))
        })?;
        self.exec_ok(["kill", "-9", &pid.to_string()])?;
        Ok(pid)
    }

    /// `kubeha-ctl status -o json`, parsed.
    pub fn status(&self) -> Result<serde_json::Value> {
        let out = self.exec_ok(["kubeha-ctl", "status", "-o", "json"])?;
        serde_json::from_str(&out).map_err(|e| {
            DropletError::Other(format!(
                "droplet `{}`: `kubeha-ctl status -o json` printed no JSON ({e}): {out}",
                self.name
            ))
        })
    }
}
