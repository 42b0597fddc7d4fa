/*
 * keys.h — the server's key files: `facewired keygen PREFIX`, the authorized-keys list
 * (--authorized-keys, reloaded on SIGHUP) and the symmetric key of the gallery at rest
 * (--gallery-key). The formats are in docs/security.md; the one-line codecs and the
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

#endif
