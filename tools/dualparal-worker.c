/* dualparal-worker: one stage of a DualParal pipeline spread over processes
 * (docs/distributed.md).
 *
 *   RANK=1 WORLD_SIZE=2 MASTER_ADDR=10.0.0.1 MASTER_PORT=29500 \
 *   DUALPARAL_SECRET_FILE=~/.dualparal-secret dualparal-worker [--device cuda:0]
 *
 * Started by a launcher (torchrun-style variables, srun or mpirun) for the
 * ranks 1..N-1, or by the pipeline itself (processes "spawn").  Rank 0 is
 * the pipeline's process: the element or dualparal-generate.  Exits 0 when
 * rank 0 ends the job, 1 with a message on failure.
 */
#include <stdio.h>
#include <stdlib.h>

#include <glib.h>

#include "dualparal/backend.h"
#include "dualparal/worker.h"

static char *opt_device = NULL;
static char *opt_model = NULL;

static GOptionEntry entries[] = {
  { "device", 'd', 0, G_OPTION_ARG_STRING, &opt_device,
    "Backend of this worker: cpu or cuda:N (default: DUALPARAL_DEVICE, else GPU LOCAL_RANK in a CUDA build, "
    "else cpu)", "SPEC" },
  { "model", 'm', 0, G_OPTION_ARG_FILENAME, &opt_model,
    "This machine's copy of the model (default: the directory rank 0 names)", "DIR" },
  { NULL },
};

int
main (int argc, char **argv)
{
  /* OpenBLAS starts no spinning pool of its own (as dualparal-generate):
   * a worker shares its machine with the other stages' processes. */
  dp_openblas_quiet_reexec (argv);
  GError *err = NULL;
  GOptionContext *ctx = g_option_context_new ("- one stage of a DualParal pipeline over processes");
  g_option_context_add_main_entries (ctx, entries, NULL);
  g_option_context_set_description (ctx,
    "Environment: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT (or SLURM_PROCID / SLURM_NTASKS /\n"
    "SLURM_LOCALID, or OMPI_COMM_WORLD_RANK / _SIZE / _LOCAL_RANK); DUALPARAL_SECRET or DUALPARAL_SECRET_FILE\n"
    "(the same on every process; never on the command line).  See docs/distributed.md.\n");
  gboolean ok = g_option_context_parse (ctx, &argc, &argv, &err);
  g_option_context_free (ctx);
  if (ok)
    ok = dp_worker_serve (opt_device, opt_model, &err);
  if (!ok) {
    fprintf (stderr, "dualparal-worker: %s\n", err->message);
    g_error_free (err);
  }
  g_free (opt_device);
  g_free (opt_model);
  return ok ? 0 : 1;
}
