//! A new disk being written block by block over a read-only lower chain: the device the
//! in-process ext4 writer works on ([`crate::ext4`]).
//!
//! Reads come from the new disk where it holds the grain, else from the lower chain (zeros
//! without one). The first write into a grain gives it a place at the end of the new disk's
//! file and copies the lower chain's bytes of the grain there (nothing is copied when the
//! lower grain is unallocated: the file's hole reads as zeros); every write then goes
//! straight to that place. So the new disk holds exactly the grains the writer touched, the
//! lower chain is never written, and no raw image of the chain exists at any point.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use super::chain::Chain;
use super::writer::GrainWriter;
use super::{GRAIN, bad};

/// Writes gathered before they go to the file: the ext4 writer writes a file's data block
/// by block, and one system call per 1 MiB run instead of per 4 KiB block is what keeps
/// writing cheap.
const GATHER: usize = 1 << 20;

/// A disk being written over a lower chain.
#[derive(Debug)]
pub struct Overlay {
    lower: Option<Arc<Chain>>,
    writer: Box<dyn GrainWriter>,
    size: u64,
    grain: Vec<u8>,
    /// A run of contiguous writes not yet in the file: where it starts, and its bytes.
    pending: (u64, Vec<u8>),
}

impl Overlay {
    /// An overlay writing through `writer` (a fresh disk of `size` bytes, in any format) over
    /// `lower`, whose size must match.
    pub fn new(
        lower: Option<Arc<Chain>>,
        writer: impl GrainWriter + 'static,
        size: u64,
    ) -> io::Result<Overlay> {
        Self::boxed(lower, Box::new(writer), size)
    }

    /// [`Overlay::new`] with the writer boxed already.
    pub fn boxed(
        lower: Option<Arc<Chain>>,
        writer: Box<dyn GrainWriter>,
        size: u64,
    ) -> io::Result<Overlay> {
        if let Some(c) = &lower
            && c.size_bytes() != size
        {
            return Err(bad(
                "disk overlay",
                format!(
                    "the new disk has {size} bytes but its lower chain {}",
                    c.size_bytes()
                ),
            ));
        }
        Ok(Overlay {
            lower,
            writer,
            size,
            grain: vec![0; GRAIN as usize],
            pending: (0, Vec::with_capacity(GATHER)),
        })
    }

    /// Size of the virtual disk in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Copies into the new disk every grain that `current` holds in its disks above the
    /// first `below` (the disks the lower chain shares with it), so the new disk starts with
    /// `current`'s contents while its parent is the lower chain.
    pub fn seed(&mut self, current: &Chain, below: usize) -> io::Result<()> {
        let mut grains: Vec<u32> = current
            .disks()
            .iter()
            .skip(below)
            .flat_map(|d| d.grains.iter().map(|(g, _)| *g))
            .collect();
        grains.sort_unstable();
        grains.dedup();
        let mut buf = vec![0u8; GRAIN as usize];
        for g in grains {
            current.read_grain(u64::from(g), &mut buf)?;
            let at = self.writer.allocate(g)?;
            self.writer.file().write_all_at(&buf, at)?;
        }
        Ok(())
    }

    fn check(&self, offset: u64, len: usize) -> io::Result<()> {
        match offset.checked_add(len as u64) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(bad(
                "disk overlay",
                format!("access of {len} bytes at {offset} past the end of the disk"),
            )),
        }
    }

    /// Reads `buf.len()` bytes of the virtual disk at `offset`.
    pub fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.flush()?;
        self.read_written(offset, buf)
    }

    fn read_written(&self, mut offset: u64, mut buf: &mut [u8]) -> io::Result<()> {
        self.check(offset, buf.len())?;
        while !buf.is_empty() {
            let g = offset / GRAIN;
            let within = offset % GRAIN;
            let n = ((GRAIN - within) as usize).min(buf.len());
            let (now, rest) = buf.split_at_mut(n);
            match self.writer.grain_offset(g as u32) {
                Some(at) => self.writer.file().read_exact_at(now, at + within)?,
                None => match &self.lower {
                    Some(c) => c.read_at(offset, now)?,
                    None => now.fill(0),
                },
            }
            buf = rest;
            offset += n as u64;
        }
        Ok(())
    }

    /// Writes `data` into the virtual disk at `offset`. Contiguous writes are gathered and
    /// reach the file together (before any read, and at the latest by [`Overlay::finish`]).
    pub fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.check(offset, data.len())?;
        let (start, buf) = &self.pending;
        if buf.is_empty() || start + buf.len() as u64 != offset || buf.len() + data.len() > GATHER {
            self.flush()?;
            self.pending.0 = offset;
        }
        if data.len() >= GATHER {
            return self.write_through(offset, data);
        }
        self.pending.1.extend_from_slice(data);
        Ok(())
    }

    /// Writes the gathered run to the file.
    pub fn flush(&mut self) -> io::Result<()> {
        if self.pending.1.is_empty() {
            return Ok(());
        }
        let (at, buf) = std::mem::take(&mut self.pending);
        let r = self.write_through(at, &buf);
        self.pending = (0, buf);
        self.pending.1.clear();
        r
    }

    fn write_through(&mut self, mut offset: u64, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let g = offset / GRAIN;
            let within = offset % GRAIN;
            let n = ((GRAIN - within) as usize).min(data.len());
            let at = match self.writer.grain_offset(g as u32) {
                Some(at) => at,
                None => self.place(g, n as u64 == GRAIN)?,
            };
            self.writer.file().write_all_at(&data[..n], at + within)?;
            data = &data[n..];
            offset += n as u64;
        }
        Ok(())
    }

    /// Gives grain `g` its place in the new disk, with the lower chain's bytes unless the
    /// caller is about to overwrite all of them.
    fn place(&mut self, g: u64, whole: bool) -> io::Result<u64> {
        let at = self.writer.allocate(g as u32)?;
        if !whole
            && let Some(c) = &self.lower
            && c.is_allocated(g)
        {
            c.read_grain(g, &mut self.grain)?;
            if self.grain.iter().any(|b| *b != 0) {
                self.writer.file().write_all_at(&self.grain, at)?;
                return Ok(at);
            }
        }
        // The grain is the last in the file: extending the file makes it read as zeros.
        self.writer.file().set_len(at + GRAIN)?;
        Ok(at)
    }

    /// Grains the new disk holds so far (writes gathered are placed first).
    pub fn grains(&mut self) -> io::Result<usize> {
        self.flush()?;
        Ok(self.writer.grains())
    }

    /// Writes the grain directories and tables and syncs the disk; its file and size.
    pub fn finish(mut self) -> io::Result<(File, u64)> {
        self.flush()?;
        let (file, size) = self.writer.finish_unsynced()?;
        file.sync_all()?;
        Ok((file, size))
    }

    /// [`Overlay::finish`] without the sync, which the caller owes before relying on the
    /// disk being on disk.
    pub fn finish_unsynced(mut self) -> io::Result<(File, u64)> {
        self.flush()?;
        self.writer.finish_unsynced()
    }
}
