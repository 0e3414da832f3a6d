/* dualparalsrc: the bounded frame queue between the generator's worker
 * thread (one producer) and the streaming thread (one consumer).
 *
 * Modelled on appsrc's queue: one GMutex, one GCond, FIFO of items.
 * - push() blocks while the queue holds `capacity` items (backpressure: a
 *   slow downstream pauses generation); shutdown() makes it return FALSE.
 * - pop() blocks while the queue is empty; set_flushing (TRUE) makes it
 *   return FLUSHING at once (unlock), finish() lets it return EOS or ERROR
 *   once the queued items are drained.
 * Flushing does not drop items and does not wake the producer: the stream
 * is not seekable, so frames stay valid across unlock / unlock_stop, and the
 * producer is woken by shutdown() when the element stops.
 *
 * Items are opaque pointers owned by the queue while queued and released
 * with the GDestroyNotify given at creation when the queue drops them.
 */
#ifndef DUALPARAL_FRAME_QUEUE_H
#define DUALPARAL_FRAME_QUEUE_H

#include <glib.h>

G_BEGIN_DECLS

typedef struct _DualParalFrameQueue DualParalFrameQueue;

typedef enum {
  DUALPARAL_FRAME_QUEUE_OK,       /* *item is set, transfer full */
  DUALPARAL_FRAME_QUEUE_FLUSHING, /* set_flushing (TRUE) is in effect */
  DUALPARAL_FRAME_QUEUE_EOS,      /* finish (NULL) and nothing left */
  DUALPARAL_FRAME_QUEUE_ERROR,    /* finish (error) and nothing left */
} DualParalFrameQueueResult;

DualParalFrameQueue *dualparal_frame_queue_new (GDestroyNotify free_item);
/* Drops the queued items.  No thread may be waiting on the queue. */
void dualparal_frame_queue_free (DualParalFrameQueue *queue);

/* Drops the queued items, forgets finish () and shutdown () and sets the
 * bound (>= 1).  The flushing state is left alone (basesrc balances it). */
void dualparal_frame_queue_reset (DualParalFrameQueue *queue, guint capacity);

/* Producer.  Appends item (transfer full on TRUE), waiting while the queue is
 * full.  FALSE after shutdown (): the item was not taken. */
gboolean dualparal_frame_queue_push (DualParalFrameQueue *queue, gpointer item);
/* Producer is done: error NULL for a complete stream, else the reason
 * (transfer full).  Only the first call counts. */
void dualparal_frame_queue_finish (DualParalFrameQueue *queue, GError *error);

/* Consumer.  Waits for an item, the end of the stream or flushing.  On
 * DUALPARAL_FRAME_QUEUE_ERROR, *error receives a copy of the reason. */
DualParalFrameQueueResult dualparal_frame_queue_pop (DualParalFrameQueue *queue,
                                                     gpointer *item, GError **error);

/* unlock (TRUE) / unlock_stop (FALSE): wakes a waiting pop (). */
void dualparal_frame_queue_set_flushing (DualParalFrameQueue *queue, gboolean flushing);
/* Wakes a waiting push () for good (until reset ()); used on stop. */
void dualparal_frame_queue_shutdown (DualParalFrameQueue *queue);

guint dualparal_frame_queue_length (DualParalFrameQueue *queue);

G_END_DECLS

#endif
