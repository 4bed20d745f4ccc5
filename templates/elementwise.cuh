// Elementwise ops (the op table's scalar semantics in f32, as the CPU backend
// computes them), dropout's counter-based random stream, and the layout ops:
// copy, transpose, concat/slice runs, embedding and its gradient.

//
// Scalars: a fused chain calls these on its values (compiler/cuda/elementwise.c).
//
// Comparisons, not fmaxf: a NaN input stays NaN.
__device__ __forceinline__ float kiln_relu(float x) { return x < 0.0f ? 0.0f : x; }

__device__ __forceinline__ float kiln_sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

__device__ __forceinline__ float kiln_silu(float x) { return x * kiln_sigmoid(x); }

// The tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
__device__ __forceinline__ float kiln_gelu(float x) {
  float x3 = x * x * x;
  float t = tanhf(0.7978845608028654f * (x + 0.044715f * x3));
  return 0.5f * x * (1.0f + t);
}

__device__ __forceinline__ float kiln_clamp(float x, float lo, float hi) {
  return x < lo ? lo : (x > hi ? hi : x);
}

// Any nonzero condition, NaN included, selects a.
__device__ __forceinline__ float kiln_where(float c, float a, float b) { return c != 0.0f ? a : b; }

// dy (0.5 (1 + t) + 0.5 x (1 - t^2) k (1 + 3 c x^2)),  t = tanh(k (x + c x^3)).
__device__ __forceinline__ float kiln_gelu_grad(float x, float dy) {
  const float k = 0.7978845608028654f, c = 0.044715f;
  float x2 = x * x;
  float t = tanhf(k * (x + c * (x2 * x)));
  float d1 = 0.5f * (1.0f + t);
  float d2 = 0.5f * x * (1.0f - t * t) * (k * (1.0f + (3 * 0.044715f) * x2));
  return dy * (d1 + d2);
}

// dy s (1 + x (1 - s)),  s = sigmoid(x).
__device__ __forceinline__ float kiln_silu_grad(float x, float dy) {
  float s = kiln_sigmoid(x);
  return dy * (s * (1.0f + x * (1.0f - s)));
}

// dy where lo <= x <= hi, else 0 (a NaN x too).
__device__ __forceinline__ float kiln_clamp_grad(float x, float dy, float lo, float hi) {
  return x >= lo ? (x <= hi ? dy : 0.0f) : 0.0f;
}

// A grid-stride loop over [0, n): every kernel of this file walks its items so.
#define KILN_GRID_LOOP(T, i, n) \
  for (T i = (T)blockIdx.x * blockDim.x + threadIdx.x; i < (T)(n); i += (T)gridDim.x * blockDim.x)

//
// dropout (ir/interp.c): element i draws m = mix64(s + (i + 1) GAMMA) >> 11 with
// s = seed ^ mix64(key) and is kept, as x / (1 - p), when m >= ceil(p 2^53): the
// CPU backend's exact integer test, so both draw the same mask.
//
__device__ __forceinline__ unsigned long long kiln_mix64(unsigned long long z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// keymix = mix64(key), thresh = ceil(p 2^53), keep = 1 - p (as f32): constants of
// the node. N elements.
template <long long N>
__device__ __forceinline__ void kiln_dropout(const KilnArgs &A, const float *__restrict__ x,
                                             float *__restrict__ y, unsigned long long keymix,
                                             unsigned long long thresh, float keep) {
  const KilnStepHeader *h = kiln_header(A);
  if (!h->training) {
    KILN_GRID_LOOP(long long, i, N) y[i] = x[i];
    return;
  }
  unsigned long long s = h->seed ^ keymix;
  KILN_GRID_LOOP(long long, i, N) {
    unsigned long long m = kiln_mix64(s + (unsigned long long)(i + 1) * 0x9e3779b97f4a7c15ull) >> 11;
    y[i] = m >= thresh ? x[i] / keep : 0.0f;
  }
}

//
// Layout.
//
// A flat copy of N elements (a reshape that is not a view); T is float or int.
template <typename T, long long N>
__device__ __forceinline__ void kiln_copy(const T *__restrict__ x, T *__restrict__ y) {
  KILN_GRID_LOOP(long long, i, N) y[i] = x[i];
}

// One input of a concat, or a slice: OUTER runs of LEN elements, run r read from
// x[r * XS + XO ..] and written to y[r * YS + YO ..].
template <typename T, long long OUTER, long long LEN, long long XS, long long XO, long long YS,
          long long YO>
__device__ __forceinline__ void kiln_runs(const T *__restrict__ x, T *__restrict__ y) {
  KILN_GRID_LOOP(long long, i, OUTER * LEN) {
    long long r = i / LEN, j = i % LEN;
    y[r * YS + YO + j] = x[r * XS + XO + j];
  }
}

// ids[p] clamped to [0, V): the runtime checks input ids before a step; ids
// computed in the graph cannot read outside the table.
template <long long V>
__device__ __forceinline__ long long kiln_row_id(const int *ids, long long p) {
  long long id = ids[p];
  return id < 0 ? 0 : (id >= V ? V - 1 : id);
}

// embedding: out[p, :] = table[ids[p], :], P positions of D.
template <long long P, long long V, long long D>
__device__ __forceinline__ void kiln_embedding(const int *__restrict__ ids, const float *__restrict__ table,
                                               float *__restrict__ y) {
  KILN_GRID_LOOP(long long, i, P * D) {
    long long p = i / D, j = i % D;
    y[i] = table[kiln_row_id<V>(ids, p) * D + j];
  }
}

// embedding_grad: out[v, j] = the sum of dy[p, j] over positions p whose
// (clamped) id is v, added in position order as the CPU backend adds them. Thread t
// owns column j = t % D of the table rows [v0, v1) of chunk t / D (NV chunks): it
// zeroes them, then walks every position and adds those whose id falls in its
// rows. No two threads write one element and no atomics: the sums are
// deterministic. A warp's threads share a chunk, so their branches agree.
template <long long P, long long V, long long D, long long NV>
__device__ __forceinline__ void kiln_embedding_grad(const int *__restrict__ ids,
                                                    const float *__restrict__ dy,
                                                    float *__restrict__ out) {
  KILN_GRID_LOOP(long long, t, NV * D) {
    long long j = t % D, c = t / D, v0 = c * V / NV, v1 = (c + 1) * V / NV;
    for (long long v = v0; v < v1; v++) out[v * D + j] = 0.0f;
    for (long long p = 0; p < P; p++) {
      long long v = kiln_row_id<V>(ids, p);
      if (v >= v0 && v < v1) out[v * D + j] += dy[p * D + j];
    }
  }
}
