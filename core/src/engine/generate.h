/* dualparal: the DualParal engine as the generator runs it (internal).
 *
 * generator.c loads the tokenizer, the text encoder and the VAE on its
 * backend and hands a run here when params->engine is DP_ENGINE_DUALPARAL:
 * this file makes the stages (one per entry of the devices list; stage 0 is
 * the generator's backend, the others get their own), encodes the prompts,
 * runs the engine and maps its output onto the generator's callbacks.
 */
#ifndef DUALPARAL_ENGINE_GENERATE_H
#define DUALPARAL_ENGINE_GENERATE_H

#include "dualparal/engine.h"
#include "dualparal/generator.h"
#include "dualparal/tokenizer.h"
#include "dualparal/umt5.h"

G_BEGIN_DECLS

/* Defaults for a block size / context of 0 (the reference's defaults). */
#define DP_DUALPARAL_DEFAULT_BLOCK_FRAMES 10
#define DP_DUALPARAL_DEFAULT_CONTEXT_FRAMES 5

typedef struct dp_dualparal_pipe dp_dualparal_pipe;

typedef struct {
  const char *model_dir;
  const char *devices;     /* the generator's list: "cpu", "cpu,cpu", "cuda:0", "0,1,2,3";
                            * one stage per entry */
  dp_backend *be0;         /* stage 0's backend (the generator's; borrowed) */
  int block_frames;        /* P; <= 0: DP_DUALPARAL_DEFAULT_BLOCK_FRAMES */
  int context_frames;      /* C; <= 0: DP_DUALPARAL_DEFAULT_CONTEXT_FRAMES (both capped
                            * so that C <= P) */
  int64_t latent_frames;   /* -1: endless */
  int latent_height, latent_width;
  const dp_sampler_settings *settings;
  int steps;
  double guidance;
  /* Wan2.2 two experts: model_dir/transformer_2 is the low-noise expert,
   * run below boundary (a timestep), with guidance_2 (0: the conditioning's). */
  gboolean two_experts;
  double boundary;
  double guidance_2;
  /* Wan2.2 TI2V-5B (expand_timesteps): dp_engine_params.per_token_time */
  gboolean per_token_time;
  uint64_t seed;
  dp_processes processes;  /* threads, or stages in worker processes (docs/distributed.md) */
  gboolean wire_bf16;      /* hidden states between processes as BF16 */
  dp_warning_cb warn;      /* what the workers' rendezvous has to say; may be NULL */
  void *warn_data;
} dp_dualparal_config;

/* Parses the devices, makes the backends of stages 1.. (threads) or brings
 * up the worker processes (dist/cluster.h), loads the engine.
 * Errors name the setting or the file. */
dp_dualparal_pipe *dp_dualparal_pipe_new (const dp_dualparal_config *cfg, GError **error);
void dp_dualparal_pipe_free (dp_dualparal_pipe *pipe);
dp_engine *dp_dualparal_pipe_engine (dp_dualparal_pipe *pipe);

/* Number of entries in a devices list ("0,1,2" -> 3), 0 when it is empty. */
int dp_dualparal_count_devices (const char *devices);

/* One line of a prompt schedule: from the first block that starts at or
 * after video frame `frame`, the prompt is `prompt`. */
typedef struct {
  int64_t frame;
  char *prompt;
} dp_prompt_line;

/* The text settings that may change while a run goes on (the generator
 * owns it).  lock: dp_generator_set_prompt () on any thread, the run's
 * thread when a block enters. */
typedef struct {
  GMutex lock;
  char *prompt, *negative_prompt;
  double guidance;
  int transition_blocks;  /* K: blocks over which a change is blended in; 0: at once */
  guint64 serial;         /* dp_generator_set_prompt calls so far */
} dp_prompt_state;

typedef struct {
  const dp_tokenizer *tokenizer; /* borrowed */
  dp_umt5_holder *text_encoder;  /* on be0; acquired for each encode, released after it */
  dp_wan_vae *vae;               /* on be0, or on its own backend with decode_thread */
  const dp_wan_vae_tiling *vae_tiling; /* dp_engine_output.vae_tiling */
  gboolean decode_thread;        /* dp_engine_output.decode_thread */
  dp_prompt_state *state;        /* the prompt, negative prompt, guidance (changeable) */
  const dp_prompt_line *schedule;/* NULL or n_schedule lines, frame 0 first */
  int n_schedule;
  int text_len;
  gboolean guided;               /* batch 2 (fixed for the run: the generator's guidance > 1) */
  dp_prompt_cb prompt_cb;        /* may be NULL */
  void *prompt_data;
  const gint *cancel;            /* atomic */
  dp_frames_cb frames_cb;
  void *frames_data;
  dp_step_cb step_cb;            /* per iteration; may be NULL */
  void *step_data;
} dp_dualparal_job;

gboolean dp_dualparal_pipe_run (dp_dualparal_pipe *pipe, const dp_dualparal_job *job, GError **error);

G_END_DECLS

#endif
