//! Reading the records stored with each image (`image.json`) and writable layer
//! (`writable.json`); the record types are core's.

use std::path::Path;

use imagestore_core::Result;
use imagestore_core::record::{Versioned, decode};
use serde::de::DeserializeOwned;

pub use imagestore_core::record::{ImageRecord, WritableRecord};

use crate::error::IoContext;

/// Reads and decodes the record file at `path`.
pub fn read<T: DeserializeOwned + Versioned>(path: &Path) -> Result<T> {
    let bytes = std::fs::read(path).at(path)?;
    decode(&path.display().to_string(), &bytes)
}
