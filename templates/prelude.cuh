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
// powf floorf, and KILN_INF and KILN_NAN.

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
