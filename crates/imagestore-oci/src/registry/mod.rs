//! Pulling images from and pushing them to OCI distribution registries (Docker Hub,
//! `docker-registry`, ...).

pub mod auth;
pub mod client;
pub mod pull;
pub mod push;
pub mod reference;
pub mod upload;

pub use auth::Credentials;
pub use client::{Client, ClientOptions};
pub use pull::{PullOptions, pull};
pub use push::{PushOptions, Pushed, push};
pub use reference::Reference;
