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

// templates/prelude.cuh then leaves its inline-PTX functions to this file.
#define KILN_CUDA_EMU 1

// Defined by the driver; the scheduler rewrites them when it switches threads (the
// coroutine switch is a call, so the compiler reloads them after any barrier).
extern "C" {
extern uint3 kiln_emu_threadIdx, kiln_emu_blockIdx, kiln_emu_blockDim, kiln_emu_gridDim;
void kiln_emu_syncthreads(void);
// Exchanges 8 bytes among the lanes of mask (kind 0: xor, 1: down; arg: the lane
// mask or delta; width: the segment size).
unsigned long long kiln_emu_shfl(unsigned mask, unsigned long long bits, int kind, int arg,
                                 int width);
// A warp-collective exchange: every lane of a full warp gives `bytes` bytes at
// mine and receives all 32 lanes' in all[0 .. 32 * bytes), lane l's at l * bytes.
void kiln_emu_warp_gather(const void *mine, void *all, unsigned bytes);
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

// The prelude's bf16 tensor-core helpers (PTX cvt.rn.bf16x2.f32 and
// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32).
//
// f32 to bf16, rounded to nearest, ties to even, as cvt.rn does: overflow goes to
// infinity, subnormals round like any other value, and a NaN stays a NaN (here
// always 0x7fff, the canonical one; a GPU may keep some payload bits, which no
// template looks at).
static inline unsigned kiln_emu_bf16(float x) {
  unsigned u;
  memcpy(&u, &x, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fffu;
  return (u + 0x7fffu + (u >> 16 & 1u)) >> 16;
}
static inline float kiln_emu_bf16_float(unsigned h) {
  unsigned u = (h & 0xffffu) << 16;
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}
static inline unsigned kiln_bf16x2(float lo, float hi) { return kiln_emu_bf16(lo) | kiln_emu_bf16(hi) << 16; }

// The mma as the warp computes it: the lanes' fragments are gathered, the 16 x 16
// A and 16 x 8 B rebuilt from them with the PTX ISA's fragment layout (prelude.cuh
// lists it), and each lane computes its own four elements of D = A B + C. The
// products of bf16 values are exact; they are summed in double and rounded to f32
// once (a GPU's order and internal width are unspecified; callers' tolerances
// cover any order). A kernel that puts an element in the wrong register gets a
// wrong product here as on a GPU.
static inline void kiln_mma_bf16(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
  unsigned mine[6] = {a[0], a[1], a[2], a[3], b[0], b[1]}, all[32][6];
  kiln_emu_warp_gather(mine, all, sizeof mine);
  float A[16][16], B[16][8];
  for (int l = 0; l < 32; l++) {
    int g = l >> 2, t = l % 4;
    for (int r = 0; r < 4; r++) {  // a[r]: row g (+8 when r is odd), columns 2t, 2t+1 (+8 when r >= 2)
      int row = g + (r & 1) * 8, col = 2 * t + (r >> 1) * 8;
      A[row][col] = kiln_emu_bf16_float(all[l][r]);
      A[row][col + 1] = kiln_emu_bf16_float(all[l][r] >> 16);
    }
    for (int r = 0; r < 2; r++) {  // b[r]: rows 2t, 2t+1 (+8 when r = 1), column g
      int k = 2 * t + r * 8;
      B[k][g] = kiln_emu_bf16_float(all[l][4 + r]);
      B[k + 1][g] = kiln_emu_bf16_float(all[l][4 + r] >> 16);
    }
  }
  unsigned tid = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z), g = tid % 32 >> 2,
           t = tid % 4;
  for (int i = 0; i < 4; i++) {  // d[i]: row g (+8 when i >= 2), column 2t + i % 2
    unsigned row = g + (i >> 1) * 8, col = 2 * t + (i & 1);
    double s = d[i];
    for (int k = 0; k < 16; k++) s += (double)A[row][k] * B[k][col];
    d[i] = (float)s;
  }
}

// CUDA's one float math function that libm lacks.
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }

#endif
