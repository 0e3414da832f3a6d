/* DualParal engine: internal types shared by the files of core/src/engine. */
#ifndef DUALPARAL_ENGINE_PRIVATE_H
#define DUALPARAL_ENGINE_PRIVATE_H

#include "dualparal/engine.h"

G_BEGIN_DECLS

/* ---- feature cache (feature_cache.c) --------------------------------------
 *
 * Per stage: for each local layer, the raw self-attention K and V (to_k /
 * to_v outputs, before norm_k and RoPE) of the first C own frames of the
 * block that stage ran last.  One slot: the pass that reads it (the older
 * neighbour, next in the iteration) also refills it with its own frames
 * (wan_dit.h allows the same buffers for extras and export).  It never
 * leaves the stage's backend. */
typedef struct {
  dp_backend *be;
  int n_layers;             /* local layers; 0: nothing to cache */
  int frames;               /* C */
  dp_tensor k, v;           /* [n_layers, B, C * tokens_per_frame, dim], act dtype */
  int64_t held_iteration;   /* whose frames the slot holds, -1: none */
  int64_t held_block;
} dp_feature_cache;

gboolean dp_feature_cache_init (dp_feature_cache *c, dp_backend *be, int n_layers, int batch, int frames,
                                int64_t tokens_per_frame, int dim, GError **error);
void dp_feature_cache_clear (dp_feature_cache *c);
size_t dp_feature_cache_bytes (const dp_feature_cache *c);
/* Sets span's extra / export fields for pass p (positions: 0, 1, 2, ...
 * long enough for window + C) and records what the slot will hold after it.
 * FALSE (internal error) when the slot does not hold the next block's frames
 * of the same iteration although the pass needs them. */
gboolean dp_feature_cache_bind (dp_feature_cache *c, const dp_block_pass *p, const int *positions,
                                dp_wan_span *span, GError **error);

/* ---- engine (engine.c, stage.c, engine_run.c) ------------------------------ */

typedef struct {
  dp_engine *engine;
  int index;
  int layer_begin, layer_end;
  dp_backend *be;  /* not owned */
  dp_wan_dit *dit; /* owned */
  dp_wan_dit *dit2; /* owned: the low-noise expert's layers (two experts), else NULL */

  /* per run */
  dp_tensor hidden[2];      /* [B, window tokens, dim] F32 */
  dp_tensor velocity[2];    /* [out_channels, max block frames, H, W] F32 (stage 0, last stage) */
  dp_feature_cache cache;
  float *frame_t;           /* [max_window] the pass's per-frame timesteps (per_token_time) */
  GThread *thread;
  size_t buffer_bytes;       /* held by the current run (0 outside a run) */
  size_t cache_bytes;
  size_t model_bytes;        /* dp_wan_dit_memory_bytes, updated when the arena is sized */

  /* statistics (engine stats_lock) */
  gint64 busy_us, idle_us;
  int64_t passes;

  int64_t low_block;         /* engine cond_lock: the stage runs no block below it again */
} engine_stage;

/* A change point of a run's conditionings: blocks first_block.. (up to the
 * next entry) have cond (owned reference). */
typedef struct {
  int64_t first_block;
  dp_engine_cond *cond;
} dp_engine_cond_entry;

struct dp_engine {
  dp_engine_params params;
  dp_schedule *schedule;     /* owned copy */
  dp_block_schedule bs;
  dp_wan_config cfg;
  int n;
  int local_stage;           /* -1: every stage runs here (threads); else only this one */
  engine_stage st[DP_ENGINE_MAX_STAGES];
  dp_transport *transport;
  gboolean own_transport;
  int64_t tokens_per_frame;  /* (H / patch_h) (W / patch_w) */
  int max_window;            /* frames of the largest window */
  int *positions;            /* 0, 1, ..., max_window + C */
  gboolean two_experts;      /* params.expert2_dir was given: every local stage has dit2 */

  gint cancelled;            /* atomic */
  const gint *ext_cancel;    /* the run's dp_engine_output.cancel, atomic */
  GMutex lock;               /* error */
  GError *error;             /* first failure of any stage */

  GMutex stats_lock;
  dp_engine_stats stats;     /* stage 0's fields */
  gint64 run_start_us;
  int batch;                 /* B of the current run */
  const dp_tensor *context;  /* host, during a run */

  GMutex cond_lock;          /* conds, conds_known, stages' low_block */
  GCond cond_cv;             /* conds_known grew */
  GArray *conds;             /* dp_engine_cond_entry by first_block (cond.c) */
  int64_t conds_known;       /* the list is complete for blocks up to this one (a worker
                              * learns each block's from rank 0; everyone else: all) */
  gboolean follow_conds;     /* the next run (a worker's) learns blocks' conditionings
                              * from dp_engine_stage_add_cond */
  gboolean conds_begun;      /* conds holds the current run's */
  GArray *conds_early;       /* dp_engine_cond_entry: told before the run began */
};

/* ---- conditionings (cond.c) ---------------------------------------------- */

/* The run's first conditioning: context with params guidance, block 0 on. */
gboolean dp_engine_conds_begin (dp_engine *e, const dp_tensor *context, GError **error);
/* Drops the run's conditionings. */
void dp_engine_conds_end (dp_engine *e);
/* Stage 0: block and the blocks after it take cond (reference taken, also
 * on failure).  Refused for a context of another shape than the run's.
 * With stages in other processes the caller forwards it to them
 * (engine/generate.c through dist/cluster.h). */
gboolean dp_engine_conds_add (dp_engine *e, int64_t block, dp_engine_cond *cond, GError **error);
/* Makes stage st's DiT use the context of block's conditioning (computing
 * its cross-attention K/V unless a slot holds them) and gives its
 * guidance; low: the lowest block the stage may still run (its current
 * queue's).  With two experts, the DiT of step's expert (each expert has its
 * own text embedding and cross-attention weights, so its own K/V slots) and
 * its guidance; step -1: both experts (a run's start). */
gboolean dp_engine_stage_use_cond (dp_engine *e, engine_stage *st, int64_t block, int64_t low, int step,
                                   double *guidance, GError **error);
/* The expert (st->dit or st->dit2) that runs sampler step `step` on stage
 * st: two experts switch at params.boundary (engine.h). */
dp_wan_dit *dp_engine_stage_expert (dp_engine *e, engine_stage *st, int step);

/* Records a stage's failure (the first one wins; a cancellation is not a
 * failure) and stops every stage. */
void dp_engine_fail (dp_engine *e, GError *error);
gboolean dp_engine_is_cancelled (dp_engine *e);

/* Adds elapsed time since *t0 to a stage's busy or idle time; *t0 = now. */
void dp_engine_stage_account (dp_engine *e, engine_stage *st, gboolean busy, gint64 *t0);

/* The span of pass p on stage st (binds its feature cache). */
gboolean dp_engine_pass_span (dp_engine *e, engine_stage *st, const dp_block_pass *p, dp_wan_span *span,
                              GError **error);
/* hidden[k] viewed for a window of `frames` frames. */
dp_tensor dp_engine_hidden_view (dp_engine *e, engine_stage *st, int k, int frames);
/* velocity[k] viewed for `frames` own frames. */
dp_tensor dp_engine_velocity_view (dp_engine *e, engine_stage *st, int k, int frames);

/* Per-stage start of a run: text context, arena reservation.  Every stage's
 * thread calls it on its own backend. */
gboolean dp_engine_stage_prepare (dp_engine *e, engine_stage *st, GError **error);
/* One run of stage st (1..N-1): prepare, then its loop, on the calling
 * thread.  Errors other than a cancel are prefixed "stage r: ". */
gboolean dp_engine_stage_main (engine_stage *st, GError **error);
/* Thread function of stages 1..N-1 in one process (dp_engine_stage_main;
 * a failure goes to dp_engine_fail). */
gpointer dp_engine_stage_thread (gpointer data);

/* Stage 0's loop (engine_run.c), on the thread that called dp_engine_run. */
gboolean dp_engine_drive (dp_engine *e, dp_wan_vae *vae, const dp_engine_output *out, GError **error);

G_END_DECLS

#endif
