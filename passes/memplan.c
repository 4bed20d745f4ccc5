// Memory planning: every value that needs storage gets an offset in one activation
// arena, and two values share bytes only when their lifetimes do not overlap.
//
// Lifetimes are counted in steps of the schedule, the node order: node i's kernel
// runs at step i, writes its value there and the value lives until the step of its
// last reader. The runtime writes the inputs before the first kernel (step -1) and
// reads the outputs, the loss and, through the optimizer, the gradients after the
// last one (step nnodes). kiln_memplan_request keeps the inputs to the end too. A
// kernel's scratch lives during its own step only, unless the request has an
// earlier kernel write it (scratch_from: the CPU lstm keeps its gates and states in
// its gradient's scratch); then from that kernel's step on.
//
// Values map to buffers. A view (KILN_OPF_VIEW: reshape) is its input's bytes
// under another shape: it joins the input's buffer, stretches its lifetime, and its
// kernel does not run (alias[] names the value whose bytes it is). A window of the
// last axis (KILN_OPF_WINDOW: a slice) that only kernels reading strided rows read
// (KILN_OPF_STRIDED: attention and its gradient reading the q, k, v of a fused
// projection) is a view too, its bytes starting attr.start elements into the
// input's and its rows as long as the input's. An op that may
// run in place (KILN_OPF_INPLACE) joins its first input's buffer when that buffer
// is read for the last time by this very node, holds the same number of elements,
// and is not also one of the node's other inputs; its kernel reads each element
// before writing it. A buffer lives from its first value's write to its last
// value's last read.
//
// After fusion (g->fused_into), a node computed inside another node's kernel has
// no buffer, and what it reads is read at the step of the kernel that computes it.
// A fused node that nodes outside its group read (kiln_graph_fused_stored) keeps
// its buffer, written by the group's kernel: its lifetime starts at its own step,
// before that kernel's, which only lengthens it; it is never in place.
// A kernel that computes fused nodes does not run in place: a matmul epilogue
// writes the matmul's rows into the output before it reads the other operands.
//
// Packing is greedy by size with best fit, as TFLite's arena planner and ggml's
// allocator do it: buffers in decreasing size; each takes the smallest gap, among
// the already placed buffers whose lifetimes overlap its own, that holds it, or
// else the first offset above them all.
//
// One plan, made for the training step, serves all three step functions. forward
// and eval run a subset of the train step's kernels, in the same order, and the
// subset is closed under inputs (a kernel runs only after its inputs' kernels).
// Take a value v written at step s and read last (in the subset) at step t <= its
// last read in the full schedule. Every buffer that shares bytes with v has a
// lifetime disjoint from v's in the full schedule, and in the subset it is written
// only at steps inside that lifetime, so nothing overwrites v between s and t. The
// values the runtime reads after a step (outputs, loss) hold to the end in the full
// plan, so no later write reaches them in any subset; inputs hold from before the
// first kernel. An in-place kernel overwrites its input at the input's last read
// in the full schedule, hence after its last read in every subset too.
#include <stdlib.h>
#include <string.h>

#include "passes/passes.h"

#define ALIGN 64

int64_t kiln_memplan_bytes(const KilnNode *n) {
  return (kiln_node_numel(n) * 4 + ALIGN - 1) & ~(int64_t)(ALIGN - 1);
}

void kiln_memplan_roots(const KilnGraph *g, bool *keep) {
  memset(keep, 0, (size_t)g->nnodes * sizeof *keep);
  for (int i = 0; i < g->noutputs; i++) keep[g->outputs[i]] = true;
  if (g->loss >= 0) keep[g->loss] = true;
  for (int i = 0; g->grads && i < g->nforward; i++)
    if (g->grads[i] >= 0) keep[g->grads[i]] = true;
}

// The node whose kernel computes node i: i, or the root of the fusion group it
// is fused into.
static int32_t runs_in(const KilnGraph *g, int32_t i) {
  return g->fused_into && g->fused_into[i] >= 0 ? g->fused_into[i] : i;
}

void kiln_memplan_request(const KilnGraph *g, KilnArena *a, int64_t base, KilnMemReq *out) {
  int n = g->nnodes;
  bool *keep = kiln_arena_alloc(a, (size_t)(n ? n : 1) * sizeof *keep);
  bool *store = kiln_arena_alloc(a, (size_t)(n ? n : 1) * sizeof *store);
  int64_t *bytes = kiln_arena_alloc(a, (size_t)(n ? n : 1) * sizeof *bytes);
  kiln_memplan_roots(g, keep);
  memcpy(store, keep, (size_t)n * sizeof *store);
  for (int i = n - 1; i >= 0; i--) {
    const KilnNode *node = &g->nodes[i];
    if (store[i])
      for (int j = 0; j < node->nin; j++) store[node->in[j]] = true;
  }
  for (int i = 0; i < n; i++) {
    KilnOp op = g->nodes[i].op;
    // Inputs always have a place (the runtime writes them all) and keep it to the
    // end: callers may run a step again on the same inputs without writing them
    // (bench, repeated steps in tests), and an i32 input overwritten by floats
    // would index out of bounds. They are small next to the activations.
    // Parameters live in the weights block, not here; fused nodes nowhere, unless
    // read outside their group.
    KILN_ASSERT(!keep[i] || runs_in(g, i) == i);  // fusion leaves the roots alone
    store[i] = (store[i] || op == KILN_OP_INPUT) && op != KILN_OP_PARAM &&
               (runs_in(g, i) == i || kiln_graph_fused_stored(g, i));
    keep[i] |= op == KILN_OP_INPUT;
    bytes[i] = kiln_memplan_bytes(&g->nodes[i]);
  }
  *out = (KilnMemReq){store, bytes, NULL, keep, base, true};
}

//
// Lifetimes and buffers.
//
typedef struct {
  const KilnGraph *g;
  const KilnMemReq *r;
  KilnMemPlan *p;
  int32_t *last;  // per node: step of its last read (nnodes when kept to the end)
  bool *grouped;  // per node: its kernel computes fused nodes too
  int cap;
} Planner;

static int32_t new_buf(Planner *pl, int32_t node, int32_t first, int32_t last, int64_t bytes,
                       bool scratch) {
  KilnMemPlan *p = pl->p;
  KILN_ASSERT(p->nbufs < pl->cap);
  p->bufs[p->nbufs] = (KilnMemBuf){first, last, bytes, -1, node, scratch};
  return p->nbufs++;
}

// A node's inputs are read at the step of the kernel that computes it, if any
// does: a kernel runs only for a node with storage.
static void last_reads(Planner *pl) {
  const KilnGraph *g = pl->g;
  for (int i = 0; i < g->nnodes; i++) pl->last[i] = pl->r->keep[i] ? g->nnodes : i;
  for (int i = 0; i < g->nnodes; i++) {
    int32_t at = runs_in(g, i);
    if (at != i) pl->grouped[at] = true;
    if (!pl->r->store[at]) continue;
    for (int j = 0; j < g->nodes[i].nin; j++) {
      int32_t x = g->nodes[i].in[j];
      if (pl->last[x] < at) pl->last[x] = at;
    }
  }
}

// Whether node i may take the buffer of its first input: as a view (always, the
// bytes are the same) or in place (only at that buffer's last read).
static bool same_elements(Planner *pl, int32_t i, int32_t x) {
  const KilnGraph *g = pl->g;
  return pl->r->store[x] && pl->r->bytes[x] == pl->r->bytes[i] &&
         kiln_node_numel(&g->nodes[x]) == kiln_node_numel(&g->nodes[i]);
}

static bool can_view(Planner *pl, int32_t i) {
  const KilnNode *n = &pl->g->nodes[i];
  return kiln_op_has(n->op, KILN_OPF_VIEW) && n->nin >= 1 && same_elements(pl, i, n->in[0]);
}

// Whether window i is read in place from its input's buffer (see the top).
static bool can_stride(Planner *pl, int32_t i) {
  const KilnGraph *g = pl->g;
  const KilnNode *n = &g->nodes[i];
  if (!kiln_op_has(n->op, KILN_OPF_WINDOW) || n->dtype != KILN_F32 || n->attr.axis != n->rank - 1 ||
      pl->r->keep[i] || runs_in(g, i) != i)
    return false;
  int32_t x = n->in[0];
  if (!pl->r->store[x] || pl->p->shift[x] >= 0) return false;  // x's own rows must be whole
  for (int32_t r = i + 1; r < g->nnodes; r++) {
    bool strided = kiln_op_has(g->nodes[r].op, KILN_OPF_STRIDED) && runs_in(g, r) == r;
    for (int j = 0; j < g->nodes[r].nin; j++)
      if (g->nodes[r].in[j] == i && !strided) return false;
  }
  return true;
}

static bool can_inplace(Planner *pl, int32_t i) {
  const KilnNode *n = &pl->g->nodes[i];
  if (!pl->r->inplace || !kiln_op_has(n->op, KILN_OPF_INPLACE) || n->nin < 1 || pl->grouped[i] ||
      runs_in(pl->g, i) != i)
    return false;
  int32_t x = n->in[0];
  if (!same_elements(pl, i, x)) return false;
  int32_t b = pl->p->buf[x];
  // Every value in the buffer is read for the last time here (a later view of one
  // of them would be a later read). A kept buffer ends at nnodes, never here.
  if (pl->p->bufs[b].last != i) return false;
  for (int j = 1; j < n->nin; j++)
    if (pl->r->store[n->in[j]] && pl->p->buf[n->in[j]] == b) return false;
  return true;
}

static void assign_buffers(Planner *pl) {
  const KilnGraph *g = pl->g;
  const KilnMemReq *r = pl->r;
  KilnMemPlan *p = pl->p;
  for (int32_t i = 0; i < g->nnodes; i++) {
    if (!r->store[i]) continue;
    const KilnNode *n = &g->nodes[i];
    int32_t b;
    if (can_view(pl, i) || can_stride(pl, i)) {
      int32_t x = n->in[0];
      b = p->buf[x];
      p->alias[i] = p->alias[x] >= 0 ? p->alias[x] : x;
      if (!kiln_op_has(n->op, KILN_OPF_VIEW)) p->shift[i] = n->attr.start * 4;
    } else if (can_inplace(pl, i)) {
      b = p->buf[n->in[0]];
    } else {
      b = new_buf(pl, i, n->op == KILN_OP_INPUT ? -1 : i, i, r->bytes[i], false);
    }
    p->buf[i] = b;
    if (p->bufs[b].last < pl->last[i]) p->bufs[b].last = pl->last[i];
  }
  for (int32_t i = 0; r->scratch && i < g->nnodes; i++)
    if (r->store[i] && r->scratch[i] > 0) {
      int32_t from = r->scratch_from && r->scratch_from[i] >= 0 && r->scratch_from[i] < i
                         ? r->scratch_from[i] : i;
      new_buf(pl, i, from, i, r->scratch[i], true);
    }
}

//
// Packing.
//
static bool overlap(const KilnMemBuf *a, const KilnMemBuf *b) {
  return a->first <= b->last && b->first <= a->last;
}

// Largest first; equal sizes by first step, then creation: a total order, so the
// plan does not depend on qsort's stability.
typedef struct {
  int64_t bytes;
  int32_t first, index;
} Key;

static int by_size(const void *x, const void *y) {
  const Key *a = x, *b = y;
  if (a->bytes != b->bytes) return a->bytes > b->bytes ? -1 : 1;
  if (a->first != b->first) return a->first < b->first ? -1 : 1;
  return (a->index > b->index) - (a->index < b->index);
}

// placed[0, np) holds buffer indices by increasing offset. Returns b's offset.
static int64_t best_fit(const KilnMemBuf *bufs, const int32_t *placed, int np, int32_t b,
                        int64_t base) {
  const KilnMemBuf *x = &bufs[b];
  int64_t at = base, best = -1, best_gap = INT64_MAX;
  for (int k = 0; k < np; k++) {
    const KilnMemBuf *y = &bufs[placed[k]];
    if (!overlap(x, y)) continue;
    int64_t gap = y->offset - at;
    if (gap >= x->bytes && gap < best_gap) best = at, best_gap = gap;
    if (at < y->offset + y->bytes) at = y->offset + y->bytes;
  }
  return best >= 0 ? best : at;
}

static void pack(KilnMemPlan *p, int64_t base) {
  int nb = p->nbufs;
  Key *order = kiln_xcalloc((size_t)nb, sizeof *order);
  int32_t *placed = kiln_xcalloc((size_t)nb, sizeof *placed);
  for (int i = 0; i < nb; i++) order[i] = (Key){p->bufs[i].bytes, p->bufs[i].first, i};
  qsort(order, (size_t)nb, sizeof *order, by_size);
  p->peak = base;
  for (int k = 0; k < nb; k++) {
    int32_t b = order[k].index;
    KilnMemBuf *x = &p->bufs[b];
    x->offset = best_fit(p->bufs, placed, k, b, base);
    int at = k;  // insertion keeps placed sorted by offset
    while (at > 0 && p->bufs[placed[at - 1]].offset > x->offset) placed[at] = placed[at - 1], at--;
    placed[at] = b;
    if (p->peak < x->offset + x->bytes) p->peak = x->offset + x->bytes;
  }
  free(order);
  free(placed);
}

// The most bytes live at one step: no packing of these buffers needs less.
static int64_t live_bound(const KilnMemPlan *p, int nnodes) {
  int steps = nnodes + 2;  // -1 .. nnodes
  int64_t *delta = kiln_xcalloc((size_t)steps + 1, sizeof *delta);
  for (int i = 0; i < p->nbufs; i++) {
    delta[p->bufs[i].first + 1] += p->bufs[i].bytes;
    delta[p->bufs[i].last + 2] -= p->bufs[i].bytes;
  }
  int64_t live = 0, most = 0;
  for (int t = 0; t < steps; t++) {
    live += delta[t];
    if (most < live) most = live;
  }
  free(delta);
  return most;
}

void kiln_memplan(const KilnGraph *g, const KilnMemReq *r, KilnArena *a, KilnMemPlan *p) {
  int n = g->nnodes, m = n ? n : 1;
  memset(p, 0, sizeof *p);
  p->offset = kiln_arena_alloc(a, (size_t)m * sizeof *p->offset);
  p->scratch = kiln_arena_alloc(a, (size_t)m * sizeof *p->scratch);
  p->alias = kiln_arena_alloc(a, (size_t)m * sizeof *p->alias);
  p->shift = kiln_arena_alloc(a, (size_t)m * sizeof *p->shift);
  p->buf = kiln_arena_alloc(a, (size_t)m * sizeof *p->buf);
  p->bufs = kiln_arena_alloc(a, (size_t)(2 * m) * sizeof *p->bufs);  // a value and a scratch each
  Planner pl = {g, r, p, kiln_xcalloc((size_t)m, sizeof(int32_t)),
                kiln_xcalloc((size_t)m, sizeof(bool)), 2 * m};
  for (int i = 0; i < n; i++) {
    p->offset[i] = p->scratch[i] = p->shift[i] = -1;
    p->alias[i] = p->buf[i] = -1;
  }
  last_reads(&pl);
  assign_buffers(&pl);
  pack(p, r->base);
  p->naive = r->base;
  for (int i = 0; i < n; i++) {
    if (!r->store[i]) continue;
    p->offset[i] = p->bufs[p->buf[i]].offset + (p->shift[i] > 0 ? p->shift[i] : 0);
    p->naive += r->bytes[i] + (r->scratch ? r->scratch[i] : 0);
  }
  for (int b = 0; b < p->nbufs; b++)
    if (p->bufs[b].scratch) p->scratch[p->bufs[b].node] = p->bufs[b].offset;
  p->bound = r->base + live_bound(p, n);
  free(pl.last);
  free(pl.grouped);
}
