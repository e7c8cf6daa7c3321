//! kubeadm and kubectl outside the agent's sandbox.
//!
//! The unit the package ships (packaging/kubeha-agent.service) gives the
//! agent a read-only file system and four capabilities: right for gossip,
//! the VIP and HAProxy, but `kubeadm init`/`join`/`reset` write
//! `/etc/kubernetes`, the kubelet's files and etcd's data, and start
//! services. So when the agent runs under systemd, [`TransientRunner`] runs
//! each of its kubeadm jobs' commands as a transient service unit of its
//! own, the way host preparation runs (`crate::hostprep`):
//!
//! ```text
//! systemd-run --wait --pipe --collect --service-type=exec
//!     --unit=kubeha-kubeadm-<agent pid>-<n>.service
//!     --description="kubeha-agent: <command line>"
//!     --property=RuntimeMaxSec=<timeout> --property=TimeoutStopSec=10
//!     --property=BindsTo=<the agent's unit> -- kubeadm init --config …
//! ```
//!
//! - The unit has systemd's defaults, not the agent's sandbox: root with
//!   every capability, the whole file system writable.
//! - `--pipe`: stdin, stdout and stderr are the agent's pipes. kubeadm
//!   init's stdout (bootstrap token, certificate key) reaches only the agent,
//!   never the journal; errors quote the stderr tail, which ends with
//!   systemd-run's own summary (`Finished with result: …`).
//! - `--wait`: systemd-run exits with the command's exit status, so
//!   [`CommandError`] carries it. Its argv names the command and the unit.
//! - Timeout: `RuntimeMaxSec` is the command's timeout, so systemd stops
//!   the whole unit (every process in its cgroup: SIGTERM, SIGKILL after
//!   `TimeoutStopSec`) even when the agent is gone; the agent waits
//!   [`MARGIN`] longer for systemd-run and then kills it and stops the unit.
//! - `BindsTo=` the agent's unit: when the agent stops or dies, systemd
//!   stops its transient units, as `PR_SET_PDEATHSIG` kills a direct child.
//! - Secrets: the command line and `--setenv` values become properties of
//!   the unit, readable by every local user (`systemctl show`) and in the
//!   journal's "Started" line, so a command with a secret argument is
//!   refused here. kubeha passes kubeadm's secrets in root-only files
//!   (`--config`, mode 0600) and never in argv or environment.
//! - systemd expands `$VAR` in a transient unit's command line (systemd
//!   252 has no `--expand-environment=no`): every `$` is passed as `$$`.
//!
//! Outside systemd (tests, a shell) [`for_agent`] returns the plain
//! [`SystemRunner`]: commands run as the agent's children.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use tracing::warn;

use crate::command::{Command, CommandError, Output, Runner, SystemRunner};

/// How much longer than the command's own timeout the agent waits for
/// systemd-run (systemd's `TimeoutStopSec` of the unit, plus slack).
pub const MARGIN: Duration = Duration::from_secs(20);
/// The unit's `TimeoutStopSec`: SIGTERM, then SIGKILL after this long.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Prefix of the transient units' names.
pub const UNIT_PREFIX: &str = "kubeha-";

/// Whether the agent runs as a systemd service (the detection host
/// preparation uses: systemd sets `INVOCATION_ID` for every service).
pub fn under_systemd() -> bool {
    std::env::var_os("INVOCATION_ID").is_some()
}

/// The runner for the agent's kubeadm jobs: [`TransientRunner`] under
/// systemd, else [`SystemRunner`].
pub fn for_agent() -> Arc<dyn Runner> {
    if under_systemd() {
        let cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        Arc::new(TransientRunner::new(own_unit(&cgroup)))
    } else {
        Arc::new(SystemRunner)
    }
}

/// The service unit a process runs in, from the text of
/// `/proc/<pid>/cgroup` (`0::/system.slice/kubeha-agent.service`; on a
/// hybrid hierarchy the `name=systemd` line).
pub fn own_unit(cgroup: &str) -> Option<String> {
    cgroup
        .lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            (controllers.is_empty() || controllers == "name=systemd").then_some(path)
        })
        .find_map(|path| {
            path.split('/')
                .rev()
                .find(|c| c.ends_with(".service"))
                .map(str::to_string)
        })
}

/// Runs each command as a transient systemd service (see the module docs).
pub struct TransientRunner {
    systemd_run: OsString,
    systemctl: OsString,
    bind_to: Option<String>,
    margin: Duration,
    pid: u32,
    seq: AtomicU64,
}

impl TransientRunner {
    /// Units bound to `bind_to` (the agent's own unit), if known.
    pub fn new(bind_to: Option<String>) -> TransientRunner {
        TransientRunner {
            systemd_run: "systemd-run".into(),
            systemctl: "systemctl".into(),
            bind_to,
            margin: MARGIN,
            pid: std::process::id(),
            seq: AtomicU64::new(0),
        }
    }

    /// With other `systemd-run` and `systemctl` programs (tests).
    pub fn with_programs(
        mut self,
        systemd_run: impl Into<OsString>,
        systemctl: impl Into<OsString>,
    ) -> TransientRunner {
        self.systemd_run = systemd_run.into();
        self.systemctl = systemctl.into();
        self
    }

    /// Wait this much beyond a command's timeout instead of [`MARGIN`].
    pub fn with_margin(mut self, margin: Duration) -> TransientRunner {
        self.margin = margin;
        self
    }

    /// `kubeha-<program>-<agent pid>-<n>.service`: unique per agent run,
    /// and named after the tool for `journalctl -u`/`systemctl status`.
    fn unit_name(&self, cmd: &Command) -> String {
        let n = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let program = cmd
            .argv()
            .first()
            .copied()
            .flatten()
            .and_then(|p| std::path::Path::new(p).file_name())
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tool: String = program
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .take(32)
            .collect();
        let tool = if tool.is_empty() { "job".into() } else { tool };
        format!("{UNIT_PREFIX}{tool}-{}-{n}.service", self.pid)
    }

    /// The `systemd-run` command for `cmd` in unit `unit`.
    pub fn wrap(&self, cmd: &Command, unit: &str) -> Command {
        let timeout = cmd.get_timeout();
        let mut prefix: Vec<OsString> = vec![
            "--wait".into(),
            "--pipe".into(),
            "--collect".into(),
            "--service-type=exec".into(),
            format!("--unit={unit}").into(),
            format!("--description=kubeha-agent: {}", description(cmd)).into(),
            format!("--property=RuntimeMaxSec={}", ceil_secs(timeout)).into(),
            format!("--property=TimeoutStopSec={}", ceil_secs(STOP_TIMEOUT)).into(),
        ];
        if let Some(b) = &self.bind_to {
            prefix.push(format!("--property=BindsTo={b}").into());
        }
        for (k, v) in cmd.get_env() {
            let mut a = OsString::from("--setenv=");
            a.push(k);
            a.push("=");
            a.push(v);
            prefix.push(a);
        }
        prefix.push("--".into());
        cmd.wrapped(
            &self.systemd_run,
            prefix,
            timeout + self.margin,
            escape_dollars,
        )
    }

    /// Stop the unit (best effort) after systemd-run itself timed out.
    async fn stop(&self, unit: &str) {
        let stop = Command::new(&self.systemctl)
            .args(["stop", "--no-block", unit])
            .timeout(Duration::from_secs(10));
        if let Err(e) = stop.run().await {
            warn!(unit, error = %e, "cannot stop the transient unit");
        }
    }
}

#[async_trait]
impl Runner for TransientRunner {
    async fn run(&self, cmd: &Command) -> Result<Output, CommandError> {
        if cmd.has_secret_args() {
            return Err(CommandError::Spawn {
                argv: cmd.display_argv(),
                source: io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "refused to run through systemd-run: a secret argument would show in the \
                     transient unit's properties (pass it in a root-only file or on stdin)",
                ),
            });
        }
        let unit = self.unit_name(cmd);
        let wrapped = self.wrap(cmd, &unit);
        match wrapped.run().await {
            Ok(out) => Ok(out),
            Err(e) => {
                if matches!(e, CommandError::Timeout { .. }) {
                    self.stop(&unit).await;
                }
                Err(relabel(
                    e,
                    format!("{} (transient unit {unit})", cmd.display_argv()),
                ))
            }
        }
    }
}

/// The error of the systemd-run command, naming the command it ran instead.
fn relabel(e: CommandError, shown: String) -> CommandError {
    match e {
        CommandError::Spawn { source, .. } => CommandError::Spawn {
            argv: shown,
            source,
        },
        CommandError::Io { what, source, .. } => CommandError::Io {
            argv: shown,
            what,
            source,
        },
        CommandError::Timeout {
            timeout,
            stderr_tail,
            ..
        } => CommandError::Timeout {
            argv: shown,
            timeout,
            stderr_tail,
        },
        CommandError::Failed {
            status,
            stderr_tail,
            stdout,
            ..
        } => CommandError::Failed {
            argv: shown,
            status,
            stderr_tail,
            stdout,
        },
    }
}

/// The unit's description: the command line, at most 200 characters.
fn description(cmd: &Command) -> String {
    let d = cmd.display_argv().replace(['\n', '\r'], " ");
    if d.chars().count() <= 200 {
        d
    } else {
        d.chars().take(199).chain(['…']).collect()
    }
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// `$` → `$$`: systemd expands `$VAR` in a transient unit's command line.
fn escape_dollars(a: &OsStr) -> OsString {
    let mut out = Vec::with_capacity(a.len());
    for &b in a.as_bytes() {
        out.push(b);
        if b == b'$' {
            out.push(b'$');
        }
    }
    OsString::from_vec(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;

    /// A fake `systemd-run`: logs its argv (one argument a line, then a
    /// blank line), then runs what follows `--` with `$$` turned back into
    /// `$`, stdin and stdout passed through, and prints systemd-run's
    /// summary to stderr, exiting with the command's status (as
    /// `systemd-run --wait --pipe` does).
    struct Fakes {
        dir: tempfile::TempDir,
    }

    impl Fakes {
        fn new() -> Fakes {
            let f = Fakes {
                dir: tempfile::tempdir().unwrap(),
            };
            f.script(
                "systemd-run",
                r#"for a in "$@"; do printf '%s\n' "$a" >> "$LOG"; done; echo >> "$LOG"
while [ "$1" != -- ]; do shift; done; shift
n=$#
for a in "$@"; do set -- "$@" "$(printf '%s' "$a" | sed 's/[$][$]/$/g')"; done
shift $n
"$@"; rc=$?
[ $rc = 0 ] || echo "Finished with result: exit-code" >&2
exit $rc"#,
            );
            f.script("systemctl", r#"echo "systemctl $*" >> "$LOG""#);
            f
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        fn script(&self, name: &str, body: &str) {
            let p = self.path(name);
            let log = self.path("log");
            fs::write(&p, format!("#!/bin/sh\nLOG='{}'\n{body}\n", log.display())).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        }

        fn log(&self) -> String {
            fs::read_to_string(self.path("log")).unwrap_or_default()
        }

        fn runner(&self) -> TransientRunner {
            TransientRunner::new(Some("kubeha-agent.service".into()))
                .with_programs(self.path("systemd-run"), self.path("systemctl"))
        }
    }

    fn sh(script: &str) -> Command {
        Command::new("/bin/sh").arg("-c").arg(script)
    }

    #[test]
    fn the_wrapped_command_line() {
        let r = TransientRunner::new(Some("kubeha-agent.service".into()));
        let cmd = Command::new("/usr/bin/kubeadm")
            .args(["join", "--config", "/var/lib/kubeha/kubeadm/join.yaml"])
            .env("KUBECONFIG", "/etc/kubernetes/admin.conf")
            .timeout(Duration::from_millis(600_500));
        let unit = r.unit_name(&cmd);
        assert_eq!(
            unit,
            format!("kubeha-kubeadm-{}-1.service", std::process::id())
        );
        assert_eq!(
            r.wrap(&cmd, &unit).display_argv(),
            format!(
                "systemd-run --wait --pipe --collect --service-type=exec --unit={unit} \
                 --description=kubeha-agent: /usr/bin/kubeadm join --config /var/lib/kubeha/kubeadm/join.yaml \
                 --property=RuntimeMaxSec=601 --property=TimeoutStopSec=10 \
                 --property=BindsTo=kubeha-agent.service \
                 --setenv=KUBECONFIG=/etc/kubernetes/admin.conf \
                 -- /usr/bin/kubeadm join --config /var/lib/kubeha/kubeadm/join.yaml"
            )
        );
        assert_eq!(
            r.wrap(&cmd, &unit).get_timeout(),
            Duration::from_millis(600_500) + MARGIN
        );
        // Unique per call; no BindsTo when the agent's unit is unknown.
        assert!(r.unit_name(&cmd).ends_with("-2.service"));
        let free = TransientRunner::new(None);
        assert!(!free.wrap(&cmd, "u").display_argv().contains("BindsTo"));
        // systemd would expand `$HOME`.
        let dollar = Command::new("/opt/k$8/kubectl").arg("a$HOME$");
        let w = free.wrap(&dollar, "u").display_argv();
        assert!(w.ends_with("-- /opt/k$$8/kubectl a$$HOME$$"), "{w}");
    }

    #[tokio::test]
    async fn output_comes_back_through_the_unit() {
        let f = Fakes::new();
        let out = f
            .runner()
            .run(&sh("read x; echo \"got $x\"; echo note >&2").stdin("input\n"))
            .await
            .unwrap();
        assert_eq!(out.stdout_str(), "got input\n");
        assert_eq!(out.stderr, b"note\n");
        let log = f.log();
        assert!(log.starts_with("--wait\n--pipe\n--collect\n"), "{log}");
        // The script got through systemd's `$` expansion unchanged.
        assert!(
            log.contains("\n--\n/bin/sh\n-c\nread x; echo \"got $$x\"; echo note >&2\n"),
            "{log}"
        );
    }

    #[tokio::test]
    async fn a_failure_names_the_command_the_unit_the_status_and_stderr() {
        let f = Fakes::new();
        let e = f
            .runner()
            .run(&Command::new("/bin/sh").args([
                "-c",
                "echo 'error execution phase preflight: [preflight] Some fatal errors occurred' >&2; exit 3",
            ]))
            .await
            .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with("`/bin/sh -c echo 'error execution phase preflight"),
            "{msg}"
        );
        assert!(
            msg.contains(&format!(
                "(transient unit kubeha-sh-{}-1.service)` failed (exit status: 3)",
                std::process::id()
            )),
            "{msg}"
        );
        assert!(
            msg.contains("Some fatal errors occurred\nFinished with result: exit-code"),
            "{msg}"
        );
        assert_eq!(e.status().and_then(|s| s.code()), Some(3));
    }

    #[tokio::test]
    async fn a_missing_systemd_run_is_named() {
        let r = TransientRunner::new(None).with_programs("/nonexistent/systemd-run", "true");
        let e = r
            .run(&Command::new("/usr/bin/kubeadm").arg("reset"))
            .await
            .unwrap_err();
        assert!(matches!(e, CommandError::Spawn { .. }), "{e}");
        assert!(
            e.to_string()
                .starts_with("`/usr/bin/kubeadm reset (transient unit kubeha-kubeadm-"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn secret_arguments_are_refused() {
        let f = Fakes::new();
        let e = f
            .runner()
            .run(
                &Command::new("/usr/bin/kubeadm")
                    .args(["join", "--token"])
                    .secret_arg("abcdef.0123456789abcdef"),
            )
            .await
            .unwrap_err();
        let msg = format!("{e} {e:?}");
        assert!(msg.contains("secret argument"), "{msg}");
        assert!(!msg.contains("0123456789abcdef"), "{msg}");
        assert_eq!(f.log(), "", "systemd-run was not called");
    }

    #[tokio::test]
    async fn a_hung_systemd_run_is_killed_and_its_unit_stopped() {
        let f = Fakes::new();
        f.script("systemd-run", "echo started >&2; exec sleep 300");
        let r = f.runner().with_margin(Duration::from_millis(200));
        let cmd = Command::new("/usr/bin/kubeadm")
            .arg("init")
            .timeout(Duration::from_millis(100));
        let t = std::time::Instant::now();
        let e = r.run(&cmd).await.unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
        assert!(matches!(e, CommandError::Timeout { .. }), "{e}");
        let unit = format!("kubeha-kubeadm-{}-1.service", std::process::id());
        assert!(
            e.to_string().starts_with(&format!(
                "`/usr/bin/kubeadm init (transient unit {unit})`: no exit after"
            )),
            "{e}"
        );
        assert!(e.to_string().contains("stderr: started"), "{e}");
        assert!(
            f.log()
                .contains(&format!("systemctl stop --no-block {unit}")),
            "{}",
            f.log()
        );
    }

    const TOKEN: &str = "abcdef.0123456789abcdef";
    const CERT_KEY: &str = "9f3c0d1e2b4a59687c6d5e4f30211203f4e5d6c7b8a9f0e1d2c3b4a596877869";

    struct Material;

    #[async_trait]
    impl crate::kube_jobs::JoinMaterialFetch for Material {
        async fn fetch(
            &self,
            _server: &str,
            control_plane: bool,
        ) -> Result<kubeha_core::kubeadm::JoinSecrets, String> {
            Ok(kubeha_core::kubeadm::JoinSecrets {
                token: TOKEN.into(),
                ca_cert_hashes: vec!["sha256:00ff".into()],
                certificate_key: control_plane.then(|| CERT_KEY.into()),
            })
        }
    }

    /// The kubeadm jobs through the transient runner: the join's secrets
    /// reach kubeadm in a 0600 file and never systemd-run's command line
    /// (the unit's properties), description or environment.
    #[tokio::test]
    async fn kubeadm_join_secrets_stay_out_of_the_unit() {
        use crate::jobs::JobWork;
        use kubeha_core::node::{Job, JobId, JobOutcome};
        let f = Fakes::new();
        f.script(
            "kubeadm",
            r#"echo "kubeadm $*" >> "$LOG.kubeadm"
case "$1" in
version) echo v1.31.2 ;;
join) [ "$(stat -c %a "$3")" = 600 ] || { echo "$3 is not 0600" >&2; exit 1; }
      grep -q abcdef.0123456789abcdef "$3" || { echo "no token in $3" >&2; exit 1; } ;;
*) exit 2 ;;
esac"#,
        );
        let text = format!(
            "cluster = \"lab\"\nnode_name = \"cp-1\"\nroles = [\"control-plane\"]\n\
             advertise_addr = \"10.108.0.4\"\nseeds = [\"10.108.0.3:7946\"]\n\
             voters = [\"cp-0\", \"cp-1\", \"cp-2\"]\nkey_file = \"/etc/kubeha/cluster.key\"\n\
             control_key_file = \"/etc/kubeha/control.key\"\nstate_dir = \"{state}\"\n\n\
             [kubernetes]\ncontrol_plane_endpoint = \"k8s-api:6443\"\nkubeadm = \"{kubeadm}\"\n\
             etc_dir = \"{etc}\"\n",
            state = f.path("state").display(),
            kubeadm = f.path("kubeadm").display(),
            etc = f.path("etc").display(),
        );
        fs::create_dir_all(f.path("etc")).unwrap();
        let config = kubeha_core::config::Config::parse(
            std::path::Path::new("/etc/kubeha/kubeha.toml"),
            &text,
            "cp-1",
        )
        .unwrap();
        let work = crate::kube_jobs::KubeWork::new(
            config,
            Arc::new(f.runner()),
            Arc::new(Material),
            crate::metrics::Metrics::new("cp-1", "0"),
        );
        let fetch = Job::FetchJoinMaterial {
            server: "cp-0".into(),
            control_plane: true,
        };
        assert_eq!(
            work.run(JobId(1), fetch).await,
            JobOutcome::Done { error: None }
        );
        let join = Job::Join {
            control_plane: true,
        };
        assert_eq!(
            work.run(JobId(2), join).await,
            JobOutcome::Done { error: None }
        );
        let units = f.log();
        let kubeadm = fs::read_to_string(f.path("log.kubeadm")).unwrap();
        assert!(
            kubeadm.contains(&format!(
                "kubeadm join --config {}",
                f.path("state/kubeadm/join.yaml").display()
            )),
            "{kubeadm}"
        );
        // Every kubeadm run went through systemd-run.
        assert_eq!(
            units.matches("\n--\n").count(),
            kubeadm.lines().count(),
            "{units}"
        );
        for secret in [TOKEN, CERT_KEY, "0123456789abcdef"] {
            assert!(!units.contains(secret), "systemd-run saw a secret: {units}");
            assert!(!kubeadm.contains(secret), "kubeadm argv holds a secret");
        }
        assert!(
            !f.path("state/kubeadm/join.yaml").exists(),
            "removed after the join"
        );
    }

    #[test]
    fn own_unit_from_proc_cgroup() {
        assert_eq!(
            own_unit("0::/system.slice/kubeha-agent.service\n").as_deref(),
            Some("kubeha-agent.service")
        );
        // Hybrid hierarchy; a process in a sub-cgroup of its service.
        assert_eq!(
            own_unit(
                "12:cpu,cpuacct:/system.slice/x.service\n1:name=systemd:/system.slice/kubeha-agent.service/payload\n0::/\n"
            )
            .as_deref(),
            Some("kubeha-agent.service")
        );
        assert_eq!(own_unit("0::/user.slice/session-3.scope\n"), None);
        assert_eq!(own_unit(""), None);
    }

    #[test]
    fn dollar_escaping() {
        assert_eq!(
            escape_dollars(OsStr::new("a$b$$")),
            OsString::from("a$$b$$$$")
        );
        assert_eq!(escape_dollars(OsStr::new("plain")), OsString::from("plain"));
    }
}
