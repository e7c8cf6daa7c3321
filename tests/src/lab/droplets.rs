//! `kubeha-lab droplets`: the lab on real droplets. Every node namespace
//! boots a Debian 12 container with systemd (`crate::droplet`), the built
//! `.deb` installed with apt, the lab's config as `/etc/kubeha/kubeha.toml`
//! and the cluster key: the unit, the conffile and `Restart=always` are what
//! runs. It shows the cluster, crashes the VIP holder's agent (systemd
//! restarts it while the VIP moves), shows it again and removes everything
//! (also on Ctrl-C).

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kubeha_core::timing::Profile;

use super::error::{LabError, Result};
use super::{Lab, LabSpec, Topology, signals, wait_until};
use crate::droplet::{self, Droplet, DropletSpec, RootCache};

pub struct DropletsOptions {
    pub deb: Option<PathBuf>,
    pub topology: Topology,
    pub timing: Profile,
    /// Keep the droplets running until Ctrl-C.
    pub hold: bool,
}

/// The newest `target/debian/kubeha_*.deb`.
pub fn default_deb() -> Option<PathBuf> {
    let dir = super::spec::default_bin_dir().parent()?.join("debian");
    let mut debs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("kubeha_") && n.ends_with(".deb"))
        })
        .collect();
    debs.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
    debs.pop()
}

fn other(msg: impl Into<String>) -> LabError {
    LabError::Invalid(msg.into())
}

/// The lab's config of a node, with the standard paths of an installed
/// package instead of the lab's run directory (the lines are dropped, so the
/// defaults apply).
pub fn droplet_config(lab_config: &str) -> String {
    const DROPLET_CONTROL_KEY: &str = crate::droplet::CONTROL_KEY_PATH;
    lab_config
        .lines()
        .filter(|l| {
            let k = l.split('=').next().unwrap_or("").trim();
            !matches!(k, "key_file" | "state_dir" | "socket")
        })
        .map(|l| {
            if l.split('=').next().unwrap_or("").trim() == "control_key_file" {
                format!("control_key_file = \"{DROPLET_CONTROL_KEY}\"\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect()
}

fn json_holder(v: &serde_json::Value) -> Option<String> {
    v["vip"]["holder"].as_str().map(str::to_string)
}

fn alive(v: &serde_json::Value) -> usize {
    v["members"]
        .as_array()
        .map_or(0, |m| m.iter().filter(|m| m["alive"] == true).count())
}

pub fn run(opts: DropletsOptions, out: &mut dyn Write) -> Result<()> {
    let deb = opts.deb.or_else(default_deb).ok_or_else(|| {
        other("no kubeha_*.deb in target/debian: build it with `scripts/deb-build`, or pass --deb")
    })?;
    let deb = deb
        .canonicalize()
        .map_err(|e| other(format!("{}: {e}", deb.display())))?;
    for s in droplet::cleanup_stale() {
        writeln!(out, "removed leftover {s}").ok();
    }
    let t0 = Instant::now();
    writeln!(out, "== kubeha on booted droplets: {}", deb.display()).ok();
    let lab = Lab::up(
        LabSpec::new(opts.topology)
            .timing(opts.timing)
            .without_agents(),
    )?;
    writeln!(
        out,
        "   preparing the Debian 12 root (debootstrap once, then cached)"
    )
    .ok();
    let cache = RootCache::for_deb(&deb).map_err(|e| other(e.to_string()))?;
    let key = std::fs::read_to_string(lab.key_file())
        .map_err(|e| other(format!("{}: {e}", lab.key_file().display())))?;
    let control_key = std::fs::read_to_string(lab.control_key_file())
        .map_err(|e| other(format!("{}: {e}", lab.control_key_file().display())))?;

    // Droplets power off on Ctrl-C too: the signal thread tears the lab down
    // after this hook.
    let droplets: Arc<Mutex<Vec<Droplet>>> = Arc::new(Mutex::new(Vec::new()));
    let hook = Arc::downgrade(&droplets);
    signals::on_teardown(Box::new(move || {
        if let Some(d) = hook.upgrade() {
            let mut d = d.lock().unwrap_or_else(|e| e.into_inner());
            for x in d.iter() {
                x.begin_poweroff();
            }
            d.clear();
        }
    }));

    // Boot in parallel: apt is most of the time.
    let nodes: Vec<(String, String, String)> = lab
        .nodes()
        .iter()
        .map(|n| {
            let node = lab.node(&n.name).expect("node of the lab");
            let config = std::fs::read_to_string(node.paths().config()).unwrap_or_default();
            (
                n.name.clone(),
                node.ns().to_string(),
                droplet_config(&config),
            )
        })
        .collect();
    let booted: Vec<std::result::Result<Droplet, String>> = std::thread::scope(|s| {
        let hs: Vec<_> = nodes
            .iter()
            .map(|(name, ns, config)| {
                let (cache, deb, key, control_key) = (&cache, &deb, &key, &control_key);
                s.spawn(move || {
                    Droplet::boot(
                        cache,
                        &DropletSpec {
                            name,
                            netns: ns,
                            deb,
                            config,
                            key,
                            control_key: config
                                .contains("control_key_file")
                                .then_some(control_key.as_str()),
                        },
                    )
                    .map_err(|e| format!("`{name}`: {e}"))
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("boot thread panicked".into()))
            })
            .collect()
    });
    {
        let mut d = droplets.lock().unwrap_or_else(|e| e.into_inner());
        for b in booted {
            d.push(b.map_err(other)?);
        }
    }
    writeln!(
        out,
        "   {} droplets booted, package installed, kubeha-agent.service active ({:.1} s)",
        nodes.len(),
        t0.elapsed().as_secs_f64()
    )
    .ok();

    let n = nodes.len();
    let statuses = || -> Vec<Option<serde_json::Value>> {
        let d = droplets.lock().unwrap_or_else(|e| e.into_inner());
        d.iter().map(|x| x.status().ok()).collect()
    };
    let agreed = || -> Option<String> {
        let st = statuses();
        let holders: Vec<Option<String>> = st
            .iter()
            .map(|s| s.as_ref().and_then(json_holder))
            .collect();
        let all_alive = st.iter().all(|s| s.as_ref().is_some_and(|v| alive(v) == n));
        let h = holders.first().cloned().flatten()?;
        (all_alive && holders.iter().all(|x| x.as_deref() == Some(h.as_str()))).then_some(h)
    };
    let mut holder = None;
    if !wait_until(Duration::from_secs(60), Duration::from_millis(200), || {
        holder = agreed();
        holder.is_some()
    }) {
        return Err(other(format!(
            "the droplets did not agree on members and a VIP holder: {:?}",
            statuses()
        )));
    }
    let holder = holder.expect("agreed holder");
    let first = nodes[0].0.clone();
    let table = {
        let d = droplets.lock().unwrap_or_else(|e| e.into_inner());
        d[0].exec_ok(["kubeha-ctl", "status"])
            .map_err(|e| other(e.to_string()))?
    };
    writeln!(
        out,
        "\n== kubeha-ctl status (inside droplet `{first}`)\n{table}"
    )
    .ok();

    // A crash of the holder's agent: systemd restarts it, the VIP moves.
    let t = Instant::now();
    let (old_pid, restarts) = {
        let d = droplets.lock().unwrap_or_else(|e| e.into_inner());
        let i = nodes
            .iter()
            .position(|x| x.0 == holder)
            .expect("holder is a node");
        let pid = d[i].kill_agent().map_err(|e| other(e.to_string()))?;
        (pid, i)
    };
    writeln!(
        out,
        "== kill -9 of the agent on the VIP holder `{holder}` (pid {old_pid})"
    )
    .ok();
    let moved = wait_until(Duration::from_secs(10), Duration::from_millis(5), || {
        lab.vip_holders()
            .is_ok_and(|h| h.len() == 1 && h[0] != holder)
    });
    if moved {
        writeln!(
            out,
            "   VIP on {:?} after {} ms",
            lab.vip_holders().unwrap_or_default(),
            t.elapsed().as_millis()
        )
        .ok();
    } else {
        writeln!(
            out,
            "   the VIP did not move within 10 s: {:?}",
            lab.vip_holders()
        )
        .ok();
    }
    let restarted = wait_until(Duration::from_secs(30), Duration::from_millis(100), || {
        let d = droplets.lock().unwrap_or_else(|e| e.into_inner());
        d[restarts]
            .agent_pid()
            .ok()
            .flatten()
            .is_some_and(|p| p != old_pid)
    });
    let nrestarts = {
        let d = droplets.lock().unwrap_or_else(|e| e.into_inner());
        d[restarts].unit_property("NRestarts").unwrap_or_default()
    };
    writeln!(
        out,
        "   systemd restarted the agent on `{holder}`: {} (NRestarts={})",
        if restarted { "yes" } else { "NO" },
        nrestarts.trim()
    )
    .ok();
    wait_until(Duration::from_secs(30), Duration::from_millis(200), || {
        agreed().is_some()
    });
    let table = {
        let d = droplets.lock().unwrap_or_else(|e| e.into_inner());
        d[0].exec_ok(["kubeha-ctl", "status"])
            .map_err(|e| other(e.to_string()))?
    };
    writeln!(out, "\n== kubeha-ctl status after the crash\n{table}").ok();

    if opts.hold {
        writeln!(
            out,
            "droplets running (namespaces {}); Ctrl-C removes everything",
            lab.namespaces().join(" ")
        )
        .ok();
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    let d: Vec<Droplet> = std::mem::take(&mut *droplets.lock().unwrap_or_else(|e| e.into_inner()));
    for x in &d {
        x.begin_poweroff();
    }
    drop(d);
    drop(lab);
    writeln!(
        out,
        "\n== droplets powered off, lab removed ({:.1} s in all)",
        t0.elapsed().as_secs_f64()
    )
    .ok();
    if !moved || !restarted {
        return Err(other("the crash was not handled as expected (see above)"));
    }
    Ok(())
}
