//! A private Mosquitto broker per test (or per test file): generated config, free ports on
//! 127.0.0.1, killed by its own PID on drop.

use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::certs::{Certs, ServerCert};
use super::util::{
    Watchdog, free_ports, port_accepts, process_alive, read_lossy, run_with_timeout,
    running_as_root, send_signal, try_signal,
};

/// The Mosquitto binary.
pub const MOSQUITTO: &str = "/usr/sbin/mosquitto";
/// Debian's dynamic-security plugin.
pub const DYNSEC_PLUGIN: &str = "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so";
/// How long `start()`/`restart()` wait for every listener.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);
/// A subscription pattern that [`BrokerBuilder::dynsec_refusing`] with
/// [`DEFAULT_REFUSED`] refuses (as the Paho interoperability suite's `test/nosubscribe`).
pub const DEFAULT_REFUSED: &[&str] = &["nosubscribe/#", "test/nosubscribe"];

/// An OpenSSL configuration whose default for every `SSL_CTX` is at most TLS 1.2.
const TLS12_ONLY_OPENSSL_CONF: &str = "openssl_conf = default_conf
[default_conf]
ssl_conf = ssl_sect
[ssl_sect]
system_default = system_default_sect
[system_default_sect]
MaxProtocol = TLSv1.2
";

/// Without it Mosquitto 2.0.11 binds WebSockets listeners to every interface (IPv4 and
/// IPv6) whatever the `listener` address says; with it they honour 127.0.0.1.
const SOCKET_DOMAIN: &str = "socket_domain ipv4\n";

/// How a client reaches the broker (named `Listener`, not `Transport`, so `use support::*`
/// cannot clash with `aiomqtt::Transport`). `Broker::uri(l)` gives a Paho URI for each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Listener {
    Tcp,
    Tls,
    Ws,
    Wss,
    Unix,
}

impl Listener {
    /// Every transport, for suites that run over all of them.
    pub const ALL: [Listener; 5] = [
        Listener::Tcp,
        Listener::Tls,
        Listener::Ws,
        Listener::Wss,
        Listener::Unix,
    ];

    pub fn is_tls(self) -> bool {
        matches!(self, Listener::Tls | Listener::Wss)
    }

    pub fn name(self) -> &'static str {
        match self {
            Listener::Tcp => "tcp",
            Listener::Tls => "tls",
            Listener::Ws => "ws",
            Listener::Wss => "wss",
            Listener::Unix => "unix",
        }
    }
}

/// Options for [`Broker`]; obtain with [`Broker::builder`].
#[derive(Clone, Debug, Default)]
pub struct BrokerBuilder {
    websockets: bool,
    tls: bool,
    mutual_tls: bool,
    wss: bool,
    unix_socket: bool,
    users: Option<Vec<(String, String)>>,
    auth_acl: Option<String>,
    dynsec_json: Option<String>,
    max_inflight: Option<u32>,
    max_queued: Option<u32>,
    persistence: bool,
    extra: Vec<String>,
    listener_extra: Vec<String>,
    server_cert: ServerCert,
    tls_version: Option<&'static str>,
    tls12_only: bool,
}

impl BrokerBuilder {
    /// Adds a WebSockets listener (`ws_port()`).
    pub fn websockets(mut self) -> Self {
        self.websockets = true;
        self
    }
    /// Adds a TLS listener (`tls_port()`), server cert per [`Self::server_cert`].
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }
    /// Adds a TLS listener requiring a client certificate signed by the CA (`mtls_port()`).
    pub fn mutual_tls(mut self) -> Self {
        self.mutual_tls = true;
        self
    }
    /// Adds a WebSockets-over-TLS listener (`wss_port()`).
    pub fn wss(mut self) -> Self {
        self.wss = true;
        self
    }
    /// Adds a Unix-socket listener (`unix_path()`).
    pub fn unix_socket(mut self) -> Self {
        self.unix_socket = true;
        self
    }
    /// Everything [`Listener::ALL`] needs: WebSockets, TLS, WSS and a Unix socket.
    pub fn all_transports(self) -> Self {
        self.websockets().tls().wss().unix_socket()
    }
    /// Every listener: all transports, mutual TLS, and a password listener with user
    /// `user`/`pass`.
    pub fn all_listeners(self) -> Self {
        self.all_transports()
            .mutual_tls()
            .password_file(&[("user", "pass")])
    }
    /// Adds a plain-TCP listener (`auth_port()`) with `allow_anonymous false` and a password
    /// file holding these users. The other listeners stay anonymous.
    pub fn password_file(mut self, users: &[(&str, &str)]) -> Self {
        self.users = Some(
            users
                .iter()
                .map(|(u, p)| (u.to_string(), p.to_string()))
                .collect(),
        );
        self
    }
    /// An `acl_file` for the password listener (Mosquitto syntax, e.g.
    /// `"user user\ntopic readwrite allowed/#\n"`). Note: denied subscriptions are still
    /// *granted* by Mosquitto 2.0 (messages are just not delivered); use dynsec to refuse.
    pub fn auth_acl(mut self, acl: &str) -> Self {
        self.auth_acl = Some(acl.to_string());
        self
    }
    /// Loads the dynamic-security plugin on the plain TCP listener (`port()`), with anonymous
    /// clients allowed everything except subscribing to these filters (and anything below
    /// them): the broker answers SUBACK 0x80 (3.1.1) / 0x87 Not authorized (v5).
    pub fn dynsec(mut self, refused_filters: &[&str]) -> Self {
        self.dynsec_json = Some(dynsec_config(refused_filters));
        self
    }
    /// [`Self::dynsec`] with [`DEFAULT_REFUSED`].
    pub fn dynsec_refusing(self) -> Self {
        self.dynsec(DEFAULT_REFUSED)
    }
    /// Loads the dynamic-security plugin on the plain TCP listener with this JSON config.
    pub fn dynsec_json(mut self, json: &str) -> Self {
        self.dynsec_json = Some(json.to_string());
        self
    }
    /// `max_inflight_messages n` (Mosquitto's default is 20; 0 = unlimited).
    pub fn max_inflight_messages(mut self, n: u32) -> Self {
        self.max_inflight = Some(n);
        self
    }
    /// `max_queued_messages n` (default 1000).
    pub fn max_queued_messages(mut self, n: u32) -> Self {
        self.max_queued = Some(n);
        self
    }
    /// `persistence true` with the database in the broker's temp dir (survives `restart()`,
    /// written on SIGTERM; add `extra_config("autosave_interval 1")` to survive `kill()`).
    pub fn persistence(mut self, on: bool) -> Self {
        self.persistence = on;
        self
    }
    /// A global config line, written before the first listener.
    pub fn extra_config(mut self, line: &str) -> Self {
        self.extra.push(line.to_string());
        self
    }
    /// A config line repeated in every listener block (e.g. `max_topic_alias 0`).
    pub fn extra_listener_config(mut self, line: &str) -> Self {
        self.listener_extra.push(line.to_string());
        self
    }
    /// `tls_version` of the TLS/mTLS/WSS listeners (default `tlsv1.2`). In Mosquitto 2.0
    /// it is a *minimum*: `tlsv1.3` makes a TLS-1.3-only listener, `tlsv1.2` still speaks 1.3.
    pub fn tls_version(mut self, version: &'static str) -> Self {
        self.tls_version = Some(version);
        self
    }
    /// Caps the TLS/mTLS/WSS listeners at TLS 1.2: Mosquitto has no option for a maximum,
    /// so it runs with an OpenSSL configuration (`OPENSSL_CONF`, `MaxProtocol = TLSv1.2`)
    /// that its OpenSSL applies to every context.
    pub fn tls12_only(mut self) -> Self {
        self.tls12_only = true;
        self
    }
    /// Which certificate the TLS/mTLS/WSS listeners present.
    pub fn server_cert(mut self, which: ServerCert) -> Self {
        self.server_cert = which;
        self
    }
    /// Starts the broker; panics (with its log) if it is not ready within 10 s.
    #[track_caller]
    pub fn start(self) -> Broker {
        Broker::start_with(self)
    }

    fn needs_certs(&self) -> bool {
        self.tls || self.mutual_tls || self.wss
    }
}

fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Dynamic-security JSON: default ACL access allows everything; the anonymous group has a
/// role denying `subscribePattern` and `subscribeLiteral` on each filter.
pub fn dynsec_config(refused_filters: &[&str]) -> String {
    let mut acls = Vec::new();
    for f in refused_filters {
        for t in ["subscribePattern", "subscribeLiteral"] {
            acls.push(format!(
                r#"{{"acltype": "{t}", "topic": {}, "priority": 10, "allow": false}}"#,
                json_str(f)
            ));
        }
    }
    format!(
        r#"{{
  "defaultACLAccess": {{"publishClientSend": true, "publishClientReceive": true, "subscribe": true, "unsubscribe": true}},
  "clients": [],
  "groups": [{{"groupname": "anonymous", "roles": [{{"rolename": "refuser"}}], "clients": []}}],
  "roles": [{{"rolename": "refuser", "acls": [{}]}}],
  "anonymousGroup": "anonymous"
}}
"#,
        acls.join(", ")
    )
}

#[derive(Clone, Copy, Debug, Default)]
struct Ports {
    tcp: u16,
    ws: Option<u16>,
    tls: Option<u16>,
    mtls: Option<u16>,
    wss: Option<u16>,
    auth: Option<u16>,
}

impl Ports {
    fn all(&self) -> Vec<u16> {
        let mut v = vec![self.tcp];
        v.extend(
            [self.ws, self.tls, self.mtls, self.wss, self.auth]
                .into_iter()
                .flatten(),
        );
        v
    }
}

enum StartError {
    PortInUse(String),
    Failed(String),
}

/// A running (or stopped/killed/paused) Mosquitto process owned by the test.
pub struct Broker {
    cfg: BrokerBuilder,
    // Declared before `dir` so the process dies before its directory is removed.
    child: Option<Child>,
    watchdog: Option<Watchdog>,
    paused: bool,
    ports: Ports,
    unix_path: Option<PathBuf>,
    certs: OnceLock<Certs>,
    conf_path: PathBuf,
    log_path: PathBuf,
    stderr_path: PathBuf,
    dir: tempfile::TempDir,
}

impl Broker {
    pub fn builder() -> BrokerBuilder {
        BrokerBuilder::default()
    }

    /// A broker with only the plain TCP listener.
    #[track_caller]
    pub fn start() -> Broker {
        Broker::builder().start()
    }

    #[track_caller]
    fn start_with(cfg: BrokerBuilder) -> Broker {
        assert!(
            Path::new(MOSQUITTO).exists(),
            "{MOSQUITTO} not found (apt-get install mosquitto)"
        );
        let dir = tempfile::Builder::new()
            .prefix("aiomqtt-broker-")
            .tempdir()
            .expect("create broker temp dir");
        let d = dir.path().to_path_buf();
        let mut b = Broker {
            child: None,
            watchdog: None,
            paused: false,
            ports: Ports::default(),
            unix_path: cfg.unix_socket.then(|| d.join("mqtt.sock")),
            certs: OnceLock::new(),
            conf_path: d.join("mosquitto.conf"),
            log_path: d.join("mosquitto.log"),
            stderr_path: d.join("stderr.log"),
            cfg,
            dir,
        };
        if b.cfg.needs_certs() {
            b.certs();
        }
        if let Some(users) = &b.cfg.users {
            let pw = d.join("passwd");
            let mut text = String::new();
            for (u, p) in users {
                assert!(!u.contains(':'), "user names cannot contain ':'");
                let _ = writeln!(text, "{u}:{p}");
            }
            std::fs::write(&pw, text).expect("write password file");
            let out = run_with_timeout(
                Command::new("mosquitto_passwd").arg("-U").arg(&pw),
                Duration::from_secs(10),
            );
            assert!(
                out.status.success(),
                "mosquitto_passwd -U failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        if let Some(acl) = &b.cfg.auth_acl {
            std::fs::write(d.join("acl"), acl).expect("write acl");
        }
        if let Some(json) = &b.cfg.dynsec_json {
            assert!(
                Path::new(DYNSEC_PLUGIN).exists(),
                "{DYNSEC_PLUGIN} not found"
            );
            std::fs::write(d.join("dynamic-security.json"), json).expect("write dynsec json");
        }
        if b.cfg.persistence {
            std::fs::create_dir_all(d.join("persist")).expect("persist dir");
        }

        let mut last = String::new();
        for _attempt in 0..8 {
            b.pick_ports();
            b.write_config();
            match b.spawn_and_wait() {
                Ok(()) => return b,
                Err(StartError::PortInUse(msg)) => last = msg,
                Err(StartError::Failed(msg)) => panic!("{msg}"),
            }
        }
        panic!("mosquitto could not bind free ports after 8 attempts:\n{last}");
    }

    fn pick_ports(&mut self) {
        let c = &self.cfg;
        let n = 1 + [c.websockets, c.tls, c.mutual_tls, c.wss, c.users.is_some()]
            .iter()
            .filter(|x| **x)
            .count();
        let mut free = free_ports(n).into_iter();
        let mut next = |on: bool| on.then(|| free.next().unwrap());
        self.ports = Ports {
            tcp: next(true).unwrap(),
            ws: next(c.websockets),
            tls: next(c.tls),
            mtls: next(c.mutual_tls),
            wss: next(c.wss),
            auth: next(c.users.is_some()),
        };
    }

    fn write_config(&self) {
        let c = &self.cfg;
        let d = self.dir.path();
        let mut s = String::from("# generated by tests/support/broker.rs\n");
        if running_as_root() {
            s.push_str("user root\n");
        }
        let _ = writeln!(s, "log_dest file {}", self.log_path.display());
        s.push_str("log_type all\nlog_timestamp true\nlog_timestamp_format %Y-%m-%dT%H:%M:%S\n");
        s.push_str("connection_messages true\nper_listener_settings true\n");
        if c.persistence {
            s.push_str("persistence true\n");
            let _ = writeln!(s, "persistence_location {}/", d.join("persist").display());
        } else {
            s.push_str("persistence false\n");
        }
        if let Some(n) = c.max_inflight {
            let _ = writeln!(s, "max_inflight_messages {n}");
        }
        if let Some(n) = c.max_queued {
            let _ = writeln!(s, "max_queued_messages {n}");
        }
        for l in &c.extra {
            let _ = writeln!(s, "{l}");
        }
        let listener_extra = |s: &mut String| {
            for l in &c.listener_extra {
                let _ = writeln!(s, "{l}");
            }
        };
        let tls_lines = |s: &mut String| {
            let certs = self.certs.get().expect("certs written");
            let _ = writeln!(s, "cafile {}", certs.ca.display());
            let _ = writeln!(
                s,
                "certfile {}",
                certs.server_cert_for(c.server_cert).display()
            );
            let _ = writeln!(s, "keyfile {}", certs.server_key.display());
            let _ = writeln!(s, "tls_version {}", c.tls_version.unwrap_or("tlsv1.2"));
        };

        let p = &self.ports;
        s.push_str("\n# plain TCP\n");
        let _ = writeln!(s, "listener {} 127.0.0.1", p.tcp);
        s.push_str(SOCKET_DOMAIN);
        s.push_str("protocol mqtt\nallow_anonymous true\n");
        if c.dynsec_json.is_some() {
            let _ = writeln!(s, "plugin {DYNSEC_PLUGIN}");
            let _ = writeln!(
                s,
                "plugin_opt_config_file {}",
                d.join("dynamic-security.json").display()
            );
        }
        listener_extra(&mut s);
        if let Some(port) = p.ws {
            s.push_str("\n# WebSockets\n");
            let _ = writeln!(s, "listener {port} 127.0.0.1");
            s.push_str(SOCKET_DOMAIN);
            s.push_str("protocol websockets\nallow_anonymous true\n");
            listener_extra(&mut s);
        }
        if let Some(port) = p.tls {
            s.push_str("\n# TLS\n");
            let _ = writeln!(s, "listener {port} 127.0.0.1");
            s.push_str(SOCKET_DOMAIN);
            s.push_str("protocol mqtt\nallow_anonymous true\n");
            tls_lines(&mut s);
            listener_extra(&mut s);
        }
        if let Some(port) = p.mtls {
            s.push_str("\n# mutual TLS\n");
            let _ = writeln!(s, "listener {port} 127.0.0.1");
            s.push_str(SOCKET_DOMAIN);
            s.push_str("protocol mqtt\nallow_anonymous true\n");
            tls_lines(&mut s);
            s.push_str("require_certificate true\n");
            listener_extra(&mut s);
        }
        if let Some(port) = p.wss {
            s.push_str("\n# WebSockets over TLS\n");
            let _ = writeln!(s, "listener {port} 127.0.0.1");
            s.push_str(SOCKET_DOMAIN);
            s.push_str("protocol websockets\nallow_anonymous true\n");
            tls_lines(&mut s);
            listener_extra(&mut s);
        }
        if let Some(path) = &self.unix_path {
            s.push_str("\n# Unix socket\n");
            let _ = writeln!(s, "listener 0 {}", path.display());
            s.push_str("protocol mqtt\nallow_anonymous true\n");
            listener_extra(&mut s);
        }
        if let Some(port) = p.auth {
            s.push_str("\n# password auth\n");
            let _ = writeln!(s, "listener {port} 127.0.0.1");
            s.push_str(SOCKET_DOMAIN);
            s.push_str("protocol mqtt\nallow_anonymous false\n");
            let _ = writeln!(s, "password_file {}", d.join("passwd").display());
            if c.auth_acl.is_some() {
                let _ = writeln!(s, "acl_file {}", d.join("acl").display());
            }
            listener_extra(&mut s);
        }
        std::fs::write(&self.conf_path, s).expect("write mosquitto.conf");
    }

    fn spawn_and_wait(&mut self) -> Result<(), StartError> {
        let log_off = file_len(&self.log_path);
        let err_off = file_len(&self.stderr_path);
        if let Some(p) = &self.unix_path {
            let _ = std::fs::remove_file(p);
        }
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.stderr_path)
            .expect("open stderr log");
        let mut command = Command::new(MOSQUITTO);
        if self.cfg.tls12_only {
            let conf = self.dir.path().join("openssl-tls12.cnf");
            std::fs::write(&conf, TLS12_ONLY_OPENSSL_CONF).expect("write openssl.cnf");
            command.env("OPENSSL_CONF", conf);
        }
        let child = command
            .arg("-c")
            .arg(&self.conf_path)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::from(out.try_clone().expect("dup")))
            .stderr(Stdio::from(out))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {MOSQUITTO}: {e}"));
        self.watchdog = Some(Watchdog::guard(child.id()));
        self.child = Some(child);
        self.paused = false;

        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            let new_log = tail_from(&self.log_path, log_off);
            let new_err = tail_from(&self.stderr_path, err_off);
            if let Some(status) = exited {
                self.watchdog = None;
                self.child = None;
                let msg = format!(
                    "mosquitto exited during start-up ({status})\n{}",
                    self.describe(&new_log, &new_err)
                );
                // A TCP listener reports EADDRINUSE; a WebSockets one (libwebsockets) only
                // says it could not create the listener. Both mean: pick other ports.
                let port_taken = |t: &str| {
                    t.contains("Address already in use")
                        || t.contains("Unable to create websockets listener")
                };
                return Err(if port_taken(&new_log) || port_taken(&new_err) {
                    StartError::PortInUse(msg)
                } else {
                    StartError::Failed(msg)
                });
            }
            if new_log.contains(" running") && self.listeners_accept() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let msg = format!(
                    "mosquitto not ready after {START_TIMEOUT:?} (ports {:?}, unix {:?})\n{}",
                    self.ports.all(),
                    self.unix_path,
                    self.describe(&new_log, &new_err)
                );
                self.kill();
                return Err(StartError::Failed(msg));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn listeners_accept(&self) -> bool {
        self.ports.all().into_iter().all(port_accepts)
            && self
                .unix_path
                .as_ref()
                .is_none_or(|p| UnixStream::connect(p).is_ok())
    }

    fn describe(&self, log: &str, err: &str) -> String {
        format!(
            "--- config {} ---\n{}\n--- mosquitto log ---\n{}\n--- stderr/stdout ---\n{}",
            self.conf_path.display(),
            read_lossy(&self.conf_path),
            log,
            err
        )
    }

    // ----- accessors -----

    /// Plain TCP port (anonymous; dynsec if configured).
    pub fn port(&self) -> u16 {
        self.ports.tcp
    }
    #[track_caller]
    pub fn ws_port(&self) -> u16 {
        self.ports.ws.expect("broker built without .websockets()")
    }
    #[track_caller]
    pub fn tls_port(&self) -> u16 {
        self.ports.tls.expect("broker built without .tls()")
    }
    #[track_caller]
    pub fn mtls_port(&self) -> u16 {
        self.ports.mtls.expect("broker built without .mutual_tls()")
    }
    #[track_caller]
    pub fn wss_port(&self) -> u16 {
        self.ports.wss.expect("broker built without .wss()")
    }
    #[track_caller]
    pub fn auth_port(&self) -> u16 {
        self.ports
            .auth
            .expect("broker built without .password_file()")
    }
    #[track_caller]
    pub fn unix_path(&self) -> &Path {
        self.unix_path
            .as_deref()
            .expect("broker built without .unix_socket()")
    }
    /// `host:port` style address of the plain TCP listener.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.ports.tcp)
    }
    /// Paho URI: `tcp://127.0.0.1:P`, `ssl://localhost:P`, `ws://127.0.0.1:P/mqtt`,
    /// `wss://localhost:P/mqtt`, `unix:///…/mqtt.sock`. TLS URIs use `localhost` so that
    /// hostname verification succeeds with [`ServerCert::Good`].
    #[track_caller]
    pub fn uri(&self, t: Listener) -> String {
        match t {
            Listener::Tcp => format!("tcp://127.0.0.1:{}", self.port()),
            Listener::Tls => format!("ssl://localhost:{}", self.tls_port()),
            Listener::Ws => format!("ws://127.0.0.1:{}/mqtt", self.ws_port()),
            Listener::Wss => format!("wss://localhost:{}/mqtt", self.wss_port()),
            Listener::Unix => format!("unix://{}", self.unix_path().display()),
        }
    }
    /// Certificates (written into the broker's temp dir; generated once per process).
    pub fn certs(&self) -> &Certs {
        self.certs
            .get_or_init(|| Certs::write_to(&self.dir.path().join("certs")))
    }
    /// The broker's temp directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
    /// The generated `mosquitto.conf`.
    pub fn config(&self) -> String {
        read_lossy(&self.conf_path)
    }
    /// The whole Mosquitto log (all runs of this broker, `log_type all`).
    pub fn log(&self) -> String {
        read_lossy(&self.log_path)
    }
    /// What Mosquitto printed on stdout/stderr (start-up errors before the log opens).
    pub fn stderr(&self) -> String {
        read_lossy(&self.stderr_path)
    }
    /// Waits until the log contains `needle` (at most `dur`), else panics with the log.
    #[track_caller]
    pub fn wait_for_log(&self, needle: &str, dur: Duration) {
        if !super::util::wait_until(dur, || self.log().contains(needle)) {
            panic!(
                "broker log did not contain {needle:?} within {dur:?}\n--- log ---\n{}",
                self.log()
            );
        }
    }
    /// PID of the current Mosquitto process, if one is running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }
    /// Whether the process is running (true while paused too).
    pub fn is_running(&self) -> bool {
        self.pid().is_some_and(process_alive)
    }

    // ----- process control -----

    /// SIGKILL and reap. The ports are free until `start_again()`/`restart()`.
    pub fn kill(&mut self) {
        // SIGKILL first and the watchdog disarmed after: a test process that crashes in
        // between (the fault tests provoke such crashes, often while unwinding through this
        // drop) still takes its broker with it. Until it is reaped the PID cannot be reused,
        // so a late watchdog cannot hit another process.
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
        }
        self.watchdog = None;
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
        self.paused = false;
    }

    /// Graceful stop: SIGTERM (Mosquitto saves its persistence file), wait up to 10 s, then
    /// SIGKILL.
    pub fn stop(&mut self) {
        let Some(pid) = self.pid() else {
            return;
        };
        try_signal(pid, "TERM");
        if self.paused {
            try_signal(pid, "CONT");
        }
        if !super::util::wait_until(Duration::from_secs(10), || !process_alive(pid)) {
            eprintln!("mosquitto {pid} ignored SIGTERM for 10 s; killing it");
        }
        self.kill();
    }

    /// Starts the process again after `kill()`/`stop()` on the same ports and socket path,
    /// same config and persistence directory. Panics if not ready within 10 s.
    #[track_caller]
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "broker is still running");
        let mut last = String::new();
        for _ in 0..20 {
            match self.spawn_and_wait() {
                Ok(()) => return,
                // Someone else may have grabbed a port meanwhile: wait and retry.
                Err(StartError::PortInUse(msg)) => {
                    last = msg;
                    std::thread::sleep(Duration::from_millis(250));
                }
                Err(StartError::Failed(msg)) => panic!("{msg}"),
            }
        }
        panic!("mosquitto could not re-bind its ports:\n{last}");
    }

    /// SIGTERM, wait, and start again on the SAME ports (and socket path).
    #[track_caller]
    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }

    /// SIGSTOP: the broker stops answering (TCP connects still complete in the kernel).
    /// Returns once the kernel reports the process stopped.
    pub fn pause(&mut self) {
        let pid = self.pid().expect("broker not running");
        send_signal(pid, "STOP");
        self.paused = true;
        let stopped = super::util::wait_until(Duration::from_secs(5), || {
            super::util::process_state(pid) == Some('T')
        });
        assert!(
            stopped,
            "mosquitto {pid} not stopped 5 s after SIGSTOP (state {:?})",
            super::util::process_state(pid)
        );
    }

    /// SIGCONT after [`Self::pause`].
    pub fn resume(&mut self) {
        let pid = self.pid().expect("broker not running");
        // Shown with a failing test's output: a broker continued by something else while
        // the test relied on it being stopped.
        let state = super::util::process_state(pid);
        if state != Some('T') {
            eprintln!("mosquitto {pid} was not stopped when resumed (state {state:?})");
        }
        send_signal(pid, "CONT");
        self.paused = false;
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

fn tail_from(p: &Path, off: u64) -> String {
    let all = std::fs::read(p).unwrap_or_default();
    let off = (off as usize).min(all.len());
    String::from_utf8_lossy(&all[off..]).into_owned()
}
