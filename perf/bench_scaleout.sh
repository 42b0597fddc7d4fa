#!/bin/sh
# bench_scaleout.sh — issue 9's benchmarks: the gallery in PostgreSQL, nodes behind HAProxy.
# Each run starts a throw-away PostgreSQL (initdb into a temp dir under $TMPDIR_BASE, as
# `nobody` when we are root since PostgreSQL refuses root, pg_ctl on a free loopback port,
# default settings, fsync on), measures, and removes everything it started.
#
#   perf/bench_scaleout.sh store [bench_galpg options]
#       bin/bench_galpg on it: load at start of 1,000,000 faces from PostgreSQL vs a local
#       snapshot, durable enroll through PostgreSQL vs the embedded gallery, replication lag
#       between two nodes under a steady enroll stream (see perf/bench_galpg.c's header).
#   perf/bench_scaleout.sh haproxy
#       identify throughput through HAProxy (docs/haproxy.cfg, its server lines cut to the
#       nodes started) with 1 and with 2 facewired nodes on --gallery-url, model-less
#       (IDENTIFY by descriptor: fwload --op identify), beside the same load sent straight to
#       one node (the anchor). Prints per-node efficiency = 2-node rps / (2 x 1-node rps) and
#       the CPU time each process spent per request.
#
# Knobs (environment) for haproxy: FACES=100000 (gallery size), DUR=10 (seconds per
# measurement), CONNS=8 and DEPTH=4 (fwload -c/-P), WORKERS=1 (facewired --workers per
# node), K=10. Both: TMPDIR_BASE=/var/tmp, KEEP=1 keeps the temp dir (logs) at the end.
set -eu
cd "$(dirname "$0")/.."
ROOT=$(pwd)

MODE=${1:-}
[ $# -gt 0 ] && shift
case "$MODE" in
store | haproxy) ;;
*)
    sed -n '2,/^set -eu/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
    ;;
esac

FACES=${FACES:-100000}
DUR=${DUR:-10}
CONNS=${CONNS:-8}
DEPTH=${DEPTH:-4}
WORKERS=${WORKERS:-1}
K=${K:-10}
TMPDIR_BASE=${TMPDIR_BASE:-/var/tmp}

PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
[ -n "$PGBIN" ] && [ -x "$PGBIN/initdb" ] || { echo "PostgreSQL not installed (make deps)" >&2; exit 1; }

make -s bin/facewired bin/fwload bin/bench_galpg >&2

WORK=$(mktemp -d "$TMPDIR_BASE/fwbench-scaleout.XXXXXX")
chmod 711 "$WORK" # PostgreSQL, running as nobody, must reach its directory inside
PIDS=""
PG_UP=0

# Everything PostgreSQL runs as nobody when we are root; psql and pg_ctl too, so that they
# find the socket directory and the data directory they may use.
as_pg() {
    if [ "$(id -u)" = 0 ]; then
        setpriv --reuid=nobody --regid=nogroup --clear-groups env -u PGDATA LC_ALL=C "$@"
    else
        env LC_ALL=C "$@"
    fi
}

cleanup() {
    set +e
    for p in $PIDS; do kill "$p" 2>/dev/null; done
    for p in $PIDS; do wait "$p" 2>/dev/null; done
    [ "$PG_UP" = 1 ] && as_pg "$PGBIN/pg_ctl" -D "$WORK/pg/data" -m fast -w stop >/dev/null 2>&1
    if [ "${KEEP:-0}" = 1 ]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A loopback port nobody listens on now (random, checked with ss; the caller retries a start
# that fails because somebody took it meanwhile).
free_port() {
    while :; do
        p=$(( 20000 + $(od -An -N2 -tu2 /dev/urandom) % 20000 ))
        [ -z "$(ss -Htln "sport = :$p")" ] && { echo "$p"; return; }
    done
}

pg_start() {
    mkdir -p "$WORK/pg"
    [ "$(id -u)" = 0 ] && chown nobody:nogroup "$WORK/pg"
    as_pg "$PGBIN/initdb" -D "$WORK/pg/data" -U fw --auth=trust -E UTF8 --locale=C --no-sync \
        --no-instructions >"$WORK/pg/initdb.log" 2>&1 || { cat "$WORK/pg/initdb.log" >&2; exit 1; }
    for try in 1 2 3 4 5; do
        PGPORT=$(free_port)
        if as_pg "$PGBIN/pg_ctl" -D "$WORK/pg/data" -w -t 60 -l "$WORK/pg/server.log" \
            -o "-p $PGPORT -k $WORK/pg -c listen_addresses=127.0.0.1 -c fsync=on" start >/dev/null; then
            PG_UP=1
            PGURL="host=127.0.0.1 port=$PGPORT user=fw dbname=postgres"
            return
        fi
    done
    tail -n 20 "$WORK/pg/server.log" >&2
    exit 1
}

psql_c() {
    as_pg "$PGBIN/psql" -XAtq -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PGPORT" -U fw -d postgres -c "$1"
}

pg_start
echo "postgresql $("$PGBIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$PGPORT, data in $WORK/pg (default settings, fsync on)"
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo); commit $(git rev-parse --short HEAD)"

if [ "$MODE" = store ]; then
    OPENBLAS_NUM_THREADS=1 bin/bench_galpg --url "$PGURL" --dir "$TMPDIR_BASE" "$@"
    exit
fi

# ---- haproxy: identify through 1 and 2 nodes ----------------------------------------------------

bin/bench_galpg --url "$PGURL" --parts fill --n "$FACES" --dir "$TMPDIR_BASE"

# cpu_ticks PID: user + system time of a process so far, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)

# start_node I: facewired node I on free ports, model-less, following the gallery in
# PostgreSQL; waits until its /health says 200 (loaded and in sync).
start_node() {
    i=$1
    port=$(free_port)
    mport=$(free_port)
    # No --models, and run from $WORK where there is no ./models: a model-less node, which
    # /health still reports healthy (only a node given --models needs them).
    (cd "$WORK" && OPENBLAS_NUM_THREADS=1 exec "$ROOT/bin/facewired" --listen "127.0.0.1:$port" \
        --metrics-listen "127.0.0.1:$mport" --gallery-url "$PGURL" --workers "$WORKERS" \
        --log-level warn 2>"$WORK/node$i.log") &
    pid=$!
    PIDS="$PIDS $pid"
    eval "NODE${i}_PID=$pid NODE${i}_PORT=$port NODE${i}_MPORT=$mport"
    for _ in $(seq 1 600); do
        if [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$mport/health")" = 200 ]; then
            return
        fi
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    echo "node $i did not become healthy:" >&2
    tail -n 20 "$WORK/node$i.log" >&2
    exit 1
}

# start_haproxy N: HAProxy on docs/haproxy.cfg with its server lines cut to nodes 1..N;
# nothing else is changed.
start_haproxy() {
    n=$1
    cfg="$WORK/haproxy$n.cfg"
    case $n in
    1) sed '/^ *server node[23] /d' docs/haproxy.cfg >"$cfg" ;;
    2) sed '/^ *server node3 /d' docs/haproxy.cfg >"$cfg" ;;
    esac
    HAPORT=$(free_port)
    FW_FRONTEND="127.0.0.1:$HAPORT" FW_NODE1="127.0.0.1:$NODE1_PORT" FW_HEALTH1=$NODE1_MPORT \
        FW_NODE2="127.0.0.1:${NODE2_PORT:-1}" FW_HEALTH2=${NODE2_MPORT:-1} \
        haproxy -db -f "$cfg" 2>"$WORK/haproxy$n.log" &
    HAPROXY_PID=$!
    PIDS="$PIDS $HAPROXY_PID"
    # Wait for its first round of health checks (every 500 ms) to find every node UP.
    for _ in $(seq 1 100); do
        [ -n "$(ss -Htln "sport = :$HAPORT")" ] && break
        sleep 0.1
    done
    sleep 1.5
    kill -0 "$HAPROXY_PID" 2>/dev/null || { echo "haproxy exited:" >&2; cat "$WORK/haproxy$n.log" >&2; exit 1; }
}

stop_pid() {
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
    PIDS=$(echo "$PIDS" | tr ' ' '\n' | grep -vx "$1" | tr '\n' ' ')
}

# cpu_of PIDS: their user + system time so far, summed, in clock ticks.
cpu_of() {
    t=0
    for p in "$@"; do t=$((t + $(cpu_ticks "$p"))); done
    echo "$t"
}

# measure LABEL PORT: fwload closed loop for DUR s. Prints rps, p50/p99, OK/all and the CPU
# time per request (user + system, /proc/PID/stat) of the nodes in $NODES together (and each
# node's share), of HAProxy ($HA, may be empty) and of fwload itself (/usr/bin/time).
measure() {
    label=$1
    port=$2
    n0=$(cpu_of $NODES)
    h0=$(cpu_of $HA)
    each0=""
    for p in $NODES; do each0="$each0 $(cpu_ticks "$p")"; done
    out=$(/usr/bin/time -f '%U %S' -o "$WORK/fwload.time" bin/fwload -p "$port" -c "$CONNS" -P "$DEPTH" \
        -d "$DUR" --op identify --k "$K" --json --no-progress)
    n1=$(cpu_of $NODES)
    h1=$(cpu_of $HA)
    json() { echo "$out" | sed -n "s/.*\"$1\": \([0-9.]*\).*/\1/p"; }
    rps=$(json rps)
    answered=$(json answered)
    errors=$(json errors)
    ok=$(echo "$out" | sed -n 's/.*"status": {"OK": \([0-9]*\)}.*/\1/p')
    per() { awk -v d="$1" -v n="$answered" -v hz="$HZ" 'BEGIN {printf "%.0f", d * 1000000 / hz / n}'; }
    shares=""
    set -- $each0
    for p in $NODES; do
        shares="$shares${shares:+ + }$(per $(( $(cpu_ticks "$p") - $1 )))"
        shift
    done
    client=$(awk -v n="$answered" '{printf "%.0f", ($1 + $2) * 1000000 / n}' "$WORK/fwload.time")
    printf "  %-20s %6.0f %8.1f %8.1f %11s %7s %-13s %7s %7s\n" "$label" "$rps" \
        "$(json p50_us | awk '{print $1 / 1000}')" "$(json p99_us | awk '{print $1 / 1000}')" \
        "${ok:-0}/$answered" "$(per $((n1 - n0)))" "($shares)" \
        "$( [ -n "$HA" ] && per $((h1 - h0)) || echo -)" "$client"
    [ "$errors" = 0 ] && [ "${ok:-0}" = "$answered" ] || echo "  (errors: $out)" >&2
    LAST_RPS=$rps
}

echo "identify (k=$K, brute force over $FACES faces) by descriptor; fwload -c $CONNS -P $DEPTH -d $DUR;"
echo "facewired --workers $WORKERS per node; every process shares the same $(nproc) cores; load average: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "  cpu = CPU time per request in us (user + system) of the nodes (each node's share), HAProxy, fwload"
printf "  %-20s %6s %8s %8s %11s %7s %-13s %7s %7s\n" "" "rps" "p50 ms" "p99 ms" "OK/all" "nodes" "(per node)" \
    "haproxy" "fwload"

start_node 1
NODES="$NODE1_PID" HA=""
measure "direct to node 1" "$NODE1_PORT"
DIRECT=$LAST_RPS
start_haproxy 1
HA=$HAPROXY_PID
measure "haproxy -> 1 node" "$HAPORT"
ONE=$LAST_RPS
stop_pid "$HAPROXY_PID"

start_node 2
start_haproxy 2
NODES="$NODE1_PID $NODE2_PID" HA=$HAPROXY_PID
r1=$(bin/fwcat -p "$NODE1_PORT" info | awk -F': ' '/^requests_total/ {print $2}')
r2=$(bin/fwcat -p "$NODE2_PORT" info | awk -F': ' '/^requests_total/ {print $2}')
measure "haproxy -> 2 nodes" "$HAPORT"
TWO=$LAST_RPS
s1=$(bin/fwcat -p "$NODE1_PORT" info | awk -F': ' '/^requests_total/ {print $2}')
s2=$(bin/fwcat -p "$NODE2_PORT" info | awk -F': ' '/^requests_total/ {print $2}')
echo "  requests served per node with 2 (INFO requests_total): node1 $((s1 - r1)), node2 $((s2 - r2))"
stop_pid "$HAPROXY_PID"

awk -v d="$DIRECT" -v o="$ONE" -v t="$TWO" 'BEGIN {
    printf "  ratio haproxy->1 node / direct: %.2f\n", o / d
    printf "  per-node efficiency 2 nodes / (2 x 1 node): %.2f  (2-node / 1-node rps: %.2f)\n", t / (2 * o), t / o
}'
echo "  load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "  (on $(nproc) shared cores absolute scaling is impossible: the nodes, HAProxy and fwload take"
echo "   turns on the same cores; the CPU per request says whether a second node costs extra work)"
