//! `kubeha-lab droplets`: the lab on real droplets. Every node namespace
//! boots a Debian 12 container with systemd (`crate::droplet`), the built
//! `.deb` installed with apt, the lab's config as `/etc/kubeha/kubeha.toml`
//! and the cluster key: the unit, the conffile and `Restart=always` are what
//! runs. It shows the cluster, crashes the VIP holder's agent (systemd
//! restarts it while the VIP moves), shows it again and removes everything
//! (also on Ctrl-C).
//!
//! With control planes (the guide and compact topologies) the lb nodes get
//! `[haproxy]` exactly as docs/install.md shows it (an empty section: the
//! defaults), each control plane runs a `fake-apiserver` on its own address
//! (a transient unit in its droplet, one CA for all), and the run fails
//! unless every lb droplet's `kubeha-ctl status -o json` shows HAProxy
//! running with `config_ok` and all control planes UP, and the lab's client
//! reaches an apiserver through VIP:6443 before the crash and again after it.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kubeha_core::timing::Profile;

use super::error::{LabError, Result};
use super::{Lab, LabSpec, Topology, signals, wait_until};
use crate::droplet::{self, Droplet, DropletSpec, FakeCa, HaproxyState, RootCache};
use crate::lab_haproxy::get_from;

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
/// defaults apply). `[haproxy]` keeps no key at all, as in docs/install.md:
/// the frontend defaults to VIP:6443, the files to `/etc/haproxy/haproxy.cfg`
/// and `/run/kubeha/haproxy`.
pub fn droplet_config(lab_config: &str) -> String {
    lab_config
        .lines()
        .filter(|l| {
            let k = l.split('=').next().unwrap_or("").trim();
            !matches!(
                k,
                "key_file" | "state_dir" | "socket" | "frontend" | "config_path" | "runtime_dir"
            )
        })
        .map(|l| format!("{l}\n"))
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
    // HAProxy wherever there are apiservers to balance.
    let haproxy = opts.topology != Topology::Vip;
    let lab = Lab::up(
        LabSpec::new(opts.topology)
            .timing(opts.timing)
            .haproxy(haproxy)
            .without_agents(),
    )?;
    writeln!(out, "   lab namespaces: {}", lab.namespaces().join(" ")).ok();
    writeln!(
        out,
        "   preparing the Debian 12 root (debootstrap once, then cached)"
    )
    .ok();
    let cache = RootCache::for_deb(&deb).map_err(|e| other(e.to_string()))?;
    let key = std::fs::read_to_string(lab.key_file())
        .map_err(|e| other(format!("{}: {e}", lab.key_file().display())))?;

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
                let (cache, deb, key) = (&cache, &deb, &key);
                s.spawn(move || {
                    Droplet::boot(
                        cache,
                        &DropletSpec {
                            name,
                            netns: ns,
                            deb,
                            config,
                            key,
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

    // An lb node is a VIP candidate only once its HAProxy has a server UP:
    // the apiservers come first.
    let ha = if haproxy {
        let ha = HaproxyCheck::new(&lab);
        let d = droplets.lock().unwrap_or_else(|e| e.into_inner());
        ha.start_apiservers(&lab, &d, out)?;
        Some(ha)
    } else {
        None
    };

    let n = nodes.len();
    let statuses = || -> Vec<Option<serde_json::Value>> {
        let d = droplets.lock().unwrap_or_else(|e| e.into_inner());
        d.iter().map(|x| x.status().ok()).collect()
    };
    let agreed = || -> Option<String> {
        let st = statuses();
        // Nodes without `[vip]` (control planes and workers of the guide
        // topology) show no holder: only the others must agree on one.
        let holders: Vec<Option<String>> = st
            .iter()
            .filter(|s| s.as_ref().is_none_or(|v| !v["vip"].is_null()))
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

    let mut failures: Vec<String> = Vec::new();
    if let Some(ha) = &ha {
        let d = droplets.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = ha.wait_serving(&d, Duration::from_secs(30), out) {
            failures.push(e);
        }
        match ha.client_get(Duration::from_secs(10)) {
            Ok((server, waited)) => {
                writeln!(
                    out,
                    "   client reached an apiserver through the VIP: {} /readyz 200 from `{server}` (held by `{holder}`, {} ms)",
                    lab.vip_target(),
                    waited.as_millis()
                )
                .ok();
            }
            Err(e) => failures.push(format!("client through the VIP before the crash: {e}")),
        }
    }

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
    if let Some(ha) = &ha {
        match ha.client_get(Duration::from_secs(20)) {
            Ok((server, _)) => {
                writeln!(
                    out,
                    "   client reached an apiserver through the VIP again after the failover: 200 from `{server}`, {} ms after the kill",
                    t.elapsed().as_millis()
                )
                .ok();
            }
            Err(e) => failures.push(format!("client through the VIP after the crash: {e}")),
        }
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
    if let Some(ha) = &ha {
        // The restarted agent runs HAProxy again under its unit.
        let d = droplets.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = ha.wait_serving(&d, Duration::from_secs(30), out) {
            failures.push(format!("after the restart: {e}"));
        }
    }
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
    if !failures.is_empty() {
        return Err(other(format!(
            "HAProxy on the droplets: {}",
            failures.join("; ")
        )));
    }
    Ok(())
}

/// The HAProxy part of a droplet run: fake apiservers on the control
/// planes, HAProxy's state on the lb nodes, a client behind the VIP.
struct HaproxyCheck {
    /// `(index, name, address)` of the control planes and of the lb nodes.
    cps: Vec<(usize, String, std::net::Ipv4Addr)>,
    lbs: Vec<(usize, String)>,
    client_ns: String,
    vip: std::net::SocketAddr,
    ca_file: PathBuf,
}

impl HaproxyCheck {
    fn new(lab: &Lab) -> HaproxyCheck {
        let nodes = lab.nodes();
        HaproxyCheck {
            cps: nodes
                .iter()
                .enumerate()
                .filter(|(_, n)| n.is_control_plane())
                .map(|(i, n)| (i, n.name.clone(), n.addr))
                .collect(),
            lbs: nodes
                .iter()
                .enumerate()
                .filter(|(_, n)| n.is_lb())
                .map(|(i, n)| (i, n.name.clone()))
                .collect(),
            client_ns: lab.client_ns().to_string(),
            vip: lab.vip_target(),
            ca_file: lab.dir().join("fake-apiserver-ca.crt"),
        }
    }

    /// One fake apiserver per control plane on `<node address>:6443` (an
    /// apiserver bound to the node address, as docs/install.md asks on
    /// compact nodes), all with the first one's CA.
    fn start_apiservers(&self, lab: &Lab, d: &[Droplet], out: &mut dyn Write) -> Result<()> {
        let bin = lab.bin_dir().join("fake-apiserver");
        if !bin.exists() {
            return Err(LabError::MissingTool {
                tool: bin.display().to_string(),
                hint: "cargo build -p kubeha-tests --bins",
            });
        }
        let mut ca: Option<FakeCa> = None;
        for (i, name, addr) in &self.cps {
            let listen = std::net::SocketAddr::new((*addr).into(), super::spec::VIP_PORT);
            let served = d[*i]
                .start_fake_apiserver(&bin, listen, ca.as_ref())
                .map_err(|e| other(format!("fake apiserver on `{name}`: {e}")))?;
            ca.get_or_insert(served);
        }
        let ca = ca.ok_or_else(|| other("no control plane to run an apiserver on"))?;
        std::fs::write(&self.ca_file, &ca.cert).map_err(|e| LabError::io(&self.ca_file, e))?;
        writeln!(
            out,
            "   fake apiservers ({}) on {}",
            droplet::apiserver::FAKE_UNIT,
            self.cps
                .iter()
                .map(|(_, n, a)| format!("{n} {a}:{}", super::spec::VIP_PORT))
                .collect::<Vec<_>>()
                .join(", ")
        )
        .ok();
        Ok(())
    }

    /// Every lb droplet's status shows HAProxy running, `config_ok`, and
    /// all control planes UP.
    fn wait_serving(
        &self,
        d: &[Droplet],
        limit: Duration,
        out: &mut dyn Write,
    ) -> std::result::Result<(), String> {
        let names: Vec<&str> = self.cps.iter().map(|(_, n, _)| n.as_str()).collect();
        let states = || -> Vec<(String, Option<HaproxyState>)> {
            self.lbs
                .iter()
                .map(|(i, n)| (n.clone(), d[*i].haproxy_state().ok().flatten()))
                .collect()
        };
        let mut last = Vec::new();
        let ok = wait_until(limit, Duration::from_millis(200), || {
            last = states();
            last.iter()
                .all(|(_, s)| s.as_ref().is_some_and(|s| s.serves(&names)))
        });
        if !ok {
            return Err(format!(
                "HAProxy not running with config_ok and {names:?} UP within {limit:?}: {last:?}"
            ));
        }
        for (n, _) in &last {
            writeln!(
                out,
                "   HAProxy on `{n}` (kubeha-ctl status -o json): running, config_ok, {} UP",
                names.join(" ")
            )
            .ok();
        }
        Ok(())
    }

    /// `GET /readyz` through VIP:6443 from the client namespace, on a fresh
    /// connection, until one answers 200 or `limit` passes: the answering
    /// apiserver and how long it took.
    fn client_get(&self, limit: Duration) -> std::result::Result<(String, Duration), String> {
        let t = Instant::now();
        let mut last = String::new();
        let mut got = None;
        wait_until(limit, Duration::from_millis(100), || {
            match get_from(
                &self.client_ns,
                self.vip,
                &self.ca_file,
                "/readyz",
                Duration::from_secs(1),
            ) {
                Ok(r) if r.status == 200 => {
                    got = Some(r.server.unwrap_or_default());
                    true
                }
                Ok(r) => {
                    last = format!("status {} ({})", r.status, r.body.trim());
                    false
                }
                Err(e) => {
                    last = e.to_string();
                    false
                }
            }
        });
        got.map(|s| (s, t.elapsed()))
            .ok_or_else(|| format!("no 200 from {} within {limit:?}: {last}", self.vip))
    }
}
