//! Pulling images from OCI distribution registries (Docker Hub, `docker-registry`, ...).

pub mod auth;
pub mod client;
pub mod pull;
pub mod reference;

pub use auth::Credentials;
pub use client::{Client, ClientOptions};
pub use pull::{PullOptions, pull};
pub use reference::Reference;
