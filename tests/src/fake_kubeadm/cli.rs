//! kubeadm's command lines (the subset kubeha uses), with kubeadm's flag
//! names. Parsing errors exit 1 as kubeadm's do.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "kubeadm",
    about = "fake-kubeadm: kubeadm's CLI over a real etcd and a fake apiserver"
)]
pub struct Cli {
    /// Log verbosity (accepted, ignored).
    #[arg(short = 'v', long = "v", global = true)]
    pub verbosity: Option<String>,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    Init(InitArgs),
    Join(JoinArgs),
    Token(TokenArgs),
    Certs(CertsArgs),
    Reset(ResetArgs),
    Version(VersionArgs),
}

#[derive(Args, Debug, Default)]
pub struct InitArgs {
    #[command(subcommand)]
    pub phase: Option<InitSub>,
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[arg(long)]
    pub upload_certs: bool,
    #[arg(long)]
    pub certificate_key: Option<String>,
    #[arg(long, value_delimiter = ',')]
    pub skip_phases: Vec<String>,
    #[arg(long)]
    pub control_plane_endpoint: Option<String>,
    #[arg(long)]
    pub apiserver_advertise_address: Option<String>,
    #[arg(long)]
    pub apiserver_bind_port: Option<u16>,
    #[arg(long)]
    pub apiserver_cert_extra_sans: Option<String>,
    #[arg(long)]
    pub node_name: Option<String>,
    #[arg(long)]
    pub kubernetes_version: Option<String>,
    #[arg(long)]
    pub pod_network_cidr: Option<String>,
    #[arg(long)]
    pub token: Option<String>,
    #[arg(long)]
    pub token_ttl: Option<String>,
    #[arg(long, value_delimiter = ',')]
    pub ignore_preflight_errors: Vec<String>,
    #[arg(long)]
    pub skip_token_print: bool,
    #[arg(long)]
    pub skip_certificate_key_print: bool,
    #[arg(long)]
    pub cri_socket: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum InitSub {
    Phase(PhaseArgs),
}

#[derive(Args, Debug)]
pub struct PhaseArgs {
    #[command(subcommand)]
    pub phase: PhaseSub,
}

#[derive(Subcommand, Debug)]
pub enum PhaseSub {
    UploadCerts(UploadCertsArgs),
}

#[derive(Args, Debug)]
pub struct UploadCertsArgs {
    #[arg(long)]
    pub upload_certs: bool,
    #[arg(long)]
    pub certificate_key: Option<String>,
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    #[arg(long)]
    pub skip_certificate_key_print: bool,
}

#[derive(Args, Debug)]
pub struct JoinArgs {
    /// `host:port` of the control-plane endpoint.
    pub endpoint: Option<String>,
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[arg(long)]
    pub token: Option<String>,
    #[arg(long)]
    pub discovery_token: Option<String>,
    #[arg(long)]
    pub tls_bootstrap_token: Option<String>,
    #[arg(long, value_delimiter = ',')]
    pub discovery_token_ca_cert_hash: Vec<String>,
    #[arg(long)]
    pub discovery_token_unsafe_skip_ca_verification: bool,
    #[arg(long)]
    pub control_plane: bool,
    #[arg(long)]
    pub certificate_key: Option<String>,
    #[arg(long)]
    pub apiserver_advertise_address: Option<String>,
    #[arg(long)]
    pub apiserver_bind_port: Option<u16>,
    #[arg(long)]
    pub node_name: Option<String>,
    #[arg(long, value_delimiter = ',')]
    pub skip_phases: Vec<String>,
    #[arg(long, value_delimiter = ',')]
    pub ignore_preflight_errors: Vec<String>,
    #[arg(long)]
    pub cri_socket: Option<String>,
}

#[derive(Args, Debug)]
pub struct TokenArgs {
    #[command(subcommand)]
    pub cmd: TokenSub,
}

#[derive(Subcommand, Debug)]
pub enum TokenSub {
    Create(TokenCreateArgs),
}

#[derive(Args, Debug)]
pub struct TokenCreateArgs {
    /// An explicit token (else a random one).
    pub token: Option<String>,
    #[arg(long, default_value = "24h0m0s")]
    pub ttl: String,
    #[arg(long)]
    pub print_join_command: bool,
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    #[arg(long)]
    pub certificate_key: Option<String>,
    #[arg(long)]
    pub description: Option<String>,
    #[arg(long, value_delimiter = ',', default_value = "signing,authentication")]
    pub usages: Vec<String>,
    #[arg(long, value_delimiter = ',')]
    pub groups: Vec<String>,
    #[arg(long)]
    pub config: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct CertsArgs {
    #[command(subcommand)]
    pub cmd: CertsSub,
}

#[derive(Subcommand, Debug)]
pub enum CertsSub {
    CertificateKey,
}

#[derive(Args, Debug)]
pub struct ResetArgs {
    #[arg(short = 'f', long)]
    pub force: bool,
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    #[arg(long)]
    pub cri_socket: Option<String>,
    #[arg(long)]
    pub cleanup_tmp_dir: bool,
    #[arg(long, value_delimiter = ',')]
    pub skip_phases: Vec<String>,
    #[arg(long, value_delimiter = ',')]
    pub ignore_preflight_errors: Vec<String>,
}

#[derive(Args, Debug)]
pub struct VersionArgs {
    #[arg(short = 'o', long, default_value = "")]
    pub output: String,
}
