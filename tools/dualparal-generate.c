/* dualparal-generate: text to video without GStreamer.
 *
 *   dualparal-generate --model DIR --prompt "a red fox running through snow" \
 *       --frames 81 --output fox.y4m [--png-dir frames/]
 *
 * Runs the core's generator (dualparal/generator.h) and writes each frame
 * as soon as it is decoded: a YUV4MPEG2 stream (4:2:0 by default, or 4:4:4)
 * and / or one PNG per frame.  A failed or interrupted run (Ctrl-C cancels
 * after the current step) keeps the frames already written and exits with
 * status 1.  Progress goes to stderr (--quiet silences it).  docs/usage.md
 * describes the options and the output formats.
 */
#include <errno.h>
#include <locale.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <glib.h>
#include <glib/gstdio.h>

#include "dualparal/backend.h"
#include "dualparal/generator.h"
#include "png_write.h"


#define PROG "dualparal-generate"

/* --- options ------------------------------------------------------------ */

static char *opt_model = NULL;
static char *opt_prompt = NULL;
static char *opt_negative = NULL;
static char *opt_prompt_file = NULL;
static int opt_transition = 0;
static int opt_width = 0, opt_height = 0;
static int opt_frames = G_MININT;
static int opt_steps = G_MININT;
static double opt_guidance = -G_MAXDOUBLE;
static double opt_shift = 0.0;
static double opt_guidance_2 = 0.0;
static char *opt_seed = NULL;
static char *opt_sampler = NULL;
static char *opt_device = NULL;
static int opt_text_len = 0;
static int opt_threads = 0;
static char *opt_output = NULL;
static char *opt_chroma = NULL;
static char *opt_png_dir = NULL;
static gboolean opt_quiet = FALSE;
static char *opt_engine = NULL;
static int opt_stages = 0;
static int opt_block_frames = 0, opt_context_frames = 0;
static char *opt_processes = NULL;
static gboolean opt_wire_bf16 = FALSE;
static int opt_vae_tile = 0;
static gboolean opt_vae_thread = FALSE;
static char *opt_vae_device = NULL;
static gboolean opt_free_text_encoder = FALSE;

static GOptionEntry entries[] = {
  { "model", 'm', 0, G_OPTION_ARG_FILENAME, &opt_model,
    "Wan text-to-video model (Wan2.1, Wan2.2 T2V-A14B or TI2V-5B), diffusers layout (default: DUALPARAL_MODEL, else the installed embedded model, else the source tree's)", "DIR" },
  /* The prompts are read as bytes (G_OPTION_ARG_FILENAME): GLib would convert a
   * G_OPTION_ARG_STRING from the locale's charset, which is ASCII until
   * setlocale runs and refuses any non-ASCII prompt.  prompt_to_utf8 decodes them. */
  { "prompt", 'p', 0, G_OPTION_ARG_FILENAME, &opt_prompt, "What the video shows (required, unless "
    "--prompt-file)", "TEXT" },
  { "prompt-file", 0, 0, G_OPTION_ARG_FILENAME, &opt_prompt_file,
    "DualParal: a prompt schedule, lines \"FRAME: PROMPT\" (frame 0 first, frames increasing; '#' "
    "comments); each prompt applies from the first block that starts at or after its frame", "FILE" },
  { "transition-blocks", 0, 0, G_OPTION_ARG_INT, &opt_transition,
    "DualParal: blend each --prompt-file change in over K blocks (default 0: at once)", "K" },
  { "negative-prompt", 'n', 0, G_OPTION_ARG_FILENAME, &opt_negative,
    "What the video should avoid (default: empty)", "TEXT" },
  { "width", 'W', 0, G_OPTION_ARG_INT, &opt_width,
    "Frame width, a multiple of 16 (default: the model's native size)", "N" },
  { "height", 'H', 0, G_OPTION_ARG_INT, &opt_height,
    "Frame height, a multiple of 16 (default: the model's native size)", "N" },
  { "frames", 'f', 0, G_OPTION_ARG_INT, &opt_frames,
    "Frames to make, 4k+1 (default 81); -1: endless video (DualParal engine)", "N" },
  { "steps", 's', 0, G_OPTION_ARG_INT, &opt_steps,
    "Sampler steps (default 50; DualParal: of each block)", "N" },
  { "guidance", 'g', 0, G_OPTION_ARG_DOUBLE, &opt_guidance,
    "Guidance scale; 1 runs the conditional pass alone (default 5)", "G" },
  { "guidance-2", 0, 0, G_OPTION_ARG_DOUBLE, &opt_guidance_2,
    "Wan2.2 two-expert models (T2V-A14B): guidance scale of the low-noise expert (default: --guidance's)",
    "G" },
  { "shift", 0, 0, G_OPTION_ARG_DOUBLE, &opt_shift,
    "Flow shift of the noise schedule (default: the model's scheduler config)", "S" },
  { "seed", 0, 0, G_OPTION_ARG_STRING, &opt_seed, "Seed of the initial noise (default 0)", "N" },
  { "sampler", 0, 0, G_OPTION_ARG_STRING, &opt_sampler, "unipc (default) or euler", "NAME" },
  { "device", 'd', 0, G_OPTION_ARG_STRING, &opt_device,
    "cpu (default), cuda, cuda:N or N; DualParal: a list such as 0,1,2,3 or cpu,cpu (one stage "
    "each)", "DEV" },
  { "threads", 't', 0, G_OPTION_ARG_INT, &opt_threads,
    "CPU threads in all, shared out among the CPU stages (default 0: each stage OMP_NUM_THREADS when set, "
    "else the CPUs this process may run on)", "N" },
  { "vae-tile", 0, 0, G_OPTION_ARG_INT, &opt_vae_tile,
    "Decode in tiles of N x N pixels (a quarter overlapping, blended as diffusers' enable_tiling): less "
    "VAE memory at 720p and above, slight differences at the seams (default 0: untiled)", "N" },
  { "vae-thread", 0, 0, G_OPTION_ARG_NONE, &opt_vae_thread,
    "DualParal: decode finished blocks on a thread (and backend) of their own, overlapped with the "
    "next blocks' denoising (same frames)", NULL },
  { "vae-device", 0, 0, G_OPTION_ARG_STRING, &opt_vae_device,
    "With --vae-thread: where the VAE runs, e.g. cuda:1 (a spare GPU); default: stage 0's device", "DEV" },
  { "free-text-encoder", 0, 0, G_OPTION_ARG_NONE, &opt_free_text_encoder,
    "Load the text encoder for each encode and free it after (its memory is free while the video is made; "
    "each prompt change reloads it); default: kept loaded", NULL },
  { "text-len", 0, 0, G_OPTION_ARG_INT, &opt_text_len,
    "Text tokens the prompt is padded to (default: the model's, else 512)", "N" },
  { "output", 'o', 0, G_OPTION_ARG_FILENAME, &opt_output,
    "Write a YUV4MPEG2 video (\"-\" for stdout)", "FILE.y4m" },
  { "y4m-chroma", 0, 0, G_OPTION_ARG_STRING, &opt_chroma,
    "Y4M chroma: 420 (C420jpeg, default, plays everywhere) or 444 (full colour)", "420|444" },
  { "png-dir", 0, 0, G_OPTION_ARG_FILENAME, &opt_png_dir,
    "Also write frame-000000.png, ... into DIR (created if needed)", "DIR" },
  { "quiet", 'q', 0, G_OPTION_ARG_NONE, &opt_quiet, "No progress on stderr", NULL },
  { "engine", 'e', 0, G_OPTION_ARG_STRING, &opt_engine,
    "auto (default: dualparal for endless video, several stages or a video longer than the model's "
    "window, classic otherwise), classic (the whole video at once) or dualparal (block-wise "
    "pipelined denoising over stages; --frames -1 makes endless video)", "NAME" },
  { "stages", 0, 0, G_OPTION_ARG_INT, &opt_stages,
    "DualParal: pipeline stages, one device each: --device cpu repeated N times, or GPUs K..K+N-1 "
    "for --device K / cuda:K (default: one stage per --device entry)", "N" },
  { "block-frames", 0, 0, G_OPTION_ARG_INT, &opt_block_frames,
    "DualParal: latent frames per block, P (default 10)", "P" },
  { "context-frames", 0, 0, G_OPTION_ARG_INT, &opt_context_frames,
    "DualParal: latent frames a block sees of each neighbour, C <= P (default 5, or P when "
    "smaller)", "C" },
  { "processes", 0, 0, G_OPTION_ARG_STRING, &opt_processes,
    "DualParal: where the stages run: threads (default, this process), spawn (one dualparal-worker "
    "process per --device entry, on this machine) or launcher (this is rank 0 of a torchrun / srun / "
    "mpirun job; docs/distributed.md)", "MODE" },
  { "wire-bf16", 0, 0, G_OPTION_ARG_NONE, &opt_wire_bf16,
    "DualParal over processes: hidden states travel as BF16 (half the bytes; frames differ slightly)", NULL },
  { NULL },
};

/* --- Y4M ---------------------------------------------------------------- */

/* RGB -> Y'CbCr, ITU-R BT.601, limited range (what players assume for an
 * untagged YUV stream; the header also says XCOLORRANGE=LIMITED). */
static inline uint8_t
clamp_u8 (double v)
{
  return v <= 0.0 ? 0 : v >= 255.0 ? 255 : (uint8_t) (v + 0.5);
}

static inline double
luma (const uint8_t *p)
{
  return 16.0 + 0.256788 * p[0] + 0.504129 * p[1] + 0.097906 * p[2];
}

static inline double
chroma_b (const uint8_t *p)
{
  return 128.0 - 0.148223 * p[0] - 0.290993 * p[1] + 0.439216 * p[2];
}

static inline double
chroma_r (const uint8_t *p)
{
  return 128.0 + 0.439216 * p[0] - 0.367788 * p[1] - 0.071427 * p[2];
}

/* An error from errno: "Cannot <verb> <name>: <reason>". */
static void
set_errno_error (GError **error, const char *verb, const char *name)
{
  int e = errno;
  g_set_error (error, G_FILE_ERROR, g_file_error_from_errno (e), "Cannot %s %s: %s", verb, name,
               g_strerror (e));
}

typedef struct {
  FILE *f;
  const char *name;
  gboolean is_stdout;
  gboolean c444;
  int width, height;
  uint8_t *planes; /* one frame: Y, then Cb, then Cr */
  size_t frame_bytes;
} y4m_writer;

static gboolean
y4m_open (y4m_writer *w, const char *path, gboolean c444, int width, int height, int fps,
          GError **error)
{
  memset (w, 0, sizeof *w);
  w->name = path;
  w->c444 = c444;
  w->width = width;
  w->height = height;
  if (strcmp (path, "-") == 0) {
    w->f = stdout;
    w->is_stdout = TRUE;
    w->name = "standard output";
  } else {
    w->f = g_fopen (path, "wb");
    if (w->f == NULL) {
      set_errno_error (error, "create", path);
      return FALSE;
    }
  }
  const size_t luma_bytes = (size_t) width * height;
  w->frame_bytes = luma_bytes + 2 * (c444 ? luma_bytes : luma_bytes / 4);
  w->planes = g_malloc (w->frame_bytes);
  /* Progressive, square pixels; the chroma tags as ffmpeg writes them. */
  if (fprintf (w->f, "YUV4MPEG2 W%d H%d F%d:1 Ip A1:1 %s XCOLORRANGE=LIMITED\n", width, height,
               fps, c444 ? "C444 XYSCSS=444" : "C420jpeg XYSCSS=420JPEG") < 0
      || fflush (w->f) != 0) {
    set_errno_error (error, "write", w->name);
    return FALSE;
  }
  return TRUE;
}

static gboolean
y4m_write_frame (y4m_writer *w, const uint8_t *rgb, GError **error)
{
  const int W = w->width, H = w->height;
  uint8_t *y = w->planes;
  uint8_t *cb = y + (size_t) W * H;
  uint8_t *cr = cb + (w->c444 ? (size_t) W * H : (size_t) W * H / 4);

  for (size_t i = 0; i < (size_t) W * H; i++)
    y[i] = clamp_u8 (luma (rgb + 3 * i));
  if (w->c444) {
    for (size_t i = 0; i < (size_t) W * H; i++) {
      cb[i] = clamp_u8 (chroma_b (rgb + 3 * i));
      cr[i] = clamp_u8 (chroma_r (rgb + 3 * i));
    }
  } else {
    /* 420jpeg: chroma sited in the middle of each 2x2 block: its mean. */
    for (int by = 0; by < H / 2; by++)
      for (int bx = 0; bx < W / 2; bx++) {
        double sb = 0.0, sr = 0.0;
        for (int dy = 0; dy < 2; dy++)
          for (int dx = 0; dx < 2; dx++) {
            const uint8_t *p = rgb + 3 * ((size_t) (2 * by + dy) * W + 2 * bx + dx);
            sb += chroma_b (p);
            sr += chroma_r (p);
          }
        cb[(size_t) by * (W / 2) + bx] = clamp_u8 (sb / 4.0);
        cr[(size_t) by * (W / 2) + bx] = clamp_u8 (sr / 4.0);
      }
  }
  if (fputs ("FRAME\n", w->f) < 0 || fwrite (w->planes, 1, w->frame_bytes, w->f) != w->frame_bytes) {
    set_errno_error (error, "write", w->name);
    return FALSE;
  }
  return TRUE;
}

static gboolean
y4m_flush (y4m_writer *w, GError **error)
{
  if (fflush (w->f) != 0) {
    set_errno_error (error, "write", w->name);
    return FALSE;
  }
  return TRUE;
}

static gboolean
y4m_close (y4m_writer *w, GError **error)
{
  gboolean ok = TRUE;

  if (w->f != NULL && !w->is_stdout && fclose (w->f) != 0) {
    set_errno_error (error, "write", w->name);
    ok = FALSE;
  } else if (w->f != NULL && w->is_stdout) {
    ok = y4m_flush (w, error);
  }
  w->f = NULL;
  g_clear_pointer (&w->planes, g_free);
  return ok;
}

/* --- the run ------------------------------------------------------------ */

typedef struct {
  int width, height;
  y4m_writer *y4m;   /* NULL: no video file */
  const char *png_dir;
  int64_t written;
  gint64 start;
  GError *write_error; /* why the callback stopped the run */
} run_state;

static dp_generator *running_generator; /* for the signal handler */

static void
on_signal (int sig)
{
  static const char msg[] = PROG ": interrupted: stopping after the current step "
                            "(again to quit at once)\n";
  ssize_t r = write (STDERR_FILENO, msg, sizeof msg - 1);
  (void) r;
  (void) sig;
  /* One atomic store: safe in a signal handler. */
  if (running_generator != NULL)
    dp_generator_cancel (running_generator);
}

static void
on_step (const dp_step_progress *p, void *user_data)
{
  if (p->steps_total < 0) /* endless: the iteration count of the DualParal engine */
    g_printerr ("%s: step %d (%.2f s)\n", PROG, p->step, p->step_seconds);
  else
    g_printerr ("%s: step %d/%d (%.2f s)\n", PROG, p->step, p->steps_total, p->step_seconds);
}

static gboolean
on_frames (const uint8_t *rgb, int n_frames, int64_t first_frame, const dp_progress *progress,
           void *user_data)
{
  run_state *st = user_data;
  const size_t frame_bytes = (size_t) st->width * st->height * 3;

  for (int i = 0; i < n_frames; i++) {
    const uint8_t *frame = rgb + frame_bytes * i;

    if (st->y4m && !y4m_write_frame (st->y4m, frame, &st->write_error))
      return FALSE;
    if (st->png_dir) {
      char name[64];
      char *path;
      gboolean ok;

      g_snprintf (name, sizeof name, "frame-%06" G_GINT64_FORMAT ".png", first_frame + i);
      path = g_build_filename (st->png_dir, name, NULL);
      ok = dp_png_write_rgb (path, frame, st->width, st->height, &st->write_error);
      g_free (path);
      if (!ok)
        return FALSE;
    }
    st->written = first_frame + i + 1;
  }
  /* Whole frames reach the file as they come: a later failure keeps them. */
  if (st->y4m && !y4m_flush (st->y4m, &st->write_error))
    return FALSE;
  if (!opt_quiet && progress->frames_total < 0)
    g_printerr ("%s: frames %" G_GINT64_FORMAT "-%" G_GINT64_FORMAT " (%.2f s)\n", PROG, first_frame,
                first_frame + n_frames - 1, progress->block_seconds);
  else if (!opt_quiet)
    g_printerr ("%s: frames %" G_GINT64_FORMAT "-%" G_GINT64_FORMAT " of %" G_GINT64_FORMAT
                " (%.2f s)\n", PROG, first_frame, first_frame + n_frames - 1,
                progress->frames_total, progress->block_seconds);
  return TRUE;
}

static int
fail (const char *fmt, ...) G_GNUC_PRINTF (1, 2);

/* --engine, --stages, --block-frames, --context-frames onto params.  A stage
 * count turns the device into a list: "cpu" N times, or GPUs K..K+N-1.
 * *devices_out (freed by the caller) holds the list params->devices points
 * to.  Prints the error and returns FALSE on a bad combination. */
static gboolean
engine_options (dp_generator_params *params, char **devices_out)
{
  *devices_out = NULL;
  const gboolean block_options = opt_stages || opt_block_frames || opt_context_frames;
  if (opt_engine == NULL || strcmp (opt_engine, "auto") == 0)
    params->engine = DP_ENGINE_AUTO; /* stages or blocks asked for make it DualParal */
  else if (strcmp (opt_engine, "classic") == 0)
    params->engine = DP_ENGINE_CLASSIC;
  else if (strcmp (opt_engine, "dualparal") == 0)
    params->engine = DP_ENGINE_DUALPARAL;
  else {
    fail ("--engine '%s': use auto, classic or dualparal", opt_engine);
    return FALSE;
  }
  if (params->engine == DP_ENGINE_CLASSIC && block_options) {
    fail ("--stages, --block-frames and --context-frames: not with --engine classic");
    return FALSE;
  }
  if (opt_stages < 0 || opt_block_frames < 0 || opt_context_frames < 0) {
    fail ("--stages, --block-frames and --context-frames take positive numbers");
    return FALSE;
  }
  params->block_frames = opt_block_frames;
  params->context_frames = opt_context_frames;
  if (opt_processes == NULL || strcmp (opt_processes, "threads") == 0)
    params->processes = DP_PROCESSES_THREADS;
  else if (strcmp (opt_processes, "spawn") == 0)
    params->processes = DP_PROCESSES_SPAWN;
  else if (strcmp (opt_processes, "launcher") == 0)
    params->processes = DP_PROCESSES_LAUNCHER;
  else {
    fail ("--processes '%s': use threads, spawn or launcher", opt_processes);
    return FALSE;
  }
  params->wire_bf16 = opt_wire_bf16;
  if (opt_stages == 0)
    return TRUE;
  const char *dev = params->devices ? params->devices : "cpu";
  if (strchr (dev, ',') != NULL) {
    int n = 1;
    for (const char *c = dev; *c; c++)
      n += *c == ',';
    if (n != opt_stages) {
      fail ("--stages %d but --device lists %d devices", opt_stages, n);
      return FALSE;
    }
    return TRUE;
  }
  guint64 first = 0;
  gboolean cpu = strcmp (dev, "cpu") == 0;
  if (!cpu && strcmp (dev, "cuda") != 0 &&
      !g_ascii_string_to_unsigned (g_str_has_prefix (dev, "cuda:") ? dev + 5 : dev, 10, 0, 1024, &first, NULL)) {
    fail ("--device '%s' with --stages: use cpu, cuda, cuda:N or a GPU number", dev);
    return FALSE;
  }
  GString *list = g_string_new (NULL);
  for (int i = 0; i < opt_stages; i++) {
    if (i)
      g_string_append_c (list, ',');
    if (cpu)
      g_string_append (list, "cpu");
    else
      g_string_append_printf (list, "%" G_GUINT64_FORMAT, first + (guint64) i);
  }
  *devices_out = g_string_free (list, FALSE);
  params->devices = *devices_out;
  return TRUE;
}

static int
fail (const char *fmt, ...)
{
  va_list ap;
  char *msg;

  va_start (ap, fmt);
  msg = g_strdup_vprintf (fmt, ap);
  va_end (ap);
  g_printerr ("%s: error: %s\n", PROG, msg);
  g_free (msg);
  return 1;
}

/* A --prompt-file line taking effect. */
static void
on_prompt (const dp_prompt_change *change, void *user_data)
{
  (void) user_data;
  g_printerr ("%s: prompt \"%s\" from block %" G_GINT64_FORMAT " (frame %" G_GINT64_FORMAT "), alone from frame %"
              G_GINT64_FORMAT "\n", PROG, change->prompt, change->block, change->first_frame, change->full_frame);
}

/* A prompt from the command line as UTF-8, in place: UTF-8 as it is (whatever
 * the locale says), else text in the locale's charset converted. */
static gboolean
prompt_to_utf8 (const char *option, char **text)
{
  GError *error = NULL;
  char *utf8;

  if (*text == NULL || g_utf8_validate (*text, -1, NULL))
    return TRUE;
  utf8 = g_locale_to_utf8 (*text, -1, NULL, NULL, &error);
  if (utf8 == NULL) {
    const char *charset;
    g_get_charset (&charset);
    fail ("%s: neither UTF-8 nor text in the locale's charset (%s): %s", option, charset,
          error->message);
    g_error_free (error);
    return FALSE;
  }
  g_free (*text);
  *text = utf8;
  return TRUE;
}

int
main (int argc, char **argv)
{
  GOptionContext *ctx;
  GError *error = NULL;
  dp_generator_params params;
  dp_generator *gen = NULL;
  y4m_writer y4m;
  run_state st = { 0 };
  gboolean have_y4m = FALSE, c444 = FALSE, ok;
  int status = 1;
  struct sigaction sa;
  char *stage_devices = NULL;
  char *schedule_text = NULL;

  /* OpenBLAS starts no spinning pool of its own (OPENBLAS_NUM_THREADS=1
   * unless the user set it): OpenBLAS reads this only when it is loaded, so
   * this executes the program again once with it set. */
  dp_openblas_quiet_reexec (argv);

  /* The character type only (the charset of non-UTF-8 prompts); numbers keep
   * the C locale's decimal point. */
  setlocale (LC_CTYPE, "");
  ctx = g_option_context_new ("- make a video from a text prompt with a Wan2.1 or Wan2.2 (T2V-A14B, TI2V-5B) model");
  g_option_context_add_main_entries (ctx, entries, NULL);
  g_option_context_set_description (ctx,
      "Writes the frames as they are decoded: a YUV4MPEG2 file (--output) and / or PNG frames\n"
      "(--png-dir).  Ctrl-C stops after the current step and keeps the frames written.\n"
      "Example:\n  " PROG " --model Wan2.1-T2V-1.3B-Diffusers --prompt \"a red fox in the snow\" \\\n"
      "      --frames 33 --steps 30 --output fox.y4m\n"
      "Endless video, block by block over two CPU stages, until Ctrl-C:\n  " PROG
      " --model DIR --prompt \"waves on a beach\" --engine dualparal \\\n"
      "      --stages 2 --frames -1 --output waves.y4m\n");
  if (!g_option_context_parse (ctx, &argc, &argv, &error)) {
    g_option_context_free (ctx);
    status = fail ("%s (see --help)", error->message);
    g_error_free (error);
    return status;
  }
  g_option_context_free (ctx);
  if (argc > 1)
    return fail ("unexpected argument '%s' (see --help)", argv[1]);

  dp_generator_params_init (&params);
  if (opt_prompt == NULL && opt_prompt_file == NULL)
    return fail ("--prompt is required (or a --prompt-file)");
  if (opt_prompt != NULL && opt_prompt_file != NULL)
    return fail ("--prompt and --prompt-file: give one (the file's frame 0 line is the prompt)");
  if (!prompt_to_utf8 ("--prompt", &opt_prompt) || !prompt_to_utf8 ("--negative-prompt", &opt_negative))
    return 1;
  if (opt_output == NULL && opt_png_dir == NULL)
    return fail ("nothing to write: give --output FILE.y4m and / or --png-dir DIR");
  if (opt_chroma == NULL || strcmp (opt_chroma, "420") == 0)
    c444 = FALSE;
  else if (strcmp (opt_chroma, "444") == 0)
    c444 = TRUE;
  else
    return fail ("--y4m-chroma '%s': use 420 or 444", opt_chroma);
  if (opt_sampler != NULL && !dp_sampler_kind_parse (opt_sampler, &params.sampler, &error)) {
    status = fail ("--sampler: %s", error->message);
    g_error_free (error);
    return status;
  }
  if (opt_seed != NULL) {
    guint64 seed;
    if (!g_ascii_string_to_unsigned (opt_seed, 10, 0, G_MAXUINT64, &seed, &error)) {
      status = fail ("--seed: %s", error->message);
      g_error_free (error);
      return status;
    }
    params.seed = seed;
  }

  /* No --model: the library's default lookup (DUALPARAL_MODEL, the installed
   * data folder, the source tree), whose error names where it looked. */
  if (opt_model == NULL) {
    opt_model = dp_default_model_dir (&error);
    if (opt_model == NULL) {
      status = fail ("%s; give --model DIR", error->message);
      g_error_free (error);
      return status;
    }
  }
  params.model_dir = opt_model;
  params.prompt = opt_prompt;
  if (opt_prompt_file != NULL) {
    if (!g_file_get_contents (opt_prompt_file, &schedule_text, NULL, &error)) {
      status = fail ("--prompt-file: %s", error->message);
      g_error_free (error);
      return status;
    }
    if (!dp_prompt_schedule_check (schedule_text, &error)) {
      status = fail ("%s: %s", opt_prompt_file, error->message);
      g_error_free (error);
      g_free (schedule_text);
      return status;
    }
    params.prompt_schedule = schedule_text;
  }
  params.transition_blocks = opt_transition;
  if (opt_negative)
    params.negative_prompt = opt_negative;
  params.width = opt_width;
  params.height = opt_height;
  if (opt_frames != G_MININT)
    params.num_frames = opt_frames;
  if (opt_steps != G_MININT)
    params.steps = opt_steps;
  if (opt_guidance != -G_MAXDOUBLE)
    params.guidance_scale = opt_guidance;
  params.flow_shift = opt_shift;
  params.guidance_scale_2 = opt_guidance_2;
  if (opt_device)
    params.devices = opt_device;
  params.text_len = opt_text_len;
  if (opt_threads < 0)
    return fail ("--threads %d: give a number of CPU threads, 1 or more, or 0 for the CPUs this "
                 "process may run on", opt_threads);
  params.threads = opt_threads;
  params.vae_tile = opt_vae_tile;
  params.vae_thread = opt_vae_thread;
  params.vae_device = opt_vae_device;
  params.keep_text_encoder = !opt_free_text_encoder;
  if (!engine_options (&params, &stage_devices))
    return 1;

  if (!opt_quiet)
    g_printerr ("%s: loading %s on %s\n", PROG, params.model_dir, params.devices);
  gen = dp_generator_new (&params, &error);
  if (gen == NULL) {
    status = fail ("%s", error->message);
    g_error_free (error);
    return status;
  }
  dp_generator_get_size (gen, &st.width, &st.height);
  if (!opt_quiet) {
    char frames[32] = "endless video", cpu_threads[160] = "";
    if (dp_generator_threads (gen) > 0)
      g_snprintf (cpu_threads, sizeof cpu_threads, ", CPU threads: %d", dp_generator_threads (gen));
    if (dp_generator_num_frames (gen) >= 0)
      g_snprintf (frames, sizeof frames, "%" G_GINT64_FORMAT " frames", dp_generator_num_frames (gen));
    g_printerr ("%s: %dx%d, %s at %d fps, %d %s steps, guidance %g, seed %" G_GUINT64_FORMAT
                ", text length %d, %s engine%s\n", PROG, st.width, st.height, frames,
                dp_generator_fps (gen), params.steps, dp_sampler_kind_name (params.sampler),
                params.guidance_scale, params.seed, dp_generator_text_len (gen),
                dp_generator_engine (gen, NULL, NULL) == DP_ENGINE_DUALPARAL ? "DualParal" : "classic",
                cpu_threads);
    dp_generator_set_step_callback (gen, on_step, NULL);
    dp_generator_set_prompt_callback (gen, on_prompt, NULL);
  }

  /* Outputs, made once the model has loaded (a bad model leaves no file). */
  if (opt_png_dir != NULL) {
    if (g_mkdir_with_parents (opt_png_dir, 0755) != 0) {
      int e = errno;
      status = fail ("cannot create %s: %s", opt_png_dir, g_strerror (e));
      goto out;
    }
    st.png_dir = opt_png_dir;
  }
  if (opt_output != NULL) {
    if (!y4m_open (&y4m, opt_output, c444, st.width, st.height, dp_generator_fps (gen), &error)) {
      status = fail ("%s", error->message);
      g_clear_error (&error);
      y4m_close (&y4m, NULL);
      goto out;
    }
    have_y4m = TRUE;
    st.y4m = &y4m;
  }

  running_generator = gen;
  memset (&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sa.sa_flags = SA_RESETHAND; /* a second signal ends the process */
  sigemptyset (&sa.sa_mask);
  sigaction (SIGINT, &sa, NULL);
  sigaction (SIGTERM, &sa, NULL);

  st.start = g_get_monotonic_time ();
  ok = dp_generator_run (gen, on_frames, &st, &error);

  signal (SIGINT, SIG_DFL);
  signal (SIGTERM, SIG_DFL);
  running_generator = NULL;

  if (have_y4m && !y4m_close (&y4m, ok ? &error : NULL))
    ok = FALSE;
  if (!ok) {
    /* A write failure is the real reason when the callback stopped the run. */
    const GError *why = st.write_error ? st.write_error : error;
    if (dp_generator_num_frames (gen) < 0)
      status = fail ("%s (%" G_GINT64_FORMAT " frames written)", why ? why->message : "failed",
                     st.written);
    else
      status = fail ("%s (%" G_GINT64_FORMAT " of %" G_GINT64_FORMAT " frames written)",
                     why ? why->message : "failed", st.written, dp_generator_num_frames (gen));
  } else {
    if (!opt_quiet)
      g_printerr ("%s: done: %" G_GINT64_FORMAT " frames in %.1f s\n", PROG, st.written,
                  (g_get_monotonic_time () - st.start) / 1e6);
    status = 0;
  }
  g_clear_error (&error);
  g_clear_error (&st.write_error);

out:
  dp_generator_free (gen);
  g_free (opt_model);
  g_free (opt_prompt);
  g_free (opt_negative);
  g_free (opt_prompt_file);
  g_free (schedule_text);
  g_free (opt_seed);
  g_free (opt_sampler);
  g_free (opt_device);
  g_free (opt_output);
  g_free (opt_chroma);
  g_free (opt_png_dir);
  g_free (opt_engine);
  g_free (opt_processes);
  g_free (stage_devices);
  return status;
}
