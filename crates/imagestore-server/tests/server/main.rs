//! The server over real TCP in front of a `file://` store in a temporary directory, with
//! reqwest as the client: the native API route by route, streams, cancellation, security and
//! operations.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod native;
mod ops;
mod security;
mod streams;
