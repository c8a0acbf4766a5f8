#!/usr/bin/env bash
# Side by side: rproxy, nginx, HAProxy, hyper_floor (the least a hyper proxy does) and a small
# Pingora proxy (benches/compare/pingora/) proxying a 12-byte answer from two keep-alive nginx
# backends, one worker each, the proxy pinned to CPU 0 and the load generator plus the
# backends to CPU 1. Systems run interleaved in rounds so drift hits all alike; medians are
# reported, with the proxy's CPU time per request from /proc/PID/stat. Also measured: memory
# for idle keep-alive connections (first, on fresh processes), HTTP/2 clients (h2load),
# rproxy with metrics, an access log file and health checks on, rproxy writing X-Forwarded-For
# alone and no request id (rproxy-xff: the others' header work), rproxy with two workers,
# idle HTTPS connections (benches/idle_tls.sh), single-stream TCP throughput
# (benches/tcp_throughput.sh), and user-space instructions per request under valgrind
# (benches/instructions.sh) and the simulated cache misses behind them (benches/cache_misses.sh).
# Writes benches/RESULTS.md.
#
#   bash benches/compare/run.sh [SECONDS] [ROUNDS]      (default 10 s, 3 rounds)
#   IDLE_SILENT=1 bash benches/compare/run.sh ...       (adds idle connections that sent nothing)
#
# Everything listens on 127.0.0.1; every process started here is stopped by its pid.
set -euo pipefail
SECONDS_PER_RUN=${1:-10}
ROUNDS=${2:-3}
cd "$(dirname "$0")/../.."
ROOT=$PWD
# The idle-connection test wants 10,000 client connections; HAProxy reserves two descriptors
# per connection, so under a lower hard limit all systems get the same smaller number.
ulimit -n "$(ulimit -Hn)"
IDLE_N=$(( ($(ulimit -Hn) - 200) / 2 ))
[ "$IDLE_N" -gt 10000 ] && IDLE_N=10000

source benches/common.sh
install_missing nginx haproxy wrk nghttp2-client curl iproute2
PINGORA=$(bash "$ROOT/benches/compare/build_pingora.sh")
B1=$(port); B2=$(port); P_RPROXY=$(port); P_NGINX=$(port); P_HAPROXY=$(port)
P_OBSERVED=$(port); P_ADMIN=$(port); P_NGINX_H2=$(port); P_HAPROXY_H2=$(port); P_FLOOR=$(port)
P_PINGORA=$(port)

mkdir -p "$DIR/backends" "$DIR/nginx"
backends_conf "$B1" "$B2" > "$DIR/backends/nginx.conf"
taskset -c 1 nginx -p "$DIR/backends" -c "$DIR/backends/nginx.conf" -g "daemon off; pid $DIR/backends/nginx.pid;" 2>"$DIR/backends.log" &
PIDS+=($!)

rproxy_conf "$P_RPROXY" 1 "$B1" "$B2" off > "$DIR/rproxy.toml"
taskset -c 0 "$ROOT/target/release/rproxy" -c "$DIR/rproxy.toml" 2>"$DIR/rproxy.log" &
PIDS+=($!)
RPROXY_PID=$!

# The same with what production runs: metrics (an admin listener), an access log file and
# health checks. Its CPU per request against the plain one is the cost of observing.
rproxy_conf "$P_OBSERVED" 1 "$B1" "$B2" "$DIR/access.log" "[admin]
listen = \"127.0.0.1:$P_ADMIN\"" 'health_check = { interval = "1s", path = "/" }' > "$DIR/observed.toml"
taskset -c 0 "$ROOT/target/release/rproxy" -c "$DIR/observed.toml" 2>"$DIR/observed.log" &
PIDS+=($!)
OBSERVED_PID=$!

# The same doing the header work every other system here does: X-Forwarded-For alone, no
# request id (XFF_ONLY in common.sh). Its CPU against the plain one is what the other headers
# cost; against hyper-floor's, what rproxy costs for the same work.
P_XFF=$(port)
rproxy_conf "$P_XFF" 1 "$B1" "$B2" off "" "" "$XFF_ONLY" > "$DIR/rproxy-xff.toml"
taskset -c 0 "$ROOT/target/release/rproxy" -c "$DIR/rproxy-xff.toml" 2>"$DIR/rproxy-xff.log" &
PIDS+=($!)
XFF_PID=$!

nginx_proxy_conf "$P_NGINX" "$B1" "$B2" "listen 127.0.0.1:$P_NGINX_H2 http2;" > "$DIR/nginx/nginx.conf"
taskset -c 0 nginx -p "$DIR/nginx" -c "$DIR/nginx/nginx.conf" -g "daemon off; master_process off; pid $DIR/nginx/nginx.pid;" 2>"$DIR/nginx.log" &
PIDS+=($!)
NGINX_PID=$!

haproxy_conf "$P_HAPROXY" "$B1" "$B2" "bind 127.0.0.1:$P_HAPROXY_H2 proto h2" $((IDLE_N + 50)) > "$DIR/haproxy.cfg"
taskset -c 0 haproxy -f "$DIR/haproxy.cfg" -db 2>"$DIR/haproxy.log" &
PIDS+=($!)
HAPROXY_PID=$!

# The same rproxy on tokio's multi-threaded runtime (one worker thread beside the main one),
# the arrangement before thread per core (src/workers.rs): what that change bought.
P_WS=$(port)
rproxy_conf "$P_WS" 1 "$B1" "$B2" off > "$DIR/rproxy-ws.toml"
RPROXY_RUNTIME=work_stealing taskset -c 0 "$ROOT/target/release/rproxy" -c "$DIR/rproxy-ws.toml" 2>"$DIR/rproxy-ws.log" &
PIDS+=($!)
WS_PID=$!

# The floor under rproxy's costs: the same hyper server and client with nothing around them.
taskset -c 0 "$ROOT/target/release/examples/hyper_floor" "127.0.0.1:$P_FLOOR" "127.0.0.1:$B1" "127.0.0.1:$B2" 2>"$DIR/floor.log" &
PIDS+=($!)
FLOOR_PID=$!

# Pingora, the Rust proxy framework users would pick instead: round-robin, X-Forwarded-For,
# one worker thread, rproxy's release profile (benches/compare/pingora/src/main.rs).
taskset -c 0 "$PINGORA" "127.0.0.1:$P_PINGORA" "127.0.0.1:$B1" "127.0.0.1:$B2" 2>"$DIR/pingora.log" &
PIDS+=($!)
PINGORA_PID=$!

for p in $P_XFF $P_WS $P_FLOOR $B1 $B2 $P_RPROXY $P_NGINX $P_HAPROXY $P_OBSERVED $P_ADMIN $P_NGINX_H2 $P_HAPROXY_H2 $P_PINGORA; do wait_port "$p"; done

declare -A PORT=([rproxy]=$P_RPROXY [nginx]=$P_NGINX [haproxy]=$P_HAPROXY [rproxy-observed]=$P_OBSERVED [hyper-floor]=$P_FLOOR [pingora]=$P_PINGORA [rproxy-ws]=$P_WS [rproxy-xff]=$P_XFF)
declare -A H2_PORT=([rproxy]=$P_RPROXY [nginx]=$P_NGINX_H2 [haproxy]=$P_HAPROXY_H2 [pingora]=$P_PINGORA)
declare -A PID=([rproxy]=$RPROXY_PID [nginx]=$NGINX_PID [haproxy]=$HAPROXY_PID [rproxy-observed]=$OBSERVED_PID [hyper-floor]=$FLOOR_PID [pingora]=$PINGORA_PID [rproxy-ws]=$WS_PID [rproxy-xff]=$XFF_PID)
SYSTEMS=(rproxy nginx haproxy hyper-floor pingora)
H2_SYSTEMS=(rproxy nginx haproxy pingora) # hyper_floor serves HTTP/1 only

# Each proxy must really alternate between the two backends.
for s in "${SYSTEMS[@]}" rproxy-observed rproxy-ws rproxy-xff; do
    # A failed request shows as "curl-exit-N" (one run stopped here once with curl's exit 52,
    # an empty reply, and nothing said which system gave it).
    seen=$(for _ in 1 2 3 4; do
        head=$(curl -sS -D - -o /dev/null "http://127.0.0.1:${PORT[$s]}/" 2>&1) || { echo "curl-exit-$? ($head)"; continue; }
        echo "$head" | tr -d '\r' | awk -F': ' 'tolower($1)=="x-backend" {print $2}'
    done | sort -u | tr '\n' ' ')
    [ "$seen" = "b1 b2 " ] || { echo "$s does not alternate between the backends: $seen" >&2; show_logs; exit 1; }
done

# Memory for 10,000 idle keep-alive client connections over a minute (idle_minute in
# common.sh), measured first: after a load run an allocator may keep freed memory, which would
# hide part of what the connections cost.
declare -A IDLE
for s in "${SYSTEMS[@]}"; do
    IDLE[$s]=$(idle_minute "${PID[$s]}" "${PORT[$s]}" "$IDLE_N")
    echo "$s: $IDLE_N idle keep-alive connections: ${IDLE[$s]} (KiB at 5 s, highest, after close; CPU ms; open at 60 s)" >&2
done

# ticks PID: the process's CPU time so far, in clock ticks: user-space, then kernel.
ticks() { awk '{print $14, $15}' "/proc/$1/stat"; }
# per_request TICKS REQUESTS: microseconds per request.
per_request() { awk -v t="$1" -v hz="$HZ" -v r="$2" 'BEGIN {printf "%.2f", t / hz * 1e6 / r}'; }
HZ=$(getconf CLK_TCK)
# CPU steal: time the hypervisor gave this machine's CPUs to other guests. A run with much of
# it measured the neighbours as well; the report lists it per run.
steal_ticks() { awk '$1 == "cpu" {print $9}' /proc/stat; }
steal_pct() { awk -v t=$(($2 - $1)) -v hz="$HZ" -v s="$SECONDS_PER_RUN" -v n="$(nproc)" 'BEGIN {printf "%.1f", 100 * t / (hz * s * n)}'; }
to_us() { # wrk latency ("812.00us", "1.20ms", "2.00s") in microseconds
    awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) print n; else if (v ~ /ms$/) print n * 1000; else print n * 1000000 }'
}

RESULTS="$DIR/results.tsv"
for c in 1 50 200; do
    runs=("${SYSTEMS[@]}")
    [ "$c" = 50 ] && runs+=(rproxy-observed)
    [ "$c" != 1 ] && runs+=(rproxy-ws rproxy-xff)
    for round in $(seq "$ROUNDS"); do
        for s in "${runs[@]}"; do
            read -r user0 sys0 < <(ticks "${PID[$s]}")
            stolen=$(steal_ticks)
            out=$(taskset -c 1 wrk -t1 -c"$c" -d"${SECONDS_PER_RUN}s" --latency "http://127.0.0.1:${PORT[$s]}/")
            read -r user1 sys1 < <(ticks "${PID[$s]}")
            steal=$(steal_pct "$stolen" "$(steal_ticks)")
            requests=$(echo "$out" | awk '/requests in/ {print $1}')
            rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
            p50=$(to_us "$(echo "$out" | awk '$1 == "50%" {print $2}')")
            p99=$(to_us "$(echo "$out" | awk '$1 == "99%" {print $2}')")
            errors=$(echo "$out" | awk '/Non-2xx|Socket errors/ {print}' | tr '\n' ' ')
            cpu=$(per_request $((user1 + sys1 - user0 - sys0)) "$requests")
            user=$(per_request $((user1 - user0)) "$requests")
            kernel=$(per_request $((sys1 - sys0)) "$requests")
            printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$c" "$s" "$rps" "$p50" "$p99" "$cpu" "$errors" "$round" "$steal" "$user" "$kernel" >> "$RESULTS"
            echo "c=$c round $round $s: $rps req/s, p50 ${p50}us, p99 ${p99}us, ${cpu} us CPU/request ($user user, $kernel kernel), steal ${steal}% $errors" >&2
        done
    done
done

# HTTP/2 clients (h2c, prior knowledge): 50 connections with 10 streams each; the backends
# stay HTTP/1.1 keep-alive.
H2="$DIR/h2.tsv"
for round in $(seq "$ROUNDS"); do
    for s in "${H2_SYSTEMS[@]}"; do
        read -r user0 sys0 < <(ticks "${PID[$s]}")
        out=$(taskset -c 1 h2load -t1 -c50 -m10 -D "$SECONDS_PER_RUN" "http://127.0.0.1:${H2_PORT[$s]}/" 2>&1)
        read -r user1 sys1 < <(ticks "${PID[$s]}")
        done_n=$(echo "$out" | awk '/^requests:/ {print $6}')
        ok_n=$(echo "$out" | awk '/^requests:/ {print $8}')
        rps=$(echo "$out" | awk '/^finished in/ {print $4}')
        mean=$(to_us "$(echo "$out" | awk '/^time for request:/ {print $6}')")
        cpu=$(per_request $((user1 + sys1 - user0 - sys0)) "$done_n")
        printf '%s\t%s\t%s\t%s\t%s\n' "$s" "$rps" "$mean" "$cpu" "$ok_n" >> "$H2"
        echo "h2 round $round $s: $rps req/s, mean ${mean}us, ${cpu} us CPU/request, $done_n done, $ok_n succeeded" >&2
    done
done

# Two workers against one. This machine has two cores and the load generator and backends
# need CPU too, so nothing here is pinned (the backends get two workers of their own) and the
# figure shows what this machine allows, not what rproxy would do with the load generator
# elsewhere.
B3=$(port); B4=$(port)
mkdir -p "$DIR/backends2"
backends_conf "$B3" "$B4" 2 > "$DIR/backends2/nginx.conf"
nginx -p "$DIR/backends2" -c "$DIR/backends2/nginx.conf" -g "daemon off; pid $DIR/backends2/nginx.pid;" 2>"$DIR/backends2.log" &
PIDS+=($!)
wait_port "$B3"; wait_port "$B4"
# Each as thread per core (`tpc`, the default) and on tokio's work-stealing runtime (`ws`).
for w in 1 2; do
    for rt in tpc ws; do
        P_W=$(port)
        rproxy_conf "$P_W" "$w" "$B3" "$B4" off > "$DIR/workers$w$rt.toml"
        if [ "$rt" = ws ]; then
            RPROXY_RUNTIME=work_stealing "$ROOT/target/release/rproxy" -c "$DIR/workers$w$rt.toml" 2>"$DIR/workers$w$rt.log" &
        else
            "$ROOT/target/release/rproxy" -c "$DIR/workers$w$rt.toml" 2>"$DIR/workers$w$rt.log" &
        fi
        PIDS+=($!)
        PORT[workers$w$rt]=$P_W
        PID[workers$w$rt]=$!
        wait_port "$P_W"
    done
    # Pingora with `threads = 1` and `threads = 2` (PINGORA_THREADS), its default work-stealing
    # runtime, as in the tables above.
    P_W=$(port)
    PINGORA_THREADS=$w "$PINGORA" "127.0.0.1:$P_W" "127.0.0.1:$B3" "127.0.0.1:$B4" 2>"$DIR/workers${w}pingora.log" &
    PIDS+=($!)
    PORT[workers${w}pingora]=$P_W
    PID[workers${w}pingora]=$!
    wait_port "$P_W"
done
WORKERS="$DIR/workers.tsv"
for round in $(seq "$ROUNDS"); do
    for w in 1 2; do
        for rt in tpc ws pingora; do
            read -r user0 sys0 < <(ticks "${PID[workers$w$rt]}")
            out=$(wrk -t2 -c200 -d"${SECONDS_PER_RUN}s" "http://127.0.0.1:${PORT[workers$w$rt]}/")
            read -r user1 sys1 < <(ticks "${PID[workers$w$rt]}")
            requests=$(echo "$out" | awk '/requests in/ {print $1}')
            rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
            cpu=$(per_request $((user1 + sys1 - user0 - sys0)) "$requests")
            printf '%s\t%s\t%s\t%s\n' "$w" "$rps" "$rt" "$cpu" >> "$WORKERS"
            echo "workers=$w $rt round $round: $rps req/s, $cpu us CPU/request" >&2
        done
    done
done

# Idle HTTPS connections (its own script, its own fresh processes).
bash "$ROOT/benches/idle_tls.sh" "$IDLE_N" > "$DIR/idle_tls.txt"
# Idle connections that sent nothing, plain and HTTPS (the same scripts), with IDLE_SILENT=1:
# another 13 minutes or so.
if [ -n "${IDLE_SILENT:-}" ]; then
    bash "$ROOT/benches/idle_minute.sh" "$IDLE_N" --silent > "$DIR/idle_silent.txt"
    bash "$ROOT/benches/idle_tls.sh" "$IDLE_N" --silent > "$DIR/idle_tls_silent.txt"
fi

# HTTPS termination: full handshakes and keep-alive HTTPS (its own script, its own processes).
bash "$ROOT/benches/https.sh" "$SECONDS_PER_RUN" "$ROUNDS" > "$DIR/https.txt"

# One TCP stream through the layer-4 mode of each (its own script, its own processes).
bash "$ROOT/benches/tcp_throughput.sh" 1073741824 3 > "$DIR/tcp.txt"

# System calls, switches and wake-ups per request with perf tracepoints (its own script, its
# own processes).
bash "$ROOT/benches/census.sh" 20000 2 > "$DIR/census.txt"

# Instructions per request under valgrind (its own script, its own processes).
bash "$ROOT/benches/instructions.sh" 20000 > "$DIR/instructions.txt"

# How well those instructions run: simulated cache misses per request (its own script).
bash "$ROOT/benches/cache_misses.sh" 20000 > "$DIR/cache.txt"

# Named before the report is written (writing it makes the tree dirty).
VERSION=$(git -C "$ROOT" describe --always --dirty)
{
    echo "# rproxy against nginx and HAProxy"
    echo
    echo "Produced by \`bash benches/compare/run.sh $SECONDS_PER_RUN $ROUNDS\` on $(date -u +%Y-%m-%d)."
    echo "Machine: $(nproc) CPUs, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)."
    echo "Versions: rproxy $VERSION, $(nginx -v 2>&1), $(haproxy -v | head -1), pingora $(awk '/^name = "pingora"$/ {getline; gsub(/"/, "", $3); print $3}' "$ROOT/benches/compare/pingora/Cargo.lock"), $(wrk -v 2>&1 | head -1 | awk '{print $1, $2}')."
    echo
    echo "Each proxy has one worker pinned to CPU 0; wrk (-t1, ${SECONDS_PER_RUN}s per run) and the two nginx"
    echo "backends (12-byte answer, keep-alive) share CPU 1. Systems ran interleaved, $ROUNDS rounds; medians."
    echo "CPU per request is the proxy's utime+stime over a run divided by the requests it served;"
    echo "the user and kernel columns are its two parts (each a median of its own, so they need not add"
    echo "up exactly): user is the proxy's own code and libraries, kernel the system calls and the"
    echo "loopback TCP work done on its behalf."
    echo "Upstream keep-alive holds enough idle connections for 200 requests in flight everywhere"
    echo "(nginx \`keepalive 512\`, rproxy \`keepalive_connections = 256\` per backend, HAProxy"
    echo "\`http-reuse always\`, hyper-floor keeps all, Pingora \`upstream_keepalive_pool_size = 512\`); with the defaults (32) a proxy opens a new backend connection for"
    echo "about one request in eight at 200 connections, and measures connection set-up instead."
    echo
    echo "| connections | system | requests/s | p50 µs | p99 µs | CPU µs/request | user µs | kernel µs | CPU vs nginx |"
    echo "|---|---|---|---|---|---|---|---|---|"
    for c in 1 50 200; do
        ng_cpu=$(awk -F'\t' -v c="$c" '$1 == c && $2 == "nginx" {print $6}' "$RESULTS" | median)
        for s in "${SYSTEMS[@]}"; do
            col() { awk -F'\t' -v c="$c" -v s="$s" -v k="$1" '$1 == c && $2 == s {print $k}' "$RESULTS" | median; }
            cpu=$(col 6)
            printf '| %s | %s | %.0f | %.0f | %.0f | %.2f | %.2f | %.2f | %.2fx |\n' "$c" "$s" "$(col 3)" "$(col 4)" "$(col 5)" "$cpu" "$(col 10)" "$(col 11)" "$(awk -v a="$cpu" -v b="$ng_cpu" 'BEGIN {print a / b}')"
        done
    done
    echo
    echo "CPU steal during these runs (the hypervisor running other guests on this machine's CPUs):"
    echo "median $(cut -f9 "$RESULTS" | median)%, highest $(cut -f9 "$RESULTS" | sort -n | tail -1)%. Every run:"
    echo
    echo "<details><summary>$(wc -l < "$RESULTS") runs</summary>"
    echo
    echo "| connections | round | system | requests/s | CPU µs/request | steal % |"
    echo "|---|---|---|---|---|---|"
    awk -F'\t' '{printf "| %s | %s | %s | %.0f | %s | %s |\n", $1, $8, $2, $3, $6, $9}' "$RESULTS"
    echo
    echo "</details>"
    echo
    echo "hyper-floor is \`examples/hyper_floor.rs\`: hyper's HTTP/1 server and client, round-robin and"
    echo "X-Forwarded-For, nothing else (no timeouts, health, retries, limits or header hygiene). rproxy is"
    echo "built on the same hyper, so this is the floor under its costs."
    echo
    echo "pingora is \`benches/compare/pingora/\` (built by \`benches/compare/build_pingora.sh\`): Pingora's"
    echo "\`ProxyHttp\` with a \`LoadBalancer<RoundRobin>\` over the same two backends, X-Forwarded-For appended,"
    echo "\`threads = 1\` (work stealing on, Pingora's default), its own upstream pool, no health checks, the"
    echo "system allocator (Pingora's default), built with rproxy's release profile (\`lto = \"fat\"\`,"
    echo "\`codegen-units = 1\`). It serves HTTP/1 and h2c with prior knowledge on one port, as rproxy does."
    echo
    idle_minute_table "$IDLE_N idle keep-alive client connections" "$IDLE_N" IDLE "${SYSTEMS[@]}"
    echo
    echo "Idle connections were opened (one GET each) before any load run, on fresh processes, and"
    echo "held for 70 s: resident memory was read every 5 s (the highest reading from 5 s to 60 s is"
    echo "the minute's), CPU time (utime+stime) over the first 60 idle seconds, then every connection"
    echo "closed and memory read again 15 s later. A server may close idle connections before 60 s"
    echo "(its keep-alive timeout: HAProxy's here is its 60 s client timeout); the row of those still"
    echo "open says so."
    echo
    echo "### Idle HTTPS connections"
    echo
    echo "\`bash benches/idle_tls.sh $IDLE_N\`: the same, over TLS 1.3 (a self-signed ECDSA P-256"
    echo "certificate, a full handshake per connection), each proxy on a fresh process of its own:"
    echo
    cat "$DIR/idle_tls.txt"
    echo
    cat "$DIR/https.txt"
    if [ -n "${IDLE_SILENT:-}" ]; then
        echo
        echo "### Idle connections that sent nothing"
        echo
        echo "\`bash benches/idle_minute.sh $IDLE_N --silent\` and \`bash benches/idle_tls.sh $IDLE_N --silent\`:"
        echo "the same minute for connections that sent no request (HTTPS: the handshake only), as a"
        echo "browser's preconnect leaves them, each system on a fresh process. Each closes them after"
        echo "its request-head timeout (rproxy's \`header_timeout\`, 10 s by default; nginx's"
        echo "\`client_header_timeout\` and HAProxy's client timeout, 60 s here; hyper-floor never):"
        echo
        cat "$DIR/idle_silent.txt"
        echo
        cat "$DIR/idle_tls_silent.txt"
    fi
    echo
    echo "### Observing costs: metrics, an access log file and health checks"
    echo
    echo "\"rproxy-observed\" is the same rproxy with an admin listener (metrics recorded), the access"
    echo "log written to a file and health checks every second, at 50 connections:"
    echo
    plain=$(awk -F'\t' '$1 == 50 && $2 == "rproxy" {print $6}' "$RESULTS" | median)
    observed=$(awk -F'\t' '$1 == 50 && $2 == "rproxy-observed" {print $6}' "$RESULTS" | median)
    echo "| rproxy | CPU µs/request | requests/s |"
    echo "|---|---|---|"
    echo "| plain | $plain | $(awk -F'\t' '$1 == 50 && $2 == "rproxy" {print $3}' "$RESULTS" | median) |"
    echo "| observed | $observed | $(awk -F'\t' '$1 == 50 && $2 == "rproxy-observed" {print $3}' "$RESULTS" | median) |"
    echo "| observed / plain | $(awk -v a="$observed" -v b="$plain" 'BEGIN {printf "%.2fx", a / b}') | |"
    echo
    echo "### The same header work as the others"
    echo
    echo "\"rproxy-xff\" is the same rproxy writing X-Forwarded-For alone and no request id"
    echo "(\`forwarded_headers = [\"x-forwarded-for\"]\`, \`request_id = false\`): the header work nginx,"
    echo "HAProxy, hyper-floor and Pingora do here. rproxy's default also writes X-Real-IP,"
    echo "X-Forwarded-Proto, X-Forwarded-Host and X-Request-Id."
    echo
    echo "| connections | rproxy | CPU µs/request | user µs | kernel µs | vs hyper-floor | vs HAProxy |"
    echo "|---|---|---|---|---|---|---|"
    for c in 50 200; do
        floor=$(awk -F'\t' -v c="$c" '$1 == c && $2 == "hyper-floor" {print $6}' "$RESULTS" | median)
        hap=$(awk -F'\t' -v c="$c" '$1 == c && $2 == "haproxy" {print $6}' "$RESULTS" | median)
        for s in rproxy rproxy-xff; do
            col() { awk -F'\t' -v c="$c" -v s="$s" -v k="$1" '$1 == c && $2 == s {print $k}' "$RESULTS" | median; }
            cpu=$(col 6)
            printf '| %s | %s | %.2f | %.2f | %.2f | %.2fx | %.2fx |\n' "$c" "$([ "$s" = rproxy ] && echo "default headers" || echo "X-Forwarded-For alone")" \
                "$cpu" "$(col 10)" "$(col 11)" "$(awk -v a="$cpu" -v b="$floor" 'BEGIN {print a / b}')" "$(awk -v a="$cpu" -v b="$hap" 'BEGIN {print a / b}')"
        done
    done
    echo
    echo "### HTTP/2 clients"
    echo
    echo "h2load -t1 -c50 -m10 (500 streams in flight, cleartext prior knowledge), ${SECONDS_PER_RUN}s per run,"
    echo "$ROUNDS interleaved rounds, medians; backends stay HTTP/1.1. $(h2load --version 2>&1 | head -1)."
    echo
    echo "| system | requests/s | mean latency µs | CPU µs/request | CPU vs nginx |"
    echo "|---|---|---|---|---|"
    ng_h2=$(awk -F'\t' '$1 == "nginx" {print $4}' "$H2" | median)
    for s in "${H2_SYSTEMS[@]}"; do
        col() { awk -F'\t' -v s="$s" -v k="$1" '$1 == s {print $k}' "$H2" | median; }
        cpu=$(col 4)
        printf '| %s | %.0f | %.0f | %.2f | %.2fx |\n' "$s" "$(col 2)" "$(col 3)" "$cpu" "$(awk -v a="$cpu" -v b="$ng_h2" 'BEGIN {print a / b}')"
    done
    echo
    echo "### Thread per core"
    echo
    echo "rproxy's workers are threads with a single-threaded tokio runtime each (\`src/workers.rs\`);"
    echo "\"rproxy-ws\" is the same binary on tokio's multi-threaded, work-stealing runtime"
    echo "(\`RPROXY_RUNTIME=work_stealing\`, the arrangement before), both with \`workers = 1\`, pinned as above:"
    echo
    echo "| connections | runtime | requests/s | CPU µs/request | user µs | kernel µs |"
    echo "|---|---|---|---|---|---|"
    for c in 50 200; do
        for s in rproxy rproxy-ws; do
            col() { awk -F'\t' -v c="$c" -v s="$s" -v k="$1" '$1 == c && $2 == s {print $k}' "$RESULTS" | median; }
            printf '| %s | %s | %.0f | %.2f | %.2f | %.2f |\n' "$c" "$([ "$s" = rproxy ] && echo "thread per core" || echo "work-stealing")" "$(col 3)" "$(col 6)" "$(col 10)" "$(col 11)"
        done
    done
    echo
    echo "### Two workers"
    echo
    echo "rproxy with \`workers = 1\` and \`workers = 2\`, each thread per core (tpc) and work-stealing (ws),"
    echo "and Pingora with \`threads = 1\` and \`threads = 2\` (its default work-stealing runtime),"
    echo "nothing pinned, wrk -t2 -c200 and two-worker nginx backends on the same two cores as the"
    echo "proxy (medians of $ROUNDS). With the load generator and backends on the same two cores this"
    echo "measures what this machine allows, not scaling with a core to spare."
    echo
    echo "| workers | runtime | requests/s | CPU µs/request |"
    echo "|---|---|---|---|"
    for w in 1 2; do
        for rt in tpc ws pingora; do
            rps=$(awk -F'\t' -v w="$w" -v r="$rt" '$1 == w && $3 == r {print $2}' "$WORKERS" | median)
            cpu=$(awk -F'\t' -v w="$w" -v r="$rt" '$1 == w && $3 == r {print $4}' "$WORKERS" | median)
            printf '| %s | %s | %.0f | %.2f |\n' "$w" "$rt" "$rps" "$cpu"
        done
    done
    echo
    echo "### One TCP stream (layer 4)"
    echo
    echo "\`bash benches/tcp_throughput.sh 1073741824 3\` (\"pingora tcp\": Pingora has no TCP proxy of its own; a"
    echo "\`ServerApp\` pass-through as in its examples, one thread, \`benches/compare/pingora/src/tcp.rs\`):"
    echo
    echo '```'
    cat "$DIR/tcp.txt"
    echo '```'
    echo
    echo "### System calls, switches and wake-ups per request"
    echo
    cat "$DIR/census.txt"
    echo
    echo "### Instructions per request"
    echo
    echo "\`bash benches/instructions.sh 20000\`: user-space instructions per request counted by valgrind"
    echo "(cachegrind), h2load --h1 -c50, one worker each. Repeatable to within 1% on this shared machine,"
    echo "where CPU time is not; it leaves out the kernel's share and cache misses."
    echo
    cat "$DIR/instructions.txt"
    echo
    echo "### Cache misses per request"
    echo
    echo "\`bash benches/cache_misses.sh 20000\`: the same runs under cachegrind's cache simulation"
    echo "(32 KiB 8-way L1 instruction and data caches, one core's L2 as the last level, no prefetcher),"
    echo "per request: what this machine, without hardware counters, can show of how well each proxy's"
    echo "instructions run. L2 misses grow with the connections in flight, whose state the L2 stops"
    echo "holding: they are what CPU time at 200 connections has above the instruction count."
    echo
    cat "$DIR/cache.txt"

} > "$ROOT/benches/RESULTS.md"
cat "$ROOT/benches/RESULTS.md"
