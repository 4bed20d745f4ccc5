// Generated CPU code against the reference interpreter: every op on random inputs
// and several shapes (odd sizes that do not divide the vector width, broadcasts,
// transposes), then every bundled model's forward pass. Each graph goes the whole
// way users' models go: LLVM module, -O3 for this CPU, object file, linked (here
// into a shared object), run by the runtime's context.
//
// Tolerance: kernels compute in f32, the interpreter in double. One f32 rounding is
// 6e-8 relative; a sum of n terms accumulates up to about n of them, and transcend-
// ental functions (expf, tanhf from libm) are within a few ulp. So an element may
// differ by 1e-5 * (1 + |want|) * max(1, terms / 16), terms being how many values
// feed it (the reduction or inner-product length). Gradient ops count theirs the
// same way (row statistics, accumulation over rows, positions or time steps).
// Dropout in training is compared exactly where it matters: the same elements
// must be dropped.
//
// `test_cpu_ops cuda` runs the same cases through the CUDA backend, its kernels
// compiled for the host and run by the emulated driver of tests/cuda-emu/ (CTest
// cuda_ops), with the same tolerances: the kernels compute in f32 as the CPU's do,
// with the same libm (expf, tanhf) under the emulator. Dropout's training mask is
// the CPU kernel's own test; on the GPU the forward step runs dropout as a copy.
// The matmul cases run once more with bf16 tensor cores (matmuls_bf16).
//
// `test_cpu_ops pack DIR` compiles the same cases for CUDA and, instead of running
// them, writes each with its inputs, the interpreter's outputs and the tolerance,
// for tests/gpu/ops_check.c to run on a real GPU (docs/gpu-checks.md).
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "compiler/compiler.h"
#include "compiler/cpu/cpu.h"
#include "passes/passes.h"
#include "runtime/runtime.h"
#include "tests/helpers.h"
#ifdef KILN_HAVE_CUDA
#include "compiler/cuda/cuda.h"
#endif

static char tmpdir[] = "/tmp/kiln-cpu-XXXXXX";
static int serial;  // names graphs and kernel files apart
static bool tested[KILN_OP_COUNT];
// The backend under test: kiln_test_compile (CPU) or kiln_test_compile_cuda.
static const KilnModelDesc *(*compile)(const KilnGraph *, KilnArena *, int, const KilnTrainDesc *,
                                       uint64_t, const char *, void **) = kiln_test_compile;
static bool cuda;
// `test_cpu_ops pack DIR` writes each CUDA case into DIR for a GPU instead of
// running it (pack_graph).
static struct {
  const char *dir;
  FILE *index;
  const char *only;  // --only: the op names (and "models") to pack, comma-separated; NULL: all
  bool emu;          // --emu: also each case's kernels built for the emulator
  int n;             // cases written
} pack;
static char case_desc[256];  // the case being checked, for the pack's index

static double uniform(uint64_t *s, double lo, double hi) {
  *s = *s * 6364136223846793005ull + 1442695040888963407ull;
  return lo + (hi - lo) * (double)(*s >> 11) / 9007199254740992.0;
}

// The number of values that feed one output element of n (for the tolerance).
static int64_t terms(const KilnGraph *g, const KilnNode *n) {
  const KilnNode *x = &g->nodes[n->in[0]];
  int64_t numel = kiln_node_numel(n) ? kiln_node_numel(n) : 1;
  int64_t d = x->rank ? x->shape[x->rank - 1] : 1;
  // Gradients: their sums (row statistics, inner products, accumulation over rows,
  // positions or time steps) and, for lstm_grad, a recomputed forward.
  if (n->op == KILN_OP_LAYERNORM_DX) return 4 * d;
  if (n->op == KILN_OP_LAYERNORM_DGAMMA) return kiln_node_numel(x) / d + 2 * d;
  if (n->op == KILN_OP_CROSS_ENTROPY_GRAD) return d;
  if (n->op == KILN_OP_ATTENTION_GRAD) return x->shape[1] * x->shape[2];  // as attention
  if (n->op == KILN_OP_LSTM_GRAD)  // a weight sums B * T steps, each fed by I + H inputs
    return x->shape[0] * x->shape[1] * (x->shape[2] + g->nodes[n->in[2]].shape[0]);
  switch (kiln_op(n->op)->fuse) {
  case KILN_FUSE_REDUCE: return kiln_node_numel(x) / numel * (n->op == KILN_OP_LAYERNORM ? 2 : 1);
  case KILN_FUSE_OPAQUE:
    if (n->op == KILN_OP_MATMUL) return n->attr.trans_a ? x->shape[x->rank - 2] : x->shape[x->rank - 1];
    if (n->op == KILN_OP_LSTM) return (x->shape[2] + n->shape[2]) * n->shape[1];
    if (n->op == KILN_OP_ATTENTION) return n->shape[1] * n->shape[2];
    return kiln_node_numel(x);
  case KILN_FUSE_SOURCE: case KILN_FUSE_ELEMWISE: case KILN_FUSE_BROADCAST:
  case KILN_FUSE_INJECTIVE:
    return 1;
  }
  return 1;
}

// The tolerance of output node n: an element may differ from the interpreter's by
// scale * (1 + |want|) (the head of this file says why).
static double tol_scale(const KilnGraph *g, const KilnNode *n) {
  return 1e-5 * fmax(1.0, (double)terms(g, n) / 16);
}

// The reference values of every node of g (the caller frees them with free_values):
// parameters as read from weights, the model's parameter block; inputs drawn at
// random, lo/hi bounding f32 values and i32 ones drawn from [0, bound), and also
// written to in[i], model input i's buffer; then the interpreter's for the rest.
static double **reference(const KilnGraph *g, const KilnModelDesc *d, const char *weights,
                          void *const *in, double lo, double hi) {
  double **v = calloc((size_t)g->nnodes, sizeof *v);
  uint64_t seed = 12345;
  int pi = 0, ii = 0;
  for (int i = 0; i < g->nnodes; i++) {
    const KilnNode *n = &g->nodes[i];
    int64_t ne = kiln_node_numel(n);
    v[i] = calloc((size_t)(ne ? ne : 1), sizeof(double));
    if (n->op == KILN_OP_PARAM) {
      const float *w = (const float *)(weights + d->params[pi++].offset);
      for (int64_t j = 0; j < ne; j++) v[i][j] = w[j];
    } else if (n->op == KILN_OP_INPUT) {
      const KilnTensorDesc *t = &d->inputs[ii];
      void *dst = in[ii++];
      for (int64_t j = 0; j < ne; j++) {
        if (n->dtype == KILN_F32) {
          float x = (float)uniform(&seed, lo, hi);
          ((float *)dst)[j] = x;
          v[i][j] = x;
        } else {
          int32_t x = (int32_t)uniform(&seed, 0, (double)(t->bound ? t->bound : 3));
          ((int32_t *)dst)[j] = x;
          v[i][j] = x;
        }
      }
    }
  }
  char err[256];
  KilnInterpOpts io = {0};
  if (kiln_interp_run(g, v, &io, err, sizeof err) != 0) fail_msg("interpreter: %s", err);
  return v;
}

static void free_values(const KilnGraph *g, double **v) {
  for (int i = 0; i < g->nnodes; i++) free(v[i]);
  free(v);
}

#ifdef KILN_HAVE_CUDA
//
// `test_cpu_ops cuda` also runs the matmul cases with --gpu-matmul=bf16: operands
// rounded to bf16 (to nearest, ties to even) as they are staged, tensor-core
// products summed in f32. Two references:
//
// - the interpreter on the inputs rounded to bf16 first. The products of bf16
//   values are exact in f32 and the sums are f32, so what remains is the order of
//   the f32 sums, as between the f32 kernels and the interpreter: tol_scale's
//   tolerance, the f32 cases' own.
// - the interpreter on the f32 inputs. Rounding an operand moves it by at most
//   2^-8 of itself (bf16 keeps 8 significant bits), a product by at most
//   2^-8 + 2^-8 + 2^-16 of itself, so an element is within (2^-7 + 2^-16) *
//   sum_k |a_ik b_kj| (plus the f32 tolerance) of the f32 result; and since inputs
//   are uniform in [-1, 1], most operands are not bf16 values, so some element of
//   every case differs from it by more than the f32 tolerance. Were the kernels
//   to stay f32 under the option, this check would fail; were they bf16 without
//   it, the f32 cases would.
//
// `test_cpu_ops pack` packs the same cases (named "matmul_bf16" for --only) with
// the first reference, for a GPU's tensor cores.
static float round_bf16(float x) {
  uint32_t u;
  memcpy(&u, &x, sizeof u);
  u = (u + 0x7fffu + (u >> 16 & 1u)) & 0xffff0000u;  // finite inputs only
  memcpy(&x, &u, sizeof x);
  return x;
}

// The interpreter over g with its inputs (from v) mapped through f; the caller
// frees the result with free_values.
static double **interp_mapped(const KilnGraph *g, double *const *v, double (*f)(double)) {
  double **w = calloc((size_t)g->nnodes, sizeof *w);
  for (int i = 0; i < g->nnodes; i++) {
    int64_t ne = kiln_node_numel(&g->nodes[i]);
    w[i] = calloc((size_t)(ne ? ne : 1), sizeof(double));
    if (g->nodes[i].op == KILN_OP_INPUT)
      for (int64_t j = 0; j < ne; j++) w[i][j] = f(v[i][j]);
  }
  char err[256];
  KilnInterpOpts io = {0};
  if (kiln_interp_run(g, w, &io, err, sizeof err) != 0) fail_msg("interpreter: %s", err);
  return w;
}

static double to_bf16(double x) { return round_bf16((float)x); }

static void pack_graph(const KilnGraph *g, KilnArena *a, double lo, double hi);
// pack_graph packs a --gpu-matmul=bf16 case while set (matmuls_bf16).
static bool pack_bf16;
#endif

// Runs graph g both ways on the same random inputs and parameters and compares
// every output. lo/hi bound the random f32 inputs; i32 inputs draw from [0, bound).
static void check_graph(const KilnGraph *g, KilnArena *a, double lo, double hi) {
#ifdef KILN_HAVE_CUDA
  if (pack.dir) {
    pack_graph(g, a, lo, hi);
    return;
  }
#endif
  void *dl;
  const KilnModelDesc *d = compile(g, a, 0, NULL, 7, tmpdir, &dl);
  assert_string_equal(d->target, cuda ? "cuda" : "cpu");
  KilnStatus st = {0};
  KilnCtx *c = kiln_ctx_create(d, 2, &st);
  if (!c) fail_msg("%s", st.msg);
  void **in = calloc((size_t)d->ninputs + 1, sizeof *in);
  for (int i = 0; i < d->ninputs; i++) in[i] = kiln_ctx_input(c, i);
  // The parameters as the runtime initialized them from the seed.
  double **v = reference(g, d, c->weights, in, lo, hi);
  kiln_ctx_forward(c);
  if (kiln_ctx_check(c, &st) != 0) fail_msg("%s: forward: %s", g->name, st.msg);
  for (int o = 0; o < g->noutputs; o++) {
    const KilnNode *n = &g->nodes[g->outputs[o]];
    const void *got = kiln_ctx_output(c, o);
    double scale = tol_scale(g, n);
    for (int64_t j = 0; j < kiln_node_numel(n); j++) {
      double want = v[g->outputs[o]][j];
      double have = n->dtype == KILN_F32 ? ((const float *)got)[j] : ((const int32_t *)got)[j];
      if (!(fabs(have - want) <= scale * (1 + fabs(want))))
        fail_msg("%s: output %s element %lld: got %.9g, want %.9g (tolerance %.3g)", g->name,
                 n->name, (long long)j, have, want, scale * (1 + fabs(want)));
    }
  }
  free_values(g, v);
  free(in);
  kiln_ctx_destroy(c);
  dlclose(dl);
}

#ifdef KILN_HAVE_CUDA
//
// The pack for tests/gpu/ops_check.c, which runs it on a GPU (tests/gpu/run.sh,
// docs/gpu-checks.md). Per case NNN: NNN.so, the model compiled as `kiln build
// --target=cuda` compiles it (cubins for sm_80 and sm_90, PTX for newer GPUs),
// without the runtime, which the runner provides; NNN.bin, its inputs (raw f32 or
// i32, in the model's input order), then the interpreter's outputs (f64); and in
// the text file `index`, after the line "kiln-ops-pack 1":
//
//   case NNN GRAPH NINPUTS NOUTPUTS DESCRIPTION...   (kiln_model_GRAPH in NNN.so)
//   in BYTES                                         (one per input)
//   out NUMEL SCALE                                  (one per output)
//
// An output element passes when |got - want| <= SCALE * (1 + |want|), the test's
// own tolerance. Parameters are not written: the runner's context draws them from
// the model's seed as kiln_rng_init_param does here. With --emu, NNN.emu.so holds
// the kernels built for tests/cuda-emu, so the runner can be tried without a GPU.
//
// cg's module as the shared object so, by way of the object file obj, linked with
// libm alone; cg and tm are freed.
static void emit_shared(KilnCg *cg, LLVMTargetMachineRef tm, const char *obj, const char *so) {
  char err[1024], cmd[1536];
  int rc = kiln_cpu_emit(cg->mod, tm, 3, KILN_EMIT_OBJ, obj, err, sizeof err);
  kiln_cpu_module_free(cg);
  LLVMDisposeTargetMachine(tm);
  if (rc != 0) fail_msg("%s", err);
  snprintf(cmd, sizeof cmd, "cc -shared -o %s %s -lm", so, obj);
  assert_int_equal(system(cmd), 0);
}

static const KilnModelDesc *pack_compile(const KilnGraph *g, KilnArena *a, int id, void **out_dl) {
  KilnPlan plan;
  kiln_plan_build(g, a, 0, &plan);
  static char err[1 << 16];
  int archs[8];
  int narchs = kiln_cuda_parse_archs("sm_80,sm_90", archs, 8, err, sizeof err);  // kiln build's default
  assert_true(narchs > 0);
  // The host code only hands the runtime its launches; baseline x86-64 runs on the
  // GPU machine's CPU, which may lack this one's (native) features.
  KilnTargetOpts to = {"x86-64-v2", 3};
  LLVMTargetMachineRef tm = kiln_cpu_target(&to, err, sizeof err);
  if (!tm) fail_msg("%s", err);
  char obj[512], src[512], so[512], cmd[2048];
  snprintf(obj, sizeof obj, "%s/p%d.o", tmpdir, id);
  snprintf(src, sizeof src, "%s/p%d.cu", tmpdir, id);
  snprintf(so, sizeof so, "%s/%03d.so", pack.dir, id);
  KilnCudaOpts co = {archs, narchs, pack.emu ? src : NULL, NULL};
  co.matmul = pack_bf16 ? KILN_CUDA_MATMUL_BF16 : KILN_CUDA_MATMUL_F32;
  KilnCg cg = {0};
  KilnModuleOpts mo = {"test", false, 7, tm, NULL};
  if (kiln_cuda_module(&cg, g, &plan, &mo, &co, err, sizeof err) != 0) {
    LLVMDisposeTargetMachine(tm);
    fail_msg("%s: %s", case_desc, err);
  }
  emit_shared(&cg, tm, obj, so);  // no OpenBLAS: a CUDA model calls no BLAS
#ifdef KILN_TEST_CUDA_EMU
  if (pack.emu) {
    snprintf(cmd, sizeof cmd, "%s -O1 -fPIC -shared -fvisibility=hidden -include %s -x c++ %s -x none -o %s/%03d.emu.so %s",
             KILN_CXX, KILN_CUDA_EMU_HEADER, src, pack.dir, id, KILN_CUDA_EMU_DRIVER);
    if (system(cmd) != 0) fail_msg("%s: the kernels do not compile for the emulator: %s", case_desc, cmd);
  }
#endif
  void *dl = dlopen(so, RTLD_NOW | RTLD_LOCAL);
  if (!dl) fail_msg("%s", dlerror());
  char sym[256];
  snprintf(sym, sizeof sym, "kiln_model_%s", g->name);
  const KilnModelDesc *d = dlsym(dl, sym);
  assert_non_null(d);
  *out_dl = dl;
  return d;
}

static void pack_graph(const KilnGraph *g, KilnArena *a, double lo, double hi) {
  int id = pack.n;
  void *dl;
  const KilnModelDesc *d = pack_compile(g, a, id, &dl);
  char *weights = calloc((size_t)d->weights_bytes + 4, 1);
  for (int p = 0; p < d->nparams; p++)
    kiln_rng_init_param(&d->params[p], d->seed, (float *)(weights + d->params[p].offset));
  void **in = calloc((size_t)d->ninputs + 1, sizeof *in);
  for (int i = 0; i < d->ninputs; i++) in[i] = calloc((size_t)d->inputs[i].bytes + 4, 1);
  double **v = reference(g, d, weights, in, lo, hi);
  if (pack_bf16) {  // the reference of a bf16 case: its inputs rounded first (matmuls_bf16)
    double **r = interp_mapped(g, v, to_bf16);
    free_values(g, v);
    v = r;
  }
  char path[512];
  snprintf(path, sizeof path, "%s/%03d.bin", pack.dir, id);
  FILE *f = fopen(path, "wb");
  if (!f) fail_msg("cannot write %s: %s", path, strerror(errno));
  for (int i = 0; i < d->ninputs; i++)
    assert_int_equal(fwrite(in[i], 1, (size_t)d->inputs[i].bytes, f), d->inputs[i].bytes);
  for (int o = 0; o < g->noutputs; o++) {
    size_t ne = (size_t)kiln_node_numel(&g->nodes[g->outputs[o]]);
    assert_int_equal(fwrite(v[g->outputs[o]], sizeof(double), ne, f), ne);
  }
  if (fclose(f) != 0) fail_msg("cannot write %s: %s", path, strerror(errno));
  fprintf(pack.index, "case %03d %s %d %d %s\n", id, g->name, d->ninputs, g->noutputs, case_desc);
  for (int i = 0; i < d->ninputs; i++) fprintf(pack.index, "in %lld\n", (long long)d->inputs[i].bytes);
  for (int o = 0; o < g->noutputs; o++) {
    const KilnNode *n = &g->nodes[g->outputs[o]];
    fprintf(pack.index, "out %lld %.17g\n", (long long)kiln_node_numel(n), tol_scale(g, n));
  }
  if (fflush(pack.index) != 0) fail_msg("cannot write %s/index", pack.dir);
  pack.n++;
  free_values(g, v);
  for (int i = 0; i < d->ninputs; i++) free(in[i]);
  free(in);
  free(weights);
  dlclose(dl);
}
#endif

// Whether --only names this op (or "models"); every case is wanted without it.
static bool wanted(const char *name) {
  if (!pack.only) return true;
  size_t n = strlen(name);
  for (const char *p = pack.only; (p = strstr(p, name)) != NULL; p += n)
    if ((p == pack.only || p[-1] == ',') && (p[n] == ',' || p[n] == '\0')) return true;
  return false;
}

//
// One op on inputs of given shapes.
//
typedef struct {
  int rank;
  int64_t shape[KILN_MAX_RANK];
  KilnDType dt;
} In;

static int32_t add_input(KilnGraph *g, const char *name, In in) {
  int32_t id = kiln_graph_add(g, KILN_OP_INPUT, NULL, 0, name, (KilnLoc){0});
  KilnNode *n = &g->nodes[id];
  n->dtype = in.dt;
  n->rank = in.rank;
  memcpy(n->shape, in.shape, sizeof(int64_t) * (size_t)in.rank);
  return id;
}

// Appends " f32[3,17]" to case_desc.
static void describe_input(In in) {
  size_t k = strlen(case_desc);
  k += (size_t)snprintf(case_desc + k, sizeof case_desc - k, " %s[", in.dt == KILN_F32 ? "f32" : "i32");
  for (int j = 0; j < in.rank && k < sizeof case_desc; j++)
    k += (size_t)snprintf(case_desc + k, sizeof case_desc - k, "%s%lld", j ? "," : "",
                          (long long)in.shape[j]);
  if (k < sizeof case_desc) snprintf(case_desc + k, sizeof case_desc - k, "]");
}

static void op_case(KilnOp op, KilnAttrs attr, double lo, double hi, int nin, ...) {
  if (!wanted(kiln_op(op)->name)) return;
  KilnArena a = {0};
  KilnGraph g;
  char name[64];
  snprintf(name, sizeof name, "c%d", serial++);
  kiln_graph_init(&g, &a, name);
  int32_t ids[KILN_MAX_INPUTS];
  snprintf(case_desc, sizeof case_desc, "%s", kiln_op(op)->name);
  va_list ap;
  va_start(ap, nin);
  for (int i = 0; i < nin; i++) {
    char in_name[16];
    snprintf(in_name, sizeof in_name, "in%d", i);
    In in = va_arg(ap, In);
    ids[i] = add_input(&g, in_name, in);
    describe_input(in);
  }
  va_end(ap);
  int32_t out = kiln_graph_add(&g, op, ids, nin, "out", (KilnLoc){0});
  g.nodes[out].attr = attr;
  char err[256];
  if (kiln_graph_infer(&g, out, err, sizeof err) != 0) fail_msg("%s: %s", kiln_op(op)->name, err);
  kiln_graph_add_output(&g, out);
  check_graph(&g, &a, lo, hi);
  kiln_arena_free(&a);
  tested[op] = true;
}

#define F(...) ((In){sizeof((int64_t[]){__VA_ARGS__}) / 8, {__VA_ARGS__}, KILN_F32})
#define I(...) ((In){sizeof((int64_t[]){__VA_ARGS__}) / 8, {__VA_ARGS__}, KILN_I32})
#define SCALAR ((In){0, {0}, KILN_F32})
#define NOATTR ((KilnAttrs){0})

static void unary_ops(void **state) {
  (void)state;
  static const KilnOp any[] = {KILN_OP_NEG, KILN_OP_EXP, KILN_OP_RELU, KILN_OP_SIGMOID,
                               KILN_OP_TANH, KILN_OP_GELU, KILN_OP_SILU, KILN_OP_DROPOUT};
  for (size_t i = 0; i < sizeof any / sizeof any[0]; i++) {
    op_case(any[i], (KilnAttrs){.p = 0.5}, -4, 4, 1, F(1));
    op_case(any[i], (KilnAttrs){.p = 0.5}, -4, 4, 1, F(3, 17));
    op_case(any[i], (KilnAttrs){.p = 0.5}, -4, 4, 1, F(2, 5, 33));
  }
  static const KilnOp positive[] = {KILN_OP_LOG, KILN_OP_SQRT, KILN_OP_RSQRT};
  for (size_t i = 0; i < sizeof positive / sizeof positive[0]; i++) {
    op_case(positive[i], NOATTR, 0.1, 5, 1, F(7));
    op_case(positive[i], NOATTR, 0.1, 5, 1, F(4, 19));
  }
  op_case(KILN_OP_POW, (KilnAttrs){.exponent = 2}, -3, 3, 1, F(5, 9));
  op_case(KILN_OP_POW, (KilnAttrs){.exponent = 1.5}, 0.1, 3, 1, F(31));
  op_case(KILN_OP_POW, (KilnAttrs){.exponent = -1}, 0.5, 3, 1, F(3, 3));
  op_case(KILN_OP_CLAMP, (KilnAttrs){.lo = -0.5, .hi = 1}, -2, 2, 1, F(6, 11));
  op_case(KILN_OP_CLAMP, (KilnAttrs){.lo = -INFINITY, .hi = 0.25}, -2, 2, 1, F(13));
}

static void binary_ops(void **state) {
  (void)state;
  static const KilnOp ops[] = {KILN_OP_ADD, KILN_OP_SUB, KILN_OP_MUL, KILN_OP_DIV};
  for (size_t i = 0; i < 4; i++) {
    double lo = ops[i] == KILN_OP_DIV ? 0.5 : -3;
    op_case(ops[i], NOATTR, lo, 3, 2, F(4, 17), F(4, 17));
    op_case(ops[i], NOATTR, lo, 3, 2, F(4, 17), F(17));        // row broadcast
    op_case(ops[i], NOATTR, lo, 3, 2, F(5, 1), F(1, 9));       // outer product
    op_case(ops[i], NOATTR, lo, 3, 2, F(2, 3, 7), SCALAR);     // scalar
    op_case(ops[i], NOATTR, lo, 3, 2, F(3, 1, 5), F(2, 1));    // both ways
  }
  op_case(KILN_OP_WHERE, NOATTR, -1, 1, 3, F(4, 9), F(4, 9), F(9));
  op_case(KILN_OP_WHERE, NOATTR, -1, 1, 3, F(3, 1), F(1, 5), SCALAR);
  op_case(KILN_OP_BROADCAST, (KilnAttrs){.nints = 3, .ints = {2, 3, 5}}, -1, 1, 1, F(3, 1));
  op_case(KILN_OP_BROADCAST, (KilnAttrs){.nints = 2, .ints = {4, 7}}, -1, 1, 1, F(7));
}

static void reductions(void **state) {
  (void)state;
  static const KilnOp ops[] = {KILN_OP_SUM, KILN_OP_MEAN, KILN_OP_MAX};
  for (size_t i = 0; i < 3; i++) {
    op_case(ops[i], NOATTR, -2, 2, 1, F(5, 7));                                      // all
    op_case(ops[i], (KilnAttrs){.nints = 1, .ints = {-1}}, -2, 2, 1, F(3, 4, 9));
    op_case(ops[i], (KilnAttrs){.nints = 1, .ints = {0}, .keepdims = true}, -2, 2, 1, F(6, 5));
    op_case(ops[i], (KilnAttrs){.nints = 2, .ints = {0, 2}}, -2, 2, 1, F(3, 4, 5));
    // Leading axes reduced, trailing kept: the kernel splits the columns.
    op_case(ops[i], (KilnAttrs){.nints = 2, .ints = {0, 1}}, -2, 2, 1, F(3, 4, 9));
    op_case(ops[i], (KilnAttrs){.nints = 1, .ints = {0}}, -2, 2, 1, F(200, 301));  // 2 threads
  }
  static const KilnOp sm[] = {KILN_OP_SOFTMAX, KILN_OP_LOG_SOFTMAX};
  for (size_t i = 0; i < 2; i++) {
    op_case(sm[i], (KilnAttrs){.axis = -1}, -5, 5, 1, F(3, 17));
    op_case(sm[i], (KilnAttrs){.axis = 1}, -5, 5, 1, F(2, 7, 3));
    op_case(sm[i], (KilnAttrs){.axis = 0}, -5, 5, 1, F(9));
  }
  op_case(KILN_OP_LAYERNORM, (KilnAttrs){.eps = 1e-5}, -2, 2, 3, F(5, 19), F(19), F(19));
  op_case(KILN_OP_LAYERNORM, (KilnAttrs){.eps = 1e-3}, -2, 2, 3, F(2, 3, 8), F(8), F(8));
}

static void matmuls(void **state) {
  (void)state;
  op_case(KILN_OP_MATMUL, NOATTR, -1, 1, 2, F(3, 5), F(5, 7));
  op_case(KILN_OP_MATMUL, NOATTR, -1, 1, 2, F(1, 17), F(17, 33));
  op_case(KILN_OP_MATMUL, (KilnAttrs){.trans_b = true}, -1, 1, 2, F(4, 6), F(9, 6));
  op_case(KILN_OP_MATMUL, (KilnAttrs){.trans_a = true}, -1, 1, 2, F(6, 4), F(6, 9));
  op_case(KILN_OP_MATMUL, (KilnAttrs){.trans_a = true, .trans_b = true}, -1, 1, 2, F(5, 3), F(7, 5));
  op_case(KILN_OP_MATMUL, NOATTR, -1, 1, 2, F(2, 3, 5, 4), F(4, 6));                // folded batch
  op_case(KILN_OP_MATMUL, NOATTR, -1, 1, 2, F(3, 4, 5), F(3, 5, 2));                // batched
  op_case(KILN_OP_MATMUL, NOATTR, -1, 1, 2, F(2, 1, 4, 5), F(3, 5, 2));             // broadcast
  // Large enough for the BLAS path, with a ragged last row block.
  op_case(KILN_OP_MATMUL, NOATTR, -1, 1, 2, F(130, 70), F(70, 65));
  op_case(KILN_OP_MATMUL, (KilnAttrs){.trans_b = true}, -1, 1, 2, F(2, 67, 64), F(2, 50, 64));
  op_case(KILN_OP_MATMUL, (KilnAttrs){.trans_a = true}, -1, 1, 2, F(80, 70), F(80, 60));
  // Row blocks of three batch entries, 2 each, which the two threads split in the
  // middle of entry 1: a thread's blocks of one entry are one call (generated
  // kernel, then OpenBLAS).
  op_case(KILN_OP_MATMUL, NOATTR, -1, 1, 2, F(3, 70, 48), F(3, 48, 40));
  op_case(KILN_OP_MATMUL, NOATTR, -1, 1, 2, F(3, 70, 200), F(3, 200, 200));
  // Few rows, many columns: the two threads split the columns (64-column blocks,
  // the last one ragged).
  op_case(KILN_OP_MATMUL, NOATTR, -1, 1, 2, F(20, 70), F(70, 200));
  op_case(KILN_OP_MATMUL, (KilnAttrs){.trans_b = true}, -1, 1, 2, F(20, 70), F(200, 70));
  op_case(KILN_OP_MATMUL, (KilnAttrs){.trans_a = true}, -1, 1, 2, F(70, 20), F(70, 200));
}

#ifdef KILN_HAVE_CUDA
static void bf16_case(KilnAttrs attr, In x, In y) {
  if (!wanted("matmul_bf16")) return;
  KilnArena a = {0};
  KilnGraph g;
  char name[64];
  snprintf(name, sizeof name, "c%d", serial++);
  kiln_graph_init(&g, &a, name);
  int32_t ids[2] = {add_input(&g, "in0", x), add_input(&g, "in1", y)};
  int32_t out = kiln_graph_add(&g, KILN_OP_MATMUL, ids, 2, "out", (KilnLoc){0});
  g.nodes[out].attr = attr;
  char err[256];
  if (kiln_graph_infer(&g, out, err, sizeof err) != 0) fail_msg("matmul: %s", err);
  kiln_graph_add_output(&g, out);
  if (pack.dir) {  // for a GPU: against the bf16 operands' reference alone
    snprintf(case_desc, sizeof case_desc, "matmul --gpu-matmul=bf16%s%s", attr.trans_a ? " trans_a" : "",
             attr.trans_b ? " trans_b" : "");
    describe_input(x);
    describe_input(y);
    pack_bf16 = true;
    pack_graph(&g, &a, -1, 1);
    pack_bf16 = false;
    kiln_arena_free(&a);
    return;
  }
#ifdef KILN_TEST_CUDA_EMU
  void *dl;
  kiln_test_cuda_bf16 = true;
  const KilnModelDesc *d = compile(&g, &a, 0, NULL, 7, tmpdir, &dl);
  kiln_test_cuda_bf16 = false;
  KilnStatus st = {0};
  KilnCtx *c = kiln_ctx_create(d, 2, &st);
  if (!c) fail_msg("%s", st.msg);
  void *in[2] = {kiln_ctx_input(c, 0), kiln_ctx_input(c, 1)};
  double **v = reference(&g, d, c->weights, in, -1, 1);
  double **vr = interp_mapped(&g, v, to_bf16), **vm = interp_mapped(&g, v, fabs);
  kiln_ctx_forward(c);
  if (kiln_ctx_check(c, &st) != 0) fail_msg("%s: forward: %s", g.name, st.msg);
  const KilnNode *n = &g.nodes[out];
  const float *got = kiln_ctx_output(c, 0);
  double scale = tol_scale(&g, n), off = 0;
  for (int64_t j = 0; j < kiln_node_numel(n); j++) {
    double have = got[j], want = vr[out][j], f32 = v[out][j], tol = scale * (1 + fabs(want));
    if (!(fabs(have - want) <= tol))
      fail_msg("%s (bf16): element %lld: got %.9g, want %.9g from bf16 operands (tolerance %.3g)",
               g.name, (long long)j, have, want, tol);
    double bound = (0x1p-7 + 0x1p-16) * vm[out][j] + scale * (1 + fabs(f32));
    if (!(fabs(have - f32) <= bound))
      fail_msg("%s (bf16): element %lld: got %.9g, f32 operands give %.9g: more than bf16 rounding (%.3g)",
               g.name, (long long)j, have, f32, bound);
    off = fmax(off, fabs(have - f32) / (scale * (1 + fabs(f32))));
  }
  if (!(off > 1)) fail_msg("%s (bf16): every element is within the f32 tolerance of f32 operands' result: bf16 unused?", g.name);
  print_message("bf16 matmul %s: largest difference from f32 operands %.1f f32 tolerances\n", g.name, off);
  free_values(&g, v);
  free_values(&g, vr);
  free_values(&g, vm);
  kiln_ctx_destroy(c);
  dlclose(dl);
#endif
  kiln_arena_free(&a);
}

// The matmul cases (matmuls()) with --gpu-matmul=bf16, plus sizes that take each
// tensor-core tile: 128 x 128, 64 x 64 and 32 x 32 tiles, the skinny one, K not a
// multiple of 16 or of the 32 a slice holds.
static void matmuls_bf16(void **state) {
  (void)state;
  bf16_case(NOATTR, F(3, 5), F(5, 7));
  bf16_case(NOATTR, F(1, 17), F(17, 33));
  bf16_case((KilnAttrs){.trans_b = true}, F(4, 6), F(9, 6));
  bf16_case((KilnAttrs){.trans_a = true}, F(6, 4), F(6, 9));
  bf16_case((KilnAttrs){.trans_a = true, .trans_b = true}, F(5, 3), F(7, 5));
  bf16_case(NOATTR, F(2, 3, 5, 4), F(4, 6));
  bf16_case(NOATTR, F(3, 4, 5), F(3, 5, 2));
  bf16_case(NOATTR, F(2, 1, 4, 5), F(3, 5, 2));
  bf16_case(NOATTR, F(130, 70), F(70, 65));
  bf16_case((KilnAttrs){.trans_b = true}, F(2, 67, 64), F(2, 50, 64));
  bf16_case((KilnAttrs){.trans_a = true}, F(80, 70), F(80, 60));
  bf16_case(NOATTR, F(3, 70, 48), F(3, 48, 40));
  bf16_case(NOATTR, F(3, 70, 200), F(3, 200, 200));
  // 128 x 128 tiles: 2 x 2 of them per matrix (rows and columns 128 and 129 in the
  // second), 132 blocks in all.
  bf16_case((KilnAttrs){.trans_a = true, .trans_b = true}, F(33, 40, 129), F(33, 129, 40));
  bf16_case(NOATTR, F(9, 33), F(33, 100));  // 9 rows: not skinny, one 32 x 32 tile row
}
#endif

static void layout(void **state) {
  (void)state;
  op_case(KILN_OP_RESHAPE, (KilnAttrs){.nints = 2, .ints = {5, 6}}, -1, 1, 1, F(2, 15));
  op_case(KILN_OP_TRANSPOSE, NOATTR, -1, 1, 1, F(3, 7));
  op_case(KILN_OP_TRANSPOSE, (KilnAttrs){.nints = 3, .ints = {1, 2, 0}}, -1, 1, 1, F(2, 3, 5));
  op_case(KILN_OP_TRANSPOSE, (KilnAttrs){.nints = 4, .ints = {0, 2, 1, 3}}, -1, 1, 1, F(2, 3, 4, 5));
  op_case(KILN_OP_CONCAT, (KilnAttrs){.axis = -1}, -1, 1, 2, F(3, 4), F(3, 5));
  op_case(KILN_OP_CONCAT, (KilnAttrs){.axis = 0}, -1, 1, 3, F(1, 3), F(2, 3), F(4, 3));
  op_case(KILN_OP_CONCAT, (KilnAttrs){.axis = 1}, -1, 1, 2, F(2, 3, 2), F(2, 1, 2));
  op_case(KILN_OP_SLICE, (KilnAttrs){.axis = -1, .start = 2, .end = 9}, -1, 1, 1, F(3, 11));
  op_case(KILN_OP_SLICE, (KilnAttrs){.axis = 0, .start = 1, .end = 3}, -1, 1, 1, F(4, 5));
  op_case(KILN_OP_SLICE, (KilnAttrs){.axis = 1, .start = 0, .end = 1}, -1, 1, 1, F(2, 3, 4));
  op_case(KILN_OP_EMBEDDING, NOATTR, -1, 1, 2, I(7), F(5, 3));
  op_case(KILN_OP_EMBEDDING, NOATTR, -1, 1, 2, I(2, 9), F(11, 17));
}

static void sequence_ops(void **state) {
  (void)state;
  op_case(KILN_OP_LSTM, NOATTR, -1, 1, 4, F(2, 5, 3), F(3, 16), F(4, 16), F(16));
  op_case(KILN_OP_LSTM, NOATTR, -1, 1, 4, F(3, 4, 7), F(7, 20), F(5, 20), F(20));
  // Large enough that the runtime splits 3 sequences over 2 threads (2 + 1); hidden
  // 36 is no multiple of a vector's width; one time step.
  op_case(KILN_OP_LSTM, NOATTR, -1, 1, 4, F(3, 6, 9), F(9, 144), F(36, 144), F(144));
  op_case(KILN_OP_LSTM, NOATTR, -1, 1, 4, F(3, 1, 5), F(5, 80), F(20, 80), F(80));
  // Decoding (test_generate checks them against whole sequences): lstm_step from a
  // random state, over one and several steps; attention_decode at a random position
  // of a cache of random keys and values, 2 and 3 heads.
  op_case(KILN_OP_LSTM_STEP, NOATTR, -1, 1, 5, F(2, 1, 5), F(5, 24), F(6, 24), F(24), F(2, 2, 6));
  op_case(KILN_OP_LSTM_STEP, NOATTR, -1, 1, 5, F(3, 4, 7), F(7, 20), F(5, 20), F(20), F(2, 3, 5));
  op_case(KILN_OP_ATTENTION_DECODE, (KilnAttrs){.heads = 2, .causal = true}, -1, 1, 6, F(1, 1, 8),
          F(1, 1, 8), F(1, 1, 8), F(1, 5, 8), F(1, 5, 8), I(1, 1));
  op_case(KILN_OP_ATTENTION_DECODE, (KilnAttrs){.heads = 3, .causal = true}, -1, 1, 6, F(2, 1, 15),
          F(2, 1, 15), F(2, 1, 15), F(2, 7, 15), F(2, 7, 15), I(1, 1));
  op_case(KILN_OP_ATTENTION, (KilnAttrs){.heads = 1}, -1, 1, 3, F(2, 5, 4), F(2, 5, 4), F(2, 5, 4));
  op_case(KILN_OP_ATTENTION, (KilnAttrs){.heads = 2, .causal = true}, -1, 1, 3, F(2, 7, 6),
          F(2, 7, 6), F(2, 7, 6));
  op_case(KILN_OP_ATTENTION, (KilnAttrs){.heads = 4, .causal = true}, -2, 2, 3, F(1, 9, 16),
          F(1, 9, 16), F(1, 9, 16));
  // Several blocks of 32 query rows, the last one partial, and row lengths that
  // are not multiples of the 16-lane reductions; head widths 8, 64 and odd 5.
  op_case(KILN_OP_ATTENTION, (KilnAttrs){.heads = 2}, -1, 1, 3, F(2, 37, 16), F(2, 37, 16),
          F(2, 37, 16));
  op_case(KILN_OP_ATTENTION, (KilnAttrs){.heads = 2, .causal = true}, -1, 1, 3, F(1, 70, 128),
          F(1, 70, 128), F(1, 70, 128));
  op_case(KILN_OP_ATTENTION, (KilnAttrs){.heads = 3, .causal = true}, -2, 2, 3, F(3, 33, 15),
          F(3, 33, 15), F(3, 33, 15));
}

static void losses(void **state) {
  (void)state;
  op_case(KILN_OP_CROSS_ENTROPY, NOATTR, -3, 3, 2, F(6, 5), I(6));
  op_case(KILN_OP_CROSS_ENTROPY, NOATTR, -3, 3, 2, F(2, 3, 7), I(2, 3));
  op_case(KILN_OP_CROSS_ENTROPY, NOATTR, -3, 3, 2, F(4, 19), I(4));  // 2 x 8 lanes + 3
  op_case(KILN_OP_MSE, NOATTR, -3, 3, 2, F(4, 9), F(4, 9));
  op_case(KILN_OP_BCE, NOATTR, -3, 3, 2, F(3, 5), F(3, 5));
}

//
// Dropout in training. The step functions set the header's training flag
// themselves (the forward step to 0), so here the dropout kernel is compiled on its
// own, made external, and called directly on a planned arena whose step header
// holds a seed and training = 1, in three uneven chunks [lo, hi) as threads would
// run it. The interpreter, given the same seed, must drop exactly the same
// elements (inputs are in [1, 2], so zero means dropped); then with training = 0
// the kernel must copy.
//
static uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
  z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
  return z ^ (z >> 31);
}

// Node id's kernel alone, with external linkage, in a shared object.
static KilnKernelFn compile_kernel(const KilnGraph *g, const KilnPlan *plan, int32_t id,
                                   void **out_dl, int64_t *out_n) {
  char err[1024];
  KilnTargetOpts to = {"native", 3};
  LLVMTargetMachineRef tm = kiln_cpu_target(&to, err, sizeof err);
  assert_non_null(tm);
  KilnCg cg;
  kiln_cg_init(&cg, "kernel", tm);
  int64_t cost;
  LLVMValueRef fn = kiln_cpu_kernel(&cg, g, plan, id, out_n, &cost);
  LLVMSetLinkage(fn, LLVMExternalLinkage);
  char sym[128], obj[512], so[512];
  snprintf(sym, sizeof sym, "%s", LLVMGetValueName(fn));
  snprintf(obj, sizeof obj, "%s/k%d.o", tmpdir, serial);
  snprintf(so, sizeof so, "%s/k%d.so", tmpdir, serial++);
  emit_shared(&cg, tm, obj, so);
  void *dl = dlopen(so, RTLD_NOW | RTLD_LOCAL);
  if (!dl) fail_msg("%s", dlerror());
  KilnKernelFn k;
  *(void **)&k = dlsym(dl, sym);
  assert_non_null(k);
  *out_dl = dl;
  return k;
}

static void dropout_train_case(double p, int64_t key, uint64_t seed, In shape) {
  KilnArena a = {0};
  KilnGraph g;
  kiln_graph_init(&g, &a, "dropout");
  int32_t x = add_input(&g, "x", shape);
  int32_t y = kiln_graph_add(&g, KILN_OP_DROPOUT, &x, 1, "y", (KilnLoc){0});
  g.nodes[y].attr = (KilnAttrs){.p = p, .key = key};
  char err[256];
  if (kiln_graph_infer(&g, y, err, sizeof err) != 0) fail_msg("%s", err);
  kiln_graph_add_output(&g, y);
  KilnPlan plan;
  kiln_plan_build(&g, &a, 0, &plan);
  assert_true(plan.offset[x] >= KILN_ABI_HEADER_BYTES && plan.offset[y] >= KILN_ABI_HEADER_BYTES);
  void *dl;
  int64_t n;
  KilnKernelFn kernel = compile_kernel(&g, &plan, y, &dl, &n);
  char *arena = aligned_alloc(64, (size_t)(plan.arena_bytes + 63) / 64 * 64), weights[64];
  assert_non_null(arena);
  memset(arena, 0, (size_t)plan.arena_bytes);
  int64_t ne = kiln_node_numel(&g.nodes[x]);
  double *v[2] = {calloc((size_t)ne, sizeof(double)), calloc((size_t)ne, sizeof(double))};
  float *xs = (float *)(arena + plan.offset[x]), *ys = (float *)(arena + plan.offset[y]);
  uint64_t r = 777;
  for (int64_t j = 0; j < ne; j++) v[0][j] = xs[j] = (float)uniform(&r, 1, 2);
  KilnStepHeader *h = (KilnStepHeader *)arena;
  h->seed = seed;
  h->training = 1;
  const int64_t cut[] = {0, n / 3, 2 * n / 3 + 1 < n ? 2 * n / 3 + 1 : n, n};
  for (int i = 0; i < 3; i++)
    if (cut[i] < cut[i + 1]) kernel(weights, arena, cut[i], cut[i + 1]);
  KilnInterpOpts io = {.training = true, .seed = seed};
  if (kiln_interp_run(&g, v, &io, err, sizeof err) != 0) fail_msg("interpreter: %s", err);
  int64_t kept = 0;
  for (int64_t j = 0; j < ne; j++) {
    double want = v[1][j], have = ys[j];
    if ((have == 0) != (want == 0))
      fail_msg("dropout p=%g key=%lld seed=%llu: element %lld: got %.9g, want %.9g (masks differ)",
               p, (long long)key, (unsigned long long)seed, (long long)j, have, want);
    if (!(fabs(have - want) <= 1e-6 * fabs(want)))
      fail_msg("dropout: element %lld: got %.9g, want %.9g", (long long)j, have, want);
    kept += want != 0;
  }
  if (ne >= 1000)  // the mask looks random: within 5 sd of n (1 - p)
    assert_true(fabs((double)kept - (double)ne * (1 - p)) <= 5 * sqrt((double)ne * p * (1 - p)) + 1);
  h->training = 0;
  kernel(weights, arena, 0, n);
  assert_memory_equal(xs, ys, (size_t)ne * sizeof *xs);
  free(v[0]);
  free(v[1]);
  free(arena);
  dlclose(dl);
  kiln_arena_free(&a);
}

static void dropout_training(void **state) {
  (void)state;
  dropout_train_case(0.5, 1, 7, F(1));
  dropout_train_case(0.5, 1, 8, F(3, 17));
  dropout_train_case(0.1, -12345, UINT64_MAX, F(2, 5, 33));
  dropout_train_case(0.9, INT64_MIN, 0, F(7, 9));
  dropout_train_case(0, 3, 5, F(4, 4));
  dropout_train_case(0.3, 99, 42, F(300, 201));
  dropout_train_case(0.5, 1, 7, SCALAR);
  // p exactly at element 0's draw u (kept: u >= p), then the next double up
  // (dropped): the comparison must be exact, as it would not be in f32.
  uint64_t seed = 11;
  int64_t key = 0x5eed;
  double u = (double)(mix64((seed ^ mix64((uint64_t)key)) + UINT64_C(0x9e3779b97f4a7c15)) >> 11) * 0x1p-53;
  dropout_train_case(u, key, seed, F(5));
  dropout_train_case(nextafter(u, 1), key, seed, F(5));
  tested[KILN_OP_DROPOUT] = true;
}

// Gradient ops, made by autodiff.
static void gradient_ops(void **state) {
  (void)state;
  static const KilnOp elem[] = {KILN_OP_GELU_GRAD, KILN_OP_SILU_GRAD};
  for (size_t i = 0; i < sizeof elem / sizeof elem[0]; i++) {
    op_case(elem[i], NOATTR, -4, 4, 2, F(1), F(1));
    op_case(elem[i], NOATTR, -4, 4, 2, F(3, 17), F(3, 17));
    op_case(elem[i], NOATTR, -4, 4, 2, F(2, 5, 33), F(2, 5, 33));
  }
  op_case(KILN_OP_CLAMP_GRAD, (KilnAttrs){.lo = -0.5, .hi = 1}, -2, 2, 2, F(6, 11), F(6, 11));
  op_case(KILN_OP_CLAMP_GRAD, (KilnAttrs){.lo = -INFINITY, .hi = 0.25}, -2, 2, 2, F(13), F(13));
  op_case(KILN_OP_LAYERNORM_DX, (KilnAttrs){.eps = 1e-5}, -2, 2, 3, F(5, 19), F(19), F(5, 19));
  op_case(KILN_OP_LAYERNORM_DX, (KilnAttrs){.eps = 1e-3}, -2, 2, 3, F(2, 3, 8), F(8), F(2, 3, 8));
  op_case(KILN_OP_LAYERNORM_DX, (KilnAttrs){.eps = 1e-5}, -2, 2, 3, F(1, 67), F(67), F(1, 67));
  op_case(KILN_OP_LAYERNORM_DGAMMA, (KilnAttrs){.eps = 1e-5}, -2, 2, 2, F(5, 19), F(5, 19));
  op_case(KILN_OP_LAYERNORM_DGAMMA, (KilnAttrs){.eps = 1e-3}, -2, 2, 2, F(2, 3, 8), F(2, 3, 8));
  op_case(KILN_OP_LAYERNORM_DGAMMA, (KilnAttrs){.eps = 1e-5}, -2, 2, 2, F(100, 67), F(100, 67));
  // ids draw from [0, 3): repeated rows collect several positions.
  op_case(KILN_OP_EMBEDDING_GRAD, (KilnAttrs){.size = 5}, -1, 1, 2, I(7), F(7, 3));
  op_case(KILN_OP_EMBEDDING_GRAD, (KilnAttrs){.size = 11}, -1, 1, 2, I(2, 9), F(2, 9, 17));
  op_case(KILN_OP_EMBEDDING_GRAD, (KilnAttrs){.size = 3}, -1, 1, 2, (In){0, {0}, KILN_I32}, F(5));
  op_case(KILN_OP_EMBEDDING_GRAD, (KilnAttrs){.size = 800}, -1, 1, 2, I(40, 50), F(40, 50, 65));
  op_case(KILN_OP_CROSS_ENTROPY_GRAD, NOATTR, -3, 3, 2, F(6, 5), I(6));
  op_case(KILN_OP_CROSS_ENTROPY_GRAD, NOATTR, -3, 3, 2, F(2, 3, 7), I(2, 3));
  op_case(KILN_OP_CROSS_ENTROPY_GRAD, NOATTR, -3, 3, 2, F(4, 19), I(4));
  op_case(KILN_OP_CROSS_ENTROPY_GRAD, NOATTR, -3, 3, 2, F(3), (In){0, {0}, KILN_I32});
  op_case(KILN_OP_LSTM_GRAD, NOATTR, -1, 1, 5, F(1, 1, 1), F(1, 4), F(1, 4), F(4), F(1, 1, 1));
  op_case(KILN_OP_LSTM_GRAD, NOATTR, -1, 1, 5, F(2, 5, 3), F(3, 16), F(4, 16), F(16), F(2, 5, 4));
  op_case(KILN_OP_LSTM_GRAD, NOATTR, -1, 1, 5, F(3, 4, 7), F(7, 20), F(5, 20), F(20), F(3, 4, 5));
  // Split over threads as the forward above; 144 gate columns are two blocks of
  // the weight phase, the second partial; one time step.
  op_case(KILN_OP_LSTM_GRAD, NOATTR, -1, 1, 5, F(3, 6, 9), F(9, 144), F(36, 144), F(144),
          F(3, 6, 36));
  op_case(KILN_OP_LSTM_GRAD, NOATTR, -1, 1, 5, F(3, 1, 5), F(5, 80), F(20, 80), F(80), F(3, 1, 20));
  op_case(KILN_OP_ATTENTION_GRAD, (KilnAttrs){.heads = 1}, -1, 1, 4, F(2, 5, 4), F(2, 5, 4),
          F(2, 5, 4), F(2, 5, 4));
  op_case(KILN_OP_ATTENTION_GRAD, (KilnAttrs){.heads = 2, .causal = true}, -1, 1, 4, F(2, 7, 6),
          F(2, 7, 6), F(2, 7, 6), F(2, 7, 6));
  op_case(KILN_OP_ATTENTION_GRAD, (KilnAttrs){.heads = 4, .causal = true}, -2, 2, 4, F(1, 9, 16),
          F(1, 9, 16), F(1, 9, 16), F(1, 9, 16));
  // Large enough that the runtime splits (batch, head) pairs over its threads.
  op_case(KILN_OP_ATTENTION_GRAD, (KilnAttrs){.heads = 4}, -1, 1, 4, F(2, 16, 32),
          F(2, 16, 32), F(2, 16, 32), F(2, 16, 32));
  // As the forward's: blocks (the last partial), causal and not, heads 8, 64, 5 wide.
  op_case(KILN_OP_ATTENTION_GRAD, (KilnAttrs){.heads = 2}, -1, 1, 4, F(2, 37, 16), F(2, 37, 16),
          F(2, 37, 16), F(2, 37, 16));
  op_case(KILN_OP_ATTENTION_GRAD, (KilnAttrs){.heads = 2, .causal = true}, -1, 1, 4, F(1, 70, 128),
          F(1, 70, 128), F(1, 70, 128), F(1, 70, 128));
  op_case(KILN_OP_ATTENTION_GRAD, (KilnAttrs){.heads = 3, .causal = true}, -2, 2, 4, F(3, 33, 15),
          F(3, 33, 15), F(3, 33, 15), F(3, 33, 15));
}

// Every op with a kernel has been compared; adding an op without a case fails here.
static void coverage(void **state) {
  (void)state;
  for (int op = 0; op < KILN_OP_COUNT; op++) {
    if (kiln_ops[op].fuse == KILN_FUSE_SOURCE) continue;
    if (!tested[op]) fail_msg("op '%s' has no generated-code test", kiln_ops[op].name);
  }
}

//
// Whole bundled models, at reduced dims so the double-precision interpreter is
// quick; the kernels are the same code at any size.
//
static void model_level(const char *file, const KilnDimOverride *ov, int nov, int level) {
  char path[512];
  snprintf(path, sizeof path, "%s/models/%s", KILN_SOURCE_DIR, file);
  snprintf(case_desc, sizeof case_desc, "model %s at graph level %d", file, level);
  KilnDiag d;
  kiln_diag_init(&d, stderr);
  KilnModel m;
  assert_int_equal(kiln_model_load(&m, &d, path, ov, nov), 0);
  // The pipeline at graph level 0 (none) or 2 (as kiln build runs it: clean-up,
  // schedule, fusion; memory planning follows in the backend).
  KilnPipelineOpts po = {.out = stdout, .level = level};
  assert_int_equal(kiln_pipeline_run(&m.graph, &po, stderr), 0);
  // Token ids and labels draw from [0, bound); features from [-2, 2].
  check_graph(&m.graph, &m.arena, -2, 2);
  kiln_model_free(&m);
}

static void model_case(const char *file, const KilnDimOverride *ov, int nov) {
  if (!wanted("models")) return;
  model_level(file, ov, nov, 0);
  model_level(file, ov, nov, 2);
}

static void models(void **state) {
  (void)state;
  model_case("mlp.yaml", NULL, 0);
  model_case("digits.yaml", (KilnDimOverride[]){{"batch", 3}}, 1);
  model_case("lstm.yaml", (KilnDimOverride[]){{"batch", 2}, {"seq", 9}}, 2);
  model_case("gpt.yaml", (KilnDimOverride[]){{"batch", 2}, {"ctx", 12}}, 2);
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

static int usage(const char *argv0) {
  fprintf(stderr, "usage: %s [cuda | pack DIR [--emu] [--only OP,...]]\n", argv0);
  return 2;
}

int main(int argc, char **argv) {
  if (argc > 1 && strcmp(argv[1], "cuda") == 0) {
#if !defined(KILN_HAVE_CUDA)
    puts("skipped: kiln was built without the CUDA toolkit, so it has no CUDA target");
    return 77;
#elif !defined(KILN_TEST_CUDA_EMU)
    puts("skipped: no C++ compiler to build the CUDA emulator (tests/cuda-emu) with");
    return 77;
#else
    compile = kiln_test_compile_cuda;
    cuda = true;
#endif
  } else if (argc > 2 && strcmp(argv[1], "pack") == 0) {
    pack.dir = argv[2];
    for (int i = 3; i < argc; i++) {
      if (strcmp(argv[i], "--emu") == 0) pack.emu = true;
      else if (strcmp(argv[i], "--only") == 0 && i + 1 < argc) pack.only = argv[++i];
      else return usage(argv[0]);
    }
#if !defined(KILN_HAVE_CUDA)
    puts("skipped: kiln was built without the CUDA toolkit, so it has no CUDA target");
    return 77;
#else
#if !defined(KILN_TEST_CUDA_EMU)
    if (pack.emu) {
      puts("skipped: --emu needs the CUDA emulator (tests/cuda-emu), built with a C++ compiler");
      return 77;
    }
#endif
    if (mkdir(pack.dir, 0777) != 0 && errno != EEXIST) {
      fprintf(stderr, "cannot make %s: %s\n", pack.dir, strerror(errno));
      return 1;
    }
    if (!(pack.index = fopen(kiln_test_join(pack.dir, "index"), "w"))) {
      fprintf(stderr, "cannot write %s/index: %s\n", pack.dir, strerror(errno));
      return 1;
    }
    fputs("kiln-ops-pack 1\n", pack.index);
    cuda = true;
#endif
  } else if (argc > 1) {
    return usage(argv[0]);
  }
  // The groups this mode runs: bf16 only for CUDA; the dropout kernel, called
  // directly, only for the CPU; the coverage check only over every case.
  const struct CMUnitTest all[] = {
      cmocka_unit_test(unary_ops), cmocka_unit_test(binary_ops), cmocka_unit_test(reductions),
      cmocka_unit_test(matmuls),
#ifdef KILN_HAVE_CUDA
      cmocka_unit_test(matmuls_bf16),
#endif
      cmocka_unit_test(layout),     cmocka_unit_test(sequence_ops),
      cmocka_unit_test(losses),    cmocka_unit_test(dropout_training),
      cmocka_unit_test(gradient_ops), cmocka_unit_test(coverage), cmocka_unit_test(models),
  };
  struct CMUnitTest tests[sizeof all / sizeof all[0]];
  size_t n = 0;
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
    const char *name = all[i].name;
    if ((!cuda && strcmp(name, "matmuls_bf16") == 0) || (cuda && strcmp(name, "dropout_training") == 0) ||
        (pack.only && strcmp(name, "coverage") == 0))
      continue;
    tests[n++] = all[i];
  }
  int failed = _cmocka_run_group_tests("test_cpu_ops", tests, n, setup, teardown);
  if (pack.index) {
    if (fclose(pack.index) != 0) failed++;
    printf("packed %d cases into %s\n", pack.n, pack.dir);
  }
  return failed;
}
