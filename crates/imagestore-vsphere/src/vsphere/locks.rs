//! Locks of a datastore reached over the network: a table in this process, shared by every
//! backend instance in it. vSphere offers no lock a client could take on a datastore file,
//! so a `vsphere://` store has one writing process (`Capabilities::shared_writers` is false).

use std::collections::HashSet;
use std::sync::{Arc, Condvar, Mutex, OnceLock};

use crate::datastore::DsLock;

#[derive(Default)]
struct Table {
    held: Mutex<HashSet<String>>,
    freed: Condvar,
}

fn table() -> Arc<Table> {
    static TABLE: OnceLock<Arc<Table>> = OnceLock::new();
    TABLE.get_or_init(|| Arc::new(Table::default())).clone()
}

/// Held while alive.
struct Held {
    table: Arc<Table>,
    key: String,
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Ok(mut held) = self.table.held.lock() {
            held.remove(&self.key);
        }
        self.table.freed.notify_all();
    }
}

/// Takes the lock named `key`, waiting for it when `wait`; `None` if not waiting and held.
pub fn lock(key: String, wait: bool) -> Option<DsLock> {
    let t = table();
    let mut held = t.held.lock().unwrap_or_else(|e| e.into_inner());
    while held.contains(&key) {
        if !wait {
            return None;
        }
        held = t.freed.wait(held).unwrap_or_else(|e| e.into_inner());
    }
    held.insert(key.clone());
    drop(held);
    Some(DsLock::new(Held { table: t, key }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_exclude_until_dropped() {
        let a = lock("k1".into(), true);
        assert!(a.is_some());
        assert!(lock("k1".into(), false).is_none());
        assert!(lock("k2".into(), false).is_some());
        let waiter = std::thread::spawn(|| lock("k1".into(), true).is_some());
        std::thread::sleep(std::time::Duration::from_millis(20));
        drop(a);
        assert!(waiter.join().unwrap_or(false));
    }
}
