/*
 * model.c — TF.js weights manifest + shard loader (see model.h).
 *
 * The whole of a group's shards is read into memory first (they are a few MB at most, capped
 * below), then walked with an explicit offset that is checked before every read, so a manifest
 * that lies about sizes can only produce an error. The bounded whole-file reader behind that,
 * fw_read_file (engine.h), lives here and is the engine's only one: the CLI and the benchmarks
 * read pictures with it too.
 */
#include "engine/model.h"
#include "engine/engine.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* Generous bounds for the face-api files: the largest .bin is 6.4 MB, the largest tensor has
 * 590k elements, the largest manifest is 20 KB. */
#define MANIFEST_MAX_BYTES ((long)1 << 20)
#define SHARDS_MAX_BYTES ((size_t)64 << 20)
#define TENSOR_MAX_COUNT ((size_t)16 << 20)
#define NAME_MAX_LEN 256
#define TENSORS_MAX 4096

static void seterr(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* See engine.h. The label, when given, starts every message ("face_recognition_model: ..."). */
unsigned char *fw_read_file(const char *path, size_t max, size_t *len, const char *label,
                            char *err, size_t errlen)
{
    const char *lb = label ? label : "", *sep = label ? ": " : "";
    unsigned char *buf = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) {
        seterr(err, errlen, "%s%scannot open %s: %s", lb, sep, path, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        seterr(err, errlen, "%s%s%s is not a regular file", lb, sep, path);
        goto err;
    }
    if ((uintmax_t)st.st_size > (uintmax_t)max) {
        seterr(err, errlen, "%s%s%s is too large (%jd bytes, limit %zu)", lb, sep, path,
               (intmax_t)st.st_size, max);
        goto err;
    }
    size_t n = (size_t)st.st_size;
    buf = malloc(n + 1);
    if (!buf) {
        seterr(err, errlen, "%s%sout of memory reading %s", lb, sep, path);
        goto err;
    }
    if (n && fread(buf, 1, n, f) != n) {
        seterr(err, errlen, "%s%sshort read on %s", lb, sep, path);
        goto err;
    }
    buf[n] = 0;
    fclose(f);
    *len = n;
    return buf;
err:
    free(buf);
    fclose(f);
    return NULL;
}

/* Shard names come from the manifest: only a plain file name inside dir is acceptable. */
static int plain_file_name(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > NAME_MAX_LEN || strcmp(s, ".") == 0 || strcmp(s, "..") == 0)
        return 0;
    return strchr(s, '/') == NULL && strchr(s, '\\') == NULL;
}

void fw_model_free(fw_model *m)
{
    if (!m)
        return;
    for (size_t i = 0; i < m->n; i++) {
        free(m->t[i].name);
        free(m->t[i].data);
    }
    free(m->t);
    free(m->label);
    free(m);
}

/* Reads a group's shards, concatenated, into *out. */
static int load_shards(const char *dir, const cJSON *paths, const char *label,
                       unsigned char **out, size_t *outlen, char *err, size_t errlen)
{
    unsigned char *all = NULL;
    size_t total = 0;
    const cJSON *p;
    if (!cJSON_IsArray(paths) || cJSON_GetArraySize(paths) < 1) {
        seterr(err, errlen, "%s: bad manifest: group without \"paths\"", label);
        return -1;
    }
    cJSON_ArrayForEach(p, paths) {
        if (!cJSON_IsString(p) || !plain_file_name(p->valuestring)) {
            seterr(err, errlen, "%s: bad manifest: shard path is not a plain file name", label);
            goto err;
        }
        char path[4096];
        if ((size_t)snprintf(path, sizeof path, "%s/%s", dir, p->valuestring) >= sizeof path) {
            seterr(err, errlen, "%s: path too long", label);
            goto err;
        }
        size_t n;
        unsigned char *part = fw_read_file(path, SHARDS_MAX_BYTES - total, &n, label, err, errlen);
        if (!part)
            goto err;
        unsigned char *grown = realloc(all, total + n + 1);
        if (!grown) {
            free(part);
            seterr(err, errlen, "%s: out of memory", label);
            goto err;
        }
        all = grown;
        memcpy(all + total, part, n);
        total += n;
        free(part);
    }
    *out = all;
    *outlen = total;
    return 0;
err:
    free(all);
    return -1;
}

/* Parses one weight entry and decodes its values from bytes[*off..]. */
static int load_weight(const cJSON *w, const unsigned char *bytes, size_t len, size_t *off,
                       fw_model *m, const char *label, char *err, size_t errlen)
{
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(w, "name");
    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(w, "shape");
    const cJSON *dtype = cJSON_GetObjectItemCaseSensitive(w, "dtype");
    const cJSON *quant = cJSON_GetObjectItemCaseSensitive(w, "quantization");

    if (!cJSON_IsString(name) || strlen(name->valuestring) == 0 ||
        strlen(name->valuestring) > NAME_MAX_LEN) {
        seterr(err, errlen, "%s: bad manifest: weight without a valid name", label);
        return -1;
    }
    const char *nm = name->valuestring;
    for (size_t i = 0; i < m->n; i++) {
        if (strcmp(m->t[i].name, nm) == 0) {
            seterr(err, errlen, "%s: bad manifest: duplicate tensor %s", label, nm);
            return -1;
        }
    }
    if (!cJSON_IsArray(shape) || cJSON_GetArraySize(shape) < 1 ||
        cJSON_GetArraySize(shape) > FW_MODEL_MAX_DIMS) {
        seterr(err, errlen, "%s: bad manifest: tensor %s has no valid shape", label, nm);
        return -1;
    }
    if (!cJSON_IsString(dtype) || strcmp(dtype->valuestring, "float32") != 0) {
        seterr(err, errlen, "%s: bad manifest: tensor %s is not float32", label, nm);
        return -1;
    }
    fw_model_tensor t = { 0 };
    t.count = 1;
    const cJSON *d;
    cJSON_ArrayForEach(d, shape) {
        if (!cJSON_IsNumber(d) || d->valuedouble < 1 || d->valuedouble > 65536 ||
            d->valuedouble != (double)(int)d->valuedouble) {
            seterr(err, errlen, "%s: bad manifest: tensor %s has a bad dimension", label, nm);
            return -1;
        }
        t.shape[t.ndim++] = (int)d->valuedouble;
        t.count *= (size_t)d->valueint;
        if (t.count > TENSOR_MAX_COUNT) {
            seterr(err, errlen, "%s: bad manifest: tensor %s is too large", label, nm);
            return -1;
        }
    }

    /* 4 bytes per value raw, 1 or 2 when quantised. */
    size_t width = 4;
    double qmin = 0, qscale = 0;
    if (quant) {
        const cJSON *qd = cJSON_GetObjectItemCaseSensitive(quant, "dtype");
        const cJSON *qm = cJSON_GetObjectItemCaseSensitive(quant, "min");
        const cJSON *qs = cJSON_GetObjectItemCaseSensitive(quant, "scale");
        if (!cJSON_IsObject(quant) || !cJSON_IsString(qd) || !cJSON_IsNumber(qm) ||
            !cJSON_IsNumber(qs) || !isfinite(qm->valuedouble) || !isfinite(qs->valuedouble)) {
            seterr(err, errlen, "%s: bad manifest: tensor %s has bad quantization", label, nm);
            return -1;
        }
        if (strcmp(qd->valuestring, "uint8") == 0)
            width = 1;
        else if (strcmp(qd->valuestring, "uint16") == 0)
            width = 2;
        else {
            seterr(err, errlen, "%s: bad manifest: tensor %s has unsupported quantization %s",
                   label, nm, qd->valuestring);
            return -1;
        }
        qmin = qm->valuedouble;
        qscale = qs->valuedouble;
    }
    size_t need = t.count * width;
    if (need > len - *off) {
        seterr(err, errlen, "%s: weights file truncated (tensor %s needs %zu bytes at offset "
               "%zu, file has %zu)", label, nm, need, *off, len);
        return -1;
    }
    t.data = malloc(t.count * sizeof(float));
    t.name = strdup(nm);
    if (!t.data || !t.name) {
        free(t.data);
        free(t.name);
        seterr(err, errlen, "%s: out of memory", label);
        return -1;
    }
    const unsigned char *src = bytes + *off;
    for (size_t i = 0; i < t.count; i++) {
        float v;
        if (width == 1) {
            v = (float)(qmin + (double)src[i] * qscale);
        } else if (width == 2) {
            uint16_t q = (uint16_t)(src[2 * i] | (src[2 * i + 1] << 8));
            v = (float)(qmin + (double)q * qscale);
        } else {
            uint32_t u = (uint32_t)src[4 * i] | (uint32_t)src[4 * i + 1] << 8 |
                         (uint32_t)src[4 * i + 2] << 16 | (uint32_t)src[4 * i + 3] << 24;
            memcpy(&v, &u, sizeof v);
        }
        if (!isfinite(v)) {
            free(t.data);
            free(t.name);
            seterr(err, errlen, "%s: tensor %s holds a non-finite value", label, nm);
            return -1;
        }
        t.data[i] = v;
    }
    *off += need;
    m->t[m->n++] = t;
    return 0;
}

fw_model *fw_model_load(const char *dir, const char *name, char *err, size_t errlen)
{
    fw_model *m = NULL;
    unsigned char *json = NULL, *bytes = NULL;
    cJSON *root = NULL;
    char path[4096];
    size_t len;

    if ((size_t)snprintf(path, sizeof path, "%s/%s-weights_manifest.json", dir, name) >=
        sizeof path) {
        seterr(err, errlen, "%s: path too long", name);
        return NULL;
    }
    json = fw_read_file(path, MANIFEST_MAX_BYTES, &len, name, err, errlen);
    if (!json)
        goto err;
    root = cJSON_ParseWithLength((const char *)json, len);
    if (!root || !cJSON_IsArray(root) || cJSON_GetArraySize(root) < 1) {
        seterr(err, errlen, "%s: bad manifest: not a JSON array of weight groups", name);
        goto err;
    }
    m = calloc(1, sizeof *m);
    if (!m || !(m->label = strdup(name))) {
        seterr(err, errlen, "%s: out of memory", name);
        goto err;
    }
    /* Count the weights first so the tensor table is allocated once. */
    size_t total = 0;
    const cJSON *g;
    cJSON_ArrayForEach(g, root) {
        const cJSON *ws = cJSON_GetObjectItemCaseSensitive(g, "weights");
        if (!cJSON_IsArray(ws)) {
            seterr(err, errlen, "%s: bad manifest: group without \"weights\"", name);
            goto err;
        }
        total += (size_t)cJSON_GetArraySize(ws);
    }
    if (total == 0 || total > TENSORS_MAX) {
        seterr(err, errlen, "%s: bad manifest: %zu tensors", name, total);
        goto err;
    }
    m->t = calloc(total, sizeof *m->t);
    if (!m->t) {
        seterr(err, errlen, "%s: out of memory", name);
        goto err;
    }
    cJSON_ArrayForEach(g, root) {
        size_t blen = 0, off = 0;
        if (load_shards(dir, cJSON_GetObjectItemCaseSensitive(g, "paths"), name, &bytes, &blen,
                        err, errlen) != 0)
            goto err;
        const cJSON *w;
        cJSON_ArrayForEach(w, cJSON_GetObjectItemCaseSensitive(g, "weights")) {
            if (load_weight(w, bytes, blen, &off, m, name, err, errlen) != 0)
                goto err;
        }
        if (off != blen) {
            seterr(err, errlen, "%s: weights file has %zu trailing bytes", name, blen - off);
            goto err;
        }
        free(bytes);
        bytes = NULL;
    }
    cJSON_Delete(root);
    free(json);
    return m;
err:
    free(bytes);
    cJSON_Delete(root);
    free(json);
    fw_model_free(m);
    return NULL;
}

static void shape_str(char *buf, size_t len, int ndim, const int *shape)
{
    size_t o = 0;
    o += (size_t)snprintf(buf + o, len - o, "[");
    for (int i = 0; i < ndim && o < len; i++)
        o += (size_t)snprintf(buf + o, len - o, i ? ",%d" : "%d", shape[i]);
    if (o < len)
        snprintf(buf + o, len - o, "]");
}

const float *fw_model_take(fw_model *m, const char *name, int ndim, const int *shape, char *err,
                           size_t errlen)
{
    for (size_t i = 0; i < m->n; i++) {
        fw_model_tensor *t = &m->t[i];
        if (strcmp(t->name, name) != 0)
            continue;
        int same = t->ndim == ndim;
        for (int d = 0; same && d < ndim; d++)
            same = t->shape[d] == shape[d];
        if (!same) {
            char got[64], want[64];
            shape_str(got, sizeof got, t->ndim, t->shape);
            shape_str(want, sizeof want, ndim, shape);
            seterr(err, errlen, "%s: tensor %s has shape %s, expected %s", m->label, name, got,
                   want);
            return NULL;
        }
        t->taken = 1;
        return t->data;
    }
    seterr(err, errlen, "%s: missing tensor %s", m->label, name);
    return NULL;
}

int fw_model_check_all_taken(const fw_model *m, char *err, size_t errlen)
{
    for (size_t i = 0; i < m->n; i++) {
        if (!m->t[i].taken) {
            seterr(err, errlen, "%s: unexpected tensor %s", m->label, m->t[i].name);
            return -1;
        }
    }
    return 0;
}
