//! The one public error type of imagestore.
//!
//! Every backend maps its private failures into [`Error`], so callers match on the same
//! variants whatever the storage behind the trait. Messages name the failing store, image,
//! path or archive entry; credentials never appear in them.

use std::fmt;
use std::path::Path;

use crate::digest::Digest;

/// Result alias used throughout imagestore.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What kind of object an error talks about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ObjectKind {
    /// An image store (a named collection of images).
    Store,
    /// An image (an immutable, committed layer).
    Image,
    /// A writable layer (a mutable child of an image).
    Writable,
    /// An owner registration on an image.
    Owner,
    /// A path inside an image.
    Path,
    /// A reference: a name for an image and its manifest.
    Reference,
    /// A content-addressed blob (a manifest or an image config).
    Blob,
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ObjectKind::Store => "image store",
            ObjectKind::Image => "image",
            ObjectKind::Writable => "writable layer",
            ObjectKind::Owner => "owner",
            ObjectKind::Path => "path",
            ObjectKind::Reference => "reference",
            ObjectKind::Blob => "blob",
        })
    }
}

/// Boxed source error carried by [`Error::Backend`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Every failure imagestore reports.
///
/// The enum is `#[non_exhaustive]`: match the variants you handle and keep a fallback arm.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The named object does not exist.
    #[error("{kind} {name:?} not found")]
    NotFound {
        /// What was looked for.
        kind: ObjectKind,
        /// Its name (store name, image id, `store/id`, owner or path).
        name: String,
    },

    /// The object already exists and the operation would create it again.
    #[error("{kind} {name:?} already exists")]
    AlreadyExists {
        /// What exists.
        kind: ObjectKind,
        /// Its name.
        name: String,
    },

    /// The request contradicts what is stored, for example the same image id with another sum.
    #[error("conflict on {kind} {name:?}: {reason}")]
    Conflict {
        /// What the conflict is about.
        kind: ObjectKind,
        /// Its name.
        name: String,
        /// What differs.
        reason: String,
    },

    /// The image cannot be deleted because child images, writable layers, writes in progress,
    /// owners or references use it.
    #[error("image {image:?} in use by {}", users.join(", "))]
    ImageInUse {
        /// The image that was to be deleted, as `store/id`.
        image: String,
        /// Who uses it: `child <id>`, `writable <id>`, `write <id>` (a write in progress on
        /// it), `owner <name>` or `reference <name>`.
        users: Vec<String>,
    },

    /// A write would push the store's usage past its quota; nothing of it remains.
    #[error(
        "store {store:?} quota exceeded: {usage} bytes used + {size} bytes written > quota {quota}"
    )]
    QuotaExceeded {
        /// The store.
        store: String,
        /// Bytes the store used before the write.
        usage: u64,
        /// Bytes the write would add.
        size: u64,
        /// The store's quota in bytes.
        quota: u64,
    },

    /// The bytes received do not hash to the expected sum.
    #[error("digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        /// The sum the caller gave.
        expected: Digest,
        /// The sum of what was received.
        actual: Digest,
    },

    /// An argument is malformed (bad name, bad URL, bad filter, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// A layer archive is malformed or hostile; nothing was stored.
    #[error("bad archive{}: {reason}", entry.as_ref().map(|e| format!(" at entry {e:?}")).unwrap_or_default())]
    BadArchive {
        /// The tar entry at fault, when there is one.
        entry: Option<String>,
        /// Why it was rejected.
        reason: String,
    },

    /// A configured limit would be exceeded (chain depth, decompressed size, ...).
    #[error("limit exceeded: {what} would be {value}, the maximum is {max}")]
    LimitExceeded {
        /// Which limit.
        what: &'static str,
        /// The value that was reached.
        value: u64,
        /// The limit.
        max: u64,
    },

    /// Stored data failed a consistency check (a damaged TOC, a missing layer file).
    #[error("corrupt {object}: {reason}")]
    Corrupt {
        /// What is damaged (`store/id toc`, a path or key).
        object: String,
        /// What is wrong with it.
        reason: String,
    },

    /// No backend is registered for the URL's scheme.
    #[error("unknown scheme {scheme:?}{}; available schemes: {}", hint.as_ref().map(|h| format!(" ({h})")).unwrap_or_default(), available.join(", "))]
    UnknownScheme {
        /// The scheme that was asked for.
        scheme: String,
        /// The schemes this build can open.
        available: Vec<String>,
        /// How to get the scheme, when it is a known one compiled out.
        hint: Option<String>,
    },

    /// The backend does not implement this operation.
    #[error("{operation} is not supported by the {backend} backend")]
    Unsupported {
        /// The operation.
        operation: &'static str,
        /// The backend (its scheme).
        backend: &'static str,
    },

    /// A storage failure below imagestore: I/O, network, server errors.
    #[error("{backend} backend: {message}")]
    Backend {
        /// The backend (its scheme).
        backend: &'static str,
        /// What failed, with the path or key involved.
        message: String,
        /// Whether trying again may succeed (throttling, timeouts, 5xx).
        retryable: bool,
        /// The underlying error.
        #[source]
        source: Option<BoxError>,
    },
}

impl Error {
    /// A not-found error.
    pub fn not_found(kind: ObjectKind, name: impl fmt::Display) -> Self {
        Error::NotFound {
            kind,
            name: name.to_string(),
        }
    }

    /// An already-exists error.
    pub fn already_exists(kind: ObjectKind, name: impl fmt::Display) -> Self {
        Error::AlreadyExists {
            kind,
            name: name.to_string(),
        }
    }

    /// An invalid-argument error.
    pub fn invalid(message: impl Into<String>) -> Self {
        Error::InvalidArgument(message.into())
    }

    /// A bad-archive error about one entry.
    pub fn bad_entry(entry: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::BadArchive {
            entry: Some(entry.into()),
            reason: reason.into(),
        }
    }

    /// A bad-archive error about the archive as a whole.
    pub fn bad_archive(reason: impl Into<String>) -> Self {
        Error::BadArchive {
            entry: None,
            reason: reason.into(),
        }
    }

    /// A non-retryable backend error wrapping an I/O failure on `path`.
    pub fn io(backend: &'static str, path: &Path, source: std::io::Error) -> Self {
        let retryable = matches!(
            source.kind(),
            std::io::ErrorKind::Interrupted
                | std::io::ErrorKind::WouldBlock
                | std::io::ErrorKind::TimedOut
        );
        Error::Backend {
            backend,
            message: format!("{}: {source}", path.display()),
            retryable,
            source: Some(Box::new(source)),
        }
    }

    /// A backend error with a message and no source.
    pub fn backend(backend: &'static str, message: impl Into<String>, retryable: bool) -> Self {
        Error::Backend {
            backend,
            message: message.into(),
            retryable,
            source: None,
        }
    }

    /// A corrupt-data error.
    pub fn corrupt(object: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Corrupt {
            object: object.into(),
            reason: reason.into(),
        }
    }

    /// True when the error says an image is in use (the seed's `IsErrImageInUse`).
    pub fn is_image_in_use(&self) -> bool {
        matches!(self, Error::ImageInUse { .. })
    }

    /// True for [`Error::NotFound`].
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound { .. })
    }

    /// True when trying the same call again may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Backend {
                retryable: true,
                ..
            }
        )
    }
}

/// True when `err` says an image is in use, like the seed's `IsErrImageInUse`.
pub fn is_image_in_use(err: &Error) -> bool {
    err.is_image_in_use()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_object() {
        let e = Error::not_found(ObjectKind::Image, "s/abc");
        assert_eq!(e.to_string(), "image \"s/abc\" not found");
        let e = Error::ImageInUse {
            image: "s/a".into(),
            users: vec!["child b".into(), "owner c1".into()],
        };
        assert_eq!(e.to_string(), "image \"s/a\" in use by child b, owner c1");
        assert!(is_image_in_use(&e));
        let e = Error::bad_entry("../x", "path escapes the root");
        assert_eq!(
            e.to_string(),
            "bad archive at entry \"../x\": path escapes the root"
        );
        let e = Error::UnknownScheme {
            scheme: "s4".into(),
            available: vec!["file".into()],
            hint: None,
        };
        assert_eq!(
            e.to_string(),
            "unknown scheme \"s4\"; available schemes: file"
        );
    }
}
