// Gradient checks: for every differentiable op, the gradients the autodiff pass
// builds (evaluated by the reference interpreter, in double) against central
// finite differences of the loss.
//
// Each case makes the op's f32 operands parameters, feeds the op's output to
// mse(out, target) with a random target (or uses the op itself when it is a loss),
// and compares dloss/dparam element by element. With h = 1e-5 in double, the
// central difference errs by about h^2 |f'''| ~ 1e-10 plus rounding eps |f| / h
// ~ 1e-11, so |analytic - numeric| <= 1e-6 (1 + |numeric|) leaves a wide margin
// while still catching any wrong rule (a wrong rule errs by O(1)). Random inputs
// keep clear of kinks (relu at 0, clamp bounds, max ties) with probability ~1.
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "compiler/compiler.h"
#include "passes/passes.h"

#define H 1e-5
#define TOL 1e-6
#define MAX_CHECKED 24  // elements checked per parameter (spread over it)

static bool tested[KILN_OP_COUNT];

typedef struct {
  int rank;
  int64_t shape[KILN_MAX_RANK];
  KilnDType dt;  // f32: a parameter; i32: an input (ids, labels)
} Arg;

static double uniform(uint64_t *s, double lo, double hi) {
  *s = *s * 6364136223846793005ull + 1442695040888963407ull;
  return lo + (hi - lo) * (double)(*s >> 11) / 9007199254740992.0;
}

static double loss_of(const KilnGraph *g, double **v, const KilnInterpOpts *o) {
  char err[256];
  if (kiln_interp_run(g, v, o, err, sizeof err) != 0) fail_msg("interpreter: %s", err);
  return v[g->loss][0];
}

// Builds op(args) -> [mse against a target] as the loss, differentiates, and
// compares every parameter's gradient with finite differences.
static void check(KilnOp op, KilnAttrs attr, double lo, double hi, int nargs, const Arg *args) {
  KilnArena arena = {0};
  KilnGraph g;
  kiln_graph_init(&g, &arena, "grad");
  int32_t ids[KILN_MAX_INPUTS];
  for (int i = 0; i < nargs; i++) {
    char name[16];
    snprintf(name, sizeof name, "a%d", i);
    KilnOp src = args[i].dt == KILN_F32 ? KILN_OP_PARAM : KILN_OP_INPUT;
    ids[i] = kiln_graph_add(&g, src, NULL, 0, name, (KilnLoc){0});
    KilnNode *n = &g.nodes[ids[i]];
    n->dtype = args[i].dt;
    n->rank = args[i].rank;
    memcpy(n->shape, args[i].shape, sizeof(int64_t) * (size_t)n->rank);
  }
  char err[256];
  int32_t y = kiln_graph_add(&g, op, ids, nargs, "y", (KilnLoc){0});
  g.nodes[y].attr = attr;
  if (kiln_graph_infer(&g, y, err, sizeof err) != 0) fail_msg("%s: %s", kiln_op(op)->name, err);
  if (kiln_op_has(op, KILN_OPF_LOSS)) {
    g.loss = y;
  } else {
    int32_t t = kiln_graph_add(&g, KILN_OP_INPUT, NULL, 0, "target", (KilnLoc){0});
    g.nodes[t].dtype = KILN_F32;
    g.nodes[t].rank = g.nodes[y].rank;
    memcpy(g.nodes[t].shape, g.nodes[y].shape, sizeof(int64_t) * (size_t)g.nodes[y].rank);
    int32_t in[2] = {y, t};
    g.loss = kiln_graph_add(&g, KILN_OP_MSE, in, 2, "loss", (KilnLoc){0});
    assert_int_equal(kiln_graph_infer(&g, g.loss, err, sizeof err), 0);
  }
  int nfwd = g.nnodes;
  assert_int_equal(kiln_pass_autodiff(&g, stderr), 0);
  assert_int_equal(kiln_graph_verify(&g, stderr), 0);

  double **v = calloc((size_t)g.nnodes, sizeof *v);
  uint64_t seed = 99 + (uint64_t)op;
  for (int i = 0; i < g.nnodes; i++) {
    const KilnNode *n = &g.nodes[i];
    int64_t ne = kiln_node_numel(n);
    v[i] = calloc((size_t)(ne ? ne : 1), sizeof(double));
    if (i >= nfwd || (n->op != KILN_OP_PARAM && n->op != KILN_OP_INPUT)) continue;
    for (int64_t j = 0; j < ne; j++) {
      if (n->dtype == KILN_I32) {
        // Ids index an embedding table (its rows), labels a class: bound by the
        // other operand's first or last dim.
        const KilnNode *other = &g.nodes[ids[i == ids[0] ? 1 : 0]];
        int64_t bound = op == KILN_OP_EMBEDDING ? other->shape[0] : other->shape[other->rank - 1];
        v[i][j] = (double)(int64_t)uniform(&seed, 0, (double)bound);
      } else {
        v[i][j] = uniform(&seed, lo, hi);
      }
    }
  }
  KilnInterpOpts o = {.training = true, .seed = 7};
  for (int a = 0; a < nargs; a++) {
    if (args[a].dt != KILN_F32) continue;
    loss_of(&g, v, &o);  // the gradients at the unperturbed point
    int32_t p = ids[a], gid = g.grads[p];
    assert_true(gid >= 0);
    int64_t ne = kiln_node_numel(&g.nodes[p]);
    double *analytic = malloc((size_t)ne * sizeof(double));
    memcpy(analytic, v[gid], (size_t)ne * sizeof(double));
    int64_t stride = ne > MAX_CHECKED ? ne / MAX_CHECKED : 1;
    for (int64_t j = 0; j < ne; j += stride) {
      double x0 = v[p][j];
      v[p][j] = x0 + H;
      double up = loss_of(&g, v, &o);
      v[p][j] = x0 - H;
      double down = loss_of(&g, v, &o);
      v[p][j] = x0;
      double numeric = (up - down) / (2 * H);
      if (!(fabs(analytic[j] - numeric) <= TOL * (1 + fabs(numeric))))
        fail_msg("%s: d loss / d a%d[%lld]: autodiff %.12g, finite difference %.12g",
                 kiln_op(op)->name, a, (long long)j, analytic[j], numeric);
    }
    free(analytic);
  }
  for (int i = 0; i < g.nnodes; i++) free(v[i]);
  free(v);
  kiln_arena_free(&arena);
  tested[op] = true;
}

#define F(...) ((Arg){sizeof((int64_t[]){__VA_ARGS__}) / 8, {__VA_ARGS__}, KILN_F32})
#define I(...) ((Arg){sizeof((int64_t[]){__VA_ARGS__}) / 8, {__VA_ARGS__}, KILN_I32})
#define S ((Arg){0, {0}, KILN_F32})
#define CHECK(op, attr, lo, hi, ...)                                                   \
  do {                                                                                 \
    const Arg args_[] = {__VA_ARGS__};                                                 \
    check(op, attr, lo, hi, (int)(sizeof args_ / sizeof args_[0]), args_);             \
  } while (0)
#define NONE ((KilnAttrs){0})

static void elementwise(void **state) {
  (void)state;
  static const KilnOp any[] = {KILN_OP_NEG, KILN_OP_EXP, KILN_OP_RELU, KILN_OP_SIGMOID,
                               KILN_OP_TANH, KILN_OP_GELU, KILN_OP_SILU};
  for (size_t i = 0; i < sizeof any / sizeof any[0]; i++) CHECK(any[i], NONE, -2, 2, F(3, 5));
  CHECK(KILN_OP_LOG, NONE, 0.2, 3, F(7));
  CHECK(KILN_OP_SQRT, NONE, 0.2, 3, F(2, 3));
  CHECK(KILN_OP_RSQRT, NONE, 0.2, 3, F(4));
  CHECK(KILN_OP_POW, ((KilnAttrs){.exponent = 2}), -2, 2, F(5));
  CHECK(KILN_OP_POW, ((KilnAttrs){.exponent = 3.5}), 0.2, 2, F(5));
  CHECK(KILN_OP_CLAMP, ((KilnAttrs){.lo = -0.5, .hi = 0.5}), -2, 2, F(4, 6));
  CHECK(KILN_OP_DROPOUT, ((KilnAttrs){.p = 0.3, .key = 11}), -2, 2, F(6, 7));
  static const KilnOp bin[] = {KILN_OP_ADD, KILN_OP_SUB, KILN_OP_MUL, KILN_OP_DIV};
  for (size_t i = 0; i < 4; i++) {
    double lo = bin[i] == KILN_OP_DIV ? 0.5 : -2;
    CHECK(bin[i], NONE, lo, 2, F(3, 4), F(3, 4));
    CHECK(bin[i], NONE, lo, 2, F(3, 4), F(4));        // broadcast rows
    CHECK(bin[i], NONE, lo, 2, F(2, 1, 3), F(4, 1));  // both ways
    CHECK(bin[i], NONE, lo, 2, F(5), S);              // scalar
  }
  CHECK(KILN_OP_WHERE, NONE, -2, 2, F(3, 4), F(3, 4), F(4));
}

static void reductions(void **state) {
  (void)state;
  static const KilnOp red[] = {KILN_OP_SUM, KILN_OP_MEAN, KILN_OP_MAX};
  for (size_t i = 0; i < 3; i++) {
    CHECK(red[i], NONE, -2, 2, F(3, 4));
    CHECK(red[i], ((KilnAttrs){.nints = 1, .ints = {1}}), -2, 2, F(2, 5, 3));
    CHECK(red[i], ((KilnAttrs){.nints = 2, .ints = {0, 2}, .keepdims = true}), -2, 2, F(2, 3, 4));
  }
  CHECK(KILN_OP_SOFTMAX, ((KilnAttrs){.axis = -1}), -2, 2, F(3, 5));
  CHECK(KILN_OP_SOFTMAX, ((KilnAttrs){.axis = 0}), -2, 2, F(4, 3));
  CHECK(KILN_OP_LOG_SOFTMAX, ((KilnAttrs){.axis = -1}), -2, 2, F(3, 5));
  CHECK(KILN_OP_LOG_SOFTMAX, ((KilnAttrs){.axis = 1}), -2, 2, F(2, 4, 3));
  CHECK(KILN_OP_LAYERNORM, ((KilnAttrs){.eps = 1e-5}), -2, 2, F(4, 6), F(6), F(6));
  CHECK(KILN_OP_LAYERNORM, ((KilnAttrs){.eps = 1e-5}), -2, 2, F(2, 3, 5), F(5), F(5));
}

static void matmuls(void **state) {
  (void)state;
  CHECK(KILN_OP_MATMUL, NONE, -1, 1, F(3, 4), F(4, 5));
  CHECK(KILN_OP_MATMUL, ((KilnAttrs){.trans_a = true}), -1, 1, F(4, 3), F(4, 5));
  CHECK(KILN_OP_MATMUL, ((KilnAttrs){.trans_b = true}), -1, 1, F(3, 4), F(5, 4));
  CHECK(KILN_OP_MATMUL, ((KilnAttrs){.trans_a = true, .trans_b = true}), -1, 1, F(4, 3), F(5, 4));
  CHECK(KILN_OP_MATMUL, NONE, -1, 1, F(2, 3, 4), F(4, 5));   // a dense layer on a sequence
  CHECK(KILN_OP_MATMUL, ((KilnAttrs){.trans_b = true}), -1, 1, F(2, 3, 4), F(5, 4));
  CHECK(KILN_OP_MATMUL, NONE, -1, 1, F(2, 3, 4), F(2, 4, 2));  // batched
  CHECK(KILN_OP_MATMUL, NONE, -1, 1, F(2, 1, 3, 4), F(3, 4, 2));  // broadcast batch
}

static void layout(void **state) {
  (void)state;
  CHECK(KILN_OP_RESHAPE, ((KilnAttrs){.nints = 2, .ints = {6, 2}}), -1, 1, F(3, 4));
  CHECK(KILN_OP_TRANSPOSE, ((KilnAttrs){.nints = 3, .ints = {2, 0, 1}}), -1, 1, F(2, 3, 4));
  CHECK(KILN_OP_CONCAT, ((KilnAttrs){.axis = 1}), -1, 1, F(2, 3), F(2, 4), F(2, 1));
  CHECK(KILN_OP_SLICE, ((KilnAttrs){.axis = 1, .start = 1, .end = 3}), -1, 1, F(2, 5));
  CHECK(KILN_OP_SLICE, ((KilnAttrs){.axis = 0, .start = 0, .end = 2}), -1, 1, F(4, 3));
  CHECK(KILN_OP_SLICE, ((KilnAttrs){.axis = -1, .start = 2, .end = 4}), -1, 1, F(3, 4));
  CHECK(KILN_OP_BROADCAST, ((KilnAttrs){.nints = 3, .ints = {2, 3, 4}}), -1, 1, F(3, 1));
  CHECK(KILN_OP_EMBEDDING, NONE, -1, 1, I(2, 3), F(5, 4));
}

static void sequences(void **state) {
  (void)state;
  CHECK(KILN_OP_LSTM, NONE, -0.8, 0.8, F(2, 3, 4), F(4, 12), F(3, 12), F(12));
  CHECK(KILN_OP_ATTENTION, ((KilnAttrs){.heads = 2}), -1, 1, F(2, 3, 4), F(2, 3, 4), F(2, 3, 4));
  CHECK(KILN_OP_ATTENTION, ((KilnAttrs){.heads = 1, .causal = true}), -1, 1, F(1, 4, 3),
        F(1, 4, 3), F(1, 4, 3));
}

static void losses(void **state) {
  (void)state;
  CHECK(KILN_OP_CROSS_ENTROPY, NONE, -2, 2, F(4, 5), I(4));
  CHECK(KILN_OP_CROSS_ENTROPY, NONE, -2, 2, F(2, 3, 4), I(2, 3));
  CHECK(KILN_OP_MSE, NONE, -2, 2, F(3, 4), F(3, 4));
  CHECK(KILN_OP_BCE, NONE, -2, 2, F(3, 4), F(3, 4));
}

// Every differentiable op has a gradient check; a new one without fails here.
static void coverage(void **state) {
  (void)state;
  for (int op = 0; op < KILN_OP_COUNT; op++)
    if (kiln_op_has((KilnOp)op, KILN_OPF_DIFF) && !tested[op])
      fail_msg("op '%s' has no gradient check", kiln_ops[op].name);
}

// A whole model: the GPT graph differentiates, verifies, and every parameter
// gets a gradient of its own shape.
static void model_gradients(void **state) {
  (void)state;
  KilnDiag d;
  kiln_diag_init(&d, stderr);
  KilnModel m;
  assert_int_equal(kiln_model_load(&m, &d, KILN_SOURCE_DIR "/models/gpt.yaml",
                                   (KilnDimOverride[]){{"batch", 1}, {"ctx", 4}}, 2), 0);
  assert_int_equal(kiln_pass_autodiff(&m.graph, stderr), 0);
  assert_int_equal(kiln_graph_verify(&m.graph, stderr), 0);
  int params = 0;
  for (int i = 0; i < m.graph.nforward; i++) {
    if (m.graph.nodes[i].op != KILN_OP_PARAM) continue;
    const KilnNode *p = &m.graph.nodes[i], *gr = &m.graph.nodes[m.graph.grads[i]];
    assert_int_equal(p->rank, gr->rank);
    assert_memory_equal(p->shape, gr->shape, sizeof(int64_t) * (size_t)p->rank);
    params++;
  }
  assert_int_equal(params, 2 + 4 * 12 + 3);  // 2 embeddings, 12 per layer, final norm, head
  kiln_model_free(&m);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(elementwise), cmocka_unit_test(reductions), cmocka_unit_test(matmuls),
      cmocka_unit_test(layout),      cmocka_unit_test(sequences),  cmocka_unit_test(losses),
      cmocka_unit_test(coverage),    cmocka_unit_test(model_gradients),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
