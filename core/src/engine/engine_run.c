/* DualParal engine: stage 0's loop, on the thread that called
 * dp_engine_run().
 *
 * Stage 0 owns the blocks: their latents and samplers (a ring of
 * min (T, B) + 1 slots: the queue plus the finished block the head still
 * takes its context from), the coordinated noise, the streaming VAE
 * decoder.  For each pass in schedule order it
 *   1. applies the predictions the pass depends on (its own block's and the
 *      previous block's steps of the previous iteration), and enough others
 *      that at most N + 1 passes are in flight;
 *   2. embeds the window [last C frames of the previous block | own frames]
 *      and runs its layers, then sends the hidden states to stage 1 (or, on
 *      a one-stage engine, runs the head and steps the sampler at once).
 * Predictions come back from the last stage in pass order; applying one
 * steps that block's sampler, and a block whose last step it was is
 * decoded and delivered at once.  Because a pass is embedded only after
 * the steps it depends on, and no later step of those blocks can be applied
 * before it (they come after it in pass order), every stage count computes
 * the same numbers as one stage. */
#include "engine/engine_private.h"

#include <string.h>

typedef struct {
  int64_t block; /* -1: free */
  int frames;
  dp_tensor latent; /* [channels, frames, H, W] F32, stage 0's backend */
  dp_sampler *sampler;
} block_slot;

typedef struct driver driver;

/* A finished block for the decode thread: its kept latent frames, host F32
 * [channels, kept, H, W], in a buffer of max frames allocated with the
 * worker. */
typedef struct {
  int64_t block;
  int kept;
  float *latent;
} decode_job;

/* Jobs in all: DP_ENGINE_DECODE_QUEUE waiting and one being decoded. */
#define DECODE_JOBS (DP_ENGINE_DECODE_QUEUE + 1)

/* The decode thread (dp_engine_output.decode_thread): it owns the decoder,
 * the RGB buffer and the VAE's backend for the whole run; stage 0's thread
 * only queues finished blocks. */
typedef struct {
  driver *d;
  GThread *thread;
  GMutex lock;
  GCond cond;
  GQueue jobs;         /* decode_job * waiting, oldest first */
  GQueue free_jobs;    /* decode_job * free for stage 0 to fill */
  decode_job job_mem[DECODE_JOBS];
  gboolean closing;    /* no more jobs: finish the queued ones and stop */
  gboolean abort;      /* stop now (the run failed elsewhere) */
  gint failed;         /* atomic: error is set */
  GError *error;       /* the thread's first failure */
  dp_backend *be;      /* the VAE's */
  dp_tensor latent;    /* [channels, max frames, H, W] on be */
} decode_worker;

struct driver {
  dp_engine *e;
  engine_stage *st;
  dp_backend *be;
  const dp_engine_output *out;
  int channels, H, W;

  block_slot *slots;
  int n_slots;
  dp_block_noise *noise;
  float *noise_host;   /* [channels, max frames, H, W] */
  dp_tensor window;    /* [channels, C + P, H, W] on the backend: a window's latent */
  dp_wan_vae_decoder *dec;
  uint8_t *rgb;        /* max_frames decoded frames */
  float *latent_host;  /* [channels, max frames, H, W]: out->block_latent, the NaN check's copy */
  int64_t host_bytes;  /* of the above and the decoder, in the block_bytes figure */
  int64_t video_frames;

  dp_block_pass apply; /* the pass whose prediction is applied next */
  int64_t applied;     /* predictions applied (= apply.index while passes remain) */
  gboolean apply_done;
  dp_transport_req *pred[2];
  dp_tensor pred_view[2];
  dp_transport_req *send[2];
  gint64 t0;
  decode_worker *worker; /* NULL: blocks are decoded inline, on this thread */
};

static block_slot *
slot_of (driver *d, int64_t block)
{
  return &d->slots[block % d->n_slots];
}

static void
add_block_bytes (driver *d, int64_t delta)
{
  g_mutex_lock (&d->e->stats_lock);
  d->e->stats.block_bytes += delta;
  g_mutex_unlock (&d->e->stats_lock);
}

/* Bytes of a slot: the latent and the sampler's history (UniPC keeps the
 * corrected sample and three x0 predictions, sampler.h; Euler nothing). */
static int64_t
slot_bytes (driver *d, const block_slot *s)
{
  const int64_t one = (int64_t) d->channels * s->frames * d->H * d->W * sizeof (float);
  return one * (1 + (dp_sampler_get_kind (s->sampler) == DP_SAMPLER_UNIPC ? 4 : 0));
}

static void
slot_clear (driver *d, block_slot *s)
{
  if (s->sampler)
    add_block_bytes (d, -slot_bytes (d, s));
  if (s->latent.data)
    dp_backend_tensor_free (d->be, &s->latent);
  dp_sampler_free (s->sampler);
  memset (s, 0, sizeof *s);
  s->block = -1;
}

/* A fresh block enters the queue: its slot gets the block's noise and a
 * sampler at step 0. */
static gboolean
start_block (driver *d, const dp_block_pass *p, GError **error)
{
  block_slot *s = slot_of (d, p->block);
  if (s->frames != p->own_frames) {
    slot_clear (d, s);
    int64_t shape[4] = { d->channels, p->own_frames, d->H, d->W };
    s->latent = dp_backend_tensor_new (d->be, DP_F32, 4, shape);
    if (!dp_backend_check (d->be, error))
      return FALSE;
    s->sampler = dp_sampler_new (d->be, d->e->schedule, 4, shape, error);
    if (!s->sampler) {
      dp_backend_tensor_free (d->be, &s->latent);
      return FALSE;
    }
    s->frames = p->own_frames;
    add_block_bytes (d, slot_bytes (d, s));
  } else {
    dp_sampler_reset (s->sampler);
  }
  s->block = p->block;
  dp_block_noise_fill (d->noise, p->block, d->noise_host);
  dp_tensor host = dp_tensor_view (d->noise_host, DP_F32, 4, s->latent.shape);
  d->be->ops->to_device (d->be, &s->latent, &host);
  return dp_backend_check (d->be, error);
}

/* A block entering the queue: asks the consumer whether its conditioning
 * changes (block 0 has the run's). */
static gboolean
enter_cond (driver *d, const dp_block_pass *p, GError **error)
{
  if (!d->out->block_cond || p->block == 0)
    return TRUE;
  dp_engine_cond *c = NULL;
  GError *err = NULL;
  if (!d->out->block_cond (p->block, &c, d->out->user_data, &err)) {
    dp_engine_cond_unref (c);
    if (!err)
      g_set_error (&err, DP_ERROR, DP_ERROR_FAILED, "engine: the conditioning of block %" G_GINT64_FORMAT " failed",
                   p->block);
    g_propagate_error (error, err);
    return FALSE;
  }
  return c == NULL || dp_engine_conds_add (d->e, p->block, c, error);
}

static gboolean
slot_check (const block_slot *s, int64_t block, const char *what, GError **error)
{
  if (s->block == block)
    return TRUE;
  g_set_error (error, DP_ERROR, DP_ERROR_FAILED,
               "engine: internal error: %s block %" G_GINT64_FORMAT " is not in its slot (holds %" G_GINT64_FORMAT ")",
               what, block, s->block);
  return FALSE;
}

/* Patch-embeds pass p's window into hidden.  A window with context is
 * assembled first ([last C frames of the previous block as they are now |
 * own frames]: a frame range of [channels, frames, H, W] is a column range
 * of its [channels, frames * H * W] view) and embedded in one call, so a
 * pass is exactly dp_wan_dit_forward of its window (the patch embedding's
 * GEMM rounds differently when split by rows). */
static gboolean
embed_window (driver *d, dp_wan_dit *dit, const dp_block_pass *p, dp_tensor *hidden, GError **error)
{
  block_slot *own = slot_of (d, p->block);
  if (!slot_check (own, p->block, "the", error))
    return FALSE;
  if (p->context_frames == 0)
    return dp_wan_dit_embed (dit, &own->latent, 0, hidden, error);
  block_slot *prev = slot_of (d, p->block - 1);
  if (!slot_check (prev, p->block - 1, "the context", error))
    return FALSE;
  const int64_t hw = (int64_t) d->H * d->W, C = p->context_frames;
  dp_tensor src = dp_tensor_view (prev->latent.data, DP_F32, 2, (int64_t[]){ d->channels, prev->frames * hw });
  dp_tensor mine = dp_tensor_view (own->latent.data, DP_F32, 2, (int64_t[]){ d->channels, own->frames * hw });
  dp_tensor dst = dp_tensor_view (d->window.data, DP_F32, 2, (int64_t[]){ d->channels, p->window_frames * hw });
  d->be->ops->copy_cols (d->be, &dst, 0, &src, (prev->frames - C) * hw, C * hw);
  d->be->ops->copy_cols (d->be, &dst, C * hw, &mine, 0, own->frames * hw);
  dp_tensor window = dp_tensor_view (d->window.data, DP_F32, 4, (int64_t[]){ d->channels, p->window_frames, d->H, d->W });
  return dp_wan_dit_embed (dit, &window, 0, hidden, error);
}

/* Decodes a finished block's kept latent frames (latent: on the VAE's
 * backend) and hands the frames out; then counts the block as done. */
static gboolean
decode_block (driver *d, const dp_tensor *latent, int64_t block, int kept, GError **error)
{
  dp_engine *e = d->e;
  int64_t frames = 0;
  gboolean go_on = TRUE;
  for (int f = 0; f < kept && go_on && d->dec; f++) {
    int n = 0;
    if (dp_engine_is_cancelled (e)) {
      g_set_error (error, DP_ERROR, DP_ERROR_CANCELLED, "engine: cancelled");
      return FALSE;
    }
    if (!dp_wan_vae_decoder_push (d->dec, latent, f, d->rgb, NULL, &n, error)) {
      g_prefix_error (error, "engine: decoding block %" G_GINT64_FORMAT ": ", block);
      return FALSE;
    }
    if (d->out->frames)
      go_on = d->out->frames (d->rgb, n, d->video_frames, d->out->user_data);
    d->video_frames += n;
    frames += n;
  }
  g_mutex_lock (&e->stats_lock);
  e->stats.blocks_done++;
  e->stats.latent_frames_done += kept;
  e->stats.frames_done += frames;
  if (e->stats.first_frame_seconds < 0)
    e->stats.first_frame_seconds = (g_get_monotonic_time () - e->run_start_us) / 1e6;
  g_mutex_unlock (&e->stats_lock);
  if (!go_on) {
    g_set_error (error, DP_ERROR, DP_ERROR_CANCELLED, "engine: stopped by the consumer");
    return FALSE;
  }
  return TRUE;
}

static gpointer
decode_main (gpointer data)
{
  decode_worker *w = data;
  driver *d = w->d;
  for (;;) {
    g_mutex_lock (&w->lock);
    while (!w->abort && !w->closing && g_queue_is_empty (&w->jobs))
      g_cond_wait (&w->cond, &w->lock);
    decode_job *job = w->abort ? NULL : g_queue_pop_head (&w->jobs);
    g_cond_broadcast (&w->cond); /* a place in the queue is free */
    g_mutex_unlock (&w->lock);
    if (!job)
      break;
    GError *err = NULL;
    int64_t shape[4] = { d->channels, job->kept, d->H, d->W };
    dp_tensor host = dp_tensor_view (job->latent, DP_F32, 4, shape);
    dp_tensor dev = dp_tensor_view (w->latent.data, DP_F32, 4, shape);
    w->be->ops->to_device (w->be, &dev, &host);
    gboolean ok = dp_backend_check (w->be, &err) && decode_block (d, &dev, job->block, job->kept, &err);
    g_mutex_lock (&w->lock);
    g_queue_push_tail (&w->free_jobs, job);
    if (!ok) {
      w->error = err;
      g_atomic_int_set (&w->failed, 1);
    }
    g_cond_broadcast (&w->cond);
    g_mutex_unlock (&w->lock);
    if (!ok)
      break;
  }
  return NULL;
}

/* The decode thread's failure, as this thread's error (FALSE), else TRUE. */
static gboolean
worker_ok (driver *d, GError **error)
{
  decode_worker *w = d->worker;
  if (!w || !g_atomic_int_get (&w->failed))
    return TRUE;
  g_mutex_lock (&w->lock);
  g_set_error_literal (error, w->error->domain, w->error->code, w->error->message);
  g_mutex_unlock (&w->lock);
  return FALSE;
}

/* Queues a finished block for the decode thread (its latents copied into a
 * free job), after waiting while every job is taken (DP_ENGINE_DECODE_QUEUE
 * waiting, one being decoded). */
static gboolean
worker_queue (driver *d, int64_t block, int kept, const float *latent, GError **error)
{
  decode_worker *w = d->worker;
  g_mutex_lock (&w->lock);
  /* The decode thread signals whenever it frees a job or fails; a cancel
   * makes it fail at its next latent frame. */
  while (!g_atomic_int_get (&w->failed) && g_queue_is_empty (&w->free_jobs) && !dp_engine_is_cancelled (d->e))
    g_cond_wait (&w->cond, &w->lock);
  decode_job *job = g_atomic_int_get (&w->failed) || dp_engine_is_cancelled (d->e) ? NULL
                                                                                    : g_queue_pop_head (&w->free_jobs);
  g_mutex_unlock (&w->lock);
  if (!job) {
    if (dp_engine_is_cancelled (d->e) && !g_atomic_int_get (&w->failed)) {
      g_set_error (error, DP_ERROR, DP_ERROR_CANCELLED, "engine: cancelled");
      return FALSE;
    }
    return worker_ok (d, error);
  }
  job->block = block;
  job->kept = kept;
  memcpy (job->latent, latent, (size_t) d->channels * kept * d->H * d->W * sizeof (float));
  g_mutex_lock (&w->lock);
  g_queue_push_tail (&w->jobs, job);
  g_cond_broadcast (&w->cond);
  g_mutex_unlock (&w->lock);
  return TRUE;
}

/* Stops the decode thread: after the queued blocks when the run succeeded
 * (ok), at once otherwise.  Returns ok and the thread's error. */
static gboolean
worker_stop (driver *d, gboolean ok, GError **error)
{
  decode_worker *w = d->worker;
  if (!w)
    return ok;
  if (w->thread) {
    g_mutex_lock (&w->lock);
    w->closing = TRUE;
    w->abort = !ok;
    g_cond_broadcast (&w->cond);
    g_mutex_unlock (&w->lock);
    g_thread_join (w->thread);
    w->thread = NULL;
  }
  if (ok && !worker_ok (d, error))
    ok = FALSE;
  return ok;
}

static void
worker_free (driver *d)
{
  decode_worker *w = d->worker;
  if (!w)
    return;
  g_assert (w->thread == NULL);
  g_queue_clear (&w->jobs);
  g_queue_clear (&w->free_jobs);
  for (int i = 0; i < DECODE_JOBS; i++)
    g_free (w->job_mem[i].latent);
  if (w->latent.data)
    dp_backend_tensor_free (w->be, &w->latent);
  g_clear_error (&w->error);
  g_mutex_clear (&w->lock);
  g_cond_clear (&w->cond);
  g_free (w);
  d->worker = NULL;
}

static gboolean
deliver (driver *d, block_slot *s, GError **error)
{
  dp_engine *e = d->e;
  const int64_t block = s->block;
  const int kept = dp_block_schedule_block_kept (&e->bs, block);
  const int64_t first = dp_block_schedule_block_first (&e->bs, block);
  const size_t hw = (size_t) d->H * d->W;
  gboolean go_on = TRUE;
  if (d->out->block_latent || d->worker) {
    dp_tensor host = dp_tensor_view (d->latent_host, DP_F32, 4, s->latent.shape);
    d->be->ops->to_host (d->be, &host, &s->latent);
    if (!d->be->ops->sync (d->be, error))
      return FALSE;
    /* Keep the first `kept` frames of each channel (a padded last block). */
    for (int c = 1; c < d->channels && kept < s->frames; c++)
      memmove (d->latent_host + c * kept * hw, d->latent_host + c * (size_t) s->frames * hw,
               kept * hw * sizeof (float));
  }
  if (d->out->block_latent) {
    dp_tensor view = dp_tensor_view (d->latent_host, DP_F32, 4, (int64_t[]){ d->channels, kept, d->H, d->W });
    go_on = d->out->block_latent (&view, block, first, d->out->user_data);
  }
  if (!go_on) {
    g_set_error (error, DP_ERROR, DP_ERROR_CANCELLED, "engine: stopped by the consumer");
    return FALSE;
  }
  if (d->worker)
    return worker_queue (d, block, kept, d->latent_host, error);
  return decode_block (d, &s->latent, block, kept, error);
}

/* Steps the sampler of d->apply's block with its prediction v; a block at
 * its last step leaves the queue: decoded and delivered. */
static gboolean
apply_prediction (driver *d, const dp_tensor *v, GError **error)
{
  const dp_block_pass *p = &d->apply;
  block_slot *s = slot_of (d, p->block);
  if (!slot_check (s, p->block, "the predicted", error) || !dp_sampler_step (s->sampler, &s->latent, v, error) ||
      !d->be->ops->sync (d->be, error))
    return FALSE;
  /* A NaN or Inf never goes away once in a latent (every later step and the
   * VAE carry it): stop at the step that made it. */
  float bad = 0;
  const int64_t at = dp_backend_find_nonfinite (d->be, &s->latent, d->latent_host, &bad, error);
  if (at == -2)
    return FALSE;
  if (at >= 0) {
    g_set_error (error, DP_ERROR, DP_ERROR_NUMERIC,
                 "the model produced %s at step %d of %d of block %" G_GINT64_FORMAT " (latent value %" G_GINT64_FORMAT
                 " of %" G_GINT64_FORMAT "): the transformer's weights or the settings give non-finite numbers",
                 dp_nonfinite_name (bad), p->step + 1, d->e->bs.steps, p->block, at, dp_tensor_nelem (&s->latent));
    return FALSE;
  }
  if (p->step == d->e->bs.steps - 1 && !deliver (d, s, error))
    return FALSE;
  if (p->block == p->queue_lo && d->out->iteration)
    d->out->iteration (p->iteration, d->e->bs.num_iterations, d->out->user_data);
  d->applied++;
  d->apply_done = !dp_block_schedule_next (&d->e->bs, &d->apply);
  return TRUE;
}

/* Posts the receive of the prediction of pass q into buffer q.index % 2. */
static gboolean
post_prediction (driver *d, const dp_block_pass *q, GError **error)
{
  const int k = (int) (q->index & 1);
  d->pred_view[k] = dp_engine_velocity_view (d->e, d->st, k, q->own_frames);
  d->pred[k] = dp_transport_irecv (d->e->transport, 0, d->e->n - 1, &d->pred_view[k], error);
  return d->pred[k] != NULL;
}

/* Waits for the next prediction from the last stage, applies it and posts
 * the receive two predictions ahead (into the buffer just freed). */
static gboolean
receive_next (driver *d, GError **error)
{
  const int k = (int) (d->applied & 1);
  gboolean ok = dp_transport_wait (d->e->transport, d->pred[k], error);
  d->pred[k] = NULL;
  dp_engine_stage_account (d->e, d->st, FALSE, &d->t0);
  if (!ok || !apply_prediction (d, &d->pred_view[k], error))
    return FALSE;
  dp_engine_stage_account (d->e, d->st, TRUE, &d->t0);
  if (!d->apply_done) {
    dp_block_pass ahead = d->apply;
    if (dp_block_schedule_next (&d->e->bs, &ahead) && !post_prediction (d, &ahead, error))
      return FALSE;
  }
  return TRUE;
}

static gboolean
driver_init (driver *d, dp_engine *e, dp_wan_vae *vae, const dp_engine_output *out, GError **error)
{
  memset (d, 0, sizeof *d);
  d->e = e;
  d->st = &e->st[0];
  d->be = d->st->be;
  d->out = out;
  d->channels = e->cfg.in_channels;
  d->H = e->params.latent_height;
  d->W = e->params.latent_width;
  const dp_block_schedule *bs = &e->bs;
  const int max_frames = dp_block_schedule_max_block_frames (bs);
  const size_t frame_floats = (size_t) d->channels * d->H * d->W;
  d->n_slots = (int) (bs->num_blocks < 0 ? bs->steps : MIN ((int64_t) bs->steps, bs->num_blocks)) + 1;
  d->slots = g_new0 (block_slot, d->n_slots);
  for (int i = 0; i < d->n_slots; i++)
    d->slots[i].block = -1;
  d->noise = dp_block_noise_new (bs, e->params.seed, e->params.noise_stream, d->channels, d->H, d->W, error);
  if (!d->noise)
    return FALSE;
  d->noise_host = g_try_malloc (frame_floats * max_frames * sizeof (float));
  d->latent_host = g_try_malloc (frame_floats * max_frames * sizeof (float));
  if (!d->noise_host || !d->latent_host) {
    g_set_error (error, DP_ERROR, DP_ERROR_NOMEM, "engine: no memory for %d latent frames", max_frames);
    return FALSE;
  }
  size_t host_bytes = frame_floats * max_frames * sizeof (float) * 2;
  if (bs->context_frames > 0 && bs->num_blocks != 1) {
    d->window = dp_backend_tensor_new (d->be, DP_F32, 4,
                                       (int64_t[]){ d->channels, bs->context_frames + bs->block_frames, d->H, d->W });
    if (!dp_backend_check (d->be, error))
      return FALSE;
    host_bytes += dp_tensor_nbytes (&d->window);
  }
  if (vae && out->decode_thread && dp_wan_vae_get_backend (vae) == d->be) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID,
                 "engine: decoding on a thread of its own needs the VAE on a backend of its own, not stage 0's (%s)",
                 d->be->name);
    return FALSE;
  }
  if (vae) {
    d->dec = dp_wan_vae_decoder_new_tiled (vae, d->H, d->W, out->vae_tiling, error);
    if (!d->dec)
      return FALSE;
    int w, h;
    dp_wan_vae_decoder_get_size (d->dec, &w, &h);
    const size_t rgb_bytes = (size_t) dp_wan_vae_decoder_max_frames (d->dec) * w * h * 3;
    d->rgb = g_try_malloc (rgb_bytes);
    if (!d->rgb) {
      g_set_error (error, DP_ERROR, DP_ERROR_NOMEM, "engine: no memory for decoded frames (%zu bytes)", rgb_bytes);
      return FALSE;
    }
    host_bytes += rgb_bytes + dp_wan_vae_decoder_memory_bytes (d->dec);
  }
  if (vae && out->decode_thread) {
    decode_worker *w = g_new0 (decode_worker, 1);
    d->worker = w;
    w->d = d;
    w->be = dp_wan_vae_get_backend (vae);
    g_mutex_init (&w->lock);
    g_cond_init (&w->cond);
    g_queue_init (&w->jobs);
    g_queue_init (&w->free_jobs);
    /* The jobs' host buffers, allocated once for the run. */
    for (int i = 0; i < DECODE_JOBS; i++) {
      w->job_mem[i].latent = g_try_malloc (frame_floats * max_frames * sizeof (float));
      if (!w->job_mem[i].latent) {
        g_set_error (error, DP_ERROR, DP_ERROR_NOMEM, "engine: no memory for the decode thread's %d latent frames",
                     max_frames);
        return FALSE;
      }
      g_queue_push_tail (&w->free_jobs, &w->job_mem[i]);
    }
    w->latent = dp_backend_tensor_new (w->be, DP_F32, 4, (int64_t[]){ d->channels, max_frames, d->H, d->W });
    if (!dp_backend_check (w->be, error)) {
      g_prefix_error (error, "engine: the decode thread's latent buffer: ");
      return FALSE;
    }
    host_bytes += frame_floats * max_frames * sizeof (float) * DECODE_JOBS;
    w->thread = g_thread_try_new ("dp-decode", decode_main, w, error);
    if (!w->thread) {
      g_prefix_error (error, "engine: ");
      return FALSE;
    }
  }
  d->host_bytes = (int64_t) host_bytes;
  add_block_bytes (d, d->host_bytes);
  return TRUE;
}

static void
driver_clear (driver *d)
{
  worker_stop (d, FALSE, NULL);
  worker_free (d);
  for (int i = 0; i < d->n_slots; i++)
    slot_clear (d, &d->slots[i]);
  g_free (d->slots);
  add_block_bytes (d, -d->host_bytes);
  dp_block_noise_free (d->noise);
  g_free (d->noise_host);
  g_free (d->latent_host);
  g_free (d->rgb);
  if (d->window.data)
    dp_backend_tensor_free (d->be, &d->window);
  dp_wan_vae_decoder_free (d->dec);
}

static gboolean
drive (driver *d, GError **error)
{
  dp_engine *e = d->e;
  engine_stage *st = d->st;
  const int N = e->n;
  /* Passes in flight (embedded, prediction not applied yet): one per stage
   * keeps the pipeline full, one more absorbs stage 0's extra work
   * (samplers, decoding).  Bounded so the ring cannot deadlock (stage.c). */
  const int64_t in_flight = N + 1;
  dp_block_pass p;
  dp_block_schedule_first (&e->bs, &p);
  d->apply = p;
  if (N > 1) {
    dp_block_pass q = p;
    if (!post_prediction (d, &q, error))
      return FALSE;
    if (dp_block_schedule_next (&e->bs, &q) && !post_prediction (d, &q, error))
      return FALSE;
  }
  for (;;) {
    if (!worker_ok (d, error))
      return FALSE;
    if (dp_engine_is_cancelled (e)) {
      g_set_error (error, DP_ERROR, DP_ERROR_CANCELLED, "engine: cancelled");
      return FALSE;
    }
    const int k = (int) (p.index & 1);
    g_mutex_lock (&e->stats_lock);
    e->stats.iteration = p.iteration;
    e->stats.blocks_in_flight = (int) (p.queue_hi - p.queue_lo + 1);
    e->stats.max_blocks_in_flight = MAX (e->stats.max_blocks_in_flight, e->stats.blocks_in_flight);
    g_mutex_unlock (&e->stats_lock);
    if (N > 1) {
      const int64_t need = MAX (p.depends_below, p.index + 1 - in_flight);
      while (d->applied < need)
        if (!receive_next (d, error))
          return FALSE;
      if (d->send[k]) {
        gboolean ok = dp_transport_wait (e->transport, d->send[k], error);
        d->send[k] = NULL;
        dp_engine_stage_account (e, st, FALSE, &d->t0);
        if (!ok)
          return FALSE;
      }
    }
    if (p.step == 0 && (!enter_cond (d, &p, error) || !start_block (d, &p, error)))
      return FALSE;
    dp_tensor hidden = dp_engine_hidden_view (e, st, N == 1 ? 0 : k, p.window_frames);
    dp_wan_span span;
    const float t = (float) e->schedule->timesteps[p.step];
    double guidance = 1.0;
    dp_wan_dit *dit = dp_engine_stage_expert (e, st, p.step); /* two experts: the block's step's */
    if (!dp_engine_stage_use_cond (e, st, p.block, p.queue_lo, p.step, &guidance, error) ||
        !dp_engine_pass_span (e, st, &p, &span, error) || !embed_window (d, dit, &p, &hidden, error) ||
        !dp_wan_dit_run_layers (dit, &span, t, &hidden, error))
      return FALSE;
    if (N == 1) {
      dp_tensor v = dp_engine_velocity_view (e, st, 0, p.own_frames);
      if (!dp_wan_dit_head (dit, &span, t, (float) guidance, &hidden, &v, error) ||
          !apply_prediction (d, &v, error))
        return FALSE;
    } else {
      if (!st->be->ops->sync (st->be, error))
        return FALSE;
      d->send[k] = dp_transport_isend (e->transport, 0, 1, &hidden, error);
      if (!d->send[k])
        return FALSE;
    }
    g_mutex_lock (&e->stats_lock);
    st->passes++;
    g_mutex_unlock (&e->stats_lock);
    dp_engine_stage_account (e, st, TRUE, &d->t0);
    if (!dp_block_schedule_next (&e->bs, &p))
      break;
  }
  while (!d->apply_done)
    if (!receive_next (d, error))
      return FALSE;
  for (int k = 0; k < 2; k++)
    if (d->send[k]) {
      gboolean ok = dp_transport_wait (e->transport, d->send[k], error);
      d->send[k] = NULL;
      if (!ok)
        return FALSE;
    }
  dp_engine_stage_account (e, st, FALSE, &d->t0);
  return TRUE;
}

gboolean
dp_engine_drive (dp_engine *e, dp_wan_vae *vae, const dp_engine_output *out, GError **error)
{
  driver d;
  gboolean ok = driver_init (&d, e, vae, out, error);
  d.t0 = g_get_monotonic_time ();
  if (ok)
    ok = dp_engine_stage_prepare (e, d.st, error);
  dp_engine_stage_account (e, d.st, TRUE, &d.t0);
  if (ok)
    ok = drive (&d, error);
  /* The last blocks may still be decoding. */
  ok = worker_stop (&d, ok, error);
  if (!ok)
    dp_engine_fail (e, error && *error ? g_error_copy (*error) : NULL);
  /* The other stages may still be inside a pass that reads nothing of
   * stage 0's, but the transport may still copy into our prediction
   * buffers until they stop: those live in the stage (freed after the
   * join); the blocks and the decoder are ours alone. */
  driver_clear (&d);
  return ok;
}
