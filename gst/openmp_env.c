/* dualparal: OpenMP's threads sleep when idle (core backend.h,
 * dp_openmp_quiet_env).
 *
 * libgomp reads OMP_WAIT_POLICY once, in its own constructor, when the
 * plugin is loaded (it is a dependency of the plugin, which links the core
 * statically).  The plugin is linked with -z initfirst (gst/meson.build), so
 * the dynamic loader runs this constructor before those of the libraries
 * loaded with the plugin: the setting is in place when libgomp reads it.
 * A user's OMP_WAIT_POLICY or GOMP_SPINCOUNT is kept.  If the process had
 * loaded libgomp before the plugin (an application using OpenMP itself),
 * its settings stand. */
#include "dualparal/backend.h"

__attribute__ ((constructor)) static void
dualparal_openmp_env (void)
{
  dp_openmp_quiet_env ();
}
