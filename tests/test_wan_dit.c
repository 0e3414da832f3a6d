/* Wan DiT: golden tests against diffusers (tools/make_dit_golden.py), the
 * stage / span / feature-cache invariants DualParal relies on, and every
 * kind of broken checkpoint.
 *
 * Tolerances: fp32 against diffusers, relative L2 error <= 1e-5 (measured
 * about 1e-6; diffusers itself differs from an fp64 run by 3e-7).  Stage
 * splits must be bitwise identical (same operations, same shapes).  Span
 * invariants (cache, positions) compare different but mathematically equal
 * computations: relative L2 <= 1e-5.
 *
 * Per-token timesteps (Wan2.2 TI2V-5B, tests/data/ti2v,
 * tools/make_ti2v_golden.py): per-frame timesteps 900 900 0 375 900 against
 * diffusers' 2-D timestep, relative L2 <= 1e-5 (measured 9e-7 to 1.5e-6);
 * equal values and stage splits bitwise. */
#include "dualparal/safetensors.h"
#include "dualparal/wan_dit.h"
#include "model/wan_dit_private.h" /* ffn_chunk_rows */

#include <glib/gstdio.h>
#include <json-glib/json-glib.h>
#include <string.h>

#include "test_util.h"

#define GOLDEN_TOL 1e-5

static dp_backend *be;

/* ------------------------------------------------------------ helpers */

static char *
model_dir (const char *name)
{
  return dp_test_data_path ("dit", name, NULL);
}

static char *
transformer_dir (const char *name)
{
  return dp_test_data_path ("dit", name, "transformer", NULL);
}

typedef struct {
  const char *name;
  dp_safetensors *io;
  dp_tensor latent, ctx_cond, ctx_uncond, out_cond, out_uncond, out_guided;
  float timestep, guidance;
} golden;

static dp_tensor
io_get (dp_safetensors *io, const char *name)
{
  GError *err = NULL;
  dp_tensor t;
  g_assert_true (dp_safetensors_load (io, name, DP_F32, -1, NULL, &t, &err));
  g_assert_no_error (err);
  return t;
}

static void
golden_open (golden *g, const char *name)
{
  memset (g, 0, sizeof *g);
  char *dir = model_dir (name);
  char *path = g_build_filename (dir, "io.safetensors", NULL);
  GError *err = NULL;
  g->name = name;
  g->io = dp_safetensors_open (path, &err);
  g_assert_no_error (err);
  g->latent = io_get (g->io, "latent");
  g->ctx_cond = io_get (g->io, "context_cond");
  g->ctx_uncond = io_get (g->io, "context_uncond");
  g->out_cond = io_get (g->io, "out_cond");
  g->out_uncond = io_get (g->io, "out_uncond");
  g->out_guided = io_get (g->io, "out_guided");
  dp_tensor t = io_get (g->io, "timestep"), s = io_get (g->io, "guidance");
  g->timestep = ((float *) t.data)[0];
  g->guidance = ((float *) s.data)[0];
  dp_tensor_free (&t);
  dp_tensor_free (&s);
  g_free (path);
  g_free (dir);
}

static void
golden_close (golden *g)
{
  dp_tensor *ts[] = { &g->latent, &g->ctx_cond, &g->ctx_uncond, &g->out_cond, &g->out_uncond, &g->out_guided };
  for (guint i = 0; i < G_N_ELEMENTS (ts); i++)
    dp_tensor_free (ts[i]);
  dp_safetensors_close (g->io);
}

/* Host context [B, Lt, text_dim]: cond (B = 1) or cond then uncond (B = 2). */
static dp_tensor
make_context (const golden *g, int B)
{
  int64_t Lt = g->ctx_cond.shape[0], td = g->ctx_cond.shape[1];
  dp_tensor c = dp_tensor_new_host (DP_F32, 3, (int64_t[]){ B, Lt, td });
  memcpy (c.data, g->ctx_cond.data, dp_tensor_nbytes (&g->ctx_cond));
  if (B == 2)
    memcpy ((uint8_t *) c.data + dp_tensor_nbytes (&g->ctx_cond), g->ctx_uncond.data,
            dp_tensor_nbytes (&g->ctx_uncond));
  return c;
}

static dp_tensor
upload (const dp_tensor *host)
{
  dp_tensor t = dp_backend_tensor_new (be, DP_F32, host->ndim, host->shape);
  be->ops->to_device (be, &t, host);
  return t;
}

static dp_tensor
device_new (int ndim, const int64_t *shape)
{
  dp_tensor t = dp_backend_tensor_new (be, DP_F32, ndim, shape);
  be->ops->fill (be, &t, 0.0f);
  return t;
}

static dp_tensor
download (const dp_tensor *dev)
{
  GError *err = NULL;
  dp_tensor h = dp_tensor_new_host (DP_F32, dev->ndim, dev->shape);
  be->ops->to_host (be, &h, dev);
  g_assert_true (be->ops->sync (be, &err));
  g_assert_no_error (err);
  return h;
}

/* Frames [f0, f0 + n) of x [C, F, H, W] into a new host tensor. */
static dp_tensor
host_frames (const dp_tensor *x, int64_t f0, int64_t n)
{
  int64_t C = x->shape[0], F = x->shape[1], hw = x->shape[2] * x->shape[3];
  dp_tensor y = dp_tensor_new_host (DP_F32, 4, (int64_t[]){ C, n, x->shape[2], x->shape[3] });
  for (int64_t c = 0; c < C; c++)
    memcpy ((float *) y.data + (c * n) * hw, (const float *) x->data + (c * F + f0) * hw,
            (size_t) (n * hw) * sizeof (float));
  return y;
}

static dp_wan_dit *
load (const char *name, int begin, int end)
{
  GError *err = NULL;
  char *dir = transformer_dir (name);
  dp_wan_dit *dit = dp_wan_dit_load (be, dir, begin, end, &err);
  g_assert_no_error (err);
  g_assert_nonnull (dit);
  g_free (dir);
  return dit;
}

static void
set_context (dp_wan_dit *dit, const golden *g, int B)
{
  GError *err = NULL;
  dp_tensor ctx = make_context (g, B);
  g_assert_true (dp_wan_dit_set_context (dit, &ctx, &err));
  g_assert_no_error (err);
  dp_tensor_free (&ctx);
}

/* Full forward of the golden latent: velocity on the host. */
static dp_tensor
forward (dp_wan_dit *dit, const golden *g, const dp_wan_span *span, const dp_tensor *latent_host, float guidance,
         int64_t out_frames)
{
  GError *err = NULL;
  const dp_wan_config *c = dp_wan_dit_config (dit);
  dp_tensor lat = upload (latent_host);
  int64_t shape[4] = { c->out_channels, out_frames, latent_host->shape[2], latent_host->shape[3] };
  dp_tensor vel = device_new (4, shape);
  g_assert_true (dp_wan_dit_forward (dit, span, &lat, g->timestep, guidance, &vel, &err));
  g_assert_no_error (err);
  dp_tensor out = download (&vel);
  dp_backend_tensor_free (be, &lat);
  dp_backend_tensor_free (be, &vel);
  return out;
}

/* ------------------------------------------------------------ golden */

/* The conditional, guided and unconditional outputs against diffusers. */
static void
test_golden (gconstpointer data)
{
  const char *name = data;
  golden g;
  golden_open (&g, name);
  dp_wan_dit *dit = load (name, 0, -1);
  const int64_t F = g.latent.shape[1], n = dp_tensor_nelem (&g.out_cond);

  set_context (dit, &g, 1);
  g_assert_cmpint (dp_wan_dit_batch (dit), ==, 1);
  dp_tensor v = forward (dit, &g, NULL, &g.latent, g.guidance, F);
  double e_cond = dp_test_rel_l2 (v.data, g.out_cond.data, n);
  dp_tensor_free (&v);

  set_context (dit, &g, 2);
  v = forward (dit, &g, NULL, &g.latent, g.guidance, F);
  double e_guided = dp_test_rel_l2 (v.data, g.out_guided.data, n);
  dp_tensor_free (&v);
  /* guidance 0 leaves the unconditional prediction */
  v = forward (dit, &g, NULL, &g.latent, 0.0f, F);
  double e_uncond = dp_test_rel_l2 (v.data, g.out_uncond.data, n);
  dp_tensor_free (&v);

  /* the feed-forward in row chunks that straddle the batch entries */
  dit->ffn_chunk_rows = 7;
  v = forward (dit, &g, NULL, &g.latent, g.guidance, F);
  double e_chunked = dp_test_rel_l2 (v.data, g.out_guided.data, n);
  dp_tensor_free (&v);

  g_test_message ("%s: relative L2 error cond %.3g, guided %.3g, uncond %.3g, guided with FFN chunks %.3g", name,
                  e_cond, e_guided, e_uncond, e_chunked);
  g_assert_cmpfloat (e_cond, <=, GOLDEN_TOL);
  g_assert_cmpfloat (e_guided, <=, GOLDEN_TOL);
  g_assert_cmpfloat (e_uncond, <=, GOLDEN_TOL);
  g_assert_cmpfloat (e_chunked, <=, GOLDEN_TOL);
  dp_wan_dit_free (dit);
  golden_close (&g);
}

/* ------------------------------------------------------------ cancel */

typedef struct {
  int calls;     /* times the hook was asked */
  int cancel_at; /* answer TRUE from this call on (1-based); 0: never */
} cancel_probe;

static gboolean
probe_hook (gpointer data)
{
  cancel_probe *p = data;
  p->calls++;
  return p->cancel_at > 0 && p->calls >= p->cancel_at;
}

/* The hook is asked once per layer; a TRUE answer stops the forward with
 * DP_ERROR_CANCELLED at once, and the model then runs as before. */
static void
test_cancel (void)
{
  golden g;
  golden_open (&g, "tiny_a");
  dp_wan_dit *dit = load ("tiny_a", 0, -1);
  const dp_wan_config *c = dp_wan_dit_config (dit);
  const int64_t F = g.latent.shape[1], n = dp_tensor_nelem (&g.out_guided);
  g_assert_cmpint (c->num_layers, >=, 2);
  set_context (dit, &g, 2);

  cancel_probe never = { 0, 0 };
  dp_wan_dit_set_cancel (dit, probe_hook, &never);
  dp_tensor v = forward (dit, &g, NULL, &g.latent, g.guidance, F);
  g_assert_cmpint (never.calls, ==, c->num_layers);
  g_assert_cmpfloat (dp_test_rel_l2 (v.data, g.out_guided.data, n), <=, GOLDEN_TOL);
  dp_tensor_free (&v);

  /* Cancelled before the second layer: the first ran, nothing after it. */
  cancel_probe second = { 0, 2 };
  dp_wan_dit_set_cancel (dit, probe_hook, &second);
  GError *err = NULL;
  dp_tensor lat = upload (&g.latent);
  dp_tensor vel = device_new (4, (int64_t[]){ c->out_channels, F, g.latent.shape[2], g.latent.shape[3] });
  g_assert_false (dp_wan_dit_forward (dit, NULL, &lat, g.timestep, g.guidance, &vel, &err));
  g_assert_error (err, DP_ERROR, DP_ERROR_CANCELLED);
  g_assert_cmpint (second.calls, ==, 2);
  g_clear_error (&err);

  /* run_layers stops the same way. */
  second.calls = 0;
  dp_wan_span span;
  dp_wan_span_init (&span, (int) F, (int) g.latent.shape[2], (int) g.latent.shape[3]);
  dp_tensor hidden = device_new (3, (int64_t[]){ 2, dp_wan_span_tokens (dit, &span), c->dim });
  g_assert_false (dp_wan_dit_run_layers (dit, &span, g.timestep, &hidden, &err));
  g_assert_error (err, DP_ERROR, DP_ERROR_CANCELLED);
  g_clear_error (&err);
  dp_backend_tensor_free (be, &hidden);
  dp_backend_tensor_free (be, &lat);
  dp_backend_tensor_free (be, &vel);

  /* Hook removed: the same result as before the cancel. */
  dp_wan_dit_set_cancel (dit, NULL, NULL);
  v = forward (dit, &g, NULL, &g.latent, g.guidance, F);
  g_assert_cmpfloat (dp_test_rel_l2 (v.data, g.out_guided.data, n), <=, GOLDEN_TOL);
  dp_tensor_free (&v);
  g_assert_cmpint (second.calls, ==, 2);
  dp_wan_dit_free (dit);
  golden_close (&g);
}

/* One stage per layer: the hidden states after the patch embedding and
 * after every block against diffusers' (cond run), so a failure says where. */
static void
test_golden_layers (gconstpointer data)
{
  const char *name = data;
  golden g;
  golden_open (&g, name);
  GError *err = NULL;
  dp_wan_dit *first = load (name, 0, 0);
  const dp_wan_config *c = dp_wan_dit_config (first);
  dp_wan_span span;
  dp_wan_span_init (&span, (int) g.latent.shape[1], (int) g.latent.shape[2], (int) g.latent.shape[3]);
  const int64_t L = dp_wan_span_tokens (first, &span);
  dp_tensor hidden = device_new (3, (int64_t[]){ 1, L, c->dim });
  dp_tensor lat = upload (&g.latent);

  set_context (first, &g, 1);
  g_assert_true (dp_wan_dit_embed (first, &lat, 0, &hidden, &err));
  g_assert_no_error (err);
  dp_tensor h = download (&hidden), ref = io_get (g.io, "embed");
  double e = dp_test_rel_l2 (h.data, ref.data, dp_tensor_nelem (&ref));
  g_test_message ("%s: embed %.3g", name, e);
  g_assert_cmpfloat (e, <=, GOLDEN_TOL);
  dp_tensor_free (&h);
  dp_tensor_free (&ref);

  for (int n = 0; n < c->num_layers; n++) {
    dp_wan_dit *stage = load (name, n, n + 1);
    set_context (stage, &g, 1);
    g_assert_true (dp_wan_dit_run_layers (stage, &span, g.timestep, &hidden, &err));
    g_assert_no_error (err);
    char key[32];
    g_snprintf (key, sizeof key, "hidden.%d", n);
    h = download (&hidden);
    ref = io_get (g.io, key);
    e = dp_test_rel_l2 (h.data, ref.data, dp_tensor_nelem (&ref));
    g_test_message ("%s: %s %.3g", name, key, e);
    g_assert_cmpfloat (e, <=, GOLDEN_TOL);
    dp_tensor_free (&h);
    dp_tensor_free (&ref);
    dp_wan_dit_free (stage);
  }
  dp_backend_tensor_free (be, &hidden);
  dp_backend_tensor_free (be, &lat);
  dp_wan_dit_free (first);
  golden_close (&g);
}

/* A checkpoint stored in F16 loads (converted to the backend's dtype) and
 * stays close to the F32 result (F16 weights: about 1e-3 relative). */
static void write_converted_copy (const char *src_dir, const char *dst_dir, dp_dtype dtype);

static void
test_golden_f16 (void)
{
  golden g;
  golden_open (&g, "tiny_a");
  char *tmp = dp_test_make_tmp_dir ("dp-wan-XXXXXX");
  char *src = transformer_dir ("tiny_a");
  write_converted_copy (src, tmp, DP_F16);
  GError *err = NULL;
  dp_wan_dit *dit = dp_wan_dit_load (be, tmp, 0, -1, &err);
  g_assert_no_error (err);
  set_context (dit, &g, 1);
  dp_tensor v = forward (dit, &g, NULL, &g.latent, 1.0f, g.latent.shape[1]);
  double e = dp_test_rel_l2 (v.data, g.out_cond.data, dp_tensor_nelem (&v));
  g_test_message ("F16 checkpoint: relative L2 error %.3g", e);
  g_assert_cmpfloat (e, <=, 1e-2);
  g_assert_cmpfloat (e, >, 1e-6); /* it really went through F16 */
  dp_tensor_free (&v);
  dp_wan_dit_free (dit);
  dp_test_remove_tree (tmp);
  g_free (tmp);
  g_free (src);
  golden_close (&g);
}

/* ------------------------------------------------------------ stages */

/* Embed, layers [0, n) split into stages, head: the velocity. */
static dp_tensor
run_stages (const char *name, const golden *g, const int *bounds, int n_stages)
{
  GError *err = NULL;
  dp_wan_dit *stages[8];
  for (int i = 0; i < n_stages; i++) {
    stages[i] = load (name, bounds[i], bounds[i + 1]);
    set_context (stages[i], g, 2);
  }
  const dp_wan_config *c = dp_wan_dit_config (stages[0]);
  dp_wan_span span;
  dp_wan_span_init (&span, (int) g->latent.shape[1], (int) g->latent.shape[2], (int) g->latent.shape[3]);
  dp_tensor hidden = device_new (3, (int64_t[]){ 2, dp_wan_span_tokens (stages[0], &span), c->dim });
  dp_tensor lat = upload (&g->latent);
  dp_tensor vel = device_new (4, (int64_t[]){ c->out_channels, span.frames, span.height, span.width });

  g_assert_true (dp_wan_dit_has_embed (stages[0]));
  g_assert_true (dp_wan_dit_embed (stages[0], &lat, 0, &hidden, &err));
  g_assert_no_error (err);
  for (int i = 0; i < n_stages; i++) {
    g_assert_true (dp_wan_dit_run_layers (stages[i], &span, g->timestep, &hidden, &err));
    g_assert_no_error (err);
  }
  g_assert_true (dp_wan_dit_has_head (stages[n_stages - 1]));
  g_assert_true (dp_wan_dit_head (stages[n_stages - 1], &span, g->timestep, g->guidance, &hidden, &vel, &err));
  g_assert_no_error (err);
  dp_tensor out = download (&vel);
  dp_backend_tensor_free (be, &hidden);
  dp_backend_tensor_free (be, &lat);
  dp_backend_tensor_free (be, &vel);
  for (int i = 0; i < n_stages; i++)
    dp_wan_dit_free (stages[i]);
  return out;
}

/* 1, 2 or 3 stages in sequence: bitwise the same as one pass, and as the
 * one-call forward. */
static void
test_stages (void)
{
  golden g;
  golden_open (&g, "tiny_b"); /* 3 layers */
  static const int one[] = { 0, 3 }, two_a[] = { 0, 1, 3 }, two_b[] = { 0, 2, 3 }, three[] = { 0, 1, 2, 3 };
  static const int split_empty[] = { 0, 0, 3, 3 }; /* stages without layers: embed-only, head-only */
  dp_tensor ref = run_stages ("tiny_b", &g, one, 1);
  size_t nbytes = dp_tensor_nbytes (&ref);
  struct {
    const int *b;
    int n;
  } splits[] = { { two_a, 2 }, { two_b, 2 }, { three, 3 }, { split_empty, 3 } };
  for (guint i = 0; i < G_N_ELEMENTS (splits); i++) {
    dp_tensor v = run_stages ("tiny_b", &g, splits[i].b, splits[i].n);
    g_assert_cmpint (memcmp (v.data, ref.data, nbytes), ==, 0);
    dp_tensor_free (&v);
  }
  dp_wan_dit *dit = load ("tiny_b", 0, -1);
  set_context (dit, &g, 2);
  dp_tensor v = forward (dit, &g, NULL, &g.latent, g.guidance, g.latent.shape[1]);
  g_assert_cmpint (memcmp (v.data, ref.data, nbytes), ==, 0);
  g_assert_cmpfloat (dp_test_rel_l2 (ref.data, g.out_guided.data, dp_tensor_nelem (&ref)), <=, GOLDEN_TOL);
  dp_tensor_free (&v);
  dp_tensor_free (&ref);
  dp_wan_dit_free (dit);
  golden_close (&g);
}

/* ------------------------------------------------------------ feature cache */

/* Rows [r0, r0 + n) of batch entry b of a host tensor [.., B, R, D] at layer li. */
static const float *
cache_rows (const dp_tensor *t, int li, int b, int64_t r0)
{
  int64_t B = t->shape[1], R = t->shape[2], D = t->shape[3];
  return (const float *) t->data + ((li * B + b) * R + r0) * D;
}

/* Compares exported K/V (entry 0 = cond) with diffusers' to_k / to_v output
 * of the same frames. */
static void
check_cache_against_golden (const golden *g, const dp_tensor *kdev, const dp_tensor *vdev, int64_t row0)
{
  dp_tensor k = download (kdev), v = download (vdev);
  int nl = (int) k.shape[0];
  int64_t rows = k.shape[2], D = k.shape[3];
  for (int li = 0; li < nl; li++) {
    for (int which = 0; which < 2; which++) {
      char key[32];
      g_snprintf (key, sizeof key, which ? "self_v.%d" : "self_k.%d", li);
      dp_tensor ref = io_get (g->io, key);
      double e = dp_test_rel_l2 (cache_rows (which ? &v : &k, li, 0, 0), (const float *) ref.data + row0 * D, rows * D);
      g_assert_cmpfloat (e, <=, GOLDEN_TOL);
      dp_tensor_free (&ref);
    }
  }
  dp_tensor_free (&k);
  dp_tensor_free (&v);
}

/* The full sequence exports the K/V of its last frames; a span of the first
 * s frames that gets them as extra context at their full-sequence positions
 * reproduces the full output of its frames.  The span exports its first
 * frames into the very buffers it reads the extras from (the engine's
 * in-place cache slot), which must then hold those frames' K/V. */
static void
test_cache (gconstpointer data)
{
  const char *name = data;
  golden g;
  golden_open (&g, name);
  dp_wan_dit *dit = load (name, 0, -1);
  const dp_wan_config *c = dp_wan_dit_config (dit);
  const int F = (int) g.latent.shape[1], H = (int) g.latent.shape[2], W = (int) g.latent.shape[3];
  const int64_t hw = (H / c->patch_h) * (W / c->patch_w);
  const int s = F == 4 ? 2 : 3; /* span frames [0, s); extras [s, F) */
  const int ne = F - s;         /* extra frames = exported frames, so the buffers can be shared */
  const int B = 2;
  set_context (dit, &g, B);

  int64_t cshape[4] = { c->num_layers, B, ne * hw, c->dim };
  dp_tensor ck = device_new (4, cshape), cv = device_new (4, cshape);

  /* full sequence, exporting frames [s, F) */
  dp_wan_span full;
  dp_wan_span_init (&full, F, H, W);
  full.export_first = s;
  full.export_frames = ne;
  full.export_k = &ck;
  full.export_v = &cv;
  dp_tensor v_full = forward (dit, &g, &full, &g.latent, g.guidance, F);
  g_assert_cmpfloat (dp_test_rel_l2 (v_full.data, g.out_guided.data, dp_tensor_nelem (&v_full)), <=, GOLDEN_TOL);
  check_cache_against_golden (&g, &ck, &cv, s * hw);

  /* span [0, s) + extras at positions s..F-1, exporting frames [0, ne) in place */
  int extra_pos[8];
  for (int i = 0; i < ne; i++)
    extra_pos[i] = s + i;
  dp_wan_span span;
  dp_wan_span_init (&span, s, H, W);
  span.extra_frames = ne;
  span.extra_pos = extra_pos;
  span.extra_k = &ck;
  span.extra_v = &cv;
  span.export_first = 0;
  span.export_frames = ne;
  span.export_k = &ck;
  span.export_v = &cv;
  dp_tensor lat_s = host_frames (&g.latent, 0, s);
  dp_tensor v_span = forward (dit, &g, &span, &lat_s, g.guidance, s);
  dp_tensor ref = host_frames (&v_full, 0, s);
  double e = dp_test_rel_l2 (v_span.data, ref.data, dp_tensor_nelem (&ref));
  g_test_message ("%s: span [0, %d) with cached frames [%d, %d): relative L2 %.3g vs the full sequence", name, s, s,
                  F, e);
  g_assert_cmpfloat (e, <=, GOLDEN_TOL);
  check_cache_against_golden (&g, &ck, &cv, 0);

  /* without the extras the span's output is different: the test can fail */
  dp_wan_span_init (&span, s, H, W);
  dp_tensor v_alone = forward (dit, &g, &span, &lat_s, g.guidance, s);
  g_assert_cmpfloat (dp_test_rel_l2 (v_alone.data, ref.data, dp_tensor_nelem (&ref)), >, 1e-3);

  dp_tensor_free (&v_alone);
  dp_tensor_free (&ref);
  dp_tensor_free (&v_span);
  dp_tensor_free (&lat_s);
  dp_tensor_free (&v_full);
  dp_backend_tensor_free (be, &ck);
  dp_backend_tensor_free (be, &cv);
  dp_wan_dit_free (dit);
  golden_close (&g);
}

/* ------------------------------------------------------------ positions */

/* RoPE scores depend on position differences only: shifting every frame
 * position leaves the output unchanged; other spacings change it. */
static void
test_positions (void)
{
  golden g;
  golden_open (&g, "tiny_a");
  dp_wan_dit *dit = load ("tiny_a", 0, -1);
  set_context (dit, &g, 1);
  const int F = (int) g.latent.shape[1];
  int shifted[8], spread[8];
  for (int i = 0; i < F; i++) {
    shifted[i] = 7 + i;
    spread[i] = 2 * i;
  }
  dp_wan_span span;
  dp_wan_span_init (&span, F, (int) g.latent.shape[2], (int) g.latent.shape[3]);
  span.frame_pos = shifted;
  dp_tensor v = forward (dit, &g, &span, &g.latent, 1.0f, F);
  double e = dp_test_rel_l2 (v.data, g.out_cond.data, dp_tensor_nelem (&v));
  g_test_message ("positions shifted by 7: relative L2 %.3g", e);
  g_assert_cmpfloat (e, <=, GOLDEN_TOL);
  dp_tensor_free (&v);
  span.frame_pos = spread;
  v = forward (dit, &g, &span, &g.latent, 1.0f, F);
  g_assert_cmpfloat (dp_test_rel_l2 (v.data, g.out_cond.data, dp_tensor_nelem (&v)), >, 1e-3);
  dp_tensor_free (&v);
  dp_wan_dit_free (dit);
  golden_close (&g);
}

/* A window embedded in two pieces equals one embedding; the head's output
 * range equals the matching frames of the full output. */
static void
test_partial (void)
{
  golden g;
  golden_open (&g, "tiny_b");
  GError *err = NULL;
  dp_wan_dit *dit = load ("tiny_b", 0, -1);
  const dp_wan_config *c = dp_wan_dit_config (dit);
  set_context (dit, &g, 2);
  const int F = (int) g.latent.shape[1], H = (int) g.latent.shape[2], W = (int) g.latent.shape[3];
  dp_wan_span span;
  dp_wan_span_init (&span, F, H, W);
  const int64_t L = dp_wan_span_tokens (dit, &span);
  int64_t hshape[3] = { 2, L, c->dim };
  dp_tensor h1 = device_new (3, hshape), h2 = device_new (3, hshape);

  dp_tensor lat = upload (&g.latent);
  g_assert_true (dp_wan_dit_embed (dit, &lat, 0, &h1, &err));
  g_assert_no_error (err);
  dp_tensor a = host_frames (&g.latent, 0, 2), b = host_frames (&g.latent, 2, F - 2);
  dp_tensor da = upload (&a), db = upload (&b);
  g_assert_true (dp_wan_dit_embed (dit, &db, 2, &h2, &err));
  g_assert_true (dp_wan_dit_embed (dit, &da, 0, &h2, &err));
  g_assert_no_error (err);
  dp_tensor x1 = download (&h1), x2 = download (&h2);
  g_assert_cmpfloat (dp_test_rel_l2 (x2.data, x1.data, dp_tensor_nelem (&x1)), <=, 1e-6);

  g_assert_true (dp_wan_dit_run_layers (dit, &span, g.timestep, &h1, &err));
  g_assert_no_error (err);
  span.out_first = 1;
  span.out_frames = 3;
  dp_tensor vel = device_new (4, (int64_t[]){ c->out_channels, 3, H, W });
  g_assert_true (dp_wan_dit_head (dit, &span, g.timestep, g.guidance, &h1, &vel, &err));
  g_assert_no_error (err);
  dp_tensor v = download (&vel), ref = host_frames (&g.out_guided, 1, 3);
  double e = dp_test_rel_l2 (v.data, ref.data, dp_tensor_nelem (&ref));
  g_assert_cmpfloat (e, <=, GOLDEN_TOL);

  /* reserving for a bigger span first: the calls then allocate nothing new */
  dp_wan_span big;
  dp_wan_span_init (&big, 2 * F, H, W);
  g_assert_true (dp_wan_dit_reserve (dit, &big, &err));
  g_assert_no_error (err);
  size_t mem = dp_wan_dit_memory_bytes (dit);
  g_assert_true (dp_wan_dit_head (dit, &span, g.timestep, g.guidance, &h1, &vel, &err));
  g_assert_cmpuint (dp_wan_dit_memory_bytes (dit), ==, mem);

  dp_tensor *hosts[] = { &a, &b, &x1, &x2, &v, &ref };
  for (guint i = 0; i < G_N_ELEMENTS (hosts); i++)
    dp_tensor_free (hosts[i]);
  dp_tensor *devs[] = { &h1, &h2, &lat, &da, &db, &vel };
  for (guint i = 0; i < G_N_ELEMENTS (devs); i++)
    dp_backend_tensor_free (be, devs[i]);
  dp_wan_dit_free (dit);
  golden_close (&g);
}

/* ------------------------------------------------------------ shared arena */

/* Two models sharing one activation arena (Wan2.2's two experts take turns):
 * their outputs equal those of a model with its own arena, bitwise, when the
 * sharer runs first, when it grows the shared arena and when the owner runs
 * after it; the arena is counted once, in its owner's memory. */
static void
test_shared_arena (void)
{
  golden g;
  golden_open (&g, "tiny_a");
  dp_wan_dit *owner = load ("tiny_a", 0, -1), *sharer = load ("tiny_a", 0, -1), *alone = load ("tiny_a", 0, -1);
  set_context (owner, &g, 1);
  set_context (sharer, &g, 1);
  set_context (alone, &g, 1);
  dp_wan_dit_share_arena (sharer, owner);
  const int F = (int) g.latent.shape[1], H = (int) g.latent.shape[2], W = (int) g.latent.shape[3];
  dp_tensor two = host_frames (&g.latent, 0, 2);
  dp_wan_span small, full;
  dp_wan_span_init (&small, 2, H, W);
  dp_wan_span_init (&full, F, H, W);
  /* sharer first, small; then the sharer grows the arena; then the owner */
  dp_tensor s_small = forward (sharer, &g, &small, &two, 1.0f, 2);
  const size_t owner_small = dp_wan_dit_memory_bytes (owner);
  dp_tensor s_full = forward (sharer, &g, &full, &g.latent, 1.0f, F);
  g_assert_cmpuint (dp_wan_dit_memory_bytes (owner), >, owner_small); /* the owner's arena grew */
  dp_tensor o_full = forward (owner, &g, &full, &g.latent, 1.0f, F);
  dp_tensor o_small = forward (owner, &g, &small, &two, 1.0f, 2);
  dp_tensor a_small = forward (alone, &g, &small, &two, 1.0f, 2);
  dp_tensor a_full = forward (alone, &g, &full, &g.latent, 1.0f, F);
  g_assert_cmpmem (s_small.data, dp_tensor_nbytes (&s_small), a_small.data, dp_tensor_nbytes (&a_small));
  g_assert_cmpmem (o_small.data, dp_tensor_nbytes (&o_small), a_small.data, dp_tensor_nbytes (&a_small));
  g_assert_cmpmem (s_full.data, dp_tensor_nbytes (&s_full), a_full.data, dp_tensor_nbytes (&a_full));
  g_assert_cmpmem (o_full.data, dp_tensor_nbytes (&o_full), a_full.data, dp_tensor_nbytes (&a_full));
  /* Same weights and context: the sharer holds the arena's size less. */
  const size_t m_owner = dp_wan_dit_memory_bytes (owner), m_sharer = dp_wan_dit_memory_bytes (sharer),
               m_alone = dp_wan_dit_memory_bytes (alone);
  g_test_message ("memory: owner %zu, sharer %zu, alone %zu bytes", m_owner, m_sharer, m_alone);
  g_assert_cmpuint (m_owner, ==, m_alone);
  g_assert_cmpuint (m_sharer, <, m_alone);
  /* Unshared again: its own arena, allocated on the next call. */
  dp_wan_dit_share_arena (sharer, NULL);
  dp_tensor u_small = forward (sharer, &g, &small, &two, 1.0f, 2);
  g_assert_cmpmem (u_small.data, dp_tensor_nbytes (&u_small), a_small.data, dp_tensor_nbytes (&a_small));
  g_assert_cmpuint (dp_wan_dit_memory_bytes (sharer), >, m_sharer);
  dp_tensor *ts[] = { &two, &s_small, &s_full, &o_full, &o_small, &a_small, &a_full, &u_small };
  for (guint i = 0; i < G_N_ELEMENTS (ts); i++)
    dp_tensor_free (ts[i]);
  dp_wan_dit_free (owner); /* before the sharer: the sharer no longer points at it */
  dp_wan_dit_free (sharer);
  dp_wan_dit_free (alone);
  golden_close (&g);
}

/* ------------------------------------------------------------ broken checkpoints */

/* A fresh copy of a golden transformer/ directory (caller removes it). */
static char *
copy_model (const char *name)
{
  char *tmp = dp_test_make_tmp_dir ("dp-wan-XXXXXX");
  char *src = transformer_dir (name);
  dp_test_copy_tree (src, tmp);
  g_free (src);
  return tmp;
}

typedef struct {
  const char *drop;   /* left out */
  const char *shrink; /* first dimension one smaller */
  const char *retype; /* labelled I32 (same bytes) */
  const char *add;    /* an extra F32 [4] tensor of this name */
  gboolean convert;   /* every tensor converted to dtype */
  dp_dtype dtype;
} st_edit;

/* Rewrites a safetensors file (src may equal dst) with an edit applied. */
static void
rewrite_safetensors (const char *src, const char *dst, const st_edit *ed)
{
  GError *err = NULL;
  dp_safetensors *st = dp_safetensors_open (src, &err);
  g_assert_no_error (err);
  dp_test_st_writer *w = dp_test_st_writer_new ();
  for (int i = 0; i < dp_safetensors_count (st); i++) {
    const char *name = dp_safetensors_name (st, i);
    if (ed->drop && !strcmp (name, ed->drop))
      continue;
    dp_tensor t;
    g_assert_true (dp_safetensors_get (st, name, -1, NULL, &t, &err));
    dp_tensor shape = dp_tensor_view (NULL, t.dtype, t.ndim, t.shape);
    const char *dtype = dp_dtype_name (t.dtype);
    if (ed->convert) {
      shape.dtype = ed->dtype;
      size_t n = dp_tensor_nbytes (&shape);
      void *blob = g_malloc (MAX (n, 1));
      dp_convert (blob, ed->dtype, t.data, t.dtype, (size_t) dp_tensor_nelem (&t));
      dp_test_st_writer_add (w, name, dp_dtype_name (ed->dtype), shape.ndim, shape.shape, blob, n);
      g_free (blob);
    } else {
      if (ed->shrink && !strcmp (name, ed->shrink))
        shape.shape[0] -= 1;
      if (ed->retype && !strcmp (name, ed->retype))
        dtype = "I32";
      dp_test_st_writer_add (w, name, dtype, shape.ndim, shape.shape, t.data, dp_tensor_nbytes (&shape));
    }
  }
  if (ed->add) {
    static const float four[4] = { 1, 2, 3, 4 };
    dp_test_st_writer_add (w, ed->add, "F32", 1, (int64_t[]){ 4 }, four, sizeof four);
  }
  /* The data is copied: the file may be replaced while st still maps it. */
  dp_safetensors_close (st);
  dp_test_st_writer_save (w, dst);
}

static void
write_converted_copy (const char *src_dir, const char *dst_dir, dp_dtype dtype)
{
  char *cfg_from = g_build_filename (src_dir, "config.json", NULL), *cfg_to = g_build_filename (dst_dir, "config.json", NULL);
  char *st_from = g_build_filename (src_dir, "diffusion_pytorch_model.safetensors", NULL);
  char *st_to = g_build_filename (dst_dir, "diffusion_pytorch_model.safetensors", NULL);
  gsize len = 0;
  char *text = dp_test_read_file (cfg_from, &len);
  g_assert_true (g_file_set_contents (cfg_to, text, len, NULL));
  st_edit ed = { .convert = TRUE, .dtype = dtype };
  rewrite_safetensors (st_from, st_to, &ed);
  g_free (text);
  g_free (cfg_from);
  g_free (cfg_to);
  g_free (st_from);
  g_free (st_to);
}

/* Edits a JSON file: member `key` of the object at `path_key` (NULL: the
 * root) is removed (value NULL) or set to the JSON text value. */
static void
edit_json (const char *file, const char *path_key, const char *key, const char *value)
{
  JsonParser *p = dp_test_parse_json (file);
  JsonObject *o = json_node_get_object (json_parser_get_root (p));
  if (path_key)
    o = json_object_get_object_member (o, path_key);
  if (!value) {
    g_assert_true (json_object_has_member (o, key));
    json_object_remove_member (o, key);
  } else {
    JsonNode *n = json_from_string (value, NULL);
    g_assert_nonnull (n);
    json_object_set_member (o, key, n);
  }
  dp_test_write_json (file, json_parser_get_root (p));
  g_object_unref (p);
}

/* Loading [begin, end) from dir fails with code and a message naming what. */
static void
expect_load_error (const char *dir, int begin, int end, dp_error_code code, const char *what)
{
  GError *err = NULL;
  dp_wan_dit *dit = dp_wan_dit_load (be, dir, begin, end, &err);
  g_assert_null (dit);
  g_assert_nonnull (err);
  g_test_message ("expected error: %s", err->message);
  g_assert_error (err, DP_ERROR, (int) code);
  g_assert_nonnull (strstr (err->message, what));
  g_error_free (err);
}

static void
test_errors_tensors (void)
{
  static const struct {
    st_edit ed;
    dp_error_code code;
    const char *what;
  } cases[] = {
    { { .drop = "blocks.1.attn2.to_v.bias" }, DP_ERROR_MISSING, "blocks.1.attn2.to_v.bias" },
    { { .drop = "patch_embedding.weight" }, DP_ERROR_MISSING, "patch_embedding.weight" },
    { { .shrink = "blocks.0.ffn.net.0.proj.weight" }, DP_ERROR_SHAPE, "blocks.0.ffn.net.0.proj.weight" },
    { { .shrink = "scale_shift_table" }, DP_ERROR_SHAPE, "scale_shift_table" },
    { { .retype = "condition_embedder.time_proj.weight" }, DP_ERROR_UNSUPPORTED, "condition_embedder.time_proj.weight" },
    { { .add = "blocks.7.attn1.to_q.weight" }, DP_ERROR_FORMAT, "blocks.7.attn1.to_q.weight" },
  };
  for (guint i = 0; i < G_N_ELEMENTS (cases); i++) {
    char *dir = copy_model ("tiny_a");
    char *st = g_build_filename (dir, "diffusion_pytorch_model.safetensors", NULL);
    rewrite_safetensors (st, st, &cases[i].ed);
    /* the whole model, and a stage that does not use the broken tensor */
    expect_load_error (dir, 0, -1, cases[i].code, cases[i].what);
    expect_load_error (dir, 1, 1, cases[i].code, cases[i].what);
    g_free (st);
    dp_test_remove_tree (dir);
    g_free (dir);
  }
  /* an untouched rewrite loads: the edits above are what fails */
  char *dir = copy_model ("tiny_a");
  char *st = g_build_filename (dir, "diffusion_pytorch_model.safetensors", NULL);
  st_edit none = { 0 };
  rewrite_safetensors (st, st, &none);
  GError *err = NULL;
  dp_wan_dit *dit = dp_wan_dit_load (be, dir, 0, -1, &err);
  g_assert_no_error (err);
  dp_wan_dit_free (dit);
  g_free (st);
  dp_test_remove_tree (dir);
  g_free (dir);
}

static void
test_errors_config (void)
{
  static const struct {
    const char *key, *value;
    dp_error_code code;
    const char *what;
  } cases[] = {
    { "num_attention_heads", NULL, DP_ERROR_MISSING, "num_attention_heads" },
    { "patch_size", NULL, DP_ERROR_MISSING, "patch_size" },
    { "num_layers", "3", DP_ERROR_MISSING, "blocks.2." },       /* config says more layers than the file */
    { "num_layers", "1", DP_ERROR_FORMAT, "blocks.1." },        /* ... or fewer */
    { "ffn_dim", "96", DP_ERROR_SHAPE, "blocks.0.ffn.net.0.proj.weight" },
    { "text_dim", "\"32\"", DP_ERROR_FORMAT, "text_dim" },
    { "image_dim", "1280", DP_ERROR_UNSUPPORTED, "image_dim" },
    { "attention_head_dim", "15", DP_ERROR_UNSUPPORTED, "attention_head_dim" },
    { "_class_name", "\"WanVACETransformer3DModel\"", DP_ERROR_UNSUPPORTED, "WanVACETransformer3DModel" },
  };
  for (guint i = 0; i < G_N_ELEMENTS (cases); i++) {
    char *dir = copy_model ("tiny_a");
    char *cfg = g_build_filename (dir, "config.json", NULL);
    edit_json (cfg, NULL, cases[i].key, cases[i].value);
    expect_load_error (dir, 0, -1, cases[i].code, cases[i].what);
    g_free (cfg);
    dp_test_remove_tree (dir);
    g_free (dir);
  }
  char *dir = copy_model ("tiny_a");
  char *cfg = g_build_filename (dir, "config.json", NULL);
  g_assert_true (g_file_set_contents (cfg, "{ \"num_layers\": 2,", -1, NULL));
  expect_load_error (dir, 0, -1, DP_ERROR_FORMAT, "config.json");
  g_unlink (cfg);
  expect_load_error (dir, 0, -1, DP_ERROR_MISSING, "config.json");
  g_free (cfg);
  dp_test_remove_tree (dir);
  g_free (dir);
}

static void
test_errors_shards (void)
{
  const char *shard3 = "diffusion_pytorch_model-00003-of-00006.safetensors";
  const char *shard5 = "diffusion_pytorch_model-00005-of-00006.safetensors";
  const char *index = "diffusion_pytorch_model.safetensors.index.json";

  /* truncated shard */
  char *dir = copy_model ("tiny_b");
  char *p = g_build_filename (dir, shard3, NULL);
  gsize len = 0;
  char *text = dp_test_read_file (p, &len);
  g_assert_true (g_file_set_contents (p, text, len / 2, NULL));
  expect_load_error (dir, 0, -1, DP_ERROR_FORMAT, shard3);
  g_free (text);
  g_free (p);
  dp_test_remove_tree (dir);
  g_free (dir);

  /* missing shard */
  dir = copy_model ("tiny_b");
  p = g_build_filename (dir, shard5, NULL);
  g_unlink (p);
  expect_load_error (dir, 2, 3, DP_ERROR_MISSING, shard5);
  g_free (p);
  dp_test_remove_tree (dir);
  g_free (dir);

  /* a tensor left out of the index */
  dir = copy_model ("tiny_b");
  p = g_build_filename (dir, index, NULL);
  edit_json (p, "weight_map", "blocks.2.attn1.norm_k.weight", NULL);
  expect_load_error (dir, 0, 1, DP_ERROR_MISSING, "blocks.2.attn1.norm_k.weight");
  g_free (p);
  dp_test_remove_tree (dir);
  g_free (dir);

  /* no weights at all */
  dir = copy_model ("tiny_b");
  GDir *d = g_dir_open (dir, 0, NULL);
  const char *e;
  while ((e = g_dir_read_name (d)))
    if (g_str_has_suffix (e, ".safetensors") || g_str_has_suffix (e, ".json")) {
      if (!strcmp (e, "config.json"))
        continue;
      char *q = g_build_filename (dir, e, NULL);
      g_unlink (q);
      g_free (q);
    }
  g_dir_close (d);
  expect_load_error (dir, 0, -1, DP_ERROR_MISSING, "safetensors");
  dp_test_remove_tree (dir);
  g_free (dir);

  /* a directory that does not exist */
  expect_load_error ("/nonexistent/transformer", 0, -1, DP_ERROR_MISSING, "/nonexistent/transformer");
}

/* ------------------------------------------------------------ API misuse */

/* err is passed by address: it is read after the call has set it. */
static void
expect_error (gboolean ok, GError **errp, dp_error_code code, const char *what)
{
  GError *err = *errp;
  *errp = NULL;
  g_assert_false (ok);
  g_assert_nonnull (err);
  g_test_message ("expected error: %s", err->message);
  g_assert_error (err, DP_ERROR, (int) code);
  g_assert_nonnull (strstr (err->message, what));
  g_error_free (err);
}

static void
test_errors_api (void)
{
  golden g;
  golden_open (&g, "tiny_b");
  char *dir = transformer_dir ("tiny_b");
  expect_load_error (dir, 2, 1, DP_ERROR_INVALID, "layer range");
  expect_load_error (dir, 0, 4, DP_ERROR_INVALID, "layer range");

  GError *err = NULL;
  dp_wan_dit *dit = load ("tiny_b", 0, -1);
  const dp_wan_config *c = dp_wan_dit_config (dit);
  g_assert_cmpint (c->num_heads, ==, 3);
  g_assert_cmpint (c->head_dim, ==, 24);
  g_assert_cmpint (c->dim, ==, 72);
  g_assert_cmpint (c->in_channels, ==, 8);
  g_assert_cmpint (c->out_channels, ==, 12);
  g_assert_cmpint (c->freq_dim, ==, 128);
  g_assert_cmpint (c->rope_max_seq_len, ==, 64);
  const int F = (int) g.latent.shape[1], H = (int) g.latent.shape[2], W = (int) g.latent.shape[3];
  dp_tensor lat = upload (&g.latent);
  dp_tensor vel = device_new (4, (int64_t[]){ c->out_channels, F, H, W });

  /* no context yet */
  err = NULL;
  expect_error (dp_wan_dit_forward (dit, NULL, &lat, 500, 5, &vel, &err), &err, DP_ERROR_INVALID, "context");
  /* context of the wrong width */
  dp_tensor bad_ctx = dp_tensor_new_host (DP_F32, 3, (int64_t[]){ 1, 4, c->text_dim + 1 });
  err = NULL;
  expect_error (dp_wan_dit_set_context (dit, &bad_ctx, &err), &err, DP_ERROR_SHAPE, "text context");
  dp_tensor_free (&bad_ctx);

  set_context (dit, &g, 2);
  /* latent of the wrong channel count, velocity of the wrong shape */
  dp_tensor vel_bad = device_new (4, (int64_t[]){ c->out_channels, F - 1, H, W });
  err = NULL;
  expect_error (dp_wan_dit_forward (dit, NULL, &lat, 500, 5, &vel_bad, &err), &err, DP_ERROR_SHAPE, "velocity");
  err = NULL;
  expect_error (dp_wan_dit_forward (dit, NULL, &vel, 500, 5, &vel, &err), &err, DP_ERROR_SHAPE, "latent");

  /* spans: bad size, position out of the RoPE range, cache tensors missing or misshapen */
  dp_tensor hidden = device_new (3, (int64_t[]){ 2, (int64_t) F * (H / 2) * (W / 2), c->dim });
  dp_wan_span span;
  dp_wan_span_init (&span, F, H + 1, W);
  err = NULL;
  expect_error (dp_wan_dit_run_layers (dit, &span, 500, &hidden, &err), &err, DP_ERROR_INVALID, "multiples");
  int far[5] = { 0, 1, 2, 3, 64 };
  dp_wan_span_init (&span, F, H, W);
  span.frame_pos = far;
  err = NULL;
  expect_error (dp_wan_dit_run_layers (dit, &span, 500, &hidden, &err), &err, DP_ERROR_INVALID, "frame_pos[4] = 64");
  int extra_pos[1] = { 5 };
  dp_wan_span_init (&span, F, H, W);
  span.extra_frames = 1;
  span.extra_pos = extra_pos;
  err = NULL;
  expect_error (dp_wan_dit_run_layers (dit, &span, 500, &hidden, &err), &err, DP_ERROR_INVALID, "extra_k");
  dp_tensor wrong = device_new (4, (int64_t[]){ 3, 2, 2 * (H / 2) * (W / 2), c->dim });
  span.extra_k = span.extra_v = &wrong;
  err = NULL;
  expect_error (dp_wan_dit_run_layers (dit, &span, 500, &hidden, &err), &err, DP_ERROR_SHAPE, "extra_k");
  dp_wan_span_init (&span, F, H, W);
  span.export_first = 3;
  span.export_frames = 3;
  err = NULL;
  expect_error (dp_wan_dit_run_layers (dit, &span, 500, &hidden, &err), &err, DP_ERROR_INVALID, "export");
  /* hidden states of the wrong length */
  dp_wan_span_init (&span, F - 1, H, W);
  err = NULL;
  expect_error (dp_wan_dit_run_layers (dit, &span, 500, &hidden, &err), &err, DP_ERROR_SHAPE, "hidden");

  /* stages without the embedding / the head */
  dp_wan_dit *mid = load ("tiny_b", 1, 2);
  g_assert_false (dp_wan_dit_has_embed (mid));
  g_assert_false (dp_wan_dit_has_head (mid));
  set_context (mid, &g, 2);
  dp_wan_span_init (&span, F, H, W);
  err = NULL;
  expect_error (dp_wan_dit_embed (mid, &lat, 0, &hidden, &err), &err, DP_ERROR_INVALID, "patch embedding");
  err = NULL;
  expect_error (dp_wan_dit_head (mid, &span, 500, 5, &hidden, &vel, &err), &err, DP_ERROR_INVALID, "head");
  err = NULL;
  expect_error (dp_wan_dit_forward (mid, NULL, &lat, 500, 5, &vel, &err), &err, DP_ERROR_INVALID, "every layer");
  /* embedding past the end of the hidden states */
  err = NULL;
  expect_error (dp_wan_dit_embed (dit, &lat, 1, &hidden, &err), &err, DP_ERROR_SHAPE, "do not fit");

  dp_wan_dit_free (mid);
  dp_tensor *devs[] = { &lat, &vel, &vel_bad, &hidden, &wrong };
  for (guint i = 0; i < G_N_ELEMENTS (devs); i++)
    dp_backend_tensor_free (be, devs[i]);
  dp_wan_dit_free (dit);
  g_free (dir);
  golden_close (&g);
}

/* ------------------------------------------------------------ per-token timesteps (TI2V) */

/* tests/data/ti2v (tools/make_ti2v_golden.py): the TI2V-5B-shaped tiny
 * transformer (48 channels) with a timestep per frame: 900 900 0 375 900. */
typedef struct {
  dp_safetensors *io;
  dp_wan_dit *dit;
  dp_tensor latent, context, frame_t, cond, uncond;
} ti2v_golden;

static void
ti2v_open (ti2v_golden *t)
{
  GError *err = NULL;
  char *path = dp_test_data_path ("ti2v", "golden.safetensors", NULL);
  char *dir = dp_test_data_path ("ti2v", "tiny-ti2v", "transformer", NULL);
  memset (t, 0, sizeof *t);
  t->io = dp_safetensors_open (path, &err);
  g_assert_no_error (err);
  t->latent = io_get (t->io, "dit.latent");
  t->context = io_get (t->io, "dit.context");
  t->frame_t = io_get (t->io, "dit.frame_timesteps");
  t->cond = io_get (t->io, "dit.cond");
  t->uncond = io_get (t->io, "dit.uncond");
  t->dit = dp_wan_dit_load (be, dir, 0, -1, &err);
  g_assert_no_error (err);
  g_assert_cmpint (dp_wan_dit_config (t->dit)->in_channels, ==, 48);
  g_free (path);
  g_free (dir);
}

static void
ti2v_close (ti2v_golden *t)
{
  dp_tensor *ts[] = { &t->latent, &t->context, &t->frame_t, &t->cond, &t->uncond };
  for (guint i = 0; i < G_N_ELEMENTS (ts); i++)
    dp_tensor_free (ts[i]);
  dp_wan_dit_free (t->dit);
  dp_safetensors_close (t->io);
}

/* Context entries [0, B) of the golden's [2, Lt, td] on dit. */
static void
ti2v_context (dp_wan_dit *dit, const ti2v_golden *t, int B)
{
  GError *err = NULL;
  dp_tensor ctx = dp_tensor_view (t->context.data, DP_F32, 3, (int64_t[]){ B, t->context.shape[1], t->context.shape[2] });
  g_assert_true (dp_wan_dit_set_context (dit, &ctx, &err));
  g_assert_no_error (err);
}

/* Whole forward with per-frame timesteps (NULL: every frame at t). */
static dp_tensor
ti2v_forward (dp_wan_dit *dit, const dp_tensor *latent_host, const float *frame_t, float t, float guidance)
{
  GError *err = NULL;
  const dp_wan_config *c = dp_wan_dit_config (dit);
  dp_wan_span span;
  dp_wan_span_init (&span, (int) latent_host->shape[1], (int) latent_host->shape[2], (int) latent_host->shape[3]);
  span.frame_timesteps = frame_t;
  dp_tensor lat = upload (latent_host);
  dp_tensor vel = device_new (4, (int64_t[]){ c->out_channels, latent_host->shape[1], latent_host->shape[2],
                                              latent_host->shape[3] });
  g_assert_true (dp_wan_dit_forward (dit, &span, &lat, t, guidance, &vel, &err));
  g_assert_no_error (err);
  dp_tensor out = download (&vel);
  dp_backend_tensor_free (be, &lat);
  dp_backend_tensor_free (be, &vel);
  return out;
}

/* Against diffusers' 2-D timestep: conditional (B = 1), unconditional and
 * guided (B = 2); the per-token path matters (one timestep for all differs). */
static void
test_ti2v_golden (void)
{
  ti2v_golden t;
  ti2v_open (&t);
  const float *ft = t.frame_t.data;
  const size_t n = dp_tensor_nelem (&t.cond);

  ti2v_context (t.dit, &t, 1);
  /* the timestep argument is ignored when the span has frame_timesteps */
  dp_tensor v = ti2v_forward (t.dit, &t.latent, ft, 123.0f, 5.0f);
  double e_cond = dp_test_rel_l2 (v.data, t.cond.data, n);
  dp_tensor_free (&v);
  v = ti2v_forward (t.dit, &t.latent, NULL, 900.0f, 5.0f);
  double flat = dp_test_rel_l2 (v.data, t.cond.data, n);
  dp_tensor_free (&v);

  ti2v_context (t.dit, &t, 2);
  v = ti2v_forward (t.dit, &t.latent, ft, 0.0f, 0.0f);
  double e_uncond = dp_test_rel_l2 (v.data, t.uncond.data, n);
  dp_tensor_free (&v);
  v = ti2v_forward (t.dit, &t.latent, ft, 0.0f, 5.0f);
  float *want = g_new (float, n);
  for (size_t i = 0; i < n; i++) {
    float c = ((float *) t.cond.data)[i], u = ((float *) t.uncond.data)[i];
    want[i] = u + 5.0f * (c - u);
  }
  double e_guided = dp_test_rel_l2 (v.data, want, n);
  dp_tensor_free (&v);
  g_free (want);

  g_test_message ("ti2v per-token timesteps: relative L2 cond %.3g uncond %.3g guided %.3g; one timestep "
                  "for every token is %.3g away", e_cond, e_uncond, e_guided, flat);
  g_assert_cmpfloat (e_cond, <=, GOLDEN_TOL);
  g_assert_cmpfloat (e_uncond, <=, GOLDEN_TOL);
  g_assert_cmpfloat (e_guided, <=, GOLDEN_TOL);
  g_assert_cmpfloat (flat, >, 1e-2);
  ti2v_close (&t);
}

/* Equal per-frame timesteps are bitwise the scalar path; stages (layers,
 * head) split with per-token timesteps are bitwise one pass; a head over a
 * frame range equals those frames of the whole output. */
static void
test_ti2v_invariants (void)
{
  GError *err = NULL;
  ti2v_golden t;
  ti2v_open (&t);
  const int F = (int) t.latent.shape[1], H = (int) t.latent.shape[2], W = (int) t.latent.shape[3];
  const float *ft = t.frame_t.data;
  float same[8];
  for (int f = 0; f < F; f++)
    same[f] = 375.0f;
  ti2v_context (t.dit, &t, 2);
  dp_tensor a = ti2v_forward (t.dit, &t.latent, NULL, 375.0f, 4.0f);
  dp_tensor b = ti2v_forward (t.dit, &t.latent, same, 0.0f, 4.0f);
  g_assert_cmpint (memcmp (a.data, b.data, dp_tensor_nbytes (&a)), ==, 0);
  dp_tensor_free (&a);
  dp_tensor_free (&b);

  dp_tensor ref = ti2v_forward (t.dit, &t.latent, ft, 0.0f, 4.0f);
  /* The time slots (4, least recently used replaced): calls with 4 other
   * values each evict every slot; the first values then come back equal. */
  float others[2][8] = { { 10, 20, 30, 40, 10 }, { 50, 60, 70, 80, 50 } };
  for (int k = 0; k < 2; k++) {
    dp_tensor o = ti2v_forward (t.dit, &t.latent, others[k], 0.0f, 4.0f);
    g_assert_true (memcmp (o.data, ref.data, dp_tensor_nbytes (&ref)) != 0);
    dp_tensor_free (&o);
  }
  dp_tensor again = ti2v_forward (t.dit, &t.latent, ft, 0.0f, 4.0f);
  g_assert_cmpint (memcmp (again.data, ref.data, dp_tensor_nbytes (&ref)), ==, 0);
  dp_tensor_free (&again);
  /* stages [0, 1) (embedding), [1, 2) (head) */
  char *dir = dp_test_data_path ("ti2v", "tiny-ti2v", "transformer", NULL);
  dp_wan_dit *s0 = dp_wan_dit_load (be, dir, 0, 1, &err);
  g_assert_no_error (err);
  dp_wan_dit *s1 = dp_wan_dit_load (be, dir, 1, 2, &err);
  g_assert_no_error (err);
  g_free (dir);
  ti2v_context (s0, &t, 2);
  ti2v_context (s1, &t, 2);
  dp_wan_span span;
  dp_wan_span_init (&span, F, H, W);
  span.frame_timesteps = ft;
  const int64_t L = dp_wan_span_tokens (s0, &span);
  dp_tensor hidden = device_new (3, (int64_t[]){ 2, L, dp_wan_dit_config (s0)->dim });
  dp_tensor lat = upload (&t.latent);
  dp_tensor vel = device_new (4, (int64_t[]){ 48, F, H, W });
  g_assert_true (dp_wan_dit_embed (s0, &lat, 0, &hidden, &err));
  g_assert_true (dp_wan_dit_run_layers (s0, &span, 0.0f, &hidden, &err));
  g_assert_true (dp_wan_dit_run_layers (s1, &span, 0.0f, &hidden, &err));
  g_assert_true (dp_wan_dit_head (s1, &span, 0.0f, 4.0f, &hidden, &vel, &err));
  g_assert_no_error (err);
  dp_tensor v = download (&vel);
  g_assert_cmpint (memcmp (v.data, ref.data, dp_tensor_nbytes (&ref)), ==, 0);
  dp_tensor_free (&v);
  dp_backend_tensor_free (be, &vel);

  /* the head over frames [2, 4): a run boundary inside the range */
  span.out_first = 2;
  span.out_frames = 2;
  vel = device_new (4, (int64_t[]){ 48, 2, H, W });
  g_assert_true (dp_wan_dit_head (s1, &span, 0.0f, 4.0f, &hidden, &vel, &err));
  g_assert_no_error (err);
  v = download (&vel);
  dp_tensor want = host_frames (&ref, 2, 2);
  g_assert_cmpfloat (dp_test_rel_l2 (v.data, want.data, dp_tensor_nelem (&want)), <=, 1e-6);
  dp_tensor_free (&want);
  dp_tensor_free (&v);
  dp_backend_tensor_free (be, &vel);

  /* too many distinct values, a bad value */
  float five[8] = { 1, 2, 3, 4, 5 }, bad[8] = { 1, 1, -1, 1, 1 };
  span.out_first = span.out_frames = 0;
  span.frame_timesteps = five;
  g_assert_false (dp_wan_dit_run_layers (s0, &span, 0.0f, &hidden, &err));
  g_assert_error (err, DP_ERROR, DP_ERROR_INVALID);
  g_assert_nonnull (strstr (err->message, "distinct"));
  g_clear_error (&err);
  span.frame_timesteps = bad;
  g_assert_false (dp_wan_dit_run_layers (s0, &span, 0.0f, &hidden, &err));
  g_assert_error (err, DP_ERROR, DP_ERROR_INVALID);
  g_assert_nonnull (strstr (err->message, "frame 2"));
  g_clear_error (&err);

  dp_backend_tensor_free (be, &hidden);
  dp_backend_tensor_free (be, &lat);
  dp_tensor_free (&ref);
  dp_wan_dit_free (s0);
  dp_wan_dit_free (s1);
  ti2v_close (&t);
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  GError *err = NULL;
  be = dp_backend_new ("cpu", &err);
  g_assert_no_error (err);

  g_test_add_data_func ("/wan_dit/golden/tiny_a", "tiny_a", test_golden);
  g_test_add_data_func ("/wan_dit/golden/tiny_b", "tiny_b", test_golden);
  g_test_add_data_func ("/wan_dit/golden-layers/tiny_a", "tiny_a", test_golden_layers);
  g_test_add_data_func ("/wan_dit/golden-layers/tiny_b", "tiny_b", test_golden_layers);
  g_test_add_func ("/wan_dit/golden/f16-checkpoint", test_golden_f16);
  g_test_add_func ("/wan_dit/ti2v/golden", test_ti2v_golden);
  g_test_add_func ("/wan_dit/ti2v/invariants", test_ti2v_invariants);
  g_test_add_func ("/wan_dit/cancel", test_cancel);
  g_test_add_func ("/wan_dit/stages", test_stages);
  g_test_add_data_func ("/wan_dit/cache/tiny_a", "tiny_a", test_cache);
  g_test_add_data_func ("/wan_dit/cache/tiny_b", "tiny_b", test_cache);
  g_test_add_func ("/wan_dit/positions", test_positions);
  g_test_add_func ("/wan_dit/partial", test_partial);
  g_test_add_func ("/wan_dit/shared-arena", test_shared_arena);
  g_test_add_func ("/wan_dit/errors/tensors", test_errors_tensors);
  g_test_add_func ("/wan_dit/errors/config", test_errors_config);
  g_test_add_func ("/wan_dit/errors/shards", test_errors_shards);
  g_test_add_func ("/wan_dit/errors/api", test_errors_api);

  int rc = g_test_run ();
  dp_backend_free (be);
  return rc;
}
