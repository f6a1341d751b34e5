//! Mapping `object_store` failures into imagestore's [`Error`], and telling transient failures
//! (throttling, 5xx, timeouts, dropped connections) from permanent ones.

use std::error::Error as _;

use imagestore_core::Error;

/// The scheme, used as the backend name in errors.
pub const BACKEND: &str = "s3";

/// True when trying the same request again may succeed.
pub fn is_transient(e: &object_store::Error) -> bool {
    use object_store::Error as E;
    match e {
        E::Generic { .. } | E::JoinError { .. } => {}
        _ => return false,
    }
    // Transport failures surface as an `HttpError` somewhere in the source chain.
    let mut cur: Option<&(dyn std::error::Error + 'static)> = e.source();
    while let Some(err) = cur {
        if err.is::<object_store::client::HttpError>() {
            return true;
        }
        cur = err.source();
    }
    // Status failures are only visible in the message.
    let text = e.to_string();
    if let Some(code) = status_code(&text) {
        return code >= 500 || code == 429 || code == 408;
    }
    // Anything else from the transport (a body cut short, a decode error) is worth a retry.
    true
}

/// The HTTP status code in an `object_store` error message, if it names one.
fn status_code(text: &str) -> Option<u16> {
    let at = text.find("status code: ")? + "status code: ".len();
    text.get(at..at + 3)?.parse().ok()
}

/// Maps an `object_store` error for `what` (an operation and the key it was on) into a backend
/// error; the caller handles the variants it gives a meaning (not found, already exists,
/// precondition) before calling this.
pub fn map(what: impl std::fmt::Display, e: object_store::Error) -> Error {
    use object_store::Error as E;
    let retryable = is_transient(&e);
    let message = match &e {
        E::PermissionDenied { .. } => format!("{what}: permission denied"),
        E::Unauthenticated { .. } => {
            format!("{what}: not authenticated (check the AWS credentials)")
        }
        E::NotFound { .. } => format!("{what}: object not found"),
        E::AlreadyExists { .. } => format!("{what}: object already exists"),
        E::Precondition { .. } => format!("{what}: precondition failed"),
        E::NotSupported { .. } | E::NotImplemented { .. } => {
            format!("{what}: not supported by this server: {e}")
        }
        _ => format!("{what}: {e}"),
    };
    Error::Backend {
        backend: BACKEND,
        message,
        retryable,
        source: Some(Box::new(e)),
    }
}

/// A backend error without an `object_store` source.
pub fn backend(message: impl Into<String>, retryable: bool) -> Error {
    Error::backend(BACKEND, message, retryable)
}

/// A stored object that does not parse.
pub fn corrupt(key: impl Into<String>, reason: impl std::fmt::Display) -> Error {
    Error::corrupt(key, reason.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_status_codes() {
        assert_eq!(
            status_code("Server returned non-2xx status code: 503 Service Unavailable"),
            Some(503)
        );
        assert_eq!(status_code("nothing"), None);
    }

    #[test]
    fn classifies() {
        let nf = object_store::Error::NotFound {
            path: "k".into(),
            source: "x".into(),
        };
        assert!(!is_transient(&nf));
        let g = object_store::Error::Generic {
            store: "S3",
            source: "Server returned non-2xx status code: 500 Internal Server Error".into(),
        };
        assert!(is_transient(&g));
        let g = object_store::Error::Generic {
            store: "S3",
            source: "Server returned non-2xx status code: 400 Bad Request: BadDigest".into(),
        };
        assert!(!is_transient(&g));
        let e = map("put a/b", g);
        assert!(e.to_string().contains("put a/b"), "{e}");
        assert!(!e.is_retryable());
    }
}
