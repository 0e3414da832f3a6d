/* dualparal: the DualParal engine (DESIGN.md section 3, docs/algorithm.md).
 *
 * Block-wise pipelined denoising.  The video's latent frames are cut into
 * blocks of P frames; a FIFO queue holds blocks at different noise levels.
 * Every iteration a fresh noise block enters the queue, every block in it
 * advances one sampler step (the noisiest, newest block first) and the head
 * block leaves once it has had all T steps: T + blocks - 1 iterations.  A
 * block's model input is the window [last C frames of the previous, cleaner
 * block as they are now | its own P frames], all at the block's timestep;
 * its self-attention also sees the keys / values of the next (noisier)
 * block's first C frames from the feature cache; only the own frames'
 * prediction is used.  RoPE positions are window-relative (0..C+P-1, cached
 * frames C+P..2C+P-1): they never grow with the video.
 *
 * The DiT's layers are split over N stages (contiguous ranges, the
 * remainder spread over the first stages), each on its own thread and
 * backend; stage 0 embeds and steps the samplers, the last stage runs the
 * head and guidance and sends the prediction back to stage 0.  Different
 * blocks are in flight on different stages at the same time; the results
 * are bitwise those of one stage (the order of operations is fixed by the
 * schedule, never by timing).
 *
 * This header has four parts, each usable alone:
 * - dp_engine_split_layers(): the layer ranges of the stages;
 * - dp_block_schedule: the (iteration, block, step) bookkeeping, pure
 *   arithmetic (closed forms, so endless runs need no tables);
 * - dp_block_noise: coordinated noise, a pure function of the seed;
 * - dp_engine: loads the stages and runs a video.
 */
#ifndef DUALPARAL_ENGINE_H
#define DUALPARAL_ENGINE_H

#include "dualparal/sampler.h"
#include "dualparal/transport.h"
#include "dualparal/wan_dit.h"
#include "dualparal/wan_vae.h"

G_BEGIN_DECLS

#define DP_ENGINE_MAX_STAGES 16

/* Layers [*begin, *end) of stage `stage` when num_layers layers are split
 * over n_stages: contiguous, num_layers / n_stages each and one more for
 * the first num_layers % n_stages stages (the reference's split).  A stage
 * may get no layer when n_stages > num_layers. */
void dp_engine_split_layers (int num_layers, int n_stages, int stage, int *begin, int *end);

/* ---- the schedule -------------------------------------------------------
 *
 * Blocks: block 0 holds latent frames [0, P + C) (the reference's first
 * block: it has no cleaner neighbour to take context from, so it owns C
 * more frames), block b >= 1 holds [C + b P, C + (b + 1) P).  A video of F
 * latent frames has B = 1 block when F <= P + C (that block then has
 * exactly F frames: one block is the classic pipeline) and else
 * B = 1 + ceil ((F - P - C) / P) blocks; the last one is computed with all
 * its P frames and only its first F - (C + (B - 1) P) frames are kept
 * (padding, docs/algorithm.md says why).  Endless (F = -1): B is infinite.
 *
 * Iteration n (0-based) holds the blocks [lo, hi] with hi = min (n, B - 1)
 * and lo = max (0, n - T + 1); block b is at step n - b; they run hi first
 * (noisiest first).  A *pass* is one (iteration, block) pair: the window of
 * one block through the model at one step.  Passes are numbered in the
 * order they run; every stage runs them in that order. */
typedef struct {
  int block_frames;       /* P >= 1 */
  int context_frames;     /* C, 0 <= C <= P */
  int steps;              /* T >= 1 */
  int64_t latent_frames;  /* F >= 1, -1: endless */
  int64_t num_blocks;     /* B, -1: endless */
  int64_t num_iterations; /* T + B - 1, -1: endless */
  int64_t num_passes;     /* B T, -1: endless */
} dp_block_schedule;

/* DP_ERROR_INVALID for P < 1, C outside [0, P], T outside [1,
 * DP_SAMPLER_MAX_STEPS], F < 1 (other than -1), or a count beyond int64. */
gboolean dp_block_schedule_init (dp_block_schedule *s, int block_frames, int context_frames, int steps,
                                 int64_t latent_frames, GError **error);

/* Block b's latent frames: the first, how many it computes, how many of
 * them are kept (fewer than computed only for a padded last block). */
int64_t dp_block_schedule_block_first (const dp_block_schedule *s, int64_t block);
int dp_block_schedule_block_frames (const dp_block_schedule *s, int64_t block);
int dp_block_schedule_block_kept (const dp_block_schedule *s, int64_t block);
/* Most frames a block computes (block 0's), for sizing buffers. */
int dp_block_schedule_max_block_frames (const dp_block_schedule *s);

/* The blocks of iteration n: [*lo, *hi] (n < num_iterations). */
void dp_block_schedule_iteration (const dp_block_schedule *s, int64_t iteration, int64_t *lo, int64_t *hi);
/* Number of the first pass of iteration n (also valid for n =
 * num_iterations: then num_passes). */
int64_t dp_block_schedule_first_pass (const dp_block_schedule *s, int64_t iteration);
/* Number of pass (iteration, block); -1 when block is not in that iteration. */
int64_t dp_block_schedule_pass_index (const dp_block_schedule *s, int64_t iteration, int64_t block);

/* One pass and the shape of its window. */
typedef struct {
  int64_t index;      /* pass number */
  int64_t iteration;
  int64_t block;
  int step;           /* sampler step of the block, 0..T-1 */
  int64_t queue_lo, queue_hi; /* the blocks of this iteration */
  /* The window: [context | own] frames, positions 0..window_frames-1. */
  int context_frames; /* C, or 0 for block 0 */
  int own_frames;     /* the block's frames */
  int window_frames;  /* context + own */
  /* Feature cache: cache_in = the next (noisier) block ran just before on
   * every stage, so the cache holds its first C frames' raw K/V (positions
   * window_frames..window_frames+C-1); cache_out = the previous (cleaner)
   * block runs next, so this pass exports its own first C frames. */
  gboolean cache_in, cache_out;
  /* Before stage 0 embeds this pass, the predictions of every pass below
   * this number must have been applied (own block's and context block's
   * steps of the previous iteration). */
  int64_t depends_below;
} dp_block_pass;

/* Fills *pass with pass (iteration, block); FALSE when that is not a pass. */
gboolean dp_block_schedule_pass (const dp_block_schedule *s, int64_t iteration, int64_t block,
                                 dp_block_pass *pass);
/* Pass 0. */
void dp_block_schedule_first (const dp_block_schedule *s, dp_block_pass *pass);
/* The pass after *pass, in place; FALSE (pass unchanged) after the last. */
gboolean dp_block_schedule_next (const dp_block_schedule *s, dp_block_pass *pass);

/* ---- coordinated noise --------------------------------------------------
 *
 * One template of P + C latent noise frames is drawn from (seed, stream):
 * template frame j is dp_rng_latent_noise (seed, stream, j, 1, ...), so the
 * template is exactly the first P + C frames of the classic pipeline's noise
 * for the same seed and stream.  The template is a pool of frames that
 * blocks rearrange:
 *   order_1 = (0, 1, ..., P+C-1); block 0's noise is template frames
 *     order_1[0..frames0)  (the reference permutes here too; a permutation
 *     of i.i.d. frames is just as random, and the identity makes a one-block
 *     video equal to the classic pipeline);
 *   for b >= 1: order_{b+1} = (order_b[P..P+C) | order_b[pi_b(0)], ...,
 *     order_b[pi_b(P-1)]) and block b's noise is order_{b+1}[C..C+P),
 * with pi_b a permutation of 0..P-1.  So block b's frames are a permutation
 * of the pool that avoids the previous block's last C frames (they are
 * order_b[P..P+C), moved to the front), as in the reference.  pi_b is a
 * Fisher-Yates shuffle driven by Philox words (seed, stream + 1, offset
 * 2 P b): a pure function of (seed, b), so any stage or device rebuilds any
 * block's noise without communication. */
typedef struct dp_block_noise dp_block_noise;

/* Draws the template (host memory, channels * (P + C) * height * width
 * floats); NULL with DP_ERROR_NOMEM / DP_ERROR_INVALID. */
dp_block_noise *dp_block_noise_new (const dp_block_schedule *s, uint64_t seed, uint64_t stream, int channels,
                                    int height, int width, GError **error);
void dp_block_noise_free (dp_block_noise *n);
/* Template frame indices of block b's noise frames, frames-of-block of
 * them.  Sequential blocks cost O(P + C); any other block is recomputed from
 * block 0 (O(b (P + C)) integer operations). */
void dp_block_noise_order (dp_block_noise *n, int64_t block, int *out);
/* Block b's noise, host F32 [channels, frames, height, width]. */
void dp_block_noise_fill (dp_block_noise *n, int64_t block, float *out);
/* The template, host F32 [channels, P + C, height, width]. */
const float *dp_block_noise_template (const dp_block_noise *n);

/* ---- the engine --------------------------------------------------------- */

/* Philox stream of the latent noise (rng.h); stream + 1 drives the
 * permutations.  The classic pipeline draws its noise from the same stream. */
#define DP_ENGINE_NOISE_STREAM 0

typedef struct {
  int block_frames;            /* P */
  int context_frames;          /* C */
  int64_t latent_frames;       /* F, or -1: endless */
  int latent_height, latent_width; /* multiples of the patch size */
  const dp_schedule *schedule; /* T steps; copied */
  double guidance;             /* used when the context has B = 2 */
  uint64_t seed;
  uint64_t noise_stream;       /* DP_ENGINE_NOISE_STREAM */
  /* Wan2.2 two experts (T2V-A14B; docs/algorithm.md "Two experts"): the
   * low-noise expert's transformer directory (transformer_2), NULL: one
   * transformer.  Every stage then holds its layer range of both experts
   * and each pass runs the expert of its block's step: transformer_dir's
   * when (float) timestep >= (float) boundary, else expert2_dir's (as
   * diffusers' WanPipeline).  Workers in other processes load their own
   * model directory's transformer_2 (docs/distributed.md). */
  const char *expert2_dir;     /* borrowed, used only by dp_engine_new* */
  double boundary;             /* boundary_ratio x num_train_timesteps */
  double guidance_2;           /* the low-noise expert's guidance (B = 2); 0: the block's
                                * conditioning's, as the high-noise expert */
  /* Wan2.2 TI2V-5B ("expand_timesteps": a timestep per token;
   * docs/algorithm.md "Per-token timesteps"): a window's context frames run
   * at the timestep of their own noise level, the step the previous block
   * is at (0 once it is clean), its own frames at the block's.  FALSE: every
   * window frame at the block's timestep (Wan2.1, T2V-A14B). */
  gboolean per_token_time;
} dp_engine_params;

/* Per stage figures.  Times, bytes moved and passes add up over the current
 * (or the last) run; cache, buffer and block bytes are what the current run
 * holds now (0 outside a run: everything a run allocates is freed when it
 * returns); model bytes are the stage model's, held by the engine. */
typedef struct {
  int layer_begin, layer_end;
  double busy_seconds;     /* computing: embedding, layers, head, and on stage 0 the
                            * samplers, noise and VAE decoding */
  double idle_seconds;     /* waiting: for the transport, for predictions */
  uint64_t bytes_sent, bytes_received;
  size_t cache_bytes;      /* feature cache (keys and values of C frames per local layer) */
  size_t buffer_bytes;     /* hidden-state / prediction buffers */
  size_t model_bytes;      /* dp_wan_dit_memory_bytes: weights copied, cross K/V, arena */
  int64_t passes;          /* passes run */
} dp_engine_stage_stats;

typedef struct {
  int n_stages;
  dp_engine_stage_stats stage[DP_ENGINE_MAX_STAGES];
  gboolean running;
  int64_t iteration;          /* stage 0's current iteration */
  int64_t blocks_done;        /* blocks finished (and decoded) */
  int64_t latent_frames_done; /* kept latent frames delivered */
  int64_t frames_done;        /* video frames delivered (with a VAE) */
  int blocks_in_flight;       /* blocks in the queue of stage 0's current iteration */
  int max_blocks_in_flight;
  size_t block_bytes;         /* held now by stage 0: block latents, sampler histories, noise,
                               * staging, the VAE decoder */
  double first_frame_seconds; /* run start to the first delivered block; -1 before */
  int64_t cond_changes;       /* conditionings taken by entering blocks (block_cond) */
  int64_t contexts_computed;  /* cross-attention K/V computed by the stages of this process
                               * this run (1 per stage and expert at the start, more on prompt
                              * changes) */
  double context_seconds;     /* their time on the stages (included in busy time) */
  double run_seconds;         /* run start to now (or to the end) */
} dp_engine_stats;

/* A conditioning: the text context a block is denoised with (host F32
 * [B, Lt, text_dim], the umT5 output: B = 2 conditional then unconditional,
 * B = 1 conditional only) and its guidance scale.  Immutable once made and
 * reference counted (atomically: any thread may ref / unref), so the stages
 * of a run share it without copies.  Each has a process-unique id (> 0),
 * the key under which the stages keep its cross-attention K/V. */
typedef struct dp_engine_cond dp_engine_cond;

/* Copies context (host, any float dtype is read as F32: it must be F32);
 * DP_ERROR_SHAPE for another shape, DP_ERROR_INVALID for a guidance < 1 or
 * not finite. */
dp_engine_cond *dp_engine_cond_new (const dp_tensor *context, double guidance, GError **error);
/* (1 - t) a + t b element-wise, guidance likewise: a smooth transition's
 * step (0 < t < 1).  DP_ERROR_SHAPE when a and b differ in shape. */
dp_engine_cond *dp_engine_cond_blend (const dp_engine_cond *a, const dp_engine_cond *b, double t, GError **error);
dp_engine_cond *dp_engine_cond_ref (dp_engine_cond *c);
void dp_engine_cond_unref (dp_engine_cond *c); /* NULL is fine */
uint64_t dp_engine_cond_id (const dp_engine_cond *c);
const dp_tensor *dp_engine_cond_context (const dp_engine_cond *c); /* borrowed */
double dp_engine_cond_guidance (const dp_engine_cond *c);

/* What a run delivers, from the thread that called dp_engine_run() (frames:
 * from the engine's decode thread when decode_thread is set).  Each
 * callback is optional; returning FALSE stops the run (DP_ERROR_CANCELLED).
 * The memory passed is the engine's: copy what you keep. */
typedef struct {
  /* A finished block's kept latent frames, host F32 [channels, n, H, W],
   * latent frames first_frame.. of the video. */
  gboolean (*block_latent) (const dp_tensor *latent, int64_t block, int64_t first_frame, void *user_data);
  /* Decoded frames (when the run has a VAE): n_frames x height x width x 3
   * RGB bytes, video frames first_frame..; called once per latent frame. */
  gboolean (*frames) (const uint8_t *rgb, int n_frames, int64_t first_frame, void *user_data);
  /* Iteration `iteration` is complete: every block of its queue has had its
   * step (of num_iterations, -1 when endless). */
  void (*iteration) (int64_t iteration, int64_t num_iterations, void *user_data);
  /* Block `block` is entering the queue (at full noise, before its first
   * pass): set *cond to a new reference (the engine takes it) to change the
   * conditioning from this block on, or leave it NULL to keep the previous
   * block's (block 0 starts with the run's context and params guidance).
   * A block keeps its conditioning to its last step, on every stage; only
   * the blocks still in the queue can see the change, through the feature
   * cache (docs/algorithm.md, "Prompt changes").  The context must have
   * the run's shape.  With stages in other processes the callback also
   * tells them (dp_engine_stage_add_cond on their side), for every block,
   * changed or not.  FALSE (with error) fails the run. */
  gboolean (*block_cond) (int64_t block, dp_engine_cond **cond, void *user_data, GError **error);
  void *user_data;
  /* Optional atomic flag (g_atomic_int_set by anyone): non-zero stops the
   * run like dp_engine_cancel(), seen within one pass. */
  const gint *cancel;
  /* Decoding (runs with a VAE).  vae_tiling: tiled decode (wan_vae.h);
   * NULL or tile 0: untiled. */
  const dp_wan_vae_tiling *vae_tiling;
  /* TRUE: finished blocks are decoded on a thread of the engine's own,
   * overlapped with the denoising of the next blocks (at most
   * DP_ENGINE_DECODE_QUEUE blocks wait; then stage 0 waits for the
   * decoder).  The VAE must then be loaded on a backend of its own (the
   * same device with its own stream, or another device): a backend is used
   * by one thread at a time.  The block's latents go to it through the host.
   * `frames` is then called from that thread, in order, one call at a time;
   * the frames are the same bytes as decoding inline.  A decoding error
   * fails the run with that error. */
  gboolean decode_thread;
} dp_engine_output;

/* Finished blocks waiting for the decode thread before stage 0 waits. */
#define DP_ENGINE_DECODE_QUEUE 2

typedef struct dp_engine dp_engine;

/* Loads the stages of transformer_dir: stage r gets the layers of
 * dp_engine_split_layers() on backends[r] (one distinct backend per stage,
 * not owned, outliving the engine).  transport carries data between the
 * stages (not owned); NULL makes one: the in-process transport when every
 * backend has host memory (cpu), the device provider's stage transport
 * (device.h; the CUDA module's: NCCL between distinct GPUs, device copies
 * between stages on one GPU) when every backend is that provider's; a mix is
 * refused (DP_ERROR_UNSUPPORTED).  Checks the parameters against the model
 * (sizes, P, C, RoPE range, at most one stage per layer: DP_ERROR_INVALID). */
dp_engine *dp_engine_new (const char *transformer_dir, dp_backend *const *backends, int n_stages,
                          dp_transport *transport, const dp_engine_params *params, GError **error);
/* One stage of a pipeline whose other stages run in other processes
 * (docs/distributed.md): loads stage `stage` of n_stages (the layers of
 * dp_engine_split_layers) on backend (not owned); transport (required, not
 * owned) reaches the other processes' stages, e.g. dp_transport_new_socket().
 * Stage 0's process runs videos with dp_engine_run() as usual; the process of
 * any other stage calls dp_engine_run_stage() once per video. */
dp_engine *dp_engine_new_stage (const char *transformer_dir, dp_backend *backend, int n_stages, int stage,
                                dp_transport *transport, const dp_engine_params *params, GError **error);
void dp_engine_free (dp_engine *e);
/* Whether stage runs in this process. */
gboolean dp_engine_stage_is_local (const dp_engine *e, int stage);

const dp_block_schedule *dp_engine_get_schedule (const dp_engine *e);
int dp_engine_n_stages (const dp_engine *e);
/* Stage r's model (for inspection; owned by the engine). */
dp_wan_dit *dp_engine_stage_model (dp_engine *e, int stage);

/* Runs one video.  context: host tensor [B, Lt, text_dim] (the umT5 output;
 * B = 2: conditional then unconditional, guidance applied; B = 1:
 * conditional only).  vae: optional, loaded on backends[0]; finished blocks
 * are decoded at once by a streaming decoder and go to out->frames.
 * Buffers (block latents, samplers, hidden states, feature caches) are
 * allocated at the start and freed at the end: memory does not depend on
 * the video's length.  Returns FALSE with DP_ERROR_CANCELLED after
 * dp_engine_cancel() or a callback returning FALSE, else the first error of
 * any stage. */
gboolean dp_engine_run (dp_engine *e, const dp_tensor *context, dp_wan_vae *vae, const dp_engine_output *out,
                        GError **error);
/* Runs this process's stage (an engine from dp_engine_new_stage() with stage
 * >= 1) for one video, on the calling thread: the same passes, in the same
 * order, as every other stage.  context: the same tensor stage 0 runs with.
 * cancel: optional atomic flag, as dp_engine_output.cancel.  Returns when the
 * stage has sent its last pass; FALSE on failure or after dp_engine_cancel(). */
gboolean dp_engine_run_stage (dp_engine *e, const dp_tensor *context, const gint *cancel, GError **error);
/* Prompt changes with stages in other processes (docs/distributed.md):
 * rank 0's consumer forwards each entering block's conditioning (or "no
 * change") to the workers; a worker calls dp_engine_follow_conds() before
 * dp_engine_run_stage() and then, from any thread while the stage runs,
 * dp_engine_stage_add_cond() for blocks 1, 2, ... in order (cond NULL: the
 * block keeps the previous one's; a reference is taken, also on failure).
 * The stage waits for a block's word before running its passes (or until
 * cancelled).  DP_ERROR_INVALID out of order or outside such a run,
 * DP_ERROR_SHAPE for a context of another shape. */
void dp_engine_follow_conds (dp_engine *e);
gboolean dp_engine_stage_add_cond (dp_engine *e, int64_t block, dp_engine_cond *cond, GError **error);
/* The guidance of block 0 of later runs (params.guidance at creation); not
 * during a run.  Stages in other processes keep the value they were made
 * with. */
void dp_engine_set_guidance (dp_engine *e, double guidance);
/* Thread-safe: makes a running dp_engine_run() return within one pass on
 * every stage (a pass is one block's window through a stage's layers, less
 * than one sampler step).  A run that starts later clears it. */
void dp_engine_cancel (dp_engine *e);
/* Thread-safe snapshot (during a run too). */
void dp_engine_get_stats (dp_engine *e, dp_engine_stats *stats);

G_END_DECLS

#endif
