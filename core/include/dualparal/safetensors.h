/* dualparal: safetensors reader.
 *
 * Files are mmap'd read-only; the JSON header is parsed with json-glib and
 * validated completely before any tensor is handed out: every tensor's
 * [begin, end) lies inside the data section, no two overlap, the byte count
 * equals shape x dtype size, names are unique.  Tensors returned by lookups
 * borrow the mapping: they stay valid until dp_safetensors_close().
 *
 * A model directory component (e.g. transformer/) is opened with
 * dp_safetensors_open_dir(): it reads `*.safetensors.index.json` (sharded) when
 * present, else the single `*.safetensors` file.  Every failure is a GError in
 * DP_ERROR naming the file and the problem.
 *
 * Supported dtypes: F32, BF16, F16; others are rejected (DP_ERROR_UNSUPPORTED).
 */
#ifndef DUALPARAL_SAFETENSORS_H
#define DUALPARAL_SAFETENSORS_H

#include "dualparal/tensor.h"

G_BEGIN_DECLS

typedef struct dp_safetensors dp_safetensors;

/* One file. */
dp_safetensors *dp_safetensors_open (const char *path, GError **error);
/* Parses an in-memory image (the fuzz target uses this); data is borrowed and
 * must outlive the returned object.  name is used in error messages. */
dp_safetensors *dp_safetensors_open_memory (const void *data, size_t size, const char *name,
                                            GError **error);
/* A directory: index.json + shards, or exactly one .safetensors file. */
dp_safetensors *dp_safetensors_open_dir (const char *dir, GError **error);
void dp_safetensors_close (dp_safetensors *st);

/* Number of tensors, and the i-th name (sorted order). */
int dp_safetensors_count (const dp_safetensors *st);
const char *dp_safetensors_name (const dp_safetensors *st, int i);
gboolean dp_safetensors_contains (const dp_safetensors *st, const char *name);

/* The tensor called name, checked against the expected shape (ndim dims;
 * ndim < 0 skips the check).  The returned tensor borrows the mapping, in
 * the file's dtype.  DP_ERROR_MISSING / DP_ERROR_SHAPE name the tensor. */
gboolean dp_safetensors_get (const dp_safetensors *st, const char *name, int ndim,
                             const int64_t *shape, dp_tensor *out, GError **error);

/* As dp_safetensors_get, converted to dtype into an owned host tensor. */
gboolean dp_safetensors_load (const dp_safetensors *st, const char *name, dp_dtype dtype,
                              int ndim, const int64_t *shape, dp_tensor *out, GError **error);

/* The "__metadata__" string for key, or NULL. */
const char *dp_safetensors_metadata (const dp_safetensors *st, const char *key);

G_END_DECLS

#endif
