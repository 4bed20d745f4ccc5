// A CUDA driver that runs on the host, so the CUDA target can be tested where
// there is no GPU. It is built as libcuda.so.1 and implements the driver entry
// points runtime/cuda.c uses, with the real driver's error codes:
//
// - memory is host memory (cuMemAlloc is an aligned malloc, poisoned with NaN
//   bytes as device memory is not zeroed); streams run synchronously;
// - cuModuleLoadData checks the image is a cubin the device can run or PTX it can
//   JIT, the way the real driver picks; the code it then runs is the same .cu
//   compiled for the host with emu.h (env KILN_CUDA_EMU_KERNELS names that shared
//   object), looked up by name with dlsym;
// - cuLaunchKernel runs the grid one block after another. Within a block every
//   CUDA thread is a coroutine, so __syncthreads, warp shuffles and warp gathers
//   (kiln_emu_warp_gather, which emu.h's tensor-core mma is built on) can suspend
//   a thread until the others arrive; a barrier that can never complete (some
//   threads returned or wait elsewhere) aborts with the kernel's name;
// - stream capture records the launches into a graph that cuGraphLaunch replays.
//   A stream that waits on an event recorded in a capture joins it (a fork), and
//   must be joined back (the capturing stream waits on an event recorded after its
//   last work) before the capture ends, else CUDA_ERROR_STREAM_CAPTURE_UNJOINED, as
//   on a GPU. Nodes replay in the order they were captured, one valid order of
//   the graph's dependencies;
// - cuLaunchHostFunc runs (or captures) a host function in stream order; it may not
//   call the driver (CUDA_ERROR_NOT_PERMITTED), as on a GPU;
// - events read the host's monotonic clock.
//
// Environment: KILN_CUDA_EMU_CC (compute capability, "90"), KILN_CUDA_EMU_DEVICES
// (1; 0: no device; up to 8, sharing the host's memory), KILN_CUDA_EMU_MEM_MIB
// (device memory), KILN_CUDA_EMU_DRIVER_VERSION ("13000"), KILN_CUDA_EMU_STACK_KIB
// (per CUDA thread, 64), KILN_CUDA_EMU_POISON=0 (zeroed allocations),
// KILN_CUDA_EMU_VERBOSE=1 (the images loaded, on stderr), KILN_CUDA_EMU_ORDER=reverse (blocks, and threads within a block, start last
// first: a kernel that passes both ways does not lean on the order a GPU does not
// promise).
#define _GNU_SOURCE
#define __CUDA_API_VERSION_INTERNAL 1  // the exported names, not the header's aliases
#include <cuda.h>

#include <dlfcn.h>
#include <elf.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>

#include "include/kiln/abi.h"

#ifndef EM_CUDA
#define EM_CUDA 190
#endif

//
// Errors: the real driver's names and strings.
//
static const struct {
  CUresult code;
  const char *name, *text;
} errors[] = {
#define E(c, s) {c, #c, s}
  E(CUDA_SUCCESS, "no error"),
  E(CUDA_ERROR_INVALID_VALUE, "invalid argument"),
  E(CUDA_ERROR_OUT_OF_MEMORY, "out of memory"),
  E(CUDA_ERROR_NOT_INITIALIZED, "initialization error"),
  E(CUDA_ERROR_DEINITIALIZED, "driver shutting down"),
  E(CUDA_ERROR_NO_DEVICE, "no CUDA-capable device is detected"),
  E(CUDA_ERROR_INVALID_DEVICE, "invalid device ordinal"),
  E(CUDA_ERROR_INVALID_IMAGE, "device kernel image is invalid"),
  E(CUDA_ERROR_INVALID_CONTEXT, "invalid device context"),
  E(CUDA_ERROR_NO_BINARY_FOR_GPU, "no kernel image is available for execution on the device"),
  E(CUDA_ERROR_INVALID_PTX, "a PTX JIT compilation failed"),
  E(CUDA_ERROR_UNSUPPORTED_PTX_VERSION, "the provided PTX was compiled with an unsupported toolchain."),
  E(CUDA_ERROR_INVALID_HANDLE, "invalid resource handle"),
  E(CUDA_ERROR_NOT_FOUND, "named symbol not found"),
  E(CUDA_ERROR_NOT_READY, "device not ready"),
  E(CUDA_ERROR_ILLEGAL_ADDRESS, "an illegal memory access was encountered"),
  E(CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES, "too many resources requested for launch"),
  E(CUDA_ERROR_LAUNCH_FAILED, "unspecified launch failure"),
  E(CUDA_ERROR_NOT_SUPPORTED, "operation not supported"),
  E(CUDA_ERROR_ILLEGAL_STATE, "the operation cannot be performed in the present state"),
  E(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED, "operation not permitted when stream is capturing"),
  E(CUDA_ERROR_STREAM_CAPTURE_INVALIDATED, "operation failed due to a previous error during capture"),
  E(CUDA_ERROR_STREAM_CAPTURE_IMPLICIT, "operation would make the legacy stream depend on a capturing blocking stream"),
  E(CUDA_ERROR_CAPTURED_EVENT, "operation not permitted on an event last recorded in a capturing stream"),
  E(CUDA_ERROR_STREAM_CAPTURE_UNMATCHED, "the capture was not initiated in this stream"),
  E(CUDA_ERROR_STREAM_CAPTURE_UNJOINED, "the capture sequence contains a fork that was not joined to the primary stream"),
  E(CUDA_ERROR_STREAM_CAPTURE_ISOLATION, "a dependency would have been created which crosses the capture sequence boundary"),
  E(CUDA_ERROR_NOT_PERMITTED, "operation not permitted"),
  E(CUDA_ERROR_UNKNOWN, "unknown error"),
#undef E
};

CUresult CUDAAPI cuGetErrorName(CUresult error, const char **pStr) {
  for (size_t i = 0; i < sizeof errors / sizeof *errors; i++)
    if (errors[i].code == error) return *pStr = errors[i].name, CUDA_SUCCESS;
  *pStr = NULL;
  return CUDA_ERROR_INVALID_VALUE;
}

CUresult CUDAAPI cuGetErrorString(CUresult error, const char **pStr) {
  for (size_t i = 0; i < sizeof errors / sizeof *errors; i++)
    if (errors[i].code == error) return *pStr = errors[i].text, CUDA_SUCCESS;
  *pStr = NULL;
  return CUDA_ERROR_INVALID_VALUE;
}

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("kiln-cuda-emu: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  abort();
}

//
// Handles. Each carries a magic number, so a stale or foreign handle is refused
// rather than followed.
//
enum { MAGIC_MODULE = 0x6d6f64, MAGIC_FUNC, MAGIC_STREAM, MAGIC_EVENT, MAGIC_GRAPH, MAGIC_EXEC };

struct CUctx_st {
  int refs;
  CUdevice dev;
};

struct CUmod_st {
  int magic;
  void *dl;              // the host build of the kernels
  unsigned char *image;  // a copy, for the names it defines
  size_t size;
  int ptx;
  int arch;              // the cubin's sm, or the PTX's target
  struct CUfunc_st *funcs;  // handed out by cuModuleGetFunction; freed with the module
};

typedef struct {
  void *p[2 + KILN_ABI_CUDA_MAX_SLOTS];  // KilnArgs: w, a, p[] (templates/prelude.cuh)
} EmuArgs;

struct CUfunc_st {
  int magic;
  struct CUmod_st *mod;
  char name[128];
  void (*fn)(EmuArgs);
  struct CUfunc_st *next;  // the module's list
};

enum { NODE_LAUNCH, NODE_HTOD, NODE_DTOH, NODE_MEMSET, NODE_HOST };
typedef struct {
  int kind;
  struct CUfunc_st *f;
  unsigned grid[3], block[3];
  EmuArgs args;
  void *dst;
  const void *src;
  size_t bytes;
  unsigned char byte;
  CUhostFn host;          // NODE_HOST
  void *data;
} Node;

#define MAX_JOINED 8
struct CUgraph_st {
  int magic;
  Node *nodes;
  int n, cap;
  struct CUstream_st *joined[MAX_JOINED];  // while capturing: the streams forked into it
  int njoined;
};

struct CUgraphExec_st {
  int magic;
  Node *nodes;
  int n;
};

struct CUstream_st {
  int magic;
  unsigned flags;
  CUstreamCaptureMode mode;
  struct CUgraph_st *capture;  // while capturing (its origin's graph, for a fork)
  struct CUstream_st *origin;  // a fork: the stream that began the capture
  int invalidated;             // origin: an operation broke the capture
  int pending;                 // a fork: work not yet joined back to the origin
  unsigned long seq;           // work submitted so far
};

struct CUevent_st {
  int magic;
  unsigned flags;
  int recorded, captured;
  struct timespec t;
  struct CUstream_st *src;     // captured: where, and after how much of its work
  unsigned long src_seq;
};

//
// Device state. One lock serialises every call: kernels run on the calling thread.
//
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static int initialized, ndevices, cc, driver_version, verbose, poison = 1, reverse;
static size_t total_mem, used_mem, stack_bytes = 64 << 10;
#define MAX_DEVICES 8
static struct CUctx_st primary[MAX_DEVICES];  // the devices share the host's memory
static __thread CUcontext current;
static int nstrict;            // streams capturing, not in relaxed mode
static int nblocking;          // streams capturing, blocking (not CU_STREAM_NON_BLOCKING)

typedef struct {
  char *base;
  size_t size;
} Alloc;
static Alloc *allocs;
static int nallocs, capallocs;

static __thread int in_host_fn;  // a cuLaunchHostFunc function is running

#define LOCKED(body)                                     \
  do {                                                   \
    if (in_host_fn) return CUDA_ERROR_NOT_PERMITTED;     \
    pthread_mutex_lock(&lock);                           \
    CUresult r_ = (body);                                \
    pthread_mutex_unlock(&lock);                         \
    return r_;                                           \
  } while (0)

static long env_long(const char *name, long dflt, long lo, long hi) {
  const char *s = getenv(name);
  if (!s || !*s) return dflt;
  char *end;
  long v = strtol(s, &end, 10);
  if (*end || v < lo || v > hi) die("%s=%s is not a number in [%ld, %ld]", name, s, lo, hi);
  return v;
}

static CUresult init(unsigned flags) {
  if (flags != 0) return CUDA_ERROR_INVALID_VALUE;
  cc = (int)env_long("KILN_CUDA_EMU_CC", 90, 30, 199);
  ndevices = (int)env_long("KILN_CUDA_EMU_DEVICES", 1, 0, MAX_DEVICES);
  for (int i = 0; i < MAX_DEVICES; i++) primary[i].dev = i;
  driver_version = (int)env_long("KILN_CUDA_EMU_DRIVER_VERSION", CUDA_VERSION, 1000, 99000);
  verbose = (int)env_long("KILN_CUDA_EMU_VERBOSE", 0, 0, 2);
  poison = (int)env_long("KILN_CUDA_EMU_POISON", 1, 0, 1);
  const char *order = getenv("KILN_CUDA_EMU_ORDER");
  reverse = order && !strcmp(order, "reverse");
  if (order && *order && !reverse && strcmp(order, "forward") != 0)
    die("KILN_CUDA_EMU_ORDER=%s: expected forward or reverse", order);
  stack_bytes = (size_t)env_long("KILN_CUDA_EMU_STACK_KIB", 64, 16, 1 << 20) << 10;
  long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  long mib = env_long("KILN_CUDA_EMU_MEM_MIB", pages > 0 && page > 0 ? pages / (1048576 / page) : 16384,
                      1, 1L << 30);
  total_mem = (size_t)mib << 20;
  if (ndevices == 0) return CUDA_ERROR_NO_DEVICE;
  initialized = 1;
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuInit(unsigned int Flags) { LOCKED(init(Flags)); }

CUresult CUDAAPI cuDriverGetVersion(int *driverVersion) {
  if (!driverVersion) return CUDA_ERROR_INVALID_VALUE;
  *driverVersion = (int)env_long("KILN_CUDA_EMU_DRIVER_VERSION", CUDA_VERSION, 1000, 99000);
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuDeviceGetCount(int *count) {
  if (!initialized) return CUDA_ERROR_NOT_INITIALIZED;
  if (!count) return CUDA_ERROR_INVALID_VALUE;
  *count = ndevices;
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuDeviceGet(CUdevice *device, int ordinal) {
  if (!initialized) return CUDA_ERROR_NOT_INITIALIZED;
  if (!device) return CUDA_ERROR_INVALID_VALUE;
  if (ordinal < 0 || ordinal >= ndevices) return CUDA_ERROR_INVALID_DEVICE;
  *device = ordinal;
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuDeviceGetName(char *name, int len, CUdevice dev) {
  if (!initialized) return CUDA_ERROR_NOT_INITIALIZED;
  if (dev < 0 || dev >= ndevices) return CUDA_ERROR_INVALID_DEVICE;
  if (!name || len <= 0) return CUDA_ERROR_INVALID_VALUE;
  snprintf(name, (size_t)len, "Kiln CUDA emulator");
  return CUDA_SUCCESS;
}

// What a GPU of compute capability cc reports, near enough for a runtime's checks
// and a profiler's peak estimates (A100, RTX 30xx, H100, B200 figures).
static int attribute(CUdevice_attribute a) {
  int hopper = cc >= 90, ga10x = cc >= 86 && cc < 90;
  switch ((int)a) {
  case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR: return cc / 10;
  case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR: return cc % 10;
  case CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK: return 1024;
  case CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_X: return 1024;
  case CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Y: return 1024;
  case CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Z: return 64;
  case CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_X: return 2147483647;
  case CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Y: return 65535;
  case CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Z: return 65535;
  case CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK: return 49152;
  case CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN:
    return hopper ? 232448 : ga10x ? 101376 : 166912;
  case CU_DEVICE_ATTRIBUTE_TOTAL_CONSTANT_MEMORY: return 65536;
  case CU_DEVICE_ATTRIBUTE_WARP_SIZE: return 32;
  case CU_DEVICE_ATTRIBUTE_MAX_REGISTERS_PER_BLOCK: return 65536;
  case CU_DEVICE_ATTRIBUTE_MAX_REGISTERS_PER_MULTIPROCESSOR: return 65536;
  case CU_DEVICE_ATTRIBUTE_CLOCK_RATE: return hopper ? 1980000 : 1410000;
  case CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE: return hopper ? 2619000 : 1215000;
  case CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH: return hopper ? 5120 : 5120;
  case CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE: return hopper ? 52428800 : 41943040;
  case CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT: return cc >= 100 ? 148 : hopper ? 132 : ga10x ? 84 : 108;
  case CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_MULTIPROCESSOR: return ga10x ? 1536 : 2048;
  case CU_DEVICE_ATTRIBUTE_MAX_BLOCKS_PER_MULTIPROCESSOR: return hopper ? 32 : ga10x ? 16 : 32;
  case CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_MULTIPROCESSOR:
    return hopper ? 233472 : ga10x ? 102400 : 167936;
  case CU_DEVICE_ATTRIBUTE_UNIFIED_ADDRESSING: return 1;
  case CU_DEVICE_ATTRIBUTE_CONCURRENT_KERNELS: return 1;
  case CU_DEVICE_ATTRIBUTE_CAN_MAP_HOST_MEMORY: return 1;
  case CU_DEVICE_ATTRIBUTE_ASYNC_ENGINE_COUNT: return 2;
  case CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED: return 1;
  default: return 0;
  }
}

CUresult CUDAAPI cuDeviceGetAttribute(int *pi, CUdevice_attribute attrib, CUdevice dev) {
  if (!initialized) return CUDA_ERROR_NOT_INITIALIZED;
  if (dev < 0 || dev >= ndevices) return CUDA_ERROR_INVALID_DEVICE;
  if (!pi || (int)attrib <= 0 || attrib >= CU_DEVICE_ATTRIBUTE_MAX) return CUDA_ERROR_INVALID_VALUE;
  *pi = attribute(attrib);
  return CUDA_SUCCESS;
}

static CUresult retain(CUcontext *pctx, CUdevice dev) {
  if (!initialized) return CUDA_ERROR_NOT_INITIALIZED;
  if (dev < 0 || dev >= ndevices) return CUDA_ERROR_INVALID_DEVICE;
  if (!pctx) return CUDA_ERROR_INVALID_VALUE;
  primary[dev].refs++;
  *pctx = &primary[dev];
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuDevicePrimaryCtxRetain(CUcontext *pctx, CUdevice dev) { LOCKED(retain(pctx, dev)); }

static CUresult release(CUdevice dev) {
  if (!initialized) return CUDA_ERROR_NOT_INITIALIZED;
  if (dev < 0 || dev >= ndevices) return CUDA_ERROR_INVALID_DEVICE;
  if (primary[dev].refs <= 0) return CUDA_ERROR_INVALID_CONTEXT;
  primary[dev].refs--;
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuDevicePrimaryCtxRelease_v2(CUdevice dev) { LOCKED(release(dev)); }

CUresult CUDAAPI cuCtxSetCurrent(CUcontext ctx) {
  if (!initialized) return CUDA_ERROR_NOT_INITIALIZED;
  if (ctx && (ctx < primary || ctx >= primary + ndevices)) return CUDA_ERROR_INVALID_CONTEXT;
  current = ctx;
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuCtxGetDevice(CUdevice *device) {
  if (!initialized) return CUDA_ERROR_NOT_INITIALIZED;
  if (!device) return CUDA_ERROR_INVALID_VALUE;
  if (!current) return CUDA_ERROR_INVALID_CONTEXT;
  *device = current->dev;
  return CUDA_SUCCESS;
}

// Every call that works on the device needs the driver initialised and a live
// context current on the calling thread.
static CUresult need_ctx(void) {
  if (!initialized) return CUDA_ERROR_NOT_INITIALIZED;
  if (!current || current->refs <= 0) return CUDA_ERROR_INVALID_CONTEXT;
  return CUDA_SUCCESS;
}
#define TRY(x)                          \
  do {                                  \
    CUresult t_ = (x);                  \
    if (t_ != CUDA_SUCCESS) return t_;  \
  } while (0)

//
// Memory.
//
static CUresult mem_alloc(CUdeviceptr *dptr, size_t bytes) {
  TRY(need_ctx());
  if (!dptr || bytes == 0) return CUDA_ERROR_INVALID_VALUE;
  // Allocating is one of the calls a capture forbids, unless relaxed.
  if (nstrict) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
  void *p;
  if (bytes > total_mem - used_mem || posix_memalign(&p, 256, bytes) != 0) return CUDA_ERROR_OUT_OF_MEMORY;
  if (nallocs == capallocs) {
    capallocs = capallocs ? 2 * capallocs : 16;
    allocs = realloc(allocs, (size_t)capallocs * sizeof *allocs);
    if (!allocs) die("out of host memory");
  }
  allocs[nallocs++] = (Alloc){p, bytes};
  used_mem += bytes;
  memset(p, poison ? 0xff : 0, bytes);  // 0xffffffff is a NaN
  *dptr = (CUdeviceptr)(uintptr_t)p;
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuMemAlloc_v2(CUdeviceptr *dptr, size_t bytesize) { LOCKED(mem_alloc(dptr, bytesize)); }

static CUresult mem_free(CUdeviceptr dptr) {
  TRY(need_ctx());
  if (nstrict) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
  if (!dptr) return CUDA_SUCCESS;
  for (int i = 0; i < nallocs; i++)
    if (allocs[i].base == (char *)(uintptr_t)dptr) {
      used_mem -= allocs[i].size;
      free(allocs[i].base);
      allocs[i] = allocs[--nallocs];
      return CUDA_SUCCESS;
    }
  return CUDA_ERROR_INVALID_VALUE;
}

CUresult CUDAAPI cuMemFree_v2(CUdeviceptr dptr) { LOCKED(mem_free(dptr)); }

static CUresult mem_info(size_t *free_, size_t *total) {
  TRY(need_ctx());
  if (!free_ || !total) return CUDA_ERROR_INVALID_VALUE;
  *free_ = total_mem - used_mem;
  *total = total_mem;
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuMemGetInfo_v2(size_t *free, size_t *total) { LOCKED(mem_info(free, total)); }

// [p, p + bytes) lies inside one allocation.
static int device_range(CUdeviceptr p, size_t bytes) {
  char *c = (char *)(uintptr_t)p;
  for (int i = 0; i < nallocs; i++)
    if (c >= allocs[i].base && c <= allocs[i].base + allocs[i].size &&
        bytes <= (size_t)(allocs[i].base + allocs[i].size - c))
      return 1;
  return 0;
}

//
// Streams. The legacy default stream is NULL (or CU_STREAM_LEGACY,
// CU_STREAM_PER_THREAD).
//
static int is_default(CUstream s) {
  return s == NULL || s == CU_STREAM_LEGACY || s == CU_STREAM_PER_THREAD;
}

static CUresult check_stream(CUstream s) {
  if (is_default(s)) return CUDA_SUCCESS;
  return s->magic == MAGIC_STREAM ? CUDA_SUCCESS : CUDA_ERROR_INVALID_HANDLE;
}

// Work on the legacy stream waits for every blocking stream, which a capturing
// stream cannot allow.
static CUresult legacy_conflict(CUstream s) {
  if (!is_default(s) || !nblocking) return CUDA_SUCCESS;
  return CUDA_ERROR_STREAM_CAPTURE_IMPLICIT;
}

static CUresult stream_create(CUstream *ph, unsigned flags) {
  TRY(need_ctx());
  if (!ph || (flags & ~(unsigned)CU_STREAM_NON_BLOCKING)) return CUDA_ERROR_INVALID_VALUE;
  struct CUstream_st *s = calloc(1, sizeof *s);
  if (!s) return CUDA_ERROR_OUT_OF_MEMORY;
  s->magic = MAGIC_STREAM;
  s->flags = flags;
  *ph = s;
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuStreamCreate(CUstream *phStream, unsigned int Flags) { LOCKED(stream_create(phStream, Flags)); }

static void count_capture(CUstream s, int d) {
  nstrict += s->mode != CU_STREAM_CAPTURE_MODE_RELAXED ? d : 0;
  nblocking += !(s->flags & CU_STREAM_NON_BLOCKING) ? d : 0;
}

static void graph_free(struct CUgraph_st *g) {
  g->magic = 0;
  free(g->nodes);
  free(g);
}

static CUresult stream_destroy(CUstream s) {
  if (!initialized) return CUDA_ERROR_NOT_INITIALIZED;
  if (is_default(s) || s->magic != MAGIC_STREAM) return CUDA_ERROR_INVALID_HANDLE;
  if (s->capture && s->origin) {  // a fork leaves its origin's capture broken
    s->origin->invalidated = 1;
    struct CUgraph_st *g = s->capture;
    for (int i = 0; i < g->njoined; i++)
      if (g->joined[i] == s) g->joined[i] = g->joined[--g->njoined];
    count_capture(s, -1);
  } else if (s->capture) {
    struct CUgraph_st *g = s->capture;
    for (int i = 0; i < g->njoined; i++) {
      count_capture(g->joined[i], -1);
      g->joined[i]->capture = NULL, g->joined[i]->origin = NULL;
    }
    graph_free(g);
    count_capture(s, -1);
  }
  s->magic = 0;
  free(s);
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuStreamDestroy_v2(CUstream hStream) { LOCKED(stream_destroy(hStream)); }

// A call that would wait for a capturing stream breaks its capture.
static CUresult sync_point(CUstream s) {
  if (!is_default(s) && s->capture) {
    (s->origin ? s->origin : s)->invalidated = 1;
    return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
  }
  return legacy_conflict(s);
}

static CUresult stream_sync(CUstream s) {
  TRY(need_ctx());
  TRY(check_stream(s));
  return sync_point(s);
}

CUresult CUDAAPI cuStreamSynchronize(CUstream hStream) { LOCKED(stream_sync(hStream)); }

// Streams run synchronously: whatever was submitted is done.
CUresult CUDAAPI cuStreamQuery(CUstream hStream) { LOCKED(stream_sync(hStream)); }

//
// Modules: which image the device would run, and the host build of its kernels.
//
static size_t elf_size(const unsigned char *p) {
  const Elf64_Ehdr *h = (const Elf64_Ehdr *)p;
  size_t end = h->e_shoff + (size_t)h->e_shnum * h->e_shentsize;
  size_t ph = h->e_phoff + (size_t)h->e_phnum * h->e_phentsize;
  if (ph > end) end = ph;
  const Elf64_Shdr *sh = (const Elf64_Shdr *)(p + h->e_shoff);
  for (int i = 0; i < h->e_shnum; i++)
    if (sh[i].sh_type != SHT_NOBITS && sh[i].sh_offset + sh[i].sh_size > end)
      end = sh[i].sh_offset + sh[i].sh_size;
  return end;
}

// The driver version a PTX ISA version needs (ISA 9.x: CUDA 13, 8.x: 12, 7.x: 11).
static int ptx_driver(int major, int minor) {
  return major >= 7 ? (major + 4) * 1000 + minor * 10 : 10000;
}

static CUresult load_image(struct CUmod_st *m, const unsigned char *img) {
  if (!memcmp(img, ELFMAG, SELFMAG)) {
    const Elf64_Ehdr *h = (const Elf64_Ehdr *)img;
    if (h->e_ident[EI_CLASS] != ELFCLASS64 || h->e_machine != EM_CUDA) return CUDA_ERROR_INVALID_IMAGE;
    // The ELF ABI version 8 cubins keep the sm in bits 8-15 of e_flags; older ones in 0-7.
    m->arch = h->e_ident[EI_ABIVERSION] >= 8 ? (int)(h->e_flags >> 8 & 0xff) : (int)(h->e_flags & 0xff);
    m->size = elf_size(img);
    // A cubin runs on its own major version at the same or a higher minor one.
    if (m->arch / 10 != cc / 10 || m->arch % 10 > cc % 10) {
      if (verbose)
        fprintf(stderr, "kiln-cuda-emu: refused a cubin for sm_%d on a compute %d.%d device\n",
                m->arch, cc / 10, cc % 10);
      return CUDA_ERROR_NO_BINARY_FOR_GPU;
    }
    if (verbose) fprintf(stderr, "kiln-cuda-emu: loaded a cubin for sm_%d\n", m->arch);
  } else {
    // PTX is NUL-terminated text; anything else is no image.
    if (img[0] != '/' && img[0] != '.' && img[0] != '\n' && img[0] != ' ' && img[0] != '\t')
      return CUDA_ERROR_INVALID_IMAGE;
    const char *s = (const char *)img, *v = strstr(s, "\n.version "), *t = strstr(s, "\n.target sm_");
    int major, minor;
    if (!v || !t || sscanf(v, "\n.version %d.%d", &major, &minor) != 2 ||
        sscanf(t, "\n.target sm_%d", &m->arch) != 1)
      return CUDA_ERROR_INVALID_IMAGE;
    m->ptx = 1;
    m->size = strlen(s) + 1;
    if (ptx_driver(major, minor) > driver_version) {
      if (verbose)
        fprintf(stderr, "kiln-cuda-emu: refused PTX ISA %d.%d on driver %d\n", major, minor, driver_version);
      return CUDA_ERROR_UNSUPPORTED_PTX_VERSION;
    }
    if (m->arch > cc) {
      if (verbose)
        fprintf(stderr, "kiln-cuda-emu: refused PTX for compute_%d on a compute %d.%d device\n",
                m->arch, cc / 10, cc % 10);
      return CUDA_ERROR_NO_BINARY_FOR_GPU;
    }
    if (verbose) fprintf(stderr, "kiln-cuda-emu: JIT-compiled PTX for compute_%d\n", m->arch);
  }
  m->image = malloc(m->size);
  if (!m->image) return CUDA_ERROR_OUT_OF_MEMORY;
  memcpy(m->image, img, m->size);
  const char *so = getenv("KILN_CUDA_EMU_KERNELS");
  if (!so || !*so) {
    fprintf(stderr, "kiln-cuda-emu: KILN_CUDA_EMU_KERNELS must name the host build of the kernels\n");
    return CUDA_ERROR_INVALID_IMAGE;
  }
  if (!(m->dl = dlopen(so, RTLD_NOW | RTLD_LOCAL))) {
    fprintf(stderr, "kiln-cuda-emu: %s\n", dlerror());
    return CUDA_ERROR_INVALID_IMAGE;
  }
  return CUDA_SUCCESS;
}

static CUresult module_load(CUmodule *module, const void *image) {
  TRY(need_ctx());
  if (!module || !image) return CUDA_ERROR_INVALID_VALUE;
  struct CUmod_st *m = calloc(1, sizeof *m);
  if (!m) return CUDA_ERROR_OUT_OF_MEMORY;
  CUresult r = load_image(m, image);
  if (r != CUDA_SUCCESS) {
    free(m->image);
    free(m);
    return r;
  }
  m->magic = MAGIC_MODULE;
  *module = m;
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuModuleLoadData(CUmodule *module, const void *image) { LOCKED(module_load(module, image)); }

static CUresult module_unload(CUmodule m) {
  if (!initialized) return CUDA_ERROR_NOT_INITIALIZED;
  if (!m || m->magic != MAGIC_MODULE) return CUDA_ERROR_INVALID_HANDLE;
  m->magic = 0;
  for (struct CUfunc_st *f = m->funcs, *next; f; f = next) {
    next = f->next;
    f->magic = 0;
    free(f);
  }
  dlclose(m->dl);
  free(m->image);
  free(m);
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuModuleUnload(CUmodule hmod) { LOCKED(module_unload(hmod)); }

// Whether the image defines kernel `name`: a PTX ".entry name(" or, in a cubin's
// string table, "name" on its own.
static int image_defines(const struct CUmod_st *m, const char *name) {
  size_t n = strlen(name);
  const unsigned char *p = m->image, *end = m->image + m->size;
  while ((p = memmem(p, (size_t)(end - p), name, n)) != NULL) {
    if (m->ptx) {
      const char *s = (const char *)p;
      if (s - (const char *)m->image >= 7 && !memcmp(s - 7, ".entry ", 7) && (s[n] == '(' || s[n] == ' '))
        return 1;
    } else if (p > m->image && p[-1] == 0 && p + n < end && p[n] == 0) {
      return 1;
    }
    p += 1;
  }
  return 0;
}

static CUresult get_function(CUfunction *hfunc, CUmodule m, const char *name) {
  if (!initialized) return CUDA_ERROR_NOT_INITIALIZED;
  if (!hfunc || !name) return CUDA_ERROR_INVALID_VALUE;
  if (!m || m->magic != MAGIC_MODULE) return CUDA_ERROR_INVALID_HANDLE;
  if (strlen(name) >= sizeof ((struct CUfunc_st *)0)->name || !image_defines(m, name)) return CUDA_ERROR_NOT_FOUND;
  void *sym = dlsym(m->dl, name);
  if (!sym) {
    fprintf(stderr, "kiln-cuda-emu: the image defines %s but KILN_CUDA_EMU_KERNELS does not\n", name);
    return CUDA_ERROR_NOT_FOUND;
  }
  struct CUfunc_st *f = calloc(1, sizeof *f);
  if (!f) return CUDA_ERROR_OUT_OF_MEMORY;
  f->magic = MAGIC_FUNC;
  f->mod = m;
  snprintf(f->name, sizeof f->name, "%s", name);
  f->fn = (void (*)(EmuArgs))sym;
  f->next = m->funcs;
  m->funcs = f;
  *hfunc = f;
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuModuleGetFunction(CUfunction *hfunc, CUmodule hmod, const char *name) {
  LOCKED(get_function(hfunc, hmod, name));
}

CUresult CUDAAPI cuFuncGetAttribute(int *pi, CUfunction_attribute attrib, CUfunction f) {
  if (!initialized) return CUDA_ERROR_NOT_INITIALIZED;
  if (!f || f->magic != MAGIC_FUNC) return CUDA_ERROR_INVALID_HANDLE;
  if (!pi) return CUDA_ERROR_INVALID_VALUE;
  switch ((int)attrib) {
  case CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK: *pi = 1024; break;
  case CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES: *pi = 0; break;  // host statics, not counted
  case CU_FUNC_ATTRIBUTE_CONST_SIZE_BYTES: *pi = 0; break;
  case CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES: *pi = 0; break;
  case CU_FUNC_ATTRIBUTE_NUM_REGS: *pi = 32; break;
  case CU_FUNC_ATTRIBUTE_PTX_VERSION: *pi = f->mod->arch; break;
  case CU_FUNC_ATTRIBUTE_BINARY_VERSION: *pi = f->mod->ptx ? cc : f->mod->arch; break;
  case CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES: *pi = 49152; break;
  default:
    if ((int)attrib < 0 || attrib >= CU_FUNC_ATTRIBUTE_MAX) return CUDA_ERROR_INVALID_VALUE;
    *pi = 0;
  }
  return CUDA_SUCCESS;
}

//
// The block scheduler. A fiber is a host stack that runs CUDA threads of the
// current block: it takes the next thread not yet started and runs the kernel to
// its end, unless the thread waits at a barrier, which suspends the fiber with it
// and switches straight to another fiber: one with a thread the barriers released,
// else one to start the next thread. When there is neither, control returns to
// the scheduler, which finds the block done or deadlocked. Fibers are made once
// (makecontext) and kept for every later block and launch; switching between them
// is __builtin_setjmp/__builtin_longjmp, which costs no system call.
//
typedef struct {
  unsigned x, y, z;
} Dim3;
Dim3 kiln_emu_threadIdx, kiln_emu_blockIdx, kiln_emu_blockDim, kiln_emu_gridDim;

typedef struct Fiber {
  void *jb[5];
  int started;
  int thread;   // the CUDA thread it runs, or -1
  char *stack;  // the lowest page is a guard
  ucontext_t uc;
} Fiber;

enum { T_NEW, T_RUN, T_READY, T_BAR, T_WARP, T_DONE };

typedef struct {
  unsigned want, arrived;  // lane masks
  int gather;              // the lanes that arrived wait in kiln_emu_warp_gather, not a shuffle
  unsigned long long val[32], out[32];
  unsigned char src[32];
  const void *mine[32];    // kiln_emu_warp_gather's arguments per lane
  void *all[32];
  unsigned bytes;
} Warp;

static struct {
  struct CUfunc_st *f;
  EmuArgs args;
  unsigned n, next, ndone, nbar;  // threads; started; returned; at __syncthreads
  unsigned char *state;           // T_* per thread
  Dim3 *idx;                      // threadIdx per thread
  Fiber **fiber;                  // per thread, once started
  Warp *warp;
  unsigned *ready, rhead, rtail, rcount;  // threads to resume, a ring of n
  unsigned *bar;                  // threads waiting at __syncthreads, in order
  unsigned cap;
  Fiber **fibers, **idle;
  unsigned nfibers, nidle;
  Fiber *cur;
  void *jb[5];                    // the scheduler's own context
} S;

// The functions that switch stacks are opaque to the optimiser: with their bodies
// in view, GCC's interprocedural register allocation would let callers keep values
// in registers the other fibers overwrite.
#if defined(__GNUC__) && !defined(__clang__)
#define SWITCH __attribute__((noinline, noipa))
#else
#define SWITCH __attribute__((noinline))
#endif

static void fiber_main(void);

// Stacks are mapped at 64 KiB multiples, so their tops would share cache sets;
// fiber i's top is moved by i * (4 KiB + 64) bytes (mod 64 KiB) to spread them.
static Fiber *new_fiber(void) {
  size_t page = (size_t)sysconf(_SC_PAGESIZE), color = (size_t)S.nfibers * 4160 % 65536;
  Fiber *f = calloc(1, sizeof *f);
  char *m = mmap(NULL, page + stack_bytes + 65536, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (!f || m == MAP_FAILED || mprotect(m, page, PROT_NONE) != 0)
    die("cannot allocate a %zu KiB stack for a CUDA thread", stack_bytes >> 10);
  f->stack = m;
  f->thread = -1;
  if (getcontext(&f->uc) != 0) die("getcontext failed");
  f->uc.uc_stack.ss_sp = m + page;
  f->uc.uc_stack.ss_size = stack_bytes + color;
  f->uc.uc_link = NULL;
  makecontext(&f->uc, fiber_main, 0);
  S.fibers[S.nfibers++] = f;
  return f;
}

static SWITCH void jump(void **jb) { __builtin_longjmp(jb, 1); }

// Enters a fiber for the first time. Its own function, so the ucontext_t's
// kilobyte is not part of every switch's stack frame.
static __attribute__((noinline)) void start_fiber(Fiber *f) {
  ucontext_t unused;  // nothing returns to it: fibers leave through jumps
  f->started = 1;
  swapcontext(&unused, &f->uc);
}

// Continues with the next fiber that has work, or the scheduler; never returns.
static SWITCH void switch_next(void) {
  Fiber *f;
  if (S.rcount) {
    unsigned t = S.ready[S.rhead];
    S.rhead = S.rhead + 1 == S.n ? 0 : S.rhead + 1;
    S.rcount--;
    S.state[t] = T_RUN;
    f = S.fiber[t];
  } else if (S.next < S.n) {
    f = S.nidle ? S.idle[--S.nidle] : new_fiber();
  } else {
    jump(S.jb);
    return;
  }
  S.cur = f;
  if (!f->started) start_fiber(f);
  jump(f->jb);
}

static void identify(unsigned t) { kiln_emu_threadIdx = S.idx[t]; }

// Suspends the running thread; returns when a barrier has released it.
static SWITCH void suspend(void) {
  Fiber *f = S.cur;
  if (__builtin_setjmp(f->jb) == 0) switch_next();
  if (f->thread >= 0) identify((unsigned)f->thread);
}

static void make_ready(unsigned t) {
  S.state[t] = T_READY;
  S.ready[S.rtail] = t;
  S.rtail = S.rtail + 1 == S.n ? 0 : S.rtail + 1;
  S.rcount++;
}

static void fiber_main(void) {
  Fiber *f = S.cur;
  for (;;) {
    while (S.next < S.n) {
      unsigned t = reverse ? S.n - 1 - S.next++ : S.next++;
      f->thread = (int)t;
      S.fiber[t] = f;
      S.state[t] = T_RUN;
      identify(t);
      S.f->fn(S.args);
      S.state[t] = T_DONE;
      S.ndone++;
    }
    f->thread = -1;
    S.idle[S.nidle++] = f;
    suspend();
  }
}

// Runs the block's threads until none can go on.
static SWITCH void run_threads(void) {
  if (__builtin_setjmp(S.jb) == 0) switch_next();
}

static void deadlock(void) {
  unsigned nbar = 0, nwarp = 0;
  for (unsigned t = 0; t < S.n; t++) {
    nbar += S.state[t] == T_BAR;
    nwarp += S.state[t] == T_WARP;
  }
  fprintf(stderr,
          "kiln-cuda-emu: deadlock in kernel %s, block (%u,%u,%u) of (%u,%u,%u), %u threads: "
          "%u wait at __syncthreads, %u wait at a warp shuffle, %u have returned\n",
          S.f->name, kiln_emu_blockIdx.x, kiln_emu_blockIdx.y, kiln_emu_blockIdx.z,
          kiln_emu_gridDim.x, kiln_emu_gridDim.y, kiln_emu_gridDim.z, S.n, nbar, nwarp, S.ndone);
  for (unsigned w = 0; w < (S.n + 31) / 32; w++)
    if (S.warp[w].arrived)
      fprintf(stderr, "kiln-cuda-emu:   warp %u: lanes %#010x of %#010x reached the %s\n", w,
              S.warp[w].arrived, S.warp[w].want, S.warp[w].gather ? "mma" : "shuffle");
  abort();
}

static void run_block(void) {
  S.next = S.ndone = S.nbar = S.rhead = S.rtail = S.rcount = 0;
  memset(S.warp, 0, (S.n + 31) / 32 * sizeof *S.warp);
  run_threads();
  if (S.ndone < S.n) deadlock();
}

void kiln_emu_syncthreads(void) {
  unsigned t = (unsigned)S.cur->thread;
  if (++S.nbar < S.n) {
    S.bar[S.nbar - 1] = t;
    S.state[t] = T_BAR;
    suspend();
    return;
  }
  for (unsigned i = 0; i + 1 < S.n; i++) make_ready(S.bar[i]);
  S.nbar = 0;
}

unsigned long long kiln_emu_shfl(unsigned mask, unsigned long long bits, int kind, int arg, int width) {
  unsigned t = (unsigned)S.cur->thread, lane = t % 32, base = t - lane;
  Warp *w = &S.warp[t / 32];
  unsigned lanes = S.n - base >= 32 ? 0xffffffffu : (1u << (S.n - base)) - 1;
  unsigned m = mask & lanes;
  const char *name = S.f->name;
  if (!(m >> lane & 1)) die("kernel %s: thread %u calls a warp shuffle with mask %#x, which leaves it out", name, t, mask);
  if (width < 1 || width > 32 || (width & (width - 1)))
    die("kernel %s: warp shuffle width %d is not a power of 2 up to 32", name, width);
  if (w->arrived && w->gather)
    die("kernel %s: in warp %u, thread %u shuffles while other lanes wait at an mma", name, t / 32, t);
  if (!w->arrived) w->want = m;
  else if (w->want != m) die("kernel %s: the lanes of warp %u shuffle with masks %#x and %#x", name, t / 32, w->want, m);
  // CUDA's rules: a source lane outside the thread's own width-lane segment (later
  // segments for xor, past its end for down) yields the thread's own value.
  unsigned src = lane, seg_end = (lane / (unsigned)width + 1) * (unsigned)width;
  if (kind == 0 && arg >= 0 && (lane ^ (unsigned)arg) < seg_end) src = lane ^ (unsigned)arg;
  if (kind == 1 && arg >= 0 && lane % (unsigned)width + (unsigned)arg < (unsigned)width) src = lane + (unsigned)arg;
  if (!(m >> src & 1)) die("kernel %s: thread %u reads lane %u, outside the shuffle's mask %#x", name, t, src, m);
  w->val[lane] = bits;
  w->src[lane] = (unsigned char)src;
  w->arrived |= 1u << lane;
  if (w->arrived != w->want) {
    S.state[t] = T_WARP;
    suspend();
    return w->out[lane];
  }
  for (unsigned l = 0; l < 32; l++)
    if (m >> l & 1) w->out[l] = w->val[w->src[l]];
  w->arrived = 0;
  for (unsigned l = 0; l < 32; l++)
    if ((m >> l & 1) && l != lane) make_ready(base + l);
  return w->out[lane];
}

void kiln_emu_warp_gather(const void *mine, void *all, unsigned bytes) {
  unsigned t = (unsigned)S.cur->thread, lane = t % 32, base = t - lane;
  Warp *w = &S.warp[t / 32];
  const char *name = S.f->name;
  if (S.n - base < 32)
    die("kernel %s: warp %u has %u threads; an mma needs all 32", name, t / 32, S.n - base);
  if (!w->arrived) {
    w->want = 0xffffffffu;
    w->gather = 1;
    w->bytes = bytes;
  } else if (!w->gather) {
    die("kernel %s: in warp %u, thread %u reaches an mma while other lanes wait at a shuffle", name,
        t / 32, t);
  } else if (w->bytes != bytes) {
    die("kernel %s: the lanes of warp %u exchange %u and %u bytes", name, t / 32, w->bytes, bytes);
  }
  w->mine[lane] = mine;  // on the lanes' stacks, which stay put while they wait
  w->all[lane] = all;
  w->arrived |= 1u << lane;
  if (w->arrived != w->want) {
    S.state[t] = T_WARP;
    suspend();
    return;
  }
  for (unsigned l = 0; l < 32; l++)
    for (unsigned src = 0; src < 32; src++) memcpy((char *)w->all[l] + src * bytes, w->mine[src], bytes);
  w->arrived = 0;
  w->gather = 0;
  for (unsigned l = 0; l < 32; l++)
    if (l != lane) make_ready(base + l);
}

// A fault inside a kernel names the kernel and thread before the process dies;
// a fault in a guard page is a CUDA thread's stack overflowing.
static struct sigaction old_segv, old_bus;
static void on_fault(int sig, siginfo_t *si, void *uc) {
  (void)uc;
  char msg[512];
  char *a = si->si_addr;
  const char *why = "";
  long page = sysconf(_SC_PAGESIZE);
  for (unsigned i = 0; i < S.nfibers; i++)
    if (a >= S.fibers[i]->stack && a < S.fibers[i]->stack + page)
      why = " (the thread's stack overflowed: raise KILN_CUDA_EMU_STACK_KIB)";
  int n = snprintf(msg, sizeof msg,
                   "kiln-cuda-emu: %s at %p in kernel %s, block (%u,%u,%u) thread (%u,%u,%u)%s\n",
                   sig == SIGSEGV ? "segmentation fault" : "bus error", (void *)a, S.f ? S.f->name : "?",
                   kiln_emu_blockIdx.x, kiln_emu_blockIdx.y, kiln_emu_blockIdx.z, kiln_emu_threadIdx.x,
                   kiln_emu_threadIdx.y, kiln_emu_threadIdx.z, why);
  if (write(2, msg, (size_t)n) < 0) {}
  signal(sig, SIG_DFL);  // the access repeats and kills the process
}

static void alt_stack(void) {
  static __thread int done;
  stack_t ss;
  if (done++ || (sigaltstack(NULL, &ss) == 0 && !(ss.ss_flags & SS_DISABLE))) return;
  ss.ss_size = 1 << 16;
  ss.ss_sp = malloc(ss.ss_size);
  ss.ss_flags = 0;
  if (ss.ss_sp) sigaltstack(&ss, NULL);
}

static void run_grid(struct CUfunc_st *f, const unsigned grid[3], const unsigned block[3], const EmuArgs *args) {
  unsigned n = block[0] * block[1] * block[2];
  if (n > S.cap) {
    S.state = realloc(S.state, n);
    S.idx = realloc(S.idx, n * sizeof *S.idx);
    S.fiber = realloc(S.fiber, n * sizeof *S.fiber);
    S.warp = realloc(S.warp, (n + 31) / 32 * sizeof *S.warp);
    S.ready = realloc(S.ready, n * sizeof *S.ready);
    S.bar = realloc(S.bar, n * sizeof *S.bar);
    S.fibers = realloc(S.fibers, n * sizeof *S.fibers);
    S.idle = realloc(S.idle, n * sizeof *S.idle);
    if (!S.state || !S.idx || !S.fiber || !S.warp || !S.ready || !S.bar || !S.fibers || !S.idle) die("out of host memory");
    S.cap = n;
  }
  S.f = f;
  S.args = *args;
  S.n = n;
  kiln_emu_gridDim = (Dim3){grid[0], grid[1], grid[2]};
  kiln_emu_blockDim = (Dim3){block[0], block[1], block[2]};
  for (unsigned t = 0; t < n; t++) S.idx[t] = (Dim3){t % block[0], t / block[0] % block[1], t / (block[0] * block[1])};
  alt_stack();
  struct sigaction sa = {0};
  sa.sa_sigaction = on_fault;
  sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
  sigaction(SIGSEGV, &sa, &old_segv);
  sigaction(SIGBUS, &sa, &old_bus);
  unsigned long long nb = (unsigned long long)grid[0] * grid[1] * grid[2];
  for (unsigned long long i = 0; i < nb; i++) {
    unsigned long long b = reverse ? nb - 1 - i : i;
    kiln_emu_blockIdx = (Dim3){(unsigned)(b % grid[0]), (unsigned)(b / grid[0] % grid[1]),
                               (unsigned)(b / grid[0] / grid[1])};
    run_block();
  }
  sigaction(SIGSEGV, &old_segv, NULL);
  sigaction(SIGBUS, &old_bus, NULL);
  S.f = NULL;
}

//
// Work on streams: done at once, or recorded while the stream captures.
//
static CUresult submit(CUstream s, const Node *node) {
  if (!is_default(s)) s->seq++;
  if (!is_default(s) && s->capture) {
    struct CUgraph_st *g = s->capture;
    if (s->origin) s->pending = 1;
    if (g->n == g->cap) {
      g->cap = g->cap ? 2 * g->cap : 64;
      Node *nodes = realloc(g->nodes, (size_t)g->cap * sizeof *nodes);
      if (!nodes) return CUDA_ERROR_OUT_OF_MEMORY;
      g->nodes = nodes;
    }
    g->nodes[g->n++] = *node;
    return CUDA_SUCCESS;
  }
  TRY(legacy_conflict(s));
  switch (node->kind) {
  case NODE_LAUNCH: run_grid(node->f, node->grid, node->block, &node->args); break;
  case NODE_HTOD: case NODE_DTOH: memcpy(node->dst, node->src, node->bytes); break;
  case NODE_MEMSET: memset(node->dst, node->byte, node->bytes); break;
  case NODE_HOST:
    in_host_fn = 1;
    node->host(node->data);
    in_host_fn = 0;
    break;
  }
  return CUDA_SUCCESS;
}

static CUresult host_func(CUstream s, CUhostFn fn, void *data) {
  TRY(need_ctx());
  TRY(check_stream(s));
  if (!fn) return CUDA_ERROR_INVALID_VALUE;
  Node n = {.kind = NODE_HOST, .host = fn, .data = data};
  return submit(s, &n);
}

CUresult CUDAAPI cuLaunchHostFunc(CUstream hStream, CUhostFn fn, void *userData) {
  LOCKED(host_func(hStream, fn, userData));
}

static CUresult copy(void *dst, const void *src, size_t bytes, CUstream s, int kind) {
  TRY(need_ctx());
  TRY(check_stream(s));
  CUdeviceptr dev = (CUdeviceptr)(uintptr_t)(kind == NODE_HTOD ? dst : src);
  if (!dst || !src || !device_range(dev, bytes)) return CUDA_ERROR_INVALID_VALUE;
  Node n = {.kind = kind, .dst = dst, .src = src, .bytes = bytes};
  return submit(s, &n);
}

CUresult CUDAAPI cuMemcpyHtoDAsync_v2(CUdeviceptr dstDevice, const void *srcHost, size_t ByteCount, CUstream hStream) {
  LOCKED(copy((void *)(uintptr_t)dstDevice, srcHost, ByteCount, hStream, NODE_HTOD));
}

CUresult CUDAAPI cuMemcpyDtoHAsync_v2(void *dstHost, CUdeviceptr srcDevice, size_t ByteCount, CUstream hStream) {
  LOCKED(copy(dstHost, (const void *)(uintptr_t)srcDevice, ByteCount, hStream, NODE_DTOH));
}

static CUresult mem_set(CUdeviceptr dst, unsigned char byte, size_t n, CUstream s) {
  TRY(need_ctx());
  TRY(check_stream(s));
  if (!device_range(dst, n)) return CUDA_ERROR_INVALID_VALUE;
  Node node = {.kind = NODE_MEMSET, .dst = (void *)(uintptr_t)dst, .bytes = n, .byte = byte};
  return submit(s, &node);
}

CUresult CUDAAPI cuMemsetD8Async(CUdeviceptr dstDevice, unsigned char uc, size_t N, CUstream hStream) {
  LOCKED(mem_set(dstDevice, uc, N, hStream));
}

static CUresult launch(CUfunction f, const unsigned grid[3], const unsigned block[3], unsigned smem, CUstream s,
                       void **params, void **extra) {
  TRY(need_ctx());
  TRY(check_stream(s));
  if (!f || f->magic != MAGIC_FUNC) return CUDA_ERROR_INVALID_HANDLE;
  if (!params || !params[0] || extra) return CUDA_ERROR_INVALID_VALUE;
  for (int i = 0; i < 3; i++)
    if (grid[i] == 0 || block[i] == 0) return CUDA_ERROR_INVALID_VALUE;
  if (grid[1] > 65535 || grid[2] > 65535 || grid[0] > 2147483647u || block[0] > 1024 || block[1] > 1024 ||
      block[2] > 64 || (unsigned long long)block[0] * block[1] * block[2] > 1024)
    return CUDA_ERROR_INVALID_VALUE;
  if (smem > 49152) return CUDA_ERROR_INVALID_VALUE;
  Node n = {.kind = NODE_LAUNCH, .f = f};
  memcpy(n.grid, grid, sizeof n.grid);
  memcpy(n.block, block, sizeof n.block);
  memcpy(&n.args, params[0], sizeof n.args);  // the kernel's one parameter, a KilnArgs
  return submit(s, &n);
}

CUresult CUDAAPI cuLaunchKernel(CUfunction f, unsigned int gridDimX, unsigned int gridDimY, unsigned int gridDimZ,
                                unsigned int blockDimX, unsigned int blockDimY, unsigned int blockDimZ,
                                unsigned int sharedMemBytes, CUstream hStream, void **kernelParams, void **extra) {
  unsigned grid[3] = {gridDimX, gridDimY, gridDimZ}, block[3] = {blockDimX, blockDimY, blockDimZ};
  LOCKED(launch(f, grid, block, sharedMemBytes, hStream, kernelParams, extra));
}

//
// Graphs: stream capture records, cuGraphLaunch replays.
//
static CUresult begin_capture(CUstream s, CUstreamCaptureMode mode) {
  TRY(need_ctx());
  if (is_default(s)) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
  if (s->magic != MAGIC_STREAM) return CUDA_ERROR_INVALID_HANDLE;
  if (s->capture) return CUDA_ERROR_ILLEGAL_STATE;
  if (mode != CU_STREAM_CAPTURE_MODE_GLOBAL && mode != CU_STREAM_CAPTURE_MODE_THREAD_LOCAL &&
      mode != CU_STREAM_CAPTURE_MODE_RELAXED)
    return CUDA_ERROR_INVALID_VALUE;
  struct CUgraph_st *g = calloc(1, sizeof *g);
  if (!g) return CUDA_ERROR_OUT_OF_MEMORY;
  g->magic = MAGIC_GRAPH;
  s->capture = g;
  s->mode = mode;
  s->invalidated = 0;
  count_capture(s, 1);
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuStreamBeginCapture_v2(CUstream hStream, CUstreamCaptureMode mode) {
  LOCKED(begin_capture(hStream, mode));
}

static CUresult end_capture(CUstream s, CUgraph *ph) {
  if (!initialized) return CUDA_ERROR_NOT_INITIALIZED;
  if (!ph) return CUDA_ERROR_INVALID_VALUE;
  if (is_default(s) || s->magic != MAGIC_STREAM) return CUDA_ERROR_INVALID_HANDLE;
  if (!s->capture) return CUDA_ERROR_ILLEGAL_STATE;
  if (s->origin) return CUDA_ERROR_STREAM_CAPTURE_UNMATCHED;
  struct CUgraph_st *g = s->capture;
  s->capture = NULL;
  count_capture(s, -1);
  // The forks leave the capture; one with work the origin never waited for was
  // not joined.
  int unjoined = 0;
  for (int i = 0; i < g->njoined; i++) {
    unjoined |= g->joined[i]->pending;
    count_capture(g->joined[i], -1);
    g->joined[i]->capture = NULL, g->joined[i]->origin = NULL, g->joined[i]->pending = 0;
  }
  g->njoined = 0;
  if (unjoined) {
    graph_free(g);
    *ph = NULL;
    return CUDA_ERROR_STREAM_CAPTURE_UNJOINED;
  }
  if (s->invalidated) {
    graph_free(g);
    *ph = NULL;
    return CUDA_ERROR_STREAM_CAPTURE_INVALIDATED;
  }
  *ph = g;
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuStreamEndCapture(CUstream hStream, CUgraph *phGraph) { LOCKED(end_capture(hStream, phGraph)); }

static CUresult instantiate(CUgraphExec *pe, CUgraph g, unsigned long long flags) {
  TRY(need_ctx());
  if (!pe) return CUDA_ERROR_INVALID_VALUE;
  if (!g || g->magic != MAGIC_GRAPH) return CUDA_ERROR_INVALID_HANDLE;
  (void)flags;
  struct CUgraphExec_st *e = calloc(1, sizeof *e);
  if (!e || !(e->nodes = malloc((size_t)(g->n ? g->n : 1) * sizeof *e->nodes))) {
    free(e);
    return CUDA_ERROR_OUT_OF_MEMORY;
  }
  memcpy(e->nodes, g->nodes, (size_t)g->n * sizeof *e->nodes);
  e->n = g->n;
  e->magic = MAGIC_EXEC;
  *pe = e;
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuGraphInstantiateWithFlags(CUgraphExec *phGraphExec, CUgraph hGraph, unsigned long long flags) {
  LOCKED(instantiate(phGraphExec, hGraph, flags));
}

static CUresult graph_launch(CUgraphExec e, CUstream s) {
  TRY(need_ctx());
  TRY(check_stream(s));
  if (!e || e->magic != MAGIC_EXEC) return CUDA_ERROR_INVALID_HANDLE;
  if (!is_default(s) && s->capture) return CUDA_ERROR_NOT_SUPPORTED;
  for (int i = 0; i < e->n; i++) TRY(submit(s, &e->nodes[i]));
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuGraphLaunch(CUgraphExec hGraphExec, CUstream hStream) { LOCKED(graph_launch(hGraphExec, hStream)); }

static CUresult exec_destroy(CUgraphExec e) {
  if (!e || e->magic != MAGIC_EXEC) return CUDA_ERROR_INVALID_HANDLE;
  e->magic = 0;
  free(e->nodes);
  free(e);
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuGraphExecDestroy(CUgraphExec hGraphExec) { LOCKED(exec_destroy(hGraphExec)); }

static CUresult graph_destroy(CUgraph g) {
  if (!g || g->magic != MAGIC_GRAPH) return CUDA_ERROR_INVALID_HANDLE;
  graph_free(g);
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuGraphDestroy(CUgraph hGraph) { LOCKED(graph_destroy(hGraph)); }

//
// Events: the host's clock when the (synchronous) stream reaches them.
//
static CUresult event_create(CUevent *pe, unsigned flags) {
  TRY(need_ctx());
  if (!pe) return CUDA_ERROR_INVALID_VALUE;
  if (flags & ~(unsigned)(CU_EVENT_BLOCKING_SYNC | CU_EVENT_DISABLE_TIMING | CU_EVENT_INTERPROCESS))
    return CUDA_ERROR_INVALID_VALUE;
  struct CUevent_st *e = calloc(1, sizeof *e);
  if (!e) return CUDA_ERROR_OUT_OF_MEMORY;
  e->magic = MAGIC_EVENT;
  e->flags = flags;
  *pe = e;
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuEventCreate(CUevent *phEvent, unsigned int Flags) { LOCKED(event_create(phEvent, Flags)); }

static CUresult event_record(CUevent e, CUstream s) {
  TRY(need_ctx());
  TRY(check_stream(s));
  if (!e || e->magic != MAGIC_EVENT) return CUDA_ERROR_INVALID_HANDLE;
  // Recorded in a capture, an event orders the graph's nodes; it is no timer.
  e->captured = !is_default(s) && s->capture;
  if (e->captured) {
    e->src = s, e->src_seq = s->seq;
    return CUDA_SUCCESS;
  }
  TRY(legacy_conflict(s));
  e->recorded = 1;
  clock_gettime(CLOCK_MONOTONIC, &e->t);
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuEventRecord(CUevent hEvent, CUstream hStream) { LOCKED(event_record(hEvent, hStream)); }

// Outside a capture the streams are synchronous, so the event has happened. In
// one, waiting on an event of the capture forks s into it; the origin waiting on a
// fork's event recorded after the fork's last work joins that fork back.
static CUresult stream_wait(CUstream s, CUevent e, unsigned flags) {
  TRY(need_ctx());
  TRY(check_stream(s));
  if (!e || e->magic != MAGIC_EVENT) return CUDA_ERROR_INVALID_HANDLE;
  if (flags != 0) return CUDA_ERROR_INVALID_VALUE;
  if (!e->captured) return CUDA_SUCCESS;
  struct CUstream_st *src = e->src;
  if (src->magic != MAGIC_STREAM || !src->capture) return CUDA_ERROR_STREAM_CAPTURE_ISOLATION;
  struct CUgraph_st *g = src->capture;
  if (is_default(s)) return CUDA_ERROR_STREAM_CAPTURE_IMPLICIT;
  if (!s->capture) {
    if (g->njoined == MAX_JOINED) return CUDA_ERROR_NOT_SUPPORTED;
    struct CUstream_st *origin = src->origin ? src->origin : src;
    s->capture = g, s->origin = origin, s->mode = origin->mode, s->pending = 0;
    g->joined[g->njoined++] = s;
    count_capture(s, 1);
    return CUDA_SUCCESS;
  }
  if (s->capture != g) return CUDA_ERROR_STREAM_CAPTURE_ISOLATION;
  if (!s->origin && src->origin && e->src_seq == src->seq) src->pending = 0;
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuStreamWaitEvent(CUstream hStream, CUevent hEvent, unsigned int Flags) {
  LOCKED(stream_wait(hStream, hEvent, Flags));
}

static CUresult event_sync(CUevent e) {
  if (!initialized) return CUDA_ERROR_NOT_INITIALIZED;
  if (!e || e->magic != MAGIC_EVENT) return CUDA_ERROR_INVALID_HANDLE;
  return e->captured ? CUDA_ERROR_CAPTURED_EVENT : CUDA_SUCCESS;
}

CUresult CUDAAPI cuEventSynchronize(CUevent hEvent) { LOCKED(event_sync(hEvent)); }

static CUresult elapsed(float *ms, CUevent a, CUevent b) {
  if (!initialized) return CUDA_ERROR_NOT_INITIALIZED;
  if (!ms) return CUDA_ERROR_INVALID_VALUE;
  if (!a || !b || a->magic != MAGIC_EVENT || b->magic != MAGIC_EVENT) return CUDA_ERROR_INVALID_HANDLE;
  if (a->captured || b->captured) return CUDA_ERROR_CAPTURED_EVENT;
  if ((a->flags | b->flags) & CU_EVENT_DISABLE_TIMING) return CUDA_ERROR_INVALID_HANDLE;
  if (!a->recorded || !b->recorded) return CUDA_ERROR_INVALID_HANDLE;
  *ms = (float)((b->t.tv_sec - a->t.tv_sec) * 1e3 + (b->t.tv_nsec - a->t.tv_nsec) / 1e6);
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuEventElapsedTime(float *pMilliseconds, CUevent hStart, CUevent hEnd) {
  LOCKED(elapsed(pMilliseconds, hStart, hEnd));
}

// CUDA 13's header names cuEventElapsedTime this; the driver exports both.
CUresult CUDAAPI cuEventElapsedTime_v2(float *pMilliseconds, CUevent hStart, CUevent hEnd) {
  LOCKED(elapsed(pMilliseconds, hStart, hEnd));
}

static CUresult event_destroy(CUevent e) {
  if (!initialized) return CUDA_ERROR_NOT_INITIALIZED;
  if (!e || e->magic != MAGIC_EVENT) return CUDA_ERROR_INVALID_HANDLE;
  e->magic = 0;
  free(e);
  return CUDA_SUCCESS;
}

CUresult CUDAAPI cuEventDestroy_v2(CUevent hEvent) { LOCKED(event_destroy(hEvent)); }
