//! Bridges between blocking producers and async byte streams.
//!
//! The layer engine reads and writes tars with blocking I/O on a worker thread; callers see a
//! [`ByteStream`]. [`spawn_producer`] runs a producer on the blocking pool and hands back its
//! output as a stream with a small bounded buffer; an error ends the stream with that error.

use std::io::{self, Write};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::mpsc;

use crate::error::{Error, Result};
use crate::storer::ByteStream;

const CHUNK: usize = 256 << 10;

/// A blocking writer whose bytes become the chunks of a [`ByteStream`].
#[derive(Debug)]
pub struct ChannelWriter {
    tx: mpsc::Sender<io::Result<Bytes>>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx.blocking_send(Ok(chunk)).map_err(|_| {
            io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the reader of the stream went away",
            )
        })
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

/// The reading end of a [`ChannelWriter`].
#[derive(Debug)]
struct ChannelStream {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    cur: Bytes,
}

impl AsyncRead for ChannelStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.cur.is_empty() {
                let n = out.remaining().min(self.cur.len());
                out.put_slice(&self.cur[..n]);
                self.cur.advance(n);
                return Poll::Ready(Ok(()));
            }
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(Ok(c))) => self.cur = c,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// Runs `produce` on the blocking pool, writing into a [`ChannelWriter`], and returns what it
/// writes as a stream. If `produce` fails, the stream ends with its error (as an
/// `io::Error` wrapping the imagestore [`Error`]), so a reader never mistakes a partial
/// stream for a complete one.
pub fn spawn_producer<F>(produce: F) -> ByteStream
where
    F: FnOnce(&mut ChannelWriter) -> Result<()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(4);
    let err_tx = tx.clone();
    tokio::task::spawn_blocking(move || {
        let mut w = ChannelWriter {
            tx,
            buf: Vec::with_capacity(CHUNK),
        };
        let result = produce(&mut w).and_then(|()| {
            w.flush()
                .map_err(|e| Error::invalid(format!("stream: {e}")))
        });
        if let Err(e) = result {
            let _ = err_tx.blocking_send(Err(io::Error::other(e)));
        }
    });
    stream_from_channel(rx)
}

/// A [`ByteStream`] of the chunks received on `rx`; an `Err` chunk ends it with that error,
/// a closed channel ends it cleanly.
pub fn stream_from_channel(rx: mpsc::Receiver<io::Result<Bytes>>) -> ByteStream {
    Box::pin(ChannelStream {
        rx,
        cur: Bytes::new(),
    })
}

/// Turns an `io::Error` read from a stream made by [`spawn_producer`] back into the
/// imagestore error it carries, or a backend error otherwise.
pub fn error_from_io(e: io::Error, what: &'static str) -> Error {
    if e.get_ref().is_some_and(|inner| inner.is::<Error>()) {
        if let Some(inner) = e.into_inner()
            && let Ok(err) = inner.downcast::<Error>()
        {
            return *err;
        }
        return Error::backend(what, "stream failed", false);
    }
    Error::Backend {
        backend: what,
        message: e.to_string(),
        retryable: false,
        source: Some(Box::new(e)),
    }
}

/// A blocking `Read` over a [`ByteStream`], for use on the blocking pool only.
pub struct BlockingReader {
    handle: tokio::runtime::Handle,
    stream: ByteStream,
}

impl std::fmt::Debug for BlockingReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BlockingReader")
    }
}

impl BlockingReader {
    /// Wraps `stream`; `handle` is the runtime that drives it.
    pub fn new(handle: tokio::runtime::Handle, stream: ByteStream) -> Self {
        BlockingReader { handle, stream }
    }
}

impl io::Read for BlockingReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use tokio::io::AsyncReadExt;
        let stream = &mut self.stream;
        self.handle.block_on(stream.read(buf))
    }
}
