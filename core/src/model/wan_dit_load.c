/* Wan DiT: config.json, checkpoint validation and loading of one stage. */
#include "model/wan_dit_private.h"

#include "dualparal/config.h"

#include <string.h>

/* ---------------------------------------------------------------- config */

/* Largest size a config may give (the same bound as the model width below). */
#define WAN_MAX_SIZE (G_MAXINT / 8)

/* A key that must be absent or null: the image-to-video variants. */
static gboolean
config_refuse (const dp_config *c, const char *key, GError **error)
{
  if (!dp_config_has (c, key))
    return TRUE;
  g_set_error (error, DP_ERROR, DP_ERROR_UNSUPPORTED,
               "%s: \"%s\" is set: image-to-video transformers are not supported", dp_config_path (c), key);
  return FALSE;
}

gboolean
dp_wan_config_load (const char *transformer_dir, dp_wan_config *cfg, GError **error)
{
  char *path = g_build_filename (transformer_dir, "config.json", NULL);
  dp_config *c = dp_config_load (path, error);
  g_free (path);
  if (!c)
    return FALSE;

  gboolean ok = FALSE;
  memset (cfg, 0, sizeof *cfg);
  if (!dp_config_expect_string (c, "_class_name", "WanTransformer3DModel", error))
    goto out;

  int64_t patch[3];
  int n_patch = 0;
  if (!dp_config_int_array (c, "patch_size", patch, 3, &n_patch, error))
    goto out;
  if (n_patch != 3 || patch[0] < 1 || patch[1] < 1 || patch[2] < 1 || patch[1] > 64 || patch[2] > 64) {
    g_set_error (error, DP_ERROR, DP_ERROR_FORMAT, "%s: \"patch_size\" must be 3 positive integers",
                 dp_config_path (c));
    goto out;
  }
  if (patch[0] != 1) {
    g_set_error (error, DP_ERROR, DP_ERROR_UNSUPPORTED,
                 "%s: patch_size[0] = %" G_GINT64_FORMAT ": only a time patch of 1 is supported",
                 dp_config_path (c), patch[0]);
    goto out;
  }
  cfg->patch_t = (int) patch[0];
  cfg->patch_h = (int) patch[1];
  cfg->patch_w = (int) patch[2];

  if (!dp_config_int_range (c, "num_attention_heads", 1, WAN_MAX_SIZE, &cfg->num_heads, error) ||
      !dp_config_int_range (c, "attention_head_dim", 1, WAN_MAX_SIZE, &cfg->head_dim, error) ||
      !dp_config_int_range (c, "in_channels", 1, WAN_MAX_SIZE, &cfg->in_channels, error) ||
      !dp_config_int_range (c, "out_channels", 1, WAN_MAX_SIZE, &cfg->out_channels, error) ||
      !dp_config_int_range (c, "text_dim", 1, WAN_MAX_SIZE, &cfg->text_dim, error) ||
      !dp_config_int_range (c, "freq_dim", 2, WAN_MAX_SIZE, &cfg->freq_dim, error) ||
      !dp_config_int_range (c, "ffn_dim", 1, WAN_MAX_SIZE, &cfg->ffn_dim, error) ||
      !dp_config_int_range (c, "num_layers", 0, WAN_MAX_SIZE, &cfg->num_layers, error))
    goto out;
  /* RoPE splits the head into time / height / width parts of even sizes
   * d - 2 (2 (d / 6)), 2 (d / 6), 2 (d / 6). */
  if (cfg->head_dim % 2 != 0 || cfg->head_dim < 6) {
    g_set_error (error, DP_ERROR, DP_ERROR_UNSUPPORTED,
                 "%s: attention_head_dim %d: 3D RoPE needs an even head dimension of at least 6",
                 dp_config_path (c), cfg->head_dim);
    goto out;
  }
  if (cfg->freq_dim % 2 != 0) {
    g_set_error (error, DP_ERROR, DP_ERROR_UNSUPPORTED, "%s: freq_dim %d must be even", dp_config_path (c),
                 cfg->freq_dim);
    goto out;
  }
  if ((int64_t) cfg->num_heads * cfg->head_dim > G_MAXINT / 8) {
    g_set_error (error, DP_ERROR, DP_ERROR_FORMAT, "%s: num_attention_heads x attention_head_dim is too large",
                 dp_config_path (c));
    goto out;
  }
  cfg->dim = cfg->num_heads * cfg->head_dim;

  double eps;
  int64_t rope_len;
  if (!dp_config_double_or (c, "eps", 1e-6, &eps, error) ||
      !dp_config_bool_or (c, "cross_attn_norm", TRUE, &cfg->cross_attn_norm, error) ||
      !dp_config_int_or (c, "rope_max_seq_len", 1024, &rope_len, error))
    goto out;
  if (!(eps > 0 && eps < 1)) {
    g_set_error (error, DP_ERROR, DP_ERROR_FORMAT, "%s: \"eps\" = %g is out of range", dp_config_path (c), eps);
    goto out;
  }
  if (rope_len < 1 || rope_len > (1 << 20)) {
    g_set_error (error, DP_ERROR, DP_ERROR_FORMAT, "%s: \"rope_max_seq_len\" = %" G_GINT64_FORMAT " is out of range",
                 dp_config_path (c), rope_len);
    goto out;
  }
  cfg->eps = (float) eps;
  cfg->rope_max_seq_len = (int) rope_len;
  cfg->rope_theta = 10000.0f;

  /* diffusers always applies norm_q / norm_k (RMSNorm over the whole width),
   * whatever qk_norm says; anything but its one documented value is a
   * checkpoint we do not know. */
  if (!dp_config_expect_string (c, "qk_norm", "rms_norm_across_heads", error))
    goto out;
  if (!config_refuse (c, "image_dim", error) || !config_refuse (c, "added_kv_proj_dim", error) ||
      !config_refuse (c, "pos_embed_seq_len", error))
    goto out;
  ok = TRUE;
out:
  dp_config_free (c);
  return ok;
}

/* --------------------------------------------------------------- tensors */

typedef enum {
  KIND_MATRIX, /* be->weight_dtype */
  KIND_F32,    /* biases, norms, tables, the time embedder */
} tensor_kind;

typedef struct {
  char *name;
  int ndim;
  int64_t shape[DP_MAX_DIMS];
  tensor_kind kind;
  dp_tensor *dst; /* NULL: validated, not loaded by this stage */
} tensor_spec;

static void
spec_add (GArray *specs, dp_tensor *dst, tensor_kind kind, int ndim, const int64_t *shape,
          const char *fmt, ...) G_GNUC_PRINTF (6, 7);

static void
spec_add (GArray *specs, dp_tensor *dst, tensor_kind kind, int ndim, const int64_t *shape, const char *fmt, ...)
{
  tensor_spec s = { .ndim = ndim, .kind = kind, .dst = dst };
  va_list ap;
  va_start (ap, fmt);
  s.name = g_strdup_vprintf (fmt, ap);
  va_end (ap);
  memcpy (s.shape, shape, sizeof (int64_t) * ndim);
  g_array_append_val (specs, s);
}

#define SHAPE(...) ((const int64_t[]){ __VA_ARGS__ })
static void
spec_clear (gpointer p)
{
  g_free (((tensor_spec *) p)->name);
}

/* Every tensor of the checkpoint (names and shapes from the config); dst set
 * for those this stage loads. */
static GArray *
checkpoint_specs (dp_wan_dit *dit)
{
  const dp_wan_config *c = &dit->cfg;
  const int64_t D = c->dim, F = c->ffn_dim;
  GArray *s = g_array_new (FALSE, TRUE, sizeof (tensor_spec));
  g_array_set_clear_func (s, spec_clear);

#define W(dst, load, kind, ...) spec_add (s, (load) ? (dst) : NULL, kind, __VA_ARGS__)
#define LIN(wdst, bdst, load, kind, out, in, prefix, ...)                                 \
  do {                                                                                    \
    W (wdst, load, kind, 2, SHAPE (out, in), prefix ".weight", ##__VA_ARGS__);            \
    W (bdst, load, KIND_F32, 1, SHAPE (out), prefix ".bias", ##__VA_ARGS__);              \
  } while (0)

  W (&dit->patch_w, dit->has_embed, KIND_MATRIX, 5,
     SHAPE (D, c->in_channels, c->patch_t, c->patch_h, c->patch_w), "patch_embedding.weight");
  W (&dit->patch_b, dit->has_embed, KIND_F32, 1, SHAPE (D), "patch_embedding.bias");

  LIN (&dit->te1_w, &dit->te1_b, dit->has_time, KIND_F32, D, c->freq_dim,
       "condition_embedder.time_embedder.linear_1");
  LIN (&dit->te2_w, &dit->te2_b, dit->has_time, KIND_F32, D, D, "condition_embedder.time_embedder.linear_2");
  LIN (&dit->tp_w, &dit->tp_b, dit->has_time, KIND_MATRIX, 6 * D, D, "condition_embedder.time_proj");
  LIN (&dit->tx1_w, &dit->tx1_b, dit->has_text, KIND_MATRIX, D, c->text_dim,
       "condition_embedder.text_embedder.linear_1");
  LIN (&dit->tx2_w, &dit->tx2_b, dit->has_text, KIND_MATRIX, D, D, "condition_embedder.text_embedder.linear_2");

  for (int n = 0; n < c->num_layers; n++) {
    gboolean mine = n >= dit->layer_begin && n < dit->layer_end;
    wan_layer *l = mine ? &dit->layers[n - dit->layer_begin] : NULL;
#define LW(field) (mine ? &l->field : NULL)
    W (LW (sst), mine, KIND_F32, 3, SHAPE (1, 6, D), "blocks.%d.scale_shift_table", n);
    LIN (LW (q_w), LW (q_b), mine, KIND_MATRIX, D, D, "blocks.%d.attn1.to_q", n);
    LIN (LW (k_w), LW (k_b), mine, KIND_MATRIX, D, D, "blocks.%d.attn1.to_k", n);
    LIN (LW (v_w), LW (v_b), mine, KIND_MATRIX, D, D, "blocks.%d.attn1.to_v", n);
    LIN (LW (o_w), LW (o_b), mine, KIND_MATRIX, D, D, "blocks.%d.attn1.to_out.0", n);
    W (LW (norm_q), mine, KIND_F32, 1, SHAPE (D), "blocks.%d.attn1.norm_q.weight", n);
    W (LW (norm_k), mine, KIND_F32, 1, SHAPE (D), "blocks.%d.attn1.norm_k.weight", n);
    LIN (LW (cq_w), LW (cq_b), mine, KIND_MATRIX, D, D, "blocks.%d.attn2.to_q", n);
    LIN (LW (ck_w), LW (ck_b), mine, KIND_MATRIX, D, D, "blocks.%d.attn2.to_k", n);
    LIN (LW (cv_w), LW (cv_b), mine, KIND_MATRIX, D, D, "blocks.%d.attn2.to_v", n);
    LIN (LW (co_w), LW (co_b), mine, KIND_MATRIX, D, D, "blocks.%d.attn2.to_out.0", n);
    W (LW (cnorm_q), mine, KIND_F32, 1, SHAPE (D), "blocks.%d.attn2.norm_q.weight", n);
    W (LW (cnorm_k), mine, KIND_F32, 1, SHAPE (D), "blocks.%d.attn2.norm_k.weight", n);
    if (c->cross_attn_norm) {
      W (LW (norm2_w), mine, KIND_F32, 1, SHAPE (D), "blocks.%d.norm2.weight", n);
      W (LW (norm2_b), mine, KIND_F32, 1, SHAPE (D), "blocks.%d.norm2.bias", n);
    }
    LIN (LW (ff1_w), LW (ff1_b), mine, KIND_MATRIX, F, D, "blocks.%d.ffn.net.0.proj", n);
    LIN (LW (ff2_w), LW (ff2_b), mine, KIND_MATRIX, D, F, "blocks.%d.ffn.net.2", n);
#undef LW
  }

  W (&dit->head_sst, dit->has_head, KIND_F32, 3, SHAPE (1, 2, D), "scale_shift_table");
  LIN (&dit->proj_w, &dit->proj_b, dit->has_head, KIND_MATRIX,
       (int64_t) c->out_channels * c->patch_t * c->patch_h * c->patch_w, D, "proj_out");
#undef W
#undef LIN
  return s;
}

/* Every tensor present with its shape, nothing unknown: checked on the
 * whole checkpoint so every stage reports a broken file the same way. */
static gboolean
validate_checkpoint (dp_wan_dit *dit, GArray *specs, GError **error)
{
  const dp_safetensors *st = dp_weights_file (dit->weights);
  GHashTable *expected = g_hash_table_new (g_str_hash, g_str_equal);
  gboolean ok = TRUE;
  for (guint i = 0; i < specs->len && ok; i++) {
    tensor_spec *s = &g_array_index (specs, tensor_spec, i);
    dp_tensor t;
    g_hash_table_add (expected, s->name);
    ok = dp_safetensors_get (st, s->name, s->ndim, s->shape, &t, error);
  }
  for (int i = 0; ok && i < dp_safetensors_count (st); i++) {
    const char *name = dp_safetensors_name (st, i);
    /* diffusers ignores these leftovers of some conversions */
    if (!g_hash_table_contains (expected, name) && !strstr (name, "norm_added_q")) {
      g_set_error (error, DP_ERROR, DP_ERROR_FORMAT,
                   "%s: unexpected tensor \"%s\": not part of a Wan text-to-video transformer with "
                   "this config.json (%d layers, dim %d)",
                   dit->dir, name, dit->cfg.num_layers, dit->cfg.dim);
      ok = FALSE;
    }
  }
  g_hash_table_unref (expected);
  return ok;
}

static gboolean
load_tensors (dp_wan_dit *dit, GArray *specs, GError **error)
{
  for (guint i = 0; i < specs->len; i++) {
    tensor_spec *s = &g_array_index (specs, tensor_spec, i);
    if (!s->dst)
      continue;
    dp_dtype dt = s->kind == KIND_MATRIX ? dit->be->weight_dtype : DP_F32;
    if (!dp_weights_get (dit->weights, s->name, dt, s->ndim, s->shape, s->dst, error))
      return FALSE;
  }
  return TRUE;
}

/* Shapes the forward pass wants: the patch Conv3d as a Linear over
 * patchified rows, the modulation tables without their leading 1. */
static void
reshape_loaded (dp_wan_dit *dit)
{
  const dp_wan_config *c = &dit->cfg;
  if (dit->has_embed) {
    int64_t s[2] = { c->dim, (int64_t) c->in_channels * c->patch_t * c->patch_h * c->patch_w };
    dp_tensor_reshape (&dit->patch_w, 2, s);
  }
  for (int i = 0; i < dit->n_layers; i++)
    dp_tensor_reshape (&dit->layers[i].sst, 2, (int64_t[]){ 6, c->dim });
  if (dit->has_head)
    dp_tensor_reshape (&dit->head_sst, 2, (int64_t[]){ 2, c->dim });
}

/* Persistent buffers of the time path, one allocation. */
static gboolean
alloc_time (dp_wan_dit *dit, GError **error)
{
  dp_backend *be = dit->be;
  const int64_t D = dit->cfg.dim, fd = dit->cfg.freq_dim;
  dp_dtype act = be->act_dtype;
  struct {
    dp_tensor *t;
    dp_dtype dt;
    int64_t r, c;
  } parts[5 + 2 * DP_WAN_TIME_SLOTS] = {
    { &dit->sinus, DP_F32, 1, fd },       { &dit->time_h, DP_F32, 1, D },
    { &dit->temb_silu, DP_F32, 1, D },    { &dit->temb_silu_act, act, 1, D },
    { &dit->e0_act, act, 1, 6 * D },
  };
  for (int i = 0; i < DP_WAN_TIME_SLOTS; i++) {
    parts[5 + 2 * i].t = &dit->temb[i];
    parts[5 + 2 * i].dt = DP_F32;
    parts[5 + 2 * i].r = 1;
    parts[5 + 2 * i].c = D;
    parts[6 + 2 * i].t = &dit->e0[i];
    parts[6 + 2 * i].dt = DP_F32;
    parts[6 + 2 * i].r = 6;
    parts[6 + 2 * i].c = D;
  }
  size_t total = 0;
  for (guint i = 0; i < G_N_ELEMENTS (parts); i++) {
    *parts[i].t = dp_tensor_view (NULL, parts[i].dt, 2, (int64_t[]){ parts[i].r, parts[i].c });
    total += (dp_tensor_nbytes (parts[i].t) + DP_ARENA_ALIGN - 1) / DP_ARENA_ALIGN * DP_ARENA_ALIGN;
  }
  dit->time_mem = be->ops->alloc (be, total);
  dit->time_bytes = total;
  if (!dit->time_mem)
    return dp_backend_check (be, error) && FALSE;
  size_t off = 0;
  for (guint i = 0; i < G_N_ELEMENTS (parts); i++) {
    parts[i].t->data = (uint8_t *) dit->time_mem + off;
    off += (dp_tensor_nbytes (parts[i].t) + DP_ARENA_ALIGN - 1) / DP_ARENA_ALIGN * DP_ARENA_ALIGN;
  }
  dit->sinus_host = g_new0 (float, fd);
  return TRUE;
}

dp_wan_dit *
dp_wan_dit_load (dp_backend *be, const char *transformer_dir, int layer_begin, int layer_end, GError **error)
{
  g_return_val_if_fail (be != NULL && transformer_dir != NULL, NULL);
  dp_wan_config cfg;
  if (!dp_wan_config_load (transformer_dir, &cfg, error))
    return NULL;
  if (layer_end == -1)
    layer_end = cfg.num_layers;
  if (layer_begin < 0 || layer_begin > layer_end || layer_end > cfg.num_layers) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "%s: layer range [%d, %d) is not inside [0, %d)",
                 transformer_dir, layer_begin, layer_end, cfg.num_layers);
    return NULL;
  }
  dp_safetensors *st = dp_safetensors_open_dir (transformer_dir, error);
  if (!st)
    return NULL;

  dp_wan_dit *dit = g_new0 (dp_wan_dit, 1);
  dit->be = be;
  dit->cfg = cfg;
  dit->dir = g_strdup (transformer_dir);
  dit->ctx_max = DP_WAN_DEFAULT_CONTEXT_SLOTS;
  dit->weights = dp_weights_new (be, st);
  dit->layer_begin = layer_begin;
  dit->layer_end = layer_end;
  dit->n_layers = layer_end - layer_begin;
  dit->has_embed = layer_begin == 0;
  dit->has_head = layer_end == cfg.num_layers;
  dit->has_text = dit->n_layers > 0;
  dit->has_time = dit->n_layers > 0 || dit->has_head;
  dit->layers = g_new0 (wan_layer, MAX (dit->n_layers, 1));
  dit->ffn_chunk_rows = DP_WAN_FFN_CHUNK_ROWS;

  GArray *specs = checkpoint_specs (dit);
  gboolean ok = validate_checkpoint (dit, specs, error) && load_tensors (dit, specs, error);
  g_array_unref (specs);
  if (ok) {
    reshape_loaded (dit);
    ok = !dit->has_time || alloc_time (dit, error);
  }
  if (!ok) {
    dp_wan_dit_free (dit);
    return NULL;
  }
  return dit;
}

void
dp_wan_dit_free (dp_wan_dit *dit)
{
  if (!dit)
    return;
  dp_backend *be = dit->be;
  dp_arena_release (&dit->arena);
  for (int i = 0; i < dit->ctx_n; i++) {
    if (dit->ctx[i].mem)
      be->ops->free (be, dit->ctx[i].mem);
    g_free (dit->ctx[i].k);
    g_free (dit->ctx[i].v);
  }
  if (dit->time_mem)
    be->ops->free (be, dit->time_mem);
  g_free (dit->sinus_host);
  g_free (dit->seq_pos);
  g_free (dit->layers);
  dp_weights_free (dit->weights);
  g_free (dit->dir);
  g_free (dit);
}

const dp_wan_config *
dp_wan_dit_config (const dp_wan_dit *dit)
{
  return &dit->cfg;
}

void
dp_wan_dit_layers (const dp_wan_dit *dit, int *layer_begin, int *layer_end)
{
  if (layer_begin)
    *layer_begin = dit->layer_begin;
  if (layer_end)
    *layer_end = dit->layer_end;
}

gboolean
dp_wan_dit_has_embed (const dp_wan_dit *dit)
{
  return dit->has_embed;
}

gboolean
dp_wan_dit_has_head (const dp_wan_dit *dit)
{
  return dit->has_head;
}

int
dp_wan_dit_batch (const dp_wan_dit *dit)
{
  return dit->batch;
}

size_t
dp_wan_dit_memory_bytes (const dp_wan_dit *dit)
{
  size_t time = dit->time_mem ? dit->time_bytes : 0;
  /* A shared arena is counted once, by its owner. */
  return dp_weights_bytes (dit->weights) + dit->cross_bytes + (dit->arena_owner ? 0 : dit->arena.size) + time;
}
