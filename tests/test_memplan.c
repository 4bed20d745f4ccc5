// Memory planning (passes/memplan.c) and the memory-aware schedule
// (passes/schedule.c).
//
// Hand-built graphs whose lifetimes are worked out by hand, with the expected
// arena written next to each: every value is f32[16], one 64-byte slot (S). Then
// every bundled model, inference and training graph at -O2: the plan is checked
// against lifetimes recomputed here from the graph, every pair of buffers that
// share bytes, and the planned and naive sizes are printed. Then the schedule:
// a valid order, the forward pass still first, and never a larger peak.
#include <dirent.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "compiler/compiler.h"
#include "compiler/cpu/cpu.h"
#include "passes/passes.h"

#define MODELS KILN_SOURCE_DIR "/models"
#define S 64  // bytes of one f32[16] value

//
// Hand-built graphs.
//
typedef struct {
  KilnArena a;
  KilnGraph g;
  KilnMemReq r;
  KilnMemPlan p;
} T;

static void t_init(T *t) {
  memset(t, 0, sizeof *t);
  kiln_graph_init(&t->g, &t->a, "t");
}

// An f32 input [rows, 16], or [16] for rows 0.
static int32_t input_rows(T *t, const char *name, int64_t rows) {
  int32_t id = kiln_graph_add(&t->g, KILN_OP_INPUT, NULL, 0, name, (KilnLoc){0});
  KilnNode *n = &t->g.nodes[id];
  n->dtype = KILN_F32;
  n->rank = rows ? 2 : 1;
  n->shape[0] = rows ? rows : 16;
  n->shape[1] = 16;
  return id;
}

static int32_t input(T *t, const char *name) { return input_rows(t, name, 0); }

// op(a) or op(a, b); reshape takes the shape [4, 4].
static int32_t op(T *t, KilnOp o, const char *name, int32_t a, int32_t b) {
  int32_t in[2] = {a, b};
  int32_t id = kiln_graph_add(&t->g, o, in, b >= 0 ? 2 : 1, name, (KilnLoc){0});
  if (o == KILN_OP_RESHAPE) t->g.nodes[id].attr.nints = 2, t->g.nodes[id].attr.ints[0] = 4,
                            t->g.nodes[id].attr.ints[1] = 4;
  char err[256];
  if (kiln_graph_infer(&t->g, id, err, sizeof err) != 0) fail_msg("%s: %s", name, err);
  return id;
}

// Plans the graph as written: the roots and inputs kept, no scratch unless given.
static void plan_from(T *t, bool inplace, const int64_t *scratch, const int32_t *scratch_from) {
  kiln_memplan_request(&t->g, &t->a, 0, &t->r);
  t->r.inplace = inplace;
  t->r.scratch = scratch;
  t->r.scratch_from = scratch_from;
  kiln_memplan(&t->g, &t->r, &t->a, &t->p);
}

static void plan(T *t, bool inplace, const int64_t *scratch) { plan_from(t, inplace, scratch, NULL); }

// x -> a -> b -> ... of n softmaxes (n <= 4): id[0] the input x, id[1..n] a, b, ...
static void softmax_chain(T *t, int n, int32_t *id) {
  static const char *const names[] = {"a", "b", "c", "d"};
  id[0] = input(t, "x");
  for (int i = 1; i <= n; i++) id[i] = op(t, KILN_OP_SOFTMAX, names[i - 1], id[i - 1], -1);
}

static bool overlap(int64_t a, int64_t na, int64_t b, int64_t nb) { return a < b + nb && b < a + na; }

// x -> a -> b -> c -> d, d the output, an op without in-place: the input holds to
// the end (S); a and c share, b and d share: 3 S, the most ever live.
static void chain(void **state) {
  (void)state;
  T t;
  t_init(&t);
  int32_t id[5];
  softmax_chain(&t, 4, id);
  int32_t x = id[0], a = id[1], b = id[2], c = id[3], d = id[4];
  kiln_graph_add_output(&t.g, d);
  plan(&t, true, NULL);
  assert_int_equal(t.p.peak, 3 * S);
  assert_int_equal(t.p.bound, 3 * S);
  assert_int_equal(t.p.naive, 5 * S);
  assert_int_equal(t.p.offset[a], t.p.offset[c]);
  assert_int_equal(t.p.offset[b], t.p.offset[d]);
  assert_int_not_equal(t.p.offset[a], t.p.offset[b]);
  assert_int_not_equal(t.p.offset[x], t.p.offset[a]);
  assert_int_not_equal(t.p.offset[x], t.p.offset[b]);
  kiln_arena_free(&t.a);
}

// The same chain of an in-place op: b, c and d each take their input's buffer at
// its last read, so the chain needs one slot (a cannot take x's: inputs hold to
// the end). 2 S; without in-place 3 S.
static void chain_inplace(void **state) {
  (void)state;
  T t;
  t_init(&t);
  int32_t x = input(&t, "x"), a = op(&t, KILN_OP_RELU, "a", x, -1);
  int32_t b = op(&t, KILN_OP_RELU, "b", a, -1), c = op(&t, KILN_OP_EXP, "c", b, -1);
  int32_t d = op(&t, KILN_OP_TANH, "d", c, -1);
  kiln_graph_add_output(&t.g, d);
  plan(&t, true, NULL);
  assert_int_equal(t.p.peak, 2 * S);
  assert_int_equal(t.p.buf[a], t.p.buf[b]);
  assert_int_equal(t.p.buf[a], t.p.buf[d]);
  assert_int_not_equal(t.p.buf[x], t.p.buf[a]);
  assert_int_equal(t.p.alias[d], -1);  // in place is not a view: its kernel runs
  assert_int_equal(t.p.bufs[t.p.buf[d]].last, t.g.nnodes);  // d is an output
  plan(&t, false, NULL);
  assert_int_equal(t.p.peak, 3 * S);
  kiln_arena_free(&t.a);
}

// A diamond: a feeds b and c, which meet in d. Steps: a [1, 3], b [2, 4],
// c [3, 4], d [4, end]; at step 3 x, a, b, c are live: 4 S. b = exp(a) cannot
// run in place (a is read again at 3); d = add(b, c) takes b's buffer.
static void diamond(void **state) {
  (void)state;
  T t;
  t_init(&t);
  int32_t x = input(&t, "x"), a = op(&t, KILN_OP_SOFTMAX, "a", x, -1);
  int32_t b = op(&t, KILN_OP_EXP, "b", a, -1), c = op(&t, KILN_OP_LOG_SOFTMAX, "c", a, -1);
  int32_t d = op(&t, KILN_OP_ADD, "d", b, c);
  kiln_graph_add_output(&t.g, d);
  plan(&t, true, NULL);
  assert_int_equal(t.p.peak, 4 * S);
  assert_int_equal(t.p.bound, 4 * S);
  assert_int_not_equal(t.p.buf[b], t.p.buf[a]);
  assert_int_equal(t.p.buf[d], t.p.buf[b]);
  const KilnMemBuf *ba = &t.p.bufs[t.p.buf[a]];
  assert_int_equal(ba->first, a);
  assert_int_equal(ba->last, c);
  kiln_arena_free(&t.a);
}

// Outputs hold to the end of the step: a, an output read by b, keeps its bytes
// after its last read, so nothing later shares them: 4 S. When a is not an
// output it shares with c: 3 S.
static void outputs_kept(void **state) {
  (void)state;
  for (int kept = 0; kept < 2; kept++) {
    T t;
    t_init(&t);
    int32_t id[4];
    softmax_chain(&t, 3, id);
    int32_t a = id[1], b = id[2], c = id[3];
    if (kept) kiln_graph_add_output(&t.g, a);
    kiln_graph_add_output(&t.g, c);
    plan(&t, true, NULL);
    assert_int_equal(t.p.peak, kept ? 4 * S : 3 * S);
    assert_int_equal(t.p.bufs[t.p.buf[a]].last, kept ? t.g.nnodes : b);
    for (int32_t i = b; kept && i <= c; i++)
      assert_false(overlap(t.p.offset[a], S, t.p.offset[i], S));
    kiln_arena_free(&t.a);
  }
}

// Scratch lives during its own node's step only. x -> a -> b -> c -> d with 2 S
// of scratch for b: at step 2 x, a, b and the scratch are live (5 S); c and d
// come after and reuse the scratch's bytes, so the arena stays 5 S.
static void scratch(void **state) {
  (void)state;
  T t;
  t_init(&t);
  int32_t id[5];
  softmax_chain(&t, 4, id);
  int32_t x = id[0], a = id[1], b = id[2], c = id[3], d = id[4];
  kiln_graph_add_output(&t.g, d);
  int64_t sc[5] = {0, 0, 2 * S, 0, 0};
  plan(&t, true, sc);
  assert_int_equal(t.p.peak, 5 * S);
  assert_int_equal(t.p.bound, 5 * S);
  assert_int_equal(t.p.naive, 7 * S);
  assert_int_equal(t.p.scratch[a], -1);
  assert_true(t.p.scratch[b] >= 0);
  for (int32_t i = x; i <= b; i++) assert_false(overlap(t.p.scratch[b], 2 * S, t.p.offset[i], S));
  bool reused = overlap(t.p.scratch[b], 2 * S, t.p.offset[c], S) ||
                overlap(t.p.scratch[b], 2 * S, t.p.offset[d], S);
  assert_true(reused);
  kiln_arena_free(&t.a);
}

// A scratch that an earlier kernel writes (scratch_from) lives from that kernel's
// step. x -> a -> b -> c -> d, no in-place, 2 S of scratch for d: on its own it
// takes the bytes of a or b, dead by step 4; written from a's step on (as the CPU
// lstm writes its gradient's scratch), it shares bytes with none of a..d.
static void scratch_early(void **state) {
  (void)state;
  for (int early = 0; early < 2; early++) {
    T t;
    t_init(&t);
    int32_t id[5];
    softmax_chain(&t, 4, id);
    int32_t a = id[1], d = id[4];
    kiln_graph_add_output(&t.g, d);
    int64_t sc[5] = {0, 0, 0, 0, 2 * S};
    int32_t from[5] = {-1, -1, -1, -1, a};
    plan_from(&t, false, sc, early ? from : NULL);
    bool shared = false;
    for (int32_t i = a; i <= d; i++) shared |= overlap(t.p.scratch[d], 2 * S, t.p.offset[i], S);
    assert_int_equal(shared, !early);
    assert_false(overlap(t.p.scratch[d], 2 * S, t.p.offset[d], S));
    kiln_arena_free(&t.a);
  }
}

// A view (reshape) is its input's bytes: it shares the buffer, marks alias, and
// stretches the buffer to its own readers. Steps: a [1, 4] through the view r
// (read by e at 4), b [3, end], e [4, end]: at step 4 x, a, b, e: 4 S; b cannot
// take a's bytes although a itself is read for the last time at 2.
static void view(void **state) {
  (void)state;
  T t;
  t_init(&t);
  int32_t x = input(&t, "x"), a = op(&t, KILN_OP_SOFTMAX, "a", x, -1);
  int32_t r = op(&t, KILN_OP_RESHAPE, "r", a, -1);
  int32_t b = op(&t, KILN_OP_SOFTMAX, "b", x, -1);
  int32_t e = op(&t, KILN_OP_SOFTMAX, "e", r, -1);
  kiln_graph_add_output(&t.g, e);
  kiln_graph_add_output(&t.g, b);
  plan(&t, true, NULL);
  assert_int_equal(t.p.alias[r], a);
  assert_int_equal(t.p.alias[a], -1);
  assert_int_equal(t.p.offset[r], t.p.offset[a]);
  assert_int_equal(t.p.bufs[t.p.buf[a]].last, e);
  assert_false(overlap(t.p.offset[b], S, t.p.offset[a], S));
  assert_int_equal(t.p.peak, 4 * S);  // x, a (= r), b, e
  kiln_arena_free(&t.a);
}

// Windows of the last axis: q, k and v slice one f32[2,4,24] value x = exp(x0);
// read only by attention (flag STRIDED), they are x's bytes 0, 32 and 64 bytes in,
// with x's rows, and x's buffer lasts to attention's step; w, a slice like v but
// read by a softmax, is a copy of its own.
static void window(void **state) {
  (void)state;
  T t;
  t_init(&t);
  int32_t x0 = kiln_graph_add(&t.g, KILN_OP_INPUT, NULL, 0, "x0", (KilnLoc){0});
  t.g.nodes[x0] = (KilnNode){.op = KILN_OP_INPUT, .dtype = KILN_F32, .rank = 3, .shape = {2, 4, 24},
                             .name = "x0"};
  int32_t x = op(&t, KILN_OP_EXP, "x", x0, -1);
  int32_t s[4];
  const char *names[4] = {"q", "k", "v", "w"};
  for (int i = 0; i < 4; i++) {
    s[i] = kiln_graph_add(&t.g, KILN_OP_SLICE, &x, 1, names[i], (KilnLoc){0});
    t.g.nodes[s[i]].attr = (KilnAttrs){.axis = 2, .start = 8 * (i % 3), .end = 8 * (i % 3) + 8};
    char err[256];
    if (kiln_graph_infer(&t.g, s[i], err, sizeof err) != 0) fail_msg("%s", err);
  }
  int32_t y = kiln_graph_add(&t.g, KILN_OP_ATTENTION, s, 3, "y", (KilnLoc){0});
  t.g.nodes[y].attr = (KilnAttrs){.heads = 2};
  char err[256];
  if (kiln_graph_infer(&t.g, y, err, sizeof err) != 0) fail_msg("%s", err);
  int32_t e = op(&t, KILN_OP_SOFTMAX, "e", s[3], -1);
  kiln_graph_add_output(&t.g, y);
  kiln_graph_add_output(&t.g, e);
  plan(&t, true, NULL);
  for (int i = 0; i < 3; i++) {
    assert_int_equal(t.p.alias[s[i]], x);
    assert_int_equal(t.p.offset[s[i]], t.p.offset[x] + 32 * i);
  }
  assert_int_equal(t.p.alias[s[3]], -1);
  assert_false(overlap(t.p.offset[s[3]], 64, t.p.offset[x], 2 * 4 * 24 * 4));
  assert_int_equal(t.p.bufs[t.p.buf[x]].last, y);
  kiln_arena_free(&t.a);
}

// When the caller lets inputs go after their last read (the request's keep),
// their bytes are reused: x [-1, 1] and b [2, end] share: 2 S.
static void input_reuse(void **state) {
  (void)state;
  T t;
  t_init(&t);
  int32_t x = input(&t, "x"), a = op(&t, KILN_OP_SOFTMAX, "a", x, -1);
  int32_t b = op(&t, KILN_OP_SOFTMAX, "b", a, -1);
  kiln_graph_add_output(&t.g, b);
  kiln_memplan_request(&t.g, &t.a, 0, &t.r);
  bool keep[3] = {false, false, true};
  t.r.keep = keep;
  kiln_memplan(&t.g, &t.r, &t.a, &t.p);
  assert_int_equal(t.p.bufs[t.p.buf[x]].first, -1);
  assert_int_equal(t.p.peak, 2 * S);
  assert_int_equal(t.p.offset[x], t.p.offset[b]);
  kiln_arena_free(&t.a);
}

// The step header lies below the base; nothing is placed there.
static void base(void **state) {
  (void)state;
  T t;
  t_init(&t);
  int32_t x = input(&t, "x"), a = op(&t, KILN_OP_SOFTMAX, "a", x, -1);
  kiln_graph_add_output(&t.g, a);
  kiln_memplan_request(&t.g, &t.a, KILN_ABI_HEADER_BYTES, &t.r);
  kiln_memplan(&t.g, &t.r, &t.a, &t.p);
  assert_true(t.p.offset[x] >= KILN_ABI_HEADER_BYTES && t.p.offset[a] >= KILN_ABI_HEADER_BYTES);
  assert_int_equal(t.p.peak, KILN_ABI_HEADER_BYTES + 2 * S);
  kiln_arena_free(&t.a);
}

//
// Bundled models: the plan against lifetimes recomputed here.
//
typedef struct {
  int32_t first, last;   // steps, inclusive
  int64_t offset, bytes;
  int32_t node;          // the group's root value, or the scratch's node
  bool scratch;
} Span;

static int32_t runs_in(const KilnGraph *g, int32_t i) {
  return g->fused_into && g->fused_into[i] >= 0 ? g->fused_into[i] : i;
}

// Whether span b takes span a's bytes in place at the step where a ends.
static bool in_place(const KilnGraph *g, const KilnPlan *p, const Span *a, const Span *b) {
  if (a->scratch || b->scratch || a->last != b->first || a->offset != b->offset ||
      a->bytes != b->bytes)
    return false;
  const KilnNode *n = &g->nodes[b->first];
  int32_t x = n->nin ? n->in[0] : -1;
  return n->nin && kiln_op_has(n->op, KILN_OPF_INPLACE) && p->where[b->first] == KILN_LOC_ARENA &&
         (p->alias[x] >= 0 ? p->alias[x] : x) == a->node;
}

// Every value with arena storage, its views merged into one span, and every
// scratch; lifetimes from the graph: written at its step (inputs before the
// first), read at the step of each kernel that reads it, kept to the end when
// the runtime reads it after the step (outputs, loss, gradients) or may run the
// step again on it (inputs).
static int spans(const KilnGraph *g, const KilnPlan *p, Span *out) {
  int n = g->nnodes, ns = 0;
  int32_t *last = calloc((size_t)n, sizeof *last), *span = calloc((size_t)n, sizeof *span);
  assert_non_null(last);
  for (int i = 0; i < n; i++) last[i] = g->nodes[i].op == KILN_OP_INPUT ? n : i;
  for (int i = 0; i < g->noutputs; i++) last[g->outputs[i]] = n;
  if (g->loss >= 0) last[g->loss] = n;
  for (int i = 0; g->grads && i < g->nforward; i++)
    if (g->grads[i] >= 0) last[g->grads[i]] = n;
  for (int i = 0; i < n; i++) {
    int32_t at = runs_in(g, i);
    if (p->where[at] != KILN_LOC_ARENA || g->nodes[at].op == KILN_OP_INPUT) continue;
    for (int j = 0; j < g->nodes[i].nin; j++)
      if (last[g->nodes[i].in[j]] < at) last[g->nodes[i].in[j]] = at;
  }
  for (int i = 0; i < n; i++) {
    if (p->where[i] != KILN_LOC_ARENA) continue;
    const KilnNode *node = &g->nodes[i];
    int32_t first = node->op == KILN_OP_INPUT ? -1 : i;
    if (p->alias[i] >= 0) {  // a view: the op says so, and its bytes are its root's
      int32_t root = p->alias[i];
      if (kiln_op_has(node->op, KILN_OPF_VIEW)) {
        assert_int_equal(p->offset[i], p->offset[root]);
      } else {  // a window of the last axis, read in place: from there on, by strided readers
        assert_true(kiln_op_has(node->op, KILN_OPF_WINDOW) && node->attr.axis == node->rank - 1);
        assert_int_equal(p->offset[i], p->offset[root] + 4 * node->attr.start);
        for (int r = i + 1; r < n; r++)
          for (int j = 0; j < g->nodes[r].nin; j++)
            assert_true(g->nodes[r].in[j] != i || kiln_op_has(g->nodes[r].op, KILN_OPF_STRIDED));
      }
      Span *s = &out[span[root]];
      if (s->last < last[i]) s->last = last[i];
      span[i] = span[root];
      continue;
    }
    span[i] = ns;
    out[ns++] = (Span){first, last[i], p->offset[i], kiln_memplan_bytes(node), i, false};
  }
  for (int b = 0; b < p->mem.nbufs; b++) {
    const KilnMemBuf *m = &p->mem.bufs[b];
    if (!m->scratch) continue;
    assert_int_equal(p->scratch[m->node], m->offset);
    // From its own step, or from an earlier lstm's with the same inputs when it is
    // an lstm_grad's (the CPU lstm keeps its forward there).
    const KilnNode *sn = &g->nodes[m->node], *wn = &g->nodes[m->first >= 0 ? m->first : 0];
    assert_true(m->first == m->node ||
                (m->first >= 0 && m->first < m->node && sn->op == KILN_OP_LSTM_GRAD &&
                 wn->op == KILN_OP_LSTM && memcmp(wn->in, sn->in, 4 * sizeof *wn->in) == 0));
    out[ns++] = (Span){m->first, m->node, m->offset, m->bytes, m->node, true};
  }
  free(last);
  free(span);
  return ns;
}

static void check_plan(const KilnGraph *g, const KilnPlan *p) {
  Span *sp = calloc((size_t)(2 * g->nnodes + 1), sizeof *sp);
  int ns = spans(g, p, sp);
  // Naive: every value and every scratch apart, after the header.
  int64_t naive = KILN_ABI_HEADER_BYTES;
  for (int i = 0; i < ns; i++) {
    assert_true(sp[i].offset >= KILN_ABI_HEADER_BYTES);
    assert_true(sp[i].offset + sp[i].bytes <= p->arena_bytes);
    assert_int_equal(sp[i].offset % 64, 0);
    if (sp[i].scratch) naive += sp[i].bytes;
  }
  for (int i = 0; i < g->nnodes; i++)
    if (p->where[i] == KILN_LOC_ARENA) naive += kiln_memplan_bytes(&g->nodes[i]);
  for (int i = 0; i < ns; i++)
    for (int j = i + 1; j < ns; j++) {
      const Span *a = &sp[i], *b = &sp[j];
      if (!overlap(a->offset, a->bytes, b->offset, b->bytes)) continue;
      bool apart = a->last < b->first || b->last < a->first;
      if (apart || in_place(g, p, a, b) || in_place(g, p, b, a)) continue;
      fail_msg("%s: %s%s [%d, %d] at %lld+%lld and %s%s [%d, %d] at %lld+%lld share bytes", g->name,
               g->nodes[a->node].name, a->scratch ? " (scratch)" : "", a->first, a->last,
               (long long)a->offset, (long long)a->bytes, g->nodes[b->node].name,
               b->scratch ? " (scratch)" : "", b->first, b->last, (long long)b->offset,
               (long long)b->bytes);
    }
  assert_int_equal(naive, p->arena_naive_bytes);
  assert_true(p->mem.bound <= p->arena_bytes);
  assert_true(p->arena_bytes <= p->arena_naive_bytes);
  free(sp);
}

typedef struct {
  char path[512], name[64];
} Model;

static Model models[16];
static int nmodels;

static void load(const Model *md, KilnModel *m, bool training, int level) {
  KilnDiag d;
  kiln_diag_init(&d, stderr);
  assert_int_equal(kiln_model_load(m, &d, md->path, NULL, 0), 0);
  KilnPipelineOpts po = {.out = stdout, .training = training && m->graph.loss >= 0, .level = level};
  assert_int_equal(kiln_pipeline_run(&m->graph, &po, stderr), 0);
}

static void bundled(void **state) {
  (void)state;
  printf("%-8s %-9s %12s %12s %12s %6s\n", "model", "graph", "planned", "naive", "live bound",
         "ratio");
  for (int k = 0; k < nmodels; k++)
    for (int training = 0; training < 2; training++) {
      KilnModel m;
      load(&models[k], &m, training, 2);
      if (training && !m.graph.grads) {
        kiln_model_free(&m);
        continue;
      }
      KilnPlan p;
      kiln_plan_build(&m.graph, &m.arena, training ? 2 : 0, &p);
      check_plan(&m.graph, &p);
      printf("%-8s %-9s %12lld %12lld %12lld %5.1f%%\n", models[k].name,
             training ? "training" : "inference", (long long)p.arena_bytes,
             (long long)p.arena_naive_bytes, (long long)p.mem.bound,
             100.0 * (double)p.arena_bytes / (double)p.arena_naive_bytes);
      kiln_model_free(&m);
    }
}

//
// The schedule.
//
static int64_t peak(const KilnGraph *g) {
  KilnArena a = {0};
  KilnMemReq r;
  KilnMemPlan p;
  kiln_memplan_request(g, &a, 0, &r);
  kiln_memplan(g, &r, &a, &p);
  kiln_arena_free(&a);
  return p.peak;
}

// Two branches, each a big value (B = f32[16,16]) reduced to a small one (S),
// written so that both big values are live at once. As written: at a2's step
// x, a, b and a2 are live, 3 B + S. Finishing a's branch first: a [1, 2],
// a2 [2, 5], b [3, 4], b2 [4, 5], out in a2's place: 2 B + 2 S.
static void schedule_branches(void **state) {
  (void)state;
  const int64_t B = 1024;
  T t;
  t_init(&t);
  int32_t x = input_rows(&t, "x", 16), a = op(&t, KILN_OP_SOFTMAX, "a", x, -1);
  int32_t b = op(&t, KILN_OP_LOG_SOFTMAX, "b", x, -1);
  int32_t sums[2], in[1];
  const char *name[2] = {"a2", "b2"};
  for (int k = 0; k < 2; k++) {
    in[0] = k ? b : a;
    sums[k] = kiln_graph_add(&t.g, KILN_OP_SUM, in, 1, name[k], (KilnLoc){0});
    t.g.nodes[sums[k]].attr = (KilnAttrs){.nints = 1, .ints = {1}};
    char err[256];
    assert_int_equal(kiln_graph_infer(&t.g, sums[k], err, sizeof err), 0);
  }
  int32_t out = op(&t, KILN_OP_ADD, "out", sums[0], sums[1]);
  kiln_graph_add_output(&t.g, out);
  assert_int_equal(peak(&t.g), 3 * B + S);
  assert_int_equal(kiln_pass_schedule(&t.g, stderr), 0);
  assert_int_equal(kiln_graph_verify(&t.g, stderr), 0);
  assert_int_equal(peak(&t.g), 2 * B + 2 * S);
  assert_string_equal(t.g.nodes[2].name, "a2");  // a's branch finishes first
  assert_string_equal(t.g.nodes[t.g.outputs[0]].name, "out");
  // A second run finds nothing better and leaves the order alone.
  assert_int_equal(kiln_pass_schedule(&t.g, stderr), 0);
  assert_string_equal(t.g.nodes[2].name, "a2");
  kiln_arena_free(&t.a);
}

// Names of the nodes in [lo, hi), sorted: the same set before and after.
static char **names(const KilnGraph *g, int lo, int hi) {
  char **v = calloc((size_t)(hi - lo + 1), sizeof *v);
  for (int i = lo; i < hi; i++) v[i - lo] = (char *)g->nodes[i].name;
  qsort(v, (size_t)(hi - lo), sizeof *v, (int (*)(const void *, const void *))strcmp);
  return v;
}

static int by_str(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

// On every bundled model's graphs before scheduling (-O1): the pass keeps a valid
// order (the verifier), the forward pass as the first nforward nodes, inputs and
// parameters in their order, every gradient attached to its parameter, and a peak
// no larger than before.
static void schedule_bundled(void **state) {
  (void)state;
  for (int k = 0; k < nmodels; k++)
    for (int training = 0; training < 2; training++) {
      KilnModel m;
      load(&models[k], &m, training, 1);
      KilnGraph *g = &m.graph;
      int n = g->nnodes, nf = g->grads ? g->nforward : n;
      char **fwd = names(g, 0, nf);
      qsort(fwd, (size_t)nf, sizeof *fwd, by_str);
      const char **src = calloc((size_t)n, sizeof *src);
      int nsrc = 0;
      for (int i = 0; i < n; i++) {
        KilnOp op = g->nodes[i].op;
        if (op == KILN_OP_INPUT || op == KILN_OP_PARAM) src[nsrc++] = g->nodes[i].name;
      }
      int64_t before = peak(g);
      assert_int_equal(kiln_pass_schedule(g, stderr), 0);
      assert_int_equal(kiln_graph_verify(g, stderr), 0);
      assert_int_equal(g->nnodes, n);
      assert_true(peak(g) <= before);
      char **after = names(g, 0, g->grads ? g->nforward : n);
      qsort(after, (size_t)nf, sizeof *after, by_str);
      for (int i = 0; i < nf; i++) assert_string_equal(fwd[i], after[i]);
      for (int i = 0, s = 0; i < n; i++) {
        KilnOp op = g->nodes[i].op;
        if (op == KILN_OP_INPUT || op == KILN_OP_PARAM) assert_string_equal(g->nodes[i].name, src[s++]);
      }
      // Gradients follow their parameters: look each one up by name.
      KilnModel ref;
      load(&models[k], &ref, training, 1);
      for (int i = 0; ref.graph.grads && i < ref.graph.nforward; i++) {
        if (ref.graph.grads[i] < 0) continue;
        int32_t pi = kiln_graph_find(g, ref.graph.nodes[i].name);
        assert_true(pi >= 0 && pi < g->nforward && g->grads[pi] >= 0);
        assert_string_equal(g->nodes[g->grads[pi]].name, ref.graph.nodes[ref.graph.grads[i]].name);
      }
      printf("%-8s %-9s schedule: peak %lld -> %lld\n", models[k].name,
             training ? "training" : "inference", (long long)before, (long long)peak(g));
      kiln_model_free(&ref);
      free(fwd);
      free(after);
      free(src);
      kiln_model_free(&m);
    }
}

static int by_name(const void *a, const void *b) {
  return strcmp(((const Model *)a)->name, ((const Model *)b)->name);
}

int main(void) {
  DIR *dir = opendir(MODELS);
  if (!dir) return 1;
  for (struct dirent *e; (e = readdir(dir)) && nmodels < 16;) {
    size_t len = strlen(e->d_name);
    if (len < 6 || strcmp(e->d_name + len - 5, ".yaml") != 0) continue;
    Model *md = &models[nmodels++];
    snprintf(md->name, sizeof md->name, "%.*s", (int)(len - 5), e->d_name);
    snprintf(md->path, sizeof md->path, "%s/%s", MODELS, e->d_name);
  }
  closedir(dir);
  qsort(models, (size_t)nmodels, sizeof models[0], by_name);
  if (nmodels < 4) {
    fprintf(stderr, "expected at least 4 bundled models in %s, found %d\n", MODELS, nmodels);
    return 1;
  }
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(chain),         cmocka_unit_test(chain_inplace),
      cmocka_unit_test(diamond),       cmocka_unit_test(outputs_kept),
      cmocka_unit_test(scratch),       cmocka_unit_test(scratch_early),
      cmocka_unit_test(view),          cmocka_unit_test(window),
      cmocka_unit_test(input_reuse),   cmocka_unit_test(base),
      cmocka_unit_test(bundled),       cmocka_unit_test(schedule_branches),
      cmocka_unit_test(schedule_bundled),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
