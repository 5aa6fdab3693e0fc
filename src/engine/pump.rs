//! Keeps Paho's writes moving.
//!
//! Paho C writes a packet that does not fit the socket's send buffer in steps: the rest
//! waits in a pending-write list, and its receive thread continues it only at the top of
//! each loop of `Socket_getReadySocket` (Socket.c), which then sleeps in `poll` on the
//! *read* set for up to one second (`MQTTAsync_receiveThread`'s timeout). Unless packets
//! arrive, a large PUBLISH therefore moves one send buffer per second: about 5 MiB/s on
//! loopback, 13 s for 64 MiB.
//!
//! Once that write completes, the commands queued behind it wait too: Paho's send thread
//! sleeps up to a second on its event (`MQTTAsync_sendThread`), which a new command, a
//! PUBACK, a PUBCOMP or a CONNACK signals, but not the end of a partial write
//! (`MQTTAsync_writeComplete`).
//!
//! Both stalls hit a stream of small QoS 0 publishes once the socket's buffers are full
//! (many in flight, a slow reader): a run of 2,000 QoS 0 messages of 4 KiB then takes one
//! second instead of 40 ms, as the benchmark found. QoS 1 and 2 streams are continued by
//! their acknowledgements, which wake both threads.
//!
//! So while a QoS 0 publish or a large one is in Paho's hands, a thread of ours looks
//! regularly — every millisecond while a large publish is pending, every
//! [`SMALL_PERIOD`] otherwise — and wakes both when needed, with Paho's own means:
//! `Socket_interrupt` (one byte on Paho's wake-up socket pair, as Paho does when it
//! closes a socket) and `Thread_signal_evt` on the send thread's event (as Paho does when
//! a command is queued). The pump takes no
//! lock of Paho's but that event's leaf mutex, and none of ours; with nothing pending it
//! parks.
//!
//! A wake-up comes only for a client whose writes stand still: a publish of it that was
//! pending when the pump last looked is still pending, and none of its publishes ended
//! since. A QoS 0 publish that fits the socket completes within microseconds, and a
//! stream of them keeps completing, though a thousand may wait their turn in Paho's
//! queue; waking Paho's two threads for those would only put spurious loops of its
//! threads in the way of the packets (a 64 B stream with a window of 1,000 was woken at
//! one tick in five when any publish pending a period counted as a stall). Paho writes a
//! client's packets in order, one at a time, so a client whose publishes still end is
//! not stalled; one whose partial write waits ends none. Progress is counted per client:
//! another client's completions say nothing about this one's socket. Once nothing is
//! pending the pump keeps looking for [`LINGER`] before it parks, so that publishes going
//! out one at a time do not each pay for unparking it.
//!
//! Each look is a wake-up of the pump's thread, which on a loaded machine takes a core
//! from Paho's threads or the broker for a moment: a stream of small QoS 0 publishes, which
//! is woken only after standing still for [`SMALL_STALL`], is looked at five times less
//! often than a large publish (200 looks a second, not 1,000).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, Thread};
use std::time::Duration;

/// QoS 1/2 payloads from this size on are pumped: a partial write of a smaller one is
/// continued by the next acknowledgement Paho reads.
pub(crate) const THRESHOLD: usize = 64 * 1024;

/// How often the pump looks while a large publish is pending: a client with one that
/// stands still for a period is woken (each wake-up moves one send buffer on).
const LARGE_PERIOD: Duration = Duration::from_millis(1);

/// How often the pump looks while only small (QoS 0) publishes are pending.
const SMALL_PERIOD: Duration = Duration::from_millis(5);

/// How long a client with only small publishes pending must stand still before it is
/// woken (two looks at [`SMALL_PERIOD`]): a thread of a loaded two-core machine is often
/// off the CPU for a millisecond, and a stream that Paho would go on with by itself needs
/// no wake-up. A stall that needs the pump lasts up to a second without it.
const SMALL_STALL: Duration = Duration::from_millis(10);

/// How long the pump goes on looking with nothing pending before it parks.
const LINGER: Duration = Duration::from_millis(20);

/// Pumped publishes of all clients: started, and ended (each holds one [`Active`]
/// meanwhile); the difference is how many are in Paho's hands.
static STARTED: AtomicU64 = AtomicU64::new(0);
static ENDED: AtomicU64 = AtomicU64::new(0);
static PUMP: OnceLock<Option<Thread>> = OnceLock::new();

/// The clients the pump watches, with what it saw of each at its last look. A leaf lock:
/// taken by the pump and when a client is created, never across a call into Paho.
static WATCHED: Mutex<Vec<Watched>> = Mutex::new(Vec::new());

/// The pumped publishes of one client (engine): started and ended, and the large ones
/// pending.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    started: AtomicU64,
    ended: AtomicU64,
    large: AtomicU64,
    /// The client has no connection: Paho writes nothing, so there is nothing to keep
    /// moving, however many publishes it holds for the next connection.
    down: AtomicBool,
}

struct Watched {
    progress: Arc<Progress>,
    /// At the last look: how many had started, and how many had ended.
    started: u64,
    ended: u64,
    /// How long the looks in a row that found the client standing still span.
    still: Duration,
}

impl Progress {
    /// The client's connection is up (`true`, from the connect callback) or gone (`false`,
    /// from the loss callbacks, or once Paho reports our DISCONNECT: see
    /// [`Disconnecting`]). While it is gone the pump leaves the client alone, and parks if
    /// no other client needs it: the publishes Paho keeps for a resumed session, or the
    /// QoS 0 ones it keeps queued, would otherwise have it wake Paho's threads every
    /// millisecond until the next connect.
    pub(crate) fn set_link(&self, up: bool) {
        self.down.store(!up, Ordering::Release);
        if up {
            if let Some(Some(pump)) = PUMP.get() {
                pump.unpark();
            }
        }
    }

    /// The progress of a new client, watched by the pump for as long as the client or a
    /// publish of it lives.
    pub(crate) fn watched() -> Arc<Progress> {
        let progress = Arc::new(Progress::default());
        let mut watched = WATCHED.lock().unwrap_or_else(|e| e.into_inner());
        watched.retain(|w| Arc::strong_count(&w.progress) > 1);
        watched.push(Watched::new(progress.clone()));
        progress
    }
}

impl Watched {
    fn new(progress: Arc<Progress>) -> Watched {
        Watched {
            progress,
            started: 0,
            ended: 0,
            still: Duration::ZERO,
        }
    }

    /// Whether the client stands still — a publish pending at the last look, `since` ago,
    /// is still pending, and none ended since — for a look with a large publish pending,
    /// for [`SMALL_STALL`] otherwise. Records this look.
    fn look(&mut self, since: Duration) -> Look {
        // `ended` first: every publish it counts was counted in `started` before.
        let ended = self.progress.ended.load(Ordering::Acquire);
        let started = self.progress.started.load(Ordering::Acquire);
        if self.progress.down.load(Ordering::Acquire) {
            (self.started, self.ended, self.still) = (started, ended, Duration::ZERO);
            return Look::default();
        }
        let large = self.progress.large.load(Ordering::Acquire) > 0;
        let pending = started > ended;
        let mut stalled = false;
        if ended < self.started && ended == self.ended {
            self.still += since;
            stalled = large || self.still >= SMALL_STALL;
        } else {
            self.still = Duration::ZERO;
        }
        (self.started, self.ended) = (started, ended);
        Look {
            stalled,
            large,
            pending,
        }
    }
}

/// Keeps the pump running while alive (held by the publish's registry entry, so it ends
/// with the command: completed, failed, or swept with its engine).
#[derive(Debug)]
pub(crate) struct Active {
    progress: Arc<Progress>,
    large: bool,
}

impl Drop for Active {
    fn drop(&mut self) {
        if self.large {
            self.progress.large.fetch_sub(1, Ordering::AcqRel);
        }
        self.progress.ended.fetch_add(1, Ordering::AcqRel);
        ENDED.fetch_add(1, Ordering::AcqRel);
    }
}

/// Held by a DISCONNECT's registry entry: once Paho reports it (the socket is closed then),
/// the client has no connection (see [`Progress::set_link`]). Until then the publishes
/// queued before it are still written, and may need the pump.
#[derive(Debug)]
pub(crate) struct Disconnecting(Arc<Progress>);

impl Disconnecting {
    pub(crate) fn new(progress: &Arc<Progress>) -> Disconnecting {
        Disconnecting(progress.clone())
    }
}

impl Drop for Disconnecting {
    fn drop(&mut self) {
        self.0.set_link(false);
    }
}

/// Whether any publish that needs the pump is in Paho's hands.
fn any_active() -> bool {
    // `ENDED` first: every publish it counts was counted in `STARTED` before.
    let ended = ENDED.load(Ordering::Acquire);
    STARTED.load(Ordering::Acquire) > ended
}

/// Whether a client with a connection has a publish that needs the pump (the count of
/// [`any_active`] first: with none at all, no lock is taken).
fn any_pending_on_a_link() -> bool {
    any_active() && {
        let watched = WATCHED.lock().unwrap_or_else(|e| e.into_inner());
        watched.iter().any(|w| {
            let p = &w.progress;
            let ended = p.ended.load(Ordering::Acquire);
            !p.down.load(Ordering::Acquire) && p.started.load(Ordering::Acquire) > ended
        })
    }
}

/// An [`Active`] for a publish of `payload_len` bytes of the client with `progress`, when
/// it needs the pump (QoS 0, or a large payload) and the engine is the one whose
/// internals the pump relies on.
pub(crate) fn for_publish(
    progress: &Arc<Progress>,
    qos0: bool,
    payload_len: usize,
) -> Option<Active> {
    if !qos0 && payload_len < THRESHOLD {
        return None;
    }
    let pump = PUMP.get_or_init(start).as_ref()?;
    let large = payload_len >= THRESHOLD;
    if large {
        progress.large.fetch_add(1, Ordering::AcqRel);
    }
    progress.started.fetch_add(1, Ordering::AcqRel);
    STARTED.fetch_add(1, Ordering::AcqRel);
    // No system call unless the pump is parked.
    pump.unpark();
    Some(Active {
        progress: progress.clone(),
        large,
    })
}

fn start() -> Option<Thread> {
    // Paho's wake-up socket pair exists once Paho is initialised (already so when a
    // publish is registered; this makes it so for any caller).
    super::paho::init();
    // One wake-up now doubles as the check (a spurious one costs Paho one loop).
    if !super::shim::socket_interrupt() {
        crate::logging::log_debug!("publishes are not pumped: Socket_interrupt is not available");
        return None;
    }
    thread::Builder::new()
        .name("aiomqtt-pump".to_owned())
        .spawn(run)
        .map(|handle| handle.thread().clone())
        .map_err(|e| crate::logging::log_warn!("publishes are not pumped: no thread ({e})"))
        .ok()
}

fn run() {
    crate::logging::defer_on_this_thread();
    let mut idle = Duration::ZERO;
    let mut period = SMALL_PERIOD;
    loop {
        if idle >= LINGER {
            // `park` returns at once if `for_publish` or `set_link` unparked since the
            // last check.
            while !any_pending_on_a_link() {
                thread::park();
            }
            idle = Duration::ZERO;
        }
        // A sleep, not `park_timeout`: `for_publish` unparks on every publish, which costs
        // a system call only while the thread is parked. A large publish that starts
        // meanwhile is seen at the end of this period.
        let slept = period;
        thread::sleep(slept);
        let look = look(slept);
        if look.stalled {
            super::shim::socket_interrupt();
            super::shim::wake_sender();
        }
        period = if look.large {
            LARGE_PERIOD
        } else {
            SMALL_PERIOD
        };
        if look.pending {
            idle = Duration::ZERO;
        } else {
            idle += slept;
        }
    }
}

/// What a look found, at one client or at any.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Look {
    /// A client stands still (see [`Watched::look`]).
    stalled: bool,
    /// A large publish is pending.
    large: bool,
    /// A publish that needs the pump is pending, on a client with a connection.
    pending: bool,
}

/// Looks at every client, `since` after the last look; forgets clients that are gone.
fn look(since: Duration) -> Look {
    let mut any = Look::default();
    let mut watched = WATCHED.lock().unwrap_or_else(|e| e.into_inner());
    watched.retain_mut(|w| {
        let one = w.look(since);
        any.stalled |= one.stalled;
        any.large |= one.large;
        any.pending |= one.pending;
        Arc::strong_count(&w.progress) > 1
    });
    any
}

#[cfg(test)]
mod tests {
    use super::*;

    const STILL: Look = Look {
        stalled: false,
        large: false,
        pending: true,
    };

    #[test]
    fn a_small_publish_is_woken_after_ten_milliseconds_standing_still_at_any_cadence() {
        let progress = Arc::new(Progress::default());
        let mut w = Watched::new(progress.clone());
        progress.started.store(1, Ordering::Release);
        assert_eq!(w.look(SMALL_PERIOD), STILL, "pending since this look only");
        // Looked at every millisecond (another client's large publish): nine looks
        // standing still are not yet 10 ms.
        for _ in 0..9 {
            assert_eq!(w.look(LARGE_PERIOD), STILL);
        }
        assert!(w.look(LARGE_PERIOD).stalled);
        // Progress resets the span; at the small cadence two looks make it.
        progress.ended.store(1, Ordering::Release);
        progress.started.store(2, Ordering::Release);
        assert_eq!(w.look(SMALL_PERIOD), STILL);
        assert_eq!(w.look(SMALL_PERIOD), STILL);
        assert!(w.look(SMALL_PERIOD).stalled);
    }

    #[test]
    fn a_large_publish_is_woken_at_the_first_look_standing_still() {
        let progress = Arc::new(Progress::default());
        let mut w = Watched::new(progress.clone());
        progress.started.store(1, Ordering::Release);
        progress.large.store(1, Ordering::Release);
        assert_eq!(
            w.look(SMALL_PERIOD),
            Look {
                stalled: false,
                large: true,
                pending: true,
            }
        );
        assert_eq!(
            w.look(LARGE_PERIOD),
            Look {
                stalled: true,
                large: true,
                pending: true,
            }
        );
        // Without a connection it is left alone, and counts as nothing pending.
        progress.set_link(false);
        assert_eq!(w.look(LARGE_PERIOD), Look::default());
        assert_eq!(w.look(LARGE_PERIOD), Look::default());
        progress.set_link(true);
        assert!(w.look(LARGE_PERIOD).stalled);
    }
}
