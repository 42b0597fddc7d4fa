#!/usr/bin/env bash
# perf/bench_eventloop.sh — the event-loop benchmarks of issue 7, in one run:
#
#   1. PING throughput, facewired (measured with bin/fwload) against redis-server (measured
#      with redis-benchmark -t ping_mbulk) at the same connections x pipeline depth:
#      50x1, 50x16, 1000x1. Rows alternate between the two servers so that load from other
#      processes on the machine hits both alike; the ratio is what to read, not the rps.
#   2. 10,000 idle connections held open (by a second fwload): facewired's RSS growth per
#      connection, and PING p99 at 50x1 with them open against without.
#
# It starts its own facewired (port 0: a free port) and its own redis-server (a free port,
# no persistence) on 127.0.0.1, stops both at the end, prints a table and records nothing:
# paste the figures and this command line into docs/performance.md yourself.
#
# Usage: perf/bench_eventloop.sh            (after `make`; about 1 minute)
#   DUR=5        seconds per measurement
#   REPEAT=1     measurements per row and server; the best of them is printed
#   ROWS="50x1 50x16 1000x1"  the rows of part 1 (connections x pipeline depth)
#   IDLE=10000   idle connections for part 2; IDLE=0 skips part 2
#   IDLE_PAIRS=3 without/with measurements in part 2 (medians compared)
#   SKIP_REDIS=1 only facewired
#   NICE=-10     run both servers and all clients at this nice level (negative needs root):
#                other work on the machine then disturbs the figures less; both sides alike
#   FACEWIRED_ARGS="..."  extra server flags
# Needs: bin/facewired, bin/fwload, redis-server and redis-benchmark (Debian redis-server,
# redis-tools), and a descriptor limit (ulimit -Hn) above IDLE + 100 for the server.
set -euo pipefail
cd "$(dirname "$0")/.."
top=$(pwd)

DUR=${DUR:-5}
REPEAT=${REPEAT:-1}
IDLE=${IDLE:-10000}
SKIP_REDIS=${SKIP_REDIS:-0}
NICE=${NICE:-0}
FACEWIRED_ARGS=${FACEWIRED_ARGS:-}
read -r -a ROWS <<<"${ROWS:-50x1 50x16 1000x1}"

# Every process this script measures runs through $run, so NICE applies to all of them.
run=(nice -n "$NICE")
FWLOAD=$top/bin/fwload
FACEWIRED=$top/bin/facewired
die() { echo "bench_eventloop: $*" >&2; exit 1; }
[ -x "$FWLOAD" ] || die "bin/fwload missing: run make"
[ -x "$FACEWIRED" ] || die "bin/facewired missing: run make"
if [ "$SKIP_REDIS" != 1 ]; then
    command -v redis-server >/dev/null || die "redis-server missing (apt-get install redis-server) or SKIP_REDIS=1"
    command -v redis-benchmark >/dev/null || die "redis-benchmark missing (apt-get install redis-tools)"
fi

# The server holds IDLE + a few hundred descriptors; fwload raises its own limit.
hard=$(ulimit -Hn)
if [ "$hard" != unlimited ] && [ "$hard" -lt $((IDLE + 1200)) ]; then
    die "ulimit -Hn is $hard, below IDLE+1200=$((IDLE + 1200)); lower IDLE or raise the hard limit"
fi
ulimit -n "$hard"

tmp=$(mktemp -d)
fw_pid='' redis_pid='' hold_pid=''
cleanup() {
    # Only the processes this script started, by pid.
    for p in $hold_pid $fw_pid $redis_pid; do kill "$p" 2>/dev/null || true; done
    for p in $hold_pid $fw_pid $redis_pid; do wait "$p" 2>/dev/null || true; done
    rm -rf "$tmp"
}
trap cleanup EXIT

# wait_for SECONDS CMD...: poll until CMD succeeds (servers starting up), or fail.
wait_for() {
    local n=$(($1 * 10)); shift
    while [ $n -gt 0 ]; do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.1; n=$((n - 1))
    done
    return 1
}

# A loopback port nobody listens on (redis cannot pick its own the way facewired can), below
# the kernel's ephemeral range so that no client socket holds it either.
free_port() {
    local p lo
    lo=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range)
    for _ in $(seq 100); do
        p=$((10000 + RANDOM % (lo > 12000 ? lo - 10000 : 2000)))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return 0; fi
    done
    return 1
}

json_field() { sed -n "s/.*\"$1\": \([0-9.]*\).*/\1/p"; }
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; } # utime + stime, in clock ticks
hz=$(getconf CLK_TCK)
us_per_req() { awk -v a="$1" -v b="$2" -v n="$3" -v hz="$hz" 'BEGIN { if (n > 0) printf "%.2f", (b - a) * 1e6 / hz / n; else print "-" }'; }
vmrss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a ~ /^[0-9.]+$/ && b ~ /^[0-9.]+$/ && b > 0) printf "%.2f", a / b; else print "-" }'; }
max_of() { awk -v a="$1" -v b="$2" 'BEGIN { print (a + 0 >= b + 0) ? a : b }'; }

# ---- servers ---------------------------------------------------------------------------------
# start_facewired NAME MODELS_DIR: a fresh server on a free port; sets fw_pid and fw_port.
start_facewired() {
    local log=$tmp/facewired-$1.log
    mkdir -p "$tmp/data-$1"
    # shellcheck disable=SC2086  # FACEWIRED_ARGS is a list of flags
    "${run[@]}" "$FACEWIRED" --listen 127.0.0.1:0 --data "$tmp/data-$1" --models "$2" \
        --max-connections $((IDLE + 1100)) --idle-timeout-ms 0 $FACEWIRED_ARGS >"$log" 2>&1 &
    fw_pid=$!
    wait_for 30 grep -q 'msg="listening"' "$log" || { cat "$log" >&2; die "facewired did not start"; }
    fw_port=$(sed -n 's/.*msg="listening" addr=[^ ]*:\([0-9]*\).*/\1/p' "$log" | head -n 1)
    [ -n "$fw_port" ] || die "cannot read facewired's port from its log"
}
stop_facewired() {
    kill "$fw_pid" 2>/dev/null || true
    wait "$fw_pid" 2>/dev/null || true
    fw_pid=''
}
# server_connections: the server's own count (INFO), when bin/fwcat is there.
server_connections() {
    [ -x "$top/bin/fwcat" ] || { echo '?'; return; }
    "$top/bin/fwcat" -p "$fw_port" info 2>/dev/null | sed -n 's/^connections: //p'
}
server_has() { local n; n=$(server_connections); [ "$n" != '?' ] && [ "${n:-0}" -ge "$1" ]; }

start_facewired throughput "$top/models"

if [ "$SKIP_REDIS" != 1 ]; then
    redis_port=$(free_port) || die "no free port for redis"
    "${run[@]}" redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
        --maxclients $((IDLE + 1100)) --logfile "$tmp/redis.log" --dir "$tmp" &
    redis_pid=$!
    wait_for 20 redis-cli -p "$redis_port" ping || { tail -n 5 "$tmp/redis.log" >&2; die "redis-server did not start"; }
fi

echo "bench_eventloop: $(date -u +%FT%TZ), $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "  facewired pid $fw_pid port $fw_port; redis ${redis_pid:-skipped} port ${redis_port:--}; ${DUR}s per run, best of $REPEAT, nice $NICE"

# timed CMD...: runs CMD; its user+system CPU seconds go to $tmp/time (when /usr/bin/time
# exists), to tell whether a client, rather than its server, limited a row.
timed() {
    rm -f "$tmp/time"
    if [ -x /usr/bin/time ]; then /usr/bin/time -f '%U %S' -o "$tmp/time" "$@"; else "$@"; fi
}
client_us() { [ -s "$tmp/time" ] || { echo -; return; }; awk -v n="$1" 'END { if (n > 0) printf "%.2f", ($1 + $2) * 1e6 / n; else print "-" }' "$tmp/time"; }

# fw_run C P EXTRA...: one fwload run, the JSON line on stdout.
fw_run() {
    local c=$1 p=$2; shift 2
    timed "${run[@]}" "$FWLOAD" -p "$fw_port" -c "$c" -P "$p" -d "$DUR" --op ping --json --no-progress "$@"
}

# redis_run C P N: "rps p99_ms" of redis-benchmark's PING_MBULK (its --csv line).
redis_run() {
    timed "${run[@]}" redis-benchmark -p "$redis_port" -t ping_mbulk -c "$1" -P "$2" -n "$3" --csv |
        tr -d '"' | awk -F, '$1 == "PING_MBULK" { print $2, $7 }'
}

# Warm-up: the server's first connections pay for page faults and allocator growth.
"${run[@]}" "$FWLOAD" -p "$fw_port" -c 50 -P 16 -n 200000 --json --no-progress >/dev/null 2>&1 || true

# ---- 1. PING throughput ---------------------------------------------------------------------
# Besides rps, each server's CPU time per request (user + system, from /proc/PID/stat over
# the run): on a machine shared with other work the rps of a run swings with their load, but
# the CPU a server spends per request hardly does, so it is the steadier comparison.
echo
echo "1. PING throughput: rps, p99 latency (us), CPU per request (us) of the server and of its client"
printf "  %-9s %10s %8s %6s %6s | %10s %8s %6s %6s | %9s %9s %6s\n" "conns x P" "facewired" "p99" "cpu" "client" \
    "redis" "p99" "cpu" "client" "rps ratio" "cpu ratio" "errors"
for row in "${ROWS[@]}"; do
    c=${row%x*} p=${row#*x}
    best_fw=0 fw_p99=0 fw_cpu=- fw_cli=- best_rd=0 rd_p99=0 rd_cpu=- rd_cli=- errs=0
    for _ in $(seq "$REPEAT"); do
        t0=$(cpu_ticks "$fw_pid")
        out=$(fw_run "$c" "$p") || true
        t1=$(cpu_ticks "$fw_pid")
        rps=$(echo "$out" | json_field rps); rps=${rps:-0}
        e=$(echo "$out" | json_field errors); errs=$((errs + ${e:-1}))
        if [ "$(max_of "$rps" "$best_fw")" = "$rps" ]; then
            best_fw=$rps; fw_p99=$(echo "$out" | json_field p99_us)
            fw_cpu=$(us_per_req "$t0" "$t1" "$(echo "$out" | json_field answered)")
            fw_cli=$(client_us "$(echo "$out" | json_field answered)")
        fi
        if [ "$SKIP_REDIS" != 1 ]; then
            # As many requests as facewired answered in DUR, so both run about as long.
            n=$(awk -v r="$rps" -v d="$DUR" 'BEGIN { n = int(r * d); if (n < 100000) n = 100000; print n }')
            t0=$(cpu_ticks "$redis_pid")
            read -r rrps rp99 < <(redis_run "$c" "$p" "$n") || true
            t1=$(cpu_ticks "$redis_pid")
            rrps=${rrps:-0}
            if [ "$(max_of "$rrps" "$best_rd")" = "$rrps" ]; then
                best_rd=$rrps; rd_p99=$(awk -v m="${rp99:-0}" 'BEGIN { printf "%.0f", m * 1000 }')
                rd_cpu=$(us_per_req "$t0" "$t1" "$n")
                rd_cli=$(client_us "$n")
            fi
        fi
    done
    printf "  %-9s %10.0f %8.0f %6s %6s | %10.0f %8s %6s %6s | %9s %9s %6s\n" "${c}x${p}" "$best_fw" "$fw_p99" \
        "$fw_cpu" "$fw_cli" "$best_rd" "$rd_p99" "$rd_cpu" "$rd_cli" "$(ratio "$best_fw" "$best_rd")" \
        "$(ratio "$rd_cpu" "$fw_cpu")" "$errs"
done
echo "  rps ratio = facewired / redis (goal >= 1); cpu ratio = redis / facewired (> 1: facewired is cheaper)"

# ---- 2. idle connections --------------------------------------------------------------------
[ "$IDLE" -gt 0 ] || exit 0
# A fresh server, and one without models: both the 1000x1 row and model loading leave freed
# but resident memory in the heap, which new connections reuse without growing the RSS (with
# models loaded, 10,000 connections showed ~8 bytes each: the measurement saw nothing). PING
# and idle connections never touch the models.
stop_facewired
mkdir -p "$tmp/no-models"
start_facewired idle "$tmp/no-models"
echo
echo "2. $IDLE idle connections (a fresh facewired without models, pid $fw_pid port $fw_port)"

# hold_start: a second fwload opens IDLE connections and keeps them until hold_stop; returns
# once the server itself counts them (fwload sees a connection when the kernel completes it,
# before the server has accepted it). Sets held and seen.
hold_start() {
    "$FWLOAD" -p "$fw_port" -c 0 --idle-connections "$IDLE" -d $((DUR * 4 + 120)) --json --no-progress \
        >"$tmp/hold.json" 2>"$tmp/hold.err" &
    hold_pid=$!
    if ! wait_for 60 grep -q 'connections established' "$tmp/hold.err"; then
        cat "$tmp/hold.err" >&2; die "the idle connections were not established in 60 s"
    fi
    held=$(sed -n 's/^fwload: \([0-9]*\) of .*/\1/p' "$tmp/hold.err")
    wait_for 30 server_has "${held:-0}" || echo "  warning: the server counts $(server_connections) connections, not $held"
    seen=$(server_connections)
}
hold_stop() {
    kill -INT "$hold_pid" 2>/dev/null || true
    wait "$hold_pid" 2>/dev/null || true
    hold_pid=''
    hold_errors=$((hold_errors + $(json_field errors <"$tmp/hold.json" || echo 1)))
    # The server drops them when it reads the EOFs; wait so the next "without" is clean.
    wait_for 30 server_has_at_most 1 || true
}
server_has_at_most() { local n; n=$(server_connections); [ "$n" = '?' ] || [ "${n:-0}" -le "$1" ]; }

# Alternate without/with IDLE_PAIRS times, so drift in the machine's load hits both sides;
# compare the medians. The RSS is read around the first hold only (later ones reuse memory).
IDLE_PAIRS=${IDLE_PAIRS:-3}
hold_errors=0
fw_run 50 1 >/dev/null || true # warm-up of this server
p99_without=() p99_with=() rps_without=() rps_with=()
for i in $(seq "$IDLE_PAIRS"); do
    out=$(fw_run 50 1) || true
    p99_without+=("$(echo "$out" | json_field p99_us)"); rps_without+=("$(echo "$out" | json_field rps)")
    [ "$i" = 1 ] && rss0=$(vmrss_kib "$fw_pid")
    hold_start
    [ "$i" = 1 ] && { rss1=$(vmrss_kib "$fw_pid"); held1=$held seen1=$seen; }
    out=$(fw_run 50 1) || true
    p99_with+=("$(echo "$out" | json_field p99_us)"); rps_with+=("$(echo "$out" | json_field rps)")
    hold_stop
done
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

printf "  connections held: %s of %s, server counted %s (errors reported by the holders: %s)\n" \
    "${held1:-0}" "$IDLE" "$seen1" "$hold_errors"
printf "  facewired VmRSS: %s KiB -> %s KiB: %s bytes per connection (goal <= 4096)\n" "$rss0" "$rss1" \
    "$(awk -v a="$rss0" -v b="$rss1" -v n="${held1:-0}" 'BEGIN { if (n > 0) printf "%.0f", (b - a) * 1024 / n; else print "-" }')"
printf "  PING 50x1 p99 (us) without: %s  median %s   (rps %s)\n" "${p99_without[*]}" "$(median "${p99_without[@]}")" "${rps_without[*]}"
printf "  PING 50x1 p99 (us) with:    %s  median %s   (rps %s)\n" "${p99_with[*]}" "$(median "${p99_with[@]}")" "${rps_with[*]}"
printf "  p99 ratio with/without (medians): %s (goal <= 2)\n" "$(ratio "$(median "${p99_with[@]}")" "$(median "${p99_without[@]}")")"
