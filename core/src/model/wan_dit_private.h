/* Wan DiT internals shared by wan_dit_load.c (config, weights) and
 * wan_dit.c (the forward pass).  Not installed. */
#ifndef DP_WAN_DIT_PRIVATE_H
#define DP_WAN_DIT_PRIVATE_H

#include "dualparal/arena.h"
#include "dualparal/wan_dit.h"
#include "dualparal/weights.h"

G_BEGIN_DECLS

/* Rows of the feed-forward intermediate [rows, ffn_dim] computed at once:
 * bounds its memory at full video sizes while keeping the GEMMs large. */
#define DP_WAN_FFN_CHUNK_ROWS 8192

/* Time-embedding slots: distinct timesteps one call may use (a DualParal
 * window of a per-token model has two: its context frames' and its own). */
#define DP_WAN_TIME_SLOTS DP_WAN_MAX_SPAN_TIMESTEPS

/* One transformer block.  Matrices in be->weight_dtype, the rest F32. */
typedef struct {
  dp_tensor sst; /* scale_shift_table viewed as [6, dim] */
  /* attn1: self-attention */
  dp_tensor q_w, q_b, k_w, k_b, v_w, v_b, o_w, o_b, norm_q, norm_k;
  /* attn2: cross-attention */
  dp_tensor cq_w, cq_b, ck_w, ck_b, cv_w, cv_b, co_w, co_b, cnorm_q, cnorm_k;
  dp_tensor norm2_w, norm2_b; /* data NULL when cross_attn_norm is false */
  dp_tensor ff1_w, ff1_b, ff2_w, ff2_b;
} wan_layer;

struct dp_wan_dit {
  dp_backend *be;
  dp_wan_config cfg;
  char *dir;
  int layer_begin, layer_end, n_layers; /* n_layers = layer_end - layer_begin */
  gboolean has_embed, has_head, has_text, has_time;
  dp_weights *weights;

  dp_tensor patch_w, patch_b; /* [dim, in_channels * pt * ph * pw] (weight dtype), [dim] */
  dp_tensor te1_w, te1_b, te2_w, te2_b; /* time_embedder, F32 (diffusers keeps it F32) */
  dp_tensor tp_w, tp_b;                 /* time_proj [6 dim, dim] */
  dp_tensor tx1_w, tx1_b, tx2_w, tx2_b; /* text_embedder */
  wan_layer *layers;                    /* n_layers */
  dp_tensor head_sst;                   /* [2, dim] F32 */
  dp_tensor proj_w, proj_b;             /* [out_channels * pt * ph * pw, dim] */

  /* Time path: temb = time_embedder(sinusoid(t)) and e0 = time_proj(SiLU(
   * temb)) for up to DP_WAN_TIME_SLOTS timesteps, each recomputed only when
   * its slot is taken by another timestep (least recently used).  A call
   * with per-frame timesteps (Wan2.2 TI2V) holds one slot per distinct
   * value; the scalar path uses one.  Persistent buffers carved from one
   * backend allocation (time_bytes). */
  void *time_mem;
  size_t time_bytes;
  float *sinus_host; /* [freq_dim] */
  dp_tensor sinus, time_h, temb_silu;       /* scratch: F32 [1, freq_dim], [1, dim] x 2 */
  dp_tensor temb_silu_act, e0_act;          /* scratch: act dtype [1, dim], [1, 6 dim] */
  dp_tensor temb[DP_WAN_TIME_SLOTS];        /* F32 [1, dim] */
  dp_tensor e0[DP_WAN_TIME_SLOTS];          /* F32 [6, dim] */
  gboolean time_valid[DP_WAN_TIME_SLOTS];
  float time_value[DP_WAN_TIME_SLOTS];
  uint64_t time_used[DP_WAN_TIME_SLOTS];    /* time_clock when last used: LRU */
  uint64_t time_clock;

  /* Text condition (dp_wan_dit_set_context / _use_context).  Up to
   * ctx_max slots of cross-attention K/V, each for one context key; cross_k
   * / cross_v point at the current slot's. */
  int batch, text_len;
  struct {
    void *mem;
    dp_tensor *k, *v;  /* n_layers each [B, Lt, dim] act dtype; K after norm_k */
    uint64_t key;      /* 0: none (dp_wan_dit_set_context never matches) */
    uint64_t used;     /* ctx_clock when last selected: LRU */
  } ctx[DP_WAN_MAX_CONTEXT_SLOTS];
  int ctx_n, ctx_max, ctx_cur;
  uint64_t ctx_clock;
  uint64_t ctx_computed;        /* contexts computed (statistics) */
  size_t cross_bytes;           /* all slots */
  dp_tensor *cross_k, *cross_v; /* the current slot's */

  /* Host scratch: default positions 0..n-1. */
  int *seq_pos;
  int seq_pos_len;

  gboolean (*is_cancelled) (gpointer data); /* dp_wan_dit_set_cancel(); NULL: never */
  gpointer cancel_data;

  dp_arena arena;           /* own activations, unused while arena_owner is set */
  struct dp_wan_dit *arena_owner; /* dp_wan_dit_share_arena(): whose arena the calls use, NULL: own */
  int64_t ffn_chunk_rows; /* FFN rows per GEMM pair (tests shrink it to cover the chunking) */
};

/* The arena the calls use: the owner's when shared (dp_wan_dit_share_arena). */
static inline dp_arena *
wan_dit_arena (struct dp_wan_dit *dit)
{
  return dit->arena_owner ? &dit->arena_owner->arena : &dit->arena;
}

G_END_DECLS

#endif
