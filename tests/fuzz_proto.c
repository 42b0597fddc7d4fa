/*
 * fuzz_proto.c — libFuzzer harness for the frame decoder (make fuzz).
 *
 * Feeds arbitrary bytes through what a receiver does with them: scan frames out of a buffer,
 * check each header as a request and as a response, then walk the body with every reader
 * call in an order chosen by the input itself. Any out-of-bounds read is an ASan report; any
 * inconsistency between fw_frame_scan's length and the header is a crash by __builtin_trap.
 */
#include "fw_proto.h"

#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t off = 0;
    while (off < size) {
        fw_header h;
        int have = 0;
        size_t n = fw_frame_scan(data + off, size - off, &h, &have);
        if (have) {
            fw_verdict v = fw_check_request(&h, 1u << 20);
            (void)fw_verdict_status(v);
            (void)fw_verdict_closes(v);
            (void)fw_check_response(&h, 1u << 20);
            (void)fw_op_name(h.opcode);
            (void)fw_status_name(h.status);
        }
        if (n == 0)
            break;
        if (n != FW_HEADER_LEN + (size_t)h.body_len || n > size - off)
            __builtin_trap();
        fw_reader r;
        const uint8_t *body = data + off + FW_HEADER_LEN;
        fw_reader_init(&r, body, h.body_len);
        /* the body's own bytes pick which reader calls to make */
        for (uint32_t i = 0; i < h.body_len && !r.err; i++) {
            uint16_t sn;
            uint32_t bn;
            switch (body[i] % 8) {
            case 0: (void)fw_get_u8(&r); break;
            case 1: (void)fw_get_u16(&r); break;
            case 2: (void)fw_get_u32(&r); break;
            case 3: (void)fw_get_u64(&r); break;
            case 4: (void)fw_get_f32(&r); break;
            case 5: (void)fw_get_str(&r, &sn); break;
            case 6: (void)fw_get_bytes(&r, 4096, &bn); break;
            default: (void)fw_get_raw(&r, body[i]); break;
            }
        }
        (void)fw_reader_done(&r);
        off += n;
    }
    return 0;
}
