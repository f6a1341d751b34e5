//! Building layer tars for the cases, and reading exported tars back with an independent
//! reader (the `tar` crate), so the suite never checks the engine with the engine.

use std::collections::BTreeMap;
use std::io::{Read, Write};

use anyhow::{Context, Result};
use imagestore::{ByteStream, Digest, byte_stream};
use tar::{EntryType, Header};
use tokio::io::AsyncReadExt;

/// Builds a layer tar entry by entry.
pub struct Layer {
    b: tar::Builder<Vec<u8>>,
}

impl Default for Layer {
    fn default() -> Self {
        Self::new()
    }
}

fn header(kind: EntryType, mode: u32, size: u64) -> Header {
    let mut h = Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.set_size(size);
    h
}

impl Layer {
    /// An empty layer.
    pub fn new() -> Self {
        Layer {
            b: tar::Builder::new(Vec::new()),
        }
    }

    /// Adds a directory.
    pub fn dir(mut self, path: &str) -> Self {
        let mut h = header(EntryType::Directory, 0o755, 0);
        self.b
            .append_data(&mut h, path, std::io::empty())
            .expect("dir");
        self
    }

    /// Adds a regular file with mode 0644.
    pub fn file(self, path: &str, data: &[u8]) -> Self {
        self.file_mode(path, data, 0o644)
    }

    /// Adds a regular file with a mode.
    pub fn file_mode(mut self, path: &str, data: &[u8], mode: u32) -> Self {
        let mut h = header(EntryType::Regular, mode, data.len() as u64);
        self.b.append_data(&mut h, path, data).expect("file");
        self
    }

    /// Adds a file owned by `uid:gid`.
    pub fn file_owned(mut self, path: &str, data: &[u8], uid: u64, gid: u64) -> Self {
        let mut h = header(EntryType::Regular, 0o640, data.len() as u64);
        h.set_uid(uid);
        h.set_gid(gid);
        self.b.append_data(&mut h, path, data).expect("file");
        self
    }

    /// Adds a regular file with mode 0644 and modification time `mtime` (seconds, may be
    /// negative), written as a PAX `mtime` record.
    pub fn file_mtime(mut self, path: &str, data: &[u8], mtime: i64) -> Self {
        let value = mtime.to_string();
        self.b
            .append_pax_extensions([("mtime", value.as_bytes())])
            .expect("pax");
        let mut h = header(EntryType::Regular, 0o644, data.len() as u64);
        h.set_mtime(mtime.clamp(0, 0o77777777777) as u64);
        self.b.append_data(&mut h, path, data).expect("file");
        self
    }

    /// Adds a symlink.
    pub fn symlink(mut self, path: &str, target: &str) -> Self {
        let mut h = header(EntryType::Symlink, 0o777, 0);
        self.b.append_link(&mut h, path, target).expect("symlink");
        self
    }

    /// Adds a hardlink to an earlier path.
    pub fn hardlink(mut self, path: &str, target: &str) -> Self {
        let mut h = header(EntryType::Link, 0o644, 0);
        self.b.append_link(&mut h, path, target).expect("hardlink");
        self
    }

    /// Adds a character device.
    pub fn chardev(mut self, path: &str, major: u32, minor: u32) -> Self {
        let mut h = header(EntryType::Char, 0o666, 0);
        h.set_device_major(major).expect("major");
        h.set_device_minor(minor).expect("minor");
        self.b
            .append_data(&mut h, path, std::io::empty())
            .expect("chardev");
        self
    }

    /// Adds a fifo.
    pub fn fifo(mut self, path: &str) -> Self {
        let mut h = header(EntryType::Fifo, 0o644, 0);
        self.b
            .append_data(&mut h, path, std::io::empty())
            .expect("fifo");
        self
    }

    /// Adds a whiteout deleting `path`.
    pub fn whiteout(self, path: &str) -> Self {
        let (dir, name) = match path.rfind('/') {
            Some(i) => (&path[..=i], &path[i + 1..]),
            None => ("", path),
        };
        self.file(&format!("{dir}.wh.{name}"), b"")
    }

    /// Makes directory `dir` opaque.
    pub fn opaque(self, dir: &str) -> Self {
        self.file(&format!("{}/.wh..wh..opq", dir.trim_end_matches('/')), b"")
    }

    /// Adds a file with PAX extended attributes.
    pub fn file_xattrs(mut self, path: &str, data: &[u8], xattrs: &[(&str, &[u8])]) -> Self {
        let recs: Vec<(String, &[u8])> = xattrs
            .iter()
            .map(|(k, v)| (format!("SCHILY.xattr.{k}"), *v))
            .collect();
        self.b
            .append_pax_extensions(recs.iter().map(|(k, v)| (k.as_str(), *v)))
            .expect("pax");
        let mut h = header(EntryType::Regular, 0o644, data.len() as u64);
        self.b.append_data(&mut h, path, data).expect("file");
        self
    }

    /// Adds an old-GNU sparse file: `size` bytes, holding `data` at each offset of `chunks`.
    pub fn sparse(mut self, path: &str, size: u64, chunks: &[(u64, &[u8])]) -> Self {
        let mut h = Header::new_gnu();
        h.set_entry_type(EntryType::GNUSparse);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        let stored: u64 = chunks.iter().map(|(_, d)| d.len() as u64).sum();
        h.set_size(stored);
        {
            let gnu = h.as_gnu_mut().expect("gnu header");
            for (i, (off, d)) in chunks.iter().enumerate().take(4) {
                gnu.sparse[i].set_offset(*off);
                gnu.sparse[i].set_length(d.len() as u64);
            }
            gnu.set_real_size(size);
        }
        h.set_path(path).expect("path");
        h.set_cksum();
        let data: Vec<u8> = chunks.iter().flat_map(|(_, d)| d.iter().copied()).collect();
        self.b.append(&h, data.as_slice()).expect("sparse");
        self
    }

    /// The tar bytes.
    pub fn build(self) -> Vec<u8> {
        self.b.into_inner().expect("tar")
    }
}

/// A layer's bytes as a stream.
pub fn stream(bytes: &[u8]) -> ByteStream {
    byte_stream(std::io::Cursor::new(bytes.to_vec()))
}

/// sha256 of bytes.
pub fn sum(bytes: &[u8]) -> Digest {
    Digest::sha256_of(bytes)
}

/// gzip of bytes.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).expect("gzip");
    e.finish().expect("gzip")
}

/// zstd of bytes.
pub fn zstd(bytes: &[u8]) -> Vec<u8> {
    zstd::encode_all(bytes, 3).expect("zstd")
}

/// One entry of a tar as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Path without `./` or a trailing `/`.
    pub path: String,
    /// Entry type byte (`0` file, `5` dir, `2` symlink, `1` hardlink, ...).
    pub kind: char,
    /// Mode bits.
    pub mode: u32,
    /// Owner uid.
    pub uid: u64,
    /// Modification time in seconds (a PAX `mtime` record wins over the header's).
    pub mtime: i64,
    /// Link target.
    pub link: Option<String>,
    /// Data.
    pub data: Vec<u8>,
    /// PAX xattrs.
    pub xattrs: BTreeMap<String, Vec<u8>>,
}

/// Reads a whole stream into memory.
pub async fn read_all(mut s: ByteStream) -> Result<Vec<u8>> {
    let mut v = Vec::new();
    s.read_to_end(&mut v).await.context("reading stream")?;
    Ok(v)
}

/// Parses a tar with the `tar` crate.
pub fn parse(bytes: &[u8]) -> Result<Vec<Entry>> {
    let mut a = tar::Archive::new(bytes);
    let mut out = Vec::new();
    for e in a.entries().context("entries")? {
        let mut e = e.context("entry")?;
        let path = e
            .path()
            .context("path")?
            .to_string_lossy()
            .trim_start_matches("./")
            .trim_end_matches('/')
            .to_owned();
        let h = e.header().clone();
        let link = e
            .link_name()
            .context("link")?
            .map(|l| l.to_string_lossy().into_owned());
        let mut xattrs = BTreeMap::new();
        let mut mtime = h.mtime().map(|m| m as i64).unwrap_or(0);
        if let Some(exts) = e.pax_extensions().context("pax")? {
            for ext in exts {
                let ext = ext.context("pax record")?;
                if ext.key().ok() == Some("mtime")
                    && let Some(secs) = ext
                        .value()
                        .ok()
                        .and_then(|v| v.split('.').next())
                        .and_then(|v| v.parse::<i64>().ok())
                {
                    mtime = secs;
                }
                if let Some(k) = ext.key().ok().and_then(|k| k.strip_prefix("SCHILY.xattr.")) {
                    xattrs.insert(k.to_owned(), ext.value_bytes().to_vec());
                }
            }
        }
        let mut data = Vec::new();
        e.read_to_end(&mut data).context("data")?;
        out.push(Entry {
            path,
            kind: h.entry_type().as_byte() as char,
            mode: h.mode().unwrap_or(0),
            uid: h.uid().unwrap_or(0),
            mtime,
            link,
            data,
            xattrs,
        });
    }
    Ok(out)
}

/// Reads a stream and parses it as a tar.
pub async fn entries(s: ByteStream) -> Result<Vec<Entry>> {
    parse(&read_all(s).await?)
}

/// Paths of entries, in order.
pub fn paths(entries: &[Entry]) -> Vec<&str> {
    entries.iter().map(|e| e.path.as_str()).collect()
}

/// The entry at a path.
pub fn find<'a>(entries: &'a [Entry], path: &str) -> Option<&'a Entry> {
    entries.iter().rev().find(|e| e.path == path)
}

/// A reader that fails if anything reads it (to prove a body was not read).
pub struct Untouchable;

impl tokio::io::AsyncRead for Untouchable {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        _buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Err(std::io::Error::other("this body must not be read")))
    }
}

/// A stream that counts how many times it was read to the end.
pub struct Counted {
    inner: std::io::Cursor<Vec<u8>>,
    done: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    counted: bool,
    delay: Option<std::time::Duration>,
}

impl Counted {
    /// Wraps `bytes`; `done` is incremented when the stream is read to its end. With `delay`,
    /// the first read waits that long (to widen race windows).
    pub fn new(
        bytes: Vec<u8>,
        done: std::sync::Arc<std::sync::atomic::AtomicUsize>,
        delay: Option<std::time::Duration>,
    ) -> Self {
        Counted {
            inner: std::io::Cursor::new(bytes),
            done,
            counted: false,
            delay,
        }
    }
}

impl tokio::io::AsyncRead for Counted {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if let Some(d) = self.delay.take() {
            std::thread::sleep(d);
        }
        let before = buf.filled().len();
        let mut tmp = vec![0u8; buf.remaining()];
        let n = std::io::Read::read(&mut self.inner, &mut tmp)?;
        buf.put_slice(&tmp[..n]);
        if buf.filled().len() == before && !self.counted {
            self.counted = true;
            self.done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        let _ = cx;
        std::task::Poll::Ready(Ok(()))
    }
}
