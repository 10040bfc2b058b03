//! # vmi-async
//!
//! An async facade over vmi for tokio: `connect(..).await`, `send(..).await`, a stream of
//! received messages, and send/receive/reply with `request(..).await`. One driver task polls
//! the [`Vmi`] and, when it has nothing to do, sleeps on [`Vmi::event_fd`] through tokio's
//! [`AsyncFd`] (after [`Vmi::arm`]), so an idle process uses no CPU
//! and vmi shares the thread with the application's other tasks.
//!
//! A `Vmi` is driven by one thread, so the facade runs on a current-thread runtime inside a
//! [`tokio::task::LocalSet`]:
//!
//! ```no_run
//! # async fn demo() -> Result<(), vmi_async::Error> {
//! use vmi_async::AsyncVmi;
//! let vmi = vmi_core::Vmi::init(Some("client"))?;
//! let vmi = AsyncVmi::start(vmi)?;
//! let conn = vmi.connect("localhost", "server", b"").await?;
//! vmi.send(conn, b"hello".to_vec()).await?;
//! let answer = vmi.request(conn, b"ping", &Default::default()).await?;
//! let reply = vmi.recv(conn).await?;
//! # let _ = (answer, reply); Ok(()) }
//! ```
//!
//! Received messages are held where vmi lends them until read, so a reader that falls
//! behind pushes back on its senders (the process's receive limit) instead of growing.
#![deny(unsafe_code)]

mod error;
mod router;

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::sync::{Notify, oneshot};
use vmi_core::prelude::*;
use vmi_core::{Arm, Pulse};

pub use error::Error;
pub use router::IncomingRequest;
use router::Router;

/// The `Vmi` and its handler, borrowed only between awaits.
struct State {
    vmi: Vmi,
    router: Router,
}

struct Shared {
    state: RefCell<State>,
    /// Wakes the driver after an operation of the application (it may have queued work).
    kick: Notify,
    /// Wakes futures waiting on queues (messages, accepts, requests, pulses, closes).
    events: Notify,
    /// The last handle is gone: the driver stops.
    stopped: Cell<bool>,
}

/// The facade: a cheap handle (clone it freely) to one `Vmi` driven by a local task.
#[derive(Clone)]
pub struct AsyncVmi {
    shared: Rc<Shared>,
    _owner: Rc<Owner>,
}

/// Stops the driver when the last [`AsyncVmi`] handle goes.
struct Owner(Rc<Shared>);

impl Drop for Owner {
    fn drop(&mut self) {
        self.0.stopped.set(true);
        self.0.kick.notify_one();
    }
}

impl AsyncVmi {
    /// Starts the facade over `vmi`: spawns its driver with [`tokio::task::spawn_local`],
    /// so call it inside a [`tokio::task::LocalSet`] on a runtime with I/O and time
    /// enabled.
    pub fn start(mut vmi: Vmi) -> Result<AsyncVmi, Error> {
        let fail = |e: std::io::Error| Error::Failed {
            status: Status::NoResources,
            detail: format!("cannot register vmi's event descriptor with tokio: {e}"),
        };
        // A descriptor of our own for the same epoll instance: tokio owns it for as long
        // as it watches it.
        let fd = vmi.event_fd()?.try_clone_to_owned().map_err(fail)?;
        #[allow(unsafe_code)]
        // SAFETY: the AsyncFd owns `fd` (an OwnedFd): it stays open, and `as_raw_fd` returns
        // the same number, for the AsyncFd's whole life.
        let fd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
            .map_err(|e| fail(e.into()))?;
        let shared = Rc::new(Shared {
            state: RefCell::new(State {
                vmi,
                router: Router::default(),
            }),
            kick: Notify::new(),
            events: Notify::new(),
            stopped: Cell::new(false),
        });
        tokio::task::spawn_local(drive(shared.clone(), fd));
        Ok(AsyncVmi {
            _owner: Rc::new(Owner(shared.clone())),
            shared,
        })
    }

    /// Runs `f` on the `Vmi` (for what the facade does not wrap: attributes, the
    /// connection's latency, `send_inline`…), then wakes the driver.
    pub fn with_vmi<T>(&self, f: impl FnOnce(&mut Vmi) -> T) -> T {
        let r = f(&mut self.shared.state.borrow_mut().vmi);
        self.shared.kick.notify_one();
        r
    }

    /// Waits until `check` finds what it looks for in the handler's state.
    async fn wait_for<T>(&self, mut check: impl FnMut(&mut Router) -> Option<T>) -> T {
        loop {
            let notified = self.shared.events.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(v) = check(&mut self.shared.state.borrow_mut().router) {
                return v;
            }
            notified.await;
        }
    }

    /// Awaits an answer a callback sends on `rx`.
    async fn answer<T>(&self, rx: oneshot::Receiver<Result<T, Error>>) -> Result<T, Error> {
        rx.await.unwrap_or(Err(Error::Stopped))
    }

    /// Opens a connection (VMI 2.1 `VMI_Connection_Issue`) and waits until the peer
    /// accepts it.
    pub async fn connect(&self, host: &str, key: &str, data: &[u8]) -> Result<ConnId, Error> {
        let rx = {
            let mut st = self.shared.state.borrow_mut();
            let token = st.router.token();
            let (tx, rx) = oneshot::channel();
            st.router.connects.insert(token, tx);
            if let Err(e) = st.vmi.connect(host, key, data, token) {
                st.router.connects.remove(&token);
                return Err(e.into());
            }
            rx
        };
        self.shared.kick.notify_one();
        self.answer(rx).await
    }

    /// Waits for the next connection a peer opened (every one is accepted).
    pub async fn accept(&self) -> ConnId {
        self.wait_for(|r| r.accepted.pop_front()).await
    }

    /// Sends a message and waits until the transport finished with it (VMI 2.1
    /// `VMI_Stream_Send`). Waits for room when the process has the most sends in flight.
    pub async fn send(&self, conn: ConnId, data: Vec<u8>) -> Result<(), Error> {
        let mut data = Some(data);
        let rx = loop {
            let room = {
                let mut st = self.shared.state.borrow_mut();
                if st.vmi.sends_available() > 0 {
                    let token = st.router.token();
                    let (tx, rx) = oneshot::channel();
                    st.router.sends.insert(token, tx);
                    let buffer = Buffer::from_vec(data.take().unwrap_or_default());
                    if let Err(e) = st.vmi.send(conn, [buffer], token) {
                        st.router.sends.remove(&token);
                        return Err(e.into());
                    }
                    Some(rx)
                } else {
                    None
                }
            };
            if let Some(rx) = room {
                break rx;
            }
            // Completions free room; they come through the driver.
            self.shared.kick.notify_one();
            tokio::task::yield_now().await;
        };
        self.shared.kick.notify_one();
        self.answer(rx).await
    }

    /// Waits for the next whole message on `conn` (VMI 2.1's stream notifications, joined).
    /// [`Error::Closed`] once the connection ended and every message was read.
    pub async fn recv(&self, conn: ConnId) -> Result<Vec<u8>, Error> {
        let m = self
            .wait_for(|r| {
                let q = r.conns.get_mut(&conn)?;
                match q.messages.pop_front() {
                    Some(m) => Some(Ok(m)),
                    None => q.closed.clone().map(Err),
                }
            })
            .await;
        self.shared.kick.notify_one();
        m.map(router::Message::into_bytes).map_err(Error::Closed)
    }

    /// The messages of `conn` as a stream; it ends when the connection does.
    pub fn messages(&self, conn: ConnId) -> Messages {
        Messages {
            vmi: self.clone(),
            conn,
            next: None,
        }
    }

    /// Sends a request and waits for its answer (QNX `MsgSend`): the server's reply or
    /// error code; a timeout, a cancel or a lost connection is [`Error::Failed`]. Dropping
    /// the future (for example under `tokio::time::timeout`) cancels the request: the
    /// server is told to forget it.
    pub async fn request(
        &self,
        conn: ConnId,
        data: &[u8],
        options: &RequestOptions,
    ) -> Result<Answer, Error> {
        let (rx, id) = {
            let mut st = self.shared.state.borrow_mut();
            let token = st.router.token();
            let (tx, rx) = oneshot::channel();
            st.router.requests.insert(token, tx);
            match st.vmi.request(conn, &[data], options, token) {
                Ok(id) => (rx, id),
                Err(e) => {
                    st.router.requests.remove(&token);
                    return Err(e.into());
                }
            }
        };
        self.shared.kick.notify_one();
        let mut pending = Pending {
            vmi: self,
            id: Some(id),
        };
        let answer = self.answer(rx).await;
        pending.id = None;
        answer
    }

    /// Waits for the next request to serve (QNX `MsgReceive`).
    pub async fn next_request(&self) -> IncomingRequest {
        self.wait_for(|r| r.served.pop_front()).await
    }

    /// Answers a request with a status value and data (QNX `MsgReply`).
    pub fn reply(&self, id: ReceiveId, status: i32, data: &[u8]) -> Result<(), Error> {
        self.with_vmi(|v| v.reply(id, status, &[data]))
            .map_err(Error::from)
    }

    /// Answers a request with an error code (QNX `MsgError`).
    pub fn reply_error(&self, id: ReceiveId, code: i32) -> Result<(), Error> {
        self.with_vmi(|v| v.reply_error(id, code))
            .map_err(Error::from)
    }

    /// Sends a pulse (QNX `MsgSendPulse`).
    pub fn pulse(&self, conn: ConnId, pulse: Pulse) -> Result<(), Error> {
        self.with_vmi(|v| v.pulse(conn, pulse)).map_err(Error::from)
    }

    /// Waits for the next pulse, with its connection.
    pub async fn next_pulse(&self) -> (ConnId, Pulse) {
        self.wait_for(|r| r.pulses.pop_front()).await
    }

    /// Closes a connection in order and waits until it is closed.
    pub async fn disconnect(&self, conn: ConnId) -> Result<(), Error> {
        self.with_vmi(|v| v.disconnect(conn))?;
        self.wait_for(|r| r.conns.get(&conn).and_then(|q| q.closed.clone()))
            .await;
        Ok(())
    }
}

/// Cancels a request whose future was dropped before its answer came.
struct Pending<'a> {
    vmi: &'a AsyncVmi,
    id: Option<vmi_core::RequestId>,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        let Some(id) = self.id.take() else {
            return;
        };
        // The answer (Cancelled) goes to a receiver that is gone: nothing waits for it.
        match self.vmi.shared.state.try_borrow_mut() {
            Ok(mut st) => {
                st.vmi.request_cancel(id);
                drop(st);
                self.vmi.shared.kick.notify_one();
            }
            // Dropped while the facade's state is in use (never between awaits): the
            // request's own deadline ends it.
            Err(_) => log::debug!("a dropped request could not be cancelled now"),
        }
    }
}

/// The messages of one connection ([`AsyncVmi::messages`]), as a
/// [`futures_core::Stream`].
pub struct Messages {
    vmi: AsyncVmi,
    conn: ConnId,
    next: Option<NextMessage>,
}

/// The `recv` a [`Messages`] stream waits on.
type NextMessage = Pin<Box<dyn Future<Output = Result<Vec<u8>, Error>>>>;

impl futures_core::Stream for Messages {
    type Item = Vec<u8>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Vec<u8>>> {
        let this = &mut *self;
        let next = this.next.get_or_insert_with(|| {
            let (vmi, conn) = (this.vmi.clone(), this.conn);
            Box::pin(async move { vmi.recv(conn).await })
        });
        match next.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(r) => {
                this.next = None;
                Poll::Ready(r.ok())
            }
        }
    }
}

/// Idle polls before the driver sleeps.
const IDLE_SPINS: u32 = 16;

/// The driver: polls the `Vmi` while it has work, then sleeps on its event descriptor (or
/// until its timer, or an operation of the application) and polls again.
async fn drive(shared: Rc<Shared>, fd: AsyncFd<OwnedFd>) {
    // Polls in a row that found nothing: a few are spent yielding to the other tasks (an
    // answer often comes within them) before sleeping, which costs system calls.
    let mut idle = 0;
    while !shared.stopped.get() {
        let (armed, changed) = {
            let mut st = shared.state.borrow_mut();
            let State { vmi, router } = &mut *st;
            // Bounded, so the application's other tasks run under a flood; and over as soon
            // as something came in for them, so they get it without another poll first (a
            // poll that finds nothing costs about 90 instructions, callgrind).
            let mut events = 0;
            for _ in 0..64 {
                let n = vmi.poll(router);
                events += n;
                if n == 0 || router.changed {
                    break;
                }
            }
            idle = if events > 0 { 0 } else { idle + 1 };
            let changed = std::mem::take(&mut router.changed);
            let armed = if idle <= IDLE_SPINS {
                Ok(Arm::Busy)
            } else {
                vmi.arm()
            };
            (armed, changed)
        };
        if changed {
            shared.events.notify_waiters();
        }
        match armed {
            Ok(Arm::Busy) => tokio::task::yield_now().await,
            // A timer only when vmi needs one: making one per sleep costs more than the rest.
            Ok(Arm::Sleep { timeout: None }) => {
                tokio::select! {
                    ready = fd.readable() => {
                        if let Ok(mut guard) = ready {
                            guard.clear_ready();
                        }
                    }
                    () = shared.kick.notified() => {}
                }
            }
            Ok(Arm::Sleep { timeout: Some(nap) }) => {
                tokio::select! {
                    ready = fd.readable() => {
                        if let Ok(mut guard) = ready {
                            guard.clear_ready();
                        }
                    }
                    () = tokio::time::sleep(nap) => {}
                    () = shared.kick.notified() => {}
                }
            }
            Err(e) => {
                log::error!(
                    "vmi-async: cannot arm the event descriptor ({e}); polling every millisecond"
                );
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
    drop(fd);
}
