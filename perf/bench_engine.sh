#!/bin/sh
# Engine benchmarks beside the reference, in one run, with ratios (issue 3).
#
#   perf/bench_engine.sh [PICTURE.jpg] [ITERATIONS]
#
# Runs the reference's anchor.js (face-api on TensorFlow.js, wasm backend) and facewire's
# bin/bench_nets and bin/bench_pipeline on the same inputs, one after the other, and prints
# one table: median ms of each, the ratio reference/facewire (higher is better for us), and
# the GFLOP/s facewire reaches. The machines are shared and noisy: only ratios measured in the
# same run mean anything.
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
shared=${FW_SHARED:-$top/../shared}
pic=${1:-$shared/eval/barack_obama_3.jpg}
iters=${2:-30}
export OPENBLAS_NUM_THREADS=1

make -C "$top" -s perf >&2
ref=$("$top/perf/reference.sh")
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

echo "reference: node anchor.js ($iters iterations)..." >&2
node "$ref/anchor.js" "$shared/golden" "$pic" "$iters" > "$out/ref.jsonl"
echo "facewire: bench_nets, bench_pipeline..." >&2
FW_SHARED="$shared" FW_MODELS="$top/models" "$top/bin/bench_nets" "$iters" > "$out/fw.jsonl"
"$top/bin/bench_pipeline" --models "$top/models" --iterations "$iters" "$pic" >> "$out/fw.jsonl"

node - "$out/ref.jsonl" "$out/fw.jsonl" <<'JS'
const fs = require('fs');
const read = f => fs.readFileSync(f, 'utf8').split('\n').filter(Boolean).map(JSON.parse).filter(o => o.what);
const alias = { tiny_detector_416: 'tinydet_416' };
const ref = Object.fromEntries(read(process.argv[2]).map(o => [alias[o.what] || o.what, o]));
const fw = read(process.argv[3]);
console.log('what                           reference_ms  facewire_ms   ratio  facewire_GFLOP/s');
for (const o of fw) {
  const r = ref[o.what];
  const ratio = r ? (r.median_ms / o.median_ms).toFixed(1) + 'x' : '-';
  console.log(o.what.padEnd(30), String(r ? r.median_ms : '-').padStart(12), String(o.median_ms).padStart(12),
              ratio.padStart(7), String(o.gflops ?? '-').padStart(17));
}
JS
