/* dualparal: OpenBLAS starts no thread pool of its own (core backend.h,
 * dp_openblas_quiet_env).
 *
 * OpenBLAS reads OPENBLAS_NUM_THREADS once, in its own constructor, when
 * the plugin is loaded (it is a dependency of libdualparal, which the
 * plugin links).  The plugin is linked with -z initfirst (gst/meson.build),
 * so the dynamic loader runs this constructor before those of the libraries
 * loaded with the plugin: the setting is in place when OpenBLAS reads it.
 * A user's OPENBLAS_NUM_THREADS is kept.  If the process had loaded OpenBLAS
 * before the plugin (an application using it itself), its settings stand. */
#include "dualparal/backend.h"

__attribute__ ((constructor)) static void
dualparal_openblas_env (void)
{
  dp_openblas_quiet_env ();
}
