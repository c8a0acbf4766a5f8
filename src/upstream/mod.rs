//! Upstream: the pools of backends, the client that reaches them over kept-alive connections,
//! and forwarding.
//!
//! The listener calls [`forward`] for each request with the pool the router chose; the pool's
//! balancer picks a backend, the client sends the request over a kept-alive connection, and
//! the answer streams back through [`ProxyBody`].

mod backend;
mod backend_tls;
mod body;
mod client;
mod fair_io;
mod forward;
mod hash_key;
mod headers;
mod keepalive;
mod latency;
mod pool;
mod request_body;
mod request_id;
mod response_timer;
mod retry;
mod retry_budget;
mod rolling;
mod slow_start;
mod sticky;
mod stream_forward;
mod tunnel;

pub use backend::{Backend, BackendLive};
pub use backend_tls::{BackendStream, BackendTls};
pub use body::ProxyBody;
pub use forward::{Peer, Route, forward};
/// Public for the header-rewriting benchmark (`benches/balancer.rs`).
pub use headers::{Present, remove_hop_by_hop, set_forwarding};
pub(crate) use headers::{has_token, ip_text, items};
pub use latency::LatencyWindow;
pub use pool::Pool;
pub use slow_start::{MIN_SHARE as SLOW_START_MIN_SHARE, SlowStart, ramp_share};
pub use stream_forward::{StreamTotals, forward_stream};
