//! The `digitalocean` VIP provider against the local stand-in
//! (`kubeha_tests::do_standin`): HTTPS on loopback with a CA of its own,
//! plain-HTTP metadata, injected failures. Nothing leaves the host.

use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kubeha_tests::do_standin::{DoStandin, Fault, Route, StandinOptions};
use kubeha_vip::VipProvider;
use kubeha_vip::digitalocean::policy::{State, Timing};
use kubeha_vip::digitalocean::{ApiObserver, DoVip, DoVipOptions};

const TOKEN: &str = "dop_v1_standin_secret_0123456789";
const IP: &str = "203.0.113.7";

struct Env {
    dir: tempfile::TempDir,
    standin: DoStandin,
}

fn env(droplets: &[u64], latency: Duration) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let standin = DoStandin::start(StandinOptions {
        token: TOKEN.into(),
        reserved_ip: IP.parse().unwrap(),
        droplets: droplets
            .iter()
            .map(|&d| (d, format!("10.20.0.{}", d % 250).parse().unwrap()))
            .collect(),
        action_latency: latency,
        dir: dir.path().join("standin"),
    })
    .unwrap();
    Env { dir, standin }
}

#[derive(Default)]
struct Calls(Mutex<Vec<(&'static str, &'static str)>>);

impl ApiObserver for Calls {
    fn observe(&self, call: &'static str, outcome: &'static str, _latency: Duration) {
        self.0.lock().unwrap().push((call, outcome));
    }
}

impl Env {
    fn token_file(&self, token: &str) -> PathBuf {
        let p = self.dir.path().join(format!("token-{}", token.len()));
        std::fs::write(&p, format!("{token}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        p
    }

    fn options(&self, droplet: u64, token_file: &Path) -> DoVipOptions {
        DoVipOptions {
            reserved_ip: IP.parse().unwrap(),
            token_file: token_file.to_path_buf(),
            api_url: self.standin.api_url(),
            metadata_url: self.standin.metadata_url(droplet),
            ca_file: Some(self.standin.ca_file().to_path_buf()),
            call_timeout: Duration::from_millis(800),
            timing: Timing {
                poll_interval: Duration::from_millis(100),
                action_timeout: Duration::from_secs(30),
            },
            observer: None,
        }
    }

    fn provider(&self, droplet: u64) -> DoVip {
        let t = self.token_file(TOKEN);
        DoVip::new(self.options(droplet, &t)).unwrap()
    }
}

/// Polls `f` every 20 ms until it holds; panics with `what` after `timeout`.
async fn until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn do_acquire_returns_at_once_and_the_assignment_completes_in_background() {
    let e = env(&[101, 102], Duration::from_millis(1500));
    e.standin.set_assigned(Some(102));
    let calls = Arc::new(Calls::default());
    let t = e.token_file(TOKEN);
    let mut o = e.options(101, &t);
    o.observer = Some(calls.clone());
    let p = DoVip::new(o).unwrap();

    assert_eq!(p.status().state, State::Idle);
    let change = p.acquire().await.unwrap();
    assert!(change.is_changed());
    // acquire did not wait for the 1.5 s action: the cloud has not moved yet.
    assert_eq!(e.standin.assigned_to(), Some(102));
    assert!(!p.is_held().await.unwrap());
    until(Duration::from_secs(5), "an action in progress", || {
        p.status()
            .last_action
            .is_some_and(|(a, _)| a.status.as_str() == "in-progress")
    })
    .await;
    assert_eq!(p.status().state, State::Pending);
    until(Duration::from_secs(10), "assigned", || {
        p.status().state == State::Assigned
    })
    .await;
    assert_eq!(e.standin.assigned_to(), Some(101));
    assert!(p.is_held().await.unwrap());
    let st = p.provider_status().unwrap();
    assert_eq!(st.state, "assigned");
    assert_eq!(st.droplet_id, Some(101));
    assert_eq!(st.assigned_to, Some(101));
    assert_eq!(st.reason, None);
    let a = st.last_action.clone().unwrap();
    assert_eq!(a.status, "completed");
    // A second acquire while held changes nothing and starts no action.
    assert!(!p.acquire().await.unwrap().is_changed());
    assert_eq!(e.standin.assign_actions().len(), 1);

    // Every API call carried the token; none of our outputs does.
    for s in e.standin.seen() {
        if s.path.starts_with("/v2/") {
            assert!(s.authorized, "{s:?}");
        }
    }
    let json = serde_json::to_string(&st).unwrap();
    for text in [
        json,
        format!("{p:?}"),
        p.describe(),
        format!("{:?}", p.status()),
    ] {
        assert!(!text.contains(TOKEN), "token leaked into {text}");
    }
    let calls = calls.0.lock().unwrap().clone();
    assert!(calls.contains(&("metadata", "ok")), "{calls:?}");
    assert!(calls.contains(&("get_reserved_ip", "ok")), "{calls:?}");
    assert!(calls.contains(&("assign", "ok")), "{calls:?}");
    assert!(calls.contains(&("get_action", "ok")), "{calls:?}");

    // Release: nothing to remove, the IP stays until the next assignment.
    assert!(p.release().await.unwrap().is_changed());
    assert_eq!(p.status().state, State::Idle);
    assert_eq!(e.standin.assigned_to(), Some(101));
    assert!(!p.is_held().await.unwrap());
    // Re-acquiring finds it still here: no new action.
    p.acquire().await.unwrap();
    until(Duration::from_secs(5), "assigned again", || {
        p.status().state == State::Assigned
    })
    .await;
    assert_eq!(e.standin.assign_actions().len(), 1);
}

#[tokio::test]
async fn do_ordered_failovers_end_on_the_last_assignee() {
    // Three lb droplets; each failover comes while the previous holder's
    // action is still in progress (1 s), so the next assign gets 422
    // "pending event" and retries until the IP is free.
    let e = env(&[101, 102, 103], Duration::from_secs(1));
    let p: Vec<DoVip> = [101, 102, 103].iter().map(|&d| e.provider(d)).collect();

    p[0].acquire().await.unwrap();
    until(Duration::from_secs(5), "p0's action started", || {
        e.standin.assign_actions().len() == 1
    })
    .await;
    // Failover to p1 while p0's action is in progress.
    p[0].release().await.unwrap();
    p[1].acquire().await.unwrap();
    until(Duration::from_secs(5), "p1 told the IP is busy", || {
        e.standin.seen().iter().any(|s| s.status == 422)
    })
    .await;
    let why = p[1].status().reason.unwrap();
    assert!(
        why.contains("HTTP 422") && why.contains("pending event"),
        "{why}"
    );
    assert_eq!(p[1].status().state, State::Pending);
    // p0's action completes: the IP is on 101 for a moment.
    until(Duration::from_secs(5), "101 assigned", || {
        e.standin.history() == vec![101]
    })
    .await;
    // Then p1's retry (3 s) starts its own action; failover to p2 while it runs.
    until(Duration::from_secs(10), "p1's action started", || {
        e.standin.assign_actions().len() == 2
    })
    .await;
    p[1].release().await.unwrap();
    p[2].acquire().await.unwrap();
    until(Duration::from_secs(20), "p2 assigned", || {
        p[2].status().state == State::Assigned
    })
    .await;
    assert_eq!(e.standin.assigned_to(), Some(103));
    let h = e.standin.history();
    assert_eq!(h.last(), Some(&103), "{h:?}");
    // p1's action, started before it lost the lease, completed before p2's
    // could start (the stand-in allows one action at a time), so it never
    // overrides the last assignee.
    assert_eq!(h, vec![101, 102, 103]);
    // The released providers report idle and do not hold it.
    for q in &p[..2] {
        assert_eq!(q.status().state, State::Idle);
        assert!(!q.is_held().await.unwrap());
    }
    // Nothing goes on in the background after release: no new actions.
    let n = e.standin.assign_actions().len();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(e.standin.assign_actions().len(), n);
}

#[tokio::test]
async fn do_server_errors_rate_limits_and_timeouts_are_retried() {
    let e = env(&[101], Duration::ZERO);
    e.standin.inject(Fault::Status {
        route: Route::Assign,
        status: 503,
        retry_after: None,
    });
    e.standin.inject(Fault::Status {
        route: Route::Assign,
        status: 429,
        retry_after: Some(1),
    });
    e.standin.inject(Fault::ErrorNextAction);
    // The answer to this assign is lost (the client times out), but the
    // action happens: the provider must find the IP already its own.
    e.standin.inject(Fault::Stall {
        route: Route::Assign,
        delay: Duration::from_secs(2),
    });
    let p = e.provider(101);
    let start = Instant::now();
    p.acquire().await.unwrap();
    let mut reasons = Vec::new();
    until(Duration::from_secs(40), "assigned after the faults", || {
        let st = p.status();
        if let Some(r) = st.reason
            && reasons.last() != Some(&r)
        {
            reasons.push(r);
        }
        st.state == State::Assigned
    })
    .await;
    assert_eq!(e.standin.faults_left(), 0);
    assert_eq!(e.standin.assigned_to(), Some(101));
    let all = reasons.join("\n");
    assert!(all.contains("HTTP 503"), "{all}");
    assert!(all.contains("HTTP 429"), "{all}");
    assert!(all.contains("timed out"), "{all}");
    assert!(all.contains("errored"), "{all}");
    // 503 (then 1 s), 429 with retry-after 1 (1 s), errored (4 s), timeout
    // (0.8 s, then 8 s): the back-off was followed.
    assert!(
        start.elapsed() >= Duration::from_secs(14),
        "{:?}",
        start.elapsed()
    );
    // Two actions: the errored one and the one whose answer was lost; the
    // re-check found the IP assigned, so no third.
    let actions = e.standin.assign_actions();
    assert_eq!(actions.len(), 2, "{actions:?}");
    assert_eq!(actions[0].2, "errored");
    assert_eq!(actions[1].2, "completed");
    assert!(!all.contains(TOKEN));
}

#[tokio::test]
async fn do_unauthorized_and_unknown_ip_fail_with_a_clear_reason() {
    let e = env(&[101], Duration::ZERO);
    let wrong = e.token_file("dop_v1_wrong_token");
    let p = DoVip::new(e.options(101, &wrong)).unwrap();
    p.acquire().await.unwrap();
    until(Duration::from_secs(5), "failed", || {
        p.status().state == State::Failed
    })
    .await;
    let why = p.status().reason.unwrap();
    assert!(
        why.contains("get_reserved_ip") && why.contains("HTTP 401 unauthorized"),
        "{why}"
    );
    assert!(why.contains("check the token"), "{why}");
    assert!(!why.contains("dop_v1_wrong_token") && !why.contains(TOKEN));
    assert!(!p.is_held().await.unwrap());
    assert_eq!(e.standin.assigned_to(), None);
    // Release of a failed assignment is fine.
    p.release().await.unwrap();

    // A Reserved IP this account does not have.
    let t = e.token_file(TOKEN);
    let mut o = e.options(101, &t);
    o.reserved_ip = "203.0.113.99".parse::<IpAddr>().unwrap();
    let p = DoVip::new(o).unwrap();
    p.acquire().await.unwrap();
    until(Duration::from_secs(5), "failed", || {
        p.status().state == State::Failed
    })
    .await;
    let why = p.status().reason.unwrap();
    assert!(why.contains("HTTP 404 not_found"), "{why}");
    assert!(why.contains("203.0.113.99"), "{why}");
}

#[tokio::test]
async fn do_metadata_down_is_pending_with_a_reason_then_recovers() {
    let e = env(&[101], Duration::ZERO);
    e.standin.set_metadata_down(true);
    let p = e.provider(101);
    p.acquire().await.unwrap();
    until(Duration::from_secs(5), "a metadata failure", || {
        p.status().reason.is_some()
    })
    .await;
    let st = p.status();
    assert_eq!(st.state, State::Pending);
    assert!(st.reason.as_deref().unwrap().contains("metadata"), "{st:?}");
    assert_eq!(st.droplet_id, None);
    e.standin.set_metadata_down(false);
    until(Duration::from_secs(10), "assigned", || {
        p.status().state == State::Assigned
    })
    .await;
    assert_eq!(p.status().droplet_id, Some(101));
    assert_eq!(p.anchor_ipv4().await.unwrap().to_string(), "10.20.0.101");
}

#[tokio::test]
async fn do_token_file_readable_by_others_is_refused() {
    let e = env(&[101], Duration::ZERO);
    let t = e.token_file(TOKEN);
    std::fs::set_permissions(&t, std::fs::Permissions::from_mode(0o644)).unwrap();
    let p = DoVip::new(e.options(101, &t)).unwrap();
    let err = p.acquire().await.unwrap_err().to_string();
    assert!(
        err.contains("mode 644") && err.contains(&t.display().to_string()),
        "{err}"
    );
    assert!(!err.contains(TOKEN));
    assert!(e.standin.seen().is_empty(), "no call without a safe token");
}

#[tokio::test]
async fn do_from_config_uses_the_configured_urls() {
    let e = env(&[101], Duration::ZERO);
    let t = e.token_file(TOKEN);
    let text = format!(
        r#"
cluster = "lab"
node_name = "lb-0"
roles = ["lb"]
advertise_addr = "10.108.0.3"
voters = ["cp-0", "cp-1", "cp-2"]

[vip]
provider = "digitalocean"
token_file = "{}"
reserved_ip = "{IP}"
api_url = "{}"
metadata_url = "{}"
api_ca_file = "{}"
"#,
        t.display(),
        e.standin.api_url(),
        e.standin.metadata_url(101),
        e.standin.ca_file().display()
    );
    let c = kubeha_core::config::Config::parse(Path::new("/etc/kubeha/kubeha.toml"), &text, "h")
        .unwrap();
    let p =
        kubeha_vip::from_config(c.vip.as_ref().unwrap(), kubeha_vip::Announce::default()).unwrap();
    assert_eq!(p.describe(), format!("digitalocean reserved IP {IP}"));
    p.acquire().await.unwrap();
    until(Duration::from_secs(5), "assigned", || {
        p.provider_status().is_some_and(|s| s.state == "assigned")
    })
    .await;
    assert_eq!(e.standin.assigned_to(), Some(101));
}
