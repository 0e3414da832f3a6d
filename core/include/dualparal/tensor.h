/* dualparal: tensors.
 *
 * A tensor is a dtype, up to DP_MAX_DIMS dimensions and a pointer to contiguous
 * row-major storage: shape[0] is the outermost dimension, shape[ndim-1] the one
 * whose elements are adjacent in memory (PyTorch order, so shapes read exactly
 * as in diffusers).
 *
 * Storage is either owned (allocated by dp_tensor_new_host(), released by
 * dp_tensor_free()) or borrowed (a view into an mmap'd safetensors file, an
 * arena or another tensor); a borrowed tensor never frees its data.  The data
 * pointer lives in the memory of whichever backend made it: host memory for
 * the CPU backend and for file views, device memory for the CUDA backend.
 */
#ifndef DUALPARAL_TENSOR_H
#define DUALPARAL_TENSOR_H

#include <stddef.h>
#include <stdint.h>
#include <glib.h>

G_BEGIN_DECLS

#define DP_MAX_DIMS 5

typedef enum {
  DP_F32 = 0,
  DP_BF16 = 1,
  DP_F16 = 2,
} dp_dtype;

typedef struct {
  dp_dtype dtype;
  int ndim;
  int64_t shape[DP_MAX_DIMS];
  void *data;
  gboolean owned; /* TRUE: data was g_malloc'd by dp_tensor_new_host() */
} dp_tensor;

/* Bytes per element of a dtype. */
size_t dp_dtype_size (dp_dtype dtype);
/* "F32", "BF16", "F16" (safetensors spelling). */
const char *dp_dtype_name (dp_dtype dtype);

int64_t dp_tensor_nelem (const dp_tensor *t);
size_t dp_tensor_nbytes (const dp_tensor *t);
/* Product of all dimensions but the last (the number of rows of a matrix view). */
int64_t dp_tensor_rows (const dp_tensor *t);
/* The last dimension. */
int64_t dp_tensor_cols (const dp_tensor *t);
gboolean dp_tensor_same_shape (const dp_tensor *a, const dp_tensor *b);
/* "[2, 16, 3]" into buf (for error messages); returns buf. */
const char *dp_shape_str (const dp_tensor *t, char *buf, size_t len);

/* A borrowed tensor over data (no copy, never freed by dp_tensor_free). */
dp_tensor dp_tensor_view (void *data, dp_dtype dtype, int ndim, const int64_t *shape);
/* Same data, other shape with the same element count (returns FALSE otherwise). */
gboolean dp_tensor_reshape (dp_tensor *t, int ndim, const int64_t *shape);
/* Rows [row0, row0 + nrows) along dimension 0: a borrowed view. */
dp_tensor dp_tensor_slice0 (const dp_tensor *t, int64_t row0, int64_t nrows);

/* Owned zero-filled host tensor. */
dp_tensor dp_tensor_new_host (dp_dtype dtype, int ndim, const int64_t *shape);
/* Releases owned storage; a borrowed tensor is only cleared. */
void dp_tensor_free (dp_tensor *t);

/* Element conversions (round to nearest even for the narrowing ones). */
float dp_bf16_to_f32 (uint16_t h);
uint16_t dp_f32_to_bf16 (float f);
float dp_f16_to_f32 (uint16_t h);
uint16_t dp_f32_to_f16 (float f);
/* n elements from src (dtype sdt) to dst (dtype ddt), both in host memory. */
void dp_convert (void *dst, dp_dtype ddt, const void *src, dp_dtype sdt, size_t n);

G_END_DECLS

#endif
