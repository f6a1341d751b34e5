//! The staging sink: layer bytes stream into a multipart upload with bounded memory.
//!
//! Chunks from the ingest pipeline are gathered (without copying) until a part is full, then
//! uploaded in the background; at most `upload_concurrency` parts are in flight, so memory is
//! about `(upload_concurrency + 1) × part size`. A layer smaller than one part is sent with a
//! single `PUT` when it ends. Nothing is completed before the caller says so, which it does
//! only after the digest matched; otherwise the upload is aborted.
//!
//! The part size starts at the configured size (8 MiB) and, once 1,000 parts have been sent,
//! becomes a thousandth of the bytes sent so far (rounded up to a MiB, at most 5 GiB). The
//! size of a layer is not known in advance; this schedule stores 5 TiB in fewer than 8,000
//! parts, well inside S3's limit of 10,000 (see the tests).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use object_store::multipart::PartId;
use object_store::path::Path;
use object_store::{MultipartId, PutPayload};

use imagestore_core::Result;
use imagestore_core::layer::ingest::StagingSink;

use crate::config::MAX_PART_SIZE;
use crate::error::is_transient;
use crate::objects::{Objects, upload_error};

/// S3's limit on the number of parts of one upload.
pub const MAX_PARTS: usize = 10_000;

/// The size of the next part, after `sent` bytes went into earlier parts.
pub fn part_size(first: usize, sent: u64) -> usize {
    const MIB: u64 = 1 << 20;
    // A part may overshoot its size by less than one ingest chunk (256 KiB); stay a MiB below
    // S3's maximum so it never passes it.
    let grown = (sent / 1000).div_ceil(MIB) * MIB;
    let size = grown.min(MAX_PART_SIZE - MIB).max(first as u64);
    usize::try_from(size).unwrap_or(usize::MAX)
}

type PartTask = tokio::task::JoinHandle<object_store::Result<PartId>>;

/// A [`StagingSink`] writing to one object key through a multipart upload.
pub struct UploadSink {
    objects: Arc<Objects>,
    rel: String,
    path: Path,
    first_part: usize,
    concurrency: usize,
    pending: Vec<Bytes>,
    pending_len: usize,
    sent: u64,
    upload: Option<MultipartId>,
    inflight: VecDeque<PartTask>,
    parts: Vec<PartId>,
}

impl std::fmt::Debug for UploadSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UploadSink")
            .field("key", &self.rel)
            .field("sent", &self.sent)
            .finish_non_exhaustive()
    }
}

impl UploadSink {
    /// A sink for key `rel` (relative to the prefix).
    pub fn new(objects: Arc<Objects>, rel: String, first_part: usize, concurrency: usize) -> Self {
        let path = objects.path(&rel);
        UploadSink {
            objects,
            rel,
            path,
            first_part,
            concurrency: concurrency.max(1),
            pending: Vec::new(),
            pending_len: 0,
            sent: 0,
            upload: None,
            inflight: VecDeque::new(),
            parts: Vec::new(),
        }
    }

    /// Bytes received so far.
    fn received(&self) -> u64 {
        self.sent + self.pending_len as u64
    }

    fn show(&self) -> String {
        self.objects.show(&self.rel)
    }

    /// Sends what is pending as the next part.
    async fn send_part(&mut self) -> Result<()> {
        let id = match &self.upload {
            Some(id) => id.clone(),
            None => {
                let id = self.objects.create_upload(&self.rel).await?;
                self.upload = Some(id.clone());
                id
            }
        };
        let index = self.parts.len() + self.inflight.len();
        if index >= MAX_PARTS {
            return Err(crate::error::backend(
                format!("{}: more than {MAX_PARTS} parts", self.show()),
                false,
            ));
        }
        let payload: PutPayload = std::mem::take(&mut self.pending).into_iter().collect();
        self.sent += self.pending_len as u64;
        self.pending_len = 0;
        let s3 = self.objects.s3().clone();
        let path = self.path.clone();
        self.inflight.push_back(tokio::spawn(async move {
            let mut delay = Duration::from_millis(200);
            let mut attempt = 1;
            loop {
                match Objects::put_part(&s3, &path, &id, index, payload.clone()).await {
                    Err(e) if attempt < 4 && is_transient(&e) => {
                        tokio::time::sleep(delay).await;
                        delay *= 3;
                        attempt += 1;
                    }
                    r => return r,
                }
            }
        }));
        while self.inflight.len() > self.concurrency {
            self.wait_oldest().await?;
        }
        Ok(())
    }

    async fn wait_oldest(&mut self) -> Result<()> {
        let Some(task) = self.inflight.pop_front() else {
            return Ok(());
        };
        let index = self.parts.len();
        let part = task
            .await
            .map_err(|e| {
                crate::error::backend(format!("{}: part task failed: {e}", self.show()), false)
            })?
            .map_err(|e| {
                upload_error(
                    format!("uploading part {} of {}", index + 1, self.show()),
                    e,
                )
            })?;
        self.parts.push(part);
        Ok(())
    }

    /// Makes the object exist with every byte received: a single `PUT` for a small layer,
    /// otherwise the last part and the completion of the upload. Call only after the digest
    /// matched. Returns the number of bytes.
    pub async fn finish(mut self) -> Result<u64> {
        let total = self.received();
        if self.upload.is_none() {
            let payload: PutPayload = std::mem::take(&mut self.pending).into_iter().collect();
            self.objects.put_payload(&self.rel, payload).await?;
            return Ok(total);
        }
        let result: Result<()> = async {
            if self.pending_len > 0 {
                self.send_part().await?;
            }
            while !self.inflight.is_empty() {
                self.wait_oldest().await?;
            }
            let id = self.upload.clone().unwrap_or_default();
            self.objects
                .complete_upload(&self.rel, &id, std::mem::take(&mut self.parts))
                .await?;
            Ok(())
        }
        .await;
        match result {
            Ok(()) => Ok(total),
            Err(e) => {
                self.abort().await;
                Err(e)
            }
        }
    }

    /// Discards everything: stops the part uploads and aborts the upload. Failures are left to
    /// the sweep (the upload stays listed until then).
    pub async fn abort(mut self) {
        for t in self.inflight.drain(..) {
            t.abort();
        }
        if let Some(id) = self.upload.take()
            && let Err(e) = self.objects.abort_upload(&self.rel, id.as_str()).await
        {
            tracing::warn!(key = %self.rel, error = %e, "aborting an upload failed; the sweep will");
        }
    }
}

#[async_trait]
impl StagingSink for UploadSink {
    async fn write(&mut self, chunk: Bytes) -> Result<()> {
        if chunk.is_empty() {
            return Ok(());
        }
        self.pending_len += chunk.len();
        self.pending.push(chunk);
        if self.pending_len >= part_size(self.first_part, self.sent) {
            self.send_part().await?;
        }
        Ok(())
    }
}

impl Drop for UploadSink {
    fn drop(&mut self) {
        for t in self.inflight.drain(..) {
            t.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Simulates an upload of `total` bytes arriving in 256 KiB chunks; returns the parts.
    fn parts_for(first: usize, total: u64) -> Vec<u64> {
        let chunk = 256u64 << 10;
        let mut parts = Vec::new();
        let (mut sent, mut pending) = (0u64, 0u64);
        let mut left = total;
        while left > 0 {
            // Whole parts at a time, to keep the simulation fast for 5 TiB.
            let target = part_size(first, sent) as u64;
            let need = target.saturating_sub(pending);
            let chunks = need.div_ceil(chunk).max(1);
            let take = (chunks * chunk).min(left);
            pending += take;
            left -= take;
            if pending >= target || left == 0 {
                parts.push(pending);
                sent += pending;
                pending = 0;
            }
        }
        parts
    }

    #[test]
    fn five_tebibytes_fit_in_the_part_limit() {
        for first in [5usize << 20, 8 << 20, 64 << 20, 1 << 30] {
            let total = 5u64 << 40;
            let parts = parts_for(first, total);
            assert!(parts.len() <= MAX_PARTS, "{first}: {} parts", parts.len());
            assert_eq!(parts.iter().sum::<u64>(), total);
            let (last, rest) = parts.split_last().expect("parts");
            assert!(*last > 0);
            for p in rest {
                assert!(*p >= 5 << 20 && *p <= MAX_PART_SIZE, "{p}");
            }
        }
    }

    #[test]
    fn small_layers_keep_the_first_size() {
        let parts = parts_for(8 << 20, 1 << 30);
        assert_eq!(parts.len(), 128);
        assert!(parts.iter().all(|p| *p == 8 << 20));
        // The size grows only past 1,000 parts of the first size.
        assert_eq!(part_size(8 << 20, 8000 << 20), 8 << 20);
        assert_eq!(part_size(8 << 20, 8 << 30), 9 << 20);
        assert_eq!(part_size(8 << 20, 100 << 30), 103 << 20);
        assert_eq!(
            part_size(8 << 20, 1 << 50),
            (MAX_PART_SIZE - (1 << 20)) as usize
        );
    }
}
