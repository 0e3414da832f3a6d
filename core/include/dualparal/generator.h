/* dualparal: the generator, the one object applications (and the GStreamer
 * element) use.
 *
 * Configured with a model directory (diffusers layout), a prompt, a size, a
 * frame count (or endless) and sampler settings, it produces decoded RGB
 * frames block by block through a callback, from the thread that calls
 * dp_generator_run().  Another thread may call dp_generator_cancel() at any
 * time: the run stops within one denoising step and returns DP_ERROR_CANCELLED.
 *
 * Lifetime: dp_generator_new() loads the model (slow, may fail with a clear
 * error naming the missing / corrupt file); dp_generator_run() runs one video
 * (it may be called again: the same settings give the same frames);
 * dp_generator_free() releases everything.
 *
 * The model directory is a diffusers WanPipeline: model_index.json,
 * tokenizer/spiece.model, text_encoder/, transformer/, vae/ (each with
 * config.json and one or sharded *.safetensors) and
 * scheduler/scheduler_config.json; a Wan2.2 T2V-A14B directory also has
 * transformer_2/ and "boundary_ratio" in model_index.json (two experts,
 * docs/algorithm.md "Two experts"); a Wan2.2 TI2V-5B directory has
 * "expand_timesteps": true in model_index.json (a timestep per token,
 * the Wan2.2 VAE; text-to-video only).  What it cannot run (image-to-video,
 * S2V, Animate) is refused with DP_ERROR_UNSUPPORTED naming why.  model_index.json may carry a private key
 * that diffusers ignores, with the model's own defaults (docs/usage.md):
 *
 *   "_dualparal": { "width": 48, "height": 32, "text_len": 32, "fps": 16 }
 *
 * - Native size (width = height = 0): "_dualparal" width x height when
 *   present, else DP_GENERATOR_DEFAULT_WIDTH x _HEIGHT (832 x 480, Wan2.1's
 *   480p; Wan's configs do not record a size); for TI2V-5B
 *   DP_GENERATOR_TI2V_WIDTH x _HEIGHT (1280 x 704, its native 720p).
 * - Text length (text_len = 0): "_dualparal" text_len, else
 *   DP_GENERATOR_DEFAULT_TEXT_LEN (512, WanPipeline's max_sequence_length).
 *   The prompt is padded / truncated to it; the DiT attends to every row
 *   (the zero padding too, as diffusers does), so it changes the result and
 *   must equal the max_sequence_length a diffusers run used to match it.
 * - Frame rate: "_dualparal" fps, else 16 (Wan2.1), 24 for TI2V-5B.
 * - DualParal block and context frames (block_frames / context_frames = 0):
 *   "_dualparal" block_frames / context_frames, else the engine's defaults.
 *   A model trained on short windows names a P and C whose window
 *   (C + P + C latent frames) stays within what it has seen.
 *
 * Threads: one thread runs dp_generator_run() at a time (a second concurrent
 * call fails with DP_ERROR_INVALID); the callbacks run on that thread.
 * dp_generator_cancel(), dp_generator_set_prompt() and
 * dp_generator_set_transition() may be called from any thread at any time.
 */
#ifndef DUALPARAL_GENERATOR_H
#define DUALPARAL_GENERATOR_H

#include <glib.h>
#include <stdint.h>

/* The error domain (DP_ERROR) and dp_sampler_kind: DP_SAMPLER_UNIPC (UniPC
 * multistep, flow prediction, order 2, Wan's default) or DP_SAMPLER_EULER
 * (flow-matching Euler).  This header and those two are the installed,
 * public API (the rest of core/include is private to the library). */
#include "dualparal/error.h"
#include "dualparal/sampler_kind.h"

G_BEGIN_DECLS

/* Defaults for what a model directory does not say (see above). */
#define DP_GENERATOR_DEFAULT_WIDTH 832
#define DP_GENERATOR_DEFAULT_HEIGHT 480
#define DP_GENERATOR_DEFAULT_TEXT_LEN 512
#define DP_GENERATOR_DEFAULT_FPS 16
/* Wan2.2 TI2V-5B's native size and rate (the Wan2.2 release: 1280 x 704,
 * 24 fps; diffusers' configs do not record them). */
#define DP_GENERATOR_TI2V_WIDTH 1280
#define DP_GENERATOR_TI2V_HEIGHT 704
#define DP_GENERATOR_TI2V_FPS 24
/* Longest accepted text length. */
#define DP_GENERATOR_MAX_TEXT_LEN 4096

typedef enum {
  DP_ENGINE_CLASSIC = 0,   /* the whole video denoised at once on one device */
  DP_ENGINE_DUALPARAL = 1, /* block-wise pipelined denoising over stages (docs/algorithm.md) */
  /* DualParal for endless video, for several devices, when block_frames or
   * context_frames is given, and for a video longer than the window the
   * model names (model_index.json "_dualparal" block_frames P and
   * context_frames C: more than C + P + C latent frames) or than the
   * transformer's positions; classic otherwise.  dp_generator_engine() says which was picked. */
  DP_ENGINE_AUTO = 2,
} dp_engine_kind;

/* Something the generator should tell its user that is not an error: a
 * prompt with more tokens than the text length (it is cut, as diffusers
 * cuts it), a refused connection from a would-be worker.  Called on the
 * thread of dp_generator_new() or dp_generator_run() (worker refusals: on
 * the thread that waits for the workers); message is borrowed. */
typedef void (*dp_warning_cb) (const char *message, void *user_data);

/* Where the DualParal stages run (docs/distributed.md). */
typedef enum {
  DP_PROCESSES_THREADS = 0, /* every stage is a thread of this process (default) */
  DP_PROCESSES_SPAWN = 1,   /* one process per entry of devices, on this machine: this process
                             * runs stage 0 and starts dualparal-worker for the others */
  DP_PROCESSES_LAUNCHER = 2,/* this process is rank 0 of a job a launcher started (torchrun /
                             * srun / mpirun variables); devices names rank 0's own device and
                             * the workers (dualparal-worker) connect to MASTER_ADDR:MASTER_PORT */
} dp_processes;

/* Settings.  dp_generator_params_init() fills the defaults noted here.  The
 * strings are borrowed: they must stay valid until dp_generator_new() returns
 * (the generator keeps copies). */
typedef struct {
  const char *model_dir;       /* diffusers layout directory (required) */
  const char *prompt;          /* UTF-8 (required, may be empty; default NULL) */
  const char *negative_prompt; /* UTF-8, default "" (NULL is taken as "") */
  int width, height;           /* pixels, multiples of 16 (the VAE's 8 x the DiT's patch 2);
                                * both 0 = the model's native size (default) */
  int num_frames;              /* 4k+1, or -1 for endless (DualParal engine only); default 81 */
  int steps;                   /* sampler steps, default 50 */
  double guidance_scale;       /* >= 1, default 5.0; 1.0 runs the conditional pass only
                                * (as diffusers, which guides only when > 1); with a Wan2.2
                                * two-expert model the guidance of the high-noise expert */
  double guidance_scale_2;     /* Wan2.2 two-expert models: the guidance of the low-noise
                                * expert (transformer_2), >= 1; 0 (default): guidance_scale,
                                * as diffusers' WanPipeline.  Refused for other models, and
                                * above 1 when guidance_scale is 1 (the batch is unguided) */
  double flow_shift;           /* <= 0: from scheduler/scheduler_config.json (default 0) */
  uint64_t seed;               /* default 0 */
  dp_sampler_kind sampler;     /* default UniPC */
  dp_engine_kind engine;       /* default classic */
  int block_frames;            /* DualParal P (latent frames per block); 0 = the model's
                                  (model_index.json "_dualparal"), else the engine default (10) */
  int context_frames;          /* DualParal C; 0 = the model's, else the engine default (5, at most P) */
  const char *devices;         /* "cpu" (default), "cuda" / "cuda:N" / "N" (one GPU), or a
                                * comma-separated list, one DualParal stage each: "0,1,2,3"
                                * (several GPUs) or "cpu,cpu" (DualParal engine only);
                                * "cpu:N" is a CPU stage of N threads */
  int text_len;                /* text tokens (prompt padded / truncated to it), 1..
                                * DP_GENERATOR_MAX_TEXT_LEN; 0 = the model's (default) */
  dp_processes processes;      /* default DP_PROCESSES_THREADS; others need the DualParal engine */
  gboolean wire_bf16;          /* between processes, hidden states travel as BF16 (half the
                                * bytes; the frames then differ slightly from one process's);
                                * default FALSE: F32, bit-identical */
  const char *prompt_schedule; /* NULL (default) or lines "FRAME: PROMPT" (DualParal engine):
                                * from the first block that starts at or after video frame
                                * FRAME the prompt is PROMPT; the first line is frame 0 and
                                * replaces `prompt` (which may then be NULL), frames increase;
                                * empty lines and lines starting with '#' are skipped.  See
                                * dp_prompt_schedule_check() */
  int transition_blocks;       /* prompt changes (schedule lines, dp_generator_set_prompt)
                                * are blended in over this many blocks; 0 (default): at once */
  dp_warning_cb warning_cb;    /* where warnings go from dp_generator_new() on (NULL: g_warning
                                * in the log domain "dualparal"); see
                                * dp_generator_set_warning_callback() */
  void *warning_data;
  int threads;                 /* CPU threads in all, 1..1024, shared out among the CPU
                                * stages (at least 1 each; "cpu:N" entries of devices keep
                                * their N); 0 = what the machine leaves (default), for
                                * each CPU stage: OMP_NUM_THREADS when set, else the CPUs
                                * this process may run on (affinity, cgroup CPU quota).
                                * No effect on GPU stages. */
  int vae_tile;                /* tiled VAE decode (diffusers' enable_tiling): tiles of
                                * vae_tile x vae_tile pixels, a quarter overlapping and
                                * blended, each with its own causal caches; a multiple of the
                                * VAE's scale (8), used only when the frame exceeds one tile.
                                * Shrinks the decoder's working memory, but each tile's
                                * causal caches (larger by the overlaps) take it back, so
                                * the total does not drop yet (docs/performance.md); the
                                * frames differ slightly at the seams.
                                * 0 (default): untiled */
  gboolean vae_thread;         /* DualParal engine: decode finished blocks on a thread of
                                * their own, with the VAE on a backend of its own (its own
                                * CUDA stream), overlapped with the next blocks' denoising;
                                * same frames.  Default FALSE: decoded on stage 0's thread */
  const char *vae_device;      /* with vae_thread: where the VAE runs ("cuda:N": a spare GPU,
                                * "cpu:N"); NULL (default): stage 0's device */
  gboolean keep_text_encoder;  /* the umT5 text encoder (on stage 0's device: BF16 on a GPU)
                                * stays loaded between encodes, so a prompt change encodes at
                                * once (default TRUE); FALSE: loaded for each encode (each run's
                                * prompts, each prompt change) and freed right after, so its
                                * memory (11 GB for umT5-XXL in BF16) is free while the
                                * transformer and the VAE run, at the cost of a reload */
} dp_generator_params;

/* Progress after each finished block of frames. */
typedef struct {
  int64_t frames_done;   /* frames delivered so far */
  int64_t frames_total;  /* -1 when endless */
  int steps;             /* sampler steps per block */
  int blocks_in_flight;  /* blocks being denoised at once */
  double block_seconds;  /* wall time of the last block */
} dp_progress;

/* Called with n_frames consecutive frames, each height x width x 3 bytes of
 * RGB (row stride width * 3), frame index first_frame onwards.  The memory is
 * the generator's: copy what you keep before returning.  Return FALSE to stop
 * the run (it then ends with DP_ERROR_CANCELLED).  Called on the thread that
 * runs dp_generator_run, except with vae_thread, where the generator's
 * decode thread calls it (one call at a time, frames in order). */
typedef gboolean (*dp_frames_cb) (const uint8_t *rgb, int n_frames, int64_t first_frame,
                                  const dp_progress *progress, void *user_data);

/* Progress inside a block, after each sampler step (iteration). */
typedef struct {
  int step;            /* steps finished, 1..steps_total */
  int steps_total;     /* steps of the run; -1 when endless */
  double step_seconds; /* wall time of this step */
} dp_step_progress;

/* Called on the run's thread after every sampler step. */
typedef void (*dp_step_cb) (const dp_step_progress *progress, void *user_data);

typedef struct dp_generator dp_generator;

/* A prompt change taking effect (DualParal engine): called on the run's
 * thread when the first block entering after the change takes it.  The
 * strings are borrowed for the call. */
typedef struct {
  const char *prompt, *negative_prompt;
  double guidance_scale;
  int64_t block;         /* the first block that takes it (in part, during a transition) */
  int64_t first_frame;   /* that block's first video frame */
  int64_t full_block;    /* the first block that has it alone: block + the transition's blocks */
  int64_t full_frame;    /* its first video frame: the first frame the new prompt fully owns
                          * (it may lie past the end of a finite video) */
  int transition_blocks; /* blocks of the transition (0: at once) */
  gboolean scheduled;    /* a line of the prompt schedule (else dp_generator_set_prompt) */
  double encode_seconds; /* the text encoding it took, on the run's thread between two passes
                          * (0 when the text had not changed) */
  double pass_seconds;   /* for scale: stage 0's mean busy time per pass so far this run */
} dp_prompt_change;

typedef void (*dp_prompt_cb) (const dp_prompt_change *change, void *user_data);

void dp_generator_params_init (dp_generator_params *p);

/* The default model directory, looked up in this order: the environment
 * variable DUALPARAL_MODEL, the installed data folder
 * (<datadir>/dualparal/models/shapes-tiny), then the source tree of an
 * uninstalled build.  A newly allocated path (g_free), or NULL with
 * DP_ERROR_MISSING naming every place it looked. */
char *dp_default_model_dir (GError **error);
/* Checks the settings, then loads the model and checks the settings against
 * it (sizes, frame counts, steps...), and allocates what a run needs.  NULL
 * with an error: DP_ERROR_INVALID naming a wrong setting; DP_ERROR_UNSUPPORTED
 * for valid settings this build cannot run (endless video or several
 * devices with the classic engine; cpu and GPU stages mixed in one
 * DualParal engine; a CUDA device without CUDA support);
 * DP_ERROR_MISSING / _IO / _FORMAT / _SHAPE naming the missing or
 * corrupt file, key or tensor; DP_ERROR_NOMEM. */
dp_generator *dp_generator_new (const dp_generator_params *p, GError **error);
/* NULL is fine.  Must not be called while dp_generator_run() runs. */
void dp_generator_free (dp_generator *gen);

/* The frame size and rate the generator will produce. */
void dp_generator_get_size (const dp_generator *gen, int *width, int *height);
/* The sizes this model can make are multiples of these (pixels): the VAE's
 * spatial scale times the transformer's patch, 16 for Wan2.1 and Wan2.2
 * A14B, 32 for Wan2.2 TI2V-5B. */
void dp_generator_get_size_step (const dp_generator *gen, int *width_step, int *height_step);
int dp_generator_fps (const dp_generator *gen);
/* Frames a run delivers (-1 when endless). */
int64_t dp_generator_num_frames (const dp_generator *gen);
/* The text length the prompts are encoded to (see above). */
int dp_generator_text_len (const dp_generator *gen);
/* The CPU threads the generator's CPU stages use in all (0: none on the CPU). */
int dp_generator_threads (const dp_generator *gen);
/* The engine that runs (DP_ENGINE_AUTO resolved), and for the DualParal
 * engine the block and context frames asked for (0: the engine's defaults). */
dp_engine_kind dp_generator_engine (const dp_generator *gen, int *block_frames, int *context_frames);

/* Sets (cb NULL: back to the default, g_warning in the log domain
 * "dualparal") where warnings go.  Not while running. */
void dp_generator_set_warning_callback (dp_generator *gen, dp_warning_cb cb, void *user_data);

/* Sets (cb NULL: clears) the per-step progress callback.  Not while running. */
void dp_generator_set_step_callback (dp_generator *gen, dp_step_cb cb, void *user_data);

/* Steering (docs/usage.md, "Steering a running video").  Thread-safe: any
 * thread, any time.  Changes the conditioning: prompt and negative_prompt
 * (UTF-8; NULL keeps the current one), guidance_scale (<= 0 keeps the
 * current one; else >= 1).  During a run the next block that enters the
 * queue takes it (blended in over the transition's blocks, see
 * dp_generator_set_transition) and keeps it to its last step; several
 * calls before that block enters: the last one wins.  The text is encoded
 * on the run's thread when that block enters (one encoding between two
 * passes).  Outside a run it is the prompt the next run starts with (a
 * prompt schedule's frame 0 line wins over it).
 * Stages in processes of their own follow it too (rank 0 sends it).
 * FALSE with DP_ERROR_UNSUPPORTED for the classic engine (it denoises the
 * whole video at once: no block enters later) and for turning guidance on (> 1) in a generator made with guidance 1
 * (its runs have no unconditional pass); DP_ERROR_INVALID for text that is
 * not UTF-8 or a guidance below 1. */
gboolean dp_generator_set_prompt (dp_generator *gen, const char *prompt, const char *negative_prompt,
                                  double guidance_scale, GError **error);
/* Blocks over which later prompt changes are blended in (the text
 * embeddings interpolated linearly, and the guidance): block i (0..K-1)
 * after a change gets (i + 1) / (K + 1) of the new one, block K the new one
 * alone; 0: at once.  Thread-safe.  DP_ERROR_INVALID when negative or above
 * DP_GENERATOR_MAX_TRANSITION_BLOCKS. */
#define DP_GENERATOR_MAX_TRANSITION_BLOCKS 1000
gboolean dp_generator_set_transition (dp_generator *gen, int blocks, GError **error);
/* Sets (cb NULL: clears) the prompt change callback.  Not while running. */
void dp_generator_set_prompt_callback (dp_generator *gen, dp_prompt_cb cb, void *user_data);
/* Checks a prompt schedule's text (see prompt_schedule); DP_ERROR_INVALID
 * naming the line: no "FRAME:" prefix, a frame that is not a whole number,
 * a first line not at frame 0, frames not increasing, text not UTF-8, no
 * line at all. */
gboolean dp_prompt_schedule_check (const char *text, GError **error);

/* Runs one video: text encoding, denoising, then decoding; frames go to cb
 * as they are decoded (classic engine: the whole video is denoised first,
 * then decoded latent frame by latent frame: 1 frame, then blocks of 4).
 * FALSE with an error on failure; frames delivered before stay delivered.
 * DP_ERROR_CANCELLED when cancelled or when cb returned FALSE. */
gboolean dp_generator_run (dp_generator *gen, dp_frames_cb cb, void *user_data, GError **error);
/* Thread-safe (also async-signal-safe: one atomic store); makes a running
 * dp_generator_run() return promptly with DP_ERROR_CANCELLED: the run checks
 * between the two prompt encodings, between sampler steps and between
 * decoded frames (not inside one transformer forward).  A cancel that comes
 * while no run is in progress makes the next run return DP_ERROR_CANCELLED
 * at once; every run clears the request when it returns. */
void dp_generator_cancel (dp_generator *gen);

G_END_DECLS

#endif
