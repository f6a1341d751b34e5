//! `/archive`: ExportArchive (`GET`), ImportArchive (`POST`) and StatPath (`HEAD`).
//!
//! `store` is a store name or a store URL (`http://<host>/storage/images/<name>`); `deviceID`
//! is an image id or, for imports and exports, a writable layer's id; `filterSpec` is VIC's
//! wire form. As in VIC, the handler's own errors on `GET` and `HEAD` carry no body (only
//! go-swagger's parameter errors do); `POST` errors carry VIC's `Error` body.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use imagestore_core::{Error, FilterSpec, ImageId, StoreName};
use tokio_util::io::ReaderStream;

use super::stat::{self, PathInfo};
use super::wire::{Links, Query, VicError, body_stream, check_consumes, has_body, is_not_found};
use crate::AppState;

/// Bytes an export is read in before each write to the client.
const EXPORT_CHUNK: usize = 64 << 10;

/// The store an `/archive` request names: 404 (no body) if there is none.
async fn store_of(st: &AppState, given: &str) -> Result<StoreName, VicError> {
    let not_found = || {
        VicError::new(
            StatusCode::NOT_FOUND,
            format!("no image store named {given:?}"),
        )
    };
    let store = Links::new(&st.host)
        .store_param(given)
        .ok_or_else(not_found)?;
    match st.storer.get_image_store(&store).await {
        Ok(_) => Ok(store),
        Err(e) if is_not_found(&e) => Err(not_found()),
        Err(e) => Err(VicError::from_core(&e, &st.redactor)),
    }
}

/// A `deviceID` or `ancestor`: 404 if it cannot name an image.
fn image_id(given: &str) -> Result<ImageId, VicError> {
    ImageId::new(given).map_err(|e| {
        VicError::new(
            StatusCode::NOT_FOUND,
            format!("no image or writable layer {given:?}: {e}"),
        )
    })
}

/// `filterSpec`: 422 if it is not VIC's wire form.
fn filter_of(q: &Query) -> Result<FilterSpec, VicError> {
    FilterSpec::decode(q.get("filterSpec").unwrap_or(""))
        .map_err(|e| VicError::new(StatusCode::UNPROCESSABLE_ENTITY, format!("filterSpec: {e}")))
}

/// `GET /archive`: ExportArchive, the tar of an image or writable layer (with `ancestor`,
/// only the changes since it; with `data=false`, headers only with `change_type` markers).
pub(crate) async fn export(State(st): State<AppState>, req: Request) -> Response {
    let q = Query::of(req.uri());
    let (store, device, data) = match (
        q.required("store"),
        q.required("deviceID"),
        q.required_bool("data"),
    ) {
        (Ok(s), Ok(d), Ok(data)) => (s, d, data),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return e.into_response(),
    };
    match export_tar(&st, &q, store, device, data).await {
        Ok(resp) => resp,
        Err(e) => e.bare().into_response(),
    }
}

async fn export_tar(
    st: &AppState,
    q: &Query,
    store: &str,
    device: &str,
    data: bool,
) -> Result<Response, VicError> {
    let filter = filter_of(q)?;
    let store = store_of(st, store).await?;
    let id = image_id(device)?;
    // `ancestorStore` is accepted and ignored, as VIC does.
    let ancestor = q.get("ancestor").map(image_id).transpose()?;
    let tar = st
        .storer
        .export(&store, &id, ancestor.as_ref(), &filter, data)
        .await
        .map_err(|e| VicError::from_core(&e, &st.redactor))?;
    let mut resp =
        Body::from_stream(ReaderStream::with_capacity(tar, EXPORT_CHUNK)).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-tar"),
    );
    Ok(resp)
}

/// `POST /archive`: ImportArchive, a tar applied to a writable layer. A committed image is
/// immutable: an import into one is refused with 409 (VIC writes into it).
pub(crate) async fn import(
    State(st): State<AppState>,
    req: Request,
) -> Result<StatusCode, VicError> {
    check_consumes(&req, &["application/x-tar"])?;
    let with_body = has_body(&req);
    let (parts, body) = req.into_parts();
    let q = Query::of(&parts.uri);
    let (store, device) = (q.required("store")?, q.required("deviceID")?);
    if !with_body {
        return Err(VicError::required("archive", "body"));
    }
    let filter = filter_of(&q)?;
    let store = store_of(&st, store).await?;
    let id = image_id(device)?;
    match st.storer.get_writable(&store, &id).await {
        Ok(_) => {}
        Err(e) if is_not_found(&e) => {
            return Err(match st.storer.get_image(&store, &id).await {
                Ok(_) => VicError::new(
                    StatusCode::CONFLICT,
                    format!(
                        "{} is a committed image, which is immutable; import into a writable \
                         layer instead",
                        Links::new(&st.host).image(store.as_str(), id.as_str())
                    ),
                ),
                Err(e) => VicError::from_core(&e, &st.redactor),
            });
        }
        Err(e) => return Err(VicError::from_core(&e, &st.redactor)),
    }
    st.storer
        .import(&store, &id, &filter, body_stream(body))
        .await
        .map_err(|e| VicError::from_core(&e, &st.redactor))?;
    Ok(StatusCode::OK)
}

/// `HEAD /archive`: StatPath, the one path the filter spec includes, as response headers.
pub(crate) async fn stat_path(State(st): State<AppState>, req: Request) -> Response {
    let q = Query::of(req.uri());
    let (store, device) = match (q.required("store"), q.required("deviceID")) {
        (Ok(s), Ok(d)) => (s, d),
        (Err(e), _) | (_, Err(e)) => return e.into_response(),
    };
    match stat_inner(&st, &q, store, device).await {
        Ok(info) => {
            let mut resp = StatusCode::OK.into_response();
            stat_headers(resp.headers_mut(), &info);
            resp
        }
        Err(e) => e.bare().into_response(),
    }
}

async fn stat_inner(
    st: &AppState,
    q: &Query,
    store: &str,
    device: &str,
) -> Result<PathInfo, VicError> {
    let filter = filter_of(q)?;
    if filter.inclusions.len() != 1 {
        return Err(VicError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "filterSpec must include exactly one path to stat, not {}",
                filter.inclusions.len()
            ),
        ));
    }
    let target = filter.inclusions.iter().next().cloned().unwrap_or_default();
    let store = store_of(st, store).await?;
    let id = image_id(device)?;
    let found = stat::stat(&st.storer, &store, &id, target.trim_end_matches('/'))
        .await
        .map_err(|e| match e {
            Error::InvalidArgument(m) => VicError::new(StatusCode::NOT_FOUND, m),
            e => VicError::from_core(&e, &st.redactor),
        })?;
    found.ok_or_else(|| VicError::new(StatusCode::NOT_FOUND, format!("{target:?} not found")))
}

/// StatPath's headers: `name` (omitted when empty), `mode`, `size`, `linkTarget` (symlinks
/// only) and `modTime` (RFC 3339).
fn stat_headers(h: &mut HeaderMap, info: &PathInfo) {
    let mut set = |name: &'static str, value: &str| {
        h.insert(HeaderName::from_static(name), header_value(value));
    };
    if !info.name.is_empty() {
        set("name", &info.name);
    }
    set("mode", &info.mode.to_string());
    set("size", &info.size.to_string());
    if let Some(t) = &info.link_target {
        set("linktarget", t);
    }
    set("modtime", &info.mod_time());
}

/// A header value of `s`, control characters replaced by spaces (as Go's HTTP stack does
/// for CR and LF).
fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| {
        let clean: String = s
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        HeaderValue::from_bytes(clean.trim().as_bytes())
            .unwrap_or_else(|_| HeaderValue::from_static(""))
    })
}
