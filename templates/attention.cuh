// Scaled dot-product attention (ir/interp.c's run_attention, run_attention_grad,
// run_attention_decode), and a block-wide matrix product that attention_grad and
// the lstm kernels (templates/lstm.cuh, which comes after this file) share.
//
// A head is a column range of the [B, T, D] buffers: head h of sequence b starts
// at b * T * ld + h * DH, its rows ld apart, where ld is the buffer's row length,
// 3D for attention_grad's output, or a wider value's row length for an operand
// that is a window of it read in place (passes/memplan.c: the q, k, v slices of
// a fused projection).

#define KILN_GEMM_THREADS 256

// C [m, n] = alpha op(A) op(B) + beta C, op(A) [m, k], op(B) [k, n], each row-major
// with its leading dimension (op transposes when TA / TB); beta 0 does not read C.
// Run by all KILN_GEMM_THREADS threads of a block, over 64 x 64 tiles of C with a
// 4 x 4 micro-tile per thread (rows ty + 16 i, columns tx + 16 j: see
// templates/matmul.cuh). Ends with a barrier, so the block then sees C.
template <bool TA, bool TB>
__device__ void kiln_block_gemm(int m, int n, int k, float alpha, const float *A, long long lda,
                                const float *B, long long ldb, float beta, float *C, long long ldc) {
  constexpr int BM = 64, BN = 64, BK = 16, TM = 4, TN = 4, NT = KILN_GEMM_THREADS;
  __shared__ float as[BK][BM + 4], bs[BK][BN + 4];
  int t = threadIdx.x, tx = t % (BN / TN), ty = t / (BN / TN);
  for (int m0 = 0; m0 < m; m0 += BM)
    for (int n0 = 0; n0 < n; n0 += BN) {
      float acc[TM][TN];
      for (int i = 0; i < TM; i++)
        for (int j = 0; j < TN; j++) acc[i][j] = 0.0f;
      for (int k0 = 0; k0 < k; k0 += BK) {
        for (int e = t; e < BM * BK; e += NT) {
          int r = TA ? e % BM : e / BK, c = TA ? e / BM : e % BK;
          int mm = m0 + r, kk = k0 + c;
          float v = 0.0f;
          if (mm < m && kk < k) v = TA ? A[kk * lda + mm] : A[mm * lda + kk];
          as[c][r] = v;
        }
        for (int e = t; e < BN * BK; e += NT) {
          int r = TB ? e / BK : e % BN, c = TB ? e % BK : e / BN;
          int nn = n0 + r, kk = k0 + c;
          float v = 0.0f;
          if (nn < n && kk < k) v = TB ? B[nn * ldb + kk] : B[kk * ldb + nn];
          bs[c][r] = v;
        }
        __syncthreads();
        for (int c = 0; c < BK; c++) {
          float ra[TM], rb[TN];
          for (int i = 0; i < TM; i++) ra[i] = as[c][ty + i * (BM / TM)];
          for (int j = 0; j < TN; j++) rb[j] = bs[c][tx + j * (BN / TN)];
          for (int i = 0; i < TM; i++)
            for (int j = 0; j < TN; j++) acc[i][j] += ra[i] * rb[j];
        }
        __syncthreads();
      }
      for (int i = 0; i < TM; i++)
        for (int j = 0; j < TN; j++) {
          int mm = m0 + ty + i * (BM / TM), nn = n0 + tx + j * (BN / TN);
          if (mm >= m || nn >= n) continue;
          float *cp = C + mm * ldc + nn;
          *cp = beta == 0.0f ? alpha * acc[i][j] : alpha * acc[i][j] + beta * *cp;
        }
    }
  __syncthreads();
}

// attention forward, flash-attention style: one block of 4 BLK threads per
// (batch, head, block of BLK query rows), heaviest causal blocks first. The
// block walks the key blocks its rows may see, holding Q, one block of K and V
// and the block's probabilities in shared memory; the softmax is online: per row
// the running max m and sum l, and the output accumulators, rescaled by
// exp(m_old - m_new) when a key block raises the max. Thread t owns query row
// t / 4, keys t % 4 + 4 jj of a block and output columns t % 4 + 4 dd, so a row's
// four threads are neighbours in a warp and combine by shuffles. The [T, T]
// scores never exist; no scratch. Rows and keys past T read as zero rows / are
// masked, so T need not be a multiple of BLK.
template <int BLK, int DH, bool CAUSAL, long long T, long long H, long long LDQ, long long LDK,
          long long LDV, long long LDY>
__device__ __forceinline__ void kiln_attention_fwd(const float *__restrict__ q, const float *__restrict__ k,
                                                   const float *__restrict__ v, float *__restrict__ y,
                                                   float scale) {
  constexpr int NT = 4 * BLK, NS = BLK / 4, NO = (DH + 3) / 4;
  constexpr long long NQB = (T + BLK - 1) / BLK;
  __shared__ float qs[BLK][DH + 1], ks[BLK][DH + 1], vs[BLK][DH], ps[BLK][BLK + 1];
  int t = threadIdx.x, r = t / 4, c4 = t % 4;
  long long x = blockIdx.x, qb = NQB - 1 - x % NQB, bh = x / NQB, b = bh / H, h = bh % H;
  const float *qh = q + b * T * LDQ + h * DH, *kh = k + b * T * LDK + h * DH;
  const float *vh = v + b * T * LDV + h * DH;
  long long i0 = qb * BLK, i = i0 + r;
  for (int e = t; e < BLK * DH; e += NT) {
    int rr = e / DH, d = e % DH;
    qs[rr][d] = i0 + rr < T ? qh[(i0 + rr) * LDQ + d] : 0.0f;
  }
  float o[NO], m = -KILN_INF, l = 0.0f;
  for (int dd = 0; dd < NO; dd++) o[dd] = 0.0f;
  long long nkb = CAUSAL ? qb + 1 : NQB;
  for (long long kb = 0; kb < nkb; kb++) {
    long long j0 = kb * BLK;
    __syncthreads();  // the previous block's ks, vs, ps are read
    for (int e = t; e < BLK * DH; e += NT) {
      int rr = e / DH, d = e % DH;
      bool in = j0 + rr < T;
      ks[rr][d] = in ? kh[(j0 + rr) * LDK + d] : 0.0f;
      vs[rr][d] = in ? vh[(j0 + rr) * LDV + d] : 0.0f;
    }
    __syncthreads();
    float s[NS];
    for (int jj = 0; jj < NS; jj++) s[jj] = 0.0f;
    for (int d = 0; d < DH; d++) {
      float qv = qs[r][d];
      for (int jj = 0; jj < NS; jj++) s[jj] += qv * ks[c4 + 4 * jj][d];
    }
    float bm = -KILN_INF;
    for (int jj = 0; jj < NS; jj++) {
      long long j = j0 + c4 + 4 * jj;
      s[jj] = j < T && (!CAUSAL || j <= i) ? s[jj] * scale : -KILN_INF;
      bm = fmaxf(bm, s[jj]);
    }
    bm = fmaxf(bm, __shfl_xor_sync(0xffffffffu, bm, 1));
    bm = fmaxf(bm, __shfl_xor_sync(0xffffffffu, bm, 2));
    float mn = fmaxf(m, bm);
    // A row that has seen no key yet (m = -inf) has nothing to rescale; one that
    // still sees none (mn = -inf) keeps p = 0 rather than exp(-inf + inf).
    float alpha = m == -KILN_INF ? 0.0f : expf(m - mn), sum = 0.0f;
    for (int jj = 0; jj < NS; jj++) {
      float p = s[jj] == -KILN_INF ? 0.0f : expf(s[jj] - mn);
      ps[r][c4 + 4 * jj] = p;
      sum += p;
    }
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    l = l * alpha + sum;
    m = mn;
    __syncthreads();  // ps complete
    for (int dd = 0; dd < NO; dd++) o[dd] *= alpha;
    for (int c = 0; c < BLK; c++) {
      float p = ps[r][c];
      for (int dd = 0; dd < NO; dd++)
        if (c4 + 4 * dd < DH) o[dd] += p * vs[c][c4 + 4 * dd];
    }
  }
  if (i >= T) return;
  float inv = 1.0f / l, *yr = y + b * T * LDY + i * LDY + h * DH;
  for (int dd = 0; dd < NO; dd++)
    if (c4 + 4 * dd < DH) yr[c4 + 4 * dd] = o[dd] * inv;
}

// Rows [0, rows) of p (row stride T) become their softmax: row r over keys [0,
// keys(r)), stabilised by its largest score, and 0 over [keys(r), j1). A warp per
// row. Ends with a barrier.
template <long long T, bool CAUSAL>
__device__ __forceinline__ void kiln_attention_softmax_rows(float *p, int rows, long long i0, long long j1) {
  int lane = threadIdx.x % KILN_WARP, warp = threadIdx.x / KILN_WARP, nw = blockDim.x / KILN_WARP;
  for (int r = warp; r < rows; r += nw) {
    float *pr = p + r * T;
    long long n = CAUSAL ? i0 + r + 1 : T;
    float mx = -KILN_INF, sum = 0.0f;
    for (long long j = lane; j < n; j += KILN_WARP) mx = fmaxf(mx, pr[j]);
    mx = kiln_warp_max(mx);
    for (long long j = lane; j < n; j += KILN_WARP) {
      float e = expf(pr[j] - mx);
      pr[j] = e;
      sum += e;
    }
    float inv = 1.0f / kiln_warp_sum(sum);
    for (long long j = lane; j < n; j += KILN_WARP) pr[j] *= inv;
    for (long long j = n + lane; j < j1; j += KILN_WARP) pr[j] = 0.0f;
  }
  __syncthreads();
}

// attention_grad -> [B, T, 3D] (dq | dk | dv in each row), as the CPU backend's
// (compiler/cpu/attention.c): one block per (batch, head), query rows in blocks
// of RB from the last to the first. Per block, with j1 the keys it sees:
//   P = softmax(Q_b K^T scale) (masked), dP = dY_b V^T, and per row
//   dS = P (dP - sum_j P dP) scale; then
//   dV[0, j1) += P^T dY_b,  dQ_b = dS K,  dK[0, j1) += dS^T Q_b,
// where the last block (which sees every key) writes dK and dV whole and the
// others add. P and dP (then dS), [RB, T] each, are the pair's scratch: y is not
// an input, so the softmax is recomputed rather than saved by the forward.
template <long long T, int DH, long long H, bool CAUSAL, int RB, long long LDQ, long long LDK,
          long long LDV, long long LDY>
__device__ __forceinline__ void kiln_attention_grad(const float *q, const float *k, const float *v,
                                                    const float *dy, float *out, float *scratch,
                                                    long long pairs, float scale) {
  constexpr long long D = H * DH, LDO = 3 * D, NBLK = (T + RB - 1) / RB;
  int lane = threadIdx.x % KILN_WARP, warp = threadIdx.x / KILN_WARP, nw = blockDim.x / KILN_WARP;
  for (long long bh = blockIdx.x; bh < pairs; bh += gridDim.x) {
    long long b = bh / H, h = bh % H;
    const float *Q = q + b * T * LDQ + h * DH, *K = k + b * T * LDK + h * DH;
    const float *V = v + b * T * LDV + h * DH, *DY = dy + b * T * LDY + h * DH;
    float *DQ = out + b * T * LDO + h * DH, *DK = DQ + D, *DV = DQ + 2 * D;
    float *P = scratch + bh * 2 * RB * T, *DS = P + RB * T;
    for (long long it = 0; it < NBLK; it++) {
      long long i0 = (NBLK - 1 - it) * RB;
      int rows = (int)(T - i0 < RB ? T - i0 : RB);
      int j1 = (int)(CAUSAL ? i0 + rows : T);
      float beta = it == 0 ? 0.0f : 1.0f;
      kiln_block_gemm<false, true>(rows, j1, DH, scale, Q + i0 * LDQ, LDQ, K, LDK, 0.0f, P, T);
      kiln_attention_softmax_rows<T, CAUSAL>(P, rows, i0, j1);
      kiln_block_gemm<false, true>(rows, j1, DH, 1.0f, DY + i0 * LDY, LDY, V, LDV, 0.0f, DS, T);
      for (int r = warp; r < rows; r += nw) {
        float *pr = P + r * T, *sr = DS + r * T;
        long long n = CAUSAL ? i0 + r + 1 : T;
        float pdp = 0.0f;
        for (long long j = lane; j < n; j += KILN_WARP) pdp += pr[j] * sr[j];
        pdp = kiln_warp_sum(pdp);
        // Masked keys have p = 0, hence ds = 0.
        for (long long j = lane; j < j1; j += KILN_WARP) sr[j] = pr[j] * (sr[j] - pdp) * scale;
      }
      __syncthreads();
      kiln_block_gemm<true, false>(j1, DH, rows, 1.0f, P, T, DY + i0 * LDY, LDY, beta, DV, LDO);
      kiln_block_gemm<false, false>(rows, DH, j1, 1.0f, DS, T, K, LDK, 0.0f, DQ + i0 * LDO, LDO);
      kiln_block_gemm<true, false>(j1, DH, rows, 1.0f, DS, T, Q + i0 * LDQ, LDQ, beta, DK, LDO);
    }
  }
}

// attention_decode: one block of NT threads per (batch, head), which own disjoint
// columns of the caches and the output. The block writes its head's k and v at
// position p (clamped to [0, C)), then its query attends to positions 0..p:
// scores into the scratch s [C] of the pair, the block's max, exp and sum, and
// the weighted sum of the cached values.
template <int NT, long long C, long long H, int DH>
__device__ __forceinline__ void kiln_attention_decode(const float *q, const float *k, const float *v,
                                                      float *kc, float *vc, const int *pos, float *y,
                                                      float *scratch, float scale) {
  constexpr long long D = H * DH;
  __shared__ float qs[DH];
  long long bh = blockIdx.x, b = bh / H, h = bh % H;
  int t = threadIdx.x;
  long long p = pos[0];
  p = p < 0 ? 0 : p >= C ? C - 1 : p;
  long long row = b * D + h * DH, cache = b * C * D + h * DH;
  for (int w = t; w < DH; w += NT) {
    kc[cache + p * D + w] = k[row + w];
    vc[cache + p * D + w] = v[row + w];
    qs[w] = q[row + w];
  }
  __syncthreads();
  float *s = scratch + bh * C, mx = -KILN_INF;
  for (long long j = t; j <= p; j += NT) {
    const float *kr = kc + cache + j * D;
    float dot = 0.0f;
    for (int d = 0; d < DH; d++) dot += qs[d] * kr[d];
    s[j] = dot * scale;
    mx = fmaxf(mx, s[j]);
  }
  mx = kiln_block_max(mx);
  float sum = 0.0f;
  for (long long j = t; j <= p; j += NT) {
    float e = expf(s[j] - mx);
    s[j] = e;
    sum += e;
  }
  float inv = 1.0f / kiln_block_sum(sum);  // its barriers publish s
  for (int d = t; d < DH; d += NT) {
    float acc = 0.0f;
    for (long long j = 0; j <= p; j++) acc += s[j] * inv * vc[cache + j * D + d];
    y[row + d] = acc;
  }
}
