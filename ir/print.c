// The IR's text form, one node per line:
//
//   %h: f32[10,16] = sigmoid %h.bias_add                       @ 9:5
//
// Attributes print when required or different from the schema's default, so the
// text stays short and stable; golden tests compare it.
#include <math.h>
#include <string.h>

#include "ir/ir.h"

static void print_g(FILE *f, double v) {
  if (isinf(v)) fputs(v < 0 ? "-inf" : "inf", f);
  else fprintf(f, "%.9g", v);
}

static void print_ints(FILE *f, const int64_t *v, int n) {
  fputc('[', f);
  for (int i = 0; i < n; i++) fprintf(f, "%s%lld", i ? "," : "", (long long)v[i]);
  fputc(']', f);
}

static void print_attr(FILE *f, const KilnAttrs *a, const KilnAttrSpec *s) {
  const char *p = (const char *)a + s->offset;
  switch (s->type) {
  case KILN_ATTR_INT: {
    int64_t v;
    memcpy(&v, p, sizeof v);
    if (!s->required && (double)v == s->dflt) return;
    fprintf(f, " %s=%lld", s->name, (long long)v);
    return;
  }
  case KILN_ATTR_FLOAT: {
    double v;
    memcpy(&v, p, sizeof v);
    if (!s->required && v == s->dflt) return;
    fprintf(f, " %s=", s->name);
    print_g(f, v);
    return;
  }
  case KILN_ATTR_BOOL: {
    bool v;
    memcpy(&v, p, sizeof v);
    if (!s->required && v == (s->dflt != 0)) return;
    fprintf(f, " %s=%s", s->name, v ? "true" : "false");
    return;
  }
  case KILN_ATTR_INTS:
    if (!a->nints) return;
    fprintf(f, " %s=", s->name);
    print_ints(f, a->ints, a->nints);
    return;
  }
}

static void print_init(FILE *f, const KilnInit *in) {
  fprintf(f, " init=%s", kiln_init_name(in->kind));
  switch (in->kind) {
  case KILN_INIT_NORMAL:
    fputs("(std=", f);
    print_g(f, in->a);
    fputs(",mean=", f);
    print_g(f, in->b);
    fputc(')', f);
    break;
  case KILN_INIT_UNIFORM:
    fputs("(low=", f);
    print_g(f, in->a);
    fputs(",high=", f);
    print_g(f, in->b);
    fputc(')', f);
    break;
  case KILN_INIT_ZEROS:
  case KILN_INIT_ONES:
  case KILN_INIT_XAVIER:
  case KILN_INIT_KAIMING:
    break;
  }
}

static void print_node(const KilnGraph *g, const KilnNode *n, FILE *f) {
  char shape[160];
  const KilnOpInfo *info = kiln_op(n->op);
  fprintf(f, "  %%%s: %s = %s", n->name, kiln_shape_str(n, shape, sizeof shape), info->name);
  for (int i = 0; i < n->nin; i++)
    fprintf(f, "%s%%%s", i ? ", " : " ", g->nodes[n->in[i]].name);
  for (const KilnAttrSpec *s = info->attrs; s && s->name; s++) print_attr(f, &n->attr, s);
  if (n->op == KILN_OP_PARAM) print_init(f, &n->attr.init);
  if (n->op == KILN_OP_CONST) {
    fputs(" value=", f);
    print_g(f, n->attr.value);
  }
  if (n->loc.line) fprintf(f, "  @ %d:%d", n->loc.line, n->loc.col);
  int32_t id = (int32_t)(n - g->nodes);
  if (g->fused_into && g->fused_into[id] >= 0)
    fprintf(f, "  ; fused into %%%s%s", g->nodes[g->fused_into[id]].name,
            kiln_graph_fused_stored(g, id) ? ", stored" : "");
  fputc('\n', f);
}

void kiln_graph_print(const KilnGraph *g, FILE *f) {
  fprintf(f, "graph %s {\n", g->name);
  for (int i = 0; i < g->nnodes; i++) print_node(g, &g->nodes[i], f);
  fputs("  outputs:", f);
  for (int i = 0; i < g->noutputs; i++) fprintf(f, " %%%s", g->nodes[g->outputs[i]].name);
  fputc('\n', f);
  if (g->loss >= 0) fprintf(f, "  loss: %%%s\n", g->nodes[g->loss].name);
  for (int i = 0; g->grads && i < g->nforward; i++)
    if (g->grads[i] >= 0)
      fprintf(f, "  grad %%%s: %%%s\n", g->nodes[i].name, g->nodes[g->grads[i]].name);
  fputs("}\n", f);
}
