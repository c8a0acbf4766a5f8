//! The operator's runtime overrides of one backend, set through the admin API: its admin mode
//! (active, draining, disabled) and its weight, with when and by whom they were set.
//!
//! The mode is one atomic byte, read beside the file's `down` on every candidacy check
//! ([`super::BackendHealth::is_candidate`]); the rest is a record behind a lock, read only by
//! the admin endpoints and when a pool is built (the weight). Both sit in the backend's
//! `BackendHealth`, so a reload that keeps the (upstream, address) keeps them, and one that
//! removes the server drops them with it.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::SystemTime;

use parking_lot::Mutex;

/// Whether the operator lets a backend take requests. The file's `down` is separate and wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(u8)]
pub enum AdminMode {
    /// As the file says.
    #[default]
    Active = 0,
    /// No new requests, except those a sticky cookie pins to it (HAProxy's `drain`); hash
    /// keys move on as if it were down. Requests in progress finish.
    Draining = 1,
    /// No requests at all, sticky ones included (HAProxy's `maint`). Requests in progress
    /// finish.
    Disabled = 2,
}

impl AdminMode {
    /// As the admin API and `/status` write it.
    pub fn name(self) -> &'static str {
        match self {
            AdminMode::Active => "active",
            AdminMode::Draining => "draining",
            AdminMode::Disabled => "disabled",
        }
    }

    /// The value of the `rproxy_backend_admin_state` gauge.
    pub fn gauge(self) -> f64 {
        f64::from(self as u8)
    }

    fn from_u8(v: u8) -> AdminMode {
        match v {
            1 => AdminMode::Draining,
            2 => AdminMode::Disabled,
            _ => AdminMode::Active,
        }
    }
}

/// What the operator changed at run time, and when; `None` fields follow the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    /// Draining or disabled; `None` after `enable`.
    pub state: Option<AdminMode>,
    pub weight: Option<NonZeroU32>,
    /// When the last change to it was made (Unix seconds).
    pub since_unix: u64,
    /// The admin client that made it (`ip:port`).
    pub by: String,
}

/// One backend's admin mode and override record.
#[derive(Debug, Default)]
pub(super) struct AdminControl {
    /// `AdminMode as u8`, for the one load per candidacy check.
    mode: AtomicU8,
    /// Written only with the mode, under this lock, so the two always agree.
    record: Mutex<Option<Override>>,
}

impl AdminControl {
    pub(super) fn mode(&self) -> AdminMode {
        AdminMode::from_u8(self.mode.load(Ordering::Relaxed))
    }

    /// Sets the mode (`None`: back to the file's) and returns the mode it had.
    pub(super) fn set_mode(&self, state: Option<AdminMode>, by: &str) -> AdminMode {
        let mut record = self.record.lock();
        let new = state.unwrap_or_default();
        let old = AdminMode::from_u8(self.mode.swap(new as u8, Ordering::Relaxed));
        let weight = record.as_ref().and_then(|r| r.weight);
        *record = made(state, weight, by);
        old
    }

    /// Sets the weight override (`None`: the file's) and returns the one it replaced.
    pub(super) fn set_weight(&self, weight: Option<NonZeroU32>, by: &str) -> Option<NonZeroU32> {
        let mut record = self.record.lock();
        let before = record.as_ref().and_then(|r| r.weight);
        let state = record.as_ref().and_then(|r| r.state);
        *record = made(state, weight, by);
        before
    }

    /// Drops every override; returns the mode it had.
    pub(super) fn reset(&self) -> AdminMode {
        let mut record = self.record.lock();
        *record = None;
        AdminMode::from_u8(self.mode.swap(AdminMode::Active as u8, Ordering::Relaxed))
    }

    /// Puts back an override another process recorded (a binary upgrade hands them over),
    /// with its own time and author.
    pub(super) fn restore(&self, over: Override) {
        let mut record = self.record.lock();
        self.mode
            .store(over.state.unwrap_or_default() as u8, Ordering::Relaxed);
        *record = Some(over);
    }

    pub(super) fn record(&self) -> Option<Override> {
        self.record.lock().clone()
    }

    pub(super) fn weight(&self) -> Option<NonZeroU32> {
        self.record.lock().as_ref().and_then(|r| r.weight)
    }
}

/// The record after a change: none when nothing is overridden any more.
fn made(state: Option<AdminMode>, weight: Option<NonZeroU32>, by: &str) -> Option<Override> {
    // `Active` is the file's own state: recording it would show an override that is none.
    let state = state.filter(|s| *s != AdminMode::Active);
    (state.is_some() || weight.is_some()).then(|| Override {
        state,
        weight,
        since_unix: SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        by: by.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_and_a_weight_make_one_override_until_both_are_gone() {
        let c = AdminControl::default();
        assert_eq!(c.mode(), AdminMode::Active);
        assert_eq!(c.record(), None);
        assert_eq!(
            c.set_mode(Some(AdminMode::Draining), "127.0.0.1:1"),
            AdminMode::Active
        );
        assert_eq!(c.set_weight(NonZeroU32::new(3), "127.0.0.1:2"), None);
        let r = c.record().expect("an override");
        assert_eq!(
            (r.state, r.weight, r.by.as_str()),
            (Some(AdminMode::Draining), NonZeroU32::new(3), "127.0.0.1:2")
        );
        // `enable` drops the state, not the weight.
        assert_eq!(c.set_mode(None, "x"), AdminMode::Draining);
        assert_eq!(c.mode(), AdminMode::Active);
        let r = c.record().expect("the weight stays");
        assert_eq!((r.state, r.weight), (None, NonZeroU32::new(3)));
        assert_eq!(c.set_weight(None, "x"), NonZeroU32::new(3));
        assert_eq!(c.record(), None, "nothing overridden any more");
    }

    #[test]
    fn reset_drops_everything() {
        let c = AdminControl::default();
        c.set_mode(Some(AdminMode::Disabled), "a");
        c.set_weight(NonZeroU32::new(9), "a");
        assert_eq!(c.reset(), AdminMode::Disabled);
        assert_eq!(
            (c.mode(), c.record(), c.weight()),
            (AdminMode::Active, None, None)
        );
    }

    #[test]
    fn setting_active_is_no_override() {
        let c = AdminControl::default();
        c.set_mode(Some(AdminMode::Active), "a");
        assert_eq!(c.record(), None);
    }
}
