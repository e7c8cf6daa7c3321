//! Server and client together on 127.0.0.1: handshakes, refusals, tiers,
//! the connection bound, and logs free of secrets.

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use kubeha_core::join::{Grant, Refusal};
use kubeha_core::membership::{MemberInfo, MembershipView, keys};
use tokio::sync::{Semaphore, mpsc, watch};
use tracing_subscriber::fmt::MakeWriter;

use super::*;

const TOKEN: &str = "abcdef.0123456789abcdef";
const KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
const HASH: &str = "sha256:5e5b0f4f3b8fd1a4bd1c64c2c2d1c0d4e3f0a7d6d5b8f1e2c3d4a5b6c7d8e9f0";

// ------------------------------------------------------------- log capture

#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Logs {
    type Writer = Logs;
    fn make_writer(&'a self) -> Logs {
        self.clone()
    }
}

impl Logs {
    /// Capture every event of this thread (a current-thread runtime runs
    /// all its tasks here) at TRACE.
    fn capture() -> (Logs, tracing::subscriber::DefaultGuard) {
        let logs = Logs::default();
        let sub = tracing_subscriber::fmt()
            .with_writer(logs.clone())
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .finish();
        (logs.clone(), tracing::subscriber::set_default(sub))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    async fn wait_for(&self, needle: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !self.text().contains(needle) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no `{needle}` in the logs:\n{}",
                self.text()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

// ------------------------------------------------------------ fake source

#[derive(Default)]
struct FakeSource {
    calls: AtomicUsize,
    /// Misbehave: a certificate key whatever the grant.
    always_key: bool,
    /// Report each mint start, then wait for a permit.
    gate: Option<(mpsc::UnboundedSender<()>, Arc<Semaphore>)>,
}

#[async_trait]
impl JoinMaterialSource for FakeSource {
    async fn mint(&self, _node: &str, grant: Grant) -> Result<JoinMaterial, SourceError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if let Some((started, permits)) = &self.gate {
            let _ = started.send(());
            permits.acquire().await.unwrap().forget();
        }
        Ok(JoinMaterial {
            endpoint: "k8s-api:6443".into(),
            token: Secret::new(TOKEN),
            ca_cert_hash: HASH.into(),
            certificate_key: (self.always_key || grant == Grant::ControlPlane)
                .then(|| Secret::new(KEY)),
        })
    }
}

// ----------------------------------------------------------------- cluster

struct Cluster {
    server_id: Identity,
    cp1: Identity,
    w0: Identity,
    outsider: Identity,
    source: Arc<FakeSource>,
    target: JoinTarget,
    _stop: watch::Sender<bool>,
    members: watch::Sender<MembershipView>,
}

/// A member as gossip shows it, publishing `id` the way an agent does.
fn member(name: &str, roles: &str, kube: &str, id: &Identity) -> MemberInfo {
    let (k, v) = published_fingerprint(id);
    MemberInfo::from_kv(
        name,
        1,
        "127.0.0.1:7946".parse().unwrap(),
        true,
        [
            (keys::ROLES, roles),
            (keys::KUBE, kube),
            (k.as_str(), v.as_str()),
        ],
    )
}

async fn cluster(source: FakeSource, limits: ServerLimits) -> Cluster {
    let id = |n: &str| Identity::generate(n).unwrap().0;
    let (server_id, cp1, w0, outsider) = (id("cp-0"), id("cp-1"), id("w-0"), id("w-9"));
    let view = MembershipView::from_incarnations([
        member("cp-0", "control-plane,lb", "control-plane", &server_id),
        member("cp-1", "control-plane", "none", &cp1),
        member("w-0", "worker", "none", &w0),
    ]);
    let (members_tx, members) = watch::channel(view);
    let source = Arc::new(source);
    let server = JoinServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        "cp-0",
        &server_id,
        members,
        source.clone(),
        limits,
    )
    .await
    .unwrap();
    let target = JoinTarget {
        name: "cp-0".into(),
        addr: server.local_addr(),
        fingerprint: server_id.fingerprint(),
    };
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(server.run(stopped));
    Cluster {
        server_id,
        cp1,
        w0,
        outsider,
        source,
        target,
        _stop: stop,
        members: members_tx,
    }
}

const T: Duration = Duration::from_secs(10);

// ------------------------------------------------------------------- tests

#[tokio::test]
async fn matching_fingerprints_get_material_by_tier() {
    let c = cluster(FakeSource::default(), ServerLimits::default()).await;
    let m = fetch_join_material(&c.w0, &c.target, "w-0", Tier::Worker, T)
        .await
        .unwrap();
    assert_eq!(m.endpoint, "k8s-api:6443");
    assert_eq!(m.token.expose(), TOKEN);
    assert_eq!(m.ca_cert_hash, HASH);
    assert!(m.certificate_key.is_none());

    let m = fetch_join_material(&c.cp1, &c.target, "cp-1", Tier::ControlPlane, T)
        .await
        .unwrap();
    assert_eq!(m.certificate_key.as_ref().map(Secret::expose), Some(KEY));
    assert_eq!(c.source.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn target_comes_from_the_member_view() {
    let c = cluster(FakeSource::default(), ServerLimits::default()).await;
    let view = MembershipView::from_incarnations([
        member("cp-0", "control-plane", "control-plane", &c.server_id),
        member("cp-1", "control-plane", "none", &c.cp1),
    ]);
    let t = JoinTarget::from_view(&view, "cp-0", c.target.addr.port()).unwrap();
    assert_eq!(t, c.target);
    let e = JoinTarget::from_view(&view, "cp-1", 7947).unwrap_err();
    assert!(e.to_string().contains("joined control plane"), "{e}");
    assert!(JoinTarget::from_view(&view, "ghost", 7947).is_err());
}

#[tokio::test]
async fn unknown_client_certificate_fails_the_handshake() {
    let (logs, _g) = Logs::capture();
    let c = cluster(FakeSource::default(), ServerLimits::default()).await;
    // A certificate no member publishes, claiming a member's name.
    let e = fetch_join_material(&c.outsider, &c.target, "w-0", Tier::Worker, T)
        .await
        .unwrap_err();
    assert!(
        matches!(e, JoinError::Io { .. } | JoinError::Handshake { .. }),
        "the TLS layer refuses, no answer: {e}"
    );
    logs.wait_for("not published by any alive member").await;
    let text = logs.text();
    assert!(text.contains("join: refused TLS handshake"), "{text}");
    assert!(text.contains("peer=127.0.0.1:"), "{text}");
    assert_eq!(c.source.calls.load(Ordering::SeqCst), 0, "nothing minted");
}

#[tokio::test]
async fn another_members_certificate_cannot_speak_for_it() {
    let (logs, _g) = Logs::capture();
    let c = cluster(FakeSource::default(), ServerLimits::default()).await;
    // w-0's (published) certificate, cp-1's name.
    let e = fetch_join_material(&c.w0, &c.target, "cp-1", Tier::ControlPlane, T)
        .await
        .unwrap_err();
    let JoinError::Refused { refusal, .. } = &e else {
        panic!("{e}")
    };
    assert!(
        matches!(refusal, Refusal::FingerprintMismatch { node, .. } if node == "cp-1"),
        "{refusal}"
    );
    logs.wait_for("join: refused").await;
    assert!(logs.text().contains("node=cp-1"), "{}", logs.text());
    assert_eq!(c.source.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn client_refuses_a_server_whose_fingerprint_differs_from_gossip() {
    let c = cluster(FakeSource::default(), ServerLimits::default()).await;
    let mut wrong = c.target.clone();
    wrong.fingerprint = c.cp1.fingerprint();
    let e = fetch_join_material(&c.w0, &wrong, "w-0", Tier::Worker, T)
        .await
        .unwrap_err();
    let JoinError::Handshake { source, .. } = &e else {
        panic!("{e}")
    };
    assert!(source.to_string().contains("gossip shows"), "{e}");
    assert_eq!(c.source.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_worker_never_receives_a_certificate_key() {
    // Even from a source that hands one out.
    let c = cluster(
        FakeSource {
            always_key: true,
            ..FakeSource::default()
        },
        ServerLimits::default(),
    )
    .await;
    let m = fetch_join_material(&c.w0, &c.target, "w-0", Tier::Worker, T)
        .await
        .unwrap();
    assert!(m.certificate_key.is_none());
    assert_eq!(m.token.expose(), TOKEN);
    // Asking for more than gossip shows it is: refused, nothing minted.
    let calls = c.source.calls.load(Ordering::SeqCst);
    let e = fetch_join_material(&c.w0, &c.target, "w-0", Tier::ControlPlane, T)
        .await
        .unwrap_err();
    assert!(
        matches!(
            &e,
            JoinError::Refused {
                refusal: Refusal::RoleNotClaimed { .. },
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(c.source.calls.load(Ordering::SeqCst), calls);
}

#[tokio::test]
async fn connections_beyond_the_bound_are_closed_and_logged() {
    let (logs, _g) = Logs::capture();
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let permits = Arc::new(Semaphore::new(0));
    let c = cluster(
        FakeSource {
            gate: Some((started_tx, permits.clone())),
            ..FakeSource::default()
        },
        ServerLimits {
            max_connections: 1,
            ..ServerLimits::default()
        },
    )
    .await;
    let c = Arc::new(c);
    let first = {
        let c = c.clone();
        tokio::spawn(
            async move { fetch_join_material(&c.w0, &c.target, "w-0", Tier::Worker, T).await },
        )
    };
    // The first connection holds the only slot, inside the mint.
    started.recv().await.unwrap();
    let e = fetch_join_material(&c.cp1, &c.target, "cp-1", Tier::ControlPlane, T)
        .await
        .unwrap_err();
    assert!(
        matches!(e, JoinError::Handshake { .. } | JoinError::Io { .. }),
        "{e}"
    );
    logs.wait_for("too many connections").await;
    permits.add_permits(1);
    let m = first.await.unwrap().unwrap();
    assert_eq!(m.token.expose(), TOKEN);
    // The slot is free again.
    permits.add_permits(1);
    let m = fetch_join_material(&c.cp1, &c.target, "cp-1", Tier::ControlPlane, T)
        .await
        .unwrap();
    assert!(m.certificate_key.is_some());
    assert_eq!(c.source.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_silent_connection_is_dropped_after_the_handshake_timeout() {
    let (logs, _g) = Logs::capture();
    let c = cluster(
        FakeSource::default(),
        ServerLimits {
            max_connections: 1,
            handshake_timeout: Duration::from_millis(200),
            ..ServerLimits::default()
        },
    )
    .await;
    // Takes the only slot and says nothing.
    let _idle = tokio::net::TcpStream::connect(c.target.addr).await.unwrap();
    logs.wait_for("handshake timeout").await;
    let m = fetch_join_material(&c.w0, &c.target, "w-0", Tier::Worker, T)
        .await
        .unwrap();
    assert!(m.certificate_key.is_none());
}

#[tokio::test]
async fn no_secret_in_the_logs_of_a_full_exchange() {
    let (logs, _g) = Logs::capture();
    let c = cluster(FakeSource::default(), ServerLimits::default()).await;
    let m = fetch_join_material(&c.cp1, &c.target, "cp-1", Tier::ControlPlane, T)
        .await
        .unwrap();
    // Whatever a caller might log about the result.
    tracing::info!(material = ?m, "joined with");
    let _ = fetch_join_material(&c.w0, &c.target, "cp-1", Tier::ControlPlane, T).await;
    let _ = fetch_join_material(&c.outsider, &c.target, "w-0", Tier::Worker, T).await;
    logs.wait_for("not published by any alive member").await;
    let text = logs.text();
    assert!(text.contains("join: material handed out"), "{text}");
    assert!(text.contains("join: refused"), "{text}");
    for secret in [TOKEN, KEY, "0123456789abcdef", "00112233445566778899"] {
        assert!(!text.contains(secret), "`{secret}` in the logs:\n{text}");
    }
}

#[tokio::test]
async fn the_server_follows_the_live_member_view() {
    let c = cluster(FakeSource::default(), ServerLimits::default()).await;
    fetch_join_material(&c.w0, &c.target, "w-0", Tier::Worker, T)
        .await
        .unwrap();
    // w-0 restarts with a new identity: gossip now shows the new one.
    let (w0_new, _) = Identity::generate("w-0").unwrap();
    c.members.send_modify(|v| {
        *v = MembershipView::from_incarnations([
            member("cp-0", "control-plane", "control-plane", &c.server_id),
            member("w-0", "worker", "none", &w0_new),
        ])
    });
    let e = fetch_join_material(&c.w0, &c.target, "w-0", Tier::Worker, T)
        .await
        .unwrap_err();
    assert!(
        matches!(e, JoinError::Io { .. } | JoinError::Handshake { .. }),
        "the old certificate is unknown now: {e}"
    );
    fetch_join_material(&w0_new, &c.target, "w-0", Tier::Worker, T)
        .await
        .unwrap();
}

#[tokio::test]
async fn full_exchange_with_the_kubeadm_source_logs_no_secret() {
    let (logs, _g) = Logs::capture();
    let fake = super::source::tests::fake_kubeadm(None);
    let id = |n: &str| Identity::generate(n).unwrap().0;
    let (server_id, cp1, w0) = (id("cp-0"), id("cp-1"), id("w-0"));
    let (_tx, members) = watch::channel(MembershipView::from_incarnations([
        member("cp-0", "control-plane", "control-plane", &server_id),
        member("cp-1", "control-plane", "none", &cp1),
        member("w-0", "worker", "none", &w0),
    ]));
    let server = JoinServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        "cp-0",
        &server_id,
        members,
        Arc::new(fake.source.clone()),
        ServerLimits::default(),
    )
    .await
    .unwrap();
    let target = JoinTarget {
        name: "cp-0".into(),
        addr: server.local_addr(),
        fingerprint: server_id.fingerprint(),
    };
    let (_stop, stopped) = watch::channel(false);
    tokio::spawn(server.run(stopped));

    let m = fetch_join_material(&cp1, &target, "cp-1", Tier::ControlPlane, T)
        .await
        .unwrap();
    let key = super::source::tests::KEY;
    let token = super::source::tests::TOKEN;
    assert_eq!(m.certificate_key.as_ref().map(Secret::expose), Some(key));
    assert_eq!(m.token.expose(), token);
    assert_eq!(m.endpoint, "10.0.0.10:6443");
    let w = fetch_join_material(&w0, &target, "w-0", Tier::Worker, T)
        .await
        .unwrap();
    assert!(w.certificate_key.is_none());
    let calls = fake.read("calls");
    assert_eq!(
        calls.matches("init phase upload-certs").count(),
        1,
        "certificates uploaded for the control plane only: {calls}"
    );
    assert_eq!(calls.matches("token create").count(), 2, "{calls}");
    logs.wait_for("node=w-0").await;
    let text = logs.text();
    assert!(!text.contains(key) && !text.contains(token), "{text}");
}
