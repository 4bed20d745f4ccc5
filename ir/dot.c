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

static void dot_node(const KilnGraph *g, int i, FILE *f, const char *indent) {
  char shape[160];
  const KilnNode *n = &g->nodes[i];
  fprintf(f, "%sn%d [label=\"%s\\n%s\\n%s\",%s];\n", indent, i, n->name, kiln_op(n->op)->name,
          kiln_shape_str(n, shape, sizeof shape), node_style(g, i));
}

// After fusion each kernel with fused nodes is a cluster: its root and the nodes
// computed inside it.
void kiln_graph_dot(const KilnGraph *g, FILE *f) {
  fprintf(f, "digraph \"%s\" {\n  rankdir=TB;\n  node [fontname=\"Helvetica\",fontsize=10];\n",
          g->name);
  const int32_t *into = g->fused_into;
  for (int i = 0; i < g->nnodes; i++) {
    if (into && into[i] >= 0) continue;
    bool group = false;
    for (int j = 0; into && j < i && !group; j++) group = into[j] == i;
    if (!group) {
      dot_node(g, i, f, "  ");
      continue;
    }
    fprintf(f, "  subgraph cluster_%d {\n    label=\"kernel %s\";\n    style=rounded;\n", i,
            g->nodes[i].name);
    for (int j = 0; j < i; j++)
      if (into[j] == i) dot_node(g, j, f, "    ");
    dot_node(g, i, f, "    ");
    fputs("  }\n", f);
  }
  for (int i = 0; i < g->nnodes; i++)
    for (int j = 0; j < g->nodes[i].nin; j++) fprintf(f, "  n%d -> n%d;\n", g->nodes[i].in[j], i);
  fputs("}\n", f);
}
