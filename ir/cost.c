// What one kernel does, in the user's terms, for the profiler: the node it stores,
// the ops it computes (a fusion group: passes/fuse.c), the YAML line it comes
// from, and its work counted from the shapes: FLOPs by the op table's rules, and
// bytes as the compulsory traffic, every buffer it reads from outside the group
// plus the ones it writes, each once.
#include <string.h>

#include "ir/ir.h"

static bool member(const KilnGraph *g, int32_t root, int32_t i) {
  return i == root || (g->fused_into && g->fused_into[i] == root);
}

// A view (reshape) is its source's bytes: reads through both count once.
static int32_t storage(const KilnGraph *g, int32_t i) {
  while (kiln_op_has(g->nodes[i].op, KILN_OPF_VIEW)) i = g->nodes[i].in[0];
  return i;
}

static int64_t bytes_of(const KilnNode *n) { return kiln_node_numel(n) * 4; }

// Bytes node m reads of its input j. An injective op reads one input element per
// output element, so it reads no more than its output's size of any input (a
// slice, an embedding's table rows).
static int64_t read_bytes(const KilnGraph *g, const KilnNode *m, int j) {
  int64_t b = bytes_of(&g->nodes[m->in[j]]);
  if (kiln_op(m->op)->fuse == KILN_FUSE_INJECTIVE && bytes_of(m) < b) b = bytes_of(m);
  return b;
}

// Whether an earlier read of the group (node i's input j comes later) is of s.
static bool read_before(const KilnGraph *g, int32_t root, int32_t i, int j, int32_t s) {
  for (int32_t k = 0; k <= i; k++) {
    if (!member(g, root, k)) continue;
    const KilnNode *m = &g->nodes[k];
    for (int q = 0; q < (k == i ? j : m->nin); q++)
      if (!member(g, root, m->in[q]) && storage(g, m->in[q]) == s) return true;
  }
  return false;
}

static int64_t input_bytes(const KilnGraph *g, int32_t root) {
  int64_t total = 0;
  for (int32_t i = 0; i <= root; i++) {
    if (!member(g, root, i)) continue;
    const KilnNode *m = &g->nodes[i];
    for (int j = 0; j < m->nin; j++)
      if (!member(g, root, m->in[j]) && !read_before(g, root, i, j, storage(g, m->in[j])))
        total += read_bytes(g, m, j);
  }
  return total;
}

static const char *base_name(const char *path) {
  const char *s = strrchr(path, '/');
  return s ? s + 1 : path;
}

void kiln_kernel_cost(const KilnGraph *g, int32_t root, KilnKernelCost *out) {
  const KilnNode *r = &g->nodes[root];
  char ops[512];
  size_t at = 0;
  int64_t flops = 0;
  ops[0] = 0;
  for (int32_t i = 0; i <= root; i++) {
    if (!member(g, root, i)) continue;
    const KilnNode *m = &g->nodes[i];
    int64_t f = kiln_op(m->op)->flops(g, m);
    flops = flops > INT64_MAX - f ? INT64_MAX : flops + f;
    if (at < sizeof ops)
      at += (size_t)snprintf(ops + at, sizeof ops - at, "%s%s", at ? "+" : "", kiln_op(m->op)->name);
  }
  out->name = r->name;
  out->ops = kiln_arena_strdup(g->arena, ops);
  out->loc = r->loc.file ? kiln_arena_printf(g->arena, "%s:%d:%d", base_name(r->loc.file),
                                             r->loc.line, r->loc.col)
                         : "";
  out->flops = flops;
  out->bytes = input_bytes(g, root) + bytes_of(r);
  for (int32_t i = 0; i < root; i++)  // values the group stores besides its root's
    if (member(g, root, i) && kiln_graph_fused_stored(g, i)) out->bytes += bytes_of(&g->nodes[i]);
}
