/* The device registry and the default model lookup (issue 20): a provider
 * registers and owns its backends, engine-facing lookups find it; a module
 * that is absent gives a clear, repeatable DP_ERROR_UNSUPPORTED; the default
 * model follows DUALPARAL_MODEL, else the installed or source-tree copy. */
#include <string.h>

#include "dualparal/backend.h"
#include "dualparal/device.h"
#include "dualparal/generator.h"

#include "test_util.h"

/* A provider whose backends are CPU backends it tags as its own: enough to
 * check the registry's bookkeeping without a device. */
static dp_backend *made;

static dp_backend *
fake_backend_new (int device, GError **error)
{
  made = dp_backend_new ("cpu:1", error);
  return made;
}

static gboolean
fake_owns (const dp_backend *be)
{
  return be != NULL && be == made;
}

static const dp_device_provider fake = {
  .name = "fake",
  .backend_new = fake_backend_new,
  .owns = fake_owns,
};

static void
test_register (void)
{
  GError *err = NULL;
  dp_device_register (&fake);
  const dp_device_provider *p = dp_device_provider_get ("fake", &err);
  g_assert_no_error (err);
  g_assert_true (p == &fake);
  dp_backend *be = p->backend_new (0, &err);
  g_assert_no_error (err);
  g_assert_true (dp_device_provider_of (be) == &fake);
  dp_backend *cpu = dp_backend_new ("cpu:1", &err);
  g_assert_no_error (err);
  /* The CPU backend belongs to no provider. */
  g_assert_null (dp_device_provider_of (cpu));
  dp_backend_free (cpu);
  dp_backend_free (be);
  made = NULL;
  /* A second provider of the same name does not replace the first. */
  static const dp_device_provider other = { .name = "fake", .owns = fake_owns };
  dp_device_register (&other);
  g_assert_true (dp_device_provider_get ("fake", NULL) == &fake);
}

static void
test_missing_module (void)
{
  for (int i = 0; i < 2; i++) {
    GError *err = NULL;
    g_assert_null (dp_device_provider_get ("nosuchdevice", &err));
    g_assert_error (err, DP_ERROR, DP_ERROR_UNSUPPORTED);
    /* It names the module and where it looked, every time. */
    g_assert_nonnull (strstr (err->message, "libdualparal-nosuchdevice.so"));
    g_assert_nonnull (strstr (err->message, "absent"));
    g_clear_error (&err);
  }
  /* DUALPARAL_MODULE_DIR is one of the places. */
  char *dir = dp_test_make_tmp_dir ("dp-modules-XXXXXX");
  g_setenv ("DUALPARAL_MODULE_DIR", dir, TRUE);
  GError *err = NULL;
  g_assert_null (dp_device_provider_get ("othermissing", &err));
  g_assert_nonnull (strstr (err->message, dir));
  g_clear_error (&err);
  g_unsetenv ("DUALPARAL_MODULE_DIR");
  dp_test_remove_tree (dir);
  g_free (dir);
}

static void
test_default_model (void)
{
  GError *err = NULL;
  char *dir = dp_test_make_tmp_dir ("dp-model-XXXXXX");

  /* Not a model (no model_index.json): refused, naming the variable. */
  g_setenv ("DUALPARAL_MODEL", dir, TRUE);
  g_assert_null (dp_default_model_dir (&err));
  g_assert_error (err, DP_ERROR, DP_ERROR_MISSING);
  g_assert_nonnull (strstr (err->message, "DUALPARAL_MODEL"));
  g_assert_nonnull (strstr (err->message, dir));
  g_clear_error (&err);

  /* A model directory: taken as given. */
  char *index = g_build_filename (dir, "model_index.json", NULL);
  g_assert_true (g_file_set_contents (index, "{}", -1, NULL));
  char *found = dp_default_model_dir (&err);
  g_assert_no_error (err);
  g_assert_cmpstr (found, ==, dir);
  g_free (found);

  /* Unset: the installed or source-tree embedded model, which has one. */
  g_unsetenv ("DUALPARAL_MODEL");
  found = dp_default_model_dir (&err);
  g_assert_no_error (err);
  g_assert_nonnull (found);
  char *embedded_index = g_build_filename (found, "model_index.json", NULL);
  g_assert_true (g_file_test (embedded_index, G_FILE_TEST_IS_REGULAR));
  g_free (embedded_index);
  g_free (found);
  g_free (index);
  dp_test_remove_tree (dir);
  g_free (dir);
}

int
main (int argc, char **argv)
{
  g_test_init (&argc, &argv, NULL);
  g_test_add_func ("/registry/register", test_register);
  g_test_add_func ("/registry/missing-module", test_missing_module);
  g_test_add_func ("/registry/default-model", test_default_model);
  return g_test_run ();
}
