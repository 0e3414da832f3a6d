/* DualParal engine: the per-stage feature cache (engine_private.h). */
#include "engine/engine_private.h"

#include <string.h>

gboolean
dp_feature_cache_init (dp_feature_cache *c, dp_backend *be, int n_layers, int batch, int frames,
                       int64_t tokens_per_frame, int dim, GError **error)
{
  memset (c, 0, sizeof *c);
  c->be = be;
  c->n_layers = n_layers;
  c->frames = frames;
  c->held_iteration = c->held_block = -1;
  if (n_layers == 0 || frames == 0)
    return TRUE;
  int64_t shape[4] = { n_layers, batch, frames * tokens_per_frame, dim };
  c->k = dp_backend_tensor_new (be, be->act_dtype, 4, shape);
  c->v = dp_backend_tensor_new (be, be->act_dtype, 4, shape);
  if (!c->k.data || !c->v.data) {
    dp_backend_check (be, error);
    g_prefix_error (error, "engine: feature cache of %d layers x %d frames: ", n_layers, frames);
    dp_feature_cache_clear (c);
    return FALSE;
  }
  return TRUE;
}

void
dp_feature_cache_clear (dp_feature_cache *c)
{
  if (c->k.data)
    dp_backend_tensor_free (c->be, &c->k);
  if (c->v.data)
    dp_backend_tensor_free (c->be, &c->v);
  memset (&c->k, 0, sizeof c->k);
  memset (&c->v, 0, sizeof c->v);
  c->held_iteration = c->held_block = -1;
}

size_t
dp_feature_cache_bytes (const dp_feature_cache *c)
{
  return (c->k.data ? dp_tensor_nbytes (&c->k) : 0) + (c->v.data ? dp_tensor_nbytes (&c->v) : 0);
}

gboolean
dp_feature_cache_bind (dp_feature_cache *c, const dp_block_pass *p, const int *positions, dp_wan_span *span,
                       GError **error)
{
  if (!c->k.data) /* no local layer or no context: nothing to attend or export */
    return TRUE;
  if (p->cache_in) {
    if (c->held_iteration != p->iteration || c->held_block != p->block + 1) {
      g_set_error (error, DP_ERROR, DP_ERROR_FAILED,
                   "engine: internal error: the feature cache holds block %" G_GINT64_FORMAT " of iteration %"
                   G_GINT64_FORMAT ", pass %" G_GINT64_FORMAT " (block %" G_GINT64_FORMAT ") needs block %"
                   G_GINT64_FORMAT " of iteration %" G_GINT64_FORMAT,
                   c->held_block, c->held_iteration, p->index, p->block, p->block + 1, p->iteration);
      return FALSE;
    }
    span->extra_frames = c->frames;
    span->extra_pos = positions + p->window_frames;
    span->extra_k = &c->k;
    span->extra_v = &c->v;
  }
  if (p->cache_out) {
    span->export_first = p->context_frames;
    span->export_frames = c->frames;
    span->export_k = &c->k;
    span->export_v = &c->v;
    c->held_iteration = p->iteration;
    c->held_block = p->block;
  } else {
    c->held_iteration = c->held_block = -1;
  }
  return TRUE;
}
