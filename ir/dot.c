// Graphviz view of a graph: sources as ellipses, computations as boxes labelled
// with the op and shape, outputs and the loss doubly outlined.
#include "ir/ir.h"

static const char *node_style(const KilnGraph *g, int id) {
  const KilnNode *n = &g->nodes[id];
  if (id == g->loss) return "shape=box,peripheries=2,style=filled,fillcolor=\"#f4cccc\"";
  for (int i = 0; i < g->noutputs; i++)
    if (g->outputs[i] == id) return "shape=box,peripheries=2,style=filled,fillcolor=\"#d9ead3\"";
  if (kiln_op(n->op)->fuse != KILN_FUSE_SOURCE) return "shape=box";
  return n->op == KILN_OP_PARAM ? "shape=ellipse,style=filled,fillcolor=\"#fff2cc\""
                                : "shape=ellipse,style=filled,fillcolor=\"#cfe2f3\"";
}

void kiln_graph_dot(const KilnGraph *g, FILE *f) {
  char shape[160];
  fprintf(f, "digraph \"%s\" {\n  rankdir=TB;\n  node [fontname=\"Helvetica\",fontsize=10];\n",
          g->name);
  for (int i = 0; i < g->nnodes; i++) {
    const KilnNode *n = &g->nodes[i];
    fprintf(f, "  n%d [label=\"%s\\n%s\\n%s\",%s];\n", i, n->name, kiln_op(n->op)->name,
            kiln_shape_str(n, shape, sizeof shape), node_style(g, i));
    for (int j = 0; j < n->nin; j++) fprintf(f, "  n%d -> n%d;\n", n->in[j], i);
  }
  fputs("}\n", f);
}
