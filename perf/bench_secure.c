/*
 * bench_secure.c — what secure sessions cost.
 *
 *   bin/bench_secure [runs]   (runs >= 5, default 7): CPU only, one thread, no network
 *   bin/bench_secure --server HOST PORT KEY SERVER_PUB [JPEG|- [SERVER_PID]]: end to end
 *       against a running facewired that accepts both plaintext and sealed sessions
 *       (loopback, no --require-secure), through libfacewire
 *
 * What a server pays per request on top of a plaintext one is one fw_secure_open() of the
 * request and one fw_secure_seal() of the response; this measures that pair (seal on one
 * session, open on its peer, in place, as the connection layer would) for body sizes from an
 * empty PING to a large EMBED JPEG, and the cost of one complete handshake (both sides).
 * Each figure is the median of `runs` timed batches after one warm-up batch. One JSON line
 * per measurement:
 *   {"what":"seal_open","body":1024,"ns_per_frame":..,"mb_per_s":..,"runs":..}
 *   {"what":"handshake","us_per_handshake":..,"runs":..}
 *
 * The end-to-end mode measures, in the same run, PING throughput over one connection with 32
 * requests in flight (2 s per round, rounds alternating plaintext / sealed, 3 each, the
 * median kept), and with a JPEG the median EMBED latency (15 calls each, alternating):
 *   {"what":"ping_e2e","plain_rps":..,"sealed_rps":..,"ratio":..}
 *   {"what":"embed_e2e","plain_ms":..,"sealed_ms":..,"ratio":..}
 * One client thread drives one connection: on a 2-core box client and server share the CPU,
 * and other load moves the rates between runs. With SERVER_PID the server's own CPU time
 * per PING (from /proc) is reported for each mode too ("plain_us", "sealed_us"): what the
 * server pays per request is the steadier figure on a shared machine.
 */
#include "client/fw_secure.h"
#include "client/facewire.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* A complete in-memory handshake; 0 on success. */
static int handshake(const fw_secure_identity *sid, const fw_secure_identity *cid,
                     const fw_authorized_keys *keys, fw_secure_session *c, fw_secure_session *s)
{
    uint8_t hello[FW_SECURE_HELLO_LEN], resp[FW_SECURE_HELLO_RESP_LEN];
    uint8_t auth[FW_SECURE_AUTH_FRAME_LEN], ans[FW_HEADER_LEN + FW_SECURE_TAG_LEN];
    fw_header h = {FW_MAGIC, FW_PROTO_VERSION, FW_OP_AUTH, 0, 0, 0, 1, 0, 0};
    fw_header r = {FW_MAGIC, FW_PROTO_VERSION, FW_OP_AUTH, FW_FLAG_RESPONSE, 0, 0, 1, 0, 0};
    size_t n = 0;
    if (fw_secure_session_init(c, 0) || fw_secure_session_init(s, 1) ||
        fw_secure_client_hello(c, hello) ||
        fw_secure_server_on_hello(s, sid, hello, sizeof hello, resp) ||
        fw_secure_client_on_hello_response(c, cid, sid->pk, resp, sizeof resp, &h, auth) ||
        fw_secure_server_on_auth(s, keys, auth, auth + FW_HEADER_LEN, FW_SECURE_AUTH_BODY_LEN) ||
        fw_secure_seal(s, &r, NULL, 0, ans, sizeof ans, &n) ||
        fw_secure_client_on_auth_response(c, ans, ans + FW_HEADER_LEN, n - FW_HEADER_LEN))
        return -1;
    return 0;
}

#define E2E_WINDOW 32
#define E2E_ROUNDS 3
#define E2E_SECONDS 2.0
#define E2E_EMBEDS 15

static fw_client *e2e_client(const char *host, const char *port, const fw_client_secure *sec)
{
    fw_client_config cfg;
    fw_client *c = NULL;
    fw_client_config_init(&cfg);
    cfg.host = host;
    cfg.port = port;
    cfg.timeout_ms = 30000;
    cfg.secure = sec;
    cfg.rx_buf_size = 1u << 20;
    cfg.tx_buf_size = 4u << 20; /* a sealed EMBED carries the whole JPEG in tx */
    if (fw_client_open(&cfg, &c) != FW_OK)
        return NULL;
    if (fw_client_connect(c) != FW_OK) {
        fprintf(stderr, "bench_secure: connect: %s\n", fw_client_errmsg(c));
        fw_client_close(c);
        return NULL;
    }
    return c;
}

/* utime + stime of a process in seconds, or -1 (no /proc, no such process). */
static double proc_cpu_s(long pid)
{
    char path[64], buf[1024];
    if (pid <= 0)
        return -1;
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    /* fields after the ")" that ends the command name: state is field 3, utime 14, stime 15 */
    const char *p = strrchr(buf, ')');
    unsigned long long ut = 0, st = 0;
    if (!p || sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
        return -1;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

/* PINGs with E2E_WINDOW in flight for E2E_SECONDS: requests per second, or -1. *count gets
 * the number of PINGs answered. */
static double e2e_ping_round(fw_client *c, uint64_t *count)
{
    static const char body[] = "0123456789abcdef0123456789abcdef"; /* 32 bytes, like a probe */
    uint32_t id;
    for (int i = 0; i < E2E_WINDOW; i++)
        if (fw_send(c, FW_OP_PING, body, sizeof body - 1, &id) != FW_OK)
            return -1;
    uint64_t done = 0;
    double t0 = now_ns(), t1 = t0;
    while ((t1 = now_ns()) - t0 < E2E_SECONDS * 1e9) {
        fw_response r;
        if (fw_recv(c, FW_ANY_REQUEST, &r) != FW_OK || r.hdr.status != FW_STATUS_OK ||
            fw_send(c, FW_OP_PING, body, sizeof body - 1, &id) != FW_OK)
            return -1;
        done++;
    }
    for (int i = 0; i < E2E_WINDOW; i++) { /* drain, so the next round starts clean */
        fw_response r;
        if (fw_recv(c, FW_ANY_REQUEST, &r) != FW_OK)
            return -1;
    }
    *count += done + E2E_WINDOW;
    return (double)done / ((t1 - t0) / 1e9);
}

static uint8_t *e2e_read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    uint8_t *buf = malloc(4u << 20);
    size_t n = buf ? fread(buf, 1, 4u << 20, f) : 0;
    fclose(f);
    if (!buf || n == 0 || n == 4u << 20) {
        free(buf);
        return NULL;
    }
    *len = n;
    return buf;
}

static int e2e_main(int argc, char **argv)
{
    if (argc < 6) {
        fprintf(stderr, "usage: bench_secure --server HOST PORT KEY SERVER_PUB [JPEG]\n");
        return 2;
    }
    fw_client_secure sec;
    char err[512];
    if (fw_client_secure_load(&sec, argv[4], argv[5], err, sizeof err) != FW_OK) {
        fprintf(stderr, "bench_secure: %s\n", err);
        return 1;
    }
    long pid = argc > 7 ? atol(argv[7]) : 0;
    fw_client *plain = e2e_client(argv[2], argv[3], NULL);
    fw_client *sealed = e2e_client(argv[2], argv[3], &sec);
    int rc = 1;
    double p[E2E_ROUNDS], q[E2E_ROUNDS], cpu_p = 0, cpu_q = 0;
    uint64_t n_p = 0, n_q = 0;
    if (!plain || !sealed)
        goto out;
    for (int r = 0; r < E2E_ROUNDS; r++) {
        double c0 = proc_cpu_s(pid);
        p[r] = e2e_ping_round(plain, &n_p);
        double c1 = proc_cpu_s(pid);
        q[r] = p[r] < 0 ? -1 : e2e_ping_round(sealed, &n_q);
        double c2 = proc_cpu_s(pid);
        if (p[r] < 0 || q[r] < 0) {
            fprintf(stderr, "bench_secure: ping failed: %s / %s\n", fw_client_errmsg(plain),
                    fw_client_errmsg(sealed));
            goto out;
        }
        cpu_p += c1 - c0;
        cpu_q += c2 - c1;
    }
    double pm = median(p, E2E_ROUNDS), qm = median(q, E2E_ROUNDS);
    printf("{\"what\":\"ping_e2e\",\"plain_rps\":%.0f,\"sealed_rps\":%.0f,\"ratio\":%.3f,",
           pm, qm, qm / pm);
    if (pid > 0 && proc_cpu_s(pid) >= 0 && n_p && n_q)
        printf("\"server_plain_us\":%.2f,\"server_sealed_us\":%.2f,\"server_ratio\":%.3f,",
               cpu_p * 1e6 / (double)n_p, cpu_q * 1e6 / (double)n_q,
               (cpu_p / (double)n_p) / (cpu_q / (double)n_q));
    printf("\"window\":%d,\"rounds\":%d}\n", E2E_WINDOW, E2E_ROUNDS);
    if (argc > 6 && strcmp(argv[6], "-") != 0) {
        size_t len = 0;
        uint8_t *jpeg = e2e_read_file(argv[6], &len);
        static fw_face faces[16];
        double a[E2E_EMBEDS], b[E2E_EMBEDS];
        if (!jpeg) {
            fprintf(stderr, "bench_secure: cannot read %s (or over 4 MiB)\n", argv[6]);
            goto out;
        }
        for (int i = 0; i < E2E_EMBEDS; i++) {
            fw_image_result res;
            double t0 = now_ns();
            int e1 = fw_embed(plain, jpeg, len, faces, 16, &res);
            double t1 = now_ns();
            int e2 = fw_embed(sealed, jpeg, len, faces, 16, &res);
            double t2 = now_ns();
            if (e1 != FW_OK || e2 != FW_OK) {
                fprintf(stderr, "bench_secure: embed failed: %s / %s\n", fw_client_errmsg(plain),
                        fw_client_errmsg(sealed));
                free(jpeg);
                goto out;
            }
            a[i] = (t1 - t0) / 1e6;
            b[i] = (t2 - t1) / 1e6;
        }
        free(jpeg);
        double am = median(a, E2E_EMBEDS), bm = median(b, E2E_EMBEDS);
        printf("{\"what\":\"embed_e2e\",\"plain_ms\":%.2f,\"sealed_ms\":%.2f,\"ratio\":%.3f,"
               "\"bytes\":%zu,\"calls\":%d}\n", am, bm, bm / am, len, E2E_EMBEDS);
    }
    rc = 0;
out:
    fw_client_close(plain);
    fw_client_close(sealed);
    memset(&sec, 0, sizeof sec);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--server") == 0)
        return e2e_main(argc, argv);
    int runs = argc > 1 ? atoi(argv[1]) : 7;
    if (runs < 5)
        runs = 5;
    fw_secure_identity sid, cid;
    uint8_t allowed[1][FW_SECURE_PK_LEN];
    if (fw_secure_identity_generate(&sid, NULL) || fw_secure_identity_generate(&cid, NULL)) {
        fprintf(stderr, "bench_secure: libsodium failed to initialise\n");
        return 1;
    }
    memcpy(allowed[0], cid.pk, FW_SECURE_PK_LEN);
    fw_authorized_keys keys = {allowed, 1};
    fw_secure_session c, s;
    double *t = malloc((size_t)runs * sizeof *t);
    static const size_t sizes[] = {0, 64, 1024, 16384, 65536, 1u << 20};
    size_t maxb = sizes[sizeof sizes / sizeof sizes[0] - 1];
    uint8_t *frame = malloc(FW_HEADER_LEN + maxb + FW_SECURE_TAG_LEN);
    if (!t || !frame || handshake(&sid, &cid, &keys, &c, &s) != 0) {
        fprintf(stderr, "bench_secure: setup failed\n");
        free(t);
        free(frame);
        return 1;
    }
    memset(frame, 0x5a, FW_HEADER_LEN + maxb + FW_SECURE_TAG_LEN);

    for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
        size_t body = sizes[si];
        /* about 8 MiB of body (at least 16 frames) per batch: the whole run takes a few seconds */
        long iters = (long)((8u << 20) / (body + 64));
        if (iters < 16)
            iters = 16;
        for (int r = -1; r < runs; r++) {
            double t0 = now_ns();
            for (long i = 0; i < iters; i++) {
                fw_header h = {FW_MAGIC, FW_PROTO_VERSION, FW_OP_PING, 0, 0, 0, (uint32_t)i, 0, 0};
                size_t n = 0, plen = 0;
                if (fw_secure_seal(&c, &h, frame + FW_HEADER_LEN, body, frame,
                                   FW_HEADER_LEN + maxb + FW_SECURE_TAG_LEN, &n) ||
                    fw_secure_open(&s, frame, frame + FW_HEADER_LEN, n - FW_HEADER_LEN,
                                   frame + FW_HEADER_LEN, maxb, &plen) || plen != body) {
                    fprintf(stderr, "bench_secure: seal/open failed\n");
                    free(t);
                    free(frame);
                    return 1;
                }
            }
            if (r >= 0)
                t[r] = (now_ns() - t0) / (double)iters;
        }
        double ns = median(t, runs);
        printf("{\"what\":\"seal_open\",\"body\":%zu,\"ns_per_frame\":%.0f,\"mb_per_s\":%.1f,"
               "\"runs\":%d}\n", body, ns, body ? (double)body / ns * 1e3 : 0.0, runs);
    }

    int hs = 50;
    for (int r = -1; r < runs; r++) {
        double t0 = now_ns();
        for (int i = 0; i < hs; i++)
            if (handshake(&sid, &cid, &keys, &c, &s) != 0) {
                fprintf(stderr, "bench_secure: handshake failed\n");
                free(t);
                free(frame);
                return 1;
            }
        if (r >= 0)
            t[r] = (now_ns() - t0) / hs;
    }
    printf("{\"what\":\"handshake\",\"us_per_handshake\":%.1f,\"runs\":%d}\n", median(t, runs) / 1e3,
           runs);
    fw_secure_session_wipe(&c);
    fw_secure_session_wipe(&s);
    free(t);
    free(frame);
    return 0;
}
