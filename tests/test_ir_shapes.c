// The op table (ir/ops.c) and the shape rules (ir/shape.c): every op's shape rule
// on hand-computed shapes and on a bad case with its message; every elementwise
// op's scalar semantics against libm; FLOP counts; the shape helpers. The last
// test fails if an op lacks a passing case, a failing case or (when it has scalar
// semantics) a libm check, so a new table line needs new tests.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ir/ir.h"

static bool tested_ok[KILN_OP_COUNT], tested_err[KILN_OP_COUNT], tested_scalar[KILN_OP_COUNT];

//
// Fixture: a graph in its own arena; nodes get schema defaults as the front end
// gives them, then tests override attributes.
//
typedef struct {
  KilnArena arena;
  KilnGraph g;
  int count;
  char err[256];
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

static const KilnLoc LOC = {"test.yaml", 1, 1};

// What the front end does for attributes the model leaves out.
static void apply_defaults(KilnAttrs *a, KilnOp op) {
  for (const KilnAttrSpec *s = kiln_op(op)->attrs; s->name; s++) {
    char *p = (char *)a + s->offset;
    switch (s->type) {
    case KILN_ATTR_INT: *(int64_t *)p = (int64_t)s->dflt; break;
    case KILN_ATTR_FLOAT: *(double *)p = s->dflt; break;
    case KILN_ATTR_BOOL: *(bool *)p = s->dflt != 0; break;
    case KILN_ATTR_INTS: a->nints = 0; break;
    }
  }
}

static int32_t node(T *t, KilnOp op, const int32_t *in, int nin) {
  char name[16];
  snprintf(name, sizeof name, "n%d", t->count++);
  int32_t id = kiln_graph_add(&t->g, op, in, nin, name, LOC);
  apply_defaults(&t->g.nodes[id].attr, op);
  return id;
}

#define COUNT(...) (int)(sizeof((const int32_t[]){__VA_ARGS__}) / sizeof(int32_t))
#define NODE(t, op, ...) node(t, op, (const int32_t[]){__VA_ARGS__}, COUNT(__VA_ARGS__))
#define SET_INTS(a, ...)                                                            \
  do {                                                                              \
    const int64_t v_[] = {__VA_ARGS__};                                             \
    (a)->nints = (int)(sizeof v_ / sizeof v_[0]);                                   \
    memcpy((a)->ints, v_, sizeof v_);                                               \
  } while (0)

static KilnAttrs *attr(T *t, int32_t id) { return &t->g.nodes[id].attr; }

// A source node typed like "f32[10,5]" or "i32[]"; its shape is not inferred yet.
static int32_t source(T *t, KilnOp op, const char *spec) {
  int32_t id = node(t, op, NULL, 0);
  KilnNode *n = &t->g.nodes[id];
  n->dtype = strncmp(spec, "i32", 3) == 0 ? KILN_I32 : KILN_F32;
  for (const char *p = strchr(spec, '[') + 1; *p != ']'; p += *p == ',') {
    char *end;
    assert_true(n->rank < KILN_MAX_RANK);
    n->shape[n->rank++] = strtoll(p, &end, 10);
    p = end;
  }
  return id;
}

static void ok(T *t, int32_t id, const char *want) {
  KilnNode *n = &t->g.nodes[id];
  if (kiln_graph_infer(&t->g, id, t->err, sizeof t->err))
    fail_msg("%s: unexpected error: %s", kiln_op(n->op)->name, t->err);
  char got[160];
  kiln_shape_str(n, got, sizeof got);
  if (strcmp(got, want)) fail_msg("%s: got %s, want %s", kiln_op(n->op)->name, got, want);
  tested_ok[n->op] = true;
}

static void bad(T *t, int32_t id, const char *fragment) {
  KilnNode *n = &t->g.nodes[id];
  char got[160];
  if (kiln_graph_infer(&t->g, id, t->err, sizeof t->err) == 0)
    fail_msg("%s: want an error with \"%s\", got %s", kiln_op(n->op)->name, fragment,
             kiln_shape_str(n, got, sizeof got));
  if (!strstr(t->err, fragment))
    fail_msg("%s: error \"%s\" lacks \"%s\"", kiln_op(n->op)->name, t->err, fragment);
  tested_err[n->op] = true;
}

// An inferred input node.
static int32_t in(T *t, const char *spec) {
  int32_t id = source(t, KILN_OP_INPUT, spec);
  ok(t, id, spec);
  return id;
}

//
// Shape rules.
//
static void test_source(void **state) {
  T *t = *state;
  ok(t, source(t, KILN_OP_INPUT, "f32[10,5]"), "f32[10,5]");
  ok(t, source(t, KILN_OP_PARAM, "f32[3]"), "f32[3]");
  ok(t, source(t, KILN_OP_CONST, "f32[]"), "f32[]");
  ok(t, source(t, KILN_OP_INPUT, "i32[2,2,2,2,2,2]"), "i32[2,2,2,2,2,2]");
  bad(t, source(t, KILN_OP_INPUT, "f32[65536,65536]"), "tensor too large: input f32[65536,65536]");
  int32_t p = source(t, KILN_OP_PARAM, "f32[1]");
  t->g.nodes[p].rank = KILN_MAX_RANK + 1;
  bad(t, p, "param has rank 7; at most 6");
  bad(t, source(t, KILN_OP_CONST, "f32[3,0]"), "const f32[3,0] has a dimension <= 0");
}

// Every elementwise op: f32 in, same shape out; i32 refused.
static void test_unary(void **state) {
  T *t = *state;
  int32_t x = in(t, "f32[2,3]"), s = in(t, "f32[]"), i = in(t, "i32[4]");
  for (int op = 0; op < KILN_OP_COUNT; op++) {
    if (kiln_op(op)->fuse != KILN_FUSE_ELEMWISE || kiln_op_has(op, KILN_OPF_INTERNAL)) continue;
    int32_t a = NODE(t, op, x), b = NODE(t, op, s), c = NODE(t, op, i);
    if (op == KILN_OP_POW) attr(t, a)->exponent = attr(t, b)->exponent = 2;
    ok(t, a, "f32[2,3]");
    ok(t, b, "f32[]");
    bad(t, c, "expects f32, got i32[4]");
  }
}

static void test_unary_attrs(void **state) {
  T *t = *state;
  int32_t x = in(t, "f32[2,3]");
  int32_t c = NODE(t, KILN_OP_CLAMP, x);
  attr(t, c)->lo = 2;
  attr(t, c)->hi = 1;
  bad(t, c, "clamp needs min <= max, got min 2 and max 1");
  c = NODE(t, KILN_OP_CLAMP, x);
  attr(t, c)->hi = 1;
  ok(t, c, "f32[2,3]");
  int32_t d = NODE(t, KILN_OP_DROPOUT, x);
  attr(t, d)->p = 1;
  bad(t, d, "dropout probability p must be in [0, 1), got 1");
  d = NODE(t, KILN_OP_DROPOUT, x);
  attr(t, d)->p = -0.5;
  bad(t, d, "got -0.5");
  ok(t, NODE(t, KILN_OP_DROPOUT, x), "f32[2,3]");
}

static void test_binary(void **state) {
  T *t = *state;
  int32_t a = in(t, "f32[10,5]"), b = in(t, "f32[5]"), c = in(t, "f32[3]");
  int32_t d = in(t, "f32[3,1,5]"), e = in(t, "f32[4,1]"), s = in(t, "f32[]");
  int32_t i = in(t, "i32[2]"), f = in(t, "f32[2]");
  for (KilnOp op = KILN_OP_ADD; op <= KILN_OP_DIV; op++) {
    ok(t, NODE(t, op, a, b), "f32[10,5]");
    ok(t, NODE(t, op, b, a), "f32[10,5]");
    ok(t, NODE(t, op, d, e), "f32[3,4,5]");
    ok(t, NODE(t, op, s, a), "f32[10,5]");
    ok(t, NODE(t, op, i, i), "i32[2]");
    bad(t, NODE(t, op, a, c), "cannot broadcast f32[10,5] with f32[3]");
    bad(t, NODE(t, op, f, i), "operands differ in type: f32[2] and i32[2]");
  }
  int32_t wide = in(t, "f32[65536,1]"), tall = in(t, "f32[1,65536]");
  bad(t, NODE(t, KILN_OP_MUL, wide, tall), "tensor too large: mul result f32[65536,65536]");
}

static void test_where(void **state) {
  T *t = *state;
  int32_t c = in(t, "f32[4,1]"), a = in(t, "f32[3]"), s = in(t, "f32[]");
  ok(t, NODE(t, KILN_OP_WHERE, c, a, s), "f32[4,3]");
  ok(t, NODE(t, KILN_OP_WHERE, s, s, s), "f32[]");
  int32_t i = in(t, "i32[4]"), two = in(t, "f32[2]");
  bad(t, NODE(t, KILN_OP_WHERE, i, a, a), "where expects f32 condition, got i32[4]");
  bad(t, NODE(t, KILN_OP_WHERE, a, i, a), "where expects f32 a, got i32[4]");
  bad(t, NODE(t, KILN_OP_WHERE, two, a, two),
      "cannot broadcast where inputs f32[2], f32[3] and f32[2]");
}

static void test_reduce(void **state) {
  T *t = *state;
  const KilnOp ops[] = {KILN_OP_SUM, KILN_OP_MEAN, KILN_OP_MAX};
  int32_t x = in(t, "f32[2,3,4]"), s = in(t, "f32[]"), i = in(t, "i32[3]");
  for (int k = 0; k < 3; k++) {
    KilnOp op = ops[k];
    int32_t n = NODE(t, op, x);
    SET_INTS(attr(t, n), 1);
    ok(t, n, "f32[2,4]");
    n = NODE(t, op, x);
    SET_INTS(attr(t, n), 1);
    attr(t, n)->keepdims = true;
    ok(t, n, "f32[2,1,4]");
    n = NODE(t, op, x);
    SET_INTS(attr(t, n), -1, 0);
    ok(t, n, "f32[3]");
    ok(t, NODE(t, op, x), "f32[]");
    n = NODE(t, op, x);
    attr(t, n)->keepdims = true;
    ok(t, n, "f32[1,1,1]");
    ok(t, NODE(t, op, s), "f32[]");
    n = NODE(t, op, x);
    SET_INTS(attr(t, n), 3);
    bad(t, n, "axis 3 is out of range for f32[2,3,4]");
    n = NODE(t, op, x);
    SET_INTS(attr(t, n), 1, -2);
    bad(t, n, "axes name axis 1 twice (input f32[2,3,4])");
    bad(t, NODE(t, op, i), "expects f32, got i32[3]");
  }
}

static void test_softmax(void **state) {
  T *t = *state;
  int32_t x = in(t, "f32[2,5]"), s = in(t, "f32[]"), i = in(t, "i32[5]");
  for (KilnOp op = KILN_OP_SOFTMAX; op <= KILN_OP_LOG_SOFTMAX; op++) {
    ok(t, NODE(t, op, x), "f32[2,5]");
    int32_t n = NODE(t, op, x);
    attr(t, n)->axis = 0;
    ok(t, n, "f32[2,5]");
    n = NODE(t, op, x);
    attr(t, n)->axis = 2;
    bad(t, n, "axis 2 is out of range for f32[2,5]");
    bad(t, NODE(t, op, s), "axis -1 is out of range for f32[]");
    bad(t, NODE(t, op, i), "expects f32, got i32[5]");
  }
}

static void test_layernorm(void **state) {
  T *t = *state;
  int32_t x = in(t, "f32[2,3,8]"), g = in(t, "f32[8]"), b = in(t, "f32[8]");
  ok(t, NODE(t, KILN_OP_LAYERNORM, x, g, b), "f32[2,3,8]");
  int32_t g7 = in(t, "f32[7]"), bi = in(t, "i32[8]"), s = in(t, "f32[]");
  bad(t, NODE(t, KILN_OP_LAYERNORM, x, g7, b),
      "layernorm gamma must be f32[8] to match input f32[2,3,8], got f32[7]");
  bad(t, NODE(t, KILN_OP_LAYERNORM, x, g, bi),
      "beta must be f32[8] to match input f32[2,3,8], got i32[8]");
  bad(t, NODE(t, KILN_OP_LAYERNORM, s, g, b), "layernorm needs rank >= 1, got f32[]");
  int32_t n = NODE(t, KILN_OP_LAYERNORM, x, g, b);
  attr(t, n)->eps = -1;
  bad(t, n, "eps must be >= 0");
}

static void test_matmul(void **state) {
  T *t = *state;
  int32_t a = in(t, "f32[10,5]"), b = in(t, "f32[5,16]"), bt = in(t, "f32[16,5]");
  int32_t at = in(t, "f32[5,10]"), c = in(t, "f32[6,16]");
  ok(t, NODE(t, KILN_OP_MATMUL, a, b), "f32[10,16]");
  int32_t n = NODE(t, KILN_OP_MATMUL, a, bt);
  attr(t, n)->trans_b = true;
  ok(t, n, "f32[10,16]");
  n = NODE(t, KILN_OP_MATMUL, at, b);
  attr(t, n)->trans_a = true;
  ok(t, n, "f32[10,16]");
  n = NODE(t, KILN_OP_MATMUL, at, bt);
  attr(t, n)->trans_a = attr(t, n)->trans_b = true;
  ok(t, n, "f32[10,16]");
  int32_t ba = in(t, "f32[2,1,3,4]"), bb = in(t, "f32[5,4,6]"), b2 = in(t, "f32[4,6]");
  ok(t, NODE(t, KILN_OP_MATMUL, ba, bb), "f32[2,5,3,6]");
  ok(t, NODE(t, KILN_OP_MATMUL, ba, b2), "f32[2,1,3,6]");

  bad(t, NODE(t, KILN_OP_MATMUL, a, c),
      "matmul inner dimensions differ: f32[10,5] x f32[6,16] (5 vs 6)");
  n = NODE(t, KILN_OP_MATMUL, a, b);
  attr(t, n)->trans_b = true;
  bad(t, n, "matmul inner dimensions differ: f32[10,5] x f32[5,16]^T (5 vs 16)");
  int32_t v = in(t, "f32[5]"), i = in(t, "i32[5,16]");
  bad(t, NODE(t, KILN_OP_MATMUL, a, v), "matmul needs rank >= 2 on both sides: f32[10,5] x f32[5]");
  bad(t, NODE(t, KILN_OP_MATMUL, a, i), "matmul expects f32, got i32[5,16]");
  int32_t x3 = in(t, "f32[2,3,4]"), y3 = in(t, "f32[5,4,6]");
  bad(t, NODE(t, KILN_OP_MATMUL, x3, y3),
      "matmul batch dimensions do not broadcast: f32[2,3,4] x f32[5,4,6]");
}

static void test_reshape(void **state) {
  T *t = *state;
  int32_t x = in(t, "f32[10,5]"), one = in(t, "i32[1]");
  struct {
    int32_t src;
    int n;
    int64_t dims[3];
    const char *want;  // a shape, or a fragment of the error
  } cases[] = {
      {x, 2, {5, -1}, "f32[5,10]"},
      {x, 1, {50}, "f32[50]"},
      {x, 3, {-1, 1, 2}, "f32[25,1,2]"},
      {one, 0, {0}, "i32[]"},
      {x, 2, {7, -1}, "cannot reshape f32[10,5] (50 elements) to [7,-1]"},
      {x, 2, {-1, -1}, "to [-1,-1]"},
      {x, 2, {0, 50}, "to [0,50]"},
      {x, 2, {3, 5}, "cannot reshape f32[10,5] (50 elements) to [3,5]"},
      {x, 2, {-2, -25}, "to [-2,-25]"},
  };
  for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
    int32_t n = NODE(t, KILN_OP_RESHAPE, cases[k].src);
    attr(t, n)->nints = cases[k].n;
    memcpy(attr(t, n)->ints, cases[k].dims, sizeof cases[k].dims);
    if (strchr(cases[k].want, ' ')) bad(t, n, cases[k].want);
    else ok(t, n, cases[k].want);
  }
}

static void test_transpose(void **state) {
  T *t = *state;
  int32_t x = in(t, "f32[2,3,4]");
  int32_t n = NODE(t, KILN_OP_TRANSPOSE, x);
  ok(t, n, "f32[4,3,2]");
  assert_int_equal(attr(t, n)->nints, 3);  // the reversal is written back
  assert_int_equal(attr(t, n)->ints[0], 2);
  assert_int_equal(attr(t, n)->ints[2], 0);
  n = NODE(t, KILN_OP_TRANSPOSE, x);
  SET_INTS(attr(t, n), 0, 2, 1);
  ok(t, n, "f32[2,4,3]");
  n = NODE(t, KILN_OP_TRANSPOSE, x);
  SET_INTS(attr(t, n), -1, 0, 1);
  ok(t, n, "f32[4,2,3]");
  assert_int_equal(attr(t, n)->ints[0], 2);  // normalised
  ok(t, NODE(t, KILN_OP_TRANSPOSE, in(t, "i32[]")), "i32[]");

  n = NODE(t, KILN_OP_TRANSPOSE, x);
  SET_INTS(attr(t, n), 0, 0, 1);
  bad(t, n, "transpose perm [0,0,1] is not a permutation of the axes of f32[2,3,4]");
  n = NODE(t, KILN_OP_TRANSPOSE, x);
  SET_INTS(attr(t, n), 0, 1, 3);
  bad(t, n, "perm [0,1,3] is not a permutation");
  n = NODE(t, KILN_OP_TRANSPOSE, x);
  SET_INTS(attr(t, n), 1, 0);
  bad(t, n, "transpose perm [1,0] has 2 entries for f32[2,3,4]");
}

static void test_concat(void **state) {
  T *t = *state;
  int32_t a = in(t, "f32[2,3]"), b = in(t, "f32[2,5]"), c = in(t, "f32[4,3]");
  int32_t d = in(t, "f32[1,3]"), i = in(t, "i32[2,3]"), v = in(t, "f32[3]");
  ok(t, NODE(t, KILN_OP_CONCAT, a, b), "f32[2,8]");
  ok(t, NODE(t, KILN_OP_CONCAT, a), "f32[2,3]");
  int32_t n = NODE(t, KILN_OP_CONCAT, a, c, d);
  attr(t, n)->axis = 0;
  ok(t, n, "f32[7,3]");
  ok(t, NODE(t, KILN_OP_CONCAT, a, a, a, a, a, a, a, a), "f32[2,24]");

  bad(t, NODE(t, KILN_OP_CONCAT, a, c), "cannot concat f32[2,3] with f32[4,3] along axis 1");
  bad(t, NODE(t, KILN_OP_CONCAT, a, i), "cannot concat f32[2,3] with i32[2,3]");
  bad(t, NODE(t, KILN_OP_CONCAT, a, v), "cannot concat f32[2,3] with f32[3]");
  n = NODE(t, KILN_OP_CONCAT, a, a);
  attr(t, n)->axis = 2;
  bad(t, n, "concat axis 2 is out of range for f32[2,3]");
}

static int32_t slice(T *t, int32_t x, int64_t axis, int64_t start, int64_t end) {
  int32_t n = NODE(t, KILN_OP_SLICE, x);
  attr(t, n)->axis = axis;
  attr(t, n)->start = start;
  attr(t, n)->end = end;
  return n;
}

static void test_slice(void **state) {
  T *t = *state;
  int32_t x = in(t, "f32[4,10]");
  int32_t n = NODE(t, KILN_OP_SLICE, x);  // all defaults: the whole last axis
  ok(t, n, "f32[4,10]");
  assert_int_equal(attr(t, n)->axis, 1);
  assert_int_equal(attr(t, n)->start, 0);
  assert_int_equal(attr(t, n)->end, 10);
  ok(t, slice(t, x, -1, 2, 5), "f32[4,3]");
  n = slice(t, x, -1, -3, INT64_MAX);
  ok(t, n, "f32[4,3]");
  assert_int_equal(attr(t, n)->start, 7);
  assert_int_equal(attr(t, n)->end, 10);
  ok(t, slice(t, x, 1, 0, -1), "f32[4,9]");
  n = slice(t, x, 0, 1, 100);
  ok(t, n, "f32[3,10]");
  assert_int_equal(attr(t, n)->axis, 0);
  assert_int_equal(attr(t, n)->end, 4);

  bad(t, slice(t, x, 1, 10, 12), "slice start 10 is out of range for axis 1 of f32[4,10]");
  bad(t, slice(t, x, 1, -11, 3), "slice start -11 is out of range");
  bad(t, slice(t, x, 1, 5, 5), "slice is empty: start 5, end 5 along axis 1 of f32[4,10]");
  bad(t, slice(t, x, 1, 0, -10), "slice is empty: start 0, end -10");
  bad(t, slice(t, x, 1, INT64_MIN, INT64_MIN), "out of range");
  bad(t, slice(t, x, 2, 0, 1), "slice axis 2 is out of range for f32[4,10]");
}

static int32_t broadcast(T *t, int32_t x, int n, const int64_t *to) {
  int32_t id = NODE(t, KILN_OP_BROADCAST, x);
  attr(t, id)->nints = n;
  if (n) memcpy(attr(t, id)->ints, to, (size_t)n * sizeof *to);
  return id;
}

static void test_broadcast(void **state) {
  T *t = *state;
  int32_t x = in(t, "f32[3,1]"), s = in(t, "f32[]"), y = in(t, "f32[3,4]"), one = in(t, "i32[1]");
  ok(t, broadcast(t, x, 3, (int64_t[]){2, 3, 4}), "f32[2,3,4]");
  ok(t, broadcast(t, s, 1, (int64_t[]){5}), "f32[5]");
  ok(t, broadcast(t, y, 2, (int64_t[]){3, 4}), "f32[3,4]");
  ok(t, broadcast(t, one, 2, (int64_t[]){2, 2}), "i32[2,2]");
  bad(t, broadcast(t, y, 2, (int64_t[]){5, 4}), "cannot broadcast f32[3,4] to [5,4]");
  bad(t, broadcast(t, y, 1, (int64_t[]){4}), "cannot broadcast f32[3,4] to [4]");
  bad(t, broadcast(t, y, 0, NULL), "cannot broadcast f32[3,4] to []");
  bad(t, broadcast(t, x, 2, (int64_t[]){3, 0}), "broadcast result f32[3,0] has a dimension <= 0");
}

static void test_embedding(void **state) {
  T *t = *state;
  int32_t ids = in(t, "i32[4,7]"), tab = in(t, "f32[100,16]"), one = in(t, "i32[]");
  ok(t, NODE(t, KILN_OP_EMBEDDING, ids, tab), "f32[4,7,16]");
  ok(t, NODE(t, KILN_OP_EMBEDDING, one, tab), "f32[16]");
  int32_t fids = in(t, "f32[4]"), vec = in(t, "f32[100]"), deep = in(t, "i32[1,1,1,1,1,2]");
  bad(t, NODE(t, KILN_OP_EMBEDDING, fids, tab), "embedding ids must be i32, got f32[4]");
  bad(t, NODE(t, KILN_OP_EMBEDDING, ids, vec),
      "embedding table must be f32[vocab, dim], got f32[100]");
  bad(t, NODE(t, KILN_OP_EMBEDDING, deep, tab), "would have rank 7; at most 6");
}

static void test_lstm(void **state) {
  T *t = *state;
  int32_t x = in(t, "f32[2,5,3]"), wih = in(t, "f32[3,16]"), whh = in(t, "f32[4,16]");
  int32_t b = in(t, "f32[16]");
  ok(t, NODE(t, KILN_OP_LSTM, x, wih, whh, b), "f32[2,5,4]");
  int32_t wih4 = in(t, "f32[4,16]"), whh12 = in(t, "f32[4,12]"), b12 = in(t, "f32[12]");
  int32_t x2 = in(t, "f32[2,5]");
  bad(t, NODE(t, KILN_OP_LSTM, x, wih4, whh, b),
      "lstm weight_ih must be f32[3,16] for input f32[2,5,3] and hidden 4, got f32[4,16]");
  bad(t, NODE(t, KILN_OP_LSTM, x, wih, whh12, b),
      "lstm weight_hh must be f32[H, 4H], got f32[4,12]");
  bad(t, NODE(t, KILN_OP_LSTM, x, wih, b, b), "weight_hh must be f32[H, 4H], got f32[16]");
  bad(t, NODE(t, KILN_OP_LSTM, x, wih, whh, b12),
      "lstm bias must be f32[16] for hidden 4, got f32[12]");
  bad(t, NODE(t, KILN_OP_LSTM, x2, wih, whh, b),
      "lstm input must be f32[batch, time, features], got f32[2,5]");
}

static void test_attention(void **state) {
  T *t = *state;
  int32_t q = in(t, "f32[2,5,8]"), k4 = in(t, "f32[2,4,8]"), q2 = in(t, "f32[2,8]");
  int32_t n = NODE(t, KILN_OP_ATTENTION, q, q, q);
  attr(t, n)->heads = 2;
  attr(t, n)->causal = true;
  ok(t, n, "f32[2,5,8]");
  n = NODE(t, KILN_OP_ATTENTION, q, q, q);
  attr(t, n)->heads = 3;
  bad(t, n, "attention heads 3 must be >= 1 and divide dim 8 of f32[2,5,8]");
  bad(t, NODE(t, KILN_OP_ATTENTION, q, q, q), "attention heads 0 must be >= 1");
  n = NODE(t, KILN_OP_ATTENTION, q, k4, q);
  attr(t, n)->heads = 1;
  bad(t, n, "attention q, k and v must have one shape: f32[2,5,8], f32[2,4,8], f32[2,5,8]");
  n = NODE(t, KILN_OP_ATTENTION, q2, q2, q2);
  attr(t, n)->heads = 1;
  bad(t, n, "attention query must be f32[batch, time, dim], got f32[2,8]");
}

// Decoding ops: one position against caches; lstm from a state [2, B, H].
static void test_decode_ops(void **state) {
  T *t = *state;
  int32_t q = in(t, "f32[2,1,8]"), c = in(t, "f32[2,6,8]"), p = in(t, "i32[1,1]");
  int32_t q5 = in(t, "f32[2,5,8]"), c7 = in(t, "f32[2,6,7]"), pf = in(t, "f32[1,1]");
  int32_t n = NODE(t, KILN_OP_ATTENTION_DECODE, q, q, q, c, c, p);
  attr(t, n)->heads = 2;
  ok(t, n, "f32[2,1,8]");
  n = NODE(t, KILN_OP_ATTENTION_DECODE, q5, q5, q5, c, c, p);
  attr(t, n)->heads = 2;
  bad(t, n, "attention_decode takes one position at a time, got f32[2,5,8]");
  n = NODE(t, KILN_OP_ATTENTION_DECODE, q, q, q, c7, c7, p);
  attr(t, n)->heads = 2;
  bad(t, n, "attention_decode caches must be f32[2, positions, 8], got f32[2,6,7] and f32[2,6,7]");
  n = NODE(t, KILN_OP_ATTENTION_DECODE, q, q, q, c, c, pf);
  attr(t, n)->heads = 2;
  bad(t, n, "attention_decode position must be one i32, got f32[1,1]");
  int32_t x = in(t, "f32[2,1,3]"), wih = in(t, "f32[3,16]"), whh = in(t, "f32[4,16]");
  int32_t b = in(t, "f32[16]"), st = in(t, "f32[2,2,4]"), st3 = in(t, "f32[2,3,4]");
  ok(t, NODE(t, KILN_OP_LSTM_STEP, x, wih, whh, b, st), "f32[2,1,4]");
  bad(t, NODE(t, KILN_OP_LSTM_STEP, x, wih, whh, b, st3),
      "lstm_step state must be f32[2,2,4], got f32[2,3,4]");
}

static void test_cross_entropy(void **state) {
  T *t = *state;
  int32_t lg = in(t, "f32[4,10]"), lb = in(t, "i32[4]"), v = in(t, "f32[10]"), s = in(t, "i32[]");
  int32_t lg3 = in(t, "f32[2,3,10]"), lb3 = in(t, "i32[2,3]");
  ok(t, NODE(t, KILN_OP_CROSS_ENTROPY, lg, lb), "f32[]");
  ok(t, NODE(t, KILN_OP_CROSS_ENTROPY, v, s), "f32[]");
  ok(t, NODE(t, KILN_OP_CROSS_ENTROPY, lg3, lb3), "f32[]");
  int32_t lb10 = in(t, "i32[10]"), flb = in(t, "f32[4]"), ilg = in(t, "i32[4,10]");
  bad(t, NODE(t, KILN_OP_CROSS_ENTROPY, lg, lb10),
      "labels must be i32 with the logits' shape minus its last axis: "
      "logits f32[4,10], labels i32[10]");
  bad(t, NODE(t, KILN_OP_CROSS_ENTROPY, lg, flb), "logits f32[4,10], labels f32[4]");
  bad(t, NODE(t, KILN_OP_CROSS_ENTROPY, ilg, lb),
      "logits must be f32 with rank >= 1, got i32[4,10]");
  bad(t, NODE(t, KILN_OP_CROSS_ENTROPY, in(t, "f32[]"), s), "rank >= 1, got f32[]");
}

static void test_mse_bce(void **state) {
  T *t = *state;
  int32_t a = in(t, "f32[4,3]"), b = in(t, "f32[4]"), i = in(t, "i32[4,3]");
  ok(t, NODE(t, KILN_OP_MSE, a, a), "f32[]");
  ok(t, NODE(t, KILN_OP_BCE, a, a), "f32[]");
  bad(t, NODE(t, KILN_OP_MSE, a, b), "mse inputs must have one shape: f32[4,3] vs f32[4]");
  bad(t, NODE(t, KILN_OP_BCE, a, b), "binary_cross_entropy inputs must have one shape");
  bad(t, NODE(t, KILN_OP_MSE, a, i), "mse expects f32, got i32[4,3]");
  bad(t, NODE(t, KILN_OP_BCE, i, a), "binary_cross_entropy expects f32, got i32[4,3]");
}

// Gradient ops (made by autodiff): each with its forward operands' shapes.
static void test_grad_ops(void **state) {
  T *t = *state;
  int32_t x = in(t, "f32[2,3]"), y = in(t, "f32[3]"), i = in(t, "i32[2,3]");
  static const KilnOp elem[] = {KILN_OP_GELU_GRAD, KILN_OP_SILU_GRAD, KILN_OP_CLAMP_GRAD};
  for (int k = 0; k < 3; k++) {
    ok(t, NODE(t, elem[k], x, x), "f32[2,3]");
    bad(t, NODE(t, elem[k], x, y), "inputs must have one shape: f32[2,3] vs f32[3]");
    bad(t, NODE(t, elem[k], i, x), "expects f32, got i32[2,3]");
  }
  int32_t g3 = in(t, "f32[3]"), g4 = in(t, "f32[4]");
  ok(t, NODE(t, KILN_OP_LAYERNORM_DX, x, g3, x), "f32[2,3]");
  bad(t, NODE(t, KILN_OP_LAYERNORM_DX, x, g4, x), "gamma [D], dy like x: f32[2,3], f32[4], f32[2,3]");
  ok(t, NODE(t, KILN_OP_LAYERNORM_DGAMMA, x, x), "f32[3]");
  bad(t, NODE(t, KILN_OP_LAYERNORM_DGAMMA, x, y), "dy like x: f32[2,3], f32[3]");
  int32_t ids = in(t, "i32[2,5]"), dy = in(t, "f32[2,5,4]");
  int32_t e = NODE(t, KILN_OP_EMBEDDING_GRAD, ids, dy);
  attr(t, e)->size = 7;
  ok(t, e, "f32[7,4]");
  e = NODE(t, KILN_OP_EMBEDDING_GRAD, ids, x);
  attr(t, e)->size = 7;
  bad(t, e, "embedding_grad needs ids [...] and dy [..., D] and size >= 1: i32[2,5], f32[2,3]");
  int32_t lx = in(t, "f32[2,5,3]"), wih = in(t, "f32[3,16]"), whh = in(t, "f32[4,16]");
  int32_t b = in(t, "f32[16]"), ldy = in(t, "f32[2,5,4]");
  // 2*5*3 + 3*16 + 4*16 + 16 = 158
  ok(t, NODE(t, KILN_OP_LSTM_GRAD, lx, wih, whh, b, ldy), "f32[158]");
  bad(t, NODE(t, KILN_OP_LSTM_GRAD, lx, wih, whh, b, lx), "lstm_grad dy must be f32[2,5,4], got f32[2,5,3]");
  int32_t q = in(t, "f32[2,5,8]"), q4 = in(t, "f32[2,4,8]");
  int32_t a = NODE(t, KILN_OP_ATTENTION_GRAD, q, q, q, q);
  attr(t, a)->heads = 2;
  ok(t, a, "f32[2,5,24]");  // dq, dk, dv side by side
  a = NODE(t, KILN_OP_ATTENTION_GRAD, q, q, q, q4);
  attr(t, a)->heads = 2;
  bad(t, a, "attention_grad dy must be f32[2,5,8], got f32[2,4,8]");
  int32_t lg = in(t, "f32[4,10]"), lb = in(t, "i32[4]"), lb5 = in(t, "i32[5]");
  ok(t, NODE(t, KILN_OP_CROSS_ENTROPY_GRAD, lg, lb), "f32[4,10]");
  bad(t, NODE(t, KILN_OP_CROSS_ENTROPY_GRAD, lg, lb5), "logits f32[4,10], labels i32[5]");
}

//
// Scalar semantics against libm.
//
static const KilnAttrs sc_attrs = {.exponent = 2.5, .lo = -1, .hi = 2};

static double ref_gelu(double x) {
  return 0.5 * x * (1 + tanh(sqrt(2 / acos(-1.0)) * (x + 0.044715 * pow(x, 3))));
}

// Switches on int: ops without scalar semantics share the default.
static double ref(KilnOp op, const double *x) {
  switch ((int)op) {
  case KILN_OP_NEG: return -x[0];
  case KILN_OP_EXP: return exp(x[0]);
  case KILN_OP_LOG: return log(x[0]);
  case KILN_OP_SQRT: return sqrt(x[0]);
  case KILN_OP_RSQRT: return 1 / sqrt(x[0]);
  case KILN_OP_POW: return pow(x[0], 2.5);
  case KILN_OP_RELU: return x[0] > 0 ? x[0] : 0;
  case KILN_OP_SIGMOID: return 1 / (1 + exp(-x[0]));
  case KILN_OP_TANH: return tanh(x[0]);
  case KILN_OP_GELU: return ref_gelu(x[0]);
  case KILN_OP_SILU: return x[0] / (1 + exp(-x[0]));
  case KILN_OP_CLAMP: return fmin(fmax(x[0], -1), 2);
  case KILN_OP_ADD: return x[0] + x[1];
  case KILN_OP_SUB: return x[0] - x[1];
  case KILN_OP_MUL: return x[0] * x[1];
  case KILN_OP_DIV: return x[0] / x[1];
  case KILN_OP_WHERE: return x[0] ? x[1] : x[2];
  // Gradients: dy times the derivative, the derivative by a central difference of
  // the reference function (accurate to ~1e-10; checked with a looser bound).
  case KILN_OP_GELU_GRAD: return x[1] * (ref_gelu(x[0] + 1e-5) - ref_gelu(x[0] - 1e-5)) / 2e-5;
  case KILN_OP_SILU_GRAD: {
    double u = x[0] + 1e-5, d = x[0] - 1e-5;
    return x[1] * (u / (1 + exp(-u)) - d / (1 + exp(-d))) / 2e-5;
  }
  case KILN_OP_CLAMP_GRAD: return x[0] >= -1 && x[0] <= 2 ? x[1] : 0;
  default: fail_msg("no reference for %s: add one to ref()", kiln_op(op)->name);
  }
  return NAN;
}

static void check_close(KilnOp op, const double *x, double got, double want) {
  bool numeric = op == KILN_OP_GELU_GRAD || op == KILN_OP_SILU_GRAD;
  double tol = (numeric ? 1e-8 : 1e-13) * fmax(1, fabs(want));
  if (!(fabs(got - want) <= tol))
    fail_msg("%s(%g, %g, %g) = %.17g, want %.17g", kiln_op(op)->name, x[0], x[1], x[2], got, want);
}

// Positive points only for ops defined on x > 0.
static void test_scalar_semantics(void **state) {
  (void)state;
  static const double any[] = {-7, -2.5, -1, -0.3, 0, 0.25, 1, 1.5, 3, 10};
  static const double pos[] = {0.01, 0.25, 0.5, 1, 2, 9, 1e6};
  for (int op = 0; op < KILN_OP_COUNT; op++) {
    KilnScalarFn f = kiln_op(op)->scalar;
    if (!f) continue;
    bool domain =
        op == KILN_OP_LOG || op == KILN_OP_SQRT || op == KILN_OP_RSQRT || op == KILN_OP_POW;
    const double *pts = domain ? pos : any;
    int npts = domain ? 7 : 10;
    for (int i = 0; i < npts; i++) {
      for (int j = 0; j < npts; j++) {
        double x[3] = {pts[i], pts[j], pts[(i + j) % npts]};
        if (op == KILN_OP_DIV && x[1] == 0) continue;
        check_close(op, x, f(x, &sc_attrs), ref(op, x));
      }
    }
    tested_scalar[op] = true;
  }
}

// Hand-checked values and the edges the formulas above do not reach.
static void test_scalar_edges(void **state) {
  (void)state;
  KilnScalarFn gelu = kiln_op(KILN_OP_GELU)->scalar, sig = kiln_op(KILN_OP_SIGMOID)->scalar;
  KilnScalarFn where = kiln_op(KILN_OP_WHERE)->scalar, clamp = kiln_op(KILN_OP_CLAMP)->scalar;
  KilnScalarFn relu = kiln_op(KILN_OP_RELU)->scalar, silu = kiln_op(KILN_OP_SILU)->scalar;
  KilnAttrs a = {0};
  assert_true(gelu((double[]){0}, &a) == 0);
  // 0.5 (1 + tanh(sqrt(2/pi) * 1.044715)), worked by hand: 0.841191990607...
  assert_true(fabs(gelu((double[]){1}, &a) - 0.8411919906082768) < 1e-12);
  assert_true(fabs(gelu((double[]){-1}, &a) + 0.15880800939172324) < 1e-12);
  assert_true(fabs(gelu((double[]){30}, &a) - 30) < 1e-12);
  assert_true(fabs(gelu((double[]){-30}, &a)) < 1e-12);
  // No overflow into NaN far out.
  assert_true(sig((double[]){-800}, &a) == 0);
  assert_true(sig((double[]){800}, &a) == 1);
  assert_true(silu((double[]){-800}, &a) == 0);
  assert_true(isnan(relu((double[]){NAN}, &a)));
  assert_true(where((double[]){NAN, 1, 2}, &a) == 1);
  assert_true(where((double[]){-0.0, 1, 2}, &a) == 2);
  KilnAttrs open = {.lo = -HUGE_VAL, .hi = HUGE_VAL};
  assert_true(clamp((double[]){1e300}, &open) == 1e300);
  assert_true(isnan(clamp((double[]){NAN}, &sc_attrs)));
}

//
// FLOPs.
//
static int64_t flops(T *t, int32_t id) {
  assert_int_equal(kiln_graph_infer(&t->g, id, t->err, sizeof t->err), 0);
  return kiln_op(t->g.nodes[id].op)->flops(&t->g, &t->g.nodes[id]);
}

static void test_flops(void **state) {
  T *t = *state;
  int32_t x = in(t, "f32[10,5]"), r = in(t, "f32[5]");
  assert_int_equal(kiln_op(KILN_OP_INPUT)->flops(&t->g, &t->g.nodes[x]), 0);
  assert_int_equal(flops(t, NODE(t, KILN_OP_ADD, x, r)), 50);
  assert_int_equal(flops(t, NODE(t, KILN_OP_RELU, x)), 50);
  assert_int_equal(flops(t, NODE(t, KILN_OP_SIGMOID, x)), 200);
  assert_int_equal(flops(t, NODE(t, KILN_OP_GELU, x)), 400);
  assert_int_equal(flops(t, NODE(t, KILN_OP_WHERE, x, x, r)), 0);
  assert_int_equal(flops(t, NODE(t, KILN_OP_SUM, x)), 50);
  assert_int_equal(flops(t, NODE(t, KILN_OP_SOFTMAX, x)), 250);
  assert_int_equal(flops(t, NODE(t, KILN_OP_LAYERNORM, x, r, r)), 400);
  assert_int_equal(flops(t, NODE(t, KILN_OP_TRANSPOSE, x)), 0);
  // Losses count the elements they read, not their scalar result.
  assert_int_equal(flops(t, NODE(t, KILN_OP_MSE, x, x)), 150);
  assert_int_equal(flops(t, NODE(t, KILN_OP_BCE, x, x)), 400);
  assert_int_equal(flops(t, NODE(t, KILN_OP_CROSS_ENTROPY, x, in(t, "i32[10]"))), 250);

  int32_t a = in(t, "f32[2,10,5]"), b = in(t, "f32[5,16]");
  assert_int_equal(flops(t, NODE(t, KILN_OP_MATMUL, a, b)), 2 * 2 * 10 * 16 * 5);
  int32_t m = NODE(t, KILN_OP_MATMUL, in(t, "f32[5,10]"), b);
  t->g.nodes[m].attr.trans_a = true;
  assert_int_equal(flops(t, m), 2 * 10 * 16 * 5);

  // B=2 T=5 I=3 H=4: per step 2*2*(3+4)*16 + 10*2*4.
  int32_t lx = in(t, "f32[2,5,3]");
  int32_t l = NODE(t, KILN_OP_LSTM, lx, in(t, "f32[3,16]"), in(t, "f32[4,16]"), in(t, "f32[16]"));
  assert_int_equal(flops(t, l), 5 * (2 * 2 * 7 * 16 + 10 * 2 * 4));

  // B=2 T=5 D=8 heads=2: 4*B*T*T*D + 5*B*heads*T*T.
  int32_t q = in(t, "f32[2,5,8]");
  int32_t at = NODE(t, KILN_OP_ATTENTION, q, q, q);
  t->g.nodes[at].attr.heads = 2;
  assert_int_equal(flops(t, at), 4 * 2 * 25 * 8 + 5 * 2 * 2 * 25);
}

//
// The table and the helpers.
//
static void test_table(void **state) {
  (void)state;
  for (int op = 0; op < KILN_OP_COUNT; op++) {
    const KilnOpInfo *o = kiln_op(op);
    KilnOp back;
    assert_non_null(o->name);
    assert_true(kiln_op_lookup(o->name, &back));
    assert_int_equal(back, op);
    assert_non_null(o->shape);
    assert_non_null(o->flops);
    assert_non_null(o->attrs);
    assert_true(o->max_in == -1 || (o->min_in <= o->max_in && o->max_in <= KILN_MAX_INPUTS));
    // Elementwise ops other than random ones have scalar semantics; others have none.
    bool elem = o->fuse == KILN_FUSE_ELEMWISE || o->fuse == KILN_FUSE_BROADCAST;
    if (elem != (o->scalar != NULL) && !kiln_op_has(op, KILN_OPF_RANDOM))
      fail_msg("%s: scalar semantics do not match fusion kind %s", o->name,
               kiln_fuse_name(o->fuse));
    if (kiln_op_has(op, KILN_OPF_COMMUTE)) assert_int_equal(o->min_in, 2);
    for (const KilnAttrSpec *s = o->attrs; s->name; s++) {
      assert_true(s->offset < sizeof(KilnAttrs));
      for (const KilnAttrSpec *u = o->attrs; u != s; u++) assert_string_not_equal(u->name, s->name);
    }
  }
  KilnOp op;
  assert_true(kiln_op_lookup("binary_cross_entropy", &op));
  assert_int_equal(op, KILN_OP_BCE);
  assert_false(kiln_op_lookup("Matmul", &op));
  assert_false(kiln_op_lookup("", &op));
  assert_false(kiln_op_lookup("dense", &op));  // a layer, not an IR op
  assert_string_equal(kiln_dtype_name(KILN_F32), "f32");
  assert_string_equal(kiln_dtype_name(KILN_I32), "i32");
  const char *fuse[] = {"source", "elemwise", "broadcast", "injective", "reduce", "opaque"};
  for (int k = 0; k <= KILN_FUSE_OPAQUE; k++) assert_string_equal(kiln_fuse_name(k), fuse[k]);
  const char *init[] = {"zeros", "ones", "normal", "uniform", "xavier", "kaiming"};
  for (int k = 0; k <= KILN_INIT_KAIMING; k++) assert_string_equal(kiln_init_name(k), init[k]);
}

static const KilnAttrSpec *spec(KilnOp op, const char *name) {
  for (const KilnAttrSpec *s = kiln_op(op)->attrs; s->name; s++)
    if (strcmp(s->name, name) == 0) return s;
  fail_msg("%s has no attribute %s", kiln_op(op)->name, name);
  return NULL;
}

#define EXPECT_SPEC(op, nm, ty, field, req, dflt_)          \
  do {                                                       \
    const KilnAttrSpec *s_ = spec(op, nm);                   \
    assert_int_equal(s_->type, KILN_ATTR_##ty);              \
    assert_int_equal(s_->offset, offsetof(KilnAttrs, field)); \
    assert_int_equal(s_->required, req);                     \
    if (!(req)) assert_true(s_->dflt == (dflt_));            \
  } while (0)

// The YAML names and defaults the spec gives.
static void test_attr_schemas(void **state) {
  (void)state;
  EXPECT_SPEC(KILN_OP_POW, "exponent", FLOAT, exponent, true, 0);
  EXPECT_SPEC(KILN_OP_CLAMP, "min", FLOAT, lo, false, -HUGE_VAL);
  EXPECT_SPEC(KILN_OP_CLAMP, "max", FLOAT, hi, false, HUGE_VAL);
  EXPECT_SPEC(KILN_OP_DROPOUT, "p", FLOAT, p, false, 0.1);
  for (KilnOp op = KILN_OP_SUM; op <= KILN_OP_MAX; op++) {
    EXPECT_SPEC(op, "axes", INTS, ints, false, 0);
    EXPECT_SPEC(op, "keepdims", BOOL, keepdims, false, 0);
  }
  EXPECT_SPEC(KILN_OP_SOFTMAX, "axis", INT, axis, false, -1);
  EXPECT_SPEC(KILN_OP_LOG_SOFTMAX, "axis", INT, axis, false, -1);
  EXPECT_SPEC(KILN_OP_CONCAT, "axis", INT, axis, false, -1);
  EXPECT_SPEC(KILN_OP_LAYERNORM, "eps", FLOAT, eps, false, 1e-5);
  EXPECT_SPEC(KILN_OP_MATMUL, "transpose_a", BOOL, trans_a, false, 0);
  EXPECT_SPEC(KILN_OP_MATMUL, "transpose_b", BOOL, trans_b, false, 0);
  EXPECT_SPEC(KILN_OP_RESHAPE, "shape", INTS, ints, true, 0);
  EXPECT_SPEC(KILN_OP_BROADCAST, "shape", INTS, ints, true, 0);
  EXPECT_SPEC(KILN_OP_TRANSPOSE, "perm", INTS, ints, false, 0);
  EXPECT_SPEC(KILN_OP_SLICE, "axis", INT, axis, false, -1);
  EXPECT_SPEC(KILN_OP_SLICE, "start", INT, start, false, 0);
  EXPECT_SPEC(KILN_OP_ATTENTION, "heads", INT, heads, true, 0);
  EXPECT_SPEC(KILN_OP_ATTENTION, "causal", BOOL, causal, false, 0);
  // "To the end": past any dimension, and exact through a double, so that
  // (int64_t)dflt is defined.
  const KilnAttrSpec *end = spec(KILN_OP_SLICE, "end");
  assert_int_equal(end->offset, offsetof(KilnAttrs, end));
  assert_true(end->dflt > (double)KILN_MAX_ELEMS && end->dflt < 0x1p63);
  assert_true((double)(int64_t)end->dflt == end->dflt);
  assert_null(kiln_op(KILN_OP_ADD)->attrs[0].name);
}

static void test_broadcast_helper(void **state) {
  (void)state;
  int64_t out[KILN_MAX_RANK];
  int r;
  assert_int_equal(kiln_broadcast_shapes((int64_t[]){10, 5}, 2, (int64_t[]){5}, 1, out, &r), 0);
  assert_int_equal(r, 2);
  assert_int_equal(out[0], 10);
  assert_int_equal(out[1], 5);
  assert_int_equal(
      kiln_broadcast_shapes((int64_t[]){3, 1, 5}, 3, (int64_t[]){4, 1}, 2, out, &r), 0);
  assert_int_equal(r, 3);
  assert_true(out[0] == 3 && out[1] == 4 && out[2] == 5);
  assert_int_equal(kiln_broadcast_shapes(NULL, 0, (int64_t[]){7}, 1, out, &r), 0);
  assert_true(r == 1 && out[0] == 7);
  assert_int_equal(kiln_broadcast_shapes(NULL, 0, NULL, 0, out, &r), 0);
  assert_int_equal(r, 0);
  assert_int_equal(kiln_broadcast_shapes((int64_t[]){2}, 1, (int64_t[]){3}, 1, out, &r), -1);
  assert_int_equal(kiln_broadcast_shapes((int64_t[]){2, 3}, 2, (int64_t[]){4, 3}, 2, out, &r), -1);
  // The output may be one of the inputs.
  int64_t a[KILN_MAX_RANK] = {1, 6};
  assert_int_equal(kiln_broadcast_shapes(a, 2, (int64_t[]){2, 5, 1}, 3, a, &r), 0);
  assert_true(r == 3 && a[0] == 2 && a[1] == 5 && a[2] == 6);

  assert_int_equal(kiln_norm_axis(-1, 3), 2);
  assert_int_equal(kiln_norm_axis(-3, 3), 0);
  assert_int_equal(kiln_norm_axis(2, 3), 2);
  assert_int_equal(kiln_norm_axis(3, 3), -1);
  assert_int_equal(kiln_norm_axis(-4, 3), -1);
  assert_int_equal(kiln_norm_axis(0, 0), -1);
  assert_int_equal(kiln_norm_axis(INT64_MIN, 3), -1);

  char buf[160];
  assert_string_equal(kiln_dims_str((int64_t[]){10, 5}, 2, buf, sizeof buf), "[10,5]");
  assert_string_equal(kiln_dims_str(NULL, 0, buf, sizeof buf), "[]");
  assert_string_equal(kiln_dims_str((int64_t[]){10, 5}, 2, buf, 4), "[10");
  int64_t wide[KILN_MAX_RANK];
  for (int i = 0; i < KILN_MAX_RANK; i++) wide[i] = INT64_MIN;
  kiln_dims_str(wide, KILN_MAX_RANK, buf, sizeof buf);
  assert_int_equal(strlen(buf), 2 + KILN_MAX_RANK * 20 + KILN_MAX_RANK - 1);
  assert_int_equal(buf[strlen(buf) - 1], ']');
}

static void test_numel(void **state) {
  (void)state;
  assert_int_equal(kiln_numel(NULL, 0), 1);
  assert_int_equal(kiln_numel((int64_t[]){10, 5}, 2), 50);
  assert_int_equal(kiln_numel((int64_t[]){KILN_MAX_ELEMS}, 1), KILN_MAX_ELEMS);
  assert_int_equal(kiln_numel((int64_t[]){1 << 16, 1 << 15}, 2), KILN_MAX_ELEMS);
  assert_int_equal(kiln_numel((int64_t[]){KILN_MAX_ELEMS + 1}, 1), -1);
  assert_int_equal(kiln_numel((int64_t[]){1 << 16, 1 << 16}, 2), -1);
  assert_int_equal(kiln_numel((int64_t[]){INT64_MAX, INT64_MAX}, 2), -1);
  assert_int_equal(kiln_numel((int64_t[]){1 << 20, 1 << 20, 1 << 20, 1 << 20}, 4), -1);
  assert_int_equal(kiln_numel((int64_t[]){2, 2, 2, 2, 2, 2}, 6), 64);
  assert_int_equal(kiln_numel((int64_t[]){3, 0}, 2), -1);
  assert_int_equal(kiln_numel((int64_t[]){-1, -1}, 2), -1);
  assert_int_equal(kiln_numel((int64_t[]){1}, -1), -1);
}

static void test_name_problem(void **state) {
  (void)state;
  const char *good[] = {"x", "_a9", "h.0.ln1.weight", "A.b_c.D", "a."};
  for (size_t i = 0; i < sizeof good / sizeof good[0]; i++)
    if (kiln_name_problem(good[i]))
      fail_msg("'%s' refused: %s", good[i], kiln_name_problem(good[i]));
  const char *badn[] = {"", "9a", ".a", "a-b", "a b", "a..b", "a/b", "é"};
  for (size_t i = 0; i < sizeof badn / sizeof badn[0]; i++)
    if (!kiln_name_problem(badn[i])) fail_msg("'%s' accepted", badn[i]);
  assert_non_null(kiln_name_problem(NULL));
  char name[80];
  memset(name, 'a', sizeof name);
  name[64] = 0;
  assert_null(kiln_name_problem(name));
  name[64] = 'a';
  name[65] = 0;
  assert_non_null(strstr(kiln_name_problem(name), "64"));
}

// Runs last: every op has a passing shape case, a failing one, and a libm check
// of its scalar semantics if it has any.
static void test_every_op_covered(void **state) {
  (void)state;
  char missing[1024] = "";
  for (int op = 0; op < KILN_OP_COUNT; op++) {
    const char *why = !tested_ok[op]                                ? "passing shape case"
                      : !tested_err[op]                             ? "failing shape case"
                      : kiln_op(op)->scalar && !tested_scalar[op] ? "scalar check"
                                                                    : NULL;
    if (why)
      snprintf(missing + strlen(missing), sizeof missing - strlen(missing), " %s (%s)",
               kiln_op(op)->name, why);
  }
  if (missing[0]) fail_msg("ops without tests:%s", missing);
}

#define FIXTURE(f) cmocka_unit_test_setup_teardown(f, setup, teardown)

int main(void) {
  const struct CMUnitTest tests[] = {
      FIXTURE(test_source),      FIXTURE(test_unary),         FIXTURE(test_unary_attrs),
      FIXTURE(test_binary),      FIXTURE(test_where),         FIXTURE(test_reduce),
      FIXTURE(test_softmax),     FIXTURE(test_layernorm),     FIXTURE(test_matmul),
      FIXTURE(test_reshape),     FIXTURE(test_transpose),     FIXTURE(test_concat),
      FIXTURE(test_slice),       FIXTURE(test_broadcast),     FIXTURE(test_embedding),
      FIXTURE(test_lstm),        FIXTURE(test_attention),     FIXTURE(test_decode_ops), FIXTURE(test_cross_entropy),
      FIXTURE(test_mse_bce),     FIXTURE(test_grad_ops),     FIXTURE(test_flops),
      cmocka_unit_test(test_scalar_semantics),
      cmocka_unit_test(test_scalar_edges),
      cmocka_unit_test(test_table),
      cmocka_unit_test(test_attr_schemas),
      cmocka_unit_test(test_broadcast_helper),
      cmocka_unit_test(test_numel),
      cmocka_unit_test(test_name_problem),
      cmocka_unit_test(test_every_op_covered),  // last
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
