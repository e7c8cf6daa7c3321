//! The DigitalOcean calls the provider makes, each returning either its
//! result or a [`Failure`] that names the call and the status (never the
//! token). Every call is reported to the [`ApiObserver`] with its outcome and
//! latency.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::http::{Client, HttpError, Response, Secret, Url};
use super::policy::{Action, ActionStatus, Class, Current, Failure, RateLimit};
use super::{ApiObserver, DoError};

/// Where the calls go and how long each may take.
#[derive(Clone)]
pub struct Api {
    pub(super) http: Client,
    pub(super) api: Url,
    pub(super) metadata: Url,
    pub(super) reserved_ip: IpAddr,
    pub(super) timeout: Duration,
    pub(super) observer: Option<Arc<dyn ApiObserver>>,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api")
            .field("api", &self.api)
            .field("metadata", &self.metadata)
            .field("reserved_ip", &self.reserved_ip)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct ActionEnvelope {
    action: ActionJson,
}

#[derive(Deserialize)]
struct ActionJson {
    id: u64,
    status: String,
}

#[derive(Deserialize)]
struct ReservedIpEnvelope {
    reserved_ip: ReservedIpJson,
}

#[derive(Deserialize)]
struct ReservedIpJson {
    droplet: Option<DropletRef>,
    /// An action on the IP is in progress.
    #[serde(default)]
    locked: bool,
}

#[derive(Deserialize)]
struct DropletRef {
    id: u64,
}

/// DigitalOcean's error body: `{"id": "unauthorized", "message": "..."}`.
#[derive(Deserialize)]
struct ErrorBody {
    id: Option<String>,
    message: Option<String>,
}

/// Metric label of a call's outcome.
pub fn outcome_label(r: &Result<u16, &HttpError>) -> &'static str {
    match r {
        Ok(200..=299) => "ok",
        Ok(401) | Ok(403) => "unauthorized",
        Ok(404) => "not_found",
        Ok(409) | Ok(422) => "busy",
        Ok(429) => "rate_limited",
        Ok(500..=599) => "server_error",
        Ok(_) => "client_error",
        Err(HttpError::Timeout(_)) => "timeout",
        Err(_) => "transport",
    }
}

/// Server text, made safe for a log line: one line, at most 200 characters.
fn clean(s: &str) -> String {
    let one: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(200)
        .collect();
    one.trim().to_string()
}

impl Api {
    /// `what` names the call for messages and metrics (`assign`, ...), `desc`
    /// is `METHOD /path` for messages.
    async fn call(
        &self,
        what: &'static str,
        metadata: bool,
        method: &str,
        path: &str,
        token: Option<&Secret>,
        body: Option<&[u8]>,
    ) -> Result<Response, Failure> {
        let url = if metadata { &self.metadata } else { &self.api };
        let start = tokio::time::Instant::now();
        let r = self
            .http
            .request(method, url, path, token, body, self.timeout)
            .await;
        let latency = start.elapsed();
        if let Some(o) = &self.observer {
            o.observe(what, outcome_label(&r.as_ref().map(|r| r.status)), latency);
        }
        let desc = format!("{method} {}{path}", url.base_path);
        match r {
            Ok(resp) if (200..300).contains(&resp.status) => Ok(resp),
            Ok(resp) => {
                let rate = RateLimit::from_headers(resp.header_pairs());
                let body: Option<ErrorBody> = serde_json::from_slice(&resp.body).ok();
                let detail = match body {
                    Some(ErrorBody { id, message }) => {
                        let id = id.map(|i| clean(&i)).unwrap_or_default();
                        let msg = message.map(|m| clean(&m)).unwrap_or_default();
                        match (id.is_empty(), msg.is_empty()) {
                            (false, false) => format!(" {id}: {msg}"),
                            (false, true) => format!(" {id}"),
                            (true, false) => format!(": {msg}"),
                            (true, true) => String::new(),
                        }
                    }
                    None => String::new(),
                };
                let hint = match resp.status {
                    401 | 403 => " (check the token in the token file and its scopes)",
                    404 if what == "get_reserved_ip" || what == "assign" => {
                        " (does the Reserved IP exist in this account?)"
                    }
                    _ => "",
                };
                Err(Failure {
                    class: Class::of_status(resp.status),
                    message: format!(
                        "DigitalOcean {what} `{desc}`: HTTP {}{detail}{hint}",
                        resp.status
                    ),
                    rate,
                })
            }
            Err(e) => Err(Failure {
                class: Class::Transient,
                message: format!("DigitalOcean {what} `{desc}`: {e}"),
                rate: RateLimit::default(),
            }),
        }
    }

    fn parse_failure(what: &'static str, e: impl std::fmt::Display) -> Failure {
        Failure {
            class: Class::Permanent,
            message: format!("DigitalOcean {what}: unexpected answer: {e}"),
            rate: RateLimit::default(),
        }
    }

    async fn metadata_text(&self, what: &'static str, path: &str) -> Result<String, Failure> {
        let r = self.call(what, true, "GET", path, None, None).await?;
        String::from_utf8(r.body)
            .map(|s| s.trim().to_string())
            .map_err(|e| Self::parse_failure(what, e))
    }

    /// This droplet's id, from the metadata service.
    pub async fn droplet_id(&self) -> Result<u64, Failure> {
        let s = self.metadata_text("metadata", "/metadata/v1/id").await?;
        s.parse()
            .map_err(|_| Self::parse_failure("metadata", format!("droplet id `{}`", clean(&s))))
    }

    /// This droplet's anchor address (where a Reserved IP's traffic arrives).
    pub async fn anchor_ipv4(&self) -> Result<Ipv4Addr, Failure> {
        let s = self.metadata_text("metadata", super::ANCHOR_PATH).await?;
        s.parse()
            .map_err(|_| Self::parse_failure("metadata", format!("anchor address `{}`", clean(&s))))
    }

    /// The droplet the Reserved IP is assigned to now, if any, and whether
    /// an action on it is in progress.
    pub async fn current(&self, token: &Secret) -> Result<Current, Failure> {
        let path = format!("/v2/reserved_ips/{}", self.reserved_ip);
        let r = self
            .call("get_reserved_ip", false, "GET", &path, Some(token), None)
            .await?;
        let env: ReservedIpEnvelope = serde_json::from_slice(&r.body)
            .map_err(|e| Self::parse_failure("get_reserved_ip", e))?;
        Ok(Current {
            droplet: env.reserved_ip.droplet.map(|d| d.id),
            locked: env.reserved_ip.locked,
        })
    }

    /// Start assigning the Reserved IP to `droplet`.
    pub async fn assign(&self, token: &Secret, droplet: u64) -> Result<Action, Failure> {
        let path = format!("/v2/reserved_ips/{}/actions", self.reserved_ip);
        let body = format!(r#"{{"type":"assign","droplet_id":{droplet}}}"#);
        let r = self
            .call(
                "assign",
                false,
                "POST",
                &path,
                Some(token),
                Some(body.as_bytes()),
            )
            .await?;
        Self::action_of("assign", &r)
    }

    /// The state of an action on the Reserved IP.
    pub async fn action(&self, token: &Secret, id: u64) -> Result<Action, Failure> {
        let path = format!("/v2/reserved_ips/{}/actions/{id}", self.reserved_ip);
        let r = self
            .call("get_action", false, "GET", &path, Some(token), None)
            .await?;
        Self::action_of("get_action", &r)
    }

    fn action_of(what: &'static str, r: &Response) -> Result<Action, Failure> {
        let env: ActionEnvelope =
            serde_json::from_slice(&r.body).map_err(|e| Self::parse_failure(what, e))?;
        Ok(Action {
            id: env.action.id,
            status: ActionStatus::parse(&env.action.status),
        })
    }
}

/// Reads the API token from a root-only file: refuses a file that group or
/// others may read, an empty file, or more than one word. No message
/// contains the file's contents.
pub fn read_token(path: &Path) -> Result<Secret, DoError> {
    use std::os::unix::fs::MetadataExt;
    let err = |message: String| DoError::Token {
        path: PathBuf::from(path),
        message,
    };
    let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
    if !meta.is_file() {
        return Err(err("is not a regular file".into()));
    }
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(DoError::TokenMode {
            path: PathBuf::from(path),
            mode,
        });
    }
    let raw = zeroize::Zeroizing::new(std::fs::read(path).map_err(|e| err(e.to_string()))?);
    let text = std::str::from_utf8(&raw).map_err(|_| err("is not UTF-8 text".into()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(err("is empty".into()));
    }
    if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(err("must hold one token and nothing else".into()));
    }
    Ok(Secret(token.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn token_file_rules() {
        let dir = tempfile_dir();
        let p = dir.join("do-token");
        std::fs::write(&p, "dop_v1_secret\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = read_token(&p).unwrap_err().to_string();
        assert!(e.contains("mode 644") && e.contains("do-token"), "{e}");
        assert!(!e.contains("dop_v1_secret"));

        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let t = read_token(&p).unwrap();
        assert_eq!(t.0, "dop_v1_secret");

        std::fs::write(&p, "two words").unwrap();
        let e = read_token(&p).unwrap_err().to_string();
        assert!(e.contains("one token") && !e.contains("words"), "{e}");
        std::fs::write(&p, "  \n").unwrap();
        assert!(read_token(&p).unwrap_err().to_string().contains("is empty"));
        let e = read_token(&dir.join("missing")).unwrap_err().to_string();
        assert!(e.contains("missing"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn outcome_labels() {
        assert_eq!(outcome_label(&Ok(201)), "ok");
        assert_eq!(outcome_label(&Ok(401)), "unauthorized");
        assert_eq!(outcome_label(&Ok(422)), "busy");
        assert_eq!(outcome_label(&Ok(429)), "rate_limited");
        assert_eq!(outcome_label(&Ok(503)), "server_error");
        let t = HttpError::Timeout(Duration::from_secs(1));
        assert_eq!(outcome_label(&Err(&t)), "timeout");
        assert_eq!(clean("a\nb\u{7}c"), "a b c");
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "kubeha-vip-token-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
