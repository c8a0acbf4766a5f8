# Shared by the benchmark scripts (sourced, not run): install missing Debian packages, build
# release, a scratch folder whose processes are stopped by pid on exit, free ports, waiting
# for a port. Everything stays on 127.0.0.1.

# install_missing PACKAGE...: apt-get installs those not yet installed.
install_missing() {
    local need=()
    for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg"); done
    if [ ${#need[@]} -gt 0 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
    fi
}

cargo build --release --quiet --bin rproxy --example tcp_bench --example hyper_floor
BENCH="$PWD/target/release/examples/tcp_bench"
DIR=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    rm -rf "$DIR"
}
trap cleanup EXIT

# The last lines of every log in $DIR, when something fails to start.
show_logs() { tail -n 5 "$DIR"/*.log >&2 2>/dev/null || true; }

port() { "$BENCH" port; }

wait_port() {
    for _ in $(seq 200); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "port $1 did not open" >&2
    show_logs
    return 1
}
