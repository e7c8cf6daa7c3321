//! The commands, and this node's own state in `state_dir/node.json` (name,
//! role, addresses, the PIDs of the etcd and apiserver daemons it started).

use std::fs;
use std::io::Write;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::cli::{self, Cmd};
use super::cluster::{self, CERTS_TTL, TOKEN_TTL};
use super::config::{self, Documents, at, str_at, str_list};
use super::etcd::{self, EtcdClient, MemberSpec, retry};
use super::{Env, Error, http, pki};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NodeState {
    pub name: String,
    pub control_plane: bool,
    pub advertise: Option<String>,
    pub bind_address: Option<String>,
    pub apiserver_port: u16,
    /// controlPlaneEndpoint (`host:port`).
    pub endpoint: String,
    pub etcd_client_url: Option<String>,
    pub etcd_peer_url: Option<String>,
    pub etcd_data_dir: Option<PathBuf>,
    pub certificates_dir: PathBuf,
    pub etcd_pid: Option<u32>,
    pub apiserver_pid: Option<u32>,
}

fn state_path(env: &Env) -> PathBuf {
    env.state_dir.join("node.json")
}

pub fn load_state(env: &Env) -> Result<Option<NodeState>, Error> {
    let p = state_path(env);
    match fs::read(&p) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| Error::Other(format!("`{}`: {e}", p.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(&p)(e)),
    }
}

fn save_state(env: &Env, st: &NodeState) -> Result<(), Error> {
    let text = serde_json::to_vec_pretty(st).expect("serializable");
    pki::write_file(&state_path(env), &text, 0o600)
}

pub fn dispatch(env: &Env, cmd: Cmd) -> Result<(), Error> {
    match cmd {
        Cmd::Init(a) => match a.phase {
            Some(cli::InitSub::Phase(p)) => match p.phase {
                cli::PhaseSub::UploadCerts(u) => upload_certs_phase(env, u),
            },
            None => init(env, a),
        },
        Cmd::Join(a) => join(env, a),
        Cmd::Token(t) => match t.cmd {
            cli::TokenSub::Create(c) => token_create(env, c),
        },
        Cmd::Certs(c) => match c.cmd {
            cli::CertsSub::CertificateKey => {
                println!("{}", cluster::new_certificate_key());
                Ok(())
            }
        },
        Cmd::Reset(r) => reset(env, r),
        Cmd::Version(v) => version(env, &v.output),
    }
}

fn version(env: &Env, output: &str) -> Result<(), Error> {
    let v = env.version.trim_start_matches('v');
    let mut parts = v.split('.');
    let (major, minor) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let info = json!({
        "major": major, "minor": minor, "gitVersion": env.version,
        "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
        "buildDate": "2025-01-01T00:00:00Z", "goVersion": "go1.24.0", "compiler": "gc",
        "platform": "linux/amd64",
    });
    match output {
        "short" => println!("{}", env.version),
        "json" => println!(
            "{}",
            serde_json::to_string_pretty(&json!({"clientVersion": info})).expect("json")
        ),
        "yaml" => {
            println!("clientVersion:");
            for (k, v) in info.as_object().expect("object") {
                println!("  {k}: {}", v.as_str().unwrap_or(""));
            }
        }
        "" => println!(
            "kubeadm version: &version.Info{{Major:\"{major}\", Minor:\"{minor}\", GitVersion:\"{}\", GitCommit:\"0000000000000000000000000000000000000000\", GitTreeState:\"clean\", BuildDate:\"2025-01-01T00:00:00Z\", GoVersion:\"go1.24.0\", Compiler:\"gc\", Platform:\"linux/amd64\"}}",
            env.version
        ),
        o => {
            return Err(Error::Kubeadm(format!("error: invalid output format: {o}")));
        }
    }
    Ok(())
}

/// kubeadm refuses `--config` with most flags (`--node-name`, `--skip-*`,
/// `--ignore-preflight-errors`, `--upload-certs` and `--v` are allowed).
/// `flags` in lexicographic order, as kubeadm visits them.
fn no_mixing(flags: &[(bool, &str)]) -> Result<(), Error> {
    let mixed: Vec<&str> = flags.iter().filter(|f| f.0).map(|f| f.1).collect();
    if mixed.is_empty() {
        return Ok(());
    }
    Err(Error::Kubeadm(format!(
        "can not mix '--config' with arguments [{}]",
        mixed.join(" ")
    )))
}

fn load_config(path: Option<&Path>) -> Result<Documents, Error> {
    let Some(p) = path else {
        return Ok(Documents::default());
    };
    let text = fs::read_to_string(p).map_err(|e| {
        Error::Kubeadm(format!(
            "unable to read config from {:?} : {e}",
            p.display().to_string()
        ))
    })?;
    let d = config::decode(&text).map_err(Error::Kubeadm)?;
    for w in &d.warnings {
        eprintln!("{w}");
    }
    Ok(d)
}

/// An `extraArgs` value, whether a v1beta3 map or a v1beta4 list.
fn extra_arg(v: Option<&Value>, name: &str) -> Option<String> {
    match v? {
        Value::Object(m) => m.get(name)?.as_str().map(str::to_string),
        Value::Array(a) => a
            .iter()
            .find(|x| x.get("name").and_then(Value::as_str) == Some(name))?
            .get("value")?
            .as_str()
            .map(str::to_string),
        _ => None,
    }
}

/// `--bind-address=IP` from a `kube-apiserver*` patch file in the
/// `patches.directory` of an Init/JoinConfiguration: how a node gives its own
/// apiserver its own bind address (the ClusterConfiguration is cluster-wide).
/// The fake only looks for that flag in the text; it applies no patch.
fn patched_bind_address(doc: Option<&Value>) -> Option<String> {
    let dir = str_at(doc, &["patches", "directory"])?;
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("kube-apiserver"))
        })
        .collect();
    entries.sort();
    entries.iter().find_map(|p| {
        let text = fs::read_to_string(p).ok()?;
        let i = text.find("--bind-address=")?;
        let rest = &text[i + "--bind-address=".len()..];
        let ip: String = rest
            .chars()
            .take_while(|c| c.is_ascii_hexdigit() || *c == '.' || *c == ':')
            .collect();
        (!ip.is_empty()).then_some(ip)
    })
}

fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_lowercase())
        .unwrap_or_else(|_| "localhost".into())
}

/// Check name and message, kubeadm's style.
type Check = (String, String);

fn file_check(path: &Path) -> Option<Check> {
    path.exists().then(|| {
        (
            format!(
                "FileAvailable-{}",
                path.display().to_string().replace('/', "-")
            ),
            format!("{} already exists", path.display()),
        )
    })
}

fn dir_check(path: &Path) -> Option<Check> {
    let non_empty = fs::read_dir(path)
        .map(|mut d| d.next().is_some())
        .unwrap_or(false);
    non_empty.then(|| {
        (
            format!(
                "DirAvailable-{}",
                path.display().to_string().replace('/', "-")
            ),
            format!("{} is not empty", path.display()),
        )
    })
}

fn port_check(ip: &str, port: u16) -> Option<Check> {
    let ip: IpAddr = ip.parse().ok()?;
    TcpListener::bind(SocketAddr::new(ip, port))
        .is_err()
        .then(|| (format!("Port-{port}"), format!("Port {port} is in use")))
}

fn preflight(checks: Vec<Option<Check>>, ignore: &[String]) -> Result<(), Error> {
    println!("[preflight] Running pre-flight checks");
    let all = ignore.iter().any(|i| i.eq_ignore_ascii_case("all"));
    let mut fatal = String::new();
    for (name, msg) in checks.into_iter().flatten() {
        if all || ignore.iter().any(|i| i.eq_ignore_ascii_case(&name)) {
            println!("\t[WARNING {name}]: {msg}");
        } else {
            fatal.push_str(&format!("\n\t[ERROR {name}]: {msg}"));
        }
    }
    if fatal.is_empty() {
        return Ok(());
    }
    Err(Error::Kubeadm(format!(
        "error execution phase preflight: [preflight] Some fatal errors occurred:{fatal}\n[preflight] If you know what you are doing, you can make a check non-fatal with `--ignore-preflight-errors=...`"
    )))
}

/// A file in `state_dir` naming one phase (e.g. `kubelet-wait-bootstrap`):
/// the next command that reaches that phase fails there, as kubeadm fails a
/// phase, and removes the file (a failure injected once; docs/testing.md).
pub const FAIL_PHASE_ONCE: &str = "fail-phase-once";

/// The failure point of `phase`: an error if [`FAIL_PHASE_ONCE`] names it
/// (the file is removed first, so it fires once).
fn fail_point(env: &Env, phase: &str) -> Result<(), Error> {
    let p = env.state_dir.join(FAIL_PHASE_ONCE);
    match fs::read_to_string(&p) {
        Ok(text) if text.trim() == phase => {
            fs::remove_file(&p).map_err(Error::io(&p))?;
            Err(Error::Kubeadm(format!(
                "error execution phase {phase}: injected failure ({} named this phase)",
                p.display()
            )))
        }
        _ => Ok(()),
    }
}

fn phase_err(phase: &str) -> impl FnOnce(Error) -> Error + '_ {
    move |e| Error::Kubeadm(format!("error execution phase {phase}: {e}"))
}

fn skipped(skip: &[String], phase: &str) -> bool {
    skip.iter().any(|s| {
        s == phase
            || s == "all"
            || phase.starts_with(&format!("{s}/"))
            || s.ends_with(&format!("/{phase}"))
    })
}

/// Static pod manifests (what kubelet would run; nothing reads them here).
fn write_manifests(etc: &Path, control: &[(&str, String)]) -> Result<(), Error> {
    for (name, cmdline) in control {
        let text = format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: kube-system\n  labels:\n    component: {name}\n    tier: control-plane\n  annotations:\n    fake-kubeadm: \"served by a process of fake-kubeadm, not by kubelet\"\nspec:\n  hostNetwork: true\n  containers:\n  - name: {name}\n    command: [{cmdline}]\n"
        );
        pki::write_file(
            &etc.join(format!("manifests/{name}.yaml")),
            text.as_bytes(),
            0o600,
        )?;
    }
    Ok(())
}

fn manifests(st: &NodeState) -> Vec<(&'static str, String)> {
    let adv = st.advertise.clone().unwrap_or_default();
    vec![
        (
            "etcd",
            format!(
                "etcd, --advertise-client-urls={}, --initial-advertise-peer-urls={}",
                st.etcd_client_url.clone().unwrap_or_default(),
                st.etcd_peer_url.clone().unwrap_or_default()
            ),
        ),
        (
            "kube-apiserver",
            format!(
                "kube-apiserver, --advertise-address={adv}, --secure-port={}",
                st.apiserver_port
            ),
        ),
        ("kube-controller-manager", "kube-controller-manager".into()),
        ("kube-scheduler", "kube-scheduler".into()),
    ]
}

/// Is `pid` alive and running `bin_name`? (A zombie counts as gone.)
fn pid_runs(pid: u32, bin_name: &str) -> bool {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .trim_start()
        .chars()
        .next();
    if stat.is_empty() || state == Some('Z') || state == Some('X') {
        return false;
    }
    let cmd = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    if cmd.is_empty() {
        // Right after spawn the child can still be inside execve (a vfork
        // spawn resumes the parent before the new image's arguments exist):
        // its cmdline reads empty until then. It runs.
        return true;
    }
    let argv0 = cmd.split(|b| *b == 0).next().unwrap_or_default();
    String::from_utf8_lossy(argv0).ends_with(bin_name)
}

/// SIGTERM, then SIGKILL after 5 s; only if `pid` still runs `bin_name`.
pub fn stop_pid(pid: u32, bin_name: &str) {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    if !pid_runs(pid, bin_name) {
        return;
    }
    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
    for _ in 0..100 {
        if !pid_runs(pid, bin_name) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
}

fn bin_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn hostport(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

fn spawn_apiserver(env: &Env, st: &NodeState) -> Result<u32, Error> {
    use std::os::unix::process::CommandExt;
    let pki_dir = &st.certificates_dir;
    let p = |s: &str| pki_dir.join(s).display().to_string();
    let log_path = env.state_dir.join("apiserver.log");
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(Error::io(&log_path))?;
    let bind = st.bind_address.clone().unwrap_or_else(|| "0.0.0.0".into());
    let mut cmd = Command::new(&env.apiserver_bin);
    cmd.arg("--listen")
        .arg(hostport(&bind, st.apiserver_port))
        .arg("--pki-dir")
        .arg(pki_dir)
        .arg("--name")
        .arg(&st.name)
        .args(["--tls-cert-file", &p("apiserver.crt")])
        .args(["--tls-private-key-file", &p("apiserver.key")])
        .args([
            "--etcd-servers",
            st.etcd_client_url.as_deref().unwrap_or_default(),
        ])
        .args(["--etcd-cafile", &p("etcd/ca.crt")])
        .args(["--etcd-certfile", &p("apiserver-etcd-client.crt")])
        .args(["--etcd-keyfile", &p("apiserver-etcd-client.key")])
        .args(["--clock-offset", &format!("{}s", env.clock.offset_secs)]);
    if let Some(f) = &env.clock.offset_file {
        cmd.arg("--clock-offset-file").arg(f);
    }
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone().map_err(Error::io(&log_path))?)
        .stderr(log)
        .process_group(0);
    let child = cmd.spawn().map_err(|e| {
        Error::Other(format!(
            "cannot start `{}`: {e}",
            env.apiserver_bin.display()
        ))
    })?;
    Ok(child.id())
}

/// Wait until `https://addr/readyz` answers 200 (trusting the cluster CA).
fn wait_apiserver(env: &Env, pid: u32, addr: &str, ca_pem: &str) -> Result<(), Error> {
    let tls = http::tls_config(ca_pem, None)?;
    let name = bin_name(&env.apiserver_bin);
    let mut exited = false;
    let r = retry(Duration::from_secs(30), Duration::from_millis(100), || {
        if !pid_runs(pid, &name) {
            exited = true;
            return Ok(());
        }
        let r = http::request(
            addr,
            tls.clone(),
            "GET",
            "/readyz",
            &[],
            None,
            Duration::from_secs(2),
        )?;
        if r.status == 200 {
            Ok(())
        } else {
            Err(Error::Other(format!("/readyz answered {}", r.status)))
        }
    });
    if exited {
        let log = env.state_dir.join("apiserver.log");
        let text = fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(3).collect();
        return Err(Error::Kubeadm(format!(
            "[control-plane-check] kube-apiserver exited (PID {pid}); last lines of {}: {}",
            log.display(),
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        )));
    }
    r.map_err(|e| {
        Error::Kubeadm(format!(
            "[control-plane-check] kube-apiserver is not healthy after 30s: {e}"
        ))
    })
}

/// A client of the local etcd with the apiserver's etcd client certificate.
fn local_etcd(st: &NodeState) -> Result<EtcdClient, Error> {
    let pki = &st.certificates_dir;
    EtcdClient::from_files(
        vec![st.etcd_client_url.clone().unwrap_or_default()],
        &pki.join("etcd/ca.crt"),
        &pki.join("apiserver-etcd-client.crt"),
        &pki.join("apiserver-etcd-client.key"),
    )
}

fn wait_etcd(c: &EtcdClient) -> Result<Vec<etcd::Member>, Error> {
    retry(Duration::from_secs(30), Duration::from_millis(100), || {
        c.member_list()
    })
    .map_err(|e| Error::Kubeadm(format!("[etcd] etcd is not healthy after 30s: {e}")))
}

/// Go-style duration (`24h0m0s`, `2h`, `0` = never) to seconds.
fn ttl_secs(s: &str) -> Result<i64, Error> {
    if s == "0" || s == "0s" {
        return Ok(0);
    }
    // humantime does not read Go's `24h0m0s` with zero parts glued; split.
    let mut total = 0i64;
    let mut num = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() || c == '.' {
            num.push(c);
            continue;
        }
        let n: f64 = num.parse().map_err(|_| {
            Error::Kubeadm(format!(
                "invalid argument {s:?} for \"--ttl\" flag: time: invalid duration {s:?}"
            ))
        })?;
        num.clear();
        total += match c {
            'h' => (n * 3600.0) as i64,
            'm' => (n * 60.0) as i64,
            's' => n as i64,
            _ => {
                return Err(Error::Kubeadm(format!(
                    "invalid argument {s:?} for \"--ttl\" flag: time: unknown unit in duration {s:?}"
                )));
            }
        };
    }
    if !num.is_empty() {
        return Err(Error::Kubeadm(format!(
            "invalid argument {s:?} for \"--ttl\" flag: time: missing unit in duration {s:?}"
        )));
    }
    Ok(total)
}

fn join_command(endpoint: &str, token: &str, pin: &str, cp_key: Option<&str>) -> String {
    // kubeadm's template, with its line continuations removed as
    // `token create --print-join-command` does: note the spaces left over.
    let mut s = format!(
        "kubeadm join {endpoint} --token {token}     --discovery-token-ca-cert-hash {pin} "
    );
    if let Some(k) = cp_key {
        s.push_str(&format!("    --control-plane --certificate-key {k}"));
    }
    s
}

fn require_control_plane(env: &Env) -> Result<NodeState, Error> {
    match load_state(env)? {
        Some(st) if st.control_plane && st.etcd_client_url.is_some() => Ok(st),
        _ => {
            let admin = env.etc_dir.join("admin.conf");
            Err(Error::Kubeadm(format!(
                "failed to load admin kubeconfig: open {}: no such file or directory",
                admin.display()
            )))
        }
    }
}

// ----------------------------------------------------------------- init

fn init(env: &Env, a: cli::InitArgs) -> Result<(), Error> {
    let docs = load_config(a.config.as_deref())?;
    if a.config.is_some() {
        no_mixing(&[
            (
                a.apiserver_advertise_address.is_some(),
                "apiserver-advertise-address",
            ),
            (a.apiserver_bind_port.is_some(), "apiserver-bind-port"),
            (
                a.apiserver_cert_extra_sans.is_some(),
                "apiserver-cert-extra-sans",
            ),
            (a.certificate_key.is_some(), "certificate-key"),
            (a.control_plane_endpoint.is_some(), "control-plane-endpoint"),
            (a.cri_socket.is_some(), "cri-socket"),
            (a.kubernetes_version.is_some(), "kubernetes-version"),
            (a.pod_network_cidr.is_some(), "pod-network-cidr"),
            (a.token.is_some(), "token"),
            (a.token_ttl.is_some(), "token-ttl"),
        ])?;
    }
    let ini = docs.init.as_ref();
    let clu = docs.cluster.as_ref();
    if at(clu, &["etcd", "external"]).is_some() {
        return Err(Error::Kubeadm(
            "fake-kubeadm: external etcd is not supported (only stacked etcd)".into(),
        ));
    }
    let name = str_at(ini, &["nodeRegistration", "name"])
        .map(str::to_string)
        .or(a.node_name.clone())
        .unwrap_or_else(hostname);
    let advertise = str_at(ini, &["localAPIEndpoint", "advertiseAddress"])
        .map(str::to_string)
        .or(a.apiserver_advertise_address.clone())
        .ok_or_else(|| {
            Error::Kubeadm(
                "fake-kubeadm: set localAPIEndpoint.advertiseAddress or --apiserver-advertise-address (it does not guess the default route's address)".into(),
            )
        })?;
    if advertise.parse::<IpAddr>().is_err() {
        return Err(Error::Kubeadm(format!(
            "localAPIEndpoint.advertiseAddress: Invalid value: {advertise:?}: couldn't use \"{advertise}\" as \"apiserver-advertise-address\", must be ipv4 or ipv6 address"
        )));
    }
    let port = at(ini, &["localAPIEndpoint", "bindPort"])
        .and_then(Value::as_u64)
        .map(|p| p as u16)
        .or(a.apiserver_bind_port)
        .unwrap_or(6443);
    let endpoint = str_at(clu, &["controlPlaneEndpoint"])
        .map(str::to_string)
        .or(a.control_plane_endpoint.clone())
        .map(|e| {
            if e.contains(':') {
                e
            } else {
                format!("{e}:{port}")
            }
        })
        .unwrap_or_else(|| hostport(&advertise, port));
    let bind = patched_bind_address(ini)
        .or_else(|| extra_arg(at(clu, &["apiServer", "extraArgs"]), "bind-address"));
    let pki_dir = str_at(clu, &["certificatesDir"])
        .map(PathBuf::from)
        .unwrap_or_else(|| env.pki());
    let data_dir = str_at(clu, &["etcd", "local", "dataDir"])
        .map(PathBuf::from)
        .unwrap_or_else(|| env.state_dir.join("etcd"));
    let k8s_version = str_at(clu, &["kubernetesVersion"])
        .map(str::to_string)
        .or(a.kubernetes_version.clone())
        .unwrap_or_else(|| env.version.clone());
    let mut skip = str_list(ini, &["skipPhases"]);
    skip.extend(a.skip_phases.iter().cloned());
    let mut ignore = str_list(ini, &["nodeRegistration", "ignorePreflightErrors"]);
    ignore.extend(a.ignore_preflight_errors.iter().cloned());
    let mut cert_sans = str_list(clu, &["apiServer", "certSANs"]);
    if let Some(extra) = &a.apiserver_cert_extra_sans {
        cert_sans.extend(extra.split(',').map(str::to_string));
    }
    let token = match at(ini, &["bootstrapTokens"])
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .and_then(|t| t.get("token"))
        .and_then(Value::as_str)
        .map(str::to_string)
        .or(a.token.clone())
    {
        Some(t) if !cluster::is_token(&t) => {
            return Err(Error::Kubeadm(format!(
                "bootstrapTokens[0].token: Invalid value: {t:?}: the bootstrap token {t:?} was not of the form \"[a-z0-9]{{6}}.[a-z0-9]{{16}}\""
            )));
        }
        Some(t) => t,
        None => cluster::new_token(),
    };
    let token_ttl = match at(ini, &["bootstrapTokens"])
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .and_then(|t| t.get("ttl"))
        .and_then(Value::as_str)
        .map(str::to_string)
        .or(a.token_ttl.clone())
    {
        Some(t) => ttl_secs(&t)?,
        None => TOKEN_TTL.as_secs() as i64,
    };
    let cert_key = str_at(ini, &["certificateKey"])
        .map(str::to_string)
        .or(a.certificate_key.clone());
    let taints = match at(ini, &["nodeRegistration", "taints"]) {
        Some(Value::Array(t)) => Value::Array(t.clone()),
        _ => json!([{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]),
    };

    println!("[init] Using Kubernetes version: {k8s_version}");
    let etc = &env.etc_dir;
    preflight(
        vec![
            file_check(&etc.join("manifests/kube-apiserver.yaml")),
            file_check(&etc.join("manifests/kube-controller-manager.yaml")),
            file_check(&etc.join("manifests/kube-scheduler.yaml")),
            file_check(&etc.join("manifests/etcd.yaml")),
            port_check(bind.as_deref().unwrap_or("0.0.0.0"), port),
            port_check(&advertise, env.etcd_client_port),
            port_check(&advertise, env.etcd_peer_port),
            dir_check(&data_dir),
        ],
        &ignore,
    )?;
    fail_point(env, "preflight")?;
    fs::create_dir_all(&env.state_dir).map_err(Error::io(&env.state_dir))?;

    // certs
    println!(
        "[certs] Using certificateDir folder {:?}",
        pki_dir.display().to_string()
    );
    for ca in [pki::Ca::Kubernetes, pki::Ca::Etcd, pki::Ca::FrontProxy] {
        if pki_dir.join(format!("{}.key", ca.stem())).exists() {
            println!("[certs] Using existing {} certificate authority", ca.stem());
        } else {
            println!("[certs] Generating \"{}\" certificate and key", ca.stem());
            pki::CaKey::create(&pki_dir, ca)?;
        }
    }
    if !pki_dir.join("sa.key").exists() {
        println!("[certs] Generating \"sa\" key and public key");
        pki::create_sa(&pki_dir)?;
    }
    let endpoint_host = endpoint
        .rsplit_once(':')
        .map(|(h, _)| h.trim_matches(|c| c == '[' || c == ']').to_string());
    let server_sans = str_list(clu, &["etcd", "local", "serverCertSANs"]);
    let peer_sans = str_list(clu, &["etcd", "local", "peerCertSANs"]);
    pki::issue_control_plane(
        &pki_dir,
        &pki::NodeCerts {
            node_name: &name,
            advertise: &advertise,
            endpoint_host: endpoint_host.as_deref(),
            cert_sans: &cert_sans,
            etcd_server_sans: &server_sans,
            etcd_peer_sans: &peer_sans,
        },
    )?;
    println!(
        "[certs] apiserver serving cert is signed for DNS names and IPs {:?}",
        pki::apiserver_sans(&pki::NodeCerts {
            node_name: &name,
            advertise: &advertise,
            endpoint_host: endpoint_host.as_deref(),
            cert_sans: &cert_sans,
            etcd_server_sans: &[],
            etcd_peer_sans: &[],
        })
    );

    // kubeconfig
    let local = hostport(&advertise, port);
    println!(
        "[kubeconfig] Using kubeconfig folder {:?}",
        etc.display().to_string()
    );
    write_control_plane_kubeconfigs(etc, &pki_dir, &endpoint, &local, &name, true)?;

    let mut st = NodeState {
        name: name.clone(),
        control_plane: true,
        advertise: Some(advertise.clone()),
        bind_address: bind.clone(),
        apiserver_port: port,
        endpoint: endpoint.clone(),
        etcd_client_url: Some(etcd::url(&advertise, env.etcd_client_port)),
        etcd_peer_url: Some(etcd::url(&advertise, env.etcd_peer_port)),
        etcd_data_dir: Some(data_dir.clone()),
        certificates_dir: pki_dir.clone(),
        etcd_pid: None,
        apiserver_pid: None,
    };
    println!(
        "[etcd] Creating static Pod manifest for local etcd in {:?}",
        etc.join("manifests").display().to_string()
    );
    write_manifests(etc, &manifests(&st))?;
    save_state(env, &st)?;

    // etcd: a new single-member cluster.
    let peer = st.etcd_peer_url.clone().expect("set");
    let pid = etcd::spawn(&MemberSpec {
        etcd_bin: &env.etcd_bin,
        name: &name,
        data_dir: &data_dir,
        ip: &advertise,
        client_port: env.etcd_client_port,
        peer_port: env.etcd_peer_port,
        initial_cluster: format!("{name}={peer}"),
        state: "new",
        pki: &pki_dir,
        log: env.state_dir.join("etcd.log"),
    })
    .map_err(phase_err("etcd/local"))?;
    st.etcd_pid = Some(pid);
    save_state(env, &st)?;
    let etcd_c = local_etcd(&st)?;
    wait_etcd(&etcd_c).map_err(phase_err("etcd/local"))?;

    // Cluster state the apiserver serves.
    let ca_pem = pki::read(&pki_dir.join("ca.crt"))?;
    let now = env.clock.now();
    let info_kubeconfig = pki::kubeconfig_text(&endpoint, &ca_pem, None);
    etcd_c.put_json(
        cluster::CLUSTER_INFO,
        &json!({"kubeconfig": info_kubeconfig}),
    )?;
    etcd_c.put_json(
        cluster::KUBEADM_CONFIG,
        &json!({
            "apiVersion": "kubeadm.k8s.io/v1beta4", "kind": "ClusterConfiguration",
            "controlPlaneEndpoint": endpoint, "kubernetesVersion": k8s_version,
            "certificatesDir": pki_dir.display().to_string(), "clusterName": "kubernetes",
            "apiServer": at(clu, &["apiServer"]).cloned().unwrap_or(json!({})),
        }),
    )?;
    put_etcd_pod(&etcd_c, &st)?;

    println!("[control-plane] Creating static Pod manifest for \"kube-apiserver\"");
    let apid = spawn_apiserver(env, &st).map_err(phase_err("control-plane"))?;
    st.apiserver_pid = Some(apid);
    save_state(env, &st)?;
    println!("[control-plane-check] Waiting for healthy control plane components.");
    wait_apiserver(env, apid, &local, &ca_pem).map_err(phase_err("wait-control-plane"))?;
    println!("[control-plane-check] kube-apiserver is healthy");

    let node_taints = if skipped(&skip, "mark-control-plane") {
        json!([])
    } else {
        taints
    };
    let node = cluster::node_object(
        &name,
        Some(&advertise),
        true,
        &node_taints,
        &k8s_version,
        now,
    );
    etcd_c.put_json(&format!("{}{name}", cluster::NODES), &node)?;

    fail_point(env, "upload-certs")?;
    let mut printed_key = None;
    if a.upload_certs && !skipped(&skip, "upload-certs") {
        let key = cert_key.unwrap_or_else(cluster::new_certificate_key);
        upload(&etcd_c, &pki_dir, &key, now)?;
        println!(
            "[upload-certs] Storing the certificates in Secret \"kubeadm-certs\" in the \"kube-system\" Namespace"
        );
        if !a.skip_certificate_key_print {
            println!("[upload-certs] Using certificate key:\n{key}");
        }
        printed_key = Some(key);
    } else {
        println!("[upload-certs] Skipping phase. Please see --upload-certs");
    }
    if !skipped(&skip, "mark-control-plane") {
        println!(
            "[mark-control-plane] Marking the node {name} as control-plane by adding the labels: [node-role.kubernetes.io/control-plane node.kubernetes.io/exclude-from-external-load-balancers]"
        );
    }
    if !skipped(&skip, "bootstrap-token") {
        let expires = if token_ttl == 0 { 0 } else { now + token_ttl };
        cluster::put_token(
            &etcd_c,
            &token,
            expires,
            &["signing", "authentication"],
            "The default bootstrap token generated by 'kubeadm init'.",
        )?;
        if !a.skip_token_print {
            println!("[bootstrap-token] Using token: {token}");
        }
    }
    let pin = pki::spki_pin(&ca_pem)?;
    let shown_token = if a.skip_token_print {
        "<value withheld>"
    } else {
        token.as_str()
    };
    let shown_key = printed_key.as_deref().map(|k| {
        if a.skip_certificate_key_print {
            "<value withheld>"
        } else {
            k
        }
    });
    println!(
        "\nYour Kubernetes control-plane has initialized successfully!\n\nTo start using your cluster, you need to run the following as a regular user:\n\n  mkdir -p $HOME/.kube\n  sudo cp -i {admin} $HOME/.kube/config\n  sudo chown $(id -u):$(id -g) $HOME/.kube/config\n\nAlternatively, if you are the root user, you can run:\n\n  export KUBECONFIG={admin}\n\nYou should now deploy a pod network to the cluster.\nRun \"kubectl apply -f [podnetwork].yaml\" with one of the options listed at:\n  https://kubernetes.io/docs/concepts/cluster-administration/addons/\n",
        admin = etc.join("admin.conf").display()
    );
    if let Some(k) = shown_key {
        println!(
            "You can now join any number of control-plane nodes running the following command on each as root:\n\n  kubeadm join {endpoint} --token {shown_token} \\\n\t--discovery-token-ca-cert-hash {pin} \\\n\t--control-plane --certificate-key {k}\n\nPlease note that the certificate-key gives access to cluster sensitive data, keep it secret!\nAs a safeguard, uploaded-certs will be deleted in two hours; If necessary, you can use\n\"kubeadm init phase upload-certs --upload-certs\" to reload certs afterward.\n"
        );
    }
    println!(
        "Then you can join any number of worker nodes by running the following on each as root:\n\nkubeadm join {endpoint} --token {shown_token} \\\n\t--discovery-token-ca-cert-hash {pin} "
    );
    Ok(())
}

fn put_etcd_pod(c: &EtcdClient, st: &NodeState) -> Result<(), Error> {
    let url = st.etcd_client_url.clone().unwrap_or_default();
    c.put_json(
        &format!("{}{}", cluster::ETCD_PODS, st.name),
        &json!({
            "kind": "Pod", "apiVersion": "v1",
            "metadata": {
                "name": format!("etcd-{}", st.name), "namespace": "kube-system",
                "labels": {"component": "etcd", "tier": "control-plane"},
                "annotations": {"kubeadm.kubernetes.io/etcd.advertise-client-urls": url},
            },
            "spec": {"nodeName": st.name},
        }),
    )
}

/// Seal the shared certificates with `key` into the `kubeadm-certs` record.
fn upload(c: &EtcdClient, pki_dir: &Path, key: &str, now: i64) -> Result<(), Error> {
    let mut data = serde_json::Map::new();
    for (name, rel) in pki::UPLOADED {
        let text = pki::read(&pki_dir.join(rel))?;
        data.insert(
            (*name).to_string(),
            json!(cluster::seal(key, text.as_bytes())?),
        );
    }
    c.put_json(
        cluster::KUBEADM_CERTS,
        &json!({"expires": now + CERTS_TTL.as_secs() as i64, "data": data}),
    )
}

fn upload_certs_phase(env: &Env, a: cli::UploadCertsArgs) -> Result<(), Error> {
    let docs = load_config(a.config.as_deref())?;
    if !a.upload_certs {
        println!("[upload-certs] Skipping phase. Please see --upload-certs");
        return Ok(());
    }
    let st = require_control_plane(env)?;
    let key = a
        .certificate_key
        .clone()
        .or_else(|| str_at(docs.init.as_ref(), &["certificateKey"]).map(str::to_string))
        .unwrap_or_else(cluster::new_certificate_key);
    let c = cluster_etcd(&st)?;
    upload(&c, &st.certificates_dir, &key, env.clock.now()).map_err(phase_err("upload-certs"))?;
    println!(
        "[upload-certs] Storing the certificates in Secret \"kubeadm-certs\" in the \"kube-system\" Namespace"
    );
    if !a.skip_certificate_key_print {
        println!("[upload-certs] Using certificate key:\n{key}");
    }
    Ok(())
}

fn token_create(env: &Env, a: cli::TokenCreateArgs) -> Result<(), Error> {
    let st = require_control_plane(env)?;
    let token = match a.token {
        Some(t) if !cluster::is_token(&t) => {
            return Err(Error::Kubeadm(format!(
                "the bootstrap token {t:?} was not of the form \"[a-z0-9]{{6}}.[a-z0-9]{{16}}\""
            )));
        }
        Some(t) => t,
        None => cluster::new_token(),
    };
    let ttl = ttl_secs(&a.ttl)?;
    let now = env.clock.now();
    let c = cluster_etcd(&st)?;
    let usages: Vec<&str> = a.usages.iter().map(String::as_str).collect();
    cluster::put_token(
        &c,
        &token,
        if ttl == 0 { 0 } else { now + ttl },
        &usages,
        a.description.as_deref().unwrap_or(""),
    )?;
    if a.print_join_command {
        let ca = pki::read(&st.certificates_dir.join("ca.crt"))?;
        let pin = pki::spki_pin(&ca)?;
        println!(
            "{}",
            join_command(&st.endpoint, &token, &pin, a.certificate_key.as_deref())
        );
    } else {
        println!("{token}");
    }
    Ok(())
}

// ----------------------------------------------------------------- join

struct Discovered {
    ca_pem: String,
    tls: std::sync::Arc<rustls::ClientConfig>,
}

fn discover(
    env: &Env,
    endpoint: &str,
    token: &str,
    pins: &[String],
    skip_ca: bool,
) -> Result<Discovered, Error> {
    let wrap = |m: String| {
        Error::Kubeadm(format!(
            "error execution phase preflight: couldn't validate the identity of the API Server: {m}"
        ))
    };
    let (id, secret) = token.split_once('.').expect("checked token");
    let path = "/api/v1/namespaces/kube-public/configmaps/cluster-info?timeout=10s";
    let reply = retry(env.discovery_timeout, Duration::from_millis(200), || {
        http::request(
            endpoint,
            http::insecure_config(),
            "GET",
            path,
            &[],
            None,
            Duration::from_secs(5),
        )
    })
    .map_err(|e| wrap(format!("Get \"https://{endpoint}{path}\": {e}")))?;
    if reply.status != 200 {
        return Err(wrap(format!(
            "failed to request the cluster-info ConfigMap: {}",
            reply.text()
        )));
    }
    let cm: Value = serde_json::from_slice(&reply.body)
        .map_err(|e| wrap(format!("bad cluster-info ConfigMap: {e}")))?;
    let kubeconfig = cm["data"]["kubeconfig"].as_str().unwrap_or("").to_string();
    let Some(sig) = cm["data"][format!("jws-kubeconfig-{id}")].as_str() else {
        return Err(wrap(format!(
            "token id {id:?} is invalid for this cluster or it has expired. Use \"kubeadm token create\" on the control-plane node to create a new valid token"
        )));
    };
    if sig != cluster::jws(id, secret, &kubeconfig) {
        return Err(wrap(
            "failed to verify JWS signature of received cluster info object, can't trust this API Server".into(),
        ));
    }
    let kc = super::yaml::parse_documents(&kubeconfig)
        .ok()
        .and_then(|d| d.into_iter().next())
        .unwrap_or(Value::Null);
    let ca_b64 = kc["clusters"][0]["cluster"]["certificate-authority-data"]
        .as_str()
        .unwrap_or("");
    use base64::Engine;
    let ca_pem = base64::engine::general_purpose::STANDARD
        .decode(ca_b64)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| wrap("the cluster-info kubeconfig has no CA".into()))?;
    let pin = pki::spki_pin(&ca_pem)?;
    if !skip_ca && !pins.iter().any(|p| p.eq_ignore_ascii_case(&pin)) {
        return Err(wrap(format!(
            "cluster CA found in cluster-info ConfigMap is invalid: none of the public keys \"{pin}\" are pinned"
        )));
    }
    println!(
        "[discovery] Cluster info signature and contents are valid and TLS certificate validates against pinned roots, will use API Server {endpoint:?}"
    );
    Ok(Discovered {
        tls: http::tls_config(&ca_pem, None)?,
        ca_pem,
    })
}

fn api_get(
    endpoint: &str,
    d: &Discovered,
    path: &str,
    bearer: Option<&str>,
) -> Result<http::Reply, Error> {
    let auth = bearer.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    http::request(
        endpoint,
        d.tls.clone(),
        "GET",
        path,
        &headers,
        None,
        Duration::from_secs(5),
    )
}

fn join(env: &Env, a: cli::JoinArgs) -> Result<(), Error> {
    let docs = load_config(a.config.as_deref())?;
    let j = docs.join.as_ref();
    if a.config.is_some() && docs.join.is_none() {
        return Err(Error::Kubeadm(format!(
            "no JoinConfiguration kind was found in the YAML file {:?}",
            a.config
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        )));
    }
    if a.config.is_some() {
        no_mixing(&[
            (
                a.apiserver_advertise_address.is_some(),
                "apiserver-advertise-address",
            ),
            (a.apiserver_bind_port.is_some(), "apiserver-bind-port"),
            (a.certificate_key.is_some(), "certificate-key"),
            (a.control_plane, "control-plane"),
            (a.cri_socket.is_some(), "cri-socket"),
            (
                !a.discovery_token_ca_cert_hash.is_empty(),
                "discovery-token-ca-cert-hash",
            ),
            (
                a.discovery_token_unsafe_skip_ca_verification,
                "discovery-token-unsafe-skip-ca-verification",
            ),
            (a.discovery_token.is_some(), "discovery-token"),
            (a.tls_bootstrap_token.is_some(), "tls-bootstrap-token"),
            (a.token.is_some(), "token"),
        ])?;
    }
    let endpoint = a
        .endpoint
        .clone()
        .or_else(|| str_at(j, &["discovery", "bootstrapToken", "apiServerEndpoint"]).map(str::to_string))
        .ok_or_else(|| {
            Error::Kubeadm("discovery.bootstrapToken.apiServerEndpoint: Invalid value: \"\": the API server endpoint is required".into())
        })?;
    let disc_token = a
        .discovery_token
        .clone()
        .or(a.token.clone())
        .or_else(|| str_at(j, &["discovery", "bootstrapToken", "token"]).map(str::to_string))
        .unwrap_or_default();
    let tls_token = a
        .tls_bootstrap_token
        .clone()
        .or(a.token.clone())
        .or_else(|| str_at(j, &["discovery", "tlsBootstrapToken"]).map(str::to_string))
        .unwrap_or_else(|| disc_token.clone());
    for (field, t) in [
        ("discovery.bootstrapToken.token", &disc_token),
        ("discovery.tlsBootstrapToken", &tls_token),
    ] {
        if !cluster::is_token(t) {
            return Err(Error::Kubeadm(format!(
                "{field}: Invalid value: {t:?}: the bootstrap token {t:?} was not of the form \"[a-z0-9]{{6}}.[a-z0-9]{{16}}\""
            )));
        }
    }
    let mut pins = a.discovery_token_ca_cert_hash.clone();
    pins.extend(str_list(
        j,
        &["discovery", "bootstrapToken", "caCertHashes"],
    ));
    let skip_ca = a.discovery_token_unsafe_skip_ca_verification
        || at(
            j,
            &["discovery", "bootstrapToken", "unsafeSkipCAVerification"],
        )
        .and_then(Value::as_bool)
            == Some(true);
    if pins.is_empty() && !skip_ca {
        return Err(Error::Kubeadm(
            "discovery.bootstrapToken: Invalid value: \"\": using token-based discovery without caCertHashes can be unsafe. Set unsafeSkipCAVerification as true in your kubeadm config file or pass --discovery-token-unsafe-skip-ca-verification flag to continue".into(),
        ));
    }
    let control_plane = a.control_plane || at(j, &["controlPlane"]).is_some_and(|v| !v.is_null());
    let cert_key = a
        .certificate_key
        .clone()
        .or_else(|| str_at(j, &["controlPlane", "certificateKey"]).map(str::to_string));
    let name = str_at(j, &["nodeRegistration", "name"])
        .map(str::to_string)
        .or(a.node_name.clone())
        .unwrap_or_else(hostname);
    let mut skip = str_list(j, &["skipPhases"]);
    skip.extend(a.skip_phases.iter().cloned());
    let mut ignore = str_list(j, &["nodeRegistration", "ignorePreflightErrors"]);
    ignore.extend(a.ignore_preflight_errors.iter().cloned());
    let etc = &env.etc_dir;
    let pki_dir = env.pki();

    let mut checks = vec![
        file_check(&etc.join("kubelet.conf")),
        file_check(&etc.join("bootstrap-kubelet.conf")),
        file_check(&pki_dir.join("ca.crt")),
    ];
    let (advertise, port) = if control_plane {
        let adv = str_at(j, &["controlPlane", "localAPIEndpoint", "advertiseAddress"])
            .map(str::to_string)
            .or(a.apiserver_advertise_address.clone())
            .ok_or_else(|| {
                Error::Kubeadm(
                    "fake-kubeadm: set controlPlane.localAPIEndpoint.advertiseAddress or --apiserver-advertise-address".into(),
                )
            })?;
        let port = at(j, &["controlPlane", "localAPIEndpoint", "bindPort"])
            .and_then(Value::as_u64)
            .map(|p| p as u16)
            .or(a.apiserver_bind_port)
            .unwrap_or(6443);
        checks.push(file_check(&etc.join("manifests/kube-apiserver.yaml")));
        checks.push(file_check(&etc.join("manifests/etcd.yaml")));
        checks.push(port_check(&adv, env.etcd_client_port));
        checks.push(port_check(&adv, env.etcd_peer_port));
        checks.push(dir_check(&env.state_dir.join("etcd")));
        (Some(adv), port)
    } else {
        (None, 6443)
    };
    preflight(checks, &ignore)?;
    fail_point(env, "preflight")?;
    let d = discover(env, &endpoint, &disc_token, &pins, skip_ca)?;
    fs::create_dir_all(&env.state_dir).map_err(Error::io(&env.state_dir))?;
    let now = env.clock.now();
    let kubelet_version = env.version.clone();

    if !control_plane {
        // Worker: CA, kubelet.conf, Node registration (TLS bootstrap).
        pki::write_file(&pki_dir.join("ca.crt"), d.ca_pem.as_bytes(), 0o644)?;
        let node_ip = extra_arg(at(j, &["nodeRegistration", "kubeletExtraArgs"]), "node-ip");
        let taints = at(j, &["nodeRegistration", "taints"])
            .cloned()
            .unwrap_or(json!([]));
        fail_point(env, "kubelet-start")?;
        register_node(
            &endpoint,
            &d,
            &tls_token,
            &cluster::node_object(
                &name,
                node_ip.as_deref(),
                false,
                &taints,
                &kubelet_version,
                now,
            ),
            &name,
        )
        .map_err(phase_err("kubelet-start"))?;
        write_joined_kubelet_conf(etc, &endpoint, &d.ca_pem)?;
        save_state(
            env,
            &NodeState {
                name: name.clone(),
                control_plane: false,
                endpoint: endpoint.clone(),
                certificates_dir: pki_dir.clone(),
                ..NodeState::default()
            },
        )?;
        println!(
            "[kubelet-start] Starting the kubelet\n[kubelet-start] Waiting for the kubelet to perform the TLS Bootstrap\n\nThis node has joined the cluster:\n* Certificate signing request was sent to apiserver and a response was received.\n* The Kubelet was informed of the new secure connection details.\n\nRun 'kubectl get nodes' on the control-plane to see this node join the cluster.\n"
        );
        return Ok(());
    }

    let adv = advertise.expect("control plane");
    // preflight: the cluster's configuration.
    let cfg_reply = api_get(
        &endpoint,
        &d,
        "/api/v1/namespaces/kube-system/configmaps/kubeadm-config",
        None,
    )
    .map_err(phase_err("preflight"))?;
    let cluster_cfg: Value = serde_json::from_slice::<Value>(&cfg_reply.body)
        .ok()
        .and_then(|cm| {
            cm["data"]["ClusterConfiguration"]
                .as_str()
                .and_then(|s| serde_json::from_str(s).ok())
        })
        .ok_or_else(|| {
            Error::Kubeadm(
                "error execution phase preflight: unable to fetch the kubeadm-config ConfigMap"
                    .into(),
            )
        })?;
    let cp_endpoint = cluster_cfg["controlPlaneEndpoint"]
        .as_str()
        .unwrap_or(&endpoint)
        .to_string();
    println!(
        "[preflight] Reading configuration from the \"kubeadm-config\" ConfigMap in namespace \"kube-system\"..."
    );

    // control-plane-prepare/download-certs
    fail_point(env, "control-plane-prepare/download-certs")?;
    if !skipped(&skip, "control-plane-prepare/download-certs") {
        let Some(key) = cert_key.as_deref() else {
            return Err(Error::Kubeadm(format!(
                "error execution phase control-plane-prepare/download-certs: failure loading certificate authority: couldn't load the certificate file {}: open {}: no such file or directory (pass --certificate-key to download the uploaded certificates)",
                pki_dir.join("ca.crt").display(),
                pki_dir.join("ca.crt").display()
            )));
        };
        let dl = |m: String| {
            Error::Kubeadm(format!(
                "error execution phase control-plane-prepare/download-certs: error downloading certs: {m}"
            ))
        };
        let r = api_get(
            &endpoint,
            &d,
            "/api/v1/namespaces/kube-system/secrets/kubeadm-certs",
            Some(&tls_token),
        )
        .map_err(|e| dl(e.to_string()))?;
        match r.status {
            200 => {}
            404 => return Err(dl("error downloading the secret: Secret \"kubeadm-certs\" was not found in the \"kube-system\" Namespace. This Secret might have expired. Please, run `kubeadm init phase upload-certs --upload-certs` on a control plane to generate a new one".into())),
            401 => return Err(dl("error downloading the secret: Unauthorized".into())),
            s => return Err(dl(format!("error downloading the secret: HTTP {s}: {}", r.text()))),
        }
        let secret: Value = serde_json::from_slice(&r.body).map_err(|e| dl(e.to_string()))?;
        let mut files = Vec::new();
        for (name, rel) in pki::UPLOADED {
            let sealed = secret["data"][*name]
                .as_str()
                .ok_or_else(|| dl(format!("the Secret has no {name:?}")))?;
            let plain = cluster::open(key, sealed).map_err(|e| dl(e.to_string()))?;
            files.push((*rel, plain));
        }
        for (rel, plain) in files {
            let mode = if rel.ends_with(".key") { 0o600 } else { 0o644 };
            pki::write_file(&pki_dir.join(rel), &plain, mode)?;
        }
        println!(
            "[download-certs] Downloading the certificates in Secret \"kubeadm-certs\" in the \"kube-system\" Namespace\n[download-certs] Saving the certificates to the folder: {:?}",
            pki_dir.display().to_string()
        );
    }

    // control-plane-prepare/certs, kubeconfig
    let endpoint_host = cp_endpoint
        .rsplit_once(':')
        .map(|(h, _)| h.trim_matches(|c| c == '[' || c == ']').to_string());
    let cluster_sans: Vec<String> = cluster_cfg["apiServer"]["certSANs"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    fail_point(env, "control-plane-prepare/certs")?;
    pki::issue_control_plane(
        &pki_dir,
        &pki::NodeCerts {
            node_name: &name,
            advertise: &adv,
            endpoint_host: endpoint_host.as_deref(),
            cert_sans: &cluster_sans,
            etcd_server_sans: &[],
            etcd_peer_sans: &[],
        },
    )
    .map_err(phase_err("control-plane-prepare/certs"))?;
    let local = hostport(&adv, port);
    fail_point(env, "control-plane-prepare/kubeconfig")?;
    write_control_plane_kubeconfigs(etc, &pki_dir, &cp_endpoint, &local, &name, false)?;
    let data_dir = env.state_dir.join("etcd");
    let mut st = NodeState {
        name: name.clone(),
        control_plane: true,
        advertise: Some(adv.clone()),
        bind_address: patched_bind_address(j).or_else(|| {
            extra_arg(
                cluster_cfg
                    .get("apiServer")
                    .and_then(|a| a.get("extraArgs")),
                "bind-address",
            )
        }),
        apiserver_port: port,
        endpoint: cp_endpoint.clone(),
        etcd_client_url: Some(etcd::url(&adv, env.etcd_client_port)),
        etcd_peer_url: Some(etcd::url(&adv, env.etcd_peer_port)),
        etcd_data_dir: Some(data_dir.clone()),
        certificates_dir: pki_dir.clone(),
        etcd_pid: None,
        apiserver_pid: None,
    };
    write_manifests(etc, &manifests(&st))?;
    save_state(env, &st)?;

    // etcd-join: add a learner, start it, promote it once in sync.
    if !skipped(&skip, "etcd-join") && !skipped(&skip, "control-plane-join/etcd-join") {
        fail_point(env, "etcd-join")?;
        join_etcd(env, &endpoint, &d, &mut st, &data_dir).map_err(phase_err("etcd-join"))?;
        save_state(env, &st)?;
    }
    // control-plane: the apiserver, on the local etcd.
    fail_point(env, "control-plane-prepare/control-plane")?;
    let pid =
        spawn_apiserver(env, &st).map_err(phase_err("control-plane-prepare/control-plane"))?;
    st.apiserver_pid = Some(pid);
    save_state(env, &st)?;
    fail_point(env, "wait-control-plane")?;
    wait_apiserver(env, pid, &local, &d.ca_pem).map_err(phase_err("wait-control-plane"))?;
    // kubelet-wait-bootstrap + mark-control-plane: the Node.
    let taints = if skipped(&skip, "control-plane-join/mark-control-plane")
        || skipped(&skip, "mark-control-plane")
    {
        json!([])
    } else {
        at(j, &["nodeRegistration", "taints"]).cloned().unwrap_or(
            json!([{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]),
        )
    };
    fail_point(env, "kubelet-wait-bootstrap")?;
    register_node(
        &endpoint,
        &d,
        &tls_token,
        &cluster::node_object(&name, Some(&adv), true, &taints, &kubelet_version, now),
        &name,
    )
    .map_err(phase_err("kubelet-wait-bootstrap"))?;
    println!(
        "\nThis node has joined the cluster and a new control plane instance was created:\n\n* Certificate signing request was sent to apiserver and approval was received.\n* The Kubelet was informed of the new secure connection details.\n* Control plane label and taint were applied to the new node.\n* The Kubernetes control plane instances scaled up.\n* A new etcd member was added to the local/stacked etcd cluster.\n\nTo start administering your cluster from this node, you need to run the following as a regular user:\n\n\tmkdir -p $HOME/.kube\n\tsudo cp -i {} $HOME/.kube/config\n\tsudo chown $(id -u):$(id -g) $HOME/.kube/config\n\nRun 'kubectl get nodes' to see this node join the cluster.\n",
        etc.join("admin.conf").display()
    );
    Ok(())
}

fn write_joined_kubelet_conf(etc: &Path, endpoint: &str, ca_pem: &str) -> Result<(), Error> {
    let text = pki::kubeconfig_text(endpoint, ca_pem, None).replace(
        "contexts: null\ncurrent-context: \"\"\nkind: Config\npreferences: {}\nusers: null\n",
        "contexts:\n- context:\n    cluster: kubernetes\n    user: default-auth\n  name: default-context\ncurrent-context: default-context\nkind: Config\npreferences: {}\nusers:\n- name: default-auth\n  user:\n    client-certificate: /var/lib/kubelet/pki/kubelet-client-current.pem\n    client-key: /var/lib/kubelet/pki/kubelet-client-current.pem\n",
    );
    pki::write_file(&etc.join("kubelet.conf"), text.as_bytes(), 0o600)
}

fn register_node(
    endpoint: &str,
    d: &Discovered,
    token: &str,
    node: &Value,
    name: &str,
) -> Result<(), Error> {
    let auth = format!("Bearer {token}");
    let r = http::request(
        endpoint,
        d.tls.clone(),
        "POST",
        "/api/v1/nodes",
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        Some(node.to_string().as_bytes()),
        Duration::from_secs(5),
    )?;
    match r.status {
        201 | 200 => Ok(()),
        401 => Err(Error::Kubeadm(format!(
            "the TLS Bootstrap of node {name:?} failed: Unauthorized (is the bootstrap token valid?)"
        ))),
        409 => Err(Error::Kubeadm(format!(
            "a Node with name {name:?} and status \"Ready\" already exists in the cluster. You must delete the existing Node or change the name of this new joining Node"
        ))),
        s => Err(Error::Kubeadm(format!(
            "registering Node {name:?}: HTTP {s}: {}",
            r.text()
        ))),
    }
}

fn join_etcd(
    env: &Env,
    endpoint: &str,
    d: &Discovered,
    st: &mut NodeState,
    data_dir: &Path,
) -> Result<(), Error> {
    let pods = api_get(
        endpoint,
        d,
        "/api/v1/namespaces/kube-system/pods?labelSelector=component%3Detcd%2Ctier%3Dcontrol-plane",
        None,
    )?;
    let pods: Value =
        serde_json::from_slice(&pods.body).map_err(|e| Error::Other(format!("etcd pods: {e}")))?;
    let urls: Vec<String> = pods["items"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| {
                    p["metadata"]["annotations"]["kubeadm.kubernetes.io/etcd.advertise-client-urls"]
                        .as_str()
                        .map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default();
    if urls.is_empty() {
        return Err(Error::Kubeadm(
            "could not find any etcd endpoint in the etcd static Pods' annotations".into(),
        ));
    }
    let pki = &st.certificates_dir;
    let c = EtcdClient::from_files(
        urls,
        &pki.join("etcd/ca.crt"),
        &pki.join("etcd/healthcheck-client.crt"),
        &pki.join("etcd/healthcheck-client.key"),
    )?;
    let peer = st.etcd_peer_url.clone().expect("control plane");
    let existing = c.member_list()?;
    let (id, members) = match existing.iter().find(|m| m.peer_urls.contains(&peer)) {
        Some(m) => {
            println!("[etcd] Member with the peer URL {peer} already exists, reusing it");
            (m.id, existing.clone())
        }
        None => {
            println!("[etcd] Adding etcd member as learner: {peer}");
            // etcd refuses a reconfiguration until every member has been
            // connected for a while ("unhealthy cluster"): kubeadm retries.
            retry(Duration::from_secs(60), Duration::from_millis(500), || {
                c.member_add_learner(&peer)
            })?
        }
    };
    let mut initial: Vec<String> = members
        .iter()
        .filter(|m| m.id != id && !m.name.is_empty())
        .filter_map(|m| m.peer_urls.first().map(|u| format!("{}={u}", m.name)))
        .collect();
    initial.push(format!("{}={peer}", st.name));
    let pid = etcd::spawn(&MemberSpec {
        etcd_bin: &env.etcd_bin,
        name: &st.name,
        data_dir,
        ip: st.advertise.as_deref().unwrap_or_default(),
        client_port: env.etcd_client_port,
        peer_port: env.etcd_peer_port,
        initial_cluster: initial.join(","),
        state: "existing",
        pki,
        log: env.state_dir.join("etcd.log"),
    })?;
    st.etcd_pid = Some(pid);
    save_state(env, st)?;
    println!("[etcd] Waiting for the new etcd member to join the cluster. This can take up to 40s");
    retry(Duration::from_secs(60), Duration::from_millis(200), || {
        match c.member_promote(id) {
            Ok(()) => Ok(()),
            // A voter already (a reused member, or a lost reply): done.
            // "can only promote a learner member which is in sync with
            // leader" means not yet: retry.
            Err(e) => match c.member_list() {
                Ok(ms) if ms.iter().any(|m| m.id == id && !m.is_learner) => Ok(()),
                _ => Err(e),
            },
        }
    })
    .map_err(|e| {
        Error::Kubeadm(format!(
            "error creating local etcd static pod manifest file: {e}"
        ))
    })?;
    println!("[etcd] The learner was promoted to a voting member: {id:x}");
    put_etcd_pod(&c, st)?;
    Ok(())
}

// ----------------------------------------------------------------- reset

fn reset(env: &Env, a: cli::ResetArgs) -> Result<(), Error> {
    let _ = load_config(a.config.as_deref())?;
    if !a.force {
        print!(
            "[reset] WARNING: Changes made to this host by 'kubeadm init' or 'kubeadm join' will be reverted.\n[reset] Are you sure you want to proceed? [y/N]: "
        );
        let _ = std::io::stdout().flush();
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
        if !line.trim().eq_ignore_ascii_case("y") {
            return Err(Error::Kubeadm("aborted reset operation".into()));
        }
    }
    let st = load_state(env)?;
    println!("[preflight] Running pre-flight checks");
    let etc = &env.etc_dir;
    let mut data_dir = env.state_dir.join("etcd");
    if let Some(st) = &st {
        if let Some(d) = &st.etcd_data_dir {
            data_dir = d.clone();
        }
        // remove-etcd-member (while our etcd still runs).
        if st.control_plane
            && st.etcd_client_url.is_some()
            && !skipped(&a.skip_phases, "remove-etcd-member")
        {
            match remove_member(env, st) {
                Ok(msg) => println!("{msg}"),
                Err(e) => eprintln!(
                    "[reset] WARNING: failed to remove etcd member: {e}, please manually remove this etcd member using etcdctl"
                ),
            }
        }
        println!("[reset] Stopping the kubelet service");
        if let Some(p) = st.apiserver_pid {
            stop_pid(p, &bin_name(&env.apiserver_bin));
        }
        if let Some(p) = st.etcd_pid {
            stop_pid(p, &bin_name(&env.etcd_bin));
        }
    } else {
        println!(
            "[reset] WARNING: no fake-kubeadm state in {}: nothing was started here",
            env.state_dir.display()
        );
    }
    if data_dir.exists() {
        let _ = fs::remove_dir_all(&data_dir);
        println!(
            "[reset] Deleted contents of the etcd data directory: {}",
            data_dir.display()
        );
    }
    let pki_dir = st
        .as_ref()
        .map(|s| s.certificates_dir.clone())
        .unwrap_or_else(|| env.pki());
    let dirs = [etc.join("manifests"), pki_dir];
    for d in &dirs {
        if let Ok(rd) = fs::read_dir(d) {
            for e in rd.flatten() {
                let p = e.path();
                let _ = if p.is_dir() {
                    fs::remove_dir_all(&p)
                } else {
                    fs::remove_file(&p)
                };
            }
        }
    }
    println!(
        "[reset] Deleting contents of directories: {:?}",
        dirs.iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
    );
    let files: Vec<PathBuf> = [
        "admin.conf",
        "super-admin.conf",
        "kubelet.conf",
        "bootstrap-kubelet.conf",
        "controller-manager.conf",
        "scheduler.conf",
    ]
    .iter()
    .map(|f| etc.join(f))
    .collect();
    for f in &files {
        let _ = fs::remove_file(f);
    }
    println!(
        "[reset] Deleting files: {:?}",
        files
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
    );
    let _ = fs::remove_file(state_path(env));
    for f in ["etcd.pid", "apiserver.pid"] {
        let _ = fs::remove_file(env.state_dir.join(f));
    }
    println!(
        "\nThe reset process does not clean CNI configuration. To do so, you must remove /etc/cni/net.d\n\nThe reset process does not reset or clean up iptables rules or IPVS tables.\nIf you wish to reset iptables, you must do so manually by using the \"iptables\" command.\n\nIf your cluster was setup to utilize IPVS, run ipvsadm --clear (or similar)\nto reset your system's IPVS tables.\n\nThe reset process does not clean your kubeconfig files and you must remove them manually.\nPlease, check the contents of the $HOME/.kube/config file."
    );
    Ok(())
}

/// The etcd client URLs the cluster's etcd pods advertise, read through the
/// control-plane endpoint (as kubeadm reset does with admin.conf), trusting
/// the local CA.
fn cluster_etcd_urls(st: &NodeState) -> Result<Vec<String>, Error> {
    let ca = pki::read(&st.certificates_dir.join("ca.crt"))?;
    let r = http::request(
        &st.endpoint,
        http::tls_config(&ca, None)?,
        "GET",
        "/api/v1/namespaces/kube-system/pods?labelSelector=component%3Detcd",
        &[],
        None,
        Duration::from_secs(5),
    )?;
    let v: Value = serde_json::from_slice(&r.body)
        .map_err(|e| Error::Other(format!("etcd pods from {}: {e}", st.endpoint)))?;
    Ok(v["items"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| {
                    p["metadata"]["annotations"]["kubeadm.kubernetes.io/etcd.advertise-client-urls"]
                        .as_str()
                        .map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default())
}

/// A client of the cluster's etcd: the local member if it answers, else
/// the members the etcd pods advertise (kubeadm goes through the API server
/// at the control-plane endpoint for what the fake writes to etcd).
fn cluster_etcd(st: &NodeState) -> Result<EtcdClient, Error> {
    let local = local_etcd(st)?;
    let local_err = match local.member_list() {
        Ok(_) => return Ok(local),
        Err(e) => e,
    };
    let urls = cluster_etcd_urls(st).map_err(|e| {
        Error::Other(format!(
            "local etcd: {local_err}; cluster's etcd endpoints: {e}"
        ))
    })?;
    let pki = &st.certificates_dir;
    EtcdClient::from_files(
        urls,
        &pki.join("etcd/ca.crt"),
        &pki.join("apiserver-etcd-client.crt"),
        &pki.join("apiserver-etcd-client.key"),
    )
}

/// kubeadm's remove-etcd-member: find this node's member by its peer URL
/// and remove it through another member, retried every 500 ms for
/// `etcd_api_timeout` like kubeadm's `RemoveMember` (etcd refuses to remove
/// a voter with "unhealthy cluster" until the members that stay have been
/// connected for 5 s, its health interval: a member promoted a moment ago,
/// in a two-member cluster, is refused at first). "member not found" is
/// done (a removal whose reply was lost).
/// A control plane's kubeconfig files: `admin.conf` (and at init
/// `super-admin.conf`, which kubeadm writes only there) through the
/// control-plane endpoint, the node's own through its local apiserver.
fn write_control_plane_kubeconfigs(
    etc: &Path,
    pki_dir: &Path,
    endpoint: &str,
    local: &str,
    name: &str,
    init: bool,
) -> Result<(), Error> {
    let node_user = format!("system:node:{name}");
    let mut files = vec![(
        "admin.conf",
        endpoint,
        "kubernetes-admin",
        vec!["kubeadm:cluster-admins"],
    )];
    if init {
        files.push((
            "super-admin.conf",
            endpoint,
            "kubernetes-super-admin",
            vec!["system:masters"],
        ));
    }
    files.extend([
        (
            "kubelet.conf",
            local,
            node_user.as_str(),
            vec!["system:nodes"],
        ),
        (
            "controller-manager.conf",
            local,
            "system:kube-controller-manager",
            vec![],
        ),
        ("scheduler.conf", local, "system:kube-scheduler", vec![]),
    ]);
    for (file, server, user, orgs) in files {
        if init {
            println!("[kubeconfig] Writing {file:?} kubeconfig file");
        }
        pki::write_kubeconfig(&etc.join(file), pki_dir, server, user, &orgs)?;
    }
    Ok(())
}

fn remove_member(env: &Env, st: &NodeState) -> Result<String, Error> {
    // Our own etcd first; if it is dead, the members the cluster knows.
    let c = cluster_etcd(st)?;
    let members = c.member_list()?;
    let peer = st.etcd_peer_url.clone().unwrap_or_default();
    let Some(me) = members.iter().find(|m| m.peer_urls.contains(&peer)) else {
        return Ok("[reset] This node is not an etcd member any more".into());
    };
    if members.len() == 1 {
        return Ok("[reset] This is the only etcd member: not removing it".into());
    }
    // Drop our etcd pod record first: once removed we cannot write.
    let _ = c.delete(&format!("{}{}", cluster::ETCD_PODS, st.name));
    // Ask another member: ours stops serving as soon as it is removed.
    let others: Vec<String> = members
        .iter()
        .filter(|m| m.id != me.id)
        .flat_map(|m| m.client_urls.clone())
        .collect();
    let pki = &st.certificates_dir;
    let oc = EtcdClient::from_files(
        others,
        &pki.join("etcd/ca.crt"),
        &pki.join("apiserver-etcd-client.crt"),
        &pki.join("apiserver-etcd-client.key"),
    )?;
    retry(
        env.etcd_api_timeout,
        Duration::from_millis(500),
        || match oc.member_remove(me.id) {
            Err(e) if e.to_string().contains("member not found") => Ok(()),
            r => r,
        },
    )?;
    Ok(format!(
        "[reset] Removed etcd member {:x} ({}) from the cluster",
        me.id, me.name
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(ttl_secs("24h0m0s").unwrap(), 86400);
        assert_eq!(ttl_secs("2h").unwrap(), 7200);
        assert_eq!(ttl_secs("1h30m").unwrap(), 5400);
        assert_eq!(ttl_secs("0").unwrap(), 0);
        assert!(
            ttl_secs("10")
                .unwrap_err()
                .to_string()
                .contains("missing unit")
        );
        assert!(
            ttl_secs("3d")
                .unwrap_err()
                .to_string()
                .contains("unknown unit")
        );
    }

    #[test]
    fn phases_and_patches() {
        let skip = vec!["addon/kube-proxy".to_string(), "etcd-join".to_string()];
        assert!(skipped(&skip, "etcd-join"));
        assert!(skipped(&skip, "addon/kube-proxy"));
        assert!(!skipped(&skip, "upload-certs"));
        assert!(skipped(
            &["control-plane-prepare".into()],
            "control-plane-prepare/download-certs"
        ));
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("etcd.yaml"), "- --bind-address=10.9.9.9\n").unwrap();
        fs::write(
            d.path().join("kube-apiserver0+json.json"),
            r#"[{"op":"add","path":"/spec/containers/0/command/-","value":"--bind-address=10.0.0.7"}]"#,
        )
        .unwrap();
        let doc = json!({"patches": {"directory": d.path().display().to_string()}});
        assert_eq!(
            patched_bind_address(Some(&doc)).as_deref(),
            Some("10.0.0.7")
        );
        assert_eq!(patched_bind_address(Some(&json!({}))), None);
        let v4 = json!([{"name": "bind-address", "value": "10.0.0.1"}]);
        let v3 = json!({"bind-address": "10.0.0.2"});
        assert_eq!(
            extra_arg(Some(&v4), "bind-address").as_deref(),
            Some("10.0.0.1")
        );
        assert_eq!(
            extra_arg(Some(&v3), "bind-address").as_deref(),
            Some("10.0.0.2")
        );
    }

    #[test]
    fn join_command_is_split_by_whitespace() {
        let c = join_command(
            "10.0.0.1:6443",
            "abcdef.0123456789abcdef",
            "sha256:00",
            None,
        );
        let w: Vec<&str> = c.split_whitespace().collect();
        assert_eq!(
            w,
            [
                "kubeadm",
                "join",
                "10.0.0.1:6443",
                "--token",
                "abcdef.0123456789abcdef",
                "--discovery-token-ca-cert-hash",
                "sha256:00"
            ]
        );
        assert!(c.ends_with(' '));
        let cp = join_command("e:6443", "t", "p", Some("k"));
        assert!(cp.split_whitespace().collect::<Vec<_>>().ends_with(&[
            "--control-plane",
            "--certificate-key",
            "k"
        ]));
    }
}
