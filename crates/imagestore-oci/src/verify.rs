//! Streams on their way into or out of a store: counting bytes for progress, and checking a
//! compressed layer's diff id (the sha256 of its uncompressed tar) on a separate thread.
//!
//! A diff-id check ends the stream with an error instead of its end when the digest is wrong,
//! so the store's write never commits the layer (the store commits only after reading a clean
//! end of stream).

use std::io::{self, Read};
use std::sync::{Arc, Mutex};

use bytes::{Buf, Bytes, BytesMut};
use imagestore_core::layer::ingest::{decompressor, sniff};
use imagestore_core::layer::stream::stream_from_channel;
use imagestore_core::{Algorithm, ByteStream, Digest};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use crate::error::Error;
use crate::progress::{Event, Phase, Progress};

const CHUNK: usize = 256 << 10;

/// A blocking reader over chunks arriving on a channel (for the decompressing thread).
struct ChunkReader {
    rx: mpsc::Receiver<Bytes>,
    cur: Bytes,
}

impl ChunkReader {
    fn fill(&mut self) -> bool {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                Some(c) => self.cur = c,
                None => return false,
            }
        }
        true
    }
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if !self.fill() {
            return Ok(0);
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        self.cur.advance(n);
        Ok(n)
    }
}

/// Reads a whole stream of possibly compressed tar bytes and returns the digest of the
/// uncompressed bytes (sha256, as diff ids are).
pub(crate) fn uncompressed_digest_of(rx: mpsc::Receiver<Bytes>) -> Result<Digest, String> {
    let mut input = ChunkReader {
        rx,
        cur: Bytes::new(),
    };
    // Gather enough bytes to recognise the compression.
    let mut head = BytesMut::new();
    while head.len() < 8 {
        if !input.fill() {
            break;
        }
        let take = (8 - head.len()).min(input.cur.len());
        head.extend_from_slice(&input.cur[..take]);
        input.cur.advance(take);
    }
    let compression = sniff(&head).map_err(|e| e.to_string())?;
    let joined = Read::chain(io::Cursor::new(head.freeze()), &mut input);
    let mut decoded = decompressor(compression, joined).map_err(|e| e.to_string())?;
    let mut h = Algorithm::Sha256.hasher();
    io::copy(&mut decoded, &mut h).map_err(|e| format!("decompressing: {e}"))?;
    drop(decoded);
    // Drain what follows the end of a compressed stream so the sender never blocks.
    let mut sink = [0u8; 8192];
    while matches!(input.read(&mut sink), Ok(n) if n > 0) {}
    Ok(h.finish())
}

/// What a [`pump`] found wrong, for the caller to report instead of the store's error.
#[derive(Debug, Clone, Default)]
pub struct Verdict(Arc<Mutex<Option<Error>>>);

impl Verdict {
    fn set(&self, e: Error) {
        if let Ok(mut g) = self.0.lock() {
            *g = Some(e);
        }
    }

    /// The error recorded by the check, if it failed.
    pub fn take(&self) -> Option<Error> {
        self.0.lock().ok().and_then(|mut g| g.take())
    }
}

/// What to do with a stream on its way.
#[derive(Clone)]
pub struct Pump {
    /// Check that the uncompressed bytes hash to this diff id; `what` names the layer.
    pub diff_id: Option<(Digest, String)>,
    /// Report bytes as `Advance` events of this layer and phase.
    pub progress: Option<(Arc<dyn Progress>, usize, Phase)>,
}

/// Wraps `body` as [`Pump`] says; returns it unchanged when there is nothing to do.
pub fn pump(mut body: ByteStream, p: Pump) -> (ByteStream, Verdict) {
    let verdict = Verdict::default();
    if p.diff_id.is_none() && p.progress.is_none() {
        return (body, verdict);
    }
    let (out_tx, out_rx) = mpsc::channel::<io::Result<Bytes>>(4);
    let v = verdict.clone();
    tokio::spawn(async move {
        let (dec_tx, hasher) = match &p.diff_id {
            Some(_) => {
                let (tx, rx) = mpsc::channel::<Bytes>(4);
                (
                    Some(tx),
                    Some(tokio::task::spawn_blocking(move || {
                        uncompressed_digest_of(rx)
                    })),
                )
            }
            None => (None, None),
        };
        let mut dec_tx = dec_tx;
        loop {
            let mut buf = BytesMut::with_capacity(CHUNK);
            let n = match body.read_buf(&mut buf).await {
                Ok(n) => n,
                Err(e) => {
                    let _ = out_tx.send(Err(e)).await;
                    return;
                }
            };
            if n == 0 {
                break;
            }
            let chunk = buf.freeze();
            if let Some((prog, layer, phase)) = &p.progress {
                prog.event(Event::Advance {
                    layer: *layer,
                    phase: *phase,
                    bytes: n as u64,
                });
            }
            if let Some(tx) = &dec_tx
                && tx.send(chunk.clone()).await.is_err()
            {
                // The decompressor stopped: its error is reported at the end.
                dec_tx = None;
            }
            if out_tx.send(Ok(chunk)).await.is_err() {
                return; // the reader went away
            }
        }
        drop(dec_tx);
        if let (Some(h), Some((expected, what))) = (hasher, &p.diff_id) {
            let failure = match h.await {
                Ok(Ok(actual)) if actual == *expected => None,
                Ok(Ok(actual)) => Some(Error::DigestMismatch {
                    what: format!("{what} diff_id"),
                    expected: expected.clone(),
                    actual,
                }),
                Ok(Err(reason)) => Some(Error::invalid(what, reason)),
                Err(e) => Some(Error::invalid(what, format!("diff_id task failed: {e}"))),
            };
            if let Some(err) = failure {
                let msg = err.to_string();
                v.set(err);
                let _ = out_tx.send(Err(io::Error::other(msg))).await;
            }
        }
    });
    (stream_from_channel(out_rx), verdict)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let _ = e.write_all(data);
        e.finish().unwrap_or_default()
    }

    async fn drain(mut s: ByteStream) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        s.read_to_end(&mut out).await?;
        Ok(out)
    }

    #[tokio::test]
    async fn a_right_diff_id_passes_the_bytes_through() -> io::Result<()> {
        let plain = vec![7u8; 3 << 20];
        let packed = gz(&plain);
        let (s, v) = pump(
            Box::pin(io::Cursor::new(packed.clone())),
            Pump {
                diff_id: Some((Digest::sha256_of(&plain), "layer 0".into())),
                progress: None,
            },
        );
        assert_eq!(drain(s).await?, packed);
        assert!(v.take().is_none());
        Ok(())
    }

    #[tokio::test]
    async fn a_wrong_diff_id_ends_the_stream_with_an_error() {
        let packed = gz(b"not what the config says");
        let (s, v) = pump(
            Box::pin(io::Cursor::new(packed)),
            Pump {
                diff_id: Some((Digest::sha256_of(b"other"), "layer 3".into())),
                progress: None,
            },
        );
        assert!(drain(s).await.is_err());
        let e = v.take().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.starts_with("layer 3 diff_id: digest mismatch"), "{e}");
    }
}
