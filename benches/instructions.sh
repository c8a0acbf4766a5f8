#!/usr/bin/env bash
# User-space instructions per proxied request, counted by valgrind (cachegrind): rproxy, nginx,
# HAProxy, `hyper_floor` (the least a hyper proxy does; examples/hyper_floor.rs) and a small
# Pingora proxy (benches/compare/pingora/, built here by benches/compare/build_pingora.sh), one
# worker each, round-robin over two keep-alive nginx backends, h2load --h1 with 50 connections;
# rproxy-xff, rproxy writing X-Forwarded-For alone and no request id (the header work the others
# do here); and rproxy-observed, rproxy with metrics (an admin listener), an access log file and 1 s health
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
valgrind_setup

declare -A PER
for s in rproxy rproxy-xff nginx haproxy hyper-floor pingora rproxy-observed rproxy-ws; do
    instructions_per_request "$s" "$REQUESTS"
    PER[$s]=$PER_REQUEST
    echo "$s: ${PER[$s]} instructions/request" >&2
done
echo "| system | instructions/request | vs nginx |"
echo "|---|---|---|"
for s in rproxy rproxy-xff nginx haproxy hyper-floor pingora; do
    printf '| %s | %s | %.2fx |\n' "$s" "${PER[$s]}" "$(awk -v a="${PER[$s]}" -v b="${PER[nginx]}" 'BEGIN {print a / b}')"
done
printf '\nObserving (rproxy-observed) costs %s instructions per request against %s plain: %.2fx.\n' \
    "${PER[rproxy-observed]}" "${PER[rproxy]}" "$(awk -v a="${PER[rproxy-observed]}" -v b="${PER[rproxy]}" 'BEGIN {print a / b}')"
printf 'On tokio'"'"'s work-stealing runtime (rproxy-ws, the arrangement before thread per core): %s instructions per request, %.2fx thread per core'"'"'s.\n' \
    "${PER[rproxy-ws]}" "$(awk -v a="${PER[rproxy-ws]}" -v b="${PER[rproxy]}" 'BEGIN {print a / b}')"
