// lstm, lstm_grad and lstm_step (ir/interp.c; the CPU backend's compiler/cpu/lstm.c
// and decode.c). Gate order i f g o; G = 4H gate columns. Uses kiln_block_gemm
// (templates/attention.cuh, earlier in the source), so blocks have
// KILN_GEMM_THREADS threads.
//
// The recurrence is sequential in time, and a grid cannot wait for itself without
// a cooperative launch, so one block runs one whole sequence (batch row): h and c
// in shared memory, each step's h_{t-1} W_hh done by the block, a barrier between
// steps. The limits that follow: only B blocks run (a few SMs for a small batch),
// each streams W_hh [H, G] from L2 every step, and H is bounded by shared memory
// (the emitters check). x W_ih for every step is one block-wide product up front.

__device__ __forceinline__ float kiln_lstm_sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

// Unit u's step from the pre-activations zs (gates i f g o, H each) and its cell c.
struct KilnLstmUnit {
  float i, f, g, o, c, h;
};
__device__ __forceinline__ KilnLstmUnit kiln_lstm_unit(const float *zs, float c, long long H,
                                                       long long u) {
  KilnLstmUnit r;
  r.i = kiln_lstm_sigmoid(zs[u]), r.f = kiln_lstm_sigmoid(zs[H + u]);
  r.g = tanhf(zs[2 * H + u]), r.o = kiln_lstm_sigmoid(zs[3 * H + u]);
  r.c = r.f * c + r.i * r.g, r.h = r.o * tanhf(r.c);
  return r;
}

// The G columns of z += h wh for the h in shared memory, G / NT (rounded up) per
// thread, columns t + NT p so that neighbouring threads read neighbouring weights.
template <long long H>
__device__ __forceinline__ void kiln_lstm_hw(const float *h, const float *__restrict__ wh, float *z) {
  constexpr long long G = 4 * H;
  constexpr int NT = KILN_GEMM_THREADS, PER = (int)((G + NT - 1) / NT);
  int t = threadIdx.x;
  float acc[PER];
  for (int p = 0; p < PER; p++) acc[p] = 0.0f;
  for (long long u = 0; u < H; u++) {
    float hu = h[u];
    for (int p = 0; p < PER; p++)
      if (t + NT * p < G) acc[p] += hu * wh[u * G + t + NT * p];
  }
  for (int p = 0; p < PER; p++)
    if (t + NT * p < G) z[t + NT * p] += acc[p];
}

// The forward of sequence b: z = its rows of Z [B, T, G] (scratch), x W_ih for every
// step at once, then step by step z_t += h_{t-1} W_hh, the gates and c, h. hs gets
// h_t at [b, t]. KEEP (lstm_grad): z_t keeps the activated gates, cs [B, T, H] every
// c_t, and h_{T-1} is stored as 0 (compiler/cpu/lstm.c: the weight phase then pairs
// rows across sequences without a special case).
template <long long T, long long I, long long H, bool KEEP>
__device__ void kiln_lstm_forward(const float *x, const float *wi, const float *wh, const float *bias,
                                  float *z, float *hs, float *cs, long long b) {
  constexpr long long G = 4 * H;
  constexpr int NT = KILN_GEMM_THREADS;
  __shared__ float h[H], c[H], zs[G];
  int t = threadIdx.x;
  kiln_block_gemm<false, false>((int)T, (int)G, (int)I, 1.0f, x + b * T * I, I, wi, G, 0.0f, z + b * T * G, G);
  for (long long u = t; u < H; u += NT) h[u] = c[u] = 0.0f;
  __syncthreads();
  for (long long s = 0; s < T; s++) {
    long long row = b * T + s;
    float *zr = z + row * G;
    for (long long j = t; j < G; j += NT) zs[j] = zr[j] + bias[j];
    __syncthreads();
    if (s > 0) kiln_lstm_hw<H>(h, wh, zs);  // h_{-1} = 0 adds nothing
    __syncthreads();  // zs complete, h read
    for (long long u = t; u < H; u += NT) {
      KilnLstmUnit r = kiln_lstm_unit(zs, c[u], H, u);
      float cn = r.c, hn = r.h;
      c[u] = cn;
      h[u] = hn;
      if (KEEP) {
        zr[u] = r.i, zr[H + u] = r.f, zr[2 * H + u] = r.g, zr[3 * H + u] = r.o;
        cs[row * H + u] = cn;
        hn = s < T - 1 ? hn : 0.0f;
      }
      hs[row * H + u] = hn;
    }
    __syncthreads();
  }
}

// lstm: one block per sequence (a grid-stride loop over B).
template <long long B, long long T, long long I, long long H>
__device__ __forceinline__ void kiln_lstm(const float *x, const float *wi, const float *wh, const float *bias,
                                          float *z, float *y) {
  for (long long b = blockIdx.x; b < B; b += gridDim.x)
    kiln_lstm_forward<T, I, H, false>(x, wi, wh, bias, z, y, (float *)0, b);
}

// lstm_grad phase 0, one block per sequence: the forward kept (gates in Z, h in
// Hs, c in Cs), then back through time (ir/interp.c's run_lstm_grad):
//   dh += dy_t;  dc += dh o (1 - tanh(c_t)^2)
//   dz = [dc g i (1 - i), dc c_{t-1} f (1 - f), dc i (1 - g^2), dh tanh(c_t) o (1 - o)]
// into Z, carrying dh = dz W_hh^T (a warp per unit, lanes along its weight row) and
// dc = dc f to step t - 1; then dx = dZ W_ih^T for the sequence's rows, the
// output's first B T I values.
template <long long B, long long T, long long I, long long H>
__device__ __forceinline__ void kiln_lstm_backward(const float *x, const float *wi, const float *wh,
                                                   const float *bias, const float *dy, float *dx, float *z,
                                                   float *hs, float *cs) {
  constexpr long long G = 4 * H;
  constexpr int NT = KILN_GEMM_THREADS;
  __shared__ float dh[H], dc[H], dz[G];
  int t = threadIdx.x, lane = t % KILN_WARP, warp = t / KILN_WARP;
  for (long long b = blockIdx.x; b < B; b += gridDim.x) {
    kiln_lstm_forward<T, I, H, true>(x, wi, wh, bias, z, hs, cs, b);
    for (long long u = t; u < H; u += NT) dh[u] = dc[u] = 0.0f;
    __syncthreads();
    for (long long s = T - 1; s >= 0; s--) {
      long long row = b * T + s;
      float *zr = z + row * G;
      for (long long u = t; u < H; u += NT) {
        float gi = zr[u], gf = zr[H + u], gg = zr[2 * H + u], go = zr[3 * H + u];
        float tc = tanhf(cs[row * H + u]), cp = s > 0 ? cs[(row - 1) * H + u] : 0.0f;
        float dhv = dh[u] + dy[row * H + u];
        float dcv = dc[u] + dhv * go * (1.0f - tc * tc);
        float d0 = dcv * gg * (gi * (1.0f - gi)), d1 = dcv * cp * (gf * (1.0f - gf));
        float d2 = dcv * gi * (1.0f - gg * gg), d3 = dhv * tc * (go * (1.0f - go));
        zr[u] = dz[u] = d0;
        zr[H + u] = dz[H + u] = d1;
        zr[2 * H + u] = dz[2 * H + u] = d2;
        zr[3 * H + u] = dz[3 * H + u] = d3;
        dc[u] = dcv * gf;
      }
      __syncthreads();
      for (long long u = warp; s > 0 && u < H; u += NT / KILN_WARP) {
        const float *w = wh + u * G;
        float acc = 0.0f;
        for (long long j = lane; j < G; j += KILN_WARP) acc += dz[j] * w[j];
        acc = kiln_warp_sum(acc);
        if (lane == 0) dh[u] = acc;
      }
      __syncthreads();
    }
    kiln_block_gemm<false, true>((int)T, (int)I, (int)G, 1.0f, z + b * T * G, G, wi, G, 0.0f, dx + b * T * I, I);
  }
}

// lstm_grad phase 1: the weight gradients, sums over all B T rows, after the
// output's dx: dW_ih [I, G] = X^T dZ and dW_hh [H, G] = Hs^T dZ shifted by a row
// (Hs holds h_{T-1} = 0, so row r of Hs against row r + 1 of dZ pairs h_{t-1} with
// dz_t within each sequence and adds nothing across two), by 64 x 64 tiles, then
// db = the column sums of dZ, 256 columns per block. A block owns its outputs, so
// nothing is added twice and every sum runs in one order.
template <long long B, long long T, long long I, long long H>
__device__ __forceinline__ void kiln_lstm_weights(const float *x, const float *z, const float *hs, float *out) {
  constexpr long long G = 4 * H, BT = B * T, GT = (G + 63) / 64;
  constexpr long long TI = (I + 63) / 64 * GT, TH = (H + 63) / 64 * GT;
  constexpr long long NB = (G + KILN_GEMM_THREADS - 1) / KILN_GEMM_THREADS;
  float *dwi = out + BT * I, *dwh = dwi + I * G, *db = dwh + H * G;
  for (long long w = blockIdx.x; w < TI + TH + NB; w += gridDim.x) {
    if (w < TI + TH) {
      bool ih = w < TI;
      long long tile = ih ? w : w - TI, r0 = tile / GT * 64, c0 = tile % GT * 64;
      long long rows = (ih ? I : H) - r0;
      int m = (int)(rows < 64 ? rows : 64), n = (int)(G - c0 < 64 ? G - c0 : 64);
      if (ih)
        kiln_block_gemm<true, false>(m, n, (int)BT, 1.0f, x + r0, I, z + c0, G, 0.0f, dwi + r0 * G + c0, G);
      else  // BT == 1: no h_{t-1} but 0, k = 0 writes zeros
        kiln_block_gemm<true, false>(m, n, (int)(BT - 1), 1.0f, hs + r0, H, z + G + c0, G, 0.0f,
                                     dwh + r0 * G + c0, G);
    } else {
      long long col = (w - TI - TH) * KILN_GEMM_THREADS + threadIdx.x;
      if (col < G) {
        float sum = 0.0f;
        for (long long r = 0; r < BT; r++) sum += z[r * G + col];
        db[col] = sum;
      }
    }
  }
}

// lstm_step: one block per batch row; h and c start from the state [2, B, H] and
// are written back after every step, as the CPU's; z = b + x_t W_ih + h W_hh.
template <long long B, long long T, long long I, long long H>
__device__ __forceinline__ void kiln_lstm_step(const float *x, const float *wi, const float *wh,
                                               const float *bias, float *st, float *y) {
  constexpr long long G = 4 * H;
  constexpr int NT = KILN_GEMM_THREADS;
  __shared__ float h[H], c[H], zs[G];
  int t = threadIdx.x;
  for (long long b = blockIdx.x; b < B; b += gridDim.x) {
    for (long long u = t; u < H; u += NT) h[u] = st[b * H + u], c[u] = st[(B + b) * H + u];
    __syncthreads();
    for (long long s = 0; s < T; s++) {
      long long row = b * T + s;
      const float *xr = x + row * I;
      for (long long j = t; j < G; j += NT) {
        float acc = bias[j];
        for (long long i = 0; i < I; i++) acc += xr[i] * wi[i * G + j];
        zs[j] = acc;
      }
      __syncthreads();
      kiln_lstm_hw<H>(h, wh, zs);
      __syncthreads();
      for (long long u = t; u < H; u += NT) {
        KilnLstmUnit r = kiln_lstm_unit(zs, c[u], H, u);
        float cn = r.c, hn = r.h;
        c[u] = cn;
        h[u] = hn;
        st[(B + b) * H + u] = cn;
        st[b * H + u] = hn;
        y[row * H + u] = hn;
      }
      __syncthreads();
    }
  }
}
