//! Leases: per-key mutual exclusion made of one object, for hosts that share nothing but the
//! bucket.
//!
//! A lease is taken with a conditional create (`If-None-Match: *`) and kept alive by its holder,
//! which rewrites it every third of its TTL with a conditional update (`If-Match` on the last
//! ETag). A waiter that sees the same ETag for longer than the TTL (on its own monotonic
//! clock, so host clocks never matter) takes the lease over with a conditional update of that
//! ETag; exactly one waiter wins, and the old holder notices at its next renewal. The sweep
//! judges leases with the server's clock instead (`last_modified` against a fresh object's).
//!
//! Leases only decide who does the work; the commit steps themselves are conditional creates,
//! so a holder that was paused past its TTL cannot produce a second image. What a lease
//! protects from a paused holder is described in `docs/decisions/0006-s3-protocol.md`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tracing::{debug, warn};

use imagestore_core::{ImageId, Result};

use crate::error::backend;
use crate::objects::{Created, Objects, Updated};
use crate::record::{RECORD_VERSION, Versioned, decode, encode};

/// Slack added to a TTL before a lease counts as dead: `last_modified` has a resolution of one
/// second on most servers.
pub const SLACK: Duration = Duration::from_secs(2);

/// Leases taken, renewed or released at once by the batch operations.
pub const CONCURRENT: usize = 32;

/// What the holder of a lease is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LeaseOp {
    /// Writing image `id` (layer under `layers/<id>/<nonce>/`).
    Write,
    /// Deleting image `id` (`target` is the nonce of the record being deleted). Writers on
    /// the image as a parent wait while this lease exists.
    Delete,
    /// Creating writable layer `id`.
    CreateWritable,
    /// Importing into writable layer `id` (`target` is its nonce).
    Import,
    /// Deleting writable layer `id` (`target` is its nonce).
    DeleteWritable,
    /// Committing writable layer `id` into a new image.
    CommitWritable,
    /// Creating a store (`target` is the new generation).
    CreateStore,
    /// Deleting a store (`target` is the generation being deleted).
    DeleteStore,
    /// Changing a reference (`refleases/<key>`); `links` names the links it may write or
    /// remove.
    Reference,
    /// Deleting a blob (`blobleases/<blob>`). Reference changes naming the blob wait while
    /// this lease exists.
    DeleteBlob,
    /// Checking the store's quota and committing an image (`quota-lease`).
    Quota,
}

impl LeaseOp {
    /// True for the operations that make the image under the lease go away: dependents
    /// (children, writable layers, owners) wait while such a lease exists.
    pub fn removes(self) -> bool {
        matches!(self, LeaseOp::Delete)
    }
}

/// The content of a lease object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// Record format version.
    pub version: u32,
    /// Unique per acquisition; a write also uses it to name its layer.
    pub nonce: String,
    /// What the holder does.
    pub op: LeaseOp,
    /// How long the lease stays valid without renewal, in milliseconds.
    pub ttl_ms: u64,
    /// Renewal counter: every renewal changes the object, hence its ETag.
    pub seq: u64,
    /// `host:pid` of the holder, for people reading the bucket.
    pub holder: String,
    /// The parent of the image being written or deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<ImageId>,
    /// The nonce or generation the operation changes (see [`LeaseOp`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The reference links a reference change may write or remove (keys relative to the
    /// prefix); whoever takes its lease over removes those the record does not back.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<String>,
    /// The dead holder's record this holder took over and must finish or undo first; kept
    /// until release so that a resolver that dies is resolved in turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<Box<LeaseRecord>>,
}

impl Versioned for LeaseRecord {
    const NAME: &'static str = "lease record";
    fn version(&self) -> u32 {
        self.version
    }
}

impl LeaseRecord {
    /// A record for a new acquisition.
    pub fn new(op: LeaseOp, nonce: String, ttl: Duration) -> LeaseRecord {
        LeaseRecord {
            version: RECORD_VERSION,
            nonce,
            op,
            ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
            seq: 0,
            holder: holder(),
            parent: None,
            target: None,
            links: Vec::new(),
            pending: None,
        }
    }

    /// With the parent set.
    pub fn with_parent(mut self, parent: ImageId) -> Self {
        self.parent = Some(parent);
        self
    }

    /// With the target set.
    pub fn with_target(mut self, target: impl Into<String>) -> Self {
        self.target = Some(target.into());
        self
    }

    /// With the reference links set.
    pub fn with_links(mut self, links: Vec<String>) -> Self {
        self.links = links;
        self
    }

    /// The TTL.
    pub fn ttl(&self) -> Duration {
        Duration::from_millis(self.ttl_ms)
    }

    /// The records of unfinished operations this lease carries, oldest first.
    pub fn pending_chain(&self) -> Vec<LeaseRecord> {
        let mut out = Vec::new();
        let mut cur = self.pending.as_deref();
        while let Some(p) = cur {
            let mut flat = p.clone();
            flat.pending = None;
            out.push(flat);
            cur = p.pending.as_deref();
        }
        out.reverse();
        out
    }
}

/// `host:pid`.
pub fn holder() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned());
    format!("{host}:{}", std::process::id())
}

/// A lease as read from the bucket.
#[derive(Debug, Clone)]
pub struct Observed {
    /// Its content.
    pub record: LeaseRecord,
    /// Its ETag.
    pub etag: String,
    /// When it was last written (server clock).
    pub last_modified: chrono::DateTime<chrono::Utc>,
}

/// Reads the lease at `key`.
pub async fn read(objects: &Objects, key: &str) -> Result<Option<Observed>> {
    let Some(got) = objects.get(key).await? else {
        return Ok(None);
    };
    let record: LeaseRecord = decode(key, &got.bytes)?;
    Ok(Some(Observed {
        record,
        etag: got.etag.unwrap_or_default(),
        last_modified: got.last_modified,
    }))
}

/// Outcome of an acquisition.
#[derive(Debug)]
pub enum Acquired<T> {
    /// The lease is ours. `taken_over` holds the record of the dead holder we replaced, whose
    /// work the caller must finish or undo before its own.
    Held {
        /// The guard; release it when done.
        guard: LeaseGuard,
        /// The dead holder's record, if the lease was taken over.
        taken_over: Option<LeaseRecord>,
    },
    /// The wait ended without the lease: the waiting condition answered.
    Answered(T),
}

/// Takes the lease at `key`, waiting for its holder while `on_wait` returns `None`.
///
/// `on_wait` runs before every wait; it answers when the reason for taking the lease is gone
/// (the image was committed by the holder, say). A lease unchanged for longer than its TTL is
/// taken over.
pub async fn acquire<T, F, Fut>(
    objects: &Arc<Objects>,
    key: &str,
    mut record: LeaseRecord,
    mut on_wait: F,
) -> Result<Acquired<T>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let mut seen: Option<(String, Instant)> = None;
    let mut delay = Duration::from_millis(40);
    // Create only when the lease looks free: waiters poll with plain reads, because some
    // servers serialise contended conditional writes slowly, and the holder's renewals are
    // conditional writes on the same key.
    let mut try_create = true;
    loop {
        if try_create {
            match objects.create(key, encode(&record)).await? {
                Created::Created(etag) => {
                    return Ok(Acquired::Held {
                        guard: LeaseGuard::start(
                            objects.clone(),
                            key,
                            record,
                            etag.unwrap_or_default(),
                        ),
                        taken_over: None,
                    });
                }
                Created::Exists => try_create = false,
            }
        }
        let Some(cur) = read(objects, key).await? else {
            // Released: try to take it.
            try_create = true;
            continue;
        };
        if cur.record.nonce == record.nonce {
            // An earlier attempt of our own create went through.
            return Ok(Acquired::Held {
                guard: LeaseGuard::start(objects.clone(), key, cur.record, cur.etag),
                taken_over: None,
            });
        }
        if let Some(answer) = on_wait().await? {
            return Ok(Acquired::Answered(answer));
        }
        let unchanged_since = match &seen {
            Some((etag, since)) if *etag == cur.etag => *since,
            _ => {
                seen = Some((cur.etag.clone(), Instant::now()));
                Instant::now()
            }
        };
        if unchanged_since.elapsed() > cur.record.ttl() + SLACK {
            let mut prev = cur.record.clone();
            let carried = prev.pending.take();
            // Keep what the dead holder was itself resolving.
            let mut pending = prev.clone();
            pending.pending = carried;
            record.pending = Some(Box::new(pending));
            match objects.update(key, encode(&record), &cur.etag).await? {
                Updated::Updated(etag) => {
                    warn!(key, holder = %cur.record.holder, op = ?cur.record.op, "took over a lease its holder stopped renewing");
                    return Ok(Acquired::Held {
                        guard: LeaseGuard::start(
                            objects.clone(),
                            key,
                            record.clone(),
                            etag.unwrap_or_default(),
                        ),
                        taken_over: Some(prev),
                    });
                }
                Updated::Changed => {
                    record.pending = None;
                    seen = None;
                }
            }
        }
        let jitter = Duration::from_millis(rand::random::<u64>() % 40);
        tokio::time::sleep(delay + jitter).await;
        delay = (delay * 2).min(Duration::from_millis(800));
    }
}

/// Takes the lease at `key` only if it is free now (one conditional create, no waiting);
/// `Answered(())` if someone holds it.
pub async fn try_acquire(
    objects: &Arc<Objects>,
    key: &str,
    record: LeaseRecord,
) -> Result<Acquired<()>> {
    match objects.create(key, encode(&record)).await? {
        Created::Created(etag) => Ok(Acquired::Held {
            guard: LeaseGuard::start(objects.clone(), key, record, etag.unwrap_or_default()),
            taken_over: None,
        }),
        Created::Exists => match read(objects, key).await? {
            // An earlier attempt of our own create went through.
            Some(cur) if cur.record.nonce == record.nonce => Ok(Acquired::Held {
                guard: LeaseGuard::start(objects.clone(), key, cur.record, cur.etag),
                taken_over: None,
            }),
            _ => Ok(Acquired::Answered(())),
        },
    }
}

/// Takes over a dead lease observed at `etag` (for the sweep); `None` if it changed.
pub async fn take_over(
    objects: &Arc<Objects>,
    key: &str,
    dead: &Observed,
    mut record: LeaseRecord,
) -> Result<Option<LeaseGuard>> {
    record.pending = Some(Box::new(dead.record.clone()));
    match objects.update(key, encode(&record), &dead.etag).await? {
        Updated::Updated(etag) => Ok(Some(LeaseGuard::start(
            objects.clone(),
            key,
            record,
            etag.unwrap_or_default(),
        ))),
        Updated::Changed => Ok(None),
    }
}

struct GuardState {
    record: LeaseRecord,
    etag: String,
    renewed: Instant,
}

struct GuardInner {
    objects: Arc<Objects>,
    key: String,
    state: Mutex<GuardState>,
    lost: AtomicBool,
    ttl: Duration,
}

impl GuardInner {
    /// Rewrites the lease (`seq + 1`), conditional on our last ETag.
    async fn renew(&self) -> Result<()> {
        let mut st = self.state.lock().await;
        if self.lost.load(Ordering::SeqCst) {
            return Err(self.lost_error());
        }
        let mut next = st.record.clone();
        next.seq += 1;
        match self
            .objects
            .update(&self.key, encode(&next), &st.etag)
            .await?
        {
            Updated::Updated(etag) => {
                st.record = next;
                st.etag = etag.unwrap_or_default();
                st.renewed = Instant::now();
                Ok(())
            }
            Updated::Changed => {
                // Maybe an earlier attempt of this very update succeeded.
                if let Some(cur) = read(&self.objects, &self.key).await?
                    && cur.record.nonce == next.nonce
                    && cur.record.seq == next.seq
                {
                    st.record = next;
                    st.etag = cur.etag;
                    st.renewed = Instant::now();
                    return Ok(());
                }
                self.lost.store(true, Ordering::SeqCst);
                Err(self.lost_error())
            }
        }
    }

    async fn ensure_fresh(&self) -> Result<()> {
        if self.lost.load(Ordering::SeqCst) {
            return Err(self.lost_error());
        }
        let age = self.state.lock().await.renewed.elapsed();
        if age > self.ttl / 2 {
            self.renew().await?;
        }
        Ok(())
    }

    fn lost_error(&self) -> imagestore_core::Error {
        backend(
            format!(
                "lease {} was taken over by another host (this one stalled longer than its TTL); the operation was abandoned",
                self.objects.show(&self.key)
            ),
            true,
        )
    }
}

/// A held lease, renewed in the background until released.
///
/// Dropping a guard without [`LeaseGuard::release`] stops the renewals but leaves the lease
/// in place: it expires after its TTL and whoever comes next finishes or undoes the work (the
/// path a crash takes too). Release only after cleaning up.
pub struct LeaseGuard {
    inner: Arc<GuardInner>,
    renewer: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for LeaseGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseGuard")
            .field("key", &self.inner.key)
            .finish_non_exhaustive()
    }
}

impl LeaseGuard {
    fn start(objects: Arc<Objects>, key: &str, record: LeaseRecord, etag: String) -> LeaseGuard {
        let ttl = record.ttl();
        let inner = Arc::new(GuardInner {
            objects,
            key: key.to_owned(),
            state: Mutex::new(GuardState {
                record,
                etag,
                renewed: Instant::now(),
            }),
            lost: AtomicBool::new(false),
            ttl,
        });
        let weak = Arc::downgrade(&inner);
        let renewer = tokio::spawn(async move {
            let period = ttl / 3;
            loop {
                tokio::time::sleep(period).await;
                let Some(inner) = weak.upgrade() else { return };
                match inner.renew().await {
                    Ok(()) => {}
                    Err(e) if inner.lost.load(Ordering::SeqCst) => {
                        warn!(error = %e, "lease lost");
                        return;
                    }
                    Err(e) => debug!(error = %e, "lease renewal failed; retrying"),
                }
            }
        });
        LeaseGuard { inner, renewer }
    }

    /// The lease's current record.
    pub async fn record(&self) -> LeaseRecord {
        self.inner.state.lock().await.record.clone()
    }

    /// Makes sure the lease is still ours and will stay so for at least half its TTL, renewing
    /// it now if needed. Call right before a step that must not happen without the lease.
    pub async fn ensure_fresh(&self) -> Result<()> {
        self.inner.ensure_fresh().await
    }

    /// A handle for [`Fresh::ensure`], to check many leases at once.
    pub fn freshness(&self) -> Fresh {
        Fresh(self.inner.clone())
    }

    /// Changes the record (for instance the target once it is known), renewing the lease.
    pub async fn set_target(&self, target: &str) -> Result<()> {
        {
            let mut st = self.inner.state.lock().await;
            st.record.target = Some(target.to_owned());
        }
        self.inner.renew().await
    }

    /// Changes the target and the parent the record names (a delete whose record turned out
    /// to be another incarnation than the one it expected), renewing the lease.
    pub async fn retarget(&self, target: &str, parent: Option<ImageId>) -> Result<()> {
        {
            let mut st = self.inner.state.lock().await;
            st.record.target = Some(target.to_owned());
            st.record.parent = parent;
        }
        self.inner.renew().await
    }

    /// Changes the reference links the record names, renewing the lease.
    pub async fn set_links(&self, links: Vec<String>) -> Result<()> {
        {
            let mut st = self.inner.state.lock().await;
            st.record.links = links;
        }
        self.inner.renew().await
    }

    /// Ends the lease: stops renewing and deletes it, unless it was lost.
    pub async fn release(self) -> Result<()> {
        self.renewer.abort();
        if self.inner.lost.load(Ordering::SeqCst) {
            return Ok(());
        }
        // Nobody takes a lease over before it went unrenewed for a whole TTL; renew first if
        // we are anywhere near that, so the delete below cannot hit a successor's lease.
        let age = self.inner.state.lock().await.renewed.elapsed();
        if age > self.inner.ttl / 2 {
            self.inner.renew().await?;
        }
        self.inner.objects.delete(&self.inner.key).await
    }
}

/// A held lease's freshness check, detached from its guard ([`LeaseGuard::freshness`]).
pub struct Fresh(Arc<GuardInner>);

impl std::fmt::Debug for Fresh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Fresh").field(&self.0.key).finish()
    }
}

impl Fresh {
    /// [`LeaseGuard::ensure_fresh`].
    pub async fn ensure(&self) -> Result<()> {
        self.0.ensure_fresh().await
    }
}

/// Ends many leases at once, as [`LeaseGuard::release`] does each, with bulk deletes: leases
/// that were lost are left alone, leases near half their TTL are renewed first.
pub async fn release_all(objects: &Objects, guards: Vec<LeaseGuard>) -> Result<()> {
    let mut keys = Vec::with_capacity(guards.len());
    for g in &guards {
        g.renewer.abort();
    }
    let live: Vec<Arc<GuardInner>> = guards
        .iter()
        .filter(|g| !g.inner.lost.load(Ordering::SeqCst))
        .map(|g| g.inner.clone())
        .collect();
    let mut renewals = futures::stream::iter(live)
        .map(|inner| async move {
            let age = inner.state.lock().await.renewed.elapsed();
            if age > inner.ttl / 2 {
                inner.renew().await?;
            }
            Ok::<_, imagestore_core::Error>(inner.key.clone())
        })
        .buffer_unordered(CONCURRENT);
    while let Some(key) = renewals.next().await {
        keys.push(key?);
    }
    drop(renewals);
    objects.delete_many(keys).await
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}
