// Constant folding: an elementwise op whose inputs are all scalar constants
// becomes a constant, computed with the op table's scalar semantics (the same
// definition the interpreter uses). Its inputs are left to dead-code elimination.
#include "passes/passes.h"

int kiln_pass_fold(KilnGraph *g, FILE *err) {
  (void)err;
  for (int i = 0; i < g->nnodes; i++) {
    KilnNode *n = &g->nodes[i];
    const KilnOpInfo *info = kiln_op(n->op);
    if (!info->scalar || n->rank != 0 || n->dtype != KILN_F32 || n->nin == 0) continue;
    double x[KILN_MAX_INPUTS];
    bool all_const = true;
    for (int j = 0; j < n->nin && all_const; j++) {
      const KilnNode *in = &g->nodes[n->in[j]];
      all_const = in->op == KILN_OP_CONST && in->rank == 0;
      if (all_const) x[j] = in->attr.value;
    }
    if (!all_const) continue;
    double v = info->scalar(x, &n->attr);
    n->op = KILN_OP_CONST;
    n->nin = 0;
    n->attr = (KilnAttrs){.value = v};
  }
  return 0;
}
