/* Tensor bookkeeping and dtype conversions (host side). */
#include "dualparal/tensor.h"

#include <math.h>
#include <string.h>

size_t
dp_dtype_size (dp_dtype dtype)
{
  return dtype == DP_F32 ? 4 : 2;
}

const char *
dp_dtype_name (dp_dtype dtype)
{
  switch (dtype) {
    case DP_F32: return "F32";
    case DP_BF16: return "BF16";
    case DP_F16: return "F16";
  }
  return "?";
}

int64_t
dp_tensor_nelem (const dp_tensor *t)
{
  int64_t n = 1;
  for (int i = 0; i < t->ndim; i++)
    n *= t->shape[i];
  return n;
}

size_t
dp_tensor_nbytes (const dp_tensor *t)
{
  return (size_t) dp_tensor_nelem (t) * dp_dtype_size (t->dtype);
}

int64_t
dp_tensor_cols (const dp_tensor *t)
{
  return t->ndim > 0 ? t->shape[t->ndim - 1] : 1;
}

int64_t
dp_tensor_rows (const dp_tensor *t)
{
  int64_t c = dp_tensor_cols (t);
  return c ? dp_tensor_nelem (t) / c : 0;
}

gboolean
dp_tensor_same_shape (const dp_tensor *a, const dp_tensor *b)
{
  if (a->ndim != b->ndim)
    return FALSE;
  for (int i = 0; i < a->ndim; i++)
    if (a->shape[i] != b->shape[i])
      return FALSE;
  return TRUE;
}

const char *
dp_shape_str (const dp_tensor *t, char *buf, size_t len)
{
  size_t o = 0;
  o += g_snprintf (buf + o, len - o, "[");
  for (int i = 0; i < t->ndim && o < len; i++)
    o += g_snprintf (buf + o, len - o, i ? ", %" G_GINT64_FORMAT : "%" G_GINT64_FORMAT, t->shape[i]);
  if (o < len)
    g_snprintf (buf + o, len - o, "]");
  return buf;
}

dp_tensor
dp_tensor_view (void *data, dp_dtype dtype, int ndim, const int64_t *shape)
{
  dp_tensor t = { .dtype = dtype, .ndim = ndim, .data = data, .owned = FALSE };
  g_return_val_if_fail (ndim >= 0 && ndim <= DP_MAX_DIMS, t);
  for (int i = 0; i < ndim; i++)
    t.shape[i] = shape[i];
  return t;
}

gboolean
dp_tensor_reshape (dp_tensor *t, int ndim, const int64_t *shape)
{
  dp_tensor r = dp_tensor_view (t->data, t->dtype, ndim, shape);
  if (ndim < 0 || ndim > DP_MAX_DIMS || dp_tensor_nelem (&r) != dp_tensor_nelem (t))
    return FALSE;
  r.owned = t->owned;
  *t = r;
  return TRUE;
}

dp_tensor
dp_tensor_slice0 (const dp_tensor *t, int64_t row0, int64_t nrows)
{
  dp_tensor s = *t;
  g_return_val_if_fail (t->ndim > 0 && row0 >= 0 && row0 + nrows <= t->shape[0], s);
  size_t row_bytes = t->shape[0] ? dp_tensor_nbytes (t) / (size_t) t->shape[0] : 0;
  s.data = t->data ? (uint8_t *) t->data + (size_t) row0 * row_bytes : NULL;
  s.shape[0] = nrows;
  s.owned = FALSE;
  return s;
}

dp_tensor
dp_tensor_new_host (dp_dtype dtype, int ndim, const int64_t *shape)
{
  dp_tensor t = dp_tensor_view (NULL, dtype, ndim, shape);
  t.data = g_malloc0 (MAX (dp_tensor_nbytes (&t), 1));
  t.owned = TRUE;
  return t;
}

void
dp_tensor_free (dp_tensor *t)
{
  if (t->owned)
    g_free (t->data);
  memset (t, 0, sizeof *t);
}

float
dp_bf16_to_f32 (uint16_t h)
{
  uint32_t u = (uint32_t) h << 16;
  float f;
  memcpy (&f, &u, 4);
  return f;
}

uint16_t
dp_f32_to_bf16 (float f)
{
  uint32_t u;
  memcpy (&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) /* NaN: keep it a quiet NaN */
    return (uint16_t) ((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u); /* round to nearest even */
  return (uint16_t) (u >> 16);
}

float
dp_f16_to_f32 (uint16_t h)
{
  uint32_t sign = (uint32_t) (h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1f, man = h & 0x3ff, u;
  if (exp == 0) {
    if (man == 0) {
      u = sign;
    } else { /* subnormal: renormalise */
      int e = -1;
      do { man <<= 1; e++; } while (!(man & 0x400));
      u = sign | ((uint32_t) (127 - 15 - e) << 23) | ((man & 0x3ff) << 13);
    }
  } else if (exp == 31) {
    u = sign | 0x7f800000u | (man << 13);
  } else {
    u = sign | ((exp + 127 - 15) << 23) | (man << 13);
  }
  float f;
  memcpy (&f, &u, 4);
  return f;
}

uint16_t
dp_f32_to_f16 (float f)
{
  uint32_t u;
  memcpy (&u, &f, 4);
  uint16_t sign = (u >> 16) & 0x8000;
  uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u)
    return sign | 0x7e00; /* NaN */
  if (a >= 0x477ff000u) /* rounds to >= 65520: infinity */
    return sign | 0x7c00;
  if (a < 0x38800000u) { /* below the smallest normal: subnormal or zero */
    float af;
    memcpy (&af, &a, 4);
    return sign | (uint16_t) lrintf (af * 16777216.0f); /* units of 2^-24, RNE */
  }
  uint32_t r = a + 0xfffu + ((a >> 13) & 1u) - (112u << 23);
  return sign | (uint16_t) (r >> 13);
}

void
dp_convert (void *dst, dp_dtype ddt, const void *src, dp_dtype sdt, size_t n)
{
  if (ddt == sdt) {
    memcpy (dst, src, n * dp_dtype_size (ddt));
    return;
  }
  const uint16_t *s16 = src;
  const float *s32 = src;
  uint16_t *d16 = dst;
  float *d32 = dst;
  for (size_t i = 0; i < n; i++) {
    float v = sdt == DP_F32 ? s32[i] : sdt == DP_BF16 ? dp_bf16_to_f32 (s16[i]) : dp_f16_to_f32 (s16[i]);
    if (ddt == DP_F32)
      d32[i] = v;
    else if (ddt == DP_BF16)
      d16[i] = dp_f32_to_bf16 (v);
    else
      d16[i] = dp_f32_to_f16 (v);
  }
}
