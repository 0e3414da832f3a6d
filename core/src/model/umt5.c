/* The umT5 encoder on the backend table (see dualparal/umt5.h). */
#include "dualparal/umt5.h"
#include "dualparal/arena.h"
#include "dualparal/config.h"
#include "dualparal/weights.h"

#include <math.h>
#include <string.h>

typedef struct {
  dp_tensor attn_norm; /* [d] F32 */
  dp_tensor q, k, v;   /* [inner, d] */
  dp_tensor o;         /* [d, inner] */
  dp_tensor ffn_norm;  /* [d] F32 */
  dp_tensor wi0, wi1;  /* [d_ff, d] */
  dp_tensor wo;        /* [d, d_ff] */
  dp_tensor rel_bias;  /* owned host F32 [num_buckets, num_heads] */
} umt5_layer;

struct dp_umt5 {
  dp_backend *be;
  dp_umt5_config cfg;
  dp_weights *weights;
  dp_tensor embed;      /* [vocab, d] borrowed from the mapping, file dtype */
  dp_tensor final_norm; /* [d] F32 */
  umt5_layer *layers;
  dp_arena arena;
};

/* Activations of one forward pass over n tokens. */
typedef struct {
  dp_tensor x;       /* [n, d] F32 residual stream */
  dp_tensor h;       /* [n, d] normed input of a sublayer */
  dp_tensor q, k, v; /* [1, n, H, d_kv] */
  dp_tensor att;     /* [1, n, H, d_kv] */
  dp_tensor y;       /* [n, d] sublayer output */
  dp_tensor gate;    /* [n, d_ff] */
  dp_tensor lin;     /* [n, d_ff] */
  dp_tensor bias;    /* [H, n, n] F32 */
} umt5_acts;

/* ---------------------------------------------------------------- config */

/* Largest size a config may give; anything larger is a broken config. */
#define UMT5_MAX_SIZE (1 << 24)

gboolean
dp_umt5_config_load (const char *text_encoder_dir, dp_umt5_config *cfg, GError **error)
{
  char *path = g_build_filename (text_encoder_dir, "config.json", NULL);
  dp_config *c = dp_config_load (path, error);
  g_free (path);
  if (!c)
    return FALSE;

  gboolean ok = FALSE;
  memset (cfg, 0, sizeof *cfg);
  /* T5 proper shares layer 0's bias and needs other code: refuse, not
   * guess.  transformers runs "gated-gelu" with gelu_new, the tanh
   * approximation, which is what this code does. */
  if (!dp_config_expect_string (c, "model_type", "umt5", error)
      || !dp_config_expect_string (c, "feed_forward_proj", "gated-gelu", error))
    goto out;
  double eps;
  if (!dp_config_int_range (c, "vocab_size", 1, UMT5_MAX_SIZE, &cfg->vocab_size, error)
      || !dp_config_int_range (c, "d_model", 1, UMT5_MAX_SIZE, &cfg->d_model, error)
      || !dp_config_int_range (c, "d_kv", 1, UMT5_MAX_SIZE, &cfg->d_kv, error)
      || !dp_config_int_range (c, "d_ff", 1, UMT5_MAX_SIZE, &cfg->d_ff, error)
      || !dp_config_int_range (c, "num_heads", 1, UMT5_MAX_SIZE, &cfg->num_heads, error)
      || !dp_config_int_range (c, "num_layers", 1, UMT5_MAX_SIZE, &cfg->num_layers, error)
      || !dp_config_int_range_or (c, "relative_attention_num_buckets", 32, 1, UMT5_MAX_SIZE,
                                  &cfg->num_buckets, error)
      || !dp_config_int_range_or (c, "relative_attention_max_distance", 128, 1, UMT5_MAX_SIZE,
                                  &cfg->max_distance, error)
      || !dp_config_double_or (c, "layer_norm_epsilon", 1e-6, &eps, error))
    goto out;
  /* The bucket formula needs exact = num_buckets / 4 >= 1 and a log range. */
  if (cfg->num_buckets < 4 || cfg->max_distance <= cfg->num_buckets / 4) {
    g_set_error (error, DP_ERROR, DP_ERROR_FORMAT,
                 "%s: relative_attention_num_buckets %d / max_distance %d: need at least 4 buckets and "
                 "max_distance > buckets / 4", dp_config_path (c), cfg->num_buckets, cfg->max_distance);
    goto out;
  }
  if (!(eps > 0 && eps < 1)) {
    g_set_error (error, DP_ERROR, DP_ERROR_FORMAT, "%s: layer_norm_epsilon %g out of range",
                 dp_config_path (c), eps);
    goto out;
  }
  cfg->eps = (float) eps;
  ok = TRUE;
out:
  dp_config_free (c);
  return ok;
}

/* ---------------------------------------------------------------- loading */

static gboolean
get_weight (dp_umt5 *m, const char *name, dp_dtype dtype, int64_t d0, int64_t d1, dp_tensor *out,
            GError **error)
{
  int64_t shape[2] = { d0, d1 };
  return dp_weights_get (m->weights, name, dtype, d1 > 0 ? 2 : 1, shape, out, error);
}

static gboolean
load_layer (dp_umt5 *m, int i, GError **error)
{
  const dp_umt5_config *c = &m->cfg;
  umt5_layer *L = &m->layers[i];
  dp_dtype wdt = m->be->weight_dtype;
  int64_t inner = (int64_t) c->num_heads * c->d_kv;
  char *p0 = g_strdup_printf ("encoder.block.%d.layer.0.", i);
  char *p1 = g_strdup_printf ("encoder.block.%d.layer.1.", i);
  struct {
    const char *prefix, *name;
    dp_dtype dtype;
    int64_t d0, d1;
    dp_tensor *dst;
  } specs[] = {
    { p0, "layer_norm.weight", DP_F32, c->d_model, 0, &L->attn_norm },
    { p0, "SelfAttention.q.weight", wdt, inner, c->d_model, &L->q },
    { p0, "SelfAttention.k.weight", wdt, inner, c->d_model, &L->k },
    { p0, "SelfAttention.v.weight", wdt, inner, c->d_model, &L->v },
    { p0, "SelfAttention.o.weight", wdt, c->d_model, inner, &L->o },
    { p1, "layer_norm.weight", DP_F32, c->d_model, 0, &L->ffn_norm },
    { p1, "DenseReluDense.wi_0.weight", wdt, c->d_ff, c->d_model, &L->wi0 },
    { p1, "DenseReluDense.wi_1.weight", wdt, c->d_ff, c->d_model, &L->wi1 },
    { p1, "DenseReluDense.wo.weight", wdt, c->d_model, c->d_ff, &L->wo },
  };
  gboolean ok = TRUE;
  for (guint s = 0; ok && s < G_N_ELEMENTS (specs); s++) {
    char *name = g_strconcat (specs[s].prefix, specs[s].name, NULL);
    ok = get_weight (m, name, specs[s].dtype, specs[s].d0, specs[s].d1, specs[s].dst, error);
    g_free (name);
  }
  if (ok) {
    /* The bias table is read on the host: the bias is built there. */
    char *name = g_strconcat (p0, "SelfAttention.relative_attention_bias.weight", NULL);
    int64_t shape[2] = { c->num_buckets, c->num_heads };
    ok = dp_safetensors_load (dp_weights_file (m->weights), name, DP_F32, 2, shape, &L->rel_bias, error);
    g_free (name);
  }
  g_free (p0);
  g_free (p1);
  return ok;
}

dp_umt5 *
dp_umt5_load (dp_backend *be, const char *text_encoder_dir, GError **error)
{
  dp_umt5_config cfg;
  if (!dp_umt5_config_load (text_encoder_dir, &cfg, error))
    return NULL;
  dp_safetensors *st = dp_safetensors_open_dir (text_encoder_dir, error);
  if (!st)
    return NULL;

  dp_umt5 *m = g_new0 (dp_umt5, 1);
  m->be = be;
  m->cfg = cfg;
  m->weights = dp_weights_new (be, st);
  m->layers = g_new0 (umt5_layer, cfg.num_layers);

  /* transformers saves the tied embedding once, as shared.weight; older
   * exports may only have the encoder's copy. */
  const char *embed_name = dp_safetensors_contains (st, "shared.weight") || !dp_safetensors_contains (st, "encoder.embed_tokens.weight")
                           ? "shared.weight" : "encoder.embed_tokens.weight";
  int64_t embed_shape[2] = { cfg.vocab_size, cfg.d_model };
  if (!dp_safetensors_get (st, embed_name, 2, embed_shape, &m->embed, error))
    goto fail;
  int64_t norm_shape[1] = { cfg.d_model };
  if (!dp_weights_get (m->weights, "encoder.final_layer_norm.weight", DP_F32, 1, norm_shape,
                       &m->final_norm, error))
    goto fail;
  for (int i = 0; i < cfg.num_layers; i++) {
    if (!load_layer (m, i, error))
      goto fail;
  }
  return m;

fail:
  dp_umt5_free (m);
  return NULL;
}

void
dp_umt5_free (dp_umt5 *m)
{
  if (!m)
    return;
  if (m->layers) {
    for (int i = 0; i < m->cfg.num_layers; i++)
      dp_tensor_free (&m->layers[i].rel_bias);
    g_free (m->layers);
  }
  dp_arena_release (&m->arena);
  dp_weights_free (m->weights);
  g_free (m);
}

const dp_umt5_config *
dp_umt5_get_config (const dp_umt5 *m)
{
  return &m->cfg;
}

/* ---------------------------------------------------------------- forward */

int
dp_umt5_relative_bucket (int rel, int num_buckets, int max_distance)
{
  int half = num_buckets / 2;
  int exact = half / 2;
  int bucket = rel > 0 ? half : 0;
  int a = rel < 0 ? -rel : rel;
  if (a < exact)
    return bucket + a;
  /* torch: log of the float32 ratio, divided by the float32 rounding of
   * math.log (a double), times the bucket count, truncated: the same single
   * precision steps, so the bucket boundaries (16, 32, 64 for Wan) agree. */
  float denom = (float) log ((double) max_distance / exact);
  float ratio = logf ((float) a / (float) exact) / denom * (float) (half - exact);
  int large = exact + (int) ratio;
  return bucket + MIN (large, half - 1);
}

static void
plan (dp_arena *a, const dp_umt5_config *c, dp_dtype act, int n, umt5_acts *t)
{
  int64_t nd[2] = { n, c->d_model };
  int64_t heads[4] = { 1, n, c->num_heads, c->d_kv };
  int64_t ff[2] = { n, c->d_ff };
  int64_t bias[3] = { c->num_heads, n, n };
  t->x = dp_arena_tensor (a, DP_F32, 2, nd);
  t->h = dp_arena_tensor (a, act, 2, nd);
  t->q = dp_arena_tensor (a, act, 4, heads);
  t->k = dp_arena_tensor (a, act, 4, heads);
  t->v = dp_arena_tensor (a, act, 4, heads);
  t->att = dp_arena_tensor (a, act, 4, heads);
  t->y = dp_arena_tensor (a, act, 2, nd);
  t->gate = dp_arena_tensor (a, act, 2, ff);
  t->lin = dp_arena_tensor (a, act, 2, ff);
  t->bias = dp_arena_tensor (a, DP_F32, 3, bias);
}

/* dst[i] = F32 (table[ids[i]]).  The mapping does not promise aligned
 * tensors: rows go through memcpy. */
static void
gather_rows (float *dst, const dp_tensor *table, const int32_t *ids, int n, int d)
{
  size_t row_bytes = (size_t) d * dp_dtype_size (table->dtype);
  void *row = table->dtype == DP_F32 ? NULL : g_malloc (row_bytes);
  for (int i = 0; i < n; i++) {
    const uint8_t *src = (const uint8_t *) table->data + (size_t) ids[i] * row_bytes;
    if (row) {
      memcpy (row, src, row_bytes);
      dp_convert (dst + (size_t) i * d, DP_F32, row, table->dtype, d);
    } else {
      memcpy (dst + (size_t) i * d, src, row_bytes);
    }
  }
  g_free (row);
}

/* bias[h, i, j] = table[bucket(j - i), h] */
static void
fill_bias (float *bias, const float *table, const int *buckets, int n, int heads)
{
  for (int h = 0; h < heads; h++) {
    float *dst = bias + (size_t) h * n * n;
    for (size_t ij = 0; ij < (size_t) n * n; ij++)
      dst[ij] = table[(size_t) buckets[ij] * heads + h];
  }
}

gboolean
dp_umt5_encode (dp_umt5 *m, const int32_t *ids, int n_tokens, int text_len, dp_tensor *out,
                GError **error)
{
  const dp_umt5_config *c = &m->cfg;
  dp_backend *be = m->be;
  const dp_backend_ops *ops = be->ops;
  int n = n_tokens;

  if (n < 1 || n > text_len) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID,
                 "umT5: %d tokens for a text length of %d (need 1 <= tokens <= text length)", n, text_len);
    return FALSE;
  }
  for (int i = 0; i < n; i++) {
    if (ids[i] < 0 || ids[i] >= c->vocab_size) {
      g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "umT5: token %d has id %d, outside the vocabulary of %d",
                   i, (int) ids[i], c->vocab_size);
      return FALSE;
    }
  }

  /* Size the arena for this length, growing it when a longer prompt comes. */
  umt5_acts t;
  dp_arena measure;
  dp_arena_init_measure (&measure);
  plan (&measure, c, be->act_dtype, n, &t);
  if (m->arena.size < dp_arena_peak (&measure)) {
    dp_arena_release (&m->arena);
    if (!dp_arena_init (&m->arena, be, dp_arena_peak (&measure), error)) {
      g_prefix_error (error, "umT5 activations for %d tokens: ", n);
      return FALSE;
    }
  }
  dp_arena_reset (&m->arena, 0);
  plan (&m->arena, c, be->act_dtype, n, &t);

  /* Embedding: gather the rows from the mapping, as F32, then upload. */
  dp_tensor emb = dp_tensor_new_host (DP_F32, 2, t.x.shape);
  gather_rows (emb.data, &m->embed, ids, n, c->d_model);
  ops->to_device (be, &t.x, &emb);

  int *buckets = g_new (int, (size_t) n * n);
  for (int i = 0; i < n; i++)
    for (int j = 0; j < n; j++)
      buckets[(size_t) i * n + j] = dp_umt5_relative_bucket (j - i, c->num_buckets, c->max_distance);
  /* A host backend's arena is host memory: the bias is built in place. */
  dp_tensor bias_host = be->host_memory ? t.bias : dp_tensor_new_host (DP_F32, 3, t.bias.shape);

  int64_t flat[2] = { n, (int64_t) c->num_heads * c->d_kv };
  dp_tensor q2 = t.q, k2 = t.k, v2 = t.v, att2 = t.att;
  dp_tensor_reshape (&q2, 2, flat);
  dp_tensor_reshape (&k2, 2, flat);
  dp_tensor_reshape (&v2, 2, flat);
  dp_tensor_reshape (&att2, 2, flat);
  dp_attn_params ap = { .scale = 1.0f, .key_len = 0, .bias = &t.bias };
  /* Residual adds go through gated_add (no gate): F32 stream += act_dtype y. */
  int64_t seq3[3] = { 1, n, c->d_model };
  dp_tensor x3 = t.x, y3 = t.y;
  dp_tensor_reshape (&x3, 3, seq3);
  dp_tensor_reshape (&y3, 3, seq3);

  gboolean ok = TRUE;
  for (int l = 0; ok && l < c->num_layers; l++) {
    const umt5_layer *L = &m->layers[l];
    /* Self-attention with this layer's relative position bias. */
    ops->rms_norm (be, &t.h, &t.x, &L->attn_norm, c->eps);
    ops->linear (be, &q2, &t.h, &L->q, NULL, DP_ACT_NONE);
    ops->linear (be, &k2, &t.h, &L->k, NULL, DP_ACT_NONE);
    ops->linear (be, &v2, &t.h, &L->v, NULL, DP_ACT_NONE);
    fill_bias (bias_host.data, L->rel_bias.data, buckets, n, c->num_heads);
    if (!be->host_memory) {
      ops->to_device (be, &t.bias, &bias_host);
      /* The host buffer is refilled for the next layer: the copy must be done. */
      ok = ops->sync (be, error);
    }
    ops->attention (be, &t.att, &t.q, &t.k, &t.v, &ap);
    ops->linear (be, &t.y, &att2, &L->o, NULL, DP_ACT_NONE);
    ops->gated_add (be, &x3, &y3, NULL);
    /* Gated-GELU feed-forward. */
    ops->rms_norm (be, &t.h, &t.x, &L->ffn_norm, c->eps);
    ops->linear (be, &t.gate, &t.h, &L->wi0, NULL, DP_ACT_GELU_TANH);
    ops->linear (be, &t.lin, &t.h, &L->wi1, NULL, DP_ACT_NONE);
    ops->mul (be, &t.gate, &t.gate, &t.lin);
    ops->linear (be, &t.y, &t.gate, &L->wo, NULL, DP_ACT_NONE);
    ops->gated_add (be, &x3, &y3, NULL);
  }
  ops->rms_norm (be, &t.x, &t.x, &m->final_norm, c->eps);

  int64_t out_shape[2] = { text_len, c->d_model };
  dp_tensor result = dp_tensor_new_host (DP_F32, 2, out_shape); /* zero rows after n */
  dp_tensor rows = dp_tensor_slice0 (&result, 0, n);
  if (ok) {
    ops->to_host (be, &rows, &t.x);
    ok = ops->sync (be, error);
  }
  if (ok && m->arena.overflow) {
    g_set_error (error, DP_ERROR, DP_ERROR_FAILED, "umT5: activation arena overflow (sizing bug)");
    ok = FALSE;
  }

  g_free (buckets);
  if (!be->host_memory)
    dp_tensor_free (&bias_host);
  dp_tensor_free (&emb);
  if (!ok) {
    dp_tensor_free (&result);
    g_prefix_error (error, "umT5 encoder: ");
    return FALSE;
  }
  *out = result;
  return TRUE;
}

gboolean
dp_umt5_encode_prompt (dp_umt5 *m, const dp_tokenizer *tok, const char *prompt, int text_len,
                       dp_tensor *out, int *n_tokens, GError **error)
{
  if (text_len < 1) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "text length %d: must be at least 1", text_len);
    return FALSE;
  }
  if (dp_tokenizer_vocab_size (tok) > m->cfg.vocab_size) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "tokenizer has %d pieces, the text encoder only %d embeddings",
                 dp_tokenizer_vocab_size (tok), m->cfg.vocab_size);
    return FALSE;
  }
  int32_t *ids = g_new (int32_t, text_len);
  int n = dp_tokenizer_encode (tok, prompt, text_len, ids, error);
  gboolean ok = n > 0 && dp_umt5_encode (m, ids, n, text_len, out, error);
  g_free (ids);
  if (ok && n_tokens)
    *n_tokens = n;
  return ok;
}

/* ------------------------------------------------------------ holder */

struct dp_umt5_holder {
  dp_backend *be;
  char *dir;
  gboolean keep;
  dp_umt5_config cfg;
  dp_umt5 *m;  /* NULL while not loaded */
  int loads;
};

dp_umt5_holder *
dp_umt5_holder_new (dp_backend *be, const char *text_encoder_dir, gboolean keep, GError **error)
{
  dp_umt5_holder *h = g_new0 (dp_umt5_holder, 1);
  h->be = be;
  h->dir = g_strdup (text_encoder_dir);
  h->keep = keep;
  if (!dp_umt5_config_load (text_encoder_dir, &h->cfg, error) || (keep && !dp_umt5_holder_acquire (h, error))) {
    dp_umt5_holder_free (h);
    return NULL;
  }
  return h;
}

void
dp_umt5_holder_free (dp_umt5_holder *h)
{
  if (!h)
    return;
  dp_umt5_free (h->m);
  g_free (h->dir);
  g_free (h);
}

const dp_umt5_config *
dp_umt5_holder_config (const dp_umt5_holder *h)
{
  return &h->cfg;
}

dp_umt5 *
dp_umt5_holder_acquire (dp_umt5_holder *h, GError **error)
{
  if (!h->m) {
    h->m = dp_umt5_load (h->be, h->dir, error);
    if (h->m)
      h->loads++;
  }
  return h->m;
}

void
dp_umt5_holder_release (dp_umt5_holder *h)
{
  if (!h->keep && h->m) {
    /* Frees its device memory: the backend must be done with it. */
    h->be->ops->sync (h->be, NULL);
    g_clear_pointer (&h->m, dp_umt5_free);
  }
}

gboolean
dp_umt5_holder_loaded (const dp_umt5_holder *h)
{
  return h->m != NULL;
}

int
dp_umt5_holder_loads (const dp_umt5_holder *h)
{
  return h->loads;
}
