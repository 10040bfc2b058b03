//! What callbacks may do (VMI 2.1 allowed sends from notification functions; here they are
//! queued and run after the callback returns, so devices are never re-entered), and the
//! preparation of operations shared by [`crate::Vmi`] and [`Ctx`].
#![allow(unsafe_code)]

use std::collections::VecDeque;

use crate::abi::{VMI_FLAG_END, VMI_IRB_MAX_SEGS, VMI_OP_CONNECT, VMI_OP_DISCONNECT, VMI_OP_SEND};
use crate::assembly;
use crate::buffer::Buffer;
use crate::conn::{ConnId, ConnState};
use crate::engine::Engine;
use crate::error::VmiError;
use crate::irb::{IrbSlot, Purpose};
use crate::vmi::MAX_CONNECT_DATA;

/// An open stream on a connection (VMI 2.1: a stream begun with `VMI_Stream_Begin`-style
/// fragment sends).
#[derive(Debug)]
#[must_use = "a stream must be ended with stream_end"]
pub struct Stream {
    pub(crate) conn: ConnId,
}

impl Stream {
    /// The connection.
    pub fn conn(&self) -> ConnId {
        self.conn
    }
}

/// Things callbacks may do; they run after the callback returns (no re-entrancy into devices).
pub struct Ctx<'a> {
    pub(crate) engine: &'a mut Engine,
    pub(crate) deferred: &'a mut VecDeque<*mut IrbSlot>,
}

impl Ctx<'_> {
    /// Queues a connect; see [`crate::Vmi::connect`]. Transport selection happens when it runs.
    pub fn connect(
        &mut self,
        host: &str,
        key: &str,
        data: &[u8],
        token: u64,
    ) -> Result<ConnId, VmiError> {
        let (conn, s) = prepare_connect(self.engine, host, key, data, token, None)?;
        self.deferred.push_back(s);
        Ok(conn)
    }

    /// Queues a disconnect; see [`crate::Vmi::disconnect`].
    pub fn disconnect(&mut self, conn: ConnId) -> Result<(), VmiError> {
        let s = prepare_disconnect(self.engine, conn)?;
        self.deferred.push_back(s);
        Ok(())
    }

    /// Queues a gather send; see [`crate::Vmi::send`].
    pub fn send(
        &mut self,
        conn: ConnId,
        buffers: impl IntoIterator<Item = Buffer>,
        token: u64,
    ) -> Result<(), VmiError> {
        let s = prepare_send(self.engine, conn, buffers, token, SendKind::Whole)?;
        self.deferred.push_back(s);
        Ok(())
    }

    /// Queues an inline send; see [`crate::Vmi::send_inline`].
    pub fn send_inline(&mut self, conn: ConnId, data: &[u8]) -> Result<(), VmiError> {
        let b = self.engine.inline.take(data);
        let s = prepare_send(self.engine, conn, Some(b), 0, SendKind::Whole)?;
        self.deferred.push_back(s);
        Ok(())
    }

    /// Begins a stream; see [`crate::Vmi::stream_begin`].
    pub fn stream_begin(&mut self, conn: ConnId) -> Result<Stream, VmiError> {
        stream_begin(self.engine, conn)
    }

    /// Queues a fragment; see [`crate::Vmi::stream_send`].
    pub fn stream_send(
        &mut self,
        stream: &Stream,
        buffers: impl IntoIterator<Item = Buffer>,
        token: u64,
    ) -> Result<(), VmiError> {
        let s = prepare_send(self.engine, stream.conn, buffers, token, SendKind::Fragment)?;
        self.deferred.push_back(s);
        Ok(())
    }

    /// Queues the last fragment; see [`crate::Vmi::stream_end`].
    pub fn stream_end(
        &mut self,
        stream: Stream,
        buffers: impl IntoIterator<Item = Buffer>,
        token: u64,
    ) -> Result<(), VmiError> {
        let s = prepare_send(self.engine, stream.conn, buffers, token, SendKind::End)?;
        self.deferred.push_back(s);
        Ok(())
    }

    /// The peer's key for a connection.
    pub fn peer_key(&self, conn: ConnId) -> Option<String> {
        self.engine
            .shared
            .conns
            .borrow()
            .get(conn)
            .map(|e| e.peer_key.clone())
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum SendKind {
    Whole,
    Fragment,
    End,
}

pub(crate) fn state_words(s: ConnState) -> &'static str {
    match s {
        ConnState::Connecting => "still connecting",
        ConnState::Incoming => "waiting for the accept handler",
        ConnState::Open => "open",
        ConnState::Closing => "closing",
    }
}

pub(crate) fn stream_begin(engine: &mut Engine, conn: ConnId) -> Result<Stream, VmiError> {
    let mut conns = engine.shared.conns.borrow_mut();
    let e = conns
        .get_mut(conn)
        .ok_or(VmiError::UnknownConnection(conn))?;
    if e.state != ConnState::Open {
        return Err(VmiError::NotOpen {
            conn,
            state: state_words(e.state),
        });
    }
    if e.stream_open {
        return Err(VmiError::StreamBusy(conn));
    }
    e.stream_open = true;
    Ok(Stream { conn })
}

pub(crate) fn prepare_send(
    engine: &mut Engine,
    conn: ConnId,
    buffers: impl IntoIterator<Item = Buffer>,
    token: u64,
    kind: SendKind,
) -> Result<*mut IrbSlot, VmiError> {
    let transport = {
        let mut conns = engine.shared.conns.borrow_mut();
        let e = conns
            .get_mut(conn)
            .ok_or(VmiError::UnknownConnection(conn))?;
        if e.state != ConnState::Open {
            return Err(VmiError::NotOpen {
                conn,
                state: state_words(e.state),
            });
        }
        match kind {
            SendKind::Whole if e.stream_open => return Err(VmiError::StreamBusy(conn)),
            SendKind::Fragment | SendKind::End if !e.stream_open => {
                return Err(VmiError::StreamClosed(conn));
            }
            _ => {}
        }
        e.transport
    };
    let max = engine.top_caps().max_fragment;
    let s = engine.new_slot();
    // SAFETY: fresh slot owned by the engine.
    let slot = unsafe { &mut *s };
    let mut total: u64 = 0;
    for b in buffers {
        if slot.bufs.len() == VMI_IRB_MAX_SEGS {
            let given = slot.bufs.len() + 1;
            engine.free_slot(s);
            return Err(VmiError::TooManyBuffers {
                given,
                max: VMI_IRB_MAX_SEGS,
            });
        }
        total += b.len() as u64;
        slot.bufs.push(b);
    }
    if max > 0 && total > max {
        engine.free_slot(s);
        return Err(VmiError::FragmentTooLarge { len: total, max });
    }
    for i in 0..slot.bufs.len() {
        let (p, l) = (slot.bufs[i].as_ptr() as *mut u8, slot.bufs[i].len());
        slot.push_seg(p, l);
    }
    slot.abi.op = VMI_OP_SEND;
    slot.abi.conn = conn.raw();
    slot.abi.flags = if kind == SendKind::Fragment {
        0
    } else {
        VMI_FLAG_END
    };
    slot.purpose = Purpose::Send;
    slot.transport = transport as u8;
    slot.token = token;
    if kind == SendKind::End {
        if let Some(e) = engine.shared.conns.borrow_mut().get_mut(conn) {
            e.stream_open = false;
        }
    }
    Ok(s)
}

pub(crate) fn prepare_connect(
    engine: &mut Engine,
    host: &str,
    key: &str,
    data: &[u8],
    token: u64,
    transport: Option<usize>,
) -> Result<(ConnId, *mut IrbSlot), VmiError> {
    let caps = engine.top_caps();
    let max = if caps.max_connect_data > 0 {
        (caps.max_connect_data as usize).min(MAX_CONNECT_DATA)
    } else {
        MAX_CONNECT_DATA
    };
    if data.len() > max {
        return Err(VmiError::ConnectDataTooLarge {
            len: data.len(),
            max,
        });
    }
    assembly::check_key(key)?;
    let conn = engine
        .shared
        .conns
        .borrow_mut()
        .alloc(transport.unwrap_or(0), ConnState::Connecting);
    {
        let mut conns = engine.shared.conns.borrow_mut();
        let e = conns.get_mut(conn).expect("just allocated");
        e.peer_host = host.to_string();
        e.peer_key = key.to_string();
    }
    let s = engine.new_slot();
    // SAFETY: fresh slot owned by the engine.
    let slot = unsafe { &mut *s };
    slot.abi.op = VMI_OP_CONNECT;
    slot.abi.conn = conn.raw();
    slot.purpose = Purpose::Connect;
    slot.transport = transport.map_or(u8::MAX, |t| t as u8);
    slot.token = token;
    slot.peer_host = host.to_string();
    slot.peer_key = key.to_string();
    slot.sync_peer();
    let copy = data.to_vec();
    let (p, l) = (copy.as_ptr() as *mut u8, copy.len());
    slot.attached.push(copy);
    slot.push_seg(p, l);
    Ok((conn, s))
}

pub(crate) fn prepare_disconnect(
    engine: &mut Engine,
    conn: ConnId,
) -> Result<*mut IrbSlot, VmiError> {
    let transport = {
        let mut conns = engine.shared.conns.borrow_mut();
        let e = conns
            .get_mut(conn)
            .ok_or(VmiError::UnknownConnection(conn))?;
        if e.state == ConnState::Closing {
            return Err(VmiError::NotOpen {
                conn,
                state: state_words(e.state),
            });
        }
        e.state = ConnState::Closing;
        e.transport
    };
    let s = engine.new_slot();
    // SAFETY: fresh slot owned by the engine.
    let slot = unsafe { &mut *s };
    slot.abi.op = VMI_OP_DISCONNECT;
    slot.abi.conn = conn.raw();
    slot.purpose = Purpose::Disconnect;
    slot.transport = transport as u8;
    Ok(s)
}
