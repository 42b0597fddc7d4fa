/*
 * test_secure.c — secure sessions (client/fw_secure.c) and key files (server/keys.c).
 *
 * The handshake is driven in memory between a client and a server session, the way the
 * server's connection layer and libfacewire drive it over a socket: each side only ever sees
 * the bytes the other produced. An attacker is simulated by changing those bytes. Every
 * failure is asserted with its exact error code, and that the failed session stays failed.
 * Key-file tests work in a fresh directory under $TMPDIR (or /tmp). The end-to-end tests
 * (t_e2e_*) run $FW_BIN/facewired and $FW_BIN/fwcat: raw sockets drive the handshake with
 * fw_secure directly, so an attacker's bytes can be sent; fwcat covers libfacewire.
 */
#include "check.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <netinet/in.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>

#include "client/facewire.h"
#include "client/fw_secure.h"
#include "server/keys.h"
#include "tests/tu_server.h"

/* ---- helpers -------------------------------------------------------------------------------- */

typedef struct pair {
    fw_secure_identity server_id, client_id;
    fw_secure_session c, s;
    uint8_t allowed[2][FW_SECURE_PK_LEN];
    fw_authorized_keys keys;
} pair;

static fw_header req_header(uint8_t op, uint32_t id)
{
    fw_header h = {FW_MAGIC, FW_PROTO_VERSION, op, 0, FW_PRIO_NORMAL, 0, id, 0, 0};
    return h;
}

static void pair_init(pair *p)
{
    memset(p, 0, sizeof *p);
    fw_secure_identity_generate(&p->server_id, NULL);
    fw_secure_identity_generate(&p->client_id, NULL);
    memcpy(p->allowed[0], p->client_id.pk, FW_SECURE_PK_LEN);
    p->keys.pk = p->allowed;
    p->keys.n = 1;
    fw_secure_session_init(&p->c, 0);
    fw_secure_session_init(&p->s, 1);
}

/* The whole handshake; returns the first failing step's error (0 on success). */
static int pair_handshake(pair *p)
{
    uint8_t hello[FW_SECURE_HELLO_LEN], resp[FW_SECURE_HELLO_RESP_LEN];
    uint8_t auth[FW_SECURE_AUTH_FRAME_LEN], ans[FW_HEADER_LEN + FW_SECURE_TAG_LEN];
    int rc;
    if ((rc = fw_secure_client_hello(&p->c, hello)) != 0)
        return rc;
    if ((rc = fw_secure_server_on_hello(&p->s, &p->server_id, hello, sizeof hello, resp)) != 0)
        return rc;
    fw_header h = req_header(FW_OP_AUTH, 2);
    if ((rc = fw_secure_client_on_hello_response(&p->c, &p->client_id, p->server_id.pk, resp,
                                                 sizeof resp, &h, auth)) != 0)
        return rc;
    if ((rc = fw_secure_server_on_auth(&p->s, &p->keys, auth, auth + FW_HEADER_LEN,
                                       FW_SECURE_AUTH_BODY_LEN)) != 0)
        return rc;
    fw_header r = req_header(FW_OP_AUTH, 2);
    r.flags = FW_FLAG_RESPONSE;
    size_t n = 0;
    if ((rc = fw_secure_seal(&p->s, &r, NULL, 0, ans, sizeof ans, &n)) != 0)
        return rc;
    return fw_secure_client_on_auth_response(&p->c, ans, ans + FW_HEADER_LEN, n - FW_HEADER_LEN);
}

/* Seal `msg` from `from` as a PING with request id `id`; returns the frame length. */
static size_t seal_ping(fw_secure_session *from, uint32_t id, const char *msg, uint8_t *out,
                        size_t cap)
{
    fw_header h = req_header(FW_OP_PING, id);
    size_t n = 0;
    if (fw_secure_seal(from, &h, (const uint8_t *)msg, strlen(msg), out, cap, &n) != 0)
        return 0;
    return n;
}

static int open_frame(fw_secure_session *to, const uint8_t *frame, size_t n, uint8_t *plain,
                      size_t cap, size_t *plen)
{
    return fw_secure_open(to, frame, frame + FW_HEADER_LEN, n - FW_HEADER_LEN, plain, cap, plen);
}

/* ---- handshake ------------------------------------------------------------------------------ */

static void t_handshake_and_roundtrip(void)
{
    pair p;
    pair_init(&p);
    CHECK_EQ_INT(pair_handshake(&p), 0);
    CHECK_EQ_INT(fw_secure_state(&p.c), FW_SEC_ESTABLISHED);
    CHECK_EQ_INT(fw_secure_state(&p.s), FW_SEC_ESTABLISHED);
    /* Each side knows who the other is, and the direction keys pair up. */
    CHECK(memcmp(fw_secure_peer_key(&p.s), p.client_id.pk, FW_SECURE_PK_LEN) == 0);
    CHECK(memcmp(fw_secure_peer_key(&p.c), p.server_id.pk, FW_SECURE_PK_LEN) == 0);
    CHECK(memcmp(p.c.k_tx, p.s.k_rx, 32) == 0);
    CHECK(memcmp(p.c.k_rx, p.s.k_tx, 32) == 0);
    CHECK(memcmp(p.c.k_tx, p.c.k_rx, 32) != 0);
    /* The ephemeral secrets are gone (forward secrecy). */
    static const uint8_t zero[32];
    CHECK(memcmp(p.c.eph_sk, zero, 32) == 0 && memcmp(p.s.eph_sk, zero, 32) == 0);

    uint8_t frame[256], plain[256];
    size_t plen = 0;
    for (uint32_t i = 0; i < 5; i++) {
        size_t n = seal_ping(&p.c, 10 + i, "hello server", frame, sizeof frame);
        CHECK_EQ_INT(n, FW_HEADER_LEN + 12 + FW_SECURE_TAG_LEN);
        fw_header h;
        fw_header_decode(frame, &h);
        CHECK(h.flags & FW_FLAG_SEALED);
        CHECK_EQ_INT(h.body_len, 12 + FW_SECURE_TAG_LEN);
        CHECK_EQ_INT(h.request_id, 10 + i);
        CHECK(memmem(frame, n, "hello", 5) == NULL); /* no plaintext on the wire */
        CHECK_EQ_INT(open_frame(&p.s, frame, n, plain, sizeof plain, &plen), 0);
        CHECK_EQ_INT(plen, 12);
        CHECK(memcmp(plain, "hello server", 12) == 0);

        fw_header r = req_header(FW_OP_PING, 10 + i);
        r.flags = FW_FLAG_RESPONSE;
        size_t m = 0;
        CHECK_EQ_INT(fw_secure_seal(&p.s, &r, plain, plen, frame, sizeof frame, &m), 0);
        CHECK_EQ_INT(open_frame(&p.c, frame, m, plain, sizeof plain, &plen), 0);
        CHECK_EQ_INT(plen, 12);
    }
    /* In place, both ways round, and an empty body. */
    memcpy(frame + FW_HEADER_LEN, "in place", 8);
    fw_header h = req_header(FW_OP_PING, 99);
    size_t n = 0;
    CHECK_EQ_INT(fw_secure_seal(&p.c, &h, frame + FW_HEADER_LEN, 8, frame, sizeof frame, &n), 0);
    CHECK_EQ_INT(open_frame(&p.s, frame, n, frame + FW_HEADER_LEN, n - FW_HEADER_LEN, &plen), 0);
    CHECK(plen == 8 && memcmp(frame + FW_HEADER_LEN, "in place", 8) == 0);
    h = req_header(FW_OP_INFO, 100);
    CHECK_EQ_INT(fw_secure_seal(&p.c, &h, NULL, 0, frame, sizeof frame, &n), 0);
    CHECK_EQ_INT(n, FW_HEADER_LEN + FW_SECURE_TAG_LEN);
    CHECK_EQ_INT(open_frame(&p.s, frame, n, plain, 0, &plen), 0);
    CHECK_EQ_INT(plen, 0);
    fw_secure_session_wipe(&p.c);
    fw_secure_session_wipe(&p.s);
    CHECK_EQ_INT(fw_secure_state(&p.c), FW_SEC_NONE);
}

/* Two handshakes between the same identities give unrelated keys. */
static void t_sessions_independent(void)
{
    pair a, b;
    pair_init(&a);
    b = a;
    fw_secure_session_init(&b.c, 0);
    fw_secure_session_init(&b.s, 1);
    b.keys.pk = b.allowed;
    CHECK_EQ_INT(pair_handshake(&a), 0);
    CHECK_EQ_INT(pair_handshake(&b), 0);
    CHECK(memcmp(a.c.k_tx, b.c.k_tx, 32) != 0);
    uint8_t frame[128], plain[128];
    size_t plen;
    size_t n = seal_ping(&a.c, 1, "for a", frame, sizeof frame);
    CHECK_EQ_INT(open_frame(&b.s, frame, n, plain, sizeof plain, &plen), FW_SEC_E_OPEN);
}

static void t_wrong_server_key(void)
{
    pair p;
    pair_init(&p);
    fw_secure_identity other;
    fw_secure_identity_generate(&other, NULL);
    uint8_t hello[FW_SECURE_HELLO_LEN], resp[FW_SECURE_HELLO_RESP_LEN];
    uint8_t auth[FW_SECURE_AUTH_FRAME_LEN];
    CHECK_EQ_INT(fw_secure_client_hello(&p.c, hello), 0);
    CHECK_EQ_INT(fw_secure_server_on_hello(&p.s, &p.server_id, hello, sizeof hello, resp), 0);
    fw_header h = req_header(FW_OP_AUTH, 1);
    /* The client pinned another key than the one this server has. */
    CHECK_EQ_INT(fw_secure_client_on_hello_response(&p.c, &p.client_id, other.pk, resp,
                                                    sizeof resp, &h, auth),
                 FW_SEC_E_SERVER_KEY);
    CHECK_EQ_INT(fw_secure_state(&p.c), FW_SEC_FAILED);
    CHECK_EQ_STR(fw_secure_strerror(FW_SEC_E_SERVER_KEY),
                 "server key mismatch: the server is not the pinned one");
    /* A failed session refuses everything afterwards. */
    uint8_t frame[64];
    size_t n;
    fw_header x = req_header(FW_OP_PING, 3);
    CHECK_EQ_INT(fw_secure_seal(&p.c, &x, NULL, 0, frame, sizeof frame, &n), FW_SEC_E_STATE);
}

/* A man in the middle with his own key: he either shows his own key (pinning refuses it) or
 * claims the pinned key and signs with his own (the signature fails). */
static void t_mitm_signature(void)
{
    pair p;
    pair_init(&p);
    fw_secure_identity mallory = p.server_id;
    fw_secure_identity mk;
    fw_secure_identity_generate(&mk, NULL);
    memcpy(mallory.sk, mk.sk, sizeof mallory.sk); /* pinned pk, wrong secret */
    fw_secure_session ms;
    fw_secure_session_init(&ms, 1);
    uint8_t hello[FW_SECURE_HELLO_LEN], resp[FW_SECURE_HELLO_RESP_LEN];
    uint8_t auth[FW_SECURE_AUTH_FRAME_LEN];
    CHECK_EQ_INT(fw_secure_client_hello(&p.c, hello), 0);
    CHECK_EQ_INT(fw_secure_server_on_hello(&ms, &mallory, hello, sizeof hello, resp), 0);
    fw_header h = req_header(FW_OP_AUTH, 1);
    CHECK_EQ_INT(fw_secure_client_on_hello_response(&p.c, &p.client_id, p.server_id.pk, resp,
                                                    sizeof resp, &h, auth),
                 FW_SEC_E_SIGNATURE);

    /* Replacing the server's ephemeral key in a genuine response breaks the signature too. */
    pair q;
    pair_init(&q);
    CHECK_EQ_INT(fw_secure_client_hello(&q.c, hello), 0);
    CHECK_EQ_INT(fw_secure_server_on_hello(&q.s, &q.server_id, hello, sizeof hello, resp), 0);
    uint8_t epk[32], esk[32];
    crypto_kx_keypair(epk, esk);
    memcpy(resp + 1, epk, 32);
    CHECK_EQ_INT(fw_secure_client_on_hello_response(&q.c, &q.client_id, q.server_id.pk, resp,
                                                    sizeof resp, &h, auth),
                 FW_SEC_E_SIGNATURE);
}

static void t_unknown_client_key(void)
{
    pair p;
    pair_init(&p);
    fw_secure_identity other;
    fw_secure_identity_generate(&other, NULL);
    memcpy(p.allowed[0], other.pk, FW_SECURE_PK_LEN); /* only someone else is authorized */
    CHECK_EQ_INT(pair_handshake(&p), FW_SEC_E_UNKNOWN_KEY);
    CHECK_EQ_INT(fw_secure_state(&p.s), FW_SEC_FAILED);
    CHECK(fw_secure_peer_key(&p.s) == NULL);

    /* The server answers a plaintext UNAUTHORIZED: the client reports the rejection. */
    uint8_t ans[64];
    fw_header r = req_header(FW_OP_AUTH, 2);
    r.flags = FW_FLAG_RESPONSE;
    r.status = FW_STATUS_UNAUTHORIZED;
    size_t bl = fw_error_body(ans + FW_HEADER_LEN, sizeof ans - FW_HEADER_LEN,
                              "unknown client key");
    r.body_len = (uint32_t)bl;
    fw_header_encode(&r, ans);
    CHECK_EQ_INT(fw_secure_client_on_auth_response(&p.c, ans, ans + FW_HEADER_LEN, bl),
                 FW_SEC_E_REJECTED);

    /* An empty list admits nobody. */
    pair q;
    pair_init(&q);
    q.keys.n = 0;
    CHECK_EQ_INT(pair_handshake(&q), FW_SEC_E_UNKNOWN_KEY);
}

/* The client claims an authorized identity but cannot sign for it. */
static void t_client_signature_forged(void)
{
    pair p;
    pair_init(&p);
    fw_secure_identity liar = p.client_id, other;
    fw_secure_identity_generate(&other, NULL);
    memcpy(liar.sk, other.sk, sizeof liar.sk);
    p.client_id = liar;
    CHECK_EQ_INT(pair_handshake(&p), FW_SEC_E_SIGNATURE);
    CHECK_EQ_INT(fw_secure_state(&p.s), FW_SEC_FAILED);
}

/* ---- frames --------------------------------------------------------------------------------- */

/* Set up an established pair and one sealed client frame in f (length *n). */
static int sealed_setup(pair *p, uint8_t *f, size_t cap, size_t *n)
{
    pair_init(p);
    if (pair_handshake(p) != 0)
        return -1;
    *n = seal_ping(&p->c, 7, "descriptor bytes", f, cap);
    return *n ? 0 : -1;
}

static void t_tampered_frames(void)
{
    pair p;
    uint8_t f[128], plain[128];
    size_t n, plen;

    /* flipped ciphertext byte */
    CHECK_EQ_INT(sealed_setup(&p, f, sizeof f, &n), 0);
    f[FW_HEADER_LEN + 3] ^= 0x01;
    CHECK_EQ_INT(open_frame(&p.s, f, n, plain, sizeof plain, &plen), FW_SEC_E_OPEN);
    CHECK_EQ_INT(fw_secure_state(&p.s), FW_SEC_FAILED);

    /* flipped tag byte */
    CHECK_EQ_INT(sealed_setup(&p, f, sizeof f, &n), 0);
    f[n - 1] ^= 0x80;
    CHECK_EQ_INT(open_frame(&p.s, f, n, plain, sizeof plain, &plen), FW_SEC_E_OPEN);

    /* flipped header bytes: request_id, opcode, priority, deadline (the header is AD) */
    static const int offs[] = {3, 5, 8, 11, 12};
    for (size_t i = 0; i < sizeof offs / sizeof offs[0]; i++) {
        CHECK_EQ_INT(sealed_setup(&p, f, sizeof f, &n), 0);
        f[offs[i]] ^= 0x01;
        CHECK_MSG(open_frame(&p.s, f, n, plain, sizeof plain, &plen) == FW_SEC_E_OPEN,
                  "header byte %d", offs[i]);
    }

    /* SEALED flag cleared: not accepted as a sealed frame */
    CHECK_EQ_INT(sealed_setup(&p, f, sizeof f, &n), 0);
    f[4] &= (uint8_t)~FW_FLAG_SEALED;
    CHECK_EQ_INT(open_frame(&p.s, f, n, plain, sizeof plain, &plen), FW_SEC_E_NOT_SEALED);

    /* After a failure even a genuine next frame is refused: the connection is over. */
    CHECK_EQ_INT(sealed_setup(&p, f, sizeof f, &n), 0);
    uint8_t f2[128];
    size_t n2 = seal_ping(&p.c, 8, "next", f2, sizeof f2);
    f[FW_HEADER_LEN] ^= 0xff;
    CHECK_EQ_INT(open_frame(&p.s, f, n, plain, sizeof plain, &plen), FW_SEC_E_OPEN);
    CHECK_EQ_INT(open_frame(&p.s, f2, n2, plain, sizeof plain, &plen), FW_SEC_E_STATE);
}

static void t_replayed_frame(void)
{
    pair p;
    uint8_t f[128], plain[128];
    size_t n, plen;
    CHECK_EQ_INT(sealed_setup(&p, f, sizeof f, &n), 0);
    CHECK_EQ_INT(open_frame(&p.s, f, n, plain, sizeof plain, &plen), 0);
    CHECK_EQ_INT(open_frame(&p.s, f, n, plain, sizeof plain, &plen), FW_SEC_E_OPEN);
}

static void t_reordered_frames(void)
{
    pair p;
    uint8_t f1[128], f2[128], plain[128];
    size_t n1, n2, plen;
    CHECK_EQ_INT(sealed_setup(&p, f1, sizeof f1, &n1), 0);
    n2 = seal_ping(&p.c, 8, "second", f2, sizeof f2);
    CHECK_EQ_INT(open_frame(&p.s, f2, n2, plain, sizeof plain, &plen), FW_SEC_E_OPEN);

    /* A dropped frame is the same thing seen from the receiver. */
    CHECK_EQ_INT(sealed_setup(&p, f1, sizeof f1, &n1), 0);
    n2 = seal_ping(&p.c, 8, "second", f2, sizeof f2);
    (void)n1;
    CHECK_EQ_INT(open_frame(&p.s, f2, n2, plain, sizeof plain, &plen), FW_SEC_E_OPEN);

    /* A frame reflected back to its sender (other direction key) fails too. */
    CHECK_EQ_INT(sealed_setup(&p, f1, sizeof f1, &n1), 0);
    CHECK_EQ_INT(open_frame(&p.c, f1, n1, plain, sizeof plain, &plen), FW_SEC_E_OPEN);
}

static void t_truncated_frame(void)
{
    pair p;
    uint8_t f[128], plain[128];
    size_t n, plen;
    /* body cut short, header rewritten to match: the tag no longer verifies */
    CHECK_EQ_INT(sealed_setup(&p, f, sizeof f, &n), 0);
    fw_be32(f + 16, (uint32_t)(n - FW_HEADER_LEN - 1));
    CHECK_EQ_INT(open_frame(&p.s, f, n - 1, plain, sizeof plain, &plen), FW_SEC_E_OPEN);
    /* body cut short, header as sent: the lengths disagree */
    CHECK_EQ_INT(sealed_setup(&p, f, sizeof f, &n), 0);
    CHECK_EQ_INT(open_frame(&p.s, f, n - 5, plain, sizeof plain, &plen), FW_SEC_E_NOT_SEALED);
    /* shorter than a tag */
    CHECK_EQ_INT(sealed_setup(&p, f, sizeof f, &n), 0);
    fw_be32(f + 16, 15);
    CHECK_EQ_INT(open_frame(&p.s, f, FW_HEADER_LEN + 15, plain, sizeof plain, &plen),
                 FW_SEC_E_OPEN);
    /* output buffer too small for the plaintext */
    CHECK_EQ_INT(sealed_setup(&p, f, sizeof f, &n), 0);
    CHECK_EQ_INT(open_frame(&p.s, f, n, plain, 3, &plen), FW_SEC_E_SPACE);
}

static void t_plain_frame_in_session(void)
{
    pair p;
    pair_init(&p);
    CHECK_EQ_INT(pair_handshake(&p), 0);
    uint8_t f[FW_HEADER_LEN + 2] = {0}, plain[8];
    size_t plen;
    fw_header h = req_header(FW_OP_PING, 1);
    h.body_len = 2;
    fw_header_encode(&h, f);
    CHECK_EQ_INT(open_frame(&p.s, f, sizeof f, plain, sizeof plain, &plen), FW_SEC_E_NOT_SEALED);
}

static void t_counter_exhausted(void)
{
    pair p;
    pair_init(&p);
    CHECK_EQ_INT(pair_handshake(&p), 0);
    p.c.n_tx = UINT64_MAX - 1;
    p.s.n_rx = UINT64_MAX - 1;
    uint8_t f[128], plain[128];
    size_t plen;
    size_t n = seal_ping(&p.c, 1, "last", f, sizeof f);
    CHECK(n > 0);
    CHECK_EQ_INT(open_frame(&p.s, f, n, plain, sizeof plain, &plen), 0);
    fw_header h = req_header(FW_OP_PING, 2);
    CHECK_EQ_INT(fw_secure_seal(&p.c, &h, NULL, 0, f, sizeof f, &n), FW_SEC_E_COUNTER);
    CHECK_EQ_INT(fw_secure_state(&p.c), FW_SEC_FAILED);
    /* The receiver refuses to go past the last counter value as well. */
    pair q;
    pair_init(&q);
    CHECK_EQ_INT(pair_handshake(&q), 0);
    n = seal_ping(&q.c, 1, "x", f, sizeof f);
    q.s.n_rx = UINT64_MAX;
    CHECK_EQ_INT(open_frame(&q.s, f, n, plain, sizeof plain, &plen), FW_SEC_E_COUNTER);
}

static void t_seal_space(void)
{
    pair p;
    pair_init(&p);
    CHECK_EQ_INT(pair_handshake(&p), 0);
    uint8_t f[FW_HEADER_LEN + FW_SECURE_TAG_LEN + 3];
    fw_header h = req_header(FW_OP_PING, 1);
    size_t n;
    uint64_t before = p.c.n_tx; /* 1: AUTH went out under counter 0 */
    CHECK_EQ_INT(fw_secure_seal(&p.c, &h, (const uint8_t *)"four", 4, f, sizeof f, &n),
                 FW_SEC_E_SPACE);
    /* not terminal: the counter did not move and the next seal works */
    CHECK_EQ_INT(p.c.n_tx, before);
    CHECK_EQ_INT(fw_secure_seal(&p.c, &h, (const uint8_t *)"thr", 3, f, sizeof f, &n), 0);
}

static void t_state_machine(void)
{
    fw_secure_session c, s;
    uint8_t hello[FW_SECURE_HELLO_LEN], f[64];
    size_t n;
    fw_header h = req_header(FW_OP_PING, 1);
    fw_secure_session_init(&c, 0);
    CHECK_EQ_INT(fw_secure_seal(&c, &h, NULL, 0, f, sizeof f, &n), FW_SEC_E_STATE);
    fw_secure_session_init(&c, 0);
    CHECK_EQ_INT(fw_secure_client_hello(&c, hello), 0);
    CHECK_EQ_INT(fw_secure_client_hello(&c, hello), FW_SEC_E_STATE);
    /* a server session cannot say HELLO, a client cannot answer one */
    fw_secure_session_init(&s, 1);
    CHECK_EQ_INT(fw_secure_client_hello(&s, hello), FW_SEC_E_STATE);
    fw_secure_identity id;
    fw_secure_identity_generate(&id, NULL);
    uint8_t resp[FW_SECURE_HELLO_RESP_LEN];
    fw_secure_session_init(&c, 0);
    CHECK_EQ_INT(fw_secure_server_on_hello(&c, &id, hello, sizeof hello, resp), FW_SEC_E_STATE);
    /* a second HELLO on the same server session */
    fw_secure_session_init(&c, 0);
    fw_secure_session_init(&s, 1);
    CHECK_EQ_INT(fw_secure_client_hello(&c, hello), 0);
    CHECK_EQ_INT(fw_secure_server_on_hello(&s, &id, hello, sizeof hello, resp), 0);
    CHECK_EQ_INT(fw_secure_server_on_hello(&s, &id, hello, sizeof hello, resp), FW_SEC_E_STATE);
    CHECK_EQ_INT(fw_secure_seal(NULL, &h, NULL, 0, f, sizeof f, &n), FW_SEC_E_INVALID);
    CHECK_EQ_STR(fw_secure_strerror(12345), "unknown secure-session error");
}

/* ---- hostile handshake messages ------------------------------------------------------------- */

static void t_bad_hello(void)
{
    fw_secure_identity id;
    fw_secure_identity_generate(&id, NULL);
    fw_secure_session s;
    uint8_t resp[FW_SECURE_HELLO_RESP_LEN], hello[FW_SECURE_HELLO_LEN + 1];
    memset(hello, 0x41, sizeof hello);
    hello[0] = FW_SECURE_VERSION;
    static const size_t lens[] = {0, 1, FW_SECURE_HELLO_LEN - 1, FW_SECURE_HELLO_LEN + 1};
    for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) {
        fw_secure_session_init(&s, 1);
        CHECK_EQ_INT(fw_secure_server_on_hello(&s, &id, hello, lens[i], resp), FW_SEC_E_MALFORMED);
        CHECK_EQ_INT(fw_secure_state(&s), FW_SEC_FAILED);
    }
    fw_secure_session_init(&s, 1);
    hello[0] = 2;
    CHECK_EQ_INT(fw_secure_server_on_hello(&s, &id, hello, FW_SECURE_HELLO_LEN, resp),
                 FW_SEC_E_VERSION);
    /* an all-zero (low-order) ephemeral key cannot give a secret: refused */
    memset(hello, 0, sizeof hello);
    hello[0] = FW_SECURE_VERSION;
    fw_secure_session_init(&s, 1);
    CHECK_EQ_INT(fw_secure_server_on_hello(&s, &id, hello, FW_SECURE_HELLO_LEN, resp),
                 FW_SEC_E_CRYPTO);
    CHECK_EQ_INT(fw_secure_server_on_hello(&s, &id, NULL, 5, resp), FW_SEC_E_INVALID);
}

static void t_bad_hello_response(void)
{
    pair p;
    uint8_t hello[FW_SECURE_HELLO_LEN], resp[FW_SECURE_HELLO_RESP_LEN + 1];
    uint8_t auth[FW_SECURE_AUTH_FRAME_LEN];
    fw_header h = req_header(FW_OP_AUTH, 1);

    pair_init(&p);
    CHECK_EQ_INT(fw_secure_client_hello(&p.c, hello), 0);
    CHECK_EQ_INT(fw_secure_server_on_hello(&p.s, &p.server_id, hello, sizeof hello, resp), 0);
    CHECK_EQ_INT(fw_secure_client_on_hello_response(&p.c, &p.client_id, p.server_id.pk, resp,
                                                    FW_SECURE_HELLO_RESP_LEN - 1, &h, auth),
                 FW_SEC_E_MALFORMED);

    pair_init(&p);
    CHECK_EQ_INT(fw_secure_client_hello(&p.c, hello), 0);
    CHECK_EQ_INT(fw_secure_client_on_hello_response(&p.c, &p.client_id, p.server_id.pk, resp, 0,
                                                    &h, auth),
                 FW_SEC_E_MALFORMED);

    /* garbage of the right size, with and without the pinned key in place */
    pair_init(&p);
    CHECK_EQ_INT(fw_secure_client_hello(&p.c, hello), 0);
    randombytes_buf(resp, sizeof resp);
    resp[0] = FW_SECURE_VERSION;
    CHECK_EQ_INT(fw_secure_client_on_hello_response(&p.c, &p.client_id, p.server_id.pk, resp,
                                                    FW_SECURE_HELLO_RESP_LEN, &h, auth),
                 FW_SEC_E_SERVER_KEY);
    pair_init(&p);
    CHECK_EQ_INT(fw_secure_client_hello(&p.c, hello), 0);
    memcpy(resp + 65, p.server_id.pk, FW_SECURE_PK_LEN);
    CHECK_EQ_INT(fw_secure_client_on_hello_response(&p.c, &p.client_id, p.server_id.pk, resp,
                                                    FW_SECURE_HELLO_RESP_LEN, &h, auth),
                 FW_SEC_E_SIGNATURE);
    pair_init(&p);
    CHECK_EQ_INT(fw_secure_client_hello(&p.c, hello), 0);
    resp[0] = 9;
    CHECK_EQ_INT(fw_secure_client_on_hello_response(&p.c, &p.client_id, p.server_id.pk, resp,
                                                    FW_SECURE_HELLO_RESP_LEN, &h, auth),
                 FW_SEC_E_VERSION);
}

static void t_bad_auth(void)
{
    pair p;
    uint8_t hello[FW_SECURE_HELLO_LEN], resp[FW_SECURE_HELLO_RESP_LEN];
    uint8_t auth[FW_SECURE_AUTH_FRAME_LEN + 1];
    fw_header h = req_header(FW_OP_AUTH, 1);
    /* drive to AWAIT_AUTH with a genuine AUTH frame in `auth` */
#define TO_AUTH()                                                                              \
    do {                                                                                       \
        pair_init(&p);                                                                         \
        CHECK_EQ_INT(fw_secure_client_hello(&p.c, hello), 0);                                  \
        CHECK_EQ_INT(fw_secure_server_on_hello(&p.s, &p.server_id, hello, sizeof hello, resp), \
                     0);                                                                       \
        CHECK_EQ_INT(fw_secure_client_on_hello_response(&p.c, &p.client_id, p.server_id.pk,    \
                                                        resp, sizeof resp, &h, auth),          \
                     0);                                                                       \
    } while (0)

    TO_AUTH(); /* truncated */
    CHECK_EQ_INT(fw_secure_server_on_auth(&p.s, &p.keys, auth, auth + FW_HEADER_LEN,
                                          FW_SECURE_AUTH_BODY_LEN - 1),
                 FW_SEC_E_MALFORMED);
    TO_AUTH(); /* empty */
    CHECK_EQ_INT(fw_secure_server_on_auth(&p.s, &p.keys, auth, auth + FW_HEADER_LEN, 0),
                 FW_SEC_E_MALFORMED);
    TO_AUTH(); /* garbage of the right length */
    randombytes_buf(auth + FW_HEADER_LEN, FW_SECURE_AUTH_BODY_LEN);
    CHECK_EQ_INT(fw_secure_server_on_auth(&p.s, &p.keys, auth, auth + FW_HEADER_LEN,
                                          FW_SECURE_AUTH_BODY_LEN),
                 FW_SEC_E_OPEN);
    TO_AUTH(); /* not sealed */
    auth[4] = 0;
    CHECK_EQ_INT(fw_secure_server_on_auth(&p.s, &p.keys, auth, auth + FW_HEADER_LEN,
                                          FW_SECURE_AUTH_BODY_LEN),
                 FW_SEC_E_NOT_SEALED);
    TO_AUTH(); /* sent under another opcode */
    auth[3] = FW_OP_HELLO;
    CHECK_EQ_INT(fw_secure_server_on_auth(&p.s, &p.keys, auth, auth + FW_HEADER_LEN,
                                          FW_SECURE_AUTH_BODY_LEN),
                 FW_SEC_E_MALFORMED);
    TO_AUTH(); /* AUTH before HELLO on a fresh server session */
    fw_secure_session fresh;
    fw_secure_session_init(&fresh, 1);
    CHECK_EQ_INT(fw_secure_server_on_auth(&fresh, &p.keys, auth, auth + FW_HEADER_LEN,
                                          FW_SECURE_AUTH_BODY_LEN),
                 FW_SEC_E_STATE);
    TO_AUTH(); /* the AUTH of another handshake (replayed from an earlier connection) */
    uint8_t old[FW_SECURE_AUTH_FRAME_LEN];
    memcpy(old, auth, sizeof old);
    TO_AUTH();
    CHECK_EQ_INT(fw_secure_server_on_auth(&p.s, &p.keys, old, old + FW_HEADER_LEN,
                                          FW_SECURE_AUTH_BODY_LEN),
                 FW_SEC_E_OPEN);
#undef TO_AUTH
}

static void t_bad_auth_response(void)
{
    pair p;
    pair_init(&p);
    uint8_t hello[FW_SECURE_HELLO_LEN], resp[FW_SECURE_HELLO_RESP_LEN];
    uint8_t auth[FW_SECURE_AUTH_FRAME_LEN];
    fw_header h = req_header(FW_OP_AUTH, 1);
    CHECK_EQ_INT(fw_secure_client_hello(&p.c, hello), 0);
    CHECK_EQ_INT(fw_secure_server_on_hello(&p.s, &p.server_id, hello, sizeof hello, resp), 0);
    CHECK_EQ_INT(fw_secure_client_on_hello_response(&p.c, &p.client_id, p.server_id.pk, resp,
                                                    sizeof resp, &h, auth), 0);
    /* a plaintext "OK" to AUTH (an attacker skipping the server's key confirmation) */
    uint8_t ans[FW_HEADER_LEN + FW_SECURE_TAG_LEN];
    fw_header r = req_header(FW_OP_AUTH, 1);
    r.flags = FW_FLAG_RESPONSE;
    fw_header_encode(&r, ans);
    CHECK_EQ_INT(fw_secure_client_on_auth_response(&p.c, ans, ans + FW_HEADER_LEN, 0),
                 FW_SEC_E_NOT_SEALED);
    /* a forged sealed OK */
    pair q;
    pair_init(&q);
    CHECK_EQ_INT(fw_secure_client_hello(&q.c, hello), 0);
    CHECK_EQ_INT(fw_secure_server_on_hello(&q.s, &q.server_id, hello, sizeof hello, resp), 0);
    CHECK_EQ_INT(fw_secure_client_on_hello_response(&q.c, &q.client_id, q.server_id.pk, resp,
                                                    sizeof resp, &h, auth), 0);
    r.flags = FW_FLAG_RESPONSE | FW_FLAG_SEALED;
    r.body_len = FW_SECURE_TAG_LEN;
    fw_header_encode(&r, ans);
    memset(ans + FW_HEADER_LEN, 0, FW_SECURE_TAG_LEN);
    CHECK_EQ_INT(fw_secure_client_on_auth_response(&q.c, ans, ans + FW_HEADER_LEN,
                                                   FW_SECURE_TAG_LEN),
                 FW_SEC_E_OPEN);
}

/* ---- key text ------------------------------------------------------------------------------- */

static void t_key_line_parse(void)
{
    uint8_t key[32], back[32];
    char line[200];
    const char *why = NULL;
    randombytes_buf(key, sizeof key);
    int n = fw_secure_format_key_line(FW_SECURE_PUB_TAG, key, "door-3 lobby", line, sizeof line);
    CHECK(n > 0 && line[n - 1] == '\n');
    CHECK(strchr(line, '\n') == line + n - 1);
    CHECK_EQ_INT(fw_secure_parse_key_line(line, (size_t)n, FW_SECURE_PUB_TAG, back, &why), 0);
    CHECK(memcmp(key, back, 32) == 0);
    CHECK(why == NULL);
    /* without the newline, with leading blanks, with CRLF */
    CHECK_EQ_INT(fw_secure_parse_key_line(line, (size_t)n - 1, FW_SECURE_PUB_TAG, back, &why), 0);
    char b64[FW_SECURE_B64_LEN + 1];
    sodium_bin2base64(b64, sizeof b64, key, 32, sodium_base64_VARIANT_ORIGINAL);
    char l2[200];
    snprintf(l2, sizeof l2, " \tfacewire-ed25519\t%s\r\n", b64);
    CHECK_EQ_INT(fw_secure_parse_key_line(l2, strlen(l2), FW_SECURE_PUB_TAG, back, &why), 0);
    CHECK(memcmp(key, back, 32) == 0);
    /* a comment cannot hold a newline */
    CHECK_EQ_INT(fw_secure_format_key_line(FW_SECURE_PUB_TAG, key, "a\nb", line, sizeof line), -1);
    CHECK_EQ_INT(fw_secure_format_key_line(FW_SECURE_PUB_TAG, key, NULL, line, 20), -1);

    struct { const char *fmt; const char *why; } bad[] = {
        {"", "unknown key type"},
        {"ssh-ed25519 %s", "unknown key type"},
        {"facewire-ed25519-secret %s", "unknown key type"}, /* a secret where a pub belongs */
        {"facewire-ed25519x %s", "unknown key type"},
        {"facewire-ed25519", "missing key"},
        {"facewire-ed25519   ", "missing key"},
        {"facewire-ed25519 AAAA", "bad key length"},
        {"facewire-ed25519 %s=", "bad key length"},
        {"facewire-ed25519 !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!", "bad base64"},
        {"facewire-ed25519 %s,comment", "bad key length"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(l2, sizeof l2, bad[i].fmt, b64);
        CHECK_MSG(fw_secure_parse_key_line(l2, strlen(l2), FW_SECURE_PUB_TAG, back, &why) == -1,
                  "accepted: %s", l2);
        CHECK_EQ_STR(why, bad[i].why);
    }
    /* non-canonical: same bytes, stray low bits in the last base64 digit */
    char nc[FW_SECURE_B64_LEN + 1];
    memcpy(nc, b64, sizeof nc);
    const char *alpha = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    int v = (int)(strchr(alpha, nc[42]) - alpha);
    nc[42] = alpha[(v & ~3) | ((v & 3) ^ 1)];
    snprintf(l2, sizeof l2, "facewire-ed25519 %s", nc);
    CHECK_EQ_INT(fw_secure_parse_key_line(l2, strlen(l2), FW_SECURE_PUB_TAG, back, &why), -1);
    CHECK_EQ_STR(why, "bad base64");
    /* A NUL byte inside the key is garbage, not an end of string. */
    snprintf(l2, sizeof l2, "facewire-ed25519 %s", b64);
    l2[30] = '\0';
    CHECK_EQ_INT(fw_secure_parse_key_line(l2, 17 + FW_SECURE_B64_LEN, FW_SECURE_PUB_TAG, back,
                                          &why), -1);
    CHECK_EQ_STR(why, "bad base64");
}

static void t_authorized_keys_parse(void)
{
    fw_secure_identity a, b, c;
    fw_secure_identity_generate(&a, NULL);
    fw_secure_identity_generate(&b, NULL);
    fw_secure_identity_generate(&c, NULL);
    char la[200], lb[200], text[2048];
    fw_secure_format_key_line(FW_SECURE_PUB_TAG, a.pk, "door-1", la, sizeof la);
    fw_secure_format_key_line(FW_SECURE_PUB_TAG, b.pk, NULL, lb, sizeof lb);
    int n = snprintf(text, sizeof text,
                     "# devices of building A\n"
                     "\n"
                     "   \t\n"
                     "%s"                         /* line 4 */
                     "  # indented comment\n"
                     "facewire-ed25519 notakey\n" /* line 6: bad */
                     "%s"                         /* line 7 */
                     "%s"                         /* line 8: duplicate of a */
                     "ssh-rsa AAAAB3Nza user@h\n" /* line 9: bad */
                     "%.*s",                      /* line 10: b again, no final newline */
                     la, lb, la, (int)strlen(lb) - 1, lb);
    fw_authorized_keys keys;
    size_t n_bad = 99;
    char err[200];
    CHECK_EQ_INT(fw_keys_parse_authorized(text, (size_t)n, "ak", &keys, &n_bad, err, sizeof err), 0);
    CHECK_EQ_INT(n_bad, 2);
    CHECK_EQ_STR(err, "ak:6: bad key length");
    CHECK_EQ_INT(keys.n, 2); /* deduplicated */
    CHECK(memcmp(keys.pk[0], keys.pk[1], 32) < 0);
    CHECK(fw_authorized_keys_contains(&keys, a.pk));
    CHECK(fw_authorized_keys_contains(&keys, b.pk));
    CHECK(!fw_authorized_keys_contains(&keys, c.pk));
    fw_keys_free_authorized(&keys);
    CHECK(keys.pk == NULL && keys.n == 0);

    /* empty input: a valid, empty list */
    CHECK_EQ_INT(fw_keys_parse_authorized("", 0, "ak", &keys, &n_bad, err, sizeof err), 0);
    CHECK_EQ_INT(keys.n, 0);
    CHECK_EQ_INT(n_bad, 0);
    CHECK(!fw_authorized_keys_contains(&keys, a.pk));
    fw_keys_free_authorized(&keys);

    /* an over-long line is bad, whatever it holds */
    static char longl[FW_SECURE_LINE_MAX + 200];
    int m = snprintf(longl, sizeof longl, "%.*s", (int)strlen(la) - 1, la);
    memset(longl + m, 'x', sizeof longl - (size_t)m - 1);
    longl[m] = ' ';
    CHECK_EQ_INT(fw_keys_parse_authorized(longl, sizeof longl - 1, "ak", &keys, &n_bad, err,
                                          sizeof err), 0);
    CHECK_EQ_INT(n_bad, 1);
    CHECK_EQ_STR(err, "ak:1: line too long");
    CHECK_EQ_INT(keys.n, 0);
    fw_keys_free_authorized(&keys);

    /* many keys: sorted lookups still find every one */
    size_t count = 300, cap = count * 100;
    char *big = malloc(cap);
    CHECK(big != NULL);
    uint8_t (*all)[32] = malloc(count * 32);
    size_t off = 0;
    for (size_t i = 0; i < count; i++) {
        randombytes_buf(all[i], 32);
        off += (size_t)fw_secure_format_key_line(FW_SECURE_PUB_TAG, all[i], "k", big + off,
                                                 cap - off);
    }
    int rc = fw_keys_parse_authorized(big, off, "big", &keys, &n_bad, err, sizeof err);
    int found = 0;
    for (size_t i = 0; i < count; i++)
        found += fw_authorized_keys_contains(&keys, all[i]);
    fw_keys_free_authorized(&keys);
    free(big);
    free(all);
    CHECK_EQ_INT(rc, 0);
    CHECK_EQ_INT(n_bad, 0);
    CHECK_EQ_INT(found, (int)count);
}

/* ---- key files ------------------------------------------------------------------------------ */

static char g_dir[256];

static const char *tmpdir(void)
{
    if (!g_dir[0]) {
        const char *t = getenv("TMPDIR");
        snprintf(g_dir, sizeof g_dir, "%s/fw-secure-XXXXXX", t && *t ? t : "/tmp");
        if (!mkdtemp(g_dir))
            g_dir[0] = '\0';
    }
    return g_dir;
}

static int write_file(const char *path, const char *text, mode_t mode)
{
    unlink(path);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, mode);
    if (fd < 0)
        return -1;
    size_t len = strlen(text);
    int ok = write(fd, text, len) == (ssize_t)len;
    ok = fchmod(fd, mode) == 0 && ok;
    return close(fd) == 0 && ok ? 0 : -1;
}

static int slurp(const char *path, char *buf, size_t cap)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, cap - 1, f);
    buf[n] = '\0';
    fclose(f);
    return (int)n;
}

static void t_keygen_files(void)
{
    const char *d = tmpdir();
    CHECK(d[0]);
    char prefix[300], kp[320], pp[320], err[1024], text[512];
    snprintf(prefix, sizeof prefix, "%s/dev", d);
    snprintf(kp, sizeof kp, "%s.key", prefix);
    snprintf(pp, sizeof pp, "%s.pub", prefix);
    fw_secure_identity gen, loaded;
    CHECK_EQ_INT(fw_keys_keygen(prefix, NULL, &gen, err, sizeof err), 0);

    struct stat st;
    CHECK_EQ_INT(stat(kp, &st), 0);
    CHECK_EQ_INT(st.st_mode & 0777, 0600);
    CHECK_EQ_INT(stat(pp, &st), 0);
    CHECK_EQ_INT(st.st_mode & 0600, 0600);

    /* one line each, with the type tag; the pub line carries the prefix name as comment */
    int n = slurp(kp, text, sizeof text);
    CHECK(n > 0 && strchr(text, '\n') == text + n - 1);
    CHECK(strncmp(text, "facewire-ed25519-secret ", 24) == 0);
    n = slurp(pp, text, sizeof text);
    CHECK(n > 0 && strchr(text, '\n') == text + n - 1);
    CHECK(strncmp(text, "facewire-ed25519 ", 17) == 0);
    CHECK(n > 4 && memcmp(text + n - 5, " dev\n", 5) == 0);

    /* the files load back to the same identity */
    CHECK_EQ_INT(fw_secure_load_identity(kp, &loaded, err, sizeof err), 0);
    CHECK(memcmp(loaded.pk, gen.pk, 32) == 0 && memcmp(loaded.sk, gen.sk, 64) == 0);
    uint8_t pk[32];
    CHECK_EQ_INT(fw_secure_load_public(pp, pk, err, sizeof err), 0);
    CHECK(memcmp(pk, gen.pk, 32) == 0);

    /* `cat dev.pub >> authorized_keys` works */
    fw_authorized_keys keys;
    size_t n_bad;
    char ak[330];
    snprintf(ak, sizeof ak, "%s/authorized_keys", d);
    CHECK_EQ_INT(write_file(ak, "# fleet\n", 0644), 0);
    FILE *f = fopen(ak, "a");
    CHECK(f != NULL);
    fputs(text, f);
    fclose(f);
    CHECK_EQ_INT(fw_keys_load_authorized(ak, &keys, &n_bad, err, sizeof err), 0);
    CHECK_EQ_INT(n_bad, 0);
    CHECK(keys.n == 1 && fw_authorized_keys_contains(&keys, gen.pk));
    fw_keys_free_authorized(&keys);

    /* never overwrites */
    CHECK_EQ_INT(fw_keys_keygen(prefix, NULL, NULL, err, sizeof err), -1);
    char want[1024];
    snprintf(want, sizeof want, "%s: exists; refusing to overwrite a key", kp);
    CHECK_EQ_STR(err, want);
    CHECK_EQ_INT(fw_secure_load_identity(kp, &loaded, err, sizeof err), 0);
    CHECK(memcmp(loaded.pk, gen.pk, 32) == 0);
    /* a failure on the .pub removes the .key it just wrote */
    snprintf(prefix, sizeof prefix, "%s/half", d);
    snprintf(kp, sizeof kp, "%s.key", prefix);
    snprintf(pp, sizeof pp, "%s.pub", prefix);
    CHECK_EQ_INT(write_file(pp, "occupied\n", 0644), 0);
    CHECK_EQ_INT(fw_keys_keygen(prefix, "x", NULL, err, sizeof err), -1);
    CHECK(access(kp, F_OK) != 0);
}

static void t_secret_key_permissions(void)
{
    const char *d = tmpdir();
    CHECK(d[0]);
    char kp[320], err[1024], want[1024], line[128];
    uint8_t seed[32];
    fw_secure_identity id;
    randombytes_buf(seed, sizeof seed);
    fw_secure_format_key_line(FW_SECURE_SECRET_TAG, seed, NULL, line, sizeof line);
    snprintf(kp, sizeof kp, "%s/perm.key", d);

    static const mode_t bad[] = {0644, 0640, 0604, 0620, 0660};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        CHECK_EQ_INT(write_file(kp, line, bad[i]), 0);
        CHECK_EQ_INT(fw_secure_load_identity(kp, &id, err, sizeof err), -1);
        snprintf(want, sizeof want,
                 "%s: permissions 0%03o are too open: a secret key must not be accessible by "
                 "group or others (chmod 600)", kp, (unsigned)bad[i]);
        CHECK_EQ_STR(err, want);
    }
    CHECK_EQ_INT(write_file(kp, line, 0400), 0);
    CHECK_EQ_INT(fw_secure_load_identity(kp, &id, err, sizeof err), 0);
    fw_secure_identity from;
    fw_secure_identity_from_seed(&from, seed);
    CHECK(memcmp(from.pk, id.pk, 32) == 0);

    /* a public key where the secret belongs, an empty file, a missing one, a directory */
    fw_secure_format_key_line(FW_SECURE_PUB_TAG, from.pk, NULL, line, sizeof line);
    CHECK_EQ_INT(write_file(kp, line, 0600), 0);
    CHECK_EQ_INT(fw_secure_load_identity(kp, &id, err, sizeof err), -1);
    snprintf(want, sizeof want, "%s: unknown key type", kp);
    CHECK_EQ_STR(err, want);
    CHECK_EQ_INT(write_file(kp, "# nothing\n\n", 0600), 0);
    CHECK_EQ_INT(fw_secure_load_identity(kp, &id, err, sizeof err), -1);
    snprintf(want, sizeof want, "%s: no key in file", kp);
    CHECK_EQ_STR(err, want);
    unlink(kp);
    CHECK_EQ_INT(fw_secure_load_identity(kp, &id, err, sizeof err), -1);
    snprintf(want, sizeof want, "%s: No such file or directory", kp);
    CHECK_EQ_STR(err, want);
    CHECK_EQ_INT(fw_secure_load_identity(d, &id, err, sizeof err), -1);
    snprintf(want, sizeof want, "%s: not a regular file", d);
    CHECK_EQ_STR(err, want);
    /* larger than any key file can be */
    static char huge[FW_SECURE_LINE_MAX + 10];
    memset(huge, '#', sizeof huge - 1);
    CHECK_EQ_INT(write_file(kp, huge, 0600), 0);
    CHECK_EQ_INT(fw_secure_load_identity(kp, &id, err, sizeof err), -1);
    snprintf(want, sizeof want, "%s: file too large", kp);
    CHECK_EQ_STR(err, want);
    unlink(kp);
}

static void t_authorized_keys_file(void)
{
    const char *d = tmpdir();
    CHECK(d[0]);
    char ak[330], err[1024], want[1024];
    fw_authorized_keys keys;
    size_t n_bad;
    snprintf(ak, sizeof ak, "%s/ak-missing", d);
    CHECK_EQ_INT(fw_keys_load_authorized(ak, &keys, &n_bad, err, sizeof err), -1);
    snprintf(want, sizeof want, "%s: No such file or directory", ak);
    CHECK_EQ_STR(err, want);
    CHECK(keys.pk == NULL && keys.n == 0);
    /* over the size limit (a sparse file, cheap to make) */
    snprintf(ak, sizeof ak, "%s/ak-huge", d);
    int fd = open(ak, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    CHECK(fd >= 0);
    int tr = ftruncate(fd, (off_t)FW_KEYS_AUTH_MAX_BYTES + 1);
    close(fd);
    CHECK_EQ_INT(tr, 0);
    CHECK_EQ_INT(fw_keys_load_authorized(ak, &keys, &n_bad, err, sizeof err), -1);
    snprintf(want, sizeof want, "%s: file too large", ak);
    CHECK_EQ_STR(err, want);
    unlink(ak);
    /* an empty file is an empty list */
    snprintf(ak, sizeof ak, "%s/ak-empty", d);
    CHECK_EQ_INT(write_file(ak, "", 0644), 0);
    CHECK_EQ_INT(fw_keys_load_authorized(ak, &keys, &n_bad, err, sizeof err), 0);
    CHECK_EQ_INT(keys.n, 0);
    fw_keys_free_authorized(&keys);
    unlink(ak);
}

static void t_symmetric_key_file(void)
{
    const char *d = tmpdir();
    CHECK(d[0]);
    char p[330], err[1024], want[1024];
    uint8_t k1[32], k2[32];
    snprintf(p, sizeof p, "%s/gallery.key", d);
    unlink(p);
    CHECK_EQ_INT(fw_keys_write_symmetric(p, err, sizeof err), 0);
    struct stat st;
    CHECK_EQ_INT(stat(p, &st), 0);
    CHECK_EQ_INT(st.st_mode & 0777, 0600);
    CHECK_EQ_INT(fw_keys_load_symmetric(p, k1, err, sizeof err), 0);
    CHECK_EQ_INT(fw_keys_write_symmetric(p, err, sizeof err), -1);
    CHECK_EQ_INT(fw_keys_load_symmetric(p, k2, err, sizeof err), 0);
    CHECK(memcmp(k1, k2, 32) == 0);
    CHECK_EQ_INT(chmod(p, 0644), 0);
    CHECK_EQ_INT(fw_keys_load_symmetric(p, k2, err, sizeof err), -1);
    snprintf(want, sizeof want,
             "%s: permissions 0644 are too open: a secret key must not be accessible by group "
             "or others (chmod 600)", p);
    CHECK_EQ_STR(err, want);
    /* an identity key is not a gallery key */
    char line[128];
    fw_secure_format_key_line(FW_SECURE_SECRET_TAG, k1, NULL, line, sizeof line);
    CHECK_EQ_INT(write_file(p, line, 0600), 0);
    CHECK_EQ_INT(fw_keys_load_symmetric(p, k2, err, sizeof err), -1);
    snprintf(want, sizeof want, "%s: unknown key type", p);
    CHECK_EQ_STR(err, want);
    unlink(p);
}

/* ---- the server's policy (fw_security) ------------------------------------------------------ */

/* Write a server key, a device key and an authorized-keys file naming the device. */
static int policy_files(char *skey, char *ak, size_t cap, fw_secure_identity *server,
                        fw_secure_identity *device, const char *extra)
{
    const char *d = tmpdir();
    char prefix[300], err[1024], line[200], text[1024];
    snprintf(prefix, sizeof prefix, "%s/srv", d);
    snprintf(skey, cap, "%s.key", prefix);
    unlink(skey);
    snprintf(text, sizeof text, "%s.pub", prefix);
    unlink(text);
    if (fw_keys_keygen(prefix, NULL, server, err, sizeof err) != 0)
        return -1;
    fw_secure_identity_generate(device, NULL);
    fw_secure_format_key_line(FW_SECURE_PUB_TAG, device->pk, "dev", line, sizeof line);
    snprintf(ak, cap, "%s/ak-policy", d);
    snprintf(text, sizeof text, "# fleet\n%s%s", line, extra ? extra : "");
    return write_file(ak, text, 0644);
}

static void t_security_open_errors(void)
{
    fw_security sec;
    char err[1024], want[1024], skey[330], ak[330];
    fw_secure_identity server, device;
    CHECK_EQ_INT(fw_security_open(&sec, NULL, NULL, 0, err, sizeof err), 0);
    CHECK_EQ_INT(sec.enabled, 0);
    fw_security_close(&sec);
    CHECK_EQ_INT(fw_security_open(&sec, NULL, NULL, 1, err, sizeof err), -1);
    CHECK_EQ_STR(err, "--require-secure needs --server-key");
    CHECK_EQ_INT(fw_security_open(&sec, NULL, "ak", 0, err, sizeof err), -1);
    CHECK_EQ_STR(err, "--authorized-keys needs --server-key");
    CHECK_EQ_INT(fw_security_open(&sec, "k", NULL, 0, err, sizeof err), -1);
    CHECK_EQ_STR(err, "--server-key needs --authorized-keys (the devices allowed in)");

    /* a bad line is a start-up error naming the line */
    CHECK_EQ_INT(policy_files(skey, ak, sizeof skey, &server, &device, "facewire-ed25519 x\n"), 0);
    CHECK_EQ_INT(fw_security_open(&sec, skey, ak, 0, err, sizeof err), -1);
    snprintf(want, sizeof want, "%s:3: bad key length", ak);
    CHECK_EQ_STR(err, want);
    CHECK_EQ_INT(sec.enabled, 0);
    /* a server key others can read */
    CHECK_EQ_INT(policy_files(skey, ak, sizeof skey, &server, &device, NULL), 0);
    CHECK_EQ_INT(chmod(skey, 0640), 0);
    CHECK_EQ_INT(fw_security_open(&sec, skey, ak, 0, err, sizeof err), -1);
    snprintf(want, sizeof want,
             "%s: permissions 0640 are too open: a secret key must not be accessible by group "
             "or others (chmod 600)", skey);
    CHECK_EQ_STR(err, want);
    CHECK_EQ_INT(chmod(skey, 0600), 0);
    CHECK_EQ_INT(fw_security_open(&sec, skey, ak, 1, err, sizeof err), 0);
    CHECK_EQ_INT(sec.enabled, 1);
    CHECK(memcmp(sec.id.pk, server.pk, 32) == 0);
    CHECK(fw_authorized_keys_contains(&sec.keys, device.pk));
    fw_security_close(&sec);
}

/* What conn.c sees over one connection, request by request. */
static void t_security_connection_flow(void)
{
    fw_security sec;
    char err[1024], skey[330], ak[330];
    fw_secure_identity server, device;
    CHECK_EQ_INT(policy_files(skey, ak, sizeof skey, &server, &device, NULL), 0);
    CHECK_EQ_INT(fw_security_open(&sec, skey, ak, 1, err, sizeof err), 0);

    fw_secure_session conn, cli; /* the server's per-connection session and the device's */
    memset(&conn, 0, sizeof conn);
    fw_secure_session_init(&cli, 0);
    uint8_t *plain = NULL;
    const char *why = NULL;

    /* --require-secure: a plaintext PING before the handshake is refused, the connection lives */
    fw_header h = req_header(FW_OP_PING, 1);
    h.body_len = 2;
    CHECK_EQ_INT(fw_security_check(&sec, &conn, &h, (const uint8_t *)"hi", &plain, &why),
                 FW_SECV_UNAUTHORIZED);
    CHECK_EQ_STR(why, "secure session required");

    /* HELLO */
    uint8_t hello[FW_SECURE_HELLO_LEN];
    CHECK_EQ_INT(fw_secure_client_hello(&cli, hello), 0);
    h = req_header(FW_OP_HELLO, 2);
    h.body_len = sizeof hello;
    CHECK_EQ_INT(fw_security_check(&sec, &conn, &h, hello, &plain, &why), FW_SECV_HANDSHAKE);
    fw_sec_answer ans;
    fw_security_handshake(&sec, &conn, &h, hello, &ans);
    CHECK_EQ_INT(ans.status, FW_STATUS_OK);
    CHECK_EQ_INT(ans.body_len, FW_SECURE_HELLO_RESP_LEN);
    CHECK_EQ_INT(ans.close_after, 0);
    CHECK_EQ_INT(fw_security_overhead(&conn), 0); /* HELLO's answer goes out in plaintext */

    /* AUTH */
    uint8_t auth[FW_SECURE_AUTH_FRAME_LEN];
    fw_header ah = req_header(FW_OP_AUTH, 3);
    CHECK_EQ_INT(fw_secure_client_on_hello_response(&cli, &device, server.pk, ans.body,
                                                    ans.body_len, &ah, auth), 0);
    fw_header_decode(auth, &h);
    CHECK_EQ_INT(fw_security_check(&sec, &conn, &h, auth + FW_HEADER_LEN, &plain, &why),
                 FW_SECV_HANDSHAKE);
    fw_security_handshake(&sec, &conn, &h, auth + FW_HEADER_LEN, &ans);
    CHECK_EQ_INT(ans.status, FW_STATUS_OK);
    CHECK_EQ_INT(ans.body_len, 0);
    CHECK_EQ_INT(fw_security_overhead(&conn), FW_SECURE_TAG_LEN);
    /* the reply path seals the empty OK; the device opens it */
    uint8_t f[128];
    size_t n = 0;
    fw_header r = req_header(FW_OP_AUTH, 3);
    r.flags = FW_FLAG_RESPONSE;
    CHECK_EQ_INT(fw_secure_seal(&conn, &r, NULL, 0, f, sizeof f, &n), 0);
    CHECK_EQ_INT(fw_secure_client_on_auth_response(&cli, f, f + FW_HEADER_LEN, n - FW_HEADER_LEN), 0);

    /* a sealed PING is opened and handed on as plaintext */
    n = seal_ping(&cli, 4, "sealed hi", f, sizeof f);
    fw_header_decode(f, &h);
    CHECK_EQ_INT(fw_security_check(&sec, &conn, &h, f + FW_HEADER_LEN, &plain, &why),
                 FW_SECV_OPENED);
    CHECK(plain != NULL);
    CHECK_EQ_INT(h.body_len, 9);
    CHECK_EQ_INT(h.flags & FW_FLAG_SEALED, 0);
    CHECK(memcmp(plain, "sealed hi", 9) == 0);
    free(plain);
    plain = NULL;
    /* a second HELLO inside the session closes it */
    h = req_header(FW_OP_HELLO, 5);
    h.body_len = sizeof hello;
    CHECK_EQ_INT(fw_security_check(&sec, &conn, &h, hello, &plain, &why), FW_SECV_CLOSE);
    CHECK_EQ_STR(why, "handshake message in an established session");

    /* SIGHUP after the device's line was removed: its session must go */
    CHECK(!fw_security_revoked(&sec, &conn));
    CHECK_EQ_INT(write_file(ak, "# nobody\n", 0644), 0);
    size_t n_bad = 9;
    CHECK_EQ_INT(fw_security_reload(&sec, &n_bad, err, sizeof err), 0);
    CHECK_EQ_INT(n_bad, 0);
    CHECK(fw_security_revoked(&sec, &conn));
    /* an unreadable file keeps the list as it was */
    unlink(ak);
    CHECK_EQ_INT(fw_security_reload(&sec, &n_bad, err, sizeof err), -1);
    CHECK_EQ_INT(sec.keys.n, 0);

    /* a plaintext frame in an established session closes it */
    pair p;
    pair_init(&p);
    CHECK_EQ_INT(pair_handshake(&p), 0);
    fw_secure_session conn2 = p.s;
    h = req_header(FW_OP_PING, 9);
    CHECK_EQ_INT(fw_security_check(&sec, &conn2, &h, NULL, &plain, &why), FW_SECV_CLOSE);
    CHECK_EQ_STR(why, "plaintext frame in a secure session");
    /* and a tampered sealed one */
    n = seal_ping(&p.c, 10, "x", f, sizeof f);
    f[FW_HEADER_LEN] ^= 1;
    fw_header_decode(f, &h);
    CHECK_EQ_INT(fw_security_check(&sec, &conn2, &h, f + FW_HEADER_LEN, &plain, &why),
                 FW_SECV_CLOSE);
    CHECK_EQ_STR(why, "sealed frame failed authentication");
    CHECK(plain == NULL);
    fw_security_close(&sec);
}

/* The reload in steps, as the server drives it from SIGHUP (read and parse on a pool thread):
 * one in flight at a time, a second request is remembered, abandoning applies nothing. */
static void t_security_reload_steps(void)
{
    fw_security sec;
    char err[1024], skey[330], ak[330], line[200], want[1024];
    fw_secure_identity server, device, other;
    fw_secure_identity_generate(&other, NULL);
    CHECK_EQ_INT(policy_files(skey, ak, sizeof skey, &server, &device, NULL), 0);
    CHECK_EQ_INT(fw_security_open(&sec, skey, ak, 1, err, sizeof err), 0);
    CHECK(sec.reload == NULL);

    fw_keys_reload r1, r2, r3;
    memset(&r2, 0x5a, sizeof r2);
    CHECK_EQ_INT(fw_security_reload_begin(&sec, &r1, err, sizeof err), 0);
    CHECK(sec.reload == &r1);
    CHECK_EQ_STR(r1.path, ak);
    /* a second one while r1 is in flight: remembered, r2 untouched */
    CHECK_EQ_INT(fw_security_reload_begin(&sec, &r2, err, sizeof err), 1);
    CHECK_EQ_INT(sec.reload_again, 1);
    CHECK_EQ_INT(((unsigned char *)&r2)[0], 0x5a);
    /* nor does the synchronous reload run beside it */
    size_t n_bad = 9;
    CHECK_EQ_INT(fw_security_reload(&sec, &n_bad, err, sizeof err), -1);
    CHECK_EQ_STR(err, "a reload is already in flight");
    CHECK(sec.reload == &r1);

    /* the worker's step reads the file as it is then; until finish, the old list serves */
    fw_secure_format_key_line(FW_SECURE_PUB_TAG, other.pk, "other", line, sizeof line);
    CHECK_EQ_INT(write_file(ak, line, 0644), 0);
    fw_keys_reload_run(&r1);
    CHECK_EQ_INT(r1.rc, 0);
    CHECK_EQ_INT(r1.keys.n, 1);
    CHECK(fw_authorized_keys_contains(&sec.keys, device.pk));
    int again = 0;
    CHECK_EQ_INT(fw_security_reload_finish(&sec, &r1, &n_bad, err, sizeof err, &again), 0);
    CHECK_EQ_INT(n_bad, 0);
    CHECK_EQ_INT(again, 1); /* the caller starts one more */
    CHECK_EQ_INT(sec.reload_again, 0);
    CHECK(sec.reload == NULL);
    CHECK(r1.path == NULL && r1.keys.pk == NULL);
    CHECK(!fw_authorized_keys_contains(&sec.keys, device.pk));
    CHECK(fw_authorized_keys_contains(&sec.keys, other.pk));

    /* an unreadable file: the old list stays, the error names the file */
    CHECK_EQ_INT(fw_security_reload_begin(&sec, &r1, err, sizeof err), 0);
    CHECK_EQ_INT(unlink(ak), 0);
    fw_keys_reload_run(&r1);
    CHECK_EQ_INT(fw_security_reload_finish(&sec, &r1, &n_bad, err, sizeof err, &again), -1);
    snprintf(want, sizeof want, "%s: No such file or directory", ak);
    CHECK_EQ_STR(err, want);
    CHECK_EQ_INT(again, 0);
    CHECK(fw_authorized_keys_contains(&sec.keys, other.pk));

    /* abandoned (the server is stopping): nothing applied, nothing remembered */
    CHECK_EQ_INT(write_file(ak, "# nobody\n", 0644), 0);
    CHECK_EQ_INT(fw_security_reload_begin(&sec, &r3, err, sizeof err), 0);
    CHECK_EQ_INT(fw_security_reload_begin(&sec, &r2, err, sizeof err), 1);
    fw_keys_reload_run(&r3);
    fw_security_reload_abandon(&sec, &r3);
    CHECK(sec.reload == NULL);
    CHECK_EQ_INT(sec.reload_again, 0);
    CHECK(r3.path == NULL && r3.keys.pk == NULL);
    CHECK(fw_authorized_keys_contains(&sec.keys, other.pk));
    /* and finishing what is not in flight is refused */
    CHECK_EQ_INT(fw_security_reload_finish(&sec, &r3, &n_bad, err, sizeof err, &again), -1);
    CHECK_EQ_STR(err, "no reload in flight");
    fw_security_close(&sec);
}

static void t_security_handshake_refusals(void)
{
    fw_security sec;
    char err[1024], skey[330], ak[330];
    fw_secure_identity server, device, stranger;
    CHECK_EQ_INT(policy_files(skey, ak, sizeof skey, &server, &device, NULL), 0);
    CHECK_EQ_INT(fw_security_open(&sec, skey, ak, 0, err, sizeof err), 0);
    fw_secure_identity_generate(&stranger, NULL);

    fw_secure_session conn, cli;
    fw_sec_answer ans;
    uint8_t *plain;
    const char *why;
    uint8_t hello[FW_SECURE_HELLO_LEN], auth[FW_SECURE_AUTH_FRAME_LEN];
    fw_header h, ah = req_header(FW_OP_AUTH, 3);

    /* without --require-secure plaintext requests pass */
    memset(&conn, 0, sizeof conn);
    h = req_header(FW_OP_INFO, 1);
    CHECK_EQ_INT(fw_security_check(&sec, &conn, &h, NULL, &plain, &why), FW_SECV_PASS);
    /* a sealed request before any handshake */
    h.flags = FW_FLAG_SEALED;
    CHECK_EQ_INT(fw_security_check(&sec, &conn, &h, NULL, &plain, &why), FW_SECV_CLOSE);
    CHECK_EQ_STR(why, "sealed frame before a secure session");

    /* an unknown device: UNAUTHORIZED, then close */
    memset(&conn, 0, sizeof conn);
    fw_secure_session_init(&cli, 0);
    CHECK_EQ_INT(fw_secure_client_hello(&cli, hello), 0);
    h = req_header(FW_OP_HELLO, 2);
    h.body_len = sizeof hello;
    fw_security_handshake(&sec, &conn, &h, hello, &ans);
    CHECK_EQ_INT(ans.status, FW_STATUS_OK);
    CHECK_EQ_INT(fw_secure_client_on_hello_response(&cli, &stranger, server.pk, ans.body,
                                                    ans.body_len, &ah, auth), 0);
    /* anything but AUTH now breaks the handshake */
    fw_header other = req_header(FW_OP_PING, 4);
    fw_secure_session copy = conn;
    CHECK_EQ_INT(fw_security_check(&sec, &copy, &other, NULL, &plain, &why), FW_SECV_CLOSE);
    CHECK_EQ_STR(why, "expected AUTH after HELLO");
    fw_header_decode(auth, &h);
    fw_security_handshake(&sec, &conn, &h, auth + FW_HEADER_LEN, &ans);
    CHECK_EQ_INT(ans.status, FW_STATUS_UNAUTHORIZED);
    CHECK_EQ_STR(ans.msg, "unknown client key");
    CHECK_EQ_INT(ans.close_after, 1);
    CHECK_EQ_INT(fw_security_overhead(&conn), 0); /* the refusal goes out in plaintext */

    /* AUTH before HELLO; a truncated HELLO; another version */
    memset(&conn, 0, sizeof conn);
    fw_security_handshake(&sec, &conn, &h, auth + FW_HEADER_LEN, &ans);
    CHECK_EQ_INT(ans.status, FW_STATUS_BAD_REQUEST);
    CHECK_EQ_STR(ans.msg, "AUTH before HELLO");
    memset(&conn, 0, sizeof conn);
    h = req_header(FW_OP_HELLO, 2);
    h.body_len = 10;
    fw_security_handshake(&sec, &conn, &h, hello, &ans);
    CHECK_EQ_INT(ans.status, FW_STATUS_BAD_REQUEST);
    CHECK_EQ_STR(ans.msg, "malformed handshake message");
    CHECK_EQ_INT(ans.close_after, 1);
    memset(&conn, 0, sizeof conn);
    h.body_len = sizeof hello;
    hello[0] = 7;
    fw_security_handshake(&sec, &conn, &h, hello, &ans);
    CHECK_EQ_INT(ans.status, FW_STATUS_UNSUPPORTED_VERSION);
    CHECK_EQ_STR(ans.msg, "unsupported handshake version");
    fw_security_close(&sec);

    /* a server without keys answers HELLO with UNAUTHORIZED and stays plaintext */
    CHECK_EQ_INT(fw_security_open(&sec, NULL, NULL, 0, err, sizeof err), 0);
    memset(&conn, 0, sizeof conn);
    CHECK_EQ_INT(fw_security_check(&sec, &conn, &h, hello, &plain, &why), FW_SECV_UNAUTHORIZED);
    CHECK_EQ_STR(why, "secure sessions are not enabled on this server");
    fw_security_close(&sec);
    unlink(skey);
    unlink(ak);
}

static void t_loopback_rule(void)
{
    struct sockaddr_in v4;
    struct sockaddr_in6 v6;
    memset(&v4, 0, sizeof v4);
    memset(&v6, 0, sizeof v6);
    v4.sin_family = AF_INET;
    v6.sin6_family = AF_INET6;
    static const struct { const char *a; int lo; } c4[] = {
        {"127.0.0.1", 1}, {"127.255.0.9", 1}, {"0.0.0.0", 0}, {"10.0.0.5", 0},
        {"128.0.0.1", 0}, {"192.168.1.127", 0},
    };
    for (size_t i = 0; i < sizeof c4 / sizeof c4[0]; i++) {
        CHECK(inet_pton(AF_INET, c4[i].a, &v4.sin_addr) == 1);
        CHECK_MSG(fw_security_addr_is_loopback((struct sockaddr *)&v4) == c4[i].lo, "%s", c4[i].a);
    }
    static const struct { const char *a; int lo; } c6[] = {
        {"::1", 1}, {"::ffff:127.0.0.1", 1}, {"::", 0}, {"::ffff:10.0.0.1", 0},
        {"fe80::1", 0}, {"::2", 0},
    };
    for (size_t i = 0; i < sizeof c6 / sizeof c6[0]; i++) {
        CHECK(inet_pton(AF_INET6, c6[i].a, &v6.sin6_addr) == 1);
        CHECK_MSG(fw_security_addr_is_loopback((struct sockaddr *)&v6) == c6[i].lo, "%s", c6[i].a);
    }
    CHECK_EQ_INT(fw_security_addr_is_loopback(NULL), 0);
}

/* ---- records at rest ------------------------------------------------------------------------ */

static void t_record_seal_open(void)
{
    uint8_t key[32], other[32], out[256], back[256];
    randombytes_buf(key, sizeof key);
    randombytes_buf(other, sizeof other);
    static const uint8_t ad[] = "file-id-0123456789|seq=42";
    const char *rec = "enroll alice 128 floats ...";
    size_t len = strlen(rec), n = 0, m = 0;
    CHECK_EQ_INT(fw_keys_record_seal(key, ad, sizeof ad, (const uint8_t *)rec, len, out,
                                     sizeof out, &n), 0);
    CHECK_EQ_INT(n, len + FW_REC_OVERHEAD);
    CHECK(memmem(out, n, "alice", 5) == NULL);
    CHECK_EQ_INT(fw_keys_record_open(key, ad, sizeof ad, out, n, back, sizeof back, &m), 0);
    CHECK(m == len && memcmp(back, rec, len) == 0);
    /* the same record sealed twice never gives the same bytes (random nonce) */
    uint8_t out2[256];
    size_t n2 = 0;
    CHECK_EQ_INT(fw_keys_record_seal(key, ad, sizeof ad, (const uint8_t *)rec, len, out2,
                                     sizeof out2, &n2), 0);
    CHECK(n2 == n && memcmp(out, out2, n) != 0);
    /* wrong key, other place (ad), any flipped byte, truncation: refused, output zeroed */
    CHECK_EQ_INT(fw_keys_record_open(other, ad, sizeof ad, out, n, back, sizeof back, &m), -1);
    CHECK(back[0] == 0 && back[len - 1] == 0);
    static const uint8_t ad2[] = "file-id-0123456789|seq=43";
    CHECK_EQ_INT(fw_keys_record_open(key, ad2, sizeof ad2, out, n, back, sizeof back, &m), -1);
    for (size_t i = 0; i < n; i += 7) {
        out[i] ^= 0x40;
        CHECK_MSG(fw_keys_record_open(key, ad, sizeof ad, out, n, back, sizeof back, &m) == -1,
                  "flipped byte %zu accepted", i);
        out[i] ^= 0x40;
    }
    CHECK_EQ_INT(fw_keys_record_open(key, ad, sizeof ad, out, n - 1, back, sizeof back, &m), -1);
    CHECK_EQ_INT(fw_keys_record_open(key, ad, sizeof ad, out, FW_REC_OVERHEAD - 1, back,
                                     sizeof back, &m), -1);
    /* sizes */
    CHECK_EQ_INT(fw_keys_record_seal(key, ad, sizeof ad, (const uint8_t *)rec, len, out,
                                     len + FW_REC_OVERHEAD - 1, &n), -1);
    CHECK_EQ_INT(fw_keys_record_seal(key, NULL, 0, NULL, 0, out, sizeof out, &n), 0);
    CHECK_EQ_INT(n, FW_REC_OVERHEAD);
    CHECK_EQ_INT(fw_keys_record_open(key, NULL, 0, out, n, NULL, 0, &m), 0);
    CHECK_EQ_INT(m, 0);
}

static void t_key_check_value(void)
{
    uint8_t key[32], other[32], a[16], b[16], c[16];
    randombytes_buf(key, sizeof key);
    memcpy(other, key, sizeof key);
    other[31] ^= 1;
    static const uint8_t id1[16] = {1}, id2[16] = {2};
    fw_keys_key_check(key, id1, sizeof id1, a);
    fw_keys_key_check(key, id1, sizeof id1, b);
    CHECK(memcmp(a, b, 16) == 0); /* deterministic: the header can be checked */
    fw_keys_key_check(other, id1, sizeof id1, c);
    CHECK(memcmp(a, c, 16) != 0); /* another key */
    fw_keys_key_check(key, id2, sizeof id2, c);
    CHECK(memcmp(a, c, 16) != 0); /* another file */
}

/* ---- end to end: facewired and fwcat -------------------------------------------------------- */

/* Keys for a server and two devices in tmpdir, the authorized-keys file naming both devices. */
typedef struct e2e {
    tu_server *srv;
    char dir[300], skey[330], spub[330], ak[330], data[330];
    char dkey[2][400], dpub[2][400];
    fw_secure_identity server, dev[2];
} e2e;

static int e2e_keys(e2e *e)
{
    char err[1024], prefix[360];
    snprintf(e->dir, sizeof e->dir, "%s", tmpdir());
    snprintf(e->skey, sizeof e->skey, "%s/e2e-srv.key", e->dir);
    snprintf(e->spub, sizeof e->spub, "%s/e2e-srv.pub", e->dir);
    snprintf(e->ak, sizeof e->ak, "%s/e2e-ak", e->dir);
    snprintf(e->data, sizeof e->data, "%s/e2e-data", e->dir);
    unlink(e->skey);
    unlink(e->spub);
    snprintf(prefix, sizeof prefix, "%s/e2e-srv", e->dir);
    if (fw_keys_keygen(prefix, NULL, &e->server, err, sizeof err) != 0)
        return -1;
    char text[1024] = "# test fleet\n";
    for (int i = 0; i < 2; i++) {
        snprintf(prefix, sizeof prefix, "%s/e2e-dev%d", e->dir, i);
        snprintf(e->dkey[i], sizeof e->dkey[i], "%s.key", prefix);
        snprintf(e->dpub[i], sizeof e->dpub[i], "%s.pub", prefix);
        unlink(e->dkey[i]);
        unlink(e->dpub[i]);
        if (fw_keys_keygen(prefix, NULL, &e->dev[i], err, sizeof err) != 0)
            return -1;
        char line[200];
        fw_secure_format_key_line(FW_SECURE_PUB_TAG, e->dev[i].pk, "dev", line, sizeof line);
        strncat(text, line, sizeof text - strlen(text) - 1);
    }
    return write_file(e->ak, text, 0644);
}

static int e2e_start(e2e *e, int require_secure)
{
    if (e2e_keys(e) != 0)
        return -1;
    const char *args[] = {"--server-key", e->skey, "--authorized-keys", e->ak, "--data", e->data,
                          require_secure ? "--require-secure" : NULL, NULL};
    e->srv = calloc(1, sizeof *e->srv);
    if (!e->srv || tu_server_start(e->srv, args) != 0) {
        free(e->srv);
        e->srv = NULL;
        return -1;
    }
    return 0;
}

static int e2e_stop(e2e *e)
{
    if (!e->srv)
        return -1;
    int status = tu_server_stop(e->srv);
    free(e->srv);
    e->srv = NULL;
    return status;
}

/* Read a response; 1 if it has op, id and status (and, for an error, exactly msg). */
static int e2e_expect_plain(int fd, uint8_t op, uint32_t id, uint16_t status, const char *msg)
{
    fw_header h;
    uint8_t *body = NULL;
    char text[256] = "";
    if (tu_read_frame(fd, &h, &body) != 1)
        return 0;
    int ok = (h.flags & FW_FLAG_RESPONSE) && h.opcode == op && h.request_id == id &&
             h.status == status;
    if (ok && msg)
        ok = tu_error_message(body, h.body_len, text, sizeof text) == 0 && strcmp(text, msg) == 0;
    if (!ok)
        fprintf(stderr, "  got op=0x%02x id=%u status=%s msg=\"%s\"\n", h.opcode, h.request_id,
                fw_status_name(h.status), text);
    free(body);
    return ok;
}

/* The whole handshake over fd as `me`; 0 when established. */
static int e2e_handshake(int fd, fw_secure_session *s, const fw_secure_identity *me,
                         const uint8_t server_pk[32])
{
    uint8_t hello[FW_SECURE_HELLO_LEN], auth[FW_SECURE_AUTH_FRAME_LEN], *body = NULL;
    fw_header h = req_header(FW_OP_HELLO, 1);
    h.body_len = sizeof hello;
    fw_secure_session_init(s, 0);
    if (fw_secure_client_hello(s, hello) != 0 || tu_send_frame(fd, &h, hello) != 0 ||
        tu_read_frame(fd, &h, &body) != 1 || h.status != FW_STATUS_OK)
        goto err;
    fw_header ah = req_header(FW_OP_AUTH, 2);
    int rc = fw_secure_client_on_hello_response(s, me, server_pk, body, h.body_len, &ah, auth);
    free(body);
    body = NULL;
    if (rc != 0 || tu_send_all(fd, auth, sizeof auth) != 0)
        goto err;
    uint8_t hdr[FW_HEADER_LEN];
    if (tu_read_frame(fd, &h, &body) != 1)
        goto err;
    fw_header_encode(&h, hdr);
    rc = fw_secure_client_on_auth_response(s, hdr, body, h.body_len);
    free(body);
    return rc;
err:
    free(body);
    return -1;
}

/* A sealed PING `msg` with id; 1 if its sealed echo comes back and opens to msg. */
static int e2e_sealed_ping(int fd, fw_secure_session *s, uint32_t id, const char *msg)
{
    uint8_t f[256], hdr[FW_HEADER_LEN], plain[256], *body = NULL;
    size_t n = seal_ping(s, id, msg, f, sizeof f), plen = 0;
    fw_header h;
    if (!n || tu_send_all(fd, f, n) != 0 || tu_read_frame(fd, &h, &body) != 1)
        goto err;
    fw_header_encode(&h, hdr);
    int ok = (h.flags & FW_FLAG_SEALED) && h.request_id == id && h.status == FW_STATUS_OK &&
             fw_secure_open(s, hdr, body, h.body_len, plain, sizeof plain, &plen) == 0 &&
             plen == strlen(msg) && memcmp(plain, msg, plen) == 0;
    free(body);
    return ok;
err:
    free(body);
    return 0;
}

static void t_e2e_handshake_require_secure(void)
{
    e2e e;
    memset(&e, 0, sizeof e);
    CHECK_EQ_INT(e2e_start(&e, 1), 0);
    int fd = tu_connect_server(e.srv);
    int ok1 = 0, ok2 = 0, ok3 = 0;
    if (fd >= 0) {
        /* before the handshake: UNAUTHORIZED, and the connection goes on */
        fw_header h = req_header(FW_OP_PING, 7);
        h.body_len = 2;
        ok1 = tu_send_frame(fd, &h, "hi") == 0 &&
              e2e_expect_plain(fd, FW_OP_PING, 7, FW_STATUS_UNAUTHORIZED, "secure session required");
        fw_secure_session s;
        ok2 = e2e_handshake(fd, &s, &e.dev[0], e.server.pk) == 0;
        ok3 = ok2 && e2e_sealed_ping(fd, &s, 8, "sealed hello") &&
              e2e_sealed_ping(fd, &s, 9, "and again");
        close(fd);
    }
    CHECK_EQ_INT(e2e_stop(&e), 0);
    CHECK(fd >= 0);
    CHECK(ok1);
    CHECK(ok2);
    CHECK(ok3);
}

/* A flipped ciphertext byte, a replayed frame and a plaintext frame each close that
 * connection; the server goes on serving the others. */
static void t_e2e_tamper_closes(void)
{
    e2e e;
    memset(&e, 0, sizeof e);
    CHECK_EQ_INT(e2e_start(&e, 0), 0);
    int results[4] = {0, 0, 0, 0};
    for (int kind = 0; kind < 3; kind++) {
        int fd = tu_connect_server(e.srv);
        fw_secure_session s;
        if (fd < 0 || e2e_handshake(fd, &s, &e.dev[0], e.server.pk) != 0) {
            if (fd >= 0)
                close(fd);
            continue;
        }
        uint8_t f[128];
        size_t n = seal_ping(&s, 5, "payload", f, sizeof f);
        if (kind == 0) {        /* flipped ciphertext byte */
            f[FW_HEADER_LEN + 2] ^= 0x10;
            results[kind] = tu_send_all(fd, f, n) == 0 && tu_wait_closed(fd) == 1;
        } else if (kind == 1) { /* the same frame twice */
            /* Both may arrive in one read: the server closes at the replay, possibly before
             * the first one's answer was flushed. At most that answer, then EOF. */
            int sent = tu_send_all(fd, f, n) == 0 && tu_send_all(fd, f, n) == 0, answers = 0, r = -1;
            fw_header h;
            uint8_t *body = NULL;
            while (sent && (r = tu_read_frame(fd, &h, &body)) == 1) {
                answers += h.request_id == 5 ? 1 : 100;
                free(body);
                body = NULL;
            }
            results[kind] = sent && r == 0 && answers <= 1;
        } else {                /* plaintext inside the session */
            fw_header h = req_header(FW_OP_PING, 6);
            results[kind] = tu_send_frame(fd, &h, NULL) == 0 && tu_wait_closed(fd) == 1;
        }
        close(fd);
    }
    /* still serving */
    int fd = tu_connect_server(e.srv);
    fw_secure_session s;
    results[3] = fd >= 0 && e2e_handshake(fd, &s, &e.dev[1], e.server.pk) == 0 &&
                 e2e_sealed_ping(fd, &s, 1, "still here");
    if (fd >= 0)
        close(fd);
    CHECK_EQ_INT(e2e_stop(&e), 0);
    CHECK_MSG(results[0], "flipped byte did not close the connection");
    CHECK_MSG(results[1], "replayed frame did not close the connection");
    CHECK_MSG(results[2], "plaintext frame in a session did not close the connection");
    CHECK_MSG(results[3], "server did not go on");
}

static void t_e2e_bad_handshakes(void)
{
    e2e e;
    memset(&e, 0, sizeof e);
    CHECK_EQ_INT(e2e_start(&e, 0), 0);
    int ok[3] = {0, 0, 0};
    /* a truncated HELLO: BAD_REQUEST with the reason, then closed */
    int fd = tu_connect_server(e.srv);
    if (fd >= 0) {
        fw_header h = req_header(FW_OP_HELLO, 3);
        h.body_len = 10;
        ok[0] = tu_send_frame(fd, &h, "0123456789") == 0 &&
                e2e_expect_plain(fd, FW_OP_HELLO, 3, FW_STATUS_BAD_REQUEST,
                                 "malformed handshake message") &&
                tu_wait_closed(fd) == 1;
        close(fd);
    }
    /* an unknown device: UNAUTHORIZED "unknown client key", then closed */
    fd = tu_connect_server(e.srv);
    if (fd >= 0) {
        fw_secure_identity stranger;
        fw_secure_identity_generate(&stranger, NULL);
        fw_secure_session s;
        ok[1] = e2e_handshake(fd, &s, &stranger, e.server.pk) == FW_SEC_E_REJECTED &&
                tu_wait_closed(fd) == 1;
        close(fd);
    }
    /* pinned to another server key: the client gives up before AUTH */
    fd = tu_connect_server(e.srv);
    if (fd >= 0) {
        fw_secure_session s;
        ok[2] = e2e_handshake(fd, &s, &e.dev[0], e.dev[1].pk) != 0 &&
                fw_secure_state(&s) == FW_SEC_FAILED;
        close(fd);
    }
    int log_ok = tu_server_wait_log(e.srv, "msg=\"handshake refused\"") &&
                 tu_server_log_has(e.srv, "reason=\"unknown client key\"");
    CHECK_EQ_INT(e2e_stop(&e), 0);
    CHECK_MSG(ok[0], "truncated HELLO");
    CHECK_MSG(ok[1], "unknown client key");
    CHECK_MSG(ok[2], "wrong server key");
    CHECK(log_ok);
}

/* SIGHUP after removing device 0: its session is closed, device 1's goes on. */
static void t_e2e_sighup_revokes(void)
{
    e2e e;
    memset(&e, 0, sizeof e);
    CHECK_EQ_INT(e2e_start(&e, 1), 0);
    int fa = tu_connect_server(e.srv), fb = tu_connect_server(e.srv);
    fw_secure_session sa, sb;
    int up = fa >= 0 && fb >= 0 && e2e_handshake(fa, &sa, &e.dev[0], e.server.pk) == 0 &&
             e2e_handshake(fb, &sb, &e.dev[1], e.server.pk) == 0;
    char line[200];
    fw_secure_format_key_line(FW_SECURE_PUB_TAG, e.dev[1].pk, "dev1 only", line, sizeof line);
    int reloaded = up && write_file(e.ak, line, 0644) == 0 && tu_server_kill(e.srv, SIGHUP) == 0 &&
                   tu_server_wait_log(e.srv, "msg=\"authorized keys reloaded\"");
    int a_closed = reloaded && tu_wait_closed(fa) == 1;
    int b_alive = reloaded && e2e_sealed_ping(fb, &sb, 11, "still trusted");
    int logged = tu_server_log_has(e.srv, "keys=1 sessions_closed=1");
    /* and device 0 cannot come back */
    int fc = tu_connect_server(e.srv);
    fw_secure_session sc;
    int refused = fc >= 0 && e2e_handshake(fc, &sc, &e.dev[0], e.server.pk) == FW_SEC_E_REJECTED;
    if (fa >= 0)
        close(fa);
    if (fb >= 0)
        close(fb);
    if (fc >= 0)
        close(fc);
    CHECK_EQ_INT(e2e_stop(&e), 0);
    CHECK(up);
    CHECK(reloaded);
    CHECK_MSG(a_closed, "revoked session still open");
    CHECK_MSG(b_alive, "other session disturbed");
    CHECK(logged);
    CHECK(refused);
}

/* Write path as an operator should (a temporary file renamed over it, so a reload never sees
 * half of it): pad_bytes of '#' comment lines first, so that the keys are at the end of a
 * large file, then one line per identity. */
static int write_keys_file(const char *path, size_t pad_bytes, const fw_secure_identity *ids,
                           int n)
{
    char tmp[420], line[200];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f)
        return -1;
    static const char pad[] = "# padding: a large file must not stall the event loop ........\n";
    int ok = 1;
    for (size_t done = 0; ok && done < pad_bytes; done += sizeof pad - 1)
        ok = fwrite(pad, 1, sizeof pad - 1, f) == sizeof pad - 1;
    for (int i = 0; ok && i < n; i++) {
        fw_secure_format_key_line(FW_SECURE_PUB_TAG, ids[i].pk, "dev", line, sizeof line);
        ok = fputs(line, f) >= 0;
    }
    ok = fclose(f) == 0 && ok;
    ok = ok && rename(tmp, path) == 0;
    if (!ok)
        unlink(tmp);
    return ok ? 0 : -1;
}

#define FW_TEST_BIG_PAD (8u * 1024u * 1024u) /* half of FW_KEYS_AUTH_MAX_BYTES */

/* SIGHUP with an 8 MiB authorized-keys file: it is read and parsed off the event loop, so an
 * established session keeps being answered meanwhile; when it is done, the removed key's
 * session is closed and the added key is let in. (Whether the PINGs were answered before
 * the reload finished is printed, not asserted: that is timing.) */
static void t_e2e_sighup_large_file(void)
{
    e2e e;
    memset(&e, 0, sizeof e);
    CHECK_EQ_INT(e2e_start(&e, 1), 0);
    fw_secure_identity keep[2];
    keep[0] = e.dev[1];
    fw_secure_identity_generate(&keep[1], NULL); /* the new device */
    int fa = tu_connect_server(e.srv), fb = tu_connect_server(e.srv);
    fw_secure_session sa, sb;
    int up = fa >= 0 && fb >= 0 && e2e_handshake(fa, &sa, &e.dev[0], e.server.pk) == 0 &&
             e2e_handshake(fb, &sb, &e.dev[1], e.server.pk) == 0;
    int written = up && write_keys_file(e.ak, FW_TEST_BIG_PAD, keep, 2) == 0;
    size_t mark = tu_log_mark(&e.srv->log);
    int signalled = written && tu_server_kill(e.srv, SIGHUP) == 0;
    int pings = 0, early = 0;
    for (uint32_t i = 0; signalled && i < 5; i++) {
        if (!e2e_sealed_ping(fb, &sb, 20 + i, "during the reload"))
            break;
        pings++;
        if (i == 0)
            early = !tu_log_has(&e.srv->log, mark, "msg=\"authorized keys reloaded\"");
    }
    int reloaded = pings == 5 && tu_log_wait(&e.srv->log, mark, "msg=\"authorized keys reloaded\"");
    int logged = tu_log_has(&e.srv->log, mark, "keys=2 sessions_closed=1");
    int a_closed = reloaded && tu_wait_closed(fa) == 1;
    int b_alive = reloaded && e2e_sealed_ping(fb, &sb, 30, "still trusted");
    int fc = tu_connect_server(e.srv), fd = tu_connect_server(e.srv);
    fw_secure_session sc, sd;
    int admitted = fc >= 0 && e2e_handshake(fc, &sc, &keep[1], e.server.pk) == 0 &&
                   e2e_sealed_ping(fc, &sc, 31, "new device");
    int refused = fd >= 0 && e2e_handshake(fd, &sd, &e.dev[0], e.server.pk) == FW_SEC_E_REJECTED;
    int fds[4] = {fa, fb, fc, fd};
    for (int i = 0; i < 4; i++)
        if (fds[i] >= 0)
            close(fds[i]);
    CHECK_EQ_INT(e2e_stop(&e), 0);
    CHECK(up);
    CHECK(written);
    CHECK(signalled);
    CHECK_MSG(pings == 5, "only %d of 5 PINGs answered after the SIGHUP", pings);
    CHECK(reloaded);
    CHECK(logged);
    CHECK_MSG(a_closed, "revoked session still open");
    CHECK_MSG(b_alive, "other session disturbed");
    CHECK_MSG(admitted, "the added key was not let in");
    CHECK_MSG(refused, "the removed key was let in again");
    printf("  (first PING answered %s the reload finished)\n", early ? "before" : "after");
}

/* Several SIGHUPs in a row, each after a rewrite of the file: at most one reload runs at a
 * time and one more follows a SIGHUP that came during it, so the file as of the last SIGHUP
 * is what is in force at the end, however many reloads that took. The last file is the only
 * one with three keys: its "keys=3" line says the last reload read it. */
static void t_e2e_sighup_burst(void)
{
    e2e e;
    memset(&e, 0, sizeof e);
    CHECK_EQ_INT(e2e_start(&e, 1), 0);
    fw_secure_identity d2, d3;
    fw_secure_identity_generate(&d2, NULL);
    fw_secure_identity_generate(&d3, NULL);
    int fa = tu_connect_server(e.srv);
    fw_secure_session sa;
    int up = fa >= 0 && e2e_handshake(fa, &sa, &e.dev[0], e.server.pk) == 0;
    size_t mark = tu_log_mark(&e.srv->log);
    /* dev0 stays through the first two files and is removed by the last; d3 comes last */
    const fw_secure_identity f1[1] = {e.dev[0]};
    const fw_secure_identity f2[2] = {e.dev[0], d2};
    const fw_secure_identity f3[3] = {e.dev[1], d2, d3};
    const size_t pad = 2u * 1024u * 1024u;
    int sent = up && write_keys_file(e.ak, pad, f1, 1) == 0 && tu_server_kill(e.srv, SIGHUP) == 0 &&
               write_keys_file(e.ak, pad, f2, 2) == 0 && tu_server_kill(e.srv, SIGHUP) == 0 &&
               tu_server_kill(e.srv, SIGHUP) == 0 &&
               write_keys_file(e.ak, pad, f3, 3) == 0 && tu_server_kill(e.srv, SIGHUP) == 0;
    int reloaded = sent && tu_log_wait(&e.srv->log, mark, "keys=3 sessions_closed=");
    int a_closed = reloaded && tu_wait_closed(fa) == 1;
    int fc = tu_connect_server(e.srv), fd = tu_connect_server(e.srv);
    fw_secure_session sc, sd;
    int added = fc >= 0 && e2e_handshake(fc, &sc, &d3, e.server.pk) == 0 &&
                e2e_sealed_ping(fc, &sc, 40, "added last");
    int removed = fd >= 0 && e2e_handshake(fd, &sd, &e.dev[0], e.server.pk) == FW_SEC_E_REJECTED;
    int errors = tu_log_has(&e.srv->log, mark, "cannot reload authorized keys");
    if (fa >= 0)
        close(fa);
    if (fc >= 0)
        close(fc);
    if (fd >= 0)
        close(fd);
    int status = tu_server_stop(e.srv);
    /* how many reloads the 4 SIGHUPs made (informational: it depends on how the signals met
     * the reads); the log is complete and no longer written once the server is reaped */
    int n_reloads = 0;
    for (const char *at = e.srv->log.buf + mark;
         (at = strstr(at, "msg=\"authorized keys reloaded\"")) != NULL; at++)
        n_reloads++;
    free(e.srv);
    e.srv = NULL;
    CHECK_EQ_INT(status, 0);
    CHECK(up);
    CHECK(sent);
    CHECK_MSG(reloaded, "the last file was never loaded");
    CHECK_MSG(a_closed, "the session of the key removed last is still open");
    CHECK_MSG(added, "the key added last was not let in");
    CHECK_MSG(removed, "the key removed last was let in");
    CHECK_MSG(!errors, "a reload failed (the files are renamed into place)");
    CHECK(n_reloads >= 1 && n_reloads <= 4);
    printf("  (%d reloads for 4 SIGHUPs)\n", n_reloads);
}

/* SIGHUP and SIGTERM back to back, a large file being read: the shutdown waits for the
 * reload or cancels it, frees it, and exits 0 (a sanitizer report would make it non-zero).
 * A few rounds, with a connection open, so that the reload meets the shutdown at different
 * points. */
static void t_e2e_sighup_then_sigterm(void)
{
    for (int round = 0; round < 3; round++) {
        int status = -2;
        e2e e;
        memset(&e, 0, sizeof e);
        CHECK_EQ_INT(e2e_start(&e, 1), 0);
        const fw_secure_identity keep[1] = {e.dev[1]};
        int fa = tu_connect_server(e.srv);
        fw_secure_session sa;
        int ok = fa >= 0 && e2e_handshake(fa, &sa, &e.dev[0], e.server.pk) == 0 &&
                 write_keys_file(e.ak, FW_TEST_BIG_PAD, keep, 1) == 0 &&
                 tu_server_kill(e.srv, SIGHUP) == 0 && tu_server_kill(e.srv, SIGTERM) == 0;
        if (round == 2 && fa >= 0) {
            close(fa); /* no connection left: the shutdown finishes soonest */
            fa = -1;
        }
        if (ok)
            status = tu_server_wait(e.srv);
        else
            tu_server_stop(e.srv);
        if (fa >= 0)
            close(fa);
        int stopped = tu_server_log_has(e.srv, "msg=\"stopped\"");
        free(e.srv);
        CHECK_MSG(status == 0, "round %d: exit status %d", round, status);
        CHECK_MSG(stopped, "round %d: no clean stop", round);
    }
}

/* libfacewire through fwcat: --key / --server-pub, a wrong pin, an unknown device. */
static void t_e2e_fwcat(void)
{
    e2e e;
    memset(&e, 0, sizeof e);
    CHECK_EQ_INT(e2e_start(&e, 1), 0);
    char port[16], out[4096], out2[4096], out3[4096], out4[4096];
    snprintf(port, sizeof port, "%d", e.srv->port);
    const char *ok_args[] = {"-p", port, "--key", e.dkey[0], "--server-pub", e.spub, "ping",
                             "sealed-echo", NULL};
    int rc_ok = tu_run("fwcat", ok_args, out, sizeof out);
    const char *pin_args[] = {"-p", port, "--key", e.dkey[0], "--server-pub", e.dpub[1], "ping",
                              "x", NULL};
    int rc_pin = tu_run("fwcat", pin_args, out2, sizeof out2);
    /* a device key the server does not list: the server key doubles as one */
    const char *unk_args[] = {"-p", port, "--key", e.skey, "--server-pub", e.spub, "ping", "x",
                              NULL};
    int rc_unk = tu_run("fwcat", unk_args, out3, sizeof out3);
    const char *plain_args[] = {"-p", port, "ping", "x", NULL};
    int rc_plain = tu_run("fwcat", plain_args, out4, sizeof out4);
    CHECK_EQ_INT(e2e_stop(&e), 0);
    CHECK_EQ_INT(rc_ok, 0);
    CHECK_EQ_STR(out, "sealed-echo\n");
    CHECK_EQ_INT(rc_pin, 2);
    CHECK_EQ_STR(out2, "fwcat: secure handshake: server key mismatch: the server is not the pinned one\n");
    CHECK_EQ_INT(rc_unk, 2);
    CHECK_EQ_STR(out3, "fwcat: server refused this device's key: unknown client key\n");
    CHECK_EQ_INT(rc_plain, 1);
    CHECK_EQ_STR(out4, "fwcat: UNAUTHORIZED: secure session required\n");
}

/* A camera stream over a secure session, through libfacewire: frames go out sealed, events
 * come back sealed, and ordinary calls go on on the same connection. */
static void t_e2e_stream_sealed(void)
{
    e2e e;
    memset(&e, 0, sizeof e);
    CHECK_EQ_INT(e2e_keys(&e), 0);
    const char *args[] = {"--server-key", e.skey, "--authorized-keys", e.ak, "--data", e.data,
                          "--require-secure", "--enable-test-ops", NULL};
    e.srv = calloc(1, sizeof *e.srv);
    CHECK(e.srv != NULL);
    if (tu_server_start(e.srv, args) != 0) {
        free(e.srv);
        CHECK_MSG(0, "server did not start");
    }
    fw_client_secure sec;
    char err[512] = "", port[16], why[256] = "";
    int loaded = fw_client_secure_load(&sec, e.dkey[0], e.spub, err, sizeof err);
    snprintf(port, sizeof port, "%d", e.srv->port);
    fw_client_config cfg;
    fw_client_config_init(&cfg);
    cfg.port = port;
    cfg.secure = &sec;
    fw_client *c = NULL;
    int opened = loaded == FW_OK && fw_client_open(&cfg, &c) == FW_OK &&
                 fw_client_connect(c) == FW_OK;
    uint32_t sid = 0;
    fw_stream_config sc;
    memset(&sc, 0, sizeof sc);
    sc.name = "door-1";
    sc.mode = FW_STREAM_TEST;
    fw_stream_event ev;
    fw_stream_face faces[4];
    fw_stream_stats st;
    memset(&ev, 0, sizeof ev);
    memset(&st, 0, sizeof st);
    static const char frame[] = "test mode does not decode this";
    int streamed = opened && fw_stream_open(c, &sc, &sid) == FW_OK &&
                   fw_stream_push(c, sid, 1, 0, frame, sizeof frame) == FW_OK &&
                   fw_stream_poll(c, 10000, &ev, faces, 4) == FW_OK &&
                   fw_stream_close(c, sid, &st) == FW_OK;
    const uint8_t *echo = NULL;
    size_t elen = 0;
    int pinged = streamed && fw_ping(c, "after", 5, &echo, &elen) == FW_OK && elen == 5 &&
                 memcmp(echo, "after", 5) == 0;
    if (c)
        snprintf(why, sizeof why, "%s", fw_client_errmsg(c));
    fw_client_close(c);
    memset(&sec, 0, sizeof sec);
    CHECK_EQ_INT(e2e_stop(&e), 0);
    CHECK_MSG(opened, "secure connect: %s %s", err, why);
    CHECK_MSG(streamed, "stream: %s", why);
    CHECK_EQ_INT(ev.kind, FW_STREAM_EV_FACES);
    CHECK_EQ_INT(ev.seq, 1);
    CHECK_EQ_INT(st.received, 1);
    CHECK_MSG(pinged, "ping after the stream: %s", why);
}

static void t_e2e_command_line(void)
{
    e2e e;
    memset(&e, 0, sizeof e);
    CHECK_EQ_INT(e2e_keys(&e), 0);
    char out[4096], want[1024];
    const char *open_args[] = {"--listen", "0.0.0.0:0", NULL};
    CHECK_EQ_INT(tu_run("facewired", open_args, out, sizeof out), 2);
    CHECK(strstr(out, "refusing to serve plaintext on 0.0.0.0:0: give --server-key and "
                      "--authorized-keys, or --insecure-plaintext") != NULL);
    const char *req_args[] = {"--require-secure", NULL};
    CHECK_EQ_INT(tu_run("facewired", req_args, out, sizeof out), 2);
    CHECK(strstr(out, "--require-secure needs --server-key") != NULL);
    /* a server key readable by others: refused at start */
    CHECK_EQ_INT(chmod(e.skey, 0644), 0);
    const char *perm_args[] = {"--server-key", e.skey, "--authorized-keys", e.ak, NULL};
    CHECK_EQ_INT(tu_run("facewired", perm_args, out, sizeof out), 1);
    snprintf(want, sizeof want, "%s: permissions 0644 are too open", e.skey);
    CHECK_MSG(strstr(out, want) != NULL, "%s", out);
    /* keygen */
    char prefix[400];
    snprintf(prefix, sizeof prefix, "%s/e2e-kg", e.dir);
    const char *kg[] = {"keygen", prefix, NULL};
    CHECK_EQ_INT(tu_run("facewired", kg, out, sizeof out), 0);
    CHECK_EQ_INT(tu_run("facewired", kg, out, sizeof out), 1);
    CHECK(strstr(out, "exists; refusing to overwrite a key") != NULL);
    char kp[420];
    snprintf(kp, sizeof kp, "%s.key", prefix);
    struct stat st;
    CHECK_EQ_INT(stat(kp, &st), 0);
    CHECK_EQ_INT(st.st_mode & 0777, 0600);
}

static void t_cleanup(void)
{
    /* remove what the tests left: key files, and the servers' --data directories */
    const char *d = tmpdir();
    CHECK(d[0]);
    CHECK_EQ_INT(tu_rmtree(d), 0);
    CHECK(access(d, F_OK) != 0);
}

static const struct check_test tests[] = {
    CHECK_TEST(t_handshake_and_roundtrip),
    CHECK_TEST(t_sessions_independent),
    CHECK_TEST(t_wrong_server_key),
    CHECK_TEST(t_mitm_signature),
    CHECK_TEST(t_unknown_client_key),
    CHECK_TEST(t_client_signature_forged),
    CHECK_TEST(t_tampered_frames),
    CHECK_TEST(t_replayed_frame),
    CHECK_TEST(t_reordered_frames),
    CHECK_TEST(t_truncated_frame),
    CHECK_TEST(t_plain_frame_in_session),
    CHECK_TEST(t_counter_exhausted),
    CHECK_TEST(t_seal_space),
    CHECK_TEST(t_state_machine),
    CHECK_TEST(t_bad_hello),
    CHECK_TEST(t_bad_hello_response),
    CHECK_TEST(t_bad_auth),
    CHECK_TEST(t_bad_auth_response),
    CHECK_TEST(t_key_line_parse),
    CHECK_TEST(t_authorized_keys_parse),
    CHECK_TEST(t_keygen_files),
    CHECK_TEST(t_secret_key_permissions),
    CHECK_TEST(t_authorized_keys_file),
    CHECK_TEST(t_symmetric_key_file),
    CHECK_TEST(t_security_open_errors),
    CHECK_TEST(t_security_connection_flow),
    CHECK_TEST(t_security_reload_steps),
    CHECK_TEST(t_security_handshake_refusals),
    CHECK_TEST(t_loopback_rule),
    CHECK_TEST(t_record_seal_open),
    CHECK_TEST(t_key_check_value),
    CHECK_TEST(t_e2e_handshake_require_secure),
    CHECK_TEST(t_e2e_tamper_closes),
    CHECK_TEST(t_e2e_bad_handshakes),
    CHECK_TEST(t_e2e_sighup_revokes),
    CHECK_TEST(t_e2e_sighup_large_file),
    CHECK_TEST(t_e2e_sighup_burst),
    CHECK_TEST(t_e2e_sighup_then_sigterm),
    CHECK_TEST(t_e2e_fwcat),
    CHECK_TEST(t_e2e_stream_sealed),
    CHECK_TEST(t_e2e_command_line),
    CHECK_TEST(t_cleanup),
};

int main(int argc, char **argv)
{
    if (sodium_init() < 0) {
        printf("0 passed, 1 failed\n");
        return 1;
    }
    return check_main(tests, CHECK_COUNT(tests), argc, argv);
}
