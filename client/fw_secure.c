/*
 * fw_secure.c — the secure-session handshake and frame sealing of fw_secure.h, on libsodium.
 *
 * Compiled to nothing without FW_WITH_SODIUM: the ARM cross build of libfacewire has no
 * libsodium, and the smallest devices go without secure sessions (docs/security.md says what
 * that costs). The Makefile defines FW_WITH_SODIUM for every host build of the client/ sources.
 *
 * The construction (SIGMA-style, explained message by message in docs/security.md):
 *   th    = BLAKE2b-256("facewire/1 handshake" || HELLO body || HELLO response minus signature)
 *   sig_S = Ed25519_S("facewire/1 server signature" || th)
 *   sig_C = Ed25519_C("facewire/1 client signature" || th || pk_C), sent inside the sealed AUTH
 *   k_dir = BLAKE2b-256(key = th, "facewire/1 c2s" or "... s2c" || crypto_kx key of that dir)
 * Frames: ChaCha20-Poly1305 IETF under k_dir, nonce = 4 zero bytes || u64 BE counter of that
 * direction, associated data = the 20 header bytes as sent (SEALED set, body_len = ciphertext).
 */
#ifdef FW_WITH_SODIUM

#include "client/fw_secure.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>

_Static_assert(crypto_sign_PUBLICKEYBYTES == FW_SECURE_PK_LEN, "ed25519 pk size");
_Static_assert(crypto_sign_SECRETKEYBYTES == FW_SECURE_SK_LEN, "ed25519 sk size");
_Static_assert(crypto_sign_SEEDBYTES == FW_SECURE_SEED_LEN, "ed25519 seed size");
_Static_assert(crypto_sign_BYTES == FW_SECURE_SIG_LEN, "ed25519 signature size");
_Static_assert(crypto_kx_PUBLICKEYBYTES == FW_SECURE_KX_LEN, "x25519 pk size");
_Static_assert(crypto_kx_SECRETKEYBYTES == FW_SECURE_KX_LEN, "x25519 sk size");
_Static_assert(crypto_kx_SESSIONKEYBYTES == FW_SECURE_KX_LEN, "kx session key size");
_Static_assert(crypto_aead_chacha20poly1305_ietf_KEYBYTES == FW_SECURE_KX_LEN, "aead key size");
_Static_assert(crypto_aead_chacha20poly1305_ietf_ABYTES == FW_SECURE_TAG_LEN, "aead tag size");
_Static_assert(crypto_aead_chacha20poly1305_ietf_NPUBBYTES == 12, "aead nonce size");

/* Domain-separation labels: a signature or key made for one purpose is useless for another. */
static const char L_TRANSCRIPT[] = "facewire/1 handshake";
static const char L_SERVER_SIG[] = "facewire/1 server signature";
static const char L_CLIENT_SIG[] = "facewire/1 client signature";
static const char L_C2S[] = "facewire/1 c2s";
static const char L_S2C[] = "facewire/1 s2c";

/* Offsets in the HELLO response body. */
#define RESP_EPH 1
#define RESP_NONCE (RESP_EPH + FW_SECURE_KX_LEN)
#define RESP_PK (RESP_NONCE + FW_SECURE_NONCE_LEN)
#define RESP_SIG (RESP_PK + FW_SECURE_PK_LEN)
#define RESP_SIGNED_LEN RESP_SIG
_Static_assert(RESP_SIG + FW_SECURE_SIG_LEN == FW_SECURE_HELLO_RESP_LEN, "response layout");

const char *fw_secure_strerror(int rc)
{
    switch (rc) {
    case FW_SEC_OK: return "ok";
    case FW_SEC_E_STATE: return "secure session: call out of order or session failed";
    case FW_SEC_E_MALFORMED: return "malformed handshake message";
    case FW_SEC_E_VERSION: return "unsupported handshake version";
    case FW_SEC_E_SERVER_KEY: return "server key mismatch: the server is not the pinned one";
    case FW_SEC_E_SIGNATURE: return "handshake signature does not verify";
    case FW_SEC_E_UNKNOWN_KEY: return "unknown client key";
    case FW_SEC_E_OPEN: return "sealed frame failed authentication";
    case FW_SEC_E_NOT_SEALED: return "frame not sealed in a secure session";
    case FW_SEC_E_COUNTER: return "nonce counter exhausted";
    case FW_SEC_E_SPACE: return "buffer too small for the sealed frame";
    case FW_SEC_E_CRYPTO: return "libsodium refused (bad peer key or init failure)";
    case FW_SEC_E_REJECTED: return "server rejected the client key";
    case FW_SEC_E_INVALID: return "invalid argument";
    default: return "unknown secure-session error";
    }
}

int fw_secure_session_init(fw_secure_session *s, int is_server)
{
    if (!s)
        return FW_SEC_E_INVALID;
    sodium_memzero(s, sizeof *s);
    s->state = FW_SEC_NONE;
    s->is_server = is_server ? 1 : 0;
    /* sodium_init() is idempotent and thread-safe; 1 means "already initialised". */
    if (sodium_init() < 0) {
        s->state = FW_SEC_FAILED;
        return FW_SEC_E_CRYPTO;
    }
    return FW_SEC_OK;
}

void fw_secure_session_wipe(fw_secure_session *s)
{
    if (s)
        sodium_memzero(s, sizeof *s);
}

fw_sec_state fw_secure_state(const fw_secure_session *s)
{
    return s ? (fw_sec_state)s->state : FW_SEC_FAILED;
}

const uint8_t *fw_secure_peer_key(const fw_secure_session *s)
{
    return s && s->state == FW_SEC_ESTABLISHED ? s->peer_pk : NULL;
}

/* Every failure but caller bugs ends the session: secrets go, the state stays FAILED. */
static int fail(fw_secure_session *s, int rc)
{
    uint8_t is_server = s->is_server;
    sodium_memzero(s, sizeof *s);
    s->is_server = is_server;
    s->state = FW_SEC_FAILED;
    return rc;
}

static void transcript(uint8_t th[32], const uint8_t hello[FW_SECURE_HELLO_LEN],
                       const uint8_t resp_signed[RESP_SIGNED_LEN])
{
    crypto_generichash_state st;
    crypto_generichash_init(&st, NULL, 0, 32);
    crypto_generichash_update(&st, (const uint8_t *)L_TRANSCRIPT, sizeof L_TRANSCRIPT - 1);
    crypto_generichash_update(&st, hello, FW_SECURE_HELLO_LEN);
    crypto_generichash_update(&st, resp_signed, RESP_SIGNED_LEN);
    crypto_generichash_final(&st, th, 32);
    sodium_memzero(&st, sizeof st);
}

/* What each side signs: label || th [|| pk]. Fixed-size fields, so no ambiguity. */
static size_t sig_message(uint8_t *msg, const char *label, size_t label_len, const uint8_t th[32],
                          const uint8_t *pk)
{
    memcpy(msg, label, label_len);
    memcpy(msg + label_len, th, 32);
    if (pk)
        memcpy(msg + label_len + 32, pk, FW_SECURE_PK_LEN);
    return label_len + 32 + (pk ? FW_SECURE_PK_LEN : 0);
}

/* k = BLAKE2b-256(key = th, label || kx): binds the direction key to this handshake's
 * transcript (nonces, the server identity, the version), not only to the two ephemerals. */
static void mix_key(uint8_t out[32], const uint8_t th[32], const char *label, size_t label_len,
                    const uint8_t kx[32])
{
    crypto_generichash_state st;
    crypto_generichash_init(&st, th, 32, 32);
    crypto_generichash_update(&st, (const uint8_t *)label, label_len);
    crypto_generichash_update(&st, kx, 32);
    crypto_generichash_final(&st, out, 32);
    sodium_memzero(&st, sizeof st);
}

static void derive(fw_secure_session *s, const uint8_t kx_c2s[32], const uint8_t kx_s2c[32])
{
    uint8_t c2s[32], s2c[32];
    mix_key(c2s, s->th, L_C2S, sizeof L_C2S - 1, kx_c2s);
    mix_key(s2c, s->th, L_S2C, sizeof L_S2C - 1, kx_s2c);
    memcpy(s->is_server ? s->k_rx : s->k_tx, c2s, 32);
    memcpy(s->is_server ? s->k_tx : s->k_rx, s2c, 32);
    s->n_tx = s->n_rx = 0;
    sodium_memzero(c2s, sizeof c2s);
    sodium_memzero(s2c, sizeof s2c);
    /* Forward secrecy: the ephemeral secret must not outlive the derivation. */
    sodium_memzero(s->eph_sk, sizeof s->eph_sk);
}

static void make_nonce(uint8_t n[12], uint64_t ctr)
{
    memset(n, 0, 4);
    for (int i = 0; i < 8; i++)
        n[4 + i] = (uint8_t)(ctr >> (56 - 8 * i));
}

/* Seal without the state check (the client's AUTH goes out before ESTABLISHED). */
static int seal_raw(fw_secure_session *s, fw_header *h, const uint8_t *body, size_t len,
                    uint8_t *out, size_t cap, size_t *frame_len)
{
    if (len > (size_t)UINT32_MAX - FW_SECURE_TAG_LEN || cap < FW_HEADER_LEN ||
        cap - FW_HEADER_LEN < len + FW_SECURE_TAG_LEN)
        return FW_SEC_E_SPACE;
    if (s->n_tx == UINT64_MAX)
        return fail(s, FW_SEC_E_COUNTER);
    h->flags |= FW_FLAG_SEALED;
    h->body_len = (uint32_t)(len + FW_SECURE_TAG_LEN);
    uint8_t ad[FW_HEADER_LEN], nonce[12];
    fw_header_encode(h, ad);
    make_nonce(nonce, s->n_tx);
    unsigned long long clen = 0;
    /* In place (body == out + 20) is fine: libsodium encrypts before it authenticates. */
    crypto_aead_chacha20poly1305_ietf_encrypt(out + FW_HEADER_LEN, &clen, body, len, ad,
                                              FW_HEADER_LEN, NULL, nonce, s->k_tx);
    memcpy(out, ad, FW_HEADER_LEN);
    s->n_tx++;
    *frame_len = FW_HEADER_LEN + (size_t)clen;
    return FW_SEC_OK;
}

/* Open without the state check. Every failure is terminal. */
static int open_raw(fw_secure_session *s, const uint8_t hdr[FW_HEADER_LEN], const uint8_t *body,
                    size_t len, uint8_t *out, size_t cap, size_t *out_len)
{
    fw_header h;
    fw_header_decode(hdr, &h);
    if (!(h.flags & FW_FLAG_SEALED) || (size_t)h.body_len != len)
        return fail(s, FW_SEC_E_NOT_SEALED);
    if (len < FW_SECURE_TAG_LEN)
        return fail(s, FW_SEC_E_OPEN);
    if (cap < len - FW_SECURE_TAG_LEN)
        return fail(s, FW_SEC_E_SPACE);
    if (s->n_rx == UINT64_MAX)
        return fail(s, FW_SEC_E_COUNTER);
    uint8_t nonce[12];
    make_nonce(nonce, s->n_rx);
    unsigned long long mlen = 0;
    /* The tag is checked before anything is written, so out == body is fine too. */
    if (crypto_aead_chacha20poly1305_ietf_decrypt(out, &mlen, NULL, body, len, hdr,
                                                  FW_HEADER_LEN, nonce, s->k_rx) != 0)
        return fail(s, FW_SEC_E_OPEN);
    s->n_rx++;
    *out_len = (size_t)mlen;
    return FW_SEC_OK;
}

/* ---- handshake ---------------------------------------------------------------------------- */

int fw_secure_client_hello(fw_secure_session *s, uint8_t out[FW_SECURE_HELLO_LEN])
{
    if (!s || !out)
        return FW_SEC_E_INVALID;
    if (s->is_server || s->state != FW_SEC_NONE)
        return fail(s, FW_SEC_E_STATE);
    crypto_kx_keypair(s->eph_pk, s->eph_sk);
    randombytes_buf(s->nonce, sizeof s->nonce);
    out[0] = FW_SECURE_VERSION;
    memcpy(out + 1, s->eph_pk, FW_SECURE_KX_LEN);
    memcpy(out + 1 + FW_SECURE_KX_LEN, s->nonce, FW_SECURE_NONCE_LEN);
    s->state = FW_SEC_HELLO_SENT;
    return FW_SEC_OK;
}

int fw_secure_server_on_hello(fw_secure_session *s, const fw_secure_identity *me,
                              const uint8_t *body, size_t len,
                              uint8_t out[FW_SECURE_HELLO_RESP_LEN])
{
    if (!s || !me || !out || (!body && len))
        return FW_SEC_E_INVALID;
    if (!s->is_server || s->state != FW_SEC_NONE)
        return fail(s, FW_SEC_E_STATE);
    if (len != FW_SECURE_HELLO_LEN)
        return fail(s, FW_SEC_E_MALFORMED);
    if (body[0] != FW_SECURE_VERSION)
        return fail(s, FW_SEC_E_VERSION);

    uint8_t kx_rx[32], kx_tx[32];
    crypto_kx_keypair(s->eph_pk, s->eph_sk);
    /* Fails for a low-order client point (the shared secret would be predictable). */
    if (crypto_kx_server_session_keys(kx_rx, kx_tx, s->eph_pk, s->eph_sk, body + 1) != 0)
        return fail(s, FW_SEC_E_CRYPTO);

    out[0] = FW_SECURE_VERSION;
    memcpy(out + RESP_EPH, s->eph_pk, FW_SECURE_KX_LEN);
    randombytes_buf(out + RESP_NONCE, FW_SECURE_NONCE_LEN);
    memcpy(out + RESP_PK, me->pk, FW_SECURE_PK_LEN);
    transcript(s->th, body, out);

    uint8_t msg[sizeof L_SERVER_SIG + 32];
    size_t mlen = sig_message(msg, L_SERVER_SIG, sizeof L_SERVER_SIG - 1, s->th, NULL);
    crypto_sign_detached(out + RESP_SIG, NULL, msg, mlen, me->sk);

    derive(s, kx_rx, kx_tx); /* server: rx is c2s, tx is s2c */
    sodium_memzero(kx_rx, sizeof kx_rx);
    sodium_memzero(kx_tx, sizeof kx_tx);
    s->state = FW_SEC_AWAIT_AUTH;
    return FW_SEC_OK;
}

int fw_secure_client_on_hello_response(fw_secure_session *s, const fw_secure_identity *me,
                                       const uint8_t server_pk[FW_SECURE_PK_LEN],
                                       const uint8_t *body, size_t len, const fw_header *hdr,
                                       uint8_t out[FW_SECURE_AUTH_FRAME_LEN])
{
    if (!s || !me || !server_pk || !hdr || !out || (!body && len))
        return FW_SEC_E_INVALID;
    if (s->is_server || s->state != FW_SEC_HELLO_SENT)
        return fail(s, FW_SEC_E_STATE);
    if (len != FW_SECURE_HELLO_RESP_LEN)
        return fail(s, FW_SEC_E_MALFORMED);
    if (body[0] != FW_SECURE_VERSION)
        return fail(s, FW_SEC_E_VERSION);
    /* Pinning: nothing but the configured server key is acceptable, whoever signed. */
    if (sodium_memcmp(body + RESP_PK, server_pk, FW_SECURE_PK_LEN) != 0)
        return fail(s, FW_SEC_E_SERVER_KEY);

    uint8_t hello[FW_SECURE_HELLO_LEN];
    hello[0] = FW_SECURE_VERSION;
    memcpy(hello + 1, s->eph_pk, FW_SECURE_KX_LEN);
    memcpy(hello + 1 + FW_SECURE_KX_LEN, s->nonce, FW_SECURE_NONCE_LEN);
    transcript(s->th, hello, body);

    uint8_t msg[sizeof L_CLIENT_SIG + 32 + FW_SECURE_PK_LEN];
    size_t mlen = sig_message(msg, L_SERVER_SIG, sizeof L_SERVER_SIG - 1, s->th, NULL);
    if (crypto_sign_verify_detached(body + RESP_SIG, msg, mlen, server_pk) != 0)
        return fail(s, FW_SEC_E_SIGNATURE);

    uint8_t kx_rx[32], kx_tx[32];
    if (crypto_kx_client_session_keys(kx_rx, kx_tx, s->eph_pk, s->eph_sk, body + RESP_EPH) != 0)
        return fail(s, FW_SEC_E_CRYPTO);
    derive(s, kx_tx, kx_rx); /* client: tx is c2s, rx is s2c */
    sodium_memzero(kx_rx, sizeof kx_rx);
    sodium_memzero(kx_tx, sizeof kx_tx);
    memcpy(s->peer_pk, server_pk, FW_SECURE_PK_LEN);

    /* AUTH: our identity and signature, sealed under the new c2s key. The seal is what binds
     * the identity to this very key exchange (SIGMA's MAC): nobody without the ephemeral
     * secrets can replace it with their own, signed, identity. */
    uint8_t plain[FW_SECURE_AUTH_PLAIN_LEN];
    memcpy(plain, me->pk, FW_SECURE_PK_LEN);
    mlen = sig_message(msg, L_CLIENT_SIG, sizeof L_CLIENT_SIG - 1, s->th, me->pk);
    crypto_sign_detached(plain + FW_SECURE_PK_LEN, NULL, msg, mlen, me->sk);

    fw_header h = *hdr;
    h.magic = FW_MAGIC;
    h.version = FW_PROTO_VERSION;
    h.opcode = FW_OP_AUTH;
    h.flags = 0;
    h.status = 0;
    size_t flen = 0;
    int rc = seal_raw(s, &h, plain, sizeof plain, out, FW_SECURE_AUTH_FRAME_LEN, &flen);
    sodium_memzero(plain, sizeof plain);
    if (rc != FW_SEC_OK)
        return fail(s, rc);
    sodium_memzero(s->th, sizeof s->th);
    s->state = FW_SEC_AUTH_SENT;
    return FW_SEC_OK;
}

int fw_secure_server_on_auth(fw_secure_session *s, const fw_authorized_keys *keys,
                             const uint8_t hdr[FW_HEADER_LEN], const uint8_t *body, size_t len)
{
    if (!s || !keys || !hdr || (!body && len))
        return FW_SEC_E_INVALID;
    if (!s->is_server || s->state != FW_SEC_AWAIT_AUTH)
        return fail(s, FW_SEC_E_STATE);
    fw_header h;
    fw_header_decode(hdr, &h);
    if (h.opcode != FW_OP_AUTH || (h.flags & (FW_FLAG_RESPONSE | FW_FLAG_EVENT)))
        return fail(s, FW_SEC_E_MALFORMED);
    if (!(h.flags & FW_FLAG_SEALED))
        return fail(s, FW_SEC_E_NOT_SEALED);
    if (len != FW_SECURE_AUTH_BODY_LEN)
        return fail(s, FW_SEC_E_MALFORMED);

    uint8_t plain[FW_SECURE_AUTH_PLAIN_LEN];
    size_t plen = 0;
    int rc = open_raw(s, hdr, body, len, plain, sizeof plain, &plen);
    if (rc != FW_SEC_OK)
        return rc;
    const uint8_t *client_pk = plain;
    if (!fw_authorized_keys_contains(keys, client_pk)) {
        sodium_memzero(plain, sizeof plain);
        return fail(s, FW_SEC_E_UNKNOWN_KEY);
    }
    uint8_t msg[sizeof L_CLIENT_SIG + 32 + FW_SECURE_PK_LEN];
    size_t mlen = sig_message(msg, L_CLIENT_SIG, sizeof L_CLIENT_SIG - 1, s->th, client_pk);
    if (crypto_sign_verify_detached(plain + FW_SECURE_PK_LEN, msg, mlen, client_pk) != 0) {
        sodium_memzero(plain, sizeof plain);
        return fail(s, FW_SEC_E_SIGNATURE);
    }
    memcpy(s->peer_pk, client_pk, FW_SECURE_PK_LEN);
    sodium_memzero(plain, sizeof plain);
    sodium_memzero(s->th, sizeof s->th);
    s->state = FW_SEC_ESTABLISHED;
    return FW_SEC_OK;
}

int fw_secure_client_on_auth_response(fw_secure_session *s, const uint8_t hdr[FW_HEADER_LEN],
                                      const uint8_t *body, size_t len)
{
    if (!s || !hdr || (!body && len))
        return FW_SEC_E_INVALID;
    if (s->is_server || s->state != FW_SEC_AUTH_SENT)
        return fail(s, FW_SEC_E_STATE);
    fw_header h;
    fw_header_decode(hdr, &h);
    if (h.opcode != FW_OP_AUTH || !(h.flags & FW_FLAG_RESPONSE))
        return fail(s, FW_SEC_E_MALFORMED);
    if (!(h.flags & FW_FLAG_SEALED))
        return fail(s, h.status != FW_STATUS_OK ? FW_SEC_E_REJECTED : FW_SEC_E_NOT_SEALED);
    uint8_t plain[1];
    size_t plen = 0;
    /* An OK answer has an empty body: exactly the tag. */
    if (len != FW_SECURE_TAG_LEN)
        return fail(s, FW_SEC_E_MALFORMED);
    int rc = open_raw(s, hdr, body, len, plain, sizeof plain, &plen);
    if (rc != FW_SEC_OK)
        return rc;
    if (h.status != FW_STATUS_OK)
        return fail(s, FW_SEC_E_REJECTED);
    s->state = FW_SEC_ESTABLISHED;
    return FW_SEC_OK;
}

/* ---- frames ------------------------------------------------------------------------------- */

int fw_secure_seal(fw_secure_session *s, fw_header *h, const uint8_t *body, size_t len,
                   uint8_t *out, size_t cap, size_t *frame_len)
{
    if (!s || !h || !out || !frame_len || (!body && len))
        return FW_SEC_E_INVALID;
    if (s->state != FW_SEC_ESTABLISHED)
        return fail(s, FW_SEC_E_STATE);
    return seal_raw(s, h, body, len, out, cap, frame_len);
}

int fw_secure_open(fw_secure_session *s, const uint8_t hdr[FW_HEADER_LEN], const uint8_t *body,
                   size_t len, uint8_t *out, size_t cap, size_t *out_len)
{
    if (!s || !hdr || !out_len || (!body && len) || (!out && cap))
        return FW_SEC_E_INVALID;
    if (s->state != FW_SEC_ESTABLISHED)
        return fail(s, FW_SEC_E_STATE);
    return open_raw(s, hdr, body, len, out, cap, out_len);
}

int fw_authorized_keys_contains(const fw_authorized_keys *keys,
                                const uint8_t pk[FW_SECURE_PK_LEN])
{
    if (!keys || !keys->pk || !pk)
        return 0;
    size_t lo = 0, hi = keys->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = memcmp(keys->pk[mid], pk, FW_SECURE_PK_LEN);
        if (c == 0)
            return 1;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return 0;
}

/* ---- key text and files ------------------------------------------------------------------- */

int fw_secure_identity_from_seed(fw_secure_identity *id, const uint8_t seed[FW_SECURE_SEED_LEN])
{
    if (!id || !seed)
        return FW_SEC_E_INVALID;
    if (sodium_init() < 0)
        return FW_SEC_E_CRYPTO;
    crypto_sign_seed_keypair(id->pk, id->sk, seed);
    return FW_SEC_OK;
}

int fw_secure_identity_generate(fw_secure_identity *id, uint8_t seed[FW_SECURE_SEED_LEN])
{
    if (!id)
        return FW_SEC_E_INVALID;
    if (sodium_init() < 0)
        return FW_SEC_E_CRYPTO;
    uint8_t s[FW_SECURE_SEED_LEN];
    randombytes_buf(s, sizeof s);
    crypto_sign_seed_keypair(id->pk, id->sk, s);
    if (seed)
        memcpy(seed, s, sizeof s);
    sodium_memzero(s, sizeof s);
    return FW_SEC_OK;
}

static int is_blank(char c) { return c == ' ' || c == '\t'; }
static int is_eol(char c) { return c == '\r' || c == '\n'; }

int fw_secure_parse_key_line(const char *line, size_t len, const char *tag, uint8_t key[32],
                             const char **why)
{
    const char *dummy;
    if (!why)
        why = &dummy;
    if (!line || !tag || !key) {
        *why = "invalid argument";
        return -1;
    }
    size_t i = 0, tl = strlen(tag);
    while (i < len && is_blank(line[i]))
        i++;
    if (len - i < tl || memcmp(line + i, tag, tl) != 0 ||
        (len - i > tl && !is_blank(line[i + tl]) && !is_eol(line[i + tl]))) {
        *why = "unknown key type";
        return -1;
    }
    i += tl;
    while (i < len && is_blank(line[i]))
        i++;
    size_t start = i;
    while (i < len && !is_blank(line[i]) && !is_eol(line[i]))
        i++;
    size_t toklen = i - start;
    if (toklen == 0) {
        *why = "missing key";
        return -1;
    }
    if (toklen != FW_SECURE_B64_LEN) {
        *why = "bad key length";
        return -1;
    }
    size_t binlen = 0;
    const char *end = NULL;
    if (sodium_base642bin(key, 32, line + start, toklen, NULL, &binlen, &end,
                          sodium_base64_VARIANT_ORIGINAL) != 0 ||
        binlen != 32 || end != line + start + toklen) {
        *why = "bad base64";
        return -1;
    }
    /* One text per key: reject non-canonical encodings (stray low bits in the last digit). */
    char canon[FW_SECURE_B64_LEN + 1];
    sodium_bin2base64(canon, sizeof canon, key, 32, sodium_base64_VARIANT_ORIGINAL);
    if (memcmp(canon, line + start, FW_SECURE_B64_LEN) != 0) {
        sodium_memzero(key, 32);
        *why = "bad base64";
        return -1;
    }
    sodium_memzero(canon, sizeof canon);
    *why = NULL;
    return 0;
}

int fw_secure_format_key_line(const char *tag, const uint8_t key[32], const char *comment,
                              char *out, size_t cap)
{
    if (!tag || !key || !out)
        return -1;
    if (comment && strpbrk(comment, "\r\n"))
        return -1;
    char b64[FW_SECURE_B64_LEN + 1];
    sodium_bin2base64(b64, sizeof b64, key, 32, sodium_base64_VARIANT_ORIGINAL);
    int n = snprintf(out, cap, "%s %s%s%s\n", tag, b64, comment && *comment ? " " : "",
                     comment && *comment ? comment : "");
    sodium_memzero(b64, sizeof b64);
    if (n < 0 || (size_t)n >= cap) {
        if (cap)
            sodium_memzero(out, cap);
        return -1;
    }
    return n;
}

static void set_err(char *err, size_t errcap, const char *path, const char *msg)
{
    if (err && errcap)
        snprintf(err, errcap, "%s: %s", path, msg);
}

int fw_secure_read_key_file(const char *path, int secret, char *buf, size_t cap, size_t *len,
                            char *err, size_t errcap)
{
    if (!path || !buf || cap == 0 || !len) {
        if (err && errcap)
            snprintf(err, errcap, "invalid argument");
        return -1;
    }
    char msg[200];
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        set_err(err, errcap, path, strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        set_err(err, errcap, path, strerror(errno));
        goto err;
    }
    if (!S_ISREG(st.st_mode)) {
        set_err(err, errcap, path, "not a regular file");
        goto err;
    }
    /* Checked on the open descriptor, so a swap of the file after the check cannot matter. */
    if (secret && (st.st_mode & 077)) {
        snprintf(msg, sizeof msg,
                 "permissions 0%03o are too open: a secret key must not be accessible by group "
                 "or others (chmod 600)", (unsigned)(st.st_mode & 0777));
        set_err(err, errcap, path, msg);
        goto err;
    }
    if (secret && st.st_uid != geteuid() && st.st_uid != 0) {
        snprintf(msg, sizeof msg, "owned by uid %u, not by this user (uid %u) or root",
                 (unsigned)st.st_uid, (unsigned)geteuid());
        set_err(err, errcap, path, msg);
        goto err;
    }
    size_t have = 0;
    for (;;) {
        if (have == cap - 1) {
            /* Full: one more byte means the file is over the limit. */
            char extra;
            ssize_t r = read(fd, &extra, 1);
            if (r < 0 && errno == EINTR)
                continue;
            if (r != 0) {
                set_err(err, errcap, path, r < 0 ? strerror(errno) : "file too large");
                goto err;
            }
            break;
        }
        ssize_t r = read(fd, buf + have, cap - 1 - have);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            set_err(err, errcap, path, strerror(errno));
            goto err;
        }
        if (r == 0)
            break;
        have += (size_t)r;
    }
    buf[have] = '\0';
    *len = have;
    close(fd);
    return 0;
err:
    sodium_memzero(buf, cap);
    close(fd);
    return -1;
}

/* The first line that is neither blank nor a comment must be a key line with `tag`. */
static int first_key_line(const char *buf, size_t len, const char *tag, uint8_t key[32],
                          const char **why)
{
    size_t i = 0;
    while (i < len) {
        size_t e = i;
        while (e < len && buf[e] != '\n')
            e++;
        size_t j = i;
        while (j < e && (is_blank(buf[j]) || buf[j] == '\r'))
            j++;
        if (j < e && buf[j] != '#')
            return fw_secure_parse_key_line(buf + i, e - i, tag, key, why);
        i = e + 1;
    }
    *why = "no key in file";
    return -1;
}

int fw_secure_load_identity(const char *path, fw_secure_identity *id, char *err, size_t errcap)
{
    if (!path || !id) {
        if (err && errcap)
            snprintf(err, errcap, "invalid argument");
        return -1;
    }
    char buf[FW_SECURE_LINE_MAX];
    size_t len = 0;
    uint8_t seed[FW_SECURE_SEED_LEN];
    const char *why = NULL;
    int rc = -1;
    if (fw_secure_read_key_file(path, 1, buf, sizeof buf, &len, err, errcap) != 0)
        return -1;
    if (first_key_line(buf, len, FW_SECURE_SECRET_TAG, seed, &why) != 0) {
        set_err(err, errcap, path, why);
        goto out;
    }
    if (fw_secure_identity_from_seed(id, seed) != FW_SEC_OK) {
        set_err(err, errcap, path, "libsodium failed to initialise");
        goto out;
    }
    rc = 0;
out:
    sodium_memzero(buf, sizeof buf);
    sodium_memzero(seed, sizeof seed);
    return rc;
}

int fw_secure_load_public(const char *path, uint8_t pk[FW_SECURE_PK_LEN], char *err,
                          size_t errcap)
{
    if (!path || !pk) {
        if (err && errcap)
            snprintf(err, errcap, "invalid argument");
        return -1;
    }
    char buf[FW_SECURE_LINE_MAX];
    size_t len = 0;
    const char *why = NULL;
    if (fw_secure_read_key_file(path, 0, buf, sizeof buf, &len, err, errcap) != 0)
        return -1;
    if (first_key_line(buf, len, FW_SECURE_PUB_TAG, pk, &why) != 0) {
        set_err(err, errcap, path, why);
        return -1;
    }
    return 0;
}

#else
/* ISO C forbids an empty translation unit. */
typedef int fw_secure_not_built;
#endif
