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
 * scheduler/scheduler_config.json.  model_index.json may carry a private key
 * that diffusers ignores, with the model's own defaults (docs/usage.md):
 *
 *   "_dualparal": { "width": 48, "height": 32, "text_len": 32, "fps": 16 }
 *
 * - Native size (width = height = 0): "_dualparal" width x height when
 *   present, else DP_GENERATOR_DEFAULT_WIDTH x _HEIGHT (832 x 480, Wan2.1's
 *   480p; Wan's configs do not record a size).
 * - Text length (text_len = 0): "_dualparal" text_len, else
 *   DP_GENERATOR_DEFAULT_TEXT_LEN (512, WanPipeline's max_sequence_length).
 *   The prompt is padded / truncated to it; the DiT attends to every row
 *   (the zero padding too, as diffusers does), so it changes the result and
 *   must equal the max_sequence_length a diffusers run used to match it.
 * - Frame rate: "_dualparal" fps, else 16 (Wan2.1).
 * - DualParal block and context frames (block_frames / context_frames = 0):
 *   "_dualparal" block_frames / context_frames, else the engine's defaults.
 *   A model trained on short windows names a P and C whose window
 *   (C + P + C latent frames) stays within what it has seen.
 *
 * Threads: one thread runs dp_generator_run() at a time (a second concurrent
 * call fails with DP_ERROR_INVALID); the callbacks run on that thread.
 * dp_generator_cancel() may be called from any thread at any time.
 */
#ifndef DUALPARAL_GENERATOR_H
#define DUALPARAL_GENERATOR_H

#include <glib.h>
#include <stdint.h>

/* dp_sampler_kind: DP_SAMPLER_UNIPC (UniPC multistep, flow prediction, order
 * 2, Wan's default) or DP_SAMPLER_EULER (flow-matching Euler). */
#include "dualparal/sampler.h"

G_BEGIN_DECLS

/* Defaults for what a model directory does not say (see above). */
#define DP_GENERATOR_DEFAULT_WIDTH 832
#define DP_GENERATOR_DEFAULT_HEIGHT 480
#define DP_GENERATOR_DEFAULT_TEXT_LEN 512
#define DP_GENERATOR_DEFAULT_FPS 16
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
                                * (as diffusers, which guides only when > 1) */
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
  int threads;                 /* CPU threads in all, 1..1024, shared out among the CPU
                                * stages (at least 1 each; "cpu:N" entries of devices keep
                                * their N); 0 = what the machine leaves (default), for
                                * each CPU stage: OMP_NUM_THREADS when set, else the CPUs
                                * this process may run on (affinity, cgroup CPU quota).
                                * No effect on GPU stages. */
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
 * the run (it then ends with DP_ERROR_CANCELLED). */
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

void dp_generator_params_init (dp_generator_params *p);
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

/* Sets (cb NULL: clears) the per-step progress callback.  Not while running. */
void dp_generator_set_step_callback (dp_generator *gen, dp_step_cb cb, void *user_data);

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
