//! The certificates kubeadm writes under `<etc_dir>/pki`, made with rcgen
//! (ECDSA P-256, as kubeadm's `encryptionAlgorithm: ECDSA-P256`), and the
//! kubeconfig files. CAs are recreated as issuers from their subject and key
//! (rcgen signs with the issuer's name and key only), so a CA read back from
//! disk or from the uploaded certificates signs like the original.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
};
use sha2::{Digest, Sha256};

use super::Error;

/// The CAs kubeadm makes (subject CN as kubeadm's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ca {
    Kubernetes,
    Etcd,
    FrontProxy,
}

impl Ca {
    pub fn cn(self) -> &'static str {
        match self {
            Ca::Kubernetes => "kubernetes",
            Ca::Etcd => "etcd-ca",
            Ca::FrontProxy => "front-proxy-ca",
        }
    }
    /// Relative to the pki directory, without `.crt`/`.key`.
    pub fn stem(self) -> &'static str {
        match self {
            Ca::Kubernetes => "ca",
            Ca::Etcd => "etcd/ca",
            Ca::FrontProxy => "front-proxy-ca",
        }
    }
}

/// Files of the `kubeadm-certs` Secret: (secret data key, path under pki/).
pub const UPLOADED: &[(&str, &str)] = &[
    ("ca.crt", "ca.crt"),
    ("ca.key", "ca.key"),
    ("front-proxy-ca.crt", "front-proxy-ca.crt"),
    ("front-proxy-ca.key", "front-proxy-ca.key"),
    ("sa.key", "sa.key"),
    ("sa.pub", "sa.pub"),
    ("etcd-ca.crt", "etcd/ca.crt"),
    ("etcd-ca.key", "etcd/ca.key"),
];

fn cert_err(what: &str) -> impl FnOnce(rcgen::Error) -> Error + '_ {
    move |e| Error::Other(format!("certificate {what}: {e}"))
}

fn ca_params(ca: Ca) -> Result<CertificateParams, Error> {
    let mut p = CertificateParams::new(Vec::<String>::new()).map_err(cert_err(ca.cn()))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, ca.cn());
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    Ok(p)
}

/// Write `text` to `path`, mode `mode`, creating parent directories.
pub fn write_file(path: &Path, text: &[u8], mode: u32) -> Result<(), Error> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(Error::io(parent))?;
    }
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(Error::io(path))?;
    f.write_all(text).map_err(Error::io(path))?;
    // An existing file keeps its mode through open(): set it.
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(Error::io(path))
}

pub fn read(path: &Path) -> Result<String, Error> {
    fs::read_to_string(path).map_err(Error::io(path))
}

/// A CA loaded for signing.
pub struct CaKey {
    params: CertificateParams,
    key: KeyPair,
}

impl CaKey {
    pub fn load(pki: &Path, ca: Ca) -> Result<CaKey, Error> {
        let key_path = pki.join(format!("{}.key", ca.stem()));
        let key = KeyPair::from_pem(&read(&key_path)?)
            .map_err(|e| Error::Other(format!("`{}`: {e}", key_path.display())))?;
        Ok(CaKey {
            params: ca_params(ca)?,
            key,
        })
    }

    /// Make a new CA and write `<stem>.crt` (0644) and `<stem>.key` (0600).
    pub fn create(pki: &Path, ca: Ca) -> Result<CaKey, Error> {
        let key = KeyPair::generate().map_err(cert_err(ca.cn()))?;
        let params = ca_params(ca)?;
        let cert = params.self_signed(&key).map_err(cert_err(ca.cn()))?;
        write_file(
            &pki.join(format!("{}.crt", ca.stem())),
            cert.pem().as_bytes(),
            0o644,
        )?;
        write_file(
            &pki.join(format!("{}.key", ca.stem())),
            key.serialize_pem().as_bytes(),
            0o600,
        )?;
        Ok(CaKey { params, key })
    }

    /// Sign a leaf and write `<stem>.crt`/`<stem>.key` under `pki`.
    pub fn issue(&self, pki: &Path, leaf: &Leaf) -> Result<(), Error> {
        let mut p = CertificateParams::new(leaf.sans.clone()).map_err(cert_err(&leaf.stem))?;
        let mut dn = DistinguishedName::new();
        for o in &leaf.orgs {
            dn.push(DnType::OrganizationName, o.as_str());
        }
        dn.push(DnType::CommonName, leaf.cn.as_str());
        p.distinguished_name = dn;
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = leaf.usages.clone();
        let key = KeyPair::generate().map_err(cert_err(&leaf.stem))?;
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = p.signed_by(&key, &issuer).map_err(cert_err(&leaf.stem))?;
        write_file(
            &pki.join(format!("{}.crt", leaf.stem)),
            cert.pem().as_bytes(),
            0o644,
        )?;
        write_file(
            &pki.join(format!("{}.key", leaf.stem)),
            key.serialize_pem().as_bytes(),
            0o600,
        )
    }
}

pub struct Leaf {
    pub stem: String,
    pub cn: String,
    pub orgs: Vec<String>,
    pub sans: Vec<String>,
    pub usages: Vec<ExtendedKeyUsagePurpose>,
}

fn leaf(stem: &str, cn: &str, sans: Vec<String>, server: bool, client: bool) -> Leaf {
    let mut usages = Vec::new();
    if server {
        usages.push(ExtendedKeyUsagePurpose::ServerAuth);
    }
    if client {
        usages.push(ExtendedKeyUsagePurpose::ClientAuth);
    }
    Leaf {
        stem: stem.to_string(),
        cn: cn.to_string(),
        orgs: Vec::new(),
        sans,
        usages,
    }
}

/// What a control plane's certificates are made for.
pub struct NodeCerts<'a> {
    pub node_name: &'a str,
    pub advertise: &'a str,
    /// controlPlaneEndpoint's host, if any.
    pub endpoint_host: Option<&'a str>,
    pub cert_sans: &'a [String],
    pub etcd_server_sans: &'a [String],
    pub etcd_peer_sans: &'a [String],
}

fn push_unique(v: &mut Vec<String>, s: &str) {
    if !s.is_empty() && !v.iter().any(|x| x == s) {
        v.push(s.to_string());
    }
}

/// The apiserver's SANs as kubeadm makes them.
pub fn apiserver_sans(n: &NodeCerts) -> Vec<String> {
    let mut sans = Vec::new();
    for s in [
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
        n.node_name,
        "10.96.0.1",
        n.advertise,
    ] {
        push_unique(&mut sans, s);
    }
    if let Some(h) = n.endpoint_host {
        push_unique(&mut sans, h);
    }
    for s in n.cert_sans {
        push_unique(&mut sans, s);
    }
    sans
}

/// Leaves of a control plane (the CAs exist already).
pub fn issue_control_plane(pki: &Path, n: &NodeCerts) -> Result<(), Error> {
    let ca = CaKey::load(pki, Ca::Kubernetes)?;
    ca.issue(
        pki,
        &leaf(
            "apiserver",
            "kube-apiserver",
            apiserver_sans(n),
            true,
            false,
        ),
    )?;
    let mut kc = leaf(
        "apiserver-kubelet-client",
        "kube-apiserver-kubelet-client",
        vec![],
        false,
        true,
    );
    kc.orgs = vec!["kubeadm:cluster-admins".into()];
    ca.issue(pki, &kc)?;
    let fp = CaKey::load(pki, Ca::FrontProxy)?;
    fp.issue(
        pki,
        &leaf(
            "front-proxy-client",
            "front-proxy-client",
            vec![],
            false,
            true,
        ),
    )?;
    let etcd = CaKey::load(pki, Ca::Etcd)?;
    let mut server_sans = vec![n.node_name.to_string()];
    push_unique(&mut server_sans, "localhost");
    push_unique(&mut server_sans, n.advertise);
    push_unique(&mut server_sans, "127.0.0.1");
    push_unique(&mut server_sans, "::1");
    for s in n.etcd_server_sans {
        push_unique(&mut server_sans, s);
    }
    let mut peer_sans = server_sans.clone();
    for s in n.etcd_peer_sans {
        push_unique(&mut peer_sans, s);
    }
    etcd.issue(
        pki,
        &leaf("etcd/server", n.node_name, server_sans, true, true),
    )?;
    etcd.issue(pki, &leaf("etcd/peer", n.node_name, peer_sans, true, true))?;
    etcd.issue(
        pki,
        &leaf(
            "etcd/healthcheck-client",
            "kube-etcd-healthcheck-client",
            vec![],
            false,
            true,
        ),
    )?;
    etcd.issue(
        pki,
        &leaf(
            "apiserver-etcd-client",
            "kube-apiserver-etcd-client",
            vec![],
            false,
            true,
        ),
    )
}

/// The service-account key pair (ECDSA here; kubeadm's default is RSA).
pub fn create_sa(pki: &Path) -> Result<(), Error> {
    let key = KeyPair::generate().map_err(cert_err("sa"))?;
    write_file(&pki.join("sa.key"), key.serialize_pem().as_bytes(), 0o600)?;
    write_file(&pki.join("sa.pub"), key.public_key_pem().as_bytes(), 0o644)
}

/// `sha256:<hex>` of a certificate's SubjectPublicKeyInfo, as
/// `--discovery-token-ca-cert-hash` pins it.
pub fn spki_pin(cert_pem: &str) -> Result<String, Error> {
    let der = pem_der(cert_pem)?;
    let spki =
        spki_of(&der).ok_or_else(|| Error::Other("cannot parse the CA certificate".into()))?;
    Ok(format!("sha256:{}", hex(&Sha256::digest(spki))))
}

/// Pin of a key pair's public key (for the CA just made).
pub fn key_pin(key: &KeyPair) -> String {
    format!(
        "sha256:{}",
        hex(&Sha256::digest(key.subject_public_key_info()))
    )
}

pub fn pem_der(pem: &str) -> Result<Vec<u8>, Error> {
    let body: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(body.trim())
        .map_err(|e| Error::Other(format!("bad PEM: {e}")))
}

/// (tag, header length, content length) of the DER element at `b[0..]`.
fn tlv(b: &[u8]) -> Option<(u8, usize, usize)> {
    let tag = *b.first()?;
    let l0 = *b.get(1)? as usize;
    if l0 < 0x80 {
        return Some((tag, 2, l0));
    }
    let n = l0 & 0x7f;
    if n == 0 || n > 4 {
        return None;
    }
    let mut len = 0usize;
    for i in 0..n {
        len = (len << 8) | *b.get(2 + i)? as usize;
    }
    Some((tag, 2 + n, len))
}

/// The SubjectPublicKeyInfo element of an X.509 certificate (DER).
fn spki_of(cert: &[u8]) -> Option<&[u8]> {
    let (_, h, _) = tlv(cert)?; // Certificate
    let tbs = cert.get(h..)?;
    let (_, th, tl) = tlv(tbs)?; // TBSCertificate
    let mut rest = tbs.get(th..th + tl)?;
    // [0] version (optional), serial, signature, issuer, validity, subject, spki
    let mut idx = 0;
    if rest.first() == Some(&0xa0) {
        let (_, eh, el) = tlv(rest)?;
        rest = rest.get(eh + el..)?;
    }
    loop {
        let (_, eh, el) = tlv(rest)?;
        if idx == 5 {
            return rest.get(..eh + el);
        }
        rest = rest.get(eh + el..)?;
        idx += 1;
    }
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A kubeconfig with a client certificate signed by the cluster CA.
pub fn write_kubeconfig(
    path: &Path,
    pki: &Path,
    server: &str,
    user: &str,
    orgs: &[&str],
) -> Result<(), Error> {
    let ca_pem = read(&pki.join("ca.crt"))?;
    let ca = CaKey::load(pki, Ca::Kubernetes)?;
    let tmp = tempfile::tempdir().map_err(Error::io(Path::new("/tmp")))?;
    let mut l = leaf("client", user, vec![], false, true);
    l.orgs = orgs.iter().map(|s| s.to_string()).collect();
    ca.issue(tmp.path(), &l)?;
    let crt = read(&tmp.path().join("client.crt"))?;
    let key = read(&tmp.path().join("client.key"))?;
    let text = kubeconfig_text(server, &ca_pem, Some((user, &crt, &key)));
    write_file(path, text.as_bytes(), 0o600)
}

pub fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// kubeconfig text as kubeadm writes it (`cluster-info` has no user).
pub fn kubeconfig_text(server: &str, ca_pem: &str, user: Option<(&str, &str, &str)>) -> String {
    let cluster = format!(
        "apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: {}\n    server: https://{server}\n  name: kubernetes\n",
        b64(ca_pem.as_bytes())
    );
    match user {
        None => format!(
            "{cluster}contexts: null\ncurrent-context: \"\"\nkind: Config\npreferences: {{}}\nusers: null\n"
        ),
        Some((name, crt, key)) => format!(
            "{cluster}contexts:\n- context:\n    cluster: kubernetes\n    user: {name}\n  name: {name}@kubernetes\ncurrent-context: {name}@kubernetes\nkind: Config\npreferences: {{}}\nusers:\n- name: {name}\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\n",
            b64(crt.as_bytes()),
            b64(key.as_bytes())
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_of_the_written_ca_equals_the_pin_of_its_key() {
        let d = tempfile::tempdir().unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = ca_params(Ca::Kubernetes)
            .unwrap()
            .self_signed(&key)
            .unwrap();
        assert_eq!(spki_pin(&cert.pem()).unwrap(), key_pin(&key));
        CaKey::create(d.path(), Ca::Etcd).unwrap();
        let meta = fs::metadata(d.path().join("etcd/ca.key")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(
            unhex(&hex(&[0, 1, 254, 255])).unwrap(),
            vec![0, 1, 254, 255]
        );
        assert!(unhex("abc").is_none());
    }
}
