// Scheduling: a node order that lowers the planned peak memory where the graph
// leaves a choice (independent branches; in the backward pass, a weight's gradient,
// which frees the saved activation, before the input's gradient, which allocates).
//
// Greedy list scheduling: of the nodes whose inputs are all placed, take the best
// by a node's growth, the bytes it writes (none for a view) less the buffers it
// reads for the last time. Two rankings are tried: least growth first; and
// "allocations last": every node that grows nothing (views, nodes that free at
// least what they write; most freeing first) before any that grows, those in the
// current order. Ties go to the earlier node, so where there is no choice the
// order stays. Inputs and parameters come first, in their order (the model
// descriptor lists them in node order). Forward nodes stay before backward ones,
// so [0, nforward) remains the forward pass and grads[] keeps its meaning. After
// fusion a group's inputs are read where its root's kernel runs, the root waits
// for every node of its group, and a reader of a value the group stores waits for
// the root.
//
// Each greedy order is planned (memplan.c; values only: scratch is the backend's)
// and the smallest peak wins; the current order stays unless an order beats it,
// so the pass never makes the plan worse.
#include <stdlib.h>
#include <string.h>

#include "passes/passes.h"

// Adjacency lists: node i's are item[first[i], first[i + 1]).
typedef struct {
  int32_t *first, *item;
} Lists;

typedef struct {
  const KilnGraph *g;
  const KilnMemReq *r;
  int32_t *root;     // per node: the value whose buffer it lives in (a view: its input's)
  int32_t *uses;     // per root: reads of the buffer's values still to be placed
  bool *kept;        // per root: one of its values is read after the step
  int32_t *pending;  // per node: nodes it waits for, still to be placed
  Lists next;        // per node: the nodes that wait for it
  Lists reads;       // per node: the values its kernel reads (none without a kernel)
  int32_t *ready;
  int nready;
  int32_t *order;    // the schedule: order[k] is the k-th node
  int norder;
} Sched;

static void *xcalloc(size_t n, size_t size) { return kiln_xcalloc(n, size); }

static bool is_view(const Sched *s, int32_t i) {
  const KilnNode *n = &s->g->nodes[i];
  if (!kiln_op_has(n->op, KILN_OPF_VIEW) || n->nin < 1 || !s->r->store[n->in[0]]) return false;
  const KilnNode *x = &s->g->nodes[n->in[0]];
  return s->r->bytes[n->in[0]] == s->r->bytes[i] && kiln_node_numel(x) == kiln_node_numel(n);
}

static int32_t runs_in(const KilnGraph *g, int32_t i) {
  return g->fused_into && g->fused_into[i] >= 0 ? g->fused_into[i] : i;
}

// Edges (from[e], to[e]) as lists per from-node.
static Lists lists(int n, const int32_t *from, const int32_t *to, int m) {
  Lists l = {xcalloc((size_t)n + 1, sizeof(int32_t)), xcalloc((size_t)m, sizeof(int32_t))};
  int32_t *fill = xcalloc((size_t)n, sizeof(int32_t));
  for (int e = 0; e < m; e++) l.first[from[e] + 1]++;
  for (int i = 0; i < n; i++) l.first[i + 1] += l.first[i];
  for (int e = 0; e < m; e++) l.item[l.first[from[e]] + fill[from[e]]++] = to[e];
  free(fill);
  return l;
}

static void init(Sched *s, const KilnGraph *g, const KilnMemReq *r) {
  int n = g->nnodes, m = 0, mr = 0;
  *s = (Sched){g, r, xcalloc((size_t)n, sizeof(int32_t)), xcalloc((size_t)n, sizeof(int32_t)),
               xcalloc((size_t)n, sizeof(bool)), xcalloc((size_t)n, sizeof(int32_t)),
               {0}, {0}, xcalloc((size_t)n, sizeof(int32_t)), 0,
               xcalloc((size_t)n, sizeof(int32_t)), 0};
  for (int i = 0; i < n; i++) m += 2 * g->nodes[i].nin + 1;
  int32_t *from = xcalloc((size_t)m, sizeof(int32_t)), *to = xcalloc((size_t)m, sizeof(int32_t));
  int32_t *rfrom = xcalloc((size_t)m, sizeof(int32_t)), *rto = xcalloc((size_t)m, sizeof(int32_t));
  int e = 0;
  for (int32_t i = 0; i < n; i++) {
    const KilnNode *node = &g->nodes[i];
    int32_t at = runs_in(g, i);
    s->root[i] = is_view(s, i) ? s->root[node->in[0]] : i;
    s->kept[s->root[i]] |= r->keep[i];
    for (int j = 0; j < node->nin; j++) {
      from[e] = node->in[j], to[e++] = i;
      // A value a group's kernel stores is there once the group's root has run.
      int32_t src = runs_in(g, node->in[j]);
      if (src != node->in[j] && src != at) from[e] = src, to[e++] = i;
      if (!r->store[at]) continue;
      rfrom[mr] = at, rto[mr++] = node->in[j];
      s->uses[s->root[node->in[j]]]++;
    }
    if (at != i) from[e] = i, to[e++] = at;  // the root waits for its group
  }
  for (int k = 0; k < e; k++) s->pending[to[k]]++;
  s->next = lists(n, from, to, e);
  s->reads = lists(n, rfrom, rto, mr);
  free(from);
  free(to);
  free(rfrom);
  free(rto);
}

static void release(Sched *s) {
  free(s->root);
  free(s->uses);
  free(s->kept);
  free(s->pending);
  free(s->next.first);
  free(s->next.item);
  free(s->reads.first);
  free(s->reads.item);
  free(s->ready);
  free(s->order);
}

// Bytes node i makes live, less the bytes whose last read it is.
static int64_t growth(const Sched *s, int32_t i) {
  if (!s->r->store[i]) return 0;  // no kernel of its own
  int64_t grow = is_view(s, i) ? 0 : s->r->bytes[i];
  const int32_t *rd = s->reads.item + s->reads.first[i];
  int nr = s->reads.first[i + 1] - s->reads.first[i];
  for (int j = 0; j < nr; j++) {
    int32_t b = s->root[rd[j]], reads = 0;
    bool seen = false;
    for (int k = 0; k < nr; k++) {
      seen |= k < j && s->root[rd[k]] == b;
      reads += s->root[rd[k]] == b;
    }
    if (!seen && s->r->store[b] && !s->kept[b] && s->uses[b] == reads) grow -= s->r->bytes[b];
  }
  return grow;
}

static bool fills_first(const KilnGraph *g, int32_t i) {
  return g->nodes[i].op == KILN_OP_INPUT || g->nodes[i].op == KILN_OP_PARAM;
}

// How a ready node ranks: by its growth (LEAST_GROWTH); or (ALLOC_LAST) every
// node that allocates nothing net (views, and nodes that free more than they
// write: most freeing first) before any node that does, and those in their
// order: the original order, with frees pulled ahead of allocations.
typedef enum { LEAST_GROWTH, ALLOC_LAST } Policy;

// The ready node to place next: inputs and parameters first, then the lowest
// rank; ties to the earlier node.
static int pick(const Sched *s, Policy policy) {
  int best = -1;
  int64_t best_rank = 0;
  bool best_fill = false;
  for (int k = 0; k < s->nready; k++) {
    int32_t i = s->ready[k];
    bool fill = fills_first(s->g, i);
    int64_t rank = fill ? 0 : growth(s, i);
    if (policy == ALLOC_LAST && rank > 0) rank = INT64_MAX;  // then by index
    bool better = best < 0 || (fill && !best_fill) ||
                  (fill == best_fill && (rank < best_rank ||
                                         (rank == best_rank && i < s->ready[best])));
    if (better) best = k, best_rank = rank, best_fill = fill;
  }
  return best;
}

static void place(Sched *s, int32_t i, int32_t hi) {
  s->order[s->norder++] = i;
  for (int32_t k = s->reads.first[i]; k < s->reads.first[i + 1]; k++) s->uses[s->root[s->reads.item[k]]]--;
  for (int32_t k = s->next.first[i]; k < s->next.first[i + 1]; k++) {
    int32_t c = s->next.item[k];
    if (--s->pending[c] == 0 && c < hi) s->ready[s->nready++] = c;
  }
}

// Places nodes [lo, hi), all of whose inputs before lo are placed.
static void schedule_range(Sched *s, int32_t lo, int32_t hi, Policy policy) {
  s->nready = 0;
  for (int32_t i = lo; i < hi; i++)
    if (s->pending[i] == 0) s->ready[s->nready++] = i;
  while (s->nready > 0) {
    int k = pick(s, policy);
    int32_t i = s->ready[k];
    s->ready[k] = s->ready[--s->nready];
    place(s, i, hi);
  }
}

// The greedy order under a policy, into order[n]; whether it differs from g's.
static bool greedy(const KilnGraph *g, const KilnMemReq *r, Policy policy, int32_t *order) {
  int n = g->nnodes;
  Sched s;
  init(&s, g, r);
  int32_t nf = g->grads ? g->nforward : n;
  schedule_range(&s, 0, nf, policy);
  schedule_range(&s, nf, n, policy);
  KILN_ASSERT(s.norder == n);
  bool moved = false;
  for (int k = 0; k < n; k++) moved |= s.order[k] != k;
  memcpy(order, s.order, (size_t)n * sizeof *order);
  release(&s);
  return moved;
}

// g's nodes in the given order, renumbered, into arrays from a.
static void permute(const KilnGraph *g, const int32_t *order, KilnArena *a, KilnGraph *out) {
  int n = g->nnodes;
  int32_t *index = xcalloc((size_t)n, sizeof *index);
  for (int k = 0; k < n; k++) index[order[k]] = k;
  *out = *g;
  out->nodes = kiln_arena_alloc(a, (size_t)(n ? n : 1) * sizeof *out->nodes);
  out->cap = n;
  for (int k = 0; k < n; k++) {
    KilnNode node = g->nodes[order[k]];
    for (int j = 0; j < node.nin; j++) node.in[j] = index[node.in[j]];
    out->nodes[k] = node;
  }
  out->outputs = kiln_arena_alloc(a, (size_t)(g->noutputs ? g->noutputs : 1) * sizeof *out->outputs);
  for (int i = 0; i < g->noutputs; i++) out->outputs[i] = index[g->outputs[i]];
  out->loss = g->loss >= 0 ? index[g->loss] : -1;
  if (g->fused_into) {
    out->fused_into = kiln_arena_alloc(a, (size_t)(n ? n : 1) * sizeof *out->fused_into);
    for (int k = 0; k < n; k++) {
      int32_t into = g->fused_into[order[k]];
      out->fused_into[k] = into >= 0 ? index[into] : -1;
    }
  }
  if (g->grads) {
    out->grads = kiln_arena_alloc(a, (size_t)(n ? n : 1) * sizeof *out->grads);
    for (int i = 0; i < n; i++) out->grads[i] = -1;
    for (int i = 0; i < g->nforward; i++)
      if (g->grads[i] >= 0) out->grads[index[i]] = index[g->grads[i]];
  }
  free(index);
}

static int64_t peak_of(const KilnGraph *g, KilnArena *a) {
  KilnMemReq r;
  KilnMemPlan p;
  kiln_memplan_request(g, a, 0, &r);
  kiln_memplan(g, &r, a, &p);
  return p.peak;
}

int kiln_pass_schedule(KilnGraph *g, FILE *err) {
  (void)err;
  int n = g->nnodes;
  if (n < 3) return 0;
  KilnArena tmp = {0};
  KilnMemReq r;
  kiln_memplan_request(g, &tmp, 0, &r);
  int64_t best = peak_of(g, &tmp);
  KilnGraph cand, keep = *g;
  int32_t *order = xcalloc((size_t)n, sizeof *order);
  for (Policy p = LEAST_GROWTH; p <= ALLOC_LAST; p++) {
    if (!greedy(g, &r, p, order)) continue;
    permute(g, order, &tmp, &cand);
    int64_t peak = peak_of(&cand, &tmp);
    if (peak < best) best = peak, keep = cand;
  }
  if (keep.nodes != g->nodes) {
    memcpy(g->nodes, keep.nodes, (size_t)n * sizeof *g->nodes);
    memcpy(g->outputs, keep.outputs, (size_t)g->noutputs * sizeof *g->outputs);
    g->loss = keep.loss;
    if (g->fused_into) memcpy(g->fused_into, keep.fused_into, (size_t)n * sizeof *g->fused_into);
    if (g->grads) {
      g->grads = kiln_arena_alloc(g->arena, (size_t)n * sizeof *g->grads);
      memcpy(g->grads, keep.grads, (size_t)n * sizeof *g->grads);
    }
  }
  free(order);
  kiln_arena_free(&tmp);
  return 0;
}
