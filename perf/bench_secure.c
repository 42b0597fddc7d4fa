/*
 * bench_secure.c — the CPU cost of secure sessions, one thread, no network.
 *
 *   bin/bench_secure [runs]   (runs >= 5, default 7)
 *
 * What a server pays per request on top of a plaintext one is one fw_secure_open() of the
 * request and one fw_secure_seal() of the response; this measures that pair (seal on one
 * session, open on its peer, in place, as the connection layer would) for body sizes from an
 * empty PING to a large EMBED JPEG, and the cost of one complete handshake (both sides).
 * Each figure is the median of `runs` timed batches after one warm-up batch. One JSON line
 * per measurement:
 *   {"what":"seal_open","body":1024,"ns_per_frame":..,"mb_per_s":..,"runs":..}
 *   {"what":"handshake","us_per_handshake":..,"runs":..}
 * The end-to-end comparison (PING and EMBED sealed vs plaintext through facewired) needs the
 * handshake in fwload; until then these are the honest figures.
 */
#include "client/fw_secure.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

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

int main(int argc, char **argv)
{
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
