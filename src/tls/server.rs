//! The server side: the certificates of an https listener, chosen by SNI. The handshake itself
//! happens in the listener (`listener::open`).
//!
//! The certificate files are read when a snapshot is built, so a reload reads them again:
//! new handshakes use the new certificates while open connections keep theirs, and a file
//! that fails to load fails the reload, keeping the old ones. TLS 1.2 and 1.3 only, ALPN `h2`
//! and `http/1.1`, resumption by session cache and tickets, the ring provider.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::config::{CertFiles, ConfigError, ConfigErrors, TlsConfig};

use super::cert_dates::not_after;

/// The TLS side of an https listener, built from its `tls` key. `file` names the
/// configuration in errors.
pub fn server_config(
    config: &TlsConfig,
    file: &Path,
) -> Result<Arc<rustls::ServerConfig>, ConfigErrors> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut errors = Vec::new();
    let mut loaded = Vec::new();
    for files in &config.certs {
        match load(files, &provider) {
            Ok(key) => loaded.push((files, Arc::new(key))),
            Err(message) => errors.push(ConfigError {
                file: file.to_path_buf(),
                line: files.origin.line,
                column: files.origin.column,
                key: files.origin.key.clone(),
                message,
            }),
        }
    }
    let whole = |message: String| ConfigErrors::whole_file(file, message);
    let Some(default) = loaded.first().map(|(_, key)| Arc::clone(key)) else {
        return Err(ConfigErrors(errors));
    };
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    let mut resolver = SniResolver {
        exact: HashMap::new(),
        wildcard: HashMap::new(),
        default,
    };
    for (files, key) in loaded {
        for host in &files.hosts {
            match host.strip_prefix('*') {
                Some(suffix) => resolver
                    .wildcard
                    .insert(suffix.to_string(), Arc::clone(&key)),
                None => resolver.exact.insert(host.clone(), Arc::clone(&key)),
            };
        }
    }
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| whole(format!("TLS setup: {e}")))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    server.ticketer =
        rustls::crypto::ring::Ticketer::new().map_err(|e| whole(format!("TLS tickets: {e}")))?;
    Ok(Arc::new(server))
}

/// Reads one chain and its key, checks that they belong together, and warns about an expired
/// or soon expiring certificate.
fn load(files: &CertFiles, provider: &CryptoProvider) -> Result<CertifiedKey, String> {
    let (cert_path, key_path) = (files.cert.display(), files.key.display());
    let chain = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| format!("cannot read the certificate {cert_path}: {e}"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{cert_path}: not a PEM certificate chain: {e}"))?;
    if chain.is_empty() {
        return Err(format!(
            "{cert_path}: no certificate (PEM `BEGIN CERTIFICATE`) in it"
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| {
        format!("{key_path}: no private key (PEM PKCS#8, RSA or EC) could be read: {e}")
    })?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("{key_path}: unsupported private key: {e}"))?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|_| {
        format!("the key in {key_path} does not match the certificate in {cert_path}")
    })?;
    if let Some(end) = certified.end_entity_cert().ok().and_then(|c| not_after(c)) {
        let now = std::time::SystemTime::now();
        if end < now {
            tracing::warn!(cert = %cert_path, expired = %humantime::format_rfc3339_seconds(end), "the certificate has expired; clients will refuse it");
        } else if end < now + std::time::Duration::from_secs(14 * 24 * 3600) {
            tracing::warn!(cert = %cert_path, expires = %humantime::format_rfc3339_seconds(end), "the certificate expires within 14 days");
        }
    }
    Ok(certified)
}

/// Picks the certificate by SNI: an exact name, then a wildcard for the name's parent
/// (`*.example.com` covers `a.example.com`, not `a.b.example.com`, as in certificates), then the
/// default.
#[derive(Debug)]
struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Keyed by the suffix after `*`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let chosen = hello.server_name().and_then(|name| {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            self.exact.get(&name).or_else(|| {
                let parent = &name[name.find('.')?..];
                self.wildcard.get(parent)
            })
        });
        Some(Arc::clone(chosen.unwrap_or(&self.default)))
    }
}
