//! Building a new store directory with its `scratch` root image.

use std::path::Path;

use imagestore_core::layer::index;
use imagestore_core::layer::ingest::{IngestLimits, read_toc};
use imagestore_core::layer::scratch::skeleton_tar;
use imagestore_core::layer::validate::EmptyView;
use imagestore_core::{ImageId, Metadata, Result};

use crate::fsx;
use crate::layout::StoreDir;
use crate::record::ImageRecord;

/// Builds a complete store (directories, counters, scratch) in `dir`, every file and
/// directory fsynced, ready to be renamed into place.
pub fn build_store(dir: &Path) -> Result<()> {
    fsx::mkdir(dir, false)?;
    let sd = StoreDir {
        dir: dir.to_owned(),
    };
    for d in [sd.images(), sd.staging(), sd.trash(), sd.writables()] {
        fsx::mkdir(&d, false)?;
    }
    fsx::write_new_synced(&sd.lock_file(), b"")?;
    fsx::write_new_synced(&sd.usage(), b"0")?;

    let scratch = sd.image(&ImageId::scratch());
    fsx::mkdir(&scratch.dir, false)?;
    let tar = skeleton_tar()?;
    let toc = read_toc(tar.as_slice(), &EmptyView, IngestLimits::default())?;
    fsx::write_new_synced(&scratch.layer(), &tar)?;
    fsx::write_new_synced(&scratch.toc(), &toc.to_bytes()?)?;
    fsx::write_new_synced(&scratch.toc_index(), &index::build(&toc)?)?;
    let record = ImageRecord::new(
        ImageId::scratch(),
        None,
        None,
        tar.len() as u64,
        0,
        &Metadata::new(),
    );
    fsx::write_new_synced(&scratch.record(), &imagestore_core::record::encode(&record))?;
    fsx::write_new_synced(&scratch.committed(), b"")?;
    fsx::sync_dir(&scratch.dir)?;
    fsx::sync_dir(&sd.images())?;
    fsx::sync_dir(dir)
}
