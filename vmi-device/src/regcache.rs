//! A registration cache (VMI 2.1: `VMI_Cache_Register`, `VMI_Cache_Deregister`,
//! `VMI_Cache_Stats`): a transport's memory registrations, kept after use and found again by
//! address range, so memory sent from again and again is registered once.
//!
//! The danger of such a cache is a registration that outlives its memory: the application
//! frees a buffer (glibc's `free` unmaps large ones), maps other memory at the same address,
//! and a cache that goes by address alone hands out the old registration — whose pages are
//! the old ones. VMI 2.1's cache was defeated exactly so by mmap'd allocations (its users
//! turned mmap off in malloc). Here every range is watched ([`crate::memwatch`]): the kernel
//! reports its unmapping, `MADV_DONTNEED` or move before the call that did it returns, and
//! every look-up first takes those reports, so a registration of memory that went away is
//! never found again. Memory that cannot be watched is registered for one use and not
//! cached; `VMI_DISABLE_REGCACHE=1` does that for all memory.
//!
//! The cache does no registration of its own: the device passes its `register` and
//! `deregister` on each call (it is generic over the device's handle), and keeps an entry
//! registered while a [`Lease`] on it is held, even if it was invalidated meanwhile (the
//! device's work requests may still name it); the deregistration waits for the release.

use std::collections::BTreeMap;

use crate::memwatch::{Seen, Watcher, watcher};

/// Page size assumed for aligning ranges (the watcher needs whole pages).
const PAGE: u64 = 4096;

/// What the cache did, for `vmi-info` and tuning (VMI 2.1: `VMI_Cache_Stats`). `repr(C)`:
/// the C API hands it to programs as `VMI_CACHE_STATS` (seven `uint64_t`, in this order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CacheStats {
    /// Look-ups served by a cached registration.
    pub hits: u64,
    /// Look-ups that registered.
    pub misses: u64,
    /// Registrations dropped because their memory was unmapped, released or moved.
    pub invalidated: u64,
    /// Registrations dropped to stay under the entry limit.
    pub evicted: u64,
    /// Registrations made for one use because the memory cannot be watched (or caching is
    /// off).
    pub uncached: u64,
    /// Registrations held now.
    pub entries: u64,
    /// Bytes they cover.
    pub bytes: u64,
}

/// A registration in use; give it back with [`RegCache::release`].
#[derive(Debug)]
pub struct Lease<H> {
    /// The device's handle of the registration.
    pub handle: H,
    /// Where the registration starts (page-aligned, at or below the address asked for).
    pub start: u64,
    id: u64,
}

struct Entry<H> {
    start: u64,
    end: u64,
    handle: H,
    users: u32,
    last_use: u64,
    /// Found by look-ups (false: invalidated or uncached, deregistered on its last release).
    live: bool,
}

/// A registration cache for handles of type `H`.
pub struct RegCache<H: Copy> {
    watch: Result<&'static Watcher, String>,
    entries: BTreeMap<u64, Entry<H>>,
    next_id: u64,
    seen: u64,
    max_entries: usize,
    tick: u64,
    stats: CacheStats,
    /// The process the cache was made in (a forked child's copy caches nothing: the watcher
    /// thread stayed in the parent).
    pid: u32,
    /// Room for the ranges read under the watcher's lock (never grown there: an allocation
    /// could unmap watched memory, and the unmapping would wait for the lock).
    scratch: Vec<(u64, u64)>,
}

impl<H: Copy> RegCache<H> {
    /// A cache of at most `max_entries` registrations; off when `VMI_DISABLE_REGCACHE=1` or
    /// where memory cannot be watched ([`RegCache::off_reason`] says why).
    pub fn new(max_entries: usize) -> RegCache<H> {
        let disabled = std::env::var("VMI_DISABLE_REGCACHE").is_ok_and(|v| v == "1");
        Self::with_caching(max_entries, !disabled)
    }

    /// A cache that caches (`caching`, where memory can be watched) or registers every
    /// look-up for one use.
    pub fn with_caching(max_entries: usize, caching: bool) -> RegCache<H> {
        let watch = if !caching {
            Err("off (VMI_DISABLE_REGCACHE=1)".into())
        } else {
            watcher()
        };
        if let Err(why) = &watch {
            log::info!("regcache: every registration is for one use: {why}");
        }
        let seen = watch.as_ref().map_or(0, |w| w.now());
        RegCache {
            watch,
            entries: BTreeMap::new(),
            next_id: 1,
            seen,
            max_entries: max_entries.max(1),
            tick: 0,
            stats: CacheStats::default(),
            pid: std::process::id(),
            scratch: Vec::with_capacity(crate::memwatch::LOG_MAX),
        }
    }

    /// Why registrations are not cached, or `None` when they are.
    pub fn off_reason(&self) -> Option<&str> {
        self.watch.as_ref().err().map(String::as_str)
    }

    /// Statistics.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            entries: self.entries.len() as u64,
            bytes: self.entries.values().map(|e| e.end - e.start).sum(),
            ..self.stats
        }
    }

    /// Takes the watcher's reports: entries whose memory went away stop being found, and
    /// those nobody uses are deregistered now.
    fn sync(&mut self, dereg: &mut impl FnMut(H)) {
        if std::process::id() != self.pid {
            // A forked child: nothing tells it about its unmappings any more.
            self.watch =
                Err("off in a forked child (the memory watcher runs in the parent)".into());
            for e in self.entries.values_mut() {
                if e.live {
                    e.live = false;
                    self.stats.invalidated += 1;
                }
            }
            self.pid = std::process::id();
        }
        let Ok(w) = self.watch else {
            self.drop_unused(dereg);
            return;
        };
        self.scratch.clear();
        let cap = self.scratch.capacity();
        let scratch = &mut self.scratch;
        let mut overflow = false;
        let seen = w.since(self.seen, |s, e| {
            if scratch.len() < cap {
                scratch.push((s, e));
            } else {
                overflow = true;
            }
        });
        let all = match seen {
            Seen::Upto(n) => {
                self.seen = n;
                overflow
            }
            Seen::Lost(n) => {
                self.seen = n;
                true
            }
        };
        let ranges = std::mem::take(&mut self.scratch);
        for e in self.entries.values_mut() {
            if e.live && (all || ranges.iter().any(|&(s, end)| s < e.end && e.start < end)) {
                e.live = false;
                self.stats.invalidated += 1;
            }
        }
        self.scratch = ranges;
        self.drop_unused(dereg);
    }

    fn drop_unused(&mut self, dereg: &mut impl FnMut(H)) {
        self.entries.retain(|_, e| {
            if e.live || e.users > 0 {
                return true;
            }
            dereg(e.handle);
            false
        });
    }

    /// A registration covering `addr..addr+len`: a cached one, or a new one made with
    /// `register(start, len)` over the whole pages around the range.
    pub fn acquire<E>(
        &mut self,
        addr: u64,
        len: u64,
        register: impl FnOnce(u64, u64) -> Result<H, E>,
        dereg: &mut impl FnMut(H),
    ) -> Result<Lease<H>, E> {
        self.sync(dereg);
        self.tick += 1;
        let end = addr.saturating_add(len.max(1));
        let hit = self
            .entries
            .iter_mut()
            .find(|(_, e)| e.live && e.start <= addr && end <= e.end);
        if let Some((&id, e)) = hit {
            e.users += 1;
            e.last_use = self.tick;
            self.stats.hits += 1;
            return Ok(Lease {
                handle: e.handle,
                start: e.start,
                id,
            });
        }
        self.stats.misses += 1;
        let start = addr & !(PAGE - 1);
        let end = end.div_ceil(PAGE).saturating_mul(PAGE);
        let watched = match self.watch {
            Ok(w) => match w.watch(start, end - start) {
                Ok(()) => true,
                Err(why) => {
                    log::debug!("regcache: {start:#x}+{}: {why}; not cached", end - start);
                    false
                }
            },
            Err(_) => false,
        };
        if !watched {
            self.stats.uncached += 1;
        }
        let live_count = self.entries.values().filter(|e| e.live).count();
        if watched && live_count >= self.max_entries {
            self.evict(dereg);
        }
        let handle = register(start, end - start)?;
        let id = self.next_id;
        self.next_id += 1;
        self.entries.insert(
            id,
            Entry {
                start,
                end,
                handle,
                users: 1,
                last_use: self.tick,
                live: watched,
            },
        );
        Ok(Lease { handle, start, id })
    }

    /// Drops the least recently used registration nobody holds.
    fn evict(&mut self, dereg: &mut impl FnMut(H)) {
        let victim = self
            .entries
            .iter()
            .filter(|(_, e)| e.live && e.users == 0)
            .min_by_key(|(_, e)| e.last_use)
            .map(|(&id, _)| id);
        if let Some(id) = victim
            && let Some(e) = self.entries.remove(&id)
        {
            dereg(e.handle);
            self.stats.evicted += 1;
        }
    }

    /// Gives a lease back (VMI 2.1: `VMI_Cache_Deregister`, which returns the entry to the
    /// cache): the registration stays for the next look-up unless its memory went away or
    /// it was not cacheable.
    pub fn release(&mut self, lease: Lease<H>, dereg: &mut impl FnMut(H)) {
        if let Some(e) = self.entries.get_mut(&lease.id) {
            e.users = e.users.saturating_sub(1);
        }
        self.sync(dereg);
        self.drop_unused(dereg);
    }

    /// Deregisters everything (the device is closing; no work request is outstanding).
    pub fn clear(&mut self, dereg: &mut impl FnMut(H)) {
        for (_, e) in std::mem::take(&mut self.entries) {
            dereg(e.handle);
        }
    }
}

#[cfg(test)]
#[allow(unsafe_code)]
mod tests {
    use super::*;

    use crate::memwatch::tests::map;

    /// Maps fresh memory over `p..p+len` (the old mapping is unmapped by the same call).
    fn map_fixed(p: *mut u8, len: usize) -> *mut u8 {
        // SAFETY: replaces a mapping the test owns and no reference points into.
        let q = unsafe {
            libc::mmap(
                p.cast(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        assert_ne!(q, libc::MAP_FAILED);
        q.cast()
    }

    /// A registrar that names each registration by a counter and records what is live.
    #[derive(Default)]
    struct Fake {
        next: u32,
        live: Vec<u32>,
    }

    impl Fake {
        fn reg(&mut self) -> Result<u32, ()> {
            self.next += 1;
            self.live.push(self.next);
            Ok(self.next)
        }
    }

    #[test]
    fn a_registration_is_reused_until_its_memory_is_unmapped_and_never_after() {
        let mut c: RegCache<u32> = RegCache::new(16);
        if let Some(why) = c.off_reason() {
            eprintln!("skipped: {why}");
            return;
        }
        let fake = std::cell::RefCell::new(Fake::default());
        let mut dereg = |h: u32| fake.borrow_mut().live.retain(|&x| x != h);
        let len = 256 * 1024;
        let p = map(len);
        let a = c
            .acquire(
                p as u64 + 100,
                5000,
                |_, _| fake.borrow_mut().reg(),
                &mut dereg,
            )
            .unwrap();
        assert_eq!(a.start, p as u64);
        c.release(a, &mut dereg);
        let b = c
            .acquire(
                p as u64 + 200,
                100,
                |_, _| fake.borrow_mut().reg(),
                &mut dereg,
            )
            .unwrap();
        assert_eq!(b.handle, 1, "the same memory: the cached registration");
        c.release(b, &mut dereg);
        assert_eq!((c.stats().hits, c.stats().misses), (1, 1));

        // Unmap it, map other memory at the same address: the old registration is gone
        // before munmap returns, and the look-up registers the new memory. (MAP_FIXED over
        // the live mapping does both in one call, so no other thread of the test process can
        // take the address in between.)
        let q = map_fixed(p, len);
        assert_eq!(q, p, "the same address");
        let d = c
            .acquire(
                q as u64 + 100,
                5000,
                |_, _| fake.borrow_mut().reg(),
                &mut dereg,
            )
            .unwrap();
        assert_eq!(d.handle, 2, "a new registration for the new memory");
        assert_eq!(c.stats().invalidated, 1);
        assert_eq!(fake.borrow().live, vec![2], "the old one was deregistered");
        c.release(d, &mut dereg);

        // Held across an invalidation: stays registered until released, never found again.
        let e = c
            .acquire(q as u64, 4096, |_, _| fake.borrow_mut().reg(), &mut dereg)
            .unwrap();
        assert_eq!(e.handle, 2);
        // SAFETY: part of our mapping.
        unsafe { libc::madvise(q.cast(), 4096, libc::MADV_DONTNEED) };
        let f = c
            .acquire(
                q as u64 + 8192,
                4096,
                |_, _| fake.borrow_mut().reg(),
                &mut dereg,
            )
            .unwrap();
        assert_eq!(f.handle, 3, "the invalidated entry is not found");
        assert!(fake.borrow().live.contains(&2), "but it stays while leased");
        c.release(e, &mut dereg);
        assert!(!fake.borrow().live.contains(&2), "and goes on release");
        c.release(f, &mut dereg);
        // SAFETY: our mapping.
        unsafe { libc::munmap(q.cast(), len) };
        c.clear(&mut dereg);
        assert!(fake.borrow().live.is_empty());
    }

    #[test]
    fn switched_off_every_look_up_registers_and_every_release_deregisters() {
        let mut c: RegCache<u32> = RegCache::with_caching(16, false);
        assert_eq!(c.off_reason(), Some("off (VMI_DISABLE_REGCACHE=1)"));
        let fake = std::cell::RefCell::new(Fake::default());
        let mut dereg = |h: u32| fake.borrow_mut().live.retain(|&x| x != h);
        for i in 1..=3 {
            let l = c
                .acquire(0x10_0000, 100, |_, _| fake.borrow_mut().reg(), &mut dereg)
                .unwrap();
            assert_eq!(l.handle, i);
            c.release(l, &mut dereg);
            assert!(fake.borrow().live.is_empty());
        }
        let s = c.stats();
        assert_eq!((s.hits, s.misses, s.uncached, s.entries), (0, 3, 3, 0));
    }

    #[test]
    fn munmap_invalidates_before_it_returns() {
        let mut c: RegCache<u32> = RegCache::new(16);
        if c.off_reason().is_some() {
            return;
        }
        let fake = std::cell::RefCell::new(Fake::default());
        let mut dereg = |h: u32| fake.borrow_mut().live.retain(|&x| x != h);
        let p = map(65536);
        let a = c
            .acquire(p as u64, 65536, |_, _| fake.borrow_mut().reg(), &mut dereg)
            .unwrap();
        c.release(a, &mut dereg);
        // SAFETY: our mapping.
        unsafe { libc::munmap(p.cast(), 65536) };
        // Any look-up (here of other memory) takes the report first.
        let other = map(4096);
        let b = c
            .acquire(other as u64, 10, |_, _| fake.borrow_mut().reg(), &mut dereg)
            .unwrap();
        assert_eq!(c.stats().invalidated, 1);
        assert!(!fake.borrow().live.contains(&1), "deregistered");
        c.release(b, &mut dereg);
        // SAFETY: our mapping.
        unsafe { libc::munmap(other.cast(), 4096) };
        c.clear(&mut dereg);
    }

    #[test]
    fn the_least_recently_used_idle_entry_makes_room() {
        let mut c: RegCache<u32> = RegCache::new(2);
        if c.off_reason().is_some() {
            return;
        }
        let fake = std::cell::RefCell::new(Fake::default());
        let mut dereg = |h: u32| fake.borrow_mut().live.retain(|&x| x != h);
        let p = map(3 * 65536);
        for i in 0..3u64 {
            let l = c
                .acquire(
                    p as u64 + i * 65536,
                    100,
                    |_, _| fake.borrow_mut().reg(),
                    &mut dereg,
                )
                .unwrap();
            c.release(l, &mut dereg);
        }
        assert_eq!(c.stats().evicted, 1);
        assert_eq!(fake.borrow().live, vec![2, 3]);
        // SAFETY: our mapping.
        unsafe { libc::munmap(p.cast(), 3 * 65536) };
        c.clear(&mut dereg);
    }
}
