//! The joiner's side: connect to one joined control plane, pin its
//! certificate to the fingerprint gossip shows for its name, present our
//! own, ask once. Long work: run it as a job, never in the main loop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kubeha_core::join::{
    Fingerprint, JoinMaterial, JoinRequest, JoinResponse, PROTOCOL_VERSION, Tier, decode_response,
    encode_request,
};
use kubeha_core::membership::MembershipView;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::verify::PinnedServerVerifier;
use super::{Identity, JoinError, provider, read_frame, write_frame};

/// A join server as gossip shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinTarget {
    pub name: String,
    pub addr: SocketAddr,
    pub fingerprint: Fingerprint,
}

impl JoinTarget {
    /// `name`'s join endpoint from the member view: its gossip address's IP,
    /// `join_port` (the same on every node), its published fingerprint. It
    /// must be an alive, joined control plane.
    pub fn from_view(
        view: &MembershipView,
        name: &str,
        join_port: u16,
    ) -> Result<JoinTarget, JoinError> {
        let no = |reason: &str| JoinError::NoServer {
            server: name.to_string(),
            reason: reason.to_string(),
        };
        let m = view.get(name).ok_or_else(|| no("not a member"))?;
        if !kubeha_core::join::join_servers(view, "")
            .iter()
            .any(|s| s.name == name)
        {
            return Err(no(
                "not an alive, joined control plane with a published TLS fingerprint",
            ));
        }
        let fingerprint = m
            .tls_fingerprint
            .ok_or_else(|| no("publishes no TLS fingerprint"))?;
        Ok(JoinTarget {
            name: name.to_string(),
            addr: SocketAddr::new(m.addr.ip(), join_port),
            fingerprint,
        })
    }
}

/// Ask `target` for join material for node `node` at `tier`, presenting
/// `identity`. The whole exchange is bounded by `timeout`.
pub async fn fetch_join_material(
    identity: &Identity,
    target: &JoinTarget,
    node: &str,
    tier: Tier,
    timeout: Duration,
) -> Result<JoinMaterial, JoinError> {
    match tokio::time::timeout(timeout, exchange(identity, target, node, tier)).await {
        Ok(r) => r,
        Err(_) => Err(JoinError::Timeout {
            server: target.name.clone(),
            addr: target.addr,
            after: timeout,
        }),
    }
}

async fn exchange(
    identity: &Identity,
    target: &JoinTarget,
    node: &str,
    tier: Tier,
) -> Result<JoinMaterial, JoinError> {
    let server = target.name.clone();
    let addr = target.addr;
    let provider = provider();
    let verifier = Arc::new(PinnedServerVerifier::new(
        &target.name,
        target.fingerprint,
        provider.clone(),
    ));
    let config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| JoinError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(vec![identity.cert().clone()], identity.key())
        .map_err(|e| JoinError::Tls(e.to_string()))?;
    // The name only goes into SNI; trust comes from the pinned fingerprint.
    let sni = ServerName::try_from(target.name.clone()).map_err(|e| JoinError::NoServer {
        server: server.clone(),
        reason: format!("not usable as a TLS server name: {e}"),
    })?;
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|source| JoinError::Connect {
            server: server.clone(),
            addr,
            source,
        })?;
    let _ = tcp.set_nodelay(true);
    let mut tls = TlsConnector::from(Arc::new(config))
        .connect(sni, tcp)
        .await
        .map_err(|source| JoinError::Handshake {
            server: server.clone(),
            addr,
            source,
        })?;
    let io = |source: std::io::Error| JoinError::Io {
        server: server.clone(),
        addr,
        source,
    };
    let request = JoinRequest {
        version: PROTOCOL_VERSION,
        node: node.to_string(),
        tier,
    };
    write_frame(&mut tls, &encode_request(&request))
        .await
        .map_err(io)?;
    // In TLS 1.3 the server checks our certificate after we sent ours; a
    // refusal there shows up as an error on this read.
    let frame = read_frame(&mut tls).await.map_err(io)?;
    let response = decode_response(&frame).map_err(|e| JoinError::Protocol {
        server: server.clone(),
        addr,
        message: e.to_string(),
    })?;
    match response {
        JoinResponse::Refused(refusal) => Err(JoinError::Refused {
            server,
            addr,
            refusal,
        }),
        JoinResponse::Material(m) if tier == Tier::Worker && m.certificate_key.is_some() => {
            // A server bug; the key is dropped (and zeroed) unused.
            Err(JoinError::Protocol {
                server,
                addr,
                message: "sent a certificate key to a worker".into(),
            })
        }
        JoinResponse::Material(m) if tier == Tier::ControlPlane && m.certificate_key.is_none() => {
            Err(JoinError::Protocol {
                server,
                addr,
                message: "sent no certificate key to a control plane".into(),
            })
        }
        JoinResponse::Material(m) => Ok(m),
    }
}
