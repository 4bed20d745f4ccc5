// Kernels for selftest.c, which compiles this file with NVRTC (the images the
// emulated driver is given) and runs its host build (g++ -include emu.h). They use
// the prelude's reductions the way the templates do, plus the cases the emulator
// must get right: barriers, shuffles in divergent warps, segmented shuffles, 3-D
// indices, atomics, bf16 rounding and the bf16 mma, and kernels that deadlock.
#include "templates/prelude.cuh"

// Every thread stores the block's sum and max of a grid-stride slice of p[0][0..n).
// p[0]: in (n), p[1]: sums (grid*block), p[2]: maxes (grid*block), p[3]: n (i64).
extern "C" __global__ void __launch_bounds__(1024) emu_reduce(KilnArgs A) {
  const float *__restrict__ in = (const float *)A.p[0];
  long long n = *(const long long *)A.p[3];
  float s = 0.0f, m = -KILN_INF;
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
       i += (long long)gridDim.x * blockDim.x) {
    s += in[i];
    m = fmaxf(m, in[i]);
  }
  s = kiln_block_sum(s);
  m = kiln_block_max(m);
  long long o = blockIdx.x * (long long)blockDim.x + threadIdx.x;
  ((float *)A.p[1])[o] = s;
  ((float *)A.p[2])[o] = m;
}

// Shared memory across barriers, over a 2-D block: out = 2 * (t + 1000 * block).
extern "C" __global__ void emu_rotate(KilnArgs A) {
  __shared__ float buf[1024];
  unsigned n = blockDim.x * blockDim.y, t = threadIdx.x + threadIdx.y * blockDim.x;
  buf[t] = (float)t + 1000.0f * blockIdx.x;
  __syncthreads();
  float v = buf[(t + 1) % n];
  __syncthreads();
  buf[t] = 2.0f * v;
  __syncthreads();
  ((float *)A.p[0])[blockIdx.x * n + t] = buf[(t + n - 1) % n];
}

// Only warps 0 and 2 shuffle, on different paths; the others never do.
extern "C" __global__ void emu_divergent(KilnArgs A) {
  int warp = threadIdx.x / KILN_WARP;
  float v = (float)threadIdx.x;
  if (warp == 0)
    v = kiln_warp_sum(v);
  else if (warp == 2)
    v = kiln_warp_max(v);
  ((float *)A.p[0])[threadIdx.x] = v;
}

// Segmented shuffles of ints: down by 5 within 16 lanes, xor by 8 within 8.
extern "C" __global__ void emu_segments(KilnArgs A) {
  int v = (int)threadIdx.x * 3;
  ((int *)A.p[0])[threadIdx.x] = __shfl_down_sync(0xffffffffu, v, 5, 16);
  ((int *)A.p[1])[threadIdx.x] = __shfl_xor_sync(0xffffffffu, v, 8, 8);
}

// Every thread of a 3-D grid of 3-D blocks stores its linear block and thread.
extern "C" __global__ void emu_index(KilnArgs A) {
  long long b = blockIdx.x + gridDim.x * (blockIdx.y + (long long)gridDim.y * blockIdx.z);
  long long t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  long long nt = blockDim.x * blockDim.y * blockDim.z;
  ((int *)A.p[0])[b * nt + t] = (int)(b * 10000 + t);
}

// Counts threads into p[0][0] and launches into the step header's step.
extern "C" __global__ void emu_count(KilnArgs A) {
  atomicAdd((float *)A.p[0], 1.0f);
  if (threadIdx.x == 0 && blockIdx.x == 0) kiln_header(A)->step += 1;
}

// The math functions the templates may use, on one input each.
extern "C" __global__ void emu_math(KilnArgs A) {
  const float *x = (const float *)A.p[0];
  float *y = (float *)A.p[1];
  if (threadIdx.x != 0) return;
  y[0] = expf(x[0]);
  y[1] = logf(x[1]);
  y[2] = log1pf(x[2]);
  y[3] = sqrtf(x[3]);
  y[4] = rsqrtf(x[4]);
  y[5] = tanhf(x[5]);
  y[6] = erff(x[6]);
  y[7] = fabsf(x[7]);
  y[8] = fminf(x[8], x[9]);
  y[9] = powf(x[10], x[11]);
  y[10] = floorf(x[12]);
  y[11] = __int_as_float(__float_as_int(x[13]) ^ 0x80000000);
  y[12] = KILN_INF;
  y[13] = KILN_NAN;
}

// bf16 rounding: p[1][i] = the bf16 pair of p[0][2i] (low half) and p[0][2i+1].
extern "C" __global__ void emu_bf16(KilnArgs A) {
  const float *x = (const float *)A.p[0];
  ((unsigned *)A.p[1])[threadIdx.x] = kiln_bf16x2(x[2 * threadIdx.x], x[2 * threadIdx.x + 1]);
}

// One mma per warp: D = A B + C with warp w's A (16 x 16, row-major) at p[0] + 256w,
// B (16 x 8, row-major) at p[1] + 128w, C and D (16 x 8) at p[2] + 128w and
// p[3] + 128w. Each lane loads its fragments by the PTX ISA's layout.
extern "C" __global__ void emu_mma(KilnArgs A) {
  int w = threadIdx.x / KILN_WARP, lane = threadIdx.x % KILN_WARP, g = lane >> 2, t = lane % 4;
  const float *a = (const float *)A.p[0] + 256 * w, *b = (const float *)A.p[1] + 128 * w;
  const float *c = (const float *)A.p[2] + 128 * w;
  float *d = (float *)A.p[3] + 128 * w;
  unsigned fa[4], fb[2];
  for (int r = 0; r < 4; r++) {
    int row = g + (r & 1) * 8, col = 2 * t + (r >> 1) * 8;
    fa[r] = kiln_bf16x2(a[row * 16 + col], a[row * 16 + col + 1]);
  }
  for (int r = 0; r < 2; r++) {
    int k = 2 * t + r * 8;
    fb[r] = kiln_bf16x2(b[k * 8 + g], b[(k + 1) * 8 + g]);
  }
  float acc[4];
  for (int i = 0; i < 4; i++) acc[i] = c[(g + (i >> 1) * 8) * 8 + 2 * t + (i & 1)];
  kiln_mma_bf16(acc, fa, fb);
  for (int i = 0; i < 4; i++) d[(g + (i >> 1) * 8) * 8 + 2 * t + (i & 1)] = acc[i];
}

// Half of each warp reaches the mma.
extern "C" __global__ void emu_bad_mma(KilnArgs A) {
  float acc[4] = {0, 0, 0, 0};
  unsigned fa[4] = {0, 0, 0, 0}, fb[2] = {0, 0};
  if (threadIdx.x % KILN_WARP < 16) kiln_mma_bf16(acc, fa, fb);
  ((float *)A.p[0])[threadIdx.x] = acc[0];
}

// Thread 5 returns before the barrier the others wait at.
extern "C" __global__ void emu_bad_sync(KilnArgs A) {
  if (threadIdx.x == 5) return;
  __syncthreads();
  ((float *)A.p[0])[threadIdx.x] = 1.0f;
}

// Half of each warp shuffles with a full mask.
extern "C" __global__ void emu_bad_shuffle(KilnArgs A) {
  float v = (float)threadIdx.x;
  if (threadIdx.x % KILN_WARP < 16) v = __shfl_xor_sync(0xffffffffu, v, 1);
  ((float *)A.p[0])[threadIdx.x] = v;
}

// Reads far outside any allocation.
extern "C" __global__ void emu_bad_access(KilnArgs A) {
  ((float *)A.p[0])[threadIdx.x + (1ll << 40)] = 1.0f;
}
