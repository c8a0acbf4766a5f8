//! The rise/fall machine: how consecutive check results move a backend in and out of rotation.
//! Pure: results in, transitions out; the check task drives it.

/// A backend's health as the active checks see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthMachine {
    healthy: bool,
    /// Consecutive results against the current state.
    streak: u32,
    rise: u32,
    fall: u32,
    /// Whether any check has failed yet.
    failed: bool,
}

impl HealthMachine {
    pub fn new(initially_healthy: bool, rise: u32, fall: u32) -> Self {
        HealthMachine {
            healthy: initially_healthy,
            streak: 0,
            rise: rise.max(1),
            fall: fall.max(1),
            failed: false,
        }
    }

    /// New thresholds (a reload changed them); the current streak still counts.
    pub fn set_thresholds(&mut self, rise: u32, fall: u32) {
        self.rise = rise.max(1);
        self.fall = fall.max(1);
    }

    /// Whether a check has ever failed.
    pub fn has_failed(&self) -> bool {
        self.failed
    }

    pub fn healthy(&self) -> bool {
        self.healthy
    }

    /// Records one check result; returns the new state when it changed.
    pub fn observe(&mut self, passed: bool) -> Option<bool> {
        self.failed |= !passed;
        if passed == self.healthy {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if self.healthy { self.fall } else { self.rise };
        if self.streak < needed {
            return None;
        }
        self.healthy = passed;
        self.streak = 0;
        Some(passed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn falls_after_fall_failures_and_rises_after_rise_passes() {
        let mut m = HealthMachine::new(true, 2, 3);
        assert_eq!(m.observe(false), None);
        assert_eq!(m.observe(false), None);
        assert_eq!(m.observe(false), Some(false));
        assert!(!m.healthy());
        assert_eq!(m.observe(true), None);
        assert_eq!(m.observe(true), Some(true));
        assert!(m.healthy());
    }

    #[test]
    fn a_result_in_line_with_the_state_resets_the_streak() {
        let mut m = HealthMachine::new(true, 2, 3);
        // Alternating pass/fail never reaches fall = 3: no flapping.
        let mut changes = 0;
        for i in 0..100 {
            changes += usize::from(m.observe(i % 2 == 0).is_some());
        }
        assert_eq!(changes, 0);
        assert!(m.healthy());
        let mut down = HealthMachine::new(false, 2, 3);
        for i in 0..100 {
            assert_eq!(
                down.observe(i % 2 == 0),
                None,
                "rise 2 needs two passes in a row"
            );
        }
    }

    /// Feeds `results`; returns the changes they caused, as (index, new state).
    fn changes(m: &mut HealthMachine, results: &[bool]) -> Vec<(usize, bool)> {
        results
            .iter()
            .enumerate()
            .filter_map(|(i, &passed)| m.observe(passed).map(|healthy| (i, healthy)))
            .collect()
    }

    #[test]
    fn exactly_fall_failures_in_a_row_take_it_down_and_exactly_rise_passes_bring_it_back() {
        for fall in 1..=5u32 {
            for rise in 1..=5u32 {
                let n = |k: u32| k as usize;
                let mut m = HealthMachine::new(true, rise, fall);
                // fall - 1 failures, a pass, fall - 1 failures: the pass reset the count.
                let mut results = vec![false; n(fall - 1)];
                results.push(true);
                results.extend(vec![false; n(fall - 1)]);
                assert_eq!(changes(&mut m, &results), [], "fall {fall}: {results:?}");
                assert!(m.healthy());
                // One more failure is the fall-th in a row.
                assert_eq!(m.observe(false), Some(false), "fall {fall}");
                assert!(!m.healthy() && m.has_failed());
                // Failures while down change nothing.
                assert_eq!(changes(&mut m, &[false; 10]), []);

                // rise - 1 passes, a failure, rise - 1 passes: still down.
                let mut results = vec![true; n(rise - 1)];
                results.push(false);
                results.extend(vec![true; n(rise - 1)]);
                assert_eq!(changes(&mut m, &results), [], "rise {rise}: {results:?}");
                assert!(!m.healthy());
                assert_eq!(m.observe(true), Some(true), "rise {rise}");
                assert!(m.healthy());
                // And the fall count starts afresh after the rise.
                let again = changes(&mut m, &vec![false; n(fall)]);
                assert_eq!(
                    again,
                    [(n(fall) - 1, false)],
                    "fall {fall} after rise {rise}"
                );
            }
        }
    }

    #[test]
    fn a_backend_assumed_unhealthy_needs_rise_passes_and_zero_thresholds_mean_one() {
        let mut m = HealthMachine::new(false, 3, 2);
        assert_eq!(changes(&mut m, &[true, true, true]), [(2, true)]);
        assert!(!m.has_failed(), "no check failed");
        let mut m = HealthMachine::new(true, 0, 0);
        assert_eq!(m.observe(false), Some(false));
        assert_eq!(m.observe(true), Some(true));
    }

    #[test]
    fn new_thresholds_apply_to_the_streak_in_progress() {
        let mut m = HealthMachine::new(true, 2, 5);
        assert_eq!(changes(&mut m, &[false, false]), []);
        // A reload lowers fall to 3: the two failures so far count toward it.
        m.set_thresholds(2, 3);
        assert_eq!(m.observe(false), Some(false));
    }
}
