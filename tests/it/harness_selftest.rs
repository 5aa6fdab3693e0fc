//! Proves the integration-test harness in `tests/support/` works, without the crate's client:
//! Mosquitto's own CLI clients, a few raw MQTT packets written by hand, and `openssl`.
//! Every test is bounded in time and asserts something that would fail if the harness broke.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::*;
use crate::within;

const T: Duration = Duration::from_secs(60);
const CMD: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------------
// Raw MQTT (just enough to test the harness).
mod raw {
    use std::io::{self, Read};

    pub fn varint(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let mut b = (n % 128) as u8;
            n /= 128;
            if n > 0 {
                b |= 0x80;
            }
            out.push(b);
            if n == 0 {
                break;
            }
        }
    }

    pub fn string(s: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(&(s.len() as u16).to_be_bytes());
        out.extend_from_slice(s);
    }

    pub fn packet(first: u8, body: &[u8]) -> Vec<u8> {
        let mut p = vec![first];
        varint(body.len(), &mut p);
        p.extend_from_slice(body);
        p
    }

    #[derive(Default)]
    pub struct Connect<'a> {
        pub client_id: &'a str,
        pub v5: bool,
        pub keepalive: u16,
        pub will: Option<(&'a str, &'a [u8])>,
        pub user: Option<(&'a str, &'a str)>,
    }

    pub fn connect(c: &Connect<'_>) -> Vec<u8> {
        let mut b = Vec::new();
        string(b"MQTT", &mut b);
        b.push(if c.v5 { 5 } else { 4 });
        let mut flags = 0x02;
        if c.will.is_some() {
            flags |= 0x04;
        }
        if c.user.is_some() {
            flags |= 0xC0;
        }
        b.push(flags);
        b.extend_from_slice(&c.keepalive.to_be_bytes());
        if c.v5 {
            b.push(0);
        }
        string(c.client_id.as_bytes(), &mut b);
        if let Some((t, m)) = c.will {
            if c.v5 {
                b.push(0);
            }
            string(t.as_bytes(), &mut b);
            string(m, &mut b);
        }
        if let Some((u, p)) = c.user {
            string(u.as_bytes(), &mut b);
            string(p.as_bytes(), &mut b);
        }
        packet(0x10, &b)
    }

    pub fn subscribe(pid: u16, filters: &[(&str, u8)], v5: bool) -> Vec<u8> {
        let mut b = pid.to_be_bytes().to_vec();
        if v5 {
            b.push(0);
        }
        for (f, q) in filters {
            string(f.as_bytes(), &mut b);
            b.push(*q);
        }
        packet(0x82, &b)
    }

    /// `flags`: extra low-nibble bits (DUP 0x08, RETAIN 0x01).
    pub fn publish(topic: &str, payload: &[u8], qos: u8, pid: u16, flags: u8) -> Vec<u8> {
        let mut b = Vec::new();
        string(topic.as_bytes(), &mut b);
        if qos > 0 {
            b.extend_from_slice(&pid.to_be_bytes());
        }
        b.extend_from_slice(payload);
        packet(0x30 | (qos << 1) | flags, &b)
    }

    pub const PINGREQ: [u8; 2] = [0xC0, 0x00];

    pub fn read_packet(r: &mut impl Read) -> io::Result<(u8, Vec<u8>)> {
        let mut first = [0u8; 1];
        r.read_exact(&mut first)?;
        let (mut len, mut mult) = (0usize, 1usize);
        loop {
            let mut b = [0u8; 1];
            r.read_exact(&mut b)?;
            len += (b[0] as usize & 0x7f) * mult;
            mult *= 128;
            if b[0] & 0x80 == 0 {
                break;
            }
        }
        let mut body = vec![0u8; len];
        r.read_exact(&mut body)?;
        Ok((first[0], body))
    }
}

/// TCP connection with a read timeout.
fn tcp(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// Sends CONNECT, returns the CONNACK body.
fn mqtt_connect(s: &mut (impl Read + Write), c: &raw::Connect<'_>) -> Vec<u8> {
    s.write_all(&raw::connect(c)).unwrap();
    let (first, body) = raw::read_packet(s).expect("read CONNACK");
    assert_eq!(first, 0x20, "expected CONNACK, got {first:#x} {body:?}");
    body
}

fn connect_ok(s: &mut (impl Read + Write), id: &str) {
    let ack = mqtt_connect(
        s,
        &raw::Connect {
            client_id: id,
            keepalive: 60,
            ..Default::default()
        },
    );
    assert_eq!(ack, [0, 0], "CONNACK refused: {ack:?}");
}

fn text(o: &std::process::Output) -> String {
    format!(
        "status {}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Arguments to reach one listener with mosquitto_pub/mosquitto_sub.
fn cli_args(b: &Broker, which: &str) -> Vec<String> {
    let c = b.certs();
    let s = |x: &std::path::Path| x.display().to_string();
    match which {
        "tcp" => vec![
            "-h".into(),
            "127.0.0.1".into(),
            "-p".into(),
            b.port().to_string(),
        ],
        "tls" => vec![
            "-h".into(),
            "localhost".into(),
            "-p".into(),
            b.tls_port().to_string(),
            "--cafile".into(),
            s(&c.ca),
        ],
        "mtls" => vec![
            "-h".into(),
            "localhost".into(),
            "-p".into(),
            b.mtls_port().to_string(),
            "--cafile".into(),
            s(&c.ca),
            "--cert".into(),
            s(&c.client_cert),
            "--key".into(),
            s(&c.client_key),
        ],
        "unix" => vec!["--unix".into(), s(b.unix_path())],
        "auth" => vec![
            "-h".into(),
            "127.0.0.1".into(),
            "-p".into(),
            b.auth_port().to_string(),
            "-u".into(),
            "user".into(),
            "-P".into(),
            "pass".into(),
        ],
        other => panic!("no CLI args for {other}"),
    }
}

/// One publish with mosquitto_pub (connect, publish QoS 1, disconnect).
fn cli_pub(args: &[String], topic: &str, msg: &str, extra: &[&str]) -> std::process::Output {
    run_with_timeout(
        Command::new("mosquitto_pub")
            .args(args)
            .args(["-q", "1", "-t", topic, "-m", msg])
            .args(extra),
        CMD,
    )
}

/// Subscribes with mosquitto_sub over `sub_args`, publishes over `pub_args`, checks arrival.
fn cli_roundtrip(b: &Broker, sub_args: &[String], pub_args: &[String], name: &str) {
    let topic = unique_topic(name);
    let mut sub = ChildGuard::spawn(
        Command::new("mosquitto_sub")
            .args(sub_args)
            .args(["-t", &topic, "-q", "1", "-C", "1", "-W", "10"]),
    );
    // The broker logs each subscription: publish only once it is in place.
    let sub_line = format!("\t{topic} (QoS 1)");
    if !wait_until(Duration::from_secs(10), || b.log().contains(&sub_line)) {
        let (o, e) = sub.kill_and_collect();
        panic!(
            "subscription never reached the broker\nsub: {o}{e}\nlog:\n{}",
            b.log()
        );
    }
    let out = cli_pub(pub_args, &topic, "hello-harness", &[]);
    assert!(out.status.success(), "mosquitto_pub failed: {}", text(&out));
    let out = sub
        .wait_output_timeout(CMD)
        .expect("mosquitto_sub did not exit");
    assert!(out.status.success(), "mosquitto_sub failed: {}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "hello-harness");
}

// ---------------------------------------------------------------------------------------------
// Certificates

#[test]
fn certificates_verify_as_intended() {
    run_bounded(T, || {
        use openssl::pkey::PKey;
        use openssl::stack::Stack;
        use openssl::x509::store::X509StoreBuilder;
        use openssl::x509::{X509, X509StoreContext, X509VerifyResult};

        let dir = tempfile::tempdir().unwrap();
        let c = Certs::write_to(dir.path());
        let load = |p: &std::path::Path| X509::from_pem(&std::fs::read(p).unwrap()).unwrap();
        let verify = |ca: &std::path::Path, cert: &std::path::Path| -> X509VerifyResult {
            let mut sb = X509StoreBuilder::new().unwrap();
            sb.add_cert(load(ca)).unwrap();
            let store = sb.build();
            let mut ctx = X509StoreContext::new().unwrap();
            ctx.init(&store, &load(cert), &Stack::new().unwrap(), |ctx| {
                ctx.verify_cert()?;
                Ok(ctx.error())
            })
            .unwrap()
        };
        let ok = X509VerifyResult::OK;
        assert_eq!(verify(&c.ca, &c.server_cert), ok);
        assert_eq!(verify(&c.ca, &c.wrong_host_cert), ok);
        assert_eq!(verify(&c.ca, &c.client_cert), ok);
        assert_eq!(verify(&c.other_ca, &c.other_client_cert), ok);
        assert_ne!(verify(&c.other_ca, &c.server_cert), ok);
        assert_ne!(verify(&c.ca, &c.other_client_cert), ok);
        let expired = verify(&c.ca, &c.expired_cert);
        assert_eq!(expired.error_string(), "certificate has expired");

        let sans = |p: &std::path::Path| -> Vec<String> {
            load(p)
                .subject_alt_names()
                .map(|names| {
                    names
                        .iter()
                        .map(|n| match (n.dnsname(), n.ipaddress()) {
                            (Some(d), _) => d.to_string(),
                            (_, Some(ip)) => format!("{ip:?}"),
                            _ => "?".into(),
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
        assert_eq!(sans(&c.server_cert), ["localhost", "[127, 0, 0, 1]"]);
        assert_eq!(sans(&c.expired_cert), ["localhost", "[127, 0, 0, 1]"]);
        assert_eq!(sans(&c.wrong_host_cert), [WRONG_HOSTNAME]);

        // The encrypted key is the client key, and only the passphrase opens it.
        let enc = std::fs::read(&c.client_key_encrypted).unwrap();
        assert!(String::from_utf8_lossy(&enc).contains("BEGIN ENCRYPTED PRIVATE KEY"));
        let key = PKey::private_key_from_pem_passphrase(&enc, c.client_key_passphrase.as_bytes())
            .expect("decrypt with passphrase");
        assert!(PKey::private_key_from_pem_passphrase(&enc, b"wrong").is_err());
        assert!(load(&c.client_cert).public_key().unwrap().public_eq(&key));
        assert_eq!(c.client_key_passphrase, CLIENT_KEY_PASSPHRASE);

        // Generated once per process: a second copy is byte-identical.
        let dir2 = tempfile::tempdir().unwrap();
        let c2 = Certs::write_to(dir2.path());
        assert_eq!(
            std::fs::read(&c.ca).unwrap(),
            std::fs::read(&c2.ca).unwrap()
        );
        assert!(Certs::shared().ca.exists());
    });
}

// ---------------------------------------------------------------------------------------------
// Listeners

#[test]
fn tcp_roundtrip_and_config() {
    run_bounded(T, || {
        let b = Broker::builder()
            .max_inflight_messages(5)
            .max_queued_messages(7)
            .extra_config("max_keepalive 100")
            .extra_listener_config("max_connections 50")
            .start();
        let conf = b.config();
        for line in [
            "max_inflight_messages 5",
            "max_queued_messages 7",
            "max_keepalive 100",
            "max_connections 50",
            &format!("listener {} 127.0.0.1", b.port()),
        ] {
            assert!(conf.contains(line), "config lacks {line:?}:\n{conf}");
        }
        assert!(b.log().contains("mosquitto version 2.0.11 running"));
        let a = cli_args(&b, "tcp");
        cli_roundtrip(&b, &a, &a, "tcp_roundtrip");
        assert_eq!(
            b.uri(Listener::Tcp),
            format!("tcp://127.0.0.1:{}", b.port())
        );
    });
}

#[test]
fn tls_roundtrip_and_rejections() {
    run_bounded(T, || {
        let b = Broker::builder().tls().start();
        let a = cli_args(&b, "tls");
        cli_roundtrip(&b, &a, &a, "tls_roundtrip");
        assert_eq!(
            b.uri(Listener::Tls),
            format!("ssl://localhost:{}", b.tls_port())
        );
        // A client trusting only the unrelated CA must fail.
        let c = b.certs();
        let bad = vec![
            "-h".to_string(),
            "localhost".into(),
            "-p".into(),
            b.tls_port().to_string(),
            "--cafile".into(),
            c.other_ca.display().to_string(),
        ];
        let out = cli_pub(&bad, "x", "y", &[]);
        assert!(!out.status.success(), "unknown CA accepted: {}", text(&out));
        // Plain MQTT on the TLS port gets no CONNACK.
        let mut s = tcp(b.tls_port());
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.write_all(&raw::connect(&raw::Connect {
            client_id: "plain",
            keepalive: 60,
            ..Default::default()
        }))
        .unwrap();
        assert!(raw::read_packet(&mut s).is_err());
    });
}

#[test]
fn wrong_host_and_expired_server_certs_fail_verification() {
    run_bounded(T, || {
        for which in [ServerCert::WrongHost, ServerCert::Expired] {
            let b = Broker::builder().tls().server_cert(which).start();
            let a = cli_args(&b, "tls");
            let out = cli_pub(&a, "x", "y", &[]);
            assert!(!out.status.success(), "{which:?} accepted: {}", text(&out));
            // --insecure skips only the hostname check: it rescues WrongHost, not Expired.
            let out = cli_pub(&a, "x", "y", &["--insecure"]);
            match which {
                ServerCert::WrongHost => {
                    assert!(out.status.success(), "--insecure failed: {}", text(&out))
                }
                _ => assert!(!out.status.success(), "expired accepted: {}", text(&out)),
            }
        }
    });
}

#[test]
fn mutual_tls_requires_a_client_cert_from_the_ca() {
    run_bounded(T, || {
        let b = Broker::builder().mutual_tls().start();
        let a = cli_args(&b, "mtls");
        cli_roundtrip(&b, &a, &a, "mtls_roundtrip");
        let c = b.certs();
        let base = vec![
            "-h".to_string(),
            "localhost".into(),
            "-p".into(),
            b.mtls_port().to_string(),
            "--cafile".into(),
            c.ca.display().to_string(),
        ];
        let out = cli_pub(&base, "x", "y", &[]);
        assert!(
            !out.status.success(),
            "no client cert accepted: {}",
            text(&out)
        );
        let mut other = base.clone();
        other.extend([
            "--cert".into(),
            c.other_client_cert.display().to_string(),
            "--key".into(),
            c.other_client_key.display().to_string(),
        ]);
        let out = cli_pub(&other, "x", "y", &[]);
        assert!(
            !out.status.success(),
            "untrusted client cert accepted: {}",
            text(&out)
        );
    });
}

#[test]
fn unix_socket_roundtrip() {
    run_bounded(T, || {
        let b = Broker::builder().unix_socket().start();
        assert!(b.log().contains("Opening unix listen socket on path"));
        let sub = cli_args(&b, "unix");
        let publ = cli_args(&b, "tcp");
        cli_roundtrip(&b, &sub, &publ, "unix_roundtrip");
        assert_eq!(
            b.uri(Listener::Unix),
            format!("unix://{}", b.unix_path().display())
        );
    });
}

#[test]
fn password_listener_checks_credentials_and_others_stay_anonymous() {
    run_bounded(T, || {
        let b = Broker::builder()
            .password_file(&[("user", "pass"), ("other", "secret")])
            .start();
        let good = cli_args(&b, "auth");
        cli_roundtrip(&b, &good, &good, "auth_roundtrip");
        let mut wrong = good.clone();
        *wrong.last_mut().unwrap() = "nope".into();
        let out = cli_pub(&wrong, "x", "y", &[]);
        assert!(
            !out.status.success(),
            "wrong password accepted: {}",
            text(&out)
        );
        assert!(
            text(&out).contains("not authorised"),
            "unexpected error: {}",
            text(&out)
        );
        let anon = vec!["-p".to_string(), b.auth_port().to_string()];
        let out = cli_pub(&anon, "x", "y", &[]);
        assert!(!out.status.success(), "anonymous accepted: {}", text(&out));
        // Raw: CONNACK 0x05 (not authorized) on 3.1.1.
        let mut s = tcp(b.auth_port());
        let ack = mqtt_connect(
            &mut s,
            &raw::Connect {
                client_id: "raw-auth",
                keepalive: 60,
                user: Some(("other", "wrong")),
                ..Default::default()
            },
        );
        assert_eq!(ack, [0, 5]);
        let mut s = tcp(b.auth_port());
        let ack = mqtt_connect(
            &mut s,
            &raw::Connect {
                client_id: "raw-auth2",
                keepalive: 60,
                user: Some(("other", "secret")),
                ..Default::default()
            },
        );
        assert_eq!(ack, [0, 0]);
        // The plain listener is still anonymous.
        let out = cli_pub(&cli_args(&b, "tcp"), "x", "y", &[]);
        assert!(
            out.status.success(),
            "anonymous tcp refused: {}",
            text(&out)
        );
    });
}

// WebSockets: a minimal client (handshake + masked binary frames).
struct WsMqtt<S: Read + Write> {
    s: S,
    buf: Vec<u8>,
}

impl<S: Read + Write> WsMqtt<S> {
    fn handshake(mut s: S, host: &str) -> Self {
        let req = format!(
            "GET /mqtt HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Protocol: mqtt\r\n\r\n"
        );
        s.write_all(req.as_bytes()).unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut byte).expect("read handshake");
            head.push(byte[0]);
            assert!(head.len() < 8192, "handshake too long");
        }
        let head = String::from_utf8_lossy(&head);
        assert!(head.starts_with("HTTP/1.1 101"), "no upgrade: {head}");
        assert!(
            head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            "bad accept: {head}"
        );
        WsMqtt { s, buf: Vec::new() }
    }

    fn send(&mut self, payload: &[u8]) {
        let mask = [0x12u8, 0x34, 0x56, 0x78];
        let mut f = vec![0x82];
        assert!(payload.len() < 126);
        f.push(0x80 | payload.len() as u8);
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.s.write_all(&f).unwrap();
    }

    fn read_frame(&mut self) -> io::Result<()> {
        let mut h = [0u8; 2];
        self.s.read_exact(&mut h)?;
        let mut len = (h[1] & 0x7f) as usize;
        if len == 126 {
            let mut l = [0u8; 2];
            self.s.read_exact(&mut l)?;
            len = u16::from_be_bytes(l) as usize;
        } else if len == 127 {
            let mut l = [0u8; 8];
            self.s.read_exact(&mut l)?;
            len = u64::from_be_bytes(l) as usize;
        }
        let mut p = vec![0u8; len];
        self.s.read_exact(&mut p)?;
        if h[0] & 0x0f == 0x2 || h[0] & 0x0f == 0x0 {
            self.buf.extend_from_slice(&p);
        }
        Ok(())
    }

    fn read_packet(&mut self) -> io::Result<(u8, Vec<u8>)> {
        loop {
            let mut cur = io::Cursor::new(&self.buf[..]);
            if let Ok(p) = raw::read_packet(&mut cur) {
                let used = cur.position() as usize;
                self.buf.drain(..used);
                return Ok(p);
            }
            self.read_frame()?;
        }
    }
}

/// Connect + subscribe over WebSockets, publish with mosquitto_pub over TCP, receive.
fn ws_roundtrip<S: Read + Write>(b: &Broker, s: S, host: &str, name: &str) {
    let topic = unique_topic(name);
    let mut ws = WsMqtt::handshake(s, host);
    ws.send(&raw::connect(&raw::Connect {
        client_id: name,
        keepalive: 60,
        ..Default::default()
    }));
    assert_eq!(ws.read_packet().unwrap(), (0x20, vec![0, 0]));
    ws.send(&raw::subscribe(7, &[(&topic, 0)], false));
    assert_eq!(ws.read_packet().unwrap(), (0x90, vec![0, 7, 0]));
    let out = cli_pub(&cli_args(b, "tcp"), &topic, "over-ws", &[]);
    assert!(out.status.success(), "{}", text(&out));
    let (first, body) = ws.read_packet().unwrap();
    assert_eq!(first, 0x30);
    assert!(body.ends_with(b"over-ws"), "{body:?}");
}

#[test]
fn websockets_roundtrip_and_loopback_only() {
    run_bounded(T, || {
        let b = Broker::builder().websockets().start();
        assert!(b.log().contains(&format!(
            "Opening websockets listen socket on port {}",
            b.ws_port()
        )));
        ws_roundtrip(&b, tcp(b.ws_port()), "127.0.0.1", "ws_roundtrip");
        assert_eq!(
            b.uri(Listener::Ws),
            format!("ws://127.0.0.1:{}/mqtt", b.ws_port())
        );
        // Bound to 127.0.0.1 only (Mosquitto 2.0.11 needs `socket_domain ipv4` for that).
        let out = run_with_timeout(Command::new("ss").arg("-ltnH"), CMD);
        let ss = String::from_utf8_lossy(&out.stdout);
        let mine: Vec<&str> = ss
            .lines()
            .filter(|l| l.contains(&format!(":{} ", b.ws_port())))
            .collect();
        assert!(!mine.is_empty(), "ws port not listed:\n{ss}");
        for l in mine {
            assert!(
                l.contains(&format!("127.0.0.1:{}", b.ws_port())),
                "ws listener not on loopback only: {l}"
            );
        }
    });
}

#[test]
fn secure_websockets_roundtrip() {
    run_bounded(T, || {
        use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
        let b = Broker::builder().wss().start();
        let mut builder = SslConnector::builder(SslMethod::tls_client()).unwrap();
        builder.set_ca_file(&b.certs().ca).unwrap();
        builder.set_verify(SslVerifyMode::PEER);
        let connector = builder.build();
        let tls = connector
            .connect("localhost", tcp(b.wss_port()))
            .expect("TLS handshake with hostname verification");
        ws_roundtrip(&b, tls, "localhost", "wss_roundtrip");
        assert_eq!(
            b.uri(Listener::Wss),
            format!("wss://localhost:{}/mqtt", b.wss_port())
        );
    });
}

#[test]
fn all_listeners_at_once() {
    run_bounded(T, || {
        let b = Broker::builder().all_listeners().dynsec_refusing().start();
        for t in Listener::ALL {
            assert!(!b.uri(t).is_empty());
        }
        let ports = [
            b.port(),
            b.ws_port(),
            b.tls_port(),
            b.mtls_port(),
            b.wss_port(),
            b.auth_port(),
        ];
        let mut uniq = ports.to_vec();
        uniq.sort();
        uniq.dedup();
        assert_eq!(uniq.len(), ports.len(), "ports collide: {ports:?}");
        for which in ["tcp", "tls", "mtls", "unix", "auth"] {
            let a = cli_args(&b, which);
            cli_roundtrip(&b, &a, &a, &format!("all_{which}"));
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Subscription refusal (dynamic security)

#[test]
fn dynsec_refuses_subscriptions_with_0x80_and_0x87() {
    run_bounded(T, || {
        let b = Broker::builder().dynsec(&["nosubscribe/#"]).start();
        assert!(b.log().contains("Loading plugin"), "{}", b.log());
        let proxy = FaultProxy::start_blocking(b.port());
        let via_proxy = vec!["-p".to_string(), proxy.port().to_string()];
        for v in ["mqttv311", "5"] {
            let out = run_with_timeout(
                Command::new("mosquitto_sub").args(&via_proxy).args([
                    "-V",
                    v,
                    "-t",
                    "nosubscribe/x",
                    "-W",
                    "10",
                ]),
                CMD,
            );
            assert!(
                text(&out).contains("All subscription requests were denied."),
                "v{v}: {}",
                text(&out)
            );
        }
        let subacks = proxy.packets(Direction::BrokerToClient, PacketType::Suback);
        assert_eq!(subacks.len(), 2, "trace:\n{}", proxy.trace());
        assert_eq!(subacks[0].protocol, Some(4));
        assert_eq!(subacks[0].reason_codes(), [0x80]);
        assert_eq!(subacks[1].protocol, Some(5));
        assert_eq!(subacks[1].reason_codes(), [0x87]);

        // Mixed SUBSCRIBE: only the refused filter fails.
        let allowed = unique_topic("dynsec_allowed");
        for (v5, refused) in [(false, 0x80), (true, 0x87)] {
            let mut s = tcp(proxy.port());
            let ack = mqtt_connect(
                &mut s,
                &raw::Connect {
                    client_id: "",
                    v5,
                    keepalive: 60,
                    ..Default::default()
                },
            );
            assert_eq!(ack[1], 0, "CONNACK {ack:?}");
            s.write_all(&raw::subscribe(
                3,
                &[("nosubscribe/a/b", 1), (&allowed, 1), ("nosubscribe/#", 0)],
                v5,
            ))
            .unwrap();
            let (first, body) = raw::read_packet(&mut s).unwrap();
            assert_eq!(first, 0x90);
            let codes = if v5 { &body[3..] } else { &body[2..] };
            assert_eq!(codes, [refused, 1, refused], "v5={v5}");
        }
        let last = proxy
            .packets(Direction::BrokerToClient, PacketType::Suback)
            .pop()
            .unwrap();
        assert_eq!(last.reason_codes(), [0x87, 1, 0x87]);
        assert_eq!(last.packet_id(), Some(3));
    });
}

// ---------------------------------------------------------------------------------------------
// Broker process control

#[test]
fn restart_keeps_ports_and_persisted_retained_messages() {
    run_bounded(T, || {
        let mut b = Broker::builder().persistence(true).unix_socket().start();
        let (port, pid) = (b.port(), b.pid().unwrap());
        let topic = unique_topic("persisted");
        let a = cli_args(&b, "tcp");
        let out = cli_pub(&a, &topic, "kept", &["-r"]);
        assert!(out.status.success(), "{}", text(&out));

        b.restart();
        assert_eq!(b.port(), port);
        assert_ne!(b.pid().unwrap(), pid);
        assert!(!process_alive(pid), "old broker still alive");
        assert!(b.log().contains("Saving in-memory database"), "{}", b.log());
        let out = run_with_timeout(
            Command::new("mosquitto_sub")
                .args(cli_args(&b, "unix"))
                .args(["-t", &topic, "-C", "1", "-W", "10"]),
            CMD,
        );
        assert!(out.status.success(), "{}", text(&out));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "kept");

        // SIGKILL: the port goes dark; start_again() brings it back on the same port.
        b.kill();
        assert!(!b.is_running());
        assert!(!crate::support::util::port_accepts(port));
        b.start_again();
        assert_eq!(b.port(), port);
        connect_ok(&mut tcp(port), "after-kill");
    });
}

#[test]
fn pause_and_resume_hang_and_release_the_broker() {
    run_bounded(T, || {
        let mut b = Broker::start();
        b.pause();
        let pid = b.pid().unwrap();
        assert!(
            wait_until(
                Duration::from_secs(5),
                || crate::support::util::process_state(pid) == Some('T')
            ),
            "state {:?}",
            crate::support::util::process_state(pid)
        );
        let mut s = tcp(b.port()); // the kernel still completes the handshake
        s.set_read_timeout(Some(Duration::from_millis(800)))
            .unwrap();
        s.write_all(&raw::connect(&raw::Connect {
            client_id: "paused",
            keepalive: 60,
            ..Default::default()
        }))
        .unwrap();
        let err = raw::read_packet(&mut s).expect_err("CONNACK from a stopped broker");
        assert!(
            matches!(
                err.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ),
            "{err:?}"
        );
        b.resume();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let (first, body) = raw::read_packet(&mut s).expect("CONNACK after resume");
        assert_eq!((first, body), (0x20, vec![0, 0]));
        // Restart works on a paused broker too.
        b.pause();
        b.restart();
        connect_ok(&mut tcp(b.port()), "after-paused-restart");
    });
}

#[test]
fn drop_kills_and_reaps_the_broker() {
    run_bounded(T, || {
        let b = Broker::builder().websockets().start();
        let (pid, port, dir) = (b.pid().unwrap(), b.port(), b.dir().to_path_buf());
        assert!(process_alive(pid));
        drop(b);
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "pid {pid} left behind (zombie or alive)"
        );
        assert!(!crate::support::util::port_accepts(port));
        assert!(!dir.exists(), "temp dir not removed");
    });
}

#[test]
#[should_panic(expected = "mosquitto exited during start-up")]
fn bad_config_fails_fast_with_the_log() {
    run_bounded(T, || {
        let _b = Broker::builder()
            .extra_config("this_is_not_an_option 1")
            .start();
    });
}

#[test]
fn many_brokers_in_parallel_get_distinct_ports() {
    run_bounded(T, || {
        let handles: Vec<_> = (0..6)
            .map(|_| std::thread::spawn(|| Broker::builder().websockets().start()))
            .collect();
        let brokers: Vec<Broker> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let mut ports: Vec<u16> = brokers
            .iter()
            .flat_map(|b| [b.port(), b.ws_port()])
            .collect();
        ports.sort();
        ports.dedup();
        assert_eq!(ports.len(), 12);
        for b in &brokers {
            connect_ok(&mut tcp(b.port()), "parallel");
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Fault proxy

#[test]
fn proxy_records_and_cut_rst_fires_the_will() {
    run_bounded(T, || {
        let b = Broker::start();
        let proxy = FaultProxy::start_blocking(b.port());
        let will_topic = unique_topic("will");
        let mut watcher = ChildGuard::spawn(Command::new("mosquitto_sub").args([
            "-p",
            &b.port().to_string(),
            "-t",
            &will_topic,
            "-C",
            "1",
            "-W",
            "10",
        ]));
        b.wait_for_log(&format!("\t{will_topic} (QoS 0)"), Duration::from_secs(10));

        let mut s = tcp(proxy.port());
        let ack = mqtt_connect(
            &mut s,
            &raw::Connect {
                client_id: "will-client",
                keepalive: 60,
                will: Some((&will_topic, b"gone")),
                ..Default::default()
            },
        );
        assert_eq!(ack, [0, 0]);
        assert_eq!(proxy.connections(), 1);
        assert_eq!(proxy.active(), 1);
        let rec = proxy.recorded();
        assert_eq!(rec.len(), 2, "{}", proxy.trace());
        assert_eq!(rec[0].kind, PacketType::Connect);
        assert_eq!(rec[0].dir, Direction::ClientToBroker);
        assert_eq!(rec[0].client_id().as_deref(), Some("will-client"));
        assert_eq!(rec[0].keepalive(), Some(60));
        assert_eq!(rec[0].connect_flags(), Some(0x06));
        assert_eq!(rec[1].kind, PacketType::Connack);
        assert_eq!(rec[1].reason_code(), Some(0));

        assert_eq!(proxy.cut(), 1);
        let mut buf = [0u8; 16];
        let r = s.read(&mut buf);
        assert!(
            matches!(&r, Err(e) if e.kind() == io::ErrorKind::ConnectionReset),
            "expected RST, got {r:?}"
        );
        let out = watcher
            .wait_output_timeout(CMD)
            .expect("will not delivered");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "gone");
        assert!(wait_until(Duration::from_secs(5), || proxy.active() == 0));

        // The proxy still forwards new connections after a cut.
        connect_ok(&mut tcp(proxy.port()), "after-cut");
        assert_eq!(proxy.connections(), 2);
    });
}

#[test]
fn proxy_cut_fin_gives_eof_and_refuse_resets() {
    run_bounded(T, || {
        let b = Broker::start();
        let proxy = FaultProxy::start_blocking(b.port());
        let mut s = tcp(proxy.port());
        connect_ok(&mut s, "fin-client");
        assert_eq!(proxy.cut_fin(), 1);
        let mut buf = [0u8; 16];
        assert_eq!(s.read(&mut buf).unwrap(), 0, "expected EOF");
        drop(s);
        b.wait_for_log(
            "Client fin-client closed its connection",
            Duration::from_secs(10),
        );

        proxy.refuse(true);
        let mut s = tcp(proxy.port());
        let r = s.read(&mut buf);
        assert!(
            matches!(&r, Err(e) if e.kind() == io::ErrorKind::ConnectionReset),
            "{r:?}"
        );
        assert_eq!(proxy.rejected(), 1);
        proxy.refuse(false);
        connect_ok(&mut tcp(proxy.port()), "after-refuse");
        assert_eq!(proxy.connections(), 2);
    });
}

#[test]
fn proxy_blackhole_holds_traffic_until_released() {
    run_bounded(T, || {
        let b = Broker::start();
        let proxy = FaultProxy::start_blocking(b.port());
        let mut s = tcp(proxy.port());
        connect_ok(&mut s, "bh-client");
        proxy.blackhole(true);
        s.write_all(&raw::PINGREQ).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(700)))
            .unwrap();
        let err = raw::read_packet(&mut s).expect_err("PINGRESP through a blackhole");
        assert!(matches!(
            err.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ));
        assert_eq!(
            proxy.count(Direction::ClientToBroker, PacketType::Pingreq),
            0
        );
        proxy.blackhole(false);
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        assert_eq!(raw::read_packet(&mut s).unwrap(), (0xD0, vec![]));
        assert_eq!(
            proxy.count(Direction::ClientToBroker, PacketType::Pingreq),
            1
        );
        assert_eq!(
            proxy.count(Direction::BrokerToClient, PacketType::Pingresp),
            1
        );

        // One direction only: requests reach the broker, answers do not come back.
        proxy.blackhole_dir(Direction::BrokerToClient, true);
        s.write_all(&raw::PINGREQ).unwrap();
        proxy.wait_for_blocking(
            Direction::ClientToBroker,
            PacketType::Pingreq,
            2,
            Duration::from_secs(5),
        );
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        assert!(raw::read_packet(&mut s).is_err());
        proxy.blackhole_dir(Direction::BrokerToClient, false);
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        assert_eq!(raw::read_packet(&mut s).unwrap(), (0xD0, vec![]));
    });
}

#[test]
fn proxy_parses_across_chunk_boundaries_and_reads_flags() {
    run_bounded(T, || {
        let b = Broker::start();
        let proxy = FaultProxy::start_blocking(b.port());
        let mut s = tcp(proxy.port());
        let topic = unique_topic("chunks");
        // CONNECT written one byte at a time.
        for byte in raw::connect(&raw::Connect {
            client_id: "chunky",
            keepalive: 30,
            ..Default::default()
        }) {
            s.write_all(&[byte]).unwrap();
            std::thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(raw::read_packet(&mut s).unwrap(), (0x20, vec![0, 0]));
        s.write_all(&raw::subscribe(1, &[(&topic, 1)], false))
            .unwrap();
        assert_eq!(raw::read_packet(&mut s).unwrap(), (0x90, vec![0, 1, 1]));
        // A 200 KB QoS 1 publish with DUP set (3-byte remaining length), split in odd chunks,
        // followed in the same write by a PINGREQ.
        let big = vec![b'x'; 200_000];
        let mut bytes = raw::publish(&topic, &big, 1, 42, 0x08);
        let publish_len = bytes.len();
        bytes.extend_from_slice(&raw::PINGREQ);
        for chunk in bytes.chunks(7919) {
            s.write_all(chunk).unwrap();
        }
        proxy.wait_for_blocking(
            Direction::ClientToBroker,
            PacketType::Pingreq,
            1,
            Duration::from_secs(10),
        );
        let pubs = proxy.packets(Direction::ClientToBroker, PacketType::Publish);
        assert_eq!(pubs.len(), 1, "{}", proxy.trace());
        let p = &pubs[0];
        assert_eq!(p.remaining_len, publish_len - 4); // 1 type byte + 3 length bytes
        assert!(p.dup());
        assert_eq!(p.qos(), 1);
        assert!(!p.retain());
        assert_eq!(p.topic().as_deref(), Some(topic.as_str()));
        assert_eq!(p.packet_id(), Some(42));
        assert_eq!(p.body.len(), fault_proxy_body_cap());
        // The broker echoes it to us (we subscribed) and acks it.
        proxy.wait_for_blocking(
            Direction::BrokerToClient,
            PacketType::Puback,
            1,
            Duration::from_secs(10),
        );
        let ack = &proxy.packets(Direction::BrokerToClient, PacketType::Puback)[0];
        assert_eq!(ack.packet_id(), Some(42));
        proxy.wait_for_blocking(
            Direction::BrokerToClient,
            PacketType::Publish,
            1,
            Duration::from_secs(10),
        );
        let echo = &proxy.packets(Direction::BrokerToClient, PacketType::Publish)[0];
        assert!(!echo.dup(), "broker must not forward DUP");
        assert_eq!(echo.remaining_len, p.remaining_len);
    });
}

fn fault_proxy_body_cap() -> usize {
    crate::support::fault_proxy::BODY_CAP
}

#[test]
fn proxy_cut_on_nth_packet_drops_it() {
    run_bounded(T, || {
        let b = Broker::start();
        let proxy = FaultProxy::start_blocking(b.port());
        let topic = unique_topic("cut_on");
        let mut s = tcp(proxy.port());
        connect_ok(&mut s, "cut-on-client");
        s.write_all(&raw::subscribe(1, &[(&topic, 1)], false))
            .unwrap();
        assert_eq!(raw::read_packet(&mut s).unwrap().0, 0x90);
        proxy.cut_on(
            Direction::BrokerToClient,
            PacketType::Publish,
            2,
            CutMode::Rst,
        );
        let a = cli_args(&b, "tcp");
        let out = cli_pub(&a, &topic, "m0", &[]);
        assert!(out.status.success(), "{}", text(&out));
        let (first, body) = raw::read_packet(&mut s).expect("first PUBLISH passes");
        assert_eq!(first & 0xF0, 0x30);
        assert!(body.ends_with(b"m0"));
        assert_eq!(proxy.rule_fired(), 0);
        let out = cli_pub(&a, &topic, "m1", &[]);
        assert!(out.status.success(), "{}", text(&out));
        let r = raw::read_packet(&mut s);
        assert!(
            matches!(&r, Err(e) if e.kind() == io::ErrorKind::ConnectionReset),
            "{r:?}"
        );
        assert_eq!(proxy.rule_fired(), 1);
        assert_eq!(
            proxy.count(Direction::BrokerToClient, PacketType::Publish),
            1,
            "{}",
            proxy.trace()
        );
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_async_api_and_delay() {
    init_logging();
    with_timeout(T, async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let b = Broker::start();
        let proxy = FaultProxy::start(b.port()).await;
        proxy.set_delay(Duration::from_millis(300));
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", proxy.port()))
            .await
            .unwrap();
        let start = Instant::now();
        s.write_all(&raw::connect(&raw::Connect {
            client_id: "async",
            keepalive: 60,
            ..Default::default()
        }))
        .await
        .unwrap();
        let mut ack = [0u8; 4];
        within!(10, s.read_exact(&mut ack)).unwrap();
        assert_eq!(ack, [0x20, 2, 0, 0]);
        // Delayed once each way.
        assert!(
            start.elapsed() >= Duration::from_millis(600),
            "{:?}",
            start.elapsed()
        );
        proxy
            .wait_for(
                Direction::BrokerToClient,
                PacketType::Connack,
                1,
                Duration::from_secs(5),
            )
            .await;
        drop(proxy);
        // Dropping the proxy closes the connection.
        let mut buf = [0u8; 8];
        let n = within!(10, s.read(&mut buf));
        assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// HTTP proxy

fn http_connect(proxy_port: u16, target: u16, auth: Option<&str>) -> (TcpStream, String) {
    let mut s = tcp(proxy_port);
    let mut req = format!("CONNECT 127.0.0.1:{target} HTTP/1.1\r\nHost: 127.0.0.1:{target}\r\n");
    if let Some(a) = auth {
        let token = openssl::base64::encode_block(a.as_bytes());
        req.push_str(&format!("Proxy-Authorization: Basic {token}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    (s, String::from_utf8_lossy(&head).into_owned())
}

#[test]
fn tinyproxy_tunnels_connect_with_basic_auth() {
    run_bounded(T, || {
        let b = Broker::builder().websockets().start();
        let hp = HttpProxy::start_with_auth(&[b.port()], "puser", "ppass");
        assert_eq!(hp.url(), format!("http://127.0.0.1:{}", hp.port()));
        assert_eq!(
            hp.url_with_auth(),
            format!("http://puser:ppass@127.0.0.1:{}", hp.port())
        );
        let (mut s, head) = http_connect(hp.port(), b.port(), Some("puser:ppass"));
        assert!(head.starts_with("HTTP/1.0 200"), "{head}");
        connect_ok(&mut s, "through-tinyproxy");
        b.wait_for_log("as through-tinyproxy", Duration::from_secs(5));

        let (_, head) = http_connect(hp.port(), b.port(), None);
        assert!(head.contains(" 407 "), "no auth: {head}");
        // tinyproxy 1.11 answers wrong credentials with 401, missing ones with 407.
        let (_, head) = http_connect(hp.port(), b.port(), Some("puser:wrong"));
        assert!(head.contains(" 401 "), "bad auth: {head}");
        let (_, head) = http_connect(hp.port(), b.ws_port(), Some("puser:ppass"));
        assert!(head.contains(" 403 "), "port not in ConnectPort: {head}");

        let pid = hp.pid().unwrap();
        drop(hp);
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());

        let open = HttpProxy::start(&[]);
        let (mut s, head) = http_connect(open.port(), b.port(), None);
        assert!(head.starts_with("HTTP/1.0 200"), "{head}");
        connect_ok(&mut s, "through-open-tinyproxy");
    });
}

// ---------------------------------------------------------------------------------------------
// Helpers

#[test]
fn unique_topics_differ_and_are_valid() {
    let a = unique_topic("same");
    let b = unique_topic("same");
    assert_ne!(a, b);
    assert!(a.ends_with("/same"));
    let c = unique_topic("odd+name#");
    assert!(!c.contains('+') && !c.contains('#'), "{c}");
}

#[tokio::test]
#[should_panic(expected = "timed out after 50ms")]
async fn with_timeout_fails_a_hanging_future() {
    with_timeout(Duration::from_millis(50), std::future::pending::<()>()).await;
}

#[tokio::test]
#[should_panic(expected = "timed out after 50ms: `std::future::pending::<()>()`")]
async fn within_macro_fails_a_hanging_future() {
    within!(Duration::from_millis(50), std::future::pending::<()>());
}

#[test]
#[should_panic(expected = "test body timed out after")]
fn run_bounded_fails_a_hanging_body() {
    run_bounded(Duration::from_millis(100), || {
        std::thread::sleep(Duration::from_secs(5))
    });
}

#[test]
#[should_panic(expected = "command timed out")]
fn run_with_timeout_kills_a_hanging_command() {
    run_with_timeout(Command::new("sleep").arg("30"), Duration::from_millis(200));
}

/// A port that accepts connections is told apart by the process that listens on it (the
/// foreign brokers' start-up relies on it: rumqttd keeps running when a port it was given
/// was taken by another process first).
#[test]
fn a_listening_port_is_told_apart_by_its_owner() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    assert!(sockets::process_listens_on(std::process::id(), port));
    let mut other = Command::new("sleep").arg("5").spawn().unwrap();
    assert!(!sockets::process_listens_on(other.id(), port));
    let _ = other.kill();
    let _ = other.wait();
    drop(listener);
    assert!(!sockets::process_listens_on(std::process::id(), port));
}
