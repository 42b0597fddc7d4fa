/*
 * test_proto.c — unit tests of the wire format (proto/): header round trips, every invalid
 * header field with the verdict and status the server must answer, incremental framing, and
 * the bounds-checked body reader/writer on short and hostile input.
 */
#include "check.h"
#include "fw_proto.h"

#include <stdint.h>
#include <string.h>

static fw_header req(uint8_t op, uint32_t id, uint32_t body_len)
{
    fw_header h = {FW_MAGIC, FW_PROTO_VERSION, op, 0, FW_PRIO_NORMAL, 0, id, 0, body_len};
    return h;
}

static void t_header_roundtrip(void)
{
    fw_header h = {FW_MAGIC, 1, FW_OP_EMBED, FW_FLAG_RESPONSE | FW_FLAG_SEALED, FW_PRIO_LOW,
                   FW_STATUS_NO_FACE, 0xDEADBEEFu, 1234567u, 0x01020304u};
    uint8_t b[FW_HEADER_LEN];
    fw_header_encode(&h, b);
    CHECK(b[0] == 0xFA && b[1] == 0xCE);
    CHECK(b[16] == 1 && b[17] == 2 && b[18] == 3 && b[19] == 4); /* big-endian body_len */
    fw_header g;
    fw_header_decode(b, &g);
    CHECK(memcmp(&g, &h, sizeof h) == 0);
}

static void t_ping_hexdump(void)
{
    /* The worked example of docs/protocol.md, byte for byte. */
    static const uint8_t want[] = {0xFA, 0xCE, 0x01, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                                   0x00, 0x07, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02};
    fw_header h = req(FW_OP_PING, 7, 2);
    uint8_t b[FW_HEADER_LEN];
    fw_header_encode(&h, b);
    CHECK(memcmp(b, want, sizeof want) == 0);
}

static void t_check_request_rules(void)
{
    fw_header h = req(FW_OP_PING, 1, 10);
    CHECK_EQ_INT(fw_check_request(&h, 100), FW_HDR_OK);

    h = req(FW_OP_PING, 1, 10);
    h.magic = 0xCAFE;
    CHECK_EQ_INT(fw_check_request(&h, 100), FW_HDR_BAD_MAGIC);
    CHECK(fw_verdict_closes(FW_HDR_BAD_MAGIC));

    h = req(FW_OP_PING, 1, 10);
    h.version = 2;
    CHECK_EQ_INT(fw_check_request(&h, 100), FW_HDR_BAD_VERSION);
    CHECK_EQ_INT(fw_verdict_status(FW_HDR_BAD_VERSION), FW_STATUS_UNSUPPORTED_VERSION);
    CHECK(fw_verdict_closes(FW_HDR_BAD_VERSION));

    h = req(FW_OP_PING, 1, 101);
    CHECK_EQ_INT(fw_check_request(&h, 100), FW_HDR_TOO_LARGE);
    CHECK_EQ_INT(fw_verdict_status(FW_HDR_TOO_LARGE), FW_STATUS_TOO_LARGE);
    CHECK(fw_verdict_closes(FW_HDR_TOO_LARGE));
    h.body_len = 0xFFFFFFFFu;
    CHECK_EQ_INT(fw_check_request(&h, 100), FW_HDR_TOO_LARGE);

    for (unsigned bit = 3; bit < 8; bit++) {
        h = req(FW_OP_PING, 1, 0);
        h.flags = (uint8_t)(1u << bit);
        CHECK_EQ_INT(fw_check_request(&h, 100), FW_HDR_BAD_FLAGS);
    }
    h = req(FW_OP_PING, 1, 0);
    h.flags = FW_FLAG_RESPONSE;
    CHECK_EQ_INT(fw_check_request(&h, 100), FW_HDR_BAD_FLAGS);
    h.flags = FW_FLAG_EVENT;
    CHECK_EQ_INT(fw_check_request(&h, 100), FW_HDR_BAD_FLAGS);
    h.flags = FW_FLAG_SEALED;
    CHECK_EQ_INT(fw_check_request(&h, 100), FW_HDR_OK);
    CHECK_EQ_INT(fw_verdict_status(FW_HDR_BAD_FLAGS), FW_STATUS_BAD_REQUEST);
    CHECK(!fw_verdict_closes(FW_HDR_BAD_FLAGS));

    h = req(FW_OP_PING, 1, 0);
    h.priority = 3;
    CHECK_EQ_INT(fw_check_request(&h, 100), FW_HDR_BAD_PRIORITY);
    CHECK(!fw_verdict_closes(FW_HDR_BAD_PRIORITY));

    h = req(FW_OP_PING, 1, 0);
    h.status = 4;
    CHECK_EQ_INT(fw_check_request(&h, 100), FW_HDR_BAD_STATUS);
    CHECK_EQ_INT(fw_verdict_status(FW_HDR_BAD_STATUS), FW_STATUS_BAD_REQUEST);
}

static void t_check_response(void)
{
    fw_header h = req(FW_OP_PING, 1, 0);
    CHECK_EQ_INT(fw_check_response(&h, 100), FW_HDR_BAD_FLAGS); /* no RESPONSE flag */
    h.flags = FW_FLAG_RESPONSE;
    CHECK_EQ_INT(fw_check_response(&h, 100), FW_HDR_OK);
    h.flags = FW_FLAG_EVENT;
    CHECK_EQ_INT(fw_check_response(&h, 100), FW_HDR_OK);
    h.flags = FW_FLAG_RESPONSE | 0x80;
    CHECK_EQ_INT(fw_check_response(&h, 100), FW_HDR_BAD_FLAGS);
    h.flags = FW_FLAG_RESPONSE;
    h.body_len = 1000;
    CHECK_EQ_INT(fw_check_response(&h, 100), FW_HDR_TOO_LARGE);
}

static void t_frame_scan_incremental(void)
{
    uint8_t buf[3 * (FW_HEADER_LEN + 3)];
    size_t n = 0;
    for (uint32_t id = 1; id <= 3; id++) {
        fw_header h = req(FW_OP_PING, id, 3);
        fw_header_encode(&h, buf + n);
        memcpy(buf + n + FW_HEADER_LEN, "abc", 3);
        n += FW_HEADER_LEN + 3;
    }
    fw_header h;
    int have;
    /* every prefix shorter than one frame asks for more; the header appears at 20 bytes */
    for (size_t len = 0; len < FW_HEADER_LEN + 3; len++) {
        CHECK_EQ_INT(fw_frame_scan(buf, len, &h, &have), 0);
        CHECK_EQ_INT(have, len >= FW_HEADER_LEN);
    }
    /* three frames in one buffer come out one after the other */
    size_t off = 0;
    for (uint32_t id = 1; id <= 3; id++) {
        size_t used = fw_frame_scan(buf + off, n - off, &h, &have);
        CHECK_EQ_INT(used, FW_HEADER_LEN + 3);
        CHECK_EQ_INT(h.request_id, id);
        off += used;
    }
    CHECK_EQ_INT(off, n);
    /* a huge body_len never makes scan claim a frame */
    fw_header big = req(FW_OP_PING, 9, 0xFFFFFFFFu);
    fw_header_encode(&big, buf);
    CHECK_EQ_INT(fw_frame_scan(buf, sizeof buf, &h, &have), 0);
    CHECK_EQ_INT(have, 1);
}

static void t_reader_writer_roundtrip(void)
{
    uint8_t b[256];
    fw_writer w;
    fw_writer_init(&w, b, sizeof b);
    fw_put_u8(&w, 0xAB);
    fw_put_u16(&w, 0xBEEF);
    fw_put_u32(&w, 0x12345678u);
    fw_put_u64(&w, 0x0102030405060708ull);
    fw_put_f32(&w, -1.5f);
    fw_put_str(&w, "alice", 5);
    fw_put_bytes(&w, "\x00\x01\x02", 3);
    CHECK(!w.err);
    /* f32 is IEEE big-endian on the wire: -1.5 = 0xBFC00000 */
    CHECK(b[15] == 0xBF && b[16] == 0xC0 && b[17] == 0 && b[18] == 0);

    fw_reader r;
    fw_reader_init(&r, b, w.len);
    CHECK_EQ_INT(fw_get_u8(&r), 0xAB);
    CHECK_EQ_INT(fw_get_u16(&r), 0xBEEF);
    CHECK_EQ_INT(fw_get_u32(&r), 0x12345678u);
    CHECK(fw_get_u64(&r) == 0x0102030405060708ull);
    CHECK(fw_get_f32(&r) == -1.5f);
    uint16_t sn;
    const char *s = fw_get_str(&r, &sn);
    CHECK(s && sn == 5 && memcmp(s, "alice", 5) == 0);
    uint32_t bn;
    const uint8_t *by = fw_get_bytes(&r, 16, &bn);
    CHECK(by && bn == 3 && by[2] == 2);
    CHECK(fw_reader_done(&r));
}

static void t_reader_short_and_hostile(void)
{
    /* every truncation of a valid body fails cleanly, never reading past the end */
    uint8_t b[64];
    fw_writer w;
    fw_writer_init(&w, b, sizeof b);
    fw_put_u32(&w, 7);
    fw_put_str(&w, "subject", 7);
    fw_put_bytes(&w, "xyz", 3);
    for (size_t len = 0; len < w.len; len++) {
        fw_reader r;
        fw_reader_init(&r, b, len);
        (void)fw_get_u32(&r);
        uint16_t sn;
        uint32_t bn;
        (void)fw_get_str(&r, &sn);
        (void)fw_get_bytes(&r, 100, &bn);
        CHECK(r.err);
        CHECK(!fw_reader_done(&r));
        CHECK_EQ_INT(fw_reader_left(&r), 0);
    }
    /* a length field claiming more than is there */
    static const uint8_t lie[] = {0xFF, 0xFF, 0xFF, 0xFF, 'a'};
    fw_reader r;
    fw_reader_init(&r, lie, sizeof lie);
    uint32_t bn = 99;
    CHECK(fw_get_bytes(&r, 0xFFFFFFFFu, &bn) == NULL);
    CHECK_EQ_INT(bn, 0);
    CHECK(r.err);
    /* a length above the caller's cap fails even when the bytes are there */
    static const uint8_t capped[] = {0, 0, 0, 2, 'a', 'b'};
    fw_reader_init(&r, capped, sizeof capped);
    CHECK(fw_get_bytes(&r, 1, &bn) == NULL);
    /* the error sticks: later reads return zeros */
    CHECK_EQ_INT(fw_get_u8(&r), 0);
    /* trailing bytes mean not done */
    fw_reader_init(&r, capped, sizeof capped);
    (void)fw_get_u32(&r);
    CHECK(!fw_reader_done(&r));
}

static void t_writer_overflow(void)
{
    uint8_t b[6];
    memset(b, 0xEE, sizeof b);
    fw_writer w;
    fw_writer_init(&w, b, 5);
    fw_put_u32(&w, 1);
    fw_put_u32(&w, 2); /* does not fit */
    CHECK(w.err);
    CHECK_EQ_INT(w.len, 4);
    CHECK(b[4] == 0xEE && b[5] == 0xEE); /* nothing written past what fitted */
    fw_writer_init(&w, b, sizeof b);
    char big[70000];
    memset(big, 'x', sizeof big);
    fw_put_str(&w, big, sizeof big); /* over u16 */
    CHECK(w.err);
}

static void t_error_body(void)
{
    uint8_t b[16];
    size_t n = fw_error_body(b, sizeof b, "queue full");
    CHECK_EQ_INT(n, 12);
    CHECK(b[0] == 0 && b[1] == 10 && memcmp(b + 2, "queue full", 10) == 0);
    n = fw_error_body(b, 6, "a long message");
    CHECK_EQ_INT(n, 6);
    CHECK(b[1] == 4);
    CHECK_EQ_INT(fw_error_body(b, 1, "x"), 0);
}

static void t_names(void)
{
    CHECK_EQ_STR(fw_status_name(FW_STATUS_BUSY), "BUSY");
    CHECK_EQ_STR(fw_status_name(FW_STATUS_UNSUPPORTED_VERSION), "UNSUPPORTED_VERSION");
    CHECK_EQ_STR(fw_status_name(999), "UNKNOWN");
    CHECK_EQ_INT(fw_status_from_name("DEADLINE_EXCEEDED"), FW_STATUS_DEADLINE_EXCEEDED);
    CHECK_EQ_INT(fw_status_from_name("nope"), -1);
    for (int s = 0; s < FW_STATUS_COUNT; s++)
        CHECK_EQ_INT(fw_status_from_name(fw_status_name((uint16_t)s)), s);
    CHECK_EQ_STR(fw_op_name(FW_OP_PING), "PING");
    CHECK_EQ_STR(fw_op_name(0x55), "UNKNOWN");
    CHECK_EQ_INT(fw_op_from_name("embed"), FW_OP_EMBED);
    CHECK_EQ_INT(fw_op_from_name("Test_Sleep"), FW_OP_TEST_SLEEP);
    CHECK_EQ_INT(fw_op_from_name("pin"), -1);
    CHECK_EQ_STR(fw_op_name(FW_OP_STREAM_FRAME), "STREAM_FRAME");
    CHECK_EQ_INT(fw_op_from_name("test_hold"), FW_OP_TEST_HOLD);
}

static const struct check_test tests[] = {
    CHECK_TEST(t_header_roundtrip),       CHECK_TEST(t_ping_hexdump),
    CHECK_TEST(t_check_request_rules),    CHECK_TEST(t_check_response),
    CHECK_TEST(t_frame_scan_incremental), CHECK_TEST(t_reader_writer_roundtrip),
    CHECK_TEST(t_reader_short_and_hostile), CHECK_TEST(t_writer_overflow),
    CHECK_TEST(t_error_body),             CHECK_TEST(t_names),
};

int main(int argc, char **argv)
{
    return check_main(tests, CHECK_COUNT(tests), argc, argv);
}
