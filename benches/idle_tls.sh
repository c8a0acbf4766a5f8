#!/usr/bin/env bash
# Memory for idle HTTPS keep-alive client connections: rproxy, nginx and HAProxy, each one
# worker on a fresh process, terminating TLS (a self-signed ECDSA P-256 cert) in front of two
# nginx backends. `tcp_bench idle` opens the connections one after another (a full TLS 1.3
# handshake and one GET each) and holds them; each proxy's resident memory is read before and
# one second after the last is open. Prints a Markdown table. Loopback only; everything started
# here is stopped by its pid.
#
#   bash benches/idle_tls.sh [N]      (default 10,000, fewer when the descriptor limit is lower)
set -euo pipefail
cd "$(dirname "$0")/.."
ulimit -n "$(ulimit -Hn)"
# HAProxy needs two descriptors per connection (see compare/run.sh).
MAX_N=$(( ($(ulimit -Hn) - 200) / 2 ))
N=${1:-10000}
[ "$N" -gt "$MAX_N" ] && N=$MAX_N

source benches/common.sh
install_missing nginx haproxy

"$BENCH" cert "$DIR"
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
taskset -c 0 target/release/rproxy -c "$DIR/rproxy.toml" 2>"$DIR/rproxy.log" &
PIDS+=($!)
declare -A PID=([rproxy]=$!)

nginx_proxy_conf "$P_NGINX_PLAIN" "$B1" "$B2" "listen 127.0.0.1:$P_NGINX ssl; ssl_certificate $DIR/cert.pem; ssl_certificate_key $DIR/key.pem;" > "$DIR/nginx/nginx.conf"
taskset -c 0 nginx -p "$DIR/nginx" -c "$DIR/nginx/nginx.conf" -g "daemon off; master_process off; pid $DIR/nginx/nginx.pid;" 2>"$DIR/nginx.log" &
PIDS+=($!)
PID[nginx]=$!

haproxy_conf "$P_HAPROXY_PLAIN" "$B1" "$B2" "bind 127.0.0.1:$P_HAPROXY ssl crt $DIR/both.pem" $((N + 50)) > "$DIR/haproxy.cfg"
taskset -c 0 haproxy -f "$DIR/haproxy.cfg" -db 2>"$DIR/haproxy.log" &
PIDS+=($!)
PID[haproxy]=$!

declare -A PORT=([rproxy]=$P_RPROXY [nginx]=$P_NGINX [haproxy]=$P_HAPROXY)
for p in $B1 $B2 $P_RPROXY $P_NGINX $P_HAPROXY; do wait_port "$p"; done

declare -A KIB KIB5
for s in rproxy nginx haproxy; do
    kib=$(idle_kib "${PID[$s]}" "${PORT[$s]}" "$N" "$DIR/cert.pem")
    KIB[$s]=${kib% *}
    KIB5[$s]=${kib#* }
    echo "$s: $N idle HTTPS connections cost ${KIB[$s]} KiB after 1 s, ${KIB5[$s]} KiB after 5 s" >&2
done

per() { awk -v k="$1" -v n="$N" 'BEGIN {printf "%.0f", k * 1024 / n}'; }
echo "| $N idle HTTPS keep-alive client connections | rproxy | nginx | haproxy |"
echo "|---|---|---|---|"
echo "| resident memory added, 1 s after the last opened | ${KIB[rproxy]} KiB | ${KIB[nginx]} KiB | ${KIB[haproxy]} KiB |"
echo "| bytes per connection, 1 s after | $(per "${KIB[rproxy]}") | $(per "${KIB[nginx]}") | $(per "${KIB[haproxy]}") |"
echo "| resident memory added, 5 s after | ${KIB5[rproxy]} KiB | ${KIB5[nginx]} KiB | ${KIB5[haproxy]} KiB |"
echo "| bytes per connection, 5 s after | $(per "${KIB5[rproxy]}") | $(per "${KIB5[nginx]}") | $(per "${KIB5[haproxy]}") |"
