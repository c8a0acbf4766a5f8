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
}
