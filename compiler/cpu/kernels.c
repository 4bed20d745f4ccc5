// One kernel per node: an LLVM function `void kN(ptr w, ptr a, i64 lo, i64 hi)`
// that computes iterations [lo, hi) of the node's outermost parallel loop. Shapes
// are compile-time constants, so every bound and stride below is a literal in the
// generated code. Semantics match the reference interpreter (ir/interp.c).
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "compiler/cpu/cpu.h"

// Rows at or above this M*N*K go to cblas_sgemm; below it the generated loop wins
// (no call overhead, shapes known).
#define BLAS_MIN_WORK (48 * 48 * 48)
#define BLAS_ROW_BLOCK 64
// Products of at most BLAS_COL_SPLIT_ROWS rows and more columns than rows split
// their columns among threads, in blocks of BLAS_COL_BLOCK (emit_matmul_blas_cols).
#define BLAS_COL_SPLIT_ROWS 256
#define BLAS_COL_BLOCK 64

static const KilnNode *in_node(KilnKernel *k, int i) { return &k->g->nodes[k->n->in[i]]; }

// Bytes from a value's first element to its last: a window read in place from a
// wider value's rows (passes/memplan.c) spans those rows.
static int64_t extent(const KilnKernel *k, int32_t id) {
  const KilnNode *x = &k->g->nodes[id];
  int64_t n = kiln_node_numel(x), d = x->rank ? x->shape[x->rank - 1] : 1;
  if (!k->plan->alias || k->plan->alias[id] < 0 || !kiln_op_has(x->op, KILN_OPF_WINDOW) || !n)
    return n * 4;
  const KilnNode *s = &k->g->nodes[x->in[0]];
  return ((n / d - 1) * s->shape[s->rank - 1] + d) * 4;
}

// Buffers reach a kernel body as parameters (kiln_cpu_shared_kernel): no offset
// of the plan appears in a body, so the layers' identical kernels share one.
LLVMValueRef kiln_cpu_ptr(KilnKernel *k, int32_t id) {
  return kiln_cpu_body_ptr(k->cg, k->body, k->plan->where[id], k->plan->offset[id], extent(k, id));
}

static int64_t prod(const int64_t *s, int from, int to) {
  int64_t p = 1;
  for (int i = from; i < to; i++) p *= s[i];
  return p;
}

// Loads element idx of node id as f32 (i32 values are converted).
static LLVMValueRef load_f(KilnKernel *k, int32_t id, LLVMValueRef base, LLVMValueRef idx) {
  KilnCg *c = k->cg;
  if (k->g->nodes[id].dtype == KILN_F32) return kiln_cg_load(c, c->f32, base, idx);
  return LLVMBuildSIToFP(c->b, kiln_cg_load(c, c->i32, base, idx), c->f32, "");
}

static void store_f(KilnKernel *k, LLVMValueRef v, LLVMValueRef base, LLVMValueRef idx) {
  KilnCg *c = k->cg;
  if (k->n->dtype == KILN_I32) v = LLVMBuildFPToSI(c->b, v, c->i32, "");
  kiln_cg_store(c, v, base, idx);
}

//
// Small builders shared by the kernels.
//
// A scalar f32 accumulator in a stack slot (mem2reg makes it a register).
static LLVMValueRef acc_new(KilnCg *c, double init, const char *name) {
  LLVMValueRef a = kiln_cg_alloca(c, c->f32, name);
  LLVMBuildStore(c->b, kiln_cg_f32(c, init), a);
  return a;
}

static LLVMValueRef acc_get(KilnCg *c, LLVMValueRef a) { return LLVMBuildLoad2(c->b, c->f32, a, ""); }

// base[idx] += v, and a loop over [0, n).
static void add_to(KilnCg *c, LLVMValueRef base, LLVMValueRef idx, LLVMValueRef v) {
  kiln_cg_store(c, LLVMBuildFAdd(c->b, kiln_cg_load(c, c->f32, base, idx), v, ""), base, idx);
}

static KilnLoop upto(KilnCg *c, int64_t n, const char *name) {
  return kiln_cg_loop_begin(c, kiln_cg_i64(c, 0), kiln_cg_i64(c, n), name);
}

// Reductions over j in [0, d) of n terms (n <= 2) that term(k, j, ctx, v)
// computes, in 8 lanes: lane l takes the terms of j = l mod 8 in order, then the
// lanes are combined in order, then the tail past the last multiple of 8. A row's
// sum no longer waits on one add after another (f32 adds may not be reordered, so
// LLVM keeps a single running sum serial: 3 cycles an element), and the 8 terms of
// a step are adjacent, which LLVM turns into vector loads and arithmetic. The
// order is fixed for a row, whatever the thread count. A max takes the larger of
// each comparison and skips NaN, as the serial loops did, so its result does not
// depend on the order at all.
typedef void (*LaneTerm)(KilnKernel *k, LLVMValueRef j, void *ctx, LLVMValueRef *v);
typedef enum { LANE_SUM, LANE_MAX } LaneOp;

static LLVMValueRef lane_combine(KilnCg *c, LaneOp op, LLVMValueRef acc, LLVMValueRef v) {
  if (op == LANE_SUM) return LLVMBuildFAdd(c->b, acc, v, "");
  return LLVMBuildSelect(c->b, LLVMBuildFCmp(c->b, LLVMRealOGT, v, acc, ""), v, acc, "");
}

static void lane_reduce(KilnKernel *k, int64_t d, int n, LaneOp op, LaneTerm term, void *ctx,
                        LLVMValueRef *out) {
  KilnCg *c = k->cg;
  LLVMTypeRef vt = LLVMVectorType(c->f32, 8);
  double init = op == LANE_SUM ? 0 : -INFINITY;
  LLVMValueRef acc[2], tail[2], v[2];
  for (int i = 0; i < n; i++) {
    acc[i] = kiln_cg_alloca(c, vt, "lanes");
    LLVMValueRef e[8];
    for (int l = 0; l < 8; l++) e[l] = kiln_cg_f32(c, init);
    LLVMBuildStore(c->b, LLVMConstVector(e, 8), acc[i]);
    tail[i] = acc_new(c, init, "tail");
  }
  KilnLoop q = upto(c, d / 8, "j8");
  LLVMValueRef j0 = kiln_cg_mul(c, q.index, kiln_cg_i64(c, 8)), vec[2];
  for (int i = 0; i < n; i++) vec[i] = LLVMGetUndef(vt);
  for (int l = 0; l < 8; l++) {
    term(k, kiln_cg_add(c, j0, kiln_cg_i64(c, l)), ctx, v);
    for (int i = 0; i < n; i++) vec[i] = LLVMBuildInsertElement(c->b, vec[i], v[i], kiln_cg_i32(c, l), "");
  }
  for (int i = 0; i < n; i++)
    LLVMBuildStore(c->b, lane_combine(c, op, LLVMBuildLoad2(c->b, vt, acc[i], ""), vec[i]), acc[i]);
  kiln_cg_loop_end(c, &q);
  KilnLoop t = kiln_cg_loop_begin(c, kiln_cg_i64(c, d / 8 * 8), kiln_cg_i64(c, d), "jt");
  term(k, t.index, ctx, v);
  for (int i = 0; i < n; i++) LLVMBuildStore(c->b, lane_combine(c, op, acc_get(c, tail[i]), v[i]), tail[i]);
  kiln_cg_loop_end(c, &t);
  for (int i = 0; i < n; i++) {
    LLVMValueRef lanes = LLVMBuildLoad2(c->b, vt, acc[i], ""), r = NULL;
    for (int l = 0; l < 8; l++) {
      LLVMValueRef x = LLVMBuildExtractElement(c->b, lanes, kiln_cg_i32(c, l), "");
      r = l ? lane_combine(c, op, r, x) : x;
    }
    out[i] = lane_combine(c, op, r, acc_get(c, tail[i]));
  }
}

static LLVMValueRef in_load(KilnKernel *k, int j, LLVMValueRef flat);

// The terms of a row of a softmax or a cross-entropy: element j at base + j *
// stride of src (NULL: the kernel's input 0, through in_load), or with shift,
// exp(element - shift), also stored to dst at the same index when dst is set.
typedef struct {
  LLVMValueRef base, src, shift, dst;
  int64_t stride;
} RowTerm;

static void row_term(KilnKernel *k, LLVMValueRef j, void *ctx, LLVMValueRef *v) {
  KilnCg *c = k->cg;
  const RowTerm *r = ctx;
  LLVMValueRef at = kiln_cg_add(c, r->base, r->stride == 1 ? j : kiln_cg_mul(c, j, kiln_cg_i64(c, r->stride)));
  LLVMValueRef x = r->src ? kiln_cg_load(c, c->f32, r->src, at) : in_load(k, 0, at);
  if (r->shift) {
    x = kiln_cg_exp(c, LLVMBuildFSub(c->b, x, r->shift, ""));
    if (r->dst) kiln_cg_store(c, x, r->dst, at);
  }
  v[0] = x;
}

// f32 arithmetic, a load, and the index a * stride + b, for the long kernels.
static LLVMValueRef fsub(KilnCg *c, LLVMValueRef a, LLVMValueRef b) { return LLVMBuildFSub(c->b, a, b, ""); }
static LLVMValueRef fmul(KilnCg *c, LLVMValueRef a, LLVMValueRef b) { return LLVMBuildFMul(c->b, a, b, ""); }
static LLVMValueRef ld(KilnCg *c, LLVMValueRef base, LLVMValueRef idx) {
  return kiln_cg_load(c, c->f32, base, idx);
}
static LLVMValueRef ix(KilnCg *c, LLVMValueRef a, int64_t stride, LLVMValueRef b) {
  return kiln_cg_add(c, kiln_cg_mul(c, a, kiln_cg_i64(c, stride)), b);
}

//
// Scalar semantics, as the op table's sc_* functions define them.
//
static LLVMValueRef fsel(KilnCg *c, LLVMRealPredicate p, LLVMValueRef a, LLVMValueRef b,
                         LLVMValueRef t, LLVMValueRef f) {
  return LLVMBuildSelect(c->b, LLVMBuildFCmp(c->b, p, a, b, ""), t, f, "");
}

static LLVMValueRef sigmoid(KilnCg *c, LLVMValueRef x) {
  LLVMValueRef e = kiln_cg_exp(c, LLVMBuildFNeg(c->b, x, ""));
  return LLVMBuildFDiv(c->b, kiln_cg_f32(c, 1), LLVMBuildFAdd(c->b, kiln_cg_f32(c, 1), e, ""), "");
}

static LLVMValueRef tanh_f(KilnCg *c, LLVMValueRef x) { return kiln_cg_tanh(c, x); }

LLVMValueRef kiln_cpu_scalar(KilnCg *c, const KilnNode *n, LLVMValueRef *x) {
  LLVMBuilderRef b = c->b;
  LLVMValueRef zero = kiln_cg_f32(c, 0), one = kiln_cg_f32(c, 1);
  switch (n->op) {
  case KILN_OP_NEG: return LLVMBuildFNeg(b, x[0], "");
  case KILN_OP_EXP: return kiln_cg_exp(c, x[0]);
  case KILN_OP_LOG: return kiln_cg_call1(c, "llvm.log.f32", x[0]);
  case KILN_OP_SQRT: return kiln_cg_call1(c, "llvm.sqrt.f32", x[0]);
  case KILN_OP_RSQRT: return LLVMBuildFDiv(b, one, kiln_cg_call1(c, "llvm.sqrt.f32", x[0]), "");
  case KILN_OP_POW:
    if (n->attr.exponent == 2) return LLVMBuildFMul(b, x[0], x[0], "");
    return kiln_cg_call2(c, "llvm.pow.f32", x[0], kiln_cg_f32(c, n->attr.exponent));
  case KILN_OP_RELU: return fsel(c, LLVMRealOLT, x[0], zero, zero, x[0]);
  case KILN_OP_SIGMOID: return sigmoid(c, x[0]);
  case KILN_OP_TANH: return tanh_f(c, x[0]);
  case KILN_OP_GELU: {
    // 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
    LLVMValueRef x3 = LLVMBuildFMul(b, LLVMBuildFMul(b, x[0], x[0], ""), x[0], "");
    LLVMValueRef in = LLVMBuildFAdd(b, x[0], LLVMBuildFMul(b, kiln_cg_f32(c, 0.044715), x3, ""), "");
    LLVMValueRef t = tanh_f(c, LLVMBuildFMul(b, kiln_cg_f32(c, 0.7978845608028654), in, ""));
    return LLVMBuildFMul(b, LLVMBuildFMul(b, kiln_cg_f32(c, 0.5), x[0], ""),
                         LLVMBuildFAdd(b, one, t, ""), "");
  }
  case KILN_OP_SILU: return LLVMBuildFMul(b, x[0], sigmoid(c, x[0]), "");
  case KILN_OP_CLAMP: {
    LLVMValueRef lo = kiln_cg_f32(c, n->attr.lo), hi = kiln_cg_f32(c, n->attr.hi);
    return fsel(c, LLVMRealOLT, x[0], lo, lo, fsel(c, LLVMRealOGT, x[0], hi, hi, x[0]));
  }
  case KILN_OP_ADD: return LLVMBuildFAdd(b, x[0], x[1], "");
  case KILN_OP_SUB: return LLVMBuildFSub(b, x[0], x[1], "");
  case KILN_OP_MUL: return LLVMBuildFMul(b, x[0], x[1], "");
  case KILN_OP_DIV: return LLVMBuildFDiv(b, x[0], x[1], "");
  case KILN_OP_WHERE: return fsel(c, LLVMRealUNE, x[0], zero, x[1], x[2]);
  case KILN_OP_BROADCAST: return x[0];
  case KILN_OP_GELU_GRAD: {
    // dy (0.5 (1 + t) + 0.5 x (1 - t^2) k (1 + 3 c x^2)),  t = tanh(k (x + c x^3))
    LLVMValueRef k = kiln_cg_f32(c, 0.7978845608028654), cc = kiln_cg_f32(c, 0.044715);
    LLVMValueRef half = kiln_cg_f32(c, 0.5), x2 = LLVMBuildFMul(b, x[0], x[0], "");
    LLVMValueRef in = LLVMBuildFAdd(b, x[0], LLVMBuildFMul(b, cc, LLVMBuildFMul(b, x2, x[0], ""), ""), "");
    LLVMValueRef t = tanh_f(c, LLVMBuildFMul(b, k, in, ""));
    LLVMValueRef d1 = LLVMBuildFMul(b, half, LLVMBuildFAdd(b, one, t, ""), "");
    LLVMValueRef sech2 = LLVMBuildFSub(b, one, LLVMBuildFMul(b, t, t, ""), "");
    LLVMValueRef du = LLVMBuildFMul(b, k, LLVMBuildFAdd(b, one, LLVMBuildFMul(b, kiln_cg_f32(c, 3 * 0.044715), x2, ""), ""), "");
    LLVMValueRef d2 = LLVMBuildFMul(b, LLVMBuildFMul(b, LLVMBuildFMul(b, half, x[0], ""), sech2, ""), du, "");
    return LLVMBuildFMul(b, x[1], LLVMBuildFAdd(b, d1, d2, ""), "");
  }
  case KILN_OP_SILU_GRAD: {  // dy s (1 + x (1 - s)),  s = sigmoid(x)
    LLVMValueRef sg = sigmoid(c, x[0]);
    LLVMValueRef in = LLVMBuildFAdd(b, one, LLVMBuildFMul(b, x[0], LLVMBuildFSub(b, one, sg, ""), ""), "");
    return LLVMBuildFMul(b, x[1], LLVMBuildFMul(b, sg, in, ""), "");
  }
  case KILN_OP_CLAMP_GRAD: {  // dy where lo <= x <= hi, else 0 (a NaN x too)
    LLVMValueRef lo = kiln_cg_f32(c, n->attr.lo), hi = kiln_cg_f32(c, n->attr.hi);
    return fsel(c, LLVMRealOGE, x[0], lo, fsel(c, LLVMRealOLE, x[0], hi, x[1], zero), zero);
  }
  KILN_CASES_NOT_SCALAR
    break;
  }
  KILN_ASSERT(!"not an elementwise op");
  return NULL;
}

//
// Elementwise and broadcast: parallel over rows (all dims but the last); inside a
// row each input advances by 1 or, where it is broadcast, by 0.
//
typedef struct {
  int64_t stride[KILN_MAX_RANK];  // per output dim, in the input's elements
} Bcast;

static void bcast_strides(const KilnNode *out, const KilnNode *in, Bcast *s) {
  int off = out->rank - in->rank;
  int64_t st = 1;
  for (int d = out->rank - 1; d >= 0; d--) {
    int id = d - off;
    if (id < 0 || in->shape[id] == 1) {
      s->stride[d] = 0;
    } else {
      s->stride[d] = st;
      st *= in->shape[id];
    }
  }
}

// Offset of row r's first element in an input with strides s, r counting rows of
// shape o: the row index is split into coordinates of dims [0, rank-1) by
// constant divisions.
static LLVMValueRef row_offset_in(const KilnKernel *k, const KilnNode *o, LLVMValueRef r,
                                  const Bcast *s) {
  KilnCg *c = k->cg;
  LLVMValueRef off = kiln_cg_i64(c, 0);
  LLVMValueRef rem = r;
  for (int d = o->rank - 2; d >= 0; d--) {
    LLVMValueRef dim = kiln_cg_i64(c, o->shape[d]);
    LLVMValueRef coord = d ? LLVMBuildSRem(c->b, rem, dim, "") : rem;
    if (s->stride[d]) off = kiln_cg_add(c, off, kiln_cg_mul(c, coord, kiln_cg_i64(c, s->stride[d])));
    if (d) rem = LLVMBuildSDiv(c->b, rem, dim, "");
  }
  return off;
}

static LLVMValueRef row_offset(KilnKernel *k, LLVMValueRef r, const Bcast *s) {
  return row_offset_in(k, k->n, r, s);
}

//
// Fusion groups (passes/fuse.c): a kernel computes its interior nodes inline.
//
static bool inline_here(const KilnKernel *k, int32_t id) {
  return k->g->fused_into && k->g->fused_into[id] == k->id;
}

// The buffer the group's matmul mm writes: its own when nodes outside the group
// read it, else the root's, which the epilogue then overwrites row by row.
static int32_t matmul_out(const KilnKernel *k, int32_t mm) {
  return kiln_graph_fused_stored(k->g, mm) ? mm : k->id;
}

// The value of node id at (row, col) of top's shape. Interior nodes of a tree have
// the top's shape and are computed from their inputs (and stored as well when
// read outside the group); the group's matmul has written its rows already; other
// leaves are loaded, broadcast to the top's shape.
static LLVMValueRef tree_at(const KilnKernel *k, int32_t id, const KilnNode *top, LLVMValueRef row,
                            LLVMValueRef col) {
  KilnCg *c = k->cg;
  const KilnNode *n = &k->g->nodes[id];
  int64_t last = top->rank ? top->shape[top->rank - 1] : 1;
  if (inline_here(k, id) && kiln_op_has(n->op, KILN_OPF_EPILOGUE))
    return kiln_cg_load(c, c->f32, kiln_cpu_ptr((KilnKernel *)k, matmul_out(k, id)),
                        ix(c, row, last, col));
  if (inline_here(k, id)) {
    LLVMValueRef x[KILN_MAX_INPUTS];
    for (int j = 0; j < n->nin; j++) x[j] = tree_at(k, n->in[j], top, row, col);
    LLVMValueRef v = kiln_cpu_scalar(c, n, x);
    if (kiln_graph_fused_stored(k->g, id)) {
      KILN_ASSERT(kiln_node_numel(n) == kiln_node_numel(top));  // fuse.c: a chain of one shape
      kiln_cg_store(c, v, kiln_cpu_ptr((KilnKernel *)k, id), ix(c, row, last, col));
    }
    return v;
  }
  // A leaf of the top's own shape is read at the top's flat index, the very
  // expression the output is written at: LLVM then sees an in-place kernel's
  // load and store hit the same address and vectorizes without a runtime check.
  if (n->rank == top->rank && !memcmp(n->shape, top->shape, sizeof(int64_t) * (size_t)n->rank))
    return load_f((KilnKernel *)k, id, kiln_cpu_ptr((KilnKernel *)k, id), ix(c, row, last, col));
  Bcast s;
  bcast_strides(top, n, &s);
  LLVMValueRef off = row_offset_in(k, top, row, &s);
  int64_t st = top->rank ? s.stride[top->rank - 1] : 0;
  if (st) off = kiln_cg_add(c, off, kiln_cg_mul(c, col, kiln_cg_i64(c, st)));
  return load_f((KilnKernel *)k, id, kiln_cpu_ptr((KilnKernel *)k, id), off);
}

// Input j of the kernel's node at element `flat` of its own shape: a load, or, when
// input j is fused into this kernel, its value computed here.
static LLVMValueRef in_load(KilnKernel *k, int j, LLVMValueRef flat) {
  KilnCg *c = k->cg;
  int32_t id = k->n->in[j];
  if (!inline_here(k, id)) return kiln_cg_load(c, c->f32, kiln_cpu_ptr(k, id), flat);
  const KilnNode *x = &k->g->nodes[id];
  LLVMValueRef last = kiln_cg_i64(c, x->rank ? x->shape[x->rank - 1] : 1);
  return tree_at(k, id, x, LLVMBuildSDiv(c->b, flat, last, ""), LLVMBuildSRem(c->b, flat, last, ""));
}

// The root of an elementwise group at (row, col): its op on its inputs' values.
static LLVMValueRef root_at(const KilnKernel *k, LLVMValueRef row, LLVMValueRef col) {
  LLVMValueRef x[KILN_MAX_INPUTS];
  for (int j = 0; j < k->n->nin; j++) x[j] = tree_at(k, k->n->in[j], k->n, row, col);
  return kiln_cpu_scalar(k->cg, k->n, x);
}

// Rows [r0, r0 + n), columns [c0, c0 + nc) of the root's output, computed in
// place: the matmul's epilogue, run on the block the matmul has just written.
static void epilogue_block(const KilnKernel *k, LLVMValueRef r0, LLVMValueRef n, LLVMValueRef c0,
                           LLVMValueRef nc) {
  KilnCg *c = k->cg;
  const KilnNode *o = k->n;
  int64_t inner = o->shape[o->rank - 1];
  LLVMValueRef out = kiln_cpu_ptr((KilnKernel *)k, k->id);
  KilnLoop r = kiln_cg_loop_begin(c, r0, kiln_cg_add(c, r0, n), "erow");
  KilnLoop j = kiln_cg_loop_begin(c, c0, kiln_cg_add(c, c0, nc), "ecol");
  kiln_cg_store(c, root_at(k, r.index, j.index), out, ix(c, r.index, inner, j.index));
  kiln_cg_loop_end(c, &j);
  kiln_cg_loop_end(c, &r);
}

static void epilogue_rows(const KilnKernel *k, LLVMValueRef r0, LLVMValueRef n) {
  const KilnNode *o = k->n;
  epilogue_block(k, r0, n, kiln_cg_i64(k->cg, 0), kiln_cg_i64(k->cg, o->shape[o->rank - 1]));
}

static int64_t emit_matmul_group(KilnKernel *k, int32_t mm);
static int64_t emit_matmul(KilnKernel *k);

static int64_t emit_elementwise(KilnKernel *k) {
  KilnCg *c = k->cg;
  const KilnNode *o = k->n;
  for (int32_t i = 0; k->g->fused_into && i < k->id; i++)
    if (inline_here(k, i) && kiln_op_has(k->g->nodes[i].op, KILN_OPF_EPILOGUE))
      return emit_matmul_group(k, i);
  int64_t inner = o->rank ? o->shape[o->rank - 1] : 1;
  int64_t rows = kiln_node_numel(o) / inner;
  LLVMValueRef out = kiln_cpu_ptr(k, k->id);
  KilnLoop r = kiln_cg_loop_begin(c, k->lo, k->hi, "row");
  LLVMValueRef obase = kiln_cg_mul(c, r.index, kiln_cg_i64(c, inner));
  KilnLoop j = kiln_cg_loop_begin(c, kiln_cg_i64(c, 0), kiln_cg_i64(c, inner), "col");
  store_f(k, root_at(k, r.index, j.index), out, kiln_cg_add(c, obase, j.index));
  kiln_cg_loop_end(c, &j);
  kiln_cg_loop_end(c, &r);
  return rows;
}

// SplitMix64's finaliser (ir/interp.c), on i64 values that wrap.
static const uint64_t MIX_M1 = UINT64_C(0xbf58476d1ce4e5b9), MIX_M2 = UINT64_C(0x94d049bb133111eb);
#define MIX_GAMMA UINT64_C(0x9e3779b97f4a7c15)

static uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * MIX_M1;
  z = (z ^ (z >> 27)) * MIX_M2;
  return z ^ (z >> 31);
}

static LLVMValueRef mix64_ir(KilnCg *c, LLVMValueRef z) {
  const struct {
    unsigned shift;
    uint64_t mul;
  } steps[] = {{30, MIX_M1}, {27, MIX_M2}, {31, 0}};
  for (int i = 0; i < 3; i++) {
    z = LLVMBuildXor(c->b, z, LLVMBuildLShr(c->b, z, LLVMConstInt(c->i64, steps[i].shift, 0), ""), "");
    if (steps[i].mul) z = LLVMBuildMul(c->b, z, LLVMConstInt(c->i64, steps[i].mul, 0), "");
  }
  return z;
}

// dropout, as ir/interp.c's run_dropout defines it. The step header at arena
// offset 0 holds the seed and the training flag; outside training a copy. In
// training element i draws m_i = mix64(s + (i + 1) GAMMA) >> 11 with
// s = seed ^ mix64(attr.key) (the second half known here) and is kept as x / (1 - p)
// when u_i = m_i 2^-53 >= p. That test is done exactly, in integers: m_i is an
// integer and p 2^53 is exact, so u_i >= p <=> m_i >= ceil(p 2^53). Parallel over
// rows, as the elementwise kernels.
static int64_t emit_dropout(KilnKernel *k) {
  KilnCg *c = k->cg;
  const KilnNode *o = k->n;
  int64_t inner = o->rank ? o->shape[o->rank - 1] : 1, rows = kiln_node_numel(o) / inner;
  KILN_ASSERT(o->attr.p >= 0 && o->attr.p < 1);
  uint64_t thresh = (uint64_t)ceil(o->attr.p * 0x1p53);
  LLVMValueRef hseed = kiln_cg_gep(c, c->i8, k->a, kiln_cg_i64(c, offsetof(KilnStepHeader, seed)));
  LLVMValueRef htrain = kiln_cg_gep(c, c->i8, k->a, kiln_cg_i64(c, offsetof(KilnStepHeader, training)));
  LLVMValueRef seed = LLVMBuildLoad2(c->b, c->i64, hseed, "seed");
  LLVMValueRef on = LLVMBuildICmp(c->b, LLVMIntNE, LLVMBuildLoad2(c->b, c->i32, htrain, "training"),
                                  LLVMConstInt(c->i32, 0, 0), "");
  LLVMValueRef s = LLVMBuildXor(c->b, seed, LLVMConstInt(c->i64, mix64((uint64_t)o->attr.key), 0), "");
  LLVMValueRef X = kiln_cpu_ptr(k, o->in[0]), Y = kiln_cpu_ptr(k, k->id);
  LLVMBasicBlockRef train = LLVMAppendBasicBlockInContext(c->ctx, c->fn, "train");
  LLVMBasicBlockRef copy = LLVMAppendBasicBlockInContext(c->ctx, c->fn, "copy");
  LLVMBasicBlockRef done = LLVMAppendBasicBlockInContext(c->ctx, c->fn, "done");
  LLVMBuildCondBr(c->b, on, train, copy);
  for (int training = 1; training >= 0; training--) {
    LLVMPositionBuilderAtEnd(c->b, training ? train : copy);
    KilnLoop r = kiln_cg_loop_begin(c, k->lo, k->hi, "row");
    KilnLoop j = kiln_cg_loop_begin(c, kiln_cg_i64(c, 0), kiln_cg_i64(c, inner), "col");
    LLVMValueRef i = kiln_cg_add(c, kiln_cg_mul(c, r.index, kiln_cg_i64(c, inner)), j.index);
    LLVMValueRef x = kiln_cg_load(c, c->f32, X, i);
    if (training) {
      LLVMValueRef step = LLVMBuildAdd(c->b, i, kiln_cg_i64(c, 1), "");
      LLVMValueRef z = LLVMBuildAdd(c->b, s, LLVMBuildMul(c->b, step, LLVMConstInt(c->i64, MIX_GAMMA, 0), ""), "");
      LLVMValueRef m = LLVMBuildLShr(c->b, mix64_ir(c, z), LLVMConstInt(c->i64, 11, 0), "");
      LLVMValueRef keep = LLVMBuildICmp(c->b, LLVMIntUGE, m, LLVMConstInt(c->i64, thresh, 0), "keep");
      LLVMValueRef kept = LLVMBuildFDiv(c->b, x, kiln_cg_f32(c, 1 - o->attr.p), "");
      x = LLVMBuildSelect(c->b, keep, kept, kiln_cg_f32(c, 0), "");
    }
    kiln_cg_store(c, x, Y, i);
    kiln_cg_loop_end(c, &j);
    kiln_cg_loop_end(c, &r);
    LLVMBuildBr(c->b, done);
  }
  LLVMPositionBuilderAtEnd(c->b, done);
  return rows;
}

//
// Layout ops.
//
// A flat copy of [lo, hi) elements (reshape).
static int64_t emit_copy(KilnKernel *k) {
  KilnCg *c = k->cg;
  LLVMValueRef src = kiln_cpu_ptr(k, k->n->in[0]), dst = kiln_cpu_ptr(k, k->id);
  KilnLoop l = kiln_cg_loop_begin(c, k->lo, k->hi, "i");
  LLVMTypeRef t = k->n->dtype == KILN_F32 ? c->f32 : c->i32;
  kiln_cg_store(c, kiln_cg_load(c, t, src, l.index), dst, l.index);
  kiln_cg_loop_end(c, &l);
  return kiln_node_numel(k->n);
}

// Output row r of a transpose reads the input at permuted strides.
static int64_t emit_transpose(KilnKernel *k) {
  KilnCg *c = k->cg;
  const KilnNode *o = k->n, *x = in_node(k, 0);
  int64_t in_stride[KILN_MAX_RANK];
  for (int d = x->rank - 1, st = 1; d >= 0; d--) in_stride[d] = st, st *= (int)x->shape[d];
  Bcast s;  // per output dim: the input stride of the dim it comes from
  for (int d = 0; d < o->rank; d++) s.stride[d] = in_stride[o->attr.ints[d]];
  int64_t inner = o->rank ? o->shape[o->rank - 1] : 1;
  LLVMTypeRef t = o->dtype == KILN_F32 ? c->f32 : c->i32;
  LLVMValueRef src = kiln_cpu_ptr(k, o->in[0]), dst = kiln_cpu_ptr(k, k->id);
  KilnLoop r = kiln_cg_loop_begin(c, k->lo, k->hi, "row");
  LLVMValueRef ib = row_offset(k, r.index, &s);
  LLVMValueRef ob = kiln_cg_mul(c, r.index, kiln_cg_i64(c, inner));
  KilnLoop j = kiln_cg_loop_begin(c, kiln_cg_i64(c, 0), kiln_cg_i64(c, inner), "col");
  LLVMValueRef ii = kiln_cg_add(c, ib, kiln_cg_mul(c, j.index, kiln_cg_i64(c, o->rank ? s.stride[o->rank - 1] : 0)));
  kiln_cg_store(c, kiln_cg_load(c, t, src, ii), dst, kiln_cg_add(c, ob, j.index));
  kiln_cg_loop_end(c, &j);
  kiln_cg_loop_end(c, &r);
  return kiln_node_numel(o) / inner;
}

// Copies len contiguous elements from src[so] to dst[do_].
static void copy_run(KilnKernel *k, LLVMTypeRef t, LLVMValueRef src, LLVMValueRef so,
                     LLVMValueRef dst, LLVMValueRef do_, int64_t len) {
  KilnCg *c = k->cg;
  KilnLoop j = kiln_cg_loop_begin(c, kiln_cg_i64(c, 0), kiln_cg_i64(c, len), "j");
  LLVMValueRef v = kiln_cg_load(c, t, src, kiln_cg_add(c, so, j.index));
  kiln_cg_store(c, v, dst, kiln_cg_add(c, do_, j.index));
  kiln_cg_loop_end(c, &j);
}

// concat and slice: parallel over the dims before the axis; each step copies runs.
static int64_t emit_concat_slice(KilnKernel *k) {
  KilnCg *c = k->cg;
  const KilnNode *o = k->n;
  int axis = (int)kiln_norm_axis(o->attr.axis, o->rank);
  int64_t outer = prod(o->shape, 0, axis), inner = prod(o->shape, axis + 1, o->rank);
  LLVMTypeRef t = o->dtype == KILN_F32 ? c->f32 : c->i32;
  LLVMValueRef dst = kiln_cpu_ptr(k, k->id);
  KilnLoop r = kiln_cg_loop_begin(c, k->lo, k->hi, "outer");
  LLVMValueRef ob = kiln_cg_mul(c, r.index, kiln_cg_i64(c, o->shape[axis] * inner));
  if (o->op == KILN_OP_SLICE) {
    const KilnNode *x = in_node(k, 0);
    LLVMValueRef ib = kiln_cg_add(c, kiln_cg_mul(c, r.index, kiln_cg_i64(c, x->shape[axis] * inner)),
                                  kiln_cg_i64(c, o->attr.start * inner));
    copy_run(k, t, kiln_cpu_ptr(k, o->in[0]), ib, dst, ob, o->shape[axis] * inner);
  } else {
    int64_t at = 0;
    for (int i = 0; i < o->nin; i++) {
      int64_t len = in_node(k, i)->shape[axis] * inner;
      LLVMValueRef ib = kiln_cg_mul(c, r.index, kiln_cg_i64(c, len));
      copy_run(k, t, kiln_cpu_ptr(k, o->in[i]), ib, dst,
               kiln_cg_add(c, ob, kiln_cg_i64(c, at)), len);
      at += len;
    }
  }
  kiln_cg_loop_end(c, &r);
  return outer;
}

// ids[p] as i64, clamped to [0, v).
static LLVMValueRef load_id(KilnKernel *k, LLVMValueRef ids, LLVMValueRef p, int64_t v) {
  KilnCg *c = k->cg;
  LLVMValueRef id = LLVMBuildSExt(c->b, kiln_cg_load(c, c->i32, ids, p), c->i64, "");
  LLVMValueRef lo0 = LLVMBuildICmp(c->b, LLVMIntSLT, id, kiln_cg_i64(c, 0), "");
  id = LLVMBuildSelect(c->b, lo0, kiln_cg_i64(c, 0), id, "");
  LLVMValueRef hi0 = LLVMBuildICmp(c->b, LLVMIntSGE, id, kiln_cg_i64(c, v), "");
  return LLVMBuildSelect(c->b, hi0, kiln_cg_i64(c, v - 1), id, "");
}

// embedding: out[p, :] = table[ids[p], :]. The runtime checks input ids before a
// step; ids computed inside the graph are clamped so a bad one cannot read outside
// the table.
static int64_t emit_embedding(KilnKernel *k) {
  KilnCg *c = k->cg;
  const KilnNode *o = k->n, *tab = in_node(k, 1);
  int64_t v = tab->shape[0], d = tab->shape[1];
  LLVMValueRef ids = kiln_cpu_ptr(k, o->in[0]), src = kiln_cpu_ptr(k, o->in[1]);
  LLVMValueRef dst = kiln_cpu_ptr(k, k->id);
  KilnLoop p = kiln_cg_loop_begin(c, k->lo, k->hi, "pos");
  LLVMValueRef id = load_id(k, ids, p.index, v);
  copy_run(k, c->f32, src, kiln_cg_mul(c, id, kiln_cg_i64(c, d)), dst,
           kiln_cg_mul(c, p.index, kiln_cg_i64(c, d)), d);
  kiln_cg_loop_end(c, &p);
  return kiln_node_numel(o) / d;
}

// embedding_grad: zeros, then out[ids[p], :] += dy[p, :] (ids clamped as in
// embedding, so the gradient goes to the row the forward read). Parallel over
// columns: chunk [lo, hi) walks every position and adds into its own columns only,
// so no two chunks write one element, and each element sums in position order
// whatever the split.
static int64_t emit_embedding_grad(KilnKernel *k) {
  KilnCg *c = k->cg;
  const KilnNode *o = k->n, *ids = in_node(k, 0);
  int64_t v = o->shape[0], d = o->shape[1];
  LLVMValueRef I = kiln_cpu_ptr(k, o->in[0]), dy = kiln_cpu_ptr(k, o->in[1]);
  LLVMValueRef out = kiln_cpu_ptr(k, k->id);
  KilnLoop r = upto(c, v, "row");
  KilnLoop z = kiln_cg_loop_begin(c, k->lo, k->hi, "col");
  kiln_cg_store(c, kiln_cg_f32(c, 0), out, kiln_cg_add(c, kiln_cg_mul(c, r.index, kiln_cg_i64(c, d)), z.index));
  kiln_cg_loop_end(c, &z);
  kiln_cg_loop_end(c, &r);
  KilnLoop p = upto(c, kiln_node_numel(ids), "pos");
  LLVMValueRef orow = kiln_cg_mul(c, load_id(k, I, p.index, v), kiln_cg_i64(c, d));
  LLVMValueRef irow = kiln_cg_mul(c, p.index, kiln_cg_i64(c, d));
  KilnLoop j = kiln_cg_loop_begin(c, k->lo, k->hi, "col");
  add_to(c, out, kiln_cg_add(c, orow, j.index), kiln_cg_load(c, c->f32, dy, kiln_cg_add(c, irow, j.index)));
  kiln_cg_loop_end(c, &j);
  kiln_cg_loop_end(c, &p);
  return d;
}

//
// Reductions over arbitrary axes: one thread walks the input once, adding each
// element into its output slot (strides 0 on reduced axes).
//
// Leading axes reduced, trailing kept (a bias's gradient: the sum over rows of
// [rows, cols]): parallel over columns, each chunk [lo, hi) walking every row in
// order and adding it into its own columns, a loop LLVM vectorizes. Each element
// still sums in row order, as in the general walk below, so the result is the
// same bits whatever the split. The general walk took 1.2 ns an element, one
// thread: 3.4% of the GPT's training step went to its bias gradients.
static int64_t emit_reduce_rows(KilnKernel *k, int64_t rows, int64_t cols) {
  KilnCg *c = k->cg;
  const KilnNode *o = k->n;
  LLVMValueRef dst = kiln_cpu_ptr(k, k->id);
  bool is_max = o->op == KILN_OP_MAX;
  KilnLoop z = kiln_cg_loop_begin(c, k->lo, k->hi, "init");
  kiln_cg_store(c, kiln_cg_f32(c, is_max ? -INFINITY : 0), dst, z.index);
  kiln_cg_loop_end(c, &z);
  KilnLoop r = upto(c, rows, "row");
  LLVMValueRef base = kiln_cg_mul(c, r.index, kiln_cg_i64(c, cols));
  KilnLoop j = kiln_cg_loop_begin(c, k->lo, k->hi, "col");
  LLVMValueRef v = in_load(k, 0, kiln_cg_add(c, base, j.index));
  LLVMValueRef acc = kiln_cg_load(c, c->f32, dst, j.index);
  LLVMValueRef sum = is_max ? fsel(c, LLVMRealUGT, v, acc, v, acc) : LLVMBuildFAdd(c->b, acc, v, "");
  kiln_cg_store(c, sum, dst, j.index);
  kiln_cg_loop_end(c, &j);
  kiln_cg_loop_end(c, &r);
  if (o->op == KILN_OP_MEAN) {
    KilnLoop m = kiln_cg_loop_begin(c, k->lo, k->hi, "mean");
    LLVMValueRef s = kiln_cg_load(c, c->f32, dst, m.index);
    kiln_cg_store(c, LLVMBuildFDiv(c->b, s, kiln_cg_f32(c, (double)rows), ""), dst, m.index);
    kiln_cg_loop_end(c, &m);
  }
  return cols;
}

static int64_t emit_reduce(KilnKernel *k) {
  KilnCg *c = k->cg;
  const KilnNode *o = k->n, *x = in_node(k, 0);
  bool reduced[KILN_MAX_RANK] = {0};
  if (o->attr.nints == 0)
    for (int d = 0; d < x->rank; d++) reduced[d] = true;
  for (int i = 0; i < o->attr.nints; i++) reduced[kiln_norm_axis(o->attr.ints[i], x->rank)] = true;
  int lead = 0;
  while (lead < x->rank && reduced[lead]) lead++;
  bool prefix = lead > 0 && lead < x->rank;
  for (int d = lead; d < x->rank; d++) prefix = prefix && !reduced[d];
  if (prefix) {
    int64_t rows = 1, cols = 1;
    for (int d = 0; d < x->rank; d++) *(d < lead ? &rows : &cols) *= x->shape[d];
    return emit_reduce_rows(k, rows, cols);
  }
  int64_t ostride[KILN_MAX_RANK], st = 1, count = 1;
  for (int d = x->rank - 1; d >= 0; d--) {
    ostride[d] = reduced[d] ? 0 : st;
    if (!reduced[d]) st *= x->shape[d];
    else count *= x->shape[d];
  }
  LLVMValueRef dst = kiln_cpu_ptr(k, k->id);
  int64_t on = kiln_node_numel(o), n = kiln_node_numel(x);
  bool is_max = o->op == KILN_OP_MAX;
  KilnLoop z = kiln_cg_loop_begin(c, kiln_cg_i64(c, 0), kiln_cg_i64(c, on), "init");
  kiln_cg_store(c, kiln_cg_f32(c, is_max ? -INFINITY : 0), dst, z.index);
  kiln_cg_loop_end(c, &z);
  KilnLoop i = kiln_cg_loop_begin(c, kiln_cg_i64(c, 0), kiln_cg_i64(c, n), "i");
  LLVMValueRef rem = i.index, off = kiln_cg_i64(c, 0);
  for (int d = x->rank - 1; d >= 0; d--) {
    LLVMValueRef dim = kiln_cg_i64(c, x->shape[d]);
    LLVMValueRef coord = LLVMBuildSRem(c->b, rem, dim, "");
    if (ostride[d]) off = kiln_cg_add(c, off, kiln_cg_mul(c, coord, kiln_cg_i64(c, ostride[d])));
    rem = LLVMBuildSDiv(c->b, rem, dim, "");
  }
  LLVMValueRef v = in_load(k, 0, i.index), acc = kiln_cg_load(c, c->f32, dst, off);
  // max keeps a NaN (the interpreter's comparison does the same).
  LLVMValueRef r = is_max ? fsel(c, LLVMRealUGT, v, acc, v, acc) : LLVMBuildFAdd(c->b, acc, v, "");
  kiln_cg_store(c, r, dst, off);
  kiln_cg_loop_end(c, &i);
  if (o->op == KILN_OP_MEAN) {
    KilnLoop m = kiln_cg_loop_begin(c, kiln_cg_i64(c, 0), kiln_cg_i64(c, on), "mean");
    LLVMValueRef s = kiln_cg_load(c, c->f32, dst, m.index);
    kiln_cg_store(c, LLVMBuildFDiv(c->b, s, kiln_cg_f32(c, (double)count), ""), dst, m.index);
    kiln_cg_loop_end(c, &m);
  }
  return 1;
}

//
// softmax / log_softmax along an axis: parallel over lanes (outer x inner); each
// lane takes the max, the sum of exp(x - max), then writes.
//
static int64_t emit_softmax(KilnKernel *k) {
  KilnCg *c = k->cg;
  const KilnNode *o = k->n;
  int axis = (int)kiln_norm_axis(o->attr.axis, o->rank);
  int64_t len = o->shape[axis], inner = prod(o->shape, axis + 1, o->rank);
  int64_t lanes = kiln_node_numel(o) / len;
  LLVMValueRef dst = kiln_cpu_ptr(k, k->id);
  LLVMValueRef vinner = kiln_cg_i64(c, inner);
  KilnLoop l = kiln_cg_loop_begin(c, k->lo, k->hi, "lane");
  LLVMValueRef outer = LLVMBuildSDiv(c->b, l.index, vinner, "");
  LLVMValueRef base = kiln_cg_add(c, kiln_cg_mul(c, outer, kiln_cg_i64(c, len * inner)),
                                  LLVMBuildSRem(c->b, l.index, vinner, ""));
  RowTerm rt = {.base = base, .stride = inner};
  LLVMValueRef mval, total, v;
  lane_reduce(k, len, 1, LANE_MAX, row_term, &rt, &mval);
  rt.shift = mval;
  rt.dst = o->op == KILN_OP_SOFTMAX ? dst : NULL;  // the exponentials, divided below
  lane_reduce(k, len, 1, LANE_SUM, row_term, &rt, &total);
#define AT(j) kiln_cg_add(c, base, kiln_cg_mul(c, (j), vinner))
  LLVMValueRef lse = LLVMBuildFAdd(c->b, mval, kiln_cg_call1(c, "llvm.log.f32", total), "");
  LLVMValueRef inv = LLVMBuildFDiv(c->b, kiln_cg_f32(c, 1), total, "");
  KilnLoop w = kiln_cg_loop_begin(c, kiln_cg_i64(c, 0), kiln_cg_i64(c, len), "j");
  if (o->op == KILN_OP_SOFTMAX) {
    v = kiln_cg_load(c, c->f32, dst, AT(w.index));
    kiln_cg_store(c, LLVMBuildFMul(c->b, v, inv, ""), dst, AT(w.index));
  } else {
    v = in_load(k, 0, AT(w.index));
    kiln_cg_store(c, LLVMBuildFSub(c->b, v, lse, ""), dst, AT(w.index));
  }
  kiln_cg_loop_end(c, &w);
#undef AT
  kiln_cg_loop_end(c, &l);
  return lanes;
}

typedef struct {
  int x;              // the input
  LLVMValueRef base;  // the row's first element
  LLVMValueRef mean;  // NULL: the first pass
} StatsCtx;

static void stats_term(KilnKernel *k, LLVMValueRef j, void *ctx, LLVMValueRef *v) {
  const StatsCtx *s = ctx;
  LLVMValueRef x = in_load(k, s->x, kiln_cg_add(k->cg, s->base, j));
  if (!s->mean) {
    v[0] = x;
    return;
  }
  LLVMValueRef dev = LLVMBuildFSub(k->cg->b, x, s->mean, "");
  v[0] = LLVMBuildFMul(k->cg->b, dev, dev, "");
}

// The mean and rstd = 1 / sqrt(var + eps) of the d values at x[base ..]: biased
// variance, two passes (mean, then squared deviations), as the interpreter; each
// sum in lanes (lane_reduce).
static void row_stats(KilnKernel *k, int x, LLVMValueRef base, int64_t d,
                      LLVMValueRef *out_mean, LLVMValueRef *out_rstd) {
  KilnCg *c = k->cg;
  StatsCtx s = {x, base, NULL};
  LLVMValueRef sum, sq;
  lane_reduce(k, d, 1, LANE_SUM, stats_term, &s, &sum);
  LLVMValueRef mean = LLVMBuildFDiv(c->b, sum, kiln_cg_f32(c, (double)d), "mean");
  s.mean = mean;
  lane_reduce(k, d, 1, LANE_SUM, stats_term, &s, &sq);
  LLVMValueRef var = LLVMBuildFDiv(c->b, sq, kiln_cg_f32(c, (double)d), "var");
  *out_mean = mean;
  *out_rstd = LLVMBuildFDiv(c->b, kiln_cg_f32(c, 1),
      kiln_cg_call1(c, "llvm.sqrt.f32", LLVMBuildFAdd(c->b, var, kiln_cg_f32(c, k->n->attr.eps), "")), "rstd");
}

// layernorm over the last axis: (x - mean) * rstd * gamma + beta. Parallel over rows.
static int64_t emit_layernorm(KilnKernel *k) {
  KilnCg *c = k->cg;
  const KilnNode *o = k->n;
  int64_t d = o->shape[o->rank - 1], rows = kiln_node_numel(o) / d;
  LLVMValueRef g = kiln_cpu_ptr(k, o->in[1]);
  LLVMValueRef be = kiln_cpu_ptr(k, o->in[2]), y = kiln_cpu_ptr(k, k->id);
  KilnLoop r = kiln_cg_loop_begin(c, k->lo, k->hi, "row");
  LLVMValueRef base = kiln_cg_mul(c, r.index, kiln_cg_i64(c, d)), mean, rstd;
  row_stats(k, 0, base, d, &mean, &rstd);
  KilnLoop w = upto(c, d, "j");
  LLVMValueRef at = kiln_cg_add(c, base, w.index);
  LLVMValueRef v = LLVMBuildFMul(c->b, LLVMBuildFSub(c->b, in_load(k, 0, at), mean, ""), rstd, "");
  v = LLVMBuildFAdd(c->b, LLVMBuildFMul(c->b, v, kiln_cg_load(c, c->f32, g, w.index), ""),
                    kiln_cg_load(c, c->f32, be, w.index), "");
  kiln_cg_store(c, v, y, at);
  kiln_cg_loop_end(c, &w);
  kiln_cg_loop_end(c, &r);
  return rows;
}

typedef struct {
  LLVMValueRef base, gamma, mean, rstd;
  LLVMValueRef xhat;  // of the last term
} DxCtx;

// g = dy gamma and g xhat at column j of the row.
static void dx_term(KilnKernel *k, LLVMValueRef j, void *ctx, LLVMValueRef *v) {
  KilnCg *c = k->cg;
  DxCtx *x = ctx;
  LLVMValueRef at = kiln_cg_add(c, x->base, j);
  x->xhat = LLVMBuildFMul(c->b, LLVMBuildFSub(c->b, in_load(k, 0, at), x->mean, ""), x->rstd, "xhat");
  v[0] = LLVMBuildFMul(c->b, in_load(k, 2, at), kiln_cg_load(c, c->f32, x->gamma, j), "g");
  v[1] = LLVMBuildFMul(c->b, v[0], x->xhat, "");
}

// layernorm_dx (ir/interp.c): per row, xhat = (x - mean) rstd, g = dy gamma,
// dx = rstd (g - mean(g) - xhat mean(g xhat)). Parallel over rows.
static int64_t emit_layernorm_dx(KilnKernel *k) {
  KilnCg *c = k->cg;
  const KilnNode *o = k->n;
  int64_t d = o->shape[o->rank - 1], rows = kiln_node_numel(o) / d;
  LLVMValueRef gm = kiln_cpu_ptr(k, o->in[1]);
  LLVMValueRef dx = kiln_cpu_ptr(k, k->id);
  KilnLoop r = kiln_cg_loop_begin(c, k->lo, k->hi, "row");
  LLVMValueRef base = kiln_cg_mul(c, r.index, kiln_cg_i64(c, d));
  DxCtx x = {.base = base, .gamma = gm};
  row_stats(k, 0, base, d, &x.mean, &x.rstd);
  LLVMValueRef sums[2];  // of g and of g xhat
  lane_reduce(k, d, 2, LANE_SUM, dx_term, &x, sums);
  LLVMValueRef inv_d = kiln_cg_f32(c, 1.0 / (double)d);
  LLVMValueRef mg = LLVMBuildFMul(c->b, sums[0], inv_d, "");
  LLVMValueRef mgx = LLVMBuildFMul(c->b, sums[1], inv_d, "");
  KilnLoop j = upto(c, d, "j");
  LLVMValueRef v[2];
  dx_term(k, j.index, &x, v);
  LLVMValueRef xhat = x.xhat, g = v[0];
  LLVMValueRef e = LLVMBuildFSub(c->b, LLVMBuildFSub(c->b, g, mg, ""), LLVMBuildFMul(c->b, xhat, mgx, ""), "");
  kiln_cg_store(c, LLVMBuildFMul(c->b, x.rstd, e, ""), dx, kiln_cg_add(c, base, j.index));
  kiln_cg_loop_end(c, &j);
  kiln_cg_loop_end(c, &r);
  return rows;
}

// layernorm_dgamma: out[j] = sum over rows of dy xhat. Parallel over columns, so
// no two chunks write one element: a chunk [lo, hi) walks every row (computing its
// statistics: once per chunk, not per column) and adds into its own columns.
static int64_t emit_layernorm_dgamma(KilnKernel *k) {
  KilnCg *c = k->cg;
  const KilnNode *o = k->n, *xn = in_node(k, 0);
  int64_t d = o->shape[0], rows = kiln_node_numel(xn) / d;
  LLVMValueRef out = kiln_cpu_ptr(k, k->id);
  KilnLoop z = kiln_cg_loop_begin(c, k->lo, k->hi, "zero");
  kiln_cg_store(c, kiln_cg_f32(c, 0), out, z.index);
  kiln_cg_loop_end(c, &z);
  KilnLoop r = upto(c, rows, "row");
  LLVMValueRef base = kiln_cg_mul(c, r.index, kiln_cg_i64(c, d)), mean, rstd;
  row_stats(k, 0, base, d, &mean, &rstd);
  KilnLoop j = kiln_cg_loop_begin(c, k->lo, k->hi, "col");
  LLVMValueRef at = kiln_cg_add(c, base, j.index);
  LLVMValueRef xhat = LLVMBuildFMul(c->b, LLVMBuildFSub(c->b, in_load(k, 0, at), mean, ""), rstd, "");
  add_to(c, out, j.index, LLVMBuildFMul(c->b, in_load(k, 1, at), xhat, ""));
  kiln_cg_loop_end(c, &j);
  kiln_cg_loop_end(c, &r);
  return d;
}

//
// matmul: C[.., M, N] = op(A)[.., M, K] op(B)[.., K, N], batch dims broadcast.
//
typedef struct {
  int64_t m, n, k, batch;
  Bcast sa, sb;          // batch strides (per output batch dim) in matrices
  bool fold;             // B is one matrix and A's batch folds into M
} Mm;

static void mm_shape(KilnKernel *k, Mm *mm) {
  const KilnNode *o = k->n, *a = in_node(k, 0), *b = in_node(k, 1);
  mm->m = o->shape[o->rank - 2];
  mm->n = o->shape[o->rank - 1];
  mm->k = o->attr.trans_a ? a->shape[a->rank - 2] : a->shape[a->rank - 1];
  mm->batch = prod(o->shape, 0, o->rank - 2);
  // Batch strides per output batch dim, counted in whole matrices.
  for (int pass = 0; pass < 2; pass++) {
    const KilnNode *x = pass ? b : a;
    Bcast *s = pass ? &mm->sb : &mm->sa;
    int off = (o->rank - 2) - (x->rank - 2);
    int64_t st = 1;
    for (int d = o->rank - 3; d >= 0; d--) {
      int xd = d - off;
      s->stride[d] = (xd < 0 || x->shape[xd] == 1) ? 0 : st;
      if (xd >= 0) st *= x->shape[xd];
    }
  }
  mm->fold = b->rank == 2 && !o->attr.trans_a && a->rank == o->rank;
  if (mm->fold) {
    mm->m *= mm->batch;
    mm->batch = 1;
  }
}

// Matrix index of output batch bi in an input with batch strides s.
static LLVMValueRef mm_batch_off(KilnKernel *k, LLVMValueRef bi, const Bcast *s, int nb) {
  KilnCg *c = k->cg;
  const KilnNode *o = k->n;
  LLVMValueRef off = kiln_cg_i64(c, 0), rem = bi;
  for (int d = nb - 1; d >= 0; d--) {
    LLVMValueRef dim = kiln_cg_i64(c, o->shape[d]);
    LLVMValueRef coord = LLVMBuildSRem(c->b, rem, dim, "");
    if (s->stride[d]) off = kiln_cg_add(c, off, kiln_cg_mul(c, coord, kiln_cg_i64(c, s->stride[d])));
    rem = LLVMBuildSDiv(c->b, rem, dim, "");
  }
  return off;
}

// The generated loop: parallel over rows (batch x M). Each row of C is zeroed,
// then accumulates a[m, kk] * B[kk, :] so the inner loop runs along B's rows.
static int64_t emit_matmul_loops(KilnKernel *k, const Mm *mm) {
  KilnCg *c = k->cg;
  const KilnNode *o = k->n;
  LLVMValueRef A = kiln_cpu_ptr(k, o->in[0]), B = kiln_cpu_ptr(k, o->in[1]), C = kiln_cpu_ptr(k, k->out);
  int nb = o->rank - 2;
  KilnLoop r = kiln_cg_loop_begin(c, k->lo, k->hi, "row");
  LLVMValueRef bi = LLVMBuildSDiv(c->b, r.index, kiln_cg_i64(c, mm->m), "");
  LLVMValueRef mi = LLVMBuildSRem(c->b, r.index, kiln_cg_i64(c, mm->m), "");
  LLVMValueRef abase = kiln_cg_i64(c, 0), bbase = kiln_cg_i64(c, 0);
  if (!mm->fold && nb > 0) {
    abase = kiln_cg_mul(c, mm_batch_off(k, bi, &mm->sa, nb), kiln_cg_i64(c, mm->m * mm->k));
    bbase = kiln_cg_mul(c, mm_batch_off(k, bi, &mm->sb, nb), kiln_cg_i64(c, mm->k * mm->n));
  }
  LLVMValueRef cbase = kiln_cg_mul(c, r.index, kiln_cg_i64(c, mm->n));
  KilnLoop z = kiln_cg_loop_begin(c, kiln_cg_i64(c, 0), kiln_cg_i64(c, mm->n), "z");
  kiln_cg_store(c, kiln_cg_f32(c, 0), C, kiln_cg_add(c, cbase, z.index));
  kiln_cg_loop_end(c, &z);
  KilnLoop kk = kiln_cg_loop_begin(c, kiln_cg_i64(c, 0), kiln_cg_i64(c, mm->k), "k");
  // a[m, kk]: row-major [M, K], or [K, M] when transposed.
  LLVMValueRef ai = o->attr.trans_a
      ? kiln_cg_add(c, kiln_cg_mul(c, kk.index, kiln_cg_i64(c, mm->m)), mi)
      : kiln_cg_add(c, kiln_cg_mul(c, mi, kiln_cg_i64(c, mm->k)), kk.index);
  LLVMValueRef av = kiln_cg_load(c, c->f32, A, kiln_cg_add(c, abase, ai));
  KilnLoop j = kiln_cg_loop_begin(c, kiln_cg_i64(c, 0), kiln_cg_i64(c, mm->n), "n");
  // b[kk, n]: row-major [K, N], or [N, K] when transposed.
  LLVMValueRef bidx = o->attr.trans_b
      ? kiln_cg_add(c, kiln_cg_mul(c, j.index, kiln_cg_i64(c, mm->k)), kk.index)
      : kiln_cg_add(c, kiln_cg_mul(c, kk.index, kiln_cg_i64(c, mm->n)), j.index);
  LLVMValueRef bv = kiln_cg_load(c, c->f32, B, kiln_cg_add(c, bbase, bidx));
  LLVMValueRef ci = kiln_cg_add(c, cbase, j.index);
  LLVMValueRef cv = kiln_cg_load(c, c->f32, C, ci);
  kiln_cg_store(c, LLVMBuildFAdd(c->b, cv, LLVMBuildFMul(c->b, av, bv, ""), ""), C, ci);
  kiln_cg_loop_end(c, &j);
  kiln_cg_loop_end(c, &kk);
  if (k->epi) epilogue_rows(k->epi, r.index, kiln_cg_i64(c, 1));
  kiln_cg_loop_end(c, &r);
  return mm->batch * mm->m;
}

// Where generated code was measured faster (attention's blocks, small layers, a
// transposed B in row blocks) it runs instead of OpenBLAS: kiln_cpu_gemm_wins
// (compiler/cpu/gemm.c) holds the rule and the measurements.
void kiln_cpu_sgemm(KilnCg *c, const KilnGemm *g) {
  if (kiln_cpu_gemm_try(c, g)) return;
  enum { ROW_MAJOR = 101, NO_TRANS = 111, TRANS = 112 };  // CBLAS's values
  LLVMTypeRef i32 = c->i32;
  LLVMTypeRef params[] = {i32, i32, i32, i32, i32, i32, c->f32, c->ptr, i32, c->ptr, i32, c->f32, c->ptr, i32};
  LLVMTypeRef ft = LLVMFunctionType(c->v, params, 14, 0);
  LLVMValueRef f = LLVMGetNamedFunction(c->mod, "cblas_sgemm");
  if (!f) f = LLVMAddFunction(c->mod, "cblas_sgemm", ft);
#define I32(v) LLVMConstInt(i32, (unsigned long long)(v), 1)
#define TR(v) LLVMBuildTrunc(c->b, (v), i32, "")
  LLVMValueRef args[] = {I32(ROW_MAJOR), I32(g->ta ? TRANS : NO_TRANS), I32(g->tb ? TRANS : NO_TRANS),
                         TR(g->m), TR(g->n), TR(g->k), kiln_cg_f32(c, g->alpha), g->a, I32(g->lda),
                         g->b, I32(g->ldb), g->beta, g->c, I32(g->ldc)};
#undef TR
#undef I32
  LLVMBuildCall2(c->b, ft, f, args, 14, "");
}

// Integer min and max as selects, the form compiler/cpu/gemm.c reads a bound from.
static LLVMValueRef imin(KilnCg *c, LLVMValueRef a, LLVMValueRef b) {
  return LLVMBuildSelect(c->b, LLVMBuildICmp(c->b, LLVMIntSLT, a, b, ""), a, b, "");
}

static LLVMValueRef imax(KilnCg *c, LLVMValueRef a, LLVMValueRef b) {
  return LLVMBuildSelect(c->b, LLVMBuildICmp(c->b, LLVMIntSGT, a, b, ""), a, b, "");
}

// cblas_sgemm on blocks of BLAS_ROW_BLOCK rows: iteration t is batch t / tiles,
// rows [(t % tiles) * block, ...). The runtime keeps OpenBLAS single-threaded and
// spreads these blocks over its own threads. The blocks of [lo, hi) that fall in
// one batch entry go in one call: a call per block repacked the other operand
// each time (OpenBLAS and the generated kernels both pack B per call), 13 times
// over for the 784 rows of the MLP's first weight gradient at one thread.
static int64_t emit_matmul_blas(KilnKernel *k, const Mm *mm) {
  KilnCg *c = k->cg;
  const KilnNode *o = k->n;
  int64_t tiles = (mm->m + BLAS_ROW_BLOCK - 1) / BLAS_ROW_BLOCK;
  LLVMValueRef A = kiln_cpu_ptr(k, o->in[0]), B = kiln_cpu_ptr(k, o->in[1]), C = kiln_cpu_ptr(k, k->out);
  LLVMValueRef T = kiln_cg_i64(c, tiles), M = kiln_cg_i64(c, mm->m), BLK = kiln_cg_i64(c, BLAS_ROW_BLOCK);
  int nb = o->rank - 2;
  LLVMValueRef blast = LLVMBuildSDiv(c->b, kiln_cg_add(c, k->hi, kiln_cg_i64(c, tiles - 1)), T, "");
  KilnLoop t = kiln_cg_loop_begin(c, LLVMBuildSDiv(c->b, k->lo, T, ""), blast, "batch");
  LLVMValueRef bi = t.index, first = kiln_cg_mul(c, bi, T);
  // This entry's tiles of [lo, hi): [t0, t1) of its own, rows [m0, m0 + rows).
  LLVMValueRef t0 = LLVMBuildSub(c->b, imax(c, k->lo, first), first, "");
  LLVMValueRef t1 = LLVMBuildSub(c->b, imin(c, k->hi, kiln_cg_add(c, first, T)), first, "");
  LLVMValueRef m0 = kiln_cg_mul(c, t0, BLK);
  // The outer min is a no-op that tells kiln_cpu_gemm_try rows <= M.
  LLVMValueRef rows = imin(c, LLVMBuildSub(c->b, imin(c, kiln_cg_mul(c, t1, BLK), M), m0, ""), M);
  LLVMValueRef abase = kiln_cg_i64(c, 0), bbase = kiln_cg_i64(c, 0);
  if (!mm->fold && nb > 0) {
    abase = kiln_cg_mul(c, mm_batch_off(k, bi, &mm->sa, nb), kiln_cg_i64(c, mm->m * mm->k));
    bbase = kiln_cg_mul(c, mm_batch_off(k, bi, &mm->sb, nb), kiln_cg_i64(c, mm->k * mm->n));
  }
  // Rows m0.. of op(A): row-major A starts at m0*K; a transposed A at column m0.
  LLVMValueRef aoff = o->attr.trans_a ? m0 : kiln_cg_mul(c, m0, kiln_cg_i64(c, mm->k));
  LLVMValueRef cbase = kiln_cg_mul(c, kiln_cg_add(c, kiln_cg_mul(c, bi, M), m0), kiln_cg_i64(c, mm->n));
  kiln_cpu_sgemm(c, &(KilnGemm){.ta = o->attr.trans_a, .tb = o->attr.trans_b, .m = rows,
                                .n = kiln_cg_i64(c, mm->n), .k = kiln_cg_i64(c, mm->k), .alpha = 1,
                                .a = kiln_cg_gep(c, c->f32, A, kiln_cg_add(c, abase, aoff)),
                                .lda = o->attr.trans_a ? mm->m : mm->k,
                                .b = kiln_cg_gep(c, c->f32, B, bbase),
                                .ldb = o->attr.trans_b ? mm->k : mm->n, .beta = kiln_cg_f32(c, 0),
                                .c = kiln_cg_gep(c, c->f32, C, cbase), .ldc = mm->n});
  if (k->epi) epilogue_rows(k->epi, kiln_cg_add(c, kiln_cg_mul(c, bi, M), m0), rows);
  kiln_cg_loop_end(c, &t);
  return mm->batch * tiles;
}

// Few rows, many columns (a dense layer at a small batch, or its input gradient):
// cblas_sgemm on blocks of BLAS_COL_BLOCK columns of all M rows, iteration t being
// column block t. Split by rows, every thread would pack the whole of B, the
// larger operand (784 x 512 against 128 x 784 for the MLP's first layer); split by
// columns, each packs its share of B and the whole of the small A. A thread's
// blocks are one call, so one thread makes the same single call as by rows.
static int64_t emit_matmul_blas_cols(KilnKernel *k, const Mm *mm) {
  KilnCg *c = k->cg;
  const KilnNode *o = k->n;
  int64_t blocks = (mm->n + BLAS_COL_BLOCK - 1) / BLAS_COL_BLOCK;
  LLVMValueRef A = kiln_cpu_ptr(k, o->in[0]), B = kiln_cpu_ptr(k, o->in[1]), C = kiln_cpu_ptr(k, k->out);
  LLVMValueRef N = kiln_cg_i64(c, mm->n);
  LLVMValueRef c0 = kiln_cg_mul(c, k->lo, kiln_cg_i64(c, BLAS_COL_BLOCK));
  // The outer min is a no-op that tells kiln_cpu_gemm_try cols <= N.
  LLVMValueRef cols = imin(c, LLVMBuildSub(c->b, imin(c, kiln_cg_mul(c, k->hi, kiln_cg_i64(c, BLAS_COL_BLOCK)), N), c0, ""), N);
  bool tb = o->attr.trans_b;
  // Columns c0.. of op(B): a transposed B's rows c0.., else B's columns c0..
  LLVMValueRef boff = tb ? kiln_cg_mul(c, c0, kiln_cg_i64(c, mm->k)) : c0;
  kiln_cpu_sgemm(c, &(KilnGemm){.ta = o->attr.trans_a, .tb = tb, .m = kiln_cg_i64(c, mm->m),
                                .n = cols, .k = kiln_cg_i64(c, mm->k), .alpha = 1, .a = A,
                                .lda = o->attr.trans_a ? mm->m : mm->k,
                                .b = kiln_cg_gep(c, c->f32, B, boff),
                                .ldb = tb ? mm->k : mm->n, .beta = kiln_cg_f32(c, 0),
                                .c = kiln_cg_gep(c, c->f32, C, c0), .ldc = mm->n});
  if (k->epi) epilogue_block(k->epi, kiln_cg_i64(c, 0), kiln_cg_i64(c, mm->m), c0, cols);
  return blocks;
}

// One row (M = 1): a matrix-vector product, cblas_sgemv, which reads B once where
// sgemm would first repack it. y = op(B)^T a; iteration t is batch t.
static int64_t emit_matmul_gemv(KilnKernel *k, const Mm *mm) {
  KilnCg *c = k->cg;
  const KilnNode *o = k->n;
  LLVMTypeRef i32 = c->i32;
  LLVMTypeRef params[] = {i32, i32, i32, i32, c->f32, c->ptr, i32, c->ptr, i32, c->f32, c->ptr, i32};
  LLVMTypeRef ft = LLVMFunctionType(c->v, params, 12, 0);
  LLVMValueRef f = LLVMGetNamedFunction(c->mod, "cblas_sgemv");
  if (!f) f = LLVMAddFunction(c->mod, "cblas_sgemv", ft);
  LLVMValueRef A = kiln_cpu_ptr(k, o->in[0]), B = kiln_cpu_ptr(k, o->in[1]), C = kiln_cpu_ptr(k, k->out);
  int nb = o->rank - 2;
  KilnLoop t = kiln_cg_loop_begin(c, k->lo, k->hi, "batch");
  LLVMValueRef abase = kiln_cg_i64(c, 0), bbase = kiln_cg_i64(c, 0);
  if (!mm->fold && nb > 0) {
    abase = kiln_cg_mul(c, mm_batch_off(k, t.index, &mm->sa, nb), kiln_cg_i64(c, mm->k));
    bbase = kiln_cg_mul(c, mm_batch_off(k, t.index, &mm->sb, nb), kiln_cg_i64(c, mm->k * mm->n));
  }
#define I32(v) LLVMConstInt(i32, (unsigned long long)(v), 1)
  bool tb = o->attr.trans_b;
  LLVMValueRef args[] = {
      I32(101), I32(tb ? 111 : 112), I32(tb ? mm->n : mm->k), I32(tb ? mm->k : mm->n),
      kiln_cg_f32(c, 1), kiln_cg_gep(c, c->f32, B, bbase), I32(tb ? mm->k : mm->n),
      kiln_cg_gep(c, c->f32, A, abase), I32(1), kiln_cg_f32(c, 0),
      kiln_cg_gep(c, c->f32, C, kiln_cg_mul(c, t.index, kiln_cg_i64(c, mm->n))), I32(1)};
#undef I32
  LLVMBuildCall2(c->b, ft, f, args, 12, "");
  if (k->epi) epilogue_rows(k->epi, t.index, kiln_cg_i64(c, 1));
  kiln_cg_loop_end(c, &t);
  return mm->batch;
}

// A matmul fused with the elementwise chain of root k: the matmul writes into the
// root's buffer (or its own, when stored) and the chain runs over each block of
// rows right after.
static int64_t emit_matmul_group(KilnKernel *k, int32_t mm) {
  KilnKernel km = *k;
  km.n = &k->g->nodes[mm];
  km.id = mm;
  km.out = matmul_out(k, mm);
  km.epi = k;
  return emit_matmul(&km);
}

static int64_t emit_matmul(KilnKernel *k) {
  Mm mm;
  mm_shape(k, &mm);
  if (mm.m == 1 && mm.n * mm.k >= BLAS_MIN_WORK / 8) return emit_matmul_gemv(k, &mm);
  if (mm.m * mm.n * mm.k >= BLAS_MIN_WORK && mm.batch == 1 && mm.m <= BLAS_COL_SPLIT_ROWS &&
      mm.n >= 2 * BLAS_COL_BLOCK && mm.n > mm.m)
    return emit_matmul_blas_cols(k, &mm);
  if (mm.m * mm.n * mm.k >= BLAS_MIN_WORK) return emit_matmul_blas(k, &mm);
  return emit_matmul_loops(k, &mm);
}

// cross_entropy_grad: (softmax(logits[p]) - onehot(labels[p])) / P per position;
// a label outside [0, C) reads as 0, as in the loss kernel. Parallel over positions.
static int64_t emit_cross_entropy_grad(KilnKernel *k) {
  KilnCg *c = k->cg;
  const KilnNode *o = k->n;
  int64_t C = o->shape[o->rank - 1], P = kiln_node_numel(o) / C;
  LLVMValueRef X = kiln_cpu_ptr(k, o->in[0]), L = kiln_cpu_ptr(k, o->in[1]), Y = kiln_cpu_ptr(k, k->id);
  KilnLoop p = kiln_cg_loop_begin(c, k->lo, k->hi, "p");
  LLVMValueRef base = kiln_cg_mul(c, p.index, kiln_cg_i64(c, C));
  RowTerm rt = {.base = base, .src = X, .stride = 1};
  LLVMValueRef mval, sum;
  lane_reduce(k, C, 1, LANE_MAX, row_term, &rt, &mval);
  // The exponentials, then their sum, in two loops: the first vectorizes (its
  // exp is arithmetic) as a plain loop.
  KilnLoop s = upto(c, C, "c");
  LLVMValueRef e = kiln_cg_exp(c, fsub(c, ld(c, X, kiln_cg_add(c, base, s.index)), mval));
  kiln_cg_store(c, e, Y, kiln_cg_add(c, base, s.index));
  kiln_cg_loop_end(c, &s);
  rt.src = Y;
  lane_reduce(k, C, 1, LANE_SUM, row_term, &rt, &sum);
  LLVMValueRef inv = LLVMBuildFDiv(c->b, kiln_cg_f32(c, 1), sum, "");
  LLVMValueRef lab = LLVMBuildSExt(c->b, kiln_cg_load(c, c->i32, L, p.index), c->i64, "");
  LLVMValueRef bad = LLVMBuildOr(c->b, LLVMBuildICmp(c->b, LLVMIntSLT, lab, kiln_cg_i64(c, 0), ""),
                                 LLVMBuildICmp(c->b, LLVMIntSGE, lab, kiln_cg_i64(c, C), ""), "");
  lab = LLVMBuildSelect(c->b, bad, kiln_cg_i64(c, 0), lab, "");
  KilnLoop w = upto(c, C, "c");
  LLVMValueRef at = kiln_cg_add(c, base, w.index);
  LLVMValueRef hot = LLVMBuildSelect(c->b, LLVMBuildICmp(c->b, LLVMIntEQ, w.index, lab, ""),
                                     kiln_cg_f32(c, 1), kiln_cg_f32(c, 0), "");
  LLVMValueRef g = fsub(c, fmul(c, ld(c, Y, at), inv), hot);
  kiln_cg_store(c, fmul(c, g, kiln_cg_f32(c, 1.0 / (double)P)), Y, at);
  kiln_cg_loop_end(c, &w);
  kiln_cg_loop_end(c, &p);
  return P;
}

//
// Losses: one thread, accumulated in double so the mean of many small terms keeps
// its precision.
//
static int64_t emit_loss(KilnKernel *k) {
  KilnCg *c = k->cg;
  const KilnNode *o = k->n, *x = in_node(k, 0);
  LLVMTypeRef f64 = LLVMDoubleTypeInContext(c->ctx);
  LLVMValueRef L = kiln_cpu_ptr(k, o->in[1]), Y = kiln_cpu_ptr(k, k->id);
  LLVMValueRef tot = kiln_cg_alloca(c, f64, "total");
  LLVMBuildStore(c->b, LLVMConstReal(f64, 0), tot);
  int64_t count;
  if (o->op == KILN_OP_CROSS_ENTROPY) {
    int64_t C = x->shape[x->rank - 1];
    count = kiln_node_numel(x) / C;
    KilnLoop p = kiln_cg_loop_begin(c, kiln_cg_i64(c, 0), kiln_cg_i64(c, count), "p");
    LLVMValueRef base = kiln_cg_mul(c, p.index, kiln_cg_i64(c, C));
    RowTerm rt = {.base = base, .stride = 1};
    LLVMValueRef mval, sum;
    lane_reduce(k, C, 1, LANE_MAX, row_term, &rt, &mval);
    rt.shift = mval;
    lane_reduce(k, C, 1, LANE_SUM, row_term, &rt, &sum);
    LLVMValueRef lse = LLVMBuildFAdd(c->b, mval, kiln_cg_call1(c, "llvm.log.f32", sum), "");
    LLVMValueRef lab = LLVMBuildSExt(c->b, kiln_cg_load(c, c->i32, L, p.index), c->i64, "");
    LLVMValueRef bad = LLVMBuildOr(c->b, LLVMBuildICmp(c->b, LLVMIntSLT, lab, kiln_cg_i64(c, 0), ""),
                                   LLVMBuildICmp(c->b, LLVMIntSGE, lab, kiln_cg_i64(c, C), ""), "");
    lab = LLVMBuildSelect(c->b, bad, kiln_cg_i64(c, 0), lab, "");
    LLVMValueRef xl = in_load(k, 0, kiln_cg_add(c, base, lab));
    LLVMValueRef term = LLVMBuildFPExt(c->b, LLVMBuildFSub(c->b, lse, xl, ""), f64, "");
    LLVMBuildStore(c->b, LLVMBuildFAdd(c->b, LLVMBuildLoad2(c->b, f64, tot, ""), term, ""), tot);
    kiln_cg_loop_end(c, &p);
  } else {
    count = kiln_node_numel(x);
    KilnLoop p = kiln_cg_loop_begin(c, kiln_cg_i64(c, 0), kiln_cg_i64(c, count), "p");
    LLVMValueRef a = in_load(k, 0, p.index), y = in_load(k, 1, p.index);
    LLVMValueRef term;
    if (o->op == KILN_OP_MSE) {
      LLVMValueRef d = LLVMBuildFSub(c->b, a, y, "");
      term = LLVMBuildFMul(c->b, d, d, "");
    } else {  // max(x, 0) - x y + log1p(exp(-|x|))
      LLVMValueRef zero = kiln_cg_f32(c, 0);
      LLVMValueRef relu = fsel(c, LLVMRealOGT, a, zero, a, zero);
      LLVMValueRef ax = kiln_cg_call1(c, "llvm.fabs.f32", a);
      LLVMValueRef sp = kiln_cg_call1(c, "log1pf", kiln_cg_exp(c, LLVMBuildFNeg(c->b, ax, "")));
      term = LLVMBuildFAdd(c->b, LLVMBuildFSub(c->b, relu, LLVMBuildFMul(c->b, a, y, ""), ""), sp, "");
    }
    term = LLVMBuildFPExt(c->b, term, f64, "");
    LLVMBuildStore(c->b, LLVMBuildFAdd(c->b, LLVMBuildLoad2(c->b, f64, tot, ""), term, ""), tot);
    kiln_cg_loop_end(c, &p);
  }
  LLVMValueRef mean = LLVMBuildFDiv(c->b, LLVMBuildLoad2(c->b, f64, tot, ""), LLVMConstReal(f64, (double)count), "");
  kiln_cg_store(c, LLVMBuildFPTrunc(c->b, mean, c->f32, ""), Y, kiln_cg_i64(c, 0));
  return 1;
}

static int64_t emit_body(KilnKernel *k) {
  switch (k->n->op) {
  case KILN_OP_NEG: case KILN_OP_EXP: case KILN_OP_LOG: case KILN_OP_SQRT: case KILN_OP_RSQRT:
  case KILN_OP_POW: case KILN_OP_RELU: case KILN_OP_SIGMOID: case KILN_OP_TANH:
  case KILN_OP_GELU: case KILN_OP_SILU: case KILN_OP_CLAMP:
  case KILN_OP_ADD: case KILN_OP_SUB: case KILN_OP_MUL: case KILN_OP_DIV: case KILN_OP_WHERE:
  case KILN_OP_BROADCAST: case KILN_OP_GELU_GRAD: case KILN_OP_SILU_GRAD: case KILN_OP_CLAMP_GRAD:
    return emit_elementwise(k);
  case KILN_OP_DROPOUT: return emit_dropout(k);
  case KILN_OP_RESHAPE: return emit_copy(k);
  case KILN_OP_TRANSPOSE: return emit_transpose(k);
  case KILN_OP_CONCAT: case KILN_OP_SLICE: return emit_concat_slice(k);
  case KILN_OP_EMBEDDING: return emit_embedding(k);
  case KILN_OP_SUM: case KILN_OP_MEAN: case KILN_OP_MAX: return emit_reduce(k);
  case KILN_OP_SOFTMAX: case KILN_OP_LOG_SOFTMAX: return emit_softmax(k);
  case KILN_OP_LAYERNORM: return emit_layernorm(k);
  case KILN_OP_MATMUL: return emit_matmul(k);
  case KILN_OP_LSTM: return kiln_cpu_lstm(k);
  case KILN_OP_ATTENTION: return kiln_cpu_attention(k);
  case KILN_OP_CROSS_ENTROPY: case KILN_OP_MSE: case KILN_OP_BCE: return emit_loss(k);
  case KILN_OP_LAYERNORM_DX: return emit_layernorm_dx(k);
  case KILN_OP_LAYERNORM_DGAMMA: return emit_layernorm_dgamma(k);
  case KILN_OP_EMBEDDING_GRAD: return emit_embedding_grad(k);
  case KILN_OP_LSTM_GRAD: return kiln_cpu_lstm_grad(k);
  case KILN_OP_ATTENTION_GRAD: return kiln_cpu_attention_grad(k);
  case KILN_OP_CROSS_ENTROPY_GRAD: return emit_cross_entropy_grad(k);
  case KILN_OP_ATTENTION_DECODE: return kiln_cpu_emit_attention_decode(k);
  case KILN_OP_LSTM_STEP: return kiln_cpu_emit_lstm_step(k);
  case KILN_OP_INPUT: case KILN_OP_PARAM: case KILN_OP_CONST: case KILN_OP_COUNT:
    break;
  }
  KILN_ASSERT(!"no kernel for a source node");
  return 0;
}

typedef struct {
  const KilnGraph *g;
  const KilnPlan *p;
  int32_t id;
  int phase;
} KernelCtx;

static int64_t kernel_body(KilnCg *c, KilnBody *b, void *ctx) {
  const KernelCtx *x = ctx;
  KilnKernel k = {.cg = c, .g = x->g, .plan = x->p, .n = &x->g->nodes[x->id], .id = x->id,
                  .w = b->w, .a = b->a, .lo = b->lo, .hi = b->hi, .body = b, .out = x->id,
                  .phase = x->phase};
  return emit_body(&k);
}

int kiln_cpu_kernel_phases(const KilnNode *n) { return n->op == KILN_OP_LSTM_GRAD ? 2 : 1; }

LLVMValueRef kiln_cpu_kernel(KilnCg *c, const KilnGraph *g, const KilnPlan *p, int32_t id,
                             int64_t *out_n, int64_t *out_cost) {
  return kiln_cpu_kernel_phase(c, g, p, id, 0, out_n, out_cost);
}

LLVMValueRef kiln_cpu_kernel_phase(KilnCg *c, const KilnGraph *g, const KilnPlan *p, int32_t id,
                                   int phase, int64_t *out_n, int64_t *out_cost) {
  KILN_ASSERT(phase >= 0 && phase < kiln_cpu_kernel_phases(&g->nodes[id]));
  char name[64];
  static const char *const suffix[KILN_CPU_MAX_PHASES] = {"", "_1"};
  snprintf(name, sizeof name, "kiln_k%d_%s%s", id, kiln_op(g->nodes[id].op)->name, suffix[phase]);
  KernelCtx x = {g, p, id, phase};
  LLVMValueRef fn = kiln_cpu_shared_kernel(c, name, kernel_body, &x, out_n);
  int64_t f = kiln_op(g->nodes[id].op)->flops(g, &g->nodes[id]);
  *out_cost = f > kiln_node_numel(&g->nodes[id]) ? f : kiln_node_numel(&g->nodes[id]);
  return fn;
}

//
// Shared bodies.
//
struct KilnShared {
  int n, cap;
  char **text;     // each body's IR as printed (its name the same placeholder in all)
  uint64_t *hash;  // of text
  LLVMValueRef *fn;
};

#define BODY_PLACEHOLDER "kiln_body"

static uint64_t fnv1a(const char *s) {
  uint64_t h = UINT64_C(0xcbf29ce484222325);
  for (; *s; s++) h = (h ^ (unsigned char)*s) * UINT64_C(0x100000001b3);
  return h;
}

static void *grow(void *p, int *cap, int need, size_t size) {
  if (need <= *cap) return p;
  *cap = *cap ? *cap * 2 : 16;
  if (*cap < need) *cap = need;
  void *q = realloc(p, (size_t)*cap * size);
  KILN_ASSERT(q);
  return q;
}

LLVMValueRef kiln_cpu_body_ptr(KilnCg *c, KilnBody *b, KilnLocKind where, int64_t off, int64_t bytes) {
  if (where != KILN_LOC_WEIGHTS) where = KILN_LOC_ARENA;
  int i = 0;
  while (i < b->n && !(b->slot[i].where == where && b->slot[i].off == off)) i++;
  if (b->param) {
    KILN_ASSERT(i < b->n);  // the second pass asks for what the first did
    return b->param[i];
  }
  if (i == b->n) {
    int cap = b->cap;
    b->slot = grow(b->slot, &cap, b->n + 1, sizeof *b->slot);
    b->cap = cap;
    b->slot[b->n++] = (KilnSlot){where, off, bytes};
  } else if (bytes > b->slot[i].bytes) {
    b->slot[i].bytes = bytes;
  }
  return kiln_cg_gep(c, c->i8, where == KILN_LOC_WEIGHTS ? b->w : b->a, kiln_cg_i64(c, off));
}

static void add_attr(KilnCg *c, LLVMValueRef fn, unsigned index, const char *name) {
  unsigned kind = LLVMGetEnumAttributeKindForName(name, strlen(name));
  LLVMAddAttributeAtIndex(fn, index, LLVMCreateEnumAttribute(c->ctx, kind, 0));
}

static LLVMValueRef internal_fn(KilnCg *c, const char *name, LLVMTypeRef *params, unsigned n) {
  LLVMValueRef fn = LLVMAddFunction(c->mod, name, LLVMFunctionType(c->v, params, n, 0));
  LLVMSetLinkage(fn, LLVMInternalLinkage);
  // Kernels read and write disjoint planned buffers: tell LLVM so it vectorizes.
  add_attr(c, fn, 1, "noalias");
  add_attr(c, fn, 2, "noalias");
  return fn;
}

static int64_t emit_into(KilnCg *c, LLVMValueRef fn, KilnBody *b, KilnBodyFn emit, void *ctx) {
  unsigned np = LLVMCountParams(fn);
  c->fn = fn;
  LLVMPositionBuilderAtEnd(c->b, LLVMAppendBasicBlockInContext(c->ctx, fn, "entry"));
  b->w = LLVMGetParam(fn, 0);
  b->a = LLVMGetParam(fn, 1);
  b->lo = LLVMGetParam(fn, np - 2);
  b->hi = LLVMGetParam(fn, np - 1);
  int64_t r = emit(c, b, ctx);
  LLVMBuildRetVoid(c->b);
  return r;
}

static bool overlaps(const KilnSlot *x, const KilnSlot *y) {
  return x->where == y->where && x->off < y->off + y->bytes && y->off < x->off + x->bytes;
}

LLVMValueRef kiln_cpu_shared_kernel(KilnCg *c, const char *name, KilnBodyFn emit, void *ctx,
                                    int64_t *out) {
  if (!c->shared) {
    c->shared = calloc(1, sizeof *c->shared);
    KILN_ASSERT(c->shared);
  }
  KilnShared *sh = c->shared;
  // First pass: which buffers, in which order, into a function thrown away.
  KilnBody b = {0};
  LLVMTypeRef p4[] = {c->ptr, c->ptr, c->i64, c->i64};
  LLVMValueRef tmp = internal_fn(c, BODY_PLACEHOLDER, p4, 4);
  int64_t r0 = emit_into(c, tmp, &b, emit, ctx);
  LLVMDeleteFunction(tmp);
  // Second pass: the body, every buffer a parameter.
  unsigned n = (unsigned)b.n;
  LLVMTypeRef *pt = malloc((n + 4) * sizeof *pt);
  LLVMValueRef *args = malloc((n + 4) * sizeof *args);
  b.param = malloc((n + 1) * sizeof *b.param);
  KILN_ASSERT(pt && args && b.param);
  pt[0] = pt[1] = c->ptr;
  for (unsigned i = 0; i < n; i++) pt[2 + i] = c->ptr;
  pt[n + 2] = pt[n + 3] = c->i64;
  LLVMValueRef body = internal_fn(c, BODY_PLACEHOLDER, pt, n + 4);
  add_attr(c, body, (unsigned)LLVMAttributeFunctionIndex, "noinline");
  for (unsigned i = 0; i < n; i++) {
    b.param[i] = LLVMGetParam(body, 2 + i);
    bool alone = true;
    for (unsigned j = 0; j < n && alone; j++) alone = j == i || !overlaps(&b.slot[i], &b.slot[j]);
    if (alone) add_attr(c, body, 3 + i, "noalias");
  }
  int nslots = b.n;
  *out = emit_into(c, body, &b, emit, ctx);
  KILN_ASSERT(*out == r0 && b.n == nslots);
  // An identical body already built: use it.
  char *text = LLVMPrintValueToString(body);
  uint64_t h = fnv1a(text);
  int found = -1;
  for (int i = 0; i < sh->n && found < 0; i++)
    if (sh->hash[i] == h && strcmp(sh->text[i], text) == 0) found = i;
  if (found >= 0) {
    LLVMDeleteFunction(body);
    LLVMDisposeMessage(text);
    body = sh->fn[found];
  } else {
    int cap = sh->cap;
    sh->text = grow(sh->text, &cap, sh->n + 1, sizeof *sh->text);
    cap = sh->cap;
    sh->hash = grow(sh->hash, &cap, sh->n + 1, sizeof *sh->hash);
    cap = sh->cap;
    sh->fn = grow(sh->fn, &cap, sh->n + 1, sizeof *sh->fn);
    sh->cap = cap;
    sh->text[sh->n] = text;
    sh->hash[sh->n] = h;
    sh->fn[sh->n++] = body;
    char bname[96];
    snprintf(bname, sizeof bname, "%s.body", name);
    LLVMSetValueName2(body, bname, strlen(bname));
  }
  // The wrapper: this kernel's pointers, then the body.
  LLVMValueRef fn = internal_fn(c, name, p4, 4);
  c->fn = fn;
  LLVMPositionBuilderAtEnd(c->b, LLVMAppendBasicBlockInContext(c->ctx, fn, "entry"));
  LLVMValueRef w = LLVMGetParam(fn, 0), a = LLVMGetParam(fn, 1);
  args[0] = w;
  args[1] = a;
  for (unsigned i = 0; i < n; i++)
    args[2 + i] = kiln_cg_gep(c, c->i8, b.slot[i].where == KILN_LOC_WEIGHTS ? w : a,
                              kiln_cg_i64(c, b.slot[i].off));
  args[n + 2] = LLVMGetParam(fn, 2);
  args[n + 3] = LLVMGetParam(fn, 3);
  LLVMBuildCall2(c->b, LLVMGlobalGetValueType(body), body, args, n + 4, "");
  LLVMBuildRetVoid(c->b);
  free(pt);
  free(args);
  free(b.param);
  free(b.slot);
  return fn;
}

void kiln_cpu_shared_free(KilnCg *c) {
  KilnShared *sh = c->shared;
  if (!sh) return;
  for (int i = 0; i < sh->n; i++) LLVMDisposeMessage(sh->text[i]);
  free(sh->text);
  free(sh->hash);
  free(sh->fn);
  free(sh);
  c->shared = NULL;
}
