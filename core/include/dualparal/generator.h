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
 * error naming the missing / corrupt file); dp_generator_run() runs one video;
 * dp_generator_free() releases everything.
 */
#ifndef DUALPARAL_GENERATOR_H
#define DUALPARAL_GENERATOR_H

#include <glib.h>
#include <stdint.h>

G_BEGIN_DECLS

typedef enum {
  DP_SAMPLER_UNIPC = 0, /* UniPC multistep, flow prediction, order 2 (Wan default) */
  DP_SAMPLER_EULER = 1, /* flow-matching Euler */
} dp_sampler_kind;

typedef enum {
  DP_ENGINE_CLASSIC = 0,   /* the whole video denoised at once on one device */
  DP_ENGINE_DUALPARAL = 1, /* block-wise pipelined denoising (not available yet) */
} dp_engine_kind;

/* Settings.  dp_generator_params_init() fills the defaults noted here. */
typedef struct {
  const char *model_dir;       /* diffusers layout directory (required) */
  const char *prompt;          /* UTF-8 (required, may be empty) */
  const char *negative_prompt; /* UTF-8, default "" */
  int width, height;           /* pixels, multiples of 16; 0 = the model's native size */
  int num_frames;              /* 4k+1, or -1 for endless (DualParal engine only); default 81 */
  int steps;                   /* sampler steps, default 50 */
  double guidance_scale;       /* default 5.0; 1.0 runs the conditional pass only */
  double flow_shift;           /* <= 0: from scheduler/scheduler_config.json */
  uint64_t seed;               /* default 0 */
  dp_sampler_kind sampler;     /* default UniPC */
  dp_engine_kind engine;       /* default classic */
  int block_frames;            /* DualParal P (latent frames per block) */
  int context_frames;          /* DualParal C */
  const char *devices;         /* "cpu" (default), "cuda:0", "0,1,2,3" */
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

typedef struct dp_generator dp_generator;

void dp_generator_params_init (dp_generator_params *p);
/* Checks the settings against the model (sizes, frame counts, steps...):
 * FALSE with DP_ERROR_INVALID naming the setting when one is wrong. */
dp_generator *dp_generator_new (const dp_generator_params *p, GError **error);
void dp_generator_free (dp_generator *gen);

/* The frame size and rate the generator will produce. */
void dp_generator_get_size (const dp_generator *gen, int *width, int *height);
int dp_generator_fps (const dp_generator *gen);

gboolean dp_generator_run (dp_generator *gen, dp_frames_cb cb, void *user_data, GError **error);
/* Thread-safe; makes a running dp_generator_run() return promptly. */
void dp_generator_cancel (dp_generator *gen);

G_END_DECLS

#endif
