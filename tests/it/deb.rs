//! The .deb on real droplets: Debian 12 containers booted with systemd in
//! their own network namespaces, the package installed with apt.
//!
//! Root only, and they need the package: `scripts/deb-build`, then
//! `scripts/deb-check` (which runs them), or
//! `cargo test -p kubeha-tests --test it deb:: -- --ignored --nocapture`.
//! `KUBEHA_DEB` points them at another .deb. The first run makes the cached
//! Debian root (debootstrap, about a minute); later runs reuse it.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use kubeha_tests::droplet::{self, Droplet, RootCache, TestNet, wait_for};
use serde_json::Value;

fn require_root() {
    // SAFETY: geteuid(2) has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the droplet tests need root (network namespaces, systemd-nspawn)"
    );
}

/// `KUBEHA_DEB`, else `target/debian/kubeha_<version>-1_<arch>.deb`.
fn deb_path() -> PathBuf {
    if let Some(p) = std::env::var_os("KUBEHA_DEB") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/it-<hash> -> target/debian
    let target = exe.ancestors().nth(3).expect("target dir");
    let arch = std::process::Command::new("dpkg")
        .arg("--print-architecture")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|_| "amd64".into());
    let p = target
        .join("debian")
        .join(format!("kubeha_{}-1_{arch}.deb", env!("CARGO_PKG_VERSION")));
    assert!(
        p.exists(),
        "{} is missing: run scripts/deb-build first (or set KUBEHA_DEB)",
        p.display()
    );
    p
}

fn cache() -> &'static RootCache {
    static CACHE: OnceLock<RootCache> = OnceLock::new();
    CACHE.get_or_init(|| make_cache(&[]))
}

/// The root with what the Kubernetes test bed needs (etcd).
fn kube_cache() -> &'static RootCache {
    static CACHE: OnceLock<RootCache> = OnceLock::new();
    CACHE.get_or_init(|| make_cache(droplet::kube::KUBE_PACKAGES))
}

fn make_cache(extra: &[&str]) -> RootCache {
    {
        let removed = droplet::cleanup_stale();
        if !removed.is_empty() {
            eprintln!("deb: removed leftovers of killed runs: {removed:?}");
        }
        let c = RootCache::for_deb_with(&deb_path(), extra).expect("cached Debian root");
        match c.built_in {
            Some(t) => eprintln!(
                "deb: made the cached root {} with debootstrap in {:.1}s ({})",
                c.root().display(),
                t.as_secs_f64(),
                c.packages().join(",")
            ),
            None => eprintln!("deb: cached root {}", c.root().display()),
        }
        c
    }
}

fn secs(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

/// Boot and install on every node of `net` in parallel.
fn boot_all(net: &TestNet) -> Vec<Droplet> {
    let names: Vec<&str> = net.nodes.iter().map(|n| n.0.as_str()).collect();
    boot_nodes(net, cache(), &names, |_| {})
}

/// Boot `names` of `net` from `cache` and install the package, in
/// parallel; then `prepare` each droplet (in its boot thread).
fn boot_nodes(
    net: &TestNet,
    cache: &RootCache,
    names: &[&str],
    prepare: impl Fn(&Droplet) + Sync,
) -> Vec<Droplet> {
    let deb = deb_path();
    let prepare = &prepare;
    std::thread::scope(|s| {
        let handles: Vec<_> = net
            .nodes
            .iter()
            .filter(|(name, _, _)| names.contains(&name.as_str()))
            .map(|(name, ns, _)| {
                let deb = deb.clone();
                s.spawn(move || {
                    let d = Droplet::boot_bare(cache, ns, name, &deb)
                        .unwrap_or_else(|e| panic!("boot {name}: {e}"));
                    let install = d
                        .install_deb()
                        .unwrap_or_else(|e| panic!("install on {name}: {e}"));
                    eprintln!(
                        "deb: {name} booted in {}, package installed in {}",
                        secs(d.boot_time),
                        secs(install)
                    );
                    prepare(&d);
                    d
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("boot thread"))
            .collect()
    })
}

fn config(name: &str, addr: &str, seeds: &[&str], voters: &[&str], extra: &str) -> String {
    let q = |v: &[&str]| {
        v.iter()
            .map(|s| format!("\"{s}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    // Voters (and lb nodes) hold the control key too.
    let control = if voters.contains(&name) || extra.contains("\"lb\"") {
        "control_key_file = \"/etc/kubeha/control.key\"\n"
    } else {
        ""
    };
    format!(
        "cluster = \"deb\"\nnode_name = \"{name}\"\nadvertise_addr = \"{addr}\"\n\
         seeds = [{}]\nvoters = [{}]\n{control}{extra}",
        q(seeds),
        q(voters)
    )
}

fn members(status: &Value) -> Vec<(String, bool, u64, String)> {
    status["members"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|m| {
                    (
                        m["name"].as_str().unwrap_or_default().to_string(),
                        m["alive"].as_bool().unwrap_or(false),
                        m["generation"].as_u64().unwrap_or(0),
                        m["state"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Every droplet lists exactly `names`, all alive.
fn all_see_alive(droplets: &[&Droplet], names: &[&str]) -> bool {
    droplets.iter().all(|d| {
        let Ok(s) = d.status() else { return false };
        let m = members(&s);
        m.len() == names.len()
            && names
                .iter()
                .all(|n| m.iter().any(|(name, alive, _, _)| name == n && *alive))
    })
}

fn mode(d: &Droplet, path: &str) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(d.host_path(path))
        .unwrap_or_else(|e| panic!("{}: {path}: {e}", d.name()))
        .permissions()
        .mode()
        & 0o7777
}

/// Fresh install → waits for the key; then a cluster of three; `kill -9`
/// → restarted and rejoined; a config edit survives `--reinstall`; purge
/// removes /etc/kubeha and /var/lib/kubeha.
#[test]
#[ignore = "needs root and the built .deb: run scripts/deb-check"]
fn deb_droplets_cluster_lifecycle() {
    require_root();
    let names = ["d1", "d2", "d3"];
    let net = TestNet::new("c", &names, 51).expect("test network");
    let droplets = boot_all(&net);
    let all: Vec<&Droplet> = droplets.iter().collect();
    let (d1, d2, d3) = (&droplets[0], &droplets[1], &droplets[2]);

    // A fresh install: enabled, but waiting for the key instead of crash-looping.
    for d in &all {
        assert_eq!(
            d.exec_ok(["systemctl", "is-enabled", "kubeha-agent"])
                .unwrap()
                .trim(),
            "enabled",
            "{}",
            d.name()
        );
        assert_eq!(d.unit_property("ActiveState").unwrap(), "inactive");
        assert_eq!(d.unit_property("ConditionResult").unwrap(), "no");
        assert_eq!(d.unit_property("NRestarts").unwrap(), "0");
        assert_eq!(mode(d, "/etc/kubeha"), 0o755);
        assert_eq!(mode(d, "/var/lib/kubeha"), 0o700);
        let conf = d.read_file("/etc/kubeha/kubeha.toml").unwrap();
        assert!(
            conf.lines()
                .all(|l| l.trim().is_empty() || l.starts_with('#')),
            "the shipped config is all comments"
        );
        // The shipped config does not pass as valid: the agent names what is missing.
        let check = d
            .exec(["kubeha-agent", "--check-config"])
            .expect("run --check-config");
        assert_eq!(check.status.code(), Some(1), "{check:?}");
        assert!(
            String::from_utf8_lossy(&check.stderr).contains("/etc/kubeha/kubeha.toml"),
            "{check:?}"
        );
        for page in ["kubeha-agent.8.gz", "kubeha-guardian.8.gz"] {
            assert!(
                d.host_path(&format!("/usr/share/man/man8/{page}")).exists(),
                "{page} installed"
            );
        }
        // Started by hand the guardian refuses: fd 3 is not the agent's link.
        let alone = d
            .exec([
                "kubeha-guardian",
                "--interface",
                "eth0",
                "--vip",
                "198.18.0.100",
                "--source",
                "198.18.0.2:7946",
            ])
            .unwrap();
        assert_eq!(alone.status.code(), Some(1), "{alone:?}");
        assert!(
            String::from_utf8_lossy(&alone.stderr).contains("not the agent's link"),
            "{alone:?}"
        );
        assert!(
            d.host_path("/usr/share/bash-completion/completions/kubeha-ctl")
                .exists()
        );
    }

    // What the docs say: keygen on one node, copy the key to the others.
    d1.exec_ok(["kubeha-ctl", "keygen", "--out", "/etc/kubeha/cluster.key"])
        .unwrap();
    d1.exec_ok(["kubeha-ctl", "keygen", "--out", "/etc/kubeha/control.key"])
        .unwrap();
    assert_eq!(mode(d1, "/etc/kubeha/cluster.key"), 0o600);
    let key = d1.read_file("/etc/kubeha/cluster.key").unwrap();
    let control_key = d1.read_file("/etc/kubeha/control.key").unwrap();
    let seeds = ["198.18.0.51:7946", "198.18.0.52:7946"];
    for d in &all {
        let (_, addr) = net.node(d.name());
        d.write_file(
            "/etc/kubeha/kubeha.toml",
            config(d.name(), addr, &seeds, &names, "").as_bytes(),
            0o644,
        )
        .unwrap();
        if d.name() != "d1" {
            d.write_file("/etc/kubeha/cluster.key", key.as_bytes(), 0o600)
                .unwrap();
            d.write_file("/etc/kubeha/control.key", control_key.as_bytes(), 0o600)
                .unwrap();
        }
    }
    let start = Instant::now();
    for d in &all {
        d.exec_ok(["systemctl", "start", "kubeha-agent"]).unwrap();
    }
    for d in &all {
        d.wait_agent_active(Duration::from_secs(20)).unwrap();
        assert_eq!(d.unit_property("NRestarts").unwrap(), "0");
    }
    let formed = wait_for(Duration::from_secs(30), || {
        all_see_alive(&all, &names).then_some(start.elapsed())
    });
    let formed = formed.unwrap_or_else(|| {
        panic!(
            "no cluster of 3 within 30 s: {:?}",
            all.iter().map(|d| d.status().ok()).collect::<Vec<_>>()
        )
    });
    eprintln!(
        "deb: 3 droplets see 3 alive members {} after `systemctl start`",
        secs(formed)
    );
    for d in &all {
        let s = d.status().unwrap();
        assert_eq!(s["cluster"], "deb");
        assert_eq!(s["node"], d.name());
        assert_eq!(s["quorum"]["ok"], true, "{s}");
    }

    // kill -9: systemd restarts the agent (Restart=always), it rejoins as a
    // new incarnation.
    let before = members(&d1.status().unwrap())
        .into_iter()
        .find(|m| m.0 == "d2")
        .expect("d1 sees d2")
        .2;
    let killed_at = Instant::now();
    let old_pid = d2.kill_agent().unwrap();
    let new_pid = wait_for(Duration::from_secs(15), || {
        let p = d2.agent_pid().ok()??;
        (p != old_pid && d2.unit_property("ActiveState").ok()? == "active").then_some(p)
    })
    .expect("systemd restarts the killed agent");
    let restarted = killed_at.elapsed();
    assert_eq!(d2.unit_property("NRestarts").unwrap(), "1");
    let rejoined = wait_for(Duration::from_secs(30), || {
        let m = members(&d1.status().ok()?);
        let d2_gen = m.iter().find(|m| m.0 == "d2")?.2;
        (d2_gen != before && all_see_alive(&all, &names)).then(|| killed_at.elapsed())
    })
    .expect("the restarted agent rejoins with a new generation");
    eprintln!(
        "deb: kill -9 of d2's agent (pid {old_pid}): restarted as pid {new_pid} after {}, \
         all alive with a new generation after {}",
        secs(restarted),
        secs(rejoined)
    );

    // A config edit survives a reinstall of the same package.
    let (_, addr3) = net.node("d3");
    let edited = format!(
        "# edited on d3\n{}",
        config(
            "d3",
            addr3,
            &seeds,
            &names,
            "metrics_addr = \"127.0.0.1:9947\"\n"
        )
    );
    d3.write_file("/etc/kubeha/kubeha.toml", edited.as_bytes(), 0o644)
        .unwrap();
    d3.exec_ok(["systemctl", "restart", "kubeha-agent"])
        .unwrap();
    let pid_before = d3.wait_agent_active(Duration::from_secs(20)).unwrap();
    let deb = d3.deb_path().to_string_lossy().into_owned();
    let t = Instant::now();
    d3.exec_ok([
        "apt-get",
        "install",
        "-y",
        "-q",
        "--no-install-recommends",
        "--reinstall",
        &deb,
    ])
    .unwrap();
    eprintln!("deb: reinstall on d3 took {}", secs(t.elapsed()));
    assert_eq!(d3.read_file("/etc/kubeha/kubeha.toml").unwrap(), edited);
    for leftover in [
        "kubeha.toml.dpkg-dist",
        "kubeha.toml.dpkg-new",
        "kubeha.toml.dpkg-old",
    ] {
        assert!(!d3.host_path(&format!("/etc/kubeha/{leftover}")).exists());
    }
    let pid_after = d3.wait_agent_active(Duration::from_secs(20)).unwrap();
    assert_ne!(
        pid_before, pid_after,
        "prerm stops, postinst starts the agent"
    );
    assert!(
        wait_for(Duration::from_secs(10), || {
            d3.exec_ok(["ss", "-Hltn", "sport", "=", ":9947"])
                .ok()
                .filter(|o| o.contains("127.0.0.1:9947"))
        })
        .is_some(),
        "the agent runs with the edited config after the reinstall"
    );
    assert!(
        wait_for(Duration::from_secs(30), || all_see_alive(&all, &names)
            .then_some(()))
        .is_some()
    );

    // Purge: the agent stops (and says so to its peers), everything goes.
    d3.exec_ok(["dpkg", "--purge", "kubeha"]).unwrap();
    for gone in [
        "/etc/kubeha",
        "/var/lib/kubeha",
        "/usr/bin/kubeha-agent",
        "/usr/bin/kubeha-guardian",
        "/usr/lib/systemd/system/kubeha-agent.service",
        "/etc/systemd/system/multi-user.target.wants/kubeha-agent.service",
    ] {
        assert!(!d3.host_path(gone).exists(), "{gone} is left after purge");
    }
    for p in ["kubeha-agent", "kubeha-guardian"] {
        assert!(
            d3.exec(["pgrep", "-x", p]).unwrap().stdout.is_empty(),
            "no {p} runs after purge"
        );
    }
    let left = wait_for(Duration::from_secs(10), || {
        members(&d1.status().ok()?)
            .into_iter()
            .find(|m| m.0 == "d3" && m.3 == "left")
    });
    assert!(left.is_some(), "d1 sees d3 as `left` after its purge");

    let t = Instant::now();
    for d in &all {
        d.begin_poweroff();
    }
    drop(droplets);
    eprintln!("deb: 3 droplets powered off in {}", secs(t.elapsed()));
}

/// The unit's sandbox as it really applies: capabilities, read-only paths,
/// the one writable sysctl, `--release-vip` after a crash, HAProxy running
/// under the same sandbox, `Conflicts=haproxy.service`, and
/// `systemd-analyze verify` / `security` against the real systemd.
#[test]
#[ignore = "needs root and the built .deb: run scripts/deb-check"]
fn deb_unit_sandbox() {
    require_root();
    let net = TestNet::new("s", &["s1"], 61).expect("test network");
    let droplets = boot_all(&net);
    let d = &droplets[0];
    let (_, addr) = net.node("s1");
    let vip = "198.18.0.70";
    let conf = config(
        "s1",
        addr,
        &[&format!("{addr}:7946")],
        &["s1"],
        &format!(
            "roles = [\"lb\"]\n\n[vip]\naddress = \"{vip}/32\"\ninterface = \"eth0\"\n\n[haproxy]\n"
        ),
    );
    d.write_file("/etc/kubeha/kubeha.toml", conf.as_bytes(), 0o644)
        .unwrap();
    d.exec_ok(["kubeha-ctl", "keygen", "--out", "/etc/kubeha/cluster.key"])
        .unwrap();
    d.exec_ok(["kubeha-ctl", "keygen", "--out", "/etc/kubeha/control.key"])
        .unwrap();
    // Debian's haproxy.service runs after boot; starting the agent stops it.
    d.start_agent().unwrap();
    assert_eq!(
        d.exec(["systemctl", "is-active", "haproxy"])
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap(),
        "inactive",
        "Conflicts=haproxy.service"
    );

    // Capabilities: CAP_NET_ADMIN (12), CAP_NET_RAW (13), and for the VIP
    // guardian CAP_IPC_LOCK (14) and CAP_SYS_NICE (23); nothing else.
    let pid = d.agent_pid().unwrap().expect("agent runs");
    let proc_field = |pid: u32, k: &str| {
        let status = d
            .read_file(&format!("/proc/{pid}/status"))
            .unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or_default()
            .to_string()
    };
    let field = |k: &str| proc_field(pid, k);
    assert_eq!(field("CapEff:"), "0000000000807000");
    assert_eq!(field("CapBnd:"), "0000000000807000");
    assert_eq!(field("NoNewPrivs:"), "1");
    assert_eq!(field("Seccomp:"), "2");

    // The VIP guardian got what the unit grants it for: locked memory and
    // real-time priority (without them it runs, and warns, unhardened).
    let guardian: u32 = wait_for(Duration::from_secs(10), || {
        d.exec_ok(["pgrep", "-x", "kubeha-guardian"])
            .ok()?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
    .expect("the VIP guardian runs");
    let locked = proc_field(guardian, "VmLck:");
    assert!(
        locked.parse::<u64>().is_ok_and(|kb| kb > 0),
        "guardian memory locked: VmLck {locked}"
    );
    let policy = d.exec_ok(["chrt", "-p", &guardian.to_string()]).unwrap();
    assert!(policy.contains("SCHED_FIFO"), "guardian priority: {policy}");

    // `[haproxy]` as docs/install.md has it: the agent's own HAProxy runs
    // under the unit, with no `user`/`group`/`chroot` in the render (the unit
    // grants neither CAP_SETUID/CAP_SETGID/CAP_SYS_CHROOT nor the CAP_KILL a
    // root master needs to stop workers of another uid after a reload).
    let ha = wait_for(Duration::from_secs(20), || {
        d.haproxy_state()
            .ok()
            .flatten()
            .filter(|h| h.running && h.config_ok)
    });
    assert!(
        ha.is_some(),
        "HAProxy running with config_ok under the unit: {:?}",
        d.status()
    );
    let cfg = d.read_file("/etc/haproxy/haproxy.cfg").unwrap();
    for kw in ["\n    user ", "\n    group ", "\n    chroot "] {
        assert!(!cfg.contains(kw), "`{}` in the render: {cfg}", kw.trim());
    }
    // Master and one worker, both root with the unit's capabilities: after
    // the agent's first reloads no old worker generation is left behind
    // (with `user haproxy` they were: the master could not signal them, and
    // `show stat` was answered by stale generations).
    let procs = || -> Vec<(u32, String, String)> {
        d.exec_ok(["pgrep", "-x", "haproxy"])
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .map(|p| (p, proc_field(p, "Uid:"), proc_field(p, "CapEff:")))
            .collect()
    };
    let settled = wait_for(Duration::from_secs(15), || {
        let p = procs();
        (p.len() == 2).then_some(p)
    });
    let settled = settled.unwrap_or_else(|| panic!("master + 1 worker: {:?}", procs()));
    assert!(
        settled
            .iter()
            .all(|(_, uid, cap)| uid == "0" && cap == "0000000000807000"),
        "{settled:?}"
    );

    // The file system as the agent sees it (its mount namespace).
    let in_agent = |script: &str| {
        d.exec(["nsenter", "-t", &pid.to_string(), "-m", "sh", "-c", script])
            .unwrap()
            .status
            .success()
    };
    for ro in [
        "/usr/bin/kubeha-probe",
        "/etc/kubeha/probe",
        "/root/probe",
        "/proc/sys/net/ipv4/ip_forward",
    ] {
        let script = if ro.starts_with("/proc") {
            format!("cat {ro} > {ro}")
        } else {
            format!("touch {ro}")
        };
        assert!(!in_agent(&script), "the agent can write {ro}");
    }
    for rw in [
        "/var/lib/kubeha/probe",
        "/run/kubeha/probe",
        "/etc/haproxy/probe",
    ] {
        assert!(
            in_agent(&format!("touch {rw} && rm {rw}")),
            "the agent cannot write {rw}"
        );
    }
    assert!(
        in_agent("cat /proc/sys/net/ipv4/ip_nonlocal_bind > /proc/sys/net/ipv4/ip_nonlocal_bind"),
        "the agent cannot set ip_nonlocal_bind"
    );

    // A VIP left behind by a killed agent is removed by ExecStopPost.
    d.exec_ok(["ip", "addr", "add", &format!("{vip}/32"), "dev", "eth0"])
        .unwrap();
    let killed_at = Instant::now();
    let old = d.kill_agent().unwrap();
    let released = wait_for(Duration::from_secs(10), || {
        let out = d
            .exec_ok(["ip", "-o", "addr", "show", "dev", "eth0"])
            .ok()?;
        (!out.contains(&format!("{vip}/32"))).then(|| killed_at.elapsed())
    })
    .expect("ExecStopPost=kubeha-agent --release-vip removes the VIP");
    let new = wait_for(Duration::from_secs(15), || {
        d.agent_pid().ok()?.filter(|p| *p != old)
    })
    .expect("restarted");
    eprintln!(
        "deb: VIP released {} after kill -9, agent restarted as pid {new}",
        secs(released)
    );

    // HAProxy under the unit's exact sandbox: a copy of the installed unit
    // with only the commands (and per-unit directories) swapped.
    let unit = d
        .read_file("/usr/lib/systemd/system/kubeha-agent.service")
        .unwrap();
    let mut probe = String::new();
    for line in unit.lines() {
        let drop = [
            "ExecStartPre=",
            "ExecStart=",
            "ExecStopPost=",
            "ExecReload=",
            "Restart",
            "Conflicts=",
            "Condition",
            "RuntimeDirectory",
            "StateDirectory",
            "WantedBy=",
        ];
        if drop.iter().any(|p| line.starts_with(p)) {
            continue;
        }
        probe.push_str(line);
        probe.push('\n');
        if line == "[Service]" {
            probe.push_str(
                "ExecStartPre=/bin/sh -c 'echo 1 > /proc/sys/net/ipv4/ip_nonlocal_bind'\n\
                 ExecStartPre=/usr/sbin/haproxy -c -q -f /etc/haproxy/kubeha-probe.cfg\n\
                 ExecStart=/usr/sbin/haproxy -W -db -f /etc/haproxy/kubeha-probe.cfg\n\
                 ExecReload=/bin/kill -USR2 $MAINPID\n\
                 RuntimeDirectory=kubeha-probe\n",
            );
        }
    }
    let cfg = format!(
        "global\n    master-worker\n    stats socket /run/kubeha-probe/stats.sock mode 600 level admin\n\
         defaults\n    mode tcp\n    timeout connect 1s\n    timeout client 10s\n    timeout server 10s\n\
         frontend api\n    bind {vip}:6444\n    default_backend cps\n\
         backend cps\n    server s1 {addr}:6443 check\n"
    );
    d.write_file("/etc/haproxy/kubeha-probe.cfg", cfg.as_bytes(), 0o644)
        .unwrap();
    d.write_file(
        "/run/systemd/system/kubeha-sandbox-probe.service",
        probe.as_bytes(),
        0o644,
    )
    .unwrap();
    d.exec_ok(["systemctl", "daemon-reload"]).unwrap();
    d.exec_ok(["systemctl", "start", "kubeha-sandbox-probe"])
        .unwrap();
    let listening = |d: &Droplet| {
        d.exec_ok(["ss", "-Hltn", "src", &format!("{vip}:6444")])
            .map(|o| o.contains(&format!("{vip}:6444")))
            .unwrap_or(false)
    };
    assert!(
        wait_for(Duration::from_secs(10), || listening(d).then_some(())).is_some(),
        "HAProxy binds the VIP (not on this node) under the sandbox: {}",
        d.exec_ok(["journalctl", "-u", "kubeha-sandbox-probe", "--no-pager"])
            .unwrap_or_default()
    );
    let master = d
        .exec_ok([
            "systemctl",
            "show",
            "-p",
            "MainPID",
            "--value",
            "kubeha-sandbox-probe",
        ])
        .unwrap();
    d.exec_ok(["systemctl", "reload", "kubeha-sandbox-probe"])
        .unwrap();
    let reloaded = wait_for(Duration::from_secs(10), || {
        let j = d
            .exec_ok(["journalctl", "-u", "kubeha-sandbox-probe", "--no-pager"])
            .ok()?;
        (j.matches("Loading success").count() >= 2).then_some(())
    });
    assert!(reloaded.is_some(), "HAProxy reloads under the sandbox");
    assert_eq!(
        d.exec_ok([
            "systemctl",
            "show",
            "-p",
            "MainPID",
            "--value",
            "kubeha-sandbox-probe"
        ])
        .unwrap(),
        master,
        "the master survives the reload"
    );
    assert!(listening(d));
    d.exec_ok(["systemctl", "stop", "kubeha-sandbox-probe"])
        .unwrap();

    // The real systemd's opinion of the installed unit (man pages are
    // checked on the build host: the minimal root has no man-db).
    let verify = d
        .exec([
            "systemd-analyze",
            "verify",
            "--man=no",
            "kubeha-agent.service",
        ])
        .unwrap();
    assert!(
        verify.status.success() && verify.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&verify.stderr)
    );
    let threshold: f64 = include_str!("../../packaging/exposure-threshold")
        .trim()
        .parse()
        .expect("packaging/exposure-threshold holds a number");
    let security = d
        .exec(["systemd-analyze", "security", "kubeha-agent.service"])
        .unwrap();
    let text = String::from_utf8_lossy(&security.stdout);
    let exposure: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for kubeha-agent.service:")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no exposure in: {text}"));
    eprintln!("deb: systemd-analyze security (running unit): exposure {exposure}");
    assert!(
        exposure <= threshold,
        "exposure {exposure} above {threshold}"
    );
}

/// `kubeha-lab droplets --topology <topology>`: the lab on booted droplets
/// (README's way to see the package at work), `[haproxy]` as docs/install.md
/// has it, fake apiservers on the control planes. Fails unless every lb
/// droplet runs HAProxy with `config_ok` and all control planes UP, the
/// lab's client gets `/readyz` 200 through VIP:6443, the VIP holder's agent
/// is crashed with `kill -9`, the VIP moves, the client gets 200 through the
/// VIP again, and systemd restarts the agent.
fn lab_on_booted_droplets(topology: &str) {
    require_root();
    let deb = deb_path();
    let _g = kubeha_tests::lab::serial().expect("lab lock");
    let t = Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kubeha-lab"))
        .args(["droplets", "--topology", topology, "--deb"])
        .arg(&deb)
        .output()
        .expect("run kubeha-lab droplets");
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}{}", String::from_utf8_lossy(&out.stderr));
    eprintln!(
        "deb: kubeha-lab droplets --topology {topology}: {}",
        secs(t.elapsed())
    );
    assert!(out.status.success(), "kubeha-lab droplets failed");
    assert!(
        text.contains("systemd restarted the agent") && text.contains("NRestarts=1"),
        "{text}"
    );
    assert!(text.contains("held by"), "{text}");
    assert!(
        text.contains("client reached an apiserver through the VIP:")
            && text
                .contains("client reached an apiserver through the VIP again after the failover"),
        "{text}"
    );
    assert!(text.contains("running, config_ok"), "{text}");
    // Only this run's lab: other labs may run on the machine meanwhile.
    let ours: Vec<&str> = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("lab namespaces: "))
        .expect("kubeha-lab droplets names its namespaces")
        .split_whitespace()
        .collect();
    assert!(!ours.is_empty(), "{text}");
    let all = kubeha_tests::lab::netns::list_lab();
    let left: Vec<&&str> = ours
        .iter()
        .filter(|n| all.iter().any(|a| a == *n))
        .collect();
    assert!(left.is_empty(), "lab namespaces left behind: {left:?}");
}

/// The guide topology: 2 lb, 3 control planes, 1 worker.
#[test]
#[ignore = "needs root and the built .deb: run scripts/deb-check"]
fn lab_droplets_guide_haproxy() {
    lab_on_booted_droplets("guide");
}

/// The compact topology: 3 × control-plane + lb (HAProxy on the VIP, the
/// apiserver on the node address).
#[test]
#[ignore = "needs root and the built .deb: run scripts/deb-check"]
fn lab_droplets_compact_haproxy() {
    lab_on_booted_droplets("compact");
}

/// Issue 12 on booted droplets: the compact topology (3 × control-plane +
/// lb) bootstraps Kubernetes under the shipped unit. Each droplet gets the
/// package with apt, the test bed's kubeadm (fake-kubeadm over Debian's
/// etcd, tests/src/droplet/kube.rs) and the config of docs/install.md
/// step 4 (`[vip]`, empty `[haproxy]`, `[kubernetes]` with only
/// `control_plane_endpoint`). Fails unless exactly one `kubeadm init` ran,
/// both other nodes joined, every kubeadm run went through a transient
/// unit, etcd has 3 voting members, every `kubeha-ctl status` agrees
/// (members, VIP holder, init node, phase `joined`, HAProxy with 3 UP
/// backends), `GET /api/v1/nodes` through VIP:6443 lists the three nodes,
/// and again after `kill -9` of the VIP holder's agent (which systemd
/// restarts, and which comes back `joined` without a second init); no
/// bootstrap token in any journal or status.
#[test]
#[ignore = "needs root and the built .deb: run scripts/deb-check"]
fn lab_droplets_compact_kubernetes() {
    use kubeha_tests::droplet::kube;
    use kubeha_tests::fake_kubeadm::{etcd::EtcdClient, http};
    require_root();
    let t0 = Instant::now();
    // The cached root first: debootstrap needs no lock.
    let cache = kube_cache();
    let _serial = kubeha_tests::lab::serial().expect("lab lock");
    eprintln!("deb: lab lock after {}", secs(t0.elapsed()));
    let names = ["cp-0", "cp-1", "cp-2"];
    let net = TestNet::new("k", &["cp-0", "cp-1", "cp-2", "client"], 81).expect("test network");
    let (client_ns, _) = net.node("client");
    let client_ns = client_ns.to_string();
    let vip = "198.18.0.90";
    let endpoint = format!("{vip}:6443");
    let fakes = kube::KubeFakes {
        fake_kubeadm: std::path::Path::new(env!("CARGO_BIN_EXE_fake-kubeadm")),
        fake_apiserver: std::path::Path::new(env!("CARGO_BIN_EXE_fake-apiserver")),
    };
    let droplets = boot_nodes(&net, cache, &names, |d| {
        d.install_kube_fakes(&fakes)
            .unwrap_or_else(|e| panic!("test bed on {}: {e}", d.name()));
    });
    let all: Vec<&Droplet> = droplets.iter().collect();
    let by_name = |n: &str| *all.iter().find(|d| d.name() == n).expect("droplet");

    // What agent/src/transient.rs relies on, on this systemd: the exit
    // status and stderr come back through `--wait --pipe`, `RuntimeMaxSec`
    // ends a run, `$$` is a literal `$`.
    let d0 = by_name("cp-0");
    let run = |extra: &str, script: &str| {
        let mut argv = vec![
            "systemd-run",
            "--wait",
            "--pipe",
            "--collect",
            "--service-type=exec",
        ];
        argv.extend(extra.split_whitespace());
        argv.extend(["--", "/bin/sh", "-c", script]);
        let t = Instant::now();
        let out = d0.exec(&argv).unwrap();
        (out, t.elapsed())
    };
    let (out, _) = run("", "echo out; echo 'the cause' >&2; exit 3");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert!(err.contains("the cause"), "{err}");
    let (out, took) = run("--property=RuntimeMaxSec=1", "sleep 30");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success() && took < Duration::from_secs(15),
        "{took:?} {err}"
    );
    assert!(err.contains("Finished with result: timeout"), "{err}");
    // systemd expands `${X}` itself (so the agent escapes every `$`)…
    let (out, _) = run("--setenv=X=expanded", "printf '%s\\n' '${X}'");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "expanded\n");
    // …and passes `$$` on as `$`.
    let (out, _) = run("--setenv=X=expanded", "printf '%s\\n' 'a$$X'");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "a$X\n");

    // docs/install.md steps 4 and 5.
    d0.exec_ok(["kubeha-ctl", "keygen", "--out", "/etc/kubeha/cluster.key"])
        .unwrap();
    d0.exec_ok(["kubeha-ctl", "keygen", "--out", "/etc/kubeha/control.key"])
        .unwrap();
    let key = d0.read_file("/etc/kubeha/cluster.key").unwrap();
    let control_key = d0.read_file("/etc/kubeha/control.key").unwrap();
    let seeds: Vec<String> = names
        .iter()
        .map(|n| format!("{}:7946", net.node(n).1))
        .collect();
    let seeds: Vec<&str> = seeds.iter().map(String::as_str).collect();
    for d in &all {
        let (_, addr) = net.node(d.name());
        let conf = config(
            d.name(),
            addr,
            &seeds,
            &names,
            &format!(
                "roles = [\"control-plane\", \"lb\"]\n\n[vip]\naddress = \"{vip}/32\"\ninterface = \"eth0\"\n\n\
                 [haproxy]\n\n[kubernetes]\ncontrol_plane_endpoint = \"{endpoint}\"\n"
            ),
        );
        d.write_file("/etc/kubeha/kubeha.toml", conf.as_bytes(), 0o644)
            .unwrap();
        if d.name() != "cp-0" {
            d.write_file("/etc/kubeha/cluster.key", key.as_bytes(), 0o600)
                .unwrap();
            d.write_file("/etc/kubeha/control.key", control_key.as_bytes(), 0o600)
                .unwrap();
        }
        d.exec_ok(["kubeha-agent", "--check-config"])
            .unwrap_or_else(|e| panic!("{}: {e}", d.name()));
    }
    let start = Instant::now();
    for d in &all {
        d.exec_ok(["systemctl", "start", "kubeha-agent"]).unwrap();
    }
    let phase = |d: &Droplet| -> String {
        d.status()
            .ok()
            .and_then(|s| s["kubernetes"]["phase"].as_str().map(str::to_string))
            .unwrap_or_default()
    };
    let dump = || -> String {
        let mut out = String::new();
        for d in &all {
            out += &format!(
                "--- {}: {}\n{}\n",
                d.name(),
                d.status()
                    .map(|s| s["kubernetes"].to_string())
                    .unwrap_or_else(|e| e.to_string()),
                d.exec_ok([
                    "journalctl",
                    "--no-pager",
                    "-q",
                    "-n",
                    "40",
                    "-u",
                    "kubeha-agent",
                    "-u",
                    "kubeha-*",
                ])
                .unwrap_or_default()
            );
        }
        out
    };
    let joined = wait_for(Duration::from_secs(300), || {
        all.iter()
            .all(|d| phase(d) == "joined")
            .then(|| start.elapsed())
    })
    .unwrap_or_else(|| panic!("not every node joined within 300 s:\n{}", dump()));
    eprintln!(
        "deb: 3 droplets `joined` {} after `systemctl start`",
        secs(joined)
    );

    // Exactly one init in the cluster, both others joined (fake-kubeadm's
    // call logs), every init/join in a transient unit of the agent.
    let calls: Vec<(String, Value)> = all
        .iter()
        .flat_map(|d| {
            d.kubeadm_calls()
                .into_iter()
                .map(|c| (d.name().to_string(), c))
        })
        .collect();
    let inits: Vec<&(String, Value)> = calls.iter().filter(|(_, c)| kube::is_init(c)).collect();
    assert_eq!(inits.len(), 1, "one kubeadm init: {inits:?}");
    assert_eq!(inits[0].1["exit"], 0, "{inits:?}");
    let init_node = inits[0].0.clone();
    // fake-kubeadm logs a token- or key-shaped argument as `<redacted>`:
    // none reached a kubeadm command line (they travel in 0600 files).
    for (n, c) in &calls {
        assert!(
            !c["argv"].to_string().contains("<redacted>"),
            "{n}: a secret on kubeadm's command line: {c}"
        );
    }
    for d in &all {
        let ok_joins = calls
            .iter()
            .filter(|(n, c)| n == d.name() && c["argv"][1] == "join" && c["exit"] == 0)
            .count();
        let expect = usize::from(d.name() != init_node);
        assert_eq!(ok_joins, expect, "successful joins on {}", d.name());
        let journal = d
            .exec_ok(["journalctl", "--no-pager", "-q", "-o", "cat"])
            .unwrap();
        let op = if d.name() == init_node {
            "kubeadm init --config"
        } else {
            "kubeadm join --config"
        };
        assert!(
            journal
                .lines()
                .any(|l| l.contains("Started kubeha-kubeadm-") && l.contains(op)),
            "{}: no transient unit ran `{op}`:\n{journal}",
            d.name()
        );
    }

    // Host preparation ran outside the sandbox too (its transient unit
    // wrote /etc and restarted containerd).
    for d in &all {
        let s = d.status().unwrap();
        assert_eq!(
            s["preflight"]["ok"],
            true,
            "{}: {}",
            d.name(),
            s["preflight"]
        );
        let applied = s["preflight"]["applied"].to_string();
        assert!(
            applied.contains("systemctl restart containerd"),
            "{}: {applied}",
            d.name()
        );
        assert!(
            d.read_file("/etc/containerd/config.toml")
                .unwrap()
                .contains("SystemdCgroup = true"),
            "{}",
            d.name()
        );
        assert_eq!(
            d.exec_ok(["cat", "/proc/sys/net/ipv4/ip_forward"])
                .unwrap()
                .trim(),
            "1",
            "{}",
            d.name()
        );
    }

    // etcd: three voting members, read with a control plane's client
    // certificate from the client's namespace.
    let pki = by_name(&init_node).host_path("/etc/kubernetes/pki");
    let etcd_urls: Vec<String> = names
        .iter()
        .map(|n| format!("https://{}:2379", net.node(n).1))
        .collect();
    let etcd = EtcdClient::from_files(
        etcd_urls,
        &pki.join("etcd/ca.crt"),
        &pki.join("apiserver-etcd-client.crt"),
        &pki.join("apiserver-etcd-client.key"),
    )
    .expect("etcd client");
    let etcd2 = etcd.clone();
    let members = kubeha_tests::lab::netns::run_in(&client_ns, move || etcd2.member_list())
        .unwrap()
        .expect("etcd member list");
    let mut voting: Vec<(String, bool)> = members
        .iter()
        .map(|m| (m.name.clone(), m.is_learner))
        .collect();
    voting.sort();
    assert_eq!(
        voting,
        names
            .iter()
            .map(|n| (n.to_string(), false))
            .collect::<Vec<_>>(),
        "3 voting etcd members"
    );

    // Every status agrees.
    let agree = || -> Option<String> {
        let statuses: Vec<Value> = all.iter().map(|d| d.status().ok()).collect::<Option<_>>()?;
        let holder = statuses[0]["vip"]["holder"].as_str()?.to_string();
        statuses
            .iter()
            .all(|s| {
                let m = members_of(s);
                m.len() == 3
                    && m.iter().all(|(_, alive)| *alive)
                    && s["vip"]["holder"] == holder.as_str()
                    && s["kubernetes"]["phase"] == "joined"
                    && s["kubernetes"]["init_node"] == init_node.as_str()
                    && s["quorum"]["ok"] == true
                    && droplet::HaproxyState::from_status(s).is_some_and(|h| h.serves(&names))
            })
            .then_some(holder)
    };
    let holder = wait_for(Duration::from_secs(60), agree)
        .unwrap_or_else(|| panic!("statuses disagree:\n{}", dump()));
    // Under the shipped unit each agent reads etcd itself (kubeadm's
    // apiserver-etcd-client certificate): three voting, healthy members, one
    // leader, in every status.
    let etcd_shown = || -> Option<()> {
        all.iter()
            .all(|d| {
                let Ok(s) = d.status() else { return false };
                let e = &s["kubernetes"]["etcd"];
                let m = e["members"].as_array().cloned().unwrap_or_default();
                m.len() == 3
                    && e.get("error").is_none()
                    && m.iter()
                        .all(|x| x["learner"] == false && x["healthy"] == true)
                    && m.iter().filter(|x| x["leader"] == true).count() == 1
            })
            .then_some(())
    };
    wait_for(Duration::from_secs(30), etcd_shown)
        .unwrap_or_else(|| panic!("etcd not shown in every status:\n{}", dump()));

    // The API through the VIP: HAProxy on the holder, an apiserver behind it.
    let ca = std::fs::read_to_string(pki.join("ca.crt")).unwrap();
    let tls = http::tls_config(&ca, None).unwrap();
    let nodes_via_vip = {
        let endpoint = endpoint.clone();
        let client_ns = client_ns.clone();
        move || -> Result<Vec<String>, String> {
            let (endpoint, tls) = (endpoint.clone(), tls.clone());
            let r = kubeha_tests::lab::netns::run_in(&client_ns, move || {
                http::request(
                    &endpoint,
                    tls,
                    "GET",
                    "/api/v1/nodes",
                    &[],
                    None,
                    Duration::from_secs(3),
                )
            })
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
            if r.status != 200 {
                return Err(format!("GET /api/v1/nodes: {} {}", r.status, r.text()));
            }
            let list: Value = serde_json::from_slice(&r.body).map_err(|e| e.to_string())?;
            let mut names: Vec<String> = list["items"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|n| n["metadata"]["name"].as_str().map(str::to_string))
                .collect();
            names.sort();
            Ok(names)
        }
    };
    let want: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut last = String::new();
    let first = wait_for(Duration::from_secs(30), || match nodes_via_vip() {
        Ok(n) if n == want => Some(()),
        Ok(n) => {
            last = format!("{n:?}");
            None
        }
        Err(e) => {
            last = e;
            None
        }
    });
    assert!(
        first.is_some(),
        "GET /api/v1/nodes through {endpoint}: {last}"
    );
    eprintln!("deb: GET /api/v1/nodes through {endpoint} (held by {holder}): {want:?}");

    // kill -9 of the VIP holder's agent: the VIP moves, the API answers
    // through it again, systemd restarts the agent, which comes back
    // `joined` without a second init.
    let victim = by_name(&holder);
    let killed_at = Instant::now();
    let old_pid = victim.kill_agent().unwrap();
    let others: Vec<&&Droplet> = all.iter().filter(|d| d.name() != holder).collect();
    let new_holder = wait_for(Duration::from_secs(30), || {
        let h = others[0].status().ok()?["vip"]["holder"]
            .as_str()?
            .to_string();
        (h != holder).then_some(h)
    })
    .unwrap_or_else(|| panic!("the VIP did not move from {holder}:\n{}", dump()));
    let moved = killed_at.elapsed();
    let mut last = String::new();
    let again = wait_for(Duration::from_secs(30), || match nodes_via_vip() {
        Ok(n) if n == want => Some(killed_at.elapsed()),
        Ok(n) => {
            last = format!("{n:?}");
            None
        }
        Err(e) => {
            last = e;
            None
        }
    })
    .unwrap_or_else(|| panic!("no API through the VIP after the failover: {last}"));
    eprintln!(
        "deb: kill -9 of {holder}'s agent (pid {old_pid}): VIP held by {new_holder} after {}, \
         GET /api/v1/nodes through the VIP again after {}",
        secs(moved),
        secs(again)
    );
    wait_for(Duration::from_secs(30), || {
        let p = victim.agent_pid().ok()??;
        (p != old_pid).then_some(())
    })
    .expect("systemd restarts the killed agent");
    assert_eq!(victim.unit_property("NRestarts").unwrap(), "1");
    wait_for(Duration::from_secs(60), || {
        (phase(victim) == "joined").then_some(())
    })
    .unwrap_or_else(|| panic!("{holder} is not `joined` after its restart:\n{}", dump()));
    wait_for(Duration::from_secs(60), agree)
        .unwrap_or_else(|| panic!("statuses disagree after the restart:\n{}", dump()));
    let inits_after = all
        .iter()
        .flat_map(|d| d.kubeadm_calls())
        .filter(kube::is_init)
        .count();
    assert_eq!(inits_after, 1, "no second init after the restart");

    // No bootstrap token in any journal or status; no join config left.
    let tokens: Vec<String> =
        kubeha_tests::lab::netns::run_in(&client_ns, move || etcd.list("/fake-kubeadm/tokens/"))
            .unwrap()
            .expect("tokens in etcd")
            .into_iter()
            .filter_map(|(k, v)| {
                let id = k.rsplit('/').next()?.to_string();
                let v: Value = serde_json::from_slice(&v).ok()?;
                Some(format!("{id}.{}", v["secret"].as_str()?))
            })
            .collect();
    assert!(!tokens.is_empty(), "the cluster has bootstrap tokens");
    for d in &all {
        let journal = d
            .exec_ok(["journalctl", "--no-pager", "-q", "-o", "verbose"])
            .unwrap();
        let status = d.status().unwrap().to_string();
        for t in &tokens {
            let secret = t.split('.').nth(1).unwrap_or(t);
            assert!(
                !journal.contains(secret),
                "{}: a token in the journal",
                d.name()
            );
            assert!(
                !status.contains(secret),
                "{}: a token in the status",
                d.name()
            );
        }
        assert!(
            !d.host_path("/var/lib/kubeha/kubeadm/join.yaml").exists(),
            "{}: the join config is removed after the join",
            d.name()
        );
    }
    eprintln!(
        "deb: lab_droplets_compact_kubernetes took {}",
        secs(t0.elapsed())
    );

    for d in &all {
        d.begin_poweroff();
    }
}

/// `(name, alive)` of a status document's members.
fn members_of(status: &Value) -> Vec<(String, bool)> {
    members(status)
        .into_iter()
        .map(|(n, alive, _, _)| (n, alive))
        .collect()
}
