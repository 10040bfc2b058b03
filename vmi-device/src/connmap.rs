//! A device's per-connection state, found by the host's connection handle without hashing.
//!
//! The host's handles are dense: the low 32 bits are an index the host reuses, the high 32 a
//! generation that changes on reuse. `ConnMap` keys a vector by the index and keeps the whole
//! handle to refuse stale ones, so a look-up is an index and a compare (a `HashMap<u64, _>`
//! spends a SipHash on every message).
#![forbid(unsafe_code)]

/// Per-connection values keyed by the host's connection handle.
#[derive(Debug)]
pub struct ConnMap<T> {
    slots: Vec<Option<(u64, T)>>,
    len: usize,
}

impl<T> Default for ConnMap<T> {
    fn default() -> Self {
        ConnMap {
            slots: Vec::new(),
            len: 0,
        }
    }
}

/// Handles whose index is past this are refused (a host hands out indices densely; this
/// bounds the vector against a handle that is not one).
const MAX_INDEX: usize = 1 << 24;

fn index(conn: u64) -> usize {
    (conn & 0xffff_ffff) as usize
}

impl<T> ConnMap<T> {
    /// An empty map.
    pub fn new() -> ConnMap<T> {
        ConnMap::default()
    }

    /// The value for `conn`, if it is there under exactly this handle.
    pub fn get(&self, conn: &u64) -> Option<&T> {
        match self.slots.get(index(*conn)) {
            Some(Some((c, v))) if c == conn => Some(v),
            _ => None,
        }
    }

    /// As [`ConnMap::get`], writable.
    pub fn get_mut(&mut self, conn: &u64) -> Option<&mut T> {
        match self.slots.get_mut(index(*conn)) {
            Some(Some((c, v))) if c == conn => Some(v),
            _ => None,
        }
    }

    /// True when `conn` has a value.
    pub fn contains_key(&self, conn: &u64) -> bool {
        self.get(conn).is_some()
    }

    /// Sets the value for `conn`; returns the value another handle with the same index had
    /// (a stale one) or this handle's old value. Handles with an index of 2^24 or more are
    /// not stored (`None` back, and `get` finds nothing): no host hands those out.
    pub fn insert(&mut self, conn: u64, value: T) -> Option<T> {
        let i = index(conn);
        if i >= MAX_INDEX {
            return None;
        }
        if i >= self.slots.len() {
            self.slots.resize_with(i + 1, || None);
        }
        let old = self.slots[i].replace((conn, value)).map(|(_, v)| v);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// Removes and returns the value for `conn`.
    pub fn remove(&mut self, conn: &u64) -> Option<T> {
        let i = index(*conn);
        match self.slots.get(i) {
            Some(Some((c, _))) if c == conn => {}
            _ => return None,
        }
        self.len -= 1;
        self.slots[i].take().map(|(_, v)| v)
    }

    /// Number of connections with a value.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Removes every entry, returning them.
    pub fn drain(&mut self) -> impl Iterator<Item = (u64, T)> + '_ {
        self.len = 0;
        self.slots.iter_mut().filter_map(Option::take)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_are_exact_and_stale_generations_miss() {
        let mut m = ConnMap::new();
        let a = (1u64 << 32) | 3;
        let stale = (2u64 << 32) | 3;
        assert_eq!(m.insert(a, "a"), None);
        assert_eq!(m.get(&a), Some(&"a"));
        assert_eq!(m.get(&stale), None, "same index, other generation");
        assert_eq!(m.remove(&stale), None);
        assert_eq!(m.len(), 1);
        assert_eq!(
            m.insert(stale, "b"),
            Some("a"),
            "the stale entry is replaced"
        );
        assert_eq!(m.len(), 1);
        assert!(m.contains_key(&stale) && !m.contains_key(&a));
        *m.get_mut(&stale).unwrap() = "c";
        assert_eq!(m.remove(&stale), Some("c"));
        assert!(m.is_empty());
        assert_eq!(m.insert(1 << 30, "far"), None);
        assert_eq!(m.get(&(1 << 30)), None, "absurd indices are not stored");
        m.insert(7, "x");
        m.insert(9, "y");
        let mut all: Vec<_> = m.drain().collect();
        all.sort();
        assert_eq!(all, vec![(7, "x"), (9, "y")]);
        assert!(m.is_empty());
    }
}
