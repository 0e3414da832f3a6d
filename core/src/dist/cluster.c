/* dualparal: rank 0's side of a pipeline over processes (cluster.h).
 *
 * Threads: the caller's (setup, run begin / end); one reader per worker,
 * which records what the worker says (DONE, ERROR) or that it is gone
 * (closed connection, or silent beyond the heartbeat timeout) and, during a
 * run, cancels stage 0's engine on a failure; one pinger that sends PING to
 * every worker each second, so that workers see a hung rank 0 too. */
#include "dist/cluster.h"

#include "dist/dist.h"
#include "dualparal/transport.h"
#include "install_dirs.h"

#include <string.h>

#ifndef DP_WORKER_BUILD_PATH
#define DP_WORKER_BUILD_PATH ""
#endif
#ifndef DP_WORKER_RELATIVE_PATH
#define DP_WORKER_RELATIVE_PATH ""
#endif
#ifndef DP_WORKER_INSTALL_PATH
#define DP_WORKER_INSTALL_PATH ""
#endif

typedef enum {
  W_ABSENT = 0, /* no process connected for this rank */
  W_READY,      /* set up, idle */
  W_RUNNING,
  W_DONE,       /* finished this run */
  W_FAILED,     /* reported an error this run (still connected) */
  W_LOST,       /* connection closed or silent: gone */
} worker_state;

typedef struct dp_cluster dp_cluster_t;

typedef struct {
  dp_cluster_t *owner;
  int rank;
  dp_ctl_conn *ctl;
  GThread *reader;
  GSubprocess *proc;  /* spawn mode */
  char *host, *device;
  gint64 pid;
  char *data_host;
  int data_port;
  worker_state state;
  GError *error;      /* W_FAILED / W_LOST */
} worker_slot;

struct dp_cluster {
  dp_cluster_config cfg;
  char **devices;
  char *model_dir;
  dp_engine_params params;
  dp_schedule *schedule;
  char *expert2_dir;       /* Wan2.2 second expert, or NULL */
  char *secret;
  char *fingerprint;
  char *listen_host;
  int listen_port;
  GSocket *listener;       /* control: workers connect here */
  GSocket *data_listener;  /* stage 0's incoming data link */
  int data_port;
  dp_transport *transport; /* stage 0's (borrowed) */
  double heartbeat, connect_timeout, setup_timeout;

  GMutex lock;
  GCond cond;
  worker_slot w[DP_ENGINE_MAX_STAGES];
  gboolean running;        /* a run is in progress: failures cancel the engine */
  dp_engine *engine;
  guint64 run;
  gint stop;               /* atomic: the pinger ends */
  GThread *pinger;
};

static void
warn (dp_cluster *c, const char *fmt, ...) G_GNUC_PRINTF (2, 3);

static void
warn (dp_cluster *c, const char *fmt, ...)
{
  va_list ap;
  va_start (ap, fmt);
  char *msg = g_strdup_vprintf (fmt, ap);
  va_end (ap);
  if (c->cfg.warn)
    c->cfg.warn (msg, c->cfg.warn_data);
  else
    g_warning ("%s", msg);
  g_free (msg);
}

static char *
worker_name (const worker_slot *s)
{
  return g_strdup_printf ("rank %d (host %s, pid %" G_GINT64_FORMAT ", %s)", s->rank, s->host ? s->host : "?",
                          s->pid, s->device ? s->device : "?");
}

/* ------------------------------------------------------------ reader, pinger */

static gpointer
reader_thread (gpointer data)
{
  worker_slot *s = data;
  dp_cluster *c = s->owner;
  for (;;) {
    dp_ctl_msg m;
    GError *err = NULL;
    gboolean got = dp_ctl_recv (s->ctl, c->heartbeat, &m, &err);
    if (got && m.type == DP_CTL_PING) {
      dp_ctl_msg_clear (&m);
      continue;
    }
    g_mutex_lock (&c->lock);
    gboolean failure = FALSE, lost = !got;
    if (!got) {
      char *who = worker_name (s);
      GError *e = g_error_new (DP_ERROR, DP_ERROR_IO, "%s %s", who,
                               strstr (err->message, "deadline") ? "fell silent (no message within the heartbeat "
                                                                    "timeout): hung or overloaded"
                                                                  : "died or closed its connection");
      g_free (who);
      g_clear_error (&s->error);
      s->error = e;
      s->state = W_LOST;
      failure = TRUE;
    } else if (m.type == DP_CTL_DONE) {
      s->state = W_DONE;
    } else if (m.type == DP_CTL_ERROR) {
      char *who = worker_name (s);
      g_clear_error (&s->error);
      s->error = dp_ctl_error_from_msg (&m, who);
      g_free (who);
      s->state = W_FAILED;
      failure = !g_error_matches (s->error, DP_ERROR, DP_ERROR_CANCELLED);
    }
    if (failure && c->running && c->engine)
      dp_engine_cancel (c->engine);
    g_cond_broadcast (&c->cond);
    g_mutex_unlock (&c->lock);
    g_clear_error (&err);
    if (got)
      dp_ctl_msg_clear (&m);
    if (lost) {
      /* Close the socket now: a hung worker's peers see it at once. */
      dp_ctl_conn_shutdown (s->ctl);
      return NULL;
    }
  }
}

static gpointer
pinger_thread (gpointer data)
{
  dp_cluster *c = data;
  while (!g_atomic_int_get (&c->stop)) {
    g_mutex_lock (&c->lock);
    dp_ctl_conn *conns[DP_ENGINE_MAX_STAGES] = { NULL };
    /* From the handshake on: a worker waiting for others to join must not
     * take rank 0 for hung. */
    for (int r = 1; r < c->cfg.world_size; r++)
      if (c->w[r].state != W_ABSENT && c->w[r].state != W_LOST && c->w[r].ctl)
        conns[r] = c->w[r].ctl;
    /* Sent under the lock: a slot's connection is only freed under it. */
    for (int r = 1; r < c->cfg.world_size; r++)
      if (conns[r])
        dp_ctl_send (conns[r], DP_CTL_PING, NULL, 0, NULL);
    g_mutex_unlock (&c->lock);
    for (int i = 0; i < 10 && !g_atomic_int_get (&c->stop); i++)
      g_usleep ((gulong) (DP_DIST_PING_INTERVAL * 1e5));
  }
  return NULL;
}

/* Stops a slot's reader, closes its connection, and (spawn mode) makes sure
 * its process is gone.  Called without the lock. */
static void
slot_drop (dp_cluster *c, worker_slot *s, gboolean kill)
{
  if (s->ctl)
    dp_ctl_conn_shutdown (s->ctl);
  if (s->reader)
    g_thread_join (s->reader);
  g_mutex_lock (&c->lock);
  s->reader = NULL;
  dp_ctl_conn_free (s->ctl);
  s->ctl = NULL;
  s->state = W_ABSENT;
  g_mutex_unlock (&c->lock);
  if (s->proc) {
    if (kill)
      g_subprocess_force_exit (s->proc);
    g_subprocess_wait (s->proc, NULL, NULL);
    g_clear_object (&s->proc);
  }
  g_clear_pointer (&s->host, g_free);
  g_clear_pointer (&s->device, g_free);
  g_clear_pointer (&s->data_host, g_free);
  g_clear_error (&s->error);
  s->pid = 0;
}

/* ------------------------------------------------------------ spawning */

static char *
find_worker_program (GError **error)
{
  const char *env = g_getenv ("DUALPARAL_WORKER");
  if (env && *env)
    return g_strdup (env);
  /* The installed worker beside the loaded library comes first, so that an
   * installation (wherever it went) runs its own worker, then the build
   * tree's, the configured install path, PATH. */
  char *relocated = *DP_WORKER_RELATIVE_PATH ? dp_install_path (DP_WORKER_RELATIVE_PATH) : NULL;
  const char *candidates[] = { relocated ? relocated : "", DP_WORKER_BUILD_PATH, DP_WORKER_INSTALL_PATH };
  char *found = NULL;
  for (size_t i = 0; i < G_N_ELEMENTS (candidates) && !found; i++)
    if (*candidates[i] && g_file_test (candidates[i], G_FILE_TEST_IS_EXECUTABLE))
      found = g_strdup (candidates[i]);
  if (!found)
    found = g_find_program_in_path ("dualparal-worker");
  if (!found)
    g_set_error (error, DP_ERROR, DP_ERROR_MISSING,
                 "the dualparal-worker program was not found (looked at DUALPARAL_WORKER, %s%s%s%s%s and PATH)",
                 relocated ? relocated : "", relocated ? ", " : "", DP_WORKER_BUILD_PATH,
                 *DP_WORKER_INSTALL_PATH ? ", " : "", DP_WORKER_INSTALL_PATH);
  g_free (relocated);
  return found;
}

static gboolean
spawn_worker (dp_cluster *c, int rank, GError **error)
{
  char *program = find_worker_program (error);
  if (!program)
    return FALSE;
  GSubprocessLauncher *l = g_subprocess_launcher_new (G_SUBPROCESS_FLAGS_NONE);
  char num[16];
  g_snprintf (num, sizeof num, "%d", rank);
  g_subprocess_launcher_setenv (l, "RANK", num, TRUE);
  g_subprocess_launcher_setenv (l, "LOCAL_RANK", num, TRUE);
  g_snprintf (num, sizeof num, "%d", c->cfg.world_size);
  g_subprocess_launcher_setenv (l, "WORLD_SIZE", num, TRUE);
  g_subprocess_launcher_setenv (l, "MASTER_ADDR", c->listen_host, TRUE);
  g_snprintf (num, sizeof num, "%d", c->listen_port);
  g_subprocess_launcher_setenv (l, "MASTER_PORT", num, TRUE);
  /* The secret goes through the environment, never the command line. */
  g_subprocess_launcher_setenv (l, "DUALPARAL_SECRET", c->secret, TRUE);
  g_subprocess_launcher_unsetenv (l, "DUALPARAL_SECRET_FILE");
  GError *e = NULL;
  GSubprocess *p = g_subprocess_launcher_spawn (l, &e, program, "--device", c->devices[rank], NULL);
  g_object_unref (l);
  if (!p) {
    g_set_error (error, DP_ERROR, DP_ERROR_IO, "starting %s for rank %d: %s", program, rank, e->message);
    g_error_free (e);
    g_free (program);
    return FALSE;
  }
  g_free (program);
  c->w[rank].proc = p;
  return TRUE;
}

/* A spawned worker that exited before it connected (its own message is on
 * stderr): its rank, else -1. */
static int
exited_worker (dp_cluster *c, int *status)
{
  for (int r = 1; r < c->cfg.world_size; r++) {
    GSubprocess *p = c->w[r].proc;
    if (p && c->w[r].state == W_ABSENT && !g_subprocess_get_identifier (p)) {
      *status = g_subprocess_get_if_exited (p) ? g_subprocess_get_exit_status (p) : -g_subprocess_get_term_sig (p);
      return r;
    }
  }
  return -1;
}

/* ------------------------------------------------------------ handshake */

static void
refuse (dp_cluster *c, dp_ctl_conn *ctl, GString *refused, GError *why)
{
  dp_ctl_send_error (ctl, why);
  warn (c, "rank 0 refused a connection from %s: %s", ctl->peer, why->message);
  g_string_append_printf (refused, "%s%s: %s", refused->len ? "; " : "", ctl->peer, why->message);
  g_error_free (why);
}

/* One connection: HELLO, CHALLENGE, AUTH, WELCOME.  The rank it belongs to,
 * or -1 when it was refused (recorded in refused). */
static int
handshake (dp_cluster *c, dp_ctl_conn *ctl, GString *refused)
{
  dp_ctl_msg m;
  GError *e = NULL;
  JsonParser *p = NULL;
  JsonObject *o = NULL;
  if (!dp_ctl_recv (ctl, 30, &m, &e)) {
    if (g_error_matches (e, DP_ERROR, DP_ERROR_UNSUPPORTED)) {
      refuse (c, ctl, refused, e);
    } else {
      g_string_append_printf (refused, "%s%s: %s", refused->len ? "; " : "", ctl->peer, e->message);
      g_error_free (e);
    }
    return -1;
  }
  gint64 rank = -1, world = 0, pid = 0;
  const char *nonce = NULL;
  if (m.type != DP_CTL_HELLO || !(p = dp_ctl_parse (&m, &o, &e)) ||
      !dp_ctl_get_int (o, "world_size", 1, DP_ENGINE_MAX_STAGES, &world, &e) ||
      !dp_ctl_get_int (o, "rank", 0, DP_ENGINE_MAX_STAGES, &rank, &e) || !(nonce = dp_ctl_get_string (o, "nonce", &e)) ||
      !dp_ctl_get_int (o, "pid", 0, G_MAXINT64, &pid, &e)) {
    if (!e)
      e = g_error_new (DP_ERROR, DP_ERROR_FORMAT, "expected HELLO, got %s", dp_ctl_type_name (m.type));
    refuse (c, ctl, refused, e);
    rank = -1;
  } else if (world != c->cfg.world_size || rank < 1 || rank >= world) {
    refuse (c, ctl, refused,
            g_error_new (DP_ERROR, DP_ERROR_INVALID, "a worker of rank %" G_GINT64_FORMAT " in a job of %" G_GINT64_FORMAT
                         " processes; this job has %d (ranks 1..%d are workers)", rank, world, c->cfg.world_size,
                         c->cfg.world_size - 1));
    rank = -1;
  } else if (c->w[rank].state != W_ABSENT) {
    refuse (c, ctl, refused, g_error_new (DP_ERROR, DP_ERROR_INVALID, "rank %" G_GINT64_FORMAT " is already here", rank));
    rank = -1;
  }
  char *nonce0 = dp_ctl_random_hex ();
  if (rank > 0) {
    char *proof = dp_ctl_proof (c->secret, "dualparal-rank0", nonce);
    JsonBuilder *b = json_builder_new ();
    json_builder_begin_object (b);
    dp_ctl_add_string (b, "nonce", nonce0);
    dp_ctl_add_string (b, "proof", proof);
    json_builder_end_object (b);
    g_free (proof);
    if (!dp_ctl_send_json (ctl, DP_CTL_CHALLENGE, b, &e)) {
      g_string_append_printf (refused, "%s%s: %s", refused->len ? "; " : "", ctl->peer, e->message);
      g_clear_error (&e);
      rank = -1;
    }
  }
  if (rank > 0) {
    worker_slot *s = &c->w[rank];
    s->host = g_strdup (json_object_has_member (o, "host") ? json_object_get_string_member (o, "host") : "?");
    s->device = g_strdup (json_object_has_member (o, "device") ? json_object_get_string_member (o, "device") : "?");
    s->pid = pid;
  }
  g_clear_object (&p);
  dp_ctl_msg_clear (&m);
  if (rank > 0) {
    char *label = g_strdup_printf ("%s:%" G_GINT64_FORMAT, nonce0, rank);
    char *want = dp_ctl_proof (c->secret, "dualparal-worker", label);
    g_free (label);
    const char *proof = NULL;
    gboolean good = dp_ctl_recv (ctl, 30, &m, &e) && m.type == DP_CTL_AUTH && (p = dp_ctl_parse (&m, &o, &e)) &&
                    (proof = dp_ctl_get_string (o, "proof", &e)) && dp_ctl_proof_equal (proof, want);
    if (!good && e && g_error_matches (e, DP_ERROR, DP_ERROR_IO)) {
      /* The worker hung up: its own message says why (it refused us). */
      g_string_append_printf (refused, "%s%s (rank %" G_GINT64_FORMAT "): %s", refused->len ? "; " : "", ctl->peer,
                              rank, m.type == DP_CTL_ERROR ? "refused rank 0" : e->message);
      g_clear_error (&e);
    } else if (!good && m.type == DP_CTL_ERROR) {
      GError *why = dp_ctl_error_from_msg (&m, "the worker");
      g_string_append_printf (refused, "%s%s: %s", refused->len ? "; " : "", ctl->peer, why->message);
      g_error_free (why);
      g_clear_error (&e);
    } else if (!good) {
      g_clear_error (&e);
      refuse (c, ctl, refused,
              g_error_new (DP_ERROR, DP_ERROR_INVALID, "rank %" G_GINT64_FORMAT " does not hold this job's secret "
                           "(DUALPARAL_SECRET / DUALPARAL_SECRET_FILE differ): refused", rank));
    }
    g_free (want);
    g_clear_object (&p);
    dp_ctl_msg_clear (&m);
    if (good && !dp_ctl_send (ctl, DP_CTL_WELCOME, NULL, 0, &e)) {
      g_string_append_printf (refused, "%s%s: %s", refused->len ? "; " : "", ctl->peer, e->message);
      g_clear_error (&e);
      good = FALSE;
    }
    if (!good) {
      g_clear_pointer (&c->w[rank].host, g_free);
      g_clear_pointer (&c->w[rank].device, g_free);
      rank = -1;
    }
  }
  g_free (nonce0);
  return (int) rank;
}

/* Sends SETUP to rank r. */
static gboolean
send_setup (dp_cluster *c, int r, GError **error)
{
  JsonBuilder *b = json_builder_new ();
  json_builder_begin_object (b);
  dp_ctl_add_string (b, "model_dir", c->model_dir);
  dp_ctl_add_int (b, "n_stages", c->cfg.world_size);
  dp_ctl_add_int (b, "stage", r);
  dp_ctl_add_int (b, "wire_bf16", c->cfg.hidden_bf16);
  dp_ctl_add_string (b, "transport", c->transport->name); /* every process uses rank 0's kind */
  dp_dist_add_engine_params (b, &c->params);
  json_builder_end_object (b);
  return dp_ctl_send_json (c->w[r].ctl, DP_CTL_SETUP, b, error);
}

/* Waits for READY from rank r and checks its model. */
static gboolean
await_ready (dp_cluster *c, int r, GError **error)
{
  worker_slot *s = &c->w[r];
  dp_ctl_msg m;
  JsonParser *p = NULL;
  JsonObject *o = NULL;
  GError *e = NULL;
  gboolean ok;
  do
    ok = dp_ctl_recv (s->ctl, c->setup_timeout, &m, &e);
  while (ok && m.type == DP_CTL_PING && (dp_ctl_msg_clear (&m), TRUE));
  char *who = worker_name (s);
  if (!ok) {
    g_set_error (error, DP_ERROR, DP_ERROR_IO, "%s did not finish loading its stage: %s", who, e->message);
    g_clear_error (&e);
  } else if (m.type == DP_CTL_ERROR) {
    g_propagate_error (error, dp_ctl_error_from_msg (&m, "worker"));
    ok = FALSE;
  } else if (m.type != DP_CTL_READY || !(p = dp_ctl_parse (&m, &o, error))) {
    if (m.type != DP_CTL_READY)
      g_set_error (error, DP_ERROR, DP_ERROR_FORMAT, "%s sent %s instead of READY", who, dp_ctl_type_name (m.type));
    ok = FALSE;
  } else {
    const char *fp = dp_ctl_get_string (o, "fingerprint", error);
    const char *host = fp ? dp_ctl_get_string (o, "data_host", error) : NULL;
    gint64 port = 0;
    ok = host && dp_ctl_get_int (o, "data_port", 1, 65535, &port, error);
    if (ok && !g_str_equal (fp, c->fingerprint)) {
      g_set_error (error, DP_ERROR, DP_ERROR_INVALID,
                   "%s sees a different model in %s (transformer config and tensor index checksum %.12s..., rank 0 "
                   "has %.12s...): every process must load the same weights", who, c->model_dir, fp, c->fingerprint);
      ok = FALSE;
    }
    if (ok) {
      s->data_host = g_strdup (host);
      s->data_port = (int) port;
      g_free (s->device);
      s->device = g_strdup (json_object_has_member (o, "device") ? json_object_get_string_member (o, "device") : "?");
    }
  }
  g_free (who);
  g_clear_object (&p);
  if (ok || m.payload)
    dp_ctl_msg_clear (&m);
  return ok;
}

/* Brings every absent rank up: spawns it (spawn mode), accepts and checks
 * connections until each rank is here, sets them up, starts their readers. */
static gboolean
gather (dp_cluster *c, GError **error)
{
  gboolean missing[DP_ENGINE_MAX_STAGES] = { FALSE };
  int n_missing = 0;
  for (int r = 1; r < c->cfg.world_size; r++)
    if (c->w[r].state == W_ABSENT) {
      missing[r] = TRUE;
      n_missing++;
      if (c->cfg.processes == DP_PROCESSES_SPAWN && !spawn_worker (c, r, error))
        return FALSE;
    }
  if (!n_missing)
    return TRUE;
  const gint64 deadline = g_get_monotonic_time () + (gint64) (c->connect_timeout * 1e6);
  GString *refused = g_string_new (NULL);
  int waiting = n_missing;
  while (waiting > 0) {
    int status = 0, dead = exited_worker (c, &status);
    if (dead > 0) {
      g_set_error (error, DP_ERROR, DP_ERROR_FAILED,
                   "worker rank %d exited (%s %d) before it joined: see its message above", dead,
                   status < 0 ? "signal" : "status", status < 0 ? -status : status);
      g_string_free (refused, TRUE);
      return FALSE;
    }
    const double left = (deadline - g_get_monotonic_time ()) / 1e6;
    if (left <= 0) {
      GString *ranks = g_string_new (NULL);
      for (int r = 1; r < c->cfg.world_size; r++)
        if (missing[r] && c->w[r].state == W_ABSENT)
          g_string_append_printf (ranks, "%s%d", ranks->len ? ", " : "", r);
      g_set_error (error, DP_ERROR, DP_ERROR_IO,
                   "rank 0 waited %.0f s at %s:%d for worker rank%s %s%s%s (start them with the same RANK / "
                   "WORLD_SIZE / MASTER_ADDR / MASTER_PORT and DUALPARAL_SECRET; DUALPARAL_CONNECT_TIMEOUT sets the "
                   "wait)", c->connect_timeout, c->listen_host, c->listen_port, strchr (ranks->str, ',') ? "s" : "",
                   ranks->str, refused->len ? "; refused: " : "", refused->str);
      g_string_free (ranks, TRUE);
      g_string_free (refused, TRUE);
      return FALSE;
    }
    GError *e = NULL;
    GSocketConnection *conn = dp_dist_accept (c->listener, MIN (left, 0.2), NULL, &e);
    g_clear_error (&e);
    if (!conn)
      continue;
    dp_ctl_conn *ctl = dp_ctl_conn_new (conn);
    g_object_unref (conn);
    const int r = handshake (c, ctl, refused);
    if (r < 0 || !missing[r]) {
      dp_ctl_conn_free (ctl);
      continue;
    }
    g_mutex_lock (&c->lock);
    c->w[r].ctl = ctl;
    c->w[r].rank = r;
    c->w[r].state = W_READY;
    g_mutex_unlock (&c->lock);
    waiting--;
  }
  g_string_free (refused, TRUE);
  /* Every worker loads its stage at the same time. */
  for (int r = 1; r < c->cfg.world_size; r++)
    if (missing[r] && !send_setup (c, r, error))
      return FALSE;
  for (int r = 1; r < c->cfg.world_size; r++)
    if (missing[r] && !await_ready (c, r, error))
      return FALSE;
  for (int r = 1; r < c->cfg.world_size; r++)
    if (missing[r]) {
      char name[24];
      g_snprintf (name, sizeof name, "dp-rank%d-read", r);
      c->w[r].reader = g_thread_new (name, reader_thread, &c->w[r]);
    }
  return TRUE;
}

/* ------------------------------------------------------------ new / free */

dp_cluster *
dp_cluster_new (const dp_cluster_config *cfg, GError **error)
{
  if (cfg->world_size < 2 || cfg->world_size > DP_ENGINE_MAX_STAGES) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "a pipeline over processes needs 2 to %d of them, not %d",
                 DP_ENGINE_MAX_STAGES, cfg->world_size);
    return NULL;
  }
  dp_cluster *c = g_new0 (dp_cluster, 1);
  g_mutex_init (&c->lock);
  g_cond_init (&c->cond);
  c->cfg = *cfg;
  c->devices = g_strdupv (cfg->devices);
  c->cfg.devices = c->devices;
  c->transport = cfg->transport;
  c->model_dir = g_strdup (cfg->model_dir);
  c->cfg.model_dir = c->model_dir;
  c->params = *cfg->params;
  c->schedule = g_new0 (dp_schedule, 1);
  *c->schedule = *cfg->params->schedule;
  c->schedule->sigmas = g_memdup2 (cfg->params->schedule->sigmas, sizeof (double) * (c->schedule->steps + 1));
  c->schedule->timesteps = g_memdup2 (cfg->params->schedule->timesteps, sizeof (double) * c->schedule->steps);
  c->params.schedule = c->schedule;
  c->expert2_dir = g_strdup (cfg->params->expert2_dir); /* the caller's may not outlive us */
  c->params.expert2_dir = c->expert2_dir;
  c->cfg.params = &c->params;
  c->heartbeat = dp_dist_timeout ("DUALPARAL_HEARTBEAT_TIMEOUT", DP_DIST_HEARTBEAT_TIMEOUT);
  c->connect_timeout = dp_dist_timeout ("DUALPARAL_CONNECT_TIMEOUT", DP_DIST_CONNECT_TIMEOUT);
  c->setup_timeout = dp_dist_timeout ("DUALPARAL_SETUP_TIMEOUT", DP_DIST_SETUP_TIMEOUT);
  for (int r = 0; r < DP_ENGINE_MAX_STAGES; r++) {
    c->w[r].rank = r;
    c->w[r].owner = c;
  }

  gboolean ok = TRUE;
  if (cfg->processes == DP_PROCESSES_SPAWN) {
    /* Workers on this machine only: loopback, any free port, a fresh
     * secret unless the user gave one. */
    c->listen_host = g_strdup ("127.0.0.1");
    c->secret = g_getenv ("DUALPARAL_SECRET") || g_getenv ("DUALPARAL_SECRET_FILE") ? dp_ctl_secret_from_env (error)
                                                                                   : dp_ctl_random_hex ();
    ok = c->secret != NULL;
  } else {
    dp_launch_env env;
    ok = dp_launch_env_read (&env, error);
    if (ok && env.rank != 0) {
      g_set_error (error, DP_ERROR, DP_ERROR_INVALID,
                   "this process is rank %d of the launcher's job: the pipeline (element or dualparal-generate) is "
                   "rank 0; start dualparal-worker for the other ranks", env.rank);
      ok = FALSE;
    } else if (ok && env.world_size != cfg->world_size) {
      g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "WORLD_SIZE %d, but %d processes were asked for",
                   env.world_size, cfg->world_size);
      ok = FALSE;
    }
    if (ok) {
      c->listen_host = g_strdup (env.master_addr);
      c->listen_port = env.master_port;
    }
    dp_launch_env_clear (&env);
    ok = ok && (c->secret = dp_ctl_secret_from_env (error)) != NULL;
  }
  ok = ok && (c->fingerprint = dp_dist_model_fingerprint (c->model_dir, error)) != NULL;
  ok = ok && (c->listener = dp_dist_listen (c->listen_host, c->listen_port, &c->listen_port, error)) != NULL;
  ok = ok && (c->data_listener = dp_dist_listen (c->listen_host, 0, &c->data_port, error)) != NULL;
  if (!ok) {
    g_prefix_error (error, "processes: ");
    dp_cluster_free (c);
    return NULL;
  }
  c->pinger = g_thread_new ("dp-rank0-ping", pinger_thread, c);
  if (!gather (c, error)) {
    g_prefix_error (error, "processes: ");
    dp_cluster_free (c);
    return NULL;
  }
  return c;
}

void
dp_cluster_free (dp_cluster *c)
{
  if (!c)
    return;
  /* Say goodbye; a worker leaves at once, and a spawned one that does not
   * within 5 s is killed. */
  for (int r = 1; r < c->cfg.world_size; r++)
    if (c->w[r].ctl && c->w[r].state != W_LOST)
      dp_ctl_send (c->w[r].ctl, DP_CTL_SHUTDOWN, NULL, 0, NULL);
  const gint64 deadline = g_get_monotonic_time () + 5000000;
  for (int r = 1; r < c->cfg.world_size; r++)
    while (c->w[r].proc && g_subprocess_get_identifier (c->w[r].proc) && g_get_monotonic_time () < deadline)
      g_usleep (10000);
  g_atomic_int_set (&c->stop, 1);
  if (c->pinger)
    g_thread_join (c->pinger);
  for (int r = 1; r < c->cfg.world_size; r++)
    slot_drop (c, &c->w[r], TRUE);
  g_clear_object (&c->listener);
  g_clear_object (&c->data_listener);
  dp_schedule_free (c->schedule);
  g_free (c->expert2_dir);
  g_strfreev (c->devices);
  g_free (c->model_dir);
  g_free (c->secret);
  g_free (c->fingerprint);
  g_free (c->listen_host);
  g_mutex_clear (&c->lock);
  g_cond_clear (&c->cond);
  g_free (c);
}

void
dp_cluster_set_engine (dp_cluster *c, dp_engine *engine)
{
  g_mutex_lock (&c->lock);
  c->engine = engine;
  g_mutex_unlock (&c->lock);
}

/* ------------------------------------------------------------ runs */

gboolean
dp_cluster_run_begin (dp_cluster *c, const dp_tensor *context, double guidance, GError **error)
{
  /* Workers lost in an earlier run: replaced now. */
  for (int r = 1; r < c->cfg.world_size; r++)
    if (c->w[r].state == W_LOST || c->w[r].state == W_ABSENT)
      slot_drop (c, &c->w[r], TRUE);
  if (!gather (c, error))
    return FALSE;
  c->run++;
  JsonBuilder *b = json_builder_new ();
  json_builder_begin_object (b);
  dp_ctl_add_int (b, "run", (gint64) c->run);
  dp_ctl_add_int (b, "batch", context->shape[0]);
  dp_ctl_add_int (b, "tokens", context->shape[1]);
  dp_ctl_add_int (b, "dim", context->shape[2]);
  json_builder_set_member_name (b, "peers");
  json_builder_begin_array (b);
  for (int r = 0; r < c->cfg.world_size; r++) {
    json_builder_begin_object (b);
    dp_ctl_add_string (b, "host", r == 0 ? c->listen_host : c->w[r].data_host);
    dp_ctl_add_int (b, "port", r == 0 ? c->data_port : c->w[r].data_port);
    json_builder_end_object (b);
  }
  json_builder_end_array (b);
  /* Each block's conditioning follows in COND messages (prompt changes). */
  dp_ctl_add_int (b, "conds", 1);
  dp_ctl_add_double (b, "guidance", guidance);
  json_builder_end_object (b);
  JsonNode *root = json_builder_get_root (b);
  char *text = json_to_string (root, FALSE);
  json_node_unref (root);
  g_object_unref (b);
  g_mutex_lock (&c->lock);
  c->running = TRUE;
  g_mutex_unlock (&c->lock);
  gboolean ok = TRUE;
  for (int r = 1; r < c->cfg.world_size && ok; r++) {
    ok = dp_ctl_send (c->w[r].ctl, DP_CTL_RUN, text, strlen (text), error) &&
         dp_ctl_send (c->w[r].ctl, DP_CTL_CONTEXT, context->data, dp_tensor_nbytes (context), error);
    /* Only a worker that has its run answers for it (DONE / ERROR). */
    g_mutex_lock (&c->lock);
    if (ok && c->w[r].state == W_READY)
      c->w[r].state = W_RUNNING;
    g_mutex_unlock (&c->lock);
  }
  g_free (text);
  /* Every process is up and listening: links take a moment, not minutes. */
  GSocketConnection *out = NULL, *in = NULL;
  if (ok)
    out = dp_dist_link_connect (c->w[1].data_host, c->w[1].data_port, c->secret, c->run, 0, c->heartbeat, error);
  if (out)
    in = dp_dist_link_accept (c->data_listener, c->secret, c->run, c->cfg.world_size - 1, c->heartbeat, error);
  ok = in && dp_transport_attach (c->transport, G_IO_STREAM (out), G_IO_STREAM (in), error);
  g_clear_object (&out);
  g_clear_object (&in);
  if (!ok) {
    g_prefix_error (error, "processes: starting run %" G_GUINT64_FORMAT ": ", c->run);
    dp_cluster_run_end (c, FALSE, NULL);
  }
  return ok;
}

gboolean
dp_cluster_run_end (dp_cluster *c, gboolean engine_ok, GError **error)
{
  /* Stage 0's engine has returned: nothing more to cancel there. */
  g_mutex_lock (&c->lock);
  c->running = FALSE;
  g_mutex_unlock (&c->lock);
  if (!engine_ok)
    for (int r = 1; r < c->cfg.world_size; r++)
      if (c->w[r].state == W_RUNNING)
        dp_ctl_send (c->w[r].ctl, DP_CTL_CANCEL, NULL, 0, NULL);
  /* Every worker ends its run (DONE, ERROR) or is lost (its reader sees a
   * silent one after the heartbeat timeout).  Stage 0 is done, so every
   * worker is within a pass of its end: one that is still running after a
   * heartbeat timeout more is counted lost too. */
  const gint64 deadline = g_get_monotonic_time () + (gint64) ((c->heartbeat + 5.0) * 1e6);
  g_mutex_lock (&c->lock);
  for (;;) {
    gboolean busy = FALSE;
    for (int r = 1; r < c->cfg.world_size; r++)
      busy |= c->w[r].state == W_RUNNING;
    if (!busy)
      break;
    if (!g_cond_wait_until (&c->cond, &c->lock, deadline)) {
      for (int r = 1; r < c->cfg.world_size; r++)
        if (c->w[r].state == W_RUNNING) {
          char *who = worker_name (&c->w[r]);
          g_clear_error (&c->w[r].error);
          c->w[r].error = g_error_new (DP_ERROR, DP_ERROR_IO, "%s did not end its run", who);
          c->w[r].state = W_LOST;
          g_free (who);
        }
      break;
    }
  }
  /* The most telling failure, the cause rather than its echoes (a cancel,
   * a closed link): a lost worker; else stage 0's own error when it is a
   * cause; else a worker's cause; else a worker's closed link; else stage
   * 0's error as it is. */
  const gboolean own_cause = error && *error && (*error)->code != DP_ERROR_CANCELLED && (*error)->code != DP_ERROR_IO;
  GError *worst = NULL;
  for (int pass = 0; pass < 3 && !worst; pass++)
    for (int r = 1; r < c->cfg.world_size && !worst; r++) {
      worker_slot *s = &c->w[r];
      const gboolean cause = s->error && s->error->code != DP_ERROR_CANCELLED && s->error->code != DP_ERROR_IO;
      if (pass == 0 && s->state == W_LOST)
        worst = g_error_copy (s->error);
      else if (pass == 1 && !own_cause && s->state == W_FAILED && cause)
        worst = g_error_copy (s->error);
      else if (pass == 2 && !own_cause && s->state == W_FAILED && s->error->code == DP_ERROR_IO)
        worst = g_error_copy (s->error);
    }
  for (int r = 1; r < c->cfg.world_size; r++)
    if (c->w[r].state == W_DONE || c->w[r].state == W_FAILED) {
      c->w[r].state = W_READY;
      g_clear_error (&c->w[r].error);
    }
  g_mutex_unlock (&c->lock);
  if (c->transport)
    dp_transport_detach (c->transport);
  /* Spawned workers that are gone or hung: no process is left behind. */
  for (int r = 1; r < c->cfg.world_size; r++)
    if (c->w[r].state == W_LOST && c->cfg.processes == DP_PROCESSES_SPAWN && c->w[r].proc) {
      g_subprocess_force_exit (c->w[r].proc);
      g_subprocess_wait (c->w[r].proc, NULL, NULL);
    }
  if (worst) {
    if (error) {
      g_clear_error (error);
      g_propagate_error (error, worst);
    } else {
      g_error_free (worst);
    }
    return FALSE;
  }
  return engine_ok;
}

gboolean
dp_cluster_send_cond (dp_cluster *c, int64_t block, const dp_engine_cond *cond, GError **error)
{
  const dp_tensor *ctx = cond ? dp_engine_cond_context (cond) : NULL;
  const size_t bytes = ctx ? dp_tensor_nbytes (ctx) : 0;
  guint8 *msg = g_malloc (16 + bytes);
  const double guidance = cond ? dp_engine_cond_guidance (cond) : 0.0;
  memcpy (msg, &block, 8);
  memcpy (msg + 8, &guidance, 8);
  if (bytes)
    memcpy (msg + 16, ctx->data, bytes);
  gboolean ok = TRUE;
  /* Under the lock, as the pinger: a slot's connection is freed only
   * under it.  A lost worker is left out: the run fails through it. */
  g_mutex_lock (&c->lock);
  for (int r = 1; r < c->cfg.world_size && ok; r++)
    if (c->w[r].ctl && c->w[r].state == W_RUNNING)
      ok = dp_ctl_send (c->w[r].ctl, DP_CTL_COND, msg, 16 + bytes, error);
  g_mutex_unlock (&c->lock);
  g_free (msg);
  if (!ok)
    g_prefix_error (error, "processes: the conditioning of block %" G_GINT64_FORMAT ": ", block);
  return ok;
}
