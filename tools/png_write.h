/* A minimal PNG writer for dualparal-generate: 8-bit RGB, no interlace,
 * zlib-compressed (tools/png_write.c). */
#ifndef DUALPARAL_TOOLS_PNG_WRITE_H
#define DUALPARAL_TOOLS_PNG_WRITE_H

#include <stdint.h>
#include <glib.h>

G_BEGIN_DECLS

/* Writes rgb (height rows of width * 3 bytes, R G B) to path as a PNG
 * (colour type 2, bit depth 8, every row with filter type 0 "None").
 * FALSE with a G_FILE_ERROR naming the file when it cannot be written. */
gboolean dp_png_write_rgb (const char *path, const uint8_t *rgb, int width, int height,
                           GError **error);

G_END_DECLS

#endif
