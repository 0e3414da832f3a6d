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

int
main (int argc, char **argv)
{
  random_wan_dit_size m = { .dim = 256, .heads = 4, .layers = 4, .ffn = 1024, .text_dim = 512, .freq_dim = 256, .channels = 16 };
  int frames = 5, height = 16, width = 24, text_len = 64, iters = 5;
  double guidance = 5.0;
  char *model = NULL;
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
  dp_backend *be = dp_backend_new ("cpu", &err);
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
