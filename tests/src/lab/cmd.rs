//! Running short helper commands (`ip`, `arping`, `kubeha-ctl`) with errors
//! that show the argv, the exit status and stderr.

use std::ffi::OsStr;
use std::process::{Command, Output, Stdio};

use super::error::{LabError, Result};

/// `argv` as one shell-like string, for messages.
pub fn argv_string<I, S>(program: &OsStr, args: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut s = program.to_string_lossy().into_owned();
    for a in args {
        s.push(' ');
        s.push_str(&a.as_ref().to_string_lossy());
    }
    s
}

fn describe(cmd: &Command) -> String {
    argv_string(cmd.get_program(), cmd.get_args())
}

/// Run `cmd` to completion; a non-zero exit is an error with its stderr.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let out = output(cmd)?;
    if !out.status.success() {
        return Err(LabError::Command {
            argv: describe(cmd),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(out)
}

/// Run `cmd` to completion and return its output whatever the exit status.
pub fn output(cmd: &mut Command) -> Result<Output> {
    cmd.stdin(Stdio::null())
        .output()
        .map_err(|source| LabError::Spawn {
            argv: describe(cmd),
            source,
        })
}

/// `ip ARGS...`, checked.
pub fn ip<I, S>(args: I) -> Result<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let out = run(Command::new("ip").args(args))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip -n NS ARGS...`, checked.
pub fn ip_n<I, S>(ns: &str, args: I) -> Result<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let out = run(Command::new("ip").arg("-n").arg(ns).args(args))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Is `tool` on `PATH` (or an existing path)?
pub fn have_tool(tool: &str) -> bool {
    if tool.contains('/') {
        return std::path::Path::new(tool).exists();
    }
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
}

pub fn require_tool(tool: &str, hint: &'static str) -> Result<()> {
    if have_tool(tool) {
        Ok(())
    } else {
        Err(LabError::MissingTool {
            tool: tool.to_string(),
            hint,
        })
    }
}

/// Loads the nft `script` in namespace `ns` (`ip netns exec NS nft -f`,
/// through a temporary file named after `ns` and `table`, removed after).
pub fn nft_in(ns: &str, table: &str, script: &str) -> Result<()> {
    require_tool("nft", "apt-get install -y nftables")?;
    let path = std::env::temp_dir().join(format!("{ns}-{table}-{}.nft", std::process::id()));
    std::fs::write(&path, script).map_err(|e| LabError::io(&path, e))?;
    let r = run(Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f"])
        .arg(&path));
    let _ = std::fs::remove_file(&path);
    r.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_command_names_argv_status_and_stderr() {
        let err = run(Command::new("sh").args(["-c", "echo boom >&2; exit 3"])).unwrap_err();
        let s = err.to_string();
        assert!(s.contains("`sh -c echo boom >&2; exit 3`"), "{s}");
        assert!(s.contains("exit status: 3"), "{s}");
        assert!(s.ends_with(": boom"), "{s}");
    }

    #[test]
    fn missing_program_is_named() {
        let err = run(&mut Command::new("/nonexistent/kubeha-x")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/kubeha-x"), "{err}");
    }

    #[test]
    fn tool_lookup() {
        assert!(have_tool("sh"));
        assert!(!have_tool("kubeha-definitely-not-a-tool"));
    }
}
