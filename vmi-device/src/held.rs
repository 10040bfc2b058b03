//! Buffers a device lends to IRBs: a pool of byte vectors by power-of-two size class, and a
//! table of buffers held until an IRB's completion step gives them back. A device stores the
//! handle (`u32`, 0 for none) in its frame. Steady state: no allocation, no memset.
#![forbid(unsafe_code)]

/// Largest pooled size class (4 MiB); larger buffers are allocated and freed.
const MAX_CLASS: usize = 22;
/// Buffers kept per class.
const KEEP: usize = 64;

/// Pooled buffers and the table of lent ones.
#[derive(Debug)]
pub struct HeldBuffers {
    classes: Vec<Vec<Vec<u8>>>,
    held: Vec<Option<Vec<u8>>>,
    free: Vec<u32>,
}

impl Default for HeldBuffers {
    fn default() -> Self {
        HeldBuffers {
            classes: (0..=MAX_CLASS).map(|_| Vec::new()).collect(),
            held: Vec::new(),
            free: Vec::new(),
        }
    }
}

impl HeldBuffers {
    fn class(len: usize) -> usize {
        len.max(64).next_power_of_two().trailing_zeros() as usize
    }

    /// A pooled buffer with room for at least `cap` bytes, its old contents kept.
    fn with_room(&mut self, cap: usize) -> Vec<u8> {
        let c = Self::class(cap);
        let v = if c <= MAX_CLASS {
            self.classes[c].pop().unwrap_or_default()
        } else {
            Vec::new()
        };
        if v.capacity() < cap {
            return Vec::with_capacity(if c <= MAX_CLASS { 1 << c } else { cap });
        }
        v
    }

    /// A buffer of exactly `len` bytes. Its contents are unspecified (zero or old data): the
    /// caller overwrites them. A recycled buffer keeps its initialised length, so only bytes
    /// never written before are zeroed.
    pub fn take(&mut self, len: usize) -> Vec<u8> {
        let mut v = self.with_room(len);
        if v.len() >= len {
            v.truncate(len);
        } else {
            v.resize(len, 0);
        }
        v
    }

    /// A buffer of exactly `len` bytes if the pool holds one big enough, with no allocation;
    /// `None` when it would have to allocate. For a large payload announced by a peer's
    /// header: an idle buffer may take it whole, but the header alone never commits memory.
    pub fn take_pooled(&mut self, len: usize) -> Option<Vec<u8>> {
        let c = Self::class(len);
        let mut v = self.classes.get_mut(c)?.pop()?;
        if v.capacity() < len {
            self.classes[c].push(v);
            return None;
        }
        if v.len() >= len {
            v.truncate(len);
        } else {
            v.resize(len, 0);
        }
        Some(v)
    }

    /// An empty buffer (length 0) with room for at least `cap` bytes, for writers that fill
    /// spare capacity: nothing is zeroed.
    pub fn take_empty(&mut self, cap: usize) -> Vec<u8> {
        let mut v = self.with_room(cap);
        v.clear();
        v
    }

    /// Returns a buffer to the pool.
    pub fn give(&mut self, v: Vec<u8>) {
        let cap = v.capacity();
        if cap == 0 || !cap.is_power_of_two() {
            return;
        }
        let c = cap.trailing_zeros() as usize;
        if c <= MAX_CLASS && self.classes[c].len() < KEEP {
            self.classes[c].push(v);
        }
    }

    /// Keeps `v` until `release`; returns its handle (never 0).
    pub fn hold(&mut self, v: Vec<u8>) -> u32 {
        match self.free.pop() {
            Some(i) => {
                self.held[i as usize] = Some(v);
                i + 1
            }
            None => {
                self.held.push(Some(v));
                self.held.len() as u32
            }
        }
    }

    /// Gives back the buffer behind `handle` (0 is ignored) to the pool.
    pub fn release(&mut self, handle: u32) {
        if handle == 0 {
            return;
        }
        let i = (handle - 1) as usize;
        if let Some(v) = self.held.get_mut(i).and_then(Option::take) {
            self.give(v);
            self.free.push(i as u32);
        }
    }

    /// Buffers currently lent.
    pub fn lent(&self) -> usize {
        self.held.len() - self.free.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recycles_without_reallocating() {
        let mut h = HeldBuffers::default();
        let mut v = h.take(1000);
        assert_eq!(v.len(), 1000);
        v[999] = 7;
        let ptr = v.as_ptr();
        let id = h.hold(v);
        assert_ne!(id, 0);
        assert_eq!(h.lent(), 1);
        h.release(id);
        assert_eq!(h.lent(), 0);
        let again = h.take(900);
        assert_eq!(again.as_ptr(), ptr, "same class, same memory");
        assert_eq!(again.len(), 900);
        h.release(0);
        h.release(id); // double release is ignored
        let big = h.take(5 << 20);
        assert_eq!(big.len(), 5 << 20);
    }

    #[test]
    fn take_pooled_never_allocates() {
        let mut h = HeldBuffers::default();
        assert!(
            h.take_pooled(1 << 20).is_none(),
            "an empty pool gives nothing"
        );
        let v = h.take(1 << 20);
        let ptr = v.as_ptr();
        h.give(v);
        let again = h.take_pooled(1 << 20).expect("the idle buffer");
        assert_eq!(again.as_ptr(), ptr);
        assert_eq!(again.len(), 1 << 20);
        assert!(h.take_pooled(1 << 20).is_none(), "it was the only one");
        h.give(again);
        assert!(
            h.take_pooled((1 << 20) + 1).is_none(),
            "a larger class has none idle"
        );
    }
}
