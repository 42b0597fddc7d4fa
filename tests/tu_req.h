/*
 * tu_req.h — test utility: request bodies and response fields of the facewire protocol as the
 * wire tests build and read them (descriptors, JPEG requests, INFO's text).
 *
 * C and POSIX only (no libuv, no server code): tests/tu_*.o are also linked into the ARM client
 * tests.
 */
#ifndef TU_REQ_H
#define TU_REQ_H

#include <stddef.h>
#include <stdint.h>

#include "fw_proto.h"
#include "tests/tu_data.h"

/* A descriptor input: form 1, then its TU_DESC_DIM floats. */
void tu_put_desc(fw_writer *w, const float *d);

/* The body of an ENROLL of a JPEG (subject set; empty metadata) or, with subject NULL, of an
 * IDENTIFY of it (k matches, no threshold). malloc'd (the caller frees), *len its length; NULL
 * when out of memory or when the subject or the JPEG is too long for its field. */
uint8_t *tu_jpeg_body(const char *subject, const uint8_t *jpeg, size_t jl, uint16_t k, size_t *len);
/* The same for the eval picture `pic` (tu_eval_pic); NULL also when it cannot be read. */
uint8_t *tu_pic_body(const char *subject, const char *pic, uint16_t k, size_t *len);

/* The integer of the line "key: N" of an INFO text, or -1 when there is no such line. */
long long tu_info_value(const char *text, const char *key);

#endif
