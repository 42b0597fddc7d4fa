/*
 * bench_gallery_faiss.cpp — the Faiss IndexFlatL2 side of bench_gallery: the same data
 * (regenerated from the same seed with the same generator), the same queries, the same
 * measurements. bin/bench_gallery runs it as a child and prints both side by side.
 *
 * C++ because Debian's libfaiss-dev ships only the C++ library (no C API in libfaiss.a).
 * Built by perf/bench_gallery.sh:  g++ -O2 ... -lfaiss -fopenmp -lopenblas
 *
 *   bench_gallery_faiss N SINGLE BATCH NBATCH SEED
 * prints lines "key value..." on stdout: build_ms, single_ms (median p99), batch_qps, top0.
 */
#include <faiss/IndexFlat.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

extern "C" void openblas_set_num_threads(int);

/* Must match perf/bench_gallery.c. */
static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static void fill(float *v, size_t n, uint64_t seed)
{
    uint64_t s = seed;
    for (size_t i = 0; i < n; i++)
        v[i] = (float)((double)(splitmix(&s) >> 40) / (double)(1 << 24) * 2.0 - 1.0);
}

static double now_ms()
{
    using namespace std::chrono;
    return duration<double, std::milli>(steady_clock::now().time_since_epoch()).count();
}

int main(int argc, char **argv)
{
    if (argc != 6) {
        fprintf(stderr, "usage: %s N SINGLE BATCH NBATCH SEED\n", argv[0]);
        return 2;
    }
    size_t n = strtoull(argv[1], nullptr, 10);
    int single = atoi(argv[2]), batch = atoi(argv[3]), nbatch = atoi(argv[4]);
    uint64_t seed = strtoull(argv[5], nullptr, 10);
    const int d = 128, k = 10;
    omp_set_num_threads(1);          /* single-threaded, like the gallery's one search */
    openblas_set_num_threads(1);

    std::vector<float> x(n * d), q((size_t)std::max(single, batch * nbatch) * d);
    fill(x.data(), x.size(), seed);
    fill(q.data(), q.size(), seed + 1);

    double t0 = now_ms();
    faiss::IndexFlatL2 index(d);
    index.add((faiss::Index::idx_t)n, x.data());
    printf("build_ms %.1f\n", now_ms() - t0);

    std::vector<float> dist((size_t)batch * k);
    std::vector<faiss::Index::idx_t> ids((size_t)batch * k);
    std::vector<double> lat;
    for (int i = 0; i < single; i++) {
        double s = now_ms();
        index.search(1, q.data() + (size_t)i * d, k, dist.data(), ids.data());
        lat.push_back(now_ms() - s);
        if (i == 0) {
            printf("top0");
            for (int j = 0; j < k; j++)
                printf(" %lld", (long long)ids[j]);
            printf("\n");
        }
    }
    std::sort(lat.begin(), lat.end());
    printf("single_ms %.3f %.3f\n", lat[lat.size() / 2], lat[(size_t)(lat.size() * 0.99)]);

    t0 = now_ms();
    for (int b = 0; b < nbatch; b++)
        index.search(batch, q.data() + (size_t)b * batch * d, k, dist.data(), ids.data());
    double ms = now_ms() - t0;
    printf("batch_qps %.1f\n", batch * nbatch / (ms / 1000.0));
    return 0;
}
