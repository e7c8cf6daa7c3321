//! The managed `/etc/hosts` line that points the control-plane endpoint's
//! name at the VIP (the lab guide's hand-written hosts entry).
//!
//! kubeha owns exactly the lines that end with [`MARK`]; every other line is
//! kept byte for byte. The shell writes the result atomically (a temporary
//! file in the same directory, then rename).

use std::net::IpAddr;

/// The marker at the end of the line kubeha manages.
pub const MARK: &str = "# kubeha: managed";

/// The result of planning the hosts file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostsPlan {
    /// The new contents, `None` when the file is already right.
    pub contents: Option<String>,
    /// Unmanaged lines that also name the endpoint (line number, address):
    /// a resolver reading the file top-down may use them instead.
    pub shadowing: Vec<(usize, String)>,
}

/// The managed line for `name` → `addr`.
pub fn line(name: &str, addr: IpAddr) -> String {
    format!("{addr}\t{name}\t{MARK}")
}

fn is_managed(l: &str) -> bool {
    l.trim_end().ends_with(MARK)
}

/// Make `current` hold exactly one managed line for `name` → `addr`: the
/// first managed line is replaced in place, further managed lines are
/// dropped, and with none the line is appended.
pub fn plan(current: &str, name: &str, addr: IpAddr) -> HostsPlan {
    let want = line(name, addr);
    let mut out = String::with_capacity(current.len() + want.len() + 1);
    let mut placed = false;
    let mut shadowing = Vec::new();
    for (i, l) in current.split_inclusive('\n').enumerate() {
        if is_managed(l) {
            if !placed {
                out.push_str(&want);
                out.push('\n');
                placed = true;
            }
            continue;
        }
        let body = l.split('#').next().unwrap_or("");
        let mut fields = body.split_whitespace();
        if let Some(a) = fields.next()
            && fields.any(|f| f.eq_ignore_ascii_case(name))
        {
            shadowing.push((i + 1, a.to_string()));
        }
        out.push_str(l);
    }
    if !placed {
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(&want);
        out.push('\n');
    }
    HostsPlan {
        contents: (out != current).then_some(out),
        shadowing,
    }
}

/// The preflight check for the hosts line, after the shell acted on `p`
/// (`written`: it wrote the new contents; `error`: writing failed).
pub fn check(
    path: &str,
    name: &str,
    addr: IpAddr,
    p: &HostsPlan,
    written: bool,
    error: Option<&str>,
) -> crate::api::PreflightCheck {
    use crate::api::{CheckState, PreflightCheck};
    let (state, detail, remedy) = match (error, &p.contents, written) {
        (Some(e), _, _) => (
            CheckState::Failed,
            format!("{path}: {e}"),
            Some(format!("add `{}` to {path} by hand", line(name, addr))),
        ),
        (None, None, _) => (CheckState::Ok, format!("{name} -> {addr}"), None),
        (None, Some(_), true) => (CheckState::Changed, format!("{name} -> {addr}"), None),
        (None, Some(_), false) => (
            CheckState::Failed,
            format!("{path} does not point {name} at {addr}"),
            Some("kubeha-agent writes it when `[kubernetes] host_prep` is on and no other check is unfixable".to_string()),
        ),
    };
    let mut c = PreflightCheck {
        name: "hosts line".into(),
        state,
        detail,
        remedy,
    };
    if c.state != CheckState::Failed
        && let Some((n, a)) = p.shadowing.first()
    {
        c.state = CheckState::Warning;
        c.detail = format!("{} ({path} line {n} also names {name}, as {a})", c.detail);
        c.remedy = Some(format!(
            "remove line {n} of {path}: resolvers may use it first"
        ));
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEBIAN: &str = "127.0.0.1\tlocalhost\n127.0.1.1\tcp-0\n\n# The following lines are desirable for IPv6 capable hosts\n::1     localhost ip6-localhost ip6-loopback\n";

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    proptest::proptest! {
        /// Whatever the file holds: unmanaged lines stay, in order, byte for
        /// byte; exactly one managed line; a second run changes nothing.
        #[test]
        fn other_lines_are_never_touched(
            lines in proptest::collection::vec(
                proptest::prop_oneof![
                    "[ -~\t]{0,30}",
                    "[0-9.]{7,15}[ \t]+[a-z-]{1,8}",
                    "[0-9.]{7,15}[ \t]+k8s-api[ \t]*# kubeha: managed",
                ],
                0..12,
            ),
            trailing_newline in proptest::bool::ANY,
        ) {
            let mut text = lines.join("\n");
            if trailing_newline && !text.is_empty() {
                text.push('\n');
            }
            let a = ip("10.1.2.3");
            let new = plan(&text, "k8s-api", a).contents.unwrap_or_else(|| text.clone());
            let kept = |t: &str| -> Vec<String> {
                t.split_inclusive('\n')
                    .filter(|l| !is_managed(l))
                    .map(|l| l.trim_end_matches('\n').to_string())
                    .collect()
            };
            proptest::prop_assert_eq!(kept(&new), kept(&text));
            let managed: Vec<&str> = new.lines().filter(|l| is_managed(l)).collect();
            let want = line("k8s-api", a);
            proptest::prop_assert_eq!(managed, vec![want.as_str()]);
            proptest::prop_assert_eq!(plan(&new, "k8s-api", a).contents, None);
        }
    }

    #[test]
    fn check_states() {
        use crate::api::CheckState;
        let a = ip("10.0.0.1");
        let p = plan("", "k8s-api", a);
        assert_eq!(
            check("/etc/hosts", "k8s-api", a, &p, true, None).state,
            CheckState::Changed
        );
        assert_eq!(
            check("/etc/hosts", "k8s-api", a, &p, false, None).state,
            CheckState::Failed
        );
        let c = check(
            "/etc/hosts",
            "k8s-api",
            a,
            &p,
            false,
            Some("read-only file system"),
        );
        assert_eq!(c.state, CheckState::Failed);
        assert!(
            c.remedy
                .unwrap()
                .contains("10.0.0.1\tk8s-api\t# kubeha: managed")
        );
        let done = plan(&p.contents.unwrap(), "k8s-api", a);
        assert_eq!(
            check("/etc/hosts", "k8s-api", a, &done, false, None).state,
            CheckState::Ok
        );
        let shadowed = plan("10.9.9.9 k8s-api\n", "k8s-api", a);
        let c = check("/etc/hosts", "k8s-api", a, &shadowed, true, None);
        assert_eq!(c.state, CheckState::Warning);
        assert!(c.detail.contains("line 1"), "{}", c.detail);
    }

    #[test]
    fn appends_once_then_nothing_to_do() {
        let p = plan(DEBIAN, "k8s-api", ip("10.108.0.10"));
        let new = p.contents.unwrap();
        assert_eq!(
            new,
            format!("{DEBIAN}10.108.0.10\tk8s-api\t# kubeha: managed\n")
        );
        assert!(p.shadowing.is_empty());
        assert_eq!(plan(&new, "k8s-api", ip("10.108.0.10")).contents, None);
    }

    #[test]
    fn updates_in_place_and_keeps_other_lines() {
        let text = format!("127.0.0.1 localhost\n10.0.0.9\tk8s-api\t{MARK}\n10.0.0.5 db\n");
        let new = plan(&text, "k8s-api", ip("10.108.0.10")).contents.unwrap();
        assert_eq!(
            new,
            format!("127.0.0.1 localhost\n10.108.0.10\tk8s-api\t{MARK}\n10.0.0.5 db\n")
        );
    }

    #[test]
    fn duplicate_managed_lines_collapse_and_renames_follow() {
        let text = format!("a\n1.1.1.1 old {MARK}\nb\n2.2.2.2 old {MARK}\nc");
        let new = plan(&text, "api.lab", ip("fd00::10")).contents.unwrap();
        // The last line had no newline: kept as it was.
        assert_eq!(new, format!("a\nfd00::10\tapi.lab\t{MARK}\nb\nc"));
    }

    #[test]
    fn empty_file_and_shadowing_lines() {
        assert_eq!(
            plan("", "k8s-api", ip("10.0.0.1")).contents.unwrap(),
            format!("10.0.0.1\tk8s-api\t{MARK}\n")
        );
        let p = plan(
            "10.9.9.9 K8S-API other\n# 10.8.8.8 k8s-api\n",
            "k8s-api",
            ip("10.0.0.1"),
        );
        assert_eq!(p.shadowing, [(1, "10.9.9.9".to_string())]);
    }
}
