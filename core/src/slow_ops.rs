//! Rate-limited reports of slow disk operations, so that an operator sees a stalling device
//! in the broker's log (etcd warns the same way about slow WAL syncs). Under `acks=all` every
//! acknowledged write waits for the device; a write that takes 50 ms shows up directly in
//! producers' and consumers' tail latency, and nothing else would tell why.

/// Counts operations slower than a threshold and says when to report them: the first at
/// once, then at most one report per interval, covering every slow operation since the last.
#[derive(Debug, Clone)]
pub struct SlowOps {
    threshold_ms: u64,
    interval_ms: u64,
    /// No report before this time (ms), unless none was ever made.
    quiet_until_ms: Option<u64>,
    count: u64,
    slowest_ms: u64,
}

/// Slow operations since the previous report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlowReport {
    pub count: u64,
    pub slowest_ms: u64,
}

impl SlowOps {
    pub const fn new(threshold_ms: u64, interval_ms: u64) -> SlowOps {
        SlowOps {
            threshold_ms,
            interval_ms,
            quiet_until_ms: None,
            count: 0,
            slowest_ms: 0,
        }
    }

    /// Records one operation that took `took_ms`, finished at `now_ms`; returns the report due
    /// now, if any. Slow operations inside a quiet interval are carried into the next report.
    pub fn record(&mut self, took_ms: u64, now_ms: u64) -> Option<SlowReport> {
        if took_ms < self.threshold_ms {
            return None;
        }
        self.count += 1;
        self.slowest_ms = self.slowest_ms.max(took_ms);
        if self.quiet_until_ms.is_some_and(|t| now_ms < t) {
            return None;
        }
        self.quiet_until_ms = Some(now_ms.saturating_add(self.interval_ms));
        let report = SlowReport {
            count: self.count,
            slowest_ms: self.slowest_ms,
        };
        self.count = 0;
        self.slowest_ms = 0;
        Some(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_operations_are_never_reported() {
        let mut s = SlowOps::new(100, 10_000);
        for t in 0..1_000 {
            assert_eq!(s.record(99, t * 1_000), None);
        }
    }

    #[test]
    fn the_first_slow_one_at_once_then_one_report_per_interval_carrying_the_rest() {
        let mut s = SlowOps::new(100, 10_000);
        assert_eq!(
            s.record(150, 1_000),
            Some(SlowReport {
                count: 1,
                slowest_ms: 150
            })
        );
        // Inside the quiet interval: counted, not reported.
        assert_eq!(s.record(400, 2_000), None);
        assert_eq!(s.record(120, 5_000), None);
        assert_eq!(s.record(50, 12_000), None, "fast ones do not report");
        assert_eq!(
            s.record(100, 11_000),
            Some(SlowReport {
                count: 3,
                slowest_ms: 400
            }),
            "the interval is over: everything since the last report"
        );
        // And the next interval starts from that report.
        assert_eq!(s.record(200, 20_999), None);
        assert_eq!(
            s.record(300, 21_000),
            Some(SlowReport {
                count: 2,
                slowest_ms: 300
            })
        );
    }
}
