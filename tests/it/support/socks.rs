//! SOCKS proxies for the relay's tests: two real servers from Debian, started by the test
//! on free 127.0.0.1 ports and killed on drop, and a scripted one for what no Debian server
//! does.
//!
//! - [`Dante`] (`danted`, package `dante-server`): SOCKS 4 and SOCKS 5 without
//!   authentication; its log names every tunnel. Its `external` address is what the broker
//!   sees a tunnelled client come from.
//! - [`MicroSocks`] (`microsocks`): SOCKS 5 with username/password (`-u`/`-P`), outgoing
//!   connections bound to a chosen address (`-b`), optionally in a private mount namespace
//!   whose `/etc/hosts` knows names this process cannot resolve (remote DNS).
//! - [`ScriptedSocks`] (tokio, in the test): SOCKS 4, 4a and 5 without authentication; it
//!   records every request as it arrived (Dante 1.4 has no SOCKS 4a: it reads the 4a marker
//!   address 0.0.0.x as an address).

use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::util::{Watchdog, free_port, port_accepts, read_lossy, running_as_root};

pub const DANTED: &str = "/usr/sbin/danted";
pub const MICROSOCKS: &str = "/usr/bin/microsocks";

/// How long a proxy may take to start.
const START: Duration = Duration::from_secs(10);

/// A proxy process and its watchdog; killed (SIGKILL to its process group) and reaped on
/// drop. Dante forks helper processes, so the process is made a group leader and the
/// whole group goes.
struct Proc {
    child: Option<Child>,
    watchdog: Option<Watchdog>,
}

impl Proc {
    fn spawn(cmd: &mut Command, stderr: &Path) -> Result<Proc, String> {
        use std::os::unix::process::CommandExt;
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(stderr)
            .map_err(|e| e.to_string())?;
        let child = cmd
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out.try_clone().map_err(|e| e.to_string())?))
            .stderr(Stdio::from(out))
            .spawn()
            .map_err(|e| format!("cannot spawn {cmd:?}: {e}"))?;
        let watchdog = Watchdog::guard_group(child.id());
        Ok(Proc {
            child: Some(child),
            watchdog: Some(watchdog),
        })
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    fn kill(&mut self) {
        if let Some(c) = self.child.as_mut() {
            // The group leader's id is the group's id; kill(1) with a negative id.
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", c.id())])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        self.watchdog = None;
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts a proxy with `spawn` on free ports until it accepts connections (a port taken
/// meanwhile by another process means another try).
fn start_on_free_port(
    what: &str,
    dir: &Path,
    mut spawn: impl FnMut(u16) -> Result<Proc, String>,
    ready: impl Fn() -> bool,
    describe: impl Fn() -> String,
) -> (Proc, u16) {
    let mut last = String::new();
    for _ in 0..8 {
        let port = free_port();
        let mut proc = match spawn(port) {
            Ok(p) => p,
            Err(e) => panic!("{what}: {e}"),
        };
        let deadline = Instant::now() + START;
        loop {
            if let Some(status) = proc.exited() {
                last = format!("{what} exited ({status})\n{}", describe());
                break;
            }
            if ready() && port_accepts(port) {
                return (proc, port);
            }
            if Instant::now() >= deadline {
                panic!("{what} not ready after {START:?}\n{}", describe());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    panic!(
        "{what} did not start after 8 attempts (in {}):\n{last}",
        dir.display()
    );
}

/// A Dante SOCKS 4/5 server without authentication.
pub struct Dante {
    proc: Proc,
    port: u16,
    log_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Dante {
    /// Dante on a free 127.0.0.1 port, dialling out from `external` (a 127/8 address, so
    /// that the broker's log shows which connections came through it). Every request is
    /// allowed except connects to the ports in `blocked`, which its rules refuse.
    #[track_caller]
    pub fn start(external: Ipv4Addr, blocked: &[u16]) -> Dante {
        assert!(
            Path::new(DANTED).exists(),
            "{DANTED} not found (apt-get install dante-server; scripts/deps.sh test)"
        );
        let dir = tempfile::Builder::new()
            .prefix("aiomqtt-dante-")
            .tempdir()
            .expect("temp dir");
        let log_path = dir.path().join("danted.log");
        let conf_path = dir.path().join("danted.conf");
        let stderr = dir.path().join("stderr.log");
        let write_config = |port: u16| {
            let mut s = String::from("# generated by tests/it/support/socks.rs\n");
            let _ = writeln!(s, "logoutput: {}", log_path.display());
            let _ = writeln!(s, "internal: 127.0.0.1 port = {port}");
            let _ = writeln!(s, "external: {external}");
            s.push_str("clientmethod: none\nsocksmethod: none\n");
            if running_as_root() {
                s.push_str("user.privileged: root\nuser.unprivileged: nobody\n");
            }
            s.push_str(
                "client pass {\n  from: 127.0.0.0/8 to: 0.0.0.0/0\n  log: connect disconnect error\n}\n",
            );
            for port in blocked {
                let _ = writeln!(
                    s,
                    "socks block {{\n  from: 0.0.0.0/0 to: 0.0.0.0/0 port = {port}\n  log: connect error\n}}"
                );
            }
            s.push_str(
                "socks pass {\n  from: 127.0.0.0/8 to: 0.0.0.0/0\n  command: connect\n  log: connect disconnect error\n}\n",
            );
            std::fs::write(&conf_path, s).expect("write danted.conf");
        };
        let (proc, port) = start_on_free_port(
            "danted",
            dir.path(),
            |port| {
                write_config(port);
                let _ = std::fs::remove_file(&log_path);
                // One process serves everything (-N 1); it stays in the foreground.
                Proc::spawn(
                    Command::new(DANTED)
                        .arg("-f")
                        .arg(&conf_path)
                        .args(["-N", "1"]),
                    &stderr,
                )
            },
            || read_lossy(&log_path).contains("running"),
            || {
                format!(
                    "--- config ---\n{}\n--- log ---\n{}\n--- stderr ---\n{}",
                    read_lossy(&conf_path),
                    read_lossy(&log_path),
                    read_lossy(&stderr)
                )
            },
        );
        Dante {
            proc,
            port,
            log_path,
            _dir: dir,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pid(&self) -> Option<u32> {
        self.proc.child.as_ref().map(|c| c.id())
    }

    /// Dante's log: one `pass(1): tcp/connect ]: … -> <external>.<port> <target>.<port>`
    /// line per tunnel when it ends, `block(…)` for refused requests.
    pub fn log(&self) -> String {
        read_lossy(&self.log_path)
    }
}

/// A microsocks SOCKS 5 server.
pub struct MicroSocks {
    proc: Proc,
    port: u16,
    _dir: tempfile::TempDir,
}

/// What a [`MicroSocks`] is started with.
#[derive(Clone, Debug, Default)]
pub struct MicroSocksConfig {
    /// Username/password authentication (`-u`, `-P`); without it, none.
    pub credentials: Option<(String, String)>,
    /// The address outgoing connections are bound to (`-b`).
    pub bind: Option<Ipv4Addr>,
    /// Runs it in a private mount namespace (`unshare -m`) whose `/etc/hosts` has these
    /// extra `(name, address)` lines: names only the proxy can resolve.
    pub private_hosts: Vec<(String, Ipv4Addr)>,
}

impl MicroSocks {
    #[track_caller]
    pub fn start(config: MicroSocksConfig) -> MicroSocks {
        assert!(
            Path::new(MICROSOCKS).exists(),
            "{MICROSOCKS} not found (apt-get install microsocks; scripts/deps.sh test)"
        );
        let dir = tempfile::Builder::new()
            .prefix("aiomqtt-microsocks-")
            .tempdir()
            .expect("temp dir");
        let stderr = dir.path().join("stderr.log");
        let hosts = dir.path().join("hosts");
        if !config.private_hosts.is_empty() {
            let mut text = read_lossy(Path::new("/etc/hosts"));
            if !text.ends_with('\n') {
                text.push('\n');
            }
            for (name, ip) in &config.private_hosts {
                let _ = writeln!(text, "{ip} {name}");
            }
            std::fs::write(&hosts, text).expect("write hosts");
        }
        let (proc, port) = start_on_free_port(
            "microsocks",
            dir.path(),
            |port| {
                let mut args = vec![
                    "-i".to_owned(),
                    "127.0.0.1".to_owned(),
                    "-p".to_owned(),
                    port.to_string(),
                ];
                if let Some((user, pass)) = &config.credentials {
                    args.extend(["-u".to_owned(), user.clone(), "-P".to_owned(), pass.clone()]);
                }
                if let Some(ip) = config.bind {
                    args.extend(["-b".to_owned(), ip.to_string()]);
                }
                let mut cmd = if config.private_hosts.is_empty() {
                    let mut c = Command::new(MICROSOCKS);
                    c.args(&args);
                    c
                } else {
                    // unshare execs the shell, which execs microsocks: one process, whose
                    // id the guard kills.
                    let mut c = Command::new("unshare");
                    c.args(["-m", "sh", "-c"])
                        .arg("mount --bind \"$0\" /etc/hosts && exec \"$@\"")
                        .arg(&hosts)
                        .arg(MICROSOCKS)
                        .args(&args);
                    c
                };
                Proc::spawn(&mut cmd, &stderr)
            },
            || true,
            || format!("--- stderr ---\n{}", read_lossy(&stderr)),
        );
        MicroSocks {
            proc,
            port,
            _dir: dir,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pid(&self) -> Option<u32> {
        self.proc.child.as_ref().map(|c| c.id())
    }
}

/// The target of a recorded SOCKS request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SocksTarget {
    Ip(IpAddr),
    /// A host name, for the proxy to resolve (SOCKS 4a, or SOCKS 5 `DOMAINNAME`).
    Name(String),
}

/// One request as a [`ScriptedSocks`] received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocksRequest {
    /// 4 or 5.
    pub version: u8,
    /// SOCKS 4: whether the 4a form (address 0.0.0.x, name after the user id) was used.
    pub socks4a: bool,
    pub target: SocksTarget,
    pub port: u16,
    /// SOCKS 4's user id.
    pub user_id: Option<String>,
}

/// A scripted SOCKS 4/4a/5 server (no authentication) on its own runtime: it resolves
/// names itself, connects, and relays; every request is recorded.
pub struct ScriptedSocks {
    rt: Option<tokio::runtime::Runtime>,
    port: u16,
    requests: Arc<Mutex<Vec<SocksRequest>>>,
}

impl ScriptedSocks {
    pub fn start() -> ScriptedSocks {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("local_addr").port();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("scripted-socks")
            .enable_all()
            .build()
            .expect("runtime");
        let requests: Arc<Mutex<Vec<SocksRequest>>> = Arc::default();
        let log = requests.clone();
        rt.spawn(async move {
            let listener = TcpListener::from_std(listener).expect("tokio listener");
            while let Ok((client, _)) = listener.accept().await {
                let log = log.clone();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(Duration::from_secs(60), serve(client, log)).await;
                });
            }
        });
        ScriptedSocks {
            rt: Some(rt),
            port,
            requests,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn requests(&self) -> Vec<SocksRequest> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for ScriptedSocks {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

async fn read_until_nul(s: &mut TcpStream) -> std::io::Result<String> {
    let mut out = Vec::new();
    loop {
        let b = s.read_u8().await?;
        if b == 0 {
            return Ok(String::from_utf8_lossy(&out).into_owned());
        }
        if out.len() > 255 {
            return Err(std::io::Error::other("field too long"));
        }
        out.push(b);
    }
}

async fn connect_to(target: &SocksTarget, port: u16) -> std::io::Result<TcpStream> {
    match target {
        SocksTarget::Ip(ip) => TcpStream::connect(SocketAddr::new(*ip, port)).await,
        SocksTarget::Name(name) => {
            let addr = tokio::net::lookup_host((name.as_str(), port))
                .await?
                .find(SocketAddr::is_ipv4)
                .ok_or_else(|| std::io::Error::other("no IPv4 address"))?;
            TcpStream::connect(addr).await
        }
    }
}

async fn serve(mut client: TcpStream, log: Arc<Mutex<Vec<SocksRequest>>>) -> std::io::Result<()> {
    let version = client.read_u8().await?;
    let request = match version {
        4 => {
            let _command = client.read_u8().await?;
            let port = client.read_u16().await?;
            let mut ip = [0u8; 4];
            client.read_exact(&mut ip).await?;
            let user = read_until_nul(&mut client).await?;
            let socks4a = ip[..3] == [0, 0, 0] && ip[3] != 0;
            let target = if socks4a {
                SocksTarget::Name(read_until_nul(&mut client).await?)
            } else {
                SocksTarget::Ip(IpAddr::from(ip))
            };
            SocksRequest {
                version,
                socks4a,
                target,
                port,
                user_id: (!user.is_empty()).then_some(user),
            }
        }
        5 => {
            let n = client.read_u8().await?;
            let mut methods = vec![0u8; usize::from(n)];
            client.read_exact(&mut methods).await?;
            if !methods.contains(&0) {
                client.write_all(&[5, 0xFF]).await?;
                return Ok(());
            }
            client.write_all(&[5, 0]).await?;
            let mut head = [0u8; 4];
            client.read_exact(&mut head).await?;
            let target = match head[3] {
                1 => {
                    let mut ip = [0u8; 4];
                    client.read_exact(&mut ip).await?;
                    SocksTarget::Ip(IpAddr::from(ip))
                }
                3 => {
                    let len = client.read_u8().await?;
                    let mut name = vec![0u8; usize::from(len)];
                    client.read_exact(&mut name).await?;
                    SocksTarget::Name(String::from_utf8_lossy(&name).into_owned())
                }
                4 => {
                    let mut ip = [0u8; 16];
                    client.read_exact(&mut ip).await?;
                    SocksTarget::Ip(IpAddr::from(Ipv6Addr::from(ip)))
                }
                _ => return Ok(()),
            };
            let port = client.read_u16().await?;
            SocksRequest {
                version,
                socks4a: false,
                target,
                port,
                user_id: None,
            }
        }
        _ => return Ok(()),
    };
    log.lock().unwrap().push(request.clone());
    let upstream = connect_to(&request.target, request.port).await;
    let granted = upstream.is_ok();
    let reply: Vec<u8> = match (version, granted) {
        (4, true) => vec![0, 0x5A, 0, 0, 0, 0, 0, 0],
        (4, false) => vec![0, 0x5B, 0, 0, 0, 0, 0, 0],
        (_, true) => vec![5, 0, 0, 1, 0, 0, 0, 0, 0, 0],
        // Connection refused.
        (_, false) => vec![5, 5, 0, 1, 0, 0, 0, 0, 0, 0],
    };
    client.write_all(&reply).await?;
    if let Ok(mut upstream) = upstream {
        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
    }
    Ok(())
}
