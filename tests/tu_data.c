/*
 * tu_data.c — test inputs: see tu_data.h.
 */
#include "tests/tu_data.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

uint64_t tu_splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

void tu_desc_for(uint64_t seed, float *d)
{
    uint64_t s = seed * 7919 + 1;
    for (int i = 0; i < TU_DESC_DIM; i++)
        d[i] = (float)((double)(tu_splitmix(&s) >> 11) / (double)(1ULL << 53) * 2.0 - 1.0);
}

void tu_unit_desc(float *d, int i, float v)
{
    memset(d, 0, TU_DESC_DIM * sizeof *d);
    d[i] = v;
}
