// Reductions, softmax, layernorm and the losses. An input reaches these templates
// as a functor x(i) -> float: element i (flat, in the input's own shape) loaded,
// or computed there when an elementwise producer is fused into the kernel
// (passes/fuse.c). Row ops give a row to a block (or a warp) and use the
// prelude's block reductions; the per-row arithmetic is the CPU backend's.

// max that keeps a NaN (the interpreter's max_nan).
__device__ __forceinline__ float kiln_max_nan(float a, float b) { return b > a || b != b ? b : a; }

__device__ __forceinline__ float kiln_block_max_nan(float v) {
  __shared__ float part[32];
  int lane = threadIdx.x % KILN_WARP, warp = threadIdx.x / KILN_WARP;
  for (int o = KILN_WARP / 2; o > 0; o /= 2) v = kiln_max_nan(v, __shfl_xor_sync(0xffffffffu, v, o));
  __syncthreads();
  if (lane == 0) part[warp] = v;
  __syncthreads();
  int nw = blockDim.x / KILN_WARP;
  v = lane < nw ? part[lane] : -KILN_INF;
  for (int o = KILN_WARP / 2; o > 0; o /= 2) v = kiln_max_nan(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// The sum of a double over the block, in a fixed order (deterministic). Every
// thread calls it; thread 0 gets the total. blockDim.x is at most 1024.
__device__ __forceinline__ double kiln_block_sum_f64(double v) {
  __shared__ double part[1024];
  __syncthreads();
  part[threadIdx.x] = v;
  __syncthreads();
  for (int s = 512; s > 0; s /= 2) {
    if ((int)threadIdx.x < s && threadIdx.x + s < blockDim.x) part[threadIdx.x] += part[threadIdx.x + s];
    __syncthreads();
  }
  return part[0];
}

//
// sum, mean, max over any axes. An output element o reads the input at f(o) + g(r)
// for r over its COUNT reduced elements (f, g: the kept and reduced coordinates at
// the input's strides).
//
enum { KILN_RED_SUM, KILN_RED_MEAN, KILN_RED_MAX };

template <int OP>
__device__ __forceinline__ float kiln_red_step(float acc, float v) {
  return OP == KILN_RED_MAX ? kiln_max_nan(acc, v) : acc + v;
}

template <int OP, long long COUNT>
__device__ __forceinline__ float kiln_red_final(float acc) {
  return OP == KILN_RED_MEAN ? acc / (float)COUNT : acc;
}

// One thread per output element, adding its reduced elements in input order as
// the CPU backend does: for reductions that keep the input's last axis, so
// neighbouring threads read neighbouring elements.
template <int OP, long long ON, long long COUNT, typename X, typename F, typename G>
__device__ __forceinline__ void kiln_reduce_serial(X x, F f, G g, float *y) {
  for (long long o = (long long)blockIdx.x * blockDim.x + threadIdx.x; o < ON;
       o += (long long)gridDim.x * blockDim.x) {
    long long base = f(o);
    float acc = OP == KILN_RED_MAX ? -KILN_INF : 0.0f;
    for (long long r = 0; r < COUNT; r++) acc = kiln_red_step<OP>(acc, x(base + g(r)));
    y[o] = kiln_red_final<OP, COUNT>(acc);
  }
}

// One block per output element, its threads along the reduced elements: for
// reductions over the last axis.
template <int OP, long long ON, long long COUNT, typename X, typename F, typename G>
__device__ __forceinline__ void kiln_reduce_block(X x, F f, G g, float *y) {
  for (long long o = blockIdx.x; o < ON; o += gridDim.x) {
    long long base = f(o);
    float acc = OP == KILN_RED_MAX ? -KILN_INF : 0.0f;
    for (long long r = threadIdx.x; r < COUNT; r += blockDim.x) acc = kiln_red_step<OP>(acc, x(base + g(r)));
    acc = OP == KILN_RED_MAX ? kiln_block_max_nan(acc) : kiln_block_sum(acc);
    if (threadIdx.x == 0) y[o] = kiln_red_final<OP, COUNT>(acc);
  }
}

//
// softmax / log_softmax along an axis of LEN, lanes INNER apart.
//
// The last axis (INNER == 1): a block per row. softmax = exp(x - m) / sum,
// log_softmax = x - (m + log(sum)), as the CPU backend.
template <bool LOG, long long ROWS, long long LEN, typename X>
__device__ __forceinline__ void kiln_softmax_rows(X x, float *y) {
  for (long long row = blockIdx.x; row < ROWS; row += gridDim.x) {
    long long base = row * LEN;
    float m = -KILN_INF, s = 0.0f;
    for (long long j = threadIdx.x; j < LEN; j += blockDim.x) m = fmaxf(m, x(base + j));
    m = kiln_block_max(m);
    for (long long j = threadIdx.x; j < LEN; j += blockDim.x) s += expf(x(base + j) - m);
    s = kiln_block_sum(s);
    float inv = 1.0f / s, lse = m + logf(s);
    for (long long j = threadIdx.x; j < LEN; j += blockDim.x)
      y[base + j] = LOG ? x(base + j) - lse : expf(x(base + j) - m) * inv;
  }
}

// Another axis: a thread per lane (outer x inner), neighbouring threads on
// neighbouring elements.
template <bool LOG, long long LANES, long long LEN, long long INNER, typename X>
__device__ __forceinline__ void kiln_softmax_lanes(X x, float *y) {
  for (long long l = (long long)blockIdx.x * blockDim.x + threadIdx.x; l < LANES;
       l += (long long)gridDim.x * blockDim.x) {
    long long base = l / INNER * (LEN * INNER) + l % INNER;
    float m = -KILN_INF, s = 0.0f;
    for (long long j = 0; j < LEN; j++) m = fmaxf(m, x(base + j * INNER));
    for (long long j = 0; j < LEN; j++) s += expf(x(base + j * INNER) - m);
    float inv = 1.0f / s, lse = m + logf(s);
    for (long long j = 0; j < LEN; j++) {
      float v = x(base + j * INNER);
      y[base + j * INNER] = LOG ? v - lse : expf(v - m) * inv;
    }
  }
}

//
// layernorm over the last axis (D): biased variance in two passes, rstd =
// 1 / sqrt(var + eps), as the interpreter.
//
template <long long D, typename X>
__device__ __forceinline__ void kiln_row_stats(X x, long long base, float eps, float *mean, float *rstd) {
  float s = 0.0f, q = 0.0f;
  for (long long j = threadIdx.x; j < D; j += blockDim.x) s += x(base + j);
  float mu = kiln_block_sum(s) / (float)D;
  for (long long j = threadIdx.x; j < D; j += blockDim.x) {
    float v = x(base + j) - mu;
    q += v * v;
  }
  *mean = mu;
  *rstd = 1.0f / sqrtf(kiln_block_sum(q) / (float)D + eps);
}

// y = (x - mean) rstd gamma + beta, a block per row.
template <long long ROWS, long long D, typename X, typename G, typename B>
__device__ __forceinline__ void kiln_layernorm(X x, G gamma, B beta, float *y, float eps) {
  for (long long row = blockIdx.x; row < ROWS; row += gridDim.x) {
    long long base = row * D;
    float mean, rstd;
    kiln_row_stats<D>(x, base, eps, &mean, &rstd);
    for (long long j = threadIdx.x; j < D; j += blockDim.x)
      y[base + j] = (x(base + j) - mean) * rstd * gamma(j) + beta(j);
  }
}

// layernorm_dx: xhat = (x - mean) rstd, g = dy gamma,
// dx = rstd (g - mean(g) - xhat mean(g xhat)), a block per row.
template <long long ROWS, long long D, typename X, typename G, typename DY>
__device__ __forceinline__ void kiln_layernorm_dx(X x, G gamma, DY dy, float *dx, float eps) {
  const float inv_d = 1.0f / (float)D;
  for (long long row = blockIdx.x; row < ROWS; row += gridDim.x) {
    long long base = row * D;
    float mean, rstd, sg = 0.0f, sgx = 0.0f;
    kiln_row_stats<D>(x, base, eps, &mean, &rstd);
    for (long long j = threadIdx.x; j < D; j += blockDim.x) {
      float g = dy(base + j) * gamma(j), xhat = (x(base + j) - mean) * rstd;
      sg += g;
      sgx += g * xhat;
    }
    float mg = kiln_block_sum(sg) * inv_d, mgx = kiln_block_sum(sgx) * inv_d;
    for (long long j = threadIdx.x; j < D; j += blockDim.x) {
      float g = dy(base + j) * gamma(j), xhat = (x(base + j) - mean) * rstd;
      dx[base + j] = rstd * (g - mg - xhat * mgx);
    }
  }
}

// layernorm_dgamma: out[j] = the sum over rows of dy xhat. A block owns 32
// columns, one per lane; its W warps take the rows in turn, each computing its
// row's statistics with warp sums, and the warps' partial sums are added in warp
// order at the end: no atomics, the same result every run.
template <long long ROWS, long long D, int W, typename X, typename DY>
__device__ __forceinline__ void kiln_layernorm_dgamma(X x, DY dy, float *out, float eps) {
  __shared__ float part[W][KILN_WARP];
  int lane = threadIdx.x % KILN_WARP, warp = threadIdx.x / KILN_WARP;
  for (long long c0 = (long long)blockIdx.x * KILN_WARP; c0 < D; c0 += (long long)gridDim.x * KILN_WARP) {
    long long c = c0 + lane;
    float acc = 0.0f;
    for (long long row = warp; row < ROWS; row += W) {
      long long base = row * D;
      float s = 0.0f, q = 0.0f;
      for (long long j = lane; j < D; j += KILN_WARP) s += x(base + j);
      float mean = kiln_warp_sum(s) / (float)D;
      for (long long j = lane; j < D; j += KILN_WARP) {
        float v = x(base + j) - mean;
        q += v * v;
      }
      float rstd = 1.0f / sqrtf(kiln_warp_sum(q) / (float)D + eps);
      if (c < D) acc += dy(base + c) * ((x(base + c) - mean) * rstd);
    }
    part[warp][lane] = acc;
    __syncthreads();
    if (warp == 0 && c < D) {
      float t = 0.0f;
      for (int w = 0; w < W; w++) t += part[w][lane];
      out[c] = t;
    }
    __syncthreads();
  }
}

//
// Losses: one block; every term in f32 as the CPU backend computes it, summed in
// double per thread and then over the block in a fixed order, the mean written
// by thread 0.
//
// cross_entropy over P rows of C: a warp per row, logsumexp - x[label]; a label
// outside [0, C) reads as 0 (the CPU backend's rule).
template <long long P, long long C, typename X>
__device__ __forceinline__ void kiln_cross_entropy(X x, const int *labels, float *y) {
  int lane = threadIdx.x % KILN_WARP, warp = threadIdx.x / KILN_WARP, nw = blockDim.x / KILN_WARP;
  double total = 0.0;
  for (long long p = warp; p < P; p += nw) {
    long long base = p * C;
    float m = -KILN_INF, s = 0.0f;
    for (long long j = lane; j < C; j += KILN_WARP) m = fmaxf(m, x(base + j));
    m = kiln_warp_max(m);
    for (long long j = lane; j < C; j += KILN_WARP) s += expf(x(base + j) - m);
    s = kiln_warp_sum(s);
    long long lab = labels[p];
    if (lab < 0 || lab >= C) lab = 0;
    if (lane == 0) total += (double)(m + logf(s) - x(base + lab));
  }
  total = kiln_block_sum_f64(total);
  if (threadIdx.x == 0) y[0] = (float)(total / (double)P);
}

// mse and bce over N elements: mean of (a - t)^2, or of the stable
// max(a, 0) - a t + log1p(exp(-|a|)).
template <bool BCE, long long N, typename X, typename T>
__device__ __forceinline__ void kiln_pointwise_loss(X x, T t, float *y) {
  double total = 0.0;
  for (long long i = threadIdx.x; i < N; i += blockDim.x) {
    float a = x(i), b = t(i), term;
    if (BCE) {
      term = (a > 0.0f ? a : 0.0f) - a * b + log1pf(expf(-fabsf(a)));
    } else {
      float d = a - b;
      term = d * d;
    }
    total += (double)term;
  }
  total = kiln_block_sum_f64(total);
  if (threadIdx.x == 0) y[0] = (float)(total / (double)N);
}

// cross_entropy_grad: (softmax(x[p]) - onehot(label[p])) / P, a block per row.
template <long long P, long long C, typename X>
__device__ __forceinline__ void kiln_cross_entropy_grad(X x, const int *labels, float *y) {
  const float scale = (float)(1.0 / (double)P);
  for (long long p = blockIdx.x; p < P; p += gridDim.x) {
    long long base = p * C;
    float m = -KILN_INF, s = 0.0f;
    for (long long j = threadIdx.x; j < C; j += blockDim.x) m = fmaxf(m, x(base + j));
    m = kiln_block_max(m);
    for (long long j = threadIdx.x; j < C; j += blockDim.x) s += expf(x(base + j) - m);
    float inv = 1.0f / kiln_block_sum(s);
    long long lab = labels[p];
    if (lab < 0 || lab >= C) lab = 0;
    for (long long j = threadIdx.x; j < C; j += blockDim.x)
      y[base + j] = (expf(x(base + j) - m) * inv - (j == lab ? 1.0f : 0.0f)) * scale;
  }
}
