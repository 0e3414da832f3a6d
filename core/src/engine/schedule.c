/* DualParal engine: the (iteration, block, step) bookkeeping.
 *
 * Pure arithmetic in closed form (no tables), so an endless run costs the
 * same at block 10 and at block 10^9.  See engine.h and docs/algorithm.md. */
#include "dualparal/engine.h"

#include <string.h>

void
dp_engine_split_layers (int num_layers, int n_stages, int stage, int *begin, int *end)
{
  const int each = num_layers / n_stages, extra = num_layers % n_stages;
  const int b = stage * each + MIN (stage, extra);
  *begin = b;
  *end = b + each + (stage < extra ? 1 : 0);
}

gboolean
dp_block_schedule_init (dp_block_schedule *s, int block_frames, int context_frames, int steps,
                        int64_t latent_frames, GError **error)
{
  memset (s, 0, sizeof *s);
  if (block_frames < 1 || context_frames < 0 || context_frames > block_frames) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID,
                 "engine: block of %d latent frames with %d context frames: need a block of at least 1 frame "
                 "and 0 <= context <= block (the context is the last context frames of the previous block)",
                 block_frames, context_frames);
    return FALSE;
  }
  if (steps < 1 || steps > DP_SAMPLER_MAX_STEPS) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "engine: %d sampler steps, expected 1..%d", steps,
                 DP_SAMPLER_MAX_STEPS);
    return FALSE;
  }
  if (latent_frames < 1 && latent_frames != -1) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID,
                 "engine: %" G_GINT64_FORMAT " latent frames, expected at least 1 or -1 (endless)", latent_frames);
    return FALSE;
  }
  /* Keep every count far from int64 overflow (n (n + 1) / 2 below). */
  if (latent_frames > ((int64_t) 1 << 40)) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "engine: %" G_GINT64_FORMAT " latent frames is too many",
                 latent_frames);
    return FALSE;
  }
  s->block_frames = block_frames;
  s->context_frames = context_frames;
  s->steps = steps;
  s->latent_frames = latent_frames;
  const int64_t P = block_frames, C = context_frames;
  if (latent_frames < 0) {
    s->num_blocks = s->num_iterations = s->num_passes = -1;
  } else {
    s->num_blocks = latent_frames <= P + C ? 1 : 1 + (latent_frames - P - C + P - 1) / P;
    s->num_iterations = steps + s->num_blocks - 1;
    s->num_passes = s->num_blocks * steps;
  }
  return TRUE;
}

int64_t
dp_block_schedule_block_first (const dp_block_schedule *s, int64_t block)
{
  return block == 0 ? 0 : s->context_frames + block * (int64_t) s->block_frames;
}

int
dp_block_schedule_max_block_frames (const dp_block_schedule *s)
{
  const int64_t full = (int64_t) s->block_frames + s->context_frames;
  return (int) (s->num_blocks == 1 ? MIN (full, s->latent_frames) : full);
}

int
dp_block_schedule_block_frames (const dp_block_schedule *s, int64_t block)
{
  return block == 0 ? dp_block_schedule_max_block_frames (s) : s->block_frames;
}

int
dp_block_schedule_block_kept (const dp_block_schedule *s, int64_t block)
{
  const int frames = dp_block_schedule_block_frames (s, block);
  if (s->latent_frames < 0)
    return frames;
  return (int) MIN ((int64_t) frames, s->latent_frames - dp_block_schedule_block_first (s, block));
}

void
dp_block_schedule_iteration (const dp_block_schedule *s, int64_t iteration, int64_t *lo, int64_t *hi)
{
  *hi = s->num_blocks < 0 ? iteration : MIN (iteration, s->num_blocks - 1);
  *lo = MAX (0, iteration - s->steps + 1);
}

/* sum over m < n of (hi_m - lo_m + 1) = sum min (m + 1, B) - sum max (0, m - T + 1). */
int64_t
dp_block_schedule_first_pass (const dp_block_schedule *s, int64_t iteration)
{
  const int64_t n = iteration, B = s->num_blocks, T = s->steps;
  int64_t entered;
  if (B < 0 || n <= B)
    entered = n * (n + 1) / 2;
  else
    entered = B * (B + 1) / 2 + (n - B) * B;
  const int64_t left = n > T ? (n - T) * (n - T + 1) / 2 : 0;
  return entered - left;
}

int64_t
dp_block_schedule_pass_index (const dp_block_schedule *s, int64_t iteration, int64_t block)
{
  if (iteration < 0 || (s->num_iterations >= 0 && iteration >= s->num_iterations))
    return -1;
  int64_t lo, hi;
  dp_block_schedule_iteration (s, iteration, &lo, &hi);
  if (block < lo || block > hi)
    return -1;
  return dp_block_schedule_first_pass (s, iteration) + (hi - block);
}

gboolean
dp_block_schedule_pass (const dp_block_schedule *s, int64_t iteration, int64_t block, dp_block_pass *p)
{
  const int64_t index = dp_block_schedule_pass_index (s, iteration, block);
  if (index < 0)
    return FALSE;
  memset (p, 0, sizeof *p);
  p->index = index;
  p->iteration = iteration;
  p->block = block;
  p->step = (int) (iteration - block);
  dp_block_schedule_iteration (s, iteration, &p->queue_lo, &p->queue_hi);
  p->context_frames = block == 0 ? 0 : s->context_frames;
  p->own_frames = dp_block_schedule_block_frames (s, block);
  p->window_frames = p->context_frames + p->own_frames;
  p->cache_in = s->context_frames > 0 && block + 1 <= p->queue_hi;
  p->cache_out = s->context_frames > 0 && block >= 1 && block - 1 >= p->queue_lo;
  /* The window reads the block's own latent and the previous block's as
   * they are after iteration - 1: that iteration's pass of the previous
   * block runs after the block's own, so it is the last dependency (it
   * exists whenever block >= 1: the previous block was one step further
   * along, at most at its last step). */
  if (iteration == 0)
    p->depends_below = 0;
  else
    p->depends_below = dp_block_schedule_pass_index (s, iteration - 1, block >= 1 ? block - 1 : 0) + 1;
  return TRUE;
}

void
dp_block_schedule_first (const dp_block_schedule *s, dp_block_pass *p)
{
  dp_block_schedule_pass (s, 0, 0, p);
}

gboolean
dp_block_schedule_next (const dp_block_schedule *s, dp_block_pass *p)
{
  if (p->block > p->queue_lo)
    return dp_block_schedule_pass (s, p->iteration, p->block - 1, p);
  const int64_t n = p->iteration + 1;
  if (s->num_iterations >= 0 && n >= s->num_iterations)
    return FALSE;
  int64_t lo, hi;
  dp_block_schedule_iteration (s, n, &lo, &hi);
  return dp_block_schedule_pass (s, n, hi, p);
}
