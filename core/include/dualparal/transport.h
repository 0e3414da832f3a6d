/* dualparal: moving tensors between pipeline stages.
 *
 * The DualParal engine (engine.h) runs the DiT's layers as N stages, each on
 * its own thread and device.  Hidden states go from stage r to stage r + 1,
 * velocity predictions from the last stage back to stage 0.  A transport
 * carries them; the engine is written against this interface only, so the
 * in-process implementation (threads, host memory) and an NCCL one (device
 * buffers, CUDA streams) are interchangeable.
 *
 * Model (MPI / NCCL point-to-point):
 * - Stages are numbered 0..n_stages-1.  Between any ordered pair (src, dst)
 *   messages are matched in the order they were posted: the k-th send from
 *   src to dst fills the k-th receive dst posted for src.  There are no tags:
 *   every stage knows from the schedule what comes next.
 * - dp_transport_isend() / dp_transport_irecv() post an operation and return
 *   at once with a request; dp_transport_wait() blocks until it is complete
 *   and releases the request.  Until then the buffer belongs to the
 *   transport: do not write a buffer being sent nor read one being received.
 * - Completion may need the peer: a send can complete only once the matching
 *   receive is posted (rendezvous; NCCL behaves so).  Callers must not rely
 *   on buffering, i.e. must post receives before waiting on sends that a
 *   peer cannot reach otherwise (the engine's loops are written that way).
 * - Buffers are tensors in the memory of the posting stage's backend, with
 *   the same byte size on both sides (checked: a mismatch fails both
 *   requests with DP_ERROR_SHAPE).  The caller makes the data ready before
 *   posting a send (the engine syncs the stage's backend first); an
 *   implementation on GPUs may instead order the transfer after the work
 *   already queued on the stage's stream.
 * - Requests are owned by the transport (preallocated: posting allocates
 *   nothing); a stage may have DP_TRANSPORT_MAX_PENDING of them outstanding.
 *   Only the thread that posted a request waits on it.
 * - dp_transport_cancel() (any thread) makes every pending and later wait
 *   fail with DP_ERROR_CANCELLED, promptly; dp_transport_reset() (when no
 *   thread uses the transport any more) drops what is left and clears the
 *   cancellation, ready for the next run.
 *
 * Thread safety: isend / irecv / wait from the stage threads concurrently,
 * cancel from anywhere; reset and free from one thread with no other user.
 */
#ifndef DUALPARAL_TRANSPORT_H
#define DUALPARAL_TRANSPORT_H

#include "dualparal/backend.h"

#include <gio/gio.h>

G_BEGIN_DECLS

/* Outstanding requests per stage (posted and not yet waited on). */
#define DP_TRANSPORT_MAX_PENDING 8

typedef struct dp_transport dp_transport;
typedef struct dp_transport_req dp_transport_req;

typedef struct {
  dp_transport_req *(*isend) (dp_transport *t, int src, int dst, const dp_tensor *buf, GError **error);
  dp_transport_req *(*irecv) (dp_transport *t, int dst, int src, dp_tensor *buf, GError **error);
  gboolean (*wait) (dp_transport *t, dp_transport_req *req, GError **error);
  void (*cancel) (dp_transport *t);
  void (*reset) (dp_transport *t);
  /* Bytes stage has sent / received since the transport was made. */
  void (*bytes) (dp_transport *t, int stage, uint64_t *sent, uint64_t *received);
  void (*destroy) (dp_transport *t);
  /* Transports between processes only (NULL otherwise): a run's byte
   * streams to the next stage's process and from the previous one's
   * (dp_transport_attach), and their end (dp_transport_detach). */
  gboolean (*attach) (dp_transport *t, GIOStream *to_next, GIOStream *from_prev, GError **error);
  void (*detach) (dp_transport *t);
} dp_transport_ops;

struct dp_transport {
  const dp_transport_ops *ops;
  const char *name; /* "inproc", "nccl", "socket" */
  int n_stages;
  void *priv;
};

/* The in-process transport: stages are threads of this process and buffers
 * are host memory (backends with host_memory, e.g. one "cpu" backend per
 * stage).  A message is one memcpy, done by whichever side posts second. */
dp_transport *dp_transport_new_inproc (int n_stages, GError **error);

/* The socket transport: this process runs stage `stage` of n_stages (>= 2),
 * the others run in other processes (docs/distributed.md).  Its messages go
 * to stage (stage + 1) % n and come from stage (stage - 1 + n) % n over two
 * byte streams (TCP connections, one per direction) attached for each run
 * with dp_transport_socket_attach().  be is the stage's backend (not owned):
 * buffers in memory the host cannot address are staged through host memory
 * on the posting thread.  hidden_wire: DP_F32 (exact; N processes give the
 * frames of one) or DP_BF16 (half the bytes) for hidden states; predictions
 * to stage 0 are always F32.  A peer that closes its stream fails the waits
 * with DP_ERROR_IO; dp_transport_cancel() interrupts them at once. */
dp_transport *dp_transport_new_socket (int n_stages, int stage, dp_backend *be, dp_dtype hidden_wire,
                                       GError **error);

/* A transport between processes for this process's stage `stage` of
 * n_stages on be (docs/distributed.md): kind "socket" (any backend; device
 * buffers staged through host memory), "nccl" (CUDA backends, from the
 * CUDA module's provider (device.h): NCCL point-to-point between the
 * processes' GPUs), or NULL: the backend's provider's own transport (nccl
 * for a CUDA backend), else socket.  DP_ERROR_UNSUPPORTED when the kind does
 * not suit the backend or the build. */
dp_transport *dp_transport_new_process (int n_stages, int stage, dp_backend *be, gboolean hidden_bf16,
                                        const char *kind, GError **error);
/* For a transport between processes: gives it this run's byte streams to
 * the next stage's process and from the previous one's (it takes
 * references; those of an earlier run are dropped).  The NCCL transport
 * uses them to exchange its unique ids, the socket transport carries the
 * messages on them.  DP_ERROR_INVALID for an in-process transport. */
gboolean dp_transport_attach (dp_transport *t, GIOStream *to_next, GIOStream *from_prev, GError **error);
/* Ends the run's links (after a run); waits on later requests fail. */
void dp_transport_detach (dp_transport *t);

/* Posts a send of buf (stage src's memory) to stage dst. */
dp_transport_req *dp_transport_isend (dp_transport *t, int src, int dst, const dp_tensor *buf, GError **error);
/* Posts a receive into buf (stage dst's memory) of the next message from src. */
dp_transport_req *dp_transport_irecv (dp_transport *t, int dst, int src, dp_tensor *buf, GError **error);
/* Waits for req and releases it (also on failure).  FALSE with the error:
 * DP_ERROR_CANCELLED after dp_transport_cancel(), DP_ERROR_SHAPE for a size
 * mismatch, DP_ERROR_DEVICE for a device / NCCL failure. */
gboolean dp_transport_wait (dp_transport *t, dp_transport_req *req, GError **error);
void dp_transport_cancel (dp_transport *t);
void dp_transport_reset (dp_transport *t);
void dp_transport_bytes (dp_transport *t, int stage, uint64_t *sent, uint64_t *received);
void dp_transport_free (dp_transport *t);

G_END_DECLS

#endif
