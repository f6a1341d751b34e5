//! What backend authors need and library users do not: the blocking adapter that turns two
//! small traits into the storage traits ([`blocking`]), the catalogue protocol that every
//! file-like backend shares ([`catalog`]) over a small storage trait ([`storage`], with a
//! local-directory implementation in [`local`]), cross-process locks ([`lock`]), the records
//! stored with each image ([`record`]) and a bounded cache ([`cache`]).
//!
//! A new file-like backend implements [`storage::Storage`] (or uses [`local::LocalStorage`])
//! and [`catalog::Representation`], then [`blocking::BlockingBackend`] for its handle; the
//! conformance suite (`tests/conformance`) then checks it like every other backend.

pub mod blocking;
pub mod cache;
pub mod catalog;
pub mod local;
pub mod lock;
pub mod record;
pub mod storage;
