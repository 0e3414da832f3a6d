/* dualparal: a worker process (worker.h; docs/distributed.md).
 *
 * Threads: the main thread runs the protocol from an event queue; a reader
 * thread turns rank 0's messages into events (its silence for longer than
 * the heartbeat timeout, or a closed connection, is an event too); a
 * heartbeat thread sends PING every second; a run thread runs the stage for
 * one video and posts its end as an event.  So a CANCEL or the loss of rank
 * 0 is seen while the stage computes. */
#include "dualparal/worker.h"

#include "dist/dist.h"
#include "dualparal/backend.h"
#include "dualparal/transport.h"

#include <string.h>
#include <unistd.h>

typedef enum { EV_MESSAGE, EV_LOST, EV_RUN_DONE } event_kind;

typedef struct {
  event_kind kind;
  dp_ctl_msg msg; /* EV_MESSAGE */
  GError *error;  /* EV_LOST, EV_RUN_DONE (NULL: the run succeeded) */
} event;

typedef struct {
  dp_launch_env env;
  char *secret;
  char *device;
  const char *model_dir; /* NULL: rank 0's path */
  dp_ctl_conn *ctl;
  GAsyncQueue *events;
  double heartbeat;
  gint stop; /* atomic: heartbeat thread ends */
  GThread *reader, *pinger, *runner;

  /* after SETUP */
  dp_backend *be;
  dp_transport *transport;
  dp_engine *engine;
  dp_schedule *schedule;
  GSocket *data_listener;
  int n_stages, stage;
  /* per run */
  JsonParser *pending_run; /* RUN received, its CONTEXT not yet */
  dp_tensor context;
  gint run_cancel; /* atomic */
} worker;

static void
event_free (gpointer data)
{
  event *ev = data;
  dp_ctl_msg_clear (&ev->msg);
  g_clear_error (&ev->error);
  g_free (ev);
}

static gpointer
reader_thread (gpointer data)
{
  worker *w = data;
  for (;;) {
    event *ev = g_new0 (event, 1);
    if (dp_ctl_recv (w->ctl, w->heartbeat, &ev->msg, &ev->error)) {
      if (ev->msg.type == DP_CTL_PING) {
        event_free (ev);
        continue;
      }
      ev->kind = EV_MESSAGE;
      g_async_queue_push (w->events, ev);
      continue;
    }
    ev->kind = EV_LOST;
    g_async_queue_push (w->events, ev);
    return NULL;
  }
}

static gpointer
pinger_thread (gpointer data)
{
  worker *w = data;
  while (!g_atomic_int_get (&w->stop)) {
    dp_ctl_send (w->ctl, DP_CTL_PING, NULL, 0, NULL);
    for (int i = 0; i < 10 && !g_atomic_int_get (&w->stop); i++)
      g_usleep ((gulong) (DP_DIST_PING_INTERVAL * 1e5));
  }
  return NULL;
}

static gpointer
run_thread (gpointer data)
{
  worker *w = data;
  event *ev = g_new0 (event, 1);
  ev->kind = EV_RUN_DONE;
  dp_engine_run_stage (w->engine, &w->context, &w->run_cancel, &ev->error);
  g_async_queue_push (w->events, ev);
  return NULL;
}

/* ------------------------------------------------------------ handshake */

static dp_ctl_conn *
connect_rank0 (worker *w, GError **error)
{
  const double timeout = dp_dist_timeout ("DUALPARAL_CONNECT_TIMEOUT", DP_DIST_CONNECT_TIMEOUT);
  const gint64 deadline = g_get_monotonic_time () + (gint64) (timeout * 1e6);
  GSocketClient *client = g_socket_client_new ();
  g_socket_client_set_timeout (client, 10);
  GError *io = NULL;
  GSocketConnection *conn = NULL;
  /* Rank 0 may start after its workers (a launcher starts them all at
   * once): retry until the deadline. */
  while (!(conn = g_socket_client_connect_to_host (client, w->env.master_addr, (guint16) w->env.master_port, NULL,
                                                   &io))) {
    if (g_get_monotonic_time () > deadline) {
      g_set_error (error, DP_ERROR, DP_ERROR_IO, "rank %d: no rank 0 at %s:%d within %.0f s: %s", w->env.rank,
                   w->env.master_addr, w->env.master_port, timeout, io->message);
      g_error_free (io);
      g_object_unref (client);
      return NULL;
    }
    g_clear_error (&io);
    g_usleep (200000);
  }
  g_object_unref (client);
  dp_ctl_conn *c = dp_ctl_conn_new (conn);
  g_object_unref (conn);
  return c;
}

/* Reads the next message of the handshake; a DP_CTL_ERROR becomes the error. */
static gboolean
expect (worker *w, int type, double timeout, dp_ctl_msg *m, JsonParser **p, JsonObject **o, GError **error)
{
  if (!dp_ctl_recv (w->ctl, timeout, m, error))
    return FALSE;
  if (m->type == DP_CTL_ERROR) {
    GError *e = dp_ctl_error_from_msg (m, "rank 0 refused this worker");
    g_propagate_error (error, e);
    dp_ctl_msg_clear (m);
    return FALSE;
  }
  if (m->type != type) {
    g_set_error (error, DP_ERROR, DP_ERROR_FORMAT, "rank 0 sent %s where %s was expected", dp_ctl_type_name (m->type),
                 dp_ctl_type_name (type));
    dp_ctl_msg_clear (m);
    return FALSE;
  }
  if (p && !(*p = dp_ctl_parse (m, o, error))) {
    dp_ctl_msg_clear (m);
    return FALSE;
  }
  return TRUE;
}

static gboolean
handshake (worker *w, GError **error)
{
  char *nonce = dp_ctl_random_hex ();
  JsonBuilder *b = json_builder_new ();
  json_builder_begin_object (b);
  dp_ctl_add_int (b, "rank", w->env.rank);
  dp_ctl_add_int (b, "world_size", w->env.world_size);
  dp_ctl_add_string (b, "host", g_get_host_name ());
  dp_ctl_add_int (b, "pid", getpid ());
  dp_ctl_add_string (b, "device", w->device);
  dp_ctl_add_string (b, "release", DP_RELEASE);
  dp_ctl_add_string (b, "nonce", nonce);
  json_builder_end_object (b);
  dp_ctl_msg m;
  JsonParser *p = NULL;
  JsonObject *o = NULL;
  gboolean ok = dp_ctl_send_json (w->ctl, DP_CTL_HELLO, b, error) &&
                expect (w, DP_CTL_CHALLENGE, 30, &m, &p, &o, error);
  if (ok) {
    char *want = dp_ctl_proof (w->secret, "dualparal-rank0", nonce);
    const char *proof = json_object_has_member (o, "proof") ? json_object_get_string_member (o, "proof") : NULL;
    const char *theirs = json_object_has_member (o, "nonce") ? json_object_get_string_member (o, "nonce") : NULL;
    if (!theirs || !dp_ctl_proof_equal (proof, want)) {
      g_set_error (error, DP_ERROR, DP_ERROR_INVALID,
                   "rank 0 at %s does not hold this job's secret (DUALPARAL_SECRET / DUALPARAL_SECRET_FILE differ): "
                   "refused", w->ctl->peer);
      dp_ctl_send_error (w->ctl, *error);
      ok = FALSE;
    } else {
      char *label = g_strdup_printf ("%s:%d", theirs, w->env.rank);
      char *answer = dp_ctl_proof (w->secret, "dualparal-worker", label);
      JsonBuilder *a = json_builder_new ();
      json_builder_begin_object (a);
      dp_ctl_add_string (a, "proof", answer);
      json_builder_end_object (a);
      ok = dp_ctl_send_json (w->ctl, DP_CTL_AUTH, a, error);
      g_free (answer);
      g_free (label);
    }
    g_free (want);
    g_clear_object (&p);
    dp_ctl_msg_clear (&m);
  }
  if (ok) {
    ok = expect (w, DP_CTL_WELCOME, 30, &m, NULL, NULL, error);
    dp_ctl_msg_clear (&m);
  }
  g_free (nonce);
  return ok;
}

/* ------------------------------------------------------------ setup and runs */

static void
drop_setup (worker *w)
{
  dp_engine_free (w->engine);
  w->engine = NULL;
  if (w->transport)
    dp_transport_free (w->transport);
  w->transport = NULL;
  if (w->be)
    dp_backend_free (w->be);
  w->be = NULL;
  dp_schedule_free (w->schedule);
  w->schedule = NULL;
  g_clear_object (&w->data_listener);
}

static gboolean
setup (worker *w, JsonObject *o, GError **error)
{
  drop_setup (w);
  gint64 n, stage, bf16;
  const char *model_dir = dp_ctl_get_string (o, "model_dir", error);
  if (model_dir && w->model_dir)
    model_dir = w->model_dir;
  dp_engine_params params;
  gboolean two_experts = FALSE;
  if (!model_dir || !dp_ctl_get_int (o, "n_stages", 2, DP_ENGINE_MAX_STAGES, &n, error) ||
      !dp_ctl_get_int (o, "stage", 1, n - 1, &stage, error) || !dp_ctl_get_int (o, "wire_bf16", 0, 1, &bf16, error) ||
      !dp_dist_read_engine_params (o, &params, &w->schedule, &two_experts, error))
    return FALSE;
  if (stage != w->env.rank) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "rank %d was given stage %" G_GINT64_FORMAT, w->env.rank, stage);
    return FALSE;
  }
  w->n_stages = (int) n;
  w->stage = (int) stage;
  w->be = dp_backend_new (w->device, error);
  if (!w->be)
    return FALSE;
  const char *kind = dp_ctl_get_string (o, "transport", error);
  if (!kind)
    return FALSE;
  w->transport = dp_transport_new_process (w->n_stages, w->stage, w->be, bf16 != 0, kind, error);
  if (!w->transport)
    return FALSE;
  char *dir = g_build_filename (model_dir, "transformer", NULL);
  char *dir2 = two_experts ? g_build_filename (model_dir, "transformer_2", NULL) : NULL;
  params.expert2_dir = dir2;
  w->engine = dp_engine_new_stage (dir, w->be, w->n_stages, w->stage, w->transport, &params, error);
  g_free (dir2);
  g_free (dir);
  if (!w->engine)
    return FALSE;
  char *fingerprint = dp_dist_model_fingerprint (model_dir, error);
  if (!fingerprint)
    return FALSE;
  /* The data listener sits on the address this process reaches rank 0
   * from: the one its peers can reach too. */
  GSocketAddress *local = g_socket_connection_get_local_address (w->ctl->conn, NULL);
  char *host = local ? g_inet_address_to_string (g_inet_socket_address_get_address (G_INET_SOCKET_ADDRESS (local)))
                     : g_strdup ("127.0.0.1");
  g_clear_object (&local);
  int port = 0;
  w->data_listener = dp_dist_listen (host, 0, &port, error);
  gboolean ok = w->data_listener != NULL;
  if (ok) {
    dp_engine_stats st;
    dp_engine_get_stats (w->engine, &st);
    JsonBuilder *b = json_builder_new ();
    json_builder_begin_object (b);
    dp_ctl_add_string (b, "fingerprint", fingerprint);
    dp_ctl_add_string (b, "data_host", host);
    dp_ctl_add_int (b, "data_port", port);
    dp_ctl_add_string (b, "device", w->be->name);
    dp_ctl_add_int (b, "layer_begin", st.stage[w->stage].layer_begin);
    dp_ctl_add_int (b, "layer_end", st.stage[w->stage].layer_end);
    json_builder_end_object (b);
    ok = dp_ctl_send_json (w->ctl, DP_CTL_READY, b, error);
  }
  g_free (host);
  g_free (fingerprint);
  return ok;
}

/* RUN (o), then its CONTEXT (m); then the data links; then the stage runs
 * on its thread. */
static gboolean
start_run (worker *w, JsonObject *o, const dp_ctl_msg *m, GError **error)
{
  if (!w->engine) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "RUN before SETUP");
    return FALSE;
  }
  gint64 run, batch, tokens, dim;
  if (!dp_ctl_get_int (o, "run", 0, G_MAXINT64, &run, error) || !dp_ctl_get_int (o, "batch", 1, 2, &batch, error) ||
      !dp_ctl_get_int (o, "tokens", 1, 1 << 20, &tokens, error) || !dp_ctl_get_int (o, "dim", 1, 1 << 20, &dim, error))
    return FALSE;
  JsonNode *pn = json_object_get_member (o, "peers");
  JsonArray *peers = pn && JSON_NODE_HOLDS_ARRAY (pn) ? json_node_get_array (pn) : NULL;
  if (!peers || json_array_get_length (peers) != (guint) w->n_stages) {
    g_set_error (error, DP_ERROR, DP_ERROR_FORMAT, "RUN without the %d stages' data addresses", w->n_stages);
    return FALSE;
  }
  const size_t want = (size_t) (batch * tokens * dim) * sizeof (float);
  if (m->length != want) {
    g_set_error (error, DP_ERROR, DP_ERROR_FORMAT, "expected the run's context of %zu bytes, got %zu", want,
                 m->length);
    return FALSE;
  }
  dp_tensor_free (&w->context);
  w->context = dp_tensor_new_host (DP_F32, 3, (int64_t[]){ batch, tokens, dim });
  memcpy (w->context.data, m->payload, want);

  JsonObject *next = json_array_get_object_element (peers, (guint) ((w->stage + 1) % w->n_stages));
  const char *host = json_object_get_string_member (next, "host");
  const int port = (int) json_object_get_int_member (next, "port");
  /* Every process is up: links take a moment. */
  const double timeout = w->heartbeat;
  GSocketConnection *out = dp_dist_link_connect (host, port, w->secret, (guint64) run, w->stage, timeout, error);
  if (!out)
    return FALSE;
  GSocketConnection *in = dp_dist_link_accept (w->data_listener, w->secret, (guint64) run, w->stage - 1, timeout, error);
  gboolean ok = in && dp_transport_attach (w->transport, G_IO_STREAM (out), G_IO_STREAM (in), error);
  g_object_unref (out);
  g_clear_object (&in);
  if (!ok)
    return FALSE;
  g_atomic_int_set (&w->run_cancel, 0);
  /* Rank 0 says each entering block's conditioning (COND): prompt changes. */
  gint64 follow = 0;
  if (json_object_has_member (o, "conds") && !dp_ctl_get_int (o, "conds", 0, 1, &follow, error))
    return FALSE;
  if (follow)
    dp_engine_follow_conds (w->engine);
  /* Block 0's guidance (the one the workers were set up with may have
   * changed since). */
  if (json_object_has_member (o, "guidance")) {
    double g = 0;
    if (!dp_ctl_get_double (o, "guidance", &g, error))
      return FALSE;
    if (!(g >= 1.0 && g <= 1e6)) {
      g_set_error (error, DP_ERROR, DP_ERROR_FORMAT, "RUN: guidance %g is not valid", g);
      return FALSE;
    }
    dp_engine_set_guidance (w->engine, g);
  }
  w->runner = g_thread_try_new ("dp-worker-run", run_thread, w, error);
  return w->runner != NULL;
}

/* COND: block (int64), guidance (double), then the new context (the run's
 * shape) or nothing. */
static gboolean
take_cond (worker *w, const dp_ctl_msg *m, GError **error)
{
  int64_t block;
  double guidance;
  const size_t run_bytes = dp_tensor_nbytes (&w->context);
  if (m->length < 16 || (m->length != 16 && m->length != 16 + run_bytes)) {
    g_set_error (error, DP_ERROR, DP_ERROR_FORMAT, "COND of %zu bytes: expected 16, or 16 and the run's context "
                 "of %zu", m->length, run_bytes);
    return FALSE;
  }
  memcpy (&block, m->payload, 8);
  memcpy (&guidance, m->payload + 8, 8);
  dp_engine_cond *c = NULL;
  if (m->length > 16) {
    dp_tensor view = dp_tensor_view (m->payload + 16, DP_F32, 3, w->context.shape);
    c = dp_engine_cond_new (&view, guidance, error);
    if (!c)
      return FALSE;
  }
  return dp_engine_stage_add_cond (w->engine, block, c, error);
}

static void
end_run (worker *w)
{
  if (w->runner)
    g_thread_join (w->runner);
  w->runner = NULL;
  if (w->transport)
    dp_transport_detach (w->transport);
}

static void
stop_run (worker *w)
{
  if (!w->runner)
    return;
  g_atomic_int_set (&w->run_cancel, 1);
  dp_engine_cancel (w->engine);
}

static gboolean
serve (worker *w, GError **error)
{
  for (;;) {
    event *ev = g_async_queue_pop (w->events);
    gboolean ok = TRUE, done = FALSE;
    GError *err = NULL;
    if (ev->kind == EV_LOST) {
      stop_run (w);
      end_run (w);
      g_set_error (error, DP_ERROR, DP_ERROR_IO, "rank %d: lost rank 0: %s", w->env.rank, ev->error->message);
      event_free (ev);
      return FALSE;
    }
    if (ev->kind == EV_RUN_DONE) {
      /* Report before closing the links: rank 0 should hear the cause
       * before it sees the links close. */
      if (ev->error)
        dp_ctl_send_error (w->ctl, ev->error);
      else
        dp_ctl_send (w->ctl, DP_CTL_DONE, NULL, 0, NULL);
      end_run (w);
      event_free (ev);
      continue;
    }
    JsonParser *p = NULL;
    JsonObject *o = NULL;
    switch (ev->msg.type) {
      case DP_CTL_SETUP:
        if (w->runner) {
          g_set_error (&err, DP_ERROR, DP_ERROR_INVALID, "SETUP during a run");
        } else if ((p = dp_ctl_parse (&ev->msg, &o, &err)) && !setup (w, o, &err)) {
          g_prefix_error (&err, "rank %d (%s, %s): ", w->env.rank, g_get_host_name (), w->device);
        }
        if (err)
          dp_ctl_send_error (w->ctl, err);
        break;
      case DP_CTL_RUN:
        g_clear_object (&w->pending_run);
        if (w->runner)
          g_set_error (&err, DP_ERROR, DP_ERROR_INVALID, "RUN during a run");
        else
          w->pending_run = dp_ctl_parse (&ev->msg, &o, &err);
        if (err) {
          g_prefix_error (&err, "rank %d: ", w->env.rank);
          dp_ctl_send_error (w->ctl, err);
        }
        break;
      case DP_CTL_CONTEXT:
        if (!w->pending_run)
          g_set_error (&err, DP_ERROR, DP_ERROR_INVALID, "CONTEXT without RUN");
        else
          start_run (w, json_node_get_object (json_parser_get_root (w->pending_run)), &ev->msg, &err);
        g_clear_object (&w->pending_run);
        if (err) {
          g_prefix_error (&err, "rank %d: ", w->env.rank);
          dp_ctl_send_error (w->ctl, err);
          if (w->transport)
            dp_transport_detach (w->transport);
        }
        break;
      case DP_CTL_COND:
        /* After a cancel the run may be gone already: nothing to tell. */
        if (w->runner && !take_cond (w, &ev->msg, &err) && !g_atomic_int_get (&w->run_cancel)) {
          g_prefix_error (&err, "rank %d: ", w->env.rank);
          dp_ctl_send_error (w->ctl, err);
          stop_run (w);
        }
        break;
      case DP_CTL_CANCEL:
        stop_run (w);
        break;
      case DP_CTL_SHUTDOWN:
        stop_run (w);
        end_run (w);
        done = TRUE;
        break;
      case DP_CTL_ERROR: {
        GError *e = dp_ctl_error_from_msg (&ev->msg, "rank 0");
        stop_run (w);
        end_run (w);
        g_propagate_error (error, e);
        ok = FALSE;
        done = TRUE;
        break;
      }
      default:
        break;
    }
    g_clear_error (&err);
    g_clear_object (&p);
    event_free (ev);
    if (done)
      return ok;
  }
}

static char *
pick_device (const dp_launch_env *env, const char *device)
{
  if (device && *device)
    return g_strdup (device);
  const char *v = g_getenv ("DUALPARAL_DEVICE");
  if (v && *v)
    return g_strdup (v);
  if (dp_backend_have_cuda ())
    return g_strdup_printf ("cuda:%d", MAX (env->local_rank, 0));
  return g_strdup ("cpu");
}

gboolean
dp_worker_serve (const char *device, const char *model_dir, GError **error)
{
  worker w = { 0 };
  w.model_dir = model_dir;
  if (!dp_launch_env_read (&w.env, error))
    return FALSE;
  if (w.env.rank == 0) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID,
                 "this is rank 0: rank 0 is the pipeline's process (dualparal-generate --processes launcher, or the "
                 "element with processes=launcher); workers are ranks 1..%d", w.env.world_size - 1);
    dp_launch_env_clear (&w.env);
    return FALSE;
  }
  w.secret = dp_ctl_secret_from_env (error);
  w.device = pick_device (&w.env, device);
  w.heartbeat = dp_dist_timeout ("DUALPARAL_HEARTBEAT_TIMEOUT", DP_DIST_HEARTBEAT_TIMEOUT);
  gboolean ok = w.secret && (w.ctl = connect_rank0 (&w, error)) && handshake (&w, error);
  if (ok) {
    w.events = g_async_queue_new_full (event_free);
    w.reader = g_thread_new ("dp-worker-read", reader_thread, &w);
    w.pinger = g_thread_new ("dp-worker-ping", pinger_thread, &w);
    ok = serve (&w, error);
    g_atomic_int_set (&w.stop, 1);
    dp_ctl_conn_shutdown (w.ctl); /* the reader returns */
    g_thread_join (w.pinger);
    g_thread_join (w.reader);
    g_async_queue_unref (w.events);
  }
  drop_setup (&w);
  g_clear_object (&w.pending_run);
  dp_tensor_free (&w.context);
  dp_ctl_conn_free (w.ctl);
  g_free (w.secret);
  g_free (w.device);
  dp_launch_env_clear (&w.env);
  return ok;
}
