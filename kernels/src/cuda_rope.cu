/* CUDA backend: Wan 3D rotary embedding, in place.
 *
 * The angles pos * theta^(-2i / d_part) are computed on the host in double
 * (so --use_fast_math's approximate sin/cos never touch them) into a small
 * cos/sin table: frames x dt/2, then height x dh/2, then width x dw/2
 * entries.  A handful of tables is cached on the device keyed by the grid
 * (frame positions included): a forward pass uses one or two grids for all
 * its layers, so the upload happens once. */
#include "cuda_common.cuh"

#include <math.h>
#include <string.h>

/* One thread per rotated pair. */
__global__ void
rope_kernel (void *x, int xdt, dp_cuda_rope_args ra, int64_t n_pairs)
{
  DP_GRID_STRIDE (i, n_pairs) {
    const int p = (int) (i % ra.half_d);
    const int64_t vec = i / ra.half_d;
    const float2 cs = dp_rope_angle (ra, dp_rope_token_of (ra, (int) ((vec / ra.heads) % ra.L)), p);
    const int64_t e = vec * 2 * ra.half_d + 2 * p;
    float v[2] = { dp_ld (x, xdt, e), dp_ld (x, xdt, e + 1) };
    dp_rope_rotate (cs, v);
    dp_st (x, xdt, e, v[0]);
    dp_st (x, xdt, e + 1, v[1]);
  }
}

/* Fast path: one thread per 4 consecutive pairs of a head (8 elements, two
 * vector accesses), so the index arithmetic is shared by 4 pairs and the
 * accesses are 8 / 16 bytes wide (the scalar kernel above reached 0.95 TB/s
 * on an H200).  half_d % 4 == 0 and x aligned to 8 elements. */
template <typename T>
__global__ void
rope_vec_kernel (T *x, dp_cuda_rope_args ra, int64_t n_groups)
{
  const int groups_per_vec = ra.half_d / 4;
  DP_GRID_STRIDE (g, n_groups) {
    const int p0 = (int) (g % groups_per_vec) * 4;
    const int64_t vec = g / groups_per_vec;
    const dp_rope_token tok = dp_rope_token_of (ra, (int) ((vec / ra.heads) % ra.L));
    T *e = x + vec * 2 * ra.half_d + 2 * p0;
    float v[8];
    dp_ld4 (e, v);
    dp_ld4 (e + 4, v + 4);
#pragma unroll
    for (int j = 0; j < 4; j++)
      dp_rope_rotate (dp_rope_angle (ra, tok, p0 + j), v + 2 * j);
    dp_st4 (e, v);
    dp_st4 (e + 4, v + 4);
  }
}

static void
entry_clear (dp_cuda_rope_table *t)
{
  if (t->table)
    cudaFree (t->table);
  g_free (t->frame_pos);
  memset (t, 0, sizeof *t);
}

extern "C" void
dp_cuda_rope_cache_free (dp_backend *be)
{
  dp_cuda *c = dp_cuda_of (be);
  for (int i = 0; i < DP_CUDA_ROPE_CACHE; i++)
    entry_clear (&c->rope[i]);
}

static void
parts (int d, int *t_pairs, int *h_pairs, int *w_pairs)
{
  int dh = 2 * (d / 6), dt = d - 2 * dh;
  *t_pairs = dt / 2;
  *h_pairs = dh / 2;
  *w_pairs = dh / 2;
}

static const float2 *
table_for (dp_backend *be, const dp_rope_grid *g, const int *pos, int d)
{
  dp_cuda *c = dp_cuda_of (be);
  for (int i = 0; i < DP_CUDA_ROPE_CACHE; i++) {
    dp_cuda_rope_table *t = &c->rope[i];
    if (t->table && t->frames == g->frames && t->height == g->height && t->width == g->width && t->head_dim == d
        && t->theta == g->theta && memcmp (t->frame_pos, pos, sizeof (int) * g->frames) == 0)
      return t->table;
  }
  int tp, hp, wp;
  parts (d, &tp, &hp, &wp);
  size_t n = (size_t) g->frames * tp + (size_t) g->height * hp + (size_t) g->width * wp;
  float2 *host = (float2 *) g_try_malloc (MAX (n, 1) * sizeof (float2));
  if (!host) {
    dp_backend_fail (be, DP_ERROR_NOMEM, "rope_3d: cannot allocate the angle table");
    return NULL;
  }
  size_t o = 0;
  const int dt = 2 * tp, dh = 2 * hp, dw = 2 * wp;
  for (int f = 0; f < g->frames; f++)
    for (int i = 0; i < tp; i++, o++) {
      double a = pos[f] * pow ((double) g->theta, -2.0 * i / dt);
      host[o] = make_float2 ((float) cos (a), (float) sin (a));
    }
  for (int h = 0; h < g->height; h++)
    for (int i = 0; i < hp; i++, o++) {
      double a = h * pow ((double) g->theta, -2.0 * i / dh);
      host[o] = make_float2 ((float) cos (a), (float) sin (a));
    }
  for (int w = 0; w < g->width; w++)
    for (int i = 0; i < wp; i++, o++) {
      double a = w * pow ((double) g->theta, -2.0 * i / dw);
      host[o] = make_float2 ((float) cos (a), (float) sin (a));
    }

  dp_cuda_rope_table *t = &c->rope[c->rope_next];
  c->rope_next = (c->rope_next + 1) % DP_CUDA_ROPE_CACHE;
  entry_clear (t); /* cudaFree waits for kernels still reading the old table */
  void *dev = NULL;
  cudaError_t err = cudaMalloc (&dev, MAX (n, 1) * sizeof (float2));
  if (err != cudaSuccess) {
    (void) cudaGetLastError ();
    g_free (host);
    dp_cuda_ok (be, err, "rope_3d: cudaMalloc (angle table)");
    return NULL;
  }
  /* A synchronous upload: misses are rare and host is freed right after. */
  if (!dp_cuda_ok (be, cudaMemcpyAsync (dev, host, n * sizeof (float2), cudaMemcpyHostToDevice, c->stream),
                   "rope_3d: cudaMemcpyAsync")
      || !dp_cuda_ok (be, cudaStreamSynchronize (c->stream), "rope_3d: cudaStreamSynchronize")) {
    cudaFree (dev);
    g_free (host);
    return NULL;
  }
  g_free (host);
  t->table = (float2 *) dev;
  t->table_bytes = n * sizeof (float2);
  t->frames = g->frames;
  t->height = g->height;
  t->width = g->width;
  t->head_dim = d;
  t->theta = g->theta;
  t->frame_pos = (int *) g_memdup2 (pos, sizeof (int) * g->frames);
  return t->table;
}

extern "C" gboolean
dp_cuda_rope_prepare (dp_backend *be, const char *op, const dp_tensor *x, const dp_rope_grid *grid,
                      dp_cuda_rope_args *ra)
{
  if (!grid || grid->frames < 0 || grid->height < 0 || grid->width < 0 || !(grid->theta > 0.0f)) {
    dp_backend_fail (be, DP_ERROR_INVALID, "%s: bad grid", op);
    return FALSE;
  }
  int64_t L = (int64_t) grid->frames * grid->height * grid->width;
  if (x->ndim != 4 || x->shape[1] != L || x->shape[3] % 2 != 0) {
    char sx[64];
    dp_backend_fail (be, DP_ERROR_SHAPE, "%s: x %s is not [B, %d*%d*%d, H, d] with an even d", op,
                     dp_shape_str (x, sx, sizeof sx), grid->frames, grid->height, grid->width);
    return FALSE;
  }
  int d = (int) x->shape[3];
  int *seq = NULL;
  const int *pos = grid->frame_pos;
  if (!pos) {
    seq = g_new (int, MAX (grid->frames, 1));
    for (int f = 0; f < grid->frames; f++)
      seq[f] = f;
    pos = seq;
  }
  ra->table = dp_tensor_nelem (x) > 0 ? table_for (be, grid, pos, d) : NULL;
  g_free (seq);
  int wp;
  parts (d, &ra->t_pairs, &ra->h_pairs, &wp);
  ra->L = (int) L;
  ra->heads = (int) x->shape[2];
  ra->half_d = d / 2;
  ra->frames = grid->frames;
  ra->height = grid->height;
  ra->width = grid->width;
  return ra->table != NULL || dp_tensor_nelem (x) == 0;
}

extern "C" void
dp_cuda_rope_3d (dp_backend *be, dp_tensor *x, const dp_rope_grid *grid)
{
  const char *op = "rope_3d";
  dp_cuda_rope_args ra;
  if (!dp_cuda_check (be, op, x, "x") || !dp_cuda_rope_prepare (be, op, x, grid, &ra))
    return;
  int64_t n_pairs = dp_tensor_nelem (x) / 2;
  if (n_pairs == 0)
    return;
  cudaStream_t s = dp_cuda_of (be)->stream;
  if (ra.half_d % 4 == 0 && (x->dtype == DP_BF16 || x->dtype == DP_F32)
      && dp_aligned (x->data, 8 * dp_dtype_size (x->dtype))) {
    const int64_t n_groups = n_pairs / 4;
    if (x->dtype == DP_BF16)
      rope_vec_kernel<<<dp_cuda_grid (be, n_groups, 256), 256, 0, s>>> ((__nv_bfloat16 *) x->data, ra, n_groups);
    else
      rope_vec_kernel<<<dp_cuda_grid (be, n_groups, 256), 256, 0, s>>> ((float *) x->data, ra, n_groups);
  } else {
    rope_kernel<<<dp_cuda_grid (be, n_pairs, 256), 256, 0, s>>> (x->data, x->dtype, ra, n_pairs);
  }
  dp_cuda_launched (be, op);
}
