/* DualParal engine: conditionings (engine.h, dp_engine_cond) and which
 * block of a run has which (docs/algorithm.md, "Prompt changes").
 *
 * Stage 0 decides a block's conditioning when the block enters the queue
 * (dp_engine_output.block_cond) and appends it to the run's list of change
 * points (first block, conditioning), in block order.  Every stage looks
 * up the conditioning of the block of each pass there and makes its DiT use
 * that context (dp_wan_dit_use_context: a lookup when one of its slots
 * holds it, else the cross-attention K/V are computed, between passes).
 * The lookup of a pass happens after stage 0 has started the block (the
 * stage got the pass's hidden states through the transport, which orders
 * it after stage 0's append).  Entries no stage can need again (every
 * stage's current queue starts after them) are dropped, so an endless run
 * with changes holds only the conditionings of the blocks in flight. */
#include "engine/engine_private.h"

#include <math.h>
#include <string.h>

struct dp_engine_cond {
  gint refs;
  uint64_t id;
  double guidance;
  dp_tensor context; /* host F32, owned */
};

static uint64_t next_cond_id = 1; /* atomic (GCC builtins: GLib has no 64-bit atomics); 0 means "no key" to the DiT */

static dp_engine_cond *
cond_alloc (const int64_t shape[3], double guidance, GError **error)
{
  dp_engine_cond *c = g_new0 (dp_engine_cond, 1);
  c->refs = 1;
  c->guidance = guidance;
  c->id = __atomic_fetch_add (&next_cond_id, 1, __ATOMIC_RELAXED);
  const size_t n = (size_t) shape[0] * shape[1] * shape[2];
  float *data = g_try_malloc (n * sizeof (float));
  if (!data) {
    g_set_error (error, DP_ERROR, DP_ERROR_NOMEM, "engine: no memory for a text context of %zu values", n);
    g_free (c);
    return NULL;
  }
  c->context = dp_tensor_view (data, DP_F32, 3, shape);
  return c;
}

dp_engine_cond *
dp_engine_cond_new (const dp_tensor *context, double guidance, GError **error)
{
  if (!context || !context->data || context->ndim != 3 || context->dtype != DP_F32 || context->shape[0] < 1 ||
      context->shape[0] > 2 || context->shape[1] < 1 || context->shape[2] < 1) {
    g_set_error (error, DP_ERROR, DP_ERROR_SHAPE,
                 "engine: a conditioning's context must be a host F32 tensor [B, tokens, text_dim], B 1 or 2");
    return NULL;
  }
  if (!isfinite (guidance) || guidance < 1.0) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "engine: guidance %g is not valid (1 or more)", guidance);
    return NULL;
  }
  dp_engine_cond *c = cond_alloc (context->shape, guidance, error);
  if (c)
    memcpy (c->context.data, context->data, dp_tensor_nbytes (&c->context));
  return c;
}

dp_engine_cond *
dp_engine_cond_blend (const dp_engine_cond *a, const dp_engine_cond *b, double t, GError **error)
{
  for (int i = 0; i < 3; i++)
    if (a->context.shape[i] != b->context.shape[i]) {
      g_set_error (error, DP_ERROR, DP_ERROR_SHAPE, "engine: cannot blend text contexts of different shapes");
      return NULL;
    }
  dp_engine_cond *c = cond_alloc (a->context.shape, (1.0 - t) * a->guidance + t * b->guidance, error);
  if (!c)
    return NULL;
  const float *x = a->context.data, *y = b->context.data;
  float *o = c->context.data;
  const float ft = (float) t, fs = (float) (1.0 - t);
  const int64_t n = dp_tensor_nelem (&c->context);
  for (int64_t i = 0; i < n; i++)
    o[i] = fs * x[i] + ft * y[i];
  return c;
}

dp_engine_cond *
dp_engine_cond_ref (dp_engine_cond *c)
{
  g_atomic_int_inc (&c->refs);
  return c;
}

void
dp_engine_cond_unref (dp_engine_cond *c)
{
  if (c && g_atomic_int_dec_and_test (&c->refs)) {
    g_free (c->context.data);
    g_free (c);
  }
}

uint64_t
dp_engine_cond_id (const dp_engine_cond *c)
{
  return c->id;
}

const dp_tensor *
dp_engine_cond_context (const dp_engine_cond *c)
{
  return &c->context;
}

double
dp_engine_cond_guidance (const dp_engine_cond *c)
{
  return c->guidance;
}

/* ------------------------------------------------------------ a run's list */

static void prune_locked (dp_engine *e);

gboolean
dp_engine_conds_begin (dp_engine *e, const dp_tensor *context, GError **error)
{
  dp_engine_cond *c0 = dp_engine_cond_new (context, MAX (e->params.guidance, 1.0), error);
  if (!c0)
    return FALSE;
  g_mutex_lock (&e->cond_lock);
  if (!e->conds)
    e->conds = g_array_new (FALSE, FALSE, sizeof (dp_engine_cond_entry));
  dp_engine_cond_entry first = { 0, c0 };
  g_array_append_val (e->conds, first);
  for (int r = 0; r < e->n; r++)
    e->st[r].low_block = 0;
  if (e->follow_conds) {
    /* What the worker was told before the run began (conds_known kept). */
    for (guint i = 0; e->conds_early && i < e->conds_early->len; i++)
      g_array_append_val (e->conds, g_array_index (e->conds_early, dp_engine_cond_entry, i));
    if (e->conds_early)
      g_array_set_size (e->conds_early, 0);
  } else {
    e->conds_known = G_MAXINT64;
  }
  e->follow_conds = FALSE;
  e->conds_begun = TRUE;
  g_mutex_unlock (&e->cond_lock);
  return TRUE;
}

/* cond_lock held. */
static void
clear_early_locked (dp_engine *e)
{
  for (guint i = 0; e->conds_early && i < e->conds_early->len; i++)
    dp_engine_cond_unref (g_array_index (e->conds_early, dp_engine_cond_entry, i).cond);
  if (e->conds_early)
    g_array_set_size (e->conds_early, 0);
}

void
dp_engine_follow_conds (dp_engine *e)
{
  g_mutex_lock (&e->cond_lock);
  clear_early_locked (e);
  e->follow_conds = TRUE;
  e->conds_known = 0;
  g_mutex_unlock (&e->cond_lock);
}

gboolean
dp_engine_stage_add_cond (dp_engine *e, int64_t block, dp_engine_cond *cond, GError **error)
{
  g_mutex_lock (&e->cond_lock);
  gboolean ok = block > e->conds_known && e->conds_known != G_MAXINT64;
  if (!ok) {
    g_mutex_unlock (&e->cond_lock);
    dp_engine_cond_unref (cond);
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID,
                 "engine: the conditioning of block %" G_GINT64_FORMAT " comes out of order or outside a run that "
                 "follows them", block);
    return FALSE;
  }
  if (cond && !e->conds_begun) {
    if (!e->conds_early)
      e->conds_early = g_array_new (FALSE, FALSE, sizeof (dp_engine_cond_entry));
    dp_engine_cond_entry entry = { block, cond };
    g_array_append_val (e->conds_early, entry);
  } else if (cond) {
    const dp_tensor *run = &g_array_index (e->conds, dp_engine_cond_entry, 0).cond->context;
    for (int i = 0; i < 3; i++)
      if (cond->context.shape[i] != run->shape[i]) {
        g_mutex_unlock (&e->cond_lock);
        dp_engine_cond_unref (cond);
        g_set_error (error, DP_ERROR, DP_ERROR_SHAPE, "engine: block %" G_GINT64_FORMAT "'s text context has "
                     "another shape than the run's", block);
        return FALSE;
      }
    dp_engine_cond_entry entry = { block, cond };
    g_array_append_val (e->conds, entry);
    prune_locked (e);
  }
  e->conds_known = block;
  g_cond_broadcast (&e->cond_cv);
  g_mutex_unlock (&e->cond_lock);
  return TRUE;
}

void
dp_engine_conds_end (dp_engine *e)
{
  g_mutex_lock (&e->cond_lock);
  for (guint i = 0; e->conds && i < e->conds->len; i++)
    dp_engine_cond_unref (g_array_index (e->conds, dp_engine_cond_entry, i).cond);
  if (e->conds)
    g_array_set_size (e->conds, 0);
  clear_early_locked (e);
  e->conds_begun = FALSE;
  e->follow_conds = FALSE;
  e->conds_known = G_MAXINT64;
  g_cond_broadcast (&e->cond_cv);
  g_mutex_unlock (&e->cond_lock);
}

/* Entries before the one covering the lowest block any local stage may
 * still run.  cond_lock held. */
static void
prune_locked (dp_engine *e)
{
  int64_t low = G_MAXINT64;
  for (int r = 0; r < e->n; r++)
    if (dp_engine_stage_is_local (e, r))
      low = MIN (low, e->st[r].low_block);
  guint drop = 0;
  while (drop + 1 < e->conds->len && g_array_index (e->conds, dp_engine_cond_entry, drop + 1).first_block <= low)
    drop++;
  for (guint i = 0; i < drop; i++)
    dp_engine_cond_unref (g_array_index (e->conds, dp_engine_cond_entry, i).cond);
  if (drop)
    g_array_remove_range (e->conds, 0, drop);
}

gboolean
dp_engine_conds_add (dp_engine *e, int64_t block, dp_engine_cond *cond, GError **error)
{
  const dp_tensor *run = e->context, *ctx = &cond->context;
  if (ctx->shape[0] != run->shape[0] || ctx->shape[1] != run->shape[1] || ctx->shape[2] != run->shape[2]) {
    g_set_error (error, DP_ERROR, DP_ERROR_SHAPE,
                 "engine: block %" G_GINT64_FORMAT "'s text context is [%" G_GINT64_FORMAT ", %" G_GINT64_FORMAT
                 ", %" G_GINT64_FORMAT "], the run's [%" G_GINT64_FORMAT ", %" G_GINT64_FORMAT ", %" G_GINT64_FORMAT
                 "] (guidance on / off and the text length are fixed for a run)",
                 block, ctx->shape[0], ctx->shape[1], ctx->shape[2], run->shape[0], run->shape[1], run->shape[2]);
    dp_engine_cond_unref (cond);
    return FALSE;
  }
  g_mutex_lock (&e->cond_lock);
  const dp_engine_cond_entry *last = &g_array_index (e->conds, dp_engine_cond_entry, e->conds->len - 1);
  if (last->first_block >= block) {
    g_mutex_unlock (&e->cond_lock);
    dp_engine_cond_unref (cond);
    g_set_error (error, DP_ERROR, DP_ERROR_FAILED, "engine: internal error: conditioning of block %" G_GINT64_FORMAT
                 " set out of order", block);
    return FALSE;
  }
  dp_engine_cond_entry entry = { block, cond };
  g_array_append_val (e->conds, entry);
  prune_locked (e);
  g_mutex_unlock (&e->cond_lock);
  g_mutex_lock (&e->stats_lock);
  e->stats.cond_changes++;
  g_mutex_unlock (&e->stats_lock);
  return TRUE;
}

/* A new reference to the conditioning of block; records that stage st
 * will not look up blocks below low again.  A worker waits until rank 0
 * has said what block's conditioning is (the control channel and the data
 * links are different sockets: the pass may come first); NULL when the run
 * is cancelled meanwhile. */
static dp_engine_cond *
conds_get (dp_engine *e, engine_stage *st, int64_t block, int64_t low)
{
  dp_engine_cond *c = NULL;
  g_mutex_lock (&e->cond_lock);
  st->low_block = MAX (st->low_block, low);
  while (block > e->conds_known) {
    if (dp_engine_is_cancelled (e)) {
      g_mutex_unlock (&e->cond_lock);
      return NULL;
    }
    g_cond_wait_until (&e->cond_cv, &e->cond_lock, g_get_monotonic_time () + 50 * G_TIME_SPAN_MILLISECOND);
  }
  for (guint i = e->conds->len; i-- > 0;) {
    const dp_engine_cond_entry *en = &g_array_index (e->conds, dp_engine_cond_entry, i);
    if (en->first_block <= block) {
      c = dp_engine_cond_ref (en->cond);
      break;
    }
  }
  g_mutex_unlock (&e->cond_lock);
  return c;
}

gboolean
dp_engine_stage_use_cond (dp_engine *e, engine_stage *st, int64_t block, int64_t low, int step,
                          double *guidance, GError **error)
{
  dp_engine_cond *c = conds_get (e, st, block, low);
  if (!c && dp_engine_is_cancelled (e)) {
    g_set_error (error, DP_ERROR, DP_ERROR_CANCELLED, "engine: cancelled");
    return FALSE;
  }
  if (!c) {
    g_set_error (error, DP_ERROR, DP_ERROR_FAILED,
                 "engine: internal error: stage %d has no conditioning for block %" G_GINT64_FORMAT, st->index, block);
    return FALSE;
  }
  const gint64 t0 = g_get_monotonic_time ();
  gboolean computed = FALSE, computed2 = FALSE;
  dp_wan_dit *dit = step >= 0 ? dp_engine_stage_expert (e, st, step) : st->dit;
  gboolean ok = dp_wan_dit_use_context (dit, c->id, &c->context, &computed, error);
  if (ok && step < 0 && st->dit2)
    ok = dp_wan_dit_use_context (st->dit2, c->id, &c->context, &computed2, error);
  if (ok && (computed || computed2))
    ok = st->be->ops->sync (st->be, error);
  if (computed || computed2) {
    g_mutex_lock (&e->stats_lock);
    e->stats.contexts_computed += (computed ? 1 : 0) + (computed2 ? 1 : 0);
    e->stats.context_seconds += (g_get_monotonic_time () - t0) / 1e6;
    g_mutex_unlock (&e->stats_lock);
  }
  if (guidance)
    *guidance = dit == st->dit2 && e->params.guidance_2 > 0.0 ? e->params.guidance_2 : c->guidance;
  dp_engine_cond_unref (c);
  return ok;
}
