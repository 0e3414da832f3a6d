/* CPU backend: the operations added for the VAE decoder's channel-first
 * activations (channel RMS norm, column-block copy, 2-D transpose). */
#include "cpu/backend_cpu.h"
#include "cpu/cpu_act.h"

#include <math.h>
#include <string.h>

/* Columns normalised together: the sums of squares of one tile stay in
 * registers / L1 while the C rows are walked. */
#define NORM_TILE 256
#define TRANSPOSE_TILE 32

typedef struct {
  const float *x;
  float *y;
  const float *gamma; /* or NULL */
  int64_t C, L;
  float scale, eps;
  dp_act act;
} crms_job;

/* Column tiles [t0, t1) of x [C, L]. */
static void
crms_tiles (void *ctx, int64_t t0, int64_t t1, int worker)
{
  const crms_job *j = ctx;
  const int64_t C = j->C, L = j->L;
  const float *xd = j->x, *g = j->gamma;
  float *yd = j->y;
  /* Locals: a store through yd could alias the job's floats. */
  const float eps = j->eps, scale = j->scale;
  const dp_act act = j->act;
  for (int64_t tile = t0; tile < t1; tile++) {
    const int64_t l0 = tile * NORM_TILE;
    const int64_t nl = MIN (NORM_TILE, L - l0);
    double ss[NORM_TILE];
    float denom[NORM_TILE];
    for (int64_t k = 0; k < nl; k++)
      ss[k] = 0.0;
    for (int64_t c = 0; c < C; c++) {
      const float *row = xd + c * L + l0;
      for (int64_t k = 0; k < nl; k++)
        ss[k] += (double) row[k] * row[k];
    }
    for (int64_t k = 0; k < nl; k++)
      denom[k] = fmaxf ((float) sqrt (ss[k]), eps);
    /* Same operation order as diffusers: (x / norm) * sqrt(C) * gamma.
     * Reading row c before writing it keeps y == x (in place) correct. */
    for (int64_t c = 0; c < C; c++) {
      const float *row = xd + c * L + l0;
      float *out = yd + c * L + l0;
      const float gc = g ? g[c] : 1.0f;
      for (int64_t k = 0; k < nl; k++)
        out[k] = dp_cpu_act_1 (row[k] / denom[k] * scale * gc, act);
    }
  }
}

typedef struct {
  uint8_t *dst;
  const uint8_t *src;
  int64_t dcols, scols, dst_col0, src_col0, ncols;
  size_t es;
} cols_job;

static void
copy_rows (void *ctx, int64_t r0, int64_t r1, int worker)
{
  const cols_job *j = ctx;
  const size_t es = j->es;
  for (int64_t r = r0; r < r1; r++)
    memcpy (j->dst + (size_t) (r * j->dcols + j->dst_col0) * es, j->src + (size_t) (r * j->scols + j->src_col0) * es,
            (size_t) j->ncols * es);
}

typedef struct {
  const void *x;
  void *y;
  int64_t A, B, tiles_b;
  size_t es;
} transpose_job;

/* Tiles [t0, t1) of y [B, A] = x [A, B]^T. */
static void
transpose_tiles (void *ctx, int64_t t0, int64_t t1, int worker)
{
  const transpose_job *j = ctx;
  const int64_t A = j->A, B = j->B, tiles_b = j->tiles_b;
  for (int64_t t = t0; t < t1; t++) {
    const int64_t a0 = (t / tiles_b) * TRANSPOSE_TILE, b0 = (t % tiles_b) * TRANSPOSE_TILE;
    const int64_t a1 = MIN (A, a0 + TRANSPOSE_TILE), b1 = MIN (B, b0 + TRANSPOSE_TILE);
    if (j->es == 4) {
      const float *xs = j->x;
      float *yd = j->y;
      for (int64_t b = b0; b < b1; b++)
        for (int64_t a = a0; a < a1; a++)
          yd[b * A + a] = xs[a * B + b];
    } else {
      const uint16_t *xs = j->x;
      uint16_t *yd = j->y;
      for (int64_t b = b0; b < b1; b++)
        for (int64_t a = a0; a < a1; a++)
          yd[b * A + a] = xs[a * B + b];
    }
  }
}

void
dp_cpu_channel_rms_norm (dp_backend *be, dp_tensor *y, const dp_tensor *x, const dp_tensor *gamma,
                         float eps, dp_act act)
{
  if (!dp_cpu_check_f32 (be, "channel_rms_norm", x) || !dp_cpu_check_f32 (be, "channel_rms_norm", y))
    return;
  if (gamma && !dp_cpu_check_f32 (be, "channel_rms_norm", gamma))
    return;
  if (x->ndim < 1 || x->shape[0] <= 0) {
    dp_backend_fail (be, DP_ERROR_SHAPE, "channel_rms_norm: x needs a channel dimension");
    return;
  }
  const int64_t C = x->shape[0];
  const int64_t n = dp_tensor_nelem (x);
  const int64_t L = n / C;
  if (dp_tensor_nelem (y) != n) {
    dp_backend_fail (be, DP_ERROR_SHAPE, "channel_rms_norm: y has %" G_GINT64_FORMAT " elements, x %" G_GINT64_FORMAT,
                     dp_tensor_nelem (y), n);
    return;
  }
  if (gamma && dp_tensor_nelem (gamma) != C) {
    dp_backend_fail (be, DP_ERROR_SHAPE, "channel_rms_norm: gamma has %" G_GINT64_FORMAT " elements, expected %" G_GINT64_FORMAT,
                     dp_tensor_nelem (gamma), C);
    return;
  }
  if (!dp_cpu_act_valid (act)) {
    dp_backend_fail (be, DP_ERROR_INVALID, "channel_rms_norm: unknown activation %d", (int) act);
    return;
  }
  const float scale = sqrtf ((float) C);
  const int64_t ntiles = (L + NORM_TILE - 1) / NORM_TILE;

  crms_job job = { x->data, y->data, gamma ? gamma->data : NULL, C, L, scale, eps, act };
  dp_cpu_for (be, n > DP_CPU_PAR_MIN, ntiles, crms_tiles, &job);
}

void
dp_cpu_copy_cols (dp_backend *be, dp_tensor *dst, int64_t dst_col0, const dp_tensor *src,
                  int64_t src_col0, int64_t ncols)
{
  if (dp_backend_failed (be))
    return;
  if (dst->dtype != src->dtype) {
    dp_backend_fail (be, DP_ERROR_UNSUPPORTED, "copy_cols: dtypes differ (%s vs %s)",
                     dp_dtype_name (dst->dtype), dp_dtype_name (src->dtype));
    return;
  }
  if (dst->ndim < 1 || src->ndim < 1 || dst->shape[0] != src->shape[0] || dst->shape[0] <= 0) {
    dp_backend_fail (be, DP_ERROR_SHAPE, "copy_cols: row counts differ or are empty");
    return;
  }
  const int64_t R = dst->shape[0];
  const int64_t dcols = dp_tensor_nelem (dst) / R, scols = dp_tensor_nelem (src) / R;
  if (ncols < 0 || dst_col0 < 0 || src_col0 < 0 || dst_col0 + ncols > dcols || src_col0 + ncols > scols) {
    dp_backend_fail (be, DP_ERROR_SHAPE,
                     "copy_cols: columns [%" G_GINT64_FORMAT ", +%" G_GINT64_FORMAT ") of %" G_GINT64_FORMAT
                     " from [%" G_GINT64_FORMAT ", +%" G_GINT64_FORMAT ") of %" G_GINT64_FORMAT " out of range",
                     dst_col0, ncols, dcols, src_col0, ncols, scols);
    return;
  }
  if (ncols == 0)
    return;
  if (!dst->data || !src->data) {
    dp_backend_fail (be, DP_ERROR_INVALID, "copy_cols: tensor without data");
    return;
  }
  if (dp_cpu_overlap (dst, src)) {
    dp_backend_fail (be, DP_ERROR_INVALID, "copy_cols: dst overlaps src");
    return;
  }
  cols_job job = { dst->data, src->data, dcols, scols, dst_col0, src_col0, ncols, dp_dtype_size (dst->dtype) };
  dp_cpu_for (be, R * ncols > DP_CPU_PAR_MIN, R, copy_rows, &job);
}

void
dp_cpu_transpose (dp_backend *be, dp_tensor *y, const dp_tensor *x)
{
  if (dp_backend_failed (be))
    return;
  if (y->dtype != x->dtype) {
    dp_backend_fail (be, DP_ERROR_UNSUPPORTED, "transpose: dtypes differ (%s vs %s)",
                     dp_dtype_name (y->dtype), dp_dtype_name (x->dtype));
    return;
  }
  if (x->ndim < 1 || x->shape[0] <= 0 || dp_tensor_nelem (y) != dp_tensor_nelem (x)) {
    dp_backend_fail (be, DP_ERROR_SHAPE, "transpose: y and x must have the same (non-zero) element count");
    return;
  }
  if (!x->data || !y->data) {
    dp_backend_fail (be, DP_ERROR_INVALID, "transpose: tensor without data");
    return;
  }
  if (dp_cpu_overlap (x, y)) {
    dp_backend_fail (be, DP_ERROR_INVALID, "transpose: y must not alias x");
    return;
  }
  const int64_t A = x->shape[0], B = dp_tensor_nelem (x) / A;
  const int64_t tiles_a = (A + TRANSPOSE_TILE - 1) / TRANSPOSE_TILE;
  const int64_t tiles_b = (B + TRANSPOSE_TILE - 1) / TRANSPOSE_TILE;
  const size_t es = dp_dtype_size (x->dtype);

  transpose_job job = { x->data, y->data, A, B, tiles_b, es };
  dp_cpu_for (be, A * B > DP_CPU_PAR_MIN, tiles_a * tiles_b, transpose_tiles, &job);
}
