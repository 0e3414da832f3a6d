/* Where the installed files are, found from where libdualparal itself was
 * loaded: an installation moved to another prefix (a package, a temporary
 * prefix, DESTDIR) still finds its model, its modules and its worker. */
#ifndef DUALPARAL_INSTALL_DIRS_H
#define DUALPARAL_INSTALL_DIRS_H

#include <glib.h>

G_BEGIN_DECLS

/* `relative` (a path from the library's folder, from meson.build) joined to
 * the folder that holds the loaded libdualparal; NULL when that is unknown
 * (a program that links the core statically).  g_free. */
char *dp_install_path (const char *relative);

G_END_DECLS

#endif
