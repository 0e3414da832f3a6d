/* DualParal engine: the loops of stages 1..N-1, each on its own thread
 * (stage 0's is engine_run.c).
 *
 * Every stage walks the same pass sequence (dp_block_schedule_next), so no
 * message carries a header: the k-th hidden state from stage r - 1 is pass
 * k.  Two hidden-state buffers per stage: the receive of pass k + 1 is
 * posted before pass k is computed, so the transfer overlaps the compute.
 * The order of the waits keeps the ring of stages free of deadlock under
 * rendezvous semantics (transport.h): a stage only waits for a send of pass
 * k - 1 before posting the receive of pass k + 1, and the last stage only
 * for stage 0 to have posted the receive of prediction k - 2 (stage 0 keeps
 * two posted and bounds the passes in flight, engine_run.c). */
#include "engine/engine_private.h"

static gboolean
check_cancel (dp_engine *e, GError **error)
{
  if (!dp_engine_is_cancelled (e))
    return TRUE;
  g_set_error (error, DP_ERROR, DP_ERROR_CANCELLED, "engine: cancelled");
  return FALSE;
}

static gboolean
wait_req (dp_engine *e, engine_stage *st, dp_transport_req **req, gint64 *t0, GError **error)
{
  if (!*req)
    return TRUE;
  gboolean ok = dp_transport_wait (e->transport, *req, error);
  *req = NULL;
  dp_engine_stage_account (e, st, FALSE, t0);
  return ok;
}

/* Runs the stage's layers (and on the last stage the head into *velocity)
 * for pass p on hidden. */
static gboolean
compute_pass (dp_engine *e, engine_stage *st, const dp_block_pass *p, dp_tensor *hidden, dp_tensor *velocity,
              GError **error)
{
  dp_wan_span span;
  const float t = (float) e->schedule->timesteps[p->step];
  double guidance = 1.0;
  /* The block's own conditioning (prompt changes: blocks in flight may
   * hold different ones). */
  /* Two experts: the one of the block's step (blocks in flight sit at
   * different steps, so passes in a row may use different experts). */
  dp_wan_dit *dit = dp_engine_stage_expert (e, st, p->step);
  if (!dp_engine_stage_use_cond (e, st, p->block, p->queue_lo, p->step, &guidance, error) ||
      !dp_engine_pass_span (e, st, p, &span, error) || !dp_wan_dit_run_layers (dit, &span, t, hidden, error))
    return FALSE;
  if (velocity && !dp_wan_dit_head (dit, &span, t, (float) guidance, hidden, velocity, error))
    return FALSE;
  return st->be->ops->sync (st->be, error);
}

static gboolean
stage_loop (dp_engine *e, engine_stage *st, GError **error)
{
  dp_transport *t = e->transport;
  const int r = st->index;
  const gboolean last = r == e->n - 1;
  dp_transport_req *recv[2] = { NULL, NULL }, *send[2] = { NULL, NULL };
  dp_tensor hid[2], vel[2];
  dp_block_pass p, next;
  gint64 t0 = g_get_monotonic_time ();
  gboolean ok = TRUE, more = TRUE;

  dp_block_schedule_first (&e->bs, &p);
  hid[0] = dp_engine_hidden_view (e, st, 0, p.window_frames);
  recv[0] = dp_transport_irecv (t, r, r - 1, &hid[0], error);
  ok = recv[0] != NULL;
  while (ok && more) {
    const int k = (int) (p.index & 1);
    ok = check_cancel (e, error) && wait_req (e, st, &recv[k], &t0, error);
    if (!ok)
      break;
    next = p;
    more = dp_block_schedule_next (&e->bs, &next);
    if (more) {
      /* The other buffer held pass index - 1: free once its send is done
       * (the last stage consumed it itself). */
      if (!last && !wait_req (e, st, &send[1 - k], &t0, error)) {
        ok = FALSE;
        break;
      }
      hid[1 - k] = dp_engine_hidden_view (e, st, 1 - k, next.window_frames);
      recv[1 - k] = dp_transport_irecv (t, r, r - 1, &hid[1 - k], error);
      if (!(ok = recv[1 - k] != NULL))
        break;
    }
    if (last) {
      /* The prediction buffer of pass index - 2 must have left. */
      if (!(ok = wait_req (e, st, &send[k], &t0, error)))
        break;
      vel[k] = dp_engine_velocity_view (e, st, k, p.own_frames);
    }
    ok = compute_pass (e, st, &p, &hid[k], last ? &vel[k] : NULL, error);
    g_mutex_lock (&e->stats_lock);
    st->passes++;
    g_mutex_unlock (&e->stats_lock);
    dp_engine_stage_account (e, st, TRUE, &t0);
    if (!ok)
      break;
    send[k] = last ? dp_transport_isend (t, r, 0, &vel[k], error) : dp_transport_isend (t, r, r + 1, &hid[k], error);
    ok = send[k] != NULL;
    if (ok && more)
      p = next;
  }
  for (int k = 0; k < 2 && ok; k++)
    ok = wait_req (e, st, &send[k], &t0, error);
  /* On failure, requests still posted are dropped by dp_transport_reset()
   * once every stage has stopped; the buffers outlive that. */
  return ok;
}

gboolean
dp_engine_stage_main (engine_stage *st, GError **error)
{
  dp_engine *e = st->engine;
  gint64 t0 = g_get_monotonic_time ();
  gboolean ok = dp_engine_stage_prepare (e, st, error);
  dp_engine_stage_account (e, st, TRUE, &t0);
  if (ok)
    ok = stage_loop (e, st, error);
  if (!ok && error && *error && !g_error_matches (*error, DP_ERROR, DP_ERROR_CANCELLED))
    g_prefix_error (error, "stage %d: ", st->index);
  return ok;
}

gpointer
dp_engine_stage_thread (gpointer data)
{
  engine_stage *st = data;
  GError *err = NULL;
  if (!dp_engine_stage_main (st, &err))
    dp_engine_fail (st->engine, err);
  return NULL;
}
