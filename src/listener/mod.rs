//! Listeners: where requests enter. Binds sockets, accepts connections, speaks HTTP/1.1 and
//! HTTP/2 to clients, and hands each request to the router and upstream.
//!
//! Next in the flow: `router` (which pool), then `upstream::forward`.

mod activity;
mod bind;
mod cert_dates;
mod client_conn;
mod drive;
mod head_scan;
mod http;
mod http1;
mod idle_lot;
mod io;
mod open;
mod proxy_protocol;
mod redirect;
mod sockets;
mod tcp;
mod tls;
mod validate;

pub use activity::{ActiveRequest, ConnActivity, RequestEnd};
pub use bind::bind;
pub use http::{ConnectionLimit, ListenerStops};
pub use proxy_protocol::header as proxy_header;
pub use sockets::{BindError, Described, ListenerSet, ListenerSockets, Plan};
pub use tls::server_config as tls_server_config;
