#!/usr/bin/env bash
# Runs every test binary that `make test` built and prints, last, the sum as "N passed, N failed".
#   1. all tests, built with AddressSanitizer + UndefinedBehaviorSanitizer
#   2. the tests marked "// run-under: tsan", built with ThreadSanitizer
#   3. the client tests, cross-built for ARM, under qemu-arm (when the cross tools are present)
# Each binary prints its own "N passed, N failed"; a binary that dies before that line (crash,
# sanitizer report, timeout) counts as one failure. Nothing is skipped silently: a missing
# set is reported as a failure, not left out.
set -u
cd "$(dirname "$0")/.."
top=$(pwd)
export FW_SHARED=${FW_SHARED:-$(cd "$top/../shared" 2>/dev/null && pwd)}
export FW_MODELS=${FW_MODELS:-$top/models}
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:strict_string_checks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=1:second_deadlock_stack=1}
export OPENBLAS_NUM_THREADS=1
TEST_TIMEOUT=${TEST_TIMEOUT:-600}

passed=0 failed=0
log=$(mktemp)
trap 'rm -f "$log"' EXIT

# run_one LABEL BIN_DIR CMD...
run_one() {
    local label=$1 bindir=$2; shift 2
    echo "== $label"
    FW_BIN="$bindir" timeout -k 10 "$TEST_TIMEOUT" "$@" >"$log" 2>&1
    local rc=$?
    cat "$log"
    local line p f
    line=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$log" | tail -n 1)
    if [ -n "$line" ]; then
        p=${line%% passed*}; f=${line#*, }; f=${f%% failed}
    else
        p=0; f=0
    fi
    if [ $rc -ne 0 ] && [ "$f" -eq 0 ]; then
        echo "!! $label exited with status $rc"
        f=1
    fi
    passed=$((passed + p)); failed=$((failed + f))
}

set_dir() { [ -d "$1" ] || { echo "!! missing test build $1"; failed=$((failed + 1)); return 1; }; }

asan=build/san-address-undefined
if set_dir "$asan/tests"; then
    for t in "$asan"/tests/test_*; do run_one "asan+ubsan $(basename "$t")" "$top/$asan/bin" "$t"; done
fi

tsan=build/san-thread
tsan_list=$(grep -l '^// run-under: tsan' tests/test_*.c 2>/dev/null || true)
for src in $tsan_list; do
    t="$tsan/tests/$(basename "$src" .c)"
    if [ -x "$t" ]; then
        run_one "tsan $(basename "$t")" "$top/$tsan/bin" "$t"
    else
        echo "!! missing tsan build of $src"; failed=$((failed + 1))
    fi
done

if command -v arm-linux-gnueabihf-gcc >/dev/null 2>&1 && command -v qemu-arm >/dev/null 2>&1; then
    if set_dir build/cross/tests; then
        for t in build/cross/tests/test_client_*; do
            [ -e "$t" ] || continue
            # Only the library under test is ARM: the servers (and fwcat) these tests start
            # are the native build, as they would be on the far end of a real device's link.
            run_one "arm/qemu $(basename "$t")" "$top/bin" \
                qemu-arm -L /usr/arm-linux-gnueabihf "$t"
        done
    fi
else
    echo "!! arm-linux-gnueabihf-gcc or qemu-arm missing (make deps installs them)"
    failed=$((failed + 1))
fi

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
