//! [`Call`]: the future of commands handed to Paho, and what it yields.
//!
//! Most calls are one command (a publish, a subscribe on MQTT 5): they hold one receiver
//! and yield one reply without a list allocated for either; an MQTT 3 subscribe of several
//! filters is several commands, collected in order.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::oneshot;

use super::errors;
use super::registry::{Failure, Reply};
use super::slot;
use super::thread::Withdraw;
use crate::Error;

/// Where the replies of a call's commands come, in order.
pub(crate) enum Handed {
    One(slot::Receiver),
    Many(Vec<slot::Receiver>),
}

impl From<slot::Receiver> for Handed {
    fn from(rx: slot::Receiver) -> Handed {
        Handed::One(rx)
    }
}

impl FromIterator<slot::Receiver> for Handed {
    fn from_iter<I: IntoIterator<Item = slot::Receiver>>(iter: I) -> Handed {
        Handed::Many(iter.into_iter().collect())
    }
}

/// The replies of a call's commands, in order.
#[derive(Debug)]
pub(crate) struct Replies {
    first: Option<Reply>,
    rest: Vec<Reply>,
}

impl Replies {
    pub(crate) fn one(reply: Reply) -> Replies {
        Replies {
            first: Some(reply),
            rest: Vec::new(),
        }
    }
}

impl IntoIterator for Replies {
    type Item = Reply;
    type IntoIter = std::iter::Chain<std::option::IntoIter<Reply>, std::vec::IntoIter<Reply>>;

    fn into_iter(self) -> Self::IntoIter {
        self.first.into_iter().chain(self.rest)
    }
}

/// Commands handed (or being handed) to Paho, awaiting their acknowledgements.
///
/// If its caller gives up, [`Call::abandon`] says whether anything reached Paho.
#[must_use]
pub(crate) struct Call {
    stage: Stage,
    /// Every command was registered with the caller's [`Ticket`](super::Ticket).
    pub(super) armed: bool,
}

enum Stage {
    /// Waiting for the engine thread to hand the commands over.
    Queued(oneshot::Receiver<Result<Handed, Error>>, Withdraw),
    /// Handed over: one command.
    One(slot::Receiver),
    /// Handed over: several commands, their replies collected in order.
    Many(Vec<slot::Receiver>, Vec<Reply>),
    Failed(Option<Error>),
}

/// What happened to an abandoned [`Call`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Abandoned {
    /// Nothing reached Paho.
    NeverSent,
    /// Paho has it: it may still be sent and acknowledged.
    MaybeSent,
}

impl Call {
    /// Commands handed over, whose replies come through `handed` (or a refusal).
    pub(crate) fn sent(handed: Result<Handed, Error>) -> Call {
        Call {
            stage: Stage::from(handed),
            armed: false,
        }
    }

    /// Commands being handed over on the engine thread, which sends where their replies
    /// come through `rx` unless the job is withdrawn.
    pub(super) fn queued(rx: oneshot::Receiver<Result<Handed, Error>>, job: Withdraw) -> Call {
        Call {
            stage: Stage::Queued(rx, job),
            armed: false,
        }
    }

    /// A call refused before anything was handed over.
    pub(crate) fn failed(e: Error) -> Call {
        Call::sent(Err(e))
    }

    /// Whether the call's wait ends by itself at its ticket's deadline ([`Reply::Expired`])
    /// and when its ticket's scope closes ([`Reply::Ended`]). A refused call is armed too:
    /// it ends at once.
    pub(crate) fn is_armed(&self) -> bool {
        self.armed
    }

    /// Gives up on the call; says whether Paho got it.
    pub(crate) fn abandon(self) -> Abandoned {
        match self.stage {
            Stage::Queued(_, withdraw) if withdraw.withdraw() => Abandoned::NeverSent,
            Stage::Queued(..) | Stage::One(_) | Stage::Many(..) => Abandoned::MaybeSent,
            Stage::Failed(_) => Abandoned::NeverSent,
        }
    }
}

impl From<Result<Handed, Error>> for Stage {
    fn from(handed: Result<Handed, Error>) -> Stage {
        match handed {
            Ok(Handed::One(rx)) => Stage::One(rx),
            Ok(Handed::Many(rx)) => Stage::Many(rx, Vec::new()),
            Err(e) => Stage::Failed(Some(e)),
        }
    }
}

/// A command's reply as the call sees it: an armed call's wait that ended first is an
/// error (Paho may still have the command); a reply never sent is Paho's "incomplete".
fn received(reply: Result<Reply, slot::Closed>) -> Result<Reply, Error> {
    match reply {
        Ok(Reply::Expired) => Err(Error::Timeout),
        Ok(Reply::Ended) => Err(Error::NotConnected),
        Ok(reply) => Ok(reply),
        Err(_) => Ok(Reply::Failed(Failure::code(errors::OPERATION_INCOMPLETE))),
    }
}

impl Future for Call {
    type Output = Result<Replies, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            match &mut self.stage {
                Stage::Queued(rx, _) => match Pin::new(rx).poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(handed)) => self.stage = Stage::from(handed),
                    Poll::Ready(Err(_)) => {
                        self.stage = Stage::Failed(Some(super::engine_thread_gone()));
                    }
                },
                Stage::One(rx) => {
                    return Pin::new(rx)
                        .poll(cx)
                        .map(|reply| received(reply).map(Replies::one));
                }
                Stage::Many(pending, done) => {
                    while let Some(rx) = pending.get_mut(done.len()) {
                        match Pin::new(rx).poll(cx) {
                            Poll::Pending => return Poll::Pending,
                            Poll::Ready(reply) => done.push(received(reply)?),
                        }
                    }
                    return Poll::Ready(Ok(Replies {
                        first: None,
                        rest: std::mem::take(done),
                    }));
                }
                Stage::Failed(e) => {
                    return Poll::Ready(Err(e.take().unwrap_or(Error::NotConnected)));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Response;

    fn codes(replies: Replies) -> Vec<Result<Vec<u8>, i32>> {
        replies
            .into_iter()
            .map(|r| match r {
                Reply::Done(r) => Ok(r.codes),
                Reply::Failed(f) => Err(f.code),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[tokio::test]
    async fn replies_come_in_command_order_and_cut_waits_are_errors() {
        let (tx, rx) = slot::channel();
        tx.send(Reply::Done(Response { codes: vec![1] }));
        let one = Call::sent(Ok(rx.into())).await.unwrap();
        assert_eq!(codes(one), vec![Ok(vec![1])]);

        let (channels, receivers): (Vec<_>, Vec<_>) = (0..3).map(|_| slot::channel()).unzip();
        let many = Call::sent(Ok(receivers.into_iter().collect()));
        let mut channels = channels.into_iter().rev();
        // Answered last to first; dropped unanswered: Paho's "incomplete".
        drop(channels.next());
        channels
            .next()
            .unwrap()
            .send(Reply::Done(Response { codes: vec![2] }));
        channels
            .next()
            .unwrap()
            .send(Reply::Done(Response { codes: vec![0] }));
        assert_eq!(
            codes(many.await.unwrap()),
            vec![Ok(vec![0]), Ok(vec![2]), Err(errors::OPERATION_INCOMPLETE)]
        );

        for (cut, expected) in [(Reply::Expired, "Timeout"), (Reply::Ended, "NotConnected")] {
            let (tx, rx) = slot::channel();
            tx.send(cut);
            let err = Call::sent(Ok(rx.into())).await.unwrap_err();
            assert_eq!(format!("{err:?}"), expected);
        }
    }
}
