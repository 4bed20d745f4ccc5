// Reverse-mode automatic differentiation as a graph-to-graph pass: appends to the
// graph the nodes that compute dloss/dparam for every parameter. The backward
// graph is ordinary IR, so every later pass (fusion, memory planning) and every
// backend treat training exactly as inference.
//
// Nodes are visited from the loss back to the inputs. Each node's rule turns the
// gradient of its output (dy) into gradients of its inputs; contributions to one
// value from several consumers are summed. Only values that depend on a parameter
// and feed the loss receive gradients.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "passes/passes.h"

typedef struct {
  KilnGraph *g;
  int32_t *adj;      // per forward node: its accumulated gradient, or -1
  bool *needs;       // per forward node: depends on a parameter
  int32_t node;      // the forward node whose rule is running (for names)
  const char *tag;   // "d": made by its rule; "g": sums of contributions
  int seq;           // numbers the nodes one rule makes
  int sums;          // numbers the sums
} Ad;

// Adds a node and shapes it. Autodiff only combines shapes the forward pass
// already checked, so a failing shape rule here is a bug in a rule below.
static int32_t emit(Ad *a, KilnOp op, const int32_t *in, int nin, const KilnAttrs *attr) {
  KilnGraph *g = a->g;
  const KilnNode *f = &g->nodes[a->node];
  const char *name = kiln_arena_printf(g->arena, "%s.%s%d", f->name, a->tag, a->seq++);
  KilnLoc loc = f->loc;
  int32_t id = kiln_graph_add(g, op, in, nin, name, loc);
  if (attr) g->nodes[id].attr = *attr;
  char err[256];
  if (kiln_graph_infer(g, id, err, sizeof err) != 0) {
    fprintf(stderr, "kiln: internal error: gradient of %%%s: %s\n", f->name, err);
    KILN_ASSERT(!"gradient rule built an ill-shaped node");
  }
  return id;
}

static int32_t op1(Ad *a, KilnOp op, int32_t x) { return emit(a, op, &x, 1, NULL); }

static int32_t op2(Ad *a, KilnOp op, int32_t x, int32_t y) {
  int32_t in[2] = {x, y};
  return emit(a, op, in, 2, NULL);
}

static int32_t constant(Ad *a, double v) {
  KilnAttrs at = {.value = v};
  int32_t id = emit(a, KILN_OP_CONST, NULL, 0, &at);
  a->g->nodes[id].dtype = KILN_F32;
  return id;
}

static const KilnNode *node(Ad *a, int32_t id) { return &a->g->nodes[id]; }

static int32_t reshape(Ad *a, int32_t x, const int64_t *shape, int rank) {
  const KilnNode *n = node(a, x);
  if (n->rank == rank && memcmp(n->shape, shape, sizeof(int64_t) * (size_t)rank) == 0) return x;
  KilnAttrs at = {.nints = rank};
  memcpy(at.ints, shape, sizeof(int64_t) * (size_t)rank);
  return emit(a, KILN_OP_RESHAPE, &x, 1, &at);
}

static int32_t reshape_like(Ad *a, int32_t x, int32_t like) {
  const KilnNode *l = node(a, like);
  return reshape(a, x, l->shape, l->rank);
}

static int32_t broadcast_to(Ad *a, int32_t x, const KilnNode *like) {
  KilnAttrs at = {.nints = like->rank};
  memcpy(at.ints, like->shape, sizeof(int64_t) * (size_t)like->rank);
  const KilnNode *n = node(a, x);
  if (n->rank == like->rank && memcmp(n->shape, like->shape, sizeof(int64_t) * (size_t)n->rank) == 0)
    return x;
  return emit(a, KILN_OP_BROADCAST, &x, 1, &at);
}

// Sums a gradient down to the shape of a broadcast operand: over the leading axes
// it lacks and the axes where it has size 1.
static int32_t reduce_to(Ad *a, int32_t dy, int32_t target) {
  const KilnNode *d = node(a, dy), *t = node(a, target);
  int off = d->rank - t->rank;
  KilnAttrs at = {.keepdims = true};
  for (int i = 0; i < d->rank; i++)
    if (i < off || (t->shape[i - off] == 1 && d->shape[i] != 1)) at.ints[at.nints++] = i;
  if (at.nints == 0) return reshape_like(a, dy, target);
  int32_t s = emit(a, KILN_OP_SUM, &dy, 1, &at);
  return reshape_like(a, s, target);
}

// A reduction's output gradient, reshaped so it broadcasts against the input
// (the reduced axes restored as size 1), then broadcast to the input's shape.
static int32_t unreduce(Ad *a, int32_t dy, const KilnNode *x, const KilnNode *n) {
  bool reduced[KILN_MAX_RANK] = {0};
  if (n->attr.nints == 0)
    for (int i = 0; i < x->rank; i++) reduced[i] = true;
  for (int i = 0; i < n->attr.nints; i++) reduced[kiln_norm_axis(n->attr.ints[i], x->rank)] = true;
  int64_t shape[KILN_MAX_RANK];
  for (int i = 0; i < x->rank; i++) shape[i] = reduced[i] ? 1 : x->shape[i];
  return broadcast_to(a, reshape(a, dy, shape, x->rank), x);
}

static int32_t sum_axis(Ad *a, int32_t x, int64_t axis) {
  KilnAttrs at = {.nints = 1, .ints = {axis}, .keepdims = true};
  return emit(a, KILN_OP_SUM, &x, 1, &at);
}

static int32_t matmul(Ad *a, int32_t x, int32_t y, bool ta, bool tb) {
  KilnAttrs at = {.trans_a = ta, .trans_b = tb};
  int32_t in[2] = {x, y};
  return emit(a, KILN_OP_MATMUL, in, 2, &at);
}

// Flattens all but the last axis: [b, t, k] -> [b*t, k].
static int32_t rows(Ad *a, int32_t x) {
  const KilnNode *n = node(a, x);
  int64_t shape[2] = {kiln_node_numel(n) / n->shape[n->rank - 1], n->shape[n->rank - 1]};
  return reshape(a, x, shape, 2);
}

// C = op(A) op(B). dop(A) = dC op(B)^T and dop(B) = op(A)^T dC, written as
// matmuls with transpose flags. A 2-D weight multiplied by a batched input gets
// its gradient as one [K, rows] x [rows, N] product.
static void grad_matmul(Ad *a, const KilnNode *n, int32_t dy, int32_t *dx) {
  int32_t A = n->in[0], B = n->in[1];
  bool ta = n->attr.trans_a, tb = n->attr.trans_b;
  if (a->needs[A]) {
    int32_t d = ta ? matmul(a, B, dy, tb, true) : matmul(a, dy, B, false, !tb);
    dx[0] = reduce_to(a, d, A);
  }
  if (a->needs[B]) {
    const KilnNode *an = node(a, A), *bn = node(a, B);
    if (bn->rank == 2 && an->rank > 2 && !ta) {
      int32_t a2 = rows(a, A), d2 = rows(a, dy);
      dx[1] = tb ? matmul(a, d2, a2, true, false) : matmul(a, a2, d2, true, false);
    } else {
      int32_t d = tb ? matmul(a, dy, A, true, ta) : matmul(a, A, dy, !ta, false);
      dx[1] = reduce_to(a, d, B);
    }
  }
}

static int32_t slice(Ad *a, int32_t x, int64_t axis, int64_t start, int64_t end) {
  KilnAttrs at = {.axis = axis, .start = start, .end = end};
  return emit(a, KILN_OP_SLICE, &x, 1, &at);
}

// The gradient of a slice: dy placed at [start, end) along the axis, zeros around.
// (n and x are copies: emitting may move the node array.)
static int32_t unslice(Ad *a, const KilnNode *n, const KilnNode *x, int32_t dy) {
  int axis = (int)kiln_norm_axis(n->attr.axis, x->rank);
  int32_t parts[3];
  int np = 0;
  int64_t lens[2] = {n->attr.start, x->shape[axis] - n->attr.end};
  for (int side = 0; side < 2; side++) {
    if (side == 1) parts[np++] = dy;
    if (lens[side] == 0) continue;
    KilnNode shape = *x;
    shape.shape[axis] = lens[side];
    parts[np++] = broadcast_to(a, constant(a, 0), &shape);
  }
  if (np == 1) return dy;
  KilnAttrs at = {.axis = axis};
  return emit(a, KILN_OP_CONCAT, parts, np, &at);
}

// A packed gradient (lstm_grad, attention_grad) taken apart: part i is the slice
// [offset, offset + numel) of the flat vector, reshaped like input i.
static int32_t unpack_flat(Ad *a, int32_t packed, int64_t offset, int32_t like) {
  int64_t n = kiln_node_numel(node(a, like));
  return reshape_like(a, slice(a, packed, 0, offset, offset + n), like);
}

// n is a copy of the forward node, and so is x (its first input): emitting nodes
// may move the node array, so no pointer into it is held across an emit.
static void rule(Ad *a, const KilnNode *n, int32_t dy, int32_t *dx) {
  KilnNode xv = n->nin ? *node(a, n->in[0]) : (KilnNode){0};
  const KilnNode *x = &xv;
  int32_t y = a->node, x0 = n->nin ? n->in[0] : -1, x1 = n->nin > 1 ? n->in[1] : -1;
  switch (n->op) {
  case KILN_OP_NEG: dx[0] = op1(a, KILN_OP_NEG, dy); return;
  case KILN_OP_EXP: dx[0] = op2(a, KILN_OP_MUL, dy, y); return;
  case KILN_OP_LOG: dx[0] = op2(a, KILN_OP_DIV, dy, x0); return;
  case KILN_OP_SQRT:  // 0.5 / sqrt(x)
    dx[0] = op2(a, KILN_OP_DIV, op2(a, KILN_OP_MUL, dy, constant(a, 0.5)), y);
    return;
  case KILN_OP_RSQRT: {  // -0.5 x^-1.5 = -0.5 y^3
    KilnAttrs cube = {.exponent = 3};
    int32_t y3 = emit(a, KILN_OP_POW, &y, 1, &cube);
    dx[0] = op2(a, KILN_OP_MUL, dy, op2(a, KILN_OP_MUL, constant(a, -0.5), y3));
    return;
  }
  case KILN_OP_POW: {  // p x^(p-1)
    double p = n->attr.exponent;
    KilnAttrs pm1 = {.exponent = p - 1};
    int32_t d = p == 1 ? constant(a, 1)
                : p == 2 ? op2(a, KILN_OP_MUL, constant(a, 2), x0)
                         : op2(a, KILN_OP_MUL, constant(a, p), emit(a, KILN_OP_POW, &x0, 1, &pm1));
    dx[0] = op2(a, KILN_OP_MUL, dy, d);
    return;
  }
  case KILN_OP_RELU: {  // 1 where the output is positive
    int32_t in[3] = {y, dy, constant(a, 0)};
    dx[0] = emit(a, KILN_OP_WHERE, in, 3, NULL);
    return;
  }
  case KILN_OP_SIGMOID:  // y (1 - y)
    dx[0] = op2(a, KILN_OP_MUL, dy, op2(a, KILN_OP_MUL, y, op2(a, KILN_OP_SUB, constant(a, 1), y)));
    return;
  case KILN_OP_TANH:  // 1 - y^2
    dx[0] = op2(a, KILN_OP_MUL, dy, op2(a, KILN_OP_SUB, constant(a, 1), op2(a, KILN_OP_MUL, y, y)));
    return;
  case KILN_OP_GELU: dx[0] = op2(a, KILN_OP_GELU_GRAD, x0, dy); return;
  case KILN_OP_SILU: dx[0] = op2(a, KILN_OP_SILU_GRAD, x0, dy); return;
  case KILN_OP_CLAMP: {
    int32_t in[2] = {x0, dy};
    dx[0] = emit(a, KILN_OP_CLAMP_GRAD, in, 2, &n->attr);
    return;
  }
  case KILN_OP_DROPOUT:  // the same mask (same key, same step seed) and scale
    dx[0] = emit(a, KILN_OP_DROPOUT, &dy, 1, &n->attr);
    return;
  case KILN_OP_ADD:
    dx[0] = reduce_to(a, dy, x0);
    dx[1] = reduce_to(a, dy, x1);
    return;
  case KILN_OP_SUB:
    dx[0] = reduce_to(a, dy, x0);
    if (a->needs[x1]) dx[1] = reduce_to(a, op1(a, KILN_OP_NEG, dy), x1);
    return;
  case KILN_OP_MUL:
    if (a->needs[x0]) dx[0] = reduce_to(a, op2(a, KILN_OP_MUL, dy, x1), x0);
    if (a->needs[x1]) dx[1] = reduce_to(a, op2(a, KILN_OP_MUL, dy, x0), x1);
    return;
  case KILN_OP_DIV:  // d(a/b)/da = 1/b, d(a/b)/db = -y/b
    if (a->needs[x0]) dx[0] = reduce_to(a, op2(a, KILN_OP_DIV, dy, x1), x0);
    if (a->needs[x1])
      dx[1] = reduce_to(a, op1(a, KILN_OP_NEG, op2(a, KILN_OP_MUL, dy, op2(a, KILN_OP_DIV, y, x1))), x1);
    return;
  case KILN_OP_WHERE: {
    int32_t zero = constant(a, 0), c = x0, in[3] = {c, dy, zero};
    if (a->needs[x1]) dx[1] = reduce_to(a, emit(a, KILN_OP_WHERE, in, 3, NULL), x1);
    in[1] = zero;
    in[2] = dy;
    if (a->needs[n->in[2]]) dx[2] = reduce_to(a, emit(a, KILN_OP_WHERE, in, 3, NULL), n->in[2]);
    return;
  }
  case KILN_OP_SUM: dx[0] = unreduce(a, dy, x, n); return;
  case KILN_OP_MEAN: {
    double count = (double)kiln_node_numel(x) / (double)kiln_node_numel(n);
    dx[0] = unreduce(a, op2(a, KILN_OP_MUL, dy, constant(a, 1 / count)), x, n);
    return;
  }
  case KILN_OP_MAX: {  // to every element equal to the maximum (ties share dy)
    int32_t ymax = unreduce(a, y, x, n), g = unreduce(a, dy, x, n);
    int32_t in[3] = {op2(a, KILN_OP_SUB, x0, ymax), constant(a, 0), g};
    dx[0] = emit(a, KILN_OP_WHERE, in, 3, NULL);
    return;
  }
  case KILN_OP_SOFTMAX: {  // y (dy - sum(dy y))
    int32_t s = sum_axis(a, op2(a, KILN_OP_MUL, dy, y), n->attr.axis);
    dx[0] = op2(a, KILN_OP_MUL, y, op2(a, KILN_OP_SUB, dy, s));
    return;
  }
  case KILN_OP_LOG_SOFTMAX: {  // dy - exp(y) sum(dy)
    int32_t s = sum_axis(a, dy, n->attr.axis);
    dx[0] = op2(a, KILN_OP_SUB, dy, op2(a, KILN_OP_MUL, op1(a, KILN_OP_EXP, y), s));
    return;
  }
  case KILN_OP_LAYERNORM: {
    int32_t in3[3] = {x0, x1, dy}, in2[2] = {x0, dy};
    KilnAttrs eps = {.eps = n->attr.eps};
    if (a->needs[x0]) dx[0] = emit(a, KILN_OP_LAYERNORM_DX, in3, 3, &eps);
    if (a->needs[x1]) dx[1] = emit(a, KILN_OP_LAYERNORM_DGAMMA, in2, 2, &eps);
    if (a->needs[n->in[2]]) {
      KilnAttrs all = {.nints = x->rank - 1};
      for (int i = 0; i < x->rank - 1; i++) all.ints[i] = i;
      dx[2] = all.nints ? emit(a, KILN_OP_SUM, &dy, 1, &all) : dy;
    }
    return;
  }
  case KILN_OP_MATMUL: grad_matmul(a, n, dy, dx); return;
  case KILN_OP_RESHAPE: dx[0] = reshape_like(a, dy, x0); return;
  case KILN_OP_TRANSPOSE: {
    KilnAttrs inv = {.nints = n->attr.nints};
    for (int i = 0; i < n->attr.nints; i++) inv.ints[n->attr.ints[i]] = i;
    dx[0] = emit(a, KILN_OP_TRANSPOSE, &dy, 1, &inv);
    return;
  }
  case KILN_OP_CONCAT: {
    int axis = (int)kiln_norm_axis(n->attr.axis, n->rank);
    int64_t at = 0;
    for (int i = 0; i < n->nin; i++) {
      int64_t len = node(a, n->in[i])->shape[axis];
      if (a->needs[n->in[i]]) dx[i] = slice(a, dy, axis, at, at + len);
      at += len;
    }
    return;
  }
  case KILN_OP_SLICE: dx[0] = unslice(a, n, x, dy); return;
  case KILN_OP_BROADCAST: dx[0] = reduce_to(a, dy, x0); return;
  case KILN_OP_EMBEDDING: {
    KilnAttrs sz = {.size = node(a, x1)->shape[0]};
    int32_t in[2] = {x0, dy};
    dx[1] = emit(a, KILN_OP_EMBEDDING_GRAD, in, 2, &sz);
    return;
  }
  case KILN_OP_LSTM: {
    int32_t in[5] = {n->in[0], n->in[1], n->in[2], n->in[3], dy};
    int32_t packed = emit(a, KILN_OP_LSTM_GRAD, in, 5, NULL);
    int64_t off = 0;
    for (int i = 0; i < 4; i++) {
      if (a->needs[n->in[i]]) dx[i] = unpack_flat(a, packed, off, n->in[i]);
      off += kiln_node_numel(node(a, n->in[i]));
    }
    return;
  }
  case KILN_OP_ATTENTION: {
    int32_t in[4] = {n->in[0], n->in[1], n->in[2], dy};
    int32_t packed = emit(a, KILN_OP_ATTENTION_GRAD, in, 4, &n->attr);
    int64_t d = node(a, n->in[0])->shape[2];  // dq, dk, dv side by side in each row
    for (int i = 0; i < 3; i++)
      if (a->needs[n->in[i]]) dx[i] = slice(a, packed, 2, i * d, (i + 1) * d);
    return;
  }
  // Losses are the root: their output gradient is 1, not a node.
  case KILN_OP_CROSS_ENTROPY: dx[0] = op2(a, KILN_OP_CROSS_ENTROPY_GRAD, x0, x1); return;
  case KILN_OP_MSE: {  // 2 (pred - target) / N
    double k = 2.0 / (double)kiln_node_numel(x);
    int32_t d = op2(a, KILN_OP_MUL, op2(a, KILN_OP_SUB, x0, x1), constant(a, k));
    if (a->needs[x0]) dx[0] = d;
    if (a->needs[x1]) dx[1] = op1(a, KILN_OP_NEG, d);
    return;
  }
  case KILN_OP_BCE: {  // (sigmoid(x) - y) / N; d/dy = -x / N
    double k = 1.0 / (double)kiln_node_numel(x);
    if (a->needs[x0])
      dx[0] = op2(a, KILN_OP_MUL, op2(a, KILN_OP_SUB, op1(a, KILN_OP_SIGMOID, x0), x1), constant(a, k));
    if (a->needs[x1]) dx[1] = op2(a, KILN_OP_MUL, x0, constant(a, -k));
    return;
  }
  case KILN_OP_INPUT: case KILN_OP_PARAM: case KILN_OP_CONST:
  case KILN_OP_GELU_GRAD: case KILN_OP_SILU_GRAD: case KILN_OP_CLAMP_GRAD:
  case KILN_OP_LAYERNORM_DX: case KILN_OP_LAYERNORM_DGAMMA: case KILN_OP_EMBEDDING_GRAD:
  case KILN_OP_LSTM_GRAD: case KILN_OP_ATTENTION_GRAD: case KILN_OP_CROSS_ENTROPY_GRAD:
  case KILN_OP_ATTENTION_DECODE: case KILN_OP_LSTM_STEP:
  case KILN_OP_COUNT:
    break;
  }
  KILN_ASSERT(!"no gradient rule for this op");
}

//
// Gradients of several slices of one value (the q, k, v of a fused projection):
// each is its piece padded with zeros (unslice), and their sum is one concat of
// the pieces, zeros only where no slice reads, instead of a concat per slice and
// adds of whole tensors.
//
typedef struct {
  int64_t start, len;  // along the concat's axis
  int32_t id;
} Piece;

static bool zeros(Ad *a, int32_t x) {
  const KilnNode *n = node(a, x);
  if (n->op != KILN_OP_BROADCAST) return false;
  const KilnNode *v = node(a, n->in[0]);
  return v->op == KILN_OP_CONST && v->attr.value == 0;
}

// Appends the non-zero parts of concat x to p[*np], in order.
static void pieces(Ad *a, int32_t x, Piece *p, int *np) {
  const KilnNode *n = node(a, x);
  int64_t at = 0, axis = kiln_norm_axis(n->attr.axis, n->rank);
  for (int i = 0; i < n->nin; i++) {
    int64_t len = node(a, n->in[i])->shape[axis];
    if (!zeros(a, n->in[i])) p[(*np)++] = (Piece){at, len, n->in[i]};
    at += len;
  }
}

// x + y as one concat when both are pieces padded with zeros along the same axis
// and no two pieces overlap; else -1.
static int32_t merge_pieces(Ad *a, int32_t x, int32_t y) {
  const KilnNode *nx = node(a, x), *ny = node(a, y);
  if (nx->op != KILN_OP_CONCAT || ny->op != KILN_OP_CONCAT ||
      kiln_norm_axis(nx->attr.axis, nx->rank) != kiln_norm_axis(ny->attr.axis, ny->rank))
    return -1;
  Piece p[2 * KILN_MAX_INPUTS];
  int np = 0;
  pieces(a, x, p, &np);
  pieces(a, y, p, &np);
  for (int i = 1; i < np; i++)  // by start
    for (int k = i; k > 0 && p[k - 1].start > p[k].start; k--) {
      Piece t = p[k];
      p[k] = p[k - 1], p[k - 1] = t;
    }
  KilnNode like = *nx;  // a copy: emitting may move the node array
  int axis = (int)kiln_norm_axis(like.attr.axis, like.rank), nparts = 0;
  int64_t end = 0;
  for (int i = 0; i <= np; i++) {
    int64_t next = i < np ? p[i].start : like.shape[axis];
    if (next < end) return -1;  // overlapping pieces are added
    nparts += (next > end) + (i < np);
    if (i < np) end = p[i].start + p[i].len;
  }
  if (nparts > KILN_MAX_INPUTS) return -1;
  int32_t parts[KILN_MAX_INPUTS];
  int n = 0;
  int64_t at = 0;
  for (int i = 0; i <= np; i++) {
    int64_t next = i < np ? p[i].start : like.shape[axis];
    if (next > at) {  // zeros where no piece is
      KilnNode gap = like;
      gap.shape[axis] = next - at;
      parts[n++] = broadcast_to(a, constant(a, 0), &gap);
    }
    if (i < np) parts[n++] = p[i].id, at = p[i].start + p[i].len;
  }
  KilnAttrs attr = {.axis = axis};
  return emit(a, KILN_OP_CONCAT, parts, n, &attr);
}

// Adds contribution d to the gradient accumulated for node j.
static void accumulate(Ad *a, int32_t j, int32_t d) {
  if (d < 0) return;
  if (a->adj[j] < 0) {
    a->adj[j] = d;
    return;
  }
  int32_t saved = a->node, seq = a->seq;
  const char *tag = a->tag;
  a->node = j;  // name the sum after the value it is the gradient of
  a->tag = "g";
  a->seq = a->sums;
  int32_t merged = merge_pieces(a, a->adj[j], d);
  a->adj[j] = merged >= 0 ? merged : op2(a, KILN_OP_ADD, a->adj[j], d);
  a->sums = a->seq;  // a merge may have made zeros too
  a->node = saved;
  a->tag = tag;
  a->seq = seq;
}

int kiln_pass_autodiff(KilnGraph *g, FILE *err) {
  if (g->loss < 0) {
    fprintf(err, "kiln: the model has no loss to differentiate\n");
    return 1;
  }
  int n = g->nnodes;
  Ad a = {g, kiln_arena_alloc(g->arena, (size_t)n * sizeof(int32_t)),
          kiln_arena_alloc(g->arena, (size_t)n * sizeof(bool)), 0, "d", 0, 0};
  for (int i = 0; i < n; i++) {
    const KilnNode *x = &g->nodes[i];
    a.adj[i] = -1;
    a.needs[i] = x->op == KILN_OP_PARAM;
    for (int j = 0; j < x->nin && x->dtype == KILN_F32; j++) a.needs[i] |= a.needs[x->in[j]];
  }
  g->nforward = n;
  for (int32_t i = g->loss; i >= 0; i--) {
    KilnNode f = g->nodes[i];  // a copy: emitting may move the node array
    bool root = i == g->loss;
    if (!a.needs[i] || (!root && a.adj[i] < 0) || kiln_op(f.op)->fuse == KILN_FUSE_SOURCE) continue;
    if (!kiln_op_has(f.op, KILN_OPF_DIFF)) {
      fprintf(err, "kiln: '%s' (%s) has no gradient\n", f.name, kiln_op(f.op)->name);
      return 1;
    }
    int32_t dx[KILN_MAX_INPUTS];
    for (int j = 0; j < KILN_MAX_INPUTS; j++) dx[j] = -1;
    a.node = i;
    a.seq = 0;
    rule(&a, &f, root ? -1 : a.adj[i], dx);
    for (int j = 0; j < f.nin; j++)
      if (a.needs[f.in[j]]) accumulate(&a, f.in[j], dx[j]);
  }
  // A parameter the loss does not use gets zeros, so every parameter has a
  // gradient (weight decay still applies to it).
  g->grads = kiln_arena_alloc(g->arena, (size_t)n * sizeof(int32_t));
  for (int i = 0; i < n; i++) {
    g->grads[i] = -1;
    if (g->nodes[i].op != KILN_OP_PARAM) continue;
    if (a.adj[i] < 0) {
      a.node = i;
      KilnNode p = g->nodes[i];
      a.adj[i] = broadcast_to(&a, constant(&a, 0), &p);
    }
    g->grads[i] = a.adj[i];
  }
  return 0;
}
