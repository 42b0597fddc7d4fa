/*
 * tu_data.h — where tests find their inputs, reading them, and making descriptors.
 *
 * ../shared (golden vectors, eval pictures) and models/ are located through FW_SHARED and
 * FW_MODELS (tests/run.sh sets both), defaulting to "../shared" and "models" relative to the
 * directory the test runs in. POSIX and libc only, so client tests can link it on ARM too.
 */
#ifndef FW_TU_DATA_H
#define FW_TU_DATA_H

#include <stddef.h>
#include <stdint.h>

const char *tu_shared_dir(void);
const char *tu_models_dir(void);

/* A whole file, malloc'd (the caller frees); NULL if it cannot be read. */
uint8_t *tu_read_file(const char *path, size_t *len);

/* ../shared/eval/NAME; NULL (after saying which path and why on stderr) if unreadable. */
uint8_t *tu_eval_pic(const char *name, size_t *len);

/* Floats in a face descriptor. */
#define TU_DESC_DIM 128

/* splitmix64: the next number of the sequence whose state is *s. Deterministic test data. */
uint64_t tu_splitmix(uint64_t *s);
/* A deterministic descriptor for seed, components in [-1, 1): different seeds, unrelated
 * descriptors (TU_DESC_DIM floats into d). */
void tu_desc_for(uint64_t seed, float *d);
/* A descriptor with v at index i and 0 elsewhere (i < TU_DESC_DIM). */
void tu_unit_desc(float *d, int i, float v);

#endif
