//! The lab's error type: every variant names the command, file, node or
//! namespace it is about.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("`{argv}` failed ({status}): {stderr}")]
    Command {
        argv: String,
        status: String,
        stderr: String,
    },
    #[error("could not run `{argv}`: {source}")]
    Spawn {
        argv: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("namespace `{ns}`: {what}: {source}")]
    Netns {
        ns: String,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: bad lab state: {message}")]
    State { path: PathBuf, message: String },
    #[error("no node `{0}` in this lab")]
    NoNode(String),
    #[error("this lab needs root (network namespaces); running as uid {0}")]
    NotRoot(u32),
    #[error("`{tool}` not found (install it: {hint})")]
    MissingTool { tool: String, hint: &'static str },
    #[error("timed out after {secs:.1}s waiting for {what}")]
    Timeout { what: String, secs: f64 },
    #[error(
        "lab `{name}` is already up (owned by {owner}); run `kubeha-lab down --name {name}` first"
    )]
    AlreadyUp { name: String, owner: String },
    #[error("node `{node}`: {message}")]
    Node { node: String, message: String },
    #[error("agent socket {path}: {message}")]
    Agent { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = LabError> = std::result::Result<T, E>;

impl LabError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> LabError {
        LabError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn node(node: &str, message: impl Into<String>) -> LabError {
        LabError::Node {
            node: node.to_string(),
            message: message.into(),
        }
    }
}
