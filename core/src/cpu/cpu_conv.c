/* CPU backend: Conv3d.  Stride 1 with few output channels goes to
 * cpu_conv_direct.c; the rest runs here as im2col + GEMM.
 *
 * The output is cut into tasks (output frame, chunk of output positions)
 * spread over the backend's thread pool.  A task unrolls its input patches into a
 * column matrix col [K, n] (K = Cin * kt * kh * kw, row order
 * (ci, dt, dh, dw) = the weight's flattening, zeros where the window reads
 * padding), then one single-threaded CBLAS GEMM writes
 * y[:, to, chunk] = w [Cout, K] col straight into y through its row stride
 * To * Ho * Wo.  Each thread has its own column buffer; up to
 * CONV_SPLIT_THREADS threads they hold at most CONV_COL_BUDGET floats
 * (malloc'd per call), so the scratch stays bounded whatever the input size.  A 1x1x1 convolution with stride 1 and no
 * padding skips the unrolling: it is one (parallel) GEMM on x. */
#include "cpu/backend_cpu.h"
#include "cpu/cpu_act.h"

#include <cblas.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#define CONV_COL_BUDGET (8 * 1024 * 1024) /* floats: 32 MiB */
#define CONV_SPLIT_THREADS 8
/* Output channels up to which a stride-1 conv is computed directly: 1.7-10x
 * faster than im2col + GEMM up to 64 channels, as fast at 96, slower from
 * 192 on, where the GEMM's blocking wins (docs/performance.md). */
#define CONV_DIRECT_MAX_COUT 96

typedef struct {
  int64_t T, H, W, Wo, P, Ny, K, Cout, kt, kh, kw, st, sh, sw, pf, ph, pw, chunk, nchunks;
  const float *xd, *wd;
  float *yd, *col; /* col: one [K, chunk] buffer per thread */
} conv_job;

/* Tasks [t0, t1): (output frame, chunk of its pixels) each: unroll the
 * patches into thread worker's column buffer, then one GEMM. */
static void
conv_tasks (void *ctx, int64_t t0, int64_t t1, int worker)
{
  const conv_job *job = ctx;
  const int64_t T = job->T, H = job->H, W = job->W, Wo = job->Wo, P = job->P, Ny = job->Ny, K = job->K;
  const int64_t Cout = job->Cout, kt = job->kt, kh = job->kh, kw = job->kw;
  const int64_t st = job->st, sh = job->sh, sw = job->sw, pf = job->pf, ph = job->ph, pw = job->pw;
  const int64_t chunk = job->chunk, nchunks = job->nchunks, HW = H * W;
  const float *xd = job->xd, *wd = job->wd;
  float *yd = job->yd;
  float *cb = job->col + (size_t) worker * (size_t) (K * chunk);
  for (int64_t task = t0; task < t1; task++) {
    const int64_t to = task / nchunks, p0 = (task % nchunks) * chunk, n = MIN (chunk, P - p0);
    for (int64_t kr = 0; kr < K; kr++) {
      const int64_t ci = kr / (kt * kh * kw), dt = (kr / (kh * kw)) % kt, dh = (kr / kw) % kh, dw = kr % kw;
      const int64_t ti = to * st - pf + dt;
      float *cr = cb + kr * n;
      if (ti < 0 || ti >= T) {
        memset (cr, 0, (size_t) n * sizeof (float));
        continue;
      }
      const float *xf = xd + (ci * T + ti) * HW;
      int64_t ho = p0 / Wo, wo = p0 % Wo;
      for (int64_t j = 0; j < n;) {
        /* one output row segment: wi = wo * sw - pw + dw */
        const int64_t seg = MIN (n - j, Wo - wo);
        const int64_t hi = ho * sh - ph + dh;
        if (hi < 0 || hi >= H) {
          memset (cr + j, 0, (size_t) seg * sizeof (float));
        } else {
          const float *xr = xf + hi * W;
          for (int64_t e = 0; e < seg; e++) {
            const int64_t wi = (wo + e) * sw - pw + dw;
            cr[j + e] = (wi >= 0 && wi < W) ? xr[wi] : 0.0f;
          }
        }
        j += seg;
        wo = 0;
        ho++;
      }
    }
    cblas_sgemm (CblasRowMajor, CblasNoTrans, CblasNoTrans, (int) Cout, (int) n, (int) K, 1.0f, wd, (int) K, cb,
                 (int) n, 0.0f, yd + to * P + p0, (int) Ny);
  }
}

typedef struct {
  int64_t Ny;
  const float *bd;
  float *yd;
} bias_job;

static void
bias_rows (void *ctx, int64_t c0, int64_t c1, int worker)
{
  const bias_job *job = ctx;
  for (int64_t co = c0; co < c1; co++) {
    float *yr = job->yd + co * job->Ny;
    for (int64_t i = 0; i < job->Ny; i++)
      yr[i] += job->bd[co];
  }
}

void
dp_cpu_conv3d (dp_backend *be, dp_tensor *y, const dp_tensor *x, const dp_tensor *w, const dp_tensor *bias,
               const dp_conv3d_params *p)
{
  if (!dp_cpu_check_f32 (be, "conv3d", x) || !dp_cpu_check_f32 (be, "conv3d", w) ||
      !dp_cpu_check_f32 (be, "conv3d", y))
    return;
  if (bias && !dp_cpu_check_f32 (be, "conv3d", bias))
    return;
  if (!p || p->stride_t < 1 || p->stride_h < 1 || p->stride_w < 1 || p->pad_t_front < 0 || p->pad_t_back < 0 ||
      p->pad_h < 0 || p->pad_w < 0) {
    dp_backend_fail (be, DP_ERROR_INVALID, "conv3d: missing parameters, stride < 1 or negative padding");
    return;
  }
  char bx[64], bw[64], by[64];
  if (x->ndim != 4 || w->ndim != 5 || y->ndim != 4 || w->shape[1] != x->shape[0]) {
    dp_backend_fail (be, DP_ERROR_SHAPE, "conv3d: x %s, w %s, y %s are not [Cin, T, H, W], [Cout, Cin, kt, kh, kw], [Cout, To, Ho, Wo]",
                     dp_shape_str (x, bx, sizeof bx), dp_shape_str (w, bw, sizeof bw), dp_shape_str (y, by, sizeof by));
    return;
  }
  const int64_t Cin = x->shape[0], T = x->shape[1], H = x->shape[2], W = x->shape[3];
  const int64_t Cout = w->shape[0], kt = w->shape[2], kh = w->shape[3], kw = w->shape[4];
  const int64_t To = (T + p->pad_t_front + p->pad_t_back - kt) / p->stride_t + 1;
  const int64_t Ho = (H + 2 * p->pad_h - kh) / p->stride_h + 1;
  const int64_t Wo = (W + 2 * p->pad_w - kw) / p->stride_w + 1;
  if (kt < 1 || kh < 1 || kw < 1 || T + p->pad_t_front + p->pad_t_back < kt || H + 2 * p->pad_h < kh ||
      W + 2 * p->pad_w < kw) {
    dp_backend_fail (be, DP_ERROR_SHAPE, "conv3d: kernel of w %s does not fit the padded x %s",
                     dp_shape_str (w, bw, sizeof bw), dp_shape_str (x, bx, sizeof bx));
    return;
  }
  if (y->shape[0] != Cout || y->shape[1] != To || y->shape[2] != Ho || y->shape[3] != Wo) {
    dp_backend_fail (be, DP_ERROR_SHAPE, "conv3d: y %s, expected [%" G_GINT64_FORMAT ", %" G_GINT64_FORMAT ", %" G_GINT64_FORMAT ", %" G_GINT64_FORMAT "]",
                     dp_shape_str (y, by, sizeof by), Cout, To, Ho, Wo);
    return;
  }
  if (bias && dp_tensor_nelem (bias) != Cout) {
    dp_backend_fail (be, DP_ERROR_SHAPE, "conv3d: bias has %" G_GINT64_FORMAT " elements, expected %" G_GINT64_FORMAT,
                     dp_tensor_nelem (bias), Cout);
    return;
  }
  const int64_t K = Cin * kt * kh * kw, P = Ho * Wo, Ny = To * P;
  if (K > INT_MAX || Cout > INT_MAX || Ny > INT_MAX || T * H * W > INT_MAX) {
    dp_backend_fail (be, DP_ERROR_UNSUPPORTED, "conv3d: sizes exceed the BLAS int range");
    return;
  }
  if (dp_cpu_overlap (y, x) || dp_cpu_overlap (y, w) || (bias && dp_cpu_overlap (y, bias))) {
    dp_backend_fail (be, DP_ERROR_INVALID, "conv3d: y must not overlap x, w or bias");
    return;
  }
  if (Cout == 0 || Ny == 0)
    return;

  const float *xd = x->data, *wd = w->data;
  float *yd = y->data;
  const dp_cpu_conv_route route = ((const dp_cpu_state *) be->priv)->conv;
  if (Cin == 0) {
    memset (yd, 0, (size_t) (Cout * Ny) * sizeof (float));
  } else if (kt == 1 && kh == 1 && kw == 1 && p->stride_t == 1 && p->stride_h == 1 && p->stride_w == 1 &&
             p->pad_t_front == 0 && p->pad_t_back == 0 && p->pad_h == 0 && p->pad_w == 0) {
    /* pointwise: y [Cout, T*H*W] = w [Cout, Cin] x [Cin, T*H*W] */
    dp_cpu_sgemm (be, FALSE, Cout, Ny, Cin, wd, Cin, xd, Ny, 0.0f, yd, Ny);
  } else if (p->stride_t == 1 && p->stride_h == 1 && p->stride_w == 1 && route != DP_CPU_CONV_IM2COL &&
             (Cout <= CONV_DIRECT_MAX_COUT || route == DP_CPU_CONV_DIRECT)) {
    dp_cpu_conv3d_direct (be, y, x, w, bias, p); /* adds the bias itself */
    return;
  } else {
    /* The split never depends on the thread count: a GEMM's bits depend on
     * its shape, and results must not change with threads.  Sized as for
     * CONV_SPLIT_THREADS threads (the column buffers exceed the budget
     * only with more), with tasks for twice as many (not below 64 columns). */
    const int nt = dp_cpu_threads (be);
    int64_t chunk = MIN (P, MAX (1, CONV_COL_BUDGET / CONV_SPLIT_THREADS / K));
    while (chunk > 64 && To * ((P + chunk - 1) / chunk) < 2 * CONV_SPLIT_THREADS)
      chunk = (chunk + 1) / 2;
    const int64_t nchunks = (P + chunk - 1) / chunk, ntasks = To * nchunks;
    float *col = malloc ((size_t) nt * (size_t) (K * chunk) * sizeof (float));
    if (!col) {
      dp_backend_fail (be, DP_ERROR_NOMEM, "conv3d: cannot allocate %d %" G_GINT64_FORMAT " x %" G_GINT64_FORMAT " column buffers",
                       nt, K, chunk);
      return;
    }
    const int64_t st = p->stride_t, sh = p->stride_h, sw = p->stride_w;
    const int64_t pf = p->pad_t_front, ph = p->pad_h, pw = p->pad_w;
    conv_job job = { T, H, W, Wo, P, Ny, K, Cout, kt, kh, kw, st, sh, sw, pf, ph, pw, chunk, nchunks, xd, wd, yd, col };
    /* one task per chunk: tasks are large */
    if (ntasks > 1 && Cout * K * P > DP_CPU_PAR_MIN && nt > 1)
      dp_cpu_parallel_for (be, ntasks, 1, conv_tasks, &job);
    else
      conv_tasks (&job, 0, ntasks, 0);
    free (col);
  }

  if (bias) {
    bias_job job = { Ny, bias->data, yd };
    dp_cpu_for (be, Cout * Ny > DP_CPU_PAR_MIN, Cout, bias_rows, &job);
  }
}
