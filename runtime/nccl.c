// NCCL for data-parallel training on GPUs: one process per GPU, the gradient
// averages taken on the device (cuda.c enqueues them on its own stream as the
// backward pass finishes each gradient). The library is loaded with dlopen
// (libnccl.so.2, or $KILN_NCCL) when a CUDA program trains on several ranks, so
// nothing links against it and one-GPU runs never need it. The communicator is
// bootstrapped over the ranks' MPI: rank 0 makes the unique id, MPI broadcasts it.
//
// These entry points, and no others, are looked up:
//
//   ncclGetVersion ncclGetUniqueId ncclCommInitRank ncclAllReduce
//   ncclCommGetAsyncError ncclCommDestroy ncclCommAbort ncclGetErrorString
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/runtime.h"

// nccl.h's types (that header is not needed to build).
typedef int ncclResult_t;
typedef struct ncclComm *ncclComm_t;
typedef struct {
  char internal[128];  // NCCL_UNIQUE_ID_BYTES
} ncclUniqueId;
enum { ncclSuccess = 0, ncclInProgress = 7, ncclAvg = 4, ncclFloat32 = 7 };
// ncclAvg came with NCCL 2.10; versions are MAJOR * 10000 + MINOR * 100 + PATCH.
#define NEED_VERSION 21000

#define NCCL_ENTRY_POINTS(X)                                                                \
  X(ncclGetVersion, ncclResult_t, (int *version))                                           \
  X(ncclGetUniqueId, ncclResult_t, (ncclUniqueId * id))                                     \
  X(ncclCommInitRank, ncclResult_t, (ncclComm_t * comm, int nranks, ncclUniqueId id, int rank)) \
  X(ncclAllReduce, ncclResult_t, (const void *send, void *recv, size_t count, int type, int op, \
                                  ncclComm_t comm, void *stream))                          \
  X(ncclCommGetAsyncError, ncclResult_t, (ncclComm_t comm, ncclResult_t * err))            \
  X(ncclCommDestroy, ncclResult_t, (ncclComm_t comm))                                       \
  X(ncclCommAbort, ncclResult_t, (ncclComm_t comm))                                         \
  X(ncclGetErrorString, const char *, (ncclResult_t r))

#define FIELD(name, ret, params) ret(*name) params;
static struct {
  void *dl;
  int version;
  NCCL_ENTRY_POINTS(FIELD)
} lib;
#undef FIELD

struct KilnNccl {
  ncclComm_t comm;
  int rank, size;
};

static int nccl_fail(KilnStatus *st, ncclResult_t r, const char *call, const char *what) {
  const char *s = lib.ncclGetErrorString ? lib.ncclGetErrorString(r) : NULL;
  return kiln_rt_fail(st, "%s failed: %s (NCCL error %d) %s", call, s ? s : "unknown error", r, what);
}

static int load(KilnStatus *st) {
  if (lib.dl) return 0;
  const char *path = getenv("KILN_NCCL");
  if (!path || !*path) path = "libnccl.so.2";
  void *dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (!dl)
    return kiln_rt_fail(st, "training a CUDA program on several ranks needs NCCL (libnccl.so.2, "
                        "from the CUDA toolkit or the nccl packages; KILN_NCCL names another "
                        "path): %s", dlerror());
#define LOOK(name, ret, params)                                                              \
  if (!(*(void **)&lib.name = dlsym(dl, #name))) {                                           \
    dlclose(dl);                                                                             \
    memset(&lib, 0, sizeof lib);                                                             \
    return kiln_rt_fail(st, "%s has no %s: it is not NCCL 2", path, #name);                 \
  }
  NCCL_ENTRY_POINTS(LOOK)
#undef LOOK
  lib.dl = dl;
  ncclResult_t r = lib.ncclGetVersion(&lib.version);
  if (r != ncclSuccess) return nccl_fail(st, r, "ncclGetVersion", path);
  if (lib.version < NEED_VERSION)
    return kiln_rt_fail(st, "%s is NCCL %d.%d.%d; averaging gradients needs NCCL 2.10 or newer",
                        path, lib.version / 10000, lib.version / 100 % 100, lib.version % 100);
  return 0;
}

int kiln_nccl_open(KilnDist *d, const char *device, KilnNccl **out, KilnStatus *st) {
  *out = NULL;
  KILN_TRY(load(st));
  KilnNccl *n = calloc(1, sizeof *n);
  if (!n) return kiln_rt_fail(st, "out of memory");
  *out = n;
  n->rank = d->rank, n->size = d->size;
  ncclUniqueId id;
  memset(&id, 0, sizeof id);
  if (d->rank == 0) {
    ncclResult_t r = lib.ncclGetUniqueId(&id);
    if (r != ncclSuccess) return nccl_fail(st, r, "ncclGetUniqueId", device);
  }
  KILN_TRY(d->ops->bcast(&id, (int)sizeof id, d->timeout, st));
  ncclResult_t r = lib.ncclCommInitRank(&n->comm, d->size, id, d->rank);
  if (r != ncclSuccess) {
    n->comm = NULL;
    char what[320];
    snprintf(what, sizeof what, "joining %d ranks on %s", d->size, device);
    return nccl_fail(st, r, "ncclCommInitRank", what);
  }
  return 0;
}

int kiln_nccl_avg(KilnNccl *n, uint64_t buf, int64_t count, void *stream, KilnStatus *st) {
  void *p = (void *)(uintptr_t)buf;
  ncclResult_t r = lib.ncclAllReduce(p, p, (size_t)count, ncclFloat32, ncclAvg, n->comm, stream);
  if (r != ncclSuccess && r != ncclInProgress)
    return nccl_fail(st, r, "ncclAllReduce", "(averaging a gradient over the ranks)");
  return 0;
}

int kiln_nccl_check(KilnNccl *n, KilnStatus *st) {
  ncclResult_t e = ncclSuccess;
  ncclResult_t r = lib.ncclCommGetAsyncError(n->comm, &e);
  if (r != ncclSuccess) return nccl_fail(st, r, "ncclCommGetAsyncError", "");
  if (e != ncclSuccess && e != ncclInProgress)
    return nccl_fail(st, e, "ncclAllReduce", "(reported later, by the communicator; another "
                     "rank has probably stopped)");
  return 0;
}

void kiln_nccl_close(KilnNccl *n, bool abort) {
  if (!n) return;
  if (n->comm) (abort ? lib.ncclCommAbort : lib.ncclCommDestroy)(n->comm);
  free(n);
}
