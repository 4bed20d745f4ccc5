// Common-subexpression elimination: two nodes with the same op, the same inputs
// and the same attributes compute the same value, so the later one is replaced by
// the earlier (dead-code elimination then removes it). Constants merge by value.
// Inputs and parameters are never merged: each is its own value.
#include <stdlib.h>
#include <string.h>

#include "passes/passes.h"

static bool same_attrs(const KilnAttrs *a, const KilnAttrs *b) {
  return a->nints == b->nints && !memcmp(a->ints, b->ints, sizeof(int64_t) * (size_t)a->nints) &&
         a->axis == b->axis && a->start == b->start && a->end == b->end && a->heads == b->heads &&
         a->exponent == b->exponent && a->lo == b->lo && a->hi == b->hi && a->p == b->p &&
         a->eps == b->eps && a->value == b->value && a->key == b->key && a->size == b->size &&
         a->keepdims == b->keepdims && a->causal == b->causal && a->trans_a == b->trans_a &&
         a->trans_b == b->trans_b;
}

static bool same(const KilnNode *a, const KilnNode *b, const int32_t *map) {
  if (a->op != b->op || a->nin != b->nin || a->dtype != b->dtype || a->rank != b->rank) return false;
  if (memcmp(a->shape, b->shape, sizeof(int64_t) * (size_t)a->rank)) return false;
  for (int i = 0; i < a->nin; i++)
    if (map[a->in[i]] != map[b->in[i]]) return false;
  return same_attrs(&a->attr, &b->attr);
}

static uint64_t mix(uint64_t h, uint64_t v) { return (h ^ v) * 0x100000001b3ull; }

// Hash of what `same` compares (attributes only through the ones that matter most).
static uint64_t hash(const KilnNode *n, const int32_t *map) {
  uint64_t h = mix(0xcbf29ce484222325ull, (uint64_t)n->op);
  for (int i = 0; i < n->nin; i++) h = mix(h, (uint64_t)map[n->in[i]]);
  for (int i = 0; i < n->rank; i++) h = mix(h, (uint64_t)n->shape[i]);
  uint64_t v;
  memcpy(&v, &n->attr.value, sizeof v);
  return mix(mix(h, v), (uint64_t)n->attr.axis);
}

int kiln_pass_cse(KilnGraph *g, FILE *err) {
  (void)err;
  size_t n = (size_t)g->nnodes, cap = 16;
  while (cap < 2 * n) cap *= 2;
  int32_t *table = kiln_xmalloc(cap * sizeof *table);
  int32_t *map = kiln_xmalloc((n ? n : 1) * sizeof *map);
  bool *keep = kiln_xmalloc((n ? n : 1) * sizeof *keep);
  for (size_t i = 0; i < cap; i++) table[i] = -1;
  int merged = 0;
  for (int32_t i = 0; i < (int32_t)n; i++) {
    const KilnNode *x = &g->nodes[i];
    map[i] = i;
    keep[i] = true;
    if (x->op == KILN_OP_INPUT || x->op == KILN_OP_PARAM || kiln_op_has(x->op, KILN_OPF_STATE)) continue;
    for (uint64_t h = hash(x, map) & (cap - 1);; h = (h + 1) & (cap - 1)) {
      if (table[h] < 0) {
        table[h] = i;
        break;
      }
      if (same(&g->nodes[table[h]], x, map)) {
        map[i] = table[h];
        keep[i] = false;
        merged++;
        break;
      }
    }
  }
  if (merged) kiln_graph_rewrite(g, map, keep);
  free(table);
  free(map);
  free(keep);
  return 0;
}
