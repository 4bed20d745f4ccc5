// The emulated driver on its own: selftest.cu compiled by NVRTC into the images
// the driver is given and by g++ with emu.h into the code it runs. Each case runs
// in a child process (the driver reads its environment once, at cuInit; some cases
// must die), with the driver loaded by dlopen as runtime/cuda.c loads it.
//
// usage: cuda_emu_selftest DRIVER KERNELS_SO
#include <cuda.h>
#include <dlfcn.h>
#include <math.h>
#include <nvrtc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

// The entry points runtime/cuda.c resolves, by the names it resolves.
#define ENTRY_POINTS(X)                                                                          \
  X(cuInit) X(cuDriverGetVersion) X(cuDeviceGetCount) X(cuDeviceGet) X(cuDeviceGetAttribute)     \
  X(cuDeviceGetName) X(cuDevicePrimaryCtxRetain) X(cuDevicePrimaryCtxRelease_v2)                  \
  X(cuCtxSetCurrent) X(cuModuleLoadData) X(cuModuleUnload) X(cuModuleGetFunction)                 \
  X(cuFuncGetAttribute) X(cuMemAlloc_v2) X(cuMemFree_v2) X(cuMemcpyHtoDAsync_v2)                 \
  X(cuMemcpyDtoHAsync_v2) X(cuMemsetD8Async) X(cuStreamCreate) X(cuStreamDestroy_v2)             \
  X(cuStreamSynchronize) X(cuLaunchKernel) X(cuStreamBeginCapture_v2) X(cuStreamEndCapture)     \
  X(cuGraphInstantiateWithFlags) X(cuGraphLaunch) X(cuGraphExecDestroy) X(cuGraphDestroy)        \
  X(cuEventCreate) X(cuEventRecord) X(cuEventSynchronize) X(cuEventElapsedTime)                  \
  X(cuEventDestroy_v2) X(cuGetErrorName) X(cuGetErrorString) X(cuMemGetInfo_v2)                \
  X(cuStreamWaitEvent) X(cuStreamQuery)                                                          \
  /* and the one the stand-in NCCL (nccl.c) enqueues its sums with */                           \
  X(cuLaunchHostFunc)
#define DECLARE(n) static __typeof__(&n) p_##n;
ENTRY_POINTS(DECLARE)

static const char *driver_path, *source_dir;
static int failures;

#define CHECK(c)                                                              \
  do {                                                                        \
    if (!(c)) {                                                               \
      fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #c);   \
      failures++;                                                             \
    }                                                                         \
  } while (0)
#define CU(call) CHECK_CU(call, CUDA_SUCCESS)
#define CHECK_CU(call, want)                                                                 \
  do {                                                                                       \
    CUresult r_ = (call);                                                                    \
    if (r_ != (want)) {                                                                      \
      const char *n_ = "?";                                                                  \
      p_cuGetErrorName(r_, &n_);                                                             \
      fprintf(stderr, "%s:%d: %s returned %s (%d), not %s\n", __FILE__, __LINE__, #call, n_, \
              (int)r_, #want);                                                               \
      failures++;                                                                            \
    }                                                                                        \
  } while (0)

static void load_driver(void) {
  void *dl = dlopen(driver_path, RTLD_NOW | RTLD_LOCAL);
  if (!dl) {
    fprintf(stderr, "%s\n", dlerror());
    exit(1);
  }
#define RESOLVE(n)                                                \
  if (!(p_##n = (__typeof__(p_##n))dlsym(dl, #n))) {              \
    fprintf(stderr, "the driver does not export %s\n", #n);      \
    failures++;                                                   \
  }
  ENTRY_POINTS(RESOLVE)
  if (failures) exit(1);
}

//
// Images, compiled by NVRTC as the CUDA backend compiles a model's source.
//
static char *slurp(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    perror(path);
    exit(1);
  }
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  rewind(f);
  char *s = malloc((size_t)n + 1);
  if (fread(s, 1, (size_t)n, f) != (size_t)n) exit(1);
  s[n] = 0;
  fclose(f);
  return s;
}

// arch 80: a cubin for sm_80; -90: PTX for compute_90.
static char *compile(int arch) {
  char path[1024], opt[64];
  snprintf(path, sizeof path, "%s/templates/prelude.cuh", source_dir);
  char *prelude = slurp(path);
  snprintf(path, sizeof path, "%s/tests/cuda-emu/selftest.cu", source_dir);
  char *src = slurp(path);
  const char *hdr[] = {prelude}, *names[] = {"templates/prelude.cuh"};
  nvrtcProgram prog;
  if (nvrtcCreateProgram(&prog, src, "selftest.cu", 1, hdr, names) != NVRTC_SUCCESS) exit(1);
  snprintf(opt, sizeof opt, "--gpu-architecture=%s_%d", arch > 0 ? "sm" : "compute", abs(arch));
  const char *opts[] = {opt, "--std=c++17"};
  nvrtcResult r = nvrtcCompileProgram(prog, 2, opts);
  size_t n = 0;
  nvrtcGetProgramLogSize(prog, &n);
  char *log = malloc(n + 1);
  nvrtcGetProgramLog(prog, log);
  if (r != NVRTC_SUCCESS) {
    fprintf(stderr, "NVRTC (%s): %s\n", opt, log);
    exit(1);
  }
  char *img;
  if (arch > 0) {
    nvrtcGetCUBINSize(prog, &n);
    nvrtcGetCUBIN(prog, img = malloc(n));
  } else {
    nvrtcGetPTXSize(prog, &n);
    nvrtcGetPTX(prog, img = malloc(n));
  }
  nvrtcDestroyProgram(&prog);
  free(log);
  free(prelude);
  free(src);
  return img;
}

static char *cubin80, *cubin90, *ptx90;

// f32 rounded to bf16 (to nearest, ties to even) and back, by arithmetic rather
// than by bits as emu.h does: x's bf16 neighbours are multiples of 2^(e - 7).
static float bf16_round(float x) {
  if (x == 0 || !isfinite(x)) return x;
  int e;
  frexpf(x, &e);  // |x| in [2^(e-1), 2^e)
  return (float)(nearbyint(ldexp(x, 8 - e)) * ldexp(1.0, e - 8));  // the default mode: ties to even
}

// Uniform in [-2, 2], with all of a float's bits.
static float uniform_pm2(void) { return (float)rand() / (float)RAND_MAX * 4 - 2; }

//
// Helpers inside a child.
//
static CUcontext ctx;
static CUmodule mod;

static void start(void) {
  load_driver();
  CU(p_cuInit(0));
  CUdevice dev;
  CU(p_cuDeviceGet(&dev, 0));
  CU(p_cuDevicePrimaryCtxRetain(&ctx, dev));
  CU(p_cuCtxSetCurrent(ctx));
}

static CUfunction function(const char *name) {
  CUfunction f = NULL;
  CU(p_cuModuleGetFunction(&f, mod, name));
  if (!f) exit(1);
  return f;
}

// KilnArgs (templates/prelude.cuh): w, a, p[24].
typedef struct {
  void *w, *a, *p[24];
} Args;

static void *dev_alloc(size_t bytes) {
  CUdeviceptr p = 0;
  CU(p_cuMemAlloc_v2(&p, bytes));
  return (void *)(uintptr_t)p;
}

static void launch(CUstream s, CUfunction f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                   unsigned bz, Args *a) {
  void *params[] = {a};
  CU(p_cuLaunchKernel(f, gx, gy, gz, bx, by, bz, 0, s, params, NULL));
}

//
// The cases.
//
static void case_api(void) {
  load_driver();
  const char *s;
  CU(p_cuGetErrorName(CUDA_ERROR_INVALID_VALUE, &s));
  CHECK(!strcmp(s, "CUDA_ERROR_INVALID_VALUE"));
  CU(p_cuGetErrorString(CUDA_ERROR_NO_BINARY_FOR_GPU, &s));
  CHECK(!strcmp(s, "no kernel image is available for execution on the device"));
  CHECK_CU(p_cuGetErrorName((CUresult)12345, &s), CUDA_ERROR_INVALID_VALUE);
  int n = -1;
  CHECK_CU(p_cuDeviceGetCount(&n), CUDA_ERROR_NOT_INITIALIZED);
  CU(p_cuDriverGetVersion(&n));
  CHECK(n == CUDA_VERSION);
  CU(p_cuInit(0));
  CU(p_cuDeviceGetCount(&n));
  CHECK(n == 1);
  CUdevice dev;
  CHECK_CU(p_cuDeviceGet(&dev, 1), CUDA_ERROR_INVALID_DEVICE);
  CU(p_cuDeviceGet(&dev, 0));
  char name[64];
  CU(p_cuDeviceGetName(name, sizeof name, dev));
  CHECK(!strcmp(name, "Kiln CUDA emulator"));
  int major, minor, warp;
  CU(p_cuDeviceGetAttribute(&major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev));
  CU(p_cuDeviceGetAttribute(&minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev));
  CU(p_cuDeviceGetAttribute(&warp, CU_DEVICE_ATTRIBUTE_WARP_SIZE, dev));
  CHECK(major == 8 && minor == 6 && warp == 32);  // KILN_CUDA_EMU_CC=86
  CUdeviceptr p;
  CHECK_CU(p_cuMemAlloc_v2(&p, 64), CUDA_ERROR_INVALID_CONTEXT);
  CU(p_cuDevicePrimaryCtxRetain(&ctx, dev));
  CU(p_cuCtxSetCurrent(ctx));
  size_t free0, total;
  CU(p_cuMemGetInfo_v2(&free0, &total));
  CHECK(total == 64u << 20 && free0 == total);  // KILN_CUDA_EMU_MEM_MIB=64
  CHECK_CU(p_cuMemAlloc_v2(&p, 65u << 20), CUDA_ERROR_OUT_OF_MEMORY);
  CU(p_cuMemAlloc_v2(&p, 1000));
  CHECK(p % 256 == 0);
  float f[250], g[250];
  CU(p_cuMemcpyDtoHAsync_v2(g, p, sizeof g, NULL));
  CHECK(isnan(g[0]) && isnan(g[249]));  // device memory starts as garbage, here NaN
  for (int i = 0; i < 250; i++) f[i] = (float)i;
  CU(p_cuMemcpyHtoDAsync_v2(p, f, sizeof f, NULL));
  CU(p_cuMemsetD8Async(p, 0, 8, NULL));
  CU(p_cuMemcpyDtoHAsync_v2(g, p, sizeof g, NULL));
  CHECK(g[0] == 0 && g[1] == 0 && g[2] == 2 && g[249] == 249);
  CHECK_CU(p_cuMemcpyHtoDAsync_v2(p + 8, f, sizeof f, NULL), CUDA_ERROR_INVALID_VALUE);  // past the end
  CU(p_cuMemFree_v2(p));
  CHECK_CU(p_cuMemFree_v2(p), CUDA_ERROR_INVALID_VALUE);
  CU(p_cuDevicePrimaryCtxRelease_v2(dev));
}

static void case_kernels(void) {
  start();
  CU(p_cuModuleLoadData(&mod, cubin90));
  int regs;
  CU(p_cuFuncGetAttribute(&regs, CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK, function("emu_reduce")));
  CHECK(regs == 1024);
  CUfunction nope;
  CHECK_CU(p_cuModuleGetFunction(&nope, mod, "emu_missing"), CUDA_ERROR_NOT_FOUND);
  CUstream s;
  CU(p_cuStreamCreate(&s, 0));
  Args a = {0};

  // Block reductions over 1000 blocks' slices, 256 and 1024 threads.
  enum { N = 100003 };
  float *in = malloc(N * sizeof *in), *out = malloc(1024 * 64 * sizeof *out);
  srand(1);
  for (int i = 0; i < N; i++) in[i] = (float)(rand() % 2001 - 1000) / 64.0f;  // exact sums
  long long n = N;
  a.p[0] = dev_alloc(N * sizeof *in);
  a.p[1] = dev_alloc(1024 * 64 * sizeof *out);
  a.p[2] = dev_alloc(1024 * 64 * sizeof *out);
  a.p[3] = dev_alloc(sizeof n);
  CU(p_cuMemcpyHtoDAsync_v2((CUdeviceptr)(uintptr_t)a.p[0], in, N * sizeof *in, s));
  CU(p_cuMemcpyHtoDAsync_v2((CUdeviceptr)(uintptr_t)a.p[3], &n, sizeof n, s));
  unsigned threads[] = {256, 1024, 32};
  for (int k = 0; k < 3; k++) {
    unsigned nb = 64, nt = threads[k];
    struct timespec t0, t1;
    launch(s, function("emu_reduce"), nb, 1, 1, nt, 1, 1, &a);  // makes the fibers
    clock_gettime(CLOCK_MONOTONIC, &t0);
    launch(s, function("emu_reduce"), nb, 1, 1, nt, 1, 1, &a);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    printf("emu_reduce, %u blocks of %u threads (24 barriers each): %.1f ms\n", nb, nt,
           (t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_nsec - t0.tv_nsec) / 1e6);
    CU(p_cuMemcpyDtoHAsync_v2(out, (CUdeviceptr)(uintptr_t)a.p[1], nb * nt * sizeof *out, s));
    int bad = 0;
    for (unsigned b = 0; b < nb; b++) {
      float want = 0;
      for (long long i = b * nt; i < N; i += (long long)nb * nt)
        for (unsigned t = 0; t < nt && i + t < N; t++) want += in[i + t];
      for (unsigned t = 0; t < nt; t++) bad += out[b * nt + t] != want;
    }
    CHECK(bad == 0);
    CU(p_cuMemcpyDtoHAsync_v2(out, (CUdeviceptr)(uintptr_t)a.p[2], nb * nt * sizeof *out, s));
    bad = 0;
    for (unsigned b = 0; b < nb; b++) {
      float want = -INFINITY;
      for (long long i = b * nt; i < N; i += (long long)nb * nt)
        for (unsigned t = 0; t < nt && i + t < N; t++) want = fmaxf(want, in[i + t]);
      for (unsigned t = 0; t < nt; t++) bad += out[b * nt + t] != want;
    }
    CHECK(bad == 0);
  }

  // Barriers and shared memory over 2-D blocks of 8 x 24 threads.
  launch(s, function("emu_rotate"), 5, 1, 1, 8, 24, 1, &a);
  CU(p_cuMemcpyDtoHAsync_v2(out, (CUdeviceptr)(uintptr_t)a.p[0], 5 * 192 * sizeof *out, s));
  int bad = 0;
  for (int i = 0; i < 5 * 192; i++) bad += out[i] != 2.0f * (float)(i % 192 + 1000 * (i / 192));
  CHECK(bad == 0);

  // Shuffles in warps 0 and 2 only.
  launch(s, function("emu_divergent"), 1, 1, 1, 128, 1, 1, &a);
  CU(p_cuMemcpyDtoHAsync_v2(out, (CUdeviceptr)(uintptr_t)a.p[0], 128 * sizeof *out, s));
  bad = 0;
  for (int i = 0; i < 128; i++) bad += out[i] != (i < 32 ? 496.0f : i / 32 == 2 ? 95.0f : (float)i);
  CHECK(bad == 0);

  // Segmented shuffles.
  launch(s, function("emu_segments"), 1, 1, 1, 64, 1, 1, &a);
  int down[64], xr[64];
  CU(p_cuMemcpyDtoHAsync_v2(down, (CUdeviceptr)(uintptr_t)a.p[0], sizeof down, s));
  CU(p_cuMemcpyDtoHAsync_v2(xr, (CUdeviceptr)(uintptr_t)a.p[1], sizeof xr, s));
  bad = 0;
  for (int i = 0; i < 64; i++) {
    bad += down[i] != 3 * (i % 16 + 5 < 16 ? i + 5 : i);
    // A lane may read an earlier segment but not a later one (PTX shfl.bfly's rule).
    bad += xr[i] != 3 * (i % 16 >= 8 ? i - 8 : i);
  }
  CHECK(bad == 0);

  // 3-D grid of 3-D blocks.
  launch(s, function("emu_index"), 3, 2, 2, 4, 3, 2, &a);
  int idx[12 * 24];
  CU(p_cuMemcpyDtoHAsync_v2(idx, (CUdeviceptr)(uintptr_t)a.p[0], sizeof idx, s));
  bad = 0;
  for (int i = 0; i < 12 * 24; i++) bad += idx[i] != i / 24 * 10000 + i % 24;
  CHECK(bad == 0);

  // Math.
  float x[14] = {0.5f, 2.0f, 0.25f, 9.0f, 4.0f, 0.3f, 0.7f, -3.5f, 1.0f, -2.0f, 2.0f, 10.0f, -1.5f, 3.0f}, y[14];
  CU(p_cuMemcpyHtoDAsync_v2((CUdeviceptr)(uintptr_t)a.p[0], x, sizeof x, s));
  launch(s, function("emu_math"), 1, 1, 1, 32, 1, 1, &a);
  CU(p_cuMemcpyDtoHAsync_v2(y, (CUdeviceptr)(uintptr_t)a.p[1], sizeof y, s));
  // Against constants (to float precision), not the host's libm, which the compiler
  // may fold more exactly.
  float want[8] = {1.64872127f, 0.693147181f, 0.223143551f, 3.0f, 0.5f, 0.291312612f, 0.677801194f, 3.5f};
  for (int i = 0; i < 8; i++) CHECK(fabsf(y[i] - want[i]) <= 2e-7f * want[i]);
  CHECK(y[8] == -2.0f && y[9] == 1024.0f && y[10] == -2.0f && y[11] == -3.0f);
  CHECK(isinf(y[12]) && y[12] > 0 && isnan(y[13]));

  // bf16 rounding against known bit patterns: ties to even (1 + 2^-8 down to 1,
  // 1 + 3 * 2^-8 up to 1 + 2^-6), a carry into the exponent, overflow to infinity,
  // signed zero, a subnormal, infinities and NaNs.
  static const unsigned bits_in[16] = {0x3f800000, 0x3f808000, 0x3f818000, 0x3f80ffff,
                                       0x3fffffff, 0x7f7fffff, 0x80000000, 0x00000001,
                                       0x7f800000, 0xff800000, 0x7fc00000, 0xffc00001,
                                       0x7f800001, 0x3eaaaaab, 0xc0490fdb, 0x00ff8000};
  static const unsigned short bf_want[16] = {0x3f80, 0x3f80, 0x3f82, 0x3f81, 0x4000, 0x7f80, 0x8000,
                                             0x0000, 0x7f80, 0xff80, 0x7fff, 0x7fff, 0x7fff, 0x3eab,
                                             0xc049, 0x0100};
  CU(p_cuMemcpyHtoDAsync_v2((CUdeviceptr)(uintptr_t)a.p[0], bits_in, sizeof bits_in, s));
  launch(s, function("emu_bf16"), 1, 1, 1, 8, 1, 1, &a);
  unsigned pairs[8];
  CU(p_cuMemcpyDtoHAsync_v2(pairs, (CUdeviceptr)(uintptr_t)a.p[1], sizeof pairs, s));
  bad = 0;
  for (int i = 0; i < 16; i++) {
    unsigned got = pairs[i / 2] >> (i % 2 * 16) & 0xffff;
    if (got != bf_want[i])
      fprintf(stderr, "bf16 of %#010x: got %#06x, want %#06x\n", bits_in[i], got, bf_want[i]);
    bad += got != bf_want[i];
  }
  CHECK(bad == 0);

  // The mma of two warps (each its own matrices) against a plain loop over the
  // operands rounded to bf16. Operands are multiples of 2^-6 in [-2, 2) with
  // few enough bits to be exact in bf16, and C multiples of 2^-6 too: every
  // product and partial sum is exact in f32, so any summation order gives the
  // same D and the comparison is exact. A second round with full-precision
  // operands checks the rounding of the inputs (to within f32 summation order).
  enum { W = 2 };
  float *ma = malloc(W * 256 * sizeof *ma), *mb = malloc(W * 128 * sizeof *mb);
  float *mc = malloc(W * 128 * sizeof *mc), *md = malloc(W * 128 * sizeof *md);
  CU(p_cuMemFree_v2((CUdeviceptr)(uintptr_t)a.p[3]));  // n's 8 bytes: too small for D
  a.p[3] = dev_alloc(W * 128 * sizeof *md);
  for (int round = 0; round < 2; round++) {
    for (int i = 0; i < W * 256; i++) ma[i] = round ? uniform_pm2() : (float)(rand() % 256 - 128) / 64;
    for (int i = 0; i < W * 128; i++) mb[i] = round ? uniform_pm2() : (float)(rand() % 256 - 128) / 64;
    for (int i = 0; i < W * 128; i++) mc[i] = (float)(rand() % 256 - 128) / 64;
    CU(p_cuMemcpyHtoDAsync_v2((CUdeviceptr)(uintptr_t)a.p[0], ma, W * 256 * sizeof *ma, s));
    CU(p_cuMemcpyHtoDAsync_v2((CUdeviceptr)(uintptr_t)a.p[1], mb, W * 128 * sizeof *mb, s));
    CU(p_cuMemcpyHtoDAsync_v2((CUdeviceptr)(uintptr_t)a.p[2], mc, W * 128 * sizeof *mc, s));
    launch(s, function("emu_mma"), 1, 1, 1, 32 * W, 1, 1, &a);
    CU(p_cuMemcpyDtoHAsync_v2(md, (CUdeviceptr)(uintptr_t)a.p[3], W * 128 * sizeof *md, s));
    bad = 0;
    for (int w = 0; w < W; w++)
      for (int i = 0; i < 16; i++)
        for (int j = 0; j < 8; j++) {
          double want = mc[w * 128 + i * 8 + j], mag = fabs(want);
          for (int k = 0; k < 16; k++) {
            double p = (double)bf16_round(ma[w * 256 + i * 16 + k]) * bf16_round(mb[w * 128 + k * 8 + j]);
            want += p;
            mag += fabs(p);
          }
          double got = md[w * 128 + i * 8 + j];
          // Round 1: 17 f32 roundings at most, each within 2^-24 of the terms' magnitude.
          if (round ? fabs(got - want) > 17 * 0x1p-24 * mag : got != want) {
            if (bad++ < 5)
              fprintf(stderr, "mma round %d warp %d D[%d][%d]: got %.9g, want %.9g\n", round, w, i, j, got, want);
          }
        }
    CHECK(bad == 0);
  }
  free(ma);
  free(mb);
  free(mc);
  free(md);
  CU(p_cuStreamSynchronize(s));
  CU(p_cuStreamDestroy_v2(s));
  CU(p_cuModuleUnload(mod));
  free(in);
  free(out);
}

static void case_graph(void) {
  start();
  CU(p_cuModuleLoadData(&mod, cubin90));
  CUstream s;
  CU(p_cuStreamCreate(&s, 0));
  Args a = {0};
  a.a = dev_alloc(64);                 // the step header
  a.p[0] = dev_alloc(sizeof(float));
  CU(p_cuMemsetD8Async((CUdeviceptr)(uintptr_t)a.a, 0, 64, s));
  CU(p_cuMemsetD8Async((CUdeviceptr)(uintptr_t)a.p[0], 0, 4, s));
  CUfunction f = function("emu_count");
  float *count = a.p[0];
  CUevent e0, e1;
  CU(p_cuEventCreate(&e0, 0));
  CU(p_cuEventCreate(&e1, 0));
  CU(p_cuStreamBeginCapture_v2(s, CU_STREAM_CAPTURE_MODE_GLOBAL));
  launch(s, f, 3, 1, 1, 64, 1, 1, &a);
  a.p[0] = (char *)a.a + 32;  // the graph keeps the arguments of the first launch
  launch(s, f, 1, 1, 1, 32, 1, 1, &a);
  CUdeviceptr p;
  CHECK_CU(p_cuMemAlloc_v2(&p, 64), CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
  CHECK_CU(p_cuMemsetD8Async((CUdeviceptr)(uintptr_t)a.a, 0, 4, NULL), CUDA_ERROR_STREAM_CAPTURE_IMPLICIT);
  CU(p_cuEventRecord(e0, s));
  CHECK_CU(p_cuEventSynchronize(e0), CUDA_ERROR_CAPTURED_EVENT);
  CUgraph g;
  CU(p_cuStreamEndCapture(s, &g));
  CHECK_CU(p_cuStreamEndCapture(s, &g), CUDA_ERROR_ILLEGAL_STATE);
  unsigned char hdr[64];
  int step;
  CU(p_cuMemcpyDtoHAsync_v2(hdr, (CUdeviceptr)(uintptr_t)a.a, 64, s));
  memcpy(&step, hdr + 12, sizeof step);  // KilnStepHeader.step
  CHECK(step == 0);                      // capturing ran nothing
  CUgraphExec e;
  CU(p_cuGraphInstantiateWithFlags(&e, g, 0));
  CU(p_cuGraphDestroy(g));
  CU(p_cuEventRecord(e0, s));
  for (int i = 0; i < 3; i++) CU(p_cuGraphLaunch(e, s));
  CU(p_cuEventRecord(e1, s));
  CU(p_cuEventSynchronize(e1));
  float ms = -1, n0, n1;
  CU(p_cuEventElapsedTime(&ms, e0, e1));
  CHECK(ms >= 0);
  CU(p_cuMemcpyDtoHAsync_v2(hdr, (CUdeviceptr)(uintptr_t)a.a, 64, s));
  CU(p_cuMemcpyDtoHAsync_v2(&n0, (CUdeviceptr)(uintptr_t)count, sizeof n0, s));
  memcpy(&step, hdr + 12, sizeof step);
  memcpy(&n1, hdr + 32, sizeof n1);
  CHECK(step == 6);  // two launches a replay, three replays
  CHECK(n0 == 3 * 192.0f && n1 == 3 * 32.0f);
  CU(p_cuGraphExecDestroy(e));
  CU(p_cuEventDestroy_v2(e0));
  CU(p_cuEventDestroy_v2(e1));
  CU(p_cuStreamDestroy_v2(s));
}

// Forks and joins in a capture, and host functions, as the runtime's NCCL stream
// and the stand-in NCCL use them.
static char order[64];
static void note(void *c) {
  size_t n = strlen(order);
  if (n + 1 < sizeof order) order[n] = *(const char *)c;
}
static CUresult from_host_fn = CUDA_SUCCESS;
static void call_driver(void *s) { from_host_fn = p_cuStreamQuery((CUstream)s); }

static void case_fork(void) {
  start();
  CUstream s, t;
  CU(p_cuStreamCreate(&s, CU_STREAM_NON_BLOCKING));
  CU(p_cuStreamCreate(&t, CU_STREAM_NON_BLOCKING));
  CUevent e0, e1;
  CU(p_cuEventCreate(&e0, CU_EVENT_DISABLE_TIMING));
  CU(p_cuEventCreate(&e1, CU_EVENT_DISABLE_TIMING));
  static char a = 'a', b = 'b', c = 'c', d = 'd', x = 'x';
  // Outside a capture everything has happened: waits and queries succeed.
  CU(p_cuEventRecord(e0, s));
  CU(p_cuStreamWaitEvent(t, e0, 0));
  CHECK_CU(p_cuStreamWaitEvent(t, e0, 7), CUDA_ERROR_INVALID_VALUE);
  CU(p_cuStreamQuery(s));
  // Fork t from s, join it back: the graph replays every node, in order.
  CU(p_cuStreamBeginCapture_v2(s, CU_STREAM_CAPTURE_MODE_THREAD_LOCAL));
  CU(p_cuLaunchHostFunc(s, note, &a));
  CU(p_cuEventRecord(e0, s));
  CU(p_cuStreamWaitEvent(t, e0, 0));
  CU(p_cuLaunchHostFunc(t, note, &b));
  CU(p_cuLaunchHostFunc(s, note, &c));
  CUgraph g = NULL;
  CHECK_CU(p_cuStreamEndCapture(t, &g), CUDA_ERROR_STREAM_CAPTURE_UNMATCHED);
  CU(p_cuEventRecord(e1, t));
  CU(p_cuStreamWaitEvent(s, e1, 0));
  CU(p_cuLaunchHostFunc(s, note, &d));
  CU(p_cuStreamEndCapture(s, &g));
  CHECK(order[0] == 0);  // capturing ran nothing
  CUgraphExec ex;
  CU(p_cuGraphInstantiateWithFlags(&ex, g, 0));
  CU(p_cuGraphDestroy(g));
  CU(p_cuGraphLaunch(ex, s));
  CU(p_cuGraphLaunch(ex, s));
  CU(p_cuStreamSynchronize(s));
  CHECK(!strcmp(order, "abcdabcd"));
  CU(p_cuGraphExecDestroy(ex));
  // After the capture t runs its work at once again.
  memset(order, 0, sizeof order);
  CU(p_cuLaunchHostFunc(t, note, &x));
  CHECK(!strcmp(order, "x"));
  // A fork with work the origin never waited for.
  CU(p_cuStreamBeginCapture_v2(s, CU_STREAM_CAPTURE_MODE_THREAD_LOCAL));
  CU(p_cuEventRecord(e0, s));
  CU(p_cuStreamWaitEvent(t, e0, 0));
  CU(p_cuEventRecord(e1, t));
  CU(p_cuLaunchHostFunc(t, note, &b));  // after e1: the join below misses it
  CU(p_cuStreamWaitEvent(s, e1, 0));
  CHECK_CU(p_cuStreamEndCapture(s, &g), CUDA_ERROR_STREAM_CAPTURE_UNJOINED);
  CHECK(g == NULL);
  // Asking whether a capturing stream is done breaks the capture.
  CU(p_cuStreamBeginCapture_v2(s, CU_STREAM_CAPTURE_MODE_THREAD_LOCAL));
  CHECK_CU(p_cuStreamQuery(s), CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED);
  CHECK_CU(p_cuStreamEndCapture(s, &g), CUDA_ERROR_STREAM_CAPTURE_INVALIDATED);
  // A host function may not call the driver.
  CU(p_cuLaunchHostFunc(s, call_driver, s));
  CHECK(from_host_fn == CUDA_ERROR_NOT_PERMITTED);
  CU(p_cuEventDestroy_v2(e0));
  CU(p_cuEventDestroy_v2(e1));
  CU(p_cuStreamDestroy_v2(t));
  CU(p_cuStreamDestroy_v2(s));
}

// Which images a device of KILN_CUDA_EMU_CC runs: argv-free, so the expectations
// come from the environment the parent sets (EXPECT: "cubin80 cubin90 ptx90" as 0/1).
static void case_images(void) {
  start();
  const char *want = getenv("EXPECT");
  char *img[] = {cubin80, cubin90, ptx90};
  for (int i = 0; i < 3; i++) {
    CUmodule m;
    CUresult r = p_cuModuleLoadData(&m, img[i]);
    CUresult w = want[2 * i] == '1' ? CUDA_SUCCESS : want[2 * i] == 'v' ? CUDA_ERROR_UNSUPPORTED_PTX_VERSION
                                                                          : CUDA_ERROR_NO_BINARY_FOR_GPU;
    if (r != w) {
      fprintf(stderr, "image %d: got %d, want %d\n", i, (int)r, (int)w);
      failures++;
    }
    if (r == CUDA_SUCCESS) {
      CUfunction f;
      CU(p_cuModuleGetFunction(&f, m, "emu_rotate"));
      CU(p_cuModuleUnload(m));
    }
  }
  CUmodule m;
  CHECK_CU(p_cuModuleLoadData(&m, "\x01garbage"), CUDA_ERROR_INVALID_IMAGE);
}

static void case_no_device(void) {
  load_driver();
  CHECK_CU(p_cuInit(0), CUDA_ERROR_NO_DEVICE);
}

static void run_kernel(const char *name) {
  start();
  CU(p_cuModuleLoadData(&mod, cubin90));
  Args a = {0};
  a.p[0] = dev_alloc(4096);
  launch(NULL, function(name), 2, 1, 1, 64, 1, 1, &a);
}
static void case_bad_sync(void) { run_kernel("emu_bad_sync"); }
static void case_bad_shuffle(void) { run_kernel("emu_bad_shuffle"); }
static void case_bad_access(void) { run_kernel("emu_bad_access"); }
static void case_bad_mma(void) { run_kernel("emu_bad_mma"); }

// Runs fn in a child with the environment env ("NAME=value" strings, NULL-ended);
// returns its wait status and its stderr in err.
static int child(void (*fn)(void), const char *const *env, char *err, size_t errlen) {
  fflush(NULL);
  FILE *tmp = tmpfile();
  pid_t pid = fork();
  if (pid == 0) {
    failures = 0;
    dup2(fileno(tmp), 2);
    for (; *env; env++) {
      char name[64];
      const char *eq = strchr(*env, '=');
      snprintf(name, sizeof name, "%.*s", (int)(eq - *env), *env);
      setenv(name, eq + 1, 1);
    }
    fn();
    fflush(NULL);
    _exit(failures ? 1 : 0);
  }
  int status;
  waitpid(pid, &status, 0);
  rewind(tmp);
  size_t n = fread(err, 1, errlen - 1, tmp);
  err[n] = 0;
  fclose(tmp);
  return status;
}

static void expect_ok(const char *what, void (*fn)(void), const char *const *env, const char *in_stderr) {
  char err[8192];
  int st = child(fn, env, err, sizeof err);
  int ok = WIFEXITED(st) && WEXITSTATUS(st) == 0 && (!in_stderr || strstr(err, in_stderr));
  printf("%s %s\n", ok ? "ok  " : "FAIL", what);
  if (!ok) {
    printf("  status %#x, stderr:\n%s\n", st, err);
    if (in_stderr) printf("  expected on stderr: %s\n", in_stderr);
    failures++;
  }
}

static void expect_death(const char *what, void (*fn)(void), int sig, const char *in_stderr) {
  char err[8192];
  const char *env[] = {NULL};
  int st = child(fn, env, err, sizeof err);
  int ok = WIFSIGNALED(st) && WTERMSIG(st) == sig && strstr(err, in_stderr);
  printf("%s %s\n", ok ? "ok  " : "FAIL", what);
  if (!ok) {
    printf("  status %#x (want signal %d), stderr:\n%s\n  expected on stderr: %s\n", st, sig, err, in_stderr);
    failures++;
  }
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: %s DRIVER KERNELS_SO\n", argv[0]);
    return 2;
  }
  driver_path = argv[1];
  source_dir = KILN_SOURCE_DIR;
  setenv("KILN_CUDA_EMU_KERNELS", argv[2], 1);
  cubin80 = compile(80);
  cubin90 = compile(90);
  ptx90 = compile(-90);

  expect_ok("driver API", case_api, (const char *[]){"KILN_CUDA_EMU_CC=86", "KILN_CUDA_EMU_MEM_MIB=64", NULL},
            NULL);
  expect_ok("kernels", case_kernels, (const char *[]){NULL}, NULL);
  expect_ok("kernels, blocks and threads in reverse", case_kernels,
            (const char *[]){"KILN_CUDA_EMU_ORDER=reverse", NULL}, NULL);
  expect_ok("graphs and events", case_graph, (const char *[]){NULL}, NULL);
  expect_ok("forks and joins in a capture, host functions", case_fork, (const char *[]){NULL}, NULL);
  expect_ok("images on compute 8.6", case_images,
            (const char *[]){"KILN_CUDA_EMU_CC=86", "EXPECT=1 0 0", "KILN_CUDA_EMU_VERBOSE=1", NULL},
            "kiln-cuda-emu: loaded a cubin for sm_80");
  expect_ok("images on compute 9.0", case_images,
            (const char *[]){"KILN_CUDA_EMU_CC=90", "EXPECT=0 1 1", "KILN_CUDA_EMU_VERBOSE=1", NULL},
            "kiln-cuda-emu: JIT-compiled PTX for compute_90");
  expect_ok("images on compute 10.0", case_images,
            (const char *[]){"KILN_CUDA_EMU_CC=100", "EXPECT=0 0 1", "KILN_CUDA_EMU_VERBOSE=1", NULL},
            "kiln-cuda-emu: refused a cubin for sm_90 on a compute 10.0 device");
  expect_ok("PTX on an older driver", case_images,
            (const char *[]){"KILN_CUDA_EMU_CC=100", "EXPECT=0 0 v", "KILN_CUDA_EMU_DRIVER_VERSION=12080", NULL},
            NULL);
  expect_ok("no device", case_no_device, (const char *[]){"KILN_CUDA_EMU_DEVICES=0", NULL}, NULL);
  expect_death("a thread returns before __syncthreads", case_bad_sync, SIGABRT,
               "deadlock in kernel emu_bad_sync, block (0,0,0) of (2,1,1), 64 threads: 63 wait at "
               "__syncthreads, 0 wait at a warp shuffle, 1 have returned");
  expect_death("half a warp shuffles", case_bad_shuffle, SIGABRT, "deadlock in kernel emu_bad_shuffle");
  expect_death("half a warp reaches an mma", case_bad_mma, SIGABRT,
               "warp 0: lanes 0x0000ffff of 0xffffffff reached the mma");
  expect_death("an access outside memory", case_bad_access, SIGSEGV,
               "segmentation fault at 0x");
  printf("%s\n", failures ? "FAILED" : "all passed");
  return failures != 0;
}
