/* DualParal engine: loading the stages, a run's setup and teardown, stage
 * threads, errors, cancellation and statistics (engine.h).  The loops are in
 * stage.c (stages 1..N-1) and engine_run.c (stage 0). */
#include "engine/engine_private.h"

#include <math.h>
#include <string.h>

#include "dualparal/device.h"

/* ------------------------------------------------------------ helpers */

void
dp_engine_fail (dp_engine *e, GError *error)
{
  if (!error)
    return;
  g_mutex_lock (&e->lock);
  if (!e->error && !g_error_matches (error, DP_ERROR, DP_ERROR_CANCELLED)) {
    e->error = error;
    error = NULL;
  }
  g_mutex_unlock (&e->lock);
  g_clear_error (&error);
  dp_engine_cancel (e);
}

gboolean
dp_engine_is_cancelled (dp_engine *e)
{
  if (g_atomic_int_get (&e->cancelled))
    return TRUE;
  if (e->ext_cancel && g_atomic_int_get (e->ext_cancel)) {
    dp_engine_cancel (e); /* wakes the stages waiting on the transport */
    return TRUE;
  }
  return FALSE;
}

/* Asked by the stages' transformers before each layer. */
static gboolean
engine_cancel_hook (gpointer engine)
{
  return dp_engine_is_cancelled (engine);
}

void
dp_engine_cancel (dp_engine *e)
{
  g_atomic_int_set (&e->cancelled, 1);
  if (e->transport)
    dp_transport_cancel (e->transport);
}

void
dp_engine_stage_account (dp_engine *e, engine_stage *st, gboolean busy, gint64 *t0)
{
  const gint64 now = g_get_monotonic_time ();
  g_mutex_lock (&e->stats_lock);
  if (busy)
    st->busy_us += now - *t0;
  else
    st->idle_us += now - *t0;
  g_mutex_unlock (&e->stats_lock);
  *t0 = now;
}

dp_wan_dit *
dp_engine_stage_expert (dp_engine *e, engine_stage *st, int step)
{
  if (!e->two_experts || st->dit2 == NULL)
    return st->dit;
  /* diffusers: t >= boundary_timestep, the timestep tensor against a Python
   * float, compared in float32 (pipeline/classic.h dp_classic_expert). */
  return (float) e->schedule->timesteps[step] >= (float) e->params.boundary ? st->dit : st->dit2;
}

dp_tensor
dp_engine_hidden_view (dp_engine *e, engine_stage *st, int k, int frames)
{
  int64_t shape[3] = { e->batch, frames * e->tokens_per_frame, e->cfg.dim };
  return dp_tensor_view (st->hidden[k].data, DP_F32, 3, shape);
}

dp_tensor
dp_engine_velocity_view (dp_engine *e, engine_stage *st, int k, int frames)
{
  int64_t shape[4] = { e->cfg.out_channels, frames, e->params.latent_height, e->params.latent_width };
  return dp_tensor_view (st->velocity[k].data, DP_F32, 4, shape);
}

gboolean
dp_engine_pass_span (dp_engine *e, engine_stage *st, const dp_block_pass *p, dp_wan_span *span, GError **error)
{
  dp_wan_span_init (span, p->window_frames, e->params.latent_height, e->params.latent_width);
  span->frame_pos = e->positions;
  span->out_first = p->context_frames;
  span->out_frames = p->own_frames;
  if (e->params.per_token_time) {
    /* The context frames are the previous block as it is now: it has taken
     * step + 1 steps, so its noise level is that of timestep step + 1, or
     * clean (0) when that was its last step.  The own frames are at step. */
    const dp_schedule *s = e->schedule;
    const float own = (float) s->timesteps[p->step];
    const float ctx = p->step + 1 < s->steps ? (float) s->timesteps[p->step + 1] : 0.0f;
    for (int f = 0; f < p->window_frames; f++)
      st->frame_t[f] = f < p->context_frames ? ctx : own;
    span->frame_timesteps = st->frame_t;
  }
  return dp_feature_cache_bind (&st->cache, p, e->positions, span, error);
}

gboolean
dp_engine_stage_prepare (dp_engine *e, engine_stage *st, GError **error)
{
  /* Block 0's conditioning: the run's context. */
  if (!dp_engine_stage_use_cond (e, st, 0, 0, -1, NULL, error))
    return FALSE;
  /* The largest pass: the biggest window with the cache in and out. */
  dp_wan_span span;
  dp_wan_span_init (&span, e->max_window, e->params.latent_height, e->params.latent_width);
  span.frame_pos = e->positions;
  if (e->bs.context_frames > 0 && e->bs.num_blocks != 1) {
    span.extra_frames = e->bs.context_frames;
    span.extra_pos = e->positions + e->max_window;
    span.export_first = 0;
    span.export_frames = e->bs.context_frames;
  }
  if (e->params.per_token_time) {
    /* two timesteps (context, own) where windows have context frames */
    for (int f = 0; f < e->max_window; f++)
      st->frame_t[f] = f < e->bs.context_frames && e->bs.num_blocks != 1 ? 1.0f : 0.0f;
    span.frame_timesteps = st->frame_t;
  }
  gboolean ok = dp_wan_dit_reserve (st->dit, &span, error);
  if (ok && st->dit2)
    ok = dp_wan_dit_reserve (st->dit2, &span, error);
  /* Read here, on the stage's thread, for dp_engine_get_stats. */
  g_mutex_lock (&e->stats_lock);
  st->model_bytes = dp_wan_dit_memory_bytes (st->dit) + (st->dit2 ? dp_wan_dit_memory_bytes (st->dit2) : 0);
  g_mutex_unlock (&e->stats_lock);
  return ok;
}

/* ------------------------------------------------------------ new / free */

/* Loads the stages of this process: every stage (local_stage -1, stages on
 * threads) or only local_stage (the others run in other processes, reached
 * through transport); backends[r] is stage r's backend (NULL for the
 * stages of other processes). */
static dp_engine *
engine_new (const char *transformer_dir, dp_backend *const *backends, int n_stages, int local_stage,
            dp_transport *transport, const dp_engine_params *params, GError **error)
{
  if (n_stages < 1 || n_stages > DP_ENGINE_MAX_STAGES) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "engine: %d stages, expected 1..%d", n_stages,
                 DP_ENGINE_MAX_STAGES);
    return NULL;
  }
  for (int r = 0; r < n_stages; r++) {
    if (local_stage >= 0 && r != local_stage)
      continue;
    if (!backends || !backends[r]) {
      g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "engine: no backend for stage %d", r);
      return NULL;
    }
    for (int q = 0; q < r && local_stage < 0; q++)
      if (backends[q] == backends[r]) {
        g_set_error (error, DP_ERROR, DP_ERROR_INVALID,
                     "engine: stages %d and %d share one backend; each stage needs its own (a backend is "
                     "driven by one thread)", q, r);
        return NULL;
      }
  }
  if (transport && transport->n_stages != n_stages) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "engine: the transport connects %d stages, not %d",
                 transport->n_stages, n_stages);
    return NULL;
  }
  /* Without a transport: the in-process one for host-memory stages (cpu),
   * the device one (NCCL between GPUs, device copies on one GPU) for CUDA
   * stages.  Nothing moves data between host and device stages. */
  gboolean device_stages = FALSE;
  const dp_device_provider *device_provider = NULL;
  if (local_stage >= 0 && !transport) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "engine: stage %d of %d without a transport to the others",
                 local_stage, n_stages);
    return NULL;
  }
  if (!transport && n_stages > 1) {
    int host = -1, device = -1;
    for (int r = n_stages - 1; r >= 0; r--) {
      if (backends[r]->host_memory)
        host = r;
      else
        device = r;
    }
    if (host >= 0 && device >= 0) {
      g_set_error (error, DP_ERROR, DP_ERROR_UNSUPPORTED,
                   "engine: stage %d runs on %s and stage %d on %s: the stages of one engine must all be cpu or "
                   "all be cuda (no transport moves data between host and device stages)",
                   host, backends[host]->name, device, backends[device]->name);
      return NULL;
    }
    device_stages = device >= 0;
    for (int r = 0; r < n_stages && device_stages; r++) {
      /* Device stages need their provider's transport, and one provider
       * for them all (the transport moves its own device's buffers). */
      const dp_device_provider *p = dp_device_provider_of (backends[r]);
      if (r == 0)
        device_provider = p;
      if (p == NULL || p != device_provider || p->stage_transport_new == NULL) {
        g_set_error (error, DP_ERROR, DP_ERROR_UNSUPPORTED,
                     "engine: backend %s of stage %d is not host-addressable and this build has no transport for "
                     "it (the device transport needs the stages all on CUDA devices)",
                     backends[r]->name, r);
        return NULL;
      }
    }
  }
  if (!params || !params->schedule) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "engine: no sampler schedule");
    return NULL;
  }
  dp_block_schedule bs;
  if (!dp_block_schedule_init (&bs, params->block_frames, params->context_frames, params->schedule->steps,
                               params->latent_frames, error))
    return NULL;
  dp_wan_config cfg;
  if (!dp_wan_config_load (transformer_dir, &cfg, error))
    return NULL;
  if (params->expert2_dir) {
    /* The experts take turns on the same hidden states and caches. */
    dp_wan_config c2;
    if (!dp_wan_config_load (params->expert2_dir, &c2, error))
      return NULL;
    if (c2.num_layers != cfg.num_layers || c2.dim != cfg.dim || c2.num_heads != cfg.num_heads
        || c2.in_channels != cfg.in_channels || c2.out_channels != cfg.out_channels || c2.text_dim != cfg.text_dim
        || c2.patch_t != cfg.patch_t || c2.patch_h != cfg.patch_h || c2.patch_w != cfg.patch_w
        || c2.rope_max_seq_len != cfg.rope_max_seq_len) {
      g_set_error (error, DP_ERROR, DP_ERROR_SHAPE, "engine: the second expert %s is not shaped like %s (layers, "
                   "width, heads, channels, text_dim, patch, rope_max_seq_len must be equal)",
                   params->expert2_dir, transformer_dir);
      return NULL;
    }
    if (!isfinite (params->boundary) || !isfinite (params->guidance_2) || params->guidance_2 < 0.0) {
      g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "engine: two experts with boundary %g and guidance_2 %g",
                   params->boundary, params->guidance_2);
      return NULL;
    }
  }
  if (n_stages > cfg.num_layers) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID,
                 "engine: %d stages for a transformer of %d layers: each stage needs at least one layer, so use "
                 "at most %d devices", n_stages, cfg.num_layers, cfg.num_layers);
    return NULL;
  }
  const int H = params->latent_height, W = params->latent_width;
  if (H < cfg.patch_h || W < cfg.patch_w || H % cfg.patch_h || W % cfg.patch_w) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID,
                 "engine: latent size %d x %d is not a positive multiple of the patch %d x %d", H, W, cfg.patch_h,
                 cfg.patch_w);
    return NULL;
  }
  if (cfg.in_channels != cfg.out_channels) {
    g_set_error (error, DP_ERROR, DP_ERROR_UNSUPPORTED,
                 "engine: %s: the model predicts %d channels for %d latent channels; the sampler needs equal "
                 "counts", transformer_dir, cfg.out_channels, cfg.in_channels);
    return NULL;
  }
  const int max_window = dp_block_schedule_max_block_frames (&bs);
  const int positions = max_window + (bs.num_blocks == 1 ? 0 : bs.context_frames);
  if (positions > cfg.rope_max_seq_len) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID,
                 "engine: a window of %d frames plus %d cached frames needs RoPE positions up to %d, beyond the "
                 "model's range %d (rope_max_seq_len); use smaller blocks", max_window,
                 positions - max_window, positions - 1, cfg.rope_max_seq_len);
    return NULL;
  }

  dp_engine *e = g_new0 (dp_engine, 1);
  g_mutex_init (&e->lock);
  g_mutex_init (&e->stats_lock);
  g_mutex_init (&e->cond_lock);
  g_cond_init (&e->cond_cv);
  e->conds_known = G_MAXINT64;
  e->params = *params;
  e->bs = bs;
  e->cfg = cfg;
  e->n = n_stages;
  e->local_stage = local_stage;
  e->tokens_per_frame = (int64_t) (H / cfg.patch_h) * (W / cfg.patch_w);
  e->max_window = max_window;
  e->positions = g_new (int, positions + 1);
  for (int i = 0; i <= positions; i++)
    e->positions[i] = i;
  /* Own copy of the schedule (the caller may free theirs). */
  const dp_schedule *src = params->schedule;
  e->schedule = g_new0 (dp_schedule, 1);
  *e->schedule = *src;
  e->schedule->sigmas = g_memdup2 (src->sigmas, sizeof (double) * (src->steps + 1));
  e->schedule->timesteps = g_memdup2 (src->timesteps, sizeof (double) * src->steps);
  e->params.schedule = e->schedule;
  e->params.expert2_dir = NULL; /* borrowed: used only here */
  e->two_experts = params->expert2_dir != NULL;
  e->stats.first_frame_seconds = -1;

  for (int r = 0; r < n_stages; r++) {
    engine_stage *st = &e->st[r];
    st->engine = e;
    st->index = r;
    dp_engine_split_layers (cfg.num_layers, n_stages, r, &st->layer_begin, &st->layer_end);
    if (!dp_engine_stage_is_local (e, r))
      continue;
    st->be = backends[r];
    st->frame_t = g_new0 (float, max_window);
    st->dit = dp_wan_dit_load (st->be, transformer_dir, st->layer_begin, st->layer_end, error);
    if (!st->dit) {
      g_prefix_error (error, "engine: stage %d (layers %d..%d): ", r, st->layer_begin, st->layer_end);
      dp_engine_free (e);
      return NULL;
    }
    st->model_bytes = dp_wan_dit_memory_bytes (st->dit);
    dp_wan_dit_set_cancel (st->dit, engine_cancel_hook, e);
    if (params->expert2_dir) {
      st->dit2 = dp_wan_dit_load (st->be, params->expert2_dir, st->layer_begin, st->layer_end, error);
      if (!st->dit2) {
        g_prefix_error (error, "engine: stage %d (layers %d..%d of the second expert): ", r, st->layer_begin,
                        st->layer_end);
        dp_engine_free (e);
        return NULL;
      }
      /* The experts take turns on the stage's thread: one activation arena. */
      dp_wan_dit_share_arena (st->dit2, st->dit);
      st->model_bytes += dp_wan_dit_memory_bytes (st->dit2);
      dp_wan_dit_set_cancel (st->dit2, engine_cancel_hook, e);
    }
  }
  if (transport) {
    e->transport = transport;
  } else if (n_stages > 1) {
    e->transport = device_stages ? device_provider->stage_transport_new (backends, n_stages, error)
                                 : dp_transport_new_inproc (n_stages, error);
    e->own_transport = TRUE;
    if (!e->transport) {
      g_prefix_error (error, "engine: ");
      dp_engine_free (e);
      return NULL;
    }
  }
  return e;
}

dp_engine *
dp_engine_new (const char *transformer_dir, dp_backend *const *backends, int n_stages, dp_transport *transport,
               const dp_engine_params *params, GError **error)
{
  return engine_new (transformer_dir, backends, n_stages, -1, transport, params, error);
}

dp_engine *
dp_engine_new_stage (const char *transformer_dir, dp_backend *backend, int n_stages, int stage,
                     dp_transport *transport, const dp_engine_params *params, GError **error)
{
  if (stage < 0 || stage >= n_stages) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "engine: stage %d of %d does not exist", stage, n_stages);
    return NULL;
  }
  dp_backend *backends[DP_ENGINE_MAX_STAGES] = { NULL };
  if (n_stages <= DP_ENGINE_MAX_STAGES)
    backends[stage] = backend;
  return engine_new (transformer_dir, backends, n_stages, stage, transport, params, error);
}

void
dp_engine_free (dp_engine *e)
{
  if (!e)
    return;
  for (int r = 0; r < e->n; r++) {
    dp_wan_dit_free (e->st[r].dit);
    dp_wan_dit_free (e->st[r].dit2);
    g_free (e->st[r].frame_t);
  }
  if (e->own_transport)
    dp_transport_free (e->transport);
  dp_schedule_free (e->schedule);
  g_free (e->positions);
  g_clear_error (&e->error);
  if (e->conds)
    g_array_free (e->conds, TRUE);
  if (e->conds_early) {
    for (guint i = 0; i < e->conds_early->len; i++)
      dp_engine_cond_unref (g_array_index (e->conds_early, dp_engine_cond_entry, i).cond);
    g_array_free (e->conds_early, TRUE);
  }
  g_mutex_clear (&e->lock);
  g_mutex_clear (&e->stats_lock);
  g_mutex_clear (&e->cond_lock);
  g_cond_clear (&e->cond_cv);
  g_free (e);
}

void
dp_engine_set_guidance (dp_engine *e, double guidance)
{
  e->params.guidance = guidance;
}

gboolean
dp_engine_stage_is_local (const dp_engine *e, int stage)
{
  return e->local_stage < 0 || stage == e->local_stage;
}

const dp_block_schedule *
dp_engine_get_schedule (const dp_engine *e)
{
  return &e->bs;
}

int
dp_engine_n_stages (const dp_engine *e)
{
  return e->n;
}

dp_wan_dit *
dp_engine_stage_model (dp_engine *e, int stage)
{
  return stage >= 0 && stage < e->n ? e->st[stage].dit : NULL;
}

/* ------------------------------------------------------------ statistics */

void
dp_engine_get_stats (dp_engine *e, dp_engine_stats *out)
{
  g_mutex_lock (&e->stats_lock);
  *out = e->stats;
  out->n_stages = e->n;
  if (out->running)
    out->run_seconds = (g_get_monotonic_time () - e->run_start_us) / 1e6;
  for (int r = 0; r < e->n; r++) {
    const engine_stage *st = &e->st[r];
    dp_engine_stage_stats *s = &out->stage[r];
    memset (s, 0, sizeof *s);
    s->layer_begin = st->layer_begin;
    s->layer_end = st->layer_end;
    s->busy_seconds = st->busy_us / 1e6;
    s->idle_seconds = st->idle_us / 1e6;
    s->passes = st->passes;
    s->cache_bytes = st->cache_bytes;
    s->buffer_bytes = st->buffer_bytes;
    s->model_bytes = st->model_bytes;
  }
  g_mutex_unlock (&e->stats_lock);
  /* Outside stats_lock: the transport has its own lock. */
  for (int r = 0; r < e->n && e->transport; r++)
    dp_transport_bytes (e->transport, r, &out->stage[r].bytes_sent, &out->stage[r].bytes_received);
}

/* ------------------------------------------------------------ run */

static void
stage_free_buffers (dp_engine *e, engine_stage *st)
{
  g_mutex_lock (&e->stats_lock);
  for (int k = 0; k < 2; k++) {
    if (st->hidden[k].data)
      dp_backend_tensor_free (st->be, &st->hidden[k]);
    if (st->velocity[k].data)
      dp_backend_tensor_free (st->be, &st->velocity[k]);
  }
  dp_feature_cache_clear (&st->cache);
  st->buffer_bytes = st->cache_bytes = 0;
  g_mutex_unlock (&e->stats_lock);
}

/* Hidden-state buffers on every stage; prediction buffers on stage 0 and on
 * the last stage; the feature cache where there are layers. */
static gboolean
stage_alloc_buffers (dp_engine *e, engine_stage *st, GError **error)
{
  const int64_t L = (int64_t) e->max_window * e->tokens_per_frame;
  const gboolean last = st->index == e->n - 1;
  int64_t hshape[3] = { e->batch, L, e->cfg.dim };
  int64_t vshape[4] = { e->cfg.out_channels, dp_block_schedule_max_block_frames (&e->bs), e->params.latent_height,
                        e->params.latent_width };
  size_t bytes = 0;
  /* Stage 0 of a one-stage engine runs in place: one buffer of each. */
  const int nbuf = e->n == 1 ? 1 : 2;
  for (int k = 0; k < nbuf; k++) {
    st->hidden[k] = dp_backend_tensor_new (st->be, DP_F32, 3, hshape);
    bytes += dp_tensor_nbytes (&st->hidden[k]);
    if (st->index == 0 || last) {
      st->velocity[k] = dp_backend_tensor_new (st->be, DP_F32, 4, vshape);
      bytes += dp_tensor_nbytes (&st->velocity[k]);
    }
  }
  if (!dp_backend_check (st->be, error)) {
    g_prefix_error (error, "engine: stage %d buffers: ", st->index);
    return FALSE;
  }
  if (e->bs.num_blocks != 1 &&
      !dp_feature_cache_init (&st->cache, st->be, st->layer_end - st->layer_begin, e->batch, e->bs.context_frames,
                              e->tokens_per_frame, e->cfg.dim, error))
    return FALSE;
  g_mutex_lock (&e->stats_lock);
  st->buffer_bytes = bytes;
  st->cache_bytes = dp_feature_cache_bytes (&st->cache);
  g_mutex_unlock (&e->stats_lock);
  return TRUE;
}

/* Start of a run on this process's stages: checks the context, clears the
 * cancel flag, the error and the figures, allocates the local stages'
 * buffers.  FALSE with *err set (the run then still ends with run_end). */
static gboolean
run_begin (dp_engine *e, const dp_tensor *context, const gint *cancel, GError **err)
{
  g_atomic_int_set (&e->cancelled, 0);
  g_clear_error (&e->error);
  if (e->transport)
    dp_transport_reset (e->transport);
  e->batch = (int) context->shape[0];
  e->context = context;
  e->ext_cancel = cancel;

  g_mutex_lock (&e->stats_lock);
  memset (&e->stats, 0, sizeof e->stats);
  e->stats.first_frame_seconds = -1;
  e->stats.running = TRUE;
  e->run_start_us = g_get_monotonic_time ();
  for (int r = 0; r < e->n; r++) {
    e->st[r].busy_us = e->st[r].idle_us = e->st[r].passes = 0;
    e->st[r].buffer_bytes = e->st[r].cache_bytes = 0;
  }
  g_mutex_unlock (&e->stats_lock);

  gboolean ok = dp_engine_conds_begin (e, context, err);
  for (int r = 0; r < e->n && ok; r++)
    if (dp_engine_stage_is_local (e, r))
      ok = stage_alloc_buffers (e, &e->st[r], err);
  return ok;
}

/* End of a run: the first real failure of any local stage wins over err,
 * then a cancellation; frees the buffers.  Returns the run's result. */
static gboolean
run_end (dp_engine *e, gboolean ok, GError *err, GError **error)
{
  g_mutex_lock (&e->lock);
  if (e->error) {
    g_clear_error (&err);
    err = g_error_copy (e->error);
    ok = FALSE;
  } else if (ok && dp_engine_is_cancelled (e)) {
    ok = FALSE;
  }
  g_mutex_unlock (&e->lock);
  if (!ok && !err)
    g_set_error (&err, DP_ERROR, DP_ERROR_CANCELLED, "engine: cancelled");

  if (e->transport)
    dp_transport_reset (e->transport);
  for (int r = 0; r < e->n; r++)
    if (dp_engine_stage_is_local (e, r))
      stage_free_buffers (e, &e->st[r]);
  g_mutex_lock (&e->stats_lock);
  e->stats.running = FALSE;
  e->stats.run_seconds = (g_get_monotonic_time () - e->run_start_us) / 1e6;
  e->stats.blocks_in_flight = 0;
  g_mutex_unlock (&e->stats_lock);
  dp_engine_conds_end (e);
  e->context = NULL;
  e->ext_cancel = NULL;
  if (!ok)
    g_propagate_error (error, err);
  else
    g_clear_error (&err);
  return ok;
}

static gboolean
check_context (const dp_tensor *context, GError **error)
{
  if (!context || !context->data || context->ndim != 3 || context->shape[0] < 1 || context->shape[0] > 2) {
    g_set_error (error, DP_ERROR, DP_ERROR_SHAPE,
                 "engine: the text context must be a host tensor [B, tokens, text_dim] with B 1 or 2");
    return FALSE;
  }
  return TRUE;
}

gboolean
dp_engine_run (dp_engine *e, const dp_tensor *context, dp_wan_vae *vae, const dp_engine_output *out,
               GError **error)
{
  static const dp_engine_output no_output = { 0 };
  if (!check_context (context, error))
    return FALSE;
  if (!dp_engine_stage_is_local (e, 0)) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID,
                 "engine: this process runs stage %d; stage 0's process runs the video (dp_engine_run_stage here)",
                 e->local_stage);
    return FALSE;
  }
  if (vae && dp_wan_vae_get_config (vae)->z_dim != e->cfg.out_channels) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "engine: the VAE decodes %d latent channels, the model makes %d",
                 dp_wan_vae_get_config (vae)->z_dim, e->cfg.out_channels);
    return FALSE;
  }
  GError *err = NULL;
  gboolean ok = run_begin (e, context, out ? out->cancel : NULL, &err);
  int started = 0;
  /* Threads for the other stages of this process (none when they run in
   * other processes). */
  for (int r = 1; r < e->n && ok && e->local_stage < 0; r++) {
    char name[16];
    g_snprintf (name, sizeof name, "dp-stage-%d", r);
    e->st[r].thread = g_thread_try_new (name, dp_engine_stage_thread, &e->st[r], &err);
    if (!e->st[r].thread) {
      g_prefix_error (&err, "engine: ");
      ok = FALSE;
      break;
    }
    started++;
  }
  if (ok)
    ok = dp_engine_drive (e, vae, out ? out : &no_output, &err);
  if (!ok)
    dp_engine_fail (e, err ? g_error_copy (err) : NULL);
  for (int r = 1; r <= started; r++) {
    g_thread_join (e->st[r].thread);
    e->st[r].thread = NULL;
  }
  return run_end (e, ok, err, error);
}

gboolean
dp_engine_run_stage (dp_engine *e, const dp_tensor *context, const gint *cancel, GError **error)
{
  if (!check_context (context, error))
    return FALSE;
  if (e->local_stage <= 0) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID,
                 "engine: dp_engine_run_stage runs one stage (not stage 0) of a pipeline over processes");
    return FALSE;
  }
  GError *err = NULL;
  gboolean ok = run_begin (e, context, cancel, &err);
  if (ok)
    ok = dp_engine_stage_main (&e->st[e->local_stage], &err);
  if (!ok)
    dp_engine_fail (e, err ? g_error_copy (err) : NULL);
  return run_end (e, ok, err, error);
}
