//! VIC's port-layer storage routes.

use axum::Router;

use crate::AppState;

/// VIC's port-layer storage routes (`/storage…`, `/archive`).
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
}
