#!/usr/bin/env bash
# Builds the Pingora peer (benches/compare/pingora/, a project of its own with its own
# Cargo.lock) with rproxy's release profile into target/pingora/, and prints the binary's path
# on stdout (progress on stderr). With `tls`, the build with Pingora's rustls feature (the
# peer's `--tls CERT KEY`), into target/pingora-tls/ so that neither build replaces the other.
# Installs cmake (pingora-core's zlib-ng needs it) if missing. Fast when already built: cargo
# finds nothing to do.
#
#   bash benches/compare/build_pingora.sh [tls]
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
TARGET=$ROOT/target/pingora
FEATURES=()
if [ "${1:-}" = tls ]; then
    TARGET=$ROOT/target/pingora-tls
    FEATURES=(--features rustls)
fi
# install_missing without the rest of benches/common.sh (which builds rproxy on being sourced).
dpkg -s cmake >/dev/null 2>&1 || {
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends cmake >&2
}
CARGO_TARGET_DIR="$TARGET" cargo build --release --locked --quiet "${FEATURES[@]}" \
    --manifest-path "$ROOT/benches/compare/pingora/Cargo.toml" >&2
echo "$TARGET/release/pingora_peer"
