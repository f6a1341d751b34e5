//! The wire form of [`Error`], shared by the HTTP server (`imagestore-server`) and the remote
//! backend (`imagestore-remote`), so that an error crosses the network and comes back as the
//! same typed variant.
//!
//! The body of every failed request of the server's native API is an [`ErrorBody`]:
//!
//! ```json
//! {"code": 423, "message": "image \"s/a\" in use by child b", "kind": "ImageInUse",
//!  "detail": {"image": "s/a", "users": ["child b"]}}
//! ```
//!
//! `code` is the HTTP status (VIC's `Error` model), `message` the error's text, `kind` the
//! [`Error`] variant and `detail` its fields. A backend's source error never crosses the wire
//! (it may name host paths); only its message does, and the server may redact that too.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::digest::Digest;
use crate::error::{Error, ObjectKind};

/// The JSON body of a failed request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The HTTP status.
    #[serde(default)]
    pub code: u16,
    /// The error's message.
    pub message: String,
    /// The [`Error`] variant (`NotFound`, `ImageInUse`, ...); absent on errors the server
    /// makes itself (bad routes, bad parameters), which come back as `InvalidArgument` or
    /// `Backend`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The variant's fields.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub detail: Value,
}

/// The HTTP status an error is answered with.
pub fn status_of(err: &Error) -> u16 {
    match err {
        Error::NotFound { .. } => 404,
        Error::AlreadyExists { .. } | Error::Conflict { .. } => 409,
        Error::ImageInUse { .. } => 423,
        Error::QuotaExceeded { .. } => 507,
        Error::DigestMismatch { .. } | Error::BadArchive { .. } => 422,
        Error::InvalidArgument(_) => 400,
        Error::LimitExceeded { .. } => 413,
        Error::Unsupported { .. } => 501,
        Error::Backend {
            retryable: true, ..
        } => 503,
        Error::Corrupt { .. } | Error::UnknownScheme { .. } | Error::Backend { .. } => 500,
    }
}

fn kind_name(k: ObjectKind) -> &'static str {
    match k {
        ObjectKind::Store => "Store",
        ObjectKind::Image => "Image",
        ObjectKind::Writable => "Writable",
        ObjectKind::Owner => "Owner",
        ObjectKind::Path => "Path",
        ObjectKind::Reference => "Reference",
        ObjectKind::Blob => "Blob",
    }
}

fn kind_from(s: &str) -> ObjectKind {
    match s {
        "Store" => ObjectKind::Store,
        "Writable" => ObjectKind::Writable,
        "Owner" => ObjectKind::Owner,
        "Path" => ObjectKind::Path,
        "Reference" => ObjectKind::Reference,
        "Blob" => ObjectKind::Blob,
        _ => ObjectKind::Image,
    }
}

/// Most distinct `&'static str` values (limit names, operations, backend schemes) the wire
/// interns; past it, new ones read `"remote"`. Errors only ever carry a handful.
const MAX_INTERNED: usize = 256;

/// A `&'static str` for a name read off the wire: the [`Error`] fields that are static in
/// the library (limit names, operations, backends) are interned once each, in a bounded
/// table, so that a hostile server cannot make a client leak memory.
fn static_name(s: &str) -> &'static str {
    static TABLE: std::sync::Mutex<Vec<&'static str>> = std::sync::Mutex::new(Vec::new());
    let Ok(mut table) = TABLE.lock() else {
        return "remote";
    };
    if let Some(n) = table.iter().find(|n| **n == s) {
        return n;
    }
    if table.len() >= MAX_INTERNED || s.len() > 200 {
        return "remote";
    }
    let leaked: &'static str = Box::leak(s.to_owned().into_boxed_str());
    table.push(leaked);
    leaked
}

impl ErrorBody {
    /// The wire form of `err`, with its HTTP status.
    pub fn from_error(err: &Error) -> ErrorBody {
        let (kind, detail) = match err {
            Error::NotFound { kind, name } => {
                ("NotFound", json!({"kind": kind_name(*kind), "name": name}))
            }
            Error::AlreadyExists { kind, name } => (
                "AlreadyExists",
                json!({"kind": kind_name(*kind), "name": name}),
            ),
            Error::Conflict { kind, name, reason } => (
                "Conflict",
                json!({"kind": kind_name(*kind), "name": name, "reason": reason}),
            ),
            Error::ImageInUse { image, users } => {
                ("ImageInUse", json!({"image": image, "users": users}))
            }
            Error::QuotaExceeded {
                store,
                usage,
                size,
                quota,
            } => (
                "QuotaExceeded",
                json!({"store": store, "usage": usage, "size": size, "quota": quota}),
            ),
            Error::DigestMismatch { expected, actual } => (
                "DigestMismatch",
                json!({"expected": expected.to_string(), "actual": actual.to_string()}),
            ),
            Error::InvalidArgument(m) => ("InvalidArgument", json!({"message": m})),
            Error::BadArchive { entry, reason } => {
                ("BadArchive", json!({"entry": entry, "reason": reason}))
            }
            Error::LimitExceeded { what, value, max } => (
                "LimitExceeded",
                json!({"what": what, "value": value, "max": max}),
            ),
            Error::Corrupt { object, reason } => {
                ("Corrupt", json!({"object": object, "reason": reason}))
            }
            Error::UnknownScheme {
                scheme,
                available,
                hint,
            } => (
                "UnknownScheme",
                json!({"scheme": scheme, "available": available, "hint": hint}),
            ),
            Error::Unsupported { operation, backend } => (
                "Unsupported",
                json!({"operation": operation, "backend": backend}),
            ),
            Error::Backend {
                backend,
                message,
                retryable,
                ..
            } => (
                "Backend",
                json!({"backend": backend, "message": message, "retryable": retryable}),
            ),
        };
        ErrorBody {
            code: status_of(err),
            message: err.to_string(),
            kind: Some(kind.to_owned()),
            detail,
        }
    }

    /// The typed error this body describes. A body without a known `kind` (or with fields
    /// missing) becomes an [`Error::Backend`] of backend `remote` carrying the message, marked
    /// retryable for 502, 503 and 504.
    pub fn into_error(self) -> Error {
        let d = &self.detail;
        let s = |k: &str| d.get(k).and_then(Value::as_str).map(str::to_owned);
        let n = |k: &str| d.get(k).and_then(Value::as_u64);
        let digest = |k: &str| s(k).and_then(|v| v.parse::<Digest>().ok());
        let strings = |k: &str| -> Vec<String> {
            d.get(k)
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default()
        };
        let typed = match self.kind.as_deref() {
            Some("NotFound") => s("name").map(|name| Error::NotFound {
                kind: kind_from(&s("kind").unwrap_or_default()),
                name,
            }),
            Some("AlreadyExists") => s("name").map(|name| Error::AlreadyExists {
                kind: kind_from(&s("kind").unwrap_or_default()),
                name,
            }),
            Some("Conflict") => s("name").map(|name| Error::Conflict {
                kind: kind_from(&s("kind").unwrap_or_default()),
                name,
                reason: s("reason").unwrap_or_default(),
            }),
            Some("ImageInUse") => s("image").map(|image| Error::ImageInUse {
                image,
                users: strings("users"),
            }),
            Some("QuotaExceeded") => s("store").map(|store| Error::QuotaExceeded {
                store,
                usage: n("usage").unwrap_or(0),
                size: n("size").unwrap_or(0),
                quota: n("quota").unwrap_or(0),
            }),
            Some("DigestMismatch") => digest("expected")
                .zip(digest("actual"))
                .map(|(expected, actual)| Error::DigestMismatch { expected, actual }),
            Some("InvalidArgument") => s("message").map(Error::InvalidArgument),
            Some("BadArchive") => s("reason").map(|reason| Error::BadArchive {
                entry: s("entry"),
                reason,
            }),
            Some("LimitExceeded") => s("what").map(|what| Error::LimitExceeded {
                what: static_name(&what),
                value: n("value").unwrap_or(0),
                max: n("max").unwrap_or(0),
            }),
            Some("Corrupt") => s("object").map(|object| Error::Corrupt {
                object,
                reason: s("reason").unwrap_or_default(),
            }),
            Some("UnknownScheme") => s("scheme").map(|scheme| Error::UnknownScheme {
                scheme,
                available: strings("available"),
                hint: s("hint"),
            }),
            Some("Unsupported") => s("operation").map(|op| Error::Unsupported {
                operation: static_name(&op),
                backend: static_name(&s("backend").unwrap_or_default()),
            }),
            Some("Backend") => s("message").map(|message| Error::Backend {
                backend: static_name(&s("backend").unwrap_or_default()),
                message,
                retryable: d.get("retryable").and_then(Value::as_bool).unwrap_or(false),
                source: None,
            }),
            _ => None,
        };
        typed.unwrap_or_else(|| Error::Backend {
            backend: "remote",
            message: format!("server answered {}: {}", self.code, self.message),
            retryable: matches!(self.code, 502..=504),
            source: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(e: Error) -> Result<(), serde_json::Error> {
        let body = ErrorBody::from_error(&e);
        let text = serde_json::to_string(&body)?;
        let back: ErrorBody = serde_json::from_str(&text)?;
        let again = back.into_error();
        assert_eq!(again.to_string(), e.to_string(), "{text}");
        assert_eq!(status_of(&again), status_of(&e));
        Ok(())
    }

    #[test]
    fn every_variant_crosses_the_wire() -> Result<(), Box<dyn std::error::Error>> {
        let d: Digest = format!("sha256:{}", "a".repeat(64)).parse()?;
        let d2: Digest = format!("sha256:{}", "b".repeat(64)).parse()?;
        round_trip(Error::not_found(ObjectKind::Reference, "s/r:1"))?;
        round_trip(Error::already_exists(ObjectKind::Store, "s"))?;
        round_trip(Error::Conflict {
            kind: ObjectKind::Image,
            name: "s/a".into(),
            reason: "other sum".into(),
        })?;
        round_trip(Error::ImageInUse {
            image: "s/a".into(),
            users: vec!["child b".into(), "reference r".into()],
        })?;
        round_trip(Error::QuotaExceeded {
            store: "s".into(),
            usage: 1,
            size: 2,
            quota: 2,
        })?;
        round_trip(Error::DigestMismatch {
            expected: d,
            actual: d2,
        })?;
        round_trip(Error::invalid("bad"))?;
        round_trip(Error::bad_entry("../x", "escapes"))?;
        round_trip(Error::bad_archive("truncated"))?;
        round_trip(Error::LimitExceeded {
            what: "chain depth",
            value: 9,
            max: 8,
        })?;
        round_trip(Error::corrupt("s/a toc", "short"))?;
        round_trip(Error::Unsupported {
            operation: "export_raw",
            backend: "vmdk",
        })?;
        round_trip(Error::backend("s3", "timeout", true))?;
        Ok(())
    }

    #[test]
    fn unknown_bodies_become_backend_errors() {
        let e = ErrorBody {
            code: 502,
            message: "bad gateway".into(),
            kind: None,
            detail: Value::Null,
        }
        .into_error();
        assert!(e.is_retryable());
        assert!(e.to_string().contains("bad gateway"));
    }
}
