/* dualparalsrc element tests: GstHarness and small pipelines over the tiny
 * test model (tests/data/pipeline/tiny-wan, diffusers layout) on the CPU.
 *
 * Runs with GST_PLUGIN_PATH at the build directory of gst/ (tests/meson.build).
 * Every run uses few frames and TEST_STEPS sampler steps so the suite takes
 * seconds.  The generator is deterministic for a given seed, so the RGB
 * frames of two runs are compared byte for byte. */
#include <string.h>

#include <glib/gstdio.h>
#include <gst/check/gstharness.h>
#include <gst/gst.h>
#include <gst/video/video.h>

#define TEST_FRAMES 5
#define TEST_STEPS 2
#define TEST_SEED 7
#define TEST_FPS 16 /* Wan2.1's rate, the element's default framerate */
#define BUS_TIMEOUT (120 * GST_SECOND)

static gchar *model_dir;

/* --- helpers ------------------------------------------------------------- */

static gboolean
require_element (void)
{
  GstElementFactory *factory = gst_element_factory_find ("dualparalsrc");

  if (factory == NULL) {
    g_test_fail_printf ("element dualparalsrc not found (GST_PLUGIN_PATH=%s); "
                        "GST_DEBUG=GST_PLUGIN_LOADING:4 says why the plugin did not load",
                        g_getenv ("GST_PLUGIN_PATH"));
    return FALSE;
  }
  gst_object_unref (factory);
  return TRUE;
}

static gboolean
require_model (void)
{
  gchar *index;
  gboolean ok;

  if (!require_element ())
    return FALSE;
  index = g_build_filename (model_dir, "model_index.json", NULL);
  ok = g_file_test (index, G_FILE_TEST_IS_REGULAR);
  if (!ok)
    g_test_fail_printf ("test model missing: %s", index);
  g_free (index);
  return ok;
}

static void
configure (GstElement *src, gint num_frames)
{
  g_object_set (src, "model", model_dir, "prompt", "a red ball bouncing", "num-frames",
                num_frames, "steps", TEST_STEPS, "seed", (guint64) TEST_SEED, "devices", "cpu",
                NULL);
}

/* A harness around a configured dualparalsrc, PLAYING.  NULL (and the test
 * failed with the element's error text) when it does not start. */
static GstHarness *
src_harness_new (const gchar *sink_caps, gint num_frames, guint queue_frames)
{
  GstHarness *h = gst_harness_new ("dualparalsrc");
  GstBus *bus = gst_bus_new ();
  GstMessage *msg;

  configure (h->element, num_frames);
  g_object_set (h->element, "queue-frames", queue_frames, NULL);
  if (sink_caps != NULL)
    gst_harness_set_sink_caps_str (h, sink_caps);
  gst_element_set_bus (h->element, bus);
  if (gst_element_set_state (h->element, GST_STATE_PLAYING) == GST_STATE_CHANGE_FAILURE) {
    GError *error = NULL;

    msg = gst_bus_pop_filtered (bus, GST_MESSAGE_ERROR);
    if (msg != NULL)
      gst_message_parse_error (msg, &error, NULL);
    g_test_fail_printf ("dualparalsrc did not start: %s", error ? error->message : "no error posted");
    g_clear_error (&error);
    if (msg != NULL)
      gst_message_unref (msg);
    gst_bus_set_flushing (bus, TRUE);
    gst_harness_teardown (h);
    h = NULL;
  }
  /* Drop the messages (they hold the element) and those to come. */
  gst_bus_set_flushing (bus, TRUE);
  gst_object_unref (bus);
  return h;
}

static GstClockTime
frame_pts (guint64 index)
{
  return gst_util_uint64_scale (index, GST_SECOND, TEST_FPS);
}

/* Runs pipeline to EOS or ERROR; returns the ERROR (or NULL at EOS) and
 * stores element messages named `element_name` (NULL: all) in *elements
 * when given. */
static GstMessage *
run_to_end (GstElement *pipeline, const gchar *element_name, GList **elements)
{
  GstBus *bus = gst_element_get_bus (pipeline);
  GstMessage *msg, *result = NULL;

  gst_element_set_state (pipeline, GST_STATE_PLAYING);
  for (;;) {
    msg = gst_bus_timed_pop_filtered (bus, BUS_TIMEOUT,
                                      GST_MESSAGE_EOS | GST_MESSAGE_ERROR | GST_MESSAGE_ELEMENT);
    g_assert_nonnull (msg); /* a timeout means a hang */
    if (GST_MESSAGE_TYPE (msg) == GST_MESSAGE_ELEMENT) {
      if (elements != NULL && (element_name == NULL || gst_message_has_name (msg, element_name)))
        *elements = g_list_append (*elements, msg);
      else
        gst_message_unref (msg);
      continue;
    }
    if (GST_MESSAGE_TYPE (msg) == GST_MESSAGE_ERROR) {
      result = msg;
    } else {
      gst_message_unref (msg);
    }
    break;
  }
  gst_element_set_state (pipeline, GST_STATE_NULL);
  gst_object_unref (bus);
  return result;
}

static void
assert_no_error (GstMessage *error_msg)
{
  if (error_msg != NULL) {
    GError *error = NULL;
    gchar *debug = NULL;

    gst_message_parse_error (error_msg, &error, &debug);
    g_test_message ("error from %s: %s (%s)", GST_OBJECT_NAME (GST_MESSAGE_SRC (error_msg)),
                    error->message, debug);
    g_assert_no_error (error);
  }
}

/* Sets pipeline PLAYING; FALSE (and the test failed with the error on the
 * bus) when it does not start. */
static gboolean
start_pipeline (GstElement *pipeline)
{
  GstBus *bus;
  GstMessage *msg;
  GError *error = NULL;

  if (gst_element_set_state (pipeline, GST_STATE_PLAYING) != GST_STATE_CHANGE_FAILURE)
    return TRUE;
  bus = gst_element_get_bus (pipeline);
  msg = gst_bus_pop_filtered (bus, GST_MESSAGE_ERROR);
  if (msg != NULL)
    gst_message_parse_error (msg, &error, NULL);
  g_test_fail_printf ("pipeline did not start: %s", error ? error->message : "no error posted");
  g_clear_error (&error);
  if (msg != NULL)
    gst_message_unref (msg);
  gst_object_unref (bus);
  gst_element_set_state (pipeline, GST_STATE_NULL);
  return FALSE;
}

/* dualparalsrc ! fakesink, named src and sink. */
static GstElement *
source_pipeline (GstElement **src)
{
  GstElement *pipeline = gst_pipeline_new (NULL);
  GstElement *sink = gst_element_factory_make ("fakesink", "sink");

  *src = gst_element_factory_make ("dualparalsrc", "src");
  g_assert_nonnull (*src);
  g_assert_nonnull (sink);
  gst_bin_add_many (GST_BIN (pipeline), *src, sink, NULL);
  g_assert_true (gst_element_link (*src, sink));
  return pipeline;
}

/* --- properties ---------------------------------------------------------- */

static void
test_properties (void)
{
  static const gchar *settings[] = {
    "prompt", "negative-prompt", "model", "num-frames", "steps", "guidance-scale",
    "flow-shift", "seed", "sampler", "engine", "block-frames", "context-frames", "devices",
    "text-len", "queue-frames", "is-live", "threads",
  };
  GstElement *src;
  GObjectClass *klass;
  GEnumClass *sampler;
  guint i;
  gint frames;

  if (!require_element ())
    return;
  src = gst_element_factory_make ("dualparalsrc", NULL);
  klass = G_OBJECT_GET_CLASS (src);
  for (i = 0; i < G_N_ELEMENTS (settings); i++) {
    GParamSpec *pspec = g_object_class_find_property (klass, settings[i]);

    g_test_message ("property %s", settings[i]);
    g_assert_nonnull (pspec);
    g_assert_true ((pspec->flags & G_PARAM_READWRITE) == G_PARAM_READWRITE);
    g_assert_true ((pspec->flags & G_PARAM_STATIC_STRINGS) == G_PARAM_STATIC_STRINGS);
    g_assert_true (pspec->flags & GST_PARAM_MUTABLE_READY);
    g_assert_cmpuint (strlen (g_param_spec_get_blurb (pspec)), >, 10);
  }

  sampler = g_type_class_ref (G_PARAM_SPEC_VALUE_TYPE (g_object_class_find_property (klass,
                                                                                      "sampler")));
  g_assert_nonnull (g_enum_get_value_by_nick (sampler, "unipc"));
  g_assert_nonnull (g_enum_get_value_by_nick (sampler, "euler"));
  g_type_class_unref (sampler);

  /* threads: 0 (what the machine leaves) by default, negative refused by
   * the property's range. */
  {
    GParamSpecInt *threads = G_PARAM_SPEC_INT (g_object_class_find_property (klass, "threads"));
    gint n = -1;

    g_assert_cmpint (threads->default_value, ==, 0);
    g_assert_cmpint (threads->minimum, ==, 0);
    g_assert_cmpint (threads->maximum, ==, 1024);
    g_object_get (src, "threads", &n, NULL);
    g_assert_cmpint (n, ==, 0);
    g_object_set (src, "threads", 3, NULL);
    g_object_get (src, "threads", &n, NULL);
    g_assert_cmpint (n, ==, 3);
    g_object_set (src, "threads", 0, NULL);
  }

  /* A valid count is taken silently; a bad one is kept (start refuses it)
   * and warned about at once. */
  g_object_set (src, "num-frames", 9, NULL);
  g_test_expect_message ("dualparal", G_LOG_LEVEL_WARNING, "*num-frames 6 is not valid*");
  g_object_set (src, "num-frames", 6, NULL);
  g_test_assert_expected_messages ();
  g_object_get (src, "num-frames", &frames, NULL);
  g_assert_cmpint (frames, ==, 6);
  g_object_set (src, "num-frames", -1, NULL);

  gst_object_unref (src);
}

/* --- caps ---------------------------------------------------------------- */

typedef struct {
  gint width, height;
  guint8 *rgb; /* first frame, width * height * 3 */
} Reference;

static Reference reference;

/* Pulls the first frame of a run negotiated to `format` and checks caps. */
static GstBuffer *
pull_first_frame (const gchar *format, GstVideoInfo *info)
{
  gchar *caps_str = format ? g_strdup_printf ("video/x-raw, format=%s", format) : NULL;
  GstHarness *h = src_harness_new (caps_str, TEST_FRAMES, 4);
  GstBuffer *buffer;
  GstCaps *caps;

  g_free (caps_str);
  if (h == NULL)
    return NULL;
  buffer = gst_harness_pull (h);
  g_assert_nonnull (buffer);
  caps = gst_pad_get_current_caps (h->sinkpad);
  g_assert_nonnull (caps);
  g_assert_true (gst_caps_is_fixed (caps));
  g_assert_true (gst_video_info_from_caps (info, caps));
  g_assert_cmpint (GST_VIDEO_INFO_FPS_N (info), ==, TEST_FPS);
  g_assert_cmpint (GST_VIDEO_INFO_FPS_D (info), ==, 1);
  g_assert_cmpint (GST_VIDEO_INFO_PAR_N (info), ==, 1);
  g_assert_cmpint (GST_VIDEO_INFO_PAR_D (info), ==, 1);
  g_assert_cmpint (GST_VIDEO_INFO_WIDTH (info) % 16, ==, 0);
  g_assert_cmpint (GST_VIDEO_INFO_HEIGHT (info) % 16, ==, 0);
  if (format != NULL)
    g_assert_cmpstr (gst_video_format_to_string (GST_VIDEO_INFO_FORMAT (info)), ==, format);
  gst_caps_unref (caps);
  gst_harness_teardown (h); /* mid-generation: the other frames are still coming */
  return buffer;
}

/* Unconstrained caps fixate to the model's native size in RGB; keeps that
 * first frame as the reference for the other formats. */
static gboolean
ensure_reference (void)
{
  GstVideoInfo info;
  GstVideoFrame frame;
  GstBuffer *buffer;
  gint y;

  if (reference.rgb != NULL)
    return TRUE;
  buffer = pull_first_frame (NULL, &info);
  if (buffer == NULL)
    return FALSE;
  g_assert_cmpint (GST_VIDEO_INFO_FORMAT (&info), ==, GST_VIDEO_FORMAT_RGB);
  reference.width = GST_VIDEO_INFO_WIDTH (&info);
  reference.height = GST_VIDEO_INFO_HEIGHT (&info);
  reference.rgb = g_malloc ((gsize) reference.width * reference.height * 3);
  g_assert_true (gst_video_frame_map (&frame, &info, buffer, GST_MAP_READ));
  for (y = 0; y < reference.height; y++)
    memcpy (reference.rgb + (gsize) y * reference.width * 3,
            (guint8 *) GST_VIDEO_FRAME_PLANE_DATA (&frame, 0)
                + (gsize) y * GST_VIDEO_FRAME_PLANE_STRIDE (&frame, 0),
            (gsize) reference.width * 3);
  gst_video_frame_unmap (&frame);
  g_assert_cmpuint (GST_BUFFER_OFFSET (buffer), ==, 0);
  g_assert_cmpuint (GST_BUFFER_PTS (buffer), ==, 0);
  gst_buffer_unref (buffer);
  g_test_message ("native size %dx%d", reference.width, reference.height);
  return TRUE;
}

/* Each format: caps negotiated as asked, native size, and pixels equal to
 * the RGB reference (exactly for RGB layouts; luma within 2 of the
 * colorimetry's matrix for YUV, which is the converter's 8-bit rounding). */
static void
test_caps_format (gconstpointer data)
{
  const gchar *format = data;
  GstVideoInfo info;
  GstVideoFrame frame;
  GstBuffer *buffer;
  gint x, y, worst = 0;

  if (!require_model () || !ensure_reference ())
    return;
  buffer = pull_first_frame (format, &info);
  if (buffer == NULL)
    return;
  g_assert_cmpint (GST_VIDEO_INFO_WIDTH (&info), ==, reference.width);
  g_assert_cmpint (GST_VIDEO_INFO_HEIGHT (&info), ==, reference.height);
  g_assert_cmpuint (gst_buffer_get_size (buffer), >=, GST_VIDEO_INFO_SIZE (&info));
  g_assert_true (gst_video_frame_map (&frame, &info, buffer, GST_MAP_READ));

  if (GST_VIDEO_INFO_IS_RGB (&info)) {
    const GstVideoFormatInfo *finfo = info.finfo;
    gint pstride = GST_VIDEO_FRAME_COMP_PSTRIDE (&frame, 0);

    for (y = 0; y < reference.height; y++) {
      for (x = 0; x < reference.width; x++) {
        const guint8 *ref = reference.rgb + ((gsize) y * reference.width + x) * 3;
        gint c;

        for (c = 0; c < 3; c++) {
          const guint8 *p = (const guint8 *) GST_VIDEO_FRAME_COMP_DATA (&frame, c)
                            + (gsize) y * GST_VIDEO_FRAME_COMP_STRIDE (&frame, c)
                            + (gsize) x * pstride;
          g_assert_cmpuint (*p, ==, ref[c]);
        }
        if (GST_VIDEO_FORMAT_INFO_HAS_ALPHA (finfo)) {
          const guint8 *a = (const guint8 *) GST_VIDEO_FRAME_COMP_DATA (&frame, 3)
                            + (gsize) y * GST_VIDEO_FRAME_COMP_STRIDE (&frame, 3)
                            + (gsize) x * pstride;
          g_assert_cmpuint (*a, ==, 255);
        }
      }
    }
  } else {
    gdouble kr, kb, offset, scale;

    g_assert_true (gst_video_color_matrix_get_Kr_Kb (info.colorimetry.matrix, &kr, &kb));
    offset = info.colorimetry.range == GST_VIDEO_COLOR_RANGE_0_255 ? 0.0 : 16.0;
    scale = info.colorimetry.range == GST_VIDEO_COLOR_RANGE_0_255 ? 1.0 : 219.0 / 255.0;
    for (y = 0; y < reference.height; y++) {
      for (x = 0; x < reference.width; x++) {
        const guint8 *ref = reference.rgb + ((gsize) y * reference.width + x) * 3;
        gdouble luma = offset + scale * (kr * ref[0] + (1.0 - kr - kb) * ref[1] + kb * ref[2]);
        const guint8 *p = (const guint8 *) GST_VIDEO_FRAME_COMP_DATA (&frame, 0)
                          + (gsize) y * GST_VIDEO_FRAME_COMP_STRIDE (&frame, 0) + x;
        gint diff = ABS ((gint) *p - (gint) (luma + 0.5));

        worst = MAX (worst, diff);
      }
    }
    g_test_message ("%s: largest luma difference %d", format, worst);
    g_assert_cmpint (worst, <=, 2);
  }
  gst_video_frame_unmap (&frame);
  gst_buffer_unref (buffer);
}

/* --- timestamps, frame count, EOS, duration ------------------------------ */

static void
test_timestamps_and_eos (void)
{
  GstHarness *h;
  GstBuffer *buffer;
  guint64 count = 0;
  gint64 duration = -1;

  if (!require_model ())
    return;
  h = src_harness_new (NULL, TEST_FRAMES, 2);
  if (h == NULL)
    return;
  for (;;) {
    g_assert_true (gst_harness_pull_until_eos (h, &buffer)); /* FALSE: timeout */
    if (buffer == NULL)
      break;
    g_assert_true (GST_BUFFER_PTS_IS_VALID (buffer));
    g_assert_cmpuint (GST_BUFFER_PTS (buffer), ==, frame_pts (count));
    g_assert_cmpuint (GST_BUFFER_DURATION (buffer), ==,
                      frame_pts (count + 1) - frame_pts (count));
    g_assert_cmpuint (GST_BUFFER_OFFSET (buffer), ==, count);
    g_assert_cmpuint (GST_BUFFER_OFFSET_END (buffer), ==, count + 1);
    gst_buffer_unref (buffer);
    count++;
  }
  g_assert_cmpuint (count, ==, TEST_FRAMES);
  g_assert_null (gst_harness_try_pull (h));

  g_assert_true (gst_element_query_duration (h->element, GST_FORMAT_TIME, &duration));
  g_assert_cmpint (duration, ==, (gint64) frame_pts (TEST_FRAMES));
  g_assert_true (gst_element_query_duration (h->element, GST_FORMAT_DEFAULT, &duration));
  g_assert_cmpint (duration, ==, TEST_FRAMES);
  gst_harness_teardown (h);
}

/* Endless video: pull well past the first block, in order, then stop. */
static void
test_endless (void)
{
  const guint pulls = 3 * TEST_FRAMES;
  GstHarness *h;
  gint64 duration, t0;
  guint i;

  if (!require_model ())
    return;
  h = src_harness_new (NULL, -1, 2);
  if (h == NULL)
    return;
  for (i = 0; i < pulls; i++) {
    GstBuffer *buffer = gst_harness_pull (h);

    g_assert_nonnull (buffer);
    g_assert_cmpuint (GST_BUFFER_OFFSET (buffer), ==, i);
    g_assert_cmpuint (GST_BUFFER_PTS (buffer), ==, frame_pts (i));
    gst_buffer_unref (buffer);
  }
  /* Unknown: either no answer or GST_CLOCK_TIME_NONE. */
  if (gst_element_query_duration (h->element, GST_FORMAT_TIME, &duration))
    g_assert_cmpint (duration, ==, -1);

  /* Stopping ends the run within a denoising step of the tiny model. */
  t0 = g_get_monotonic_time ();
  gst_harness_teardown (h);
  g_test_message ("endless teardown took %.3f s",
                  (g_get_monotonic_time () - t0) / (gdouble) G_USEC_PER_SEC);
  g_assert_cmpint (g_get_monotonic_time () - t0, <, 30 * G_USEC_PER_SEC);
}

/* engine=auto with several devices runs the DualParal engine (the classic
 * engine refuses a device list), here on two CPU stages, to EOS. */
static void
test_auto_engine_devices (void)
{
  GstElement *src, *pipeline;
  gint engine;

  if (!require_model ())
    return;
  pipeline = source_pipeline (&src);
  configure (src, TEST_FRAMES);
  /* three CPU threads shared by the two stages: cpu:2,cpu:1 */
  g_object_set (src, "devices", "cpu,cpu", "threads", 3, NULL);
  g_object_get (src, "engine", &engine, NULL);
  g_assert_cmpint (engine, ==, 0); /* auto, the default */
  assert_no_error (run_to_end (pipeline, NULL, NULL));
  gst_object_unref (pipeline);
}

/* Backpressure: while downstream holds the first frame, the generator may
 * only run ahead by the queue and the block it is handing over, then
 * waits.  Without backpressure an endless run would go on for as long as
 * downstream is stuck. */
typedef struct {
  GMutex lock;
  GCond cond;
  gint64 frames_done;    /* last progress */
  gint64 largest_block;  /* largest frames-done step */
  gdouble block_seconds;
  gint64 done_while_held; /* frames-done when the hold ended, -1 before */
} Backpressure;

static GstBusSyncReply
watch_progress (GstBus *bus, GstMessage *msg, gpointer data)
{
  Backpressure *bp = data;
  gint64 done;
  gdouble seconds;

  if (GST_MESSAGE_TYPE (msg) == GST_MESSAGE_ELEMENT
      && gst_message_has_name (msg, "dualparal-progress")) {
    const GstStructure *s = gst_message_get_structure (msg);

    g_assert_true (gst_structure_get_int64 (s, "frames-done", &done));
    g_assert_true (gst_structure_get_double (s, "seconds-per-block", &seconds));
    g_mutex_lock (&bp->lock);
    bp->largest_block = MAX (bp->largest_block, done - bp->frames_done);
    bp->frames_done = done;
    bp->block_seconds = MAX (bp->block_seconds, seconds);
    g_mutex_unlock (&bp->lock);
  }
  return GST_BUS_PASS;
}

/* Holds the streaming thread on the first frame for at least 1.5 s and
 * five block times. */
static GstPadProbeReturn
hold_first_frame (GstPad *pad, GstPadProbeInfo *info, gpointer data)
{
  Backpressure *bp = data;
  gint64 start = g_get_monotonic_time (), elapsed;
  gdouble block_seconds;

  g_mutex_lock (&bp->lock);
  if (bp->done_while_held >= 0) {
    g_mutex_unlock (&bp->lock);
    return GST_PAD_PROBE_OK;
  }
  do {
    g_mutex_unlock (&bp->lock);
    g_usleep (100 * 1000);
    g_mutex_lock (&bp->lock);
    block_seconds = bp->block_seconds;
    elapsed = g_get_monotonic_time () - start;
  } while (elapsed < 3 * G_USEC_PER_SEC / 2 || elapsed < 5 * block_seconds * G_USEC_PER_SEC);
  bp->done_while_held = bp->frames_done;
  g_cond_signal (&bp->cond);
  g_mutex_unlock (&bp->lock);
  return GST_PAD_PROBE_REMOVE;
}

static void
test_backpressure (void)
{
  const guint queue_frames = 2;
  GstElement *src, *pipeline, *sink;
  GstBus *bus;
  GstPad *pad;
  Backpressure bp = { .done_while_held = -1 };
  gint64 deadline, bound;

  if (!require_model ())
    return;
  g_mutex_init (&bp.lock);
  g_cond_init (&bp.cond);
  pipeline = source_pipeline (&src);
  configure (src, -1);
  g_object_set (src, "queue-frames", queue_frames, NULL);
  sink = gst_bin_get_by_name (GST_BIN (pipeline), "sink");
  pad = gst_element_get_static_pad (sink, "sink");
  gst_pad_add_probe (pad, GST_PAD_PROBE_TYPE_BUFFER, hold_first_frame, &bp, NULL);
  gst_object_unref (pad);
  gst_object_unref (sink);
  bus = gst_element_get_bus (pipeline);
  gst_bus_set_sync_handler (bus, watch_progress, &bp, NULL);

  if (!start_pipeline (pipeline))
    goto out;
  deadline = g_get_monotonic_time () + 120 * G_TIME_SPAN_SECOND;
  g_mutex_lock (&bp.lock);
  while (bp.done_while_held < 0)
    g_assert_true (g_cond_wait_until (&bp.cond, &bp.lock, deadline));
  g_mutex_unlock (&bp.lock);
  gst_element_set_state (pipeline, GST_STATE_NULL);

  /* The held frame, the queue, and at most the block being handed over
   * plus the next one whose progress was posted before its first push. */
  bound = 1 + queue_frames + 2 * bp.largest_block;
  g_test_message ("frames generated while downstream held frame 0: %" G_GINT64_FORMAT
                  " (bound %" G_GINT64_FORMAT ", block %" G_GINT64_FORMAT ", %.3f s)",
                  bp.done_while_held, bound, bp.largest_block, bp.block_seconds);
  g_assert_cmpint (bp.done_while_held, <=, bound);

out:
  gst_bus_set_sync_handler (bus, NULL, NULL, NULL);
  gst_object_unref (bus);
  gst_object_unref (pipeline);
  g_mutex_clear (&bp.lock);
  g_cond_clear (&bp.cond);
}

/* PLAYING -> NULL at different moments of a run, repeatedly: before any
 * frame (model loaded, generation under way), after the first frame, and
 * with the worker blocked on a full queue.  Run under the leaks tracer by
 * tests/meson.build, which fails the test on any GstObject/GstMiniObject
 * left over at gst_deinit (). */
static void
test_restart (void)
{
  guint round;

  if (!require_model ())
    return;
  for (round = 0; round < 6; round++) {
    GstHarness *h = src_harness_new (NULL, 9, round % 3 == 2 ? 1 : 4);

    if (h == NULL)
      return;
    if (round % 3 == 1 || round % 3 == 2) {
      GstBuffer *buffer = gst_harness_pull (h);

      g_assert_nonnull (buffer);
      gst_buffer_unref (buffer);
      if (round % 3 == 2)
        g_usleep (100 * 1000); /* let the worker fill the one-frame queue */
    }
    g_assert_cmpint (gst_element_set_state (h->element, GST_STATE_NULL), ==,
                     GST_STATE_CHANGE_SUCCESS);
    gst_harness_teardown (h);
  }
}

/* --- errors on the bus --------------------------------------------------- */

static GError *
expect_error (GstElement *pipeline)
{
  GstMessage *msg;
  GError *error = NULL;
  gchar *debug = NULL;

  msg = run_to_end (pipeline, NULL, NULL);
  g_assert_nonnull (msg);
  gst_message_parse_error (msg, &error, &debug);
  g_assert_true (GST_IS_ELEMENT (GST_MESSAGE_SRC (msg)));
  g_assert_true (GST_OBJECT_NAME (GST_MESSAGE_SRC (msg)) != NULL);
  g_test_message ("error: %s (%s)", error->message, debug);
  g_free (debug);
  gst_message_unref (msg);
  return error;
}

static void
test_bad_num_frames (void)
{
  GstElement *src, *pipeline;
  GError *error;

  if (!require_element ())
    return;
  pipeline = source_pipeline (&src);
  configure (src, TEST_FRAMES);
  g_test_expect_message ("dualparal", G_LOG_LEVEL_WARNING, "*num-frames 6*");
  g_object_set (src, "num-frames", 6, NULL);
  g_test_assert_expected_messages ();

  error = expect_error (pipeline);
  g_assert_error (error, GST_RESOURCE_ERROR, GST_RESOURCE_ERROR_SETTINGS);
  g_assert_nonnull (strstr (error->message, "num-frames 6"));
  g_error_free (error);
  gst_object_unref (pipeline);
}

static void
test_missing_model (void)
{
  GstElement *src, *pipeline;
  GError *error;
  gchar *missing = g_build_filename (g_get_tmp_dir (), "dualparal-no-such-model", NULL);

  if (!require_element ())
    return;
  pipeline = source_pipeline (&src);
  configure (src, TEST_FRAMES);
  g_object_set (src, "model", missing, NULL);
  error = expect_error (pipeline);
  g_assert_error (error, GST_RESOURCE_ERROR, GST_RESOURCE_ERROR_NOT_FOUND);
  g_assert_nonnull (strstr (error->message, missing));
  g_error_free (error);
  gst_object_unref (pipeline);
  g_free (missing);
}

/* A directory that is not a model: the generator's own error text reaches
 * the bus. */
static void
test_not_a_model (void)
{
  GstElement *src, *pipeline;
  GError *error;
  gchar *dir;

  if (!require_element ())
    return;
  dir = g_dir_make_tmp ("dualparal-empty-XXXXXX", NULL);
  g_assert_nonnull (dir);
  pipeline = source_pipeline (&src);
  configure (src, TEST_FRAMES);
  g_object_set (src, "model", dir, NULL);
  error = expect_error (pipeline);
  g_assert_true (error->domain == GST_RESOURCE_ERROR);
  g_assert_cmpuint (strlen (error->message), >, 0);
  g_error_free (error);
  gst_object_unref (pipeline);
  g_rmdir (dir);
  g_free (dir);
}

/* --- bus messages and live mode ------------------------------------------ */

static void
test_progress_messages (void)
{
  GstElement *src, *pipeline;
  GList *progress = NULL, *l;
  gint64 done = 0, total = 0, last_done = 0;
  gint steps = 0, in_flight = 0, last_step = 0;
  gdouble seconds = -1.0;

  if (!require_model ())
    return;
  pipeline = source_pipeline (&src);
  configure (src, TEST_FRAMES);
  assert_no_error (run_to_end (pipeline, NULL, &progress));
  g_assert_nonnull (progress);
  for (l = progress; l != NULL; l = l->next) {
    const GstStructure *s = gst_message_get_structure (l->data);

    if (gst_message_has_name (l->data, "dualparal-step")) {
      gint step, steps_total;
      gdouble step_seconds;

      g_assert_true (gst_structure_get_int (s, "step", &step));
      g_assert_true (gst_structure_get_int (s, "steps-total", &steps_total));
      g_assert_true (gst_structure_get_double (s, "seconds-per-step", &step_seconds));
      g_assert_cmpint (step, ==, last_step + 1);
      g_assert_cmpint (steps_total, ==, TEST_STEPS);
      g_assert_cmpfloat (step_seconds, >=, 0.0);
      last_step = step;
      continue;
    }
    g_assert_true (gst_message_has_name (l->data, "dualparal-progress"));

    g_assert_true (GST_MESSAGE_SRC (l->data) == GST_OBJECT (src));
    g_assert_true (gst_structure_get_int64 (s, "frames-done", &done));
    g_assert_true (gst_structure_get_int64 (s, "frames-total", &total));
    g_assert_true (gst_structure_get_int (s, "steps", &steps));
    g_assert_true (gst_structure_get_int (s, "blocks-in-flight", &in_flight));
    g_assert_true (gst_structure_get_double (s, "seconds-per-block", &seconds));
    g_assert_cmpint (done, >, last_done);
    g_assert_cmpint (total, ==, TEST_FRAMES);
    g_assert_cmpint (steps, ==, TEST_STEPS);
    g_assert_cmpint (in_flight, >=, 1);
    g_assert_cmpfloat (seconds, >, 0.0);
    last_done = done;
  }
  g_assert_cmpint (last_done, ==, TEST_FRAMES);
  g_assert_cmpint (last_step, ==, TEST_STEPS);
  g_list_free_full (progress, (GDestroyNotify) gst_message_unref);
  gst_object_unref (pipeline);
}

/* Live: after the first block the element posts LATENCY and answers the
 * latency query with the measured block time; settings cannot change while
 * it runs. */
static void
test_live_latency (void)
{
  GstElement *src, *pipeline;
  GstBus *bus;
  GstMessage *msg;
  GstQuery *query;
  gboolean live = FALSE, got_latency = FALSE;
  GstClockTime min = 0, max = 0;
  gdouble block_seconds = -1.0;
  gint steps;

  if (!require_model ())
    return;
  pipeline = source_pipeline (&src);
  configure (src, TEST_FRAMES);
  g_object_set (src, "is-live", TRUE, NULL);
  if (!start_pipeline (pipeline)) {
    gst_object_unref (pipeline);
    return;
  }
  bus = gst_element_get_bus (pipeline);
  while (!got_latency || block_seconds < 0.0) {
    msg = gst_bus_timed_pop_filtered (bus, BUS_TIMEOUT,
                                      GST_MESSAGE_ERROR | GST_MESSAGE_LATENCY | GST_MESSAGE_ELEMENT);
    g_assert_nonnull (msg);
    if (GST_MESSAGE_TYPE (msg) == GST_MESSAGE_ERROR) {
      assert_no_error (msg);
    } else if (GST_MESSAGE_TYPE (msg) == GST_MESSAGE_LATENCY) {
      got_latency = GST_MESSAGE_SRC (msg) == GST_OBJECT (src) || got_latency;
    } else if (gst_message_has_name (msg, "dualparal-progress")) {
      g_assert_true (gst_structure_get_double (gst_message_get_structure (msg),
                                               "seconds-per-block", &block_seconds));
    }
    gst_message_unref (msg);
  }

  query = gst_query_new_latency ();
  g_assert_true (gst_element_query (src, query));
  gst_query_parse_latency (query, &live, &min, &max);
  gst_query_unref (query);
  g_assert_true (live);
  /* The last block's time, to the nanosecond rounding. */
  g_assert_cmpuint (min, <=, (GstClockTime) (block_seconds * GST_SECOND) + 1);
  g_assert_cmpuint (min + 1, >=, (GstClockTime) (block_seconds * GST_SECOND));
  g_assert_cmpuint (max, >=, min);

  g_test_expect_message ("dualparal", G_LOG_LEVEL_WARNING, "*'steps' cannot change*");
  g_object_set (src, "steps", TEST_STEPS + 5, NULL);
  g_test_assert_expected_messages ();
  g_object_get (src, "steps", &steps, NULL);
  g_assert_cmpint (steps, ==, TEST_STEPS);

  gst_element_set_state (pipeline, GST_STATE_NULL);
  gst_object_unref (bus);
  gst_object_unref (pipeline);
}

/* --- MP4 round trip ------------------------------------------------------ */

static gboolean
have_h264_decoder (void)
{
  GList *decoders = gst_element_factory_list_get_elements (
      GST_ELEMENT_FACTORY_TYPE_DECODER | GST_ELEMENT_FACTORY_TYPE_MEDIA_VIDEO,
      GST_RANK_MARGINAL);
  GstCaps *h264 = gst_caps_from_string ("video/x-h264");
  GList *fit = gst_element_factory_list_filter (decoders, h264, GST_PAD_SINK, FALSE);
  gboolean found = fit != NULL;

  gst_plugin_feature_list_free (fit);
  gst_plugin_feature_list_free (decoders);
  gst_caps_unref (h264);
  return found;
}

static void
count_buffer (GstElement *sink, GstBuffer *buffer, GstPad *pad, gpointer user_data)
{
  (*(guint *) user_data)++;
}

/* Runs the pipeline to EOS with no error; returns how many buffers reached
 * its "fakesink name=sink signal-handoffs=true".  Takes the pipeline. */
static guint
run_counting_buffers (GstElement *pipeline)
{
  GstElement *sink = gst_bin_get_by_name (GST_BIN (pipeline), "sink");
  guint buffers = 0;

  g_signal_connect (sink, "handoff", G_CALLBACK (count_buffer), &buffers);
  gst_object_unref (sink);
  assert_no_error (run_to_end (pipeline, NULL, NULL));
  gst_object_unref (pipeline);
  return buffers;
}

/* pipelines/mp4.sh's pipeline with the tiny model; the file must decode
 * back (decodebin picks what is installed: avdec_h264 or openh264dec) to
 * exactly the frames generated. */
static void
test_mp4_round_trip (void)
{
  const gchar *needed[] = { "x264enc", "mp4mux", "qtdemux", "h264parse" };
  GError *error = NULL;
  GstElement *pipeline, *src;
  gchar *dir, *path, *desc;
  guint i;

  if (!require_model ())
    return;
  for (i = 0; i < G_N_ELEMENTS (needed); i++) {
    GstElementFactory *f = gst_element_factory_find (needed[i]);

    if (f == NULL) {
      g_test_skip_printf ("%s is not installed", needed[i]);
      return;
    }
    gst_object_unref (f);
  }
  if (!have_h264_decoder ()) {
    g_test_skip ("no H.264 decoder installed");
    return;
  }

  dir = g_dir_make_tmp ("dualparal-mp4-XXXXXX", NULL);
  path = g_build_filename (dir, "out.mp4", NULL);
  desc = g_strdup_printf ("dualparalsrc name=src ! video/x-raw,format=I420 ! x264enc ! "
                          "mp4mux ! filesink location=\"%s\"", path);
  pipeline = gst_parse_launch (desc, &error);
  g_assert_no_error (error);
  src = gst_bin_get_by_name (GST_BIN (pipeline), "src");
  configure (src, TEST_FRAMES);
  gst_object_unref (src);
  assert_no_error (run_to_end (pipeline, NULL, NULL));
  gst_object_unref (pipeline);
  g_free (desc);
  g_assert_true (g_file_test (path, G_FILE_TEST_IS_REGULAR));

  desc = g_strdup_printf ("filesrc location=\"%s\" ! decodebin ! fakesink name=sink "
                          "signal-handoffs=true", path);
  pipeline = gst_parse_launch (desc, &error);
  g_assert_no_error (error);
  g_assert_cmpuint (run_counting_buffers (pipeline), ==, TEST_FRAMES);

  g_unlink (path);
  g_rmdir (dir);
  g_free (desc);
  g_free (path);
  g_free (dir);
}

static GstPadProbeReturn
note_caps_size (GstPad *pad, GstPadProbeInfo *info, gpointer user_data)
{
  GstEvent *event = GST_PAD_PROBE_INFO_EVENT (info);
  gint *size = user_data;

  if (GST_EVENT_TYPE (event) == GST_EVENT_CAPS) {
    GstCaps *caps;
    GstStructure *s;

    gst_event_parse_caps (event, &caps);
    s = gst_caps_get_structure (caps, 0);
    g_assert_true (gst_structure_get_int (s, "width", &size[0]));
    g_assert_true (gst_structure_get_int (s, "height", &size[1]));
  }
  return GST_PAD_PROBE_OK;
}

/* A videoscale to twice the size downstream (pipelines' SCALE_TO): the
 * element still generates at its native size and videoscale scales, instead
 * of the model running at the size videoscale lists first. */
static void
test_native_size_through_videoscale (void)
{
  GError *error = NULL;
  GstElement *pipeline, *src;
  GstPad *pad;
  gchar *desc;
  gint size[2] = { 0, 0 };

  if (!require_model () || !ensure_reference ())
    return;
  desc = g_strdup_printf ("dualparalsrc name=src ! videoscale ! video/x-raw,width=%d,height=%d "
                          "! fakesink", 2 * reference.width, 2 * reference.height);
  pipeline = gst_parse_launch (desc, &error);
  g_assert_no_error (error);
  src = gst_bin_get_by_name (GST_BIN (pipeline), "src");
  configure (src, TEST_FRAMES);
  pad = gst_element_get_static_pad (src, "src");
  gst_pad_add_probe (pad, GST_PAD_PROBE_TYPE_EVENT_DOWNSTREAM, note_caps_size, size, NULL);
  gst_object_unref (pad);
  gst_object_unref (src);
  assert_no_error (run_to_end (pipeline, NULL, NULL));
  gst_object_unref (pipeline);
  g_free (desc);
  g_assert_cmpint (size[0], ==, reference.width);
  g_assert_cmpint (size[1], ==, reference.height);
}

/* No model property: the embedded default model (DP_DEFAULT_MODEL_DIR from
 * tests/meson.build, the element's build-time default).  The element runs it
 * at its native size and frame rate; skipped while it is not shipped. */
static void
test_default_model (void)
{
  const gchar *dir = g_getenv ("DP_DEFAULT_MODEL_DIR");
  GError *error = NULL;
  GstElement *pipeline, *src;
  GstPad *pad;
  gchar *index, *model = NULL;
  gint size[2] = { 0, 0 };

  index = g_build_filename (dir ? dir : "", "model_index.json", NULL);
  if (dir == NULL || !g_file_test (index, G_FILE_TEST_IS_REGULAR)) {
    g_test_skip_printf ("no embedded model at %s", dir ? dir : "(DP_DEFAULT_MODEL_DIR unset)");
    g_free (index);
    return;
  }
  g_free (index);
  pipeline = gst_parse_launch ("dualparalsrc name=src prompt=\"a red ball moving to the right\" "
                               "num-frames=17 steps=4 devices=cpu ! fakesink name=sink "
                               "signal-handoffs=true", &error);
  g_assert_no_error (error);
  src = gst_bin_get_by_name (GST_BIN (pipeline), "src");
  g_object_get (src, "model", &model, NULL);
  g_assert_cmpstr (model, ==, dir);
  pad = gst_element_get_static_pad (src, "src");
  gst_pad_add_probe (pad, GST_PAD_PROBE_TYPE_EVENT_DOWNSTREAM, note_caps_size, size, NULL);
  gst_object_unref (pad);
  gst_object_unref (src);
  g_assert_cmpuint (run_counting_buffers (pipeline), ==, 17);
  /* The shipped model's native size (model_index.json "_dualparal"). */
  g_assert_cmpint (size[0], ==, 64);
  g_assert_cmpint (size[1], ==, 64);
  g_free (model);
}

int
main (int argc, char **argv)
{
  static const gchar *formats[] = { "RGB", "RGBA", "BGRx", "I420", "NV12" };
  const gchar *data = g_getenv ("DP_TEST_DATA");
  guint i;
  int result;

  gst_init (&argc, &argv);
  g_test_init (&argc, &argv, NULL);
  model_dir = g_build_filename (data ? data : "tests/data", "pipeline", "tiny-wan", NULL);

  g_test_add_func ("/dualparalsrc/properties", test_properties);
  for (i = 0; i < G_N_ELEMENTS (formats); i++) {
    gchar *path = g_strdup_printf ("/dualparalsrc/caps/%s", formats[i]);

    g_test_add_data_func (path, formats[i], test_caps_format);
    g_free (path);
  }
  g_test_add_func ("/dualparalsrc/timestamps-eos", test_timestamps_and_eos);
  g_test_add_func ("/dualparalsrc/native-size-through-videoscale",
                   test_native_size_through_videoscale);
  g_test_add_func ("/dualparalsrc/endless", test_endless);
  g_test_add_func ("/dualparalsrc/auto-engine-devices", test_auto_engine_devices);
  g_test_add_func ("/dualparalsrc/backpressure", test_backpressure);
  g_test_add_func ("/dualparalsrc/restart", test_restart);
  g_test_add_func ("/dualparalsrc/error/bad-num-frames", test_bad_num_frames);
  g_test_add_func ("/dualparalsrc/error/missing-model", test_missing_model);
  g_test_add_func ("/dualparalsrc/error/not-a-model", test_not_a_model);
  g_test_add_func ("/dualparalsrc/progress", test_progress_messages);
  g_test_add_func ("/dualparalsrc/live-latency", test_live_latency);
  g_test_add_func ("/dualparalsrc/mp4", test_mp4_round_trip);
  g_test_add_func ("/dualparalsrc/default-model", test_default_model);

  result = g_test_run ();
  g_free (reference.rgb);
  g_free (model_dir);
  gst_deinit (); /* the leaks tracer reports here */
  return result;
}
