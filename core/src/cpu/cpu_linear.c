/* CPU backend: y = act (x w^T + bias): one GEMM split over the OpenMP team
 * (dp_cpu_sgemm), bias and activation applied by each thread to its part
 * right after its GEMM, in the same parallel region. */
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

/* dp_cpu_sgemm, then C = act (C + bias) on each part as soon as its GEMM is
 * done, in the same parallel region (one team wake-up per linear, not two). */
static void
sgemm_epilogue (int nt, gboolean trans_b, int64_t M, int64_t N, int64_t K, const float *A, int64_t lda,
                const float *B, int64_t ldb, float beta, float *C, int64_t ldc, const float *bias, dp_act act)
{
  if (M <= 0 || N <= 0)
    return;
  if (nt < 1 || M * N * K < GEMM_PAR_MIN)
    nt = 1;
  /* Split the longer side in parts that keep the kernels' blocking (rows in
   * multiples of 8, columns in multiples of 16). */
  const gboolean split_m = M >= N;
  const int64_t len = split_m ? M : N, align = split_m ? 8 : 16;
  int64_t part = (len + nt - 1) / nt;
  part = (part + align - 1) / align * align;
  const int64_t nparts = (len + part - 1) / part;
  const enum CBLAS_TRANSPOSE tb = trans_b ? CblasTrans : CblasNoTrans;
  const gboolean ep = bias != NULL || act != DP_ACT_NONE;
#pragma omp parallel for schedule(static) num_threads(nt) if (nparts > 1)
  for (int64_t i = 0; i < nparts; i++) {
    const int64_t p0 = i * part, n = MIN (part, len - p0);
    if (split_m) {
      cblas_sgemm (CblasRowMajor, CblasNoTrans, tb, (int) n, (int) N, (int) K, 1.0f, A + p0 * lda, (int) lda, B,
                   (int) ldb, beta, C + p0 * ldc, (int) ldc);
      if (ep)
        epilogue (C + p0 * ldc, ldc, n, N, bias, 0, act);
    } else {
      cblas_sgemm (CblasRowMajor, CblasNoTrans, tb, (int) M, (int) n, (int) K, 1.0f, A, (int) lda,
                   trans_b ? B + p0 * ldb : B + p0, (int) ldb, beta, C + p0, (int) ldc);
      if (ep)
        epilogue (C + p0, ldc, M, n, bias, p0, act);
    }
  }
}

void
dp_cpu_sgemm (int nt, gboolean trans_b, int64_t M, int64_t N, int64_t K, const float *A, int64_t lda,
              const float *B, int64_t ldb, float beta, float *C, int64_t ldc)
{
  sgemm_epilogue (nt, trans_b, M, N, K, A, lda, B, ldb, beta, C, ldc, NULL, DP_ACT_NONE);
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
  sgemm_epilogue (dp_cpu_threads (be), TRUE, M, N, K, x->data, K, w->data, K, 0.0f, yd, N, bd, act);
}
