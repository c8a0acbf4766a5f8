#!/usr/bin/env bash
# User-space instructions per proxied request, counted by valgrind (cachegrind): rproxy, nginx,
# HAProxy and `hyper_floor` (the least a hyper proxy does; examples/hyper_floor.rs), one worker
# each, round-robin over two keep-alive nginx backends, h2load --h1 with 50 connections; and
# rproxy-observed, rproxy with metrics (an admin listener), an access log file and 1 s health
# checks, for what observing costs.
#
# CPU time per request moves by a third from run to run on a shared machine; an instruction
# count moves by less than 1%, so it shows what a change to rproxy's code did. It leaves out
# the kernel's work (about half the CPU time here) and how well the instructions run (cache
# misses), so it complements the timed runs rather than replacing them.
#
#   bash benches/instructions.sh [REQUESTS]     (default 20000)
#
# Each system serves REQUESTS/5 and then REQUESTS requests in two fresh processes; the
# difference divided by the difference in requests leaves out start-up and shutdown.
# Installs valgrind, nginx, haproxy and nghttp2-client if missing. Loopback only.
set -euo pipefail
REQUESTS=${1:-20000}
cd "$(dirname "$0")/.."

source benches/common.sh
install_missing valgrind nginx haproxy nghttp2-client curl

B1=$(port); B2=$(port)
mkdir -p "$DIR/backends"
backends_conf "$B1" "$B2" > "$DIR/backends/nginx.conf"
nginx -p "$DIR/backends" -c "$DIR/backends/nginx.conf" -g "daemon off; pid $DIR/backends/nginx.pid;" 2>"$DIR/backends.log" &
PIDS+=($!)
wait_port "$B1"; wait_port "$B2"

# config SYSTEM PORT: writes the system's configuration for listening on PORT.
config() {
    local dir="$DIR/$1-$2"
    mkdir -p "$dir"
    case $1 in
        rproxy) rproxy_conf "$2" 1 "$B1" "$B2" off > "$dir/rproxy.toml" ;;
        rproxy-observed) rproxy_conf "$2" 1 "$B1" "$B2" "$dir/access.log" "[admin]
listen = \"127.0.0.1:$(port)\"" 'health_check = { interval = "1s", path = "/" }' > "$dir/rproxy.toml" ;;
        nginx) nginx_proxy_conf "$2" "$B1" "$B2" > "$dir/nginx.conf" ;;
        haproxy) haproxy_conf "$2" "$B1" "$B2" > "$dir/haproxy.cfg" ;;
    esac
}

# start SYSTEM PORT: runs it in the foreground under cachegrind (instruction counts only).
start() {
    local dir="$DIR/$1-$2"
    local vg=(valgrind --tool=cachegrind --cache-sim=no --cachegrind-out-file=/dev/null)
    case $1 in
        rproxy | rproxy-observed) exec "${vg[@]}" "$PWD/target/release/rproxy" -c "$dir/rproxy.toml" ;;
        nginx) exec "${vg[@]}" nginx -p "$dir" -c "$dir/nginx.conf" -g "daemon off; master_process off; pid $dir/nginx.pid;" ;;
        haproxy) exec "${vg[@]}" haproxy -f "$dir/haproxy.cfg" -db ;;
        hyper-floor) exec "${vg[@]}" "$PWD/target/release/examples/hyper_floor" "127.0.0.1:$2" "127.0.0.1:$B1" "127.0.0.1:$B2" ;;
    esac
}

# instructions SYSTEM N: sets IR to the user-space instructions of a fresh process that
# served N requests. (Not run in a subshell, so the exit trap knows the process.)
instructions() {
    local p
    p=$(port)
    config "$1" "$p"
    start "$1" "$p" >/dev/null 2>"$DIR/vg-$p.log" &
    # `start` execs valgrind, which runs the system in its own process: this is its pid.
    local pid=$!
    PIDS+=($pid)
    for _ in $(seq 600); do curl -s -o /dev/null "http://127.0.0.1:$p/" && break; sleep 0.1; done
    local done_n
    done_n=$(h2load --h1 -n "$2" -c 50 -t1 "http://127.0.0.1:$p/" 2>&1 | awk '/^requests:/ {print $8}')
    [ "$done_n" = "$2" ] || { echo "$1: $done_n of $2 requests succeeded" >&2; exit 1; }
    # nginx finishes (and valgrind reports) on SIGQUIT, the others on SIGTERM.
    if [ "$1" = nginx ]; then kill -QUIT "$pid"; else kill -TERM "$pid"; fi
    wait "$pid" || true
    IR=$(awk '/I *refs/ {gsub(",", "", $NF); print $NF}' "$DIR/vg-$p.log")
}

declare -A PER
for s in rproxy nginx haproxy hyper-floor rproxy-observed; do
    instructions "$s" $((REQUESTS / 5))
    small=$IR
    instructions "$s" "$REQUESTS"
    large=$IR
    PER[$s]=$(( (large - small) / (REQUESTS - REQUESTS / 5) ))
    echo "$s: ${PER[$s]} instructions/request" >&2
done
echo "| system | instructions/request | vs nginx |"
echo "|---|---|---|"
for s in rproxy nginx haproxy hyper-floor; do
    printf '| %s | %s | %.2fx |\n' "$s" "${PER[$s]}" "$(awk -v a="${PER[$s]}" -v b="${PER[nginx]}" 'BEGIN {print a / b}')"
done
printf '\nObserving (rproxy-observed) costs %s instructions per request against %s plain: %.2fx.\n' \
    "${PER[rproxy-observed]}" "${PER[rproxy]}" "$(awk -v a="${PER[rproxy-observed]}" -v b="${PER[rproxy]}" 'BEGIN {print a / b}')"
