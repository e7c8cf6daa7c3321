//! `kubeha-agent`: the daemon every droplet runs.

use std::process::ExitCode;

use clap::Parser;
use kubeha_agent::cli::Cli;
use kubeha_agent::{agent, state};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let config = match state::load_config(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kubeha-agent: {e}");
            return ExitCode::from(1);
        }
    };
    if cli.release_vip {
        return kubeha_agent::release_vip(&config);
    }
    if cli.prepare_host {
        return kubeha_agent::hostprep::prepare_host_main(&config);
    }
    let keyring = match state::load_rings(&config) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("kubeha-agent: {e}");
            return ExitCode::from(1);
        }
    };
    if cli.check_config {
        println!("{}: ok", cli.config.display());
        return ExitCode::SUCCESS;
    }
    // Before the runtime: the guardian's death signal follows this thread.
    let _guardian = match kubeha_agent::guard::spawn(&config) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("kubeha-agent: cannot start the VIP guardian: {e}");
            return ExitCode::from(1);
        }
    };
    // One thread: the loop mostly waits, and cross-thread wakeups cost more
    // than they buy. HAProxy work runs on its own thread (lb.rs).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("kubeha-agent: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(agent::run(config, keyring)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "agent failed");
            eprintln!("kubeha-agent: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Logs go to stderr; under systemd (JOURNAL_STREAM set) without timestamps
/// or colours, since journald adds its own.
fn init_tracing() {
    let filter = EnvFilter::try_from_env("KUBEHA_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,chitchat=warn,chitchat::transport::udp=error"));
    let under_journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    if under_journald {
        builder.without_time().with_ansi(false).init();
    } else {
        builder.init();
    }
}
