/* dualparal: what rank 0 (cluster.c) and the workers (worker.c) share
 * (internal; docs/distributed.md): the launcher's environment, the model
 * fingerprint, the engine settings on the wire, the data links. */
#ifndef DUALPARAL_DIST_H
#define DUALPARAL_DIST_H

#include "dist/control.h"
#include "dualparal/engine.h"

G_BEGIN_DECLS

/* Seconds; each may be overridden by an environment variable of the same
 * name (docs/distributed.md). */
#define DP_DIST_CONNECT_TIMEOUT 120.0  /* DUALPARAL_CONNECT_TIMEOUT: rendezvous */
#define DP_DIST_HEARTBEAT_TIMEOUT 10.0 /* DUALPARAL_HEARTBEAT_TIMEOUT: silence = hung peer */
#define DP_DIST_SETUP_TIMEOUT 600.0    /* DUALPARAL_SETUP_TIMEOUT: loading a stage's model */
#define DP_DIST_PING_INTERVAL 1.0
#define DP_DIST_DEFAULT_PORT 29500     /* torchrun's MASTER_PORT default */

/* A timeout from the environment variable `name`, else fallback. */
double dp_dist_timeout (const char *name, double fallback);

/* Where this process sits in a job started by a launcher. */
typedef struct {
  int rank, world_size, local_rank; /* local_rank -1: not given */
  char *master_addr;                /* owned; "127.0.0.1" when MASTER_ADDR is unset */
  int master_port;                  /* MASTER_PORT, else DP_DIST_DEFAULT_PORT */
  const char *launcher;             /* "torchrun", "slurm", "mpirun" */
} dp_launch_env;

/* Reads RANK / WORLD_SIZE / LOCAL_RANK (torchrun), else SLURM_PROCID /
 * SLURM_NTASKS / SLURM_LOCALID (srun), else OMPI_COMM_WORLD_RANK / _SIZE /
 * _LOCAL_RANK (Open MPI), and MASTER_ADDR / MASTER_PORT.  DP_ERROR_INVALID
 * naming the variable when none is set or a value is bad. */
gboolean dp_launch_env_read (dp_launch_env *env, GError **error);
void dp_launch_env_clear (dp_launch_env *env);

/* SHA-256 over transformer/config.json and the JSON header (tensor names,
 * dtypes, shapes, offsets) of each of its safetensors files, in name order
 * (and the same of transformer_2/ when there is one):
 * two processes with equal fingerprints load the same architecture and the
 * same tensor index (the weights' bytes are not read: a 28 GB model would
 * take minutes).  Hex, g_free. */
char *dp_dist_model_fingerprint (const char *model_dir, GError **error);

/* The engine settings of a stage: written by rank 0 into SETUP, read by the
 * worker (the schedule exactly: doubles round-trip). */
void dp_dist_add_engine_params (JsonBuilder *b, const dp_engine_params *p);
/* Fills *p (expert2_dir NULL: *two_experts says whether the worker must set
 * it to its transformer_2) and a schedule the caller frees
 * (dp_schedule_free). */
gboolean dp_dist_read_engine_params (JsonObject *o, dp_engine_params *p, dp_schedule **schedule,
                                     gboolean *two_experts, GError **error);

/* Data links: the streams of the socket transport, made for each run.  The
 * sending side connects to the receiver's listener and starts with a
 * DP_CTL_LINK message {run, from, proof}; the receiver accepts until it has
 * the link of its previous stage for this run (other connections are
 * refused and closed) or the deadline passes. */
GSocketConnection *dp_dist_link_connect (const char *host, int port, const char *secret, guint64 run, int from,
                                         double timeout_s, GError **error);
GSocketConnection *dp_dist_link_accept (GSocket *listener, const char *secret, guint64 run, int from,
                                        double timeout_s, GError **error);
/* A listening TCP socket on host (an address or a name), port 0 = any free
 * port; *bound_port gets the port. */
GSocket *dp_dist_listen (const char *host, int port, int *bound_port, GError **error);
/* Accepts one connection within timeout_s (<= 0: no deadline); NULL with
 * DP_ERROR_IO on a timeout, DP_ERROR_CANCELLED when cancel fires. */
GSocketConnection *dp_dist_accept (GSocket *listener, double timeout_s, GCancellable *cancel, GError **error);

G_END_DECLS

#endif
