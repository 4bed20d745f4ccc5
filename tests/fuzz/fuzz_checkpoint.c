// The checkpoint and weights loaders, on a small model (w [2], b [1], and SGD
// momentum for each): any file either loads with every value finite and the
// training state in range, or fails with a message and leaves the model's
// parameters as they were.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/runtime.h"
#include "tests/fixtures.h"
#include "tests/fuzz/fuzz.h"

static KilnCtx *ctx(void) {
  static KilnCtx *c;
  if (!c) {
    KilnStatus st = {0};
    c = kiln_ctx_create(&kiln_fake_model, 1, &st);
    if (!c) abort();
  }
  return c;
}

static void check_finite(const KilnCtx *c) {
  for (int i = 0; i < 6; i++)
    if (!isfinite(((const float *)c->weights)[i])) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *path = kiln_fuzz_file(0, data, size);
  KilnCtx *c = ctx();
  kiln_ctx_init_params(c, 42);
  char before[24];
  memcpy(before, c->weights, sizeof before);
  KilnStatus st = {0};
  KilnCkptState s;
  if (kiln_ckpt_load(c, path, &s, &st) == 0) {
    check_finite(c);
    if (!isfinite(s.lr) || s.lr < 0 || s.step < 0 || s.epoch < 0 || s.pos < 0) abort();
  } else if (st.code != 1 || !st.msg[0] || memcmp(before, c->weights, sizeof before) != 0) {
    abort();
  }
  st = (KilnStatus){0};
  if (kiln_ctx_load(c, path, &st) == 0) check_finite(c);
  else if (st.code != 1 || !st.msg[0]) abort();
  KilnVocab v;
  bool found;
  st = (KilnStatus){0};
  if (kiln_ckpt_vocab(path, &v, &found, &st) == 0 && found) {
    if (v.n < 0 || v.n > 256) abort();
    for (int k = 0; k < v.n; k++)
      if (v.id[v.sym[k]] != k) abort();
  }
  return 0;
}
