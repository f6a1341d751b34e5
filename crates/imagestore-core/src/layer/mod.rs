//! The layer engine: everything about the contents of layers that every backend shares.
//!
//! * [`ingest`] — the one-pass write pipeline (hash, stage, decompress, parse, check, TOC);
//! * [`tar_reader`] and [`validate`] — the streaming tar reader and the ingest defences;
//! * [`represent`] — the one representability rule (what ext4 on Linux can hold);
//! * [`toc`] — the per-layer table of contents and its stored form;
//! * [`path`] — normalised root-relative paths;
//! * [`scratch`] — the root image's skeleton;
//! * [`filter`] — VIC's include/exclude/strip/rebase filter;
//! * [`chain`], [`compose`] and [`stack`] — the merged view of a chain of layers and diffs;
//! * [`export`], [`content`] and [`checkout`] — writing views as tars or directories;
//! * [`sparse`] — GNU sparse files on the way out, holes kept.

pub mod chain;
pub mod checkout;
pub mod compose;
pub mod content;
pub mod export;
pub mod filter;
pub mod index;
pub mod ingest;
pub mod path;
pub mod represent;
pub mod rewrite;
pub mod scratch;
pub mod sink;
pub mod sparse;
pub mod stack;
pub mod stream;
pub mod tar_reader;
pub mod toc;
pub mod validate;
