/*
 * tu_req.c — protocol bodies and fields for tests (see tu_req.h).
 */
#include "tests/tu_req.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/tu_data.h"

void tu_put_desc(fw_writer *w, const float *d)
{
    fw_put_u8(w, 1);
    for (int i = 0; i < TU_DESC_DIM; i++)
        fw_put_f32(w, d[i]);
}

uint8_t *tu_jpeg_body(const char *subject, const uint8_t *jpeg, size_t jl, uint16_t k, size_t *len)
{
    /* around the JPEG: subject (u16 length + bytes), empty metadata (u32 length), the form (u8)
     * and the JPEG's u32 length; or k, the threshold form and the threshold (u16, u8, f32) */
    size_t sl = subject ? strlen(subject) : 0;
    if (sl > UINT16_MAX || jl > UINT32_MAX - UINT16_MAX - 64) /* fields' limits; cap cannot wrap */
        return NULL;
    size_t cap = jl + sl + 32;
    uint8_t *body = malloc(cap);
    if (!body)
        return NULL;
    fw_writer w;
    fw_writer_init(&w, body, cap);
    if (subject) {
        fw_put_str(&w, subject, sl);
        fw_put_bytes(&w, "", 0);
    }
    fw_put_u8(&w, 0);
    fw_put_bytes(&w, jpeg, (uint32_t)jl);
    if (!subject) {
        fw_put_u16(&w, k);
        fw_put_u8(&w, 0);
        fw_put_f32(&w, 0);
    }
    if (w.err) {
        free(body);
        return NULL;
    }
    *len = w.len;
    return body;
}

uint8_t *tu_pic_body(const char *subject, const char *pic, uint16_t k, size_t *len)
{
    size_t jl;
    uint8_t *jpeg = tu_eval_pic(pic, &jl);
    if (!jpeg)
        return NULL;
    uint8_t *body = tu_jpeg_body(subject, jpeg, jl, k, len);
    free(jpeg);
    return body;
}

long long tu_info_value(const char *text, const char *key)
{
    char pat[128];
    snprintf(pat, sizeof pat, "\n%s: ", key);
    const char *p = strstr(text, pat);
    return p ? strtoll(p + strlen(pat), NULL, 10) : -1;
}
