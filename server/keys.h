/*
 * keys.h — the server's key files and security policy: `facewired keygen PREFIX`, the
 * authorized-keys list (--authorized-keys, reloaded on SIGHUP), the symmetric key of the
 * gallery at rest (--gallery-key), and fw_security: what the connection layer asks about each
 * request (pass, open, handshake, refuse, close), so that adopting secure sessions there is a
 * few calls. The formats are in docs/security.md; the one-line codecs and the
 * permission-checked reader live in client/fw_secure.c because devices load their own keys
 * with libfacewire too.
 *
 *   PREFIX.key   "facewire-ed25519-secret <base64 seed>\n"      mode 0600
 *   PREFIX.pub   "facewire-ed25519 <base64 pk> <comment>\n"     `cat dev.pub >> authorized_keys`
 *   gallery key  "facewire-symmetric-key <base64 32 bytes>\n"   mode 0600
 *
 * Every function reports failure as -1 with a complete, path-prefixed message in err (err may
 * be NULL). Secret files readable or writable by group or others are refused when loaded, as
 * ssh does: a key another account could have read must be treated as stolen.
 */
#ifndef FW_KEYS_H
#define FW_KEYS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "client/fw_secure.h"

/* Largest authorized-keys file read (about 200 000 keys); beyond it loading fails. */
#define FW_KEYS_AUTH_MAX_BYTES (16u * 1024u * 1024u)

/* Write PREFIX.key (mode 0600) and PREFIX.pub for a fresh identity. Existing files are never
 * overwritten (O_EXCL): that would destroy a key in use. comment NULL -> the prefix's last
 * path component. If id is not NULL it receives the identity. On failure nothing is left
 * behind. */
int fw_keys_keygen(const char *prefix, const char *comment, fw_secure_identity *id, char *err,
                   size_t errcap);

/* Parse an authorized-keys text: one "facewire-ed25519 <base64> [comment]" per line, blank
 * lines and lines starting with '#' (after blanks) skipped. Lines that are not a valid key
 * are counted in *n_bad and the first is described in err ("LABEL:LINE: reason"); the valid
 * keys are still returned, so the caller chooses the policy (facewired refuses to start on a
 * bad line, and on SIGHUP applies the valid keys so a typo never undoes a revocation).
 * out->pk is sorted and deduplicated as fw_authorized_keys_contains() needs; the caller owns
 * it (fw_keys_free_authorized). Returns 0, or -1 on allocation failure (out left empty). */
int fw_keys_parse_authorized(const char *text, size_t len, const char *label,
                             fw_authorized_keys *out, size_t *n_bad, char *err, size_t errcap);

/* Read PATH (at most FW_KEYS_AUTH_MAX_BYTES) and parse it as above. -1 if the file cannot be
 * read (out left empty); bad lines are reported as by fw_keys_parse_authorized. */
int fw_keys_load_authorized(const char *path, fw_authorized_keys *out, size_t *n_bad, char *err,
                            size_t errcap);

/* Free what the two above allocated; out is left empty. NULL is fine. */
void fw_keys_free_authorized(fw_authorized_keys *keys);

/* Load a 32-byte symmetric key file (permissions checked like a secret key). */
int fw_keys_load_symmetric(const char *path, uint8_t key[FW_SECURE_SYMKEY_LEN], char *err,
                           size_t errcap);

/* Write a fresh random symmetric key file (mode 0600, never overwriting). */
int fw_keys_write_symmetric(const char *path, char *err, size_t errcap);

/* ---- records at rest (the gallery's --gallery-key; docs/security.md "Gallery at rest") ---- */

/* One encrypted record: a random 24-byte nonce, the XChaCha20-Poly1305 ciphertext, the
 * 16-byte tag. A random nonce per record cannot repeat, whatever a crash makes the writer
 * redo; `ad` (not stored) binds the record to its place: the file's id, its sequence number. */
#define FW_REC_NONCE_LEN 24
#define FW_REC_OVERHEAD (FW_REC_NONCE_LEN + FW_SECURE_TAG_LEN)
#define FW_REC_KCV_LEN 16

/* Encrypt len bytes of `in` into out (cap >= len + FW_REC_OVERHEAD); *out_len gets the size.
 * in and out must not overlap. 0, or -1 (cap too small). */
int fw_keys_record_seal(const uint8_t key[FW_SECURE_SYMKEY_LEN], const uint8_t *ad, size_t adlen,
                        const uint8_t *in, size_t len, uint8_t *out, size_t cap, size_t *out_len);
/* Decrypt what fw_keys_record_seal wrote (same key and ad) into out (cap >= len -
 * FW_REC_OVERHEAD). -1 if it is too short, was changed, or the key or ad differ; out is
 * then zeroed. */
int fw_keys_record_open(const uint8_t key[FW_SECURE_SYMKEY_LEN], const uint8_t *ad, size_t adlen,
                        const uint8_t *in, size_t len, uint8_t *out, size_t cap, size_t *out_len);
/* Key check value for a file header: BLAKE2b-128(key, "facewire gallery key check" ||
 * file_id). A mismatch at open is "wrong --gallery-key", told apart from corruption. */
void fw_keys_key_check(const uint8_t key[FW_SECURE_SYMKEY_LEN], const uint8_t *file_id,
                       size_t id_len, uint8_t kcv[FW_REC_KCV_LEN]);

/* ---- policy for the connection layer ------------------------------------------------------ */

/* One reload of the authorized-keys file, in three steps so that the read and the parse (up to
 * FW_KEYS_AUTH_MAX_BYTES, possibly on a slow or hung filesystem) run off the loop thread:
 *
 *   fw_security_reload_begin()   loop thread: take a copy of the path; marks a reload in flight
 *   fw_keys_reload_run()         any thread (the libuv pool): open, read, parse into r->keys;
 *                                touches r only, never the fw_security
 *   fw_security_reload_finish()  loop thread: swap r->keys in and free the old list there, or
 *   fw_security_reload_abandon() loop thread: drop the result (the server is stopping)
 *
 * The caller provides the storage (it embeds r next to its uv_work_t) and must keep it alive
 * from begin to finish/abandon. Between begin and run the loop thread owns r; during run the
 * worker does; after run (libuv's after-work callback) the loop thread again. Everything in r
 * is owned by r until finish moves keys into the fw_security. */
typedef struct fw_keys_reload {
    char *path;              /* owned copy of authorized_path: argv is not the worker's business */
    fw_authorized_keys keys; /* the new list, built entirely by fw_keys_reload_run */
    size_t n_bad;            /* bad lines skipped; err describes the first */
    int rc;                  /* of fw_keys_load_authorized; -1 until run */
    char err[512];
} fw_keys_reload;

/* The server's security state. Owned by the server and used on the loop thread only (a
 * reload's worker sees its fw_keys_reload, never this). `keys` is replaced by
 * fw_security_reload_finish() / fw_security_reload(), so nothing may keep a pointer into it
 * across a reload; the old list is freed there, on the loop thread, after the swap. */
typedef struct fw_security {
    int enabled;                   /* a server key is loaded: HELLO / AUTH are served */
    int require_secure;            /* --require-secure */
    fw_secure_identity id;         /* the server's identity */
    fw_authorized_keys keys;       /* owned; sorted */
    const char *authorized_path;   /* not owned (argv); NULL = nobody is authorized */
    /* SIGHUP reloads. At most one is in flight: a SIGHUP during it only sets reload_again, and
     * one more reload runs after it, so the file as it was after the last SIGHUP wins. */
    fw_keys_reload *reload;        /* the reload between begin and finish/abandon, or NULL;
                                      not owned (the caller's storage) */
    int reload_again;              /* a SIGHUP arrived while `reload` was in flight */
} fw_security;

/* Load the server key (NULL: secure sessions off) and the authorized keys. A bad line in the
 * authorized-keys file is a start-up error here ("path:line: reason"). require_secure without
 * a server key is refused too. 0, or -1 with err. */
int fw_security_open(fw_security *sec, const char *server_key, const char *authorized_path,
                     int require_secure, char *err, size_t errcap);

/* SIGHUP, synchronously (begin + run + finish on the calling thread; the server uses the
 * steps below instead): re-read the authorized-keys file. Bad lines are skipped (*n_bad, err
 * describes the first): a typo must never keep a revoked key alive. If the file cannot be
 * read at all the old list stays and -1 is returned with err. -1 also while an asynchronous
 * reload is in flight (reload_again is then set, as for a SIGHUP). */
int fw_security_reload(fw_security *sec, size_t *n_bad, char *err, size_t errcap);

/* Start a reload into r (storage owned by the caller, contents reset here). 0: r is ready for
 * fw_keys_reload_run and sec->reload == r. 1: a reload is already in flight; reload_again is
 * set and r is untouched (do not run it). -1 with err: nothing to reload (no
 * --authorized-keys) or out of memory; r holds nothing to free. */
int fw_security_reload_begin(fw_security *sec, fw_keys_reload *r, char *err, size_t errcap);

/* Read and parse r->path into r->keys / r->n_bad / r->err, setting r->rc. Thread-safe: it
 * touches nothing but r (and the file). */
void fw_keys_reload_run(fw_keys_reload *r);

/* End the reload r (== sec->reload): if it read the file, its keys replace the old list,
 * which is freed here, and 0 is returned (*n_bad and err as fw_security_reload says);
 * otherwise the old list stays and -1 is returned with err. r is left holding nothing.
 * *again (may be NULL) gets whether a SIGHUP came meanwhile: the caller starts one more
 * reload then. */
int fw_security_reload_finish(fw_security *sec, fw_keys_reload *r, size_t *n_bad, char *err,
                              size_t errcap, int *again);

/* End the reload r (== sec->reload) without applying it, and forget a pending reload_again:
 * for a server that is stopping. r is left holding nothing. */
void fw_security_reload_abandon(fw_security *sec, fw_keys_reload *r);

/* After a reload: must this established session be closed (its key is no longer listed)? */
int fw_security_revoked(const fw_security *sec, const fw_secure_session *s);

void fw_security_close(fw_security *sec); /* wipes the identity, frees the list */

/* 127.0.0.0/8, ::1 and ::ffff:127.0.0.0/104. Plaintext is only allowed on these unless
 * --insecure-plaintext. */
int fw_security_addr_is_loopback(const struct sockaddr *sa);

/* What the connection layer does with a complete request frame (header checked, body read). */
typedef enum fw_sec_verdict {
    FW_SECV_PASS = 0,     /* dispatch the frame as it is (plaintext allowed here) */
    FW_SECV_OPENED,       /* it was sealed and is now open: dispatch (*h, *plain); free(*plain) */
    FW_SECV_HANDSHAKE,    /* HELLO or AUTH: call fw_security_handshake() */
    FW_SECV_UNAUTHORIZED, /* answer UNAUTHORIZED with *why; the connection goes on */
    FW_SECV_CLOSE         /* close now without an answer; *why is for the log */
} fw_sec_verdict;

/* Decide about one request. For a sealed frame in an established session the body is opened
 * into *plain (malloc'd, at least one byte, owned by the caller) and *h rewritten to describe
 * the plaintext (SEALED cleared, body_len = plaintext length): from there on the request is
 * handled exactly like a plaintext one, and its response is sealed by the reply path. */
fw_sec_verdict fw_security_check(const fw_security *sec, fw_secure_session *s, fw_header *h,
                                 const uint8_t *body, uint8_t **plain, const char **why);

/* The answer to a HELLO or AUTH request. */
typedef struct fw_sec_answer {
    uint16_t status;        /* OK, or the error status to answer with */
    const char *msg;        /* error message (static) when status != OK */
    uint8_t body[FW_SECURE_HELLO_RESP_LEN];
    size_t body_len;        /* OK body: the HELLO response, or 0 for AUTH */
    int close_after;        /* close once this answer is flushed */
} fw_sec_answer;

/* Run the handshake step for request (h, body) and say what to answer. A successful AUTH
 * establishes the session: its empty OK answer must go through the sealing reply path like
 * every later response. A failure leaves the session FAILED: answer in plaintext, then close. */
void fw_security_handshake(const fw_security *sec, fw_secure_session *s, const fw_header *h,
                           const uint8_t *body, fw_sec_answer *ans);

/* Bytes a response grows by when sealed in this session (0 or the tag length). */
size_t fw_security_overhead(const fw_secure_session *s);

#endif
