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
