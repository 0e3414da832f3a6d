/* OpenBLAS's thread pool, kept from starting (backend.h).
 *
 * The backend runs OpenBLAS single-threaded (openblas_set_num_threads (1)
 * in dp_cpu_backend_new) and threads its GEMMs over its own pool.  But
 * Debian's OpenBLAS (the pthreads build, libopenblas0-pthread) starts a
 * pool of its own in its ELF constructor, one thread per CPU but one, and
 * those threads spin (sched_yield) for about 0.1 s before they sleep:
 * measured 0.108 CPU-s at load on the 2-CPU development machine, 0.003 s
 * with OPENBLAS_NUM_THREADS=1, which OpenBLAS only reads in that
 * constructor.  So the variable must be in the environment before the
 * library is loaded.
 *
 * These functions use libc alone: dp_openblas_quiet_env () runs in an ELF
 * constructor, before GLib may be ready in that library's view. */
#include "dualparal/backend.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Marks that the program was executed again (never twice). */
#define DP_OPENBLAS_MARK "DUALPARAL_OPENBLAS_ENV"

void
dp_openblas_quiet_env (void)
{
  /* A user's setting is kept. */
  setenv ("OPENBLAS_NUM_THREADS", "1", 0);
}

void
dp_openblas_quiet_reexec (char **argv)
{
  if (getenv ("OPENBLAS_NUM_THREADS") != NULL || argv == NULL || argv[0] == NULL)
    return;
  /* Executed again already: never loop. */
  if (getenv (DP_OPENBLAS_MARK) != NULL)
    return;
  dp_openblas_quiet_env ();
  setenv (DP_OPENBLAS_MARK, "1", 0);
  execv ("/proc/self/exe", argv);
  /* No /proc, or the binary is gone: run on with OpenBLAS's default, and
   * say so once. */
  fprintf (stderr, "%s: could not execute again with OPENBLAS_NUM_THREADS=1 (%s); OpenBLAS's idle "
           "threads will spin for a while. Set OPENBLAS_NUM_THREADS=1 to avoid it.\n", argv[0], strerror (errno));
  unsetenv ("OPENBLAS_NUM_THREADS");
}
