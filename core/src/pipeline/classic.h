/* dualparal: the classic single-device pipeline (internal).
 *
 * One run, as diffusers' WanPipeline does it: tokenize and encode the prompt
 * (and the negative prompt when guiding), draw the initial noise, denoise the
 * whole latent video with the sampler (the DiT's guided velocity at every
 * step), then decode it latent frame by latent frame with the streaming VAE
 * decoder and hand each decoded group of frames to the callback at once.
 *
 * The parts are loaded and owned by the generator (generator.c); this file
 * only runs them.  Everything a run allocates (latent, velocity, staging
 * buffers) is allocated at its start and freed at its end; the steps
 * allocate nothing.
 */
#ifndef DUALPARAL_PIPELINE_CLASSIC_H
#define DUALPARAL_PIPELINE_CLASSIC_H

#include "dualparal/generator.h"
#include "dualparal/sampler.h"
#include "dualparal/tokenizer.h"
#include "dualparal/umt5.h"
#include "dualparal/wan_dit.h"
#include "dualparal/wan_vae.h"

G_BEGIN_DECLS

/* The Philox stream (rng.h) of the classic pipeline's initial noise: frame f
 * of the latent video is dp_rng_latent_noise (seed, this stream, f, ...). */
#define DP_CLASSIC_NOISE_STREAM 0

/* The loaded parts a run uses, all borrowed.  The DiT holds every layer, the
 * decoder is made for the run's latent size, the sampler for its latent shape
 * [channels, latent_frames, latent_height, latent_width]; all on be. */
typedef struct {
  dp_backend *be;
  const dp_tokenizer *tokenizer;
  dp_umt5_holder *text_encoder; /* acquired for the encode, released after it */
  dp_wan_dit *dit;
  dp_wan_vae_decoder *decoder;
  dp_sampler *sampler;
  /* Wan2.2 two experts: the low-noise expert (transformer_2), which runs the
   * steps whose timestep is below job->boundary; NULL: dit runs every step. */
  dp_wan_dit *dit2;
} dp_classic_parts;

/* Hooks to look inside a run (tests); host data valid during the call. */
typedef struct {
  /* The DiT's text context [B, text_len, text_dim] (B 2: conditional then
   * unconditional; 1: conditional only) and each entry's real token count. */
  void (*context) (const dp_tensor *context, const int *n_tokens, void *data);
  /* The latents after step i (x_{i+1}), [channels, F, h, w], and the
   * expert that step ran (0: transformer, 1: transformer_2). */
  void (*step) (int i, const dp_tensor *latents, int expert, void *data);
  /* The decoder's float output of frames [first_frame, first_frame + n),
   * [3, n, H, W] clamped to [-1, 1]. */
  void (*video) (const float *video, int n, int64_t first_frame, void *data);
  void *data;
} dp_classic_trace;

typedef struct {
  const char *prompt;           /* UTF-8 */
  const char *negative_prompt;  /* UTF-8; used only when guidance > 1 */
  int text_len;
  double guidance;              /* > 1: classifier-free guidance (batch 2) */
  double guidance2;             /* two experts: the guidance of dit2's steps */
  double boundary;              /* two experts: dit runs step i when (float) t_i >= (float) boundary
                                 * (diffusers' WanPipeline: t >= boundary_timestep, compared in
                                 * float32 as torch promotes the scalar), dit2 otherwise */
  int channels, latent_frames, latent_height, latent_width;
  /* Wan2.2 TI2V-5B (expand_timesteps): the transformer gets a timestep per
   * frame, every frame at the step's t (diffusers' text-to-video mask of
   * ones), which is bitwise the scalar path. */
  gboolean per_token_time;
  uint64_t seed;
  /* NULL: Philox noise from seed (DP_CLASSIC_NOISE_STREAM); else the initial
   * latents, a host F32 tensor of the latent shape (tests). */
  const dp_tensor *initial_noise;
  const gint *cancel;           /* atomic: non-zero stops the run (DP_ERROR_CANCELLED) */
  dp_frames_cb frames_cb;
  void *frames_data;
  dp_step_cb step_cb;           /* may be NULL */
  void *step_data;
  const dp_classic_trace *trace; /* may be NULL */
} dp_classic_job;

/* Which expert of a Wan2.2 two-expert model runs timestep t: 0 (transformer,
 * high noise) when t >= boundary, else 1 (transformer_2, low noise); always 0
 * with one expert.  As diffusers' WanPipeline, which compares the timestep
 * tensor with the Python float boundary_ratio * num_train_timesteps in the
 * tensor's float32 (UniPC's int64 timesteps promote to float32 too). */
static inline int
dp_classic_expert (gboolean two_experts, double boundary, double t)
{
  return two_experts && !((float) t >= (float) boundary) ? 1 : 0;
}

/* Runs job on parts.  FALSE with an error; DP_ERROR_CANCELLED when *cancel
 * was set or the frames callback returned FALSE.  Frames delivered before a
 * failure stay delivered. */
gboolean dp_classic_run (const dp_classic_parts *parts, const dp_classic_job *job, GError **error);

G_END_DECLS

#endif
