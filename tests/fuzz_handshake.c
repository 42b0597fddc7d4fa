/*
 * fuzz_handshake.c — libFuzzer harness for secure sessions (make fuzz).
 *
 * The first input byte picks what the rest of the input is fed to:
 *   0  a HELLO request body, to a fresh server session
 *   1  a HELLO response body, to a client that sent HELLO (pinned key = the test server's)
 *   2  an AUTH frame (20 header bytes + body), to a server awaiting AUTH
 *   3  an AUTH answer frame, to a client that sent AUTH
 *   4  a stream of frames, to an established server session (opened until one fails)
 *   5  an XOR mask over a genuine HELLO response: any change must make the client refuse
 *   6  an XOR mask over a genuine AUTH frame: any change must make the server refuse
 *   7  an XOR mask over a genuine sealed frame: any change must make open fail
 *   8  key-file lines and authorized-keys text
 * Modes 5-7 have an oracle: acceptance of a modified message is a __builtin_trap. Anything
 * else is caught by ASan/UBSan.
 *
 * libsodium's random source is replaced by a deterministic one reset for every input, so a
 * crash reproduces from its input alone. That replacement is process-global, which is fine in
 * a fuzzer and is why this trick stays out of the library.
 */
#include "client/fw_secure.h"
#include "server/keys.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

static uint64_t rng_counter;

static const char *rng_name(void) { return "fuzz-deterministic"; }
static uint32_t rng_random(void)
{
    uint32_t v;
    unsigned char seed[randombytes_SEEDBYTES] = {0};
    memcpy(seed, &rng_counter, sizeof rng_counter);
    rng_counter++;
    randombytes_buf_deterministic(&v, sizeof v, seed);
    return v;
}
static void rng_buf(void *buf, size_t n)
{
    unsigned char seed[randombytes_SEEDBYTES] = {0};
    memcpy(seed, &rng_counter, sizeof rng_counter);
    rng_counter++;
    randombytes_buf_deterministic(buf, n, seed);
}
static struct randombytes_implementation rng_impl = {
    .implementation_name = rng_name, .random = rng_random, .buf = rng_buf,
};

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    randombytes_set_implementation(&rng_impl);
    if (sodium_init() < 0)
        abort();
    return 0;
}

typedef struct world {
    fw_secure_identity server_id, client_id;
    uint8_t allowed[1][FW_SECURE_PK_LEN];
    fw_authorized_keys keys;
    fw_secure_session c, s;
    uint8_t hello[FW_SECURE_HELLO_LEN], resp[FW_SECURE_HELLO_RESP_LEN];
    uint8_t auth[FW_SECURE_AUTH_FRAME_LEN];
} world;

static fw_header hdr(uint8_t op, uint32_t id, uint8_t flags)
{
    fw_header h = {FW_MAGIC, FW_PROTO_VERSION, op, flags, 0, 0, id, 0, 0};
    return h;
}

static void world_init(world *w)
{
    uint8_t seed[32];
    memset(seed, 1, sizeof seed);
    fw_secure_identity_from_seed(&w->server_id, seed);
    memset(seed, 2, sizeof seed);
    fw_secure_identity_from_seed(&w->client_id, seed);
    memcpy(w->allowed[0], w->client_id.pk, FW_SECURE_PK_LEN);
    w->keys.pk = w->allowed;
    w->keys.n = 1;
    fw_secure_session_init(&w->c, 0);
    fw_secure_session_init(&w->s, 1);
}

/* Advance the genuine handshake by `steps` (1: HELLO sent, 2: answered, 3: AUTH sent,
 * 4: established on both sides). */
static void advance(world *w, int steps)
{
    fw_header h = hdr(FW_OP_AUTH, 1, 0);
    if (steps >= 1 && fw_secure_client_hello(&w->c, w->hello) != 0)
        __builtin_trap();
    if (steps >= 2 &&
        fw_secure_server_on_hello(&w->s, &w->server_id, w->hello, sizeof w->hello, w->resp) != 0)
        __builtin_trap();
    if (steps >= 3 && fw_secure_client_on_hello_response(&w->c, &w->client_id, w->server_id.pk,
                                                         w->resp, sizeof w->resp, &h, w->auth) != 0)
        __builtin_trap();
    if (steps >= 4) {
        if (fw_secure_server_on_auth(&w->s, &w->keys, w->auth, w->auth + FW_HEADER_LEN,
                                     FW_SECURE_AUTH_BODY_LEN) != 0)
            __builtin_trap();
        uint8_t ans[FW_HEADER_LEN + FW_SECURE_TAG_LEN];
        fw_header r = hdr(FW_OP_AUTH, 1, FW_FLAG_RESPONSE);
        size_t n = 0;
        if (fw_secure_seal(&w->s, &r, NULL, 0, ans, sizeof ans, &n) != 0 ||
            fw_secure_client_on_auth_response(&w->c, ans, ans + FW_HEADER_LEN,
                                              n - FW_HEADER_LEN) != 0)
            __builtin_trap();
    }
}

/* Feed `d` as one frame (header + body) to f; too short inputs get a zero header. */
static void as_frame(const uint8_t *d, size_t n, uint8_t out_hdr[FW_HEADER_LEN],
                     const uint8_t **body, size_t *blen)
{
    memset(out_hdr, 0, FW_HEADER_LEN);
    memcpy(out_hdr, d, n < FW_HEADER_LEN ? n : FW_HEADER_LEN);
    *body = n > FW_HEADER_LEN ? d + FW_HEADER_LEN : d + n;
    *blen = n > FW_HEADER_LEN ? n - FW_HEADER_LEN : 0;
}

/* XOR mask m over buf (cycled only once: bytes past len are ignored). Returns 1 if any byte
 * changed. */
static int apply_mask(uint8_t *buf, size_t len, const uint8_t *m, size_t mlen)
{
    int changed = 0;
    for (size_t i = 0; i < len && i < mlen; i++) {
        buf[i] ^= m[i];
        changed |= m[i] != 0;
    }
    return changed;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    rng_counter = 0;
    uint8_t mode = data[0] % 9;
    data++;
    size--;
    world w;
    world_init(&w);
    uint8_t h[FW_HEADER_LEN];
    const uint8_t *body;
    size_t blen;
    fw_header ah = hdr(FW_OP_AUTH, 1, 0);

    switch (mode) {
    case 0: {
        uint8_t resp[FW_SECURE_HELLO_RESP_LEN];
        (void)fw_secure_server_on_hello(&w.s, &w.server_id, data, size, resp);
        break;
    }
    case 1:
        advance(&w, 1);
        (void)fw_secure_client_on_hello_response(&w.c, &w.client_id, w.server_id.pk, data, size,
                                                 &ah, w.auth);
        break;
    case 2:
        advance(&w, 2);
        as_frame(data, size, h, &body, &blen);
        if (fw_secure_server_on_auth(&w.s, &w.keys, h, body, blen) == 0)
            __builtin_trap(); /* nobody can forge an AUTH for a handshake they did not see */
        break;
    case 3:
        advance(&w, 3);
        as_frame(data, size, h, &body, &blen);
        (void)fw_secure_client_on_auth_response(&w.c, h, body, blen);
        break;
    case 4: {
        advance(&w, 4);
        uint8_t plain[512];
        size_t off = 0;
        while (off < size) {
            fw_header fh;
            int have = 0;
            size_t n = fw_frame_scan(data + off, size - off, &fh, &have);
            if (n == 0)
                break;
            size_t plen = 0;
            if (fw_secure_open(&w.s, data + off, data + off + FW_HEADER_LEN, n - FW_HEADER_LEN,
                               plain, sizeof plain, &plen) != 0)
                break;
            __builtin_trap(); /* the fuzzer does not know the keys */
        }
        break;
    }
    case 5: {
        advance(&w, 2);
        uint8_t resp[FW_SECURE_HELLO_RESP_LEN];
        memcpy(resp, w.resp, sizeof resp);
        int changed = apply_mask(resp, sizeof resp, data, size);
        int rc = fw_secure_client_on_hello_response(&w.c, &w.client_id, w.server_id.pk, resp,
                                                    sizeof resp, &ah, w.auth);
        if ((rc == 0) == changed)
            __builtin_trap();
        break;
    }
    case 6: {
        advance(&w, 3);
        uint8_t auth[FW_SECURE_AUTH_FRAME_LEN];
        memcpy(auth, w.auth, sizeof auth);
        int changed = apply_mask(auth, sizeof auth, data, size);
        int rc = fw_secure_server_on_auth(&w.s, &w.keys, auth, auth + FW_HEADER_LEN,
                                          FW_SECURE_AUTH_BODY_LEN);
        if ((rc == 0) == changed)
            __builtin_trap();
        break;
    }
    case 7: {
        advance(&w, 4);
        uint8_t frame[FW_HEADER_LEN + 64 + FW_SECURE_TAG_LEN], plain[64];
        fw_header fh = hdr(FW_OP_PING, 9, 0);
        size_t n = 0, plen = 0;
        if (fw_secure_seal(&w.c, &fh, (const uint8_t *)"0123456789abcdef", 16, frame,
                           sizeof frame, &n) != 0)
            __builtin_trap();
        int changed = apply_mask(frame, n, data, size);
        int rc = fw_secure_open(&w.s, frame, frame + FW_HEADER_LEN, n - FW_HEADER_LEN, plain,
                                sizeof plain, &plen);
        if ((rc == 0) == changed)
            __builtin_trap();
        break;
    }
    case 8: {
        uint8_t key[32];
        const char *why;
        (void)fw_secure_parse_key_line((const char *)data, size, FW_SECURE_PUB_TAG, key, &why);
        (void)fw_secure_parse_key_line((const char *)data, size, FW_SECURE_SECRET_TAG, key, &why);
        fw_authorized_keys keys;
        size_t n_bad = 0;
        char err[128];
        if (fw_keys_parse_authorized((const char *)data, size, "fuzz", &keys, &n_bad, err,
                                     sizeof err) == 0) {
            for (size_t i = 1; i < keys.n; i++)
                if (memcmp(keys.pk[i - 1], keys.pk[i], 32) >= 0)
                    __builtin_trap(); /* must be sorted and unique */
            for (size_t i = 0; i < keys.n; i++)
                if (!fw_authorized_keys_contains(&keys, keys.pk[i]))
                    __builtin_trap();
            fw_keys_free_authorized(&keys);
        }
        break;
    }
    }
    fw_secure_session_wipe(&w.c);
    fw_secure_session_wipe(&w.s);
    return 0;
}
