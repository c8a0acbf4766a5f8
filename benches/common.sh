# Shared by the benchmark scripts (sourced, not run): install missing Debian packages, build
# release, a scratch folder whose processes are stopped by pid on exit, free ports, waiting
# for a port. Everything stays on 127.0.0.1.

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
    taskset -c 1 "$BENCH" idle "127.0.0.1:$port" "$n" ${ca:+"$ca"} > "$DIR/idle.out" 2>"$DIR/idle.log" &
    client=$!
    for _ in $(seq 1800); do
        grep -q ready "$DIR/idle.out" 2>/dev/null && break
        kill -0 "$client" 2>/dev/null || break
        sleep 0.1
    done
    if ! grep -q ready "$DIR/idle.out" 2>/dev/null; then
        echo "port $port: not all $n idle connections opened (the client failed, or 180 s passed)" >&2
        cat "$DIR/idle.log" >&2
        kill "$client" 2>/dev/null || true
        show_logs
        return 1
    fi
    sleep 1
    at1=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
    sleep 4
    at5=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
    kill "$client" 2>/dev/null || true
    wait "$client" 2>/dev/null || true
    echo $((at1 - before)) $((at5 - before))
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

# rproxy_conf PORT WORKERS BACKEND_A BACKEND_B ACCESS [SECTIONS] [UPSTREAM_KEYS]: round-robin
# over two backends with enough idle upstream connections.
rproxy_conf() {
    cat <<CONF
workers = $2
[log]
access = "$5"
${6:-}
[listeners.web]
listen = "127.0.0.1:$1"
upstream = "app"
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
