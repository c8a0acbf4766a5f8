#!/usr/bin/env bash
# How well each proxy's instructions run: per proxied request, the user-space instructions and
# the misses of cachegrind's simulated caches (32 KiB 8-way L1 instruction and data caches, and
# as the last level one core's L2, 1 MiB 8-way here, read from sysfs), for rproxy,
# hyper-floor, nginx, HAProxy and Pingora, as benches/instructions.sh runs them, at 50 and 200
# client connections. The L2 is the level that matters: each proxy runs on one core, and the
# shared L3 (32 MiB here) holds every proxy's working set, so misses in a simulated L3 were
# all about 0. L2 misses grow with the connections in flight, whose state the L2 stops
# holding; they are what the CPU time per request at 200 connections has above the
# instruction count. The
# simulation has no prefetcher, no micro-op cache and no out-of-order core, so a miss count is
# a comparison between proxies, not a cycle count; it is what this machine, which has no
# hardware counters, can tell of the CPU time per request that the instruction count leaves
# unexplained.
#
#   bash benches/cache_misses.sh [REQUESTS]     (default 20000; about 12 minutes)
#
# Each figure is the difference between fresh processes serving REQUESTS/5 and REQUESTS
# requests, divided by the difference, as instructions.sh does. Installs valgrind, nginx,
# haproxy and nghttp2-client if missing. Loopback only; everything started is stopped by pid.
set -euo pipefail
REQUESTS=${1:-20000}
cd "$(dirname "$0")/.."

source benches/common.sh
valgrind_setup
export CACHE_SIM=yes
# One core's L2 as cachegrind's last level: size,ways,line (cachegrind wants a power-of-two
# number of sets, as the usual L2 geometries give).
l2=/sys/devices/system/cpu/cpu0/cache/index2
if [ -r "$l2/size" ]; then
    kib=$(tr -d K < "$l2/size")
    export CACHE_LL="$((kib * 1024)),$(cat "$l2/ways_of_associativity"),$(cat "$l2/coherency_line_size")"
fi

SYSTEMS=(rproxy hyper-floor nginx haproxy pingora)
declare -A ROW
for CONNS in 50 200; do
    for s in "${SYSTEMS[@]}"; do
        instructions "$s" $((REQUESTS / 5))
        read -r ir0 i10 d10 ll0 <<< "$IR $I1 $D1 $LL"
        instructions "$s" "$REQUESTS"
        n=$((REQUESTS - REQUESTS / 5))
        ROW[$CONNS,$s]=$(awk -v n="$n" -v a="$((IR - ir0))" -v b="$((I1 - i10))" -v c="$((D1 - d10))" -v d="$((LL - ll0))" \
            'BEGIN {printf "%.0f | %.0f | %.0f | %.1f", a / n, b / n, c / n, d / n}')
        echo "$CONNS connections, $s: ${ROW[$CONNS,$s]}" >&2
    done
done
echo "| connections | system | instructions | L1 instruction misses | L1 data misses | L2 misses (${CACHE_LL:-default last level}) |"
echo "|---|---|---|---|---|---|"
for CONNS in 50 200; do
    for s in "${SYSTEMS[@]}"; do
        echo "| $CONNS | $s | ${ROW[$CONNS,$s]} |"
    done
done
