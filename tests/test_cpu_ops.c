/* CPU backend operations against plain double-precision references computed
 * here, plus small hand-computed cases and the sticky-error contract.
 *
 * Tolerances: random cases compare by relative L2 error
 * ||got - ref|| / ||ref|| against the double reference; 1e-5 for GEMM-based
 * ops (F32 accumulation over K <= ~2000 terms), 1e-6 for row-wise and
 * element-wise ops.  Hand-computed cases use absolute 1e-5 (or exact
 * equality where the F32 arithmetic is exact). */
#include <math.h>
#include <string.h>

#include "dualparal/backend.h"

/* ------------------------------------------------------------ helpers */

static guint64 rng_state;

static void
rng_seed (guint64 s)
{
  rng_state = s * 6364136223846793005ULL + 1442695040888963407ULL;
}

/* uniform in [lo, hi) from a 64-bit LCG (top 24 bits) */
static float
rng_uniform (float lo, float hi)
{
  rng_state = rng_state * 6364136223846793005ULL + 1442695040888963407ULL;
  return lo + (hi - lo) * (float) ((rng_state >> 40) / 16777216.0);
}

static dp_tensor
tensor_new (int ndim, const int64_t *shape)
{
  return dp_tensor_new_host (DP_F32, ndim, shape);
}

#define T1(a) tensor_new (1, (int64_t[]){ a })
#define T2(a, b) tensor_new (2, (int64_t[]){ a, b })
#define T3(a, b, c) tensor_new (3, (int64_t[]){ a, b, c })
#define T4(a, b, c, d) tensor_new (4, (int64_t[]){ a, b, c, d })
#define T5(a, b, c, d, e) tensor_new (5, (int64_t[]){ a, b, c, d, e })

static void
fill_random (dp_tensor *t, float lo, float hi)
{
  float *d = t->data;
  for (int64_t i = 0; i < dp_tensor_nelem (t); i++)
    d[i] = rng_uniform (lo, hi);
}

static void
fill_values (dp_tensor *t, const float *v)
{
  memcpy (t->data, v, dp_tensor_nbytes (t));
}

static double
rel_l2 (const float *got, const double *ref, int64_t n)
{
  double num = 0.0, den = 0.0;
  for (int64_t i = 0; i < n; i++) {
    double e = (double) got[i] - ref[i];
    num += e * e;
    den += ref[i] * ref[i];
  }
  return den > 0.0 ? sqrt (num / den) : sqrt (num);
}

static void
assert_close (const dp_tensor *got, const double *ref, double tol, const char *what)
{
  g_assert_cmpint (dp_tensor_nelem (got), >, 0);
  double e = rel_l2 (got->data, ref, dp_tensor_nelem (got));
  if (!(e <= tol))
    g_error ("%s: relative L2 error %g > %g", what, e, tol);
}

static dp_backend *
backend_new (void)
{
  GError *error = NULL;
  dp_backend *be = dp_backend_new ("cpu", &error);
  g_assert_no_error (error);
  g_assert_nonnull (be);
  return be;
}

/* The backend is healthy; frees it. */
static void
backend_done (dp_backend *be)
{
  GError *error = NULL;
  g_assert_true (be->ops->sync (be, &error));
  g_assert_no_error (error);
  dp_backend_free (be);
}

static double
gelu_ref (double x)
{
  return 0.5 * x * (1.0 + tanh (sqrt (2.0 / G_PI) * (x + 0.044715 * x * x * x)));
}

static double
silu_ref (double x)
{
  return x / (1.0 + exp (-x));
}

/* ------------------------------------------------------------ linear */

static void
test_linear (void)
{
  const int64_t cases[][3] = { { 1, 1, 1 }, { 7, 13, 5 }, { 33, 64, 17 }, { 130, 257, 96 } };
  rng_seed (1);
  for (guint c = 0; c < G_N_ELEMENTS (cases); c++) {
    const int64_t M = cases[c][0], K = cases[c][1], N = cases[c][2];
    for (int act = DP_ACT_NONE; act <= DP_ACT_SILU; act++) {
      for (int with_bias = 0; with_bias < 2; with_bias++) {
        dp_backend *be = backend_new ();
        dp_tensor x = T2 (M, K), w = T2 (N, K), b = T1 (N), y = T2 (M, N);
        fill_random (&x, -1, 1);
        fill_random (&w, -1, 1);
        fill_random (&b, -1, 1);
        be->ops->linear (be, &y, &x, &w, with_bias ? &b : NULL, act);
        double *ref = g_new (double, M * N);
        const float *xd = x.data, *wd = w.data, *bd = b.data;
        for (int64_t m = 0; m < M; m++)
          for (int64_t n = 0; n < N; n++) {
            double s = with_bias ? bd[n] : 0.0;
            for (int64_t k = 0; k < K; k++)
              s += (double) xd[m * K + k] * wd[n * K + k];
            ref[m * N + n] = act == DP_ACT_GELU_TANH ? gelu_ref (s) : act == DP_ACT_SILU ? silu_ref (s) : s;
          }
        assert_close (&y, ref, 1e-5, "linear");
        g_free (ref);
        dp_tensor_free (&x);
        dp_tensor_free (&w);
        dp_tensor_free (&b);
        dp_tensor_free (&y);
        backend_done (be);
      }
    }
  }

  /* 3-D rows: x [2, 3, 4] is 6 rows; hand-checked row 0 with w = identity-ish */
  dp_backend *be = backend_new ();
  dp_tensor x = T3 (2, 3, 4), w = T2 (2, 4), y = T3 (2, 3, 2);
  float xv[24];
  for (int i = 0; i < 24; i++)
    xv[i] = (float) i;
  fill_values (&x, xv);
  fill_values (&w, (float[]){ 1, 0, 0, 0, 1, 1, 1, 1 });
  be->ops->linear (be, &y, &x, &w, NULL, DP_ACT_NONE);
  const float *yd = y.data;
  for (int r = 0; r < 6; r++) {
    g_assert_cmpfloat (yd[r * 2], ==, xv[r * 4]);
    g_assert_cmpfloat (yd[r * 2 + 1], ==, xv[r * 4] + xv[r * 4 + 1] + xv[r * 4 + 2] + xv[r * 4 + 3]);
  }
  dp_tensor_free (&x);
  dp_tensor_free (&w);
  dp_tensor_free (&y);
  backend_done (be);
}

/* ------------------------------------------------------------ norms */

static void
layer_norm_ref (double *out, const float *x, int64_t D, double eps)
{
  double mean = 0.0, var = 0.0;
  for (int64_t i = 0; i < D; i++)
    mean += x[i];
  mean /= D;
  for (int64_t i = 0; i < D; i++)
    var += (x[i] - mean) * (x[i] - mean);
  var /= D;
  for (int64_t i = 0; i < D; i++)
    out[i] = (x[i] - mean) / sqrt (var + eps);
}

static void
test_layer_norm (void)
{
  /* Known values: x = [1, 2, 3, 4], eps 0: mean 2.5, biased variance 1.25,
   * y = (x - 2.5) / sqrt (1.25) = [-1.3416408, -0.4472136, 0.4472136, 1.3416408]. */
  dp_backend *be = backend_new ();
  dp_tensor x = T2 (1, 4), y = T2 (1, 4);
  fill_values (&x, (float[]){ 1, 2, 3, 4 });
  be->ops->layer_norm (be, &y, &x, NULL, NULL, 0.0f);
  const float expect[4] = { -1.3416408f, -0.4472136f, 0.4472136f, 1.3416408f };
  for (int i = 0; i < 4; i++)
    g_assert_cmpfloat_with_epsilon (((float *) y.data)[i], expect[i], 1e-6);
  dp_tensor_free (&x);
  dp_tensor_free (&y);

  /* Random rows, with and without affine, in place and out of place. */
  const int64_t cases[][2] = { { 1, 1 }, { 5, 17 }, { 64, 256 }, { 300, 1536 } };
  rng_seed (2);
  for (guint c = 0; c < G_N_ELEMENTS (cases); c++) {
    const int64_t R = cases[c][0], D = cases[c][1];
    for (int affine = 0; affine < 2; affine++) {
      for (int in_place = 0; in_place < 2; in_place++) {
        dp_tensor xr = T2 (R, D), yr = T2 (R, D), w = T1 (D), b = T1 (D);
        fill_random (&xr, -3, 5);
        fill_random (&w, 0.5, 1.5);
        fill_random (&b, -1, 1);
        double *ref = g_new (double, R * D);
        for (int64_t r = 0; r < R; r++) {
          layer_norm_ref (ref + r * D, (float *) xr.data + r * D, D, 1e-6);
          if (affine)
            for (int64_t i = 0; i < D; i++)
              ref[r * D + i] = ref[r * D + i] * ((float *) w.data)[i] + ((float *) b.data)[i];
        }
        dp_tensor *out = in_place ? &xr : &yr;
        be->ops->layer_norm (be, out, &xr, affine ? &w : NULL, affine ? &b : NULL, 1e-6f);
        /* D = 1: every output is exactly b (or 0); the reference is too. */
        assert_close (out, ref, 1e-6, "layer_norm");
        g_free (ref);
        dp_tensor_free (&xr);
        dp_tensor_free (&yr);
        dp_tensor_free (&w);
        dp_tensor_free (&b);
      }
    }
  }
  backend_done (be);
}

static void
test_layer_norm_modulate (void)
{
  rng_seed (3);
  dp_backend *be = backend_new ();
  const int64_t cases[][3] = { { 1, 3, 8 }, { 2, 5, 12 }, { 3, 70, 96 } };
  for (guint c = 0; c < G_N_ELEMENTS (cases); c++) {
    const int64_t B = cases[c][0], L = cases[c][1], D = cases[c][2];
    for (int in_place = 0; in_place < 2; in_place++) {
      dp_tensor x = T3 (B, L, D), y = T3 (B, L, D), shift = T2 (B, D), scale = T2 (B, D);
      fill_random (&x, -2, 3);
      fill_random (&shift, -1, 1);
      fill_random (&scale, -0.5, 0.5);
      double *ref = g_new (double, B * L * D);
      for (int64_t b = 0; b < B; b++)
        for (int64_t l = 0; l < L; l++) {
          double *o = ref + (b * L + l) * D;
          layer_norm_ref (o, (float *) x.data + (b * L + l) * D, D, 1e-6);
          for (int64_t i = 0; i < D; i++)
            o[i] = o[i] * (1.0 + ((float *) scale.data)[b * D + i]) + ((float *) shift.data)[b * D + i];
        }
      dp_tensor *out = in_place ? &x : &y;
      be->ops->layer_norm_modulate (be, out, &x, &shift, &scale, 1e-6f);
      assert_close (out, ref, 1e-6, "layer_norm_modulate");
      g_free (ref);
      dp_tensor_free (&x);
      dp_tensor_free (&y);
      dp_tensor_free (&shift);
      dp_tensor_free (&scale);
    }
  }
  /* One batch entry as [1, L, D] with modulation [1, D] (the DiT head). */
  dp_tensor x = T3 (1, 2, 2), y = T3 (1, 2, 2), shift = T2 (1, 2), scale = T2 (1, 2);
  fill_values (&x, (float[]){ 1, 3, 5, -5 });
  fill_values (&shift, (float[]){ 10, 20 });
  fill_values (&scale, (float[]){ 1, -0.5f });
  be->ops->layer_norm_modulate (be, &y, &x, &shift, &scale, 0.0f);
  /* rows normalise to [-1, 1] and [1, -1]; * [2, 0.5] + [10, 20] */
  const float expect[4] = { 8, 20.5f, 12, 19.5f };
  for (int i = 0; i < 4; i++)
    g_assert_cmpfloat_with_epsilon (((float *) y.data)[i], expect[i], 1e-5);
  dp_tensor_free (&x);
  dp_tensor_free (&y);
  dp_tensor_free (&shift);
  dp_tensor_free (&scale);
  backend_done (be);
}

static void
test_rms_norm (void)
{
  /* x = [3, 4], eps 0: mean (x^2) = 12.5, rsqrt = 0.28284271,
   * y = [0.84852814, 1.13137085]; with w = [2, -1]: [1.6970563, -1.1313708]. */
  dp_backend *be = backend_new ();
  dp_tensor x = T1 (2), y = T1 (2), w = T1 (2);
  fill_values (&x, (float[]){ 3, 4 });
  fill_values (&w, (float[]){ 2, -1 });
  be->ops->rms_norm (be, &y, &x, NULL, 0.0f);
  g_assert_cmpfloat_with_epsilon (((float *) y.data)[0], 0.84852814f, 1e-6);
  g_assert_cmpfloat_with_epsilon (((float *) y.data)[1], 1.13137085f, 1e-6);
  be->ops->rms_norm (be, &x, &x, &w, 0.0f);
  g_assert_cmpfloat_with_epsilon (((float *) x.data)[0], 1.6970563f, 1e-6);
  g_assert_cmpfloat_with_epsilon (((float *) x.data)[1], -1.1313708f, 1e-6);
  dp_tensor_free (&x);
  dp_tensor_free (&y);
  dp_tensor_free (&w);

  rng_seed (4);
  const int64_t cases[][2] = { { 3, 5 }, { 17, 128 }, { 200, 1536 } };
  for (guint c = 0; c < G_N_ELEMENTS (cases); c++) {
    const int64_t R = cases[c][0], D = cases[c][1];
    for (int in_place = 0; in_place < 2; in_place++) {
      dp_tensor xr = T2 (R, D), yr = T2 (R, D), wr = T1 (D);
      fill_random (&xr, -2, 2);
      fill_random (&wr, 0.5, 1.5);
      double *ref = g_new (double, R * D);
      const float *xd = xr.data, *wd = wr.data;
      for (int64_t r = 0; r < R; r++) {
        double ss = 0.0;
        for (int64_t i = 0; i < D; i++)
          ss += (double) xd[r * D + i] * xd[r * D + i];
        double rr = 1.0 / sqrt (ss / D + 1e-6);
        for (int64_t i = 0; i < D; i++)
          ref[r * D + i] = xd[r * D + i] * rr * wd[i];
      }
      dp_tensor *out = in_place ? &xr : &yr;
      be->ops->rms_norm (be, out, &xr, &wr, 1e-6f);
      assert_close (out, ref, 1e-6, "rms_norm");
      g_free (ref);
      dp_tensor_free (&xr);
      dp_tensor_free (&yr);
      dp_tensor_free (&wr);
    }
  }
  backend_done (be);
}

/* ------------------------------------------------------------ rope */

static void
test_rope_hand (void)
{
  /* d = 6: dh = dw = 2 * (6 / 6) = 2, dt = 2; one pair per part, frequency
   * theta^0 = 1, so the angle is the position itself.  Grid: 1 frame at
   * position 5, 1 row, 2 columns.  x = (1, 0) in every pair, so each pair
   * becomes (cos a, sin a):
   *   token 0: time a = 5, row a = 0, column a = 0
   *            -> [cos 5, sin 5, 1, 0, 1, 0]
   *   token 1: time a = 5, row a = 0, column a = 1
   *            -> [cos 5, sin 5, 1, 0, cos 1, sin 1]
   * cos 5 = 0.2836621855, sin 5 = -0.9589242747, cos 1 = 0.5403023059,
   * sin 1 = 0.8414709848. */
  dp_backend *be = backend_new ();
  dp_tensor x = T4 (1, 2, 1, 6);
  fill_values (&x, (float[]){ 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0 });
  int pos[1] = { 5 };
  dp_rope_grid g = { .frames = 1, .height = 1, .width = 2, .frame_pos = pos, .theta = 10000.0f };
  be->ops->rope_3d (be, &x, &g);
  const float expect[12] = { 0.2836621855f, -0.9589242747f, 1, 0, 1, 0,
                             0.2836621855f, -0.9589242747f, 1, 0, 0.5403023059f, 0.8414709848f };
  for (int i = 0; i < 12; i++)
    g_assert_cmpfloat_with_epsilon (((float *) x.data)[i], expect[i], 1e-6);

  /* d = 12: parts of 4 (two pairs each, frequencies 1 and 10000^(-2/4) =
   * 0.01).  One token at frame position 100, row 0, column 0, x = (0, 1) in
   * the time part's second pair: rotated by 100 * 0.01 = 1 rad:
   * (0 cos 1 - 1 sin 1, 0 sin 1 + 1 cos 1) = (-0.8414710, 0.5403023). */
  dp_tensor x2 = T4 (1, 1, 1, 12);
  fill_values (&x2, (float[]){ 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0 });
  int pos2[1] = { 100 };
  dp_rope_grid g2 = { .frames = 1, .height = 1, .width = 1, .frame_pos = pos2, .theta = 10000.0f };
  be->ops->rope_3d (be, &x2, &g2);
  g_assert_cmpfloat_with_epsilon (((float *) x2.data)[2], -0.8414710f, 1e-6);
  g_assert_cmpfloat_with_epsilon (((float *) x2.data)[3], 0.5403023f, 1e-6);
  for (int i = 4; i < 12; i++)
    g_assert_cmpfloat (((float *) x2.data)[i], ==, 0.0f);
  dp_tensor_free (&x);
  dp_tensor_free (&x2);
  backend_done (be);
}

static void
test_rope_random (void)
{
  rng_seed (5);
  dp_backend *be = backend_new ();
  /* d = 128 is Wan's 44/42/42 split; d = 10 gives 6/2/2; d = 4 gives 4/0/0. */
  const int dims[] = { 128, 10, 4, 64 };
  for (guint c = 0; c < G_N_ELEMENTS (dims); c++) {
    const int64_t B = 2, F = 2, Hg = 3, Wg = 4, H = 3, d = dims[c], L = F * Hg * Wg;
    int pos[2] = { 0, 7 };
    dp_rope_grid g = { .frames = F, .height = Hg, .width = Wg, .frame_pos = pos, .theta = 10000.0f };
    dp_tensor x = T4 (B, L, H, d);
    fill_random (&x, -1, 1);
    const int64_t dh = 2 * (d / 6), dt = d - 2 * dh;
    double *ref = g_new (double, B * L * H * d);
    const float *xd = x.data;
    for (int64_t b = 0; b < B; b++)
      for (int64_t l = 0; l < L; l++)
        for (int64_t h = 0; h < H; h++) {
          const int64_t base = ((b * L + l) * H + h) * d;
          const int64_t axis_pos[3] = { pos[l / (Hg * Wg)], (l / Wg) % Hg, l % Wg };
          const int64_t part_dim[3] = { dt, dh, dh };
          int64_t off = 0;
          for (int part = 0; part < 3; part++) {
            for (int64_t i = 0; i < part_dim[part] / 2; i++) {
              double a = axis_pos[part] * pow (10000.0, -2.0 * i / part_dim[part]);
              double x0 = xd[base + off + 2 * i], x1 = xd[base + off + 2 * i + 1];
              ref[base + off + 2 * i] = x0 * cos (a) - x1 * sin (a);
              ref[base + off + 2 * i + 1] = x0 * sin (a) + x1 * cos (a);
            }
            off += part_dim[part];
          }
        }
    be->ops->rope_3d (be, &x, &g);
    assert_close (&x, ref, 1e-6, "rope_3d");
    g_free (ref);
    dp_tensor_free (&x);
  }
  backend_done (be);
}

/* ------------------------------------------------------------ activations */

static void
test_activations (void)
{
  rng_seed (6);
  dp_backend *be = backend_new ();
  const int64_t n = 100003; /* odd, above the threading threshold */
  dp_tensor x = T1 (n), y = T1 (n);
  fill_random (&x, -8, 8);
  float *xd = x.data;
  xd[0] = -100.0f; /* silu -> -0, gelu -> -0 */
  xd[1] = 100.0f;
  xd[2] = 0.0f;
  double *ref = g_new (double, n);
  for (int64_t i = 0; i < n; i++)
    ref[i] = gelu_ref (xd[i]);
  be->ops->gelu_tanh (be, &y, &x);
  assert_close (&y, ref, 1e-6, "gelu_tanh");
  g_assert_cmpfloat (((float *) y.data)[1], ==, 100.0f);
  g_assert_cmpfloat (fabsf (((float *) y.data)[0]), ==, 0.0f);
  for (int64_t i = 0; i < n; i++)
    ref[i] = silu_ref (xd[i]);
  be->ops->silu (be, &y, &x);
  assert_close (&y, ref, 1e-6, "silu");
  g_assert_cmpfloat (fabsf (((float *) y.data)[0]), <, 1e-30);
  /* in place */
  be->ops->silu (be, &x, &x);
  assert_close (&x, ref, 1e-6, "silu in place");
  g_free (ref);
  dp_tensor_free (&x);
  dp_tensor_free (&y);
  backend_done (be);
}

/* ------------------------------------------------------------ attention */

static void
attention_ref (double *o, const dp_tensor *q, const dp_tensor *k, const dp_tensor *v, float scale, int key_len,
               const dp_tensor *bias)
{
  const int64_t B = q->shape[0], Lq = q->shape[1], H = q->shape[2], d = q->shape[3], Lk = k->shape[1];
  const int64_t Le = key_len > 0 ? key_len : Lk;
  const float *qd = q->data, *kd = k->data, *vd = v->data, *bd = bias ? bias->data : NULL;
  double *s = g_new (double, Le);
  for (int64_t b = 0; b < B; b++)
    for (int64_t h = 0; h < H; h++)
      for (int64_t i = 0; i < Lq; i++) {
        double mx = -INFINITY, sum = 0.0;
        for (int64_t j = 0; j < Le; j++) {
          double dot = 0.0;
          for (int64_t c = 0; c < d; c++)
            dot += (double) qd[((b * Lq + i) * H + h) * d + c] * kd[((b * Lk + j) * H + h) * d + c];
          s[j] = scale * dot + (bd ? bd[(h * Lq + i) * Lk + j] : 0.0);
          mx = fmax (mx, s[j]);
        }
        for (int64_t j = 0; j < Le; j++) {
          s[j] = exp (s[j] - mx);
          sum += s[j];
        }
        for (int64_t c = 0; c < d; c++) {
          double acc = 0.0;
          for (int64_t j = 0; j < Le; j++)
            acc += s[j] * vd[((b * Lk + j) * H + h) * d + c];
          o[((b * Lq + i) * H + h) * d + c] = acc / sum;
        }
      }
  g_free (s);
}

static void
test_attention_random (void)
{
  rng_seed (7);
  /* B, Lq, Lk, H, d, key_len, with bias; Lq = 300 spans two query blocks. */
  const int64_t cases[][7] = {
    { 1, 1, 1, 1, 4, 0, 0 },   { 2, 5, 7, 3, 8, 0, 0 },   { 2, 5, 7, 3, 8, 4, 1 },
    { 1, 300, 19, 2, 16, 0, 1 }, { 1, 64, 77, 4, 64, 50, 0 }, { 2, 33, 33, 2, 128, 0, 0 },
  };
  for (guint c = 0; c < G_N_ELEMENTS (cases); c++) {
    const int64_t B = cases[c][0], Lq = cases[c][1], Lk = cases[c][2], H = cases[c][3], d = cases[c][4];
    const int key_len = (int) cases[c][5];
    const gboolean with_bias = cases[c][6];
    dp_backend *be = backend_new ();
    dp_tensor q = T4 (B, Lq, H, d), k = T4 (B, Lk, H, d), v = T4 (B, Lk, H, d), o = T4 (B, Lq, H, d);
    dp_tensor bias = T3 (H, Lq, Lk);
    fill_random (&q, -2, 2);
    fill_random (&k, -2, 2);
    fill_random (&v, -1, 1);
    fill_random (&bias, -3, 3);
    const float scale = 1.0f / sqrtf ((float) d);
    double *ref = g_new (double, B * Lq * H * d);
    attention_ref (ref, &q, &k, &v, scale, key_len, with_bias ? &bias : NULL);
    dp_attn_params p = { .scale = scale, .key_len = key_len, .bias = with_bias ? &bias : NULL };
    be->ops->attention (be, &o, &q, &k, &v, &p);
    assert_close (&o, ref, 1e-5, "attention");
    /* o may be q itself (same layout) */
    be->ops->attention (be, &q, &q, &k, &v, &p);
    assert_close (&q, ref, 1e-5, "attention o = q");
    g_free (ref);
    dp_tensor_free (&q);
    dp_tensor_free (&k);
    dp_tensor_free (&v);
    dp_tensor_free (&o);
    dp_tensor_free (&bias);
    backend_done (be);
  }
}

static void
test_attention_hand (void)
{
  rng_seed (8);
  dp_backend *be = backend_new ();
  const int64_t B = 2, Lq = 3, H = 2, d = 4;

  /* One key: softmax is 1, so every query's output is that key's value. */
  dp_tensor q = T4 (B, Lq, H, d), k1 = T4 (B, 1, H, d), v1 = T4 (B, 1, H, d), o = T4 (B, Lq, H, d);
  fill_random (&q, -5, 5);
  fill_random (&k1, -5, 5);
  fill_random (&v1, -1, 1);
  dp_attn_params p = { .scale = 0.5f, .key_len = 0, .bias = NULL };
  be->ops->attention (be, &o, &q, &k1, &v1, &p);
  for (int64_t b = 0; b < B; b++)
    for (int64_t i = 0; i < Lq; i++)
      for (int64_t h = 0; h < H; h++)
        for (int64_t c = 0; c < d; c++)
          g_assert_cmpfloat_with_epsilon (((float *) o.data)[((b * Lq + i) * H + h) * d + c],
                                          ((float *) v1.data)[(b * H + h) * d + c], 1e-6);

  /* key_len masking: keys >= key_len carry huge values; the result equals
   * attention over the first key_len keys alone. */
  const int64_t Lk = 6, kl = 4;
  dp_tensor k = T4 (B, Lk, H, d), v = T4 (B, Lk, H, d), kc = T4 (B, kl, H, d), vc = T4 (B, kl, H, d);
  dp_tensor oc = T4 (B, Lq, H, d);
  fill_random (&k, -1, 1);
  fill_random (&v, -1, 1);
  for (int64_t b = 0; b < B; b++)
    for (int64_t j = kl; j < Lk; j++)
      for (int64_t e = 0; e < H * d; e++) {
        ((float *) k.data)[(b * Lk + j) * H * d + e] = 50.0f;
        ((float *) v.data)[(b * Lk + j) * H * d + e] = 1e6f;
      }
  for (int64_t b = 0; b < B; b++) {
    memcpy ((float *) kc.data + b * kl * H * d, (float *) k.data + b * Lk * H * d, kl * H * d * sizeof (float));
    memcpy ((float *) vc.data + b * kl * H * d, (float *) v.data + b * Lk * H * d, kl * H * d * sizeof (float));
  }
  p.key_len = (int) kl;
  be->ops->attention (be, &o, &q, &k, &v, &p);
  p.key_len = 0;
  be->ops->attention (be, &oc, &q, &kc, &vc, &p);
  for (int64_t i = 0; i < dp_tensor_nelem (&o); i++)
    g_assert_cmpfloat_with_epsilon (((float *) o.data)[i], ((float *) oc.data)[i], 1e-6);

  /* Bias: 0 on key (i + h) % Lk, -1e4 on the others: exp (-1e4) is 0 in F32,
   * so each query copies exactly one chosen value row. */
  dp_tensor bias = T3 (H, Lq, Lk);
  for (int64_t h = 0; h < H; h++)
    for (int64_t i = 0; i < Lq; i++)
      for (int64_t j = 0; j < Lk; j++)
        ((float *) bias.data)[(h * Lq + i) * Lk + j] = j == (i + h) % Lk ? 0.0f : -1e4f;
  fill_random (&v, -1, 1);
  fill_random (&k, -1, 1);
  p.bias = &bias;
  be->ops->attention (be, &o, &q, &k, &v, &p);
  for (int64_t b = 0; b < B; b++)
    for (int64_t i = 0; i < Lq; i++)
      for (int64_t h = 0; h < H; h++)
        for (int64_t c = 0; c < d; c++)
          g_assert_cmpfloat_with_epsilon (((float *) o.data)[((b * Lq + i) * H + h) * d + c],
                                          ((float *) v.data)[((b * Lk + (i + h) % Lk) * H + h) * d + c], 1e-6);

  /* Large scores must not overflow: max subtraction keeps exp finite. */
  for (int64_t i = 0; i < dp_tensor_nelem (&q); i++)
    ((float *) q.data)[i] = 1e4f;
  dp_tensor k2 = T4 (B, 2, H, d), v2 = T4 (B, 2, H, d);
  for (int64_t i = 0; i < dp_tensor_nelem (&k2); i++) {
    ((float *) k2.data)[i] = 1.0f + (float) ((i / (H * d)) % 2) * 0.01f; /* key 1 scores 1% higher */
    ((float *) v2.data)[i] = (float) ((i / (H * d)) % 2);                 /* value = key index */
  }
  p.bias = NULL;
  p.scale = 1.0f;
  be->ops->attention (be, &o, &q, &k2, &v2, &p);
  /* score gap 1e4 * 4 * 0.01 = 400: all weight on key 1 */
  for (int64_t i = 0; i < dp_tensor_nelem (&o); i++)
    g_assert_cmpfloat (((float *) o.data)[i], ==, 1.0f);

  dp_tensor *all[] = { &q, &k1, &v1, &o, &k, &v, &kc, &vc, &oc, &bias, &k2, &v2 };
  for (guint i = 0; i < G_N_ELEMENTS (all); i++)
    dp_tensor_free (all[i]);
  backend_done (be);
}

/* ------------------------------------------------------------ conv3d */

static void
conv3d_ref (double *y, const dp_tensor *x, const dp_tensor *w, const dp_tensor *bias, const dp_conv3d_params *p,
            int64_t To, int64_t Ho, int64_t Wo)
{
  const int64_t Cin = x->shape[0], T = x->shape[1], H = x->shape[2], W = x->shape[3];
  const int64_t Cout = w->shape[0], kt = w->shape[2], kh = w->shape[3], kw = w->shape[4];
  const float *xd = x->data, *wd = w->data;
  for (int64_t co = 0; co < Cout; co++)
    for (int64_t to = 0; to < To; to++)
      for (int64_t ho = 0; ho < Ho; ho++)
        for (int64_t wo = 0; wo < Wo; wo++) {
          double s = bias ? ((float *) bias->data)[co] : 0.0;
          for (int64_t ci = 0; ci < Cin; ci++)
            for (int64_t a = 0; a < kt; a++) {
              int64_t ti = to * p->stride_t - p->pad_t_front + a;
              if (ti < 0 || ti >= T)
                continue;
              for (int64_t bh = 0; bh < kh; bh++) {
                int64_t hi = ho * p->stride_h - p->pad_h + bh;
                if (hi < 0 || hi >= H)
                  continue;
                for (int64_t c = 0; c < kw; c++) {
                  int64_t wi = wo * p->stride_w - p->pad_w + c;
                  if (wi < 0 || wi >= W)
                    continue;
                  s += (double) xd[((ci * T + ti) * H + hi) * W + wi] *
                       wd[(((co * Cin + ci) * kt + a) * kh + bh) * kw + c];
                }
              }
            }
          y[((co * To + to) * Ho + ho) * Wo + wo] = s;
        }
}

static void
test_conv3d_random (void)
{
  rng_seed (9);
  /* Cin, T, H, W, Cout, kt, kh, kw, stride t/h/w, pad front/back/h/w, bias */
  const int64_t cases[][16] = {
    { 2, 3, 5, 4, 3, 3, 3, 3, 1, 1, 1, 2, 0, 1, 1, 1 },   /* causal 3x3x3 (Wan VAE) */
    { 3, 4, 6, 7, 2, 1, 3, 3, 1, 2, 2, 0, 0, 0, 0, 1 },   /* spatial downsample, stride 2 */
    { 4, 5, 3, 3, 4, 3, 1, 1, 2, 1, 1, 0, 0, 0, 0, 0 },   /* time_conv, stride 2 in t */
    { 5, 2, 3, 5, 6, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1 },   /* pointwise fast path */
    { 2, 3, 4, 4, 2, 2, 2, 3, 1, 2, 1, 1, 1, 0, 2, 0 },   /* asymmetric t pad, odd kernel */
    { 2, 1, 5, 5, 3, 3, 3, 3, 1, 1, 1, 2, 0, 1, 1, 1 },   /* one frame, causal */
    /* im2col (stride 2 in t): col matrix K * P = 1728 * 4900 floats > the
     * 8 Mi-float budget, so the output positions are processed in several chunks */
    { 64, 3, 70, 70, 4, 3, 3, 3, 2, 1, 1, 2, 0, 1, 1, 1 },
    /* direct (stride 1, <= 96 output channels): channel blocks of unequal
     * size, rows not a multiple of the 16-pixel vector, t padding both sides */
    { 5, 4, 9, 37, 25, 3, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1 },
    { 3, 2, 3, 3, 96, 1, 3, 3, 1, 1, 1, 0, 0, 1, 1, 1 },   /* 1-pixel-wide row parts, upsampler conv */
    { 3, 2, 3, 4, 97, 1, 3, 3, 1, 1, 1, 0, 0, 1, 1, 0 },   /* above the limit: im2col at stride 1 */
    { 2, 3, 6, 5, 3, 3, 1, 1, 1, 1, 1, 2, 0, 0, 0, 1 },    /* time_conv at stride 1, no spatial pad */
    /* direct, rows of 64 x 3 x 72 floats: a task's 4 MiB slab holds 75 of
     * them, so the 100 output rows take two tasks per frame */
    { 64, 3, 100, 70, 4, 3, 3, 3, 1, 1, 1, 2, 0, 1, 1, 1 },
  };
  for (guint c = 0; c < G_N_ELEMENTS (cases); c++) {
    const int64_t *v = cases[c];
    const int64_t Cin = v[0], T = v[1], H = v[2], W = v[3], Cout = v[4], kt = v[5], kh = v[6], kw = v[7];
    dp_conv3d_params p = { (int) v[8], (int) v[9], (int) v[10], (int) v[11], (int) v[12], (int) v[13], (int) v[14] };
    const int64_t To = (T + p.pad_t_front + p.pad_t_back - kt) / p.stride_t + 1;
    const int64_t Ho = (H + 2 * p.pad_h - kh) / p.stride_h + 1, Wo = (W + 2 * p.pad_w - kw) / p.stride_w + 1;
    dp_backend *be = backend_new ();
    dp_tensor x = T4 (Cin, T, H, W), w = T5 (Cout, Cin, kt, kh, kw), b = T1 (Cout), y = T4 (Cout, To, Ho, Wo);
    fill_random (&x, -1, 1);
    fill_random (&w, -1, 1);
    fill_random (&b, -1, 1);
    double *ref = g_new (double, Cout * To * Ho * Wo);
    conv3d_ref (ref, &x, &w, v[15] ? &b : NULL, &p, To, Ho, Wo);
    be->ops->conv3d (be, &y, &x, &w, v[15] ? &b : NULL, &p);
    assert_close (&y, ref, 1e-5, "conv3d");
    g_free (ref);
    dp_tensor_free (&x);
    dp_tensor_free (&w);
    dp_tensor_free (&b);
    dp_tensor_free (&y);
    backend_done (be);
  }
}

static void
test_conv3d_hand (void)
{
  dp_backend *be = backend_new ();
  /* 1 channel, frames [1 2 3] and [4 5 6] (H = 1), kernel kt = 2, kw = 2
   * with taps t0: [1 10], t1: [100 1000], causal pad_t_front = 1, bias 0.5.
   *   out frame 0 = (pad, f0):  f0 * t1:  100*1 + 1000*2 = 2100, 100*2 + 1000*3 = 3200
   *   out frame 1 = (f0, f1):   (1*1 + 10*2) + (100*4 + 1000*5) = 5421,
   *                             (1*2 + 10*3) + (100*5 + 1000*6) = 6532
   * plus 0.5 each. */
  dp_tensor x = T4 (1, 2, 1, 3), w = T5 (1, 1, 2, 1, 2), b = T1 (1), y = T4 (1, 2, 1, 2);
  fill_values (&x, (float[]){ 1, 2, 3, 4, 5, 6 });
  fill_values (&w, (float[]){ 1, 10, 100, 1000 });
  fill_values (&b, (float[]){ 0.5f });
  dp_conv3d_params p = { 1, 1, 1, 1, 0, 0, 0 };
  be->ops->conv3d (be, &y, &x, &w, &b, &p);
  const float e1[4] = { 2100.5f, 3200.5f, 5421.5f, 6532.5f };
  for (int i = 0; i < 4; i++)
    g_assert_cmpfloat (((float *) y.data)[i], ==, e1[i]);

  /* Stride 2 with zero padding 1 in W: row [1 2 3] padded [0 1 2 3 0],
   * Wo = (3 + 2 - 2) / 2 + 1 = 2, taps [1 10]:
   *   window [0 1] -> 0*1 + 1*10 = 10;  window [2 3] -> 2*1 + 3*10 = 32. */
  dp_tensor x2 = T4 (1, 1, 1, 3), w2 = T5 (1, 1, 1, 1, 2), y2 = T4 (1, 1, 1, 2);
  fill_values (&x2, (float[]){ 1, 2, 3 });
  fill_values (&w2, (float[]){ 1, 10 });
  dp_conv3d_params p2 = { 1, 1, 2, 0, 0, 0, 1 };
  be->ops->conv3d (be, &y2, &x2, &w2, NULL, &p2);
  g_assert_cmpfloat (((float *) y2.data)[0], ==, 10.0f);
  g_assert_cmpfloat (((float *) y2.data)[1], ==, 32.0f);

  dp_tensor *all[] = { &x, &w, &b, &y, &x2, &w2, &y2 };
  for (guint i = 0; i < G_N_ELEMENTS (all); i++)
    dp_tensor_free (all[i]);
  backend_done (be);
}

/* ------------------------------------------------------------ element-wise */

static void
test_elementwise (void)
{
  rng_seed (10);
  dp_backend *be = backend_new ();
  const int64_t sizes[] = { 1, 37, 70001 };
  for (guint c = 0; c < G_N_ELEMENTS (sizes); c++) {
    const int64_t n = sizes[c];
    dp_tensor a = T1 (n), b = T1 (n), y = T1 (n);
    fill_random (&a, -4, 4);
    fill_random (&b, -4, 4);
    const float *ad = a.data, *bd = b.data;
    double *ref = g_new (double, n);

    for (int64_t i = 0; i < n; i++)
      ref[i] = (double) ad[i] + bd[i];
    be->ops->add (be, &y, &a, &b);
    assert_close (&y, ref, 1e-7, "add");
    for (int64_t i = 0; i < n; i++)
      ref[i] = (double) ad[i] * bd[i];
    be->ops->mul (be, &y, &a, &b);
    assert_close (&y, ref, 1e-7, "mul");
    for (int64_t i = 0; i < n; i++)
      ref[i] = 0.75 * ad[i] - 1.5 * bd[i];
    be->ops->axpby (be, &y, 0.75f, &a, -1.5f, &b);
    assert_close (&y, ref, 1e-6, "axpby");
    /* aliasing: y = a, then y = b */
    for (int64_t i = 0; i < n; i++)
      ref[i] = 2.0 * ad[i] + 3.0 * bd[i];
    be->ops->axpby (be, &a, 2.0f, &a, 3.0f, &b);
    assert_close (&a, ref, 1e-6, "axpby y = a");
    for (int64_t i = 0; i < n; i++)
      ref[i] = ref[i] + bd[i];
    be->ops->add (be, &b, &a, &b);
    assert_close (&b, ref, 1e-6, "add y = b");
    g_free (ref);
    dp_tensor_free (&a);
    dp_tensor_free (&b);
    dp_tensor_free (&y);
  }

  /* gated_add over [B, L, D] with gate [B, D], without gate, and a 2-D
   * [L, D] x with gate [1, D] */
  const int64_t B = 3, L = 5, D = 7;
  dp_tensor x = T3 (B, L, D), yy = T3 (B, L, D), gate = T2 (B, D);
  fill_random (&x, -1, 1);
  fill_random (&yy, -1, 1);
  fill_random (&gate, -2, 2);
  double *ref = g_new (double, B * L * D);
  const float *xd = x.data, *yd = yy.data, *gd = gate.data;
  for (int64_t b = 0; b < B; b++)
    for (int64_t l = 0; l < L; l++)
      for (int64_t i = 0; i < D; i++) {
        int64_t e = (b * L + l) * D + i;
        ref[e] = xd[e] + (double) gd[b * D + i] * yd[e] + yd[e];
      }
  be->ops->gated_add (be, &x, &yy, &gate);
  be->ops->gated_add (be, &x, &yy, NULL);
  assert_close (&x, ref, 1e-6, "gated_add");
  dp_tensor x2 = T2 (L, D), g1 = T2 (1, D);
  dp_tensor y2 = dp_tensor_slice0 (&yy, 0, 1); /* [1, L, D] */
  fill_random (&x2, -1, 1);
  fill_random (&g1, -1, 1);
  for (int64_t l = 0; l < L; l++)
    for (int64_t i = 0; i < D; i++)
      ref[l * D + i] = ((float *) x2.data)[l * D + i] + (double) ((float *) g1.data)[i] * yd[l * D + i];
  be->ops->gated_add (be, &x2, &y2, &g1);
  assert_close (&x2, ref, 1e-6, "gated_add 2-D");
  g_free (ref);
  dp_tensor_free (&x);
  dp_tensor_free (&yy);
  dp_tensor_free (&gate);
  dp_tensor_free (&x2);
  dp_tensor_free (&g1);
  backend_done (be);
}

static void
test_upsample (void)
{
  rng_seed (11);
  dp_backend *be = backend_new ();
  const int64_t C = 3, T = 2, H = 5, W = 7;
  dp_tensor x = T4 (C, T, H, W), y = T4 (C, T, 2 * H, 2 * W);
  fill_random (&x, -1, 1);
  be->ops->upsample_nearest2x (be, &y, &x);
  const float *xd = x.data, *yd = y.data;
  for (int64_t p = 0; p < C * T; p++)
    for (int64_t i = 0; i < 2 * H; i++)
      for (int64_t j = 0; j < 2 * W; j++)
        g_assert_cmpfloat (yd[(p * 2 * H + i) * 2 * W + j], ==, xd[(p * H + i / 2) * W + j / 2]);
  dp_tensor_free (&x);
  dp_tensor_free (&y);
  backend_done (be);
}

/* ------------------------------------------------------------ patches */

static void
test_patchify (void)
{
  rng_seed (12);
  dp_backend *be = backend_new ();
  /* Patch embedding two ways: Conv3d with kernel = stride = patch (diffusers'
   * patch_embedding) and linear on patchify's rows with the flattened
   * weight.  Token t of the linear is position t of the conv output
   * (flatten(2).transpose(1, 2) in diffusers). */
  const int64_t C = 3, F = 4, H = 6, W = 4, Cout = 5;
  const int pt = 2, ph = 3, pw = 2;
  const int64_t Fp = F / pt, Hp = H / ph, Wp = W / pw, ntok = Fp * Hp * Wp, width = C * pt * ph * pw;
  dp_tensor x = T4 (C, F, H, W), w = T5 (Cout, C, pt, ph, pw), b = T1 (Cout);
  dp_tensor conv = T4 (Cout, Fp, Hp, Wp), tokens = T2 (ntok, width), lin = T2 (ntok, Cout);
  fill_random (&x, -1, 1);
  fill_random (&w, -1, 1);
  fill_random (&b, -1, 1);
  dp_conv3d_params p = { pt, ph, pw, 0, 0, 0, 0 };
  be->ops->conv3d (be, &conv, &x, &w, &b, &p);
  be->ops->patchify (be, &tokens, &x, pt, ph, pw);
  dp_tensor w2 = dp_tensor_view (w.data, DP_F32, 2, (int64_t[]){ Cout, width });
  be->ops->linear (be, &lin, &tokens, &w2, &b, DP_ACT_NONE);
  for (int64_t t = 0; t < ntok; t++)
    for (int64_t co = 0; co < Cout; co++)
      g_assert_cmpfloat_with_epsilon (((float *) lin.data)[t * Cout + co], ((float *) conv.data)[co * ntok + t], 1e-5);

  /* unpatchify as diffusers: tokens [Fp, Hp, Wp, pt, ph, pw, C] permuted to
   * [C, Fp, pt, Hp, ph, Wp, pw] (permute(0, 7, 1, 4, 2, 5, 3, 6) without batch). */
  dp_tensor head = T2 (ntok, width), video = T4 (C, F, H, W);
  fill_random (&head, -1, 1);
  be->ops->unpatchify (be, &video, &head, pt, ph, pw);
  const float *hd = head.data, *vd = video.data;
  for (int64_t fp = 0; fp < Fp; fp++)
    for (int64_t hp = 0; hp < Hp; hp++)
      for (int64_t wp = 0; wp < Wp; wp++)
        for (int64_t a = 0; a < pt; a++)
          for (int64_t bb = 0; bb < ph; bb++)
            for (int64_t cc = 0; cc < pw; cc++)
              for (int64_t c = 0; c < C; c++) {
                float src = hd[(((((fp * Hp + hp) * Wp + wp) * pt + a) * ph + bb) * pw + cc) * C + c];
                float dst = vd[((c * F + fp * pt + a) * H + hp * ph + bb) * W + wp * pw + cc];
                g_assert_cmpfloat (src, ==, dst);
              }

  /* With one channel both column orders coincide: a round trip is exact. */
  dp_tensor x1 = T4 (1, F, H, W), t1 = T2 (ntok, pt * ph * pw), back = T4 (1, F, H, W);
  fill_random (&x1, -1, 1);
  be->ops->patchify (be, &t1, &x1, pt, ph, pw);
  be->ops->unpatchify (be, &back, &t1, pt, ph, pw);
  g_assert_cmpmem (back.data, dp_tensor_nbytes (&back), x1.data, dp_tensor_nbytes (&x1));

  dp_tensor *all[] = { &x, &w, &b, &conv, &tokens, &lin, &head, &video, &x1, &t1, &back };
  for (guint i = 0; i < G_N_ELEMENTS (all); i++)
    dp_tensor_free (all[i]);
  backend_done (be);
}

/* ------------------------------------------------------------ errors */

/* The backend holds a sticky error with this code; returns after clearing
 * it so the next case starts healthy. */
static void
expect_error (dp_backend *be, dp_error_code code, const char *what)
{
  GError *error = NULL;
  if (be->ops->sync (be, &error))
    g_error ("%s: no error was recorded", what);
  g_assert_error (error, DP_ERROR, (int) code);
  g_test_message ("%s: %s", what, error->message);
  g_clear_error (&error);
  g_clear_error (&be->error);
}

static void
test_errors (void)
{
  dp_backend *be = backend_new ();
  dp_tensor a = T2 (3, 4), b = T2 (3, 4), c5 = T2 (3, 5), w = T2 (6, 4), w5 = T2 (6, 5), y6 = T2 (3, 6);
  dp_tensor v4 = T1 (4), v5 = T1 (5);
  dp_tensor h = dp_tensor_new_host (DP_F16, 2, (int64_t[]){ 3, 4 });

  /* sticky: a bad linear, then a valid add leaves its output untouched and
   * the first error stays */
  be->ops->fill (be, &b, 7.0f);
  be->ops->linear (be, &y6, &a, &w5, NULL, DP_ACT_NONE);
  be->ops->add (be, &b, &a, &a);
  be->ops->rms_norm (be, &b, &a, &v5, 1e-6f); /* would also fail */
  for (int i = 0; i < 12; i++)
    g_assert_cmpfloat (((float *) b.data)[i], ==, 7.0f);
  GError *error = NULL;
  g_assert_false (dp_backend_check (be, &error));
  g_assert_error (error, DP_ERROR, DP_ERROR_SHAPE);
  g_assert_nonnull (strstr (error->message, "linear"));
  g_clear_error (&error);
  g_clear_error (&be->error);

  be->ops->linear (be, &y6, &a, &w, &v5, DP_ACT_NONE);
  expect_error (be, DP_ERROR_SHAPE, "linear bias");
  be->ops->linear (be, &c5, &a, &w, NULL, DP_ACT_NONE);
  expect_error (be, DP_ERROR_SHAPE, "linear y");
  be->ops->linear (be, &y6, &a, &w, NULL, (dp_act) 42);
  expect_error (be, DP_ERROR_INVALID, "linear act");
  be->ops->linear (be, &y6, &h, &w, NULL, DP_ACT_NONE);
  expect_error (be, DP_ERROR_UNSUPPORTED, "linear F16");
  be->ops->layer_norm (be, &c5, &a, NULL, NULL, 1e-6f);
  expect_error (be, DP_ERROR_SHAPE, "layer_norm y");
  be->ops->layer_norm (be, &b, &a, &v5, NULL, 1e-6f);
  expect_error (be, DP_ERROR_SHAPE, "layer_norm w");
  be->ops->rms_norm (be, &b, &a, &v5, 1e-6f);
  expect_error (be, DP_ERROR_SHAPE, "rms_norm w");
  dp_tensor x3 = T3 (2, 3, 4), sh = T2 (2, 4), sc5 = T2 (2, 5);
  be->ops->layer_norm_modulate (be, &x3, &x3, &sh, &sc5, 1e-6f);
  expect_error (be, DP_ERROR_SHAPE, "layer_norm_modulate scale");
  be->ops->gated_add (be, &x3, &x3, &sc5);
  expect_error (be, DP_ERROR_SHAPE, "gated_add gate");
  be->ops->add (be, &a, &b, &c5);
  expect_error (be, DP_ERROR_SHAPE, "add");
  be->ops->mul (be, &c5, &b, &a);
  expect_error (be, DP_ERROR_SHAPE, "mul");
  be->ops->axpby (be, &a, 1, &b, 1, &c5);
  expect_error (be, DP_ERROR_SHAPE, "axpby");
  be->ops->gelu_tanh (be, &c5, &a);
  expect_error (be, DP_ERROR_SHAPE, "gelu_tanh");
  be->ops->silu (be, &a, &v4);
  expect_error (be, DP_ERROR_SHAPE, "silu");

  dp_tensor q = T4 (1, 3, 2, 4), k = T4 (1, 5, 2, 4), kbad = T4 (1, 5, 2, 6), o = T4 (1, 3, 2, 4);
  dp_tensor bias_bad = T3 (2, 3, 4);
  dp_attn_params ap = { .scale = 1, .key_len = 0, .bias = NULL };
  be->ops->attention (be, &o, &q, &kbad, &kbad, &ap);
  expect_error (be, DP_ERROR_SHAPE, "attention d");
  ap.bias = &bias_bad;
  be->ops->attention (be, &o, &q, &k, &k, &ap);
  expect_error (be, DP_ERROR_SHAPE, "attention bias");
  ap.bias = NULL;
  ap.key_len = 6;
  be->ops->attention (be, &o, &q, &k, &k, &ap);
  expect_error (be, DP_ERROR_INVALID, "attention key_len");

  dp_tensor vid = T4 (1, 3, 2, 4);
  int pos[3] = { 0, 1, 2 };
  dp_rope_grid g = { .frames = 3, .height = 2, .width = 2, .frame_pos = pos, .theta = 10000.0f };
  be->ops->rope_3d (be, &q, &g); /* L = 3 != 3 * 2 * 2 */
  expect_error (be, DP_ERROR_SHAPE, "rope_3d L");

  dp_tensor cx = T4 (2, 3, 4, 4), cw = T5 (3, 2, 3, 3, 3), cwbad = T5 (3, 1, 3, 3, 3), cy = T4 (3, 3, 4, 4);
  dp_tensor cybad = T4 (3, 3, 4, 5);
  dp_conv3d_params cp = { 1, 1, 1, 2, 0, 1, 1 };
  be->ops->conv3d (be, &cy, &cx, &cw, NULL, &cp);
  GError *none = NULL;
  g_assert_true (dp_backend_check (be, &none)); /* the valid call works */
  be->ops->conv3d (be, &cybad, &cx, &cw, NULL, &cp);
  expect_error (be, DP_ERROR_SHAPE, "conv3d y");
  be->ops->conv3d (be, &cy, &cx, &cwbad, NULL, &cp);
  expect_error (be, DP_ERROR_SHAPE, "conv3d Cin");
  be->ops->conv3d (be, &cy, &cx, &cw, &v4, &cp);
  expect_error (be, DP_ERROR_SHAPE, "conv3d bias");
  cp.stride_h = 0;
  be->ops->conv3d (be, &cy, &cx, &cw, NULL, &cp);
  expect_error (be, DP_ERROR_INVALID, "conv3d stride");

  be->ops->upsample_nearest2x (be, &cy, &cx);
  expect_error (be, DP_ERROR_SHAPE, "upsample");
  dp_tensor tok = T2 (4, 2);
  be->ops->patchify (be, &tok, &vid, 1, 2, 2); /* tokens should be [6, 4] */
  expect_error (be, DP_ERROR_SHAPE, "patchify");
  be->ops->unpatchify (be, &vid, &tok, 1, 3, 2); /* H = 2 not divisible by 3 */
  expect_error (be, DP_ERROR_SHAPE, "unpatchify");

  dp_tensor *all[] = { &a, &b, &c5, &w, &w5, &y6, &v4, &v5, &h, &x3, &sh, &sc5, &q, &k, &kbad, &o, &bias_bad,
                       &vid, &cx, &cw, &cwbad, &cy, &cybad, &tok };
  for (guint i = 0; i < G_N_ELEMENTS (all); i++)
    dp_tensor_free (all[i]);
  backend_done (be);
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/cpu_ops/linear", test_linear);
  g_test_add_func ("/cpu_ops/layer_norm", test_layer_norm);
  g_test_add_func ("/cpu_ops/layer_norm_modulate", test_layer_norm_modulate);
  g_test_add_func ("/cpu_ops/rms_norm", test_rms_norm);
  g_test_add_func ("/cpu_ops/rope_hand", test_rope_hand);
  g_test_add_func ("/cpu_ops/rope_random", test_rope_random);
  g_test_add_func ("/cpu_ops/activations", test_activations);
  g_test_add_func ("/cpu_ops/attention_random", test_attention_random);
  g_test_add_func ("/cpu_ops/attention_hand", test_attention_hand);
  g_test_add_func ("/cpu_ops/conv3d_random", test_conv3d_random);
  g_test_add_func ("/cpu_ops/conv3d_hand", test_conv3d_hand);
  g_test_add_func ("/cpu_ops/elementwise", test_elementwise);
  g_test_add_func ("/cpu_ops/upsample", test_upsample);
  g_test_add_func ("/cpu_ops/patchify", test_patchify);
  g_test_add_func ("/cpu_ops/errors", test_errors);
  return g_test_run ();
}
