//! Images, writable layers, owners and the streams: layer uploads, imports, exports and raw
//! layer downloads.

use std::collections::HashMap;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use imagestore_core::wire::ErrorBody;
use imagestore_core::{
    Digest, Error, Image, ImageStorerExt, ImportSummary, Metadata, Url, Writable, byte_stream,
};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;

use super::bodies::{
    MAX_METADATA_JSON, body_stream, parse_metadata, raw_layer_body, read_json, read_limited,
    reader, stream_body,
};
use super::params::{MAX_LIST, P, Q};
use crate::AppState;
use crate::error::ApiError;

type R<T> = Result<T, ApiError>;

/// The header giving the length of the metadata JSON that starts a layer upload.
const METADATA_LENGTH: &str = "imagestore-metadata-length";

pub(crate) async fn list(State(s): State<AppState>, p: P, q: Q) -> R<Json<Vec<Image>>> {
    let store = p.store()?;
    Ok(Json(s.storer.list_images(&store, &q.ids("ids")?).await?))
}

pub(crate) async fn get(State(s): State<AppState>, p: P) -> R<Json<Image>> {
    let (store, id) = (p.store()?, p.id()?);
    Ok(Json(s.storer.get_image(&store, &id).await?))
}

/// `PUT …/images/{id}?parent=P&sum=S`: the body is `Imagestore-Metadata-Length` bytes of
/// metadata JSON, then the layer, which streams into the backend as it arrives.
pub(crate) async fn write(
    State(s): State<AppState>,
    p: P,
    q: Q,
    headers: HeaderMap,
    body: Body,
) -> R<(StatusCode, Json<Image>)> {
    let (store, id) = (p.store()?, p.id()?);
    let parent = q.required_id("parent")?;
    let raw_sum = q.required("sum")?;
    let sum: Digest = raw_sum
        .parse()
        .map_err(|e| Error::invalid(format!("sum {raw_sum:?}: {e}")))?;
    let meta_len = match headers.get(METADATA_LENGTH) {
        None => 0,
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .ok_or_else(|| Error::invalid("Imagestore-Metadata-Length must be a number"))?,
    };
    if meta_len > MAX_METADATA_JSON {
        return Err(Error::LimitExceeded {
            what: "metadata JSON size in bytes",
            value: meta_len as u64,
            max: MAX_METADATA_JSON as u64,
        }
        .into());
    }
    let parent = s.storer.get_image(&store, &parent).await?;
    let mut body = reader(body);
    let mut meta = vec![0; meta_len];
    body.read_exact(&mut meta).await.map_err(|e| {
        Error::invalid(format!(
            "the body ends before its {meta_len} bytes of metadata: {e}"
        ))
    })?;
    let meta = parse_metadata(&meta)?;
    let image = s
        .storer
        .write_image(&parent, &id, meta, &sum, byte_stream(body))
        .await?;
    Ok((StatusCode::CREATED, Json(image)))
}

pub(crate) async fn delete(State(s): State<AppState>, p: P, q: Q) -> R<Response> {
    let (store, id) = (p.store()?, p.id()?);
    let branch = q.flag("branch", false)?;
    let keep = q.ids("keep")?;
    let image = s.storer.get_image(&store, &id).await?;
    if branch {
        Ok(Json(s.storer.delete_branch(&image, &keep).await?).into_response())
    } else {
        Ok(Json(s.storer.delete_image(&image).await?).into_response())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteMany {
    ids: Vec<String>,
}

/// `POST …/delete {"ids":[…]}`: one result per id, in order.
pub(crate) async fn delete_many(
    State(s): State<AppState>,
    p: P,
    headers: HeaderMap,
    body: Body,
) -> R<Json<Vec<Value>>> {
    let store = p.store()?;
    let req: DeleteMany = read_json(&headers, body, "delete request").await?;
    if req.ids.len() > MAX_LIST {
        return Err(Error::LimitExceeded {
            what: "ids in one request",
            value: req.ids.len() as u64,
            max: MAX_LIST as u64,
        }
        .into());
    }
    let ids = req
        .ids
        .into_iter()
        .map(imagestore_core::ImageId::new)
        .collect::<Result<Vec<_>, _>>()?;
    if ids.is_empty() {
        return Ok(Json(Vec::new()));
    }
    let found: HashMap<_, _> = s
        .storer
        .list_images(&store, &ids)
        .await?
        .into_iter()
        .map(|i| (i.id.clone(), i))
        .collect();
    let batch: Vec<Image> = ids.iter().filter_map(|id| found.get(id).cloned()).collect();
    let mut results = s.storer.delete_images(&store, &batch).await?.into_iter();
    let error = |e: &Error| -> Value {
        let body: ErrorBody = ApiError::from(clone_error(e)).body().clone();
        json!({ "error": body })
    };
    let out = ids
        .iter()
        .map(|id| {
            if found.contains_key(id) {
                match results.next() {
                    Some(Ok(image)) => json!({ "image": image }),
                    Some(Err(e)) => error(&e),
                    None => error(&Error::backend("server", "a delete has no result", false)),
                }
            } else {
                error(&Error::not_found(
                    imagestore_core::ObjectKind::Image,
                    format!("{store}/{id}"),
                ))
            }
        })
        .collect();
    Ok(Json(out))
}

/// The error as its wire form carries it (the wire never carries a source).
fn clone_error(e: &Error) -> Error {
    ErrorBody::from_error(e).into_error()
}

pub(crate) async fn usage(State(s): State<AppState>, p: P) -> R<Json<Value>> {
    let (store, id) = (p.store()?, p.id()?);
    let usage = s.storer.image_layer_storage_usage(&store, &id).await?;
    Ok(Json(json!({ "usage": usage })))
}

pub(crate) async fn url(State(s): State<AppState>, p: P) -> R<Json<Value>> {
    let (store, id) = (p.store()?, p.id()?);
    Ok(Json(json!({ "url": s.storer.url(&store, &id).await? })))
}

pub(crate) async fn owners(State(s): State<AppState>, q: Q) -> R<Json<Vec<String>>> {
    let raw = q.required("url")?;
    let url = Url::parse(raw).map_err(|e| Error::invalid(format!("url: {e}")))?;
    let owners = s.storer.owners(&url).await?;
    Ok(Json(owners.into_iter().map(|o| o.to_string()).collect()))
}

pub(crate) async fn acquire(State(s): State<AppState>, p: P, q: Q) -> R<StatusCode> {
    let (store, id, owner) = (p.store()?, p.id()?, p.owner()?);
    match q.millis("ttl_ms")? {
        Some(ttl) => s.storer.acquire_lease(&store, &id, &owner, ttl).await?,
        None => s.storer.acquire(&store, &id, &owner).await?,
    }
    Ok(StatusCode::NO_CONTENT)
}

pub(crate) async fn release(State(s): State<AppState>, p: P) -> R<StatusCode> {
    let (store, id, owner) = (p.store()?, p.id()?, p.owner()?);
    s.storer.release(&store, &id, &owner).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn tar_response(body: Body) -> Response {
    let mut resp = body.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-tar"),
    );
    resp
}

/// `GET …/export?data=&ancestor=&filter=`: a tar of the image, streamed as the client reads.
pub(crate) async fn export(State(s): State<AppState>, p: P, q: Q) -> R<Response> {
    let (store, id) = (p.store()?, p.id()?);
    let data = q.flag("data", true)?;
    let ancestor = q.id("ancestor")?;
    let filter = q.filter()?;
    let stream = s
        .storer
        .export(&store, &id, ancestor.as_ref(), &filter, data)
        .await?;
    Ok(tar_response(stream_body(stream)))
}

/// `GET …/layer`: the layer's bytes as written, with their digest.
pub(crate) async fn layer(State(s): State<AppState>, p: P) -> R<Response> {
    let (store, id) = (p.store()?, p.id()?);
    let image = s.storer.get_image(&store, &id).await?;
    let (body, len) = raw_layer_body(s.storer.as_ref(), &store, &id).await?;
    let mut resp = body.into_response();
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Some(len) = len {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    if let Some(v) = image
        .sum
        .as_ref()
        .and_then(|d| HeaderValue::from_str(&d.to_string()).ok())
    {
        headers.insert("docker-content-digest", v);
    }
    Ok(resp)
}

pub(crate) async fn create_writable(
    State(s): State<AppState>,
    p: P,
    q: Q,
) -> R<(StatusCode, Json<Writable>)> {
    let (store, id) = (p.store()?, p.id()?);
    let parent = q.required_id("parent")?;
    let parent = s.storer.get_image(&store, &parent).await?;
    let w = s.storer.create_writable(&parent, &id).await?;
    Ok((StatusCode::CREATED, Json(w)))
}

pub(crate) async fn get_writable(State(s): State<AppState>, p: P) -> R<Json<Writable>> {
    let (store, id) = (p.store()?, p.id()?);
    Ok(Json(s.storer.get_writable(&store, &id).await?))
}

pub(crate) async fn delete_writable(State(s): State<AppState>, p: P) -> R<StatusCode> {
    let (store, id) = (p.store()?, p.id()?);
    s.storer.delete_writable(&store, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST …/writables/{id}/import?filter=`: the tar body streams into the writable layer.
pub(crate) async fn import(
    State(s): State<AppState>,
    p: P,
    q: Q,
    body: Body,
) -> R<Json<ImportSummary>> {
    let (store, id) = (p.store()?, p.id()?);
    let filter = q.filter()?;
    Ok(Json(
        s.storer
            .import(&store, &id, &filter, body_stream(body))
            .await?,
    ))
}

/// `POST …/writables/{id}/commit?new_id=N` with the metadata JSON as the body.
pub(crate) async fn commit(
    State(s): State<AppState>,
    p: P,
    q: Q,
    headers: HeaderMap,
    body: Body,
) -> R<(StatusCode, Json<Image>)> {
    let (store, id) = (p.store()?, p.id()?);
    let new_id = q.required_id("new_id")?;
    let bytes = read_limited(
        &headers,
        body,
        MAX_METADATA_JSON,
        "metadata JSON size in bytes",
    )
    .await?;
    let meta: Metadata = parse_metadata(&bytes)?;
    let image = s.storer.commit_writable(&store, &id, &new_id, meta).await?;
    Ok((StatusCode::CREATED, Json(image)))
}
