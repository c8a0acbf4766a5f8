//! `deploy/kubernetes/`: the rproxy configuration embedded in the ConfigMap is checked with
//! `rproxy -t`, and the ports it listens on are the ones the Deployment declares and probes.
//! (The manifests themselves are validated against the Kubernetes schemas by `.ci/run`.)

mod common;

use std::path::{Path, PathBuf};

use common::rproxy_check;

const DEPLOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/kubernetes");

/// The text of every manifest in `deploy/kubernetes/`, by file name.
fn manifests() -> Vec<(String, String)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(DEPLOY)
        .expect("deploy/kubernetes")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let name = p.file_name().expect("name").to_string_lossy().into_owned();
            (name, std::fs::read_to_string(&p).expect("read"))
        })
        .collect()
}

/// The literal block scalar `key: |` in the YAML document of `kind: KIND`: its lines with the
/// block's indentation taken off, as YAML reads it (a final newline kept, trailing blank
/// lines dropped). Only what these manifests use; anything else fails the test.
fn block(kind: &str, key: &str) -> String {
    let docs: Vec<String> = manifests()
        .iter()
        .flat_map(|(_, text)| text.split("\n---\n").map(str::to_string))
        .filter(|doc| doc.lines().any(|l| l == format!("kind: {kind}")))
        .collect();
    assert_eq!(docs.len(), 1, "one {kind} in {DEPLOY}");
    let mut lines = docs[0].lines();
    let header = format!("{key}: |");
    let key_indent = lines
        .by_ref()
        .find_map(|l| (l.trim_start() == header).then(|| l.len() - l.trim_start().len()))
        .unwrap_or_else(|| panic!("`{header}` in the {kind}"));
    let body: Vec<&str> = lines
        .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > key_indent)
        .collect();
    let indent = body
        .iter()
        .find(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .unwrap_or_else(|| panic!("`{header}` is empty"));
    let mut text: String = body
        .iter()
        .map(|l| format!("{}\n", l.get(indent..).unwrap_or("")))
        .collect();
    while text.ends_with("\n\n") {
        text.pop();
    }
    text
}

/// `rproxy -t` on `config`: whether it passed, and what it printed.
fn check(config: &str) -> (bool, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("upstream.toml");
    std::fs::write(&path, config).expect("write");
    let out = rproxy_check(&path);
    let said = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    (out.status.success(), said.into_owned())
}

#[test]
fn the_configmap_passes_rproxy_check() {
    let config = block("ConfigMap", "upstream.toml");
    let (ok, said) = check(&config);
    assert!(
        ok,
        "rproxy -t on the ConfigMap's upstream.toml:\n{said}\n{config}"
    );
}

/// Until the DNS keys exist on this branch: everything else in the file is checked, with the
/// headless Service's name (which resolves only in a cluster) replaced by an address.
#[test]
fn the_configmap_is_valid_apart_from_the_dns_keys() {
    let config = block("ConfigMap", "upstream.toml");
    for needed in [
        "watch = true",
        "resolve = true",
        "\"app-workers.default.svc.cluster.local:8080\"",
    ] {
        assert!(config.contains(needed), "`{needed}` in:\n{config}");
    }
    let local = config
        .replace(", resolve = true", "")
        .replace("app-workers.default.svc.cluster.local", "127.0.0.1");
    let (ok, said) = check(&local);
    assert!(ok, "rproxy -t:\n{said}\n{local}");
}

#[test]
fn the_deployment_exposes_and_probes_the_configured_ports() {
    let config = block("ConfigMap", "upstream.toml");
    let port = |section: &str| -> u16 {
        let at = config
            .find(&format!("[{section}]"))
            .unwrap_or_else(|| panic!("[{section}]"));
        config[at..]
            .lines()
            .find_map(|l| l.strip_prefix("listen = \"0.0.0.0:")?.strip_suffix('"'))
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("listen = \"0.0.0.0:PORT\" in [{section}]"))
    };
    let deployment = &manifests()
        .into_iter()
        .find(|(name, _)| name == "deployment.yaml")
        .expect("deployment.yaml")
        .1;
    for (name, port) in [("http", port("listeners.web")), ("admin", port("admin"))] {
        let declared = format!("- name: {name}\n              containerPort: {port}\n");
        assert!(
            deployment.contains(&declared),
            "deployment.yaml declares port {name} as {port}"
        );
    }
    for probe in [
        "path: /healthz\n              port: admin",
        "path: /readyz\n              port: admin",
    ] {
        assert!(
            deployment.contains(probe),
            "deployment.yaml probes `{probe}`"
        );
    }
    assert!(Path::new(DEPLOY).join("service.yaml").exists());
}
