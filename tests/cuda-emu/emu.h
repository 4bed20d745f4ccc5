// The CUDA execution model for host C++: force-included (g++ -include emu.h) when a
// generated .cu (prelude, templates, kernels) is compiled into the shared object
// that the emulating driver (driver.c) runs. It provides exactly the features
// templates/prelude.cuh lets a template use, so a template that reaches for
// anything else fails to compile here as it would be caught in review.
//
// One block runs at a time on one host thread; each CUDA thread of the block is a
// coroutine of driver.c's scheduler, which sets the built-in index variables before
// resuming it. __shared__ is `static`: every thread of the running block sees the
// same function statics, as it would see the block's shared memory.
#ifndef KILN_CUDA_EMU_H
#define KILN_CUDA_EMU_H

#ifndef __cplusplus
#error "emu.h emulates CUDA C++: compile the .cu as C++"
#endif

#include <math.h>
#include <string.h>

#define __global__ __attribute__((visibility("default")))
#define __device__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
#define __shared__ static
// __restrict__ is a GNU C++ keyword already.

struct uint3 {
  unsigned x, y, z;
};
typedef uint3 dim3;

// Defined by the driver; the scheduler rewrites them when it switches threads (the
// coroutine switch is a call, so the compiler reloads them after any barrier).
extern "C" {
extern uint3 kiln_emu_threadIdx, kiln_emu_blockIdx, kiln_emu_blockDim, kiln_emu_gridDim;
void kiln_emu_syncthreads(void);
// Exchanges 8 bytes among the lanes of mask (kind 0: xor, 1: down; arg: the lane
// mask or delta; width: the segment size).
unsigned long long kiln_emu_shfl(unsigned mask, unsigned long long bits, int kind, int arg,
                                 int width);
}
#define threadIdx kiln_emu_threadIdx
#define blockIdx kiln_emu_blockIdx
#define blockDim kiln_emu_blockDim
#define gridDim kiln_emu_gridDim

static inline void __syncthreads(void) { kiln_emu_syncthreads(); }

template <class T>
static inline T kiln_emu_shfl_as(unsigned mask, T v, int kind, int arg, int width) {
  static_assert(sizeof(T) == 4 || sizeof(T) == 8, "shuffles move 4- or 8-byte values");
  unsigned long long b = 0;
  memcpy(&b, &v, sizeof v);
  b = kiln_emu_shfl(mask, b, kind, arg, width);
  memcpy(&v, &b, sizeof v);
  return v;
}
template <class T>
static inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  return kiln_emu_shfl_as(mask, v, 0, lane_mask, width);
}
template <class T>
static inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  return kiln_emu_shfl_as(mask, v, 1, (int)delta, width);
}

// Threads never interleave inside a statement, so a plain read-modify-write is atomic.
static inline float atomicAdd(float *p, float v) {
  float old = *p;
  *p = old + v;
  return old;
}

static inline float __int_as_float(int i) {
  float f;
  memcpy(&f, &i, sizeof f);
  return f;
}
static inline int __float_as_int(float f) {
  int i;
  memcpy(&i, &f, sizeof i);
  return i;
}

// CUDA's one float math function that libm lacks.
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }

#endif
