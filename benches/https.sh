#!/usr/bin/env bash
# HTTPS termination: rproxy, nginx and HAProxy, each one worker pinned to CPU 0, terminating
# TLS 1.3 with one self-signed ECDSA P-256 certificate (`tcp_bench cert`) in front of two
# keep-alive nginx backends; the clients (s_time, wrk) and the backends share CPU 1
# (start_tls_proxies in common.sh). Three loads, systems interleaved in rounds, medians:
#   - full handshakes: CLIENTS (16) `openssl s_time -new -www PATH` side by side, each making one
#     new connection after another with a full TLS 1.3 handshake and one HTTP/1.0 GET. Not wrk
#     or h2load: both keep the session of a closed connection and resume it on the next (216 of
#     220 and 390 of 400 handshakes resumed against an nginx logging `$ssl_session_reused`).
#     s_time -new never offers one: checked here first against such an nginx;
#   - the same over plain HTTP (wrk -c16, `Connection: close`), a new TCP connection per
#     request: what a connection costs without TLS, so the difference is the handshake's share;
#   - keep-alive HTTPS: wrk -c50, the connections stay open, CPU per request.
# Then user-space instructions per full handshake under valgrind (cachegrind), which a busy
# machine does not disturb: a fresh process of each serves s_time for 4 s and for 12 s, and
# the difference divided by the difference in handshakes leaves out start-up and shutdown.
# CPU is the proxy's utime+stime from /proc/PID/stat over a run. Prints a Markdown section.
# Loopback only; everything started here is stopped by its pid.
#
#   bash benches/https.sh [SECONDS] [ROUNDS]      (default 10 s, 3 rounds)
#   RPROXY=/abs/path/rproxy bash benches/https.sh   (another rproxy build, e.g. to compare)
set -euo pipefail
SECONDS_PER_RUN=${1:-10}
ROUNDS=${2:-3}
cd "$(dirname "$0")/.."

source benches/common.sh
install_missing nginx haproxy wrk openssl curl valgrind
# Pingora too, in its build with rustls (its own release build, cached in target/).
PINGORA_TLS=$(bash benches/compare/build_pingora.sh tls)
TLS_SYSTEMS+=(pingora)
start_tls_proxies 4096 "${RPROXY:-}"
SYSTEMS=("${TLS_SYSTEMS[@]}")
HZ=$(getconf CLK_TCK)
CLIENTS=16
# s_time sends `GET PATH HTTP/1.0` and a blank line. rproxy answers a request without Host with
# 400, so the path carries one: the request becomes `GET / HTTP/1.0`, `Host: localhost` and a
# header `X-Pad: HTTP/1.0`.
S_TIME_PATH=$'/ HTTP/1.0\r\nHost: localhost\r\nX-Pad:'

# s_time_run PORT SECONDS: CLIENTS `openssl s_time -new` on CPU 1 for SECONDS against PORT;
# sets HANDSHAKES (completed, summed), S_TIME_WALL (seconds, all of them) and S_TIME_ERRORS
# (error lines). Not in a subshell, so the exit trap knows the processes.
s_time_run() {
    local pids=() i pid start
    rm -f "$DIR"/s_time.*
    start=$(date +%s.%N)
    for i in $(seq "$CLIENTS"); do
        taskset -c 1 openssl s_time -connect "127.0.0.1:$1" -new -www "$S_TIME_PATH" -time "$2" > "$DIR/s_time.$i" 2>&1 &
        pids+=($!)
    done
    PIDS+=("${pids[@]}")
    for pid in "${pids[@]}"; do
        wait "$pid" || true
        forget_pid "$pid"
    done
    S_TIME_WALL=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN {print b - a}')
    HANDSHAKES=$(awk '/connections in .* real seconds/ {n += $1} END {print n + 0}' "$DIR"/s_time.*)
    S_TIME_ERRORS=$(cat "$DIR"/s_time.* | grep -ci 'error' || true)
}

# The client side of the handshake is OpenSSL's s_time: it must not resume. A session is
# resumed only when the client offers one, so one short run against an nginx that logs
# `$ssl_session_reused` ("r" when resumed) and the protocol and group of every connection
# shows what s_time sends to all three.
CHECK=$(port)
mkdir -p "$DIR/check"
cat > "$DIR/check/nginx.conf" <<CONF
worker_processes 1;
error_log stderr;
events { worker_connections 1024; }
http {
    log_format tls '\$ssl_session_reused \$ssl_protocol \$ssl_curve \$ssl_cipher';
    server {
        listen 127.0.0.1:$CHECK ssl;
        ssl_certificate $DIR/cert.pem;
        ssl_certificate_key $DIR/key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        access_log $DIR/check/tls.log tls;
        location / { return 200 "hello world\n"; }
    }
}
CONF
taskset -c 0 nginx -p "$DIR/check" -c "$DIR/check/nginx.conf" -g "daemon off; master_process off; pid $DIR/check/nginx.pid;" 2>"$DIR/check.log" &
PIDS+=($!)
CHECK_PID=$!
wait_port "$CHECK"
s_time_run "$CHECK" 1
stop_pid "$CHECK_PID"
CHECKED=$(wc -l < "$DIR/check/tls.log")
RESUMED=$(awk '$1 == "r"' "$DIR/check/tls.log" | wc -l)
CHECK_KINDS=$(awk '{print $2, $3, $4}' "$DIR/check/tls.log" | sort | uniq -c | awk '{printf "%s%s × %s %s %s", (NR > 1 ? ", " : ""), $1, $2, $3, $4}')
echo "resumption check: $CHECKED handshakes from s_time, $RESUMED resumed ($CHECK_KINDS)" >&2
[ "$CHECKED" -gt 0 ] && [ "$RESUMED" = 0 ] || { echo "s_time resumed sessions or made none: the handshake figures would not be full handshakes" >&2; exit 1; }

# What each proxy negotiates with OpenSSL's client; all must say TLS 1.3. And how many session
# tickets each sends after a handshake (tickets cost the server some work even when, as here,
# the client never uses them): read by a client that stays half a second after its request.
declare -A SESSION TICKETS
for s in "${SYSTEMS[@]}"; do
    SESSION[$s]=$(tls_session "$s")
    TICKETS[$s]=$( (printf 'GET %s HTTP/1.0\r\n\r\n' "$S_TIME_PATH"; sleep 0.5) | openssl s_client -msg -connect "127.0.0.1:${TLS_PORT[$s]}" 2>&1 | grep -c '^<<< .*NewSessionTicket' || true)
    echo "${SESSION[$s]} ${TICKETS[$s]} tickets |" >&2
    case ${SESSION[$s]} in "| $s | TLSv1.3 |"*) ;; *) echo "$s does not negotiate TLS 1.3" >&2; show_logs; exit 1 ;; esac
    code=$(curl -sk -o /dev/null -w '%{http_code}' "https://127.0.0.1:${TLS_PORT[$s]}/")
    # s_time's request must be answered too.
    status=$(printf 'GET %s HTTP/1.0\r\n\r\n' "$S_TIME_PATH" | openssl s_client -quiet -connect "127.0.0.1:${TLS_PORT[$s]}" 2>/dev/null | head -1 | tr -d '\r' || true)
    [ "$code" = 200 ] && [[ $status == HTTP/1.?" 200"* ]] || { echo "$s over https answered $code, and to HTTP/1.0: $status" >&2; show_logs; exit 1; }
done

CERT_KEY=$(openssl x509 -in "$DIR/cert.pem" -noout -text | awk -F': *' '/Public Key Algorithm/ {a = $2} /NIST CURVE/ {c = $2} END {print a, c}')

# handshake_instructions SYSTEM SECONDS: sets IR, the user-space instructions of a fresh
# SYSTEM under cachegrind that served SECONDS of s_time_run, and N, the handshakes it made.
handshake_instructions() {
    local tls pid
    tls=$(port)
    tls_config "$1" "$tls" "$(port)" "" "${RPROXY:-}"
    taskset -c 0 valgrind --tool=cachegrind --cache-sim=no --cachegrind-out-file=/dev/null "${CMD[@]}" >/dev/null 2>"$DIR/vg-$tls.log" &
    pid=$!
    PIDS+=("$pid")
    for _ in $(seq 600); do curl -sk -o /dev/null "https://127.0.0.1:$tls/" && break; sleep 0.1; done
    s_time_run "$tls" "$2"
    # nginx finishes (and valgrind reports) on SIGQUIT, the others on SIGTERM.
    if [ "$1" = nginx ]; then kill -QUIT "$pid"; else kill -TERM "$pid"; fi
    wait "$pid" || true
    forget_pid "$pid"
    IR=$(awk '/I *refs/ {gsub(",", "", $NF); print $NF}' "$DIR/vg-$tls.log")
    N=$HANDSHAKES
}

# ticks PID: the process's CPU time so far, in clock ticks: user-space, then kernel.
ticks() { awk '{print $14, $15}' "/proc/$1/stat"; }
# per_event TICKS EVENTS: microseconds per event.
per_event() { awk -v t="$1" -v hz="$HZ" -v r="$2" 'BEGIN {printf "%.2f", t / hz * 1e6 / r}'; }
steal_ticks() { awk '$1 == "cpu" {print $9}' /proc/stat; }
steal_pct() { awk -v t=$(($2 - $1)) -v hz="$HZ" -v s="$SECONDS_PER_RUN" -v n="$(nproc)" 'BEGIN {printf "%.1f", 100 * t / (hz * s * n)}'; }
# cpu_times N: busy and total ticks of CPU N so far (busy: all but idle and iowait).
cpu_times() { awk -v c="cpu$1" '$1 == c {t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t}' /proc/stat; }
busy_pct() { awk -v b=$(($3 - $1)) -v t=$(($4 - $2)) 'BEGIN {printf "%.0f", t ? 100 * b / t : 0}'; }

RESULTS="$DIR/https.tsv"
for round in $(seq "$ROUNDS"); do
    for mode in handshake close keepalive; do
        for s in "${SYSTEMS[@]}"; do
            read -r user0 sys0 < <(ticks "${PID[$s]}")
            read -r b0 t0 < <(cpu_times 0)
            read -r b1 t1 < <(cpu_times 1)
            stolen=$(steal_ticks)
            case $mode in
                handshake) s_time_run "${TLS_PORT[$s]}" "$SECONDS_PER_RUN" ;;
                close) out=$(taskset -c 1 wrk -t1 -c"$CLIENTS" -d"${SECONDS_PER_RUN}s" -H 'Connection: close' "http://127.0.0.1:${PLAIN_PORT[$s]}/") ;;
                keepalive) out=$(taskset -c 1 wrk -t1 -c50 -d"${SECONDS_PER_RUN}s" "https://127.0.0.1:${TLS_PORT[$s]}/") ;;
            esac
            read -r user1 sys1 < <(ticks "${PID[$s]}")
            read -r b0_ t0_ < <(cpu_times 0)
            read -r b1_ t1_ < <(cpu_times 1)
            steal=$(steal_pct "$stolen" "$(steal_ticks)")
            if [ "$mode" = handshake ]; then
                requests=$HANDSHAKES
                rps=$(awk -v n="$HANDSHAKES" -v t="$S_TIME_WALL" 'BEGIN {printf "%.1f", n / t}')
                errors=""
                [ "$S_TIME_ERRORS" = 0 ] || errors="s_time: $S_TIME_ERRORS error lines"
            else
                requests=$(echo "$out" | awk '/requests in/ {print $1}')
                rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
                errors=$(echo "$out" | awk '/Non-2xx|Socket errors/ {print}' | tr '\n' ' ')
            fi
            [ "${requests:-0}" -gt 0 ] || { echo "$mode round $round $s: no request completed ($errors)" >&2; show_logs; exit 1; }
            cpu=$(per_event $((user1 + sys1 - user0 - sys0)) "$requests")
            user=$(per_event $((user1 - user0)) "$requests")
            kernel=$(per_event $((sys1 - sys0)) "$requests")
            cpu0=$(busy_pct "$b0" "$t0" "$b0_" "$t0_")
            cpu1=$(busy_pct "$b1" "$t1" "$b1_" "$t1_")
            printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$mode" "$s" "$round" "$rps" "$cpu" "$user" "$kernel" "$steal" "$cpu0" "$cpu1" "$errors" >> "$RESULTS"
            echo "$mode round $round $s: $rps/s, $cpu us CPU each ($user user, $kernel kernel), CPU 0 ${cpu0}% CPU 1 ${cpu1}% busy, steal ${steal}% $errors" >&2
        done
    done
done

declare -A PER_HANDSHAKE
for s in "${SYSTEMS[@]}"; do
    handshake_instructions "$s" 4
    ir_small=$IR n_small=$N
    handshake_instructions "$s" 12
    [ "$N" -gt "$n_small" ] || { echo "$s under valgrind: no more handshakes in 12 s ($N) than in 4 s ($n_small)" >&2; exit 1; }
    PER_HANDSHAKE[$s]=$(( (IR - ir_small) / (N - n_small) ))
    echo "$s under cachegrind: $ir_small instructions for $n_small handshakes, $IR for $N: ${PER_HANDSHAKE[$s]} a handshake" >&2
done

# col MODE SYSTEM FIELD: the median of one column.
col() { awk -F'\t' -v m="$1" -v s="$2" -v k="$3" '$1 == m && $2 == s {print $k}' "$RESULTS" | median; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2fx", a / b}'; }
RUSTLS=$(awk '/^name = "rustls"$/ {getline; gsub(/"/, "", $3); print $3}' Cargo.lock)
RING=$(awk '/^name = "ring"$/ {getline; gsub(/"/, "", $3); print $3}' Cargo.lock)

echo "### HTTPS termination"
echo
echo "\`bash benches/https.sh $SECONDS_PER_RUN $ROUNDS\`: rproxy (rustls $RUSTLS, ring $RING), $(nginx -v 2>&1 | sed 's/^nginx version: //')"
echo "HAProxy $(haproxy -v | awk 'NR == 1 {print $3}') ($(openssl version | awk '{print $1, $2}')) and Pingora 0.9 (rustls, ring), each one worker pinned to CPU 0, terminating"
echo "TLS with the same self-signed ECDSA P-256 certificate in front of the two nginx backends; the"
echo "clients and the backends on CPU 1. ${SECONDS_PER_RUN}s a run, systems interleaved, $ROUNDS rounds, medians. CPU is the"
echo "proxy's utime+stime over a run from /proc/PID/stat divided by the requests it served."
echo "The certificate's key: $CERT_KEY. What OpenSSL's client (wrk's and s_time's library, its default"
echo "groups: a key share for X25519 only) negotiates with each:"
echo
echo "| system | protocol | cipher | key exchange | certificate signature | session tickets sent |"
echo "|---|---|---|---|---|---|"
for s in "${SYSTEMS[@]}"; do echo "${SESSION[$s]} ${TICKETS[$s]} |"; done
echo
echo "**Full handshakes.** $CLIENTS \`openssl s_time -new\` side by side, each opening one connection"
echo "after another, a full TLS 1.3 handshake and one HTTP/1.0 GET on each. Not wrk or h2load: both"
echo "resume the session of their previous connection (against an nginx logging \`\$ssl_session_reused\`,"
echo "216 of 220 and 390 of 400 handshakes were resumptions). s_time offers no session to resume (a 1 s"
echo "check against that nginx: $RESUMED of $CHECKED resumed; $CHECK_KINDS). Every server sends"
echo "its usual session tickets (above), which this client never uses. Handshakes per second per core is"
echo "1e6 / the proxy's CPU µs per handshake: what one core would do were the proxy the bottleneck."
echo "Here it is not: CPU 1 carries the client's side of every handshake (its key exchange and the"
echo "ECDSA verify, dearer than the server's signature) and the backends, and is the busier CPU, so"
echo "the achieved rate measures the client as much as the proxy. \"Plain\" is wrk -c$CLIENTS over HTTP with"
echo "\`Connection: close\` (a new TCP connection per request): the handshake's own share is the difference."
echo "\"CPU 0 / CPU 1 busy\" is how busy each CPU was over the run (/proc/stat): CPU 0 runs only the proxy,"
echo "CPU 1 the clients and the backends (on a shared machine, other guests' work shows in both)."
echo
echo "| system | handshakes/s | CPU µs/handshake | user µs | kernel µs | handshakes/s per core | CPU vs nginx | plain: CPU µs/connection | TLS share µs | CPU 0 / CPU 1 busy |"
echo "|---|---|---|---|---|---|---|---|---|---|"
ng_hs=$(col handshake nginx 5)
for s in "${SYSTEMS[@]}"; do
    cpu=$(col handshake "$s" 5)
    plain=$(col close "$s" 5)
    printf '| %s | %.0f | %.2f | %.2f | %.2f | %.0f | %s | %.2f | %.2f | %s%% / %s%% |\n' "$s" "$(col handshake "$s" 4)" "$cpu" \
        "$(col handshake "$s" 6)" "$(col handshake "$s" 7)" "$(awk -v c="$cpu" 'BEGIN {print 1e6 / c}')" "$(ratio "$cpu" "$ng_hs")" \
        "$plain" "$(awk -v a="$cpu" -v b="$plain" 'BEGIN {print a - b}')" "$(col handshake "$s" 9)" "$(col handshake "$s" 10)"
done
echo
echo "**Keep-alive HTTPS.** wrk -c50 over https, connections kept open (one handshake each at the start):"
echo
echo "| system | requests/s | CPU µs/request | user µs | kernel µs | CPU vs nginx |"
echo "|---|---|---|---|---|---|"
ng_ka=$(col keepalive nginx 5)
for s in "${SYSTEMS[@]}"; do
    cpu=$(col keepalive "$s" 5)
    printf '| %s | %.0f | %.2f | %.2f | %.2f | %s |\n' "$s" "$(col keepalive "$s" 4)" "$cpu" "$(col keepalive "$s" 6)" "$(col keepalive "$s" 7)" "$(ratio "$cpu" "$ng_ka")"
done
echo
echo "**Instructions per full handshake.** User-space instructions counted by valgrind (cachegrind),"
echo "the same s_time load on a fresh process of each for 4 s and for 12 s; the difference divided by"
echo "the difference in handshakes (the proxying of each one's request included). Repeatable on a busy"
echo "machine, where CPU time is not; it leaves out the kernel's share, and both libraries choose their"
echo "assembly by what valgrind's virtual CPU reports, which may not be all of this CPU's extensions."
echo
echo "| system | instructions per handshake | vs nginx |"
echo "|---|---|---|"
for s in "${SYSTEMS[@]}"; do
    printf '| %s | %s | %s |\n' "$s" "${PER_HANDSHAKE[$s]}" "$(ratio "${PER_HANDSHAKE[$s]}" "${PER_HANDSHAKE[nginx]}")"
done
echo
echo "CPU steal during these runs: median $(cut -f8 "$RESULTS" | median)%, highest $(cut -f8 "$RESULTS" | sort -n | tail -1)%."
echo
echo "<details><summary>$(wc -l < "$RESULTS") runs</summary>"
echo
echo "| load | round | system | per second | CPU µs each | steal % | CPU 0 / CPU 1 busy | client errors |"
echo "|---|---|---|---|---|---|---|---|"
awk -F'\t' '{printf "| %s | %s | %s | %.0f | %s | %s | %s%% / %s%% | %s |\n", $1, $3, $2, $4, $5, $8, $9, $10, $11}' "$RESULTS"
echo
echo "</details>"
