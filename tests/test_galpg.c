/*
 * test_galpg.c — the PostgreSQL system of record (server/galpg.h) against a real PostgreSQL
 * started by tests/tu_pg.c, and fw_gallery_apply (the follower's way into the in-memory
 * gallery) on its own.
 */
// run-under: tsan
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fw_proto.h"
#include "server/gallery.h"
#include "tests/check.h"
#include "tests/tu_server.h"

#define DIM FW_GALLERY_DIM

/* ---- helpers ---------------------------------------------------------------------------- */

static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* A deterministic descriptor for `seed`, components in [-1, 1). */
static void desc_for(uint64_t seed, float *d)
{
    uint64_t s = seed * 7919 + 1;
    for (int i = 0; i < DIM; i++)
        d[i] = (float)((double)(splitmix(&s) >> 11) / (double)(1ULL << 53) * 2.0 - 1.0);
}

static fw_gallery *mem_gallery(void)
{
    fw_gallery_options o;
    fw_gallery *g = NULL;
    char err[256];
    fw_gallery_options_default(&o);
    o.max_faces = 100000;
    if (fw_gallery_open(&o, &g, NULL, err, sizeof err) != 0)
        fprintf(stderr, "fw_gallery_open: %s\n", err);
    return g;
}

static fw_gallery_change add(uint64_t seq, uint64_t id, const char *subject, const float *desc)
{
    fw_gallery_change c = { .seq = seq, .kind = FW_GALLERY_CHANGE_ADD, .face_id = id,
                            .subject = subject, .subject_len = strlen(subject),
                            .meta = subject, .meta_len = strlen(subject), .desc = desc };
    return c;
}

static fw_gallery_change rm(uint64_t seq, uint64_t id)
{
    fw_gallery_change c = { .seq = seq, .kind = FW_GALLERY_CHANGE_REMOVE, .face_id = id };
    return c;
}

/* The subject of face id ("" when absent). */
static const char *subject_of(fw_gallery *g, uint64_t id, char *buf)
{
    fw_gallery_subject s;
    buf[0] = '\0';
    if (fw_gallery_get(g, id, &s, NULL, NULL, NULL) == FW_STATUS_OK)
        memcpy(buf, s.subject, (size_t)s.subject_len + 1);
    return buf;
}

static uint32_t faces_of(fw_gallery *g, const char *subject)
{
    fw_gallery_subject out[1];
    char next[FW_GALLERY_SUBJECT_MAX + 1], err[128];
    size_t next_len;
    int n = 0;
    /* Page through from the start, one subject a page (the galleries here are small). */
    char cur[FW_GALLERY_SUBJECT_MAX + 1];
    size_t cur_len = 0;
    for (;;) {
        if (fw_gallery_list(g, cur, cur_len, 1, out, &n, next, &next_len, err, sizeof err) !=
                FW_STATUS_OK || n == 0)
            return 0;
        if (out[0].subject_len == strlen(subject) && memcmp(out[0].subject, subject,
                                                            out[0].subject_len) == 0)
            return out[0].faces;
        if (!next_len)
            return 0;
        memcpy(cur, next, next_len);
        cur_len = next_len;
    }
}

/* ---- fw_gallery_apply -------------------------------------------------------------------- */

static void t_apply_adds_and_removes(void)
{
    fw_gallery *g = mem_gallery();
    float d1[DIM], d2[DIM], d3[DIM], got[DIM];
    char err[256], buf[FW_GALLERY_SUBJECT_MAX + 1];
    fw_gallery_info info;
    CHECK(g);
    desc_for(1, d1);
    desc_for(2, d2);
    desc_for(3, d3);
    fw_gallery_change c[] = { add(1, 10, "alice", d1), add(2, 11, "bob", d2),
                              add(3, 12, "alice", d3), rm(4, 11) };
    CHECK_EQ_INT(fw_gallery_apply(g, c, 4, err, sizeof err), 0);
    fw_gallery_info_get(g, &info);
    CHECK_EQ_INT(info.faces, 2);
    CHECK_EQ_INT(info.subjects, 1);
    CHECK_EQ_INT(info.last_seq, 4);
    CHECK_EQ_INT(info.next_face_id, 13);
    CHECK_EQ_STR(subject_of(g, 10, buf), "alice");
    CHECK_EQ_STR(subject_of(g, 11, buf), "");
    CHECK_EQ_INT(faces_of(g, "alice"), 2);
    uint8_t meta[FW_GALLERY_META_MAX];
    size_t meta_len = 0;
    CHECK_EQ_INT(fw_gallery_get(g, 12, NULL, meta, &meta_len, got), FW_STATUS_OK);
    CHECK_EQ_INT(meta_len, 5);
    CHECK(memcmp(meta, "alice", 5) == 0);
    CHECK(memcmp(got, d3, sizeof got) == 0);

    /* The search sees applied faces like enrolled ones. */
    fw_gallery_match m[1];
    int counts[1];
    CHECK_EQ_INT(fw_gallery_search(g, d3, 1, 1, INFINITY, m, counts, err, sizeof err),
                 FW_STATUS_OK);
    CHECK_EQ_INT(counts[0], 1);
    CHECK_EQ_INT(m[0].face_id, 12);
    fw_gallery_close(g);
}

static void t_apply_idempotent(void)
{
    fw_gallery *g = mem_gallery();
    float d1[DIM], d2[DIM];
    char err[256], buf[FW_GALLERY_SUBJECT_MAX + 1];
    fw_gallery_info info;
    CHECK(g);
    desc_for(1, d1);
    desc_for(2, d2);
    fw_gallery_change a[] = { add(1, 5, "carol", d1) };
    CHECK_EQ_INT(fw_gallery_apply(g, a, 1, err, sizeof err), 0);
    /* The same id again (another subject even): a no-op; an absent id removed: a no-op. */
    fw_gallery_change b[] = { add(2, 5, "dave", d2), rm(3, 99), add(0, 5, "erin", d2) };
    CHECK_EQ_INT(fw_gallery_apply(g, b, 3, err, sizeof err), 0);
    fw_gallery_info_get(g, &info);
    CHECK_EQ_INT(info.faces, 1);
    CHECK_EQ_INT(info.subjects, 1);
    CHECK_EQ_INT(info.last_seq, 3);
    CHECK_EQ_STR(subject_of(g, 5, buf), "carol");
    CHECK_EQ_INT(faces_of(g, "dave"), 0);
    fw_gallery_close(g);
}

/* Within one call: a subject loses its last face and gets a new one, an id comes and goes and
 * comes back, a new subject appears in many ADDs — every reservation path. */
static void t_apply_same_call_interplay(void)
{
    fw_gallery *g = mem_gallery();
    float d[DIM];
    char err[256], buf[FW_GALLERY_SUBJECT_MAX + 1];
    fw_gallery_info info;
    CHECK(g);
    desc_for(7, d);
    fw_gallery_change a[] = { add(1, 1, "frank", d) };
    CHECK_EQ_INT(fw_gallery_apply(g, a, 1, err, sizeof err), 0);
    fw_gallery_change b[] = { rm(2, 1), add(3, 2, "frank", d), add(4, 3, "gina", d),
                              rm(5, 3), add(6, 3, "gina", d), add(7, 4, "gina", d),
                              add(8, 4, "hank", d), rm(9, 2) };
    CHECK_EQ_INT(fw_gallery_apply(g, b, 8, err, sizeof err), 0);
    fw_gallery_info_get(g, &info);
    CHECK_EQ_INT(info.faces, 2);
    CHECK_EQ_INT(info.subjects, 1);
    CHECK_EQ_INT(info.last_seq, 9);
    CHECK_EQ_STR(subject_of(g, 3, buf), "gina");
    CHECK_EQ_STR(subject_of(g, 4, buf), "gina");
    CHECK_EQ_INT(faces_of(g, "gina"), 2);
    CHECK_EQ_INT(faces_of(g, "frank"), 0);
    CHECK_EQ_INT(faces_of(g, "hank"), 0);

    /* Many distinct new subjects and repeats in one call (the call's own subject table). */
    enum { N = 3000 };
    fw_gallery_change *c = calloc(N, sizeof *c);
    char (*names)[16] = calloc(N, sizeof *names);
    CHECK(c && names);
    for (int i = 0; i < N; i++) {
        snprintf(names[i], sizeof names[i], "s%d", i % 1000);
        c[i] = add(10 + (uint64_t)i, 100 + (uint64_t)i, names[i], d);
    }
    int rc = fw_gallery_apply(g, c, N, err, sizeof err);
    free(c);
    free(names);
    CHECK_EQ_INT(rc, 0);
    fw_gallery_info_get(g, &info);
    CHECK_EQ_INT(info.faces, 2 + N);
    CHECK_EQ_INT(info.subjects, 1 + 1000);
    CHECK_EQ_INT(faces_of(g, "s999"), 3);
    fw_gallery_close(g);
}

static void t_apply_refuses_bad_changes(void)
{
    fw_gallery *g = mem_gallery();
    float d[DIM], nan_d[DIM];
    char err[256];
    fw_gallery_info info;
    CHECK(g);
    desc_for(1, d);
    memcpy(nan_d, d, sizeof d);
    nan_d[17] = NAN;
    fw_gallery_change first[] = { add(5, 1, "ivan", d) };
    CHECK_EQ_INT(fw_gallery_apply(g, first, 1, err, sizeof err), 0);

    /* Each bad change spoils the whole call: the good ADD before it is not applied. */
    fw_gallery_change bad_desc[] = { add(6, 2, "judy", d), add(7, 3, "judy", nan_d) };
    CHECK_EQ_INT(fw_gallery_apply(g, bad_desc, 2, err, sizeof err), -1);
    CHECK_EQ_STR(err, "change seq 7: face 3 has an invalid subject, metadata or descriptor");
    fw_gallery_change bad_subj[] = { add(6, 2, "judy", d), add(7, 3, "", d) };
    bad_subj[1].subject = "a\0b";
    bad_subj[1].subject_len = 3;
    CHECK_EQ_INT(fw_gallery_apply(g, bad_subj, 2, err, sizeof err), -1);
    CHECK_EQ_STR(err, "change seq 7: face 3 has an invalid subject, metadata or descriptor");
    fw_gallery_change bad_meta[] = { add(6, 2, "judy", d) };
    bad_meta[0].meta_len = FW_GALLERY_META_MAX + 1;
    CHECK_EQ_INT(fw_gallery_apply(g, bad_meta, 1, err, sizeof err), -1);
    CHECK_EQ_STR(err, "change seq 6: face 2 has an invalid subject, metadata or descriptor");
    fw_gallery_change old_seq[] = { add(6, 2, "judy", d), add(5, 3, "judy", d) };
    CHECK_EQ_INT(fw_gallery_apply(g, old_seq, 2, err, sizeof err), -1);
    CHECK_EQ_STR(err, "change seq 5 does not follow 6");
    fw_gallery_change behind[] = { add(5, 2, "judy", d) };
    CHECK_EQ_INT(fw_gallery_apply(g, behind, 1, err, sizeof err), -1);
    CHECK_EQ_STR(err, "change seq 5 does not follow 5");
    fw_gallery_change zero_id[] = { rm(6, 0) };
    CHECK_EQ_INT(fw_gallery_apply(g, zero_id, 1, err, sizeof err), -1);
    CHECK_EQ_STR(err, "change seq 6: face id 0");
    fw_gallery_change kind[] = { rm(6, 1) };
    kind[0].kind = 3;
    CHECK_EQ_INT(fw_gallery_apply(g, kind, 1, err, sizeof err), -1);
    CHECK_EQ_STR(err, "change seq 6: unknown kind 3");
    CHECK_EQ_INT(fw_gallery_apply(g, NULL, -1, err, sizeof err), -1);
    CHECK_EQ_STR(err, "bad change list");

    fw_gallery_info_get(g, &info);
    CHECK_EQ_INT(info.faces, 1);
    CHECK_EQ_INT(info.last_seq, 5);
    CHECK_EQ_INT(faces_of(g, "judy"), 0);
    fw_gallery_close(g);
}

static void t_apply_reset_and_full(void)
{
    fw_gallery_options o;
    fw_gallery *g = NULL;
    float d[DIM];
    char err[256];
    fw_gallery_info info;
    fw_gallery_options_default(&o);
    o.max_faces = 3;
    CHECK_EQ_INT(fw_gallery_open(&o, &g, NULL, err, sizeof err), 0);
    desc_for(1, d);
    fw_gallery_change a[] = { add(1, 1, "k", d), add(2, 2, "l", d) };
    CHECK_EQ_INT(fw_gallery_apply(g, a, 2, err, sizeof err), 0);
    fw_gallery_change b[] = { add(3, 3, "m", d), add(4, 4, "n", d) };
    CHECK_EQ_INT(fw_gallery_apply(g, b, 2, err, sizeof err), -1);
    CHECK_EQ_STR(err, "gallery full (3 faces)");
    fw_gallery_info_get(g, &info);
    CHECK_EQ_INT(info.faces, 2);
    CHECK_EQ_INT(info.last_seq, 2);

    /* A full load starts from nothing, at the snapshot's seq; its faces carry seq 0. */
    CHECK_EQ_INT(fw_gallery_apply_reset(g, 40, err, sizeof err), 0);
    fw_gallery_info_get(g, &info);
    CHECK_EQ_INT(info.faces, 0);
    CHECK_EQ_INT(info.subjects, 0);
    CHECK_EQ_INT(info.last_seq, 40);
    CHECK_EQ_INT(info.next_face_id, 1);
    fw_gallery_change load[] = { add(0, 7, "k", d), add(0, 3, "k", d), add(41, 8, "o", d) };
    CHECK_EQ_INT(fw_gallery_apply(g, load, 3, err, sizeof err), 0);
    fw_gallery_info_get(g, &info);
    CHECK_EQ_INT(info.faces, 3);
    CHECK_EQ_INT(info.last_seq, 41);
    CHECK_EQ_INT(info.next_face_id, 9);
    fw_gallery_close(g);
}

static void t_apply_refuses_disk_gallery(void)
{
    fw_gallery_options o;
    fw_gallery *g = NULL;
    char dir[] = "/tmp/fwgalpg.XXXXXX", err[256];
    CHECK(mkdtemp(dir));
    fw_gallery_options_default(&o);
    o.data_dir = dir;
    CHECK_EQ_INT(fw_gallery_open(&o, &g, NULL, err, sizeof err), 0);
    fw_gallery_change c[] = { rm(1, 1) };
    int rc = fw_gallery_apply(g, c, 1, err, sizeof err);
    fw_gallery_close(g);
    CHECK_EQ_INT(tu_rmtree(dir), 0);
    CHECK_EQ_INT(rc, -1);
    CHECK_EQ_STR(err, "changes can only be applied to a memory-only gallery");
}

static const struct check_test tests[] = {
    CHECK_TEST(t_apply_adds_and_removes),
    CHECK_TEST(t_apply_idempotent),
    CHECK_TEST(t_apply_same_call_interplay),
    CHECK_TEST(t_apply_refuses_bad_changes),
    CHECK_TEST(t_apply_reset_and_full),
    CHECK_TEST(t_apply_refuses_disk_gallery),
};

int main(int argc, char **argv)
{
    return check_main(tests, CHECK_COUNT(tests), argc, argv);
}
