//! TLS configurations built from the file, for both sides: an https listener's certificates
//! (`server`) and the connector to backends of an upstream with `tls` (`backend`).
//!
//! Ground floor beside `config`: the snapshot builds the listeners' configurations, the
//! upstream client and the health checks connect with the backends' one. The client-side
//! handshake happens here (`BackendTls::connect`); the server-side one in `listener::open`.
//! Imports only `config` and `backend_socket`.

mod backend;
mod cert_dates;
mod server;

pub use backend::{BackendStream, BackendTls};
pub use server::server_config;
