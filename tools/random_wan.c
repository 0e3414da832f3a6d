/* Random Wan2.1 checkpoints for the benchmarks (random_wan.h). */
#include "random_wan.h"

#include "dualparal/backend.h"

#include <errno.h>
#include <glib/gstdio.h>
#include <math.h>
#include <stdio.h>

/* Two passes over the same tensor list: the first builds the header, the
 * second streams the data. */
typedef struct {
  FILE *f;
  GString *header;
  uint64_t offset;
  dp_dtype dtype;
  guint64 rng;         /* xorshift64* state: fast enough for the 9 GB text encoder */
  gboolean writing;
  GError **error;
  gboolean ok;
} writer;

/* Uniform in [mean - amp, mean + amp). */
static void
add_tensor (writer *w, const char *name, int ndim, const int64_t *shape, float amp, float mean)
{
  const size_t esize = dp_dtype_size (w->dtype);
  int64_t n = 1;
  for (int i = 0; i < ndim; i++)
    n *= shape[i];
  if (!w->writing) {
    g_string_append_printf (w->header, "%s\"%s\":{\"dtype\":\"%s\",\"shape\":[", w->header->len > 1 ? "," : "", name,
                            w->dtype == DP_F32 ? "F32" : "BF16");
    for (int i = 0; i < ndim; i++)
      g_string_append_printf (w->header, i ? ",%" G_GINT64_FORMAT : "%" G_GINT64_FORMAT, shape[i]);
    g_string_append_printf (w->header, "],\"data_offsets\":[%" G_GUINT64_FORMAT ",%" G_GUINT64_FORMAT "]}",
                            w->offset, w->offset + (uint64_t) n * esize);
    w->offset += (uint64_t) n * esize;
    return;
  }
  if (!w->ok)
    return;
  const int64_t chunk = 1 << 20;
  float *values = g_new (float, chunk);
  void *out = w->dtype == DP_F32 ? (void *) values : g_malloc ((size_t) chunk * esize);
  for (int64_t i = 0; i < n && w->ok; i += chunk) {
    const int64_t m = MIN (chunk, n - i);
    for (int64_t j = 0; j < m; j++) {
      w->rng ^= w->rng >> 12;
      w->rng ^= w->rng << 25;
      w->rng ^= w->rng >> 27;
      const double u = (double) ((w->rng * 0x2545F4914F6CDD1Dull) >> 11) * (1.0 / 9007199254740992.0);
      values[j] = mean + (float) ((2.0 * u - 1.0) * amp);
    }
    if (out != values)
      dp_convert (out, w->dtype, values, DP_F32, (size_t) m);
    if (fwrite (out, esize, (size_t) m, w->f) != (size_t) m) {
      g_set_error (w->error, DP_ERROR, DP_ERROR_IO, "cannot write the random model: %s", g_strerror (errno));
      w->ok = FALSE;
    }
  }
  if (out != values)
    g_free (out);
  g_free (values);
}

static void
add_linear (writer *w, const char *prefix, int64_t out, int64_t in)
{
  char name[160];
  g_snprintf (name, sizeof name, "%s.weight", prefix);
  add_tensor (w, name, 2, (int64_t[]){ out, in }, sqrtf (3.0f / (float) in), 0.0f);
  g_snprintf (name, sizeof name, "%s.bias", prefix);
  add_tensor (w, name, 1, (int64_t[]){ out }, 0.1f, 0.0f);
}

/* Every tensor of WanTransformer3DModel (text-to-video), in one order;
 * model: a random_wan_dit_size. */
static void
add_dit (writer *w, const void *model)
{
  const random_wan_dit_size *m = model;
  const int64_t D = m->dim;
  char name[160];
  add_tensor (w, "patch_embedding.weight", 5, (int64_t[]){ D, m->channels, 1, 2, 2 },
              sqrtf (3.0f / (4.0f * (float) m->channels)), 0.0f);
  add_tensor (w, "patch_embedding.bias", 1, (int64_t[]){ D }, 0.1f, 0.0f);
  add_linear (w, "condition_embedder.time_embedder.linear_1", D, m->freq_dim);
  add_linear (w, "condition_embedder.time_embedder.linear_2", D, D);
  add_linear (w, "condition_embedder.time_proj", 6 * D, D);
  add_linear (w, "condition_embedder.text_embedder.linear_1", D, m->text_dim);
  add_linear (w, "condition_embedder.text_embedder.linear_2", D, D);
  for (int n = 0; n < m->layers; n++) {
    static const char *lin[] = { "attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
                                 "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0" };
    static const char *norms[] = { "attn1.norm_q.weight", "attn1.norm_k.weight", "attn2.norm_q.weight",
                                   "attn2.norm_k.weight", "norm2.weight" };
    g_snprintf (name, sizeof name, "blocks.%d.scale_shift_table", n);
    add_tensor (w, name, 3, (int64_t[]){ 1, 6, D }, 0.5f, 0.0f);
    for (guint i = 0; i < G_N_ELEMENTS (lin); i++) {
      g_snprintf (name, sizeof name, "blocks.%d.%s", n, lin[i]);
      add_linear (w, name, D, D);
    }
    for (guint i = 0; i < G_N_ELEMENTS (norms); i++) {
      g_snprintf (name, sizeof name, "blocks.%d.%s", n, norms[i]);
      add_tensor (w, name, 1, (int64_t[]){ D }, 0.3f, 1.0f);
    }
    g_snprintf (name, sizeof name, "blocks.%d.norm2.bias", n);
    add_tensor (w, name, 1, (int64_t[]){ D }, 0.1f, 0.0f);
    g_snprintf (name, sizeof name, "blocks.%d.ffn.net.0.proj", n);
    add_linear (w, name, m->ffn, D);
    g_snprintf (name, sizeof name, "blocks.%d.ffn.net.2", n);
    add_linear (w, name, D, m->ffn);
  }
  add_tensor (w, "scale_shift_table", 3, (int64_t[]){ 1, 2, D }, 0.5f, 0.0f);
  add_linear (w, "proj_out", 4 * m->channels, D);
}

typedef void (*add_fn) (writer *w, const void *model);

/* Writes dir/diffusion_pytorch_model.safetensors: add() lists the tensors
 * twice, once for the header, once streaming their values. */
static gboolean
write_safetensors (const char *dir, add_fn add, const void *model, dp_dtype dtype, guint32 seed, GError **error)
{
  writer w = { .header = g_string_new ("{"), .dtype = dtype, .rng = 0x9E3779B97F4A7C15ull ^ ((guint64) seed << 17 | 1),
               .error = error, .ok = TRUE };
  add (&w, model);
  g_string_append_c (w.header, '}');
  while (w.header->len % 8)
    g_string_append_c (w.header, ' ');
  char *path = g_build_filename (dir, "diffusion_pytorch_model.safetensors", NULL);
  w.f = fopen (path, "wb");
  if (!w.f) {
    g_set_error (error, DP_ERROR, DP_ERROR_IO, "cannot create %s: %s", path, g_strerror (errno));
    w.ok = FALSE;
  } else {
    uint64_t hl = GUINT64_TO_LE ((uint64_t) w.header->len);
    if (fwrite (&hl, 8, 1, w.f) != 1 || fwrite (w.header->str, 1, w.header->len, w.f) != w.header->len) {
      g_set_error (error, DP_ERROR, DP_ERROR_IO, "cannot write %s", path);
      w.ok = FALSE;
    }
    w.writing = TRUE;
    if (w.ok)
      add (&w, model);
    if (fclose (w.f) != 0 && w.ok) {
      g_set_error (error, DP_ERROR, DP_ERROR_IO, "cannot write %s", path);
      w.ok = FALSE;
    }
  }
  g_free (path);
  g_string_free (w.header, TRUE);
  return w.ok;
}

gboolean
random_wan_dit_write (const char *dir, const random_wan_dit_size *m, dp_dtype dtype, guint32 seed, GError **error)
{
  g_return_val_if_fail (dtype == DP_F32 || dtype == DP_BF16, FALSE);
  if (!write_safetensors (dir, add_dit, m, dtype, seed, error))
    return FALSE;
  char *cfg_path = g_build_filename (dir, "config.json", NULL);
  char *cfg = g_strdup_printf (
    "{\"_class_name\": \"WanTransformer3DModel\", \"patch_size\": [1, 2, 2], \"num_attention_heads\": %d,"
    " \"attention_head_dim\": %d, \"in_channels\": %d, \"out_channels\": %d, \"text_dim\": %d,"
    " \"freq_dim\": %d, \"ffn_dim\": %d, \"num_layers\": %d, \"cross_attn_norm\": true,"
    " \"qk_norm\": \"rms_norm_across_heads\", \"eps\": 1e-06, \"rope_max_seq_len\": 1024}\n",
    m->heads, m->dim / m->heads, m->channels, m->channels, m->text_dim, m->freq_dim, m->ffn, m->layers);
  gboolean ok = g_file_set_contents (cfg_path, cfg, -1, error);
  g_free (cfg);
  g_free (cfg_path);
  return ok;
}

/* ---- VAE ---------------------------------------------------------------- */

enum { VAE_Z = 16, VAE_LEVELS = 4, VAE_RES_BLOCKS = 2 };
static const int vae_mult[VAE_LEVELS] = { 1, 2, 4, 4 };
static const gboolean vae_time_up[VAE_LEVELS - 1] = { TRUE, TRUE, FALSE }; /* temperal_downsample reversed */

/* A conv of cout x cin x (kt) x kh x kw (kt 0: a Conv2d weight) and its bias. */
static void
add_conv (writer *w, const char *prefix, int cout, int cin, int kt, int kh, int kw)
{
  char name[160];
  const int fan_in = cin * MAX (kt, 1) * kh * kw;
  g_snprintf (name, sizeof name, "%s.weight", prefix);
  if (kt)
    add_tensor (w, name, 5, (int64_t[]){ cout, cin, kt, kh, kw }, sqrtf (3.0f / (float) fan_in), 0.0f);
  else
    add_tensor (w, name, 4, (int64_t[]){ cout, cin, kh, kw }, sqrtf (3.0f / (float) fan_in), 0.0f);
  g_snprintf (name, sizeof name, "%s.bias", prefix);
  add_tensor (w, name, 1, (int64_t[]){ cout }, 0.05f, 0.0f);
}

static void
add_gamma (writer *w, const char *prefix, int c, int ndim)
{
  char name[160];
  g_snprintf (name, sizeof name, "%s.gamma", prefix);
  add_tensor (w, name, ndim, (int64_t[]){ c, 1, 1, 1 }, 0.2f, 1.0f);
}

static void
add_resnet (writer *w, const char *prefix, int cin, int cout)
{
  char name[160];
  g_snprintf (name, sizeof name, "%s.norm1", prefix);
  add_gamma (w, name, cin, 4);
  g_snprintf (name, sizeof name, "%s.conv1", prefix);
  add_conv (w, name, cout, cin, 3, 3, 3);
  g_snprintf (name, sizeof name, "%s.norm2", prefix);
  add_gamma (w, name, cout, 4);
  g_snprintf (name, sizeof name, "%s.conv2", prefix);
  add_conv (w, name, cout, cout, 3, 3, 3);
  if (cin != cout) {
    g_snprintf (name, sizeof name, "%s.conv_shortcut", prefix);
    add_conv (w, name, cout, cin, 1, 1, 1);
  }
}

/* The tensors of AutoencoderKLWan's decoder side, as core/src/model/wan_vae.c loads them. */
static void
add_vae (writer *w, const void *model)
{
  const int base = *(const int *) model;
  char name[160];
  int dims[VAE_LEVELS + 1];
  dims[0] = base * vae_mult[VAE_LEVELS - 1];
  for (int k = 1; k <= VAE_LEVELS; k++)
    dims[k] = base * vae_mult[VAE_LEVELS - k];
  add_conv (w, "post_quant_conv", VAE_Z, VAE_Z, 1, 1, 1);
  add_conv (w, "decoder.conv_in", dims[0], VAE_Z, 3, 3, 3);
  add_resnet (w, "decoder.mid_block.resnets.0", dims[0], dims[0]);
  add_gamma (w, "decoder.mid_block.attentions.0.norm", dims[0], 3);
  add_conv (w, "decoder.mid_block.attentions.0.to_qkv", 3 * dims[0], dims[0], 0, 1, 1);
  add_conv (w, "decoder.mid_block.attentions.0.proj", dims[0], dims[0], 0, 1, 1);
  add_resnet (w, "decoder.mid_block.resnets.1", dims[0], dims[0]);
  for (int i = 0; i < VAE_LEVELS; i++) {
    const int in_dim = i == 0 ? dims[0] : dims[i] / 2, out_dim = dims[i + 1];
    for (int j = 0; j <= VAE_RES_BLOCKS; j++) {
      g_snprintf (name, sizeof name, "decoder.up_blocks.%d.resnets.%d", i, j);
      add_resnet (w, name, j == 0 ? in_dim : out_dim, out_dim);
    }
    if (i == VAE_LEVELS - 1)
      continue;
    g_snprintf (name, sizeof name, "decoder.up_blocks.%d.upsamplers.0.resample.1", i);
    add_conv (w, name, out_dim / 2, out_dim, 0, 3, 3);
    if (vae_time_up[i]) {
      g_snprintf (name, sizeof name, "decoder.up_blocks.%d.upsamplers.0.time_conv", i);
      add_conv (w, name, 2 * out_dim, out_dim, 3, 1, 1);
    }
  }
  add_gamma (w, "decoder.norm_out", dims[VAE_LEVELS], 4);
  add_conv (w, "decoder.conv_out", 3, dims[VAE_LEVELS], 3, 3, 3);
}

gboolean
random_wan_vae_write (const char *dir, int base_dim, guint32 seed, GError **error)
{
  g_return_val_if_fail (base_dim >= 1, FALSE);
  if (!write_safetensors (dir, add_vae, &base_dim, DP_F32, seed, error))
    return FALSE;
  GString *cfg = g_string_new (NULL);
  g_string_printf (cfg, "{\"_class_name\": \"AutoencoderKLWan\", \"base_dim\": %d, \"z_dim\": 16,"
                   " \"dim_mult\": [1, 2, 4, 4], \"num_res_blocks\": 2, \"attn_scales\": [],"
                   " \"temperal_downsample\": [false, true, true], \"dropout\": 0.0,"
                   " \"latents_mean\": [", base_dim);
  for (int i = 0; i < VAE_Z; i++)
    g_string_append (cfg, i ? ", 0.0" : "0.0");
  g_string_append (cfg, "], \"latents_std\": [");
  for (int i = 0; i < VAE_Z; i++)
    g_string_append (cfg, i ? ", 1.0" : "1.0");
  g_string_append (cfg, "]}\n");
  char *path = g_build_filename (dir, "config.json", NULL);
  gboolean ok = g_file_set_contents (path, cfg->str, -1, error);
  g_free (path);
  g_string_free (cfg, TRUE);
  return ok;
}

/* ---- umT5 encoder ------------------------------------------------------- */

/* The tensors of UMT5EncoderModel as core/src/model/umt5.c loads them. */
static void
add_umt5 (writer *w, const void *model)
{
  const random_umt5_size *m = model;
  const int64_t D = m->d_model, inner = (int64_t) m->heads * m->d_kv;
  char name[160];
  add_tensor (w, "shared.weight", 2, (int64_t[]){ m->vocab, D }, 1.0f, 0.0f);
  for (int i = 0; i < m->layers; i++) {
    g_snprintf (name, sizeof name, "encoder.block.%d.layer.0.layer_norm.weight", i);
    add_tensor (w, name, 1, (int64_t[]){ D }, 0.2f, 1.0f);
    static const char *qkv[] = { "q", "k", "v" };
    for (int j = 0; j < 3; j++) {
      g_snprintf (name, sizeof name, "encoder.block.%d.layer.0.SelfAttention.%s.weight", i, qkv[j]);
      add_tensor (w, name, 2, (int64_t[]){ inner, D }, sqrtf (3.0f / (float) D), 0.0f);
    }
    g_snprintf (name, sizeof name, "encoder.block.%d.layer.0.SelfAttention.o.weight", i);
    add_tensor (w, name, 2, (int64_t[]){ D, inner }, sqrtf (3.0f / (float) inner), 0.0f);
    g_snprintf (name, sizeof name, "encoder.block.%d.layer.0.SelfAttention.relative_attention_bias.weight", i);
    add_tensor (w, name, 2, (int64_t[]){ 32, m->heads }, 1.0f, 0.0f);
    g_snprintf (name, sizeof name, "encoder.block.%d.layer.1.layer_norm.weight", i);
    add_tensor (w, name, 1, (int64_t[]){ D }, 0.2f, 1.0f);
    g_snprintf (name, sizeof name, "encoder.block.%d.layer.1.DenseReluDense.wi_0.weight", i);
    add_tensor (w, name, 2, (int64_t[]){ m->d_ff, D }, sqrtf (3.0f / (float) D), 0.0f);
    g_snprintf (name, sizeof name, "encoder.block.%d.layer.1.DenseReluDense.wi_1.weight", i);
    add_tensor (w, name, 2, (int64_t[]){ m->d_ff, D }, sqrtf (3.0f / (float) D), 0.0f);
    g_snprintf (name, sizeof name, "encoder.block.%d.layer.1.DenseReluDense.wo.weight", i);
    add_tensor (w, name, 2, (int64_t[]){ D, m->d_ff }, sqrtf (3.0f / (float) m->d_ff), 0.0f);
  }
  add_tensor (w, "encoder.final_layer_norm.weight", 1, (int64_t[]){ D }, 0.2f, 1.0f);
}

gboolean
random_umt5_write (const char *dir, const random_umt5_size *m, dp_dtype dtype, guint32 seed, GError **error)
{
  g_return_val_if_fail (dtype == DP_F32 || dtype == DP_BF16, FALSE);
  if (!write_safetensors (dir, add_umt5, m, dtype, seed, error))
    return FALSE;
  char *cfg_path = g_build_filename (dir, "config.json", NULL);
  char *cfg = g_strdup_printf (
    "{\"architectures\": [\"UMT5EncoderModel\"], \"model_type\": \"umt5\", \"vocab_size\": %d,"
    " \"d_model\": %d, \"d_kv\": %d, \"d_ff\": %d, \"num_heads\": %d, \"num_layers\": %d,"
    " \"relative_attention_num_buckets\": 32, \"relative_attention_max_distance\": 128,"
    " \"feed_forward_proj\": \"gated-gelu\", \"layer_norm_epsilon\": 1e-06}\n",
    m->vocab, m->d_model, m->d_kv, m->d_ff, m->heads, m->layers);
  gboolean ok = g_file_set_contents (cfg_path, cfg, -1, error);
  g_free (cfg);
  g_free (cfg_path);
  return ok;
}

void
random_wan_remove (const char *dir)
{
  const char *files[] = { "diffusion_pytorch_model.safetensors", "config.json" };
  for (guint i = 0; i < G_N_ELEMENTS (files); i++) {
    char *p = g_build_filename (dir, files[i], NULL);
    g_unlink (p);
    g_free (p);
  }
  g_rmdir (dir);
}
