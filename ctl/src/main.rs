//! `kubeha-ctl`: the operator's window into the local agent.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use kubeha_core::api::{Request, Response, Status};
use kubeha_core::frame::{Key, Keyring};
use kubeha_core::proof::ProofKey;
use kubeha_ctl::cli::{Bootstrap, Cli, Command, Output};
use kubeha_ctl::table;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure { message, code }) => {
            eprintln!("kubeha-ctl: {message}");
            ExitCode::from(code)
        }
    }
}

struct Failure {
    message: String,
    code: u8,
}

fn fail(code: u8, message: impl Into<String>) -> Failure {
    Failure {
        message: message.into(),
        code,
    }
}

fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Version => {
            println!("kubeha-ctl {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::Keygen { out, public_of } => match public_of {
            Some(file) => public_keys(&file),
            None => keygen(out.as_deref()),
        },
        Command::Status { output } => {
            let status = fetch_status(&cli.socket)?;
            match output {
                Output::Json => println!("{}", to_json(&status)),
                Output::Table => print!("{}", table::status(&status)),
            }
            Ok(())
        }
        Command::Members { output } => {
            let status = fetch_status(&cli.socket)?;
            match output {
                Output::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&status.members).expect("members serialize")
                ),
                Output::Table => print!("{}", table::members(&status)),
            }
            Ok(())
        }
        Command::Preflight { output } => {
            let report = match call(&cli.socket, &Request::Preflight)? {
                Response::Preflight(r) => *r,
                Response::Error { message } => return Err(fail(1, message)),
                _ => return Err(fail(1, "unexpected reply to preflight")),
            };
            match output {
                Output::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&report).expect("reports serialize")
                ),
                Output::Table => print!("{}", table::preflight(&report)),
            }
            if report.ok {
                Ok(())
            } else {
                Err(fail(1, "the host is not prepared (see above)"))
            }
        }
        Command::Bootstrap {
            action: Bootstrap::Release { node, yes, wait },
        } => release(&cli.socket, &node, yes, Duration::from_secs(wait)),
        Command::Drain => simple(&cli.socket, Request::Drain),
        Command::Undrain => simple(&cli.socket, Request::Undrain),
    }
}

/// `kubeha-ctl bootstrap release NODE`: confirm, ask the agent, wait for
/// a majority of the voters.
fn release(socket: &Path, node: &str, yes: bool, wait: Duration) -> Result<(), Failure> {
    if !yes {
        eprintln!(
            "Releasing {node}'s bootstrap lock lets another control plane run `kubeadm init`.\n\
             Do this only if {node} is gone for good: destroyed, or its disk wiped. If it comes\n\
             back with a cluster of its own, there are two clusters.\n\
             Type the node name to confirm:"
        );
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .map_err(|e| fail(1, format!("reading the confirmation: {e}")))?;
        if line.trim() != node {
            return Err(fail(1, "not confirmed: nothing released"));
        }
    }
    match call(
        socket,
        &Request::ReleaseInit {
            node: node.to_string(),
        },
    )? {
        Response::Ok { message } => eprintln!("{message}"),
        Response::Error { message } => return Err(fail(1, message)),
        _ => return Err(fail(1, "unexpected reply to release-init")),
    }
    let until = std::time::Instant::now() + wait;
    loop {
        let st = fetch_status(socket)?;
        let r = st.kubernetes.release.as_ref();
        if let Some(r) = r.filter(|r| r.node == node && r.done) {
            println!(
                "released: {} of the voters ({}) let {node}'s lock go",
                r.acked.len(),
                r.acked.join(", ")
            );
            return Ok(());
        }
        if std::time::Instant::now() >= until {
            let why = r
                .map(|r| {
                    format!(
                        "{} of {} needed acked{}",
                        r.acked.len(),
                        r.needed,
                        r.refused_suffix()
                    )
                })
                .unwrap_or_else(|| "no answer".into());
            return Err(fail(
                1,
                format!(
                    "{node}'s lock is not released yet ({why}); the agent keeps trying for a while"
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn to_json(status: &Status) -> String {
    serde_json::to_string_pretty(status).expect("status serializes")
}

fn keygen(out: Option<&Path>) -> Result<(), Failure> {
    let key = Key::from_bytes(rand::random());
    let line = format!("{}\n", key.to_base64());
    match out {
        None => {
            print!("{line}");
            Ok(())
        }
        Some(path) => {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| fail(1, format!("cannot create {}: {e}", path.display())))?;
            f.write_all(line.as_bytes())
                .and_then(|()| f.sync_all())
                .map_err(|e| fail(1, format!("writing {}: {e}", path.display())))?;
            eprintln!(
                "wrote a new cluster key to {} (id {})",
                path.display(),
                key.id()
            );
            Ok(())
        }
    }
}

/// The public halves of a control key file's keys, one per line.
fn public_keys(file: &Path) -> Result<(), Failure> {
    let text = fs::read_to_string(file)
        .map_err(|e| fail(1, format!("cannot read {}: {e}", file.display())))?;
    let ring = Keyring::parse(&text).map_err(|e| fail(1, format!("{}: {e}", file.display())))?;
    for k in ProofKey::of_ring(&ring) {
        println!("{k}");
    }
    Ok(())
}

fn simple(socket: &Path, request: Request) -> Result<(), Failure> {
    match call(socket, &request)? {
        Response::Ok { message } => {
            println!("{message}");
            Ok(())
        }
        Response::Error { message } => Err(fail(1, message)),
        Response::Status(_) | Response::Preflight(_) => Err(fail(1, "unexpected reply")),
    }
}

fn fetch_status(socket: &Path) -> Result<Status, Failure> {
    match call(socket, &Request::Status)? {
        Response::Status(s) => Ok(*s),
        Response::Error { message } => Err(fail(1, message)),
        Response::Ok { message } => Err(fail(1, format!("unexpected reply: {message}"))),
        Response::Preflight(_) => Err(fail(1, "unexpected preflight reply")),
    }
}

/// One request, one response. An unreachable agent is one line, exit 2.
fn call(socket: &Path, request: &Request) -> Result<Response, Failure> {
    let unreachable = |e: std::io::Error| {
        fail(
            2,
            format!(
                "cannot reach the agent at {}: {e} (is kubeha-agent running? see `systemctl status kubeha-agent`)",
                socket.display()
            ),
        )
    };
    let mut stream = UnixStream::connect(socket).map_err(unreachable)?;
    // A preflight may restart containerd; everything else is a snapshot.
    let timeout = match request {
        Request::Preflight => Duration::from_secs(180),
        _ => Duration::from_secs(10),
    };
    stream
        .set_read_timeout(Some(timeout))
        .map_err(unreachable)?;
    let mut line = serde_json::to_vec(request).expect("requests serialize");
    line.push(b'\n');
    stream.write_all(&line).map_err(unreachable)?;
    let mut reply = String::new();
    BufReader::new(stream)
        .read_line(&mut reply)
        .map_err(unreachable)?;
    serde_json::from_str(&reply).map_err(|e| {
        fail(
            2,
            format!("the agent at {} sent a bad reply: {e}", socket.display()),
        )
    })
}
