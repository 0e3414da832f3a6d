/* dualparal: the device registry (private).  A device backend other than
 * the CPU one, and the transports that move its tensors, come from a
 * provider that registers itself here; the core knows this interface, never
 * a backend by name.  Providers live in loadable modules
 * (libdualparal-<name>.so, for instance kernels/ for CUDA), opened on the
 * first request for their device: a CPU run never loads them, and the
 * library links none of their libraries. */
#ifndef DUALPARAL_DEVICE_H
#define DUALPARAL_DEVICE_H

#include "dualparal/backend.h"
#include "dualparal/transport.h"

G_BEGIN_DECLS

typedef struct {
  const char *name; /* the device spec's prefix: "cuda" for "cuda:N" */
  /* The backend of device number `device`; NULL with an error. */
  dp_backend *(*backend_new) (int device, GError **error);
  /* Whether `be` is one of this provider's backends. */
  gboolean (*owns) (const dp_backend *be);
  /* The transport between stages of one process on this provider's
   * devices (engine.c); NULL: none (the engine refuses several stages). */
  dp_transport *(*stage_transport_new) (dp_backend *const *backends, int n_stages, GError **error);
  /* The transport between processes for a stage on this provider's device
   * ("nccl" for CUDA; transport.h dp_transport_new_process). */
  const char *process_transport_name;
  dp_transport *(*process_transport_new) (int n_stages, int stage, dp_backend *be, gboolean hidden_bf16,
                                          GError **error);
} dp_device_provider;

/* The entry point every module exports: it calls dp_device_register (). */
#define DP_MODULE_ENTRY "dp_module_register"
typedef void (*dp_module_register_fn) (void);

/* Registers `p` (static storage); a second provider of the same name is
 * ignored (the first stays: a program that links a provider's code directly,
 * like the GPU tests, registers it before any module could be loaded). */
void dp_device_register (const dp_device_provider *p);

/* The provider `name`, loading libdualparal-<name>.so on first use from
 * DUALPARAL_MODULE_DIR, the installed module folder (beside the loaded
 * library, then the configured one), then the build tree.
 * NULL with DP_ERROR_UNSUPPORTED naming the module, where it looked and why
 * it did not load (absent, or its libraries are missing). */
const dp_device_provider *dp_device_provider_get (const char *name, GError **error);

/* The registered provider that made `be`; NULL for the CPU backend. */
const dp_device_provider *dp_device_provider_of (const dp_backend *be);

G_END_DECLS

#endif
