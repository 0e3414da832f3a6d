/* The CPU backend's threads (issue 17): the "cpu:N" spec and the
 * generator's threads setting reach the backend's pool, bad values are
 * refused with errors naming them, results do not depend on the thread
 * count, idle threads sleep instead of spinning, and the pool
 * (dp_cpu_parallel_for) runs every index once, nests and shares serially,
 * and never waits for a worker that has not started.
 *
 * main () executes the program again with OPENBLAS_NUM_THREADS=1, as
 * dualparal-generate does (dp_openblas_quiet_reexec). */
#include <math.h>
#include <semaphore.h>
#include <signal.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "dualparal/backend.h"
#include "dualparal/generator.h"
#include "cpu/backend_cpu.h"

static void
test_spec (void)
{
  GError *err = NULL;
  dp_backend *be = dp_backend_new ("cpu:3", &err);
  g_assert_no_error (err);
  g_assert_cmpint (dp_backend_threads (be), ==, 3);
  dp_backend *one = dp_backend_new ("cpu:1", &err);
  g_assert_no_error (err);
  g_assert_cmpint (dp_backend_threads (one), ==, 1);
  dp_backend_free (one);
  dp_backend_free (be);

  be = dp_backend_new ("cpu", &err);
  g_assert_no_error (err);
  g_assert_cmpint (dp_backend_threads (be), ==, dp_cpu_available ());
  g_assert_cmpint (dp_backend_threads (be), >=, 1);
  dp_backend_free (be);

  const char *bad[] = { "cpu:0", "cpu:-1", "cpu:", "cpu:two", "cpu:1025", "cpu:2x", "cpu2" };
  for (guint i = 0; i < G_N_ELEMENTS (bad); i++) {
    g_assert_null (dp_backend_new (bad[i], &err));
    g_assert_error (err, DP_ERROR, DP_ERROR_INVALID);
    g_assert_nonnull (strstr (err->message, bad[i]));
    g_clear_error (&err);
  }
}

static void
test_quota (void)
{
  g_assert_cmpint (dp_cpu_quota_cpus ("max 100000\n", NULL), ==, 0);
  g_assert_cmpint (dp_cpu_quota_cpus ("200000 100000\n", NULL), ==, 2);
  g_assert_cmpint (dp_cpu_quota_cpus ("150000 100000", NULL), ==, 2); /* 1.5 CPUs: 2 threads */
  g_assert_cmpint (dp_cpu_quota_cpus ("50000 100000", NULL), ==, 1);
  g_assert_cmpint (dp_cpu_quota_cpus ("-1\n", "100000\n"), ==, 0);
  g_assert_cmpint (dp_cpu_quota_cpus ("400000\n", "100000\n"), ==, 4);
  g_assert_cmpint (dp_cpu_quota_cpus ("", NULL), ==, 0);
  g_assert_cmpint (dp_cpu_quota_cpus ("garbage", NULL), ==, 0);
  g_assert_cmpint (dp_cpu_quota_cpus (NULL, NULL), ==, 0);
  /* Whatever this machine's quota, auto stays within the affinity mask
   * unless OMP_NUM_THREADS says otherwise. */
  if (g_getenv ("OMP_NUM_THREADS") == NULL) {
    g_assert_cmpint (dp_cpu_available (), >=, 1);
    g_assert_cmpint (dp_cpu_available (), <=, (int) g_get_num_processors ());
  }
}

/* OMP_NUM_THREADS keeps its documented meaning without OpenMP: its first
 * number, a bad value ignored (as libgomp ignores it). */
static void
test_omp_num_threads (void)
{
  char *saved = g_strdup (g_getenv ("OMP_NUM_THREADS"));
  g_unsetenv ("OMP_NUM_THREADS");
  const int fallback = dp_cpu_available ();
  struct {
    const char *value;
    int want; /* 0: the fallback */
  } cases[] = { { "3", 3 }, { "4,2", 4 }, { " 5 ", 5 }, { "1", 1 }, { "0", 0 }, { "-2", 0 },
                { "two", 0 }, { "", 0 }, { "3x", 0 }, { "99999", DP_CPU_MAX_THREADS } };
  for (guint i = 0; i < G_N_ELEMENTS (cases); i++) {
    g_setenv ("OMP_NUM_THREADS", cases[i].value, TRUE);
    g_assert_cmpint (dp_cpu_available (), ==, cases[i].want ? cases[i].want : fallback);
  }
  if (saved)
    g_setenv ("OMP_NUM_THREADS", saved, TRUE);
  else
    g_unsetenv ("OMP_NUM_THREADS");
  g_free (saved);
}

static void
test_assign (void)
{
  const int avail = dp_cpu_available ();
  struct {
    const char *devices;
    int threads;
    const char *want; /* NULL: computed from avail below */
  } cases[] = {
    { "cpu", 4, "cpu:4" },
    { "cpu,cpu", 5, "cpu:3,cpu:2" },
    { "cpu,cpu,cpu", 2, "cpu:1,cpu:1,cpu:1" }, /* at least one each */
    { "cpu:4,cpu", 3, "cpu:4,cpu:3" },
    { "cpu:2,cpu:1", 8, "cpu:2,cpu:1" },
    { "0,1", 4, "0,1" },
    { "cuda:1", 0, "cuda:1" },
    { NULL, 2, "cpu:2" },
  };
  for (guint i = 0; i < G_N_ELEMENTS (cases); i++) {
    GError *err = NULL;
    char *got = dp_cpu_assign_threads (cases[i].devices, cases[i].threads, &err);
    g_assert_no_error (err);
    g_assert_cmpstr (got, ==, cases[i].want);
    g_free (got);
  }
  /* Auto: the available CPUs, for each stage. */
  GError *err = NULL;
  char *got = dp_cpu_assign_threads ("cpu", 0, &err);
  g_assert_no_error (err);
  g_assert_cmpint (dp_cpu_threads_in (got), ==, avail);
  g_free (got);
  got = dp_cpu_assign_threads ("cpu,cpu", 0, &err);
  g_assert_no_error (err);
  char *want = g_strdup_printf ("cpu:%d,cpu:%d", avail, avail); /* each stage the machine */
  g_assert_cmpstr (got, ==, want);
  g_free (want);
  g_free (got);
  /* Refused. */
  g_assert_null (dp_cpu_assign_threads ("cpu", -1, &err));
  g_assert_error (err, DP_ERROR, DP_ERROR_INVALID);
  g_assert_nonnull (strstr (err->message, "threads -1"));
  g_clear_error (&err);
  g_assert_null (dp_cpu_assign_threads ("cpu", DP_CPU_MAX_THREADS + 1, &err));
  g_assert_error (err, DP_ERROR, DP_ERROR_INVALID);
  g_clear_error (&err);
}

/* A GEMM and an attention on 1 and on 3 threads agree to rounding. */
static void
test_same_results (void)
{
  GError *err = NULL;
  dp_backend *b1 = dp_backend_new ("cpu:1", &err), *b3 = dp_backend_new ("cpu:3", &err);
  g_assert_no_error (err);
  const int64_t M = 200, K = 96, N = 160;
  dp_tensor x = dp_tensor_new_host (DP_F32, 2, (int64_t[]){ M, K });
  dp_tensor w = dp_tensor_new_host (DP_F32, 2, (int64_t[]){ N, K });
  dp_tensor y1 = dp_tensor_new_host (DP_F32, 2, (int64_t[]){ M, N });
  dp_tensor y3 = dp_tensor_new_host (DP_F32, 2, (int64_t[]){ M, N });
  float *xd = x.data, *wd = w.data;
  for (int64_t i = 0; i < M * K; i++)
    xd[i] = sinf ((float) i * 0.37f);
  for (int64_t i = 0; i < N * K; i++)
    wd[i] = cosf ((float) i * 0.11f) * 0.1f;
  b1->ops->linear (b1, &y1, &x, &w, NULL, DP_ACT_GELU_TANH);
  b3->ops->linear (b3, &y3, &x, &w, NULL, DP_ACT_GELU_TANH);
  /* attention: [1, L, H, d] with L = M tokens, H * d = K */
  dp_tensor q = dp_tensor_view (x.data, DP_F32, 4, (int64_t[]){ 1, M, 4, 24 });
  dp_tensor o1 = dp_tensor_new_host (DP_F32, 4, (int64_t[]){ 1, M, 4, 24 });
  dp_tensor o3 = dp_tensor_new_host (DP_F32, 4, (int64_t[]){ 1, M, 4, 24 });
  dp_attn_params ap = { .scale = 1.0f / sqrtf (24.0f) };
  b1->ops->attention (b1, &o1, &q, &q, &q, &ap);
  b3->ops->attention (b3, &o3, &q, &q, &q, &ap);
  g_assert_true (dp_backend_check (b1, &err));
  g_assert_true (dp_backend_check (b3, &err));
  const float *a = y1.data, *b = y3.data;
  for (int64_t i = 0; i < M * N; i++)
    g_assert_cmpfloat_with_epsilon (a[i], b[i], 1e-5f * (1.0f + fabsf (a[i])));
  a = o1.data;
  b = o3.data;
  for (int64_t i = 0; i < M * K; i++)
    g_assert_cmpfloat_with_epsilon (a[i], b[i], 1e-5f * (1.0f + fabsf (a[i])));
  dp_tensor *all[] = { &x, &w, &y1, &y3, &o1, &o3 };
  for (guint i = 0; i < G_N_ELEMENTS (all); i++)
    dp_tensor_free (all[i]);
  dp_backend_free (b1);
  dp_backend_free (b3);
}

static dp_generator *
tiny_generator (const char *devices, int threads, GError **error)
{
  dp_generator_params p;
  dp_generator_params_init (&p);
  char *dir = g_build_filename (g_getenv ("DP_TEST_DATA"), "pipeline", "tiny-wan", NULL);
  p.model_dir = dir;
  p.prompt = "a red circle moves to the left";
  p.num_frames = 9;
  p.steps = 2;
  p.engine = strchr (devices, ',') ? DP_ENGINE_DUALPARAL : DP_ENGINE_CLASSIC;
  p.devices = devices;
  p.threads = threads;
  dp_generator *gen = dp_generator_new (&p, error);
  g_free (dir);
  return gen;
}

static void
test_generator (void)
{
  GError *err = NULL;
  g_assert_null (tiny_generator ("cpu", -1, &err));
  g_assert_error (err, DP_ERROR, DP_ERROR_INVALID);
  g_assert_nonnull (strstr (err->message, "threads -1"));
  g_clear_error (&err);
  g_assert_null (tiny_generator ("cpu", 4096, &err));
  g_assert_error (err, DP_ERROR, DP_ERROR_INVALID);
  g_clear_error (&err);
  g_assert_null (tiny_generator ("cpu:0", 0, &err));
  g_assert_error (err, DP_ERROR, DP_ERROR_INVALID);
  g_clear_error (&err);

  dp_generator *gen = tiny_generator ("cpu", 3, &err);
  g_assert_no_error (err);
  g_assert_cmpint (dp_generator_threads (gen), ==, 3);
  dp_generator_free (gen);
  gen = tiny_generator ("cpu", 0, &err);
  g_assert_no_error (err);
  g_assert_cmpint (dp_generator_threads (gen), ==, dp_cpu_available ());
  dp_generator_free (gen);
  /* Two CPU stages share a number given; auto gives each the machine. */
  gen = tiny_generator ("cpu,cpu", 3, &err);
  g_assert_no_error (err);
  g_assert_cmpint (dp_generator_threads (gen), ==, 3);
  dp_generator_free (gen);
  gen = tiny_generator ("cpu,cpu", 0, &err);
  g_assert_no_error (err);
  g_assert_cmpint (dp_generator_threads (gen), ==, 2 * dp_cpu_available ());
  dp_generator_free (gen);
  gen = tiny_generator ("cpu:2,cpu", 1, &err);
  g_assert_no_error (err);
  g_assert_cmpint (dp_generator_threads (gen), ==, 3);
  dp_generator_free (gen);
  /* GPU stages take no CPU threads (only checked where CUDA is absent:
   * the list is then refused, which is the point: no silent fallback). */
  if (!dp_backend_have_cuda ()) {
    g_assert_null (tiny_generator ("cuda:0", 2, &err));
    g_assert_error (err, DP_ERROR, DP_ERROR_UNSUPPORTED);
    g_clear_error (&err);
  }
}

static double
cpu_seconds (void)
{
  struct timespec ts;
  clock_gettime (CLOCK_PROCESS_CPUTIME_ID, &ts);
  return (double) ts.tv_sec + 1e-9 * (double) ts.tv_nsec;
}

/* After an operation, the pool's workers sleep: the process uses (almost)
 * no CPU while the caller waits.  libgomp's default (the OpenMP build
 * before the pool) spun each thread for milliseconds after every region
 * (OMP_WAIT_POLICY=active: for the whole wait), which this caught: 4.8 ms,
 * failed. */
static void
test_idle_sleeps (void)
{
  GError *err = NULL;
  dp_backend *be = dp_backend_new ("cpu:2", &err);
  g_assert_no_error (err);
  const int64_t n = 1 << 20;
  dp_tensor a = dp_tensor_new_host (DP_F32, 1, (int64_t[]){ n });
  dp_tensor y = dp_tensor_new_host (DP_F32, 1, (int64_t[]){ n });
  be->ops->fill (be, &a, 1.5f);
  double worst = 0.0;
  for (int round = 0; round < 3; round++) {
    be->ops->add (be, &y, &a, &a); /* a parallel region of 2 threads */
    g_assert_true (dp_backend_check (be, &err));
    g_assert_cmpfloat (((float *) y.data)[n - 1], ==, 3.0f);
    const double c0 = cpu_seconds ();
    g_usleep (100000);
    worst = MAX (worst, cpu_seconds () - c0);
  }
  g_test_message ("CPU time during 100 ms of idleness after a parallel add: %.2f ms at most",
                  worst * 1e3);
  /* Measured on the 2-CPU development machine: 0.1 ms when the threads
   * sleep at once; with OpenMP, libgomp's default spin 4.8 ms,
   * OMP_WAIT_POLICY=active 54 ms (a thread spinning all along). */
  g_assert_cmpfloat (worst, <, 0.0015);
  dp_tensor_free (&a);
  dp_tensor_free (&y);
  dp_backend_free (be);
}

/* The pool (dp_cpu_parallel_for). */

typedef struct {
  gint *count;       /* per index: times run */
  int nt;
  gint bad_worker;   /* a worker index outside 0..nt-1 */
  gint by_worker[8]; /* chunks run by each worker */
  dp_backend *be;    /* nested: the backend to call again */
  GThread *outer;    /* nested: the thread of the outer chunk */
  gint wrong_thread; /* nested: an inner chunk ran on another thread */
  int delay_us;      /* per chunk */
} cover_ctx;

static void
cover_fn (void *data, int64_t b, int64_t e, int worker)
{
  cover_ctx *c = data;
  if (worker < 0 || worker >= c->nt)
    g_atomic_int_set (&c->bad_worker, 1);
  else if (worker < 8)
    g_atomic_int_inc (&c->by_worker[worker]);
  for (int64_t i = b; i < e; i++)
    g_atomic_int_inc (&c->count[i]);
  if (c->delay_us > 0)
    g_usleep (c->delay_us);
}

static void
assert_once (const gint *count, int64_t n)
{
  for (int64_t i = 0; i < n; i++)
    if (count[i] != 1)
      g_error ("index %" G_GINT64_FORMAT " of %" G_GINT64_FORMAT " ran %d times", i, n, count[i]);
}

/* Every index runs exactly once, on a worker index below the thread count,
 * for many sizes, chunkings and thread counts, loop after loop. */
static void
test_pool_coverage (void)
{
  const int threads[] = { 1, 2, 3, 4, 7 };
  const int64_t sizes[] = { 1, 2, 3, 5, 17, 100, 1000, 4097, 100003 };
  const int64_t chunks[] = { 0, 1, 3, 64 };
  gint *count = g_new0 (gint, 100003);
  for (guint t = 0; t < G_N_ELEMENTS (threads); t++) {
    char spec[16];
    g_snprintf (spec, sizeof spec, "cpu:%d", threads[t]);
    dp_backend *be = dp_backend_new (spec, NULL);
    for (int round = 0; round < 20; round++)
      for (guint s = 0; s < G_N_ELEMENTS (sizes); s++)
        for (guint c = 0; c < G_N_ELEMENTS (chunks); c++) {
          const int64_t n = sizes[s];
          memset (count, 0, (size_t) n * sizeof (gint));
          cover_ctx ctx = { .count = count, .nt = threads[t] };
          dp_cpu_parallel_for (be, n, chunks[c], cover_fn, &ctx);
          assert_once (count, n);
          g_assert_cmpint (ctx.bad_worker, ==, 0);
        }
    /* The workers were started, threads - 1 of them (none for one). */
    g_assert_cmpint (dp_cpu_pool_workers (((dp_cpu_state *) be->priv)->pool), ==, threads[t] - 1);
    dp_backend_free (be);
  }
  /* An empty loop runs nothing. */
  dp_backend *be = dp_backend_new ("cpu:2", NULL);
  cover_ctx ctx = { .count = count, .nt = 2 };
  count[0] = 0;
  dp_cpu_parallel_for (be, 0, 0, cover_fn, &ctx);
  g_assert_cmpint (count[0], ==, 0);
  dp_backend_free (be);
  g_free (count);
}

static void
nested_fn (void *data, int64_t b, int64_t e, int worker)
{
  cover_ctx *c = data;
  /* Each outer item runs an inner loop of 50 items over the same backend:
   * it must run here, serially, as worker 0. */
  for (int64_t i = b; i < e; i++) {
    gint *inner = g_new0 (gint, 50);
    cover_ctx ic = { .count = inner, .nt = 1, .outer = g_thread_self () };
    dp_cpu_parallel_for (c->be, 50, 1, cover_fn, &ic);
    assert_once (inner, 50);
    if (ic.bad_worker) /* an index other than 0: not run by this thread alone */
      g_atomic_int_set (&c->wrong_thread, 1);
    g_free (inner);
    g_atomic_int_inc (&c->count[i]);
  }
}

/* A loop started from inside a chunk runs serially in that thread. */
static void
test_pool_nested (void)
{
  dp_backend *be = dp_backend_new ("cpu:3", NULL);
  gint count[64] = { 0 };
  cover_ctx ctx = { .count = count, .nt = 3, .be = be };
  dp_cpu_parallel_for (be, 64, 1, nested_fn, &ctx);
  assert_once (count, 64);
  g_assert_cmpint (ctx.wrong_thread, ==, 0);
  dp_backend_free (be);
}

static gpointer
shared_thread (gpointer data)
{
  dp_backend *be = data;
  gint *count = g_new0 (gint, 3000);
  for (int round = 0; round < 300; round++) {
    const int64_t n = 1 + (round * 37) % 3000;
    memset (count, 0, (size_t) n * sizeof (gint));
    cover_ctx ctx = { .count = count, .nt = dp_backend_threads (be) };
    dp_cpu_parallel_for (be, n, round % 3, cover_fn, &ctx);
    assert_once (count, n);
    g_assert_cmpint (ctx.bad_worker, ==, 0);
  }
  g_free (count);
  return NULL;
}

/* Two threads using one backend at once: each loop completes, every index
 * once (the one that finds the pool busy runs its chunks itself). */
static void
test_pool_shared (void)
{
  dp_backend *be = dp_backend_new ("cpu:2", NULL);
  GThread *a = g_thread_new ("pool-a", shared_thread, be);
  GThread *b = g_thread_new ("pool-b", shared_thread, be);
  g_thread_join (a);
  g_thread_join (b);
  dp_backend_free (be);
}

/* A worker held in a signal handler: it cannot claim anything, as a worker
 * the scheduler keeps off the CPU. */
static sem_t held_in, held_release;

static void
hold_worker (int sig)
{
  sem_post (&held_in);
  while (sem_wait (&held_release) != 0)
    ;
}

static GArray *
thread_ids (void)
{
  GArray *ids = g_array_new (FALSE, FALSE, sizeof (pid_t));
  GDir *d = g_dir_open ("/proc/self/task", 0, NULL);
  const char *name;
  while (d && (name = g_dir_read_name (d)) != NULL) {
    pid_t id = (pid_t) atoi (name);
    g_array_append_val (ids, id);
  }
  if (d)
    g_dir_close (d);
  return ids;
}

/* A loop never waits for a worker that has not started: with the only
 * worker held, loops complete (the caller runs every chunk), and the
 * worker, once let go, finds nothing of them and the pool goes on. */
static void
test_pool_late_worker (void)
{
  dp_backend *be = dp_backend_new ("cpu:2", NULL);
  GArray *before = thread_ids ();
  gint count[40] = { 0 };
  cover_ctx ctx = { .count = count, .nt = 2 };
  dp_cpu_parallel_for (be, 40, 1, cover_fn, &ctx); /* starts the worker */
  assert_once (count, 40);
  GArray *after = thread_ids ();
  pid_t worker = 0;
  for (guint i = 0; i < after->len; i++) {
    gboolean old = FALSE;
    for (guint j = 0; j < before->len; j++)
      old = old || g_array_index (before, pid_t, j) == g_array_index (after, pid_t, i);
    if (!old)
      worker = g_array_index (after, pid_t, i);
  }
  g_array_unref (before);
  g_array_unref (after);
  g_assert_cmpint (worker, >, 0);

  sem_init (&held_in, 0, 0);
  sem_init (&held_release, 0, 0);
  struct sigaction sa = { .sa_handler = hold_worker, .sa_flags = SA_RESTART }, old_sa;
  sigemptyset (&sa.sa_mask);
  sigaction (SIGUSR1, &sa, &old_sa);
  g_assert_cmpint (syscall (SYS_tgkill, getpid (), worker, SIGUSR1), ==, 0);
  while (sem_wait (&held_in) != 0)
    ;
  /* With OpenMP this would hang at the first region's barrier. */
  const gint64 t0 = g_get_monotonic_time ();
  for (int round = 0; round < 20; round++) {
    memset (count, 0, sizeof count);
    cover_ctx c2 = { .count = count, .nt = 2, .delay_us = 100 };
    dp_cpu_parallel_for (be, 40, 1, cover_fn, &c2);
    assert_once (count, 40);
    g_assert_cmpint (c2.by_worker[1], ==, 0); /* all by the caller */
  }
  /* 20 loops of 40 chunks of 0.1 ms: 80 ms of sleeping, whatever the
   * machine; the bound only catches a loop stuck on the held worker. */
  g_assert_cmpint (g_get_monotonic_time () - t0, <, 5 * G_USEC_PER_SEC);
  sem_post (&held_release);
  /* Let go, the worker takes part again (eventually: it may be slow). */
  gboolean helped = FALSE;
  for (int round = 0; round < 200 && !helped; round++) {
    memset (count, 0, sizeof count);
    cover_ctx c3 = { .count = count, .nt = 2, .delay_us = 200 };
    dp_cpu_parallel_for (be, 40, 1, cover_fn, &c3);
    assert_once (count, 40);
    helped = c3.by_worker[1] > 0;
  }
  g_assert_true (helped);
  sigaction (SIGUSR1, &old_sa, NULL);
  dp_backend_free (be); /* joins the worker */
  sem_destroy (&held_in);
  sem_destroy (&held_release);
}

/* The operations give the same bits on 1, 2 and 3 threads: each output is
 * computed by one chunk whatever the split (GEMM parts included). */
static void
test_ops_bitwise (void)
{
  const char *specs[] = { "cpu:1", "cpu:2", "cpu:3" };
  const int64_t M = 300, K = 128, N = 200;
  dp_tensor x = dp_tensor_new_host (DP_F32, 2, (int64_t[]){ M, K });
  dp_tensor w = dp_tensor_new_host (DP_F32, 2, (int64_t[]){ N, K });
  dp_tensor bias = dp_tensor_new_host (DP_F32, 1, (int64_t[]){ N });
  float *xd = x.data, *wd = w.data;
  for (int64_t i = 0; i < M * K; i++)
    xd[i] = sinf ((float) i * 0.37f);
  for (int64_t i = 0; i < N * K; i++)
    wd[i] = cosf ((float) i * 0.11f) * 0.1f;
  for (int64_t i = 0; i < N; i++)
    ((float *) bias.data)[i] = 0.01f * (float) i;
  /* conv3d: x [C=8, T=3, 24, 24], w [16, 8, 3, 3, 3] */
  dp_tensor cx = dp_tensor_new_host (DP_F32, 4, (int64_t[]){ 8, 3, 24, 24 });
  dp_tensor cw = dp_tensor_new_host (DP_F32, 5, (int64_t[]){ 16, 8, 3, 3, 3 });
  for (int64_t i = 0; i < dp_tensor_nelem (&cx); i++)
    ((float *) cx.data)[i] = sinf ((float) i * 0.013f);
  for (int64_t i = 0; i < dp_tensor_nelem (&cw); i++)
    ((float *) cw.data)[i] = cosf ((float) i * 0.7f) * 0.05f;
  /* the direct conv (stride 1) and im2col + GEMM (stride 2 in h and w) */
  dp_conv3d_params cp = { .stride_t = 1, .stride_h = 1, .stride_w = 1, .pad_t_front = 2, .pad_h = 1, .pad_w = 1 };
  dp_conv3d_params cp2 = { .stride_t = 1, .stride_h = 2, .stride_w = 2, .pad_t_front = 2, .pad_h = 1, .pad_w = 1 };
  dp_tensor y[3], o[3], n[3], c[3], c2[3];
  for (int s = 0; s < 3; s++) {
    dp_backend *be = dp_backend_new (specs[s], NULL);
    y[s] = dp_tensor_new_host (DP_F32, 2, (int64_t[]){ M, N });
    o[s] = dp_tensor_new_host (DP_F32, 4, (int64_t[]){ 1, M, 4, 32 });
    n[s] = dp_tensor_new_host (DP_F32, 2, (int64_t[]){ M, K });
    c[s] = dp_tensor_new_host (DP_F32, 4, (int64_t[]){ 16, 3, 24, 24 });
    c2[s] = dp_tensor_new_host (DP_F32, 4, (int64_t[]){ 16, 3, 12, 12 });
    be->ops->linear (be, &y[s], &x, &w, &bias, DP_ACT_GELU_TANH);
    dp_tensor q = dp_tensor_view (x.data, DP_F32, 4, (int64_t[]){ 1, M, 4, 32 });
    dp_attn_params ap = { .scale = 1.0f / sqrtf (32.0f) };
    be->ops->attention (be, &o[s], &q, &q, &q, &ap);
    be->ops->layer_norm (be, &n[s], &x, NULL, NULL, 1e-6f);
    be->ops->conv3d (be, &c[s], &cx, &cw, NULL, &cp);
    be->ops->conv3d (be, &c2[s], &cx, &cw, NULL, &cp2);
    GError *err = NULL;
    g_assert_true (dp_backend_check (be, &err));
    dp_backend_free (be);
  }
  for (int s = 1; s < 3; s++) {
    g_assert_cmpmem (y[0].data, dp_tensor_nbytes (&y[0]), y[s].data, dp_tensor_nbytes (&y[s]));
    g_assert_cmpmem (o[0].data, dp_tensor_nbytes (&o[0]), o[s].data, dp_tensor_nbytes (&o[s]));
    g_assert_cmpmem (n[0].data, dp_tensor_nbytes (&n[0]), n[s].data, dp_tensor_nbytes (&n[s]));
    g_assert_cmpmem (c[0].data, dp_tensor_nbytes (&c[0]), c[s].data, dp_tensor_nbytes (&c[s]));
    g_assert_cmpmem (c2[0].data, dp_tensor_nbytes (&c2[0]), c2[s].data, dp_tensor_nbytes (&c2[s]));
  }
  for (int s = 0; s < 3; s++) {
    dp_tensor_free (&y[s]);
    dp_tensor_free (&o[s]);
    dp_tensor_free (&n[s]);
    dp_tensor_free (&c[s]);
    dp_tensor_free (&c2[s]);
  }
  dp_tensor_free (&x);
  dp_tensor_free (&w);
  dp_tensor_free (&bias);
  dp_tensor_free (&cx);
  dp_tensor_free (&cw);
}

int
main (int argc, char **argv)
{
  dp_openblas_quiet_reexec (argv);
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/cpu_threads/spec", test_spec);
  g_test_add_func ("/cpu_threads/quota", test_quota);
  g_test_add_func ("/cpu_threads/assign", test_assign);
  g_test_add_func ("/cpu_threads/omp_num_threads", test_omp_num_threads);
  g_test_add_func ("/cpu_threads/same_results", test_same_results);
  g_test_add_func ("/cpu_threads/generator", test_generator);
  g_test_add_func ("/cpu_threads/idle_sleeps", test_idle_sleeps);
  g_test_add_func ("/cpu_threads/pool_coverage", test_pool_coverage);
  g_test_add_func ("/cpu_threads/pool_nested", test_pool_nested);
  g_test_add_func ("/cpu_threads/pool_shared", test_pool_shared);
  g_test_add_func ("/cpu_threads/pool_late_worker", test_pool_late_worker);
  g_test_add_func ("/cpu_threads/ops_bitwise", test_ops_bitwise);
  return g_test_run ();
}
