/*
 * model.h — reads a TF.js "weights manifest" and its .bin shards into named float tensors.
 *
 * The manifest is JSON: an array of groups, each { "paths": [shard files], "weights": [ { name,
 * shape, dtype: "float32", quantization?: { dtype: "uint8" | "uint16", min, scale } } ] }. A
 * group's shards are one byte stream holding its weights back to back; a quantised value is
 * min + q * scale. Everything in these files is treated as hostile: shard names must be plain
 * file names, sizes are capped before allocating, and the streams must hold exactly the bytes
 * the manifest describes (a short file is "truncated", a long one has "trailing bytes").
 *
 * The networks then take tensors by name with the shape they expect (fw_model_take), and finally
 * ask whether anything was left over (fw_model_check_all_taken): a file with an extra or a
 * misnamed tensor is rejected rather than silently half-used.
 *
 * Ownership: fw_model_load() returns a model freed with fw_model_free(); pointers returned by
 * fw_model_take() belong to the model and die with it (networks copy what they keep).
 */
#ifndef FW_MODEL_H
#define FW_MODEL_H

#include <stddef.h>

#define FW_MODEL_MAX_DIMS 4

typedef struct fw_model_tensor {
    char *name;
    int ndim;
    int shape[FW_MODEL_MAX_DIMS];
    size_t count;
    float *data;
    int taken;
} fw_model_tensor;

typedef struct fw_model {
    char *label; /* the manifest's base name, for messages */
    fw_model_tensor *t;
    size_t n;
} fw_model;

/* Load dir/<name>-weights_manifest.json and the shards it lists (also in dir).
 * Returns NULL with a one-line reason in err. */
fw_model *fw_model_load(const char *dir, const char *name, char *err, size_t errlen);
void fw_model_free(fw_model *m);

/* The tensor called name, which must have exactly the ndim dimensions in shape. Returns its
 * floats (owned by m), or NULL with err set ("<model>: missing tensor X" or "...: tensor X has
 * shape [..], expected [..]"). */
const float *fw_model_take(fw_model *m, const char *name, int ndim, const int *shape, char *err,
                           size_t errlen);

/* 0 when every tensor was taken, else -1 with err naming the first one that was not. */
int fw_model_check_all_taken(const fw_model *m, char *err, size_t errlen);

#endif
