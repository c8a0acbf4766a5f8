//! TLS to backends: the connector the pooled client and the health checks use for an upstream
//! with `tls`. Backends are verified against the configured CA (the system bundle by default)
//! for `server_name` (or the backend's IP address); `insecure_skip_verify` accepts any
//! certificate and is warned about at every load. A client certificate gives mutual TLS.
//!
//! One client per pool, so connections are never shared across different trust settings.

use std::io;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_util::either::Either;

use crate::backend_socket::BackendSocket;
use crate::config::{BackendAddr, BackendTlsConfig, ConfigError, ConfigErrors};

/// Where Debian and its derivatives keep the system's trusted CAs.
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// One pool's TLS to its backends.
#[derive(Clone)]
pub struct BackendTls {
    connector: TlsConnector,
    server_name: Option<ServerName<'static>>,
}

impl std::fmt::Debug for BackendTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl BackendTls {
    /// Builds the TLS client for `upstream` from its `tls` key; `h2` sets ALPN.
    pub fn load(
        config: &BackendTlsConfig,
        upstream: &str,
        h2: bool,
        file: &Path,
    ) -> Result<BackendTls, ConfigErrors> {
        let error = |message: String| {
            ConfigErrors(vec![ConfigError {
                file: file.to_path_buf(),
                line: config.origin.line,
                column: config.origin.column,
                key: config.origin.key.clone(),
                message,
            }])
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| error(format!("TLS setup: {e}")))?;
        let builder = if config.insecure_skip_verify {
            tracing::warn!(
                upstream,
                "tls.insecure_skip_verify: backend certificates are NOT verified; anyone on the path can impersonate these backends"
            );
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
        } else {
            let ca = config
                .ca
                .as_deref()
                .unwrap_or_else(|| Path::new(SYSTEM_CA_BUNDLE));
            let mut roots = rustls::RootCertStore::empty();
            let certs = CertificateDer::pem_file_iter(ca)
                .map_err(|e| error(format!("cannot read the CA file {}: {e}", ca.display())))?;
            for cert in certs {
                let cert = cert.map_err(|e| error(format!("{}: not PEM: {e}", ca.display())))?;
                roots
                    .add(cert)
                    .map_err(|e| error(format!("{}: not a usable CA: {e}", ca.display())))?;
            }
            if roots.is_empty() {
                return Err(error(format!("{}: no CA certificate in it", ca.display())));
            }
            builder.with_root_certificates(roots)
        };
        let mut client = match (&config.client_cert, &config.client_key) {
            (Some(cert), Some(key)) => {
                let chain = CertificateDer::pem_file_iter(cert)
                    .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| error(format!("client_cert {}: {e}", cert.display())))?;
                let key = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| error(format!("client_key {}: {e}", key.display())))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| error(format!("client certificate: {e}")))?
            }
            _ => builder.with_no_client_auth(),
        };
        client.alpn_protocols = vec![if h2 {
            b"h2".to_vec()
        } else {
            b"http/1.1".to_vec()
        }];
        let server_name = match &config.server_name {
            Some(name) => Some(
                ServerName::try_from(name.clone())
                    .map_err(|e| error(format!("server_name `{name}`: {e}")))?,
            ),
            None => None,
        };
        Ok(BackendTls {
            connector: TlsConnector::from(Arc::new(client)),
            server_name,
        })
    }

    /// The TLS handshake over a connected socket to `addr`. Only TCP: the configuration
    /// refuses a Unix-socket server in an upstream with `tls`, so a Unix socket here is
    /// refused as unsupported rather than trusted to that check.
    pub async fn connect(
        &self,
        addr: &BackendAddr,
        socket: BackendSocket,
    ) -> io::Result<BackendStream> {
        let (BackendSocket::Tcp(tcp), Some(ip)) = (socket, addr.tcp().map(|a| a.ip())) else {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "TLS to a Unix-socket backend is not supported",
            ));
        };
        let name = self
            .server_name
            .clone()
            .unwrap_or_else(|| ServerName::IpAddress(ip.into()));
        let tls = self.connector.connect(name, tcp).await?;
        Ok(Either::Right(Box::new(tls)))
    }
}

/// `insecure_skip_verify`: any certificate is accepted; handshake signatures are still checked.
#[derive(Debug)]
struct AcceptAny(Arc<CryptoProvider>);

impl AcceptAny {
    fn algorithms(&self) -> &WebPkiSupportedAlgorithms {
        &self.0.signature_verification_algorithms
    }
}

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, self.algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, self.algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms().supported_schemes()
    }
}

/// A connection to a backend: plain TCP or Unix, or TLS over TCP.
pub type BackendStream = Either<BackendSocket, Box<tokio_rustls::client::TlsStream<TcpStream>>>;
