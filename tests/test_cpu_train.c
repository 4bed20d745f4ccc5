// Compiled training steps against the reference: for every bundled model (at
// reduced dims) and every optimizer, two steps of the generated train_step are
// compared with the interpreter's loss and gradients (double) and an optimizer
// written here from the definitions (PyTorch's SGD, Adam, AdamW).
//
// Tolerances: the loss and gradient norm in f32 are within 1e-4 relative of the
// double reference (sums over thousands of terms, ~1e-7 each). A parameter's
// update is compared tensor-wide: max |update - reference| <= 2e-3 max |reference
// update| (f32 gradients err by ~1e-5 relative, the update inherits it; Adam's
// g / sqrt(v) amplifies errors of near-zero gradients, so these tests use
// eps = 1e-3 to keep that amplification bounded).
#include <dlfcn.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "compiler/compiler.h"
#include "compiler/cpu/cpu.h"
#include "passes/passes.h"
#include "runtime/runtime.h"
#include "tests/helpers.h"

static char tmpdir[] = "/tmp/kiln-train-XXXXXX";

static double uniform(uint64_t *s, double lo, double hi) {
  *s = *s * 6364136223846793005ull + 1442695040888963407ull;
  return lo + (hi - lo) * (double)(*s >> 11) / 9007199254740992.0;
}

static const KilnModelDesc *compile(KilnModel *m, const KilnTrainDesc *td, int nstate, int level,
                                    void **dl) {
  KilnPipelineOpts po = {.out = stdout, .training = true, .level = level};
  assert_int_equal(kiln_pipeline_run(&m->graph, &po, stderr), 0);
  const KilnModelDesc *d = kiln_test_compile(&m->graph, &m->arena, nstate, td, 5, tmpdir, dl);
  assert_non_null(d->train_step);
  return d;
}

typedef struct {
  double *m, *v;  // optimizer state per element
} State;

// The reference optimizer step on one parameter (double precision).
static void reference_update(const KilnTrainDesc *t, double *p, const double *g, State *s,
                             int64_t n, double lr, double scale, int step) {
  double b1 = 1 - pow(t->beta1, step + 1), b2 = 1 - pow(t->beta2, step + 1);
  for (int64_t i = 0; i < n; i++) {
    double gi = g[i] * scale;
    if (t->weight_decay > 0 && t->optimizer != KILN_ABI_ADAMW) gi += t->weight_decay * p[i];
    if (t->optimizer == KILN_ABI_SGD) {
      double u = gi;
      if (t->momentum > 0) {
        s->m[i] = t->momentum * s->m[i] + gi;
        u = t->nesterov ? gi + t->momentum * s->m[i] : s->m[i];
      }
      p[i] -= lr * u;
    } else {
      s->m[i] = t->beta1 * s->m[i] + (1 - t->beta1) * gi;
      s->v[i] = t->beta2 * s->v[i] + (1 - t->beta2) * gi * gi;
      double u = (s->m[i] / b1) / (sqrt(s->v[i] / b2) + t->eps);
      if (t->optimizer == KILN_ABI_ADAMW) u += t->weight_decay * p[i];
      p[i] -= lr * u;
    }
  }
}

// One model, one optimizer, at graph level 0 (no clean-up, no fusion) and 2 (all
// passes): both must match the reference, so they match each other.
static void run_level(const char *file, const KilnDimOverride *ov, int nov, const KilnTrainDesc *td,
                      int level);

static void run_case(const char *file, const KilnDimOverride *ov, int nov, const KilnTrainDesc *td) {
  run_level(file, ov, nov, td, 0);
  run_level(file, ov, nov, td, 2);
}

static void run_level(const char *file, const KilnDimOverride *ov, int nov, const KilnTrainDesc *td,
                      int level) {
  char path[512];
  if (file[0] == '/') snprintf(path, sizeof path, "%s", file);
  else snprintf(path, sizeof path, "%s/models/%s", KILN_SOURCE_DIR, file);
  KilnDiag diag;
  kiln_diag_init(&diag, stderr);
  KilnModel m;
  assert_int_equal(kiln_model_load(&m, &diag, path, ov, nov), 0);
  int nstate = td->optimizer == KILN_ABI_SGD ? (td->momentum > 0) : 2;
  void *dl;
  const KilnModelDesc *d = compile(&m, td, nstate, level, &dl);
  const KilnGraph *g = &m.graph;
  KilnStatus st = {0};
  KilnCtx *c = kiln_ctx_create(d, 2, &st);
  if (!c) fail_msg("%s", st.msg);

  // Reference values: parameters as the runtime initialized them, random inputs.
  double **v = calloc((size_t)g->nnodes, sizeof *v);
  State *state = calloc((size_t)g->nnodes, sizeof *state);
  uint64_t seed = 2024;
  int pi = 0, ii = 0;
  for (int i = 0; i < g->nnodes; i++) {
    const KilnNode *n = &g->nodes[i];
    int64_t ne = kiln_node_numel(n);
    v[i] = calloc((size_t)(ne ? ne : 1), sizeof(double));
    if (n->op == KILN_OP_PARAM) {
      const float *w = (const float *)(c->weights + d->params[pi++].offset);
      for (int64_t j = 0; j < ne; j++) v[i][j] = w[j];
      state[i].m = calloc((size_t)ne, sizeof(double));
      state[i].v = calloc((size_t)ne, sizeof(double));
    } else if (n->op == KILN_OP_INPUT) {
      const KilnTensorDesc *t = &d->inputs[ii];
      void *dst = kiln_ctx_input(c, ii++);
      for (int64_t j = 0; j < ne; j++) {
        if (n->dtype == KILN_F32) {
          float x = (float)uniform(&seed, -1, 1);
          ((float *)dst)[j] = x;
          v[i][j] = x;
        } else {
          int32_t x = (int32_t)uniform(&seed, 0, (double)(t->bound ? t->bound : 2));
          ((int32_t *)dst)[j] = x;
          v[i][j] = x;
        }
      }
    }
  }
  KilnStepHeader *h = (KilnStepHeader *)c->arena;
  for (int step = 0; step < 2; step++) {
    double lr = td->lr;
    *h = (KilnStepHeader){.seed = 77 + (uint64_t)step, .step = step, .lr = (float)lr,
                          .bias1 = (float)(1 - pow(td->beta1, step + 1)),
                          .bias2 = (float)(1 - pow(td->beta2, step + 1)), .grad_scale = 1};
    float *before = malloc((size_t)d->weights_bytes);
    memcpy(before, c->weights, (size_t)d->weights_bytes);
    d->train_step(c->weights, c->arena, c);

    KilnInterpOpts o = {.training = true, .seed = 77 + (uint64_t)step};
    char err[256];
    if (kiln_interp_run(g, v, &o, err, sizeof err) != 0) fail_msg("%s", err);
    double loss = v[g->loss][0], sq = 0;
    for (int i = 0; i < g->nforward; i++)
      if (g->grads[i] >= 0)
        for (int64_t j = 0; j < kiln_node_numel(&g->nodes[i]); j++) sq += v[g->grads[i]][j] * v[g->grads[i]][j];
    double norm = sqrt(sq);
    if (!(fabs(h->loss - loss) <= 1e-4 * (1 + fabs(loss))))
      fail_msg("%s -O%d step %d: loss %.9g, reference %.9g", file, level, step, (double)h->loss, loss);
    // The norm is computed only when clipping reads it; without, the header keeps
    // the 0 it was given.
    double want = td->clip_grad_norm > 0 ? norm : 0;
    if (!(fabs(h->grad_norm - want) <= 1e-4 * (1 + want)))
      fail_msg("%s -O%d step %d: gradient norm %.9g, expected %.9g", file, level, step, h->grad_norm, want);
    double scale = td->clip_grad_norm > 0 ? fmin(1, td->clip_grad_norm / (norm + 1e-6)) : 1;
    pi = 0;
    for (int i = 0; i < g->nforward; i++) {
      const KilnNode *n = &g->nodes[i];
      if (n->op != KILN_OP_PARAM) continue;
      const KilnTensorDesc *pd = &d->params[pi++];
      int64_t ne = kiln_node_numel(n);
      double *old = malloc((size_t)ne * sizeof(double));
      memcpy(old, v[i], (size_t)ne * sizeof(double));
      reference_update(td, v[i], v[g->grads[i]], &state[i], ne, lr, scale, step);
      const float *now = (const float *)(c->weights + pd->offset);
      const float *was = (const float *)((const char *)before + pd->offset);
      double maxref = 0, maxerr = 0;
      for (int64_t j = 0; j < ne; j++) maxref = fmax(maxref, fabs(v[i][j] - old[j]));
      for (int64_t j = 0; j < ne; j++)
        maxerr = fmax(maxerr, fabs(((double)now[j] - was[j]) - (v[i][j] - old[j])));
      if (!(maxerr <= 2e-3 * maxref + 1e-9))
        fail_msg("%s -O%d step %d: parameter %s: update differs by %.3g (largest update %.3g)", file,
                 level, step, n->name, maxerr, maxref);
      // Continue from the compiled parameters, so the steps stay comparable.
      for (int64_t j = 0; j < ne; j++) v[i][j] = now[j];
      free(old);
    }
    free(before);
  }
  for (int i = 0; i < g->nnodes; i++) {
    free(v[i]);
    free(state[i].m);
    free(state[i].v);
  }
  free(v);
  free(state);
  kiln_ctx_destroy(c);
  dlclose(dl);
  kiln_model_free(&m);
}

static const KilnTrainDesc sgd = {.optimizer = KILN_ABI_SGD, .lr = 0.1, .momentum = 0.9,
                                  .nesterov = 1, .weight_decay = 0.01, .beta1 = 0.9, .beta2 = 0.999};
static const KilnTrainDesc plain_sgd = {.optimizer = KILN_ABI_SGD, .lr = 0.5, .beta1 = 0.9,
                                        .beta2 = 0.999};
static const KilnTrainDesc adam = {.optimizer = KILN_ABI_ADAM, .lr = 0.01, .beta1 = 0.9,
                                   .beta2 = 0.999, .eps = 1e-3, .weight_decay = 0.001,
                                   .clip_grad_norm = 0.5};
static const KilnTrainDesc adamw = {.optimizer = KILN_ABI_ADAMW, .lr = 0.003, .beta1 = 0.8,
                                    .beta2 = 0.99, .eps = 1e-3, .weight_decay = 0.1,
                                    .clip_grad_norm = 1.0};

static void mlp(void **state) {
  (void)state;
  run_case("mlp.yaml", NULL, 0, &plain_sgd);
  run_case("mlp.yaml", NULL, 0, &sgd);
  run_case("mlp.yaml", NULL, 0, &adam);
}

static void digits(void **state) {
  (void)state;
  run_case("digits.yaml", (KilnDimOverride[]){{"batch", 4}}, 1, &adamw);
}

static void lstm(void **state) {
  (void)state;
  run_case("lstm.yaml", (KilnDimOverride[]){{"batch", 2}, {"seq", 5}, {"hidden", 16}, {"embed", 8}}, 4,
           &adam);
}

// Two stacked layers (the second's input is the first's output, and its gradient
// flows back through both); 3 sequences, which the runtime splits 2 + 1 over its
// threads; hidden 36, 144 gate columns, which the weight phase takes in two
// blocks; and a single time step.
static const char lstm2_yaml[] =
    "kiln: 1\n"
    "name: lstm2\n"
    "dims: {batch: 3, seq: 5, vocab: 11, embed: 6, hidden: 36}\n"
    "inputs:\n"
    "  tokens:  {shape: [batch, seq], dtype: i32}\n"
    "  targets: {shape: [batch, seq], dtype: i32}\n"
    "graph:\n"
    "  - embedding: {vocab: vocab, dim: embed}\n"
    "  - lstm: {hidden: hidden, layers: 2}\n"
    "  - dense: {units: vocab, name: logits}\n"
    "outputs: [logits]\n"
    "loss: {cross_entropy: {logits: logits, labels: targets}}\n"
    "train: {optimizer: {adam: {lr: 0.01}}, steps: 1}\n";

static void lstm_layers(void **state) {
  (void)state;
  const char *path = kiln_test_join(tmpdir, "lstm2.yaml");
  kiln_test_write(path, lstm2_yaml, sizeof lstm2_yaml - 1);
  run_case(path, NULL, 0, &adam);
  run_case(path, (KilnDimOverride[]){{"seq", 1}}, 1, &adam);
}

static void gpt(void **state) {
  (void)state;
  run_case("gpt.yaml", (KilnDimOverride[]){{"batch", 2}, {"ctx", 6}, {"d", 16}}, 3, &adamw);
}

// Matmul epilogues that store a value the backward pass reads as well as their
// root's: fc's pre-activation (matmul, bias add; gelu in the same kernel) and
// fc2's bare matmul output (bias: false), both read again by gelu's gradient.
// 100 rows run through OpenBLAS in row blocks of 64 and 36, on two threads; the
// GPT case covers the generated matmul loop. A wrong stored value shows in the
// gradients, a wrong root in the loss.
static const char ffn_yaml[] =
    "kiln: 1\n"
    "name: ffn\n"
    "dims: {batch: 100, d: 48, hidden: 64}\n"
    "inputs:\n"
    "  x:     {shape: [batch, d]}\n"
    "  label: {shape: [batch], dtype: i32}\n"
    "graph:\n"
    "  - dense: {units: hidden, activation: gelu, name: fc}\n"
    "  - dense: {units: hidden, activation: gelu, bias: false, name: fc2}\n"
    "  - dense: {units: 3, name: logits}\n"
    "outputs: [logits]\n"
    "loss: {cross_entropy: {logits: logits, labels: label}}\n"
    "train: {optimizer: {adam: {lr: 0.01}}, steps: 1}\n";

// Values fused into a matmul's kernel and stored by it too, at -O2.
static int stored_epilogue_values(const char *path) {
  KilnDiag diag;
  kiln_diag_init(&diag, stderr);
  KilnModel m;
  assert_int_equal(kiln_model_load(&m, &diag, path, NULL, 0), 0);
  KilnPipelineOpts po = {.out = stdout, .training = true, .level = 2};
  assert_int_equal(kiln_pipeline_run(&m.graph, &po, stderr), 0);
  int stored = 0;
  for (int32_t i = 0; i < m.graph.nnodes; i++) stored += kiln_graph_fused_stored(&m.graph, i);
  kiln_model_free(&m);
  return stored;
}

static void epilogue_stores(void **state) {
  (void)state;
  const char *path = kiln_test_join(tmpdir, "ffn.yaml");
  kiln_test_write(path, ffn_yaml, sizeof ffn_yaml - 1);
  assert_int_equal(stored_epilogue_values(path), 2);  // fc.bias_add and fc2.matmul
  run_case(path, NULL, 0, &adam);
}

static int setup(void **state) {
  (void)state;
  return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown(void **state) {
  (void)state;
  char cmd[256];
  snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
  return system(cmd) == 0 ? 0 : -1;
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(mlp), cmocka_unit_test(digits),
                                     cmocka_unit_test(lstm), cmocka_unit_test(lstm_layers),
                                     cmocka_unit_test(gpt), cmocka_unit_test(epilogue_stores)};
  return cmocka_run_group_tests(tests, setup, teardown);
}
