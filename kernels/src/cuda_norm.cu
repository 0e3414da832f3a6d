/* CUDA backend: LayerNorm (affine or not), LayerNorm + modulation, RMSNorm,
 * and RMSNorm + 3D RoPE (Wan's q / k).
 *
 * FP32 statistics (two passes: mean, then the variance of x - mean, like the
 * CPU backend, so no cancellation on offset data).
 *
 * Fast path (the model's case: x and y F32 or BF16, parameters F32, D a
 * multiple of 4 up to 6144, aligned rows): a warp per row up to 1536 values,
 * a 128-thread block per row beyond, each thread holding its share of the
 * row in registers after one vector read, so x is read from memory once
 * (3.7-3.9 TB/s on an H200).  Anything else runs the generic kernel, one
 * block per row, which re-reads the row from L1/L2 for its second and third
 * passes (1.3-1.5 TB/s, against a 4.2 TB/s copy ceiling). */
#include "cuda_common.cuh"

/* MODE_RMS_ROPE: RMSNorm, then the 3D RoPE of the row's token (q / k). */
enum { MODE_LN, MODE_LN_MODULATE, MODE_RMS, MODE_RMS_ROPE };

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

/* Rows of up to 4 * 32 * 12 = 1536 values (Wan2.1-1.3B) take one warp each,
 * four rows to a block, and reduce with shuffles alone; longer rows (up to
 * 4 * 128 * 12 = 6144: 14B) take a 128-thread block each.  One row per
 * block left the kernels bound by each row's load -> reduce -> store chain
 * (2.0-2.8 TB/s on an H200 whatever the bytes per element). */
enum { VEC_THREADS = 128, VEC_MAX = 12 };

/* MODE_LN_MODULATE: w = shift, b = scale, both [B, D] F32.  Otherwise w and
 * b are [D] F32 or NULL.  TPR: threads per row, 32 or VEC_THREADS. */
template <int MODE, typename TX, typename TY, int TPR>
__global__ void __launch_bounds__ (VEC_THREADS)
norm_vec_kernel (TY *y, const TX *x, const float *w, const float *b, int D, int64_t rows, int64_t rows_per_batch,
                 float eps, dp_cuda_rope_args ra)
{
  constexpr bool RMS = MODE == MODE_RMS || MODE == MODE_RMS_ROPE;
  constexpr int ROWS = VEC_THREADS / TPR;
  __shared__ float shm[32];
  const int64_t row = (int64_t) blockIdx.x * ROWS + threadIdx.x / TPR;
  const int lane = threadIdx.x % TPR;
  if (ROWS > 1 && row >= rows) /* a whole warp leaves: no shuffle partner is missing */
    return;
  const TX *xr = x + row * D;
  TY *yr = y + row * D;
  const int nv = D / 4;
  float v[VEC_MAX][4];
  float s = 0.0f;
#pragma unroll
  for (int k = 0; k < VEC_MAX; k++) {
    const int i = lane + k * TPR;
    if (i < nv) {
      dp_ld4 (xr + 4 * i, v[k]);
#pragma unroll
      for (int j = 0; j < 4; j++)
        s += RMS ? v[k][j] * v[k][j] : v[k][j];
    }
  }
  s = TPR == 32 ? dp_warp_sum (s) : dp_block_sum (s, shm);
  float mean = 0.0f, rstd;
  if (RMS) {
    rstd = rsqrtf (s / (float) D + eps);
  } else {
    mean = s / (float) D;
    float q = 0.0f;
#pragma unroll
    for (int k = 0; k < VEC_MAX; k++)
      if (lane + k * TPR < nv)
#pragma unroll
        for (int j = 0; j < 4; j++)
          q += (v[k][j] - mean) * (v[k][j] - mean);
    q = TPR == 32 ? dp_warp_sum (q) : dp_block_sum (q, shm);
    rstd = rsqrtf (q / (float) D + eps);
  }
  const int64_t mod_off = MODE == MODE_LN_MODULATE ? (row / rows_per_batch) * D : 0;
  dp_rope_token tok;
  if (MODE == MODE_RMS_ROPE)
    tok = dp_rope_token_of (ra, (int) (row % ra.L));
#pragma unroll
  for (int k = 0; k < VEC_MAX; k++) {
    const int i = lane + k * TPR;
    if (i < nv) {
      float o[4], pw[4], pb[4];
      if (w)
        dp_ld4 (w + mod_off + 4 * i, pw);
      if (b)
        dp_ld4 (b + mod_off + 4 * i, pb);
#pragma unroll
      for (int j = 0; j < 4; j++) {
        o[j] = (v[k][j] - mean) * rstd;
        if (MODE == MODE_LN_MODULATE) {
          o[j] = o[j] * (1.0f + pb[j]) + pw[j];
        } else {
          if (w)
            o[j] *= pw[j];
          if (MODE == MODE_LN && b)
            o[j] += pb[j];
        }
      }
      if (MODE == MODE_RMS_ROPE) {
        /* 4 elements never straddle a head (d % 4 == 0): pairs p, p + 1. */
        const int p = (4 * i % (2 * ra.half_d)) / 2;
        dp_rope_rotate (dp_rope_angle (ra, tok, p), o);
        dp_rope_rotate (dp_rope_angle (ra, tok, p + 1), o + 2);
      }
      dp_st4 (yr + 4 * i, o);
    }
  }
}

template <int MODE, typename TX, typename TY>
static void
launch_vec (dp_backend *be, void *y, const void *x, const dp_tensor *w, const dp_tensor *b, int64_t D, int64_t rows,
            int64_t rows_per_batch, float eps, const dp_cuda_rope_args &ra)
{
  const float *wp = w ? (const float *) w->data : NULL, *bp = b ? (const float *) b->data : NULL;
  cudaStream_t s = dp_cuda_of (be)->stream;
  if (D <= 4 * 32 * VEC_MAX) {
    const int64_t rows_per_block = VEC_THREADS / 32;
    norm_vec_kernel<MODE, TX, TY, 32><<<(unsigned) ((rows + rows_per_block - 1) / rows_per_block), VEC_THREADS, 0,
                                         s>>> ((TY *) y, (const TX *) x, wp, bp, (int) D, rows, rows_per_batch, eps,
                                               ra);
  } else {
    norm_vec_kernel<MODE, TX, TY, VEC_THREADS><<<(unsigned) rows, VEC_THREADS, 0, s>>> (
      (TY *) y, (const TX *) x, wp, bp, (int) D, rows, rows_per_batch, eps, ra);
  }
}

/* Runs the fast path when the tensors allow it; FALSE: use the generic one. */
template <int MODE>
static bool
norm_vec (dp_backend *be, dp_tensor *y, const dp_tensor *x, const dp_tensor *w, const dp_tensor *b, int64_t D,
          int64_t rows, int64_t rows_per_batch, float eps, const dp_cuda_rope_args &ra = dp_cuda_rope_args ())
{
  if (D % 4 != 0 || D > 4 * VEC_THREADS * VEC_MAX || !dp_aligned (x->data, 16) || !dp_aligned (y->data, 16))
    return false;
  for (const dp_tensor *p : { w, b })
    if (p && (p->dtype != DP_F32 || !dp_aligned (p->data, 16)))
      return false;
  const bool xf = x->dtype == DP_F32, xb = x->dtype == DP_BF16, yf = y->dtype == DP_F32, yb = y->dtype == DP_BF16;
  if (xf && yb)
    launch_vec<MODE, float, __nv_bfloat16> (be, y->data, x->data, w, b, D, rows, rows_per_batch, eps, ra);
  else if (xb && yb)
    launch_vec<MODE, __nv_bfloat16, __nv_bfloat16> (be, y->data, x->data, w, b, D, rows, rows_per_batch, eps, ra);
  else if (xf && yf)
    launch_vec<MODE, float, float> (be, y->data, x->data, w, b, D, rows, rows_per_batch, eps, ra);
  else if (xb && yf)
    launch_vec<MODE, __nv_bfloat16, float> (be, y->data, x->data, w, b, D, rows, rows_per_batch, eps, ra);
  else
    return false;
  return true;
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
  if (norm_vec<MODE_LN> (be, y, x, w, b, D, rows, 1, eps)) {
    dp_cuda_launched (be, op);
    return;
  }
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
  if (norm_vec<MODE_LN_MODULATE> (be, y, x, shift, scale, D, rows, rows / B, eps)) {
    dp_cuda_launched (be, op);
    return;
  }
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
  if (norm_vec<MODE_RMS> (be, y, x, w, NULL, D, rows, 1, eps)) {
    dp_cuda_launched (be, op);
    return;
  }
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

/* RMSNorm over each token's H * d values (Wan's q / k norm spans the heads),
 * then the 3D RoPE, in one pass: the row is rotated while it sits in
 * registers.  Tensors the vector kernel cannot take run the two ops. */
extern "C" void
dp_cuda_rms_norm_rope_3d (dp_backend *be, dp_tensor *x, const dp_tensor *w, float eps, const dp_rope_grid *grid)
{
  const char *op = "rms_norm_rope_3d";
  dp_cuda_rope_args ra;
  if (!dp_cuda_check (be, op, x, "x") || !dp_cuda_rope_prepare (be, op, x, grid, &ra))
    return;
  const int64_t D = x->shape[2] * x->shape[3], rows = x->shape[0] * x->shape[1];
  if (!vector_ok (be, op, w, "w", D) || rows == 0 || D == 0)
    return;
  if (rows > G_MAXINT32) {
    dp_backend_fail (be, DP_ERROR_UNSUPPORTED, "%s: more than 2^31 rows", op);
    return;
  }
  if (ra.half_d % 2 == 0 && (x->dtype == DP_BF16 || x->dtype == DP_F32)
      && norm_vec<MODE_RMS_ROPE> (be, x, x, w, NULL, D, rows, 1, eps, ra)) {
    dp_cuda_launched (be, op);
    return;
  }
  const int64_t shape2[2] = { rows, D };
  dp_tensor x2 = dp_tensor_view (x->data, x->dtype, 2, shape2);
  dp_cuda_rms_norm (be, &x2, &x2, w, eps);
  dp_cuda_rope_3d (be, x, grid);
}
