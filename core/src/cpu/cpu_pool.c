/* CPU backend: the thread pool every parallel operation uses (backend_cpu.h).
 *
 * Why not OpenMP (issue 17): a fork-join region ends at a barrier that
 * waits for every team thread to have run its share.  On a shared machine
 * (an encoder, other jobs) the scheduler often leaves one of our threads
 * behind the others for a whole time slice, and with passive waiting (no
 * spinning) each of the ~5,300 multi-threaded regions of a generation (81
 * frames, embedded model) could stall on it.
 * Here a loop is a list of chunks claimed one at a time from an atomic
 * counter, by the caller as well as the workers; it ends when every chunk
 * is done, and a worker that starts late finds nothing left and sleeps
 * again.  Which thread runs a chunk never changes what it computes.
 *
 * The counter `next` packs (generation << 32 | next chunk).  A worker
 * claims a chunk with a CAS on the whole word, so a worker that read an
 * old loop's state can never claim a chunk of a newer loop: the CAS fails
 * once the generation moved.  The job's fields are atomics written before
 * the new generation is published (release) and read after loading it
 * (acquire); before touching them the caller closes the generation
 * (index CLOSED), so a worker reading fields that are being replaced
 * fails its CAS too.  (The generation has 32 bits: a worker would have to
 * stall between its load and its CAS for 2^32 loops, days, to be fooled.)
 *
 * Sleeping: workers wait on a futex (`seq`, bumped once per loop) and the
 * caller waits on one (`done`) for the chunks other threads still run; no
 * thread spins.  One loop at a time per backend: a nested call (from a
 * chunk) or one from a second thread while a loop runs executes its
 * chunks serially in its own thread. */
#include "cpu/backend_cpu.h"

#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/syscall.h>
#include <unistd.h>

#define CLOSED UINT32_MAX      /* chunk index of a generation being set up */
#define CHUNKS_PER_THREAD 4    /* default split: a late worker's share is small */

struct dp_cpu_pool {
  int nt;                      /* threads of a loop, the caller included */
  int n_workers;               /* worker threads started (<= nt - 1) */
  pthread_t *workers;
  atomic_int busy;             /* a loop is running (the caller's claim on the pool) */
  atomic_int quit;
  /* The job, valid for the generation in `next`. */
  _Atomic (dp_cpu_range_fn) fn;
  _Atomic (void *) ctx;
  _Atomic int64_t n_items, chunk;
  _Atomic uint32_t n_chunks;
  _Atomic uint64_t next;       /* generation << 32 | next chunk to claim */
  _Atomic uint32_t done;       /* chunks finished in this generation (futex word) */
  _Atomic uint32_t seq;        /* bumped for each loop and to quit (futex word) */
  atomic_int sleepers;         /* workers in (or about to enter) FUTEX_WAIT on seq */
};

typedef struct {
  dp_cpu_pool *pool;
  int index;
} worker_arg;

static void
futex_wait (_Atomic uint32_t *word, uint32_t expected)
{
  /* Returns at once when *word != expected: no wake-up is lost. */
  syscall (SYS_futex, (uint32_t *) word, FUTEX_WAIT_PRIVATE, expected, NULL, NULL, 0);
}

static void
futex_wake (_Atomic uint32_t *word, int n)
{
  syscall (SYS_futex, (uint32_t *) word, FUTEX_WAKE_PRIVATE, n, NULL, NULL, 0);
}

/* Claims and runs chunks of the current generation until none is left;
 * TRUE when this thread finished the generation's last chunk. */
static gboolean
run_chunks (dp_cpu_pool *p, int index)
{
  gboolean finished_last = FALSE;
  uint64_t v = atomic_load_explicit (&p->next, memory_order_acquire);
  for (;;) {
    const uint32_t i = (uint32_t) v;
    const uint32_t n_chunks = atomic_load_explicit (&p->n_chunks, memory_order_acquire);
    const dp_cpu_range_fn fn = atomic_load_explicit (&p->fn, memory_order_acquire);
    void *ctx = atomic_load_explicit (&p->ctx, memory_order_acquire);
    const int64_t n = atomic_load_explicit (&p->n_items, memory_order_acquire);
    const int64_t chunk = atomic_load_explicit (&p->chunk, memory_order_acquire);
    if (i >= n_chunks)
      return finished_last; /* all claimed (or CLOSED): go back to sleep */
    /* Succeeds only if the generation is still the one the fields were
     * read for (see the top of the file); else v is reloaded. */
    if (!atomic_compare_exchange_weak_explicit (&p->next, &v, v + 1, memory_order_acq_rel,
                                                memory_order_acquire))
      continue;
    const int64_t b = (int64_t) i * chunk;
    fn (ctx, b, MIN (n, b + chunk), index);
    /* release: the chunk's writes are visible to whoever sees the count */
    if (atomic_fetch_add_explicit (&p->done, 1, memory_order_acq_rel) + 1 == n_chunks)
      finished_last = TRUE;
    v = atomic_load_explicit (&p->next, memory_order_acquire);
  }
}

static void *
worker_main (void *data)
{
  worker_arg *a = data;
  dp_cpu_pool *p = a->pool;
  const int index = a->index;
  g_free (a);
  uint32_t seen = 0;
  for (;;) {
    /* seq_cst pairs with the caller's store of seq and load of sleepers:
     * either it sees us counted as a sleeper or we see its new seq. */
    atomic_fetch_add (&p->sleepers, 1);
    uint32_t s = atomic_load (&p->seq);
    while (s == seen && !atomic_load (&p->quit)) {
      futex_wait (&p->seq, seen);
      s = atomic_load (&p->seq);
    }
    atomic_fetch_sub (&p->sleepers, 1);
    if (atomic_load (&p->quit))
      return NULL;
    seen = s;
    if (run_chunks (p, index))
      futex_wake (&p->done, 1); /* the caller may be waiting for this chunk */
  }
}

dp_cpu_pool *
dp_cpu_pool_new (int threads)
{
  dp_cpu_pool *p = g_new0 (dp_cpu_pool, 1);
  p->nt = MAX (1, threads);
  return p;
}

void
dp_cpu_pool_free (dp_cpu_pool *p)
{
  if (p == NULL)
    return;
  atomic_store (&p->quit, 1);
  atomic_fetch_add (&p->seq, 1);
  futex_wake (&p->seq, INT_MAX);
  for (int i = 0; i < p->n_workers; i++)
    pthread_join (p->workers[i], NULL);
  g_free (p->workers);
  g_free (p);
}

/* Started on the first loop, so backends that never run one (a GPU run's
 * host-side helpers, tests) cost no threads.  Called with the pool held. */
static void
start_workers (dp_cpu_pool *p)
{
  p->workers = g_new0 (pthread_t, p->nt - 1);
  for (int i = 1; i < p->nt; i++) {
    worker_arg *a = g_new (worker_arg, 1);
    a->pool = p;
    a->index = i;
    if (pthread_create (&p->workers[p->n_workers], NULL, worker_main, a) != 0) {
      g_free (a); /* fewer threads: the caller takes their chunks */
      break;
    }
    p->n_workers++;
  }
}

int
dp_cpu_pool_workers (const dp_cpu_pool *p)
{
  return p->n_workers;
}

void
dp_cpu_parallel_for (dp_backend *be, int64_t n_items, int64_t chunk, dp_cpu_range_fn fn, void *ctx)
{
  if (n_items <= 0)
    return;
  dp_cpu_pool *p = ((dp_cpu_state *) be->priv)->pool;
  const int nt = p->nt;
  if (chunk <= 0)
    chunk = MAX (1, (n_items + (int64_t) nt * CHUNKS_PER_THREAD - 1) / ((int64_t) nt * CHUNKS_PER_THREAD));
  chunk = MAX (chunk, (n_items + CLOSED - 2) / (CLOSED - 1)); /* chunk indices fit 32 bits, below CLOSED */
  const uint32_t n_chunks = (uint32_t) ((n_items + chunk - 1) / chunk);
  int expected = 0;
  if (nt == 1 || n_chunks == 1 ||
      !atomic_compare_exchange_strong_explicit (&p->busy, &expected, 1, memory_order_acquire, memory_order_relaxed)) {
    /* One thread, one chunk, nested or concurrent: the same chunks, here. */
    for (int64_t b = 0; b < n_items; b += chunk)
      fn (ctx, b, MIN (n_items, b + chunk), 0);
    return;
  }
  if (p->workers == NULL)
    start_workers (p);

  /* Close the old generation, then write the job, then open the new one. */
  const uint64_t gen = (atomic_load_explicit (&p->next, memory_order_relaxed) >> 32) + 1;
  atomic_store (&p->next, gen << 32 | CLOSED);
  atomic_store_explicit (&p->fn, fn, memory_order_release);
  atomic_store_explicit (&p->ctx, ctx, memory_order_release);
  atomic_store_explicit (&p->n_items, n_items, memory_order_release);
  atomic_store_explicit (&p->chunk, chunk, memory_order_release);
  atomic_store_explicit (&p->n_chunks, n_chunks, memory_order_release);
  atomic_store_explicit (&p->done, 0, memory_order_relaxed); /* ordered by the release below */
  atomic_store_explicit (&p->next, gen << 32, memory_order_release);
  atomic_fetch_add (&p->seq, 1);
  /* Wake no more workers than there are chunks for; none if all are awake. */
  if (atomic_load (&p->sleepers) > 0)
    futex_wake (&p->seq, (int) MIN ((uint32_t) p->n_workers, n_chunks - 1));

  run_chunks (p, 0);
  /* Every chunk is claimed; wait for the ones still running elsewhere.  A
   * worker that never woke up is not waited for. */
  uint32_t d;
  while ((d = atomic_load_explicit (&p->done, memory_order_acquire)) < n_chunks)
    futex_wait (&p->done, d);
  atomic_store_explicit (&p->busy, 0, memory_order_release);
}
