/* CPU backend: row-wise normalisations (LayerNorm, LayerNorm + modulation,
 * RMSNorm).  Statistics are accumulated in double (at least as accurate as
 * PyTorch's F32 kernels); rows are spread over the backend's thread pool.  Each row's
 * statistics are computed before the row is written, so y may alias x. */
#include "cpu/backend_cpu.h"
#include "cpu/cpu_act.h"

#include <math.h>

/* mean and 1 / sqrt (biased variance + eps) of one row (two passes). */
static inline void
row_moments (const float *x, int64_t D, float eps, float *mean_out, float *rstd_out)
{
  double s = 0.0;
  for (int64_t i = 0; i < D; i++)
    s += x[i];
  double mean = s / (double) D;
  double v = 0.0;
  for (int64_t i = 0; i < D; i++) {
    double c = x[i] - mean;
    v += c * c;
  }
  double var = v / (double) D;
  *mean_out = (float) mean;
  *rstd_out = (float) (1.0 / sqrt (var + (double) eps));
}

static gboolean
check_rows (dp_backend *be, const char *op, const dp_tensor *y, const dp_tensor *x)
{
  if (!dp_cpu_check_f32 (be, op, x) || !dp_cpu_check_f32 (be, op, y))
    return FALSE;
  if (x->ndim < 1 || dp_tensor_nelem (x) != dp_tensor_nelem (y) || dp_tensor_cols (x) != dp_tensor_cols (y) ||
      dp_tensor_cols (x) <= 0) {
    char bx[64], by[64];
    dp_backend_fail (be, DP_ERROR_SHAPE, "%s: y %s does not match x %s", op, dp_shape_str (y, by, sizeof by),
                     dp_shape_str (x, bx, sizeof bx));
    return FALSE;
  }
  return TRUE;
}

static gboolean
check_vec (dp_backend *be, const char *op, const char *what, const dp_tensor *v, int64_t n)
{
  if (!v)
    return TRUE;
  if (!dp_cpu_check_f32 (be, op, v))
    return FALSE;
  if (dp_tensor_nelem (v) != n) {
    dp_backend_fail (be, DP_ERROR_SHAPE, "%s: %s has %" G_GINT64_FORMAT " elements, expected %" G_GINT64_FORMAT, op,
                     what, dp_tensor_nelem (v), n);
    return FALSE;
  }
  return TRUE;
}

/* The row loops' arguments (rows of D elements). */
typedef struct {
  const float *x, *w, *b; /* layer_norm_modulate: w = scale, b = shift, [B, D] */
  float *y;
  int64_t D, L;           /* L: rows per batch entry (modulate) */
  float eps;
} norm_job;

static void
layer_norm_rows (void *ctx, int64_t r0, int64_t r1, int worker)
{
  const norm_job *j = ctx;
  const int64_t D = j->D;
  const float *wd = j->w, *bd = j->b;
  for (int64_t r = r0; r < r1; r++) {
    const float *xr = j->x + r * D;
    float *yr = j->y + r * D;
    float mean, rstd;
    row_moments (xr, D, j->eps, &mean, &rstd);
    for (int64_t i = 0; i < D; i++) {
      float v = (xr[i] - mean) * rstd;
      if (wd)
        v *= wd[i];
      if (bd)
        v += bd[i];
      yr[i] = v;
    }
  }
}

static void
modulate_rows (void *ctx, int64_t r0, int64_t r1, int worker)
{
  const norm_job *j = ctx;
  const int64_t D = j->D;
  for (int64_t r = r0; r < r1; r++) {
    const float *xr = j->x + r * D;
    float *yr = j->y + r * D;
    const float *sh = j->b + (r / j->L) * D, *sc = j->w + (r / j->L) * D;
    float mean, rstd;
    row_moments (xr, D, j->eps, &mean, &rstd);
    /* diffusers: norm (x) * (1 + scale) + shift */
    for (int64_t i = 0; i < D; i++)
      yr[i] = (xr[i] - mean) * rstd * (1.0f + sc[i]) + sh[i];
  }
}

static void
rms_norm_rows (void *ctx, int64_t r0, int64_t r1, int worker)
{
  const norm_job *j = ctx;
  const int64_t D = j->D;
  const float *wd = j->w;
  for (int64_t r = r0; r < r1; r++) {
    const float *xr = j->x + r * D;
    float *yr = j->y + r * D;
    double ss = 0.0;
    for (int64_t i = 0; i < D; i++)
      ss += (double) xr[i] * xr[i];
    /* torch.nn.RMSNorm: x * rsqrt (mean (x^2) + eps) * weight */
    float rr = (float) (1.0 / sqrt (ss / (double) D + (double) j->eps));
    for (int64_t i = 0; i < D; i++) {
      float v = xr[i] * rr;
      yr[i] = wd ? v * wd[i] : v;
    }
  }
}

void
dp_cpu_layer_norm (dp_backend *be, dp_tensor *y, const dp_tensor *x, const dp_tensor *w,
                   const dp_tensor *b, float eps)
{
  if (!check_rows (be, "layer_norm", y, x))
    return;
  const int64_t D = dp_tensor_cols (x), R = dp_tensor_rows (x);
  if (!check_vec (be, "layer_norm", "weight", w, D) || !check_vec (be, "layer_norm", "bias", b, D))
    return;
  norm_job job = { .x = x->data, .y = y->data, .w = w ? w->data : NULL, .b = b ? b->data : NULL, .D = D, .eps = eps };
  dp_cpu_for (be, R * D > DP_CPU_PAR_MIN, R, layer_norm_rows, &job);
}

void
dp_cpu_layer_norm_modulate (dp_backend *be, dp_tensor *y, const dp_tensor *x, const dp_tensor *shift,
                            const dp_tensor *scale, float eps)
{
  if (!check_rows (be, "layer_norm_modulate", y, x))
    return;
  /* x [B, L, D]; a 2-D x is one batch entry [L, D]. */
  const int64_t D = dp_tensor_cols (x), R = dp_tensor_rows (x);
  const int64_t B = x->ndim >= 3 ? x->shape[0] : 1;
  if (B <= 0 || R % B != 0) {
    char bx[64];
    dp_backend_fail (be, DP_ERROR_SHAPE, "layer_norm_modulate: x %s is not [B, L, D]", dp_shape_str (x, bx, sizeof bx));
    return;
  }
  if (!shift || !scale) {
    dp_backend_fail (be, DP_ERROR_INVALID, "layer_norm_modulate: shift and scale are required");
    return;
  }
  if (!check_vec (be, "layer_norm_modulate", "shift", shift, B * D) ||
      !check_vec (be, "layer_norm_modulate", "scale", scale, B * D))
    return;
  if (dp_tensor_cols (shift) != D || dp_tensor_cols (scale) != D) {
    dp_backend_fail (be, DP_ERROR_SHAPE, "layer_norm_modulate: shift / scale rows must have %" G_GINT64_FORMAT " columns", D);
    return;
  }
  norm_job job = { .x = x->data, .y = y->data, .w = scale->data, .b = shift->data, .D = D, .L = R / B, .eps = eps };
  dp_cpu_for (be, R * D > DP_CPU_PAR_MIN, R, modulate_rows, &job);
}

void
dp_cpu_rms_norm (dp_backend *be, dp_tensor *y, const dp_tensor *x, const dp_tensor *w, float eps)
{
  if (!check_rows (be, "rms_norm", y, x))
    return;
  const int64_t D = dp_tensor_cols (x), R = dp_tensor_rows (x);
  if (!check_vec (be, "rms_norm", "weight", w, D))
    return;
  norm_job job = { .x = x->data, .y = y->data, .w = w ? w->data : NULL, .D = D, .eps = eps };
  dp_cpu_for (be, R * D > DP_CPU_PAR_MIN, R, rms_norm_rows, &job);
}
