/* CUDA backend: LayerNorm (affine or not), LayerNorm + modulation, RMSNorm.
 *
 * One block per row, FP32 statistics (two passes: mean, then the variance
 * of x - mean, like the CPU backend, so no cancellation on offset data).
 * The row is re-read from L1/L2 for the second and third passes; a row of
 * the 1.3B / 14B model is 6 / 20 KB of F32. */
#include "cuda_common.cuh"

enum { MODE_LN, MODE_LN_MODULATE, MODE_RMS };

template <int MODE>
__global__ void
norm_kernel (void *y, int ydt, const void *x, int xdt, const void *w, int wdt, const void *b, int bdt, int64_t D,
             int64_t rows_per_batch, float eps)
{
  __shared__ float shm[32];
  const int64_t row = blockIdx.x, off = row * D;
  float s = 0.0f;
  for (int64_t c = threadIdx.x; c < D; c += blockDim.x) {
    float v = dp_ld (x, xdt, off + c);
    s += MODE == MODE_RMS ? v * v : v;
  }
  s = dp_block_sum (s, shm);
  float mean = 0.0f, rstd;
  if (MODE == MODE_RMS) {
    rstd = rsqrtf (s / (float) D + eps);
  } else {
    mean = s / (float) D;
    float q = 0.0f;
    for (int64_t c = threadIdx.x; c < D; c += blockDim.x) {
      float v = dp_ld (x, xdt, off + c) - mean;
      q += v * v;
    }
    q = dp_block_sum (q, shm);
    rstd = rsqrtf (q / (float) D + eps);
  }
  /* MODE_LN_MODULATE: w = shift, b = scale, both [B, D]. */
  const int64_t mod_off = MODE == MODE_LN_MODULATE ? (row / rows_per_batch) * D : 0;
  for (int64_t c = threadIdx.x; c < D; c += blockDim.x) {
    float v = (dp_ld (x, xdt, off + c) - mean) * rstd;
    if (MODE == MODE_LN_MODULATE) {
      v = v * (1.0f + dp_ld (b, bdt, mod_off + c)) + dp_ld (w, wdt, mod_off + c);
    } else {
      if (w)
        v *= dp_ld (w, wdt, c);
      if (MODE == MODE_LN && b)
        v += dp_ld (b, bdt, c);
    }
    dp_st (y, ydt, off + c, v);
  }
}

static unsigned
threads_for (int64_t D)
{
  return D >= 1024 ? 256 : D >= 256 ? 128 : 64;
}

static gboolean
rows_ok (dp_backend *be, const char *op, const dp_tensor *y, const dp_tensor *x)
{
  if (!dp_cuda_check (be, op, y, "y") || !dp_cuda_check (be, op, x, "x") || !dp_cuda_check_count (be, op, y, x))
    return FALSE;
  if (dp_tensor_cols (y) != dp_tensor_cols (x)) {
    dp_backend_fail (be, DP_ERROR_SHAPE, "%s: x and y rows differ", op);
    return FALSE;
  }
  if (dp_tensor_rows (x) > G_MAXINT32) {
    dp_backend_fail (be, DP_ERROR_UNSUPPORTED, "%s: more than 2^31 rows", op);
    return FALSE;
  }
  return TRUE;
}

static gboolean
vector_ok (dp_backend *be, const char *op, const dp_tensor *v, const char *what, int64_t D)
{
  if (!v)
    return TRUE;
  if (!dp_cuda_check (be, op, v, what))
    return FALSE;
  if (dp_tensor_nelem (v) != D) {
    dp_backend_fail (be, DP_ERROR_SHAPE, "%s: %s has %" G_GINT64_FORMAT " elements, expected %" G_GINT64_FORMAT, op,
                     what, dp_tensor_nelem (v), D);
    return FALSE;
  }
  return TRUE;
}

extern "C" void
dp_cuda_layer_norm (dp_backend *be, dp_tensor *y, const dp_tensor *x, const dp_tensor *w, const dp_tensor *b,
                    float eps)
{
  const char *op = "layer_norm";
  if (!rows_ok (be, op, y, x))
    return;
  int64_t D = dp_tensor_cols (x), rows = dp_tensor_rows (x);
  if (!vector_ok (be, op, w, "w", D) || !vector_ok (be, op, b, "b", D) || rows == 0 || D == 0)
    return;
  unsigned t = threads_for (D);
  norm_kernel<MODE_LN><<<(unsigned) rows, t, 0, dp_cuda_of (be)->stream>>> (
    y->data, y->dtype, x->data, x->dtype, w ? w->data : NULL, w ? w->dtype : DP_F32, b ? b->data : NULL,
    b ? b->dtype : DP_F32, D, 1, eps);
  dp_cuda_launched (be, op);
}

extern "C" void
dp_cuda_layer_norm_modulate (dp_backend *be, dp_tensor *y, const dp_tensor *x, const dp_tensor *shift,
                             const dp_tensor *scale, float eps)
{
  const char *op = "layer_norm_modulate";
  if (!rows_ok (be, op, y, x) || !dp_cuda_check (be, op, shift, "shift") || !dp_cuda_check (be, op, scale, "scale"))
    return;
  int64_t D = dp_tensor_cols (x), rows = dp_tensor_rows (x), B = dp_tensor_rows (shift);
  if (dp_tensor_cols (shift) != D || !dp_tensor_same_shape (shift, scale) || B < 1 || rows % B != 0) {
    char sx[64], ss[64], sc[64];
    dp_backend_fail (be, DP_ERROR_SHAPE, "%s: shift %s / scale %s do not match x %s (expected [B, D])", op,
                     dp_shape_str (shift, ss, sizeof ss), dp_shape_str (scale, sc, sizeof sc),
                     dp_shape_str (x, sx, sizeof sx));
    return;
  }
  if (rows == 0 || D == 0)
    return;
  norm_kernel<MODE_LN_MODULATE><<<(unsigned) rows, threads_for (D), 0, dp_cuda_of (be)->stream>>> (
    y->data, y->dtype, x->data, x->dtype, shift->data, shift->dtype, scale->data, scale->dtype, D, rows / B, eps);
  dp_cuda_launched (be, op);
}

extern "C" void
dp_cuda_rms_norm (dp_backend *be, dp_tensor *y, const dp_tensor *x, const dp_tensor *w, float eps)
{
  const char *op = "rms_norm";
  if (!rows_ok (be, op, y, x))
    return;
  int64_t D = dp_tensor_cols (x), rows = dp_tensor_rows (x);
  if (!vector_ok (be, op, w, "w", D) || rows == 0 || D == 0)
    return;
  norm_kernel<MODE_RMS><<<(unsigned) rows, threads_for (D), 0, dp_cuda_of (be)->stream>>> (
    y->data, y->dtype, x->data, x->dtype, w ? w->data : NULL, w ? w->dtype : DP_F32, NULL, DP_F32, D, 1, eps);
  dp_cuda_launched (be, op);
}

/* One thread per column l of x viewed as [C, L]: coalesced across l, the C
 * rows walked twice (sum of squares, then the scaled write). */
__global__ void
channel_rms_kernel (void *y, int ydt, const void *x, int xdt, const void *g, int gdt, int64_t C, int64_t L, float eps,
                    float scale, int act)
{
  DP_GRID_STRIDE (l, L) {
    float ss = 0.0f;
    for (int64_t c = 0; c < C; c++) {
      float v = dp_ld (x, xdt, c * L + l);
      ss += v * v;
    }
    const float inv = scale / fmaxf (sqrtf (ss), eps);
    for (int64_t c = 0; c < C; c++) {
      float v = dp_ld (x, xdt, c * L + l) * inv;
      if (g)
        v *= dp_ld (g, gdt, c);
      dp_st (y, ydt, c * L + l, dp_act_f (v, act));
    }
  }
}

extern "C" void
dp_cuda_channel_rms_norm (dp_backend *be, dp_tensor *y, const dp_tensor *x, const dp_tensor *gamma, float eps,
                          dp_act act)
{
  const char *op = "channel_rms_norm";
  if (!dp_cuda_check (be, op, y, "y") || !dp_cuda_check (be, op, x, "x") || !dp_cuda_check_count (be, op, y, x)
      || (gamma && !dp_cuda_check (be, op, gamma, "gamma")))
    return;
  if (x->ndim < 1 || x->shape[0] <= 0) {
    dp_backend_fail (be, DP_ERROR_SHAPE, "%s: x needs a channel dimension", op);
    return;
  }
  const int64_t C = x->shape[0], L = dp_tensor_nelem (x) / C;
  if (gamma && dp_tensor_nelem (gamma) != C) {
    dp_backend_fail (be, DP_ERROR_SHAPE, "%s: gamma has %" G_GINT64_FORMAT " elements, expected %" G_GINT64_FORMAT, op,
                     dp_tensor_nelem (gamma), C);
    return;
  }
  if (act != DP_ACT_NONE && act != DP_ACT_GELU_TANH && act != DP_ACT_SILU) {
    dp_backend_fail (be, DP_ERROR_INVALID, "%s: unknown activation %d", op, (int) act);
    return;
  }
  if (L == 0)
    return;
  channel_rms_kernel<<<dp_cuda_grid (be, L, 256), 256, 0, dp_cuda_of (be)->stream>>> (
    y->data, y->dtype, x->data, x->dtype, gamma ? gamma->data : NULL, gamma ? gamma->dtype : DP_F32, C, L, eps,
    sqrtf ((float) C), (int) act);
  dp_cuda_launched (be, op);
}
