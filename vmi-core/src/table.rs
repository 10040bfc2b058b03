//! A table whose keys are never mistaken for a later entry's: a [`slab::Slab`] (O(1) insert,
//! look-up and removal by index, no hashing) whose keys carry a generation, so a stale
//! request id or receive id finds nothing instead of another request.
#![forbid(unsafe_code)]

/// Entries by generational key: `generation << 32 | index`.
pub struct Table<T> {
    slab: slab::Slab<(u32, T)>,
    generation: u32,
}

impl<T> Default for Table<T> {
    fn default() -> Self {
        Table {
            slab: slab::Slab::new(),
            generation: 0,
        }
    }
}

impl<T> Table<T> {
    /// Stores `value`; returns its key (never 0).
    pub fn insert(&mut self, value: T) -> u64 {
        self.insert_with(|_| value)
    }

    /// Stores the value `make` builds from its key; returns the key (never 0).
    #[inline(always)]
    pub fn insert_with(&mut self, make: impl FnOnce(u64) -> T) -> u64 {
        self.generation = self.generation.wrapping_add(1).max(1);
        let entry = self.slab.vacant_entry();
        let key = (u64::from(self.generation) << 32) | entry.key() as u64;
        entry.insert((self.generation, make(key)));
        key
    }

    fn split(key: u64) -> (usize, u32) {
        ((key & 0xffff_ffff) as usize, (key >> 32) as u32)
    }

    /// The entry of `key`, if it is still there.
    pub fn get(&self, key: u64) -> Option<&T> {
        let (index, generation) = Self::split(key);
        self.slab
            .get(index)
            .filter(|(g, _)| *g == generation)
            .map(|(_, v)| v)
    }

    /// The entry of `key`, to change.
    pub fn get_mut(&mut self, key: u64) -> Option<&mut T> {
        let (index, generation) = Self::split(key);
        self.slab
            .get_mut(index)
            .filter(|(g, _)| *g == generation)
            .map(|(_, v)| v)
    }

    /// Removes and returns the entry of `key`.
    pub fn remove(&mut self, key: u64) -> Option<T> {
        self.get(key)?;
        let (index, _) = Self::split(key);
        Some(self.slab.remove(index).1)
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        self.slab.len()
    }

    /// Keys and entries, in index order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &T)> {
        self.slab
            .iter()
            .map(|(i, (g, v))| ((u64::from(*g) << 32) | i as u64, v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stale_key_finds_nothing_after_its_slot_is_reused() {
        let mut t = Table::default();
        let a = t.insert("a");
        assert_eq!(t.remove(a), Some("a"));
        let b = t.insert("b");
        assert_eq!(a & 0xffff_ffff, b & 0xffff_ffff, "the slot is reused");
        assert_eq!(t.get(a), None);
        assert_eq!(t.remove(a), None);
        assert_eq!(t.get(b), Some(&"b"));
        assert_ne!(a, 0);
        assert_eq!(t.iter().map(|(k, _)| k).collect::<Vec<_>>(), vec![b]);
    }
}
