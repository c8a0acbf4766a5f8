//! Listeners: where requests enter. Binds sockets, accepts connections, speaks HTTP/1.1 and
//! HTTP/2 to clients, and hands each request to the router and upstream.
//!
//! Next in the flow: `router` (which pool), `limit` (the route's rate and concurrency limits),
//! then `upstream::forward`.
//!
//! Owns the client side of a connection: sockets, TLS handshakes, HTTP/1 and HTTP/2 serving,
//! edge validation, idle connections, and the end of each request (`client_body`: metrics and
//! access log). Imports `state`, `router` (through the snapshot), `limit`, `upstream`,
//! `access_log` and the ground floor; nothing imports it but `server`.

mod activity;
mod bind;
mod client_body;
mod client_conn;
mod drive;
mod head_scan;
mod http;
mod http1;
mod idle_lot;
mod inherit;
mod io;
mod open;
mod proxy_protocol;
mod redirect;
mod sockets;
mod tcp;
mod validate;

pub use activity::{ActiveRequest, ConnActivity, RequestEnd};
pub use bind::bind;
pub use http::ListenerStops;
pub use inherit::{HANDOVER_ENV, HandedSocket, Handover, Inherited};
pub use sockets::{BindError, ListenerSet, Plan};
