// Generation models against the full model. For the bundled GPT and LSTM (at
// small dims) the decode model, fed a random sequence one token at a time, must
// give at every position the logits the window model computes for that position
// from the whole sequence:
//   - in the reference interpreter (double), to 1e-9: the decode lowering (key/
//     value caches, position rows, carried h and c) is the same function;
//   - as generated code against the interpreter's window logits (float kernels
//     against double).
// tests/generate.sh checks the programs' generate command end to end.
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
#include "helpers.h"
#include "passes/passes.h"
#include "runtime/runtime.h"

static char tmpdir[] = "/tmp/kiln-gen-XXXXXX";

typedef struct {
  KilnModel m;
  double **v;  // interpreter values per node
} Ref;

static void load(Ref *r, const char *file, const KilnDimOverride *ov, int nov, KilnGenMode mode,
                 int64_t context) {
  char path[512];
  if (file[0] == '/') snprintf(path, sizeof path, "%s", file);
  else snprintf(path, sizeof path, "%s/models/%s", KILN_SOURCE_DIR, file);
  KilnDiag d;
  kiln_diag_init(&d, stderr);
  assert_int_equal(kiln_model_load_gen(&r->m, &d, path, ov, nov, mode, context), 0);
  r->m.graph.loss = -1;
  KilnPipelineOpts po = {.out = stdout, .level = 2};
  assert_int_equal(kiln_pipeline_run(&r->m.graph, &po, stderr), 0);
  const KilnGraph *g = &r->m.graph;
  r->v = calloc((size_t)g->nnodes, sizeof *r->v);
  for (int i = 0; i < g->nnodes; i++) {
    int64_t n = kiln_node_numel(&g->nodes[i]);
    r->v[i] = calloc((size_t)(n ? n : 1), sizeof(double));
  }
}

static void unload(Ref *r) {
  for (int i = 0; i < r->m.graph.nnodes; i++) free(r->v[i]);
  free(r->v);
  kiln_model_free(&r->m);
}

static int32_t find(const KilnGraph *g, const char *name) {
  int32_t id = kiln_graph_find(g, name);
  if (id < 0) fail_msg("no node '%s'", name);
  return id;
}

// Copies the compiled context's parameters (initialized from its seed by name)
// into the interpreter's values, so both run the same model.
static void copy_params(Ref *r, const KilnModelDesc *d, const KilnCtx *c) {
  for (int p = 0; p < d->nparams; p++) {
    int32_t id = find(&r->m.graph, d->params[p].name);
    const float *w = (const float *)(c->weights + d->params[p].offset);
    for (int64_t j = 0; j < kiln_node_numel(&r->m.graph.nodes[id]); j++) r->v[id][j] = w[j];
  }
}

static int input_index(const KilnModelDesc *d, const char *name) {
  for (int i = 0; i < d->ninputs; i++)
    if (strcmp(d->inputs[i].name, name) == 0) return i;
  fail_msg("no input '%s'", name);
  return -1;
}

static void interp(Ref *r) {
  char err[256];
  if (kiln_interp_run(&r->m.graph, r->v, NULL, err, sizeof err) != 0) fail_msg("%s", err);
}

static void decode_case(const char *file, const KilnDimOverride *ov, int nov, const char *tokens,
                        int64_t T) {
  Ref win, dec;
  load(&win, file, ov, nov, KILN_GEN_WINDOW, T);
  load(&dec, file, ov, nov, KILN_GEN_DECODE, T);
  void *dl;
  KilnArena a = {0};
  const KilnModelDesc *d = kiln_test_compile(&dec.m.graph, &a, 0, NULL, 7, tmpdir, &dl);
  KilnStatus st = {0};
  KilnCtx *c = kiln_ctx_create(d, 2, &st);
  if (!c) fail_msg("%s", st.msg);
  copy_params(&win, d, c);
  copy_params(&dec, d, c);
  const KilnGraph *wg = &win.m.graph, *dg = &dec.m.graph;
  int64_t vocab = wg->nodes[wg->outputs[0]].shape[2];
  // The window: a random sequence, all positions at once.
  uint64_t s = 99;
  int32_t wt = find(wg, tokens), seq[256];
  assert_true(T <= 256);
  for (int64_t t = 0; t < T; t++) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    seq[t] = (int32_t)((s >> 33) % (uint64_t)vocab);
    win.v[wt][t] = seq[t];
  }
  interp(&win);
  const double *want = win.v[wg->outputs[0]];
  // Decode, position by position, in the interpreter and as generated code; the
  // state (caches, h and c) starts at zero in both and is never touched between.
  int32_t dt = find(dg, tokens), dp = find(dg, "decode.position");
  int ti = input_index(d, tokens), pi = input_index(d, "decode.position");
  for (int64_t t = 0; t < T; t++) {
    dec.v[dt][0] = seq[t];
    dec.v[dp][0] = (double)t;
    interp(&dec);
    *(int32_t *)kiln_ctx_input(c, ti) = seq[t];
    *(int32_t *)kiln_ctx_input(c, pi) = (int32_t)t;
    kiln_ctx_forward(c);
    const double *ref = dec.v[dg->outputs[0]];
    const float *got = kiln_ctx_output(c, 0);
    for (int64_t j = 0; j < vocab; j++) {
      double w = want[t * vocab + j];
      if (!(fabs(ref[j] - w) <= 1e-9 * (1 + fabs(w))))
        fail_msg("%s: position %lld logit %lld: decode %.12g, window %.12g", file, (long long)t,
                 (long long)j, ref[j], w);
      // f32 kernels against double: the differences seen are below 2e-6 (a few
      // ulps accumulated over sums of up to 128 terms); 1e-5 leaves margin while a
      // wrong position, cache row or state would be off by the logits' own size.
      if (!(fabs(got[j] - w) <= 1e-5 * (1 + fabs(w))))
        fail_msg("%s: position %lld logit %lld: compiled decode %.9g, interpreter %.9g", file,
                 (long long)t, (long long)j, got[j], w);
    }
  }
  kiln_ctx_destroy(c);
  dlclose(dl);
  kiln_arena_free(&a);
  unload(&win);
  unload(&dec);
}

static void gpt_decode(void **state) {
  (void)state;
  decode_case("gpt.yaml", (KilnDimOverride[]){{"ctx", 10}, {"d", 32}}, 2, "tokens", 10);
}

static void lstm_decode(void **state) {
  (void)state;
  decode_case("lstm.yaml", (KilnDimOverride[]){{"seq", 9}, {"embed", 16}, {"hidden", 24}}, 3,
              "tokens", 9);
}

// Two LSTM layers (a state each) and dropout, which generation leaves out.
static void lstm2_decode(void **state) {
  (void)state;
  static const char model[] =
      "kiln: 1\nname: lstm2\ndims: {batch: 2, seq: 7}\n"
      "inputs:\n  tokens: {shape: [batch, seq], dtype: i32}\n"
      "graph:\n  - embedding: {vocab: 11, dim: 8}\n  - dropout: {p: 0.5}\n"
      "  - lstm: {hidden: 12, layers: 2, name: rnn}\n  - dense: {units: 11, name: logits}\n"
      "outputs: [logits]\n";
  const char *path = kiln_test_join(tmpdir, "lstm2.yaml");
  kiln_test_write(path, model, sizeof model - 1);
  decode_case(path, NULL, 0, "tokens", 7);
}

static int setup(void **state) {
  (void)state;
  return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown(void **state) {
  (void)state;
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
  return system(cmd) == 0 ? 0 : -1;
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(gpt_decode), cmocka_unit_test(lstm_decode),
                                     cmocka_unit_test(lstm2_decode)};
  return cmocka_run_group_tests(tests, setup, teardown);
}
