/*
 * fw_secure.h — facewire secure sessions: the mutual-authentication handshake (HELLO / AUTH)
 * and the sealing / opening of frames once a session is established. Shared by the server
 * (libuv, non-blocking) and libfacewire (blocking): every function is a pure transformation of
 * caller-owned buffers and a caller-owned session struct — no I/O, no callbacks, no allocation,
 * no global state of ours. docs/security.md is the prose version (threat model, message layouts,
 * why each piece is there).
 *
 * Built from libsodium primitives only: Ed25519 (crypto_sign) long-term identities, ephemeral
 * X25519 (crypto_kx) for forward secrecy, BLAKE2b (crypto_generichash) for the transcript hash
 * and key mixing, ChaCha20-Poly1305 IETF (crypto_aead_chacha20poly1305_ietf) for frames.
 *
 * The implementation (fw_secure.c) exists only when FW_WITH_SODIUM is defined (host builds).
 * This header has no libsodium dependency, so it can be included anywhere; on a build without
 * libsodium nothing declared here may be called (libfacewire answers FW_ERR_UNSUPPORTED).
 *
 * HANDSHAKE (C = client, S = server; the frames are ordinary facewire frames):
 *
 *   C: fw_secure_client_hello()            -> HELLO request body, sent plaintext (op 0x30)
 *   S: fw_secure_server_on_hello()         -> HELLO response body, sent plaintext, status OK
 *   C: fw_secure_client_on_hello_response()-> checks the pinned server key and its signature,
 *                                             returns the whole AUTH request frame (op 0x31,
 *                                             SEALED: it carries the client's identity)
 *   S: fw_secure_server_on_auth()          -> checks the client key is authorized and its
 *                                             signature; the session is established. The server
 *                                             answers AUTH with an empty OK body through
 *                                             fw_secure_seal(). On failure it answers a
 *                                             plaintext UNAUTHORIZED and closes.
 *   C: fw_secure_client_on_auth_response() -> opens that answer: established.
 *
 * After that every frame in both directions goes through fw_secure_seal() / fw_secure_open().
 * Frames must be sealed in the order they are written to the socket and opened in the order
 * they are read from it (the nonce is a per-direction counter): a server that produces
 * responses on worker threads seals them on the loop thread when it appends them to the
 * connection's output.
 *
 * ERRORS. Every function returns 0 (or a length) on success and a negative fw_sec_err on
 * failure; fw_secure_strerror() names it. Any failure of a handshake step or of
 * fw_secure_open() puts the session in the FAILED state (keys wiped, every later call fails
 * with FW_SEC_E_STATE): the caller closes the connection. The exceptions are caller bugs that
 * leave the session untouched: FW_SEC_E_INVALID (NULL argument) and, from fw_secure_seal(),
 * FW_SEC_E_SPACE. Nothing here reads past a length it was given, whatever the input.
 *
 * OWNERSHIP. The caller owns the session struct (fixed size, embed it in the connection), the
 * identity, the pinned key, the authorized-keys list and every buffer; none of them is
 * retained past the call except what is copied into the session. Call fw_secure_session_wipe()
 * when the connection goes away (it zeroes the keys). One session is used by one thread at a
 * time.
 */
#ifndef FW_SECURE_H
#define FW_SECURE_H

#include <stddef.h>
#include <stdint.h>

#include "fw_proto.h"

#ifdef __cplusplus
extern "C" {
#endif

#define FW_SECURE_VERSION 1
#define FW_SECURE_PK_LEN 32      /* Ed25519 public key (identity) */
#define FW_SECURE_SK_LEN 64      /* Ed25519 secret key as libsodium keeps it (seed || pk) */
#define FW_SECURE_SEED_LEN 32    /* what a .key file stores; the secret key derives from it */
#define FW_SECURE_KX_LEN 32      /* X25519 public key / session key */
#define FW_SECURE_NONCE_LEN 32   /* handshake random nonce */
#define FW_SECURE_SIG_LEN 64     /* Ed25519 signature */
#define FW_SECURE_TAG_LEN 16     /* Poly1305 tag added to every sealed body */
#define FW_SECURE_SYMKEY_LEN 32  /* a symmetric key file (gallery at rest) */

/* HELLO request body: u8 version, client ephemeral X25519 pk, client nonce. */
#define FW_SECURE_HELLO_LEN (1 + FW_SECURE_KX_LEN + FW_SECURE_NONCE_LEN)
/* HELLO response body: u8 version, server ephemeral pk, server nonce, server identity pk,
 * signature over the transcript. */
#define FW_SECURE_HELLO_RESP_LEN \
    (1 + FW_SECURE_KX_LEN + FW_SECURE_NONCE_LEN + FW_SECURE_PK_LEN + FW_SECURE_SIG_LEN)
/* AUTH request plaintext: client identity pk, signature; sealed it gains the tag. */
#define FW_SECURE_AUTH_PLAIN_LEN (FW_SECURE_PK_LEN + FW_SECURE_SIG_LEN)
#define FW_SECURE_AUTH_BODY_LEN (FW_SECURE_AUTH_PLAIN_LEN + FW_SECURE_TAG_LEN)
#define FW_SECURE_AUTH_FRAME_LEN (FW_HEADER_LEN + FW_SECURE_AUTH_BODY_LEN)

/* Text forms of keys (key files, authorized_keys lines). */
#define FW_SECURE_PUB_TAG "facewire-ed25519"
#define FW_SECURE_SECRET_TAG "facewire-ed25519-secret"
#define FW_SECURE_SYMKEY_TAG "facewire-symmetric-key"
#define FW_SECURE_B64_LEN 44     /* base64 (with padding) of 32 bytes */
#define FW_SECURE_LINE_MAX 4096  /* longest key-file line accepted */

typedef enum fw_sec_err {
    FW_SEC_OK = 0,
    FW_SEC_E_STATE = -1,       /* call out of order, or the session already failed */
    FW_SEC_E_MALFORMED = -2,   /* handshake message of the wrong size or opcode / flags */
    FW_SEC_E_VERSION = -3,     /* peer speaks another handshake version */
    FW_SEC_E_SERVER_KEY = -4,  /* the server's identity is not the pinned key */
    FW_SEC_E_SIGNATURE = -5,   /* a handshake signature does not verify */
    FW_SEC_E_UNKNOWN_KEY = -6, /* the client's identity is not in the authorized list */
    FW_SEC_E_OPEN = -7,        /* a sealed frame failed authentication: tampered, replayed,
                                  reordered, truncated, or sealed with another key */
    FW_SEC_E_NOT_SEALED = -8,  /* a frame that must be sealed is not (or its body_len lies) */
    FW_SEC_E_COUNTER = -9,     /* 2^64-1 frames in one direction: reconnect */
    FW_SEC_E_SPACE = -10,      /* output buffer too small / body too long for a frame */
    FW_SEC_E_CRYPTO = -11,     /* libsodium refused (sodium_init, a low-order peer key) */
    FW_SEC_E_REJECTED = -12,   /* the server answered AUTH with an error status */
    FW_SEC_E_INVALID = -13     /* bad argument (NULL) */
} fw_sec_err;

typedef enum fw_sec_state {
    FW_SEC_NONE = 0,        /* initialised, nothing sent or received */
    FW_SEC_HELLO_SENT,      /* client: waiting for the HELLO response */
    FW_SEC_AWAIT_AUTH,      /* server: HELLO answered, waiting for AUTH */
    FW_SEC_AUTH_SENT,       /* client: AUTH sent, waiting for its answer */
    FW_SEC_ESTABLISHED,     /* seal / open allowed */
    FW_SEC_FAILED           /* terminal: close the connection */
} fw_sec_state;

/* A long-term identity (this side's). Loaded from a .key file or generated. */
typedef struct fw_secure_identity {
    uint8_t pk[FW_SECURE_PK_LEN];
    uint8_t sk[FW_SECURE_SK_LEN];
} fw_secure_identity;

/* The public keys a server accepts: `pk` is an array of n keys sorted ascending by memcmp
 * without duplicates (fw_keys_load_authorized() in the server builds it that way; lookups
 * are a binary search, so an unsorted list fails closed). Owned by whoever built it. */
typedef struct fw_authorized_keys {
    uint8_t (*pk)[FW_SECURE_PK_LEN];
    size_t n;
} fw_authorized_keys;

/* One side of one connection. Plain data of fixed size: embed it, no allocation. The fields
 * are public only so the struct can be embedded; use the functions. */
typedef struct fw_secure_session {
    uint8_t state;      /* fw_sec_state */
    uint8_t is_server;
    uint8_t eph_pk[FW_SECURE_KX_LEN];   /* ephemeral X25519, wiped once the keys are derived */
    uint8_t eph_sk[FW_SECURE_KX_LEN];
    uint8_t nonce[FW_SECURE_NONCE_LEN]; /* client: its HELLO nonce, needed for the transcript */
    uint8_t th[32];                     /* transcript hash (BLAKE2b-256) */
    uint8_t peer_pk[FW_SECURE_PK_LEN];  /* the peer's authenticated identity */
    uint8_t k_tx[FW_SECURE_KX_LEN];     /* this side's sending key */
    uint8_t k_rx[FW_SECURE_KX_LEN];     /* this side's receiving key */
    uint64_t n_tx;                      /* next nonce counter to seal with */
    uint64_t n_rx;                      /* next nonce counter expected */
} fw_secure_session;

const char *fw_secure_strerror(int rc); /* "server key mismatch", ...; static strings */

/* Zero the session and set its role. Calls sodium_init() (idempotent): FW_SEC_E_CRYPTO if
 * libsodium cannot start. */
int fw_secure_session_init(fw_secure_session *s, int is_server);
/* Zero every secret (sodium_memzero). The struct may be reused after session_init. */
void fw_secure_session_wipe(fw_secure_session *s);
fw_sec_state fw_secure_state(const fw_secure_session *s);
/* The peer's identity once established (the server uses it to revoke sessions on reload). */
const uint8_t *fw_secure_peer_key(const fw_secure_session *s);

/* ---- handshake ---------------------------------------------------------------------------- */

/* Client, state NONE -> HELLO_SENT. Writes the HELLO request body. */
int fw_secure_client_hello(fw_secure_session *s, uint8_t out[FW_SECURE_HELLO_LEN]);

/* Server, state NONE -> AWAIT_AUTH. `body` is the HELLO request body; writes the HELLO
 * response body (to send with status OK). `me` is the server's identity. */
int fw_secure_server_on_hello(fw_secure_session *s, const fw_secure_identity *me,
                              const uint8_t *body, size_t len,
                              uint8_t out[FW_SECURE_HELLO_RESP_LEN]);

/* Client, state HELLO_SENT -> AUTH_SENT. `body` is the HELLO response body (status OK);
 * `server_pk` the pinned server identity, `me` the client's identity. On success writes the
 * complete AUTH request frame (FW_SECURE_AUTH_FRAME_LEN bytes) into out; `hdr` supplies
 * request_id, priority and deadline_ms (opcode, flags, status and body_len are set here). */
int fw_secure_client_on_hello_response(fw_secure_session *s, const fw_secure_identity *me,
                                       const uint8_t server_pk[FW_SECURE_PK_LEN],
                                       const uint8_t *body, size_t len, const fw_header *hdr,
                                       uint8_t out[FW_SECURE_AUTH_FRAME_LEN]);

/* Server, state AWAIT_AUTH -> ESTABLISHED. `hdr` is the AUTH frame's 20 header bytes as
 * received, `body` its body. FW_SEC_E_UNKNOWN_KEY if the client's key is not in `keys`. On
 * success answer with fw_secure_seal() of an AUTH response with an empty body. */
int fw_secure_server_on_auth(fw_secure_session *s, const fw_authorized_keys *keys,
                             const uint8_t hdr[FW_HEADER_LEN], const uint8_t *body, size_t len);

/* Client, state AUTH_SENT -> ESTABLISHED. The server's answer to AUTH: a sealed OK opens and
 * establishes; a plaintext error status gives FW_SEC_E_REJECTED (the body holds the server's
 * message, see protocol.md's error bodies). */
int fw_secure_client_on_auth_response(fw_secure_session *s, const uint8_t hdr[FW_HEADER_LEN],
                                      const uint8_t *body, size_t len);

/* ---- frames ------------------------------------------------------------------------------- */

/* Seal one frame, state ESTABLISHED. Sets SEALED in h->flags and h->body_len = len + TAG,
 * writes the 20 header bytes and the ciphertext to out (cap >= 20 + len + TAG) and the
 * frame's length to *frame_len. `body` may be out + FW_HEADER_LEN (sealing in place) but must
 * not overlap out otherwise. FW_SEC_E_SPACE (cap too small, len > UINT32_MAX - TAG) leaves
 * the session as it was; FW_SEC_E_COUNTER is terminal. */
int fw_secure_seal(fw_secure_session *s, fw_header *h, const uint8_t *body, size_t len,
                   uint8_t *out, size_t cap, size_t *frame_len);

/* Open one received frame, state ESTABLISHED. `hdr` are the 20 header bytes as received (the
 * associated data), `body` its body_len bytes. Writes the plaintext (len - TAG bytes) to out
 * (cap >= len - TAG); out may equal body (opening in place). Any failure is terminal. */
int fw_secure_open(fw_secure_session *s, const uint8_t hdr[FW_HEADER_LEN], const uint8_t *body,
                   size_t len, uint8_t *out, size_t cap, size_t *out_len);

/* Does the sorted list hold pk? */
int fw_authorized_keys_contains(const fw_authorized_keys *keys,
                                const uint8_t pk[FW_SECURE_PK_LEN]);

/* ---- key text and files ------------------------------------------------------------------- */

/* A fresh identity from the system CSPRNG; `seed` (may be NULL) receives what a .key stores. */
int fw_secure_identity_generate(fw_secure_identity *id, uint8_t seed[FW_SECURE_SEED_LEN]);
int fw_secure_identity_from_seed(fw_secure_identity *id, const uint8_t seed[FW_SECURE_SEED_LEN]);

/* Parse "<tag> <base64 of 32 bytes>[ <whitespace> anything]" (leading whitespace allowed,
 * the line need not be NUL-terminated; a trailing "\n" / "\r\n" is ignored). Returns 0, or -1
 * with a static reason in *why ("unknown key type", "bad base64", ...). */
int fw_secure_parse_key_line(const char *line, size_t len, const char *tag,
                             uint8_t key[32], const char **why);

/* "<tag> <base64>[ comment]\n" into out (NUL-terminated). Returns the length, or -1 if cap is
 * too small or the comment holds a newline. */
int fw_secure_format_key_line(const char *tag, const uint8_t key[32], const char *comment,
                              char *out, size_t cap);

/* Read a key file into buf (at most cap - 1 bytes, NUL-terminated). With `secret`, the file
 * must be a regular file that neither group nor others may read (or write): otherwise -1 and
 * err says so and how to fix it. err may be NULL. */
int fw_secure_read_key_file(const char *path, int secret, char *buf, size_t cap, size_t *len,
                            char *err, size_t errcap);

/* PREFIX.key -> identity (permissions checked as above). 0, or -1 with err filled. */
int fw_secure_load_identity(const char *path, fw_secure_identity *id, char *err, size_t errcap);
/* PREFIX.pub (its first non-comment line) -> public key. 0, or -1 with err filled. */
int fw_secure_load_public(const char *path, uint8_t pk[FW_SECURE_PK_LEN], char *err,
                          size_t errcap);

#ifdef __cplusplus
}
#endif

#endif
