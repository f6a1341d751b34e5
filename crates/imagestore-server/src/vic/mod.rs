//! VIC's port-layer storage API (`/storage…`, `/archive`), with VIC's wire behaviour: Go's
//! JSON encoding, go-swagger's parameter rules and framework errors, VIC's links and models.
//! `docs/server.md` ("VIC's port-layer API") lists the routes and every deliberate deviation.
//!
//! * [`images`] — the image-store routes under `/storage`;
//! * [`archive`] — `GET|POST|HEAD /archive` (export, import, StatPath);
//! * [`wire`] — what every route shares: errors, JSON, query parameters, links;
//! * `/swagger.json` — VIC's swagger subset as this server answers it.

mod archive;
mod images;
mod stat;
mod wire;

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::AppState;

/// VIC's swagger subset (`vic-portlayer-storage-swagger.json`), adjusted to what this server
/// answers (the adjustments are listed in `docs/server.md`).
const SWAGGER: &str = include_str!("../../vic-swagger.json");

/// VIC's port-layer storage routes (`/storage…`, `/archive`) and their swagger document.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/storage", post(images::create_store))
        .route(
            "/storage/{store_name}",
            get(images::list_images).post(images::write_image),
        )
        .route(
            "/storage/{store_name}/info/{id}",
            get(images::get_image)
                .post(images::image_join)
                .delete(images::delete_image),
        )
        .route("/storage/{store_name}/usage", get(images::usage))
        .route("/storage/{store_name}/tar/{id}", get(images::image_tar))
        .route(
            "/archive",
            get(archive::export)
                .post(archive::import)
                .head(archive::stat_path),
        )
        .route("/swagger.json", get(swagger))
}

async fn swagger() -> Response {
    let mut resp = SWAGGER.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}
