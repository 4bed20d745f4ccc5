// Reductions, softmax, layernorm and the losses as CUDA kernels: each a call of a
// template of templates/reduce.cuh with the shapes as constants. Inputs reach the
// templates as functors (C++ lambdas in the kernel), which load an element or
// compute it when an elementwise producer is fused into the kernel, as the CPU
// backend's in_load does.
#include <stdio.h>
#include <string.h>

#include "compiler/cuda/cuda.h"

#define THREADS 256

static const KilnNode *node(const KilnCudaKernel *k, int32_t id) { return &k->g->nodes[id]; }

static int64_t prod(const int64_t *s, int from, int to) {
  int64_t p = 1;
  for (int i = from; i < to; i++) p *= s[i];
  return p;
}

static void begin(KilnCudaKernel *k, uint32_t threads) {
  fprintf(k->out, "extern \"C\" __global__ void __launch_bounds__(%u) %s(KilnArgs A) {\n", threads,
          k->name);
  k->block[0] = threads;
}

// Threads for a block that walks rows of n: about four elements each, a warp at
// least, 1024 at most.
static uint32_t row_threads(int64_t n) {
  uint32_t t = 32;
  while (t < 1024 && (int64_t)t * 4 < n) t *= 2;
  return t;
}

// Writes the functor xJ of input j and returns its name: element i of the input,
// loaded (i32 converted), or computed by the input's fused group.
static const char *input(KilnCudaKernel *k, int j) {
  int32_t id = node(k, k->id)->in[j];
  const KilnNode *x = node(k, id);
  const char *name = kiln_cuda_fmt(k, "x%d", j);
  if (!k->g->fused_into || k->g->fused_into[id] != k->id) {
    fprintf(k->out, "  auto %s = [&](long long i) -> float { return %s%s[i]; };\n", name,
            x->dtype == KILN_I32 ? "(float)" : "", kiln_cuda_ptr(k, id));
    return name;
  }
  long long last = x->rank ? x->shape[x->rank - 1] : 1;
  fprintf(k->out, "  auto %s = [&](long long i) -> float {\n", name);
  fprintf(k->out, "    long long row = i / %lld, col = i %% %lld;\n", last, last);
  const char *v = kiln_cuda_chain(k, id, "row", "col", -1, NULL);
  fprintf(k->out, "    return %s;\n  };\n", v);
  return name;
}

// An f32 constant (eps) exactly as the CPU backend rounds it.
static const char *flit(KilnCudaKernel *k, double v) { return kiln_cuda_fmt(k, "((float)%.17g)", (double)(float)v); }

// The flat offset, at the input's strides, of index `var` counted over the dims
// dims[0..n) (row-major among themselves): constant divisions.
static const char *coords(KilnCudaKernel *k, const char *var, const int *dims, int n, const KilnNode *x,
                          const int64_t *stride) {
  const char *e = "0";
  for (int i = 0; i < n; i++) {
    int d = dims[i];
    int64_t inner = 1;
    for (int j = i + 1; j < n; j++) inner *= x->shape[dims[j]];
    if (x->shape[d] == 1) continue;
    const char *c = inner == 1 ? var : kiln_cuda_fmt(k, "%s / %lld", var, (long long)inner);
    if (i > 0) c = kiln_cuda_fmt(k, "(%s %% %lld)", c, (long long)x->shape[d]);
    e = kiln_cuda_fmt(k, "%s + %s * %lld", e, c, (long long)stride[d]);
  }
  return e;
}

// sum, mean, max over attr.ints (none: all). A thread per output when the last
// axis is kept (coalesced, the CPU's order of additions); a block per output
// when the last axis is reduced.
int kiln_cuda_emit_reduce(KilnCudaKernel *k) {
  const KilnNode *o = node(k, k->id), *x = node(k, o->in[0]);
  bool red[KILN_MAX_RANK] = {0};
  for (int d = 0; d < x->rank; d++) red[d] = o->attr.nints == 0;
  for (int i = 0; i < o->attr.nints; i++) red[kiln_norm_axis(o->attr.ints[i], x->rank)] = true;
  int kept[KILN_MAX_RANK], rdims[KILN_MAX_RANK], nk = 0, nr = 0;
  int64_t stride[KILN_MAX_RANK], st = 1, count = 1;
  for (int d = x->rank - 1; d >= 0; d--) stride[d] = st, st *= x->shape[d];
  for (int d = 0; d < x->rank; d++) {
    if (red[d]) rdims[nr++] = d, count *= x->shape[d];
    else kept[nk++] = d;
  }
  int64_t on = kiln_node_numel(o);
  bool block = x->rank == 0 || red[x->rank - 1];
  const char *op = o->op == KILN_OP_MAX ? "KILN_RED_MAX" : o->op == KILN_OP_MEAN ? "KILN_RED_MEAN" : "KILN_RED_SUM";
  begin(k, block ? row_threads(count) : THREADS);
  const char *xf = input(k, 0);
  fprintf(k->out, "  kiln_reduce_%s<%s, %lldll, %lldll>(%s,\n", block ? "block" : "serial", op,
          (long long)on, (long long)count, xf);
  fprintf(k->out, "      [&](long long o) -> long long { return %s; },\n", coords(k, "o", kept, nk, x, stride));
  fprintf(k->out, "      [&](long long r) -> long long { return %s; }, %s);\n}\n",
          coords(k, "r", rdims, nr, x, stride), kiln_cuda_ptr(k, k->id));
  k->grid[0] = block ? kiln_cuda_blocks(on, 1) : kiln_cuda_blocks(on, THREADS);
  return 0;
}

int kiln_cuda_emit_softmax(KilnCudaKernel *k) {
  const KilnNode *o = node(k, k->id);
  int axis = (int)kiln_norm_axis(o->attr.axis, o->rank);
  int64_t len = o->shape[axis], inner = prod(o->shape, axis + 1, o->rank);
  int64_t lanes = kiln_node_numel(o) / len;
  bool log = o->op == KILN_OP_LOG_SOFTMAX;
  if (inner == 1) {
    begin(k, row_threads(len));
    const char *xf = input(k, 0);
    fprintf(k->out, "  kiln_softmax_rows<%s, %lldll, %lldll>(%s, %s);\n}\n", log ? "true" : "false",
            (long long)lanes, (long long)len, xf, kiln_cuda_ptr(k, k->id));
    k->grid[0] = kiln_cuda_blocks(lanes, 1);
  } else {
    begin(k, THREADS);
    const char *xf = input(k, 0);
    fprintf(k->out, "  kiln_softmax_lanes<%s, %lldll, %lldll, %lldll>(%s, %s);\n}\n",
            log ? "true" : "false", (long long)lanes, (long long)len, (long long)inner, xf,
            kiln_cuda_ptr(k, k->id));
    k->grid[0] = kiln_cuda_blocks(lanes, THREADS);
  }
  return 0;
}

// layernorm and layernorm_dx over the last axis: a block per row.
static int row_norm(KilnCudaKernel *k, const char *fn) {
  const KilnNode *o = node(k, k->id);
  int64_t d = o->shape[o->rank - 1], rows = kiln_node_numel(o) / d;
  begin(k, row_threads(d));
  const char *a = input(k, 0), *b = input(k, 1), *c = input(k, 2);
  fprintf(k->out, "  %s<%lldll, %lldll>(%s, %s, %s, %s, %s);\n}\n", fn, (long long)rows, (long long)d,
          a, b, c, kiln_cuda_ptr(k, k->id), flit(k, o->attr.eps));
  k->grid[0] = kiln_cuda_blocks(rows, 1);
  return 0;
}

int kiln_cuda_emit_layernorm(KilnCudaKernel *k) { return row_norm(k, "kiln_layernorm"); }

int kiln_cuda_emit_layernorm_dx(KilnCudaKernel *k) { return row_norm(k, "kiln_layernorm_dx"); }

// 32 columns per block, 16 warps walking the rows (templates/reduce.cuh).
int kiln_cuda_emit_layernorm_dgamma(KilnCudaKernel *k) {
  enum { WARPS = 16 };
  const KilnNode *o = node(k, k->id), *x = node(k, o->in[0]);
  int64_t d = o->shape[0], rows = kiln_node_numel(x) / d;
  begin(k, WARPS * 32);
  const char *a = input(k, 0), *b = input(k, 1);
  fprintf(k->out, "  kiln_layernorm_dgamma<%lldll, %lldll, %d>(%s, %s, %s, %s);\n}\n", (long long)rows,
          (long long)d, WARPS, a, b, kiln_cuda_ptr(k, k->id), flit(k, o->attr.eps));
  k->grid[0] = kiln_cuda_blocks(d, 32);
  return 0;
}

// One block of 1024 threads: the loss is one number, and its two-level sum
// (double per thread, then over the block in a fixed order) needs no scratch
// memory and no atomics. The losses of the bundled models read at most a few MB.
int kiln_cuda_emit_loss(KilnCudaKernel *k) {
  const KilnNode *o = node(k, k->id), *x = node(k, o->in[0]);
  begin(k, 1024);
  const char *a = input(k, 0);
  if (o->op == KILN_OP_CROSS_ENTROPY) {
    int64_t c = x->shape[x->rank - 1];
    fprintf(k->out, "  kiln_cross_entropy<%lldll, %lldll>(%s, %s, %s);\n}\n",
            (long long)(kiln_node_numel(x) / c), (long long)c, a, kiln_cuda_ptr(k, o->in[1]),
            kiln_cuda_ptr(k, k->id));
  } else {
    const char *b = input(k, 1);
    fprintf(k->out, "  kiln_pointwise_loss<%s, %lldll>(%s, %s, %s);\n}\n",
            o->op == KILN_OP_BCE ? "true" : "false", (long long)kiln_node_numel(x), a, b,
            kiln_cuda_ptr(k, k->id));
  }
  k->grid[0] = 1;
  return 0;
}

int kiln_cuda_emit_cross_entropy_grad(KilnCudaKernel *k) {
  const KilnNode *o = node(k, k->id);
  int64_t c = o->shape[o->rank - 1], p = kiln_node_numel(o) / c;
  begin(k, row_threads(c));
  const char *a = input(k, 0);
  fprintf(k->out, "  kiln_cross_entropy_grad<%lldll, %lldll>(%s, %s, %s);\n}\n", (long long)p,
          (long long)c, a, kiln_cuda_ptr(k, o->in[1]), kiln_cuda_ptr(k, k->id));
  k->grid[0] = kiln_cuda_blocks(p, 1);
  return 0;
}
