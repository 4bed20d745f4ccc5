// Fusion, driven by the op table's fusion kinds: a value used once, by one kernel,
// is computed inside that kernel instead of going through memory.
//   - elementwise and broadcast producers of the same shape join their consumer's
//     elementwise chain (one loop, no intermediate buffers);
//   - elementwise producers are absorbed into reductions (softmax, layernorm,
//     sums) and losses, which read them as they go;
//   - a matmul (flag EPILOGUE) whose consumer starts an elementwise chain of its
//     shape runs that chain as its epilogue, on the output rows while they are in
//     cache (bias, activation, residual add, scaling).
// An epilogue may also store values it computes: the matmul's output, or the
// elementwise node the matmul feeds (a dense layer's pre-activation, which the
// backward pass reads for the activation's gradient), joins its consumer's chain
// though other nodes read it too, provided they all come after the group's root.
// The kernel writes that value as well as the root's, on the same rows, so the
// activation is not a kernel of its own in training.
// Outputs, the loss and gradients are never fused away: they must be stored. The
// result is g->fused_into; backends build one kernel per group root.
#include <stdlib.h>
#include <string.h>

#include "passes/passes.h"

static bool same_shape(const KilnNode *a, const KilnNode *b) {
  return a->rank == b->rank && !memcmp(a->shape, b->shape, sizeof(int64_t) * (size_t)a->rank);
}

static bool elementwise(const KilnNode *n) {
  KilnFuseKind k = kiln_op(n->op)->fuse;
  return (k == KILN_FUSE_ELEMWISE || k == KILN_FUSE_BROADCAST) && kiln_op(n->op)->scalar &&
         n->dtype == KILN_F32;
}

// Consumers whose kernels read their inputs through fused producers.
static bool absorbs(const KilnNode *n) {
  return kiln_op(n->op)->fuse == KILN_FUSE_REDUCE || kiln_op_has(n->op, KILN_OPF_LOSS);
}

typedef struct {
  const KilnGraph *g;
  int32_t *into;
  const int *uses;
  const bool *pinned;
  bool *has_mm;  // per root: its group holds a matmul
} Fuse;

// Whether matmul p may run the chain of root, whose node c reads it.
static bool epilogue_of(const Fuse *f, int32_t p, const KilnNode *c, int32_t root) {
  const KilnNode *pn = &f->g->nodes[p];
  return kiln_op_has(pn->op, KILN_OPF_EPILOGUE) && !f->pinned[p] && f->into[p] < 0 &&
         same_shape(pn, c) && !f->has_mm[root];
}

// Whether every reader of p other than c comes after root: the group's kernel
// stores p before they run.
static bool read_later(const KilnGraph *g, int32_t p, int32_t c, int32_t root) {
  for (int32_t x = p + 1; x <= root; x++)
    for (int j = 0; x != c && j < g->nodes[x].nin; j++)
      if (g->nodes[x].in[j] == p) return false;
  return true;
}

// Whether p, read by c of root's elementwise chain and by later nodes as well, may
// join the chain as a stored value: a matmul, or the elementwise node a matmul
// used only here feeds (the matmul then joins as the epilogue's start).
static bool stored_member(const Fuse *f, int32_t p, int32_t ci, int32_t root) {
  const KilnNode *pn = &f->g->nodes[p], *c = &f->g->nodes[ci];
  if (f->uses[p] < 2 || f->pinned[p] || f->into[p] >= 0 || !read_later(f->g, p, ci, root))
    return false;
  if (epilogue_of(f, p, c, root)) return true;
  if (!elementwise(pn) || !same_shape(pn, c)) return false;
  for (int j = 0; j < pn->nin; j++) {
    int32_t q = pn->in[j];
    if (f->uses[q] == 1 && epilogue_of(f, q, pn, root)) return true;
  }
  return false;
}

int kiln_pass_fuse(KilnGraph *g, FILE *err) {
  (void)err;
  int n = g->nnodes;
  int32_t *into = kiln_arena_alloc(g->arena, (size_t)(n ? n : 1) * sizeof *into);
  int *uses = kiln_xcalloc((size_t)n, sizeof *uses);
  bool *pinned = kiln_xcalloc((size_t)n, sizeof *pinned), *has_mm = kiln_xcalloc((size_t)n, 1);
  Fuse f = {g, into, uses, pinned, has_mm};
  for (int i = 0; i < n; i++) {
    into[i] = -1;
    for (int j = 0; j < g->nodes[i].nin; j++) uses[g->nodes[i].in[j]]++;
  }
  for (int i = 0; i < g->noutputs; i++) pinned[g->outputs[i]] = true;
  if (g->loss >= 0) pinned[g->loss] = true;
  for (int i = 0; g->grads && i < g->nforward; i++)
    if (g->grads[i] >= 0) pinned[g->grads[i]] = true;
  // Consumers before producers: a node's group is known when its inputs are seen.
  for (int c = n - 1; c >= 0; c--) {
    const KilnNode *cn = &g->nodes[c];
    int32_t root = into[c] >= 0 ? into[c] : c;
    const KilnNode *rn = &g->nodes[root];
    bool chain = elementwise(cn) && elementwise(rn);        // c is in an elementwise chain
    bool reduction_top = c == root && absorbs(cn);          // c reads fused inputs
    bool in_reduction = into[c] >= 0 && absorbs(rn) && elementwise(cn);
    for (int j = 0; j < cn->nin; j++) {
      int32_t p = cn->in[j];
      const KilnNode *pn = &g->nodes[p];
      if (chain && stored_member(&f, p, c, root)) {
        into[p] = root;
        has_mm[root] |= kiln_op_has(pn->op, KILN_OPF_EPILOGUE);
        continue;
      }
      if (uses[p] != 1 || pinned[p] || into[p] >= 0) continue;
      if (elementwise(pn) && ((chain && same_shape(pn, cn)) || reduction_top ||
                              (in_reduction && same_shape(pn, cn))))
        into[p] = root;
      else if (chain && epilogue_of(&f, p, cn, root))
        into[p] = root, has_mm[root] = true;
    }
  }
  g->fused_into = into;
  free(uses);
  free(pinned);
  free(has_mm);
  return 0;
}
