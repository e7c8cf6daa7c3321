//! `do-standin`: the DigitalOcean Reserved IP API and metadata stand-in
//! (`kubeha_tests::do_standin`) as a process, for a lab or by hand. Prints
//! `api URL`, `metadata URL` (append `/droplet/<id>`) and `ca PATH`, then one
//! `assigned <droplet>` line each time the Reserved IP moves. SIGTERM/SIGINT
//! stop it. The token is read from a file, never from the command line.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use kubeha_tests::do_standin::{DoStandin, StandinOptions};
use tokio::signal::unix::{SignalKind, signal};

#[derive(Parser, Debug)]
#[command(about = "Stand-in for DigitalOcean's Reserved IP API and droplet metadata")]
struct Args {
    /// Address to listen on (two ports are chosen).
    #[arg(long, default_value = "127.0.0.1")]
    listen: IpAddr,
    /// Where the stand-in's CA (`ca.pem`) is written.
    #[arg(long)]
    dir: PathBuf,
    /// File holding the one token the stand-in accepts.
    #[arg(long)]
    token_file: PathBuf,
    #[arg(long)]
    reserved_ip: IpAddr,
    /// A droplet, `ID=ANCHOR_IPV4` (repeat).
    #[arg(long = "droplet", value_parser = parse_droplet)]
    droplets: Vec<(u64, Ipv4Addr)>,
    /// How long an action takes, e.g. `11s` (DigitalOcean's docs' example).
    #[arg(long, default_value = "0s", value_parser = humantime_duration)]
    action_latency: Duration,
}

fn parse_droplet(s: &str) -> Result<(u64, Ipv4Addr), String> {
    let (id, ip) = s.split_once('=').ok_or("expected ID=ANCHOR_IPV4")?;
    Ok((
        id.parse().map_err(|_| format!("bad droplet id `{id}`"))?,
        ip.parse()
            .map_err(|_| format!("bad anchor address `{ip}`"))?,
    ))
}

fn humantime_duration(s: &str) -> Result<Duration, String> {
    let secs = s
        .strip_suffix("ms")
        .map(|ms| ms.parse::<u64>().map(Duration::from_millis))
        .or_else(|| {
            s.strip_suffix('s')
                .map(|v| v.parse::<u64>().map(Duration::from_secs))
        })
        .ok_or_else(|| format!("`{s}`: expected e.g. 11s or 500ms"))?;
    secs.map_err(|_| format!("`{s}`: expected e.g. 11s or 500ms"))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let token = std::fs::read_to_string(&args.token_file)
        .with_context(|| format!("reading {}", args.token_file.display()))?
        .trim()
        .to_string();
    let s = DoStandin::start(StandinOptions {
        token,
        reserved_ip: args.reserved_ip,
        droplets: args.droplets,
        action_latency: args.action_latency,
        dir: args.dir,
        listen: args.listen,
    })?;
    let mut out = std::io::stdout();
    writeln!(out, "api {}", s.api_url())?;
    writeln!(out, "metadata http://{}", s.metadata_addr())?;
    writeln!(out, "ca {}", s.ca_file().display())?;
    out.flush()?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut last = None;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = tick.tick() => {
                let now = s.assigned_to();
                if now != last {
                    writeln!(out, "assigned {}", now.map_or("none".to_string(), |d| d.to_string()))?;
                    out.flush()?;
                    last = now;
                }
            }
        }
    }
    s.stop();
    Ok(())
}
