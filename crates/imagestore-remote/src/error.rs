//! Mapping what the network and the server say into imagestore's [`Error`].
//!
//! * A server's refusal (any status but 2xx) carries an [`ErrorBody`] (`imagestore_core::wire`):
//!   it becomes the same typed error the server's backend returned. A body that is not one
//!   (a proxy's page, a truncated answer) becomes a `Backend` error naming the status,
//!   retryable for 502, 503 and 504.
//! * A failure to reach the server or to finish an exchange (refused connection, reset,
//!   timeout) is a retryable `Backend` error of backend `remote`.
//! * A success whose body cannot be read as the contract's JSON is a non-retryable `Backend`
//!   error: the server does not speak this API version.
//!
//! No message ever holds the bearer token: it travels only in a header, which no error names.

use imagestore_core::Error;
use imagestore_core::wire::ErrorBody;

/// The name of this backend in errors.
pub const BACKEND: &str = "remote";

/// Most bytes of an error body read.
pub const MAX_ERROR_BODY: usize = 64 << 10;

/// A transport failure of `what` (the operation and its target), retryable.
pub fn transport(what: &str, e: reqwest::Error) -> Error {
    let mut message = format!("{what}: {}", describe(&e));
    if e.is_timeout() {
        message.push_str(" (timed out)");
    }
    Error::Backend {
        backend: BACKEND,
        message,
        retryable: true,
        source: Some(Box::new(e)),
    }
}

/// An error and its sources on one line, without repeating a source that its parent's message
/// already holds.
fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}

/// The error a server's refusal of `what` with `status` and `body` stands for.
pub fn refusal(what: &str, status: u16, body: &[u8]) -> Error {
    let body = &body[..body.len().min(MAX_ERROR_BODY)];
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(mut parsed) => {
            if parsed.code == 0 {
                parsed.code = status;
            }
            parsed.into_error()
        }
        Err(_) => {
            // Not the contract's body: keep a short, printable excerpt of what came.
            let text: String = String::from_utf8_lossy(body)
                .chars()
                .filter(|c| !c.is_control())
                .take(200)
                .collect();
            let text = text.trim();
            let message = if text.is_empty() {
                format!("{what}: no error body came with the answer")
            } else {
                format!("{what}: {text}")
            };
            ErrorBody {
                code: status,
                message,
                kind: None,
                detail: serde_json::Value::Null,
            }
            .into_error()
        }
    }
}

/// A success of `what` whose body is not what the contract says it is.
pub fn unreadable(what: &str, why: impl std::fmt::Display) -> Error {
    Error::backend(
        BACKEND,
        format!("{what}: the server's answer is not what the /v1 API says: {why}"),
        false,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use imagestore_core::{ObjectKind, is_image_in_use};

    #[test]
    fn typed_bodies_come_back_as_their_variant() {
        let sent = Error::ImageInUse {
            image: "s/a".into(),
            users: vec!["child b".into()],
        };
        let body = serde_json::to_vec(&ErrorBody::from_error(&sent)).unwrap_or_default();
        let got = refusal("DELETE /v1/stores/s/images/a", 423, &body);
        assert!(is_image_in_use(&got), "{got:?}");
        assert_eq!(got.to_string(), sent.to_string());

        let body = br#"{"code":404,"message":"no","kind":"NotFound","detail":{"kind":"Reference","name":"s/r:1"}}"#;
        match refusal("GET", 404, body) {
            Error::NotFound {
                kind: ObjectKind::Reference,
                name,
            } => assert_eq!(name, "s/r:1"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn foreign_bodies_become_backend_errors_by_status() {
        let e = refusal("GET /v1/info", 502, b"<html>\n<b>Bad Gateway</b></html>");
        match &e {
            Error::Backend {
                backend,
                message,
                retryable: true,
                ..
            } => {
                assert_eq!(*backend, "remote");
                assert!(message.contains("502") && message.contains("Bad Gateway"));
                assert!(!message.contains('\n'), "{message}");
            }
            other => panic!("{other:?}"),
        }
        assert!(!refusal("GET", 500, b"").is_retryable());
        assert!(refusal("GET", 503, b"{}").is_retryable());
        // A body without a status takes the answer's.
        assert!(refusal("GET", 504, br#"{"message":"slow"}"#).is_retryable());
    }

    #[tokio::test]
    async fn connection_failures_are_retryable_and_name_no_token() {
        // A port nothing listens on: bind one, then free it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or(9);
        let mut headers = reqwest::header::HeaderMap::new();
        if let Ok(mut v) = reqwest::header::HeaderValue::from_str("Bearer sekrit-token") {
            v.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, v);
        }
        imagestore_core::tls::install_crypto_provider();
        let client = reqwest::Client::builder()
            .default_headers(headers)
            .build()
            .unwrap_or_default();
        let err = match client
            .get(format!("http://127.0.0.1:{port}/v1/info"))
            .send()
            .await
        {
            Ok(r) => panic!("{port} answered {}", r.status()),
            Err(e) => transport("GET /v1/info", e),
        };
        assert!(err.is_retryable(), "{err:?}");
        let text = format!("{err} {err:?}");
        assert!(!text.contains("sekrit"), "{text}");
        assert!(text.contains("GET /v1/info"), "{text}");
    }
}
