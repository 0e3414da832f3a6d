/* dualparal-live-check: measures how a live video source plays through a
 * synchronised sink (issue 17): when the first frame is shown, how many
 * frames the sink drops as late (QoS), how many LATENCY messages the
 * pipeline gets, where the shown frames stall, and the timestamp jump of a
 * PLAYING -> PAUSED -> PLAYING cycle.
 *
 *   dualparal-live-check [--seconds 60] [--pause-at S --pause-for P]
 *                        [--pipeline "DESCRIPTION"]
 *
 * The pipeline must end in a fakesink named "sink"; the default is
 *   dualparalsrc num-frames=-1 is-live=true
 *     ! fakesink name=sink sync=true max-lateness=20000000 qos=true
 * The tool turns on the sink's handoff signal: a handoff is a frame shown
 * (fakesink renders after its clock wait), and its running time is read
 * from the pipeline clock there.  Dropped frames are counted from the
 * sink's QoS messages (the "dropped" of the last one).  The figures go to
 * stdout as "key: value" lines (tools/live-check.sh collects them). */
#include <gst/gst.h>

#define DEFAULT_PIPELINE \
  "dualparalsrc num-frames=-1 is-live=true " \
  "! fakesink name=sink sync=true max-lateness=20000000 qos=true"

typedef struct {
  GMutex lock;
  GstElement *pipeline;
  GMainLoop *loop;
  gint64 t_playing;          /* monotonic us at the first PLAYING request */
  gboolean paused;           /* between the pause and resume requests */
  /* Shown frames (streaming thread). */
  guint64 shown;
  GstClockTime first_pts, first_rt;
  gint64 first_wall;         /* us after t_playing */
  GstClockTime last_pts, last_dur, last_rt;
  guint stalls;              /* gaps of more than 1.5 frames between shown frames */
  gdouble stall_seconds;     /* their length beyond one frame */
  guint pts_discont;         /* PTS gaps of more than 1.5 frames */
  GstClockTime before_pause_end; /* PTS + duration of the last frame shown before the pause */
  gboolean resume_measured;
  gdouble resume_jump;       /* seconds */
  gboolean resume_discont;   /* the first frame after the pause was marked DISCONT */
  gboolean after_resume;     /* set at the resume request */
  /* Bus (main thread). */
  guint64 dropped, processed;
  guint qos_messages;
  guint latency_messages;
  guint latency_messages_sink; /* of those, posted by the sink */
  gint64 first_block_wall;   /* first dualparal-progress, us after t_playing; -1 none */
  GString *latency_log;
  GString *qos_log;          /* when the drops happened (the first 20) */
} Check;

static void
on_handoff (GstElement *sink, GstBuffer *buffer, GstPad *pad, gpointer data)
{
  Check *c = data;
  GstClock *clock = gst_element_get_clock (sink);
  GstClockTime now_rt = GST_CLOCK_TIME_NONE;
  GstClockTime pts = GST_BUFFER_PTS (buffer);
  GstClockTime dur = GST_BUFFER_DURATION (buffer);

  if (clock != NULL) {
    now_rt = gst_clock_get_time (clock) - gst_element_get_base_time (sink);
    gst_object_unref (clock);
  }
  g_mutex_lock (&c->lock);
  if (c->shown == 0) {
    c->first_pts = pts;
    c->first_rt = now_rt;
    c->first_wall = g_get_monotonic_time () - c->t_playing;
  } else {
    GstClockTime frame = GST_CLOCK_TIME_IS_VALID (c->last_dur) ? c->last_dur : 0;

    if (c->after_resume && !c->resume_measured && GST_CLOCK_TIME_IS_VALID (pts)
        && GST_CLOCK_TIME_IS_VALID (c->before_pause_end)) {
      c->resume_jump = ((gdouble) pts - (gdouble) c->before_pause_end) / GST_SECOND;
      c->resume_discont = GST_BUFFER_FLAG_IS_SET (buffer, GST_BUFFER_FLAG_DISCONT);
      c->resume_measured = TRUE;
    } else if (GST_CLOCK_TIME_IS_VALID (now_rt) && GST_CLOCK_TIME_IS_VALID (c->last_rt)
               && now_rt > c->last_rt + frame + frame / 2) {
      c->stalls++;
      c->stall_seconds += (gdouble) (now_rt - c->last_rt - frame) / GST_SECOND;
    }
    if (GST_CLOCK_TIME_IS_VALID (pts) && GST_CLOCK_TIME_IS_VALID (c->last_pts)
        && pts > c->last_pts + frame + frame / 2)
      c->pts_discont++;
  }
  c->shown++;
  c->last_pts = pts;
  c->last_dur = dur;
  c->last_rt = now_rt;
  if (!c->paused && !c->after_resume && GST_CLOCK_TIME_IS_VALID (pts)
      && GST_CLOCK_TIME_IS_VALID (dur))
    c->before_pause_end = pts + dur;
  g_mutex_unlock (&c->lock);
}

static gboolean
on_bus (GstBus *bus, GstMessage *msg, gpointer data)
{
  Check *c = data;
  gdouble t = (g_get_monotonic_time () - c->t_playing) / 1e6;

  switch (GST_MESSAGE_TYPE (msg)) {
    case GST_MESSAGE_ERROR: {
      GError *error = NULL;
      gchar *debug = NULL;

      gst_message_parse_error (msg, &error, &debug);
      g_printerr ("error from %s: %s (%s)\n", GST_OBJECT_NAME (GST_MESSAGE_SRC (msg)),
                  error->message, debug ? debug : "");
      g_error_free (error);
      g_free (debug);
      g_main_loop_quit (c->loop);
      break;
    }
    case GST_MESSAGE_EOS:
      g_main_loop_quit (c->loop);
      break;
    case GST_MESSAGE_QOS: {
      GstFormat format;
      guint64 processed, dropped;

      gst_message_parse_qos_stats (msg, &format, &processed, &dropped);
      c->qos_messages++;
      if (c->qos_messages <= 20)
        g_string_append_printf (c->qos_log, "%s%.2f s", c->qos_log->len ? ", " : "", t);
      if (format == GST_FORMAT_BUFFERS || format == GST_FORMAT_DEFAULT) {
        c->dropped = dropped;
        c->processed = processed;
      }
      break;
    }
    case GST_MESSAGE_LATENCY: {
      GstQuery *query = gst_query_new_latency ();
      GstClockTime min = GST_CLOCK_TIME_NONE;

      c->latency_messages++;
      if (g_strcmp0 (GST_OBJECT_NAME (GST_MESSAGE_SRC (msg)), "sink") == 0)
        c->latency_messages_sink++;
      /* What gst-launch does: recompute and distribute the latency. */
      gst_bin_recalculate_latency (GST_BIN (c->pipeline));
      if (gst_element_query (c->pipeline, query))
        gst_query_parse_latency (query, NULL, &min, NULL);
      gst_query_unref (query);
      g_string_append_printf (c->latency_log, "%s%.2f s %s: %.3f", c->latency_log->len ? ", " : "",
                              t, GST_OBJECT_NAME (GST_MESSAGE_SRC (msg)),
                              GST_CLOCK_TIME_IS_VALID (min) ? (gdouble) min / GST_SECOND : -1.0);
      break;
    }
    case GST_MESSAGE_ELEMENT:
      if (c->first_block_wall < 0 && gst_message_has_name (msg, "dualparal-progress"))
        c->first_block_wall = g_get_monotonic_time () - c->t_playing;
      break;
    default:
      break;
  }
  return G_SOURCE_CONTINUE;
}

static gboolean
do_pause (gpointer data)
{
  Check *c = data;

  g_mutex_lock (&c->lock);
  c->paused = TRUE;
  g_mutex_unlock (&c->lock);
  gst_element_set_state (c->pipeline, GST_STATE_PAUSED);
  return G_SOURCE_REMOVE;
}

static gboolean
do_resume (gpointer data)
{
  Check *c = data;

  g_mutex_lock (&c->lock);
  c->paused = FALSE;
  c->after_resume = TRUE;
  g_mutex_unlock (&c->lock);
  gst_element_set_state (c->pipeline, GST_STATE_PLAYING);
  return G_SOURCE_REMOVE;
}

static gboolean
do_quit (gpointer data)
{
  g_main_loop_quit (((Check *) data)->loop);
  return G_SOURCE_REMOVE;
}

int
main (int argc, char **argv)
{
  gdouble seconds = 60.0, pause_at = -1.0, pause_for = 2.0;
  gchar *description = NULL;
  GOptionEntry entries[] = {
    { "seconds", 's', 0, G_OPTION_ARG_DOUBLE, &seconds, "Run this long after PLAYING (60)", "S" },
    { "pause-at", 0, 0, G_OPTION_ARG_DOUBLE, &pause_at,
      "Go to PAUSED this many seconds after PLAYING (default: no pause)", "S" },
    { "pause-for", 0, 0, G_OPTION_ARG_DOUBLE, &pause_for, "Stay PAUSED this long (2)", "S" },
    { "pipeline", 'p', 0, G_OPTION_ARG_STRING, &description,
      "Pipeline ending in fakesink name=sink (default: dualparalsrc live, 20 ms lateness)",
      "DESC" },
    { NULL },
  };
  GOptionContext *context = g_option_context_new ("- live source check (issue 17)");
  GError *error = NULL;
  GstElement *sink;
  GstBus *bus;
  GstQuery *query;
  GstClockTime lat_min = GST_CLOCK_TIME_NONE;
  Check c = { 0 };
  guint64 total;

  g_option_context_add_main_entries (context, entries, NULL);
  g_option_context_add_group (context, gst_init_get_option_group ());
  if (!g_option_context_parse (context, &argc, &argv, &error)) {
    g_printerr ("dualparal-live-check: %s\n", error->message);
    return 2;
  }
  g_option_context_free (context);

  c.pipeline = gst_parse_launch (description ? description : DEFAULT_PIPELINE, &error);
  if (c.pipeline == NULL || error != NULL) {
    g_printerr ("dualparal-live-check: %s\n", error ? error->message : "no pipeline");
    return 2;
  }
  sink = gst_bin_get_by_name (GST_BIN (c.pipeline), "sink");
  if (sink == NULL) {
    g_printerr ("dualparal-live-check: the pipeline has no element named \"sink\"\n");
    return 2;
  }
  g_mutex_init (&c.lock);
  c.loop = g_main_loop_new (NULL, FALSE);
  c.first_pts = c.first_rt = c.last_pts = c.last_dur = c.last_rt = GST_CLOCK_TIME_NONE;
  c.before_pause_end = GST_CLOCK_TIME_NONE;
  c.first_wall = c.first_block_wall = -1;
  c.latency_log = g_string_new (NULL);
  c.qos_log = g_string_new (NULL);
  g_object_set (sink, "signal-handoffs", TRUE, NULL);
  g_signal_connect (sink, "handoff", G_CALLBACK (on_handoff), &c);
  bus = gst_element_get_bus (c.pipeline);
  gst_bus_add_watch (bus, on_bus, &c);

  c.t_playing = g_get_monotonic_time ();
  if (gst_element_set_state (c.pipeline, GST_STATE_PLAYING) == GST_STATE_CHANGE_FAILURE) {
    g_printerr ("dualparal-live-check: the pipeline does not start\n");
    /* The error message on the bus says why. */
  }
  if (pause_at >= 0.0) {
    g_timeout_add ((guint) (pause_at * 1000), do_pause, &c);
    g_timeout_add ((guint) ((pause_at + pause_for) * 1000), do_resume, &c);
  }
  g_timeout_add ((guint) (seconds * 1000), do_quit, &c);
  g_main_loop_run (c.loop);

  query = gst_query_new_latency ();
  if (gst_element_query (c.pipeline, query))
    gst_query_parse_latency (query, NULL, &lat_min, NULL);
  gst_query_unref (query);
  gst_element_set_state (c.pipeline, GST_STATE_NULL);

  total = c.shown + c.dropped;
  g_print ("seconds: %.1f\n", seconds);
  g_print ("frames-shown: %" G_GUINT64_FORMAT "\n", c.shown);
  g_print ("frames-dropped: %" G_GUINT64_FORMAT " (%.1f %%)\n", c.dropped,
           total ? 100.0 * c.dropped / total : 0.0);
  g_print ("qos-messages: %u%s%s%s\n", c.qos_messages, c.qos_log->len ? " (at " : "",
           c.qos_log->str, c.qos_log->len ? ")" : "");
  g_print ("latency-messages: %u, %u of them from the source (%s)\n", c.latency_messages,
           c.latency_messages - c.latency_messages_sink, c.latency_log->str);
  g_print ("latency-final: %.3f s\n",
           GST_CLOCK_TIME_IS_VALID (lat_min) ? (gdouble) lat_min / GST_SECOND : -1.0);
  if (c.first_block_wall >= 0)
    g_print ("first-block-ready: %.2f s\n", c.first_block_wall / 1e6);
  if (c.shown > 0) {
    g_print ("first-frame-shown: %.2f s\n", c.first_wall / 1e6);
    if (c.first_block_wall >= 0)
      g_print ("first-frame-held: %.2f s\n", (c.first_wall - c.first_block_wall) / 1e6);
    g_print ("first-frame-pts: %.3f s, shown at running time %.3f s\n",
             (gdouble) c.first_pts / GST_SECOND, (gdouble) c.first_rt / GST_SECOND);
  }
  g_print ("stalls: %u (%.2f s beyond one frame)\n", c.stalls, c.stall_seconds);
  g_print ("pts-discontinuities: %u\n", c.pts_discont);
  if (pause_at >= 0.0) {
    if (c.resume_measured)
      g_print ("resume-jump: %.3f s%s\n", c.resume_jump,
               c.resume_discont ? " (DISCONT: generation was behind, the timeline moved on)" : "");
    else
      g_print ("resume-jump: not measured (no frame shown before and after the pause)\n");
  }

  gst_bus_remove_watch (bus);
  gst_object_unref (bus);
  gst_object_unref (sink);
  gst_object_unref (c.pipeline);
  g_main_loop_unref (c.loop);
  g_string_free (c.latency_log, TRUE);
  g_string_free (c.qos_log, TRUE);
  g_mutex_clear (&c.lock);
  g_free (description);
  return 0;
}
