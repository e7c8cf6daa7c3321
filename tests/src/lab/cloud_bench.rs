//! `kubeha-lab bench --vip-provider digitalocean`: the failover a client
//! sees when the VIP is a DigitalOcean Reserved IP, in a guide-topology lab
//! whose lb agents run the `digitalocean` provider against the lab's
//! stand-in ([`super::cloud`]), with the stand-in's action latency set per
//! trial (the trials alternate between the latencies, so they are measured
//! side by side).
//!
//! A trial: the lab settles on `lb-0` (the IP assigned to it, HAProxy on
//! both lb nodes with every backend up, the client answered through the
//! IP); the action latency is set; then `lb-0` crashes: `kill -9` of its
//! agent and of its HAProxy (killing the agent alone leaves HAProxy serving
//! the IP, which the cloud keeps routing there). Measured from the fault:
//!
//! - `lease`: the first status of `lb-1` that says it holds the lease;
//! - `assign`: the first `assign` request from `lb-1`'s droplet at the
//!   stand-in (the agent's share: detection, lease, provider start,
//!   metadata and `GET` of the IP);
//! - `routed`: the stand-in routes the IP to `lb-1` (its action completed);
//! - `answered`: the first successful HTTPS `GET /readyz` through the IP
//!   after the first failed one (HAProxy on `lb-1`, a fake apiserver
//!   behind it).
//!
//! Then `lb-0`'s agent is started again (it restarts HAProxy) with the
//! latency at 0, and preempts back: the next trial starts from the same
//! state.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::bench::{BenchArgs, Fault, Stats, stats};
use super::cloud::{Cloud, LeaseSampler};
use super::error::{LabError, Result};
use super::{Lab, LabSpec, Topology, VipProvider, wait_until};
use crate::lab_haproxy::{FakeApi, TlsProber, kill_haproxy};

/// The client's probe: one HTTPS `GET /readyz` at a time, 10 ms apart.
const PROBE_EVERY: Duration = Duration::from_millis(10);
const PROBE_TIMEOUT: Duration = Duration::from_millis(200);

/// One trial.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CloudTrial {
    pub system: String,
    pub trial: usize,
    pub action_latency_ms: u64,
    pub old: String,
    pub new: Option<String>,
    /// Fault -> the standby says it holds the lease.
    pub lease_ms: Option<f64>,
    /// Fault -> the standby's first `assign` request at the stand-in.
    pub assign_ms: Option<f64>,
    /// Fault -> the stand-in routes the IP to the standby.
    pub routed_ms: Option<f64>,
    /// Fault -> the client is answered again.
    pub answered_ms: Option<f64>,
    /// `assign` requests from the standby until it was routed (422s
    /// included).
    pub assign_calls: usize,
    pub failed_probes: usize,
    pub error: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct CloudSummary {
    pub system: String,
    pub action_latency_ms: u64,
    pub n: usize,
    pub errors: usize,
    pub lease_ms: Option<Stats>,
    pub assign_ms: Option<Stats>,
    pub routed_ms: Option<Stats>,
    pub answered_ms: Option<Stats>,
}

#[derive(Clone, Debug, Serialize)]
pub struct CloudResults {
    pub date: String,
    pub command: String,
    pub trials: Vec<CloudTrial>,
    pub summary: Vec<CloudSummary>,
    pub wall_secs: f64,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The fake apiservers behind HAProxy: one per control plane, on its own
/// address :6443 (sharing one CA in `<lab>/pki`).
pub fn start_fake_apiservers(lab: &Lab) -> Result<Vec<FakeApi>> {
    let pki = lab.dir().join("pki");
    let mut out = Vec::new();
    for n in lab.nodes().iter().filter(|n| n.is_control_plane()) {
        let bind = std::net::SocketAddr::new(n.addr.into(), super::VIP_PORT);
        out.push(FakeApi::start(lab, &n.ns, &n.name, bind, &pki)?);
    }
    Ok(out)
}

/// The CA the fake apiservers' certificates are signed by.
pub fn fake_apiserver_ca(lab: &Lab) -> std::path::PathBuf {
    lab.dir().join("pki").join("ca.crt")
}

/// Every lb node's HAProxy runs with its config and sees every control
/// plane's fake apiserver up.
pub fn lbs_serving(lab: &Lab) -> bool {
    let cps = lab.nodes().iter().filter(|n| n.is_control_plane()).count();
    lab.lb_nodes().iter().all(|n| {
        lab.node(&n.name)
            .and_then(|x| x.status())
            .ok()
            .and_then(|s| s.haproxy)
            .is_some_and(|h| {
                h.running && h.config_ok && h.backends.iter().filter(|b| b.up).count() == cps
            })
    })
}

struct Bench<'a> {
    lab: &'a Lab,
    cloud: &'a Cloud,
    prober: &'a TlsProber,
    leases: &'a LeaseSampler,
}

impl Bench<'_> {
    /// Settled on the preferred holder: the agents agree, the stand-in
    /// routes the IP there with no action in progress, every HAProxy serves,
    /// the client is answered.
    fn settle(&self, timeout: Duration) -> Result<String> {
        let end = Instant::now() + timeout;
        let holder = self.lab.wait_settled(timeout)?;
        let mut last = String::new();
        let ok = wait_until(
            end.saturating_duration_since(Instant::now()),
            Duration::from_millis(50),
            || {
                let idle = self
                    .cloud
                    .standin()
                    .assign_action_log()
                    .iter()
                    .all(|a| a.status != "in-progress");
                let routed = self.cloud.routed_node();
                let t = Instant::now();
                let answered = self.prober.wait_ok(t, Duration::from_secs(1)).is_some();
                last = format!(
                    "holder `{holder}`, routed to {routed:?}, actions idle {idle}, client answered {answered}"
                );
                idle && routed.as_deref() == Some(holder.as_str())
                    && answered
                    && lbs_serving(self.lab)
                    && self.lab.converged().ok().as_deref() == Some(holder.as_str())
            },
        );
        if ok {
            Ok(holder)
        } else {
            Err(LabError::Timeout {
                what: format!("the cloud lab to settle ({last})"),
                secs: timeout.as_secs_f64(),
            })
        }
    }

    fn trial(&self, system: &str, idx: usize, latency: Duration) -> Result<CloudTrial> {
        let s = self.cloud.standin();
        s.set_action_latency(Duration::ZERO);
        let old = self.settle(Duration::from_secs(120))?;
        let mut t = CloudTrial {
            system: system.into(),
            trial: idx,
            action_latency_ms: latency.as_millis() as u64,
            old: old.clone(),
            ..Default::default()
        };
        s.set_action_latency(latency);
        let n = self.lab.node(&old)?;
        let t0 = Instant::now();
        if !n.signal_agent_nowait(libc::SIGKILL) {
            return Err(LabError::node(&old, "no agent to kill"));
        }
        kill_haproxy(&n)?;
        let limit = Duration::from_secs(30) + latency;
        let mut new = None;
        wait_until(limit, Duration::from_millis(5), || {
            new = self.cloud.routes().into_iter().find(|r| {
                r.at >= t0 && r.node.is_some() && r.node.as_deref() != Some(old.as_str())
            });
            new.is_some()
        });
        match &new {
            Some(r) => {
                t.routed_ms = Some(ms(r.at - t0));
                t.new = r.node.clone();
            }
            None => {
                t.error = Some(format!(
                    "the IP was not routed away from `{old}` in {limit:?}"
                ))
            }
        }
        if let Some(new_node) = t.new.clone() {
            let first_fail = self
                .prober
                .since(t0)
                .into_iter()
                .find(|p| !p.ok())
                .map(|p| p.start)
                .unwrap_or(t0);
            match self.prober.wait_ok(first_fail, Duration::from_secs(10)) {
                Some(p) => t.answered_ms = Some(ms(p.end - t0)),
                None => t.error = Some("the client was not answered after the move".into()),
            }
            t.failed_probes = self
                .prober
                .since(t0)
                .iter()
                .filter(|p| !p.ok() && t.answered_ms.is_none_or(|a| ms(p.end - t0) < a))
                .count();
            let droplet = self.cloud.droplet_of(&new_node);
            let routed_at = new.as_ref().map(|r| r.at);
            let calls: Vec<_> = s
                .assign_calls()
                .into_iter()
                .filter(|c| c.at >= t0 && c.droplet == droplet)
                .filter(|c| routed_at.is_none_or(|r| c.at <= r))
                .collect();
            t.assign_calls = calls.len();
            t.assign_ms = calls.first().map(|c| ms(c.at - t0));
            t.lease_ms = self
                .leases
                .first_held(&new_node, t0)
                .map(|x| ms(x.done - t0));
        }
        // Back to the start: lb-0 again, quickly (latency 0 for the move back).
        n.wait_agent_exit(Duration::from_secs(2))?;
        s.set_action_latency(Duration::ZERO);
        n.start()?;
        Ok(t)
    }
}

fn summarize(trials: &[CloudTrial]) -> Vec<CloudSummary> {
    let mut keys: Vec<(String, u64)> = Vec::new();
    for t in trials {
        let k = (t.system.clone(), t.action_latency_ms);
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    keys.into_iter()
        .map(|(system, lat)| {
            let mine: Vec<&CloudTrial> = trials
                .iter()
                .filter(|t| t.system == system && t.action_latency_ms == lat)
                .collect();
            let col = |f: fn(&CloudTrial) -> Option<f64>| {
                stats(&mine.iter().filter_map(|t| f(t)).collect::<Vec<_>>())
            };
            CloudSummary {
                system,
                action_latency_ms: lat,
                n: mine.len(),
                errors: mine.iter().filter(|t| t.error.is_some()).count(),
                lease_ms: col(|t| t.lease_ms),
                assign_ms: col(|t| t.assign_ms),
                routed_ms: col(|t| t.routed_ms),
                answered_ms: col(|t| t.answered_ms),
            }
        })
        .collect()
}

fn secs(s: &Option<Stats>) -> String {
    match s {
        Some(s) => format!(
            "{:.2} s ({:.2}-{:.2})",
            s.median / 1000.0,
            s.min / 1000.0,
            s.max / 1000.0
        ),
        None => "-".into(),
    }
}

pub fn report(r: &CloudResults) -> String {
    let mut m = String::new();
    let _ = writeln!(
        m,
        "# kubeha-lab cloud failover (DigitalOcean stand-in)\n\n{} · `{}`\n",
        r.date, r.command
    );
    let _ = writeln!(
        m,
        "Fault: `kill -9` of the holder's agent and HAProxy. Median (min-max) from the fault.\n"
    );
    let _ = writeln!(
        m,
        "| system | action latency | trials | lease on the standby | assign request (agent's share) | IP routed to the standby | client answered |"
    );
    let _ = writeln!(m, "|---|---|---|---|---|---|---|");
    for s in &r.summary {
        let _ = writeln!(
            m,
            "| {} | {:.0} s | {}{} | {} | {} | {} | {} |",
            s.system,
            s.action_latency_ms as f64 / 1000.0,
            s.n,
            if s.errors > 0 {
                format!(" ({} errors)", s.errors)
            } else {
                String::new()
            },
            secs(&s.lease_ms),
            secs(&s.assign_ms),
            secs(&s.routed_ms),
            secs(&s.answered_ms)
        );
    }
    let _ = writeln!(m, "\nwall time {:.0} s", r.wall_secs);
    m
}

fn write(out: &Path, r: &CloudResults) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| LabError::io(out, e))?;
    let j = out.join("results.json");
    let text = serde_json::to_string_pretty(r).map_err(|e| LabError::Invalid(e.to_string()))?;
    std::fs::write(&j, text).map_err(|e| LabError::io(&j, e))?;
    let md = out.join("report.md");
    std::fs::write(&md, report(r)).map_err(|e| LabError::io(&md, e))
}

/// Run the cloud failover benchmark (`args.vip_provider` = digitalocean).
pub fn run(args: &BenchArgs) -> Result<CloudResults> {
    super::require_root()?;
    if args.faults.iter().any(|f| *f != Fault::Kill) {
        return Err(LabError::Invalid(
            "--vip-provider digitalocean: only --faults kill".into(),
        ));
    }
    if args.action_latency_ms.is_empty() {
        return Err(LabError::Invalid("--action-latency-ms: give one".into()));
    }
    if let Some(why) = crate::lab_haproxy::haproxy_missing() {
        return Err(LabError::Invalid(why));
    }
    let t_start = Instant::now();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let out = args.out.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("kubeha-cloud-bench-{}", now.as_secs()))
    });
    let mut r = CloudResults {
        date: String::from_utf8_lossy(
            &std::process::Command::new("date")
                .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
                .output()
                .map(|o| o.stdout)
                .unwrap_or_default(),
        )
        .trim()
        .to_string(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        trials: Vec::new(),
        summary: Vec::new(),
        wall_secs: 0.0,
    };
    for sys in args.systems.iter().filter(|s| s.is_kubeha()) {
        let mut spec = LabSpec::new(Topology::Guide)
            .timing(sys.profile())
            .vip_provider(VipProvider::Digitalocean);
        if let Some(d) = &args.bin_dir {
            spec = spec.bin_dir(d);
        }
        let lab = Lab::up(spec)?;
        let cloud = lab.cloud().expect("a digitalocean lab has a cloud");
        let _fakes = start_fake_apiservers(&lab)?;
        let prober = TlsProber::start(
            lab.client_ns(),
            lab.vip_target(),
            &fake_apiserver_ca(&lab),
            PROBE_EVERY,
            PROBE_TIMEOUT,
        )?;
        let leases = LeaseSampler::start(&lab, Duration::from_millis(10))?;
        let b = Bench {
            lab: &lab,
            cloud: &cloud,
            prober: &prober,
            leases: &leases,
        };
        for i in 0..args.trials {
            for &lat in &args.action_latency_ms {
                let t = b.trial(sys.as_str(), i, Duration::from_millis(lat))?;
                eprintln!(
                    "kubeha-lab bench: {sys} latency {lat} ms trial {i}: lease {:?} assign {:?} routed {:?} answered {:?} ms{}",
                    t.lease_ms.map(|x| x.round()),
                    t.assign_ms.map(|x| x.round()),
                    t.routed_ms.map(|x| x.round()),
                    t.answered_ms.map(|x| x.round()),
                    t.error
                        .as_deref()
                        .map(|e| format!(" ({e})"))
                        .unwrap_or_default()
                );
                r.trials.push(t);
                r.summary = summarize(&r.trials);
                r.wall_secs = t_start.elapsed().as_secs_f64();
                write(&out, &r)?;
            }
        }
    }
    r.summary = summarize(&r.trials);
    r.wall_secs = t_start.elapsed().as_secs_f64();
    write(&out, &r)?;
    println!("{}", report(&r));
    eprintln!(
        "kubeha-lab bench: wrote {}/report.md and results.json",
        out.display()
    );
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_per_latency() {
        let t = |lat: u64, answered: f64| CloudTrial {
            system: "kubeha-default".into(),
            action_latency_ms: lat,
            answered_ms: Some(answered),
            assign_ms: Some(answered / 10.0),
            ..Default::default()
        };
        let s = summarize(&[t(11000, 12000.0), t(0, 1000.0), t(11000, 14000.0)]);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].action_latency_ms, 11000);
        assert_eq!(s[0].n, 2);
        assert_eq!(s[0].answered_ms.as_ref().unwrap().median, 13000.0);
        assert_eq!(s[1].answered_ms.as_ref().unwrap().median, 1000.0);
        let rep = report(&CloudResults {
            date: "d".into(),
            command: "c".into(),
            trials: vec![],
            summary: s,
            wall_secs: 1.0,
        });
        assert!(
            rep.contains(
                "| kubeha-default | 11 s | 2 | - | 1.30 s (1.20-1.40) | - | 13.00 s (12.00-14.00) |"
            ),
            "{rep}"
        );
    }
}
