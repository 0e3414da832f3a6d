/* The device registry (device.h): providers register themselves, modules
 * are opened on demand.  A module stays loaded for the life of the process
 * (its backends may outlive any one generator, and CUDA and NCCL do not
 * support being unloaded). */
#include "dualparal/device.h"

#include <gmodule.h>

#include "install_dirs.h"
#include <string.h>

#ifndef DP_MODULE_BUILD_DIR
#error "DP_MODULE_BUILD_DIR must name the build tree's module folder (meson.build sets it)"
#endif
#ifndef DP_MODULE_RELATIVE_DIR
#error "DP_MODULE_RELATIVE_DIR must name the module folder from the library's (meson.build)"
#endif
#ifndef DP_MODULE_INSTALL_DIR
#error "DP_MODULE_INSTALL_DIR must name the installed module folder (meson.build sets it)"
#endif

#define MAX_PROVIDERS 8

static GMutex lock;
static const dp_device_provider *providers[MAX_PROVIDERS];
static int n_providers;
/* Why a module failed to load, kept so that every later request gives the
 * same clear error without trying again. */
static GHashTable *failures; /* name -> message */

static const dp_device_provider *
find_locked (const char *name)
{
  for (int i = 0; i < n_providers; i++)
    if (strcmp (providers[i]->name, name) == 0)
      return providers[i];
  return NULL;
}

void
dp_device_register (const dp_device_provider *p)
{
  g_mutex_lock (&lock);
  if (find_locked (p->name) == NULL && n_providers < MAX_PROVIDERS)
    providers[n_providers++] = p;
  g_mutex_unlock (&lock);
}

/* Tries one folder; TRUE when the module loaded and registered.  *why
 * collects the reasons of the failures. */
static gboolean
try_load (const char *dir, const char *name, GString *why)
{
  char *file = g_strdup_printf ("libdualparal-%s.so", name);
  char *path = g_build_filename (dir, file, NULL);
  gboolean ok = FALSE;

  if (!g_file_test (path, G_FILE_TEST_EXISTS)) {
    g_string_append_printf (why, "%s%s: absent", why->len ? "; " : "", path);
  } else {
    /* LOCAL: the module's symbols stay its own; it finds libdualparal's
     * through its own dependency on it. */
    GModule *mod = g_module_open (path, G_MODULE_BIND_LOCAL);
    dp_module_register_fn entry = NULL;
    if (mod == NULL) {
      g_string_append_printf (why, "%s%s", why->len ? "; " : "", g_module_error ());
    } else if (!g_module_symbol (mod, DP_MODULE_ENTRY, (gpointer *) &entry) || entry == NULL) {
      g_string_append_printf (why, "%s%s: no %s", why->len ? "; " : "", path, DP_MODULE_ENTRY);
      g_module_close (mod);
    } else {
      g_module_make_resident (mod);
      /* The entry calls dp_device_register (), which takes the lock: this
       * runs with it released (the caller holds only load_lock). */
      entry ();
      ok = TRUE;
    }
  }
  g_free (path);
  g_free (file);
  return ok;
}

const dp_device_provider *
dp_device_provider_get (const char *name, GError **error)
{
  /* One load at a time; `lock` itself is free while a module registers. */
  static GMutex load_lock;
  const dp_device_provider *p;

  g_mutex_lock (&load_lock);
  g_mutex_lock (&lock);
  p = find_locked (name);
  const char *failed = failures ? g_hash_table_lookup (failures, name) : NULL;
  char *message = failed ? g_strdup (failed) : NULL;
  g_mutex_unlock (&lock);

  if (p == NULL && message == NULL) {
    /* The user's folder, the installed one beside the loaded library
     * (wherever the installation went), the configured one, the build
     * tree's. */
    const char *env = g_getenv ("DUALPARAL_MODULE_DIR");
    char *relocated = dp_install_path (DP_MODULE_RELATIVE_DIR);
    const char *dirs[] = { env && *env ? env : NULL, relocated, DP_MODULE_INSTALL_DIR, DP_MODULE_BUILD_DIR };
    GString *why = g_string_new (NULL);
    for (guint i = 0; i < G_N_ELEMENTS (dirs) && p == NULL; i++) {
      if (dirs[i] && try_load (dirs[i], name, why)) {
        g_mutex_lock (&lock);
        p = find_locked (name);
        g_mutex_unlock (&lock);
        if (p == NULL)
          g_string_append_printf (why, "%sthe module in %s registered no \"%s\" device", why->len ? "; " : "",
                                  dirs[i], name);
      }
    }
    if (p == NULL) {
      message = g_strdup_printf ("the %s device module libdualparal-%s.so could not be loaded (%s); this "
                                 "installation has no %s support, or its libraries are missing",
                                 name, name, why->str, name);
      g_mutex_lock (&lock);
      if (failures == NULL)
        failures = g_hash_table_new_full (g_str_hash, g_str_equal, g_free, g_free);
      g_hash_table_replace (failures, g_strdup (name), g_strdup (message));
      g_mutex_unlock (&lock);
    }
    g_string_free (why, TRUE);
    g_free (relocated);
  }
  g_mutex_unlock (&load_lock);

  if (p == NULL)
    g_set_error_literal (error, DP_ERROR, DP_ERROR_UNSUPPORTED, message);
  g_free (message);
  return p;
}

const dp_device_provider *
dp_device_provider_of (const dp_backend *be)
{
  const dp_device_provider *p = NULL;
  g_mutex_lock (&lock);
  for (int i = 0; i < n_providers && p == NULL; i++)
    if (providers[i]->owns (be))
      p = providers[i];
  g_mutex_unlock (&lock);
  return p;
}
