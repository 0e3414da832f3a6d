/* dualparalsrc: text-to-video source element (see gstdualparalsrc.h).
 *
 * Threads:
 * - the application thread: properties, start () (loads the model so that
 *   caps can be fixated to its native size), stop ();
 * - the streaming thread: fixate/set_caps (starts the worker once the size is
 *   known), fill () (pops a frame, converts, timestamps), queries;
 * - the worker: dp_generator_run () and its frame callback, which copies
 *   frames into the bounded queue, posts progress and latency messages, and
 *   blocks while the queue is full.
 * - any application thread: prompt, negative-prompt, guidance-scale and
 *   transition-blocks set while running go to the generator under gen_lock
 *   (dp_generator_set_prompt only queues the change: quick); the generator
 *   reports a change taken (dualparal-prompt-applied) from the worker.
 * The worker never posts errors itself: it hands its GError to the queue and
 * fill () turns it into GST_ELEMENT_ERROR + GST_FLOW_ERROR on the streaming
 * thread, once the frames made before the failure have gone downstream.
 */
#include <string.h>

#include <gst/video/video.h>

#include "dualparal/backend.h"
#include "dualparal/generator.h"

#include "frame_queue.h"
#include "gstdualparalsrc.h"

GST_DEBUG_CATEGORY_STATIC (gst_dual_paral_src_debug);
#define GST_CAT_DEFAULT gst_dual_paral_src_debug

#define DEFAULT_QUEUE_FRAMES 32
#define DEFAULT_ENGINE GST_DUAL_PARAL_ENGINE_AUTO
#define DEFAULT_IS_LIVE FALSE
/* Used only when caps are fixated without a loaded model, which start ()
 * prevents; the numbers are Wan2.1 1.3B's native 480p at 16 fps. */
#define FALLBACK_WIDTH 832
#define FALLBACK_HEIGHT 480
#define FALLBACK_FPS 16
/* Live latency (docs/usage.md, "Live timestamps and latency"): the block
 * period is smoothed over blocks with this weight for the newest one, and a
 * LATENCY message is posted only when the smoothed period has moved this far
 * from the latency last reported. */
#define PERIOD_SMOOTHING 0.2
#define LATENCY_CHANGE_FRACTION 0.25

enum {
  PROP_0,
  PROP_PROMPT,
  PROP_NEGATIVE_PROMPT,
  PROP_MODEL,
  PROP_NUM_FRAMES,
  PROP_STEPS,
  PROP_GUIDANCE_SCALE,
  PROP_GUIDANCE_SCALE_2,
  PROP_FLOW_SHIFT,
  PROP_SEED,
  PROP_SAMPLER,
  PROP_ENGINE,
  PROP_BLOCK_FRAMES,
  PROP_CONTEXT_FRAMES,
  PROP_DEVICES,
  PROP_TEXT_LEN,
  PROP_THREADS,
  PROP_QUEUE_FRAMES,
  PROP_IS_LIVE,
  PROP_TRANSITION_BLOCKS,
  PROP_PROMPT_SCHEDULE,
  PROP_PROCESSES,
  PROP_WIRE_BF16,
  PROP_VAE_TILE,
  PROP_VAE_THREAD,
  PROP_VAE_DEVICE,
  PROP_KEEP_TEXT_ENCODER,
};

/* The settings a run is made with: the properties, copied at start (). */
typedef struct {
  gchar *prompt;
  gchar *negative_prompt;
  gchar *model;
  gchar *devices;
  gint num_frames; /* -1 endless */
  gint steps;
  gdouble guidance_scale;
  gdouble guidance_scale_2; /* Wan2.2 two experts: the low-noise expert's; 0: guidance_scale */
  gdouble flow_shift;
  guint64 seed;
  GstDualParalSampler sampler;
  GstDualParalEngine engine;
  gint block_frames;
  gint context_frames;
  gint text_len;   /* 0: the model's */
  gint threads;    /* CPU threads; 0: what the machine leaves */
  guint queue_frames;
  gint transition_blocks;
  gchar *prompt_schedule; /* NULL: none */
  GstDualParalProcesses processes;
  gboolean wire_bf16;
  gint vae_tile;          /* 0: untiled */
  gboolean vae_thread;
  gchar *vae_device;      /* NULL: stage 0's device */
  gboolean keep_text_encoder;
} Settings;

struct _GstDualParalSrc {
  GstPushSrc parent;

  /* Properties; object lock. */
  Settings props;
  gboolean running; /* between start () and stop (): settings are fixed */

  /* The run, from start () to stop ().  `run` and `generator` are set by
   * start ()/set_caps () before the worker exists and stay fixed while it
   * runs. */
  Settings run;
  dp_generator *generator;  /* assigned and freed under gen_lock (a prompt change from the
                             * application thread reaches it under that lock) */
  GMutex gen_lock;
  gint gen_fps;             /* object lock */
  gint size_step_w, size_step_h; /* the loaded model's size steps (0: none loaded), object lock */
  GstVideoInfo frame_info;  /* RGB at the generator's size: the queued frames */
  GstVideoInfo out_info;    /* negotiated; written in set_caps, object lock for queries */
  GstVideoConverter *converter; /* RGB -> out_info, NULL when out_info is RGB */

  DualParalFrameQueue *queue; /* element lifetime: unlock may come at any time */
  GThread *worker;
  GMutex worker_lock;
  GCond worker_cond;
  gboolean worker_done;      /* worker_lock */
  gint stopping;             /* atomic: stop () is tearing the run down */
  GError *callback_error;    /* worker only: why the callback stopped the run */
  gint64 frames_queued;      /* worker only */

  /* Measured; object lock. */
  gdouble block_seconds;     /* wall time of the last block, 0 until known */
  gdouble step_seconds;      /* wall time of the last sampler step, 0 until known */
  gdouble period_seconds;    /* smoothed block period, warm-up block excluded; 0 until known */
  GstClockTime latency;      /* live: min latency reported, NONE until the first block */
  GstClockTime block_duration; /* stream time of the last whole block, NONE until known */
  /* Worker only: block detection for the period. */
  gdouble last_block_value;
  guint blocks_seen;
  gint64 block_frames;       /* frames of the block being delivered */

  /* Streaming thread only: live timestamps, PTS = index time + ts_offset. */
  gboolean ts_anchored;
  GstClockTimeDiff ts_offset;
  guint64 ts_reanchors;
  gboolean tags_sent;
  GstBuffer *held_frame;     /* popped, its wait cut by unlock (): goes out next */

  /* Live waits (object lock): the waiting fill (), unlock () and the
   * change to PLAYING (playing_cond). */
  GstClockID clock_id;
  gboolean unlocked;
  GCond playing_cond;
};

#define gst_dual_paral_src_parent_class parent_class
G_DEFINE_TYPE (GstDualParalSrc, gst_dual_paral_src, GST_TYPE_PUSH_SRC);
GST_ELEMENT_REGISTER_DEFINE (dualparalsrc, "dualparalsrc", GST_RANK_NONE,
    GST_TYPE_DUAL_PARAL_SRC);

/* What GstVideoConverter can produce from RGB without surprises for
 * encoders and sinks: RGB itself (no conversion), the alpha and padded RGB
 * layouts sinks want, and the 4:2:0 layouts encoders want. */
#define SRC_CAPS \
  "video/x-raw, " \
  "format = (string) { RGB, RGBA, BGRx, I420, NV12 }, " \
  "width = (int) [ 16, 16384, 16 ], " \
  "height = (int) [ 16, 16384, 16 ], " \
  "framerate = (fraction) [ 1/2147483647, 2147483647/1 ], " \
  "pixel-aspect-ratio = (fraction) 1/1"

static GstStaticPadTemplate src_template = GST_STATIC_PAD_TEMPLATE ("src",
    GST_PAD_SRC, GST_PAD_ALWAYS, GST_STATIC_CAPS (SRC_CAPS));

/* The generator's defaults, read once in class_init so that the
 * properties document and use exactly what the core would. */
static dp_generator_params generator_defaults;

GType
gst_dual_paral_sampler_get_type (void)
{
  static gsize type = 0;
  static const GEnumValue values[] = {
    { GST_DUAL_PARAL_SAMPLER_UNIPC,
      "UniPC multistep, flow prediction, order 2 (Wan's default)", "unipc" },
    { GST_DUAL_PARAL_SAMPLER_EULER, "Flow-matching Euler", "euler" },
    { 0, NULL, NULL },
  };

  if (g_once_init_enter (&type))
    g_once_init_leave (&type, g_enum_register_static ("GstDualParalSampler", values));
  return type;
}

GType
gst_dual_paral_engine_get_type (void)
{
  static gsize type = 0;
  static const GEnumValue values[] = {
    { GST_DUAL_PARAL_ENGINE_AUTO,
      "DualParal for endless video, several devices or a video longer than the model's "
      "window, classic otherwise", "auto" },
    { GST_DUAL_PARAL_ENGINE_CLASSIC,
      "Whole video denoised at once on one device", "classic" },
    { GST_DUAL_PARAL_ENGINE_DUALPARAL,
      "Block-wise pipelined denoising over the devices (DualParal)", "dualparal" },
    { 0, NULL, NULL },
  };

  if (g_once_init_enter (&type))
    g_once_init_leave (&type, g_enum_register_static ("GstDualParalEngine", values));
  return type;
}

GType
gst_dual_paral_processes_get_type (void)
{
  static gsize type = 0;
  static const GEnumValue values[] = {
    { GST_DUAL_PARAL_PROCESSES_THREADS, "Every stage a thread of this process", "threads" },
    { GST_DUAL_PARAL_PROCESSES_SPAWN,
      "One process per device on this machine: dualparal-worker started for each stage after the first",
      "spawn" },
    { GST_DUAL_PARAL_PROCESSES_LAUNCHER,
      "This pipeline is rank 0 of a torchrun / srun / mpirun job; the workers connect to "
      "MASTER_ADDR:MASTER_PORT", "launcher" },
    { 0, NULL, NULL },
  };

  if (g_once_init_enter (&type))
    g_once_init_leave (&type, g_enum_register_static ("GstDualParalProcesses", values));
  return type;
}

/* --- settings ------------------------------------------------------------ */

static void
settings_copy (Settings *dst, const Settings *src)
{
  *dst = *src;
  dst->prompt = g_strdup (src->prompt);
  dst->negative_prompt = g_strdup (src->negative_prompt);
  dst->model = g_strdup (src->model);
  dst->devices = g_strdup (src->devices);
  dst->prompt_schedule = g_strdup (src->prompt_schedule);
  dst->vae_device = g_strdup (src->vae_device);
}

static void
settings_clear (Settings *s)
{
  g_clear_pointer (&s->prompt, g_free);
  g_clear_pointer (&s->negative_prompt, g_free);
  g_clear_pointer (&s->model, g_free);
  g_clear_pointer (&s->devices, g_free);
  g_clear_pointer (&s->prompt_schedule, g_free);
  g_clear_pointer (&s->vae_device, g_free);
}

/* NULL when n is a frame count the model can make, else why not
 * (free with g_free). */
static gchar *
num_frames_problem (gint n)
{
  gint below;

  if (n == -1 || (n >= 1 && (n - 1) % 4 == 0))
    return NULL;
  if (n < 1)
    return g_strdup_printf ("num-frames %d is not valid: use -1 for endless video "
                            "or a count of the form 4k+1 (1, 5, 9, ..., 81, ...)", n);
  below = (n - 1) / 4 * 4 + 1;
  return g_strdup_printf ("num-frames %d is not valid: the model makes 4k+1 frames "
                          "(nearest: %d or %d), or -1 for endless video",
                          n, below, below + 4);
}

static dp_engine_kind
engine_for (const Settings *s)
{
  switch (s->engine) {
    case GST_DUAL_PARAL_ENGINE_CLASSIC:
      return DP_ENGINE_CLASSIC;
    case GST_DUAL_PARAL_ENGINE_DUALPARAL:
      return DP_ENGINE_DUALPARAL;
    case GST_DUAL_PARAL_ENGINE_AUTO:
    default:
      return DP_ENGINE_AUTO; /* the generator decides, knowing the model */
  }
}

/* Posts a generator GError as an element error whose text is the
 * generator's message.  The GStreamer code says what kind of failure it is. */
static void
post_generator_error (GstDualParalSrc *self, const GError *error, const gchar *while_doing)
{
  GQuark domain = GST_RESOURCE_ERROR;
  gint code = GST_RESOURCE_ERROR_FAILED;
  gchar *debug;

  if (error->domain == DP_ERROR) {
    switch (error->code) {
      case DP_ERROR_IO:
        code = GST_RESOURCE_ERROR_OPEN_READ;
        break;
      case DP_ERROR_MISSING:
        code = GST_RESOURCE_ERROR_NOT_FOUND;
        break;
      case DP_ERROR_FORMAT:
      case DP_ERROR_SHAPE:
        code = GST_RESOURCE_ERROR_READ; /* corrupt or mismatched model files */
        break;
      case DP_ERROR_INVALID:
      case DP_ERROR_UNSUPPORTED:
        code = GST_RESOURCE_ERROR_SETTINGS;
        break;
      case DP_ERROR_NOMEM:
        code = GST_RESOURCE_ERROR_NO_SPACE_LEFT;
        break;
      case DP_ERROR_DEVICE:
      default:
        code = GST_RESOURCE_ERROR_FAILED;
        break;
    }
  } else {
    domain = GST_LIBRARY_ERROR;
    code = GST_LIBRARY_ERROR_FAILED;
  }
  debug = g_strdup_printf ("%s failed (%s %d)", while_doing,
                           g_quark_to_string (error->domain), error->code);
  gst_element_message_full (GST_ELEMENT (self), GST_MESSAGE_ERROR, domain, code,
                            g_strdup (error->message), debug, __FILE__, GST_FUNCTION,
                            __LINE__);
}

/* dp_step_cb: a "dualparal-step" element message after every sampler step
 * (the classic engine decodes, and so reports blocks, only at the end). */
static void
on_step (const dp_step_progress *progress, void *user_data)
{
  GstDualParalSrc *self = user_data;
  GstStructure *s;

  GST_OBJECT_LOCK (self);
  self->step_seconds = progress->step_seconds;
  GST_OBJECT_UNLOCK (self);
  s = gst_structure_new ("dualparal-step",
      "step", G_TYPE_INT, progress->step,
      "steps-total", G_TYPE_INT, progress->steps_total,
      "seconds-per-step", G_TYPE_DOUBLE, progress->step_seconds, NULL);

  gst_element_post_message (GST_ELEMENT (self),
                            gst_message_new_element (GST_OBJECT (self), s));
}

/* dp_prompt_cb: a "dualparal-prompt-applied" element message when a prompt
 * change (a property set while playing, or a prompt-schedule line) is
 * taken by the first block that enters after it. */
static void
on_prompt_applied (const dp_prompt_change *change, void *user_data)
{
  GstDualParalSrc *self = user_data;
  GstClockTime ts = GST_CLOCK_TIME_NONE;
  gint fps_n, fps_d;
  GstStructure *s;

  GST_OBJECT_LOCK (self);
  fps_n = GST_VIDEO_INFO_FPS_N (&self->out_info);
  fps_d = GST_VIDEO_INFO_FPS_D (&self->out_info);
  GST_OBJECT_UNLOCK (self);
  if (fps_n > 0 && fps_d > 0)
    ts = gst_util_uint64_scale (change->full_frame, (guint64) fps_d * GST_SECOND, fps_n);
  GST_INFO_OBJECT (self, "prompt \"%s\" from block %" G_GINT64_FORMAT ", alone from frame %"
                   G_GINT64_FORMAT, change->prompt, change->block, change->full_frame);
  s = gst_structure_new ("dualparal-prompt-applied",
      "prompt", G_TYPE_STRING, change->prompt,
      "negative-prompt", G_TYPE_STRING, change->negative_prompt,
      "guidance-scale", G_TYPE_DOUBLE, change->guidance_scale,
      "frame", G_TYPE_INT64, (gint64) change->full_frame,
      "timestamp", G_TYPE_UINT64, (guint64) ts,
      "first-frame", G_TYPE_INT64, (gint64) change->first_frame,
      "block", G_TYPE_INT64, (gint64) change->block,
      "transition-blocks", G_TYPE_INT, change->transition_blocks,
      "scheduled", G_TYPE_BOOLEAN, change->scheduled, NULL);
  gst_element_post_message (GST_ELEMENT (self), gst_message_new_element (GST_OBJECT (self), s));
}

static void
on_core_warning (const char *message, void *data)
{
  GST_WARNING_OBJECT (data, "%s", message);
}

/* Creates the generator for the run's settings at width x height (0 x 0:
 * the model's native size).  The params point into self->run, which lives
 * until stop (). */
static gboolean
create_generator (GstDualParalSrc *self, gint width, gint height, GError **error)
{
  dp_generator_params p;
  dp_generator *gen;
  gchar *prompt, *negative;

  dp_generator_params_init (&p);
  /* The prompt settings may change while playing (set_property), so they
   * are read under the lock; gen_lock is held until the generator is in
   * place, so that no change falls between the two. */
  g_mutex_lock (&self->gen_lock);
  GST_OBJECT_LOCK (self);
  prompt = g_strdup (self->run.prompt);
  negative = g_strdup (self->run.negative_prompt);
  p.guidance_scale = self->run.guidance_scale;
  p.transition_blocks = self->run.transition_blocks;
  GST_OBJECT_UNLOCK (self);

  p.model_dir = self->run.model;
  p.prompt = prompt;
  p.negative_prompt = negative;
  p.prompt_schedule = self->run.prompt_schedule;
  p.width = width;
  p.height = height;
  p.num_frames = self->run.num_frames;
  p.steps = self->run.steps;
  p.flow_shift = self->run.flow_shift;
  p.guidance_scale_2 = self->run.guidance_scale_2;
  p.seed = self->run.seed;
  p.sampler = (dp_sampler_kind) self->run.sampler;
  p.engine = engine_for (&self->run);
  p.block_frames = self->run.block_frames;
  p.context_frames = self->run.context_frames;
  p.devices = self->run.devices;
  p.text_len = self->run.text_len;
  p.processes = (dp_processes) self->run.processes;
  p.wire_bf16 = self->run.wire_bf16;
  /* The core's warnings (a prompt cut to the text length, a refused
   * would-be worker) belong in the debug log. */
  p.warning_cb = on_core_warning;
  p.warning_data = self;
  p.threads = self->run.threads;
  p.vae_tile = self->run.vae_tile;
  p.vae_thread = self->run.vae_thread;
  p.vae_device = self->run.vae_device;
  p.keep_text_encoder = self->run.keep_text_encoder;

  GST_INFO_OBJECT (self, "loading model '%s' (%dx%d, %d frames, %d steps, devices %s)",
                   p.model_dir, width, height, p.num_frames, p.steps, p.devices);
  gen = dp_generator_new (&p, error);
  g_free (prompt);
  g_free (negative);
  if (gen != NULL) {
    dp_generator_set_step_callback (gen, on_step, self);
    dp_generator_set_prompt_callback (gen, on_prompt_applied, self);
  }
  self->generator = gen;
  g_mutex_unlock (&self->gen_lock);
  if (gen == NULL)
    return FALSE;
  {
    int block = 0, context = 0;
    dp_engine_kind engine = dp_generator_engine (self->generator, &block, &context);
    GST_INFO_OBJECT (self, "engine: %s (block frames %d, context frames %d; 0: the engine's default)",
                     engine == DP_ENGINE_DUALPARAL ? "dualparal" : "classic", block, context);
  }

  GST_OBJECT_LOCK (self);
  self->gen_fps = dp_generator_fps (self->generator);
  dp_generator_get_size_step (self->generator, &self->size_step_w, &self->size_step_h);
  GST_OBJECT_UNLOCK (self);
  return TRUE;
}

static void
free_generator (GstDualParalSrc *self)
{
  g_mutex_lock (&self->gen_lock);
  g_clear_pointer (&self->generator, dp_generator_free);
  g_mutex_unlock (&self->gen_lock);
}

/* --- the worker ---------------------------------------------------------- */

/* A queued frame: RGB with GstVideoInfo strides, OFFSET = frame index.
 * NULL when memory runs out. */
static GstBuffer *
frame_buffer_new (const GstVideoInfo *info, const guint8 *rgb, gint64 index)
{
  gsize size = GST_VIDEO_INFO_SIZE (info);
  gsize row = (gsize) GST_VIDEO_INFO_WIDTH (info) * 3;
  gint stride = GST_VIDEO_INFO_PLANE_STRIDE (info, 0);
  guint8 *data = g_try_malloc (size);
  GstBuffer *buffer;
  gint y;

  if (data == NULL)
    return NULL;
  for (y = 0; y < GST_VIDEO_INFO_HEIGHT (info); y++)
    memcpy (data + (gsize) y * stride, rgb + (gsize) y * row, row);
  buffer = gst_buffer_new_wrapped (data, size);
  GST_BUFFER_OFFSET (buffer) = index;
  return buffer;
}

static void
post_progress (GstDualParalSrc *self, const dp_progress *progress)
{
  GstStructure *s = gst_structure_new ("dualparal-progress",
      "frames-done", G_TYPE_INT64, (gint64) progress->frames_done,
      "frames-total", G_TYPE_INT64, (gint64) progress->frames_total,
      "steps", G_TYPE_INT, progress->steps,
      "blocks-in-flight", G_TYPE_INT, progress->blocks_in_flight,
      "seconds-per-block", G_TYPE_DOUBLE, progress->block_seconds, NULL);

  gst_element_post_message (GST_ELEMENT (self),
                            gst_message_new_element (GST_OBJECT (self), s));
}

/* Records the block time and keeps the live latency (docs/usage.md, "Live
 * timestamps and latency"): the block period (the time from one block's
 * first frames to the next's), smoothed, with the first block left out (its
 * time is the run's warm-up: text encoding and filling the DualParal
 * pipeline, not a period), and at most the stream time of one block (when
 * generation is slower than that, the timeline moves forward anyway and a
 * larger latency would only delay the picture).  Until a period is known,
 * the last sampler step's time stands for it (a DualParal iteration
 * advances every block in flight by one step and finishes one block).  A
 * LATENCY message asks the pipeline to query again: when the latency is
 * first known (with the first frames) and when it has moved more than
 * LATENCY_CHANGE_FRACTION from the latency reported.  A block is told from
 * the next by its time: the generator reports the same block time with each
 * group of frames of one block. */
static void
update_block_time (GstDualParalSrc *self, gdouble seconds, gint n_frames)
{
  gboolean repost = FALSE;
  gboolean live = gst_base_src_is_live (GST_BASE_SRC (self));
  gboolean new_block = self->blocks_seen == 0 || seconds != self->last_block_value;
  gint64 finished_block_frames = 0;
  gdouble period, smoothed;
  GstClockTime previous = GST_CLOCK_TIME_NONE, reported;

  if (new_block) {
    finished_block_frames = self->blocks_seen > 0 ? self->block_frames : 0;
    self->blocks_seen++;
    self->last_block_value = seconds;
    self->block_frames = 0;
  }
  self->block_frames += n_frames;

  GST_OBJECT_LOCK (self);
  self->block_seconds = seconds;
  if (finished_block_frames > 0 && GST_VIDEO_INFO_FPS_N (&self->out_info) > 0)
    self->block_duration = gst_util_uint64_scale (finished_block_frames,
        (guint64) GST_VIDEO_INFO_FPS_D (&self->out_info) * GST_SECOND,
        GST_VIDEO_INFO_FPS_N (&self->out_info));
  if (new_block && self->blocks_seen >= 2 && seconds > 0.0) {
    if (self->period_seconds <= 0.0)
      self->period_seconds = seconds;
    else
      self->period_seconds += PERIOD_SMOOTHING * (seconds - self->period_seconds);
  }
  period = self->period_seconds > 0.0 ? self->period_seconds : self->step_seconds;
  if (live) {
    GstClockTime candidate = (GstClockTime) (MAX (period, 0.0) * GST_SECOND);

    if (GST_CLOCK_TIME_IS_VALID (self->block_duration))
      candidate = MIN (candidate, self->block_duration);

    if (!GST_CLOCK_TIME_IS_VALID (self->latency)
        || ABS ((gdouble) candidate - (gdouble) self->latency)
               > LATENCY_CHANGE_FRACTION * (gdouble) self->latency) {
      previous = self->latency;
      self->latency = candidate;
      repost = TRUE;
    }
  }
  smoothed = self->period_seconds;
  reported = self->latency;
  GST_OBJECT_UNLOCK (self);

  if (repost) {
    GST_DEBUG_OBJECT (self, "latency %" GST_TIME_FORMAT " -> %" GST_TIME_FORMAT
                      " (block %.3f s, smoothed period %.3f s)", GST_TIME_ARGS (previous),
                      GST_TIME_ARGS (reported), seconds, smoothed);
    gst_element_post_message (GST_ELEMENT (self),
                              gst_message_new_latency (GST_OBJECT (self)));
  }
}

/* dp_frames_cb: copies the frames into the queue, waiting while it is full
 * (that wait is the backpressure that pauses generation).  FALSE stops the
 * run: on stop, or when a frame cannot be held. */
static gboolean
on_frames (const uint8_t *rgb, int n_frames, int64_t first_frame,
           const dp_progress *progress, void *user_data)
{
  GstDualParalSrc *self = user_data;
  gsize frame_bytes = (gsize) GST_VIDEO_INFO_WIDTH (&self->frame_info)
                      * GST_VIDEO_INFO_HEIGHT (&self->frame_info) * 3;
  int i;

  if (progress != NULL) {
    post_progress (self, progress);
    update_block_time (self, progress->block_seconds, n_frames);
  }

  for (i = 0; i < n_frames; i++) {
    gint64 index = first_frame + i;
    GstBuffer *frame;

    if (g_atomic_int_get (&self->stopping))
      return FALSE;
    if (self->run.num_frames > 0 && index >= self->run.num_frames) {
      GST_WARNING_OBJECT (self, "generator delivered frame %" G_GINT64_FORMAT
                          " past num-frames %d; dropped", index, self->run.num_frames);
      continue;
    }
    frame = frame_buffer_new (&self->frame_info, rgb + (gsize) i * frame_bytes, index);
    if (frame == NULL) {
      self->callback_error = g_error_new (DP_ERROR, DP_ERROR_NOMEM,
          "Out of memory: cannot hold frame %" G_GINT64_FORMAT " (%" G_GSIZE_FORMAT
          " bytes) in the frame queue", index, GST_VIDEO_INFO_SIZE (&self->frame_info));
      return FALSE;
    }
    if (!dualparal_frame_queue_push (self->queue, frame)) {
      gst_buffer_unref (frame);
      return FALSE;
    }
    self->frames_queued = index + 1;
  }
  return TRUE;
}

static gpointer
worker_main (gpointer data)
{
  GstDualParalSrc *self = data;
  GError *error = NULL;
  gboolean ok;

  GST_DEBUG_OBJECT (self, "generation starts");
  ok = dp_generator_run (self->generator, on_frames, self, &error);

  if (g_atomic_int_get (&self->stopping)) {
    /* stop () asked for it: nobody is waiting for frames any more. */
    g_clear_error (&error);
    g_clear_error (&self->callback_error);
    dualparal_frame_queue_finish (self->queue, NULL);
  } else if (!ok) {
    if (self->callback_error != NULL) {
      g_clear_error (&error);
      error = g_steal_pointer (&self->callback_error);
    } else if (error == NULL) {
      error = g_error_new_literal (DP_ERROR, DP_ERROR_FAILED,
                                   "The generator failed without saying why");
    }
    GST_WARNING_OBJECT (self, "generation failed: %s", error->message);
    dualparal_frame_queue_finish (self->queue, error);
  } else if (self->run.num_frames > 0 && self->frames_queued < self->run.num_frames) {
    dualparal_frame_queue_finish (self->queue,
        g_error_new (DP_ERROR, DP_ERROR_FAILED,
                     "The generator stopped after %" G_GINT64_FORMAT " of %d frames",
                     self->frames_queued, self->run.num_frames));
  } else {
    GST_DEBUG_OBJECT (self, "generation done, %" G_GINT64_FORMAT " frames",
                      self->frames_queued);
    dualparal_frame_queue_finish (self->queue, NULL);
  }

  g_mutex_lock (&self->worker_lock);
  self->worker_done = TRUE;
  g_cond_broadcast (&self->worker_cond);
  g_mutex_unlock (&self->worker_lock);
  return NULL;
}

static gboolean
start_worker (GstDualParalSrc *self)
{
  GError *error = NULL;

  self->worker_done = FALSE;
  self->frames_queued = 0;
  self->blocks_seen = 0;
  self->last_block_value = 0.0;
  self->block_frames = 0;
  g_atomic_int_set (&self->stopping, FALSE);
  self->worker = g_thread_try_new ("dualparal-gen", worker_main, self, &error);
  if (self->worker == NULL) {
    GST_ELEMENT_ERROR (self, RESOURCE, FAILED,
                       ("Could not start the generator thread: %s", error->message), (NULL));
    g_error_free (error);
    return FALSE;
  }
  return TRUE;
}

/* Ends the run: wakes a callback blocked on the full queue, cancels the
 * generator (again and again until the worker is out, so that a cancel that
 * lands before dp_generator_run () has started is not lost), joins. */
static void
stop_worker (GstDualParalSrc *self)
{
  if (self->worker == NULL)
    return;

  g_atomic_int_set (&self->stopping, TRUE);
  dualparal_frame_queue_shutdown (self->queue);
  g_mutex_lock (&self->worker_lock);
  while (!self->worker_done) {
    dp_generator_cancel (self->generator);
    g_cond_wait_until (&self->worker_cond, &self->worker_lock,
                       g_get_monotonic_time () + 20 * G_TIME_SPAN_MILLISECOND);
  }
  g_mutex_unlock (&self->worker_lock);
  g_thread_join (self->worker);
  self->worker = NULL;
  g_atomic_int_set (&self->stopping, FALSE);
}

/* --- GstBaseSrc ---------------------------------------------------------- */

static gboolean
gst_dual_paral_src_start (GstBaseSrc *bsrc)
{
  GstDualParalSrc *self = GST_DUAL_PARAL_SRC (bsrc);
  GError *error = NULL;
  gchar *problem;

  GST_OBJECT_LOCK (self);
  settings_copy (&self->run, &self->props);
  self->running = TRUE;
  self->block_seconds = 0.0;
  self->step_seconds = 0.0;
  self->period_seconds = 0.0;
  self->latency = GST_CLOCK_TIME_NONE;
  self->block_duration = GST_CLOCK_TIME_NONE;
  gst_video_info_init (&self->out_info);
  GST_OBJECT_UNLOCK (self);
  self->ts_anchored = FALSE;
  self->ts_offset = 0;
  self->ts_reanchors = 0;
  self->tags_sent = FALSE;

  problem = num_frames_problem (self->run.num_frames);
  if (problem != NULL) {
    GST_ELEMENT_ERROR (self, RESOURCE, SETTINGS, ("%s", problem), (NULL));
    g_free (problem);
    goto failed;
  }

  /* No model property: the library's default model, looked up now (not
   * at build time) so that an installed plugin finds the installed model
   * wherever the source tree went (dp_default_model_dir). */
  if (self->run.model == NULL) {
    self->run.model = dp_default_model_dir (&error);
    if (self->run.model == NULL) {
      GST_ELEMENT_ERROR (self, RESOURCE, NOT_FOUND, ("%s", error->message),
          ("set the model property to a Wan2.1 text-to-video model in diffusers layout"));
      g_clear_error (&error);
      goto failed;
    }
  }
  if (!g_file_test (self->run.model, G_FILE_TEST_IS_DIR)) {
    GST_ELEMENT_ERROR (self, RESOURCE, NOT_FOUND,
        ("Model directory '%s' does not exist or is not a directory", self->run.model),
        (NULL));
    goto failed;
  }

  dualparal_frame_queue_reset (self->queue, self->run.queue_frames);
  if (!create_generator (self, 0, 0, &error)) {
    post_generator_error (self, error, "loading the model");
    g_error_free (error);
    goto failed;
  }
  return TRUE;

failed:
  GST_OBJECT_LOCK (self);
  self->running = FALSE;
  GST_OBJECT_UNLOCK (self);
  settings_clear (&self->run);
  return FALSE;
}

static gboolean
gst_dual_paral_src_stop (GstBaseSrc *bsrc)
{
  GstDualParalSrc *self = GST_DUAL_PARAL_SRC (bsrc);

  stop_worker (self);
  g_clear_pointer (&self->converter, gst_video_converter_free);
  free_generator (self);
  g_clear_error (&self->callback_error);
  gst_clear_buffer (&self->held_frame);
  dualparal_frame_queue_reset (self->queue, 1); /* drops the frames left */

  GST_OBJECT_LOCK (self);
  self->running = FALSE;
  self->gen_fps = 0;
  self->size_step_w = self->size_step_h = 0;
  self->block_seconds = 0.0;
  gst_video_info_init (&self->out_info);
  GST_OBJECT_UNLOCK (self);
  settings_clear (&self->run);
  return TRUE;
}

/* The template's caps, with the sizes the loaded model can make once it is
 * loaded (start): multiples of 32 for Wan2.2 TI2V-5B rather than the
 * template's 16, so that negotiation picks a size the model takes instead
 * of failing on it. */
static GstCaps *
gst_dual_paral_src_get_caps (GstBaseSrc *bsrc, GstCaps *filter)
{
  GstDualParalSrc *self = GST_DUAL_PARAL_SRC (bsrc);
  GstCaps *caps = gst_pad_get_pad_template_caps (GST_BASE_SRC_PAD (bsrc));
  gint step_w, step_h;

  GST_OBJECT_LOCK (self);
  step_w = self->size_step_w;
  step_h = self->size_step_h;
  GST_OBJECT_UNLOCK (self);
  if (step_w > 0 && step_h > 0 && (step_w != 16 || step_h != 16)) {
    GValue range = G_VALUE_INIT;

    caps = gst_caps_make_writable (caps);
    g_value_init (&range, GST_TYPE_INT_RANGE);
    for (guint i = 0; i < gst_caps_get_size (caps); i++) {
      GstStructure *s = gst_caps_get_structure (caps, i);

      gst_value_set_int_range_step (&range, step_w, 16384 / step_w * step_w, step_w);
      gst_structure_set_value (s, "width", &range);
      gst_value_set_int_range_step (&range, step_h, 16384 / step_h * step_h, step_h);
      gst_structure_set_value (s, "height", &range);
    }
    g_value_unset (&range);
  }
  if (filter != NULL) {
    GstCaps *both = gst_caps_intersect_full (filter, caps, GST_CAPS_INTERSECT_FIRST);

    gst_caps_unref (caps);
    caps = both;
  }
  return caps;
}

static GstCaps *
gst_dual_paral_src_fixate (GstBaseSrc *bsrc, GstCaps *caps)
{
  GstDualParalSrc *self = GST_DUAL_PARAL_SRC (bsrc);
  GstCaps *native, *preferred;
  GstStructure *s;
  gint width = FALLBACK_WIDTH, height = FALLBACK_HEIGHT, fps = FALLBACK_FPS;

  if (self->generator != NULL) {
    dp_generator_get_size (self->generator, &width, &height);
    fps = dp_generator_fps (self->generator);
  }

  /* Prefer the native size wherever downstream can take it, even when it
   * lists another size first: a videoscale passes its output size up as its
   * first choice, and generating at that size instead costs far more (16x
   * the tokens for 64 x 64 shown at 256 x 256). */
  native = gst_caps_new_simple ("video/x-raw", "width", G_TYPE_INT, width,
      "height", G_TYPE_INT, height, NULL);
  preferred = gst_caps_intersect_full (caps, native, GST_CAPS_INTERSECT_FIRST);
  gst_caps_unref (native);
  if (!gst_caps_is_empty (preferred)) {
    gst_caps_unref (caps);
    caps = preferred;
  } else {
    gst_caps_unref (preferred);
  }

  caps = gst_caps_truncate (gst_caps_make_writable (caps));
  s = gst_caps_get_structure (caps, 0);
  gst_structure_fixate_field_nearest_int (s, "width", width);
  gst_structure_fixate_field_nearest_int (s, "height", height);
  if (gst_structure_has_field (s, "framerate"))
    gst_structure_fixate_field_nearest_fraction (s, "framerate", fps, 1);
  else
    gst_structure_set (s, "framerate", GST_TYPE_FRACTION, fps, 1, NULL);
  if (gst_structure_has_field (s, "pixel-aspect-ratio"))
    gst_structure_fixate_field_nearest_fraction (s, "pixel-aspect-ratio", 1, 1);
  else
    gst_structure_set (s, "pixel-aspect-ratio", GST_TYPE_FRACTION, 1, 1, NULL);

  return GST_BASE_SRC_CLASS (parent_class)->fixate (bsrc, caps);
}

static gboolean
gst_dual_paral_src_set_caps (GstBaseSrc *bsrc, GstCaps *caps)
{
  GstDualParalSrc *self = GST_DUAL_PARAL_SRC (bsrc);
  GstVideoInfo info;
  gint gen_width = 0, gen_height = 0;
  gint width, height;

  if (!gst_video_info_from_caps (&info, caps)) {
    GST_ERROR_OBJECT (self, "cannot parse caps %" GST_PTR_FORMAT, caps);
    return FALSE;
  }
  width = GST_VIDEO_INFO_WIDTH (&info);
  height = GST_VIDEO_INFO_HEIGHT (&info);
  if (GST_VIDEO_INFO_FPS_N (&info) <= 0 || GST_VIDEO_INFO_FPS_D (&info) <= 0) {
    GST_ELEMENT_ERROR (self, CORE, NEGOTIATION,
        ("dualparalsrc needs a fixed, non-zero framerate, got %d/%d",
         GST_VIDEO_INFO_FPS_N (&info), GST_VIDEO_INFO_FPS_D (&info)), (NULL));
    return FALSE;
  }
  if (self->generator != NULL)
    dp_generator_get_size (self->generator, &gen_width, &gen_height);

  if (self->worker != NULL) {
    /* Mid-stream renegotiation: only the pixel format may change, or the
     * frames and timestamps would no longer follow each other. */
    if (width != gen_width || height != gen_height
        || GST_VIDEO_INFO_FPS_N (&info) != GST_VIDEO_INFO_FPS_N (&self->out_info)
        || GST_VIDEO_INFO_FPS_D (&info) != GST_VIDEO_INFO_FPS_D (&self->out_info)) {
      GST_ELEMENT_ERROR (self, CORE, NEGOTIATION,
          ("Cannot change the frame size or rate while generating (%dx%d at %d/%d "
           "requested, %dx%d at %d/%d running)", width, height,
           GST_VIDEO_INFO_FPS_N (&info), GST_VIDEO_INFO_FPS_D (&info), gen_width,
           gen_height, GST_VIDEO_INFO_FPS_N (&self->out_info),
           GST_VIDEO_INFO_FPS_D (&self->out_info)), (NULL));
      return FALSE;
    }
  } else if (self->generator == NULL || width != gen_width || height != gen_height) {
    /* Downstream wants another size than the native one: the generator's
     * settings include the size, so it is made again and judges the size
     * itself (refusing it here fails negotiation with its reason). */
    GError *error = NULL;

    GST_INFO_OBJECT (self, "downstream asks for %dx%d, native is %dx%d: reloading",
                     width, height, gen_width, gen_height);
    free_generator (self);
    if (!create_generator (self, width, height, &error)) {
      if (error->domain == DP_ERROR
          && (error->code == DP_ERROR_INVALID || error->code == DP_ERROR_UNSUPPORTED))
        GST_ELEMENT_ERROR (self, CORE, NEGOTIATION,
            ("The model cannot generate %dx%d video: %s", width, height, error->message),
            (NULL));
      else
        post_generator_error (self, error, "loading the model");
      g_error_free (error);
      return FALSE;
    }
    dp_generator_get_size (self->generator, &gen_width, &gen_height);
    if (width != gen_width || height != gen_height) {
      GST_ELEMENT_ERROR (self, CORE, NEGOTIATION,
          ("The model cannot generate %dx%d video (it makes %dx%d)", width, height,
           gen_width, gen_height), (NULL));
      return FALSE;
    }
  }

  if (self->worker == NULL) {
    gst_video_info_set_format (&self->frame_info, GST_VIDEO_FORMAT_RGB, gen_width,
                               gen_height);
  }

  g_clear_pointer (&self->converter, gst_video_converter_free);
  if (GST_VIDEO_INFO_FORMAT (&info) != GST_VIDEO_FORMAT_RGB) {
    /* The converter wants equal rates on both sides; the queued frames have
     * none of their own. */
    GstVideoInfo in_info = self->frame_info;

    GST_VIDEO_INFO_FPS_N (&in_info) = GST_VIDEO_INFO_FPS_N (&info);
    GST_VIDEO_INFO_FPS_D (&in_info) = GST_VIDEO_INFO_FPS_D (&info);
    self->converter = gst_video_converter_new (&in_info, &info, NULL);
    if (self->converter == NULL) {
      GST_ELEMENT_ERROR (self, CORE, NEGOTIATION,
          ("Cannot convert RGB to %s", gst_video_format_to_string (GST_VIDEO_INFO_FORMAT (&info))),
          (NULL));
      return FALSE;
    }
  }

  GST_OBJECT_LOCK (self);
  self->out_info = info;
  GST_OBJECT_UNLOCK (self);
  GST_DEBUG_OBJECT (self, "negotiated %" GST_PTR_FORMAT, caps);

  /* Generation starts as soon as the size is known: a live source thus
   * fills its queue while the pipeline is still PAUSED. */
  if (self->worker == NULL)
    return start_worker (self);
  return TRUE;
}

static gboolean
gst_dual_paral_src_decide_allocation (GstBaseSrc *bsrc, GstQuery *query)
{
  GstBufferPool *pool = NULL;
  GstStructure *config;
  GstCaps *caps = NULL;
  GstVideoInfo info;
  guint size, min = 0, max = 0;
  gboolean update;

  gst_query_parse_allocation (query, &caps, NULL);
  if (caps == NULL || !gst_video_info_from_caps (&info, caps))
    return FALSE;

  update = gst_query_get_n_allocation_pools (query) > 0;
  if (update) {
    gst_query_parse_nth_allocation_pool (query, 0, &pool, &size, &min, &max);
    size = MAX (size, GST_VIDEO_INFO_SIZE (&info));
  } else {
    size = GST_VIDEO_INFO_SIZE (&info);
  }
  if (pool == NULL)
    pool = gst_video_buffer_pool_new ();

  config = gst_buffer_pool_get_config (pool);
  gst_buffer_pool_config_set_params (config, caps, size, min, max);
  /* With video meta downstream accepts the pool's strides and offsets;
   * fill () writes through GstVideoFrame, which honours them. */
  if (gst_query_find_allocation_meta (query, GST_VIDEO_META_API_TYPE, NULL))
    gst_buffer_pool_config_add_option (config, GST_BUFFER_POOL_OPTION_VIDEO_META);
  if (!gst_buffer_pool_set_config (pool, config)) {
    /* A downstream pool may adjust the configuration; take what it offers
     * if it still fits. */
    config = gst_buffer_pool_get_config (pool);
    if (!gst_buffer_pool_config_validate_params (config, caps, size, min, max)) {
      gst_structure_free (config);
      gst_object_unref (pool);
      GST_ELEMENT_ERROR (bsrc, RESOURCE, SETTINGS,
                         ("Downstream buffer pool refused the configuration"), (NULL));
      return FALSE;
    }
    if (!gst_buffer_pool_set_config (pool, config)) {
      gst_object_unref (pool);
      GST_ELEMENT_ERROR (bsrc, RESOURCE, SETTINGS,
                         ("Downstream buffer pool refused the configuration"), (NULL));
      return FALSE;
    }
  }

  if (update)
    gst_query_set_nth_allocation_pool (query, 0, pool, size, min, max);
  else
    gst_query_add_allocation_pool (query, pool, size, min, max);
  gst_object_unref (pool);

  return GST_BASE_SRC_CLASS (parent_class)->decide_allocation (bsrc, query);
}

/* Frame rate for queries: the negotiated one, else the model's.  Object
 * lock held.  FALSE when neither is known yet. */
static gboolean
query_fps_locked (GstDualParalSrc *self, gint *fps_n, gint *fps_d)
{
  if (GST_VIDEO_INFO_FPS_N (&self->out_info) > 0) {
    *fps_n = GST_VIDEO_INFO_FPS_N (&self->out_info);
    *fps_d = GST_VIDEO_INFO_FPS_D (&self->out_info);
    return TRUE;
  }
  if (self->gen_fps > 0) {
    *fps_n = self->gen_fps;
    *fps_d = 1;
    return TRUE;
  }
  return FALSE;
}

static gboolean
gst_dual_paral_src_query (GstBaseSrc *bsrc, GstQuery *query)
{
  GstDualParalSrc *self = GST_DUAL_PARAL_SRC (bsrc);
  gint fps_n = 0, fps_d = 1;

  switch (GST_QUERY_TYPE (query)) {
    case GST_QUERY_DURATION: {
      GstFormat format;
      gint frames;
      gboolean known;

      gst_query_parse_duration (query, &format, NULL);
      GST_OBJECT_LOCK (self);
      frames = self->running ? self->run.num_frames : self->props.num_frames;
      known = query_fps_locked (self, &fps_n, &fps_d) && frames > 0;
      GST_OBJECT_UNLOCK (self);
      if (!known)
        break; /* endless or not started: the default says unknown */
      if (format == GST_FORMAT_TIME) {
        gst_query_set_duration (query, GST_FORMAT_TIME,
            gst_util_uint64_scale (frames, (guint64) fps_d * GST_SECOND, fps_n));
        return TRUE;
      }
      if (format == GST_FORMAT_DEFAULT) {
        gst_query_set_duration (query, GST_FORMAT_DEFAULT, frames);
        return TRUE;
      }
      break;
    }
    case GST_QUERY_LATENCY: {
      GstClockTime min, max;
      guint queue_frames;

      if (!gst_base_src_is_live (bsrc))
        break;
      /* min: a frame is pushed at most this long after its timestamp (the
       * block period; 0 until the first block); max: the queue can hold
       * queue-frames more before generation waits. */
      GST_OBJECT_LOCK (self);
      if (!query_fps_locked (self, &fps_n, &fps_d)) {
        fps_n = FALLBACK_FPS;
        fps_d = 1;
      }
      min = GST_CLOCK_TIME_IS_VALID (self->latency) ? self->latency : 0;
      queue_frames = self->running ? self->run.queue_frames : self->props.queue_frames;
      GST_OBJECT_UNLOCK (self);
      max = min + gst_util_uint64_scale (queue_frames, (guint64) fps_d * GST_SECOND, fps_n);
      GST_DEBUG_OBJECT (self, "latency min %" GST_TIME_FORMAT " max %" GST_TIME_FORMAT,
                        GST_TIME_ARGS (min), GST_TIME_ARGS (max));
      gst_query_set_latency (query, TRUE, min, max);
      return TRUE;
    }
    case GST_QUERY_CONVERT: {
      GstFormat src_fmt, dest_fmt;
      gint64 src_val, dest_val;
      gboolean res = FALSE;

      gst_query_parse_convert (query, &src_fmt, &src_val, &dest_fmt, &dest_val);
      GST_OBJECT_LOCK (self);
      if (GST_VIDEO_INFO_FPS_N (&self->out_info) > 0)
        res = gst_video_info_convert (&self->out_info, src_fmt, src_val, dest_fmt, &dest_val);
      GST_OBJECT_UNLOCK (self);
      if (res) {
        gst_query_set_convert (query, src_fmt, src_val, dest_fmt, dest_val);
        return TRUE;
      }
      break;
    }
    default:
      break;
  }
  return GST_BASE_SRC_CLASS (parent_class)->query (bsrc, query);
}

static gboolean
gst_dual_paral_src_is_seekable (GstBaseSrc *bsrc)
{
  return FALSE; /* the generator makes frames in order, once */
}

/* unlock: flushing and stopping (GstBaseSrc 1.22 does not call it for the
 * PLAYING -> PAUSED of a live source: fill () waits for PLAYING itself). */
static gboolean
gst_dual_paral_src_unlock (GstBaseSrc *bsrc)
{
  GstDualParalSrc *self = GST_DUAL_PARAL_SRC (bsrc);

  dualparal_frame_queue_set_flushing (self->queue, TRUE);
  GST_OBJECT_LOCK (self);
  self->unlocked = TRUE;
  if (self->clock_id != NULL)
    gst_clock_id_unschedule (self->clock_id);
  g_cond_broadcast (&self->playing_cond);
  GST_OBJECT_UNLOCK (self);
  return TRUE;
}

static gboolean
gst_dual_paral_src_unlock_stop (GstBaseSrc *bsrc)
{
  GstDualParalSrc *self = GST_DUAL_PARAL_SRC (bsrc);

  GST_OBJECT_LOCK (self);
  self->unlocked = FALSE;
  GST_OBJECT_UNLOCK (self);
  dualparal_frame_queue_set_flushing (self->queue, FALSE);
  return TRUE;
}

/* Live: waits until the running time reaches pts, so that frames that are
 * ready early (a block comes at once) go out at their time.  The element
 * waits itself instead of having GstBaseSrc do it (get_times): GstBaseSrc
 * would add the running time of the first frame after every PAUSED ->
 * PLAYING to all timestamps ("pseudo-live"), a jump on every resume.
 * FALSE when unlock () cut the wait (pause or flush). */
static gboolean
wait_until (GstDualParalSrc *self, GstClockTime pts)
{
  GstClock *clock;
  GstClockID id;
  GstClockReturn ret;

  GST_OBJECT_LOCK (self);
  if (self->unlocked) {
    GST_OBJECT_UNLOCK (self);
    return FALSE;
  }
  clock = GST_ELEMENT_CLOCK (self);
  if (clock == NULL) {
    GST_OBJECT_UNLOCK (self);
    return TRUE;
  }
  id = gst_clock_new_single_shot_id (clock, GST_ELEMENT_CAST (self)->base_time + pts);
  self->clock_id = id;
  GST_OBJECT_UNLOCK (self);

  ret = gst_clock_id_wait (id, NULL);

  GST_OBJECT_LOCK (self);
  self->clock_id = NULL;
  GST_OBJECT_UNLOCK (self);
  gst_clock_id_unref (id);
  return ret != GST_CLOCK_UNSCHEDULED;
}

/* Live: blocks while the element is not going to PLAYING (paused); FALSE
 * when unlock () cut the wait (a flush or a stop). */
static gboolean
wait_playing (GstDualParalSrc *self)
{
  gboolean ok;

  GST_OBJECT_LOCK (self);
  while (GST_STATE_TARGET (self) != GST_STATE_PLAYING && !self->unlocked)
    g_cond_wait (&self->playing_cond, GST_OBJECT_GET_LOCK (self));
  ok = !self->unlocked;
  GST_OBJECT_UNLOCK (self);
  return ok;
}

typedef enum {
  RUNNING_TIME_OK,
  RUNNING_TIME_NOT_PLAYING, /* on the way to PAUSED: the running time stops */
  RUNNING_TIME_NO_CLOCK,
} RunningTime;

/* The running time now.  A state change away from PLAYING is under way as
 * soon as the target state is no longer PLAYING; on the way to PLAYING the
 * base time is set before the target is. */
static RunningTime
running_time_now (GstDualParalSrc *self, GstClockTime *now)
{
  GstClock *clock = NULL;
  GstClockTime base_time = 0, clock_time;
  gboolean playing;

  GST_OBJECT_LOCK (self);
  playing = GST_STATE_TARGET (self) == GST_STATE_PLAYING;
  if (playing && GST_ELEMENT_CLOCK (self) != NULL) {
    clock = gst_object_ref (GST_ELEMENT_CLOCK (self));
    base_time = GST_ELEMENT_CAST (self)->base_time;
  }
  GST_OBJECT_UNLOCK (self);
  if (!playing)
    return RUNNING_TIME_NOT_PLAYING;
  if (clock == NULL)
    return RUNNING_TIME_NO_CLOCK;
  clock_time = gst_clock_get_time (clock);
  gst_object_unref (clock);
  *now = clock_time > base_time ? clock_time - base_time : 0;
  return RUNNING_TIME_OK;
}

/* Live timestamps (docs/usage.md, "Live timestamps and latency").  Frames
 * keep the frame-rate spacing of index_pts (PTS = index time + ts_offset),
 * and no frame is stamped more than the reported latency L before the
 * running time at which it is ready to go out: the first frame gets
 * now - L, so a synchronised sink shows it on arrival (the sink waits until
 * PTS + latency), and a frame that would come later than that (generation
 * fell behind) moves the timeline forward (ts_offset grows, DISCONT) instead
 * of reaching the sink late.  Resuming after PAUSED continues the timeline:
 * the running time stood still while paused. */
static GstClockTime
live_timestamp (GstDualParalSrc *self, GstClockTime index_pts, gboolean have_now,
                GstClockTime now, GstBuffer *buffer)
{
  GstClockTime latency, earliest;
  GstClockTimeDiff pts;

  if (have_now) {
    GST_OBJECT_LOCK (self);
    latency = GST_CLOCK_TIME_IS_VALID (self->latency) ? self->latency : 0;
    GST_OBJECT_UNLOCK (self);
    earliest = now > latency ? now - latency : 0;
    pts = (GstClockTimeDiff) index_pts + self->ts_offset;
    if (!self->ts_anchored || pts < (GstClockTimeDiff) earliest) {
      if (self->ts_anchored) {
        self->ts_reanchors++;
        GST_BUFFER_FLAG_SET (buffer, GST_BUFFER_FLAG_DISCONT);
        GST_DEBUG_OBJECT (self, "generation behind by %" GST_STIME_FORMAT
                          ": timeline moved forward (%" G_GUINT64_FORMAT " times so far)",
                          GST_STIME_ARGS ((GstClockTimeDiff) earliest - pts), self->ts_reanchors);
      } else {
        GST_DEBUG_OBJECT (self, "first frame at running time %" GST_TIME_FORMAT
                          ", latency %" GST_TIME_FORMAT, GST_TIME_ARGS (now),
                          GST_TIME_ARGS (latency));
      }
      self->ts_offset = (GstClockTimeDiff) earliest - (GstClockTimeDiff) index_pts;
      self->ts_anchored = TRUE;
    }
  } else if (!self->ts_anchored) {
    /* No clock: the frame index times. */
    return index_pts;
  }
  return (GstClockTime) ((GstClockTimeDiff) index_pts + self->ts_offset);
}

/* The stream's tags: the prompt as title and description, the generator
 * and its settings as encoder and comment.  Object lock not held: the
 * prompt and guidance are copied under it (they change while playing). */
static GstTagList *
stream_tags (GstDualParalSrc *self)
{
  GstTagList *tags = gst_tag_list_new_empty ();
  gchar *model = g_path_get_basename (self->run.model);
  gchar *comment;
  gchar guidance[G_ASCII_DTOSTR_BUF_SIZE];
  gchar *prompt, *negative_prompt;
  gdouble guidance_scale;

  GST_OBJECT_LOCK (self);
  prompt = g_strdup (self->run.prompt);
  negative_prompt = g_strdup (self->run.negative_prompt);
  guidance_scale = self->run.guidance_scale;
  GST_OBJECT_UNLOCK (self);
  if (prompt != NULL && prompt[0] != '\0') {
    gst_tag_list_add (tags, GST_TAG_MERGE_REPLACE, GST_TAG_TITLE, prompt, NULL);
    if (negative_prompt != NULL && negative_prompt[0] != '\0') {
      gchar *description = g_strdup_printf ("%s (avoiding: %s)", prompt, negative_prompt);

      gst_tag_list_add (tags, GST_TAG_MERGE_REPLACE, GST_TAG_DESCRIPTION, description, NULL);
      g_free (description);
    } else {
      gst_tag_list_add (tags, GST_TAG_MERGE_REPLACE, GST_TAG_DESCRIPTION, prompt, NULL);
    }
  }
  /* The guidance with a '.' whatever the locale. */
  g_free (prompt);
  g_free (negative_prompt);
  g_ascii_formatd (guidance, sizeof guidance, "%g", guidance_scale);
  comment = g_strdup_printf ("model %s, seed %" G_GUINT64_FORMAT ", steps %d, guidance %s, "
                             "sampler %s", model, self->run.seed, self->run.steps, guidance,
                             self->run.sampler == GST_DUAL_PARAL_SAMPLER_EULER ? "euler"
                                                                              : "unipc");
  gst_tag_list_add (tags, GST_TAG_MERGE_REPLACE,
                    GST_TAG_ENCODER, "dualparal " VERSION,
                    GST_TAG_COMMENT, comment, NULL);
  g_free (comment);
  g_free (model);
  return tags;
}

/* Writes one queued RGB frame into out in the negotiated format. */
static gboolean
write_frame (GstDualParalSrc *self, GstBuffer *frame, GstBuffer *out)
{
  GstVideoFrame in_frame, out_frame;
  gboolean ok = TRUE;

  if (!gst_video_frame_map (&in_frame, &self->frame_info, frame, GST_MAP_READ))
    return FALSE;
  if (!gst_video_frame_map (&out_frame, &self->out_info, out, GST_MAP_WRITE)) {
    gst_video_frame_unmap (&in_frame);
    return FALSE;
  }
  if (self->converter != NULL)
    gst_video_converter_frame (self->converter, &in_frame, &out_frame);
  else
    ok = gst_video_frame_copy (&out_frame, &in_frame);
  gst_video_frame_unmap (&out_frame);
  gst_video_frame_unmap (&in_frame);
  return ok;
}

static GstFlowReturn
gst_dual_paral_src_fill (GstPushSrc *psrc, GstBuffer *buffer)
{
  GstDualParalSrc *self = GST_DUAL_PARAL_SRC (psrc);
  GstBuffer *frame = NULL;
  GError *error = NULL;
  guint64 index, duration_scale;
  GstClockTime pts;
  gint fps_n, fps_d;

  if (G_UNLIKELY (self->worker == NULL)) {
    GST_ELEMENT_ERROR (self, CORE, NEGOTIATION, ("No caps were negotiated"), (NULL));
    return GST_FLOW_NOT_NEGOTIATED;
  }

  if (self->held_frame != NULL) {
    frame = g_steal_pointer (&self->held_frame);
  } else switch (dualparal_frame_queue_pop (self->queue, (gpointer *) &frame, &error)) {
    case DUALPARAL_FRAME_QUEUE_OK:
      break;
    case DUALPARAL_FRAME_QUEUE_FLUSHING:
      GST_DEBUG_OBJECT (self, "flushing");
      return GST_FLOW_FLUSHING;
    case DUALPARAL_FRAME_QUEUE_EOS:
      GST_DEBUG_OBJECT (self, "all frames out");
      return GST_FLOW_EOS;
    case DUALPARAL_FRAME_QUEUE_ERROR:
    default:
      post_generator_error (self, error, "generating the video");
      g_error_free (error);
      return GST_FLOW_ERROR;
  }

  if (!write_frame (self, frame, buffer)) {
    gst_buffer_unref (frame);
    GST_ELEMENT_ERROR (self, RESOURCE, WRITE, ("Could not map the output buffer"), (NULL));
    return GST_FLOW_ERROR;
  }

  index = GST_BUFFER_OFFSET (frame);
  fps_n = GST_VIDEO_INFO_FPS_N (&self->out_info);
  fps_d = GST_VIDEO_INFO_FPS_D (&self->out_info);
  duration_scale = (guint64) fps_d * GST_SECOND;
  pts = gst_util_uint64_scale (index, duration_scale, fps_n);
  GST_BUFFER_DURATION (buffer) = gst_util_uint64_scale (index + 1, duration_scale, fps_n) - pts;
  if (gst_base_src_is_live (GST_BASE_SRC (self))) {
    GstClockTime now = 0;
    RunningTime rt = running_time_now (self, &now);

    /* Paused: the frame waits here for PLAYING and is stamped then.  Not
     * GST_FLOW_FLUSHING: GstBaseSrc, seeing a paused live source, would
     * first wait for PLAYING itself and then pause its task for the
     * FLUSHING, after PLAYING has already restarted it: the stream would
     * stop for good (seen under load, tests/test_element.c live-timing). */
    while (rt == RUNNING_TIME_NOT_PLAYING) {
      if (!wait_playing (self))
        goto hold; /* a flush or a stop */
      rt = running_time_now (self, &now);
    }
    pts = live_timestamp (self, pts, rt == RUNNING_TIME_OK, now, buffer);
    if (rt == RUNNING_TIME_OK && pts > now && !wait_until (self, pts))
      goto hold;
  }
  gst_buffer_unref (frame);
  GST_BUFFER_PTS (buffer) = pts;
  GST_BUFFER_DTS (buffer) = GST_CLOCK_TIME_NONE;
  GST_BUFFER_OFFSET (buffer) = index;
  GST_BUFFER_OFFSET_END (buffer) = index + 1;
  GST_LOG_OBJECT (self, "frame %" G_GUINT64_FORMAT " pts %" GST_TIME_FORMAT, index,
                  GST_TIME_ARGS (GST_BUFFER_PTS (buffer)));

  if (!self->tags_sent) {
    /* GstBaseSrc queues a tag event given to send_event and pushes it
     * after the segment, before this buffer.  Its handler is called
     * directly: gst_element_send_event () takes the state lock, which a
     * state change may hold while it waits for this (streaming) thread. */
    self->tags_sent = TRUE;
    GST_ELEMENT_CLASS (parent_class)->send_event (GST_ELEMENT (self),
                                                   gst_event_new_tag (stream_tags (self)));
  }
  return GST_FLOW_OK;

hold:
  GST_DEBUG_OBJECT (self, "frame %" G_GUINT64_FORMAT " held until PLAYING again", index);
  self->held_frame = frame;
  return GST_FLOW_FLUSHING;
}

/* --- GObject ------------------------------------------------------------- */

/* prompt, negative-prompt, guidance-scale, transition-blocks set in PAUSED
 * or PLAYING: handed to the generator, which queues the change for the next
 * block that enters (DualParal engine) or refuses it (classic engine: a
 * warning on the bus, the run goes on unchanged).  Under gen_lock, so the
 * generator is neither freed nor replaced meanwhile, and a generator made
 * again later (renegotiation) starts from the changed settings. */
static void
change_while_running (GstDualParalSrc *self, guint prop_id, const GValue *value,
                      GParamSpec *pspec)
{
  GError *error = NULL;
  gboolean ok = TRUE;
  const gchar *text = NULL;
  gdouble guidance = 0.0;

  if (prop_id == PROP_PROMPT || prop_id == PROP_NEGATIVE_PROMPT) {
    text = g_value_get_string (value);
    if (text == NULL)
      text = "";
  } else if (prop_id == PROP_GUIDANCE_SCALE) {
    guidance = g_value_get_double (value);
  }

  g_mutex_lock (&self->gen_lock);
  if (self->generator != NULL) {
    if (prop_id == PROP_TRANSITION_BLOCKS)
      ok = dp_generator_set_transition (self->generator, g_value_get_int (value), &error);
    else
      ok = dp_generator_set_prompt (self->generator,
                                    prop_id == PROP_PROMPT ? text : NULL,
                                    prop_id == PROP_NEGATIVE_PROMPT ? text : NULL,
                                    guidance, &error);
  }
  if (ok) {
    GST_OBJECT_LOCK (self);
    switch (prop_id) {
      case PROP_PROMPT:
        g_free (self->props.prompt);
        self->props.prompt = g_strdup (text);
        g_free (self->run.prompt);
        self->run.prompt = g_strdup (text);
        break;
      case PROP_NEGATIVE_PROMPT:
        g_free (self->props.negative_prompt);
        self->props.negative_prompt = g_strdup (text);
        g_free (self->run.negative_prompt);
        self->run.negative_prompt = g_strdup (text);
        break;
      case PROP_GUIDANCE_SCALE:
        self->props.guidance_scale = self->run.guidance_scale = guidance;
        break;
      case PROP_TRANSITION_BLOCKS:
        self->props.transition_blocks = self->run.transition_blocks = g_value_get_int (value);
        break;
      default:
        break;
    }
    GST_OBJECT_UNLOCK (self);
  }
  g_mutex_unlock (&self->gen_lock);

  if (ok) {
    GST_DEBUG_OBJECT (self, "'%s' changed while running", pspec->name);
  } else {
    GST_ELEMENT_WARNING (self, RESOURCE, SETTINGS,
        ("'%s' cannot change now: %s; the video goes on unchanged", pspec->name,
         error->message), (NULL));
    g_error_free (error);
  }
}

static void
gst_dual_paral_src_set_property (GObject *object, guint prop_id, const GValue *value,
                                 GParamSpec *pspec)
{
  GstDualParalSrc *self = GST_DUAL_PARAL_SRC (object);
  gchar *problem = NULL;

  GST_OBJECT_LOCK (self);
  if (self->running) {
    GST_OBJECT_UNLOCK (self);
    if (prop_id == PROP_PROMPT || prop_id == PROP_NEGATIVE_PROMPT
        || prop_id == PROP_GUIDANCE_SCALE || prop_id == PROP_TRANSITION_BLOCKS) {
      change_while_running (self, prop_id, value, pspec);
      return;
    }
    GST_WARNING_OBJECT (self, "'%s' cannot change while the element runs; "
                        "set it in the NULL or READY state", pspec->name);
    return;
  }
  switch (prop_id) {
    case PROP_PROMPT:
      g_free (self->props.prompt);
      self->props.prompt = g_value_dup_string (value);
      if (self->props.prompt == NULL)
        self->props.prompt = g_strdup ("");
      break;
    case PROP_NEGATIVE_PROMPT:
      g_free (self->props.negative_prompt);
      self->props.negative_prompt = g_value_dup_string (value);
      if (self->props.negative_prompt == NULL)
        self->props.negative_prompt = g_strdup ("");
      break;
    case PROP_MODEL:
      g_free (self->props.model);
      /* NULL (or "") means the default model, found at start. */
      self->props.model = g_value_dup_string (value);
      if (self->props.model != NULL && *self->props.model == '\0')
        g_clear_pointer (&self->props.model, g_free);
      break;
    case PROP_NUM_FRAMES:
      /* Kept as given so that start () refuses it with an element error on
       * the bus; the warning tells the user at once. */
      self->props.num_frames = g_value_get_int (value);
      problem = num_frames_problem (self->props.num_frames);
      break;
    case PROP_STEPS:
      self->props.steps = g_value_get_int (value);
      break;
    case PROP_GUIDANCE_SCALE:
      self->props.guidance_scale = g_value_get_double (value);
      break;
    case PROP_GUIDANCE_SCALE_2:
      self->props.guidance_scale_2 = g_value_get_double (value);
      break;
    case PROP_FLOW_SHIFT:
      self->props.flow_shift = g_value_get_double (value);
      break;
    case PROP_SEED:
      self->props.seed = g_value_get_uint64 (value);
      break;
    case PROP_SAMPLER:
      self->props.sampler = g_value_get_enum (value);
      break;
    case PROP_ENGINE:
      self->props.engine = g_value_get_enum (value);
      break;
    case PROP_BLOCK_FRAMES:
      self->props.block_frames = g_value_get_int (value);
      break;
    case PROP_CONTEXT_FRAMES:
      self->props.context_frames = g_value_get_int (value);
      break;
    case PROP_DEVICES:
      g_free (self->props.devices);
      self->props.devices = g_value_dup_string (value);
      if (self->props.devices == NULL)
        self->props.devices = g_strdup (generator_defaults.devices ? generator_defaults.devices
                                                                   : "cpu");
      break;
    case PROP_TEXT_LEN:
      self->props.text_len = g_value_get_int (value);
      break;
    case PROP_THREADS:
      self->props.threads = g_value_get_int (value);
      break;
    case PROP_VAE_TILE:
      self->props.vae_tile = g_value_get_int (value);
      break;
    case PROP_VAE_THREAD:
      self->props.vae_thread = g_value_get_boolean (value);
      break;
    case PROP_VAE_DEVICE:
      g_free (self->props.vae_device);
      self->props.vae_device = g_value_dup_string (value);
      break;
    case PROP_KEEP_TEXT_ENCODER:
      self->props.keep_text_encoder = g_value_get_boolean (value);
      break;
    case PROP_QUEUE_FRAMES:
      self->props.queue_frames = g_value_get_uint (value);
      break;
    case PROP_TRANSITION_BLOCKS:
      self->props.transition_blocks = g_value_get_int (value);
      break;
    case PROP_PROMPT_SCHEDULE: {
      const gchar *text = g_value_get_string (value);
      GError *error = NULL;

      g_free (self->props.prompt_schedule);
      self->props.prompt_schedule = text != NULL && *text != '\0' ? g_strdup (text) : NULL;
      /* Kept as given so that start () refuses it with an element error;
       * the warning names the line at once. */
      if (self->props.prompt_schedule != NULL
          && !dp_prompt_schedule_check (self->props.prompt_schedule, &error)) {
        problem = g_strdup (error->message);
        g_error_free (error);
      }
      break;
    }
    case PROP_PROCESSES:
      self->props.processes = g_value_get_enum (value);
      break;
    case PROP_WIRE_BF16:
      self->props.wire_bf16 = g_value_get_boolean (value);
      break;
    case PROP_IS_LIVE:
      GST_OBJECT_UNLOCK (self);
      gst_base_src_set_live (GST_BASE_SRC (self), g_value_get_boolean (value));
      return;
    default:
      G_OBJECT_WARN_INVALID_PROPERTY_ID (object, prop_id, pspec);
      break;
  }
  GST_OBJECT_UNLOCK (self);

  if (problem != NULL) {
    GST_WARNING_OBJECT (self, "%s", problem);
    g_free (problem);
  }
}

static void
gst_dual_paral_src_get_property (GObject *object, guint prop_id, GValue *value,
                                 GParamSpec *pspec)
{
  GstDualParalSrc *self = GST_DUAL_PARAL_SRC (object);

  if (prop_id == PROP_IS_LIVE) {
    g_value_set_boolean (value, gst_base_src_is_live (GST_BASE_SRC (self)));
    return;
  }

  GST_OBJECT_LOCK (self);
  switch (prop_id) {
    case PROP_PROMPT:
      g_value_set_string (value, self->props.prompt);
      break;
    case PROP_NEGATIVE_PROMPT:
      g_value_set_string (value, self->props.negative_prompt);
      break;
    case PROP_MODEL:
      /* Unset: the directory the default lookup finds now (NULL if none). */
      if (self->props.model != NULL)
        g_value_set_string (value, self->props.model);
      else
        g_value_take_string (value, dp_default_model_dir (NULL));
      break;
    case PROP_NUM_FRAMES:
      g_value_set_int (value, self->props.num_frames);
      break;
    case PROP_STEPS:
      g_value_set_int (value, self->props.steps);
      break;
    case PROP_GUIDANCE_SCALE:
      g_value_set_double (value, self->props.guidance_scale);
      break;
    case PROP_GUIDANCE_SCALE_2:
      g_value_set_double (value, self->props.guidance_scale_2);
      break;
    case PROP_FLOW_SHIFT:
      g_value_set_double (value, self->props.flow_shift);
      break;
    case PROP_SEED:
      g_value_set_uint64 (value, self->props.seed);
      break;
    case PROP_SAMPLER:
      g_value_set_enum (value, self->props.sampler);
      break;
    case PROP_ENGINE:
      g_value_set_enum (value, self->props.engine);
      break;
    case PROP_BLOCK_FRAMES:
      g_value_set_int (value, self->props.block_frames);
      break;
    case PROP_CONTEXT_FRAMES:
      g_value_set_int (value, self->props.context_frames);
      break;
    case PROP_DEVICES:
      g_value_set_string (value, self->props.devices);
      break;
    case PROP_TEXT_LEN:
      g_value_set_int (value, self->props.text_len);
      break;
    case PROP_THREADS:
      g_value_set_int (value, self->props.threads);
      break;
    case PROP_VAE_TILE:
      g_value_set_int (value, self->props.vae_tile);
      break;
    case PROP_VAE_THREAD:
      g_value_set_boolean (value, self->props.vae_thread);
      break;
    case PROP_VAE_DEVICE:
      g_value_set_string (value, self->props.vae_device);
      break;
    case PROP_KEEP_TEXT_ENCODER:
      g_value_set_boolean (value, self->props.keep_text_encoder);
      break;
    case PROP_QUEUE_FRAMES:
      g_value_set_uint (value, self->props.queue_frames);
      break;
    case PROP_TRANSITION_BLOCKS:
      g_value_set_int (value, self->props.transition_blocks);
      break;
    case PROP_PROMPT_SCHEDULE:
      g_value_set_string (value, self->props.prompt_schedule);
      break;
    case PROP_PROCESSES:
      g_value_set_enum (value, self->props.processes);
      break;
    case PROP_WIRE_BF16:
      g_value_set_boolean (value, self->props.wire_bf16);
      break;
    default:
      G_OBJECT_WARN_INVALID_PROPERTY_ID (object, prop_id, pspec);
      break;
  }
  GST_OBJECT_UNLOCK (self);
}

static void
gst_dual_paral_src_finalize (GObject *object)
{
  GstDualParalSrc *self = GST_DUAL_PARAL_SRC (object);

  /* stop () has run if the element was ever started. */
  dualparal_frame_queue_free (self->queue);
  settings_clear (&self->props);
  g_mutex_clear (&self->gen_lock);
  g_mutex_clear (&self->worker_lock);
  g_cond_clear (&self->worker_cond);
  g_cond_clear (&self->playing_cond);
  G_OBJECT_CLASS (parent_class)->finalize (object);
}

static void
gst_dual_paral_src_init (GstDualParalSrc *self)
{
  const dp_generator_params *d = &generator_defaults;

  self->props.prompt = g_strdup ("");
  self->props.negative_prompt = g_strdup (d->negative_prompt ? d->negative_prompt : "");
  self->props.model = NULL; /* the default model, looked up at start */
  self->props.devices = g_strdup (d->devices ? d->devices : "cpu");
  self->props.num_frames = d->num_frames;
  self->props.steps = d->steps;
  self->props.guidance_scale = d->guidance_scale;
  self->props.guidance_scale_2 = d->guidance_scale_2;
  self->props.flow_shift = d->flow_shift;
  self->props.seed = d->seed;
  self->props.sampler = (GstDualParalSampler) d->sampler;
  self->props.engine = DEFAULT_ENGINE;
  self->props.block_frames = d->block_frames;
  self->props.context_frames = d->context_frames;
  self->props.text_len = d->text_len;
  self->props.threads = d->threads;
  self->props.vae_tile = d->vae_tile;
  self->props.vae_thread = d->vae_thread;
  self->props.vae_device = g_strdup (d->vae_device);
  self->props.keep_text_encoder = d->keep_text_encoder;
  self->props.queue_frames = DEFAULT_QUEUE_FRAMES;
  self->props.transition_blocks = d->transition_blocks;
  self->props.prompt_schedule = NULL;

  self->queue = dualparal_frame_queue_new ((GDestroyNotify) gst_buffer_unref);
  g_mutex_init (&self->gen_lock);
  g_mutex_init (&self->worker_lock);
  g_cond_init (&self->worker_cond);
  g_cond_init (&self->playing_cond);
  gst_video_info_init (&self->frame_info);
  gst_video_info_init (&self->out_info);

  gst_base_src_set_format (GST_BASE_SRC (self), GST_FORMAT_TIME);
  gst_base_src_set_live (GST_BASE_SRC (self), DEFAULT_IS_LIVE);
}

#define SETTING_FLAGS (G_PARAM_READWRITE | G_PARAM_STATIC_STRINGS | GST_PARAM_MUTABLE_READY)
/* Changeable while playing (DualParal engine; the classic engine refuses
 * with a warning). */
#define STEERING_FLAGS (G_PARAM_READWRITE | G_PARAM_STATIC_STRINGS | GST_PARAM_MUTABLE_PLAYING)

/* Wakes a fill () waiting for PLAYING (wait_playing) once the element is
 * PLAYING again: GstBaseSrc has then restarted its task and set the base
 * time the frame is stamped against. */
static GstStateChangeReturn
gst_dual_paral_src_change_state (GstElement *element, GstStateChange transition)
{
  GstDualParalSrc *self = GST_DUAL_PARAL_SRC (element);
  GstStateChangeReturn ret = GST_ELEMENT_CLASS (parent_class)->change_state (element, transition);

  if (transition == GST_STATE_CHANGE_PAUSED_TO_PLAYING) {
    GST_OBJECT_LOCK (self);
    g_cond_broadcast (&self->playing_cond);
    GST_OBJECT_UNLOCK (self);
  }
  return ret;
}

static void
gst_dual_paral_src_class_init (GstDualParalSrcClass *klass)
{
  GObjectClass *gobject_class = G_OBJECT_CLASS (klass);
  GstElementClass *element_class = GST_ELEMENT_CLASS (klass);
  GstBaseSrcClass *basesrc_class = GST_BASE_SRC_CLASS (klass);
  GstPushSrcClass *pushsrc_class = GST_PUSH_SRC_CLASS (klass);
  const dp_generator_params *d = &generator_defaults;

  GST_DEBUG_CATEGORY_INIT (gst_dual_paral_src_debug, "dualparalsrc", 0,
                           "dualparal text-to-video source");
  dp_generator_params_init (&generator_defaults);

  gobject_class->set_property = gst_dual_paral_src_set_property;
  gobject_class->get_property = gst_dual_paral_src_get_property;
  gobject_class->finalize = gst_dual_paral_src_finalize;
  element_class->change_state = GST_DEBUG_FUNCPTR (gst_dual_paral_src_change_state);

  g_object_class_install_property (gobject_class, PROP_PROMPT,
      g_param_spec_string ("prompt", "Prompt",
          "What the video shows, in words (UTF-8).  May change while playing (DualParal "
          "engine): the next block that enters takes it; a dualparal-prompt-applied "
          "message names the first frame it fully owns", "", STEERING_FLAGS));
  g_object_class_install_property (gobject_class, PROP_NEGATIVE_PROMPT,
      g_param_spec_string ("negative-prompt", "Negative prompt",
          "What the video should avoid (the unconditional side of guidance); may change "
          "while playing, like prompt",
          d->negative_prompt ? d->negative_prompt : "", STEERING_FLAGS));
  g_object_class_install_property (gobject_class, PROP_MODEL,
      g_param_spec_string ("model", "Model directory",
          "Wan text-to-video model (Wan2.1, Wan2.2 T2V-A14B or TI2V-5B) in diffusers layout (model_index.json, transformer/, "
          "vae/, text_encoder/, tokenizer/, scheduler/); unset: the embedded model, found "
          "through DUALPARAL_MODEL, the installed data folder, then the source tree",
          NULL, SETTING_FLAGS));
  g_object_class_install_property (gobject_class, PROP_NUM_FRAMES,
      g_param_spec_int ("num-frames", "Number of frames",
          "Frames to generate, 4k+1 (1, 5, 9, ..., 81, ...), then EOS; -1 for endless video "
          "(DualParal engine); other counts are refused",
          -1, G_MAXINT, MAX (d->num_frames, -1), SETTING_FLAGS));
  g_object_class_install_property (gobject_class, PROP_STEPS,
      g_param_spec_int ("steps", "Steps",
          "Sampler (denoising) steps; with the DualParal engine, the steps of each block",
          1, 1000, CLAMP (d->steps, 1, 1000), SETTING_FLAGS));
  g_object_class_install_property (gobject_class, PROP_GUIDANCE_SCALE,
      g_param_spec_double ("guidance-scale", "Guidance scale",
          "Classifier-free guidance scale; 1 runs the conditional pass alone "
          "(for guidance-distilled checkpoints); may change while playing, like prompt "
          "(not from 1 to more: a run started at 1 has no unconditional pass)",
          1.0, 100.0, CLAMP (d->guidance_scale, 1.0, 100.0), STEERING_FLAGS));
  g_object_class_install_property (gobject_class, PROP_GUIDANCE_SCALE_2,
      g_param_spec_double ("guidance-scale-2", "Guidance scale 2",
          "Wan2.2 two-expert models (T2V-A14B): the guidance scale of the low-noise expert "
          "(transformer_2); 0 takes guidance-scale, as diffusers; refused for one-transformer "
          "models when set",
          0.0, 100.0, CLAMP (d->guidance_scale_2, 0.0, 100.0), SETTING_FLAGS));
  g_object_class_install_property (gobject_class, PROP_FLOW_SHIFT,
      g_param_spec_double ("flow-shift", "Flow shift",
          "Shift of the sampler's noise schedule (3 at 480p, 5 at 720p); 0 or less takes "
          "the model's scheduler/scheduler_config.json",
          MIN (-1.0, d->flow_shift), 100.0, CLAMP (d->flow_shift, -G_MAXDOUBLE, 100.0),
          SETTING_FLAGS));
  g_object_class_install_property (gobject_class, PROP_SEED,
      g_param_spec_uint64 ("seed", "Seed", "Seed of the initial noise",
          0, G_MAXUINT64, d->seed, SETTING_FLAGS));
  g_object_class_install_property (gobject_class, PROP_SAMPLER,
      g_param_spec_enum ("sampler", "Sampler", "Sampler that takes the denoising steps",
          GST_TYPE_DUAL_PARAL_SAMPLER, (gint) d->sampler, SETTING_FLAGS));
  g_object_class_install_property (gobject_class, PROP_ENGINE,
      g_param_spec_enum ("engine", "Engine",
          "How frames are denoised: the whole video at once (classic) or block by block, "
          "pipelined over the devices (dualparal); auto picks dualparal for endless video, "
          "several devices, or a video longer than the window the model names",
          GST_TYPE_DUAL_PARAL_ENGINE, DEFAULT_ENGINE, SETTING_FLAGS));
  g_object_class_install_property (gobject_class, PROP_BLOCK_FRAMES,
      g_param_spec_int ("block-frames", "Block frames",
          "DualParal engine: latent frames per block (P), each 4 video frames; "
          "0: the model's (model_index.json \"_dualparal\"), else the engine's default (10)",
          0, 4096, CLAMP (d->block_frames, 0, 4096), SETTING_FLAGS));
  g_object_class_install_property (gobject_class, PROP_CONTEXT_FRAMES,
      g_param_spec_int ("context-frames", "Context frames",
          "DualParal engine: latent frames a block sees of each neighbour (C), at most "
          "block-frames; 0: the model's, else the engine's default (5, or block-frames when smaller)",
          0, 4096, CLAMP (d->context_frames, 0, 4096), SETTING_FLAGS));
  g_object_class_install_property (gobject_class, PROP_DEVICES,
      g_param_spec_string ("devices", "Devices",
          "Where to run: \"cpu\", one GPU (\"cuda\", \"cuda:1\", \"1\"), or a list, one "
          "DualParal pipeline stage each: GPUs \"0,1,2,3\" or CPU stages \"cpu,cpu\"",
          d->devices ? d->devices : "cpu", SETTING_FLAGS));
  g_object_class_install_property (gobject_class, PROP_TEXT_LEN,
      g_param_spec_int ("text-len", "Text length",
          "Text tokens the prompts are padded or truncated to (diffusers' "
          "max_sequence_length; it changes the result); 0: the model's (model_index.json "
          "\"_dualparal\", else 512)",
          0, DP_GENERATOR_MAX_TEXT_LEN, CLAMP (d->text_len, 0, DP_GENERATOR_MAX_TEXT_LEN),
          SETTING_FLAGS));
  g_object_class_install_property (gobject_class, PROP_THREADS,
      g_param_spec_int ("threads", "Threads",
          "CPU threads in all, shared out among the CPU stages of devices (at least 1 each); "
          "0: what the machine leaves, for each stage (OMP_NUM_THREADS when set, else the CPUs this process "
          "may run on). Idle threads sleep",
          0, 1024, CLAMP (d->threads, 0, 1024), SETTING_FLAGS));
  g_object_class_install_property (gobject_class, PROP_VAE_TILE,
      g_param_spec_int ("vae-tile", "VAE tile",
          "Decode in tiles of N x N pixels, a quarter overlapping and blended (diffusers' "
          "enable_tiling), when the frame is larger than a tile: less VAE memory at 720p and above, "
          "slight differences at the seams; a multiple of 8; 0: untiled",
          0, 16384, CLAMP (d->vae_tile, 0, 16384), SETTING_FLAGS));
  g_object_class_install_property (gobject_class, PROP_VAE_THREAD,
      g_param_spec_boolean ("vae-thread", "VAE thread",
          "DualParal engine: decode finished blocks on a thread and backend of their own (on a GPU its "
          "own stream), overlapped with the next blocks' denoising; the same frames",
          d->vae_thread, SETTING_FLAGS));
  g_object_class_install_property (gobject_class, PROP_VAE_DEVICE,
      g_param_spec_string ("vae-device", "VAE device",
          "With vae-thread: where the VAE runs (e.g. cuda:1, a spare GPU); NULL: the first stage's device",
          d->vae_device, SETTING_FLAGS));
  g_object_class_install_property (gobject_class, PROP_KEEP_TEXT_ENCODER,
      g_param_spec_boolean ("keep-text-encoder", "Keep text encoder",
          "Keep the text encoder loaded (on the first device, BF16 on a GPU), so that a prompt change "
          "encodes at once; false: load it for each encode and free it after (its memory is free while "
          "the video is made, each prompt change reloads it)",
          d->keep_text_encoder, SETTING_FLAGS));
  g_object_class_install_property (gobject_class, PROP_QUEUE_FRAMES,
      g_param_spec_uint ("queue-frames", "Queue frames",
          "Frames held between the generator and downstream; generation pauses while "
          "the queue is full",
          1, 4096, DEFAULT_QUEUE_FRAMES, SETTING_FLAGS));
  g_object_class_install_property (gobject_class, PROP_TRANSITION_BLOCKS,
      g_param_spec_int ("transition-blocks", "Transition blocks",
          "Blocks over which a prompt change (or a prompt-schedule line) is blended in "
          "(the text embeddings interpolated); 0: at once.  May change while playing",
          0, DP_GENERATOR_MAX_TRANSITION_BLOCKS,
          CLAMP (d->transition_blocks, 0, DP_GENERATOR_MAX_TRANSITION_BLOCKS), STEERING_FLAGS));
  g_object_class_install_property (gobject_class, PROP_PROMPT_SCHEDULE,
      g_param_spec_string ("prompt-schedule", "Prompt schedule",
          "Prompts along the video (DualParal engine): lines \"FRAME: PROMPT\", the first at "
          "frame 0 (it replaces prompt), frames increasing; each applies from the first block "
          "that starts at or after its frame; empty lines and lines starting with # are "
          "skipped.  Empty: none", NULL, SETTING_FLAGS));
  g_object_class_install_property (gobject_class, PROP_PROCESSES,
      g_param_spec_enum ("processes", "Processes",
          "Where the DualParal stages run: threads of this process, one spawned dualparal-worker "
          "process per device after the first (spawn), or the workers of a launcher's job "
          "(launcher: this pipeline is rank 0; devices names its own device); docs/distributed.md",
          GST_TYPE_DUAL_PARAL_PROCESSES, GST_DUAL_PARAL_PROCESSES_THREADS, SETTING_FLAGS));
  g_object_class_install_property (gobject_class, PROP_WIRE_BF16,
      g_param_spec_boolean ("wire-bf16", "BF16 on the wire",
          "Stages in processes of their own: hidden states travel as BF16 (half the bytes; the frames "
          "differ slightly from one process's)", FALSE, SETTING_FLAGS));
  g_object_class_install_property (gobject_class, PROP_IS_LIVE,
      g_param_spec_boolean ("is-live", "Is live",
          "Act as a live source: frames are stamped with the running time at which they "
          "are ready (less the latency) and go out in real time; the latency reported is "
          "the smoothed time per block",
          DEFAULT_IS_LIVE, SETTING_FLAGS));

  gst_element_class_set_static_metadata (element_class,
      "DualParal video generator", "Source/Video",
      "Generates video from a text prompt with a Wan2.1 diffusion transformer, block by "
      "block, spread over one or more devices (DualParal)",
      "dualparal developers");
  gst_element_class_add_static_pad_template (element_class, &src_template);

  basesrc_class->start = GST_DEBUG_FUNCPTR (gst_dual_paral_src_start);
  basesrc_class->stop = GST_DEBUG_FUNCPTR (gst_dual_paral_src_stop);
  basesrc_class->get_caps = GST_DEBUG_FUNCPTR (gst_dual_paral_src_get_caps);
  basesrc_class->fixate = GST_DEBUG_FUNCPTR (gst_dual_paral_src_fixate);
  basesrc_class->set_caps = GST_DEBUG_FUNCPTR (gst_dual_paral_src_set_caps);
  basesrc_class->decide_allocation = GST_DEBUG_FUNCPTR (gst_dual_paral_src_decide_allocation);
  basesrc_class->query = GST_DEBUG_FUNCPTR (gst_dual_paral_src_query);
  basesrc_class->is_seekable = GST_DEBUG_FUNCPTR (gst_dual_paral_src_is_seekable);
  basesrc_class->unlock = GST_DEBUG_FUNCPTR (gst_dual_paral_src_unlock);
  basesrc_class->unlock_stop = GST_DEBUG_FUNCPTR (gst_dual_paral_src_unlock_stop);
  pushsrc_class->fill = GST_DEBUG_FUNCPTR (gst_dual_paral_src_fill);

  gst_type_mark_as_plugin_api (GST_TYPE_DUAL_PARAL_SAMPLER, 0);
  gst_type_mark_as_plugin_api (GST_TYPE_DUAL_PARAL_ENGINE, 0);
  gst_type_mark_as_plugin_api (GST_TYPE_DUAL_PARAL_PROCESSES, 0);
}
