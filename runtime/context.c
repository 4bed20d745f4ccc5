// A compiled model ready to run. Everything a step touches is allocated here,
// once: the weights block (parameters, then optimizer state), the planned arena
// and the thread pool. A step itself allocates nothing.
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "runtime/runtime.h"

// Weak: a GPU program (--target=cuda) calls no BLAS and is linked without OpenBLAS.
void openblas_set_num_threads(int n) __attribute__((weak));

// Below this many FLOPs a kernel runs on the calling thread: waking workers costs
// more than the work (a few microseconds).
#define PARALLEL_MIN_COST 50000

static void *alloc64(int64_t bytes) {
  void *p = NULL;
  size_t n = (size_t)(bytes > 0 ? bytes : 64);
  n = (n + 63) & ~(size_t)63;
  if (posix_memalign(&p, 64, n) != 0) return NULL;
  memset(p, 0, n);
  return p;
}

// Models planned for the training contract keep the step header at arena offset 0;
// older plans put tensors there, and writing a header would clobber them.
static bool header_reserved(const KilnModelDesc *d) {
  if (d->arena_bytes < KILN_ABI_HEADER_BYTES) return false;
  for (int i = 0; i < d->ninputs; i++)
    if (d->inputs[i].offset < KILN_ABI_HEADER_BYTES) return false;
  for (int i = 0; i < d->noutputs; i++)
    if (d->outputs[i].offset < KILN_ABI_HEADER_BYTES) return false;
  return true;
}

KilnCtx *kiln_ctx_create(const KilnModelDesc *d, int threads, KilnStatus *st) {
  if (d->abi_version != KILN_ABI_VERSION) {
    kiln_rt_fail(st, "model '%s' was compiled for runtime ABI %u, this runtime is ABI %d",
                 d->name, d->abi_version, KILN_ABI_VERSION);
    return NULL;
  }
  KilnCtx *c = calloc(1, sizeof *c);
  if (!c) return kiln_rt_fail(st, "out of memory"), NULL;
  c->d = d;
  c->weights = alloc64(d->weights_bytes + d->opt_bytes);
  c->arena = alloc64(d->arena_bytes);
  bool gpu = kiln_cuda_target(d);
  if (threads <= 0) threads = (int)sysconf(_SC_NPROCESSORS_ONLN);
  c->pool = kiln_pool_create(gpu ? 1 : threads);  // the GPU runs the kernels
  if (!c->weights || !c->arena || !c->pool) {
    kiln_rt_fail(st, "out of memory allocating %lld bytes of weights and %lld of activations",
                 (long long)(d->weights_bytes + d->opt_bytes), (long long)d->arena_bytes);
    kiln_ctx_destroy(c);
    return NULL;
  }
  // Kiln spreads BLAS calls over its own pool; OpenBLAS's threads would fight it.
  if (openblas_set_num_threads) openblas_set_num_threads(1);
  c->header = header_reserved(d);
  if (gpu && kiln_cuda_open(c, st) != 0) {
    kiln_ctx_destroy(c);
    return NULL;
  }
  c->seed = d->seed;
  if (d->train) {
    c->lr = d->train->lr;
    c->total_steps = d->train->steps;
  }
  kiln_ctx_init_params(c, d->seed);
  return c;
}

KilnCtx *kiln_ctx_create_view(const KilnModelDesc *d, KilnCtx *owner, KilnStatus *st) {
  KilnCtx *c = calloc(1, sizeof *c);
  if (!c || !(c->arena = alloc64(d->arena_bytes))) {
    free(c);
    kiln_rt_fail(st, "out of memory allocating %lld bytes of activations", (long long)d->arena_bytes);
    return NULL;
  }
  c->d = d;
  c->owner = owner;
  c->weights = owner->weights;
  c->pool = owner->pool;
  c->header = header_reserved(d);
  c->seed = owner->seed;
  if (kiln_cuda_target(d) && kiln_cuda_open(c, st) != 0) {
    kiln_ctx_destroy(c);
    return NULL;
  }
  return c;
}

void kiln_ctx_destroy(KilnCtx *c) {
  if (!c) return;
  kiln_rt_profile_end(c, NULL);
  kiln_cuda_close(c);
  if (c->owner) {
    free(c->arena);
    free(c);
    return;
  }
  kiln_gen_destroy(c->gen);
  free(c->vocab);
  if (c->pool) kiln_pool_destroy(c->pool);
  free(c->weights);
  free(c->arena);
  free(c);
}

void kiln_ctx_init_params(KilnCtx *c, uint64_t seed) {
  for (int i = 0; i < c->d->nparams; i++) {
    const KilnTensorDesc *p = &c->d->params[i];
    kiln_rng_init_param(p, seed, (float *)(c->weights + p->offset));
  }
  if (c->d->opt_bytes > 0) memset(c->weights + c->d->weights_bytes, 0, (size_t)c->d->opt_bytes);
  kiln_ctx_weights_changed(c);
}

// A view's weights are its owner's: so is their state on the device.
void kiln_ctx_weights_changed(KilnCtx *c) { kiln_cuda_weights_changed(c->owner ? c->owner : c); }

int kiln_ctx_weights_sync(KilnCtx *c, KilnStatus *st) {
  KilnCtx *o = c->owner ? c->owner : c;
  // After a failed step the device's weights are not to be trusted, nor written out.
  if (o->fault.code) return kiln_ctx_check(o, st);
  return kiln_cuda_weights_sync(o, st);
}

int kiln_ctx_check(const KilnCtx *c, KilnStatus *st) {
  if (!c->fault.code) return 0;
  if (st != &c->fault) *st = c->fault;
  return -1;
}

void kiln_ctx_state_reset(KilnCtx *c) {
  for (int i = 0; i < c->d->ninputs; i++) {
    const KilnTensorDesc *t = &c->d->inputs[i];
    if (!(t->flags & KILN_ABI_STATE)) continue;
    memset(c->arena + t->offset, 0, (size_t)t->bytes);
    if (c->cuda && !c->fault.code) kiln_cuda_zero(c, t->offset, t->bytes, &c->fault);
  }
}

static const KilnTensorDesc *find_desc(const KilnTensorDesc *t, int n, const char *name) {
  for (int i = 0; i < n; i++)
    if (strcmp(t[i].name, name) == 0) return &t[i];
  return NULL;
}

static void shape_str(const int64_t *s, int rank, char *buf, size_t len) {
  size_t at = (size_t)snprintf(buf, len, "[");
  for (int i = 0; i < rank && at < len; i++)
    at += (size_t)snprintf(buf + at, len - at, "%s%lld", i ? "," : "", (long long)s[i]);
  if (at < len) snprintf(buf + at, len - at, "]");
}

// Every mismatch is collected into one message, so a user fixing a weights file
// sees all of it at once.
typedef struct {
  char msg[sizeof ((KilnStatus *)0)->msg];
  size_t at;
  int bad;
} Mismatch;

static void add(Mismatch *m, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void add(Mismatch *m, const char *fmt, ...) {
  if (m->at >= sizeof m->msg) return;
  va_list ap;
  va_start(ap, fmt);
  m->at += (size_t)vsnprintf(m->msg + m->at, sizeof m->msg - m->at, fmt, ap);
  va_end(ap);
}

static void check_list(const KilnTensorDesc *t, int n, const KilnStFile *f, Mismatch *m) {
  for (int i = 0; i < n; i++) {
    const KilnTensorDesc *p = &t[i];
    const KilnStEntry *e = kiln_st_find(f, p->name);
    char a[96], b[96];
    if (!e) {
      add(m, "%s missing '%s'", m->bad++ ? ";" : "", p->name);
    } else if (e->dtype != p->dtype || e->rank != p->rank ||
               memcmp(e->shape, p->shape, sizeof(int64_t) * (size_t)p->rank) != 0) {
      shape_str(e->shape, e->rank, a, sizeof a);
      shape_str(p->shape, p->rank, b, sizeof b);
      add(m, "%s '%s' is %s%s, the model has %s%s", m->bad++ ? ";" : "", p->name,
          e->dtype == KILN_ABI_F32 ? "f32" : "i32", a, p->dtype == KILN_ABI_F32 ? "f32" : "i32",
          b);
    }
  }
}

int kiln_ctx_check_file(const KilnModelDesc *d, const KilnStFile *f, const char *path, bool opt,
                        KilnStatus *st) {
  Mismatch m = {.at = 0};
  check_list(d->params, d->nparams, f, &m);
  if (opt) check_list(d->opt, d->nopt, f, &m);
  for (int i = 0; i < f->n; i++) {
    const char *name = f->entries[i].name;
    if (!find_desc(d->params, d->nparams, name) && !find_desc(d->opt, d->nopt, name))
      add(&m, "%s unexpected '%s'", m.bad++ ? ";" : "", name);
  }
  if (!m.bad) return 0;
  return kiln_rt_fail(st, "%s does not fit model '%s':%s", path, d->name, m.msg);
}

// The parameters only: a CUDA context's optimizer state, if its steps changed it,
// comes back from the device first so that the upload after keeps it.
int kiln_ctx_load(KilnCtx *c, const char *path, KilnStatus *st) {
  KilnStFile f;
  KILN_TRY(kiln_st_read(path, &f, st));
  int rc = kiln_ctx_check_file(c->d, &f, path, false, st);
  if (rc == 0) rc = kiln_ctx_weights_sync(c, st);
  for (int i = 0; rc == 0 && i < c->d->nparams; i++) {
    const KilnTensorDesc *p = &c->d->params[i];
    const KilnStEntry *e = kiln_st_find(&f, p->name);
    memcpy(c->weights + p->offset, f.data + e->begin, (size_t)(e->end - e->begin));
  }
  kiln_st_free(&f);
  if (rc == 0) kiln_ctx_weights_changed(c);
  return rc;
}

int kiln_ctx_save(KilnCtx *c, const char *path, KilnStatus *st) {
  const KilnModelDesc *d = c->d;
  KILN_TRY(kiln_ctx_weights_sync(c, st));
  const void **data = calloc((size_t)(d->nparams ? d->nparams : 1), sizeof *data);
  if (!data) return kiln_rt_fail(st, "out of memory");
  for (int i = 0; i < d->nparams; i++) data[i] = c->weights + d->params[i].offset;
  const char *keys[] = {"kiln_model", "kiln_version"}, *vals[] = {d->name, d->kiln_version};
  int rc = kiln_st_write(path, d->params, data, d->nparams, keys, vals, 2, st);
  free(data);
  return rc;
}

void *kiln_ctx_input(KilnCtx *c, int i) { return c->arena + c->d->inputs[i].offset; }

const void *kiln_ctx_output(const KilnCtx *c, int i) { return c->arena + c->d->outputs[i].offset; }

static int check_inputs(KilnCtx *c, bool all, KilnStatus *st) {
  for (int i = 0; i < c->d->ninputs; i++) {
    const KilnTensorDesc *in = &c->d->inputs[i];
    if (in->dtype != KILN_ABI_I32 || !in->bound || !(all || (in->flags & KILN_ABI_LIVE))) continue;
    const int32_t *v = kiln_ctx_input(c, i);
    for (int64_t j = 0; j < in->bytes / 4; j++)
      if (v[j] < 0 || v[j] >= in->bound)
        return kiln_rt_fail(st, "input '%s': value %d at element %lld is outside [0, %lld)",
                            in->name, v[j], (long long)j, (long long)in->bound);
  }
  return 0;
}

int kiln_ctx_check_inputs(KilnCtx *c, KilnStatus *st) { return check_inputs(c, false, st); }

int kiln_ctx_check_all_inputs(KilnCtx *c, KilnStatus *st) { return check_inputs(c, true, st); }

// Inference: the header says "not training", so dropout passes values through.
void kiln_ctx_forward(KilnCtx *c) {
  if (c->header) {
    KilnStepHeader *h = (KilnStepHeader *)c->arena;
    h->seed = 0;
    h->training = 0;
    h->step = (int32_t)c->step;
  }
  kiln_rt_run_step(c, c->d->forward, "forward");
}

typedef struct {
  KilnKernelFn k;
  char *w, *a;
  int64_t base;
} Job;

static void run_job(void *ctx, int64_t lo, int64_t hi) {
  Job *j = ctx;
  j->k(j->w, j->a, j->base + lo, j->base + hi);
}

void kiln_rt_launch(KilnCtx *c, KilnKernelFn kernel, char *weights, char *arena, int64_t lo,
                    int64_t hi, int64_t cost, int32_t index) {
  int64_t n = hi - lo;
  bool serial = n < 2 || cost < PARALLEL_MIN_COST || kiln_pool_threads(c->pool) < 2;
  // Gradient sums in flight move on between kernels (MPI progresses in its calls).
  if (c->dist) c->dist->ops->poll();
  if (c->prof) {
    kiln_prof_launch(c, kernel, weights, arena, lo, hi, !serial, index);
    return;
  }
  if (serial) {
    kernel(weights, arena, lo, hi);
    return;
  }
  Job j = {kernel, weights, arena, lo};
  kiln_pool_run(c->pool, run_job, &j, n);
}

void kiln_rt_parallel_for(void *rt, KilnKernelFn kernel, char *weights, char *arena, int64_t n,
                          int64_t cost, int32_t index) {
  kiln_rt_launch(rt, kernel, weights, arena, 0, n, cost, index);
}
