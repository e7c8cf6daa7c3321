//! `kubeha-lab demo`: a lab cluster, its status, a failover the client can
//! see, then nothing left behind. README's first command.

use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

use super::error::{LabError, Result};
use super::{Lab, LabSpec, Prober, Sampler, cmd};

/// A compact table of every node's view: node, agent pid, members alive,
/// VIP holder, quorum.
pub fn status_table(lab: &Lab) -> String {
    let mut out = format!(
        "{:<10} {:<8} {:<8} {:<10} {:<8} {}\n",
        "NODE", "AGENT", "ALIVE", "VIP-HOLDER", "QUORUM", "NOTE"
    );
    let total = lab.nodes().len();
    for (name, st) in lab.statuses() {
        let pid = lab
            .node(&name)
            .ok()
            .and_then(|n| n.agent_pid())
            .map(|p| p.to_string())
            .unwrap_or_else(|| "-".into());
        match st {
            Ok(s) => {
                let alive = s.members.iter().filter(|m| m.alive).count();
                let holder = s
                    .vip
                    .as_ref()
                    .map(|v| v.holder.clone().unwrap_or_else(|| "none".into()))
                    .unwrap_or_else(|| "-".into());
                let mut note = Vec::new();
                if s.vip.as_ref().is_some_and(|v| v.held_here) {
                    note.push("holds the VIP".to_string());
                }
                if s.drained {
                    note.push("drained".into());
                }
                if !s.voter_mismatch.is_empty() {
                    note.push("voter mismatch".into());
                }
                out.push_str(&format!(
                    "{:<10} {:<8} {:<8} {:<10} {:<8} {}\n",
                    name,
                    pid,
                    format!("{alive}/{total}"),
                    holder,
                    format!(
                        "{}/{}{}",
                        s.quorum.reachable,
                        s.quorum.voters,
                        if s.quorum.ok { "" } else { "!" }
                    ),
                    note.join(", ")
                ));
            }
            Err(e) => {
                let why = if pid == "-" {
                    "agent not running".to_string()
                } else {
                    format!("no answer: {e}")
                };
                out.push_str(&format!(
                    "{:<10} {:<8} {:<8} {:<10} {:<8} {}\n",
                    name, pid, "-", "-", "-", why
                ));
            }
        }
    }
    match lab.vip_holders() {
        Ok(h) if h.is_empty() => out.push_str("VIP on interfaces: none\n"),
        Ok(h) => out.push_str(&format!("VIP on interfaces: {}\n", h.join(", "))),
        Err(e) => out.push_str(&format!("VIP on interfaces: unknown ({e})\n")),
    }
    if lab.vip_provider() == super::VipProvider::Digitalocean {
        match lab.cloud_routed_node() {
            Ok(n) => out.push_str(&format!(
                "Reserved IP routed by the cloud (stand-in) to: {}\n",
                n.as_deref().unwrap_or("none")
            )),
            Err(e) => out.push_str(&format!("Reserved IP route: unknown ({e})\n")),
        }
    }
    out
}

/// What the demo saw.
#[derive(Clone, Debug)]
pub struct DemoReport {
    pub converged_after: Duration,
    pub old_holder: String,
    pub new_holder: Option<String>,
    pub failover: Option<Duration>,
    pub max_holders: usize,
}

fn w(out: &mut dyn Write, s: impl AsRef<str>) -> Result<()> {
    writeln!(out, "{}", s.as_ref()).map_err(|e| LabError::io("<stdout>", e))
}

/// Run the demo, writing a readable account to `out`.
pub fn run(spec: LabSpec, out: &mut dyn Write) -> Result<DemoReport> {
    let topology = spec.topology;
    w(
        out,
        format!(
            "== kubeha demo: {} topology, timing {}, every droplet a network namespace",
            topology.as_str(),
            spec.timing.as_str()
        ),
    )?;
    let t_up = Instant::now();
    let lab = Lab::up(spec)?;
    for n in lab.nodes() {
        let roles: Vec<&str> = n.roles.iter().map(|r| r.as_str()).collect();
        w(
            out,
            format!("   {:<9} {:<13} {}", n.name, n.addr, roles.join(",")),
        )?;
    }
    w(
        out,
        format!(
            "   client    {}  probes VIP {}:{} every 10 ms",
            super::CLIENT_ADDR,
            super::VIP,
            super::VIP_PORT
        ),
    )?;
    lab.start_responders()?;
    let sampler = Sampler::start(&lab)?;
    let prober = Prober::start(&lab)?;

    w(
        out,
        "\n== waiting for the agents to agree (membership, quorum, one VIP holder)",
    )?;
    let holder = lab.wait_converged(Duration::from_secs(60))?;
    let converged_after = t_up.elapsed();
    // The client has to reach the holder too, not only the agents agree.
    prober
        .wait_ok_where(Instant::now(), Duration::from_secs(10), |n| n == holder)
        .ok_or_else(|| LabError::Timeout {
            what: format!("the client to reach `{holder}` through the VIP"),
            secs: 10.0,
        })?;
    w(
        out,
        format!(
            "   converged {:.1} s after start: `{holder}` holds the VIP, the client reaches it",
            converged_after.as_secs_f64()
        ),
    )?;

    let node = lab.node(&holder)?;
    w(
        out,
        format!(
            "\n== kubeha-ctl --socket {} status",
            node.socket().display()
        ),
    )?;
    let ctl = lab.bin_dir().join("kubeha-ctl");
    let shown = if ctl.exists() {
        match cmd::run(
            Command::new(&ctl)
                .arg("--socket")
                .arg(node.socket())
                .arg("status"),
        ) {
            Ok(o) => {
                out.write_all(&o.stdout)
                    .map_err(|e| LabError::io("<stdout>", e))?;
                true
            }
            Err(e) => {
                w(out, format!("   ({e})"))?;
                false
            }
        }
    } else {
        false
    };
    if !shown {
        out.write_all(status_table(&lab).as_bytes())
            .map_err(|e| LabError::io("<stdout>", e))?;
    }

    w(
        out,
        format!(
            "\n== crash of the VIP holder `{holder}`: kill -9 its agent, and nothing answers on it any more"
        ),
    )?;
    let t0 = Instant::now();
    node.crash()?;
    let first = prober.wait_ok_where(t0, Duration::from_secs(20), |n| n != holder);
    // Watch a little longer for a second holder or a flapping client.
    std::thread::sleep(Duration::from_millis(1000));
    let probes = prober.since(t0);
    let failed = probes
        .iter()
        .filter(|p| !p.outcome.is_ok() && first.as_ref().is_none_or(|f| p.start < f.end))
        .count();
    let sum = sampler.summary(t0, Instant::now());
    let (new_holder, failover) = match &first {
        Some(p) => {
            let d = p.end - t0;
            w(
                out,
                format!(
                    "   the client was answered by `{}` {} ms after the crash ({} probes failed in between)",
                    p.outcome.node().unwrap_or("?"),
                    d.as_millis(),
                    failed
                ),
            )?;
            (p.outcome.node().map(str::to_string), Some(d))
        }
        None => {
            w(
                out,
                "   the client got no answer from another node within 20 s",
            )?;
            (None, None)
        }
    };
    let now_on = sampler.holders();
    let still = if now_on.contains(&holder) {
        format!(" (`{holder}` still carries it)")
    } else {
        String::new()
    };
    let now_on = if now_on.is_empty() {
        "none".to_string()
    } else {
        now_on.join(", ")
    };
    w(out, format!("   VIP on interfaces now: {now_on}{still}"))?;
    if sum.max_holders <= 1 {
        w(
            out,
            "   never on two nodes at once (every node sampled every 10 ms)",
        )?;
    } else {
        w(
            out,
            format!(
                "   on two or more nodes at once for {} ms (every node sampled every 10 ms)",
                sum.multi_time.as_millis()
            ),
        )?;
    }
    w(out, "\n== status after the failover")?;
    out.write_all(status_table(&lab).as_bytes())
        .map_err(|e| LabError::io("<stdout>", e))?;

    drop(prober);
    drop(sampler);
    let name = lab.name().to_string();
    lab.down();
    w(
        out,
        format!("\n== lab `{name}` removed: namespaces, processes, run directory"),
    )?;
    Ok(DemoReport {
        converged_after,
        old_holder: holder,
        new_holder,
        failover,
        max_holders: sum.max_holders,
    })
}
