//! What the agents say: statuses, agreement on members and on one VIP
//! holder.

use super::*;
use kubeha_core::timing::Timing;

impl Lab {
    /// Statuses of every node whose agent answers.
    pub fn statuses(&self) -> Vec<(String, Result<Status>)> {
        self.nodes()
            .iter()
            .map(|n| {
                let s = agent::status(&NodePaths::new(self.dir(), &n.name).socket());
                (n.name.clone(), s)
            })
            .collect()
    }

    /// Wait until every agent answers, sees every member alive and quorum,
    /// all agree on one VIP holder, and only that node has the VIP. Returns
    /// the holder.
    pub fn wait_converged(&self, timeout: Duration) -> Result<String> {
        let start = Instant::now();
        let mut last = String::from("no status yet");
        while start.elapsed() < timeout {
            match self.converged() {
                Ok(h) => return Ok(h),
                Err(why) => last = why,
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(LabError::Timeout {
            what: format!("the lab to converge (last: {last})"),
            secs: timeout.as_secs_f64(),
        })
    }

    /// Wait until every node whose agent runs answers, sees exactly the
    /// nodes whose agents run as alive (and the others not), and has quorum
    /// if enough voters run. Returns how long it took.
    pub fn wait_members(&self, timeout: Duration) -> Result<Duration> {
        let start = Instant::now();
        let mut last = String::from("no status yet");
        while start.elapsed() < timeout {
            match self.members_agree() {
                Ok(()) => return Ok(start.elapsed()),
                Err(why) => last = why,
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(LabError::Timeout {
            what: format!("membership to settle (last: {last})"),
            secs: timeout.as_secs_f64(),
        })
    }

    /// `Ok` when every running agent sees the running agents alive and no
    /// other member alive, else why not.
    pub fn members_agree(&self) -> std::result::Result<(), String> {
        let running: Vec<String> = self
            .nodes()
            .iter()
            .filter(|n| self.node(&n.name).is_ok_and(|x| x.agent_pid().is_some()))
            .map(|n| n.name.clone())
            .collect();
        for name in &running {
            let st = self
                .node(name)
                .map_err(|e| e.to_string())?
                .status()
                .map_err(|e| format!("`{name}`: {e}"))?;
            let mut alive: Vec<String> = st
                .members
                .iter()
                .filter(|m| m.alive)
                .map(|m| m.name.clone())
                .collect();
            alive.sort();
            let mut want = running.clone();
            want.sort();
            if alive != want {
                return Err(format!("`{name}` sees {alive:?} alive, running: {want:?}"));
            }
        }
        Ok(())
    }

    /// `Ok(holder)` when converged, else why not.
    pub fn converged(&self) -> std::result::Result<String, String> {
        let n = self.nodes().len();
        let mut holder: Option<String> = None;
        for (name, st) in self.statuses() {
            let st = st.map_err(|e| format!("`{name}`: {e}"))?;
            let alive = st.members.iter().filter(|m| m.alive).count();
            if alive != n {
                return Err(format!("`{name}` sees {alive} of {n} members alive"));
            }
            if !st.quorum.ok {
                return Err(format!("`{name}` has no quorum"));
            }
            if let Some(v) = &st.vip {
                let h = v
                    .holder
                    .clone()
                    .ok_or_else(|| format!("`{name}` knows no VIP holder"))?;
                match &holder {
                    None => holder = Some(h),
                    Some(x) if *x == h => {}
                    Some(x) => {
                        return Err(format!("`{name}` says `{h}` holds the VIP, others `{x}`"));
                    }
                }
            }
        }
        let holder = holder.ok_or("no node reports a VIP")?;
        if self.vip_provider() == VipProvider::Digitalocean {
            let on = self.vip_holders().map_err(|e| e.to_string())?;
            if !on.is_empty() {
                return Err(format!("a Reserved IP on interfaces: {on:?}"));
            }
            let routed = self.cloud_routed_node().map_err(|e| e.to_string())?;
            if routed.as_deref() != Some(holder.as_str()) {
                return Err(format!(
                    "agents say `{holder}` holds the VIP, the cloud routes it to {routed:?}"
                ));
            }
            return Ok(holder);
        }
        let on = self.vip_holders().map_err(|e| e.to_string())?;
        if on != [holder.clone()] {
            return Err(format!(
                "agents say `{holder}` holds the VIP, interfaces: {on:?}"
            ));
        }
        Ok(holder)
    }

    /// The VIP candidate the agents settle on: among lb nodes whose agent
    /// runs, the highest priority, then the lower name (the agents' order).
    pub fn preferred_holder(&self) -> Option<String> {
        self.lb_nodes()
            .into_iter()
            .filter(|n| self.node(&n.name).is_ok_and(|n| n.agent_pid().is_some()))
            .max_by(|a, b| {
                a.priority
                    .cmp(&b.priority)
                    .then_with(|| b.name.cmp(&a.name))
            })
            .map(|n| n.name.clone())
    }

    /// [`Lab::wait_converged`], and no move is pending: the holder is the
    /// preferred candidate, or has stayed the holder longer than a
    /// preemption takes (the preferred one may be unhealthy or drained, which
    /// the lab does not see). Tests that need one holder for a while start
    /// here: right after `up`, the first holder is whoever asked first, and a
    /// better one takes over `preempt_after` later.
    pub fn wait_settled(&self, timeout: Duration) -> Result<String> {
        let t = match self.timing() {
            "fast" => Timing::FAST,
            _ => Timing::DEFAULT,
        };
        let settle = t.preempt_after + 2 * t.lease;
        let start = Instant::now();
        let mut seen: Option<(String, Instant)> = None;
        let mut last = String::from("no status yet");
        while start.elapsed() < timeout {
            match self.converged() {
                Ok(h) => {
                    let since = match &seen {
                        Some((x, at)) if *x == h => *at,
                        _ => {
                            seen = Some((h.clone(), Instant::now()));
                            Instant::now()
                        }
                    };
                    if self.preferred_holder().as_deref() == Some(h.as_str())
                        || since.elapsed() >= settle
                    {
                        return Ok(h);
                    }
                    last = format!("`{h}` holds, preferred {:?}", self.preferred_holder());
                }
                Err(why) => {
                    seen = None;
                    last = why;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(LabError::Timeout {
            what: format!("the lab to settle on one VIP holder (last: {last})"),
            secs: timeout.as_secs_f64(),
        })
    }
}
