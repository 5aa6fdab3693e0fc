//! Completions of the commands handed to Paho.
//!
//! Every command (publish, subscribe, unsubscribe, disconnect) gets a key that Paho
//! passes back to its callback as the context. The key is an integer, never
//! dereferenced: the callback looks it up here and hands the reply to whoever
//! awaits it. A reply for a key that is not registered — a second callback for one
//! command, or one after the entry was swept — is ignored, so no pattern of Paho
//! callbacks can double-free or touch freed memory.
//!
//! Locking: each shard's lock is a leaf. It is never held across a call into Paho
//! (keys are registered before the call and cancelled after a refused one) nor
//! while a waiter is woken (the entry is removed first, then completed).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::oneshot;

/// The context Paho hands back: never 0 (a null context).
pub(crate) type Key = usize;

/// What the broker (or Paho) answered.
#[derive(Debug)]
pub(crate) enum Reply {
    Done(Response),
    Failed(Failure),
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
}

impl Failure {
    pub(crate) fn code(code: i32) -> Failure {
        Failure {
            code,
            ..Failure::default()
        }
    }
}

struct Entry {
    engine: u64,
    tx: oneshot::Sender<Reply>,
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

/// Registers a command of `engine` before it is handed to Paho.
pub(crate) fn register(engine: u64) -> (Key, oneshot::Receiver<Reply>) {
    let (tx, rx) = oneshot::channel();
    let key = loop {
        let key = NEXT.fetch_add(1, Ordering::Relaxed);
        if key != 0 {
            break key;
        }
    };
    shard(key).insert(key, Entry { engine, tx });
    (key, rx)
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
        // The waiter may be gone (its call timed out): nothing to do then.
        let _ = entry.tx.send(reply);
    }
}

/// Fails every command of `engine` still registered: called once its Paho client is
/// destroyed, when no callback can come any more.
pub(crate) fn sweep(engine: u64, reply: impl Fn() -> Reply) {
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
            let _ = entry.tx.send(reply());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_reaches_its_waiter_once() {
        let (key, mut rx) = register(1);
        complete(key, Reply::Done(Response::default()));
        assert!(matches!(rx.try_recv(), Ok(Reply::Done(_))));
        // A second callback for the same key is ignored.
        complete(key, Reply::Failed(Failure::code(-1)));
    }

    #[test]
    fn cancel_and_sweep() {
        let (key, mut rx) = register(2);
        cancel(key);
        assert!(rx.try_recv().is_err());
        complete(key, Reply::Done(Response::default()));

        let (_, mut a) = register(3);
        let (_, mut b) = register(4);
        sweep(3, || Reply::Failed(Failure::code(-11)));
        assert!(matches!(a.try_recv(), Ok(Reply::Failed(f)) if f.code == -11));
        assert!(b.try_recv().is_err(), "another engine's command stays");
        sweep(4, || Reply::Failed(Failure::code(-11)));
        assert!(b.try_recv().is_ok());
    }
}
