//! The publisher's side of RDMA: the buffers this process published, and the checks a peer's
//! put or get passes before it touches one. No I/O.
#![forbid(unsafe_code)]

use super::region::Region;
use crate::conn::ConnId;
use crate::status::Status;
use crate::table::Table;

/// A buffer published to one peer.
#[derive(Clone, Debug)]
pub struct Exposed {
    /// The connection it was published on; only that peer may reach it.
    pub conn: ConnId,
    /// The memory (a handle kept until the peer released it or the connection closed).
    pub region: Region,
    /// Where in the region the buffer starts.
    pub start: usize,
    /// Its length.
    pub len: usize,
    /// The application's value, given back in notifications.
    pub ctx: u32,
    /// Withdrawn by this process: puts and gets fail, the handle waits for the release.
    pub withdrawn: bool,
    /// Its address went to the peer for one-sided access.
    pub one_sided: bool,
}

/// Why a peer's access is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// No such buffer published to that peer (never, released, or a forged id).
    Unknown,
    /// Withdrawn by this process.
    Withdrawn,
    /// Outside the buffer.
    Range,
}

impl Refused {
    /// The status the peer is answered with.
    pub fn status(self) -> Status {
        match self {
            Refused::Unknown | Refused::Withdrawn => Status::Rejected,
            Refused::Range => Status::Invalid,
        }
    }
}

/// The buffers published.
#[derive(Default)]
pub struct Target {
    table: Table<Exposed>,
}

impl Target {
    /// Records a published buffer; returns its id (never 0).
    pub fn publish(&mut self, e: Exposed) -> u64 {
        self.table.insert(e)
    }

    /// The number of buffers published (withdrawn ones included until released).
    pub fn published(&self) -> usize {
        self.table.len()
    }

    /// Buffer `id`, if published.
    pub fn get(&self, id: u64) -> Option<&Exposed> {
        self.table.get(id)
    }

    /// Checks a peer's access of `len` bytes at `offset` of buffer `id` through `conn`;
    /// returns the region and the offset in it.
    pub fn access(
        &self,
        conn: ConnId,
        id: u64,
        offset: u64,
        len: u64,
    ) -> Result<(&Exposed, usize), Refused> {
        let e = self
            .table
            .get(id)
            .filter(|e| e.conn == conn)
            .ok_or(Refused::Unknown)?;
        if e.withdrawn {
            return Err(Refused::Withdrawn);
        }
        match offset.checked_add(len) {
            Some(end) if end <= e.len as u64 => Ok((e, e.start + offset as usize)),
            _ => Err(Refused::Range),
        }
    }

    /// Marks buffer `id` withdrawn; returns its connection. None if not published.
    pub fn withdraw(&mut self, id: u64) -> Option<ConnId> {
        let e = self.table.get_mut(id)?;
        e.withdrawn = true;
        Some(e.conn)
    }

    /// The peer on `conn` released buffer `id`: removed.
    pub fn release(&mut self, conn: ConnId, id: u64) -> Option<Exposed> {
        if self.table.get(id)?.conn != conn {
            return None;
        }
        self.table.remove(id)
    }

    /// A connection closed: its buffers, removed, with their ids.
    pub fn conn_closed(&mut self, conn: ConnId) -> Vec<(u64, Exposed)> {
        let ids: Vec<u64> = self
            .table
            .iter()
            .filter(|(_, e)| e.conn == conn)
            .map(|(k, _)| k)
            .collect();
        ids.into_iter()
            .filter_map(|id| self.table.remove(id).map(|e| (id, e)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_peer_it_was_published_to_reaches_a_buffer_within_its_range() {
        let r = Region::new(100).unwrap();
        let mut t = Target::default();
        let id = t.publish(Exposed {
            conn: ConnId(1),
            region: r,
            start: 10,
            len: 50,
            ctx: 7,
            withdrawn: false,
            one_sided: false,
        });
        assert_eq!(t.access(ConnId(1), id, 0, 50).unwrap().1, 10);
        assert_eq!(t.access(ConnId(1), id, 49, 1).unwrap().1, 59);
        assert_eq!(t.access(ConnId(1), id, 49, 2).unwrap_err(), Refused::Range);
        assert_eq!(
            t.access(ConnId(1), id, u64::MAX, 2).unwrap_err(),
            Refused::Range
        );
        assert_eq!(t.access(ConnId(2), id, 0, 1).unwrap_err(), Refused::Unknown);
        assert_eq!(
            t.access(ConnId(1), id + 1, 0, 1).unwrap_err(),
            Refused::Unknown
        );
        assert_eq!(
            t.release(ConnId(2), id).map(|e| e.ctx),
            None,
            "not its peer"
        );
        assert_eq!(t.withdraw(id), Some(ConnId(1)));
        assert_eq!(
            t.access(ConnId(1), id, 0, 1).unwrap_err(),
            Refused::Withdrawn
        );
        assert_eq!(t.release(ConnId(1), id).map(|e| e.ctx), Some(7));
        assert_eq!(t.access(ConnId(1), id, 0, 1).unwrap_err(), Refused::Unknown);
        assert_eq!(t.published(), 0);
    }

    use proptest::prelude::*;

    proptest! {
        /// Any sequence of a peer's accesses, releases, withdrawals and closes: an admitted
        /// access always lies inside its buffer (and so its region), and nothing is admitted
        /// for a buffer that is released, withdrawn, closed or another connection's.
        #[test]
        fn fuzz_a_peer_reaches_only_what_is_published_to_it(
            ops in proptest::collection::vec((0u8..5, 0u64..3, 0u64..6, any::<u64>(), any::<u64>()), 1..200)
        ) {
            let region = Region::new(4096).unwrap();
            let mut t = Target::default();
            let mut ids = Vec::new();
            for (i, conn) in [1u64, 2].iter().enumerate() {
                ids.push(t.publish(Exposed {
                    conn: ConnId(*conn),
                    region: region.clone(),
                    start: 100 * (i + 1),
                    len: 1000,
                    ctx: 0,
                    withdrawn: false,
                    one_sided: false,
                }));
            }
            let mut gone = std::collections::HashSet::new();
            for (what, conn, pick, offset, len) in ops {
                let conn = ConnId(conn);
                // An id of ours, or one made up (a neighbour, a stale generation).
                let id = match pick {
                    0 | 1 => ids[pick as usize],
                    2 => ids[0] + 1,
                    3 => ids[1] ^ (1 << 32),
                    _ => offset,
                };
                match what {
                    0 | 1 => {
                        if let Ok((e, at)) = t.access(conn, id, offset % 2048, len % 2048) {
                            prop_assert_eq!(e.conn, conn);
                            prop_assert!(!e.withdrawn && !gone.contains(&id));
                            prop_assert!(at >= e.start && at + (len % 2048) as usize <= e.start + e.len);
                            prop_assert!(at + (len % 2048) as usize <= e.region.len());
                        }
                    }
                    2 => {
                        if t.release(conn, id).is_some() {
                            gone.insert(id);
                        }
                    }
                    3 => {
                        t.withdraw(id);
                    }
                    _ => {
                        for (id, _) in t.conn_closed(conn) {
                            gone.insert(id);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_closed_connection_takes_its_buffers_only() {
        let r = Region::new(8).unwrap();
        let mut t = Target::default();
        let e = |c| Exposed {
            conn: ConnId(c),
            region: r.clone(),
            start: 0,
            len: 8,
            ctx: 0,
            withdrawn: false,
            one_sided: false,
        };
        let a = t.publish(e(1));
        let b = t.publish(e(2));
        let closed: Vec<u64> = t.conn_closed(ConnId(1)).iter().map(|c| c.0).collect();
        assert_eq!(closed, vec![a]);
        assert!(t.get(b).is_some());
    }
}
