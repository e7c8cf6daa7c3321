//! `fake-apiserver`: kube-apiserver's health endpoints over TLS, for tests
//! and the lab. Prints `listening ADDR` once it accepts connections.
//! SIGUSR1 toggles `/readyz` between 200 and 503; SIGTERM/SIGINT stop it.
//! With `--etcd-servers` (as `fake-kubeadm` starts it) it also serves the Node
//! API and kubeadm's objects from etcd, and `/readyz` needs etcd.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use kubeha_tests::fake_apiserver::{self, Backend, FakeApiserverOptions};
use kubeha_tests::fake_kubeadm::cluster::{self, Clock};
use kubeha_tests::fake_kubeadm::etcd::EtcdClient;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

#[derive(Parser, Debug)]
#[command(about = "TLS stand-in for kube-apiserver's /healthz, /readyz and /livez")]
struct Args {
    /// Address to bind, e.g. `198.18.0.11:6443` or `0.0.0.0:6443`.
    #[arg(long, default_value = "0.0.0.0:6443")]
    listen: SocketAddr,
    /// Directory with `ca.crt` + `ca.key` (reused if present, else created).
    #[arg(long)]
    pki_dir: PathBuf,
    /// Name sent back in the `x-fake-apiserver` header.
    #[arg(long, default_value = "fake-apiserver")]
    name: String,
    /// Extra subject alternative names for the serving certificate.
    #[arg(long = "san")]
    sans: Vec<String>,
    /// `/readyz` answers 503 while this file exists.
    #[arg(long)]
    not_ready_file: Option<PathBuf>,
    /// Serve this certificate (with `--tls-private-key-file`) instead of
    /// making one.
    #[arg(long, requires = "tls_private_key_file")]
    tls_cert_file: Option<PathBuf>,
    #[arg(long, requires = "tls_cert_file")]
    tls_private_key_file: Option<PathBuf>,
    /// etcd client URLs (comma-separated) holding the cluster state.
    #[arg(long, value_delimiter = ',', requires_all = ["etcd_cafile", "etcd_certfile", "etcd_keyfile"])]
    etcd_servers: Vec<String>,
    #[arg(long)]
    etcd_cafile: Option<PathBuf>,
    #[arg(long)]
    etcd_certfile: Option<PathBuf>,
    #[arg(long)]
    etcd_keyfile: Option<PathBuf>,
    /// Clock offset for expiries (`3h`, `-10m`).
    #[arg(long, default_value = "0s", allow_hyphen_values = true)]
    clock_offset: String,
    /// A file with a further offset, read at every use.
    #[arg(long)]
    clock_offset_file: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut opts = FakeApiserverOptions::new(&args.name, args.listen, &args.pki_dir);
    opts.extra_sans = args.sans;
    opts.not_ready_file = args.not_ready_file;
    if let (Some(c), Some(k)) = (args.tls_cert_file, args.tls_private_key_file) {
        opts.serving = Some((c, k));
    }
    if !args.etcd_servers.is_empty() {
        let (Some(ca), Some(crt), Some(key)) =
            (args.etcd_cafile, args.etcd_certfile, args.etcd_keyfile)
        else {
            anyhow::bail!("--etcd-servers needs --etcd-cafile, --etcd-certfile and --etcd-keyfile");
        };
        let etcd =
            EtcdClient::from_files(args.etcd_servers, &ca, &crt, &key).context("etcd client")?;
        let offset_secs = cluster::parse_offset(&args.clock_offset)
            .map_err(|e| anyhow::anyhow!("--clock-offset: {e}"))?;
        opts.backend = Some(Backend {
            etcd,
            clock: Clock {
                offset_secs,
                offset_file: args.clock_offset_file,
            },
        });
    }
    let p = fake_apiserver::prepare(&opts)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    rt.block_on(async move {
        let (tx, rx) = watch::channel(false);
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut usr1 = signal(SignalKind::user_defined1())?;
        let state = p.state.clone();
        let server = tokio::spawn(fake_apiserver::serve(p.listener, p.tls, p.state, rx));
        {
            let mut out = std::io::stdout().lock();
            writeln!(out, "listening {}", p.local_addr)?;
            out.flush()?;
        }
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = usr1.recv() => {
                    let ready = state.toggle_ready();
                    eprintln!("readyz {}", if ready { "ready" } else { "not ready" });
                }
            }
        }
        let _ = tx.send(true);
        server.await.context("server task")??;
        anyhow::Ok(())
    })
}
