//! [`Cache`]: a small bounded map from string keys to shared values, for what backends
//! remember between calls (decoded TOCs of immutable layers, records with their versions).

use std::collections::HashMap;
use std::sync::Mutex;

/// A bounded cache; when full, it is emptied and starts over (the values are cheap to load
/// again, and this keeps memory bounded without bookkeeping).
#[derive(Debug)]
pub struct Cache<V> {
    map: Mutex<HashMap<String, V>>,
    capacity: usize,
}

impl<V: Clone> Cache<V> {
    /// A cache holding at most `capacity` entries.
    pub fn new(capacity: usize) -> Self {
        Cache {
            map: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
        }
    }

    /// The value for `key`, if cached.
    pub fn get(&self, key: &str) -> Option<V> {
        self.map.lock().ok().and_then(|m| m.get(key).cloned())
    }

    /// Remembers `value` for `key`.
    pub fn put(&self, key: String, value: V) {
        if let Ok(mut m) = self.map.lock() {
            if m.len() >= self.capacity && !m.contains_key(&key) {
                m.clear();
            }
            m.insert(key, value);
        }
    }

    /// Forgets `key`.
    pub fn remove(&self, key: &str) {
        if let Ok(mut m) = self.map.lock() {
            m.remove(key);
        }
    }

    /// The cached value for `key`, or the one `load` gives, which is then cached.
    pub fn get_or_load<E>(&self, key: &str, load: impl FnOnce() -> Result<V, E>) -> Result<V, E> {
        if let Some(v) = self.get(key) {
            return Ok(v);
        }
        let v = load()?;
        self.put(key.to_owned(), v.clone());
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_loading() {
        let c: Cache<u32> = Cache::new(2);
        c.put("a".into(), 1);
        c.put("b".into(), 2);
        assert_eq!(c.get("a"), Some(1));
        c.put("c".into(), 3);
        assert_eq!(c.get("a"), None, "emptied when full");
        assert_eq!(c.get_or_load::<()>("d", || Ok(4)), Ok(4));
        assert_eq!(c.get_or_load::<()>("d", || Err(())), Ok(4), "cached");
        c.remove("d");
        assert_eq!(c.get("d"), None);
    }
}
