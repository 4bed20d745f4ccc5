// The prelude of every CUDA source Kiln generates: the kernel argument block, the
// step header (as include/kiln/abi.h lays it out) and the block-wide reductions the
// templates share. Kernels are f32; indices that can pass 2^31 are long long.
//
// Everything here and in the other templates is plain CUDA C++ that NVRTC compiles
// without any header; the test suite also compiles it for the host under an
// emulation of the CUDA execution model (tests/cuda-emu/), so a template may use
// only: __global__, __device__, __forceinline__, __restrict__, __launch_bounds__,
// __shared__ (static sizes), __syncthreads, __shfl_xor_sync, __shfl_down_sync,
// atomicAdd on float, threadIdx/blockIdx/blockDim/gridDim (.x .y .z), and the
// float math functions, __int_as_float, __float_as_int and the expf logf log1pf sqrtf rsqrtf tanhf erff fabsf fmaxf fminf
// powf floorf, and KILN_INF and KILN_NAN; and the two tensor-core helpers below,
// kiln_bf16x2 and kiln_mma_bf16 (sm_80 and newer), by name.

#define KILN_MAX_SLOTS 24
#define KILN_WARP 32
#define KILN_INF __int_as_float(0x7f800000)
#define KILN_NAN __int_as_float(0x7fffffff)

struct KilnArgs {
  char *w;                  // the weights block (parameters, then optimizer state)
  char *a;                  // the arena; the step header at its start
  char *p[KILN_MAX_SLOTS];  // the kernel's buffers
};

struct KilnStepHeader {
  unsigned long long seed;
  int training;
  int step;
  float lr;
  float grad_scale;
  float bias1, bias2;
  double grad_norm;
  float loss;
  float pad_[5];
};
static_assert(sizeof(KilnStepHeader) == 64, "the header is the ABI's 64 bytes");

__device__ __forceinline__ KilnStepHeader *kiln_header(const KilnArgs &A) {
  return (KilnStepHeader *)A.a;
}

__device__ __forceinline__ float kiln_warp_sum(float v) {
  for (int o = KILN_WARP / 2; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float kiln_warp_max(float v) {
  for (int o = KILN_WARP / 2; o > 0; o /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// The sum of v over the block (every thread gets it). blockDim.x is a multiple of
// 32, at most 1024; every thread of the block must call it.
__device__ __forceinline__ float kiln_block_sum(float v) {
  __shared__ float part[32];
  int lane = threadIdx.x % KILN_WARP, warp = threadIdx.x / KILN_WARP;
  v = kiln_warp_sum(v);
  __syncthreads();  // part[] may still be read by a previous call
  if (lane == 0) part[warp] = v;
  __syncthreads();
  int nw = blockDim.x / KILN_WARP;
  v = lane < nw ? part[lane] : 0.0f;
  return kiln_warp_sum(v);
}

__device__ __forceinline__ float kiln_block_max(float v) {
  __shared__ float part[32];
  int lane = threadIdx.x % KILN_WARP, warp = threadIdx.x / KILN_WARP;
  v = kiln_warp_max(v);
  __syncthreads();
  if (lane == 0) part[warp] = v;
  __syncthreads();
  int nw = blockDim.x / KILN_WARP;
  v = lane < nw ? part[lane] : -KILN_INF;
  return kiln_warp_max(v);
}

// bf16 tensor cores (sm_80 and newer), for --gpu-matmul=bf16. Inline PTX, which the
// emulator cannot run: tests/cuda-emu/emu.h defines KILN_CUDA_EMU and both
// functions itself, the mma as a warp-collective with the same fragment layout.
#ifndef KILN_CUDA_EMU
// lo and hi rounded to bf16 (to nearest, ties to even; a NaN stays a NaN) and
// packed into one register, lo in the low 16 bits: the order of two consecutive
// elements of an mma operand fragment.
__device__ __forceinline__ unsigned kiln_bf16x2(float lo, float hi) {
  unsigned r;
  // cvt puts its first source in the upper half.
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
}

// d += A B over one warp: A 16 x 16 (row-major fragment a), B 16 x 8 (column-major
// fragment b), bf16 products summed in f32 into the 16 x 8 f32 accumulator d. Every
// lane of the warp must call it. Lane l holds, with g = l >> 2 and t = l % 4 (the
// PTX ISA's fragments for mma.m16n8k16 .bf16; "lo/hi" the halves of a register):
//   a[0] = A[g][2t, 2t+1]      a[1] = A[g+8][2t, 2t+1]
//   a[2] = A[g][2t+8, 2t+9]    a[3] = A[g+8][2t+8, 2t+9]
//   b[0] = B[2t, 2t+1][g]      b[1] = B[2t+8, 2t+9][g]
//   d[0], d[1] = D[g][2t, 2t+1]   d[2], d[3] = D[g+8][2t, 2t+1]
__device__ __forceinline__ void kiln_mma_bf16(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
               "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
#endif
