/* GPU tests of the video path around the VAE (issue 22), against the CPU
 * backend or the GPU's own untiled / inline path:
 *
 * - pinned: the CUDA backend's page-locked host memory (host_alloc):
 *   dp_backend_host_alloc says it is pinned, to_host copies into it queued
 *   behind a kernel that writes the source arrive intact after one sync,
 *   and the helper falls back to malloc on the CPU backend.
 * - tiled: the tiled decode on the GPU against the tiled decode on the CPU
 *   (tests/data/vae, a fresh [16, 3, 8, 12] latent, 32-pixel tiles with a
 *   24-pixel stride: a 3 x 4 grid), relative L2 <= 3e-2 (the untiled
 *   GPU test's tolerance: BF16 GEMMs inside the convs); a tile covering the
 *   frame gives bitwise the GPU's untiled frames.
 * - decode thread (generator, tests/data/pipeline/tiny-wan, DualParal engine
 *   on "0"): vae_thread (the VAE on a second CUDA backend, its own stream)
 *   gives the same bytes as decoding inline on stage 0's backend (the same
 *   kernels on the same data: expected bitwise; the test asserts it);
 *   vae_device "cpu" (the VAE on the CPU while the DiT runs on the GPU)
 *   within 2 levels for >= 99% of the bytes (F32 against BF16 convs);
 *   vae_tile with vae_thread equals vae_tile inline.
 * - cuDNN conv3d (DP_CUDA_CONV=cudnn; skipped, with the reason, when
 *   libcudnn.so.9 cannot be opened): the VAE's conv shapes (3x3x3 over
 *   [cache | x] without time padding, 1x3x3, 3x1x1, 1x1x1, with and without
 *   bias) against the CPU backend's conv3d, rel L2 <= 1e-2 (TF32 tensor
 *   cores), and the path proven taken; an asymmetric time padding falls back
 *   to im2col; the whole VAE decode with cuDNN against the CPU, 3e-2.
 * - text encoder holder (keep_text_encoder) on the GPU (tests/data/t5, BF16
 *   weights): freed after each use it gives its device memory back (the
 *   backend's allocated bytes return to what they were) and encodes the
 *   same as when kept; kept, it stays allocated.
 *
 * Without a CUDA device the program exits 77 (meson's "skipped").
 * Status: written and compiled without a GPU (issue 22); not run yet. */
#include <math.h>
#include <string.h>

#include "dualparal/backend.h"
#include "dualparal/generator.h"
#include "dualparal/safetensors.h"
#include "dualparal/umt5.h"
#include "dualparal/wan_vae.h"
#include "cuda_backend.h"

static GRand *rng;

static dp_backend *
backend (const char *spec)
{
  GError *err = NULL;
  dp_backend *be = dp_backend_new (spec, &err);
  g_assert_no_error (err);
  g_assert_nonnull (be);
  return be;
}

static char *
data_path (const char *a, const char *b)
{
  const char *root = g_getenv ("DP_TEST_DATA");
  g_assert_nonnull (root);
  return g_build_filename (root, a, b, NULL);
}

/* ---- pinned host memory ---------------------------------------------------- */

static void
test_pinned (void)
{
  GError *err = NULL;
  dp_backend *gpu = backend ("cuda");
  const int64_t n = 3 << 20;
  gboolean pinned = FALSE;
  float *host = dp_backend_host_alloc (gpu, n * sizeof (float), &pinned);
  g_assert_nonnull (host);
  g_assert_true (pinned);
  /* The source is written by queued work (fill), then copied without a
   * sync in between: the copy must come after the fill in stream order. */
  dp_tensor dev = dp_backend_tensor_new (gpu, DP_F32, 1, &n);
  g_assert_nonnull (dev.data);
  gpu->ops->fill (gpu, &dev, 1.5f);
  dp_tensor h = dp_tensor_view (host, DP_F32, 1, &n);
  memset (host, 0, n * sizeof (float));
  gpu->ops->to_host (gpu, &h, &dev);
  g_assert_true (gpu->ops->sync (gpu, &err));
  g_assert_no_error (err);
  for (int64_t i = 0; i < n; i++)
    if (host[i] != 1.5f)
      g_error ("pinned copy: element %" G_GINT64_FORMAT " is %g, expected 1.5", i, host[i]);
  /* And back: to_device from pinned memory. */
  for (int64_t i = 0; i < n; i++)
    host[i] = (float) i;
  gpu->ops->to_device (gpu, &dev, &h);
  memset (host, 0, n * sizeof (float));
  gpu->ops->to_host (gpu, &h, &dev);
  g_assert_true (gpu->ops->sync (gpu, &err));
  for (int64_t i = 0; i < n; i += 4099)
    g_assert_cmpfloat (host[i], ==, (float) i);
  dp_backend_tensor_free (gpu, &dev);
  dp_backend_host_free (gpu, host, pinned);
  g_assert_true (gpu->ops->sync (gpu, &err));
  g_assert_no_error (err);
  dp_backend_free (gpu);

  dp_backend *cpu = backend ("cpu");
  void *p = dp_backend_host_alloc (cpu, 1024, &pinned);
  g_assert_nonnull (p);
  g_assert_false (pinned);
  dp_backend_host_free (cpu, p, pinned);
  dp_backend_free (cpu);
}

/* ---- tiled decode ------------------------------------------------------------ */

/* Decodes latent (host [16, F, h, w]) on spec with tiling; the clamped video
 * [3, frames, H, W]. */
static float *
decode_on (const char *spec, const dp_tensor *latent, const dp_wan_vae_tiling *tiling, int *rows, int *cols,
           int64_t *count)
{
  GError *err = NULL;
  dp_backend *be = backend (spec);
  char *dir = data_path ("vae", "vae");
  dp_wan_vae *vae = dp_wan_vae_load (be, dir, &err);
  g_assert_no_error (err);
  const int h = (int) latent->shape[2], w = (int) latent->shape[3];
  const int64_t F = latent->shape[1], frames = dp_wan_vae_num_frames (vae, F);
  dp_wan_vae_decoder *dec = dp_wan_vae_decoder_new_tiled (vae, h, w, tiling, &err);
  g_assert_no_error (err);
  dp_wan_vae_decoder_get_tiles (dec, rows, cols);
  int W, H;
  dp_wan_vae_decoder_get_size (dec, &W, &H);
  const int64_t hw = (int64_t) H * W;
  *count = 3 * frames * hw;
  float *video = g_new (float, *count), *chunk = g_new (float, 3 * 4 * hw);
  for (int64_t i = 0; i < *count; i++)
    video[i] = NAN;
  dp_tensor lat = dp_backend_tensor_new (be, DP_F32, 4, latent->shape);
  be->ops->to_device (be, &lat, latent);
  int64_t done = 0;
  for (int64_t f = 0; f < F; f++) {
    int n = 0;
    g_assert_true (dp_wan_vae_decoder_push (dec, &lat, f, NULL, chunk, &n, &err));
    g_assert_no_error (err);
    for (int c = 0; c < 3; c++)
      memcpy (video + (c * frames + done) * hw, chunk + c * n * hw, n * hw * sizeof (float));
    done += n;
  }
  g_assert_cmpint (done, ==, frames);
  dp_backend_tensor_free (be, &lat);
  dp_wan_vae_decoder_free (dec);
  dp_wan_vae_free (vae);
  g_assert_true (be->ops->sync (be, &err));
  dp_backend_free (be);
  g_free (dir);
  g_free (chunk);
  return video;
}

static double
rel_l2 (const float *a, const float *ref, int64_t n)
{
  double d = 0, r = 0;
  for (int64_t i = 0; i < n; i++) {
    if (!isfinite (a[i]) || !isfinite (ref[i]))
      g_error ("element %" G_GINT64_FORMAT " is %g (reference %g)", i, a[i], ref[i]);
    d += ((double) a[i] - ref[i]) * ((double) a[i] - ref[i]);
    r += (double) ref[i] * ref[i];
  }
  return r > 0 ? sqrt (d / r) : sqrt (d);
}

static void
test_tiled (void)
{
  const int64_t shape[4] = { 16, 3, 8, 12 };
  dp_tensor latent = dp_tensor_new_host (DP_F32, 4, shape);
  for (int64_t i = 0; i < dp_tensor_nelem (&latent); i++)
    ((float *) latent.data)[i] = (float) (g_rand_double_range (rng, -1.0, 1.0) + g_rand_double_range (rng, -1.0, 1.0));
  const dp_wan_vae_tiling tiles = { 32, 32, 24, 24 }, covering = { 64, 96, 64, 96 };
  int rows, cols, rows_c, cols_c;
  int64_t n, n2;
  float *cpu = decode_on ("cpu", &latent, &tiles, &rows, &cols, &n);
  float *gpu = decode_on ("cuda", &latent, &tiles, &rows_c, &cols_c, &n2);
  g_assert_cmpint (rows, ==, 3);
  g_assert_cmpint (cols, ==, 4);
  g_assert_cmpint (n2, ==, n);
  const double rel = rel_l2 (gpu, cpu, n);
  g_test_message ("tiled VAE (grid %dx%d), GPU against CPU: relative L2 %.3g (tolerance 3e-2)", rows, cols, rel);
  if (g_test_verbose ())
    g_printerr ("  tiled VAE %dx%d GPU vs CPU: rel L2 %.3e (tol 3e-02)\n", rows, cols, rel);
  g_assert_cmpfloat (rel, <=, 3e-2);

  float *whole = decode_on ("cuda", &latent, NULL, &rows, &cols, &n2);
  float *cover = decode_on ("cuda", &latent, &covering, &rows_c, &cols_c, &n2);
  g_assert_cmpint (rows_c * cols_c, ==, 1);
  g_assert_true (memcmp (whole, cover, n * sizeof (float)) == 0);
  g_free (cpu);
  g_free (gpu);
  g_free (whole);
  g_free (cover);
  dp_tensor_free (&latent);
}

/* ---- decode thread --------------------------------------------------------- */

typedef struct {
  GByteArray *rgb;
  int64_t frames;
} frame_sink;

static gboolean
sink_frames (const uint8_t *rgb, int n_frames, int64_t first_frame, const dp_progress *progress, void *data)
{
  (void) progress;
  frame_sink *s = data;
  g_assert_cmpint (first_frame, ==, s->frames);
  g_byte_array_append (s->rgb, rgb, (guint) (n_frames * 48 * 32 * 3));
  s->frames += n_frames;
  return TRUE;
}

static GByteArray *
generate (gboolean vae_thread, const char *vae_device, int vae_tile)
{
  GError *err = NULL;
  dp_generator_params p;
  dp_generator_params_init (&p);
  char *dir = data_path ("pipeline", "tiny-wan");
  p.model_dir = dir;
  p.prompt = "a red circle moves to the left";
  p.negative_prompt = "static";
  p.num_frames = 17;
  p.steps = 3;
  p.engine = DP_ENGINE_DUALPARAL;
  p.devices = "0";
  p.block_frames = 2;
  p.context_frames = 1;
  p.vae_thread = vae_thread;
  p.vae_device = vae_device;
  p.vae_tile = vae_tile;
  dp_generator *gen = dp_generator_new (&p, &err);
  g_assert_no_error (err);
  g_free (dir);
  frame_sink s = { g_byte_array_new (), 0 };
  g_assert_true (dp_generator_run (gen, sink_frames, &s, &err));
  g_assert_no_error (err);
  g_assert_cmpint (s.frames, ==, 17);
  dp_generator_free (gen);
  return s.rgb;
}

static void
test_decode_thread (void)
{
  GByteArray *inline_rgb = generate (FALSE, NULL, 0);
  GByteArray *threaded = generate (TRUE, NULL, 0);
  g_assert_cmpmem (threaded->data, threaded->len, inline_rgb->data, inline_rgb->len);

  GByteArray *on_cpu = generate (TRUE, "cpu", 0);
  g_assert_cmpuint (on_cpu->len, ==, inline_rgb->len);
  guint far = 0, maxd = 0;
  for (guint i = 0; i < on_cpu->len; i++) {
    const guint d = (guint) abs ((int) on_cpu->data[i] - (int) inline_rgb->data[i]);
    far += d > 2;
    maxd = MAX (maxd, d);
  }
  g_test_message ("VAE on the CPU, DiT on the GPU, against all on the GPU: largest difference %u levels, %u of %u "
                  "bytes beyond 2", maxd, far, on_cpu->len);
  g_assert_cmpuint (far, <=, on_cpu->len / 100);

  GByteArray *tiled_inline = generate (FALSE, NULL, 16);
  GByteArray *tiled_threaded = generate (TRUE, NULL, 16);
  g_assert_cmpmem (tiled_threaded->data, tiled_threaded->len, tiled_inline->data, tiled_inline->len);
  g_byte_array_unref (tiled_inline);
  g_byte_array_unref (tiled_threaded);
  g_byte_array_unref (on_cpu);
  g_byte_array_unref (threaded);
  g_byte_array_unref (inline_rgb);
}

/* ---- cuDNN conv3d ------------------------------------------------------------ */

static dp_tensor
random_host (int ndim, const int64_t *shape, double amp)
{
  dp_tensor t = dp_tensor_new_host (DP_F32, ndim, shape);
  for (int64_t i = 0; i < dp_tensor_nelem (&t); i++)
    ((float *) t.data)[i] = (float) g_rand_double_range (rng, -amp, amp);
  return t;
}

static dp_tensor
to_gpu (dp_backend *be, const dp_tensor *h)
{
  dp_tensor t = dp_backend_tensor_new (be, DP_F32, h->ndim, h->shape);
  g_assert_nonnull (t.data);
  be->ops->to_device (be, &t, h);
  return t;
}

static void
test_cudnn_conv (void)
{
  GError *err = NULL;
  char *why = NULL;
  dp_backend *gpu = backend ("cuda"), *cpu = backend ("cpu");
  if (!dp_cuda_backend_set_conv (gpu, DP_CUDA_CONV_CUDNN, &why)) {
    g_test_skip (why);
    g_printerr ("  cuDNN not usable: %s\n", why);
    g_free (why);
    dp_backend_free (gpu);
    dp_backend_free (cpu);
    return;
  }
  const struct {
    int cin, cout, t, h, w, kt, kh, kw, pt0, pt1, ph, pw;
    gboolean bias;
  } cases[] = {
    { 96, 96, 6, 30, 52, 3, 3, 3, 0, 0, 1, 1, TRUE },   /* a causal resnet conv over [cache 2 | 4 frames] */
    { 192, 96, 4, 20, 34, 1, 3, 3, 0, 0, 1, 1, TRUE },  /* the upsampler's 2-D conv */
    { 64, 128, 3, 12, 20, 3, 1, 1, 0, 0, 0, 0, FALSE }, /* the time conv */
    { 16, 16, 1, 8, 12, 1, 1, 1, 0, 0, 0, 0, TRUE },    /* post_quant_conv */
    { 24, 40, 2, 9, 11, 3, 3, 3, 2, 0, 1, 1, TRUE },    /* asymmetric (causal) padding: im2col */
  };
  for (guint i = 0; i < G_N_ELEMENTS (cases); i++) {
    const int To = cases[i].t + cases[i].pt0 + cases[i].pt1 - cases[i].kt + 1;
    const int64_t xs[4] = { cases[i].cin, cases[i].t, cases[i].h, cases[i].w };
    const int64_t ws[5] = { cases[i].cout, cases[i].cin, cases[i].kt, cases[i].kh, cases[i].kw };
    const int64_t bs[1] = { cases[i].cout };
    const int64_t ys[4] = { cases[i].cout, To, cases[i].h + 2 * cases[i].ph - cases[i].kh + 1,
                            cases[i].w + 2 * cases[i].pw - cases[i].kw + 1 };
    dp_tensor hx = random_host (4, xs, 1.0), hw = random_host (5, ws, 0.1), hb = random_host (1, bs, 0.5);
    dp_conv3d_params p = { 1, 1, 1, cases[i].pt0, cases[i].pt1, cases[i].ph, cases[i].pw };
    dp_tensor yc = dp_tensor_new_host (DP_F32, 4, ys), yg_host = dp_tensor_new_host (DP_F32, 4, ys);
    cpu->ops->conv3d (cpu, &yc, &hx, &hw, cases[i].bias ? &hb : NULL, &p);
    g_assert_true (cpu->ops->sync (cpu, &err));
    dp_tensor gx = to_gpu (gpu, &hx), gw = to_gpu (gpu, &hw), gb = to_gpu (gpu, &hb);
    dp_tensor gy = dp_backend_tensor_new (gpu, DP_F32, 4, ys);
    gpu->ops->conv3d (gpu, &gy, &gx, &gw, cases[i].bias ? &gb : NULL, &p);
    const gboolean took_cudnn = dp_cuda_backend_last_conv_was_cudnn (gpu);
    gpu->ops->to_host (gpu, &yg_host, &gy);
    g_assert_true (gpu->ops->sync (gpu, &err));
    g_assert_no_error (err);
    const double rel = rel_l2 (yg_host.data, yc.data, dp_tensor_nelem (&yc));
    const gboolean asym = cases[i].pt0 != cases[i].pt1;
    g_test_message ("conv3d %d -> %d, k %dx%dx%d, x [%d, %d, %d, %d]: %s, rel L2 %.3g", cases[i].cin,
                    cases[i].cout, cases[i].kt, cases[i].kh, cases[i].kw, cases[i].cin, cases[i].t, cases[i].h,
                    cases[i].w, took_cudnn ? "cuDNN" : "im2col", rel);
    if (g_test_verbose ())
      g_printerr ("  conv3d case %u (%s): rel L2 %.3e\n", i, took_cudnn ? "cuDNN" : "im2col", rel);
    g_assert_true (took_cudnn == !asym);
    g_assert_cmpfloat (rel, <=, 1e-2);
    dp_backend_tensor_free (gpu, &gx);
    dp_backend_tensor_free (gpu, &gw);
    dp_backend_tensor_free (gpu, &gb);
    dp_backend_tensor_free (gpu, &gy);
    dp_tensor_free (&hx);
    dp_tensor_free (&hw);
    dp_tensor_free (&hb);
    dp_tensor_free (&yc);
    dp_tensor_free (&yg_host);
  }
  dp_backend_free (gpu);
  dp_backend_free (cpu);

  /* The whole VAE decode with cuDNN convs, through DP_CUDA_CONV, against the CPU. */
  const int64_t shape[4] = { 16, 3, 8, 12 };
  dp_tensor latent = random_host (4, shape, 1.5);
  int rows, cols;
  int64_t n, n2;
  float *ref = decode_on ("cpu", &latent, NULL, &rows, &cols, &n);
  g_setenv ("DP_CUDA_CONV", "cudnn", TRUE);
  float *got = decode_on ("cuda", &latent, NULL, &rows, &cols, &n2);
  g_unsetenv ("DP_CUDA_CONV");
  const double rel = rel_l2 (got, ref, n);
  g_test_message ("VAE decode with cuDNN convs, GPU against CPU: rel L2 %.3g (tolerance 3e-2)", rel);
  if (g_test_verbose ())
    g_printerr ("  VAE decode (cuDNN) vs CPU: rel L2 %.3e\n", rel);
  g_assert_cmpfloat (rel, <=, 3e-2);
  g_free (ref);
  g_free (got);
  dp_tensor_free (&latent);
}

/* ---- text encoder holder ---------------------------------------------------- */

static void
test_umt5_holder (void)
{
  GError *err = NULL;
  dp_backend *gpu = backend ("cuda");
  char *te_dir = data_path ("t5", "model/text_encoder");
  const int32_t ids[4] = { 5, 9, 2, 1 };
  dp_tensor out[2] = { { 0 } };
  const size_t base = dp_cuda_backend_allocated_bytes (gpu);
  for (int keep = 0; keep < 2; keep++) {
    dp_umt5_holder *h = dp_umt5_holder_new (gpu, te_dir, keep, &err);
    g_assert_no_error (err);
    for (int use = 0; use < 2; use++) {
      dp_umt5 *m = dp_umt5_holder_acquire (h, &err);
      g_assert_no_error (err);
      dp_tensor_free (&out[keep]);
      g_assert_true (dp_umt5_encode (m, ids, 4, 16, &out[keep], &err));
      g_assert_no_error (err);
      const size_t held = dp_cuda_backend_allocated_bytes (gpu);
      dp_umt5_holder_release (h);
      const size_t after = dp_cuda_backend_allocated_bytes (gpu);
      g_test_message ("umT5 holder (keep %d): %zu bytes of device memory while encoding, %zu after release "
                      "(%zu before)", keep, held - base, after - base, base);
      g_assert_cmpuint (held, >, base);
      if (keep)
        g_assert_cmpuint (after, ==, held);
      else
        g_assert_cmpuint (after, ==, base);
    }
    g_assert_cmpint (dp_umt5_holder_loads (h), ==, keep ? 1 : 2);
    dp_umt5_holder_free (h);
  }
  g_assert_cmpuint (dp_cuda_backend_allocated_bytes (gpu), ==, base);
  g_assert_cmpmem (out[0].data, dp_tensor_nbytes (&out[0]), out[1].data, dp_tensor_nbytes (&out[1]));
  g_assert_true (gpu->ops->sync (gpu, &err));
  dp_tensor_free (&out[0]);
  dp_tensor_free (&out[1]);
  g_free (te_dir);
  dp_backend_free (gpu);
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  /* The CUDA code is linked in: register it rather than load the module. */
  dp_cuda_register ();
  if (!dp_backend_have_cuda () || dp_cuda_device_count () < 1) {
    g_print ("no CUDA device: GPU tests skipped\n");
    return 77;
  }
  rng = g_rand_new_with_seed ((guint32) g_get_real_time ());
  g_test_add_func ("/gpu/vae/pinned", test_pinned);
  g_test_add_func ("/gpu/vae/tiled", test_tiled);
  g_test_add_func ("/gpu/vae/decode_thread", test_decode_thread);
  g_test_add_func ("/gpu/umt5/holder", test_umt5_holder);
  g_test_add_func ("/gpu/vae/cudnn_conv", test_cudnn_conv);
  int rc = g_test_run ();
  g_rand_free (rng);
  return rc;
}
