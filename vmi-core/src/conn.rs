//! Connection handles (VMI 2.1: `PVMI_CONNECT`).

use serde::Serialize;

/// A connection, as the application names it. Handles are never reused while a stale copy
/// could be mistaken for a new connection: each carries a generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct ConnId(pub(crate) u64);

impl ConnId {
    /// The raw value devices see in `VmiIrb::conn`.
    pub fn raw(self) -> u64 {
        self.0
    }

    fn index(self) -> usize {
        (self.0 & 0xffff_ffff) as usize
    }

    fn generation(self) -> u32 {
        (self.0 >> 32) as u32
    }
}

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "conn#{}.{}", self.index(), self.generation())
    }
}

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ConnState {
    /// Connect issued, no answer yet.
    Connecting,
    /// A peer asked; the accept handler has not answered yet (or its answer is in flight).
    Incoming,
    /// Open for streams.
    Open,
    /// Disconnect issued.
    Closing,
}

pub(crate) struct ConnEntry {
    pub generation: u32,
    pub live: bool,
    pub state: ConnState,
    /// Engine index of the owning transport.
    pub transport: usize,
    pub peer_host: String,
    pub peer_key: String,
    pub stream_open: bool,
}

/// All connections of one process.
#[derive(Default)]
pub(crate) struct ConnTable {
    entries: Vec<ConnEntry>,
    free: Vec<usize>,
}

impl ConnTable {
    pub fn alloc(&mut self, transport: usize, state: ConnState) -> ConnId {
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                self.entries.push(ConnEntry {
                    generation: 0,
                    live: false,
                    state,
                    transport,
                    peer_host: String::new(),
                    peer_key: String::new(),
                    stream_open: false,
                });
                self.entries.len() - 1
            }
        };
        let e = &mut self.entries[index];
        e.generation = e.generation.wrapping_add(1).max(1);
        e.live = true;
        e.state = state;
        e.transport = transport;
        e.peer_host.clear();
        e.peer_key.clear();
        e.stream_open = false;
        ConnId(((e.generation as u64) << 32) | index as u64)
    }

    pub fn get(&self, id: ConnId) -> Option<&ConnEntry> {
        self.entries
            .get(id.index())
            .filter(|e| e.live && e.generation == id.generation())
    }

    pub fn get_mut(&mut self, id: ConnId) -> Option<&mut ConnEntry> {
        self.entries
            .get_mut(id.index())
            .filter(|e| e.live && e.generation == id.generation())
    }

    pub fn release(&mut self, id: ConnId) {
        if let Some(e) = self.get_mut(id) {
            e.live = false;
            self.free.push(id.index());
        }
    }

    pub fn live(&self) -> usize {
        self.entries.iter().filter(|e| e.live).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_handles_are_refused() {
        let mut t = ConnTable::default();
        let a = t.alloc(0, ConnState::Open);
        assert!(t.get(a).is_some());
        t.release(a);
        assert!(t.get(a).is_none());
        let b = t.alloc(0, ConnState::Open);
        assert_ne!(a, b, "the slot is reused under a new generation");
        assert!(t.get(a).is_none());
        assert!(t.get(b).is_some());
        assert_eq!(t.live(), 1);
        assert!(t.get(ConnId(0)).is_none());
    }
}
