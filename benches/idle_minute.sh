#!/usr/bin/env bash
# Idle plain keep-alive client connections over a minute: rproxy, nginx, HAProxy and
# hyper-floor, each one worker on a fresh process pinned to CPU 0, in front of two nginx
# backends on CPU 1. `idle_minute` (benches/common.sh) opens N connections (one GET each; with
# --silent none, as a browser's preconnect leaves them), holds them 70 s reading the proxy's
# resident memory every 5 s and its CPU time, closes them and reads the memory again. Prints a
# Markdown table. Loopback only; everything started here is stopped by its pid.
#
#   bash benches/idle_minute.sh [N] [--silent]   (default 10,000, fewer when the descriptor
#                                                 limit is lower)
#   RPROXY=PATH runs that rproxy binary instead of this tree's release build (a before/after).
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/common.sh
idle_args "$@"
install_missing nginx haproxy iproute2
start_backends backends 1

# start SYSTEM: starts it on a fresh port, sets P and SPID.
start() {
    P=$(port)
    mkdir -p "$DIR/$1"
    case $1 in
        rproxy)
            rproxy_conf "$P" 1 "$B1" "$B2" off > "$DIR/$1/rproxy.toml"
            taskset -c 0 "${RPROXY:-target/release/rproxy}" -c "$DIR/$1/rproxy.toml" 2>"$DIR/$1.log" & ;;
        nginx)
            nginx_proxy_conf "$P" "$B1" "$B2" > "$DIR/$1/nginx.conf"
            taskset -c 0 nginx -p "$DIR/$1" -c "$DIR/$1/nginx.conf" -g "daemon off; master_process off; pid $DIR/$1/nginx.pid;" 2>"$DIR/$1.log" & ;;
        haproxy)
            haproxy_conf "$P" "$B1" "$B2" "" $((N + 50)) > "$DIR/$1/haproxy.cfg"
            taskset -c 0 haproxy -f "$DIR/$1/haproxy.cfg" -db 2>"$DIR/$1.log" & ;;
        hyper-floor)
            taskset -c 0 target/release/examples/hyper_floor "127.0.0.1:$P" "127.0.0.1:$B1" "127.0.0.1:$B2" 2>"$DIR/$1.log" & ;;
    esac
    SPID=$!
    PIDS+=("$SPID")
    wait_port "$P"
}

SYSTEMS=(rproxy nginx haproxy hyper-floor)
declare -A RES
for s in "${SYSTEMS[@]}"; do
    start "$s"
    RES[$s]=$(idle_minute "$SPID" "$P" "$N" $SILENT)
    echo "$s: $N idle plain connections${SILENT:+ (silent)}: ${RES[$s]} (KiB at 5 s, highest, after close; CPU ms; open at 60 s)" >&2
    stop_pid "$SPID"
done

if [ -n "$SILENT" ]; then
    idle_minute_table "$N idle plain client connections that sent nothing" "$N" RES "${SYSTEMS[@]}"
else
    idle_minute_table "$N idle plain keep-alive client connections" "$N" RES "${SYSTEMS[@]}"
fi
