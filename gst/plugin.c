/* dualparal: the GStreamer plugin, holding the dualparalsrc element. */
#include <gst/gst.h>

#include "gstdualparalsrc.h"

static gboolean
plugin_init (GstPlugin *plugin)
{
  return GST_ELEMENT_REGISTER (dualparalsrc, plugin);
}

GST_PLUGIN_DEFINE (GST_VERSION_MAJOR, GST_VERSION_MINOR, dualparal,
    "Text-to-video generation with Wan2.1 diffusion transformers (DualParal)",
    plugin_init, VERSION, GST_LICENSE, GST_PACKAGE_NAME, GST_PACKAGE_ORIGIN)
