/* libFuzzer target for the safetensors parser: any byte string either opens
 * cleanly or fails with a GError, never reads out of bounds.  Every tensor
 * of an accepted image is walked (first and last byte read, small ones
 * converted), so an offset that escaped validation shows up under ASan.
 *
 * Built with -Dfuzz=true and CC=clang; run e.g.
 *   build-fuzz/tests/fuzz/fuzz_safetensors tests/fuzz/corpus -max_total_time=60
 */
#include <stdint.h>
#include <string.h>

#include "dualparal/backend.h"
#include "dualparal/safetensors.h"

int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);

/* Reads go here so that the compiler keeps them. */
static volatile uint8_t fuzz_sink;

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  /* A private copy: the fuzzer's buffer ends exactly at size, and so does
   * this one, so any over-read hits ASan's redzone. */
  uint8_t *copy = g_malloc (size ? size : 1);
  memcpy (copy, data, size);
  GError *err = NULL;
  dp_safetensors *st = dp_safetensors_open_memory (copy, size, "fuzz", &err);
  if (!st) {
    /* Every failure carries a message naming the input. */
    if (!err || !strstr (err->message, "fuzz"))
      __builtin_trap ();
    g_error_free (err);
    g_free (copy);
    return 0;
  }
  int n = dp_safetensors_count (st);
  for (int i = 0; i < n; i++) {
    const char *name = dp_safetensors_name (st, i);
    dp_tensor t;
    if (!dp_safetensors_get (st, name, -1, NULL, &t, &err))
      __builtin_trap ();
    size_t nbytes = dp_tensor_nbytes (&t);
    if (nbytes) {
      fuzz_sink ^= ((const uint8_t *) t.data)[0];
      fuzz_sink ^= ((const uint8_t *) t.data)[nbytes - 1];
    }
    if (nbytes <= (1u << 16)) {
      dp_tensor f;
      if (!dp_safetensors_load (st, name, DP_F32, t.ndim, t.shape, &f, &err))
        __builtin_trap ();
      dp_tensor_free (&f);
    }
  }
  (void) dp_safetensors_metadata (st, "format");
  dp_safetensors_close (st);
  g_free (copy);
  return 0;
}
