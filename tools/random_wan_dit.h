/* A Wan2.1 transformer with random weights, written in the diffusers layout
 * (transformer/config.json + diffusion_pytorch_model.safetensors), so that
 * the benchmarks load and time it exactly like a real checkpoint.  Weights
 * are uniform with the scale of a trained model (linear weights
 * +-sqrt(3 / fan_in), norm weights around 1), seeded, streamed to the file
 * in 1 Mi-element chunks (the 1.3B model is 2.8 GB in BF16). */
#ifndef DP_TOOLS_RANDOM_WAN_DIT_H
#define DP_TOOLS_RANDOM_WAN_DIT_H

#include "dualparal/tensor.h"

#include <glib.h>

typedef struct {
  int dim, heads, ffn, layers, text_dim, freq_dim, channels;
} random_wan_dit_size;

/* Writes the model into the existing directory dir, weights in dtype (F32 or
 * BF16).  FALSE with error set when a file cannot be written. */
gboolean random_wan_dit_write (const char *dir, const random_wan_dit_size *m, dp_dtype dtype, guint32 seed,
                               GError **error);
/* Removes the two files and the directory (best effort). */
void random_wan_dit_remove (const char *dir);

#endif
