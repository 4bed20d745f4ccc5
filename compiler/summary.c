// The summary `kiln check` prints: every value with its op and shape, the parameter
// count and the FLOPs of one forward pass, and the training set-up.
#include <string.h>

#include "compiler/compiler.h"

static const char *human(double v, char *buf, size_t len, const char *unit) {
  static const char *const prefix[] = {"", "K", "M", "G", "T", "P"};
  int i = 0;
  while (v >= 1000 && i < 5) v /= 1000, i++;
  snprintf(buf, len, i ? "%.2f %s%s" : "%.0f %s%s", v, prefix[i], unit);
  return buf;
}

static void print_values(const KilnGraph *g, FILE *f) {
  int width = 4;
  for (int i = 0; i < g->nnodes; i++) {
    int w = (int)strlen(g->nodes[i].name);
    if (g->nodes[i].op != KILN_OP_CONST && w > width) width = w;
  }
  if (width > 48) width = 48;
  fprintf(f, "  %-*s  %-20s  %-14s  %s\n", width, "name", "shape", "op", "params");
  for (int i = 0; i < g->nnodes; i++) {
    const KilnNode *n = &g->nodes[i];
    if (n->op == KILN_OP_CONST) continue;
    char shape[160];
    fprintf(f, "  %-*s  %-20s  %-14s", width, n->name, kiln_shape_str(n, shape, sizeof shape),
            kiln_op(n->op)->name);
    if (n->op == KILN_OP_PARAM) fprintf(f, "  %lld", (long long)kiln_node_numel(n));
    fputc('\n', f);
  }
}

static void print_train(const KilnTrainCfg *t, FILE *f) {
  static const char *const opt[] = {"sgd", "adam", "adamw"};
  static const char *const sched[] = {"constant", "step", "cosine"};
  fprintf(f, "train: %s lr=%g", opt[t->opt], t->lr);
  if (t->opt == KILN_OPT_SGD && t->momentum) fprintf(f, " momentum=%g%s", t->momentum,
                                                     t->nesterov ? " nesterov" : "");
  if (t->weight_decay) fprintf(f, " weight_decay=%g", t->weight_decay);
  fprintf(f, ", schedule %s", sched[t->sched]);
  if (t->steps) fprintf(f, ", %lld steps", (long long)t->steps);
  else fprintf(f, ", %lld epochs", (long long)t->epochs);
  if (t->clip_grad_norm) fprintf(f, ", clip %g", t->clip_grad_norm);
  fprintf(f, ", seed %llu\n", (unsigned long long)t->seed);
}

void kiln_model_summary(const KilnModel *m, FILE *f) {
  const KilnGraph *g = &m->graph;
  fprintf(f, "model %s (%s)\n", m->name, m->path);
  if (m->dims.ndims) {
    fputs("dims:", f);
    for (int i = 0; i < m->dims.ndims; i++)
      fprintf(f, " %s=%lld%s", m->dims.dims[i].name, (long long)m->dims.dims[i].value,
              m->dims.dims[i].overridden ? "*" : "");
    fputc('\n', f);
  }
  print_values(g, f);
  fputs("outputs:", f);
  for (int i = 0; i < g->noutputs; i++) fprintf(f, " %s", g->nodes[g->outputs[i]].name);
  fputc('\n', f);
  if (g->loss >= 0)
    fprintf(f, "loss: %s\n", kiln_op(g->nodes[g->loss].op)->name);
  if (m->train.present) print_train(&m->train, f);
  char a[32], b[32];
  int64_t params = kiln_graph_param_count(g);
  fprintf(f, "parameters: %lld (%s)\n", (long long)params, human((double)params * 4, a, sizeof a, "B"));
  fprintf(f, "forward: %s per pass, %d nodes\n",
          human((double)kiln_graph_flops(g), b, sizeof b, "FLOP"), g->nnodes);
}
