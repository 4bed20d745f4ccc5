// The .npy reader: any bytes either load as an array whose size matches its shape
// or fail with a message; never a crash, a hang or an allocation beyond the file.
#include <stdlib.h>
#include <string.h>

#include "runtime/runtime.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  KilnArray a;
  KilnStatus st = {0};
  if (kiln_npy_read(kiln_fuzz_file(0, data, size), &a, &st) == 0) {
    int64_t n = 1;
    for (int i = 0; i < a.rank; i++) n *= a.shape[i];
    if (n != a.count) abort();
    // Touch every value, so a short buffer shows up under ASan.
    volatile uint32_t x = 0;
    for (int64_t i = 0; i < a.count; i++) x ^= ((const uint32_t *)a.data)[i];
    (void)x;
  } else if (st.code != 1 || !st.msg[0]) {
    abort();  // a failure must say why
  }
  kiln_array_free(&a);
  return 0;
}
