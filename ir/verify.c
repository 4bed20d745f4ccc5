// Structural invariants of a graph. Every pass must leave them true; debug builds
// run this between passes, and `kiln check` runs it once on the lowered model.
#include <stdlib.h>
#include <string.h>

#include "ir/ir.h"

static int problem(FILE *f, const KilnNode *n, const char *what) {
  if (f) fprintf(f, "verify: node %%%s: %s\n", n->name, what);
  return 1;
}

static int by_name(const void *a, const void *b) {
  return strcmp((*(const KilnNode *const *)a)->name, (*(const KilnNode *const *)b)->name);
}

// Sorted, duplicates are neighbours: n log n for graphs of 100,000 nodes.
static int check_names(const KilnGraph *g, FILE *f) {
  const KilnNode **v = malloc((size_t)(g->nnodes ? g->nnodes : 1) * sizeof *v);
  if (!v) return problem(f, &g->nodes[0], "out of memory checking names");
  for (int i = 0; i < g->nnodes; i++) v[i] = &g->nodes[i];
  qsort(v, (size_t)g->nnodes, sizeof *v, by_name);
  int bad = 0;
  for (int i = 1; i < g->nnodes; i++)
    if (strcmp(v[i]->name, v[i - 1]->name) == 0) bad += problem(f, v[i], "name is not unique");
  free(v);
  return bad;
}

static int check_node(const KilnGraph *g, int id, FILE *f) {
  const KilnNode *n = &g->nodes[id];
  const KilnOpInfo *info = kiln_op(n->op);
  int bad = 0;
  if ((unsigned)n->op >= KILN_OP_COUNT) return problem(f, n, "unknown op");
  if (n->nin < info->min_in || (info->max_in >= 0 && n->nin > info->max_in))
    bad += problem(f, n, "wrong number of inputs");
  for (int i = 0; i < n->nin; i++)
    if (n->in[i] < 0 || n->in[i] >= id) bad += problem(f, n, "input is not an earlier node");
  if (n->rank < 0 || n->rank > KILN_MAX_RANK) return bad + problem(f, n, "rank out of range");
  if (kiln_numel(n->shape, n->rank) < 0) bad += problem(f, n, "bad shape");
  if (bad || info->fuse == KILN_FUSE_SOURCE) return bad;
  // The shape rule must reproduce the recorded type and shape.
  KilnNode copy = *n;
  char err[256];
  if (info->shape(g, &copy, err, sizeof err) != 0) return problem(f, n, err);
  if (copy.dtype != n->dtype || copy.rank != n->rank ||
      memcmp(copy.shape, n->shape, sizeof(int64_t) * (size_t)n->rank) != 0)
    bad += problem(f, n, "recorded shape differs from its shape rule");
  return bad;
}

int kiln_graph_verify(const KilnGraph *g, FILE *f) {
  int bad = check_names(g, f);
  for (int i = 0; i < g->nnodes; i++) bad += check_node(g, i, f);
  for (int i = 0; i < g->noutputs; i++)
    if (g->outputs[i] < 0 || g->outputs[i] >= g->nnodes) {
      if (f) fprintf(f, "verify: output %d out of range\n", i);
      bad++;
    }
  if (g->loss >= g->nnodes) {
    if (f) fprintf(f, "verify: loss out of range\n");
    bad++;
  } else if (g->loss >= 0) {
    const KilnNode *l = &g->nodes[g->loss];
    if (l->rank != 0 || l->dtype != KILN_F32) bad += problem(f, l, "loss is not an f32 scalar");
  }
  return bad;
}
