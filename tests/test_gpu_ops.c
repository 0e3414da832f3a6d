/* GPU op tests: every operation of the CUDA backend against the CPU backend
 * on fresh random inputs.
 *
 * Inputs are drawn in F32 and rounded to BF16 first whenever the GPU reads
 * them as BF16, so both backends compute the same function of the same
 * numbers; what differs is the GPU's arithmetic (BF16 tensor cores with FP32
 * accumulation) and its output rounding.  Tolerances, relative L2 error
 * ||gpu - cpu|| / ||cpu||:
 *   - BF16 outputs: 1e-2 (one BF16 rounding is 2^-9 = 2e-3 relative; the
 *     attention probabilities are rounded to BF16 as well);
 *   - F32 outputs of F32 arithmetic (norms, element-wise): 1e-5;
 *   - F32 outputs of BF16 GEMMs on BF16-exact inputs: 1e-4 (FP32
 *     accumulation order only), 3e-3 with the GELU epilogue (cuBLASLt's
 *     GELU may differ from the CPU's tanh form in the last bits).
 * Outputs are poisoned with NaN before each GPU run, and any non-finite
 * output fails the test, so an element the GPU did not write never passes.
 * Without a CUDA device the program exits 77 (meson's code for a skipped test). */
#include <math.h>
#include <string.h>

#include "dualparal/backend.h"
#include "dualparal/safetensors.h"
#include "dualparal/wan_dit.h"
#include "cuda_backend.h"

static gboolean have_gpu;
static GRand *rng;

#define NEED_GPU()                                  \
  do {                                              \
    if (!have_gpu) {                                \
      g_test_skip ("no CUDA device");               \
      return;                                       \
    }                                               \
  } while (0)

typedef struct {
  dp_backend *gpu, *cpu;
} fixture;

static void
fx_init (fixture *f)
{
  GError *err = NULL;
  f->gpu = dp_backend_new ("cuda", &err);
  g_assert_no_error (err);
  f->cpu = dp_backend_new ("cpu", &err);
  g_assert_no_error (err);
}

static void
fx_done (fixture *f)
{
  GError *err = NULL;
  gboolean ok = f->gpu->ops->sync (f->gpu, &err);
  g_assert_no_error (err);
  g_assert_true (ok);
  g_assert_true (dp_backend_check (f->cpu, &err));
  g_assert_no_error (err);
  dp_backend_free (f->gpu);
  dp_backend_free (f->cpu);
}

static float
round_to (dp_dtype dt, float v)
{
  if (dt == DP_BF16)
    return dp_bf16_to_f32 (dp_f32_to_bf16 (v));
  if (dt == DP_F16)
    return dp_f16_to_f32 (dp_f32_to_f16 (v));
  return v;
}

/* n uniform values in [lo, hi), exactly representable in dtype dt. */
static float *
rand_vec (size_t n, float lo, float hi, dp_dtype dt)
{
  float *v = g_new (float, MAX (n, 1));
  for (size_t i = 0; i < n; i++)
    v[i] = round_to (dt, (float) g_rand_double_range (rng, lo, hi));
  return v;
}

static int64_t
count (int ndim, const int64_t *shape)
{
  int64_t n = 1;
  for (int i = 0; i < ndim; i++)
    n *= shape[i];
  return n;
}

/* A GPU tensor of dtype dt holding data (F32 host values). */
static dp_tensor
gpu_tensor (dp_backend *be, dp_dtype dt, int ndim, const int64_t *shape, const float *data)
{
  dp_tensor t = dp_backend_tensor_new (be, dt, ndim, shape);
  g_assert_nonnull (t.data);
  if (data) {
    dp_tensor h = dp_tensor_view ((void *) data, DP_F32, ndim, shape);
    be->ops->to_device (be, &t, &h);
  }
  return t;
}

/* A GPU output tensor, poisoned with NaN. */
static dp_tensor
gpu_out (dp_backend *be, dp_dtype dt, int ndim, const int64_t *shape)
{
  dp_tensor t = dp_backend_tensor_new (be, dt, ndim, shape);
  g_assert_nonnull (t.data);
  be->ops->fill (be, &t, NAN);
  return t;
}

/* A CPU (F32 host) tensor: a copy of data, or NaN-filled when data is NULL. */
static dp_tensor
cpu_tensor (int ndim, const int64_t *shape, const float *data)
{
  dp_tensor t = dp_tensor_new_host (DP_F32, ndim, shape);
  int64_t n = dp_tensor_nelem (&t);
  float *d = t.data;
  for (int64_t i = 0; i < n; i++)
    d[i] = data ? data[i] : NAN;
  return t;
}

/* Contents of a GPU tensor as F32 (syncs; asserts no backend error). */
static float *
download (dp_backend *be, const dp_tensor *t)
{
  int64_t n = dp_tensor_nelem (t);
  float *d = g_new (float, MAX (n, 1));
  dp_tensor h = dp_tensor_view (d, DP_F32, t->ndim, t->shape);
  be->ops->to_host (be, &h, t);
  GError *err = NULL;
  gboolean ok = be->ops->sync (be, &err);
  g_assert_no_error (err);
  g_assert_true (ok);
  return d;
}

/* Relative L2 error of got against ref; fails on any non-finite value. */
static void
check_close (const char *what, const float *got, const float *ref, int64_t n, double tol)
{
  double num = 0.0, den = 0.0;
  for (int64_t i = 0; i < n; i++) {
    if (!isfinite (got[i]) || !isfinite (ref[i]))
      g_error ("%s: element %" G_GINT64_FORMAT " is %g (reference %g)", what, i, got[i], ref[i]);
    double e = (double) got[i] - ref[i];
    num += e * e;
    den += (double) ref[i] * ref[i];
  }
  double rel = den > 0 ? sqrt (num / den) : sqrt (num);
  g_test_message ("%s: relative L2 error %.3g (tolerance %.1g, %" G_GINT64_FORMAT " elements)", what, rel, tol, n);
  if (g_test_verbose () || rel > tol)
    g_printerr ("  %-58s rel L2 %.3e (tol %.0e)\n", what, rel, tol);
  g_assert_cmpfloat (rel, <=, tol);
}

static void
check_gpu (fixture *f, const char *what, const dp_tensor *g, const dp_tensor *c, double tol)
{
  float *got = download (f->gpu, g);
  check_close (what, got, c->data, dp_tensor_nelem (c), tol);
  g_free (got);
}

static double
tol_for (dp_dtype dt)
{
  return dt == DP_F32 ? 1e-5 : 1e-2;
}

/* ---- memory and conversions ---------------------------------------------- */

static void
test_copy (void)
{
  NEED_GPU ();
  fixture f;
  fx_init (&f);
  const int64_t shape[2] = { 37, 129 };
  const int64_t n = shape[0] * shape[1];
  float *src = rand_vec (n, -300.0f, 300.0f, DP_F32);
  const dp_dtype dts[3] = { DP_F32, DP_BF16, DP_F16 };
  for (int a = 0; a < 3; a++)
    for (int b = 0; b < 3; b++) {
      /* host F32 -> device dts[a] (host conversion) -> device dts[b]
       * (device conversion) -> host F32: must equal the host conversions. */
      dp_tensor ta = gpu_tensor (f.gpu, dts[a], 2, shape, src);
      dp_tensor tb = gpu_out (f.gpu, dts[b], 2, shape);
      f.gpu->ops->copy (f.gpu, &tb, &ta);
      float *got = download (f.gpu, &tb);
      for (int64_t i = 0; i < n; i++) {
        float want = round_to (dts[b], round_to (dts[a], src[i]));
        if (got[i] != want)
          g_error ("copy %s -> %s: element %" G_GINT64_FORMAT ": %.9g, expected %.9g", dp_dtype_name (dts[a]),
                   dp_dtype_name (dts[b]), i, got[i], want);
      }
      /* to_host straight into a narrow host dtype. */
      uint16_t *h16 = g_new (uint16_t, n);
      dp_tensor hb = dp_tensor_view (h16, DP_BF16, 2, shape);
      f.gpu->ops->to_host (f.gpu, &hb, &ta);
      g_assert_true (f.gpu->ops->sync (f.gpu, NULL));
      for (int64_t i = 0; i < n; i++)
        g_assert_cmpfloat (dp_bf16_to_f32 (h16[i]), ==, round_to (DP_BF16, round_to (dts[a], src[i])));
      g_free (h16);
      g_free (got);
      dp_backend_tensor_free (f.gpu, &ta);
      dp_backend_tensor_free (f.gpu, &tb);
    }
  /* fill */
  dp_tensor t = gpu_out (f.gpu, DP_BF16, 2, shape);
  f.gpu->ops->fill (f.gpu, &t, 1.5f);
  float *got = download (f.gpu, &t);
  for (int64_t i = 0; i < n; i++)
    g_assert_cmpfloat (got[i], ==, 1.5f);
  g_free (got);
  dp_backend_tensor_free (f.gpu, &t);
  g_free (src);
  fx_done (&f);
}

/* ---- linear --------------------------------------------------------------- */

static void
run_linear (fixture *f, int64_t M, int64_t K, int64_t N, dp_dtype xdt, dp_dtype ydt, int bias_kind, dp_act act)
{
  const int64_t xs[2] = { M, K }, ws[2] = { N, K }, bs[1] = { N }, ys[2] = { M, N };
  float *x = rand_vec (M * K, -1.0f, 1.0f, DP_BF16);
  float *w = rand_vec (N * K, -1.0f / sqrtf (K), 1.0f / sqrtf (K), DP_BF16);
  dp_dtype bdt = bias_kind == 1 ? DP_F32 : DP_BF16;
  float *b = rand_vec (N, -0.5f, 0.5f, bias_kind == 2 ? DP_BF16 : DP_F32);
  if (ydt == DP_BF16 && bdt == DP_F32)
    for (int64_t i = 0; i < N; i++) /* an F32 bias goes through a BF16 output: compare on that */
      b[i] = round_to (DP_BF16, b[i]);

  dp_tensor cx = cpu_tensor (2, xs, x), cw = cpu_tensor (2, ws, w), cb = cpu_tensor (1, bs, b);
  dp_tensor cy = cpu_tensor (2, ys, NULL);
  f->cpu->ops->linear (f->cpu, &cy, &cx, &cw, bias_kind ? &cb : NULL, act);

  dp_tensor gx = gpu_tensor (f->gpu, xdt, 2, xs, x), gw = gpu_tensor (f->gpu, DP_BF16, 2, ws, w);
  dp_tensor gb = gpu_tensor (f->gpu, bdt, 1, bs, b);
  dp_tensor gy = gpu_out (f->gpu, ydt, 2, ys);
  f->gpu->ops->linear (f->gpu, &gy, &gx, &gw, bias_kind ? &gb : NULL, act);

  char what[128];
  static const char *acts[] = { "none", "gelu_tanh", "silu" };
  static const char *biases[] = { "none", "F32", "BF16" };
  g_snprintf (what, sizeof what, "linear %" G_GINT64_FORMAT "x%" G_GINT64_FORMAT "x%" G_GINT64_FORMAT
              " x %s y %s bias %s act %s", M, K, N, dp_dtype_name (xdt), dp_dtype_name (ydt), biases[bias_kind],
              acts[act]);
  double tol = ydt == DP_F32 ? (act == DP_ACT_GELU_TANH ? 3e-3 : 1e-4) : 1e-2;
  check_gpu (f, what, &gy, &cy, tol);

  dp_tensor *all[] = { &gx, &gw, &gb, &gy };
  for (unsigned i = 0; i < G_N_ELEMENTS (all); i++)
    dp_backend_tensor_free (f->gpu, all[i]);
  dp_tensor_free (&cx);
  dp_tensor_free (&cw);
  dp_tensor_free (&cb);
  dp_tensor_free (&cy);
  g_free (x);
  g_free (w);
  g_free (b);
}

static void
test_linear (void)
{
  NEED_GPU ();
  fixture f;
  fx_init (&f);
  const dp_dtype ydts[2] = { DP_BF16, DP_F32 };
  for (int y = 0; y < 2; y++)
    for (int bk = 0; bk < 3; bk++)
      for (int act = 0; act < 3; act++)
        run_linear (&f, 77, 96, 40, DP_BF16, ydts[y], bk, (dp_act) act);
  run_linear (&f, 300, 256, 520, DP_BF16, DP_BF16, 2, DP_ACT_GELU_TANH);
  run_linear (&f, 33, 64, 48, DP_F32, DP_F32, 1, DP_ACT_NONE);  /* F32 x: converted first */
  run_linear (&f, 5, 24, 13, DP_BF16, DP_F32, 1, DP_ACT_NONE);  /* odd N: unaligned rows */
  fx_done (&f);
}

/* x += gate (a w^T + bias) in one GEMM against the CPU's linear + gated_add. */
static void
run_linear_gated_add (fixture *f, int64_t M, int64_t K, int64_t N, gboolean with_bias, gboolean with_gate,
                      dp_dtype bdt)
{
  const int64_t as[2] = { M, K }, ws[2] = { N, K }, vs[1] = { N }, gs[2] = { 1, N }, xs[2] = { M, N };
  float *a = rand_vec (M * K, -1.0f, 1.0f, DP_BF16);
  float *w = rand_vec (N * K, -1.0f / sqrtf (K), 1.0f / sqrtf (K), DP_BF16);
  float *b = rand_vec (N, -0.5f, 0.5f, bdt), *g = rand_vec (N, -1.5f, 1.5f, DP_F32);
  float *x = rand_vec (M * N, -3.0f, 3.0f, DP_F32);

  dp_tensor ca = cpu_tensor (2, as, a), cw = cpu_tensor (2, ws, w), cb = cpu_tensor (1, vs, b);
  dp_tensor cg = cpu_tensor (2, gs, g), cx = cpu_tensor (2, xs, x), cy = cpu_tensor (2, xs, NULL);
  f->cpu->ops->linear (f->cpu, &cy, &ca, &cw, with_bias ? &cb : NULL, DP_ACT_NONE);
  f->cpu->ops->gated_add (f->cpu, &cx, &cy, with_gate ? &cg : NULL);

  dp_tensor ga = gpu_tensor (f->gpu, DP_BF16, 2, as, a), gw = gpu_tensor (f->gpu, DP_BF16, 2, ws, w);
  dp_tensor gb = gpu_tensor (f->gpu, bdt, 1, vs, b), gg = gpu_tensor (f->gpu, DP_F32, 1, vs, g);
  dp_tensor gx = gpu_tensor (f->gpu, DP_F32, 2, xs, x);
  f->gpu->ops->linear_gated_add (f->gpu, &gx, &ga, &gw, with_bias ? &gb : NULL, with_gate ? &gg : NULL);

  char what[128];
  g_snprintf (what, sizeof what, "linear_gated_add %" G_GINT64_FORMAT "x%" G_GINT64_FORMAT "x%" G_GINT64_FORMAT
              "%s%s%s", M, K, N, with_bias ? " bias " : "", with_bias ? dp_dtype_name (bdt) : "",
              with_gate ? " gate" : "");
  /* The gated weights are rounded to BF16 once more: within BF16 tolerance
   * of the branch, far tighter on the sum with x. */
  check_gpu (f, what, &gx, &cx, 5e-3);

  dp_tensor *all[] = { &ga, &gw, &gb, &gg, &gx };
  for (unsigned i = 0; i < G_N_ELEMENTS (all); i++)
    dp_backend_tensor_free (f->gpu, all[i]);
  dp_tensor *host[] = { &ca, &cw, &cb, &cg, &cx, &cy };
  for (unsigned i = 0; i < G_N_ELEMENTS (host); i++)
    dp_tensor_free (host[i]);
  g_free (a);
  g_free (w);
  g_free (b);
  g_free (g);
  g_free (x);
}

static void
test_linear_gated_add (void)
{
  NEED_GPU ();
  fixture f;
  fx_init (&f);
  for (int bias = 0; bias < 2; bias++)
    for (int gate = 0; gate < 2; gate++)
      run_linear_gated_add (&f, 77, 96, 40, bias, gate, DP_F32);
  run_linear_gated_add (&f, 300, 256, 520, TRUE, TRUE, DP_BF16); /* a BF16 bias: converted */
  run_linear_gated_add (&f, 9, 33, 24, TRUE, TRUE, DP_F32);      /* odd K: one weight per thread */
  fx_done (&f);
}

/* ---- norms ---------------------------------------------------------------- */

static void
run_layer_norm (fixture *f, dp_dtype xdt, dp_dtype ydt, gboolean affine, gboolean inplace)
{
  const int64_t xs[2] = { 45, 200 }, vs[1] = { 200 };
  const int64_t n = xs[0] * xs[1];
  float *x = rand_vec (n, 2.0f, 4.0f, xdt); /* offset mean: a one-pass variance would cancel */
  float *w = rand_vec (200, 0.5f, 1.5f, DP_F32), *b = rand_vec (200, -0.5f, 0.5f, DP_F32);
  dp_tensor cx = cpu_tensor (2, xs, x), cw = cpu_tensor (1, vs, w), cb = cpu_tensor (1, vs, b);
  dp_tensor cy = cpu_tensor (2, xs, NULL);
  f->cpu->ops->layer_norm (f->cpu, &cy, &cx, affine ? &cw : NULL, affine ? &cb : NULL, 1e-6f);
  dp_tensor gx = gpu_tensor (f->gpu, xdt, 2, xs, x);
  dp_tensor gw = gpu_tensor (f->gpu, DP_F32, 1, vs, w), gb = gpu_tensor (f->gpu, DP_F32, 1, vs, b);
  dp_tensor gy = inplace ? gx : gpu_out (f->gpu, ydt, 2, xs);
  f->gpu->ops->layer_norm (f->gpu, &gy, &gx, affine ? &gw : NULL, affine ? &gb : NULL, 1e-6f);
  char what[128];
  g_snprintf (what, sizeof what, "layer_norm %s -> %s%s%s", dp_dtype_name (xdt), dp_dtype_name (gy.dtype),
              affine ? " affine" : "", inplace ? " in place" : "");
  check_gpu (f, what, &gy, &cy, tol_for (gy.dtype));
  if (!inplace)
    dp_backend_tensor_free (f->gpu, &gy);
  dp_backend_tensor_free (f->gpu, &gx);
  dp_backend_tensor_free (f->gpu, &gw);
  dp_backend_tensor_free (f->gpu, &gb);
  dp_tensor_free (&cx);
  dp_tensor_free (&cw);
  dp_tensor_free (&cb);
  dp_tensor_free (&cy);
  g_free (x);
  g_free (w);
  g_free (b);
}

static void
run_modulate (fixture *f, dp_dtype xdt, dp_dtype ydt, int64_t D)
{
  const int64_t xs[3] = { 2, 50, D }, ms[2] = { 2, D };
  const int64_t n = count (3, xs);
  float *x = rand_vec (n, -3.0f, 5.0f, xdt);
  float *sh = rand_vec (2 * D, -1.0f, 1.0f, DP_F32), *sc = rand_vec (2 * D, -0.5f, 0.5f, DP_F32);
  dp_tensor cx = cpu_tensor (3, xs, x), csh = cpu_tensor (2, ms, sh), csc = cpu_tensor (2, ms, sc);
  dp_tensor cy = cpu_tensor (3, xs, NULL);
  f->cpu->ops->layer_norm_modulate (f->cpu, &cy, &cx, &csh, &csc, 1e-6f);
  dp_tensor gx = gpu_tensor (f->gpu, xdt, 3, xs, x);
  dp_tensor gsh = gpu_tensor (f->gpu, DP_F32, 2, ms, sh), gsc = gpu_tensor (f->gpu, DP_F32, 2, ms, sc);
  dp_tensor gy = gpu_out (f->gpu, ydt, 3, xs);
  f->gpu->ops->layer_norm_modulate (f->gpu, &gy, &gx, &gsh, &gsc, 1e-6f);
  char what[128];
  g_snprintf (what, sizeof what, "layer_norm_modulate %s -> %s D %" G_GINT64_FORMAT, dp_dtype_name (xdt),
              dp_dtype_name (ydt), D);
  check_gpu (f, what, &gy, &cy, tol_for (ydt));
  dp_tensor *all[] = { &gx, &gsh, &gsc, &gy };
  for (unsigned i = 0; i < G_N_ELEMENTS (all); i++)
    dp_backend_tensor_free (f->gpu, all[i]);
  dp_tensor_free (&cx);
  dp_tensor_free (&csh);
  dp_tensor_free (&csc);
  dp_tensor_free (&cy);
  g_free (x);
  g_free (sh);
  g_free (sc);
}

static void
run_rms (fixture *f, dp_dtype dt, dp_dtype wdt, gboolean weight, gboolean inplace)
{
  const int64_t xs[3] = { 2, 33, 1536 }, vs[1] = { 1536 };
  const int64_t n = count (3, xs);
  float *x = rand_vec (n, -2.0f, 2.0f, dt), *w = rand_vec (1536, 0.5f, 1.5f, wdt);
  dp_tensor cx = cpu_tensor (3, xs, x), cw = cpu_tensor (1, vs, w), cy = cpu_tensor (3, xs, NULL);
  f->cpu->ops->rms_norm (f->cpu, &cy, &cx, weight ? &cw : NULL, 1e-6f);
  dp_tensor gx = gpu_tensor (f->gpu, dt, 3, xs, x), gw = gpu_tensor (f->gpu, wdt, 1, vs, w);
  dp_tensor gy = inplace ? gx : gpu_out (f->gpu, dt, 3, xs);
  f->gpu->ops->rms_norm (f->gpu, &gy, &gx, weight ? &gw : NULL, 1e-6f);
  char what[128];
  g_snprintf (what, sizeof what, "rms_norm %s%s%s%s", dp_dtype_name (dt), weight ? " weight " : "",
              weight ? dp_dtype_name (wdt) : "", inplace ? " in place" : "");
  check_gpu (f, what, &gy, &cy, tol_for (dt));
  if (!inplace)
    dp_backend_tensor_free (f->gpu, &gy);
  dp_backend_tensor_free (f->gpu, &gx);
  dp_backend_tensor_free (f->gpu, &gw);
  dp_tensor_free (&cx);
  dp_tensor_free (&cw);
  dp_tensor_free (&cy);
  g_free (x);
  g_free (w);
}

static void
test_norms (void)
{
  NEED_GPU ();
  fixture f;
  fx_init (&f);
  run_layer_norm (&f, DP_F32, DP_BF16, TRUE, FALSE);
  run_layer_norm (&f, DP_F32, DP_F32, TRUE, FALSE);
  run_layer_norm (&f, DP_BF16, DP_BF16, FALSE, FALSE);
  run_layer_norm (&f, DP_F32, DP_F32, FALSE, TRUE);
  /* D a multiple of 4 up to 6144 with F32 parameters takes the vector
   * kernel (1536: 1.3B, 5120: 14B); 30, 6148 and BF16 weights the generic. */
  run_modulate (&f, DP_F32, DP_BF16, 1536);
  run_modulate (&f, DP_F32, DP_BF16, 5120);
  run_modulate (&f, DP_F32, DP_BF16, 6148);
  run_modulate (&f, DP_F32, DP_BF16, 30);
  run_modulate (&f, DP_F32, DP_F32, 96);
  run_modulate (&f, DP_BF16, DP_BF16, 40);
  run_rms (&f, DP_BF16, DP_F32, TRUE, TRUE); /* the model's q / k norm */
  run_rms (&f, DP_BF16, DP_BF16, TRUE, TRUE);
  run_rms (&f, DP_F32, DP_F32, TRUE, FALSE);
  run_rms (&f, DP_F32, DP_F32, FALSE, TRUE);
  fx_done (&f);
}

/* ---- rope ----------------------------------------------------------------- */

static void
run_rope (fixture *f, dp_dtype dt, int d, const int *frame_pos)
{
  dp_rope_grid grid = { .frames = 3, .height = 4, .width = 5, .frame_pos = frame_pos, .theta = 10000.0f };
  const int64_t xs[4] = { 2, 60, 3, d };
  const int64_t n = count (4, xs);
  float *x = rand_vec (n, -2.0f, 2.0f, dt);
  dp_tensor cx = cpu_tensor (4, xs, x);
  f->cpu->ops->rope_3d (f->cpu, &cx, &grid);
  dp_tensor gx = gpu_tensor (f->gpu, dt, 4, xs, x);
  f->gpu->ops->rope_3d (f->gpu, &gx, &grid);
  char what[128];
  g_snprintf (what, sizeof what, "rope_3d %s d %d frames at %d", dp_dtype_name (dt), d, frame_pos ? frame_pos[0] : 0);
  check_gpu (f, what, &gx, &cx, dt == DP_F32 ? 1e-5 : 1e-2);
  dp_backend_tensor_free (f->gpu, &gx);
  dp_tensor_free (&cx);
  g_free (x);
}

static void
test_rope (void)
{
  NEED_GPU ();
  fixture f;
  fx_init (&f);
  const int pos_a[3] = { 2, 3, 4 }, pos_b[3] = { 7, 8, 9 };
  run_rope (&f, DP_BF16, 128, pos_a);
  run_rope (&f, DP_BF16, 128, pos_b); /* same shape, other positions: a new table */
  run_rope (&f, DP_BF16, 128, pos_a); /* cached table */
  run_rope (&f, DP_F32, 128, NULL);
  run_rope (&f, DP_F32, 32, pos_b);
  run_rope (&f, DP_BF16, 24, NULL);
  run_rope (&f, DP_BF16, 20, pos_b); /* d / 2 not a multiple of 4: the scalar kernel */
  fx_done (&f);
}

/* Wan's q / k norm + RoPE in one pass against the CPU's rms_norm + rope_3d. */
static void
run_rms_rope (fixture *f, dp_dtype dt, int heads, int d, gboolean weight, const int *frame_pos)
{
  dp_rope_grid grid = { .frames = 3, .height = 4, .width = 5, .frame_pos = frame_pos, .theta = 10000.0f };
  const int64_t D = (int64_t) heads * d, xs[4] = { 2, 60, heads, d }, rs[3] = { 2, 60, D }, vs[1] = { D };
  const int64_t n = count (4, xs);
  float *x = rand_vec (n, -2.0f, 2.0f, dt), *w = rand_vec (D, 0.5f, 1.5f, DP_F32);
  dp_tensor cx = cpu_tensor (4, xs, x), cw = cpu_tensor (1, vs, w);
  dp_tensor cx3 = dp_tensor_view (cx.data, DP_F32, 3, rs);
  f->cpu->ops->rms_norm (f->cpu, &cx3, &cx3, weight ? &cw : NULL, 1e-6f);
  f->cpu->ops->rope_3d (f->cpu, &cx, &grid);
  dp_tensor gx = gpu_tensor (f->gpu, dt, 4, xs, x), gw = gpu_tensor (f->gpu, DP_F32, 1, vs, w);
  f->gpu->ops->rms_norm_rope_3d (f->gpu, &gx, weight ? &gw : NULL, 1e-6f, &grid);
  char what[128];
  g_snprintf (what, sizeof what, "rms_norm_rope_3d %s %d heads x %d%s frames at %d", dp_dtype_name (dt), heads, d,
              weight ? " weight" : "", frame_pos ? frame_pos[0] : 0);
  check_gpu (f, what, &gx, &cx, tol_for (dt));
  dp_backend_tensor_free (f->gpu, &gx);
  dp_backend_tensor_free (f->gpu, &gw);
  dp_tensor_free (&cx);
  dp_tensor_free (&cw);
  g_free (x);
  g_free (w);
}

static void
test_rms_rope (void)
{
  NEED_GPU ();
  fixture f;
  fx_init (&f);
  const int pos[3] = { 5, 6, 7 };
  run_rms_rope (&f, DP_BF16, 12, 128, TRUE, pos); /* Wan2.1-1.3B's heads */
  run_rms_rope (&f, DP_BF16, 3, 128, TRUE, NULL);
  run_rms_rope (&f, DP_BF16, 40, 128, TRUE, pos); /* 14B: rows of 5120 take a block each */
  run_rms_rope (&f, DP_F32, 2, 24, FALSE, pos);
  run_rms_rope (&f, DP_BF16, 4, 20, TRUE, pos);  /* d / 2 even, not a multiple of 4 */
  run_rms_rope (&f, DP_BF16, 3, 18, TRUE, NULL); /* d / 2 odd: rms_norm, then rope_3d */
  fx_done (&f);
}

/* ---- element-wise ----------------------------------------------------------- */

static void
test_elementwise (void)
{
  NEED_GPU ();
  fixture f;
  fx_init (&f);
  const int64_t s[3] = { 2, 37, 64 };
  const int64_t n = count (3, s);
  const dp_dtype dts[2] = { DP_BF16, DP_F32 };
  for (int i = 0; i < 2; i++) {
    dp_dtype dt = dts[i];
    float *a = rand_vec (n, -4.0f, 4.0f, dt), *b = rand_vec (n, -4.0f, 4.0f, DP_BF16);
    dp_tensor ca = cpu_tensor (3, s, a), cb = cpu_tensor (3, s, b), cy = cpu_tensor (3, s, NULL);
    dp_tensor ga = gpu_tensor (f.gpu, dt, 3, s, a), gb = gpu_tensor (f.gpu, DP_BF16, 3, s, b);
    dp_tensor gy = gpu_out (f.gpu, dt, 3, s);
    char what[96];
    for (int op = 0; op < 5; op++) {
      static const char *names[] = { "gelu_tanh", "silu", "add", "mul", "axpby" };
      switch (op) {
        case 0: f.cpu->ops->gelu_tanh (f.cpu, &cy, &ca); f.gpu->ops->gelu_tanh (f.gpu, &gy, &ga); break;
        case 1: f.cpu->ops->silu (f.cpu, &cy, &ca); f.gpu->ops->silu (f.gpu, &gy, &ga); break;
        case 2: f.cpu->ops->add (f.cpu, &cy, &ca, &cb); f.gpu->ops->add (f.gpu, &gy, &ga, &gb); break;
        case 3: f.cpu->ops->mul (f.cpu, &cy, &ca, &cb); f.gpu->ops->mul (f.gpu, &gy, &ga, &gb); break;
        default:
          f.cpu->ops->axpby (f.cpu, &cy, 0.75f, &ca, -1.25f, &cb);
          f.gpu->ops->axpby (f.gpu, &gy, 0.75f, &ga, -1.25f, &gb);
          break;
      }
      g_snprintf (what, sizeof what, "%s %s", names[op], dp_dtype_name (dt));
      /* fast-math exp in silu: a few ulp in F32 */
      check_gpu (&f, what, &gy, &cy, dt == DP_F32 ? 1e-5 : 1e-2);
      f.gpu->ops->fill (f.gpu, &gy, NAN);
    }
    dp_backend_tensor_free (f.gpu, &ga);
    dp_backend_tensor_free (f.gpu, &gb);
    dp_backend_tensor_free (f.gpu, &gy);
    dp_tensor_free (&ca);
    dp_tensor_free (&cb);
    dp_tensor_free (&cy);
    g_free (a);
    g_free (b);
  }

  /* gated_add: F32 residual += F32 gate [B, D] * BF16 branch, vector path
   * (D % 4 == 0), scalar path (D = 30) and plain residual add (gate NULL). */
  const int64_t Ds[3] = { 64, 30, 64 };
  for (int c = 0; c < 3; c++) {
    const int64_t xs[3] = { 2, 41, Ds[c] }, gs[2] = { 2, Ds[c] };
    const int64_t nx = count (3, xs);
    gboolean gated = c < 2;
    float *x = rand_vec (nx, -2.0f, 2.0f, DP_F32), *y = rand_vec (nx, -2.0f, 2.0f, DP_BF16);
    float *g = rand_vec (2 * Ds[c], -1.0f, 1.0f, DP_F32);
    dp_tensor cx = cpu_tensor (3, xs, x), cy = cpu_tensor (3, xs, y), cg = cpu_tensor (2, gs, g);
    f.cpu->ops->gated_add (f.cpu, &cx, &cy, gated ? &cg : NULL);
    dp_tensor gx = gpu_tensor (f.gpu, DP_F32, 3, xs, x), gy = gpu_tensor (f.gpu, DP_BF16, 3, xs, y);
    dp_tensor gg = gpu_tensor (f.gpu, DP_F32, 2, gs, g);
    f.gpu->ops->gated_add (f.gpu, &gx, &gy, gated ? &gg : NULL);
    char what[96];
    g_snprintf (what, sizeof what, "gated_add F32 += %s BF16, D %" G_GINT64_FORMAT, gated ? "gate *" : "",
                Ds[c]);
    check_gpu (&f, what, &gx, &cx, 1e-5);
    dp_backend_tensor_free (f.gpu, &gx);
    dp_backend_tensor_free (f.gpu, &gy);
    dp_backend_tensor_free (f.gpu, &gg);
    dp_tensor_free (&cx);
    dp_tensor_free (&cy);
    dp_tensor_free (&cg);
    g_free (x);
    g_free (y);
    g_free (g);
  }
  fx_done (&f);
}

/* ---- layouts -------------------------------------------------------------- */

static void
test_layouts (void)
{
  NEED_GPU ();
  fixture f;
  fx_init (&f);
  /* patchify / unpatchify with the Wan patch (1, 2, 2) and a (2, 2, 2) one. */
  const int patches[2][3] = { { 1, 2, 2 }, { 2, 2, 2 } };
  for (int pi = 0; pi < 2; pi++) {
    int pt = patches[pi][0], ph = patches[pi][1], pw = patches[pi][2];
    const int64_t vs[4] = { 16, 4, 6, 10 };
    const int64_t ts[2] = { (4 / pt) * (6 / ph) * (10 / pw), 16 * pt * ph * pw };
    const int64_t n = count (4, vs);
    float *x = rand_vec (n, -1.0f, 1.0f, DP_BF16);
    dp_tensor cx = cpu_tensor (4, vs, x), ct = cpu_tensor (2, ts, NULL), cu = cpu_tensor (4, vs, NULL);
    f.cpu->ops->patchify (f.cpu, &ct, &cx, pt, ph, pw);
    f.cpu->ops->unpatchify (f.cpu, &cu, &ct, pt, ph, pw);
    dp_tensor gx = gpu_tensor (f.gpu, DP_BF16, 4, vs, x), gt = gpu_out (f.gpu, DP_F32, 2, ts);
    dp_tensor gu = gpu_out (f.gpu, DP_BF16, 4, vs);
    f.gpu->ops->patchify (f.gpu, &gt, &gx, pt, ph, pw);
    f.gpu->ops->unpatchify (f.gpu, &gu, &gt, pt, ph, pw);
    check_gpu (&f, "patchify", &gt, &ct, 0.0);
    check_gpu (&f, "unpatchify", &gu, &cu, 0.0);
    dp_backend_tensor_free (f.gpu, &gx);
    dp_backend_tensor_free (f.gpu, &gt);
    dp_backend_tensor_free (f.gpu, &gu);
    dp_tensor_free (&cx);
    dp_tensor_free (&ct);
    dp_tensor_free (&cu);
    g_free (x);
  }
  /* nearest 2x upsampling */
  const int64_t xs[4] = { 3, 2, 5, 7 }, ys[4] = { 3, 2, 10, 14 };
  float *x = rand_vec (count (4, xs), -1.0f, 1.0f, DP_BF16);
  dp_tensor cx = cpu_tensor (4, xs, x), cy = cpu_tensor (4, ys, NULL);
  f.cpu->ops->upsample_nearest2x (f.cpu, &cy, &cx);
  dp_tensor gx = gpu_tensor (f.gpu, DP_BF16, 4, xs, x), gy = gpu_out (f.gpu, DP_F32, 4, ys);
  f.gpu->ops->upsample_nearest2x (f.gpu, &gy, &gx);
  check_gpu (&f, "upsample_nearest2x", &gy, &cy, 0.0);
  dp_backend_tensor_free (f.gpu, &gx);
  dp_backend_tensor_free (f.gpu, &gy);
  dp_tensor_free (&cx);
  dp_tensor_free (&cy);
  g_free (x);
  fx_done (&f);
}

/* ---- attention ---------------------------------------------------------- */

typedef struct {
  int B, H, Lq, Lk, d, key_len;
  gboolean bias;
  float scale; /* 0: 1/sqrt(d) */
  dp_dtype dt;
} attn_case;

static void
run_attention (fixture *f, const attn_case *c)
{
  const int64_t qs[4] = { c->B, c->Lq, c->H, c->d }, ks[4] = { c->B, c->Lk, c->H, c->d };
  const int64_t bs[3] = { c->H, c->Lq, c->Lk };
  const int64_t nq = count (4, qs), nk = count (4, ks);
  float *q = rand_vec (nq, -1.5f, 1.5f, c->dt), *k = rand_vec (nk, -1.5f, 1.5f, c->dt);
  float *v = rand_vec (nk, -1.0f, 1.0f, c->dt);
  float *bias = c->bias ? rand_vec (count (3, bs), -2.0f, 2.0f, DP_F32) : NULL;
  dp_attn_params p = { .scale = c->scale ? c->scale : 1.0f / sqrtf (c->d), .key_len = c->key_len };

  dp_tensor cq = cpu_tensor (4, qs, q), ck = cpu_tensor (4, ks, k), cv = cpu_tensor (4, ks, v);
  dp_tensor co = cpu_tensor (4, qs, NULL), cb = c->bias ? cpu_tensor (3, bs, bias) : (dp_tensor) { 0 };
  p.bias = c->bias ? &cb : NULL;
  f->cpu->ops->attention (f->cpu, &co, &cq, &ck, &cv, &p);

  dp_tensor gq = gpu_tensor (f->gpu, c->dt, 4, qs, q), gk = gpu_tensor (f->gpu, c->dt, 4, ks, k);
  dp_tensor gv = gpu_tensor (f->gpu, c->dt, 4, ks, v), go = gpu_out (f->gpu, c->dt, 4, qs);
  dp_tensor gb = c->bias ? gpu_tensor (f->gpu, DP_F32, 3, bs, bias) : (dp_tensor) { 0 };
  p.bias = c->bias ? &gb : NULL;
  f->gpu->ops->attention (f->gpu, &go, &gq, &gk, &gv, &p);

  char what[128];
  g_snprintf (what, sizeof what, "attention %s B%d H%d Lq%d Lk%d d%d key_len %d%s", dp_dtype_name (c->dt), c->B,
              c->H, c->Lq, c->Lk, c->d, c->key_len, c->bias ? " bias" : "");
  check_gpu (f, what, &go, &co, c->dt == DP_F32 ? 1e-4 : 1e-2);

  dp_backend_tensor_free (f->gpu, &gq);
  dp_backend_tensor_free (f->gpu, &gk);
  dp_backend_tensor_free (f->gpu, &gv);
  dp_backend_tensor_free (f->gpu, &go);
  if (c->bias)
    dp_backend_tensor_free (f->gpu, &gb);
  dp_tensor_free (&cq);
  dp_tensor_free (&ck);
  dp_tensor_free (&cv);
  dp_tensor_free (&co);
  dp_tensor_free (&cb);
  g_free (q);
  g_free (k);
  g_free (v);
  g_free (bias);
}

static void
test_attention (void)
{
  NEED_GPU ();
  fixture f;
  fx_init (&f);
  const attn_case cases[] = {
    /* B  H   Lq   Lk    d  key_len bias scale dtype */
    { 2, 2, 200, 333, 128, 0, FALSE, 0, DP_BF16 },   /* production head dim, ragged tails */
    { 1, 3, 130, 512, 128, 0, FALSE, 0, DP_BF16 },   /* cross-attention: 512 text keys */
    { 1, 2, 64, 64, 128, 0, FALSE, 0, DP_BF16 },     /* exact tiles */
    { 2, 2, 70, 90, 16, 0, FALSE, 0, DP_BF16 },      /* tiny test models */
    { 1, 2, 65, 129, 24, 0, FALSE, 0, DP_BF16 },
    { 1, 2, 64, 100, 32, 77, FALSE, 0, DP_BF16 },    /* key_len mask */
    { 1, 3, 50, 70, 40, 0, FALSE, 0, DP_BF16 },      /* d padded to 64 */
    { 1, 4, 40, 40, 64, 0, TRUE, 1.0f, DP_BF16 },    /* umT5: bias, scale 1 */
    { 1, 2, 37, 300, 64, 250, TRUE, 1.0f, DP_BF16 }, /* bias + key_len */
    { 1, 2, 30, 45, 48, 0, FALSE, 0, DP_F32 },        /* generic path: F32 */
    { 1, 2, 20, 150, 136, 0, FALSE, 0, DP_BF16 },    /* generic path: d > 128 */
    { 1, 2, 25, 40, 64, 30, TRUE, 1.0f, DP_F32 },    /* generic path with bias and key_len */
  };
  for (unsigned i = 0; i < G_N_ELEMENTS (cases); i++)
    run_attention (&f, &cases[i]);
  /* Every variant of the flash kernel on the cases without bias (the bias
   * path has one kernel); the wgmma variant falls back to the 32-row kernel
   * for d != 128 (and everywhere on GPUs other than Hopper). */
  const dp_cuda_attention_variant variants[4] = { DP_CUDA_ATTN_W4_R16, DP_CUDA_ATTN_W8_R16, DP_CUDA_ATTN_W4_R32,
                                                  DP_CUDA_ATTN_WGMMA };
  for (int vi = 0; vi < 4; vi++) {
    g_test_message ("flash-attention variant %d", variants[vi]);
    if (g_test_verbose ())
      g_printerr ("  flash-attention variant %d\n", variants[vi]);
    dp_cuda_backend_set_attention_variant (f.gpu, variants[vi]);
    for (unsigned i = 0; i < 7; i++) {
      run_attention (&f, &cases[i]);
      int want = variants[vi];
      if (variants[vi] == DP_CUDA_ATTN_WGMMA && (cases[i].d != 128 || !dp_cuda_backend_has_wgmma_attention (f.gpu)))
        want = DP_CUDA_ATTN_W4_R32;
      g_assert_cmpint (dp_cuda_backend_last_attention_variant (f.gpu), ==, want);
    }
  }
  fx_done (&f);
}

/* The Hopper kernel (wgmma + TMA) on many shapes: ragged Lq and Lk (not
 * multiples of its 128-row tiles), Lk shorter than a tile, key_len masks,
 * B = 2 with H = 12 (the model's heads), against the CPU backend and against
 * the portable mma.sync kernel.  Tolerance 1e-2 relative L2 (BF16 inputs,
 * probabilities rounded to BF16 before P V; measured ~2e-3 for the mma.sync
 * kernel).  Two structured inputs localise a failure: K = 0 makes every
 * probability 1/kv_len, so O is the mean of the V rows (checks P V and the
 * transposed V descriptor alone); V = the key index one-hot in the first
 * columns makes O the probabilities themselves (checks Q K^T and softmax). */
typedef enum { ATTN_RANDOM, ATTN_K_ZERO, ATTN_V_ONEHOT } attn_fill;

static gboolean
run_attention_wgmma (fixture *f, const attn_case *c, attn_fill fill)
{
  const int64_t qs[4] = { c->B, c->Lq, c->H, c->d }, ks[4] = { c->B, c->Lk, c->H, c->d };
  const int64_t nq = count (4, qs), nk = count (4, ks);
  float *q = rand_vec (nq, -1.5f, 1.5f, DP_BF16), *k = rand_vec (nk, -1.5f, 1.5f, DP_BF16);
  float *v = rand_vec (nk, -1.0f, 1.0f, DP_BF16);
  if (fill == ATTN_K_ZERO)
    memset (k, 0, nk * sizeof (float));
  if (fill == ATTN_V_ONEHOT)
    for (int64_t i = 0; i < nk; i++) {
      int64_t col = i % c->d, key = (i / (c->d * c->H)) % c->Lk;
      v[i] = col == key % c->d ? 1.0f : 0.0f;
    }
  dp_attn_params p = { .scale = c->scale ? c->scale : 1.0f / sqrtf (c->d), .key_len = c->key_len };

  dp_tensor cq = cpu_tensor (4, qs, q), ck = cpu_tensor (4, ks, k), cv = cpu_tensor (4, ks, v);
  dp_tensor co = cpu_tensor (4, qs, NULL);
  f->cpu->ops->attention (f->cpu, &co, &cq, &ck, &cv, &p);

  dp_tensor gq = gpu_tensor (f->gpu, DP_BF16, 4, qs, q), gk = gpu_tensor (f->gpu, DP_BF16, 4, ks, k);
  dp_tensor gv = gpu_tensor (f->gpu, DP_BF16, 4, ks, v);
  dp_tensor go = gpu_out (f->gpu, DP_BF16, 4, qs), gm = gpu_out (f->gpu, DP_BF16, 4, qs);
  dp_cuda_backend_set_attention_variant (f->gpu, DP_CUDA_ATTN_WGMMA);
  f->gpu->ops->attention (f->gpu, &go, &gq, &gk, &gv, &p);
  g_assert_cmpint (dp_cuda_backend_last_attention_variant (f->gpu), ==, DP_CUDA_ATTN_WGMMA);
  dp_cuda_backend_set_attention_variant (f->gpu, DP_CUDA_ATTN_W4_R32);
  f->gpu->ops->attention (f->gpu, &gm, &gq, &gk, &gv, &p);
  g_assert_cmpint (dp_cuda_backend_last_attention_variant (f->gpu), ==, DP_CUDA_ATTN_W4_R32);

  /* Both comparisons are printed before anything is asserted, and the
   * caller runs every case first: one device run shows the whole picture. */
  static const char *fills[] = { "", " K=0", " V=onehot" };
  float *got = download (f->gpu, &go), *mma = download (f->gpu, &gm);
  const float *refs[2] = { co.data, mma };
  gboolean ok = TRUE;
  for (int r = 0; r < 2; r++) {
    double num = 0.0, den = 0.0;
    int64_t bad = 0;
    for (int64_t i = 0; i < nq; i++) {
      if (!isfinite (got[i])) {
        bad++;
        continue;
      }
      double e = (double) got[i] - refs[r][i];
      num += e * e;
      den += (double) refs[r][i] * refs[r][i];
    }
    double rel = den > 0 ? sqrt (num / den) : sqrt (num);
    char what[128];
    g_snprintf (what, sizeof what, "wgmma attention B%d H%d Lq%d Lk%d key_len %d%s vs %s", c->B, c->H, c->Lq, c->Lk,
                c->key_len, fills[fill], r == 0 ? "CPU" : "mma.sync");
    g_test_message ("%s: relative L2 error %.3g, %" G_GINT64_FORMAT " non-finite", what, rel, bad);
    if (g_test_verbose () || rel > 1e-2 || bad)
      g_printerr ("  %-58s rel L2 %.3e (tol 1e-02)%s\n", what, rel, bad ? " NON-FINITE VALUES" : "");
    ok = ok && bad == 0 && rel <= 1e-2;
  }
  g_free (got);
  g_free (mma);

  dp_tensor *all[] = { &gq, &gk, &gv, &go, &gm };
  for (unsigned i = 0; i < G_N_ELEMENTS (all); i++)
    dp_backend_tensor_free (f->gpu, all[i]);
  dp_tensor_free (&cq);
  dp_tensor_free (&ck);
  dp_tensor_free (&cv);
  dp_tensor_free (&co);
  g_free (q);
  g_free (k);
  g_free (v);
  return ok;
}

static void
test_attention_wgmma (void)
{
  NEED_GPU ();
  fixture f;
  fx_init (&f);
  if (!dp_cuda_backend_has_wgmma_attention (f.gpu)) {
    fx_done (&f);
    g_test_skip ("the wgmma attention kernel needs compute capability 9.0");
    return;
  }
  const attn_case cases[] = {
    /* B  H    Lq    Lk    d  key_len bias scale dtype */
    { 1, 1, 128, 128, 128, 0, FALSE, 0, DP_BF16 },     /* one tile each */
    { 1, 2, 64, 64, 128, 0, FALSE, 0, DP_BF16 },       /* Lq and Lk below a tile */
    { 1, 1, 1, 1, 128, 0, FALSE, 0, DP_BF16 },         /* a single query and key */
    { 2, 2, 200, 333, 128, 0, FALSE, 0, DP_BF16 },     /* ragged tails */
    { 1, 3, 130, 512, 128, 0, FALSE, 0, DP_BF16 },     /* cross-attention: 512 text keys */
    { 2, 12, 300, 257, 128, 0, FALSE, 0, DP_BF16 },    /* the model's heads, Lk one past two tiles */
    { 2, 12, 129, 40, 128, 0, FALSE, 0, DP_BF16 },     /* Lk < tile */
    { 1, 2, 256, 700, 128, 300, FALSE, 0, DP_BF16 },   /* key_len inside the third tile */
    { 1, 2, 100, 1000, 128, 129, FALSE, 0, DP_BF16 },  /* key_len one past the first tile */
    { 1, 1, 520, 1500, 128, 0, FALSE, 0, DP_BF16 },    /* many key tiles: both ring stages reused */
  };
  int failed = 0;
  for (unsigned i = 0; i < G_N_ELEMENTS (cases); i++)
    failed += !run_attention_wgmma (&f, &cases[i], ATTN_RANDOM);
  failed += !run_attention_wgmma (&f, &cases[3], ATTN_K_ZERO);
  failed += !run_attention_wgmma (&f, &cases[3], ATTN_V_ONEHOT);
  failed += !run_attention_wgmma (&f, &cases[9], ATTN_V_ONEHOT);
  dp_cuda_backend_set_attention_variant (f.gpu, dp_cuda_backend_default_attention_variant (f.gpu));
  fx_done (&f);
  g_assert_cmpint (failed, ==, 0);
}

/* ---- conv3d ------------------------------------------------------------- */

static void
run_conv (fixture *f, const int64_t *xs, const int64_t *ws, const dp_conv3d_params *p, dp_dtype ydt,
          gboolean with_bias)
{
  const int64_t To = (xs[1] + p->pad_t_front + p->pad_t_back - ws[2]) / p->stride_t + 1;
  const int64_t Ho = (xs[2] + 2 * p->pad_h - ws[3]) / p->stride_h + 1;
  const int64_t Wo = (xs[3] + 2 * p->pad_w - ws[4]) / p->stride_w + 1;
  const int64_t ys[4] = { ws[0], To, Ho, Wo }, bs[1] = { ws[0] };
  float *x = rand_vec (count (4, xs), -1.0f, 1.0f, DP_BF16), *w = rand_vec (count (5, ws), -0.2f, 0.2f, DP_BF16);
  float *b = rand_vec (ws[0], -0.5f, 0.5f, ydt);
  dp_tensor cx = cpu_tensor (4, xs, x), cw = cpu_tensor (5, ws, w), cb = cpu_tensor (1, bs, b);
  dp_tensor cy = cpu_tensor (4, ys, NULL);
  f->cpu->ops->conv3d (f->cpu, &cy, &cx, &cw, with_bias ? &cb : NULL, p);
  dp_tensor gx = gpu_tensor (f->gpu, DP_F32, 4, xs, x), gw = gpu_tensor (f->gpu, DP_BF16, 5, ws, w);
  dp_tensor gb = gpu_tensor (f->gpu, DP_F32, 1, bs, b), gy = gpu_out (f->gpu, ydt, 4, ys);
  f->gpu->ops->conv3d (f->gpu, &gy, &gx, &gw, with_bias ? &gb : NULL, p);
  char what[128];
  g_snprintf (what, sizeof what, "conv3d %" G_GINT64_FORMAT "->%" G_GINT64_FORMAT " k %" G_GINT64_FORMAT "x%"
              G_GINT64_FORMAT "x%" G_GINT64_FORMAT " -> %s%s", xs[0], ws[0], ws[2], ws[3], ws[4], dp_dtype_name (ydt),
              with_bias ? " bias" : "");
  check_gpu (f, what, &gy, &cy, ydt == DP_F32 ? 1e-4 : 1e-2);
  dp_tensor *all[] = { &gx, &gw, &gb, &gy };
  for (unsigned i = 0; i < G_N_ELEMENTS (all); i++)
    dp_backend_tensor_free (f->gpu, all[i]);
  dp_tensor_free (&cx);
  dp_tensor_free (&cw);
  dp_tensor_free (&cb);
  dp_tensor_free (&cy);
  g_free (x);
  g_free (w);
  g_free (b);
}

static void
test_conv3d (void)
{
  NEED_GPU ();
  fixture f;
  fx_init (&f);
  const int64_t xs[4] = { 4, 5, 9, 10 }, w333[5] = { 6, 4, 3, 3, 3 }, w122[5] = { 8, 4, 1, 2, 2 };
  const int64_t w111[5] = { 5, 4, 1, 1, 1 };
  dp_conv3d_params causal = { 1, 1, 1, 2, 0, 1, 1 }, patch = { 1, 2, 2, 0, 0, 0, 0 };
  dp_conv3d_params stride2 = { 2, 2, 2, 1, 1, 1, 1 }, plain = { 1, 1, 1, 0, 0, 0, 0 };
  run_conv (&f, xs, w333, &causal, DP_F32, TRUE);
  run_conv (&f, xs, w333, &causal, DP_BF16, TRUE);
  run_conv (&f, xs, w122, &patch, DP_F32, TRUE);
  run_conv (&f, xs, w333, &stride2, DP_F32, FALSE);
  run_conv (&f, xs, w111, &plain, DP_F32, TRUE);
  fx_done (&f);
}

/* ---- VAE ops: channel_rms_norm, copy_cols, transpose --------------------- */

static void
test_vae_ops (void)
{
  NEED_GPU ();
  fixture f;
  fx_init (&f);
  /* channel_rms_norm over dim 0 of [C, T, H, W], with and without gamma / SiLU */
  const dp_dtype dts[2] = { DP_F32, DP_BF16 };
  for (int i = 0; i < 2; i++)
    for (int act = 0; act < 3; act += 2) {
      const int64_t xs[4] = { 96, 2, 7, 9 }, gs[1] = { 96 };
      const int64_t n = count (4, xs);
      float *x = rand_vec (n, -2.0f, 2.0f, dts[i]), *g = rand_vec (96, 0.5f, 1.5f, dts[i]);
      dp_tensor cx = cpu_tensor (4, xs, x), cg = cpu_tensor (1, gs, g), cy = cpu_tensor (4, xs, NULL);
      f.cpu->ops->channel_rms_norm (f.cpu, &cy, &cx, act ? &cg : NULL, 1e-12f, (dp_act) act);
      dp_tensor gx = gpu_tensor (f.gpu, dts[i], 4, xs, x), gg = gpu_tensor (f.gpu, dts[i], 1, gs, g);
      dp_tensor gy = gpu_out (f.gpu, dts[i], 4, xs);
      f.gpu->ops->channel_rms_norm (f.gpu, &gy, &gx, act ? &gg : NULL, 1e-12f, (dp_act) act);
      char what[96];
      g_snprintf (what, sizeof what, "channel_rms_norm %s%s", dp_dtype_name (dts[i]), act ? " gamma silu" : "");
      check_gpu (&f, what, &gy, &cy, tol_for (dts[i]));
      dp_backend_tensor_free (f.gpu, &gx);
      dp_backend_tensor_free (f.gpu, &gg);
      dp_backend_tensor_free (f.gpu, &gy);
      dp_tensor_free (&cx);
      dp_tensor_free (&cg);
      dp_tensor_free (&cy);
      g_free (x);
      g_free (g);
    }
  /* copy_cols: frames 1..3 of [C, 4, H*W] into frames 2..4 of [C, 6, H*W] (exact) */
  for (int i = 0; i < 2; i++) {
    const int64_t ss[3] = { 5, 4, 33 }, ds[3] = { 5, 6, 33 };
    float *x = rand_vec (count (3, ss), -1.0f, 1.0f, dts[i]), *y = rand_vec (count (3, ds), -1.0f, 1.0f, dts[i]);
    dp_tensor cx = cpu_tensor (3, ss, x), cy = cpu_tensor (3, ds, y);
    f.cpu->ops->copy_cols (f.cpu, &cy, 2 * 33, &cx, 1 * 33, 3 * 33);
    dp_tensor gx = gpu_tensor (f.gpu, dts[i], 3, ss, x), gy = gpu_tensor (f.gpu, dts[i], 3, ds, y);
    f.gpu->ops->copy_cols (f.gpu, &gy, 2 * 33, &gx, 1 * 33, 3 * 33);
    check_gpu (&f, "copy_cols", &gy, &cy, 0.0);
    /* transpose [5, 6*33] -> [198, 5] (exact) */
    dp_tensor ct = cpu_tensor (2, (int64_t[]){ 6 * 33, 5 }, NULL);
    f.cpu->ops->transpose (f.cpu, &ct, &cy);
    dp_tensor gt = gpu_out (f.gpu, dts[i], 2, ct.shape);
    f.gpu->ops->transpose (f.gpu, &gt, &gy);
    check_gpu (&f, "transpose", &gt, &ct, 0.0);
    dp_backend_tensor_free (f.gpu, &gx);
    dp_backend_tensor_free (f.gpu, &gy);
    dp_backend_tensor_free (f.gpu, &gt);
    dp_tensor_free (&cx);
    dp_tensor_free (&cy);
    dp_tensor_free (&ct);
    g_free (x);
    g_free (y);
  }
  fx_done (&f);
}

/* ---- the whole DiT ------------------------------------------------------- */

/* The tiny golden DiT (tests/data/dit/tiny_a, diffusers F32 reference) run on
 * the GPU: BF16 weights and activations through 2 layers.  Tolerance: 2e-2
 * relative L2 for the conditional output, 5e-2 for the guided one (guidance
 * 5 amplifies the difference of two outputs, each with its BF16 error). */
static dp_tensor
golden_get (dp_safetensors *io, const char *name)
{
  GError *err = NULL;
  dp_tensor t;
  g_assert_true (dp_safetensors_load (io, name, DP_F32, -1, NULL, &t, &err));
  g_assert_no_error (err);
  return t;
}

static void
test_wan_dit (void)
{
  NEED_GPU ();
  const char *data = g_getenv ("DP_TEST_DATA");
  if (!data) {
    g_test_skip ("DP_TEST_DATA is not set");
    return;
  }
  GError *err = NULL;
  char *io_path = g_build_filename (data, "dit", "tiny_a", "io.safetensors", NULL);
  char *tdir = g_build_filename (data, "dit", "tiny_a", "transformer", NULL);
  dp_safetensors *io = dp_safetensors_open (io_path, &err);
  g_assert_no_error (err);
  dp_tensor latent = golden_get (io, "latent"), cc = golden_get (io, "context_cond");
  dp_tensor cu = golden_get (io, "context_uncond"), oc = golden_get (io, "out_cond");
  dp_tensor og = golden_get (io, "out_guided"), ts = golden_get (io, "timestep"), gs = golden_get (io, "guidance");
  const float timestep = ((float *) ts.data)[0], guidance = ((float *) gs.data)[0];

  dp_backend *be = dp_backend_new ("cuda", &err);
  g_assert_no_error (err);
  dp_wan_dit *dit = dp_wan_dit_load (be, tdir, 0, -1, &err);
  g_assert_no_error (err);
  const dp_wan_config *c = dp_wan_dit_config (dit);
  for (int B = 1; B <= 2; B++) {
    const int64_t Lt = cc.shape[0], td = cc.shape[1];
    dp_tensor ctx = dp_tensor_new_host (DP_F32, 3, (int64_t[]){ B, Lt, td });
    memcpy (ctx.data, cc.data, dp_tensor_nbytes (&cc));
    if (B == 2)
      memcpy ((uint8_t *) ctx.data + dp_tensor_nbytes (&cc), cu.data, dp_tensor_nbytes (&cu));
    g_assert_true (dp_wan_dit_set_context (dit, &ctx, &err));
    g_assert_no_error (err);
    dp_tensor_free (&ctx);
    dp_tensor lat = gpu_tensor (be, DP_F32, 4, latent.shape, latent.data);
    const int64_t vs[4] = { c->out_channels, latent.shape[1], latent.shape[2], latent.shape[3] };
    dp_tensor vel = gpu_out (be, DP_F32, 4, vs);
    g_assert_true (dp_wan_dit_forward (dit, NULL, &lat, timestep, guidance, &vel, &err));
    g_assert_no_error (err);
    float *got = download (be, &vel);
    check_close (B == 1 ? "wan_dit tiny_a conditional (vs diffusers F32)" : "wan_dit tiny_a guided (vs diffusers F32)",
                 got, B == 1 ? oc.data : og.data, dp_tensor_nelem (&vel), B == 1 ? 2e-2 : 5e-2);
    g_free (got);
    dp_backend_tensor_free (be, &lat);
    dp_backend_tensor_free (be, &vel);
  }
  dp_wan_dit_free (dit);
  dp_backend_free (be);
  dp_tensor *all[] = { &latent, &cc, &cu, &oc, &og, &ts, &gs };
  for (unsigned i = 0; i < G_N_ELEMENTS (all); i++)
    dp_tensor_free (all[i]);
  dp_safetensors_close (io);
  g_free (io_path);
  g_free (tdir);
}

/* ---- errors ------------------------------------------------------------- */

static void
test_errors (void)
{
  NEED_GPU ();
  GError *err = NULL;
  /* A missing device is an error, not a crash. */
  dp_backend *none = dp_backend_new ("cuda:1000", &err);
  g_assert_null (none);
  g_assert_error (err, DP_ERROR, DP_ERROR_DEVICE);
  g_clear_error (&err);

  /* Shape errors are sticky and later ops are no-ops. */
  dp_backend *be = dp_backend_new ("cuda", &err);
  g_assert_no_error (err);
  const int64_t xs[2] = { 4, 8 }, ws[2] = { 3, 9 }, ys[2] = { 4, 3 };
  dp_tensor x = gpu_tensor (be, DP_BF16, 2, xs, NULL), w = gpu_tensor (be, DP_BF16, 2, ws, NULL);
  dp_tensor y = gpu_tensor (be, DP_BF16, 2, ys, NULL);
  be->ops->linear (be, &y, &x, &w, NULL, DP_ACT_NONE);
  g_assert_true (dp_backend_failed (be));
  be->ops->fill (be, &y, 1.0f);
  g_assert_false (be->ops->sync (be, &err));
  g_assert_error (err, DP_ERROR, DP_ERROR_SHAPE);
  g_clear_error (&err);
  dp_backend_free (be); /* releases x, w, y too */

  /* An impossible allocation is DP_ERROR_NOMEM. */
  be = dp_backend_new ("cuda", &err);
  g_assert_no_error (err);
  void *p = be->ops->alloc (be, (size_t) 1 << 52);
  g_assert_null (p);
  g_assert_false (be->ops->sync (be, &err));
  g_assert_error (err, DP_ERROR, DP_ERROR_NOMEM);
  g_clear_error (&err);
  dp_backend_free (be);

  /* Unsupported dtype: the F32 gate rule of gated_add. */
  be = dp_backend_new ("cuda", &err);
  g_assert_no_error (err);
  const int64_t s3[3] = { 1, 4, 8 }, s2[2] = { 1, 8 };
  dp_tensor a = gpu_tensor (be, DP_F32, 3, s3, NULL), b = gpu_tensor (be, DP_BF16, 3, s3, NULL);
  dp_tensor g = gpu_tensor (be, DP_BF16, 2, s2, NULL);
  be->ops->gated_add (be, &a, &b, &g);
  g_assert_false (be->ops->sync (be, &err));
  g_assert_error (err, DP_ERROR, DP_ERROR_UNSUPPORTED);
  g_clear_error (&err);
  dp_backend_free (be);
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  /* The CUDA code is linked in: register it rather than load the module. */
  dp_cuda_register ();
  have_gpu = dp_cuda_device_count () > 0;
  if (!have_gpu) {
    /* 77 is meson's "skipped": CI shows these as skipped, not passed. */
    g_print ("no CUDA device: GPU tests skipped\n");
    return 77;
  }
  rng = g_rand_new_with_seed ((guint32) g_get_real_time ()); /* fresh inputs every run */
  g_test_add_func ("/gpu/copy", test_copy);
  g_test_add_func ("/gpu/linear", test_linear);
  g_test_add_func ("/gpu/linear_gated_add", test_linear_gated_add);
  g_test_add_func ("/gpu/norms", test_norms);
  g_test_add_func ("/gpu/rope", test_rope);
  g_test_add_func ("/gpu/rms_norm_rope", test_rms_rope);
  g_test_add_func ("/gpu/elementwise", test_elementwise);
  g_test_add_func ("/gpu/layouts", test_layouts);
  g_test_add_func ("/gpu/attention", test_attention);
  g_test_add_func ("/gpu/attention_wgmma", test_attention_wgmma);
  g_test_add_func ("/gpu/conv3d", test_conv3d);
  g_test_add_func ("/gpu/vae_ops", test_vae_ops);
  g_test_add_func ("/gpu/wan_dit", test_wan_dit);
  g_test_add_func ("/gpu/errors", test_errors);
  int rc = g_test_run ();
  g_rand_free (rng);
  return rc;
}
