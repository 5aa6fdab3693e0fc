//! Shared by the examples: find a broker, or start a local Mosquitto.
//!
//! `MQTT_HOST` (and optionally `MQTT_PORT`) point the examples at a broker of
//! yours. Without them, a private Mosquitto is started on a free local port and
//! stopped when the example ends.

#![allow(dead_code)]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A broker address, and the local Mosquitto behind it if we started one.
pub struct Broker {
    pub host: String,
    pub port: u16,
    child: Option<Child>,
    _dir: Option<tempdir::TempDir>,
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The broker named by `MQTT_HOST`/`MQTT_PORT`, or a fresh local Mosquitto.
pub fn broker() -> Broker {
    if let Ok(host) = std::env::var("MQTT_HOST") {
        let port = std::env::var("MQTT_PORT")
            .ok()
            .and_then(|p| p.parse().ok())
            .unwrap_or(1883);
        return Broker {
            host,
            port,
            child: None,
            _dir: None,
        };
    }
    let Some(mosquitto) = [
        "/usr/sbin/mosquitto",
        "/usr/local/sbin/mosquitto",
        "/opt/homebrew/sbin/mosquitto",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).exists()) else {
        eprintln!(
            "No broker: set MQTT_HOST (and MQTT_PORT) to use yours, or install Mosquitto \
             (Debian/Ubuntu: `sudo apt-get install mosquitto`) so a local one can be started."
        );
        std::process::exit(2);
    };
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(18_883);
    let dir = tempdir::TempDir::new();
    let conf = dir.path.join("mosquitto.conf");
    let user = if is_root() { "user root\n" } else { "" };
    std::fs::write(
        &conf,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\n{user}"),
    )
    .unwrap_or_else(|e| panic!("cannot write {}: {e}", conf.display()));
    let child = Command::new(mosquitto)
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {mosquitto}: {e}"));
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "Mosquitto did not start on port {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("(started a local Mosquitto on 127.0.0.1:{port})");
    Broker {
        host: "127.0.0.1".into(),
        port,
        child: Some(child),
        _dir: Some(dir),
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0"))
}

/// A minimal temporary directory, so the examples need no extra crate.
mod tempdir {
    pub struct TempDir {
        pub path: std::path::PathBuf,
    }
    impl TempDir {
        pub fn new() -> TempDir {
            let path = std::env::temp_dir().join(format!("aiomqtt-example-{}", std::process::id()));
            std::fs::create_dir_all(&path)
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
            TempDir { path }
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}
