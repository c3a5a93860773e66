//! The parking lot of a worker thread: its parked plain HTTP/1 connections (`park`), one
//! record each in a table, their sockets in an epoll set of the lot's own that tokio
//! watches as one descriptor. A parked connection so has no task, no timer and no tokio
//! registration: its record is all it costs. One task per worker serves the lot: a socket
//! that turns readable (the client sent, or closed) leaves it to be served in a task of its
//! own, a deadline that passed closes its connection (looked for at most every
//! `SWEEP_EVERY`), and a drain is noted on every record (a stop closes them after a short
//! wait for a request, as `serve_h1` says).
// tokio's safe ways to watch a descriptor (`AsyncFd::new`) are deprecated as unsound; their
// replacement is `unsafe`, with the descriptor's owner vouching for it.
#![allow(unsafe_code)]

use std::cell::RefCell;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rustix::event::epoll::{self, CreateFlags, Event, EventData, EventFlags};
use rustix::event::Timespec;
use tokio::io::unix::AsyncFd;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use super::park::Parked;
use crate::server::Drain;

/// Deadlines are looked for at most this often (a connection closes at most this late).
const SWEEP_EVERY: Duration = Duration::from_millis(100);
/// Ready sockets taken per `epoll_wait`.
const EVENTS: usize = 64;

thread_local! {
    /// This worker thread's lot, made (with its task) on its first park.
    static LOT: RefCell<Option<Arc<Lot>>> = const { RefCell::new(None) };
}

/// Park `p` in this thread's lot; `Some(p)` back if there is none (no epoll).
pub(super) fn park(p: Parked) -> Option<Parked> {
    let lot = LOT.with_borrow_mut(|lot| {
        if lot.is_none() {
            match Lot::start() {
                Ok(made) => *lot = Some(made),
                Err(e) => tracing::warn!(error = %e, "no parking lot for idle connections"),
            }
        }
        lot.clone()
    });
    match lot {
        Some(lot) => {
            lot.add(p);
            None
        }
        None => Some(p),
    }
}

struct Lot {
    epoll: AsyncFd<OwnedFd>,
    state: Mutex<State>,
    /// Tells the lot's task to look at the state again (an earlier deadline, a first
    /// drain receiver).
    changed: Notify,
}

#[derive(Default)]
struct State {
    /// Records by their index in the epoll set.
    slots: Vec<Option<Parked>>,
    free: Vec<usize>,
    used: usize,
    /// No record's deadline is earlier.
    earliest: Option<Instant>,
    /// Where the drains of the connections parked here are announced.
    shutdown: Option<watch::Receiver<Drain>>,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

impl Lot {
    fn start() -> io::Result<Arc<Lot>> {
        let epoll = epoll::create(CreateFlags::CLOEXEC)?;
        // SAFETY: an `OwnedFd` is open and names the same epoll instance until the
        // `AsyncFd` that owns it is dropped.
        let epoll =
            unsafe { AsyncFd::register_with_interest(epoll, tokio::io::Interest::READABLE) }?;
        let lot = Arc::new(Lot {
            epoll,
            state: Mutex::new(State::default()),
            changed: Notify::new(),
        });
        tokio::spawn(run(lot.clone()));
        Ok(lot)
    }

    fn add(&self, p: Parked) {
        let mut st = lock(&self.state);
        let index = st.free.pop().unwrap_or(st.slots.len());
        let flags = EventFlags::IN | EventFlags::RDHUP;
        if let Err(e) = epoll::add(
            self.epoll.get_ref(),
            &p.stream,
            EventData::new_u64(index as u64),
            flags,
        ) {
            st.free.push(index);
            return tracing::debug!(error = %e, "cannot park a connection: closed");
        }
        let mut tell = st.earliest.is_none_or(|at| p.deadline < at);
        if tell {
            st.earliest = Some(p.deadline);
        }
        if st.shutdown.is_none() {
            st.shutdown = Some(p.shutdown.clone());
            tell = true;
        }
        if index == st.slots.len() {
            st.slots.push(Some(p));
        } else {
            st.slots[index] = Some(p);
        }
        st.used += 1;
        drop(st);
        if tell {
            self.changed.notify_one();
        }
    }

    /// Take the record at `index` out of the lot.
    fn take(&self, st: &mut State, index: usize) -> Option<Parked> {
        let p = st.slots.get_mut(index)?.take()?;
        let _ = epoll::delete(self.epoll.get_ref(), &p.stream);
        st.free.push(index);
        st.used -= 1;
        if st.used == 0 {
            // Give the table's memory back.
            st.slots = Vec::new();
            st.free = Vec::new();
            st.earliest = None;
        }
        Some(p)
    }

    /// Serve the connections whose sockets turned readable; how many there were.
    fn wake_ready(&self) -> io::Result<usize> {
        let mut events = [MaybeUninit::<Event>::uninit(); EVENTS];
        let zero = Timespec::default();
        let (ready, _) = epoll::wait(self.epoll.get_ref(), &mut events, Some(&zero))?;
        let n = ready.len();
        let mut st = lock(&self.state);
        for event in ready.iter() {
            let Some(p) = self.take(&mut st, { event.data }.u64() as usize) else {
                continue;
            };
            // The client closed (or the socket failed) with nothing sent: closed here,
            // without a task to find it out.
            let (flags, ended) = (
                { event.flags },
                EventFlags::RDHUP | EventFlags::HUP | EventFlags::ERR,
            );
            if flags.intersects(ended) && !matches!(p.stream.peek(&mut [0u8]), Ok(1)) {
                continue;
            }
            tokio::spawn(p.serve());
        }
        Ok(n)
    }

    /// Close the connections whose deadline passed; note a drain that began.
    fn sweep(&self, drain: Option<Drain>) {
        let now = Instant::now();
        let mut st = lock(&self.state);
        let mut earliest: Option<Instant> = None;
        for index in 0..st.slots.len() {
            let Some(p) = st.slots[index].as_mut() else {
                continue;
            };
            if let Some(d) = drain {
                p.drain(d);
            }
            if p.deadline <= now {
                drop(self.take(&mut st, index));
                if st.used == 0 {
                    break;
                }
            } else {
                earliest = Some(earliest.map_or(p.deadline, |at| at.min(p.deadline)));
            }
        }
        st.earliest = earliest;
    }
}

/// The lot's task: wakes, closes and drains its connections.
async fn run(lot: Arc<Lot>) {
    let mut shutdown: Option<watch::Receiver<Drain>> = None;
    let sleep = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(sleep);
    let mut last_sweep = Instant::now();
    loop {
        let earliest = {
            let st = lock(&lot.state);
            if shutdown.is_none() {
                shutdown = st.shutdown.clone();
            }
            st.earliest
        };
        if let Some(at) = earliest {
            sleep.as_mut().reset(at.max(last_sweep + SWEEP_EVERY));
        }
        tokio::select! {
            ready = lot.epoll.readable() => {
                let Ok(mut guard) = ready else {
                    return tracing::warn!("parking lot cannot be watched");
                };
                match lot.wake_ready() {
                    Ok(n) if n < EVENTS => guard.clear_ready(),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return tracing::warn!(error = %e, "parking lot cannot be watched"),
                }
            }
            () = &mut sleep, if earliest.is_some() => {
                last_sweep = Instant::now();
                lot.sweep(None);
            }
            () = lot.changed.notified() => {}
            changed = async { shutdown.as_mut()?.changed().await.ok() }, if shutdown.is_some() => {
                match changed {
                    Some(()) => {
                        let d = shutdown.as_ref().map(|rx| *rx.borrow());
                        lot.sweep(d);
                    }
                    // The server is gone: the next park brings a receiver.
                    None => {
                        shutdown = None;
                        lock(&lot.state).shutdown = None;
                    }
                }
            }
        }
    }
}
