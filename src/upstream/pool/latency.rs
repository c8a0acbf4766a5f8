//! Upstream latency over the last minute, per backend, for `/status` (p50 and p99).
//!
//! Six ten-second slots of log-spaced bucket counters, all atomics: recording is one
//! fetch_add (plus a reset when a slot is reused), with no lock shared between requests.
//! Percentiles are read from bucket bounds, so they are approximate (within a factor of two,
//! reported as the bucket's upper bound), which is what a status page needs; exact
//! distributions are in the Prometheus histograms.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::rolling::claim;

const SLOT_SECONDS: u64 = 10;
const SLOTS: usize = 6;
/// Upper bounds in microseconds: 250 µs, 500 µs, 1 ms ... about 65 s, then everything above.
const BOUNDS_US: [u64; 19] = [
    250, 500, 1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 64_000, 128_000, 256_000, 512_000,
    1_024_000, 2_048_000, 4_096_000, 8_192_000, 16_384_000, 32_768_000, 65_536_000,
];
const BUCKETS: usize = BOUNDS_US.len() + 1;

#[derive(Debug, Default)]
pub struct LatencyWindow {
    slots: [Slot; SLOTS],
}

#[derive(Debug, Default)]
struct Slot {
    /// Which ten-second period (since start) the counts belong to, plus one; 0 is unused.
    period: AtomicU64,
    counts: [AtomicU32; BUCKETS],
}

/// The ten-second period `at` falls in, counted from the first reading, plus one.
fn period(at: Instant) -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    at.saturating_duration_since(*START.get_or_init(|| at))
        .as_secs()
        / SLOT_SECONDS
        + 1
}

fn period_now() -> u64 {
    period(Instant::now())
}

impl LatencyWindow {
    /// Records a latency measured until `at`: the caller's reading of the clock, which saves
    /// a second one on every request.
    pub fn record(&self, latency: Duration, at: Instant) {
        self.record_at(latency, period(at));
    }

    fn record_at(&self, latency: Duration, period: u64) {
        let slot = &self.slots[(period % SLOTS as u64) as usize];
        if claim(&slot.period, period) {
            // This request moved the slot into a new period: drop the old counts.
            for c in &slot.counts {
                c.store(0, Ordering::Relaxed);
            }
        }
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        let bucket = BOUNDS_US.partition_point(|&b| b < us);
        slot.counts[bucket].fetch_add(1, Ordering::Relaxed);
    }

    /// `(p50, p99)` over the last minute, `None` without samples.
    pub fn percentiles(&self) -> Option<(Duration, Duration)> {
        self.percentiles_at(period_now())
    }

    fn percentiles_at(&self, now: u64) -> Option<(Duration, Duration)> {
        let mut counts = [0u64; BUCKETS];
        for slot in &self.slots {
            let p = slot.period.load(Ordering::Acquire);
            if p != 0 && now.saturating_sub(p) < SLOTS as u64 {
                for (total, c) in counts.iter_mut().zip(&slot.counts) {
                    *total += u64::from(c.load(Ordering::Relaxed));
                }
            }
        }
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let at = |q: f64| {
            let rank = ((total as f64) * q).ceil().max(1.0) as u64;
            let mut seen = 0;
            for (i, c) in counts.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    let us = BOUNDS_US
                        .get(i)
                        .copied()
                        .unwrap_or(BOUNDS_US[BOUNDS_US.len() - 1] * 2);
                    return Duration::from_micros(us);
                }
            }
            Duration::MAX
        };
        Some((at(0.50), at(0.99)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recording_lands_in_the_period_of_the_time_it_was_given() {
        let start = Instant::now();
        let first = period(start);
        let later = start + Duration::from_secs(3 * SLOT_SECONDS);
        // Periods count from the first reading any recording gave, whatever it was.
        assert_eq!(period(later), first + 3);
        let w = LatencyWindow::default();
        w.record(Duration::from_millis(100), later);
        assert_eq!(
            w.percentiles_at(first + 3).map(|p| p.0),
            Some(Duration::from_millis(128))
        );
        assert_eq!(
            w.percentiles_at(first + 9),
            None,
            "more than a minute later"
        );
    }

    #[test]
    fn percentiles_come_from_the_last_minute_only() {
        let w = LatencyWindow::default();
        assert_eq!(w.percentiles_at(10), None);
        for _ in 0..98 {
            w.record_at(Duration::from_micros(900), 10); // bucket <= 1 ms
        }
        w.record_at(Duration::from_millis(100), 10); // <= 128 ms
        w.record_at(Duration::from_millis(100), 11);
        let (p50, p99) = w.percentiles_at(11).expect("samples");
        assert_eq!(p50, Duration::from_millis(1));
        assert_eq!(p99, Duration::from_millis(128));
        // The window is the current period and the five before it.
        assert_eq!(
            w.percentiles_at(16).map(|p| p.0),
            Some(Duration::from_millis(128))
        );
        assert_eq!(w.percentiles_at(17), None);
        // A slot reused for a new period starts from zero: period 16 shares period 10's slot.
        w.record_at(Duration::from_micros(100), 16);
        assert_eq!(
            w.percentiles_at(16),
            Some((Duration::from_micros(250), Duration::from_millis(128)))
        );
        assert_eq!(
            w.percentiles_at(17),
            Some((Duration::from_micros(250), Duration::from_micros(250)))
        );
    }
}
