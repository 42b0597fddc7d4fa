/*
 * bench_gallery.c — the gallery's numbers (issue 5 §5), for docs/performance.md:
 *
 *   1. search over N (default 1,000,000) random 128-d descriptors, top-10:
 *      latency of one query on one thread (median and p99 of many), and throughput with
 *      batches of 64 queries (one sgemm per block), beside Faiss IndexFlatL2 on the same data
 *      in the same run (bin/bench_gallery_faiss, built by perf/bench_gallery.sh), with the
 *      ratio; memory per face;
 *   2. durable enroll throughput on the real disk: records/s and ack latency (p50/p99),
 *      descriptors as input, with 256 requests in flight (group commit) and with 1.
 *
 * Both sides single-threaded: OpenBLAS set to 1 thread here, OpenMP and OpenBLAS to 1 in the
 * Faiss child. Run: perf/bench_gallery.sh [--n N] [--dir DIR]
 */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "fw_proto.h"
#include "server/gallery.h"
#include "server/galog.h"

void openblas_set_num_threads(int);

#define DIM FW_GALLERY_DIM
#define K 10

/* Must match perf/bench_gallery_faiss.cpp. */
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

static double now_ms(void) { return (double)uv_hrtime() / 1e6; }

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* ---- feeding the gallery through its real API ------------------------------------------- */

typedef struct feeder {
    uv_loop_t *loop;
    fw_gallery *g;
    const float *x;
    size_t nx;           /* rows in x */
    size_t n, next, done;
    int inflight, window;
    int failed;
    double *lat;         /* per request ack latency, ms (may be NULL) */
    double *start;       /* submit time per request */
} feeder;

typedef struct slot {
    feeder *f;
    size_t i;
} slot;

static void feed_one(feeder *f);

static void on_enrolled(void *arg, int status, uint64_t value, const char *msg)
{
    slot *s = arg;
    feeder *f = s->f;
    (void)value;
    if (status != FW_STATUS_OK && !f->failed) {
        fprintf(stderr, "enroll %zu: status %d: %s\n", s->i, status, msg);
        f->failed = 1;
    }
    if (f->lat)
        f->lat[s->i] = now_ms() - f->start[s->i];
    free(s);
    f->inflight--;
    f->done++;
    feed_one(f);
}

static void feed_one(feeder *f)
{
    while (f->inflight < f->window && f->next < f->n && !f->failed) {
        char subject[32], err[128];
        size_t i = f->next++;
        slot *s = malloc(sizeof *s);
        if (!s) {
            f->failed = 1;
            return;
        }
        s->f = f;
        s->i = i;
        snprintf(subject, sizeof subject, "person-%zu", i / 4);
        if (f->start)
            f->start[i] = now_ms();
        /* More records than generated rows (the durable phase) reuse rows cyclically. */
        int st = fw_gallery_enroll(f->g, subject, strlen(subject), NULL, 0,
                                   f->x + (i % f->nx) * DIM, on_enrolled, s, err, sizeof err);
        if (st != FW_STATUS_OK) {
            fprintf(stderr, "enroll %zu refused: %s\n", i, err);
            free(s);
            f->next--; /* never submitted: nothing will complete it */
            f->failed = 1;
            return;
        }
        f->inflight++;
    }
}

static int feed(uv_loop_t *loop, fw_gallery *g, const float *x, size_t nx, size_t n,
                int window, double *lat, double *start)
{
    feeder f = { loop, g, x, nx, n, 0, 0, 0, window, 0, lat, start };
    feed_one(&f);
    while (f.done < f.next || (f.next < f.n && !f.failed))
        uv_run(loop, UV_RUN_ONCE);
    return f.failed ? -1 : 0;
}

/* ---- the Faiss child -------------------------------------------------------------------- */

typedef struct faiss_res {
    int ok;
    double build_ms, single_med, single_p99, batch_qps;
    long long top0[K];
} faiss_res;

static void run_faiss(const char *bin, size_t n, int single, int batch, int nbatch,
                      uint64_t seed, faiss_res *r)
{
    char cmd[1024], line[512];
    memset(r, 0, sizeof *r);
    if (access(bin, X_OK) != 0) {
        printf("faiss: %s not built (perf/bench_gallery.sh builds it): no comparison\n", bin);
        return;
    }
    snprintf(cmd, sizeof cmd, "%s %zu %d %d %d %llu", bin, n, single, batch, nbatch,
             (unsigned long long)seed);
    FILE *p = popen(cmd, "r");
    if (!p) {
        printf("faiss: cannot run %s: %s\n", bin, strerror(errno));
        return;
    }
    int got = 0;
    while (fgets(line, sizeof line, p)) {
        if (sscanf(line, "build_ms %lf", &r->build_ms) == 1)
            got |= 1;
        else if (sscanf(line, "single_ms %lf %lf", &r->single_med, &r->single_p99) == 2)
            got |= 2;
        else if (sscanf(line, "batch_qps %lf", &r->batch_qps) == 1)
            got |= 4;
        else if (strncmp(line, "top0", 4) == 0) {
            char *s = line + 4;
            for (int j = 0; j < K; j++)
                r->top0[j] = strtoll(s, &s, 10);
            got |= 8;
        }
    }
    r->ok = pclose(p) == 0 && got == 15;
    if (!r->ok)
        printf("faiss: child failed or printed an unexpected report\n");
}

/* ---- main ------------------------------------------------------------------------------- */

int main(int argc, char **argv)
{
    size_t n = 1000000, n_durable = 20000;
    int single = 100, batch = 64, nbatch = 10;
    uint64_t seed = 42;
    const char *faiss_bin = "bin/bench_gallery_faiss";
    const char *dir_base = "/var/tmp";
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--n")) n = strtoull(argv[i + 1], NULL, 10);
        else if (!strcmp(argv[i], "--single")) single = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--batches")) nbatch = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--durable")) n_durable = strtoull(argv[i + 1], NULL, 10);
        else if (!strcmp(argv[i], "--faiss")) faiss_bin = argv[i + 1];
        else if (!strcmp(argv[i], "--dir")) dir_base = argv[i + 1];
        else {
            fprintf(stderr, "usage: %s [--n N] [--single Q] [--batches B] [--durable M] "
                    "[--faiss BIN] [--dir DIR]\n", argv[0]);
            return 2;
        }
    }
    if (n < K || single < 1 || nbatch < 1 || n_durable < 1) {
        fprintf(stderr, "bad arguments\n");
        return 2;
    }
    openblas_set_num_threads(1);

    size_t nq = (size_t)(single > batch * nbatch ? single : batch * nbatch);
    float *x = malloc(n * DIM * sizeof(float));
    float *q = malloc(nq * DIM * sizeof(float));
    double *lat = malloc((size_t)(single > 1 ? single : 1) * sizeof(double));
    fw_gallery_match *m = malloc((size_t)batch * K * sizeof *m);
    int *cnt = malloc((size_t)batch * sizeof *cnt);
    if (!x || !q || !lat || !m || !cnt) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    fill(x, n * DIM, seed);
    fill(q, nq * DIM, seed + 1);

    uv_loop_t loop;
    uv_loop_init(&loop);
    fw_gallery *g;
    char err[256];
    fw_gallery_options o;
    fw_gallery_options_default(&o);
    if (fw_gallery_open(&o, &g, NULL, err, sizeof err) != 0) {
        fprintf(stderr, "open: %s\n", err);
        return 1;
    }
    fw_gallery_attach_loop(g, &loop);
    double t0 = now_ms();
    if (feed(&loop, g, x, n, n, 4096, NULL, NULL) != 0)
        return 1;
    double load_ms = now_ms() - t0;
    fw_gallery_info info;
    fw_gallery_info_get(g, &info);

    printf("gallery: %zu faces (%zu subjects) enrolled through the API in %.0f ms; index %.1f MiB"
           " = %.0f bytes/face (the descriptor alone: %zu)\n", n, (size_t)info.subjects, load_ms,
           info.mem_bytes / 1048576.0, (double)info.mem_bytes / (double)n, DIM * sizeof(float));

    for (int i = 0; i < single; i++) {
        double s = now_ms();
        if (fw_gallery_search(g, q + (size_t)i * DIM, 1, K, INFINITY, m, cnt, NULL, err, sizeof err))
            return 1;
        lat[i] = now_ms() - s;
    }
    uint64_t our_top0[K];
    fw_gallery_search(g, q, 1, K, INFINITY, m, cnt, NULL, err, sizeof err);
    for (int j = 0; j < K; j++)
        our_top0[j] = m[j].face_id;
    qsort(lat, (size_t)single, sizeof *lat, cmp_double);
    double med = lat[single / 2], p99 = lat[(size_t)(single * 0.99)];

    t0 = now_ms();
    for (int b = 0; b < nbatch; b++)
        if (fw_gallery_search(g, q + (size_t)b * batch * DIM, batch, K, INFINITY, m, cnt, NULL, err,
                              sizeof err))
            return 1;
    double qps = batch * nbatch / ((now_ms() - t0) / 1000.0);

    faiss_res fr;
    run_faiss(faiss_bin, n, single, batch, nbatch, seed, &fr);

    printf("\nsearch, top-%d over %zu faces, one thread      facewire      faiss IndexFlatL2  "
           "faiss/facewire\n", K, n);
    printf("  single query latency, median (ms)       %10.2f   %10.2f        %6.2f\n", med,
           fr.single_med, fr.ok ? fr.single_med / med : 0.0);
    printf("  single query latency, p99 (ms)          %10.2f   %10.2f        %6.2f\n", p99,
           fr.single_p99, fr.ok ? fr.single_p99 / p99 : 0.0);
    printf("  batched (%d per call), queries/s        %10.1f   %10.1f        %6.2f\n", batch, qps,
           fr.batch_qps, fr.ok ? qps / fr.batch_qps : 0.0);
    if (fr.ok) {
        int same = 1;
        for (int j = 0; j < K; j++)
            same &= (long long)our_top0[j] == fr.top0[j] + 1; /* our ids start at 1 */
        printf("  same top-10 as faiss for query 0: %s\n", same ? "yes" : "NO");
    }
    fw_gallery_close(g);
    uv_run(&loop, UV_RUN_DEFAULT);

    /* ---- durable enrolls ---- */
    char dir[512];
    snprintf(dir, sizeof dir, "%s/fwbench-gallery.XXXXXX", dir_base);
    if (!mkdtemp(dir)) {
        fprintf(stderr, "mkdtemp %s: %s\n", dir, strerror(errno));
        return 1;
    }
    printf("\ndurable enroll into %s (fdatasync per group commit)\n", dir);
    int windows[2] = { 256, 1 };
    for (int w = 0; w < 2; w++) {
        size_t cnt_w = windows[w] == 1 ? (n_durable < 500 ? n_durable : 500) : n_durable;
        double *dl = malloc(cnt_w * sizeof *dl), *ds = malloc(cnt_w * sizeof *ds);
        o.data_dir = dir;
        if (!dl || !ds || fw_gallery_open(&o, &g, NULL, err, sizeof err) != 0) {
            fprintf(stderr, "open %s: %s\n", dir, err);
            return 1;
        }
        fw_gallery_attach_loop(g, &loop);
        t0 = now_ms();
        if (feed(&loop, g, x, n, cnt_w, windows[w], dl, ds) != 0)
            return 1;
        double ms = now_ms() - t0;
        fw_gallery_info_get(g, &info);
        qsort(dl, cnt_w, sizeof *dl, cmp_double);
        printf("  %3d in flight: %6zu records in %7.0f ms = %8.0f records/s; ack latency p50 "
               "%.2f ms, p99 %.2f ms, max %.2f ms; %llu compactions\n", windows[w], cnt_w, ms,
               cnt_w / (ms / 1000.0), dl[cnt_w / 2], dl[(size_t)(cnt_w * 0.99)],
               dl[cnt_w - 1], (unsigned long long)info.compactions);
        fw_gallery_close(g);
        uv_run(&loop, UV_RUN_DEFAULT);
        free(dl);
        free(ds);
        char p[600];
        snprintf(p, sizeof p, "%s/" GALOG_LOG_NAME, dir);
        unlink(p);
        snprintf(p, sizeof p, "%s/" GALOG_SNAP_NAME, dir);
        unlink(p);
    }
    char p[600];
    snprintf(p, sizeof p, "%s/" GALOG_LOCK_NAME, dir);
    unlink(p);
    rmdir(dir);
    uv_loop_close(&loop);
    free(x);
    free(q);
    free(lat);
    free(m);
    free(cnt);
    return 0;
}
