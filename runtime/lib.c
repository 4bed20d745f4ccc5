// The C API of a generated library (NAME.h): thin wrappers that keep the last error
// in the context, so callers get a message and not just a status.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/runtime.h"

// Creation can fail before a context exists; its message lives here.
static _Thread_local KilnStatus create_status;

KilnCtx *kiln_lib_create(const KilnModelDesc *d, int threads) {
  return kiln_ctx_create(d, threads, &create_status);
}

void kiln_lib_destroy(const KilnModelDesc *d, KilnCtx *c) {
  (void)d;
  kiln_ctx_destroy(c);
}

int kiln_lib_load(const KilnModelDesc *d, KilnCtx *c, const char *path) {
  c->st.code = 0;
  KILN_TRY(kiln_ctx_load(c, path, &c->st));
  if (!d->decode) return 0;
  KilnVocab v;
  bool found;
  KILN_TRY(kiln_ckpt_vocab(path, &v, &found, &c->st));
  if (found && !c->vocab && !(c->vocab = malloc(sizeof *c->vocab)))
    return kiln_rt_fail(&c->st, "out of memory");
  if (found) *c->vocab = v;
  return 0;
}

// As the header's NAME_sampling.
typedef struct {
  int tokens;
  double temperature;
  int top_k;
  uint64_t seed;
} LibSampling;

static void lib_emit(int32_t id, void *user) {
  int32_t *ids = user;
  ids[1 + ids[0]++] = id;
}

int kiln_lib_generate(const KilnModelDesc *d, KilnCtx *c, const char *prompt, const LibSampling *s,
                      char *out, size_t cap) {
  c->st.code = 0;
  if (!c->vocab) {  // no weights with a vocabulary: the training text's
    KilnVocab v;
    KILN_TRY(kiln_gen_vocab(d, NULL, &v, &c->st));
    if (!(c->vocab = malloc(sizeof *c->vocab))) return kiln_rt_fail(&c->st, "out of memory");
    *c->vocab = v;
  }
  if (!c->gen && !(c->gen = kiln_gen_create(c, false, &c->st))) return -1;
  if (!prompt || !s || !out || cap < 1 || s->tokens < 0 || !(s->temperature >= 0))
    return kiln_rt_fail(&c->st, "generate: needs a prompt, sampling with tokens >= 0 and "
                        "temperature >= 0, and room for at least the final NUL");
  size_t np = strlen(prompt);
  int64_t n = (int64_t)cap - 1 < s->tokens ? (int64_t)cap - 1 : s->tokens;
  int32_t *ids = malloc((np + (size_t)n + 1) * sizeof *ids), *gen = ids ? ids + np : NULL;
  if (!ids) return kiln_rt_fail(&c->st, "out of memory");
  KilnSampling smp = {s->temperature, s->top_k, s->seed};
  gen[0] = 0;
  int rc = kiln_gen_encode(c->vocab, prompt, ids, &c->st);
  if (rc == 0) rc = kiln_gen_run(c->gen, ids, (int64_t)np, n, &smp, lib_emit, gen, &c->st);
  for (int32_t i = 0; rc == 0 && i < gen[0]; i++) out[i] = (char)c->vocab->sym[gen[1 + i]];
  out[rc == 0 ? gen[0] : 0] = 0;
  int made = gen[0];
  free(ids);
  return rc == 0 ? made : -1;
}

int kiln_lib_save(const KilnModelDesc *d, KilnCtx *c, const char *path) {
  (void)d;
  c->st.code = 0;
  return kiln_ctx_save(c, path, &c->st);
}

const char *kiln_lib_last_error(const KilnModelDesc *d, const KilnCtx *c) {
  (void)d;
  const KilnStatus *st = c ? &c->st : &create_status;
  return st->code ? st->msg : "";
}

int kiln_lib_forward(KilnCtx *c, const void *const *ins, void *const *outs) {
  const KilnModelDesc *d = c->d;
  c->st.code = 0;
  for (int i = 0, k = 0; i < d->ninputs; i++)
    if (d->inputs[i].flags & KILN_ABI_LIVE) memcpy(kiln_ctx_input(c, i), ins[k++], (size_t)d->inputs[i].bytes);
  if (kiln_ctx_check_inputs(c, &c->st) != 0) return -1;
  kiln_ctx_forward(c);
  KILN_TRY(kiln_ctx_check(c, &c->st));
  for (int i = 0; i < d->noutputs; i++) memcpy(outs[i], kiln_ctx_output(c, i), (size_t)d->outputs[i].bytes);
  return 0;
}

int kiln_lib_train_step(KilnCtx *c, const void *const *ins, float *out_loss) {
  const KilnModelDesc *d = c->d;
  c->st.code = 0;
  if (out_loss) *out_loss = NAN;
  if (!d->train_step || !d->train)
    return kiln_rt_fail(&c->st, "model '%s' has no loss: it cannot train (train_step needs a "
                        "model with a loss)", d->name);
  if (!c->header)
    return kiln_rt_fail(&c->st, "model '%s' was planned without a step header; rebuild it",
                        d->name);
  for (int i = 0; i < d->ninputs; i++) memcpy(kiln_ctx_input(c, i), ins[i], (size_t)d->inputs[i].bytes);
  if (kiln_ctx_check_all_inputs(c, &c->st) != 0) return -1;
  float loss = kiln_ctx_train_step(c);
  KILN_TRY(kiln_ctx_check(c, &c->st));
  if (out_loss) *out_loss = loss;
  if (!isfinite(loss))
    return kiln_rt_fail(&c->st, "step %lld: the loss is %s (the update was applied)",
                        (long long)c->step, isnan(loss) ? "NaN" : "infinite");
  return 0;
}

// The library knows no data set: its checkpoints carry the step and seed, with the
// data position left at zero.
int kiln_lib_save_state(const KilnModelDesc *d, KilnCtx *c, const char *path) {
  (void)d;
  c->st.code = 0;
  KilnCkptState s = {0};
  return kiln_ckpt_save(c, path, &s, &c->st);
}

int kiln_lib_load_state(const KilnModelDesc *d, KilnCtx *c, const char *path) {
  (void)d;
  c->st.code = 0;
  KilnCkptState s;
  return kiln_ckpt_load(c, path, &s, &c->st);
}

// Profiling: from begin to end every kernel is timed; end prints the table on
// standard error and writes the CSV and trace files named at begin (NULL: none).
int kiln_lib_profile_begin(const KilnModelDesc *d, KilnCtx *c, const char *csv, const char *trace) {
  (void)d;
  c->st.code = 0;
  KilnProfileOpts o = {.table = stderr, .csv = csv, .trace = trace};
  return kiln_rt_profile_begin(c, &o, &c->st);
}

int kiln_lib_profile_end(const KilnModelDesc *d, KilnCtx *c) {
  (void)d;
  c->st.code = 0;
  return kiln_rt_profile_end(c, &c->st);
}
