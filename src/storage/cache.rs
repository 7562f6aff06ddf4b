//! A bounded write-through cache of the values under a few prefixes (the
//! session bindings, read on every sticky call, and the issued API tokens,
//! read on every authenticated request).
//!
//! It stays exact because every write to the store goes through one commit
//! path, which holds the lock of each cached key's stripe from before its
//! RocksDB write until the cache has the committed value (after any policy
//! rewrite); a miss is filled under the same lock. So no reader can see a value
//! older than the last committed one, and no fill can overwrite a newer one.

use parking_lot::{Mutex, MutexGuard};
use std::collections::HashMap;

const STRIPES: usize = 64;
/// Entries kept per stripe; a full stripe is emptied (bounded memory, no
/// bookkeeping on the read path).
const ENTRIES_PER_STRIPE: usize = 2048;

type Stripe = HashMap<String, Vec<u8>>;

/// The stripe (of [`STRIPES`]) `key` falls in; shared with the commit's key locks.
pub(super) fn stripe_of(key: &str) -> usize {
    // FNV-1a: keys are short, and nothing outside chooses where they land
    // in a way that matters beyond lock sharing.
    let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    (hash % STRIPES as u64) as usize
}

pub(super) struct PrefixCache {
    prefixes: &'static [&'static str],
    stripes: Box<[Mutex<Stripe>]>,
}

/// The stripes one commit holds while it writes cached keys.
pub(super) struct WriteLocks<'a> {
    cache: &'a PrefixCache,
    held: Vec<(usize, MutexGuard<'a, Stripe>)>,
}

impl PrefixCache {
    pub(super) fn new(prefixes: &'static [&'static str]) -> Self {
        PrefixCache {
            prefixes,
            stripes: (0..STRIPES).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    pub(super) fn covers(&self, key: &str) -> bool {
        self.prefixes.iter().any(|p| key.starts_with(p))
    }

    /// Locks the stripes of the cached keys among `keys`, in index order (so
    /// two commits never wait on each other crosswise).
    pub(super) fn lock_for_write<'k>(&self, keys: impl Iterator<Item = &'k str>) -> WriteLocks<'_> {
        let mut indexes: Vec<usize> = keys.filter(|k| self.covers(k)).map(stripe_of).collect();
        indexes.sort_unstable();
        indexes.dedup();
        WriteLocks {
            cache: self,
            held: indexes
                .into_iter()
                .map(|i| (i, self.stripes[i].lock()))
                .collect(),
        }
    }

    /// The value of `key` (which [`covers`](Self::covers) must accept), from
    /// the cache or from `load`; a loaded value is kept.
    pub(super) fn get_or_load<E>(
        &self,
        key: &str,
        load: impl FnOnce() -> Result<Option<Vec<u8>>, E>,
    ) -> Result<Option<Vec<u8>>, E> {
        let mut stripe = self.stripes[stripe_of(key)].lock();
        if let Some(value) = stripe.get(key) {
            return Ok(Some(value.clone()));
        }
        let loaded = load()?;
        if let Some(value) = &loaded {
            keep(&mut stripe, key, value);
        }
        Ok(loaded)
    }
}

impl WriteLocks<'_> {
    /// Records a committed write: `Some(value)` for a put, `None` for a delete.
    /// Keys outside the cached prefix are ignored.
    pub(super) fn committed(&mut self, key: &str, value: Option<&[u8]>) {
        if !self.cache.covers(key) {
            return;
        }
        let index = stripe_of(key);
        let Some((_, stripe)) = self.held.iter_mut().find(|(i, _)| *i == index) else {
            return;
        };
        match value {
            Some(value) => keep(stripe, key, value),
            None => {
                stripe.remove(key);
            }
        }
    }
}

fn keep(stripe: &mut Stripe, key: &str, value: &[u8]) {
    if stripe.len() >= ENTRIES_PER_STRIPE && !stripe.contains_key(key) {
        stripe.clear();
    }
    stripe.insert(key.to_string(), value.to_vec());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(value: Option<&str>) -> Result<Option<Vec<u8>>, ()> {
        Ok(value.map(|v| v.as_bytes().to_vec()))
    }

    #[test]
    fn fills_on_miss_and_follows_committed_writes() {
        let cache = PrefixCache::new(&["sessions/"]);
        assert_eq!(
            cache.get_or_load("sessions/a", || load(Some("1"))),
            Ok(Some(b"1".to_vec()))
        );
        assert_eq!(
            cache.get_or_load("sessions/a", || panic!("a hit must not load")),
            Ok::<_, ()>(Some(b"1".to_vec()))
        );
        assert_eq!(cache.get_or_load("sessions/b", || load(None)), Ok(None));
        assert_eq!(
            cache.get_or_load("sessions/b", || load(Some("loaded"))),
            Ok(Some(b"loaded".to_vec())),
            "absence is not cached"
        );

        let keys = ["sessions/a", "notes/x", "sessions/b"];
        let mut locks = cache.lock_for_write(keys.into_iter());
        locks.committed("sessions/a", Some(b"2"));
        locks.committed("sessions/b", None);
        locks.committed("notes/x", Some(b"ignored"));
        drop(locks);
        assert_eq!(
            cache.get_or_load("sessions/a", || panic!("updated in place")),
            Ok::<_, ()>(Some(b"2".to_vec()))
        );
        assert_eq!(cache.get_or_load("sessions/b", || load(None)), Ok(None));
        assert!(!cache.covers("notes/x"));
    }

    #[test]
    fn a_full_stripe_is_emptied_so_memory_stays_bounded() {
        let cache = PrefixCache::new(&["sessions/"]);
        for i in 0..(STRIPES * ENTRIES_PER_STRIPE * 2) {
            let key = format!("sessions/{i}");
            cache.get_or_load(&key, || load(Some("v"))).unwrap();
        }
        let cached: usize = cache.stripes.iter().map(|s| s.lock().len()).sum();
        assert!(cached <= STRIPES * ENTRIES_PER_STRIPE, "{cached}");
        assert!(cached > 0);
    }
}
