//! Completions of the commands handed to Paho.
//!
//! Every command (publish, subscribe, unsubscribe, disconnect) gets a key that Paho
//! passes back to its callback as the context. The key is an integer, never
//! dereferenced: the callback looks it up here and hands the reply to whoever
//! awaits it. A reply for a key that is not registered — a second callback for one
//! command, or one after the entry was swept — is ignored, so no pattern of Paho
//! callbacks can double-free or touch freed memory.
//!
//! A command registered with a [`Ticket`] has its wait ended here too, so that its
//! caller needs no timer and no waiter on the connection's end of its own: at its
//! deadline by the [`expiry`] thread ([`Reply::Expired`]), and when its [`Scope`] — the
//! connection — is closed ([`Reply::Ended`]). Such an entry stays registered until Paho
//! reports the command (or its client is destroyed): a publish still in Paho's hands is
//! still pumped.
//!
//! Locking: nothing is locked inside a shard's lock, and a shard's lock is taken inside
//! no other lock but the QoS 0 order lock (in `qos0_sent`). An entry's place (see
//! `admission`) is taken before the entry goes in and given back when it is dropped,
//! after its shard's lock is released: the admission's lock is a leaf. No lock here is
//! held across a call into Paho (keys are registered before the call and cancelled after
//! a refused one) nor while a waiter is woken (the entry is removed first, then
//! completed).

use std::collections::HashMap;
use std::collections::VecDeque;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::admission::{Admission, Claim, Place};
use super::{expiry, pump, slot};

/// The context Paho hands back: never 0 (a null context).
pub(crate) type Key = usize;

/// What the broker (or Paho) answered.
#[derive(Debug)]
pub(crate) enum Reply {
    Done(Response),
    Failed(Failure),
    /// The command's [`Ticket`] deadline passed first (Paho may still send it).
    Expired,
    /// The command's [`Scope`] was closed first.
    Ended,
}

/// A successful completion.
#[derive(Debug, Default)]
pub(crate) struct Response {
    /// SUBACK / UNSUBACK reason codes (granted QoS on 3.x), one per filter.
    pub(crate) codes: Vec<u8>,
}

/// A failed completion, as Paho reported it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Failure {
    /// Paho's return code (negative), or a positive MQTT 3 code.
    pub(crate) code: i32,
    /// The MQTT 5 reason code of a negative acknowledgement.
    pub(crate) reason: Option<u8>,
    /// An MQTT 3 CONNACK return code (1 to 5) in answer to an MQTT 5 CONNECT: a broker
    /// that speaks only 3.1.1 (no MQTT 5 CONNACK carries these).
    pub(crate) v3_return_code: Option<u8>,
    /// Paho's text, when it gave one.
    pub(crate) message: Option<String>,
    /// A CONNACK that broke the protocol (`Error::Protocol`), found by the facade.
    pub(crate) violation: Option<String>,
}

impl Failure {
    pub(crate) fn code(code: i32) -> Failure {
        Failure {
            code,
            ..Failure::default()
        }
    }
}

/// How long the caller of a command waits, and for which connection: given at
/// registration, the registry ends the wait itself (see the module's documentation).
#[derive(Clone, Copy)]
pub(crate) struct Ticket<'a> {
    deadline: Instant,
    scope: Option<&'a Scope>,
    /// Where the command's place in the engine's window is counted (a QoS 1/2 publish,
    /// a subscribe, an unsubscribe), and what it takes, until Paho reports it.
    places: Option<(&'a Arc<Admission>, Claim)>,
}

impl<'a> Ticket<'a> {
    /// A ticket until `deadline`, whose wait also ends when `scope` closes; `None` if
    /// the expiry thread cannot run (the caller must then keep its own timer).
    pub(crate) fn new(
        deadline: Instant,
        scope: Option<&'a Scope>,
        places: Option<(&'a Arc<Admission>, Claim)>,
    ) -> Option<Ticket<'a>> {
        expiry::start().then_some(Ticket {
            deadline,
            scope,
            places,
        })
    }

    fn place(ticket: Option<&Ticket<'_>>) -> Option<Place> {
        let (admission, claim) = ticket?.places?;
        Some(Place::take(admission, claim))
    }
}

/// The commands of one connection whose waits end with it: once closed, it refuses new
/// ones and ends the waits of those registered.
pub(crate) struct Scope {
    id: u64,
    closed: AtomicBool,
}

static NEXT_SCOPE: AtomicU64 = AtomicU64::new(1);

impl Scope {
    pub(crate) fn new() -> Scope {
        Scope {
            id: NEXT_SCOPE.fetch_add(1, Ordering::Relaxed),
            closed: AtomicBool::new(false),
        }
    }

    /// Refuses the scope's commands from now on and answers the waiting ones with
    /// [`Reply::Ended`] (their entries stay for Paho's report).
    pub(crate) fn close(&self) {
        // Set before any shard is locked: a registration under a shard's lock either
        // comes before the sweep of that shard, or sees the scope closed.
        self.closed.store(true, Ordering::Release);
        take_waiters(|e| e.scope == self.id, || Reply::Ended);
    }
}

struct Entry {
    engine: u64,
    /// Taken when the wait ended before Paho's report (expired, or its scope closed).
    tx: Option<slot::Sender>,
    /// The [`Scope`] of a ticket (0: none).
    scope: u64,
    /// A ticket's deadline: the expiry thread ends the wait then.
    deadline: Option<Instant>,
    /// Set for a QoS 1/2 publish.
    publish: Option<Publish>,
    /// Set for a QoS 0 or large publish: keeps its writes moving until it completes.
    _pump: Option<pump::Active>,
    /// Set for a QoS 0 publish: [`QOS0_SEQ`] when it was registered (see [`qos0_sent`]).
    qos0_before: Option<u64>,
    /// The QoS 0 publish is in [`QOS0_TAKEN`].
    qos0_queued: bool,
    /// Its place in its connection's window plus slack (see `admission`).
    _place: Option<Place>,
    /// Set for a DISCONNECT: marks the client's link down once Paho reports it.
    _disconnecting: Option<pump::Disconnecting>,
}

/// What a QoS 1/2 publish's failure callback needs to know (see [`write_failed`]).
#[derive(Debug, Clone, Copy)]
struct Publish {
    payload_len: usize,
    /// The session outlives a lost link (Paho resends the message on resume).
    resumable: bool,
    /// The packet id, once the sender knows it (0 before).
    packet_id: i32,
    /// The write failed; the call waits for the resumed exchange.
    parked: bool,
}

/// Keys are unique already; the hasher only spreads them.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0.wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_usize(&mut self, n: usize) {
        self.0 = n as u64;
    }
}

type Shard = Mutex<HashMap<Key, Entry, BuildHasherDefault<KeyHasher>>>;

const SHARDS: usize = 16;
static TABLE: [Shard; SHARDS] =
    [const { Mutex::new(HashMap::with_hasher(BuildHasherDefault::new())) }; SHARDS];
static NEXT: AtomicUsize = AtomicUsize::new(1);

fn shard(
    key: Key,
) -> std::sync::MutexGuard<'static, HashMap<Key, Entry, BuildHasherDefault<KeyHasher>>> {
    // A panic never happens while a shard is locked (only map operations run under
    // it), so a poisoned lock holds a consistent map.
    TABLE[key % SHARDS]
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// A registered command: its key for Paho, and where its reply comes.
pub(crate) type Registered = (Key, slot::Receiver);

/// Registers a command of `engine` before it is handed to Paho; `None` if its ticket's
/// scope is closed.
pub(crate) fn register(engine: u64, ticket: Option<&Ticket<'_>>) -> Option<Registered> {
    let holds = Holds {
        place: Ticket::place(ticket),
        ..Holds::default()
    };
    insert(engine, ticket, holds)
}

/// Registers a DISCONNECT of `engine`, whose client has no connection once Paho reports
/// it (see [`pump::Disconnecting`]).
pub(crate) fn register_disconnect(
    engine: u64,
    progress: &Arc<pump::Progress>,
) -> Option<Registered> {
    let holds = Holds {
        disconnecting: Some(pump::Disconnecting::new(progress)),
        ..Holds::default()
    };
    insert(engine, None, holds)
}

/// Registers a QoS 0 publish of `engine` of `payload_len` bytes before it is handed to
/// Paho; [`qos0_sent`] once Paho took it.
pub(crate) fn register_qos0(
    engine: u64,
    ticket: Option<&Ticket<'_>>,
    progress: &Arc<pump::Progress>,
    payload_len: usize,
) -> Option<Registered> {
    let before = QOS0_SEQ.load(Ordering::Acquire);
    let holds = Holds {
        pump: pump::for_publish(progress, true, payload_len),
        qos0_before: Some(before),
        ..Holds::default()
    };
    insert(engine, ticket, holds)
}

/// Registers a QoS 1/2 publish of `engine` before it is handed to Paho; `resumable`
/// when its session outlives a lost link.
pub(crate) fn register_publish(
    engine: u64,
    ticket: Option<&Ticket<'_>>,
    progress: &Arc<pump::Progress>,
    payload_len: usize,
    resumable: bool,
) -> Option<Registered> {
    let holds = Holds {
        publish: Some(Publish {
            payload_len,
            resumable,
            packet_id: 0,
            parked: false,
        }),
        pump: pump::for_publish(progress, false, payload_len),
        place: Ticket::place(ticket),
        ..Holds::default()
    };
    insert(engine, ticket, holds)
}

/// What a command's entry holds for its kind, each part `None` where it does not apply.
#[derive(Default)]
struct Holds {
    publish: Option<Publish>,
    pump: Option<pump::Active>,
    qos0_before: Option<u64>,
    place: Option<Place>,
    disconnecting: Option<pump::Disconnecting>,
}

fn insert(engine: u64, ticket: Option<&Ticket<'_>>, holds: Holds) -> Option<Registered> {
    let Holds {
        publish,
        pump,
        qos0_before,
        place,
        disconnecting,
    } = holds;
    let (tx, rx) = slot::channel();
    let key = loop {
        let key = NEXT.fetch_add(1, Ordering::Relaxed);
        if key != 0 {
            break key;
        }
    };
    let scope = ticket.and_then(|t| t.scope);
    let deadline = ticket.map(|t| t.deadline);
    // Converted before the lock: the expiry thread's clock, for the check under it.
    let watched = deadline.map(expiry::nanos);
    let mut map = shard(key);
    // Under the shard's lock, which `Scope::close` takes after closing (see there).
    if scope.is_some_and(|s| s.closed.load(Ordering::Acquire)) {
        return None;
    }
    map.insert(
        key,
        Entry {
            engine,
            tx: Some(tx),
            scope: scope.map_or(0, |s| s.id),
            deadline,
            publish,
            _pump: pump,
            qos0_before,
            qos0_queued: false,
            _place: place,
            _disconnecting: disconnecting,
        },
    );
    // Under the shard's lock too, which the expiry thread takes after it last looked
    // at the earliest deadline (see `expiry`).
    if let Some(at) = watched {
        expiry::watch(at);
    }
    drop(map);
    Some((key, rx))
}

/// Forgets a key whose command Paho refused (no callback will come).
pub(crate) fn cancel(key: Key) {
    let entry = shard(key).remove(&key);
    drop(entry);
}

/// Hands `reply` to the waiter of `key`, if it is still registered.
pub(crate) fn complete(key: Key, reply: Reply) {
    let entry = shard(key).remove(&key);
    if let Some(entry) = entry {
        if let (Some(before), true) = (entry.qos0_before, entry.qos0_queued) {
            let done = matches!(reply, Reply::Done(_));
            qos0_completed(entry.engine, key, done.then_some(before));
        }
        // The waiter may be gone (its call timed out): nothing to do then.
        entry.reply(reply);
    }
}

impl Entry {
    fn reply(self, reply: Reply) {
        if let Some(tx) = self.tx {
            tx.send(reply);
        }
    }
}

/// Ends the waits of the entries `which` selects with `reply`, leaving the entries.
fn take_waiters(which: impl Fn(&Entry) -> bool, reply: impl Fn() -> Reply) {
    for shard in &TABLE {
        let taken: Vec<slot::Sender> = {
            let mut map = shard.lock().unwrap_or_else(|e| e.into_inner());
            map.values_mut()
                .filter(|e| e.tx.is_some() && which(e))
                .filter_map(|e| e.tx.take())
                .collect()
        };
        for tx in taken {
            tx.send(reply());
        }
    }
}

/// The expiry thread's look at `now`: answers every ticket whose deadline has passed with
/// [`Reply::Expired`]; returns the earliest deadline still to come.
pub(crate) fn expire(now: Instant) -> Option<Instant> {
    let mut next: Option<Instant> = None;
    for shard in &TABLE {
        let expired: Vec<slot::Sender> = {
            let mut map = shard.lock().unwrap_or_else(|e| e.into_inner());
            let mut expired = Vec::new();
            for entry in map.values_mut() {
                let Some(deadline) = entry.deadline.filter(|_| entry.tx.is_some()) else {
                    continue;
                };
                if deadline <= now {
                    expired.extend(entry.tx.take());
                } else if next.is_none_or(|n| deadline < n) {
                    next = Some(deadline);
                }
            }
            expired
        };
        for tx in expired {
            tx.send(Reply::Expired);
        }
    }
    next
}

// ---------------------------------------------------------------------------------------
// QoS 0 completions Paho loses.
//
// Paho C 1.3.16 reports a QoS 0 publish written in parts through one `pending_write` slot
// per client, filled by the send thread and read by `MQTTAsync_writeComplete` on the
// receive thread. The receive thread removes the finished write from the socket's list
// before it takes Paho's client mutex to report it; if the send thread starts the next
// QoS 0 publish in that gap and it too is written in parts, the slot now names the second
// command: the report completes the second (early: its write is under way) and the first
// is never reported. (The same loss as upstream paho.mqtt.c issue 1667. Seen in the
// benchmark with 150,000 QoS 0 messages of 4 KiB per run: a call of this crate ending
// `Unacknowledged` after its timeout in 2 runs of 10, raw paho-mqtt waiting for ever.)
//
// Paho writes one client's publishes in the order it queued them, each after the previous
// write has finished. So when a QoS 0 publish completes, every QoS 0 publish of the same
// engine that Paho had taken before this one was registered has been written: those still
// waiting are completed with it. "Taken before" is provable: [`qos0_sent`] numbers a
// publish after Paho took it, and [`register_qos0`] notes the next number before the call.

/// Numbers QoS 0 publishes in the order Paho took them (across engines).
static QOS0_SEQ: AtomicU64 = AtomicU64::new(0);

/// Per engine, its QoS 0 publishes taken by Paho and not completed: (number, key), in
/// number order. Taken before a shard's lock, never while one is held.
static QOS0_TAKEN: Mutex<Vec<(u64, Taken)>> = Mutex::new(Vec::new());

/// One engine's QoS 0 publishes taken by Paho: (number, key), oldest first.
type Taken = VecDeque<(u64, Key)>;

fn lock_qos0() -> std::sync::MutexGuard<'static, Vec<(u64, Taken)>> {
    QOS0_TAKEN.lock().unwrap_or_else(|e| e.into_inner())
}

/// Paho took the QoS 0 publish `key` of `engine` (`MQTTAsync_send` returned success).
pub(crate) fn qos0_sent(engine: u64, key: Key) {
    let mut all = lock_qos0();
    let n = QOS0_SEQ.fetch_add(1, Ordering::AcqRel);
    // Completed already (the write finished before the caller got here): nothing to
    // track. Marked under this lock: a completion from now on waits for it in
    // `qos0_completed` and finds the key queued.
    match shard(key).get_mut(&key) {
        Some(entry) => entry.qos0_queued = true,
        None => return,
    }
    match all.iter_mut().find(|(e, _)| *e == engine) {
        Some((_, taken)) => taken.push_back((n, key)),
        None => all.push((engine, VecDeque::from([(n, key)]))),
    }
}

/// Forgets `key`, and with `written_before` completes the engine's QoS 0 publishes Paho
/// took before that number.
fn qos0_completed(engine: u64, key: Key, written_before: Option<u64>) {
    let mut earlier = Vec::new();
    {
        let mut all = lock_qos0();
        let Some(i) = all.iter().position(|(e, _)| *e == engine) else {
            return;
        };
        let taken = &mut all[i].1;
        if let Some(before) = written_before {
            while taken.front().is_some_and(|&(n, _)| n < before) {
                if let Some((_, k)) = taken.pop_front() {
                    if k != key {
                        earlier.push(k);
                    }
                }
            }
        }
        // Usually the oldest: completions come in the order Paho took the publishes.
        if taken.front().is_some_and(|&(_, k)| k == key) {
            taken.pop_front();
        } else if let Some(at) = taken.iter().position(|&(_, k)| k == key) {
            taken.remove(at);
        }
        if taken.is_empty() {
            all.swap_remove(i);
        }
    }
    for k in earlier {
        if let Some(entry) = shard(k).remove(&k) {
            crate::logging::log_debug!(
                target: "aiomqtt::engine",
                "a QoS 0 publish completed with a later one (Paho lost its completion)"
            );
            entry.reply(Reply::Done(Response::default()));
        }
    }
}

fn qos0_forget_engine(engine: u64) {
    lock_qos0().retain(|(e, _)| *e != engine);
}

// ---------------------------------------------------------------------------------------
// Publishes whose write failed at a loss.
//
// When the link breaks while Paho writes a QoS 1/2 PUBLISH, Paho reports the command as
// failed (code -1) and frees it, but keeps the message for a resend on resume. On a
// session that outlives the loss, the call then waits here — "parked" — until Paho's
// delivery-complete callback reports that packet id acknowledged on a later link, or the
// session is gone (the broker kept none, the engine is destroyed).

/// Parked calls by (engine, packet id); `PARKED` counts them, so the delivery-complete
/// callback of every acknowledgement costs one atomic load while none is parked.
static PARKED_IDS: Mutex<Vec<(u64, i32, Key)>> = Mutex::new(Vec::new());
static PARKED: AtomicUsize = AtomicUsize::new(0);

/// What the failure callback of a publish whose write failed learns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WriteFailed {
    /// Not a registered QoS 1/2 publish (QoS 0, or already completed): fail it.
    Unknown,
    /// A QoS 1/2 publish of a session that ends with the link: fail it.
    Fail { payload_len: usize },
    /// A QoS 1/2 publish of a session that outlives the link: it now waits for the
    /// resumed exchange.
    Parked { payload_len: usize },
}

fn lock_ids() -> std::sync::MutexGuard<'static, Vec<(u64, i32, Key)>> {
    PARKED_IDS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Records the packet id Paho gave a resumable publish (after `MQTTAsync_send`).
pub(crate) fn sent(key: Key, packet_id: i32) {
    let parked_engine = {
        let mut map = shard(key);
        match map
            .get_mut(&key)
            .and_then(|e| e.publish.as_mut().map(|p| (e.engine, p)))
        {
            Some((engine, p)) => {
                p.packet_id = packet_id;
                p.parked.then_some(engine)
            }
            None => None,
        }
    };
    // The write failed before the id was known here: index it now.
    if let Some(engine) = parked_engine {
        lock_ids().push((engine, packet_id, key));
    }
}

/// A publish's write failed (Paho code -1, `packet_id` as Paho reported it, 0 if it did
/// not): parks it if its session outlives the link.
pub(crate) fn write_failed(key: Key, packet_id: i32) -> WriteFailed {
    let (engine, publish) = {
        let mut map = shard(key);
        let Some(entry) = map.get_mut(&key) else {
            return WriteFailed::Unknown;
        };
        let Some(p) = entry.publish.as_mut() else {
            return WriteFailed::Unknown;
        };
        if !p.resumable {
            return WriteFailed::Fail {
                payload_len: p.payload_len,
            };
        }
        if packet_id != 0 {
            p.packet_id = packet_id;
        }
        p.parked = true;
        // Counted under the shard's lock, as every removal of a parked entry is.
        PARKED.fetch_add(1, Ordering::SeqCst);
        (entry.engine, *p)
    };
    if publish.packet_id != 0 {
        lock_ids().push((engine, publish.packet_id, key));
    }
    WriteFailed::Parked {
        payload_len: publish.payload_len,
    }
}

/// Paho's delivery-complete callback: `packet_id` of `engine` was acknowledged.
pub(crate) fn delivered(engine: u64, packet_id: i32) {
    if PARKED.load(Ordering::SeqCst) == 0 {
        return;
    }
    let key = {
        let mut ids = lock_ids();
        match ids
            .iter()
            .position(|&(e, id, _)| e == engine && id == packet_id)
        {
            Some(i) => ids.swap_remove(i).2,
            None => return,
        }
    };
    // Removed (and uncounted) under its shard's lock, so that a concurrent
    // `fail_parked` cannot take it as well.
    let entry = {
        let mut map = shard(key);
        match map.get(&key) {
            Some(e) if e.publish.is_some_and(|p| p.parked) => map.remove(&key),
            _ => None,
        }
    };
    if let Some(entry) = entry {
        PARKED.fetch_sub(1, Ordering::SeqCst);
        entry.reply(Reply::Done(Response::default()));
    }
}

/// Fails the parked publishes of `engine`: their session is gone.
pub(crate) fn fail_parked(engine: u64, reply: impl Fn() -> Reply) {
    if PARKED.load(Ordering::SeqCst) == 0 {
        return;
    }
    unpark(engine);
    for shard in &TABLE {
        let failed: Vec<Entry> = {
            let mut map = shard.lock().unwrap_or_else(|e| e.into_inner());
            let keys: Vec<Key> = map
                .iter()
                .filter(|(_, e)| e.engine == engine && e.publish.is_some_and(|p| p.parked))
                .map(|(k, _)| *k)
                .collect();
            let failed: Vec<Entry> = keys.iter().filter_map(|k| map.remove(k)).collect();
            PARKED.fetch_sub(failed.len(), Ordering::SeqCst);
            failed
        };
        for entry in failed {
            entry.reply(reply());
        }
    }
}

fn unpark(engine: u64) {
    lock_ids().retain(|&(e, _, _)| e != engine);
}

/// Fails every command of `engine` still registered: called once its Paho client is
/// destroyed, when no callback can come any more.
pub(crate) fn sweep(engine: u64, reply: impl Fn() -> Reply) {
    fail_parked(engine, &reply);
    qos0_forget_engine(engine);
    for shard in &TABLE {
        let swept: Vec<Entry> = {
            let mut map = shard.lock().unwrap_or_else(|e| e.into_inner());
            let keys: Vec<Key> = map
                .iter()
                .filter(|(_, e)| e.engine == engine)
                .map(|(k, _)| *k)
                .collect();
            keys.iter().filter_map(|k| map.remove(k)).collect()
        };
        for entry in swept {
            entry.reply(reply());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_reaches_its_waiter_once() {
        let (key, mut rx) = register(1, None).unwrap();
        complete(key, Reply::Done(Response::default()));
        assert!(matches!(rx.try_recv(), Ok(Some(Reply::Done(_)))));
        // A second callback for the same key is ignored.
        complete(key, Reply::Failed(Failure::code(-1)));
    }

    #[test]
    fn a_parked_publish_completes_on_delivery_or_fails_with_its_session() {
        // The write fails before the sender knows the packet id, then learns it.
        let (a, mut a_rx) =
            register_publish(10, None, &pump::Progress::watched(), 5, true).unwrap();
        assert_eq!(write_failed(a, 0), WriteFailed::Parked { payload_len: 5 });
        sent(a, 7);
        // The write fails with the packet id known.
        let (b, mut b_rx) =
            register_publish(10, None, &pump::Progress::watched(), 6, true).unwrap();
        sent(b, 8);
        assert_eq!(write_failed(b, 8), WriteFailed::Parked { payload_len: 6 });
        assert!(matches!(a_rx.try_recv(), Ok(None)) && matches!(b_rx.try_recv(), Ok(None)));

        delivered(10, 7);
        assert!(matches!(a_rx.try_recv(), Ok(Some(Reply::Done(_)))));
        delivered(11, 8); // another engine's packet id 8
        assert!(matches!(b_rx.try_recv(), Ok(None)));
        fail_parked(10, || Reply::Failed(Failure::code(-11)));
        assert!(matches!(b_rx.try_recv(), Ok(Some(Reply::Failed(f))) if f.code == -11));
        delivered(10, 8); // too late: nothing left
    }

    #[test]
    fn a_publish_of_a_clean_session_is_not_parked() {
        let (key, _rx) = register_publish(12, None, &pump::Progress::watched(), 3, false).unwrap();
        assert_eq!(write_failed(key, 0), WriteFailed::Fail { payload_len: 3 });
        let (qos0, _rx0) = register(12, None).unwrap();
        assert_eq!(write_failed(qos0, 0), WriteFailed::Unknown);
    }

    #[test]
    fn a_lost_qos0_completion_is_made_good_by_a_later_one() {
        let done = || Reply::Done(Response::default());
        // a and b taken by Paho one after the other; Paho reports only b.
        let (a, mut a_rx) = register_qos0(20, None, &pump::Progress::watched(), 10).unwrap();
        qos0_sent(20, a);
        let (b, mut b_rx) = register_qos0(20, None, &pump::Progress::watched(), 10).unwrap();
        qos0_sent(20, b);
        let (other, mut other_rx) =
            register_qos0(21, None, &pump::Progress::watched(), 10).unwrap();
        qos0_sent(21, other);
        complete(b, done());
        assert!(matches!(a_rx.try_recv(), Ok(Some(Reply::Done(_)))));
        assert!(matches!(b_rx.try_recv(), Ok(Some(Reply::Done(_)))));
        assert!(
            matches!(other_rx.try_recv(), Ok(None)),
            "another engine's publish stays"
        );

        // d taken by Paho after c was registered: their order in Paho is unknown, so c's
        // completion does not vouch for d.
        let (c, mut c_rx) = register_qos0(20, None, &pump::Progress::watched(), 10).unwrap();
        let (d, mut d_rx) = register_qos0(20, None, &pump::Progress::watched(), 10).unwrap();
        qos0_sent(20, d);
        qos0_sent(20, c);
        complete(c, done());
        assert!(matches!(c_rx.try_recv(), Ok(Some(Reply::Done(_)))));
        assert!(matches!(d_rx.try_recv(), Ok(None)));

        // A failure vouches for nothing; a completion before `qos0_sent` is tracked no more.
        let (e, mut e_rx) = register_qos0(20, None, &pump::Progress::watched(), 10).unwrap();
        qos0_sent(20, e);
        complete(d, Reply::Failed(Failure::code(-1)));
        assert!(matches!(d_rx.try_recv(), Ok(Some(Reply::Failed(_)))));
        assert!(matches!(e_rx.try_recv(), Ok(None)));
        let (f, _f_rx) = register_qos0(20, None, &pump::Progress::watched(), 10).unwrap();
        complete(f, done());
        qos0_sent(20, f);
        complete(e, done());
        assert!(matches!(e_rx.try_recv(), Ok(Some(Reply::Done(_)))));
        complete(other, done());
        assert!(matches!(other_rx.try_recv(), Ok(Some(_))));
        assert!(
            lock_qos0().iter().all(|(e, _)| *e != 20 && *e != 21),
            "nothing left queued"
        );
    }

    #[test]
    fn a_tickets_wait_ends_at_its_deadline_or_when_its_scope_closes() {
        let started = Instant::now();
        let due = started + std::time::Duration::from_millis(30);
        let (a, a_rx) = register(30, Ticket::new(due, None, None).as_ref()).unwrap();
        let scope = Scope::new();
        let later = Ticket::new(
            started + std::time::Duration::from_secs(3600),
            Some(&scope),
            None,
        );
        let (b, mut b_rx) = register(30, later.as_ref()).unwrap();

        assert!(matches!(
            futures::executor::block_on(a_rx),
            Ok(Reply::Expired)
        ));
        assert!(Instant::now() >= due, "not before its deadline");
        assert!(
            matches!(b_rx.try_recv(), Ok(None)),
            "a later deadline still waits"
        );
        scope.close();
        assert!(matches!(b_rx.try_recv(), Ok(Some(Reply::Ended))));
        assert!(
            register(30, later.as_ref()).is_none(),
            "a closed scope takes no more"
        );
        // Both stay registered for Paho's report, which finds no waiter.
        assert!(shard(a).contains_key(&a) && shard(b).contains_key(&b));
        complete(a, Reply::Done(Response::default()));
        complete(b, Reply::Done(Response::default()));
        assert!(!shard(a).contains_key(&a) && !shard(b).contains_key(&b));
    }

    #[test]
    fn cancel_and_sweep() {
        let (key, mut rx) = register(2, None).unwrap();
        cancel(key);
        // Its waiter learns that no reply comes; a late callback finds nothing.
        assert!(matches!(rx.try_recv(), Err(slot::Closed)));
        complete(key, Reply::Done(Response::default()));
        assert!(matches!(rx.try_recv(), Err(slot::Closed)));

        let (_, mut a) = register(3, None).unwrap();
        let (_, mut b) = register(4, None).unwrap();
        sweep(3, || Reply::Failed(Failure::code(-11)));
        assert!(matches!(a.try_recv(), Ok(Some(Reply::Failed(f))) if f.code == -11));
        assert!(
            matches!(b.try_recv(), Ok(None)),
            "another engine's command stays"
        );
        sweep(4, || Reply::Failed(Failure::code(-11)));
        assert!(matches!(b.try_recv(), Ok(Some(_))));
    }
}
