/* dualparal: generator internals for the tests (not installed). */
#ifndef DUALPARAL_GENERATOR_PRIVATE_H
#define DUALPARAL_GENERATOR_PRIVATE_H

#include "dualparal/generator.h"
#include "pipeline/classic.h"

G_BEGIN_DECLS

/* dp_generator_run with the initial latents given (host F32 [channels,
 * latent frames, height / 8, width / 8]; NULL: from the seed, as
 * dp_generator_run) and an optional trace of the run's internals. */
gboolean dp_generator_run_traced (dp_generator *gen, const dp_tensor *initial_noise,
                                  const dp_classic_trace *trace, dp_frames_cb cb, void *user_data,
                                  GError **error);

/* The latent shape of a run: [channels, frames, height, width]. */
void dp_generator_latent_shape (const dp_generator *gen, int64_t shape[4]);

G_END_DECLS

#endif
