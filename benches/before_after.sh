#!/usr/bin/env bash
# Before and after a change, in one run: the release binary of a git revision BASE against the
# working tree's (target/release/rproxy), measured interleaved in ROUNDS rounds (medians):
# user-space instructions per proxied request under valgrind, as benches/instructions.sh counts
# them for rproxy, and the resident memory that ~10,000 idle keep-alive client connections add,
# read 1 s and 5 s after the last opened, as benches/compare/run.sh measures it, and again at
# 5 s with mimalloc giving freed memory back at once (MIMALLOC_PURGE_DELAY=0). For a change
# that must cost no more than before (a refactor with no behaviour change): one run, on one
# machine at one time, so drift hits both sides alike. Prints a Markdown table: the median,
# lowest and highest reading of each side, and after / before of the medians and of the lowest.
# Idle memory moves by a factor of two from reading to reading here (what the allocator has
# freed but not yet given back), less so with MIMALLOC_PURGE_DELAY=0; instructions by well
# under 1%.
#
#   BASE_TARGET=DIR bash benches/before_after.sh BASE [REQUESTS] [ROUNDS]   (20000, 9 rounds)
#
# BASE is built in a temporary `git worktree` (removed at the end) with its own target dir,
# BASE_TARGET (default: a temporary one, so a full build), where its binary is also kept as
# rproxy-SHA: a later run with the same BASE_TARGET and rustc does not build BASE again. Both
# are built by one command (common.sh's RELEASE_BUILD, the binary alone).
# Installs valgrind, nginx, nghttp2-client (h2load) and curl if missing. Loopback only;
# everything started here is stopped by its pid.
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: bash benches/before_after.sh BASE [REQUESTS] [ROUNDS]" >&2; exit 2; }
BASE=$1
REQUESTS=${2:-20000}
ROUNDS=${3:-9}
cd "$(dirname "$0")/.."
ROOT=$PWD
STARTED=$(date +%s)
# The idle test opens as many connections as compare/run.sh does, so the figures compare with
# benches/RESULTS.md (there HAProxy's two descriptors per connection set the number).
ulimit -n "$(ulimit -Hn)"
IDLE_N=$(( ($(ulimit -Hn) - 200) / 2 ))
[ "$IDLE_N" -gt 10000 ] && IDLE_N=10000

BASE_SHA=$(git rev-parse --verify --quiet "$BASE^{commit}") || { echo "$BASE: not a commit" >&2; exit 2; }
BEFORE_LABEL=$(git rev-parse --short "$BASE_SHA")
# Named before anything runs; target/ is ignored, so only a change to the sources counts.
if [ -n "$(git status --porcelain)" ]; then
    AFTER_LABEL="working tree"
else
    AFTER_LABEL=$(git rev-parse --short HEAD)
fi

# Builds the working tree (target/release/rproxy and the tcp_bench client) and makes $DIR.
source benches/common.sh
install_missing valgrind nginx nghttp2-client curl

remove_base_tree() {
    if [ -d "$DIR/base" ]; then git -C "$ROOT" worktree remove --force "$DIR/base" || true; fi
}
trap 'remove_base_tree; cleanup' EXIT

# BASE's binary, built by the same command as the working tree's (common.sh), once per
# BASE_TARGET, commit, compiler and command. The worktree's files are new on every run, and
# cargo would rebuild (and link with fat LTO) anything newer than its output: hence the copy
# kept by commit, with a stamp of what built it.
BASE_TARGET=${BASE_TARGET:-$DIR/base-target}
mkdir -p "$BASE_TARGET"
BASE_TARGET=$(cd "$BASE_TARGET" && pwd)
BEFORE_BIN="$BASE_TARGET/rproxy-$BASE_SHA"
STAMP="$(rustc -vV)
${RELEASE_BUILD[*]} --locked"
if [ -x "$BEFORE_BIN" ] && [ "$(cat "$BEFORE_BIN.stamp" 2>/dev/null)" = "$STAMP" ]; then
    echo "before: $BEFORE_LABEL, built earlier: $BEFORE_BIN" >&2
else
    echo "before: building $BEFORE_LABEL in $BASE_TARGET (fat LTO: minutes)" >&2
    git worktree add --quiet --detach "$DIR/base" "$BASE_SHA" >&2
    (cd "$DIR/base" && CARGO_TARGET_DIR="$BASE_TARGET" "${RELEASE_BUILD[@]}" --locked)
    cp "$BASE_TARGET/release/rproxy" "$BEFORE_BIN.new"
    echo "$STAMP" > "$BEFORE_BIN.stamp"
    mv "$BEFORE_BIN.new" "$BEFORE_BIN"
    remove_base_tree
fi
declare -A BIN=([before]=$BEFORE_BIN [after]=$ROOT/target/release/rproxy)
# sides ROUND: the order of a round: before first in odd rounds, after first in even ones.
sides() { if (($1 % 2)); then echo before after; else echo after before; fi; }

# Idle memory first, each reading on a fresh process pinned to CPU 0 with backends on CPU 1,
# as in compare/run.sh (idle_kib runs the client on CPU 1). Unlike there, no request comes
# before: the garbage of a few requests, freed but still resident when the reading starts, is
# given back while the connections open and made readings at 5 s negative here.
start_backends backends-idle 1

# idle_reading SIDE NAME [VAR=VALUE...]: sets KIB to idle_kib's two readings ("at1 at5") for a
# fresh process of SIDE's binary with that environment.
idle_reading() {
    local side=$1 name=$2 p pid
    shift 2
    p=$(port)
    rproxy_conf "$p" 1 "$B1" "$B2" off > "$DIR/$name.toml"
    env "$@" taskset -c 0 "${BIN[$side]}" -c "$DIR/$name.toml" 2>"$DIR/$name.log" &
    pid=$!
    PIDS+=("$pid")
    wait_port "$p"
    KIB=$(idle_kib "$pid" "$p" "$IDLE_N")
    stop_pid "$pid"
}

# Besides, a reading with mimalloc giving freed memory back at once rather than after 10 ms
# (which it does on a later allocator call, so a process gone idle may keep it): nearer what
# the connections hold. Between two builds of one commit, on this shared machine, the ratio of
# the medians of nine readings at 5 s was 0.84 in one run and 1.25 in another; with this one,
# 1.07.
declare -A IDLE1 IDLE5 LIVE
for round in $(seq "$ROUNDS"); do
    for side in $(sides "$round"); do
        idle_reading "$side" "idle-$side-$round"
        IDLE1[$side]+="${KIB% *} "
        IDLE5[$side]+="${KIB#* } "
        echo "round $round $side: $IDLE_N idle keep-alive connections cost ${KIB% *} KiB after 1 s, ${KIB#* } KiB after 5 s" >&2
        idle_reading "$side" "live-$side-$round" MIMALLOC_PURGE_DELAY=0
        LIVE[$side]+="${KIB#* } "
        echo "round $round $side: the same with MIMALLOC_PURGE_DELAY=0: ${KIB#* } KiB after 5 s" >&2
    done
done

# Instructions per request, as benches/instructions.sh counts them for rproxy: its backends
# (not pinned), its configuration, its h2load run.
start_backends backends
declare -A IPR
for round in $(seq "$ROUNDS"); do
    for side in $(sides "$round"); do
        instructions_per_request rproxy "$REQUESTS" "${BIN[$side]}"
        IPR[$side]+="$PER_REQUEST "
        echo "round $round $side: $PER_REQUEST instructions/request" >&2
    done
done

# numbers WORDS [SCALE]: the numbers in WORDS (KiB readings: SCALE = IDLE_N turns them into
# bytes per connection), one a line, rounded.
numbers() {
    tr ' ' '\n' <<< "$1" | grep . | awk -v n="${2:-0}" '{v = sprintf("%.0f", n ? $1 * 1024 / n : $1); print v == "-0" ? 0 : v}'
}
# cell WORDS [SCALE]: "median (lowest to highest)".
cell() {
    local sorted
    sorted=$(numbers "$@" | sort -n)
    echo "$(median <<< "$sorted") ($(head -1 <<< "$sorted") to $(tail -1 <<< "$sorted"))"
}
# div A B: A / B, or n/a when B is not above zero.
div() { awk -v a="$1" -v b="$2" 'BEGIN {if (b > 0) printf "%.2f", a / b; else print "n/a"}'; }
# row WHAT ARRAY [SCALE]: before, after, and after / before of the medians and of the lowest
# readings (idle memory's noise is mostly memory freed but not yet given back, which only adds,
# so the lowest reading moves least).
row() {
    local -n of=$2
    local b a
    b=$(numbers "${of[before]}" "${3:-}" | sort -n)
    a=$(numbers "${of[after]}" "${3:-}" | sort -n)
    echo "| $1 | $(cell "${of[before]}" "${3:-}") | $(cell "${of[after]}" "${3:-}") |" \
        "$(div "$(median <<< "$a")" "$(median <<< "$b")") ($(div "$(head -1 <<< "$a")" "$(head -1 <<< "$b")")) |"
}

echo "| median (lowest to highest) | before ($BEFORE_LABEL) | after ($AFTER_LABEL) | ratio of medians (of lowest) |"
echo "|---|---|---|---|"
row "user-space instructions per request" IPR
row "bytes per idle keep-alive connection, 1 s after the last opened" IDLE1 "$IDLE_N"
row "bytes per idle keep-alive connection, 5 s after" IDLE5 "$IDLE_N"
row "the same, freed memory given back at once (MIMALLOC_PURGE_DELAY=0)" LIVE "$IDLE_N"
echo
echo "\`bash benches/before_after.sh $BASE $REQUESTS $ROUNDS\` on $(date -u +%Y-%m-%d), $(nproc) CPUs:"
echo "$ROUNDS interleaved rounds. Instructions: valgrind (cachegrind), h2load --h1 -c50,"
echo "$((REQUESTS / 5)) and $REQUESTS requests on fresh processes, the difference per request."
echo "Memory: $IDLE_N idle keep-alive client connections (one GET each) on a fresh process, the"
echo "resident memory they add per connection. Every reading (instructions/request; KiB at 1 s;"
echo "KiB at 5 s; KiB at 5 s with MIMALLOC_PURGE_DELAY=0):"
echo
for side in before after; do
    echo "- $side: ${IPR[$side]% }; ${IDLE1[$side]% }; ${IDLE5[$side]% }; ${LIVE[$side]% }"
done
echo >&2 "took $(( $(date +%s) - STARTED )) s"
