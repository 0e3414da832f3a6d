/* dualparal: a worker process of a DualParal pipeline spread over processes
 * (docs/distributed.md).
 *
 * Rank 0 is the process of the pipeline (the GStreamer element or
 * dualparal-generate): it keeps stage 0, the text encoder, the samplers and
 * the VAE.  Rank r >= 1 runs stage r of the transformer in a worker process
 * (the dualparal-worker program is a thin main() around this call).  The
 * worker finds its place from a launcher's environment (RANK / WORLD_SIZE /
 * LOCAL_RANK / MASTER_ADDR / MASTER_PORT as torchrun sets them, or srun's
 * SLURM_* or mpirun's OMPI_COMM_WORLD_*), proves it holds the job's secret
 * (DUALPARAL_SECRET or DUALPARAL_SECRET_FILE), receives the model and the
 * settings from rank 0, and runs its stage for every video rank 0 runs,
 * until rank 0 says goodbye or goes away.
 */
#ifndef DUALPARAL_WORKER_H
#define DUALPARAL_WORKER_H

#include <glib.h>

G_BEGIN_DECLS

/* Serves rank 0 until it shuts the job down (TRUE) or until a failure
 * (FALSE with an error naming it: no launcher environment, rank 0, a
 * missing secret, a refused connection, a model that does not load, rank 0
 * gone silent or away).  device: the backend spec of this worker ("cpu",
 * "cuda:N"); NULL: DUALPARAL_DEVICE, else GPU LOCAL_RANK when the CUDA
 * module loads (dp_backend_have_cuda),
 * else "cpu".  model_dir: this machine's copy of the model; NULL: the path
 * rank 0 uses (the same shared file system).  Either way every worker's
 * model must match rank 0's (config and tensor index). */
gboolean dp_worker_serve (const char *device, const char *model_dir, GError **error);

G_END_DECLS

#endif
