//! Generation-checked handle tables: what C holds as `PVMI_CONNECT`, `PVMI_BUFFER`, … is a
//! handle (index and generation), never an address, so a stale, freed or made-up handle is
//! refused with an error instead of touching memory.

#[cfg(not(target_pointer_width = "64"))]
compile_error!("libvmi's handles need 64-bit pointers");

/// A handle as C sees it: `generation << 32 | (index + 1)`; never 0 (the generation starts
/// at 1), so never `NULL`.
pub(crate) type Handle = u64;

struct Entry<T> {
    generation: u32,
    value: Option<T>,
}

/// A table of values addressed by [`Handle`].
pub(crate) struct Table<T> {
    entries: Vec<Entry<T>>,
    free: Vec<u32>,
}

impl<T> Default for Table<T> {
    fn default() -> Self {
        Table {
            entries: Vec::new(),
            free: Vec::new(),
        }
    }
}

impl<T> Table<T> {
    /// Stores `value` and returns its handle.
    pub fn insert(&mut self, value: T) -> Handle {
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                self.entries.push(Entry {
                    generation: 0,
                    value: None,
                });
                (self.entries.len() - 1) as u32
            }
        };
        let e = &mut self.entries[index as usize];
        // Generations wrap from u32::MAX to 1, never 0.
        e.generation = e.generation.checked_add(1).unwrap_or(1);
        e.value = Some(value);
        (u64::from(e.generation) << 32) | (u64::from(index) + 1)
    }

    fn index(&self, h: Handle) -> Option<usize> {
        let low = (h & 0xffff_ffff) as usize;
        let generation = (h >> 32) as u32;
        let i = low.checked_sub(1)?;
        let e = self.entries.get(i)?;
        (e.generation == generation && e.value.is_some()).then_some(i)
    }

    /// The value behind `h`, if `h` is live.
    pub fn get(&self, h: Handle) -> Option<&T> {
        let i = self.index(h)?;
        self.entries[i].value.as_ref()
    }

    /// The value behind `h`, to change, if `h` is live.
    pub fn get_mut(&mut self, h: Handle) -> Option<&mut T> {
        let i = self.index(h)?;
        self.entries[i].value.as_mut()
    }

    /// Removes and returns the value; `h` is stale from now on.
    pub fn remove(&mut self, h: Handle) -> Option<T> {
        let i = self.index(h)?;
        let v = self.entries[i].value.take();
        self.free.push(i as u32);
        v
    }

    /// Every live handle.
    pub fn handles(&self) -> Vec<Handle> {
        self.entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.value.is_some())
            .map(|(i, e)| (u64::from(e.generation) << 32) | (i as u64 + 1))
            .collect()
    }

    /// Number of live values.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len() - self.free.len()
    }
}

/// A handle as the C pointer type `P`.
pub(crate) fn to_ptr<P>(h: Handle) -> *mut P {
    std::ptr::without_provenance_mut(h as usize)
}

/// The handle a C pointer carries.
pub(crate) fn from_ptr<P>(p: *mut P) -> Handle {
    p.addr() as Handle
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_and_made_up_handles_are_refused() {
        let mut t = Table::default();
        let a = t.insert("a");
        assert_ne!(a, 0);
        assert_eq!(t.get(a), Some(&"a"));
        assert_eq!(t.remove(a), Some("a"));
        assert_eq!(t.get(a), None, "a removed handle is stale");
        let b = t.insert("b");
        assert_ne!(a, b, "the slot is reused with a new generation");
        assert_eq!(t.get(a), None);
        assert_eq!(t.get(b), Some(&"b"));
        for bogus in [0, 1, u64::MAX, b + 1, b ^ (1 << 40), 0x7fff_0000_1000] {
            assert_eq!(t.get(bogus), None, "{bogus:#x}");
        }
        assert_eq!(t.len(), 1);
        assert_eq!(t.handles(), vec![b]);
    }

    #[test]
    fn handles_survive_the_pointer_round_trip() {
        let mut t = Table::default();
        let h = t.insert(5u8);
        let p: *mut u8 = to_ptr(h);
        assert!(!p.is_null());
        assert_eq!(from_ptr(p), h);
    }
}
