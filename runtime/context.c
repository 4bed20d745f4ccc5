// A compiled model ready to run. Everything a step touches is allocated here,
// once: the weights block, the planned arena and the thread pool. A step itself
// allocates nothing.
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "runtime/runtime.h"

void openblas_set_num_threads(int n);

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

KilnCtx *kiln_ctx_create(const KilnModelDesc *d, int threads, KilnStatus *st) {
  if (d->abi_version != KILN_ABI_VERSION) {
    kiln_rt_fail(st, "model '%s' was compiled for runtime ABI %u, this runtime is ABI %d",
                 d->name, d->abi_version, KILN_ABI_VERSION);
    return NULL;
  }
  KilnCtx *c = calloc(1, sizeof *c);
  if (!c) return kiln_rt_fail(st, "out of memory"), NULL;
  c->d = d;
  c->weights = alloc64(d->weights_bytes);
  c->arena = alloc64(d->arena_bytes);
  if (threads <= 0) threads = (int)sysconf(_SC_NPROCESSORS_ONLN);
  c->pool = kiln_pool_create(threads);
  if (!c->weights || !c->arena || !c->pool) {
    kiln_rt_fail(st, "out of memory allocating %lld bytes of weights and %lld of activations",
                 (long long)d->weights_bytes, (long long)d->arena_bytes);
    kiln_ctx_destroy(c);
    return NULL;
  }
  // Kiln spreads BLAS calls over its own pool; OpenBLAS's threads would fight it.
  openblas_set_num_threads(1);
  kiln_ctx_init_params(c, d->seed);
  return c;
}

void kiln_ctx_destroy(KilnCtx *c) {
  if (!c) return;
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
}

static const KilnTensorDesc *find_param(const KilnModelDesc *d, const char *name) {
  for (int i = 0; i < d->nparams; i++)
    if (strcmp(d->params[i].name, name) == 0) return &d->params[i];
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
static int check_tensors(const KilnModelDesc *d, const KilnStFile *f, const char *path,
                         KilnStatus *st) {
  char msg[sizeof st->msg] = "";
  size_t at = 0;
  int bad = 0;
#define ADD(...) (at += at < sizeof msg ? (size_t)snprintf(msg + at, sizeof msg - at, __VA_ARGS__) : 0)
  for (int i = 0; i < d->nparams; i++) {
    const KilnTensorDesc *p = &d->params[i];
    const KilnStEntry *e = kiln_st_find(f, p->name);
    char a[96], b[96];
    if (!e) {
      ADD("%s missing '%s'", bad++ ? ";" : "", p->name);
    } else if (e->dtype != p->dtype || e->rank != p->rank ||
               memcmp(e->shape, p->shape, sizeof(int64_t) * (size_t)p->rank) != 0) {
      shape_str(e->shape, e->rank, a, sizeof a);
      shape_str(p->shape, p->rank, b, sizeof b);
      ADD("%s '%s' is %s%s, the model has f32%s", bad++ ? ";" : "", p->name,
          e->dtype == KILN_ABI_F32 ? "f32" : "i32", a, b);
    }
  }
  for (int i = 0; i < f->n; i++)
    if (!find_param(d, f->entries[i].name)) ADD("%s unexpected '%s'", bad++ ? ";" : "", f->entries[i].name);
#undef ADD
  if (!bad) return 0;
  return kiln_rt_fail(st, "%s does not fit model '%s':%s", path, d->name, msg);
}

int kiln_ctx_load(KilnCtx *c, const char *path, KilnStatus *st) {
  KilnStFile f;
  KILN_TRY(kiln_st_read(path, &f, st));
  int rc = check_tensors(c->d, &f, path, st);
  for (int i = 0; rc == 0 && i < c->d->nparams; i++) {
    const KilnTensorDesc *p = &c->d->params[i];
    const KilnStEntry *e = kiln_st_find(&f, p->name);
    memcpy(c->weights + p->offset, f.data + e->begin, (size_t)(e->end - e->begin));
  }
  kiln_st_free(&f);
  return rc;
}

int kiln_ctx_save(KilnCtx *c, const char *path, KilnStatus *st) {
  const KilnModelDesc *d = c->d;
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

int kiln_ctx_check_inputs(KilnCtx *c, KilnStatus *st) {
  for (int i = 0; i < c->d->ninputs; i++) {
    const KilnTensorDesc *in = &c->d->inputs[i];
    if (in->dtype != KILN_ABI_I32 || !in->bound || !(in->flags & KILN_ABI_LIVE)) continue;
    const int32_t *v = kiln_ctx_input(c, i);
    for (int64_t j = 0; j < in->bytes / 4; j++)
      if (v[j] < 0 || v[j] >= in->bound)
        return kiln_rt_fail(st, "input '%s': value %d at element %lld is outside [0, %lld)",
                            in->name, v[j], (long long)j, (long long)in->bound);
  }
  return 0;
}

void kiln_ctx_forward(KilnCtx *c) { c->d->forward(c->weights, c->arena, c); }

typedef struct {
  KilnKernelFn k;
  char *w, *a;
} Job;

static void run_job(void *ctx, int64_t lo, int64_t hi) {
  Job *j = ctx;
  j->k(j->w, j->a, lo, hi);
}

void kiln_rt_parallel_for(void *rt, KilnKernelFn kernel, char *weights, char *arena, int64_t n,
                          int64_t cost) {
  KilnCtx *c = rt;
  if (n < 2 || cost < PARALLEL_MIN_COST || kiln_pool_threads(c->pool) < 2) {
    kernel(weights, arena, 0, n);
    return;
  }
  Job j = {kernel, weights, arena};
  kiln_pool_run(c->pool, run_job, &j, n);
}
