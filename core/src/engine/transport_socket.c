/* DualParal engine: the socket transport (transport.h), for stages in
 * different processes (docs/distributed.md).
 *
 * This process runs one stage r of the ring; one TCP stream carries its
 * messages to stage (r + 1) % n and another brings those of stage
 * (r - 1 + n) % n.  Each stream is one ordered message sequence (the k-th
 * send fills the k-th receive, as the contract asks), written by a sender
 * thread and read by a receiver thread, so transfers overlap the stage's
 * compute and a send completes once the kernel has its bytes (a buffered
 * rendezvous: stronger than the contract needs).
 *
 * A message is a 16-byte header (magic, wire dtype, element count, all
 * little-endian) and the elements.  Hidden states may travel as BF16
 * (half the bytes, rounded to nearest even); predictions (to stage 0)
 * always travel as F32.  The receiver checks the count and the dtype
 * against its buffer: a mismatch fails with DP_ERROR_SHAPE.
 *
 * Memory: a host-memory backend sends straight from the tensor and
 * receives straight into it (F32 wire).  Otherwise (a GPU stage, or BF16 on
 * the wire) the posting thread stages the bytes in a host buffer of the
 * request slot (grown once, reused): isend copies / converts the tensor
 * there, wait copies / converts a received message into the tensor.  Only
 * the posting thread touches the backend.
 *
 * The streams are attached per run (dp_transport_socket_attach) and
 * detached after it; cancel makes every wait fail at once (the I/O threads
 * are interrupted through a GCancellable), so a stream may be mid-message
 * after a cancel: it is never reused (the next run attaches new ones). */
#include "dualparal/transport.h"
#include "engine/req_queue.h"

#include <string.h>

#include <gio/gio.h>

#define WIRE_MAGIC 0x534d5044u /* "DPMS" */

typedef enum {
  REQ_FREE = 0,
  REQ_POSTED, /* in its direction's queue or being transferred */
  REQ_DONE,
  REQ_FAILED,
} req_state;

struct dp_transport_req {
  dp_req_node node; /* first: the direction's queue */
  gboolean is_send;
  dp_tensor buf;    /* the caller's tensor (view) */
  dp_dtype wire;    /* dtype on the wire */
  void *bytes;      /* what goes on / comes off the wire */
  size_t nbytes;
  void *staging;    /* owned, reused: host bytes when not straight from / into buf */
  size_t staging_cap;
  req_state state;
  GError *error;    /* REQ_FAILED */
};
G_STATIC_ASSERT (G_STRUCT_OFFSET (dp_transport_req, node) == 0);

/* One direction: the stream, its thread, its queue. */
typedef struct {
  struct sock *owner;
  gboolean is_send;
  int peer;            /* the stage at the other end */
  GIOStream *stream;   /* NULL: detached */
  GThread *thread;
  dp_req_fifo queue;   /* posted, in order */
  gboolean stop;       /* the thread ends once its queue is empty */
  dp_transport_req pool[DP_TRANSPORT_MAX_PENDING];
} link_dir;

typedef struct sock {
  GMutex lock;
  GCond cond;
  int n, stage;
  dp_backend *be;
  dp_dtype hidden_wire;
  gboolean cancelled;
  GCancellable *cancellable;
  link_dir out, in;
  uint64_t sent, received;
} sock;

static const char *
dir_name (const link_dir *d, char *buf, size_t len)
{
  const sock *s = d->owner;
  if (d->is_send)
    g_snprintf (buf, len, "stage %d -> %d", s->stage, d->peer);
  else
    g_snprintf (buf, len, "stage %d <- %d", s->stage, d->peer);
  return buf;
}

/* Called by the I/O thread with the lock held. */
static void
finish (sock *s, dp_transport_req *r, GError *error)
{
  if (error) {
    r->state = REQ_FAILED;
    r->error = error;
  } else {
    r->state = REQ_DONE;
    if (r->is_send)
      s->sent += r->nbytes;
    else
      s->received += r->nbytes;
  }
  g_cond_broadcast (&s->cond);
}

/* An I/O failure as the engine's error: a cancel stays a cancel. */
static GError *
io_error (link_dir *d, GError *io, const char *what)
{
  char name[48];
  GError *e;
  if (g_error_matches (io, G_IO_ERROR, G_IO_ERROR_CANCELLED))
    e = g_error_new (DP_ERROR, DP_ERROR_CANCELLED, "transport socket: %s: cancelled", dir_name (d, name, sizeof name));
  else
    e = g_error_new (DP_ERROR, DP_ERROR_IO, "transport socket: %s: %s: %s", dir_name (d, name, sizeof name), what,
                     io ? io->message : "the connection closed (the peer process stopped)");
  g_clear_error (&io);
  return e;
}

static GError *
transfer (sock *s, link_dir *d, dp_transport_req *r)
{
  GError *io = NULL;
  char name[48];
  guint32 head[4];
  if (d->is_send) {
    const uint64_t count = dp_tensor_nelem (&r->buf);
    head[0] = GUINT32_TO_LE (WIRE_MAGIC);
    head[1] = GUINT32_TO_LE ((guint32) r->wire);
    head[2] = GUINT32_TO_LE ((guint32) (count & 0xffffffffu));
    head[3] = GUINT32_TO_LE ((guint32) (count >> 32));
    GOutputStream *out = g_io_stream_get_output_stream (d->stream);
    if (!g_output_stream_write_all (out, head, sizeof head, NULL, s->cancellable, &io) ||
        !g_output_stream_write_all (out, r->bytes, r->nbytes, NULL, s->cancellable, &io) ||
        !g_output_stream_flush (out, s->cancellable, &io))
      return io_error (d, io, "send");
    return NULL;
  }
  GInputStream *in = g_io_stream_get_input_stream (d->stream);
  gsize got = 0;
  if (!g_input_stream_read_all (in, head, sizeof head, &got, s->cancellable, &io) || got != sizeof head)
    return io_error (d, io, "receive");
  const uint64_t count = GUINT32_FROM_LE (head[2]) | (uint64_t) GUINT32_FROM_LE (head[3]) << 32;
  if (GUINT32_FROM_LE (head[0]) != WIRE_MAGIC)
    return g_error_new (DP_ERROR, DP_ERROR_FORMAT, "transport socket: %s: not a dualparal message (bad magic)",
                        dir_name (d, name, sizeof name));
  if (GUINT32_FROM_LE (head[1]) != (guint32) r->wire || count != (uint64_t) dp_tensor_nelem (&r->buf))
    return g_error_new (DP_ERROR, DP_ERROR_SHAPE,
                        "transport socket: %s: a message of %" G_GUINT64_FORMAT " %s elements for a buffer of %"
                        G_GINT64_FORMAT " %s elements (the processes disagree about the settings)",
                        dir_name (d, name, sizeof name), count, dp_dtype_name ((dp_dtype) GUINT32_FROM_LE (head[1])),
                        dp_tensor_nelem (&r->buf), dp_dtype_name (r->wire));
  if (!g_input_stream_read_all (in, r->bytes, r->nbytes, &got, s->cancellable, &io) || got != r->nbytes)
    return io_error (d, io, "receive");
  return NULL;
}

static gpointer
io_thread (gpointer data)
{
  link_dir *d = data;
  sock *s = d->owner;
  g_mutex_lock (&s->lock);
  for (;;) {
    while (!d->queue.head && !d->stop)
      g_cond_wait (&s->cond, &s->lock);
    if (!d->queue.head)
      break;
    dp_transport_req *r = (dp_transport_req *) d->queue.head;
    GError *err = NULL;
    if (s->cancelled) {
      err = g_error_new (DP_ERROR, DP_ERROR_CANCELLED, "transport socket: cancelled");
    } else {
      g_mutex_unlock (&s->lock);
      err = transfer (s, d, r);
      g_mutex_lock (&s->lock);
    }
    dp_req_fifo_pop (&d->queue);
    finish (s, r, err);
  }
  g_mutex_unlock (&s->lock);
  return NULL;
}

static size_t
wire_size (dp_dtype wire, int64_t count)
{
  return (size_t) count * (wire == DP_BF16 ? 2 : 4);
}

static gboolean
ensure_staging (dp_transport_req *r, size_t nbytes, GError **error)
{
  if (r->staging_cap >= nbytes)
    return TRUE;
  void *p = g_try_realloc (r->staging, nbytes);
  if (!p) {
    g_set_error (error, DP_ERROR, DP_ERROR_NOMEM, "transport socket: no memory for a %zu-byte message", nbytes);
    return FALSE;
  }
  r->staging = p;
  r->staging_cap = nbytes;
  return TRUE;
}

/* Host F32 <-> BF16 (round to nearest even; NaN stays NaN). */
static void
f32_to_bf16 (uint16_t *dst, const float *src, int64_t n)
{
  for (int64_t i = 0; i < n; i++) {
    uint32_t u;
    memcpy (&u, &src[i], 4);
    if ((u & 0x7fffffffu) > 0x7f800000u)
      dst[i] = (uint16_t) ((u >> 16) | 0x40);
    else
      dst[i] = (uint16_t) ((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
  }
}

static void
bf16_to_f32 (float *dst, const uint16_t *src, int64_t n)
{
  for (int64_t i = 0; i < n; i++) {
    uint32_t u = (uint32_t) src[i] << 16;
    memcpy (&dst[i], &u, 4);
  }
}

static dp_transport_req *
post (dp_transport *t, gboolean is_send, int self, int peer, const dp_tensor *buf, GError **error)
{
  sock *s = t->priv;
  link_dir *d = is_send ? &s->out : &s->in;
  if (self != s->stage || peer != d->peer) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID,
                 "transport socket: this process runs stage %d and %s stage %d only, not %d %s %d", s->stage,
                 is_send ? "sends to" : "receives from", d->peer, self, is_send ? "->" : "<-", peer);
    return NULL;
  }
  if (buf->dtype != DP_F32) {
    g_set_error (error, DP_ERROR, DP_ERROR_UNSUPPORTED, "transport socket: F32 buffers only, got %s",
                 dp_dtype_name (buf->dtype));
    return NULL;
  }
  g_mutex_lock (&s->lock);
  dp_transport_req *r = NULL;
  for (int k = 0; k < DP_TRANSPORT_MAX_PENDING && !r; k++)
    if (d->pool[k].state == REQ_FREE)
      r = &d->pool[k];
  gboolean attached = d->stream != NULL;
  g_mutex_unlock (&s->lock);
  if (!r) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "transport socket: more than %d requests pending on stage %d",
                 DP_TRANSPORT_MAX_PENDING, self);
    return NULL;
  }
  if (!attached) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "transport socket: stage %d has no connection to stage %d",
                 self, peer);
    return NULL;
  }
  r->is_send = is_send;
  r->buf = *buf;
  /* Predictions go to stage 0 in F32; hidden states in the chosen dtype. */
  const int dst = is_send ? peer : self;
  r->wire = dst == 0 ? DP_F32 : s->hidden_wire;
  const int64_t count = dp_tensor_nelem (buf);
  r->nbytes = wire_size (r->wire, count);
  if (s->be->host_memory && r->wire == DP_F32) {
    r->bytes = buf->data;
  } else {
    if (!ensure_staging (r, r->nbytes, error))
      return NULL;
    r->bytes = r->staging;
    if (is_send) {
      if (r->wire == DP_F32) {
        dp_tensor host = dp_tensor_view (r->staging, DP_F32, buf->ndim, buf->shape);
        s->be->ops->to_host (s->be, &host, buf);
        if (!s->be->ops->sync (s->be, error))
          return NULL;
      } else if (s->be->host_memory) {
        f32_to_bf16 (r->staging, buf->data, count);
      } else {
        dp_tensor host = dp_tensor_view (r->staging, DP_BF16, buf->ndim, buf->shape);
        s->be->ops->to_host (s->be, &host, buf);
        if (!s->be->ops->sync (s->be, error))
          return NULL;
      }
    }
  }
  g_mutex_lock (&s->lock);
  r->state = REQ_POSTED;
  dp_req_fifo_push (&d->queue, &r->node);
  g_cond_broadcast (&s->cond);
  g_mutex_unlock (&s->lock);
  return r;
}

static dp_transport_req *
sock_isend (dp_transport *t, int src, int dst, const dp_tensor *buf, GError **error)
{
  return post (t, TRUE, src, dst, buf, error);
}

static dp_transport_req *
sock_irecv (dp_transport *t, int dst, int src, dp_tensor *buf, GError **error)
{
  return post (t, FALSE, dst, src, buf, error);
}

static gboolean
sock_wait (dp_transport *t, dp_transport_req *r, GError **error)
{
  sock *s = t->priv;
  g_mutex_lock (&s->lock);
  while (r->state == REQ_POSTED && !s->cancelled)
    g_cond_wait (&s->cond, &s->lock);
  gboolean ok = r->state == REQ_DONE;
  GError *err = NULL;
  if (r->state == REQ_FAILED) {
    err = r->error;
    r->error = NULL;
  } else if (!ok) {
    err = g_error_new (DP_ERROR, DP_ERROR_CANCELLED, "transport socket: cancelled");
  }
  /* A request the thread still holds (cancelled while in transfer) is
   * released by the thread's finish() and detach; one that is done is free. */
  if (r->state != REQ_POSTED)
    r->state = REQ_FREE;
  g_mutex_unlock (&s->lock);
  if (ok && !r->is_send && r->bytes == r->staging) {
    const int64_t count = dp_tensor_nelem (&r->buf);
    if (s->be->host_memory) {
      bf16_to_f32 (r->buf.data, r->staging, count);
    } else {
      dp_tensor host = dp_tensor_view (r->staging, r->wire, r->buf.ndim, r->buf.shape);
      s->be->ops->to_device (s->be, &r->buf, &host);
      ok = s->be->ops->sync (s->be, &err);
    }
  }
  if (!ok)
    g_propagate_error (error, err);
  return ok;
}

static void
sock_cancel (dp_transport *t)
{
  sock *s = t->priv;
  g_mutex_lock (&s->lock);
  s->cancelled = TRUE;
  g_cond_broadcast (&s->cond);
  g_mutex_unlock (&s->lock);
  g_cancellable_cancel (s->cancellable);
}

/* Stops both I/O threads (after their queues drain or fail) and drops the
 * streams. */
static void
detach (sock *s)
{
  g_mutex_lock (&s->lock);
  s->out.stop = s->in.stop = TRUE;
  g_cond_broadcast (&s->cond);
  g_mutex_unlock (&s->lock);
  /* A thread blocked in I/O with no peer would never return: cancel it. */
  g_cancellable_cancel (s->cancellable);
  for (link_dir *d = &s->out; d; d = d == &s->out ? &s->in : NULL) {
    if (d->thread)
      g_thread_join (d->thread);
    d->thread = NULL;
    if (d->stream) {
      g_io_stream_close (d->stream, NULL, NULL);
      g_object_unref (d->stream);
    }
    d->stream = NULL;
    d->stop = FALSE;
    d->queue.head = d->queue.tail = NULL;
    for (int k = 0; k < DP_TRANSPORT_MAX_PENDING; k++) {
      g_clear_error (&d->pool[k].error);
      d->pool[k].state = REQ_FREE;
    }
  }
  g_object_unref (s->cancellable);
  s->cancellable = g_cancellable_new ();
}

static void
sock_reset (dp_transport *t)
{
  sock *s = t->priv;
  g_mutex_lock (&s->lock);
  gboolean was_cancelled = s->cancelled;
  gboolean idle = !s->out.queue.head && !s->in.queue.head;
  g_mutex_unlock (&s->lock);
  /* After a cancel or with requests left the streams are mid-message:
   * they are dropped (the next run attaches new ones). */
  if (was_cancelled || !idle)
    detach (s);
  g_mutex_lock (&s->lock);
  s->cancelled = FALSE;
  for (link_dir *d = &s->out; d; d = d == &s->out ? &s->in : NULL)
    for (int k = 0; k < DP_TRANSPORT_MAX_PENDING; k++)
      if (d->pool[k].state != REQ_POSTED) {
        g_clear_error (&d->pool[k].error);
        d->pool[k].state = REQ_FREE;
      }
  g_mutex_unlock (&s->lock);
}

static void
sock_bytes (dp_transport *t, int stage, uint64_t *sent, uint64_t *received)
{
  sock *s = t->priv;
  g_mutex_lock (&s->lock);
  *sent = stage == s->stage ? s->sent : 0;
  *received = stage == s->stage ? s->received : 0;
  g_mutex_unlock (&s->lock);
}

static void
sock_destroy (dp_transport *t)
{
  sock *s = t->priv;
  detach (s);
  for (link_dir *d = &s->out; d; d = d == &s->out ? &s->in : NULL)
    for (int k = 0; k < DP_TRANSPORT_MAX_PENDING; k++)
      g_free (d->pool[k].staging);
  g_object_unref (s->cancellable);
  g_mutex_clear (&s->lock);
  g_cond_clear (&s->cond);
  g_free (s);
  g_free (t);
}

static gboolean sock_attach (dp_transport *t, GIOStream *to_next, GIOStream *from_prev, GError **error);
static void sock_detach (dp_transport *t);

static const dp_transport_ops socket_ops = {
  sock_isend, sock_irecv, sock_wait, sock_cancel, sock_reset, sock_bytes, sock_destroy, sock_attach, sock_detach,
};

dp_transport *
dp_transport_new_socket (int n_stages, int stage, dp_backend *be, dp_dtype hidden_wire, GError **error)
{
  if (n_stages < 2 || stage < 0 || stage >= n_stages) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "transport socket: stage %d of %d: needs 2 or more stages",
                 stage, n_stages);
    return NULL;
  }
  if (hidden_wire != DP_F32 && hidden_wire != DP_BF16) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "transport socket: hidden states travel as F32 or BF16, not %s",
                 dp_dtype_name (hidden_wire));
    return NULL;
  }
  sock *s = g_new0 (sock, 1);
  g_mutex_init (&s->lock);
  g_cond_init (&s->cond);
  s->n = n_stages;
  s->stage = stage;
  s->be = be;
  s->hidden_wire = hidden_wire;
  s->cancellable = g_cancellable_new ();
  s->out = (link_dir){ .owner = s, .is_send = TRUE, .peer = (stage + 1) % n_stages };
  s->in = (link_dir){ .owner = s, .is_send = FALSE, .peer = (stage - 1 + n_stages) % n_stages };
  dp_transport *t = g_new0 (dp_transport, 1);
  t->ops = &socket_ops;
  t->name = "socket";
  t->n_stages = n_stages;
  t->priv = s;
  return t;
}

static gboolean
sock_attach (dp_transport *t, GIOStream *to_next, GIOStream *from_prev, GError **error)
{
  sock *s = t->priv;
  detach (s);
  /* A new run: a cancel of the last one is over. */
  g_mutex_lock (&s->lock);
  s->cancelled = FALSE;
  g_mutex_unlock (&s->lock);
  s->out.stream = g_object_ref (to_next);
  s->in.stream = g_object_ref (from_prev);
  for (link_dir *d = &s->out; d; d = d == &s->out ? &s->in : NULL) {
    d->thread = g_thread_try_new (d->is_send ? "dp-sock-send" : "dp-sock-recv", io_thread, d, error);
    if (!d->thread) {
      g_prefix_error (error, "transport socket: ");
      detach (s);
      return FALSE;
    }
  }
  return TRUE;
}

static void
sock_detach (dp_transport *t)
{
  detach (t->priv);
}
