//! Mapping `object_store` failures into imagestore's [`Error`], and telling transient failures
//! (throttling, 5xx, timeouts, dropped connections) from permanent ones.
//!
//! [`classify`] decides from types: `object_store`'s error variants, the transport's
//! [`HttpError`] in the source chain, and a server's answer as an HTTP status plus the S3 error
//! code its XML body names ([`Refusal`]).

use std::error::Error as _;

use http::StatusCode;
use imagestore_core::Error;
use object_store::client::HttpError;

use crate::xml::{ErrorBody, MAX_ERROR_BODY};

/// The scheme, used as the backend name in errors.
pub const BACKEND: &str = "s3";

/// A server's answer to a failed request: its status and what its XML error body says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The request it answered (`ListMultipartUploads`), empty when not known.
    pub request: &'static str,
    /// The HTTP status.
    pub status: StatusCode,
    /// The S3 error code and message of the body, if it was an S3 error document.
    pub body: ErrorBody,
}

impl Refusal {
    /// The answer `status` with body `bytes` (at most [`MAX_ERROR_BODY`] of them are read) to
    /// `request`.
    pub fn new(request: &'static str, status: StatusCode, bytes: &[u8]) -> Refusal {
        let bytes = &bytes[..bytes.len().min(MAX_ERROR_BODY)];
        let body = std::str::from_utf8(bytes)
            .ok()
            .and_then(ErrorBody::parse)
            .unwrap_or_default();
        Refusal {
            request,
            status,
            body,
        }
    }

    /// The answer behind a failure of a request `object_store` made, if the server answered.
    ///
    /// `object_store` keeps its error type for answers (status and body) private; the one thing
    /// it exposes of it is its fixed rendering in the source chain (`Server returned non-2xx
    /// status code: <status>: <body>`, or `Server returned error response: <body>` for an error
    /// in a `200` answer), read here and nowhere else.
    fn of_object_store(e: &object_store::Error) -> Option<Refusal> {
        const STATUS: &str = "Server returned non-2xx status code: ";
        const IN_200: &str = "Server returned error response: ";
        let mut cur: Option<&(dyn std::error::Error + 'static)> = e.source();
        while let Some(err) = cur {
            let text = err.to_string();
            if let Some(rest) = text.strip_prefix(STATUS) {
                let status = StatusCode::from_bytes(rest.get(..3)?.as_bytes()).ok()?;
                let body = rest
                    .strip_prefix(status.to_string().as_str())
                    .and_then(|b| b.strip_prefix(": "))
                    .unwrap_or_default();
                return Some(Refusal::new("", status, body.as_bytes()));
            }
            if let Some(body) = text.strip_prefix(IN_200) {
                return Some(Refusal::new("", StatusCode::OK, body.as_bytes()));
            }
            cur = err.source();
        }
        None
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if !self.request.is_empty() {
            write!(f, "{}: ", self.request)?;
        }
        write!(f, "server answered {}", self.status)?;
        match (&self.body.code, &self.body.message) {
            (Some(c), Some(m)) => write!(f, " ({c}: {m})"),
            (Some(c), None) => write!(f, " ({c})"),
            (None, Some(m)) => write!(f, " ({m})"),
            (None, None) => Ok(()),
        }
    }
}

impl std::error::Error for Refusal {}

/// What a failed request means to the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The object (or upload) does not exist.
    NotFound,
    /// The object still has the ETag the request named (`If-None-Match`).
    NotModified,
    /// A condition (`If-Match`, `If-None-Match: *`) did not hold.
    Precondition,
    /// The object exists, or a conflicting request is in progress (409).
    Conflict,
    /// Credentials missing, wrong or not allowed (401, 403).
    Denied,
    /// The server does not implement the request.
    Unsupported,
    /// A read starts at or past the end of the object (416, `InvalidRange`).
    PastEnd,
    /// The server refused the request as sent (other 4xx): sending it again cannot help.
    Refused,
    /// The server asks for fewer requests (429, `SlowDown`).
    Throttled,
    /// The server timed out waiting for the request (408, `RequestTimeout`).
    Timeout,
    /// The server failed (5xx, `InternalError`, an error in a `200` answer).
    Server,
    /// The connection failed, broke or timed out, or the body was cut short.
    Transport,
    /// Not an answer nor a transport failure, but from the request's course (a task that did
    /// not finish, an answer that did not parse).
    Interrupted,
    /// A failure before any request (configuration, an invalid path).
    Local,
}

impl Failure {
    /// True when sending the same request again may succeed.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            Failure::Throttled
                | Failure::Timeout
                | Failure::Server
                | Failure::Transport
                | Failure::Interrupted
        )
    }

    /// What an answer with `status` and S3 error code `code` means. The code decides where it
    /// is one S3 documents as transient or unsupported (S3 sends `RequestTimeout` with a 400);
    /// otherwise the status does.
    pub fn of_answer(status: StatusCode, code: Option<&str>) -> Failure {
        match code {
            Some("SlowDown" | "Throttling" | "ThrottlingException" | "TooManyRequests") => {
                return Failure::Throttled;
            }
            Some("RequestTimeout") => return Failure::Timeout,
            Some("InternalError" | "ServiceUnavailable") => return Failure::Server,
            Some("NotImplemented") => return Failure::Unsupported,
            Some("InvalidRange") => return Failure::PastEnd,
            _ => {}
        }
        match status {
            StatusCode::NOT_FOUND => Failure::NotFound,
            StatusCode::NOT_MODIFIED => Failure::NotModified,
            StatusCode::PRECONDITION_FAILED => Failure::Precondition,
            StatusCode::CONFLICT => Failure::Conflict,
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Failure::Denied,
            StatusCode::RANGE_NOT_SATISFIABLE => Failure::PastEnd,
            StatusCode::TOO_MANY_REQUESTS => Failure::Throttled,
            StatusCode::REQUEST_TIMEOUT => Failure::Timeout,
            StatusCode::NOT_IMPLEMENTED => Failure::Unsupported,
            // An error document in a `200` answer (S3 does that to `CompleteMultipartUpload`).
            s if s.is_server_error() || s.is_success() => Failure::Server,
            _ => Failure::Refused,
        }
    }
}

/// What failure `e` is.
pub fn classify(e: &object_store::Error) -> Failure {
    use object_store::Error as E;
    match e {
        E::NotFound { .. } => return Failure::NotFound,
        E::NotModified { .. } => return Failure::NotModified,
        E::Precondition { .. } => return Failure::Precondition,
        E::AlreadyExists { .. } => return Failure::Conflict,
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => return Failure::Denied,
        E::NotSupported { .. } | E::NotImplemented { .. } => return Failure::Unsupported,
        E::JoinError { .. } => return Failure::Interrupted,
        E::Generic { .. } => {}
        _ => return Failure::Local,
    }
    let mut cur: Option<&(dyn std::error::Error + 'static)> = e.source();
    while let Some(err) = cur {
        if err.is::<HttpError>() {
            return Failure::Transport;
        }
        if let Some(r) = err.downcast_ref::<Refusal>() {
            return Failure::of_answer(r.status, r.body.code.as_deref());
        }
        cur = err.source();
    }
    match Refusal::of_object_store(e) {
        Some(r) => Failure::of_answer(r.status, r.body.code.as_deref()),
        // Anything else on the way (a body that did not decode) is worth a retry.
        None => Failure::Interrupted,
    }
}

/// True when trying the same request again may succeed.
pub fn is_transient(e: &object_store::Error) -> bool {
    classify(e).is_retryable()
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

    fn generic(source: Box<dyn std::error::Error + Send + Sync>) -> object_store::Error {
        object_store::Error::Generic {
            store: "S3",
            source,
        }
    }

    fn xml(code: &str) -> String {
        format!(
            r#"<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>m &amp; n</Message><RequestId>1</RequestId></Error>"#
        )
    }

    #[test]
    fn answers_by_status_and_code() {
        use Failure as F;
        let s = |n: u16| StatusCode::from_u16(n).expect("valid status");
        let table: &[(u16, Option<&str>, Failure)] = &[
            (500, Some("InternalError"), F::Server),
            (503, Some("SlowDown"), F::Throttled),
            (503, Some("ServiceUnavailable"), F::Server),
            (503, None, F::Server),
            (502, None, F::Server),
            (429, None, F::Throttled),
            (400, Some("Throttling"), F::Throttled),
            (400, Some("RequestTimeout"), F::Timeout),
            (408, None, F::Timeout),
            (200, Some("InternalError"), F::Server),
            (200, None, F::Server),
            (501, Some("NotImplemented"), F::Unsupported),
            (501, None, F::Unsupported),
            (416, Some("InvalidRange"), F::PastEnd),
            (416, None, F::PastEnd),
            (404, Some("NoSuchKey"), F::NotFound),
            (404, Some("NoSuchUpload"), F::NotFound),
            (304, None, F::NotModified),
            (412, Some("PreconditionFailed"), F::Precondition),
            (409, Some("ConditionalRequestConflict"), F::Conflict),
            (403, Some("AccessDenied"), F::Denied),
            (403, Some("RequestTimeTooSkewed"), F::Denied),
            (401, None, F::Denied),
            (400, Some("BadDigest"), F::Refused),
            (400, Some("EntityTooSmall"), F::Refused),
            (400, None, F::Refused),
            (411, Some("MissingContentLength"), F::Refused),
            (405, Some("MethodNotAllowed"), F::Refused),
        ];
        for &(status, code, want) in table {
            assert_eq!(
                Failure::of_answer(s(status), code),
                want,
                "{status} {code:?}"
            );
            // The same answer as a failure of the backend's own request.
            let r = Refusal::new("R", s(status), code.map(xml).unwrap_or_default().as_bytes());
            assert_eq!(classify(&generic(Box::new(r))), want, "{status} {code:?}");
        }
        let retryable = [
            F::Throttled,
            F::Timeout,
            F::Server,
            F::Transport,
            F::Interrupted,
        ];
        for f in [
            F::NotFound,
            F::NotModified,
            F::Precondition,
            F::Conflict,
            F::Denied,
            F::Unsupported,
            F::PastEnd,
            F::Refused,
            F::Throttled,
            F::Timeout,
            F::Server,
            F::Transport,
            F::Interrupted,
            F::Local,
        ] {
            assert_eq!(f.is_retryable(), retryable.contains(&f), "{f:?}");
        }
    }

    #[test]
    fn object_store_variants() {
        use object_store::Error as E;
        type Source = Box<dyn std::error::Error + Send + Sync>;
        let on_path: [fn(String, Source) -> E; 6] = [
            |path, source| E::NotFound { path, source },
            |path, source| E::NotModified { path, source },
            |path, source| E::Precondition { path, source },
            |path, source| E::AlreadyExists { path, source },
            |path, source| E::PermissionDenied { path, source },
            |path, source| E::Unauthenticated { path, source },
        ];
        let wants = [
            Failure::NotFound,
            Failure::NotModified,
            Failure::Precondition,
            Failure::Conflict,
            Failure::Denied,
            Failure::Denied,
        ];
        let mut table: Vec<(E, Failure)> = on_path
            .into_iter()
            .map(|make| make("k".to_owned(), "x".into()))
            .zip(wants)
            .collect();
        table.extend([
            (E::NotSupported { source: "x".into() }, Failure::Unsupported),
            (
                E::UnknownConfigurationKey {
                    store: "S3",
                    key: "k".into(),
                },
                Failure::Local,
            ),
            (
                generic(Box::new(HttpError::new(
                    object_store::client::HttpErrorKind::Interrupted,
                    std::io::Error::other("reset"),
                ))),
                Failure::Transport,
            ),
            (
                generic("a body that did not decode".into()),
                Failure::Interrupted,
            ),
        ]);
        for (e, want) in table {
            assert_eq!(classify(&e), want, "{e}");
        }
    }

    /// An error rendered the way `object_store` renders a failed answer, with `display`
    /// (which names the path) above it.
    #[derive(Debug)]
    struct Wrapped {
        display: String,
        inner: Box<dyn std::error::Error + Send + Sync>,
    }

    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(&self.display)
        }
    }

    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(self.inner.as_ref())
        }
    }

    fn object_store_answer(answer: String) -> object_store::Error {
        generic(Box::new(Wrapped {
            // A key that looks like a status must not count.
            display: format!("Error performing PUT /b/layers/416/503 - {answer}"),
            inner: answer.into(),
        }))
    }

    #[test]
    fn object_store_answers() {
        let table = [
            (
                format!(
                    "Server returned non-2xx status code: 503 Service Unavailable: {}",
                    xml("SlowDown")
                ),
                Failure::Throttled,
            ),
            (
                "Server returned non-2xx status code: 500 Internal Server Error: ".to_owned(),
                Failure::Server,
            ),
            (
                format!(
                    "Server returned non-2xx status code: 400 Bad Request: {}",
                    xml("BadDigest")
                ),
                Failure::Refused,
            ),
            (
                format!(
                    "Server returned non-2xx status code: 400 Bad Request: {}",
                    xml("RequestTimeout")
                ),
                Failure::Timeout,
            ),
            (
                format!(
                    "Server returned non-2xx status code: 416 Range Not Satisfiable: {}",
                    xml("InvalidRange")
                ),
                Failure::PastEnd,
            ),
            (
                "Server returned non-2xx status code: 416 Range Not Satisfiable: ".to_owned(),
                Failure::PastEnd,
            ),
            (
                format!("Server returned error response: {}", xml("InternalError")),
                Failure::Server,
            ),
            (
                "Server returned non-2xx status code: 4".to_owned(),
                Failure::Interrupted,
            ),
            ("something else".to_owned(), Failure::Interrupted),
        ];
        for (answer, want) in table {
            assert_eq!(
                classify(&object_store_answer(answer.clone())),
                want,
                "{answer}"
            );
        }
    }

    #[test]
    fn refusals_read_a_bounded_body() {
        let r = Refusal::new(
            "ListMultipartUploads",
            StatusCode::FORBIDDEN,
            xml("AccessDenied").as_bytes(),
        );
        assert_eq!(r.body.code.as_deref(), Some("AccessDenied"));
        assert_eq!(
            r.to_string(),
            "ListMultipartUploads: server answered 403 Forbidden (AccessDenied: m & n)"
        );
        // Cut at the cap, the document is malformed.
        let big = format!(
            "<Error>{}<Code>SlowDown</Code></Error>",
            " ".repeat(MAX_ERROR_BODY)
        );
        let r = Refusal::new("", StatusCode::SERVICE_UNAVAILABLE, big.as_bytes());
        assert_eq!(r.body, ErrorBody::default());
        assert_eq!(r.to_string(), "server answered 503 Service Unavailable");
        let r = Refusal::new("", StatusCode::BAD_GATEWAY, b"\xff<html>");
        assert_eq!(r.body, ErrorBody::default());
    }

    #[test]
    fn maps_with_the_operation() {
        let g = object_store_answer(format!(
            "Server returned non-2xx status code: 400 Bad Request: {}",
            xml("BadDigest")
        ));
        let e = map("put a/b", g);
        assert!(e.to_string().contains("put a/b"), "{e}");
        assert!(!e.is_retryable());
        let e = map(
            "put a/b",
            object_store_answer(
                "Server returned non-2xx status code: 500 Internal Server Error: ".into(),
            ),
        );
        assert!(e.is_retryable());
    }
}
