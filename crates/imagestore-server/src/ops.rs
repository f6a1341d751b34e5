//! The operational routes: `/healthz` (the process answers), `/readyz` (the backend answers
//! within a timeout) and `/metrics` (Prometheus text format, with each store's usage read on
//! scrape).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use imagestore_core::ImageStorer;
use imagestore_core::image::store_name_of;

use crate::AppState;
use crate::error::ApiError;

/// Most stores whose usage a scrape reports (the first, by name), so that a scrape stays
/// cheap on a backend with many stores.
const MAX_USAGE_STORES: usize = 64;

/// How long a scrape waits for the stores' usage before it answers without it.
const USAGE_TIMEOUT: Duration = Duration::from_secs(5);

/// The operational routes.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    match tokio::time::timeout(state.ready_timeout, state.storer.list_image_stores()).await {
        Ok(Ok(_)) => Ok("ready\n"),
        Ok(Err(e)) => {
            let e = ApiError::from_error(&e, &state.redactor);
            Err(ApiError::plain(
                StatusCode::SERVICE_UNAVAILABLE,
                503,
                format!("backend not reachable: {}", e.body().message),
            ))
        }
        Err(_) => Err(ApiError::plain(
            StatusCode::SERVICE_UNAVAILABLE,
            503,
            format!(
                "backend did not answer within {} ms",
                state.ready_timeout.as_millis()
            ),
        )),
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    let usage = tokio::time::timeout(USAGE_TIMEOUT, store_usage(state.storer.clone()))
        .await
        .unwrap_or_default();
    let mut resp = state.metrics.render(&usage).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}

/// (store, usage, quota) of the first [`MAX_USAGE_STORES`] stores; a store whose usage
/// cannot be read is left out.
async fn store_usage(storer: Arc<dyn ImageStorer>) -> Vec<(String, u64, Option<u64>)> {
    let Ok(urls) = storer.list_image_stores().await else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for url in urls.iter().take(MAX_USAGE_STORES) {
        let Ok(name) = store_name_of(url) else {
            continue;
        };
        let Ok(used) = storer.image_storage_usage(&name).await else {
            continue;
        };
        let quota = storer.quota(&name).await.ok().flatten();
        out.push((name.to_string(), used, quota));
    }
    out
}
