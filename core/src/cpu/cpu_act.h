/* CPU backend: scalar activations shared by the operation files (private).
 * Same formulas and F32 arithmetic as PyTorch's CPU kernels. */
#ifndef DP_CPU_ACT_H
#define DP_CPU_ACT_H

#include "cpu/backend_cpu.h"

#include <math.h>

/* torch.nn.functional.gelu (x, approximate="tanh"):
 * 0.5 x (1 + tanh (u)), u = sqrt (2/pi) (x + 0.044715 x^3), evaluated as the
 * identical x / (1 + exp (-2u)) (1 + tanh u = 2 / (1 + exp (-2u))): one expf
 * is about 3x cheaper than tanhf and has no cancellation for negative x. */
static inline float
dp_cpu_gelu_tanh_1 (float x)
{
  const float k_beta = 0.7978845608028654f; /* sqrt (2 / pi) */
  const float k_kappa = 0.044715f;
  float inner = k_beta * (x + k_kappa * x * x * x);
  return x / (1.0f + expf (-2.0f * inner));
}

/* torch.nn.functional.silu: x / (1 + exp (-x)); -0 for very negative x. */
static inline float
dp_cpu_silu_1 (float x)
{
  return x / (1.0f + expf (-x));
}

static inline gboolean
dp_cpu_act_valid (dp_act act)
{
  return act == DP_ACT_NONE || act == DP_ACT_GELU_TANH || act == DP_ACT_SILU;
}

static inline float
dp_cpu_act_1 (float x, dp_act act)
{
  switch (act) {
  case DP_ACT_GELU_TANH:
    return dp_cpu_gelu_tanh_1 (x);
  case DP_ACT_SILU:
    return dp_cpu_silu_1 (x);
  case DP_ACT_NONE:
  default:
    return x;
  }
}

/* Whether the byte ranges of two tensors overlap (for ops whose output must
 * not alias an input). */
static inline gboolean
dp_cpu_overlap (const dp_tensor *a, const dp_tensor *b)
{
  const char *a0 = a->data, *b0 = b->data;
  size_t na = dp_tensor_nbytes (a), nb = dp_tensor_nbytes (b);
  if (!a0 || !b0 || na == 0 || nb == 0)
    return FALSE;
  return a0 < b0 + nb && b0 < a0 + na;
}

/* Element-wise loops parallelise above this many elements; below, the cost
 * of waking the pool's workers exceeds the work. */
#define DP_CPU_PAR_MIN 32768

/* Runs fn over [0, n) on be's pool when `parallel`, else at once in this
 * thread as one range (no pool call). */
static inline void
dp_cpu_for (dp_backend *be, gboolean parallel, int64_t n, dp_cpu_range_fn fn, void *ctx)
{
  if (parallel && dp_cpu_threads (be) > 1)
    dp_cpu_parallel_for (be, n, 0, fn, ctx);
  else if (n > 0)
    fn (ctx, 0, n, 0);
}

/* Row-major C [M, N] = A [M, K] op (B) + beta C, op (B) = B^T ([N, K], ldb)
 * when trans_b, else B ([K, N], ldb).  The CPU backend runs OpenBLAS
 * single-threaded (dp_cpu_backend_new) and threads GEMMs itself: this splits
 * the larger of M and N in parts run on be's pool (dp_cpu_parallel_for),
 * one single-threaded CBLAS call per part, so only one thread pool ever
 * runs (cpu_linear.c).  Sizes must fit in int (callers check). */
void dp_cpu_sgemm (dp_backend *be, gboolean trans_b, int64_t M, int64_t N, int64_t K, const float *A, int64_t lda,
                   const float *B, int64_t ldb, float beta, float *C, int64_t ldc);

#endif
