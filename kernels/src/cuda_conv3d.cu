/* CUDA backend: Conv3d as im2col + cuBLASLt GEMM.
 *
 * Row-major y[Cout, P] = w[Cout, K] col[K, P] with K = Cin*kt*kh*kw and P =
 * To*Ho*Wo output positions.  The column matrix is built in BF16 for a
 * chunk of output positions at a time (at most ~256 MiB of scratch), so a
 * 480x832 VAE frame does not need gigabytes.  Bias is added afterwards (the
 * cuBLASLt bias epilogue broadcasts along the other dimension). */
#include "cuda_common.cuh"

#define COL_BUDGET ((size_t) 256 << 20)

/* col[kidx, p - p0] for kidx in [0, K), p in [p0, p0 + np) (row-major, ld np). */
__global__ void
im2col_kernel (__nv_bfloat16 *col, const void *x, int xdt, int T, int H, int W, int kt, int kh, int kw, int To,
               int Ho, int Wo, dp_conv3d_params cp, int64_t p0, int64_t np, int64_t n)
{
  DP_GRID_STRIDE (i, n) {
    int64_t pp = i % np, kidx = i / np, p = p0 + pp;
    int iw = (int) (kidx % kw), ih = (int) ((kidx / kw) % kh), it = (int) ((kidx / ((int64_t) kw * kh)) % kt);
    int64_t ci = kidx / ((int64_t) kw * kh * kt);
    int wo = (int) (p % Wo), ho = (int) ((p / Wo) % Ho), to = (int) (p / ((int64_t) Wo * Ho));
    int t = to * cp.stride_t - cp.pad_t_front + it;
    int hh = ho * cp.stride_h - cp.pad_h + ih;
    int ww = wo * cp.stride_w - cp.pad_w + iw;
    float v = 0.0f;
    if (t >= 0 && t < T && hh >= 0 && hh < H && ww >= 0 && ww < W)
      v = dp_ld (x, xdt, ((ci * T + t) * H + hh) * (int64_t) W + ww);
    col[i] = __float2bfloat16_rn (v);
  }
}

extern "C" void
dp_cuda_conv3d (dp_backend *be, dp_tensor *y, const dp_tensor *x, const dp_tensor *w, const dp_tensor *bias,
                const dp_conv3d_params *p)
{
  const char *op = "conv3d";
  if (!dp_cuda_check (be, op, y, "y") || !dp_cuda_check (be, op, x, "x") || !dp_cuda_check (be, op, w, "w")
      || (bias && !dp_cuda_check (be, op, bias, "bias")))
    return;
  if (!p || p->stride_t < 1 || p->stride_h < 1 || p->stride_w < 1 || p->pad_t_front < 0 || p->pad_t_back < 0
      || p->pad_h < 0 || p->pad_w < 0) {
    dp_backend_fail (be, DP_ERROR_INVALID, "%s: bad strides or paddings", op);
    return;
  }
  char sx[64], sw[64], sy[64];
  if (x->ndim != 4 || w->ndim != 5 || y->ndim != 4 || w->shape[1] != x->shape[0] || y->shape[0] != w->shape[0]
      || (bias && dp_tensor_nelem (bias) != w->shape[0])) {
    dp_backend_fail (be, DP_ERROR_SHAPE, "%s: x %s, w %s, y %s: expected x [Cin, T, H, W], w [Cout, Cin, kt, kh, kw], "
                     "y [Cout, To, Ho, Wo]", op, dp_shape_str (x, sx, sizeof sx), dp_shape_str (w, sw, sizeof sw),
                     dp_shape_str (y, sy, sizeof sy));
    return;
  }
  const int64_t Cin = x->shape[0], T = x->shape[1], H = x->shape[2], W = x->shape[3];
  const int64_t Cout = w->shape[0], kt = w->shape[2], kh = w->shape[3], kw = w->shape[4];
  const int64_t To = (T + p->pad_t_front + p->pad_t_back - kt) / p->stride_t + 1;
  const int64_t Ho = (H + 2 * p->pad_h - kh) / p->stride_h + 1;
  const int64_t Wo = (W + 2 * p->pad_w - kw) / p->stride_w + 1;
  if (T + p->pad_t_front + p->pad_t_back < kt || H + 2 * p->pad_h < kh || W + 2 * p->pad_w < kw
      || y->shape[1] != To || y->shape[2] != Ho || y->shape[3] != Wo) {
    dp_backend_fail (be, DP_ERROR_SHAPE, "%s: y %s, expected [%" G_GINT64_FORMAT ", %" G_GINT64_FORMAT
                     ", %" G_GINT64_FORMAT ", %" G_GINT64_FORMAT "] for x %s and w %s",
                     op, dp_shape_str (y, sy, sizeof sy), Cout, To, Ho, Wo, dp_shape_str (x, sx, sizeof sx),
                     dp_shape_str (w, sw, sizeof sw));
    return;
  }
  if (y->dtype == DP_F16) {
    dp_backend_fail (be, DP_ERROR_UNSUPPORTED, "%s: y must be BF16 or F32, got F16", op);
    return;
  }
  const int64_t K = Cin * kt * kh * kw, P = To * Ho * Wo;
  if (P == 0 || Cout == 0)
    return;
  dp_cuda *c = dp_cuda_of (be);
  c->conv_last_cudnn = FALSE;
  if (c->conv_impl == DP_CUDA_CONV_CUDNN && K > 0 && dp_cuda_conv3d_cudnn (be, y, x, w, bias, p)) {
    c->conv_last_cudnn = TRUE;
    return;
  }
  if (K == 0) {
    dp_backend_fail (be, DP_ERROR_UNSUPPORTED, "%s: empty kernel", op);
    return;
  }
  /* Chunk of output positions: a multiple of 8 (16-byte rows for cuBLASLt). */
  int64_t chunk = (int64_t) (COL_BUDGET / ((size_t) K * 2));
  chunk = MAX (chunk - chunk % 8, 8);
  chunk = MIN (chunk, P);
  size_t w_bytes = w->dtype == DP_BF16 ? 0 : (((size_t) Cout * K * 2 + 255) & ~(size_t) 255);
  uint8_t *s = (uint8_t *) dp_cuda_scratch (be, w_bytes + (size_t) K * chunk * 2);
  if (!s)
    return;
  const void *wa = w->data;
  if (w_bytes) {
    dp_cuda_convert (be, s, DP_BF16, w->data, w->dtype, Cout * K);
    wa = s;
  }
  __nv_bfloat16 *col = (__nv_bfloat16 *) (s + w_bytes);
  const size_t ysize = dp_dtype_size (y->dtype);
  for (int64_t p0 = 0; p0 < P && !dp_backend_failed (be); p0 += chunk) {
    int64_t np = MIN (chunk, P - p0), n = np * K;
    im2col_kernel<<<dp_cuda_grid (be, n, 256), 256, 0, dp_cuda_of (be)->stream>>> (
      col, x->data, x->dtype, (int) T, (int) H, (int) W, (int) kt, (int) kh, (int) kw, (int) To, (int) Ho, (int) Wo,
      *p, p0, np, n);
    if (!dp_cuda_launched (be, "conv3d (im2col)"))
      return;
    /* Column-major: y^T[P, Cout] (ld P) = col^T[np, K] (col row-major [K, np] = col-major [np, K], ld np)
     * x w^T (w row-major [Cout, K] = col-major [K, Cout], ld K). */
    dp_cuda_gemm (be, FALSE, FALSE, np, Cout, K, col, np, wa, K, DP_BF16, (uint8_t *) y->data + p0 * ysize, P,
                  y->dtype, NULL, FALSE, FALSE);
  }
  if (bias)
    dp_cuda_add_row_bias (be, y->data, y->dtype, bias->data, bias->dtype, Cout, P);
}
