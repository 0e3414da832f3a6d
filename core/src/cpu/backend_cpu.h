/* The CPU backend: F32 everywhere, CBLAS GEMMs, its own thread pool.  Private to
 * the core: users create it with dp_backend_new ("cpu" or "cpu:N", ...). */
#ifndef DP_BACKEND_CPU_H
#define DP_BACKEND_CPU_H

#include "dualparal/backend.h"

G_BEGIN_DECLS

/* Most threads one CPU backend accepts. */
#define DP_CPU_MAX_THREADS 1024

/* The backend's thread pool (cpu_pool.c). */
typedef struct dp_cpu_pool dp_cpu_pool;

/* How conv3d runs (cpu_conv.c): AUTO picks by shape; DIRECT computes every
 * stride-1 conv directly; IM2COL always unrolls + GEMM.  Set from
 * DP_CPU_CONV (auto, direct, im2col) when the backend is made. */
typedef enum { DP_CPU_CONV_AUTO, DP_CPU_CONV_DIRECT, DP_CPU_CONV_IM2COL } dp_cpu_conv_route;

/* be->priv of a CPU backend. */
typedef struct {
  int threads;      /* threads of every operation (the caller included), >= 1 */
  dp_cpu_pool *pool; /* its threads - 1 workers, started on the first parallel loop */
  dp_cpu_conv_route conv;
} dp_cpu_state;

/* threads: the threads every operation of this backend uses, the calling
 * thread and threads - 1 workers of the backend's own pool (so the setting
 * belongs to the backend, whichever thread calls it: DualParal's CPU stages
 * each have their own pool); 0 = dp_cpu_available ().  NULL with
 * DP_ERROR_INVALID outside 0..DP_CPU_MAX_THREADS, or with DP_CPU_CONV set to
 * anything but auto, direct or im2col. */
dp_backend *dp_cpu_backend_new (int threads, GError **error);

/* The threads "auto" means: OMP_NUM_THREADS when set (its first number, as
 * OpenMP reads it; the convention is kept though OpenMP is not used),
 * else the CPUs this process may run on (sched_getaffinity, so taskset and
 * cpusets count), at most its cgroup's CPU quota rounded up (a container's
 * --cpus).  At least 1. */
int dp_cpu_available (void);

/* CPUs a cgroup CPU quota allows, rounded up; 0 for none or unreadable
 * text.  quota: cgroup v2 cpu.max ("150000 100000", "max 100000"; period
 * NULL) or v1 cpu.cfs_quota_us ("-1": none) with period cpu.cfs_period_us. */
int dp_cpu_quota_cpus (const char *quota, const char *period);

/* The threads of an operation of be (for sizing per-thread scratch: a
 * loop's worker indices are below it). */
static inline int
dp_cpu_threads (const dp_backend *be)
{
  return ((const dp_cpu_state *) be->priv)->threads;
}

/* A parallel loop's body: items [begin, end), run by thread `worker`
 * (0 = the caller, else 1..threads - 1; for per-thread scratch). */
typedef void (*dp_cpu_range_fn) (void *ctx, int64_t begin, int64_t end, int worker);

/* Runs fn over items [0, n_items) in chunks of `chunk` items (0: about 4
 * chunks per thread), on the calling thread and the pool's workers, and
 * returns when every chunk is done.  Chunks are claimed one by one, the
 * caller runs them too, and a worker that has not started yet is never
 * waited for (a late one finds nothing left).  The chunks are the same
 * whoever runs them, so results do not depend on scheduling.  A call made
 * while be's pool runs another loop (from inside a chunk, or from a second
 * thread) runs its chunks serially in the calling thread.  Callers keep
 * small loops (DP_CPU_PAR_MIN and the like) out of it. */
void dp_cpu_parallel_for (dp_backend *be, int64_t n_items, int64_t chunk, dp_cpu_range_fn fn, void *ctx);

/* A pool of threads - 1 workers (none started yet); _free joins them. */
dp_cpu_pool *dp_cpu_pool_new (int threads);
void dp_cpu_pool_free (dp_cpu_pool *pool);
/* Worker threads started so far (0 before the first parallel loop). */
int dp_cpu_pool_workers (const dp_cpu_pool *pool);

/* A devices list ("cpu", "cpu,cpu", "cuda:0", "cpu:3,cpu") with the CPU
 * threads given: every bare "cpu" entry becomes "cpu:N".  threads > 0 is
 * a total, divided evenly among the bare entries, the first ones taking
 * the remainder, at least 1 each; threads 0 gives each bare entry
 * dp_cpu_available () (idle pools sleep, and the stages rarely all
 * compute at once).  "cpu:N" entries and GPUs are kept as they are.  A
 * newly allocated string; NULL with DP_ERROR_INVALID when threads is
 * negative or too large. */
char *dp_cpu_assign_threads (const char *devices, int threads, GError **error);

/* The sum of N over the "cpu:N" entries of a devices list. */
int dp_cpu_threads_in (const char *devices);

/* Operations, one file per family (cpu_*.c). */
void dp_cpu_linear (dp_backend *be, dp_tensor *y, const dp_tensor *x, const dp_tensor *w,
                    const dp_tensor *bias, dp_act act);
void dp_cpu_layer_norm (dp_backend *be, dp_tensor *y, const dp_tensor *x, const dp_tensor *w,
                        const dp_tensor *b, float eps);
void dp_cpu_layer_norm_modulate (dp_backend *be, dp_tensor *y, const dp_tensor *x,
                                 const dp_tensor *shift, const dp_tensor *scale, float eps);
void dp_cpu_rms_norm (dp_backend *be, dp_tensor *y, const dp_tensor *x, const dp_tensor *w,
                      float eps);
void dp_cpu_rope_3d (dp_backend *be, dp_tensor *x, const dp_rope_grid *grid);
void dp_cpu_gelu_tanh (dp_backend *be, dp_tensor *y, const dp_tensor *x);
void dp_cpu_silu (dp_backend *be, dp_tensor *y, const dp_tensor *x);
void dp_cpu_attention (dp_backend *be, dp_tensor *o, const dp_tensor *q, const dp_tensor *k,
                       const dp_tensor *v, const dp_attn_params *p);
void dp_cpu_conv3d (dp_backend *be, dp_tensor *y, const dp_tensor *x, const dp_tensor *w,
                    const dp_tensor *bias, const dp_conv3d_params *p);
/* cpu_conv_direct.c: dp_cpu_conv3d's work, bias included, for stride 1 and
 * shapes it has checked; FALSE (be failed) when out of memory. */
gboolean dp_cpu_conv3d_direct (dp_backend *be, dp_tensor *y, const dp_tensor *x, const dp_tensor *w,
                               const dp_tensor *bias, const dp_conv3d_params *p);
void dp_cpu_upsample_nearest2x (dp_backend *be, dp_tensor *y, const dp_tensor *x);
void dp_cpu_add (dp_backend *be, dp_tensor *y, const dp_tensor *a, const dp_tensor *b);
void dp_cpu_mul (dp_backend *be, dp_tensor *y, const dp_tensor *a, const dp_tensor *b);
void dp_cpu_axpby (dp_backend *be, dp_tensor *y, float alpha, const dp_tensor *a, float beta,
                   const dp_tensor *b);
void dp_cpu_gated_add (dp_backend *be, dp_tensor *x, const dp_tensor *y, const dp_tensor *gate);
void dp_cpu_patchify (dp_backend *be, dp_tensor *tokens, const dp_tensor *x, int pt, int ph, int pw);
void dp_cpu_unpatchify (dp_backend *be, dp_tensor *x, const dp_tensor *tokens, int pt, int ph,
                        int pw);
/* cpu_vae_ops.c */
void dp_cpu_channel_rms_norm (dp_backend *be, dp_tensor *y, const dp_tensor *x,
                              const dp_tensor *gamma, float eps, dp_act act);
void dp_cpu_copy_cols (dp_backend *be, dp_tensor *dst, int64_t dst_col0, const dp_tensor *src,
                       int64_t src_col0, int64_t ncols);
void dp_cpu_transpose (dp_backend *be, dp_tensor *y, const dp_tensor *x);

/* Shared checks: FALSE (and a sticky error naming op) unless t is F32 with data. */
gboolean dp_cpu_check_f32 (dp_backend *be, const char *op, const dp_tensor *t);

G_END_DECLS

#endif
