/* dp_install_path (): the loaded library's folder via dladdr (). */
#define _GNU_SOURCE
#include "install_dirs.h"

#include <dlfcn.h>

char *
dp_install_path (const char *relative)
{
  Dl_info info;
  /* Any symbol of this library names its file. */
  if (dladdr ((void *) dp_install_path, &info) == 0 || info.dli_fname == NULL || info.dli_fname[0] != '/')
    return NULL;
  char *dir = g_path_get_dirname (info.dli_fname);
  char *path = g_build_filename (dir, relative, NULL);
  char *canon = g_canonicalize_filename (path, NULL);
  g_free (path);
  g_free (dir);
  return canon;
}
