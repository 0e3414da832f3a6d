/* CPU backend: y = act (x w^T + bias): one GEMM split in parts run on the
 * backend's pool (dp_cpu_sgemm), bias and activation applied to each part
 * right after its GEMM, in the same parallel loop. */
#include "cpu/backend_cpu.h"
#include "cpu/cpu_act.h"

#include <cblas.h>
#include <limits.h>

/* Below this many multiply-adds a GEMM runs in the calling thread. */
#define GEMM_PAR_MIN (1 << 20)

/* C [rows, cols] (row stride ldc) = act (C + bias): bias [cols] or NULL. */
static void
epilogue (float *C, int64_t ldc, int64_t rows, int64_t cols, const float *bias, int64_t bias0, dp_act act)
{
  for (int64_t m = 0; m < rows; m++) {
    float *row = C + m * ldc;
    if (bias)
      for (int64_t n = 0; n < cols; n++)
        row[n] += bias[bias0 + n];
    if (act != DP_ACT_NONE)
      for (int64_t n = 0; n < cols; n++)
        row[n] = dp_cpu_act_1 (row[n], act);
  }
}

/* Parts per thread a GEMM is split into.  More than one would let the
 * others take over more of a late worker's share, but OpenBLAS picks its
 * kernel by shape (a small-matrix kernel below about 10^6 multiply-adds on
 * AVX-512, a direct one for some NN shapes), and kernels round
 * differently: 2 parts per thread changed the frames at 3 threads
 * (dualparal-generate --threads 3, embedded model), and measured no faster
 * beside two busy processes (2 and 4 against 1, 2 CPUs).  With one part
 * per thread the CBLAS calls are those of the OpenMP build, bit for bit;
 * a worker that has not started is still never waited for (the caller
 * takes its part). */
#define GEMM_PARTS_PER_THREAD 1

typedef struct {
  gboolean trans_b, split_m;
  int64_t M, N, K, lda, ldb, ldc, part, len;
  const float *A, *B, *bias;
  float beta;
  float *C;
  dp_act act;
} gemm_job;

/* Parts [i0, i1): one CBLAS call each, then C = act (C + bias) on the part
 * as soon as its GEMM is done (one loop per linear, not two). */
static void
gemm_parts (void *ctx, int64_t i0, int64_t i1, int worker)
{
  const gemm_job *g = ctx;
  const enum CBLAS_TRANSPOSE tb = g->trans_b ? CblasTrans : CblasNoTrans;
  const gboolean ep = g->bias != NULL || g->act != DP_ACT_NONE;
  for (int64_t i = i0; i < i1; i++) {
    const int64_t p0 = i * g->part, n = MIN (g->part, g->len - p0);
    if (g->split_m) {
      cblas_sgemm (CblasRowMajor, CblasNoTrans, tb, (int) n, (int) g->N, (int) g->K, 1.0f, g->A + p0 * g->lda,
                   (int) g->lda, g->B, (int) g->ldb, g->beta, g->C + p0 * g->ldc, (int) g->ldc);
      if (ep)
        epilogue (g->C + p0 * g->ldc, g->ldc, n, g->N, g->bias, 0, g->act);
    } else {
      cblas_sgemm (CblasRowMajor, CblasNoTrans, tb, (int) g->M, (int) n, (int) g->K, 1.0f, g->A, (int) g->lda,
                   g->trans_b ? g->B + p0 * g->ldb : g->B + p0, (int) g->ldb, g->beta, g->C + p0, (int) g->ldc);
      if (ep)
        epilogue (g->C + p0, g->ldc, g->M, n, g->bias, p0, g->act);
    }
  }
}

/* dp_cpu_sgemm with the epilogue, over be's pool. */
static void
sgemm_epilogue (dp_backend *be, gboolean trans_b, int64_t M, int64_t N, int64_t K, const float *A, int64_t lda,
                const float *B, int64_t ldb, float beta, float *C, int64_t ldc, const float *bias, dp_act act)
{
  if (M <= 0 || N <= 0)
    return;
  const int nt = M * N * K < GEMM_PAR_MIN ? 1 : dp_cpu_threads (be);
  /* Split the longer side in parts that keep the kernels' blocking (rows in
   * multiples of 8, columns in multiples of 16); every element is computed
   * by one CBLAS call whatever the split. */
  const gboolean split_m = M >= N;
  const int64_t len = split_m ? M : N, align = split_m ? 8 : 16;
  const int64_t want = nt == 1 ? 1 : (int64_t) nt * GEMM_PARTS_PER_THREAD;
  int64_t part = (len + want - 1) / want;
  part = (part + align - 1) / align * align;
  const int64_t nparts = (len + part - 1) / part;
  gemm_job g = { trans_b, split_m, M, N, K, lda, ldb, ldc, part, len, A, B, bias, beta, C, act };
  if (nparts > 1)
    dp_cpu_parallel_for (be, nparts, 1, gemm_parts, &g);
  else
    gemm_parts (&g, 0, 1, 0);
}

void
dp_cpu_sgemm (dp_backend *be, gboolean trans_b, int64_t M, int64_t N, int64_t K, const float *A, int64_t lda,
              const float *B, int64_t ldb, float beta, float *C, int64_t ldc)
{
  sgemm_epilogue (be, trans_b, M, N, K, A, lda, B, ldb, beta, C, ldc, NULL, DP_ACT_NONE);
}

void
dp_cpu_linear (dp_backend *be, dp_tensor *y, const dp_tensor *x, const dp_tensor *w,
               const dp_tensor *bias, dp_act act)
{
  if (!dp_cpu_check_f32 (be, "linear", x) || !dp_cpu_check_f32 (be, "linear", w) ||
      !dp_cpu_check_f32 (be, "linear", y))
    return;
  if (bias && !dp_cpu_check_f32 (be, "linear", bias))
    return;
  if (!dp_cpu_act_valid (act)) {
    dp_backend_fail (be, DP_ERROR_INVALID, "linear: unknown activation %d", (int) act);
    return;
  }
  char bx[64], bw[64], by[64];
  if (w->ndim != 2 || x->ndim < 1 || y->ndim < 1 || dp_tensor_cols (x) != w->shape[1] ||
      dp_tensor_cols (y) != w->shape[0] || dp_tensor_rows (x) != dp_tensor_rows (y)) {
    dp_backend_fail (be, DP_ERROR_SHAPE, "linear: y %s = x %s w^T with w %s do not match",
                     dp_shape_str (y, by, sizeof by), dp_shape_str (x, bx, sizeof bx),
                     dp_shape_str (w, bw, sizeof bw));
    return;
  }
  const int64_t M = dp_tensor_rows (x), K = w->shape[1], N = w->shape[0];
  if (bias && dp_tensor_nelem (bias) != N) {
    dp_backend_fail (be, DP_ERROR_SHAPE, "linear: bias has %" G_GINT64_FORMAT " elements, w %s needs %" G_GINT64_FORMAT,
                     dp_tensor_nelem (bias), dp_shape_str (w, bw, sizeof bw), N);
    return;
  }
  if (M > INT_MAX || N > INT_MAX || K > INT_MAX) {
    dp_backend_fail (be, DP_ERROR_UNSUPPORTED, "linear: dimensions %" G_GINT64_FORMAT "x%" G_GINT64_FORMAT "x%" G_GINT64_FORMAT " exceed the BLAS int range",
                     M, N, K);
    return;
  }
  if (dp_cpu_overlap (y, x) || dp_cpu_overlap (y, w) || (bias && dp_cpu_overlap (y, bias))) {
    dp_backend_fail (be, DP_ERROR_INVALID, "linear: y must not overlap x, w or bias");
    return;
  }
  if (M == 0 || N == 0)
    return;

  float *yd = y->data;
  const float *bd = bias ? bias->data : NULL;
  if (K == 0) {
    for (int64_t i = 0; i < M * N; i++)
      yd[i] = 0.0f;
    epilogue (yd, N, M, N, bd, 0, act);
    return;
  }
  sgemm_epilogue (be, TRUE, M, N, K, x->data, K, w->data, K, 0.0f, yd, N, bd, act);
}
