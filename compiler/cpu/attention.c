// Scaled dot-product attention, forward and gradient (semantics: ir/interp.c).
// Both kernels are parallel over (batch, head); a head is a column range of the
// [B, T, D] buffers, so every matrix below is read in place with its buffer's row
// length as leading dimension (Mat). Within a head the query rows go in blocks of ROW_BLOCK: the
// block's scores against the keys it may see are one cblas_sgemm (with a causal
// mask only keys up to the block's last row: the masked triangle right of the
// diagonal block is never computed), the softmax a few vector passes over each
// row, and the products with V or the gradients more sgemm calls. The runtime
// keeps OpenBLAS single-threaded and spreads the (batch, head) pairs over its own
// threads. Scratch per pair: one block of scores (and of their gradients), so the
// whole [T, T] matrix never exists.
#include <math.h>

#include "compiler/cpu/cpu.h"

// Query rows per block: big enough for sgemm to run near its peak, small enough
// that the causal blocks skip most of the masked triangle (at T = 128, 32-row
// blocks compute 5/8 of the full score matrix) and the scratch stays small.
#define ROW_BLOCK 32
// f32 lanes of the explicit vector reductions (one AVX-512 register; LLVM splits
// it on narrower targets).
#define LANES 16

// cblas constants.

typedef struct {
  int64_t T, D, dh, heads;
  int64_t rb, nblk;  // rows per block, blocks per head
  bool causal;
  double scale;      // 1 / sqrt(dh)
} Att;

static Att att_of(const KilnNode *n, int64_t T, int64_t D) {
  Att a = {.T = T, .D = D, .heads = n->attr.heads, .causal = n->attr.causal};
  a.dh = D / a.heads;
  a.rb = T < ROW_BLOCK ? T : ROW_BLOCK;
  a.nblk = (T + a.rb - 1) / a.rb;
  a.scale = 1.0 / sqrt((double)a.dh);
  return a;
}

int64_t kiln_cpu_attention_scratch(const KilnNode *n) {
  if (n->op == KILN_OP_ATTENTION) {  // [B, T, D]: a block of scores per pair
    Att a = att_of(n, n->shape[1], n->shape[2]);
    return n->shape[0] * a.heads * a.rb * a.T;
  }
  KILN_ASSERT(n->op == KILN_OP_ATTENTION_GRAD);  // [B, T, 3D]: p and dp (then ds)
  Att a = att_of(n, n->shape[1], n->shape[2] / 3);
  return n->shape[0] * a.heads * 2 * a.rb * a.T;
}

static LLVMValueRef scratch(KilnKernel *k) {
  return kiln_cpu_body_ptr(k->cg, k->body, KILN_LOC_ARENA, k->plan->scratch[k->id],
                           k->plan->scratch_bytes[k->id]);
}

static LLVMValueRef at(KilnCg *c, LLVMValueRef base, LLVMValueRef index) {
  return kiln_cg_gep(c, c->f32, base, index);
}

static LLVMValueRef imin(KilnCg *c, LLVMValueRef a, LLVMValueRef b) {
  return LLVMBuildSelect(c->b, LLVMBuildICmp(c->b, LLVMIntSLT, a, b, ""), a, b, "");
}

//
// Row reductions as explicit <LANES x float> loops: LLVM 16's C API sets no
// fast-math flags, without which the loop vectorizer keeps a floating-point
// reduction scalar (it may not reorder the additions). The lanes are combined
// in order, then the tail of n % LANES elements.
//
typedef enum { RED_MAX, RED_SUM, RED_DOT } Red;

static LLVMValueRef combine(KilnCg *c, Red r, LLVMValueRef acc, LLVMValueRef x, LLVMValueRef y) {
  if (r == RED_MAX) return LLVMBuildSelect(c->b, LLVMBuildFCmp(c->b, LLVMRealOGT, x, acc, ""), x, acc, "");
  if (r == RED_DOT) x = LLVMBuildFMul(c->b, x, y, "");
  return LLVMBuildFAdd(c->b, acc, x, "");
}

static LLVMValueRef vload(KilnCg *c, LLVMTypeRef vt, LLVMValueRef base, LLVMValueRef index) {
  LLVMValueRef v = LLVMBuildLoad2(c->b, vt, at(c, base, index), "");
  LLVMSetAlignment(v, 4);  // rows start at any float
  return v;
}

// max_j x[j], sum_j x[j] or sum_j x[j] y[j] over j < n.
static LLVMValueRef reduce(KilnCg *c, Red r, LLVMValueRef x, LLVMValueRef y, LLVMValueRef n) {
  LLVMTypeRef vt = LLVMVectorType(c->f32, LANES);
  LLVMValueRef init = kiln_cg_f32(c, r == RED_MAX ? -INFINITY : 0), lanes[LANES];
  for (int l = 0; l < LANES; l++) lanes[l] = init;
  LLVMValueRef vacc = kiln_cg_alloca(c, vt, "vacc"), acc = kiln_cg_alloca(c, c->f32, "acc");
  LLVMBuildStore(c->b, LLVMConstVector(lanes, LANES), vacc);
  LLVMValueRef chunks = LLVMBuildSDiv(c->b, n, kiln_cg_i64(c, LANES), "");
  KilnLoop v = kiln_cg_loop_begin(c, kiln_cg_i64(c, 0), chunks, "vec");
  LLVMValueRef j = kiln_cg_mul(c, v.index, kiln_cg_i64(c, LANES));
  LLVMValueRef yv = r == RED_DOT ? vload(c, vt, y, j) : NULL;
  LLVMBuildStore(c->b, combine(c, r, LLVMBuildLoad2(c->b, vt, vacc, ""), vload(c, vt, x, j), yv), vacc);
  kiln_cg_loop_end(c, &v);
  LLVMValueRef vec = LLVMBuildLoad2(c->b, vt, vacc, ""), s = init;
  for (int l = 0; l < LANES; l++)
    s = combine(c, r == RED_MAX ? RED_MAX : RED_SUM, s, LLVMBuildExtractElement(c->b, vec, kiln_cg_i64(c, l), ""), NULL);
  LLVMBuildStore(c->b, s, acc);
  KilnLoop t = kiln_cg_loop_begin(c, kiln_cg_mul(c, chunks, kiln_cg_i64(c, LANES)), n, "tail");
  LLVMValueRef yt = r == RED_DOT ? kiln_cg_load(c, c->f32, y, t.index) : NULL;
  LLVMBuildStore(c->b, combine(c, r, LLVMBuildLoad2(c->b, c->f32, acc, ""), kiln_cg_load(c, c->f32, x, t.index), yt), acc);
  kiln_cg_loop_end(c, &t);
  return LLVMBuildLoad2(c->b, c->f32, acc, "");
}

static void fill(KilnCg *c, LLVMValueRef x, LLVMValueRef from, LLVMValueRef to, double v) {
  KilnLoop j = kiln_cg_loop_begin(c, from, to, "fill");
  kiln_cg_store(c, kiln_cg_f32(c, v), x, j.index);
  kiln_cg_loop_end(c, &j);
}

// The scores s[0, n) of one query row become its softmax, stabilised by the row's
// largest score; s[n, j1) (masked keys inside the diagonal block) become 0. The
// exp and scaling loops have no reduction, so LLVM vectorizes them itself.
static void softmax_row(KilnCg *c, LLVMValueRef s, LLVMValueRef n, LLVMValueRef j1) {
  LLVMValueRef m = reduce(c, RED_MAX, s, NULL, n);
  KilnLoop e = kiln_cg_loop_begin(c, kiln_cg_i64(c, 0), n, "exp");
  LLVMValueRef x = LLVMBuildFSub(c->b, kiln_cg_load(c, c->f32, s, e.index), m, "");
  kiln_cg_store(c, kiln_cg_exp(c, x), s, e.index);
  kiln_cg_loop_end(c, &e);
  LLVMValueRef inv = LLVMBuildFDiv(c->b, kiln_cg_f32(c, 1), reduce(c, RED_SUM, s, NULL, n), "");
  KilnLoop w = kiln_cg_loop_begin(c, kiln_cg_i64(c, 0), n, "norm");
  kiln_cg_store(c, LLVMBuildFMul(c->b, kiln_cg_load(c, c->f32, s, w.index), inv, ""), s, w.index);
  kiln_cg_loop_end(c, &w);
  fill(c, s, n, j1, 0);
}

//
// One (batch, head) and one block of its query rows.
//
// An operand as the kernels see it: the current pair's head, a [T, dh] matrix with
// rows ld elements apart: D for a [B, T, D] buffer, 3D for attention_grad's
// output, the row length of a wider value when the operand is a window of it read
// in place (passes/memplan.c: the q, k, v slices of a fused projection).
typedef struct {
  LLVMValueRef p;  // row 0, column 0 of the head
  int64_t ld;
} Mat;

typedef struct {
  LLVMValueRef i0;     // the block's first query row
  LLVMValueRef rows;   // its rows: ROW_BLOCK, fewer in the last block
  LLVMValueRef j1;     // keys it sees: [0, j1), up to its last row when causal
} Block;

// The row stride of input id: its own row length, or its source's when it is a
// window read in place.
static int64_t row_stride(const KilnKernel *k, int32_t id) {
  const KilnNode *x = &k->g->nodes[id];
  if (!k->plan->alias || k->plan->alias[id] < 0 || !kiln_op_has(x->op, KILN_OPF_WINDOW))
    return x->shape[x->rank - 1];
  const KilnNode *src = &k->g->nodes[x->in[0]];
  return src->shape[src->rank - 1];
}

// Pair bh's head in the buffer at base, rows ld elements apart.
static Mat head(KilnCg *c, const Att *a, LLVMValueRef base, int64_t ld, LLVMValueRef bh) {
  LLVMValueRef bi = LLVMBuildSDiv(c->b, bh, kiln_cg_i64(c, a->heads), "");
  LLVMValueRef col = kiln_cg_mul(c, LLVMBuildSRem(c->b, bh, kiln_cg_i64(c, a->heads), ""), kiln_cg_i64(c, a->dh));
  return (Mat){at(c, base, kiln_cg_add(c, kiln_cg_mul(c, bi, kiln_cg_i64(c, a->T * ld)), col)), ld};
}

// Input j of the kernel's node at pair bh's head.
static Mat input_head(KilnKernel *k, const Att *a, int j, LLVMValueRef bh) {
  int32_t id = k->n->in[j];
  return head(k->cg, a, kiln_cpu_ptr(k, id), row_stride(k, id), bh);
}

// Row i of a head.
static LLVMValueRef row(KilnCg *c, Mat m, LLVMValueRef i) {
  return at(c, m.p, kiln_cg_mul(c, i, kiln_cg_i64(c, m.ld)));
}

static Block block_of(KilnCg *c, const Att *a, LLVMValueRef blk) {
  Block b;
  b.i0 = kiln_cg_mul(c, blk, kiln_cg_i64(c, a->rb));
  b.rows = imin(c, kiln_cg_i64(c, a->rb), LLVMBuildSub(c->b, kiln_cg_i64(c, a->T), b.i0, ""));
  b.j1 = a->causal ? kiln_cg_add(c, b.i0, b.rows) : kiln_cg_i64(c, a->T);
  return b;
}

// Keys query row i0 + r sees: [0, i0 + r + 1) when causal, else all T.
static LLVMValueRef row_keys(KilnCg *c, const Att *a, const Block *b, LLVMValueRef r) {
  if (!a->causal) return kiln_cg_i64(c, a->T);
  return kiln_cg_add(c, kiln_cg_add(c, b->i0, r), kiln_cg_i64(c, 1));
}

// P [rows, j1] (row stride T) = softmax(Q_block K^T * scale), masked: one sgemm,
// then each row's softmax.
static void block_probs(KilnCg *c, const Att *a, const Block *b, Mat Q, Mat K, LLVMValueRef P) {
  kiln_cpu_sgemm(c, &(KilnGemm){.tb = true, .m = b->rows, .n = b->j1, .k = kiln_cg_i64(c, a->dh), .alpha = a->scale,
                   .a = row(c, Q, b->i0), .lda = Q.ld, .b = K.p, .ldb = K.ld,
                   .beta = kiln_cg_f32(c, 0), .c = P, .ldc = a->T});
  KilnLoop r = kiln_cg_loop_begin(c, kiln_cg_i64(c, 0), b->rows, "row");
  softmax_row(c, at(c, P, kiln_cg_mul(c, r.index, kiln_cg_i64(c, a->T))), row_keys(c, a, b, r.index), b->j1);
  kiln_cg_loop_end(c, &r);
}

// attention(q, k, v [B, T, D]) -> y [B, T, D]: per block, P as above, then
// Y_block = P V. Scratch per pair: P [ROW_BLOCK, T].
int64_t kiln_cpu_attention(KilnKernel *k) {
  KilnCg *c = k->cg;
  const KilnNode *o = k->n;
  Att a = att_of(o, o->shape[1], o->shape[2]);
  LLVMValueRef S = scratch(k);
  KilnLoop bh = kiln_cg_loop_begin(c, k->lo, k->hi, "bh");
  Mat Q = input_head(k, &a, 0, bh.index), K = input_head(k, &a, 1, bh.index);
  Mat V = input_head(k, &a, 2, bh.index), Y = head(c, &a, kiln_cpu_ptr(k, k->id), a.D, bh.index);
  LLVMValueRef P = at(c, S, kiln_cg_mul(c, bh.index, kiln_cg_i64(c, a.rb * a.T)));
  KilnLoop blk = kiln_cg_loop_begin(c, kiln_cg_i64(c, 0), kiln_cg_i64(c, a.nblk), "blk");
  Block b = block_of(c, &a, blk.index);
  block_probs(c, &a, &b, Q, K, P);
  kiln_cpu_sgemm(c, &(KilnGemm){.m = b.rows, .n = kiln_cg_i64(c, a.dh), .k = b.j1, .alpha = 1, .a = P, .lda = a.T,
                   .b = V.p, .ldb = V.ld, .beta = kiln_cg_f32(c, 0), .c = row(c, Y, b.i0),
                   .ldc = Y.ld});
  kiln_cg_loop_end(c, &blk);
  kiln_cg_loop_end(c, &bh);
  return o->shape[0] * a.heads;
}

// attention_grad(q, k, v, dy [B, T, D]) -> [B, T, 3D]: dq, dk, dv side by side in
// each row (leading dimension 3D, the layout of a fused q|k|v projection's
// output, whose gradient it then is without a copy). Per block,
// P as the forward computes it, dP = dY_block V^T, and per row
// dS = P (dP - sum_j P dP) * scale (the sum is dy_i . y_i, taken from P and dP
// since y is not an input); then
//   dV[0, j1) += P^T dY_block,  dQ_block = dS K[0, j1),  dK[0, j1) += dS^T Q_block.
// Blocks run last to first: the last one sees every key, so its sgemm calls
// write dK and dV whole (beta 0) and the others add to them. Scratch per pair:
// P and dP (overwritten by dS), each [ROW_BLOCK, T].
int64_t kiln_cpu_attention_grad(KilnKernel *k) {
  KilnCg *c = k->cg;
  const KilnNode *o = k->n;
  int64_t B = o->shape[0], od = o->shape[2];
  Att a = att_of(o, o->shape[1], od / 3);
  LLVMValueRef S = scratch(k), out = kiln_cpu_ptr(k, k->id);
  LLVMValueRef dh = kiln_cg_i64(c, a.dh), zero = kiln_cg_f32(c, 0);
  KilnLoop bh = kiln_cg_loop_begin(c, k->lo, k->hi, "bh");
  Mat Q = input_head(k, &a, 0, bh.index), K = input_head(k, &a, 1, bh.index);
  Mat V = input_head(k, &a, 2, bh.index), DY = input_head(k, &a, 3, bh.index);
  Mat DQ = head(c, &a, out, od, bh.index);
  Mat DK = {at(c, DQ.p, kiln_cg_i64(c, a.D)), od}, DV = {at(c, DQ.p, kiln_cg_i64(c, 2 * a.D)), od};
  LLVMValueRef P = at(c, S, kiln_cg_mul(c, bh.index, kiln_cg_i64(c, 2 * a.rb * a.T)));
  LLVMValueRef DS = at(c, P, kiln_cg_i64(c, a.rb * a.T));
  KilnLoop it = kiln_cg_loop_begin(c, kiln_cg_i64(c, 0), kiln_cg_i64(c, a.nblk), "blk");
  Block b = block_of(c, &a, LLVMBuildSub(c->b, kiln_cg_i64(c, a.nblk - 1), it.index, ""));
  LLVMValueRef beta = LLVMBuildSelect(c->b, LLVMBuildICmp(c->b, LLVMIntEQ, it.index, kiln_cg_i64(c, 0), ""),
                                      zero, kiln_cg_f32(c, 1), "");
  LLVMValueRef dyb = row(c, DY, b.i0), qb = row(c, Q, b.i0);  // the block's rows
  block_probs(c, &a, &b, Q, K, P);
  kiln_cpu_sgemm(c, &(KilnGemm){.tb = true, .m = b.rows, .n = b.j1, .k = dh, .alpha = 1, .a = dyb,
                   .lda = DY.ld, .b = V.p, .ldb = V.ld, .beta = zero, .c = DS, .ldc = a.T});
  KilnLoop r = kiln_cg_loop_begin(c, kiln_cg_i64(c, 0), b.rows, "row");
  LLVMValueRef roff = kiln_cg_mul(c, r.index, kiln_cg_i64(c, a.T));
  LLVMValueRef prow = at(c, P, roff), srow = at(c, DS, roff);
  LLVMValueRef pdp = reduce(c, RED_DOT, prow, srow, row_keys(c, &a, &b, r.index));
  // Masked keys have p = 0, hence ds = 0.
  KilnLoop j = kiln_cg_loop_begin(c, kiln_cg_i64(c, 0), b.j1, "ds");
  LLVMValueRef dp = LLVMBuildFSub(c->b, kiln_cg_load(c, c->f32, srow, j.index), pdp, "");
  LLVMValueRef ds = LLVMBuildFMul(c->b, kiln_cg_load(c, c->f32, prow, j.index), dp, "");
  kiln_cg_store(c, LLVMBuildFMul(c->b, ds, kiln_cg_f32(c, a.scale), ""), srow, j.index);
  kiln_cg_loop_end(c, &j);
  kiln_cg_loop_end(c, &r);
  kiln_cpu_sgemm(c, &(KilnGemm){.ta = true, .m = b.j1, .n = dh, .k = b.rows, .alpha = 1, .a = P, .lda = a.T,
                   .b = dyb, .ldb = DY.ld, .beta = beta, .c = DV.p, .ldc = DV.ld});
  kiln_cpu_sgemm(c, &(KilnGemm){.m = b.rows, .n = dh, .k = b.j1, .alpha = 1, .a = DS, .lda = a.T,
                   .b = K.p, .ldb = K.ld, .beta = zero, .c = row(c, DQ, b.i0), .ldc = DQ.ld});
  kiln_cpu_sgemm(c, &(KilnGemm){.ta = true, .m = b.j1, .n = dh, .k = b.rows, .alpha = 1, .a = DS, .lda = a.T,
                   .b = qb, .ldb = Q.ld, .beta = beta, .c = DK.p, .ldc = DK.ld});
  kiln_cg_loop_end(c, &it);
  kiln_cg_loop_end(c, &bh);
  return B * a.heads;
}
