//! Calls made at once and awaited together, as a burst: the rate at which they complete.

use std::future::Future;
use std::time::Instant;

use futures::StreamExt;
use futures::stream::FuturesUnordered;

/// Makes the `n` calls of `calls` (a lazy iterator: each call is made inside the timed
/// span), awaits them all and returns calls per second; the first error ends it.
pub async fn rate<F, T, E>(n: usize, calls: impl Iterator<Item = F>) -> Result<f64, E>
where
    F: Future<Output = Result<T, E>>,
{
    let start = Instant::now();
    let mut pending: FuturesUnordered<F> = calls.take(n).collect();
    while let Some(result) = pending.next().await {
        result?;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}
