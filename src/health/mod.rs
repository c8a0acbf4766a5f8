//! Health: which backends are candidates for a request right now. The one owner of that
//! answer: the file's `down`, the operator's runtime admin mode (drain, disable), the active
//! checks' verdict, passive health, slow start and the all-unhealthy (fail-open) rule; the
//! pool and its balancers only read it
//! ([`BackendHealth::is_candidate`], [`FailOpen`]).
//!
//! Active checks probe every backend on its own timer (one task per backend for the whole
//! process, with its own connections, not the request pool); the rise/fall machine turns
//! results into a verdict. After the balancer in the request's flow: `upstream::pool` imports
//! this, never the other way round. Imports `config`, `metrics` and `tls`.

mod admin;
mod backend;
mod check;
mod fail_open;
mod passive;
mod slow_start;
mod state;
mod task;

pub use admin::{AdminMode, Override};
pub use backend::BackendHealth;
pub use check::CheckFailure;
pub use fail_open::FailOpen;
pub use slow_start::{MIN_SHARE as SLOW_START_MIN_SHARE, SlowStart, ramp_share};
pub use state::HealthMachine;
pub use task::{CheckTarget, spawn_checks};
