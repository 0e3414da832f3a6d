/* The DualParal engine (engine.h, transport.h) on the CPU with tiny models.
 *
 * - schedule: the (iteration, block, step) order and the iteration count
 *   equal a literal simulation of the reference's Queue bookkeeping
 *   (DualParal_Wan.py: add a block while frames remain, drop the head after
 *   T steps, run the queue from its tail); closed forms equal enumeration;
 *   every pass's dependency bound is sufficient and tight.
 * - noise: the template is the classic noise's first P + C frames; block 0
 *   takes it in order; every later block is a permutation of the pool
 *   without the previous block's last C frames; any block is rebuilt alone.
 * - engine (tests/data/engine/tiny5: 5 layers, so 2, 3 and 4 stages split it
 *   unevenly): 1 to 4 stages give bitwise the same latents; they equal a
 *   plain sequential implementation of the scheme written here with the
 *   one-call dp_wan_dit_forward (bitwise); one block with C = 0 equals the
 *   classic loop dp_wan_dit_forward + dp_sampler_step (bitwise); decoded
 *   frames equal decoding the finished latents at once (bitwise).
 * - endless: 100 blocks, the held memory figures stay equal and the process
 *   RSS does not grow; cancelling from another thread returns promptly,
 *   frees everything, and the engine runs again to the same result.
 * - transport: FIFO order, size mismatch, cancellation, request pool.
 * - generator (tests/data/pipeline/tiny-wan, text to RGB frames): the
 *   DualParal engine with one block equals the classic engine's frames on 1
 *   and 2 stages; several blocks give the same frames on 1 and 3 stages;
 *   endless video runs until the consumer stops it.
 * - per-token timesteps (Wan2.2 TI2V-5B, docs/algorithm.md "Per-token
 *   timesteps"): 1 to 3 stages equal the sequential scheme with context
 *   frames at their own noise level; the rule matters; one block does not
 *   change; the tiny TI2V model through the generator: one block equals the
 *   classic engine, several blocks give the same frames on 1 and 2 stages.
 * Every comparison is bitwise (memcmp) unless said otherwise. */
#include "dualparal/engine.h"
#include "dualparal/generator.h"
#include "dualparal/rng.h"

#include <malloc.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <glib/gstdio.h>

#include "random_wan.h"
#include "test_util.h"

#define TEXT_LEN 6

static char *
tiny5_dir (void)
{
  return dp_test_data_path ("engine", "tiny5", "transformer", NULL);
}

static char *
vae_dir (void)
{
  return dp_test_data_path ("vae", "vae", NULL);
}

/* Text context [B, TEXT_LEN, 16], fixed random values, zero rows after the
 * "tokens" as the umT5 encoder leaves them. */
static dp_tensor
make_context (int batch)
{
  dp_tensor t = dp_tensor_new_host (DP_F32, 3, (int64_t[]){ batch, TEXT_LEN, 16 });
  GRand *r = g_rand_new_with_seed (77);
  float *d = t.data;
  for (int b = 0; b < batch; b++)
    for (int i = 0; i < TEXT_LEN * 16; i++)
      d[b * TEXT_LEN * 16 + i] = i / 16 < 4 - b ? (float) g_rand_double_range (r, -1.5, 1.5) : 0.0f;
  g_rand_free (r);
  return t;
}

static dp_schedule *
make_schedule (dp_sampler_kind kind, int steps)
{
  dp_sampler_settings s;
  GError *err = NULL;
  dp_sampler_settings_init (&s, kind, 3.0);
  dp_schedule *sched = dp_schedule_new (&s, steps, &err);
  g_assert_no_error (err);
  return sched;
}

static size_t
rss_bytes (void)
{
  FILE *f = fopen ("/proc/self/statm", "r");
  long pages = 0, resident = 0;
  if (!f)
    return 0;
  if (fscanf (f, "%ld %ld", &pages, &resident) != 2)
    resident = 0;
  fclose (f);
  return (size_t) resident * (size_t) sysconf (_SC_PAGESIZE);
}

/* Bytes of the C heap in use, every arena and the mmap'd chunks together
 * (glibc's mallinfo2).  Exact to the byte, unlike the RSS, which moves by
 * pages and with the allocator's caching: a leak of a few hundred bytes per
 * block shows here. */
static size_t
heap_in_use_bytes (void)
{
  struct mallinfo2 mi = mallinfo2 ();
  return mi.uordblks + mi.hblkhd;
}

/* ------------------------------------------------------------ layer split */

static void
test_split (void)
{
  static const struct {
    int layers, stages, ranges[4][2];
  } cases[] = {
    { 5, 1, { { 0, 5 } } },
    { 5, 2, { { 0, 3 }, { 3, 5 } } },
    { 5, 3, { { 0, 2 }, { 2, 4 }, { 4, 5 } } },
    { 5, 4, { { 0, 2 }, { 2, 3 }, { 3, 4 }, { 4, 5 } } },
    { 3, 2, { { 0, 2 }, { 2, 3 } } },
    { 30, 4, { { 0, 8 }, { 8, 16 }, { 16, 23 }, { 23, 30 } } },
    { 2, 3, { { 0, 1 }, { 1, 2 }, { 2, 2 } } },
  };
  for (size_t i = 0; i < G_N_ELEMENTS (cases); i++)
    for (int r = 0; r < cases[i].stages; r++) {
      int b, e;
      dp_engine_split_layers (cases[i].layers, cases[i].stages, r, &b, &e);
      g_assert_cmpint (b, ==, cases[i].ranges[r][0]);
      g_assert_cmpint (e, ==, cases[i].ranges[r][1]);
    }
}

/* ------------------------------------------------------------ schedule */

/* The reference's bookkeeping, literally (examples/DualParal_Wan.py with
 * src/pipelines/base_pipeline.py's Queue): blocks are added while fewer than
 * latents_num frames were counted (P each, the first P + C), the head is
 * dropped when it has had T steps, then the queue runs from its tail
 * (index end - begin) down to its head.  Records (block, step, has
 * previous block, runs after another pass of the iteration, its previous
 * block runs after it) per pass and the number of iterations that ran a
 * pass.  latents_num counts like the reference: own frames minus the first
 * block's C. */
typedef struct {
  int64_t block;
  int step;
  gboolean context, cache_in, cache_out;
} ref_pass;

static GArray *
reference_passes (int P, int C, int T, int64_t latents_num, int64_t max_iterations, int64_t *iterations)
{
  GArray *out = g_array_new (FALSE, FALSE, sizeof (ref_pass));
  GArray *denoise = g_array_new (FALSE, TRUE, sizeof (int)); /* per block */
  int64_t begin = 0, end = -1, cnt = 0;
  *iterations = 0;
  for (int64_t it = 0; it < max_iterations; it++) {
    if (latents_num < 0 || cnt < latents_num) {
      int zero = 0;
      g_array_append_val (denoise, zero);
      end++;
      cnt += P;
    }
    if (begin <= end && g_array_index (denoise, int, begin) == T)
      begin++;
    gboolean ran = FALSE;
    for (int64_t idx = end - begin; idx >= 0; idx--) {
      const int64_t b = begin + idx;
      ref_pass p = { b, g_array_index (denoise, int, b), b >= 1 && C > 0, ran && C > 0, idx >= 1 && C > 0 };
      g_array_append_val (out, p);
      g_array_index (denoise, int, b)++;
      ran = TRUE;
    }
    if (ran)
      ++*iterations;
    else if (begin > end)
      break;
  }
  g_array_free (denoise, TRUE);
  return out;
}

static void
check_against_reference (int P, int C, int T, int64_t F)
{
  GError *err = NULL;
  dp_block_schedule s;
  g_assert_true (dp_block_schedule_init (&s, P, C, T, F, &err));
  g_assert_no_error (err);
  /* The reference counts P frames per block; its video has C more frames
   * (the first block's extra) than it counts. */
  const int64_t latents_num = F < 0 ? -1 : (s.num_blocks - 1) * P + 1;
  int64_t ref_iterations;
  const int64_t max_it = F < 0 ? 3 * T + 7 : T + s.num_blocks + 2;
  GArray *ref = reference_passes (P, C, T, latents_num, max_it, &ref_iterations);
  if (F >= 0) {
    g_assert_cmpint (ref_iterations, ==, s.num_iterations);
    g_assert_cmpint (ref_iterations, ==, T + s.num_blocks - 1);
    g_assert_cmpint ((int64_t) ref->len, ==, s.num_passes);
  }
  dp_block_pass p;
  dp_block_schedule_first (&s, &p);
  for (guint i = 0; i < ref->len; i++) {
    const ref_pass *r = &g_array_index (ref, ref_pass, i);
    g_assert_cmpint (p.index, ==, i);
    g_assert_cmpint (p.block, ==, r->block);
    g_assert_cmpint (p.step, ==, r->step);
    g_assert_cmpint (p.context_frames > 0, ==, r->context);
    g_assert_cmpint (p.cache_in, ==, r->cache_in);
    g_assert_cmpint (p.cache_out, ==, r->cache_out);
    g_assert_cmpint (p.window_frames, ==, p.context_frames + p.own_frames);
    gboolean more = dp_block_schedule_next (&s, &p);
    if (F >= 0)
      g_assert_cmpint (more, ==, i + 1 < ref->len);
    else
      g_assert_true (more);
  }
  g_array_free (ref, TRUE);
}

static void
test_schedule_reference (void)
{
  static const int cases[][4] = {
    /* P, C, T, F */
    { 10, 5, 50, 35 }, { 10, 5, 50, 21 }, { 2, 1, 3, 9 }, { 2, 1, 3, 8 }, { 3, 0, 4, 20 }, { 1, 1, 2, 7 },
    { 4, 2, 3, 6 },    { 4, 4, 5, 40 },   { 3, 1, 10, 13 }, { 5, 2, 1, 30 }, { 2, 1, 3, -1 }, { 10, 5, 50, -1 },
  };
  for (size_t i = 0; i < G_N_ELEMENTS (cases); i++)
    check_against_reference (cases[i][0], cases[i][1], cases[i][2], cases[i][3]);
}

/* Blocks whose step of the previous iteration a pass needs: its own and
 * the previous block's (as they are now); verified by counting, for every
 * number of applied predictions from depends_below to index, how many
 * steps each block has had, and that depends_below - 1 is not enough. */
static void
test_schedule_dependencies (void)
{
  static const int cases[][4] = { { 2, 1, 3, 9 }, { 3, 0, 4, 20 }, { 1, 1, 5, 9 }, { 4, 2, 2, 30 } };
  for (size_t ci = 0; ci < G_N_ELEMENTS (cases); ci++) {
    dp_block_schedule s;
    g_assert_true (dp_block_schedule_init (&s, cases[ci][0], cases[ci][1], cases[ci][2], cases[ci][3], NULL));
    const int64_t n = s.num_passes, B = s.num_blocks, T = s.steps;
    int64_t *blk = g_new (int64_t, n);
    dp_block_pass p;
    dp_block_schedule_first (&s, &p);
    for (int64_t i = 0; i < n; i++) {
      blk[i] = p.block;
      dp_block_schedule_next (&s, &p);
    }
    int64_t *steps = g_new0 (int64_t, B);
    dp_block_schedule_first (&s, &p);
    for (int64_t i = 0; i < n; i++, dp_block_schedule_next (&s, &p)) {
      g_assert_cmpint (p.depends_below, <=, p.index);
      for (int64_t applied = p.depends_below - 1; applied <= p.index; applied++) {
        if (applied < 0)
          continue;
        memset (steps, 0, sizeof (int64_t) * B);
        for (int64_t j = 0; j < applied; j++)
          steps[blk[j]]++;
        gboolean good = steps[p.block] == p.step &&
                        (p.block == 0 || steps[p.block - 1] == MIN ((int64_t) p.step + 1, T));
        if (applied >= p.depends_below)
          g_assert_true (good);
        else if (p.iteration > 0)
          g_assert_false (good); /* the bound is tight */
      }
    }
    g_free (steps);
    g_free (blk);
  }
}

static void
test_schedule_blocks (void)
{
  GError *err = NULL;
  dp_block_schedule s;
  /* Wan 1.3B at 81 frames: 21 latent frames, P 10, C 5: block 0 [0, 15),
   * block 1 [15, 25) of which 6 are kept. */
  g_assert_true (dp_block_schedule_init (&s, 10, 5, 50, 21, &err));
  g_assert_cmpint (s.num_blocks, ==, 2);
  g_assert_cmpint (s.num_iterations, ==, 51);
  g_assert_cmpint (s.num_passes, ==, 100);
  g_assert_cmpint (dp_block_schedule_block_first (&s, 1), ==, 15);
  g_assert_cmpint (dp_block_schedule_block_frames (&s, 0), ==, 15);
  g_assert_cmpint (dp_block_schedule_block_frames (&s, 1), ==, 10);
  g_assert_cmpint (dp_block_schedule_block_kept (&s, 0), ==, 15);
  g_assert_cmpint (dp_block_schedule_block_kept (&s, 1), ==, 6);
  /* Exactly divisible: nothing padded. */
  g_assert_true (dp_block_schedule_init (&s, 10, 5, 50, 35, &err));
  g_assert_cmpint (s.num_blocks, ==, 3);
  g_assert_cmpint (dp_block_schedule_block_kept (&s, 2), ==, 10);
  /* Shorter than one block: one block of exactly F frames (the classic run). */
  g_assert_true (dp_block_schedule_init (&s, 10, 5, 50, 9, &err));
  g_assert_cmpint (s.num_blocks, ==, 1);
  g_assert_cmpint (s.num_iterations, ==, 50);
  g_assert_cmpint (dp_block_schedule_block_frames (&s, 0), ==, 9);
  g_assert_cmpint (dp_block_schedule_max_block_frames (&s), ==, 9);
  /* Endless. */
  g_assert_true (dp_block_schedule_init (&s, 2, 1, 4, -1, &err));
  g_assert_cmpint (s.num_blocks, ==, -1);
  g_assert_cmpint (dp_block_schedule_block_kept (&s, 1000000), ==, 2);
  g_assert_no_error (err);

  /* Closed forms against enumeration, finite and endless. */
  static const int cases[][4] = { { 2, 1, 3, 9 }, { 1, 0, 7, 30 }, { 3, 2, 4, -1 }, { 5, 5, 2, 12 } };
  for (size_t ci = 0; ci < G_N_ELEMENTS (cases); ci++) {
    g_assert_true (dp_block_schedule_init (&s, cases[ci][0], cases[ci][1], cases[ci][2], cases[ci][3], NULL));
    dp_block_pass p;
    dp_block_schedule_first (&s, &p);
    int64_t last_iteration = -1;
    for (int i = 0; i < 400; i++) {
      if (p.iteration != last_iteration) {
        g_assert_cmpint (dp_block_schedule_first_pass (&s, p.iteration), ==, p.index);
        last_iteration = p.iteration;
      }
      g_assert_cmpint (dp_block_schedule_pass_index (&s, p.iteration, p.block), ==, p.index);
      g_assert_cmpint (p.step, ==, p.iteration - p.block);
      g_assert_cmpint (p.queue_hi - p.queue_lo + 1, <=, s.steps);
      if (!dp_block_schedule_next (&s, &p)) {
        g_assert_cmpint (p.index + 1, ==, s.num_passes);
        g_assert_cmpint (dp_block_schedule_first_pass (&s, s.num_iterations), ==, s.num_passes);
        break;
      }
    }
    g_assert_cmpint (dp_block_schedule_pass_index (&s, 0, 1), ==, -1);
  }
  /* A pass far into an endless video, without walking there. */
  g_assert_true (dp_block_schedule_init (&s, 2, 1, 50, -1, NULL));
  dp_block_pass p;
  g_assert_true (dp_block_schedule_pass (&s, 1000000, 999990, &p));
  g_assert_cmpint (p.step, ==, 10);
  g_assert_cmpint (p.queue_hi - p.queue_lo + 1, ==, 50);
  g_assert_cmpint (p.index, ==, dp_block_schedule_first_pass (&s, 1000000) + 10);
  g_assert_cmpint (dp_block_schedule_first_pass (&s, 1000001) - dp_block_schedule_first_pass (&s, 1000000), ==, 50);

  /* Bad settings. */
  static const int bad[][4] = { { 0, 0, 5, 10 }, { 2, 3, 5, 10 }, { 2, -1, 5, 10 }, { 2, 1, 0, 10 }, { 2, 1, 5, 0 },
                                { 2, 1, 5, -2 } };
  for (size_t i = 0; i < G_N_ELEMENTS (bad); i++) {
    g_assert_false (dp_block_schedule_init (&s, bad[i][0], bad[i][1], bad[i][2], bad[i][3], &err));
    g_assert_error (err, DP_ERROR, DP_ERROR_INVALID);
    g_clear_error (&err);
  }
}

/* ------------------------------------------------------------ noise */

static void
test_noise (void)
{
  GError *err = NULL;
  const int P = 4, C = 2, ch = 3, H = 2, W = 3, pool = P + C;
  const size_t hw = (size_t) H * W;
  dp_block_schedule s;
  g_assert_true (dp_block_schedule_init (&s, P, C, 5, -1, &err));
  dp_block_noise *n = dp_block_noise_new (&s, 99, 0, ch, H, W, &err);
  g_assert_no_error (err);

  /* The template is the classic pipeline's noise of frames 0..P+C-1. */
  float *classic = g_new (float, ch * pool * hw);
  dp_rng_latent_noise (99, 0, 0, pool, ch, H, W, classic);
  g_assert_cmpmem (dp_block_noise_template (n), ch * pool * hw * sizeof (float), classic,
                   ch * pool * hw * sizeof (float));

  int order[16], prev[16], again[16];
  dp_block_noise_order (n, 0, order);
  for (int j = 0; j < pool; j++)
    g_assert_cmpint (order[j], ==, j);
  memcpy (prev, order, sizeof order);
  int prev_frames = pool, moved = 0;
  float *fill = g_new (float, ch * pool * hw);
  for (int64_t b = 1; b <= 60; b++) {
    dp_block_noise_order (n, b, order);
    gboolean used[16] = { FALSE };
    for (int j = 0; j < P; j++) {
      g_assert_cmpint (order[j], >=, 0);
      g_assert_cmpint (order[j], <, pool);
      g_assert_false (used[order[j]]); /* distinct */
      used[order[j]] = TRUE;
      for (int k = prev_frames - C; k < prev_frames; k++)
        g_assert_cmpint (order[j], !=, prev[k]); /* avoids the previous block's last C */
    }
    for (int j = 0; j < P; j++)
      moved += order[j] != prev[j];
    /* The noise is those template frames. */
    dp_block_noise_fill (n, b, fill);
    for (int c = 0; c < ch; c++)
      for (int j = 0; j < P; j++)
        g_assert_cmpmem (fill + ((size_t) c * P + j) * hw, hw * sizeof (float),
                         dp_block_noise_template (n) + ((size_t) c * pool + order[j]) * hw, hw * sizeof (float));
    memcpy (prev, order, sizeof order);
    prev_frames = P;
  }
  g_assert_cmpint (moved, >, 0); /* the permutations are not all the identity */

  /* Any block alone (a fresh object, out of order) gives the same noise. */
  dp_block_noise *m = dp_block_noise_new (&s, 99, 0, ch, H, W, &err);
  dp_block_noise_order (m, 37, again);
  dp_block_noise_order (n, 37, order);
  g_assert_cmpmem (again, P * sizeof (int), order, P * sizeof (int));
  dp_block_noise_order (m, 3, again);
  dp_block_noise_order (n, 3, order);
  g_assert_cmpmem (again, P * sizeof (int), order, P * sizeof (int));
  /* Another seed permutes differently. */
  dp_block_noise *o = dp_block_noise_new (&s, 100, 0, ch, H, W, &err);
  gboolean differ = FALSE;
  for (int64_t b = 1; b < 10 && !differ; b++) {
    dp_block_noise_order (o, b, again);
    dp_block_noise_order (n, b, order);
    differ = memcmp (again, order, P * sizeof (int)) != 0;
  }
  g_assert_true (differ);
  dp_block_noise_free (o);
  dp_block_noise_free (m);
  dp_block_noise_free (n);
  g_free (fill);
  g_free (classic);
}

/* ------------------------------------------------------------ engine runs */

typedef struct {
  int stages, P, C, T;
  int64_t F; /* latent frames */
  dp_sampler_kind kind;
  int batch;
  double guidance;
  gboolean vae;
  int H, W;
  uint64_t seed;
  /* Two experts (Wan2.2): expert1 / expert2 transformer directories (NULL:
   * tiny5 alone), expert2 below the timestep boundary, with guidance_2. */
  const char *expert1, *expert2;
  double boundary, guidance_2;
  /* Wan2.2 TI2V: per-token timesteps, context frames at their own level */
  gboolean per_token;
  /* Decoding: on the engine's decode thread (the VAE on a backend of its
   * own), tiled (tile pixels, 0: untiled). */
  gboolean decode_thread;
  int vae_tile;
} run_cfg;

typedef struct {
  int channels, H, W;
  int64_t F;
  float *latents;       /* [channels, F, H, W] */
  int64_t next_frame;   /* latent frames delivered, in order */
  int64_t blocks;
  GByteArray *rgb;      /* decoded frames, in order */
  int64_t video_frames;
  int64_t stop_frames_after; /* on_frames stops the run after this many video frames; 0: never */
  GThread *frames_thread;    /* the thread of the first on_frames call */
  int64_t stop_after;   /* blocks; 0: never */
  int64_t iterations;   /* iteration callbacks, in order */
  dp_engine *engine;
  dp_engine_stats at_block[128];
  size_t rss_at_block[128];
  size_t heap_at_block[128];
} collect;

static gboolean
on_latent (const dp_tensor *latent, int64_t block, int64_t first_frame, void *data)
{
  collect *c = data;
  g_assert_cmpint (block, ==, c->blocks);
  g_assert_cmpint (first_frame, ==, c->next_frame);
  g_assert_cmpint (latent->shape[0], ==, c->channels);
  const int64_t n = latent->shape[1], hw = (int64_t) c->H * c->W;
  if (c->latents) {
    g_assert_cmpint (first_frame + n, <=, c->F);
    for (int ch = 0; ch < c->channels; ch++)
      memcpy (c->latents + ((size_t) ch * c->F + first_frame) * hw, (float *) latent->data + (size_t) ch * n * hw,
              n * hw * sizeof (float));
  }
  if (c->engine && c->blocks < 128) {
    dp_engine_get_stats (c->engine, &c->at_block[c->blocks]);
    c->rss_at_block[c->blocks] = rss_bytes ();
    c->heap_at_block[c->blocks] = heap_in_use_bytes ();
  }
  c->next_frame += n;
  c->blocks++;
  return c->stop_after == 0 || c->blocks < c->stop_after;
}

static void
on_iteration (int64_t iteration, int64_t total, void *data)
{
  collect *c = data;
  g_assert_cmpint (iteration, ==, c->iterations);
  g_assert_true (total < 0 || iteration < total);
  c->iterations++;
}

static gboolean
on_frames (const uint8_t *rgb, int n_frames, int64_t first_frame, void *data)
{
  collect *c = data;
  g_assert_cmpint (first_frame, ==, c->video_frames);
  if (!c->frames_thread)
    c->frames_thread = g_thread_self ();
  g_assert_true (c->frames_thread == g_thread_self ()); /* one thread, in order */
  if (c->rgb)
    g_byte_array_append (c->rgb, rgb, (guint) (n_frames * (c->H * 8) * (c->W * 8) * 3));
  c->video_frames += n_frames;
  return c->stop_frames_after == 0 || c->video_frames < c->stop_frames_after;
}

static dp_backend **
make_backends (int n)
{
  dp_backend **be = g_new0 (dp_backend *, n);
  GError *err = NULL;
  for (int i = 0; i < n; i++) {
    be[i] = dp_backend_new ("cpu", &err);
    g_assert_no_error (err);
  }
  return be;
}

static void
free_backends (dp_backend **be, int n)
{
  for (int i = 0; i < n; i++)
    dp_backend_free (be[i]);
  g_free (be);
}

static dp_engine *
make_engine (const run_cfg *cfg, dp_backend **be, dp_schedule **sched_out, GError **error)
{
  char *dir = cfg->expert1 ? g_strdup (cfg->expert1) : tiny5_dir ();
  dp_schedule *sched = make_schedule (cfg->kind, cfg->T);
  dp_engine_params p = {
    .block_frames = cfg->P, .context_frames = cfg->C, .latent_frames = cfg->F, .latent_height = cfg->H,
    .latent_width = cfg->W, .schedule = sched, .guidance = cfg->guidance, .seed = cfg->seed,
    .noise_stream = DP_ENGINE_NOISE_STREAM, .expert2_dir = cfg->expert2, .boundary = cfg->boundary,
    .guidance_2 = cfg->guidance_2, .per_token_time = cfg->per_token,
  };
  dp_engine *e = dp_engine_new (dir, be, cfg->stages, NULL, &p, error);
  g_free (dir);
  if (sched_out)
    *sched_out = sched;
  else
    dp_schedule_free (sched); /* the engine keeps its own copy */
  return e;
}

/* Runs the engine; returns the video's latents [16, F, H, W] (and frames). */
static float *
run_engine (const run_cfg *cfg, GByteArray **rgb_out, dp_engine_stats *stats_out)
{
  GError *err = NULL;
  dp_backend **be = make_backends (cfg->stages);
  dp_engine *e = make_engine (cfg, be, NULL, &err);
  g_assert_no_error (err);
  dp_wan_vae *vae = NULL;
  dp_backend *vae_be = NULL;
  if (cfg->vae) {
    char *dir = vae_dir ();
    if (cfg->decode_thread) {
      vae_be = dp_backend_new ("cpu", &err);
      g_assert_no_error (err);
    }
    vae = dp_wan_vae_load (vae_be ? vae_be : be[0], dir, &err);
    g_assert_no_error (err);
    g_free (dir);
  }
  collect c = { .channels = 16, .H = cfg->H, .W = cfg->W, .F = cfg->F };
  c.latents = g_new0 (float, (size_t) 16 * cfg->F * cfg->H * cfg->W);
  c.rgb = rgb_out ? g_byte_array_new () : NULL;
  dp_tensor ctx = make_context (cfg->batch);
  dp_wan_vae_tiling tiling = { 0 };
  if (cfg->vae_tile > 0)
    dp_wan_vae_tiling_default (cfg->vae_tile, 8, &tiling);
  dp_engine_output out = { .block_latent = on_latent, .frames = on_frames, .iteration = on_iteration, .user_data = &c,
                           .vae_tiling = &tiling, .decode_thread = cfg->decode_thread };
  g_assert_true (dp_engine_run (e, &ctx, vae, &out, &err));
  g_assert_no_error (err);
  g_assert_cmpint (c.next_frame, ==, cfg->F);
  g_assert_cmpint (c.blocks, ==, dp_engine_get_schedule (e)->num_blocks);
  g_assert_cmpint (c.iterations, ==, dp_engine_get_schedule (e)->num_iterations);
  if (vae)
    g_assert_cmpint (c.video_frames, ==, 1 + 4 * (cfg->F - 1));
  dp_engine_stats st;
  dp_engine_get_stats (e, &st);
  g_assert_false (st.running);
  g_assert_cmpint (st.blocks_done, ==, c.blocks);
  g_assert_cmpint (st.block_bytes, ==, 0); /* everything freed */
  for (int r = 0; r < cfg->stages; r++) {
    g_assert_cmpint (st.stage[r].passes, ==, dp_engine_get_schedule (e)->num_passes);
    g_assert_cmpint (st.stage[r].cache_bytes + st.stage[r].buffer_bytes, ==, 0);
  }
  if (stats_out)
    *stats_out = st;
  if (rgb_out)
    *rgb_out = c.rgb;
  if (vae)
    g_assert_true (cfg->decode_thread ? c.frames_thread != g_thread_self () : c.frames_thread == g_thread_self ());
  dp_tensor_free (&ctx);
  dp_wan_vae_free (vae);
  dp_backend_free (vae_be);
  dp_engine_free (e);
  free_backends (be, cfg->stages);
  return c.latents;
}

/* The scheme written plainly: every block's latent kept, the whole model
 * in one dp_wan_dit_forward per pass (the window assembled on the host,
 * embedded at once), the cache as one [layers, B, C hw, dim] pair. */
static float *
run_sequential (const run_cfg *cfg)
{
  GError *err = NULL;
  dp_backend *be = dp_backend_new ("cpu", &err);
  char *dir = cfg->expert1 ? g_strdup (cfg->expert1) : tiny5_dir ();
  dp_wan_dit *dit = dp_wan_dit_load (be, dir, 0, -1, &err), *dit2 = NULL;
  g_assert_no_error (err);
  g_free (dir);
  dp_tensor ctx = make_context (cfg->batch);
  g_assert_true (dp_wan_dit_set_context (dit, &ctx, &err));
  if (cfg->expert2) {
    dit2 = dp_wan_dit_load (be, cfg->expert2, 0, -1, &err);
    g_assert_no_error (err);
    g_assert_true (dp_wan_dit_set_context (dit2, &ctx, &err));
  }
  const dp_wan_config *wc = dp_wan_dit_config (dit);
  const int ch = wc->in_channels, H = cfg->H, W = cfg->W, C = cfg->C;
  const size_t hw = (size_t) H * W;
  dp_block_schedule s;
  g_assert_true (dp_block_schedule_init (&s, cfg->P, cfg->C, cfg->T, cfg->F, &err));
  dp_block_noise *noise = dp_block_noise_new (&s, cfg->seed, DP_ENGINE_NOISE_STREAM, ch, H, W, &err);
  dp_schedule *sched = make_schedule (cfg->kind, cfg->T);
  const int64_t B = s.num_blocks;
  dp_tensor *x = g_new0 (dp_tensor, B);
  dp_sampler **smp = g_new0 (dp_sampler *, B);
  const int maxw = dp_block_schedule_max_block_frames (&s);
  dp_tensor win = dp_backend_tensor_new (be, DP_F32, 4, (int64_t[]){ ch, maxw, H, W });
  dp_tensor vel = dp_backend_tensor_new (be, DP_F32, 4, (int64_t[]){ ch, maxw, H, W });
  const int64_t tok = (int64_t) (H / 2) * (W / 2);
  dp_tensor ck = dp_backend_tensor_new (be, DP_F32, 4, (int64_t[]){ wc->num_layers, cfg->batch, C * tok, wc->dim });
  dp_tensor cv = dp_backend_tensor_new (be, DP_F32, 4, (int64_t[]){ wc->num_layers, cfg->batch, C * tok, wc->dim });
  int pos[64];
  for (int i = 0; i < 64; i++)
    pos[i] = i;
  float *out = g_new0 (float, (size_t) ch * cfg->F * hw);
  for (int64_t n = 0; n < s.num_iterations; n++) {
    int64_t lo, hi;
    dp_block_schedule_iteration (&s, n, &lo, &hi);
    gboolean exported = FALSE;
    for (int64_t b = hi; b >= lo; b--) {
      const int own = dp_block_schedule_block_frames (&s, b), ctxf = b > 0 ? C : 0, frames = own + ctxf;
      const int step = (int) (n - b);
      if (step == 0) {
        x[b] = dp_backend_tensor_new (be, DP_F32, 4, (int64_t[]){ ch, own, H, W });
        dp_block_noise_fill (noise, b, x[b].data);
        smp[b] = dp_sampler_new (be, sched, 4, x[b].shape, &err);
        g_assert_no_error (err);
      }
      float *w = win.data;
      for (int c = 0; c < ch; c++) {
        if (ctxf)
          memcpy (w + (size_t) c * frames * hw, (float *) x[b - 1].data + ((size_t) c * x[b - 1].shape[1] + x[b - 1].shape[1] - C) * hw,
                  C * hw * sizeof (float));
        memcpy (w + ((size_t) c * frames + ctxf) * hw, (float *) x[b].data + (size_t) c * own * hw,
                own * hw * sizeof (float));
      }
      dp_tensor wv = dp_tensor_view (win.data, DP_F32, 4, (int64_t[]){ ch, frames, H, W });
      dp_tensor vv = dp_tensor_view (vel.data, DP_F32, 4, (int64_t[]){ ch, own, H, W });
      dp_wan_span span;
      dp_wan_span_init (&span, frames, H, W);
      span.frame_pos = pos;
      span.out_first = ctxf;
      span.out_frames = own;
      if (C > 0 && exported) {
        span.extra_frames = C;
        span.extra_pos = pos + frames;
        span.extra_k = &ck;
        span.extra_v = &cv;
      }
      exported = C > 0 && b >= 1 && b - 1 >= lo;
      if (exported) {
        span.export_first = C;
        span.export_frames = C;
        span.export_k = &ck;
        span.export_v = &cv;
      }
      /* Per-token timesteps (TI2V): the context frames are block b-1 after
       * step + 1 of its steps, at that step's timestep, or clean (0). */
      float frame_t[64];
      if (cfg->per_token) {
        const float ctx_t = step + 1 < cfg->T ? (float) sched->timesteps[step + 1] : 0.0f;
        for (int f = 0; f < frames; f++)
          frame_t[f] = f < ctxf ? ctx_t : (float) sched->timesteps[step];
        span.frame_timesteps = frame_t;
      }
      /* Two experts: diffusers' rule, t >= boundary (float32) runs the first. */
      const gboolean low = dit2 && !((float) sched->timesteps[step] >= (float) cfg->boundary);
      const double g = low && cfg->guidance_2 > 0 ? cfg->guidance_2 : cfg->guidance;
      g_assert_true (dp_wan_dit_forward (low ? dit2 : dit, &span, &wv, (float) sched->timesteps[step], (float) g, &vv,
                                         &err));
      g_assert_true (dp_sampler_step (smp[b], &x[b], &vv, &err));
      g_assert_no_error (err);
      if (step == cfg->T - 1) {
        const int kept = dp_block_schedule_block_kept (&s, b);
        const int64_t first = dp_block_schedule_block_first (&s, b);
        for (int c = 0; c < ch; c++)
          memcpy (out + ((size_t) c * cfg->F + first) * hw, (float *) x[b].data + (size_t) c * own * hw,
                  kept * hw * sizeof (float));
      }
    }
  }
  for (int64_t b = 0; b < B; b++) {
    dp_sampler_free (smp[b]);
    dp_backend_tensor_free (be, &x[b]);
  }
  g_free (x);
  g_free (smp);
  dp_backend_tensor_free (be, &win);
  dp_backend_tensor_free (be, &vel);
  dp_backend_tensor_free (be, &ck);
  dp_backend_tensor_free (be, &cv);
  dp_schedule_free (sched);
  dp_block_noise_free (noise);
  dp_tensor_free (&ctx);
  dp_wan_dit_free (dit);
  dp_wan_dit_free (dit2);
  dp_backend_free (be);
  return out;
}

static void
assert_same_latents (const float *a, const float *b, const run_cfg *cfg, const char *what)
{
  const size_t n = (size_t) 16 * cfg->F * cfg->H * cfg->W;
  if (memcmp (a, b, n * sizeof (float)) != 0) {
    double d = 0, ref = 0;
    for (size_t i = 0; i < n; i++) {
      d += (a[i] - b[i]) * (double) (a[i] - b[i]);
      ref += b[i] * (double) b[i];
    }
    g_error ("%s: latents differ (relative L2 %.3g)", what, ref > 0 ? sqrt (d / ref) : d);
  }
}

/* ------------------------------------------------------------ conditionings */

/* Prompt changes (engine.h, block_cond): block 3 takes a second context
 * with guidance 3, block 5 a half-way blend of the first and second. */
typedef struct {
  collect c;
  dp_engine_cond *first, *second;
  int asked;
} cond_run;

static gboolean
on_block_cond (int64_t block, dp_engine_cond **cond, void *data, GError **error)
{
  cond_run *r = data;
  g_assert_cmpint (block, ==, r->asked + 1); /* every block but block 0, in order */
  r->asked++;
  if (block == 3)
    *cond = dp_engine_cond_ref (r->second);
  else if (block == 5)
    *cond = dp_engine_cond_blend (r->first, r->second, 0.5, error);
  return *cond != NULL || block != 5;
}

static gboolean
on_cond_latent (const dp_tensor *latent, int64_t block, int64_t first_frame, void *data)
{
  return on_latent (latent, block, first_frame, &((cond_run *) data)->c);
}

static float *
run_with_changes (const run_cfg *cfg, gboolean change, dp_engine_stats *stats)
{
  GError *err = NULL;
  dp_backend **be = make_backends (cfg->stages);
  dp_engine *e = make_engine (cfg, be, NULL, &err);
  g_assert_no_error (err);
  cond_run r = { .c = { .channels = 16, .H = cfg->H, .W = cfg->W, .F = cfg->F } };
  r.c.latents = g_new0 (float, (size_t) 16 * cfg->F * cfg->H * cfg->W);
  dp_tensor ctx = make_context (cfg->batch);
  /* Another context: the first one's values reversed. */
  dp_tensor ctx2 = dp_tensor_new_host (DP_F32, 3, ctx.shape);
  const int64_t n = dp_tensor_nelem (&ctx);
  for (int64_t i = 0; i < n; i++)
    ((float *) ctx2.data)[i] = ((float *) ctx.data)[n - 1 - i];
  r.first = dp_engine_cond_new (&ctx, cfg->guidance, &err);
  r.second = dp_engine_cond_new (&ctx2, 3.0, &err);
  g_assert_no_error (err);
  dp_engine_output out = { .block_latent = on_cond_latent, .block_cond = change ? on_block_cond : NULL,
                           .user_data = &r };
  g_assert_true (dp_engine_run (e, &ctx, NULL, &out, &err));
  g_assert_no_error (err);
  g_assert_cmpint (r.c.next_frame, ==, cfg->F);
  if (change)
    g_assert_cmpint (r.asked, ==, dp_engine_get_schedule (e)->num_blocks - 1);
  dp_engine_get_stats (e, stats);
  dp_engine_cond_unref (r.first);
  dp_engine_cond_unref (r.second);
  dp_tensor_free (&ctx);
  dp_tensor_free (&ctx2);
  dp_engine_free (e);
  free_backends (be, cfg->stages);
  return r.c.latents;
}

/* Blocks keep their conditioning on every stage: 1, 2 and 3 stages give
 * bitwise the same latents with changes; blocks finished before the first
 * block a change can touch (the queue when block 3 enters: blocks 3-T+1..)
 * equal the run without changes; later ones differ. */
static void
test_conds (void)
{
  run_cfg cfg = { .stages = 1, .P = 2, .C = 1, .T = 3, .F = 15, .kind = DP_SAMPLER_UNIPC, .batch = 2,
                  .guidance = 5.0, .H = 4, .W = 6, .seed = 5 };
  dp_engine_stats st;
  float *plain = run_with_changes (&cfg, FALSE, &st);
  g_assert_cmpint (st.cond_changes, ==, 0);
  g_assert_cmpint (st.contexts_computed, ==, 1);
  float *ref = run_with_changes (&cfg, TRUE, &st);
  g_assert_cmpint (st.cond_changes, ==, 2);
  /* 3 conditionings; with 2 slots, the passes of an iteration that mixes
   * all three compute again. */
  g_assert_cmpint (st.contexts_computed, >=, 3);
  g_test_message ("1 stage, 2 changes: %" G_GINT64_FORMAT " contexts computed in %.4f s (run %.3f s)",
                  st.contexts_computed, st.context_seconds, st.run_seconds);
  const size_t hw = (size_t) cfg.H * cfg.W;
  /* Block 0 = latent frames 0..2 finished before block 3 entered (T = 3:
   * the queue at iteration 3 is blocks 1..3). */
  const int untouched = 3, touched_first = 3 + 2 * (3 - 1 - 1);
  for (int c = 0; c < 16; c++) {
    g_assert_cmpint (memcmp (plain + c * cfg.F * hw, ref + c * cfg.F * hw, untouched * hw * sizeof (float)), ==, 0);
    g_assert_cmpint (memcmp (plain + (c * cfg.F + touched_first) * hw, ref + (c * cfg.F + touched_first) * hw,
                             (cfg.F - touched_first) * hw * sizeof (float)), !=, 0);
  }
  for (int n = 2; n <= 3; n++) {
    cfg.stages = n;
    float *got = run_with_changes (&cfg, TRUE, &st);
    g_assert_cmpint (st.cond_changes, ==, 2);
    assert_same_latents (got, ref, &cfg, n == 2 ? "2 stages with prompt changes" : "3 stages with prompt changes");
    g_free (got);
  }
  g_free (plain);
  g_free (ref);
}

static void
test_stages (void)
{
  static const run_cfg cfgs[] = {
    /* 4 blocks, the last padded (8 = 3 + 2 + 2 + 1 of 2), guided, UniPC */
    { .P = 2, .C = 1, .T = 3, .F = 8, .kind = DP_SAMPLER_UNIPC, .batch = 2, .guidance = 5.0, .H = 4, .W = 6, .seed = 3 },
    /* more blocks than steps, conditional only, Euler */
    { .P = 1, .C = 1, .T = 2, .F = 7, .kind = DP_SAMPLER_EULER, .batch = 1, .guidance = 1.0, .H = 2, .W = 4, .seed = 5 },
    /* no context, P 3 */
    { .P = 3, .C = 0, .T = 4, .F = 9, .kind = DP_SAMPLER_UNIPC, .batch = 2, .guidance = 3.0, .H = 4, .W = 4, .seed = 8 },
    /* C = P */
    { .P = 2, .C = 2, .T = 5, .F = 10, .kind = DP_SAMPLER_UNIPC, .batch = 1, .guidance = 1.0, .H = 2, .W = 2, .seed = 1 },
  };
  for (size_t i = 0; i < G_N_ELEMENTS (cfgs); i++) {
    run_cfg cfg = cfgs[i];
    float *seq = run_sequential (&cfg);
    cfg.stages = 1;
    float *one = run_engine (&cfg, NULL, NULL);
    assert_same_latents (one, seq, &cfg, "1 stage vs the sequential scheme");
    for (int n = 2; n <= 4; n++) {
      cfg.stages = n;
      float *many = run_engine (&cfg, NULL, NULL);
      char what[64];
      g_snprintf (what, sizeof what, "case %zu: %d stages vs 1", i, n);
      assert_same_latents (many, one, &cfg, what);
      g_free (many);
    }
    g_free (one);
    g_free (seq);
  }
}

/* Wan2.2 two experts: two random 5-layer transformers of one shape (other
 * weights).  With the boundary between two steps, blocks in flight sit on
 * both sides of it, so passes in a row use different experts on every
 * stage: 1, 2 and 3 stages give bitwise the same latents and decoded frames, equal to the
 * plain scheme that picks the expert per step; the result differs from
 * either expert alone (the switch matters), and a boundary below every
 * timestep gives exactly the first expert's run. */
static void
test_experts (void)
{
  GError *err = NULL;
  char *tmp = dp_test_make_tmp_dir ("dp-experts-XXXXXX");
  char *d1 = g_build_filename (tmp, "transformer", NULL), *d2 = g_build_filename (tmp, "transformer_2", NULL);
  const random_wan_dit_size m = { .dim = 24, .heads = 2, .ffn = 48, .layers = 5, .text_dim = 16, .freq_dim = 64,
                                  .channels = 16 };
  g_assert_cmpint (g_mkdir (d1, 0700), ==, 0);
  g_assert_cmpint (g_mkdir (d2, 0700), ==, 0);
  g_assert_true (random_wan_dit_write (d1, &m, DP_F32, 11, &err));
  g_assert_true (random_wan_dit_write (d2, &m, DP_F32, 12, &err));
  g_assert_no_error (err);

  dp_schedule *sched = make_schedule (DP_SAMPLER_UNIPC, 4);
  const double mid = 0.5 * (sched->timesteps[1] + sched->timesteps[2]);
  g_test_message ("timesteps %g %g %g %g, boundary %g", sched->timesteps[0], sched->timesteps[1],
                  sched->timesteps[2], sched->timesteps[3], mid);
  dp_schedule_free (sched);
  /* 4 blocks of P 2, C 1, T 4: iterations 2..4 hold blocks on both sides. */
  run_cfg cfgs[] = {
    { .P = 2, .C = 1, .T = 4, .F = 8, .kind = DP_SAMPLER_UNIPC, .batch = 2, .guidance = 5.0, .H = 4, .W = 6,
      .seed = 3, .expert1 = d1, .expert2 = d2, .boundary = mid, .guidance_2 = 2.0 },
    /* guidance_2 0: the conditioning's guidance */
    { .P = 1, .C = 1, .T = 4, .F = 6, .kind = DP_SAMPLER_UNIPC, .batch = 2, .guidance = 4.0, .H = 2, .W = 4,
      .seed = 5, .expert1 = d1, .expert2 = d2, .boundary = mid },
  };
  for (size_t i = 0; i < G_N_ELEMENTS (cfgs); i++) {
    run_cfg cfg = cfgs[i];
    float *seq = run_sequential (&cfg);
    GByteArray *rgb1 = NULL;
    cfg.stages = 1;
    cfg.vae = TRUE; /* frames too */
    float *one = run_engine (&cfg, &rgb1, NULL);
    assert_same_latents (one, seq, &cfg, "two experts: 1 stage vs the sequential scheme");
    for (int n = 2; n <= 3; n++) {
      GByteArray *rgb = NULL;
      cfg.stages = n;
      float *many = run_engine (&cfg, &rgb, NULL);
      char what[64];
      g_snprintf (what, sizeof what, "two experts, case %zu: %d stages vs 1", i, n);
      assert_same_latents (many, one, &cfg, what);
      g_assert_cmpmem (rgb->data, rgb->len, rgb1->data, rgb1->len);
      g_byte_array_unref (rgb);
      g_free (many);
    }
    g_assert_cmpint (rgb1->len, ==, (guint) (1 + 4 * (cfg.F - 1)) * (cfg.H * 8) * (cfg.W * 8) * 3);
    g_byte_array_unref (rgb1);
    cfg.vae = FALSE;
    /* Either expert alone gives other latents. */
    const size_t n = (size_t) 16 * cfg.F * cfg.H * cfg.W;
    run_cfg alone = cfg;
    alone.stages = 2;
    alone.expert2 = NULL;
    dp_engine_stats st1, st2;
    float *first = run_engine (&alone, NULL, &st1);
    g_assert_true (memcmp (first, one, n * sizeof (float)) != 0);
    /* Each stage holds both experts' layers but one activation arena: more
     * than one expert's bytes, less than twice. */
    cfg.stages = 2;
    g_free (run_engine (&cfg, NULL, &st2));
    for (int r = 0; r < 2; r++) {
      g_test_message ("stage %d model bytes: one expert %zu, two %zu", r, st1.stage[r].model_bytes,
                      st2.stage[r].model_bytes);
      g_assert_cmpuint (st2.stage[r].model_bytes, >, st1.stage[r].model_bytes);
      g_assert_cmpuint (st2.stage[r].model_bytes, <, 2 * st1.stage[r].model_bytes);
    }
    alone.expert1 = d2;
    float *second = run_engine (&alone, NULL, NULL);
    g_assert_true (memcmp (second, one, n * sizeof (float)) != 0);
    /* Every timestep >= a boundary of 0: the first expert throughout. */
    run_cfg high = cfg;
    high.stages = 3;
    high.boundary = 0.0;
    float *all_high = run_engine (&high, NULL, NULL);
    assert_same_latents (all_high, first, &cfg, "two experts, boundary 0 vs the first expert alone");
    g_free (first);
    g_free (second);
    g_free (all_high);
    g_free (one);
    g_free (seq);
  }

  /* Prompt changes (block 3: another context and guidance, block 5 a blend)
   * with two experts: each expert keeps the contexts of its own passes;
   * 1, 2 and 3 stages give bitwise the same latents, and the change is seen. */
  {
    run_cfg cc = { .stages = 1, .P = 2, .C = 1, .T = 4, .F = 15, .kind = DP_SAMPLER_UNIPC, .batch = 2,
                   .guidance = 5.0, .H = 4, .W = 6, .seed = 5, .expert1 = d1, .expert2 = d2, .boundary = mid };
    dp_engine_stats st;
    float *plain = run_with_changes (&cc, FALSE, &st);
    g_assert_cmpint (st.contexts_computed, ==, 2); /* one per expert */
    float *ref = run_with_changes (&cc, TRUE, &st);
    g_assert_cmpint (st.cond_changes, ==, 2);
    const size_t n = (size_t) 16 * cc.F * cc.H * cc.W;
    g_assert_true (memcmp (plain, ref, n * sizeof (float)) != 0);
    for (int s = 2; s <= 3; s++) {
      cc.stages = s;
      float *got = run_with_changes (&cc, TRUE, &st);
      assert_same_latents (got, ref, &cc, s == 2 ? "two experts, changes, 2 stages" : "two experts, changes, 3 stages");
      g_free (got);
    }
    g_free (plain);
    g_free (ref);
  }

  /* The second expert must have the first's shape. */
  char *d3 = g_build_filename (tmp, "other", NULL);
  random_wan_dit_size m3 = m;
  m3.layers = 4;
  g_assert_cmpint (g_mkdir (d3, 0700), ==, 0);
  g_assert_true (random_wan_dit_write (d3, &m3, DP_F32, 13, &err));
  run_cfg bad = cfgs[0];
  bad.stages = 2;
  bad.expert2 = d3;
  dp_backend **be = make_backends (2);
  g_assert_null (make_engine (&bad, be, NULL, &err));
  g_assert_error (err, DP_ERROR, DP_ERROR_SHAPE);
  g_assert_nonnull (strstr (err->message, "is not shaped like"));
  g_clear_error (&err);
  free_backends (be, 2);

  random_wan_remove (d1);
  random_wan_remove (d2);
  random_wan_remove (d3);
  g_rmdir (tmp);
  g_free (d1);
  g_free (d2);
  g_free (d3);
  g_free (tmp);
}

/* One block covering the video, C = 0: the classic loop. */
static void
test_classic (void)
{
  static const run_cfg cfgs[] = {
    { .P = 3, .C = 0, .T = 4, .F = 3, .kind = DP_SAMPLER_UNIPC, .batch = 2, .guidance = 5.0, .H = 4, .W = 6, .seed = 11 },
    /* P + C beyond the video: still one block of exactly F frames */
    { .P = 8, .C = 2, .T = 3, .F = 5, .kind = DP_SAMPLER_EULER, .batch = 1, .guidance = 1.0, .H = 2, .W = 4, .seed = 12 },
  };
  for (size_t i = 0; i < G_N_ELEMENTS (cfgs); i++) {
    run_cfg cfg = cfgs[i];
    GError *err = NULL;
    const int ch = 16, H = cfg.H, W = cfg.W;
    const int64_t F = cfg.F;
    dp_backend *be = dp_backend_new ("cpu", &err);
    char *dir = tiny5_dir ();
    dp_wan_dit *dit = dp_wan_dit_load (be, dir, 0, -1, &err);
    g_assert_no_error (err);
    g_free (dir);
    dp_tensor ctx = make_context (cfg.batch);
    g_assert_true (dp_wan_dit_set_context (dit, &ctx, &err));
    dp_schedule *sched = make_schedule (cfg.kind, cfg.T);
    int64_t shape[4] = { ch, F, H, W };
    dp_tensor x = dp_backend_tensor_new (be, DP_F32, 4, shape), v = dp_backend_tensor_new (be, DP_F32, 4, shape);
    dp_rng_latent_noise (cfg.seed, DP_ENGINE_NOISE_STREAM, 0, (int) F, ch, H, W, x.data);
    dp_sampler *s = dp_sampler_new (be, sched, 4, shape, &err);
    for (int i = 0; i < cfg.T; i++) {
      g_assert_true (dp_wan_dit_forward (dit, NULL, &x, (float) dp_sampler_timestep (s, i), (float) cfg.guidance, &v,
                                         &err));
      g_assert_true (dp_sampler_step (s, &x, &v, &err));
    }
    g_assert_no_error (err);
    for (int n = 1; n <= 2; n++) {
      cfg.stages = n;
      float *lat = run_engine (&cfg, NULL, NULL);
      assert_same_latents (lat, x.data, &cfg, "engine with one block vs the classic loop");
      g_free (lat);
    }
    dp_sampler_free (s);
    dp_backend_tensor_free (be, &x);
    dp_backend_tensor_free (be, &v);
    dp_schedule_free (sched);
    dp_tensor_free (&ctx);
    dp_wan_dit_free (dit);
    dp_backend_free (be);
  }
}

/* Streaming decode of each finished block = decoding the finished video. */
static void
test_decode (void)
{
  /* two blocks, the last one padded (4 = 3 + 1 of 2): 13 frames of 32 x 16 */
  run_cfg cfg = { .P = 2, .C = 1, .T = 2, .F = 4, .kind = DP_SAMPLER_UNIPC, .batch = 2, .guidance = 4.0, .vae = TRUE,
                  .H = 2, .W = 4, .seed = 21, .stages = 2 };
  GByteArray *rgb2 = NULL, *rgb1 = NULL;
  float *lat2 = run_engine (&cfg, &rgb2, NULL);
  cfg.stages = 1;
  float *lat1 = run_engine (&cfg, &rgb1, NULL);
  assert_same_latents (lat2, lat1, &cfg, "2 stages vs 1 with a VAE");
  g_assert_cmpmem (rgb2->data, rgb2->len, rgb1->data, rgb1->len);

  GError *err = NULL;
  dp_backend *be = dp_backend_new ("cpu", &err);
  char *dir = vae_dir ();
  dp_wan_vae *vae = dp_wan_vae_load (be, dir, &err);
  g_assert_no_error (err);
  g_free (dir);
  const int64_t nf = dp_wan_vae_num_frames (vae, cfg.F);
  dp_tensor lat = dp_backend_tensor_new (be, DP_F32, 4, (int64_t[]){ 16, cfg.F, cfg.H, cfg.W });
  memcpy (lat.data, lat1, dp_tensor_nbytes (&lat));
  uint8_t *whole = g_malloc ((size_t) nf * cfg.H * 8 * cfg.W * 8 * 3);
  g_assert_true (dp_wan_vae_decode (vae, &lat, whole, NULL, &err));
  g_assert_no_error (err);
  g_assert_cmpmem (rgb1->data, rgb1->len, whole, (size_t) nf * cfg.H * 8 * cfg.W * 8 * 3);
  g_free (whole);
  dp_backend_tensor_free (be, &lat);
  dp_wan_vae_free (vae);
  dp_backend_free (be);
  g_byte_array_unref (rgb1);
  g_byte_array_unref (rgb2);
  g_free (lat1);
  g_free (lat2);
}

/* Decoding on the engine's decode thread gives the same bytes as decoding
 * inline, untiled and tiled, with one and two stages; tiled frames are the
 * tiled decoder's. */
static void
test_decode_thread (void)
{
  /* 13 frames of 32 x 48 (latent 4 x 6), three blocks, the last padded. */
  run_cfg cfg = { .P = 2, .C = 1, .T = 3, .F = 6, .kind = DP_SAMPLER_UNIPC, .batch = 2, .guidance = 4.0, .vae = TRUE,
                  .H = 4, .W = 6, .seed = 5, .stages = 1 };
  for (int tile = 0; tile <= 16; tile += 16)
    for (int stages = 1; stages <= 2; stages++) {
      cfg.stages = stages;
      cfg.vae_tile = tile;
      GByteArray *serial = NULL, *overlapped = NULL;
      cfg.decode_thread = FALSE;
      float *lat_s = run_engine (&cfg, &serial, NULL);
      cfg.decode_thread = TRUE;
      float *lat_o = run_engine (&cfg, &overlapped, NULL);
      assert_same_latents (lat_o, lat_s, &cfg, "decode thread vs inline");
      g_assert_cmpuint (serial->len, ==, (guint) ((1 + 4 * (cfg.F - 1)) * 32 * 48 * 3));
      g_assert_cmpmem (overlapped->data, overlapped->len, serial->data, serial->len);
      if (tile > 0 && stages == 1) {
        /* The engine's tiled frames are the tiled decoder's of its latents. */
        GError *err = NULL;
        dp_backend *be = dp_backend_new ("cpu", &err);
        char *dir = vae_dir ();
        dp_wan_vae *vae = dp_wan_vae_load (be, dir, &err);
        g_assert_no_error (err);
        g_free (dir);
        dp_wan_vae_tiling t;
        dp_wan_vae_tiling_default (tile, 8, &t);
        dp_wan_vae_decoder *dec = dp_wan_vae_decoder_new_tiled (vae, cfg.H, cfg.W, &t, &err);
        g_assert_no_error (err);
        int rows, cols;
        dp_wan_vae_decoder_get_tiles (dec, &rows, &cols);
        g_assert_cmpint (rows * cols, >, 1);
        dp_tensor lat = dp_backend_tensor_new (be, DP_F32, 4, (int64_t[]){ 16, cfg.F, cfg.H, cfg.W });
        memcpy (lat.data, lat_s, dp_tensor_nbytes (&lat));
        const size_t frame = (size_t) 32 * 48 * 3;
        uint8_t *rgb = g_malloc (4 * frame);
        size_t off = 0;
        for (int f = 0; f < cfg.F; f++) {
          int n = 0;
          g_assert_true (dp_wan_vae_decoder_push (dec, &lat, f, rgb, NULL, &n, &err));
          g_assert_cmpmem (rgb, n * frame, serial->data + off, n * frame);
          off += n * frame;
        }
        g_assert_cmpuint (off, ==, serial->len);
        g_free (rgb);
        dp_backend_tensor_free (be, &lat);
        dp_wan_vae_decoder_free (dec);
        dp_wan_vae_free (vae);
        dp_backend_free (be);
      }
      g_byte_array_unref (serial);
      g_byte_array_unref (overlapped);
      g_free (lat_s);
      g_free (lat_o);
    }
}

/* Errors of the decode thread fail the run with their own error: a
 * consumer that stops, a VAE that gives Inf / NaN; and the VAE must not be
 * on stage 0's backend. */
static void
test_decode_thread_errors (void)
{
  GError *err = NULL;
  run_cfg cfg = { .P = 2, .C = 1, .T = 3, .F = 6, .kind = DP_SAMPLER_UNIPC, .batch = 2, .guidance = 4.0, .vae = TRUE,
                  .H = 4, .W = 6, .seed = 5, .stages = 1 };
  dp_backend **be = make_backends (1);
  dp_backend *vae_be = dp_backend_new ("cpu", &err);
  g_assert_no_error (err);
  dp_tensor ctx = make_context (cfg.batch);

  /* The VAE on stage 0's backend is refused. */
  dp_engine *e = make_engine (&cfg, be, NULL, &err);
  g_assert_no_error (err);
  char *dir = vae_dir ();
  dp_wan_vae *vae0 = dp_wan_vae_load (be[0], dir, &err);
  g_assert_no_error (err);
  collect c = { .channels = 16, .H = cfg.H, .W = cfg.W, .F = cfg.F };
  dp_engine_output out = { .frames = on_frames, .user_data = &c, .decode_thread = TRUE };
  g_assert_false (dp_engine_run (e, &ctx, vae0, &out, &err));
  g_assert_error (err, DP_ERROR, DP_ERROR_INVALID);
  g_assert_nonnull (strstr (err->message, "backend of its own"));
  g_clear_error (&err);
  dp_wan_vae_free (vae0);

  /* The consumer stops after the first block's frames. */
  dp_wan_vae *vae = dp_wan_vae_load (vae_be, dir, &err);
  g_assert_no_error (err);
  collect c1 = { .channels = 16, .H = cfg.H, .W = cfg.W, .F = cfg.F, .stop_frames_after = 5 };
  dp_engine_output out1 = { .frames = on_frames, .user_data = &c1, .decode_thread = TRUE };
  g_assert_false (dp_engine_run (e, &ctx, vae, &out1, &err));
  g_assert_error (err, DP_ERROR, DP_ERROR_CANCELLED);
  g_assert_nonnull (strstr (err->message, "consumer"));
  g_clear_error (&err);
  g_assert_cmpint (c1.video_frames, ==, 5);
  dp_engine_stats st;
  dp_engine_get_stats (e, &st);
  g_assert_false (st.running);
  g_assert_cmpint (st.block_bytes, ==, 0);
  dp_wan_vae_free (vae);

  /* A VAE whose latents_std overflows the decoder: DP_ERROR_NUMERIC from
   * the decode thread, named as a decoding error. */
  char *tmp = dp_test_make_tmp_dir ("dp-engine-vae-XXXXXX");
  dp_test_copy_tree (dir, tmp);
  char *cfg_path = g_build_filename (tmp, "config.json", NULL);
  JsonParser *parser = dp_test_parse_json (cfg_path);
  JsonObject *root = json_node_get_object (json_parser_get_root (parser));
  JsonArray *std = json_array_new ();
  for (int i = 0; i < 16; i++)
    json_array_add_double_element (std, 3e38);
  json_object_set_array_member (root, "latents_std", std);
  dp_test_write_json (cfg_path, json_parser_get_root (parser));
  g_object_unref (parser);
  dp_backend *bad_be = dp_backend_new ("cpu", &err);
  g_assert_no_error (err);
  dp_wan_vae *bad = dp_wan_vae_load (bad_be, tmp, &err);
  g_assert_no_error (err);
  collect c2 = { .channels = 16, .H = cfg.H, .W = cfg.W, .F = cfg.F };
  dp_engine_output out2 = { .frames = on_frames, .user_data = &c2, .decode_thread = TRUE };
  g_assert_false (dp_engine_run (e, &ctx, bad, &out2, &err));
  g_assert_error (err, DP_ERROR, DP_ERROR_NUMERIC);
  g_assert_nonnull (strstr (err->message, "decoding block 0"));
  g_test_message ("decode thread error: %s", err->message);
  g_clear_error (&err);
  g_assert_cmpint (c2.video_frames, ==, 0);
  dp_wan_vae_free (bad);
  dp_backend_free (bad_be);
  dp_test_remove_tree (tmp);
  g_free (tmp);
  g_free (cfg_path);

  /* The engine still runs afterwards. */
  vae = dp_wan_vae_load (vae_be, dir, &err);
  g_assert_no_error (err);
  collect c3 = { .channels = 16, .H = cfg.H, .W = cfg.W, .F = cfg.F };
  dp_engine_output out3 = { .frames = on_frames, .user_data = &c3, .decode_thread = TRUE };
  g_assert_true (dp_engine_run (e, &ctx, vae, &out3, &err));
  g_assert_no_error (err);
  g_assert_cmpint (c3.video_frames, ==, 1 + 4 * (cfg.F - 1));
  dp_wan_vae_free (vae);
  g_free (dir);
  dp_engine_free (e);
  dp_tensor_free (&ctx);
  dp_backend_free (vae_be);
  free_backends (be, 1);
}

/* ------------------------------------------------------------ endless */

static void
test_endless (void)
{
  GError *err = NULL;
  const int stages = 2, nblocks = 100;
  run_cfg cfg = { .P = 1, .C = 1, .T = 3, .F = -1, .kind = DP_SAMPLER_UNIPC, .batch = 2, .guidance = 5.0, .H = 4,
                  .W = 4, .seed = 4, .stages = stages };
  dp_backend **be = make_backends (stages);
  dp_engine *e = make_engine (&cfg, be, NULL, &err);
  g_assert_no_error (err);
  collect c = { .channels = 16, .H = cfg.H, .W = cfg.W, .F = -1, .stop_after = nblocks, .engine = e };
  dp_tensor ctx = make_context (cfg.batch);
  dp_engine_output out = { .block_latent = on_latent, .user_data = &c };
  g_assert_false (dp_engine_run (e, &ctx, NULL, &out, &err));
  g_assert_error (err, DP_ERROR, DP_ERROR_CANCELLED); /* the consumer stopped it */
  g_clear_error (&err);
  g_assert_cmpint (c.blocks, ==, nblocks);
  /* What the run holds after 20 blocks and after 100: the same. */
  const dp_engine_stats *a = &c.at_block[19], *b = &c.at_block[nblocks - 1];
  g_assert_cmpint (a->block_bytes, >, 0);
  g_assert_cmpint (a->block_bytes, ==, b->block_bytes);
  for (int r = 0; r < stages; r++) {
    g_assert_cmpint (a->stage[r].cache_bytes, >, 0);
    g_assert_cmpint (a->stage[r].cache_bytes, ==, b->stage[r].cache_bytes);
    g_assert_cmpint (a->stage[r].buffer_bytes, ==, b->stage[r].buffer_bytes);
    g_assert_cmpint (a->stage[r].model_bytes, ==, b->stage[r].model_bytes);
  }
  g_assert_cmpint (b->max_blocks_in_flight, ==, cfg.T);
  /* Process memory between block 20 and block 100.  The heap in use must
   * not grow by more than 16 KiB over those 80 blocks: a leak of 1 KiB per
   * block (80 KiB) or even 256 bytes (20 KiB) fails; what the run holds does
   * not depend on the block (everything is allocated at the start), so the
   * figure measured is 0 give or take a few small GLib allocations.  The RSS
   * is printed too: it moves by pages. */
  const gssize grown = (gssize) c.rss_at_block[nblocks - 1] - (gssize) c.rss_at_block[19];
  const gssize heap_grown = (gssize) c.heap_at_block[nblocks - 1] - (gssize) c.heap_at_block[19];
  g_test_message ("endless: heap in use %+zd bytes and RSS %+zd KiB from block 20 to %d (RSS %zu KiB); held by "
                  "the run: %zu bytes on stage 0 + %zu / %zu cache bytes",
                  heap_grown, grown / 1024, nblocks, c.rss_at_block[nblocks - 1] / 1024, b->block_bytes,
                  b->stage[0].cache_bytes, b->stage[1].cache_bytes);
#if defined(__SANITIZE_ADDRESS__)
  /* ASan replaces malloc (mallinfo2 sees nothing) and its quarantine keeps
   * freed blocks resident; LeakSanitizer checks leaks at exit there. */
  g_test_message ("endless: heap not checked under AddressSanitizer");
#else
  g_assert_cmpint (heap_grown, <, 16 * 1024);
#endif
  dp_engine_stats after;
  dp_engine_get_stats (e, &after);
  g_assert_cmpint (after.block_bytes, ==, 0);
  dp_tensor_free (&ctx);
  dp_engine_free (e);
  free_backends (be, stages);
}

/* ------------------------------------------------------------ cancel */

typedef struct {
  dp_engine *e;
  gint *flag; /* set this atomic flag instead of calling dp_engine_cancel */
  gint64 cancel_time;
} canceller;

static gpointer
cancel_thread (gpointer data)
{
  canceller *k = data;
  dp_engine_stats st;
  do {
    g_usleep (1000);
    dp_engine_get_stats (k->e, &st);
  } while (st.blocks_done < 3);
  k->cancel_time = g_get_monotonic_time ();
  if (k->flag)
    g_atomic_int_set (k->flag, 1);
  else
    dp_engine_cancel (k->e);
  return NULL;
}

static void
test_cancel (void)
{
  GError *err = NULL;
  for (int stages = 1; stages <= 3; stages += 2) {
    run_cfg cfg = { .P = 2, .C = 1, .T = 4, .F = -1, .kind = DP_SAMPLER_UNIPC, .batch = 2, .guidance = 5.0, .H = 4,
                    .W = 6, .seed = 9, .stages = stages };
    dp_backend **be = make_backends (stages);
    dp_engine *e = make_engine (&cfg, be, NULL, &err);
    g_assert_no_error (err);
    dp_tensor ctx = make_context (cfg.batch);
    collect c = { .channels = 16, .H = cfg.H, .W = cfg.W, .F = -1 };
    /* 1 stage: dp_engine_cancel; 3 stages: the output's cancel flag */
    gint flag = 0;
    dp_engine_output out = { .block_latent = on_latent, .user_data = &c, .cancel = stages > 1 ? &flag : NULL };
    canceller k = { e, stages > 1 ? &flag : NULL, 0 };
    GThread *th = g_thread_new ("canceller", cancel_thread, &k);
    g_assert_false (dp_engine_run (e, &ctx, NULL, &out, &err));
    const gint64 returned = g_get_monotonic_time ();
    g_thread_join (th);
    g_assert_error (err, DP_ERROR, DP_ERROR_CANCELLED);
    g_clear_error (&err);
    dp_engine_stats st;
    dp_engine_get_stats (e, &st);
    const double latency = (returned - k.cancel_time) / 1e6;
    /* One pass of this model takes well under a millisecond; a second is
     * generous for a loaded machine, and far from "ran on". */
    const double per_pass = st.stage[0].busy_seconds / MAX (st.stage[0].passes, 1);
    g_test_message ("cancel with %d stages: returned %.2f ms after the request (%.3f ms per pass on stage 0)",
                    stages, latency * 1e3, per_pass * 1e3);
    g_assert_cmpfloat (latency, <, 1.0);
    g_assert_false (st.running);
    g_assert_cmpint (st.block_bytes, ==, 0);
    for (int r = 0; r < stages; r++)
      g_assert_cmpint (st.stage[r].cache_bytes + st.stage[r].buffer_bytes, ==, 0);

    /* The engine runs again after a cancel (a finite video now). */
    dp_engine_free (e);
    cfg.F = 7;
    e = make_engine (&cfg, be, NULL, &err);
    g_assert_no_error (err);
    collect c2 = { .channels = 16, .H = cfg.H, .W = cfg.W, .F = cfg.F };
    c2.latents = g_new0 (float, (size_t) 16 * cfg.F * cfg.H * cfg.W);
    dp_engine_output out2 = { .block_latent = on_latent, .user_data = &c2 };
    /* A cancel before the run does not leak into it... */
    dp_engine_cancel (e);
    g_assert_true (dp_engine_run (e, &ctx, NULL, &out2, &err));
    g_assert_no_error (err);
    g_assert_cmpint (c2.next_frame, ==, cfg.F);
    /* ...and a second run gives the same latents. */
    collect c3 = c2;
    c3.latents = g_new0 (float, (size_t) 16 * cfg.F * cfg.H * cfg.W);
    c3.next_frame = c3.blocks = 0;
    dp_engine_output out3 = { .block_latent = on_latent, .user_data = &c3 };
    g_assert_true (dp_engine_run (e, &ctx, NULL, &out3, &err));
    assert_same_latents (c3.latents, c2.latents, &cfg, "second run");
    g_free (c2.latents);
    g_free (c3.latents);
    dp_tensor_free (&ctx);
    dp_engine_free (e);
    free_backends (be, stages);
  }
}

/* An endless run decoding on the decode thread, cancelled from another
 * thread once blocks are done (the decode queue is then usually full:
 * decoding is slower than denoising here): CANCELLED, promptly, nothing
 * left allocated, and the engine runs again. */
static void
test_cancel_decode_thread (void)
{
  GError *err = NULL;
  run_cfg cfg = { .P = 2, .C = 1, .T = 2, .F = -1, .kind = DP_SAMPLER_UNIPC, .batch = 2, .guidance = 5.0, .H = 4,
                  .W = 6, .seed = 9, .stages = 1 };
  dp_backend **be = make_backends (1);
  dp_backend *vae_be = dp_backend_new ("cpu", &err);
  g_assert_no_error (err);
  char *dir = vae_dir ();
  dp_wan_vae *vae = dp_wan_vae_load (vae_be, dir, &err);
  g_assert_no_error (err);
  g_free (dir);
  dp_engine *e = make_engine (&cfg, be, NULL, &err);
  g_assert_no_error (err);
  dp_tensor ctx = make_context (cfg.batch);
  for (int use_flag = 0; use_flag < 2; use_flag++) {
    collect c = { .channels = 16, .H = cfg.H, .W = cfg.W, .F = -1 };
    gint flag = 0;
    dp_engine_output out = { .frames = on_frames, .user_data = &c, .decode_thread = TRUE,
                             .cancel = use_flag ? &flag : NULL };
    canceller k = { e, use_flag ? &flag : NULL, 0 };
    GThread *th = g_thread_new ("canceller", cancel_thread, &k);
    g_assert_false (dp_engine_run (e, &ctx, vae, &out, &err));
    const gint64 returned = g_get_monotonic_time ();
    g_thread_join (th);
    g_assert_error (err, DP_ERROR, DP_ERROR_CANCELLED);
    g_clear_error (&err);
    g_test_message ("cancel with the decode thread (%s): returned %.1f ms after the request, %" G_GINT64_FORMAT
                    " frames decoded", use_flag ? "flag" : "dp_engine_cancel", (returned - k.cancel_time) / 1e3,
                    c.video_frames);
    g_assert_cmpint (c.video_frames, >=, 1 + 4 * 2 * 2);
    dp_engine_stats st;
    dp_engine_get_stats (e, &st);
    g_assert_false (st.running);
    g_assert_cmpint (st.block_bytes, ==, 0);
    /* At most one block's decode (2 latent frames here) after the request. */
    g_assert_cmpfloat ((returned - k.cancel_time) / 1e6, <, 5.0);
  }
  /* Runs again to the end. */
  dp_engine_free (e);
  cfg.F = 5;
  e = make_engine (&cfg, be, NULL, &err);
  g_assert_no_error (err);
  collect c = { .channels = 16, .H = cfg.H, .W = cfg.W, .F = cfg.F };
  dp_engine_output out = { .frames = on_frames, .user_data = &c, .decode_thread = TRUE };
  g_assert_true (dp_engine_run (e, &ctx, vae, &out, &err));
  g_assert_no_error (err);
  g_assert_cmpint (c.video_frames, ==, 1 + 4 * (cfg.F - 1));
  dp_tensor_free (&ctx);
  dp_engine_free (e);
  dp_wan_vae_free (vae);
  dp_backend_free (vae_be);
  free_backends (be, 1);
}

/* ------------------------------------------------------------ statistics */

static void
test_stats (void)
{
  run_cfg cfg = { .P = 2, .C = 1, .T = 6, .F = 21, .kind = DP_SAMPLER_UNIPC, .batch = 2, .guidance = 5.0, .H = 8,
                  .W = 12, .seed = 2, .stages = 2 };
  dp_engine_stats st;
  gint64 t0 = g_get_monotonic_time ();
  float *lat = run_engine (&cfg, NULL, &st);
  g_free (lat);
  const int64_t passes = st.stage[0].passes;
  const double hidden = (double) cfg.batch * 3 * (cfg.H / 2) * (cfg.W / 2) * 24 * sizeof (float);
  g_test_message ("2 stages, %" G_GINT64_FORMAT " passes in %.3f s (wall %.3f s), first block after %.3f s",
                  passes, st.run_seconds, (g_get_monotonic_time () - t0) / 1e6, st.first_frame_seconds);
  for (int r = 0; r < 2; r++)
    g_test_message ("  stage %d (layers %d..%d): busy %.3f s, idle %.3f s, sent %" G_GUINT64_FORMAT
                    " B, received %" G_GUINT64_FORMAT " B",
                    r, st.stage[r].layer_begin, st.stage[r].layer_end, st.stage[r].busy_seconds,
                    st.stage[r].idle_seconds, st.stage[r].bytes_sent, st.stage[r].bytes_received);
  g_assert_cmpint (st.stage[0].layer_end, ==, 3);
  g_assert_cmpint (st.stage[1].layer_begin, ==, 3);
  g_assert_cmpfloat (st.stage[0].busy_seconds, >, 0);
  g_assert_cmpfloat (st.stage[1].busy_seconds, >, 0);
  g_assert_cmpfloat (st.first_frame_seconds, >, 0);
  g_assert_cmpfloat (st.first_frame_seconds, <=, st.run_seconds);
  /* Every window is 3 frames: stage 0 sends one hidden state per pass;
   * stage 1 sends a prediction of the block's own frames per pass. */
  g_assert_cmpfloat ((double) st.stage[0].bytes_sent, ==, passes * hidden);
  g_assert_cmpint (st.stage[1].bytes_received, ==, st.stage[0].bytes_sent);
  g_assert_cmpint (st.stage[0].bytes_received, ==, st.stage[1].bytes_sent);
  g_assert_cmpint (st.max_blocks_in_flight, ==, cfg.T);
  g_assert_cmpint (st.latent_frames_done, ==, cfg.F);
}

/* ------------------------------------------------------------ errors */

static void
test_errors (void)
{
  GError *err = NULL;
  dp_backend **be = make_backends (2);
  run_cfg good = { .P = 2, .C = 1, .T = 3, .F = 8, .kind = DP_SAMPLER_UNIPC, .batch = 1, .guidance = 1.0, .H = 4,
                   .W = 4, .seed = 1, .stages = 2 };
  run_cfg c = good;
  c.C = 3; /* C > P */
  g_assert_null (make_engine (&c, be, NULL, &err));
  g_assert_error (err, DP_ERROR, DP_ERROR_INVALID);
  g_clear_error (&err);
  c = good;
  c.H = 3; /* not a multiple of the patch */
  g_assert_null (make_engine (&c, be, NULL, &err));
  g_assert_error (err, DP_ERROR, DP_ERROR_INVALID);
  g_clear_error (&err);
  c = good;
  c.P = 50;
  c.C = 10; /* window 60 + 10 cached > rope_max_seq_len 64 */
  c.F = 200;
  g_assert_null (make_engine (&c, be, NULL, &err));
  g_assert_error (err, DP_ERROR, DP_ERROR_INVALID);
  g_assert_nonnull (strstr (err->message, "RoPE"));
  g_clear_error (&err);

  /* One backend for two stages. */
  dp_backend *same[2] = { be[0], be[0] };
  dp_schedule *sched = make_schedule (DP_SAMPLER_UNIPC, 3);
  dp_engine_params p = { .block_frames = 2, .context_frames = 1, .latent_frames = 8, .latent_height = 4,
                         .latent_width = 4, .schedule = sched, .guidance = 1.0 };
  char *dir = tiny5_dir ();
  g_assert_null (dp_engine_new (dir, same, 2, NULL, &p, &err));
  g_assert_error (err, DP_ERROR, DP_ERROR_INVALID);
  g_clear_error (&err);
  /* A model predicting other channels than it takes (tiny_b: 8 -> 12). */
  char *tiny_b = g_build_filename (g_getenv ("DP_TEST_DATA"), "dit", "tiny_b", "transformer", NULL);
  g_assert_null (dp_engine_new (tiny_b, be, 2, NULL, &p, &err));
  g_assert_error (err, DP_ERROR, DP_ERROR_UNSUPPORTED);
  g_clear_error (&err);
  g_free (tiny_b);
  /* A missing model. */
  g_assert_null (dp_engine_new ("/nonexistent/transformer", be, 2, NULL, &p, &err));
  g_assert_nonnull (err);
  g_clear_error (&err);
  /* A transport for another stage count. */
  dp_transport *t3 = dp_transport_new_inproc (3, &err);
  g_assert_null (dp_engine_new (dir, be, 2, t3, &p, &err));
  g_assert_error (err, DP_ERROR, DP_ERROR_INVALID);
  g_clear_error (&err);
  dp_transport_free (t3);

  /* A context of the wrong shape fails the run on every stage, cleanly. */
  dp_engine *e = dp_engine_new (dir, be, 2, NULL, &p, &err);
  g_assert_no_error (err);
  dp_tensor bad = dp_tensor_new_host (DP_F32, 3, (int64_t[]){ 1, TEXT_LEN, 17 });
  g_assert_false (dp_engine_run (e, &bad, NULL, NULL, &err));
  g_assert_error (err, DP_ERROR, DP_ERROR_SHAPE);
  g_clear_error (&err);
  dp_engine_stats st;
  dp_engine_get_stats (e, &st);
  g_assert_cmpint (st.block_bytes, ==, 0);
  /* and the engine still works afterwards */
  dp_tensor ctx = make_context (1);
  g_assert_true (dp_engine_run (e, &ctx, NULL, NULL, &err));
  g_assert_no_error (err);
  dp_tensor_free (&ctx);
  dp_tensor_free (&bad);
  dp_engine_free (e);
  g_free (dir);
  dp_schedule_free (sched);
  free_backends (be, 2);
}

/* ------------------------------------------------------------ transport */

typedef struct {
  dp_transport *t;
  int count;
  gboolean ok;
} sender;

static gpointer
send_thread (gpointer data)
{
  sender *s = data;
  float buf[2][8];
  dp_transport_req *req[2] = { NULL, NULL };
  for (int i = 0; i < s->count; i++) {
    const int k = i & 1;
    if (req[k] && !dp_transport_wait (s->t, req[k], NULL))
      return NULL;
    for (int j = 0; j < 8; j++)
      buf[k][j] = (float) (i * 8 + j);
    dp_tensor v = dp_tensor_view (buf[k], DP_F32, 1, (int64_t[]){ 8 });
    req[k] = dp_transport_isend (s->t, 0, 1, &v, NULL);
    if (!req[k])
      return NULL;
  }
  for (int k = 0; k < 2; k++)
    if (req[k] && !dp_transport_wait (s->t, req[k], NULL))
      return NULL;
  s->ok = TRUE;
  return NULL;
}

static gpointer
wait_cancelled_thread (gpointer data)
{
  sender *s = data;
  float buf[4];
  dp_tensor v = dp_tensor_view (buf, DP_F32, 1, (int64_t[]){ 4 });
  GError *err = NULL;
  dp_transport_req *r = dp_transport_irecv (s->t, 1, 0, &v, &err);
  s->ok = r && !dp_transport_wait (s->t, r, &err) && g_error_matches (err, DP_ERROR, DP_ERROR_CANCELLED);
  g_clear_error (&err);
  return NULL;
}

static void
test_transport (void)
{
  GError *err = NULL;
  dp_transport *t = dp_transport_new_inproc (2, &err);
  g_assert_no_error (err);

  /* Order and content, with the receiver sometimes first, sometimes last. */
  sender s = { t, 200, FALSE };
  GThread *th = g_thread_new ("sender", send_thread, &s);
  float got[8];
  dp_tensor v = dp_tensor_view (got, DP_F32, 1, (int64_t[]){ 8 });
  for (int i = 0; i < 200; i++) {
    if (i % 17 == 0)
      g_usleep (500);
    dp_transport_req *r = dp_transport_irecv (t, 1, 0, &v, &err);
    g_assert_nonnull (r);
    g_assert_true (dp_transport_wait (t, r, &err));
    g_assert_no_error (err);
    for (int j = 0; j < 8; j++)
      g_assert_cmpfloat (got[j], ==, (float) (i * 8 + j));
  }
  g_thread_join (th);
  g_assert_true (s.ok);
  uint64_t sent, received;
  dp_transport_bytes (t, 0, &sent, &received);
  g_assert_cmpint (sent, ==, 200 * 8 * sizeof (float));
  g_assert_cmpint (received, ==, 0);
  dp_transport_bytes (t, 1, &sent, &received);
  g_assert_cmpint (received, ==, 200 * 8 * sizeof (float));

  /* Sizes that do not match fail both sides. */
  float small[4];
  dp_tensor vs = dp_tensor_view (small, DP_F32, 1, (int64_t[]){ 4 });
  dp_transport_req *rr = dp_transport_irecv (t, 1, 0, &vs, &err);
  dp_transport_req *sr = dp_transport_isend (t, 0, 1, &v, &err);
  g_assert_false (dp_transport_wait (t, sr, &err));
  g_assert_error (err, DP_ERROR, DP_ERROR_SHAPE);
  g_clear_error (&err);
  g_assert_false (dp_transport_wait (t, rr, &err));
  g_assert_error (err, DP_ERROR, DP_ERROR_SHAPE);
  g_clear_error (&err);

  /* Bad stages. */
  g_assert_null (dp_transport_isend (t, 0, 0, &v, &err));
  g_assert_error (err, DP_ERROR, DP_ERROR_INVALID);
  g_clear_error (&err);
  g_assert_null (dp_transport_irecv (t, 2, 0, &v, &err));
  g_assert_error (err, DP_ERROR, DP_ERROR_INVALID);
  g_clear_error (&err);

  /* The request pool is bounded. */
  dp_transport_req *pending[DP_TRANSPORT_MAX_PENDING];
  for (int i = 0; i < DP_TRANSPORT_MAX_PENDING; i++) {
    pending[i] = dp_transport_irecv (t, 1, 0, &v, &err);
    g_assert_nonnull (pending[i]);
  }
  g_assert_null (dp_transport_irecv (t, 1, 0, &v, &err));
  g_assert_error (err, DP_ERROR, DP_ERROR_INVALID);
  g_clear_error (&err);
  dp_transport_reset (t);

  /* A waiter is woken by a cancel from another thread. */
  s.ok = FALSE;
  th = g_thread_new ("waiter", wait_cancelled_thread, &s);
  g_usleep (20000);
  dp_transport_cancel (t);
  g_thread_join (th);
  g_assert_true (s.ok);
  /* After a cancel nothing new is accepted until a reset. */
  g_assert_null (dp_transport_isend (t, 0, 1, &v, &err));
  g_assert_error (err, DP_ERROR, DP_ERROR_CANCELLED);
  g_clear_error (&err);
  dp_transport_reset (t);
  sr = dp_transport_isend (t, 0, 1, &v, &err);
  rr = dp_transport_irecv (t, 1, 0, &v, &err);
  g_assert_true (dp_transport_wait (t, rr, &err));
  g_assert_true (dp_transport_wait (t, sr, &err));
  g_assert_no_error (err);
  dp_transport_free (t);
}

/* ------------------------------------------------------------ generator */

typedef struct {
  GByteArray *rgb;
  int64_t frames, stop_at;
  guint frame_bytes; /* 0: tiny-wan's 48 x 32 RGB */
} frame_sink;

static gboolean
sink_frames (const uint8_t *rgb, int n_frames, int64_t first_frame, const dp_progress *progress, void *data)
{
  frame_sink *s = data;
  g_assert_cmpint (first_frame, ==, s->frames);
  g_byte_array_append (s->rgb, rgb, (guint) n_frames * (s->frame_bytes ? s->frame_bytes : 48 * 32 * 3));
  s->frames += n_frames;
  g_assert_cmpint (progress->frames_done, ==, s->frames);
  return s->stop_at == 0 || s->frames < s->stop_at;
}

/* model: a model folder under tests/data ("pipeline/tiny-wan"); guidance_2 0: not given. */
static GByteArray *
generate_model (const char *model, double guidance_2, dp_engine_kind engine, const char *devices, int P, int C,
                int num_frames, int64_t stop_at, GError **error)
{
  dp_generator_params p;
  dp_generator_params_init (&p);
  char *dir = g_build_filename (g_getenv ("DP_TEST_DATA"), model, NULL);
  p.guidance_scale_2 = guidance_2;
  p.model_dir = dir;
  p.prompt = "a red circle moves to the left";
  p.negative_prompt = "static";
  p.num_frames = num_frames;
  p.steps = 3;
  p.engine = engine;
  p.devices = devices;
  p.block_frames = P;
  p.context_frames = C;
  dp_generator *gen = dp_generator_new (&p, error);
  g_free (dir);
  if (!gen)
    return NULL;
  int W, H;
  dp_generator_get_size (gen, &W, &H);
  frame_sink s = { g_byte_array_new (), 0, stop_at, (guint) (W * H * 3) };
  gboolean ok = dp_generator_run (gen, sink_frames, &s, error);
  if (ok)
    g_assert_cmpint (s.frames, ==, dp_generator_num_frames (gen));
  dp_generator_free (gen);
  if (!ok && !(stop_at && g_error_matches (*error, DP_ERROR, DP_ERROR_CANCELLED))) {
    g_byte_array_unref (s.rgb);
    return NULL;
  }
  return s.rgb;
}

static GByteArray *
generate (dp_engine_kind engine, const char *devices, int P, int C, int num_frames, int64_t stop_at,
          GError **error)
{
  return generate_model ("pipeline/tiny-wan", 0.0, engine, devices, P, C, num_frames, stop_at, error);
}

/* A Wan2.2 model on the CPU, guidance_2 g2 (0: guidance's): 9 frames (one
 * block) are the classic pipeline's on 1 and 2 stages; blocks_frames frames
 * in blocks of P 2 + C 1 give the same frames on 1 and 2 stages.  Returns
 * the classic frames and the 1-stage blocks' (the caller unrefs them). */
static void
check_stages_agree (const char *m, double g2, int blocks_frames, GByteArray **classic_out,
                    GByteArray **blocks_out)
{
  GError *err = NULL;
  GByteArray *classic = generate_model (m, g2, DP_ENGINE_CLASSIC, "cpu", 0, 0, 9, 0, &err);
  g_assert_no_error (err);
  GByteArray *one = generate_model (m, g2, DP_ENGINE_DUALPARAL, "cpu", 0, 0, 9, 0, &err);
  g_assert_no_error (err);
  GByteArray *two = generate_model (m, g2, DP_ENGINE_DUALPARAL, "cpu,cpu", 0, 0, 9, 0, &err);
  g_assert_no_error (err);
  g_assert_cmpmem (one->data, one->len, classic->data, classic->len);
  g_assert_cmpmem (two->data, two->len, classic->data, classic->len);
  GByteArray *blocks1 = generate_model (m, g2, DP_ENGINE_DUALPARAL, "cpu", 2, 1, blocks_frames, 0, &err);
  g_assert_no_error (err);
  GByteArray *blocks2 = generate_model (m, g2, DP_ENGINE_DUALPARAL, "cpu,cpu", 2, 1, blocks_frames, 0, &err);
  g_assert_no_error (err);
  g_assert_cmpmem (blocks2->data, blocks2->len, blocks1->data, blocks1->len);
  g_byte_array_unref (one);
  g_byte_array_unref (two);
  g_byte_array_unref (blocks2);
  *classic_out = classic;
  *blocks_out = blocks1;
}

/* The Wan2.2 two-expert model (tests/data/wan22/tiny-wan22, boundary 900: 3
 * UniPC steps at 999, 857, 600 run transformer/ once, then transformer_2/ twice):
 * one block is the classic pipeline (which test_pipeline holds against
 * diffusers), on 1 and 2 stages; several blocks, whose passes in flight mix
 * the experts, give the same frames on 1 and 2 stages (the model has 2 layers;
 * /engine/experts runs 3 stages on 5-layer experts). */
static void
test_generator_wan22 (void)
{
  GError *err = NULL;
  const char *m = "wan22/tiny-wan22";
  GByteArray *classic, *blocks;
  check_stages_agree (m, 3.0, 17, &classic, &blocks);
  /* guidance_2 matters. */
  GByteArray *g5 = generate_model (m, 0.0, DP_ENGINE_CLASSIC, "cpu", 0, 0, 9, 0, &err);
  g_assert_no_error (err);
  g_assert_true (g5->len == classic->len && memcmp (g5->data, classic->data, g5->len) != 0);
  for (GByteArray **a = (GByteArray *[]){ classic, g5, blocks, NULL }; *a; a++)
    g_byte_array_unref (*a);
}

/* Wan2.2 TI2V-5B (per-token timesteps) on tiny5: 1, 2 and 3 stages give
 * bitwise the latents of the plain scheme with the context frames at their
 * own noise level (the previous block's next step, 0 once it is clean);
 * that rule changes the result (the test can fail); with one block (no
 * context) it changes nothing. */
static void
test_per_token (void)
{
  static const run_cfg cfgs[] = {
    { .P = 2, .C = 1, .T = 3, .F = 8, .kind = DP_SAMPLER_UNIPC, .batch = 2, .guidance = 5.0, .H = 4, .W = 6,
      .seed = 3, .per_token = TRUE },
    { .P = 1, .C = 1, .T = 2, .F = 7, .kind = DP_SAMPLER_EULER, .batch = 1, .guidance = 1.0, .H = 2, .W = 4,
      .seed = 5, .per_token = TRUE },
  };
  for (size_t i = 0; i < G_N_ELEMENTS (cfgs); i++) {
    run_cfg cfg = cfgs[i];
    const size_t n = (size_t) 16 * cfg.F * cfg.H * cfg.W;
    float *seq = run_sequential (&cfg);
    GByteArray *rgb1 = NULL;
    cfg.stages = 1;
    cfg.vae = TRUE; /* frames too */
    float *one = run_engine (&cfg, &rgb1, NULL);
    assert_same_latents (one, seq, &cfg, "per-token: 1 stage vs the sequential scheme");
    for (int s = 2; s <= 3; s++) {
      GByteArray *rgb = NULL;
      cfg.stages = s;
      float *many = run_engine (&cfg, &rgb, NULL);
      assert_same_latents (many, one, &cfg, s == 2 ? "per-token: 2 stages vs 1" : "per-token: 3 stages vs 1");
      g_assert_cmpmem (rgb->data, rgb->len, rgb1->data, rgb1->len);
      g_byte_array_unref (rgb);
      g_free (many);
    }
    g_assert_cmpint (rgb1->len, ==, (guint) (1 + 4 * (cfg.F - 1)) * (cfg.H * 8) * (cfg.W * 8) * 3);
    g_byte_array_unref (rgb1);
    cfg.vae = FALSE;
    run_cfg scalar = cfg;
    scalar.per_token = FALSE;
    float *plain = run_engine (&scalar, NULL, NULL);
    g_assert_true (memcmp (plain, one, n * sizeof (float)) != 0);
    g_free (plain);
    g_free (one);
    g_free (seq);
  }
  /* One block (F <= P + C): nothing to differ. */
  run_cfg single = { .stages = 2, .P = 3, .C = 1, .T = 3, .F = 4, .kind = DP_SAMPLER_UNIPC, .batch = 2,
                     .guidance = 5.0, .H = 4, .W = 6, .seed = 7, .per_token = TRUE };
  float *a = run_engine (&single, NULL, NULL);
  single.per_token = FALSE;
  float *b = run_engine (&single, NULL, NULL);
  assert_same_latents (a, b, &single, "per-token, one block vs scalar");
  g_free (a);
  g_free (b);
}

/* The TI2V model (tests/data/ti2v/tiny-ti2v, 48 channels, Wan2.2 VAE):
 * one block is the classic pipeline (held against diffusers by
 * test_pipeline) on 1 and 2 stages; several blocks give the same frames on
 * 1 and 2 stages. */
static void
test_generator_ti2v (void)
{
  GByteArray *classic, *blocks;
  check_stages_agree ("ti2v/tiny-ti2v", 0.0, 21, &classic, &blocks);
  g_assert_cmpint (classic->len, ==, 9 * 64 * 64 * 3);
  g_assert_cmpint (blocks->len, ==, 21 * 64 * 64 * 3);
  g_byte_array_unref (classic);
  g_byte_array_unref (blocks);
}

static void
test_generator (void)
{
  GError *err = NULL;
  /* 9 frames = 3 latent frames: one block with the default P 10 (C 5). */
  GByteArray *classic = generate (DP_ENGINE_CLASSIC, "cpu", 0, 0, 9, 0, &err);
  g_assert_no_error (err);
  GByteArray *one = generate (DP_ENGINE_DUALPARAL, "cpu", 0, 0, 9, 0, &err);
  g_assert_no_error (err);
  GByteArray *two = generate (DP_ENGINE_DUALPARAL, "cpu,cpu", 0, 0, 9, 0, &err);
  g_assert_no_error (err);
  g_assert_cmpmem (one->data, one->len, classic->data, classic->len);
  g_assert_cmpmem (two->data, two->len, classic->data, classic->len);
  /* 17 frames = 5 latent frames in blocks of 2 + 1 context: [0, 3), [3, 5). */
  GByteArray *blocks1 = generate (DP_ENGINE_DUALPARAL, "cpu", 2, 1, 17, 0, &err);
  g_assert_no_error (err);
  GByteArray *blocks2 = generate (DP_ENGINE_DUALPARAL, "cpu,cpu", 2, 1, 17, 0, &err);
  g_assert_no_error (err);
  g_assert_cmpmem (blocks2->data, blocks2->len, blocks1->data, blocks1->len);
  /* More stages than the model's 2 layers: refused, not run with idle stages. */
  g_assert_null (generate (DP_ENGINE_DUALPARAL, "cpu,cpu,cpu", 2, 1, 17, 0, &err));
  g_assert_error (err, DP_ERROR, DP_ERROR_INVALID);
  g_assert_nonnull (strstr (err->message, "3 stages for a transformer of 2 layers"));
  g_clear_error (&err);
  /* Endless: stopped by the consumer after 25 frames. */
  GByteArray *endless = generate (DP_ENGINE_DUALPARAL, "cpu,cpu", 1, 1, -1, 25, &err);
  g_assert_error (err, DP_ERROR, DP_ERROR_CANCELLED);
  g_clear_error (&err);
  g_assert_cmpint (endless->len, >=, 25 * 48 * 32 * 3);
  /* Settings the engine refuses. */
  g_assert_null (generate (DP_ENGINE_DUALPARAL, "cpu", 2, 3, 17, 0, &err));
  g_assert_error (err, DP_ERROR, DP_ERROR_INVALID);
  g_clear_error (&err);
  for (GByteArray **a = (GByteArray *[]){ classic, one, two, blocks1, blocks2, endless, NULL }; *a; a++)
    g_byte_array_unref (*a);
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/engine/split", test_split);
  g_test_add_func ("/engine/schedule/reference", test_schedule_reference);
  g_test_add_func ("/engine/schedule/dependencies", test_schedule_dependencies);
  g_test_add_func ("/engine/schedule/blocks", test_schedule_blocks);
  g_test_add_func ("/engine/noise", test_noise);
  g_test_add_func ("/engine/transport", test_transport);
  g_test_add_func ("/engine/stages", test_stages);
  g_test_add_func ("/engine/conds", test_conds);
  g_test_add_func ("/engine/experts", test_experts);
  g_test_add_func ("/engine/classic", test_classic);
  g_test_add_func ("/engine/decode", test_decode);
  g_test_add_func ("/engine/decode_thread", test_decode_thread);
  g_test_add_func ("/engine/decode_thread/errors", test_decode_thread_errors);
  g_test_add_func ("/engine/stats", test_stats);
  g_test_add_func ("/engine/endless", test_endless);
  g_test_add_func ("/engine/cancel", test_cancel);
  g_test_add_func ("/engine/cancel/decode_thread", test_cancel_decode_thread);
  g_test_add_func ("/engine/errors", test_errors);
  g_test_add_func ("/engine/generator", test_generator);
  g_test_add_func ("/engine/generator/wan22", test_generator_wan22);
  g_test_add_func ("/engine/per-token", test_per_token);
  g_test_add_func ("/engine/generator/ti2v", test_generator_ti2v);
  return g_test_run ();
}
