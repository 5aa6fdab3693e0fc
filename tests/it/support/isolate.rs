//! Running one test in a child process of this test binary, for tests where the process
//! may abort (a crash fails that test, not the whole suite) or that need the whole
//! process to themselves (every log record, thread and file-descriptor counts).
//!
//! ```ignore
//! #[tokio::test]
//! async fn survives_hostile_input() {
//!     if ran_in_child("hostile::survives_hostile_input", Duration::from_secs(60)) {
//!         return;
//!     }
//!     // ... the body, run only in the child
//! }
//! ```
//!
//! [`isolated`] gives the parent the child's whole run, for tests that read more of it.

use std::process::{Command, Output};
use std::time::Duration;

use super::util::run_with_timeout;

/// Set in the child to the test path it runs.
const ISOLATED: &str = "AIOMQTT_ISOLATED_TEST";

/// How a child run ended.
pub struct ChildRun {
    pub test: String,
    pub output: Output,
}

impl ChildRun {
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }
    /// `true` when the child ran exactly this test and it passed.
    pub fn passed(&self) -> bool {
        self.output.status.success() && self.stdout().contains("1 passed")
    }
    /// The signal that ended the child, if one did (SIGABRT = 6, SIGSEGV = 11).
    pub fn signal(&self) -> Option<i32> {
        use std::os::unix::process::ExitStatusExt;
        self.output.status.signal()
    }
    #[track_caller]
    pub fn assert_passed(&self) {
        assert!(
            self.passed(),
            "{} in a child process ended with {} (signal {:?})\n--- stdout\n{}\n--- stderr\n{}",
            self.test,
            self.output.status,
            self.signal(),
            self.stdout(),
            self.stderr()
        );
    }
}

/// In the parent: runs `test` (its full path, e.g. `module::name`) alone in a child
/// process, bounded by `timeout` (killed after it), and returns how it ended. In the
/// child: returns `None`, and the caller runs the test body.
pub fn isolated(test: &str, timeout: Duration) -> Option<ChildRun> {
    if std::env::var(ISOLATED).is_ok_and(|t| t == test) {
        return None;
    }
    let exe = std::env::current_exe().expect("the test binary");
    let mut child = Command::new(exe);
    child
        .args(["--exact", test, "--nocapture", "--test-threads", "1"])
        .env(ISOLATED, test);
    let output = run_with_timeout(&mut child, timeout);
    Some(ChildRun {
        test: test.to_owned(),
        output,
    })
}

/// [`isolated`] for the common case: `true` in the parent once the child passed (the
/// caller returns), `false` in the child (the caller runs the test's body). The child's
/// `OBSERVED` lines, which its captured stdout would swallow, are repeated on stderr.
#[track_caller]
pub fn ran_in_child(test: &str, timeout: Duration) -> bool {
    let Some(child) = isolated(test, timeout) else {
        return false;
    };
    for line in child.stdout().lines().filter(|l| l.contains("OBSERVED")) {
        eprintln!("{line}");
    }
    child.assert_passed();
    true
}

/// `true` in a child started by [`isolated`].
pub fn in_child() -> bool {
    std::env::var_os(ISOLATED).is_some()
}
