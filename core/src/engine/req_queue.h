/* The matching of posted transport requests, shared by the transports
 * (transport_inproc.c, nccl_transport.c): per link src -> dst, sends and
 * receives that wait for their peer, in posting order.  A request embeds a
 * dp_req_node as its first member; the queues link requests, never own
 * them.  Callers hold the link's lock. */
#ifndef DP_REQ_QUEUE_H
#define DP_REQ_QUEUE_H

#include <glib.h>

typedef struct dp_req_node {
  struct dp_req_node *next;
} dp_req_node;

typedef struct {
  dp_req_node *head, *tail;
} dp_req_fifo;

typedef struct {
  dp_req_fifo sends, recvs; /* posted and not yet matched */
} dp_req_queues;

static inline void
dp_req_fifo_push (dp_req_fifo *q, dp_req_node *n)
{
  n->next = NULL;
  if (q->tail)
    q->tail->next = n;
  else
    q->head = n;
  q->tail = n;
}

static inline dp_req_node *
dp_req_fifo_pop (dp_req_fifo *q)
{
  dp_req_node *n = q->head;
  if (n) {
    q->head = n->next;
    if (!q->head)
      q->tail = NULL;
    n->next = NULL;
  }
  return n;
}

/* Matches n with the oldest request of the other direction and returns it,
 * or queues n and returns NULL. */
static inline dp_req_node *
dp_req_match_or_queue (dp_req_queues *q, dp_req_node *n, gboolean is_send)
{
  dp_req_node *peer = dp_req_fifo_pop (is_send ? &q->recvs : &q->sends);
  if (!peer)
    dp_req_fifo_push (is_send ? &q->sends : &q->recvs, n);
  return peer;
}

/* Takes a queued n out (a cancelled or failed wait); no-op when n is not queued. */
static inline void
dp_req_unqueue (dp_req_queues *q, dp_req_node *n, gboolean is_send)
{
  dp_req_fifo *f = is_send ? &q->sends : &q->recvs;
  dp_req_node *prev = NULL;
  for (dp_req_node *x = f->head; x; prev = x, x = x->next) {
    if (x != n)
      continue;
    if (prev)
      prev->next = x->next;
    else
      f->head = x->next;
    if (f->tail == x)
      f->tail = prev;
    x->next = NULL;
    return;
  }
}

#endif
