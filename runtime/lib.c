// The C API of a generated library (NAME.h): thin wrappers that keep the last error
// in the context, so callers get a message and not just a status.
#include <math.h>
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
  (void)d;
  c->st.code = 0;
  return kiln_ctx_load(c, path, &c->st);
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
