/* CUDA backend: GEMMs through cuBLASLt, and the linear layer.
 *
 * A plan (matmul descriptor, matrix layouts, the heuristic's algorithm) is
 * made once per shape / dtype / epilogue / alignment and cached: the DiT
 * calls a handful of shapes thousands of times. */
#include "cuda_priv.h"

#include <string.h>

typedef struct {
  cublasLtMatmulDesc_t desc;
  cublasLtMatrixLayout_t a, b, d;
  cublasLtMatmulAlgo_t algo;
} dp_cuda_gemm_plan;

static void
plan_free (gpointer data)
{
  dp_cuda_gemm_plan *p = data;
  if (p->a)
    cublasLtMatrixLayoutDestroy (p->a);
  if (p->b)
    cublasLtMatrixLayoutDestroy (p->b);
  if (p->d)
    cublasLtMatrixLayoutDestroy (p->d);
  if (p->desc)
    cublasLtMatmulDescDestroy (p->desc);
  g_free (p);
}

void
dp_cuda_gemm_plans_free (dp_backend *be)
{
  dp_cuda *c = dp_cuda_of (be);
  if (c->gemm_plans) {
    g_hash_table_destroy (c->gemm_plans);
    c->gemm_plans = NULL;
  }
}

static cudaDataType_t
cuda_type (dp_dtype dt)
{
  return dt == DP_F32 ? CUDA_R_32F : dt == DP_BF16 ? CUDA_R_16BF : CUDA_R_16F;
}

/* Largest power of two (at most 256) dividing the address. */
static unsigned
alignment (const void *p)
{
  uintptr_t u = (uintptr_t) p;
  unsigned a = 1;
  while (a < 256 && (u & (2 * a - 1)) == 0)
    a *= 2;
  return a;
}

static dp_cuda_gemm_plan *
plan_new (dp_backend *be, gboolean trans_a, gboolean trans_b, int64_t m, int64_t n, int64_t k, int64_t lda,
          int64_t ldb, dp_dtype ab_dtype, int64_t ldd, dp_dtype d_dtype, cublasLtEpilogue_t epilogue,
          unsigned align_a, unsigned align_b, unsigned align_d, unsigned align_bias)
{
  dp_cuda *c = dp_cuda_of (be);
  dp_cuda_gemm_plan *p = g_new0 (dp_cuda_gemm_plan, 1);
  cublasLtMatmulPreference_t pref = NULL;
  cublasOperation_t ta = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, tb = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  cudaDataType_t abt = cuda_type (ab_dtype), dt = cuda_type (d_dtype);
  uint64_t ws = c->lt_workspace_size;
  uint32_t al_a = align_a, al_b = align_b, al_d = align_d;
  cublasLtMatmulHeuristicResult_t heur;
  int found = 0;

  if (!dp_cublas_ok (be, cublasLtMatmulDescCreate (&p->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F), "cublasLtMatmulDescCreate")
      || !dp_cublas_ok (be, cublasLtMatmulDescSetAttribute (p->desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta),
                        "cublasLt TRANSA")
      || !dp_cublas_ok (be, cublasLtMatmulDescSetAttribute (p->desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb),
                        "cublasLt TRANSB")
      || !dp_cublas_ok (be, cublasLtMatmulDescSetAttribute (p->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue,
                                                            sizeof epilogue),
                        "cublasLt EPILOGUE")
      || !dp_cublas_ok (be, cublasLtMatrixLayoutCreate (&p->a, abt, trans_a ? k : m, trans_a ? m : k, lda),
                        "cublasLtMatrixLayoutCreate (A)")
      || !dp_cublas_ok (be, cublasLtMatrixLayoutCreate (&p->b, abt, trans_b ? n : k, trans_b ? k : n, ldb),
                        "cublasLtMatrixLayoutCreate (B)")
      || !dp_cublas_ok (be, cublasLtMatrixLayoutCreate (&p->d, dt, m, n, ldd), "cublasLtMatrixLayoutCreate (D)")
      || !dp_cublas_ok (be, cublasLtMatmulPreferenceCreate (&pref), "cublasLtMatmulPreferenceCreate")
      || !dp_cublas_ok (be, cublasLtMatmulPreferenceSetAttribute (pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                                  &ws, sizeof ws),
                        "cublasLt workspace preference")
      || !dp_cublas_ok (be, cublasLtMatmulPreferenceSetAttribute (pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                                                                  &al_a, sizeof al_a),
                        "cublasLt alignment preference")
      || !dp_cublas_ok (be, cublasLtMatmulPreferenceSetAttribute (pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                                                                  &al_b, sizeof al_b),
                        "cublasLt alignment preference")
      || !dp_cublas_ok (be, cublasLtMatmulPreferenceSetAttribute (pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                                                                  &al_d, sizeof al_d),
                        "cublasLt alignment preference")
      || !dp_cublas_ok (be, cublasLtMatmulPreferenceSetAttribute (pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                                                                  &al_d, sizeof al_d),
                        "cublasLt alignment preference"))
    goto fail;
  (void) align_bias; /* part of the cache key: a bias pointer is set per call */
  if (!dp_cublas_ok (be, cublasLtMatmulAlgoGetHeuristic (c->lt, p->desc, p->a, p->b, p->d, p->d, pref, 1, &heur,
                                                         &found),
                     "cublasLtMatmulAlgoGetHeuristic"))
    goto fail;
  if (found < 1) {
    dp_backend_fail (be, DP_ERROR_UNSUPPORTED,
                     "cuBLASLt has no algorithm for a %s GEMM m=%" G_GINT64_FORMAT " n=%" G_GINT64_FORMAT
                     " k=%" G_GINT64_FORMAT " -> %s (epilogue %d)",
                     dp_dtype_name (ab_dtype), m, n, k, dp_dtype_name (d_dtype), (int) epilogue);
    goto fail;
  }
  p->algo = heur.algo;
  cublasLtMatmulPreferenceDestroy (pref);
  return p;

fail:
  if (pref)
    cublasLtMatmulPreferenceDestroy (pref);
  plan_free (p);
  return NULL;
}

gboolean
dp_cuda_gemm (dp_backend *be, gboolean trans_a, gboolean trans_b, int64_t m, int64_t n, int64_t k, const void *a,
              int64_t lda, const void *b, int64_t ldb, dp_dtype ab_dtype, void *d, int64_t ldd, dp_dtype d_dtype,
              const void *bias, gboolean gelu, gboolean accumulate)
{
  dp_cuda *c = dp_cuda_of (be);
  if (dp_backend_failed (be))
    return FALSE;
  if (m == 0 || n == 0)
    return TRUE;
  cublasLtEpilogue_t epi = bias ? (gelu ? CUBLASLT_EPILOGUE_GELU_BIAS : CUBLASLT_EPILOGUE_BIAS)
                                : (gelu ? CUBLASLT_EPILOGUE_GELU : CUBLASLT_EPILOGUE_DEFAULT);
  if (k == 0) {
    /* An empty sum: D = act(bias) or 0.  Rare (never in the models); keep it
     * correct without asking cuBLASLt about a degenerate shape. */
    dp_backend_fail (be, DP_ERROR_UNSUPPORTED, "linear: K = 0 is not supported");
    return FALSE;
  }
  unsigned al_a = MIN (alignment (a), 16), al_b = MIN (alignment (b), 16), al_d = MIN (alignment (d), 16);
  unsigned al_bias = bias ? MIN (alignment (bias), 16) : 0;
  char key[256];
  g_snprintf (key, sizeof key,
              "%d%d %" G_GINT64_FORMAT " %" G_GINT64_FORMAT " %" G_GINT64_FORMAT " %" G_GINT64_FORMAT
              " %" G_GINT64_FORMAT " %" G_GINT64_FORMAT " %d %d %d %u %u %u %u",
              trans_a, trans_b, m, n, k, lda, ldb, ldd, ab_dtype, d_dtype, (int) epi, al_a, al_b, al_d, al_bias);
  if (!c->gemm_plans)
    c->gemm_plans = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, plan_free);
  dp_cuda_gemm_plan *p = g_hash_table_lookup (c->gemm_plans, key);
  if (!p) {
    p = plan_new (be, trans_a, trans_b, m, n, k, lda, ldb, ab_dtype, ldd, d_dtype, epi, al_a, al_b, al_d, al_bias);
    if (!p)
      return FALSE;
    g_hash_table_insert (c->gemm_plans, g_strdup (key), p);
  }
  if (bias && !dp_cublas_ok (be, cublasLtMatmulDescSetAttribute (p->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias,
                                                                 sizeof bias),
                             "cublasLt BIAS_POINTER"))
    return FALSE;
  /* accumulate: D = A B + bias + D (C and D are the same matrix, which
   * cuBLASLt allows in place when their layouts match). */
  float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
  return dp_cublas_ok (be, cublasLtMatmul (c->lt, p->desc, &alpha, a, p->a, b, p->b, &beta, d, p->d, d, p->d,
                                           &p->algo, c->lt_workspace, c->lt_workspace_size, c->stream),
                       "cublasLtMatmul");
}

#define SCRATCH_ALIGN(x) (((x) + 255) & ~(size_t) 255)

void
dp_cuda_linear (dp_backend *be, dp_tensor *y, const dp_tensor *x, const dp_tensor *w, const dp_tensor *bias,
                dp_act act)
{
  const char *op = "linear";
  if (!dp_cuda_check (be, op, y, "y") || !dp_cuda_check (be, op, x, "x") || !dp_cuda_check (be, op, w, "w")
      || (bias && !dp_cuda_check (be, op, bias, "bias")))
    return;
  int64_t K = dp_tensor_cols (x), M = dp_tensor_rows (x), N = w->ndim == 2 ? w->shape[0] : -1;
  if (w->ndim != 2 || w->shape[1] != K || dp_tensor_cols (y) != N || dp_tensor_rows (y) != M
      || (bias && dp_tensor_nelem (bias) != N)) {
    char sx[64], sw[64], sy[64], sb[64] = "none";
    if (bias)
      dp_shape_str (bias, sb, sizeof sb);
    dp_backend_fail (be, DP_ERROR_SHAPE, "linear: x %s, w %s, bias %s, y %s do not fit y = x w^T + b",
                     dp_shape_str (x, sx, sizeof sx), dp_shape_str (w, sw, sizeof sw), sb,
                     dp_shape_str (y, sy, sizeof sy));
    return;
  }
  if (y->dtype == DP_F16) {
    dp_backend_fail (be, DP_ERROR_UNSUPPORTED, "linear: y must be BF16 or F32, got F16");
    return;
  }
  if (act != DP_ACT_NONE && act != DP_ACT_GELU_TANH && act != DP_ACT_SILU) {
    dp_backend_fail (be, DP_ERROR_INVALID, "linear: unknown activation %d", (int) act);
    return;
  }
  if (M == 0 || N == 0)
    return;

  /* Operands that are not BF16 (and a bias not in y's dtype) go through
   * scratch; the model stores weights in BF16 so this is the rare path. */
  size_t need_x = x->dtype != DP_BF16 ? SCRATCH_ALIGN ((size_t) M * K * 2) : 0;
  size_t need_w = w->dtype != DP_BF16 ? SCRATCH_ALIGN ((size_t) N * K * 2) : 0;
  /* cuBLASLt's bias epilogue wants a 16-byte aligned vector of y's dtype. */
  size_t need_b = bias && (bias->dtype != y->dtype || ((uintptr_t) bias->data & 15))
                    ? SCRATCH_ALIGN ((size_t) N * dp_dtype_size (y->dtype)) : 0;
  const void *xa = x->data, *wa = w->data, *ba = bias ? bias->data : NULL;
  if (need_x + need_w + need_b) {
    uint8_t *s = dp_cuda_scratch (be, need_x + need_w + need_b);
    if (!s)
      return;
    if (need_x) {
      dp_cuda_convert (be, s, DP_BF16, x->data, x->dtype, M * K);
      xa = s;
    }
    if (need_w) {
      dp_cuda_convert (be, s + need_x, DP_BF16, w->data, w->dtype, N * K);
      wa = s + need_x;
    }
    if (need_b) {
      dp_cuda_convert (be, s + need_x + need_w, y->dtype, bias->data, bias->dtype, N);
      ba = s + need_x + need_w;
    }
  }
  /* Row-major y[M, N] = x[M, K] w[N, K]^T is column-major
   * y^T[N, M] = (w as col-major [K, N])^T (x as col-major [K, M]). */
  if (!dp_cuda_gemm (be, TRUE, FALSE, N, M, K, wa, K, xa, K, DP_BF16, y->data, N, y->dtype, ba,
                     act == DP_ACT_GELU_TANH, FALSE))
    return;
  if (act == DP_ACT_SILU)
    dp_cuda_silu_raw (be, y->data, y->dtype, y->data, y->dtype, M * N);
}

/* x += gate * (a w^T + bias) as one GEMM accumulating into the F32 rows of x:
 * the gate (one value per output column) is folded into a scaled copy of the
 * weight rows and the bias, so the branch output never makes a round trip
 * through memory (saving the gated_add pass: at Wan2.1-1.3B block shapes a
 * read of x, of the branch and a write of x, per projection).  Rounding the
 * scaled weights to BF16 costs what rounding the branch output did. */
void
dp_cuda_linear_gated_add (dp_backend *be, dp_tensor *x, const dp_tensor *a, const dp_tensor *w,
                          const dp_tensor *bias, const dp_tensor *gate)
{
  const char *op = "linear_gated_add";
  if (!dp_cuda_check (be, op, x, "x") || !dp_cuda_check (be, op, a, "a") || !dp_cuda_check (be, op, w, "w")
      || (bias && !dp_cuda_check (be, op, bias, "bias")) || (gate && !dp_cuda_check (be, op, gate, "gate")))
    return;
  int64_t K = dp_tensor_cols (a), M = dp_tensor_rows (a), N = w->ndim == 2 ? w->shape[0] : -1;
  if (w->ndim != 2 || w->shape[1] != K || dp_tensor_cols (x) != N || dp_tensor_rows (x) != M
      || (bias && dp_tensor_nelem (bias) != N) || (gate && dp_tensor_nelem (gate) != N)) {
    char sx[64], sa[64], sw[64];
    dp_backend_fail (be, DP_ERROR_SHAPE, "linear_gated_add: x %s, a %s, w %s (bias, gate [N]) do not fit "
                     "x += gate (a w^T + bias)", dp_shape_str (x, sx, sizeof sx), dp_shape_str (a, sa, sizeof sa),
                     dp_shape_str (w, sw, sizeof sw));
    return;
  }
  if (x->dtype != DP_F32 || a->dtype != DP_BF16 || w->dtype != DP_BF16 || (gate && gate->dtype != DP_F32)) {
    dp_backend_fail (be, DP_ERROR_UNSUPPORTED, "linear_gated_add: needs F32 x and gate, BF16 a and w (got %s, %s, %s)",
                     dp_dtype_name (x->dtype), dp_dtype_name (a->dtype), dp_dtype_name (w->dtype));
    return;
  }
  if (M == 0 || N == 0)
    return;
  /* Scratch: the gated weights (BF16 [N, K]) and the gated or converted F32 bias. */
  size_t need_w = gate ? SCRATCH_ALIGN ((size_t) N * K * 2) : 0;
  size_t need_b = bias && (gate || bias->dtype != DP_F32 || ((uintptr_t) bias->data & 15))
                    ? SCRATCH_ALIGN ((size_t) N * sizeof (float)) : 0;
  const void *wa = w->data, *ba = bias ? bias->data : NULL;
  if (need_w + need_b) {
    uint8_t *s = dp_cuda_scratch (be, need_w + need_b);
    if (!s)
      return;
    if (gate) {
      dp_cuda_gate_weights_raw (be, s, need_b ? (float *) (s + need_w) : NULL, w->data,
                                bias ? bias->data : NULL, bias ? bias->dtype : DP_F32, gate->data, N, K);
      wa = s;
    } else {
      dp_cuda_convert (be, s, DP_F32, bias->data, bias->dtype, N);
    }
    if (need_b)
      ba = s + need_w;
  }
  dp_cuda_gemm (be, TRUE, FALSE, N, M, K, wa, K, a->data, K, DP_BF16, x->data, N, DP_F32, ba, FALSE, TRUE);
}
