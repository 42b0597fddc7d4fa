/*
 * keys.c — key files of the server (see keys.h): generation, authorized-keys parsing, the
 * gallery's symmetric key. The server always builds with libsodium, so there is no
 * FW_WITH_SODIUM switch here.
 */
#include "server/keys.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>

static void set_err(char *err, size_t errcap, const char *fmt_path, const char *msg)
{
    if (err && errcap)
        snprintf(err, errcap, "%s: %s", fmt_path, msg);
}

/* Create path (must not exist) with `mode` and write data; on any failure the file is
 * removed again. fchmod makes a secret file 0600 whatever the umask was. */
static int write_new_file(const char *path, mode_t mode, int exact_mode, const char *data,
                          size_t len, char *err, size_t errcap)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode);
    if (fd < 0) {
        set_err(err, errcap, path, errno == EEXIST ? "exists; refusing to overwrite a key"
                                                   : strerror(errno));
        return -1;
    }
    if (exact_mode && fchmod(fd, mode) != 0)
        goto err;
    size_t off = 0;
    while (off < len) {
        ssize_t w = write(fd, data + off, len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            goto err;
        off += (size_t)w;
    }
    if (fsync(fd) != 0)
        goto err;
    if (close(fd) != 0) {
        fd = -1;
        goto err;
    }
    return 0;
err:
    set_err(err, errcap, path, strerror(errno ? errno : EIO));
    if (fd >= 0)
        close(fd);
    unlink(path);
    return -1;
}

int fw_keys_keygen(const char *prefix, const char *comment, fw_secure_identity *id, char *err,
                   size_t errcap)
{
    if (!prefix || !*prefix) {
        if (err && errcap)
            snprintf(err, errcap, "keygen: empty prefix");
        return -1;
    }
    char key_path[PATH_MAX], pub_path[PATH_MAX];
    char key_line[128], pub_line[FW_SECURE_LINE_MAX];
    uint8_t seed[FW_SECURE_SEED_LEN];
    fw_secure_identity me;
    int rc = -1;

    if ((size_t)snprintf(key_path, sizeof key_path, "%s.key", prefix) >= sizeof key_path ||
        (size_t)snprintf(pub_path, sizeof pub_path, "%s.pub", prefix) >= sizeof pub_path) {
        set_err(err, errcap, prefix, "path too long");
        return -1;
    }
    if (!comment) {
        const char *slash = strrchr(prefix, '/');
        comment = slash ? slash + 1 : prefix;
    }
    if (fw_secure_identity_generate(&me, seed) != FW_SEC_OK) {
        set_err(err, errcap, prefix, "libsodium failed to initialise");
        goto out;
    }
    int kl = fw_secure_format_key_line(FW_SECURE_SECRET_TAG, seed, NULL, key_line,
                                       sizeof key_line);
    int pl = fw_secure_format_key_line(FW_SECURE_PUB_TAG, me.pk, comment, pub_line,
                                       sizeof pub_line);
    if (kl < 0 || pl < 0) {
        set_err(err, errcap, prefix, "comment too long or holds a newline");
        goto out;
    }
    if (write_new_file(key_path, 0600, 1, key_line, (size_t)kl, err, errcap) != 0)
        goto out;
    if (write_new_file(pub_path, 0644, 0, pub_line, (size_t)pl, err, errcap) != 0) {
        unlink(key_path);
        goto out;
    }
    if (id)
        *id = me;
    rc = 0;
out:
    sodium_memzero(seed, sizeof seed);
    sodium_memzero(&me, sizeof me);
    sodium_memzero(key_line, sizeof key_line);
    return rc;
}

static int cmp_key(const void *a, const void *b)
{
    return memcmp(a, b, FW_SECURE_PK_LEN);
}

int fw_keys_parse_authorized(const char *text, size_t len, const char *label,
                             fw_authorized_keys *out, size_t *n_bad, char *err, size_t errcap)
{
    size_t bad = 0, n = 0, cap = 0, lineno = 0;
    uint8_t (*pk)[FW_SECURE_PK_LEN] = NULL;
    if (!label)
        label = "authorized keys";
    if (out) {
        out->pk = NULL;
        out->n = 0;
    }
    if (n_bad)
        *n_bad = 0;
    if (err && errcap)
        err[0] = '\0';
    if (!out || (!text && len)) {
        if (err && errcap)
            snprintf(err, errcap, "%s: invalid argument", label);
        return -1;
    }

    size_t i = 0;
    while (i < len) {
        size_t e = i;
        while (e < len && text[e] != '\n')
            e++;
        lineno++;
        size_t j = i;
        while (j < e && (text[j] == ' ' || text[j] == '\t' || text[j] == '\r'))
            j++;
        if (j < e && text[j] != '#') {
            uint8_t key[FW_SECURE_PK_LEN];
            const char *why = NULL;
            if (e - i > FW_SECURE_LINE_MAX)
                why = "line too long";
            else if (fw_secure_parse_key_line(text + i, e - i, FW_SECURE_PUB_TAG, key, &why) == 0)
                why = NULL;
            if (why) {
                if (bad++ == 0 && err && errcap)
                    snprintf(err, errcap, "%s:%zu: %s", label, lineno, why);
            } else {
                if (n == cap) {
                    size_t ncap = cap ? cap * 2 : 16;
                    void *p = realloc(pk, ncap * sizeof *pk);
                    if (!p) {
                        if (err && errcap)
                            snprintf(err, errcap, "%s: out of memory", label);
                        free(pk);
                        return -1;
                    }
                    pk = p;
                    cap = ncap;
                }
                memcpy(pk[n++], key, FW_SECURE_PK_LEN);
            }
        }
        i = e + 1;
    }
    if (n > 1) {
        qsort(pk, n, sizeof *pk, cmp_key);
        size_t w = 1;
        for (size_t r = 1; r < n; r++)
            if (memcmp(pk[r], pk[w - 1], FW_SECURE_PK_LEN) != 0)
                memmove(pk[w++], pk[r], FW_SECURE_PK_LEN);
        n = w;
    }
    out->pk = pk;
    out->n = n;
    if (n_bad)
        *n_bad = bad;
    return 0;
}

/* Whole file into a malloc'ed buffer (NUL-terminated), refusing more than max bytes. */
static int read_all(const char *path, size_t max, char **buf, size_t *len, char *err,
                    size_t errcap)
{
    char *p = NULL;
    size_t have = 0, cap = 0;
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
    for (;;) {
        if (have == cap) {
            /* Grow up to max + 1 bytes: one byte past max is how "too large" shows (below),
             * so a full buffer here is always under the limit. */
            size_t ncap = cap ? cap * 2 : 4096;
            if (ncap > max + 1)
                ncap = max + 1;
            char *np = realloc(p, ncap + 1);
            if (!np) {
                set_err(err, errcap, path, "out of memory");
                goto err;
            }
            p = np;
            cap = ncap;
        }
        ssize_t r = read(fd, p + have, cap - have);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            set_err(err, errcap, path, strerror(errno));
            goto err;
        }
        if (r == 0)
            break;
        have += (size_t)r;
        if (have > max) {
            set_err(err, errcap, path, "file too large");
            goto err;
        }
    }
    if (!p && !(p = malloc(1))) {
        set_err(err, errcap, path, "out of memory");
        goto err;
    }
    p[have] = '\0';
    close(fd);
    *buf = p;
    *len = have;
    return 0;
err:
    free(p);
    close(fd);
    return -1;
}

int fw_keys_load_authorized(const char *path, fw_authorized_keys *out, size_t *n_bad, char *err,
                            size_t errcap)
{
    if (out) {
        out->pk = NULL;
        out->n = 0;
    }
    if (n_bad)
        *n_bad = 0;
    if (!path || !out) {
        if (err && errcap)
            snprintf(err, errcap, "invalid argument");
        return -1;
    }
    char *text = NULL;
    size_t len = 0;
    if (read_all(path, FW_KEYS_AUTH_MAX_BYTES, &text, &len, err, errcap) != 0)
        return -1;
    int rc = fw_keys_parse_authorized(text, len, path, out, n_bad, err, errcap);
    free(text);
    return rc;
}

void fw_keys_free_authorized(fw_authorized_keys *keys)
{
    if (!keys)
        return;
    free(keys->pk);
    keys->pk = NULL;
    keys->n = 0;
}

int fw_keys_load_symmetric(const char *path, uint8_t key[FW_SECURE_SYMKEY_LEN], char *err,
                           size_t errcap)
{
    if (!path || !key) {
        if (err && errcap)
            snprintf(err, errcap, "invalid argument");
        return -1;
    }
    char buf[FW_SECURE_LINE_MAX];
    size_t len = 0;
    const char *why = NULL;
    int rc = -1;
    if (fw_secure_read_key_file(path, 1, buf, sizeof buf, &len, err, errcap) != 0)
        return -1;
    /* One line, like the secret key file; comments are not expected but harmless. */
    size_t i = 0;
    while (i < len) {
        size_t e = i;
        while (e < len && buf[e] != '\n')
            e++;
        size_t j = i;
        while (j < e && (buf[j] == ' ' || buf[j] == '\t' || buf[j] == '\r'))
            j++;
        if (j < e && buf[j] != '#') {
            if (fw_secure_parse_key_line(buf + i, e - i, FW_SECURE_SYMKEY_TAG, key, &why) == 0)
                rc = 0;
            break;
        }
        i = e + 1;
    }
    if (rc != 0)
        set_err(err, errcap, path, why ? why : "no key in file");
    sodium_memzero(buf, sizeof buf);
    return rc;
}

int fw_keys_write_symmetric(const char *path, char *err, size_t errcap)
{
    if (!path) {
        if (err && errcap)
            snprintf(err, errcap, "invalid argument");
        return -1;
    }
    if (sodium_init() < 0) {
        set_err(err, errcap, path, "libsodium failed to initialise");
        return -1;
    }
    uint8_t key[FW_SECURE_SYMKEY_LEN];
    char line[128];
    randombytes_buf(key, sizeof key);
    int n = fw_secure_format_key_line(FW_SECURE_SYMKEY_TAG, key, NULL, line, sizeof line);
    int rc = n < 0 ? -1 : write_new_file(path, 0600, 1, line, (size_t)n, err, errcap);
    if (n < 0)
        set_err(err, errcap, path, "cannot format key");
    sodium_memzero(key, sizeof key);
    sodium_memzero(line, sizeof line);
    return rc;
}

/* ---- records at rest ----------------------------------------------------------------------- */

_Static_assert(crypto_aead_xchacha20poly1305_ietf_NPUBBYTES == FW_REC_NONCE_LEN, "nonce size");
_Static_assert(crypto_aead_xchacha20poly1305_ietf_ABYTES == FW_SECURE_TAG_LEN, "tag size");
_Static_assert(crypto_aead_xchacha20poly1305_ietf_KEYBYTES == FW_SECURE_SYMKEY_LEN, "key size");

int fw_keys_record_seal(const uint8_t key[FW_SECURE_SYMKEY_LEN], const uint8_t *ad, size_t adlen,
                        const uint8_t *in, size_t len, uint8_t *out, size_t cap, size_t *out_len)
{
    if (!key || !out || !out_len || (!in && len) || (!ad && adlen) ||
        len > SIZE_MAX - FW_REC_OVERHEAD || cap < len + FW_REC_OVERHEAD)
        return -1;
    if (sodium_init() < 0)
        return -1;
    randombytes_buf(out, FW_REC_NONCE_LEN);
    unsigned long long clen = 0;
    crypto_aead_xchacha20poly1305_ietf_encrypt(out + FW_REC_NONCE_LEN, &clen, in, len, ad, adlen,
                                               NULL, out, key);
    *out_len = FW_REC_NONCE_LEN + (size_t)clen;
    return 0;
}

int fw_keys_record_open(const uint8_t key[FW_SECURE_SYMKEY_LEN], const uint8_t *ad, size_t adlen,
                        const uint8_t *in, size_t len, uint8_t *out, size_t cap, size_t *out_len)
{
    if (!key || !in || !out_len || (!ad && adlen) || len < FW_REC_OVERHEAD ||
        cap < len - FW_REC_OVERHEAD || (!out && cap))
        return -1;
    if (sodium_init() < 0)
        return -1;
    unsigned long long mlen = 0;
    if (crypto_aead_xchacha20poly1305_ietf_decrypt(out, &mlen, NULL, in + FW_REC_NONCE_LEN,
                                                   len - FW_REC_NONCE_LEN, ad, adlen, in,
                                                   key) != 0) {
        if (cap)
            sodium_memzero(out, len - FW_REC_OVERHEAD);
        return -1;
    }
    *out_len = (size_t)mlen;
    return 0;
}

void fw_keys_key_check(const uint8_t key[FW_SECURE_SYMKEY_LEN], const uint8_t *file_id,
                       size_t id_len, uint8_t kcv[FW_REC_KCV_LEN])
{
    static const char label[] = "facewire gallery key check";
    crypto_generichash_state st;
    crypto_generichash_init(&st, key, FW_SECURE_SYMKEY_LEN, FW_REC_KCV_LEN);
    crypto_generichash_update(&st, (const uint8_t *)label, sizeof label - 1);
    crypto_generichash_update(&st, file_id, id_len);
    crypto_generichash_final(&st, kcv, FW_REC_KCV_LEN);
    sodium_memzero(&st, sizeof st);
}

/* ---- policy for the connection layer ------------------------------------------------------ */

int fw_security_open(fw_security *sec, const char *server_key, const char *authorized_path,
                     int require_secure, char *err, size_t errcap)
{
    if (!sec) {
        if (err && errcap)
            snprintf(err, errcap, "invalid argument");
        return -1;
    }
    memset(sec, 0, sizeof *sec);
    sec->require_secure = require_secure ? 1 : 0;
    sec->authorized_path = authorized_path;
    if (!server_key) {
        if (authorized_path || require_secure) {
            if (err && errcap)
                snprintf(err, errcap, "%s needs --server-key",
                         authorized_path ? "--authorized-keys" : "--require-secure");
            return -1;
        }
        return 0;
    }
    if (!authorized_path) {
        if (err && errcap)
            snprintf(err, errcap, "--server-key needs --authorized-keys (the devices allowed in)");
        return -1;
    }
    if (fw_secure_load_identity(server_key, &sec->id, err, errcap) != 0)
        goto err;
    size_t n_bad = 0;
    if (fw_keys_load_authorized(authorized_path, &sec->keys, &n_bad, err, errcap) != 0)
        goto err;
    if (n_bad > 0) /* err holds "path:line: reason" of the first */
        goto err;
    sec->enabled = 1;
    return 0;
err:
    fw_security_close(sec);
    return -1;
}

/* Nothing allocated, nothing parsed yet: what begin resets r to, and abandon/finish leave. */
static void reload_reset(fw_keys_reload *r)
{
    r->path = NULL;
    r->keys.pk = NULL;
    r->keys.n = 0;
    r->n_bad = 0;
    r->rc = -1;
    r->err[0] = '\0';
}

int fw_security_reload_begin(fw_security *sec, fw_keys_reload *r, char *err, size_t errcap)
{
    if (!sec || !r || !sec->enabled || !sec->authorized_path) {
        if (err && errcap)
            snprintf(err, errcap, "no --authorized-keys to reload");
        return -1;
    }
    if (sec->reload) {
        sec->reload_again = 1;
        return 1;
    }
    reload_reset(r);
    r->path = strdup(sec->authorized_path);
    if (!r->path) {
        set_err(err, errcap, sec->authorized_path, "out of memory");
        return -1;
    }
    snprintf(r->err, sizeof r->err, "%s: not read", r->path);
    sec->reload = r;
    return 0;
}

void fw_keys_reload_run(fw_keys_reload *r)
{
    r->rc = fw_keys_load_authorized(r->path, &r->keys, &r->n_bad, r->err, sizeof r->err);
}

/* r is done with: free what it still holds and take it off sec. */
static void reload_end(fw_security *sec, fw_keys_reload *r)
{
    fw_keys_free_authorized(&r->keys);
    free(r->path);
    reload_reset(r);
    if (sec && sec->reload == r)
        sec->reload = NULL;
}

int fw_security_reload_finish(fw_security *sec, fw_keys_reload *r, size_t *n_bad, char *err,
                              size_t errcap, int *again)
{
    if (n_bad)
        *n_bad = 0;
    if (again)
        *again = 0;
    if (!sec || !r || sec->reload != r) {
        if (err && errcap)
            snprintf(err, errcap, "no reload in flight");
        return -1;
    }
    if (again)
        *again = sec->reload_again;
    sec->reload_again = 0;
    if (err && errcap)
        snprintf(err, errcap, "%s", r->err);
    int rc = r->rc;
    if (rc == 0) {
        if (n_bad)
            *n_bad = r->n_bad;
        fw_keys_free_authorized(&sec->keys); /* the old list: here, on the loop thread */
        sec->keys = r->keys;
        r->keys.pk = NULL;
        r->keys.n = 0;
    }
    reload_end(sec, r);
    return rc == 0 ? 0 : -1;
}

void fw_security_reload_abandon(fw_security *sec, fw_keys_reload *r)
{
    if (!r)
        return;
    if (sec && sec->reload == r)
        sec->reload_again = 0;
    reload_end(sec, r);
}

int fw_security_reload(fw_security *sec, size_t *n_bad, char *err, size_t errcap)
{
    fw_keys_reload r;
    if (n_bad)
        *n_bad = 0;
    int rc = fw_security_reload_begin(sec, &r, err, errcap);
    if (rc == 1) {
        if (err && errcap)
            snprintf(err, errcap, "a reload is already in flight");
        return -1;
    }
    if (rc != 0)
        return -1;
    fw_keys_reload_run(&r);
    /* reload_again is only ever set while an asynchronous reload is in flight: none here */
    return fw_security_reload_finish(sec, &r, n_bad, err, errcap, NULL);
}

int fw_security_revoked(const fw_security *sec, const fw_secure_session *s)
{
    const uint8_t *pk = fw_secure_peer_key(s);
    return sec && pk && !fw_authorized_keys_contains(&sec->keys, pk);
}

void fw_security_close(fw_security *sec)
{
    if (!sec)
        return;
    /* A reload still in flight belongs to its caller (and its worker): only forget it. */
    sec->reload = NULL;
    sec->reload_again = 0;
    fw_keys_free_authorized(&sec->keys);
    sodium_memzero(&sec->id, sizeof sec->id);
    sec->enabled = 0;
}

int fw_security_addr_is_loopback(const struct sockaddr *sa)
{
    if (!sa)
        return 0;
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)(const void *)sa;
        return (ntohl(a->sin_addr.s_addr) >> 24) == 127;
    }
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)(const void *)sa;
        const uint8_t *b = a->sin6_addr.s6_addr;
        static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
        if (memcmp(b, in6addr_loopback.s6_addr, 16) == 0)
            return 1;
        return memcmp(b, mapped, 12) == 0 && b[12] == 127;
    }
    return 0;
}

fw_sec_verdict fw_security_check(const fw_security *sec, fw_secure_session *s, fw_header *h,
                                 const uint8_t *body, uint8_t **plain, const char **why)
{
    *plain = NULL;
    *why = NULL;
    int sealed = (h->flags & FW_FLAG_SEALED) != 0;
    fw_sec_state st = fw_secure_state(s);

    if (h->opcode == FW_OP_HELLO || h->opcode == FW_OP_AUTH) {
        if (!sec->enabled) {
            *why = "secure sessions are not enabled on this server";
            return sealed ? FW_SECV_CLOSE : FW_SECV_UNAUTHORIZED;
        }
        if (st == FW_SEC_ESTABLISHED || st == FW_SEC_FAILED) {
            *why = "handshake message in an established session";
            return FW_SECV_CLOSE;
        }
        return FW_SECV_HANDSHAKE;
    }
    switch (st) {
    case FW_SEC_ESTABLISHED: {
        if (!sealed) {
            *why = "plaintext frame in a secure session";
            return FW_SECV_CLOSE;
        }
        if (h->body_len < FW_SECURE_TAG_LEN) {
            *why = fw_secure_strerror(FW_SEC_E_OPEN);
            return FW_SECV_CLOSE;
        }
        size_t plen = h->body_len - FW_SECURE_TAG_LEN, got = 0;
        uint8_t *p = malloc(plen ? plen : 1);
        if (!p) {
            *why = "out of memory opening a sealed frame";
            return FW_SECV_CLOSE;
        }
        uint8_t ad[FW_HEADER_LEN];
        fw_header_encode(h, ad); /* the encoding is a bijection: these are the bytes received */
        int rc = fw_secure_open(s, ad, body, h->body_len, p, plen, &got);
        if (rc != FW_SEC_OK) {
            free(p);
            *why = fw_secure_strerror(rc);
            return FW_SECV_CLOSE;
        }
        h->flags &= (uint8_t)~FW_FLAG_SEALED;
        h->body_len = (uint32_t)got;
        *plain = p;
        return FW_SECV_OPENED;
    }
    case FW_SEC_NONE:
        if (sealed) {
            *why = "sealed frame before a secure session";
            return FW_SECV_CLOSE;
        }
        if (sec->require_secure) {
            *why = "secure session required";
            return FW_SECV_UNAUTHORIZED;
        }
        return FW_SECV_PASS;
    case FW_SEC_FAILED:
        *why = "secure session failed";
        return FW_SECV_CLOSE;
    default:
        /* HELLO answered, AUTH expected: anything else breaks the handshake. */
        *why = "expected AUTH after HELLO";
        return FW_SECV_CLOSE;
    }
}

static void answer_error(fw_sec_answer *ans, uint16_t status, const char *msg)
{
    ans->status = status;
    ans->msg = msg;
    ans->body_len = 0;
    ans->close_after = 1;
}

void fw_security_handshake(const fw_security *sec, fw_secure_session *s, const fw_header *h,
                           const uint8_t *body, fw_sec_answer *ans)
{
    memset(ans, 0, sizeof *ans);
    ans->status = FW_STATUS_OK;
    if (h->opcode == FW_OP_HELLO) {
        if (fw_secure_state(s) != FW_SEC_NONE) {
            answer_error(ans, FW_STATUS_BAD_REQUEST, "HELLO repeated");
            return;
        }
        if (h->flags & FW_FLAG_SEALED) {
            answer_error(ans, FW_STATUS_BAD_REQUEST, "HELLO must not be sealed");
            return;
        }
        if (fw_secure_session_init(s, 1) != FW_SEC_OK) {
            answer_error(ans, FW_STATUS_INTERNAL, "libsodium failed to initialise");
            return;
        }
        int rc = fw_secure_server_on_hello(s, &sec->id, body, h->body_len, ans->body);
        if (rc != FW_SEC_OK) {
            answer_error(ans, rc == FW_SEC_E_VERSION ? FW_STATUS_UNSUPPORTED_VERSION
                                                     : FW_STATUS_BAD_REQUEST,
                         fw_secure_strerror(rc));
            return;
        }
        ans->body_len = FW_SECURE_HELLO_RESP_LEN;
        return;
    }
    if (h->opcode != FW_OP_AUTH) {
        answer_error(ans, FW_STATUS_BAD_REQUEST, "not a handshake message");
        return;
    }
    if (fw_secure_state(s) != FW_SEC_AWAIT_AUTH) {
        answer_error(ans, FW_STATUS_BAD_REQUEST, "AUTH before HELLO");
        return;
    }
    uint8_t ad[FW_HEADER_LEN];
    fw_header_encode(h, ad);
    int rc = fw_secure_server_on_auth(s, &sec->keys, ad, body, h->body_len);
    if (rc == FW_SEC_OK)
        return; /* empty OK, sealed by the reply path */
    answer_error(ans,
                 rc == FW_SEC_E_UNKNOWN_KEY || rc == FW_SEC_E_SIGNATURE ? FW_STATUS_UNAUTHORIZED
                                                                        : FW_STATUS_BAD_REQUEST,
                 rc == FW_SEC_E_SIGNATURE ? "client signature does not verify"
                                          : fw_secure_strerror(rc));
}

size_t fw_security_overhead(const fw_secure_session *s)
{
    return fw_secure_state(s) == FW_SEC_ESTABLISHED ? FW_SECURE_TAG_LEN : 0;
}
