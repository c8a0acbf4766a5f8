//! Upstream: from a chosen pool to a backend's answer. Three rooms, in the order a request
//! passes them:
//!
//! - `forward/`: one request's journey: rewrite the head, ask the pool for a backend, send,
//!   fail over when that is safe, and hand the answer back as a [`ProxyBody`]; also raw TCP
//!   streams (`forward_stream`) and WebSocket tunnels.
//! - `pool/`: the backends of one `[upstreams.NAME]`, their live numbers, which of them the
//!   balancer may pick (asking `health` who is a candidate), sticky cookies and retry rules.
//! - `client/`: the connections to backends: kept-alive connections per backend, the HTTP/1
//!   and HTTP/2 client, and the request body as it goes out.
//!
//! Imports: `balancer`, `health`, `tls` and the ground floor (`config`, `metrics`, `error`,
//! `header_text`, `idle_timer`). Never `listener`, `state` or `access_log`: the listener wraps
//! what upstream hands back with its own end-of-request work.

mod client;
mod forward;
mod pool;

pub use forward::{
    ClientScheme, Forwarded, HeaderPlan, PROXY_V2_SIGNATURE, Peer, Present, ProxyBody, Route,
    StreamTotals, Tunnels, X_REQUEST_ID, error_response, forward, forward_stream, local_response,
    proxy_header, remove_hop_by_hop, set_forwarding, tunnels,
};
pub use pool::{Backend, BackendLive, LatencyWindow, Pick, Pool};
// What `limit` needs of a request before it is forwarded: the client address and the key.
pub use forward::client_address;
pub(crate) use forward::request_key;
