// The front end on valid models: defaults, naming, blocks, dims, constants,
// configuration, and several errors collected in one run. Expected shapes, names
// and counts are worked out by hand from the model text.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "compiler/compiler.h"

static char errbuf[1 << 16];

// Loads text as a model from a temporary file; returns load's result.
static int load(KilnModel *m, const char *text, const KilnDimOverride *ov, int nov) {
  char path[] = "/tmp/kiln-front-XXXXXX";
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
  close(fd);
  FILE *mem = fmemopen(errbuf, sizeof errbuf, "w");
  KilnDiag d;
  kiln_diag_init(&d, mem);
  int rc = kiln_model_load(m, &d, path, ov, nov);
  fclose(mem);
  unlink(path);
  if (rc != 0) print_message("%s", errbuf);
  return rc;
}

static const KilnNode *find(const KilnModel *m, const char *name) {
  int32_t id = kiln_graph_find(&m->graph, name);
  if (id < 0) fail_msg("no node '%s'", name);
  return &m->graph.nodes[id];
}

static void expect_shape(const KilnModel *m, const char *name, const char *want) {
  char buf[128];
  const KilnNode *n = find(m, name);
  assert_string_equal(kiln_shape_str(n, buf, sizeof buf), want);
}

static const char *mlp =
    "kiln: 1\n"
    "name: mlp\n"
    "dims: {batch: 10, hidden: 16, wide: 2*hidden}\n"
    "inputs:\n"
    "  x: {shape: [batch, 5]}\n"
    "  label: {shape: [batch], dtype: i32}\n"
    "graph:\n"
    "  - dense: {units: hidden, activation: sigmoid}\n"
    "  - dense: {units: wide}\n"
    "  - relu\n"
    "  - dense: {units: 2, name: logits, bias: false}\n"
    "outputs: [logits]\n"
    "loss: {cross_entropy: {logits: logits, labels: label}}\n"
    "train: {optimizer: {sgd: {lr: 0.5, momentum: 0.9, nesterov: true}}, epochs: 200, seed: 42}\n";

static void defaults_and_names(void **state) {
  (void)state;
  KilnModel m;
  assert_int_equal(load(&m, mlp, NULL, 0), 0);
  assert_string_equal(m.name, "mlp");
  // `in` defaults to the previous node; the first node reads the first input.
  const KilnNode *mm = find(&m, "dense_0.matmul");
  assert_string_equal(m.graph.nodes[mm->in[0]].name, "x");
  expect_shape(&m, "dense_0.weight", "f32[5,16]");
  expect_shape(&m, "dense_0", "f32[10,16]");
  assert_int_equal(find(&m, "dense_0")->op, KILN_OP_SIGMOID);
  expect_shape(&m, "dense_1.weight", "f32[16,32]");  // wide = 2*hidden
  assert_int_equal(find(&m, "relu_0")->op, KILN_OP_RELU);
  // bias: false leaves the matmul as the named output and creates no bias.
  assert_int_equal(find(&m, "logits")->op, KILN_OP_MATMUL);
  assert_int_equal(kiln_graph_find(&m.graph, "logits.bias"), -1);
  assert_int_equal(m.graph.noutputs, 1);
  assert_int_equal(m.graph.nodes[m.graph.loss].rank, 0);
  // 5*16 + 16 + 16*32 + 32 + 32*2 = 704
  assert_int_equal(kiln_graph_param_count(&m.graph), 704);
  assert_true(m.train.present);
  assert_int_equal(m.train.opt, KILN_OPT_SGD);
  assert_true(m.train.nesterov);
  assert_int_equal(m.train.epochs, 200);
  assert_int_equal(m.train.seed, 42);
  kiln_model_free(&m);
}

static void dim_override(void **state) {
  (void)state;
  KilnModel m;
  KilnDimOverride ov[] = {{"batch", 1}, {"hidden", 8}};
  assert_int_equal(load(&m, mlp, ov, 2), 0);
  expect_shape(&m, "x", "f32[1,5]");
  expect_shape(&m, "dense_0.weight", "f32[5,8]");
  expect_shape(&m, "dense_1.weight", "f32[8,16]");  // wide follows the override
  assert_true(m.dims.dims[0].overridden);
  assert_false(m.dims.dims[2].overridden);
  kiln_model_free(&m);
}

static const char *gpt =
    "kiln: 1\n"
    "name: tiny\n"
    "dims: {b: 2, t: 8, d: 16, v: 11}\n"
    "inputs: {tok: {shape: [b, t], dtype: i32}, tgt: {shape: [b, t], dtype: i32}}\n"
    "blocks:\n"
    "  layer:\n"
    "    inputs: [x]\n"
    "    params: {gain: {shape: [d], init: ones}}\n"
    "    graph:\n"
    "      - layernorm: {name: ln}\n"
    "      - attention: {heads: 4, causal: true, name: attn}\n"
    "      - mul: {in: [attn, gain]}\n"
    "      - add: {in: [x, mul_0], name: out}\n"
    "    output: out\n"
    "graph:\n"
    "  - embedding: {vocab: v, dim: d, name: wte}\n"
    "  - position_embedding: {name: wpe}\n"
    "  - layer: {repeat: 3, name: h}\n"
    "  - mul: {in: [h, 0.5], name: half}\n"
    "  - dense: {units: v, name: logits}\n"
    "outputs: [logits]\n"
    "loss: {cross_entropy: {logits: logits, labels: tgt}}\n";

static void blocks_and_constants(void **state) {
  (void)state;
  KilnModel m;
  assert_int_equal(load(&m, gpt, NULL, 0), 0);
  expect_shape(&m, "wte", "f32[2,8,16]");
  expect_shape(&m, "wpe.weight", "f32[8,16]");
  for (int i = 0; i < 3; i++) {
    char name[64];
    snprintf(name, sizeof name, "h.%d.attn.qkv.weight", i);
    expect_shape(&m, name, "f32[16,48]");
    snprintf(name, sizeof name, "h.%d.gain", i);
    expect_shape(&m, name, "f32[16]");
    assert_int_equal(find(&m, name)->attr.init.kind, KILN_INIT_ONES);
  }
  // Copies chain: copy 1's layernorm reads copy 0's output.
  const KilnNode *ln1 = find(&m, "h.1.ln");
  assert_string_equal(m.graph.nodes[ln1->in[0]].name, "h.0.out");
  assert_true(find(&m, "h.0.attn.attn")->attr.causal);
  assert_int_equal(find(&m, "h.0.attn.attn")->attr.heads, 4);
  // The call's name refers to the last copy's output.
  const KilnNode *half = find(&m, "half");
  assert_string_equal(m.graph.nodes[half->in[0]].name, "h.2.out");
  const KilnNode *c = &m.graph.nodes[half->in[1]];
  assert_int_equal(c->op, KILN_OP_CONST);
  assert_int_equal(c->rank, 0);
  assert_true(c->attr.value == 0.5);
  expect_shape(&m, "logits", "f32[2,8,11]");
  kiln_model_free(&m);
}

static void explicit_params_and_primitives(void **state) {
  (void)state;
  KilnModel m;
  const char *text =
      "kiln: 1\n"
      "name: prims\n"
      "inputs: {a: {shape: [3, 4, 5]}}\n"
      "params:\n"
      "  w: {shape: [6, 5], init: {normal: {std: 0.5}}}\n"
      "  u: {shape: [2, 3], init: {uniform: {low: -1, high: 2}}}\n"
      "graph:\n"
      "  - matmul: {in: [a, w], transpose_b: true, name: y}\n"      // [3,4,6]
      "  - transpose: {perm: [2, 0, 1], name: t}\n"                  // [6,3,4]
      "  - reshape: {shape: [6, -1], name: r}\n"                     // [6,12]
      "  - slice: {axis: 1, start: 2, end: -2, name: s}\n"           // [6,8]
      "  - concat: {in: [s, s], axis: 0, name: c}\n"                 // [12,8]
      "  - sum: {axes: [1], keepdims: true, name: k}\n"              // [12,1]
      "  - softmax: {in: c, name: p}\n"                              // [12,8]
      "  - pow: {exponent: 2, name: sq}\n"
      "  - where: {in: [sq, p, 0], name: w2}\n"
      "  - mean: {name: m}\n"                                        // []
      "outputs: [m, k]\n"
      "loss: {mse: {pred: w2, target: p}}\n";
  assert_int_equal(load(&m, text, NULL, 0), 0);
  expect_shape(&m, "y", "f32[3,4,6]");
  expect_shape(&m, "t", "f32[6,3,4]");
  expect_shape(&m, "r", "f32[6,12]");
  expect_shape(&m, "s", "f32[6,8]");
  expect_shape(&m, "c", "f32[12,8]");
  expect_shape(&m, "k", "f32[12,1]");
  expect_shape(&m, "w2", "f32[12,8]");
  expect_shape(&m, "m", "f32[]");
  const KilnNode *w = find(&m, "w");
  assert_int_equal(w->attr.init.kind, KILN_INIT_NORMAL);
  assert_true(w->attr.init.a == 0.5 && w->attr.init.b == 0);
  const KilnNode *u = find(&m, "u");
  assert_true(u->attr.init.a == -1 && u->attr.init.b == 2);
  assert_int_equal(m.graph.noutputs, 2);
  // matmul FLOPs: 2 * (3*4) * 6 * 5 = 720
  assert_int_equal(kiln_op(KILN_OP_MATMUL)->flops(&m.graph, find(&m, "y")), 720);
  kiln_model_free(&m);
}

static void several_errors(void **state) {
  (void)state;
  KilnModel m;
  const char *text =
      "kiln: 1\n"
      "name: bad\n"
      "inputs: {x: {shape: [4, 3]}}\n"
      "graph:\n"
      "  - dense: {unit: 3}\n"              // unknown attribute
      "  - relu: {in: nothere}\n"           // dangling name
      "  - sigmoid: {in: x, name: z}\n"
      "  - dens: {units: 2, in: z}\n"       // unknown op
      "outputs: [z]\n";
  assert_int_not_equal(load(&m, text, NULL, 0), 0);
  assert_non_null(strstr(errbuf, ":5:13: error: unknown attribute 'unit' of 'dense'"));
  assert_non_null(strstr(errbuf, "did you mean 'units'?"));
  assert_non_null(strstr(errbuf, ":6:16: error: unknown value 'nothere'"));
  assert_non_null(strstr(errbuf, ":8:5: error: unknown op 'dens'"));
  assert_non_null(strstr(errbuf, "did you mean 'dense'?"));
  kiln_model_free(&m);
}

static void data_config(void **state) {
  (void)state;
  KilnModel m;
  const char *text =
      "kiln: 1\n"
      "name: d\n"
      "inputs: {x: {shape: [4, 3]}, y: {shape: [4], dtype: i32}}\n"
      "graph: [{dense: {units: 2, name: o}}]\n"
      "outputs: [o]\n"
      "loss: {cross_entropy: {logits: o, labels: y}}\n"
      "train: {optimizer: {adamw: {lr: 3e-4}}, schedule: {cosine: {warmup: 10}}, steps: 100,"
      " clip_grad_norm: 1.0}\n"
      "data: {train: {csv: /etc/hostname, header: true, x: [0, 3], y: 3}, val_split: 0.25}\n";
  assert_int_equal(load(&m, text, NULL, 0), 0);
  assert_int_equal(m.train.opt, KILN_OPT_ADAMW);
  assert_true(m.train.lr == 3e-4);
  assert_true(m.train.weight_decay == 0.01);  // adamw's default
  assert_int_equal(m.train.sched, KILN_SCHED_COSINE);
  assert_int_equal(m.train.warmup, 10);
  assert_int_equal(m.train.steps, 100);
  assert_int_equal(m.train.epochs, 0);
  assert_int_equal(m.data.train.kind, KILN_SOURCE_CSV);
  assert_true(m.data.train.header);
  assert_int_equal(m.data.train.nbind, 2);
  assert_string_equal(m.data.train.bind[0].input, "x");
  assert_int_equal(m.data.train.bind[0].col_begin, 0);
  assert_int_equal(m.data.train.bind[0].col_end, 3);
  assert_int_equal(m.data.train.bind[1].col_begin, 3);
  assert_int_equal(m.data.train.bind[1].col_end, 4);
  assert_true(m.data.val_split == 0.25);
  kiln_model_free(&m);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(defaults_and_names), cmocka_unit_test(dim_override),
      cmocka_unit_test(blocks_and_constants), cmocka_unit_test(explicit_params_and_primitives),
      cmocka_unit_test(several_errors), cmocka_unit_test(data_config),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
