/* CPU backend: memory functions and the operation table. */
#include "cpu/backend_cpu.h"
#include "dualparal/arena.h"

#include <cblas.h>
#include <stdlib.h>
#include <string.h>

static void *
cpu_alloc (dp_backend *be, size_t nbytes)
{
  if (dp_backend_failed (be))
    return NULL;
  /* Aligned for vector loads and for arenas carved from one block; a failed
   * request is an error the caller reports, never an abort (as g_malloc's). */
  void *p = NULL;
  if (posix_memalign (&p, DP_ARENA_ALIGN, MAX (nbytes, 1)) != 0 || !p) {
    dp_backend_fail (be, DP_ERROR_NOMEM, "cannot allocate %zu bytes of host memory", nbytes);
    return NULL;
  }
  return p;
}

static void
cpu_free (dp_backend *be, void *ptr)
{
  free (ptr);
}

static gboolean
same_count (dp_backend *be, const char *op, const dp_tensor *a, const dp_tensor *b)
{
  if (dp_tensor_nelem (a) != dp_tensor_nelem (b)) {
    dp_backend_fail (be, DP_ERROR_SHAPE, "%s: element counts differ (%" G_GINT64_FORMAT " vs %" G_GINT64_FORMAT ")",
                     op, dp_tensor_nelem (a), dp_tensor_nelem (b));
    return FALSE;
  }
  return TRUE;
}

static void
cpu_copy (dp_backend *be, dp_tensor *dst, const dp_tensor *src)
{
  if (dp_backend_failed (be) || !same_count (be, "copy", dst, src))
    return;
  dp_convert (dst->data, dst->dtype, src->data, src->dtype, dp_tensor_nelem (src));
}

static void
cpu_fill (dp_backend *be, dp_tensor *t, float value)
{
  if (dp_backend_failed (be))
    return;
  int64_t n = dp_tensor_nelem (t);
  if (t->dtype == DP_F32) {
    float *d = t->data;
    for (int64_t i = 0; i < n; i++)
      d[i] = value;
  } else {
    uint16_t h = t->dtype == DP_BF16 ? dp_f32_to_bf16 (value) : dp_f32_to_f16 (value);
    uint16_t *d = t->data;
    for (int64_t i = 0; i < n; i++)
      d[i] = h;
  }
}

static gboolean
cpu_sync (dp_backend *be, GError **error)
{
  return dp_backend_check (be, error);
}

static void
cpu_destroy (dp_backend *be)
{
  g_clear_error (&be->error);
  dp_cpu_pool_free (((dp_cpu_state *) be->priv)->pool); /* joins the workers */
  g_free (be->priv);
  g_free (be);
}

gboolean
dp_cpu_check_f32 (dp_backend *be, const char *op, const dp_tensor *t)
{
  if (dp_backend_failed (be))
    return FALSE;
  if (t->dtype != DP_F32) {
    dp_backend_fail (be, DP_ERROR_UNSUPPORTED, "%s: the CPU backend computes in F32, got %s", op,
                     dp_dtype_name (t->dtype));
    return FALSE;
  }
  if (!t->data && dp_tensor_nelem (t) > 0) {
    dp_backend_fail (be, DP_ERROR_INVALID, "%s: tensor without data", op);
    return FALSE;
  }
  return TRUE;
}

static const dp_backend_ops cpu_ops = {
  .alloc = cpu_alloc,
  .free = cpu_free,
  .to_device = cpu_copy,
  .to_host = cpu_copy,
  .copy = cpu_copy,
  .fill = cpu_fill,
  .sync = cpu_sync,
  .destroy = cpu_destroy,
  .linear = dp_cpu_linear,
  .layer_norm = dp_cpu_layer_norm,
  .layer_norm_modulate = dp_cpu_layer_norm_modulate,
  .rms_norm = dp_cpu_rms_norm,
  .rope_3d = dp_cpu_rope_3d,
  .gelu_tanh = dp_cpu_gelu_tanh,
  .silu = dp_cpu_silu,
  .attention = dp_cpu_attention,
  .conv3d = dp_cpu_conv3d,
  .upsample_nearest2x = dp_cpu_upsample_nearest2x,
  .add = dp_cpu_add,
  .mul = dp_cpu_mul,
  .axpby = dp_cpu_axpby,
  .gated_add = dp_cpu_gated_add,
  .patchify = dp_cpu_patchify,
  .unpatchify = dp_cpu_unpatchify,
  .channel_rms_norm = dp_cpu_channel_rms_norm,
  .copy_cols = dp_cpu_copy_cols,
  .transpose = dp_cpu_transpose,
};

dp_backend *
dp_cpu_backend_new (int threads, GError **error)
{
  if (threads < 0 || threads > DP_CPU_MAX_THREADS) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "CPU threads %d is not valid: use 1 to %d, or 0 "
                 "for the CPUs this process may use", threads, DP_CPU_MAX_THREADS);
    return NULL;
  }
  /* The conv3d route, for benchmarks and comparisons (the CUDA backend's
   * DP_CUDA_CONV is the same idea). */
  dp_cpu_conv_route conv = DP_CPU_CONV_AUTO;
  const char *route = g_getenv ("DP_CPU_CONV");
  if (route && strcmp (route, "im2col") == 0)
    conv = DP_CPU_CONV_IM2COL;
  else if (route && strcmp (route, "direct") == 0)
    conv = DP_CPU_CONV_DIRECT;
  else if (route && route[0] && strcmp (route, "auto") != 0) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "cpu: DP_CPU_CONV=%s: use auto, direct or im2col", route);
    return NULL;
  }
  dp_cpu_state *st = g_new0 (dp_cpu_state, 1);
  st->conv = conv;
  st->threads = threads > 0 ? threads : dp_cpu_available ();
  st->pool = dp_cpu_pool_new (st->threads);
  dp_backend *be = g_new0 (dp_backend, 1);
  be->priv = st;
  be->ops = &cpu_ops;
  be->name = "cpu";
  be->act_dtype = DP_F32;
  be->weight_dtype = DP_F32;
  be->host_memory = TRUE;
#ifdef OPENBLAS_VERSION
  /* The operations thread their GEMMs themselves over the backend's pool
   * (dp_cpu_sgemm, attention and conv tasks): OpenBLAS's own pool would
   * busy-wait against it between calls (attention measured 2-2.5x slower on
   * 2 cores).  This is a process-wide OpenBLAS setting. */
  openblas_set_num_threads (1);
#endif
  return be;
}

int
dp_cpu_quota_cpus (const char *quota, const char *period)
{
  if (quota == NULL)
    return 0;
  /* cgroup v2 cpu.max: "QUOTA PERIOD" or "max PERIOD"; v1: the two files
   * cpu.cfs_quota_us (-1: none) and cpu.cfs_period_us. */
  char *text = g_strdup_printf ("%s %s", quota, period ? period : "");
  char **f = g_strsplit_set (g_strstrip (text), " \t\n", -1);
  char *words[2] = { NULL, NULL };
  int k = 0;
  for (char **w = f; *w && k < 2; w++)
    if (**w)
      words[k++] = *w;
  gint64 qv = 0, pv = 0;
  int n = 0;
  if (k == 2 && g_ascii_string_to_signed (words[0], 10, 1, G_MAXINT64, &qv, NULL)
      && g_ascii_string_to_signed (words[1], 10, 1, G_MAXINT64, &pv, NULL))
    n = (int) MIN (qv / pv + (qv % pv != 0), (gint64) DP_CPU_MAX_THREADS);
  g_strfreev (f);
  g_free (text);
  return n;
}

/* The CPU quota of this process's cgroup, in CPUs rounded up; 0: none. */
static int
cgroup_quota_cpus (void)
{
  char *self = NULL, *path = g_strdup ("/"), *v1path = g_strdup ("/");
  if (g_file_get_contents ("/proc/self/cgroup", &self, NULL, NULL)) {
    char **lines = g_strsplit (self, "\n", -1);
    for (char **l = lines; *l; l++) {
      if (g_str_has_prefix (*l, "0::")) {
        g_free (path);
        path = g_strdup (*l + 3);
      } else {
        char **f = g_strsplit (*l, ":", 3);
        if (f[0] && f[1] && f[2] && (strcmp (f[1], "cpu,cpuacct") == 0 || strcmp (f[1], "cpu") == 0)) {
          g_free (v1path);
          v1path = g_strdup (f[2]);
        }
        g_strfreev (f);
      }
    }
    g_strfreev (lines);
    g_free (self);
  }
  int n = 0;
  char *a = NULL, *b = NULL;
  /* Inside a cgroup namespace the path is "/" and the files are at the top. */
  const char *v2[] = { path, "/" };
  for (guint i = 0; i < G_N_ELEMENTS (v2) && n == 0; i++) {
    char *f = g_build_filename ("/sys/fs/cgroup", v2[i], "cpu.max", NULL);
    if (g_file_get_contents (f, &a, NULL, NULL))
      n = dp_cpu_quota_cpus (a, NULL);
    g_clear_pointer (&a, g_free);
    g_free (f);
  }
  const char *v1[] = { v1path, "/" };
  for (guint i = 0; i < G_N_ELEMENTS (v1) && n == 0; i++) {
    char *fq = g_build_filename ("/sys/fs/cgroup/cpu", v1[i], "cpu.cfs_quota_us", NULL);
    char *fp = g_build_filename ("/sys/fs/cgroup/cpu", v1[i], "cpu.cfs_period_us", NULL);
    if (g_file_get_contents (fq, &a, NULL, NULL) && g_file_get_contents (fp, &b, NULL, NULL))
      n = dp_cpu_quota_cpus (a, b);
    g_clear_pointer (&a, g_free);
    g_clear_pointer (&b, g_free);
    g_free (fq);
    g_free (fp);
  }
  g_free (path);
  g_free (v1path);
  return n;
}

int
dp_cpu_available (void)
{
  int n = 0;
  /* OMP_NUM_THREADS read as OpenMP reads it (the first number of a list,
   * "4,2": its first level): the user's word, taken as it is.  A value
   * that is not a positive number is ignored, as libgomp ignores it. */
  const char *omp = g_getenv ("OMP_NUM_THREADS");
  if (omp != NULL) {
    char *end = NULL;
    const gint64 v = g_ascii_strtoll (omp, &end, 10);
    while (end && g_ascii_isspace (*end))
      end++;
    if (end != omp && (*end == '\0' || *end == ',') && v >= 1)
      n = (int) MIN (v, (gint64) DP_CPU_MAX_THREADS);
  }
  if (n < 1) {
    n = (int) g_get_num_processors (); /* sched_getaffinity */
    /* A container's CPU quota: more threads than it allows only wait. */
    const int quota = cgroup_quota_cpus ();
    if (quota > 0)
      n = MIN (n, quota);
  }
  return CLAMP (n, 1, DP_CPU_MAX_THREADS);
}

static gboolean
is_bare_cpu (const char *item)
{
  return strcmp (item, "cpu") == 0;
}

char *
dp_cpu_assign_threads (const char *devices, int threads, GError **error)
{
  if (threads < 0 || threads > DP_CPU_MAX_THREADS) {
    g_set_error (error, DP_ERROR, DP_ERROR_INVALID, "threads %d is not valid: use 1 to %d, or 0 for "
                 "the CPUs this process may use", threads, DP_CPU_MAX_THREADS);
    return NULL;
  }
  char **items = g_strsplit (devices ? devices : "cpu", ",", -1);
  int n_bare = 0;
  for (char **it = items; *it; it++)
    n_bare += is_bare_cpu (g_strstrip (*it));
  if (n_bare == 0) {
    g_strfreev (items);
    return g_strdup (devices ? devices : "cpu");
  }
  /* Auto: every stage may use the whole machine (its threads sleep while
   * it waits for its neighbours; docs/performance.md measured 1 + 1
   * threads for two stages on 2 CPUs took 25-80 % longer than 2 + 2).  A number
   * given is a total, shared out. */
  const int total = threads > 0 ? threads : dp_cpu_available () * n_bare;
  const int each = total / n_bare, extra = total % n_bare;
  GString *out = g_string_new (NULL);
  int k = 0;
  for (char **it = items; *it; it++) {
    if (it != items)
      g_string_append_c (out, ',');
    if (is_bare_cpu (*it)) {
      g_string_append_printf (out, "cpu:%d", MAX (1, each + (k < extra)));
      k++;
    } else {
      g_string_append (out, *it);
    }
  }
  g_strfreev (items);
  return g_string_free (out, FALSE);
}

int
dp_backend_threads (const dp_backend *be)
{
  if (be == NULL || be->ops != &cpu_ops)
    return 0;
  return ((const dp_cpu_state *) be->priv)->threads;
}

int
dp_cpu_threads_in (const char *devices)
{
  int sum = 0;
  char **items = g_strsplit (devices ? devices : "", ",", -1);
  for (char **it = items; *it; it++) {
    const char *item = g_strstrip (*it);
    guint64 v;
    if (g_str_has_prefix (item, "cpu:") && g_ascii_string_to_unsigned (item + 4, 10, 1, DP_CPU_MAX_THREADS, &v, NULL))
      sum += (int) v;
  }
  g_strfreev (items);
  return sum;
}
