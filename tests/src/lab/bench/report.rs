//! The Markdown report of a benchmark run.

use std::fmt::Write as _;

use super::{BenchArgs, LossRun, Results, Stats};

fn fmt_stats(s: &Option<Stats>) -> (String, String, String) {
    match s {
        Some(s) => (
            format!("{:.0}", s.median),
            format!("{:.0}", s.p95),
            format!("{:.0}", s.max),
        ),
        None => ("-".into(), "-".into(), "-".into()),
    }
}

/// The Markdown report.
pub fn report(r: &Results, args: &BenchArgs) -> String {
    let mut m = String::new();
    let e = &r.env;
    let _ = writeln!(m, "# VIP failover: kubeha and keepalived in the same lab\n");
    let _ = writeln!(
        m,
        "- date {}, {}, {} CPUs, {}\n- command: `{}` (seed {}; {:.0} s wall)",
        e.date, e.kernel, e.cpus, e.keepalived, e.command, e.seed, r.wall_secs
    );
    let _ = writeln!(
        m,
        "- lab: 3 lb nodes (priorities 150/100/50) + a client, network namespaces on one bridge, VIP 198.18.0.10/32; a TCP responder on VIP:6443 in every node"
    );
    let _ = writeln!(
        m,
        "- prober: TCP connect from the client to VIP:6443 every 10 ms, 50 ms timeout, overlapping; sampler: netlink address dump of every node every 10 ms, plus every node's address-change notifications (two holders = the longer of the two views)"
    );
    let _ = writeln!(
        m,
        "- kubeha: `kubeha-agent`, timing `default` / `fast`, voters = the 3 nodes; keepalived: VRRPv2 `advert_int 1` / VRRPv3 `advert_int 0.1`, all `state BACKUP`, multicast"
    );
    let _ = writeln!(
        m,
        "- fault at a random phase (0-1 s default, 0-250 ms fast); failover = fault -> end of the first probe answered by another node; outage = longest stretch without a successful probe after the fault"
    );
    for (s, why) in &r.skipped {
        let _ = writeln!(m, "- **{s} not measured**: {why}");
    }
    let _ = writeln!(m, "\n## Failover as the client sees it (ms)\n");
    let _ = writeln!(
        m,
        "| fault | system | N | median | p95 | max | kubeha / keepalived (median) | outage median | two live holders: trials / max ms | killed node kept VIP | no failover | errors |"
    );
    let _ = writeln!(m, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    for s in r.summary.iter().filter(|s| s.fault != "partition") {
        let (med, p95, max) = fmt_stats(&s.failover_ms);
        let ratio = s
            .ratio_to_keepalived
            .map(|x| format!("{x:.2}"))
            .unwrap_or_else(|| "-".into());
        let outage = s
            .outage_ms
            .as_ref()
            .map(|x| format!("{:.0}", x.median))
            .unwrap_or_else(|| "-".into());
        let multi_max = s
            .multi_live_ms
            .as_ref()
            .map(|x| format!("{:.0}", x.max))
            .unwrap_or_else(|| "-".into());
        let stale = if s.fault.starts_with("kill") {
            format!("{}/{}", s.stale_vip_on_old, s.n)
        } else {
            "-".into()
        };
        let _ = writeln!(
            m,
            "| {} | {} | {} | {med} | {p95} | {max} | {ratio} | {outage} | {} / {multi_max} | {stale} | {} | {} |",
            s.fault, s.system, s.n, s.trials_with_two_live_holders, s.no_failover, s.errors
        );
    }
    if r.summary.iter().any(|s| s.fault == "partition") {
        let _ = writeln!(
            m,
            "\n## Partition: the holder cut off for {:.0} s, then healed\n",
            args.partition_secs
        );
        let _ = writeln!(
            m,
            "| system | N | two holders ms median / max | trials with two holders | client failover during the cut, median ms | after heal: steady on one holder, ms median / p95 / max | kubeha / keepalived | client ARP entry wrong at end | trials > 1 s to steady |"
        );
        let _ = writeln!(m, "|---|---|---|---|---|---|---|---|---|");
        for s in r.summary.iter().filter(|s| s.fault == "partition") {
            let multi = s
                .multi_ms
                .as_ref()
                .map(|x| format!("{:.0} / {:.0}", x.median, x.max))
                .unwrap_or_else(|| "-".into());
            let fo = s
                .failover_ms
                .as_ref()
                .map(|x| format!("{:.0}", x.median))
                .unwrap_or_else(|| "-".into());
            let (med, p95, max) = fmt_stats(&s.reconverge_ms);
            let ratio = s
                .ratio_to_keepalived
                .map(|x| format!("{x:.2}"))
                .unwrap_or_else(|| "-".into());
            let _ = writeln!(
                m,
                "| {} | {} | {multi} | {}/{} | {fo} | {med} / {p95} / {max} | {ratio} | {}/{} | {}/{} |",
                s.system,
                s.n,
                s.trials_with_two_live_holders,
                s.n,
                s.arp_wrong_at_end,
                s.n,
                s.slow_reconverge,
                s.n
            );
        }
    }
    if !r.loss.is_empty() {
        let _ = writeln!(
            m,
            "\n## Lossy links: random UDP and VRRP loss on every lb node, {:.0} s per level\n",
            args.loss_secs
        );
        let _ = writeln!(
            m,
            "| system | loss % | held s | holder changes | time without a holder ms | time with two holders ms | failed probes / probes | longest outage ms | VIP adds/removals | packets dropped | holder at start -> end | error |"
        );
        let _ = writeln!(m, "|---|---|---|---|---|---|---|---|---|---|---|---|");
        let mut rows: Vec<&LossRun> = r.loss.iter().collect();
        rows.sort_by_key(|x| (x.loss_pct, x.system.clone()));
        for x in rows {
            let _ = writeln!(
                m,
                "| {} | {} | {:.0} | {} | {:.0} | {:.0} | {} / {} | {:.0} | {} | {} | {} -> {} | {} |",
                x.system,
                x.loss_pct,
                x.secs,
                x.holder_changes,
                x.no_holder_ms,
                x.two_holders_ms,
                x.probe_failures,
                x.probes,
                x.max_outage_ms,
                x.vip_events,
                x.dropped_packets,
                x.start_holder,
                if x.end_holders.is_empty() {
                    "none".to_string()
                } else {
                    x.end_holders.join("+")
                },
                x.error.as_deref().unwrap_or("-")
            );
        }
    }
    let _ = writeln!(m, "\n## Faults\n");
    for f in &args.faults {
        let _ = writeln!(m, "- `{}`: {}", f.as_str(), f.describe());
    }
    let _ = writeln!(
        m,
        "\nA killed process cannot remove its address: the killed node's kernel keeps the VIP (and answers ARP for it) until something removes it, so \"two live holders\" leaves the killed node out and the next column counts it. For `cut`, the observation (1 s default, 0.5 s fast) ends with the heal, which bounds a split brain there; `partition` shows its full length. Every probe of every trial is in `raw/`."
    );
    m
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::super::{Env, Fault};
    use super::*;

    #[test]
    fn loss_rows_in_the_report() {
        let r = Results {
            env: Env {
                date: "d".into(),
                kernel: "k".into(),
                cpus: 2,
                keepalived: "ka".into(),
                seed: 1,
                trials: 0,
                partition_trials: 0,
                partition_secs: 5.0,
                command: "c".into(),
            },
            systems: vec!["kubeha-default".into()],
            faults: vec!["loss".into()],
            skipped: BTreeMap::new(),
            trials: vec![],
            summary: vec![],
            loss: vec![LossRun {
                system: "kubeha-default".into(),
                loss_pct: 30,
                secs: 30.0,
                start_holder: "n1".into(),
                end_holders: vec!["n2".into()],
                holder_changes: 1,
                no_holder_ms: 120.0,
                probes: 3000,
                probe_failures: 12,
                ..Default::default()
            }],
            wall_secs: 1.0,
        };
        let args = BenchArgs {
            faults: vec![Fault::Loss],
            loss_secs: 30.0,
            ..Default::default()
        };
        let md = report(&r, &args);
        assert!(md.contains("## Lossy links"), "{md}");
        assert!(
            md.contains("| kubeha-default | 30 | 30 | 1 | 120 | 0 | 12 / 3000 |"),
            "{md}"
        );
        assert!(md.contains("- `loss`: nftables"), "{md}");
    }
}
