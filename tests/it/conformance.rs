//! The cross-broker conformance suite: ONE scenario set run against every broker and protocol
//! we know — Mosquitto with MQTT 3.1, 3.1.1 and 5; RabbitMQ's MQTT plugin (3.1.1); NATS's MQTT
//! listener (3.1.1, on JetStream); rumqttd's v4 (3.1.1) and v5 listeners. See
//! `support/brokers.rs` for how each broker is started and what it is declared to support.
//!
//! One test, [`broker_matrix`], runs the seven targets concurrently (each scenario of a target
//! in turn, each bounded), then:
//! 1. asserts that every observation matches what the broker's capabilities say, where they
//!    say something (recorded-only rows: CONNACK properties and the error situations, whose
//!    texts will change);
//! 2. asserts that every cell that differs from Mosquitto on the same protocol family
//!    (3.1.1 for the 3.x columns, 5 for the v5 ones) has a one-sentence explanation in
//!    [`NOTES`], and that no note is stale;
//! 3. writes `docs/brokers.md` once, from the collected results (only when every target ran
//!    and passed; otherwise the file goes to the test's temp dir, so a partial run never
//!    overwrites the committed table).
//!
//! Negative checks ("X is not delivered") never wait for silence: the same subscriber also
//! subscribes to a sentinel topic, the same publisher publishes the sentinel after X, and the
//! sentinel must be the next message. Those subscriptions are at QoS 0 so that NATS delivers
//! both through core NATS on one connection, in order (its QoS 1 subscriptions are separate
//! JetStream consumers, unordered with respect to each other).
//!
//! The Will is tested with a real abrupt end: a child process (this test binary, with
//! `AIOMQTT_CONFORMANCE_WILL_CLIENT` set) connects with a Will, says so on stdout, and is
//! SIGKILLed.
//!
//! The matrix runs in a child process of this test binary (`support::isolated`), killed after
//! `MATRIX_PROCESS`: a deadlock inside the crate can block a runtime worker thread, and with
//! it the timer that `with_timeout` relies on, so only a process-level bound turns such a
//! hang into a failure. Progress lines (`[conformance] <target>: <scenario>`) go to the
//! child's stderr and appear in the failure message.
//!
//! Environment: `AIOMQTT_REQUIRE_ALL_BROKERS=1` fails on a missing broker (else it is
//! skipped loudly); `AIOMQTT_CONFORMANCE_TARGETS=rumqttd-v5,nats-v311` runs only those
//! targets (the table then goes to the temp dir); `AIOMQTT_CONFORMANCE_LOGS=1` prints every
//! broker's log at the end.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::future::Future;
use std::io::Write as _;
use std::pin::Pin;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::support::brokers::{BrokerKind, MqttBroker, REQUIRE_ALL, require_all, skip_or_fail};
use crate::support::mqtt::{RECV, recv};
use crate::support::{
    ChildGuard, init_logging, isolated, unique_topic, wait_until_async, with_timeout,
};
use aiomqtt::{
    CleanStart, Client, ClientBuilder, Connection, Error, Message, Messages, Properties,
    ProtocolVersion, QoS, RetainHandling, SubscribeOptions, Will,
};
use futures::StreamExt;

/// Bound on the whole matrix, inside its child process.
const MATRIX: Duration = Duration::from_secs(60);
/// Bound on the child process that runs the matrix: it is killed after this. Needed on top
/// of [`MATRIX`] because an engine deadlock can block the runtime's timer (see the module
/// documentation).
const MATRIX_PROCESS: Duration = Duration::from_secs(90);
/// Bound on one scenario of one target.
const SCENARIO: Duration = Duration::from_secs(30);
/// Bound on starting one broker.
const START: Duration = Duration::from_secs(30);
/// The Will client's marker line on stdout, once connected.
const WILL_CONNECTED: &str = "WILL-CLIENT CONNECTED";
/// Set in the Will client child process.
const WILL_CLIENT_ENV: &str = "AIOMQTT_CONFORMANCE_WILL_CLIENT";
/// The Will client's own bound: it exits by itself if nobody kills it.
const WILL_CLIENT_LIFETIME: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// Targets and features

/// A broker spoken to with one protocol: one column of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Target {
    Mosquitto31,
    Mosquitto311,
    Mosquitto5,
    RabbitMq311,
    Nats311,
    Rumqttd311,
    Rumqttd5,
}

impl Target {
    const ALL: [Target; 7] = [
        Target::Mosquitto31,
        Target::Mosquitto311,
        Target::Mosquitto5,
        Target::RabbitMq311,
        Target::Nats311,
        Target::Rumqttd311,
        Target::Rumqttd5,
    ];

    fn broker(self) -> BrokerKind {
        match self {
            Target::Mosquitto31 | Target::Mosquitto311 | Target::Mosquitto5 => {
                BrokerKind::Mosquitto
            }
            Target::RabbitMq311 => BrokerKind::RabbitMq,
            Target::Nats311 => BrokerKind::Nats,
            Target::Rumqttd311 | Target::Rumqttd5 => BrokerKind::Rumqttd,
        }
    }

    fn protocol(self) -> ProtocolVersion {
        match self {
            Target::Mosquitto31 => ProtocolVersion::V31,
            Target::Mosquitto5 | Target::Rumqttd5 => ProtocolVersion::V5,
            _ => ProtocolVersion::V311,
        }
    }

    fn is_v5(self) -> bool {
        self.protocol() == ProtocolVersion::V5
    }

    /// The column heading.
    fn label(self) -> &'static str {
        match self {
            Target::Mosquitto31 => "Mosquitto 3.1",
            Target::Mosquitto311 => "Mosquitto 3.1.1",
            Target::Mosquitto5 => "Mosquitto 5",
            Target::RabbitMq311 => "RabbitMQ 3.1.1",
            Target::Nats311 => "NATS 3.1.1",
            Target::Rumqttd311 => "rumqttd 3.1.1",
            Target::Rumqttd5 => "rumqttd 5",
        }
    }

    /// The name in `AIOMQTT_CONFORMANCE_TARGETS` and in topics (no dots: NATS maps them).
    fn key(self) -> &'static str {
        match self {
            Target::Mosquitto31 => "mosquitto-v31",
            Target::Mosquitto311 => "mosquitto-v311",
            Target::Mosquitto5 => "mosquitto-v5",
            Target::RabbitMq311 => "rabbitmq-v311",
            Target::Nats311 => "nats-v311",
            Target::Rumqttd311 => "rumqttd-v311",
            Target::Rumqttd5 => "rumqttd-v5",
        }
    }

    /// The column every cell is compared with.
    fn reference(self) -> Target {
        if self.is_v5() {
            Target::Mosquitto5
        } else {
            Target::Mosquitto311
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Section {
    Core,
    V5,
    Connack,
    Errors,
}

impl Section {
    fn title(self) -> &'static str {
        match self {
            Section::Core => "Every protocol",
            Section::V5 => "MQTT 5 features",
            Section::Connack => "CONNACK properties (MQTT 5; the value the broker sent)",
            Section::Errors => "Error situations (what this crate returns today)",
        }
    }
}

/// One row of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Feature {
    ConnectDisconnect,
    SubackCodes,
    PublishQos0,
    PublishQos1,
    PublishQos2,
    BurstDefaultWindow,
    RetainedLateSubscriber,
    RetainedCleared,
    WillOnKill,
    SessionPresent,
    SessionQueuedQos1,
    Unsubscribe,
    UserProperties,
    MessageExpiryForwarded,
    MessageExpiryEnforced,
    SubscriptionIdentifier,
    NoLocal,
    RetainHandlingDoNotSend,
    RetainHandlingSendIfNew,
    AssignedClientIdentifier,
    ConnackReceiveMaximum,
    ConnackMaximumQos,
    ConnackRetainAvailable,
    ConnackMaximumPacketSize,
    ConnackTopicAliasMaximum,
    ConnackSubscriptionIdentifiersAvailable,
    ConnackSharedSubscriptionAvailable,
    ErrV5ConnectToV3Listener,
    ErrHugeClientIdentifier,
    ErrPersistentWithoutIdentifier,
    ErrQos2PublishWithoutQos2,
}

impl Feature {
    fn section(self) -> Section {
        use Feature::*;
        match self {
            ConnectDisconnect
            | SubackCodes
            | PublishQos0
            | PublishQos1
            | PublishQos2
            | BurstDefaultWindow
            | RetainedLateSubscriber
            | RetainedCleared
            | WillOnKill
            | SessionPresent
            | SessionQueuedQos1
            | Unsubscribe => Section::Core,
            UserProperties
            | MessageExpiryForwarded
            | MessageExpiryEnforced
            | SubscriptionIdentifier
            | NoLocal
            | RetainHandlingDoNotSend
            | RetainHandlingSendIfNew
            | AssignedClientIdentifier => Section::V5,
            ConnackReceiveMaximum
            | ConnackMaximumQos
            | ConnackRetainAvailable
            | ConnackMaximumPacketSize
            | ConnackTopicAliasMaximum
            | ConnackSubscriptionIdentifiersAvailable
            | ConnackSharedSubscriptionAvailable => Section::Connack,
            ErrV5ConnectToV3Listener
            | ErrHugeClientIdentifier
            | ErrPersistentWithoutIdentifier
            | ErrQos2PublishWithoutQos2 => Section::Errors,
        }
    }

    fn label(self) -> &'static str {
        use Feature::*;
        match self {
            ConnectDisconnect => "Connect, then disconnect",
            SubackCodes => "SUBACK codes for QoS 0 / 1 / 2 requests",
            PublishQos0 => "Publish QoS 0 round trip (delivered QoS)",
            PublishQos1 => "Publish QoS 1 round trip (delivered QoS)",
            PublishQos2 => "Publish QoS 2 round trip (delivered QoS)",
            BurstDefaultWindow => {
                "500 publishes at once at the broker's highest QoS, default window: each delivered once"
            }
            RetainedLateSubscriber => "Retained message delivered to a late subscriber",
            RetainedCleared => "Retained message cleared by an empty retained publish",
            WillOnKill => "Will published when the client process is SIGKILLed",
            SessionPresent => "Persistent session: Session Present on return",
            SessionQueuedQos1 => "Persistent session: QoS 1 sent while away is delivered",
            Unsubscribe => "Unsubscribe stops delivery",
            UserProperties => "User properties round trip (order, repeats)",
            MessageExpiryForwarded => "Message expiry interval forwarded",
            MessageExpiryEnforced => "Expired retained message not delivered",
            SubscriptionIdentifier => "Subscription identifier on delivered messages",
            NoLocal => "No Local",
            RetainHandlingDoNotSend => "Retain Handling 2 (do not send)",
            RetainHandlingSendIfNew => "Retain Handling 1 (send if new subscription)",
            AssignedClientIdentifier => "Assigned Client Identifier for an empty one",
            ConnackReceiveMaximum => "Receive Maximum",
            ConnackMaximumQos => "Maximum QoS",
            ConnackRetainAvailable => "Retain Available",
            ConnackMaximumPacketSize => "Maximum Packet Size",
            ConnackTopicAliasMaximum => "Topic Alias Maximum",
            ConnackSubscriptionIdentifiersAvailable => "Subscription Identifiers Available",
            ConnackSharedSubscriptionAvailable => "Shared Subscription Available",
            ErrV5ConnectToV3Listener => "MQTT 5 CONNECT to a 3.1.1-only listener",
            ErrHugeClientIdentifier => "70,000-byte client identifier",
            ErrPersistentWithoutIdentifier => {
                "Persistent session without an identifier (3.x: clean_session(false); 5: CleanStart::Never)"
            }
            ErrQos2PublishWithoutQos2 => "QoS 2 publish to a broker without QoS 2",
        }
    }
}

/// What a cell shows. Cells are compared by mark only; `detail` is documentation.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Mark {
    Yes,
    No,
    Na,
    Text(String),
}

impl Mark {
    fn render(&self) -> String {
        match self {
            Mark::Yes => "✓".into(),
            Mark::No => "✗".into(),
            Mark::Na => "n.a.".into(),
            Mark::Text(t) => t.clone(),
        }
    }
}

#[derive(Clone, Debug)]
struct Cell {
    mark: Mark,
    /// What was observed (an error's text, a value), shown in the doc's detail section for
    /// error rows and in failure messages.
    detail: Option<String>,
}

impl Cell {
    fn mark(mark: Mark) -> Cell {
        Cell { mark, detail: None }
    }
    fn na() -> Cell {
        Cell::mark(Mark::Na)
    }
    fn bool(ok: bool, detail: impl Into<String>) -> Cell {
        Cell {
            mark: if ok { Mark::Yes } else { Mark::No },
            detail: Some(detail.into()),
        }
    }
    fn text(text: impl Into<String>, detail: Option<String>) -> Cell {
        Cell {
            mark: Mark::Text(text.into()),
            detail,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Expectations: what the capabilities say (None = recorded only)

fn expected(target: Target, feature: Feature) -> Option<Mark> {
    use Feature::*;
    let caps = target.broker().capabilities();
    let yes_no = |b: bool| Some(if b { Mark::Yes } else { Mark::No });
    let v5 = |f: fn(&crate::support::brokers::V5Capabilities) -> bool| {
        if target.is_v5() {
            caps.v5
                .as_ref()
                .map(|c| if f(c) { Mark::Yes } else { Mark::No })
        } else {
            Some(Mark::Na)
        }
    };
    let max = caps.max_qos.as_u8();
    match feature {
        ConnectDisconnect | Unsubscribe | BurstDefaultWindow => Some(Mark::Yes),
        SubackCodes => Some(Mark::Text(
            (0..=2u8)
                .map(|q| q.min(max).to_string())
                .collect::<Vec<_>>()
                .join(" / "),
        )),
        // The subscriber asked for QoS 2 and was granted `max`.
        PublishQos0 | PublishQos1 | PublishQos2 => {
            let published = match feature {
                PublishQos0 => 0,
                PublishQos1 => 1,
                _ => 2,
            };
            if published > max {
                None
            } else if caps.upgrades_qos_to_subscription {
                Some(Mark::Text(format!("✓ QoS {max}")))
            } else {
                Some(Mark::Text(format!("✓ QoS {published}")))
            }
        }
        RetainedLateSubscriber | RetainedCleared => yes_no(caps.retained),
        WillOnKill => yes_no(caps.will),
        // An MQTT 3.1 CONNACK has no Session Present flag.
        SessionPresent if target.protocol() == ProtocolVersion::V31 => Some(Mark::No),
        SessionPresent | SessionQueuedQos1 => {
            if target.is_v5() {
                v5(|c| c.session_expiry)
            } else {
                yes_no(caps.persistent_sessions)
            }
        }
        UserProperties => v5(|c| c.user_properties),
        MessageExpiryForwarded => v5(|c| c.message_expiry_forwarded),
        MessageExpiryEnforced => v5(|c| c.message_expiry_enforced),
        SubscriptionIdentifier => v5(|c| c.subscription_identifiers),
        NoLocal => v5(|c| c.no_local),
        RetainHandlingDoNotSend => v5(|c| c.retain_handling_do_not_send),
        RetainHandlingSendIfNew => v5(|c| c.retain_handling_send_if_new),
        AssignedClientIdentifier => v5(|c| c.assigned_client_identifier),
        ConnackReceiveMaximum
        | ConnackMaximumQos
        | ConnackRetainAvailable
        | ConnackMaximumPacketSize
        | ConnackTopicAliasMaximum
        | ConnackSubscriptionIdentifiersAvailable
        | ConnackSharedSubscriptionAvailable => (!target.is_v5()).then_some(Mark::Na),
        ErrV5ConnectToV3Listener => v5_listener(target).then_some(Mark::Na),
        ErrQos2PublishWithoutQos2 => (max == 2).then_some(Mark::Na),
        ErrHugeClientIdentifier | ErrPersistentWithoutIdentifier => None,
    }
}

/// Whether the target's listener speaks MQTT 5 (rumqttd's v4 listener does not).
fn v5_listener(target: Target) -> bool {
    match target {
        Target::Rumqttd311 => false,
        t => t.broker().capabilities().supports(ProtocolVersion::V5),
    }
}

// ---------------------------------------------------------------------------------------------
// NOTES: one sentence for every cell that differs from Mosquitto (3.1.1 for the 3.x columns,
// 5 for the v5 ones). The test fails on a difference without a note and on a note without a
// difference. Notes on the Mosquitto columns explain the reference itself.

const NOTES: &[(Target, Feature, &str)] = &[
    (
        Target::Mosquitto31,
        Feature::SessionPresent,
        "An MQTT 3.1 CONNACK has no Session Present flag, so `session_present()` is false \
         although Mosquitto resumed the session (the next row shows the queued message).",
    ),
    (
        Target::Mosquitto31,
        Feature::ErrPersistentWithoutIdentifier,
        "On MQTT 3.1 this crate sends a random 22-character identifier when none is set (3.1 \
         requires one), so the broker never sees an empty identifier.",
    ),
    (
        Target::RabbitMq311,
        Feature::SubackCodes,
        "RabbitMQ's MQTT plugin has no QoS 2: a QoS 2 subscription is granted QoS 1.",
    ),
    (
        Target::RabbitMq311,
        Feature::PublishQos2,
        "RabbitMQ acknowledges a QoS 2 PUBLISH with a PUBACK, as if it were QoS 1, and \
         forwards it at QoS 1: the message arrives, but the publisher's call fails (see the \
         error situations).",
    ),
    (
        Target::RabbitMq311,
        Feature::ErrQos2PublishWithoutQos2,
        "On the wire: PUBLISH (QoS 2), RabbitMQ's PUBACK, then the Paho engine sends \
         DISCONNECT and closes: the call fails with ConnectionLost although the message was \
         delivered (at QoS 1); as no QoS 2 exchange had completed on the connection, the error \
         says the broker may lack QoS 2.",
    ),
    (
        Target::RabbitMq311,
        Feature::ErrV5ConnectToV3Listener,
        "RabbitMQ logs `MQTT cannot parse a frame ... unparseable payload` and closes without \
         a CONNACK; the failure's diagnosis finds that it answers a bare MQTT 3.1.1 CONNECT \
         and says MQTT 5 is not accepted.",
    ),
    (
        Target::Nats311,
        Feature::SubackCodes,
        "NATS's MQTT listener has no QoS 2: a QoS 2 subscription is granted QoS 1.",
    ),
    (
        Target::Nats311,
        Feature::PublishQos2,
        "NATS refuses a QoS 2 PUBLISH by closing the publisher's connection; nothing is \
         delivered.",
    ),
    (
        Target::Nats311,
        Feature::ErrQos2PublishWithoutQos2,
        "NATS closes the connection on the QoS 2 PUBLISH: the pending call fails with \
         ConnectionLost, whose text says the broker may lack QoS 2 (no QoS 2 exchange had \
         completed on the connection).",
    ),
    (
        Target::Nats311,
        Feature::ErrV5ConnectToV3Listener,
        "NATS answers with a 3.1.1 CONNACK carrying return code 1 (unacceptable protocol \
         version) and closes; this crate reads that code as the refusal of MQTT 5.",
    ),
    (
        Target::Rumqttd311,
        Feature::PublishQos0,
        "rumqttd delivers at the subscription's QoS (2), not at the lower QoS the message was \
         published with, against MQTT §3.8.4 (mosquitto_sub sees the same).",
    ),
    (
        Target::Rumqttd311,
        Feature::PublishQos1,
        "rumqttd delivers at the subscription's QoS (2), not at the lower QoS the message was \
         published with, against MQTT §3.8.4 (mosquitto_sub sees the same).",
    ),
    (
        Target::Rumqttd311,
        Feature::ErrV5ConnectToV3Listener,
        "rumqttd's v4 listener logs `InvalidProtocolLevel(5)` and closes without a CONNACK; \
         the failure's diagnosis finds that it answers a bare MQTT 3.1.1 CONNECT and says MQTT \
         5 is not accepted.",
    ),
    (
        Target::Rumqttd5,
        Feature::PublishQos0,
        "rumqttd delivers at the subscription's QoS (2), not at the lower QoS the message was \
         published with, against MQTT 5 §3.8.4.",
    ),
    (
        Target::Rumqttd5,
        Feature::PublishQos1,
        "rumqttd delivers at the subscription's QoS (2), not at the lower QoS the message was \
         published with, against MQTT 5 §3.8.4.",
    ),
    (
        Target::Rumqttd5,
        Feature::NoLocal,
        "rumqttd 0.20 ignores the No Local option: the client gets its own message back.",
    ),
    (
        Target::Rumqttd5,
        Feature::RetainHandlingDoNotSend,
        "rumqttd 0.20 ignores Retain Handling 2 and sends the retained message on subscribe.",
    ),
    (
        Target::Rumqttd5,
        Feature::ConnackReceiveMaximum,
        "rumqttd sends no Receive Maximum (so 65,535 applies); Mosquitto sends 20, its \
         max_inflight_messages.",
    ),
    (
        Target::Rumqttd5,
        Feature::ConnackTopicAliasMaximum,
        "rumqttd offers 4,096 topic aliases, Mosquitto 10 (its default max_topic_alias).",
    ),
    (
        Target::Rumqttd5,
        Feature::ErrPersistentWithoutIdentifier,
        "rumqttd refuses an empty identifier with Clean Start 0 (0x85, as MQTT 5 §3.1.3.1 \
         allows), where Mosquitto assigns one.",
    ),
];

// ---------------------------------------------------------------------------------------------
// The scenario context

struct Ctx {
    target: Target,
    broker: MqttBroker,
    base: String,
}

impl Ctx {
    fn protocol(&self) -> ProtocolVersion {
        self.target.protocol()
    }

    fn topic(&self, name: &str) -> String {
        format!("{}/{name}", self.base)
    }

    /// A client identifier unique to this run, at most 23 characters (MQTT 3.1's limit).
    fn id(&self) -> String {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let id = format!(
            "cf{:05}-{seq}-{:06x}",
            std::process::id() % 100_000,
            nanos & 0xff_ffff
        );
        assert!(id.len() <= 23, "{id}");
        id
    }

    fn builder(&self) -> ClientBuilder {
        self.broker.builder(self.protocol())
    }

    /// Connects a fresh client with its own identifier.
    async fn connect(&self) -> (Client, Connection) {
        let client = self
            .builder()
            .identifier(self.id())
            .build()
            .expect("valid options");
        let conn = client
            .connect()
            .await
            .unwrap_or_else(|e| panic!("connect to {}: {e} ({e:?})", self.target.label()));
        (client, conn)
    }

    /// A builder for a persistent session with this identifier.
    fn persistent(&self, id: &str) -> ClientBuilder {
        let b = self.builder().identifier(id);
        if self.target.is_v5() {
            b.clean_start(CleanStart::Never)
                .properties(Properties::new().session_expiry_interval(300))
        } else {
            b.clean_session(false)
        }
    }

    /// Ends the broker's session of `id` (a clean connect), so RabbitMQ, which outlives the
    /// test, keeps no queue for it.
    async fn forget_session(&self, id: &str) {
        let b = self.builder().identifier(id);
        let b = if self.target.is_v5() {
            b.clean_start(CleanStart::Always)
        } else {
            b
        };
        if let Ok(client) = b.build() {
            if let Ok(conn) = client.connect().await {
                let _ = conn.disconnect().await;
            }
        }
    }

    /// Publishes an empty retained message (clears `topic`), ignoring failures.
    async fn clear_retained(&self, conn: &Connection, topic: &str) {
        let _ = conn
            .publish(topic, ())
            .qos(QoS::AtLeastOnce)
            .retain(true)
            .await;
    }
}

/// The next message within [`RECV`], or `None`.
async fn recv_opt(messages: &mut Messages) -> Option<Message> {
    match tokio::time::timeout(RECV, messages.next()).await {
        Ok(Some(Ok(m))) => Some(m),
        _ => None,
    }
}

fn describe(m: &Option<Message>) -> String {
    match m {
        Some(m) => format!(
            "{} {:?} (QoS {}, retain {})",
            m.topic,
            String::from_utf8_lossy(&m.payload),
            m.qos.as_u8(),
            m.retain
        ),
        None => format!("nothing within {RECV:?}"),
    }
}

/// The outcome of a call in a few words, without its text (which is recorded as detail):
/// `accepted`, or the error variant (with the reason code, where there is one).
fn outcome<T>(r: &Result<T, Error>) -> String {
    match r {
        Ok(_) => "accepted".into(),
        Err(Error::Connect(rc)) => format!("Error::Connect (CONNACK 0x{:02X})", rc.value()),
        Err(Error::Code(rc)) => format!("Error::Code (0x{:02X})", rc.value()),
        Err(e) => {
            let dbg = format!("{e:?}");
            let name: String = dbg
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            format!("Error::{name}")
        }
    }
}

fn error_text<T>(r: &Result<T, Error>) -> Option<String> {
    r.as_ref().err().map(|e| format!("{e}"))
}

// ---------------------------------------------------------------------------------------------
// Scenarios

type Cells = Vec<(Feature, Cell)>;
type Run = fn(Arc<Ctx>) -> Pin<Box<dyn Future<Output = Cells> + Send>>;

struct Scenario {
    name: &'static str,
    features: &'static [Feature],
    /// Runs only on MQTT 5 targets (else every feature is n.a.).
    v5_only: bool,
    run: Run,
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "connect_disconnect",
        features: &[Feature::ConnectDisconnect],
        v5_only: false,
        run: |c| Box::pin(connect_disconnect(c)),
    },
    Scenario {
        name: "subscribe_qos",
        features: &[Feature::SubackCodes],
        v5_only: false,
        run: |c| Box::pin(subscribe_qos(c)),
    },
    Scenario {
        name: "publish_round_trip",
        features: &[
            Feature::PublishQos0,
            Feature::PublishQos1,
            Feature::PublishQos2,
            Feature::ErrQos2PublishWithoutQos2,
        ],
        v5_only: false,
        run: |c| Box::pin(publish_round_trip(c)),
    },
    Scenario {
        name: "burst_default_window",
        features: &[Feature::BurstDefaultWindow],
        v5_only: false,
        run: |c| Box::pin(burst_default_window(c)),
    },
    Scenario {
        name: "retained",
        features: &[Feature::RetainedLateSubscriber, Feature::RetainedCleared],
        v5_only: false,
        run: |c| Box::pin(retained(c)),
    },
    Scenario {
        name: "will_on_kill",
        features: &[Feature::WillOnKill],
        v5_only: false,
        run: |c| Box::pin(will_on_kill(c)),
    },
    Scenario {
        name: "persistent_session",
        features: &[Feature::SessionPresent, Feature::SessionQueuedQos1],
        v5_only: false,
        run: |c| Box::pin(persistent_session(c)),
    },
    Scenario {
        name: "unsubscribe",
        features: &[Feature::Unsubscribe],
        v5_only: false,
        run: |c| Box::pin(unsubscribe(c)),
    },
    Scenario {
        name: "user_properties",
        features: &[Feature::UserProperties],
        v5_only: true,
        run: |c| Box::pin(user_properties(c)),
    },
    Scenario {
        name: "message_expiry",
        features: &[
            Feature::MessageExpiryForwarded,
            Feature::MessageExpiryEnforced,
        ],
        v5_only: true,
        run: |c| Box::pin(message_expiry(c)),
    },
    Scenario {
        name: "subscription_identifier",
        features: &[Feature::SubscriptionIdentifier],
        v5_only: true,
        run: |c| Box::pin(subscription_identifier(c)),
    },
    Scenario {
        name: "no_local",
        features: &[Feature::NoLocal],
        v5_only: true,
        run: |c| Box::pin(no_local(c)),
    },
    Scenario {
        name: "retain_handling",
        features: &[
            Feature::RetainHandlingDoNotSend,
            Feature::RetainHandlingSendIfNew,
        ],
        v5_only: true,
        run: |c| Box::pin(retain_handling(c)),
    },
    Scenario {
        name: "assigned_identifier_and_connack",
        features: &[
            Feature::AssignedClientIdentifier,
            Feature::ConnackReceiveMaximum,
            Feature::ConnackMaximumQos,
            Feature::ConnackRetainAvailable,
            Feature::ConnackMaximumPacketSize,
            Feature::ConnackTopicAliasMaximum,
            Feature::ConnackSubscriptionIdentifiersAvailable,
            Feature::ConnackSharedSubscriptionAvailable,
        ],
        v5_only: true,
        run: |c| Box::pin(assigned_identifier_and_connack(c)),
    },
    Scenario {
        name: "error_situations",
        features: &[
            Feature::ErrV5ConnectToV3Listener,
            Feature::ErrHugeClientIdentifier,
            Feature::ErrPersistentWithoutIdentifier,
        ],
        v5_only: false,
        run: |c| Box::pin(error_situations(c)),
    },
];

async fn connect_disconnect(ctx: Arc<Ctx>) -> Cells {
    let (client, conn) = ctx.connect().await;
    assert!(!conn.session_present(), "a clean session was present");
    let first = conn.disconnect().await;
    // Reusable: a second connection of the same client.
    let again = client.connect().await;
    let second = match again {
        Ok(conn) => conn.disconnect().await,
        Err(e) => Err(e),
    };
    let ok = first.is_ok() && second.is_ok();
    vec![(
        Feature::ConnectDisconnect,
        Cell::bool(ok, format!("disconnect: {first:?}; again: {second:?}")),
    )]
}

async fn subscribe_qos(ctx: Arc<Ctx>) -> Cells {
    let (_c, conn) = ctx.connect().await;
    let mut codes = Vec::new();
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        let granted = conn
            .subscribe((ctx.topic(&format!("suback/{}", qos.as_u8())), qos))
            .await
            .unwrap_or_else(|e| panic!("subscribe at QoS {}: {e}", qos.as_u8()));
        assert_eq!(granted.len(), 1, "{granted:?}");
        codes.push(granted[0].value().to_string());
    }
    let _ = conn.disconnect().await;
    vec![(
        Feature::SubackCodes,
        Cell::mark(Mark::Text(codes.join(" / "))),
    )]
}

async fn publish_round_trip(ctx: Arc<Ctx>) -> Cells {
    let (_s, sub) = ctx.connect().await;
    let filter = ctx.topic("rt/+");
    sub.subscribe((filter.as_str(), QoS::ExactlyOnce))
        .await
        .expect("subscribe");
    let mut messages = sub.messages();
    let (_p, publisher) = ctx.connect().await;
    let mut cells = Vec::new();
    for (qos, feature) in [
        (QoS::AtMostOnce, Feature::PublishQos0),
        (QoS::AtLeastOnce, Feature::PublishQos1),
    ] {
        let topic = ctx.topic(&format!("rt/q{}", qos.as_u8()));
        publisher
            .publish(&topic, format!("qos {}", qos.as_u8()))
            .qos(qos)
            .await
            .unwrap_or_else(|e| panic!("publish QoS {}: {e}", qos.as_u8()));
        let m = recv(&mut messages).await;
        assert_eq!(m.topic.as_str(), topic);
        assert_eq!(m.payload, format!("qos {}", qos.as_u8()).as_bytes());
        // The delivered QoS is recorded (the spec says min(published, granted) = the
        // published one here; `expected` knows which broker does otherwise).
        cells.push((
            feature,
            Cell::mark(Mark::Text(format!("✓ QoS {}", m.qos.as_u8()))),
        ));
    }
    // QoS 2 on its own connection: a broker without QoS 2 may close it.
    let (_p2, p2) = ctx.connect().await;
    let topic = ctx.topic("rt/q2");
    let result = p2.publish(&topic, "qos 2").qos(QoS::ExactlyOnce).await;
    // A failed publish may precede the engine's report of the lost connection by some
    // milliseconds: give a closing connection up to 2 s to be seen closed.
    if result.is_err() {
        wait_until_async(Duration::from_secs(2), || !p2.is_connected()).await;
    }
    let still_connected = p2.is_connected();
    // Whether it was delivered: a sentinel published now (after the broker acknowledged or
    // refused the QoS 2 message) comes after it on the same subscription. At the same QoS
    // where the broker has QoS 2: the engine hands a QoS 2 message over on PUBREL, so a QoS 1
    // message sent after it may overtake it.
    let sentinel = ctx.topic("rt/sentinel");
    publisher
        .publish(&sentinel, "sentinel")
        .qos(ctx.target.broker().capabilities().max_qos)
        .await
        .expect("publish sentinel");
    let first = recv(&mut messages).await;
    let delivered = if first.topic.as_str() == sentinel {
        None
    } else {
        let next = recv(&mut messages).await;
        assert_eq!(next.topic.as_str(), sentinel, "{next:?}");
        Some(first)
    };
    let detail = format!(
        "publish returned {}; {}; the publisher's connection is {}",
        match &result {
            Ok(()) => "Ok(())".to_owned(),
            Err(e) => format!("Err({e}) [{e:?}]"),
        },
        match &delivered {
            Some(_) => format!("the subscriber got {}", describe(&delivered)),
            None => "the subscriber got the sentinel published after it first".to_owned(),
        },
        if still_connected { "open" } else { "closed" }
    );
    let mark = match &delivered {
        Some(m) if m.topic.as_str() == topic && m.payload == b"qos 2" => {
            Mark::Text(format!("✓ QoS {}", m.qos.as_u8()))
        }
        Some(m) => panic!("unexpected message {m:?}"),
        None => Mark::No,
    };
    cells.push((
        Feature::PublishQos2,
        Cell {
            mark,
            detail: Some(detail.clone()),
        },
    ));
    let qos2_error = if ctx.target.broker().capabilities().max_qos == QoS::ExactlyOnce {
        Cell::na()
    } else {
        let words = match (&result, still_connected) {
            (Ok(()), true) => "accepted".to_owned(),
            (Ok(()), false) => "accepted, connection closed".to_owned(),
            (Err(_), true) => outcome(&result),
            (Err(_), false) => format!("{}, connection closed", outcome(&result)),
        };
        Cell::text(words, Some(detail))
    };
    cells.push((Feature::ErrQos2PublishWithoutQos2, qos2_error));
    let _ = publisher.disconnect().await;
    let _ = sub.disconnect().await;
    cells
}

/// The default window is safe on every broker: on MQTT 5 it is the broker's Receive
/// Maximum, at most 2,000 (2,000 where none is announced), on 3.x it is 100, of which
/// QoS 2 publishes 20. A burst of publishes made at once, at the highest QoS the broker
/// has, all succeed and each arrives once.
async fn burst_default_window(ctx: Arc<Ctx>) -> Cells {
    const N: usize = 500;
    let qos = ctx.target.broker().capabilities().max_qos;
    let (_s, sub) = ctx.connect().await;
    let topic = ctx.topic("burst");
    sub.subscribe((topic.as_str(), qos))
        .await
        .expect("subscribe");
    let mut messages = sub.messages();
    let (_p, publisher) = ctx.connect().await;
    let calls: futures::stream::FuturesUnordered<_> = (0..N)
        .map(|i| {
            publisher
                .publish(&topic, i.to_string())
                .qos(qos)
                .into_future()
        })
        .collect();
    let results: Vec<Result<(), Error>> = calls.collect().await;
    let failed: Vec<&Error> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    while seen.len() < N {
        match recv_opt(&mut messages).await {
            Some(m) => {
                *seen
                    .entry(m.payload_str().unwrap_or("?").to_owned())
                    .or_default() += 1
            }
            None => break,
        }
    }
    let duplicated = seen.values().filter(|&&n| n > 1).count();
    let window = publisher
        .connack_properties()
        .and_then(|p| p.receive_maximum)
        .map_or_else(
            || {
                if ctx.target.is_v5() {
                    "2,000 (none announced)".to_owned()
                } else {
                    "100 (QoS 2: 20)".to_owned()
                }
            },
            |rm| {
                if rm > 2_000 {
                    format!("2,000 (the broker's Receive Maximum {rm} is wider)")
                } else {
                    format!("{rm} (the broker's Receive Maximum)")
                }
            },
        );
    let detail = format!(
        "QoS {}, window {window}: {} of {N} calls failed{}, {} delivered, {duplicated} more than once",
        qos.as_u8(),
        failed.len(),
        failed
            .first()
            .map_or(String::new(), |e| format!(" (first: {e})")),
        seen.len()
    );
    let ok = failed.is_empty() && seen.len() == N && duplicated == 0;
    let _ = publisher.disconnect().await;
    let _ = sub.disconnect().await;
    vec![(
        Feature::BurstDefaultWindow,
        Cell {
            mark: if ok { Mark::Yes } else { Mark::No },
            detail: Some(detail),
        },
    )]
}

async fn retained(ctx: Arc<Ctx>) -> Cells {
    let (_p, publisher) = ctx.connect().await;
    let topic = ctx.topic("retained/kept");
    let sentinel = ctx.topic("retained/sentinel");
    publisher
        .publish(&topic, "kept")
        .qos(QoS::AtLeastOnce)
        .retain(true)
        .await
        .expect("publish retained");

    let (_l, late) = ctx.connect().await;
    let mut late_messages = late.messages();
    late.subscribe((topic.as_str(), QoS::AtLeastOnce))
        .await
        .expect("subscribe");
    let got = recv_opt(&mut late_messages).await;
    let delivered = got
        .as_ref()
        .is_some_and(|m| m.topic.as_str() == topic && m.payload == b"kept" && m.retain);
    let first = Cell::bool(delivered, describe(&got));
    let _ = late.disconnect().await;

    // Clear it; a retained sentinel proves what a new subscriber gets: subscribed after the
    // cleared topic, it must be the first message.
    ctx.clear_retained(&publisher, &topic).await;
    publisher
        .publish(&sentinel, "sentinel")
        .qos(QoS::AtLeastOnce)
        .retain(true)
        .await
        .expect("publish retained sentinel");
    let (_l2, late2) = ctx.connect().await;
    let mut late2_messages = late2.messages();
    late2
        .subscribe((topic.as_str(), QoS::AtMostOnce))
        .await
        .expect("subscribe");
    late2
        .subscribe((sentinel.as_str(), QoS::AtMostOnce))
        .await
        .expect("subscribe sentinel");
    let got = recv_opt(&mut late2_messages).await;
    let second = match &got {
        Some(m) if m.topic.as_str() == sentinel => Cell::bool(true, describe(&got)),
        Some(_) => Cell::bool(false, describe(&got)),
        None => Cell::text("? (no retained sentinel)", Some(describe(&got))),
    };
    let _ = late2.disconnect().await;
    ctx.clear_retained(&publisher, &sentinel).await;
    let _ = publisher.disconnect().await;
    vec![
        (Feature::RetainedLateSubscriber, first),
        (Feature::RetainedCleared, second),
    ]
}

/// What the Will client child is told, in [`WILL_CLIENT_ENV`]: `port protocol topic id
/// [user pass]`, space-separated.
fn will_client_spec(ctx: &Ctx, topic: &str, id: &str) -> String {
    let proto = match ctx.protocol() {
        ProtocolVersion::V31 => "31",
        ProtocolVersion::V5 => "5",
        _ => "311",
    };
    let mut spec = format!("{} {proto} {topic} {id}", ctx.broker.port(ctx.protocol()));
    if ctx.broker.kind() == BrokerKind::RabbitMq {
        spec.push_str(" guest guest");
    }
    spec
}

/// The Will client, in the child process: connect with a Will, say so, wait to be killed.
async fn run_will_client(spec: &str) {
    let parts: Vec<&str> = spec.split(' ').collect();
    let port: u16 = parts[0].parse().expect("port");
    let protocol = match parts[1] {
        "31" => ProtocolVersion::V31,
        "5" => ProtocolVersion::V5,
        _ => ProtocolVersion::V311,
    };
    let mut b = Client::builder("127.0.0.1")
        .port(port)
        .protocol(protocol)
        .identifier(parts[3])
        .timeout(Duration::from_secs(5))
        .will(Will::new(parts[2], "gone").qos(QoS::AtLeastOnce));
    if parts.len() >= 6 {
        b = b.username(parts[4]).password(parts[5]);
    }
    let client = b.build().expect("will client options");
    let conn = client.connect().await.expect("will client connect");
    println!("{WILL_CONNECTED}");
    let _ = std::io::stdout().flush();
    // Killed by the parent long before this.
    tokio::time::sleep(WILL_CLIENT_LIFETIME).await;
    drop(conn);
}

async fn will_on_kill(ctx: Arc<Ctx>) -> Cells {
    let topic = ctx.topic("will");
    let (_w, watcher) = ctx.connect().await;
    watcher
        .subscribe((topic.as_str(), QoS::AtLeastOnce))
        .await
        .expect("subscribe");
    let mut wills = watcher.messages();

    let exe = std::env::current_exe().expect("the test binary");
    let mut cmd = Command::new(exe);
    cmd.args([
        "--exact",
        "conformance::broker_matrix",
        "--nocapture",
        "--test-threads",
        "1",
    ])
    .env(WILL_CLIENT_ENV, will_client_spec(&ctx, &topic, &ctx.id()))
    .env_remove("AIOMQTT_ISOLATED_TEST");
    let mut child = ChildGuard::spawn(&mut cmd);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if child.stdout().contains(WILL_CONNECTED) {
            break;
        }
        if let Some(status) = child.try_wait() {
            panic!(
                "the Will client exited ({status}) before connecting:\n{}\n{}",
                child.stdout(),
                child.stderr()
            );
        }
        assert!(
            Instant::now() < deadline,
            "the Will client did not connect within 20 s:\n{}\n{}",
            child.stdout(),
            child.stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // SIGKILL: no DISCONNECT; the kernel closes its socket.
    child.kill_and_collect();
    let got = recv_opt(&mut wills).await;
    let ok = got
        .as_ref()
        .is_some_and(|m| m.topic.as_str() == topic && m.payload == b"gone");
    let _ = watcher.disconnect().await;
    vec![(Feature::WillOnKill, Cell::bool(ok, describe(&got)))]
}

async fn persistent_session(ctx: Arc<Ctx>) -> Cells {
    let id = ctx.id();
    let topic = ctx.topic("session");
    let client = ctx.persistent(&id).build().expect("valid options");
    let conn = client.connect().await.expect("connect");
    conn.subscribe((topic.as_str(), QoS::AtLeastOnce))
        .await
        .expect("subscribe");
    conn.disconnect().await.expect("disconnect");

    let (_p, publisher) = ctx.connect().await;
    publisher
        .publish(&topic, "while away")
        .qos(QoS::AtLeastOnce)
        .await
        .expect("publish");
    let _ = publisher.disconnect().await;

    let conn = client.connect().await.expect("reconnect");
    let present = conn.session_present();
    let mut messages = conn.messages();
    let got = recv_opt(&mut messages).await;
    let queued = got
        .as_ref()
        .is_some_and(|m| m.topic.as_str() == topic && m.payload == b"while away");
    drop(messages);
    let _ = conn.disconnect().await;
    ctx.forget_session(&id).await;
    vec![
        (
            Feature::SessionPresent,
            Cell::bool(present, format!("session_present() = {present}")),
        ),
        (
            Feature::SessionQueuedQos1,
            Cell::bool(queued, describe(&got)),
        ),
    ]
}

async fn unsubscribe(ctx: Arc<Ctx>) -> Cells {
    let topic = ctx.topic("unsub/gone");
    let sentinel = ctx.topic("unsub/sentinel");
    let (_s, sub) = ctx.connect().await;
    sub.subscribe(vec![
        (topic.as_str(), QoS::AtMostOnce),
        (sentinel.as_str(), QoS::AtMostOnce),
    ])
    .await
    .expect("subscribe");
    let mut messages = sub.messages();
    let (_p, publisher) = ctx.connect().await;
    publisher
        .publish(&topic, "before")
        .qos(QoS::AtLeastOnce)
        .await
        .expect("publish");
    let m = recv(&mut messages).await;
    assert_eq!(m.payload, b"before", "{m:?}");

    sub.unsubscribe(topic.as_str()).await.expect("unsubscribe");
    publisher
        .publish(&topic, "after")
        .qos(QoS::AtLeastOnce)
        .await
        .expect("publish");
    publisher
        .publish(&sentinel, "sentinel")
        .qos(QoS::AtLeastOnce)
        .await
        .expect("publish sentinel");
    let got = recv_opt(&mut messages).await;
    let ok = got.as_ref().is_some_and(|m| m.topic.as_str() == sentinel);
    let _ = publisher.disconnect().await;
    let _ = sub.disconnect().await;
    vec![(Feature::Unsubscribe, Cell::bool(ok, describe(&got)))]
}

fn props(m: &Message) -> Properties {
    m.properties.as_deref().cloned().unwrap_or_default()
}

async fn user_properties(ctx: Arc<Ctx>) -> Cells {
    let topic = ctx.topic("user_properties");
    let (_s, sub) = ctx.connect().await;
    sub.subscribe((topic.as_str(), QoS::AtLeastOnce))
        .await
        .expect("subscribe");
    let mut messages = sub.messages();
    let (_p, publisher) = ctx.connect().await;
    let sent = [("a", "1"), ("a", "2"), ("b", "x y")];
    let mut p = Properties::new();
    for (k, v) in sent {
        p = p.user_property(k, v);
    }
    publisher
        .publish(&topic, "props")
        .qos(QoS::AtLeastOnce)
        .properties(p)
        .await
        .expect("publish");
    let m = recv(&mut messages).await;
    let got = props(&m).user_properties;
    let want: Vec<(String, String)> = sent
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    vec![(
        Feature::UserProperties,
        Cell::bool(got == want, format!("{got:?}")),
    )]
}

async fn message_expiry(ctx: Arc<Ctx>) -> Cells {
    let long = ctx.topic("expiry/long");
    let short = ctx.topic("expiry/short");
    let sentinel = ctx.topic("expiry/sentinel");
    let (_p, publisher) = ctx.connect().await;
    publisher
        .publish(&long, "long")
        .qos(QoS::AtLeastOnce)
        .retain(true)
        .properties(Properties::new().message_expiry_interval(60))
        .await
        .expect("publish");
    publisher
        .publish(&short, "short")
        .qos(QoS::AtLeastOnce)
        .retain(true)
        .properties(Properties::new().message_expiry_interval(1))
        .await
        .expect("publish");

    let (_s, sub) = ctx.connect().await;
    let mut messages = sub.messages();
    sub.subscribe((long.as_str(), QoS::AtLeastOnce))
        .await
        .expect("subscribe");
    let got = recv_opt(&mut messages).await;
    let interval = got.as_ref().and_then(|m| props(m).message_expiry_interval);
    let forwarded = Cell::bool(
        matches!(interval, Some(1..=60)),
        format!("{}; interval {interval:?}", describe(&got)),
    );

    // Let the 1 s expiry pass (whole seconds on the broker's clock: wait 2.5 s), then the
    // sentinel, subscribed after the expired topic, must be the first retained message.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    publisher
        .publish(&sentinel, "sentinel")
        .qos(QoS::AtLeastOnce)
        .retain(true)
        .await
        .expect("publish sentinel");
    let (_s2, sub2) = ctx.connect().await;
    let mut messages2 = sub2.messages();
    sub2.subscribe((short.as_str(), QoS::AtMostOnce))
        .await
        .expect("subscribe");
    sub2.subscribe((sentinel.as_str(), QoS::AtMostOnce))
        .await
        .expect("subscribe sentinel");
    let got = recv_opt(&mut messages2).await;
    let enforced = Cell::bool(
        got.as_ref().is_some_and(|m| m.topic.as_str() == sentinel),
        describe(&got),
    );
    for t in [&long, &short, &sentinel] {
        ctx.clear_retained(&publisher, t).await;
    }
    vec![
        (Feature::MessageExpiryForwarded, forwarded),
        (Feature::MessageExpiryEnforced, enforced),
    ]
}

async fn subscription_identifier(ctx: Arc<Ctx>) -> Cells {
    let topic = ctx.topic("subid");
    let (_s, sub) = ctx.connect().await;
    sub.subscribe((topic.as_str(), QoS::AtLeastOnce))
        .properties(Properties::new().subscription_identifier(7))
        .await
        .expect("subscribe");
    let mut messages = sub.messages();
    let (_p, publisher) = ctx.connect().await;
    publisher
        .publish(&topic, "id")
        .qos(QoS::AtLeastOnce)
        .await
        .expect("publish");
    let m = recv(&mut messages).await;
    let ids = props(&m).subscription_identifiers;
    vec![(
        Feature::SubscriptionIdentifier,
        Cell::bool(ids == [7], format!("{ids:?}")),
    )]
}

async fn no_local(ctx: Arc<Ctx>) -> Cells {
    let topic = ctx.topic("no_local");
    let sentinel = ctx.topic("no_local/sentinel");
    let (_c, conn) = ctx.connect().await;
    conn.subscribe((
        topic.as_str(),
        SubscribeOptions::new().qos(QoS::AtMostOnce).no_local(true),
    ))
    .await
    .expect("subscribe no_local");
    conn.subscribe((sentinel.as_str(), QoS::AtMostOnce))
        .await
        .expect("subscribe sentinel");
    let mut messages = conn.messages();
    conn.publish(&topic, "own")
        .qos(QoS::AtLeastOnce)
        .await
        .expect("publish");
    conn.publish(&sentinel, "sentinel")
        .qos(QoS::AtLeastOnce)
        .await
        .expect("publish sentinel");
    let got = recv_opt(&mut messages).await;
    let ok = got.as_ref().is_some_and(|m| m.topic.as_str() == sentinel);
    vec![(Feature::NoLocal, Cell::bool(ok, describe(&got)))]
}

async fn retain_handling(ctx: Arc<Ctx>) -> Cells {
    let topic = ctx.topic("retain_handling");
    let sentinel = ctx.topic("retain_handling_sentinel");
    let (_p, publisher) = ctx.connect().await;
    for (t, payload) in [(&topic, "kept"), (&sentinel, "sentinel")] {
        publisher
            .publish(t, payload)
            .qos(QoS::AtLeastOnce)
            .retain(true)
            .await
            .expect("publish retained");
    }

    // 2: do not send. The (retained) sentinel, subscribed next, must come first.
    let (_a, a) = ctx.connect().await;
    let mut a_messages = a.messages();
    a.subscribe((
        topic.as_str(),
        SubscribeOptions::new()
            .qos(QoS::AtMostOnce)
            .retain_handling(RetainHandling::DoNotSend),
    ))
    .await
    .expect("subscribe");
    a.subscribe((sentinel.as_str(), QoS::AtMostOnce))
        .await
        .expect("subscribe sentinel");
    let got = recv_opt(&mut a_messages).await;
    let do_not_send = Cell::bool(
        got.as_ref().is_some_and(|m| m.topic.as_str() == sentinel),
        describe(&got),
    );
    let _ = a.disconnect().await;

    // 1: send if new. The first subscription gets it; the same one again does not.
    let send_if_new = SubscribeOptions::new()
        .qos(QoS::AtMostOnce)
        .retain_handling(RetainHandling::SendIfNew);
    let (_b, b) = ctx.connect().await;
    let mut b_messages = b.messages();
    b.subscribe((topic.as_str(), send_if_new))
        .await
        .expect("subscribe");
    let first = recv_opt(&mut b_messages).await;
    let first_ok = first
        .as_ref()
        .is_some_and(|m| m.topic.as_str() == topic && m.retain);
    b.subscribe((topic.as_str(), send_if_new))
        .await
        .expect("subscribe again");
    b.subscribe((sentinel.as_str(), QoS::AtMostOnce))
        .await
        .expect("subscribe sentinel");
    let second = recv_opt(&mut b_messages).await;
    let second_ok = second
        .as_ref()
        .is_some_and(|m| m.topic.as_str() == sentinel);
    let send_if_new = Cell::bool(
        first_ok && second_ok,
        format!(
            "new subscription: {}; again: {}",
            describe(&first),
            describe(&second)
        ),
    );
    let _ = b.disconnect().await;
    for t in [&topic, &sentinel] {
        ctx.clear_retained(&publisher, t).await;
    }
    vec![
        (Feature::RetainHandlingDoNotSend, do_not_send),
        (Feature::RetainHandlingSendIfNew, send_if_new),
    ]
}

async fn assigned_identifier_and_connack(ctx: Arc<Ctx>) -> Cells {
    let client = ctx.builder().build().expect("valid options");
    assert_eq!(client.identifier(), "");
    let conn = client.connect().await.expect("connect without identifier");
    let assigned = conn.identifier().to_owned();
    let p = conn.connack_properties().unwrap_or_default();
    let _ = conn.disconnect().await;
    let show = |v: Option<String>| Cell::mark(Mark::Text(v.unwrap_or_else(|| "absent".into())));
    vec![
        (
            Feature::AssignedClientIdentifier,
            Cell::bool(
                !assigned.is_empty()
                    && p.assigned_client_identifier.as_deref() == Some(assigned.as_str()),
                format!("identifier() = {assigned:?}"),
            ),
        ),
        (
            Feature::ConnackReceiveMaximum,
            show(p.receive_maximum.map(|v| v.to_string())),
        ),
        (
            Feature::ConnackMaximumQos,
            show(p.maximum_qos.map(|v| v.as_u8().to_string())),
        ),
        (
            Feature::ConnackRetainAvailable,
            show(p.retain_available.map(|v| v.to_string())),
        ),
        (
            Feature::ConnackMaximumPacketSize,
            show(p.maximum_packet_size.map(|v| v.to_string())),
        ),
        (
            Feature::ConnackTopicAliasMaximum,
            show(p.topic_alias_maximum.map(|v| v.to_string())),
        ),
        (
            Feature::ConnackSubscriptionIdentifiersAvailable,
            show(p.subscription_identifiers_available.map(|v| v.to_string())),
        ),
        (
            Feature::ConnackSharedSubscriptionAvailable,
            show(p.shared_subscription_available.map(|v| v.to_string())),
        ),
    ]
}

/// Builds and connects, recording the outcome; a connection that was made is closed.
async fn attempt(builder: ClientBuilder) -> Cell {
    let client = match builder.build() {
        Ok(c) => c,
        Err(e) => {
            let r: Result<(), Error> = Err(e);
            return Cell::text(
                format!("{} from build()", outcome(&r)),
                error_text(&r).map(|t| format!("build(): {t}")),
            );
        }
    };
    let r = client.connect().await;
    let cell = Cell::text(
        outcome(&r),
        Some(match &r {
            Ok(c) => format!(
                "connect(): Ok, session_present {}, identifier of {} bytes",
                c.session_present(),
                c.identifier().len()
            ),
            Err(e) => format!("connect(): {e}"),
        }),
    );
    if let Ok(conn) = r {
        let _ = conn.disconnect().await;
    }
    cell
}

/// Makes a detail text the same in every run: the unique topic prefix becomes `<topic>`,
/// loopback ports become `<port>`.
fn stable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    loop {
        let topic = rest.find("aiomqtt-test/");
        let port = rest.find("127.0.0.1:");
        match (topic, port) {
            (Some(t), p) if p.is_none_or(|p| t < p) => {
                out.push_str(&rest[..t]);
                // aiomqtt-test/<run>/conformance/<target>/<name>
                let tail = &rest[t..];
                let skip = tail
                    .match_indices('/')
                    .nth(3)
                    .map_or(tail.len(), |(i, _)| i);
                out.push_str("<topic>");
                rest = &tail[skip..];
            }
            (_, Some(p)) => {
                out.push_str(&rest[..p]);
                out.push_str("127.0.0.1:<port>");
                let tail = &rest[p + "127.0.0.1:".len()..];
                let digits = tail.chars().take_while(char::is_ascii_digit).count();
                rest = &tail[digits..];
            }
            _ => {
                out.push_str(rest);
                return out;
            }
        }
    }
}

async fn error_situations(ctx: Arc<Ctx>) -> Cells {
    let mut cells = Vec::new();
    // MQTT 5 CONNECT to a listener that speaks only 3.1.1.
    cells.push((
        Feature::ErrV5ConnectToV3Listener,
        if v5_listener(ctx.target) {
            Cell::na()
        } else {
            attempt(
                ctx.broker
                    .builder_on(ctx.broker.v3_port(), ProtocolVersion::V5)
                    .identifier(ctx.id()),
            )
            .await
        },
    ));
    // A client identifier longer than an MQTT string can be (65,535 bytes).
    cells.push((
        Feature::ErrHugeClientIdentifier,
        attempt(ctx.builder().identifier("x".repeat(70_000))).await,
    ));
    // A persistent session without an identifier.
    let b = ctx.builder();
    let b = if ctx.target.is_v5() {
        b.clean_start(CleanStart::Never)
            .properties(Properties::new().session_expiry_interval(60))
    } else {
        b.clean_session(false)
    };
    cells.push((Feature::ErrPersistentWithoutIdentifier, attempt(b).await));
    cells
}

// ---------------------------------------------------------------------------------------------
// Running a target

enum TargetRun {
    Skipped(String),
    Ran {
        /// Per feature: the cell, or why its scenario failed.
        cells: BTreeMap<Feature, Result<Cell, String>>,
        log: String,
        took: Duration,
    },
}

async fn run_target(target: Target) -> TargetRun {
    let started = Instant::now();
    let kind = target.broker();
    let start = tokio::task::spawn_blocking(move || MqttBroker::start(kind));
    let broker = match tokio::time::timeout(START, start).await {
        Ok(Ok(Ok(b))) => b,
        Ok(Ok(Err(why))) => return TargetRun::Skipped(why),
        Ok(Err(join)) => return TargetRun::Skipped(format!("starting it panicked: {join}")),
        Err(_) => return TargetRun::Skipped(format!("not started within {START:?}")),
    };
    let ctx = Arc::new(Ctx {
        target,
        broker,
        base: unique_topic(&format!("conformance/{}", target.key())),
    });
    let mut cells = BTreeMap::new();
    for s in SCENARIOS {
        if s.v5_only && !target.is_v5() {
            for f in s.features {
                cells.insert(*f, Ok(Cell::na()));
            }
            continue;
        }
        eprintln!("[conformance] {}: {}", target.key(), s.name);
        let task = tokio::spawn((s.run)(ctx.clone()));
        let result = match tokio::time::timeout(SCENARIO, task).await {
            Ok(Ok(got)) => Ok(got),
            Ok(Err(join)) => Err(panic_text(join)),
            Err(_) => Err(format!("timed out after {SCENARIO:?}")),
        };
        match result {
            Ok(got) => {
                let produced: BTreeSet<Feature> = got.iter().map(|(f, _)| *f).collect();
                let declared: BTreeSet<Feature> = s.features.iter().copied().collect();
                assert_eq!(produced, declared, "scenario {} features", s.name);
                for (f, c) in got {
                    cells.insert(f, Ok(c));
                }
            }
            Err(why) => {
                for f in s.features {
                    cells.insert(*f, Err(format!("scenario {} failed: {why}", s.name)));
                }
            }
        }
    }
    TargetRun::Ran {
        cells,
        log: ctx.broker.log(),
        took: started.elapsed(),
    }
}

fn panic_text(join: tokio::task::JoinError) -> String {
    match join.try_into_panic() {
        Ok(payload) => payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "a panic".into()),
        Err(join) => format!("{join}"),
    }
}

fn selected_targets() -> (Vec<Target>, bool) {
    match std::env::var("AIOMQTT_CONFORMANCE_TARGETS") {
        Ok(list) if !list.trim().is_empty() => {
            let keys: Vec<&str> = list.split(',').map(str::trim).collect();
            for k in &keys {
                assert!(
                    Target::ALL.iter().any(|t| t.key() == *k),
                    "unknown target {k:?} in AIOMQTT_CONFORMANCE_TARGETS; known: {:?}",
                    Target::ALL.map(Target::key)
                );
            }
            let targets = Target::ALL
                .into_iter()
                .filter(|t| keys.contains(&t.key()))
                .collect();
            (targets, false)
        }
        _ => (Target::ALL.to_vec(), true),
    }
}

// ---------------------------------------------------------------------------------------------
// The table

type Results = BTreeMap<Target, TargetRun>;

fn cell_of(results: &Results, target: Target, feature: Feature) -> Option<&Cell> {
    match results.get(&target)? {
        TargetRun::Ran { cells, .. } => cells.get(&feature)?.as_ref().ok(),
        TargetRun::Skipped(_) => None,
    }
}

fn note_of(target: Target, feature: Feature) -> Option<&'static str> {
    NOTES
        .iter()
        .find(|(t, f, _)| *t == target && *f == feature)
        .map(|(_, _, n)| *n)
}

const ALL_FEATURES: [Feature; 31] = {
    use Feature::*;
    [
        ConnectDisconnect,
        SubackCodes,
        PublishQos0,
        PublishQos1,
        PublishQos2,
        BurstDefaultWindow,
        RetainedLateSubscriber,
        RetainedCleared,
        WillOnKill,
        SessionPresent,
        SessionQueuedQos1,
        Unsubscribe,
        UserProperties,
        MessageExpiryForwarded,
        MessageExpiryEnforced,
        SubscriptionIdentifier,
        NoLocal,
        RetainHandlingDoNotSend,
        RetainHandlingSendIfNew,
        AssignedClientIdentifier,
        ConnackReceiveMaximum,
        ConnackMaximumQos,
        ConnackRetainAvailable,
        ConnackMaximumPacketSize,
        ConnackTopicAliasMaximum,
        ConnackSubscriptionIdentifiersAvailable,
        ConnackSharedSubscriptionAvailable,
        ErrV5ConnectToV3Listener,
        ErrHugeClientIdentifier,
        ErrPersistentWithoutIdentifier,
        ErrQos2PublishWithoutQos2,
    ]
};

/// Cells that differ from their reference column (both observed).
fn differences(results: &Results) -> BTreeSet<(Target, Feature)> {
    let mut out = BTreeSet::new();
    for target in Target::ALL {
        if target == target.reference() {
            continue;
        }
        for feature in ALL_FEATURES {
            if let (Some(c), Some(r)) = (
                cell_of(results, target, feature),
                cell_of(results, target.reference(), feature),
            ) {
                if c.mark != r.mark {
                    out.insert((target, feature));
                }
            }
        }
    }
    out
}

/// The heading of the table's last section: the error texts, recorded, not asserted.
const RECORDED_TEXTS: &str = "## What the crate returned in the error situations\n\n";

/// The part of `docs/brokers.md` that states what the brokers did: everything before the
/// recorded texts.
fn asserted_part(md: &str) -> &str {
    md.split(RECORDED_TEXTS).next().unwrap_or(md)
}

fn render(results: &Results) -> String {
    let mut md = String::new();
    md.push_str("# How the brokers differ\n\n");
    md.push_str(
        "<!-- Generated by `cargo test --test it -- conformance` (tests/it/conformance.rs); \
         do not edit: the explanations live in that file's NOTES table. -->\n\n",
    );
    md.push_str(
        "One scenario set of `tests/it/conformance.rs`, run with this crate as the client \
         against each broker, all on loopback. Every cell that differs from Mosquitto on the \
         same protocol family (3.1.1 for the 3.x columns, 5 for the MQTT 5 columns) has a \
         numbered note; the suite fails when a difference has no note or a note no longer \
         matches a difference. ✓ = works, ✗ = does not, n.a. = not applicable to that \
         protocol or broker.\n\n",
    );
    md.push_str("| Broker | How the suite runs it |\n|---|---|\n");
    for kind in BrokerKind::ALL {
        let how = match kind {
            BrokerKind::Mosquitto => "a private `mosquitto` per target on a free port",
            BrokerKind::RabbitMq => {
                "the machine's service with the `rabbitmq_mqtt` plugin enabled online on a \
                 loopback port by `scripts/brokers.sh`; user guest/guest"
            }
            BrokerKind::Nats => {
                "a private `nats-server` with a generated config: `server_name`, JetStream \
                 in a temp dir, an `mqtt` block, ports chosen by the server"
            }
            BrokerKind::Rumqttd => {
                "a private `rumqttd` (installed by `scripts/brokers.sh`) with a generated \
                 config: the shipped defaults, a v4 and a v5 listener on free ports"
            }
        };
        let _ = writeln!(md, "| {} | {how} |", kind.capabilities().product);
    }
    md.push('\n');

    let mut header = String::from("| Feature |");
    let mut rule = String::from("|---|");
    for t in Target::ALL {
        let _ = write!(header, " {} |", t.label());
        rule.push_str(":-:|");
    }
    let mut notes: Vec<(Target, Feature, &str)> = Vec::new();
    for section in [
        Section::Core,
        Section::V5,
        Section::Connack,
        Section::Errors,
    ] {
        let _ = writeln!(md, "## {}\n", section.title());
        let _ = writeln!(md, "{header}\n{rule}");
        for feature in ALL_FEATURES.into_iter().filter(|f| f.section() == section) {
            let _ = write!(md, "| {} |", feature.label());
            for t in Target::ALL {
                let text = match results.get(&t) {
                    None => "not run".to_owned(),
                    Some(TargetRun::Skipped(_)) => "skipped".to_owned(),
                    Some(TargetRun::Ran { cells, .. }) => match cells.get(&feature) {
                        Some(Ok(c)) => c.mark.render(),
                        _ => "FAILED".to_owned(),
                    },
                };
                let mark = match note_of(t, feature) {
                    Some(n) => {
                        notes.push((t, feature, n));
                        format!(" [{}]", notes.len())
                    }
                    None => String::new(),
                };
                let _ = write!(md, " {text}{mark} |");
            }
            md.push('\n');
        }
        md.push('\n');
    }
    if !notes.is_empty() {
        md.push_str("## Notes\n\n");
        for (i, (t, f, n)) in notes.iter().enumerate() {
            let _ = writeln!(md, "{}. **{}, {}**: {n}", i + 1, t.label(), f.label());
        }
        md.push('\n');
    }
    md.push_str(RECORDED_TEXTS);
    md.push_str(
        "The texts are recorded, not asserted: they will change. Topic prefixes and ports \
         are replaced by `<topic>` and `<port>`.\n\n",
    );
    for feature in ALL_FEATURES
        .into_iter()
        .filter(|f| f.section() == Section::Errors)
    {
        let _ = writeln!(md, "### {}\n", feature.label());
        for t in Target::ALL {
            if let Some(c) = cell_of(results, t, feature) {
                if c.mark == Mark::Na {
                    continue;
                }
                let _ = writeln!(
                    md,
                    "- {}: {} — {}",
                    t.label(),
                    c.mark.render(),
                    stable(c.detail.as_deref().unwrap_or(""))
                );
            }
        }
        md.push('\n');
    }
    md
}

// ---------------------------------------------------------------------------------------------
// The test

/// Runs every scenario on every broker and protocol, checks them against the capabilities
/// and NOTES, and writes `docs/brokers.md`. In a child process started by `will_on_kill`, it
/// is the Will client instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_matrix() {
    if let Ok(spec) = std::env::var(WILL_CLIENT_ENV) {
        with_timeout(WILL_CLIENT_LIFETIME * 2, run_will_client(&spec)).await;
        return;
    }
    if let Some(child) = isolated("conformance::broker_matrix", MATRIX_PROCESS) {
        // The child's output is dropped when it passes: repeat its SKIPPED lines, straight
        // to fd 2 (the harness captures only print!/eprint!), so a skip is never silent.
        let stderr = child.stderr();
        for line in stderr.lines().filter(|l| l.contains("*** SKIPPED")) {
            let _ = writeln!(std::io::stderr(), "{line}");
        }
        child.assert_passed();
        return;
    }
    init_logging();
    with_timeout(MATRIX, async {
        let started = Instant::now();
        let (targets, complete) = selected_targets();
        let handles: Vec<_> = targets
            .iter()
            .map(|t| (*t, tokio::spawn(run_target(*t))))
            .collect();
        let mut results: Results = BTreeMap::new();
        for (t, h) in handles {
            let run = h.await.unwrap_or_else(|join| TargetRun::Ran {
                cells: ALL_FEATURES
                    .into_iter()
                    .map(|f| (f, Err(format!("the target's task failed: {join}"))))
                    .collect(),
                log: String::new(),
                took: Duration::ZERO,
            });
            results.insert(t, run);
        }

        let mut failures = Vec::new();
        let mut skipped = Vec::new();
        for (t, run) in &results {
            match run {
                TargetRun::Skipped(why) => skipped.push((*t, why.clone())),
                TargetRun::Ran { cells, took, log } => {
                    eprintln!("{}: {took:?}", t.label());
                    if std::env::var("AIOMQTT_CONFORMANCE_LOGS").is_ok_and(|v| v == "1") {
                        eprintln!("--- {} broker log ---\n{log}", t.label());
                    }
                    for (f, c) in cells {
                        match c {
                            Err(why) => {
                                failures.push(format!("{}: {}: {why}", t.label(), f.label()))
                            }
                            Ok(c) => {
                                if let Some(want) = expected(*t, *f) {
                                    if c.mark != want {
                                        failures.push(format!(
                                            "{}: {}: expected {}, observed {} ({})",
                                            t.label(),
                                            f.label(),
                                            want.render(),
                                            c.mark.render(),
                                            c.detail.as_deref().unwrap_or("")
                                        ));
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        // Every difference explained, no stale note (when both columns ran).
        let diffs = differences(&results);
        for (t, f) in &diffs {
            if note_of(*t, *f).is_none() {
                let c = cell_of(&results, *t, *f).unwrap();
                let r = cell_of(&results, t.reference(), *f).unwrap();
                failures.push(format!(
                    "{}: {}: {} differs from {}'s {} and has no NOTES entry ({})",
                    t.label(),
                    f.label(),
                    c.mark.render(),
                    t.reference().label(),
                    r.mark.render(),
                    c.detail.as_deref().unwrap_or("")
                ));
            }
        }
        for (t, f, _) in NOTES {
            let both_ran = cell_of(&results, *t, *f).is_some()
                && cell_of(&results, t.reference(), *f).is_some();
            if *t != t.reference() && both_ran && !diffs.contains(&(*t, *f)) {
                failures.push(format!(
                    "{}: {}: NOTES explains a difference from {} that no longer exists",
                    t.label(),
                    f.label(),
                    t.reference().label()
                ));
            }
        }

        let md = render(&results);
        let everything = complete && skipped.is_empty() && failures.is_empty();
        let path = if everything {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/brokers.md")
        } else {
            std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("brokers.md")
        };
        // The committed tables and notes are what the brokers did here: a run that finds
        // otherwise fails (and leaves the new file to compare and commit). The recorded
        // texts after them are not compared: they are not asserted.
        if everything {
            let committed = std::fs::read_to_string(&path).unwrap_or_default();
            if asserted_part(&committed) != asserted_part(&md) {
                failures.push(format!(
                    "{} differs from what the brokers did in this run: see `git diff {}`, \
                     and commit it if the change is right",
                    path.display(),
                    path.display()
                ));
            }
        }
        std::fs::write(&path, &md).expect("write the broker table");
        eprintln!(
            "broker matrix: {:?}; table written to {}",
            started.elapsed(),
            path.display()
        );
        for (t, why) in &skipped {
            if require_all() {
                failures.push(format!(
                    "broker {} is not available ({REQUIRE_ALL}=1): {} not run: {why}",
                    t.broker().name(),
                    t.label()
                ));
            } else {
                skip_or_fail(t.broker(), &format!("{} not run: {why}", t.label()));
            }
        }
        assert!(
            failures.is_empty(),
            "{} conformance failure(s):\n{}\n(table: {})",
            failures.len(),
            failures.join("\n"),
            path.display()
        );
    })
    .await;
}
