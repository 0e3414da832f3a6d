/* dualparalsrc element tests: GstHarness and small pipelines over the tiny
 * test model (tests/data/pipeline/tiny-wan, diffusers layout) on the CPU.
 *
 * Runs with GST_PLUGIN_PATH at the build directory of gst/ (tests/meson.build).
 * Every run uses few frames and TEST_STEPS sampler steps so the suite takes
 * seconds.  The generator is deterministic for a given seed, so the RGB
 * frames of two runs are compared byte for byte. */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

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

/* The element's warnings go to the GStreamer debug log (category
 * dualparalsrc, level WARNING; main () sets that threshold): a log function
 * collects them.  A g_warning instead would abort the test (GTest makes
 * warnings fatal). */
static GMutex warnings_lock;
static GString *warnings;

static void
collect_warnings (GstDebugCategory *category, GstDebugLevel level, const gchar *file,
                  const gchar *function, gint line, GObject *object, GstDebugMessage *message,
                  gpointer user_data)
{
  if (level != GST_LEVEL_WARNING
      || strcmp (gst_debug_category_get_name (category), "dualparalsrc") != 0)
    return;
  g_mutex_lock (&warnings_lock);
  g_string_append (warnings, gst_debug_message_get (message));
  g_string_append_c (warnings, '\n');
  g_mutex_unlock (&warnings_lock);
}

static void
warnings_clear (void)
{
  g_mutex_lock (&warnings_lock);
  g_string_truncate (warnings, 0);
  g_mutex_unlock (&warnings_lock);
}

static gboolean
warnings_contain (const gchar *text)
{
  gboolean found;

  g_mutex_lock (&warnings_lock);
  found = strstr (warnings->str, text) != NULL;
  if (!found)
    g_test_message ("warnings so far: '%s'", warnings->str);
  g_mutex_unlock (&warnings_lock);
  return found;
}

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
    "model", "num-frames", "steps", "flow-shift", "seed", "sampler", "engine", "block-frames",
    "context-frames", "devices", "text-len", "queue-frames", "is-live", "processes", "wire-bf16",
    "prompt-schedule", "threads", "guidance-scale-2",
  };
  /* Changeable while playing (DualParal engine). */
  static const gchar *steering[] = {
    "prompt", "negative-prompt", "guidance-scale", "transition-blocks",
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
  for (i = 0; i < G_N_ELEMENTS (steering); i++) {
    GParamSpec *pspec = g_object_class_find_property (klass, steering[i]);

    g_test_message ("property %s (changeable while playing)", steering[i]);
    g_assert_nonnull (pspec);
    g_assert_true ((pspec->flags & G_PARAM_READWRITE) == G_PARAM_READWRITE);
    g_assert_true ((pspec->flags & G_PARAM_STATIC_STRINGS) == G_PARAM_STATIC_STRINGS);
    g_assert_true (pspec->flags & GST_PARAM_MUTABLE_PLAYING);
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
  warnings_clear ();
  g_object_set (src, "num-frames", 6, NULL);
  g_assert_true (warnings_contain ("num-frames 6 is not valid"));
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

/* Pulls n buffers from h (RGB frames) and appends their bytes to video. */
static void
append_pulled_frames (GstHarness *h, gint n, GByteArray *video)
{
  for (gint i = 0; i < n; i++) {
    GstBuffer *buf = gst_harness_pull (h);
    GstMapInfo map;

    g_assert_nonnull (buf);
    g_assert_true (gst_buffer_map (buf, &map, GST_MAP_READ));
    g_byte_array_append (video, map.data, (guint) map.size);
    gst_buffer_unmap (buf, &map);
    gst_buffer_unref (buf);
  }
}

/* The frames (`frames` of them, RGB) of a two-stage DualParal run with the
 * stages as threads or as processes ("threads" / "spawn"), and a prompt
 * schedule when schedule is not NULL. */
static GByteArray *
pull_two_stage_video (const gchar *processes, gint frames, const gchar *schedule)
{
  GstHarness *h = gst_harness_new ("dualparalsrc");
  GByteArray *video = g_byte_array_new ();

  configure (h->element, frames);
  g_object_set (h->element, "devices", "cpu,cpu", "block-frames", 1, "context-frames", 1, NULL);
  if (schedule != NULL)
    g_object_set (h->element, "prompt-schedule", schedule, NULL);
  gst_util_set_object_arg (G_OBJECT (h->element), "processes", processes);
  gst_harness_set_sink_caps_str (h, "video/x-raw,format=RGB");
  gst_harness_play (h);
  append_pulled_frames (h, frames, video);
  gst_harness_teardown (h);
  return video;
}

/* The frames of a two-stage DualParal run (stages as threads) with the
 * decoding settings vae-thread, vae-tile and keep-text-encoder. */
static GByteArray *
pull_two_stage_video_vae (gint frames, gboolean vae_thread, gint vae_tile, gboolean keep_text_encoder)
{
  GstHarness *h = gst_harness_new ("dualparalsrc");
  GByteArray *video = g_byte_array_new ();

  configure (h->element, frames);
  g_object_set (h->element, "devices", "cpu,cpu", "block-frames", 1, "context-frames", 1, "vae-thread", vae_thread,
                "vae-tile", vae_tile, "keep-text-encoder", keep_text_encoder, NULL);
  gst_harness_set_sink_caps_str (h, "video/x-raw,format=RGB");
  gst_harness_play (h);
  append_pulled_frames (h, frames, video);
  gst_harness_teardown (h);
  return video;
}

/* vae-thread=true (decoding on a thread of its own) and
 * keep-text-encoder=false give the frames of the defaults; vae-tile=16 (a
 * 2 x 3 grid at 48 x 32) gives other frames (the seams). */
static void
test_vae_settings (void)
{
  if (!require_model ())
    return;
  GByteArray *plain = pull_two_stage_video_vae (9, FALSE, 0, TRUE);
  GByteArray *threaded = pull_two_stage_video_vae (9, TRUE, 0, FALSE);
  GByteArray *tiled = pull_two_stage_video_vae (9, TRUE, 16, TRUE);

  g_assert_cmpuint (plain->len, >, 0);
  g_assert_cmpmem (threaded->data, threaded->len, plain->data, plain->len);
  g_assert_cmpuint (tiled->len, ==, plain->len);
  g_assert_true (memcmp (tiled->data, plain->data, plain->len) != 0);
  g_byte_array_unref (plain);
  g_byte_array_unref (threaded);
  g_byte_array_unref (tiled);
}

/* Worker processes this process has left running. */
static gint
child_workers (void)
{
  gint n = 0;
  GDir *d = g_dir_open ("/proc", 0, NULL);

  for (const gchar *name; d && (name = g_dir_read_name (d));) {
    gchar *path = g_build_filename ("/proc", name, "stat", NULL);
    gchar *stat = NULL;
    gint ppid = -1;
    gchar state = '?';

    if (g_ascii_isdigit (name[0]) && g_file_get_contents (path, &stat, NULL, NULL) &&
        strstr (stat, "(dualparal-worke") && sscanf (strrchr (stat, ')') + 2, "%c %d", &state, &ppid) == 2 &&
        ppid == getpid () && state != 'Z')
      n++;
    g_free (stat);
    g_free (path);
  }
  if (d)
    g_dir_close (d);
  return n;
}

/* processes=spawn: the second stage in a dualparal-worker process of its
 * own gives the frames of two stages as threads, and the worker is gone
 * after the element stops (docs/distributed.md). */
static void
test_processes_spawn (void)
{
  if (!require_model ())
    return;
  GByteArray *threads = pull_two_stage_video ("threads", 9, NULL);
  GByteArray *spawned = pull_two_stage_video ("spawn", 9, NULL);

  g_assert_cmpuint (spawned->len, >, 0);
  g_assert_cmpmem (spawned->data, spawned->len, threads->data, threads->len);
  g_assert_cmpint (child_workers (), ==, 0);
  g_byte_array_unref (threads);
  g_byte_array_unref (spawned);
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

/* --- steering: prompt changes while playing ------------------------------ */

static GError *expect_error (GstElement *pipeline);

/* A harness around a configured DualParal dualparalsrc (blocks of one latent
 * frame, context 1), PLAYING, with its bus kept in *bus.  NULL (the test
 * failed) when it does not start. */
static GstHarness *
steer_harness_new (gint num_frames, guint queue_frames, const gchar *engine, GstBus **bus)
{
  GstHarness *h = gst_harness_new ("dualparalsrc");

  /* Each push waits for the test's pull: generation keeps pace with the
   * test, as behind a real sink.  Without it the harness queues every frame
   * and a fast generator runs hundreds of frames ahead of the pulls (a
   * change then shows only after all of them). */
  gst_harness_set_blocking_push_mode (h);
  configure (h->element, num_frames);
  g_object_set (h->element, "queue-frames", queue_frames, NULL);
  gst_util_set_object_arg (G_OBJECT (h->element), "engine", engine);
  if (g_strcmp0 (engine, "dualparal") == 0)
    g_object_set (h->element, "block-frames", 1, "context-frames", 1, NULL);
  *bus = gst_bus_new ();
  gst_element_set_bus (h->element, *bus);
  if (gst_element_set_state (h->element, GST_STATE_PLAYING) == GST_STATE_CHANGE_FAILURE) {
    g_test_fail_printf ("dualparalsrc did not start");
    gst_bus_set_flushing (*bus, TRUE);
    gst_object_unref (*bus);
    *bus = NULL;
    gst_harness_teardown (h);
    return NULL;
  }
  return h;
}

/* Pops the dualparal-prompt-applied messages on bus; the last one's prompt
 * and frame go to *prompt (g_free) / *frame when given.  Returns how many. */
static guint
pop_applied (GstBus *bus, gchar **prompt, gint64 *frame)
{
  GstMessage *msg;
  guint n = 0;

  while ((msg = gst_bus_pop_filtered (bus, GST_MESSAGE_ELEMENT)) != NULL) {
    const GstStructure *s = gst_message_get_structure (msg);

    if (gst_structure_has_name (s, "dualparal-prompt-applied")) {
      gint64 f = -1, first = -1;
      n++;
      g_assert_true (gst_structure_get_int64 (s, "frame", &f));
      g_assert_true (gst_structure_get_int64 (s, "first-frame", &first));
      g_assert_cmpint (f, >=, first);
      g_assert_nonnull (gst_structure_get_string (s, "prompt"));
      if (prompt != NULL) {
        g_free (*prompt);
        *prompt = g_strdup (gst_structure_get_string (s, "prompt"));
      }
      if (frame != NULL)
        *frame = f;
    }
    gst_message_unref (msg);
  }
  return n;
}

typedef struct {
  GstElement *src;
  gint stop;   /* atomic */
  guint sets;
} Changer;

/* Sets prompt (and now and then negative-prompt and guidance-scale) again
 * and again until told to stop. */
static gpointer
changer_main (gpointer data)
{
  static const gchar *prompts[] = { "a blue square bouncing", "a red ball bouncing",
                                    "a green ball moving down" };
  Changer *c = data;

  while (!g_atomic_int_get (&c->stop)) {
    g_object_set (c->src, "prompt", prompts[c->sets % 3], NULL);
    if (c->sets % 7 == 0)
      g_object_set (c->src, "negative-prompt", c->sets % 2 ? "blurry" : "", "guidance-scale",
                    c->sets % 2 ? 4.0 : 5.0, NULL);
    c->sets++;
    g_usleep (300);
  }
  return NULL;
}

static void
test_steer_playing (void)
{
  GstHarness *h;
  GstBus *bus = NULL;
  Changer c = { 0 };
  GThread *thread;
  guint i, applied = 0;
  guint64 offset = 0;
  gchar *prompt = NULL;
  gint64 frame = -1;

  if (!require_model ())
    return;
  h = steer_harness_new (-1, 2, "dualparal", &bus);
  if (h == NULL)
    return;
  c.src = h->element;
  thread = g_thread_new ("changer", changer_main, &c);
  for (i = 0; i < 30; i++) {
    GstBuffer *buffer = gst_harness_pull (h);

    g_assert_nonnull (buffer);
    g_assert_cmpuint (GST_BUFFER_OFFSET (buffer), ==, offset++);
    gst_buffer_unref (buffer);
    if (i % 10 == 9)
      g_usleep (50 * 1000); /* the queue fills: the worker waits, changes go on */
  }
  /* PAUSED and back, changes still coming. */
  g_assert_cmpint (gst_element_set_state (h->element, GST_STATE_PAUSED), !=, GST_STATE_CHANGE_FAILURE);
  g_usleep (50 * 1000);
  g_assert_cmpint (gst_element_set_state (h->element, GST_STATE_PLAYING), !=, GST_STATE_CHANGE_FAILURE);
  for (i = 0; i < 10; i++) {
    GstBuffer *buffer = gst_harness_pull (h);

    g_assert_nonnull (buffer);
    g_assert_cmpuint (GST_BUFFER_OFFSET (buffer), ==, offset++);
    gst_buffer_unref (buffer);
  }
  g_atomic_int_set (&c.stop, 1);
  g_thread_join (thread);
  applied += pop_applied (bus, NULL, NULL);
  g_test_message ("%u changes set, %u applied messages (the last change before each block wins)", c.sets,
                  applied);
  g_assert_cmpuint (applied, >=, 1);

  /* One last change: its message names a frame still to come, and that
   * frame arrives. */
  g_object_set (h->element, "prompt", "a yellow ball bouncing", NULL);
  for (i = 0; i < 200 && g_strcmp0 (prompt, "a yellow ball bouncing") != 0; i++) {
    GstBuffer *buffer = gst_harness_pull (h);

    g_assert_nonnull (buffer);
    g_assert_cmpuint (GST_BUFFER_OFFSET (buffer), ==, offset++);
    gst_buffer_unref (buffer);
    pop_applied (bus, &prompt, &frame);
  }
  g_assert_cmpstr (prompt, ==, "a yellow ball bouncing");
  g_assert_cmpint (frame, >=, (gint64) offset - 1 - 2 * 4); /* at most the queue's and a block's frames back */
  g_free (prompt);
  {
    gchar *now = NULL;

    g_object_get (h->element, "prompt", &now, NULL);
    g_assert_cmpstr (now, ==, "a yellow ball bouncing");
    g_free (now);
  }
  gst_bus_set_flushing (bus, TRUE);
  gst_object_unref (bus);
  gst_harness_teardown (h);
}

/* Changes until the very end of a finite video: every frame, then EOS. */
static void
test_steer_before_eos (void)
{
  const guint frames = 25;
  GstHarness *h;
  GstBus *bus = NULL;
  Changer c = { 0 };
  GThread *thread;
  GstEvent *event;
  guint i;

  if (!require_model ())
    return;
  h = steer_harness_new (frames, 2, "dualparal", &bus);
  if (h == NULL)
    return;
  c.src = h->element;
  thread = g_thread_new ("changer", changer_main, &c);
  for (i = 0; i < frames; i++) {
    GstBuffer *buffer = gst_harness_pull (h);

    g_assert_nonnull (buffer);
    g_assert_cmpuint (GST_BUFFER_OFFSET (buffer), ==, i);
    gst_buffer_unref (buffer);
    if (i == frames - 2)
      g_object_set (h->element, "prompt", "a white ball bouncing", NULL);
  }
  while ((event = gst_harness_pull_event (h)) != NULL && GST_EVENT_TYPE (event) != GST_EVENT_EOS)
    gst_event_unref (event);
  g_assert_nonnull (event);
  gst_event_unref (event);
  g_object_set (h->element, "prompt", "a blue square bouncing", NULL); /* after EOS: queued, harmless */
  g_atomic_int_set (&c.stop, 1);
  g_thread_join (thread);
  g_assert_cmpuint (pop_applied (bus, NULL, NULL), >=, 1);
  gst_bus_set_flushing (bus, TRUE);
  gst_object_unref (bus);
  gst_harness_teardown (h);
}

/* The classic engine refuses a change with a warning and goes on. */
static void
test_steer_classic (void)
{
  GstHarness *h;
  GstBus *bus = NULL;
  GstMessage *msg;
  GError *error = NULL;
  gchar *now = NULL;
  guint i;

  if (!require_model ())
    return;
  h = steer_harness_new (TEST_FRAMES, 4, "classic", &bus);
  if (h == NULL)
    return;
  g_object_set (h->element, "prompt", "a blue square bouncing", NULL);
  msg = gst_bus_timed_pop_filtered (bus, BUS_TIMEOUT, GST_MESSAGE_WARNING);
  g_assert_nonnull (msg);
  gst_message_parse_warning (msg, &error, NULL);
  g_test_message ("warning: %s", error->message);
  g_assert_nonnull (strstr (error->message, "classic engine"));
  g_assert_nonnull (strstr (error->message, "'prompt'"));
  g_clear_error (&error);
  gst_message_unref (msg);
  g_object_get (h->element, "prompt", &now, NULL);
  g_assert_cmpstr (now, ==, "a red ball bouncing");
  g_free (now);
  for (i = 0; i < TEST_FRAMES; i++) {
    GstBuffer *buffer = gst_harness_pull (h);

    g_assert_nonnull (buffer);
    g_assert_cmpuint (GST_BUFFER_OFFSET (buffer), ==, i);
    gst_buffer_unref (buffer);
  }
  g_assert_null (gst_bus_pop_filtered (bus, GST_MESSAGE_ERROR));
  gst_bus_set_flushing (bus, TRUE);
  gst_object_unref (bus);
  gst_harness_teardown (h);
}

/* prompt-schedule: a line applies at the first block starting at or after
 * its frame; a bad line stops the start with an error naming it. */
static void
test_steer_schedule (void)
{
  GstElement *pipeline, *src;
  GstMessage *msg;
  GList *elements = NULL, *l;
  GError *error = NULL;
  guint applied = 0;

  if (!require_model ())
    return;
  pipeline = source_pipeline (&src);
  configure (src, 25);
  g_object_set (src, "block-frames", 1, "context-frames", 1, "prompt-schedule",
                "0: a red ball bouncing\n10: a blue square bouncing\n", NULL);
  msg = run_to_end (pipeline, "dualparal-prompt-applied", &elements);
  assert_no_error (msg);
  for (l = elements; l != NULL; l = l->next) {
    const GstStructure *s = gst_message_get_structure (l->data);
    gint64 first = -1;
    gboolean scheduled = FALSE;

    g_assert_true (gst_structure_get_int64 (s, "first-frame", &first));
    g_assert_true (gst_structure_get_boolean (s, "scheduled", &scheduled));
    g_assert_true (scheduled);
    g_assert_cmpstr (gst_structure_get_string (s, "prompt"), ==, "a blue square bouncing");
    /* Blocks of one latent frame: block b >= 1 starts at 4 (1 + b) - 3. */
    g_assert_cmpint (first, ==, 13);
    applied++;
  }
  g_assert_cmpuint (applied, ==, 1);
  g_list_free_full (elements, (GDestroyNotify) gst_message_unref);
  gst_object_unref (pipeline);

  pipeline = source_pipeline (&src);
  configure (src, 25);
  warnings_clear ();
  g_object_set (src, "prompt-schedule", "0: a red ball\n3 a blue square\n", NULL);
  g_assert_true (warnings_contain ("line 2"));
  error = expect_error (pipeline);
  g_assert_nonnull (error);
  g_test_message ("error: %s", error->message);
  g_assert_nonnull (strstr (error->message, "line 2"));
  g_clear_error (&error);
  gst_object_unref (pipeline);
}

/* Prompt changes with the second stage in a worker process: a schedule
 * gives the frames of two thread stages with the same schedule, and prompts
 * set again and again from another thread while an endless stream plays
 * reach the worker (the message arrives, nothing hangs, the worker is gone
 * after stop). */
static void
test_steer_processes (void)
{
  const gchar *schedule = "0: a red ball bouncing\n5: a blue square bouncing\n";
  GByteArray *video[2];
  GstHarness *h;
  GstBus *bus;
  Changer c = { 0 };
  GThread *thread;
  guint applied = 0;

  if (!require_model ())
    return;
  for (gint k = 0; k < 2; k++)
    video[k] = pull_two_stage_video (k ? "spawn" : "threads", 17, schedule);
  g_assert_cmpuint (video[1]->len, >, 0);
  g_assert_cmpmem (video[1]->data, video[1]->len, video[0]->data, video[0]->len);
  g_byte_array_unref (video[0]);
  g_byte_array_unref (video[1]);

  h = gst_harness_new ("dualparalsrc");
  configure (h->element, -1);
  g_object_set (h->element, "devices", "cpu,cpu", "block-frames", 1, "context-frames", 1,
                "queue-frames", 2, NULL);
  gst_util_set_object_arg (G_OBJECT (h->element), "processes", "spawn");
  bus = gst_bus_new ();
  gst_element_set_bus (h->element, bus);
  gst_harness_play (h);
  c.src = h->element;
  thread = g_thread_new ("changer", changer_main, &c);
  for (gint i = 0; i < 40; i++) {
    GstBuffer *buf = gst_harness_pull (h);

    g_assert_nonnull (buf);
    g_assert_cmpuint (GST_BUFFER_OFFSET (buf), ==, (guint64) i);
    gst_buffer_unref (buf);
  }
  g_atomic_int_set (&c.stop, 1);
  g_thread_join (thread);
  applied = pop_applied (bus, NULL, NULL);
  g_test_message ("processes: %u changes set, %u applied", c.sets, applied);
  g_assert_cmpuint (applied, >=, 1);
  gst_bus_set_flushing (bus, TRUE);
  gst_object_unref (bus);
  gst_harness_teardown (h);
  g_assert_cmpint (child_workers (), ==, 0);
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
  warnings_clear ();
  g_object_set (src, "num-frames", 6, NULL);
  g_assert_true (warnings_contain ("num-frames 6"));

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

/* No model property and the default lookup finds nothing usable (here a
 * DUALPARAL_MODEL that is no model): NOT_FOUND on the bus naming where it
 * looked, and reading the property gives NULL rather than a made-up path. */
static void
test_default_model_missing (void)
{
  GstElement *src, *pipeline;
  GError *error;
  gchar *model = NULL;
  gchar *missing = g_build_filename (g_get_tmp_dir (), "dualparal-no-such-model", NULL);

  if (!require_element ())
    return;
  g_setenv ("DUALPARAL_MODEL", missing, TRUE);
  pipeline = source_pipeline (&src);
  configure (src, TEST_FRAMES);
  g_object_set (src, "model", NULL, NULL);
  g_object_get (src, "model", &model, NULL);
  g_assert_null (model);
  error = expect_error (pipeline);
  g_unsetenv ("DUALPARAL_MODEL");
  g_assert_error (error, GST_RESOURCE_ERROR, GST_RESOURCE_ERROR_NOT_FOUND);
  g_assert_nonnull (strstr (error->message, "DUALPARAL_MODEL"));
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

/* Live timing (docs/usage.md, "Live timestamps and latency"), through
 * dualparalsrc is-live=true ! fakesink sync=true max-lateness=... qos=true
 * on the system clock:
 * - every frame goes out (src pad) no later than its PTS plus the latency
 *   the element reports (so a synchronised sink is never late), and the
 *   sink shows the first one on arrival instead of holding it for the
 *   latency once more;
 * - the sink drops nothing (no QoS message);
 * - each LATENCY message from the element carries a latency more than 25 %
 *   away from the one before (no message per block);
 * - PAUSED -> PLAYING continues the timeline: the first frame shown after
 *   resuming follows the last one shown before, no frame lost, unless it is
 *   marked DISCONT (generation fell behind);
 * - settings cannot change while it runs (a warning in the debug log). */
#define LIVE_SHOW_FRAMES 40
#define LIVE_PAUSE_AFTER 12
#define LIVE_MAX_LATENESS (50 * GST_MSECOND)
/* Scheduling slack allowed between the element's clock reading and the
 * probe or the sink seeing the frame (a busy machine); what the checks tell
 * apart is far larger: the old element pushed frames late by the block time
 * and held the first one for the warm-up. */
#define LIVE_SLACK (40 * GST_MSECOND)

typedef struct {
  GMutex lock;
  GCond cond;
  GstElement *src;
  guint pushed, late_pushes, shown, discont;
  GstClockTime worst_push_delay; /* push running time - PTS - latency */
  GstClockTime first_pts, first_push_rt, first_latency, first_show_rt, first_show_latency;
  gboolean paused, resumed;
  GstClockTime before_pause_end; /* PTS + duration of the last frame shown before */
  GstClockTime after_resume_pts;
  gboolean after_resume_discont;
  guint qos;
  gboolean recalculate;          /* a LATENCY message awaits the test thread */
  GArray *latencies;             /* GstClockTime of each LATENCY message of the element */
} LiveRun;

static GstClockTime
element_running_time (GstElement *element)
{
  GstClock *clock = gst_element_get_clock (element);
  GstClockTime now;

  g_assert_nonnull (clock);
  now = gst_clock_get_time (clock) - gst_element_get_base_time (element);
  gst_object_unref (clock);
  return now;
}

static GstClockTime
reported_latency (GstElement *src)
{
  GstQuery *query = gst_query_new_latency ();
  GstClockTime min = GST_CLOCK_TIME_NONE;
  gboolean live = FALSE;

  g_assert_true (gst_element_query (src, query));
  gst_query_parse_latency (query, &live, &min, NULL);
  gst_query_unref (query);
  g_assert_true (live);
  return min;
}

static GstPadProbeReturn
live_pushed (GstPad *pad, GstPadProbeInfo *info, gpointer data)
{
  LiveRun *run = data;
  GstBuffer *buffer = GST_PAD_PROBE_INFO_BUFFER (info);
  GstClockTime now = element_running_time (run->src);
  GstClockTime latency = reported_latency (run->src);
  GstClockTime pts = GST_BUFFER_PTS (buffer);

  g_assert_true (GST_CLOCK_TIME_IS_VALID (pts));
  g_mutex_lock (&run->lock);
  if (run->pushed == 0) {
    run->first_pts = pts;
    run->first_push_rt = now;
    run->first_latency = latency;
  }
  if (now > pts + latency) {
    run->worst_push_delay = MAX (run->worst_push_delay, now - pts - latency);
    if (now > pts + latency + LIVE_SLACK)
      run->late_pushes++;
  }
  run->pushed++;
  g_mutex_unlock (&run->lock);
  return GST_PAD_PROBE_OK;
}

static void
live_shown (GstElement *sink, GstBuffer *buffer, GstPad *pad, gpointer data)
{
  LiveRun *run = data;
  GstClockTime now = element_running_time (sink);

  GstClockTime latency = reported_latency (run->src);

  g_mutex_lock (&run->lock);
  if (run->shown == 0) {
    run->first_show_rt = now;
    run->first_show_latency = latency;
  }
  if (run->resumed && !GST_CLOCK_TIME_IS_VALID (run->after_resume_pts)) {
    run->after_resume_pts = GST_BUFFER_PTS (buffer);
    run->after_resume_discont = GST_BUFFER_FLAG_IS_SET (buffer, GST_BUFFER_FLAG_DISCONT);
  } else if (!run->paused && !run->resumed) {
    run->before_pause_end = GST_BUFFER_PTS (buffer) + GST_BUFFER_DURATION (buffer);
  }
  if (GST_BUFFER_FLAG_IS_SET (buffer, GST_BUFFER_FLAG_DISCONT))
    run->discont++;
  run->shown++;
  g_cond_broadcast (&run->cond);
  g_mutex_unlock (&run->lock);
}

/* Bus sync handler: counts QoS messages and reads the element's latency at
 * each of its LATENCY messages; fails on an error. */
static GstBusSyncReply
live_bus (GstBus *bus, GstMessage *msg, gpointer data)
{
  LiveRun *run = data;

  if (GST_MESSAGE_TYPE (msg) == GST_MESSAGE_ERROR) {
    assert_no_error (msg);
  } else if (GST_MESSAGE_TYPE (msg) == GST_MESSAGE_QOS) {
    g_mutex_lock (&run->lock);
    run->qos++;
    g_mutex_unlock (&run->lock);
  } else if (GST_MESSAGE_TYPE (msg) == GST_MESSAGE_LATENCY
             && GST_MESSAGE_SRC (msg) == GST_OBJECT (run->src)) {
    GstClockTime latency = reported_latency (run->src);

    g_mutex_lock (&run->lock);
    g_array_append_val (run->latencies, latency);
    run->recalculate = TRUE; /* not here: the posting thread may be needed by a state change */
    g_cond_broadcast (&run->cond);
    g_mutex_unlock (&run->lock);
  }
  gst_message_unref (msg);
  return GST_BUS_DROP;
}

/* Waits until `frames` frames were shown; meanwhile redistributes the
 * latency after each LATENCY message, as an application (gst-launch) does. */
static void
live_wait_shown (LiveRun *run, GstElement *pipeline, guint frames)
{
  gint64 deadline = g_get_monotonic_time () + 120 * G_TIME_SPAN_SECOND;

  g_mutex_lock (&run->lock);
  while (run->shown < frames) {
    if (run->recalculate) {
      run->recalculate = FALSE;
      g_mutex_unlock (&run->lock);
      gst_bin_recalculate_latency (GST_BIN (pipeline));
      g_mutex_lock (&run->lock);
      continue;
    }
    if (g_get_monotonic_time () >= deadline) /* a hang */
      g_error ("no %u frames shown in 120 s: %u pushed, %u shown, %u QoS, %s", frames, run->pushed, run->shown,
               run->qos, run->resumed ? "after the resume" : run->paused ? "pausing" : "before the pause");
    g_cond_wait_until (&run->cond, &run->lock, g_get_monotonic_time () + 100 * G_TIME_SPAN_MILLISECOND);
  }
  g_mutex_unlock (&run->lock);
}

static void
test_live_timing (void)
{
  GstElement *src, *pipeline, *sink;
  GstBus *bus;
  GstPad *pad;
  LiveRun run = { 0 };
  GstClockTime frame = frame_pts (1);
  gint steps;
  guint i;

  if (!require_model ())
    return;
  g_mutex_init (&run.lock);
  g_cond_init (&run.cond);
  run.latencies = g_array_new (FALSE, FALSE, sizeof (GstClockTime));
  run.before_pause_end = run.after_resume_pts = GST_CLOCK_TIME_NONE;

  pipeline = source_pipeline (&src);
  run.src = src;
  configure (src, -1);
  g_object_set (src, "is-live", TRUE, NULL);
  sink = gst_bin_get_by_name (GST_BIN (pipeline), "sink");
  g_object_set (sink, "sync", TRUE, "max-lateness", (gint64) LIVE_MAX_LATENESS, "qos", TRUE,
                "signal-handoffs", TRUE, NULL);
  g_signal_connect (sink, "handoff", G_CALLBACK (live_shown), &run);
  pad = gst_element_get_static_pad (src, "src");
  gst_pad_add_probe (pad, GST_PAD_PROBE_TYPE_BUFFER, live_pushed, &run, NULL);
  gst_object_unref (pad);
  bus = gst_element_get_bus (pipeline);
  gst_bus_set_sync_handler (bus, live_bus, &run, NULL);

  if (!start_pipeline (pipeline))
    goto out;
  live_wait_shown (&run, pipeline, LIVE_PAUSE_AFTER);

  g_mutex_lock (&run.lock);
  run.paused = TRUE;
  g_mutex_unlock (&run.lock);
  g_assert_cmpint (gst_element_set_state (pipeline, GST_STATE_PAUSED), !=,
                   GST_STATE_CHANGE_FAILURE);
  g_usleep (300 * G_TIME_SPAN_MILLISECOND);
  g_mutex_lock (&run.lock);
  run.resumed = TRUE;
  g_mutex_unlock (&run.lock);
  g_assert_cmpint (gst_element_set_state (pipeline, GST_STATE_PLAYING), !=,
                   GST_STATE_CHANGE_FAILURE);
  live_wait_shown (&run, pipeline, LIVE_SHOW_FRAMES);

  warnings_clear ();
  g_object_set (src, "steps", TEST_STEPS + 5, NULL);
  g_assert_true (warnings_contain ("'steps' cannot change"));
  g_object_get (src, "steps", &steps, NULL);
  g_assert_cmpint (steps, ==, TEST_STEPS);

  gst_element_set_state (pipeline, GST_STATE_NULL);

  g_test_message ("first frame: PTS %" GST_TIME_FORMAT ", pushed at %" GST_TIME_FORMAT
                  " with latency %" GST_TIME_FORMAT ", shown at %" GST_TIME_FORMAT
                  " with latency %" GST_TIME_FORMAT,
                  GST_TIME_ARGS (run.first_pts), GST_TIME_ARGS (run.first_push_rt),
                  GST_TIME_ARGS (run.first_latency), GST_TIME_ARGS (run.first_show_rt),
                  GST_TIME_ARGS (run.first_show_latency));
  g_test_message ("%u pushed, %u shown, %u DISCONT, %u QoS, %u pushed late (worst %"
                  GST_TIME_FORMAT " past PTS + latency), %u LATENCY messages",
                  run.pushed, run.shown, run.discont, run.qos, run.late_pushes,
                  GST_TIME_ARGS (run.worst_push_delay), run.latencies->len);
  g_test_message ("resume: last frame before ended at %" GST_TIME_FORMAT
                  ", first after at %" GST_TIME_FORMAT "%s",
                  GST_TIME_ARGS (run.before_pause_end), GST_TIME_ARGS (run.after_resume_pts),
                  run.after_resume_discont ? " (DISCONT)" : "");

  /* First frame: shown on arrival (the sink adds its processing deadline,
   * 20 ms), not held for the latency once more; only a latency that grew
   * meanwhile (the first block period measured) may hold it by the growth. */
  g_assert_cmpuint (run.first_pts, <=, run.first_push_rt); /* not held back in the source */
  g_assert_cmpuint (run.first_show_rt, <=,
                    run.first_push_rt + MAX (run.first_show_latency, run.first_latency)
                        - run.first_latency + 2 * LIVE_SLACK + 50 * GST_MSECOND);
  /* Frames later than PTS + latency, and frames the sink dropped: fewer
   * than 5 % (issue 17's bound).  On a quiet machine there are none; a
   * loaded one (CI beside other jobs) can delay one push by a scheduling
   * hiccup, which is not what this checks: a latency that does not cover
   * the block period makes most frames late. */
  g_assert_cmpuint (20 * run.late_pushes, <, run.pushed);
  g_assert_cmpuint (20 * run.qos, <, run.pushed);
  /* Latency messages: the first, then only changes of more than 25 %. */
  g_assert_cmpuint (run.latencies->len, >=, 1);
  for (i = 1; i < run.latencies->len; i++) {
    gdouble before = g_array_index (run.latencies, GstClockTime, i - 1);
    gdouble after = g_array_index (run.latencies, GstClockTime, i);

    g_assert_cmpfloat (ABS (after - before), >, 0.25 * before);
  }
  /* Resume: the timeline goes on where it stopped, no frame lost. */
  g_assert_true (GST_CLOCK_TIME_IS_VALID (run.before_pause_end));
  g_assert_true (GST_CLOCK_TIME_IS_VALID (run.after_resume_pts));
  g_assert_cmpuint (run.after_resume_pts, >=, run.before_pause_end);
  if (!run.after_resume_discont)
    g_assert_cmpuint (run.after_resume_pts, <=, run.before_pause_end + frame / 2);

out:
  gst_element_set_state (pipeline, GST_STATE_NULL);
  gst_bus_set_sync_handler (bus, NULL, NULL, NULL);
  gst_object_unref (bus);
  gst_object_unref (sink);
  gst_object_unref (pipeline);
  g_array_unref (run.latencies);
  g_mutex_clear (&run.lock);
  g_cond_clear (&run.cond);
}

/* The stream carries the prompt as title and description, the generator
 * and its settings as encoder and comment, in a tag event that reaches
 * downstream before the first frame. */
typedef struct {
  GstTagList *tags;
  gboolean tags_before_buffer;
  guint buffers;
} TagWatch;

static GstPadProbeReturn
watch_tags (GstPad *pad, GstPadProbeInfo *info, gpointer data)
{
  TagWatch *watch = data;

  if (info->type & GST_PAD_PROBE_TYPE_BUFFER) {
    watch->buffers++;
  } else if (GST_EVENT_TYPE (GST_PAD_PROBE_INFO_EVENT (info)) == GST_EVENT_TAG) {
    GstTagList *tags;

    gst_event_parse_tag (GST_PAD_PROBE_INFO_EVENT (info), &tags);
    if (watch->tags == NULL) {
      watch->tags = gst_tag_list_ref (tags);
      watch->tags_before_buffer = watch->buffers == 0;
    }
  }
  return GST_PAD_PROBE_OK;
}

static void
test_tags (void)
{
  GstElement *src, *pipeline, *sink;
  GstPad *pad;
  TagWatch watch = { NULL, FALSE, 0 };
  gchar *title = NULL, *description = NULL, *encoder = NULL, *comment = NULL;

  if (!require_model ())
    return;
  pipeline = source_pipeline (&src);
  configure (src, TEST_FRAMES);
  g_object_set (src, "negative-prompt", "blurry", NULL);
  sink = gst_bin_get_by_name (GST_BIN (pipeline), "sink");
  pad = gst_element_get_static_pad (sink, "sink");
  gst_pad_add_probe (pad, GST_PAD_PROBE_TYPE_BUFFER | GST_PAD_PROBE_TYPE_EVENT_DOWNSTREAM,
                     watch_tags, &watch, NULL);
  gst_object_unref (pad);
  gst_object_unref (sink);
  assert_no_error (run_to_end (pipeline, NULL, NULL));
  gst_object_unref (pipeline);

  g_assert_nonnull (watch.tags);
  {
    gchar *text = gst_tag_list_to_string (watch.tags);

    g_test_message ("tags %s", text);
    g_free (text);
  }
  g_assert_true (watch.tags_before_buffer);
  g_assert_cmpuint (watch.buffers, ==, TEST_FRAMES);
  g_assert_true (gst_tag_list_get_string (watch.tags, GST_TAG_TITLE, &title));
  g_assert_cmpstr (title, ==, "a red ball bouncing");
  g_assert_true (gst_tag_list_get_string (watch.tags, GST_TAG_DESCRIPTION, &description));
  g_assert_nonnull (strstr (description, "a red ball bouncing"));
  g_assert_nonnull (strstr (description, "blurry"));
  g_assert_true (gst_tag_list_get_string (watch.tags, GST_TAG_ENCODER, &encoder));
  g_assert_true (g_str_has_prefix (encoder, "dualparal"));
  g_assert_true (gst_tag_list_get_string (watch.tags, GST_TAG_COMMENT, &comment));
  g_assert_nonnull (strstr (comment, "tiny-wan"));
  g_assert_nonnull (strstr (comment, "seed 7"));
  g_free (title);
  g_free (description);
  g_free (encoder);
  g_free (comment);
  gst_tag_list_unref (watch.tags);
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

/* A Wan2.2 TI2V-5B model (tests/data/ti2v/tiny-ti2v, native 64 x 64) makes
 * sizes in steps of 32, not 16: once loaded, the element offers those, so a
 * downstream range of widths 80-100 negotiates 96 (the template's step of
 * 16 would fixate 80, which the model refuses). */
static void
test_ti2v_size_step (void)
{
  GError *error = NULL;
  GstElement *pipeline, *src;
  GstPad *pad;
  gchar *model;
  gint size[2] = { 0, 0 };

  if (!require_element ())
    return;
  model = g_build_filename (g_getenv ("DP_TEST_DATA") ? g_getenv ("DP_TEST_DATA") : "tests/data", "ti2v",
                            "tiny-ti2v", NULL);
  pipeline = gst_parse_launch ("dualparalsrc name=src ! video/x-raw,format=RGB,width=[80,100],"
                               "height=[40,64] ! fakesink", &error);
  g_assert_no_error (error);
  src = gst_bin_get_by_name (GST_BIN (pipeline), "src");
  g_object_set (src, "model", model, "prompt", "a red ball bouncing", "num-frames", 5, "steps", 1,
                "devices", "cpu", NULL);
  pad = gst_element_get_static_pad (src, "src");
  gst_pad_add_probe (pad, GST_PAD_PROBE_TYPE_EVENT_DOWNSTREAM, note_caps_size, size, NULL);

  /* Once the model is loaded (PAUSED), the pad's caps carry its steps. */
  g_assert_cmpint (gst_element_set_state (pipeline, GST_STATE_PAUSED), !=, GST_STATE_CHANGE_FAILURE);
  g_assert_cmpint (gst_element_get_state (pipeline, NULL, NULL, 60 * GST_SECOND), ==, GST_STATE_CHANGE_SUCCESS);
  {
    GstCaps *caps = gst_pad_query_caps (pad, NULL);
    const GValue *w = gst_structure_get_value (gst_caps_get_structure (caps, 0), "width");

    g_assert_true (GST_VALUE_HOLDS_INT_RANGE (w));
    g_assert_cmpint (gst_value_get_int_range_step (w), ==, 32);
    gst_caps_unref (caps);
  }
  gst_element_set_state (pipeline, GST_STATE_NULL);
  gst_object_unref (pad);
  gst_object_unref (src);

  assert_no_error (run_to_end (pipeline, NULL, NULL));
  gst_object_unref (pipeline);
  g_free (model);
  g_assert_cmpint (size[0], ==, 96);
  g_assert_cmpint (size[1], ==, 64);
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

/* Non-ASCII prompts (issue 17): é, 日本語 and an emoji in a gst-launch
 * description and as a property reach the generator as the same UTF-8 text
 * (the same first frame), and not as the ASCII prompt would (another frame). */
static void
test_non_ascii_prompt (void)
{
  static const gchar *prompts[] = {
    "un caf\xc3\xa9 rouge", "\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e\xe3\x81\xae\xe5\x86\x86",
    "a red fox \xf0\x9f\xa6\x8a in the snow", "a red ball bouncing",
  };
  const guint n = G_N_ELEMENTS (prompts);
  GBytes *frames[2 * G_N_ELEMENTS (prompts)];
  guint i;

  if (!require_model ())
    return;
  /* frames[2i]: prompt i in a launch description; frames[2i+1]: as a property. */
  for (i = 0; i < 2 * n; i++) {
    const gchar *prompt = prompts[i / 2];
    GstHarness *h;
    GstElement *src;
    GstBuffer *buffer;
    GstMapInfo map;
    gchar *read_back = NULL;

    if (i % 2 == 0) {
      gchar *line = g_strdup_printf ("dualparalsrc name=src model=\"%s\" prompt=\"%s\" num-frames=%d "
                                     "steps=%d seed=%d devices=cpu", model_dir, prompt,
                                     TEST_FRAMES, TEST_STEPS, TEST_SEED);
      h = gst_harness_new_parse (line);
      g_free (line);
      src = gst_bin_get_by_name (GST_BIN (h->element), "src");
    } else {
      h = gst_harness_new ("dualparalsrc");
      src = gst_object_ref (h->element);
      configure (src, TEST_FRAMES);
      g_object_set (src, "prompt", prompt, NULL);
    }
    g_object_get (src, "prompt", &read_back, NULL);
    g_assert_cmpstr (read_back, ==, prompt);
    g_free (read_back);
    gst_object_unref (src);
    gst_harness_set_sink_caps_str (h, "video/x-raw, format=RGB");
    gst_harness_play (h);
    buffer = gst_harness_pull (h);
    g_assert_nonnull (buffer);
    g_assert_true (gst_buffer_map (buffer, &map, GST_MAP_READ));
    frames[i] = g_bytes_new (map.data, map.size);
    gst_buffer_unmap (buffer, &map);
    gst_buffer_unref (buffer);
    gst_harness_teardown (h);
  }
  for (i = 0; i < n; i++) {
    g_assert_true (g_bytes_equal (frames[2 * i], frames[2 * i + 1]));
    if (i + 1 < n)
      g_assert_false (g_bytes_equal (frames[2 * i], frames[2 * (n - 1)]));
  }
  for (i = 0; i < 2 * n; i++)
    g_bytes_unref (frames[i]);
}

/* Wan2.2 T2V-A14B's two experts (tests/data/wan22/tiny-wan22): the element
 * runs it, guidance-scale-2 reaches the low-noise expert (another value,
 * other frames; guidance-scale's value, the frames of not setting it), and a
 * one-transformer model refuses guidance-scale-2 with an error naming it. */
static GBytes *
wan22_frames (const gchar *model, gdouble guidance_2)
{
  GstHarness *h = gst_harness_new ("dualparalsrc");
  GByteArray *all = g_byte_array_new ();

  configure (h->element, TEST_FRAMES);
  g_object_set (h->element, "model", model, "guidance-scale", 5.0, "guidance-scale-2", guidance_2, NULL);
  gst_harness_set_sink_caps_str (h, "video/x-raw, format=RGB");
  gst_harness_play (h);
  append_pulled_frames (h, TEST_FRAMES, all);
  gst_harness_teardown (h);
  return g_byte_array_free_to_bytes (all);
}

static void
test_wan22 (void)
{
  const gchar *data = g_getenv ("DP_TEST_DATA");
  gchar *model = g_build_filename (data ? data : "tests/data", "wan22", "tiny-wan22", NULL);
  GBytes *unset, *same, *other;
  GstElement *src, *pipeline;
  GError *error;

  if (!require_model ())
    return;
  unset = wan22_frames (model, 0.0);
  same = wan22_frames (model, 5.0);
  other = wan22_frames (model, 2.0);
  g_assert_true (g_bytes_equal (unset, same));
  g_assert_false (g_bytes_equal (unset, other));
  g_bytes_unref (unset);
  g_bytes_unref (same);
  g_bytes_unref (other);

  pipeline = source_pipeline (&src);
  configure (src, TEST_FRAMES);
  g_object_set (src, "guidance-scale-2", 3.0, NULL); /* model_dir: the one-transformer tiny-wan */
  error = expect_error (pipeline);
  g_assert_nonnull (strstr (error->message, "guidance_scale_2"));
  g_error_free (error);
  gst_object_unref (pipeline);
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
  warnings = g_string_new (NULL);
  if (g_getenv ("GST_DEBUG") == NULL) /* else the caller's levels, e.g. dualparalsrc:6 */
    gst_debug_set_threshold_for_name ("dualparalsrc", GST_LEVEL_WARNING);
  gst_debug_add_log_function (collect_warnings, NULL, NULL);
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
  g_test_add_func ("/dualparalsrc/processes-spawn", test_processes_spawn);
  g_test_add_func ("/dualparalsrc/vae-settings", test_vae_settings);
  g_test_add_func ("/dualparalsrc/backpressure", test_backpressure);
  g_test_add_func ("/dualparalsrc/restart", test_restart);
  g_test_add_func ("/dualparalsrc/steer/playing", test_steer_playing);
  g_test_add_func ("/dualparalsrc/steer/before-eos", test_steer_before_eos);
  g_test_add_func ("/dualparalsrc/steer/classic", test_steer_classic);
  g_test_add_func ("/dualparalsrc/steer/schedule", test_steer_schedule);
  g_test_add_func ("/dualparalsrc/steer/processes", test_steer_processes);
  g_test_add_func ("/dualparalsrc/error/bad-num-frames", test_bad_num_frames);
  g_test_add_func ("/dualparalsrc/error/missing-model", test_missing_model);
  g_test_add_func ("/dualparalsrc/error/not-a-model", test_not_a_model);
  g_test_add_func ("/dualparalsrc/progress", test_progress_messages);
  g_test_add_func ("/dualparalsrc/live-timing", test_live_timing);
  g_test_add_func ("/dualparalsrc/ti2v-size-step", test_ti2v_size_step);
  g_test_add_func ("/dualparalsrc/tags", test_tags);
  g_test_add_func ("/dualparalsrc/mp4", test_mp4_round_trip);
  g_test_add_func ("/dualparalsrc/default-model", test_default_model);
  g_test_add_func ("/dualparalsrc/default-model-missing", test_default_model_missing);
  g_test_add_func ("/dualparalsrc/non-ascii-prompt", test_non_ascii_prompt);
  g_test_add_func ("/dualparalsrc/wan22", test_wan22);

  result = g_test_run ();
  g_free (reference.rgb);
  g_free (model_dir);
  gst_deinit (); /* the leaks tracer reports here */
  g_string_free (warnings, TRUE);
  return result;
}
