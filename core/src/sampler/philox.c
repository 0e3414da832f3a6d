/* Philox4x32-10 and the noise streams built on it (layout in rng.h). */
#include "dualparal/rng.h"

#include <math.h>
#include <string.h>

/* Random123's constants: round multipliers and the key's Weyl increments. */
#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u


static inline void
philox_round (uint32_t c[4], const uint32_t k[2])
{
  uint64_t p0 = (uint64_t) PHILOX_M0 * c[0];
  uint64_t p1 = (uint64_t) PHILOX_M1 * c[2];
  uint32_t hi0 = (uint32_t) (p0 >> 32), lo0 = (uint32_t) p0;
  uint32_t hi1 = (uint32_t) (p1 >> 32), lo1 = (uint32_t) p1;
  uint32_t c1 = c[1], c3 = c[3];
  c[0] = hi1 ^ c1 ^ k[0];
  c[1] = lo1;
  c[2] = hi0 ^ c3 ^ k[1];
  c[3] = lo0;
}

void
dp_philox4x32_10 (const uint32_t counter[4], const uint32_t key[2], uint32_t out[4])
{
  uint32_t c[4] = { counter[0], counter[1], counter[2], counter[3] };
  uint32_t k[2] = { key[0], key[1] };
  for (int r = 0; r < 10; r++) {
    if (r > 0) {
      k[0] += PHILOX_W0;
      k[1] += PHILOX_W1;
    }
    philox_round (c, k);
  }
  out[0] = c[0];
  out[1] = c[1];
  out[2] = c[2];
  out[3] = c[3];
}

static inline void
stream_block (uint64_t seed, uint64_t stream, uint64_t block, uint32_t w[4])
{
  const uint32_t ctr[4] = { (uint32_t) block, (uint32_t) (block >> 32), (uint32_t) stream,
                            (uint32_t) (stream >> 32) };
  const uint32_t key[2] = { (uint32_t) seed, (uint32_t) (seed >> 32) };
  dp_philox4x32_10 (ctr, key, w);
}

/* Box-Muller on one word pair (layout in rng.h). */
static inline void
box_muller (uint32_t a, uint32_t c, float out[2])
{
  const double two_m32 = 1.0 / 4294967296.0;
  double u1 = ((double) a + 1.0) * two_m32;
  double u2 = (double) c * two_m32;
  double r = sqrt (-2.0 * log (u1));
  double theta = 2.0 * G_PI * u2;
  out[0] = (float) (r * cos (theta));
  out[1] = (float) (r * sin (theta));
}

static void
normal_block (uint64_t seed, uint64_t stream, uint64_t block, float v[4])
{
  uint32_t w[4];
  stream_block (seed, stream, block, w);
  box_muller (w[0], w[1], v);
  box_muller (w[2], w[3], v + 2);
}

/* Writes the four 4-byte elements of one block to dst. */
typedef void (*block_fn) (uint64_t seed, uint64_t stream, uint64_t block, void *dst);

static void
u32_block (uint64_t seed, uint64_t stream, uint64_t block, void *dst)
{
  uint32_t w[4];
  stream_block (seed, stream, block, w);
  memcpy (dst, w, sizeof w);
}

static void
normal_block_fn (uint64_t seed, uint64_t stream, uint64_t block, void *dst)
{
  float v[4];
  normal_block (seed, stream, block, v);
  memcpy (dst, v, sizeof v);
}

/* Elements [offset, offset + n) (4 bytes each) in three parts: a partial
 * first block, whole blocks, a partial last block.  Every
 * element depends on its own block only, so the split changes no value. */
static void
fill_stream (block_fn fn, uint64_t seed, uint64_t stream, uint64_t offset, void *out, size_t n)
{
  unsigned char *o = out; /* 4-byte elements, only ever copied here */
  unsigned char tmp[16];
  size_t k = 0;
  uint64_t j = offset;
  if (n == 0)
    return;
  if (j & 3) {
    fn (seed, stream, j >> 2, tmp);
    for (unsigned lane = j & 3; lane < 4 && k < n; lane++, j++)
      memcpy (o + 4 * k++, tmp + 4 * lane, 4);
  }
  uint64_t first_block = j >> 2;
  size_t whole = (n - k) / 4;
  unsigned char *dst = o + 4 * k;
  /* One thread: the noise of a generation is small next to its model
   * (and this has no backend whose threads it could use). */
  for (size_t b = 0; b < whole; b++)
    fn (seed, stream, first_block + b, dst + 16 * b);
  k += whole * 4;
  j += (uint64_t) whole * 4;
  if (k < n) {
    fn (seed, stream, j >> 2, tmp);
    for (unsigned lane = 0; k < n; lane++)
      memcpy (o + 4 * k++, tmp + 4 * lane, 4);
  }
}

void
dp_rng_u32 (uint64_t seed, uint64_t stream, uint64_t offset, uint32_t *out, size_t n)
{
  fill_stream (u32_block, seed, stream, offset, out, n);
}

void
dp_rng_normal (uint64_t seed, uint64_t stream, uint64_t offset, float *out, size_t n)
{
  G_STATIC_ASSERT (sizeof (float) == sizeof (uint32_t));
  fill_stream (normal_block_fn, seed, stream, offset, out, n);
}

void
dp_rng_latent_noise (uint64_t seed, uint64_t stream, int64_t frame0, int frames, int channels,
                     int height, int width, float *out)
{
  g_return_if_fail (frame0 >= 0 && frames >= 0 && channels >= 0 && height >= 0 && width >= 0);
  const size_t plane = (size_t) height * width;
  for (int c = 0; c < channels; c++)
    for (int f = 0; f < frames; f++) {
      uint64_t offset = ((uint64_t) (frame0 + f) * channels + c) * plane;
      dp_rng_normal (seed, stream, offset, out + ((size_t) c * frames + f) * plane, plane);
    }
}
