//! The brokers of the cross-broker conformance suite (`conformance.rs`): Mosquitto, RabbitMQ's
//! MQTT plugin, NATS's MQTT listener and rumqttd, each started (or attached to) on loopback,
//! with a description of what it supports.
//!
//! - Mosquitto: a private [`Broker`] (free port, killed on drop).
//! - NATS: our own `nats-server` with a generated config (`server_name`, JetStream with its
//!   store in a temp dir, an `mqtt` block); both ports are chosen by the server (`-1`) and
//!   read back from its log, so no port can be stolen between choosing and binding.
//! - rumqttd: the binary `scripts/brokers.sh` installs, with a generated config (a v4 = MQTT
//!   3.1.1 and a v5 listener on free ports).
//! - RabbitMQ: the machine's service, whose MQTT plugin `scripts/brokers.sh` enables on a
//!   loopback port; attached to, never started or stopped. Its log is read from the offset
//!   at attach time.
//!
//! A broker that is not available fails the test naming it and why when
//! `AIOMQTT_REQUIRE_ALL_BROKERS=1` (CI), and otherwise prints a loud `SKIPPED <broker>: <why>`
//! line straight to stderr (not captured by the test harness): see [`require`].

use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aiomqtt::{Client, ClientBuilder, ProtocolVersion, QoS};

use super::broker::{Broker, MOSQUITTO};
use super::util::{Watchdog, free_ports, port_accepts, read_lossy};

/// Set to `1` (CI does) to fail, rather than skip, when a broker is not available.
pub const REQUIRE_ALL: &str = "AIOMQTT_REQUIRE_ALL_BROKERS";
/// Overrides the directory `scripts/brokers.sh` prepares (rumqttd, RabbitMQ's port).
pub const CACHE_ENV: &str = "AIOMQTT_BROKERS_DIR";
/// Overrides RabbitMQ's MQTT port (else read from the cache directory).
pub const RABBITMQ_PORT_ENV: &str = "AIOMQTT_RABBITMQ_MQTT_PORT";
/// Overrides the rumqttd binary (else `<cache>/bin/rumqttd`, else `rumqttd` on `PATH`).
pub const RUMQTTD_ENV: &str = "AIOMQTT_RUMQTTD";
/// The rumqttd release line the suite is written against.
pub const RUMQTTD_VERSION: &str = "0.20.";
/// How long a broker may take to come up.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// RabbitMQ's log file (Debian's default location; `localhost` is the node's host name).
const RABBITMQ_LOG_DIR: &str = "/var/log/rabbitmq";

/// The brokers the suite knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BrokerKind {
    Mosquitto,
    RabbitMq,
    Nats,
    Rumqttd,
}

impl BrokerKind {
    pub const ALL: [BrokerKind; 4] = [
        BrokerKind::Mosquitto,
        BrokerKind::RabbitMq,
        BrokerKind::Nats,
        BrokerKind::Rumqttd,
    ];

    /// The name used in `SKIPPED` lines, failures and the documentation.
    pub fn name(self) -> &'static str {
        match self {
            BrokerKind::Mosquitto => "mosquitto",
            BrokerKind::RabbitMq => "rabbitmq",
            BrokerKind::Nats => "nats",
            BrokerKind::Rumqttd => "rumqttd",
        }
    }

    /// What the broker supports, as far as this suite is concerned.
    pub fn capabilities(self) -> &'static Capabilities {
        match self {
            BrokerKind::Mosquitto => &MOSQUITTO_CAPS,
            BrokerKind::RabbitMq => &RABBITMQ_CAPS,
            BrokerKind::Nats => &NATS_CAPS,
            BrokerKind::Rumqttd => &RUMQTTD_CAPS,
        }
    }
}

/// What a broker supports. The conformance suite asserts that each broker behaves as
/// described here, so a change in a broker (or in this crate) shows up as a failure.
#[derive(Debug)]
pub struct Capabilities {
    /// The broker and version this describes.
    pub product: &'static str,
    /// Protocol versions it accepts (on some listener).
    pub protocols: &'static [ProtocolVersion],
    /// The highest QoS it grants and delivers.
    pub max_qos: QoS,
    /// Delivers a message at the subscription's QoS even when it was published at a lower
    /// one (the spec says: the lower of the two).
    pub upgrades_qos_to_subscription: bool,
    /// Retained messages: kept for a late subscriber, cleared by an empty retained payload.
    pub retained: bool,
    /// Publishes the Will when a client vanishes without DISCONNECT.
    pub will: bool,
    /// Keeps a session (subscriptions, queued QoS 1 messages) for a client that left.
    pub persistent_sessions: bool,
    /// MQTT 5 features, `None` without MQTT 5.
    pub v5: Option<V5Capabilities>,
}

/// MQTT 5 features the suite checks.
#[derive(Debug)]
pub struct V5Capabilities {
    pub user_properties: bool,
    /// The Message Expiry Interval is forwarded (counted down) with the message.
    pub message_expiry_forwarded: bool,
    /// A retained message whose expiry passed is no longer delivered.
    pub message_expiry_enforced: bool,
    pub subscription_identifiers: bool,
    pub no_local: bool,
    /// Retain Handling 2 (do not send retained messages on subscribe).
    pub retain_handling_do_not_send: bool,
    /// Retain Handling 1 (send retained messages only for a new subscription).
    pub retain_handling_send_if_new: bool,
    pub assigned_client_identifier: bool,
    /// A persistent session (Clean Start 0 + Session Expiry Interval) is resumed.
    pub session_expiry: bool,
}

impl Capabilities {
    pub fn supports(&self, protocol: ProtocolVersion) -> bool {
        self.protocols.contains(&protocol)
    }
}

pub static MOSQUITTO_CAPS: Capabilities = Capabilities {
    product: "Mosquitto 2.0.11 (Debian 12)",
    protocols: &[
        ProtocolVersion::V31,
        ProtocolVersion::V311,
        ProtocolVersion::V5,
    ],
    max_qos: QoS::ExactlyOnce,
    upgrades_qos_to_subscription: false,
    retained: true,
    will: true,
    persistent_sessions: true,
    v5: Some(V5Capabilities {
        user_properties: true,
        message_expiry_forwarded: true,
        message_expiry_enforced: true,
        subscription_identifiers: true,
        no_local: true,
        retain_handling_do_not_send: true,
        retain_handling_send_if_new: true,
        assigned_client_identifier: true,
        session_expiry: true,
    }),
};

pub static RABBITMQ_CAPS: Capabilities = Capabilities {
    product: "RabbitMQ 3.10 MQTT plugin (Debian 12)",
    protocols: &[ProtocolVersion::V311],
    max_qos: QoS::AtLeastOnce,
    upgrades_qos_to_subscription: false,
    retained: true,
    will: true,
    persistent_sessions: true,
    v5: None,
};

pub static NATS_CAPS: Capabilities = Capabilities {
    product: "nats-server 2.9 MQTT listener with JetStream (Debian 12)",
    protocols: &[ProtocolVersion::V311],
    max_qos: QoS::AtLeastOnce,
    upgrades_qos_to_subscription: false,
    retained: true,
    will: true,
    persistent_sessions: true,
    v5: None,
};

pub static RUMQTTD_CAPS: Capabilities = Capabilities {
    product: "rumqttd 0.20.0 (crates.io)",
    protocols: &[ProtocolVersion::V311, ProtocolVersion::V5],
    max_qos: QoS::ExactlyOnce,
    upgrades_qos_to_subscription: true,
    retained: true,
    will: true,
    persistent_sessions: true,
    v5: Some(V5Capabilities {
        user_properties: true,
        message_expiry_forwarded: true,
        message_expiry_enforced: true,
        subscription_identifiers: true,
        no_local: false,
        retain_handling_do_not_send: false,
        retain_handling_send_if_new: true,
        assigned_client_identifier: true,
        session_expiry: true,
    }),
};

/// How a broker process is held.
enum Process {
    /// A private Mosquitto.
    Mosquitto(Box<Broker>),
    /// A process we started; killed (and reaped) on drop, before its directory goes.
    Child {
        child: Child,
        watchdog: Option<Watchdog>,
        log: PathBuf,
        _dir: tempfile::TempDir,
    },
    /// A service we attach to; its log from the offset at attach time.
    Service { log: Option<PathBuf>, offset: u64 },
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Process::Child {
            child, watchdog, ..
        } = self
        {
            *watchdog = None;
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A running broker (or the attached RabbitMQ), ready for clients on 127.0.0.1.
pub struct MqttBroker {
    kind: BrokerKind,
    /// Port of the MQTT 3.1/3.1.1 listener.
    v3_port: u16,
    /// Port of the MQTT 5 listener, if it has one.
    v5_port: Option<u16>,
    credentials: Option<(&'static str, &'static str)>,
    process: Process,
}

impl MqttBroker {
    /// Starts (or attaches to) the broker; `Err` says why it is not available.
    pub fn start(kind: BrokerKind) -> Result<MqttBroker, String> {
        match kind {
            BrokerKind::Mosquitto => start_mosquitto(),
            BrokerKind::RabbitMq => attach_rabbitmq(),
            BrokerKind::Nats => start_nats(),
            BrokerKind::Rumqttd => start_rumqttd(),
        }
    }

    pub fn kind(&self) -> BrokerKind {
        self.kind
    }

    pub fn capabilities(&self) -> &'static Capabilities {
        self.kind.capabilities()
    }

    /// The port to use for `protocol`: the v5 listener for MQTT 5 when the broker has a
    /// separate one (rumqttd), else the one listener.
    pub fn port(&self, protocol: ProtocolVersion) -> u16 {
        match protocol {
            ProtocolVersion::V5 => self.v5_port.unwrap_or(self.v3_port),
            _ => self.v3_port,
        }
    }

    /// The port of the MQTT 3.1/3.1.1 listener.
    pub fn v3_port(&self) -> u16 {
        self.v3_port
    }

    /// A client builder for this broker and protocol: host, port, credentials, a 5 s
    /// timeout.
    pub fn builder(&self, protocol: ProtocolVersion) -> ClientBuilder {
        self.builder_on(self.port(protocol), protocol)
    }

    /// Like [`Self::builder`] but on a given port (e.g. MQTT 5 to a v4-only listener).
    pub fn builder_on(&self, port: u16, protocol: ProtocolVersion) -> ClientBuilder {
        let mut b = Client::builder("127.0.0.1")
            .port(port)
            .protocol(protocol)
            .timeout(Duration::from_secs(5));
        if let Some((user, pass)) = self.credentials {
            b = b.username(user).password(pass);
        }
        b
    }

    /// The broker's log (for RabbitMQ: what it logged since we attached).
    pub fn log(&self) -> String {
        match &self.process {
            Process::Mosquitto(b) => b.log(),
            Process::Child { log, .. } => read_lossy(log),
            Process::Service { log, offset } => log
                .as_ref()
                .map(|p| {
                    let all = std::fs::read(p).unwrap_or_default();
                    let off = (*offset as usize).min(all.len());
                    String::from_utf8_lossy(&all[off..]).into_owned()
                })
                .unwrap_or_default(),
        }
    }

    /// PID of a process we started (not of an attached service).
    pub fn pid(&self) -> Option<u32> {
        match &self.process {
            Process::Mosquitto(b) => b.pid(),
            Process::Child { child, .. } => Some(child.id()),
            Process::Service { .. } => None,
        }
    }
}

/// Starts the broker, or, when it is not available: fails naming it if
/// `AIOMQTT_REQUIRE_ALL_BROKERS=1`, else prints `SKIPPED <broker>: <why>` and returns `None`.
#[track_caller]
pub fn require(kind: BrokerKind) -> Option<MqttBroker> {
    match MqttBroker::start(kind) {
        Ok(b) => Some(b),
        Err(why) => {
            skip_or_fail(kind, &why);
            None
        }
    }
}

/// Whether `AIOMQTT_REQUIRE_ALL_BROKERS=1`: a missing broker is a failure.
pub fn require_all() -> bool {
    std::env::var(REQUIRE_ALL).is_ok_and(|v| v == "1")
}

/// The policy of [`require`] for a broker found unavailable.
#[track_caller]
pub fn skip_or_fail(kind: BrokerKind, why: &str) {
    if require_all() {
        panic!(
            "broker {} is not available ({REQUIRE_ALL}=1): {why}",
            kind.name()
        );
    }
    // Straight to fd 2: the test harness captures only print!/eprint!.
    let _ = writeln!(
        std::io::stderr(),
        "\n*** SKIPPED {}: {why} (run scripts/brokers.sh; set {REQUIRE_ALL}=1 to fail instead)\n",
        kind.name()
    );
}

/// The directory `scripts/brokers.sh` prepares.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os(CACHE_ENV) {
        return PathBuf::from(d);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/root/.cache"));
    base.join("aiomqtt-brokers")
}

// ---------------------------------------------------------------------------------------------
// Mosquitto

fn start_mosquitto() -> Result<MqttBroker, String> {
    if !Path::new(MOSQUITTO).exists() {
        return Err(format!(
            "{MOSQUITTO} not found (scripts/deps.sh test installs it)"
        ));
    }
    let broker = Broker::start();
    Ok(MqttBroker {
        kind: BrokerKind::Mosquitto,
        v3_port: broker.port(),
        v5_port: None,
        credentials: None,
        process: Process::Mosquitto(Box::new(broker)),
    })
}

// ---------------------------------------------------------------------------------------------
// RabbitMQ

fn attach_rabbitmq() -> Result<MqttBroker, String> {
    let port = match std::env::var(RABBITMQ_PORT_ENV) {
        Ok(p) => p
            .trim()
            .parse::<u16>()
            .map_err(|e| format!("{RABBITMQ_PORT_ENV}={p:?} is not a port: {e}"))?,
        Err(_) => {
            let file = cache_dir().join("rabbitmq-mqtt.port");
            let text = std::fs::read_to_string(&file).map_err(|e| {
                format!(
                    "its MQTT plugin is not prepared: cannot read {} ({e})",
                    file.display()
                )
            })?;
            text.trim()
                .parse::<u16>()
                .map_err(|e| format!("{} holds {text:?}, not a port: {e}", file.display()))?
        }
    };
    if !port_accepts(port) {
        return Err(format!(
            "nothing accepts connections on its MQTT port 127.0.0.1:{port} (is the service \
             running, and the rabbitmq_mqtt plugin enabled?)"
        ));
    }
    let log = rabbitmq_log();
    let offset = log
        .as_ref()
        .and_then(|p| std::fs::metadata(p).ok())
        .map_or(0, |m| m.len());
    Ok(MqttBroker {
        kind: BrokerKind::RabbitMq,
        v3_port: port,
        v5_port: None,
        // The default user, allowed from loopback only.
        credentials: Some(("guest", "guest")),
        process: Process::Service { log, offset },
    })
}

/// `rabbit@<host>.log` in Debian's log directory.
fn rabbitmq_log() -> Option<PathBuf> {
    let entries = std::fs::read_dir(RABBITMQ_LOG_DIR).ok()?;
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("rabbit@") && n.ends_with(".log"))
                && !p.to_string_lossy().contains("upgrade")
        })
        .max_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
}

// ---------------------------------------------------------------------------------------------
// NATS

fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .chain(["/usr/sbin", "/usr/bin"].map(|d| Path::new(d).join(program)))
        .find(|p| p.is_file())
}

fn spawn_logged(cmd: &mut Command, log: &Path) -> Result<Child, String> {
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| format!("cannot open {}: {e}", log.display()))?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .spawn()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))
}

fn start_nats() -> Result<MqttBroker, String> {
    let exe = which("nats-server")
        .ok_or("nats-server not found (scripts/brokers.sh installs the Debian package)")?;
    let dir = tempfile::Builder::new()
        .prefix("aiomqtt-nats-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let conf = dir.path().join("nats.conf");
    let log = dir.path().join("nats.log");
    let mut s = String::from("# generated by tests/it/support/brokers.rs\n");
    // -1: the server picks free ports and logs them.
    s.push_str("listen: 127.0.0.1:-1\n");
    s.push_str("server_name: aiomqtt-conformance\n");
    let _ = writeln!(
        s,
        "jetstream {{ store_dir: {:?} }}",
        dir.path().join("js").display().to_string()
    );
    s.push_str("mqtt { host: 127.0.0.1, port: -1 }\n");
    std::fs::write(&conf, s).map_err(|e| e.to_string())?;
    let child = spawn_logged(Command::new(&exe).arg("-c").arg(&conf), &log)?;
    let mut process = Process::Child {
        watchdog: Some(Watchdog::guard(child.id())),
        child,
        log: log.clone(),
        _dir: dir,
    };
    const MARK: &str = "Listening for MQTT clients on mqtt://127.0.0.1:";
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let text = read_lossy(&log);
        let port = text.find(MARK).and_then(|i| {
            text[i + MARK.len()..]
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|p| p.parse::<u16>().ok())
        });
        if let (Some(port), true) = (port, text.contains("Server is ready")) {
            if port_accepts(port) {
                return Ok(MqttBroker {
                    kind: BrokerKind::Nats,
                    v3_port: port,
                    v5_port: None,
                    credentials: None,
                    process,
                });
            }
        }
        if let Process::Child { child, .. } = &mut process {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "nats-server exited during start-up ({status}):\n{text}"
                ));
            }
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "nats-server not ready after {START_TIMEOUT:?}:\n{text}"
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------------
// rumqttd

/// The rumqttd binary: `$AIOMQTT_RUMQTTD`, `<cache>/bin/rumqttd` or `rumqttd` on `PATH`,
/// checked to be 0.20.x.
pub fn rumqttd_binary() -> Result<PathBuf, String> {
    let candidates: Vec<PathBuf> = match std::env::var_os(RUMQTTD_ENV) {
        Some(p) => vec![PathBuf::from(p)],
        None => [Some(cache_dir().join("bin/rumqttd")), which("rumqttd")]
            .into_iter()
            .flatten()
            .collect(),
    };
    let mut seen = Vec::new();
    for path in candidates {
        if !path.is_file() {
            seen.push(format!("{}: not found", path.display()));
            continue;
        }
        match Command::new(&path).arg("--version").output() {
            Ok(out) => {
                let v = String::from_utf8_lossy(&out.stdout).trim().to_owned();
                if v.starts_with(&format!("rumqttd {RUMQTTD_VERSION}")) {
                    return Ok(path);
                }
                seen.push(format!("{}: {v:?}, not {RUMQTTD_VERSION}x", path.display()));
            }
            Err(e) => seen.push(format!("{}: {e}", path.display())),
        }
    }
    Err(format!(
        "no rumqttd {RUMQTTD_VERSION}x binary (scripts/brokers.sh installs one): {}",
        seen.join("; ")
    ))
}

fn rumqttd_config(v4: u16, v5: u16) -> String {
    // The values of rumqttd's shipped rumqttd.toml, on loopback, without the websocket,
    // console and prometheus listeners.
    let connections = "connection_timeout_ms = 60000\nmax_payload_size = 20480\n\
                       max_inflight_count = 100\ndynamic_filters = true\n";
    format!(
        "# generated by tests/it/support/brokers.rs\n\
         id = 0\n\n\
         [router]\nid = 0\nmax_connections = 10010\nmax_outgoing_packet_count = 200\n\
         max_segment_size = 104857600\nmax_segment_count = 10\n\n\
         [v4.1]\nname = \"v4-1\"\nlisten = \"127.0.0.1:{v4}\"\nnext_connection_delay_ms = 1\n\
         [v4.1.connections]\n{connections}\n\
         [v5.1]\nname = \"v5-1\"\nlisten = \"127.0.0.1:{v5}\"\nnext_connection_delay_ms = 1\n\
         [v5.1.connections]\n{connections}"
    )
}

fn start_rumqttd() -> Result<MqttBroker, String> {
    let exe = rumqttd_binary()?;
    let dir = tempfile::Builder::new()
        .prefix("aiomqtt-rumqttd-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let conf = dir.path().join("rumqttd.toml");
    let log = dir.path().join("rumqttd.log");
    let mut last = String::new();
    // rumqttd binds ports we chose: another process may take one first; then retry.
    'attempt: for _ in 0..5 {
        let ports = free_ports(2);
        let (v4, v5) = (ports[0], ports[1]);
        std::fs::write(&conf, rumqttd_config(v4, v5)).map_err(|e| e.to_string())?;
        let offset = std::fs::metadata(&log).map_or(0, |m| m.len()) as usize;
        let mut child = spawn_logged(
            Command::new(&exe)
                .arg("--config")
                .arg(&conf)
                .arg("--quiet")
                // info: connections, disconnections and their reasons.
                .arg("-v")
                .env("NO_COLOR", "1")
                .current_dir(dir.path()),
            &log,
        )?;
        let watchdog = Watchdog::guard(child.id());
        let deadline = Instant::now() + START_TIMEOUT;
        let exited = loop {
            if let Ok(Some(status)) = child.try_wait() {
                break Some(status);
            }
            if port_accepts(v4) && port_accepts(v5) {
                // rumqttd keeps running when one of its listeners cannot bind: a port
                // another process took between `free_ports` and the bind accepts too.
                if super::sockets::process_listens_on(child.id(), v4)
                    && super::sockets::process_listens_on(child.id(), v5)
                {
                    break None;
                }
                drop(watchdog);
                let _ = child.kill();
                let _ = child.wait();
                last = format!(
                    "rumqttd did not get ports {v4} and {v5}:\n{}",
                    read_lossy(&log)
                );
                continue 'attempt;
            }
            if Instant::now() >= deadline {
                drop(watchdog);
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "rumqttd not ready after {START_TIMEOUT:?}:\n{}",
                    read_lossy(&log)
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        match exited {
            None => {
                return Ok(MqttBroker {
                    kind: BrokerKind::Rumqttd,
                    v3_port: v4,
                    v5_port: Some(v5),
                    credentials: None,
                    process: Process::Child {
                        child,
                        watchdog: Some(watchdog),
                        log,
                        _dir: dir,
                    },
                });
            }
            Some(status) => {
                drop(watchdog);
                let text = read_lossy(&log);
                last = format!(
                    "rumqttd exited during start-up ({status}):\n{}",
                    text.get(offset..).unwrap_or(&text)
                );
                if !last.contains("Address already in use") && !last.contains("AddrInUse") {
                    return Err(last);
                }
            }
        }
    }
    Err(last)
}
