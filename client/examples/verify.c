/*
 * verify.c — the smallest useful libfacewire program: are the faces in two JPEGs the same
 * person? Built as bin/fw-example-verify (and for ARM with make CROSS=...).
 *
 *   fw-example-verify [HOST [PORT]] A.jpg B.jpg
 *
 * It is written the way a door terminal would use the library: all of the library's memory is
 * one static block (no malloc at all), every call is bounded by a timeout, and BUSY answers
 * are retried with back-off inside that same bound.
 */
#include "client/facewire.h"

#include <stdio.h>
#include <stdlib.h>

/* Room for the connection state plus a 64 KiB receive and 4 KiB send buffer. A VERIFY answer
 * is 9 bytes; the JPEGs themselves are sent from our memory, never copied into the library. */
static unsigned char client_mem[96 * 1024];

/* Read a whole file; the caller frees. Pictures on a device would come from the camera. */
static unsigned char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    unsigned char *buf = NULL;
    size_t cap = 0, n = 0, r;
    do {
        if (n == cap) {
            unsigned char *nb = cap < (16u << 20) ? realloc(buf, cap ? cap * 2 : 65536) : NULL;
            if (!nb) {
                free(buf);
                fclose(f);
                return NULL;
            }
            buf = nb;
            cap = cap ? cap * 2 : 65536;
        }
        r = fread(buf + n, 1, cap - n, f);
        n += r;
    } while (r > 0);
    fclose(f);
    *len = n;
    return buf;
}

int main(int argc, char **argv)
{
    if (argc < 3 || argc > 5) {
        fprintf(stderr, "usage: %s [HOST [PORT]] A.jpg B.jpg\n", argv[0]);
        return 2;
    }
    const char *a_path = argv[argc - 2], *b_path = argv[argc - 1];

    /* 1. Configure: always start from the defaults, then change what matters. */
    fw_client_config cfg;
    fw_client_config_init(&cfg);
    if (argc >= 4)
        cfg.host = argv[1];
    if (argc == 5)
        cfg.port = argv[2];
    cfg.timeout_ms = 3000;            /* no call may take longer than this, retries included */
    cfg.rx_buf_size = 64 * 1024;
    cfg.tx_buf_size = 4 * 1024;
    cfg.mem = client_mem;             /* use our block instead of malloc */
    cfg.mem_size = sizeof client_mem;
    cfg.retry.enabled = 1;            /* BUSY / UNAVAILABLE: back off and try again */

    /* 2. Open (checks the config, lays out the memory) and connect. */
    fw_client *c;
    if (fw_client_open(&cfg, &c) != FW_OK) {
        fprintf(stderr, "bad config: needs %zu bytes of memory\n", fw_client_footprint(&cfg));
        return 2;
    }
    if (fw_client_connect(c) != FW_OK) {
        fprintf(stderr, "%s\n", fw_client_errmsg(c)); /* e.g. "connect to ...: Connection refused" */
        fw_client_close(c);
        return 2;
    }

    /* 3. The pictures: the library reads them during the call and keeps no pointer. */
    size_t a_len = 0, b_len = 0;
    unsigned char *a = slurp(a_path, &a_len), *b = slurp(b_path, &b_len);
    int rc = 2;
    if (!a || !b) {
        fprintf(stderr, "cannot read %s\n", !a ? a_path : b_path);
        goto out;
    }

    /* 4. One synchronous call: 0 = OK, > 0 = the server's status, < 0 = a local error. */
    fw_input in_a = fw_input_jpeg(a, a_len), in_b = fw_input_jpeg(b, b_len);
    fw_verify_result v;
    int st = fw_verify(c, &in_a, &in_b, NULL /* the server's threshold */, &v);
    if (st == FW_OK) {
        printf("%s (distance %.3f, threshold %.3f)\n", v.same ? "same person" : "different people",
               (double)v.distance, (double)v.threshold);
        rc = 0;
    } else {
        /* NO_FACE, BAD_IMAGE, BUSY after the retries, FW_ERR_TIMEOUT, ... with a message. */
        fprintf(stderr, "%s: %s\n", fw_strerror(st), fw_client_errmsg(c));
        rc = st > 0 ? 1 : 2;
    }

out:
    free(a);
    free(b);
    fw_client_close(c); /* closes the socket; our static block needs no freeing */
    return rc;
}
