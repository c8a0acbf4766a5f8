//! Health: which backends are candidates. Active checks probe every backend on its own timer
//! (one task per backend for the whole process, with its own connections, not the request
//! pool); the rise/fall machine turns results into state; the pool reads that state when it
//! selects. Sits beside the upstream pools, after the balancer in the request's flow.

mod check;
mod state;
mod task;

pub use state::HealthMachine;
pub use task::spawn_checks;
