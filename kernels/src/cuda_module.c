/* The CUDA module's entry (core device.h): registers the CUDA backend with
 * its two NCCL transports, the in-process one between stages
 * (nccl_transport.c) and the one between processes
 * (nccl_process_transport.c).  libdualparal opens this module on the first
 * request for a CUDA device; programs that link the CUDA code directly (the
 * GPU tests, dualparal-bench) call dp_cuda_register () first instead. */
#include "cuda_backend.h"
#include "dualparal/device.h"
#include "nccl_transport.h"

#include <gmodule.h>

static const dp_device_provider cuda_provider = {
  .name = "cuda",
  .backend_new = dp_cuda_backend_new,
  .owns = dp_cuda_backend_is_cuda,
  .stage_transport_new = dp_nccl_transport_new,
  .process_transport_name = "nccl",
  .process_transport_new = dp_nccl_process_transport_new,
};

void
dp_cuda_register (void)
{
  dp_device_register (&cuda_provider);
}

/* DP_MODULE_ENTRY: looked up by name with g_module_symbol (). */
G_MODULE_EXPORT void dp_module_register (void);

void
dp_module_register (void)
{
  dp_cuda_register ();
}
