//! One upload at a time per image id, within this process.
//!
//! A backend returns an image that exists without reading the writer's body, and writers of
//! the same id wait on the id's lock and then find the image. Over HTTP the body streams as
//! soon as the request is sent, so a writer that waits on the server's lock may already have
//! sent its layer. Writes of one id to one server from this process (from any number of
//! [`crate::RemoteStore`] instances) therefore take a lock here first, and a writer that got it
//! asks again whether the image exists before it sends a byte of its body. Across processes
//! and hosts the server still keeps one write; a loser's body is then read as far as the
//! network buffers it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedMutexGuard;

/// The locks of the writes in flight, by `<server>/<store>/<id>`.
type Table = Mutex<BTreeMap<String, Arc<tokio::sync::Mutex<()>>>>;

static IN_FLIGHT: Table = Mutex::new(BTreeMap::new());

/// The lock of one id, held while its write runs; dropping it forgets the id when no other
/// writer waits on it.
pub(crate) struct IdLock {
    key: String,
    guard: Option<OwnedMutexGuard<()>>,
}

impl Drop for IdLock {
    fn drop(&mut self) {
        drop(self.guard.take());
        if let Ok(mut table) = IN_FLIGHT.lock()
            && table
                .get(&self.key)
                .is_some_and(|m| Arc::strong_count(m) == 1)
        {
            table.remove(&self.key);
        }
    }
}

/// Waits for the other writes of `key` in this process to end and takes its lock.
pub(crate) async fn lock(key: String) -> IdLock {
    let mutex = match IN_FLIGHT.lock() {
        Ok(mut table) => table.entry(key.clone()).or_default().clone(),
        // A panic while the table was held: go on unserialised (the server keeps one write).
        Err(_) => Arc::new(tokio::sync::Mutex::new(())),
    };
    let guard = mutex.lock_owned().await;
    IdLock {
        key,
        guard: Some(guard),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writers_of_one_id_take_turns_and_are_forgotten() {
        let first = lock("s/a".into()).await;
        let other = lock("s/b".into()).await;
        let waiter = tokio::spawn(lock("s/a".into()));
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "a second writer of s/a waits");
        drop(first);
        let second = waiter.await;
        assert!(second.is_ok());
        drop(second);
        drop(other);
        let left = IN_FLIGHT.lock().map(|t| t.len()).unwrap_or(usize::MAX);
        assert_eq!(left, 0, "the table forgets ids nobody writes");
    }
}
