//! A listener's `tls` key and `redirect_https`: which certificate files to serve, for which
//! names. The files are read when the snapshot is built (`tls::server`), so a reload reads
//! them again and a broken file is reported there with this key's place.

use std::path::{Path, PathBuf};

use super::model::{BackendTlsConfig, CertFiles, TlsConfig};
use super::reader::{Reader, Value, flag, get, join};

const TLS_KEYS: &[&str] = &["cert", "key", "certs"];
const CERT_KEYS: &[&str] = &["cert", "key", "hosts"];

/// `tls = { cert = "...", key = "..." }` or `tls = { certs = [ { cert, key, hosts }, ... ] }`.
pub(super) fn tls(r: &mut Reader<'_>, key: &str, v: &Value<'_>) -> Option<TlsConfig> {
    let t = r.table(v, key)?;
    r.check_keys(t, key, TLS_KEYS);
    let single = get(t, "cert").is_some() || get(t, "key").is_some();
    let certs = match (single, get(t, "certs")) {
        (true, Some(list)) => {
            r.error(
                key,
                list.span(),
                "either `cert` and `key`, or `certs`, not both",
            );
            return None;
        }
        (true, None) => vec![cert_files(r, key, v, false)?],
        (false, Some(list)) => {
            let list_key = join(key, "certs");
            let items = r.array(list, &list_key)?;
            if items.is_empty() {
                r.error(&list_key, list.span(), "needs at least one certificate");
                return None;
            }
            let mut out = Vec::new();
            for (i, item) in items.iter().enumerate() {
                out.push(cert_files(r, &format!("{list_key}[{i}]"), item, true));
            }
            out.into_iter().collect::<Option<Vec<_>>>()?
        }
        (false, None) => {
            r.error(key, v.span(), "missing `cert` and `key` (PEM files)");
            return None;
        }
    };
    Some(TlsConfig { certs })
}

fn cert_files(r: &mut Reader<'_>, key: &str, v: &Value<'_>, in_list: bool) -> Option<CertFiles> {
    let t = r.table(v, key)?;
    let file = r.file();
    if in_list {
        r.check_keys(t, key, CERT_KEYS);
    }
    let mut path = |name: &str| match get(t, name) {
        Some(p) => r
            .string(p, &join(key, name))
            .map(|text| relative_to(file, text)),
        None => {
            r.error(key, v.span(), format!("missing `{name}` (a PEM file)"));
            None
        }
    };
    let cert = path("cert");
    let private_key = path("key");
    let hosts = match get(t, "hosts") {
        None => Some(Vec::new()),
        Some(h) => {
            let hosts_key = join(key, "hosts");
            r.array(h, &hosts_key).and_then(|items| {
                items
                    .iter()
                    .map(|item| {
                        let text = r.string(item, &hosts_key)?;
                        let host = text.trim_end_matches('.').to_ascii_lowercase();
                        let name = host.strip_prefix("*.").unwrap_or(&host);
                        if name.is_empty()
                            || name.contains('*')
                            || !name
                                .bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
                        {
                            r.error(
                                &hosts_key,
                                item.span(),
                                format!("`{text}` is not a host name or \"*.example.com\""),
                            );
                            return None;
                        }
                        Some(host)
                    })
                    .collect::<Option<Vec<_>>>()
            })
        }
    };
    Some(CertFiles {
        cert: cert?,
        key: private_key?,
        hosts: hosts?,
        origin: r.origin(key, v.span()),
    })
}

/// A relative path is taken from the configuration file's folder.
fn relative_to(file: &Path, text: &str) -> PathBuf {
    let path = Path::new(text);
    match file.parent() {
        Some(dir) if path.is_relative() => dir.join(path),
        _ => path.to_path_buf(),
    }
}

const BACKEND_TLS_KEYS: &[&str] = &[
    "ca",
    "server_name",
    "insecure_skip_verify",
    "client_cert",
    "client_key",
];

/// An upstream's `tls = { ca = "...", server_name = "..." }`.
pub(super) fn backend_tls(
    r: &mut Reader<'_>,
    key: &str,
    v: &Value<'_>,
) -> Option<BackendTlsConfig> {
    let t = r.table(v, key)?;
    r.check_keys(t, key, BACKEND_TLS_KEYS);
    let file = r.file();
    let mut path = |name: &str| match get(t, name) {
        Some(p) => r
            .string(p, &join(key, name))
            .map(|text| Some(relative_to(file, text))),
        None => Some(None),
    };
    let ca = path("ca");
    let client_cert = path("client_cert");
    let client_key = path("client_key");
    let server_name = match get(t, "server_name") {
        Some(n) => r
            .string(n, &join(key, "server_name"))
            .map(|s| Some(s.to_string())),
        None => Some(None),
    };
    let insecure_skip_verify = flag(r, t, key, "insecure_skip_verify");
    if get(t, "client_cert").is_some() != get(t, "client_key").is_some() {
        r.error(key, v.span(), "client_cert and client_key go together");
    }
    Some(BackendTlsConfig {
        ca: ca?,
        server_name: server_name?,
        insecure_skip_verify: insecure_skip_verify?,
        client_cert: client_cert?,
        client_key: client_key?,
        origin: r.origin(key, v.span()),
    })
}
