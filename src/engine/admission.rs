//! Admission: how many of a connection's calls the engine holds at once.
//!
//! Paho C keeps every client's commands in one process-wide list, and its send thread
//! looks for the next command it may send by walking that list from the head
//! (`MQTTAsync_processCommand`). While a client's in-flight window is full, none of its
//! commands may go, and the walk passes every one of them — after each packet sent, and
//! at each new command; each QoS 1/2 publish also searches that list for a free packet
//! identifier (`MQTTAsync_assignMsgId`). A burst far wider than the window is therefore
//! quadratic — 64,000 QoS 1 publishes awaited together behind a window of 20 ran at 2,158
//! msg/s, 4,000 at 46,252 (BENCHMARKS.md, C8) — and every other client of the process
//! waited behind the same walk.
//!
//! So a connection hands the engine at most its window plus [`SLACK`] calls that take a
//! place in the window (QoS 1/2 publishes, subscribes, unsubscribes); the next wait here,
//! in call order, and go as the engine's calls finish. The slack keeps the engine's queue
//! from running dry between a finished call and the next one handed over, and bounds the
//! walk at a few dozen commands. A QoS 0 publish takes no place, but waits behind those
//! waiting, so that calls reach the engine — and the wire — in the order they were made.
//!
//! Only the waiter at the head of the line may go, and it hands its call to the engine
//! before it leaves the line (see [`Admitted::handed_over`]), so that a waiter woken
//! later cannot overtake it. With `max_queued_outgoing_messages` set the engine's queue
//! is bounded by the user's choice, and its refusals are that option's contract: no
//! admission then.
//!
//! On MQTT 3.1.1 with the default window the line also keeps the broker's own window for
//! incoming QoS 2 exchanges ([`Admission::new`]'s `exactly_once`). Mosquitto (2.0.11 as
//! Debian 12 ships it, with upstream's fix for CVE-2023-28366) holds every QoS 2 PUBLISH it
//! received until its PUBREL, counts those against `max_inflight_messages` (20 by default),
//! and answers a QoS 1 or 2 PUBLISH that arrives while that count is full with a reason
//! code a 3.1.1 client cannot see (`handle__publish` in its `src/handle_publish.c`:
//! `db__ready_for_flight` false, then `process_bad_message`, a PUBACK or PUBREC with 0x97
//! sent as success) — a message lost silently (test
//! `flow::mosquitto_drops_publishes_while_its_qos2_window_is_full`). QoS 1 PUBLISHes are
//! acknowledged as they arrive and do not count. So a QoS 2 publish takes a QoS 2 place as
//! well, and the places in the engine's hands never reach the broker's count while a QoS 1
//! publish is there too: QoS 2 publishes may fill all places only with no QoS 1 one held,
//! and a QoS 1 publish goes only with a QoS 2 place free. Whatever the broker holds is
//! among what the engine holds (the broker forgets a QoS 2 message at its PUBREL, before
//! the PUBCOMP that ends the call here), so a PUBLISH — sent first, or again after a
//! reconnect — always finds the broker's count below full.
//!
//! A QoS 2 place could come back half a round trip earlier, when Paho writes the PUBREL,
//! but Paho C shows that moment only in a client persistence store (which then copies
//! every QoS 1/2 payload in and out) and in its process-wide protocol trace (a formatted
//! record of every packet, under one global mutex): measured, each costs more than the
//! wider window gains (`examples/pubrel_hook.rs`, BENCHMARKS.md C12 and C16).
//!
//! A call holds a place from its admission until the engine reports its command: the
//! command's registry entry holds it (a [`Place`]) once the command is handed over, so
//! that a call that timed out while the engine still has its command keeps the place
//! until the engine is done with it. A call the engine thread hands over (no registry
//! ticket) keeps the place itself until it ends.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

/// Calls handed to the engine beyond its window, waiting there for a place.
pub(crate) const SLACK: usize = 32;

/// What a call takes of its connection's window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Claim {
    /// A QoS 0 publish: no place (it still waits behind the line).
    Nothing,
    /// A subscribe or unsubscribe: a place.
    Place,
    /// A QoS 1 publish: a place, and while QoS 2 places are counted, one of them free.
    AtLeastOnce,
    /// A QoS 2 publish: a place and a QoS 2 place.
    ExactlyOnce,
}

impl Claim {
    fn takes_place(self) -> bool {
        self != Claim::Nothing
    }
}

/// One connection's line of calls on their way to the engine.
pub(crate) struct Admission {
    state: Mutex<State>,
    /// The line's length, stored under the lock: a QoS 0 publish with nobody waiting
    /// goes without taking it.
    waiting: AtomicUsize,
}

struct State {
    /// Places: window plus slack; `None` when nothing is bounded here.
    capacity: Option<usize>,
    /// Places taken: by calls admitted and not yet handed over, and by commands in the
    /// engine's hands.
    taken: usize,
    /// QoS 2 places (the broker's window for QoS 2 exchanges); `None` when not counted.
    exactly_once: Option<usize>,
    /// Of `taken`: by QoS 1 publishes, and by QoS 2 ones.
    taken_qos1: usize,
    taken_qos2: usize,
    /// Calls waiting, in call order.
    line: VecDeque<Waiter>,
    next_id: u64,
}

struct Waiter {
    id: u64,
    /// What the call takes.
    claim: Claim,
    /// Admitted: at the head, its place taken, its call being handed over.
    admitted: bool,
    waker: Option<Waker>,
}

impl State {
    /// The waker of the head of the line when it may go now.
    fn head_to_wake(&mut self) -> Option<Waker> {
        let head = self.line.front()?;
        if head.admitted || !self.fits(head.claim) {
            return None;
        }
        self.line.front_mut()?.waker.take()
    }

    /// Whether a call that takes `claim` may go now.
    fn fits(&self, claim: Claim) -> bool {
        let window = self.capacity.is_none_or(|c| self.taken < c);
        let qos1_held = usize::from(self.taken_qos1 > 0);
        match claim {
            Claim::Nothing => true,
            Claim::Place => window,
            Claim::AtLeastOnce => window && self.exactly_once.is_none_or(|c| self.taken_qos2 < c),
            Claim::ExactlyOnce => {
                window
                    && self
                        .exactly_once
                        .is_none_or(|c| self.taken_qos2 + 1 + qos1_held <= c)
            }
        }
    }

    /// Counts what `claim` takes as taken, or as given back.
    fn count(&mut self, claim: Claim, taken: bool) {
        let add = |n: &mut usize| *n = if taken { *n + 1 } else { n.saturating_sub(1) };
        match claim {
            Claim::Nothing => return,
            Claim::Place => {}
            Claim::AtLeastOnce => add(&mut self.taken_qos1),
            Claim::ExactlyOnce => add(&mut self.taken_qos2),
        }
        add(&mut self.taken);
    }

    /// The line is in id order: a waiter is found in O(log n) (a burst of 64,000 calls
    /// makes a line that long).
    fn find(&mut self, id: u64) -> Option<&mut Waiter> {
        let at = self.line.binary_search_by_key(&id, |w| w.id).ok()?;
        self.line.get_mut(at)
    }

    fn remove(&mut self, id: u64) -> Option<Waiter> {
        let at = self.line.binary_search_by_key(&id, |w| w.id).ok()?;
        self.line.remove(at)
    }
}

fn wake(waker: Option<Waker>) {
    if let Some(w) = waker {
        w.wake();
    }
}

impl Admission {
    /// A line bounded by `window` plus [`SLACK`], or not bounded; with `exactly_once`, the
    /// broker's window for QoS 2 exchanges is kept too (see the module's documentation).
    pub(crate) fn new(window: Option<u16>, exactly_once: Option<u16>) -> Admission {
        Admission {
            state: Mutex::new(State {
                capacity: window.map(capacity),
                taken: 0,
                exactly_once: exactly_once.map(usize::from),
                taken_qos1: 0,
                taken_qos2: 0,
                line: VecDeque::new(),
                next_id: 0,
            }),
            waiting: AtomicUsize::new(0),
        }
    }

    /// Removes waiter `id` (if there) and returns the waker of the head if it may go now.
    fn leave(&self, state: &mut State, id: Option<u64>) -> (Option<Waiter>, Option<Waker>) {
        let removed = id.and_then(|id| state.remove(id));
        self.waiting.store(state.line.len(), Ordering::Release);
        (removed, state.head_to_wake())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Each critical section is a few assignments: a poisoned lock is consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the window of a new link (on MQTT 5 the broker's Receive Maximum may lower
    /// it). Does nothing when the line is not bounded.
    pub(crate) fn set_window(&self, window: u16) {
        let mut state = self.lock();
        if state.capacity.is_none() {
            return;
        }
        state.capacity = Some(capacity(window));
        let waker = state.head_to_wake();
        drop(state);
        wake(waker);
    }

    /// Gives back a place; the head of the line may go.
    fn give_back(&self, claim: Claim) {
        let mut state = self.lock();
        state.count(claim, false);
        let waker = state.head_to_wake();
        drop(state);
        wake(waker);
    }

    /// Admits a call at once when no call waits and it fits; otherwise puts it at the end
    /// of the line, to be awaited.
    pub(crate) fn enter(&self, claim: Claim) -> Result<Admitted<'_>, Queued<'_>> {
        // A call made after one that waits, on the same task, sees its entry: calls of
        // one task keep their order. (Calls of different tasks have none to keep.)
        if claim == Claim::Nothing && self.waiting.load(Ordering::Acquire) == 0 {
            return Ok(Admitted {
                admission: self,
                claim,
                waiter: None,
            });
        }
        let mut state = self.lock();
        if state.line.is_empty() && state.fits(claim) {
            state.count(claim, true);
            return Ok(Admitted {
                admission: self,
                claim,
                waiter: None,
            });
        }
        let id = state.next_id;
        state.next_id += 1;
        state.line.push_back(Waiter {
            id,
            claim,
            admitted: false,
            waker: None,
        });
        self.waiting.store(state.line.len(), Ordering::Release);
        Err(Queued {
            admission: self,
            id: Some(id),
        })
    }
}

fn capacity(window: u16) -> usize {
    usize::from(window) + SLACK
}

/// A call in the line; resolves to [`Admitted`] when the call may go. Dropped before,
/// it leaves the line.
pub(crate) struct Queued<'a> {
    admission: &'a Admission,
    /// `None` once admitted.
    id: Option<u64>,
}

impl<'a> Future for Queued<'a> {
    type Output = Admitted<'a>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Admitted<'a>> {
        let Some(id) = self.id else {
            // Polled after completion: nothing more to give.
            return Poll::Pending;
        };
        let admission = self.admission;
        let mut state = admission.lock();
        let Some(head) = state.line.front() else {
            return Poll::Pending;
        };
        let claim = head.claim;
        if head.id == id && state.fits(claim) {
            state.count(claim, true);
            let old = state.line.front_mut().and_then(|head| {
                head.admitted = true;
                head.waker.take()
            });
            drop(state);
            drop(old);
            self.id = None;
            return Poll::Ready(Admitted {
                admission,
                claim,
                waiter: Some(id),
            });
        }
        let stale = state
            .find(id)
            .and_then(|me| super::slot::keep_waker(&mut me.waker, cx.waker()));
        drop(state);
        drop(stale);
        Poll::Pending
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        let Some(id) = self.id else { return };
        let mut state = self.admission.lock();
        // The head's leaving may let the next go.
        let (removed, waker) = self.admission.leave(&mut state, Some(id));
        drop(state);
        drop(removed);
        wake(waker);
    }
}

/// A call admitted to the engine: its place, given back when dropped.
pub(crate) struct Admitted<'a> {
    admission: &'a Admission,
    /// What it holds; `Nothing` once given back.
    claim: Claim,
    /// The call's entry at the head of the line, until it is handed over.
    waiter: Option<u64>,
}

impl Admitted<'_> {
    /// Leaves the line once the call is in the engine's hands, letting the next go.
    /// `placed`: its commands' registry entries took places of their own (the call was
    /// armed), so the call's own place is given back now.
    pub(crate) fn handed_over(&mut self, placed: bool) {
        let give_back = if placed {
            std::mem::replace(&mut self.claim, Claim::Nothing)
        } else {
            Claim::Nothing
        };
        self.release(give_back);
    }

    /// Leaves the line if still in it, and gives back what `give_back` holds.
    fn release(&mut self, give_back: Claim) {
        let id = self.waiter.take();
        if id.is_none() && !give_back.takes_place() {
            return;
        }
        let mut state = self.admission.lock();
        state.count(give_back, false);
        let (removed, waker) = self.admission.leave(&mut state, id);
        drop(state);
        drop(removed);
        wake(waker);
    }
}

/// A place held by a command in the engine's hands (in its registry entry), given back
/// when the entry goes — when Paho reports the command, or its client is destroyed.
pub(crate) struct Place(Arc<Admission>, Claim);

impl Place {
    /// Takes what `claim` takes, whether or not it is free: the command is being handed
    /// over (its call holds the same until then).
    pub(crate) fn take(admission: &Arc<Admission>, claim: Claim) -> Place {
        admission.lock().count(claim, true);
        Place(admission.clone(), claim)
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        self.0.give_back(self.1);
    }
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        let give_back = std::mem::replace(&mut self.claim, Claim::Nothing);
        self.release(give_back);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::test_waker::counting;

    fn poll<'a>(q: &mut Queued<'a>, waker: &Waker) -> Poll<Admitted<'a>> {
        Pin::new(q).poll(&mut Context::from_waker(waker))
    }

    fn admitted<'a>(q: &mut Queued<'a>, waker: &Waker) -> Admitted<'a> {
        match poll(q, waker) {
            Poll::Ready(a) => a,
            Poll::Pending => panic!("the head goes"),
        }
    }

    /// Every place of a line with a window of 1 taken.
    fn full(admission: &Admission) -> Vec<Admitted<'_>> {
        (0..capacity(1))
            .map(|_| admission.enter(Claim::Place).ok().expect("a place"))
            .collect()
    }

    /// Calls that wait (taking `claims`), polled once.
    fn waiting<'a>(admission: &'a Admission, claims: &[Claim], waker: &Waker) -> Vec<Queued<'a>> {
        claims
            .iter()
            .map(|&t| {
                let mut q = admission.enter(t).err().expect("waits");
                assert!(poll(&mut q, waker).is_pending());
                q
            })
            .collect()
    }

    #[test]
    fn calls_beyond_window_and_slack_wait_and_go_in_call_order() {
        let admission = Admission::new(Some(1), None);
        let mut held = full(&admission);
        let (wakes, waker) = counting();
        let mut line = waiting(&admission, &[Claim::Place, Claim::Place], &waker);
        // One place comes back: only the head is woken, and only it may go.
        held.pop();
        assert_eq!(wakes.get(), 1);
        assert!(poll(&mut line[1], &waker).is_pending());
        let mut head = admitted(&mut line[0], &waker);
        // Until it is handed over, the head holds the line even with a place free.
        held.pop();
        assert!(poll(&mut line[1], &waker).is_pending());
        head.handed_over(false);
        assert!(poll(&mut line[1], &waker).is_ready());
    }

    #[test]
    fn a_qos0_publish_takes_no_place_but_waits_behind_the_line() {
        let admission = Admission::new(Some(1), None);
        let held = full(&admission);
        assert!(
            admission.enter(Claim::Nothing).is_ok(),
            "nobody waits: it goes"
        );
        let (_, waker) = counting();
        let mut line = waiting(&admission, &[Claim::Place, Claim::Nothing], &waker);
        drop(held);
        admitted(&mut line[0], &waker).handed_over(false);
        assert!(poll(&mut line[1], &waker).is_ready());
    }

    #[test]
    fn a_waiter_that_leaves_the_head_lets_the_next_go() {
        let admission = Admission::new(Some(1), None);
        let mut held = full(&admission);
        let (wakes, waker) = counting();
        let mut line = waiting(&admission, &[Claim::Place, Claim::Place], &waker);
        held.pop();
        assert_eq!(wakes.get(), 1, "the head is woken");
        drop(line.remove(0));
        assert_eq!(wakes.get(), 2, "then the next");
        assert!(poll(&mut line[0], &waker).is_ready());
    }

    #[test]
    fn an_admitted_call_dropped_before_its_handover_gives_back_place_and_turn() {
        let admission = Admission::new(Some(1), None);
        let mut held = full(&admission);
        let (_, waker) = counting();
        let mut line = waiting(&admission, &[Claim::Place, Claim::Place], &waker);
        held.pop();
        drop(admitted(&mut line[0], &waker));
        assert!(poll(&mut line[1], &waker).is_ready());
        assert_eq!(admission.lock().line.len(), 0);
    }

    #[test]
    fn a_wider_window_lets_waiters_go() {
        let admission = Admission::new(Some(1), None);
        let _held = full(&admission);
        let (wakes, waker) = counting();
        let mut line = waiting(&admission, &[Claim::Place], &waker);
        admission.set_window(2);
        assert_eq!(wakes.get(), 1);
        assert!(poll(&mut line[0], &waker).is_ready());
    }

    #[test]
    fn a_command_in_the_engines_hands_keeps_its_place_after_the_call() {
        let admission = Arc::new(Admission::new(Some(1), None));
        let mut held = full(&admission);
        let (_, waker) = counting();
        let mut line = waiting(&admission, &[Claim::Place], &waker);
        // The call's command went to the engine, which holds it beyond the call's end.
        let mut call = held.pop().expect("a call");
        let place = Place::take(&admission, Claim::Place);
        call.handed_over(true);
        drop(call);
        assert!(
            poll(&mut line[0], &waker).is_pending(),
            "the engine holds it"
        );
        drop(place);
        assert!(poll(&mut line[0], &waker).is_ready());
    }

    #[test]
    fn an_unbounded_line_admits_everything() {
        let admission = Admission::new(None, None);
        let held: Vec<_> = (0..10_000).map(|_| admission.enter(Claim::Place)).collect();
        assert!(held.iter().all(Result::is_ok));
    }

    /// `n` calls taking `claim`, admitted at once.
    fn admit(admission: &Admission, claim: Claim, n: usize) -> Vec<Admitted<'_>> {
        (0..n)
            .map(|_| admission.enter(claim).ok().expect("admitted at once"))
            .collect()
    }

    #[test]
    fn qos2_publishes_fill_the_qos2_places_only_with_no_qos1_publish_held() {
        use Claim::{AtLeastOnce, ExactlyOnce};
        let admission = Admission::new(Some(100), Some(20));
        // QoS 2 alone: all 20 places.
        let mut qos2 = admit(&admission, ExactlyOnce, 20);
        let (_, waker) = counting();
        // A QoS 1 publish waits for a QoS 2 place to be free (the broker's count is full).
        let mut line = waiting(&admission, &[AtLeastOnce], &waker);
        qos2.pop();
        let mut qos1 = admitted(&mut line[0], &waker);
        qos1.handed_over(false);
        // With a QoS 1 publish held, QoS 2 publishes may take 19 places, not 20.
        assert!(
            admission.enter(ExactlyOnce).is_err(),
            "19 taken, a QoS 1 held"
        );
        drop(qos1);
        assert!(admission.lock().line.is_empty());
        let last = admission.enter(ExactlyOnce);
        assert!(last.is_ok(), "no QoS 1 held: the 20th goes");
    }

    #[test]
    fn qos1_publishes_take_the_window_beyond_the_qos2_places() {
        use Claim::{AtLeastOnce, ExactlyOnce, Place};
        let admission = Admission::new(Some(100), Some(20));
        let _qos1 = admit(&admission, AtLeastOnce, 60);
        let _qos2 = admit(&admission, ExactlyOnce, 19);
        let _others = admit(&admission, Place, 100 + SLACK - 79);
        assert!(admission.enter(AtLeastOnce).is_err(), "the window is full");
    }

    #[test]
    fn a_qos2_publish_at_the_head_holds_the_calls_behind_it() {
        use Claim::{AtLeastOnce, ExactlyOnce};
        let admission = Admission::new(Some(100), Some(20));
        let mut qos2 = admit(&admission, ExactlyOnce, 19);
        let _qos1 = admit(&admission, AtLeastOnce, 1);
        let (_, waker) = counting();
        let mut line = waiting(&admission, &[ExactlyOnce, AtLeastOnce], &waker);
        // The QoS 1 publish behind would fit, but calls keep their order.
        assert!(poll(&mut line[1], &waker).is_pending());
        qos2.pop();
        admitted(&mut line[0], &waker).handed_over(false);
        assert!(poll(&mut line[1], &waker).is_ready());
    }

    #[test]
    fn a_command_in_the_engines_hands_keeps_its_qos2_place() {
        let admission = Arc::new(Admission::new(Some(100), Some(1)));
        let mut call = admission.enter(Claim::ExactlyOnce).ok().expect("a place");
        let place = Place::take(&admission, Claim::ExactlyOnce);
        call.handed_over(true);
        drop(call);
        assert!(
            admission.enter(Claim::ExactlyOnce).is_err(),
            "the engine holds it"
        );
        drop(place);
        assert!(admission.lock().line.is_empty());
        assert!(admission.enter(Claim::ExactlyOnce).is_ok());
    }
}
