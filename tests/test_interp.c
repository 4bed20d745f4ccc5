// The reference interpreter (ir/interp.c) on tiny cases computed by hand, and its
// errors. The NumPy comparison over every op and many shapes is interp_numpy
// (tests/interp_cases.c, tests/interp_check.py).
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ir/ir.h"

//
// Fixture: a graph in its own arena, one value array per node.
//
typedef struct {
  KilnArena arena;
  KilnGraph g;
  double *values[32];
  char err[512];
} T;

static int setup(void **state) {
  T *t = calloc(1, sizeof *t);
  kiln_graph_init(&t->g, &t->arena, "test");
  *state = t;
  return 0;
}

static int teardown(void **state) {
  T *t = *state;
  kiln_arena_free(&t->arena);
  free(t);
  return 0;
}

static const KilnLoc LOC = {"m.yaml", 3, 5};

// A node with the front end's attribute defaults.
static int32_t node(T *t, KilnOp op, const int32_t *in, int nin) {
  char name[16];
  snprintf(name, sizeof name, "n%d", t->g.nnodes);
  int32_t id = kiln_graph_add(&t->g, op, in, nin, name, LOC);
  assert_true(id < 32);
  KilnAttrs *a = &t->g.nodes[id].attr;
  for (const KilnAttrSpec *s = kiln_op(op)->attrs; s->name; s++) {
    char *p = (char *)a + s->offset;
    switch (s->type) {
    case KILN_ATTR_INT: *(int64_t *)p = (int64_t)s->dflt; break;
    case KILN_ATTR_FLOAT: *(double *)p = s->dflt; break;
    case KILN_ATTR_BOOL: *(bool *)p = s->dflt != 0; break;
    case KILN_ATTR_INTS: a->nints = 0; break;
    }
  }
  return id;
}

#define COUNT(...) (int)(sizeof((const int32_t[]){__VA_ARGS__}) / sizeof(int32_t))
#define NODE(t, op, ...) node(t, op, (const int32_t[]){__VA_ARGS__}, COUNT(__VA_ARGS__))

static KilnAttrs *attr(T *t, int32_t id) { return &t->g.nodes[id].attr; }

// An input of the given type and shape holding vals (numel of them).
static int32_t input(T *t, KilnDType dt, int rank, const int64_t *shape, const double *vals) {
  int32_t id = node(t, KILN_OP_INPUT, NULL, 0);
  KilnNode *n = &t->g.nodes[id];
  n->dtype = dt;
  n->rank = rank;
  memcpy(n->shape, shape, (size_t)rank * sizeof *shape);
  assert_int_equal(kiln_graph_infer(&t->g, id, t->err, sizeof t->err), 0);
  t->values[id] = kiln_arena_alloc(&t->arena, (size_t)kiln_node_numel(n) * sizeof(double));
  memcpy(t->values[id], vals, (size_t)kiln_node_numel(n) * sizeof(double));
  return id;
}

#define DIMS(...) (int)(sizeof((const int64_t[]){__VA_ARGS__}) / sizeof(int64_t)), \
                  (const int64_t[]){__VA_ARGS__}
#define VALS(...) (const double[]){__VA_ARGS__}
#define F32(t, dims, vals) input(t, KILN_F32, dims, vals)
#define I32(t, dims, vals) input(t, KILN_I32, dims, vals)

// Infers the nodes after the inputs, allocates their values and runs.
static int run(T *t, const KilnInterpOpts *o) {
  for (int32_t i = 0; i < t->g.nnodes; i++) {
    if (t->values[i]) continue;
    if (kiln_graph_infer(&t->g, i, t->err, sizeof t->err)) fail_msg("infer: %s", t->err);
    t->values[i] = kiln_arena_alloc(&t->arena, (size_t)kiln_node_numel(&t->g.nodes[i]) * sizeof(double));
  }
  return kiln_interp_run(&t->g, t->values, o, t->err, sizeof t->err);
}

static void expect(T *t, int32_t id, const double *want, int64_t n) {
  assert_int_equal(kiln_node_numel(&t->g.nodes[id]), n);
  for (int64_t i = 0; i < n; i++)
    if (!(fabs(t->values[id][i] - want[i]) <= 1e-14 * (1 + fabs(want[i]))))
      fail_msg("%s element %lld: got %.17g, want %.17g", kiln_op(t->g.nodes[id].op)->name,
               (long long)i, t->values[id][i], want[i]);
}

#define EXPECT(t, id, ...) \
  expect(t, id, VALS(__VA_ARGS__), (int64_t)(sizeof VALS(__VA_ARGS__) / sizeof(double)))

//
// Cases.
//
static void test_matmul_2x2(void **state) {
  T *t = *state;
  int32_t a = F32(t, DIMS(2, 2), VALS(1, 2, 3, 4)), b = F32(t, DIMS(2, 2), VALS(5, 6, 7, 8));
  int32_t ab = NODE(t, KILN_OP_MATMUL, a, b);
  int32_t abt = NODE(t, KILN_OP_MATMUL, a, b);
  attr(t, abt)->trans_b = true;
  int32_t atb = NODE(t, KILN_OP_MATMUL, a, b);
  attr(t, atb)->trans_a = true;
  assert_int_equal(run(t, NULL), 0);
  EXPECT(t, ab, 19, 22, 43, 50);
  EXPECT(t, abt, 17, 23, 39, 53);  // [[1,2],[3,4]] x [[5,7],[6,8]]
  EXPECT(t, atb, 26, 30, 38, 44);  // [[1,3],[2,4]] x [[5,6],[7,8]]
}

// softmax([0, ln 3]) = [1/4, 3/4]; along axis 0 of a column it is the same.
static void test_softmax(void **state) {
  T *t = *state;
  int32_t x = F32(t, DIMS(2), VALS(0, log(3)));
  int32_t col = F32(t, DIMS(2, 1), VALS(0, log(3)));
  int32_t s = NODE(t, KILN_OP_SOFTMAX, x), ls = NODE(t, KILN_OP_LOG_SOFTMAX, x);
  int32_t sc = NODE(t, KILN_OP_SOFTMAX, col);
  attr(t, sc)->axis = 0;
  int32_t big = F32(t, DIMS(2), VALS(1000, 1000 + log(3)));  // stable: no overflow
  int32_t sb = NODE(t, KILN_OP_SOFTMAX, big);
  assert_int_equal(run(t, NULL), 0);
  EXPECT(t, s, 0.25, 0.75);
  EXPECT(t, ls, log(0.25), log(0.75));
  EXPECT(t, sc, 0.25, 0.75);
  EXPECT(t, sb, 0.25, 0.75);
}

static void test_reduce(void **state) {
  T *t = *state;
  int32_t x = F32(t, DIMS(2, 3), VALS(1, 2, 3, 4, 5, 6));
  int32_t s0 = NODE(t, KILN_OP_SUM, x), m1 = NODE(t, KILN_OP_MEAN, x);
  int32_t mx = NODE(t, KILN_OP_MAX, x), all = NODE(t, KILN_OP_SUM, x);
  attr(t, s0)->nints = 1;
  attr(t, s0)->ints[0] = 0;
  attr(t, m1)->nints = 1;
  attr(t, m1)->ints[0] = -1;
  attr(t, m1)->keepdims = true;
  attr(t, mx)->nints = 1;
  attr(t, mx)->ints[0] = 1;
  int32_t nan = F32(t, DIMS(3), VALS(1, NAN, 2));
  int32_t mnan = NODE(t, KILN_OP_MAX, nan);
  assert_int_equal(run(t, NULL), 0);
  assert_true(isnan(t->values[mnan][0]));  // max propagates NaN, as numpy does
  EXPECT(t, s0, 5, 7, 9);
  EXPECT(t, m1, 2, 5);
  EXPECT(t, mx, 3, 6);
  EXPECT(t, all, 21);
}

// [1, 2, 3]: mean 2, biased variance 2/3, so x - mean over sqrt(2/3) is
// [-1, 0, 1] * sqrt(3/2); then gamma and beta.
static void test_layernorm(void **state) {
  T *t = *state;
  int32_t x = F32(t, DIMS(1, 3), VALS(1, 2, 3));
  int32_t g = F32(t, DIMS(3), VALS(1, 1, 2)), b = F32(t, DIMS(3), VALS(0, 0.5, 1));
  int32_t y = NODE(t, KILN_OP_LAYERNORM, x, g, b);
  attr(t, y)->eps = 0;
  assert_int_equal(run(t, NULL), 0);
  double k = sqrt(1.5);
  EXPECT(t, y, -k, 0.5, 2 * k + 1);
}

// One unit, two steps. w_ih weights only g, by atanh(1/2), so with x_0 = 1 and
// h = c = 0: i = f = o = 1/2, g = 1/2, c_0 = 1/4, h_0 = tanh(1/4) / 2. Step 1 has
// x_1 = 0 and w_hh feeds h_0 into o only (weight 2): z = [0, 0, 0, 2 h_0], so
// i = f = 1/2, g = 0, c_1 = c_0 / 2 = 1/8 and h_1 = sigmoid(2 h_0) tanh(1/8).
static void test_lstm_one_unit(void **state) {
  T *t = *state;
  int32_t x = F32(t, DIMS(1, 2, 1), VALS(1, 0));
  int32_t w_ih = F32(t, DIMS(1, 4), VALS(0, 0, atanh(0.5), 0));
  int32_t w_hh = F32(t, DIMS(1, 4), VALS(0, 0, 0, 2));
  int32_t b = F32(t, DIMS(4), VALS(0, 0, 0, 0));
  int32_t y = NODE(t, KILN_OP_LSTM, x, w_ih, w_hh, b);
  assert_int_equal(run(t, NULL), 0);
  double h0 = 0.5 * tanh(0.25);
  EXPECT(t, y, h0, 1 / (1 + exp(-2 * h0)) * tanh(0.125));
}

// T = 2, D = 1, one head: q = [0, ln 3], k = [0, 1], v = [4, 8]. Causal: row 0
// sees only key 0 (out 4); row 1 scores [0, ln 3] -> [1/4, 3/4] -> 1 + 6 = 7.
// Not causal: row 0 scores [0, 0] -> 6.
static void test_attention_causal(void **state) {
  T *t = *state;
  int32_t q = F32(t, DIMS(1, 2, 1), VALS(0, log(3)));
  int32_t k = F32(t, DIMS(1, 2, 1), VALS(0, 1)), v = F32(t, DIMS(1, 2, 1), VALS(4, 8));
  int32_t c = NODE(t, KILN_OP_ATTENTION, q, k, v), full = NODE(t, KILN_OP_ATTENTION, q, k, v);
  attr(t, c)->heads = attr(t, full)->heads = 1;
  attr(t, c)->causal = true;
  assert_int_equal(run(t, NULL), 0);
  EXPECT(t, c, 4, 7);
  EXPECT(t, full, 6, 7);
}

// Two heads of width 1 with D = 2: each column is its own attention.
static void test_attention_heads(void **state) {
  T *t = *state;
  int32_t q = F32(t, DIMS(1, 2, 2), VALS(0, 0, log(3), 0));
  int32_t k = F32(t, DIMS(1, 2, 2), VALS(0, 5, 1, 5)), v = F32(t, DIMS(1, 2, 2), VALS(4, 1, 8, 3));
  int32_t y = NODE(t, KILN_OP_ATTENTION, q, k, v);
  attr(t, y)->heads = 2;
  attr(t, y)->causal = true;
  assert_int_equal(run(t, NULL), 0);
  EXPECT(t, y, 4, 1, 7, 2);  // head 1: q = 0, equal scores -> mean of [1, 3]
}

static void test_losses(void **state) {
  T *t = *state;
  int32_t logits = F32(t, DIMS(2, 2), VALS(0, log(3), 5, 5));
  int32_t labels = I32(t, DIMS(2), VALS(1, 0));
  int32_t ce = NODE(t, KILN_OP_CROSS_ENTROPY, logits, labels);
  int32_t p = F32(t, DIMS(2), VALS(1, 3)), y = F32(t, DIMS(2), VALS(0, 1));
  int32_t mse = NODE(t, KILN_OP_MSE, p, y);
  int32_t x0 = F32(t, DIMS(1), VALS(0)), one = F32(t, DIMS(1), VALS(1));
  int32_t bce = NODE(t, KILN_OP_BCE, x0, one);
  assert_int_equal(run(t, NULL), 0);
  EXPECT(t, ce, (-log(0.75) + log(2)) / 2);
  EXPECT(t, mse, (1 + 4) / 2.0);
  EXPECT(t, bce, log(2));
}

static void test_layout(void **state) {
  T *t = *state;
  int32_t x = F32(t, DIMS(2, 3), VALS(1, 2, 3, 4, 5, 6));
  int32_t tr = NODE(t, KILN_OP_TRANSPOSE, x);
  int32_t sl = NODE(t, KILN_OP_SLICE, x);
  attr(t, sl)->start = 1;
  int32_t cat = NODE(t, KILN_OP_CONCAT, x, x);
  attr(t, cat)->axis = 0;
  int32_t col = F32(t, DIMS(2, 1), VALS(7, 8));
  int32_t bc = NODE(t, KILN_OP_BROADCAST, col);
  attr(t, bc)->nints = 2;
  attr(t, bc)->ints[0] = 2;
  attr(t, bc)->ints[1] = 2;
  int32_t sum = NODE(t, KILN_OP_ADD, x, col);
  int32_t rs = NODE(t, KILN_OP_RESHAPE, x);
  attr(t, rs)->nints = 1;
  attr(t, rs)->ints[0] = -1;
  assert_int_equal(run(t, NULL), 0);
  EXPECT(t, tr, 1, 4, 2, 5, 3, 6);
  EXPECT(t, sl, 2, 3, 5, 6);
  EXPECT(t, cat, 1, 2, 3, 4, 5, 6, 1, 2, 3, 4, 5, 6);
  EXPECT(t, bc, 7, 7, 8, 8);
  EXPECT(t, sum, 8, 9, 10, 12, 13, 14);
  EXPECT(t, rs, 1, 2, 3, 4, 5, 6);
}

static void test_embedding_const_where(void **state) {
  T *t = *state;
  int32_t ids = I32(t, DIMS(3), VALS(2, 0, 2));
  int32_t table = F32(t, DIMS(3, 2), VALS(1, 2, 3, 4, 5, 6));
  int32_t e = NODE(t, KILN_OP_EMBEDDING, ids, table);
  int32_t c = node(t, KILN_OP_CONST, NULL, 0);
  attr(t, c)->value = 2.5;
  int32_t cond = F32(t, DIMS(3), VALS(0, -1, NAN));
  int32_t a = F32(t, DIMS(3), VALS(1, 2, 3));
  int32_t w = NODE(t, KILN_OP_WHERE, cond, a, c);
  assert_int_equal(run(t, NULL), 0);
  EXPECT(t, e, 5, 6, 1, 2, 5, 6);
  EXPECT(t, c, 2.5);
  EXPECT(t, w, 2.5, 2, 3);  // nonzero (NaN too) selects a
}

// Identity outside training; in training every element is 0 or x / (1 - p), the
// mask is fixed by the seed and changes with it.
static void test_dropout(void **state) {
  T *t = *state;
  double ones[64];
  for (int i = 0; i < 64; i++) ones[i] = 1;
  int32_t x = F32(t, DIMS(64), ones);
  int32_t d = NODE(t, KILN_OP_DROPOUT, x);
  attr(t, d)->p = 0.5;
  assert_int_equal(run(t, &(KilnInterpOpts){.training = false, .seed = 1}), 0);
  for (int i = 0; i < 64; i++) assert_true(t->values[d][i] == 1);
  double first[64];
  assert_int_equal(run(t, &(KilnInterpOpts){.training = true, .seed = 1}), 0);
  int kept = 0;
  for (int i = 0; i < 64; i++) {
    assert_true(t->values[d][i] == 0 || t->values[d][i] == 2);
    kept += t->values[d][i] == 2;
    first[i] = t->values[d][i];
  }
  assert_true(kept > 10 && kept < 54);
  assert_int_equal(run(t, &(KilnInterpOpts){.training = true, .seed = 1}), 0);
  assert_memory_equal(first, t->values[d], sizeof first);
  assert_int_equal(run(t, &(KilnInterpOpts){.training = true, .seed = 2}), 0);
  assert_memory_not_equal(first, t->values[d], sizeof first);
}

// The first draw of the stream for seed 0 and key 3, from the definition:
// mix64(mix64(3) + GAMMA), whose top 53 bits decide element 0. The stream is the
// key's, not the node index's (here 1).
static void test_dropout_stream(void **state) {
  T *t = *state;
  int32_t x = F32(t, DIMS(1), VALS(1));
  int32_t d = NODE(t, KILN_OP_DROPOUT, x);
  assert_int_equal(d, 1);
  attr(t, d)->key = 3;
  uint64_t z = 3;  // mix64(3), by hand from SplitMix64's finaliser
  z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
  z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
  z ^= z >> 31;
  z += UINT64_C(0x9e3779b97f4a7c15);
  z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
  z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
  z ^= z >> 31;
  double u = (double)(z >> 11) * 0x1p-53;
  attr(t, d)->p = u;  // exactly at u: kept (u >= p)
  assert_int_equal(run(t, &(KilnInterpOpts){.training = true, .seed = 0}), 0);
  EXPECT(t, d, 1 / (1 - u));
  attr(t, d)->p = nextafter(u, 1);  // just above: dropped
  assert_int_equal(run(t, &(KilnInterpOpts){.training = true, .seed = 0}), 0);
  EXPECT(t, d, 0);
}

// Two dropouts with one key draw one mask wherever they sit (dropout's gradient is
// such a twin); another key draws another.
static void test_dropout_key(void **state) {
  T *t = *state;
  double ones[64];
  for (int i = 0; i < 64; i++) ones[i] = 1;
  int32_t x = F32(t, DIMS(64), ones);
  int32_t a = NODE(t, KILN_OP_DROPOUT, x), b = NODE(t, KILN_OP_DROPOUT, x);
  int32_t c = NODE(t, KILN_OP_DROPOUT, x);
  attr(t, a)->key = attr(t, b)->key = 7;
  attr(t, c)->key = 8;
  attr(t, a)->p = attr(t, b)->p = attr(t, c)->p = 0.5;
  assert_int_equal(run(t, &(KilnInterpOpts){.training = true, .seed = 5}), 0);
  assert_memory_equal(t->values[a], t->values[b], 64 * sizeof(double));
  assert_memory_not_equal(t->values[a], t->values[c], 64 * sizeof(double));
}

// Gradient ops on cases small enough to do by hand.
static void test_gradients(void **state) {
  T *t = *state;
  // Rows 2, 0, 2 of a 3-row table: row 2 collects two positions, row 1 none.
  int32_t ids = I32(t, DIMS(3), VALS(2, 0, 2));
  int32_t dy = F32(t, DIMS(3, 2), VALS(1, 2, 3, 4, 5, 6));
  int32_t eg = NODE(t, KILN_OP_EMBEDDING_GRAD, ids, dy);
  attr(t, eg)->size = 3;
  // softmax of [0, ln 3] is [1/4, 3/4]; minus the one-hot label, over 2 positions.
  int32_t logits = F32(t, DIMS(2, 2), VALS(0, log(3), 0, log(3)));
  int32_t labels = I32(t, DIMS(2), VALS(1, 0));
  int32_t ce = NODE(t, KILN_OP_CROSS_ENTROPY_GRAD, logits, labels);
  // x = [1, 3]: mean 2, variance 1, so with eps 0 xhat = [-1, 1]: dgamma = dy * xhat.
  int32_t x = F32(t, DIMS(1, 2), VALS(1, 3)), dln = F32(t, DIMS(1, 2), VALS(2, 5));
  int32_t dg = NODE(t, KILN_OP_LAYERNORM_DGAMMA, x, dln);
  attr(t, dg)->eps = 0;
  // clamp_grad passes dy on [lo, hi], bounds included.
  int32_t cx = F32(t, DIMS(4), VALS(-1, 0, 1, 2)), cdy = F32(t, DIMS(4), VALS(5, 6, 7, 8));
  int32_t cg = NODE(t, KILN_OP_CLAMP_GRAD, cx, cdy);
  attr(t, cg)->lo = 0;
  attr(t, cg)->hi = 1;
  assert_int_equal(run(t, NULL), 0);
  EXPECT(t, eg, 3, 4, 0, 0, 6, 8);
  EXPECT(t, ce, 0.125, -0.125, -0.375, 0.375);
  EXPECT(t, dg, -2, 5);
  EXPECT(t, cg, 0, 6, 7, 0);
}

//
// Errors.
//
static void test_bad_label(void **state) {
  T *t = *state;
  int32_t logits = F32(t, DIMS(2, 3), VALS(0, 0, 0, 0, 0, 0));
  int32_t labels = I32(t, DIMS(2), VALS(1, 3));
  NODE(t, KILN_OP_CROSS_ENTROPY, logits, labels);
  assert_int_equal(run(t, NULL), -1);
  assert_string_equal(t->err, "m.yaml:3:5: node %n2 (cross_entropy): label 3 at position [1] is "
                              "outside [0, 3)");
  t->values[labels][1] = -1;
  assert_int_equal(run(t, NULL), -1);
  assert_non_null(strstr(t->err, "label -1 at position [1]"));
}

static void test_bad_id(void **state) {
  T *t = *state;
  int32_t ids = I32(t, DIMS(2, 2), VALS(0, 1, 4, 1));
  int32_t table = F32(t, DIMS(4, 1), VALS(1, 2, 3, 4));
  NODE(t, KILN_OP_EMBEDDING, ids, table);
  assert_int_equal(run(t, NULL), -1);
  assert_string_equal(t->err, "m.yaml:3:5: node %n2 (embedding): id 4 at position [1,0] is "
                              "outside [0, 4)");
  t->values[ids][2] = -7;
  assert_int_equal(run(t, NULL), -1);
  assert_non_null(strstr(t->err, "id -7 at position [1,0]"));
}

int main(void) {
  const struct CMUnitTest tests[] = {
#define T_(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
      T_(test_matmul_2x2),     T_(test_softmax),         T_(test_reduce),
      T_(test_layernorm),      T_(test_lstm_one_unit),   T_(test_attention_causal),
      T_(test_attention_heads), T_(test_losses),         T_(test_layout),
      T_(test_embedding_const_where), T_(test_dropout),  T_(test_dropout_stream),
      T_(test_dropout_key),    T_(test_gradients),
      T_(test_bad_label),      T_(test_bad_id),
#undef T_
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
