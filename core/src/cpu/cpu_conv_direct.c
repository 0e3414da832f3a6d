/* CPU backend: a stride-1 Conv3d computed directly, without im2col
 * (cpu_conv.c chooses it for few output channels).
 *
 * Why: with few output channels (3-48 in the embedded model's VAE
 * decoder) im2col + GEMM spends most of its time moving data.  The column
 * matrix is kt * kh * kw (27) times the input, OpenBLAS packs it once
 * more, and its kernel then does only 2 * Cout flops per packed float.
 * Here each task (an output frame, a group of its rows) first copies the
 * input rows it reads into its thread's slab, zero-padded in h and w (so
 * the scratch stays small whatever the input), then sums each output row in
 * registers: for 16 or 32 neighbouring output pixels and a block of up to
 * 12 output channels, every (input channel, tap) loads the input pixels
 * once and adds them, times one weight per channel, to the channels'
 * accumulators.
 *
 * Every output value is summed by one thread in one fixed order (bias,
 * then ci, dt, dh, dw), whatever the thread count or channel blocking, so
 * results do not depend on either.  The routine is compiled for AVX-512,
 * AVX2 + FMA and baseline x86-64, and the best one the CPU runs is picked
 * when the library loads (GCC target_clones); other architectures get the
 * plain build. */
#include "cpu/backend_cpu.h"
#include "cpu/cpu_act.h"

#include <stdlib.h>
#include <string.h>

#define VEC 16          /* output pixels summed together (one AVX-512 register) */
#define MAX_BLOCK 12    /* output channels summed together, at most */
#define SLAB_BUDGET (1 << 20) /* floats of input a task copies, where the input allows (4 MiB) */
#define TASKS_PER_THREAD 8
#define MIN_ROWS 4

typedef float vec __attribute__ ((vector_size (VEC * sizeof (float))));

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CONV_CLONES __attribute__ ((target_clones ("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CONV_CLONES
#endif

typedef struct {
  int64_t Cin, T, H, W, To, Ho, Wo, Wp, K, kt, kh, kw, pf, ph, pw;
  int64_t rows, groups;   /* output rows per task; tasks (row groups) per output frame */
  int64_t slab_plane;     /* floats of one (ci, dt) in a slab: rows + kh - 1 padded rows */
  int64_t slab;           /* floats of one thread's slab */
  int64_t n_blocks, block_base, block_rem; /* output channel blocks: the first block_rem have one more */
  gboolean pairs;         /* two pixel vectors at a time */
  const float *x, *w_packed, *bias;
  float *slabs, *y;
} direct_job;

/* First output channel and size of block b. */
static inline void
block_span (const direct_job *j, int64_t b, int64_t *co0, int *n)
{
  *co0 = b * j->block_base + MIN (b, j->block_rem);
  *n = (int) (j->block_base + (b < j->block_rem));
}

/* The input that output rows [h0, h0 + n_rows) of frame `to` read, for
 * every (ci, dt) whose frame exists, into slab: n_rows + kh - 1 rows of Wp,
 * zeros where the window reads padding.  (Frames outside the input are
 * time padding: their taps are skipped, not read.) */
static void
fill_slab (const direct_job *j, float *slab, int64_t to, int64_t h0, int64_t n_rows)
{
  const int64_t W = j->W, Wp = j->Wp, pw = j->pw;
  for (int64_t ci = 0; ci < j->Cin; ci++)
    for (int64_t dt = 0; dt < j->kt; dt++) {
      const int64_t ti = to - j->pf + dt;
      if (ti < 0 || ti >= j->T)
        continue;
      float *dst = slab + (ci * j->kt + dt) * j->slab_plane;
      for (int64_t r = 0; r < n_rows + j->kh - 1; r++, dst += Wp) {
        const int64_t hi = h0 - j->ph + r;
        if (hi < 0 || hi >= j->H) {
          memset (dst, 0, (size_t) Wp * sizeof (float));
          continue;
        }
        memset (dst, 0, (size_t) pw * sizeof (float));
        memcpy (dst + pw, j->x + ((ci * j->T + ti) * j->H + hi) * W, (size_t) W * sizeof (float));
        memset (dst + pw + W, 0, (size_t) (Wp - pw - W) * sizeof (float));
      }
    }
}

/* Output pixels [wo, wo + nv * VEC) of row ho (at most the row's end is
 * stored) for a block of n channels, reading slab row r (= ho's first
 * input row).  n and nv are constants once inlined, so the n * nv
 * accumulators stay in registers; with nv = 2 each weight loaded serves
 * two vectors of pixels. */
static inline __attribute__ ((always_inline)) void
sum_pixels (const direct_job *j, const float *slab, int64_t to, int64_t ho, int64_t r, int64_t wo, int64_t co0,
            const float *wb, const int n, const int nv)
{
  const int64_t Wp = j->Wp, kh = j->kh, kw = j->kw, T = j->T;
  vec acc[2][MAX_BLOCK];
#pragma GCC unroll 2
  for (int v = 0; v < nv; v++)
#pragma GCC unroll 12
    for (int c = 0; c < n; c++)
      acc[v][c] = (vec) { 0 } + (j->bias ? j->bias[co0 + c] : 0.0f);
  const float *wk = wb;
  for (int64_t ci = 0; ci < j->Cin; ci++) {
    for (int64_t dt = 0; dt < j->kt; dt++) {
      const int64_t ti = to - j->pf + dt;
      if (ti < 0 || ti >= T) { /* time padding: zeros add nothing */
        wk += kh * kw * n;
        continue;
      }
      const float *xr = slab + (ci * j->kt + dt) * j->slab_plane + r * Wp + wo;
      for (int64_t dh = 0; dh < kh; dh++, xr += Wp)
        for (int64_t dw = 0; dw < kw; dw++, wk += n) {
          vec xv[2];
#pragma GCC unroll 2
          for (int v = 0; v < nv; v++)
            memcpy (&xv[v], xr + dw + v * VEC, sizeof xv[v]);
#pragma GCC unroll 12
          for (int c = 0; c < n; c++) {
            const float wc = wk[c];
#pragma GCC unroll 2
            for (int v = 0; v < nv; v++)
              acc[v][c] += wc * xv[v];
          }
        }
    }
  }
  const int64_t Wo = j->Wo;
  float *yr = j->y + (co0 * j->To + to) * j->Ho * Wo + ho * Wo;
#pragma GCC unroll 2
  for (int v = 0; v < nv; v++) {
    const int64_t w0 = wo + v * VEC;
    const size_t bytes = (size_t) MIN (VEC, Wo - w0) * sizeof (float);
#pragma GCC unroll 12
    for (int c = 0; c < n; c++)
      memcpy (yr + c * j->To * j->Ho * Wo + w0, &acc[v][c], bytes);
  }
}

/* Output rows [h0, h1) of frame `to` for a block of n channels: pairs of
 * pixel vectors where the registers hold them (AVX-512: 2 x 12
 * accumulators), then single ones (the last possibly partial).  Same sums,
 * same order, either way. */
static inline __attribute__ ((always_inline)) void
rows_block (const direct_job *j, const float *slab, int64_t to, int64_t h0, int64_t h1, int64_t co0,
            const float *wb, const int n)
{
  for (int64_t ho = h0; ho < h1; ho++) {
    int64_t wo = 0;
    if (j->pairs)
      for (; wo + 2 * VEC <= j->Wo; wo += 2 * VEC)
        sum_pixels (j, slab, to, ho, ho - h0, wo, co0, wb, n, 2);
    for (; wo < j->Wo; wo += VEC)
      sum_pixels (j, slab, to, ho, ho - h0, wo, co0, wb, n, 1);
  }
}

/* Tasks [t0, t1): (output frame, group of rows) each, every channel block. */
static CONV_CLONES void
conv_tasks (void *ctx, int64_t t0, int64_t t1, int worker)
{
  const direct_job *j = ctx;
  float *slab = j->slabs + worker * j->slab;
  for (int64_t task = t0; task < t1; task++) {
    const int64_t to = task / j->groups, h0 = (task % j->groups) * j->rows, h1 = MIN (j->Ho, h0 + j->rows);
    fill_slab (j, slab, to, h0, h1 - h0);
    for (int64_t b = 0; b < j->n_blocks; b++) {
      int64_t co0;
      int n;
      block_span (j, b, &co0, &n);
      const float *wb = j->w_packed + co0 * j->K;
      switch (n) {
#define BLOCK(N) case N: rows_block (j, slab, to, h0, h1, co0, wb, N); break;
        BLOCK (1) BLOCK (2) BLOCK (3) BLOCK (4) BLOCK (5) BLOCK (6)
        BLOCK (7) BLOCK (8) BLOCK (9) BLOCK (10) BLOCK (11) BLOCK (12)
#undef BLOCK
      }
    }
  }
}

/* Channels summed together: as many as the registers hold (AVX-512: 32
 * registers of 16 floats; AVX2: 16 of 8, so a 16-float vector takes two).
 * Read once: the CPU does not change. */
static int
block_limit (void)
{
  static int limit;
  if (limit == 0) {
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
    __builtin_cpu_init ();
    limit = __builtin_cpu_supports ("avx512f") ? MAX_BLOCK : __builtin_cpu_supports ("avx2") ? 6 : 3;
#else
    limit = 4;
#endif
  }
  return limit; /* a race only writes the same value twice */
}

gboolean
dp_cpu_conv3d_direct (dp_backend *be, dp_tensor *y, const dp_tensor *x, const dp_tensor *w, const dp_tensor *bias,
                      const dp_conv3d_params *p)
{
  const int64_t Cin = x->shape[0], T = x->shape[1], H = x->shape[2], W = x->shape[3];
  const int64_t Cout = w->shape[0], kt = w->shape[2], kh = w->shape[3], kw = w->shape[4];
  const int64_t To = y->shape[1], Ho = y->shape[2], Wo = y->shape[3];
  const int64_t Wp = W + 2 * p->pad_w, K = Cin * kt * kh * kw;
  const int nt = dp_cpu_threads (be);
  const gboolean par = nt > 1 && Cout * K * To * Ho * Wo > DP_CPU_PAR_MIN;
  /* Rows per task: a slab within SLAB_BUDGET where the input allows, and
   * TASKS_PER_THREAD tasks per thread (down to MIN_ROWS rows: each task
   * copies kh - 1 rows more than it computes), so that a thread the system
   * stops for a while holds up little of the conv.  Results depend on
   * neither. */
  int64_t rows = MIN (Ho, MAX (1, SLAB_BUDGET / (Cin * kt * Wp) - (kh - 1)));
  while (par && rows > MIN_ROWS && To * ((Ho + rows - 1) / rows) < TASKS_PER_THREAD * nt)
    rows = (rows + 1) / 2;
  const int64_t slab_plane = (rows + kh - 1) * Wp;
  /* A row's last vector reads up to VEC - 1 + kw - 1 floats past its
   * last output position: past the slab's end on its last row. */
  const int64_t slab = Cin * kt * slab_plane + VEC + kw;
  const int64_t n_slabs = par ? nt : 1;
  const int limit = block_limit ();
  const int64_t n_blocks = (Cout + limit - 1) / limit;
  /* calloc: the slack and the rows a short last group leaves are zeros, never garbage */
  float *slabs = calloc ((size_t) (n_slabs * slab), sizeof (float));
  float *w_packed = malloc ((size_t) (Cout * K) * sizeof (float));
  if (!slabs || !w_packed) {
    free (slabs);
    free (w_packed);
    dp_backend_fail (be, DP_ERROR_NOMEM, "conv3d: cannot allocate %" G_GINT64_FORMAT " input slabs of %"
                     G_GINT64_FORMAT " floats", n_slabs, slab);
    return FALSE;
  }
  const int64_t groups = (Ho + rows - 1) / rows;
  direct_job j = { Cin, T, H, W, To, Ho, Wo, Wp, K, kt, kh, kw, p->pad_t_front, p->pad_h, p->pad_w,
                   rows, groups, slab_plane, slab, n_blocks, Cout / n_blocks, Cout % n_blocks,
                   limit == MAX_BLOCK, x->data, w_packed, bias ? bias->data : NULL, slabs, y->data };
  /* Weights of block b as [K][n]: the n channels' weights of one tap are adjacent. */
  const float *wd = w->data;
  for (int64_t b = 0; b < n_blocks; b++) {
    int64_t co0;
    int n;
    block_span (&j, b, &co0, &n);
    for (int64_t k = 0; k < K; k++)
      for (int c = 0; c < n; c++)
        w_packed[co0 * K + k * n + c] = wd[(co0 + c) * K + k];
  }
  dp_cpu_for (be, par, To * groups, conv_tasks, &j);
  free (slabs);
  free (w_packed);
  return TRUE;
}
