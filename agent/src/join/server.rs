//! The join-material server of a control plane: mutual TLS on
//! `advertise_addr:join_port`, at most `max_connections` at once, every
//! connection under a deadline, every refusal logged with the peer and the
//! reason (never a secret). Material is minted per join, one mint at a
//! time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kubeha_core::join::{
    Fingerprint, Grant, JoinResponse, Refusal, authorize, decode_request, encode_response,
};
use kubeha_core::membership::MembershipView;
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, Semaphore, watch};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use zeroize::Zeroizing;

use super::verify::MemberClientVerifier;
use super::{Identity, JoinError, JoinMaterialSource, provider, read_frame, write_frame};

#[derive(Clone, Debug)]
pub struct ServerLimits {
    /// Connections served at once; more are closed at accept and logged.
    pub max_connections: usize,
    /// TLS handshake deadline.
    pub handshake_timeout: Duration,
    /// Deadline for reading the request once the handshake is done.
    pub request_timeout: Duration,
    /// Deadline for minting and sending the answer (kubeadm runs here).
    pub mint_timeout: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_connections: 8,
            handshake_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            mint_timeout: Duration::from_secs(150),
        }
    }
}

pub struct JoinServer {
    listener: TcpListener,
    shared: Arc<Shared>,
}

struct Shared {
    node_name: String,
    acceptor: TlsAcceptor,
    members: watch::Receiver<MembershipView>,
    source: Arc<dyn JoinMaterialSource>,
    limits: ServerLimits,
    slots: Arc<Semaphore>,
    mint: Mutex<()>,
}

impl JoinServer {
    /// Bind `addr` (the node's `advertise_addr:join_port`). `members` is the
    /// agent's current member view; the server reads it at every handshake
    /// and request.
    pub async fn bind(
        addr: SocketAddr,
        node_name: &str,
        identity: &Identity,
        members: watch::Receiver<MembershipView>,
        source: Arc<dyn JoinMaterialSource>,
        limits: ServerLimits,
    ) -> Result<JoinServer, JoinError> {
        let provider = provider();
        let verifier = Arc::new(MemberClientVerifier::new(members.clone(), provider.clone()));
        let config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| JoinError::Tls(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![identity.cert().clone()], identity.key())
            .map_err(|e| JoinError::Tls(e.to_string()))?;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| JoinError::Bind { addr, source })?;
        Ok(JoinServer {
            listener,
            shared: Arc::new(Shared {
                node_name: node_name.to_string(),
                acceptor: TlsAcceptor::from(Arc::new(config)),
                members,
                source,
                slots: Arc::new(Semaphore::new(limits.max_connections)),
                limits,
                mint: Mutex::new(()),
            }),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serve until `shutdown` turns true (or its sender is dropped); then
    /// close the listener and abort the connections in flight.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut conns = JoinSet::new();
        tracing::info!(addr = %self.local_addr(), "join server listening");
        loop {
            tokio::select! {
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        break;
                    }
                }
                accepted = self.listener.accept() => {
                    let (tcp, peer) = match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            // EMFILE and the like: back off instead of spinning.
                            tracing::warn!(error = %e, "join server: accept failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    let Ok(permit) = self.shared.slots.clone().try_acquire_owned() else {
                        tracing::warn!(
                            peer = %peer,
                            reason = "too many connections",
                            limit = self.shared.limits.max_connections,
                            "join: refused"
                        );
                        drop(tcp);
                        continue;
                    };
                    let shared = self.shared.clone();
                    conns.spawn(async move {
                        shared.serve(tcp, peer).await;
                        drop(permit);
                    });
                }
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
        drop(self.listener);
        conns.shutdown().await;
    }
}

impl Shared {
    async fn serve(&self, tcp: TcpStream, peer: SocketAddr) {
        let _ = tcp.set_nodelay(true);
        let limits = &self.limits;
        let mut tls =
            match tokio::time::timeout(limits.handshake_timeout, self.acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::warn!(peer = %peer, reason = %e, "join: refused TLS handshake");
                    return;
                }
                Err(_) => {
                    tracing::warn!(peer = %peer, reason = "handshake timeout", "join: refused");
                    return;
                }
            };
        let Some(presented) = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| Fingerprint::of_der(c))
        else {
            // The verifier makes client certificates mandatory.
            tracing::warn!(peer = %peer, reason = "no client certificate", "join: refused");
            return;
        };
        let frame = match tokio::time::timeout(limits.request_timeout, read_frame(&mut tls)).await {
            Ok(Ok(f)) => f,
            Ok(Err(e)) => {
                tracing::warn!(peer = %peer, reason = %e, "join: refused: unreadable request");
                return;
            }
            Err(_) => {
                tracing::warn!(peer = %peer, reason = "request timeout", "join: refused");
                return;
            }
        };
        let request = match decode_request(&frame) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(peer = %peer, reason = %e, "join: refused: malformed request");
                return;
            }
        };
        let decision = authorize(
            &self.members.borrow(),
            &self.node_name,
            &presented,
            &request,
        );
        let answer = match decision {
            Err(refusal) => {
                tracing::warn!(
                    peer = %peer,
                    node = %request.node,
                    tier = %request.tier,
                    fingerprint = %presented,
                    reason = %refusal,
                    "join: refused"
                );
                JoinResponse::Refused(refusal)
            }
            Ok(grant) => {
                match tokio::time::timeout(limits.mint_timeout, self.mint(&request.node, grant))
                    .await
                {
                    Ok(Ok(material)) => {
                        tracing::info!(
                            peer = %peer,
                            node = %request.node,
                            tier = %request.tier,
                            certificate_key = material.certificate_key.is_some(),
                            "join: material handed out"
                        );
                        JoinResponse::Material(material)
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(peer = %peer, node = %request.node, error = %e, "join: minting failed");
                        JoinResponse::Refused(Refusal::MintFailed)
                    }
                    Err(_) => {
                        tracing::warn!(peer = %peer, node = %request.node, after = ?limits.mint_timeout, "join: minting timed out");
                        JoinResponse::Refused(Refusal::MintFailed)
                    }
                }
            }
        };
        let bytes = Zeroizing::new(encode_response(&answer));
        drop(answer);
        let send = async {
            write_frame(&mut tls, &bytes).await?;
            tokio::io::AsyncWriteExt::shutdown(&mut tls).await
        };
        match tokio::time::timeout(limits.request_timeout, send).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(peer = %peer, error = %e, "join: answer not delivered"),
            Err(_) => tracing::warn!(peer = %peer, "join: answer not delivered in time"),
        }
    }

    /// One mint at a time: kubeadm's uploaded certificates are one Secret,
    /// and a new upload makes earlier certificate keys useless.
    async fn mint(
        &self,
        node: &str,
        grant: Grant,
    ) -> Result<kubeha_core::join::JoinMaterial, super::SourceError> {
        let _one = self.mint.lock().await;
        let mut material = self.source.mint(node, grant).await?;
        if grant == Grant::Worker {
            // Never a certificate key to a worker, whatever the source did.
            material.certificate_key = None;
        }
        Ok(material)
    }
}
