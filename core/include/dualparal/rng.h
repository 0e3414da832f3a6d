/* dualparal: counter-based random numbers (Philox4x32-10).
 *
 * Noise must be reproducible from the seed alone and identical on every
 * device, whatever range of frames a device generates.  A counter-based
 * generator gives that: element j of a stream is a pure function of
 * (seed, stream, j), so [a, b) can be produced on its own and equals the
 * same slice of [0, n).
 *
 * Generator: Philox4x32-10 (Salmon, Moraes, Dror, Shaw, "Parallel random
 * numbers: as easy as 1, 2, 3", SC'11), bit-exact with Random123's
 * philox4x32 with 10 rounds (checked against its known-answer vectors).
 *
 * Layout.  Element j of stream (seed, stream) lies in block b = j / 4, lane
 * j % 4; the block is one Philox call with
 *   counter = { (uint32) b, (uint32) (b >> 32), (uint32) stream, (uint32) (stream >> 32) }
 *   key     = { (uint32) seed, (uint32) (seed >> 32) }
 * whose output words are w[0..3].
 * - dp_rng_u32: element j = w[j % 4].
 * - dp_rng_normal: Box-Muller on the word pairs (w0, w1) -> lanes 0, 1 and
 *   (w2, w3) -> lanes 2, 3.  For a pair (a, c):
 *     u1 = (a + 1) / 2^32 (in (0, 1]),  u2 = c / 2^32 (in [0, 1)),
 *     r = sqrt (-2 ln u1),  first = r cos (2 pi u2),  second = r sin (2 pi u2),
 *   evaluated in double precision and rounded to float.  |values| <= 6.67.
 * Both functions read the same blocks: use distinct stream ids for distinct
 * purposes (noise template, permutations, ...).
 *
 * The functions run on the host; noise for a device is generated here and
 * uploaded, so every device sees the same bits.
 */
#ifndef DUALPARAL_RNG_H
#define DUALPARAL_RNG_H

#include <stddef.h>
#include <stdint.h>
#include <glib.h>

G_BEGIN_DECLS

/* One Philox4x32-10 block: out = philox (counter, key). */
void dp_philox4x32_10 (const uint32_t counter[4], const uint32_t key[2], uint32_t out[4]);

/* out[k] = word (offset + k) of stream (seed, stream), k < n. */
void dp_rng_u32 (uint64_t seed, uint64_t stream, uint64_t offset, uint32_t *out, size_t n);

/* out[k] = standard normal (offset + k) of stream (seed, stream), k < n. */
void dp_rng_normal (uint64_t seed, uint64_t stream, uint64_t offset, float *out, size_t n);

/* Latent noise for frames [frame0, frame0 + frames) of a video latent with
 * the given channels and height x width, written in the latent layout
 * out[channels, frames, height, width].  Frame f, channel c is the normal
 * stream's elements [(f * channels + c) * height * width, + height * width):
 * a frame's noise depends on (seed, stream, f) only, not on the video's
 * length or on which frames are generated together (endless video, any
 * device generating any block). */
void dp_rng_latent_noise (uint64_t seed, uint64_t stream, int64_t frame0, int frames, int channels,
                          int height, int width, float *out);

G_END_DECLS

#endif
