// matmul: C[.., M, N] = op(A)[.., M, K] op(B)[.., K, N] in f32, one [BM, BN] tile
// of one batch's C per block (compiler/cuda/matmul.c picks the tile for the
// shape). The block walks K in steps of BK: it copies A's [BM, BK] and B's [BK, BN]
// slices into shared memory, k-major, then each thread multiplies the slice into
// its TM x TN accumulators. A thread's rows are ty + i * (BM / TM) and its columns
// tx + j * (BN / TN), interleaved rather than adjacent: a warp's shared memory
// reads then fall in distinct banks (or broadcast), and the epilogue's stores and
// loads of neighbouring threads touch neighbouring columns. Elements outside
// [M, N, K] read as 0, so any size works; sizes are template parameters, so every
// loop bound, stride and bounds check is a constant.

// Row (within the tile) of a thread's accumulator row i, and column of column j.
template <int BM, int BN, int TM, int TN>
__device__ __forceinline__ int kiln_mm_row(int i) {
  return (int)threadIdx.x / (BN / TN) + i * (BM / TM);
}

template <int BM, int BN, int TM, int TN>
__device__ __forceinline__ int kiln_mm_col(int j) {
  return (int)threadIdx.x % (BN / TN) + j * (BN / TN);
}

// acc = the tile at rows m0.., columns n0.. of op(a) op(b): a is [M, K] ([K, M]
// when TA), b is [K, N] ([N, K] when TB), both row-major. Every thread of the
// block, (BM / TM) * (BN / TN) of them, must call it.
template <int BM, int BN, int BK, int TM, int TN, bool TA, bool TB, long long M, long long N, long long K>
__device__ __forceinline__ void kiln_mm_tile(const float *__restrict__ a, const float *__restrict__ b,
                                             long long m0, long long n0, float (&acc)[TM][TN]) {
  constexpr int NT = (BM / TM) * (BN / TN);
  // k-major, so the inner loop reads a row of each; padded against bank conflicts
  // on the transposing stores.
  __shared__ float as[BK][BM + 4], bs[BK][BN + 4];
  int t = threadIdx.x;
  for (int i = 0; i < TM; i++)
    for (int j = 0; j < TN; j++) acc[i][j] = 0.0f;
  for (long long k0 = 0; k0 < K; k0 += BK) {
    // Consecutive threads read consecutive addresses of the operand as stored.
    for (int e = t; e < BM * BK; e += NT) {
      int r = TA ? e % BM : e / BK, c = TA ? e / BM : e % BK;
      long long m = m0 + r, kk = k0 + c;
      float v = 0.0f;
      if (m < M && kk < K) v = TA ? a[kk * M + m] : a[m * K + kk];
      as[c][r] = v;
    }
    for (int e = t; e < BN * BK; e += NT) {
      int r = TB ? e / BK : e % BN, c = TB ? e % BK : e / BN;
      long long n = n0 + r, kk = k0 + c;
      float v = 0.0f;
      if (n < N && kk < K) v = TB ? b[n * K + kk] : b[kk * N + n];
      bs[c][r] = v;
    }
    __syncthreads();
    for (int c = 0; c < BK; c++) {
      float ra[TM], rb[TN];
      for (int i = 0; i < TM; i++) ra[i] = as[c][kiln_mm_row<BM, BN, TM, TN>(i)];
      for (int j = 0; j < TN; j++) rb[j] = bs[c][kiln_mm_col<BM, BN, TM, TN>(j)];
      for (int i = 0; i < TM; i++)
        for (int j = 0; j < TN; j++) acc[i][j] += ra[i] * rb[j];
    }
    __syncthreads();  // the slices are overwritten next
  }
}

// The same tile on bf16 tensor cores (--gpu-matmul=bf16; sm_80 and newer): as A's
// and B's slices are staged into shared memory, their elements are rounded to
// bf16, two consecutive k per 32-bit word; warps then multiply them with
// kiln_mma_bf16 into f32 accumulators. The block's (BM / WM) * (BN / WN) warps each
// own a WM x WN piece of the tile: (WM / 16) x (WN / 8) mma tiles, whose
// accumulators a thread holds as acc[2 * WM / 16][2 * WN / 8]: acc[i][j] is at row
// kiln_mma_row(i), column kiln_mma_col(j) of the tile (the mma's fragment layout:
// D[g][2t, 2t+1] and D[g+8][2t, 2t+1] of each mma tile, g = lane / 4, t = lane % 4).
// Both slices are stored with k fastest ([BM][BK] and [BN][BK], B transposed), so
// a lane's fragment words are one 32-bit load each; rows are padded by 4 words,
// which puts the 32 words a warp loads at once in 32 distinct banks.
template <int BM, int BN, int WM, int WN>
__device__ __forceinline__ int kiln_mma_row(int i) {
  int warp = (int)threadIdx.x / KILN_WARP, lane = (int)threadIdx.x % KILN_WARP;
  return warp / (BN / WN) * WM + i / 2 * 16 + i % 2 * 8 + lane / 4;
}

template <int BM, int BN, int WM, int WN>
__device__ __forceinline__ int kiln_mma_col(int j) {
  int warp = (int)threadIdx.x / KILN_WARP, lane = (int)threadIdx.x % KILN_WARP;
  return warp % (BN / WN) * WN + j / 2 * 8 + lane % 4 * 2 + j % 2;
}

// acc = the tile at rows m0.., columns n0.. of op(a) op(b), operands rounded to
// bf16, products summed in f32; a, b, TA, TB as kiln_mm_tile. BK is a multiple of
// 16; every thread of the block, (BM / WM) * (BN / WN) * 32 of them, must call it.
template <int BM, int BN, int BK, int WM, int WN, bool TA, bool TB, long long M, long long N, long long K>
__device__ __forceinline__ void kiln_mma_tile(const float *__restrict__ a, const float *__restrict__ b,
                                              long long m0, long long n0,
                                              float (&acc)[WM / 8][WN / 4]) {
  constexpr int NT = (BM / WM) * (BN / WN) * KILN_WARP, KP = BK / 2, MI = WM / 16, NI = WN / 8;
  static_assert(BK % 16 == 0 && WM % 16 == 0 && WN % 8 == 0, "whole mma tiles");
  __shared__ unsigned as[BM][KP + 4], bs[BN][KP + 4];  // bf16 pairs: (k, k + 1), k even
  int t = threadIdx.x, warp = t / KILN_WARP, lane = t % KILN_WARP;
  int wm = warp / (BN / WN) * WM, wn = warp % (BN / WN) * WN, g = lane / 4, q = lane % 4;
  for (int i = 0; i < 2 * MI; i++)
    for (int j = 0; j < 2 * NI; j++) acc[i][j] = 0.0f;
  for (long long k0 = 0; k0 < K; k0 += BK) {
    // Consecutive threads read consecutive addresses of the operand as stored.
    for (int e = t; e < BM * KP; e += NT) {
      int r = TA ? e % BM : e / KP, p = TA ? e / BM : e % KP;
      long long m = m0 + r, kk = k0 + 2 * p;
      float v0 = 0.0f, v1 = 0.0f;
      if (m < M && kk < K) v0 = TA ? a[kk * M + m] : a[m * K + kk];
      if (m < M && kk + 1 < K) v1 = TA ? a[(kk + 1) * M + m] : a[m * K + kk + 1];
      as[r][p] = kiln_bf16x2(v0, v1);
    }
    for (int e = t; e < BN * KP; e += NT) {
      int r = TB ? e / KP : e % BN, p = TB ? e % KP : e / BN;
      long long n = n0 + r, kk = k0 + 2 * p;
      float v0 = 0.0f, v1 = 0.0f;
      if (n < N && kk < K) v0 = TB ? b[n * K + kk] : b[kk * N + n];
      if (n < N && kk + 1 < K) v1 = TB ? b[n * K + kk + 1] : b[(kk + 1) * N + n];
      bs[r][p] = kiln_bf16x2(v0, v1);
    }
    __syncthreads();
    for (int ks = 0; ks < KP; ks += 8) {  // 16 k per mma
      unsigned fa[MI][4], fb[NI][2];
      for (int i = 0; i < MI; i++)
        for (int r = 0; r < 4; r++) fa[i][r] = as[wm + i * 16 + g + (r & 1) * 8][ks + q + (r >> 1) * 4];
      for (int j = 0; j < NI; j++)
        for (int r = 0; r < 2; r++) fb[j][r] = bs[wn + j * 8 + g][ks + q + r * 4];
      for (int i = 0; i < MI; i++)
        for (int j = 0; j < NI; j++) {
          float d[4] = {acc[2 * i][2 * j], acc[2 * i][2 * j + 1], acc[2 * i + 1][2 * j],
                        acc[2 * i + 1][2 * j + 1]};
          kiln_mma_bf16(d, fa[i], fb[j]);
          acc[2 * i][2 * j] = d[0];
          acc[2 * i][2 * j + 1] = d[1];
          acc[2 * i + 1][2 * j] = d[2];
          acc[2 * i + 1][2 * j + 1] = d[3];
        }
    }
    __syncthreads();  // the slices are overwritten next
  }
}
