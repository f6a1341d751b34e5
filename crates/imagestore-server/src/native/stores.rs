//! Stores, quotas, references, blobs, pins and garbage collection.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use imagestore_core::refs::MAX_BLOB_BYTES;
use imagestore_core::{
    BlobInfo, Error, Expect, GcOptions, GcReport, ImageStorerExt, Pin, RefTarget, Reference,
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::bodies::{read_json, read_limited};
use super::params::{P, Q};
use crate::AppState;
use crate::error::ApiError;

type R<T> = Result<T, ApiError>;

pub(crate) async fn info(State(s): State<AppState>) -> Json<Value> {
    Json(json!({
        "scheme": s.storer.scheme(),
        "capabilities": s.storer.capabilities(),
        "version": env!("CARGO_PKG_VERSION"),
    }))
}

pub(crate) async fn list(State(s): State<AppState>) -> R<Json<Vec<String>>> {
    let urls = s.storer.list_image_stores().await?;
    Ok(Json(urls.into_iter().map(String::from).collect()))
}

pub(crate) async fn create(State(s): State<AppState>, p: P) -> R<(StatusCode, Json<Value>)> {
    let url = s.storer.create_image_store(&p.store()?).await?;
    Ok((StatusCode::CREATED, Json(json!({ "url": url }))))
}

pub(crate) async fn get(State(s): State<AppState>, p: P) -> R<Json<Value>> {
    let url = s.storer.get_image_store(&p.store()?).await?;
    Ok(Json(json!({ "url": url })))
}

pub(crate) async fn delete(State(s): State<AppState>, p: P) -> R<StatusCode> {
    s.storer.delete_image_store(&p.store()?).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(crate) async fn usage(State(s): State<AppState>, p: P) -> R<Json<Value>> {
    let store = p.store()?;
    let usage = s.storer.image_storage_usage(&store).await?;
    let quota = s.storer.quota(&store).await?;
    Ok(Json(json!({ "usage": usage, "quota": quota })))
}

pub(crate) async fn quota(State(s): State<AppState>, p: P) -> R<Json<Value>> {
    let quota = s.storer.quota(&p.store()?).await?;
    Ok(Json(json!({ "quota": quota })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QuotaBody {
    quota: Option<u64>,
}

pub(crate) async fn set_quota(
    State(s): State<AppState>,
    p: P,
    headers: HeaderMap,
    body: Body,
) -> R<StatusCode> {
    let store = p.store()?;
    let q: QuotaBody = read_json(&headers, body, "quota").await?;
    s.storer.set_quota(&store, q.quota).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(crate) async fn list_refs(State(s): State<AppState>, p: P) -> R<Json<Vec<Reference>>> {
    Ok(Json(s.storer.list_references(&p.store()?).await?))
}

pub(crate) async fn get_ref(State(s): State<AppState>, p: P) -> R<Json<Reference>> {
    let (store, name) = (p.store()?, p.ref_name()?);
    Ok(Json(s.storer.get_reference(&store, &name).await?))
}

/// An expectation on the wire: absent or `null` (any), `"absent"`, or a target.
fn expect_of(v: Option<Value>) -> R<Expect> {
    match v {
        None | Some(Value::Null) => Ok(Expect::Any),
        Some(Value::String(s)) if s == "absent" => Ok(Expect::Absent),
        Some(v @ Value::Object(_)) => serde_json::from_value::<RefTarget>(v)
            .map(Expect::Target)
            .map_err(|e| Error::invalid(format!("expect is not a target: {e}")).into()),
        Some(_) => Err(Error::invalid("expect must be null, \"absent\" or a target").into()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetRef {
    target: RefTarget,
    #[serde(default)]
    expect: Option<Value>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DeleteRef {
    #[serde(default)]
    expect: Option<Value>,
}

pub(crate) async fn set_ref(
    State(s): State<AppState>,
    p: P,
    headers: HeaderMap,
    body: Body,
) -> R<Json<Reference>> {
    let (store, name) = (p.store()?, p.ref_name()?);
    let req: SetRef = read_json(&headers, body, "reference").await?;
    req.target.validate()?;
    let expect = expect_of(req.expect)?;
    Ok(Json(
        s.storer
            .set_reference(&store, &name, &req.target, &expect)
            .await?,
    ))
}

pub(crate) async fn delete_ref(
    State(s): State<AppState>,
    p: P,
    headers: HeaderMap,
    body: Body,
) -> R<Json<Reference>> {
    let (store, name) = (p.store()?, p.ref_name()?);
    let bytes = read_limited(
        &headers,
        body,
        crate::MAX_JSON_BODY,
        "JSON body size in bytes",
    )
    .await?;
    let req: DeleteRef = if bytes.trim_ascii().is_empty() {
        DeleteRef::default()
    } else {
        super::bodies::parse_json(&bytes, "reference delete")?
    };
    let expect = expect_of(req.expect)?;
    Ok(Json(
        s.storer.delete_reference(&store, &name, &expect).await?,
    ))
}

pub(crate) async fn list_blobs(State(s): State<AppState>, p: P) -> R<Json<Vec<BlobInfo>>> {
    Ok(Json(s.storer.list_blobs(&p.store()?).await?))
}

pub(crate) async fn put_blob(
    State(s): State<AppState>,
    p: P,
    headers: HeaderMap,
    body: Body,
) -> R<StatusCode> {
    let (store, digest) = (p.store()?, p.digest()?);
    let bytes = read_limited(&headers, body, MAX_BLOB_BYTES, "blob size in bytes").await?;
    s.storer.put_blob(&store, &digest, bytes).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(crate) async fn get_blob(State(s): State<AppState>, p: P) -> R<Response> {
    let (store, digest) = (p.store()?, p.digest()?);
    let bytes = s.storer.get_blob(&store, &digest).await?;
    let mut resp = bytes.into_response();
    if let Ok(v) = HeaderValue::from_str(&digest.to_string()) {
        resp.headers_mut().insert("docker-content-digest", v);
    }
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    Ok(resp)
}

pub(crate) async fn delete_blob(State(s): State<AppState>, p: P) -> R<StatusCode> {
    let (store, digest) = (p.store()?, p.digest()?);
    s.storer.delete_blob(&store, &digest).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(crate) async fn pins(State(s): State<AppState>, p: P) -> R<Json<Vec<Pin>>> {
    Ok(Json(s.storer.pins(&p.store()?).await?))
}

pub(crate) async fn gc(State(s): State<AppState>, p: P, q: Q) -> R<Json<GcReport>> {
    let store = p.store()?;
    let defaults = GcOptions::default();
    let opts = GcOptions {
        dry_run: q.flag("dry_run", false)?,
        grace: q.millis("grace_ms")?.unwrap_or(defaults.grace),
        keep: q.ids("keep")?,
    };
    Ok(Json(s.storer.gc(&store, &opts).await?))
}
