// Fused elementwise groups, dropout and the layout ops as CUDA kernels. Each kernel
// is a few lines calling templates/elementwise.cuh with the shapes as constants;
// a fused chain is written out as statements, one local per member.
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "compiler/cuda/cuda.h"

#define THREADS 256

static const KilnNode *node(const KilnCudaKernel *k, int32_t id) { return &k->g->nodes[id]; }

static int64_t last_dim(const KilnNode *n) { return n->rank ? n->shape[n->rank - 1] : 1; }

static int64_t prod(const int64_t *s, int from, int to) {
  int64_t p = 1;
  for (int i = from; i < to; i++) p *= s[i];
  return p;
}

static const char *ctype(const KilnNode *n) { return n->dtype == KILN_I32 ? "int" : "float"; }

// An f32 constant as the CPU backend rounds it (double to float), exactly.
static const char *flit(KilnCudaKernel *k, double v) {
  float f = (float)v;
  if (isnan(f)) return "KILN_NAN";
  if (isinf(f)) return f > 0 ? "KILN_INF" : "(-KILN_INF)";
  return kiln_cuda_fmt(k, "((float)%.17g)", (double)f);
}

static void begin(KilnCudaKernel *k, uint32_t threads) {
  fprintf(k->out, "extern \"C\" __global__ void __launch_bounds__(%u) %s(KilnArgs A) {\n", threads,
          k->name);
}

// A grid-stride kernel over n items.
static void grid_for(KilnCudaKernel *k, int64_t n) {
  k->grid[0] = kiln_cuda_blocks(n, THREADS);
  k->block[0] = THREADS;
}

const char *kiln_cuda_scalar(KilnCudaKernel *k, const KilnNode *n, const char *const *x) {
  switch (n->op) {
  case KILN_OP_NEG: return kiln_cuda_fmt(k, "(-%s)", x[0]);
  case KILN_OP_EXP: return kiln_cuda_fmt(k, "expf(%s)", x[0]);
  case KILN_OP_LOG: return kiln_cuda_fmt(k, "logf(%s)", x[0]);
  case KILN_OP_SQRT: return kiln_cuda_fmt(k, "sqrtf(%s)", x[0]);
  case KILN_OP_RSQRT: return kiln_cuda_fmt(k, "(1.0f / sqrtf(%s))", x[0]);
  case KILN_OP_POW:
    if (n->attr.exponent == 2) return kiln_cuda_fmt(k, "(%s * %s)", x[0], x[0]);
    return kiln_cuda_fmt(k, "powf(%s, %s)", x[0], flit(k, n->attr.exponent));
  case KILN_OP_RELU: return kiln_cuda_fmt(k, "kiln_relu(%s)", x[0]);
  case KILN_OP_SIGMOID: return kiln_cuda_fmt(k, "kiln_sigmoid(%s)", x[0]);
  case KILN_OP_TANH: return kiln_cuda_fmt(k, "tanhf(%s)", x[0]);
  case KILN_OP_GELU: return kiln_cuda_fmt(k, "kiln_gelu(%s)", x[0]);
  case KILN_OP_SILU: return kiln_cuda_fmt(k, "kiln_silu(%s)", x[0]);
  case KILN_OP_CLAMP:
    return kiln_cuda_fmt(k, "kiln_clamp(%s, %s, %s)", x[0], flit(k, n->attr.lo), flit(k, n->attr.hi));
  case KILN_OP_ADD: return kiln_cuda_fmt(k, "(%s + %s)", x[0], x[1]);
  case KILN_OP_SUB: return kiln_cuda_fmt(k, "(%s - %s)", x[0], x[1]);
  case KILN_OP_MUL: return kiln_cuda_fmt(k, "(%s * %s)", x[0], x[1]);
  case KILN_OP_DIV: return kiln_cuda_fmt(k, "(%s / %s)", x[0], x[1]);
  case KILN_OP_WHERE: return kiln_cuda_fmt(k, "kiln_where(%s, %s, %s)", x[0], x[1], x[2]);
  case KILN_OP_BROADCAST: return x[0];
  case KILN_OP_GELU_GRAD: return kiln_cuda_fmt(k, "kiln_gelu_grad(%s, %s)", x[0], x[1]);
  case KILN_OP_SILU_GRAD: return kiln_cuda_fmt(k, "kiln_silu_grad(%s, %s)", x[0], x[1]);
  case KILN_OP_CLAMP_GRAD:
    return kiln_cuda_fmt(k, "kiln_clamp_grad(%s, %s, %s, %s)", x[0], x[1], flit(k, n->attr.lo),
                         flit(k, n->attr.hi));
  KILN_CASES_NOT_SCALAR
    break;
  }
  KILN_ASSERT(!"not an elementwise op");
  return NULL;
}

//
// Fusion groups (passes/fuse.c).
//
typedef struct {
  KilnCudaKernel *k;
  const KilnNode *top;        // the shape row and col count in
  const char *row, *col;
  int32_t given;
  const char *given_expr;
  long tag;                   // makes this call's locals unique in the kernel
  int nvals;
  const char **val;           // per node: its local, once written
} Chain;

static bool inline_here(const KilnCudaKernel *k, int32_t id) {
  return k->g->fused_into && k->g->fused_into[id] == k->id;
}

// A new local holding expr.
static const char *local(Chain *c, const char *expr) {
  const char *name = kiln_cuda_fmt(c->k, "e%ld_%d", c->tag, c->nvals++);
  fprintf(c->k->out, "    const float %s = %s;\n", name, expr);
  return name;
}

// Element (row, col) of the top's shape in leaf n, by numpy broadcasting: each of
// the top's row dims d (the row index split by constant divisions) advances n by
// its stride there, 0 where n has no such dim or size 1.
static const char *bcast_index(Chain *c, const KilnNode *n) {
  const KilnNode *t = c->top;
  int off = t->rank - n->rank;
  int64_t stride[KILN_MAX_RANK], st = 1;
  for (int d = t->rank - 1; d >= 0; d--) {
    int id = d - off;
    stride[d] = id < 0 || n->shape[id] == 1 ? 0 : st;
    if (id >= 0) st *= n->shape[id];
  }
  const char *e = "0";
  for (int d = 0; d < t->rank - 1; d++) {
    if (!stride[d]) continue;
    int64_t inner = prod(t->shape, d + 1, t->rank - 1);
    const char *coord = inner == 1 ? kiln_cuda_fmt(c->k, "(%s)", c->row)
                                   : kiln_cuda_fmt(c->k, "(%s) / %lld", c->row, (long long)inner);
    if (d > 0) coord = kiln_cuda_fmt(c->k, "(%s %% %lld)", coord, (long long)t->shape[d]);
    e = kiln_cuda_fmt(c->k, "%s + %s * %lld", e, coord, (long long)stride[d]);
  }
  if (t->rank && stride[t->rank - 1])
    e = kiln_cuda_fmt(c->k, "%s + (%s) * %lld", e, c->col, (long long)stride[t->rank - 1]);
  return e;
}

// The flat index of (row, col) in the top's shape.
static const char *top_index(Chain *c) {
  return kiln_cuda_fmt(c->k, "(%s) * %lld + (%s)", c->row, (long long)last_dim(c->top), c->col);
}

static const char *value(Chain *c, int32_t id);

static const char *leaf(Chain *c, int32_t id) {
  const KilnNode *n = node(c->k, id), *t = c->top;
  bool same = n->rank == t->rank && !memcmp(n->shape, t->shape, sizeof(int64_t) * (size_t)n->rank);
  const char *at = same ? top_index(c) : kiln_node_numel(n) == 1 ? "0" : bcast_index(c, n);
  const char *p = kiln_cuda_ptr(c->k, id);
  return local(c, kiln_cuda_fmt(c->k, n->dtype == KILN_I32 ? "(float)%s[%s]" : "%s[%s]", p, at));
}

// The value of node id at (row, col): given, computed from its inputs (and stored
// when read outside the group), or loaded. Each node's value is written once.
static const char *value(Chain *c, int32_t id) {
  if (c->val[id]) return c->val[id];
  const KilnNode *n = node(c->k, id);
  const char *v;
  if (id == c->given) {
    v = local(c, c->given_expr);
  } else if (!inline_here(c->k, id)) {
    v = leaf(c, id);
  } else {
    const char *x[KILN_MAX_INPUTS];
    for (int j = 0; j < n->nin; j++) x[j] = value(c, n->in[j]);
    v = local(c, kiln_cuda_scalar(c->k, n, x));
  }
  if (id != c->k->id && kiln_graph_fused_stored(c->k->g, id)) {
    KILN_ASSERT(kiln_node_numel(n) == kiln_node_numel(c->top));  // fuse.c: a chain of one shape
    fprintf(c->k->out, "    %s[%s] = %s;\n", kiln_cuda_ptr(c->k, id), top_index(c), v);
  }
  return c->val[id] = v;
}

const char *kiln_cuda_chain(KilnCudaKernel *k, int32_t root, const char *row, const char *col,
                            int32_t given, const char *given_expr) {
  // The stream position names this call's locals: deterministic for a given
  // kernel text, distinct for two calls in one kernel.
  long tag = ftell(k->out);
  Chain c = {k, node(k, root), row, col, given, given_expr, tag < 0 ? 0 : tag, 0,
             kiln_arena_alloc(k->arena, (size_t)k->g->nnodes * sizeof(const char *))};
  const KilnNode *n = c.top;
  if (root == given) return local(&c, given_expr);
  const char *x[KILN_MAX_INPUTS];
  for (int j = 0; j < n->nin; j++) x[j] = value(&c, n->in[j]);
  return local(&c, kiln_cuda_scalar(k, n, x));
}

int kiln_cuda_emit_elementwise(KilnCudaKernel *k) {
  const KilnGraph *g = k->g;
  for (int32_t i = 0; g->fused_into && i < k->id; i++)
    if (inline_here(k, i) && kiln_op_has(g->nodes[i].op, KILN_OPF_EPILOGUE))
      return kiln_cuda_emit_matmul_group(k, i);
  const KilnNode *o = node(k, k->id);
  int64_t n = kiln_node_numel(o), inner = last_dim(o);
  const char *out = kiln_cuda_ptr(k, k->id);
  begin(k, THREADS);
  // 32-bit indices where every index fits (divisions by constants are cheaper);
  // leaves are no larger than the root.
  const char *t = n < (INT64_C(1) << 30) ? "int" : "long long";
  fprintf(k->out, "  KILN_GRID_LOOP(%s, i, %lldll) {\n", t, (long long)n);
  fprintf(k->out, "    %s row = i / %lld, col = i %% %lld;\n", t, (long long)inner, (long long)inner);
  const char *v = kiln_cuda_chain(k, k->id, "row", "col", -1, NULL);
  fprintf(k->out, "    %s[i] = %s%s;\n  }\n}\n", out, o->dtype == KILN_I32 ? "(int)" : "", v);
  grid_for(k, n);
  return 0;
}

// dropout: as the CPU backend and ir/interp.c (templates/elementwise.cuh).
int kiln_cuda_emit_dropout(KilnCudaKernel *k) {
  const KilnNode *o = node(k, k->id);
  KILN_ASSERT(o->attr.p >= 0 && o->attr.p < 1);
  uint64_t z = (uint64_t)o->attr.key;  // SplitMix64's finaliser, as mix64 in ir/interp.c
  z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
  z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
  z ^= z >> 31;
  uint64_t thresh = (uint64_t)ceil(o->attr.p * 0x1p53);
  int64_t n = kiln_node_numel(o);
  begin(k, THREADS);
  fprintf(k->out, "  kiln_dropout<%lldll>(A, %s, %s, 0x%llxull, 0x%llxull, %s);\n}\n", (long long)n,
          kiln_cuda_ptr(k, o->in[0]), kiln_cuda_ptr(k, k->id), (unsigned long long)z,
          (unsigned long long)thresh, flit(k, 1 - o->attr.p));
  grid_for(k, n);
  return 0;
}

int kiln_cuda_emit_copy(KilnCudaKernel *k) {
  const KilnNode *o = node(k, k->id);
  int64_t n = kiln_node_numel(o);
  begin(k, THREADS);
  fprintf(k->out, "  kiln_copy<%s, %lldll>(%s, %s);\n}\n", ctype(o), (long long)n,
          kiln_cuda_ptr(k, o->in[0]), kiln_cuda_ptr(k, k->id));
  grid_for(k, n);
  return 0;
}

// Output element i reads the input at its coordinates' permuted strides: the
// index is written out with constant divisions. The last dim usually stays last
// (heads split from features), so reads along it are coalesced.
int kiln_cuda_emit_transpose(KilnCudaKernel *k) {
  const KilnNode *o = node(k, k->id), *x = node(k, o->in[0]);
  int64_t in_stride[KILN_MAX_RANK], st = 1;
  for (int d = x->rank - 1; d >= 0; d--) in_stride[d] = st, st *= x->shape[d];
  const char *e = "0";
  for (int d = 0; d < o->rank; d++) {
    int64_t s = in_stride[o->attr.ints[d]], inner = prod(o->shape, d + 1, o->rank);
    if (o->shape[d] == 1) continue;
    const char *coord = inner == 1 ? "i" : kiln_cuda_fmt(k, "i / %lld", (long long)inner);
    if (d > 0) coord = kiln_cuda_fmt(k, "(%s %% %lld)", coord, (long long)o->shape[d]);
    e = kiln_cuda_fmt(k, "%s + %s * %lld", e, coord, (long long)s);
  }
  int64_t n = kiln_node_numel(o);
  begin(k, THREADS);
  fprintf(k->out, "  KILN_GRID_LOOP(long long, i, %lldll) %s[i] = %s[%s];\n}\n", (long long)n,
          kiln_cuda_ptr(k, k->id), kiln_cuda_ptr(k, o->in[0]), e);
  grid_for(k, n);
  return 0;
}

// concat and slice: runs of contiguous elements per index of the dims before the
// axis, one grid-stride loop per input (as the CPU backend's copy runs).
int kiln_cuda_emit_concat_slice(KilnCudaKernel *k) {
  const KilnNode *o = node(k, k->id);
  int axis = (int)kiln_norm_axis(o->attr.axis, o->rank);
  long long outer = prod(o->shape, 0, axis), inner = prod(o->shape, axis + 1, o->rank);
  long long ys = o->shape[axis] * inner;
  const char *dst = kiln_cuda_ptr(k, k->id);
  begin(k, THREADS);
  if (o->op == KILN_OP_SLICE) {
    const KilnNode *x = node(k, o->in[0]);
    fprintf(k->out, "  kiln_runs<%s, %lldll, %lldll, %lldll, %lldll, %lldll, 0>(%s, %s);\n", ctype(o),
            outer, ys, (long long)x->shape[axis] * inner, (long long)o->attr.start * inner, ys,
            kiln_cuda_ptr(k, o->in[0]), dst);
  } else {
    long long at = 0;
    for (int i = 0; i < o->nin; i++) {
      long long len = node(k, o->in[i])->shape[axis] * inner;
      fprintf(k->out, "  kiln_runs<%s, %lldll, %lldll, %lldll, 0, %lldll, %lldll>(%s, %s);\n", ctype(o),
              outer, len, len, ys, at, kiln_cuda_ptr(k, o->in[i]), dst);
      at += len;
    }
  }
  fprintf(k->out, "}\n");
  grid_for(k, kiln_node_numel(o));
  return 0;
}

int kiln_cuda_emit_embedding(KilnCudaKernel *k) {
  const KilnNode *o = node(k, k->id), *tab = node(k, o->in[1]);
  int64_t v = tab->shape[0], d = tab->shape[1], p = kiln_node_numel(o) / d;
  begin(k, THREADS);
  fprintf(k->out, "  kiln_embedding<%lldll, %lldll, %lldll>(%s, %s, %s);\n}\n", (long long)p,
          (long long)v, (long long)d, kiln_cuda_ptr(k, o->in[0]), kiln_cuda_ptr(k, o->in[1]),
          kiln_cuda_ptr(k, k->id));
  grid_for(k, kiln_node_numel(o));
  return 0;
}

// Deterministic (templates/elementwise.cuh): column j of NV chunks of the table's
// rows per thread. NV makes about 32K threads, enough to fill a GPU's SMs with
// the id walks that dominate, without zeroing a row chunk too small to pay.
int kiln_cuda_emit_embedding_grad(KilnCudaKernel *k) {
  const KilnNode *o = node(k, k->id), *ids = node(k, o->in[0]);
  int64_t v = o->shape[0], d = o->shape[1], p = kiln_node_numel(ids);
  int64_t nv = 32768 / d;
  if (nv < 1) nv = 1;
  if (nv > v) nv = v;
  begin(k, THREADS);
  fprintf(k->out, "  kiln_embedding_grad<%lldll, %lldll, %lldll, %lldll>(%s, %s, %s);\n}\n",
          (long long)p, (long long)v, (long long)d, (long long)nv, kiln_cuda_ptr(k, o->in[0]),
          kiln_cuda_ptr(k, o->in[1]), kiln_cuda_ptr(k, k->id));
  grid_for(k, nv * d);
  return 0;
}
