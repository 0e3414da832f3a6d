/* DualParal engine: the transport interface (transport.h), implementation-
 * independent entry points. */
#include "dualparal/transport.h"

#include <string.h>

#include "dualparal/device.h"

static gboolean
check_stages (dp_transport *t, const char *op, int a, int b, const dp_tensor *buf, GError **error)
{
  if (a < 0 || a >= t->n_stages || b < 0 || b >= t->n_stages || a == b) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "transport %s: %s between stages %d and %d of %d", t->name, op,
                 a, b, t->n_stages);
    return FALSE;
  }
  if (!buf || !buf->data) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "transport %s: %s without a buffer", t->name, op);
    return FALSE;
  }
  return TRUE;
}

dp_transport_req *
dp_transport_isend (dp_transport *t, int src, int dst, const dp_tensor *buf, GError **error)
{
  if (!check_stages (t, "send", src, dst, buf, error))
    return NULL;
  return t->ops->isend (t, src, dst, buf, error);
}

dp_transport_req *
dp_transport_irecv (dp_transport *t, int dst, int src, dp_tensor *buf, GError **error)
{
  if (!check_stages (t, "receive", dst, src, buf, error))
    return NULL;
  return t->ops->irecv (t, dst, src, buf, error);
}

gboolean
dp_transport_wait (dp_transport *t, dp_transport_req *req, GError **error)
{
  return t->ops->wait (t, req, error);
}

void
dp_transport_cancel (dp_transport *t)
{
  t->ops->cancel (t);
}

void
dp_transport_reset (dp_transport *t)
{
  t->ops->reset (t);
}

void
dp_transport_bytes (dp_transport *t, int stage, uint64_t *sent, uint64_t *received)
{
  t->ops->bytes (t, stage, sent, received);
}

void
dp_transport_free (dp_transport *t)
{
  if (t)
    t->ops->destroy (t);
}

gboolean
dp_transport_attach (dp_transport *t, GIOStream *to_next, GIOStream *from_prev, GError **error)
{
  if (!t->ops->attach) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "transport %s: not a transport between processes", t->name);
    return FALSE;
  }
  return t->ops->attach (t, to_next, from_prev, error);
}

void
dp_transport_detach (dp_transport *t)
{
  if (t->ops->detach)
    t->ops->detach (t);
}

dp_transport *
dp_transport_new_process (int n_stages, int stage, dp_backend *be, gboolean hidden_bf16, const char *kind,
                          GError **error)
{
  /* A device backend's own transport (NCCL for CUDA) is the default; the
   * socket transport stages any backend's tensors through host memory. */
  const dp_device_provider *p = dp_device_provider_of (be);
  const char *native = p && p->process_transport_new ? p->process_transport_name : NULL;
  if (!kind || !*kind)
    kind = native ? native : "socket";
  if (strcmp (kind, "socket") == 0)
    return dp_transport_new_socket (n_stages, stage, be, hidden_bf16 ? DP_BF16 : DP_F32, error);
  if (strcmp (kind, "nccl") != 0) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "transport \"%s\": use socket or nccl", kind);
    return NULL;
  }
  if (native == NULL || strcmp (native, kind) != 0) {
    g_set_error (error, DP_ERROR, DP_ERROR_UNSUPPORTED,
                 "transport %s: stage %d runs on %s; NCCL needs a CUDA device (DUALPARAL_TRANSPORT=socket "
                 "moves data through host memory for any device)", kind, stage, be->name);
    return NULL;
  }
  return p->process_transport_new (n_stages, stage, be, hidden_bf16, error);
}
