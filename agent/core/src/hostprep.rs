//! Host preparation for kubeadm: what the lab guide did by hand (kernel
//! modules, sysctls, swap, containerd's cgroup driver, the Kubernetes tools),
//! decided from observed facts.
//!
//! The shell (`agent/src/hostprep.rs`) reads the facts ([`Observed`]), asks
//! [`plan`] what to do, and refuses to change anything when the plan holds a
//! check that no action can fix: a node is either prepared or left as it was
//! with an error that names the check, the file or command, and what to do.
//! Otherwise it carries out [`Plan::actions`] in order, observes again and
//! plans again; [`report`] turns the two plans into the preflight report
//! (`kubeha-ctl preflight`). Every action is idempotent.
//!
//! Paths here are the host's own (`/etc/...`); the shell prefixes them with
//! its root (tests run against a scratch directory).

use std::collections::{BTreeMap, BTreeSet};

use crate::api::{CheckState, PreflightCheck, PreflightReport};

/// Modules kubelet and the container runtime need (overlay filesystem,
/// bridged traffic through iptables).
pub const MODULES: [&str; 2] = ["overlay", "br_netfilter"];
/// Loaded at boot by systemd-modules-load.
pub const MODULES_FILE: &str = "/etc/modules-load.d/kubeha.conf";
/// Applied at boot by systemd-sysctl.
pub const SYSCTL_FILE: &str = "/etc/sysctl.d/99-kubeha.conf";
/// Sysctls kubeadm's preflight requires, all `1`.
pub const SYSCTLS: [&str; 3] = [
    "net.bridge.bridge-nf-call-iptables",
    "net.bridge.bridge-nf-call-ip6tables",
    "net.ipv4.ip_forward",
];
pub const FSTAB: &str = "/etc/fstab";
pub const DEFAULT_CONTAINERD_CONFIG: &str = "/etc/containerd/config.toml";

/// The runc options table per containerd config `version`.
const RUNC_V2: [&str; 6] = [
    "plugins",
    "io.containerd.grpc.v1.cri",
    "containerd",
    "runtimes",
    "runc",
    "options",
];
const RUNC_V3: [&str; 6] = [
    "plugins",
    "io.containerd.cri.v1.runtime",
    "containerd",
    "runtimes",
    "runc",
    "options",
];
/// `disabled_plugins` entries that switch off the CRI (Docker's
/// containerd.io package ships `disabled_plugins = ["cri"]`).
const CRI_PLUGIN_NAMES: [&str; 3] = [
    "cri",
    "io.containerd.grpc.v1.cri",
    "io.containerd.cri.v1.runtime",
];

/// A tool the node needs: found or not, and what its version command said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tool {
    Missing,
    /// Found; `version` is the output of its version command (trimmed), or
    /// the error that command gave.
    Present {
        version: Result<String, String>,
    },
}

/// What the shell saw on the host.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Observed {
    /// Modules present (`/sys/module/NAME` exists: loaded or built in).
    pub modules_present: BTreeSet<String>,
    /// Contents of [`MODULES_FILE`], `None` if absent.
    pub modules_file: Option<String>,
    /// Current values (`/proc/sys/...`), `None` where the key does not exist
    /// (a bridge sysctl before `br_netfilter` is loaded).
    pub sysctls: BTreeMap<String, Option<String>>,
    /// Contents of [`SYSCTL_FILE`].
    pub sysctl_file: Option<String>,
    /// Active swap devices (`/proc/swaps` without its header).
    pub swaps: Vec<String>,
    /// Contents of `/etc/fstab`.
    pub fstab: Option<String>,
    /// Where containerd's config is (for messages and the write).
    pub containerd_config_path: String,
    pub containerd: Option<Tool>,
    pub containerd_config: Option<String>,
    pub kubelet: Option<Tool>,
    pub kubeadm: Option<Tool>,
    pub kubectl: Option<Tool>,
}

/// One idempotent step, carried out in order by the shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Write `contents` to `path` atomically (mode 0644).
    WriteFile { path: String, contents: String },
    /// `modprobe NAME`.
    LoadModule(String),
    /// `sysctl -w KEY=VALUE`.
    SetSysctl { key: String, value: String },
    /// `swapoff -a`.
    SwapOff,
    /// `systemctl restart containerd` (only after its config changed).
    RestartContainerd,
}

impl Action {
    /// For logs and the report: what it does, without file contents.
    pub fn describe(&self) -> String {
        match self {
            Action::WriteFile { path, .. } => format!("write {path}"),
            Action::LoadModule(m) => format!("modprobe {m}"),
            Action::SetSysctl { key, value } => format!("sysctl -w {key}={value}"),
            Action::SwapOff => "swapoff -a".into(),
            Action::RestartContainerd => "systemctl restart containerd".into(),
        }
    }
}

/// A planned check: its state now and the actions that would fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub check: PreflightCheck,
    /// Empty when the check passes or cannot be fixed here.
    pub actions: Vec<Action>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub checks: Vec<Planned>,
    /// The installed kubeadm's version (`v1.31.2`), when known.
    pub kubeadm_version: Option<String>,
}

impl Plan {
    /// Every action, in the order to carry them out.
    pub fn actions(&self) -> Vec<Action> {
        let mut out: Vec<Action> = Vec::new();
        for p in &self.checks {
            for a in &p.actions {
                if !out.contains(a) {
                    out.push(a.clone());
                }
            }
        }
        // Modules before the sysctls they create; the restart last.
        out.sort_by_key(|a| match a {
            Action::WriteFile { path, .. } if path == MODULES_FILE => 0,
            Action::LoadModule(_) => 1,
            Action::WriteFile { path, .. } if path == SYSCTL_FILE => 2,
            Action::SetSysctl { .. } => 3,
            Action::SwapOff => 4,
            Action::WriteFile { .. } => 5,
            Action::RestartContainerd => 6,
        });
        out
    }

    /// Checks that fail with nothing the agent can do about them.
    pub fn unfixable(&self) -> Vec<&PreflightCheck> {
        self.checks
            .iter()
            .filter(|p| p.check.state == CheckState::Failed && p.actions.is_empty())
            .map(|p| &p.check)
            .collect()
    }
}

fn check(name: &str, state: CheckState, detail: impl Into<String>) -> PreflightCheck {
    PreflightCheck {
        name: name.to_string(),
        state,
        detail: detail.into(),
        remedy: None,
    }
}

fn with_remedy(mut c: PreflightCheck, remedy: impl Into<String>) -> PreflightCheck {
    c.remedy = Some(remedy.into());
    c
}

/// The contents kubeha writes to [`MODULES_FILE`].
pub fn modules_file_contents() -> String {
    let mut s = String::from("# Written by kubeha-agent: modules kubelet and containerd need.\n");
    for m in MODULES {
        s.push_str(m);
        s.push('\n');
    }
    s
}

/// The contents kubeha writes to [`SYSCTL_FILE`].
pub fn sysctl_file_contents() -> String {
    let mut s = String::from("# Written by kubeha-agent: sysctls kubeadm's preflight requires.\n");
    for k in SYSCTLS {
        s.push_str(&format!("{k} = 1\n"));
    }
    s
}

/// Decide, from what the shell saw, every check's state and its fixes.
/// `fix` false: report only (nothing would be changed).
pub fn plan(o: &Observed, fix: bool) -> Plan {
    let mut checks = Vec::new();
    let needs = |actions: Vec<Action>| if fix { actions } else { Vec::new() };

    // Kernel modules: loaded now and at every boot.
    for m in MODULES {
        checks.push(if o.modules_present.contains(m) {
            Planned {
                check: check(&format!("module {m}"), CheckState::Ok, "loaded"),
                actions: vec![],
            }
        } else {
            Planned {
                check: with_remedy(
                    check(&format!("module {m}"), CheckState::Failed, "not loaded"),
                    format!("run `modprobe {m}`"),
                ),
                actions: needs(vec![Action::LoadModule(m.to_string())]),
            }
        });
    }
    let modules_want = modules_file_contents();
    checks.push(file_check(
        "modules file",
        MODULES_FILE,
        o.modules_file.as_deref(),
        &modules_want,
        fix,
    ));

    // Sysctls: set now and at every boot.
    for k in SYSCTLS {
        let now = o.sysctls.get(k).cloned().flatten();
        checks.push(match now.as_deref().map(str::trim) {
            Some("1") => Planned {
                check: check(&format!("sysctl {k}"), CheckState::Ok, "1"),
                actions: vec![],
            },
            other => Planned {
                check: with_remedy(
                    check(
                        &format!("sysctl {k}"),
                        CheckState::Failed,
                        match other {
                            Some(v) => format!("is {v}, must be 1"),
                            None => "does not exist (is br_netfilter loaded?)".to_string(),
                        },
                    ),
                    format!("run `sysctl -w {k}=1`"),
                ),
                actions: needs(vec![Action::SetSysctl {
                    key: k.to_string(),
                    value: "1".to_string(),
                }]),
            },
        });
    }
    checks.push(file_check(
        "sysctl file",
        SYSCTL_FILE,
        o.sysctl_file.as_deref(),
        &sysctl_file_contents(),
        fix,
    ));

    // Swap: off now; the agent turns it off again at every start, and says
    // which fstab lines would turn it on at boot.
    checks.push(if o.swaps.is_empty() {
        Planned {
            check: check("swap", CheckState::Ok, "off"),
            actions: vec![],
        }
    } else {
        Planned {
            check: with_remedy(
                check(
                    "swap",
                    CheckState::Failed,
                    format!("on: {}", o.swaps.join(", ")),
                ),
                "run `swapoff -a`",
            ),
            actions: needs(vec![Action::SwapOff]),
        }
    });
    let fstab_swaps = fstab_swap_lines(o.fstab.as_deref().unwrap_or(""));
    if !fstab_swaps.is_empty() {
        let lines: Vec<String> = fstab_swaps.iter().map(|(n, _)| n.to_string()).collect();
        checks.push(Planned {
            check: with_remedy(
                check(
                    "swap at boot",
                    CheckState::Warning,
                    format!(
                        "{FSTAB} line {} turns swap on at boot (kubeha-agent turns it off again when it starts)",
                        lines.join(", ")
                    ),
                ),
                format!("comment out the swap line in {FSTAB}"),
            ),
            actions: vec![],
        });
    }

    // containerd and its cgroup driver.
    checks.push(tool_check(
        "containerd",
        o.containerd.as_ref(),
        "apt install containerd",
    ));
    if matches!(o.containerd, Some(Tool::Present { .. })) {
        checks.push(containerd_config_check(
            &o.containerd_config_path,
            o.containerd_config.as_deref(),
            fix,
        ));
    }

    // The Kubernetes tools.
    let apt = "install it from the Kubernetes apt repository (docs/kubernetes.md)";
    checks.push(tool_check("kubelet", o.kubelet.as_ref(), apt));
    let mut kubeadm_check = tool_check("kubeadm", o.kubeadm.as_ref(), apt);
    let kubeadm_version = match &o.kubeadm {
        Some(Tool::Present { version: Ok(v) }) => Some(v.clone()),
        _ => None,
    };
    if let Some(v) = &kubeadm_version {
        // The config API decides what kubeha can render for it.
        let usable = crate::kubeadm::Version::parse(v)
            .ok_or_else(|| crate::kubeadm::KubeadmError::BadVersion(v.clone()))
            .and_then(crate::kubeadm::ApiVersion::for_kubeadm);
        if let Err(e) = usable {
            kubeadm_check.check = with_remedy(
                check("kubeadm", CheckState::Failed, e.to_string()),
                "install kubeadm 1.22 or later from the Kubernetes apt repository (docs/kubernetes.md)",
            );
        }
    }
    checks.push(kubeadm_check);
    checks.push(tool_check("kubectl", o.kubectl.as_ref(), apt));

    Plan {
        checks,
        kubeadm_version,
    }
}

fn file_check(name: &str, path: &str, have: Option<&str>, want: &str, fix: bool) -> Planned {
    if have == Some(want) {
        return Planned {
            check: check(name, CheckState::Ok, path),
            actions: vec![],
        };
    }
    let detail = match have {
        None => format!("{path} is missing"),
        Some(_) => format!("{path} differs from what kubeha writes"),
    };
    Planned {
        check: with_remedy(
            check(name, CheckState::Failed, detail),
            format!("let kubeha-agent write {path} (`[kubernetes] host_prep = true`)"),
        ),
        actions: if fix {
            vec![Action::WriteFile {
                path: path.to_string(),
                contents: want.to_string(),
            }]
        } else {
            vec![]
        },
    }
}

fn tool_check(name: &str, tool: Option<&Tool>, install: &str) -> Planned {
    let c = match tool {
        None | Some(Tool::Missing) => with_remedy(
            check(name, CheckState::Failed, "not installed"),
            install.to_string(),
        ),
        Some(Tool::Present { version: Ok(v) }) => check(name, CheckState::Ok, v.clone()),
        Some(Tool::Present { version: Err(e) }) => with_remedy(
            check(
                name,
                CheckState::Failed,
                format!("installed, but its version command failed: {e}"),
            ),
            format!("check the {name} installation"),
        ),
    };
    Planned {
        check: c,
        actions: vec![],
    }
}

/// `(line number, line)` of every active swap entry in fstab.
pub fn fstab_swap_lines(fstab: &str) -> Vec<(usize, &str)> {
    fstab
        .lines()
        .enumerate()
        .filter(|(_, l)| {
            let t = l.trim_start();
            if t.starts_with('#') {
                return false;
            }
            let fields: Vec<&str> = t.split_whitespace().collect();
            fields.len() >= 3 && fields[2] == "swap"
        })
        .map(|(i, l)| (i + 1, l))
        .collect()
}

fn containerd_config_check(path: &str, text: Option<&str>, fix: bool) -> Planned {
    let name = "containerd cgroup driver";
    match containerd_fix(text.unwrap_or("")) {
        Ok(None) => Planned {
            check: check(
                name,
                CheckState::Ok,
                format!("SystemdCgroup = true in {path}"),
            ),
            actions: vec![],
        },
        Ok(Some(fixed)) => Planned {
            check: with_remedy(
                check(
                    name,
                    CheckState::Failed,
                    format!(
                        "{path}: runc does not use the systemd cgroup driver (kubelet does) or the CRI plugin is disabled"
                    ),
                ),
                format!(
                    "set `SystemdCgroup = true` in the runc options of {path} and restart containerd"
                ),
            ),
            actions: if fix {
                vec![
                    Action::WriteFile {
                        path: path.to_string(),
                        contents: fixed,
                    },
                    Action::RestartContainerd,
                ]
            } else {
                vec![]
            },
        },
        Err(e) => Planned {
            check: with_remedy(
                check(name, CheckState::Failed, format!("{path}: {e}")),
                format!(
                    "fix {path} by hand (e.g. `containerd config default > {path}`, then set `SystemdCgroup = true`)"
                ),
            ),
            actions: vec![],
        },
    }
}

/// Why a containerd config cannot be fixed automatically.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContainerdConfigError {
    #[error("not valid TOML: {0}")]
    Syntax(String),
    #[error("config `version = {0}` is not supported (2 or 3 are)")]
    Version(i64),
    #[error("could not set `SystemdCgroup = true` without rewriting the file: {0}")]
    Edit(String),
}

/// The containerd config with `SystemdCgroup = true` for runc and the CRI
/// plugin enabled, changing only the lines that say otherwise; `None` when it
/// already is so. An empty or comment-only file becomes a minimal version 2
/// config.
pub fn containerd_fix(text: &str) -> Result<Option<String>, ContainerdConfigError> {
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ContainerdConfigError::Syntax(e.message().to_string()))?;
    if table.is_empty() {
        return Ok(Some(format!(
            "{text}{}version = 2\n\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\n  runtime_type = \"io.containerd.runc.v2\"\n\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc.options]\n  SystemdCgroup = true\n",
            if text.is_empty() || text.ends_with('\n') {
                ""
            } else {
                "\n"
            }
        )));
    }
    let version = match table.get("version") {
        None => 1,
        Some(toml::Value::Integer(v)) => *v,
        Some(_) => {
            return Err(ContainerdConfigError::Syntax(
                "`version` is not a number".into(),
            ));
        }
    };
    let runc: &[&str] = match version {
        2 => &RUNC_V2,
        3 => &RUNC_V3,
        v => return Err(ContainerdConfigError::Version(v)),
    };
    if is_good(&table, runc) {
        return Ok(None);
    }
    let mut out = text.to_string();
    if cri_disabled(&table) {
        out = enable_cri(&out)?;
    }
    if systemd_cgroup(&table, runc) != Some(true) {
        out = set_systemd_cgroup(&out, runc);
    }
    let check: toml::Table = out
        .parse()
        .map_err(|e: toml::de::Error| ContainerdConfigError::Edit(e.message().to_string()))?;
    if !is_good(&check, runc) {
        return Err(ContainerdConfigError::Edit(
            "the runc options are set in a form kubeha does not edit".into(),
        ));
    }
    Ok(Some(out))
}

fn is_good(table: &toml::Table, runc: &[&str]) -> bool {
    systemd_cgroup(table, runc) == Some(true) && !cri_disabled(table)
}

fn systemd_cgroup(table: &toml::Table, runc: &[&str]) -> Option<bool> {
    let mut t = table;
    for seg in runc {
        t = t.get(*seg)?.as_table()?;
    }
    t.get("SystemdCgroup")?.as_bool()
}

fn cri_disabled(table: &toml::Table) -> bool {
    table
        .get("disabled_plugins")
        .and_then(|v| v.as_array())
        .is_some_and(|a| {
            a.iter()
                .filter_map(|v| v.as_str())
                .any(|p| CRI_PLUGIN_NAMES.contains(&p))
        })
}

/// Rewrite the one-line top-level `disabled_plugins = [...]` without the CRI.
fn enable_cri(text: &str) -> Result<String, ContainerdConfigError> {
    let mut out = String::with_capacity(text.len());
    let mut in_table = false;
    let mut done = false;
    for line in text.split_inclusive('\n') {
        let t = line.trim();
        if t.starts_with('[') {
            in_table = true;
        }
        if !in_table && !done && key_of(t) == Some("disabled_plugins") {
            let value = t.split_once('=').map(|(_, v)| v.trim()).unwrap_or("");
            let parsed: toml::Table = format!("x = {value}").parse().map_err(|_| {
                ContainerdConfigError::Edit("`disabled_plugins` spans several lines".into())
            })?;
            let kept: Vec<String> = parsed["x"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str())
                        .filter(|p| !CRI_PLUGIN_NAMES.contains(p))
                        .map(|p| format!("\"{p}\""))
                        .collect()
                })
                .unwrap_or_default();
            let indent = &line[..line.len() - line.trim_start().len()];
            out.push_str(&format!(
                "{indent}disabled_plugins = [{}]\n",
                kept.join(", ")
            ));
            done = true;
            continue;
        }
        out.push_str(line);
    }
    Ok(out)
}

/// Set `SystemdCgroup = true` in the runc options table: replace the key's
/// line in that table, or add it under the table's header, or append the
/// table (with runc's runtime type when the runc table is not there either).
fn set_systemd_cgroup(text: &str, runc: &[&str]) -> String {
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let header_at = lines
        .iter()
        .position(|l| header_segments(l.trim()).as_deref() == Some(&to_owned(runc)[..]));
    let Some(h) = header_at else {
        let mut out = text.to_string();
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        let runtime = &runc[..runc.len() - 1];
        let has_runtime = lines
            .iter()
            .any(|l| header_segments(l.trim()).as_deref() == Some(&to_owned(runtime)[..]));
        if !has_runtime {
            out.push_str(&format!(
                "\n[{}]\n  runtime_type = \"io.containerd.runc.v2\"\n",
                header_text(runtime)
            ));
        }
        out.push_str(&format!(
            "\n[{}]\n  SystemdCgroup = true\n",
            header_text(runc)
        ));
        return out;
    };
    let indent_of = |l: &str| l[..l.len() - l.trim_start().len()].to_string();
    let mut end = lines.len();
    for (i, l) in lines.iter().enumerate().skip(h + 1) {
        if l.trim_start().starts_with('[') {
            end = i;
            break;
        }
    }
    let mut out: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    if let Some(i) = (h + 1..end).find(|&i| key_of(lines[i].trim()) == Some("SystemdCgroup")) {
        out[i] = format!("{}SystemdCgroup = true\n", indent_of(lines[i]));
    } else {
        let indent = (h + 1..end)
            .find(|&i| key_of(lines[i].trim()).is_some())
            .map(|i| indent_of(lines[i]))
            .unwrap_or_else(|| format!("{}  ", indent_of(lines[h])));
        if !out[h].ends_with('\n') {
            out[h].push('\n');
        }
        out.insert(h + 1, format!("{indent}SystemdCgroup = true\n"));
    }
    out.concat()
}

fn to_owned(s: &[&str]) -> Vec<String> {
    s.iter().map(|x| x.to_string()).collect()
}

fn header_text(segs: &[&str]) -> String {
    segs.iter()
        .map(|s| {
            if s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                s.to_string()
            } else {
                format!("\"{s}\"")
            }
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// The key of a `key = value` line (bare or quoted), if it is one.
fn key_of(t: &str) -> Option<&str> {
    if t.starts_with('#') || t.starts_with('[') {
        return None;
    }
    let (k, _) = t.split_once('=')?;
    Some(k.trim().trim_matches('"').trim_matches('\''))
}

/// `[a."b.c".d]` → `["a", "b.c", "d"]`; `None` for other lines and arrays of tables.
fn header_segments(t: &str) -> Option<Vec<String>> {
    let inner = t.strip_prefix('[')?;
    if inner.starts_with('[') {
        return None;
    }
    let mut segs = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut chars = inner.chars();
    loop {
        let c = chars.next()?;
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.push(c),
            (None, '"') | (None, '\'') => quote = Some(c),
            (None, '.') => segs.push(std::mem::take(&mut cur).trim().to_string()),
            (None, ']') => {
                segs.push(cur.trim().to_string());
                return Some(segs);
            }
            (None, c) => cur.push(c),
        }
    }
}

/// The report after a run: `before` is the plan the shell acted on (`None`
/// when it changed nothing), `after` the plan from a fresh observation. A check
/// that failed before and passes after was changed by this run.
pub fn report(
    before: Option<&Plan>,
    after: &Plan,
    applied: &[String],
    errors: &[String],
) -> PreflightReport {
    let mut checks: Vec<PreflightCheck> = Vec::new();
    for p in &after.checks {
        let mut c = p.check.clone();
        let was_failing = before.is_some_and(|b| {
            b.checks
                .iter()
                .any(|q| q.check.name == c.name && q.check.state == CheckState::Failed)
        });
        if c.state == CheckState::Ok && was_failing {
            c.state = CheckState::Changed;
        }
        checks.push(c);
    }
    let ok = checks.iter().all(|c| c.state != CheckState::Failed) && errors.is_empty();
    PreflightReport {
        ok,
        kubeadm_version: after.kubeadm_version.clone(),
        kubeadm_minor: after
            .kubeadm_version
            .as_deref()
            .and_then(crate::kubeadm::Version::parse)
            .map(|v| v.minor_string()),
        checks,
        applied: applied.to_vec(),
        errors: errors.to_vec(),
    }
}

/// Control planes whose kubeadm minor version differs from the others.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VersionSkew {
    /// The minor most control planes have (`1.31`), if any publishes one.
    pub common: Option<String>,
    /// `(member, its minor)` of every control plane with another minor.
    pub odd: Vec<(String, String)>,
}

impl VersionSkew {
    /// `kubeadm init`/`join` must wait while control planes disagree.
    pub fn blocks(&self) -> bool {
        !self.odd.is_empty()
    }
}

/// From `(control-plane member, kubeadm minor)` pairs: the most common minor
/// (ties: the lower version, the one an upgrade starts from) and the rest.
pub fn version_skew<'a>(
    control_planes: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> VersionSkew {
    let pairs: Vec<(&str, &str)> = control_planes.into_iter().collect();
    let mut count: BTreeMap<(u64, u64), (usize, &str)> = BTreeMap::new();
    for (_, m) in &pairs {
        if let Some(k) = minor_key(m) {
            count.entry(k).or_insert((0, m)).0 += 1;
        }
    }
    let Some(best) = count
        .iter()
        .max_by(|a, b| a.1.0.cmp(&b.1.0).then(b.0.cmp(a.0)))
        .map(|(k, _)| *k)
    else {
        return VersionSkew::default();
    };
    let mut odd: Vec<(String, String)> = pairs
        .iter()
        .filter(|(_, m)| minor_key(m).is_some_and(|k| k != best))
        .map(|(n, m)| (n.to_string(), m.to_string()))
        .collect();
    odd.sort();
    VersionSkew {
        common: Some(format!("{}.{}", best.0, best.1)),
        odd,
    }
}

/// [`version_skew`] over the alive control planes of a membership view.
pub fn view_skew(view: &crate::membership::MembershipView) -> VersionSkew {
    version_skew(
        view.members
            .values()
            .filter(|m| m.alive() && m.roles.contains(&crate::config::Role::ControlPlane))
            .filter_map(|m| Some((m.name.as_str(), m.kubeadm.as_deref()?))),
    )
}

impl VersionSkew {
    /// The status form.
    pub fn to_api(&self) -> Vec<crate::api::KubeadmSkew> {
        let common = self.common.clone().unwrap_or_default();
        self.odd
            .iter()
            .map(|(member, kubeadm)| crate::api::KubeadmSkew {
                member: member.clone(),
                kubeadm: kubeadm.clone(),
                common: common.clone(),
            })
            .collect()
    }
}

/// Whether kubeha can render this node's kubeadm configs (init on control
/// planes, join everywhere) for the installed kubeadm with the user's
/// settings; `None` when kubeadm's version is unknown (its own check fails).
pub fn kubeadm_config_check(
    kubeadm_version: Option<&str>,
    facts: &crate::kubeadm::NodeFacts,
    extra: &crate::kubeadm::Extra,
) -> Option<PreflightCheck> {
    use crate::kubeadm::{ApiVersion, JoinSecrets, Version, render_init, render_join};
    let v = Version::parse(kubeadm_version?)?;
    let api = ApiVersion::for_kubeadm(v).ok()?;
    // Placeholders: only the shape is checked here, no secret is involved.
    let placeholder = JoinSecrets {
        token: "abcdef.0123456789abcdef".into(),
        ca_cert_hashes: vec!["sha256:00".into()],
        certificate_key: facts.control_plane.then(|| "00".into()),
    };
    let result = if facts.control_plane {
        render_init(v, facts, extra).and_then(|_| render_join(v, facts, extra, &placeholder))
    } else {
        render_join(v, facts, extra, &placeholder)
    };
    Some(match result {
        Ok(_) => check("kubeadm config", CheckState::Ok, api.as_str()),
        Err(e) => with_remedy(
            check("kubeadm config", CheckState::Failed, e.to_string()),
            "change the named key in kubeha.toml (`[kubernetes.*_configuration]`)",
        ),
    })
}

/// Whether this node may feed `Input::WantInit` or run `kubeadm join`: its
/// host is prepared and every control plane has the same kubeadm minor.
/// The error is the reason, for the status and the log.
pub fn may_bootstrap(report: Option<&PreflightReport>, skew: &VersionSkew) -> Result<(), String> {
    let Some(r) = report else {
        return Err("host preparation has not finished yet".into());
    };
    if !r.ok {
        let failed: Vec<&str> = r
            .checks
            .iter()
            .filter(|c| c.state == CheckState::Failed)
            .map(|c| c.name.as_str())
            .collect();
        return Err(format!(
            "the host is not prepared (failed: {}; see `kubeha-ctl preflight`)",
            if failed.is_empty() {
                "a step".to_string()
            } else {
                failed.join(", ")
            }
        ));
    }
    if skew.blocks() {
        let odd: Vec<String> = skew
            .odd
            .iter()
            .map(|(n, m)| format!("{n} has {m}"))
            .collect();
        return Err(format!(
            "control planes disagree on the kubeadm minor ({}; most have {}): install the same kubeadm everywhere",
            odd.join(", "),
            skew.common.as_deref().unwrap_or("?")
        ));
    }
    Ok(())
}

fn minor_key(m: &str) -> Option<(u64, u64)> {
    let (a, b) = m.split_once('.')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn present(v: &str) -> Option<Tool> {
        Some(Tool::Present {
            version: Ok(v.to_string()),
        })
    }

    const GOOD_CONTAINERD: &str = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc.options]\n  SystemdCgroup = true\n";

    /// A prepared host.
    fn prepared() -> Observed {
        Observed {
            modules_present: MODULES.iter().map(|m| m.to_string()).collect(),
            modules_file: Some(modules_file_contents()),
            sysctls: SYSCTLS
                .iter()
                .map(|k| (k.to_string(), Some("1\n".to_string())))
                .collect(),
            sysctl_file: Some(sysctl_file_contents()),
            swaps: vec![],
            fstab: Some("UUID=abc / ext4 errors=remount-ro 0 1\n".into()),
            containerd_config_path: DEFAULT_CONTAINERD_CONFIG.into(),
            containerd: present("containerd 1.6.20"),
            containerd_config: Some(GOOD_CONTAINERD.into()),
            kubelet: present("Kubernetes v1.31.2"),
            kubeadm: present("v1.31.2"),
            kubectl: present("v1.31.2"),
        }
    }

    /// A fresh Debian host with the tools installed, nothing prepared.
    fn fresh() -> Observed {
        let mut o = prepared();
        o.modules_present.clear();
        o.modules_file = None;
        o.sysctls = BTreeMap::from([
            ("net.ipv4.ip_forward".to_string(), Some("0".to_string())),
            ("net.bridge.bridge-nf-call-iptables".to_string(), None),
            ("net.bridge.bridge-nf-call-ip6tables".to_string(), None),
        ]);
        o.sysctl_file = None;
        o.swaps = vec!["/swapfile".into()];
        o.fstab = Some("/swapfile none swap sw 0 0\n# /old none swap sw 0 0\n".into());
        o.containerd_config = Some(
            "version = 2\n\n[plugins]\n  [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc.options]\n    BinaryName = \"\"\n    SystemdCgroup = false\n".into(),
        );
        o
    }

    #[test]
    fn prepared_host_needs_nothing() {
        let p = plan(&prepared(), true);
        assert!(p.actions().is_empty(), "{:?}", p.actions());
        assert!(p.unfixable().is_empty());
        assert!(p.checks.iter().all(|c| c.check.state == CheckState::Ok));
        assert_eq!(p.kubeadm_version.as_deref(), Some("v1.31.2"));
    }

    #[test]
    fn fresh_host_gets_every_fix_in_order() {
        let p = plan(&fresh(), true);
        assert!(p.unfixable().is_empty(), "{:?}", p.unfixable());
        let got: Vec<String> = p.actions().iter().map(Action::describe).collect();
        assert_eq!(
            got,
            [
                "write /etc/modules-load.d/kubeha.conf",
                "modprobe overlay",
                "modprobe br_netfilter",
                "write /etc/sysctl.d/99-kubeha.conf",
                "sysctl -w net.bridge.bridge-nf-call-iptables=1",
                "sysctl -w net.bridge.bridge-nf-call-ip6tables=1",
                "sysctl -w net.ipv4.ip_forward=1",
                "swapoff -a",
                "write /etc/containerd/config.toml",
                "systemctl restart containerd",
            ]
        );
        let fstab = p
            .checks
            .iter()
            .find(|c| c.check.name == "swap at boot")
            .unwrap();
        assert_eq!(fstab.check.state, CheckState::Warning);
        assert!(
            fstab.check.detail.contains("line 1"),
            "{}",
            fstab.check.detail
        );
        assert!(!fstab.check.detail.contains("line 2"));
    }

    #[test]
    fn old_or_garbled_kubeadm_fails_its_check() {
        for (v, want) in [("v1.21.3", "too old"), ("kubeadm", "not a version")] {
            let mut o = prepared();
            o.kubeadm = present(v);
            let p = plan(&o, true);
            let bad = p.unfixable();
            assert_eq!(bad.len(), 1, "{v}");
            assert_eq!(bad[0].name, "kubeadm");
            assert!(bad[0].detail.contains(want), "{}", bad[0].detail);
        }
    }

    #[test]
    fn report_only_plans_no_action() {
        let p = plan(&fresh(), false);
        assert!(p.actions().is_empty());
        assert!(p.checks.iter().any(|c| c.check.state == CheckState::Failed));
    }

    #[test]
    fn missing_tools_are_unfixable_with_a_remedy() {
        let mut o = fresh();
        o.kubeadm = Some(Tool::Missing);
        o.containerd = Some(Tool::Missing);
        let p = plan(&o, true);
        let names: Vec<&str> = p.unfixable().iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["containerd", "kubeadm"]);
        assert!(p.unfixable()[1].remedy.as_deref().unwrap().contains("apt"));
        // No containerd: its config is not looked at.
        assert!(
            !p.checks
                .iter()
                .any(|c| c.check.name == "containerd cgroup driver")
        );
    }

    #[test]
    fn report_marks_fixed_checks_changed() {
        let before = plan(&fresh(), true);
        let mut after_obs = prepared();
        after_obs.fstab = fresh().fstab;
        let after = plan(&after_obs, true);
        let r = report(Some(&before), &after, &["swapoff -a".into()], &[]);
        assert!(r.ok, "{r:?}");
        let state = |n: &str| r.checks.iter().find(|c| c.name == n).unwrap().state;
        assert_eq!(state("swap"), CheckState::Changed);
        assert_eq!(state("module br_netfilter"), CheckState::Changed);
        assert_eq!(state("kubeadm"), CheckState::Ok);
        assert_eq!(state("swap at boot"), CheckState::Warning);
        assert_eq!(r.kubeadm_minor.as_deref(), Some("1.31"));
        // Still failing after the run: not ok.
        let r = report(Some(&before), &before, &[], &[]);
        assert!(!r.ok);
    }

    #[test]
    fn containerd_false_becomes_true_and_nothing_else_changes() {
        let text = fresh().containerd_config.unwrap();
        let fixed = containerd_fix(&text).unwrap().unwrap();
        assert_eq!(
            fixed,
            text.replace("SystemdCgroup = false", "SystemdCgroup = true")
        );
        assert_eq!(containerd_fix(&fixed).unwrap(), None, "idempotent");
    }

    #[test]
    fn containerd_key_missing_is_added_under_the_header() {
        let text = "version = 2\n# keep me\n[plugins.'io.containerd.grpc.v1.cri'.containerd.runtimes.runc.options]\n    BinaryName = \"\"\n[other]\nx = 1\n";
        let fixed = containerd_fix(text).unwrap().unwrap();
        assert_eq!(
            fixed,
            "version = 2\n# keep me\n[plugins.'io.containerd.grpc.v1.cri'.containerd.runtimes.runc.options]\n    SystemdCgroup = true\n    BinaryName = \"\"\n[other]\nx = 1\n"
        );
    }

    #[test]
    fn containerd_v3_table_is_appended() {
        let text = "version = 3\nroot = \"/var/lib/containerd\"\n";
        let fixed = containerd_fix(text).unwrap().unwrap();
        assert!(fixed.starts_with(text));
        let t: toml::Table = fixed.parse().unwrap();
        assert_eq!(systemd_cgroup(&t, &RUNC_V3), Some(true));
        assert!(fixed.contains("runtime_type = \"io.containerd.runc.v2\""));
        assert_eq!(containerd_fix(&fixed).unwrap(), None);
    }

    #[test]
    fn containerd_empty_or_comments_gets_minimal_config() {
        for text in ["", "# containerd config\n#root = \"/x\"\n"] {
            let fixed = containerd_fix(text).unwrap().unwrap();
            assert!(fixed.starts_with(text));
            assert_eq!(containerd_fix(&fixed).unwrap(), None, "{fixed}");
        }
    }

    #[test]
    fn containerd_disabled_cri_is_enabled() {
        let text =
            "disabled_plugins = [\"cri\", \"io.containerd.internal.v1.tracing\"]\nversion = 2\n";
        let fixed = containerd_fix(text).unwrap().unwrap();
        assert!(
            fixed.starts_with(
                "disabled_plugins = [\"io.containerd.internal.v1.tracing\"]\nversion = 2\n"
            ),
            "{fixed}"
        );
        assert_eq!(containerd_fix(&fixed).unwrap(), None);
    }

    #[test]
    fn containerd_unfixable_configs_are_errors() {
        assert!(matches!(
            containerd_fix("version = [").unwrap_err(),
            ContainerdConfigError::Syntax(_)
        ));
        assert_eq!(
            containerd_fix("[plugins.cri]\nx = 1\n").unwrap_err(),
            ContainerdConfigError::Version(1)
        );
        // Set through an inline table: kubeha does not rewrite that.
        let inline = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes]\nrunc = { options = { SystemdCgroup = false } }\n";
        assert!(matches!(
            containerd_fix(inline).unwrap_err(),
            ContainerdConfigError::Edit(_)
        ));
        let mut o = fresh();
        o.containerd_config = Some("version = [".into());
        let p = plan(&o, true);
        let bad = p.unfixable();
        assert_eq!(bad.len(), 1);
        assert!(
            bad[0]
                .detail
                .starts_with("/etc/containerd/config.toml: not valid TOML"),
            "{}",
            bad[0].detail
        );
    }

    #[test]
    fn header_parsing() {
        assert_eq!(
            header_segments("[plugins.\"io.containerd.grpc.v1.cri\".containerd]"),
            Some(vec![
                "plugins".into(),
                "io.containerd.grpc.v1.cri".into(),
                "containerd".into()
            ])
        );
        assert_eq!(header_segments("[[x]]"), None);
        assert_eq!(header_segments("x = 1"), None);
    }

    #[test]
    fn skew_from_gossip_counts_alive_control_planes_only() {
        use crate::membership::{MemberInfo, MembershipView, keys};
        let m = |name: &str, roles: &str, kubeadm: &str, live: bool| {
            MemberInfo::from_kv(
                name,
                1,
                "127.0.0.1:7946".parse().unwrap(),
                live,
                [(keys::ROLES, roles), (keys::KUBEADM, kubeadm)],
            )
        };
        let view = MembershipView::from_incarnations([
            m("cp-0", "control-plane,lb", "1.31", true),
            m("cp-1", "control-plane", "1.31", true),
            m("cp-2", "control-plane", "1.30", true),
            m("w-0", "worker", "1.29", true),
            m("cp-3", "control-plane", "1.28", false),
        ]);
        let s = view_skew(&view);
        assert_eq!(s.odd, [("cp-2".to_string(), "1.30".to_string())]);
        let api = s.to_api();
        assert_eq!(api[0].member, "cp-2");
        assert_eq!(api[0].common, "1.31");
    }

    #[test]
    fn kubeadm_config_check_names_a_setting_the_installed_kubeadm_lacks() {
        use crate::kubeadm::{Extra, NodeFacts, Tree};
        let facts = NodeFacts {
            node_name: "cp-0".into(),
            advertise_addr: "10.0.0.3".parse().unwrap(),
            apiserver_port: 6443,
            control_plane_endpoint: "k8s-api:6443".into(),
            cert_sans: vec!["k8s-api".into()],
            control_plane: true,
            binds_apiserver: false,
            patches_dir: "/p".into(),
        };
        let extra = Extra {
            cluster: Some(Tree::Map(vec![(
                "encryptionAlgorithm".into(),
                Tree::Str("ECDSA-P256".into()),
            )])),
            ..Extra::default()
        };
        let ok = kubeadm_config_check(Some("v1.31.0"), &facts, &extra).unwrap();
        assert_eq!(ok.state, CheckState::Ok);
        assert_eq!(ok.detail, "kubeadm.k8s.io/v1beta4");
        let bad = kubeadm_config_check(Some("v1.30.0"), &facts, &extra).unwrap();
        assert_eq!(bad.state, CheckState::Failed);
        assert!(
            bad.detail
                .contains("kubernetes.cluster_configuration.encryptionAlgorithm"),
            "{}",
            bad.detail
        );
        assert_eq!(kubeadm_config_check(None, &facts, &extra), None);
        assert_eq!(kubeadm_config_check(Some("v1.20.0"), &facts, &extra), None);
    }

    #[test]
    fn bootstrap_waits_for_a_prepared_host_and_matching_kubeadm() {
        let ok = report(None, &plan(&prepared(), true), &[], &[]);
        let same = version_skew([("a", "1.31"), ("b", "1.31")]);
        assert_eq!(may_bootstrap(Some(&ok), &same), Ok(()));
        assert!(
            may_bootstrap(None, &same)
                .unwrap_err()
                .contains("not finished")
        );
        let bad = report(None, &plan(&fresh(), false), &[], &[]);
        let e = may_bootstrap(Some(&bad), &same).unwrap_err();
        assert!(e.contains("failed: module overlay"), "{e}");
        let skew = version_skew([("a", "1.31"), ("b", "1.31"), ("c", "1.30")]);
        let e = may_bootstrap(Some(&ok), &skew).unwrap_err();
        assert!(
            e.contains("c has 1.30") && e.contains("most have 1.31"),
            "{e}"
        );
    }

    #[test]
    fn skew_names_the_odd_control_plane() {
        let s = version_skew([("cp-0", "1.31"), ("cp-1", "1.31"), ("cp-2", "1.30")]);
        assert_eq!(s.common.as_deref(), Some("1.31"));
        assert_eq!(s.odd, [("cp-2".to_string(), "1.30".to_string())]);
        assert!(s.blocks());
        // A tie: the lower minor is the common one.
        let s = version_skew([("a", "1.31"), ("b", "1.30")]);
        assert_eq!(s.common.as_deref(), Some("1.30"));
        assert_eq!(s.odd, [("a".to_string(), "1.31".to_string())]);
        let s = version_skew([("a", "1.31"), ("b", "1.31")]);
        assert!(!s.blocks());
        assert!(!version_skew([]).blocks());
    }
}
