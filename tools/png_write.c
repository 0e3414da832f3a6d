/* A minimal PNG writer (see png_write.h).  Chunks: IHDR, one IDAT (the
 * zlib stream of the filtered rows), IEND; each with its CRC-32 (zlib's
 * crc32 is the PNG one). */
#include "png_write.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <glib/gstdio.h>
#include <zlib.h>

static void
put_be32 (uint8_t *p, uint32_t v)
{
  p[0] = (uint8_t) (v >> 24);
  p[1] = (uint8_t) (v >> 16);
  p[2] = (uint8_t) (v >> 8);
  p[3] = (uint8_t) v;
}

/* Length, type, data, CRC of type + data. */
static gboolean
write_chunk (FILE *f, const char type[4], const uint8_t *data, size_t len)
{
  uint8_t head[8], tail[4];
  uLong crc = crc32 (0L, Z_NULL, 0);

  put_be32 (head, (uint32_t) len);
  memcpy (head + 4, type, 4);
  crc = crc32 (crc, head + 4, 4);
  if (len > 0)
    crc = crc32 (crc, data, (uInt) len);
  put_be32 (tail, (uint32_t) crc);
  return fwrite (head, 1, 8, f) == 8 && (len == 0 || fwrite (data, 1, len, f) == len)
         && fwrite (tail, 1, 4, f) == 4;
}

gboolean
dp_png_write_rgb (const char *path, const uint8_t *rgb, int width, int height, GError **error)
{
  static const uint8_t signature[8] = { 0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n' };
  const size_t row = (size_t) width * 3;
  const size_t raw_len = (row + 1) * (size_t) height;
  uint8_t ihdr[13];
  uint8_t *raw = NULL, *packed = NULL;
  uLongf packed_len;
  FILE *f = NULL;
  gboolean ok = FALSE;
  int saved_errno = 0;

  g_return_val_if_fail (width > 0 && height > 0, FALSE);

  /* Rows, each behind its filter type byte (0: none). */
  raw = g_try_malloc (raw_len);
  packed_len = compressBound ((uLong) raw_len);
  packed = g_try_malloc (packed_len);
  if (raw == NULL || packed == NULL) {
    g_set_error (error, G_FILE_ERROR, G_FILE_ERROR_NOMEM, "%s: out of memory for a %dx%d image",
                 path, width, height);
    goto out;
  }
  for (int y = 0; y < height; y++) {
    raw[(row + 1) * y] = 0;
    memcpy (raw + (row + 1) * y + 1, rgb + row * y, row);
  }
  if (compress2 (packed, &packed_len, raw, (uLong) raw_len, Z_DEFAULT_COMPRESSION) != Z_OK) {
    g_set_error (error, G_FILE_ERROR, G_FILE_ERROR_FAILED, "%s: zlib could not compress the image",
                 path);
    goto out;
  }

  put_be32 (ihdr, (uint32_t) width);
  put_be32 (ihdr + 4, (uint32_t) height);
  ihdr[8] = 8;   /* bit depth */
  ihdr[9] = 2;   /* colour type: RGB */
  ihdr[10] = 0;  /* deflate */
  ihdr[11] = 0;  /* filter method 0 */
  ihdr[12] = 0;  /* no interlace */

  f = g_fopen (path, "wb");
  if (f == NULL) {
    saved_errno = errno;
    g_set_error (error, G_FILE_ERROR, g_file_error_from_errno (saved_errno),
                 "Cannot create %s: %s", path, g_strerror (saved_errno));
    goto out;
  }
  if (fwrite (signature, 1, 8, f) != 8 || !write_chunk (f, "IHDR", ihdr, sizeof ihdr)
      || !write_chunk (f, "IDAT", packed, packed_len) || !write_chunk (f, "IEND", NULL, 0)) {
    saved_errno = errno;
    g_set_error (error, G_FILE_ERROR, g_file_error_from_errno (saved_errno),
                 "Cannot write %s: %s", path, g_strerror (saved_errno));
    goto out;
  }
  ok = TRUE;

out:
  if (f != NULL && fclose (f) != 0 && ok) {
    saved_errno = errno;
    g_set_error (error, G_FILE_ERROR, g_file_error_from_errno (saved_errno),
                 "Cannot write %s: %s", path, g_strerror (saved_errno));
    ok = FALSE;
  }
  g_free (raw);
  g_free (packed);
  return ok;
}
