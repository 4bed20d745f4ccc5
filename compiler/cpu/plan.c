// Storage for a compiled graph: parameters packed into the weights block, every
// other live value into the activation arena at 64-byte aligned offsets, plus
// scratch space for the kernels that keep state (lstm, attention). Each value has
// its own offset here; lifetime-based packing belongs to the memory planning pass.
#include <string.h>

#include "compiler/cpu/cpu.h"

#define ALIGN 64

static int64_t align_up(int64_t v) { return (v + ALIGN - 1) & ~(int64_t)(ALIGN - 1); }

// Marks every node the roots depend on.
static void mark_live(const KilnGraph *g, bool with_loss, bool *live) {
  for (int i = 0; i < g->noutputs; i++) live[g->outputs[i]] = true;
  if (with_loss && g->loss >= 0) live[g->loss] = true;
  for (int i = g->nnodes - 1; i >= 0; i--)
    if (live[i])
      for (int j = 0; j < g->nodes[i].nin; j++) live[g->nodes[i].in[j]] = true;
}

// Floats of scratch a kernel needs beyond its output.
static int64_t scratch_floats(const KilnNode *n) {
  if (n->op == KILN_OP_LSTM) return n->shape[0] * n->shape[2] * 6;  // h, c, 4H gates per row
  if (n->op == KILN_OP_ATTENTION) return n->shape[0] * n->attr.heads * n->shape[1];  // scores
  return 0;
}

void kiln_plan_build(const KilnGraph *g, KilnArena *a, bool with_loss, KilnPlan *p) {
  int n = g->nnodes;
  memset(p, 0, sizeof *p);
  p->where = kiln_arena_alloc(a, (size_t)n * sizeof *p->where);
  p->offset = kiln_arena_alloc(a, (size_t)n * sizeof *p->offset);
  p->scratch = kiln_arena_alloc(a, (size_t)n * sizeof *p->scratch);
  p->live = kiln_arena_alloc(a, (size_t)n * sizeof *p->live);
  mark_live(g, with_loss, p->live);
  for (int i = 0; i < n; i++) {
    const KilnNode *node = &g->nodes[i];
    int64_t bytes = align_up(kiln_node_numel(node) * 4);
    p->scratch[i] = -1;
    // Parameters always have storage: weights files hold all of them.
    if (node->op == KILN_OP_PARAM) {
      p->where[i] = KILN_LOC_WEIGHTS;
      p->offset[i] = p->weights_bytes;
      p->weights_bytes += bytes;
      continue;
    }
    if (!p->live[i] && node->op != KILN_OP_INPUT) continue;
    p->where[i] = KILN_LOC_ARENA;
    p->offset[i] = p->arena_bytes;
    p->arena_bytes += bytes;
    int64_t s = scratch_floats(node);
    if (s) {
      p->scratch[i] = p->arena_bytes;
      p->arena_bytes += align_up(s * 4);
    }
  }
  p->arena_naive_bytes = p->arena_bytes;
}
