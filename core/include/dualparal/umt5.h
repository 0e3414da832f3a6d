/* dualparal: the umT5 text encoder (transformers UMT5EncoderModel), as Wan's
 * pipeline runs it.
 *
 * Per layer, on x [n, d_model] (F32 residual stream):
 *   h = RMSNorm(x) (no mean subtraction, eps layer_norm_epsilon)
 *   x += o(attention(q h, k h, v h)): num_heads x d_kv, no 1/sqrt(d) scaling,
 *        plus this layer's own relative position bias (umT5: every layer has
 *        one, unlike T5 where layer 0's is shared)
 *   x += wo(gelu_tanh(wi_0 RMSNorm(x)) * wi_1 RMSNorm(x))
 * then the final RMSNorm.  Bias: bucket(key - query) per dp_umt5_relative_bucket,
 * looked up in relative_attention_bias.weight [num_buckets, num_heads].
 *
 * Only the prompt's real tokens are computed.  In the pipeline the padding
 * keys are masked out, so the real rows do not depend on the padding at all;
 * the output has text_len rows, the real ones first and zeros after, exactly
 * like WanPipeline._get_t5_prompt_embeds.
 *
 * Weights come from text_encoder/ (config.json + one or sharded safetensors,
 * diffusers layout, transformers names) through dp_weights: on the CPU
 * backend F32 tensors are borrowed from the mmap, so the 22.7 GB fp32 XXL
 * checkpoint is paged in as layers run, never read whole; other backends get
 * each tensor converted on its own from the mapping (weight_dtype for the
 * matrices, F32 for norms).  The token embedding shared.weight is never
 * uploaded: the rows of the prompt's ids are gathered on the host from the
 * mapping and converted to F32.
 */
#ifndef DUALPARAL_UMT5_H
#define DUALPARAL_UMT5_H

#include "dualparal/backend.h"
#include "dualparal/tokenizer.h"

G_BEGIN_DECLS

/* Sizes from text_encoder/config.json (transformers key names in comments). */
typedef struct {
  int vocab_size;   /* vocab_size (256384 for Wan's umT5-XXL) */
  int d_model;      /* d_model (4096) */
  int d_kv;         /* d_kv: per-head dimension (64) */
  int d_ff;         /* d_ff (10240) */
  int num_heads;    /* num_heads (64) */
  int num_layers;   /* num_layers (24) */
  int num_buckets;  /* relative_attention_num_buckets (default 32) */
  int max_distance; /* relative_attention_max_distance (default 128) */
  float eps;        /* layer_norm_epsilon (default 1e-6) */
} dp_umt5_config;

/* Reads and validates text_encoder_dir/config.json: model_type "umt5" (when
 * present), feed_forward_proj "gated-gelu" (the default), positive sizes. */
gboolean dp_umt5_config_load (const char *text_encoder_dir, dp_umt5_config *cfg, GError **error);

typedef struct dp_umt5 dp_umt5;

/* Config and weights of text_encoder_dir onto be.  Every tensor is checked
 * (name, shape) at load; errors name the file or tensor.  be is borrowed and
 * must outlive the encoder. */
dp_umt5 *dp_umt5_load (dp_backend *be, const char *text_encoder_dir, GError **error);
void dp_umt5_free (dp_umt5 *m);
const dp_umt5_config *dp_umt5_get_config (const dp_umt5 *m);

/* Encodes ids[0..n_tokens) (the real tokens, EOS included: what
 * dp_tokenizer_encode returns) into *out, a new owned host F32 tensor
 * [text_len, d_model] (free with dp_tensor_free): row i < n_tokens is the
 * encoder output of token i, the rows after are zero.  Needs
 * 1 <= n_tokens <= text_len and every id < vocab_size (DP_ERROR_INVALID).
 * Activations come from an arena kept in m, grown to the longest prompt seen. */
gboolean dp_umt5_encode (dp_umt5 *m, const int32_t *ids, int n_tokens, int text_len,
                         dp_tensor *out, GError **error);

/* Tokenizes prompt (dp_tokenizer_encode) and encodes it: the pipeline's
 * prompt embedding.  *n_tokens (may be NULL) gets the real token count. */
gboolean dp_umt5_encode_prompt (dp_umt5 *m, const dp_tokenizer *tok, const char *prompt,
                                int text_len, dp_tensor *out, int *n_tokens, GError **error);

/* The relative position bucket of rel = key position - query position for a
 * bidirectional encoder (transformers' _relative_position_bucket, computed in
 * single precision like torch so the boundaries agree):
 *   half = num_buckets / 2, exact = half / 2, a = |rel|,
 *   bucket = (rel > 0 ? half : 0)
 *          + (a < exact ? a : min (half - 1, exact + (int) (logf (a / exact)
 *                         / (float) log (max_distance / exact) * (half - exact)))). */
int dp_umt5_relative_bucket (int rel, int num_buckets, int max_distance);

/* A text encoder held for a generator: loaded once and kept (keep TRUE:
 * prompt changes encode at once on its device), or loaded for each use and
 * freed after it (keep FALSE: its memory, 11 GB for umT5-XXL in BF16, is
 * free while the transformer and the VAE run; each encode then first loads
 * the weights again).  dp_umt5_holder_new checks the config (and loads the
 * weights when keep); DP_ERROR_* as dp_umt5_load.  One user at a time. */
typedef struct dp_umt5_holder dp_umt5_holder;
dp_umt5_holder *dp_umt5_holder_new (dp_backend *be, const char *text_encoder_dir, gboolean keep, GError **error);
void dp_umt5_holder_free (dp_umt5_holder *h);
const dp_umt5_config *dp_umt5_holder_config (const dp_umt5_holder *h);
/* The encoder, loaded if it is not (NULL with error on failure); give it
 * back with dp_umt5_holder_release. */
dp_umt5 *dp_umt5_holder_acquire (dp_umt5_holder *h, GError **error);
void dp_umt5_holder_release (dp_umt5_holder *h);
/* Whether the weights are loaded now; loads since creation. */
gboolean dp_umt5_holder_loaded (const dp_umt5_holder *h);
int dp_umt5_holder_loads (const dp_umt5_holder *h);

G_END_DECLS

#endif
