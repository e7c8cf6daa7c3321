//! The kubeadm jobs over a fake command runner and a fake join-material
//! source, in a temporary state and etc dir.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::*;
use crate::command::{CommandError, Output};
use crate::jobs::JobWork;

const TOKEN: &str = "abcdef.0123456789abcdef";
const CERT_KEY: &str = "9f3c0d1e2b4a59687c6d5e4f30211203f4e5d6c7b8a9f0e1d2c3b4a596877869";

/// Records argv; `kubeadm version` answers, everything else succeeds unless
/// its subcommand is in `fail` (then it fails with a stderr that quotes the
/// token, as a chatty tool might).
struct FakeRunner {
    calls: Mutex<Vec<String>>,
    fail: Vec<&'static str>,
    /// What a successful `init`/`join` writes under etc_dir.
    etc: PathBuf,
}

#[async_trait]
impl Runner for FakeRunner {
    async fn run(&self, cmd: &Command) -> Result<Output, CommandError> {
        let argv = cmd.display_argv();
        self.calls.lock().unwrap().push(argv.clone());
        if argv.starts_with("rm ") {
            // The clean-up after a reset: really remove (in the temp dir).
            let status = std::process::Command::new("rm")
                .args(cmd.argv().into_iter().skip(1).map(Option::unwrap))
                .status()
                .unwrap();
            assert!(status.success(), "{argv}");
            return Ok(Output {
                stdout: vec![],
                stderr: vec![],
            });
        }
        let words: Vec<&str> = argv.split(' ').collect();
        let sub = words.get(1).copied().unwrap_or("");
        if sub == "version" {
            return Ok(Output {
                stdout: b"v1.31.2\n".to_vec(),
                stderr: vec![],
            });
        }
        if sub == "reset" && self.fail.contains(&"reset-warns") {
            // kubeadm's remove-etcd-member phase only warns (exit 0).
            return Ok(Output {
                stdout: b"[reset] Deleted contents of the etcd data directory: /var/lib/etcd\n".to_vec(),
                stderr: b"W1202 00:01:02.345678 4242 removeetcdmember.go:106] [reset] Failed to remove etcd member: etcdserver: unhealthy cluster, please manually remove this etcd member using etcdctl\n".to_vec(),
            });
        }
        if self.fail.iter().any(|f| words.contains(f)) {
            // Half-way: a join that fails leaves files.
            std::fs::write(self.etc.join("kubelet.conf"), "x").unwrap();
            let status = std::process::Command::new("false").status().unwrap();
            return Err(CommandError::Failed {
                argv,
                status,
                stderr_tail: format!("error execution phase: token {TOKEN} key {CERT_KEY}"),
                stdout: vec![],
            });
        }
        if sub == "init" || sub == "join" {
            std::fs::write(self.etc.join("admin.conf"), "x").unwrap();
            std::fs::write(self.etc.join("kubelet.conf"), "x").unwrap();
        }
        Ok(Output {
            stdout: format!("[bootstrap-token] Using token: {TOKEN}\n").into_bytes(),
            stderr: vec![],
        })
    }
}

struct FakeSource;

#[async_trait]
impl JoinMaterialFetch for FakeSource {
    async fn fetch(&self, server: &str, control_plane: bool) -> Result<JoinSecrets, String> {
        assert_eq!(server, "cp-0");
        Ok(JoinSecrets {
            token: TOKEN.into(),
            ca_cert_hashes: vec!["sha256:00ff".into()],
            certificate_key: control_plane.then(|| CERT_KEY.into()),
        })
    }
}

fn config(dir: &Path, roles: &str) -> Config {
    let text = format!(
        r#"
cluster = "lab"
node_name = "cp-1"
roles = [{roles}]
advertise_addr = "10.108.0.4"
seeds = ["10.108.0.3:7946"]
voters = ["cp-0", "cp-1", "cp-2"]
key_file = "/etc/kubeha/cluster.key"
control_key_file = "/etc/kubeha/control.key"
state_dir = "{state}"
socket = "/run/kubeha/kubeha.sock"

[kubernetes]
control_plane_endpoint = "k8s-api:6443"
kubeadm = "/usr/bin/kubeadm"
kubectl = "/usr/bin/kubectl"
etc_dir = "{etc}"
cni_manifest = "/etc/kubeha/cni.yaml"
"#,
        state = dir.join("state").display(),
        etc = dir.join("etc").display(),
    );
    std::fs::create_dir_all(dir.join("etc")).unwrap();
    Config::parse(Path::new("/etc/kubeha/kubeha.toml"), &text, "cp-1").unwrap()
}

fn work(
    dir: &Path,
    roles: &str,
    fail: Vec<&'static str>,
    source: Arc<dyn JoinMaterialFetch>,
) -> (KubeWork, Arc<FakeRunner>, Arc<Metrics>) {
    let runner = Arc::new(FakeRunner {
        calls: Mutex::new(vec![]),
        fail,
        etc: dir.join("etc"),
    });
    let m = Metrics::new("cp-1", "0");
    (
        KubeWork::new(config(dir, roles), runner.clone(), source, m.clone()),
        runner,
        m,
    )
}

#[tokio::test]
async fn control_plane_join_goes_through_a_root_only_file_then_it_is_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let (w, runner, m) = work(
        tmp.path(),
        r#""control-plane""#,
        vec![],
        Arc::new(FakeSource),
    );
    let fetch = Job::FetchJoinMaterial {
        server: "cp-0".into(),
        control_plane: true,
    };
    assert_eq!(
        w.run(JobId(1), fetch).await,
        JobOutcome::Done { error: None }
    );
    let path = tmp.path().join("state/kubeadm/join.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(TOKEN) && text.contains(CERT_KEY));
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let join = Job::Join {
        control_plane: true,
    };
    assert_eq!(
        w.run(JobId(2), join).await,
        JobOutcome::Done { error: None }
    );
    assert!(!path.exists(), "the join config (with the token) is gone");
    let calls = runner.calls.lock().unwrap().clone();
    assert_eq!(
        calls.last().unwrap(),
        &format!("/usr/bin/kubeadm join --config {}", path.display())
    );
    for c in &calls {
        assert!(!c.contains(TOKEN) && !c.contains(CERT_KEY), "{c}");
    }
    assert_eq!(m.kubeadm_runs.with_label_values(&["join", "ok"]).get(), 1);
}

#[tokio::test]
async fn a_failed_join_error_names_argv_and_stderr_without_secrets_and_reset_cleans() {
    let tmp = tempfile::tempdir().unwrap();
    let (w, runner, m) = work(
        tmp.path(),
        r#""control-plane""#,
        vec!["join"],
        Arc::new(FakeSource),
    );
    let fetch = Job::FetchJoinMaterial {
        server: "cp-0".into(),
        control_plane: true,
    };
    assert_eq!(
        w.run(JobId(1), fetch).await,
        JobOutcome::Done { error: None }
    );
    let JobOutcome::Done { error: Some(e) } = w
        .run(
            JobId(2),
            Job::Join {
                control_plane: true,
            },
        )
        .await
    else {
        panic!("the join must fail");
    };
    assert!(e.contains("kubeadm join --config"), "{e}");
    assert!(e.contains("error execution phase"), "{e}");
    assert!(!e.contains(TOKEN) && !e.contains(CERT_KEY), "{e}");
    assert!(tmp.path().join("etc/kubelet.conf").exists());
    assert_eq!(
        m.kubeadm_runs.with_label_values(&["join", "failed"]).get(),
        1
    );

    assert_eq!(
        w.run(JobId(3), Job::Reset).await,
        JobOutcome::Done { error: None }
    );
    let calls = runner.calls.lock().unwrap().clone();
    let etc = tmp.path().join("etc");
    assert_eq!(
        calls[calls.len() - 2..],
        [
            "/usr/bin/kubeadm reset -f".to_string(),
            // What the fake reset left (the failed join's kubelet.conf),
            // removed through the runner: the agent's own view of etc_dir
            // is read-only under the shipped unit.
            format!("rm -rf -- {}", etc.join("kubelet.conf").display()),
        ]
    );
    assert!(!has_artifacts(&etc), "reset left nothing");
}

#[tokio::test]
async fn init_renders_runs_with_upload_certs_and_reports_artifacts() {
    let tmp = tempfile::tempdir().unwrap();
    let (w, runner, _) = work(
        tmp.path(),
        r#""control-plane""#,
        vec![],
        Arc::new(FakeSource),
    );
    assert_eq!(
        w.run(JobId(1), Job::RunInit).await,
        JobOutcome::Init {
            ok: true,
            left_artifacts: true,
            error: None
        }
    );
    let init = tmp.path().join("state/kubeadm/init.yaml");
    assert!(
        std::fs::read_to_string(&init)
            .unwrap()
            .contains("InitConfiguration")
    );
    assert_eq!(
        runner.calls.lock().unwrap().last().unwrap(),
        &format!(
            "/usr/bin/kubeadm init --config {} --upload-certs",
            init.display()
        )
    );
    // CNI with the admin kubeconfig.
    assert_eq!(
        w.run(JobId(2), Job::ApplyCni).await,
        JobOutcome::Done { error: None }
    );
    assert_eq!(
        runner.calls.lock().unwrap().last().unwrap(),
        &format!(
            "/usr/bin/kubectl --kubeconfig {} apply -f /etc/kubeha/cni.yaml",
            tmp.path().join("etc/admin.conf").display()
        )
    );

    // A failed init that left files says so; one that did not, does not.
    let tmp = tempfile::tempdir().unwrap();
    let (w, _, _) = work(
        tmp.path(),
        r#""control-plane""#,
        vec!["init"],
        Arc::new(FakeSource),
    );
    let JobOutcome::Init {
        ok: false,
        left_artifacts: true,
        error: Some(e),
    } = w.run(JobId(1), Job::RunInit).await
    else {
        panic!("a failed init that left files, with its error");
    };
    // The runner's text for status: argv, exit status, stderr; the token
    // and key kubeadm made up (unknown to the agent) redacted by shape.
    assert!(e.contains("kubeadm init --config"), "{e}");
    assert!(e.contains("error execution phase"), "{e}");
    assert!(!e.contains(TOKEN) && !e.contains(CERT_KEY), "{e}");
}

#[tokio::test]
async fn a_reset_that_left_the_etcd_member_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let (w, _, m) = work(
        tmp.path(),
        r#""control-plane""#,
        vec!["reset-warns"],
        Arc::new(FakeSource),
    );
    let JobOutcome::Done { error: Some(e) } = w.run(JobId(1), Job::Reset).await else {
        panic!("kubeadm's warning makes the reset a failure");
    };
    assert!(e.contains("left this node's etcd member"), "{e}");
    assert!(
        e.contains("Failed to remove etcd member: etcdserver: unhealthy cluster"),
        "{e}"
    );
    assert!(e.contains("etcdctl member remove"), "{e}");
    assert_eq!(
        m.kubeadm_runs.with_label_values(&["reset", "failed"]).get(),
        1
    );
}

#[tokio::test]
async fn init_check_after_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let (w, _, _) = work(
        tmp.path(),
        r#""control-plane""#,
        vec!["get"],
        Arc::new(FakeSource),
    );
    // Nothing here: clean.
    assert_eq!(
        w.run(JobId(1), Job::CheckInit).await,
        JobOutcome::Init {
            ok: false,
            left_artifacts: false,
            error: None
        }
    );
    // Files, but the apiserver does not answer: failed with files.
    std::fs::write(tmp.path().join("etc/admin.conf"), "x").unwrap();
    std::fs::write(tmp.path().join("etc/kubelet.conf"), "x").unwrap();
    assert_eq!(
        w.run(JobId(2), Job::CheckInit).await,
        JobOutcome::Init {
            ok: false,
            left_artifacts: true,
            error: None
        }
    );
    // Files and a working apiserver: ok.
    let (w, _, _) = work(
        tmp.path(),
        r#""control-plane""#,
        vec![],
        Arc::new(FakeSource),
    );
    assert_eq!(
        w.run(JobId(3), Job::CheckInit).await,
        JobOutcome::Init {
            ok: true,
            left_artifacts: true,
            error: None
        }
    );
}

#[tokio::test]
async fn a_server_gossip_does_not_show_fails_the_fetch_without_writing_anything() {
    let tmp = tempfile::tempdir().unwrap();
    let (_tx, members) = tokio::sync::watch::channel(Default::default());
    let (identity, _) = crate::join::Identity::generate("w-0").unwrap();
    let fetch = TlsJoinFetch {
        node: "w-0".into(),
        identity: Arc::new(identity),
        members,
        join_port: 7947,
    };
    let (w, runner, _) = work(tmp.path(), r#""worker""#, vec![], Arc::new(fetch));
    let JobOutcome::Done { error: Some(e) } = w
        .run(
            JobId(1),
            Job::FetchJoinMaterial {
                server: "cp-0".into(),
                control_plane: false,
            },
        )
        .await
    else {
        panic!("no material from an unknown server");
    };
    assert!(e.contains("cp-0") && e.contains("not a member"), "{e}");
    assert!(runner.calls.lock().unwrap().is_empty());
    assert!(!tmp.path().join("state/kubeadm/join.yaml").exists());
}

#[test]
fn scrub_replaces_every_secret() {
    let s = format!("a {TOKEN} b {CERT_KEY} c {TOKEN}");
    assert_eq!(
        scrub(&s, &[TOKEN.into(), CERT_KEY.into()]),
        "a <redacted> b <redacted> c <redacted>"
    );
}
