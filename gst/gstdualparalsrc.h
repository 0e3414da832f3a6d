/* dualparalsrc: a GStreamer source that generates video from a text prompt
 * with the dualparal generator (core/include/dualparal/generator.h).
 *
 * The element only maps the generator onto GStreamer: a worker thread runs
 * dp_generator_run(), its frame callback copies each RGB frame into a bounded
 * queue (frame_queue.h), and the streaming thread takes frames from the queue,
 * converts them into the negotiated format and timestamps them from the frame
 * index.  See docs/usage.md for the properties and pipelines.
 */
#ifndef GST_DUAL_PARAL_SRC_H
#define GST_DUAL_PARAL_SRC_H

#include <gst/gst.h>
#include <gst/base/gstpushsrc.h>

G_BEGIN_DECLS

/* Sampler: values equal dp_sampler_kind. */
typedef enum {
  GST_DUAL_PARAL_SAMPLER_UNIPC = 0,
  GST_DUAL_PARAL_SAMPLER_EULER = 1,
} GstDualParalSampler;

/* Engine: auto picks DualParal for endless video and for several devices
 * (both need it), the classic whole-video pipeline otherwise. */
typedef enum {
  GST_DUAL_PARAL_ENGINE_AUTO = 0,
  GST_DUAL_PARAL_ENGINE_CLASSIC = 1,
  GST_DUAL_PARAL_ENGINE_DUALPARAL = 2,
} GstDualParalEngine;

/* Where the DualParal stages run: values equal dp_processes
 * (docs/distributed.md). */
typedef enum {
  GST_DUAL_PARAL_PROCESSES_THREADS = 0,
  GST_DUAL_PARAL_PROCESSES_SPAWN = 1,
  GST_DUAL_PARAL_PROCESSES_LAUNCHER = 2,
} GstDualParalProcesses;

#define GST_TYPE_DUAL_PARAL_SAMPLER (gst_dual_paral_sampler_get_type ())
GType gst_dual_paral_sampler_get_type (void);
#define GST_TYPE_DUAL_PARAL_ENGINE (gst_dual_paral_engine_get_type ())
GType gst_dual_paral_engine_get_type (void);
#define GST_TYPE_DUAL_PARAL_PROCESSES (gst_dual_paral_processes_get_type ())
GType gst_dual_paral_processes_get_type (void);

#define GST_TYPE_DUAL_PARAL_SRC (gst_dual_paral_src_get_type ())
G_DECLARE_FINAL_TYPE (GstDualParalSrc, gst_dual_paral_src, GST, DUAL_PARAL_SRC, GstPushSrc)

GST_ELEMENT_REGISTER_DECLARE (dualparalsrc);

G_END_DECLS

#endif
