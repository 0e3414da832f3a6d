/* dualparal: the device transport between CUDA stages (transport.h).
 *
 * One process, one thread per stage, each stage a CUDA backend
 * (cuda_backend.h).  Messages between stages on distinct GPUs go through
 * NCCL (ncclSend / ncclRecv of the device buffers); between two stages on
 * the same GPU they are one cudaMemcpyAsync.  Either way a transfer runs on
 * a communication stream of its own, ordered after the producing work on
 * the sender's compute stream and before the consumer's next kernels, so
 * communication overlaps compute.  docs/algorithm.md ("Transport") gives
 * the design; nccl_transport.c the details.
 *
 * Links: every ordered pair of stages that exchanges messages gets its own
 * pair of streams and, across GPUs, its own two-rank NCCL communicator
 * (nonblocking: ncclConfig_t.blocking = 0).  The engine's ring (stage r to
 * r + 1, the last stage to stage 0) is created and connected by
 * dp_nccl_transport_new(); any other pair on its first message (that post
 * then takes as long as creating a communicator, about a second).
 *
 * Semantics are those of transport.h, with the in-process transport's
 * rendezvous: a message starts once both sides have posted.  Buffers are
 * device memory of the posting stage's backend; isend / irecv queue the
 * transfer after the work already queued on that stage's compute stream
 * (the engine syncs before sending anyway), and a completed wait on a
 * receive makes the compute stream wait for the data, so kernels queued
 * after dp_transport_wait() see it.
 *
 * Failures never hang: a wait ends with DP_ERROR_DEVICE when NCCL or CUDA
 * reports an error, or when the request has not completed within the
 * timeout (a peer that never posts the matching operation, a stuck
 * transfer); the message names the stages, GPUs, size and cause.  After such
 * a failure later posts fail until dp_transport_reset(), which aborts
 * (ncclCommAbort) and re-creates any communicator that is still busy or has
 * reported an error.  dp_transport_cancel() makes every wait return
 * DP_ERROR_CANCELLED within a millisecond or so.
 *
 * Status: the one-GPU paths (device copies between stages on one GPU,
 * timeouts, cancel) passed tests/test_gpu_engine.c on an H200; the NCCL
 * path between GPUs has not run (the lent machines have one GPU).  The
 * transport between processes (dp_nccl_process_transport_new) is compiled
 * and linked, not yet run (docs/distributed.md).
 */
#ifndef DUALPARAL_NCCL_TRANSPORT_H
#define DUALPARAL_NCCL_TRANSPORT_H

#include "dualparal/transport.h"

G_BEGIN_DECLS

/* Seconds a request may wait (for its peer to post, then for the transfer)
 * before it fails; the DP_NCCL_TIMEOUT environment variable (seconds, 0:
 * no timeout) overrides it when the transport is made.  Generous because
 * a stage legitimately waits while its peer computes, decodes or sits in a
 * consumer callback: a consumer that blocks the frames callback for longer
 * than this ends a multi-GPU run with the timeout error. */
#define DP_NCCL_TRANSPORT_DEFAULT_TIMEOUT 600.0

/* A transport for n_stages stages, stage r on backends[r] (CUDA backends,
 * not owned, outliving the transport; each driven by its own thread).  The
 * same GPU may appear several times (device copies between those stages).
 * NULL with DP_ERROR_UNSUPPORTED when a backend is not a CUDA backend or the
 * NCCL library is older than 2.14 (nonblocking communicators),
 * DP_ERROR_INVALID for a bad DP_NCCL_TIMEOUT, DP_ERROR_DEVICE when a
 * communicator, stream or event cannot be made. */
dp_transport *dp_nccl_transport_new (dp_backend *const *backends, int n_stages, GError **error);

/* Timeout of waits posted after the call, in seconds (<= 0: none).
 * Thread-safe.  t must come from dp_nccl_transport_new(). */
void dp_nccl_transport_set_timeout (dp_transport *t, double seconds);
double dp_nccl_transport_get_timeout (dp_transport *t);

/* The NCCL transport between processes (nccl_process_transport.c,
 * docs/distributed.md): this process runs stage `stage` of n_stages on the
 * CUDA backend be (not owned); each run's dp_transport_attach() exchanges
 * the NCCL unique ids over the given byte streams and makes two two-rank
 * communicators (to the next stage's process, from the previous one's).
 * hidden_bf16: hidden states travel as BF16.  DP_NCCL_TIMEOUT applies as
 * above.  Use dp_transport_new_process() (transport.h) rather than this. */
dp_transport *dp_nccl_process_transport_new (int n_stages, int stage, dp_backend *be, gboolean hidden_bf16,
                                             GError **error);

/* Whether messages from stage src to stage dst go through NCCL (their GPUs
 * differ) rather than a device copy (the same GPU). */
gboolean dp_nccl_transport_uses_nccl (dp_transport *t, int src, int dst);

G_END_DECLS

#endif
