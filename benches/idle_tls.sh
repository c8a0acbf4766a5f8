#!/usr/bin/env bash
# Memory for idle HTTPS keep-alive client connections: rproxy, nginx, HAProxy and Pingora, each one
# worker on a fresh process, terminating TLS (a self-signed ECDSA P-256 cert) in front of two
# nginx backends. `tcp_bench idle` opens the connections one after another (a full TLS 1.3
# handshake and one GET each; with --silent the handshake only) and holds them for 70 s
# (`idle_minute` in benches/common.sh): each proxy's resident memory is read before, every 5 s
# while they are open and after they closed, and its CPU time over the idle minute. Prints a
# Markdown table. Loopback only; everything started here is stopped by its pid.
#
#   bash benches/idle_tls.sh [N] [--silent]   (default 10,000, fewer when the descriptor limit
#                                              is lower)
#   RPROXY=PATH runs that rproxy binary instead of this tree's release build (a before/after).
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/common.sh
idle_args "$@"
install_missing nginx haproxy iproute2

"$BENCH" cert "$DIR"
# Built here, before anything starts: built in the background with the others (as it was),
# a rebuild outlasted wait_port and failed the run.
PINGORA_TLS=$(bash benches/compare/build_pingora.sh tls)
B1=$(port); B2=$(port); P_RPROXY=$(port); P_NGINX=$(port); P_NGINX_PLAIN=$(port); P_HAPROXY=$(port); P_HAPROXY_PLAIN=$(port)

mkdir -p "$DIR/backends" "$DIR/nginx"
backends_conf "$B1" "$B2" > "$DIR/backends/nginx.conf"
taskset -c 1 nginx -p "$DIR/backends" -c "$DIR/backends/nginx.conf" -g "daemon off; pid $DIR/backends/nginx.pid;" 2>"$DIR/backends.log" &
PIDS+=($!)

# Each proxy's plain listener is unused here: the shared configurations always have one.
rproxy_conf "$(port)" 1 "$B1" "$B2" off "[listeners.https]
listen = \"127.0.0.1:$P_RPROXY\"
upstream = \"app\"
tls = { cert = \"$DIR/cert.pem\", key = \"$DIR/key.pem\" }" > "$DIR/rproxy.toml"
taskset -c 0 "${RPROXY:-target/release/rproxy}" -c "$DIR/rproxy.toml" 2>"$DIR/rproxy.log" &
PIDS+=($!)
declare -A PID=([rproxy]=$!)

nginx_proxy_conf "$P_NGINX_PLAIN" "$B1" "$B2" "listen 127.0.0.1:$P_NGINX ssl; ssl_certificate $DIR/cert.pem; ssl_certificate_key $DIR/key.pem; ssl_protocols TLSv1.2 TLSv1.3;" > "$DIR/nginx/nginx.conf"
taskset -c 0 nginx -p "$DIR/nginx" -c "$DIR/nginx/nginx.conf" -g "daemon off; master_process off; pid $DIR/nginx/nginx.pid;" 2>"$DIR/nginx.log" &
PIDS+=($!)
PID[nginx]=$!

haproxy_conf "$P_HAPROXY_PLAIN" "$B1" "$B2" "bind 127.0.0.1:$P_HAPROXY ssl crt $DIR/both.pem" $((N + 50)) > "$DIR/haproxy.cfg"
taskset -c 0 haproxy -f "$DIR/haproxy.cfg" -db 2>"$DIR/haproxy.log" &
PIDS+=($!)
PID[haproxy]=$!

# Pingora's build with rustls (benches/compare/build_pingora.sh tls), its plain listener unused.
P_PINGORA=$(port)
taskset -c 0 "$PINGORA_TLS" --tls "$DIR/cert.pem" "$DIR/key.pem" "127.0.0.1:$P_PINGORA" "127.0.0.1:$(port)" "127.0.0.1:$B1" "127.0.0.1:$B2" 2>"$DIR/pingora.log" &
PIDS+=($!)
PID[pingora]=$!

declare -A PORT=([rproxy]=$P_RPROXY [nginx]=$P_NGINX [haproxy]=$P_HAPROXY [pingora]=$P_PINGORA)
for p in $B1 $B2 $P_RPROXY $P_NGINX $P_HAPROXY $P_PINGORA; do wait_port "$p"; done

declare -A RES
for s in rproxy nginx haproxy pingora; do
    RES[$s]=$(idle_minute "${PID[$s]}" "${PORT[$s]}" "$N" "$DIR/cert.pem" $SILENT)
    echo "$s: $N idle HTTPS connections${SILENT:+ (handshake only)}: ${RES[$s]} (KiB at 5 s, highest, after close; CPU ms; open at 60 s)" >&2
done

if [ -n "$SILENT" ]; then
    idle_minute_table "$N idle HTTPS client connections, handshake only" "$N" RES rproxy nginx haproxy pingora
else
    idle_minute_table "$N idle HTTPS keep-alive client connections" "$N" RES rproxy nginx haproxy pingora
fi
