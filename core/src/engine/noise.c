/* DualParal engine: coordinated noise (engine.h).
 *
 * One template of P + C latent noise frames; each block's noise is a
 * permutation of that pool that avoids the previous block's last C frames,
 * as in the reference (DualParal_Wan.py: the template becomes [its last C
 * frames | a random permutation of its first P frames] before each block,
 * and the block takes the template's last P frames).  The permutations come
 * from Philox, counter-based, so any block's noise is a pure function of
 * (seed, stream, block). */
#include "dualparal/engine.h"
#include "dualparal/rng.h"

#include <string.h>

struct dp_block_noise {
  dp_block_schedule s;
  uint64_t seed, stream;
  int channels, height, width;
  int pool;         /* P + C template frames */
  float *tmpl;      /* [channels, pool, height, width] */
  int *order;       /* order_{at + 1}: template frame of each pool position */
  int *scratch;     /* pool ints */
  uint32_t *words;  /* 2 P Philox words */
  int *perm;        /* P ints */
  int64_t at;       /* order holds order_{at + 1} */
};

dp_block_noise *
dp_block_noise_new (const dp_block_schedule *s, uint64_t seed, uint64_t stream, int channels, int height, int width,
                    GError **error)
{
  if (channels < 1 || height < 1 || width < 1) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "engine: noise of %d channels x %d x %d latent pixels",
                 channels, height, width);
    return NULL;
  }
  const int pool = s->block_frames + s->context_frames;
  const size_t n = (size_t) channels * pool * height * width;
  float *tmpl = g_try_malloc (n * sizeof (float));
  if (!tmpl) {
    g_set_error (error, DP_ERROR, DP_ERROR_NOMEM, "engine: no memory for the noise template (%zu bytes)",
                 n * sizeof (float));
    return NULL;
  }
  dp_block_noise *bn = g_new0 (dp_block_noise, 1);
  bn->s = *s;
  bn->seed = seed;
  bn->stream = stream;
  bn->channels = channels;
  bn->height = height;
  bn->width = width;
  bn->pool = pool;
  bn->tmpl = tmpl;
  bn->order = g_new (int, pool);
  bn->scratch = g_new (int, pool);
  bn->words = g_new (uint32_t, 2 * (size_t) s->block_frames);
  bn->perm = g_new (int, s->block_frames);
  /* Template frame j = frame j of the video's noise stream (what the classic
   * pipeline draws for frame j). */
  dp_rng_latent_noise (seed, stream, 0, pool, channels, height, width, tmpl);
  for (int j = 0; j < pool; j++)
    bn->order[j] = j;
  bn->at = 0;
  return bn;
}

void
dp_block_noise_free (dp_block_noise *bn)
{
  if (!bn)
    return;
  g_free (bn->tmpl);
  g_free (bn->order);
  g_free (bn->scratch);
  g_free (bn->words);
  g_free (bn->perm);
  g_free (bn);
}

const float *
dp_block_noise_template (const dp_block_noise *bn)
{
  return bn->tmpl;
}

/* pi_b: Fisher-Yates over 0..P-1, position j swapped with a uniform index
 * in [0, j] from the 64-bit word pair (2 j, 2 j + 1) of block b's words
 * (the modulo bias is below (j + 1) / 2^64). */
static void
block_permutation (dp_block_noise *bn, int64_t block)
{
  const int P = bn->s.block_frames;
  dp_rng_u32 (bn->seed, bn->stream + 1, (uint64_t) block * 2 * (uint64_t) P, bn->words, 2 * (size_t) P);
  for (int j = 0; j < P; j++)
    bn->perm[j] = j;
  for (int j = P - 1; j > 0; j--) {
    const uint64_t x = ((uint64_t) bn->words[2 * j] << 32) | bn->words[2 * j + 1];
    const int r = (int) (x % (uint64_t) (j + 1));
    const int t = bn->perm[j];
    bn->perm[j] = bn->perm[r];
    bn->perm[r] = t;
  }
}

/* order_{at + 1} -> order_{at + 2}. */
static void
advance (dp_block_noise *bn)
{
  const int P = bn->s.block_frames, C = bn->s.context_frames;
  const int64_t block = bn->at + 1;
  block_permutation (bn, block);
  for (int j = 0; j < C; j++)
    bn->scratch[j] = bn->order[P + j];
  for (int j = 0; j < P; j++)
    bn->scratch[C + j] = bn->order[bn->perm[j]];
  memcpy (bn->order, bn->scratch, sizeof (int) * bn->pool);
  bn->at = block;
}

void
dp_block_noise_order (dp_block_noise *bn, int64_t block, int *out)
{
  const int frames = dp_block_schedule_block_frames (&bn->s, block);
  if (block == 0) {
    for (int j = 0; j < frames; j++)
      out[j] = j;
    return;
  }
  if (block < bn->at) {
    for (int j = 0; j < bn->pool; j++)
      bn->order[j] = j;
    bn->at = 0;
  }
  while (bn->at < block)
    advance (bn);
  memcpy (out, bn->order + bn->s.context_frames, sizeof (int) * frames);
}

void
dp_block_noise_fill (dp_block_noise *bn, int64_t block, float *out)
{
  const int frames = dp_block_schedule_block_frames (&bn->s, block);
  const size_t hw = (size_t) bn->height * bn->width;
  int *order = g_newa (int, frames);
  dp_block_noise_order (bn, block, order);
  for (int c = 0; c < bn->channels; c++)
    for (int j = 0; j < frames; j++)
      memcpy (out + ((size_t) c * frames + j) * hw, bn->tmpl + ((size_t) c * bn->pool + order[j]) * hw,
              hw * sizeof (float));
}
