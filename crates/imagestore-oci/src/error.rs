//! The error type of OCI interop: one line each, naming the file, blob, layer or registry at
//! fault. Credentials and tokens never appear in messages.

use std::fmt;
use std::path::{Path, PathBuf};

use imagestore_core::Digest;

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong importing, pulling or exporting an image.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The image store refused or failed an operation.
    #[error(transparent)]
    Store(#[from] imagestore_core::Error),

    /// Reading or writing a local file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying failure.
        #[source]
        source: std::io::Error,
    },

    /// An input is malformed: not a layout or archive, a bad manifest, config or reference.
    #[error("{what}: {reason}")]
    Invalid {
        /// What was being read (`/path/index.json`, `manifest sha256:…`, `reference "x"`).
        what: String,
        /// What is wrong with it.
        reason: String,
    },

    /// Content did not hash to the digest that names it.
    #[error("{what}: digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        /// What was checked (`layer 2 blob`, `layer 1 diff_id`, `config`).
        what: String,
        /// The digest announced by the manifest, config or file name.
        expected: Digest,
        /// The digest of what was read.
        actual: Digest,
    },

    /// Something asked for does not exist (a tag in a layout, a platform in an index, a
    /// repository); the message says what and where.
    #[error("{0}")]
    NotFound(String),

    /// Another error, with what was being done when it happened (`layer 2 (sha256:…)`).
    #[error("{what}: {source}")]
    Context {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: Box<Error>,
    },

    /// A registry answered with an error or could not be reached.
    #[error("registry {registry}: {message}")]
    Registry {
        /// The registry host (and port).
        registry: String,
        /// What failed: the request (without credentials) and the answer.
        message: String,
        /// The HTTP status, when there was one.
        status: Option<u16>,
        /// Whether trying again may help (connection failures, 5xx, 429).
        retryable: bool,
    },

    /// A registry refused the credentials, or asked for credentials none were given for.
    #[error("registry {registry}: authentication failed: {message}")]
    Auth {
        /// The registry host (and port).
        registry: String,
        /// Why (never containing a password or token).
        message: String,
    },
}

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    /// An invalid-input error.
    pub fn invalid(what: impl fmt::Display, reason: impl fmt::Display) -> Self {
        Error::Invalid {
            what: what.to_string(),
            reason: reason.to_string(),
        }
    }

    /// Wraps an error with what was being done.
    pub fn context(what: impl fmt::Display, source: impl Into<Error>) -> Self {
        Error::Context {
            what: what.to_string(),
            source: Box::new(source.into()),
        }
    }

    /// True when the same call may succeed if tried again.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Registry { retryable, .. } => *retryable,
            Error::Store(e) => e.is_retryable(),
            Error::Context { source, .. } => source.is_retryable(),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_one_line_and_name_the_object() {
        let e = Error::invalid("/x/index.json", "no manifest tagged \"v1\"");
        assert_eq!(e.to_string(), "/x/index.json: no manifest tagged \"v1\"");
        let e = Error::io(
            "/nope/docker.tar",
            std::io::Error::from(std::io::ErrorKind::NotFound),
        );
        assert!(e.to_string().starts_with("/nope/docker.tar: "));
        let e = Error::Auth {
            registry: "127.0.0.1:5000".into(),
            message: "401 Unauthorized".into(),
        };
        assert_eq!(
            e.to_string(),
            "registry 127.0.0.1:5000: authentication failed: 401 Unauthorized"
        );
        assert!(!e.to_string().contains('\n'));
    }
}
