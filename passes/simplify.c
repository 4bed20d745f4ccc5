// Algebraic simplification: identities that leave a value unchanged are removed
// (x * 1, x + 0, x - 0, x / 1, pow(x, 1), -(-x), reshape or broadcast to the same
// shape, a slice of a whole axis, concat of one input, the identity transpose, a
// concat of slices that tile one value along its axis, in order: the gradient of
// a fused q|k|v projection from attention_grad's dq|dk|dv rows), and chains
// collapse (reshape of reshape, transpose of transpose). A node is replaced
// only by a value of exactly its type and shape. Autodiff leaves many of these.
#include <stdlib.h>
#include <string.h>

#include "passes/passes.h"

static bool same_type(const KilnNode *a, const KilnNode *b) {
  return a->dtype == b->dtype && a->rank == b->rank &&
         memcmp(a->shape, b->shape, sizeof(int64_t) * (size_t)a->rank) == 0;
}

static bool is_const(const KilnGraph *g, int32_t id, double v) {
  const KilnNode *c = &g->nodes[id];
  return c->op == KILN_OP_CONST && c->rank == 0 && c->attr.value == v;
}

// The value concat n reassembles, when its inputs are slices of one value along
// the concat's axis, each starting where the previous ends, covering it; else -1.
static int32_t tiled(const KilnGraph *g, const KilnNode *n) {
  int32_t src = g->nodes[n->in[0]].in[0];
  const KilnNode *s = &g->nodes[src];
  int64_t axis = kiln_norm_axis(n->attr.axis, n->rank), at = 0;
  for (int j = 0; j < n->nin; j++) {
    const KilnNode *x = &g->nodes[n->in[j]];
    if (x->op != KILN_OP_SLICE || x->in[0] != src || kiln_norm_axis(x->attr.axis, s->rank) != axis ||
        x->attr.start != at)
      return -1;
    at += x->shape[axis];
  }
  return at == s->shape[axis] && same_type(s, n) ? src : -1;
}

// The node i reduces to (an earlier node), or i. May rewrite i's own inputs.
static int32_t simplify(KilnGraph *g, int32_t i) {
  KilnNode *n = &g->nodes[i];
  const KilnNode *x = n->nin ? &g->nodes[n->in[0]] : NULL;
  int32_t a = n->nin ? n->in[0] : -1, b = n->nin > 1 ? n->in[1] : -1;
  switch (n->op) {
  case KILN_OP_MUL:
    if (is_const(g, b, 1) && same_type(x, n)) return a;
    if (is_const(g, a, 1) && same_type(&g->nodes[b], n)) return b;
    return i;
  case KILN_OP_ADD:
    if (is_const(g, b, 0) && same_type(x, n)) return a;
    if (is_const(g, a, 0) && same_type(&g->nodes[b], n)) return b;
    return i;
  case KILN_OP_SUB: return is_const(g, b, 0) && same_type(x, n) ? a : i;
  case KILN_OP_DIV: return is_const(g, b, 1) && same_type(x, n) ? a : i;
  case KILN_OP_POW: return n->attr.exponent == 1 ? a : i;
  case KILN_OP_NEG: return x->op == KILN_OP_NEG ? x->in[0] : i;
  case KILN_OP_RESHAPE:
  case KILN_OP_BROADCAST:
    if (same_type(x, n)) return a;
    // reshape(reshape(y)) = reshape(y): the inner one is skipped.
    if (n->op == KILN_OP_RESHAPE && x->op == KILN_OP_RESHAPE) n->in[0] = x->in[0];
    return same_type(&g->nodes[n->in[0]], n) ? n->in[0] : i;
  case KILN_OP_TRANSPOSE: {
    if (x->op == KILN_OP_TRANSPOSE) {  // out dim d = x's dim perm[d] = y's dim xperm[perm[d]]
      int64_t perm[KILN_MAX_RANK];
      for (int d = 0; d < n->rank; d++) perm[d] = x->attr.ints[n->attr.ints[d]];
      memcpy(n->attr.ints, perm, sizeof perm);
      n->in[0] = x->in[0];
    }
    for (int d = 0; d < n->rank; d++)
      if (n->attr.ints[d] != d) return i;
    return n->in[0];
  }
  case KILN_OP_SLICE: return same_type(x, n) ? a : i;
  case KILN_OP_CONCAT: {
    if (n->nin == 1) return a;
    int32_t src = x->op == KILN_OP_SLICE ? tiled(g, n) : -1;
    return src >= 0 ? src : i;
  }
  case KILN_OP_INPUT: case KILN_OP_PARAM: case KILN_OP_CONST: case KILN_OP_EXP:
  case KILN_OP_LOG: case KILN_OP_SQRT: case KILN_OP_RSQRT: case KILN_OP_RELU:
  case KILN_OP_SIGMOID: case KILN_OP_TANH: case KILN_OP_GELU: case KILN_OP_SILU:
  case KILN_OP_CLAMP: case KILN_OP_DROPOUT: case KILN_OP_WHERE: case KILN_OP_SUM:
  case KILN_OP_MEAN: case KILN_OP_MAX: case KILN_OP_SOFTMAX: case KILN_OP_LOG_SOFTMAX:
  case KILN_OP_LAYERNORM: case KILN_OP_MATMUL: case KILN_OP_EMBEDDING: case KILN_OP_LSTM:
  case KILN_OP_ATTENTION: case KILN_OP_CROSS_ENTROPY: case KILN_OP_MSE: case KILN_OP_BCE:
  case KILN_OP_GELU_GRAD: case KILN_OP_SILU_GRAD: case KILN_OP_CLAMP_GRAD:
  case KILN_OP_LAYERNORM_DX: case KILN_OP_LAYERNORM_DGAMMA: case KILN_OP_EMBEDDING_GRAD:
  case KILN_OP_LSTM_GRAD: case KILN_OP_ATTENTION_GRAD: case KILN_OP_CROSS_ENTROPY_GRAD:
  case KILN_OP_ATTENTION_DECODE: case KILN_OP_LSTM_STEP:
  case KILN_OP_COUNT:
    return i;
  }
  return i;
}

int kiln_pass_simplify(KilnGraph *g, FILE *err) {
  (void)err;
  int n = g->nnodes, changed = 0;
  int32_t *map = kiln_xmalloc((size_t)n * sizeof *map);
  bool *keep = kiln_xmalloc((size_t)n * sizeof *keep);
  bool *named = kiln_xcalloc((size_t)n, sizeof *named);
  // Outputs and the loss keep their nodes: their names are the program's interface.
  for (int i = 0; i < g->noutputs; i++) named[g->outputs[i]] = true;
  if (g->loss >= 0) named[g->loss] = true;
  for (int i = 0; i < n; i++) {
    KilnNode *node = &g->nodes[i];
    // Inputs first follow earlier replacements, so chains collapse in one sweep.
    for (int j = 0; j < node->nin; j++) node->in[j] = map[node->in[j]];
    int32_t r = simplify(g, i);  // may rewrite i in place, which is always allowed
    map[i] = named[i] ? i : r;
    keep[i] = true;
    changed += map[i] != i;
  }
  // Replaced nodes stay until dead-code elimination; uses move now.
  if (changed) kiln_graph_rewrite(g, map, keep);
  free(map);
  free(keep);
  free(named);
  return 0;
}
