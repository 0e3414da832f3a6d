/* Embedding dualparal: a few frames of text-to-video with the generator API
 * alone, written as PPM images.  Builds against an installed libdualparal:
 *
 *   cc embed.c -o embed $(pkg-config --cflags --libs dualparal)
 *   ./embed OUT_DIR ["prompt"]
 *
 * The model is the library's default (DUALPARAL_MODEL, else the installed
 * embedded model); any Wan2.1 diffusers directory works the same way. */
#include <stdio.h>
#include <stdlib.h>

#include <glib/gstdio.h>

#include <dualparal/generator.h>

typedef struct {
  const char *dir;
  int width, height;
  int written;
} Output;

/* Frames arrive a block at a time; each is width x height RGB, packed. */
static gboolean
write_frames (const uint8_t *rgb, int n_frames, int64_t first_frame, const dp_progress *progress,
              void *user_data)
{
  Output *out = user_data;
  const size_t frame_bytes = (size_t) out->width * out->height * 3;

  for (int i = 0; i < n_frames; i++) {
    char *path = g_strdup_printf ("%s/frame-%03" G_GINT64_FORMAT ".ppm", out->dir, first_frame + i);
    FILE *f = fopen (path, "wb");
    gboolean ok = f != NULL && fprintf (f, "P6\n%d %d\n255\n", out->width, out->height) > 0 &&
                  fwrite (rgb + i * frame_bytes, 1, frame_bytes, f) == frame_bytes;
    if (f != NULL && fclose (f) != 0)
      ok = FALSE;
    if (!ok)
      fprintf (stderr, "embed: cannot write %s\n", path);
    g_free (path);
    if (!ok)
      return FALSE; /* stops the run */
    out->written++;
  }
  return TRUE;
}

int
main (int argc, char **argv)
{
  GError *error = NULL;
  dp_generator_params p;
  dp_generator *gen;
  Output out = { 0 };
  char *model;

  if (argc < 2) {
    fprintf (stderr, "usage: embed OUT_DIR [PROMPT]\n");
    return 2;
  }
  out.dir = argv[1];
  if (g_mkdir_with_parents (out.dir, 0755) != 0) {
    fprintf (stderr, "embed: cannot make the folder %s\n", out.dir);
    return 1;
  }
  model = dp_default_model_dir (&error);
  if (model == NULL) {
    fprintf (stderr, "embed: %s\n", error->message);
    g_error_free (error);
    return 1;
  }

  dp_generator_params_init (&p);
  p.model_dir = model;
  p.prompt = argc > 2 ? argv[2] : "a red ball moving to the right";
  p.num_frames = 5; /* 4k+1: two latent frames */
  p.steps = 4;
  gen = dp_generator_new (&p, &error);
  if (gen != NULL) {
    dp_generator_get_size (gen, &out.width, &out.height);
    if (!dp_generator_run (gen, write_frames, &out, &error))
      g_clear_pointer (&gen, dp_generator_free);
  }
  g_free (model);
  if (gen == NULL) {
    fprintf (stderr, "embed: %s (error %d)\n", error->message, error->code);
    g_error_free (error);
    return 1;
  }
  dp_generator_free (gen);
  printf ("embed: wrote %d frames of %dx%d to %s\n", out.written, out.width, out.height, out.dir);
  return out.written == 5 ? 0 : 1;
}
