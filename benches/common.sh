# Shared by the benchmark scripts (sourced, not run): install missing Debian packages, build
# release, a scratch folder whose processes are stopped by pid on exit, free ports, waiting
# for a port, idle-connection memory, the backends and configurations every comparison uses,
# and instructions per request under valgrind. Everything stays on 127.0.0.1.

# install_missing PACKAGE...: apt-get installs those not yet installed.
install_missing() {
    local need=()
    for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg"); done
    # apt's progress goes to stderr: a script's stdout is its report (run.sh keeps it).
    if [ ${#need[@]} -gt 0 ]; then
        apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
    fi
}

# The release build. `rproxy` is built by a command of its own, the one users run: built in the
# same command as the examples, it would get the features the dev-dependencies ask for too
# (tokio's test-util, which makes every `Instant::now` look for a paused clock: about 250
# instructions a request, callgrind), and be a binary no user runs. The examples (the tcp_bench
# client, hyper-floor) come after, in a second command that leaves target/release/rproxy as it is.
RELEASE_BUILD=(cargo build --release --quiet --bin rproxy)
"${RELEASE_BUILD[@]}"
cargo build --release --quiet --example tcp_bench --example hyper_floor
BENCH="$PWD/target/release/examples/tcp_bench"
DIR=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    rm -rf "$DIR"
}
trap cleanup EXIT

# forget_pid PID: takes a process that has ended (and been waited for) out of PIDS, so the exit
# trap cannot signal another process that reused its pid.
forget_pid() {
    local keep=() pid
    for pid in "${PIDS[@]}"; do [ "$pid" = "$1" ] || keep+=("$pid"); done
    PIDS=("${keep[@]}")
}

# stop_pid PID: ends a process started here (SIGTERM) and waits for it.
stop_pid() {
    kill -TERM "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
    forget_pid "$1"
}

# median: the median of the numbers on stdin, one a line.
median() { sort -n | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }

# The last lines of every log in $DIR, when something fails to start.
show_logs() { tail -n 5 "$DIR"/*.log >&2 2>/dev/null || true; }

port() { "$BENCH" port; }

# idle_args [N] [--silent]: the arguments of idle_minute.sh and idle_tls.sh. Raises the
# descriptor limit and sets N (10,000 by default, fewer when the hard limit is lower: HAProxy
# needs two descriptors per connection, see compare/run.sh) and SILENT.
idle_args() {
    ulimit -n "$(ulimit -Hn)"
    local max=$(( ($(ulimit -Hn) - 200) / 2 )) a
    N=10000 SILENT=
    for a in "$@"; do if [ "$a" = --silent ]; then SILENT=--silent; else N=$a; fi; done
    [ "$N" -gt "$max" ] && N=$max
    return 0
}

# open_idle_clients PORT N CA [--silent]: starts `tcp_bench idle` on CPU 1 opening N
# keep-alive connections to PORT (TLS when CA names a certificate file; no request with
# --silent) and waits until all are open, up to 180 s; sets `client` to its pid. Fails, with
# the logs, if they do not all open.
open_idle_clients() {
    taskset -c 1 "$BENCH" idle "127.0.0.1:$1" "$2" ${3:+"$3"} ${4:-} > "$DIR/idle.out" 2>"$DIR/idle.log" &
    client=$!
    for _ in $(seq 1800); do
        grep -q ready "$DIR/idle.out" 2>/dev/null && break
        kill -0 "$client" 2>/dev/null || break
        sleep 0.1
    done
    if ! grep -q ready "$DIR/idle.out" 2>/dev/null; then
        echo "port $1: not all $2 idle connections opened (the client failed, or 180 s passed)" >&2
        cat "$DIR/idle.log" >&2
        kill "$client" 2>/dev/null || true
        show_logs
        return 1
    fi
}

# idle_kib PID PORT N [CA]: how many KiB PID's resident memory grows by while N idle keep-alive
# connections to PORT are open (HTTPS trusting the cert CA, if given), each after one GET.
# Printed twice: one second after the last opened, and five seconds after, the same settling
# times for every system (an allocator may return freed buffers to the system only after a
# delay: rproxy's, mimalloc, measured about 1 KB per connection at one second and under
# 100 bytes at five here). The client runs on CPU 1 with the load generators. Fails, naming
# the port, if they do not all open.
idle_kib() {
    local pid=$1 port=$2 n=$3 ca=${4:-} before at1 at5 client
    before=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
    open_idle_clients "$port" "$n" "$ca" || return 1
    sleep 1
    at1=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
    sleep 4
    at5=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
    kill "$client" 2>/dev/null || true
    wait "$client" 2>/dev/null || true
    echo $((at1 - before)) $((at5 - before))
}

# idle_minute PID PORT N [CA] [--silent]: N idle keep-alive connections to PORT (HTTPS trusting
# the cert CA, if given), each after one GET (--silent: none, a bare connection or a TLS
# handshake only, as a browser's preconnect leaves it), held for 70 s, then all closed at once.
# PID's resident memory is read before, every 5 s while they are open, and 5, 10 and 15 s
# after they closed; its CPU time (utime+stime) over the first idle minute. Prints, KiB added
# to the reading before: at 5 s, the highest reading from 5 s to 60 s, 15 s after the close;
# then the idle minute's CPU in ms, and how many of the connections were still open at 60 s
# (established on PORT's side): a server may close idle ones before (its keep-alive or
# request-head timeout). Every reading goes to stderr. Why a minute: an allocator
# or the kernel may move memory well after the last connection opened (khugepaged turning
# sparse heap regions into 2 MB pages, for one). The client runs on CPU 1 with the load
# generators. Fails, naming the port, if the connections do not all open.
idle_minute() {
    local pid=$1 port=$2 n=$3 ca= silent= before t0 t1 at5= max=0 open60= rss after client readings=
    for a in "${@:4}"; do if [ "$a" = --silent ]; then silent=--silent; else ca=$a; fi; done
    rss() { awk '/VmRSS/ {print $2}' "/proc/$pid/status"; }
    cpu_ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
    before=$(rss)
    open_idle_clients "$port" "$n" "$ca" $silent || return 1
    t0=$(cpu_ticks)
    for t in 5 10 15 20 25 30 35 40 45 50 55 60 65 70; do
        sleep 5
        rss=$(rss)
        readings+=" ${t}s:$rss"
        [ -z "$at5" ] && at5=$rss
        if [ "$t" -le 60 ]; then
            [ "$rss" -gt "$max" ] && max=$rss
        fi
        if [ "$t" = 60 ]; then
            t1=$(cpu_ticks)
            open60=$(ss -Htn state established "( sport = :$port )" | wc -l)
        fi
    done
    kill "$client" 2>/dev/null || true
    wait "$client" 2>/dev/null || true
    for t in 5 10 15; do
        sleep 5
        after=$(rss)
        readings+=" closed+${t}s:$after"
    done
    echo "port $port: RSS KiB before $before;$readings" >&2
    echo $((at5 - before)) $((max - before)) $((after - before)) \
        "$(awk -v t=$((t1 - t0)) -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.0f", t * 1000 / hz}')" "$open60"
}

# idle_minute_table TITLE N RESULTS SYSTEM...: a Markdown table of idle_minute's figures, one
# column per SYSTEM; RESULTS names an associative array of idle_minute's output lines by
# system. TITLE heads the first column.
idle_minute_table() {
    local title=$1 n=$2 s
    local -n res=$3
    shift 3
    # field K SYSTEM...: the K-th figure of each system's line, as table cells; per_conn K
    # SYSTEM...: the same in bytes per connection.
    field() { for s in "${@:2}"; do printf ' %s |' "$(cut -d' ' -f"$1" <<< "${res[$s]}")"; done; }
    per_conn() {
        for s in "${@:2}"; do
            printf ' %s |' "$(awk -v k="$(cut -d' ' -f"$1" <<< "${res[$s]}")" -v n="$n" 'BEGIN {printf "%.0f", k * 1024 / n}')"
        done
    }
    echo "| $title |$(printf ' %s |' "$@")"
    echo "|---|$(printf -- '---|%.0s' "$@")"
    echo "| resident memory added, 5 s after the last opened (KiB) |$(field 1 "$@")"
    echo "| bytes per connection, 5 s after |$(per_conn 1 "$@")"
    echo "| highest resident memory added, 5 s to 60 s (KiB) |$(field 2 "$@")"
    echo "| bytes per connection, highest over the minute |$(per_conn 2 "$@")"
    echo "| CPU over the idle minute (ms) |$(field 4 "$@")"
    echo "| connections still open at 60 s |$(field 5 "$@")"
    echo "| resident memory added, 15 s after all closed (KiB) |$(field 3 "$@")"
}

wait_port() {
    for _ in $(seq 200); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "port $1 did not open" >&2
    show_logs
    return 1
}

# The configurations every comparison uses, printed to stdout.

# backends_conf B1 B2 [WORKERS]: two nginx backends answering 12 bytes with X-Backend b1 / b2.
backends_conf() {
    cat <<CONF
worker_processes ${3:-1};
error_log stderr;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    server { listen 127.0.0.1:$1; location / { add_header X-Backend b1; return 200 "hello world\n"; } }
    server { listen 127.0.0.1:$2; location / { add_header X-Backend b2; return 200 "hello world\n"; } }
}
CONF
}

# rproxy_conf PORT WORKERS BACKEND_A BACKEND_B ACCESS [SECTIONS] [UPSTREAM_KEYS] [LISTENER_KEYS]:
# round-robin over two backends with enough idle upstream connections.
rproxy_conf() {
    cat <<CONF
workers = $2
[log]
access = "$5"
${6:-}
[listeners.web]
listen = "127.0.0.1:$1"
upstream = "app"
${8:-}
[upstreams.app]
servers = ["127.0.0.1:$3", "127.0.0.1:$4"]
keepalive_connections = 256
${7:-}
CONF
}

# nginx_proxy_conf PORT B1 B2 [EXTRA_LISTEN]: nginx as the same proxy, one worker.
nginx_proxy_conf() {
    cat <<CONF
worker_processes 1;
error_log stderr;
events { worker_connections 20000; }
http {
    access_log off;
    keepalive_requests 1000000;
    upstream app { server 127.0.0.1:$2; server 127.0.0.1:$3; keepalive 512; }
    server {
        listen 127.0.0.1:$1;
        ${4:-}
        location / {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
        }
    }
}
CONF
}

# haproxy_conf PORT B1 B2 [EXTRA_BIND] [MAXCONN]: HAProxy as the same proxy, one thread.
haproxy_conf() {
    cat <<CONF
global
    nbthread 1
    maxconn ${5:-4096}
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    option forwardfor
    http-reuse always
frontend web
    bind 127.0.0.1:$1
    ${4:-}
    default_backend app
backend app
    balance roundrobin
    server b1 127.0.0.1:$2
    server b2 127.0.0.1:$3
CONF
}

# start_backends NAME [CPUS]: two nginx backends (backends_conf) in $DIR/NAME on fresh ports,
# set as B1 and B2, pinned to CPUS if given; returns once both accept connections.
start_backends() {
    local pin=()
    [ -n "${2:-}" ] && pin=(taskset -c "$2")
    B1=$(port); B2=$(port)
    mkdir -p "$DIR/$1"
    backends_conf "$B1" "$B2" > "$DIR/$1/nginx.conf"
    "${pin[@]}" nginx -p "$DIR/$1" -c "$DIR/$1/nginx.conf" -g "daemon off; pid $DIR/$1/nginx.pid;" 2>"$DIR/$1.log" &
    PIDS+=($!)
    wait_port "$B1"; wait_port "$B2"
}

# rproxy's listener keys for the header work every other proxy here does: X-Forwarded-For
# alone (nginx's proxy_set_header line, HAProxy's option forwardfor, hyper-floor's and
# Pingora's one header), no request id. The system "rproxy-xff".
XFF_ONLY='forwarded_headers = ["x-forwarded-for"]
request_id = false'

# Instructions per request under valgrind (benches/instructions.sh, benches/before_after.sh),
# round-robin over the backends B1 and B2 (start_backends). Systems: rproxy, rproxy-xff
# (XFF_ONLY), rproxy-observed (metrics, an access log file, 1 s health checks), rproxy-ws
# (tokio's work-stealing runtime instead of thread per core), nginx, haproxy, hyper-floor, pingora (set PINGORA to the binary
# benches/compare/build_pingora.sh prints). RPROXY is the rproxy binary to run, by default this
# tree's release build.

# system_config SYSTEM PORT: writes the system's configuration for listening on PORT.
system_config() {
    local dir="$DIR/$1-$2"
    mkdir -p "$dir"
    case $1 in
        rproxy | rproxy-ws) rproxy_conf "$2" 1 "$B1" "$B2" off > "$dir/rproxy.toml" ;;
        rproxy-xff) rproxy_conf "$2" 1 "$B1" "$B2" off "" "" "$XFF_ONLY" > "$dir/rproxy.toml" ;;
        rproxy-observed) rproxy_conf "$2" 1 "$B1" "$B2" "$dir/access.log" "[admin]
listen = \"127.0.0.1:$(port)\"" 'health_check = { interval = "1s", path = "/" }' > "$dir/rproxy.toml" ;;
        nginx) nginx_proxy_conf "$2" "$B1" "$B2" > "$dir/nginx.conf" ;;
        haproxy) haproxy_conf "$2" "$B1" "$B2" > "$dir/haproxy.cfg" ;;
        # Configured on its command line (start_under_valgrind), as hyper-floor is.
        pingora) ;;
    esac
}

# valgrind_setup: what the valgrind counts (instructions.sh, cache_misses.sh) need first: the
# packages, Pingora's build (PINGORA) and the two backends (start_backends).
valgrind_setup() {
    install_missing valgrind nginx haproxy nghttp2-client curl
    PINGORA=$(bash benches/compare/build_pingora.sh)
    start_backends backends
}

# start_under_valgrind SYSTEM PORT [RPROXY]: runs it in the foreground under cachegrind
# (instruction counts only; with CACHE_SIM=yes, its simulated caches' misses too).
start_under_valgrind() {
    local dir="$DIR/$1-$2" rproxy=${3:-$PWD/target/release/rproxy}
    local vg=(valgrind --tool=cachegrind "--cache-sim=${CACHE_SIM:-no}" ${CACHE_LL:+"--LL=$CACHE_LL"}
        --cachegrind-out-file=/dev/null)
    case $1 in
        rproxy | rproxy-xff | rproxy-observed) exec "${vg[@]}" "$rproxy" -c "$dir/rproxy.toml" ;;
        rproxy-ws) RPROXY_RUNTIME=work_stealing exec "${vg[@]}" "$rproxy" -c "$dir/rproxy.toml" ;;
        nginx) exec "${vg[@]}" nginx -p "$dir" -c "$dir/nginx.conf" -g "daemon off; master_process off; pid $dir/nginx.pid;" ;;
        haproxy) exec "${vg[@]}" haproxy -f "$dir/haproxy.cfg" -db ;;
        hyper-floor) exec "${vg[@]}" "$PWD/target/release/examples/hyper_floor" "127.0.0.1:$2" "127.0.0.1:$B1" "127.0.0.1:$B2" ;;
        pingora) exec "${vg[@]}" "$PINGORA" "127.0.0.1:$2" "127.0.0.1:$B1" "127.0.0.1:$B2" ;;
    esac
}

# instructions SYSTEM N [RPROXY]: sets IR to the user-space instructions of a fresh process
# that served N requests (h2load --h1, CONNS connections, 50 by default), and with
# CACHE_SIM=yes I1, D1 and LL to its simulated instruction-cache, data-cache and last-level
# misses (CACHE_LL=size,ways,line sets the last level's geometry). (Not run in a subshell, so
# the exit trap knows the process.)
instructions() {
    local p
    p=$(port)
    system_config "$1" "$p"
    start_under_valgrind "$1" "$p" "${3:-}" >/dev/null 2>"$DIR/vg-$p.log" &
    # `start_under_valgrind` execs valgrind, which runs the system in its own process: this is
    # its pid.
    local pid=$!
    PIDS+=("$pid")
    for _ in $(seq 600); do curl -s -o /dev/null "http://127.0.0.1:$p/" && break; sleep 0.1; done
    local done_n
    done_n=$(h2load --h1 -n "$2" -c "${CONNS:-50}" -t1 "http://127.0.0.1:$p/" 2>&1 | awk '/^requests:/ {print $8}')
    [ "$done_n" = "$2" ] || { echo "$1: $done_n of $2 requests succeeded" >&2; exit 1; }
    # nginx finishes (and valgrind reports) on SIGQUIT, the others on SIGTERM.
    if [ "$1" = nginx ]; then kill -QUIT "$pid"; else kill -TERM "$pid"; fi
    wait "$pid" || true
    forget_pid "$pid"
    IR=$(awk '/I *refs/ {gsub(",", "", $NF); print $NF}' "$DIR/vg-$p.log")
    if [ "${CACHE_SIM:-no}" = yes ]; then
        # "D1  misses:  total  (rd + wr)": the total is the first number after the colon.
        miss() { awk -v k="$1" '$0 ~ k {sub(/.*: */, ""); gsub(",", "", $1); print $1}' "$DIR/vg-$p.log"; }
        I1=$(miss 'I1 +misses'); D1=$(miss 'D1 +misses'); LL=$(miss 'LL misses')
    fi
}

# instructions_per_request SYSTEM REQUESTS [RPROXY]: sets PER_REQUEST to the instructions per
# request of SYSTEM: two fresh processes serve REQUESTS/5 and REQUESTS requests, and the
# difference divided by the difference in requests leaves out start-up and shutdown.
instructions_per_request() {
    local small
    instructions "$1" $(($2 / 5)) "${3:-}"
    small=$IR
    instructions "$1" "$2" "${3:-}"
    PER_REQUEST=$(( (IR - small) / ($2 - $2 / 5) ))
}

# TLS termination (benches/https.sh): rproxy, nginx and HAProxy each one worker terminating
# TLS with one self-signed ECDSA P-256 certificate from `tcp_bench cert`.

# tls_config SYSTEM TLS_PORT PLAIN_PORT [MAXCONN] [RPROXY]: writes the configuration of SYSTEM
# (rproxy, nginx, haproxy or pingora: one worker, an https listener on TLS_PORT with the certificate
# in $DIR, a plain one on PLAIN_PORT, round-robin over the backends B1 and B2) to its own
# folder, and sets CMD to the command that runs it in the foreground. RPROXY is the rproxy
# binary, by default this tree's release build. nginx 1.22 is told to offer TLS 1.3: its
# default `ssl_protocols` stops at TLS 1.2 (1.23.4 added 1.3 to the default). Key exchange
# needs no setting: all three pick X25519 for OpenSSL's client hello (tls_session says).
tls_config() {
    local dir="$DIR/tls-$1-$2"
    mkdir -p "$dir"
    case $1 in
        rproxy)
            rproxy_conf "$3" 1 "$B1" "$B2" off "[listeners.https]
listen = \"127.0.0.1:$2\"
upstream = \"app\"
tls = { cert = \"$DIR/cert.pem\", key = \"$DIR/key.pem\" }" > "$dir/rproxy.toml"
            CMD=("${5:-$PWD/target/release/rproxy}" -c "$dir/rproxy.toml") ;;
        nginx)
            nginx_proxy_conf "$3" "$B1" "$B2" "listen 127.0.0.1:$2 ssl; ssl_certificate $DIR/cert.pem; ssl_certificate_key $DIR/key.pem; ssl_protocols TLSv1.2 TLSv1.3;" > "$dir/nginx.conf"
            CMD=(nginx -p "$dir" -c "$dir/nginx.conf" -g "daemon off; master_process off; pid $dir/nginx.pid;") ;;
        haproxy)
            haproxy_conf "$3" "$B1" "$B2" "bind 127.0.0.1:$2 ssl crt $DIR/both.pem" "${4:-4096}" > "$dir/haproxy.cfg"
            CMD=(haproxy -f "$dir/haproxy.cfg" -db) ;;
        pingora)
            CMD=("$PINGORA_TLS" --tls "$DIR/cert.pem" "$DIR/key.pem" "127.0.0.1:$2" "127.0.0.1:$3" "127.0.0.1:$B1" "127.0.0.1:$B2") ;;
    esac
}

# The systems that terminate TLS: rproxy, nginx, HAProxy, and Pingora when PINGORA_TLS names
# its TLS build (benches/compare/build_pingora.sh tls).
TLS_SYSTEMS=(rproxy nginx haproxy)

# start_tls_proxies [MAXCONN] [RPROXY]: writes a self-signed ECDSA P-256 certificate to $DIR
# (`tcp_bench cert`: cert.pem, key.pem, both.pem), starts two nginx backends on CPU 1
# (start_backends) and in front of them the TLS_SYSTEMS (tls_config), each pinned to CPU 0. Sets TLS_PORT[SYSTEM], PLAIN_PORT[SYSTEM] and PID[SYSTEM]; returns once all listen.
start_tls_proxies() {
    local s
    "$BENCH" cert "$DIR"
    start_backends tls-backends 1
    declare -gA TLS_PORT PLAIN_PORT PID
    for s in "${TLS_SYSTEMS[@]}"; do
        TLS_PORT[$s]=$(port)
        PLAIN_PORT[$s]=$(port)
        tls_config "$s" "${TLS_PORT[$s]}" "${PLAIN_PORT[$s]}" "${1:-}" "${2:-}"
        taskset -c 0 "${CMD[@]}" 2>"$DIR/tls-$s.log" &
        PIDS+=($!)
        PID[$s]=$!
    done
    for s in "${TLS_SYSTEMS[@]}"; do wait_port "${TLS_PORT[$s]}"; wait_port "${PLAIN_PORT[$s]}"; done
}

# tls_session SYSTEM: what a TLS 1.3 handshake with SYSTEM's https listener negotiates, as
# OpenSSL's client (the library of wrk and s_time, with its default groups) reports it, as one
# Markdown table row: protocol, cipher, key exchange group, signature.
tls_session() {
    local out
    out=$(openssl s_client -connect "127.0.0.1:${TLS_PORT[$1]}" -servername localhost -brief </dev/null 2>&1 || true)
    echo "$out" | awk -F': *' -v s="$1" '
        /^Protocol version/ {p = $2} /^Ciphersuite/ {c = $2} /^Signature type/ {g = $2}
        /^Hash used/ {h = $2} /^Server Temp Key/ {k = $2} /^Negotiated TLS1.3 group/ {k = $2}
        END {printf "| %s | %s | %s | %s | %s+%s |\n", s, p, c, k, g, h}'
}
