// Graph construction and queries. Nodes are appended in topological order: a node's
// inputs are always earlier nodes, so every walk in index order is a valid schedule.
#include <stdlib.h>
#include <string.h>

#include "ir/ir.h"

void kiln_graph_init(KilnGraph *g, KilnArena *a, const char *name) {
  memset(g, 0, sizeof(*g));
  g->arena = a;
  g->name = kiln_arena_strdup(a, name);
  g->loss = -1;
}

static void grow(KilnGraph *g) {
  int cap = g->cap ? 2 * g->cap : 64;
  KilnNode *nodes = kiln_arena_alloc(g->arena, (size_t)cap * sizeof(*nodes));
  if (g->nnodes) memcpy(nodes, g->nodes, (size_t)g->nnodes * sizeof(*nodes));
  g->nodes = nodes;  // the old array stays in the arena until the phase ends
  g->cap = cap;
}

int32_t kiln_graph_add(KilnGraph *g, KilnOp op, const int32_t *in, int nin, const char *name,
                       KilnLoc loc) {
  KILN_ASSERT(nin >= 0 && nin <= KILN_MAX_INPUTS);
  if (g->nnodes == g->cap) grow(g);
  int32_t id = g->nnodes++;
  KilnNode *n = &g->nodes[id];
  memset(n, 0, sizeof(*n));
  n->op = op;
  n->nin = nin;
  for (int i = 0; i < nin; i++) {
    KILN_ASSERT(in[i] >= 0 && in[i] < id);
    n->in[i] = in[i];
  }
  n->name = kiln_arena_strdup(g->arena, name);
  n->loc = loc;
  if (loc.file) n->loc.file = kiln_arena_strdup(g->arena, loc.file);
  return id;
}

int kiln_graph_infer(KilnGraph *g, int32_t id, char *err, size_t errlen) {
  KILN_ASSERT(id >= 0 && id < g->nnodes);
  KilnNode *n = &g->nodes[id];
  const KilnOpInfo *info = kiln_op(n->op);
  if (n->nin < info->min_in || (info->max_in >= 0 && n->nin > info->max_in)) {
    if (info->min_in == info->max_in)
      snprintf(err, errlen, "'%s' takes %d input%s, got %d", info->name, info->min_in,
               info->min_in == 1 ? "" : "s", n->nin);
    else if (info->max_in < 0)
      snprintf(err, errlen, "'%s' takes at least %d input%s, got %d", info->name, info->min_in,
               info->min_in == 1 ? "" : "s", n->nin);
    else
      snprintf(err, errlen, "'%s' takes %d to %d inputs, got %d", info->name, info->min_in,
               info->max_in, n->nin);
    return -1;
  }
  return info->shape(g, n, err, errlen);
}

int32_t kiln_graph_find(const KilnGraph *g, const char *name) {
  for (int32_t i = 0; i < g->nnodes; i++)
    if (strcmp(g->nodes[i].name, name) == 0) return i;
  return -1;
}

void kiln_graph_add_output(KilnGraph *g, int32_t id) {
  int32_t *outs = kiln_arena_alloc(g->arena, (size_t)(g->noutputs + 1) * sizeof(*outs));
  if (g->noutputs) memcpy(outs, g->outputs, (size_t)g->noutputs * sizeof(*outs));
  outs[g->noutputs++] = id;
  g->outputs = outs;
}

int64_t kiln_node_numel(const KilnNode *n) {
  int64_t e = 1;
  for (int i = 0; i < n->rank; i++) e *= n->shape[i];
  return e;
}

char *kiln_shape_str(const KilnNode *n, char *buf, size_t len) {
  char dims[128];
  snprintf(buf, len, "%s%s", kiln_dtype_name(n->dtype), kiln_dims_str(n->shape, n->rank, dims, sizeof dims));
  return buf;
}

int64_t kiln_graph_param_count(const KilnGraph *g) {
  int64_t total = 0;
  for (int i = 0; i < g->nnodes; i++)
    if (g->nodes[i].op == KILN_OP_PARAM) total += kiln_node_numel(&g->nodes[i]);
  return total;
}

int64_t kiln_graph_flops(const KilnGraph *g) {
  int64_t total = 0;
  for (int i = 0; i < g->nnodes; i++) total += kiln_op(g->nodes[i].op)->flops(g, &g->nodes[i]);
  return total;
}

static int32_t renumber(const int32_t *index, const int32_t *final, int32_t id) {
  KILN_ASSERT(index[final[id]] >= 0);  // a removed node is still in use
  return index[final[id]];
}

// Applies replacements and removes nodes, renumbering what stays in order.
// map[i] names the node that takes i's place (i itself when none; always an
// earlier node, so chains resolve in one sweep). Every node a kept node, an output,
// the loss or a gradient refers to (after replacement) must be kept.
void kiln_graph_rewrite(KilnGraph *g, const int32_t *map, const bool *keep) {
  int n = g->nnodes;
  int32_t *final = kiln_xmalloc((size_t)n * sizeof *final);
  int32_t *index = kiln_xmalloc((size_t)n * sizeof *index);
  int kept = 0, kept_forward = 0;
  for (int i = 0; i < n; i++) {
    KILN_ASSERT(map[i] >= 0 && map[i] <= i);
    final[i] = map[i] == i ? i : final[map[i]];
    index[i] = keep[i] ? kept++ : -1;
    if (keep[i] && i < g->nforward) kept_forward++;
  }
#define NEW(id) renumber(index, final, id)
  int32_t *grads = NULL;
  if (g->grads) {
    grads = kiln_arena_alloc(g->arena, (size_t)(kept ? kept : 1) * sizeof *grads);
    for (int i = 0; i < kept; i++) grads[i] = -1;
    for (int i = 0; i < g->nforward; i++)
      if (g->grads[i] >= 0 && keep[i]) grads[index[i]] = NEW(g->grads[i]);
  }
  for (int i = 0; i < g->noutputs; i++) g->outputs[i] = NEW(g->outputs[i]);
  if (g->loss >= 0) g->loss = NEW(g->loss);
  for (int i = 0; i < n; i++) {
    if (!keep[i]) continue;
    KilnNode node = g->nodes[i];
    for (int j = 0; j < node.nin; j++) node.in[j] = NEW(node.in[j]);
    g->nodes[index[i]] = node;
  }
#undef NEW
  g->nnodes = kept;
  if (g->grads) {
    g->grads = grads;
    g->nforward = kept_forward;
  } else {
    g->nforward = kept;
  }
  free(final);
  free(index);
}

// A node fused into another's kernel is also stored when a node outside its
// group reads it (passes/fuse.c lets a matmul epilogue write such values).
bool kiln_graph_fused_stored(const KilnGraph *g, int32_t id) {
  if (!g->fused_into || g->fused_into[id] < 0) return false;
  int32_t root = g->fused_into[id];
  for (int32_t x = id + 1; x < g->nnodes; x++) {
    if (x == root || g->fused_into[x] == root) continue;
    for (int j = 0; j < g->nodes[x].nin; j++)
      if (g->nodes[x].in[j] == id) return true;
  }
  return false;
}
