//! The write pipeline every backend uses: one streaming pass over a layer that hashes the raw
//! bytes, feeds the backend's staging sink, decompresses by magic and parses the tar into a
//! checked [`Toc`].
//!
//! ```text
//! body ─► chunk (256 KiB) ─┬─► sink.write            (async, the backend's staging)
//!                          ├─► hasher thread          (digest of the raw bytes)
//!                          └─► parser thread          (decompress ─► tar ─► checks ─► TOC)
//! ```
//! Channels are bounded, so memory stays a few MiB whatever the layer size. The caller commits
//! only if [`Ingested::digest`] equals the expected sum.

use std::io::{self, Read};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use crate::digest::{Algorithm, Digest};
use crate::error::{Error, Result};
use crate::layer::content::content_hasher;
use crate::layer::tar_reader::{TarLimits, TarReader, map_read_error};
use crate::layer::toc::{Compression, DigestForm, Toc, TocEntry};
use crate::layer::validate::{EmptyView, EntryChecker, LowerView};
use crate::storer::ByteStream;

/// Size of the chunks the pipeline moves.
pub const CHUNK: usize = 256 << 10;
const DEPTH: usize = 4;

/// Bounds applied while reading a layer.
#[derive(Debug, Clone, Copy)]
pub struct IngestLimits {
    /// Tar header bounds.
    pub tar: TarLimits,
    /// Largest uncompressed tar stream accepted (default 1 TiB).
    pub max_uncompressed: u64,
    /// Largest ratio of uncompressed to compressed bytes (default 2000), enforced once the
    /// uncompressed stream passes `ratio_floor` bytes.
    pub max_ratio: u64,
    /// Uncompressed size below which the ratio is not checked (default 256 MiB).
    pub ratio_floor: u64,
    /// Most entries in one layer (default 4 Mi).
    pub max_entries: u64,
    /// Largest logical size of one regular file, sparse holes included (default 1 TiB). The
    /// disk backends lower it to the capacity of their disks.
    pub max_file_size: u64,
}

impl Default for IngestLimits {
    fn default() -> Self {
        IngestLimits {
            tar: TarLimits::default(),
            max_uncompressed: 1 << 40,
            max_ratio: 2000,
            ratio_floor: 256 << 20,
            max_entries: 4 << 20,
            max_file_size: 1 << 40,
        }
    }
}

/// Where a backend puts the raw bytes of a layer while it is being written.
#[async_trait]
pub trait StagingSink: Send {
    /// Appends a chunk of raw layer bytes.
    async fn write(&mut self, chunk: Bytes) -> Result<()>;
}

/// Receives the data of each regular file while a layer is parsed, in the same pass, so a
/// backend that needs the files one by one (the disk backends stream them into the filesystem they write) does not
/// read the layer again. Calls come in archive order: [`FileTap::file`], then
/// [`FileTap::data`] for each chunk of stored data (sparse files: only the stored segments, at
/// their logical offsets), then [`FileTap::end_file`]. An error fails the ingest.
pub trait FileTap: Send {
    /// A regular file starts; `index` is its entry's position in the layer's TOC.
    fn file(&mut self, index: usize, entry: &TocEntry) -> Result<()>;
    /// Bytes of the current file at logical `offset`.
    fn data(&mut self, offset: u64, bytes: &[u8]) -> Result<()>;
    /// The current file is complete.
    fn end_file(&mut self) -> Result<()>;
}

/// A sink that drops the bytes (for checks that keep nothing).
#[derive(Debug, Default)]
pub struct NullSink;

#[async_trait]
impl StagingSink for NullSink {
    async fn write(&mut self, _chunk: Bytes) -> Result<()> {
        Ok(())
    }
}

/// The outcome of one pass over a layer.
#[derive(Debug, Clone)]
pub struct Ingested {
    /// Digest of the raw bytes, in the algorithm of the expected sum.
    pub digest: Digest,
    /// Number of raw bytes.
    pub size: u64,
    /// The checked table of contents.
    pub toc: Toc,
}

/// Reads `body` to its end once, feeding `sink`, and returns the digest, size and TOC.
///
/// With `expected`, the digest is computed in its algorithm and must match; without, it is a
/// sha256 and is only reported. A malformed or hostile archive is `BadArchive`; when the whole
/// stream was read and its digest is not `expected`, `DigestMismatch` wins, because the bytes
/// were not the ones meant.
pub async fn ingest(
    body: ByteStream,
    expected: Option<&Digest>,
    sink: &mut dyn StagingSink,
    lower: Arc<dyn LowerView>,
    limits: IngestLimits,
) -> Result<Ingested> {
    ingest_tapped(body, expected, sink, lower, limits, None).await
}

/// [`ingest`], also handing every regular file's data to `tap` as the layer is parsed.
pub async fn ingest_tapped(
    mut body: ByteStream,
    expected: Option<&Digest>,
    sink: &mut dyn StagingSink,
    lower: Arc<dyn LowerView>,
    limits: IngestLimits,
    tap: Option<Box<dyn FileTap>>,
) -> Result<Ingested> {
    let algorithm = expected.map_or(Algorithm::Sha256, Digest::algorithm);
    let mismatch = |digest: &Digest| expected.is_some_and(|e| e != digest);
    let (hash_tx, hash_rx) = mpsc::channel::<Bytes>(DEPTH);
    let (parse_tx, parse_rx) = mpsc::channel::<Bytes>(DEPTH);
    let hasher = tokio::task::spawn_blocking(move || hash_chunks(algorithm, hash_rx));
    let parser =
        tokio::task::spawn_blocking(move || parse_chunks(parse_rx, lower.as_ref(), limits, tap));

    let mut size = 0u64;
    let mut parse_tx = Some(parse_tx);
    let read_result: Result<()> = async {
        loop {
            let chunk = read_chunk(&mut body).await?;
            if chunk.is_empty() {
                return Ok(());
            }
            size += chunk.len() as u64;
            let to_parser = parse_tx.as_ref().map(|tx| tx.send(chunk.clone()));
            let (w, h, p) = tokio::join!(sink.write(chunk.clone()), hash_tx.send(chunk), async {
                match to_parser {
                    Some(f) => f.await.is_ok(),
                    None => true,
                }
            });
            w?;
            if h.is_err() {
                return Err(Error::invalid("layer hasher stopped unexpectedly"));
            }
            if !p {
                // The parser stopped early: it found a problem; its error is reported below.
                parse_tx = None;
                return Ok(());
            }
        }
    }
    .await;
    drop(hash_tx);
    drop(parse_tx);

    let parsed = parser
        .await
        .map_err(|e| Error::invalid(format!("layer parser panicked: {e}")))?;
    read_result?;
    let (digest, hashed) = hasher
        .await
        .map_err(|e| Error::invalid(format!("layer hasher panicked: {e}")))?;
    match parsed {
        Ok(toc) => {
            if let Some(expected) = expected.filter(|_| mismatch(&digest)) {
                return Err(Error::DigestMismatch {
                    expected: expected.clone(),
                    actual: digest,
                });
            }
            Ok(Ingested { digest, size, toc })
        }
        Err(e) => {
            // If all of the stream was read, a wrong digest says more than the parse error.
            if let Some(expected) = expected.filter(|_| mismatch(&digest))
                && hashed == size
                && body_at_eof(&mut body).await
            {
                return Err(Error::DigestMismatch {
                    expected: expected.clone(),
                    actual: digest,
                });
            }
            Err(e)
        }
    }
}

/// Checks a layer held in memory against an empty lower view: its digest, size and TOC.
pub async fn ingest_bytes(bytes: Vec<u8>, expected: &Digest) -> Result<Ingested> {
    let body: ByteStream = Box::pin(io::Cursor::new(bytes));
    ingest(
        body,
        Some(expected),
        &mut NullSink,
        Arc::new(EmptyView),
        IngestLimits::default(),
    )
    .await
}

async fn body_at_eof(body: &mut ByteStream) -> bool {
    let mut b = [0u8; 1];
    matches!(body.read(&mut b).await, Ok(0))
}

async fn read_chunk(body: &mut ByteStream) -> Result<Bytes> {
    let mut buf = BytesMut::with_capacity(CHUNK);
    while buf.len() < CHUNK {
        let n = body.read_buf(&mut buf).await.map_err(|e| {
            // A stream made by the library (a filter rewriting the tar) fails with the
            // library's own error: it is what the caller gets.
            if e.get_ref().is_some_and(|inner| inner.is::<Error>()) {
                return crate::layer::stream::error_from_io(e, "input");
            }
            Error::Backend {
                backend: "input",
                message: format!("reading the layer stream: {e}"),
                retryable: false,
                source: Some(Box::new(e)),
            }
        })?;
        if n == 0 {
            break;
        }
    }
    Ok(buf.freeze())
}

fn hash_chunks(algorithm: Algorithm, mut rx: mpsc::Receiver<Bytes>) -> (Digest, u64) {
    let mut h = algorithm.hasher();
    let mut n = 0u64;
    while let Some(c) = rx.blocking_recv() {
        h.update(&c);
        n += c.len() as u64;
    }
    (h.finish(), n)
}

/// A blocking `Read` over chunks arriving on a channel.
struct ChannelReader {
    rx: mpsc::Receiver<Bytes>,
    cur: Bytes,
    consumed: Arc<std::sync::atomic::AtomicU64>,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                Some(c) => self.cur = c,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        let _ = self.cur.split_to(n);
        self.consumed
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(n)
    }
}

impl ChannelReader {
    /// The first bytes of the stream without consuming them (fewer at a short stream's end).
    fn peek(&mut self, n: usize) -> &[u8] {
        while self.cur.len() < n {
            match self.rx.blocking_recv() {
                Some(c) => {
                    let mut joined = BytesMut::with_capacity(self.cur.len() + c.len());
                    joined.extend_from_slice(&self.cur);
                    joined.extend_from_slice(&c);
                    self.cur = joined.freeze();
                }
                None => break,
            }
        }
        &self.cur[..self.cur.len().min(n)]
    }
}

/// Enforces the uncompressed size and ratio limits on a decompressed stream.
struct Bounded<R> {
    inner: R,
    out: u64,
    consumed: Arc<std::sync::atomic::AtomicU64>,
    limits: IngestLimits,
    compressed: bool,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.out += n as u64;
        if self.out > self.limits.max_uncompressed {
            return Err(io::Error::other(Error::LimitExceeded {
                what: "uncompressed layer size in bytes",
                value: self.out,
                max: self.limits.max_uncompressed,
            }));
        }
        if self.compressed && self.out > self.limits.ratio_floor {
            let inb = self
                .consumed
                .load(std::sync::atomic::Ordering::Relaxed)
                .max(1);
            if self.out / inb > self.limits.max_ratio {
                return Err(io::Error::other(Error::LimitExceeded {
                    what: "decompression ratio",
                    value: self.out / inb,
                    max: self.limits.max_ratio,
                }));
            }
        }
        Ok(n)
    }
}

/// Detects the compression of a stream from its first bytes (at least four are needed).
pub fn sniff(magic: &[u8]) -> Result<Compression> {
    match magic {
        [0x1f, 0x8b, ..] => Ok(Compression::Gzip),
        [0x28, 0xb5, 0x2f, 0xfd, ..] => Ok(Compression::Zstd),
        // A zstd skippable frame (magic 0x184D2A50..=0x184D2A5F, little-endian) may open a
        // zstd stream; the decoder passes over it.
        [m, 0x2a, 0x4d, 0x18, ..] if m & 0xf0 == 0x50 => Ok(Compression::Zstd),
        [b'B', b'Z', b'h', ..] => Err(Error::bad_archive(
            "bzip2-compressed layers are not supported (use gzip, zstd or none)",
        )),
        [0xfd, b'7', b'z', b'X', b'Z', ..] => Err(Error::bad_archive(
            "xz-compressed layers are not supported (use gzip, zstd or none)",
        )),
        _ => Ok(Compression::None),
    }
}

/// A decompressing reader for `compression` over `r`.
pub fn decompressor<'a, R: Read + 'a>(
    compression: Compression,
    r: R,
) -> Result<Box<dyn Read + 'a>> {
    Ok(match compression {
        Compression::None => Box::new(r),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(r)),
        Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::new(r)
                .map_err(|e| Error::bad_archive(format!("bad zstd stream: {e}")))?,
        ),
    })
}

fn parse_chunks(
    rx: mpsc::Receiver<Bytes>,
    lower: &dyn LowerView,
    limits: IngestLimits,
    mut tap: Option<Box<dyn FileTap>>,
) -> Result<Toc> {
    let consumed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut input = ChannelReader {
        rx,
        cur: Bytes::new(),
        consumed: consumed.clone(),
    };
    let compression = sniff(input.peek(6))?;
    let toc = decode_and_read(
        compression,
        &mut input,
        consumed,
        lower,
        limits,
        tap.as_deref_mut().map(|t| -> &mut dyn FileTap { t }),
    )?;
    // Drain anything after the end of a compressed stream so the hasher sees every byte.
    let mut sink = [0u8; 8192];
    loop {
        match input.read(&mut sink) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => return Err(map_read_error(e)),
        }
    }
    Ok(toc)
}

/// Checks a whole layer held in memory (any supported compression) and returns its TOC: the
/// parser half of [`ingest`] without hashing or staging. Used by fuzzing and tools.
pub fn toc_of_slice(bytes: &[u8], lower: &dyn LowerView, limits: IngestLimits) -> Result<Toc> {
    let compression = sniff(bytes)?;
    let consumed = Arc::new(std::sync::atomic::AtomicU64::new(bytes.len() as u64));
    decode_and_read(compression, bytes, consumed, lower, limits, None)
}

/// Decompresses `input`, bounds the output against `consumed` input bytes, and reads the TOC.
fn decode_and_read<'a, R: Read + 'a>(
    compression: Compression,
    input: R,
    consumed: Arc<std::sync::atomic::AtomicU64>,
    lower: &dyn LowerView,
    limits: IngestLimits,
    tap: Option<&mut dyn FileTap>,
) -> Result<Toc> {
    let decoded = decompressor(compression, input)?;
    let bounded = Bounded {
        inner: decoded,
        out: 0,
        consumed,
        limits,
        compressed: compression != Compression::None,
    };
    let mut toc = read_toc_tapped(bounded, lower, limits, tap)?;
    toc.compression = compression;
    Ok(toc)
}

/// Reads an uncompressed tar stream into a checked TOC, hashing file contents.
pub fn read_toc(r: impl Read, lower: &dyn LowerView, limits: IngestLimits) -> Result<Toc> {
    read_toc_tapped(r, lower, limits, None)
}

/// What the parser hands the content worker of [`read_toc_tapped`].
enum Content {
    /// A regular file starts: its position in the TOC and its entry.
    File(usize, Box<TocEntry>),
    /// Stored bytes of the current file at a logical offset.
    Data(u64, Vec<u8>),
    /// The current file is complete.
    End,
}

/// Hashes file contents (and feeds `tap`) on its own thread, so the parser only decompresses
/// and parses; returns the files' digests in archive order.
fn content_worker(
    rx: std::sync::mpsc::Receiver<Content>,
    mut tap: Option<&mut dyn FileTap>,
) -> Result<Vec<Digest>> {
    let mut digests = Vec::new();
    let mut h = None;
    for msg in rx {
        match msg {
            Content::File(index, entry) => {
                if let Some(t) = tap.as_deref_mut() {
                    t.file(index, &entry)?;
                }
                h = Some(content_hasher(&entry));
            }
            Content::Data(offset, bytes) => {
                if let Some(h) = h.as_mut() {
                    h.update(&bytes);
                }
                if let Some(t) = tap.as_deref_mut() {
                    t.data(offset, &bytes)?;
                }
            }
            Content::End => {
                if let Some(h) = h.take() {
                    digests.push(h.finish());
                }
                if let Some(t) = tap.as_deref_mut() {
                    t.end_file()?;
                }
            }
        }
    }
    Ok(digests)
}

/// [`read_toc`], handing every regular file's data to `tap` too. File contents are hashed
/// (and tapped) on a second thread while this one decompresses and parses.
pub fn read_toc_tapped(
    r: impl Read,
    lower: &dyn LowerView,
    limits: IngestLimits,
    tap: Option<&mut dyn FileTap>,
) -> Result<Toc> {
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Content>(32);
        let worker = scope.spawn(move || content_worker(rx, tap));
        let parsed = parse_entries(r, lower, limits, &tx);
        drop(tx);
        let digests = worker
            .join()
            .map_err(|_| Error::invalid("the layer content worker panicked"))?;
        // A worker error (a tap that could not write) explains a parser that stopped early.
        let digests = digests?;
        let (mut toc, files) = parsed?;
        if digests.len() != files.len() {
            return Err(Error::invalid("the layer content worker lost files"));
        }
        for (i, d) in files.into_iter().zip(digests) {
            toc.entries[i].digest = Some(d);
        }
        Ok(toc)
    })
}

/// The parser half of [`read_toc_tapped`]: the TOC (without file digests) and the positions
/// of its regular files, whose contents went to `tx`.
fn parse_entries(
    r: impl Read,
    lower: &dyn LowerView,
    limits: IngestLimits,
    tx: &std::sync::mpsc::SyncSender<Content>,
) -> Result<(Toc, Vec<usize>)> {
    // The worker only stops early when it failed; its error is reported instead of this.
    let gone = || Error::invalid("the layer content worker stopped");
    let send = |m: Content| tx.send(m).map_err(|_| gone());
    let mut reader = TarReader::new(r, limits.tar);
    let mut checker = EntryChecker::new(lower, limits.max_entries);
    let mut entries = Vec::new();
    let mut files = Vec::new();
    const CHUNK_BYTES: usize = 256 << 10;
    while let Some(raw) = reader.next_entry()? {
        let Some(mut entry) = checker.check(&raw)? else {
            continue;
        };
        if entry.kind == crate::layer::toc::EntryKind::File {
            if raw.size > limits.max_file_size {
                return Err(Error::LimitExceeded {
                    what: "size of a file in bytes, sparse holes included",
                    value: raw.size,
                    max: limits.max_file_size,
                });
            }
            if entry.sparse.is_some() {
                // Holes are never hashed: the digest covers the map and the stored bytes.
                entry.digest_form = DigestForm::SparseMap;
            }
            let index = entries.len();
            files.push(index);
            send(Content::File(index, Box::new(entry.clone())))?;
            // The stored segments at their logical offsets; a plain file is one segment.
            let whole = [(0, raw.size)];
            let map: &[(u64, u64)] = raw.sparse.as_deref().unwrap_or(&whole);
            let sparse = raw.sparse.is_some();
            for &(off, len) in map {
                let mut done = 0u64;
                while done < len {
                    let want = (len - done).min(CHUNK_BYTES as u64) as usize;
                    let mut buf = vec![0u8; want];
                    let n = reader.read_data(&mut buf)?;
                    if n == 0 {
                        if sparse {
                            return Err(Error::bad_entry(
                                &raw.name,
                                "sparse data is shorter than its map",
                            ));
                        }
                        break;
                    }
                    buf.truncate(n);
                    send(Content::Data(off + done, buf))?;
                    done += n as u64;
                }
            }
            send(Content::End)?;
        }
        entries.push(entry);
    }
    Ok((
        Toc {
            compression: Compression::None,
            uncompressed_size: reader.position(),
            entries,
        },
        files,
    ))
}

#[cfg(test)]
mod tests;
