// Storage for a compiled graph: parameters packed into the weights block (then
// their optimizer state), every other live value in the activation arena at the
// offset memory planning (passes/memplan.c) gives it, plus scratch space for the
// kernels that keep state (lstm, attention). The plan is made once, for the full
// step (training when the graph has gradients); memplan.c explains why the
// forward and eval steps, which run subsets of its kernels in the same order, may
// use it as well.
#include <string.h>

#include "compiler/cpu/cpu.h"
#include "include/kiln/abi.h"

#define ALIGN 64

static int64_t align_up(int64_t v) { return (v + ALIGN - 1) & ~(int64_t)(ALIGN - 1); }

// Marks every node the marked roots depend on.
static void close_live(const KilnGraph *g, bool *live) {
  for (int i = g->nnodes - 1; i >= 0; i--)
    if (live[i])
      for (int j = 0; j < g->nodes[i].nin; j++) live[g->nodes[i].in[j]] = true;
}

static void mark(const KilnGraph *g, KilnArena *a, bool outputs, bool loss, bool grads,
                 bool **out) {
  bool *live = *out = kiln_arena_alloc(a, (size_t)g->nnodes * sizeof(bool));
  for (int i = 0; outputs && i < g->noutputs; i++) live[g->outputs[i]] = true;
  if (loss && g->loss >= 0) live[g->loss] = true;
  for (int i = 0; grads && g->grads && i < g->nforward; i++)
    if (g->grads[i] >= 0) live[g->grads[i]] = true;
  close_live(g, live);
}

// Floats of scratch a kernel needs beyond its output.
static int64_t scratch_floats(const KilnGraph *g, const KilnNode *n) {
  if (n->op == KILN_OP_LSTM || n->op == KILN_OP_LSTM_GRAD)  // gates, states per step
    return kiln_cpu_lstm_scratch(g, n);
  if (n->op == KILN_OP_ATTENTION || n->op == KILN_OP_ATTENTION_GRAD)  // blocks of scores
    return kiln_cpu_attention_scratch(n);
  if (n->op == KILN_OP_ATTENTION_DECODE)  // scores against every cached position
    return n->shape[0] * n->attr.heads * g->nodes[n->in[3]].shape[1];
  if (n->op == KILN_OP_LSTM_STEP) return n->shape[0] * n->shape[2] * 4;  // 4H gates per row
  return 0;
}

void kiln_plan_build(const KilnGraph *g, KilnArena *a, int nstate, KilnPlan *p) {
  int n = g->nnodes;
  memset(p, 0, sizeof *p);
  p->where = kiln_arena_alloc(a, (size_t)n * sizeof *p->where);
  p->offset = kiln_arena_alloc(a, (size_t)n * sizeof *p->offset);
  p->state = kiln_arena_alloc(a, (size_t)n * sizeof *p->state);
  bool training = g->grads != NULL;
  p->nstate = training ? nstate : 0;
  mark(g, a, true, false, false, &p->live_fwd);
  mark(g, a, false, true, false, &p->live_eval);
  mark(g, a, true, true, training, &p->live);
  // The step header comes first in the arena, outside the plan.
  KilnMemReq r;
  kiln_memplan_request(g, a, KILN_ABI_HEADER_BYTES, &r);
  int64_t *scratch = kiln_arena_alloc(a, (size_t)n * sizeof *scratch);
  for (int i = 0; i < n; i++) {
    // Computed in another kernel, and read only there.
    bool fused = g->fused_into && g->fused_into[i] >= 0 && !kiln_graph_fused_stored(g, i);
    KILN_ASSERT(r.store[i] == ((p->live[i] || g->nodes[i].op == KILN_OP_INPUT) &&
                               g->nodes[i].op != KILN_OP_PARAM && !fused));
    scratch[i] = align_up(scratch_floats(g, &g->nodes[i]) * 4);
  }
  r.scratch = scratch;
  int32_t *from = kiln_arena_alloc(a, (size_t)n * sizeof *from);
  for (int i = 0; i < n; i++) {
    from[i] = kiln_cpu_lstm_kept_for(g, i);  // the lstm keeps its forward there
    KILN_ASSERT(from[i] < 0 || p->live[from[i]]);
  }
  r.scratch_from = from;
  kiln_memplan(g, &r, a, &p->mem);
  p->scratch = p->mem.scratch;
  p->scratch_bytes = scratch;
  p->alias = p->mem.alias;
  p->arena_bytes = p->mem.peak;
  p->arena_naive_bytes = p->mem.naive;
  for (int i = 0; i < n; i++) {
    const KilnNode *node = &g->nodes[i];
    p->state[i] = -1;
    // Parameters always have storage: weights files hold all of them.
    if (node->op == KILN_OP_PARAM) {
      p->where[i] = KILN_LOC_WEIGHTS;
      p->offset[i] = p->weights_bytes;
      p->weights_bytes += align_up(kiln_node_numel(node) * 4);
    } else if (r.store[i]) {
      p->where[i] = KILN_LOC_ARENA;
      p->offset[i] = p->mem.offset[i];
    }
  }
  // Optimizer state follows the parameters: nstate tensors of each one's shape.
  int64_t at = p->weights_bytes;
  for (int i = 0; i < n && p->nstate; i++) {
    if (g->nodes[i].op != KILN_OP_PARAM) continue;
    p->state[i] = at;
    at += align_up(kiln_node_numel(&g->nodes[i]) * 4) * p->nstate;
  }
  p->opt_bytes = at - p->weights_bytes;
}
