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
  dp_umt5 *text_encoder;
  dp_wan_dit *dit;
  dp_wan_vae_decoder *decoder;
  dp_sampler *sampler;
} dp_classic_parts;

/* Hooks to look inside a run (tests); host data valid during the call. */
typedef struct {
  /* The DiT's text context [B, text_len, text_dim] (B 2: conditional then
   * unconditional; 1: conditional only) and each entry's real token count. */
  void (*context) (const dp_tensor *context, const int *n_tokens, void *data);
  /* The latents after step i (x_{i+1}), [channels, F, h, w]. */
  void (*step) (int i, const dp_tensor *latents, void *data);
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
  int channels, latent_frames, latent_height, latent_width;
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

/* Runs job on parts.  FALSE with an error; DP_ERROR_CANCELLED when *cancel
 * was set or the frames callback returned FALSE.  Frames delivered before a
 * failure stay delivered. */
gboolean dp_classic_run (const dp_classic_parts *parts, const dp_classic_job *job, GError **error);

G_END_DECLS

#endif
