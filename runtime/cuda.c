// The CUDA target's side of the runtime. A context of a "cuda" model keeps its
// weights block and arena on the GPU, at the descriptor's offsets; the host copies
// stay what the rest of the runtime reads and writes (init, load, checkpoints), and
// move to and from the device only when one side changed them:
//
//   host writes weights (kiln_ctx_weights_changed)   -> uploaded before the next step
//   a train step changes them on the device          -> downloaded at kiln_ctx_weights_sync
//   each step                                        -> its `up` arena ranges up, launches,
//                                                       its `down` ranges back, synchronize
//
// The driver is loaded with dlopen (libcuda.so.1, or $KILN_CUDA_DRIVER), so programs
// link and start without CUDA and fail with a message on a machine without a GPU.
// These entry points, and no others, are looked up:
//
//   cuInit cuDriverGetVersion cuDeviceGetCount cuDeviceGet cuDeviceGetAttribute
//   cuDeviceGetName cuDevicePrimaryCtxRetain cuDevicePrimaryCtxRelease_v2
//   cuCtxSetCurrent cuModuleLoadData cuModuleUnload cuModuleGetFunction
//   cuFuncGetAttribute cuMemAlloc_v2 cuMemFree_v2 cuMemcpyHtoDAsync_v2
//   cuMemcpyDtoHAsync_v2 cuMemsetD8Async cuStreamCreate cuStreamDestroy_v2
//   cuStreamSynchronize cuLaunchKernel cuStreamBeginCapture_v2 cuStreamEndCapture
//   cuGraphInstantiateWithFlags cuGraphLaunch cuGraphExecDestroy cuGraphDestroy
//   cuEventCreate cuEventRecord cuEventSynchronize cuEventElapsedTime
//   cuEventDestroy_v2 cuGetErrorName cuGetErrorString cuMemGetInfo_v2
//   cuStreamWaitEvent cuStreamQuery
//
// Data-parallel training (kiln_cuda_dist): the train step's gradients are averaged
// by NCCL (nccl.c) on a second stream. At each of the step's KilnCudaSync points
// the main stream records an event the NCCL stream waits for, so a gradient's sum
// runs while the backward kernels after it do; before the gradient norm the main
// stream waits for the NCCL stream. The fork and join are events, so the step is
// still captured as one CUDA graph, the sums inside it.
//
// Environment: KILN_CUDA_DEVICE (ordinal, default 0), KILN_CUDA_GRAPHS=0 (launch
// kernel by kernel instead of replaying a CUDA graph), KILN_CUDA_SYNC=1 (wait after
// every launch, so an error the GPU reports later is pinned on its kernel).
#include <dlfcn.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "runtime/runtime.h"

// The driver's types, as cuda.h declares them (that header is not needed to build).
typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;
typedef struct CUctx_st *CUcontext;
typedef struct CUmod_st *CUmodule;
typedef struct CUfunc_st *CUfunction;
typedef struct CUstream_st *CUstream;
typedef struct CUevent_st *CUevent;
typedef struct CUgraph_st *CUgraph;
typedef struct CUgraphExec_st *CUgraphExec;

enum {
  CUDA_SUCCESS = 0,
  CUDA_ERROR_NO_DEVICE = 100,
  CUDA_ERROR_NOT_READY = 600,
  CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75,
  CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76,
  CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK = 0,
  CU_FUNC_ATTRIBUTE_NUM_REGS = 4,
  CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES = 8,
  CU_STREAM_NON_BLOCKING = 1,
  CU_STREAM_CAPTURE_MODE_THREAD_LOCAL = 1,
  CU_EVENT_DEFAULT = 0,
  CU_EVENT_DISABLE_TIMING = 2,
};

// The entry points: name and parameters. One list makes the table and its lookup.
#define CU_ENTRY_POINTS(X)                                                                   \
  X(cuInit, (unsigned flags))                                                                \
  X(cuDriverGetVersion, (int *version))                                                      \
  X(cuDeviceGetCount, (int *count))                                                          \
  X(cuDeviceGet, (CUdevice *dev, int ordinal))                                               \
  X(cuDeviceGetAttribute, (int *v, int attr, CUdevice dev))                                  \
  X(cuDeviceGetName, (char *name, int len, CUdevice dev))                                    \
  X(cuDevicePrimaryCtxRetain, (CUcontext *ctx, CUdevice dev))                                \
  X(cuDevicePrimaryCtxRelease_v2, (CUdevice dev))                                            \
  X(cuCtxSetCurrent, (CUcontext ctx))                                                        \
  X(cuModuleLoadData, (CUmodule *mod, const void *image))                                    \
  X(cuModuleUnload, (CUmodule mod))                                                          \
  X(cuModuleGetFunction, (CUfunction *fn, CUmodule mod, const char *name))                   \
  X(cuFuncGetAttribute, (int *v, int attr, CUfunction fn))                                   \
  X(cuMemAlloc_v2, (CUdeviceptr *p, size_t bytes))                                           \
  X(cuMemFree_v2, (CUdeviceptr p))                                                           \
  X(cuMemcpyHtoDAsync_v2, (CUdeviceptr dst, const void *src, size_t bytes, CUstream s))      \
  X(cuMemcpyDtoHAsync_v2, (void *dst, CUdeviceptr src, size_t bytes, CUstream s))            \
  X(cuMemsetD8Async, (CUdeviceptr dst, unsigned char v, size_t n, CUstream s))               \
  X(cuStreamCreate, (CUstream *s, unsigned flags))                                           \
  X(cuStreamDestroy_v2, (CUstream s))                                                        \
  X(cuStreamSynchronize, (CUstream s))                                                       \
  X(cuLaunchKernel, (CUfunction fn, unsigned gx, unsigned gy, unsigned gz, unsigned bx,      \
                     unsigned by, unsigned bz, unsigned smem, CUstream s, void **params,     \
                     void **extra))                                                          \
  X(cuStreamBeginCapture_v2, (CUstream s, int mode))                                         \
  X(cuStreamEndCapture, (CUstream s, CUgraph *g))                                            \
  X(cuGraphInstantiateWithFlags, (CUgraphExec *e, CUgraph g, unsigned long long flags))      \
  X(cuGraphLaunch, (CUgraphExec e, CUstream s))                                              \
  X(cuGraphExecDestroy, (CUgraphExec e))                                                     \
  X(cuGraphDestroy, (CUgraph g))                                                             \
  X(cuEventCreate, (CUevent *e, unsigned flags))                                             \
  X(cuEventRecord, (CUevent e, CUstream s))                                                  \
  X(cuEventSynchronize, (CUevent e))                                                         \
  X(cuEventElapsedTime, (float *ms, CUevent start, CUevent end))                             \
  X(cuEventDestroy_v2, (CUevent e))                                                          \
  X(cuGetErrorName, (CUresult r, const char **s))                                            \
  X(cuGetErrorString, (CUresult r, const char **s))                                          \
  X(cuMemGetInfo_v2, (size_t *free, size_t *total))                                         \
  X(cuStreamWaitEvent, (CUstream s, CUevent e, unsigned flags))                              \
  X(cuStreamQuery, (CUstream s))

#define FIELD(name, params) CUresult (*name) params;
// The driver, loaded once per process (a failed load is tried again next time).
static struct {
  bool loaded;
  int version;            // cuDriverGetVersion: 12040 is CUDA 12.4
  CU_ENTRY_POINTS(FIELD)
} drv;
#undef FIELD
static pthread_mutex_t drv_mu = PTHREAD_MUTEX_INITIALIZER;

// KilnArgs of templates/prelude.cuh, the one kernel parameter: device pointers.
typedef struct {
  CUdeviceptr w, a;
  CUdeviceptr p[KILN_ABI_CUDA_MAX_SLOTS];
} Args;
_Static_assert(sizeof(Args) == 8 * (2 + KILN_ABI_CUDA_MAX_SLOTS), "KilnArgs is pointers only");

// One step kind of the program, ready to launch.
typedef struct {
  Args *args;             // [nlaunches], built at open
  void **params;          // [nlaunches]: &args[i], cuLaunchKernel's parameter list
  CUgraphExec exec;       // the launches as a graph, captured after the first run
  bool ran;               // a run succeeded: the next one captures
  CUevent *ev;            // [2 * nlaunches] while profiling: around each launch
} Step;

struct KilnCuda {
  struct KilnCuda *wo;    // whose device weights: the owner's (itself for an owner)
  CUdevice dev;
  CUcontext ctx;          // the device's primary context, retained once per open
  CUstream stream;        // a view uses its owner's
  CUmodule mod;
  CUfunction *fn;         // [prog->nfunctions]
  const KilnCudaProgram *prog;
  CUdeviceptr w, a;       // weights block (weights_bytes + opt_bytes), arena
  bool up_w, down_w;      // owner: the host's weights are newer / the device's are
  bool graphs, sync_each;
  Step step[3];           // KILN_ABI_CUDA_FORWARD, _EVAL, _TRAIN
  int major, minor;
  char device[192];       // "CUDA device 0 (NVIDIA H200, compute capability 9.0)"
  // Data-parallel training (kiln_cuda_dist):
  KilnDist *dist;
  KilnNccl *nccl;
  CUstream comm;          // where the sums run
  CUevent *sync_ev;       // [train step's nsyncs]
};

static int rank_device = -1;  // kiln_cuda_rank_device

static const char *const step_name[3] = {"forward", "eval_step", "train_step"};

bool kiln_cuda_target(const KilnModelDesc *d) { return d->target && !strcmp(d->target, "cuda"); }

// "CUDA_ERROR_X 700 (its description)"
static void err_text(CUresult r, char *buf, size_t len) {
  const char *name = NULL, *desc = NULL;
  if (drv.cuGetErrorName(r, &name) != CUDA_SUCCESS || !name) name = "an unknown CUDA error";
  if (drv.cuGetErrorString(r, &desc) != CUDA_SUCCESS || !desc) desc = "no description";
  snprintf(buf, len, "%s %d (%s)", name, r, desc);
}

// "what: call failed: CUDA_ERROR_X 700 (its description)", after what the runtime
// was doing.
static int cu_fail(KilnStatus *st, CUresult r, const char *call, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int cu_fail(KilnStatus *st, CUresult r, const char *call, const char *fmt, ...) {
  char what[320], err[160];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(what, sizeof what, fmt, ap);
  va_end(ap);
  err_text(r, err, sizeof err);
  return kiln_rt_fail(st, "%s: %s failed: %s", what, call, err);
}

// Calls a driver entry point; a failure returns -1 from the caller with st filled.
#define CALL(st, fn, args, ...)                                       \
  do {                                                                \
    CUresult r_ = drv.fn args;                                        \
    if (r_ != CUDA_SUCCESS) return cu_fail(st, r_, #fn, __VA_ARGS__); \
  } while (0)

#define NEEDS "this program was compiled for NVIDIA GPUs (--target=cuda) and needs the CUDA driver"

static int load_driver(KilnStatus *st) {
  const char *path = getenv("KILN_CUDA_DRIVER");
  if (!path || !*path) path = "libcuda.so.1";
  void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (!h) return kiln_rt_fail(st, NEEDS ": %s", dlerror());
  const char *missing = NULL;
#define LOOKUP(name, params) \
  if (!missing && !(drv.name = (CUresult(*) params)dlsym(h, #name))) missing = #name;
  CU_ENTRY_POINTS(LOOKUP)
#undef LOOKUP
  if (missing) {
    dlclose(h);
    return kiln_rt_fail(st, NEEDS ", and %s lacks %s: the driver is too old (CUDA 12 or later "
                        "is needed)", path, missing);
  }
  CUresult r = drv.cuInit(0);
  if (r == CUDA_ERROR_NO_DEVICE) {
    char err[160];
    err_text(r, err, sizeof err);
    kiln_rt_fail(st, NEEDS ": no CUDA device found (cuInit: %s)", err);
    dlclose(h);
    return -1;
  }
  if (r == CUDA_SUCCESS) r = drv.cuDriverGetVersion(&drv.version);
  if (r != CUDA_SUCCESS) {
    cu_fail(st, r, "cuInit", NEEDS "; starting it (%s)", path);
    dlclose(h);
    return -1;
  }
  drv.loaded = true;  // the handle stays open: the process may make more contexts
  return 0;
}

static int driver(KilnStatus *st) {
  pthread_mutex_lock(&drv_mu);
  int rc = drv.loaded ? 0 : load_driver(st);
  pthread_mutex_unlock(&drv_mu);
  return rc;
}

//
// Images.
//
// "cubins for sm_80, sm_90 and PTX for compute_90"
static void arch_list(const KilnCudaImage *im, int n, char *buf, size_t len) {
  size_t at = 0;
  buf[0] = 0;
  for (int ptx = 0; ptx < 2; ptx++) {
    int k = 0;
    for (int i = 0; i < n && at < len; i++) {
      if ((im[i].arch < 0) != ptx) continue;
      const char *lead = k++ ? ", " : !ptx ? "cubins for " : at ? " and PTX for " : "PTX for ";
      at += (size_t)snprintf(buf + at, len - at, "%s%s%d", lead, ptx ? "compute_" : "sm_",
                             ptx ? -im[i].arch : im[i].arch);
    }
  }
  if (at == 0) snprintf(buf, len, "no GPU code");
}

// A cubin runs on its own architecture and the later minor versions of its major
// one; PTX is compiled by the driver for its version and any later GPU. The exact
// cubin is best, then the nearest older cubin of the same major, then PTX.
int kiln_cuda_pick_image(const KilnCudaImage *im, int n, int major, int minor, char *err,
                         size_t errlen) {
  int dev = major * 10 + minor, cubin = -1, ptx = -1;
  for (int i = 0; i < n; i++) {
    int a = im[i].arch;
    if (a == dev) return i;
    if (a > 0 && a / 10 == major && a % 10 <= minor && (cubin < 0 || a > im[cubin].arch)) cubin = i;
    if (a < 0 && -a <= dev && (ptx < 0 || a < im[ptx].arch)) ptx = i;
  }
  if (cubin >= 0) return cubin;
  if (ptx >= 0) return ptx;
  char have[256];
  arch_list(im, n, have, sizeof have);
  snprintf(err, errlen, "the GPU is compute capability %d.%d and the program holds %s, none of "
           "which runs on it; rebuild with --gpu-arch=sm_%d", major, minor, have, dev);
  return -1;
}

// The driver compiles PTX from text: it must end in a NUL, which the embedded
// bytes need not hold.
static int load_module(KilnCuda *cu, const KilnCudaImage *im, KilnStatus *st) {
  const void *data = im->data;
  char *copy = NULL;
  if (im->arch < 0 && (im->size == 0 || im->data[im->size - 1] != 0)) {
    if (!(copy = malloc((size_t)im->size + 1))) return kiln_rt_fail(st, "out of memory");
    memcpy(copy, im->data, (size_t)im->size);
    copy[im->size] = 0;
    data = copy;
  }
  CUresult r = drv.cuModuleLoadData(&cu->mod, data);
  free(copy);
  if (r != CUDA_SUCCESS)
    return cu_fail(st, r, "cuModuleLoadData", "loading the %s %s%d on %s (driver CUDA %d.%d)",
                   im->arch < 0 ? "PTX for" : "cubin for", im->arch < 0 ? "compute_" : "sm_",
                   im->arch < 0 ? -im->arch : im->arch, cu->device, drv.version / 1000,
                   drv.version % 1000 / 10);
  return 0;
}

//
// The program: checked against the descriptor and the device once, at open, so a
// step only launches.
//
static const char *kernel_where(const KilnModelDesc *d, const KilnCudaLaunch *l, char *buf,
                                size_t len) {
  if (l->info >= 0 && l->info < d->nkernel_info) {
    const KilnKernelInfo *k = &d->kernel_info[l->info];
    snprintf(buf, len, "kernel '%s' (%s%s%s)", k->name, k->ops, *k->loc ? ", " : "", k->loc);
  } else {
    snprintf(buf, len, "kernel %d", l->function);
  }
  return buf;
}

static int check_launch(KilnCtx *c, const KilnCudaLaunch *l, const char *step, int i,
                        KilnStatus *st) {
  const KilnModelDesc *d = c->d;
  const KilnCudaProgram *p = c->cuda->prog;
  char where[400];
  if (l->function < 0 || l->function >= p->nfunctions || l->info < -1 || l->info >= d->nkernel_info ||
      l->nslots < 0 || l->nslots > KILN_ABI_CUDA_MAX_SLOTS)
    return kiln_rt_fail(st, "model '%s': launch %d of %s names function %d, kernel %d and %d "
                        "slots, outside the program; rebuild it", d->name, i, step, l->function,
                        l->info, l->nslots);
  kernel_where(d, l, where, sizeof where);
  for (int s = 0; s < l->nslots; s++) {
    int64_t size = l->slots[s].block == KILN_ABI_BLOCK_WEIGHTS ? d->weights_bytes + d->opt_bytes
                                                               : d->arena_bytes;
    if ((l->slots[s].block != KILN_ABI_BLOCK_WEIGHTS && l->slots[s].block != KILN_ABI_BLOCK_ARENA) ||
        l->slots[s].offset < 0 || l->slots[s].offset > size)
      return kiln_rt_fail(st, "model '%s': %s, launch %d of %s: slot %d is outside its block; "
                          "rebuild it", d->name, where, i, step, s);
  }
  CUfunction fn = c->cuda->fn[l->function];
  int max_threads, max_smem, regs;
  CALL(st, cuFuncGetAttribute, (&max_threads, CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK, fn), "%s", where);
  CALL(st, cuFuncGetAttribute, (&max_smem, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, fn), "%s", where);
  CALL(st, cuFuncGetAttribute, (&regs, CU_FUNC_ATTRIBUTE_NUM_REGS, fn), "%s", where);
  uint64_t threads = (uint64_t)l->block[0] * l->block[1] * l->block[2];
  if (threads == 0 || (uint64_t)l->grid[0] * l->grid[1] * l->grid[2] == 0)
    return kiln_rt_fail(st, "model '%s': %s has an empty launch in %s; rebuild it", d->name, where, step);
  if (threads > (uint64_t)max_threads)
    return kiln_rt_fail(st, "model '%s': %s launches blocks of %llu threads in %s; on %s, at %d "
                        "registers per thread, it can have at most %d", d->name, where,
                        (unsigned long long)threads, step, c->cuda->device, regs, max_threads);
  if (l->smem > (uint32_t)max_smem)
    return kiln_rt_fail(st, "model '%s': %s needs %u bytes of dynamic shared memory in %s; %s "
                        "gives it at most %d", d->name, where, l->smem, step, c->cuda->device, max_smem);
  return 0;
}

static int check_range(KilnCtx *c, const KilnCudaRange *r, const char *what, const char *step,
                       KilnStatus *st) {
  if (r->offset < 0 || r->bytes < 0 || r->offset > c->d->arena_bytes - r->bytes)
    return kiln_rt_fail(st, "model '%s': an %s range of %s, [%lld, +%lld), is outside the arena of "
                        "%lld bytes; rebuild it", c->d->name, what, step, (long long)r->offset,
                        (long long)r->bytes, (long long)c->d->arena_bytes);
  return 0;
}

static int prepare_step(KilnCtx *c, int k, KilnStatus *st) {
  KilnCuda *cu = c->cuda;
  const KilnCudaStep *s = &cu->prog->steps[k];
  Step *x = &cu->step[k];
  if (s->nlaunches < 0 || s->nup < 0 || s->ndown < 0)
    return kiln_rt_fail(st, "model '%s': its %s has negative counts; rebuild it", c->d->name, step_name[k]);
  for (int i = 0; i < s->nup; i++) KILN_TRY(check_range(c, &s->up[i], "upload", step_name[k], st));
  for (int i = 0; i < s->ndown; i++) KILN_TRY(check_range(c, &s->down[i], "download", step_name[k], st));
  if (s->loss_offset >= 0 && s->loss_offset > c->d->arena_bytes - 4)
    return kiln_rt_fail(st, "model '%s': the loss of its %s is outside the arena; rebuild it",
                        c->d->name, step_name[k]);
  if (!s->nlaunches) return 0;
  x->args = calloc((size_t)s->nlaunches, sizeof *x->args);
  x->params = calloc((size_t)s->nlaunches, sizeof *x->params);
  if (!x->args || !x->params) return kiln_rt_fail(st, "out of memory");
  for (int i = 0; i < s->nlaunches; i++) {
    const KilnCudaLaunch *l = &s->launches[i];
    KILN_TRY(check_launch(c, l, step_name[k], i, st));
    Args *a = &x->args[i];
    a->w = cu->w;
    a->a = cu->a;
    for (int j = 0; j < l->nslots; j++)
      a->p[j] = (l->slots[j].block == KILN_ABI_BLOCK_WEIGHTS ? cu->w : cu->a) +
                (CUdeviceptr)l->slots[j].offset;
    x->params[i] = a;
  }
  return 0;
}

static int load_program(KilnCtx *c, KilnStatus *st) {
  KilnCuda *cu = c->cuda;
  const KilnCudaProgram *p = cu->prog;
  char err[400];
  int i = kiln_cuda_pick_image(p->images, p->nimages, cu->major, cu->minor, err, sizeof err);
  if (i < 0) return kiln_rt_fail(st, "model '%s' cannot run on %s: %s", c->d->name, cu->device, err);
  KILN_TRY(load_module(cu, &p->images[i], st));
  if (!(cu->fn = calloc((size_t)(p->nfunctions ? p->nfunctions : 1), sizeof *cu->fn)))
    return kiln_rt_fail(st, "out of memory");
  for (int f = 0; f < p->nfunctions; f++)
    CALL(st, cuModuleGetFunction, (&cu->fn[f], cu->mod, p->functions[f]),
         "model '%s': kernel function '%s'", c->d->name, p->functions[f]);
  for (int k = 0; k < 3; k++) KILN_TRY(prepare_step(c, k, st));
  return 0;
}

//
// Opening and closing.
//
static bool env_is(const char *name, const char *value) {
  const char *v = getenv(name);
  return v && !strcmp(v, value);
}

static int pick_device(KilnCuda *cu, KilnStatus *st) {
  int count = 0;
  CUresult r = drv.cuDeviceGetCount(&count);
  if (r != CUDA_SUCCESS) {
    char err[160];
    err_text(r, err, sizeof err);
    return kiln_rt_fail(st, NEEDS ": no CUDA device found (cuDeviceGetCount: %s)", err);
  }
  if (count == 0)
    return kiln_rt_fail(st, NEEDS ": no CUDA device found (cuDeviceGetCount: 0 devices)");
  const char *env = getenv("KILN_CUDA_DEVICE");
  int ordinal = 0;
  if (rank_device >= 0 && !(env && *env)) {
    if (rank_device >= count)
      return kiln_rt_fail(st, "this rank is process %d on its machine, which has %d CUDA device%s: "
                          "start one rank per GPU (each rank trains on a GPU of its own)",
                          rank_device + 1, count, count == 1 ? "" : "s");
    ordinal = rank_device;
  } else if (env && *env) {
    char *end;
    long v = strtol(env, &end, 10);
    if (*end || v < 0 || v >= count)
      return kiln_rt_fail(st, "KILN_CUDA_DEVICE=%s: this machine has CUDA devices 0 to %d", env, count - 1);
    ordinal = (int)v;
  }
  char name[96] = "";
  CALL(st, cuDeviceGet, (&cu->dev, ordinal), "CUDA device %d", ordinal);
  CALL(st, cuDeviceGetName, (name, (int)sizeof name - 1, cu->dev), "CUDA device %d", ordinal);
  CALL(st, cuDeviceGetAttribute, (&cu->major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, cu->dev),
       "CUDA device %d", ordinal);
  CALL(st, cuDeviceGetAttribute, (&cu->minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, cu->dev),
       "CUDA device %d", ordinal);
  name[sizeof name - 1] = 0;
  snprintf(cu->device, sizeof cu->device, "CUDA device %d (%s, compute capability %d.%d)", ordinal,
           name, cu->major, cu->minor);
  return 0;
}

static void human(int64_t b, char *buf, size_t len) {
  if (b >= (int64_t)1 << 30) snprintf(buf, len, "%.2f GiB", (double)b / (1 << 30));
  else if (b >= 1 << 20) snprintf(buf, len, "%.1f MiB", (double)b / (1 << 20));
  else snprintf(buf, len, "%lld bytes", (long long)b);
}

static int dev_alloc(KilnCuda *cu, CUdeviceptr *p, int64_t bytes, const char *what, KilnStatus *st) {
  size_t n = (size_t)(bytes > 0 ? bytes : 64);
  CUresult r = drv.cuMemAlloc_v2(p, n);
  if (r == CUDA_SUCCESS) return 0;
  size_t free_b = 0, total_b = 0;
  char need[32], fr[32] = "?", tot[32] = "?";
  human((int64_t)n, need, sizeof need);
  if (drv.cuMemGetInfo_v2(&free_b, &total_b) == CUDA_SUCCESS) {
    human((int64_t)free_b, fr, sizeof fr);
    human((int64_t)total_b, tot, sizeof tot);
  }
  return cu_fail(st, r, "cuMemAlloc_v2", "allocating %s for the %s on %s (%s free of %s)", need,
                 what, cu->device, fr, tot);
}

// The program is the descriptor's: its step functions hand the same one to
// kiln_rt_cuda_step.
static int probe_program(KilnCtx *c, KilnStatus *st) {
  KilnCuda *cu = c->cuda;
  cu->prog = c->d->cuda;
  if (!cu->prog)
    return kiln_rt_fail(st, "model '%s' is marked for CUDA but has no CUDA program; rebuild it",
                        c->d->name);
  return 0;
}

int kiln_cuda_open(KilnCtx *c, KilnStatus *st) {
  KILN_TRY(driver(st));
  KilnCuda *cu = calloc(1, sizeof *cu);
  if (!cu) return kiln_rt_fail(st, "out of memory");
  c->cuda = cu;
  KilnCuda *own = c->owner ? c->owner->cuda : NULL;
  if (c->owner && !own)
    return kiln_rt_fail(st, "model '%s' is built for CUDA, but the model it generates for is not",
                        c->d->name);
  cu->graphs = !env_is("KILN_CUDA_GRAPHS", "0");
  cu->sync_each = env_is("KILN_CUDA_SYNC", "1");
  if (own) {
    cu->dev = own->dev, cu->major = own->major, cu->minor = own->minor;
    memcpy(cu->device, own->device, sizeof cu->device);
  } else {
    KILN_TRY(pick_device(cu, st));
  }
  CALL(st, cuDevicePrimaryCtxRetain, (&cu->ctx, cu->dev), "%s", cu->device);
  CALL(st, cuCtxSetCurrent, (cu->ctx), "%s", cu->device);
  if (own) {
    cu->wo = own, cu->stream = own->stream, cu->w = own->w;
  } else {
    cu->wo = cu;
    CALL(st, cuStreamCreate, (&cu->stream, CU_STREAM_NON_BLOCKING), "%s", cu->device);
    KILN_TRY(dev_alloc(cu, &cu->w, c->d->weights_bytes + c->d->opt_bytes, "weights", st));
    cu->up_w = true;
  }
  KILN_TRY(dev_alloc(cu, &cu->a, c->d->arena_bytes, "activations", st));
  // The host arena starts zeroed (inputs past a short batch, decode state): so does this.
  CALL(st, cuMemsetD8Async, (cu->a, 0, (size_t)(c->d->arena_bytes > 0 ? c->d->arena_bytes : 64), cu->stream),
       "clearing the activations on %s", cu->device);
  CALL(st, cuStreamSynchronize, (cu->stream), "clearing the activations on %s", cu->device);
  KILN_TRY(probe_program(c, st));
  return load_program(c, st);
}

// Teardown goes on past failures: a context that failed must still free what it has.
void kiln_cuda_close(KilnCtx *c) {
  KilnCuda *cu = c->cuda;
  if (!cu) return;
  c->cuda = NULL;
  if (cu->ctx) {
    drv.cuCtxSetCurrent(cu->ctx);
    if (cu->stream) drv.cuStreamSynchronize(cu->stream);
  }
  if (cu->nccl) kiln_nccl_close(cu->nccl, c->fault.code != 0);
  for (int i = 0; cu->sync_ev && i < cu->prog->steps[KILN_ABI_CUDA_TRAIN].nsyncs; i++)
    if (cu->sync_ev[i]) drv.cuEventDestroy_v2(cu->sync_ev[i]);
  free(cu->sync_ev);
  if (cu->comm) drv.cuStreamDestroy_v2(cu->comm);
  for (int k = 0; k < 3; k++) {
    Step *x = &cu->step[k];
    if (x->exec) drv.cuGraphExecDestroy(x->exec);
    int n = cu->prog ? cu->prog->steps[k].nlaunches : 0;
    for (int i = 0; x->ev && i < 2 * n; i++)
      if (x->ev[i]) drv.cuEventDestroy_v2(x->ev[i]);
    free(x->ev);
    free(x->args);
    free(x->params);
  }
  free(cu->fn);
  if (cu->mod) drv.cuModuleUnload(cu->mod);
  if (cu->a) drv.cuMemFree_v2(cu->a);
  if (cu->wo == cu && cu->w) drv.cuMemFree_v2(cu->w);
  if (cu->wo == cu && cu->stream) drv.cuStreamDestroy_v2(cu->stream);
  if (cu->ctx) drv.cuDevicePrimaryCtxRelease_v2(cu->dev);
  free(cu);
}

//
// Weights and state between the host and the device.
//
void kiln_cuda_weights_changed(KilnCtx *c) {
  if (!c->cuda) return;
  c->cuda->wo->up_w = true;
  c->cuda->wo->down_w = false;
}

int kiln_cuda_weights_sync(KilnCtx *c, KilnStatus *st) {
  KilnCuda *cu = c->cuda;
  size_t n = (size_t)(c->d->weights_bytes + c->d->opt_bytes);
  if (!cu || !cu->wo->down_w || n == 0) return 0;
  CALL(st, cuCtxSetCurrent, (cu->ctx), "%s", cu->device);
  CALL(st, cuMemcpyDtoHAsync_v2, (c->weights, cu->wo->w, n, cu->stream),
       "copying the weights from %s", cu->device);
  CALL(st, cuStreamSynchronize, (cu->stream), "copying the weights from %s", cu->device);
  cu->wo->down_w = false;
  return 0;
}

int kiln_cuda_zero(KilnCtx *c, int64_t offset, int64_t bytes, KilnStatus *st) {
  KilnCuda *cu = c->cuda;
  CALL(st, cuCtxSetCurrent, (cu->ctx), "%s", cu->device);
  CALL(st, cuMemsetD8Async, (cu->a + (CUdeviceptr)offset, 0, (size_t)bytes, cu->stream),
       "clearing state on %s", cu->device);
  CALL(st, cuStreamSynchronize, (cu->stream), "clearing state on %s", cu->device);
  return 0;
}

const char *kiln_cuda_device(const KilnCtx *c) { return c->cuda ? c->cuda->device : NULL; }

//
// A step.
//
static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int launch(KilnCtx *c, int k, int i, bool timed, KilnStatus *st) {
  KilnCuda *cu = c->cuda;
  const KilnCudaLaunch *l = &cu->prog->steps[k].launches[i];
  Step *x = &cu->step[k];
  char where[400];
  if (timed) CALL(st, cuEventRecord, (x->ev[2 * i], cu->stream), "profiling");
  CUresult r = drv.cuLaunchKernel(cu->fn[l->function], l->grid[0], l->grid[1], l->grid[2],
                                  l->block[0], l->block[1], l->block[2], l->smem, cu->stream,
                                  &x->params[i], NULL);
  if (r == CUDA_SUCCESS && cu->sync_each) r = drv.cuStreamSynchronize(cu->stream);
  if (r != CUDA_SUCCESS)
    return cu_fail(st, r, cu->sync_each ? "cuLaunchKernel (then cuStreamSynchronize)" : "cuLaunchKernel",
                   "model '%s': %s, launch %d of %s on %s", c->d->name,
                   kernel_where(c->d, l, where, sizeof where), i, step_name[k], cu->device);
  if (timed) CALL(st, cuEventRecord, (x->ev[2 * i + 1], cu->stream), "profiling");
  return 0;
}

// Sync point j of the train step: gradient y->grad's average starts on the NCCL
// stream once the main stream gets here; grad -1: the main stream waits for all.
static int sync_point(KilnCtx *c, int j, KilnStatus *st) {
  KilnCuda *cu = c->cuda;
  const KilnCudaSync *y = &cu->prog->steps[KILN_ABI_CUDA_TRAIN].syncs[j];
  CUevent e = cu->sync_ev[j];
  if (y->grad < 0) {
    CALL(st, cuEventRecord, (e, cu->comm), "joining the gradient sums on %s", cu->device);
    CALL(st, cuStreamWaitEvent, (cu->stream, e, 0), "joining the gradient sums on %s", cu->device);
    return 0;
  }
  if (cu->dist->first[y->grad] != y->grad) return 0;  // its bytes are another gradient's
  const KilnGradDesc *g = &c->d->grads[y->grad];
  CALL(st, cuEventRecord, (e, cu->stream), "handing a gradient to NCCL on %s", cu->device);
  CALL(st, cuStreamWaitEvent, (cu->comm, e, 0), "handing a gradient to NCCL on %s", cu->device);
  return kiln_nccl_avg(cu->nccl, cu->a + (CUdeviceptr)g->offset, g->numel, cu->comm, st);
}

static int launch_all(KilnCtx *c, int k, bool timed, KilnStatus *st) {
  const KilnCudaStep *s = &c->cuda->prog->steps[k];
  int nsync = k == KILN_ABI_CUDA_TRAIN && c->cuda->nccl ? s->nsyncs : 0, j = 0;
  for (int i = 0; i <= s->nlaunches; i++) {
    for (; j < nsync && s->syncs[j].after == i; j++) KILN_TRY(sync_point(c, j, st));
    if (i < s->nlaunches) KILN_TRY(launch(c, k, i, timed, st));
  }
  return 0;
}

// The launches of step k as a graph: captured (not run) on the stream, then
// instantiated. Copies stay outside it: their host addresses are the caller's.
static int capture(KilnCtx *c, int k, KilnStatus *st) {
  KilnCuda *cu = c->cuda;
  CALL(st, cuStreamBeginCapture_v2, (cu->stream, CU_STREAM_CAPTURE_MODE_THREAD_LOCAL),
       "capturing the %s of model '%s' as a CUDA graph (KILN_CUDA_GRAPHS=0 turns graphs off)",
       step_name[k], c->d->name);
  int rc = launch_all(c, k, false, st);
  CUgraph g = NULL;
  CUresult r = drv.cuStreamEndCapture(cu->stream, &g);
  if (rc == 0 && r != CUDA_SUCCESS)
    rc = cu_fail(st, r, "cuStreamEndCapture", "capturing the %s of model '%s' as a CUDA graph "
                 "(KILN_CUDA_GRAPHS=0 turns graphs off)", step_name[k], c->d->name);
  if (rc == 0) {
    r = drv.cuGraphInstantiateWithFlags(&cu->step[k].exec, g, 0);
    if (r != CUDA_SUCCESS)
      rc = cu_fail(st, r, "cuGraphInstantiateWithFlags", "the %s of model '%s' as a CUDA graph "
                   "(KILN_CUDA_GRAPHS=0 turns graphs off)", step_name[k], c->d->name);
  }
  if (g) drv.cuGraphDestroy(g);
  return rc;
}

static int make_events(KilnCtx *c, int k, KilnStatus *st) {
  Step *x = &c->cuda->step[k];
  int n = 2 * c->cuda->prog->steps[k].nlaunches;
  if (x->ev) return 0;
  if (!(x->ev = calloc((size_t)n, sizeof *x->ev))) return kiln_rt_fail(st, "out of memory");
  for (int i = 0; i < n; i++) CALL(st, cuEventCreate, (&x->ev[i], CU_EVENT_DEFAULT), "profiling");
  return 0;
}

// The device's times of each launch, placed on the host's clock by aligning the
// last launch's end with the moment the step's synchronize returned (the copies
// after it are small next to the kernels).
static int report_times(KilnCtx *c, int k, int64_t t_end, KilnStatus *st) {
  const KilnCudaStep *s = &c->cuda->prog->steps[k];
  CUevent *ev = c->cuda->step[k].ev, last = ev[2 * s->nlaunches - 1];
  for (int i = 0; i < s->nlaunches; i++) {
    float before = 0, dur = 0;
    CALL(st, cuEventElapsedTime, (&before, ev[2 * i], last), "profiling");
    CALL(st, cuEventElapsedTime, (&dur, ev[2 * i], ev[2 * i + 1]), "profiling");
    int64_t t0 = t_end - (int64_t)((double)before * 1e6);
    kiln_prof_kernel(c, s->launches[i].info, 1, t0, t0 + (int64_t)((double)dur * 1e6));
  }
  return 0;
}

// The end of a train step whose sums wait for the other ranks: a rank that died or
// hangs would leave NCCL's kernels waiting forever, so this polls, with the ranks'
// deadline (--comm-timeout) and the communicator's own errors.
static int wait_ranks(KilnCtx *c, KilnStatus *st) {
  KilnCuda *cu = c->cuda;
  double end = kiln_now() + cu->dist->timeout;
  for (unsigned spin = 0;; spin++) {
    CUresult r = drv.cuStreamQuery(cu->stream);
    if (r == CUDA_SUCCESS) return kiln_nccl_check(cu->nccl, st);
    if (r != CUDA_ERROR_NOT_READY)
      return cu_fail(st, r, "cuStreamQuery", "model '%s': running its train_step on %s (an error "
                     "of a kernel shows here; KILN_CUDA_SYNC=1 names the kernel)", c->d->name,
                     cu->device);
    KILN_TRY(kiln_nccl_check(cu->nccl, st));
    if (kiln_now() > end)
      return kiln_rt_fail(st, "the gradient sums on %s: no answer from the other ranks for %.0f s "
                          "(one has died or hangs; --comm-timeout sets the limit)", cu->device,
                          cu->dist->timeout);
    if (spin > 100) {
      struct timespec ts = {0, 50000};
      nanosleep(&ts, NULL);
    }
  }
}

static int run(KilnCtx *c, const KilnCudaProgram *prog, int k, KilnStatus *st) {
  KilnCuda *cu = c->cuda;
  const KilnModelDesc *d = c->d;
  if (prog != cu->prog || k < 0 || k > 2)
    return kiln_rt_fail(st, "model '%s': a step handed the runtime another CUDA program than its "
                        "forward did; rebuild it", d->name);
  const KilnCudaStep *s = &prog->steps[k];
  Step *x = &cu->step[k];
  // A step that exists copies its header at least; one without kernels (a forward
  // pass of views only) still copies.
  if (!s->nlaunches && !s->nup)
    return kiln_rt_fail(st, "model '%s' has no %s on the GPU", d->name, step_name[k]);
  bool timed = c->prof != NULL;
  bool graph = cu->graphs && !timed && !cu->sync_each && s->nlaunches > 0;
  KilnStepHeader *h = (KilnStepHeader *)c->arena;
  if (c->header) h->training = s->training;
  if (timed) KILN_TRY(make_events(c, k, st));
  CALL(st, cuCtxSetCurrent, (cu->ctx), "%s", cu->device);
  if (cu->wo->up_w && d->weights_bytes + d->opt_bytes > 0)
    CALL(st, cuMemcpyHtoDAsync_v2, (cu->w, c->weights, (size_t)(d->weights_bytes + d->opt_bytes), cu->stream),
         "copying the weights to %s", cu->device);
  cu->wo->up_w = false;
  for (int i = 0; i < s->nup; i++)
    if (s->up[i].bytes > 0)
      CALL(st, cuMemcpyHtoDAsync_v2, (cu->a + (CUdeviceptr)s->up[i].offset, c->arena + s->up[i].offset,
                                      (size_t)s->up[i].bytes, cu->stream),
           "copying the inputs of %s to %s", step_name[k], cu->device);
  if (graph && !x->exec && x->ran) KILN_TRY(capture(c, k, st));
  if (graph && x->exec)
    CALL(st, cuGraphLaunch, (x->exec, cu->stream), "model '%s': the %s's CUDA graph on %s "
         "(KILN_CUDA_GRAPHS=0 turns graphs off)", d->name, step_name[k], cu->device);
  else
    KILN_TRY(launch_all(c, k, timed, st));
  for (int i = 0; i < s->ndown; i++)
    if (s->down[i].bytes > 0)
      CALL(st, cuMemcpyDtoHAsync_v2, (c->arena + s->down[i].offset, cu->a + (CUdeviceptr)s->down[i].offset,
                                      (size_t)s->down[i].bytes, cu->stream),
           "copying the results of %s from %s", step_name[k], cu->device);
  if (s->loss_offset >= 0 && c->header)
    CALL(st, cuMemcpyDtoHAsync_v2, (&h->loss, cu->a + (CUdeviceptr)s->loss_offset, 4, cu->stream),
         "copying the loss from %s", cu->device);
  if (cu->nccl && k == KILN_ABI_CUDA_TRAIN) KILN_TRY(wait_ranks(c, st));
  else
    CALL(st, cuStreamSynchronize, (cu->stream), "model '%s': running its %s on %s (an error of a "
         "kernel shows here; KILN_CUDA_SYNC=1 names the kernel)", d->name, step_name[k], cu->device);
  if (k == KILN_ABI_CUDA_TRAIN) cu->wo->down_w = true;
  if (timed) KILN_TRY(report_times(c, k, now_ns(), st));
  x->ran = true;
  return 0;
}

void kiln_rt_cuda_step(void *rt, const KilnCudaProgram *program, int32_t step) {
  KilnCtx *c = rt;
  if (!c->cuda) {  // a CUDA step on a context opened for the CPU: a descriptor that lies
    if (!c->fault.code)
      kiln_rt_fail(&c->fault, "model '%s' runs CUDA steps but its descriptor's target is '%s'; "
                   "rebuild it", c->d->name, c->d->target ? c->d->target : "(none)");
    return;
  }
  if (program != c->cuda->prog) {  // a step of another model than the context's
    if (!c->fault.code)
      kiln_rt_fail(&c->fault, "model '%s': a CUDA step with another model's program", c->d->name);
    return;
  }
  if (c->fault.code) return;
  run(c, program, step, &c->fault);
}

//
// Data-parallel training.
//
void kiln_cuda_rank_device(int local_rank) { rank_device = local_rank; }

int kiln_cuda_dist(KilnCtx *c, KilnDist *d, KilnStatus *st) {
  KilnCuda *cu = c->cuda;
  const KilnCudaStep *s = &cu->prog->steps[KILN_ABI_CUDA_TRAIN];
  if (!s->nlaunches || !s->nsyncs || s->syncs[s->nsyncs - 1].grad != -1)
    return kiln_rt_fail(st, "model '%s' has no train step that hands its gradients to the ranks; "
                        "rebuild it with this kiln", c->d->name);
  cu->dist = d;
  CALL(st, cuCtxSetCurrent, (cu->ctx), "%s", cu->device);
  CALL(st, cuStreamCreate, (&cu->comm, CU_STREAM_NON_BLOCKING), "%s", cu->device);
  if (!(cu->sync_ev = calloc((size_t)s->nsyncs, sizeof *cu->sync_ev)))
    return kiln_rt_fail(st, "out of memory");
  for (int j = 0; j < s->nsyncs; j++)
    CALL(st, cuEventCreate, (&cu->sync_ev[j], CU_EVENT_DISABLE_TIMING), "%s", cu->device);
  return kiln_nccl_open(d, cu->device, &cu->nccl, st);
}
