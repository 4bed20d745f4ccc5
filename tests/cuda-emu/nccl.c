// A stand-in NCCL (libnccl.so.2) for testing data-parallel training of CUDA
// programs under the emulated driver. The ranks are MPI processes and the
// emulator's device memory is host memory, so an all-reduce is an MPI_Allreduce,
// enqueued on the caller's stream with cuLaunchHostFunc: it runs in stream order,
// and a stream capture records it into the CUDA graph as it records NCCL's
// kernels. What NCCL itself refuses, this refuses too, with NCCL's codes:
//
// - ranks that pass different unique ids, or a rank or size MPI does not have;
// - two ranks of one machine on the same device ("Duplicate GPU detected");
// - a type other than float32 or an operation other than sum and average (the
//   only ones runtime/nccl.c uses), a stale communicator.
//
// Environment: KILN_FAKE_NCCL_VERSION (ncclGetVersion's answer, 22809);
// KILN_FAKE_NCCL_ERROR_RANK=r: rank r's communicator fails its first all-reduce
// and reports ncclRemoteError from ncclCommGetAsyncError, as NCCL does when a peer
// is gone. The driver is $KILN_CUDA_DRIVER (the emulator), as the runtime loads it.
#define _GNU_SOURCE
#include <cuda.h>
#include <dlfcn.h>
#include <limits.h>
#include <mpi.h>
#include <nccl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAGIC 0x6e63636c

typedef struct Job {
  struct Job *next;
  struct ncclComm *comm;
  const void *send;
  void *recv;
  size_t count;
  ncclRedOp_t op;
} Job;

struct ncclComm {
  int magic;
  int rank, size;
  ncclResult_t async;   // ncclCommGetAsyncError's answer
  int fail_next;        // KILN_FAKE_NCCL_ERROR_RANK
  Job *jobs;            // kept while a captured graph may replay them
};

static CUresult (*launch_host)(CUstream, CUhostFn, void *);
static CUresult (*ctx_device)(CUdevice *);

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("fake NCCL: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
}

ncclResult_t ncclGetVersion(int *version) {
  if (!version) return ncclInvalidArgument;
  const char *v = getenv("KILN_FAKE_NCCL_VERSION");
  *version = v && *v ? atoi(v) : 22809;
  return ncclSuccess;
}

ncclResult_t ncclGetUniqueId(ncclUniqueId *id) {
  if (!id) return ncclInvalidArgument;
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  memset(id, 0, sizeof *id);
  snprintf(id->internal, sizeof id->internal, "fake-nccl %d %ld.%09ld", (int)getpid(),
           (long)ts.tv_sec, ts.tv_nsec);
  return ncclSuccess;
}

static int load_driver(void) {
  if (launch_host) return 0;
  const char *path = getenv("KILN_CUDA_DRIVER");
  if (!path || !*path) path = "libcuda.so.1";
  void *dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (!dl) return say("%s", dlerror()), -1;
  *(void **)&launch_host = dlsym(dl, "cuLaunchHostFunc");
  *(void **)&ctx_device = dlsym(dl, "cuCtxGetDevice");
  if (!launch_host || !ctx_device) return say("%s: no cuLaunchHostFunc or cuCtxGetDevice", path), -1;
  return 0;
}

static unsigned long long hash(const ncclUniqueId *id) {
  unsigned long long h = 0xcbf29ce484222325ull;
  for (size_t i = 0; i < sizeof id->internal; i++) h = (h ^ (unsigned char)id->internal[i]) * 0x100000001b3ull;
  return h >> 1;  // fits a signed long long for MPI_MIN and MPI_MAX
}

ncclResult_t ncclCommInitRank(ncclComm_t *out, int nranks, ncclUniqueId id, int rank) {
  int mpi_on = 0, mrank, msize;
  if (!out) return ncclInvalidArgument;
  *out = NULL;
  MPI_Initialized(&mpi_on);
  if (!mpi_on) return say("MPI is not initialised"), ncclInvalidUsage;
  MPI_Comm_rank(MPI_COMM_WORLD, &mrank);
  MPI_Comm_size(MPI_COMM_WORLD, &msize);
  if (nranks != msize || rank != mrank) {
    say("rank %d of %d, but MPI has rank %d of %d", rank, nranks, mrank, msize);
    return ncclInvalidArgument;
  }
  if (load_driver()) return ncclUnhandledCudaError;
  CUdevice dev;
  if (ctx_device(&dev) != CUDA_SUCCESS) return say("no current CUDA context"), ncclUnhandledCudaError;
  // Every rank must hold rank 0's id; the ranks of a machine need devices of their own.
  long long h[2] = {(long long)hash(&id), -(long long)hash(&id)};
  MPI_Allreduce(MPI_IN_PLACE, h, 2, MPI_LONG_LONG, MPI_MAX, MPI_COMM_WORLD);
  if (h[0] != -h[1]) return say("the ranks passed different unique ids"), ncclInvalidArgument;
  MPI_Comm node;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
  int nnode, mine = (int)dev;
  MPI_Comm_size(node, &nnode);
  int *devs = calloc((size_t)nnode, sizeof *devs);
  MPI_Allgather(&mine, 1, MPI_INT, devs, 1, MPI_INT, node);
  MPI_Comm_free(&node);
  int dup = 0;
  for (int i = 0; i < nnode; i++)
    for (int j = 0; j < i; j++) dup |= devs[i] == devs[j];
  free(devs);
  if (dup) return say("Duplicate GPU detected : rank %d on CUDA device %d", rank, mine), ncclInvalidUsage;
  struct ncclComm *c = calloc(1, sizeof *c);
  if (!c) return ncclSystemError;
  const char *bad = getenv("KILN_FAKE_NCCL_ERROR_RANK");
  *c = (struct ncclComm){.magic = MAGIC, .rank = rank, .size = nranks,
                         .fail_next = bad && *bad && atoi(bad) == rank};
  *out = c;
  return ncclSuccess;
}

// Runs when the stream gets here (or a graph that captured it replays it).
static void run(void *arg) {
  Job *j = arg;
  struct ncclComm *c = j->comm;
  if (c->fail_next) {
    c->fail_next = 0;
    c->async = ncclRemoteError;
    return;
  }
  if (c->async != ncclSuccess) return;
  float *r = j->recv;
  const float *s = j->send;
  for (size_t at = 0; at < j->count; at += INT_MAX) {
    int n = (int)(j->count - at < INT_MAX ? j->count - at : INT_MAX);
    if (MPI_Allreduce(s == r ? MPI_IN_PLACE : s + at, r + at, n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD) !=
        MPI_SUCCESS) {
      c->async = ncclSystemError;
      return;
    }
  }
  if (j->op == ncclAvg)
    for (size_t i = 0; i < j->count; i++) r[i] *= 1.0f / (float)c->size;
}

ncclResult_t ncclAllReduce(const void *send, void *recv, size_t count, ncclDataType_t type,
                           ncclRedOp_t op, ncclComm_t c, cudaStream_t stream) {
  if (!c || c->magic != MAGIC) return ncclInvalidArgument;
  if (type != ncclFloat32 || (op != ncclSum && op != ncclAvg)) return ncclInvalidArgument;
  if (count && (!send || !recv)) return ncclInvalidArgument;
  Job *j = calloc(1, sizeof *j);
  if (!j) return ncclSystemError;
  *j = (Job){c->jobs, c, send, recv, count, op};
  c->jobs = j;
  return launch_host((CUstream)stream, run, j) == CUDA_SUCCESS ? ncclSuccess : ncclUnhandledCudaError;
}

ncclResult_t ncclCommGetAsyncError(ncclComm_t c, ncclResult_t *err) {
  if (!c || c->magic != MAGIC || !err) return ncclInvalidArgument;
  *err = c->async;
  return ncclSuccess;
}

static ncclResult_t done(ncclComm_t c) {
  if (!c || c->magic != MAGIC) return ncclInvalidArgument;
  c->magic = 0;
  for (Job *j = c->jobs, *next; j; j = next) next = j->next, free(j);
  free(c);
  return ncclSuccess;
}

ncclResult_t ncclCommDestroy(ncclComm_t c) { return done(c); }
ncclResult_t ncclCommAbort(ncclComm_t c) { return done(c); }

const char *ncclGetErrorString(ncclResult_t r) {
  switch ((int)r) {
  case ncclSuccess: return "no error";
  case ncclUnhandledCudaError: return "unhandled cuda error (run with NCCL_DEBUG=INFO for details)";
  case ncclSystemError: return "unhandled system error (run with NCCL_DEBUG=INFO for details)";
  case ncclInternalError: return "internal error - please report this issue to the NCCL developers";
  case ncclInvalidArgument: return "invalid argument (run with NCCL_DEBUG=WARN for details)";
  case ncclInvalidUsage: return "invalid usage (run with NCCL_DEBUG=WARN for details)";
  case ncclRemoteError: return "remote process exited or there was a network error";
  case ncclInProgress: return "NCCL operation in progress";
  default: return "unknown result code";
  }
}
