// Dead-code elimination: removes every node no root depends on. Roots are the
// outputs, the loss, the gradients, and every input and parameter (they are part
// of the program's interface: weights files and data name them all).
#include <stdlib.h>

#include "passes/passes.h"

int kiln_pass_dce(KilnGraph *g, FILE *err) {
  (void)err;
  int n = g->nnodes;
  bool *keep = kiln_xcalloc((size_t)n, sizeof *keep);
  int32_t *map = kiln_xmalloc((size_t)n * sizeof *map);
  for (int i = 0; i < g->noutputs; i++) keep[g->outputs[i]] = true;
  if (g->loss >= 0) keep[g->loss] = true;
  for (int i = 0; g->grads && i < g->nforward; i++)
    if (g->grads[i] >= 0) keep[g->grads[i]] = true;
  for (int i = n - 1; i >= 0; i--) {
    map[i] = i;
    KilnOp op = g->nodes[i].op;
    if (op == KILN_OP_INPUT || op == KILN_OP_PARAM) keep[i] = true;
    if (keep[i])
      for (int j = 0; j < g->nodes[i].nin; j++) keep[g->nodes[i].in[j]] = true;
  }
  kiln_graph_rewrite(g, map, keep);
  free(keep);
  free(map);
  return 0;
}
