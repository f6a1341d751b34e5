//! The native API under `/v1` (`docs/server-api.md`): every operation of the storage traits,
//! and the OpenAPI document that describes it at `/openapi.json`.
//!
//! Path and query values are parsed into the core's name types before anything else happens
//! (`400 InvalidArgument` otherwise); bodies are read with fixed bounds, except layer and tar
//! streams, which go to the backend as they arrive and come back the same way.

pub(crate) mod bodies;
mod images;
mod params;
mod stores;

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};

use crate::AppState;

/// The OpenAPI document of the native API.
const OPENAPI: &str = include_str!("../../openapi.json");

/// The native routes.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/openapi.json", get(openapi))
        .route("/v1/info", get(stores::info))
        .route("/v1/stores", get(stores::list))
        .route(
            "/v1/stores/{store}",
            put(stores::create).get(stores::get).delete(stores::delete),
        )
        .route("/v1/stores/{store}/usage", get(stores::usage))
        .route(
            "/v1/stores/{store}/quota",
            get(stores::quota).put(stores::set_quota),
        )
        .route("/v1/stores/{store}/images", get(images::list))
        .route(
            "/v1/stores/{store}/images/{id}",
            put(images::write).get(images::get).delete(images::delete),
        )
        .route("/v1/stores/{store}/delete", post(images::delete_many))
        .route("/v1/stores/{store}/images/{id}/usage", get(images::usage))
        .route("/v1/stores/{store}/images/{id}/url", get(images::url))
        .route("/v1/owners", get(images::owners))
        .route(
            "/v1/stores/{store}/images/{id}/owners/{owner}",
            put(images::acquire).delete(images::release),
        )
        .route("/v1/stores/{store}/images/{id}/export", get(images::export))
        .route("/v1/stores/{store}/images/{id}/layer", get(images::layer))
        .route(
            "/v1/stores/{store}/writables/{id}",
            put(images::create_writable)
                .get(images::get_writable)
                .delete(images::delete_writable),
        )
        .route(
            "/v1/stores/{store}/writables/{id}/import",
            post(images::import),
        )
        .route(
            "/v1/stores/{store}/writables/{id}/commit",
            post(images::commit),
        )
        .route("/v1/stores/{store}/refs", get(stores::list_refs))
        .route(
            "/v1/stores/{store}/refs/{name}",
            get(stores::get_ref)
                .put(stores::set_ref)
                .delete(stores::delete_ref),
        )
        .route("/v1/stores/{store}/blobs", get(stores::list_blobs))
        .route(
            "/v1/stores/{store}/blobs/{digest}",
            get(stores::get_blob)
                .put(stores::put_blob)
                .delete(stores::delete_blob),
        )
        .route("/v1/stores/{store}/pins", get(stores::pins))
        .route("/v1/stores/{store}/gc", post(stores::gc))
}

async fn openapi() -> Response {
    let mut resp = OPENAPI.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}
