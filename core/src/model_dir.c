/* The default model directory: where an application, the element and the
 * tools find the embedded model when they are given none.  The order lets a
 * user override it (DUALPARAL_MODEL), makes an installed copy work wherever
 * the source tree went (the data folder), and keeps an uninstalled build
 * working from its source tree. */
#include "dualparal/generator.h"
#include "install_dirs.h"

#include <string.h>

#ifndef DP_MODEL_INSTALL_DIR
#error "DP_MODEL_INSTALL_DIR must name the installed model folder (meson.build sets it)"
#endif
#ifndef DP_MODEL_RELATIVE_DIR
#error "DP_MODEL_RELATIVE_DIR must name the installed model folder from the library's (meson.build)"
#endif
#ifndef DP_MODEL_SOURCE_DIR
#error "DP_MODEL_SOURCE_DIR must name the source tree's model folder (meson.build sets it)"
#endif

/* A model directory is one with model_index.json: an empty or half-copied
 * folder is skipped rather than failing later with a less clear error. */
static gboolean
is_model_dir (const char *dir)
{
  char *index = g_build_filename (dir, "model_index.json", NULL);
  gboolean ok = g_file_test (index, G_FILE_TEST_IS_REGULAR);
  g_free (index);
  return ok;
}

char *
dp_default_model_dir (GError **error)
{
  const char *env = g_getenv ("DUALPARAL_MODEL");
  /* The installed data folder, first where the loaded library says the
   * installation is now, then where it was configured to be. */
  char *relocated = dp_install_path (DP_MODEL_RELATIVE_DIR);
  const char *places[] = { relocated ? relocated : DP_MODEL_INSTALL_DIR, DP_MODEL_INSTALL_DIR,
                           DP_MODEL_SOURCE_DIR };
  char *found = NULL;

  /* An explicit choice is taken as given: a wrong DUALPARAL_MODEL must fail
   * and say so, not fall back silently to another model. */
  if (env != NULL && *env != '\0') {
    g_free (relocated);
    if (is_model_dir (env))
      return g_strdup (env);
    g_set_error (error, DP_ERROR, DP_ERROR_MISSING,
                 "DUALPARAL_MODEL is '%s', which is not a model directory (no model_index.json)", env);
    return NULL;
  }
  for (guint i = 0; i < G_N_ELEMENTS (places) && found == NULL; i++)
    if (is_model_dir (places[i]))
      found = g_strdup (places[i]);
  if (found == NULL) {
    GString *looked = g_string_new (NULL);
    for (guint i = 0; i < G_N_ELEMENTS (places); i++)
      if (i == 0 || strcmp (places[i], places[i - 1]) != 0)
        g_string_append_printf (looked, ", %s", places[i]);
    g_set_error (error, DP_ERROR, DP_ERROR_MISSING,
                 "no default model found (looked at DUALPARAL_MODEL (unset)%s); give a model directory "
                 "(a Wan2.1 text-to-video model in diffusers layout)", looked->str);
    g_string_free (looked, TRUE);
  }
  g_free (relocated);
  return found;
}
