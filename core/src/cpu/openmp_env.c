/* OpenMP's wait policy, set before libgomp reads it (backend.h).
 *
 * libgomp reads OMP_WAIT_POLICY and GOMP_SPINCOUNT once, in its own ELF
 * constructor.  Unset, its threads spin about 300,000 times (milliseconds)
 * after every parallel region before they sleep; the CPU backend opens
 * thousands of regions a second, so its idle threads never sleep and take
 * the CPU from whatever runs beside them (an encoder, another job), and
 * from one another when the machine is oversubscribed.  Passive waiting
 * costs some speed on an idle machine (a futex wake per region and
 * thread; docs/performance.md) and makes a shared one usable.
 *
 * OpenBLAS's pool (OPENBLAS_NUM_THREADS) is the same story; see below.
 *
 * These functions use libc alone: dp_openmp_quiet_env () runs in an ELF
 * constructor, before GLib may be ready in that library's view. */
#include "dualparal/backend.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Marks a setting made here (and that the program was executed again). */
#define DP_OPENMP_MARK "DUALPARAL_OPENMP_ENV"

static int
user_has_setting (void)
{
  return getenv ("OMP_WAIT_POLICY") != NULL || getenv ("GOMP_SPINCOUNT") != NULL;
}

/* Whether there is anything to set. */
static int
needs_setting (void)
{
  return !user_has_setting () || getenv ("OPENBLAS_NUM_THREADS") == NULL;
}

void
dp_openmp_quiet_env (void)
{
  /* The backend runs OpenBLAS single-threaded (openblas_set_num_threads
   * (1)), but OpenBLAS's pthreads build starts its own pool when it is
   * loaded, and those threads spin (sched_yield) for a while before they
   * sleep: with OPENBLAS_NUM_THREADS=1 the pool is never made. */
  if (getenv ("OPENBLAS_NUM_THREADS") == NULL)
    setenv ("OPENBLAS_NUM_THREADS", "1", 0);
  if (user_has_setting ())
    return;
  setenv ("OMP_WAIT_POLICY", "passive", 0);
  setenv (DP_OPENMP_MARK, "passive", 0);
}

void
dp_openmp_quiet_reexec (char **argv)
{
  if (!needs_setting () || argv == NULL || argv[0] == NULL)
    return;
  /* Executed again already: the setting is the user's or ours; never loop. */
  if (getenv (DP_OPENMP_MARK) != NULL)
    return;
  const int ours = !user_has_setting ();
  dp_openmp_quiet_env ();
  if (!ours)
    setenv (DP_OPENMP_MARK, "user", 0);
  execv ("/proc/self/exe", argv);
  /* No /proc, or the binary is gone: run on with the libraries' defaults,
   * and say so once. */
  fprintf (stderr, "%s: could not execute again with OMP_WAIT_POLICY=passive (%s); idle OpenMP "
           "threads will spin. Set OMP_WAIT_POLICY=passive to avoid it.\n", argv[0], strerror (errno));
  if (ours)
    unsetenv ("OMP_WAIT_POLICY");
  setenv (DP_OPENMP_MARK, "failed", 1);
}

const char *
dp_openmp_wait_policy (void)
{
  const char *mark = getenv (DP_OPENMP_MARK);
  const char *policy = getenv ("OMP_WAIT_POLICY");
  if (mark && strcmp (mark, "passive") == 0 && policy && strcmp (policy, "passive") == 0
      && getenv ("GOMP_SPINCOUNT") == NULL)
    return "passive (set by dualparal)";
  if (user_has_setting ())
    return "the user's (OMP_WAIT_POLICY / GOMP_SPINCOUNT are set)";
  return "libgomp's default (idle threads spin for milliseconds)";
}
