/*
 * fwload_ops.c — the kinds of request fwload can send, as a table.
 *
 * Each op builds its body once at start-up: a few fixed prefix bytes (a length, a duration)
 * and a payload shared by every request (PING's echo bytes, EMBED's JPEG). Requests then cost
 * no allocation and no per-request encoding beyond the request_id. An op may check the body
 * of an OK reply (PING checks the echo byte for byte); the status and the framing are
 * checked for every op by fwload_main.c.
 *
 * To add an op: a row in op_table, and a setup function if its body needs options.
 */
#include "fwload.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* ---- PING: the body is echoed -------------------------------------------------------------- */

static int ping_setup(fwl_op *op, const fwl_opts *o, char *err, size_t errlen)
{
    if (o->body_bytes > FW_PING_MAX_BODY) {
        snprintf(err, errlen, "--body-bytes %u: PING bodies are at most %u bytes", o->body_bytes,
                 FW_PING_MAX_BODY);
        return -1;
    }
    if (o->body_bytes == 0)
        return 0;
    op->payload = malloc(o->body_bytes);
    if (!op->payload) {
        snprintf(err, errlen, "out of memory for a %u-byte PING body", o->body_bytes);
        return -1;
    }
    /* Not all one value, so an echo that reorders or drops bytes is caught. */
    for (uint32_t i = 0; i < o->body_bytes; i++)
        op->payload[i] = (uint8_t)(i * 31u + 7u);
    op->payload_len = o->body_bytes;
    return 0;
}

static int ping_check(const fwl_op *op, const uint8_t *body, size_t len)
{
    if (len != op->payload_len)
        return -1;
    return len == 0 || memcmp(body, op->payload, len) == 0 ? 0 : -1;
}

/* ---- TEST_SLEEP: u32 milliseconds; needs a server started with --enable-test-ops ----------- */

static int sleep_setup(fwl_op *op, const fwl_opts *o, char *err, size_t errlen)
{
    (void)err;
    (void)errlen;
    fw_be32(op->prefix, o->sleep_ms);
    op->prefix_len = 4;
    return 0;
}

/* ---- EMBED: u32 length + JPEG bytes --------------------------------------------------------- */

static int embed_setup(fwl_op *op, const fwl_opts *o, char *err, size_t errlen)
{
    FILE *f = NULL;
    if (!o->image) {
        snprintf(err, errlen, "--op embed needs --image FILE.jpg");
        goto err;
    }
    f = fopen(o->image, "rb");
    if (!f) {
        snprintf(err, errlen, "%s: %s", o->image, strerror(errno));
        goto err;
    }
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        snprintf(err, errlen, "%s: not a regular file", o->image);
        goto err;
    }
    /* The body is the 4-byte length plus the image, and must fit the server's default limit. */
    if (st.st_size <= 0 || (uint64_t)st.st_size > FW_DEFAULT_MAX_BODY - 4) {
        snprintf(err, errlen, "%s: size %lld, expected 1..%u bytes", o->image,
                 (long long)st.st_size, FW_DEFAULT_MAX_BODY - 4);
        goto err;
    }
    size_t n = (size_t)st.st_size;
    op->payload = malloc(n);
    if (!op->payload) {
        snprintf(err, errlen, "out of memory for %s (%zu bytes)", o->image, n);
        goto err;
    }
    if (fread(op->payload, 1, n, f) != n) {
        snprintf(err, errlen, "%s: short read", o->image);
        goto err;
    }
    fclose(f);
    op->payload_len = n;
    fw_be32(op->prefix, (uint32_t)n);
    op->prefix_len = 4;
    return 0;
err:
    if (f)
        fclose(f);
    free(op->payload);
    op->payload = NULL;
    return -1;
}

/* ---- IDENTIFY and ENROLL by descriptor (input kind 1): no models needed ------------------- */

#define DESC_DIM 128
#define DESC_VALUE_MAX 1.0e4f   /* the server's bound on each component (protocol.md) */
#define DESC_FILE_MAX 65536     /* a text file of 128 numbers is a few KiB */

/* The descriptor without --descriptor: fixed, so runs compare, and spread like the random
 * galleries of the benchmarks (components uniform in [-1, 1)). */
static void default_descriptor(float *d)
{
    uint64_t s = 0x5eed;
    for (int i = 0; i < DESC_DIM; i++) {
        uint64_t z = (s += 0x9e3779b97f4a7c15ULL);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
        z ^= z >> 31;
        d[i] = (float)((double)(z >> 40) / (double)(1 << 24) * 2.0 - 1.0);
    }
}

/* --descriptor FILE: exactly 128 numbers as text, separated by blanks, commas or brackets,
 * optionally after the word "descriptor" — so both the "descriptor ..." line of `fwcat embed`
 * and the JSON array of `fwcat --json embed` can be pasted into a file as they are. */
static int load_descriptor(const char *path, float *d, char *err, size_t errlen)
{
    char *text = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "--descriptor %s: %s", path, strerror(errno));
        goto err;
    }
    if (!(text = malloc(DESC_FILE_MAX + 1))) {
        snprintf(err, errlen, "out of memory for --descriptor");
        goto err;
    }
    size_t len = fread(text, 1, DESC_FILE_MAX + 1, f);
    if (ferror(f) || len > DESC_FILE_MAX) {
        snprintf(err, errlen, "--descriptor %s: %s", path,
                 ferror(f) ? "read error" : "over 64 KiB: not a descriptor");
        goto err;
    }
    text[len] = '\0';
    if (memchr(text, '\0', len)) {
        snprintf(err, errlen, "--descriptor %s: binary file (want 128 numbers as text)", path);
        goto err;
    }
    static const char sep[] = " \t\r\n,[]";
    char *p = text + strspn(text, sep);
    if (strncmp(p, "descriptor", 10) == 0)
        p += 10;
    int n = 0;
    for (;;) {
        p += strspn(p, sep);
        if (*p == '\0')
            break;
        char *end;
        errno = 0;
        float v = strtof(p, &end);
        if (end == p || (*end && !strchr(sep, *end))) {
            snprintf(err, errlen, "--descriptor %s: number %d is not a number: '%.20s'", path,
                     n + 1, p);
            goto err;
        }
        if (errno == ERANGE || !(v >= -DESC_VALUE_MAX && v <= DESC_VALUE_MAX)) {
            snprintf(err, errlen, "--descriptor %s: number %d is out of range (each must be "
                     "finite, within +-10000)", path, n + 1);
            goto err;
        }
        if (n == DESC_DIM) {
            snprintf(err, errlen, "--descriptor %s: more than %d numbers", path, DESC_DIM);
            goto err;
        }
        d[n++] = v;
        p = end;
    }
    if (n != DESC_DIM) {
        snprintf(err, errlen, "--descriptor %s: %d numbers, want %d", path, n, DESC_DIM);
        goto err;
    }
    free(text);
    fclose(f);
    return 0;
err:
    free(text);
    if (f)
        fclose(f);
    return -1;
}

static int descriptor_for(const fwl_opts *o, float *d, char *err, size_t errlen)
{
    if (!o->descriptor) {
        default_descriptor(d);
        return 0;
    }
    return load_descriptor(o->descriptor, d, err, errlen);
}

/* IDENTIFY: input (u8 kind 1, 128 x f32), u16 k, u8 has_threshold, f32 threshold. */
static int identify_setup(fwl_op *op, const fwl_opts *o, char *err, size_t errlen)
{
    float d[DESC_DIM];
    if (descriptor_for(o, d, err, errlen) != 0)
        return -1;
    size_t cap = 1 + DESC_DIM * 4 + 2 + 1 + 4;
    if (!(op->payload = malloc(cap))) {
        snprintf(err, errlen, "out of memory for an IDENTIFY body");
        return -1;
    }
    fw_writer w;
    fw_writer_init(&w, op->payload, cap);
    fw_put_u8(&w, 1);
    for (int i = 0; i < DESC_DIM; i++)
        fw_put_f32(&w, d[i]);
    fw_put_u16(&w, o->k);
    fw_put_u8(&w, o->has_threshold ? 1 : 0);
    fw_put_f32(&w, o->has_threshold ? o->threshold : 0.0f);
    op->payload_len = w.len; /* == cap: sized above field by field */
    return 0;
}

/* An OK IDENTIFY answer to a descriptor: exactly one face with a zero box and at most k
 * matches, nearest first, nothing left over. Catches a server that answers the wrong request
 * or a truncated body. */
static int identify_check(const fwl_op *op, const uint8_t *body, size_t len)
{
    fw_reader r;
    fw_reader_init(&r, body, len);
    if (fw_get_u16(&r) != 1)
        return -1;
    for (int i = 0; i < 4; i++)
        if (fw_get_f32(&r) != 0.0f)
            return -1;
    uint16_t nm = fw_get_u16(&r);
    /* k is the u16 after the input (1 + 512 bytes) in the request body. */
    uint16_t k = (uint16_t)((op->payload[1 + DESC_DIM * 4] << 8) | op->payload[2 + DESC_DIM * 4]);
    if (r.err || nm > k)
        return -1;
    float prev = 0.0f;
    for (uint16_t i = 0; i < nm; i++) {
        uint16_t sl;
        const char *s = fw_get_str(&r, &sl);
        (void)fw_get_u64(&r);
        float dist = fw_get_f32(&r);
        if (!s || sl == 0 || r.err || !(dist >= prev))
            return -1;
        prev = dist;
    }
    return fw_reader_done(&r) ? 0 : -1;
}

/* ENROLL: str subject, bytes metadata (empty), input (u8 kind 1, 128 x f32). Every request
 * adds one more face of the same subject: this measures the durable write path. */
static int enroll_setup(fwl_op *op, const fwl_opts *o, char *err, size_t errlen)
{
    float d[DESC_DIM];
    const char *subject = o->subject ? o->subject : "fwload";
    size_t sl = strlen(subject);
    if (sl < 1 || sl > 128) {
        snprintf(err, errlen, "--subject: 1..128 bytes, got %zu", sl);
        return -1;
    }
    if (descriptor_for(o, d, err, errlen) != 0)
        return -1;
    size_t cap = 2 + sl + 4 + 1 + DESC_DIM * 4;
    if (!(op->payload = malloc(cap))) {
        snprintf(err, errlen, "out of memory for an ENROLL body");
        return -1;
    }
    fw_writer w;
    fw_writer_init(&w, op->payload, cap);
    fw_put_str(&w, subject, sl);
    fw_put_bytes(&w, NULL, 0);
    fw_put_u8(&w, 1);
    for (int i = 0; i < DESC_DIM; i++)
        fw_put_f32(&w, d[i]);
    op->payload_len = w.len;
    return 0;
}

static int enroll_check(const fwl_op *op, const uint8_t *body, size_t len)
{
    (void)op;
    (void)body;
    return len == 8 ? 0 : -1; /* u64 face_id */
}

static const fwl_op_def op_table[] = {
    {"ping", FW_OP_PING, "PING; body of --body-bytes N bytes (default 0), echo checked",
     ping_setup, ping_check},
    {"info", FW_OP_INFO, "INFO; no body", NULL, NULL},
    {"sleep", FW_OP_TEST_SLEEP, "TEST_SLEEP of --sleep-ms N (server needs --enable-test-ops)",
     sleep_setup, NULL},
    {"embed", FW_OP_EMBED, "EMBED of the JPEG --image FILE", embed_setup, NULL},
    {"identify", FW_OP_IDENTIFY, "IDENTIFY by --descriptor FILE (--k, --threshold); no models "
     "needed", identify_setup, identify_check},
    {"enroll", FW_OP_ENROLL, "ENROLL --descriptor FILE as --subject S (default fwload): "
     "durable writes", enroll_setup, enroll_check},
};
#define OP_TABLE_LEN (sizeof op_table / sizeof op_table[0])

void fwl_ops_help(FILE *out)
{
    for (size_t i = 0; i < OP_TABLE_LEN; i++)
        fprintf(out, "    %-8s %s\n", op_table[i].name, op_table[i].help);
}

static const fwl_op_def *find_def(const char *name, size_t n)
{
    for (size_t i = 0; i < OP_TABLE_LEN; i++)
        if (strlen(op_table[i].name) == n && strncmp(op_table[i].name, name, n) == 0)
            return &op_table[i];
    return NULL;
}

static int add_op(fwl_opset *set, const char *name, size_t n, unsigned weight, char *err,
                  size_t errlen)
{
    const fwl_op_def *def = find_def(name, n);
    if (!def) {
        snprintf(err, errlen, "unknown op '%.*s' (see --help)", (int)(n > 40 ? 40 : n), name);
        return -1;
    }
    for (unsigned i = 0; i < set->n; i++)
        if (set->ops[i].def == def) {
            snprintf(err, errlen, "op '%s' given twice in --mix", def->name);
            return -1;
        }
    if (set->n == FWL_MAX_OPS) {
        snprintf(err, errlen, "at most %d ops in --mix", FWL_MAX_OPS);
        return -1;
    }
    fwl_op *op = &set->ops[set->n++];
    memset(op, 0, sizeof *op);
    op->def = def;
    op->weight = weight;
    set->total_weight += weight;
    return 0;
}

/* "ping:3,sleep:1"; a missing weight is 1. */
static int parse_mix(fwl_opset *set, const char *mix, char *err, size_t errlen)
{
    const char *p = mix;
    for (;;) {
        const char *end = p + strcspn(p, ",");
        const char *colon = memchr(p, ':', (size_t)(end - p));
        const char *name_end = colon ? colon : end;
        unsigned long weight = 1;
        if (colon) {
            char *wend;
            errno = 0;
            weight = strtoul(colon + 1, &wend, 10);
            if (errno || wend != end || colon + 1 == end || weight < 1 || weight > 1000000) {
                snprintf(err, errlen, "--mix: bad weight in '%.*s' (want 1..1000000)",
                         (int)(end - p > 40 ? 40 : end - p), p);
                return -1;
            }
        }
        if (add_op(set, p, (size_t)(name_end - p), (unsigned)weight, err, errlen) != 0)
            return -1;
        if (*end == '\0')
            return 0;
        p = end + 1;
    }
}

int fwl_ops_init(fwl_opset *set, const fwl_opts *o, char *err, size_t errlen)
{
    memset(set, 0, sizeof *set);
    int rc = o->mix ? parse_mix(set, o->mix, err, errlen)
                    : add_op(set, o->op, strlen(o->op), 1, err, errlen);
    if (rc != 0)
        goto err;
    for (unsigned i = 0; i < set->n; i++) {
        fwl_op *op = &set->ops[i];
        if (op->def->setup && op->def->setup(op, o, err, errlen) != 0)
            goto err;
        /* Bodies are capped well below 4 GiB by every setup, so the sum fits a u32. */
        fw_header h = {
            .magic = FW_MAGIC,
            .version = FW_PROTO_VERSION,
            .opcode = op->def->opcode,
            .flags = 0,
            .priority = o->priority,
            .status = 0,
            .request_id = 0,
            .deadline_ms = o->deadline_ms,
            .body_len = (uint32_t)(op->prefix_len + op->payload_len),
        };
        fw_header_encode(&h, op->header);
    }
    return 0;
err:
    fwl_ops_free(set);
    return -1;
}

unsigned fwl_ops_pick(fwl_opset *set)
{
    if (set->n == 1)
        return 0;
    /* nginx's smooth weighted round-robin: every op gains its weight, the richest is picked
     * and pays the total. Spreads a 3:1 mix as a,a,b,a rather than a,a,a,b. */
    unsigned best = 0;
    for (unsigned i = 0; i < set->n; i++) {
        set->ops[i].wrr_current += set->ops[i].weight;
        if (set->ops[i].wrr_current > set->ops[best].wrr_current)
            best = i;
    }
    set->ops[best].wrr_current -= (long)set->total_weight;
    return best;
}

void fwl_ops_free(fwl_opset *set)
{
    for (unsigned i = 0; i < set->n; i++) {
        free(set->ops[i].payload);
        set->ops[i].payload = NULL;
    }
    set->n = 0;
}
