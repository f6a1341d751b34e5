//! Reading files out of the ext4 inside the disks, with `ext4-view`: straight through a disk
//! chain's grains for export, diff, checkout and the read-back of a new disk (nothing is
//! materialised).
//!
//! [`FsContent`] is the layer engine's [`ContentSource`] for these backends: the engine plans
//! an export from the TOCs, and the data of each file is read at its path in the image's own
//! filesystem, which holds exactly the merged view of its chain. The engine checks every
//! file's bytes against the TOC's digest as they are copied.

use std::fmt;
use std::io::Read;
use std::sync::Arc;

use ext4_view::{Ext4, Ext4Read};
use imagestore_core::layer::compose::EntryRef;
use imagestore_core::layer::content::{ContentPass, ContentSource};
use imagestore_core::layer::toc::TocEntry;
use imagestore_core::{Error, Result};

use crate::vmdk::GRAIN;
use crate::vmdk::chain::Chain;

/// The ext4 bytes of a chain, as `ext4-view` reads them. The reader asks for one block at a
/// time; when it reads on from where it stopped (a file's data), the rest of the grain is
/// read along and kept, so reading a file costs one read per grain (64 KiB) instead of one
/// per block, while scattered metadata reads fetch only what they ask for.
struct ChainBytes {
    chain: Arc<Chain>,
    /// The grain in `cache`, if any.
    cached: Option<u64>,
    cache: Vec<u8>,
    /// Where the last read ended.
    next: u64,
}

impl ChainBytes {
    fn new(chain: Arc<Chain>) -> ChainBytes {
        ChainBytes {
            chain,
            cached: None,
            cache: vec![0; GRAIN as usize],
            next: u64::MAX,
        }
    }
}

impl Ext4Read for ChainBytes {
    fn read(
        &mut self,
        mut start: u64,
        mut dst: &mut [u8],
    ) -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        let sequential = start == self.next;
        self.next = start.saturating_add(dst.len() as u64);
        if !sequential && (start / GRAIN) != self.cached.unwrap_or(u64::MAX) {
            return self.chain.read_at(start, dst).map_err(Into::into);
        }
        let size = self.chain.size_bytes();
        while !dst.is_empty() {
            let g = start / GRAIN;
            let within = (start % GRAIN) as usize;
            let n = (GRAIN as usize - within).min(dst.len());
            let (now, rest) = dst.split_at_mut(n);
            if self.cached != Some(g) {
                let base = g * GRAIN;
                let len = (size.saturating_sub(base)).min(GRAIN) as usize;
                if within + n > len {
                    return Err("read past the end of the disk".into());
                }
                self.cached = None;
                self.chain.read_at(base, &mut self.cache[..len])?;
                self.cached = Some(g);
            }
            now.copy_from_slice(&self.cache[within..within + n]);
            dst = rest;
            start += n as u64;
        }
        Ok(())
    }
}

/// The files of the ext4 filesystem in a disk chain, as a [`ContentSource`].
#[derive(Clone)]
pub struct FsContent {
    chain: Arc<Chain>,
    /// How the filesystem is named in errors (an image, a raw file).
    what: String,
}

impl fmt::Debug for FsContent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FsContent")
            .field("what", &self.what)
            .finish()
    }
}

impl FsContent {
    /// The filesystem of the chain whose top disk is an image's (or writable layer's) disk.
    pub fn of_chain(chain: Arc<Chain>, what: impl Into<String>) -> FsContent {
        FsContent {
            chain,
            what: what.into(),
        }
    }

    /// The chain the filesystem is read through.
    pub fn chain(&self) -> &Arc<Chain> {
        &self.chain
    }

    fn fail(&self, e: impl fmt::Display) -> Error {
        Error::corrupt(format!("ext4 of {}", self.what), e.to_string())
    }

    /// Loads the filesystem (superblock, group descriptors, journal) for reading on this
    /// thread.
    pub fn load(&self) -> Result<Ext4> {
        let reader: Box<dyn Ext4Read> = Box::new(ChainBytes::new(self.chain.clone()));
        Ext4::load(reader).map_err(|e| self.fail(e))
    }

    /// The whole contents of regular file `path` (root-relative, as in a TOC): for checks.
    pub fn read_file(&self, path: &str) -> Result<Vec<u8>> {
        let fs = self.load()?;
        fs.read(format!("/{path}").as_str())
            .map_err(|e| self.fail(format!("/{path}: {e}")))
    }
}

/// One pass over a loaded filesystem.
struct FsPass<'a> {
    fs: Ext4,
    source: &'a FsContent,
}

impl ContentSource for FsContent {
    fn pass(&self) -> Result<Box<dyn ContentPass + '_>> {
        Ok(Box::new(FsPass {
            fs: self.load()?,
            source: self,
        }))
    }
}

impl FsPass<'_> {
    /// Opens regular file `path`, checking its length against its TOC entry.
    fn open_file(&mut self, path: &str, entry: &TocEntry) -> Result<ext4_view::File> {
        let abs = format!("/{path}");
        let file = self
            .fs
            .open(abs.as_str())
            .map_err(|e| self.source.fail(format!("{abs}: {e}")))?;
        let len = file.metadata().len();
        if len != entry.size {
            return Err(self.source.fail(format!(
                "{abs} holds {len} bytes, its TOC entry {}",
                entry.size
            )));
        }
        Ok(file)
    }
}

impl ContentPass for FsPass<'_> {
    fn open(
        &mut self,
        path: &str,
        _content: EntryRef,
        entry: &TocEntry,
    ) -> Result<Box<dyn Read + '_>> {
        Ok(Box::new(self.open_file(path, entry)?))
    }

    /// Reads only a sparse file's stored segments, seeking over its holes (which the disk
    /// keeps as holes), so exporting a large sparse file costs its stored bytes.
    fn open_stored(
        &mut self,
        path: &str,
        _content: EntryRef,
        entry: &TocEntry,
    ) -> Result<Box<dyn Read + '_>> {
        let file = self.open_file(path, entry)?;
        let segments = match &entry.sparse {
            Some(map) => map.clone(),
            None => vec![(0, entry.size)],
        };
        Ok(Box::new(Segments {
            file,
            segments,
            next: 0,
            left: 0,
        }))
    }
}

/// The stored segments of a file, read one after the other by seeking to each.
struct Segments {
    file: ext4_view::File,
    segments: Vec<(u64, u64)>,
    /// The next segment to seek to.
    next: usize,
    /// Bytes left in the current segment.
    left: u64,
}

impl Read for Segments {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::io::{Seek, SeekFrom};
        while self.left == 0 {
            let Some(&(offset, len)) = self.segments.get(self.next) else {
                return Ok(0);
            };
            self.next += 1;
            self.file.seek(SeekFrom::Start(offset))?;
            self.left = len;
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.file.read(&mut buf[..want])?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "a sparse file's segment ends early",
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}
