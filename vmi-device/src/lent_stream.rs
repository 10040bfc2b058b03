//! Sockets a byte-stream transport lends the host (device ABI 1.8 `lend_streams`): the
//! host's poll reads them itself and takes whole small data frames straight into its
//! receive arena, and calls the transport's poll only when the transport has other work or
//! a read left it something (see [`crate::abi::VmiStreamSet`] for the contract and the frame
//! format).
//!
//! Two halves, one format:
//! - the transport's: [`LentStreams`] (the set, its streams and the host's skips) and
//!   [`StreamRest`] (where the host leaves what it did not take);
//! - the host's: [`read_stream`], which checks every header it reads, since the peer sends
//!   those bytes and may be hostile.
#![allow(unsafe_code)]

use std::os::fd::{BorrowedFd, RawFd};
use std::ptr::NonNull;

use crate::abi::{
    VMI_REST_BYTES, VMI_REST_END, VMI_REST_ERROR, VMI_REST_NONE, VMI_STREAM_HEADER_LEN, VmiStream,
    VmiStreamRest, VmiStreamSet,
};
use crate::lent::{Batch, Stop};
use crate::loan::{HostCell, Lent};

/// What the host's read of a lent stream left to the transport (see [`StreamRest::take`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rest {
    /// Bytes read and not taken: `buf[off..len]`, where `len` is what the read returned (a
    /// read that filled the buffer may have left more in the socket).
    Bytes {
        /// Start of the bytes left.
        off: usize,
        /// End of the bytes left.
        len: usize,
    },
    /// The end of the stream.
    End,
    /// The read failed with this errno.
    Error(i32),
}

/// Where the host leaves what it read from a lent stream and did not take, kept at a stable
/// heap address (one per connection).
#[derive(Debug, Default)]
pub struct StreamRest(HostCell<VmiStreamRest>);

impl StreamRest {
    /// What the host left, if anything, now taken (the rest is [`VMI_REST_NONE`] again).
    /// Bytes outside a buffer of `cap` bytes, or an unknown kind, are a host bug: they are
    /// logged and read as an end of stream, which closes the connection.
    #[inline]
    pub fn take(&self, cap: usize) -> Option<Rest> {
        // SAFETY: the rest is written only on the polling thread, by the host's
        // `read_stream` (while the device is not called) or by this handle, never at once.
        let r = unsafe { &mut *self.0.get() };
        let kind = std::mem::replace(&mut r.kind, VMI_REST_NONE);
        match kind {
            VMI_REST_NONE => None,
            VMI_REST_BYTES if r.off <= r.len && r.len <= cap as u64 => Some(Rest::Bytes {
                off: r.off as usize,
                len: r.len as usize,
            }),
            VMI_REST_ERROR => Some(Rest::Error(r.error)),
            VMI_REST_END => Some(Rest::End),
            other => {
                log::error!(
                    "the host left a lent stream rest of kind {other} at {}..{} of {cap} bytes; read as an end of stream (a host bug)",
                    r.off,
                    r.len
                );
                Some(Rest::End)
            }
        }
    }

    /// True when the host read bytes from the stream since the last call (the peer was
    /// heard from).
    #[inline]
    pub fn take_heard(&self) -> bool {
        // SAFETY: as in `take`.
        let r = unsafe { &mut *self.0.get() };
        std::mem::take(&mut r.heard) != 0
    }

    fn as_ptr(&self) -> *mut VmiStreamRest {
        self.0.get()
    }
}

/// The buffer a transport reads its sockets into and lends with them (see
/// [`LentStreams::publish`]). Its memory is reached only through its own pointer, which the
/// host's writes (through the copy the set holds) and the device's slices of it all derive
/// from: a `Box<[u8]>` would be asserted unique again at every use of the box, which the
/// host's writes through an older pointer would break.
pub struct StreamBuffer {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the buffer owns its allocation alone, as a `Box<[u8]>` does; the host writes it
// only on the polling thread, while the device is not called.
unsafe impl Send for StreamBuffer {}

impl StreamBuffer {
    /// A zeroed buffer of `len` bytes.
    pub fn new(len: usize) -> StreamBuffer {
        let len = len.max(1);
        let raw = Box::into_raw(vec![0u8; len].into_boxed_slice());
        StreamBuffer {
            // SAFETY: `Box::into_raw` never returns NULL.
            ptr: unsafe { NonNull::new_unchecked(raw.cast::<u8>()) },
            len,
        }
    }

    /// Where the host reads into.
    fn as_mut_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }
}

impl Default for StreamBuffer {
    /// An empty buffer (a place holder while the real one is taken out).
    fn default() -> StreamBuffer {
        StreamBuffer {
            ptr: NonNull::dangling(),
            len: 0,
        }
    }
}

impl std::fmt::Debug for StreamBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamBuffer")
            .field("len", &self.len)
            .finish()
    }
}

impl std::ops::Deref for StreamBuffer {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `len` initialised bytes at `ptr` (or none, dangling), owned by this buffer;
        // the host writes them only while the device is not called, so not while this slice
        // lives.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for StreamBuffer {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`, exclusively borrowed.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for StreamBuffer {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: made by `Box::into_raw` of a boxed slice of `len` bytes in `new`.
            drop(unsafe {
                Box::from_raw(std::ptr::slice_from_raw_parts_mut(
                    self.ptr.as_ptr(),
                    self.len,
                ))
            });
        }
    }
}

/// One stream to lend (see [`LentStreams::publish`]).
#[derive(Clone, Copy, Debug)]
pub struct StreamLoan<'a> {
    /// The host's connection the frames belong to.
    pub conn: u64,
    /// The socket (connected and non-blocking).
    pub fd: RawFd,
    /// Largest payload the host may take.
    pub max_len: u64,
    /// Where the host leaves what it does not take.
    pub rest: &'a StreamRest,
}

/// A transport's lent stream sockets ([`Lent`] of a [`VmiStreamSet`]).
///
/// At the start of its poll the transport takes each listed stream's rest
/// ([`StreamRest::take`]) before it reads anything into the buffer; at the end of its poll,
/// when only whole frames can be waiting in its sockets, [`LentStreams::publish`] lists the
/// streams again and clears the busy flag.
pub type LentStreams = Lent<VmiStreamSet>;

impl Lent<VmiStreamSet> {
    /// Lists `streams` as the lent streams, reading into `buf` (shared by all), lets the host
    /// skip up to `skips` of the device's polls (0: the host reads nothing and polls the
    /// device) and clears the busy flag. An empty buffer lends nothing (a read into it would
    /// look like the end of every stream): the set stays busy.
    ///
    /// # Safety
    /// Until the next `publish`, [`LentStreams::set_busy`] or drop: every listed socket stays
    /// open, connected and non-blocking, and its connection is between frames (the next
    /// byte it reads starts a frame) with nothing read and kept aside; each rest stays valid
    /// and is [`VMI_REST_NONE`]; `buf` stays alive (not dropped, not replaced by another)
    /// and the device holds no slice of it while the host may read.
    pub unsafe fn publish<'a>(
        &mut self,
        streams: impl IntoIterator<Item = StreamLoan<'a>>,
        buf: &StreamBuffer,
        skips: u32,
    ) {
        let cap = buf.len();
        let buf = buf.as_mut_ptr();
        if cap == 0 {
            self.set_busy();
            return;
        }
        self.lists.clear();
        self.lists.extend(streams.into_iter().map(|s| VmiStream {
            conn: s.conn,
            fd: s.fd,
            reserved: 0,
            buf,
            cap: cap as u64,
            max_len: s.max_len,
            rest: s.rest.as_ptr(),
        }));
        let (streams, count) = (self.lists.as_ptr(), self.lists.len());
        let set = self.set_mut();
        set.streams = streams;
        set.count = count;
        self.unbusy(skips);
    }

    /// Clears the busy flag and lets the host skip up to `skips` of the device's polls,
    /// with the streams listed at the last [`LentStreams::publish`] (no list is rebuilt).
    ///
    /// # Safety
    /// [`LentStreams::publish`]'s contract, for the streams it listed (the same sockets, of
    /// the same connections, still in that state), with the same buffer.
    #[inline]
    pub unsafe fn resume(&mut self, skips: u32) {
        self.unbusy(skips);
    }
}

/// Reads a lent stream once and takes the whole data frames of at most `max_len` payload
/// bytes (and at most `max_records` of them) from the start of what it read into `out`.
/// Returns the frames taken and why it stopped: [`Stop::Empty`] (nothing more: the read
/// would block, or everything read was taken), [`Stop::Budget`] (`max_records` is 0:
/// nothing read) or [`Stop::Device`] (a rest was left, which the transport's poll must take
/// before any other stream of the set is read).
///
/// Every header is checked before use: another kind, a length over the limits, a frame
/// running past what was read, or a frame of the peer's host stops the taking there, and
/// the rest goes to the transport, whose decoder reads and reports it.
///
/// # Safety
/// `stream` is listed in a set lent under the [`crate::abi::VmiStreamSet`] contract, which holds
/// for the duration of the call, and its rest is [`VMI_REST_NONE`].
#[inline(always)]
pub unsafe fn read_stream(
    stream: &VmiStream,
    max_records: usize,
    max_len: usize,
    out: &mut Batch,
) -> (usize, Stop) {
    if max_records == 0 {
        return (0, Stop::Budget);
    }
    // SAFETY: forwarded.
    match unsafe { read_socket(stream) } {
        // SAFETY: forwarded; the read put `n` bytes at the start of the buffer.
        Ok(n) => unsafe { take_frames(stream, n, max_records, max_len, out) },
        Err(stop) => (0, stop),
    }
}

/// The read of [`read_stream`]: reads the socket once into the stream's buffer. `Ok(n)`:
/// `n > 0` bytes at the start of the buffer, for [`take_frames`] or [`take_only_frame`];
/// `Err(Stop::Empty)`: the read would block; `Err(Stop::Device)`: the stream ended or
/// failed, and that is left as its rest.
///
/// # Safety
/// As for [`read_stream`].
#[inline(always)]
pub unsafe fn read_socket(stream: &VmiStream) -> Result<usize, Stop> {
    // SAFETY: the contract: an open socket, and a buffer of `cap` bytes the device does not
    // use during this call. An empty socket (every idle busy poll) costs this read, inline.
    let got = unsafe {
        rustix::io::read(
            BorrowedFd::borrow_raw(stream.fd),
            std::slice::from_raw_parts_mut(stream.buf, stream.cap as usize),
        )
    };
    match got {
        Ok(n) if n > 0 => Ok(n),
        Err(rustix::io::Errno::AGAIN) => Err(Stop::Empty),
        Ok(_) => Err(leave(stream, VMI_REST_END, 0, 0, 0)),
        Err(e) => Err(leave(stream, VMI_REST_ERROR, e.raw_os_error(), 0, 0)),
    }
}

/// [`read_stream`] once the read brought `n` bytes: takes the whole frames from their start.
///
/// # Safety
/// As for [`read_stream`]; `n` bytes were read into the stream's buffer, `0 < n <= cap`.
#[inline(never)]
pub unsafe fn take_frames(
    stream: &VmiStream,
    n: usize,
    max_records: usize,
    max_len: usize,
    out: &mut Batch,
) -> (usize, Stop) {
    // SAFETY: the contract: a buffer of `cap` bytes the device does not use during this call.
    let buf = unsafe { std::slice::from_raw_parts(stream.buf, stream.cap as usize) };
    let limit = stream.max_len.min(max_len as u64);
    let mut at = 0;
    let mut taken = 0;
    while taken < max_records && n - at >= VMI_STREAM_HEADER_LEN {
        let h = u64::from_le_bytes(buf[at..at + 8].try_into().expect("8 bytes"));
        let avail = (n - at - VMI_STREAM_HEADER_LEN) as u64;
        let Some((flags, len)) = crate::lent::takeable(h, limit, avail) else {
            break;
        };
        let payload = &buf[at + VMI_STREAM_HEADER_LEN..at + VMI_STREAM_HEADER_LEN + len];
        // SAFETY: `append` gives `len` writable bytes; `payload` has `len` readable ones.
        unsafe {
            crate::lent::append(out, stream.conn, flags, len, |dst| {
                crate::copy::copy_small(payload.as_ptr(), dst, len)
            })
        };
        at += VMI_STREAM_HEADER_LEN + len;
        taken += 1;
    }
    if at == n && n < buf.len() {
        // SAFETY: the contract: the rest is valid.
        unsafe { (*stream.rest).heard += n as u64 };
        return (taken, Stop::Empty);
    }
    (taken, leave(stream, VMI_REST_BYTES, 0, at, n))
}

/// The one frame of a read that brought exactly one: `n` bytes (read by [`read_socket`])
/// that are one whole data frame [`take_frames`] would take, of at most `max_len` payload
/// bytes, in a read that did not fill the buffer. Its payload replaces what `out` held, the
/// bytes count as heard, and its receive flags are returned. Anything else returns `None`
/// and changes nothing: the caller then takes the bytes with [`take_frames`].
///
/// # Safety
/// As for [`take_frames`].
#[inline]
pub unsafe fn take_only_frame(
    stream: &VmiStream,
    n: usize,
    max_len: usize,
    out: &mut Vec<u8>,
) -> Option<u32> {
    // SAFETY: the contract: a buffer of `cap` bytes the device does not use during this call.
    let buf = unsafe { std::slice::from_raw_parts(stream.buf, stream.cap as usize) };
    if n < VMI_STREAM_HEADER_LEN || n >= buf.len() {
        return None;
    }
    let h = u64::from_le_bytes(buf[..8].try_into().expect("8 bytes"));
    let len = (n - VMI_STREAM_HEADER_LEN) as u64;
    // The header's length must be exactly what was read after it: one frame, no more.
    if h >> 32 != len {
        return None;
    }
    let (flags, len) = crate::lent::takeable(h, stream.max_len.min(max_len as u64), len)?;
    let payload = &buf[VMI_STREAM_HEADER_LEN..VMI_STREAM_HEADER_LEN + len];
    out.clear();
    out.reserve(len);
    // SAFETY: `reserve` made room for `len` bytes, which the copy writes before `set_len`
    // covers them; `payload` has `len` readable ones.
    unsafe {
        crate::copy::copy_small(payload.as_ptr(), out.as_mut_ptr(), len);
        out.set_len(len);
        (*stream.rest).heard += n as u64;
    }
    Some(flags)
}

/// Writes a rest for the transport (and counts the bytes read as heard).
#[cold]
fn leave(stream: &VmiStream, kind: u32, error: i32, off: usize, len: usize) -> Stop {
    // SAFETY: the contract of `read_stream`: the rest is valid.
    let r = unsafe { &mut *stream.rest };
    r.kind = kind;
    r.error = error;
    r.off = off as u64;
    r.len = len as u64;
    r.heard += len as u64;
    Stop::Device
}

/// The frame header a transport writes for a data frame (the 8 bytes [`read_stream`] takes):
/// [`crate::abi::VMI_RING_DATA_END`] when `end`, else [`crate::abi::VMI_RING_DATA`], a zero byte, the
/// filter flags as carried on the wire, the payload length; little-endian.
#[inline]
pub fn frame_header(end: bool, wire_flags: u16, len: u32) -> [u8; VMI_STREAM_HEADER_LEN] {
    crate::lent::data_header(end, wire_flags, len).to_le_bytes()
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    use super::*;
    use crate::abi::{self, VMI_FLAG_END, VMI_FLAG_HOST, VMI_RING_DATA, VMI_RING_DATA_END};

    /// What one host read gave: the frames taken (flags and payload), why it stopped, and
    /// the rest it left.
    type ReadOutcome = (Vec<(u32, Vec<u8>)>, Stop, Option<Rest>);

    /// A stream socket the test writes to as the peer, lent as a transport lends it.
    struct TestStream {
        peer: UnixStream,
        ours: UnixStream,
        buf: Vec<u8>,
        rest: StreamRest,
    }

    impl TestStream {
        fn new(cap: usize) -> TestStream {
            let (peer, ours) = UnixStream::pair().expect("a socket pair");
            ours.set_nonblocking(true).expect("non-blocking");
            TestStream {
                peer,
                ours,
                buf: vec![0; cap],
                rest: StreamRest::default(),
            }
        }

        fn frame(&mut self, kind: u8, wire_flags: u16, payload: &[u8]) {
            let mut h = [0u8; 8];
            h[0] = kind;
            h[2..4].copy_from_slice(&wire_flags.to_le_bytes());
            h[4..8].copy_from_slice(&(payload.len() as u32).to_le_bytes());
            self.peer.write_all(&h).unwrap();
            self.peer.write_all(payload).unwrap();
        }

        /// One host read with `max_records` and a limit of `max_len`: the frames taken (flags
        /// and payload), why it stopped, and the rest left.
        fn read(&mut self, max_records: usize, max_len: u64) -> ReadOutcome {
            let desc = self.desc(max_len);
            let mut out = Batch::default();
            // SAFETY: the socket, buffer and rest live through the call; the rest is empty.
            let (n, stop) = unsafe { read_stream(&desc, max_records, 1 << 20, &mut out) };
            assert_eq!(n, out.records.len());
            let frames = out
                .records
                .iter()
                .map(|r| {
                    assert_eq!(r.conn, 3);
                    (r.flags, out.bytes[r.start..r.start + r.len].to_vec())
                })
                .collect();
            (frames, stop, self.rest.take(self.buf.len()))
        }

        /// The stream as the transport lends it, with a limit of `max_len`.
        fn desc(&mut self, max_len: u64) -> VmiStream {
            VmiStream {
                conn: 3,
                fd: self.ours.as_raw_fd(),
                reserved: 0,
                buf: self.buf.as_mut_ptr(),
                cap: self.buf.len() as u64,
                max_len,
                rest: self.rest.as_ptr(),
            }
        }

        /// One host read, then `take_only_frame` with a limit of `max_len`: the flags and
        /// payload of a frame alone, or the bytes read when it took nothing.
        fn read_only(&mut self, max_len: u64) -> Result<(u32, Vec<u8>), Vec<u8>> {
            let desc = self.desc(max_len);
            // SAFETY: the socket, buffer and rest live through the call; the rest is empty.
            let n = unsafe { read_socket(&desc) }.expect("bytes to read");
            let mut out = vec![0xee; 5];
            // SAFETY: as above; the read brought `n` bytes.
            match unsafe { take_only_frame(&desc, n, 1 << 20, &mut out) } {
                Some(flags) => Ok((flags, out)),
                None => {
                    assert_eq!(out, vec![0xee; 5], "nothing changed");
                    assert!(!self.rest.take_heard(), "nothing counted as heard");
                    Err(self.buf[..n].to_vec())
                }
            }
        }
    }

    #[test]
    fn a_frame_alone_in_its_read_is_taken_whole() {
        let mut s = TestStream::new(64);
        s.frame(VMI_RING_DATA, 0x0102, b"abcdefgh");
        assert_eq!(
            s.read_only(1024),
            Ok((abi::recv_flags(false, 0x0102), b"abcdefgh".to_vec()))
        );
        assert!(s.rest.take_heard(), "the peer was heard");
        assert_eq!(s.rest.take(64), None, "no rest");
        s.frame(VMI_RING_DATA_END, 0, b"");
        assert_eq!(s.read_only(1024), Ok((VMI_FLAG_END, vec![])));
        // Up to the largest that leaves the 64-byte buffer not full.
        s.frame(VMI_RING_DATA_END, 0, &[7; 55]);
        assert_eq!(s.read_only(1024), Ok((VMI_FLAG_END, vec![7; 55])));
    }

    #[test]
    fn anything_but_a_frame_alone_is_left_for_take_frames() {
        let mut s = TestStream::new(64);
        // Two frames; another kind; over the limit; the peer's host's; a header cut; a
        // payload cut; a frame that fills the buffer (more may wait in the socket).
        s.frame(VMI_RING_DATA_END, 0, b"one");
        s.frame(VMI_RING_DATA_END, 0, b"two");
        assert_eq!(s.read_only(1024).map_err(|b| b.len()), Err(22));
        s.frame(3, 0, b"");
        assert!(s.read_only(1024).is_err());
        s.frame(VMI_RING_DATA_END, 0, &[1; 9]);
        assert!(s.read_only(8).is_err());
        s.frame(VMI_RING_DATA_END, abi::wire_flags(VMI_FLAG_HOST), b"host");
        assert!(s.read_only(1024).is_err());
        s.peer.write_all(&[VMI_RING_DATA_END, 0, 0]).unwrap();
        assert!(s.read_only(1024).is_err());
        s.peer
            .write_all(&[VMI_RING_DATA_END, 0, 0, 0, 4, 0, 0, 0, 1, 2])
            .unwrap();
        assert!(s.read_only(1024).is_err());
        s.frame(VMI_RING_DATA_END, 0, &[2; 56]);
        assert_eq!(s.read_only(1024).map_err(|b| b.len()), Err(64));
        // A length of 4 GiB: left, never a read past the buffer.
        s.peer
            .write_all(&[VMI_RING_DATA_END, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 9])
            .unwrap();
        assert!(s.read_only(u64::MAX).is_err());
    }

    #[test]
    fn random_reads_give_a_frame_alone_exactly_when_a_plain_parser_finds_one() {
        // Seeded: one frame (any kind, flags, length, sometimes lying about its length),
        // sometimes followed by random bytes; taken alone exactly when a plain parser finds
        // one whole takeable data frame that is all the read brought, short of the buffer.
        let (seed, mut rnd) = crate::test_rng::seeded(0x10e_f4a3_u64);
        let mut taken = 0;
        for round in 0..1000 {
            let mut s = TestStream::new(128);
            let kind = [VMI_RING_DATA, VMI_RING_DATA_END, 3, 200][rnd(4) as usize];
            let flags = if rnd(8) == 0 { 0x8000 } else { rnd(4) as u16 };
            let len = rnd(130) as usize;
            let claimed = if rnd(10) == 0 {
                rnd(200) as u32
            } else {
                len as u32
            };
            let mut bytes = vec![kind, 0];
            bytes.extend_from_slice(&flags.to_le_bytes());
            bytes.extend_from_slice(&claimed.to_le_bytes());
            bytes.extend((0..len).map(|_| rnd(256) as u8));
            if rnd(5) == 0 {
                bytes.extend((0..1 + rnd(20)).map(|_| rnd(256) as u8));
            }
            bytes.truncate(128);
            s.peer.write_all(&bytes).unwrap();
            let limit = 64;
            let data = kind == VMI_RING_DATA || kind == VMI_RING_DATA_END;
            let host = abi::recv_flags(false, flags) & VMI_FLAG_HOST != 0;
            let alone = data
                && !host
                && claimed as usize <= limit
                && bytes.len() == 8 + claimed as usize
                && bytes.len() < 128;
            let want = alone.then(|| {
                (
                    abi::recv_flags(kind == VMI_RING_DATA_END, flags),
                    bytes[8..].to_vec(),
                )
            });
            let got = s.read_only(limit as u64);
            assert_eq!(got.clone().ok(), want, "seed {seed}, round {round}");
            if let Err(read) = got {
                assert_eq!(
                    read, bytes,
                    "seed {seed}, round {round}: all read, none taken"
                );
            }
            taken += usize::from(alone);
        }
        assert!(
            (100..900).contains(&taken),
            "seed {seed}: {taken} of 1000 alone"
        );
    }

    #[test]
    fn whole_frames_are_taken_and_an_empty_socket_leaves_nothing() {
        let mut s = TestStream::new(4096);
        assert_eq!(s.read(64, 1024), (vec![], Stop::Empty, None));
        s.frame(VMI_RING_DATA, 0x0102, b"abc");
        s.frame(VMI_RING_DATA_END, 0, b"");
        s.frame(VMI_RING_DATA_END, 7, b"xyz!");
        let (frames, stop, rest) = s.read(64, 1024);
        assert_eq!(
            frames,
            vec![
                (abi::recv_flags(false, 0x0102), b"abc".to_vec()),
                (VMI_FLAG_END, vec![]),
                (abi::recv_flags(true, 7), b"xyz!".to_vec()),
            ]
        );
        assert_eq!((stop, rest), (Stop::Empty, None));
        assert!(s.rest.take_heard(), "the peer was heard");
    }

    #[test]
    fn the_first_frame_not_taken_and_all_after_it_are_left_to_the_transport() {
        // Each case: the frames written, the limit; how many are taken before the rest.
        let mut s = TestStream::new(4096);
        // Another kind (a heartbeat) stops the taking; what follows it is left too.
        s.frame(VMI_RING_DATA_END, 0, b"one");
        s.frame(3, 0, b"");
        s.frame(VMI_RING_DATA_END, 0, b"two");
        let (frames, stop, rest) = s.read(64, 1024);
        assert_eq!(frames.len(), 1);
        assert_eq!(stop, Stop::Device);
        assert_eq!(rest, Some(Rest::Bytes { off: 11, len: 30 }));

        // Over the limit, or of the peer's host: left.
        s.frame(VMI_RING_DATA_END, 0, &[1; 65]);
        assert_eq!(s.read(64, 64).2, Some(Rest::Bytes { off: 0, len: 73 }));
        s.frame(VMI_RING_DATA_END, abi::wire_flags(VMI_FLAG_HOST), b"host");
        assert_eq!(s.read(64, 64).2, Some(Rest::Bytes { off: 0, len: 12 }));
        // A length no read could hold (u32::MAX): left, nothing read past the buffer.
        s.peer
            .write_all(&[VMI_RING_DATA_END, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 9])
            .unwrap();
        assert_eq!(s.read(64, u64::MAX).2, Some(Rest::Bytes { off: 0, len: 9 }));
        // A header cut by the end of the read, and a payload cut.
        s.frame(VMI_RING_DATA_END, 0, b"whole");
        s.peer.write_all(&[VMI_RING_DATA_END, 0, 0]).unwrap();
        let (frames, _, rest) = s.read(64, 64);
        assert_eq!(frames.len(), 1);
        assert_eq!(rest, Some(Rest::Bytes { off: 13, len: 16 }));
        s.peer
            .write_all(&[VMI_RING_DATA_END, 0, 0, 0, 4, 0, 0, 0, 1, 2])
            .unwrap();
        assert_eq!(s.read(64, 64).2, Some(Rest::Bytes { off: 0, len: 10 }));
    }

    #[test]
    fn the_budget_a_full_buffer_the_end_and_an_error_are_the_transports() {
        let mut s = TestStream::new(32);
        // No budget: nothing is read.
        s.frame(VMI_RING_DATA_END, 0, b"12345678");
        assert_eq!(s.read(0, 64), (vec![], Stop::Budget, None));
        // The budget runs out after one frame: the second is left.
        s.frame(VMI_RING_DATA_END, 0, b"abcdefgh");
        let (frames, stop, rest) = s.read(1, 64);
        assert_eq!((frames.len(), stop), (1, Stop::Device));
        assert_eq!(rest, Some(Rest::Bytes { off: 16, len: 32 }));
        // Two whole frames fill the 32-byte buffer exactly: both taken, and the transport
        // is told the read was full (more may wait).
        s.frame(VMI_RING_DATA_END, 0, b"12345678");
        s.frame(VMI_RING_DATA_END, 0, b"abcdefgh");
        let (frames, stop, rest) = s.read(64, 64);
        assert_eq!((frames.len(), stop), (2, Stop::Device));
        assert_eq!(rest, Some(Rest::Bytes { off: 32, len: 32 }));
        // The peer's end.
        drop(std::mem::replace(
            &mut s.peer,
            UnixStream::pair().unwrap().0,
        ));
        assert_eq!(s.read(64, 64), (vec![], Stop::Device, Some(Rest::End)));
        // An error: a descriptor that is not open.
        let mut out = Batch::default();
        let rest = StreamRest::default();
        let mut buf = [0u8; 16];
        let desc = VmiStream {
            conn: 1,
            fd: i32::MAX,
            reserved: 0,
            buf: buf.as_mut_ptr(),
            cap: 16,
            max_len: 64,
            rest: rest.as_ptr(),
        };
        // SAFETY: the buffer and the rest live through the call; a bad descriptor only
        // makes `read` fail.
        let got = unsafe { read_stream(&desc, 64, 64, &mut out) };
        assert_eq!(got, (0, Stop::Device));
        assert_eq!(rest.take(16), Some(Rest::Error(libc::EBADF)));
    }

    #[test]
    fn random_bytes_are_taken_exactly_up_to_the_first_frame_the_host_must_leave() {
        // Seeded: random frames of every kind and length (some lying about their length),
        // or plain random bytes, written at once; one host read must take exactly the whole
        // data frames a plain parser finds before the first other thing, and leave the rest
        // at exactly that offset, never reading past what was read.
        let (seed, mut rnd) = crate::test_rng::seeded(0x57_2ea5_u64);
        for round in 0..300 {
            let mut s = TestStream::new(512);
            let mut bytes = Vec::new();
            while bytes.len() < 400 {
                if rnd(20) == 0 {
                    bytes.extend((0..rnd(16)).map(|_| rnd(256) as u8));
                    continue;
                }
                let kind = [VMI_RING_DATA, VMI_RING_DATA_END, 3, 0, 200][rnd(5) as usize];
                let len = rnd(70) as u32;
                let claimed = if rnd(15) == 0 {
                    rnd(u32::MAX as u64) as u32
                } else {
                    len
                };
                let flags = if rnd(10) == 0 { 0x8000 } else { rnd(4) as u16 };
                bytes.push(kind);
                bytes.push(rnd(256) as u8);
                bytes.extend_from_slice(&flags.to_le_bytes());
                bytes.extend_from_slice(&claimed.to_le_bytes());
                bytes.extend((0..len).map(|_| rnd(256) as u8));
            }
            bytes.truncate(400);
            s.peer.write_all(&bytes).unwrap();
            // The plain parser.
            let (limit, budget) = (48u64, 1 + rnd(40) as usize);
            let mut expect = Vec::new();
            let mut at = 0;
            while expect.len() < budget && bytes.len() - at >= 8 {
                let h: [u8; 8] = bytes[at..at + 8].try_into().unwrap();
                let flags = u16::from_le_bytes([h[2], h[3]]);
                let len = u32::from_le_bytes(h[4..8].try_into().unwrap()) as usize;
                let data = h[0] == VMI_RING_DATA || h[0] == VMI_RING_DATA_END;
                let host = abi::recv_flags(false, flags) & VMI_FLAG_HOST != 0;
                if !data || host || len as u64 > limit || bytes.len() - at - 8 < len {
                    break;
                }
                expect.push((
                    abi::recv_flags(h[0] == VMI_RING_DATA_END, flags),
                    bytes[at + 8..at + 8 + len].to_vec(),
                ));
                at += 8 + len;
            }
            let (frames, stop, rest) = s.read(budget, limit);
            assert_eq!(frames, expect, "seed {seed}, round {round}");
            if at == bytes.len() {
                assert_eq!(
                    (stop, rest),
                    (Stop::Empty, None),
                    "seed {seed}, round {round}"
                );
            } else {
                assert_eq!(stop, Stop::Device, "seed {seed}, round {round}");
                assert_eq!(
                    rest,
                    Some(Rest::Bytes {
                        off: at,
                        len: bytes.len()
                    }),
                    "seed {seed}, round {round}"
                );
            }
        }
    }
}
