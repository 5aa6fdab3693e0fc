//! Small helpers over this crate's client, shared by the integration tests.

use std::future::Future;
use std::time::Duration;

use aiomqtt::{Client, ClientBuilder, Connection, Message, Messages, ProtocolVersion};
use futures::StreamExt;

use super::broker::Broker;
use super::util::wait_until_async;

/// How long one expected delivery or log line may take.
pub const RECV: Duration = Duration::from_secs(5);

/// Waits (without blocking the runtime) until the broker's log contains `needle`.
#[track_caller]
pub fn wait_log<'a>(broker: &'a Broker, needle: &'a str) -> impl Future<Output = ()> + 'a {
    let loc = std::panic::Location::caller();
    async move {
        if !wait_until_async(RECV, || broker.log().contains(needle)).await {
            panic!(
                "broker log lacks {needle:?} after {RECV:?} (at {loc}):\n{}",
                broker.log()
            );
        }
    }
}

/// A builder for the broker's plain TCP `port`, with a 5 s timeout.
pub fn builder_on(port: u16, protocol: ProtocolVersion) -> ClientBuilder {
    Client::builder("127.0.0.1")
        .port(port)
        .protocol(protocol)
        .timeout(Duration::from_secs(5))
}

/// A connection on the broker's plain TCP `port` (see [`builder_on`]).
pub async fn connect_on(port: u16, protocol: ProtocolVersion) -> Connection {
    connect(builder_on(port, protocol)).await.1
}

/// Builds a client whose options are known to be valid.
#[track_caller]
pub fn build(builder: ClientBuilder) -> Client {
    builder.build().expect("valid options")
}

/// Builds and connects; the client comes back too, for reconnects.
pub async fn connect(builder: ClientBuilder) -> (Client, Connection) {
    let client = build(builder);
    let conn = client.connect().await.expect("connect");
    (client, conn)
}

/// The next message, which must arrive within [`RECV`].
#[track_caller]
pub fn recv(messages: &mut Messages) -> impl Future<Output = Message> + '_ {
    let loc = std::panic::Location::caller();
    async move {
        match tokio::time::timeout(RECV, messages.next()).await {
            Ok(Some(Ok(message))) => message,
            Ok(other) => panic!("expected a message at {loc}, got {other:?}"),
            Err(_) => panic!("no message within {RECV:?} at {loc}"),
        }
    }
}
