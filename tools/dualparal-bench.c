/* dualparal-bench: GPU benchmarks of the CUDA backend.
 *
 *   dualparal-bench --ops     the two ceilings (a large BF16 GEMM, a device
 *                             copy), the DiT's GEMMs and memory-bound ops,
 *                             and the attention kernel at Wan2.1-1.3B shapes
 *   dualparal-bench --dit     the guided (batch 2) DiT forward at 1.3B
 *                             shapes with random weights: the full 81-frame
 *                             480x832 video (21 latent frames, 32,760
 *                             tokens) and the DualParal blocks P+C = 8+2
 *                             and 4+2 (keys include the C cached frames);
 *                             --model 14b: Wan2.1-14B shapes, which are
 *                             those of each Wan2.2 T2V-A14B expert (28 GB
 *                             of BF16 weights at 40 layers; --layers N
 *                             fewer)
 *   dualparal-bench --vae     Wan2.1's VAE decoding 81 frames at 832x480 and
 *                             1280x720 (--vae-size), untiled and, with
 *                             --vae-tile N, tiled
 *   dualparal-bench --whole   a whole run at Wan2.1-1.3B shapes: umT5-XXL
 *                             text encode (bf16 on a GPU), 50 steps of the
 *                             DualParal engine on one stage, each block
 *                             decoded (inline, or --vae-thread)
 *   --tiny                    the same code paths at tiny sizes, so that
 *                             the CPU backend (--device cpu) runs them in
 *                             seconds: a harness check, not a benchmark
 *
 * Times are CUDA-event medians after warm-up, on random (never zero) data.
 * FLOP counts: GEMM 2MNK; attention 4 B H Lq Lk d; the DiT forward uses the
 * same formula as ../shared/bench/pytorch_wan_anchor.py so that the TFLOP/s
 * figures compare:  B layers (2 Lq (8 D^2 + 2 D F) + 4 Lq Lk D + 4 Lq 512 D).
 */
#include "dualparal/engine.h"
#include "dualparal/sampler.h"
#include "dualparal/umt5.h"
#include "dualparal/wan_dit.h"
#include "dualparal/wan_vae.h"
#include "cuda_backend.h"
#include "random_wan.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------ random data */

static guint64 rng_state = 0x9E3779B97F4A7C15ull;

static inline guint32
rng_next (void)
{
  /* xorshift64*: fast enough to fill gigabytes */
  rng_state ^= rng_state >> 12;
  rng_state ^= rng_state << 25;
  rng_state ^= rng_state >> 27;
  return (guint32) ((rng_state * 0x2545F4914F6CDD1Dull) >> 32);
}

/* Uniform in [-amp, amp). */
static inline float
rng_uniform (float amp)
{
  return ((float) (rng_next () >> 8) * (2.0f / 16777216.0f) - 1.0f) * amp;
}

static void
fill_random (void *dst, dp_dtype dt, int64_t n, float amp, float mean)
{
  if (dt == DP_F32) {
    float *d = dst;
    for (int64_t i = 0; i < n; i++)
      d[i] = mean + rng_uniform (amp);
  } else {
    uint16_t *d = dst;
    for (int64_t i = 0; i < n; i++)
      d[i] = dt == DP_BF16 ? dp_f32_to_bf16 (mean + rng_uniform (amp)) : dp_f32_to_f16 (mean + rng_uniform (amp));
  }
}

/* A device tensor of random values (uploaded in its own dtype). */
static dp_tensor
random_device (dp_backend *be, dp_dtype dt, int ndim, const int64_t *shape, float amp)
{
  dp_tensor t = dp_backend_tensor_new (be, dt, ndim, shape);
  if (!t.data)
    return t;
  dp_tensor h = dp_tensor_view (NULL, dt, ndim, shape);
  h.data = g_try_malloc (dp_tensor_nbytes (&h));
  if (!h.data) {
    dp_backend_fail (be, DP_ERROR_NOMEM, "bench: no host memory for %zu bytes", dp_tensor_nbytes (&h));
    return t;
  }
  fill_random (h.data, dt, dp_tensor_nelem (&h), amp, 0.0f);
  be->ops->to_device (be, &t, &h);
  be->ops->sync (be, NULL);
  g_free (h.data);
  return t;
}

/* CUDA-event timing on a CUDA backend; a host clock on the CPU backend
 * (--device cpu only checks the harness: the numbers are not the point). */
static gint64 host_t0;

static void
timer_start (dp_backend *be)
{
  if (be->host_memory)
    host_t0 = g_get_monotonic_time ();
  else
    dp_cuda_timer_start (be);
}

static double
timer_stop (dp_backend *be)
{
  if (be->host_memory)
    return (g_get_monotonic_time () - host_t0) / 1000.0;
  return dp_cuda_timer_stop (be);
}

static int
cmp_double (const void *a, const void *b)
{
  double x = *(const double *) a, y = *(const double *) b;
  return x < y ? -1 : x > y;
}

/* Peak device memory since the last reset, GiB (0 on the CPU). */
static double
peak_gib (dp_backend *be)
{
  return be->host_memory ? 0.0 : dp_cuda_backend_peak_bytes (be) / 1073741824.0;
}

/* Wan2.1's VAE with random weights, written to a fresh *dir (the caller
 * removes it) and loaded on be; NULL with error set on failure. */
static int vae_base_dim = 96; /* --tiny: 8 */

static dp_wan_vae *
random_vae_load (dp_backend *be, char **dir, GError **error)
{
  *dir = g_dir_make_tmp ("dualparal-vae-XXXXXX", error);
  if (!*dir || !random_wan_vae_write (*dir, vae_base_dim, 2, error))
    return NULL;
  return dp_wan_vae_load (be, *dir, error);
}

/* ------------------------------------------------------------ op jobs */

typedef enum { JOB_LINEAR, JOB_COPY, JOB_ATTN, JOB_LN_MOD, JOB_RMS, JOB_ROPE, JOB_RMS_ROPE, JOB_GATED_ADD,
               JOB_LINEAR_GATED_ADD } job_kind;

typedef struct {
  job_kind kind;
  dp_tensor *y, *x, *w, *b, *q, *k, *v, *g;
  dp_act act;
  dp_attn_params ap;
  dp_rope_grid grid;
} job;

static void
job_run (dp_backend *be, const job *j)
{
  switch (j->kind) {
    case JOB_LINEAR: be->ops->linear (be, j->y, j->x, j->w, j->b, j->act); break;
    case JOB_COPY: be->ops->copy (be, j->y, j->x); break;
    case JOB_ATTN: be->ops->attention (be, j->y, j->q, j->k, j->v, &j->ap); break;
    case JOB_LN_MOD: be->ops->layer_norm_modulate (be, j->y, j->x, j->w, j->b, 1e-6f); break;
    case JOB_RMS: be->ops->rms_norm (be, j->y, j->x, j->w, 1e-6f); break;
    case JOB_ROPE: be->ops->rope_3d (be, j->y, &j->grid); break;
    case JOB_RMS_ROPE: be->ops->rms_norm_rope_3d (be, j->y, j->w, 1e-6f, &j->grid); break;
    case JOB_GATED_ADD: be->ops->gated_add (be, j->y, j->x, j->g); break;
    case JOB_LINEAR_GATED_ADD: be->ops->linear_gated_add (be, j->y, j->x, j->w, j->b, j->g); break;
  }
}

/* Median milliseconds of `reps` runs after `warm` runs; -1 on error. */
static double
time_job (dp_backend *be, const job *j, int warm, int reps)
{
  for (int i = 0; i < warm; i++)
    job_run (be, j);
  if (!be->ops->sync (be, NULL))
    return -1;
  double *ms = g_new (double, reps);
  for (int i = 0; i < reps; i++) {
    timer_start (be);
    job_run (be, j);
    ms[i] = timer_stop (be);
  }
  qsort (ms, reps, sizeof *ms, cmp_double);
  double med = ms[reps / 2];
  g_free (ms);
  return dp_backend_failed (be) ? -1 : med;
}

static gboolean
report (dp_backend *be, const char *what, double ms, double flop, double bytes)
{
  if (ms < 0) {
    GError *err = NULL;
    dp_backend_check (be, &err);
    printf ("%-58s FAILED: %s\n", what, err ? err->message : "?");
    g_clear_error (&err);
    return FALSE;
  }
  printf ("%-58s %9.3f ms", what, ms);
  if (flop > 0)
    printf ("  %7.1f TFLOP/s", flop / ms / 1e9);
  if (bytes > 0)
    printf ("  %7.2f TB/s", bytes / ms / 1e9);
  printf ("\n");
  fflush (stdout);
  return TRUE;
}

static int
bench_ops (dp_backend *be, int reps)
{
  char what[128];
  int failures = 0;
  printf ("# ops: median of %d CUDA-event timings after warm-up, random inputs\n", reps);

  /* Ceiling 1: a large BF16 GEMM through the backend's linear (cuBLASLt). */
  {
    const int64_t n = 8192, s[2] = { n, n };
    dp_tensor x = random_device (be, DP_BF16, 2, s, 1.0f), w = random_device (be, DP_BF16, 2, s, 0.01f);
    dp_tensor y = dp_backend_tensor_new (be, DP_BF16, 2, s);
    job j = { .kind = JOB_LINEAR, .y = &y, .x = &x, .w = &w, .act = DP_ACT_NONE };
    failures += !report (be, "ceiling: gemm bf16 8192x8192x8192 (cuBLASLt)", time_job (be, &j, 3, reps),
                         2.0 * n * n * n, 0);
    dp_backend_tensor_free (be, &x);
    dp_backend_tensor_free (be, &w);
    dp_backend_tensor_free (be, &y);
  }
  /* Ceiling 2: device-to-device copy of 2 GiB (bytes read + written). */
  {
    const int64_t s[1] = { (int64_t) 1 << 30 };
    /* A copy does not look at values: a non-zero constant is enough. */
    dp_tensor x = dp_backend_tensor_new (be, DP_BF16, 1, s), y = dp_backend_tensor_new (be, DP_BF16, 1, s);
    be->ops->fill (be, &x, 1.5f);
    job j = { .kind = JOB_COPY, .y = &y, .x = &x };
    failures += !report (be, "ceiling: device copy 2 GiB (cudaMemcpyAsync)", time_job (be, &j, 2, reps), 0,
                         2.0 * 2.0 * s[0]);
    dp_tensor yf = dp_backend_tensor_new (be, DP_F32, 1, s);
    job jc = { .kind = JOB_COPY, .y = &yf, .x = &x };
    failures += !report (be, "convert bf16 -> f32, 2^30 elements", time_job (be, &jc, 2, reps), 0, 6.0 * s[0]);
    dp_backend_tensor_free (be, &yf);
    dp_backend_tensor_free (be, &x);
    dp_backend_tensor_free (be, &y);
  }

  /* The DiT's GEMMs at the full-video shape: B*L = 2 * 32760 rows. */
  const int64_t D = 1536, F = 8960, M = 2 * 32760;
  {
    const int64_t xs[2] = { M, D }, ws[2] = { D, D }, fs[2] = { F, D }, f2[2] = { D, F }, hs[2] = { M, F };
    const int64_t bs[1] = { D }, bfs[1] = { F };
    dp_tensor x = random_device (be, DP_BF16, 2, xs, 1.0f), w = random_device (be, DP_BF16, 2, ws, 0.03f);
    dp_tensor w1 = random_device (be, DP_BF16, 2, fs, 0.03f), w2 = random_device (be, DP_BF16, 2, f2, 0.01f);
    dp_tensor b = random_device (be, DP_F32, 1, bs, 0.1f), b1 = random_device (be, DP_F32, 1, bfs, 0.1f);
    dp_tensor y = dp_backend_tensor_new (be, DP_BF16, 2, xs), h = dp_backend_tensor_new (be, DP_BF16, 2, hs);
    job j = { .kind = JOB_LINEAR, .y = &y, .x = &x, .w = &w, .b = &b, .act = DP_ACT_NONE };
    g_snprintf (what, sizeof what, "linear %" G_GINT64_FORMAT "x%" G_GINT64_FORMAT "x%" G_GINT64_FORMAT " +bias(f32)", M, D, D);
    failures += !report (be, what, time_job (be, &j, 2, reps), 2.0 * M * D * D, 0);
    job j1 = { .kind = JOB_LINEAR, .y = &h, .x = &x, .w = &w1, .b = &b1, .act = DP_ACT_GELU_TANH };
    g_snprintf (what, sizeof what, "linear %" G_GINT64_FORMAT "x%" G_GINT64_FORMAT "x%" G_GINT64_FORMAT " +bias+gelu", M, D, F);
    failures += !report (be, what, time_job (be, &j1, 2, reps), 2.0 * M * D * F, 0);
    job j2 = { .kind = JOB_LINEAR, .y = &y, .x = &h, .w = &w2, .b = &b, .act = DP_ACT_NONE };
    g_snprintf (what, sizeof what, "linear %" G_GINT64_FORMAT "x%" G_GINT64_FORMAT "x%" G_GINT64_FORMAT " +bias", M, F, D);
    failures += !report (be, what, time_job (be, &j2, 2, reps), 2.0 * M * D * F, 0);

    /* Memory-bound ops on the residual stream [2, 32760, 1536]. */
    const int64_t rs[3] = { 2, 32760, D }, ms[2] = { 2, D }, q4[4] = { 2, 32760, 12, 128 };
    dp_tensor res = random_device (be, DP_F32, 3, rs, 1.0f);
    dp_tensor shift = random_device (be, DP_F32, 2, ms, 0.5f), scale = random_device (be, DP_F32, 2, ms, 0.5f);
    dp_tensor act3 = dp_tensor_view (y.data, DP_BF16, 3, rs);
    job jl = { .kind = JOB_LN_MOD, .y = &act3, .x = &res, .w = &shift, .b = &scale };
    failures += !report (be, "layer_norm_modulate f32 -> bf16 [2, 32760, 1536]", time_job (be, &jl, 2, reps), 0,
                         6.0 * M * D);
    dp_tensor nw = random_device (be, DP_F32, 1, bs, 1.0f); /* F32, as the model's norm_q / norm_k */
    job jr = { .kind = JOB_RMS, .y = &act3, .x = &act3, .w = &nw };
    failures += !report (be, "rms_norm bf16 in place, f32 weight [2, 32760, 1536]", time_job (be, &jr, 2, reps), 0, 4.0 * M * D);
    dp_tensor act4 = dp_tensor_view (y.data, DP_BF16, 4, q4);
    job jp = { .kind = JOB_ROPE, .y = &act4, .grid = { .frames = 21, .height = 30, .width = 52, .theta = 10000.0f } };
    failures += !report (be, "rope_3d bf16 in place [2, 32760, 12, 128]", time_job (be, &jp, 2, reps), 0, 4.0 * M * D);
    job jpr = { .kind = JOB_RMS_ROPE, .y = &act4, .w = &nw, .grid = jp.grid };
    failures += !report (be, "rms_norm_rope_3d bf16 in place [2, 32760, 12, 128]", time_job (be, &jpr, 2, reps), 0,
                         4.0 * M * D);
    job jg = { .kind = JOB_GATED_ADD, .y = &res, .x = &act3, .g = &shift };
    failures += !report (be, "gated_add f32 += f32 gate * bf16 [2, 32760, 1536]", time_job (be, &jg, 2, reps), 0,
                         10.0 * M * D);
    /* The FFN's second GEMM with the gated residual add in its epilogue:
     * against "linear ... +bias" plus gated_add above. */
    const int64_t r2[2] = { M, D };
    dp_tensor res2 = dp_tensor_view (res.data, DP_F32, 2, r2), gate1 = dp_tensor_view (shift.data, DP_F32, 1, bs);
    job jlg = { .kind = JOB_LINEAR_GATED_ADD, .y = &res2, .x = &h, .w = &w2, .b = &b, .g = &gate1 };
    g_snprintf (what, sizeof what, "linear_gated_add f32 += gate (%" G_GINT64_FORMAT "x%" G_GINT64_FORMAT "x%" G_GINT64_FORMAT " +bias)", M, F, D);
    failures += !report (be, what, time_job (be, &jlg, 2, reps), 2.0 * M * D * F, 0);
    dp_tensor *all[] = { &x, &w, &w1, &w2, &b, &b1, &y, &h, &res, &shift, &scale, &nw };
    for (guint i = 0; i < G_N_ELEMENTS (all); i++)
      dp_backend_tensor_free (be, all[i]);
  }

  /* Attention at Wan2.1-1.3B shapes: B = 2 (guidance), 12 heads of 128. */
  {
    const struct {
      const char *name;
      int64_t lq, lk;
    } cases[] = {
      { "full 21 frames", 21 * 1560, 21 * 1560 },
      { "block 8+2 (10 x 12 frames)", 10 * 1560, 12 * 1560 },
      { "block 4+2 (6 x 8 frames)", 6 * 1560, 8 * 1560 },
      { "cross, 512 text keys", 21 * 1560, 512 },
    };
    const int64_t B = 2, H = 12, d = 128;
    for (guint i = 0; i < G_N_ELEMENTS (cases); i++) {
      const int64_t qs[4] = { B, cases[i].lq, H, d }, ks[4] = { B, cases[i].lk, H, d };
      dp_tensor q = random_device (be, DP_BF16, 4, qs, 2.0f), k = random_device (be, DP_BF16, 4, ks, 2.0f);
      dp_tensor v = random_device (be, DP_BF16, 4, ks, 1.0f), o = dp_backend_tensor_new (be, DP_BF16, 4, qs);
      job j = { .kind = JOB_ATTN, .y = &o, .q = &q, .k = &k, .v = &v, .ap = { .scale = 1.0f / sqrtf ((float) d) } };
      static const char *vnames[] = { "4w x16", "8w x16", "4w x32", "wgmma" };
      for (int vi = 0; vi < 4; vi++) {
        if (vi == DP_CUDA_ATTN_WGMMA && !dp_cuda_backend_has_wgmma_attention (be))
          continue;
        dp_cuda_backend_set_attention_variant (be, (dp_cuda_attention_variant) vi);
        g_snprintf (what, sizeof what, "attention %s %s: Lq %" G_GINT64_FORMAT " Lk %" G_GINT64_FORMAT, vnames[vi],
                    cases[i].name, cases[i].lq, cases[i].lk);
        failures += !report (be, what, time_job (be, &j, 2, reps), 4.0 * B * H * cases[i].lq * cases[i].lk * d, 0);
      }
      dp_backend_tensor_free (be, &q);
      dp_backend_tensor_free (be, &k);
      dp_backend_tensor_free (be, &v);
      dp_backend_tensor_free (be, &o);
    }
    dp_cuda_backend_set_attention_variant (be, dp_cuda_backend_default_attention_variant (be));
  }
  return failures;
}

/* ------------------------------------------------------------ DiT */

static dp_tensor
random_host (int ndim, const int64_t *shape, float amp)
{
  dp_tensor t = dp_tensor_new_host (DP_F32, ndim, shape);
  fill_random (t.data, DP_F32, dp_tensor_nelem (&t), amp, 0.0f);
  return t;
}

/* One way of running the DiT: an attention kernel (-1: the backend's
 * current one) and whether the backend's fused ops (linear_gated_add,
 * rms_norm_rope_3d) are hidden, so the model runs the separate ops. */
typedef struct {
  int attn_variant;
  gboolean unfused;
} dit_config;

/* Times each case in each of the n_configs (>= 1) configurations. */
static const random_wan_dit_size wan_1_3b = { .dim = 1536, .heads = 12, .ffn = 8960, .layers = 30, .text_dim = 4096,
                                               .freq_dim = 256, .channels = 16 };
/* Wan2.1-14B, also the shape of each Wan2.2 T2V-A14B expert (one expert is
 * timed: a pass runs one of them). */
static const random_wan_dit_size wan_14b = { .dim = 5120, .heads = 40, .ffn = 13824, .layers = 40, .text_dim = 4096,
                                             .freq_dim = 256, .channels = 16 };

/* m: the shape the transformer in dir was written with; label names it. */
static int
bench_dit (dp_backend *be, const char *dir, const random_wan_dit_size *m_shape, const char *label, int reps,
           int height, int width, const dit_config *configs, int n_configs)
{
  const dp_backend_ops *fused_ops = be->ops;
  dp_backend_ops unfused_ops = *be->ops;
  unfused_ops.linear_gated_add = NULL;
  unfused_ops.rms_norm_rope_3d = NULL;
  const random_wan_dit_size m = *m_shape;
  const int B = 2, text_len = 512, tpf = (height / 2) * (width / 2);
  GError *err = NULL;
  int rc = 1;
  dp_wan_dit *dit = NULL;
  dp_tensor context = { 0 };

  gint64 t0 = g_get_monotonic_time ();
  dit = dp_wan_dit_load (be, dir, 0, -1, &err);
  if (!dit)
    goto out;
  const int layers = dp_wan_dit_config (dit)->num_layers;
  double load_s = (g_get_monotonic_time () - t0) / 1e6;
  printf ("# dit: %s shapes, random BF16 weights (%d layers): loaded in %.1f s, %.2f GiB on the device\n", label,
          layers, load_s, dp_wan_dit_memory_bytes (dit) / 1073741824.0);
  context = random_host (3, (int64_t[]){ B, text_len, m.text_dim }, 1.0f);
  if (!dp_wan_dit_set_context (dit, &context, &err))
    goto out;

  const struct {
    const char *name;
    int own, ctx; /* P own frames (out), C context frames; full video: ctx 0 */
  } cases[] = { { "21", 21, 0 }, { "8+2", 8, 2 }, { "4+2", 4, 2 } };
  for (guint ci = 0; ci < G_N_ELEMENTS (cases); ci++) {
    const int P = cases[ci].own, C = cases[ci].ctx, frames = P + C;
    dp_wan_span span;
    dp_wan_span_init (&span, frames, height, width);
    int extra_pos[8];
    dp_tensor ek = { 0 }, ev = { 0 };
    if (C > 0) {
      /* window [C context | P own] at positions 0..C+P-1; the next block's
       * first C frames from the feature cache at C+P.. (keys only) */
      for (int i = 0; i < C; i++)
        extra_pos[i] = C + P + i;
      const int64_t es[4] = { layers, B, (int64_t) C * tpf, m.dim };
      ek = random_device (be, be->act_dtype, 4, es, 2.0f);
      ev = random_device (be, be->act_dtype, 4, es, 2.0f);
      span.extra_frames = C;
      span.extra_pos = extra_pos;
      span.extra_k = &ek;
      span.extra_v = &ev;
      span.out_first = C;
      span.out_frames = P;
    }
    const int64_t lat_s[4] = { m.channels, frames, height, width }, vel_s[4] = { m.channels, P, height, width };
    dp_tensor lat = random_device (be, DP_F32, 4, lat_s, 1.7f);
    dp_tensor vel = dp_backend_tensor_new (be, DP_F32, 4, vel_s);
    double *ms = g_new (double, reps);
    gboolean ok = TRUE;
    for (int vi = 0; ok && vi < n_configs; vi++) {
      static const char *vnames[] = { "mma 4w x16", "mma 8w x16", "mma 4w x32", "wgmma" };
      const char *vname = "cpu";
      be->ops = configs[vi].unfused ? &unfused_ops : fused_ops;
      if (!be->host_memory) {
        if (configs[vi].attn_variant >= 0)
          dp_cuda_backend_set_attention_variant (be, (dp_cuda_attention_variant) configs[vi].attn_variant);
        dp_cuda_backend_reset_peak (be);
      }
      ok = dp_wan_dit_forward (dit, &span, &lat, 999.0f, 5.0f, &vel, &err) && be->ops->sync (be, &err);
      if (ok && !be->host_memory) {
        /* what the self-attention calls really ran (after fallbacks) */
        int last = dp_cuda_backend_last_attention_variant (be);
        vname = last >= 0 && last < 4 ? vnames[last] : "generic";
      }
      for (int i = 0; ok && i < reps; i++) {
        timer_start (be);
        ok = dp_wan_dit_forward (dit, &span, &lat, 900.0f - i, 5.0f, &vel, &err);
        ms[i] = timer_stop (be);
        ok = ok && be->ops->sync (be, &err);
      }
      if (ok) {
        qsort (ms, reps, sizeof *ms, cmp_double);
        double med = ms[reps / 2];
        double lq = (double) frames * tpf, lk = lq + (double) C * tpf, D = m.dim;
        double flop = (double) B * layers * (2 * lq * (8 * D * D + 2 * D * m.ffn) + 4 * lq * lk * D + 4 * lq * 512 * D);
        printf ("{\"case\": \"%s\", \"attention\": \"%s\", \"fused\": %s, \"q_tokens\": %.0f, "
                "\"kv_tokens\": %.0f, \"layers\": %d, \"ms\": %.2f, \"tflops\": %.1f, \"peak_gib\": %.2f}\n",
                cases[ci].name, vname, be->ops == fused_ops && fused_ops->linear_gated_add ? "true" : "false", lq, lk,
                layers, med, flop / med / 1e9,
                peak_gib (be));
        fflush (stdout);
      } else {
        printf ("dit case %s FAILED: %s\n", cases[ci].name, err ? err->message : "?");
      }
    }
    g_free (ms);
    be->ops = fused_ops;
    dp_backend_tensor_free (be, &lat);
    dp_backend_tensor_free (be, &vel);
    if (ek.data)
      dp_backend_tensor_free (be, &ek);
    if (ev.data)
      dp_backend_tensor_free (be, &ev);
    if (!ok)
      goto out;
  }
  rc = 0;

out:
  if (rc && err)
    printf ("dit FAILED: %s\n", err->message);
  g_clear_error (&err);
  dp_tensor_free (&context);
  dp_wan_dit_free (dit);
  return rc;
}

/* ------------------------------------------------------------ VAE */

static double
now_s (void)
{
  return g_get_monotonic_time () / 1e6;
}

/* Wan2.1's VAE (random weights) decoding `latent_frames` latent frames
 * (21: 81 video frames) at height x width latents, streaming one latent
 * frame at a time as the engine does, after a 2-latent-frame warm-up;
 * tiled when tile > 0 (stride 3/4 of it). */
static int
bench_vae (dp_backend *be, dp_wan_vae *vae, int height, int width, int latent_frames, int tile)
{
  GError *err = NULL;
  int rc = 1;
  dp_wan_vae_decoder *dec = NULL;
  uint8_t *rgb = NULL;
  const int64_t F = latent_frames, frames = dp_wan_vae_num_frames (vae, F);
  const int64_t ls[4] = { 16, F, height, width };
  dp_tensor lat = random_device (be, DP_F32, 4, ls, 1.0f);
  dp_wan_vae_tiling tiling = { 0 };
  if (tile > 0)
    dp_wan_vae_tiling_default (tile, dp_wan_vae_get_config (vae)->spatial_scale, &tiling);
  if (!be->host_memory)
    dp_cuda_backend_reset_peak (be);
  dec = dp_wan_vae_decoder_new_tiled (vae, height, width, &tiling, &err);
  if (!dec || !lat.data)
    goto out;
  int rows, cols;
  dp_wan_vae_decoder_get_tiles (dec, &rows, &cols);
  rgb = g_malloc ((size_t) dp_wan_vae_decoder_max_frames (dec) * height * 8 * width * 8 * 3);
  int n = 0;
  gboolean ok = TRUE;
  for (int i = 0; ok && i < MIN (2, latent_frames); i++)
    ok = dp_wan_vae_decoder_push (dec, &lat, i, rgb, NULL, &n, &err);
  dp_wan_vae_decoder_reset (dec);
  double first_ms = 0;
  double t0 = now_s ();
  for (int64_t i = 0; ok && i < F; i++) {
    ok = dp_wan_vae_decoder_push (dec, &lat, i, rgb, NULL, &n, &err);
    if (i == 0)
      first_ms = (now_s () - t0) * 1000.0;
  }
  double s = now_s () - t0;
  if (!ok)
    goto out;
  /* The later latent frames give 4 frames each: their time per frame is the
   * steady state of a stream. */
  const double steady_ms = F > 1 ? (s * 1000.0 - first_ms) / (double) (frames - 1) : first_ms;
  const char *conv = be->host_memory ? "cpu" : g_strcmp0 (g_getenv ("DP_CUDA_CONV"), "cudnn") == 0 ? "cudnn" : "im2col";
  printf ("{\"vae_decode\": \"Wan2.1 VAE, base_dim %d, random F32 weights\", \"conv\": \"%s\", \"latent\": [16, %" G_GINT64_FORMAT
          ", %d, %d], \"frames\": %" G_GINT64_FORMAT ", \"size\": \"%dx%d\", \"tile\": %d, \"tiles\": \"%dx%d\", "
          "\"seconds\": %.3f, \"ms_per_frame\": %.2f, \"steady_ms_per_frame\": %.2f, \"decoder_gib\": %.2f, "
          "\"peak_gib\": %.2f}\n", dp_wan_vae_get_config (vae)->base_dim, conv, F, height, width, frames, width * 8,
          height * 8, tile, rows, cols, s, 1000.0 * s / frames, steady_ms,
          dp_wan_vae_decoder_memory_bytes (dec) / 1073741824.0, peak_gib (be));
  fflush (stdout);
  rc = 0;
out:
  if (rc)
    printf ("vae %dx%d tile %d FAILED: %s\n", width * 8, height * 8, tile, err ? err->message : "?");
  g_clear_error (&err);
  g_free (rgb);
  dp_wan_vae_decoder_free (dec);
  dp_backend_tensor_free (be, &lat);
  return rc;
}

/* --vae-memory: the backend memory a decoder takes (causal caches,
 * activation arenas, latent statistics) at each size, untiled and in tiles
 * of each size in `tiles` (comma-separated pixels); decoders are made (the
 * arenas sized by their measuring pass and allocated) but nothing is
 * decoded, so the CPU backend gives the GPU's figures for the VAE's own
 * memory (F32 activations on both). */
static int
bench_vae_memory (dp_backend *be, const char *sizes, const char *tiles)
{
  GError *err = NULL;
  char *dir = NULL;
  dp_wan_vae *vae = random_vae_load (be, &dir, &err);
  int failures = 0;
  if (!vae) {
    printf ("vae memory FAILED: %s\n", err ? err->message : "?");
    failures++;
  }
  char **items = g_strsplit (sizes, ",", -1), **tile_items = g_strsplit (tiles, ",", -1);
  for (int i = 0; vae && items[i]; i++) {
    int w = 0, h = 0;
    if (sscanf (items[i], "%dx%d", &w, &h) != 2 || w < 16 || h < 16 || w % 16 || h % 16) {
      printf ("vae size '%s' FAILED: give WxH in pixels, multiples of 16\n", items[i]);
      failures++;
      continue;
    }
    for (int k = -1; tile_items[k + 1] || k < 0; k++) {
      const int tile = k < 0 ? 0 : atoi (tile_items[k]);
      dp_wan_vae_tiling t = { 0 };
      if (tile > 0)
        dp_wan_vae_tiling_default (tile, dp_wan_vae_get_config (vae)->spatial_scale, &t);
      dp_wan_vae_decoder *dec = dp_wan_vae_decoder_new_tiled (vae, h / 8, w / 8, &t, &err);
      if (!dec) {
        printf ("vae memory %s tile %d FAILED: %s\n", items[i], tile, err ? err->message : "?");
        g_clear_error (&err);
        failures++;
        if (!tile_items[k + 1])
          break;
        continue;
      }
      int rows, cols;
      dp_wan_vae_decoder_get_tiles (dec, &rows, &cols);
      printf ("{\"vae_memory\": \"Wan2.1 VAE decoder, base_dim %d\", \"size\": \"%s\", \"tile\": %d, "
              "\"tiles\": \"%dx%d\", \"decoder_gib\": %.3f, \"caches_gib\": %.3f}\n", dp_wan_vae_get_config (vae)->base_dim,
              items[i], tile, rows, cols, dp_wan_vae_decoder_memory_bytes (dec) / 1073741824.0,
              dp_wan_vae_decoder_cache_bytes (dec) / 1073741824.0);
      fflush (stdout);
      dp_wan_vae_decoder_free (dec);
      if (!tile_items[k + 1])
        break;
    }
  }
  g_strfreev (items);
  g_strfreev (tile_items);
  g_clear_error (&err);
  dp_wan_vae_free (vae);
  if (dir)
    random_wan_remove (dir);
  g_free (dir);
  return failures;
}

/* The --vae cases: each size (pixels "WxH", comma-separated), untiled and
 * tiled when tile > 0; one VAE load. */
static int
bench_vae_sizes (dp_backend *be, const char *sizes, int latent_frames, int tile)
{
  GError *err = NULL;
  char *dir = NULL;
  dp_wan_vae *vae = random_vae_load (be, &dir, &err);
  int failures = 0;
  if (!vae) {
    printf ("vae FAILED: %s\n", err ? err->message : "?");
    failures++;
  }
  char **items = g_strsplit (sizes, ",", -1);
  for (int i = 0; vae && items[i]; i++) {
    int w = 0, h = 0;
    if (sscanf (items[i], "%dx%d", &w, &h) != 2 || w < 16 || h < 16 || w % 16 || h % 16) {
      printf ("vae size '%s' FAILED: give WxH in pixels, multiples of 16\n", items[i]);
      failures++;
      continue;
    }
    failures += bench_vae (be, vae, h / 8, w / 8, latent_frames, 0);
    if (tile > 0)
      failures += bench_vae (be, vae, h / 8, w / 8, latent_frames, tile);
  }
  g_strfreev (items);
  g_clear_error (&err);
  dp_wan_vae_free (vae);
  if (dir)
    random_wan_remove (dir);
  g_free (dir);
  return failures;
}

/* ------------------------------------------------------------ engine */

static gboolean
count_frames (const uint8_t *rgb, int n_frames, int64_t first_frame, void *user_data)
{
  (void) rgb;
  (void) first_frame;
  *(int64_t *) user_data += n_frames;
  return TRUE;
}

/* A whole DualParal run on one GPU, one stage: the random 1.3B transformer
 * in dit_dir, the random VAE decoding each finished block, guidance 5,
 * 21 latent frames (81 video frames), blocks of P with C context frames. */
static int
bench_engine (dp_backend *be, const char *dit_dir, int height, int width, int P, int C, int steps, int latent_frames,
              int text_dim)
{
  GError *err = NULL;
  int rc = 1;
  dp_engine *e = NULL;
  dp_wan_vae *vae = NULL;
  dp_tensor context = { 0 };
  char *vae_dir = NULL;
  if (!(vae = random_vae_load (be, &vae_dir, &err)))
    goto out;
  dp_sampler_settings ss;
  dp_sampler_settings_init (&ss, DP_SAMPLER_UNIPC, 3.0);
  dp_schedule *sched = dp_schedule_new (&ss, steps, &err);
  if (!sched)
    goto out;
  dp_engine_params p = { .block_frames = P, .context_frames = C, .latent_frames = latent_frames, .latent_height = height,
                         .latent_width = width, .schedule = sched, .guidance = 5.0, .seed = 1,
                         .noise_stream = DP_ENGINE_NOISE_STREAM };
  e = dp_engine_new (dit_dir, &be, 1, NULL, &p, &err);
  dp_schedule_free (sched);
  if (!e)
    goto out;
  context = random_host (3, (int64_t[]){ 2, 512, text_dim }, 1.0f);
  int64_t frames = 0;
  dp_engine_output out = { .frames = count_frames, .user_data = &frames };
  if (!be->host_memory)
    dp_cuda_backend_reset_peak (be);
  if (!dp_engine_run (e, &context, vae, &out, &err))
    goto out;
  dp_engine_stats st;
  dp_engine_get_stats (e, &st);
  printf ("{\"engine\": \"DualParal, 1 stage, random 1.3B DiT + Wan2.1 VAE\", \"P\": %d, \"C\": %d, \"steps\": %d, "
          "\"frames\": %" G_GINT64_FORMAT ", \"size\": \"%dx%d\", \"passes\": %" G_GINT64_FORMAT ", \"seconds\": %.2f, "
          "\"first_frames_s\": %.2f, \"frames_per_s\": %.2f, \"busy_s\": %.2f, \"idle_s\": %.2f, "
          "\"peak_gib\": %.2f}\n", P, C, steps, frames, width * 8, height * 8, st.stage[0].passes, st.run_seconds,
          st.first_frame_seconds, frames / st.run_seconds, st.stage[0].busy_seconds, st.stage[0].idle_seconds,
          peak_gib (be));
  rc = 0;
out:
  if (rc)
    printf ("engine FAILED: %s\n", err ? err->message : "?");
  g_clear_error (&err);
  dp_tensor_free (&context);
  dp_engine_free (e);
  dp_wan_vae_free (vae);
  if (vae_dir)
    random_wan_remove (vae_dir);
  g_free (vae_dir);
  return rc;
}

/* ------------------------------------------------------------ whole run */

typedef struct {
  random_umt5_size text;
  int height, width, latent_frames, P, C, steps;
  int prompt_tokens, text_len;
  gboolean vae_thread;  /* decode on a thread with a backend of its own (own CUDA stream) */
  gboolean keep_text;   /* keep the text encoder loaded during the run (else freed first) */
  int vae_tile;
} whole_cfg;

/* Encodes one prompt of random ids into row b of context [2, text_len, d]. */
static gboolean
encode_random (dp_umt5 *t5, const whole_cfg *c, int b, int n_tokens, dp_tensor *context, double *ms,
               GError **error)
{
  int32_t *ids = g_new (int32_t, n_tokens);
  for (int i = 0; i < n_tokens; i++)
    ids[i] = 1 + (int32_t) (rng_next () % (guint32) (c->text.vocab - 1));
  dp_tensor out = { 0 };
  const double t0 = now_s ();
  gboolean ok = dp_umt5_encode (t5, ids, n_tokens, c->text_len, &out, error);
  *ms = (now_s () - t0) * 1000.0;
  if (ok)
    memcpy ((float *) context->data + (size_t) b * c->text_len * c->text.d_model, out.data,
            (size_t) c->text_len * c->text.d_model * sizeof (float));
  dp_tensor_free (&out);
  g_free (ids);
  return ok;
}

/* A whole run as a user sees it: the prompt and the negative prompt through
 * umT5 (random weights at the given sizes; on a GPU in BF16), then the
 * DualParal engine on one stage (the random transformer in dit_dir,
 * guidance 5, `steps` UniPC steps), each finished block decoded by the
 * random VAE, inline or on its own thread and backend. */
static int
bench_whole (dp_backend *be, const char *device, const char *dit_dir, const whole_cfg *c)
{
  GError *err = NULL;
  int rc = 1;
  char *t5_dir = NULL, *vae_dir = NULL;
  dp_umt5 *t5 = NULL;
  dp_wan_vae *vae = NULL;
  dp_backend *vae_be = NULL;
  dp_engine *e = NULL;
  dp_tensor context = { 0 };
  double write_s = 0, load_s = 0, enc_ms[3] = { 0 };

  double t0 = now_s ();
  t5_dir = g_dir_make_tmp ("dualparal-umt5-XXXXXX", &err);
  if (!t5_dir || !random_umt5_write (t5_dir, &c->text, be->weight_dtype == DP_F32 ? DP_F32 : DP_BF16, 3, &err))
    goto out;
  write_s = now_s () - t0;
  if (!be->host_memory)
    dp_cuda_backend_reset_peak (be);
  t0 = now_s ();
  if (!(t5 = dp_umt5_load (be, t5_dir, &err)) || !be->ops->sync (be, &err))
    goto out;
  load_s = now_s () - t0;
  /* The first encode sizes the encoder's arena; the next two are a prompt
   * change's cost (prompt and negative prompt). */
  context = dp_tensor_new_host (DP_F32, 3, (int64_t[]){ 2, c->text_len, c->text.d_model });
  if (!encode_random (t5, c, 0, c->prompt_tokens, &context, &enc_ms[0], &err) ||
      !encode_random (t5, c, 0, c->prompt_tokens, &context, &enc_ms[1], &err) ||
      !encode_random (t5, c, 1, MAX (1, c->prompt_tokens / 4), &context, &enc_ms[2], &err))
    goto out;
  const double text_peak = peak_gib (be);
  if (!c->keep_text)
    g_clear_pointer (&t5, dp_umt5_free);

  if (c->vae_thread && !(vae_be = dp_backend_new (device, &err)))
    goto out;
  if (!(vae = random_vae_load (vae_be ? vae_be : be, &vae_dir, &err)))
    goto out;
  dp_sampler_settings ss;
  dp_sampler_settings_init (&ss, DP_SAMPLER_UNIPC, 3.0);
  dp_schedule *sched = dp_schedule_new (&ss, c->steps, &err);
  if (!sched)
    goto out;
  dp_engine_params p = { .block_frames = c->P, .context_frames = c->C, .latent_frames = c->latent_frames,
                         .latent_height = c->height, .latent_width = c->width, .schedule = sched, .guidance = 5.0,
                         .seed = 1, .noise_stream = DP_ENGINE_NOISE_STREAM };
  e = dp_engine_new (dit_dir, &be, 1, NULL, &p, &err);
  dp_schedule_free (sched);
  if (!e)
    goto out;
  int64_t frames = 0;
  dp_wan_vae_tiling tiling = { 0 };
  if (c->vae_tile > 0)
    dp_wan_vae_tiling_default (c->vae_tile, 8, &tiling);
  dp_engine_output out = { .frames = count_frames, .user_data = &frames, .decode_thread = c->vae_thread,
                           .vae_tiling = &tiling };
  if (!be->host_memory) {
    dp_cuda_backend_reset_peak (be);
    if (vae_be)
      dp_cuda_backend_reset_peak (vae_be);
  }
  if (!dp_engine_run (e, &context, vae, &out, &err))
    goto out;
  dp_engine_stats st;
  dp_engine_get_stats (e, &st);
  const double encode_s = (enc_ms[1] + enc_ms[2]) / 1000.0;
  printf ("{\"whole_run\": \"umT5 (%d layers, d %d) + DualParal 1 stage (random DiT) + Wan2.1 VAE (base_dim %d)\", "
          "\"frames\": %" G_GINT64_FORMAT ", \"size\": \"%dx%d\", \"steps\": %d, \"P\": %d, \"C\": %d, "
          "\"vae\": \"%s\", \"vae_tile\": %d, \"text_encoder\": \"%s\", "
          "\"text_write_s\": %.1f, \"text_load_s\": %.2f, \"encode_first_ms\": %.1f, \"encode_prompt_ms\": %.1f, "
          "\"encode_negative_ms\": %.1f, \"text_peak_gib\": %.2f, \"run_s\": %.2f, \"first_frames_s\": %.2f, "
          "\"frames_per_s\": %.3f, \"total_s\": %.2f, \"busy_s\": %.2f, \"idle_s\": %.2f, \"peak_gib\": %.2f, "
          "\"vae_peak_gib\": %.2f}\n",
          c->text.layers, c->text.d_model, vae_base_dim, frames, c->width * 8, c->height * 8, c->steps, c->P, c->C,
          c->vae_thread ? "own thread and backend" : "inline", c->vae_tile, c->keep_text ? "kept" : "freed", write_s,
          load_s, enc_ms[0], enc_ms[1], enc_ms[2], text_peak, st.run_seconds, st.first_frame_seconds,
          frames / st.run_seconds, encode_s + st.run_seconds, st.stage[0].busy_seconds, st.stage[0].idle_seconds,
          peak_gib (be), vae_be ? peak_gib (vae_be) : 0.0);
  fflush (stdout);
  rc = 0;
out:
  if (rc)
    printf ("whole run FAILED: %s\n", err ? err->message : "?");
  g_clear_error (&err);
  dp_tensor_free (&context);
  dp_engine_free (e);
  dp_wan_vae_free (vae);
  dp_backend_free (vae_be);
  dp_umt5_free (t5);
  if (vae_dir)
    random_wan_remove (vae_dir);
  if (t5_dir)
    random_wan_remove (t5_dir);
  g_free (vae_dir);
  g_free (t5_dir);
  return rc;
}

int
main (int argc, char **argv)
{
  gboolean ops = FALSE, dit = FALSE, vae = FALSE, engine = FALSE, whole = FALSE, tiny = FALSE, vae_thread = FALSE;
  gboolean free_text = FALSE, vae_memory = FALSE;
  int vae_tile = 0, whole_steps = 50, vae_frames = 21;
  char *vae_sizes = NULL, *model_name = NULL;
  int reps = 7, dit_reps = 3, layers = 0, height = 60, width = 104, variant = -1, steps = 10, block = 4, ctx = 2;
  gboolean compare_attn = FALSE, compare_fused = FALSE;
  char *device = NULL;
  GOptionEntry entries[] = {
    { "device", 'd', 0, G_OPTION_ARG_STRING, &device, "Backend (default cuda:0)", "cuda:N" },
    { "ops", 0, 0, G_OPTION_ARG_NONE, &ops, "Ceilings, GEMMs, memory-bound ops and attention", NULL },
    { "dit", 0, 0, G_OPTION_ARG_NONE, &dit, "Guided DiT forward at Wan2.1-1.3B shapes", NULL },
    { "vae", 0, 0, G_OPTION_ARG_NONE, &vae, "Wan2.1 VAE decode of 81 frames (random weights) at each --vae-size",
      NULL },
    { "vae-size", 0, 0, G_OPTION_ARG_STRING, &vae_sizes,
      "--vae: frame sizes in pixels, comma-separated (default 832x480,1280x720)", "WxH,..." },
    { "vae-tile", 0, 0, G_OPTION_ARG_INT, &vae_tile,
      "--vae: also time a tiled decode with N x N tiles (stride 3N/4); --whole: decode tiled", "N" },
    { "vae-frames", 0, 0, G_OPTION_ARG_INT, &vae_frames, "--vae: latent frames (default 21: 81 frames)", "N" },
    { "vae-memory", 0, 0, G_OPTION_ARG_NONE, &vae_memory,
      "The VAE decoder's memory at each --vae-size, untiled and in tiles of 256, 384 and 512 (no decoding: runs "
      "on the CPU too)", NULL },
    { "whole", 0, 0, G_OPTION_ARG_NONE, &whole,
      "A whole run: umT5-XXL encode of a prompt and a negative prompt, 81 frames at --height x --width, "
      "--whole-steps steps of the DualParal engine (1 stage, P = --block-frames, C = --context-frames), each "
      "block decoded", NULL },
    { "whole-steps", 0, 0, G_OPTION_ARG_INT, &whole_steps, "--whole: sampler steps (default 50)", "N" },
    { "vae-thread", 0, 0, G_OPTION_ARG_NONE, &vae_thread,
      "--whole: decode on a thread and backend of its own (own CUDA stream), overlapped with denoising", NULL },
    { "free-text-encoder", 0, 0, G_OPTION_ARG_NONE, &free_text,
      "--whole: free the text encoder before the run (default: kept, as for prompt changes)", NULL },
    { "tiny", 0, 0, G_OPTION_ARG_NONE, &tiny,
      "Tiny sizes for --vae, --engine and --whole (2-layer models, small frames): checks the harness on the CPU "
      "in seconds; not a benchmark", NULL },
    { "engine", 0, 0, G_OPTION_ARG_NONE, &engine,
      "A whole DualParal run, one stage: 81 frames, the random 1.3B DiT and the VAE", NULL },
    { "steps", 0, 0, G_OPTION_ARG_INT, &steps, "--engine: sampler steps (default 10)", "N" },
    { "block-frames", 0, 0, G_OPTION_ARG_INT, &block, "--engine: latent frames per block P (default 4)", "P" },
    { "context-frames", 0, 0, G_OPTION_ARG_INT, &ctx, "--engine: context frames C (default 2)", "C" },
    { "repeat", 'n', 0, G_OPTION_ARG_INT, &reps, "Timed runs per op (default 7)", "N" },
    { "dit-repeat", 0, 0, G_OPTION_ARG_INT, &dit_reps, "Timed DiT forward passes per case (default 3)", "N" },
    { "layers", 0, 0, G_OPTION_ARG_INT, &layers, "DiT layers (default: the model's, 30 for 1.3b, 40 for 14b)", "N" },
    { "model", 0, 0, G_OPTION_ARG_STRING, &model_name,
      "--dit, --engine, --whole: the transformer's shape, 1.3b (default) or 14b (Wan2.1-14B, one Wan2.2 A14B expert)",
      "1.3b|14b" },
    { "attn-variant", 0, 0, G_OPTION_ARG_INT, &variant,
      "Flash-attention variant for --dit: 0 = 4 warps x 16 rows, 1 = 8 x 16, 2 = 4 x 32, 3 = wgmma (Hopper) "
      "(default: the backend's)", "N" },
    { "compare-attn", 0, 0, G_OPTION_ARG_NONE, &compare_attn,
      "--dit: time each case with the wgmma kernel and with variant 2 (one model load)", NULL },
    { "compare-fused", 0, 0, G_OPTION_ARG_NONE, &compare_fused,
      "--dit: time each case with the fused ops (projection + gated residual, q / k norm + RoPE) and without",
      NULL },
    { "height", 0, 0, G_OPTION_ARG_INT, &height, "DiT latent height (default 60: 480 pixels)", "N" },
    { "width", 0, 0, G_OPTION_ARG_INT, &width, "DiT latent width (default 104: 832 pixels)", "N" },
    { NULL },
  };
  GError *err = NULL;
  /* The CUDA code is linked in: register it rather than load the module. */
  dp_cuda_register ();
  GOptionContext *octx = g_option_context_new ("- benchmark the CUDA backend");
  g_option_context_add_main_entries (octx, entries, NULL);
  if (!g_option_context_parse (octx, &argc, &argv, &err)) {
    g_printerr ("%s\n", err->message);
    return 2;
  }
  g_option_context_free (octx);
  if (!ops && !dit && !vae && !engine && !whole && !vae_memory)
    ops = TRUE;
  random_wan_dit_size dit_size = wan_1_3b;
  const char *model_label = "Wan2.1-1.3B";
  if (g_strcmp0 (model_name, "14b") == 0) {
    dit_size = wan_14b;
    model_label = "Wan2.1-14B";
  } else if (model_name && g_strcmp0 (model_name, "1.3b") != 0) {
    g_printerr ("--model: \"%s\" is not 1.3b or 14b\n", model_name);
    return 2;
  }
  if (layers > 0)
    dit_size.layers = layers;
  /* umT5-XXL, with a small vocabulary: the embedding is never uploaded (the
   * prompt's rows are gathered on the host), so it only costs disk. */
  whole_cfg wc = { .text = { .vocab = 32128, .d_model = 4096, .d_kv = 64, .heads = 64, .d_ff = 10240, .layers = 24 },
                   .height = height, .width = width, .latent_frames = 21, .P = block, .C = ctx, .steps = whole_steps,
                   .prompt_tokens = 120, .text_len = 512, .vae_thread = vae_thread, .keep_text = !free_text,
                   .vae_tile = vae_tile };
  if (tiny) {
    /* Every code path at sizes the CPU runs in seconds. */
    model_label = "tiny";
    dit_size = (random_wan_dit_size){ .dim = 256, .heads = 2, .ffn = 512, .layers = 2, .text_dim = 64,
                                      .freq_dim = 256, .channels = 16 };
    wc.text = (random_umt5_size){ .vocab = 1000, .d_model = 64, .d_kv = 16, .heads = 4, .d_ff = 128, .layers = 2 };
    wc.text_len = 32;
    wc.prompt_tokens = 12;
    wc.height = height = 4;
    wc.width = width = 6;
    wc.latent_frames = 5;
    wc.steps = steps = MIN (whole_steps, 3);
    wc.P = block = 2;
    wc.C = ctx = 1;
    vae_base_dim = 8;
    vae_frames = MIN (vae_frames, 3);
    if (!vae_sizes)
      vae_sizes = g_strdup ("96x64,160x96");
    if (vae_tile > 64 || vae_tile == 0)
      vae_tile = wc.vae_tile = vae_tile ? 64 : 0;
  }
  if (reps < 1 || dit_reps < 1 || layers < 0 || steps < 1 || block < 1 || ctx < 0 || height < 2 || width < 2
      || height % 2 || width % 2 || vae_tile < 0 || whole_steps < 1 || vae_frames < 1) {
    g_printerr ("--repeat, --dit-repeat, --layers, --steps and --block-frames must be positive, --context-frames "
                "not negative, --height and --width even\n");
    return 2;
  }
  if (device && !g_str_has_prefix (device, "cuda") && ops) {
    g_printerr ("--ops times the CUDA backend; --device cpu runs the others (to check the harness)\n");
    return 2;
  }
  dp_backend *be = dp_backend_new (device ? device : "cuda", &err);
  if (!be) {
    g_printerr ("%s\n", err->message);
    return 1;
  }
  char *desc = be->host_memory ? g_strdup ("cpu") : dp_cuda_backend_describe (be);
  printf ("# device: %s\n", desc);
  g_free (desc);
  int failures = 0;
  if (ops)
    failures += bench_ops (be, reps);
  /* The random transformer, written once for --dit and --engine (2.8 GB in
   * BF16 at 30 layers: gpu-check.sh points TMPDIR at /dev/shm). */
  char *dit_dir = NULL;
  if (dit || engine || whole) {
    random_wan_dit_size m = dit_size;
    gint64 t0 = g_get_monotonic_time ();
    dit_dir = g_dir_make_tmp ("dualparal-bench-XXXXXX", &err);
    if (!dit_dir || !random_wan_dit_write (dit_dir, &m, DP_BF16, 1, &err)) {
      printf ("writing the random transformer FAILED: %s\n", err ? err->message : "?");
      g_clear_error (&err);
      dit = engine = whole = FALSE;
      failures++;
    } else {
      printf ("# random %s-shaped transformer (%d layers) written in %.1f s\n", model_label,
              m.layers, (g_get_monotonic_time () - t0) / 1e6);
    }
  }
  if (dit) {
    dit_config configs[4] = { { variant, FALSE } };
    int n_configs = 1;
    if (be->host_memory) {
      configs[0].attn_variant = -1;
    } else if (compare_attn || compare_fused) {
      n_configs = 0;
      configs[n_configs++] = (dit_config){ DP_CUDA_ATTN_WGMMA, FALSE };
      if (compare_fused)
        configs[n_configs++] = (dit_config){ DP_CUDA_ATTN_WGMMA, TRUE };
      if (compare_attn)
        configs[n_configs++] = (dit_config){ DP_CUDA_ATTN_W4_R32, FALSE };
      printf ("# dit: wgmma attention%s%s\n", compare_fused ? "; again without the fused ops" : "",
              compare_attn ? "; again with attention variant 2 (mma.sync 4w x32)" : "");
    } else {
      printf ("# dit: flash-attention variant %d (-1: the backend's default, %d)\n", variant,
              dp_cuda_backend_default_attention_variant (be));
    }
    failures += bench_dit (be, dit_dir, &dit_size, model_label, dit_reps, height, width, configs, n_configs);
  }
  if (vae_memory)
    failures += bench_vae_memory (be, vae_sizes ? vae_sizes : "832x480,1280x720,1920x1088", tiny ? "64" : "256,384,512");
  if (vae)
    failures += bench_vae_sizes (be, vae_sizes ? vae_sizes : "832x480,1280x720", vae_frames, vae_tile);
  if (engine)
    failures += bench_engine (be, dit_dir, height, width, block, ctx, steps, tiny ? 5 : 21, dit_size.text_dim);
  if (whole)
    failures += bench_whole (be, device ? device : "cuda", dit_dir, &wc);
  if (dit_dir)
    random_wan_remove (dit_dir);
  g_free (dit_dir);
  dp_backend_free (be);
  g_free (device);
  g_free (vae_sizes);
  g_free (model_name);
  return failures ? 1 : 0;
}
