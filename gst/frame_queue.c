/* dualparalsrc: bounded frame queue (see frame_queue.h). */
#include "frame_queue.h"

struct _DualParalFrameQueue {
  GMutex lock;
  GCond cond; /* signalled on every change a waiter may care about */
  GQueue items;
  guint capacity;
  GDestroyNotify free_item;
  gboolean flushing; /* consumer side: pop returns FLUSHING */
  gboolean shutdown; /* producer side: push returns FALSE */
  gboolean finished; /* producer is done, see error */
  GError *error;     /* why the producer stopped, NULL for a complete stream */
};

DualParalFrameQueue *
dualparal_frame_queue_new (GDestroyNotify free_item)
{
  DualParalFrameQueue *queue = g_new0 (DualParalFrameQueue, 1);

  g_mutex_init (&queue->lock);
  g_cond_init (&queue->cond);
  g_queue_init (&queue->items);
  queue->capacity = 1;
  queue->free_item = free_item;
  return queue;
}

static void
drop_items_locked (DualParalFrameQueue *queue)
{
  gpointer item;

  while ((item = g_queue_pop_head (&queue->items)) != NULL) {
    if (queue->free_item)
      queue->free_item (item);
  }
}

void
dualparal_frame_queue_free (DualParalFrameQueue *queue)
{
  if (queue == NULL)
    return;
  drop_items_locked (queue);
  g_clear_error (&queue->error);
  g_cond_clear (&queue->cond);
  g_mutex_clear (&queue->lock);
  g_free (queue);
}

void
dualparal_frame_queue_reset (DualParalFrameQueue *queue, guint capacity)
{
  g_mutex_lock (&queue->lock);
  drop_items_locked (queue);
  queue->capacity = MAX (capacity, 1);
  queue->shutdown = FALSE;
  queue->finished = FALSE;
  g_clear_error (&queue->error);
  g_cond_broadcast (&queue->cond);
  g_mutex_unlock (&queue->lock);
}

gboolean
dualparal_frame_queue_push (DualParalFrameQueue *queue, gpointer item)
{
  gboolean taken = FALSE;

  g_return_val_if_fail (item != NULL, FALSE);

  g_mutex_lock (&queue->lock);
  while (!queue->shutdown && g_queue_get_length (&queue->items) >= queue->capacity)
    g_cond_wait (&queue->cond, &queue->lock);
  if (!queue->shutdown) {
    g_queue_push_tail (&queue->items, item);
    taken = TRUE;
    g_cond_broadcast (&queue->cond);
  }
  g_mutex_unlock (&queue->lock);
  return taken;
}

void
dualparal_frame_queue_finish (DualParalFrameQueue *queue, GError *error)
{
  g_mutex_lock (&queue->lock);
  if (!queue->finished) {
    queue->finished = TRUE;
    queue->error = error;
    error = NULL;
  }
  g_cond_broadcast (&queue->cond);
  g_mutex_unlock (&queue->lock);
  g_clear_error (&error);
}

DualParalFrameQueueResult
dualparal_frame_queue_pop (DualParalFrameQueue *queue, gpointer *item, GError **error)
{
  DualParalFrameQueueResult result;

  *item = NULL;
  g_mutex_lock (&queue->lock);
  while (!queue->flushing && !queue->finished && g_queue_is_empty (&queue->items))
    g_cond_wait (&queue->cond, &queue->lock);

  if (queue->flushing) {
    result = DUALPARAL_FRAME_QUEUE_FLUSHING;
  } else if (!g_queue_is_empty (&queue->items)) {
    *item = g_queue_pop_head (&queue->items);
    result = DUALPARAL_FRAME_QUEUE_OK;
    g_cond_broadcast (&queue->cond); /* room for the producer */
  } else if (queue->error != NULL) {
    result = DUALPARAL_FRAME_QUEUE_ERROR;
    if (error)
      *error = g_error_copy (queue->error);
  } else {
    result = DUALPARAL_FRAME_QUEUE_EOS;
  }
  g_mutex_unlock (&queue->lock);
  return result;
}

void
dualparal_frame_queue_set_flushing (DualParalFrameQueue *queue, gboolean flushing)
{
  g_mutex_lock (&queue->lock);
  queue->flushing = flushing;
  g_cond_broadcast (&queue->cond);
  g_mutex_unlock (&queue->lock);
}

void
dualparal_frame_queue_shutdown (DualParalFrameQueue *queue)
{
  g_mutex_lock (&queue->lock);
  queue->shutdown = TRUE;
  g_cond_broadcast (&queue->cond);
  g_mutex_unlock (&queue->lock);
}

guint
dualparal_frame_queue_length (DualParalFrameQueue *queue)
{
  guint length;

  g_mutex_lock (&queue->lock);
  length = g_queue_get_length (&queue->items);
  g_mutex_unlock (&queue->lock);
  return length;
}
