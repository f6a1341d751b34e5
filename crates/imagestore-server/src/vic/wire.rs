//! What every VIC route shares: the `Error` answer, Go's `json.Encoder` output, go-swagger's
//! query-parameter and content-type rules, and VIC's image links and `Image` model.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, Uri, Version, header};
use axum::response::{IntoResponse, Response};
use futures::TryStreamExt;
use imagestore_core::{ByteStream, Error, Image, ObjectKind, StoreName, byte_stream};
use serde::Serialize;

use crate::error::{ErrorKind, Redactor};

/// VIC's `Error` model: `code` omitted when 0.
#[derive(Debug, Serialize)]
struct ErrorJson {
    #[serde(skip_serializing_if = "is_zero")]
    code: i64,
    message: String,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

/// A failed VIC request: a status, and VIC's `Error` body unless the route answers errors
/// without one (`/archive`, as VIC does).
#[derive(Debug)]
pub(crate) struct VicError {
    status: StatusCode,
    body: Option<ErrorJson>,
    /// What the metrics count it as: the core error's variant, or what the request got wrong.
    kind: String,
}

impl VicError {
    /// `status` with `{"code":<status>,"message":…}`.
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> VicError {
        VicError {
            status,
            body: Some(ErrorJson {
                code: i64::from(status.as_u16()),
                message: message.into(),
            }),
            kind: "Request".to_owned(),
        }
    }

    /// go-swagger's 422 for a missing required parameter: code 602.
    pub(crate) fn required(name: &str, place: &str) -> VicError {
        VicError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            body: Some(ErrorJson {
                code: 602,
                message: format!("{name} in {place} is required"),
            }),
            kind: "Parameter".to_owned(),
        }
    }

    /// The answer for a core error: the status of [`status_of`], its redacted message.
    pub(crate) fn from_core(err: &Error, redactor: &Redactor) -> VicError {
        VicError {
            kind: imagestore_core::wire::ErrorBody::from_error(err)
                .kind
                .unwrap_or_else(|| "Backend".to_owned()),
            ..VicError::new(status_of(err), redactor.redact(&err.to_string()))
        }
    }

    /// The same status without a body (VIC's `/archive` errors carry none).
    pub(crate) fn bare(mut self) -> VicError {
        self.body = None;
        self
    }

    /// The status it answers with.
    #[cfg(test)]
    pub(crate) fn status(&self) -> StatusCode {
        self.status
    }
}

impl IntoResponse for VicError {
    fn into_response(self) -> Response {
        let mut resp = match &self.body {
            Some(b) => go_json(self.status, b),
            None => self.status.into_response(),
        };
        resp.extensions_mut().insert(ErrorKind(self.kind));
        resp
    }
}

/// The HTTP status a core error answers with on VIC's routes: the native API's
/// ([`imagestore_core::wire::status_of`]), except that a malformed argument is go-swagger's
/// 422 rather than 400.
pub(crate) fn status_of(err: &Error) -> StatusCode {
    match imagestore_core::wire::status_of(err) {
        400 => StatusCode::UNPROCESSABLE_ENTITY,
        n => StatusCode::from_u16(n).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
    }
}

/// True if `err` says the store itself does not exist.
pub(crate) fn is_store_missing(err: &Error) -> bool {
    matches!(
        err,
        Error::NotFound {
            kind: ObjectKind::Store,
            ..
        }
    )
}

/// True if `err` is a `NotFound` of anything.
pub(crate) fn is_not_found(err: &Error) -> bool {
    matches!(err, Error::NotFound { .. })
}

/// `v` as Go's `json.Encoder` writes it (`<`, `>`, `&`, U+2028 and U+2029 escaped, a final
/// newline), with `Content-Type: application/json`.
pub(crate) fn go_json<T: Serialize>(status: StatusCode, v: &T) -> Response {
    let text = match serde_json::to_string(v) {
        Ok(t) => t,
        Err(e) => {
            // Only a map with non-string keys fails, and no model has one.
            tracing::error!(error = %e, "encoding a VIC answer");
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
    };
    let mut out = String::with_capacity(text.len() + 1);
    for c in text.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out.push('\n');
    let mut resp = (status, out).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// The query of a request as go-swagger reads it: form-decoded, the last occurrence of a
/// name wins, an empty value counts as absent.
#[derive(Debug, Default)]
pub(crate) struct Query(Vec<(String, String)>);

impl Query {
    /// The query of `uri`.
    pub(crate) fn of(uri: &Uri) -> Query {
        Query(
            url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    /// The last value of `name`, if present and non-empty.
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }

    /// The last value of required `name`; go-swagger's 422/602 if absent or empty.
    pub(crate) fn required(&self, name: &str) -> Result<&str, VicError> {
        self.get(name)
            .ok_or_else(|| VicError::required(name, "query"))
    }

    /// A csv array: the last value of `name` split on `,`, each element trimmed, empty
    /// elements dropped.
    pub(crate) fn csv(&self, name: &str) -> Vec<String> {
        self.get(name)
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A required boolean as go-swagger reads it (`swag.ConvertBool`): true for `true`, `1`,
    /// `yes`, `ok`, `y`, `on`, `selected`, `checked`, `t` and `enabled` in any case; any other
    /// value is false, not an error.
    pub(crate) fn required_bool(&self, name: &str) -> Result<bool, VicError> {
        let v = self.required(name)?.trim().to_ascii_lowercase();
        Ok(matches!(
            v.as_str(),
            "true" | "1" | "yes" | "ok" | "y" | "on" | "selected" | "checked" | "t" | "enabled"
        ))
    }
}

/// True if the request has a body: on HTTP/1, `Content-Length` > 0 or chunked (as Go's
/// server decides); on HTTP/2, a stream that does not end with its headers.
pub(crate) fn has_body(req: &Request) -> bool {
    use axum::body::HttpBody as _;
    let headers = req.headers();
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let chunked = headers.get_all(header::TRANSFER_ENCODING).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.to_ascii_lowercase().contains("chunked"))
    });
    let streamed = req.version() >= Version::HTTP_2 && !req.body().is_end_stream();
    length > 0 || chunked || streamed
}

/// go-swagger's content-type rule: a request with a body must have one of `allowed`
/// (parameters and case ignored; a missing header is `application/octet-stream`), else 415.
pub(crate) fn check_consumes(req: &Request, allowed: &[&str]) -> Result<(), VicError> {
    let headers = req.headers();
    if !has_body(req) {
        return Ok(());
    }
    let given = headers
        .get(header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_else(|| "application/octet-stream".to_owned());
    let mime = given
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if allowed.contains(&mime.as_str()) {
        return Ok(());
    }
    Err(VicError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        format!(
            "unsupported media type {given:?}, only [{}] are allowed",
            allowed.join(" ")
        ),
    ))
}

/// A request body as a [`ByteStream`], read as the consumer reads it (backpressure: nothing
/// is buffered beyond hyper's frames).
pub(crate) fn body_stream(body: Body) -> ByteStream {
    let stream = body.into_data_stream().map_err(std::io::Error::other);
    byte_stream(tokio_util::io::StreamReader::new(stream))
}

/// VIC's links, built on the host name clients reach the server by.
#[derive(Debug, Clone)]
pub(crate) struct Links<'a> {
    host: &'a str,
}

impl<'a> Links<'a> {
    /// Links naming `host`.
    pub(crate) fn new(host: &'a str) -> Links<'a> {
        Links { host }
    }

    /// `http://<host>/storage/images/<store>`.
    pub(crate) fn store(&self, store: &str) -> String {
        format!("http://{}/storage/images/{store}", self.host)
    }

    /// `http://<host>/storage/images/<store>/<id>`.
    pub(crate) fn image(&self, store: &str, id: &str) -> String {
        format!("http://{}/storage/images/{store}/{id}", self.host)
    }

    /// VIC's `Image` model of `image`.
    pub(crate) fn model(&self, image: &Image) -> VicImage {
        let store = image.store.as_str();
        VicImage {
            id: image.id.to_string(),
            metadata: image
                .metadata
                .iter()
                .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
                .collect(),
            parent: image
                .parent
                .as_ref()
                .map(|p| self.image(store, p.as_str()))
                .unwrap_or_default(),
            self_link: self.image(store, image.id.as_str()),
            store: self.store(store),
        }
    }

    /// The store a `store` parameter of `/archive` names: a store name, or a store URL
    /// `http://<host>/storage/images/<name>` (compared as a whole URL). `None` if neither.
    pub(crate) fn store_param(&self, given: &str) -> Option<StoreName> {
        if let Ok(name) = StoreName::new(given) {
            return Some(name);
        }
        let url = url::Url::parse(given).ok()?;
        let ours = url::Url::parse(&self.store("x")).ok()?;
        let name = url.path().strip_prefix("/storage/images/")?;
        let same = url.scheme() == ours.scheme()
            && url.host() == ours.host()
            && url.port_or_known_default() == ours.port_or_known_default()
            && url.query().is_none()
            && url.fragment().is_none()
            && url.username().is_empty()
            && url.password().is_none();
        if !same {
            return None;
        }
        StoreName::new(name).ok()
    }

    /// The id of the image of `store` a keep-node URL names, compared as a whole URL with
    /// the images' `SelfLink`s; `None` when it names no image of the store.
    pub(crate) fn keep_node(&self, store: &str, given: &url::Url) -> Option<String> {
        let ours = url::Url::parse(&self.image(store, "x")).ok()?;
        let prefix = ours.as_str().strip_suffix('x')?;
        let id = given.as_str().strip_prefix(prefix)?;
        (!id.is_empty() && !id.contains(['/', '?', '#'])).then(|| id.to_owned())
    }
}

/// VIC's `Image` model (go-swagger's alphabetical field order; empty `Parent`, `SelfLink` and
/// `Metadata` omitted). Metadata values are the stored bytes as a string: invalid UTF-8 becomes U+FFFD
/// as Go's encoder makes it.
#[derive(Debug, Serialize)]
pub(crate) struct VicImage {
    #[serde(rename = "ID")]
    id: String,
    #[serde(rename = "Metadata", skip_serializing_if = "BTreeMap::is_empty")]
    metadata: BTreeMap<String, String>,
    #[serde(rename = "Parent", skip_serializing_if = "String::is_empty")]
    parent: String,
    #[serde(rename = "SelfLink", skip_serializing_if = "String::is_empty")]
    self_link: String,
    #[serde(rename = "Store")]
    store: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_escaped_as_go_does() {
        let resp = go_json(StatusCode::OK, &serde_json::json!({"m": "<a&b>\u{2028}"}));
        assert_eq!(resp.status(), StatusCode::OK);
        let text = futures::executor::block_on(async {
            axum::body::to_bytes(resp.into_body(), 1 << 10).await
        })
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
        assert_eq!(text, "{\"m\":\"\\u003ca\\u0026b\\u003e\\u2028\"}\n");
    }

    #[test]
    fn query_follows_go_swagger() {
        let uri: Uri = "/x?ids=a,+b+,,c&ids=d,%20e,&data=Banana&d2=ON&empty="
            .parse()
            .unwrap();
        let q = Query::of(&uri);
        assert_eq!(q.csv("ids"), vec!["d", "e"]);
        assert_eq!(q.required_bool("data").ok(), Some(false));
        assert_eq!(q.required_bool("d2").ok(), Some(true));
        assert!(q.get("empty").is_none());
        assert_eq!(
            q.required("empty").err().map(|e| e.status()),
            Some(StatusCode::UNPROCESSABLE_ENTITY)
        );
    }

    #[test]
    fn store_and_keep_urls_compare_whole() {
        let l = Links::new("h:1");
        assert_eq!(l.store_param("s").map(|s| s.to_string()), Some("s".into()));
        assert_eq!(
            l.store_param("http://h:1/storage/images/s")
                .map(|s| s.to_string()),
            Some("s".into())
        );
        assert!(l.store_param("http://other/storage/images/s").is_none());
        let u = |s: &str| url::Url::parse(s).unwrap();
        assert_eq!(
            l.keep_node("s", &u("http://h:1/storage/images/s/a")),
            Some("a".into())
        );
        assert_eq!(
            l.keep_node("s", &u("HTTP://H:1/storage/images/s/a")),
            Some("a".into())
        );
        assert_eq!(l.keep_node("s", &u("https://h:1/storage/images/s/a")), None);
        assert_eq!(l.keep_node("s", &u("http://h:1/storage/images/t/a")), None);
        assert_eq!(
            l.keep_node("s", &u("http://h:1/storage/images/s/a?x")),
            None
        );
    }
}
