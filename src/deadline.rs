//! Deadlines from timeouts of any length.

use std::time::Duration;

use tokio::time::Instant;

/// Thirty years: "never" for a timer, and still far from `Instant`'s limits.
const FAR: Duration = Duration::from_secs(30 * 365 * 24 * 3600);

/// The instant `timeout` from now. Timeouts too long to represent (up to
/// `Duration::MAX`) mean "no deadline": the result is decades away.
pub(crate) fn after(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout.min(FAR))
        .unwrap_or_else(|| now + Duration::from_secs(3600))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_duration_gives_a_deadline() {
        let now = Instant::now();
        assert!(after(Duration::MAX) > now + Duration::from_secs(365 * 24 * 3600));
        assert!(after(Duration::ZERO) <= Instant::now());
        let d = after(Duration::from_secs(5));
        assert!(d > now && d <= Instant::now() + Duration::from_secs(5));
    }
}
