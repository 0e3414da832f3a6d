/* DualParal engine: the in-process transport (transport.h).
 *
 * Stages are threads of one process and buffers are host memory.  Each
 * directed link (src -> dst) has a FIFO of posted sends and one of posted
 * receives; a new operation is matched against the head of the opposite
 * FIFO, and whoever posts second copies the bytes (outside the lock) and
 * completes both.  So a send completes as soon as its receive is posted:
 * rendezvous, like NCCL, with one memcpy per message and no buffering.
 * Requests come from a fixed pool per stage: posting allocates nothing. */
#include "dualparal/transport.h"
#include "engine/req_queue.h"

#include <string.h>

typedef enum {
  REQ_FREE = 0,
  REQ_QUEUED,  /* posted, waiting for its peer */
  REQ_COPYING, /* matched, bytes being copied */
  REQ_DONE,
  REQ_FAILED,
} req_state;

struct dp_transport_req {
  dp_req_node node; /* first: the link queues (req_queue.h) */
  int owner;        /* stage that posted it */
  gboolean is_send;
  int src, dst;
  void *data;
  size_t nbytes;
  req_state state;
  GError *error; /* REQ_FAILED */
};
G_STATIC_ASSERT (G_STRUCT_OFFSET (dp_transport_req, node) == 0);

typedef struct {
  GMutex lock;
  GCond cond;
  gboolean cancelled;
  int n;
  dp_req_queues *links;    /* [src * n + dst] */
  dp_transport_req *pool;  /* [stage * DP_TRANSPORT_MAX_PENDING + k] */
  uint64_t *sent, *received;
} inproc;

static dp_transport_req *
take_req (inproc *p, int owner)
{
  dp_transport_req *base = p->pool + (size_t) owner * DP_TRANSPORT_MAX_PENDING;
  for (int k = 0; k < DP_TRANSPORT_MAX_PENDING; k++)
    if (base[k].state == REQ_FREE)
      return &base[k];
  return NULL;
}

static void
release_req (dp_transport_req *r)
{
  g_clear_error (&r->error);
  r->state = REQ_FREE;
  r->data = NULL;
  r->node.next = NULL;
}

/* Called with the lock held for a matched pair; copies with the lock
 * released and completes both. */
static void
complete_pair (inproc *p, dp_transport_req *send, dp_transport_req *recv)
{
  send->state = recv->state = REQ_COPYING;
  gboolean ok = send->nbytes == recv->nbytes;
  g_mutex_unlock (&p->lock);
  if (ok)
    memcpy (recv->data, send->data, send->nbytes);
  g_mutex_lock (&p->lock);
  if (ok) {
    send->state = recv->state = REQ_DONE;
    p->sent[send->src] += send->nbytes;
    p->received[recv->dst] += recv->nbytes;
  } else {
    for (int k = 0; k < 2; k++) {
      dp_transport_req *r = k ? recv : send;
      r->state = REQ_FAILED;
      g_set_error (&r->error, DP_ERROR, DP_ERROR_SHAPE,
                   "transport inproc: stage %d sends %zu bytes to stage %d, which receives %zu bytes", send->src,
                   send->nbytes, recv->dst, recv->nbytes);
    }
  }
  g_cond_broadcast (&p->cond);
}

static dp_transport_req *
post (dp_transport *t, gboolean is_send, int src, int dst, void *data, size_t nbytes, GError **error)
{
  inproc *p = t->priv;
  const int owner = is_send ? src : dst;
  g_mutex_lock (&p->lock);
  if (p->cancelled) {
    g_mutex_unlock (&p->lock);
    g_set_error (error, DP_ERROR, DP_ERROR_CANCELLED, "transport inproc: cancelled");
    return NULL;
  }
  dp_transport_req *r = take_req (p, owner);
  if (!r) {
    g_mutex_unlock (&p->lock);
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID,
                 "transport inproc: stage %d has %d requests outstanding already (the most)", owner,
                 DP_TRANSPORT_MAX_PENDING);
    return NULL;
  }
  r->owner = owner;
  r->is_send = is_send;
  r->src = src;
  r->dst = dst;
  r->data = data;
  r->nbytes = nbytes;
  r->state = REQ_QUEUED;
  dp_transport_req *peer =
    (dp_transport_req *) dp_req_match_or_queue (&p->links[src * p->n + dst], &r->node, is_send);
  if (peer)
    complete_pair (p, is_send ? r : peer, is_send ? peer : r);
  g_mutex_unlock (&p->lock);
  return r;
}

static dp_transport_req *
inproc_isend (dp_transport *t, int src, int dst, const dp_tensor *buf, GError **error)
{
  return post (t, TRUE, src, dst, buf->data, dp_tensor_nbytes (buf), error);
}

static dp_transport_req *
inproc_irecv (dp_transport *t, int dst, int src, dp_tensor *buf, GError **error)
{
  return post (t, FALSE, src, dst, buf->data, dp_tensor_nbytes (buf), error);
}

static gboolean
inproc_wait (dp_transport *t, dp_transport_req *r, GError **error)
{
  inproc *p = t->priv;
  if (!r) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "transport inproc: wait on no request");
    return FALSE;
  }
  gboolean ok = FALSE;
  g_mutex_lock (&p->lock);
  for (;;) {
    if (r->state == REQ_DONE) {
      ok = TRUE;
      break;
    }
    if (r->state == REQ_FAILED) {
      g_propagate_error (error, r->error);
      r->error = NULL;
      break;
    }
    if (r->state == REQ_QUEUED && p->cancelled) {
      /* Never matched: nobody else touches it once it leaves the FIFO. */
      dp_req_unqueue (&p->links[r->src * p->n + r->dst], &r->node, r->is_send);
      g_set_error (error, DP_ERROR, DP_ERROR_CANCELLED, "transport inproc: cancelled");
      break;
    }
    g_cond_wait (&p->cond, &p->lock); /* QUEUED, or COPYING (finishes regardless of cancel) */
  }
  release_req (r);
  g_mutex_unlock (&p->lock);
  return ok;
}

static void
inproc_cancel (dp_transport *t)
{
  inproc *p = t->priv;
  g_mutex_lock (&p->lock);
  p->cancelled = TRUE;
  g_cond_broadcast (&p->cond);
  g_mutex_unlock (&p->lock);
}

static void
inproc_reset (dp_transport *t)
{
  inproc *p = t->priv;
  g_mutex_lock (&p->lock);
  for (int i = 0; i < p->n * p->n; i++)
    memset (&p->links[i], 0, sizeof p->links[i]);
  for (int i = 0; i < p->n * DP_TRANSPORT_MAX_PENDING; i++)
    release_req (&p->pool[i]);
  p->cancelled = FALSE;
  g_mutex_unlock (&p->lock);
}

static void
inproc_bytes (dp_transport *t, int stage, uint64_t *sent, uint64_t *received)
{
  inproc *p = t->priv;
  g_mutex_lock (&p->lock);
  gboolean ok = stage >= 0 && stage < p->n;
  if (sent)
    *sent = ok ? p->sent[stage] : 0;
  if (received)
    *received = ok ? p->received[stage] : 0;
  g_mutex_unlock (&p->lock);
}

static void
inproc_destroy (dp_transport *t)
{
  inproc *p = t->priv;
  for (int i = 0; i < p->n * DP_TRANSPORT_MAX_PENDING; i++)
    g_clear_error (&p->pool[i].error);
  g_mutex_clear (&p->lock);
  g_cond_clear (&p->cond);
  g_free (p->links);
  g_free (p->pool);
  g_free (p->sent);
  g_free (p->received);
  g_free (p);
  g_free (t);
}

static const dp_transport_ops inproc_ops = {
  .isend = inproc_isend,
  .irecv = inproc_irecv,
  .wait = inproc_wait,
  .cancel = inproc_cancel,
  .reset = inproc_reset,
  .bytes = inproc_bytes,
  .destroy = inproc_destroy,
};

dp_transport *
dp_transport_new_inproc (int n_stages, GError **error)
{
  if (n_stages < 1 || n_stages > 4096) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "transport inproc: %d stages", n_stages);
    return NULL;
  }
  inproc *p = g_new0 (inproc, 1);
  g_mutex_init (&p->lock);
  g_cond_init (&p->cond);
  p->n = n_stages;
  p->links = g_new0 (dp_req_queues, (size_t) n_stages * n_stages);
  p->pool = g_new0 (dp_transport_req, (size_t) n_stages * DP_TRANSPORT_MAX_PENDING);
  p->sent = g_new0 (uint64_t, n_stages);
  p->received = g_new0 (uint64_t, n_stages);
  dp_transport *t = g_new0 (dp_transport, 1);
  t->ops = &inproc_ops;
  t->name = "inproc";
  t->n_stages = n_stages;
  t->priv = p;
  return t;
}
