#!/usr/bin/env bash
# Single-stream TCP throughput, and each proxy's CPU per GiB: a direct connection to a sink,
# and the same through rproxy (protocol = "tcp"; splice by default, and with `splice = false`),
# nginx's stream module, HAProxy `mode tcp` (its default copy, and with `option splice-auto`)
# and Pingora (the peer's `--tcp` pass-through, benches/compare/pingora/src/tcp.rs: Pingora has
# no TCP proxy of its own), each proxy with one worker so the comparison is per core. Loopback
# only; everything started here is stopped by its pid.
#
#   bash benches/tcp_throughput.sh [BYTES] [RUNS]     (default 2 GiB, 3 runs; best run shown)
#
# Installs nginx (with libnginx-mod-stream) and haproxy if missing. Not part of CI: these
# machines are shared, so the figures are for comparison on one machine at one time.
set -euo pipefail
BYTES=${1:-2147483648}
RUNS=${2:-3}
cd "$(dirname "$0")/.."

source benches/common.sh
install_missing nginx haproxy libnginx-mod-stream
PINGORA=$(bash benches/compare/build_pingora.sh)

"$BENCH" serve > "$DIR/sink.out" &
PIDS+=($!)
for _ in $(seq 100); do grep -q listening "$DIR/sink.out" 2>/dev/null && break; sleep 0.05; done
SINK=$(awk '/listening/ {print $2}' "$DIR/sink.out")

RPROXY_PORT=$(port)
RPROXY_COPY_PORT=$(port)
NGINX_PORT=$(port)
HAPROXY_PORT=$(port)
HAPROXY_SPLICE_PORT=$(port)
PINGORA_PORT=$(port)

cat > "$DIR/rproxy.toml" <<CONF
workers = 1
[log]
access = "off"
[listeners.bench]
listen = "127.0.0.1:$RPROXY_PORT"
protocol = "tcp"
upstream = "sink"
[listeners.copy]
listen = "127.0.0.1:$RPROXY_COPY_PORT"
protocol = "tcp"
upstream = "sink"
splice = false
[upstreams.sink]
servers = ["$SINK"]
CONF
target/release/rproxy -c "$DIR/rproxy.toml" 2> "$DIR/rproxy.log" &
PIDS+=($!)
RPROXY_PID=$!

cat > "$DIR/nginx.conf" <<CONF
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
worker_processes 1;
error_log stderr;
events { worker_connections 1024; }
stream {
    upstream sink { server $SINK; }
    # The sink answers after the client half-closes; nginx closes both sides on a half-close
    # unless told otherwise (rproxy and HAProxy pass it on by default).
    server { listen 127.0.0.1:$NGINX_PORT; proxy_pass sink; proxy_half_close on; }
}
CONF
nginx -p "$DIR" -c "$DIR/nginx.conf" -g "daemon off; pid $DIR/nginx.pid;" 2> "$DIR/nginx.log" &
PIDS+=($!)
NGINX_PID=$!

# tune.pipesize: rproxy's pipe size, so HAProxy's splice-auto is measured at its best (its
# default is the system's 64 KiB); the copying frontend uses no pipes.
cat > "$DIR/haproxy.cfg" <<CONF
global
    nbthread 1
    tune.pipesize 1048576
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend bench
    bind 127.0.0.1:$HAPROXY_PORT
    default_backend sink
backend sink
    server s1 $SINK
listen bench_splice
    bind 127.0.0.1:$HAPROXY_SPLICE_PORT
    option splice-auto
    server s1 $SINK
CONF
haproxy -f "$DIR/haproxy.cfg" -db 2> "$DIR/haproxy.log" &
PIDS+=($!)
HAPROXY_PID=$!

# One worker thread (the peer's default), a half-close passed on as rproxy and HAProxy do.
"$PINGORA" --tcp "127.0.0.1:$PINGORA_PORT" "$SINK" 2> "$DIR/pingora.log" &
PIDS+=($!)
PINGORA_PID=$!

for p in "$RPROXY_PORT" "$RPROXY_COPY_PORT" "$NGINX_PORT" "$HAPROXY_PORT" "$HAPROXY_SPLICE_PORT" "$PINGORA_PORT"; do
    wait_port "$p"
done

# proc_ticks PID: the CPU time (utime+stime, clock ticks) of PID and of its child processes
# (nginx's worker is its master's child).
proc_ticks() {
    local t=0 p
    for p in "$1" $(pgrep -P "$1" || true); do
        t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat")))
    done
    echo "$t"
}

# best ADDR [PID]: the best of RUNS runs in MiB/s, then, given the proxy's PID, its CPU ms per
# GiB over all of them: what the proxy itself spent, where the rate also depends on how the
# client, the proxy and the sink (none pinned) share the two CPUs.
best() {
    local best=0 mib t0 t1
    [ -n "${2:-}" ] && t0=$(proc_ticks "$2")
    for _ in $(seq "$RUNS"); do
        mib=$("$BENCH" send "$1" "$BYTES" | awk '{print $3}')
        [ "$mib" -gt "$best" ] && best=$mib
    done
    if [ -n "${2:-}" ]; then
        t1=$(proc_ticks "$2")
        printf '%-6s %6s' "$best" "$(awk -v t=$((t1 - t0)) -v hz="$(getconf CLK_TCK)" -v b="$BYTES" -v r="$RUNS" \
            'BEGIN {printf "%.0f", t * 1000 / hz / (b * r / 1073741824)}')"
    else
        echo "$best"
    fi
}

echo "one TCP stream, $BYTES bytes, best of $RUNS runs (MiB/s), and the proxy's CPU ms per GiB over all:"
printf '  %-16s %s\n' direct "$(best "$SINK")"
printf '  %-16s %s\n' rproxy "$(best "127.0.0.1:$RPROXY_PORT" "$RPROXY_PID")"
printf '  %-16s %s\n' "rproxy copy" "$(best "127.0.0.1:$RPROXY_COPY_PORT" "$RPROXY_PID")"
printf '  %-16s %s\n' "nginx stream" "$(best "127.0.0.1:$NGINX_PORT" "$NGINX_PID")"
printf '  %-16s %s\n' "haproxy tcp" "$(best "127.0.0.1:$HAPROXY_PORT" "$HAPROXY_PID")"
printf '  %-16s %s\n' "haproxy splice" "$(best "127.0.0.1:$HAPROXY_SPLICE_PORT" "$HAPROXY_PID")"
printf '  %-16s %s\n' "pingora tcp" "$(best "127.0.0.1:$PINGORA_PORT" "$PINGORA_PID")"
