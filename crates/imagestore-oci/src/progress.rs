//! Progress of long operations, reported as events to whoever shows them (a terminal's
//! progress bars, JSON lines for machines, or nothing).

use imagestore_core::{Digest, ImageId};
use serde::Serialize;

/// What is happening to a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Downloading its blob from a registry.
    Download,
    /// Writing it into the store (reading a source, verifying, storing).
    Write,
    /// Exporting it out of the store.
    Export,
    /// Uploading its blob to a registry.
    Upload,
}

/// One progress event. Layers are numbered from 0 (the base) in chain order.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A layer phase starts.
    Start {
        /// Layer index.
        layer: usize,
        /// Number of layers.
        layers: usize,
        /// The phase.
        phase: Phase,
        /// The layer's blob digest.
        digest: Digest,
        /// Bytes expected, when known.
        total: Option<u64>,
    },
    /// Bytes moved since the last event of this layer and phase.
    Advance {
        /// Layer index.
        layer: usize,
        /// The phase.
        phase: Phase,
        /// Bytes since the last event.
        bytes: u64,
    },
    /// A layer phase ended.
    Finish {
        /// Layer index.
        layer: usize,
        /// The phase.
        phase: Phase,
        /// The image written or exported, if any.
        image: Option<ImageId>,
        /// True if nothing had to be done (already stored or downloaded).
        skipped: bool,
    },
    /// A download is tried again after a failure.
    Retry {
        /// Layer index.
        layer: usize,
        /// Which attempt starts now (2 for the first retry).
        attempt: u32,
        /// Bytes already downloaded, resumed from.
        resume_from: u64,
        /// Why the previous attempt failed.
        reason: String,
    },
}

/// Receives progress events; must be cheap and must not block.
pub trait Progress: Send + Sync {
    /// Called for each event.
    fn event(&self, event: Event);

    /// Whether byte counts are wanted at all (lets callers skip counting when nobody looks).
    fn wants_bytes(&self) -> bool {
        true
    }
}

/// Progress that shows nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct Quiet;

impl Progress for Quiet {
    fn event(&self, _event: Event) {}

    fn wants_bytes(&self) -> bool {
        false
    }
}
