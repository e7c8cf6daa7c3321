//! Role proofs: who may claim the control tier's roles in gossip.
//!
//! A node with role `control-plane` or `lb` publishes, beside its roles, a
//! `proof` key: an Ed25519 signature over (cluster, name, generation, gossip
//! address, [`subject`]). The signing key is derived from the control key
//! (HKDF, purpose `kubeha/v2 role signing key`), so every holder of the
//! control key signs with the same key and can verify; its public half
//! ([`ProofKey`], `kubeha-ctl keygen --public-of FILE`) lets nodes without the
//! control key (workers, `control_public_keys`) verify without being able to
//! sign. Generation and address are chitchat's node id, which no other node
//! can change; the roles never change within a generation.

use std::fmt;
use std::net::SocketAddr;

use base64::Engine as _;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use zeroize::Zeroize;

use crate::frame::{Key, Keyring};

/// How a [`ProofKey`] is written in config files and by `kubeha-ctl`.
pub const PUBLIC_PREFIX: &str = "ed25519:";

const SIGNING_PURPOSE: &[u8] = b"kubeha/v2 role signing key";
const MESSAGE_TAG: &[u8] = b"kubeha/v2 role proof";

/// A key that verifies role proofs: the public half of a control key's
/// signing pair. Not a secret.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProofKey([u8; 32]);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProofKeyError {
    #[error("a control public key starts with `{PUBLIC_PREFIX}`")]
    Prefix,
    #[error("a control public key is {PUBLIC_PREFIX} and 32 bytes of base64: {0}")]
    Encoding(String),
}

impl ProofKey {
    /// The verification key of `control`.
    pub fn of(control: &Key) -> ProofKey {
        let pair = signer(control);
        let mut k = [0u8; 32];
        k.copy_from_slice(pair.public_key().as_ref());
        ProofKey(k)
    }

    /// The verification keys of every key of a ring, primary first.
    pub fn of_ring(ring: &Keyring) -> Vec<ProofKey> {
        ring.keys().iter().map(ProofKey::of).collect()
    }

    /// `ed25519:<base64 of 32 bytes>`.
    pub fn parse(text: &str) -> Result<ProofKey, ProofKeyError> {
        let b64 = text
            .trim()
            .strip_prefix(PUBLIC_PREFIX)
            .ok_or(ProofKeyError::Prefix)?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| ProofKeyError::Encoding(e.to_string()))?;
        let k: [u8; 32] = bytes
            .try_into()
            .map_err(|b: Vec<u8>| ProofKeyError::Encoding(format!("{} bytes", b.len())))?;
        Ok(ProofKey(k))
    }
}

impl fmt::Display for ProofKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{PUBLIC_PREFIX}{}",
            base64::engine::general_purpose::STANDARD.encode(self.0)
        )
    }
}

impl fmt::Debug for ProofKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ProofKey({self})")
    }
}

fn signer(control: &Key) -> Ed25519KeyPair {
    let mut seed = control.derive(SIGNING_PURPOSE);
    let pair = Ed25519KeyPair::from_seed_unchecked(&seed);
    seed.zeroize();
    pair.expect("any 32 bytes are an Ed25519 seed")
}

/// What a role proof covers besides the node's identity: the `roles` value
/// as published and, where the node publishes one, its join-channel TLS
/// fingerprint (`tls_fp`). Any gossip member can relay (and so forge) another
/// node's keys; a `tls_fp` forged for a control plane therefore breaks that
/// node's proof, its control-tier roles are dropped, and no join server hands
/// control-plane material to the forger (docs/join.md).
pub fn subject(roles: &str, tls_fp: Option<&str>) -> String {
    match tls_fp {
        Some(fp) => format!("{roles}\ntls_fp={fp}"),
        None => roles.to_string(),
    }
}

/// The signed bytes: length-prefixed fields, so no two inputs collide.
pub fn message(
    cluster: &str,
    name: &str,
    generation: u64,
    addr: SocketAddr,
    subject: &str,
) -> Vec<u8> {
    let mut m = Vec::with_capacity(64 + name.len() + subject.len());
    let addr = addr.to_string();
    let gen_bytes = generation.to_le_bytes();
    for part in [
        MESSAGE_TAG,
        cluster.as_bytes(),
        name.as_bytes(),
        gen_bytes.as_slice(),
        addr.as_bytes(),
        subject.as_bytes(),
    ] {
        m.extend_from_slice(&(part.len() as u32).to_le_bytes());
        m.extend_from_slice(part);
    }
    m
}

/// The `proof` value for `message` under `control` (base64, no padding).
pub fn sign(control: &Key, message: &[u8]) -> String {
    let sig = signer(control).sign(message);
    base64::engine::general_purpose::STANDARD_NO_PAD.encode(sig.as_ref())
}

/// Whether `proof` is a signature of `message` under any of `keys`.
pub fn verify(keys: &[ProofKey], message: &[u8], proof: &str) -> bool {
    let Ok(sig) = base64::engine::general_purpose::STANDARD_NO_PAD.decode(proof) else {
        return false;
    };
    sig.len() == 64
        && keys.iter().any(|k| {
            UnparsedPublicKey::new(&ED25519, k.0)
                .verify(message, &sig)
                .is_ok()
        })
}

/// The `proof` gossip key of one incarnation.
pub fn role_proof(
    control: &Key,
    cluster: &str,
    name: &str,
    generation: u64,
    addr: SocketAddr,
    subject: &str,
) -> String {
    sign(control, &message(cluster, name, generation, addr, subject))
}

/// Whether `proof` is [`role_proof`] of this incarnation under a key whose
/// public half is one of `keys`.
pub fn check_role_proof(
    keys: &[ProofKey],
    cluster: &str,
    name: &str,
    generation: u64,
    addr: SocketAddr,
    subject: &str,
    proof: &str,
) -> bool {
    verify(
        keys,
        &message(cluster, name, generation, addr, subject),
        proof,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> SocketAddr {
        "198.18.0.9:7946".parse().unwrap()
    }

    #[test]
    fn the_public_half_verifies_and_cannot_sign() {
        let control = Key::from_bytes([42; 32]);
        let public = ProofKey::of(&control);
        let p = role_proof(&control, "lab", "cp-1", 7, addr(), "control-plane");
        assert!(check_role_proof(
            &[public],
            "lab",
            "cp-1",
            7,
            addr(),
            "control-plane",
            &p
        ));
        // Every field is covered.
        for (c, n, g, s) in [
            ("lab2", "cp-1", 7, "control-plane"),
            ("lab", "cp-2", 7, "control-plane"),
            ("lab", "cp-1", 8, "control-plane"),
            ("lab", "cp-1", 7, "control-plane,lb"),
        ] {
            assert!(
                !check_role_proof(&[public], c, n, g, addr(), s, &p),
                "{c} {n} {g} {s}"
            );
        }
        let other: SocketAddr = "198.18.0.10:7946".parse().unwrap();
        assert!(!check_role_proof(
            &[public],
            "lab",
            "cp-1",
            7,
            other,
            "control-plane",
            &p
        ));
        // Another control key's public half, junk, a truncated signature.
        let stranger = ProofKey::of(&Key::from_bytes([1; 32]));
        assert!(!check_role_proof(
            &[stranger],
            "lab",
            "cp-1",
            7,
            addr(),
            "control-plane",
            &p
        ));
        for junk in ["", "garbage!", &p[..40]] {
            assert!(!check_role_proof(
                &[public],
                "lab",
                "cp-1",
                7,
                addr(),
                "control-plane",
                junk
            ));
        }
        // Any key of the set will do (rotation).
        assert!(check_role_proof(
            &[stranger, public],
            "lab",
            "cp-1",
            7,
            addr(),
            "control-plane",
            &p
        ));
    }

    #[test]
    fn public_keys_round_trip_and_reject_junk() {
        let k = ProofKey::of(&Key::from_bytes([3; 32]));
        let text = k.to_string();
        assert!(text.starts_with(PUBLIC_PREFIX), "{text}");
        assert_eq!(ProofKey::parse(&text).unwrap(), k);
        assert_eq!(ProofKey::parse(&format!("  {text}\n")).unwrap(), k);
        assert_eq!(ProofKey::parse("AAAA").unwrap_err(), ProofKeyError::Prefix);
        assert!(matches!(
            ProofKey::parse("ed25519:AAAA"),
            Err(ProofKeyError::Encoding(_))
        ));
        assert!(matches!(
            ProofKey::parse("ed25519:!!"),
            Err(ProofKeyError::Encoding(_))
        ));
        // The public key is not the control key, nor derived the way the
        // frame keys are.
        let raw = base64::engine::general_purpose::STANDARD.encode([3u8; 32]);
        assert!(!text.contains(&raw));
    }

    #[test]
    fn fields_are_length_prefixed() {
        let a = message("ab", "c", 1, addr(), "x");
        let b = message("a", "bc", 1, addr(), "x");
        assert_ne!(a, b);
    }
}
