//! The integration suite: one test binary (one link of Paho C and OpenSSL) whose
//! modules each cover one area. Every broker-backed test starts its own Mosquitto
//! (see `support`). Tests that may abort the process, that count its threads or file
//! descriptors, or whose client resumes a session with publishes unacknowledged (Paho C
//! then resends every client's, see `faults`) re-run themselves in a child process
//! (`support::isolate::isolated`).

mod support;

mod aiomqtt_suite;
mod client;
mod conformance;
mod errors;
mod fake_broker_selftest;
mod faults;
mod flow;
mod harness_selftest;
mod hostile;
mod inflight;
mod interop;
mod messages;
mod operations;
mod options;
mod proxy;
mod reconnect;
mod relay;
mod resubscribe;
mod secrets;
mod tls;
mod topic;
mod transports;
