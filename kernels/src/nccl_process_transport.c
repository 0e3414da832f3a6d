/* The NCCL transport between processes (nccl_transport.h, transport.h;
 * docs/distributed.md).
 *
 * This process runs one stage r of the ring on one CUDA backend.  Each run
 * gets two two-rank NCCL communicators: "out" to stage (r + 1) % n (this
 * process is its rank 0) and "in" from stage (r - 1 + n) % n (rank 1).  A
 * communicator carries exactly one ordered message stream, as the contract
 * asks (one per direction, for the reason the in-process NCCL transport
 * gives: a shared one would queue a receive posted ahead before a send).
 *
 * Bootstrap: the sender of a link makes its ncclUniqueId and writes the 128
 * bytes on the run's byte stream to its peer (dp_transport_attach); the
 * receiver reads them from its stream from the previous stage.  Then both
 * communicators are created in one group, nonblocking
 * (ncclConfig_t.blocking = 0), and polled under a deadline.
 *
 * Posting: isend / irecv record a `ready` event on the backend's compute
 * stream (the data is written / the buffer is free), make the link's
 * stream wait for it, queue ncclSend / ncclRecv there and record `done`.
 * NCCL matches the two processes' operations in order on the GPUs.  wait()
 * polls `done`, the cancel flag, ncclCommGetAsyncError and a timeout; a
 * completed receive makes the compute stream wait for `done`.  BF16 on the
 * wire converts through a device staging buffer per request slot with the
 * backend's own copy op (on the compute stream).
 *
 * Failures: a wait ends with DP_ERROR_DEVICE naming the stages when NCCL or
 * CUDA fails or the timeout passes (DP_NCCL_TIMEOUT, as the in-process
 * transport); a dead peer process makes NCCL's network transport fail, and
 * rank 0's control channel reports the rank first anyway.  Detach aborts
 * both communicators (ncclCommAbort: their kernels quit, nothing waits for
 * the peer) and drains the link streams, so a run that failed leaves
 * nothing behind; the next run makes new communicators.
 *
 * Status: compiled and linked in CI; tools/multiproc-gpu-check.sh runs it on
 * one GPU (processes made to look like hosts of their own); see
 * docs/distributed.md for what has run. */
#include "nccl_transport.h"
#include "cuda_backend.h"

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <string.h>

#define POLL_US 50
#define INIT_TIMEOUT_US (120 * G_USEC_PER_SEC)
#define DRAIN_US (10 * G_USEC_PER_SEC)

typedef enum { REQ_FREE = 0, REQ_POSTED, REQ_FAILED } req_state;

struct dp_transport_req {
  gboolean is_send;
  req_state state;
  dp_tensor buf;      /* the caller's F32 tensor */
  void *wire;         /* device bytes NCCL moves: buf's data, or staging */
  size_t count;       /* elements */
  void *staging;      /* BF16 device buffer of this slot (grown once) */
  size_t staging_cap; /* elements */
  cudaEvent_t ready, done;
  gint64 since_us;
};

typedef struct {
  gboolean is_send;
  int peer;                /* the stage at the other end */
  ncclComm_t comm;         /* this run's; NULL when detached */
  cudaStream_t stream;
  dp_transport_req pool[DP_TRANSPORT_MAX_PENDING];
} plink;

typedef struct {
  int n, stage, dev;
  dp_backend *be;          /* not owned */
  cudaStream_t compute;
  gboolean bf16;
  plink out, in;
  gint cancelled;          /* atomic */
  gint64 timeout_us;       /* 0: none */
  GMutex lock;             /* byte counts */
  uint64_t sent, received;
} nccl_proc;

static char *
prefix (const nccl_proc *p, const plink *l)
{
  if (!l)
    return g_strdup_printf ("transport nccl (processes): stage %d (GPU %d)", p->stage, p->dev);
  return g_strdup_printf ("transport nccl (processes): stage %d %s %d (GPU %d)", p->stage, l->is_send ? "->" : "<-",
                          l->peer, p->dev);
}

static gboolean
cuda_ok (cudaError_t err, const nccl_proc *p, const plink *l, const char *what, GError **error)
{
  if (err == cudaSuccess)
    return TRUE;
  (void) cudaGetLastError ();
  char *pre = prefix (p, l);
  g_set_error (error, DP_ERROR, err == cudaErrorMemoryAllocation ? DP_ERROR_NOMEM : DP_ERROR_DEVICE, "%s: %s: %s", pre,
               what, cudaGetErrorString (err));
  g_free (pre);
  return FALSE;
}

static gboolean
nccl_ok (ncclResult_t r, const nccl_proc *p, const plink *l, const char *what, GError **error)
{
  if (r == ncclSuccess || r == ncclInProgress)
    return TRUE;
  const char *last = l && l->comm ? ncclGetLastError (l->comm) : ncclGetLastError (NULL);
  char *pre = prefix (p, l);
  g_set_error (error, DP_ERROR, DP_ERROR_DEVICE, "%s: %s: %s%s%s", pre, what, ncclGetErrorString (r),
               last && *last ? ": " : "", last && *last ? last : "");
  g_free (pre);
  return FALSE;
}

/* FALSE with an error when l's communicator failed; *busy: a nonblocking
 * call is still in progress. */
static gboolean
comm_state (const nccl_proc *p, const plink *l, gboolean *busy, GError **error)
{
  *busy = FALSE;
  if (!l->comm)
    return TRUE;
  ncclResult_t state = ncclSuccess;
  if (!nccl_ok (ncclCommGetAsyncError (l->comm, &state), p, l, "ncclCommGetAsyncError", error))
    return FALSE;
  if (state == ncclInProgress) {
    *busy = TRUE;
    return TRUE;
  }
  return nccl_ok (state, p, l, "the communicator reported an error", error);
}

static gboolean
comm_settle (const nccl_proc *p, const plink *l, gint64 deadline, const char *what, GError **error)
{
  for (;;) {
    gboolean busy;
    if (!comm_state (p, l, &busy, error))
      return FALSE;
    if (!busy)
      return TRUE;
    if (g_get_monotonic_time () > deadline) {
      char *pre = prefix (p, l);
      g_set_error (error, DP_ERROR, DP_ERROR_DEVICE, "%s: %s did not finish in time", pre, what);
      g_free (pre);
      return FALSE;
    }
    g_usleep (POLL_US);
  }
}

/* ------------------------------------------------------------ posting */

static dp_transport_req *
take (plink *l)
{
  for (int k = 0; k < DP_TRANSPORT_MAX_PENDING; k++)
    if (l->pool[k].state == REQ_FREE)
      return &l->pool[k];
  return NULL;
}

static dp_transport_req *
post (dp_transport *t, gboolean is_send, int self, int peer, const dp_tensor *buf, GError **error)
{
  nccl_proc *p = t->priv;
  plink *l = is_send ? &p->out : &p->in;
  if (self != p->stage || peer != l->peer) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID,
                 "transport nccl (processes): this process runs stage %d and %s stage %d only", p->stage,
                 is_send ? "sends to" : "receives from", l->peer);
    return NULL;
  }
  if (!l->comm) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "transport nccl (processes): stage %d has no link to stage %d",
                 self, peer);
    return NULL;
  }
  if (buf->dtype != DP_F32) {
    g_set_error (error, DP_ERROR, DP_ERROR_UNSUPPORTED, "transport nccl (processes): F32 buffers only");
    return NULL;
  }
  if (g_atomic_int_get (&p->cancelled)) {
    g_set_error (error, DP_ERROR, DP_ERROR_CANCELLED, "transport nccl (processes): cancelled");
    return NULL;
  }
  dp_transport_req *r = take (l);
  if (!r) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "transport nccl (processes): more than %d requests pending",
                 DP_TRANSPORT_MAX_PENDING);
    return NULL;
  }
  r->is_send = is_send;
  r->buf = *buf;
  r->count = (size_t) dp_tensor_nelem (buf);
  /* Predictions go to stage 0 in F32, hidden states as asked. */
  const gboolean bf16 = p->bf16 && (is_send ? peer : self) != 0;
  r->wire = buf->data;
  if (bf16) {
    if (r->staging_cap < r->count) {
      if (r->staging)
        cudaFree (r->staging);
      r->staging = NULL;
      r->staging_cap = 0;
      if (!cuda_ok (cudaMalloc (&r->staging, r->count * 2), p, l, "cudaMalloc (BF16 staging)", error))
        return NULL;
      r->staging_cap = r->count;
    }
    r->wire = r->staging;
    if (is_send) {
      dp_tensor wire = dp_tensor_view (r->staging, DP_BF16, buf->ndim, buf->shape);
      p->be->ops->copy (p->be, &wire, buf);
      if (!dp_backend_check (p->be, error))
        return NULL;
    }
  }
  const ncclDataType_t type = bf16 ? ncclBfloat16 : ncclFloat32;
  gboolean ok = cuda_ok (cudaEventRecord (r->ready, p->compute), p, l, "cudaEventRecord", error) &&
                cuda_ok (cudaStreamWaitEvent (l->stream, r->ready, 0), p, l, "cudaStreamWaitEvent", error);
  if (ok) {
    /* The peer is rank 1 of the out link, rank 0 of the in link. */
    ncclResult_t res = is_send ? ncclSend (r->wire, r->count, type, 1, l->comm, l->stream)
                               : ncclRecv (r->wire, r->count, type, 0, l->comm, l->stream);
    ok = nccl_ok (res, p, l, is_send ? "ncclSend" : "ncclRecv", error) &&
         comm_settle (p, l, g_get_monotonic_time () + INIT_TIMEOUT_US, "queueing a transfer", error) &&
         cuda_ok (cudaEventRecord (r->done, l->stream), p, l, "cudaEventRecord", error);
  }
  if (!ok)
    return NULL;
  r->state = REQ_POSTED;
  r->since_us = g_get_monotonic_time ();
  return r;
}

static dp_transport_req *
np_isend (dp_transport *t, int src, int dst, const dp_tensor *buf, GError **error)
{
  return post (t, TRUE, src, dst, buf, error);
}

static dp_transport_req *
np_irecv (dp_transport *t, int dst, int src, dp_tensor *buf, GError **error)
{
  return post (t, FALSE, dst, src, buf, error);
}

static gboolean
np_wait (dp_transport *t, dp_transport_req *r, GError **error)
{
  nccl_proc *p = t->priv;
  plink *l = r->is_send ? &p->out : &p->in;
  for (;;) {
    cudaError_t q = cudaEventQuery (r->done);
    if (q == cudaSuccess)
      break;
    gboolean busy;
    GError *err = NULL;
    if (q != cudaErrorNotReady)
      cuda_ok (q, p, l, "the transfer", &err);
    else if (g_atomic_int_get (&p->cancelled))
      g_set_error (&err, DP_ERROR, DP_ERROR_CANCELLED, "transport nccl (processes): cancelled");
    else if (comm_state (p, l, &busy, &err) && p->timeout_us > 0 && g_get_monotonic_time () - r->since_us > p->timeout_us) {
      char *pre = prefix (p, l);
      g_set_error (&err, DP_ERROR, DP_ERROR_DEVICE, "%s: a %s of %zu elements did not complete within %.0f s", pre,
                   r->is_send ? "send" : "receive", r->count, p->timeout_us / 1e6);
      g_free (pre);
    }
    if (err) {
      /* The transfer may still be queued on the link stream: the slot stays
       * taken until detach aborts the communicator. */
      r->state = REQ_FAILED;
      g_propagate_error (error, err);
      return FALSE;
    }
    g_usleep (POLL_US);
  }
  r->state = REQ_FREE;
  gboolean ok = TRUE;
  if (!r->is_send) {
    ok = cuda_ok (cudaStreamWaitEvent (p->compute, r->done, 0), p, l, "cudaStreamWaitEvent", error);
    if (ok && r->wire != r->buf.data) {
      dp_tensor wire = dp_tensor_view (r->staging, DP_BF16, r->buf.ndim, r->buf.shape);
      p->be->ops->copy (p->be, &r->buf, &wire);
      ok = dp_backend_check (p->be, error);
    }
  }
  g_mutex_lock (&p->lock);
  if (r->is_send)
    p->sent += r->count * (r->wire == r->buf.data ? 4 : 2);
  else
    p->received += r->count * (r->wire == r->buf.data ? 4 : 2);
  g_mutex_unlock (&p->lock);
  return ok;
}

static void
np_cancel (dp_transport *t)
{
  nccl_proc *p = t->priv;
  g_atomic_int_set (&p->cancelled, 1);
}

/* Aborts the communicators (their kernels quit), drains the streams, frees
 * every slot. */
static void
np_detach (dp_transport *t)
{
  nccl_proc *p = t->priv;
  if (cudaSetDevice (p->dev) != cudaSuccess)
    (void) cudaGetLastError ();
  for (plink *l = &p->out; l; l = l == &p->out ? &p->in : NULL) {
    if (l->comm) {
      ncclResult_t r = ncclCommAbort (l->comm);
      if (r != ncclSuccess)
        g_debug ("transport nccl (processes): ncclCommAbort: %s", ncclGetErrorString (r));
      l->comm = NULL;
    }
    const gint64 deadline = g_get_monotonic_time () + DRAIN_US;
    while (cudaStreamQuery (l->stream) == cudaErrorNotReady && g_get_monotonic_time () < deadline)
      g_usleep (100);
    (void) cudaGetLastError ();
    for (int k = 0; k < DP_TRANSPORT_MAX_PENDING; k++)
      l->pool[k].state = REQ_FREE;
  }
}

static void
np_reset (dp_transport *t)
{
  nccl_proc *p = t->priv;
  /* After a cancel or a failure the communicators may hold unmatched
   * operations: they go (the next run attaches new ones). */
  gboolean pending = FALSE;
  for (plink *l = &p->out; l; l = l == &p->out ? &p->in : NULL)
    for (int k = 0; k < DP_TRANSPORT_MAX_PENDING; k++)
      pending |= l->pool[k].state != REQ_FREE;
  if (pending || g_atomic_int_get (&p->cancelled))
    np_detach (t);
  g_atomic_int_set (&p->cancelled, 0);
}

static void
np_bytes (dp_transport *t, int stage, uint64_t *sent, uint64_t *received)
{
  nccl_proc *p = t->priv;
  g_mutex_lock (&p->lock);
  *sent = stage == p->stage ? p->sent : 0;
  *received = stage == p->stage ? p->received : 0;
  g_mutex_unlock (&p->lock);
}

static gboolean
np_attach (dp_transport *t, GIOStream *to_next, GIOStream *from_prev, GError **error)
{
  nccl_proc *p = t->priv;
  np_detach (t);
  g_atomic_int_set (&p->cancelled, 0);
  ncclUniqueId out_id, in_id;
  GError *io = NULL;
  gsize got = 0;
  if (!cuda_ok (cudaSetDevice (p->dev), p, NULL, "cudaSetDevice", error) ||
      !nccl_ok (ncclGetUniqueId (&out_id), p, &p->out, "ncclGetUniqueId", error))
    return FALSE;
  /* The ids travel on the run's byte streams: write ours, then read the
   * previous stage's (a small write never blocks on the peer). */
  if (!g_output_stream_write_all (g_io_stream_get_output_stream (to_next), &out_id, sizeof out_id, NULL, NULL, &io) ||
      !g_output_stream_flush (g_io_stream_get_output_stream (to_next), NULL, &io) ||
      !g_input_stream_read_all (g_io_stream_get_input_stream (from_prev), &in_id, sizeof in_id, &got, NULL, &io) ||
      got != sizeof in_id) {
    char *pre = prefix (p, NULL);
    g_set_error (error, DP_ERROR, DP_ERROR_IO, "%s: exchanging NCCL ids: %s", pre,
                 io ? io->message : "the previous stage closed its stream");
    g_free (pre);
    g_clear_error (&io);
    return FALSE;
  }
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  gboolean ok = nccl_ok (ncclGroupStart (), p, NULL, "ncclGroupStart", error);
  if (ok)
    ok = nccl_ok (ncclCommInitRankConfig (&p->out.comm, 2, out_id, 0, &config), p, &p->out, "ncclCommInitRankConfig",
                  error) &&
         nccl_ok (ncclCommInitRankConfig (&p->in.comm, 2, in_id, 1, &config), p, &p->in, "ncclCommInitRankConfig",
                  error);
  ncclResult_t end = ncclGroupEnd ();
  if (ok)
    ok = nccl_ok (end, p, NULL, "ncclGroupEnd (creating the communicators)", error);
  const gint64 deadline = g_get_monotonic_time () + INIT_TIMEOUT_US;
  if (ok)
    ok = comm_settle (p, &p->out, deadline, "creating the communicator", error) &&
         comm_settle (p, &p->in, deadline, "creating the communicator", error);
  if (!ok)
    np_detach (t);
  return ok;
}

static void
np_destroy (dp_transport *t)
{
  nccl_proc *p = t->priv;
  np_detach (t);
  for (plink *l = &p->out; l; l = l == &p->out ? &p->in : NULL) {
    for (int k = 0; k < DP_TRANSPORT_MAX_PENDING; k++) {
      dp_transport_req *r = &l->pool[k];
      if (r->staging)
        cudaFree (r->staging);
      if (r->ready)
        cudaEventDestroy (r->ready);
      if (r->done)
        cudaEventDestroy (r->done);
    }
    if (l->stream)
      cudaStreamDestroy (l->stream);
  }
  (void) cudaGetLastError ();
  g_mutex_clear (&p->lock);
  g_free (p);
  g_free (t);
}

static const dp_transport_ops nccl_process_ops = {
  np_isend, np_irecv, np_wait, np_cancel, np_reset, np_bytes, np_destroy, np_attach, np_detach,
};

dp_transport *
dp_nccl_process_transport_new (int n_stages, int stage, dp_backend *be, gboolean hidden_bf16, GError **error)
{
  if (!dp_cuda_backend_is_cuda (be)) {
    g_set_error (error, DP_ERROR, DP_ERROR_UNSUPPORTED, "transport nccl (processes): %s is not a CUDA backend",
                 be->name);
    return NULL;
  }
  if (n_stages < 2 || stage < 0 || stage >= n_stages) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "transport nccl (processes): stage %d of %d", stage, n_stages);
    return NULL;
  }
  nccl_proc *p = g_new0 (nccl_proc, 1);
  g_mutex_init (&p->lock);
  p->n = n_stages;
  p->stage = stage;
  p->be = be;
  p->dev = dp_cuda_backend_device (be);
  p->compute = dp_cuda_backend_stream (be);
  p->bf16 = hidden_bf16;
  p->timeout_us = (gint64) (DP_NCCL_TRANSPORT_DEFAULT_TIMEOUT * G_USEC_PER_SEC);
  const char *env = g_getenv ("DP_NCCL_TIMEOUT");
  if (env && *env) {
    char *end = NULL;
    const double s = g_ascii_strtod (env, &end);
    if (!end || *end || s < 0) {
      g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "DP_NCCL_TIMEOUT=\"%s\": seconds >= 0 expected", env);
      g_mutex_clear (&p->lock);
      g_free (p);
      return NULL;
    }
    p->timeout_us = (gint64) (s * G_USEC_PER_SEC);
  }
  p->out = (plink){ .is_send = TRUE, .peer = (stage + 1) % n_stages };
  p->in = (plink){ .is_send = FALSE, .peer = (stage - 1 + n_stages) % n_stages };
  dp_transport *t = g_new0 (dp_transport, 1);
  t->ops = &nccl_process_ops;
  t->name = "nccl";
  t->n_stages = n_stages;
  t->priv = p;
  gboolean ok = cuda_ok (cudaSetDevice (p->dev), p, NULL, "cudaSetDevice", error);
  for (plink *l = &p->out; l && ok; l = l == &p->out ? &p->in : NULL) {
    ok = cuda_ok (cudaStreamCreateWithFlags (&l->stream, cudaStreamNonBlocking), p, l, "cudaStreamCreate", error);
    for (int k = 0; k < DP_TRANSPORT_MAX_PENDING && ok; k++)
      ok = cuda_ok (cudaEventCreateWithFlags (&l->pool[k].ready, cudaEventDisableTiming), p, l, "cudaEventCreate",
                    error) &&
           cuda_ok (cudaEventCreateWithFlags (&l->pool[k].done, cudaEventDisableTiming), p, l, "cudaEventCreate",
                    error);
  }
  if (!ok) {
    np_destroy (t);
    return NULL;
  }
  return t;
}
