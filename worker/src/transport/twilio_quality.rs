//! How well a Twilio stream's audio reaches the worker: `media` chunks missing from the
//! sequence, and the interarrival jitter of RFC 3550 §6.4.1 computed from each chunk's
//! `media.timestamp` (milliseconds since the stream started) against its arrival time. A
//! WebSocket over TCP loses nothing itself, so a missing chunk is one Twilio never sent,
//! and jitter is what the path between Twilio and the worker adds, head-of-line blocking
//! included. Sans-IO: the caller passes the arrival instant.

use std::time::Duration;

use tokio::time::Instant;

/// How often a summary goes to the metrics (an RTCP reception report's usual pace).
pub const REPORT_EVERY: Duration = Duration::from_secs(5);

/// The largest gap counted as loss: a minute of chunks. A larger jump is a peer that does
/// not count as Twilio does, and is not allowed to flood the loss counters.
const MAX_GAP: u64 = 3_000;

/// One interval's summary, as an RTCP reception report would give it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Report {
    /// Chunks missing over chunks expected in the interval (0 to 1).
    pub fraction_lost: f64,
    /// The running interarrival jitter estimate.
    pub jitter: Duration,
}

/// The running loss and jitter of one stream.
#[derive(Debug, Default)]
pub struct StreamQuality {
    last_chunk: Option<u64>,
    /// The previous chunk's timestamp (ms) and arrival.
    last_arrival: Option<(u64, Instant)>,
    /// RFC 3550's J, in milliseconds.
    jitter_ms: f64,
    received: u64,
    lost: u64,
    next_report: Option<Instant>,
}

impl StreamQuality {
    /// Takes one `media` message's `chunk` and `timestamp` (either may be missing) that
    /// arrived at `now`; returns how many chunks before it never came.
    pub fn observe(&mut self, chunk: Option<u64>, timestamp_ms: Option<u64>, now: Instant) -> u64 {
        self.next_report.get_or_insert(now + REPORT_EVERY);
        self.received += 1;
        let mut missing = 0;
        if let Some(chunk) = chunk {
            if let Some(last) = self.last_chunk {
                let gap = chunk.saturating_sub(last).saturating_sub(1);
                if chunk > last && gap <= MAX_GAP {
                    missing = gap;
                }
            }
            // A late or repeated chunk does not move the sequence back.
            if self.last_chunk.is_none_or(|last| chunk > last) {
                self.last_chunk = Some(chunk);
            }
        }
        self.lost += missing;
        if let Some(ts) = timestamp_ms {
            // Timestamps only move forward; one that goes back or leaps past a minute
            // restarts the estimate instead of poisoning it.
            if let Some((last_ts, last_at)) = self.last_arrival
                && ts >= last_ts
                && ts - last_ts <= MAX_GAP * 20
            {
                let arrived = now.saturating_duration_since(last_at).as_secs_f64() * 1_000.0;
                let d = (arrived - (ts - last_ts) as f64).abs();
                self.jitter_ms += (d - self.jitter_ms) / 16.0;
            }
            self.last_arrival = Some((ts, now));
        }
        missing
    }

    /// The summary of the interval that ended, once [`REPORT_EVERY`] has passed since the
    /// last one.
    pub fn report(&mut self, now: Instant) -> Option<Report> {
        let due = self.next_report?;
        if now < due {
            return None;
        }
        let expected = self.received + self.lost;
        let report = Report {
            fraction_lost: if expected == 0 {
                0.0
            } else {
                self.lost as f64 / expected as f64
            },
            jitter: Duration::try_from_secs_f64(self.jitter_ms / 1_000.0).unwrap_or(Duration::MAX),
        };
        self.received = 0;
        self.lost = 0;
        self.next_report = Some(now + REPORT_EVERY);
        Some(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRAME: Duration = Duration::from_millis(20);

    #[test]
    fn a_steady_stream_has_no_loss_and_no_jitter() {
        let start = Instant::now();
        let mut q = StreamQuality::default();
        for i in 0..=250u64 {
            assert_eq!(
                q.observe(Some(i + 1), Some(i * 20), start + FRAME * i as u32),
                0
            );
        }
        let report = q
            .report(start + REPORT_EVERY)
            .unwrap_or_else(|| panic!("due"));
        assert_eq!(report.fraction_lost, 0.0);
        assert!(report.jitter < Duration::from_micros(1), "{report:?}");
    }

    #[test]
    fn missing_chunks_are_loss_and_late_ones_are_jitter() {
        let start = Instant::now();
        let mut q = StreamQuality::default();
        let mut missing = 0;
        for i in 0..250u64 {
            // Every tenth chunk never comes; every other one is 10 ms late.
            if i % 10 == 9 {
                continue;
            }
            let late = if i % 2 == 1 {
                Duration::from_millis(10)
            } else {
                Duration::ZERO
            };
            missing += q.observe(Some(i + 1), Some(i * 20), start + FRAME * i as u32 + late);
        }
        assert_eq!(missing, 24, "the gaps before chunks 11, 21, … 241");
        let report = q
            .report(start + REPORT_EVERY)
            .unwrap_or_else(|| panic!("due"));
        assert!(
            (report.fraction_lost - 24.0 / 249.0).abs() < 1e-9,
            "{report:?}"
        );
        // Arrival gaps alternate 30 ms and 10 ms against 20 ms: |D| is 10 ms, and J tends to it.
        let ms = report.jitter.as_secs_f64() * 1_000.0;
        assert!((8.0..=10.0).contains(&ms), "{ms} ms");
        // The next interval starts from zero.
        assert_eq!(q.report(start + REPORT_EVERY), None);
    }

    #[test]
    fn a_peer_that_jumps_or_repeats_its_count_does_not_flood_the_loss() {
        let now = Instant::now();
        let mut q = StreamQuality::default();
        assert_eq!(q.observe(Some(5), None, now), 0);
        assert_eq!(q.observe(Some(u64::MAX), None, now), 0);
        assert_eq!(q.observe(Some(3), None, now), 0);
        assert_eq!(q.observe(Some(u64::MAX), None, now), 0);
        assert_eq!(q.observe(None, Some(u64::MAX), now), 0);
        assert_eq!(q.observe(None, Some(0), now), 0);
        let report = q
            .report(now + REPORT_EVERY)
            .unwrap_or_else(|| panic!("due"));
        assert_eq!(report.jitter, Duration::ZERO, "a leap is not jitter");
    }
}
