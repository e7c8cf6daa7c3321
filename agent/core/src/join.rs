//! Join material: what a node that must `kubeadm join` asks a joined control
//! plane for, and who gets what. Pure: the TLS server and client in
//! `kubeha-agent`'s `join` module carry these types and call
//! [`authorize`]; kubeadm's output is parsed here too.
//!
//! Trust model (docs/join.md): every agent has a self-signed TLS certificate
//! and publishes its SHA-256 fingerprint in gossip under
//! [`crate::membership::keys::TLS_FINGERPRINT`]. Gossip is authenticated per
//! tier (a node with only the membership key can neither claim the
//! `control-plane` role nor speak for another node's name), so a fingerprint
//! in the member view is bound to that member's name and roles. Everything
//! below relies on that binding.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroize;

use crate::config::Role;
use crate::membership::{MemberInfo, MembershipView};

/// Version of the request/response format; a mismatch is refused.
pub const PROTOCOL_VERSION: u16 = 1;
/// Largest request or response frame (bytes, without the 4-byte length).
pub const MAX_FRAME: usize = 16 * 1024;
/// `kube` gossip value of a node that has joined as a control plane.
pub const KUBE_CONTROL_PLANE: &str = "control-plane";

// ------------------------------------------------------------ fingerprint

/// SHA-256 of a certificate's DER encoding. Public: it is gossiped.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    pub fn of_der(der: &[u8]) -> Fingerprint {
        Fingerprint(Sha256::digest(der).into())
    }

    /// `sha256:` and 64 lowercase hex digits.
    pub fn parse(s: &str) -> Option<Fingerprint> {
        let hex = s.strip_prefix("sha256:")?;
        if hex.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        if hex.bytes().any(|b| b.is_ascii_uppercase()) {
            return None;
        }
        Some(Fingerprint(out))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sha256:")?;
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

// ----------------------------------------------------------------- secret

/// A secret string (bootstrap token, certificate key). `Debug` and
/// `Display` show `<redacted>`; the bytes are zeroed on drop. Serialized as
/// a plain string: only ever inside the join TLS channel.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    /// The secret itself, for the one place that needs it (a kubeadm
    /// config file or stdin). Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

// ------------------------------------------------------------ wire types

/// What the joiner wants to become.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Tier {
    Worker,
    ControlPlane,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Worker => "worker",
            Tier::ControlPlane => "control-plane",
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The one request a client sends after the handshake.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRequest {
    pub version: u16,
    /// The joiner's node name; must be the member whose gossiped
    /// fingerprint is the client certificate's.
    pub node: String,
    pub tier: Tier,
}

/// Everything `kubeadm join` needs. `certificate_key` only for control
/// planes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinMaterial {
    /// `host:port` kubeadm joins through (the control-plane endpoint).
    pub endpoint: String,
    pub token: Secret,
    /// `sha256:` + hex of the cluster CA's SubjectPublicKeyInfo.
    pub ca_cert_hash: String,
    pub certificate_key: Option<Secret>,
}

/// Why a request got no material. Carries no secret; shown to the client
/// and logged by the server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Refusal {
    #[error("protocol version {0} is not {PROTOCOL_VERSION}")]
    Version(u16),
    #[error("`{0}` is not a member in this server's view")]
    UnknownNode(String),
    #[error("`{0}` is not alive in this server's view")]
    NotAlive(String),
    #[error("`{node}` publishes no TLS fingerprint")]
    NoFingerprint { node: String },
    #[error("the client certificate ({presented}) is not the one `{node}` publishes")]
    FingerprintMismatch { node: String, presented: String },
    #[error("`{node}` asks for `{tier}` material but does not have that role in gossip")]
    RoleNotClaimed { node: String, tier: Tier },
    #[error("`{0}` is this server itself")]
    SelfRequest(String),
    #[error("this server has not joined as a control plane")]
    ServerNotJoined,
    #[error("minting join material failed on the server (see its log)")]
    MintFailed,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JoinResponse {
    Material(JoinMaterial),
    Refused(Refusal),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("join message: {0}")]
pub struct DecodeError(String);

pub fn encode_request(r: &JoinRequest) -> Vec<u8> {
    postcard::to_stdvec(r).expect("a request always serializes")
}

pub fn decode_request(b: &[u8]) -> Result<JoinRequest, DecodeError> {
    postcard::from_bytes(b).map_err(|e| DecodeError(e.to_string()))
}

/// The encoded response holds secrets: the caller zeroes the buffer.
pub fn encode_response(r: &JoinResponse) -> Vec<u8> {
    postcard::to_stdvec(r).expect("a response always serializes")
}

pub fn decode_response(b: &[u8]) -> Result<JoinResponse, DecodeError> {
    postcard::from_bytes(b).map_err(|e| DecodeError(e.to_string()))
}

// --------------------------------------------------------- authorization

/// The material a request may receive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grant {
    /// Token, CA hash, endpoint.
    Worker,
    /// Also a certificate key minted for this join.
    ControlPlane,
}

/// May this TLS client (certificate `presented`) have join material?
///
/// - the server (`self_name`) must be an alive, joined control plane;
/// - the named node must be an alive member other than the server whose
///   gossiped fingerprint is `presented` (gossip binds the fingerprint to
///   the name, see the module doc);
/// - `control-plane` material only for a node gossip shows with role
///   `control-plane` (tier-authenticated gossip: a worker cannot claim it);
///   `worker` material only for a node with role `worker`. No downgrade: a
///   mismatch is refused, so a misconfigured node is noticed.
pub fn authorize(
    view: &MembershipView,
    self_name: &str,
    presented: &Fingerprint,
    request: &JoinRequest,
) -> Result<Grant, Refusal> {
    if request.version != PROTOCOL_VERSION {
        return Err(Refusal::Version(request.version));
    }
    let server_joined = view
        .get(self_name)
        .is_some_and(|m| m.alive() && m.kube == KUBE_CONTROL_PLANE);
    if !server_joined {
        return Err(Refusal::ServerNotJoined);
    }
    let node = &request.node;
    if node == self_name {
        return Err(Refusal::SelfRequest(node.clone()));
    }
    let Some(m) = view.get(node) else {
        return Err(Refusal::UnknownNode(node.clone()));
    };
    match m.tls_fingerprint {
        None => {
            return Err(Refusal::NoFingerprint { node: node.clone() });
        }
        Some(fp) if fp != *presented => {
            return Err(Refusal::FingerprintMismatch {
                node: node.clone(),
                presented: presented.to_string(),
            });
        }
        Some(_) => {}
    }
    if !m.alive() {
        return Err(Refusal::NotAlive(node.clone()));
    }
    let (role, grant) = match request.tier {
        Tier::Worker => (Role::Worker, Grant::Worker),
        Tier::ControlPlane => (Role::ControlPlane, Grant::ControlPlane),
    };
    if !m.roles.contains(&role) {
        return Err(Refusal::RoleNotClaimed {
            node: node.clone(),
            tier: request.tier,
        });
    }
    Ok(grant)
}

/// The TLS-layer check of a client certificate: some alive member
/// publishes this fingerprint. (Which member, and whether it may have
/// material, is [`authorize`]'s business once the request names it.)
pub fn fingerprint_known(view: &MembershipView, fp: &Fingerprint) -> bool {
    view.members
        .values()
        .any(|m| m.alive() && m.tls_fingerprint.as_ref() == Some(fp))
}

/// Joined control planes a node can ask for material, by name; never
/// `self_name`.
pub fn join_servers<'a>(view: &'a MembershipView, self_name: &str) -> Vec<&'a MemberInfo> {
    view.members
        .values()
        .filter(|m| {
            m.name != self_name
                && m.alive()
                && m.roles.contains(&Role::ControlPlane)
                && m.kube == KUBE_CONTROL_PLANE
                && m.tls_fingerprint.is_some()
        })
        .collect()
}

// ------------------------------------------------------ kubeadm's output

/// What `kubeadm token create --print-join-command` prints, parsed.
#[derive(Debug, PartialEq, Eq)]
pub struct JoinCommand {
    pub endpoint: String,
    pub token: Secret,
    pub ca_cert_hash: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("no `kubeadm join ENDPOINT` line in the output")]
    NoJoinCommand,
    #[error("no `{0}` value in the join command")]
    Missing(&'static str),
    #[error("the `--token` value is not of the form [a-z0-9]{{6}}.[a-z0-9]{{16}}")]
    BadToken,
    #[error("the `--discovery-token-ca-cert-hash` value `{0}` is not sha256:<64 hex digits>")]
    BadHash(String),
    #[error("no certificate key (64 hex digits) in the output")]
    NoCertificateKey,
}

/// Parse the join command kubeadm prints (words separated by any run of
/// whitespace; kubeadm leaves extra and trailing spaces and may print
/// `\` line continuations). Only the first `kubeadm join` line counts.
/// The token is secret: the error never quotes it.
pub fn parse_join_command(output: &str) -> Result<JoinCommand, ParseError> {
    let words: Vec<&str> = output.split_whitespace().filter(|w| *w != "\\").collect();
    let start = words
        .windows(2)
        .position(|w| w[0] == "kubeadm" && w[1] == "join")
        .ok_or(ParseError::NoJoinCommand)?;
    let words = &words[start + 2..];
    let endpoint = words
        .first()
        .filter(|w| !w.starts_with("--"))
        .ok_or(ParseError::NoJoinCommand)?;
    let value = |flag: &'static str| -> Result<&str, ParseError> {
        let mut it = words.iter();
        while let Some(w) = it.next() {
            if *w == flag {
                return it.next().copied().ok_or(ParseError::Missing(flag));
            }
            if let Some(v) = w.strip_prefix(flag).and_then(|r| r.strip_prefix('=')) {
                return Ok(v);
            }
        }
        Err(ParseError::Missing(flag))
    };
    let token = value("--token")?;
    if !is_token(token) {
        return Err(ParseError::BadToken);
    }
    let hash = value("--discovery-token-ca-cert-hash")?;
    let hex = hash.strip_prefix("sha256:").unwrap_or("");
    if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(ParseError::BadHash(hash.to_string()));
    }
    Ok(JoinCommand {
        endpoint: endpoint.to_string(),
        token: Secret::new(token),
        ca_cert_hash: hash.to_string(),
    })
}

/// A bootstrap token: `[a-z0-9]{6}.[a-z0-9]{16}`.
pub fn is_token(s: &str) -> bool {
    let ok = |p: &str, n: usize| {
        p.len() == n
            && p.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    matches!(s.split_once('.'), Some((id, secret)) if ok(id, 6) && ok(secret, 16))
}

fn is_certificate_key(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The key `kubeadm certs certificate-key` prints (one line of 64 hex
/// digits), or the one after `[upload-certs] Using certificate key:` in
/// `init phase upload-certs` output: the last line that is a key.
pub fn parse_certificate_key(output: &str) -> Result<Secret, ParseError> {
    output
        .lines()
        .map(str::trim)
        .rfind(|l| is_certificate_key(l))
        .map(Secret::new)
        .ok_or(ParseError::NoCertificateKey)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::keys;

    const TOKEN: &str = "abcdef.0123456789abcdef";
    const HASH: &str = "sha256:7c5d2c9bb6a3e0b9a4ef7b0f2f5d9f2f63a0b8b8d4f6bb8e8f5f8f2a0a1b2c3d";
    const KEY: &str = "f8fa0b5c7f0e57b4e6b7e3a3b87d4d8e5b8b2a8a7c4fd2a3f3f53c4d5e6f7a8b";

    fn fp(n: u8) -> Fingerprint {
        Fingerprint([n; 32])
    }

    fn member(
        name: &str,
        roles: &str,
        kube: &str,
        live: bool,
        f: Option<Fingerprint>,
    ) -> MemberInfo {
        let f = f.map(|f| f.to_string());
        let mut kv = vec![(keys::ROLES, roles), (keys::KUBE, kube)];
        if let Some(f) = &f {
            kv.push((keys::TLS_FINGERPRINT, f.as_str()));
        }
        MemberInfo::from_kv(name, 1, "127.0.0.1:7946".parse().unwrap(), live, kv)
    }

    fn view() -> MembershipView {
        MembershipView::from_incarnations([
            member(
                "cp-0",
                "control-plane,lb",
                "control-plane",
                true,
                Some(fp(1)),
            ),
            member("cp-1", "control-plane", "none", true, Some(fp(2))),
            member("w-0", "worker", "none", true, Some(fp(3))),
            member("w-dead", "worker", "none", false, Some(fp(4))),
            member("w-nofp", "worker", "none", true, None),
            member("lb-0", "lb", "none", true, Some(fp(6))),
        ])
    }

    fn req(node: &str, tier: Tier) -> JoinRequest {
        JoinRequest {
            version: PROTOCOL_VERSION,
            node: node.into(),
            tier,
        }
    }

    #[test]
    fn fingerprint_round_trips_and_rejects_junk() {
        let f = Fingerprint::of_der(b"cert");
        let s = f.to_string();
        assert!(s.starts_with("sha256:") && s.len() == 71, "{s}");
        assert_eq!(Fingerprint::parse(&s), Some(f));
        assert_eq!(Fingerprint::parse(&s[..70]), None);
        assert_eq!(Fingerprint::parse(&s.to_uppercase()), None);
        assert_eq!(Fingerprint::parse(&s.replace("sha256:", "sha1:")), None);
        assert_eq!(Fingerprint::parse(&format!("{s}0")), None);
        assert_eq!(Fingerprint::parse("sha256:zz"), None);
    }

    #[test]
    fn member_view_parses_the_fingerprint() {
        let v = view();
        assert_eq!(v.get("cp-0").unwrap().tls_fingerprint, Some(fp(1)));
        assert_eq!(v.get("w-nofp").unwrap().tls_fingerprint, None);
        let junk = MemberInfo::from_kv(
            "x",
            1,
            "127.0.0.1:1".parse().unwrap(),
            true,
            [(keys::TLS_FINGERPRINT, "sha256:nothex")],
        );
        assert_eq!(junk.tls_fingerprint, None);
    }

    #[test]
    fn worker_with_its_own_fingerprint_gets_worker_material() {
        assert_eq!(
            authorize(&view(), "cp-0", &fp(3), &req("w-0", Tier::Worker)),
            Ok(Grant::Worker)
        );
    }

    #[test]
    fn control_plane_with_its_role_gets_control_plane_material() {
        assert_eq!(
            authorize(&view(), "cp-0", &fp(2), &req("cp-1", Tier::ControlPlane)),
            Ok(Grant::ControlPlane)
        );
    }

    #[test]
    fn a_worker_never_gets_the_control_plane_grant() {
        // Its own fingerprint, but it asks for control-plane material.
        assert_eq!(
            authorize(&view(), "cp-0", &fp(3), &req("w-0", Tier::ControlPlane)),
            Err(Refusal::RoleNotClaimed {
                node: "w-0".into(),
                tier: Tier::ControlPlane
            })
        );
        // An lb-only node joins nothing.
        assert!(matches!(
            authorize(&view(), "cp-0", &fp(6), &req("lb-0", Tier::Worker)),
            Err(Refusal::RoleNotClaimed { .. })
        ));
    }

    #[test]
    fn speaking_for_another_node_is_refused() {
        // w-0's certificate, cp-1's name.
        assert_eq!(
            authorize(&view(), "cp-0", &fp(3), &req("cp-1", Tier::ControlPlane)),
            Err(Refusal::FingerprintMismatch {
                node: "cp-1".into(),
                presented: fp(3).to_string()
            })
        );
    }

    #[test]
    fn unknown_dead_and_unpublished_nodes_are_refused() {
        let v = view();
        assert_eq!(
            authorize(&v, "cp-0", &fp(9), &req("ghost", Tier::Worker)),
            Err(Refusal::UnknownNode("ghost".into()))
        );
        assert_eq!(
            authorize(&v, "cp-0", &fp(4), &req("w-dead", Tier::Worker)),
            Err(Refusal::NotAlive("w-dead".into()))
        );
        assert_eq!(
            authorize(&v, "cp-0", &fp(5), &req("w-nofp", Tier::Worker)),
            Err(Refusal::NoFingerprint {
                node: "w-nofp".into()
            })
        );
        assert_eq!(
            authorize(&v, "cp-0", &fp(1), &req("cp-0", Tier::ControlPlane)),
            Err(Refusal::SelfRequest("cp-0".into()))
        );
    }

    #[test]
    fn a_server_that_has_not_joined_hands_out_nothing() {
        assert_eq!(
            authorize(&view(), "cp-1", &fp(3), &req("w-0", Tier::Worker)),
            Err(Refusal::ServerNotJoined)
        );
        assert_eq!(
            authorize(&view(), "nobody", &fp(3), &req("w-0", Tier::Worker)),
            Err(Refusal::ServerNotJoined)
        );
    }

    #[test]
    fn wrong_version_is_refused() {
        let mut r = req("w-0", Tier::Worker);
        r.version = 2;
        assert_eq!(
            authorize(&view(), "cp-0", &fp(3), &r),
            Err(Refusal::Version(2))
        );
    }

    #[test]
    fn tls_layer_knows_only_alive_published_fingerprints() {
        let v = view();
        assert!(fingerprint_known(&v, &fp(3)));
        assert!(!fingerprint_known(&v, &fp(4)), "dead member");
        assert!(!fingerprint_known(&v, &fp(9)), "nobody's");
    }

    #[test]
    fn join_servers_are_joined_control_planes_but_self() {
        let v = view();
        let names: Vec<_> = join_servers(&v, "w-0")
            .iter()
            .map(|m| m.name.as_str())
            .collect();
        assert_eq!(names, ["cp-0"]);
        assert!(join_servers(&v, "cp-0").is_empty());
    }

    #[test]
    fn secret_is_redacted() {
        let m = JoinMaterial {
            endpoint: "k8s-api:6443".into(),
            token: Secret::new(TOKEN),
            ca_cert_hash: HASH.into(),
            certificate_key: Some(Secret::new(KEY)),
        };
        let s = format!("{m:?} {}", m.token);
        assert!(!s.contains(TOKEN) && !s.contains(KEY), "{s}");
        assert!(s.contains("<redacted>"));
        assert!(format!("{:?}", JoinResponse::Material(m)).contains("k8s-api:6443"));
    }

    #[test]
    fn messages_round_trip() {
        let r = req("w-0", Tier::Worker);
        assert_eq!(decode_request(&encode_request(&r)).unwrap(), r);
        let m = JoinResponse::Material(JoinMaterial {
            endpoint: "10.0.0.10:6443".into(),
            token: Secret::new(TOKEN),
            ca_cert_hash: HASH.into(),
            certificate_key: None,
        });
        assert_eq!(decode_response(&encode_response(&m)).unwrap(), m);
        let refused = JoinResponse::Refused(Refusal::ServerNotJoined);
        assert_eq!(
            decode_response(&encode_response(&refused)).unwrap(),
            refused
        );
        assert!(decode_response(&[0xff, 0xff]).is_err());
        assert!(decode_request(&[]).is_err());
    }

    #[test]
    fn parses_kubeadm_print_join_command() {
        // kubeadm's template with continuations removed: runs of spaces and
        // a trailing space.
        let out = format!(
            "kubeadm join 10.0.0.10:6443 --token {TOKEN}     --discovery-token-ca-cert-hash {HASH} \n"
        );
        let j = parse_join_command(&out).unwrap();
        assert_eq!(j.endpoint, "10.0.0.10:6443");
        assert_eq!(j.token.expose(), TOKEN);
        assert_eq!(j.ca_cert_hash, HASH);
        // As `kubeadm init` prints it: a banner, continuations, tabs.
        let init = format!(
            "Your Kubernetes control-plane has initialized successfully!\n\n\
             Then you can join any number of worker nodes by running the following on each as root:\n\n\
             kubeadm join k8s-api:6443 --token {TOKEN} \\\n\t--discovery-token-ca-cert-hash {HASH} \n"
        );
        let j = parse_join_command(&init).unwrap();
        assert_eq!(j.endpoint, "k8s-api:6443");
        assert_eq!(j.ca_cert_hash, HASH);
    }

    #[test]
    fn join_command_errors_do_not_quote_the_token() {
        let bad = "kubeadm join e:6443 --token ABCDEF.0123456789abcdef --discovery-token-ca-cert-hash sha256:00";
        let e = parse_join_command(bad).unwrap_err();
        assert_eq!(e, ParseError::BadToken);
        assert!(!e.to_string().contains("ABCDEF"));
        assert_eq!(
            parse_join_command(&format!("kubeadm join e:6443 --token {TOKEN}")),
            Err(ParseError::Missing("--discovery-token-ca-cert-hash"))
        );
        assert!(matches!(
            parse_join_command(&format!(
                "kubeadm join e:6443 --token {TOKEN} --discovery-token-ca-cert-hash sha256:abc"
            )),
            Err(ParseError::BadHash(_))
        ));
        assert_eq!(
            parse_join_command("error: nope"),
            Err(ParseError::NoJoinCommand)
        );
        assert_eq!(
            parse_join_command("kubeadm join --token x"),
            Err(ParseError::NoJoinCommand)
        );
    }

    #[test]
    fn parses_certificate_keys() {
        assert_eq!(
            parse_certificate_key(&format!("{KEY}\n")).unwrap().expose(),
            KEY
        );
        let upload = format!(
            "[upload-certs] Storing the certificates in Secret \"kubeadm-certs\" in the \"kube-system\" Namespace\n\
             [upload-certs] Using certificate key:\n{KEY}\n"
        );
        assert_eq!(parse_certificate_key(&upload).unwrap().expose(), KEY);
        assert_eq!(
            parse_certificate_key("[upload-certs] Skipping phase. Please see --upload-certs\n"),
            Err(ParseError::NoCertificateKey)
        );
        assert!(parse_certificate_key(&KEY[..63]).is_err());
        assert!(is_token(TOKEN) && !is_token("abcdef0123456789abcdef"));
    }
}
