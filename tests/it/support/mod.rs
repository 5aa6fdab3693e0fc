//! Integration-test harness: private Mosquitto brokers, test certificates, a fault-injecting
//! TCP proxy, a real HTTP CONNECT proxy and small helpers. Specified by `TESTING.md`.
//!
//! Use from a test file with `mod support;` (then `use support::*;`). Every item is optional,
//! hence `dead_code` is allowed.
//!
//! - [`Broker`]: `Broker::start()` or `Broker::builder().tls().websockets()….start()`; one
//!   Mosquitto process per value, free ports, killed on drop. `uri(Listener)` for each
//!   transport, `restart()`/`kill()`/`start_again()`/`pause()`/`resume()`, `log()`.
//!   The start-up probe connects once to every listener, so the log starts with one
//!   `Client <unknown> closed its connection` / TLS `unexpected eof` line per listener.
//! - [`Certs`]: CA, server certs (good / wrong host / expired), client cert + plain and
//!   encrypted key, an unrelated CA; generated once per process. `broker.certs()`.
//! - [`FaultProxy`]: cut (RST/FIN), blackhole, delay, refuse, `cut_on` the n-th packet of a
//!   type, packet trace (`recorded()`, `trace()`, `wait_for`).
//! - [`FakeBroker`]: a scripted fake broker (tokio, free port) that sends what a real one
//!   will not — invalid topics, truncated packets, bad lengths, stray acks; [`packets`] has
//!   byte-exact 3.1.1/5.0 encoders, malformed ones included.
//! - [`HttpProxy`]: tinyproxy allowing CONNECT to given ports, optional Basic auth.
//! - [`socks`]: SOCKS proxies — Dante (4/5), microsocks (5 with credentials, remote DNS in
//!   a private mount namespace) and a scripted 4/4a/5 server that records requests.
//! - [`sockets`]: this process's TCP sockets, file descriptors and threads from `/proc`.
//! - [`TlsFront`]: an OpenSSL server in the test before a broker's plain port, for TLS
//!   behaviour Mosquitto cannot be configured to (TLS 1.2 only with chosen suites; a TLS 1.3
//!   server that asks for a client certificate and sends no session tickets).
//! - [`ran_in_child`] / [`isolated`]: run one test alone in a child process (crashes,
//!   whole-process views).
//! - Helpers: [`unique_topic`], [`init_logging`], [`with_timeout`], `within!`,
//!   [`run_bounded`], [`run_with_timeout`], [`ChildGuard`], [`wait_until`],
//!   [`loss_detection_bound`] (how late Paho may report a dead link).
#![allow(dead_code)]
#![allow(unused_imports)]

pub mod broker;
pub mod brokers;
pub mod certs;
pub mod fake_broker;
pub mod fault_proxy;
pub mod http_proxy;
pub mod isolate;
pub mod logcap;
pub mod mqtt;
pub mod sockets;
pub mod socks;
pub mod tls_front;
pub mod util;

pub use broker::{Broker, BrokerBuilder, DEFAULT_REFUSED, Listener};
pub use certs::{CLIENT_KEY_PASSPHRASE, Certs, ServerCert, WRONG_HOSTNAME};
pub use fake_broker::{ConnectInfo, Event, FakeBroker, FakeConn, packets};
pub use fault_proxy::{CutMode, Direction, FaultProxy, Packet, PacketType};
pub use http_proxy::HttpProxy;
pub use isolate::{ChildRun, in_child, isolated, ran_in_child};
pub use logcap::{all_records, capture_logger, logged};
pub use tls_front::{Handshake, TlsFront};
pub use util::{
    ChildGuard, IntoTimeout, Watchdog, free_port, free_ports, init_logging, loss_detection_bound,
    port_accepts, process_alive, process_state, run_bounded, run_with_timeout, send_signal,
    try_signal, unique_topic, wait_until, wait_until_async, with_timeout, with_timeout_ctx,
};
