//! Certificate checks by pinned fingerprint, no WebPKI: the certificates
//! are self-signed and trusted only because tier-authenticated gossip
//! publishes their SHA-256 under the owner's name.
//!
//! - [`MemberClientVerifier`] (server side): a client certificate is
//!   accepted only if some alive member in the current view publishes its
//!   fingerprint; anyone else fails the handshake and gets nothing.
//! - [`PinnedServerVerifier`] (client side): the server's certificate must
//!   have exactly the fingerprint gossip shows for the server's name.
//!
//! Both still check the handshake signatures (proof of the private key).

use std::sync::Arc;

use kubeha_core::join::{Fingerprint, fingerprint_known};
use kubeha_core::membership::MembershipView;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme,
};
use tokio::sync::watch;

/// Why a certificate was refused; becomes the handshake error's text.
#[derive(thiserror::Error)]
pub enum PinError {
    #[error("client certificate {0} is not published by any alive member")]
    UnknownClient(Fingerprint),
    #[error("server `{server}` presented certificate {presented}, gossip shows {expected}")]
    ServerMismatch {
        server: String,
        expected: Fingerprint,
        presented: Fingerprint,
    },
}

// rustls shows an `OtherError` through `Debug`: make that the sentence.
impl std::fmt::Debug for PinError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

fn refuse(e: PinError) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
}

#[derive(Debug)]
pub struct MemberClientVerifier {
    members: watch::Receiver<MembershipView>,
    provider: Arc<CryptoProvider>,
}

impl MemberClientVerifier {
    pub fn new(members: watch::Receiver<MembershipView>, provider: Arc<CryptoProvider>) -> Self {
        MemberClientVerifier { members, provider }
    }
}

impl ClientCertVerifier for MemberClientVerifier {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let fp = Fingerprint::of_der(end_entity);
        if fingerprint_known(&self.members.borrow(), &fp) {
            Ok(ClientCertVerified::assertion())
        } else {
            Err(refuse(PinError::UnknownClient(fp)))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[derive(Debug)]
pub struct PinnedServerVerifier {
    server: String,
    expected: Fingerprint,
    provider: Arc<CryptoProvider>,
}

impl PinnedServerVerifier {
    pub fn new(server: &str, expected: Fingerprint, provider: Arc<CryptoProvider>) -> Self {
        PinnedServerVerifier {
            server: server.to_string(),
            expected,
            provider,
        }
    }
}

impl ServerCertVerifier for PinnedServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let presented = Fingerprint::of_der(end_entity);
        if presented == self.expected {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(refuse(PinError::ServerMismatch {
                server: self.server.clone(),
                expected: self.expected,
                presented,
            }))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
