//! Applying a [`FilterSpec`] to an incoming tar before it is imported into a writable layer:
//! excluded entries are dropped, kept ones are renamed (strip, then rebase). Whiteouts are
//! filtered and renamed by the path they delete, as VIC does. The output is a plain tar that
//! then goes through the normal ingest checks.

use std::io::{self, BufRead, BufReader, Read};

use crate::layer::export::{append_entry, header_for};
use crate::layer::filter::FilterSpec;
use crate::layer::ingest::{decompressor, sniff};
use crate::layer::path;
use crate::layer::sparse::{Pieces, gnu_sparse_header};
use crate::layer::stream::{BlockingReader, spawn_producer};
use crate::layer::tar_reader::{RawEntry, RawKind, TarLimits, TarReader, map_read_error};
use crate::layer::toc::{EntryKind, TocEntry};
use crate::layer::validate::{OPAQUE_MARKER, WHITEOUT_PREFIX};
use crate::storer::ByteStream;

/// Returns `input` filtered by `filter` (the input itself when the filter changes nothing).
pub fn filter_tar(input: ByteStream, filter: FilterSpec, limits: TarLimits) -> ByteStream {
    if filter.is_identity() && filter.inclusions.is_empty() {
        return input;
    }
    let handle = tokio::runtime::Handle::current();
    spawn_producer(move |w| {
        let mut buffered = BufReader::new(BlockingReader::new(handle, input));
        let magic = buffered.fill_buf().map_err(map_read_error)?.to_vec();
        let compression = sniff(&magic)?;
        let decoded = decompressor(compression, buffered)?;
        let mut reader = TarReader::new(decoded, limits);
        let mut out = tar::Builder::new(w);
        while let Some(raw) = reader.next_entry()? {
            let p = path::normalize(&raw.name)?;
            let name = path::base(&p);
            let dir = path::parent(&p);
            // Markers are filtered by what they delete and renamed with their directory.
            let (subject, marker) = if name == OPAQUE_MARKER {
                (dir.to_owned(), Some(OPAQUE_MARKER.to_owned()))
            } else if let Some(rest) = name.strip_prefix(WHITEOUT_PREFIX) {
                (path::join(dir, rest), Some(name.to_owned()))
            } else {
                (p.clone(), None)
            };
            if filter.excludes(&subject) {
                continue;
            }
            let new_name = match marker {
                Some(m) => {
                    let mapped_dir = if m == OPAQUE_MARKER {
                        filter.map_path(&subject)?.unwrap_or_default()
                    } else {
                        match filter.map_path(&subject)? {
                            Some(t) => path::parent(&t).to_owned(),
                            None => continue,
                        }
                    };
                    path::join(&mapped_dir, &m)
                }
                None => match filter.map_path(&p)? {
                    Some(n) => n,
                    None => continue,
                },
            };
            let mut e = entry_of(&raw);
            let link = match raw.kind {
                RawKind::Hardlink => {
                    let target = path::normalize(raw.link.as_deref().unwrap_or_default())?;
                    match filter.apply(&target)? {
                        Some(t) => Some(t),
                        None => continue,
                    }
                }
                RawKind::Symlink => raw.link.clone(),
                _ => None,
            };
            let name = if raw.kind == RawKind::Dir {
                format!("{new_name}/")
            } else {
                new_name
            };
            let mut h = header_for(&e)?;
            if raw.kind == RawKind::File {
                h.set_size(raw.size);
                e.size = raw.size;
                e.sparse = raw.sparse.clone();
                // A sparse file stays sparse: its map, then only its stored data.
                let (blocks, pieces) = match e.sparse {
                    Some(_) => gnu_sparse_header(&mut h, &e)?,
                    None => (Vec::new(), vec![(raw.size, true)]),
                };
                let mut body = StoredData {
                    reader: &mut reader,
                    left: raw.stored,
                    error: None,
                };
                let appended = append_entry(
                    &mut out,
                    &mut h,
                    &name,
                    Some(&e),
                    None,
                    &mut blocks.as_slice().chain(Pieces::new(&mut body, pieces)),
                );
                if let Some(err) = body.error.take() {
                    return Err(err);
                }
                appended?;
            } else {
                append_entry(
                    &mut out,
                    &mut h,
                    &name,
                    Some(&e),
                    link.as_deref(),
                    &mut io::empty(),
                )?;
            }
        }
        out.finish()
            .map_err(|e| crate::layer::stream::error_from_io(e, "import"))?;
        Ok(())
    })
}

fn entry_of(raw: &RawEntry) -> TocEntry {
    let kind = match raw.kind {
        RawKind::File => EntryKind::File,
        RawKind::Dir => EntryKind::Dir,
        RawKind::Symlink => EntryKind::Symlink,
        RawKind::Hardlink => EntryKind::Hardlink,
        RawKind::Char => EntryKind::Char,
        RawKind::Block => EntryKind::Block,
        RawKind::Fifo => EntryKind::Fifo,
    };
    let mut e = TocEntry::new(raw.name.clone(), kind, raw.mode);
    e.uid = raw.uid;
    e.gid = raw.gid;
    e.uname = raw.uname.clone();
    e.gname = raw.gname.clone();
    e.mtime = raw.mtime;
    e.mtime_nsec = raw.mtime_nsec;
    e.xattrs = raw.xattrs.clone();
    e.dev = raw.dev;
    e
}

/// A file's stored data read from the tar (for sparse files, the segments one after another).
struct StoredData<'a, R> {
    reader: &'a mut TarReader<R>,
    left: u64,
    error: Option<crate::error::Error>,
}

impl<R: Read> Read for StoredData<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = (buf.len() as u64).min(self.left) as usize;
        match self.reader.read_data(&mut buf[..want]) {
            Ok(0) => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "entry data ends early",
            )),
            Ok(n) => {
                self.left -= n as u64;
                Ok(n)
            }
            Err(e) => {
                self.error = Some(e);
                Err(io::Error::other("tar read failed"))
            }
        }
    }
}
