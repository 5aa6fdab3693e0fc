//! Small helpers shared by the integration tests: unique topics, logging, timeouts, free
//! ports, child processes that cannot outlive the test process.

use std::future::Future;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::panic::Location;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A topic prefix unique to this test, this process and this call, e.g.
/// `aiomqtt-test/12345-1a2b3c-7/my_test`. Characters that are not allowed in a topic name
/// (`+`, `#`, NUL) are replaced by `_`. Append your own levels: `format!("{t}/sub")`.
pub fn unique_topic(test_name: &str) -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let name: String = test_name
        .chars()
        .map(|c| match c {
            '+' | '#' | '\0' => '_',
            c => c,
        })
        .collect();
    format!("aiomqtt-test/{}-{nanos:x}-{seq}/{name}", std::process::id())
}

/// Installs the binary's one logger (records are captured, and echoed to stderr when
/// `RUST_LOG` is set); safe to call from every test.
pub fn init_logging() {
    super::logcap::install();
}

/// Awaits `fut`, panicking with the caller's location if it does not finish within `dur`.
///
/// ```ignore
/// let msg = with_timeout(Duration::from_secs(5), client.next()).await;
/// ```
#[track_caller]
pub fn with_timeout<F: Future>(dur: Duration, fut: F) -> impl Future<Output = F::Output> {
    let loc = Location::caller();
    async move {
        match tokio::time::timeout(dur, fut).await {
            Ok(v) => v,
            Err(_) => panic!("timed out after {dur:?} (with_timeout at {loc})"),
        }
    }
}

/// Like [`with_timeout`] but the message names what was awaited.
#[track_caller]
pub fn with_timeout_ctx<F: Future>(
    dur: Duration,
    what: impl Into<String>,
    fut: F,
) -> impl Future<Output = F::Output> {
    let loc = Location::caller();
    let what = what.into();
    async move {
        match tokio::time::timeout(dur, fut).await {
            Ok(v) => v,
            Err(_) => panic!("timed out after {dur:?} waiting for {what} (at {loc})"),
        }
    }
}

/// `within!(secs, future)`: awaits the future or panics with file/line after `secs` seconds
/// (an integer or float literal/expression, or a `Duration`).
#[macro_export]
macro_rules! within {
    ($dur:expr, $fut:expr $(,)?) => {{
        let dur: ::std::time::Duration = $crate::support::IntoTimeout::into_timeout($dur);
        match ::tokio::time::timeout(dur, $fut).await {
            Ok(v) => v,
            Err(_) => panic!(
                "timed out after {:?}: `{}` at {}:{}",
                dur,
                stringify!($fut),
                file!(),
                line!()
            ),
        }
    }};
}

/// Conversion used by [`within!`] so it accepts seconds or a `Duration`.
pub trait IntoTimeout {
    fn into_timeout(self) -> Duration;
}
impl IntoTimeout for Duration {
    fn into_timeout(self) -> Duration {
        self
    }
}
impl IntoTimeout for u64 {
    fn into_timeout(self) -> Duration {
        Duration::from_secs(self)
    }
}
impl IntoTimeout for i32 {
    fn into_timeout(self) -> Duration {
        Duration::from_secs(u64::try_from(self).expect("negative timeout"))
    }
}
impl IntoTimeout for f64 {
    fn into_timeout(self) -> Duration {
        Duration::from_secs_f64(self)
    }
}

/// Runs a synchronous test body on its own thread and panics if it does not finish within
/// `dur` (the body's panic, if any, is propagated). On timeout the thread is abandoned; child
/// processes it owns are still reaped by their [`Watchdog`] when the test process exits.
#[track_caller]
pub fn run_bounded<T: Send + 'static>(dur: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let loc = Location::caller();
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = std::thread::Builder::new()
        .name("bounded-test-body".into())
        .spawn(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
            let _ = tx.send(());
            r
        })
        .expect("spawn test thread");
    match rx.recv_timeout(dur) {
        Ok(()) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => match handle.join() {
            Ok(Ok(v)) => v,
            Ok(Err(panic)) | Err(panic) => std::panic::resume_unwind(panic),
        },
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("test body timed out after {dur:?} (run_bounded at {loc})")
        }
    }
}

/// Polls `cond` every 10 ms until it is true; returns false after `dur`.
pub fn wait_until(dur: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + dur;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Async version of [`wait_until`].
pub async fn wait_until_async(dur: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + dur;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The longest Paho C 1.3.16 may take to report a dead link, counted from the last packet
/// that crossed it (`MQTTProtocol_keepalive`, MQTTProtocolClient.c): its PINGREQ goes out at
/// the first keep-alive check one keepalive or more after the last packet, and it closes the
/// link at the first check 1.5 keepalives or more after that PINGREQ. The checks run each time
/// Paho's receive thread returns from `poll`, which waits up to 1 s when no socket of the
/// process is busy (`MQTTAsync_receiveThread`, MQTTAsyncUtils.c), so each step may come up to
/// 1 s late: 2.5 x keepalive + 2 s. Two more seconds are for a loaded machine, one for
/// each step (CI measured 6.89 s for a 2 s keepalive, with the fault suite running beside
/// the test).
pub fn loss_detection_bound(keepalive: Duration) -> Duration {
    keepalive * 5 / 2 + Duration::from_secs(4)
}

/// One currently free TCP port on 127.0.0.1 (bound to port 0, then released: another process
/// may take it before you do, so retry on bind failure).
pub fn free_port() -> u16 {
    free_ports(1)[0]
}

/// `n` distinct currently free TCP ports on 127.0.0.1.
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local_addr").port())
        .collect()
}

/// True if something accepts TCP connections on 127.0.0.1:`port`.
pub fn port_accepts(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// Runs a command to completion with a time limit; on timeout it is SIGKILLed and the test
/// panics with the command line and whatever it printed.
#[track_caller]
pub fn run_with_timeout(cmd: &mut Command, dur: Duration) -> Output {
    let loc = Location::caller();
    let desc = format!("{cmd:?}");
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {desc}: {e}"));
    let mut guard = ChildGuard::new(child);
    let out = guard.wait_output_timeout(dur);
    match out {
        Some(o) => o,
        None => {
            let (stdout, stderr) = guard.kill_and_collect();
            panic!(
                "command timed out after {dur:?} (at {loc}): {desc}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
            )
        }
    }
}

/// A child process that is SIGKILLed and reaped when dropped (for clients that must vanish
/// without DISCONNECT, `mosquitto_sub` listeners, …).
pub struct ChildGuard {
    child: Option<Child>,
    stdout_buf: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    stderr_buf: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl ChildGuard {
    /// Takes ownership of `child`; its piped stdout/stderr (if any) are drained by threads so
    /// the child never blocks on a full pipe.
    pub fn new(mut child: Child) -> Self {
        let stdout_buf = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stderr_buf = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        if let Some(mut out) = child.stdout.take() {
            let buf = stdout_buf.clone();
            readers.push(std::thread::spawn(move || drain(&mut out, &buf)));
        }
        if let Some(mut err) = child.stderr.take() {
            let buf = stderr_buf.clone();
            readers.push(std::thread::spawn(move || drain(&mut err, &buf)));
        }
        ChildGuard {
            child: Some(child),
            stdout_buf,
            stderr_buf,
            readers,
        }
    }

    /// Spawns `cmd` with piped stdout/stderr and guards it.
    pub fn spawn(cmd: &mut Command) -> Self {
        let desc = format!("{cmd:?}");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {desc}: {e}"));
        Self::new(child)
    }

    pub fn id(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// What the child printed on stdout so far.
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout_buf.lock().unwrap()).into_owned()
    }

    /// What the child printed on stderr so far.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr_buf.lock().unwrap()).into_owned()
    }

    /// Exit status if the child has exited.
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Waits for the child to exit, at most `dur`; `None` on timeout (child left running).
    pub fn wait_output_timeout(&mut self, dur: Duration) -> Option<Output> {
        let deadline = Instant::now() + dur;
        loop {
            if let Some(status) = self.try_wait() {
                for r in self.readers.drain(..) {
                    let _ = r.join();
                }
                self.child = None;
                return Some(Output {
                    status,
                    stdout: self.stdout_buf.lock().unwrap().clone(),
                    stderr: self.stderr_buf.lock().unwrap().clone(),
                });
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGKILLs and reaps the child (no-op if it already exited), returns (stdout, stderr).
    pub fn kill_and_collect(&mut self) -> (String, String) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        (self.stdout(), self.stderr())
    }

    /// Sends a signal by name (`"STOP"`, `"CONT"`, `"TERM"`, `"KILL"`, …) with `kill(1)`.
    pub fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            send_signal(c.id(), sig);
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn drain(r: &mut impl Read, buf: &std::sync::Mutex<Vec<u8>>) {
    let mut chunk = [0u8; 4096];
    loop {
        match r.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.lock().unwrap().extend_from_slice(&chunk[..n]),
        }
    }
}

/// Sends `sig` (a name such as `"STOP"`) to `pid` with `/usr/bin/kill`. Panics if `kill`
/// reports an error (e.g. no such process).
#[track_caller]
pub fn send_signal(pid: u32, sig: &str) {
    let st = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run kill(1)");
    assert!(st.success(), "kill -{sig} {pid} failed: {st}");
}

/// Like [`send_signal`] but returns whether `kill(1)` succeeded instead of panicking.
pub fn try_signal(pid: u32, sig: &str) -> bool {
    Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether a process with this PID exists and is not a zombie.
pub fn process_alive(pid: u32) -> bool {
    process_state(pid).is_some_and(|state| !matches!(state, 'Z' | 'X'))
}

/// Process state letter from `/proc/<pid>/stat` (`R`, `S`, `T` for stopped, `Z`, …);
/// `None` when there is no such process. The state follows the last ')' ("pid (comm) S").
pub fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .next()?
        .chars()
        .next()
}

/// Kills a process (by PID) when the test process dies, even by abort or SIGKILL, when no
/// destructor runs: a `sh` that blocks reading a pipe only we hold open. Dropping the
/// `Watchdog` disarms it (the `sh` is killed and reaped), so drop it *before* reaping the
/// guarded process to avoid hitting a recycled PID.
pub struct Watchdog {
    sh: Option<Child>,
    _stdin: Option<ChildStdin>,
}

impl Watchdog {
    pub fn guard(pid: u32) -> Watchdog {
        Self::arm(format!("read _ignored; kill -9 {pid} 2>/dev/null"))
    }

    /// Like [`Self::guard`], for the whole process group whose leader is `pgid` (for
    /// servers that fork helpers).
    pub fn guard_group(pgid: u32) -> Watchdog {
        Self::arm(format!("read _ignored; kill -9 -{pgid} 2>/dev/null"))
    }

    fn arm(script: String) -> Watchdog {
        let spawned = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        match spawned {
            Ok(mut sh) => {
                let stdin = sh.stdin.take();
                Watchdog {
                    sh: Some(sh),
                    _stdin: stdin,
                }
            }
            // Best effort: without sh the test still works, it just may leak on abort.
            Err(_) => Watchdog {
                sh: None,
                _stdin: None,
            },
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        if let Some(mut sh) = self.sh.take() {
            let _ = sh.kill();
            let _ = sh.wait();
        }
    }
}

/// Reads a whole file as (lossy) UTF-8, empty if missing.
pub fn read_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// Appends `data` to a file (creating it).
pub fn append_file(path: &Path, data: &str) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open for append");
    f.write_all(data.as_bytes()).expect("append");
}

/// True when running as root (owner of `/proc/self`), where Mosquitto needs `user root`.
pub fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}
