// matmul kernels: C[.., M, N] = op(A)[.., M, K] op(B)[.., K, N], batch dims
// broadcast, as the CPU backend's (compiler/cpu/kernels.c) and ir/interp.c. A
// block computes one tile of one batch's C with templates/matmul.cuh and then, per
// element, the epilogue: the store, or the fused elementwise group's chain
// (kiln_cuda_chain) on the accumulator, stored to the group root's buffer. With
// KILN_CUDA_MATMUL_BF16 the tile is kiln_mma_tile's (operands rounded to bf16,
// tensor cores, f32 accumulators) and the epilogue is the same.
#include "compiler/cuda/cuda.h"

// Output tiles, largest first: a tile is taken when it still gives a block to
// every SM of the largest current GPUs (132 on an H200); smaller outputs take
// smaller tiles, trading reuse per block for blocks. The smallest keeps a 4 x 4
// micro-tile (two loads from shared memory per four multiply-adds) with fewer
// threads, so several of its blocks share an SM.
#define WAVE 132

typedef struct {
  int bm, bn, bk, tm, tn;  // threads: (bm / tm) * (bn / tn), times 32 for an mma tile
} Tile;

static const Tile TILES[] = {{128, 128, 8, 8, 8}, {64, 64, 16, 4, 4}, {32, 32, 16, 4, 4}};
// At most SKINNY rows (a decoding step): one tile row, wide along N.
#define SKINNY 8
static const Tile SKINNY_TILE = {8, 64, 16, 1, 2};

// bf16 tensor-core tiles (kiln_mma_tile), chosen the same way: tm x tn is a warp's
// piece of the tile, so threads are 32 per piece. The largest gives each warp
// 4 x 4 mma tiles (64 accumulators a thread) and each block 20 KiB of shared
// memory; the skinny one computes 16 rows, the mma's height, for up to 8.
static const Tile MMA_TILES[] = {{128, 128, 32, 64, 32}, {64, 64, 32, 32, 32}, {32, 32, 32, 16, 16}};
static const Tile MMA_SKINNY_TILE = {16, 64, 32, 16, 16};

static int threads(Tile t, bool mma) { return (t.bm / t.tm) * (t.bn / t.tn) * (mma ? 32 : 1); }

// Blocks per SM that __launch_bounds__ asks ptxas to allow for: 512 threads, so up
// to 128 registers each. Without it ptxas was seen to cap these kernels at 64
// registers and spill.
static int min_blocks(Tile t, bool mma) {
  return 512 / threads(t, mma) > 1 ? 512 / threads(t, mma) : 1;
}

typedef struct {
  int64_t m, n, k, batch;
  int64_t sa[KILN_MAX_RANK], sb[KILN_MAX_RANK];  // batch strides per output batch dim, in matrices
  bool fold;  // B is one matrix and A's batch folds into M
} Mm;

// As compiler/cpu/kernels.c's mm_shape.
static void mm_shape(const KilnGraph *g, const KilnNode *o, Mm *mm) {
  const KilnNode *a = &g->nodes[o->in[0]], *b = &g->nodes[o->in[1]];
  mm->m = o->shape[o->rank - 2];
  mm->n = o->shape[o->rank - 1];
  mm->k = o->attr.trans_a ? a->shape[a->rank - 2] : a->shape[a->rank - 1];
  mm->batch = 1;
  for (int d = 0; d < o->rank - 2; d++) mm->batch *= o->shape[d];
  for (int pass = 0; pass < 2; pass++) {
    const KilnNode *x = pass ? b : a;
    int64_t *s = pass ? mm->sb : mm->sa;
    int off = (o->rank - 2) - (x->rank - 2);
    int64_t st = 1;
    for (int d = o->rank - 3; d >= 0; d--) {
      int xd = d - off;
      s[d] = (xd < 0 || x->shape[xd] == 1) ? 0 : st;
      if (xd >= 0) st *= x->shape[xd];
    }
  }
  mm->fold = b->rank == 2 && !o->attr.trans_a && a->rank == o->rank;
  if (mm->fold) {
    mm->m *= mm->batch;
    mm->batch = 1;
  }
}

static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

static Tile pick_tile(const Mm *mm, bool mma) {
  if (mm->m <= SKINNY) return mma ? MMA_SKINNY_TILE : SKINNY_TILE;
  const Tile *tiles = mma ? MMA_TILES : TILES;
  int n = (int)(mma ? sizeof MMA_TILES / sizeof MMA_TILES[0] : sizeof TILES / sizeof TILES[0]);
  for (int i = 0; i < n - 1; i++)
    if (ceil_div(mm->m, tiles[i].bm) * ceil_div(mm->n, tiles[i].bn) * mm->batch >= WAVE) return tiles[i];
  return tiles[n - 1];
}

// The kernel of matmul mm; with root >= 0, its epilogue is the elementwise group
// rooted there (mm's shape: fuse.c joins only chains of the matmul's shape, so an
// output row of mm is a row of root).
static int emit(KilnCudaKernel *k, int32_t mm_id, int32_t root) {
  const KilnGraph *g = k->g;
  const KilnNode *o = &g->nodes[mm_id];
  Mm mm;
  mm_shape(g, o, &mm);
  bool mma = k->matmul == KILN_CUDA_MATMUL_BF16;
  Tile t = pick_tile(&mm, mma);
  int64_t mt = ceil_div(mm.m, t.bm), nt = ceil_div(mm.n, t.bn);
  if (nt > 65535 || mt > INT32_MAX) {
    snprintf(k->err, sizeof k->err, "matmul '%s': a %lld x %lld output is too large for one launch",
             o->name, (long long)mm.m, (long long)mm.n);
    return -1;
  }
  const char *A = kiln_cuda_ptr(k, o->in[0]), *B = kiln_cuda_ptr(k, o->in[1]);
  FILE *f = k->out;
  fprintf(f, "extern \"C\" __global__ void __launch_bounds__(%d, %d) %s(KilnArgs A) {\n", threads(t, mma),
          min_blocks(t, mma), k->name);
  // A grid-stride loop only where the batch exceeds the grid: around the tile's
  // loops it costs ptxas spills.
  if (mm.batch > 65535)
    fprintf(f, "  for (long long z = blockIdx.z; z < %lldLL; z += gridDim.z) {\n", (long long)mm.batch);
  else
    fprintf(f, "  {\n    long long z = blockIdx.z;\n");
  // The matrices of batch z in A and B, batch dims broadcast (numpy rules).
  fprintf(f, "    long long q = z, ao = 0, bo = 0;\n    (void)q;\n");
  for (int d = o->rank - 3; d >= 0 && !mm.fold; d--) {
    fprintf(f, "    ao += q %% %lldLL * %lldLL;\n", (long long)o->shape[d], (long long)(mm.sa[d] * mm.m * mm.k));
    fprintf(f, "    bo += q %% %lldLL * %lldLL;\n", (long long)o->shape[d], (long long)(mm.sb[d] * mm.k * mm.n));
    fprintf(f, "    q /= %lldLL;\n", (long long)o->shape[d]);
  }
  // The accumulators: a thread's rows i and columns j of the tile (kiln_mm_row and
  // kiln_mm_col, or kiln_mma_row and kiln_mma_col: templates/matmul.cuh).
  const char *tp = kiln_cuda_fmt(k, "%d, %d, %d, %d", t.bm, t.bn, t.tm, t.tn);
  const char *pre = mma ? "kiln_mma" : "kiln_mm";
  int rows = mma ? t.tm / 8 : t.tm, cols = mma ? t.tn / 4 : t.tn;
  fprintf(f, "    float c[%d][%d];\n", rows, cols);
  fprintf(f, "    long long m0 = (long long)blockIdx.x * %d, n0 = (long long)blockIdx.y * %d;\n", t.bm, t.bn);
  fprintf(f, "    %s_tile<%d, %d, %d, %d, %d, %s, %s, %lldLL, %lldLL, %lldLL>(%s + ao, %s + bo, m0, n0, c);\n",
          pre, t.bm, t.bn, t.bk, t.tm, t.tn, o->attr.trans_a ? "true" : "false",
          o->attr.trans_b ? "true" : "false", (long long)mm.m, (long long)mm.n, (long long)mm.k, A, B);
  fprintf(f, "    for (int i = 0; i < %d; i++)\n", rows);
  fprintf(f, "      for (int j = 0; j < %d; j++) {\n", cols);
  fprintf(f, "        long long m = m0 + %s_row<%s>(i), col = n0 + %s_col<%s>(j);\n", pre, tp, pre, tp);
  fprintf(f, "        if (m >= %lldLL || col >= %lldLL) continue;\n", (long long)mm.m, (long long)mm.n);
  // row: of the output (and the root) with leading dims flattened.
  fprintf(f, "        long long row = z * %lldLL + m;\n", (long long)mm.m);
  fprintf(f, "        float acc = c[i][j];\n");
  const char *at = kiln_cuda_fmt(k, "[row * %lldLL + col]", (long long)mm.n);
  if (root < 0) {
    fprintf(f, "        %s%s = acc;\n", kiln_cuda_ptr(k, mm_id), at);
  } else {
    // The chain also stores mm when nodes outside the group read it.
    const char *v = kiln_cuda_chain(k, root, "row", "col", mm_id, "acc");
    fprintf(f, "        %s%s = %s;\n", kiln_cuda_ptr(k, root), at, v);
  }
  fprintf(f, "      }\n  }\n}\n");
  k->grid[0] = (uint32_t)(mt < 1 ? 1 : mt);
  k->grid[1] = (uint32_t)(nt < 1 ? 1 : nt);
  k->grid[2] = (uint32_t)(mm.batch < 1 ? 1 : mm.batch > 65535 ? 65535 : mm.batch);
  k->block[0] = (uint32_t)threads(t, mma);
  return 0;
}

int kiln_cuda_emit_matmul(KilnCudaKernel *k) { return emit(k, k->id, -1); }

int kiln_cuda_emit_matmul_group(KilnCudaKernel *k, int32_t mm) { return emit(k, mm, k->id); }
