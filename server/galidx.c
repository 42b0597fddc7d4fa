/*
 * galidx.c — the gallery's in-memory index and its BLAS search (see galidx.h for the layout
 * and the locking contract).
 *
 * Search: for a block of rows, one sgemv (one query) or sgemm (several) gives -2 q.x; the
 * squared distance is |q|^2 + |x|^2 - 2 q.x with both norms precomputed, so the whole scan is
 * one pass over the matrix at memory bandwidth. Each query keeps a k-sized max-heap of the best
 * rows so far; a candidate is compared once against the heap's worst (or the threshold) and
 * almost always rejected there, so selection costs about one compare per row, no sort of n.
 * The square root is taken only for the k survivors. Blocking keeps the dot-product scratch
 * (nq x block floats) in cache and independent of the gallery size, and bounds the work
 * between two pause points (engine/pause.h): the caller's hook runs after every block, so a
 * worker can hand its CPU back during a search over a million faces (docs/scheduling.md).
 */
#include <cblas.h>
#include <float.h>
#include <math.h>
#include <sodium.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "server/galidx.h"

#define DIM FW_GALLERY_DIM

struct galidx_subj {
    galidx_subj *left, *right; /* treap by name; heap order on hash (keyed, so random) */
    uint64_t hash;
    uint32_t n;                /* faces in the index: written under the write lock */
    uint32_t *rows;            /* rows of those faces; writer-private */
    uint32_t cap;              /* writer-private */
    uint32_t pending;          /* enrolls reserved and not yet applied; writer-private */
    int in_index;              /* in smap and the treap */
    uint16_t len;
    char name[];               /* len bytes + NUL */
};

typedef struct meta_block {
    uint16_t len;
    unsigned char data[];
} meta_block;

struct galidx {
    unsigned char key[crypto_shorthash_KEYBYTES];
    uint32_t n, cap;
    /* The per-row arrays live in one mapping reserved for max_faces rows (address space only;
     * pages are touched as rows are added), so they never move and never get copied. NULL:
     * the mapping was refused (strict overcommit, ulimit -v) and they grow by doubling. */
    void *region;
    size_t region_len;
    float *x;                /* cap x DIM, 64-byte aligned */
    float *norms;            /* |x|^2 per row */
    uint64_t *ids;
    galidx_subj **subj;
    uint32_t *spos;          /* index of the row in its subject's rows[] */
    void **meta;             /* meta_block or NULL */
    uint64_t *idmap;         /* 2 words per slot: face id (0 = empty), row */
    uint32_t idmap_cap;      /* power of two, load <= 1/2 */
    galidx_subj **smap;      /* open addressing on hash, NULL = empty */
    uint32_t smap_cap;       /* power of two, load <= 1/2 */
    uint32_t nsubj;
    galidx_subj *root;       /* treap */
    uint64_t meta_bytes, subj_bytes;
    uint64_t max_id;
    float max_norm;          /* largest |x|^2 ever added: bounds the rounding error of a scan */
};

/* ---- small helpers ---------------------------------------------------------------------- */

static uint64_t mix64(uint64_t z) /* splitmix64 finaliser: ids are sequential, spread them */
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static uint64_t name_hash(const unsigned char *key, const char *name, size_t len)
{
    unsigned char out[crypto_shorthash_BYTES];
    uint64_t h = 0;
    crypto_shorthash(out, (const unsigned char *)name, len, key);
    for (int i = 0; i < 8; i++)
        h = (h << 8) | out[i];
    return h;
}

static int name_cmp(const char *a, size_t alen, const char *b, size_t blen)
{
    int c = memcmp(a, b, alen < blen ? alen : blen);
    if (c)
        return c;
    return alen < blen ? -1 : alen > blen;
}

static uint32_t pow2_at_least(uint64_t v, uint32_t floor)
{
    uint64_t c = floor;
    while (c < v)
        c <<= 1;
    return c > UINT32_MAX ? 0 : (uint32_t)c;
}

int galidx_subject_valid(const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    if (len < 1 || len > FW_GALLERY_SUBJECT_MAX)
        return 0;
    /* Strict UTF-8: no overlong forms, no surrogates, nothing above U+10FFFF, and no NUL so
     * the NUL-terminated copies we hand out are the whole subject. */
    while (i < len) {
        unsigned c = p[i];
        size_t need;
        uint32_t cp, min;
        if (c == 0)
            return 0;
        if (c < 0x80) {
            i++;
            continue;
        }
        if ((c & 0xE0) == 0xC0) { need = 1; cp = c & 0x1F; min = 0x80; }
        else if ((c & 0xF0) == 0xE0) { need = 2; cp = c & 0x0F; min = 0x800; }
        else if ((c & 0xF8) == 0xF0) { need = 3; cp = c & 0x07; min = 0x10000; }
        else return 0;
        if (len - i - 1 < need)
            return 0;
        for (size_t j = 1; j <= need; j++) {
            if ((p[i + j] & 0xC0) != 0x80)
                return 0;
            cp = (cp << 6) | (p[i + j] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return 0;
        i += need + 1;
    }
    return 1;
}

int galidx_desc_valid(const float *d)
{
    for (int i = 0; i < DIM; i++)
        if (!(d[i] >= -FW_GALLERY_VALUE_MAX && d[i] <= FW_GALLERY_VALUE_MAX)) /* NaN fails too */
            return 0;
    return 1;
}

static float sqnorm(const float *v)
{
    double s = 0;
    for (int i = 0; i < DIM; i++)
        s += (double)v[i] * v[i];
    return (float)s;
}

/* ---- life cycle ------------------------------------------------------------------------- */

static size_t align_up(size_t v, size_t a) { return (v + a - 1) / a * a; }

/* Carve the per-row arrays out of one MAP_NORESERVE mapping for max_faces rows. */
static void reserve_rows(galidx *ix, uint32_t max_faces)
{
    size_t m = max_faces, off[6], len = 0;
    size_t sz[6] = { DIM * sizeof(float), sizeof(float), sizeof(uint64_t),
                     sizeof(galidx_subj *), sizeof(uint32_t), sizeof(void *) };
    if (!max_faces || m > SIZE_MAX / 1024) /* 32-bit address space: no reservation */
        return;
    for (int i = 0; i < 6; i++) {
        off[i] = len;
        len = align_up(len + m * sz[i], 4096);
    }
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
    if (p == MAP_FAILED)
        return;
    char *b = p;
    ix->region = p;
    ix->region_len = len;
    ix->x = (float *)(void *)(b + off[0]);
    ix->norms = (float *)(void *)(b + off[1]);
    ix->ids = (uint64_t *)(void *)(b + off[2]);
    ix->subj = (galidx_subj **)(void *)(b + off[3]);
    ix->spos = (uint32_t *)(void *)(b + off[4]);
    ix->meta = (void **)(void *)(b + off[5]);
    ix->cap = max_faces;
}

galidx *galidx_new(const unsigned char key[16], uint32_t max_faces)
{
    galidx *ix = calloc(1, sizeof *ix);
    if (!ix)
        return NULL;
    memcpy(ix->key, key, sizeof ix->key);
    reserve_rows(ix, max_faces);
    return ix;
}

void galidx_subj_free(galidx_subj *s)
{
    if (!s)
        return;
    free(s->rows);
    free(s);
}

void galidx_free(galidx *ix)
{
    if (!ix)
        return;
    for (uint32_t r = 0; r < ix->n; r++)
        free(ix->meta[r]);
    for (uint32_t i = 0; i < ix->smap_cap; i++)
        galidx_subj_free(ix->smap[i]);
    if (ix->region) {
        munmap(ix->region, ix->region_len);
    } else {
        free(ix->x);
        free(ix->norms);
        free(ix->ids);
        free(ix->subj);
        free(ix->spos);
        free(ix->meta);
    }
    free(ix->idmap);
    free(ix->smap);
    free(ix);
}

uint32_t galidx_faces(const galidx *ix) { return ix->n; }
uint32_t galidx_subjects(const galidx *ix) { return ix->nsubj; }
uint64_t galidx_max_id(const galidx *ix) { return ix->max_id; }

uint64_t galidx_mem_bytes(const galidx *ix)
{
    uint64_t per_row = DIM * sizeof(float) + sizeof(float) + sizeof(uint64_t) +
                       sizeof(galidx_subj *) + sizeof(uint32_t) + sizeof(void *);
    /* Subjects' row lists are counted at 4 bytes a face: their capacity is writer-private. In
     * the reserved mapping only the rows in use have been touched. */
    uint64_t rows = ix->region ? ix->n : ix->cap;
    return sizeof *ix + rows * per_row + (uint64_t)ix->idmap_cap * 16 +
           (uint64_t)ix->smap_cap * sizeof(galidx_subj *) + ix->meta_bytes + ix->subj_bytes +
           (uint64_t)ix->n * sizeof(uint32_t);
}

/* ---- face id map ------------------------------------------------------------------------ */

static uint32_t idmap_find_slot(const uint64_t *map, uint32_t cap, uint64_t id)
{
    uint32_t mask = cap - 1, i = (uint32_t)mix64(id) & mask;
    while (map[2 * i] && map[2 * i] != id)
        i = (i + 1) & mask;
    return i;
}

static void idmap_put(uint64_t *map, uint32_t cap, uint64_t id, uint32_t row)
{
    uint32_t i = idmap_find_slot(map, cap, id);
    map[2 * i] = id;
    map[2 * i + 1] = row;
}

static int idmap_get(const galidx *ix, uint64_t id, uint32_t *row)
{
    if (!ix->idmap_cap || id == 0)
        return 0;
    uint32_t i = idmap_find_slot(ix->idmap, ix->idmap_cap, id);
    if (!ix->idmap[2 * i])
        return 0;
    *row = (uint32_t)ix->idmap[2 * i + 1];
    return 1;
}

int galidx_has_face(const galidx *ix, uint64_t face_id)
{
    uint32_t row;
    return idmap_get(ix, face_id, &row);
}

/* Linear probing with backward-shift deletion: no tombstones, so probe chains never rot. */
static void idmap_del(galidx *ix, uint64_t id)
{
    uint64_t *m = ix->idmap;
    uint32_t mask = ix->idmap_cap - 1, i = idmap_find_slot(m, ix->idmap_cap, id);
    if (!m[2 * i])
        return;
    for (uint32_t j = i;;) {
        m[2 * i] = 0;
        for (;;) {
            j = (j + 1) & mask;
            if (!m[2 * j])
                return;
            uint32_t home = (uint32_t)mix64(m[2 * j]) & mask;
            /* j's entry may move to i unless its home lies cyclically in (i, j]. */
            if (i <= j ? (i < home && home <= j) : (i < home || home <= j))
                continue;
            break;
        }
        m[2 * i] = m[2 * j];
        m[2 * i + 1] = m[2 * j + 1];
        i = j;
    }
}

/* ---- subject map and treap -------------------------------------------------------------- */

static uint32_t smap_find_slot(galidx_subj *const *map, uint32_t cap, uint64_t hash,
                               const char *name, size_t len)
{
    uint32_t mask = cap - 1, i = (uint32_t)hash & mask;
    while (map[i] && !(map[i]->hash == hash && map[i]->len == len &&
                       memcmp(map[i]->name, name, len) == 0))
        i = (i + 1) & mask;
    return i;
}

galidx_subj *galidx_find_subject(const galidx *ix, const char *name, size_t len)
{
    if (!ix->smap_cap)
        return NULL;
    uint64_t h = name_hash(ix->key, name, len);
    return ix->smap[smap_find_slot(ix->smap, ix->smap_cap, h, name, len)];
}

static void smap_del(galidx *ix, galidx_subj *s)
{
    galidx_subj **m = ix->smap;
    uint32_t mask = ix->smap_cap - 1;
    uint32_t i = smap_find_slot(m, ix->smap_cap, s->hash, s->name, s->len);
    if (!m[i])
        return;
    for (uint32_t j = i;;) {
        m[i] = NULL;
        for (;;) {
            j = (j + 1) & mask;
            if (!m[j])
                return;
            uint32_t home = (uint32_t)m[j]->hash & mask;
            if (i <= j ? (i < home && home <= j) : (i < home || home <= j))
                continue;
            break;
        }
        m[i] = m[j];
        i = j;
    }
}

static void treap_split(galidx_subj *t, const galidx_subj *key, galidx_subj **l, galidx_subj **r)
{
    if (!t) {
        *l = *r = NULL;
    } else if (name_cmp(t->name, t->len, key->name, key->len) < 0) {
        treap_split(t->right, key, &t->right, r);
        *l = t;
    } else {
        treap_split(t->left, key, l, &t->left);
        *r = t;
    }
}

static galidx_subj *treap_insert(galidx_subj *t, galidx_subj *s)
{
    if (!t)
        return s;
    if (s->hash > t->hash) {
        treap_split(t, s, &s->left, &s->right);
        return s;
    }
    if (name_cmp(s->name, s->len, t->name, t->len) < 0)
        t->left = treap_insert(t->left, s);
    else
        t->right = treap_insert(t->right, s);
    return t;
}

static galidx_subj *treap_merge(galidx_subj *a, galidx_subj *b)
{
    if (!a)
        return b;
    if (!b)
        return a;
    if (a->hash > b->hash) {
        a->right = treap_merge(a->right, b);
        return a;
    }
    b->left = treap_merge(a, b->left);
    return b;
}

static galidx_subj *treap_erase(galidx_subj *t, const galidx_subj *s)
{
    if (!t)
        return NULL;
    if (t == s)
        return treap_merge(t->left, t->right);
    if (name_cmp(s->name, s->len, t->name, t->len) < 0)
        t->left = treap_erase(t->left, s);
    else
        t->right = treap_erase(t->right, s);
    return t;
}

galidx_subj *galidx_subj_new(const galidx *ix, const char *name, size_t len)
{
    galidx_subj *s = calloc(1, sizeof *s + len + 1);
    if (!s)
        return NULL;
    memcpy(s->name, name, len);
    s->len = (uint16_t)len;
    s->hash = name_hash(ix->key, name, len);
    return s;
}

int galidx_subj_in_index(const galidx_subj *s) { return s->in_index; }

int galidx_subj_same(const galidx_subj *s, const char *name, size_t len)
{
    return s->len == len && memcmp(s->name, name, len) == 0;
}

int galidx_subj_reserve(galidx_subj *s, uint32_t extra)
{
    uint64_t need = (uint64_t)s->n + s->pending + extra;
    if (need > s->cap) {
        uint64_t c = s->cap ? s->cap : 4;
        while (c < need)
            c *= 2;
        if (c > UINT32_MAX)
            return -1;
        uint32_t *r = realloc(s->rows, c * sizeof *r);
        if (!r)
            return -1;
        s->rows = r;
        s->cap = (uint32_t)c;
    }
    s->pending += extra;
    return 0;
}

void galidx_subj_unreserve(galidx_subj *s, uint32_t n)
{
    s->pending -= n < s->pending ? n : s->pending;
    if (!s->in_index && !s->pending)
        galidx_subj_free(s);
}

/* ---- growth ----------------------------------------------------------------------------- */

void galidx_grow_release(galidx_grow *gr)
{
    free(gr->x);
    free(gr->norms);
    free(gr->ids);
    free(gr->subj);
    free(gr->spos);
    free(gr->meta);
    free(gr->idmap);
    free(gr->smap);
    memset(gr, 0, sizeof *gr);
}

int galidx_grow_prepare(const galidx *ix, uint64_t faces, uint64_t subjects, galidx_grow *gr)
{
    memset(gr, 0, sizeof *gr);
    if (faces > UINT32_MAX / 4 || subjects > UINT32_MAX / 4)
        return -1;
    if (faces > ix->cap && ix->region)
        return -1; /* beyond max_faces: the caller checks before */
    if (faces > ix->cap) {
        uint32_t cap = pow2_at_least(faces, 64);
        uint32_t n = ix->n;
        gr->face_cap = cap;
        gr->x = aligned_alloc(64, (size_t)cap * DIM * sizeof(float));
        gr->norms = malloc((size_t)cap * sizeof(float));
        gr->ids = malloc((size_t)cap * sizeof(uint64_t));
        gr->subj = malloc((size_t)cap * sizeof(galidx_subj *));
        gr->spos = malloc((size_t)cap * sizeof(uint32_t));
        gr->meta = malloc((size_t)cap * sizeof(void *));
        if (!gr->x || !gr->norms || !gr->ids || !gr->subj || !gr->spos || !gr->meta)
            goto err;
        if (n) {
            memcpy(gr->x, ix->x, (size_t)n * DIM * sizeof(float));
            memcpy(gr->norms, ix->norms, (size_t)n * sizeof(float));
            memcpy(gr->ids, ix->ids, (size_t)n * sizeof(uint64_t));
            memcpy(gr->subj, ix->subj, (size_t)n * sizeof(galidx_subj *));
            memcpy(gr->spos, ix->spos, (size_t)n * sizeof(uint32_t));
            memcpy(gr->meta, ix->meta, (size_t)n * sizeof(void *));
        }
        gr->active = 1;
    }
    if (faces * 2 > ix->idmap_cap) {
        uint32_t cap = pow2_at_least(faces * 2, 64);
        gr->idmap = calloc(cap, 2 * sizeof(uint64_t));
        if (!gr->idmap)
            goto err;
        gr->idmap_cap = cap;
        for (uint32_t r = 0; r < ix->n; r++)
            idmap_put(gr->idmap, cap, ix->ids[r], r);
        gr->active = 1;
    }
    if (subjects * 2 > ix->smap_cap) {
        uint32_t cap = pow2_at_least(subjects * 2, 64);
        gr->smap = calloc(cap, sizeof(galidx_subj *));
        if (!gr->smap)
            goto err;
        gr->smap_cap = cap;
        for (uint32_t i = 0; i < ix->smap_cap; i++) {
            galidx_subj *s = ix->smap[i];
            if (s)
                gr->smap[smap_find_slot(gr->smap, cap, s->hash, s->name, s->len)] = s;
        }
        gr->active = 1;
    }
    return 0;
err:
    galidx_grow_release(gr);
    return -1;
}

#define SWAP_PTR(a, b) do { void *t_ = (void *)(a); (a) = (b); (b) = t_; } while (0)

void galidx_grow_commit(galidx *ix, galidx_grow *gr)
{
    if (gr->x) {
        float *x = ix->x, *nm = ix->norms;
        uint64_t *ids = ix->ids;
        galidx_subj **sj = ix->subj;
        uint32_t *sp = ix->spos;
        void **mt = ix->meta;
        ix->x = gr->x; gr->x = x;
        ix->norms = gr->norms; gr->norms = nm;
        ix->ids = gr->ids; gr->ids = ids;
        ix->subj = gr->subj; gr->subj = sj;
        ix->spos = gr->spos; gr->spos = sp;
        ix->meta = gr->meta; gr->meta = mt;
        ix->cap = gr->face_cap;
    }
    if (gr->idmap) {
        uint64_t *m = ix->idmap;
        ix->idmap = gr->idmap;
        gr->idmap = m;
        ix->idmap_cap = gr->idmap_cap;
    }
    if (gr->smap) {
        galidx_subj **m = ix->smap;
        ix->smap = gr->smap;
        gr->smap = m;
        ix->smap_cap = gr->smap_cap;
    }
}

/* ---- mutations -------------------------------------------------------------------------- */

void *galidx_meta_new(const void *data, size_t len, int *oom)
{
    *oom = 0;
    if (!len)
        return NULL;
    meta_block *m = malloc(sizeof *m + len);
    if (!m) {
        *oom = 1;
        return NULL;
    }
    m->len = (uint16_t)len;
    memcpy(m->data, data, len);
    return m;
}

void galidx_meta_free(void *meta) { free(meta); }

void galidx_apply_enroll(galidx *ix, uint64_t face_id, galidx_subj *s, void *meta,
                         const float *desc)
{
    uint32_t r = ix->n++;
    if (!s->in_index) {
        ix->smap[smap_find_slot(ix->smap, ix->smap_cap, s->hash, s->name, s->len)] = s;
        ix->root = treap_insert(ix->root, s);
        s->in_index = 1;
        ix->nsubj++;
        ix->subj_bytes += sizeof *s + s->len + 1;
    }
    if (s->pending)
        s->pending--;
    memcpy(ix->x + (size_t)r * DIM, desc, DIM * sizeof(float));
    ix->norms[r] = sqnorm(desc);
    if (ix->norms[r] > ix->max_norm)
        ix->max_norm = ix->norms[r];
    ix->ids[r] = face_id;
    ix->subj[r] = s;
    ix->spos[r] = s->n;
    s->rows[s->n++] = r;
    ix->meta[r] = meta;
    if (meta)
        ix->meta_bytes += sizeof(meta_block) + ((meta_block *)meta)->len;
    idmap_put(ix->idmap, ix->idmap_cap, face_id, r);
    if (face_id > ix->max_id)
        ix->max_id = face_id;
}

static void subj_drop(galidx *ix, galidx_subj *s)
{
    smap_del(ix, s);
    ix->root = treap_erase(ix->root, s);
    s->left = s->right = NULL;
    s->in_index = 0;
    ix->nsubj--;
    ix->subj_bytes -= sizeof *s + s->len + 1;
    if (!s->pending)
        galidx_subj_free(s);
}

/* Remove row r: unlink it from its subject, then move the last row into the hole. The subject
 * record itself is left to the caller (it may be about to lose more faces). */
static void remove_row(galidx *ix, uint32_t r)
{
    galidx_subj *s = ix->subj[r];
    uint32_t p = ix->spos[r], moved = s->rows[s->n - 1];
    s->rows[p] = moved;
    ix->spos[moved] = p;
    s->n--;

    if (ix->meta[r]) {
        ix->meta_bytes -= sizeof(meta_block) + ((meta_block *)ix->meta[r])->len;
        free(ix->meta[r]);
    }
    idmap_del(ix, ix->ids[r]);

    uint32_t last = --ix->n;
    if (r != last) {
        memcpy(ix->x + (size_t)r * DIM, ix->x + (size_t)last * DIM, DIM * sizeof(float));
        ix->norms[r] = ix->norms[last];
        ix->ids[r] = ix->ids[last];
        ix->subj[r] = ix->subj[last];
        ix->spos[r] = ix->spos[last];
        ix->meta[r] = ix->meta[last];
        idmap_put(ix->idmap, ix->idmap_cap, ix->ids[r], r);
        ix->subj[r]->rows[ix->spos[r]] = r;
    }
}

uint32_t galidx_apply_delete_face(galidx *ix, uint64_t face_id)
{
    uint32_t r;
    if (!idmap_get(ix, face_id, &r))
        return 0;
    galidx_subj *s = ix->subj[r];
    remove_row(ix, r);
    if (!s->n)
        subj_drop(ix, s);
    return 1;
}

uint32_t galidx_apply_delete_subject(galidx *ix, const char *name, size_t len)
{
    galidx_subj *s = galidx_find_subject(ix, name, len);
    if (!s)
        return 0;
    uint32_t count = s->n;
    while (s->n)
        remove_row(ix, s->rows[s->n - 1]);
    subj_drop(ix, s);
    return count;
}

/* ---- readers ---------------------------------------------------------------------------- */

typedef struct hent {
    float d;      /* squared distance */
    uint32_t row;
} hent;

static void heap_sift_down(hent *h, int n, int i)
{
    for (;;) {
        int l = 2 * i + 1, m = i;
        if (l < n && h[l].d > h[m].d)
            m = l;
        if (l + 1 < n && h[l + 1].d > h[m].d)
            m = l + 1;
        if (m == i)
            return;
        hent t = h[i];
        h[i] = h[m];
        h[m] = t;
        i = m;
    }
}

static void heap_push(hent *h, int n, hent e) /* n = size before */
{
    int i = n;
    h[i] = e;
    while (i > 0) {
        int p = (i - 1) / 2;
        if (h[p].d >= h[i].d)
            break;
        hent t = h[i];
        h[i] = h[p];
        h[p] = t;
        i = p;
    }
}

/* Rows per block. A block is also the work between two pause points, so it is sized in time,
 * ~0.2-0.3 ms, not only for the cache: one query (sgemv) streams the matrix from memory,
 * ~0.4 ns per multiply-add here (1 M faces in ~50 ms), so at most 4096 rows (512 K MACs,
 * 2 MiB of descriptors); several queries (sgemm) reuse each row from cache, ~15 G MACs/s, so
 * at most ~2 M MACs per block (16384 dot products: 64 KiB of scratch), and at least 16 rows,
 * which with 1024 queries is still a 1024 x 16 x 128 sgemm. Smaller blocks would cost BLAS
 * call and packing overhead; larger ones hold the CPU past the pause interval. */
uint32_t galidx_search_block(int nq)
{
    uint32_t block = (uint32_t)(16384 / (nq > 0 ? nq : 1));
    if (block > 4096)
        block = 4096;
    if (block < 16)
        block = 16;
    return block;
}

int galidx_search(const galidx *ix, const float *q, int nq, int k, float max_distance,
                  fw_gallery_match *out, int *counts, const fw_pause *pause)
{
    uint32_t block = galidx_search_block(nq);
    float thr2 = INFINITY;
    if (!isinf(max_distance))
        thr2 = max_distance * max_distance;

    uint32_t n = ix->n;
    float *dots = malloc((size_t)nq * (n < block ? (n ? n : 1) : block) * sizeof(float));
    hent *heaps = malloc((size_t)nq * k * sizeof(hent));
    float *qn = malloc((size_t)nq * 3 * sizeof(float)); /* |q|^2, the bound, the threshold */
    int *hn = calloc((size_t)nq, sizeof(int));
    if (!dots || !heaps || !qn || !hn) {
        free(dots); free(heaps); free(qn); free(hn);
        return -1;
    }
    float *bound = qn + nq, *thr = qn + 2 * nq;
    for (int i = 0; i < nq; i++) {
        qn[i] = sqnorm(q + (size_t)i * DIM);
        /* The scan's squared distances are off by up to ~DIM * eps * (|q|^2 + |x|^2) (float
         * dot products, cancellation): let everything that close to the threshold through;
         * the exact test is on the recomputed distance below. */
        thr[i] = thr2 + 256 * FLT_EPSILON * (qn[i] + ix->max_norm);
        bound[i] = thr[i];
    }

    for (uint32_t off = 0; off < n; off += block) {
        uint32_t b = n - off < block ? n - off : block;
        const float *xb = ix->x + (size_t)off * DIM;
        if (nq == 1)
            cblas_sgemv(CblasRowMajor, CblasNoTrans, (int)b, DIM, -2.0f, xb, DIM, q, 1, 0.0f,
                        dots, 1);
        else
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nq, (int)b, DIM, -2.0f, q, DIM,
                        xb, DIM, 0.0f, dots, (int)b);
        const float *nb = ix->norms + off;
        for (int i = 0; i < nq; i++) {
            const float *c = dots + (size_t)i * b;
            hent *h = heaps + (size_t)i * k;
            float qni = qn[i], bd = bound[i], ti = thr[i];
            int cnt = hn[i];
            for (uint32_t j = 0; j < b; j++) {
                float d = qni + nb[j] + c[j];
                if (!(d < bd))
                    continue;
                hent e = { d < 0 ? 0 : d, off + j };
                if (cnt < k) {
                    heap_push(h, cnt++, e);
                    if (cnt == k && h[0].d < bd)
                        bd = h[0].d;
                } else {
                    h[0] = e;
                    heap_sift_down(h, k, 0);
                    bd = h[0].d < ti ? h[0].d : ti;
                }
            }
            bound[i] = bd;
            hn[i] = cnt;
        }
        /* Under the read lock: the hook must not touch the gallery (it yields the CPU). */
        fw_pause_point(pause);
    }

    for (int i = 0; i < nq; i++) {
        hent *h = heaps + (size_t)i * k;
        int cnt = hn[i], m = 0;
        /* |q|^2 + |x|^2 - 2 q.x loses precision to cancellation when q is close to x (a face
         * against itself comes out ~1e-3 away, not 0). It is good enough to pick the k
         * nearest; their distances are then recomputed directly, k x DIM flops. */
        const float *qi = q + (size_t)i * DIM;
        for (int a = 0; a < cnt; a++) {
            const float *xr = ix->x + (size_t)h[a].row * DIM;
            double s = 0;
            for (int c = 0; c < DIM; c++) {
                double e = (double)qi[c] - xr[c];
                s += e * e;
            }
            h[a].d = (float)s;
        }
        /* k <= 100: insertion sort by (distance, face id) gives a stable, total order. */
        for (int a = 1; a < cnt; a++) {
            hent e = h[a];
            int b = a - 1;
            while (b >= 0 && (h[b].d > e.d ||
                              (h[b].d == e.d && ix->ids[h[b].row] > ix->ids[e.row]))) {
                h[b + 1] = h[b];
                b--;
            }
            h[b + 1] = e;
        }
        for (int a = 0; a < cnt; a++) {
            float dist = sqrtf(h[a].d);
            if (!(dist < max_distance))
                continue;
            fw_gallery_match *o = out + (size_t)i * k + m++;
            const galidx_subj *s = ix->subj[h[a].row];
            o->face_id = ix->ids[h[a].row];
            o->distance = dist;
            o->subject_len = s->len;
            memcpy(o->subject, s->name, s->len + 1u);
        }
        counts[i] = m;
    }
    free(dots);
    free(heaps);
    free(qn);
    free(hn);
    return 0;
}

/* The smallest subject strictly after (name, len), or the first when len is 0 and !after. */
static const galidx_subj *treap_after(const galidx_subj *t, const char *name, size_t len,
                                      int after)
{
    const galidx_subj *best = NULL;
    while (t) {
        if (!after || name_cmp(t->name, t->len, name, len) > 0) {
            best = t;
            t = t->left;
        } else {
            t = t->right;
        }
    }
    return best;
}

int galidx_list(const galidx *ix, const char *cursor, size_t cursor_len, int limit,
                fw_gallery_subject *out, char *next, size_t *next_len)
{
    int n = 0;
    const galidx_subj *s = treap_after(ix->root, cursor, cursor_len, cursor_len > 0);
    /* Each step re-descends from the root (O(log n)): no stack, no parent pointers. */
    while (s && n < limit) {
        out[n].faces = s->n;
        out[n].subject_len = s->len;
        memcpy(out[n].subject, s->name, s->len + 1u);
        n++;
        s = treap_after(ix->root, s->name, s->len, 1);
    }
    *next_len = 0;
    next[0] = '\0';
    if (s && n > 0) {
        *next_len = out[n - 1].subject_len;
        memcpy(next, out[n - 1].subject, *next_len + 1);
    }
    return n;
}

int galidx_get(const galidx *ix, uint64_t face_id, fw_gallery_subject *subject, void *meta,
               size_t *meta_len, float *desc)
{
    uint32_t r;
    if (!idmap_get(ix, face_id, &r))
        return -1;
    const galidx_subj *s = ix->subj[r];
    if (subject) {
        subject->faces = s->n;
        subject->subject_len = s->len;
        memcpy(subject->subject, s->name, s->len + 1u);
    }
    const meta_block *m = ix->meta[r];
    if (meta_len)
        *meta_len = m ? m->len : 0;
    if (meta && m)
        memcpy(meta, m->data, m->len);
    if (desc)
        memcpy(desc, ix->x + (size_t)r * DIM, DIM * sizeof(float));
    return 0;
}

int galidx_visit(const galidx *ix, galidx_visit_fn fn, void *arg)
{
    for (uint32_t r = 0; r < ix->n; r++) {
        const meta_block *m = ix->meta[r];
        const galidx_subj *s = ix->subj[r];
        int rc = fn(arg, ix->ids[r], s->name, s->len, m ? m->data : NULL, m ? m->len : 0,
                    ix->x + (size_t)r * DIM);
        if (rc)
            return rc;
    }
    return 0;
}
