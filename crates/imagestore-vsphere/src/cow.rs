//! A copy-on-write block device over a disk chain, for the ext4 writer: reads come from the
//! grains written so far or else from the chain; the first write to a grain copies it up into
//! an overlay file in the work directory. The chain is never modified. When the writer is
//! done, [`CowDevice::changed_grains`] lists the grains that really differ from the chain,
//! which become the new delta disk.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use rust_fs_ext4::block_io::BlockDevice;

use crate::vmdk::GRAIN;
use crate::vmdk::chain::Chain;

/// What a device reads below its overlay.
pub trait Base: Send + Sync {
    /// Reads `buf.len()` bytes at `offset`.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Reads grain `g` in full.
    fn read_grain(&self, g: u64, buf: &mut [u8]) -> io::Result<()>;
    /// True if the grain holds stored data (otherwise it reads as zeros).
    fn is_allocated(&self, g: u64) -> bool;
    /// Size in bytes.
    fn size_bytes(&self) -> u64;
}

impl Base for Chain {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        Chain::read_at(self, offset, buf)
    }
    fn read_grain(&self, g: u64, buf: &mut [u8]) -> io::Result<()> {
        Chain::read_grain(self, g, buf)
    }
    fn is_allocated(&self, g: u64) -> bool {
        Chain::is_allocated(self, g)
    }
    fn size_bytes(&self) -> u64 {
        Chain::size_bytes(self)
    }
}

/// A disk of zeros of a given size (the base of a fresh filesystem).
#[derive(Debug, Clone, Copy)]
pub struct Zeros(pub u64);

impl Base for Zeros {
    fn read_at(&self, _offset: u64, buf: &mut [u8]) -> io::Result<()> {
        buf.fill(0);
        Ok(())
    }
    fn read_grain(&self, _g: u64, buf: &mut [u8]) -> io::Result<()> {
        buf.fill(0);
        Ok(())
    }
    fn is_allocated(&self, _g: u64) -> bool {
        false
    }
    fn size_bytes(&self) -> u64 {
        self.0
    }
}

struct Overlay {
    file: File,
    slots: HashMap<u64, u64>,
}

/// The copy-on-write device.
pub struct CowDevice {
    base: Arc<dyn Base>,
    overlay: Mutex<Option<Overlay>>,
}

impl std::fmt::Debug for CowDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CowDevice").finish_non_exhaustive()
    }
}

fn poisoned() -> io::Error {
    io::Error::other("copy-on-write overlay lock poisoned")
}

impl CowDevice {
    /// A writable device over `base` with its overlay in a new file at `overlay`.
    pub fn new(base: Arc<dyn Base>, overlay: &Path) -> io::Result<CowDevice> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(overlay)?;
        Ok(CowDevice {
            base,
            overlay: Mutex::new(Some(Overlay {
                file,
                slots: HashMap::new(),
            })),
        })
    }

    /// A read-only device over `base`.
    pub fn read_only(base: Arc<dyn Base>) -> CowDevice {
        CowDevice {
            base,
            overlay: Mutex::new(None),
        }
    }

    fn read_io(&self, mut offset: u64, mut buf: &mut [u8]) -> io::Result<()> {
        if offset + buf.len() as u64 > self.base.size_bytes() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past the end of the disk",
            ));
        }
        let ov = self.overlay.lock().map_err(|_| poisoned())?;
        while !buf.is_empty() {
            let g = offset / GRAIN;
            let within = offset % GRAIN;
            let n = ((GRAIN - within) as usize).min(buf.len());
            let (now, rest) = buf.split_at_mut(n);
            match ov.as_ref().and_then(|o| o.slots.get(&g).map(|s| (o, *s))) {
                Some((o, slot)) => o.file.read_exact_at(now, slot * GRAIN + within)?,
                None => self.base.read_at(offset, now)?,
            }
            buf = rest;
            offset += n as u64;
        }
        Ok(())
    }

    fn write_io(&self, mut offset: u64, mut buf: &[u8]) -> io::Result<()> {
        if offset + buf.len() as u64 > self.base.size_bytes() {
            return Err(io::Error::other("write past the end of the disk"));
        }
        let mut guard = self.overlay.lock().map_err(|_| poisoned())?;
        let ov = guard
            .as_mut()
            .ok_or_else(|| io::Error::other("device is read-only"))?;
        let mut grain = Vec::new();
        while !buf.is_empty() {
            let g = offset / GRAIN;
            let within = offset % GRAIN;
            let n = ((GRAIN - within) as usize).min(buf.len());
            let slot = match ov.slots.get(&g) {
                Some(s) => *s,
                None => {
                    let s = ov.slots.len() as u64;
                    if n as u64 != GRAIN {
                        grain.resize(GRAIN as usize, 0);
                        self.base.read_grain(g, &mut grain)?;
                        ov.file.write_all_at(&grain, s * GRAIN)?;
                    }
                    ov.slots.insert(g, s);
                    s
                }
            };
            ov.file.write_all_at(&buf[..n], slot * GRAIN + within)?;
            buf = &buf[n..];
            offset += n as u64;
        }
        Ok(())
    }

    /// The grains whose contents differ from the base, in order, with their new contents
    /// read through `each`. A grain that became all zeros where the base has no data is left
    /// out (it reads as zeros anyway).
    pub fn changed_grains(
        &self,
        mut each: impl FnMut(u64, &[u8]) -> io::Result<()>,
    ) -> io::Result<usize> {
        let guard = self.overlay.lock().map_err(|_| poisoned())?;
        let Some(ov) = guard.as_ref() else {
            return Ok(0);
        };
        let mut grains: Vec<(u64, u64)> = ov.slots.iter().map(|(g, s)| (*g, *s)).collect();
        grains.sort_unstable();
        let mut new = vec![0u8; GRAIN as usize];
        let mut old = vec![0u8; GRAIN as usize];
        let mut n = 0;
        for (g, slot) in grains {
            ov.file.read_exact_at(&mut new, slot * GRAIN)?;
            if self.base.is_allocated(g) {
                self.base.read_grain(g, &mut old)?;
                if old == new {
                    continue;
                }
            } else if new.iter().all(|b| *b == 0) {
                continue;
            }
            each(g, &new)?;
            n += 1;
        }
        Ok(n)
    }
}

fn fs_err(e: io::Error) -> rust_fs_ext4::Error {
    rust_fs_ext4::Error::Io(e)
}

impl BlockDevice for CowDevice {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> rust_fs_ext4::Result<()> {
        self.read_io(offset, buf).map_err(fs_err)
    }

    fn size_bytes(&self) -> u64 {
        self.base.size_bytes()
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> rust_fs_ext4::Result<()> {
        self.write_io(offset, buf).map_err(fs_err)
    }

    fn flush(&self) -> rust_fs_ext4::Result<()> {
        // The overlay is a work file: durability comes from the disk built from it.
        Ok(())
    }

    fn is_writable(&self) -> bool {
        self.overlay.lock().map(|o| o.is_some()).unwrap_or(false)
    }
}
