// Shape inference over a whole graph: every node's shape rule, in topological
// order, so a pass that rewires nodes only has to rerun this to refresh types.
#include "passes/passes.h"

int kiln_pass_shapes(KilnGraph *g, FILE *f) {
  int bad = 0;
  char err[256];
  for (int32_t i = 0; i < g->nnodes; i++) {
    if (kiln_op(g->nodes[i].op)->fuse == KILN_FUSE_SOURCE) continue;
    if (kiln_graph_infer(g, i, err, sizeof err) != 0) {
      if (f) fprintf(f, "%%%s: %s\n", g->nodes[i].name, err);
      bad++;
    }
  }
  return bad;
}
