//! The image-store routes under `/storage`: CreateImageStore, ListImages, WriteImage,
//! GetImage, ImageJoin, DeleteImage (VIC's branch delete), GetImageStorageUsage and
//! GetImageTar.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use imagestore_core::{Digest, Error, Image, ImageId, ImageStorerExt, Metadata, StoreName};
use serde::Serialize;

use super::wire::{
    Links, Query, VicError, body_stream, check_consumes, go_json, is_not_found, is_store_missing,
};
use crate::AppState;

/// Largest `POST /storage` or ImageJoin body: a small JSON object.
const MAX_SMALL_BODY: usize = 64 << 10;

/// VIC's `StoreUrl` model.
#[derive(Serialize)]
struct StoreUrl {
    code: i64,
    url: String,
}

type VicResult = Result<Response, VicError>;

/// Reads a small JSON body (go-swagger binds it before the handler): 415 for another content
/// type, `None` when there is no body, 400 when it is not JSON.
async fn small_json(req: Request, param: &str) -> Result<Option<serde_json::Value>, VicError> {
    check_consumes(&req, &["application/json"])?;
    let bytes: Bytes = axum::body::to_bytes(req.into_body(), MAX_SMALL_BODY)
        .await
        .map_err(|e| {
            VicError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("reading {param} in body: {e}"),
            )
        })?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(&bytes).map(Some).map_err(|e| {
        VicError::new(
            StatusCode::BAD_REQUEST,
            format!("parsing {param} body from \"\" failed, because {e}"),
        )
    })
}

/// A required non-empty string field of a JSON body; go-swagger's 422/602 otherwise.
fn body_string<'a>(v: &'a serde_json::Value, field: &str) -> Result<&'a str, VicError> {
    v.get(field)
        .and_then(serde_json::Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| VicError::required(field, "body"))
}

/// `POST /storage`: CreateImageStore.
pub(crate) async fn create_store(State(st): State<AppState>, req: Request) -> VicResult {
    let body = small_json(req, "body")
        .await?
        .ok_or_else(|| VicError::required("name", "body"))?;
    let name = body_string(&body, "name")?;
    let store = StoreName::new(name).map_err(|e| VicError::from_core(&e, &st.redactor))?;
    match st.storer.create_image_store(&store).await {
        Ok(_) => Ok(go_json(
            StatusCode::CREATED,
            &StoreUrl {
                code: 201,
                url: Links::new(&st.host).store(store.as_str()),
            },
        )),
        Err(Error::AlreadyExists { .. }) => Err(VicError::new(
            StatusCode::CONFLICT,
            "An image store with that name already exists",
        )),
        Err(e) => Err(VicError::from_core(&e, &st.redactor)),
    }
}

/// A `{store_name}` that names no store (it cannot be a store name at all): the 404 VIC's
/// routes answer for an unknown store.
fn store_of(st: &AppState, name: &str) -> Result<StoreName, VicError> {
    StoreName::new(name).map_err(|e| {
        VicError::new(
            StatusCode::NOT_FOUND,
            st.redactor
                .redact(&format!("image store {name:?} not found: {e}")),
        )
    })
}

/// `GET /storage/{store_name}`: ListImages.
pub(crate) async fn list_images(
    State(st): State<AppState>,
    Path(store_name): Path<String>,
    req: Request,
) -> VicResult {
    let ids = Query::of(req.uri()).csv("ids");
    let links = Links::new(&st.host);
    let models = |images: &[Image]| images.iter().map(|i| links.model(i)).collect::<Vec<_>>();
    if ids.is_empty() {
        let store = store_of(&st, &store_name)?;
        let images = st
            .storer
            .list_images(&store, &[])
            .await
            .map_err(|e| VicError::from_core(&e, &st.redactor))?;
        return Ok(go_json(StatusCode::OK, &models(&images)));
    }
    // With ids, VIC skips every failure: unknown ids, unknown stores, names that cannot be.
    let Ok(store) = StoreName::new(store_name) else {
        return Ok(go_json(StatusCode::OK, &models(&[])));
    };
    let mut wanted: Vec<ImageId> = Vec::new();
    for id in ids.iter().filter_map(|i| ImageId::new(i.as_str()).ok()) {
        if !wanted.contains(&id) {
            wanted.push(id);
        }
    }
    let found = match st.storer.list_images(&store, &wanted).await {
        Ok(found) => found,
        Err(e) if is_store_missing(&e) => Vec::new(),
        Err(e) => return Err(VicError::from_core(&e, &st.redactor)),
    };
    let by_id: HashMap<&str, &Image> = found.iter().map(|i| (i.id.as_str(), i)).collect();
    let ordered: Vec<Image> = ids
        .iter()
        .filter_map(|i| by_id.get(i.as_str()).map(|i| (*i).clone()))
        .collect();
    Ok(go_json(StatusCode::OK, &models(&ordered)))
}

/// `POST /storage/{store_name}`: WriteImage. An existing `image_id` is answered with the
/// existing image and the body is not read, whatever the sum, metadata and parent (VIC).
pub(crate) async fn write_image(
    State(st): State<AppState>,
    Path(store_name): Path<String>,
    req: Request,
) -> VicResult {
    check_consumes(&req, &["application/octet-stream"])?;
    let (parts, body) = req.into_parts();
    let q = Query::of(&parts.uri);
    let (image_id, parent_id, sum) = (
        q.required("image_id")?,
        q.required("parent_id")?,
        q.required("sum")?,
    );
    let mut meta = Metadata::new();
    if let (Some(k), Some(v)) = (q.get("metadatakey"), q.get("metadataval")) {
        meta.insert(k.to_owned(), v.as_bytes().to_vec());
    }
    let links = Links::new(&st.host);
    let created = |image: &Image| go_json(StatusCode::CREATED, &links.model(image));
    let no_parent = |detail: String| {
        VicError::new(
            StatusCode::NOT_FOUND,
            st.redactor.redact(&format!(
                "parent ({parent_id}) doesn't exist in {}: {detail}",
                links.store(&store_name)
            )),
        )
    };
    let store = StoreName::new(store_name.as_str()).map_err(|e| no_parent(e.to_string()))?;
    let id = ImageId::new(image_id).map_err(|e| VicError::from_core(&e, &st.redactor))?;
    match st.storer.get_image(&store, &id).await {
        Ok(existing) => return Ok(created(&existing)),
        Err(e) if is_not_found(&e) => {}
        Err(e) => return Err(VicError::from_core(&e, &st.redactor)),
    }
    let parent_id = ImageId::new(parent_id).map_err(|e| no_parent(e.to_string()))?;
    let parent = match st.storer.get_image(&store, &parent_id).await {
        Ok(p) => p,
        Err(e) if is_not_found(&e) => return Err(no_parent(e.to_string())),
        Err(e) => return Err(VicError::from_core(&e, &st.redactor)),
    };
    let sum: Digest = sum.parse().map_err(|e: Error| {
        VicError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            st.redactor.redact(&format!("sum {sum:?}: {e}")),
        )
    })?;
    match st
        .storer
        .write_image(&parent, &id, meta, &sum, body_stream(body))
        .await
    {
        Ok(image) => Ok(created(&image)),
        // Another writer made the id first (with another sum or parent): VIC answers the
        // existing image.
        Err(Error::Conflict { .. } | Error::AlreadyExists { .. }) => {
            match st.storer.get_image(&store, &id).await {
                Ok(existing) => Ok(created(&existing)),
                Err(e) => Err(VicError::from_core(&e, &st.redactor)),
            }
        }
        Err(Error::DigestMismatch { expected, actual }) => Err(VicError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("Failed to validate image checksum. Expected {expected}, got {actual}"),
        )),
        Err(e) => Err(VicError::from_core(&e, &st.redactor)),
    }
}

/// `GET /storage/{store_name}/info/{id}`: GetImage (scratch included).
pub(crate) async fn get_image(
    State(st): State<AppState>,
    Path((store_name, id)): Path<(String, String)>,
) -> VicResult {
    let image = find_image(&st, &store_name, &id).await?;
    Ok(go_json(StatusCode::OK, &Links::new(&st.host).model(&image)))
}

/// Image `id` of `store_name`: 404 for names that cannot exist, as for absent ones.
async fn find_image(st: &AppState, store_name: &str, id: &str) -> Result<Image, VicError> {
    let store = store_of(st, store_name)?;
    let id = ImageId::new(id).map_err(|e| {
        VicError::new(
            StatusCode::NOT_FOUND,
            st.redactor.redact(&format!("image {id:?} not found: {e}")),
        )
    })?;
    st.storer
        .get_image(&store, &id)
        .await
        .map_err(|e| VicError::from_core(&e, &st.redactor))
}

/// `POST /storage/{store_name}/info/{id}`: ImageJoin. The body is checked as go-swagger
/// binds it (415, 400, 422) and the image must exist (404). The handle names the container
/// VM (this server serves no containers API whose handles it could look up) and `deltaID`
/// the new child disk; the join attaches that disk, a child of the image's, to the VM
/// (`vsphere://`; 501 on backends without virtual machines) and answers the handle back.
pub(crate) async fn image_join(
    State(st): State<AppState>,
    Path((store_name, id)): Path<(String, String)>,
    req: Request,
) -> VicResult {
    let body = small_json(req, "config")
        .await?
        .ok_or_else(|| VicError::required("handle", "body"))?;
    let handle = body_string(&body, "handle")?;
    let delta = body_string(&body, "deltaID")?;
    let image = find_image(&st, &store_name, &id).await?;
    let disk = ImageId::new(delta).map_err(|e| VicError::from_core(&e, &st.redactor))?;
    match st
        .storer
        .join_image(&image.store, &image.id, handle, &disk)
        .await
    {
        Ok(_) => Ok(go_json(
            StatusCode::OK,
            &serde_json::json!({ "handle": handle }),
        )),
        Err(Error::Unsupported { .. }) => Err(VicError::new(
            StatusCode::NOT_IMPLEMENTED,
            format!(
                "ImageJoin attaches an image's disk to a virtual machine, and the {}:// backend \
                 has none (vsphere:// has)",
                st.storer.scheme()
            ),
        )),
        Err(e) => Err(VicError::from_core(&e, &st.redactor)),
    }
}

/// `DELETE /storage/{store_name}/info/{id}?keepNodes=…`: DeleteImage, VIC's branch delete.
pub(crate) async fn delete_image(
    State(st): State<AppState>,
    Path((store_name, id)): Path<(String, String)>,
    req: Request,
) -> VicResult {
    let keep_nodes = Query::of(req.uri()).csv("keepNodes");
    if keep_nodes.is_empty() {
        return Err(VicError::required("keepNodes", "query"));
    }
    let links = Links::new(&st.host);
    let mut keep: Vec<ImageId> = Vec::new();
    for node in &keep_nodes {
        let url = url::Url::parse(node).map_err(|e| {
            VicError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("keepNodes: {node:?} is not a URL: {e}"),
            )
        })?;
        if let Some(id) = links.keep_node(&store_name, &url)
            && let Ok(id) = ImageId::new(id)
        {
            keep.push(id);
        }
    }
    let image = find_image(&st, &store_name, &id).await?;
    let self_link = links.image(&store_name, image.id.as_str());
    if image.id.is_scratch() {
        return Err(VicError::new(
            StatusCode::LOCKED,
            format!("{self_link} is the root of its store and can't be deleted"),
        ));
    }
    if keep.contains(&image.id) {
        return Err(VicError::new(
            StatusCode::LOCKED,
            format!("{self_link} can't be deleted"),
        ));
    }
    match st.storer.delete_branch(&image, &keep).await {
        Ok(deleted) => {
            let models: Vec<_> = deleted.iter().map(|i| links.model(i)).collect();
            Ok(go_json(StatusCode::OK, &models))
        }
        Err(Error::ImageInUse { users, .. }) => {
            let by = if users.iter().any(|u| u.starts_with("child ")) {
                "child images".to_owned()
            } else {
                users.join(", ")
            };
            Err(VicError::new(
                StatusCode::LOCKED,
                st.redactor.redact(&format!("{self_link} in use by {by}")),
            ))
        }
        Err(e) => Err(VicError::from_core(&e, &st.redactor)),
    }
}

/// `GET /storage/{store_name}/usage`: GetImageStorageUsage, the store's exact usage as a
/// bare JSON integer.
pub(crate) async fn usage(State(st): State<AppState>, Path(store_name): Path<String>) -> VicResult {
    let store = store_of(&st, &store_name)?;
    let used = st
        .storer
        .image_storage_usage(&store)
        .await
        .map_err(|e| VicError::from_core(&e, &st.redactor))?;
    Ok(go_json(StatusCode::OK, &used))
}

/// `GET /storage/{store_name}/tar/{id}`: GetImageTar. VIC never implemented it; here it is
/// the layer exactly as it was written (`Exporter::export_raw`) on backends that keep raw
/// layers, and 501 on the others.
pub(crate) async fn image_tar(
    State(st): State<AppState>,
    Path((store_name, id)): Path<(String, String)>,
) -> VicResult {
    let image = find_image(&st, &store_name, &id).await?;
    if !st.storer.capabilities().raw_layers {
        return Err(VicError::new(
            StatusCode::NOT_IMPLEMENTED,
            format!(
                "GetImageTar is not available on {}:// (the backend does not keep layers as \
                 written); export the image with GET /archive instead",
                st.storer.scheme()
            ),
        ));
    }
    let Some(sum) = image.sum.clone() else {
        return Err(VicError::new(
            StatusCode::NOT_FOUND,
            format!(
                "{} has no layer",
                Links::new(&st.host).image(&store_name, &id)
            ),
        ));
    };
    let (body, len) =
        crate::native::bodies::raw_layer_body(st.storer.as_ref(), &image.store, &image.id)
            .await
            .map_err(|e| VicError::from_core(&e, &st.redactor))?;
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Some(len) = len {
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    if let Ok(v) = HeaderValue::from_str(&sum.to_string()) {
        h.insert("docker-content-digest", v);
    }
    Ok(resp)
}
