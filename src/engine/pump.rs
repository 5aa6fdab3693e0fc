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
//! So while a QoS 0 publish or a large one is in Paho's hands, a thread of ours wakes
//! both every millisecond, with Paho's own means: `Socket_interrupt` (one byte on Paho's
//! wake-up socket pair, as Paho does when it closes a socket) and `Thread_signal_evt` on
//! the send thread's event (as Paho does when a command is queued). The pump takes no
//! lock of Paho's but that event's leaf mutex, and none of ours; with nothing pending it
//! parks.
//!
//! A wake-up comes only when a publish is still pending a period after the pump last
//! looked (one that started since is not yet waited for): a QoS 0 publish that fits the
//! socket completes within microseconds, and waking Paho's two threads for it would only
//! put a spurious loop of its receive thread in the way of the next packet. Once nothing is pending the pump keeps ticking
//! for [`LINGER`] periods before it parks, so that publishes going out one at a time do
//! not each pay for unparking it.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::{self, Thread};
use std::time::Duration;

/// QoS 1/2 payloads from this size on are pumped: a partial write of a smaller one is
/// continued by the next acknowledgement Paho reads.
pub(crate) const THRESHOLD: usize = 64 * 1024;

/// How often the pump wakes Paho's threads.
const PERIOD: Duration = Duration::from_millis(1);

/// Idle periods before the pump parks.
const LINGER: u32 = 20;

/// Publishes handed to Paho that need the pump, and those of them that have ended (each
/// holds one [`Active`] meanwhile); the difference is how many are in Paho's hands.
static STARTED: AtomicU64 = AtomicU64::new(0);
static ENDED: AtomicU64 = AtomicU64::new(0);
static PUMP: OnceLock<Option<Thread>> = OnceLock::new();

/// Keeps the pump running while alive (held by the publish's registry entry, so it ends
/// with the command: completed, failed, or swept with its engine).
#[derive(Debug)]
pub(crate) struct Active(());

impl Drop for Active {
    fn drop(&mut self) {
        ENDED.fetch_add(1, Ordering::AcqRel);
    }
}

/// Whether any publish that needs the pump is in Paho's hands.
fn any_active() -> bool {
    // `ENDED` first: every publish it counts was counted in `STARTED` before.
    let ended = ENDED.load(Ordering::Acquire);
    STARTED.load(Ordering::Acquire) > ended
}

/// An [`Active`] for a publish of `payload_len` bytes, when it needs the pump (QoS 0,
/// or a large payload) and the engine is the one whose internals the pump relies on.
pub(crate) fn for_publish(qos0: bool, payload_len: usize) -> Option<Active> {
    if !qos0 && payload_len < THRESHOLD {
        return None;
    }
    let pump = PUMP.get_or_init(start).as_ref()?;
    STARTED.fetch_add(1, Ordering::AcqRel);
    // No system call unless the pump is parked.
    pump.unpark();
    Some(Active(()))
}

fn start() -> Option<Thread> {
    // Paho's wake-up socket pair exists once Paho is initialised (already so when a
    // publish is registered; this makes it so for any caller).
    super::paho::init();
    // One wake-up now doubles as the check (a spurious one costs Paho one loop).
    if !super::shim::socket_interrupt() {
        log::debug!("publishes are not pumped: Socket_interrupt is not available");
        return None;
    }
    thread::Builder::new()
        .name("aiomqtt-pump".to_owned())
        .spawn(run)
        .map(|handle| handle.thread().clone())
        .map_err(|e| log::warn!("publishes are not pumped: no thread ({e})"))
        .ok()
}

fn run() {
    let mut idle = 0;
    // How many publishes had started when the pump last looked.
    let mut seen = STARTED.load(Ordering::Acquire);
    loop {
        if idle >= LINGER {
            // `park` returns at once if `for_publish` unparked since the last check.
            while !any_active() {
                thread::park();
            }
            idle = 0;
        }
        thread::sleep(PERIOD);
        let ended = ENDED.load(Ordering::Acquire);
        let started = STARTED.load(Ordering::Acquire);
        // Fewer have ended than had started at the last look: one of those is still in
        // Paho's hands a period later. Publishes started since are not waited for yet.
        if ended < seen {
            super::shim::socket_interrupt();
            super::shim::wake_sender();
            idle = 0;
        } else if started > ended {
            idle = 0;
        } else {
            idle += 1;
        }
        seen = started;
    }
}
