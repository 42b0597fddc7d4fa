/*
 * galog.c — the gallery's on-disk formats (see galog.h): CRC32C, the record codec, log
 * scanning with torn-tail / corrupt-middle detection, snapshot load and write.
 *
 * Why CRC32C: it is what the storage world uses for exactly this (ext4 metadata, iSCSI,
 * LevelDB/RocksDB logs); it detects every burst error up to 32 bits, and x86 has an
 * instruction for it. The table below is the reflected polynomial 0x82F63B78, byte at a time;
 * on x86-64 with SSE4.2 the instruction path is taken instead (checked once per call).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sodium.h>

#include "server/galidx.h"
#include "server/galog.h"

static const uint32_t crc32c_table[256] = {
    0x00000000, 0xf26b8303, 0xe13b70f7, 0x1350f3f4, 0xc79a971f, 0x35f1141c,
    0x26a1e7e8, 0xd4ca64eb, 0x8ad958cf, 0x78b2dbcc, 0x6be22838, 0x9989ab3b,
    0x4d43cfd0, 0xbf284cd3, 0xac78bf27, 0x5e133c24, 0x105ec76f, 0xe235446c,
    0xf165b798, 0x030e349b, 0xd7c45070, 0x25afd373, 0x36ff2087, 0xc494a384,
    0x9a879fa0, 0x68ec1ca3, 0x7bbcef57, 0x89d76c54, 0x5d1d08bf, 0xaf768bbc,
    0xbc267848, 0x4e4dfb4b, 0x20bd8ede, 0xd2d60ddd, 0xc186fe29, 0x33ed7d2a,
    0xe72719c1, 0x154c9ac2, 0x061c6936, 0xf477ea35, 0xaa64d611, 0x580f5512,
    0x4b5fa6e6, 0xb93425e5, 0x6dfe410e, 0x9f95c20d, 0x8cc531f9, 0x7eaeb2fa,
    0x30e349b1, 0xc288cab2, 0xd1d83946, 0x23b3ba45, 0xf779deae, 0x05125dad,
    0x1642ae59, 0xe4292d5a, 0xba3a117e, 0x4851927d, 0x5b016189, 0xa96ae28a,
    0x7da08661, 0x8fcb0562, 0x9c9bf696, 0x6ef07595, 0x417b1dbc, 0xb3109ebf,
    0xa0406d4b, 0x522bee48, 0x86e18aa3, 0x748a09a0, 0x67dafa54, 0x95b17957,
    0xcba24573, 0x39c9c670, 0x2a993584, 0xd8f2b687, 0x0c38d26c, 0xfe53516f,
    0xed03a29b, 0x1f682198, 0x5125dad3, 0xa34e59d0, 0xb01eaa24, 0x42752927,
    0x96bf4dcc, 0x64d4cecf, 0x77843d3b, 0x85efbe38, 0xdbfc821c, 0x2997011f,
    0x3ac7f2eb, 0xc8ac71e8, 0x1c661503, 0xee0d9600, 0xfd5d65f4, 0x0f36e6f7,
    0x61c69362, 0x93ad1061, 0x80fde395, 0x72966096, 0xa65c047d, 0x5437877e,
    0x4767748a, 0xb50cf789, 0xeb1fcbad, 0x197448ae, 0x0a24bb5a, 0xf84f3859,
    0x2c855cb2, 0xdeeedfb1, 0xcdbe2c45, 0x3fd5af46, 0x7198540d, 0x83f3d70e,
    0x90a324fa, 0x62c8a7f9, 0xb602c312, 0x44694011, 0x5739b3e5, 0xa55230e6,
    0xfb410cc2, 0x092a8fc1, 0x1a7a7c35, 0xe811ff36, 0x3cdb9bdd, 0xceb018de,
    0xdde0eb2a, 0x2f8b6829, 0x82f63b78, 0x709db87b, 0x63cd4b8f, 0x91a6c88c,
    0x456cac67, 0xb7072f64, 0xa457dc90, 0x563c5f93, 0x082f63b7, 0xfa44e0b4,
    0xe9141340, 0x1b7f9043, 0xcfb5f4a8, 0x3dde77ab, 0x2e8e845f, 0xdce5075c,
    0x92a8fc17, 0x60c37f14, 0x73938ce0, 0x81f80fe3, 0x55326b08, 0xa759e80b,
    0xb4091bff, 0x466298fc, 0x1871a4d8, 0xea1a27db, 0xf94ad42f, 0x0b21572c,
    0xdfeb33c7, 0x2d80b0c4, 0x3ed04330, 0xccbbc033, 0xa24bb5a6, 0x502036a5,
    0x4370c551, 0xb11b4652, 0x65d122b9, 0x97baa1ba, 0x84ea524e, 0x7681d14d,
    0x2892ed69, 0xdaf96e6a, 0xc9a99d9e, 0x3bc21e9d, 0xef087a76, 0x1d63f975,
    0x0e330a81, 0xfc588982, 0xb21572c9, 0x407ef1ca, 0x532e023e, 0xa145813d,
    0x758fe5d6, 0x87e466d5, 0x94b49521, 0x66df1622, 0x38cc2a06, 0xcaa7a905,
    0xd9f75af1, 0x2b9cd9f2, 0xff56bd19, 0x0d3d3e1a, 0x1e6dcdee, 0xec064eed,
    0xc38d26c4, 0x31e6a5c7, 0x22b65633, 0xd0ddd530, 0x0417b1db, 0xf67c32d8,
    0xe52cc12c, 0x1747422f, 0x49547e0b, 0xbb3ffd08, 0xa86f0efc, 0x5a048dff,
    0x8ecee914, 0x7ca56a17, 0x6ff599e3, 0x9d9e1ae0, 0xd3d3e1ab, 0x21b862a8,
    0x32e8915c, 0xc083125f, 0x144976b4, 0xe622f5b7, 0xf5720643, 0x07198540,
    0x590ab964, 0xab613a67, 0xb831c993, 0x4a5a4a90, 0x9e902e7b, 0x6cfbad78,
    0x7fab5e8c, 0x8dc0dd8f, 0xe330a81a, 0x115b2b19, 0x020bd8ed, 0xf0605bee,
    0x24aa3f05, 0xd6c1bc06, 0xc5914ff2, 0x37faccf1, 0x69e9f0d5, 0x9b8273d6,
    0x88d28022, 0x7ab90321, 0xae7367ca, 0x5c18e4c9, 0x4f48173d, 0xbd23943e,
    0xf36e6f75, 0x0105ec76, 0x12551f82, 0xe03e9c81, 0x34f4f86a, 0xc69f7b69,
    0xd5cf889d, 0x27a40b9e, 0x79b737ba, 0x8bdcb4b9, 0x988c474d, 0x6ae7c44e,
    0xbe2da0a5, 0x4c4623a6, 0x5f16d052, 0xad7d5351,
};

#if defined(__x86_64__)
#include <nmmintrin.h>
__attribute__((target("sse4.2")))
static uint32_t crc32c_hw(uint32_t crc, const unsigned char *p, size_t len)
{
    uint64_t c = crc;
    while (len >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        c = _mm_crc32_u64(c, v);
        p += 8;
        len -= 8;
    }
    uint32_t c32 = (uint32_t)c;
    while (len--)
        c32 = _mm_crc32_u8(c32, *p++);
    return c32;
}
#endif

uint32_t galog_crc32c(uint32_t crc, const void *data, size_t len)
{
    const unsigned char *p = data;
    crc = ~crc;
#if defined(__x86_64__)
    if (__builtin_cpu_supports("sse4.2"))
        return ~crc32c_hw(crc, p, len);
#endif
    while (len--)
        crc = crc32c_table[(crc ^ *p++) & 0xFF] ^ (crc >> 8);
    return ~crc;
}

/* ---- little-endian helpers -------------------------------------------------------------- */

static void put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }
static void put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}
static void put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}
static uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t get64(const uint8_t *p) { return get32(p) | (uint64_t)get32(p + 4) << 32; }

/* ---- record codec ----------------------------------------------------------------------- */

static size_t payload_size(const galog_rec *r)
{
    switch (r->type) {
    case GALOG_ENROLL:
        return 8 + 2 + (size_t)r->subject_len + 2 + (size_t)r->meta_len + 4 * FW_GALLERY_DIM;
    case GALOG_DELETE_FACE:
        return 8;
    case GALOG_DELETE_SUBJECT:
        return 2 + (size_t)r->subject_len;
    default:
        return 0;
    }
}

size_t galog_rec_size(const galog_rec *r) { return GALOG_REC_OVERHEAD + payload_size(r); }

size_t galog_encode(const galog_rec *r, uint8_t *buf)
{
    size_t len = 1 + 8 + payload_size(r);
    uint8_t *p = buf + 4;
    put32(buf, (uint32_t)len);
    *p++ = r->type;
    put64(p, r->seq);
    p += 8;
    if (r->type == GALOG_ENROLL || r->type == GALOG_DELETE_FACE) {
        put64(p, r->face_id);
        p += 8;
    }
    if (r->type == GALOG_ENROLL || r->type == GALOG_DELETE_SUBJECT) {
        put16(p, r->subject_len);
        memcpy(p + 2, r->subject, r->subject_len);
        p += 2 + r->subject_len;
    }
    if (r->type == GALOG_ENROLL) {
        put16(p, r->meta_len);
        if (r->meta_len)
            memcpy(p + 2, r->meta, r->meta_len);
        p += 2 + r->meta_len;
        for (int i = 0; i < FW_GALLERY_DIM; i++) {
            uint32_t bits;
            memcpy(&bits, &r->desc[i], 4);
            put32(p, bits);
            p += 4;
        }
    }
    put32(p, galog_crc32c(0, buf, 4 + len));
    return 4 + len + 4;
}

int galog_decode(const uint8_t *p, size_t avail, galog_rec *r, size_t *used)
{
    if (avail < 4)
        return -1;
    uint32_t len = get32(p);
    if (len < 1 + 8 || len > GALOG_REC_MAX - 8 || avail - 4 < (size_t)len + 4)
        return -1;
    uint8_t type = p[4];
    if (type < GALOG_ENROLL || type > GALOG_DELETE_SUBJECT)
        return -1;
    if (galog_crc32c(0, p, 4 + (size_t)len) != get32(p + 4 + len))
        return -1;
    const uint8_t *q = p + 5, *end = p + 4 + len;
    memset(r, 0, sizeof *r);
    r->type = type;
    r->seq = get64(q);
    q += 8;
    /* The checksum matched, but a record is still input: every field is bounds-checked. */
    if (type == GALOG_ENROLL || type == GALOG_DELETE_FACE) {
        if (end - q < 8)
            return -1;
        r->face_id = get64(q);
        q += 8;
        if (r->face_id == 0)
            return -1;
    }
    if (type == GALOG_ENROLL || type == GALOG_DELETE_SUBJECT) {
        if (end - q < 2)
            return -1;
        r->subject_len = get16(q);
        q += 2;
        if (end - q < r->subject_len || !galidx_subject_valid((const char *)q, r->subject_len))
            return -1;
        r->subject = (const char *)q;
        q += r->subject_len;
    }
    if (type == GALOG_ENROLL) {
        if (end - q < 2)
            return -1;
        r->meta_len = get16(q);
        q += 2;
        if (r->meta_len > FW_GALLERY_META_MAX || end - q < r->meta_len)
            return -1;
        r->meta = q;
        q += r->meta_len;
        if (end - q < 4 * FW_GALLERY_DIM)
            return -1;
        for (int i = 0; i < FW_GALLERY_DIM; i++) {
            uint32_t bits = get32(q);
            memcpy(&r->desc[i], &bits, 4);
            q += 4;
        }
        if (!galidx_desc_valid(r->desc))
            return -1;
    }
    if (q != end)
        return -1;
    *used = 4 + (size_t)len + 4;
    return 0;
}

/* ---- sealed records (--gallery-key) ----------------------------------------------------- */

/* Associated data: file_id || len || seq, the record's place. */
static void rec_ad(uint8_t ad[GALOG_FILE_ID_LEN + 12], const uint8_t *file_id,
                   const uint8_t *len_seq)
{
    memcpy(ad, file_id, GALOG_FILE_ID_LEN);
    memcpy(ad + GALOG_FILE_ID_LEN, len_seq, 12);
}

size_t galog_encode_key(const uint8_t *key, const uint8_t *file_id, const galog_rec *r,
                        uint8_t *buf)
{
    if (!key)
        return galog_encode(r, buf);
    /* Encode in plaintext, then seal type || payload: one encoder for both formats. */
    uint8_t pt[GALOG_REC_MAX], ad[GALOG_FILE_ID_LEN + 12];
    size_t n = galog_encode(r, pt);
    size_t ptlen = n - GALOG_REC_OVERHEAD + 1, out = 0;
    pt[12] = pt[4]; /* type, just before the payload at 13 */
    uint32_t len = (uint32_t)(8 + ptlen + FW_REC_OVERHEAD);
    put32(buf, len);
    put64(buf + 4, r->seq);
    rec_ad(ad, file_id, buf);
    /* cannot fail: the room is exactly what is needed */
    (void)fw_keys_record_seal(key, ad, sizeof ad, pt + 12, ptlen, buf + 12, len - 8, &out);
    sodium_memzero(pt, sizeof pt);
    return 4 + (size_t)len;
}

int galog_decode_key(const uint8_t *key, const uint8_t *file_id, const uint8_t *p, size_t avail,
                     galog_rec *r, size_t *used, uint8_t *scratch)
{
    if (!key)
        return galog_decode(p, avail, r, used);
    if (avail < 12)
        return -1;
    uint32_t len = get32(p);
    if (len < 8 + FW_REC_OVERHEAD + 1 || len > GALOG_SREC_MAX - 4 || avail - 4 < len)
        return -1;
    uint8_t ad[GALOG_FILE_ID_LEN + 12];
    size_t ptlen = 0, u;
    rec_ad(ad, file_id, p);
    /* Open type || payload at scratch + 12, then rebuild the plaintext record around it
     * (len | type | seq | payload | crc) so galog_decode validates every field as always. */
    if (fw_keys_record_open(key, ad, sizeof ad, p + 12, len - 8, scratch + 12,
                            GALOG_REC_MAX - 16, &ptlen) != 0 || ptlen < 1)
        return -1;
    scratch[4] = scratch[12];
    memcpy(scratch + 5, p + 4, 8);
    put32(scratch, (uint32_t)(ptlen + 8));
    put32(scratch + 4 + ptlen + 8, galog_crc32c(0, scratch, 4 + ptlen + 8));
    if (galog_decode(scratch, 4 + ptlen + 8 + 4, r, &u) != 0)
        return -1;
    *used = 4 + (size_t)len;
    return 0;
}

size_t galog_log_hdr_size(const uint8_t *key) { return key ? GALOG_ELOG_HDR : GALOG_LOG_HDR; }

/* Does the key fit the header at buf (magic already matched the key's format)? */
static int kcv_ok(const uint8_t *key, const uint8_t *file_id, const uint8_t *kcv)
{
    uint8_t want[FW_REC_KCV_LEN];
    fw_keys_key_check(key, file_id, GALOG_FILE_ID_LEN, want);
    return sodium_memcmp(want, kcv, FW_REC_KCV_LEN) == 0;
}

/* The key-versus-format checks shared by log and snapshot: 0 if they fit, else -1 with
 * "NAME: reason". Only the magic is looked at here; the rest of the header is checked as
 * before (a torn or corrupt header stays a --repair matter). */
static int mode_check(const uint8_t *buf, size_t len, const char *name, const char *plain_magic,
                      const char *enc_magic, const uint8_t *key, char *err, size_t errlen)
{
    if (len >= 8 && !key && memcmp(buf, enc_magic, 8) == 0) {
        snprintf(err, errlen, "%s: " GALOG_ERR_NEED_KEY, name);
        return -1;
    }
    if (len >= 8 && key && memcmp(buf, plain_magic, 8) == 0) {
        snprintf(err, errlen, "%s: " GALOG_ERR_NOT_ENCRYPTED, name);
        return -1;
    }
    return 0;
}

/* ---- reading ---------------------------------------------------------------------------- */

int galog_scan_log(const uint8_t *buf, size_t len, const uint8_t *key, uint64_t after_seq,
                   int repair, galog_rec_fn fn, void *arg, galog_scan *res, char *err,
                   size_t errlen)
{
    uint8_t scratch[GALOG_REC_MAX];
    size_t hdr = galog_log_hdr_size(key);
    memset(res, 0, sizeof *res);
    if (mode_check(buf, len, GALOG_LOG_NAME, "FWGLOG01", "FWGLOGE1", key, err, errlen) != 0)
        return -1;
    if (len < hdr || memcmp(buf, key ? "FWGLOGE1" : "FWGLOG01", 8) != 0 ||
        galog_crc32c(0, buf, hdr - 4) != get32(buf + hdr - 4)) {
        /* The header is written to a temp file and renamed in after a sync, so a bad one is
         * damage, not a crash artefact. */
        if (!repair) {
            snprintf(err, errlen, GALOG_LOG_NAME ": bad header (%zu bytes); start with --repair "
                     "to discard the log", len);
            return -1;
        }
        res->start_seq = res->last_seq = after_seq;
        res->dropped_bytes = len;
        res->dropped_runs = 1;
        return 0; /* end = 0: the caller writes a fresh log */
    }
    if (key) {
        memcpy(res->file_id, buf + 16, GALOG_FILE_ID_LEN);
        if (!kcv_ok(key, res->file_id, buf + 16 + GALOG_FILE_ID_LEN)) {
            snprintf(err, errlen, GALOG_LOG_NAME ": " GALOG_ERR_WRONG_KEY);
            return -1;
        }
    }
    res->start_seq = get64(buf + 8);
    if (res->start_seq > after_seq && !repair) {
        snprintf(err, errlen, GALOG_LOG_NAME ": starts after seq %llu but the records before it "
                 "end at seq %llu: records are missing; start with --repair to accept the loss",
                 (unsigned long long)res->start_seq, (unsigned long long)after_seq);
        return -1;
    }
    uint64_t expected = res->start_seq + 1;
    size_t off = hdr;
    res->last_seq = res->start_seq;
    while (off < len) {
        galog_rec r;
        size_t used;
        if (galog_decode_key(key, res->file_id, buf + off, len - off, &r, &used, scratch) == 0 &&
            r.seq == expected) {
            if (r.seq > after_seq) {
                if (fn(arg, &r, err, errlen))
                    return -1;
                res->records++;
            }
            res->last_seq = r.seq;
            expected++;
            off += used;
            continue;
        }
        /* A bad record: is anything valid after it? Cheap field checks reject almost every
         * offset before a checksum is computed. */
        size_t y;
        galog_rec ry;
        for (y = off + 1; y < len; y++)
            if (galog_decode_key(key, res->file_id, buf + y, len - y, &ry, &used, scratch) == 0 &&
                ry.seq >= expected)
                break;
        if (y >= len) {
            res->truncated = len - off;
            break;
        }
        if (!repair) {
            snprintf(err, errlen, GALOG_LOG_NAME ": corrupt record at offset %zu (seq %llu "
                     "expected) followed by a valid record at offset %zu (seq %llu); start with "
                     "--repair to drop the %zu bad bytes", off, (unsigned long long)expected, y,
                     (unsigned long long)ry.seq, y - off);
            return -1;
        }
        res->dropped_bytes += y - off;
        res->dropped_runs++;
        expected = ry.seq;
        off = y;
    }
    res->end = off;
    return 0;
}

int galog_load_snapshot(const uint8_t *buf, size_t len, const uint8_t *key, int repair,
                        galog_rec_fn fn, void *arg, galog_snap_info *info, char *err,
                        size_t errlen)
{
    uint8_t scratch[GALOG_REC_MAX];
    const uint8_t *fid = NULL; /* encrypted: the header's file id, once it is checked */
    size_t hdr = key ? GALOG_ESNAP_HDR : GALOG_SNAP_HDR;
    memset(info, 0, sizeof *info);
    if (mode_check(buf, len, GALOG_SNAP_NAME, "FWGSNP01", "FWGSNPE1", key, err, errlen) != 0)
        return -1;
    if (len < hdr || memcmp(buf, key ? "FWGSNPE1" : "FWGSNP01", 8) != 0 ||
        galog_crc32c(0, buf, hdr - 4) != get32(buf + hdr - 4)) {
        if (!repair) {
            snprintf(err, errlen, GALOG_SNAP_NAME ": bad header; start with --repair to "
                     "discard the snapshot");
            return -1;
        }
        info->damaged = 1;
        return 0;
    }
    if (key)
        fid = buf + 32;
    if (key && !kcv_ok(key, fid, buf + 32 + GALOG_FILE_ID_LEN)) {
        snprintf(err, errlen, GALOG_SNAP_NAME ": " GALOG_ERR_WRONG_KEY);
        return -1;
    }
    info->last_seq = get64(buf + 8);
    info->next_face_id = get64(buf + 16);
    info->faces = get64(buf + 24);
    size_t off = hdr;
    for (uint64_t i = 0; i < info->faces; i++) {
        galog_rec r;
        size_t used;
        /* Encrypted snapshots number their records 1, 2, ...: none can be dropped, repeated
         * or reordered without a tag or sequence failure. */
        if (galog_decode_key(key, fid, buf + off, len - off, &r, &used, scratch) != 0 ||
            r.type != GALOG_ENROLL || (key && r.seq != i + 1)) {
            if (!repair) {
                snprintf(err, errlen, GALOG_SNAP_NAME ": damaged record at offset %zu (face %llu "
                         "of %llu); start with --repair to keep the faces before it", off,
                         (unsigned long long)i, (unsigned long long)info->faces);
                return -1;
            }
            info->damaged = 1;
            return 0;
        }
        if (fn(arg, &r, err, errlen))
            return -1;
        info->loaded++;
        off += used;
    }
    int trailer_ok;
    if (key) {
        /* The trailer is the sealed first 32 header bytes: the count and seqs are authentic. */
        uint8_t t[32];
        size_t tl = 0;
        trailer_ok = len - off == GALOG_ESNAP_TRAILER &&
                     fw_keys_record_open(key, fid, GALOG_FILE_ID_LEN, buf + off,
                                         GALOG_ESNAP_TRAILER, t, sizeof t, &tl) == 0 &&
                     tl == 32 && memcmp(t, buf, 32) == 0;
    } else {
        trailer_ok = len - off == GALOG_SNAP_TRAILER && memcmp(buf + off, "FWGSEND1", 8) == 0 &&
                     get64(buf + off + 8) == info->faces &&
                     galog_crc32c(0, buf + off, 16) == get32(buf + off + 16);
    }
    if (!trailer_ok) {
        if (!repair) {
            snprintf(err, errlen, GALOG_SNAP_NAME ": bad trailer at offset %zu", off);
            return -1;
        }
        info->damaged = 1;
    }
    return 0;
}

int galog_snap_peek(const uint8_t *buf, size_t len, const uint8_t *key, uint64_t *last_seq)
{
    size_t hdr = key ? GALOG_ESNAP_HDR : GALOG_SNAP_HDR;
    if (len < hdr || memcmp(buf, key ? "FWGSNPE1" : "FWGSNP01", 8) != 0 ||
        galog_crc32c(0, buf, hdr - 4) != get32(buf + hdr - 4) ||
        (key && !kcv_ok(key, buf + 32, buf + 32 + GALOG_FILE_ID_LEN)))
        return -1;
    *last_seq = get64(buf + 8);
    return 0;
}

/* ---- writing ---------------------------------------------------------------------------- */

int galog_write_all(const fw_gallery_io *io, int fd, const void *buf, size_t len, off_t off)
{
    const uint8_t *p = buf;
    while (len) {
        ssize_t n = io && io->pwrite ? io->pwrite(io->ctx, fd, p, len, off)
                                     : pwrite(fd, p, len, off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (n == 0) {
            errno = EIO;
            return -1;
        }
        p += n;
        len -= (size_t)n;
        off += n;
    }
    return 0;
}

int galog_datasync(const fw_gallery_io *io, int fd)
{
    return io && io->fdatasync ? io->fdatasync(io->ctx, fd) : fdatasync(fd);
}

int galog_log_create(int dirfd, const fw_gallery_io *io, uint64_t start_seq, char *err,
                     size_t errlen)
{
    return galog_log_create_key(dirfd, io, NULL, start_seq, NULL, err, errlen);
}

int galog_log_create_key(int dirfd, const fw_gallery_io *io, const uint8_t *key,
                         uint64_t start_seq, uint8_t *file_id, char *err, size_t errlen)
{
    uint8_t h[GALOG_ELOG_HDR];
    size_t hl = galog_log_hdr_size(key);
    if (key) {
        memcpy(h, "FWGLOGE1", 8);
        put64(h + 8, start_seq);
        randombytes_buf(h + 16, GALOG_FILE_ID_LEN);
        fw_keys_key_check(key, h + 16, GALOG_FILE_ID_LEN, h + 16 + GALOG_FILE_ID_LEN);
    } else {
        memcpy(h, "FWGLOG01", 8);
        put64(h + 8, start_seq);
        put32(h + 16, 0);
    }
    put32(h + hl - 4, galog_crc32c(0, h, hl - 4));
    int fd = openat(dirfd, GALOG_LOG_TMP, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        snprintf(err, errlen, "create " GALOG_LOG_TMP ": %s", strerror(errno));
        return -1;
    }
    if (galog_write_all(io, fd, h, hl, 0) != 0 || galog_datasync(io, fd) != 0) {
        snprintf(err, errlen, "write " GALOG_LOG_TMP ": %s", strerror(errno));
        goto err;
    }
    if (renameat(dirfd, GALOG_LOG_TMP, dirfd, GALOG_LOG_NAME) != 0 || fsync(dirfd) != 0) {
        snprintf(err, errlen, "install " GALOG_LOG_NAME ": %s", strerror(errno));
        goto err;
    }
    if (key)
        memcpy(file_id, h + 16, GALOG_FILE_ID_LEN);
    return fd;
err:
    close(fd);
    unlinkat(dirfd, GALOG_LOG_TMP, 0);
    return -1;
}

#define SNAP_BUF (1u << 20)

static int snap_flush(galog_snap_writer *w, char *err, size_t errlen)
{
    if (!w->used)
        return 0;
    if (galog_write_all(w->io, w->fd, w->buf, w->used, w->off) != 0) {
        snprintf(err, errlen, "write " GALOG_SNAP_TMP ": %s", strerror(errno));
        return -1;
    }
    w->off += (off_t)w->used;
    w->used = 0;
    return 0;
}

/* Writes the header for w's format into h (GALOG_ESNAP_HDR bytes of room); returns its size. */
static size_t snap_header(const galog_snap_writer *w, uint8_t *h, uint64_t faces)
{
    memcpy(h, w->key ? "FWGSNPE1" : "FWGSNP01", 8);
    put64(h + 8, w->last_seq);
    put64(h + 16, w->next_face_id);
    put64(h + 24, faces);
    if (!w->key) {
        put32(h + 32, 0);
        put32(h + 36, galog_crc32c(0, h, 36));
        return GALOG_SNAP_HDR;
    }
    memcpy(h + 32, w->file_id, GALOG_FILE_ID_LEN);
    fw_keys_key_check(w->key, w->file_id, GALOG_FILE_ID_LEN, h + 32 + GALOG_FILE_ID_LEN);
    put32(h + GALOG_ESNAP_HDR - 8, 0);
    put32(h + GALOG_ESNAP_HDR - 4, galog_crc32c(0, h, GALOG_ESNAP_HDR - 4));
    return GALOG_ESNAP_HDR;
}

int galog_snap_begin(galog_snap_writer *w, int dirfd, const fw_gallery_io *io,
                     const uint8_t *key, uint64_t last_seq, uint64_t next_face_id, char *err,
                     size_t errlen)
{
    memset(w, 0, sizeof *w);
    w->dirfd = dirfd;
    w->io = io;
    w->key = key;
    if (key)
        randombytes_buf(w->file_id, sizeof w->file_id);
    w->last_seq = last_seq;
    w->next_face_id = next_face_id;
    w->buf = malloc(SNAP_BUF);
    if (!w->buf) {
        snprintf(err, errlen, "snapshot: out of memory");
        w->fd = -1;
        return -1;
    }
    w->cap = SNAP_BUF;
    w->fd = openat(dirfd, GALOG_SNAP_TMP, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (w->fd < 0) {
        snprintf(err, errlen, "create " GALOG_SNAP_TMP ": %s", strerror(errno));
        return -1;
    }
    w->used = snap_header(w, w->buf, 0); /* the count is patched in at commit */
    return 0;
}

int galog_snap_add(galog_snap_writer *w, uint64_t face_id, const char *subject, size_t subject_len,
                   const void *meta, size_t meta_len, const float *desc, char *err, size_t errlen)
{
    galog_rec r;
    r.type = GALOG_ENROLL;
    r.seq = w->key ? w->faces + 1 : 0; /* numbered when sealed, see galog_load_snapshot */
    r.face_id = face_id;
    r.subject = subject;
    r.subject_len = (uint16_t)subject_len;
    r.meta = meta;
    r.meta_len = (uint16_t)meta_len;
    memcpy(r.desc, desc, sizeof r.desc);
    if (w->cap - w->used < GALOG_SREC_MAX && snap_flush(w, err, errlen) != 0)
        return -1;
    w->used += galog_encode_key(w->key, w->file_id, &r, w->buf + w->used);
    w->faces++;
    return 0;
}

int galog_snap_commit(galog_snap_writer *w, uint64_t *bytes, char *err, size_t errlen)
{
    uint8_t h[GALOG_ESNAP_HDR];
    size_t hl = snap_header(w, h, w->faces);
    if (w->cap - w->used < GALOG_ESNAP_TRAILER && snap_flush(w, err, errlen) != 0)
        return -1;
    uint8_t *t = w->buf + w->used;
    if (w->key) {
        size_t tl = 0;
        (void)fw_keys_record_seal(w->key, w->file_id, GALOG_FILE_ID_LEN, h, 32, t,
                                  GALOG_ESNAP_TRAILER, &tl);
        w->used += GALOG_ESNAP_TRAILER;
    } else {
        memcpy(t, "FWGSEND1", 8);
        put64(t + 8, w->faces);
        put32(t + 16, galog_crc32c(0, t, 16));
        w->used += GALOG_SNAP_TRAILER;
    }
    if (snap_flush(w, err, errlen) != 0)
        return -1;
    if (galog_write_all(w->io, w->fd, h, hl, 0) != 0) {
        snprintf(err, errlen, "write " GALOG_SNAP_TMP ": %s", strerror(errno));
        return -1;
    }
    if (galog_datasync(w->io, w->fd) != 0) {
        snprintf(err, errlen, "sync " GALOG_SNAP_TMP ": %s", strerror(errno));
        return -1;
    }
    if (renameat(w->dirfd, GALOG_SNAP_TMP, w->dirfd, GALOG_SNAP_NAME) != 0 ||
        fsync(w->dirfd) != 0) {
        snprintf(err, errlen, "install " GALOG_SNAP_NAME ": %s", strerror(errno));
        return -1;
    }
    *bytes = (uint64_t)w->off;
    close(w->fd);
    w->fd = -1;
    free(w->buf);
    w->buf = NULL;
    return 0;
}

void galog_snap_abort(galog_snap_writer *w)
{
    if (w->fd >= 0) {
        close(w->fd);
        unlinkat(w->dirfd, GALOG_SNAP_TMP, 0);
    }
    w->fd = -1;
    free(w->buf);
    w->buf = NULL;
}
