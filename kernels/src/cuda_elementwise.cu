/* CUDA backend: conversions, fill, activations, element-wise arithmetic and
 * the layout ops (patchify, unpatchify, nearest upsampling).  All memory
 * bound: grid-stride loops, FP32 arithmetic, any of F32 / BF16 / F16 per
 * tensor. */
#include "cuda_common.cuh"

#include <math.h>

#define THREADS 256

static inline cudaStream_t
stream_of (dp_backend *be)
{
  return dp_cuda_of (be)->stream;
}

/* ---- conversions and fill ---------------------------------------------- */

__global__ void
convert_kernel (void *dst, int ddt, const void *src, int sdt, int64_t n)
{
  DP_GRID_STRIDE (i, n)
    dp_st (dst, ddt, i, dp_ld (src, sdt, i));
}

extern "C" void
dp_cuda_convert (dp_backend *be, void *dst, dp_dtype ddt, const void *src, dp_dtype sdt, int64_t n)
{
  if (dp_backend_failed (be) || n <= 0)
    return;
  convert_kernel<<<dp_cuda_grid (be, n, THREADS), THREADS, 0, stream_of (be)>>> (dst, ddt, src, sdt, n);
  dp_cuda_launched (be, "convert kernel");
}

__global__ void
fill_kernel (void *dst, int dt, float v, int64_t n)
{
  DP_GRID_STRIDE (i, n)
    dp_st (dst, dt, i, v);
}

extern "C" void
dp_cuda_fill_raw (dp_backend *be, void *dst, dp_dtype dt, float value, int64_t n)
{
  if (dp_backend_failed (be) || n <= 0)
    return;
  fill_kernel<<<dp_cuda_grid (be, n, THREADS), THREADS, 0, stream_of (be)>>> (dst, dt, value, n);
  dp_cuda_launched (be, "fill kernel");
}

extern "C" void
dp_cuda_fill (dp_backend *be, dp_tensor *t, float value)
{
  if (!dp_cuda_check (be, "fill", t, "t"))
    return;
  dp_cuda_fill_raw (be, t->data, t->dtype, value, dp_tensor_nelem (t));
}

__global__ void
add_row_bias_kernel (void *y, int ydt, const void *bias, int bdt, int64_t cols, int64_t n)
{
  DP_GRID_STRIDE (i, n)
    dp_st (y, ydt, i, dp_ld (y, ydt, i) + dp_ld (bias, bdt, i / cols));
}

extern "C" void
dp_cuda_add_row_bias (dp_backend *be, void *y, dp_dtype ydt, const void *bias, dp_dtype bdt,
                      int64_t rows, int64_t cols)
{
  int64_t n = rows * cols;
  if (dp_backend_failed (be) || n <= 0)
    return;
  add_row_bias_kernel<<<dp_cuda_grid (be, n, THREADS), THREADS, 0, stream_of (be)>>> (y, ydt, bias, bdt,
                                                                                      cols, n);
  dp_cuda_launched (be, "bias kernel");
}

/* ---- activations ------------------------------------------------------- */

template <int ACT>
__global__ void
act_kernel (void *y, int ydt, const void *x, int xdt, int64_t n)
{
  DP_GRID_STRIDE (i, n) {
    float v = dp_ld (x, xdt, i);
    dp_st (y, ydt, i, dp_act_f (v, ACT));
  }
}

extern "C" void
dp_cuda_silu_raw (dp_backend *be, void *y, dp_dtype ydt, const void *x, dp_dtype xdt, int64_t n)
{
  if (dp_backend_failed (be) || n <= 0)
    return;
  act_kernel<DP_ACT_SILU><<<dp_cuda_grid (be, n, THREADS), THREADS, 0, stream_of (be)>>> (y, ydt, x, xdt, n);
  dp_cuda_launched (be, "silu kernel");
}

/* w_out[n, k] = w[n, k] * gate[n] (BF16) and, when bias_out is given,
 * bias_out[n] = bias[n] * gate[n] (F32): the gate of a residual branch
 * folded into its output projection (dp_cuda_linear_gated_add).  PAIR:
 * two elements per thread (K even and 4-byte aligned rows: every model). */
template <int PAIR>
__global__ void
gate_weights_kernel (__nv_bfloat16 *w_out, float *bias_out, const __nv_bfloat16 *w, const void *bias, int bdt,
                     const float *gate, int64_t N, int64_t K)
{
  const int64_t per_row = PAIR ? K / 2 : K;
  DP_GRID_STRIDE (i, N * per_row) {
    int64_t n = i / per_row, j = i % per_row;
    float g = gate[n];
    if (PAIR) {
      float2 f = __bfloat1622float2 (((const __nv_bfloat162 *) w)[i]);
      ((__nv_bfloat162 *) w_out)[i] = __floats2bfloat162_rn (f.x * g, f.y * g);
    } else {
      w_out[i] = __float2bfloat16 (__bfloat162float (w[i]) * g);
    }
    if (j == 0 && bias_out)
      bias_out[n] = dp_ld (bias, bdt, n) * g;
  }
}

extern "C" void
dp_cuda_gate_weights_raw (dp_backend *be, void *w_out, float *bias_out, const void *w, const void *bias,
                          dp_dtype bias_dtype, const float *gate, int64_t N, int64_t K)
{
  if (dp_backend_failed (be) || N <= 0 || K <= 0)
    return;
  if (!bias)
    bias_out = NULL;
  __nv_bfloat16 *wo = (__nv_bfloat16 *) w_out;
  const __nv_bfloat16 *wi = (const __nv_bfloat16 *) w;
  cudaStream_t s = stream_of (be);
  if ((K & 1) == 0 && ((uintptr_t) w % 4) == 0 && ((uintptr_t) w_out % 4) == 0) {
    int64_t n = N * (K / 2);
    gate_weights_kernel<1><<<dp_cuda_grid (be, n, THREADS), THREADS, 0, s>>> (wo, bias_out, wi, bias, bias_dtype,
                                                                              gate, N, K);
  } else {
    gate_weights_kernel<0><<<dp_cuda_grid (be, N * K, THREADS), THREADS, 0, s>>> (wo, bias_out, wi, bias,
                                                                                  bias_dtype, gate, N, K);
  }
  dp_cuda_launched (be, "gate_weights kernel");
}

static void
activation (dp_backend *be, const char *op, dp_tensor *y, const dp_tensor *x, int act)
{
  if (!dp_cuda_check (be, op, y, "y") || !dp_cuda_check (be, op, x, "x")
      || !dp_cuda_check_count (be, op, y, x))
    return;
  int64_t n = dp_tensor_nelem (x);
  if (n == 0)
    return;
  unsigned grid = dp_cuda_grid (be, n, THREADS);
  if (act == DP_ACT_GELU_TANH)
    act_kernel<DP_ACT_GELU_TANH><<<grid, THREADS, 0, stream_of (be)>>> (y->data, y->dtype, x->data, x->dtype, n);
  else
    act_kernel<DP_ACT_SILU><<<grid, THREADS, 0, stream_of (be)>>> (y->data, y->dtype, x->data, x->dtype, n);
  dp_cuda_launched (be, op);
}

extern "C" void
dp_cuda_gelu_tanh (dp_backend *be, dp_tensor *y, const dp_tensor *x)
{
  activation (be, "gelu_tanh", y, x, DP_ACT_GELU_TANH);
}

extern "C" void
dp_cuda_silu (dp_backend *be, dp_tensor *y, const dp_tensor *x)
{
  activation (be, "silu", y, x, DP_ACT_SILU);
}

/* ---- arithmetic -------------------------------------------------------- */

/* y = alpha * a + beta * b, or y = a * b when MUL. */
template <bool MUL>
__global__ void
binary_kernel (void *y, int ydt, const void *a, int adt, const void *b, int bdt, float alpha,
               float beta, int64_t n)
{
  DP_GRID_STRIDE (i, n) {
    float va = dp_ld (a, adt, i), vb = dp_ld (b, bdt, i);
    dp_st (y, ydt, i, MUL ? va * vb : alpha * va + beta * vb);
  }
}

static void
binary (dp_backend *be, const char *op, dp_tensor *y, const dp_tensor *a, const dp_tensor *b,
        bool mul, float alpha, float beta)
{
  if (!dp_cuda_check (be, op, y, "y") || !dp_cuda_check (be, op, a, "a") || !dp_cuda_check (be, op, b, "b")
      || !dp_cuda_check_count (be, op, y, a) || !dp_cuda_check_count (be, op, y, b))
    return;
  int64_t n = dp_tensor_nelem (y);
  if (n == 0)
    return;
  unsigned grid = dp_cuda_grid (be, n, THREADS);
  if (mul)
    binary_kernel<true><<<grid, THREADS, 0, stream_of (be)>>> (y->data, y->dtype, a->data, a->dtype, b->data,
                                                                b->dtype, alpha, beta, n);
  else
    binary_kernel<false><<<grid, THREADS, 0, stream_of (be)>>> (y->data, y->dtype, a->data, a->dtype, b->data,
                                                                 b->dtype, alpha, beta, n);
  dp_cuda_launched (be, op);
}

extern "C" void
dp_cuda_add (dp_backend *be, dp_tensor *y, const dp_tensor *a, const dp_tensor *b)
{
  binary (be, "add", y, a, b, false, 1.0f, 1.0f);
}

extern "C" void
dp_cuda_mul (dp_backend *be, dp_tensor *y, const dp_tensor *a, const dp_tensor *b)
{
  binary (be, "mul", y, a, b, true, 1.0f, 1.0f);
}

extern "C" void
dp_cuda_axpby (dp_backend *be, dp_tensor *y, float alpha, const dp_tensor *a, float beta,
               const dp_tensor *b)
{
  binary (be, "axpby", y, a, b, false, alpha, beta);
}

/* x[b, l, d] += gate[b, d] * y[b, l, d]; gate NULL: plain add.  F32 residual
 * with a BF16 branch output is the hot case: 4-wide F32 and 4 BF16 per
 * thread when D is a multiple of 4. */
__global__ void
gated_add_kernel (void *x, int xdt, const void *y, int ydt, const float *gate, int64_t D,
                  int64_t per_batch, int64_t n)
{
  DP_GRID_STRIDE (i, n) {
    float g = 1.0f;
    if (gate)
      g = gate[(i / per_batch) * D + i % D];
    dp_st (x, xdt, i, dp_ld (x, xdt, i) + g * dp_ld (y, ydt, i));
  }
}

__global__ void
gated_add_f32_bf16_kernel (float4 *x, const uint2 *y, const float *gate, int64_t D4, int64_t per_batch4,
                           int64_t n4)
{
  DP_GRID_STRIDE (i, n4) {
    float4 g = make_float4 (1.0f, 1.0f, 1.0f, 1.0f);
    if (gate)
      g = ((const float4 *) gate)[(i / per_batch4) * D4 + i % D4];
    uint2 raw = y[i];
    __nv_bfloat162 y01 = *(__nv_bfloat162 *) &raw.x, y23 = *(__nv_bfloat162 *) &raw.y;
    float2 f01 = __bfloat1622float2 (y01), f23 = __bfloat1622float2 (y23);
    float4 v = x[i];
    v.x += g.x * f01.x;
    v.y += g.y * f01.y;
    v.z += g.z * f23.x;
    v.w += g.w * f23.y;
    x[i] = v;
  }
}

extern "C" void
dp_cuda_gated_add (dp_backend *be, dp_tensor *x, const dp_tensor *y, const dp_tensor *gate)
{
  const char *op = "gated_add";
  if (!dp_cuda_check (be, op, x, "x") || !dp_cuda_check (be, op, y, "y") || !dp_cuda_check_count (be, op, x, y))
    return;
  int64_t n = dp_tensor_nelem (x), D = dp_tensor_cols (x);
  int64_t batches = 1;
  if (gate) {
    if (!dp_cuda_check (be, op, gate, "gate"))
      return;
    if (gate->dtype != DP_F32) {
      dp_backend_fail (be, DP_ERROR_UNSUPPORTED, "gated_add: gate must be F32, got %s", dp_dtype_name (gate->dtype));
      return;
    }
    batches = dp_tensor_rows (gate);
    if (dp_tensor_cols (gate) != D || batches < 1 || n % (batches * MAX (D, 1)) != 0) {
      char sx[64], sg[64];
      dp_backend_fail (be, DP_ERROR_SHAPE, "gated_add: gate %s does not match x %s (expected [B, D])",
                       dp_shape_str (gate, sg, sizeof sg), dp_shape_str (x, sx, sizeof sx));
      return;
    }
  }
  if (n == 0)
    return;
  int64_t per_batch = n / batches;
  const float *g = gate ? (const float *) gate->data : NULL;
  cudaStream_t s = stream_of (be);
  if (x->dtype == DP_F32 && y->dtype == DP_BF16 && D % 4 == 0 && ((uintptr_t) x->data % 16) == 0
      && ((uintptr_t) y->data % 8) == 0 && (!g || ((uintptr_t) g % 16) == 0)) {
    int64_t n4 = n / 4;
    gated_add_f32_bf16_kernel<<<dp_cuda_grid (be, n4, THREADS), THREADS, 0, s>>> (
      (float4 *) x->data, (const uint2 *) y->data, g, D / 4, per_batch / 4, n4);
  } else {
    gated_add_kernel<<<dp_cuda_grid (be, n, THREADS), THREADS, 0, s>>> (x->data, x->dtype, y->data, y->dtype, g,
                                                                         D, per_batch, n);
  }
  dp_cuda_launched (be, op);
}

/* ---- layouts ------------------------------------------------------------ */

__global__ void
upsample2x_kernel (void *y, int ydt, const void *x, int xdt, int64_t H, int64_t W, int64_t n)
{
  DP_GRID_STRIDE (i, n) {
    int64_t W2 = 2 * W, H2 = 2 * H;
    int64_t w = i % W2, h = (i / W2) % H2, plane = i / (W2 * H2);
    dp_st (y, ydt, i, dp_ld (x, xdt, (plane * H + h / 2) * W + w / 2));
  }
}

extern "C" void
dp_cuda_upsample_nearest2x (dp_backend *be, dp_tensor *y, const dp_tensor *x)
{
  const char *op = "upsample_nearest2x";
  if (!dp_cuda_check (be, op, y, "y") || !dp_cuda_check (be, op, x, "x"))
    return;
  gboolean ok = x->ndim >= 2 && y->ndim == x->ndim;
  for (int i = 0; ok && i < x->ndim; i++)
    ok = y->shape[i] == (i >= x->ndim - 2 ? 2 : 1) * x->shape[i];
  if (!ok) {
    char sx[64], sy[64];
    dp_backend_fail (be, DP_ERROR_SHAPE, "%s: y %s is not x %s with the last two dimensions doubled", op,
                     dp_shape_str (y, sy, sizeof sy), dp_shape_str (x, sx, sizeof sx));
    return;
  }
  int64_t n = dp_tensor_nelem (y);
  if (n == 0)
    return;
  upsample2x_kernel<<<dp_cuda_grid (be, n, THREADS), THREADS, 0, stream_of (be)>>> (
    y->data, y->dtype, x->data, x->dtype, x->shape[x->ndim - 2], x->shape[x->ndim - 1], n);
  dp_cuda_launched (be, op);
}

/* One thread per token element: tokens[t, col], t = (fo, ho, wo), col = (c, kt, kh, kw). */
__global__ void
patchify_kernel (void *tok, int tdt, const void *x, int xdt, int F, int H, int W, int pt, int ph, int pw,
                 int64_t n)
{
  int64_t Fo = F / pt, Ho = H / ph, Wo = W / pw, cols = (int64_t) (n / (Fo * Ho * Wo));
  DP_GRID_STRIDE (i, n) {
    int64_t t = i / cols, col = i % cols;
    int kw = (int) (col % pw), kh = (int) ((col / pw) % ph), kt = (int) ((col / (pw * ph)) % pt);
    int64_t c = col / ((int64_t) pw * ph * pt);
    int64_t wo = t % Wo, ho = (t / Wo) % Ho, fo = t / (Wo * Ho);
    int64_t src = ((c * F + fo * pt + kt) * H + ho * ph + kh) * W + wo * pw + kw;
    dp_st (tok, tdt, i, dp_ld (x, xdt, src));
  }
}

/* One thread per video element x[c, f, h, w]. */
__global__ void
unpatchify_kernel (void *x, int xdt, const void *tok, int tdt, int C, int F, int H, int W, int pt, int ph,
                   int pw, int64_t n)
{
  int64_t Ho = H / ph, Wo = W / pw;
  DP_GRID_STRIDE (i, n) {
    int64_t w = i % W, h = (i / W) % H, f = (i / ((int64_t) W * H)) % F, c = i / ((int64_t) W * H * F);
    int64_t t = ((f / pt) * Ho + h / ph) * Wo + w / pw;
    int64_t col = ((f % pt) * ph * pw + (h % ph) * pw + w % pw) * C + c;
    dp_st (x, xdt, i, dp_ld (tok, tdt, t * ((int64_t) pt * ph * pw * C) + col));
  }
}

static gboolean
patch_shapes_ok (dp_backend *be, const char *op, const dp_tensor *tok, const dp_tensor *x, int pt, int ph,
                 int pw)
{
  char sx[64], st[64];
  if (pt < 1 || ph < 1 || pw < 1) {
    dp_backend_fail (be, DP_ERROR_INVALID, "%s: bad patch size %dx%dx%d", op, pt, ph, pw);
    return FALSE;
  }
  if (x->ndim != 4 || x->shape[1] % pt || x->shape[2] % ph || x->shape[3] % pw || tok->ndim != 2
      || tok->shape[0] != (x->shape[1] / pt) * (x->shape[2] / ph) * (x->shape[3] / pw)
      || tok->shape[1] != x->shape[0] * pt * ph * pw) {
    dp_backend_fail (be, DP_ERROR_SHAPE, "%s: video %s and tokens %s do not match patch %dx%dx%d", op,
                     dp_shape_str (x, sx, sizeof sx), dp_shape_str (tok, st, sizeof st), pt, ph, pw);
    return FALSE;
  }
  return TRUE;
}

extern "C" void
dp_cuda_patchify (dp_backend *be, dp_tensor *tokens, const dp_tensor *x, int pt, int ph, int pw)
{
  const char *op = "patchify";
  if (!dp_cuda_check (be, op, tokens, "tokens") || !dp_cuda_check (be, op, x, "x")
      || !patch_shapes_ok (be, op, tokens, x, pt, ph, pw))
    return;
  int64_t n = dp_tensor_nelem (tokens);
  if (n == 0)
    return;
  patchify_kernel<<<dp_cuda_grid (be, n, THREADS), THREADS, 0, stream_of (be)>>> (
    tokens->data, tokens->dtype, x->data, x->dtype, (int) x->shape[1], (int) x->shape[2], (int) x->shape[3], pt,
    ph, pw, n);
  dp_cuda_launched (be, op);
}

extern "C" void
dp_cuda_unpatchify (dp_backend *be, dp_tensor *x, const dp_tensor *tokens, int pt, int ph, int pw)
{
  const char *op = "unpatchify";
  if (!dp_cuda_check (be, op, x, "x") || !dp_cuda_check (be, op, tokens, "tokens")
      || !patch_shapes_ok (be, op, tokens, x, pt, ph, pw))
    return;
  int64_t n = dp_tensor_nelem (x);
  if (n == 0)
    return;
  unpatchify_kernel<<<dp_cuda_grid (be, n, THREADS), THREADS, 0, stream_of (be)>>> (
    x->data, x->dtype, tokens->data, tokens->dtype, (int) x->shape[0], (int) x->shape[1], (int) x->shape[2],
    (int) x->shape[3], pt, ph, pw, n);
  dp_cuda_launched (be, op);
}

/* y[b, a] = x[a, b] through 32 x 33 shared-memory tiles (both sides
 * coalesced); one dtype, moved as raw 2- or 4-byte words. */
template <typename T>
__global__ void
transpose_kernel (T *y, const T *x, int64_t A, int64_t B, int64_t tiles_b, int64_t ntiles)
{
  __shared__ T tile[32][33];
  for (int64_t t = blockIdx.x; t < ntiles; t += gridDim.x) {
    const int64_t a0 = (t / tiles_b) * 32, b0 = (t % tiles_b) * 32;
    for (int i = threadIdx.y; i < 32; i += blockDim.y) {
      int64_t a = a0 + i, b = b0 + threadIdx.x;
      if (a < A && b < B)
        tile[i][threadIdx.x] = x[a * B + b];
    }
    __syncthreads ();
    for (int i = threadIdx.y; i < 32; i += blockDim.y) {
      int64_t b = b0 + i, a = a0 + threadIdx.x;
      if (a < A && b < B)
        y[b * A + a] = tile[threadIdx.x][i];
    }
    __syncthreads ();
  }
}

static gboolean
overlap (const dp_tensor *a, const dp_tensor *b)
{
  const uint8_t *a0 = (const uint8_t *) a->data, *b0 = (const uint8_t *) b->data;
  return a0 < b0 + dp_tensor_nbytes (b) && b0 < a0 + dp_tensor_nbytes (a);
}

extern "C" void
dp_cuda_transpose (dp_backend *be, dp_tensor *y, const dp_tensor *x)
{
  const char *op = "transpose";
  if (!dp_cuda_check (be, op, y, "y") || !dp_cuda_check (be, op, x, "x"))
    return;
  if (y->dtype != x->dtype) {
    dp_backend_fail (be, DP_ERROR_UNSUPPORTED, "%s: dtypes differ (%s vs %s)", op, dp_dtype_name (y->dtype),
                     dp_dtype_name (x->dtype));
    return;
  }
  if (x->ndim < 1 || x->shape[0] <= 0 || dp_tensor_nelem (y) != dp_tensor_nelem (x)) {
    dp_backend_fail (be, DP_ERROR_SHAPE, "%s: y and x must have the same (non-zero) element count", op);
    return;
  }
  if (overlap (x, y)) {
    dp_backend_fail (be, DP_ERROR_INVALID, "%s: y must not alias x", op);
    return;
  }
  const int64_t A = x->shape[0], B = dp_tensor_nelem (x) / A;
  if (B == 0)
    return;
  const int64_t tiles_b = (B + 31) / 32, ntiles = ((A + 31) / 32) * tiles_b;
  const unsigned grid = (unsigned) MIN (ntiles, (int64_t) dp_cuda_of (be)->sm_count * 32);
  const dim3 block (32, 8);
  if (x->dtype == DP_F32)
    transpose_kernel<float><<<grid, block, 0, stream_of (be)>>> ((float *) y->data, (const float *) x->data, A, B,
                                                                 tiles_b, ntiles);
  else
    transpose_kernel<uint16_t><<<grid, block, 0, stream_of (be)>>> ((uint16_t *) y->data,
                                                                    (const uint16_t *) x->data, A, B, tiles_b, ntiles);
  dp_cuda_launched (be, op);
}

extern "C" void
dp_cuda_copy_cols (dp_backend *be, dp_tensor *dst, int64_t dst_col0, const dp_tensor *src, int64_t src_col0,
                   int64_t ncols)
{
  const char *op = "copy_cols";
  if (!dp_cuda_check (be, op, dst, "dst") || !dp_cuda_check (be, op, src, "src"))
    return;
  if (dst->dtype != src->dtype) {
    dp_backend_fail (be, DP_ERROR_UNSUPPORTED, "%s: dtypes differ (%s vs %s)", op, dp_dtype_name (dst->dtype),
                     dp_dtype_name (src->dtype));
    return;
  }
  if (dst->ndim < 1 || src->ndim < 1 || dst->shape[0] != src->shape[0] || dst->shape[0] <= 0) {
    dp_backend_fail (be, DP_ERROR_SHAPE, "%s: row counts differ or are empty", op);
    return;
  }
  const int64_t R = dst->shape[0];
  const int64_t dcols = dp_tensor_nelem (dst) / R, scols = dp_tensor_nelem (src) / R;
  if (ncols < 0 || dst_col0 < 0 || src_col0 < 0 || dst_col0 + ncols > dcols || src_col0 + ncols > scols) {
    dp_backend_fail (be, DP_ERROR_SHAPE,
                     "%s: columns [%" G_GINT64_FORMAT ", +%" G_GINT64_FORMAT ") of %" G_GINT64_FORMAT
                     " from [%" G_GINT64_FORMAT ", +%" G_GINT64_FORMAT ") of %" G_GINT64_FORMAT " out of range",
                     op, dst_col0, ncols, dcols, src_col0, ncols, scols);
    return;
  }
  if (ncols == 0)
    return;
  if (overlap (dst, src)) {
    dp_backend_fail (be, DP_ERROR_INVALID, "%s: dst overlaps src", op);
    return;
  }
  const size_t es = dp_dtype_size (dst->dtype);
  dp_cuda_ok (be, cudaMemcpy2DAsync ((uint8_t *) dst->data + dst_col0 * es, dcols * es,
                                     (const uint8_t *) src->data + src_col0 * es, scols * es, ncols * es, R,
                                     cudaMemcpyDeviceToDevice, stream_of (be)),
              "copy_cols: cudaMemcpy2DAsync");
}
