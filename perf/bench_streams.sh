#!/bin/sh
# bench_streams.sh — camera streams (issue 8): STREAMS cameras of 640x480 JPEGs at FPS each into
# one facewired, ring policy against fifo, DURATION seconds each. Per policy it reports, from
# the events every camera receives (bin/fwcat stream --json): analysed frames per second per
# stream, the drop rate, capture-to-event latency p50/p99/p99.9 (on the camera's clock: from
# the push to the event's arrival) and its course over time (p99 per 5 s window), and the
# server's RSS sampled every second.
#
# Frames: for each stream one eval picture ($FW_SHARED/eval, single-face ones), cut to 640x480
# and rolled a few pixels per frame (30 distinct frames, looped), made by
# bin/bench_streams_frames (libturbojpeg; `make bin/bench_streams_frames`). Outputs stay in $KEEP (default: a new temporary directory): per policy the event
# logs, lat_<policy>.dat (time_s age_ms, one line per analysed frame, for
# perf/bench_streams.gnuplot) and rss_<policy>.dat (time_s rss_kib).
#
# Settings (environment): STREAMS (8), FPS (15), DURATION (60), WORKERS (2), PORT (7431),
# RING_CAPACITY (4), FIFO_CAPACITY (64, the maximum), FW_SHARED (../shared), FW_MODELS (models).
# The machine is shared: it runs 2 x DURATION seconds with both cores busy.
set -eu
cd "$(dirname "$0")/.."

STREAMS=${STREAMS:-8}
FPS=${FPS:-15}
DURATION=${DURATION:-60}
WORKERS=${WORKERS:-2}
PORT=${PORT:-7431}
RING_CAPACITY=${RING_CAPACITY:-4}
FIFO_CAPACITY=${FIFO_CAPACITY:-64}
FW_SHARED=${FW_SHARED:-../shared}
FW_MODELS=${FW_MODELS:-models}
KEEP=${KEEP:-$(mktemp -d /tmp/bench_streams.XXXXXX)}

for b in bin/facewired bin/fwcat bin/bench_streams_frames; do
    [ -x "$b" ] || { echo "bench_streams: $b missing (make $b)" >&2; exit 2; }
done

# ---- frames ----------------------------------------------------------------------------------
pics="barack_obama_1.jpg joe_biden_1.jpg alex_lacamoire_1.jpg kit_harington_2.jpg rose_leslie_1.jpg
      lin_manuel_miranda_1.jpg barack_obama_3.jpg joe_biden_2.jpg"
s=0
for p in $pics; do
    s=$((s + 1))
    [ "$s" -le "$STREAMS" ] || break
    d="$KEEP/frames/s$s"
    [ -d "$d" ] && continue
    mkdir -p "$d"
    [ -f "$FW_SHARED/eval/$p" ] || { echo "bench_streams: $FW_SHARED/eval/$p missing" >&2; exit 2; }
    bin/bench_streams_frames "$FW_SHARED/eval/$p" "$d" 30 640 480
done
nstreams=$(ls -d "$KEEP"/frames/s* | wc -l)

# ---- one run ---------------------------------------------------------------------------------
run() { # policy capacity
    policy=$1 cap=$2
    data="$KEEP/data_$policy"
    rm -rf "$data"
    bin/facewired --listen "127.0.0.1:$PORT" --workers "$WORKERS" --models "$FW_MODELS" --data "$data" \
        2>"$KEEP/server_$policy.log" &
    spid=$!
    i=0
    until grep -q 'msg="listening"' "$KEEP/server_$policy.log" 2>/dev/null; do
        i=$((i + 1))
        [ "$i" -lt 600 ] || { echo "bench_streams: server did not start" >&2; kill "$spid"; exit 2; }
        kill -0 "$spid" 2>/dev/null || { echo "bench_streams: server exited" >&2; cat "$KEEP/server_$policy.log" >&2; exit 2; }
        sleep 0.1
    done
    : >"$KEEP/rss_$policy.dat"
    ( t=0; while kill -0 "$spid" 2>/dev/null; do
          r=$(awk '/^VmRSS/ {print $2}' "/proc/$spid/status" 2>/dev/null || true)
          [ -n "$r" ] && echo "$t $r" >>"$KEEP/rss_$policy.dat"
          sleep 1; t=$((t + 1))
      done ) &
    rpid=$!
    extra=""
    [ "$policy" = fifo ] && extra="--fifo"
    pids=""
    for s in $(seq 1 "$nstreams"); do
        bin/fwcat -p "$PORT" --timeout 30000 --json stream --frames "$KEEP/frames/s$s" --fps "$FPS" \
            --count $((FPS * DURATION)) --capacity "$cap" --name "cam$s" --linger-ms 3000 $extra \
            >"$KEEP/events_${policy}_$s.jsonl" 2>&1 &
        pids="$pids $!"
    done
    for p in $pids; do wait "$p" || echo "bench_streams: a camera failed (see $KEEP/events_${policy}_*.jsonl)" >&2; done
    kill "$spid"
    wait "$spid" || true
    kill "$rpid" 2>/dev/null || true
    wait "$rpid" 2>/dev/null || true
}

run ring "$RING_CAPACITY"
run fifo "$FIFO_CAPACITY"

# ---- report ----------------------------------------------------------------------------------
python3 - "$KEEP" "$nstreams" "$FPS" "$DURATION" <<'EOF'
import json, sys
keep, n, fps, dur = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])

def q(v, p):
    if not v:
        return float('nan')
    v = sorted(v)
    return v[min(len(v) - 1, int(p * len(v)))]

print(f"{n} streams x {fps:g} fps of 640x480 JPEGs, {dur:g} s per policy (results in {keep})")
for pol in ("ring", "fifo"):
    ages, per, drops, recv = [], [], 0, 0
    series = []
    for s in range(1, n + 1):
        a = 0
        for line in open(f"{keep}/events_{pol}_{s}.jsonl"):
            try:
                e = json.loads(line)
            except ValueError:
                continue
            if e.get("type") == "faces":
                a += 1
                ages.append(e["age_ms"])
                series.append((e["t_ms"] / 1000.0, e["age_ms"]))
            elif e.get("type") == "stats" and e.get("final"):
                drops += e["dropped"] + e.get("dropped_at_source", 0)
                recv += e["received"] + e.get("dropped_at_source", 0)
        per.append(a / dur)
    series.sort()
    with open(f"{keep}/lat_{pol}.dat", "w") as f:
        for t, a in series:
            f.write(f"{t:.3f} {a:.3f}\n")
    windows = {}
    for t, a in series:
        windows.setdefault(int(t // 5), []).append(a)
    rss = [int(l.split()[1]) for l in open(f"{keep}/rss_{pol}.dat") if l.strip()]
    mean = sum(per) / len(per) if per else 0
    spread = max(abs(x - mean) / mean * 100 for x in per) if mean else float('nan')
    print(f"\n{pol}: analysed fps per stream " + " ".join(f"{x:.2f}" for x in per) +
          f" (total {sum(per):.1f}; max deviation from the mean {spread:.0f} %)")
    print(f"  dropped {drops} of {recv} frames ({100.0 * drops / recv if recv else 0:.1f} %)")
    print(f"  capture-to-event ms: p50 {q(ages, .5):.0f}  p99 {q(ages, .99):.0f}  p99.9 {q(ages, .999):.0f}  max {max(ages) if ages else 0:.0f}")
    print("  p99 per 5 s window: " + " ".join(f"{q(windows[k], .99):.0f}" for k in sorted(windows)))
    if rss:
        print(f"  server RSS MiB: first {rss[0] / 1024:.0f}  min {min(rss) / 1024:.0f}  max {max(rss) / 1024:.0f}  last {rss[-1] / 1024:.0f}")
EOF
