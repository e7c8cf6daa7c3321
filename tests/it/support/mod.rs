//! Shared helpers of the integration tests: real agent processes on
//! loopback addresses, killed by PID when the test ends (also on panic).

#![allow(dead_code)]

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kubeha_core::api::Status;

/// A workspace binary, built by `cargo build --workspace` next to the tests.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/it-<hash> -> target/<profile>/<name>
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace --bins` (same profile) before the tests",
        p.display()
    );
    p
}

/// Poll `cond` every 10 ms until it holds or `limit` passes.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if cond() {
            return Some(start.elapsed());
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A child process killed (SIGKILL, by PID) and reaped when dropped.
pub struct KillOnDrop(pub Child);

impl KillOnDrop {
    pub fn pid(&self) -> i32 {
        self.0.id() as i32
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn write_key(path: &Path, raw: [u8; 32]) {
    std::fs::write(path, kubeha_core::frame::Key::from_bytes(raw).to_base64()).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// Agents on 127.<block>.0.<10+i>; `block` keeps parallel tests apart.
pub struct LoopbackCluster {
    pub dir: tempfile::TempDir,
    pub block: u8,
    pub names: Vec<String>,
    pub agents: Vec<Option<KillOnDrop>>,
    pub voters: Vec<String>,
}

impl LoopbackCluster {
    pub fn new(block: u8, n: usize) -> LoopbackCluster {
        let dir = tempfile::tempdir().unwrap();
        write_key(&dir.path().join("cluster.key"), [7; 32]);
        write_key(&dir.path().join("control.key"), [77; 32]);
        let names: Vec<String> = (1..=n).map(|i| format!("n{i}")).collect();
        let voters = names.iter().take(3.min(n)).cloned().collect();
        LoopbackCluster {
            dir,
            block,
            agents: names.iter().map(|_| None).collect(),
            names,
            voters,
        }
    }

    pub fn ip(&self, i: usize) -> String {
        format!("127.{}.0.{}", self.block, 10 + i)
    }

    pub fn node_dir(&self, i: usize) -> PathBuf {
        let d = self.dir.path().join(&self.names[i]);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    pub fn socket(&self, i: usize) -> PathBuf {
        self.node_dir(i).join("kubeha.sock")
    }

    /// The control key every voter holds.
    pub fn control_key(&self) -> PathBuf {
        self.dir.path().join("control.key")
    }

    /// The config of node `i`; `key_file` may point elsewhere. Voters get
    /// the control key.
    pub fn config(&self, i: usize, key_file: &Path) -> String {
        let seeds: Vec<String> = (0..self.names.len().min(2))
            .map(|j| format!("\"{}:7946\"", self.ip(j)))
            .collect();
        let voters: Vec<String> = self.voters.iter().map(|v| format!("\"{v}\"")).collect();
        let d = self.node_dir(i);
        let control = if self.voters.contains(&self.names[i]) {
            format!("control_key_file = \"{}\"\n", self.control_key().display())
        } else {
            // The others verify role proofs with its public half.
            let pk =
                kubeha_core::proof::ProofKey::of(&kubeha_core::frame::Key::from_bytes([77; 32]));
            format!("control_public_keys = [\"{pk}\"]\n")
        };
        format!(
            "cluster = \"it\"\nnode_name = \"{name}\"\nadvertise_addr = \"{ip}\"\nseeds = [{seeds}]\nvoters = [{voters}]\n\
             key_file = \"{key}\"\n{control}state_dir = \"{d}/state\"\nsocket = \"{d}/kubeha.sock\"\nmetrics_addr = \"{ip}:9946\"\n",
            name = self.names[i],
            ip = self.ip(i),
            seeds = seeds.join(", "),
            voters = voters.join(", "),
            key = key_file.display(),
            d = d.display(),
        )
    }

    pub fn start_with_key(&mut self, i: usize, key_file: &Path) {
        let text = self.config(i, key_file);
        self.start_with_config(i, &text);
    }

    pub fn start_with_config(&mut self, i: usize, text: &str) {
        let cfg = self.node_dir(i).join("kubeha.toml");
        std::fs::write(&cfg, text).unwrap();
        let log = std::fs::File::create(self.node_dir(i).join("agent.log")).unwrap();
        let child = Command::new(bin("kubeha-agent"))
            .arg("--config")
            .arg(&cfg)
            .env(
                "KUBEHA_LOG",
                "info,chitchat=warn,chitchat::transport::udp=error",
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn kubeha-agent");
        self.agents[i] = Some(KillOnDrop(child));
    }

    pub fn start(&mut self, i: usize) {
        let key = self.dir.path().join("cluster.key");
        self.start_with_key(i, &key);
    }

    pub fn start_all(&mut self) {
        for i in 0..self.names.len() {
            self.start(i);
        }
    }

    pub fn kill9(&mut self, i: usize) {
        let a = self.agents[i].take().expect("agent running");
        drop(a);
    }

    pub fn status(&self, i: usize) -> Option<Status> {
        status(&self.socket(i))
    }

    /// Names `observer` sees alive.
    pub fn alive_seen_by(&self, observer: usize) -> Vec<String> {
        self.status(observer)
            .map(|s| {
                s.members
                    .into_iter()
                    .filter(|m| m.alive)
                    .map(|m| m.name)
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.node_dir(i).join("agent.log")).unwrap_or_default()
    }
}

/// One status call over the agent's socket; `None` if it does not answer.
pub fn status(socket: &Path) -> Option<Status> {
    kubeha_tests::lab::agent::status(socket).ok()
}

/// Scrape a metric value (first sample whose line starts with `series`).
pub fn metric(addr: &str, series: &str) -> Option<f64> {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The median (mean of the middle two for an even count); sorts `v`.
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n.is_multiple_of(2) {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    } else {
        v[n / 2]
    }
}

/// Seconds of the day of a log line's tracing timestamp (ANSI colours
/// stripped).
pub fn log_time(line: &str) -> Option<f64> {
    let mut plain = String::new();
    let mut esc = false;
    for c in line.chars() {
        match (esc, c) {
            (false, '\x1b') => esc = true,
            (true, 'm') => esc = false,
            (true, _) => {}
            (false, c) => plain.push(c),
        }
    }
    let t = plain
        .split_whitespace()
        .next()?
        .split('T')
        .nth(1)?
        .trim_end_matches('Z');
    let mut p = t.split(':');
    let (h, m, s): (f64, f64, f64) = (
        p.next()?.parse().ok()?,
        p.next()?.parse().ok()?,
        p.next()?.parse().ok()?,
    );
    Some(h * 3600.0 + m * 60.0 + s)
}

/// Seconds an agent log shows in jobs of the given kinds (`job queued` to
/// `job finished` of the same job id).
pub fn job_seconds(log: &str, kinds: &[&str]) -> f64 {
    let mut open: std::collections::BTreeMap<String, f64> = Default::default();
    let mut total = 0.0;
    for l in log.lines() {
        let Some(t) = log_time(l) else { continue };
        let Some(id) = l.split("job-").nth(1).map(|r| {
            r.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
        }) else {
            continue;
        };
        if l.contains("job queued") && kinds.iter().any(|k| l.contains(&format!("\"{k}\""))) {
            open.insert(id, t);
        } else if l.contains("job finished")
            && let Some(t0) = open.remove(&id)
        {
            total += t - t0;
        }
    }
    total
}

/// The lab lock for a namespace-lab test that runs HAProxy and these
/// binaries (from the default bin dir): `None`, said on stderr, where the
/// lab cannot run at all (not root, no netns); a panic where HAProxy or a
/// binary is missing, so that CI never passes such a test by skipping it.
pub fn haproxy_lab_guard(bins: &[&str]) -> Option<kubeha_tests::lab::SerialGuard> {
    use kubeha_tests::lab;
    if let Some(why) = lab::skip_reason() {
        eprintln!("skipping lab test: {why}");
        return None;
    }
    if let Some(why) = kubeha_tests::lab_haproxy::haproxy_missing() {
        panic!("{why}");
    }
    for b in bins {
        let p = lab::spec::default_bin_dir().join(b);
        assert!(
            p.exists(),
            "{} is missing: run `cargo build --workspace --bins` first",
            p.display()
        );
    }
    Some(lab::serial().expect("lab lock"))
}
