//! Checkout of a remote image: the server exports the merged image as a tar, and this host
//! materialises it with the layer engine's own rules, so nothing is written on the server's
//! host and a hostile tree (or a hostile server) meets the same defences as any layer.
//!
//! The tar is ingested once (the checks and the TOC of any layer write) into an anonymous
//! temporary file beside the destination, which then serves as the one layer of a stack
//! handed to the engine's checkout. The file has no name, so it disappears with its handle
//! whatever happens, and nothing is left outside the destination.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::path::Path;
use std::sync::Arc;

use imagestore_core::layer::chain::{LayerToc, MemoryToc};
use imagestore_core::layer::checkout::{CheckoutOptions, CheckoutReport};
use imagestore_core::layer::export::{LayerReader, LayerSource, layer_reader};
use imagestore_core::layer::ingest::{IngestLimits, ingest};
use imagestore_core::layer::sink::FileSink;
use imagestore_core::layer::stack::Stack;
use imagestore_core::layer::toc::Compression;
use imagestore_core::layer::validate::EmptyView;
use imagestore_core::{ByteStream, Error, ImageId, Result};

use crate::error::BACKEND;

/// The exported tar, kept in a temporary file.
struct Spooled {
    file: File,
    compression: Compression,
}

impl LayerSource for Spooled {
    fn open(&self, index: usize) -> Result<Box<dyn LayerReader>> {
        if index != 0 {
            return Err(Error::invalid(format!("no layer {index} in this checkout")));
        }
        let spool =
            |e: std::io::Error| Error::backend(BACKEND, format!("checkout spool: {e}"), false);
        // One pass reads at a time, so the clone's shared offset is this reader's alone.
        let mut f = self.file.try_clone().map_err(spool)?;
        f.seek(SeekFrom::Start(0)).map_err(spool)?;
        layer_reader(f, self.compression)
    }
}

/// Materialises the merged image in `tar` (image `id`'s whole export) into `dest`, which must
/// be absent or an empty directory.
pub(crate) async fn checkout_tar(
    id: &ImageId,
    tar: ByteStream,
    dest: &Path,
    options: &CheckoutOptions,
) -> Result<CheckoutReport> {
    let near = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty() && p.is_dir())
        .map(Path::to_owned)
        .unwrap_or_else(std::env::temp_dir);
    let file = tokio::task::spawn_blocking(move || {
        tempfile::tempfile_in(&near)
            .map_err(|e| Error::io(BACKEND, &near.join("(checkout spool)"), e))
    })
    .await
    .map_err(|e| Error::backend(BACKEND, format!("checkout spool task failed: {e}"), false))??;
    let mut sink = FileSink::from_file(BACKEND, file, "(checkout spool)".into());
    let ingested = ingest(
        tar,
        None,
        &mut sink,
        Arc::new(EmptyView),
        IngestLimits::default(),
    )
    .await?;
    let file = sink
        .into_file()
        .ok_or_else(|| Error::backend(BACKEND, "checkout spool closed early", false))?;
    let toc = Arc::new(ingested.toc);
    let stack = Stack {
        owners: vec![id.clone()],
        layers: vec![Arc::new(MemoryToc::new(toc.clone())) as Arc<dyn LayerToc>],
        source: Arc::new(Spooled {
            file,
            compression: toc.compression,
        }),
    };
    stack.checkout(dest.to_owned(), options.clone()).await
}
