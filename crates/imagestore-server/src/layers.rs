//! What every request goes through: authentication (all routes but `/healthz`), VIC's
//! `Op-ID` rule, the body idle timeout, byte counting, metrics and the access log.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use tracing::Instrument;

use crate::AppState;
use crate::error::{ApiError, ErrorKind};

/// The header VIC's clients name their operation with.
pub(crate) const OP_ID: &str = "op-id";

/// The routes anyone may call without a token: liveness only.
const OPEN_ROUTES: &[&str] = &["/healthz"];

/// How long a request body may send nothing before the request fails, unless the server
/// says otherwise.
pub(crate) const DEFAULT_BODY_IDLE: Duration = Duration::from_secs(60);

/// Wraps `routes` in the request layers.
pub(crate) fn apply(routes: Router<AppState>, state: AppState) -> Router<AppState> {
    routes.layer(middleware::from_fn_with_state(state, track))
}

/// The answer for a path no route serves.
pub(crate) async fn not_found() -> ApiError {
    ApiError::plain(StatusCode::NOT_FOUND, 404, "path not found")
}

/// The answer for a method a route does not serve.
pub(crate) async fn method_not_allowed() -> ApiError {
    ApiError::plain(
        StatusCode::METHOD_NOT_ALLOWED,
        405,
        "method not allowed on this path",
    )
}

/// True if `value` is an acceptable `Op-ID`: VIC's unanchored `[0-9]+\.[0-9]+`.
pub(crate) fn valid_op_id(value: &str) -> bool {
    let b = value.as_bytes();
    b.iter().enumerate().any(|(i, c)| {
        *c == b'.'
            && i > 0
            && b[i - 1].is_ascii_digit()
            && b.get(i + 1).is_some_and(u8::is_ascii_digit)
    })
}

/// A fresh operation id, `<pid>.<counter>` as VIC makes them.
fn new_op_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!(
        "{}.{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The 401 of a request without the right token.
fn unauthorized() -> Response {
    let mut resp = ApiError::plain(
        StatusCode::UNAUTHORIZED,
        401,
        "a valid bearer token is required",
    )
    .into_response();
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"imagestore\""),
    );
    resp
}

fn authorized(state: &AppState, req: &Request) -> bool {
    let Some(token) = &state.token else {
        return true;
    };
    // The scheme is case-insensitive (RFC 9110 §11.1).
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes())
        .filter(|v| v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer "))
        .map(|v| &v[7..]);
    given.is_some_and(|g| token.matches(g.trim_ascii()))
}

async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().as_str().to_owned();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_owned();
    let path = req.uri().path().to_owned();
    let peer = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.to_string())
        .unwrap_or_default();
    let metrics = state.metrics.clone();
    metrics.in_flight(true);

    let given = req
        .headers()
        .get(OP_ID)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let op_id = match &given {
        Some(v) if !v.is_empty() => v.clone(),
        _ => new_op_id(),
    };
    let span = tracing::info_span!("request", op_id = %op_id, method = %method, route = %route);

    let bytes_in = Arc::new(AtomicU64::new(0));
    let resp = if !OPEN_ROUTES.contains(&route.as_str()) && !authorized(&state, &req) {
        unauthorized()
    } else if given
        .as_deref()
        .is_some_and(|v| !v.is_empty() && !valid_op_id(v))
    {
        let mut r = ApiError::plain(
            StatusCode::UNPROCESSABLE_ENTITY,
            605,
            "Op-ID in header should match '[0-9]+\\.[0-9]+'",
        )
        .into_response();
        r.extensions_mut().insert(ErrorKind("OpId".to_owned()));
        r
    } else {
        let counter = bytes_in.clone();
        let m = metrics.clone();
        let idle = state.body_idle;
        let req = req.map(move |body| {
            let timed = Body::new(tower_http::timeout::TimeoutBody::new(idle, body));
            Body::new(Counted::drained(timed, move |n| {
                counter.fetch_add(n, Ordering::Relaxed);
                m.add_bytes_in(n);
            }))
        });
        crate::error::with_redactor(state.redactor.clone(), next.run(req))
            .instrument(span.clone())
            .await
    };

    let status = resp.status().as_u16();
    let elapsed = started.elapsed();
    let kind = resp.extensions().get::<ErrorKind>().map(|k| k.0.clone());
    metrics.record(&method, &route, status, elapsed, kind.as_deref());
    metrics.in_flight(false);
    span.in_scope(|| {
        tracing::info!(
            target: "imagestore_server::access",
            path = %path,
            peer = %peer,
            status,
            elapsed_ms = elapsed.as_millis() as u64,
            bytes_in = bytes_in.load(Ordering::Relaxed),
            error_kind = kind.as_deref().unwrap_or(""),
            "request"
        );
    });

    let (mut parts, body) = resp.into_parts();
    if let Ok(v) = HeaderValue::from_str(&op_id) {
        parts.headers.insert(OP_ID, v);
    }
    let out = metrics.clone();
    let body = Body::new(Counted::new(body, move |n| out.add_bytes_out(n)));
    Response::from_parts(parts, body)
}

/// Most bytes of a request body a handler did not read that are read and dropped after it
/// answered, so that a client still sending sees the answer rather than a reset connection
/// (a client can avoid sending at all with `Expect: 100-continue`).
const MAX_DRAIN: u64 = 64 << 20;

/// How long draining an unread request body may take.
const DRAIN_TIME: Duration = Duration::from_secs(10);

/// A body that reports the length of each data frame it yields, and keeps the size hint
/// and end of the body it wraps (so a known length is still sent as `Content-Length`).
///
/// A request body (`drain`) dropped before its end (a handler that answered without reading
/// it all: an existing image, a refused size, a bad parameter) is read to its end, up to
/// [`MAX_DRAIN`] bytes or [`DRAIN_TIME`], on a task of its own.
struct Counted<F> {
    inner: Option<Body>,
    count: F,
    drain: bool,
}

impl<F: FnMut(u64)> Counted<F> {
    fn new(inner: Body, count: F) -> Self {
        Counted {
            inner: Some(inner),
            count,
            drain: false,
        }
    }

    fn drained(inner: Body, count: F) -> Self {
        Counted {
            inner: Some(inner),
            count,
            drain: true,
        }
    }
}

impl<F: FnMut(u64) + Unpin> http_body::Body for Counted<F> {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, axum::Error>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return std::task::Poll::Ready(None);
        };
        let polled = std::pin::Pin::new(inner).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(d) = frame.data_ref()
        {
            (this.count)(d.len() as u64);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| http_body::SizeHint::with_exact(0), Body::size_hint)
    }
}

impl<F> Drop for Counted<F> {
    fn drop(&mut self) {
        let Some(body) = self.inner.take() else {
            return;
        };
        if !self.drain || http_body::Body::is_end_stream(&body) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt.spawn(async move {
            use futures::StreamExt;
            let mut stream = body.into_data_stream();
            let mut read = 0u64;
            let _ = tokio::time::timeout(DRAIN_TIME, async {
                while read <= MAX_DRAIN {
                    match stream.next().await {
                        Some(Ok(chunk)) => read += chunk.len() as u64,
                        _ => break,
                    }
                }
            })
            .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn op_ids_match_vics_unanchored_pattern() {
        for ok in ["1.2", "12.34", "x1.2y", "a.b.3.4"] {
            assert!(valid_op_id(ok), "{ok}");
        }
        for bad in ["abc", "1.", ".2", "1", "1..2", "a.b"] {
            assert!(!valid_op_id(bad), "{bad}");
        }
    }
}
