/* dualparal: the Wan2.1 diffusion transformer (DiT).
 *
 * Numerically the diffusers WanTransformer3DModel (text-to-video), written
 * once against the backend table (backend.h), in the form DualParal needs:
 *
 * - A dp_wan_dit holds a contiguous range of the transformer layers, a
 *   *stage*: [layer_begin, layer_end).  The stage that starts at layer 0 also
 *   has the patch embedding, the stage that ends at num_layers the head
 *   (norm_out, proj_out, unpatchify, guidance).  One process may hold one
 *   dp_wan_dit per device, each with its own backend and driven by its own
 *   thread; a dp_wan_dit (and its backend) is not thread-safe.
 * - Work is done on a *span*: a run of latent frames (a DualParal window, or
 *   the whole video) with RoPE frame positions chosen by the caller.  The
 *   span's self-attention may also attend to extra keys/values of other
 *   frames (the feature cache) at caller-chosen positions, and can export the
 *   raw self-attention K/V of a range of its own frames for the cache.
 * - Hidden states between stages are F32 [B, tokens, dim] in backend memory;
 *   tokens are ordered (frame, row, column), so the tokens of a frame range
 *   are a contiguous run of rows.
 * - Batch B is 2 for classifier-free guidance (entry 0 conditional, entry 1
 *   unconditional, sharing the latent and the timestep) or 1 (conditional
 *   only: guidance 1, distilled checkpoints).  B is fixed by the context.
 *
 * Per generation: dp_wan_dit_set_context() (text embedding and every local
 * layer's cross-attention K/V, computed once).  Per step and block:
 * dp_wan_dit_embed() on the first stage, dp_wan_dit_run_layers() on every
 * stage, dp_wan_dit_head() on the last.  dp_wan_dit_forward() chains them for
 * a model that holds every layer (the classic pipeline, tests).
 *
 * Memory: weights are loaded once; activations come from one arena per
 * dp_wan_dit, sized by a measuring pass for the span shape and grown only
 * when a larger shape arrives (dp_wan_dit_reserve() sizes it up front), so a
 * step allocates nothing.
 *
 * Precision: the residual stream, the time embedding, the modulation
 * vectors, norm statistics and RoPE angles are F32; everything fed to a
 * linear layer or to attention is in be->act_dtype, matrices in
 * be->weight_dtype (the CPU backend: F32 throughout).  See docs/model.md.
 *
 * Asynchrony: the calls queue work on the backend and report errors recorded
 * so far; read results after be->ops->sync().
 */
#ifndef DUALPARAL_WAN_DIT_H
#define DUALPARAL_WAN_DIT_H

#include "dualparal/backend.h"

G_BEGIN_DECLS

/* Sizes from transformer/config.json (diffusers key names in comments). */
typedef struct {
  int patch_t, patch_h, patch_w; /* patch_size; patch_t must be 1 (every Wan checkpoint) */
  int num_heads;                 /* num_attention_heads */
  int head_dim;                  /* attention_head_dim */
  int dim;                       /* num_heads * head_dim */
  int in_channels, out_channels; /* latent channels in / out */
  int text_dim;                  /* text encoder width (4096 for umT5-XXL) */
  int freq_dim;                  /* sinusoidal time embedding size (256) */
  int ffn_dim;
  int num_layers;
  gboolean cross_attn_norm;      /* norm2 (affine LayerNorm) before cross-attention */
  float eps;                     /* every LayerNorm and RMSNorm */
  int rope_max_seq_len;          /* RoPE positions (and token rows / columns) must stay below */
  float rope_theta;              /* 10000 (fixed in diffusers) */
} dp_wan_config;

/* Reads and validates transformer_dir/config.json.  The size keys are
 * required; eps, cross_attn_norm, qk_norm, rope_max_seq_len default as in
 * diffusers.  Image-to-video configurations (image_dim, added_kv_proj_dim)
 * are refused with DP_ERROR_UNSUPPORTED. */
gboolean dp_wan_config_load (const char *transformer_dir, dp_wan_config *cfg, GError **error);

typedef struct dp_wan_dit dp_wan_dit;

/* Loads the stage [layer_begin, layer_end) from a diffusers transformer/
 * directory (config.json + one or sharded safetensors files) onto be (not
 * owned; it must outlive the dp_wan_dit).  0 <= layer_begin <= layer_end <=
 * num_layers; layer_end -1 means num_layers (the whole model: 0, -1).  The whole checkpoint is validated on every stage (every
 * tensor present with its expected shape, no unexpected tensor), then only
 * what the stage uses is loaded: its layers, the time embedding (every stage
 * needs the modulation), the text embedding (stages with layers), the patch
 * embedding (layer_begin == 0) and the head (layer_end == num_layers).
 * Errors name the file and the tensor or key. */
dp_wan_dit *dp_wan_dit_load (dp_backend *be, const char *transformer_dir, int layer_begin,
                             int layer_end, GError **error);
void dp_wan_dit_free (dp_wan_dit *dit);

const dp_wan_config *dp_wan_dit_config (const dp_wan_dit *dit);
void dp_wan_dit_layers (const dp_wan_dit *dit, int *layer_begin, int *layer_end);
gboolean dp_wan_dit_has_embed (const dp_wan_dit *dit);
gboolean dp_wan_dit_has_head (const dp_wan_dit *dit);
/* Bytes of backend memory held: weights copied to the backend (borrowed
 * mmap pages not counted), cross-attention K/V, arena. */
size_t dp_wan_dit_memory_bytes (const dp_wan_dit *dit);

/* The text condition, once per generation: context is a HOST tensor
 * [B, Lt, text_dim] (any dtype; B = 1 conditional only, B = 2 conditional
 * then unconditional; rows after a prompt's tokens are zeros, as the umT5
 * encoder leaves them; they are attended like diffusers does, unmasked).
 * Computes the text embedding and every local layer's cross-attention K
 * (after norm_k) and V; sets the batch B for the later calls.  Required
 * before any other forward call, on every stage. */
gboolean dp_wan_dit_set_context (dp_wan_dit *dit, const dp_tensor *context, GError **error);
/* Several contexts in one generation (prompt changes, docs/algorithm.md
 * "Prompt changes"): the DiT keeps the cross-attention K/V of up to `slots`
 * contexts (default DP_WAN_DEFAULT_CONTEXT_SLOTS, 1..DP_WAN_MAX_CONTEXT_SLOTS),
 * each under a caller's key.  dp_wan_dit_use_context() makes the context of
 * `key` the current one: at once when a slot holds it, else it is computed
 * (as dp_wan_dit_set_context) into a new slot or the least recently used
 * one; *computed (may be NULL) says which.  key 0 is never matched (always
 * computed); dp_wan_dit_set_context() is dp_wan_dit_use_context() with key
 * 0.  Every slot has the B and Lt of the last context: another shape drops
 * them all.  A slot costs n_local_layers x 2 x B x Lt x dim act-dtype
 * values of backend memory, allocated when first needed. */
#define DP_WAN_DEFAULT_CONTEXT_SLOTS 2
#define DP_WAN_MAX_CONTEXT_SLOTS 8
gboolean dp_wan_dit_use_context (dp_wan_dit *dit, uint64_t key, const dp_tensor *context, gboolean *computed,
                                 GError **error);
/* Fewer slots than exist drops them all (the next call computes again). */
void dp_wan_dit_set_context_slots (dp_wan_dit *dit, int slots);
/* Contexts computed so far (set_context and misses of use_context). */
uint64_t dp_wan_dit_contexts_computed (const dp_wan_dit *dit);

/* Cancellation inside a forward call: is_cancelled(data) is asked before
 * every layer (from the calling thread; it must be cheap and thread-safe
 * towards whoever cancels).  When it returns TRUE, dp_wan_dit_run_layers()
 * and dp_wan_dit_forward() stop and fail with DP_ERROR_CANCELLED; hidden
 * and velocity then hold partial results.  NULL removes the hook.  data is
 * not owned and must outlive the calls. */
void dp_wan_dit_set_cancel (dp_wan_dit *dit, gboolean (*is_cancelled) (gpointer data), gpointer data);
/* Makes dit use owner's activation arena instead of its own (NULL: its own
 * again, allocated when next needed), for models that take turns on one
 * backend and thread, never within one call of each other (Wan2.2's two
 * experts): the arena is sized for the larger of their needs and counted in
 * owner's dp_wan_dit_memory_bytes only.  Both on the same backend; owner
 * must not share another's and must outlive dit (or dit be unshared
 * first).  Nothing lives in the arena between calls, so the order of the
 * two models' calls does not matter. */
void dp_wan_dit_share_arena (dp_wan_dit *dit, dp_wan_dit *owner);

/* B set by the last dp_wan_dit_set_context(), 0 before. */
int dp_wan_dit_batch (const dp_wan_dit *dit);

/* A span: `frames` consecutive latent frames of size height x width (latent
 * pixels, multiples of the patch size), Hp x Wp = height/patch_h x
 * width/patch_w tokens per frame, L = frames * Hp * Wp tokens.
 *
 * Feature cache (design section 3): extra_k / extra_v hold, for each local
 * layer i (layer layer_begin + i), the self-attention K and V of
 * extra_frames other frames, as they came out of to_k / to_v (before norm_k
 * and RoPE): [n_local_layers, B, extra_frames * Hp * Wp, dim] in
 * be->act_dtype, backend memory.  They are appended after the span's own
 * keys, get norm_k and RoPE at extra_pos, and are attended by every query.
 * export_k / export_v (same layout, export_frames * Hp * Wp rows) receive
 * the raw K / V of the span's frames [export_first, export_first +
 * export_frames).  At each layer the extras are consumed before the export
 * is written, so the engine may pass the same buffers for both (the cache
 * slot read by this block is refilled with this block's frames).
 *
 * The head predicts the frames [out_first, out_first + out_frames) only
 * (out_frames 0: all), the span's own part of a DualParal window. */
typedef struct {
  int frames;            /* latent frames (= token frames: patch_t is 1) */
  int height, width;     /* latent size */
  const int *frame_pos;  /* [frames] RoPE time positions (host); NULL: 0, 1, ..., frames-1 */

  int extra_frames;      /* 0: no feature cache */
  const int *extra_pos;  /* [extra_frames] their RoPE time positions (host) */
  const dp_tensor *extra_k, *extra_v;

  int export_first, export_frames; /* export_frames 0: no export */
  dp_tensor *export_k, *export_v;

  int out_first, out_frames;

  /* Per-token timesteps (Wan2.2 TI2V-5B, diffusers' 2-D timestep with
   * "expand_timesteps"): [frames] the timestep of each frame's tokens
   * (host, valid during the call); NULL: every token at the call's
   * timestep argument, which is then ignored when this is set.  Runs of
   * equal values form segments of contiguous tokens; the time embedding is
   * computed once per distinct value and each segment's tokens get its
   * modulation (every block's AdaLN and the head's).  At most
   * DP_WAN_MAX_SPAN_TIMESTEPS distinct values and DP_WAN_MAX_SPAN_SEGMENTS
   * runs.  All values equal is bitwise the scalar path. */
  const float *frame_timesteps;
} dp_wan_span;

#define DP_WAN_MAX_SPAN_TIMESTEPS 4
#define DP_WAN_MAX_SPAN_SEGMENTS 32

/* A span of frames x height x width at positions 0..frames-1, no cache,
 * no export, full output. */
void dp_wan_span_init (dp_wan_span *span, int frames, int height, int width);
/* Tokens of the span (L) and the hidden-state shape [B, L, dim]. */
int64_t dp_wan_span_tokens (const dp_wan_dit *dit, const dp_wan_span *span);

/* Grows the arena for the biggest work a span of this shape needs (embed of
 * the whole span, layers, head), so that the per-step calls allocate
 * nothing.  Optional: the calls size the arena themselves. */
gboolean dp_wan_dit_reserve (dp_wan_dit *dit, const dp_wan_span *span, GError **error);

/* First stage: patch-embeds latent [in_channels, f, height, width] (F32,
 * backend memory) into the token rows of frames [frame_offset, frame_offset
 * + f) of hidden [B, L, dim] (F32, every batch entry gets the same tokens).
 * A window [C context frames | P own frames] can be embedded in two calls
 * without assembling it. */
gboolean dp_wan_dit_embed (dp_wan_dit *dit, const dp_tensor *latent, int frame_offset,
                           dp_tensor *hidden, GError **error);

/* Every stage: runs the local layers in place on hidden [B, L, dim] (F32)
 * for the span at the diffusion timestep (the scheduler's t, 0..1000), or
 * at the span's frame_timesteps when it has them. */
gboolean dp_wan_dit_run_layers (dp_wan_dit *dit, const dp_wan_span *span, float timestep,
                                dp_tensor *hidden, GError **error);

/* Last stage: the velocity of the frames [out_first, out_first + out_frames)
 * into velocity [out_channels, out_frames, height, width] (F32, backend
 * memory).  B = 2: v = v_uncond + guidance * (v_cond - v_uncond); B = 1:
 * v = v_cond (guidance ignored). */
gboolean dp_wan_dit_head (dp_wan_dit *dit, const dp_wan_span *span, float timestep,
                          float guidance, const dp_tensor *hidden, dp_tensor *velocity,
                          GError **error);

/* The whole model in one call (needs every layer: layer range [0, num_layers)):
 * latent [in_channels, F, H, W] -> velocity [out_channels, out_frames, H, W],
 * both F32 in backend memory.  span NULL: the whole latent at positions
 * 0..F-1, full output; else the span's settings apply (its frames, height
 * and width must match the latent).  The hidden states live in the arena. */
gboolean dp_wan_dit_forward (dp_wan_dit *dit, const dp_wan_span *span, const dp_tensor *latent,
                             float timestep, float guidance, dp_tensor *velocity, GError **error);

G_END_DECLS

#endif
