#!/usr/bin/env bash
# CPU per request for large response bodies, which the other benchmarks (12-byte bodies) do not
# exercise: rproxy, nginx, HAProxy and hyper-floor, each with one worker pinned to CPU 0, in
# front of two nginx backends that send a file of SIZE bytes (sendfile), h2load --h1 on CPU 1
# with 8 connections. Rounds are interleaved. This is where copying body bytes shows: hyper's
# "flatten" write strategy, tried in issue 26, copies each one once more (benches/RESULTS.md).
#
#   bash benches/large_body.sh [SIZE] [REQUESTS] [ROUNDS]     (1048576 bytes, 3000, 3)
#
# Set RPROXY_B to a second rproxy binary to have it measured beside this tree's (as rproxy-b).
# Installs nginx, haproxy and nghttp2-client if missing. Loopback only; everything started is
# stopped by its pid.
set -euo pipefail
SIZE=${1:-1048576}
REQUESTS=${2:-3000}
ROUNDS=${3:-3}
cd "$(dirname "$0")/.."

source benches/common.sh
install_missing nginx haproxy nghttp2-client

# The backends serve one file; nginx's workers run as another user, so the scratch folder
# is opened to them.
mkdir -p "$DIR/big/html"
head -c "$SIZE" /dev/urandom > "$DIR/big/html/f"
chmod 755 "$DIR" "$DIR/big" "$DIR/big/html"
chmod 644 "$DIR/big/html/f"
B1=$(port)
B2=$(port)
cat > "$DIR/big/nginx.conf" <<CONF
worker_processes 1;
error_log stderr;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    sendfile on;
    server { listen 127.0.0.1:$B1; root $DIR/big/html; }
    server { listen 127.0.0.1:$B2; root $DIR/big/html; }
}
CONF
taskset -c 1 nginx -p "$DIR/big" -c "$DIR/big/nginx.conf" -g "daemon off; pid $DIR/big/nginx.pid;" 2>"$DIR/big.log" &
PIDS+=($!)
wait_port "$B1"
wait_port "$B2"

declare -A PID PORT
start() { # NAME COMMAND...
    local name=$1
    shift
    taskset -c 0 "$@" 2>"$DIR/$name.log" &
    PIDS+=($!)
    PID[$name]=$!
}
SYSTEMS=(rproxy)
PORT[rproxy]=$(port)
system_config rproxy "${PORT[rproxy]}"
start rproxy target/release/rproxy -c "$DIR/rproxy-${PORT[rproxy]}/rproxy.toml"
if [ -n "${RPROXY_B:-}" ]; then
    SYSTEMS+=(rproxy-b)
    PORT[rproxy-b]=$(port)
    system_config rproxy "${PORT[rproxy-b]}"
    start rproxy-b "$RPROXY_B" -c "$DIR/rproxy-${PORT[rproxy-b]}/rproxy.toml"
fi
SYSTEMS+=(nginx haproxy hyper-floor)
PORT[nginx]=$(port)
system_config nginx "${PORT[nginx]}"
start nginx nginx -p "$DIR/nginx-${PORT[nginx]}" -c "$DIR/nginx-${PORT[nginx]}/nginx.conf" \
    -g "daemon off; master_process off; pid $DIR/nginx-${PORT[nginx]}/nginx.pid;"
PORT[haproxy]=$(port)
system_config haproxy "${PORT[haproxy]}"
start haproxy haproxy -f "$DIR/haproxy-${PORT[haproxy]}/haproxy.cfg" -db
PORT[hyper-floor]=$(port)
start hyper-floor target/release/examples/hyper_floor "127.0.0.1:${PORT[hyper-floor]}" "127.0.0.1:$B1" "127.0.0.1:$B2"
for s in "${SYSTEMS[@]}"; do wait_port "${PORT[$s]}"; done

HZ=$(getconf CLK_TCK)
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
OUT="$DIR/large.tsv"
for round in $(seq "$ROUNDS"); do
    for s in "${SYSTEMS[@]}"; do
        url="http://127.0.0.1:${PORT[$s]}/f"
        h2load --h1 -n 100 -c 4 -t1 "$url" >/dev/null 2>&1 # warm: connections, buffers
        t0=$(ticks "${PID[$s]}")
        out=$(taskset -c 1 h2load --h1 -n "$REQUESTS" -c 8 -t1 "$url" 2>&1)
        t1=$(ticks "${PID[$s]}")
        ok=$(echo "$out" | awk '/^requests:/ {print $8}')
        # h2load writes "finished in 1.23s," or, under a second, "finished in 987.65ms,".
        secs=$(echo "$out" | awk '/^finished in/ {
            v = $3; sub(/,$/, "", v)
            if (v ~ /ms$/) { sub(/ms$/, "", v); v /= 1000 } else if (v ~ /us$/) { sub(/us$/, "", v); v /= 1e6 } else sub(/s$/, "", v)
            print v }')
        if [ "$ok" != "$REQUESTS" ]; then
            echo "$s: $ok of $REQUESTS requests succeeded" >&2
            show_logs
            exit 1
        fi
        cpu=$(awk -v t=$((t1 - t0)) -v hz="$HZ" -v r="$REQUESTS" 'BEGIN {printf "%.1f", t / hz * 1e6 / r}')
        mibs=$(awk -v n="$REQUESTS" -v b="$SIZE" -v s="$secs" 'BEGIN {printf "%.0f", n * b / s / 1048576}')
        printf '%s\t%s\t%s\n' "$s" "$cpu" "$mibs" >> "$OUT"
        echo "round $round $s: $cpu us CPU/request, $mibs MiB/s" >&2
    done
done

echo "Bodies of $SIZE bytes, $REQUESTS requests a round, $ROUNDS interleaved rounds, medians."
echo
echo "| system | CPU µs per request | MiB/s |"
echo "|---|---|---|"
for s in "${SYSTEMS[@]}"; do
    col() { awk -F'\t' -v s="$s" -v c="$1" '$1 == s {print $c}' "$OUT" | median; }
    echo "| $s | $(col 2) | $(col 3) |"
done
