//! Log capture: the one `log::Log` of the test binary. Every record, from every target and
//! level, is kept in memory; each test logs under its own target (the client's `logger(..)`)
//! and reads back only its own records, or everything ([`all_records`]) when it runs alone
//! in a child process. With `RUST_LOG` set, records are echoed to stderr as well.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};

const LOG_PREFIX: &str = "aiomqtt-test.";

static RECORDS: Mutex<Vec<(String, log::Level, String)>> = Mutex::new(Vec::new());

/// A function shown every record (target, text) before it is kept; see [`on_record`].
type Hook = Arc<dyn Fn(&str, &str) + Send + Sync>;

static HOOK: Mutex<Option<Hook>> = Mutex::new(None);

struct Capture {
    echo: Option<log::LevelFilter>,
}

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        let text = record.args().to_string();
        // Called without a lock held: a hook may block its thread.
        let hook = HOOK.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(hook) = hook {
            hook(record.target(), &text);
        }
        if self.echo.is_some_and(|max| record.level() <= max) {
            eprintln!("[{} {}] {text}", record.level(), record.target());
        }
        RECORDS.lock().unwrap_or_else(|e| e.into_inner()).push((
            record.target().to_owned(),
            record.level(),
            text,
        ));
    }
    fn flush(&self) {}
}

/// Shows every record from now on to `hook`, on the thread that hands it to the logger
/// (for a test that runs alone in a child process). Records made on Paho's threads and on
/// the crate's own come from the crate's `aiomqtt-log` thread.
pub fn on_record(hook: impl Fn(&str, &str) + Send + Sync + 'static) {
    install();
    *HOOK.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(hook));
}

/// Installs the capturing logger once per process.
pub fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let echo = std::env::var("RUST_LOG").ok().map(|v| {
            v.parse::<log::LevelFilter>()
                .unwrap_or(log::LevelFilter::Debug)
        });
        let capture: &'static Capture = Box::leak(Box::new(Capture { echo }));
        log::set_logger(capture).expect("no other logger in this test binary");
        log::set_max_level(log::LevelFilter::Trace);
    });
}

/// Installs the capturing logger (once) and returns a logger target unique to this call.
pub fn capture_logger(name: &str) -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    install();
    format!("{LOG_PREFIX}{name}.{}", SEQ.fetch_add(1, Ordering::Relaxed))
}

/// The (level, text) records logged under `target`.
pub fn logged(target: &str) -> Vec<(log::Level, String)> {
    RECORDS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|(t, _, _)| t == target)
        .map(|(_, l, m)| (*l, m.clone()))
        .collect()
}

/// Every record of the process as `LEVEL target text` lines.
pub fn all_records() -> Vec<String> {
    RECORDS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(t, l, m)| format!("{l} {t} {m}"))
        .collect()
}

/// [`all_records`] once no new record came for 300 ms (within 10 s): the records made on
/// Paho's threads and on the crate's own reach the logger from a thread of their own, a
/// moment after they were made.
pub async fn settled_records() -> Vec<String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut last = all_records().len();
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let now = all_records().len();
        if now == last || std::time::Instant::now() > deadline {
            return all_records();
        }
        last = now;
    }
}
