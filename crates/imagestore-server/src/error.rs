//! Failed requests: [`ApiError`] answers with the status of
//! [`imagestore_core::wire::status_of`] and an
//! [`ErrorBody`], after the [`Redactor`] has removed host paths and credentials from it.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use imagestore_core::Error;
use imagestore_core::wire::ErrorBody;
use serde_json::Value;

/// A failed request: the status and the [`ErrorBody`] it answers with.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    body: ErrorBody,
}

impl ApiError {
    /// The answer for `err` as `redactor` shows it.
    pub fn from_error(err: &Error, redactor: &Redactor) -> ApiError {
        let mut body = ErrorBody::from_error(err);
        redactor.redact_body(&mut body);
        ApiError {
            status: StatusCode::from_u16(body.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            body,
        }
    }

    /// An error the server makes itself (bad route, bad header), without a `kind`.
    pub fn plain(status: StatusCode, code: u16, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            body: ErrorBody {
                code,
                message: message.into(),
                kind: None,
                detail: Value::Null,
            },
        }
    }

    /// The status it answers with.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The body it answers with.
    pub fn body(&self) -> &ErrorBody {
        &self.body
    }
}

tokio::task_local! {
    /// The redactor of the server answering the current request (set by the request
    /// layers), so that `?` on a core error redacts as the server was told.
    static REDACTOR: std::sync::Arc<Redactor>;
}

/// Runs `fut` with `redactor` as the one [`ApiError::from`] uses.
pub(crate) async fn with_redactor<F: std::future::Future>(
    redactor: std::sync::Arc<Redactor>,
    fut: F,
) -> F::Output {
    REDACTOR.scope(redactor, fut).await
}

impl From<Error> for ApiError {
    /// The answer for `err` as the redactor of the server answering the request shows it
    /// (outside a request: URL secrets and absolute paths redacted).
    fn from(err: Error) -> ApiError {
        REDACTOR
            .try_with(|r| ApiError::from_error(&err, r))
            .unwrap_or_else(|_| ApiError::from_error(&err, &Redactor::default()))
    }
}

/// The `kind` of an error body, kept in the response's extensions for the metrics layer.
#[derive(Debug, Clone)]
pub(crate) struct ErrorKind(pub(crate) String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let kind = ErrorKind(self.body.kind.clone().unwrap_or_else(|| "Http".to_owned()));
        let mut resp = (self.status, Json(self.body)).into_response();
        resp.extensions_mut().insert(kind);
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        resp
    }
}

/// What an error shown to a client hides: the store's root (a host path), every absolute
/// host path in backend messages, and the secrets of every URL.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    roots: Vec<String>,
}

/// What a hidden host path reads as.
const HIDDEN_PATH: &str = "<path>";

impl Redactor {
    /// A redactor that also hides `roots` (the store's directory, its URL) wherever they
    /// appear.
    pub fn new(roots: impl IntoIterator<Item = String>) -> Redactor {
        let mut roots: Vec<String> = roots
            .into_iter()
            .filter(|r| r.len() > 1)
            .map(|r| r.trim_end_matches('/').to_owned())
            .filter(|r| !r.is_empty())
            .collect();
        // Longest first, so a root inside another is replaced after it.
        roots.sort_by_key(|r| std::cmp::Reverse(r.len()));
        Redactor { roots }
    }

    /// `text` with the roots, URL secrets and host paths hidden.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for root in &self.roots {
            if out.contains(root.as_str()) {
                out = out.replace(root.as_str(), HIDDEN_PATH);
            }
        }
        out.split_inclusive(char::is_whitespace)
            .map(redact_token)
            .collect()
    }

    fn redact_body(&self, body: &mut ErrorBody) {
        body.message = self.redact(&body.message);
        self.redact_value(&mut body.detail);
    }

    fn redact_value(&self, v: &mut Value) {
        match v {
            Value::String(s) => *s = self.redact(s),
            Value::Array(a) => a.iter_mut().for_each(|v| self.redact_value(v)),
            Value::Object(o) => o.values_mut().for_each(|v| self.redact_value(v)),
            _ => {}
        }
    }
}

/// One whitespace-separated token (with its trailing whitespace) of a message: a URL keeps
/// its scheme and host only when it is a `file:` URL (its path is a host path) and loses its
/// secrets otherwise; an absolute path of more than one component becomes `<path>`.
fn redact_token(token: &str) -> String {
    let body = token.trim_end();
    let trail = &token[body.len()..];
    // Quotes and punctuation around the token stay.
    let start = body
        .find(|c: char| c.is_alphanumeric() || c == '/')
        .unwrap_or(body.len());
    let (lead, core) = body.split_at(start);
    let end = core
        .char_indices()
        .rfind(|(_, c)| c.is_alphanumeric() || *c == '/' || *c == '*')
        .map_or(0, |(i, c)| i + c.len_utf8());
    let (core, tail) = core.split_at(end);
    let shown = if let Some(rest) = core.strip_prefix("file:") {
        if rest.is_empty() {
            core.to_owned()
        } else {
            format!("file://{HIDDEN_PATH}")
        }
    } else if core.contains("://") {
        imagestore_core::redact::redact(core)
    } else if core.starts_with('/') && core.trim_matches('/').contains('/') {
        HIDDEN_PATH.to_owned()
    } else {
        core.to_owned()
    };
    format!("{lead}{shown}{tail}{trail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roots_paths_and_secrets_are_hidden() {
        let r = Redactor::new(["/srv/store".to_owned()]);
        let e = Error::backend(
            "file",
            "/srv/store/s/images/a/layer: permission denied; also /var/lib/x/y and s3://u:MARKER@b/k",
            false,
        );
        let body = ApiError::from_error(&e, &r).body;
        assert!(!body.message.contains("/srv"), "{}", body.message);
        assert!(!body.message.contains("/var/lib"), "{}", body.message);
        assert!(!body.message.contains("MARKER"), "{}", body.message);
        assert!(body.message.contains("permission denied"));
        let detail = body.detail.to_string();
        assert!(
            !detail.contains("/srv") && !detail.contains("MARKER"),
            "{detail}"
        );
        assert_eq!(
            r.redact("store \"file:///srv/other/x\" gone"),
            "store \"file://<path>\" gone"
        );
        assert_eq!(r.redact("image \"s/a\" in use"), "image \"s/a\" in use");
        // A token ending in a multi-byte letter is cut at a character boundary.
        assert_eq!(r.redact("name \"lÅ\" bad"), "name \"lÅ\" bad");
    }
}
