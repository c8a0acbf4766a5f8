#!/usr/bin/env bash
# System calls, context switches and wake-ups per proxied request, counted with perf
# tracepoints (issue 26: where the kernel time goes, rproxy against hyper-floor): rproxy
# (thread per core: tokio's current_thread runtime), rproxy-ws (the same on tokio's
# multi-thread runtime, RPROXY_RUNTIME=work_stealing, as rproxy ran before), hyper-floor
# (examples/hyper_floor.rs, on current_thread as rproxy), hyper-floor-mt (the same on the
# multi-thread runtime with one worker, FLOOR_RUNTIME=multi_thread), nginx, HAProxy and
# Pingora (benches/compare/pingora/, built by benches/compare/build_pingora.sh), one worker
# each pinned to CPU 0, round-robin over two keep-alive nginx backends on CPU 1
# with the load generator (h2load --h1 -t1), at 50 and at 200 connections.
#
#   bash benches/census.sh [REQUESTS] [ROUNDS]      (default 20000 requests, 2 rounds)
#
# Per system, connection count and round, three windows on the same warmed-up process:
#   1. REQUESTS requests untraced: the proxy's CPU time per request (/proc/PID/stat), to read
#      what tracing costs against window 3;
#   2. a second later, an idle window as long as window 1, traced as window 3 is: the work the
#      proxy does with no load (timers, closing idle upstream connections), reported beside
#      the loaded counts, not subtracted (run.sh's CPU times include it too);
#   3. REQUESTS requests traced: `perf record -p PID` of raw_syscalls:sys_enter and sys_exit
#      (every system call of every thread of the proxy, by number, with its return value: the
#      number of events an epoll_wait returned, the bytes a read or write moved, EAGAIN; and
#      the time inside the call), sched:sched_switch (the proxy's threads leaving the CPU:
#      prev_state R is a preemption, anything else a voluntary sleep) and sched:sched_waking
#      (the sleeping tasks the proxy wakes: a peer on the other CPU costs an interrupt, which
#      on a virtual machine is dear), and a system-wide `perf record -a` of sched:sched_waking
#      filtered in the kernel to the proxy's threads (who wakes the proxy). sched_waking, not
#      sched_wakeup: it fires in the waker's context, where sched_wakeup fires on the woken
#      task's CPU for a cross-CPU wake-up and names whatever ran there.
# Both perf sessions start disabled and are switched on and off through a control fifo, so a
# window holds exactly the load. Counts do not depend on the machine's speed, except how
# events batch: with more requests in flight when the proxy wakes, one epoll_wait returns
# more events and fewer calls are made, so epoll, switch and wake-up figures move with
# timing, and with other work on CPU 0 (hence two rounds, both shown as "round 1 / round 2").
# Tracing every system call costs the proxy CPU time (a row says how much) and so changes
# that timing too.
#
# Installs linux-perf, linux-libc-dev (system call names), nginx, haproxy and nghttp2-client if
# missing; needs root or perf_event_paranoid <= -1 for the system-wide wake-up record. Loopback
# only; every process started here is stopped by its pid. Prints a Markdown section.
set -euo pipefail
REQUESTS=${1:-20000}
ROUNDS=${2:-2}
CONNECTIONS=(50 200)
cd "$(dirname "$0")/.."
ROOT=$PWD

source benches/common.sh
install_missing linux-perf linux-libc-dev nginx haproxy nghttp2-client curl

PINGORA=$(bash benches/compare/build_pingora.sh)
start_backends backends 1
SYSTEMS=(rproxy rproxy-ws hyper-floor hyper-floor-mt nginx haproxy pingora)
declare -A PORT PID

# start_system SYSTEM: starts it on a fresh port pinned to CPU 0 (the configurations of
# common.sh, as run.sh runs them) and sets PORT and PID.
start_system() {
    local s=$1 p dir
    p=$(port)
    system_config "$s" "$p"
    dir="$DIR/$s-$p"
    case $s in
        rproxy) taskset -c 0 "$ROOT/target/release/rproxy" -c "$dir/rproxy.toml" 2>"$DIR/$s.log" & ;;
        rproxy-ws) RPROXY_RUNTIME=work_stealing taskset -c 0 "$ROOT/target/release/rproxy" -c "$dir/rproxy.toml" 2>"$DIR/$s.log" & ;;
        nginx) taskset -c 0 nginx -p "$dir" -c "$dir/nginx.conf" -g "daemon off; master_process off; pid $dir/nginx.pid;" 2>"$DIR/$s.log" & ;;
        haproxy) taskset -c 0 haproxy -f "$dir/haproxy.cfg" -db 2>"$DIR/$s.log" & ;;
        hyper-floor) taskset -c 0 "$ROOT/target/release/examples/hyper_floor" "127.0.0.1:$p" "127.0.0.1:$B1" "127.0.0.1:$B2" 2>"$DIR/$s.log" & ;;
        hyper-floor-mt) FLOOR_RUNTIME=multi_thread taskset -c 0 "$ROOT/target/release/examples/hyper_floor" "127.0.0.1:$p" "127.0.0.1:$B1" "127.0.0.1:$B2" 2>"$DIR/$s.log" & ;;
        pingora) taskset -c 0 "$PINGORA" "127.0.0.1:$p" "127.0.0.1:$B1" "127.0.0.1:$B2" 2>"$DIR/$s.log" & ;;
    esac
    PIDS+=($!)
    PID[$s]=$!
    PORT[$s]=$p
    wait_port "$p"
}

# load SYSTEM C N: N requests over C connections from CPU 1; fails unless all succeed.
load() {
    local ok
    ok=$(taskset -c 1 h2load --h1 -n "$3" -c "$2" -t1 "http://127.0.0.1:${PORT[$1]}/" 2>&1 | awk '/^requests:/ {print $8}')
    [ "$ok" = "$3" ] || { echo "$1: ${ok:-no} of $3 requests succeeded at $2 connections" >&2; show_logs; exit 1; }
}

# proc_stat PID: the process's CPU time so far, user and kernel, in clock ticks, and its minor
# page faults (memory given back by the allocator and touched again costs kernel time too,
# with no system call to show for it).
proc_stat() { awk '{print $14, $15, $10}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)
us_per_request() { awk -v t="$1" -v hz="$HZ" -v r="$REQUESTS" 'BEGIN {printf "%.1f", t / hz * 1e6 / r}'; }

# System call numbers to names, from the kernel's headers.
SYSCALL_NAMES="$DIR/syscall-names"
awk '$1 == "#define" && $2 ~ /^__NR_/ {sub(/^__NR_/, "", $2); print $3, $2}' \
    /usr/include/x86_64-linux-gnu/asm/unistd_64.h > "$SYSCALL_NAMES"

# traced PID OUT COMMAND...: runs COMMAND with the proxy PID traced (see the top), and writes
# the counts to OUT, one "key<TAB>count" a line (aggregate's keys).
traced() {
    local pid=$1 out=$2 filter="" t sys wake
    shift 2
    for t in /proc/"$pid"/task/*; do filter+="pid == ${t##*/} || "; done
    mkdir -p "$DIR/perf"
    rm -f "$DIR/perf/ctl" "$DIR/perf/ack" "$DIR/perf/ctl2" "$DIR/perf/ack2"
    # One control fifo and one acknowledgement fifo per perf session.
    mkfifo "$DIR/perf/ctl" "$DIR/perf/ack" "$DIR/perf/ctl2" "$DIR/perf/ack2"
    taskset -c 1 perf record -q -D -1 --control "fifo:$DIR/perf/ctl,$DIR/perf/ack" -m 16M \
        -o "$DIR/perf/sys.data" -e raw_syscalls:sys_enter -e raw_syscalls:sys_exit -e sched:sched_switch -e sched:sched_waking -p "$pid" 2>"$DIR/perf/sys.log" &
    sys=$!
    PIDS+=("$sys")
    taskset -c 1 perf record -q -D -1 --control "fifo:$DIR/perf/ctl2,$DIR/perf/ack2" -m 16M -a \
        -o "$DIR/perf/wake.data" -e sched:sched_waking --filter "${filter% || }" 2>"$DIR/perf/wake.log" &
    wake=$!
    PIDS+=("$wake")
    # Opened read-write, which does not wait for perf to open its end: if perf failed to
    # start, perf_ctl times out and says so instead of hanging here.
    exec 5<>"$DIR/perf/ctl" 6<>"$DIR/perf/ack" 7<>"$DIR/perf/ctl2" 8<>"$DIR/perf/ack2"
    perf_ctl enable
    "$@"
    perf_ctl disable
    exec 5>&- 6<&- 7>&- 8<&-
    kill -INT "$sys" "$wake"
    wait "$sys" || true
    wait "$wake" || true
    forget_pid "$sys"
    forget_pid "$wake"
    rm -f "$DIR/perf/ctl" "$DIR/perf/ack" "$DIR/perf/ctl2" "$DIR/perf/ack2"
    {
        perf script -i "$DIR/perf/sys.data" -F comm,tid,time,event,trace 2>/dev/null | sed 's/^/S /'
        perf script -i "$DIR/perf/wake.data" -F comm,pid,tid,event,trace 2>/dev/null | sed 's/^/W /'
    } | aggregate "$pid" > "$out"
    # Events perf could not keep up with: the counts above would be short by them.
    for f in sys wake; do
        perf report -i "$DIR/perf/$f.data" --stats 2>/dev/null | awk '/LOST/ {n += $3} END {printf "lost\t%d\n", n}'
    done >> "$out"
    rm -f "$DIR/perf/sys.data" "$DIR/perf/wake.data"
}

# perf_ctl enable|disable: switches both perf sessions and waits for their acknowledgements.
perf_ctl() {
    local ack
    echo "$1" >&5
    read -r -t 10 -u 6 ack || { echo "perf did not acknowledge '$1'" >&2; cat "$DIR"/perf/*.log >&2; exit 1; }
    echo "$1" >&7
    read -r -t 10 -u 8 ack || { echo "perf (wake-ups) did not acknowledge '$1'" >&2; cat "$DIR"/perf/*.log >&2; exit 1; }
}

# aggregate PID: perf script lines (S: system calls and switches, W: wake-ups) to counts.
aggregate() {
    awk -v pid="$1" -v names="$SYSCALL_NAMES" '
        BEGIN { while ((getline l < names) > 0) { split(l, f, " "); name[f[1]] = f[2] } }
        # A thread name may hold spaces (Pingora names its worker threads "Pingora HTTP Proxy
        # Service", cut to "Pingora HTTP Pr"; "Timer thread"), which would shift every field
        # after it: the spaces in the leading name and in the comm= fields of the trace become
        # "_". The leading name ends before the thread id, which the time follows (S lines) or
        # which is pid/tid (W lines); a comm= field ends before its pid= field. A line with no
        # such space is left as it was.
        {
            for (i = 2; i < NF; i++)
                if (($1 == "S" && $i ~ /^[0-9]+$/ && $(i + 1) ~ /^[0-9]+\.[0-9]+:$/) || ($1 == "W" && $i ~ /^[0-9]+\/[0-9]+$/)) break
            line = $1 " " $2
            for (j = 3; j < i; j++) line = line "_" $j
            for (j = i; j <= NF; j++) {
                line = line " " $j
                if ($j ~ /^(prev_|next_)?comm=/)
                    while (j < NF && $(j + 1) !~ /^(prev_|next_)?pid=/) line = line "_" $(++j)
            }
            $0 = line
        }
        # S lines: comm, tid, time, event, then "NR nr (args)" or "NR nr = ret".
        $1 == "S" && $5 == "raw_syscalls:sys_enter:" { entered[$3] = $4 + 0 }
        $1 == "S" && $5 == "raw_syscalls:sys_exit:" {
            n = ($7 in name) ? name[$7] : "nr" $7
            total++; sc[n]++; th[n " [" $2 "]"]++
            # Time inside the call (it includes tracing it, and any preemption in it).
            if ($3 in entered) { usc[n] += ($4 - entered[$3]) * 1e6; delete entered[$3] }
            if (n ~ /^epoll_(p)?wait2?$/) { ecalls++; if ($9 == 0) ezero++; else if ($9 > 0) events += $9 }
            # The return value of a read or write is bytes, or -11 (EAGAIN) when nothing was
            # ready: a read that found nothing is a wasted system call.
            if (n ~ /^(read|readv|recvfrom|recvmsg)$/) { reads++; if ($9 == -11) again++; else if ($9 > 0) rbytes += $9 }
            if (n ~ /^(write|writev|sendto|sendmsg)$/ && $9 > 0) wbytes += $9
        }
        $1 == "S" && $5 == "sched:sched_switch:" {
            for (i = 6; i <= NF; i++) if ($i ~ /^prev_state=/) state = substr($i, 12)
            if (state ~ /^R/) invol++; else vol++
        }
        # Tasks the proxy wakes (peers on the other CPU, its own threads).
        $1 == "S" && $5 == "sched:sched_waking:" {
            for (i = 6; i <= NF; i++) if ($i ~ /^comm=/) woken = substr($i, 6)
            wakes_by++; wb[woken]++
        }
        $1 == "W" {
            split($3, p, "/")
            for (i = 5; i <= NF; i++) if ($i ~ /^comm=/) wakee = substr($i, 6)
            waker = (p[1] == pid) ? "own " $2 : (p[1] == 0 ? "idle task (interrupt)" : $2)
            wakes++; if (p[1] == pid) own++
            wk[waker " -> " wakee]++
        }
        END {
            printf "total\t%d\nepoll_calls\t%d\nepoll_zero\t%d\nepoll_events\t%d\n", total, ecalls, ezero, events
            printf "reads\t%d\nreads_again\t%d\nread_bytes\t%d\nwrite_bytes\t%d\n", reads, again, rbytes, wbytes
            printf "switch_vol\t%d\nswitch_invol\t%d\nwake\t%d\nwake_own\t%d\n", vol, invol, wakes, own
            for (k in sc) printf "sc %s\t%d\n", k, sc[k]
            # Microseconds, kept as a count: the callers divide by the requests.
            # Waiting is not work: epoll_wait, and the sleeps of a timer thread (Pingora has one
            # that sleeps in clock_nanosleep; the others make no such call under load).
            for (k in usc) { printf "usc %s\t%.1f\n", k, usc[k]; if (k !~ /^(epoll_(p)?wait2?|clock_nanosleep|nanosleep)$/) busy += usc[k] }
            printf "us_busy\t%.1f\n", busy
            for (k in th) printf "th %s\t%d\n", k, th[k]
            for (k in wk) printf "wk %s\t%d\n", k, wk[k]
            for (k in wb) printf "wb %s\t%d\n", k, wb[k]
            printf "wakes_by\t%d\n", wakes_by
        }'
}

# The measurements: one line per (connections, round, system, key) in $RESULTS, the key's
# count per request in the loaded window; "idle KEY" the same count in the idle window as
# long, divided by the same number of requests.
RESULTS="$DIR/census.tsv"
: > "$RESULTS"
# Pingora's "Timer thread" wakes every 10 ms even when it has no work, on CPU 0 with the
# others: left running, its wake-ups would land in the others' windows (a timer interrupt
# counts as woken by whichever proxy runs then). So it is stopped (SIGSTOP) except while it is
# measured. A stopped Pingora would not act on the exit trap's SIGTERM (it handles the signal),
# hence the SIGCONT first.
PAUSED=(pingora)
trap 'for s in "${PAUSED[@]}"; do [ -n "${PID[$s]:-}" ] && kill -CONT "${PID[$s]}" 2>/dev/null; done; cleanup' EXIT
paused() { [[ " ${PAUSED[*]} " == *" $1 "* ]]; }
for s in "${SYSTEMS[@]}"; do
    start_system "$s"
    # Warm-up: every upstream connection the runs will use opened, threads started.
    load "$s" 200 $((REQUESTS / 4))
    if paused "$s"; then kill -STOP "${PID[$s]}"; fi
done
for c in "${CONNECTIONS[@]}"; do
    for round in $(seq "$ROUNDS"); do
        for s in "${SYSTEMS[@]}"; do
            pid=${PID[$s]}
            if paused "$s"; then kill -CONT "$pid"; fi
            read -r u0 k0 f0 < <(proc_stat "$pid")
            start=$(date +%s.%N)
            load "$s" "$c" "$REQUESTS"
            seconds=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN {printf "%.2f", b - a}')
            read -r u1 k1 f1 < <(proc_stat "$pid")
            # The idle window comes first, a second after the untraced run (its connections
            # closed), so that it does not hold the traced run's own tail.
            sleep 1
            traced "$pid" "$DIR/idle" sleep "$seconds"
            read -r u2 k2 f2 < <(proc_stat "$pid")
            traced "$pid" "$DIR/loaded" load "$s" "$c" "$REQUESTS"
            read -r u3 k3 f3 < <(proc_stat "$pid")
            threads=$(find "/proc/$pid/task" -mindepth 1 -maxdepth 1 | wc -l)
            # "lost" stays a count, not per request.
            awk -F'\t' -v c="$c" -v r="$round" -v s="$s" -v n="$REQUESTS" '
                FNR == NR && $1 == "lost" { lost = $2; next }
                FNR == NR { printf "%s\t%s\t%s\tidle %s\t%.4f\n", c, r, s, $1, $2 / n; next }
                $1 == "lost" { printf "%s\t%s\t%s\tlost\t%d\n", c, r, s, $2 + lost; next }
                { printf "%s\t%s\t%s\t%s\t%.4f\n", c, r, s, $1, $2 / n }
            ' "$DIR/idle" "$DIR/loaded" >> "$RESULTS"
            {
                printf '%s\t%s\t%s\tthreads\t%s\n' "$c" "$round" "$s" "$threads"
                printf '%s\t%s\t%s\tcpu_user\t%s\n' "$c" "$round" "$s" "$(us_per_request $((u1 - u0)))"
                printf '%s\t%s\t%s\tcpu_kernel\t%s\n' "$c" "$round" "$s" "$(us_per_request $((k1 - k0)))"
                printf '%s\t%s\t%s\tcpu_traced\t%s\n' "$c" "$round" "$s" "$(us_per_request $((u3 + k3 - u2 - k2)))"
                printf '%s\t%s\t%s\tfaults\t%s\n' "$c" "$round" "$s" "$(awk -v f=$((f1 - f0)) -v n="$REQUESTS" 'BEGIN {printf "%.3f", f / n}')"
                printf '%s\t%s\t%s\tfaults_traced\t%s\n' "$c" "$round" "$s" "$(awk -v f=$((f3 - f2)) -v n="$REQUESTS" 'BEGIN {printf "%.3f", f / n}')"
            } >> "$RESULTS"
            echo "c=$c round $round $s: $(awk -F'\t' '$1 == "total" {print $2}' "$DIR/loaded") system calls traced (idle window of ${seconds}s: $(awk -F'\t' '$1 == "total" {print $2}' "$DIR/idle")), CPU $(us_per_request $((u1 + k1 - u0 - k0))) us/request untraced, $(us_per_request $((u3 + k3 - u2 - k2))) traced" >&2
            if paused "$s"; then kill -STOP "$pid"; fi
        done
    done
done

# head_row TITLE: a table's header, TITLE then one column per system.
head_row() {
    printf '| %s |' "$1"; printf ' %s |' "${SYSTEMS[@]}"
    printf '\n|---|'; printf -- '---|%.0s' "${SYSTEMS[@]}"; echo
}

# table C: the summary for C connections, systems as columns, each cell "round 1 / round 2".
table() {
    local c=$1
    head_row "per request, $c connections"
    awk -F'\t' -v c="$c" -v rounds="$ROUNDS" -v systems="${SYSTEMS[*]}" '
        $1 == c { v[$3, $2, $4] = $5 }
        function g(s, r, k) { return ((s, r, k) in v) ? v[s, r, k] : 0 }
        function sum(s, r, list,   n, i, t, x) {
            n = split(list, x, " "); t = 0
            for (i = 1; i <= n; i++) t += g(s, r, "sc " x[i])
            return t
        }
        function value(row, s, r,   calls) {
            calls = g(s, r, "epoll_calls")
            if (row == "total") return sprintf("%.2f", g(s, r, "total"))
            if (row == "io") return sprintf("%.2f", sum(s, r, IO))
            if (row == "again") return sprintf("%.2f", g(s, r, "reads_again"))
            if (row == "rbytes") return sprintf("%.0f", g(s, r, "read_bytes"))
            if (row == "wbytes") return sprintf("%.0f", g(s, r, "write_bytes"))
            if (row == "busy") return sprintf("%.1f", g(s, r, "us_busy"))
            if (row == "epoll") return sprintf("%.2f", calls)
            if (row == "zero") return calls > 0 ? sprintf("%.0f%%", 100 * g(s, r, "epoll_zero") / calls) : "-"
            if (row == "events") return calls > 0 ? sprintf("%.1f", g(s, r, "epoll_events") / calls) : "-"
            if (row == "ctl") return sprintf("%.2f", g(s, r, "sc epoll_ctl"))
            if (row == "futex") return sprintf("%.2f", g(s, r, "sc futex"))
            if (row == "timers") return sprintf("%.3f", sum(s, r, TIMERS))
            if (row == "other") return sprintf("%.2f", g(s, r, "total") - sum(s, r, IO " " TIMERS " epoll_ctl futex") - calls)
            if (row == "switches") return sprintf("%.2f+%.2f", g(s, r, "switch_vol"), g(s, r, "switch_invol"))
            if (row == "wake") return sprintf("%.2f", g(s, r, "wake"))
            if (row == "wake_own") return sprintf("%.2f", g(s, r, "wake_own"))
            if (row == "wake_other") return sprintf("%.2f", g(s, r, "wake") - g(s, r, "wake_own"))
            if (row == "wakes_by") return sprintf("%.2f", g(s, r, "wakes_by"))
            if (row == "idle") return sprintf("%.3f", g(s, r, "idle total"))
            if (row == "idle_wake") return sprintf("%.3f", g(s, r, "idle wake"))
            if (row == "threads") return g(s, r, "threads")
            if (row == "cpu") return sprintf("%.1f+%.1f", g(s, r, "cpu_user"), g(s, r, "cpu_kernel"))
            if (row == "cpu_traced") return sprintf("%.1f", g(s, r, "cpu_traced"))
            if (row == "faults") return sprintf("%.3f", g(s, r, "faults"))
            if (row == "lost") return g(s, r, "lost")
        }
        END {
            IO = "read write readv writev recvfrom sendto recvmsg sendmsg recvmmsg sendmmsg splice sendfile"
            TIMERS = "timerfd_create timerfd_settime timerfd_gettime clock_nanosleep nanosleep setitimer alarm"
            n = split(systems, sys, " ")
            nrows = split("total busy io again rbytes wbytes epoll zero events ctl futex timers other switches wake wake_own wake_other wakes_by faults idle idle_wake threads cpu cpu_traced lost", rows, " ")
            label["total"] = "system calls"
            label["io"] = "socket reads and writes (read, write, recvfrom, sendto, readv, writev, ...msg)"
            label["busy"] = "µs inside system calls other than epoll_wait and sleeps (traced: slower)"
            label["again"] = "… reads that found nothing (EAGAIN)"
            label["rbytes"] = "bytes read (client and backend)"
            label["wbytes"] = "bytes written (client and backend)"
            label["epoll"] = "epoll_wait calls"
            label["zero"] = "epoll_wait calls that returned no event"
            label["events"] = "events per epoll_wait call"
            label["ctl"] = "epoll_ctl"
            label["futex"] = "futex"
            label["timers"] = "timer calls (timerfd_*, clock_nanosleep, nanosleep, setitimer)"
            label["other"] = "other system calls"
            label["switches"] = "context switches, voluntary+involuntary"
            label["wake"] = "wake-ups of the proxy'"'"'s threads"
            label["wake_own"] = "… by another thread of the proxy"
            label["wake_other"] = "… by other processes or interrupts"
            label["idle"] = "idle window as long, no load: system calls (÷ the same requests)"
            label["idle_wake"] = "idle window: wake-ups (÷ the same requests)"
            label["threads"] = "threads (a count, not per request)"
            label["cpu"] = "CPU µs/request untraced, user+kernel (noisy)"
            label["cpu_traced"] = "CPU µs/request traced, user and kernel (noisy)"
            label["wakes_by"] = "tasks the proxy woke (client, backends, own threads)"
            label["faults"] = "minor page faults (untraced)"
            label["lost"] = "events perf lost (a count; must be 0)"
            for (i = 1; i <= nrows; i++) {
                printf "| %s |", label[rows[i]]
                for (j = 1; j <= n; j++) {
                    cell = ""
                    for (r = 1; r <= rounds; r++) cell = cell (r > 1 ? " / " : "") value(rows[i], sys[j], r)
                    printf " %s |", cell
                }
                printf "\n"
            }
        }' "$RESULTS"
}

# raw C PREFIX: the counts per request under one key prefix ("sc ", "th ", "wk ") for C
# connections, a row per key (sorted), systems as columns.
raw() {
    local c=$1 prefix=$2
    awk -F'\t' -v c="$c" -v p="$prefix" -v rounds="$ROUNDS" -v systems="${SYSTEMS[*]}" '
        $1 == c && index($4, p) == 1 { k = substr($4, length(p) + 1); v[$3, $2, k] = $5; keys[k] = 1 }
        END {
            n = split(systems, sys, " ")
            for (k in keys) {
                line = k "\t| " k " |"
                for (j = 1; j <= n; j++) {
                    cell = ""
                    for (r = 1; r <= rounds; r++) {
                        x = ((sys[j], r, k) in v) ? sprintf("%.3f", v[sys[j], r, k]) : "-"
                        cell = cell (r > 1 ? " / " : "") x
                    }
                    line = line " " cell " |"
                }
                print line
            }
        }' "$RESULTS" | sort -t$'\t' -k1,1 | cut -f2-
}

echo "Counted with \`bash benches/census.sh $REQUESTS $ROUNDS\`: $REQUESTS requests a window (h2load --h1 -t1 on CPU 1),"
echo "one worker each pinned to CPU 0, on processes warmed up at 200 connections; each cell is"
echo "round 1 / round 2$( [ "$ROUNDS" -gt 2 ] && echo " / ..."), per request over the traced window (perf record of"
echo "raw_syscalls:sys_enter/sys_exit, sched:sched_switch and sched:sched_waking for the proxy's threads,"
echo "sched:sched_waking of them system-wide; $(perf version)). The idle window is as long, with no load, just before:"
echo "the work the proxy does anyway (timers, closing idle upstream connections), not subtracted."
echo "rproxy and hyper-floor run tokio's current_thread runtime (rproxy's thread per core); rproxy-ws"
echo "(RPROXY_RUNTIME=work_stealing) and hyper-floor-mt (FLOOR_RUNTIME=multi_thread) the multi-thread one."
echo "pingora (benches/compare/pingora/) runs one worker thread (\"Pingora HTTP Pr\") on its work-stealing"
echo "runtime, beside threads of its own: the main one and \"Server\" (signals), and a \"Timer thread\" that"
echo "sleeps 10 ms at a time, loaded or idle (its clock_nanosleep calls are the timer calls in its column)."
echo "Thread names have their spaces written as \"_\" in the tables."
echo "Epoll batching and wake-ups depend on timing (a proxy that falls behind finds more events"
echo "per epoll_wait, sleeps less and is woken less), and tracing slows every system call (the CPU"
echo "rows), so those rows move from run to run; reads, writes and epoll_ctl per request do not."
for c in "${CONNECTIONS[@]}"; do
    echo
    table "$c"
done
for c in "${CONNECTIONS[@]}"; do
    echo
    echo "<details><summary>$c connections: every system call, by name and by thread, and who woke whom, per request</summary>"
    echo
    for section in "system call|sc " "system call [thread]|th " \
        "waker -> woken thread of the proxy|wk " "woken by the proxy|wb " \
        "µs inside each system call (traced)|usc " "idle window, system call|idle sc "; do
        head_row "${section%%|*}"
        raw "$c" "${section#*|}"
        echo
    done
    echo "</details>"
done
