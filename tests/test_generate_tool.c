/* dualparal-generate end to end on the tiny pipeline model
 * (tests/data/pipeline/tiny-wan): the program (DP_GENERATE_TOOL) is run as a
 * user would, and its files are checked:
 * - the PNG frames are valid PNGs (signature, chunk CRCs, IHDR, zlib data)
 *   whose pixels equal, bit for bit, the frames the generator API gives
 *   in-process for the same settings;
 * - the Y4M file has the right header, frame count and size, and its planes
 *   are those frames in BT.601 limited range (within 1 level of the
 *   formula; 4:2:0 chroma the mean of each 2x2 block);
 * - 4:4:4 Y4M to stdout;
 * - --engine dualparal --stages 2: the DualParal engine's frames on two
 *   CPU stages;
 * - bad options and models: exit status 1, a message on stderr, no file;
 * - non-ASCII prompts (é, 日本語, emoji) in the C locale: the frames of the
 *   generator API for the same prompt; bytes that are not UTF-8 are refused. */
#include <math.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <glib.h>
#include <glib/gstdio.h>
#include <zlib.h>

#include "dualparal/generator.h"

#include "test_util.h"

#define PROMPT "Two glowing cubes roll to the left &amp; a star spins"
#define NEGATIVE "static, blurred"

static char *
model_dir (void)
{
  return dp_test_data_path ("pipeline", "tiny-wan", NULL);
}

static const char *
tool (void)
{
  const char *path = g_getenv ("DP_GENERATE_TOOL");
  g_assert_nonnull (path);
  return path;
}

/* Runs the tool with args (NULL-terminated, without argv[0]); returns its
 * exit status, stderr in *err (g_free). */
static int
run_tool (const char *const *args, char **err)
{
  GPtrArray *argv = g_ptr_array_new ();
  GError *error = NULL;
  int wait_status = 0;

  g_ptr_array_add (argv, (gpointer) tool ());
  for (int i = 0; args[i]; i++)
    g_ptr_array_add (argv, (gpointer) args[i]);
  g_ptr_array_add (argv, NULL);
  g_assert_true (g_spawn_sync (NULL, (char **) argv->pdata, NULL, G_SPAWN_STDOUT_TO_DEV_NULL, NULL,
                               NULL, NULL, err, &wait_status, &error));
  g_assert_no_error (error);
  g_ptr_array_free (argv, TRUE);
  g_test_message ("stderr: %s", *err);
  g_assert_true (WIFEXITED (wait_status));
  return WEXITSTATUS (wait_status);
}

/* The same with stdout captured as bytes. */
static int
run_tool_stdout (const char *const *args, GByteArray *out)
{
  GPtrArray *argv = g_ptr_array_new ();
  GError *error = NULL;
  GPid pid;
  int fd, wait_status = 0;
  guint8 buf[65536];
  gssize n;

  g_ptr_array_add (argv, (gpointer) tool ());
  for (int i = 0; args[i]; i++)
    g_ptr_array_add (argv, (gpointer) args[i]);
  g_ptr_array_add (argv, NULL);
  g_assert_true (g_spawn_async_with_pipes (NULL, (char **) argv->pdata, NULL,
                                           G_SPAWN_DO_NOT_REAP_CHILD | G_SPAWN_STDERR_TO_DEV_NULL,
                                           NULL, NULL, &pid, NULL, &fd, NULL, &error));
  g_assert_no_error (error);
  while ((n = read (fd, buf, sizeof buf)) > 0)
    g_byte_array_append (out, buf, (guint) n);
  close (fd);
  g_assert_cmpint (waitpid (pid, &wait_status, 0), ==, pid);
  g_spawn_close_pid (pid);
  g_ptr_array_free (argv, TRUE);
  g_assert_true (WIFEXITED (wait_status));
  return WEXITSTATUS (wait_status);
}

/* The frames the generator API makes for the settings the tool is given. */
static gboolean
collect (const uint8_t *rgb, int n, int64_t first, const dp_progress *p, void *data)
{
  g_byte_array_append (data, rgb, (guint) n * 48 * 32 * 3);
  return TRUE;
}

/* Settings as the tool makes them from its options; engine options in p
 * are kept. */
static GByteArray *
api_frames_engine (dp_generator_params *p, const char *model, int frames, int steps, uint64_t seed,
                   dp_sampler_kind sampler)
{
  GError *err = NULL;
  GByteArray *out = g_byte_array_new ();

  p->model_dir = model;
  p->prompt = PROMPT;
  p->negative_prompt = NEGATIVE;
  p->num_frames = frames;
  p->steps = steps;
  p->seed = seed;
  p->sampler = sampler;
  dp_generator *gen = dp_generator_new (p, &err);
  g_assert_no_error (err);
  int W, H;
  dp_generator_get_size (gen, &W, &H);
  g_assert_cmpint (W, ==, 48);
  g_assert_cmpint (H, ==, 32);
  g_assert_true (dp_generator_run (gen, collect, out, &err));
  g_assert_no_error (err);
  dp_generator_free (gen);
  return out;
}

static GByteArray *
api_frames (const char *model, int frames, int steps, uint64_t seed, dp_sampler_kind sampler)
{
  dp_generator_params p;

  dp_generator_params_init (&p);
  return api_frames_engine (&p, model, frames, steps, seed, sampler);
}

static uint32_t
be32 (const guint8 *p)
{
  return (uint32_t) p[0] << 24 | (uint32_t) p[1] << 16 | (uint32_t) p[2] << 8 | p[3];
}

/* Reads a PNG as dp_png_write_rgb writes it (RGB 8-bit, filter 0) into rgb
 * (width * height * 3), checking its structure. */
static void
read_png (const char *path, int width, int height, guint8 *rgb)
{
  static const guint8 sig[8] = { 0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n' };
  gsize len, pos = 8;
  char *data = dp_test_read_file (path, &len);
  GByteArray *idat = g_byte_array_new ();
  gboolean ihdr = FALSE, iend = FALSE;

  g_assert_cmpint (len, >, 8);
  g_assert_cmpmem (data, 8, sig, 8);
  while (pos + 12 <= len && !iend) {
    const guint8 *c = (const guint8 *) data + pos;
    uint32_t n = be32 (c);
    g_assert_cmpint (pos + 12 + n, <=, len);
    uLong crc = crc32 (crc32 (0L, Z_NULL, 0), c + 4, 4 + n);
    g_assert_cmpuint (crc, ==, be32 (c + 8 + n));
    if (memcmp (c + 4, "IHDR", 4) == 0) {
      g_assert_cmpint (n, ==, 13);
      g_assert_cmpint (be32 (c + 8), ==, width);
      g_assert_cmpint (be32 (c + 12), ==, height);
      g_assert_cmpint (c[16], ==, 8); /* depth */
      g_assert_cmpint (c[17], ==, 2); /* RGB */
      g_assert_cmpint (c[20], ==, 0); /* no interlace */
      ihdr = TRUE;
    } else if (memcmp (c + 4, "IDAT", 4) == 0) {
      g_byte_array_append (idat, c + 8, n);
    } else if (memcmp (c + 4, "IEND", 4) == 0) {
      iend = TRUE;
    }
    pos += 12 + n;
  }
  g_assert_true (ihdr);
  g_assert_true (iend);
  g_assert_cmpint (pos, ==, len);

  uLongf raw_len = (uLongf) (width * 3 + 1) * height;
  guint8 *raw = g_malloc (raw_len);
  g_assert_cmpint (uncompress (raw, &raw_len, idat->data, idat->len), ==, Z_OK);
  g_assert_cmpint (raw_len, ==, (uLongf) (width * 3 + 1) * height);
  for (int y = 0; y < height; y++) {
    g_assert_cmpint (raw[(size_t) y * (width * 3 + 1)], ==, 0);
    memcpy (rgb + (size_t) y * width * 3, raw + (size_t) y * (width * 3 + 1) + 1, width * 3);
  }
  g_free (raw);
  g_byte_array_unref (idat);
  g_free (data);
}

static double
luma (const guint8 *p)
{
  return 16.0 + 0.256788 * p[0] + 0.504129 * p[1] + 0.097906 * p[2];
}

static double
cb (const guint8 *p)
{
  return 128.0 - 0.148223 * p[0] - 0.290993 * p[1] + 0.439216 * p[2];
}

static double
cr (const guint8 *p)
{
  return 128.0 + 0.439216 * p[0] - 0.367788 * p[1] - 0.071427 * p[2];
}

/* Checks a Y4M stream of n frames of W x H against the RGB frames. */
static void
check_y4m (const guint8 *data, gsize len, int W, int H, int n, gboolean c444, const guint8 *rgb)
{
  char *header = g_strdup_printf ("YUV4MPEG2 W%d H%d F16:1 Ip A1:1 %s XCOLORRANGE=LIMITED\n", W, H,
                                  c444 ? "C444 XYSCSS=444" : "C420jpeg XYSCSS=420JPEG");
  const size_t hl = strlen (header);
  const size_t plane = (size_t) W * H, cplane = c444 ? plane : plane / 4;
  const size_t frame = 6 + plane + 2 * cplane;

  g_assert_cmpint (len, ==, hl + n * frame);
  g_assert_cmpmem (data, hl, header, hl);
  for (int f = 0; f < n; f++) {
    const guint8 *fr = data + hl + f * frame;
    const guint8 *px = rgb + (size_t) f * plane * 3;
    g_assert_cmpmem (fr, 6, "FRAME\n", 6);
    const guint8 *y = fr + 6, *u = y + plane, *v = u + cplane;
    for (size_t i = 0; i < plane; i++)
      g_assert_cmpfloat (fabs (y[i] - luma (px + 3 * i)), <=, 1.0);
    for (int by = 0; by < (c444 ? H : H / 2); by++)
      for (int bx = 0; bx < (c444 ? W : W / 2); bx++) {
        double sb = 0, sr = 0;
        int k = c444 ? 1 : 2;
        for (int dy = 0; dy < k; dy++)
          for (int dx = 0; dx < k; dx++) {
            const guint8 *p = px + 3 * ((size_t) (k * by + dy) * W + k * bx + dx);
            sb += cb (p);
            sr += cr (p);
          }
        size_t i = (size_t) by * (c444 ? W : W / 2) + bx;
        g_assert_cmpfloat (fabs (u[i] - sb / (k * k)), <=, 1.0);
        g_assert_cmpfloat (fabs (v[i] - sr / (k * k)), <=, 1.0);
      }
  }
  g_free (header);
}

static void
test_y4m_and_png (void)
{
  char *model = model_dir ();
  char *tmp = dp_test_make_tmp_dir ("dp-generate-XXXXXX");
  char *y4m = g_build_filename (tmp, "out.y4m", NULL);
  char *png = g_build_filename (tmp, "png", "nested", NULL);
  char *err = NULL;
  const char *args[] = { "--model", model, "--prompt", PROMPT, "--negative-prompt", NEGATIVE,
                         "--frames", "9", "--steps", "2", "--seed", "11", "--sampler", "euler",
                         "--output", y4m, "--png-dir", png, NULL };

  g_assert_cmpint (run_tool (args, &err), ==, 0);
  /* Progress on stderr. */
  g_assert_nonnull (strstr (err, "48x32, 9 frames at 16 fps"));
  g_assert_nonnull (strstr (err, "step 2/2"));
  g_assert_nonnull (strstr (err, "frames 5-8 of 9"));
  g_assert_nonnull (strstr (err, "done: 9 frames"));
  g_free (err);

  GByteArray *want = api_frames (model, 9, 2, 11, DP_SAMPLER_EULER);
  g_assert_cmpint (want->len, ==, 9 * 48 * 32 * 3);
  guint8 *rgb = g_malloc (want->len);
  for (int f = 0; f < 9; f++) {
    char name[32];
    g_snprintf (name, sizeof name, "frame-%06d.png", f);
    char *path = g_build_filename (png, name, NULL);
    read_png (path, 48, 32, rgb + (size_t) f * 48 * 32 * 3);
    g_free (path);
  }
  g_assert_cmpmem (rgb, want->len, want->data, want->len);

  gsize len;
  char *data = dp_test_read_file (y4m, &len);
  check_y4m ((const guint8 *) data, len, 48, 32, 9, FALSE, want->data);
  g_free (data);

  g_free (rgb);
  g_byte_array_unref (want);
  dp_test_remove_tree (tmp);
  g_free (png);
  g_free (y4m);
  g_free (tmp);
  g_free (model);
}

static void
test_stdout_444 (void)
{
  char *model = model_dir ();
  const char *args[] = { "--model", model, "--prompt", PROMPT, "--negative-prompt", NEGATIVE,
                         "--frames", "5", "--steps", "2", "--seed", "3", "--output", "-",
                         "--y4m-chroma", "444", "--quiet", NULL };
  GByteArray *out = g_byte_array_new ();

  g_assert_cmpint (run_tool_stdout (args, out), ==, 0);
  GByteArray *want = api_frames (model, 5, 2, 3, DP_SAMPLER_UNIPC);
  check_y4m (out->data, out->len, 48, 32, 5, TRUE, want->data);
  g_byte_array_unref (want);
  g_byte_array_unref (out);
  g_free (model);
}

/* --engine dualparal --stages 2: the frames of the DualParal engine on two
 * CPU stages with the given block and context sizes. */
static void
test_dualparal (void)
{
  char *model = model_dir ();
  const char *args[] = { "--model", model, "--prompt", PROMPT, "--negative-prompt", NEGATIVE,
                         "--frames", "9", "--steps", "2", "--seed", "5", "--engine", "dualparal",
                         "--stages", "2", "--block-frames", "1", "--context-frames", "1",
                         "--output", "-", "--y4m-chroma", "444", "--quiet", NULL };
  GByteArray *out = g_byte_array_new ();
  dp_generator_params p;

  g_assert_cmpint (run_tool_stdout (args, out), ==, 0);
  dp_generator_params_init (&p);
  p.engine = DP_ENGINE_DUALPARAL;
  p.devices = "cpu,cpu";
  p.block_frames = 1;
  p.context_frames = 1;
  GByteArray *want = api_frames_engine (&p, model, 9, 2, 5, DP_SAMPLER_UNIPC);
  check_y4m (out->data, out->len, 48, 32, 9, TRUE, want->data);

  /* --vae-thread: decoded on a thread and backend of its own, the same bytes. */
  const char *threaded[G_N_ELEMENTS (args) + 1];
  memcpy (threaded, args, sizeof args);
  threaded[G_N_ELEMENTS (args) - 1] = "--vae-thread";
  threaded[G_N_ELEMENTS (args)] = NULL;
  g_byte_array_set_size (out, 0);
  g_assert_cmpint (run_tool_stdout (threaded, out), ==, 0);
  check_y4m (out->data, out->len, 48, 32, 9, TRUE, want->data);

  /* --vae-tile 16: the API's tiled frames (a 2 x 4 grid here), not the untiled ones. */
  const char *tiled[G_N_ELEMENTS (args) + 2];
  memcpy (tiled, args, sizeof args);
  tiled[G_N_ELEMENTS (args) - 1] = "--vae-tile";
  tiled[G_N_ELEMENTS (args)] = "16";
  tiled[G_N_ELEMENTS (args) + 1] = NULL;
  g_byte_array_set_size (out, 0);
  g_assert_cmpint (run_tool_stdout (tiled, out), ==, 0);
  p.vae_tile = 16;
  GByteArray *want_tiled = api_frames_engine (&p, model, 9, 2, 5, DP_SAMPLER_UNIPC);
  check_y4m (out->data, out->len, 48, 32, 9, TRUE, want_tiled->data);
  g_assert_true (want_tiled->len == want->len && memcmp (want_tiled->data, want->data, want->len) != 0);
  g_byte_array_unref (want_tiled);
  g_byte_array_unref (want);
  g_byte_array_unref (out);
  g_free (model);
}

/* --guidance-2 with the Wan2.2 two-expert model (tests/data/wan22/tiny-wan22):
 * the frames of the API with guidance_scale_2 (and not those without it); a
 * one-transformer model refuses it. */
static void
test_guidance_2 (void)
{
  char *model = dp_test_data_path ("wan22", "tiny-wan22", NULL);
  const char *args[] = { "--model", model, "--prompt", PROMPT, "--negative-prompt", NEGATIVE,
                         "--frames", "5", "--steps", "3", "--seed", "3", "--guidance-2", "2.5",
                         "--output", "-", "--y4m-chroma", "444", "--quiet", NULL };
  GByteArray *out = g_byte_array_new ();
  dp_generator_params p;

  g_assert_cmpint (run_tool_stdout (args, out), ==, 0);
  dp_generator_params_init (&p);
  p.guidance_scale_2 = 2.5;
  GByteArray *want = api_frames_engine (&p, model, 5, 3, 3, DP_SAMPLER_UNIPC);
  check_y4m (out->data, out->len, 48, 32, 5, TRUE, want->data);
  dp_generator_params_init (&p);
  GByteArray *without = api_frames_engine (&p, model, 5, 3, 3, DP_SAMPLER_UNIPC);
  g_assert_true (without->len == want->len && memcmp (without->data, want->data, want->len) != 0);
  g_byte_array_unref (without);
  g_byte_array_unref (want);
  g_byte_array_unref (out);
  g_free (model);

  char *wan21 = model_dir (), *err = NULL;
  const char *bad[] = { "--model", wan21, "--prompt", PROMPT, "--frames", "5", "--steps", "2",
                        "--guidance-2", "3", "--output", "-", NULL };
  g_assert_cmpint (run_tool (bad, &err), !=, 0);
  g_assert_nonnull (strstr (err, "guidance_scale_2 is for Wan2.2 two-expert models"));
  g_free (err);
  g_free (wan21);
}

/* --prompt-file: the frames of the API with the same prompt schedule (and
 * not those without the change). */
static void
test_prompt_file (void)
{
  static const char schedule[] = "0: " PROMPT "\n# then\n9: a blue square moving to the left\n";
  char *model = model_dir ();
  char *tmp = dp_test_make_tmp_dir ("dp-generate-XXXXXX");
  char *file = g_build_filename (tmp, "schedule.txt", NULL);
  g_assert_true (g_file_set_contents (file, schedule, -1, NULL));
  const char *args[] = { "--model", model, "--prompt-file", file, "--negative-prompt", NEGATIVE,
                         "--frames", "17", "--steps", "2", "--seed", "5", "--block-frames", "1",
                         "--context-frames", "1", "--output", "-", "--y4m-chroma", "444", "--quiet", NULL };
  GByteArray *out = g_byte_array_new ();
  dp_generator_params p;

  g_assert_cmpint (run_tool_stdout (args, out), ==, 0);
  dp_generator_params_init (&p);
  p.engine = DP_ENGINE_DUALPARAL;
  p.block_frames = 1;
  p.context_frames = 1;
  p.prompt_schedule = schedule;
  GByteArray *want = api_frames_engine (&p, model, 17, 2, 5, DP_SAMPLER_UNIPC);
  check_y4m (out->data, out->len, 48, 32, 17, TRUE, want->data);
  /* --free-text-encoder: the encoder is loaded for the first prompts and
   * again for the change, freed after each: the same frames. */
  const char *freeing[G_N_ELEMENTS (args) + 1];
  memcpy (freeing, args, sizeof args);
  freeing[G_N_ELEMENTS (args) - 1] = "--free-text-encoder";
  freeing[G_N_ELEMENTS (args)] = NULL;
  g_byte_array_set_size (out, 0);
  g_assert_cmpint (run_tool_stdout (freeing, out), ==, 0);
  check_y4m (out->data, out->len, 48, 32, 17, TRUE, want->data);
  p.prompt_schedule = NULL;
  GByteArray *plain = api_frames_engine (&p, model, 17, 2, 5, DP_SAMPLER_UNIPC);
  g_assert_cmpint (plain->len, ==, want->len);
  g_assert_true (memcmp (plain->data, want->data, want->len) != 0);
  g_byte_array_unref (plain);
  g_byte_array_unref (want);
  g_byte_array_unref (out);
  g_unlink (file);
  g_rmdir (tmp);
  g_free (file);
  g_free (tmp);
  g_free (model);
}

typedef struct {
  const char *args[16]; /* after the common ones; "@OUT" = the output path */
  const char *needle;
} error_case;

static void
test_errors (void)
{
  char *model = model_dir ();
  char *tmp = dp_test_make_tmp_dir ("dp-generate-XXXXXX");
  char *out = g_build_filename (tmp, "out.y4m", NULL);
  char *missing_dir = g_build_filename (tmp, "no", "such", "dir", "out.y4m", NULL);
  char *bad_schedule = g_build_filename (tmp, "bad-schedule.txt", NULL);
  char *late_schedule = g_build_filename (tmp, "late-schedule.txt", NULL);
  char *no_schedule = g_build_filename (tmp, "no-schedule.txt", NULL);
  g_assert_true (g_file_set_contents (bad_schedule, "0: a red ball\n# fine\n\n8 a blue square\n", -1, NULL));
  g_assert_true (g_file_set_contents (late_schedule, "4: a red ball\n", -1, NULL));
  const error_case cases[] = {
    { { "--model", model, "--prompt-file", bad_schedule, "--output", "@OUT" }, "line 4" },
    { { "--model", model, "--prompt-file", late_schedule, "--output", "@OUT" }, "frame 0" },
    { { "--model", model, "--prompt-file", no_schedule, "--output", "@OUT" }, "--prompt-file" },
    { { "--model", model, "--prompt", "x", "--prompt-file", late_schedule, "--output", "@OUT" }, "give one" },
    { { "--model", model, "--prompt-file", bad_schedule, "--engine", "classic", "--output", "@OUT" },
      "line 4" },
    { { "--model", "/nonexistent/model", "--prompt", "x", "--output", "@OUT" }, "does not exist" },
    { { "--model", tmp, "--prompt", "x", "--output", "@OUT" }, "model_index.json" },
    { { "--model", model, "--prompt", "x", "--frames", "8", "--output", "@OUT" }, "num_frames 8" },
    { { "--model", model, "--prompt", "x", "--width", "40", "--height", "32", "--output", "@OUT" },
      "multiple of 16" },
    { { "--model", model, "--output", "@OUT" }, "--prompt is required" },
    { { "--model", model, "--prompt", "x" }, "nothing to write" },
    { { "--model", model, "--prompt", "x", "--sampler", "heun", "--output", "@OUT" }, "heun" },
    { { "--model", model, "--prompt", "x", "--seed", "-1", "--output", "@OUT" }, "--seed" },
    { { "--model", model, "--prompt", "x", "--y4m-chroma", "422", "--output", "@OUT" }, "422" },
    { { "--model", model, "--prompt", "x", "--guidance", "0", "--output", "@OUT" }, "guidance" },
    { { "--model", model, "--prompt", "x", "--engine", "classic", "--device", "cpu,cpu", "--output",
        "@OUT" }, "several devices" },
    { { "--model", model, "--prompt", "x", "--frames", "x9", "--output", "@OUT" }, "--frames" },
    { { "--model", model, "--prompt", "x", "--engine", "classic", "--frames", "-1", "--output", "@OUT" },
      "needs the DualParal engine" },
    { { "--model", model, "--prompt", "x", "--engine", "fast", "--output", "@OUT" }, "fast" },
    { { "--model", model, "--prompt", "x", "--engine", "classic", "--block-frames", "2", "--output",
        "@OUT" }, "not with --engine classic" },
    { { "--model", model, "--prompt", "x", "--engine", "dualparal", "--stages", "3", "--device",
        "cpu,cpu", "--output", "@OUT" }, "--stages 3" },
    { { "--model", model, "--prompt", "x", "--engine", "dualparal", "--block-frames", "2",
        "--context-frames", "3", "--output", "@OUT" }, "context" },
    { { "--model", model, "--prompt", "x", "stray", "--output", "@OUT" }, "stray" },
    { { "--model", model, "--prompt", "x", "--threads", "-1", "--output", "@OUT" }, "--threads -1" },
    { { "--model", model, "--prompt", "x", "--threads", "2000", "--output", "@OUT" }, "threads 2000" },
    { { "--model", model, "--prompt", "x", "--device", "cpu:0", "--output", "@OUT" }, "cpu:0" },
    { { "--model", model, "--prompt", "x", "--vae-tile", "-8", "--output", "@OUT" }, "vae_tile -8" },
    { { "--model", model, "--prompt", "x", "--vae-tile", "12", "--output", "@OUT" }, "tile height 12" },
    { { "--model", model, "--prompt", "x", "--vae-device", "cpu", "--output", "@OUT" }, "set vae_thread" },
    { { "--model", model, "--prompt", "x", "--engine", "classic", "--vae-thread", "--output", "@OUT" },
      "vae_thread needs the DualParal engine" },
    { { "--model", model, "--prompt", "x", "--frames", "1", "--steps", "1", "--output",
        missing_dir }, "Cannot create" },
  };

  for (size_t i = 0; i < G_N_ELEMENTS (cases); i++) {
    const char *args[17];
    char *err = NULL;
    int k;
    for (k = 0; cases[i].args[k]; k++)
      args[k] = strcmp (cases[i].args[k], "@OUT") == 0 ? out : cases[i].args[k];
    args[k] = NULL;
    g_assert_cmpint (run_tool (args, &err), ==, 1);
    g_assert_nonnull (strstr (err, "dualparal-generate: error: "));
    g_assert_nonnull (strstr (err, cases[i].needle));
    /* Nothing was written. */
    g_assert_false (g_file_test (out, G_FILE_TEST_EXISTS));
    g_free (err);
  }
  g_unlink (bad_schedule);
  g_unlink (late_schedule);
  g_free (bad_schedule);
  g_free (late_schedule);
  g_free (no_schedule);
  g_rmdir (tmp);
  g_free (missing_dir);
  g_free (out);
  g_free (tmp);
  g_free (model);
}

/* The tool run in the C locale (ASCII charset), where GLib's option parser
 * used to refuse every non-ASCII prompt; returns its exit status. */
static int
run_tool_c_locale (const char *const *args, char **err)
{
  GPtrArray *argv = g_ptr_array_new ();
  char **envp = g_environ_setenv (g_get_environ (), "LC_ALL", "C", TRUE);
  GError *error = NULL;
  int wait_status = 0;

  envp = g_environ_unsetenv (envp, "LANG");
  g_ptr_array_add (argv, (gpointer) tool ());
  for (int i = 0; args[i]; i++)
    g_ptr_array_add (argv, (gpointer) args[i]);
  g_ptr_array_add (argv, NULL);
  g_assert_true (g_spawn_sync (NULL, (char **) argv->pdata, envp, G_SPAWN_STDOUT_TO_DEV_NULL, NULL,
                               NULL, NULL, err, &wait_status, &error));
  g_assert_no_error (error);
  g_ptr_array_free (argv, TRUE);
  g_strfreev (envp);
  g_test_message ("stderr: %s", *err);
  g_assert_true (WIFEXITED (wait_status));
  return WEXITSTATUS (wait_status);
}

static void
test_non_ascii_prompt (void)
{
  static const char *prompts[] = { "un caf\xc3\xa9 rouge",
                                   "\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e\xe3\x81\xae\xe5\x86\x86",
                                   "a red fox \xf0\x9f\xa6\x8a in the snow" };
  char *model = model_dir ();
  char *tmp = dp_test_make_tmp_dir ("dp-generate-XXXXXX");
  char *y4m = g_build_filename (tmp, "out.y4m", NULL);

  for (guint i = 0; i < G_N_ELEMENTS (prompts); i++) {
    const char *args[] = { "--model", model, "--prompt", prompts[i], "--negative-prompt",
                           "fl\xc3\xbb", "--frames", "5", "--steps", "2", "--seed", "7",
                           "--y4m-chroma", "444", "--output", y4m, "--quiet", NULL };
    char *err = NULL;
    g_assert_cmpint (run_tool_c_locale (args, &err), ==, 0);
    g_free (err);

    dp_generator_params p;
    GError *error = NULL;
    GByteArray *want = g_byte_array_new ();
    dp_generator_params_init (&p);
    p.model_dir = model;
    p.prompt = prompts[i];
    p.negative_prompt = "fl\xc3\xbb";
    p.num_frames = 5;
    p.steps = 2;
    p.seed = 7;
    dp_generator *gen = dp_generator_new (&p, &error);
    g_assert_no_error (error);
    g_assert_true (dp_generator_run (gen, collect, want, &error));
    g_assert_no_error (error);
    dp_generator_free (gen);

    gsize len;
    char *data = dp_test_read_file (y4m, &len);
    check_y4m ((const guint8 *) data, len, 48, 32, 5, TRUE, want->data);
    g_free (data);
    g_byte_array_unref (want);
    g_assert_cmpint (g_unlink (y4m), ==, 0);
  }

  /* Latin-1 bytes in an ASCII locale: neither UTF-8 nor the locale's charset. */
  const char *bad[] = { "--model", model, "--prompt", "caf\xe9", "--output", y4m, NULL };
  char *err = NULL;
  g_assert_cmpint (run_tool_c_locale (bad, &err), ==, 1);
  g_assert_nonnull (strstr (err, "--prompt: neither UTF-8 nor text in the locale's charset"));
  g_assert_false (g_file_test (y4m, G_FILE_TEST_EXISTS));
  g_free (err);

  g_rmdir (tmp);
  g_free (y4m);
  g_free (tmp);
  g_free (model);
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/generate_tool/y4m-and-png", test_y4m_and_png);
  g_test_add_func ("/generate_tool/stdout-444", test_stdout_444);
  g_test_add_func ("/generate_tool/dualparal", test_dualparal);
  g_test_add_func ("/generate_tool/guidance-2", test_guidance_2);
  g_test_add_func ("/generate_tool/errors", test_errors);
  g_test_add_func ("/generate_tool/prompt-file", test_prompt_file);
  g_test_add_func ("/generate_tool/non-ascii-prompt", test_non_ascii_prompt);
  return g_test_run ();
}
