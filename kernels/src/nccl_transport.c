/* The device transport between CUDA stages (nccl_transport.h, transport.h).
 *
 * Links.  An ordered pair of stages (src -> dst) that exchanges messages is
 * a link: a FIFO of posted sends and one of posted receives, a stream on
 * each side (stream[0] on src's GPU carries the sends, stream[1] on dst's
 * GPU the receives, or the copy when both stages share a GPU) and, across
 * GPUs, a two-rank NCCL communicator (rank 0 on src's GPU, rank 1 on
 * dst's).  NCCL runs the operations of one communicator one after the
 * other on the GPU, so one communicator per GPU would queue stage r's
 * receive from r - 1 and its send to r + 1 behind each other; with
 * receives posted ahead (the engine posts pass k + 1's before sending pass
 * k) that can deadlock.  A communicator per link direction carries exactly
 * one FIFO of messages, in order, and nothing else.
 *
 * Matching on the host.  As in the in-process transport, a new operation is
 * matched against the head of the link's opposite FIFO and whoever posts
 * second launches both halves, from its thread, under the link's lock:
 * ncclGroupStart, ncclSend on the src communicator, ncclRecv on the dst one,
 * ncclGroupEnd (a cudaMemcpyAsync on one GPU).  So a transfer's kernels
 * start only once both sides have posted and depend on nothing but work
 * already queued: every NCCL kernel finishes within its transfer.  A
 * cudaFree on a stage thread (it waits for the whole device) therefore
 * cannot deadlock against a kernel waiting for a peer thread, the classic
 * hazard of one process driving several GPUs, and an unmatched operation
 * costs nothing on the GPU (its timeout is a host-side one).
 *
 * Events.  Posting records the request's `ready` event on the stage's
 * compute stream (the CUDA backend's): the send stream waits on the
 * sender's (the data has been written), the receive stream on the
 * receiver's (work queued before the receive no longer reads the buffer).
 * After the launch each side records its `done` event on its link stream.
 * wait() polls `done` and, for a receive, makes the compute stream wait on
 * it.  Transfers thus run on the link streams while the compute streams
 * work.
 *
 * Nonblocking communicators (ncclConfig_t.blocking = 0): creation and every
 * launch return ncclInProgress at once and are polled with
 * ncclCommGetAsyncError until done, under a deadline, so that nothing
 * blocks without bound.  Every wait polls the done event, the cancel flag,
 * ncclCommGetAsyncError and the timeout.  reset() lets the link streams
 * drain for a moment; a link whose communicator is still busy or reported
 * an error is aborted (ncclCommAbort makes its kernels quit) and created
 * anew.
 *
 * Locks: links_lock (inserting a link), each link's lock (its FIFOs, its
 * requests' states, its communicators and streams), p->lock (failure,
 * timeout, byte counts).  A link's lock may be held while taking p->lock,
 * never the other way round. */
#include "nccl_transport.h"
#include "cuda_backend.h"
#include "engine/req_queue.h"

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <stdlib.h>
#include <string.h>

#if !defined(NCCL_VERSION_CODE) || NCCL_VERSION_CODE < NCCL_VERSION(2, 14, 0)
#error "the NCCL transport needs NCCL 2.14 or newer (nonblocking communicators)"
#endif

#define POLL_QUEUED_US 5000      /* an unmatched request rechecks cancel / timeout */
#define POLL_ENQUEUED_US 50      /* a launched transfer polls its event */
#define INIT_TIMEOUT_US (120 * G_USEC_PER_SEC) /* creating and connecting a communicator */
#define RESET_GRACE_US (5 * G_USEC_PER_SEC)    /* in-flight transfers finishing at reset (at most the timeout) */
#define ABORT_DRAIN_US (10 * G_USEC_PER_SEC)   /* streams emptying after ncclCommAbort */
#define PROBE_BYTES 256

typedef enum {
  REQ_FREE = 0,
  REQ_QUEUED,   /* posted, waiting for its peer */
  REQ_ENQUEUED, /* both halves launched; `done` tells when it is over */
  REQ_FAILED,
} req_state;

typedef struct nccl_link nccl_link;

struct dp_transport_req {
  dp_req_node node; /* first: the link queues (req_queue.h), under lk->lock */
  int owner;        /* stage that posted it */
  gboolean is_send;
  int src, dst;
  void *data;       /* device memory of the owner's backend */
  size_t nbytes;
  gboolean in_use;  /* touched by the owner's thread only (and reset) */
  req_state state;  /* under lk->lock */
  GError *error;    /* REQ_FAILED */
  gint64 since_us;  /* when it was posted (QUEUED) or launched (ENQUEUED) */
  nccl_link *lk;
  cudaEvent_t ready, done; /* on the owner's GPU */
};
G_STATIC_ASSERT (G_STRUCT_OFFSET (dp_transport_req, node) == 0);

struct nccl_link {
  int src, dst;     /* stages */
  int dev[2];       /* GPUs of src and dst */
  gboolean nccl;    /* dev[0] != dev[1] */
  GMutex lock;
  GCond cond;
  dp_req_queues queues;
  cudaStream_t stream[2]; /* [0] src's GPU (NCCL links only), [1] dst's GPU */
  ncclComm_t comm[2];     /* NCCL links: rank 0 (src), rank 1 (dst) */
  void *probe[2];         /* PROBE_BYTES on each GPU for the connecting exchange */
  gboolean failed;        /* a launch, a transfer or the communicator failed */
};

typedef struct {
  int n;
  dp_backend **be;        /* not owned */
  int *dev;
  cudaStream_t *compute;  /* the backends' streams */
  nccl_link **links;      /* [src * n + dst], NULL until first used (atomic pointers) */
  GMutex links_lock;
  dp_transport_req *pool; /* [stage * DP_TRANSPORT_MAX_PENDING + k] */
  gint cancelled;         /* atomic */
  GMutex lock;
  GError *failed;         /* set by a failed transfer, cleared by reset */
  gint64 timeout_us;      /* 0: none */
  uint64_t *sent, *received;
} nccl_priv;

/* ------------------------------------------------------------ errors */

static void
link_prefix (const nccl_link *lk, char *buf, size_t size)
{
  if (lk)
    g_snprintf (buf, size, "transport nccl: stage %d -> %d (GPU %d -> %d)", lk->src, lk->dst, lk->dev[0], lk->dev[1]);
  else
    g_strlcpy (buf, "transport nccl", size);
}

static gboolean
cuda_check (cudaError_t err, const nccl_link *lk, const char *what, GError **error)
{
  if (err == cudaSuccess)
    return TRUE;
  (void) cudaGetLastError (); /* clear a non-sticky error; a sticky one stays the context's */
  char prefix[96];
  link_prefix (lk, prefix, sizeof prefix);
  g_set_error (error, DP_ERROR, err == cudaErrorMemoryAllocation ? DP_ERROR_NOMEM : DP_ERROR_DEVICE,
               "%s: %s: %s (%s)", prefix, what, cudaGetErrorString (err), cudaGetErrorName (err));
  return FALSE;
}

/* ncclInProgress is success here: nonblocking calls are polled afterwards. */
static gboolean
nccl_check (ncclResult_t r, const nccl_link *lk, ncclComm_t comm, const char *what, GError **error)
{
  if (r == ncclSuccess || r == ncclInProgress)
    return TRUE;
  const char *last = ncclGetLastError (comm);
  char prefix[96];
  link_prefix (lk, prefix, sizeof prefix);
  g_set_error (error, DP_ERROR, DP_ERROR_DEVICE, "%s: %s: %s%s%s", prefix, what, ncclGetErrorString (r),
               last && *last ? ": " : "", last && *last ? last : "");
  return FALSE;
}

static gboolean
set_device (const nccl_link *lk, int dev, GError **error)
{
  return cuda_check (cudaSetDevice (dev), lk, "cudaSetDevice", error);
}

/* Records the first failure; posts fail until reset. */
static void
mark_failed (nccl_priv *p, const GError *err)
{
  g_mutex_lock (&p->lock);
  if (!p->failed && err)
    p->failed = g_error_copy (err);
  g_mutex_unlock (&p->lock);
}

static gint64
get_timeout_us (nccl_priv *p)
{
  g_mutex_lock (&p->lock);
  gint64 t = p->timeout_us;
  g_mutex_unlock (&p->lock);
  return t;
}

/* ------------------------------------------------------------ communicators */

/* FALSE with an error when a communicator of lk reported one; *busy (if
 * given) says whether one is still working on a nonblocking call. */
static gboolean
link_comm_state (nccl_link *lk, gboolean *busy, GError **error)
{
  if (busy)
    *busy = FALSE;
  for (int k = 0; k < 2; k++) {
    if (!lk->comm[k])
      continue;
    ncclResult_t state = ncclSuccess;
    ncclResult_t r = ncclCommGetAsyncError (lk->comm[k], &state);
    if (!nccl_check (r == ncclInProgress ? ncclInternalError : r, lk, lk->comm[k], "ncclCommGetAsyncError", error))
      return FALSE;
    if (state == ncclInProgress) {
      if (busy)
        *busy = TRUE;
    } else if (!nccl_check (state, lk, lk->comm[k],
                            k ? "the receiving side's communicator reported an error"
                              : "the sending side's communicator reported an error",
                            error)) {
      return FALSE;
    }
  }
  return TRUE;
}

/* Polls until neither communicator is busy with a nonblocking call. */
static gboolean
link_comm_wait (nccl_link *lk, gint64 deadline_us, const char *what, GError **error)
{
  for (;;) {
    gboolean busy;
    if (!link_comm_state (lk, &busy, error))
      return FALSE;
    if (!busy)
      return TRUE;
    if (deadline_us > 0 && g_get_monotonic_time () >= deadline_us) {
      char prefix[96];
      link_prefix (lk, prefix, sizeof prefix);
      g_set_error (error, DP_ERROR, DP_ERROR_DEVICE, "%s: %s did not finish in time (NCCL still in progress)", prefix,
                   what);
      return FALSE;
    }
    g_usleep (20);
  }
}

/* Polls until stream is empty; FALSE when the deadline passes first or
 * CUDA reports an error (in *error when given). */
static gboolean
stream_drain (const nccl_link *lk, cudaStream_t stream, gint64 deadline_us, GError **error)
{
  if (!stream)
    return TRUE;
  for (;;) {
    cudaError_t q = cudaStreamQuery (stream);
    if (q == cudaSuccess)
      return TRUE;
    if (q != cudaErrorNotReady)
      return cuda_check (q, lk, "cudaStreamQuery", error);
    if (g_get_monotonic_time () >= deadline_us) {
      char prefix[96];
      link_prefix (lk, prefix, sizeof prefix);
      g_set_error (error, DP_ERROR, DP_ERROR_DEVICE, "%s: a communication stream did not drain in time", prefix);
      return FALSE;
    }
    g_usleep (100);
  }
}

static void
link_comm_abort (nccl_link *lk)
{
  for (int k = 0; k < 2; k++)
    if (lk->comm[k]) {
      ncclResult_t r = ncclCommAbort (lk->comm[k]);
      if (r != ncclSuccess)
        g_debug ("transport nccl: ncclCommAbort (stage %d -> %d, rank %d): %s", lk->src, lk->dst, k,
                 ncclGetErrorString (r));
      lk->comm[k] = NULL;
    }
}

/* Creates lk's two ranks from this thread (one group) and connects them
 * with a one-byte exchange, so that later transfers need no handshake.
 * On failure nothing is left. */
static gboolean
link_comm_create (nccl_link *lk, GError **error)
{
  ncclUniqueId id;
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  const gint64 deadline = g_get_monotonic_time () + INIT_TIMEOUT_US;
  if (!nccl_check (ncclGetUniqueId (&id), lk, NULL, "ncclGetUniqueId", error) ||
      !nccl_check (ncclGroupStart (), lk, NULL, "ncclGroupStart", error))
    return FALSE;
  gboolean ok = TRUE;
  for (int k = 0; k < 2 && ok; k++)
    ok = set_device (lk, lk->dev[k], error) &&
         nccl_check (ncclCommInitRankConfig (&lk->comm[k], 2, id, k, &config), lk, NULL, "ncclCommInitRankConfig",
                     error);
  ncclResult_t end = ncclGroupEnd ();
  if (ok)
    ok = nccl_check (end, lk, NULL, "ncclGroupEnd (creating the communicator)", error);
  if (ok)
    ok = link_comm_wait (lk, deadline, "creating the communicator", error);

  /* Connect: NCCL sets up a peer connection on the first transfer. */
  if (ok && (ok = nccl_check (ncclGroupStart (), lk, NULL, "ncclGroupStart", error))) {
    ok = nccl_check (ncclSend (lk->probe[0], 1, ncclUint8, 1, lk->comm[0], lk->stream[0]), lk, lk->comm[0],
                     "ncclSend (connecting)", error) &&
         nccl_check (ncclRecv (lk->probe[1], 1, ncclUint8, 0, lk->comm[1], lk->stream[1]), lk, lk->comm[1],
                     "ncclRecv (connecting)", error);
    end = ncclGroupEnd ();
    if (ok)
      ok = nccl_check (end, lk, NULL, "ncclGroupEnd (connecting)", error);
  }
  if (ok)
    ok = link_comm_wait (lk, deadline, "connecting the communicator", error) &&
         stream_drain (lk, lk->stream[0], deadline, error) && stream_drain (lk, lk->stream[1], deadline, error);
  if (!ok)
    link_comm_abort (lk);
  return ok;
}

/* ------------------------------------------------------------ links */

static void
link_free (nccl_link *lk)
{
  if (!lk)
    return;
  link_comm_abort (lk);
  for (int k = 0; k < 2; k++) {
    if (cudaSetDevice (lk->dev[k]) != cudaSuccess) {
      (void) cudaGetLastError ();
      continue;
    }
    if (lk->stream[k]) {
      /* After the abort nothing waits for a peer; give queued copies a moment. */
      (void) stream_drain (lk, lk->stream[k], g_get_monotonic_time () + G_USEC_PER_SEC, NULL);
      if (cudaStreamDestroy (lk->stream[k]) != cudaSuccess)
        (void) cudaGetLastError ();
    }
    if (lk->probe[k] && cudaFree (lk->probe[k]) != cudaSuccess)
      (void) cudaGetLastError ();
  }
  g_mutex_clear (&lk->lock);
  g_cond_clear (&lk->cond);
  g_free (lk);
}

static nccl_link *
link_new (nccl_priv *p, int src, int dst, GError **error)
{
  nccl_link *lk = g_new0 (nccl_link, 1);
  g_mutex_init (&lk->lock);
  g_cond_init (&lk->cond);
  lk->src = src;
  lk->dst = dst;
  lk->dev[0] = p->dev[src];
  lk->dev[1] = p->dev[dst];
  lk->nccl = lk->dev[0] != lk->dev[1];
  gboolean ok = TRUE;
  for (int k = lk->nccl ? 0 : 1; k < 2 && ok; k++) {
    ok = set_device (lk, lk->dev[k], error) &&
         cuda_check (cudaStreamCreateWithFlags (&lk->stream[k], cudaStreamNonBlocking), lk, "cudaStreamCreate", error);
    if (ok && lk->nccl)
      ok = cuda_check (cudaMalloc (&lk->probe[k], PROBE_BYTES), lk, "cudaMalloc (connection probe)", error) &&
           cuda_check (cudaMemset (lk->probe[k], 0, PROBE_BYTES), lk, "cudaMemset (connection probe)", error);
  }
  if (ok && lk->nccl)
    ok = link_comm_create (lk, error);
  if (!ok) {
    link_free (lk);
    return NULL;
  }
  return lk;
}

/* The link src -> dst, made on first use.  Made outside links_lock (it can
 * take a second): two threads racing keep the first one inserted. */
static nccl_link *
link_get (nccl_priv *p, int src, int dst, GError **error)
{
  nccl_link **slot = &p->links[(size_t) src * p->n + dst];
  nccl_link *lk = g_atomic_pointer_get (slot);
  if (lk)
    return lk;
  lk = link_new (p, src, dst, error);
  if (!lk)
    return NULL;
  g_mutex_lock (&p->links_lock);
  nccl_link *other = g_atomic_pointer_get (slot);
  if (!other)
    g_atomic_pointer_set (slot, lk);
  g_mutex_unlock (&p->links_lock);
  if (other) {
    link_free (lk);
    return other;
  }
  return lk;
}

/* ------------------------------------------------------------ requests */

static const char *
size_str (size_t nbytes, char *buf, size_t size)
{
  g_snprintf (buf, size, "%zu bytes", nbytes);
  return buf;
}

/* Launches the matched pair (s, rv) of link lk (lock held): both halves,
 * ordered after their `ready` events, then their `done` events.  Leaves
 * both ENQUEUED, or FAILED with the error. */
static void
launch_pair (nccl_priv *p, nccl_link *lk, dp_transport_req *s, dp_transport_req *rv)
{
  GError *err = NULL;
  gboolean ok;
  const size_t nbytes = s->nbytes;
  if (s->nbytes != rv->nbytes) {
    char prefix[96];
    link_prefix (lk, prefix, sizeof prefix);
    for (int k = 0; k < 2; k++) {
      dp_transport_req *r = k ? rv : s;
      r->state = REQ_FAILED;
      g_set_error (&r->error, DP_ERROR, DP_ERROR_SHAPE, "%s: stage %d sends %zu bytes, stage %d receives %zu bytes",
                   prefix, s->src, s->nbytes, rv->dst, rv->nbytes);
    }
    return;
  }
  if (lk->nccl) {
    ok = set_device (lk, lk->dev[0], &err) &&
         cuda_check (cudaStreamWaitEvent (lk->stream[0], s->ready, 0), lk, "cudaStreamWaitEvent (send)", &err) &&
         set_device (lk, lk->dev[1], &err) &&
         cuda_check (cudaStreamWaitEvent (lk->stream[1], rv->ready, 0), lk, "cudaStreamWaitEvent (receive)", &err);
    if (ok && nbytes > 0 && (ok = nccl_check (ncclGroupStart (), lk, NULL, "ncclGroupStart", &err))) {
      ok = nccl_check (ncclSend (s->data, nbytes, ncclUint8, 1, lk->comm[0], lk->stream[0]), lk, lk->comm[0],
                       "ncclSend", &err) &&
           nccl_check (ncclRecv (rv->data, nbytes, ncclUint8, 0, lk->comm[1], lk->stream[1]), lk, lk->comm[1],
                       "ncclRecv", &err);
      ncclResult_t end = ncclGroupEnd ();
      if (ok)
        ok = nccl_check (end, lk, NULL, "ncclGroupEnd (launching the transfer)", &err);
      if (ok) {
        const gint64 timeout = get_timeout_us (p);
        ok = link_comm_wait (lk, timeout > 0 ? g_get_monotonic_time () + timeout : 0, "launching the transfer",
                             &err);
      }
    }
    if (ok)
      ok = set_device (lk, lk->dev[0], &err) &&
           cuda_check (cudaEventRecord (s->done, lk->stream[0]), lk, "cudaEventRecord (send)", &err) &&
           set_device (lk, lk->dev[1], &err) &&
           cuda_check (cudaEventRecord (rv->done, lk->stream[1]), lk, "cudaEventRecord (receive)", &err);
  } else {
    cudaStream_t st = lk->stream[1];
    ok = set_device (lk, lk->dev[1], &err) &&
         cuda_check (cudaStreamWaitEvent (st, s->ready, 0), lk, "cudaStreamWaitEvent (send)", &err) &&
         cuda_check (cudaStreamWaitEvent (st, rv->ready, 0), lk, "cudaStreamWaitEvent (receive)", &err) &&
         (nbytes == 0 || cuda_check (cudaMemcpyAsync (rv->data, s->data, nbytes, cudaMemcpyDeviceToDevice, st), lk,
                                     "cudaMemcpyAsync (device to device)", &err)) &&
         cuda_check (cudaEventRecord (s->done, st), lk, "cudaEventRecord (send)", &err) &&
         cuda_check (cudaEventRecord (rv->done, st), lk, "cudaEventRecord (receive)", &err);
  }
  const gint64 now = g_get_monotonic_time ();
  for (int k = 0; k < 2; k++) {
    dp_transport_req *r = k ? rv : s;
    r->since_us = now;
    if (ok) {
      r->state = REQ_ENQUEUED;
    } else {
      r->state = REQ_FAILED;
      r->error = g_error_copy (err);
    }
  }
  if (!ok) {
    lk->failed = TRUE;
    mark_failed (p, err);
    g_error_free (err);
  }
}

static dp_transport_req *
take_req (nccl_priv *p, int owner)
{
  dp_transport_req *base = p->pool + (size_t) owner * DP_TRANSPORT_MAX_PENDING;
  for (int k = 0; k < DP_TRANSPORT_MAX_PENDING; k++)
    if (!base[k].in_use)
      return &base[k];
  return NULL;
}

static gboolean
check_usable (nccl_priv *p, GError **error)
{
  if (g_atomic_int_get (&p->cancelled)) {
    g_set_error (error, DP_ERROR, DP_ERROR_CANCELLED, "transport nccl: cancelled");
    return FALSE;
  }
  g_mutex_lock (&p->lock);
  if (p->failed)
    g_set_error (error, DP_ERROR, DP_ERROR_DEVICE, "transport nccl: unusable until reset after an earlier failure (%s)",
                 p->failed->message);
  gboolean ok = p->failed == NULL;
  g_mutex_unlock (&p->lock);
  return ok;
}

static dp_transport_req *
post (dp_transport *t, gboolean is_send, int src, int dst, void *data, size_t nbytes, GError **error)
{
  nccl_priv *p = t->priv;
  const int owner = is_send ? src : dst;
  if (!check_usable (p, error))
    return NULL;
  dp_transport_req *r = take_req (p, owner);
  if (!r) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID,
                 "transport nccl: stage %d has %d requests outstanding already (the most)", owner,
                 DP_TRANSPORT_MAX_PENDING);
    return NULL;
  }
  int saved = -1;
  if (cudaGetDevice (&saved) != cudaSuccess) {
    (void) cudaGetLastError ();
    saved = -1;
  }
  nccl_link *lk = link_get (p, src, dst, error);
  gboolean ok = lk && set_device (lk, p->dev[owner], error) &&
                cuda_check (cudaEventRecord (r->ready, p->compute[owner]), lk,
                            is_send ? "cudaEventRecord (the sender's compute stream)"
                                    : "cudaEventRecord (the receiver's compute stream)",
                            error);
  if (ok) {
    r->owner = owner;
    r->is_send = is_send;
    r->src = src;
    r->dst = dst;
    r->data = data;
    r->nbytes = nbytes;
    r->lk = lk;
    r->in_use = TRUE;
    g_mutex_lock (&lk->lock);
    r->state = REQ_QUEUED;
    r->since_us = g_get_monotonic_time ();
    dp_transport_req *peer = (dp_transport_req *) dp_req_match_or_queue (&lk->queues, &r->node, is_send);
    if (peer)
      launch_pair (p, lk, is_send ? r : peer, is_send ? peer : r);
    g_cond_broadcast (&lk->cond);
    g_mutex_unlock (&lk->lock);
  }
  if (saved >= 0 && cudaSetDevice (saved) != cudaSuccess)
    (void) cudaGetLastError ();
  return ok ? r : NULL;
}

static dp_transport_req *
nccl_isend (dp_transport *t, int src, int dst, const dp_tensor *buf, GError **error)
{
  return post (t, TRUE, src, dst, buf->data, dp_tensor_nbytes (buf), error);
}

static dp_transport_req *
nccl_irecv (dp_transport *t, int dst, int src, dp_tensor *buf, GError **error)
{
  return post (t, FALSE, src, dst, buf->data, dp_tensor_nbytes (buf), error);
}

/* The error of a request that gave up waiting (lk->lock held). */
static void
set_wait_error (nccl_link *lk, dp_transport_req *r, GError **err, const char *why, gint64 now)
{
  char prefix[96], size[32];
  link_prefix (lk, prefix, sizeof prefix);
  g_set_error (err, DP_ERROR, DP_ERROR_DEVICE, "%s: %s of %s by stage %d timed out after %.1f s: %s", prefix,
               r->is_send ? "send" : "receive", size_str (r->nbytes, size, sizeof size), r->owner,
               (now - r->since_us) / 1e6, why);
}

static gboolean
nccl_wait (dp_transport *t, dp_transport_req *r, GError **error)
{
  nccl_priv *p = t->priv;
  if (!r || !r->in_use || !r->lk) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "transport nccl: wait on no request");
    return FALSE;
  }
  nccl_link *lk = r->lk;
  GError *err = NULL;
  gboolean ok = FALSE;
  const gint64 timeout = get_timeout_us (p);
  g_mutex_lock (&lk->lock);
  for (;;) {
    const gint64 now = g_get_monotonic_time ();
    if (r->state == REQ_FAILED) {
      err = r->error;
      r->error = NULL;
      break;
    }
    if (r->state == REQ_QUEUED) {
      /* Nothing on the GPU yet: leaving the FIFO is all it takes. */
      if (g_atomic_int_get (&p->cancelled)) {
        dp_req_unqueue (&lk->queues, &r->node, r->is_send);
        g_set_error (&err, DP_ERROR, DP_ERROR_CANCELLED, "transport nccl: cancelled");
        break;
      }
      if (timeout > 0 && now - r->since_us >= timeout) {
        dp_req_unqueue (&lk->queues, &r->node, r->is_send);
        char *why = g_strdup_printf ("stage %d never posted the matching %s (stuck or gone)",
                                     r->is_send ? r->dst : r->src, r->is_send ? "receive" : "send");
        set_wait_error (lk, r, &err, why, now);
        g_free (why);
        mark_failed (p, err);
        break;
      }
      gint64 until = now + POLL_QUEUED_US;
      if (timeout > 0)
        until = MIN (until, r->since_us + timeout);
      g_cond_wait_until (&lk->cond, &lk->lock, until);
      continue;
    }
    /* REQ_ENQUEUED */
    cudaError_t q = cudaEventQuery (r->done);
    if (q == cudaSuccess) {
      ok = TRUE;
      if (!r->is_send)
        ok = set_device (lk, lk->dev[1], &err) &&
             cuda_check (cudaStreamWaitEvent (p->compute[r->owner], r->done, 0), lk,
                         "cudaStreamWaitEvent (the receiver's compute stream)", &err);
      if (!ok)
        mark_failed (p, err);
      break;
    }
    if (q != cudaErrorNotReady) {
      cuda_check (q, lk, "cudaEventQuery (transfer)", &err);
      lk->failed = TRUE;
      mark_failed (p, err);
      break;
    }
    if (lk->nccl && !link_comm_state (lk, NULL, &err)) {
      lk->failed = TRUE;
      mark_failed (p, err);
      break;
    }
    if (g_atomic_int_get (&p->cancelled)) {
      /* The transfer is on the GPU and finishes by itself; reset() drains
       * the link (or aborts it) before anyone frees the buffers. */
      g_set_error (&err, DP_ERROR, DP_ERROR_CANCELLED, "transport nccl: cancelled");
      break;
    }
    if (timeout > 0 && now - r->since_us >= timeout) {
      set_wait_error (lk, r, &err, "the transfer did not complete (a GPU or the link is stuck)", now);
      lk->failed = TRUE;
      mark_failed (p, err);
      break;
    }
    g_cond_wait_until (&lk->cond, &lk->lock, now + POLL_ENQUEUED_US);
  }
  r->state = REQ_FREE;
  r->node.next = NULL;
  g_mutex_unlock (&lk->lock);
  if (ok) {
    g_mutex_lock (&p->lock);
    if (r->is_send)
      p->sent[r->src] += r->nbytes;
    else
      p->received[r->dst] += r->nbytes;
    g_mutex_unlock (&p->lock);
  }
  g_clear_error (&r->error);
  r->in_use = FALSE;
  if (!ok)
    g_propagate_error (error, err);
  return ok;
}

static void
nccl_cancel (dp_transport *t)
{
  nccl_priv *p = t->priv;
  g_atomic_int_set (&p->cancelled, 1);
  g_mutex_lock (&p->links_lock);
  for (int i = 0; i < p->n * p->n; i++) {
    nccl_link *lk = g_atomic_pointer_get (&p->links[i]);
    if (!lk)
      continue;
    g_mutex_lock (&lk->lock);
    g_cond_broadcast (&lk->cond);
    g_mutex_unlock (&lk->lock);
  }
  g_mutex_unlock (&p->links_lock);
}

/* No other thread uses the transport.  A link that failed, or whose
 * communicator reports an error, is aborted at once; otherwise its streams
 * get a moment (the timeout, at most RESET_GRACE_US) to finish what is in
 * flight (a cancelled run leaves its last transfers there), and a link
 * still busy after that is aborted too.  Aborted communicators are created
 * anew; a link that cannot be repaired leaves the transport failed. */
static void
nccl_reset (dp_transport *t)
{
  nccl_priv *p = t->priv;
  GError *broken = NULL;
  int saved = -1;
  if (cudaGetDevice (&saved) != cudaSuccess) {
    (void) cudaGetLastError ();
    saved = -1;
  }
  const gint64 timeout = get_timeout_us (p);
  const gint64 grace_us = timeout > 0 ? MIN (timeout, RESET_GRACE_US) : RESET_GRACE_US;
  for (int i = 0; i < p->n * p->n; i++) {
    nccl_link *lk = g_atomic_pointer_get (&p->links[i]);
    if (!lk)
      continue;
    g_mutex_lock (&lk->lock);
    lk->queues = (dp_req_queues){ { NULL, NULL }, { NULL, NULL } };
    gboolean abort = lk->failed || (lk->nccl && !link_comm_state (lk, NULL, NULL));
    if (!abort) {
      const gint64 grace = g_get_monotonic_time () + grace_us;
      gboolean idle = TRUE;
      for (int k = 0; k < 2; k++)
        idle = stream_drain (lk, lk->stream[k], grace, NULL) && idle;
      abort = !idle;
    }
    if (abort && lk->nccl) {
      GError *err = NULL;
      link_comm_abort (lk);
      const gint64 drain = g_get_monotonic_time () + ABORT_DRAIN_US;
      gboolean ok = TRUE;
      for (int k = 0; k < 2 && ok; k++)
        ok = stream_drain (lk, lk->stream[k], drain, &err);
      if (ok)
        ok = link_comm_create (lk, &err);
      if (!ok) {
        g_prefix_error (&err, "re-creating the communicator after an abort: ");
        if (!broken)
          broken = err;
        else
          g_error_free (err);
      }
    } else if (abort) {
      /* A device copy cannot be aborted; it ends by itself unless the GPU is lost. */
      GError *err = NULL;
      if (!stream_drain (lk, lk->stream[1], g_get_monotonic_time () + ABORT_DRAIN_US, &err)) {
        if (!broken)
          broken = err;
        else
          g_error_free (err);
      }
    }
    if (!broken)
      lk->failed = FALSE;
    g_mutex_unlock (&lk->lock);
  }
  for (int i = 0; i < p->n * DP_TRANSPORT_MAX_PENDING; i++) {
    dp_transport_req *r = &p->pool[i];
    g_clear_error (&r->error);
    r->state = REQ_FREE;
    r->in_use = FALSE;
    r->node.next = NULL;
    r->lk = NULL;
  }
  g_mutex_lock (&p->lock);
  g_clear_error (&p->failed);
  p->failed = broken; /* a link that cannot be repaired keeps the transport failed */
  g_mutex_unlock (&p->lock);
  g_atomic_int_set (&p->cancelled, 0);
  if (saved >= 0 && cudaSetDevice (saved) != cudaSuccess)
    (void) cudaGetLastError ();
}

static void
nccl_bytes (dp_transport *t, int stage, uint64_t *sent, uint64_t *received)
{
  nccl_priv *p = t->priv;
  g_mutex_lock (&p->lock);
  gboolean ok = stage >= 0 && stage < p->n;
  if (sent)
    *sent = ok ? p->sent[stage] : 0;
  if (received)
    *received = ok ? p->received[stage] : 0;
  g_mutex_unlock (&p->lock);
}

static void
nccl_destroy (dp_transport *t)
{
  nccl_priv *p = t->priv;
  for (int i = 0; p->links && i < p->n * p->n; i++)
    link_free (p->links[i]);
  for (int i = 0; p->pool && i < p->n * DP_TRANSPORT_MAX_PENDING; i++) {
    dp_transport_req *r = &p->pool[i];
    g_clear_error (&r->error);
    if (cudaSetDevice (p->dev[i / DP_TRANSPORT_MAX_PENDING]) != cudaSuccess) {
      (void) cudaGetLastError ();
      continue;
    }
    if (r->ready && cudaEventDestroy (r->ready) != cudaSuccess)
      (void) cudaGetLastError ();
    if (r->done && cudaEventDestroy (r->done) != cudaSuccess)
      (void) cudaGetLastError ();
  }
  g_clear_error (&p->failed);
  g_mutex_clear (&p->lock);
  g_mutex_clear (&p->links_lock);
  g_free (p->links);
  g_free (p->pool);
  g_free (p->be);
  g_free (p->dev);
  g_free (p->compute);
  g_free (p->sent);
  g_free (p->received);
  g_free (p);
  g_free (t);
}

static const dp_transport_ops nccl_ops = {
  .isend = nccl_isend,
  .irecv = nccl_irecv,
  .wait = nccl_wait,
  .cancel = nccl_cancel,
  .reset = nccl_reset,
  .bytes = nccl_bytes,
  .destroy = nccl_destroy,
};

/* ------------------------------------------------------------ public */

static gboolean
timeout_from_env (gint64 *timeout_us, GError **error)
{
  const char *env = g_getenv ("DP_NCCL_TIMEOUT");
  *timeout_us = (gint64) (DP_NCCL_TRANSPORT_DEFAULT_TIMEOUT * G_USEC_PER_SEC);
  if (!env || !*env)
    return TRUE;
  char *end = NULL;
  double s = g_ascii_strtod (env, &end);
  if (end == env || *end != '\0' || !(s >= 0) || s > 1e9) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID,
                 "transport nccl: DP_NCCL_TIMEOUT=\"%s\" is not a number of seconds (0 disables the timeout)", env);
    return FALSE;
  }
  *timeout_us = (gint64) (s * G_USEC_PER_SEC);
  return TRUE;
}

dp_transport *
dp_nccl_transport_new (dp_backend *const *backends, int n_stages, GError **error)
{
  if (n_stages < 1 || n_stages > 1024 || !backends) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "transport nccl: %d stages", n_stages);
    return NULL;
  }
  for (int r = 0; r < n_stages; r++) {
    if (!dp_cuda_backend_is_cuda (backends[r])) {
      g_set_error (error, DP_ERROR, DP_ERROR_UNSUPPORTED,
                   "transport nccl: stage %d runs on %s, not a CUDA backend (the NCCL transport moves device "
                   "memory between GPUs; cpu stages use the in-process transport)",
                   r, backends[r] ? backends[r]->name : "no backend");
      return NULL;
    }
    if (!dp_backend_check (backends[r], error)) {
      g_prefix_error (error, "transport nccl: stage %d: ", r);
      return NULL;
    }
  }
  int version = 0;
  ncclResult_t vr = ncclGetVersion (&version);
  if (vr != ncclSuccess || version < NCCL_VERSION (2, 14, 0)) {
    g_set_error (error, DP_ERROR, DP_ERROR_UNSUPPORTED,
                 "transport nccl: the NCCL library (version code %d) is older than 2.14: no nonblocking "
                 "communicators",
                 version);
    return NULL;
  }
  gint64 timeout_us;
  if (!timeout_from_env (&timeout_us, error))
    return NULL;

  nccl_priv *p = g_new0 (nccl_priv, 1);
  g_mutex_init (&p->lock);
  g_mutex_init (&p->links_lock);
  p->n = n_stages;
  p->timeout_us = timeout_us;
  p->be = g_new0 (dp_backend *, n_stages);
  p->dev = g_new0 (int, n_stages);
  p->compute = g_new0 (cudaStream_t, n_stages);
  p->links = g_new0 (nccl_link *, (size_t) n_stages * n_stages);
  p->pool = g_new0 (dp_transport_req, (size_t) n_stages * DP_TRANSPORT_MAX_PENDING);
  p->sent = g_new0 (uint64_t, n_stages);
  p->received = g_new0 (uint64_t, n_stages);
  dp_transport *t = g_new0 (dp_transport, 1);
  t->ops = &nccl_ops;
  t->name = "nccl";
  t->n_stages = n_stages;
  t->priv = p;

  int saved = -1;
  if (cudaGetDevice (&saved) != cudaSuccess) {
    (void) cudaGetLastError ();
    saved = -1;
  }
  gboolean ok = TRUE;
  for (int r = 0; r < n_stages && ok; r++) {
    p->be[r] = backends[r];
    p->dev[r] = dp_cuda_backend_device (backends[r]);
    p->compute[r] = (cudaStream_t) dp_cuda_backend_stream (backends[r]);
    ok = cuda_check (cudaSetDevice (p->dev[r]), NULL, "cudaSetDevice", error);
    for (int k = 0; k < DP_TRANSPORT_MAX_PENDING && ok; k++) {
      dp_transport_req *q = &p->pool[(size_t) r * DP_TRANSPORT_MAX_PENDING + k];
      ok = cuda_check (cudaEventCreateWithFlags (&q->ready, cudaEventDisableTiming), NULL, "cudaEventCreate", error) &&
           cuda_check (cudaEventCreateWithFlags (&q->done, cudaEventDisableTiming), NULL, "cudaEventCreate", error);
    }
  }
  /* The engine's ring, connected now rather than on the first message. */
  for (int r = 0; r < n_stages && ok && n_stages > 1; r++)
    ok = link_get (p, r, (r + 1) % n_stages, error) != NULL;
  if (saved >= 0 && cudaSetDevice (saved) != cudaSuccess)
    (void) cudaGetLastError ();
  if (!ok) {
    nccl_destroy (t);
    return NULL;
  }
  return t;
}

void
dp_nccl_transport_set_timeout (dp_transport *t, double seconds)
{
  nccl_priv *p = t->priv;
  g_mutex_lock (&p->lock);
  p->timeout_us = seconds > 0 ? (gint64) (MIN (seconds, 1e9) * G_USEC_PER_SEC) : 0;
  g_mutex_unlock (&p->lock);
}

double
dp_nccl_transport_get_timeout (dp_transport *t)
{
  return get_timeout_us (t->priv) / (double) G_USEC_PER_SEC;
}

gboolean
dp_nccl_transport_uses_nccl (dp_transport *t, int src, int dst)
{
  nccl_priv *p = t->priv;
  return src >= 0 && src < p->n && dst >= 0 && dst < p->n && src != dst && p->dev[src] != p->dev[dst];
}
