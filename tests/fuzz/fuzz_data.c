// Data files as training reads them: CSV (the reader alone, and mapped onto a
// model's inputs), text and uint16 token files. The first byte picks the reader
// and its options; the rest is the file. A source either opens with every sample
// in range or fails with a message.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/runtime.h"
#include "tests/fixtures.h"
#include "tests/fuzz/fuzz.h"

// The tabular and sequence models of tests/fixtures.h.

static void check_ids(const KilnData *dt) {
  for (int64_t i = 0; i < dt->nids; i++)
    if (dt->ids[i] < 0 || dt->ids[i] >= 16) abort();
  if (dt->n < 1 || dt->n * dt->window + 1 > dt->nids) abort();
}

static void open_data(const KilnModelDesc *d, const char *source, const KilnVocab *vocab,
                      bool seq_model) {
  KilnData dt;
  KilnStatus st = {0};
  if (kiln_data_open(d, source, vocab, &dt, &st) != 0) {
    if (st.code != 1 || !st.msg[0]) abort();
    return;
  }
  if (seq_model) {
    check_ids(&dt);
  } else {
    for (int64_t r = 0; r < dt.n; r++) {
      int32_t label = ((const int32_t *)dt.col[1])[r];
      if (label < 0 || label >= 3) abort();
    }
  }
  kiln_data_free(&dt);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  uint8_t mode = data[0];
  const char *path = kiln_fuzz_file(0, data + 1, size - 1);
  char source[256];
  switch (mode % 4) {
  case 0: {
    KilnCsv csv;
    KilnStatus st = {0};
    if (kiln_csv_read(path, mode & 4, &csv, &st) == 0) {
      if (csv.rows < 1 || csv.cols < 1) abort();
      kiln_csv_free(&csv);
    } else if (st.code != 1 || !st.msg[0]) {
      abort();
    }
    break;
  }
  case 1:
    snprintf(source, sizeof source, "csv\t%s\t%d\tx:0:2\tlabel:2:3", path, (mode & 4) != 0);
    open_data(&kiln_tab_model, source, NULL, false);
    break;
  case 2: {
    // With the text's own vocabulary, or with a fixed one that the text must keep to.
    KilnVocab v;
    unsigned char present[256] = {0};
    for (const char *s = "\n abcdefghijklm"; *s; s++) present[(unsigned char)*s] = 1;
    kiln_vocab_from_bytes(present, &v);
    snprintf(source, sizeof source, "text\t%s\tidx\ttgt", path);
    open_data(&kiln_seq_model, source, mode & 4 ? &v : NULL, true);
    break;
  }
  case 3:
    snprintf(source, sizeof source, "tokens\t%s\tidx\ttgt", path);
    open_data(&kiln_seq_model, source, NULL, true);
    break;
  }
  return 0;
}
