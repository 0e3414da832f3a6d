/* CPU backend: a stride-1 Conv3d computed directly, without im2col
 * (cpu_conv.c chooses it for few output channels).
 *
 * Why: with few output channels (3-48 in the embedded model's VAE
 * decoder) im2col + GEMM spends most of its time moving data.  The column
 * matrix is kt * kh * kw (27) times the input, OpenBLAS packs it once
 * more, and its kernel then does only 2 * Cout flops per packed float.
 * Here the input is copied once, zero-padded in h and w, and each output
 * row is summed in registers: for 16 neighbouring output pixels and a
 * block of up to 12 output channels, every (input channel, tap) loads one
 * vector of input pixels and adds it, times one weight per channel, to the
 * channels' accumulators.
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

typedef float vec __attribute__ ((vector_size (VEC * sizeof (float))));

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CONV_CLONES __attribute__ ((target_clones ("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CONV_CLONES
#endif

typedef struct {
  int64_t Cin, T, H, W, To, Ho, Wo, Hp, Wp, plane, K, kt, kh, kw, pf, ph, pw;
  int64_t n_blocks, block_base, block_rem; /* output channel blocks: the first block_rem have one more */
  gboolean pairs;                          /* two pixel vectors at a time */
  const float *x, *w_packed, *bias;
  float *x_padded, *y;
} direct_job;

/* First output channel and size of block b. */
static inline void
block_span (const direct_job *j, int64_t b, int64_t *co0, int *n)
{
  *co0 = b * j->block_base + MIN (b, j->block_rem);
  *n = (int) (j->block_base + (b < j->block_rem));
}

/* Planes [p0, p1) of x (one (ci, t) each) into x_padded, ph rows and pw
 * columns of zeros around, zeros after (the vector loads of a row's last
 * pixels read past it). */
static void
pad_planes (void *ctx, int64_t p0, int64_t p1, int worker)
{
  const direct_job *j = ctx;
  for (int64_t p = p0; p < p1; p++) {
    float *dst = j->x_padded + p * j->plane;
    const float *src = j->x + p * j->H * j->W;
    memset (dst, 0, (size_t) j->plane * sizeof (float));
    for (int64_t h = 0; h < j->H; h++)
      memcpy (dst + (h + j->ph) * j->Wp + j->pw, src + h * j->W, (size_t) j->W * sizeof (float));
  }
}

/* Output pixels [wo, wo + nv * VEC) of row ho (at most the row's end is
 * stored) for a block of n channels.  n and nv are constants once inlined,
 * so the n * nv accumulators stay in registers; with nv = 2 each weight
 * loaded serves two vectors of pixels. */
static inline __attribute__ ((always_inline)) void
sum_pixels (const direct_job *j, int64_t to, int64_t ho, int64_t wo, int64_t co0, const float *wb, const int n,
            const int nv)
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
      const float *xr = j->x_padded + (ci * T + ti) * j->plane + ho * Wp + wo;
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

/* One output row of a block of n channels: pairs of pixel vectors where
 * the registers hold them (AVX-512: 2 x 12 accumulators), then single ones
 * (the last possibly partial).  Same sums, same order, either way. */
static inline __attribute__ ((always_inline)) void
row_block (const direct_job *j, int64_t to, int64_t ho, int64_t co0, const float *wb, const int n)
{
  int64_t wo = 0;
  if (j->pairs)
    for (; wo + 2 * VEC <= j->Wo; wo += 2 * VEC)
      sum_pixels (j, to, ho, wo, co0, wb, n, 2);
  for (; wo < j->Wo; wo += VEC)
    sum_pixels (j, to, ho, wo, co0, wb, n, 1);
}

/* Tasks [t0, t1): (output frame, channel block, output row) each. */
static CONV_CLONES void
conv_rows (void *ctx, int64_t t0, int64_t t1, int worker)
{
  const direct_job *j = ctx;
  for (int64_t task = t0; task < t1; task++) {
    const int64_t ho = task % j->Ho, b = (task / j->Ho) % j->n_blocks, to = task / (j->Ho * j->n_blocks);
    int64_t co0;
    int n;
    block_span (j, b, &co0, &n);
    const float *wb = j->w_packed + co0 * j->K;
    switch (n) {
#define BLOCK(N) case N: row_block (j, to, ho, co0, wb, N); break;
      BLOCK (1) BLOCK (2) BLOCK (3) BLOCK (4) BLOCK (5) BLOCK (6)
      BLOCK (7) BLOCK (8) BLOCK (9) BLOCK (10) BLOCK (11) BLOCK (12)
#undef BLOCK
    }
  }
}

/* Channels summed together: as many as the registers hold (AVX-512: 32
 * registers of 16 floats; AVX2: 16 of 8, so a 16-float vector takes two). */
static int
block_limit (void)
{
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
  __builtin_cpu_init ();
  if (__builtin_cpu_supports ("avx512f"))
    return MAX_BLOCK;
  if (__builtin_cpu_supports ("avx2"))
    return 6;
  return 3;
#else
  return 4;
#endif
}

gboolean
dp_cpu_conv3d_direct (dp_backend *be, dp_tensor *y, const dp_tensor *x, const dp_tensor *w, const dp_tensor *bias,
                      const dp_conv3d_params *p)
{
  const int64_t Cin = x->shape[0], T = x->shape[1], H = x->shape[2], W = x->shape[3];
  const int64_t Cout = w->shape[0], kt = w->shape[2], kh = w->shape[3], kw = w->shape[4];
  const int64_t To = y->shape[1], Ho = y->shape[2], Wo = y->shape[3];
  const int64_t Hp = H + 2 * p->pad_h, Wp = W + 2 * p->pad_w, K = Cin * kt * kh * kw;
  /* A row's last vector reads up to VEC - 1 + kw - 1 floats past the
   * plane's last output position. */
  const int64_t plane = Hp * Wp + VEC + kw;
  const int64_t n_blocks = (Cout + block_limit () - 1) / block_limit ();
  float *x_padded = malloc ((size_t) (Cin * T * plane) * sizeof (float));
  float *w_packed = malloc ((size_t) (Cout * K) * sizeof (float));
  if (!x_padded || !w_packed) {
    free (x_padded);
    free (w_packed);
    dp_backend_fail (be, DP_ERROR_NOMEM, "conv3d: cannot allocate the padded input (%" G_GINT64_FORMAT
                     " floats)", Cin * T * plane);
    return FALSE;
  }
  direct_job j = { Cin, T, H, W, To, Ho, Wo, Hp, Wp, plane, K, kt, kh, kw, p->pad_t_front, p->pad_h, p->pad_w,
                   n_blocks, Cout / n_blocks, Cout % n_blocks, block_limit () == MAX_BLOCK, x->data, w_packed, bias ? bias->data : NULL,
                   x_padded, y->data };
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
  const gboolean par = dp_cpu_threads (be) > 1 && Cout * K * To * Ho * Wo > DP_CPU_PAR_MIN;
  dp_cpu_for (be, par && Cin * T * plane > DP_CPU_PAR_MIN, Cin * T, pad_planes, &j);
  dp_cpu_for (be, par, To * n_blocks * Ho, conv_rows, &j);
  free (x_padded);
  free (w_packed);
  return TRUE;
}
