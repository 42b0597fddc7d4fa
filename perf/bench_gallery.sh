#!/bin/sh
# bench_gallery.sh — build the Faiss comparison child (C++; Debian's libfaiss-dev has no C API)
# and run bin/bench_gallery, which runs it on the same data. Arguments go to bench_gallery:
#   perf/bench_gallery.sh [--n 1000000] [--single 100] [--batches 10] [--durable 20000] [--dir /var/tmp]
# Both sides are single-threaded (OpenBLAS and OpenMP at 1 thread).
set -eu
cd "$(dirname "$0")/.."
make -s bin/bench_gallery
if [ -f /usr/include/faiss/IndexFlat.h ] && command -v g++ >/dev/null 2>&1; then
    if [ ! -x bin/bench_gallery_faiss ] || [ perf/bench_gallery_faiss.cpp -nt bin/bench_gallery_faiss ]; then
        g++ -std=c++17 -O2 -Wall -Wextra -Werror perf/bench_gallery_faiss.cpp -o bin/bench_gallery_faiss \
            $(pkg-config --cflags openblas) -lfaiss -fopenmp $(pkg-config --libs openblas)
    fi
else
    echo "libfaiss-dev or g++ missing: running without the Faiss comparison" >&2
fi
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
exec bin/bench_gallery --faiss bin/bench_gallery_faiss "$@"
