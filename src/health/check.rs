//! One health check: a connect (TCP, or a Unix socket), or an HTTP GET whose status (and
//! optionally body) must match. Each check opens its own connection, apart from the request
//! pool, and closes it.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;

use crate::backend_socket::BackendSocket;
use crate::config::{BackendAddr, HealthCheckConfig, HttpCheck};
use crate::tls::{BackendStream, BackendTls};
use tokio_util::either::Either;

/// How much of a body `expect_body` searches.
const BODY_LIMIT: usize = 64 * 1024;

/// Why a backend failed a check, for the log.
#[derive(Debug, thiserror::Error)]
pub enum CheckFailure {
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("TLS: {0}")]
    Tls(std::io::Error),
    #[error("HTTP/2 handshake: {0}")]
    Http2Handshake(hyper::Error),
    #[error("handshake: {0}")]
    Handshake(hyper::Error),
    #[error("request: {0}")]
    BadRequest(http::Error),
    #[error("request: {0}")]
    Request(hyper::Error),
    #[error("status {0}")]
    Status(u16),
    #[error("body: {0}")]
    Body(Box<dyn std::error::Error + Send + Sync>),
    #[error("body does not contain {0:?}")]
    BodyMismatch(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// `Ok` when the backend passes; otherwise why not, for the log. With `tls` (the pool's TLS
/// to its backends) the check completes a verified handshake first, so a backend with a bad
/// certificate fails its checks.
pub(super) async fn probe(
    addr: &BackendAddr,
    config: &HealthCheckConfig,
    tls: Option<&BackendTls>,
) -> Result<(), CheckFailure> {
    let attempt = async {
        let socket = BackendSocket::connect(addr)
            .await
            .map_err(CheckFailure::Connect)?;
        let stream = match tls {
            Some(tls) => tls.connect(addr, socket).await.map_err(CheckFailure::Tls)?,
            None => Either::Left(socket),
        };
        match &config.http {
            None => Ok(()),
            Some(http) => http_probe(stream, addr, http).await,
        }
    };
    tokio::time::timeout(config.timeout, attempt)
        .await
        .unwrap_or(Err(CheckFailure::Timeout(config.timeout)))
}

async fn http_probe(
    stream: BackendStream,
    addr: &BackendAddr,
    http: &HttpCheck,
) -> Result<(), CheckFailure> {
    if http.h2 {
        let (sender, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            TokioIo::new(stream),
        )
        .await
        .map_err(CheckFailure::Http2Handshake)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "health check connection ended with an error");
            }
        });
        return check_answer(sender, addr, http).await;
    }
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(CheckFailure::Handshake)?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "health check connection ended with an error");
        }
    });
    check_answer(sender, addr, http).await
}

/// Either protocol's request sender: one GET, the answer checked.
trait CheckSender {
    fn send(
        &mut self,
        req: Request<Empty<Bytes>>,
    ) -> impl Future<Output = hyper::Result<http::Response<hyper::body::Incoming>>> + Send;
}

impl CheckSender for hyper::client::conn::http1::SendRequest<Empty<Bytes>> {
    fn send(
        &mut self,
        req: Request<Empty<Bytes>>,
    ) -> impl Future<Output = hyper::Result<http::Response<hyper::body::Incoming>>> + Send {
        self.send_request(req)
    }
}

impl CheckSender for hyper::client::conn::http2::SendRequest<Empty<Bytes>> {
    fn send(
        &mut self,
        req: Request<Empty<Bytes>>,
    ) -> impl Future<Output = hyper::Result<http::Response<hyper::body::Incoming>>> + Send {
        self.send_request(req)
    }
}

async fn check_answer(
    mut sender: impl CheckSender,
    addr: &BackendAddr,
    http: &HttpCheck,
) -> Result<(), CheckFailure> {
    // The backend's address, as a request to it would name it; a Unix socket has no host,
    // and `localhost` is what nginx sends to one.
    let host = http.host.clone().unwrap_or_else(|| match addr {
        BackendAddr::Tcp(addr) => addr.to_string(),
        BackendAddr::Unix(_) => "localhost".to_string(),
    });
    let mut req = if http.h2 {
        // HTTP/2 takes the host in the URI (`:authority`) and has no `Connection` header.
        Request::get(format!("http://{host}{}", http.path))
            .header(header::USER_AGENT, "rproxy-health-check")
            .body(Empty::<Bytes>::new())
    } else {
        Request::get(http.path.as_str())
            .header(header::HOST, host)
            .header(header::USER_AGENT, "rproxy-health-check")
            .header(header::CONNECTION, "close")
            .body(Empty::<Bytes>::new())
    }
    .map_err(CheckFailure::BadRequest)?;
    for (name, value) in &http.headers {
        req.headers_mut().insert(name.clone(), value.clone());
    }
    let resp = sender.send(req).await.map_err(CheckFailure::Request)?;
    let status = resp.status().as_u16();
    if !http
        .expect_status
        .iter()
        .any(|&(low, high)| (low..=high).contains(&status))
    {
        return Err(CheckFailure::Status(status));
    }
    if let Some(needle) = &http.expect_body {
        let body = Limited::new(resp.into_body(), BODY_LIMIT)
            .collect()
            .await
            .map_err(CheckFailure::Body)?
            .to_bytes();
        if !String::from_utf8_lossy(&body).contains(needle.as_str()) {
            return Err(CheckFailure::BodyMismatch(needle.clone()));
        }
    }
    Ok(())
}
