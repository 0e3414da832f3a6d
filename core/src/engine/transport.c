/* DualParal engine: the transport interface (transport.h), implementation-
 * independent entry points. */
#include "dualparal/transport.h"

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
