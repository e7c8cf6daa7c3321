//! One node of a lab: its agent, keepalived, responder, cut and heal.

use super::*;

/// One node of a lab.
pub struct Node<'a> {
    pub(super) lab: &'a Lab,
    pub(super) info: &'a NodeInfo,
}

impl Node<'_> {
    pub fn info(&self) -> &NodeInfo {
        self.info
    }
    pub fn name(&self) -> &str {
        &self.info.name
    }
    pub fn ns(&self) -> &str {
        &self.info.ns
    }
    pub fn addr(&self) -> Ipv4Addr {
        self.info.addr
    }
    pub fn paths(&self) -> NodePaths {
        NodePaths::new(self.lab.dir(), &self.info.name)
    }
    pub fn socket(&self) -> PathBuf {
        self.paths().socket()
    }
    pub fn log(&self) -> PathBuf {
        self.paths().agent_log()
    }

    fn with_slots<T>(&self, f: impl FnOnce(&mut Slots) -> T) -> T {
        let mut slots = self.lab.sh.slots.lock().unwrap_or_else(|e| e.into_inner());
        f(slots.entry(self.info.name.clone()).or_default())
    }

    fn save(&self) -> Result<()> {
        self.lab.sh.save()
    }

    // ------------------------------------------------------------ agent

    /// Start `kubeha-agent --config <run>/<node>/kubeha.toml` in the node's
    /// namespace (via `ip netns exec`, so it sees its own /sys as on a
    /// droplet), output appended to `agent.log`.
    pub fn start(&self) -> Result<()> {
        if self.agent_pid().is_some() {
            return Err(LabError::node(self.name(), "the agent is already running"));
        }
        let bin = self.lab.bin_dir().join("kubeha-agent");
        if !bin.exists() {
            return Err(LabError::MissingTool {
                tool: bin.display().to_string(),
                hint: "cargo build -p kubeha-agent, or pass --bin-dir",
            });
        }
        let p = self.paths();
        let (program, args) = if self.lab.is_kubernetes() && p.tools().is_dir() {
            kube::agent_argv(&bin, &p)
        } else {
            (
                bin.clone(),
                vec![
                    "--config".to_string(),
                    p.config().to_string_lossy().into_owned(),
                ],
            )
        };
        let sp = spawn_ns(self.ns(), &program, &args, &p.agent_log())?;
        tracing::debug!(node = self.name(), pid = sp.rec.pid, "agent started");
        self.with_slots(|s| s.agent = Some(sp));
        self.save()
    }

    /// The agent's pid, if it runs.
    pub fn agent_pid(&self) -> Option<i32> {
        self.with_slots(|s| {
            let alive = s.agent.as_mut().is_some_and(|a| !a.reap());
            if !alive {
                s.agent = None;
            }
            s.agent.as_ref().map(|a| a.rec.pid)
        })
    }

    /// `kill -9` the agent (a crash) and wait until it is gone. The node's
    /// responder stays: use [`Node::crash`] for a whole-node crash.
    pub fn kill(&self) -> Result<()> {
        self.signal_agent(libc::SIGKILL, Duration::from_secs(5))
    }

    /// SIGTERM the agent (a clean stop) and wait until it exited.
    pub fn stop(&self) -> Result<()> {
        self.signal_agent(libc::SIGTERM, Duration::from_secs(15))
    }

    /// Wait until the agent exited (after a signal sent without waiting);
    /// SIGKILL after `grace`.
    pub fn wait_agent_exit(&self, grace: Duration) -> Result<()> {
        self.signal_agent(0, grace)
    }

    /// SIGKILL the agent's whole process group (the agent and the children
    /// it started, such as its VIP guardian) without waiting.
    pub fn kill_agent_group_nowait(&self) -> bool {
        self.with_slots(|s| {
            s.agent
                .as_ref()
                .is_some_and(|a| a.rec.signal_group(libc::SIGKILL))
        })
    }

    /// Send `sig` to the agent without waiting; returns whether it was sent.
    pub fn signal_agent_nowait(&self, sig: i32) -> bool {
        self.with_slots(|s| s.agent.as_ref().is_some_and(|a| a.rec.signal(sig)))
    }

    fn signal_agent(&self, sig: i32, grace: Duration) -> Result<()> {
        let Some(mut a) = self.with_slots(|s| s.agent.take()) else {
            return Err(LabError::node(self.name(), "no agent running"));
        };
        if sig != 0 {
            a.rec.signal(sig);
        }
        let gone = a.wait_gone(grace);
        self.save()?;
        if gone {
            Ok(())
        } else {
            Err(LabError::node(
                self.name(),
                format!("agent pid {} did not exit", a.rec.pid),
            ))
        }
    }

    /// Whole node crash: kill -9 the agent and the keepalived group, stop
    /// the responder (nothing answers on this node any more).
    pub fn crash(&self) -> Result<()> {
        self.stop_responder();
        if self.agent_pid().is_some() {
            self.kill()?;
        }
        if self.keepalived_pid().is_some() {
            self.kill_keepalived()?;
        }
        Ok(())
    }

    pub fn status(&self) -> Result<Status> {
        agent::status(&self.socket())
    }

    /// Poll the agent's status until it answers.
    pub fn wait_ready(&self, timeout: Duration) -> Result<Status> {
        let end = Instant::now() + timeout;
        loop {
            match self.status() {
                Ok(s) => return Ok(s),
                Err(e) if Instant::now() >= end => {
                    return Err(LabError::Timeout {
                        what: format!("`{}`'s agent to answer ({e})", self.name()),
                        secs: timeout.as_secs_f64(),
                    });
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// `kubeha-ctl drain` through the socket.
    pub fn drain(&self) -> Result<String> {
        agent::command(&self.socket(), Request::Drain)
    }

    pub fn undrain(&self) -> Result<String> {
        agent::command(&self.socket(), Request::Undrain)
    }

    // ------------------------------------------------------------ network

    /// Detach the node's bridge port: a true partition, the node keeps its
    /// carrier and sees nothing wrong on its link.
    pub fn cut(&self) -> Result<()> {
        cmd::ip_n(
            self.lab.switch_ns(),
            ["link", "set", &self.info.port, "nomaster"],
        )
        .map(|_| ())
    }

    /// Take the bridge port down: the node sees NO-CARRIER.
    pub fn cut_carrier(&self) -> Result<()> {
        cmd::ip_n(
            self.lab.switch_ns(),
            ["link", "set", &self.info.port, "down"],
        )
        .map(|_| ())
    }

    /// Undo [`Node::cut`] or [`Node::cut_carrier`].
    pub fn heal(&self) -> Result<()> {
        cmd::ip_n(
            self.lab.switch_ns(),
            ["link", "set", &self.info.port, "master", spec::BRIDGE, "up"],
        )
        .map(|_| ())
    }

    /// Is the VIP on one of this node's interfaces?
    pub fn has_vip(&self) -> Result<bool> {
        let mut s = netlink::NlSocket::open_in(self.ns())?;
        let addrs = s.ipv4_addrs().map_err(|source| LabError::Netns {
            ns: self.ns().to_string(),
            what: "address dump",
            source,
        })?;
        Ok(addrs.iter().any(|a| a.addr == VIP))
    }

    // ------------------------------------------------------------ responder

    pub fn start_responder(&self) -> Result<()> {
        let Some(bind) = self.lab.responder_bind(self.info) else {
            return Err(LabError::node(self.name(), "this node gets no responder"));
        };
        let r = Responder::start(self.ns(), self.name(), bind)?;
        self.lab
            .sh
            .responders
            .lock()
            .unwrap()
            .insert(self.info.name.clone(), r);
        Ok(())
    }

    /// Stop the responder; returns whether one ran.
    pub fn stop_responder(&self) -> bool {
        let r = self
            .lab
            .sh
            .responders
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(self.name());
        r.map(Responder::stop).is_some()
    }

    pub fn responder_running(&self) -> bool {
        self.lab
            .sh
            .responders
            .lock()
            .unwrap()
            .contains_key(self.name())
    }

    // ------------------------------------------------------------ other daemons

    /// Start another daemon in the node's namespace (e.g. a fake apiserver
    /// or HAProxy by hand), tracked under `label` like the agent: killed on
    /// teardown, output appended to `<run>/<node>/<label>.log`. Returns its pid.
    pub fn spawn(&self, label: &str, program: &Path, args: &[String]) -> Result<i32> {
        if self.spawned_pid(label).is_some() {
            return Err(LabError::node(
                self.name(),
                format!("`{label}` is already running"),
            ));
        }
        let log = self.paths().dir.join(format!("{label}.log"));
        let sp = spawn_ns(self.ns(), program, args, &log)?;
        let pid = sp.rec.pid;
        self.with_slots(|s| s.extra.insert(label.to_string(), sp));
        self.save()?;
        Ok(pid)
    }

    /// The pid of the daemon started as `label`, if it runs.
    pub fn spawned_pid(&self, label: &str) -> Option<i32> {
        self.with_slots(|s| {
            let alive = s.extra.get_mut(label).is_some_and(|a| !a.reap());
            if !alive {
                s.extra.remove(label);
            }
            s.extra.get(label).map(|a| a.rec.pid)
        })
    }

    /// Signal the daemon started as `label` (its whole process group) and
    /// wait until it is gone (SIGKILL after `grace`).
    pub fn stop_spawned(&self, label: &str, sig: i32, grace: Duration) -> Result<()> {
        let Some(mut sp) = self.with_slots(|s| s.extra.remove(label)) else {
            return Err(LabError::node(self.name(), format!("no `{label}` running")));
        };
        sp.rec.signal_group(sig);
        let gone = sp.wait_gone(grace);
        self.save()?;
        if gone {
            Ok(())
        } else {
            Err(LabError::node(
                self.name(),
                format!("`{label}` did not exit"),
            ))
        }
    }

    // ------------------------------------------------------------ keepalived

    /// Start keepalived (VRRP only) with `setting`; returns once its VRRP
    /// child runs.
    pub fn start_keepalived(&self, setting: KaSetting) -> Result<()> {
        cmd::require_tool("keepalived", "apt-get install -y keepalived")?;
        if self.keepalived_pid().is_some() {
            return Err(LabError::node(self.name(), "keepalived is already running"));
        }
        let priority = self
            .info
            .priority
            .ok_or_else(|| LabError::node(self.name(), "not an lb node: no VIP priority"))?;
        let p = self.paths();
        let conf = p.keepalived_conf();
        let text = keepalived::render(setting, self.name(), priority, VIP, spec::IFACE);
        std::fs::write(&conf, text).map_err(|e| LabError::io(&conf, e))?;
        let pid_file = p.dir.join("keepalived.pid");
        let vrrp_pid_file = p.dir.join("keepalived-vrrp.pid");
        for f in [&pid_file, &vrrp_pid_file] {
            // Stale after a kill -9; a leftover would fool the wait below.
            let _ = std::fs::remove_file(f);
        }
        let args = keepalived::args(
            &conf.to_string_lossy(),
            &pid_file.to_string_lossy(),
            &vrrp_pid_file.to_string_lossy(),
        );
        let log = p.keepalived_log();
        let mut sp = spawn_ns(self.ns(), Path::new("keepalived"), &args, &log)?;
        let parent = sp.rec;
        let mut child = None;
        let ok = wait_until(Duration::from_secs(10), Duration::from_millis(10), || {
            child = std::fs::read_to_string(&vrrp_pid_file)
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok())
                .and_then(ProcRecord::of)
                .filter(|r| r.alive());
            child.is_some() || sp.reap()
        });
        if !ok || child.is_none() {
            parent.signal_group(libc::SIGKILL);
            sp.wait_gone(Duration::from_secs(2));
            return Err(LabError::node(
                self.name(),
                format!(
                    "keepalived did not start its VRRP child (see {})",
                    log.display()
                ),
            ));
        }
        self.with_slots(|s| {
            s.keepalived = Some(sp);
            s.keepalived_vrrp = child;
        });
        self.save()
    }

    pub fn keepalived_pid(&self) -> Option<i32> {
        self.with_slots(|s| {
            let alive = s.keepalived.as_mut().is_some_and(|a| !a.reap())
                || s.keepalived_vrrp.is_some_and(|v| v.alive());
            if !alive {
                s.keepalived = None;
                s.keepalived_vrrp = None;
            }
            s.keepalived.as_ref().map(|a| a.rec.pid)
        })
    }

    /// A keepalived crash: kill -9 its whole process group. (Killing only
    /// the parent is not a crash: the VRRP child notices and stops cleanly.)
    pub fn kill_keepalived(&self) -> Result<()> {
        self.keepalived_signal(true, libc::SIGKILL, Duration::from_secs(5))
    }

    /// Send the whole keepalived group SIGKILL without waiting.
    pub fn kill_keepalived_nowait(&self) -> bool {
        self.with_slots(|s| {
            s.keepalived
                .as_ref()
                .is_some_and(|k| k.rec.signal_group(libc::SIGKILL))
        })
    }

    /// Send keepalived's parent SIGTERM without waiting (a clean stop: it
    /// sends a priority-0 advert).
    pub fn term_keepalived_nowait(&self) -> bool {
        self.with_slots(|s| {
            s.keepalived
                .as_ref()
                .is_some_and(|k| k.rec.signal(libc::SIGTERM))
        })
    }

    /// SIGTERM keepalived and wait until both processes are gone.
    pub fn stop_keepalived(&self) -> Result<()> {
        self.keepalived_signal(false, libc::SIGTERM, Duration::from_secs(10))
    }

    /// Wait until keepalived (both processes) is gone, killing the group
    /// after `grace`.
    pub fn wait_keepalived_gone(&self, grace: Duration) -> Result<()> {
        self.keepalived_signal(false, 0, grace)
    }

    fn keepalived_signal(&self, group: bool, sig: i32, grace: Duration) -> Result<()> {
        let (k, v) = self.with_slots(|s| (s.keepalived.take(), s.keepalived_vrrp.take()));
        let Some(mut k) = k else {
            return Err(LabError::node(self.name(), "no keepalived running"));
        };
        if sig != 0 {
            if group {
                k.rec.signal_group(sig);
            } else {
                k.rec.signal(sig);
            }
        }
        let mut gone = k.wait_gone(grace);
        if let Some(v) = v {
            gone &= wait_until(grace, Duration::from_millis(5), || !v.alive())
                || (v.signal(libc::SIGKILL)
                    && wait_until(Duration::from_secs(2), Duration::from_millis(5), || {
                        !v.alive()
                    }));
        }
        self.save()?;
        if gone {
            Ok(())
        } else {
            Err(LabError::node(self.name(), "keepalived did not exit"))
        }
    }
}
