/*
 * tu_data.c — test inputs: see tu_data.h.
 */
#include "tests/tu_data.h"

#include <stdio.h>
#include <stdlib.h>

static const char *env_or(const char *name, const char *dflt)
{
    const char *s = getenv(name);
    return s && *s ? s : dflt;
}

const char *tu_shared_dir(void) { return env_or("FW_SHARED", "../shared"); }
const char *tu_models_dir(void) { return env_or("FW_MODELS", "models"); }

uint8_t *tu_read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    uint8_t *buf = NULL;
    size_t cap = 0, n = 0;
    for (;;) {
        if (n == cap) {
            size_t ncap = cap ? cap * 2 : 65536;
            uint8_t *nb = realloc(buf, ncap);
            if (!nb) {
                free(buf);
                fclose(f);
                return NULL;
            }
            buf = nb;
            cap = ncap;
        }
        size_t k = fread(buf + n, 1, cap - n, f);
        if (k == 0)
            break;
        n += k;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        return NULL;
    }
    *len = n;
    return buf;
}

uint8_t *tu_eval_pic(const char *name, size_t *len)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/eval/%s", tu_shared_dir(), name);
    uint8_t *p = tu_read_file(path, len);
    if (!p)
        fprintf(stderr, "  cannot read %s (set FW_SHARED)\n", path);
    return p;
}
