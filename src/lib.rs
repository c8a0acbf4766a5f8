//! rproxy: a layer-4/7 reverse-proxy load balancer.
//!
//! The modules follow a request: `listener` accepts it, `router` picks the pool, `limit` holds
//! it to its rate and concurrency limits, `balancer` picks a backend of that pool, `upstream`
//! forwards it. `config` is the validated file and
//! `state` the runtime snapshot built from it; `server` ties them together at start and stop,
//! on the threads of `workers`.
//! At the side: `metrics`, served by the `admin` listener, the `access_log`, and `dns`, which
//! follows the names of `resolve = true` servers as their records change.

pub mod access_log;
pub mod admin;
pub mod backend_socket;
pub mod balancer;
pub mod config;
pub mod ctl;
pub mod dns;
pub mod error;
pub mod header_text;
pub mod health;
mod heap_trim;
mod idle_timer;
pub mod limit;
pub mod listener;
pub mod metrics;
pub mod router;
pub mod server;
pub mod state;
pub mod tls;
pub mod upstream;
pub mod workers;

pub use server::{Server, Signals, StartError, send_to_pid_file, signal_for};
