//! Log capture: one `log::Log` for the whole test binary; each test logs under its
//! own target (the client's `logger(..)`) and reads back only its own records. The
//! client's default target, `"mqtt"`, is captured too.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Once};

const LOG_PREFIX: &str = "aiomqtt-test.";

static RECORDS: Mutex<Vec<(String, log::Level, String)>> = Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.target().starts_with(LOG_PREFIX) || metadata.target() == "mqtt"
    }
    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            RECORDS.lock().unwrap().push((
                record.target().to_owned(),
                record.level(),
                record.args().to_string(),
            ));
        }
    }
    fn flush(&self) {}
}

/// Installs the capturing logger (once) and returns a logger target unique to this call.
pub fn capture_logger(name: &str) -> String {
    static ONCE: Once = Once::new();
    static SEQ: AtomicU64 = AtomicU64::new(0);
    ONCE.call_once(|| {
        log::set_logger(&Capture).expect("no other logger in this test binary");
        log::set_max_level(log::LevelFilter::Trace);
    });
    format!("{LOG_PREFIX}{name}.{}", SEQ.fetch_add(1, Ordering::Relaxed))
}

/// The (level, text) records logged under `target`.
pub fn logged(target: &str) -> Vec<(log::Level, String)> {
    RECORDS
        .lock()
        .unwrap()
        .iter()
        .filter(|(t, _, _)| t == target)
        .map(|(_, l, m)| (*l, m.clone()))
        .collect()
}
