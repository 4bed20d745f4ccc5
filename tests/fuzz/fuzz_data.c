// Data files as training reads them: CSV (the reader alone, and mapped onto a
// model's inputs), text and uint16 token files. The first byte picks the reader
// and its options; the rest is the file. A source either opens with every sample
// in range or fails with a message.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/runtime.h"
#include "tests/fuzz/fuzz.h"

enum { B = 4, T = 3 };

// A tabular model (x: 2 floats, label: a class in [0, 3)) and a sequence model
// (windows of 3 ids below 16), as tests/test_rt_data.c has them.
static const KilnTensorDesc tab_inputs[] = {
    {.name = "x", .dtype = KILN_ABI_F32, .rank = 2, .shape = {B, 2}, .offset = 64, .bytes = B * 8},
    {.name = "label", .dtype = KILN_ABI_I32, .rank = 1, .shape = {B}, .offset = 128,
     .bytes = B * 4, .bound = 3},
};
static const KilnModelDesc tab = {.abi_version = KILN_ABI_VERSION, .name = "tab", .batch = B,
                                  .arena_bytes = 256, .ninputs = 2, .inputs = tab_inputs};
static const KilnTensorDesc seq_inputs[] = {
    {.name = "idx", .dtype = KILN_ABI_I32, .rank = 2, .shape = {B, T}, .offset = 64,
     .bytes = B * T * 4, .bound = 16},
    {.name = "tgt", .dtype = KILN_ABI_I32, .rank = 2, .shape = {B, T}, .offset = 128,
     .bytes = B * T * 4, .bound = 16},
};
static const KilnModelDesc seq = {.abi_version = KILN_ABI_VERSION, .name = "seq", .batch = B,
                                  .arena_bytes = 256, .ninputs = 2, .inputs = seq_inputs};

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
    open_data(&tab, source, NULL, false);
    break;
  case 2: {
    // With the text's own vocabulary, or with a fixed one that the text must keep to.
    KilnVocab v;
    unsigned char present[256] = {0};
    for (const char *s = "\n abcdefghijklm"; *s; s++) present[(unsigned char)*s] = 1;
    kiln_vocab_from_bytes(present, &v);
    snprintf(source, sizeof source, "text\t%s\tidx\ttgt", path);
    open_data(&seq, source, mode & 4 ? &v : NULL, true);
    break;
  }
  case 3:
    snprintf(source, sizeof source, "tokens\t%s\tidx\ttgt", path);
    open_data(&seq, source, NULL, true);
    break;
  }
  return 0;
}
