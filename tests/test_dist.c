/* A DualParal pipeline over processes (docs/distributed.md), on CPU stages
 * with the embedded model:
 * - identical: the frames of one process equal those of 2 and 3 processes
 *   (spawned dualparal-worker stages, the socket transport), bit for bit,
 *   and a second run on the same workers repeats them;
 * - killed / hung: a worker killed with SIGKILL (or stopped with SIGSTOP)
 *   in the middle of a run ends it with an error naming its rank within the
 *   bound, no worker process is left behind, and the next run works;
 * - refused: a worker with the wrong secret, a client with the wrong
 *   protocol version or a bad proof, and a worker whose model differs are
 *   refused with clear errors on both sides.
 * Environment: DP_SHAPES_MODEL_DIR (the model), DUALPARAL_WORKER (the
 * worker program). */
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <glib/gstdio.h>

#include "dist/control.h"
#include "dist/dist.h"
#include "dualparal/backend.h"
#include "dualparal/generator.h"
#include "test_util.h"

/* 33 frames = 9 latent frames in blocks of 2 with 1 context frame: 4 blocks,
 * several in flight on every stage. */
#define FRAMES 33

typedef struct {
  GByteArray *rgb;
  int64_t frames;
  int64_t stop_after; /* frames; 0: never */
  gint64 first_us;    /* when the first frames arrived */
  guint frame_bytes;  /* 0: the embedded model's 64 x 64 RGB */
} sink;

static gboolean
on_frames (const uint8_t *rgb, int n, int64_t first, const dp_progress *p, void *data)
{
  sink *s = data;
  g_assert_cmpint (first, ==, s->frames);
  g_byte_array_append (s->rgb, rgb, (guint) n * (s->frame_bytes ? s->frame_bytes : 64 * 64 * 3));
  if (s->frames == 0)
    s->first_us = g_get_monotonic_time ();
  s->frames += n;
  return s->stop_after == 0 || s->frames < s->stop_after;
}

static const char *
model_dir (void)
{
  const char *d = g_getenv ("DP_SHAPES_MODEL_DIR");
  g_assert_nonnull (d);
  return d;
}

/* What rank 0 logged (refused connections). */
static GPtrArray *warnings;

static void
on_warning (const char *message, void *data)
{
  g_ptr_array_add (warnings, g_strdup (message));
}

static gboolean
warned (const char *needle)
{
  for (guint i = 0; i < warnings->len; i++)
    if (strstr (warnings->pdata[i], needle))
      return TRUE;
  return FALSE;
}

/* The settings every case shares: the embedded model, blocks of 2 latent
 * frames with 1 of context, seed 3. */
static void
dist_params (dp_generator_params *p, const char *devices, dp_processes processes, int steps)
{
  dp_generator_params_init (p);
  p->model_dir = model_dir ();
  p->prompt = "a red ball moving to the right";
  p->num_frames = FRAMES;
  p->steps = steps;
  p->engine = DP_ENGINE_DUALPARAL;
  p->block_frames = 2;
  p->context_frames = 1;
  p->devices = devices;
  p->processes = processes;
  p->seed = 3;
  p->warning_cb = on_warning;
}

static dp_generator *
make_generator (const char *devices, dp_processes processes, int steps, GError **error)
{
  dp_generator_params p;
  dist_params (&p, devices, processes, steps);
  return dp_generator_new (&p, error);
}

static GByteArray *
run_once (dp_generator *gen, GError **error)
{
  sink s = { g_byte_array_new (), 0, 0, 0 };
  if (!dp_generator_run (gen, on_frames, &s, error)) {
    g_byte_array_unref (s.rgb);
    return NULL;
  }
  g_assert_cmpint (s.frames, ==, FRAMES);
  return s.rgb;
}

/* The worker processes this process started (children named
 * dualparal-worker), with their RANK. */
static int
list_workers (int *pids, int *ranks, int max)
{
  int n = 0;
  GDir *d = g_dir_open ("/proc", 0, NULL);
  g_assert_nonnull (d);
  for (const char *name; (name = g_dir_read_name (d)) && n < max;) {
    if (!g_ascii_isdigit (name[0]))
      continue;
    char *path = g_build_filename ("/proc", name, "stat", NULL);
    char *stat = NULL;
    gboolean ok = g_file_get_contents (path, &stat, NULL, NULL);
    g_free (path);
    if (!ok)
      continue;
    /* pid (comm) state ppid ... */
    char *close = strrchr (stat, ')');
    int ppid = -1;
    char state = '?';
    if (close && strstr (stat, "(dualparal-worke") && sscanf (close + 2, "%c %d", &state, &ppid) == 2 &&
        ppid == getpid () && state != 'Z') {
      pids[n] = atoi (name);
      ranks[n] = -1;
      char *envp = g_build_filename ("/proc", name, "environ", NULL);
      gsize len = 0;
      char *env = NULL;
      if (g_file_get_contents (envp, &env, &len, NULL))
        for (char *e = env; e < env + len; e += strlen (e) + 1)
          if (g_str_has_prefix (e, "RANK="))
            ranks[n] = atoi (e + 5);
      g_free (env);
      g_free (envp);
      n++;
    }
    g_free (stat);
  }
  g_dir_close (d);
  return n;
}

static int
worker_pid (int rank)
{
  int pids[16], ranks[16];
  const int n = list_workers (pids, ranks, 16);
  for (int i = 0; i < n; i++)
    if (ranks[i] == rank)
      return pids[i];
  return -1;
}

static void
test_identical (void)
{
  GError *err = NULL;
  dp_generator *one = make_generator ("cpu", DP_PROCESSES_THREADS, 3, &err);
  g_assert_no_error (err);
  GByteArray *ref = run_once (one, &err);
  g_assert_no_error (err);
  dp_generator_free (one);
  for (int n = 2; n <= 3; n++) {
    const char *devices = n == 2 ? "cpu,cpu" : "cpu,cpu,cpu";
    gint64 t0 = g_get_monotonic_time ();
    dp_generator *gen = make_generator (devices, DP_PROCESSES_SPAWN, 3, &err);
    g_assert_no_error (err);
    const double setup = (g_get_monotonic_time () - t0) / 1e6;
    g_assert_cmpint (list_workers ((int[16]){ 0 }, (int[16]){ 0 }, 16), ==, n - 1);
    for (int run = 0; run < 2; run++) {
      t0 = g_get_monotonic_time ();
      GByteArray *got = run_once (gen, &err);
      g_assert_no_error (err);
      g_test_message ("%d processes, run %d: %u bytes in %.2f s (setup %.2f s)", n, run, got->len,
                      (g_get_monotonic_time () - t0) / 1e6, setup);
      g_assert_cmpmem (got->data, got->len, ref->data, ref->len);
      g_byte_array_unref (got);
    }
    dp_generator_free (gen);
    g_assert_cmpint (list_workers ((int[16]){ 0 }, (int[16]){ 0 }, 16), ==, 0);
  }
  g_byte_array_unref (ref);
}

/* Prompt changes reach the workers: a prompt schedule (block 1) and a
 * change of prompt, negative prompt and guidance set from the frame
 * callback once block 0 is out give, over 2 processes, the frames of 2
 * stages on threads with the same changes, bit for bit.  (Which block
 * takes a change set from the callback depends on the stage count: stage
 * 0 embeds passes ahead of the predictions it applies, more so with more
 * stages; for a given count it is fixed.) */
#define STEER_FRAMES 49 /* 13 latent frames: 6 blocks */

typedef struct {
  sink s;
  dp_generator *gen;
  gboolean changed;
  int applied;
  int64_t applied_block[4];
} steer_sink;

static gboolean
on_frames_steer (const uint8_t *rgb, int n, int64_t first, const dp_progress *p, void *data)
{
  steer_sink *ss = data;
  gboolean go = on_frames (rgb, n, first, p, &ss->s);
  if (!ss->changed && ss->s.frames >= 9) {
    GError *err = NULL;
    g_assert_true (dp_generator_set_prompt (ss->gen, "a green ball moving down", "blurry", 3.0, &err));
    g_assert_no_error (err);
    ss->changed = TRUE;
  }
  return go;
}

static void
on_applied (const dp_prompt_change *c, void *data)
{
  steer_sink *ss = data;
  if (ss->applied < 4)
    ss->applied_block[ss->applied] = c->block;
  ss->applied++;
}

static GByteArray *
steer_run (const char *devices, dp_processes processes, int64_t *live_block)
{
  GError *err = NULL;
  dp_generator_params p;
  dist_params (&p, devices, processes, 3);
  p.prompt = NULL;
  p.prompt_schedule = "0: a red ball moving to the right\n9: a blue square moving to the left\n";
  p.num_frames = STEER_FRAMES;
  steer_sink ss = { { g_byte_array_new (), 0, 0, 0 } };
  ss.gen = dp_generator_new (&p, &err);
  g_assert_no_error (err);
  dp_generator_set_prompt_callback (ss.gen, on_applied, &ss);
  g_assert_true (dp_generator_run (ss.gen, on_frames_steer, &ss, &err));
  g_assert_no_error (err);
  g_assert_cmpint (ss.s.frames, ==, STEER_FRAMES);
  g_test_message ("%s%s: %d changes applied, at blocks %" G_GINT64_FORMAT " and %" G_GINT64_FORMAT, devices,
                  processes == DP_PROCESSES_SPAWN ? " (processes)" : " (threads)", ss.applied,
                  ss.applied_block[0], ss.applied_block[1]);
  g_assert_cmpint (ss.applied, ==, 2);
  g_assert_cmpint (ss.applied_block[0], ==, 1);
  g_assert_cmpint (ss.applied_block[1], >, 1);
  *live_block = ss.applied_block[1];
  dp_generator_free (ss.gen);
  return ss.s.rgb;
}

static void
test_steer (void)
{
  int64_t ref_block = -1, got_block = -2;
  GByteArray *ref = steer_run ("cpu,cpu", DP_PROCESSES_THREADS, &ref_block);
  GByteArray *got = steer_run ("cpu,cpu", DP_PROCESSES_SPAWN, &got_block);
  g_assert_cmpint (got_block, ==, ref_block);
  g_assert_cmpmem (got->data, got->len, ref->data, ref->len);
  g_byte_array_unref (got);
  g_assert_cmpint (list_workers ((int[16]){ 0 }, (int[16]){ 0 }, 16), ==, 0);
  g_byte_array_unref (ref);
}

/* A worker killed (SIGKILL) or stopped (SIGSTOP) after the first frames. */
typedef struct {
  int signal;
  int rank;
  sink s;
  gint64 signalled_us;
} fault;

static gboolean
on_frames_fault (const uint8_t *rgb, int n, int64_t first, const dp_progress *p, void *data)
{
  fault *f = data;
  on_frames (rgb, n, first, p, &f->s);
  if (!f->signalled_us) {
    const int pid = worker_pid (f->rank);
    g_assert_cmpint (pid, >, 0);
    g_assert_cmpint (kill (pid, f->signal), ==, 0);
    f->signalled_us = g_get_monotonic_time ();
  }
  return TRUE;
}

static void
test_fault (gconstpointer data)
{
  const int sig = GPOINTER_TO_INT (data);
  GError *err = NULL;
  /* Silence counts as a hang after 2 s here (default 10). */
  g_setenv ("DUALPARAL_HEARTBEAT_TIMEOUT", "2", TRUE);
  dp_generator *one = make_generator ("cpu", DP_PROCESSES_THREADS, 3, &err);
  g_assert_no_error (err);
  GByteArray *ref = run_once (one, &err);
  dp_generator_free (one);
  /* Many steps: the run is far from its end when the worker goes. */
  dp_generator *gen = make_generator ("cpu,cpu,cpu", DP_PROCESSES_SPAWN, 16, &err);
  g_assert_no_error (err);
  fault f = { sig, 2, { g_byte_array_new (), 0, 0, 0 }, 0 };
  g_assert_false (dp_generator_run (gen, on_frames_fault, &f, &err));
  const double after = (g_get_monotonic_time () - f.signalled_us) / 1e6;
  g_assert_nonnull (err);
  g_test_message ("%s of rank 2: \"%s\" after %.2f s", sig == SIGKILL ? "SIGKILL" : "SIGSTOP", err->message, after);
  g_assert_nonnull (strstr (err->message, "rank 2 (host "));
  g_assert_nonnull (strstr (err->message, sig == SIGKILL ? "died" : "fell silent"));
  g_assert_cmpfloat (after, <, 10.0);
  g_clear_error (&err);
  /* The lost worker is gone already; the others are alive and idle. */
  g_assert_cmpint (worker_pid (2), ==, -1);
  g_assert_cmpint (worker_pid (1), >, 0);
  g_byte_array_unref (f.s.rgb);
  dp_generator_free (gen);
  g_assert_cmpint (list_workers ((int[16]){ 0 }, (int[16]){ 0 }, 16), ==, 0);

  /* A new run after the failure works (a new worker for rank 2). */
  gen = make_generator ("cpu,cpu,cpu", DP_PROCESSES_SPAWN, 3, &err);
  g_assert_no_error (err);
  fault kill_first = { SIGKILL, 2, { g_byte_array_new (), 0, 0, 0 }, 0 };
  g_assert_false (dp_generator_run (gen, on_frames_fault, &kill_first, &err));
  g_clear_error (&err);
  g_byte_array_unref (kill_first.s.rgb);
  GByteArray *again = run_once (gen, &err);
  g_assert_no_error (err);
  g_assert_cmpmem (again->data, again->len, ref->data, ref->len);
  g_byte_array_unref (again);
  dp_generator_free (gen);
  g_assert_cmpint (list_workers ((int[16]){ 0 }, (int[16]){ 0 }, 16), ==, 0);
  g_byte_array_unref (ref);
  g_unsetenv ("DUALPARAL_HEARTBEAT_TIMEOUT");
}

/* ------------------------------------------------------------ socket transport */

/* A TCP connection over loopback: *a connects, *b is accepted. */
static void
tcp_pair (GSocket *listener, int port, GSocketConnection **a, GSocketConnection **b)
{
  GSocketClient *client = g_socket_client_new ();
  GError *err = NULL;
  *a = g_socket_client_connect_to_host (client, "127.0.0.1", (guint16) port, NULL, &err);
  g_assert_no_error (err);
  *b = dp_dist_accept (listener, 5, NULL, &err);
  g_assert_no_error (err);
  g_object_unref (client);
}

typedef struct {
  dp_transport *t;
  int self, peer;
  dp_tensor *buf;
  gboolean ok;
  GError *error;
} transfer_job;

static gpointer
recv_thread (gpointer data)
{
  transfer_job *j = data;
  dp_transport_req *r = dp_transport_irecv (j->t, j->self, j->peer, j->buf, &j->error);
  j->ok = r && dp_transport_wait (j->t, r, &j->error);
  return NULL;
}

/* Two processes' transports in one: stage 0 and stage 1 of 2, linked by
 * real TCP connections.  F32 arrives exactly, BF16 hidden states rounded to
 * nearest even, predictions to stage 0 stay F32, a size mismatch fails
 * both sides, a cancel ends a wait at once, a closed peer fails a wait. */
static void
test_socket_transport (void)
{
  GError *err = NULL;
  int port = 0;
  GSocket *listener = dp_dist_listen ("127.0.0.1", 0, &port, &err);
  g_assert_no_error (err);
  dp_backend *be0 = dp_test_cpu_backend (), *be1 = dp_test_cpu_backend ();
  for (int bf16 = 0; bf16 <= 1; bf16++) {
    dp_transport *t0 = dp_transport_new_process (2, 0, be0, bf16, "socket", &err);
    dp_transport *t1 = dp_transport_new_process (2, 1, be1, bf16, "socket", &err);
    g_assert_no_error (err);
    GSocketConnection *c01a, *c01b, *c10a, *c10b;
    tcp_pair (listener, port, &c01a, &c01b);
    tcp_pair (listener, port, &c10a, &c10b);
    g_assert_true (dp_transport_attach (t0, G_IO_STREAM (c01a), G_IO_STREAM (c10b), &err));
    g_assert_true (dp_transport_attach (t1, G_IO_STREAM (c10a), G_IO_STREAM (c01b), &err));
    g_assert_no_error (err);

    enum { N = 1000 };
    float src[N], dst[N], back[N];
    for (int i = 0; i < N; i++)
      src[i] = (float) (i - 500) * 0.01234567f + 1e-3f * (float) (i % 7);
    dp_tensor ts = dp_tensor_view (src, DP_F32, 1, (int64_t[]){ N });
    dp_tensor td = dp_tensor_view (dst, DP_F32, 1, (int64_t[]){ N });
    dp_tensor tb = dp_tensor_view (back, DP_F32, 1, (int64_t[]){ N });
    /* 0 -> 1 (a hidden state), then 1 -> 0 (a prediction). */
    dp_transport_req *rr = dp_transport_irecv (t1, 1, 0, &td, &err);
    dp_transport_req *rs = dp_transport_isend (t0, 0, 1, &ts, &err);
    g_assert_true (dp_transport_wait (t0, rs, &err) && dp_transport_wait (t1, rr, &err));
    g_assert_no_error (err);
    for (int i = 0; i < N; i++) {
      if (!bf16) {
        g_assert_cmpfloat (dst[i], ==, src[i]);
      } else {
        guint32 u;
        memcpy (&u, &src[i], 4);
        u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u; /* round to nearest even */
        float want;
        memcpy (&want, &u, 4);
        g_assert_cmpfloat (dst[i], ==, want);
      }
    }
    rr = dp_transport_irecv (t0, 0, 1, &tb, &err);
    rs = dp_transport_isend (t1, 1, 0, &td, &err);
    g_assert_true (dp_transport_wait (t1, rs, &err) && dp_transport_wait (t0, rr, &err));
    g_assert_cmpmem (back, sizeof back, dst, sizeof dst);
    uint64_t sent, received;
    dp_transport_bytes (t0, 0, &sent, &received);
    g_assert_cmpuint (sent, ==, (uint64_t) N * (bf16 ? 2 : 4));
    g_assert_cmpuint (received, ==, (uint64_t) N * 4);

    /* Sizes that disagree: both sides fail. */
    dp_tensor shorter = dp_tensor_view (dst, DP_F32, 1, (int64_t[]){ N - 1 });
    rr = dp_transport_irecv (t1, 1, 0, &shorter, &err);
    rs = dp_transport_isend (t0, 0, 1, &ts, &err);
    g_assert_true (dp_transport_wait (t0, rs, &err));
    g_assert_false (dp_transport_wait (t1, rr, &err));
    g_assert_error (err, DP_ERROR, DP_ERROR_SHAPE);
    g_test_message ("%s", err->message);
    g_clear_error (&err);

    /* A wait for a message that never comes ends at a cancel. */
    transfer_job j = { t0, 0, 1, &tb, FALSE, NULL };
    GThread *th = g_thread_new ("recv", recv_thread, &j);
    g_usleep (100000);
    gint64 t_cancel = g_get_monotonic_time ();
    dp_transport_cancel (t0);
    g_thread_join (th);
    g_assert_false (j.ok);
    g_assert_error (j.error, DP_ERROR, DP_ERROR_CANCELLED);
    g_assert_cmpint (g_get_monotonic_time () - t_cancel, <, 1000000);
    g_clear_error (&j.error);
    dp_transport_reset (t0);

    /* The peer goes away: a waiting receive fails with an I/O error. */
    dp_transport_detach (t0);
    tcp_pair (listener, port, &c01a, &c01b);
    tcp_pair (listener, port, &c10a, &c10b);
    g_assert_true (dp_transport_attach (t0, G_IO_STREAM (c01a), G_IO_STREAM (c10b), &err));
    g_assert_true (dp_transport_attach (t1, G_IO_STREAM (c10a), G_IO_STREAM (c01b), &err));
    j = (transfer_job){ t0, 0, 1, &tb, FALSE, NULL };
    th = g_thread_new ("recv", recv_thread, &j);
    dp_transport_free (t1);
    g_thread_join (th);
    g_assert_false (j.ok);
    g_assert_error (j.error, DP_ERROR, DP_ERROR_IO);
    g_test_message ("%s", j.error->message);
    g_clear_error (&j.error);
    dp_transport_free (t0);
    for (GSocketConnection **c = (GSocketConnection *[]){ c01a, c01b, c10a, c10b, NULL }; *c; c++)
      g_object_unref (*c);
  }
  dp_backend_free (be0);
  dp_backend_free (be1);
  g_object_unref (listener);
}

/* BF16 hidden states on the wire between processes: the frames stay within
 * a few levels of the F32 ones. */
static void
test_wire_bf16 (void)
{
  GError *err = NULL;
  dp_generator *one = make_generator ("cpu", DP_PROCESSES_THREADS, 3, &err);
  GByteArray *ref = run_once (one, &err);
  g_assert_no_error (err);
  dp_generator_free (one);
  dp_generator_params p;
  dist_params (&p, "cpu,cpu", DP_PROCESSES_SPAWN, 3);
  p.wire_bf16 = TRUE;
  dp_generator *gen = dp_generator_new (&p, &err);
  g_assert_no_error (err);
  GByteArray *got = run_once (gen, &err);
  g_assert_no_error (err);
  int worst = 0;
  guint differ = 0;
  for (guint i = 0; i < got->len; i++) {
    const int d = abs ((int) got->data[i] - (int) ref->data[i]);
    worst = MAX (worst, d);
    differ += d != 0;
  }
  g_test_message ("BF16 on the wire: %u of %u bytes differ from F32, by at most %d levels", differ, got->len, worst);
  g_assert_cmpint (worst, <=, 8);
  g_byte_array_unref (got);
  g_byte_array_unref (ref);
  dp_generator_free (gen);
}

/* The Wan2.2 models, 9 frames (3 latent frames in blocks of P 1 + C 1, so
 * windows have context frames) on 2 stages, threads or worker processes:
 * - wan22/tiny-wan22, two experts (the switch after step 0): a worker
 *   process loads its layers of both experts;
 * - ti2v/tiny-ti2v, per-token timesteps: SETUP carries per_token_time, so
 *   a worker's stage gives the context frames their own timestep as the
 *   thread stages do. */
static GByteArray *
wan22_run (const char *set, const char *model, dp_processes processes)
{
  GError *err = NULL;
  dp_generator_params p;
  dist_params (&p, "cpu,cpu", processes, 4);
  char *dir = dp_test_data_path (set, model, NULL);
  p.model_dir = dir;
  p.num_frames = 9;
  p.block_frames = 1;
  p.context_frames = 1;
  if (strcmp (set, "wan22") == 0)
    p.guidance_scale_2 = 3.0;
  dp_generator *gen = dp_generator_new (&p, &err);
  g_assert_no_error (err);
  int w, h;
  dp_generator_get_size (gen, &w, &h);
  sink s = { g_byte_array_new (), 0, 0, 0, (guint) (w * h * 3) };
  g_assert_true (dp_generator_run (gen, on_frames, &s, &err));
  g_assert_no_error (err);
  g_assert_cmpint (s.frames, ==, 9);
  dp_generator_free (gen);
  g_free (dir);
  return s.rgb;
}

/* data: "SET/MODEL" under tests/data; 2 processes give the frames of 2
 * thread stages, bitwise. */
static void
test_wan22_processes (gconstpointer data)
{
  char **parts = g_strsplit (data, "/", 2);
  GByteArray *threads = wan22_run (parts[0], parts[1], DP_PROCESSES_THREADS);
  GByteArray *procs = wan22_run (parts[0], parts[1], DP_PROCESSES_SPAWN);
  g_assert_cmpmem (procs->data, procs->len, threads->data, threads->len);
  g_byte_array_unref (threads);
  g_byte_array_unref (procs);
  g_strfreev (parts);
}

/* ------------------------------------------------------------ refusals */

static int
free_port (void)
{
  int port = 0;
  GSocket *s = dp_dist_listen ("127.0.0.1", 0, &port, NULL);
  g_assert_nonnull (s);
  g_object_unref (s);
  return port;
}

/* This process as rank 0 of a two-process launcher job. */
static void
launcher_env (int port, const char *secret)
{
  char buf[16];
  g_setenv ("RANK", "0", TRUE);
  g_setenv ("WORLD_SIZE", "2", TRUE);
  g_setenv ("MASTER_ADDR", "127.0.0.1", TRUE);
  g_snprintf (buf, sizeof buf, "%d", port);
  g_setenv ("MASTER_PORT", buf, TRUE);
  g_setenv ("DUALPARAL_SECRET", secret, TRUE);
  g_setenv ("DUALPARAL_CONNECT_TIMEOUT", "4", TRUE);
}

static void
launcher_env_clear (void)
{
  for (const char **v = (const char *[]){ "RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "DUALPARAL_SECRET",
                                          "DUALPARAL_CONNECT_TIMEOUT", NULL };
       *v; v++)
    g_unsetenv (*v);
}

static GSubprocess *
start_worker (int port, const char *secret, const char *model)
{
  GSubprocessLauncher *l = g_subprocess_launcher_new (G_SUBPROCESS_FLAGS_STDERR_PIPE);
  char buf[16];
  g_snprintf (buf, sizeof buf, "%d", port);
  g_subprocess_launcher_setenv (l, "RANK", "1", TRUE);
  g_subprocess_launcher_setenv (l, "WORLD_SIZE", "2", TRUE);
  g_subprocess_launcher_setenv (l, "MASTER_ADDR", "127.0.0.1", TRUE);
  g_subprocess_launcher_setenv (l, "MASTER_PORT", buf, TRUE);
  g_subprocess_launcher_setenv (l, "DUALPARAL_SECRET", secret, TRUE);
  g_subprocess_launcher_setenv (l, "DUALPARAL_CONNECT_TIMEOUT", "10", TRUE);
  GError *err = NULL;
  const char *prog = g_getenv ("DUALPARAL_WORKER");
  g_assert_nonnull (prog);
  GSubprocess *p = model ? g_subprocess_launcher_spawn (l, &err, prog, "--device", "cpu", "--model", model, NULL)
                         : g_subprocess_launcher_spawn (l, &err, prog, "--device", "cpu", NULL);
  g_assert_no_error (err);
  g_object_unref (l);
  return p;
}

/* Waits for the worker's exit; its stderr. */
static char *
worker_stderr (GSubprocess *p, int *status)
{
  char *text = NULL;
  GError *err = NULL;
  g_assert_true (g_subprocess_communicate_utf8 (p, NULL, NULL, NULL, &text, &err));
  g_assert_no_error (err);
  *status = g_subprocess_get_exit_status (p);
  return text;
}

static void
test_wrong_secret (void)
{
  const int port = free_port ();
  launcher_env (port, "the right secret");
  GSubprocess *w = start_worker (port, "a wrong secret", NULL);
  GError *err = NULL;
  dp_generator *gen = make_generator ("cpu", DP_PROCESSES_LAUNCHER, 3, &err);
  g_assert_null (gen);
  g_test_message ("rank 0: %s", err->message);
  g_assert_nonnull (strstr (err->message, "refused"));
  g_assert_nonnull (strstr (err->message, "secret"));
  g_clear_error (&err);
  /* The worker refused rank 0 here; rank 0 lists it in its error. */
  int status;
  char *text = worker_stderr (w, &status);
  g_test_message ("worker (exit %d): %s", status, text);
  g_assert_cmpint (status, ==, 1);
  g_assert_nonnull (strstr (text, "does not hold this job's secret"));
  g_free (text);
  g_object_unref (w);
  launcher_env_clear ();
}

/* A client of this test plays a worker that lies: a wrong protocol version,
 * or a proof made without the secret. */
typedef struct {
  int port;
  int version;     /* of its HELLO */
  gboolean forge;  /* send a made-up proof */
  char *reply;     /* what rank 0 said (the error text) */
} intruder;

static gpointer
intruder_thread (gpointer data)
{
  intruder *in = data;
  GSocketClient *client = g_socket_client_new ();
  GSocketConnection *conn = NULL;
  for (int i = 0; i < 100 && !conn; i++) {
    conn = g_socket_client_connect_to_host (client, "127.0.0.1", (guint16) in->port, NULL, NULL);
    if (!conn)
      g_usleep (50000);
  }
  g_assert_nonnull (conn);
  dp_ctl_conn *c = dp_ctl_conn_new (conn);
  const char *hello = "{\"rank\": 1, \"world_size\": 2, \"pid\": 1, \"host\": \"intruder\", \"nonce\": \"abc\"}";
  g_assert_true (dp_ctl_send_version (c, in->version, DP_CTL_HELLO, hello, strlen (hello), NULL));
  dp_ctl_msg m;
  GError *err = NULL;
  if (dp_ctl_recv (c, 10, &m, &err) && m.type == DP_CTL_CHALLENGE && in->forge) {
    dp_ctl_msg_clear (&m);
    const char *auth = "{\"proof\": \"0000000000000000000000000000000000000000000000000000000000000000\"}";
    g_assert_true (dp_ctl_send (c, DP_CTL_AUTH, auth, strlen (auth), NULL));
    g_assert_true (dp_ctl_recv (c, 10, &m, &err));
  }
  if (err) {
    in->reply = g_strdup (err->message);
  } else {
    g_assert_cmpint (m.type, ==, DP_CTL_ERROR);
    GError *e = dp_ctl_error_from_msg (&m, "rank 0");
    in->reply = g_strdup (e->message);
    g_error_free (e);
    dp_ctl_msg_clear (&m);
  }
  g_clear_error (&err);
  dp_ctl_conn_free (c);
  g_object_unref (conn);
  g_object_unref (client);
  return NULL;
}

static void
test_intruder (gconstpointer data)
{
  const gboolean forge = GPOINTER_TO_INT (data);
  intruder in = { free_port (), forge ? DP_CTL_VERSION : 99, forge, NULL };
  launcher_env (in.port, "the right secret");
  GThread *t = g_thread_new ("intruder", intruder_thread, &in);
  GError *err = NULL;
  g_assert_null (make_generator ("cpu", DP_PROCESSES_LAUNCHER, 3, &err));
  g_thread_join (t);
  g_test_message ("rank 0: %s", err->message);
  g_test_message ("intruder was told: %s", in.reply);
  g_assert_nonnull (strstr (err->message, "refused"));
  g_assert_true (warned ("rank 0 refused a connection from 127.0.0.1:"));
  if (forge) {
    g_assert_nonnull (strstr (err->message, "does not hold this job's secret"));
    g_assert_nonnull (strstr (in.reply, "does not hold this job's secret"));
  } else {
    char *want = g_strdup_printf ("protocol version 99, this is version %d", DP_CTL_VERSION);
    g_assert_nonnull (strstr (err->message, want));
    g_free (want);
    g_assert_nonnull (strstr (in.reply, "protocol version"));
  }
  g_clear_error (&err);
  g_free (in.reply);
  launcher_env_clear ();
}

/* A worker that cannot make its stage (here: a device that does not exist)
 * fails the start with its own error, prefixed with its rank, and leaves
 * no process. */
static void
test_worker_cannot_load (void)
{
  GError *err = NULL;
  g_assert_null (make_generator ("cpu,cuda:99", DP_PROCESSES_SPAWN, 3, &err));
  g_test_message ("%s", err->message);
  g_assert_nonnull (strstr (err->message, "rank 1 ("));
  g_assert_nonnull (strstr (err->message, "cuda:99"));
  g_clear_error (&err);
  g_assert_cmpint (list_workers ((int[16]){ 0 }, (int[16]){ 0 }, 16), ==, 0);
}

/* A worker whose model is not rank 0's: refused at start. */
static void
test_other_model (void)
{
  char *tmp = dp_test_make_tmp_dir ("dp-dist-XXXXXX");
  char *copy = g_build_filename (tmp, "model", NULL);
  dp_test_copy_tree (model_dir (), copy);
  char *config = g_build_filename (copy, "transformer", "config.json", NULL);
  char *text = dp_test_read_file (config, NULL);
  char *at = strstr (text, "\"eps\": 1e-06");
  g_assert_nonnull (at);
  at[strlen ("\"eps\": 1e-0")] = '5';
  g_assert_true (g_file_set_contents (config, text, -1, NULL));
  const int port = free_port ();
  launcher_env (port, "s");
  GSubprocess *w = start_worker (port, "s", copy);
  GError *err = NULL;
  g_assert_null (make_generator ("cpu", DP_PROCESSES_LAUNCHER, 3, &err));
  g_test_message ("rank 0: %s", err->message);
  g_assert_nonnull (strstr (err->message, "rank 1 (host "));
  g_assert_nonnull (strstr (err->message, "sees a different model"));
  g_clear_error (&err);
  int status;
  char *out = worker_stderr (w, &status);
  g_test_message ("worker (exit %d): %s", status, out);
  g_free (out);
  g_object_unref (w);
  launcher_env_clear ();
  dp_test_remove_tree (tmp);
  g_free (text);
  g_free (config);
  g_free (copy);
  g_free (tmp);
}

int
main (int argc, char **argv)
{
  /* Rank 0 and the workers it spawns (they inherit the environment): no
   * spinning OpenBLAS pool, as in dualparal-generate; three processes share
   * two cores here. */
  dp_openblas_quiet_reexec (argv);
  g_test_init (&argc, &argv, NULL);
  warnings = g_ptr_array_new_with_free_func (g_free);
  g_test_add_func ("/dist/socket-transport", test_socket_transport);
  g_test_add_func ("/dist/identical", test_identical);
  g_test_add_func ("/dist/wire-bf16", test_wire_bf16);
  g_test_add_data_func ("/dist/two-experts", "wan22/tiny-wan22", test_wan22_processes);
  g_test_add_data_func ("/dist/ti2v", "ti2v/tiny-ti2v", test_wan22_processes);
  g_test_add_func ("/dist/steer", test_steer);
  g_test_add_data_func ("/dist/worker-killed", GINT_TO_POINTER (SIGKILL), test_fault);
  g_test_add_data_func ("/dist/worker-hung", GINT_TO_POINTER (SIGSTOP), test_fault);
  g_test_add_func ("/dist/wrong-secret", test_wrong_secret);
  g_test_add_data_func ("/dist/wrong-version", GINT_TO_POINTER (FALSE), test_intruder);
  g_test_add_data_func ("/dist/forged-proof", GINT_TO_POINTER (TRUE), test_intruder);
  g_test_add_func ("/dist/other-model", test_other_model);
  g_test_add_func ("/dist/worker-cannot-load", test_worker_cannot_load);
  const int status = g_test_run ();
  g_ptr_array_unref (warnings);
  return status;
}
