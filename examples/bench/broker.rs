//! A private Mosquitto for the benchmark: a free 127.0.0.1 port, a generated
//! configuration in a temporary directory, killed when dropped. Never the
//! system service on :1883.

use std::fmt::Write as _;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const MOSQUITTO: &str = "/usr/sbin/mosquitto";

/// The broker settings every figure depends on; printed in the report.
/// `max_inflight` is 0 (unlimited) unless `--broker-max-inflight` says
/// otherwise: Mosquitto's default (20) throttles QoS 2 to a few hundred msg/s
/// and loses QoS 2 bursts beyond it on 3.1.1 (ENGINE.md hazards 5 and 16).
pub fn settings(max_inflight: u32) -> Vec<String> {
    vec![
        format!("max_inflight_messages {max_inflight}"),
        // No per-client queue limit: nothing is dropped while a subscriber lags.
        "max_queued_messages 0".to_owned(),
        "persistence false".to_owned(),
        // Nagle off on the broker's sockets too (Paho sets TCP_NODELAY on its side).
        "set_tcp_nodelay true".to_owned(),
    ]
}

pub struct Broker {
    child: Child,
    pub port: u16,
    /// A TLS listener and the PEM file of the certificate it presents (self-signed, for
    /// 127.0.0.1), when asked for.
    pub tls: Option<(u16, PathBuf)>,
    /// A WebSocket listener, with the TLS one.
    pub ws: Option<u16>,
    dir: PathBuf,
}

/// Writes a self-signed certificate for 127.0.0.1 and its key into `dir`: (cert, key).
fn self_signed(dir: &std::path::Path) -> Result<(PathBuf, PathBuf), String> {
    use openssl::asn1::Asn1Time;
    use openssl::bn::BigNum;
    use openssl::ec::{EcGroup, EcKey};
    use openssl::hash::MessageDigest;
    use openssl::nid::Nid;
    use openssl::pkey::PKey;
    use openssl::x509::extension::{BasicConstraints, SubjectAlternativeName};
    use openssl::x509::{X509Builder, X509NameBuilder};
    let e = |e: openssl::error::ErrorStack| e.to_string();
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).map_err(e)?;
    let key = PKey::from_ec_key(EcKey::generate(&group).map_err(e)?).map_err(e)?;
    let mut name = X509NameBuilder::new().map_err(e)?;
    name.append_entry_by_nid(Nid::COMMONNAME, "127.0.0.1")
        .map_err(e)?;
    let name = name.build();
    let mut b = X509Builder::new().map_err(e)?;
    b.set_version(2).map_err(e)?;
    let serial = BigNum::from_u32(1)
        .map_err(e)?
        .to_asn1_integer()
        .map_err(e)?;
    b.set_serial_number(&serial).map_err(e)?;
    b.set_subject_name(&name).map_err(e)?;
    b.set_issuer_name(&name).map_err(e)?;
    b.set_pubkey(&key).map_err(e)?;
    let (from, until) = (
        Asn1Time::days_from_now(0).map_err(e)?,
        Asn1Time::days_from_now(2).map_err(e)?,
    );
    b.set_not_before(&from).map_err(e)?;
    b.set_not_after(&until).map_err(e)?;
    b.append_extension(BasicConstraints::new().critical().ca().build().map_err(e)?)
        .map_err(e)?;
    let san = SubjectAlternativeName::new()
        .ip("127.0.0.1")
        .dns("localhost")
        .build(&b.x509v3_context(None, None))
        .map_err(e)?;
    b.append_extension(san).map_err(e)?;
    b.sign(&key, MessageDigest::sha256()).map_err(e)?;
    let cert = b.build();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.to_pem().map_err(e)?).map_err(|e| e.to_string())?;
    std::fs::write(&key_path, key.private_key_to_pem_pkcs8().map_err(e)?)
        .map_err(|e| e.to_string())?;
    Ok((cert_path, key_path))
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The `mosquitto -h` banner, e.g. "mosquitto version 2.0.11".
pub fn version() -> String {
    Command::new(MOSQUITTO)
        .arg("-h")
        .output()
        .ok()
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            text.lines().next().map(|l| l.trim().to_owned())
        })
        .unwrap_or_else(|| "mosquitto (version unknown)".to_owned())
}

impl Broker {
    /// A broker with `max_inflight_messages` set so, and a TLS and a WebSocket listener
    /// too if `tls`.
    pub fn start(max_inflight: u32, tls: bool) -> Result<Broker, String> {
        if !std::path::Path::new(MOSQUITTO).exists() {
            return Err(format!("{MOSQUITTO} not found (apt-get install mosquitto)"));
        }
        let mut last = String::new();
        for attempt in 0..8 {
            let port = free_port().map_err(|e| e.to_string())?;
            let dir = std::env::temp_dir()
                .join(format!("aiomqtt-bench-{}-{attempt}", std::process::id()));
            std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            let log = dir.join("mosquitto.log");
            let mut conf = String::from("# generated by examples/bench\n");
            if running_as_root() {
                conf.push_str("user root\n");
            }
            let _ = writeln!(conf, "log_dest file {}", log.display());
            conf.push_str("log_type error\nlog_type warning\n");
            for line in settings(max_inflight) {
                let _ = writeln!(conf, "{line}");
            }
            let _ = writeln!(conf, "listener {port} 127.0.0.1");
            let mut tls_listener = None;
            if tls {
                let tls_port = free_port().map_err(|e| e.to_string())?;
                let (cert, key) = self_signed(&dir)?;
                let _ = writeln!(conf, "listener {tls_port} 127.0.0.1");
                let _ = writeln!(conf, "certfile {}", cert.display());
                let _ = writeln!(conf, "keyfile {}", key.display());
                tls_listener = Some((tls_port, cert));
            }
            let mut ws_listener = None;
            if tls {
                let ws_port = free_port().map_err(|e| e.to_string())?;
                let _ = writeln!(conf, "listener {ws_port} 127.0.0.1\nprotocol websockets");
                ws_listener = Some(ws_port);
            }
            conf.push_str("allow_anonymous true\n");
            let conf_path = dir.join("mosquitto.conf");
            std::fs::write(&conf_path, conf).map_err(|e| e.to_string())?;
            // Through a small shell that kills Mosquitto as soon as our end of
            // its stdin closes: the broker never outlives this program, even
            // when it is killed.
            let child = Command::new("sh")
                .arg("-c")
                .arg(r#"exec 3<&0; "$0" -c "$1" & pid=$!; (read -r _ <&3; kill $pid 2>/dev/null) & wait $pid"#)
                .arg(MOSQUITTO)
                .arg(&conf_path)
                .current_dir(&dir)
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("cannot start {MOSQUITTO}: {e}"))?;
            let mut broker = Broker {
                child,
                port,
                tls: tls_listener,
                ws: ws_listener,
                dir,
            };
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                let tls_up = broker
                    .tls
                    .as_ref()
                    .is_none_or(|(p, _)| TcpStream::connect(("127.0.0.1", *p)).is_ok());
                let ws_up = broker
                    .ws
                    .is_none_or(|p| TcpStream::connect(("127.0.0.1", p)).is_ok());
                if TcpStream::connect(("127.0.0.1", port)).is_ok() && tls_up && ws_up {
                    return Ok(broker);
                }
                if let Ok(Some(status)) = broker.child.try_wait() {
                    last = format!(
                        "mosquitto exited ({status}): {}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                    break;
                }
                if Instant::now() > deadline {
                    last = "mosquitto did not listen within 5 s".to_owned();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            drop(broker); // kills it and removes the directory
        }
        Err(format!("could not start mosquitto: {last}"))
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        // Closing the shell's stdin makes it kill Mosquitto, then it exits.
        drop(self.child.stdin.take());
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
