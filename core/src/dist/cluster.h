/* dualparal: rank 0's side of a pipeline over processes (internal;
 * docs/distributed.md).
 *
 * dp_cluster_new() brings the workers up: it listens, spawns them (spawn
 * mode) or waits for a launcher's (launcher mode), checks each one's
 * protocol version and secret, sends the settings and checks that every
 * worker loaded the same model (fingerprint).  Around each run of stage 0's
 * engine, dp_cluster_run_begin() hands the workers the run's context and
 * makes the data links, and dp_cluster_run_end() waits for every worker to
 * finish.  While a run is in progress a worker that fails, dies (its
 * connection closes) or falls silent for the heartbeat timeout cancels stage
 * 0's engine at once, and run_end reports it by rank, host and pid.  A
 * worker lost in one run is replaced at the start of the next (spawn mode:
 * a new process; launcher mode: its rank may reconnect). */
#ifndef DUALPARAL_DIST_CLUSTER_H
#define DUALPARAL_DIST_CLUSTER_H

#include "dualparal/engine.h"
#include "dualparal/generator.h"

G_BEGIN_DECLS

typedef struct dp_cluster dp_cluster;

typedef struct {
  dp_processes processes;    /* DP_PROCESSES_SPAWN or _LAUNCHER */
  int world_size;            /* spawn: one process per device; launcher: from the environment */
  char **devices;            /* spawn: the device spec of each rank (world_size of them); rank 0's
                              * is the generator's own */
  const char *model_dir;     /* as rank 0 sees it; the workers get the same path unless they
                              * name their own (dualparal-worker --model) */
  dp_transport *transport;   /* stage 0's socket transport (borrowed): the cluster attaches each
                              * run's links to it */
  const dp_engine_params *params;
  gboolean hidden_bf16;      /* hidden states travel as BF16 */
  dp_warning_cb warn;        /* refused connections and the like; may be NULL */
  void *warn_data;
} dp_cluster_config;

dp_cluster *dp_cluster_new (const dp_cluster_config *cfg, GError **error);
void dp_cluster_free (dp_cluster *c);
/* Sets the engine a failing worker cancels (stage 0's). */
void dp_cluster_set_engine (dp_cluster *c, dp_engine *engine);

/* Starts a run on every worker: context is the host tensor stage 0 runs
 * with, guidance block 0's (the prompt's guidance may have changed since
 * the workers were set up).  Replaces workers lost before. */
gboolean dp_cluster_run_begin (dp_cluster *c, const dp_tensor *context, double guidance, GError **error);
/* A block entering the run (1, 2, ... in order, every one of them: the
 * workers wait for each block's word before its passes): cond, the
 * conditioning it takes, or NULL when it keeps the previous block's.
 * Every run begun with dp_cluster_run_begin needs these. */
gboolean dp_cluster_send_cond (dp_cluster *c, int64_t block, const dp_engine_cond *cond, GError **error);
/* Ends the run: engine_ok is what stage 0's run returned (when FALSE the
 * workers are cancelled).  Waits for every worker; returns FALSE with the
 * most telling error: a worker's death or silence, else a worker's failure,
 * else stage 0's own error (passed in *error, replaced when a worker's is
 * more telling). */
gboolean dp_cluster_run_end (dp_cluster *c, gboolean engine_ok, GError **error);

G_END_DECLS

#endif
