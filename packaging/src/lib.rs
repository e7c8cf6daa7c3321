//! kubeha-packaging: what the Debian package ships besides the binaries,
//! generated from the clap definitions so it can never drift from them.
//!
//! [`generate`] writes into one directory:
//!
//! - `man/kubeha-agent.8`, `man/kubeha-guardian.8`, `man/kubeha-ctl.8` and
//!   one page per `kubeha-ctl` subcommand (`kubeha-ctl-status.8`, ...), all
//!   section 8: the programs are for the administrator (the agent and its
//!   guardian run as root, `kubeha-ctl` talks to a root-only socket). The
//!   guardian has no clap parser (it is kept small): its page is made from
//!   the option list its own parser documents (`guardian::OPTIONS`);
//! - `completions/kubeha-ctl.bash`, `completions/_kubeha-ctl` (zsh) and
//!   `completions/kubeha-ctl.fish`.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use clap::CommandFactory;
use clap_complete::Shell;

/// Man page section of both programs (administration commands).
pub const SECTION: &str = "8";

#[derive(Debug, thiserror::Error)]
pub enum GendocError {
    #[error("{path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("`SOURCE_DATE_EPOCH` is not a number of seconds: {0:?}")]
    BadEpoch(String),
}

/// What the pages say besides the clap definitions.
pub struct PageInfo {
    /// `.TH` date, `YYYY-MM-DD`.
    pub date: String,
    /// The package version, shown in the page footer.
    pub version: String,
}

impl PageInfo {
    /// The date comes from `SOURCE_DATE_EPOCH` (reproducible builds) when
    /// set, else from the clock.
    pub fn from_env(version: &str) -> Result<PageInfo, GendocError> {
        let secs = match std::env::var("SOURCE_DATE_EPOCH") {
            Ok(s) if !s.trim().is_empty() => s
                .trim()
                .parse()
                .map_err(|_| GendocError::BadEpoch(s.clone()))?,
            _ => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64),
        };
        let date = civil_date(secs);
        Ok(PageInfo {
            date,
            version: version.to_string(),
        })
    }
}

/// Write the man pages and completions under `out`; returns every file written.
pub fn generate(out: &Path, info: &PageInfo) -> Result<Vec<PathBuf>, GendocError> {
    let man_dir = out.join("man");
    let comp_dir = out.join("completions");
    for d in [&man_dir, &comp_dir] {
        fs::create_dir_all(d).map_err(|source| GendocError::Write {
            path: d.clone(),
            source,
        })?;
    }
    let mut written = Vec::new();

    let agent = kubeha_agent::cli::Cli::command();
    written.push(write_page(
        &man_dir,
        agent.clone(),
        info,
        AGENT_EXTRA,
        "kubeha-agent",
    )?);

    written.push(write_page(
        &man_dir,
        guardian_command(),
        info,
        GUARDIAN_EXTRA,
        "kubeha-guardian",
    )?);

    let mut ctl = kubeha_ctl::cli::Cli::command().disable_help_subcommand(true);
    ctl.build();
    written.push(write_page(
        &man_dir,
        ctl.clone(),
        info,
        CTL_EXTRA,
        "kubeha-ctl",
    )?);
    for sub in ctl.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("kubeha-ctl-{}", sub.get_name());
        let page = sub
            .clone()
            .display_name(name.clone())
            .bin_name(format!("kubeha-ctl {}", sub.get_name()));
        written.push(write_page(&man_dir, page, info, SUB_EXTRA, &name)?);
    }

    for (shell, file) in [
        (Shell::Bash, "kubeha-ctl.bash"),
        (Shell::Zsh, "_kubeha-ctl"),
        (Shell::Fish, "kubeha-ctl.fish"),
    ] {
        let mut buf = Vec::new();
        clap_complete::generate(shell, &mut ctl.clone(), "kubeha-ctl", &mut buf);
        let path = comp_dir.join(file);
        write_file(&path, &buf)?;
        written.push(path);
    }
    Ok(written)
}

/// The guardian's command line as clap sees it, for its man page only.
fn guardian_command() -> clap::Command {
    use kubeha_agent::guardian::{ABOUT, LONG_ABOUT, OPTIONS};
    let mut cmd = clap::Command::new("kubeha-guardian")
        .version(env!("CARGO_PKG_VERSION"))
        .about(ABOUT)
        .long_about(LONG_ABOUT);
    for o in &OPTIONS {
        let id = o.flag.trim_start_matches("--");
        cmd = cmd.arg(
            clap::Arg::new(id)
                .long(id)
                .value_name(o.value)
                .required(true)
                .help(o.help),
        );
    }
    cmd
}

fn write_page(
    dir: &Path,
    cmd: clap::Command,
    info: &PageInfo,
    extra: &str,
    name: &str,
) -> Result<PathBuf, GendocError> {
    let has_version = cmd.get_version().is_some();
    let man = clap_mangen::Man::new(cmd)
        .section(SECTION)
        .date(info.date.clone())
        .source(format!("kubeha {}", info.version))
        .manual("System Administration");
    let path = dir.join(format!("{name}.{SECTION}"));
    let mut buf = Vec::new();
    let io = |source| GendocError::Write {
        path: path.clone(),
        source,
    };
    man.render_title(&mut buf).map_err(io)?;
    man.render_name_section(&mut buf).map_err(io)?;
    man.render_synopsis_section(&mut buf).map_err(io)?;
    man.render_description_section(&mut buf).map_err(io)?;
    man.render_options_section(&mut buf).map_err(io)?;
    if name == "kubeha-ctl" {
        man.render_subcommands_section(&mut buf).map_err(io)?;
    }
    buf.write_all(extra.as_bytes()).map_err(io)?;
    if has_version {
        man.render_version_section(&mut buf).map_err(io)?;
    }
    write_file(&path, &buf)?;
    Ok(path)
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), GendocError> {
    fs::write(path, bytes).map_err(|source| GendocError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// Sections clap does not know about: files, signals, exit status.
const AGENT_EXTRA: &str = r#".SH "EXIT STATUS"
.TP
\fB0\fR
Stopped on \fBSIGTERM\fR or \fBSIGINT\fR after handing the VIP over and
announcing its leave; with \fB\-\-check\-config\fR: the configuration and the
key file are valid; with \fB\-\-release\-vip\fR: the VIP is not on this node.
.TP
\fB1\fR
Invalid configuration or key file (the message names the file, line and key),
or a runtime failure (the message names what failed).
.SH SIGNALS
.TP
\fBSIGHUP\fR
Reload the key file (key rotation); the configuration is not reloaded.
.TP
\fBSIGTERM\fR, \fBSIGINT\fR
Hand the VIP over, announce the leave to the other members and exit 0.
.SH ENVIRONMENT
.TP
\fBKUBEHA_CONFIG\fR
The configuration file, like \fB\-\-config\fR.
.TP
\fBKUBEHA_LOG\fR
Log filter, for example \fBinfo\fR or \fBdebug,chitchat=warn\fR.
.SH FILES
.TP
\fI/etc/kubeha/kubeha.toml\fR
The configuration (see \fI/usr/share/doc/kubeha\fR and the comments in the file).
.TP
\fI/etc/kubeha/cluster.key\fR
The cluster key, mode 0600, the same on every node: \fBkubeha\-ctl keygen \-\-out\fR.
The systemd unit does not start the agent until it exists.
.TP
\fI/var/lib/kubeha\fR
State directory (agent incarnation, votes), mode 0700.
.TP
\fI/run/kubeha/kubeha.sock\fR
The local API used by \fBkubeha\-ctl\fR(8), mode 0600.
.TP
\fI/usr/bin/kubeha\-guardian\fR
The VIP guardian the agent starts beside itself on a VIP candidate with
\fBvip.interface\fR (\fBkubeha\-guardian\fR(8)).
.SH "SEE ALSO"
\fBkubeha\-ctl\fR(8), \fBkubeha\-guardian\fR(8), \fBsystemctl\fR(1), \fBjournalctl\fR(1), \fBhaproxy\fR(1)
"#;

const GUARDIAN_EXTRA: &str = r#".SH "EXIT STATUS"
.TP
\fB0\fR
The agent is gone and the VIP is off this node.
.TP
\fB1\fR
File descriptor 3 is not the agent's link, or the VIP could not be removed
(the agent, seeing the link close, then stops too).
.TP
\fB2\fR
A bad command line.
.SH ENVIRONMENT
.TP
\fBKUBEHA_LOG\fR
Log level: \fBerror\fR, \fBwarn\fR, \fBinfo\fR (the default), \fBdebug\fR or \fBtrace\fR.
.SH "SEE ALSO"
\fBkubeha\-agent\fR(8)
"#;

const SUB_EXTRA: &str = r#".SH "SEE ALSO"
\fBkubeha\-ctl\fR(8), \fBkubeha\-agent\fR(8)
"#;

const CTL_EXTRA: &str = r#".SH "EXIT STATUS"
.TP
\fB0\fR
Success.
.TP
\fB1\fR
The agent answered with an error, or \fBkeygen\fR could not write its file.
.TP
\fB2\fR
The agent is unreachable (the message names the socket).
.SH ENVIRONMENT
.TP
\fBKUBEHA_SOCKET\fR
The agent's socket, like \fB\-\-socket\fR.
.SH "SEE ALSO"
\fBkubeha\-agent\fR(8)
"#;

/// `YYYY-MM-DD` (UTC) of a Unix time: the days-to-civil conversion of the
/// proleptic Gregorian calendar, so no date crate is needed for one `.TH` line.
pub fn civil_date(unix_secs: i64) -> String {
    let days = unix_secs.div_euclid(86_400);
    // Shift the epoch to 0000-03-01 so leap days fall at the end of a year.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097; // [0, 146096]
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // March = 0
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_date(0), "1970-01-01");
        assert_eq!(civil_date(951_782_400), "2000-02-29");
        assert_eq!(civil_date(951_868_800), "2000-03-01");
        assert_eq!(civil_date(1_700_000_000), "2023-11-14");
        assert_eq!(civil_date(4_107_542_399), "2100-02-28");
        assert_eq!(civil_date(-1), "1969-12-31");
    }

    fn generated() -> (tempfile::TempDir, Vec<PathBuf>) {
        let dir = tempfile::tempdir().unwrap();
        let info = PageInfo {
            date: "2026-01-02".into(),
            version: "9.9.9".into(),
        };
        let files = generate(dir.path(), &info).unwrap();
        (dir, files)
    }

    fn read(dir: &tempfile::TempDir, rel: &str) -> String {
        fs::read_to_string(dir.path().join(rel)).unwrap()
    }

    #[test]
    fn pages_follow_the_clap_definitions() {
        let (dir, files) = generated();
        let agent = read(&dir, "man/kubeha-agent.8");
        assert!(
            agent.contains(".TH kubeha-agent 8 2026-01-02 \"kubeha 9.9.9\""),
            "{agent}"
        );
        for flag in ["check\\-config", "release\\-vip", "config"] {
            assert!(agent.contains(flag), "agent page lacks {flag}");
        }
        assert!(agent.contains(".SH SIGNALS"));
        let guardian = read(&dir, "man/kubeha-guardian.8");
        for o in &kubeha_agent::guardian::OPTIONS {
            let flag = o.flag.replace('-', "\\-");
            assert!(guardian.contains(&flag), "guardian page lacks {flag}");
        }
        assert!(guardian.contains("descriptor 3"), "{guardian}");
        let ctl = read(&dir, "man/kubeha-ctl.8");
        for sub in ["status", "members", "drain", "undrain", "keygen", "version"] {
            assert!(ctl.contains(&format!("kubeha\\-ctl\\-{sub}(8)")), "{sub}");
            assert!(
                files.contains(&dir.path().join(format!("man/kubeha-ctl-{sub}.8"))),
                "no page for {sub}"
            );
        }
        // No `help` subcommand page: clap's help subcommand is disabled.
        assert!(!dir.path().join("man/kubeha-ctl-help.8").exists());
        let keygen = read(&dir, "man/kubeha-ctl-keygen.8");
        assert!(keygen.contains("\\-\\-out"), "{keygen}");
    }

    #[test]
    fn completions_know_the_subcommands() {
        let (dir, _) = generated();
        for (file, needle) in [
            ("completions/kubeha-ctl.bash", "undrain"),
            ("completions/_kubeha-ctl", "#compdef kubeha-ctl"),
            ("completions/kubeha-ctl.fish", "keygen"),
        ] {
            let text = read(&dir, file);
            assert!(text.contains(needle), "{file} lacks {needle}");
        }
        assert!(read(&dir, "completions/kubeha-ctl.bash").contains("--socket"));
    }

    /// The pages render without a groff warning (what lintian checks too).
    #[test]
    fn pages_render_cleanly_when_groff_is_there() {
        if std::process::Command::new("groff")
            .arg("--version")
            .output()
            .is_err()
        {
            eprintln!("groff not installed: rendering not checked");
            return;
        }
        let (_dir, files) = generated();
        for page in files.iter().filter(|p| p.extension() == Some("8".as_ref())) {
            let out = std::process::Command::new("groff")
                .args(["-man", "-ww", "-z", "-Tutf8"])
                .arg(page)
                .output()
                .unwrap();
            assert!(out.status.success(), "{}: {:?}", page.display(), out);
            assert!(
                out.stderr.is_empty(),
                "{}: {}",
                page.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
