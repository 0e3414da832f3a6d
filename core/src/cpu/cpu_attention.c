/* CPU backend: softmax attention in query blocks.
 *
 * The work is split into tasks (batch, head, block of queries) spread over
 * the backend's thread pool.  A task computes its scores S = scale Q K^T [nq, Le] and
 * then O = softmax (S + bias) V with two single-threaded CBLAS GEMMs that
 * read q / k / v / o in place through their row stride H * d (no
 * transposes, no copies), with the softmax rows in between, all in one
 * thread (the scores stay in its cache).  Scratch: one score block per
 * thread, ATTN_SCORE_BUDGET floats in all (malloc'd per call), so memory
 * stays bounded for any sequence length. */
#include "cpu/backend_cpu.h"
#include "cpu/cpu_act.h"

#include <cblas.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>

#define ATTN_SCORE_BUDGET (4 * 1024 * 1024) /* floats: 16 MiB over all threads */
#define ATTN_MAX_QBLOCK 128

/* Numerically stable softmax of s[0, n) in place (max subtracted).  A row
 * whose scores are all -inf (fully masked by the bias) becomes zeros, not
 * NaN. */
static inline void
softmax_row (float *s, int64_t n)
{
  float mx = -INFINITY;
  for (int64_t j = 0; j < n; j++)
    mx = fmaxf (mx, s[j]);
  if (mx == -INFINITY) {
    for (int64_t j = 0; j < n; j++)
      s[j] = 0.0f;
    return;
  }
  double sum = 0.0;
  for (int64_t j = 0; j < n; j++) {
    float e = expf (s[j] - mx);
    s[j] = e;
    sum += e;
  }
  float inv = (float) (1.0 / sum);
  for (int64_t j = 0; j < n; j++)
    s[j] *= inv;
}

typedef struct {
  int64_t B, H, Lq, Lk, Le, d, ld, qblock, nblocks;
  float scale;
  const float *qd, *kd, *vd, *bias;
  float *od, *scores; /* scores: one [qblock, Le] buffer per thread */
} attn_job;

/* Tasks [t0, t1): (batch, head, q block) each, in thread worker's buffer. */
static void
attn_tasks (void *ctx, int64_t t0, int64_t t1, int worker)
{
  const attn_job *job = ctx;
  const int64_t H = job->H, Lq = job->Lq, Lk = job->Lk, Le = job->Le, d = job->d, ld = job->ld;
  const int64_t qblock = job->qblock, nblocks = job->nblocks;
  const float *qd = job->qd, *kd = job->kd, *vd = job->vd, *bias = job->bias;
  float *od = job->od;
  const float scale = job->scale;
  float *sc = job->scores + (size_t) worker * (size_t) qblock * (size_t) Le;
  for (int64_t task = t0; task < t1; task++) {
    const int64_t b = task / (H * nblocks), h = (task / nblocks) % H, q0 = (task % nblocks) * qblock;
    const int64_t nq = MIN (qblock, Lq - q0);
    const float *kh = kd + b * Lk * ld + h * d;
    const float *vh = vd + b * Lk * ld + h * d;
    const float *qh = qd + (b * Lq + q0) * ld + h * d;
    float *oh = od + (b * Lq + q0) * ld + h * d;
    cblas_sgemm (CblasRowMajor, CblasNoTrans, CblasTrans, (int) nq, (int) Le, (int) d, scale, qh, (int) ld, kh,
                 (int) ld, 0.0f, sc, (int) Le);
    for (int64_t i = 0; i < nq; i++) {
      float *s = sc + i * Le;
      if (bias) {
        const float *br = bias + (h * Lq + q0 + i) * Lk;
        for (int64_t j = 0; j < Le; j++)
          s[j] += br[j];
      }
      softmax_row (s, Le);
    }
    /* o may be q itself: this block of q was fully read by the first GEMM
     * and no other task touches these rows of this head. */
    cblas_sgemm (CblasRowMajor, CblasNoTrans, CblasNoTrans, (int) nq, (int) d, (int) Le, 1.0f, sc, (int) Le, vh,
                 (int) ld, 0.0f, oh, (int) ld);
  }
}

void
dp_cpu_attention (dp_backend *be, dp_tensor *o, const dp_tensor *q, const dp_tensor *k, const dp_tensor *v,
                  const dp_attn_params *p)
{
  if (!dp_cpu_check_f32 (be, "attention", q) || !dp_cpu_check_f32 (be, "attention", k) ||
      !dp_cpu_check_f32 (be, "attention", v) || !dp_cpu_check_f32 (be, "attention", o))
    return;
  if (!p) {
    dp_backend_fail (be, DP_ERROR_INVALID, "attention: missing parameters");
    return;
  }
  if (p->bias && !dp_cpu_check_f32 (be, "attention", p->bias))
    return;
  char bq[64], bk[64], bv[64], bo[64];
  if (q->ndim != 4 || k->ndim != 4 || !dp_tensor_same_shape (k, v) || !dp_tensor_same_shape (q, o) ||
      k->shape[0] != q->shape[0] || k->shape[2] != q->shape[2] || k->shape[3] != q->shape[3] || k->shape[1] <= 0) {
    dp_backend_fail (be, DP_ERROR_SHAPE, "attention: q %s, k %s, v %s, o %s are not [B, Lq, H, d], [B, Lk, H, d] x2, [B, Lq, H, d]",
                     dp_shape_str (q, bq, sizeof bq), dp_shape_str (k, bk, sizeof bk), dp_shape_str (v, bv, sizeof bv),
                     dp_shape_str (o, bo, sizeof bo));
    return;
  }
  const int64_t B = q->shape[0], Lq = q->shape[1], H = q->shape[2], d = q->shape[3], Lk = k->shape[1];
  if (p->key_len < 0 || p->key_len > Lk) {
    dp_backend_fail (be, DP_ERROR_INVALID, "attention: key_len %d outside [0, %" G_GINT64_FORMAT "]", p->key_len, Lk);
    return;
  }
  if (p->bias && (dp_tensor_nelem (p->bias) != H * Lq * Lk || dp_tensor_cols (p->bias) != Lk)) {
    char bb[64];
    dp_backend_fail (be, DP_ERROR_SHAPE, "attention: bias %s is not [%" G_GINT64_FORMAT ", %" G_GINT64_FORMAT ", %" G_GINT64_FORMAT "]",
                     dp_shape_str (p->bias, bb, sizeof bb), H, Lq, Lk);
    return;
  }
  if (H * d > INT_MAX || Lk > INT_MAX) {
    dp_backend_fail (be, DP_ERROR_UNSUPPORTED, "attention: sizes exceed the BLAS int range");
    return;
  }
  if (dp_cpu_overlap (o, k) || dp_cpu_overlap (o, v) || (p->bias && dp_cpu_overlap (o, p->bias)) ||
      (dp_cpu_overlap (o, q) && o->data != q->data)) {
    dp_backend_fail (be, DP_ERROR_INVALID, "attention: o must not overlap k, v or bias");
    return;
  }
  if (B == 0 || Lq == 0 || H == 0 || d == 0)
    return;

  const int64_t Le = p->key_len > 0 ? p->key_len : Lk; /* keys attended */
  const int64_t ld = H * d;
  const int nt = dp_cpu_threads (be);
  int64_t qblock = ATTN_SCORE_BUDGET / nt / Le;
  qblock = CLAMP (qblock, 1, ATTN_MAX_QBLOCK);
  qblock = MIN (qblock, Lq);
  /* enough tasks to keep every thread busy */
  while (qblock > 16 && B * H * ((Lq + qblock - 1) / qblock) < 4 * nt)
    qblock /= 2;
  const int64_t nblocks = (Lq + qblock - 1) / qblock, ntasks = B * H * nblocks;
  float *scores = malloc ((size_t) nt * (size_t) qblock * (size_t) Le * sizeof (float));
  if (!scores) {
    dp_backend_fail (be, DP_ERROR_NOMEM, "attention: cannot allocate %d x %" G_GINT64_FORMAT " x %" G_GINT64_FORMAT " scores",
                     nt, qblock, Le);
    return;
  }
  const float *qd = q->data, *kd = k->data, *vd = v->data;
  const float *bias = p->bias ? p->bias->data : NULL;
  float *od = o->data;
  const float scale = p->scale;

  attn_job job = { B, H, Lq, Lk, Le, d, ld, qblock, nblocks, scale, qd, kd, vd, bias, od, scores };
  /* one task per chunk: tasks are large and unequal at the last q block */
  if (ntasks > 1 && B * H * Lq * Le * d > DP_CPU_PAR_MIN && nt > 1)
    dp_cpu_parallel_for (be, ntasks, 1, attn_tasks, &job);
  else
    attn_tasks (&job, 0, ntasks, 0);
  free (scores);
}
