//! What a compact control plane needs inside a droplet in this test bed,
//! since kubeadm, the kubelet and container images cannot run here
//! (docs/testing.md, "fake-kubeadm"):
//!
//! - etcd: Debian's `etcd-server` in the cached root ([`KUBE_PACKAGES`];
//!   its own `etcd.service` is masked there, fake-kubeadm starts the
//!   node's member);
//! - `/usr/bin/kubeadm`: a wrapper that runs the host's `fake-kubeadm`,
//!   copied to [`FAKE_DIR`] with `fake-apiserver` next to it (where
//!   fake-kubeadm looks for it by default). Every other setting is
//!   fake-kubeadm's default, which is kubeadm's: `/etc/kubernetes`,
//!   `/usr/bin/etcd`, ports 2379/2380; only the call log
//!   ([`KUBEADM_LOG`]) is added. `kubeadm init` and `kubeadm join` run in
//!   a scope unit of their own (`systemd-run --scope`, which execs, so
//!   stdio and exit status are fake-kubeadm's): the etcd and apiserver they
//!   start must outlive the command, as static pods outlive it under the
//!   kubelet, and the agent runs kubeadm in a transient service whose
//!   leftover processes systemd stops when kubeadm exits;
//! - `/usr/bin/kubelet`, `/usr/bin/containerd` (and a `containerd.service`
//!   that only sleeps, for host preparation's `systemctl restart
//!   containerd`), `/etc/containerd/config.toml` as Debian's containerd
//!   writes it (`SystemdCgroup = false`, so host preparation has it to fix),
//!   and `/usr/bin/kubectl`: version commands for host preparation's
//!   checks, `get --raw PATH` (the agent's init check) as a TCP connect to
//!   the kubeconfig's server, `apply -f FILE` (the CNI step) as a check
//!   that both files are readable.

use std::path::Path;

use serde_json::Value;

use super::{Droplet, DropletError, Result, io_err};

/// Packages a Kubernetes droplet's root needs besides the package's own.
pub const KUBE_PACKAGES: &[&str] = &["etcd-server"];
/// Units masked in a cached root that has them (they would run at boot).
pub const MASKED_UNITS: &[(&str, &str)] = &[("etcd-server", "etcd.service")];
/// Where `fake-kubeadm` and `fake-apiserver` are copied.
pub const FAKE_DIR: &str = "/usr/local/lib/kubeha-fake";
/// fake-kubeadm's call log (one JSON line per call; every call runs in a
/// transient unit outside the agent's sandbox, so each can write it).
pub const KUBEADM_LOG: &str = "/var/log/fake-kubeadm/calls.log";
/// The version every fake reports (fake-kubeadm's default).
pub const KUBE_VERSION: &str = "v1.34.2";

/// The host's fake binaries (`CARGO_BIN_EXE_fake-kubeadm`, …).
#[derive(Debug, Clone, Copy)]
pub struct KubeFakes<'a> {
    pub fake_kubeadm: &'a Path,
    pub fake_apiserver: &'a Path,
}

const CONTAINERD_CONFIG: &str = "version = 2\n\n[plugins]\n  [plugins.\"io.containerd.grpc.v1.cri\"]\n    sandbox_image = \"registry.k8s.io/pause:3.8\"\n    [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc.options]\n      BinaryName = \"\"\n      SystemdCgroup = false\n";

fn kubeadm_wrapper() -> String {
    format!(
        "#!/bin/sh\n\
         # Test bed: fake-kubeadm as kubeadm (tests/src/droplet/kube.rs).\n\
         export FAKE_KUBEADM_LOG={KUBEADM_LOG}\n\
         if [ \"$1\" = join ] || {{ [ \"$1\" = init ] && [ \"$2\" != phase ]; }}; then\n\
         \x20 # etcd and the apiserver it starts outlive it, in this scope.\n\
         \x20 exec systemd-run --quiet --scope --collect --unit=\"fake-kubeadm-$1-$$\" \\\n\
         \x20   --description=\"fake-kubeadm $1: etcd and apiserver (static pods stand-in)\" \\\n\
         \x20   {FAKE_DIR}/fake-kubeadm \"$@\"\n\
         fi\n\
         exec {FAKE_DIR}/fake-kubeadm \"$@\"\n"
    )
}

fn kubectl_fake() -> String {
    format!(
        r#"#!/bin/bash
# Test bed kubectl (tests/src/droplet/kube.rs): version, `get --raw` as a
# TCP connect to the kubeconfig's server, `apply -f` as a readability check.
kubeconfig=/etc/kubernetes/admin.conf
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --kubeconfig) kubeconfig=$2; shift 2 ;;
    --kubeconfig=*) kubeconfig=${{1#*=}}; shift ;;
    *) args+=("$1"); shift ;;
  esac
done
case "${{args[0]}} ${{args[1]}}" in
  "version --client") echo "Client Version: {KUBE_VERSION}"; echo "Kustomize Version: v5.7.1" ;;
  "get --raw")
    [ -r "$kubeconfig" ] || {{ echo "error: stat $kubeconfig: no such file or directory" >&2; exit 1; }}
    server=$(sed -n 's|^ *server: *https://||p' "$kubeconfig" | head -n 1)
    if ! (exec 3<>"/dev/tcp/${{server%:*}}/${{server##*:}}") 2>/dev/null; then
      echo "The connection to the server $server was refused" >&2; exit 1
    fi
    echo ok ;;
  "apply -f")
    [ -r "$kubeconfig" ] || {{ echo "error: stat $kubeconfig: no such file or directory" >&2; exit 1; }}
    [ -r "${{args[2]}}" ] || {{ echo "error: the path \"${{args[2]}}\" does not exist" >&2; exit 1; }}
    echo "applied ${{args[2]}}" ;;
  *) echo "error: unknown command \"${{args[*]}}\" for \"kubectl\"" >&2; exit 1 ;;
esac
"#
    )
}

impl Droplet {
    /// Install the Kubernetes test bed (see the module docs). Run before
    /// the agent starts.
    pub fn install_kube_fakes(&self, fakes: &KubeFakes<'_>) -> Result<()> {
        if !self.host_path("/usr/bin/etcd").exists() {
            return Err(DropletError::Other(format!(
                "droplet `{}`: /usr/bin/etcd is missing: boot it from a root with {KUBE_PACKAGES:?}",
                self.name
            )));
        }
        for (bin, name) in [
            (fakes.fake_kubeadm, "fake-kubeadm"),
            (fakes.fake_apiserver, "fake-apiserver"),
        ] {
            let bytes = std::fs::read(bin).map_err(io_err(bin))?;
            self.write_file(&format!("{FAKE_DIR}/{name}"), &bytes, 0o755)?;
        }
        self.write_file("/usr/bin/kubeadm", kubeadm_wrapper().as_bytes(), 0o755)?;
        self.write_file("/usr/bin/kubectl", kubectl_fake().as_bytes(), 0o755)?;
        self.write_file(
            "/usr/bin/kubelet",
            format!("#!/bin/sh\necho 'Kubernetes {KUBE_VERSION}'\n").as_bytes(),
            0o755,
        )?;
        self.write_file(
            "/usr/bin/containerd",
            b"#!/bin/sh\ncase \"$1\" in\n  --version|-v) echo 'containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+b1' ;;\n  *) exec sleep infinity ;;\nesac\n",
            0o755,
        )?;
        self.write_file(
            "/etc/systemd/system/containerd.service",
            b"[Unit]\nDescription=containerd stand-in (test bed)\n\n[Service]\nExecStart=/usr/bin/containerd\n",
            0o644,
        )?;
        self.write_file(
            "/etc/containerd/config.toml",
            CONTAINERD_CONFIG.as_bytes(),
            0o644,
        )?;
        let log_dir = self.host_path(KUBEADM_LOG);
        let log_dir = log_dir.parent().expect("a file has a parent");
        std::fs::create_dir_all(log_dir).map_err(io_err(log_dir))?;
        self.exec_ok(["systemctl", "daemon-reload"])?;
        Ok(())
    }

    /// fake-kubeadm's call log, parsed (empty if nothing ran).
    pub fn kubeadm_calls(&self) -> Vec<Value> {
        self.read_file(KUBEADM_LOG)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

/// `kubeadm init` (not `init phase …`) in a call-log line.
pub fn is_init(call: &Value) -> bool {
    call["argv"][1] == "init" && call["argv"][2] != "phase"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrappers_run_the_fakes() {
        let w = kubeadm_wrapper();
        assert!(w.starts_with("#!/bin/sh\n"));
        assert!(w.contains("exec /usr/local/lib/kubeha-fake/fake-kubeadm \"$@\"\n"));
        assert!(w.contains("--scope"));
        let k = kubectl_fake();
        assert!(k.contains("Client Version: v1.34.2"));
        assert!(k.contains("\"get --raw\")"));
        let init = serde_json::json!({"argv": ["/usr/local/lib/kubeha-fake/fake-kubeadm", "init", "--config", "x"]});
        let phase = serde_json::json!({"argv": ["kubeadm", "init", "phase", "upload-certs"]});
        assert!(is_init(&init) && !is_init(&phase));
    }

    /// The kubectl stand-in: `get --raw` succeeds only while the
    /// kubeconfig's server accepts connections; `apply -f` needs the file.
    #[test]
    fn kubectl_fake_checks_the_server() {
        let dir = tempfile::tempdir().unwrap();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let kc = dir.path().join("admin.conf");
        std::fs::write(
            &kc,
            format!(
                "apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: eA==\n    server: https://127.0.0.1:{port}\n  name: kubernetes\n"
            ),
        )
        .unwrap();
        let kubectl = |args: &[&str]| {
            std::process::Command::new("bash")
                .arg("-c")
                .arg(kubectl_fake())
                .arg("kubectl")
                .arg("--kubeconfig")
                .arg(&kc)
                .args(args)
                .output()
                .unwrap()
        };
        assert!(kubectl(&["get", "--raw", "/readyz"]).status.success());
        drop(l);
        let down = kubectl(&["get", "--raw", "/readyz"]);
        assert!(!down.status.success());
        assert!(String::from_utf8_lossy(&down.stderr).contains("refused"));
        let manifest = dir.path().join("cni.yaml");
        assert!(
            !kubectl(&["apply", "-f", manifest.to_str().unwrap()])
                .status
                .success()
        );
        std::fs::write(&manifest, "kind: List\n").unwrap();
        assert!(
            kubectl(&["apply", "-f", manifest.to_str().unwrap()])
                .status
                .success()
        );
        let v = kubectl(&["version", "--client"]);
        assert!(String::from_utf8_lossy(&v.stdout).starts_with("Client Version: v1.34.2"));
    }

    /// The shell scripts parse (`sh -n`, `bash -n`).
    #[test]
    fn scripts_are_valid_shell() {
        for (shell, text) in [("sh", kubeadm_wrapper()), ("bash", kubectl_fake())] {
            let out = std::process::Command::new(shell)
                .args(["-n", "-c", &text])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{shell}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
