#!/usr/bin/env bash
# perf/bench_overload.sh — issue 4 §6: facewired under open-loop overload, in one run.
#
# For each workload (TEST_SLEEP of SLEEP_MS on WORKERS workers, and a real EMBED of IMAGE):
#   1. capacity: closed loop, enough requests in flight to keep every worker busy; the OK
#      answers per second are the capacity. Measured before row 2 (its rate is 3x that) and
#      again after it, on the same server: the higher of the two is what goodput is compared
#      with, since other work on a shared machine moves it (up to 2x within a minute on our
#      2-core VM; the table flags a capacity that moved by more than 20%);
#   2. bounded: the default server (bounded queues) under an open loop of LOAD_X x capacity
#      for DUR seconds, every request carrying a deadline (header deadline_ms). Goals: OK
#      answers per second >= 90% of capacity, p99 of the OK answers within the deadline,
#      BUSY answers' p99 <= 1 ms;
#   3. unbounded: the same load against a server whose queues are made huge and whose
#      deadlines are off (what a naive server does): every request is queued, so the latency
#      grows for as long as the overload lasts. Its run only ends once all of them have been
#      answered, about (LOAD_X - 1) x DUR seconds after the sending stops. Its requests carry
#      no deadline, but fwload still counts its OK answers later than row 2's deadline: the
#      "useful" goodput is the OK answers per second that came within it.
# Servers: a free port on 127.0.0.1, OPENBLAS_NUM_THREADS=1, models loaded, --enable-test-ops;
# per workload one for rows 1 and 2 (so row 2 runs warm, with run-time estimates from row 1,
# as on a server that has been up for a while) and a fresh one for row 3. The server's own
# counters (jobs run, expired while queued, timed out while running) are printed under the
# table. It records nothing (KEEP=DIR keeps fwload's JSON and the servers' INFO and logs there):
# paste the figures and the command line into docs/performance.md.
#
# Latency is measured by bin/fwload from each request's intended send time (open loop: no
# coordinated omission). "from send" columns start when fwload handed the request to the
# kernel instead: they leave out the pacer's own lateness (its 1 ms tick) and are the figure
# to read for "BUSY is answered at once".
#
# Usage: perf/bench_overload.sh          (after `make`; about a minute with the defaults)
#   KINDS="sleep embed"     workloads to run
#   WORKERS=2               --workers of every server
#   SERVER_ARGS=""          more facewired flags for every server, e.g. "--worker-yield-us 0"
#                           to see the BUSY tail without the workers' CPU hand-backs
#   SLEEP_MS=20             TEST_SLEEP duration
#   FW_SHARED=../shared     where eval/ is; IMAGE=$FW_SHARED/eval/barack_obama_3.jpg
#   LOAD_X=3                offered load, in multiples of the measured capacity
#   DUR=5                   seconds of sending per open-loop row
#   CAP_DUR=5               seconds of the capacity measurement
#   SLEEP_DEADLINE_MS=200   deadline_ms of each TEST_SLEEP request (10 runs' worth)
#   EMBED_DEADLINE_MS=1000  deadline_ms of each EMBED request
#   CONNS=16 PIPE=256       fwload's connections x requests in flight per connection in
#                           the open-loop rows (enough that requests never wait for a slot)
#   NICE=0                  run the servers and fwload at this nice level (negative needs
#                           root): other work on the machine then disturbs the figures less
#   BIN=bin                 where facewired, fwload and fwcat are (e.g. a build of a given
#                           commit, while others rebuild bin/ under your feet); models/ and
#                           the rest still come from this tree
# Needs: bin/facewired, bin/fwload, bin/fwcat (make), python3 (the table), models/.
set -euo pipefail
cd "$(dirname "$0")/.."
top=$(pwd)

KINDS=${KINDS:-sleep embed}
WORKERS=${WORKERS:-2}
SERVER_ARGS=${SERVER_ARGS:-}
SLEEP_MS=${SLEEP_MS:-20}
FW_SHARED=${FW_SHARED:-../shared}
IMAGE=${IMAGE:-$FW_SHARED/eval/barack_obama_3.jpg}
LOAD_X=${LOAD_X:-3}
DUR=${DUR:-5}
CAP_DUR=${CAP_DUR:-5}
SLEEP_DEADLINE_MS=${SLEEP_DEADLINE_MS:-200}
EMBED_DEADLINE_MS=${EMBED_DEADLINE_MS:-1000}
CONNS=${CONNS:-16}
PIPE=${PIPE:-256}
NICE=${NICE:-0}
run=(nice -n "$NICE")

BIN=${BIN:-$top/bin}
FWLOAD=$BIN/fwload
FACEWIRED=$BIN/facewired
FWCAT=$BIN/fwcat
die() { echo "bench_overload: $*" >&2; exit 1; }
for b in "$FWLOAD" "$FACEWIRED" "$FWCAT"; do [ -x "$b" ] || die "$b missing: run make"; done
command -v python3 >/dev/null || die "python3 missing (it prints the table)"
case " $KINDS " in *" embed "*) [ -r "$IMAGE" ] || die "cannot read $IMAGE (set FW_SHARED or IMAGE)";; esac

tmp=$(mktemp -d)
fw_pid=''
cleanup() {
    # Only the server this script started, by pid.
    if [ -n "$fw_pid" ]; then kill "$fw_pid" 2>/dev/null || true; wait "$fw_pid" 2>/dev/null || true; fi
    if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP" && cp -r "$tmp"/. "$KEEP"/; fi
    rm -rf "$tmp"
}
trap cleanup EXIT

wait_for() {
    local n=$(($1 * 10)); shift
    while [ $n -gt 0 ]; do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.1; n=$((n - 1))
    done
    return 1
}
loadavg() { cut -d' ' -f1 /proc/loadavg; }
json_num() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2], {}, d))' "$@"; }

# start_server NAME FLAGS...: a fresh facewired on a free port; sets fw_pid and fw_port.
start_server() {
    local name=$1; shift
    local log=$tmp/facewired-$name.log
    mkdir -p "$tmp/data-$name"
    OPENBLAS_NUM_THREADS=1 "${run[@]}" "$FACEWIRED" --listen 127.0.0.1:0 --data "$tmp/data-$name" \
        --models "$top/models" --enable-test-ops --workers "$WORKERS" $SERVER_ARGS "$@" >"$log" 2>&1 &
    fw_pid=$!
    wait_for 30 grep -q 'msg="listening"' "$log" || { cat "$log" >&2; die "facewired did not start"; }
    grep -q 'msg="models loaded"' "$log" || { cat "$log" >&2; die "facewired did not load the models"; }
    fw_port=$(sed -n 's/.*msg="listening" addr=[^ ]*:\([0-9]*\).*/\1/p' "$log" | head -n 1)
    [ -n "$fw_port" ] || die "cannot read facewired's port from its log"
}
stop_server() {
    kill "$fw_pid" 2>/dev/null || true
    wait "$fw_pid" 2>/dev/null || true
    fw_pid=''
}

# load KIND FWLOAD-ARGS...: one fwload run of KIND's op against the current server, its JSON
# line on stdout. Exit status 3 (the run had errors, e.g. timeouts) still has a report.
load() {
    local kind=$1; shift
    local op=(--op sleep --sleep-ms "$SLEEP_MS")
    [ "$kind" = embed ] && op=(--op embed --image "$IMAGE")
    local rc=0
    "${run[@]}" "$FWLOAD" -p "$fw_port" "${op[@]}" --json --no-progress "$@" || rc=$?
    [ $rc = 0 ] || [ $rc = 3 ] || die "fwload failed ($rc)"
}

echo "bench_overload: $(date -u +%FT%TZ), $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "  workers $WORKERS, ${LOAD_X}x capacity for ${DUR}s per row, capacity over ${CAP_DUR}s; fwload -c $CONNS -P $PIPE; nice $NICE"

for kind in $KINDS; do
    if [ "$kind" = sleep ]; then deadline=$SLEEP_DEADLINE_MS; else deadline=$EMBED_DEADLINE_MS; fi
    [ "$kind" = sleep ] || [ "$kind" = embed ] || die "unknown kind '$kind' (sleep, embed)"

    # 1 + 2: capacity, then overload on the same (bounded, default) server
    start_server "$kind-bounded"
    loadavg >"$tmp/$kind-cap.load"
    load "$kind" -c 4 -P $((2 * WORKERS)) -d "$CAP_DUR" >"$tmp/$kind-cap.json"
    cap=$(json_num "$tmp/$kind-cap.json" 'status.get("OK", 0) / duration_s')
    rate=$(python3 -c "print(round($cap * $LOAD_X, 1))")
    [ "$(python3 -c "print(int($rate > 0))")" = 1 ] || die "$kind: no OK answers in the capacity run (KEEP=DIR keeps its JSON and the server log)"
    echo "  $kind: capacity $cap OK/s; offering $rate req/s"
    loadavg >"$tmp/$kind-bounded.load"
    load "$kind" -c "$CONNS" -P "$PIPE" -d "$DUR" --rate "$rate" --deadline-ms "$deadline" \
        >"$tmp/$kind-bounded.json"
    "$FWCAT" -p "$fw_port" info >"$tmp/$kind-bounded.info"
    loadavg >"$tmp/$kind-cap2.load"
    load "$kind" -c 4 -P $((2 * WORKERS)) -d "$CAP_DUR" >"$tmp/$kind-cap2.json"
    stop_server

    # 3: queues that never fill, no deadlines, no per-connection cap: everything is queued
    start_server "$kind-unbounded" --queue-normal 1000000 --queue-max-bytes 1099511627776 \
        --conn-max-jobs 100000 --deadline-ms EMBED=0 --deadline-ms TEST_SLEEP=0
    loadavg >"$tmp/$kind-unbounded.load"
    load "$kind" -c "$CONNS" -P "$PIPE" -d "$DUR" --rate "$rate" --deadline-ms 0 --late-ms "$deadline" \
        --timeout-ms 600000 >"$tmp/$kind-unbounded.json"
    "$FWCAT" -p "$fw_port" info >"$tmp/$kind-unbounded.info"
    stop_server
    echo "$rate $deadline" >"$tmp/$kind.params"
done

python3 - "$tmp" "$KINDS" "$SLEEP_MS" <<'EOF'
import json, os, sys
tmp, kinds, sleep_ms = sys.argv[1], sys.argv[2].split(), sys.argv[3]

def path(name):
    return os.path.join(tmp, name)

def info(name, op):
    """The op's counters from a saved INFO answer."""
    d = {}
    for line in open(path(name)):
        k, _, v = line.partition(": ")
        if k.startswith("op_%s_" % op):
            d[k[len(op) + 4:]] = v.strip()
    return d

def ms(us):
    return "%.1f" % (us / 1000.0) if us is not None else "-"

def per_s(n, d):
    return n / d["duration_s"] if d["duration_s"] > 0 else 0.0

def run(kind, row):
    return json.load(open(path("%s-%s.json" % (kind, row))))

print()
print("| workload | server | offered req/s | load avg | OK/s | % of capacity | OK within deadline /s "
      "| OK p50 ms | OK p99 ms (from send) | deadline ms | OK later than it (from send) "
      "| BUSY p99 ms (from send) | BUSY | DEADLINE_EXCEEDED | fwload errors |")
print("|" + "---|" * 15)
notes = []
for kind in kinds:
    rate, deadline = open(path(kind + ".params")).read().split()
    name = "TEST_SLEEP %s ms" % sleep_ms if kind == "sleep" else "EMBED"
    op = "test_sleep" if kind == "sleep" else "embed"
    caps = [per_s(run(kind, r)["status"].get("OK", 0), run(kind, r)) for r in ("cap", "cap2")]
    cap = max(caps)
    notes.append("  %s: capacity %.1f OK/s before, %.1f after: the offered %s req/s is %.1fx the higher%s" % (
        name, caps[0], caps[1], rate, float(rate) / cap if cap else 0,
        "" if caps[1] <= 1.2 * caps[0] else " (capacity moved during the run: other work on the machine?)"))
    for row, server in (("cap", "bounded: capacity before"), ("bounded", "bounded (default)"),
                        ("cap2", "bounded: capacity after"), ("unbounded", "huge queues, no deadline")):
        d = run(kind, row)
        la = open(path("%s-%s.load" % (kind, row))).read().strip()
        st = d["status"]
        lat = d.get("status_latency_us", {})
        ok, busy = lat.get("OK", {}), lat.get("BUSY")
        closed = row.startswith("cap")
        good = per_s(st.get("OK", 0), d)
        useful = "-" if closed else "%.1f" % per_s(st.get("OK", 0) - d["ok_late"], d)
        late = "-" if closed else "%d (%d) of %d" % (d["ok_late"], d["ok_late_from_send"], st.get("OK", 0))
        dl = "-" if closed else (deadline if row == "bounded" else "none (counted: %s)" % deadline)
        print("| %s | %s | %s | %s | %.1f | %.0f%% | %s | %s | %s (%s) | %s | %s | %s | %d | %d | %d |" % (
            name, server, "closed loop" if closed else rate, la, good, 100 * good / cap if cap else 0,
            useful, ms(ok.get("p50")), ms(ok.get("p99")), ms(ok.get("from_send_p99")), dl, late,
            "-" if not busy else "%s (%s)" % (ms(busy["p99"]), ms(busy["from_send_p99"])),
            st.get("BUSY", 0), st.get("DEADLINE_EXCEEDED", 0), d["errors"]))
        if not closed:
            i = info("%s-%s.info" % (kind, row), op)
            notes.append("  %s, %s: sent %d, answered over %.3f s, OK max %s ms; server: %s" % (
                name, server, d["sent"], d["duration_s"], ms(ok.get("max")),
                ", ".join("%s %s" % (k, i.get(k, "?")) for k in
                          ("ran", "expired_in_queue", "timed_out", "queue_wait_ms", "run_ms"))))
print()
print("% of capacity: of the higher of the two capacity rows. Server counters from INFO after the")
print("row (cumulative: the bounded server's include the first capacity row):")
print("\n".join(notes))
EOF
