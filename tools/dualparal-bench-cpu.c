/* dualparal-bench-cpu: time the Wan DiT forward pass on the CPU backend.
 *
 * Without --model it writes a random-weight transformer of the requested
 * size (diffusers layout) into a temporary directory, loads it like a real
 * checkpoint, and times guided forward passes (batch 2: conditional +
 * unconditional) on a latent of the requested size.  With --model it times
 * a real transformer/ directory instead.
 *
 *   dualparal-bench-cpu                       # small default configuration
 *   dualparal-bench-cpu --dim 512 --heads 4 --layers 4 --frames 5 --height 30 --width 52
 *   dualparal-bench-cpu --model /models/Wan2.1-T2V-1.3B-Diffusers/transformer --frames 1 --height 30 --width 52
 *   dualparal-bench-cpu --conv --device cpu:1  # the VAE's convs, against im2col + GEMM
 */
#include "dualparal/safetensors.h"
#include "dualparal/wan_dit.h"
#include "random_wan.h"

#include <stdio.h>
#include <string.h>

/* ------------------------------------------------------------ bench */

static dp_tensor
random_host (GRand *rng, int ndim, const int64_t *shape)
{
  dp_tensor t = dp_tensor_new_host (DP_F32, ndim, shape);
  float *d = t.data;
  for (int64_t i = 0; i < dp_tensor_nelem (&t); i++)
    d[i] = (float) g_rand_double_range (rng, -1.7, 1.7);
  return t;
}

/* ------------------------------------------------------------ conv3d */

/* Best time of `iters` conv3d calls on be, in ms. */
static double
time_conv (dp_backend *be, dp_tensor *y, const dp_tensor *x, const dp_tensor *w, const dp_tensor *b, int iters)
{
  const dp_conv3d_params p = { 1, 1, 1, 0, 0, 1, 1 }; /* the VAE's: [cache | x] in t, 1 pixel of padding */
  be->ops->conv3d (be, y, x, w, b, &p);           /* warm-up */
  double best = 1e30;
  for (int i = 0; i < iters; i++) {
    gint64 t0 = g_get_monotonic_time ();
    be->ops->conv3d (be, y, x, w, b, &p);
    best = MIN (best, (g_get_monotonic_time () - t0) / 1000.0);
  }
  return best;
}

/* The VAE decoder's 3x3x3 causal convs (4 frames + 2 cached) on each
 * route of the CPU backend (DP_CPU_CONV), and the backend's own choice
 * against im2col + GEMM, in the same run. */
static int
bench_conv (const char *device, int iters)
{
  static const int64_t shapes[][4] = {
    /* Cin, Cout, H, W: the embedded model's decoder (base_dim 12) ... */
    { 12, 12, 64, 64 }, { 24, 24, 32, 32 }, { 48, 48, 16, 16 }, { 48, 48, 8, 8 }, { 12, 3, 64, 64 },
    /* ... and wider ones (Wan's decoder has 96-384 channels, conv_out 96 -> 3) */
    { 32, 32, 64, 64 }, { 64, 64, 64, 64 }, { 96, 96, 64, 64 }, { 96, 3, 128, 128 }, { 192, 192, 32, 32 },
  };
  const char *routes[3] = { "im2col", "direct", "auto" };
  dp_backend *be[3];
  GError *err = NULL;
  for (int r = 0; r < 3; r++) {
    g_setenv ("DP_CPU_CONV", routes[r], TRUE);
    if (!(be[r] = dp_backend_new (device, &err))) {
      g_printerr ("error: %s\n", err->message);
      return 1;
    }
  }
  g_unsetenv ("DP_CPU_CONV");
  GRand *rng = g_rand_new_with_seed (3);
  printf ("conv3d 3x3x3, 4 frames + 2 cached, %s, best of %d\n", device, iters);
  printf ("%-10s %-9s %22s %22s %10s %9s\n", "channels", "size", "im2col + GEMM", "direct", "auto", "auto/im2col");
  for (guint i = 0; i < G_N_ELEMENTS (shapes); i++) {
    const int64_t Cin = shapes[i][0], Cout = shapes[i][1], H = shapes[i][2], W = shapes[i][3], T = 4;
    dp_tensor x = random_host (rng, 4, (int64_t[]){ Cin, T + 2, H, W });
    dp_tensor w = random_host (rng, 5, (int64_t[]){ Cout, Cin, 3, 3, 3 });
    dp_tensor b = random_host (rng, 1, (int64_t[]){ Cout });
    dp_tensor y = dp_tensor_new_host (DP_F32, 4, (int64_t[]){ Cout, T, H, W });
    double ms[3];
    for (int r = 0; r < 3; r++)
      ms[r] = time_conv (be[r], &y, &x, &w, &b, iters);
    const double gflop = 2.0 * Cout * Cin * 27 * T * H * W * 1e-9;
    char ch[32], sz[32];
    g_snprintf (ch, sizeof ch, "%" G_GINT64_FORMAT " -> %" G_GINT64_FORMAT, Cin, Cout);
    g_snprintf (sz, sizeof sz, "%" G_GINT64_FORMAT "x%" G_GINT64_FORMAT, H, W);
    printf ("%-10s %-9s %8.2f ms %6.1f GF/s %8.2f ms %6.1f GF/s %7.2f ms %8.2fx\n", ch, sz, ms[0],
            gflop / ms[0] * 1e3, ms[1], gflop / ms[1] * 1e3, ms[2], ms[0] / ms[2]);
    dp_tensor_free (&x);
    dp_tensor_free (&w);
    dp_tensor_free (&b);
    dp_tensor_free (&y);
  }
  int rc = 0;
  for (int r = 0; r < 3; r++)
    if (!dp_backend_check (be[r], &err)) {
      g_printerr ("error: %s\n", err->message);
      g_clear_error (&err);
      rc = 1;
    }
  for (int r = 0; r < 3; r++)
    dp_backend_free (be[r]);
  g_rand_free (rng);
  return rc;
}

/* ------------------------------------------------------------ main */

int
main (int argc, char **argv)
{
  random_wan_dit_size m = { .dim = 256, .heads = 4, .layers = 4, .ffn = 1024, .text_dim = 512, .freq_dim = 256, .channels = 16 };
  int frames = 5, height = 16, width = 24, text_len = 64, iters = 5;
  double guidance = 5.0;
  char *model = NULL, *device = NULL;
  gboolean conv = FALSE;
  GOptionEntry entries[] = {
    { "model", 'm', 0, G_OPTION_ARG_FILENAME, &model, "A diffusers transformer/ directory (default: random weights)", "DIR" },
    { "dim", 0, 0, G_OPTION_ARG_INT, &m.dim, "Random model: width (default 256)", "N" },
    { "heads", 0, 0, G_OPTION_ARG_INT, &m.heads, "Random model: attention heads (default 4)", "N" },
    { "layers", 0, 0, G_OPTION_ARG_INT, &m.layers, "Random model: blocks (default 4)", "N" },
    { "ffn", 0, 0, G_OPTION_ARG_INT, &m.ffn, "Random model: feed-forward width (default 1024)", "N" },
    { "text-dim", 0, 0, G_OPTION_ARG_INT, &m.text_dim, "Random model: text width (default 512)", "N" },
    { "frames", 'f', 0, G_OPTION_ARG_INT, &frames, "Latent frames (default 5)", "N" },
    { "height", 'H', 0, G_OPTION_ARG_INT, &height, "Latent height (default 16)", "N" },
    { "width", 'W', 0, G_OPTION_ARG_INT, &width, "Latent width (default 24)", "N" },
    { "text-len", 0, 0, G_OPTION_ARG_INT, &text_len, "Text tokens (default 64)", "N" },
    { "guidance", 'g', 0, G_OPTION_ARG_DOUBLE, &guidance, "Guidance scale; 1 runs batch 1 (default 5)", "G" },
    { "iters", 'n', 0, G_OPTION_ARG_INT, &iters, "Timed forward passes (default 5)", "N" },
    { "conv", 0, 0, G_OPTION_ARG_NONE, &conv, "Time the VAE's conv3d shapes instead: the backend's choice against im2col + GEMM", NULL },
    { "device", 'd', 0, G_OPTION_ARG_STRING, &device, "CPU backend: cpu (all CPUs, default) or cpu:N", "DEV" },
    { NULL },
  };
  GError *err = NULL;
  GOptionContext *ctx = g_option_context_new ("- time the Wan DiT forward pass on the CPU");
  g_option_context_add_main_entries (ctx, entries, NULL);
  if (!g_option_context_parse (ctx, &argc, &argv, &err)) {
    g_printerr ("%s\n", err->message);
    return 2;
  }
  g_option_context_free (ctx);
  if (conv)
    return bench_conv (device ? device : "cpu", MAX (iters, 1));
  if (m.dim < 1 || m.heads < 1 || m.dim % m.heads || m.layers < 0 || m.ffn < 1 || m.text_dim < 1 || frames < 1 ||
      height < 2 || width < 2 || text_len < 1 || iters < 1) {
    g_printerr ("bad sizes: need dim divisible by heads, positive sizes\n");
    return 2;
  }

  char *tmp = NULL;
  const char *dir = model;
  if (!dir) {
    tmp = g_dir_make_tmp ("dualparal-bench-XXXXXX", &err);
    if (!tmp || !random_wan_dit_write (tmp, &m, DP_F32, 1, &err)) {
      g_printerr ("cannot write the random model: %s\n", err->message);
      return 1;
    }
    dir = tmp;
  }

  int rc = 1;
  dp_backend *be = dp_backend_new (device ? device : "cpu", &err);
  dp_wan_dit *dit = NULL;
  dp_tensor lat = { 0 }, vel = { 0 }, context = { 0 }, latent_host = { 0 };
  GRand *rng = g_rand_new_with_seed (2);
  if (!be)
    goto out;
  gint64 t0 = g_get_monotonic_time ();
  dit = dp_wan_dit_load (be, dir, 0, -1, &err);
  if (!dit)
    goto out;
  const dp_wan_config *c = dp_wan_dit_config (dit);
  double load_ms = (g_get_monotonic_time () - t0) / 1000.0;
  int B = guidance == 1.0 ? 1 : 2;

  context = random_host (rng, 3, (int64_t[]){ B, text_len, c->text_dim });
  if (!dp_wan_dit_set_context (dit, &context, &err))
    goto out;
  latent_host = random_host (rng, 4, (int64_t[]){ c->in_channels, frames, height, width });
  lat = dp_backend_tensor_new (be, DP_F32, 4, latent_host.shape);
  vel = dp_backend_tensor_new (be, DP_F32, 4, (int64_t[]){ c->out_channels, frames, height, width });
  be->ops->to_device (be, &lat, &latent_host);

  dp_wan_span span;
  dp_wan_span_init (&span, frames, height, width);
  /* warm-up: sizes the arena, pages the weights in */
  if (!dp_wan_dit_forward (dit, NULL, &lat, 999.0f, (float) guidance, &vel, &err) || !be->ops->sync (be, &err))
    goto out;
  double best = 1e30, total = 0;
  for (int i = 0; i < iters; i++) {
    t0 = g_get_monotonic_time ();
    if (!dp_wan_dit_forward (dit, NULL, &lat, 900.0f - i, (float) guidance, &vel, &err) || !be->ops->sync (be, &err))
      goto out;
    double ms = (g_get_monotonic_time () - t0) / 1000.0;
    best = MIN (best, ms);
    total += ms;
  }
  /* A new text context (a prompt change, docs/algorithm.md "Prompt
   * changes"): the text embedding and every layer's cross-attention K/V. */
  double ctx_best = 1e30;
  for (int i = 0; i < MAX (2, iters / 2); i++) {
    t0 = g_get_monotonic_time ();
    if (!dp_wan_dit_set_context (dit, &context, &err) || !be->ops->sync (be, &err))
      goto out;
    ctx_best = MIN (ctx_best, (g_get_monotonic_time () - t0) / 1000.0);
  }
  int64_t tokens = dp_wan_span_tokens (dit, &span);
  printf ("model: %s\n", model ? model : "random weights");
  printf ("config: dim %d (%d heads x %d), ffn %d, %d layers, text %d x %d\n", c->dim, c->num_heads, c->head_dim,
          c->ffn_dim, c->num_layers, text_len, c->text_dim);
  printf ("latent: %d x %d x %d x %d -> %" G_GINT64_FORMAT " tokens, batch %d (guidance %.2f)\n", c->in_channels,
          frames, height, width, tokens, B, guidance);
  printf ("load: %.1f ms, memory %.1f MiB\n", load_ms, dp_wan_dit_memory_bytes (dit) / 1048576.0);
  printf ("forward: %.2f ms mean, %.2f ms best over %d runs (%.0f tokens/s)\n", total / iters, best, iters,
          tokens * B / (best / 1000.0));
  printf ("new text context: %.2f ms best (%.2f %% of a forward)\n", ctx_best, 100.0 * ctx_best / best);
  rc = 0;

out:
  if (rc)
    g_printerr ("error: %s\n", err ? err->message : "unknown");
  g_clear_error (&err);
  dp_tensor_free (&context);
  dp_tensor_free (&latent_host);
  if (be) {
    if (lat.data)
      dp_backend_tensor_free (be, &lat);
    if (vel.data)
      dp_backend_tensor_free (be, &vel);
  }
  dp_wan_dit_free (dit);
  dp_backend_free (be);
  g_rand_free (rng);
  if (tmp)
    random_wan_remove (tmp);
  g_free (tmp);
  g_free (model);
  return rc;
}
