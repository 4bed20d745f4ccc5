// The checkpoint and weights loaders, on a small model (w [2], b [1], and SGD
// momentum for each): any file either loads with every value finite and the
// training state in range, or fails with a message and leaves the model's
// parameters as they were.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/runtime.h"
#include "tests/fuzz/fuzz.h"

static const KilnTensorDesc params[] = {
    {.name = "w", .dtype = KILN_ABI_F32, .rank = 1, .shape = {2}, .offset = 0, .bytes = 8,
     .init = KILN_ABI_INIT_NORMAL, .init_a = 1},
    {.name = "b", .dtype = KILN_ABI_F32, .rank = 1, .shape = {1}, .offset = 8, .bytes = 4},
};
static const KilnTensorDesc opt[] = {
    {.name = "sgd.v.w", .dtype = KILN_ABI_F32, .rank = 1, .shape = {2}, .offset = 12, .bytes = 8},
    {.name = "sgd.v.b", .dtype = KILN_ABI_F32, .rank = 1, .shape = {1}, .offset = 20, .bytes = 4},
};
static const KilnModelDesc model = {
    .abi_version = KILN_ABI_VERSION, .name = "fake", .kiln_version = "test", .target = "cpu",
    .seed = 42, .batch = 1, .weights_bytes = 12, .arena_bytes = 64, .nparams = 2, .opt_bytes = 12,
    .nopt = 2, .params = params, .opt = opt};

static KilnCtx *ctx(void) {
  static KilnCtx *c;
  if (!c) {
    KilnStatus st = {0};
    c = kiln_ctx_create(&model, 1, &st);
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
