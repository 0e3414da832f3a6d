/* Wan2.1 transformers and VAEs with random weights, written in the diffusers
 * layout (config.json + diffusion_pytorch_model.safetensors in one folder),
 * so that the benchmarks load and time them exactly like real checkpoints.
 * Weights are uniform with the scale of a trained model (linear and conv
 * weights +-sqrt(3 / fan_in), norm weights around 1), seeded, streamed to
 * the file in 1 Mi-element chunks (the 1.3B transformer is 2.8 GB in BF16). */
#ifndef DP_TOOLS_RANDOM_WAN_H
#define DP_TOOLS_RANDOM_WAN_H

#include "dualparal/tensor.h"

#include <glib.h>

typedef struct {
  int dim, heads, ffn, layers, text_dim, freq_dim, channels;
} random_wan_dit_size;

/* Writes the model into the existing directory dir, weights in dtype (F32 or
 * BF16).  FALSE with error set when a file cannot be written. */
gboolean random_wan_dit_write (const char *dir, const random_wan_dit_size *m, dp_dtype dtype, guint32 seed,
                               GError **error);
/* Wan2.1's VAE (AutoencoderKLWan: base_dim 96 for the real one, z_dim 16,
 * dim_mult [1, 2, 4, 4], two res blocks, time downsampling [no, yes, yes]),
 * F32, its decoder only (what the runtime loads), into the existing
 * directory dir. */
gboolean random_wan_vae_write (const char *dir, int base_dim, guint32 seed, GError **error);

/* umT5 encoder sizes (umT5-XXL: vocab 256384, d_model 4096, d_kv 64, 64
 * heads, d_ff 10240, 24 layers). */
typedef struct {
  int vocab, d_model, d_kv, heads, d_ff, layers;
} random_umt5_size;

/* A UMT5EncoderModel (transformers names, config.json with model_type
 * umt5, gated-gelu, 32 buckets) with weights in dtype, into dir. */
gboolean random_umt5_write (const char *dir, const random_umt5_size *m, dp_dtype dtype, guint32 seed,
                            GError **error);
/* Removes the two files (config.json, diffusion_pytorch_model.safetensors) and the directory (best effort). */
void random_wan_remove (const char *dir);

#endif
