// The generated sgemm (compiler/cpu/gemm.c) against a double-precision reference:
// every transpose combination, sizes 0, 1, below, at and past a tile (remainders
// in m and n), K across the KC blocks, leading dimensions wider than a row,
// alpha != 1, beta 0, 1 and between, every tile shape and packing, sizes as
// run-time values and as constants. The kernels go the way a model's do: LLVM
// module, -O3 for this CPU, object, shared object.
//
// Each matrix ends flush against an inaccessible page, so a read past its last
// element faults (the generated code carries no sanitizer). C's padding columns
// hold a sentinel that must survive; with beta 0, C starts as NaN, which must not
// leak into the result (BLAS does not read C then).
//
// Tolerance: an element is alpha * sum of k products plus beta * c. Computed in
// f32 with one rounding per multiply-add, the sum's error is at most
// k u sum |a_p b_p| (u = 2^-24, Higham's bound for a dot product, to first order),
// and alpha, beta c and the final add bring three more roundings; so the bound is
// (k + 3) u (|alpha| sum |a_p b_p| + |beta c|), plus a little for second-order
// terms. It is a bound, not an estimate: the test cannot fail on rounding, and an
// index bug (a wrong, missing or repeated product) moves an element by about
// |a_p b_p|, far beyond it for all but the longest sums.
#define _DEFAULT_SOURCE  // MAP_ANONYMOUS
#include <dlfcn.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cmocka.h>

#include "compiler/cpu/cpu.h"
#include "tests/helpers.h"

typedef void (*GemmFn)(float *a, float *b, float beta, float *c, int64_t m, int64_t n, int64_t k);

typedef struct {
  bool ta, tb;
  int64_t m, n, k;
  int64_t pad;         // extra elements per row of A, B and C (0: rows packed tight)
  double alpha, beta;
  KilnGemmTile tile;
  bool constant;       // sizes as constants in the caller, not run-time values
} Case;

static const int64_t sizes[][3] = {
    {1, 1, 1},    {1, 16, 1},   {6, 16, 1},   {7, 17, 3},    {5, 15, 64},   {12, 32, 32},
    {13, 33, 300}, {32, 128, 64}, {32, 64, 128}, {64, 40, 513}, {2, 100, 7},  {19, 24, 256},
    {3, 1, 9},    {4, 9, 0},    {0, 5, 4},    {64, 96, 784}, {31, 70, 257}};
static const KilnGemmTile tiles[] = {{6, 2, false}, {4, 3, false}, {6, 2, true}, {3, 1, false},
                                     {8, 1, false}, {1, 3, true}};
static const double alphas[] = {1, 0.125, -1.5};
static const double betas[] = {0, 1, 0.5};

#define NSIZES (sizeof sizes / sizeof sizes[0])
#define NCASES (NSIZES * 4)

static Case case_of(size_t i) {
  const int64_t *s = sizes[i / 4];
  Case c = {.ta = i & 1, .tb = (i >> 1) & 1, .m = s[0], .n = s[1], .k = s[2]};
  c.pad = (i % 3 == 1) ? 3 : 0;
  c.alpha = alphas[(i / 2) % 3];
  c.beta = betas[i % 3];
  c.tile = tiles[i % (sizeof tiles / sizeof tiles[0])];
  c.constant = i % 5 == 2;
  return c;
}

// Stored shape of each operand: op(A) is m x k (A k x m when transposed).
static int64_t a_rows(const Case *c) { return c->ta ? c->k : c->m; }
static int64_t a_cols(const Case *c) { return c->ta ? c->m : c->k; }
static int64_t b_rows(const Case *c) { return c->tb ? c->n : c->k; }
static int64_t b_cols(const Case *c) { return c->tb ? c->k : c->n; }

// `case_i(a, b, beta, c, m, n, k)` calling the generated kernel for case i.
static void add_case(KilnCg *cg, size_t i) {
  Case c = case_of(i);
  LLVMTypeRef params[] = {cg->ptr, cg->ptr, cg->f32, cg->ptr, cg->i64, cg->i64, cg->i64};
  char name[32];
  snprintf(name, sizeof name, "case_%zu", i);
  cg->fn = LLVMAddFunction(cg->mod, name, LLVMFunctionType(cg->v, params, 7, 0));
  LLVMPositionBuilderAtEnd(cg->b, LLVMAppendBasicBlockInContext(cg->ctx, cg->fn, "entry"));
  LLVMValueRef m = LLVMGetParam(cg->fn, 4), n = LLVMGetParam(cg->fn, 5);
  LLVMValueRef k = LLVMGetParam(cg->fn, 6);
  if (c.constant) {
    m = kiln_cg_i64(cg, c.m);
    n = kiln_cg_i64(cg, c.n);
    k = kiln_cg_i64(cg, c.k);
  }
  KilnGemm g = {.ta = c.ta, .tb = c.tb, .m = m, .n = n, .k = k, .alpha = c.alpha,
                .a = LLVMGetParam(cg->fn, 0), .lda = a_cols(&c) + c.pad,
                .b = LLVMGetParam(cg->fn, 1), .ldb = b_cols(&c) + c.pad,
                .beta = LLVMGetParam(cg->fn, 2), .c = LLVMGetParam(cg->fn, 3), .ldc = c.n + c.pad};
  kiln_cpu_gemm(cg, &g, c.tile);
  LLVMBuildRetVoid(cg->b);
}

static char tmpdir[] = "/tmp/kiln-gemm-XXXXXX";
static void *dl;

// One module with every case, compiled as a model's kernels are.
static int setup(void **state) {
  (void)state;
  if (!mkdtemp(tmpdir)) return -1;
  char err[1024];
  KilnTargetOpts to = {"native", 3};
  LLVMTargetMachineRef tm = kiln_cpu_target(&to, err, sizeof err);
  if (!tm) return -1;
  KilnCg cg;
  kiln_cg_init(&cg, "gemm", tm);
  for (size_t i = 0; i < NCASES; i++) add_case(&cg, i);
  const char *obj = kiln_test_join(tmpdir, "gemm.o"), *so = kiln_test_join(tmpdir, "gemm.so");
  int rc = kiln_cpu_emit(cg.mod, tm, 3, KILN_EMIT_OBJ, obj, err, sizeof err);
  kiln_cpu_module_free(&cg);
  LLVMDisposeTargetMachine(tm);
  if (rc != 0) {
    fprintf(stderr, "%s\n", err);
    return -1;
  }
  char cmd[1200];
  snprintf(cmd, sizeof cmd, "cc -shared -o %s %s", so, obj);
  if (system(cmd) != 0) return -1;
  dl = dlopen(so, RTLD_NOW | RTLD_LOCAL);
  return dl ? 0 : -1;
}

static int teardown(void **state) {
  (void)state;
  if (dl) dlclose(dl);
  char cmd[600];
  snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
  return system(cmd);
}

// n floats that end where an inaccessible page begins. *out_map/len for munmap.
static float *guarded(int64_t n, void **out_map, size_t *out_len) {
  size_t page = (size_t)sysconf(_SC_PAGESIZE), bytes = (size_t)n * sizeof(float);
  size_t data = (bytes + page - 1) / page * page;
  char *p = mmap(NULL, data + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  assert_true(p != MAP_FAILED);
  assert_int_equal(mprotect(p + data, page, PROT_NONE), 0);
  *out_map = p;
  *out_len = data + page;
  return (float *)(p + data - bytes);
}

static uint64_t rng = 88172645463325252ull;
static float rnd(void) {
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return (float)((double)(rng >> 11) / 9007199254740992.0 * 2 - 1);
}

static const float SENTINEL = 1234.5f;

// Runs case i and compares every element of C (and C's padding) with the reference.
static void check_case(size_t i) {
  Case c = case_of(i);
  int64_t lda = a_cols(&c) + c.pad, ldb = b_cols(&c) + c.pad, ldc = c.n + c.pad;
  // Exactly the elements an sgemm may touch: the last row needs only its columns.
  int64_t na = a_rows(&c) ? (a_rows(&c) - 1) * lda + a_cols(&c) : 0;
  int64_t nb = b_rows(&c) ? (b_rows(&c) - 1) * ldb + b_cols(&c) : 0;
  int64_t nc = c.m ? (c.m - 1) * ldc + c.n : 0;
  void *ma, *mb, *mc;
  size_t la, lb, lc;
  float *A = guarded(na, &ma, &la), *B = guarded(nb, &mb, &lb), *C = guarded(nc, &mc, &lc);
  double *C0 = malloc(sizeof(double) * (size_t)(nc + 1));
  for (int64_t j = 0; j < na; j++) A[j] = rnd();
  for (int64_t j = 0; j < nb; j++) B[j] = rnd();
  for (int64_t j = 0; j < nc; j++) {
    bool inside = j % ldc < c.n;
    C[j] = !inside ? SENTINEL : c.beta == 0 ? NAN : rnd();
    C0[j] = C[j];
  }
  char name[32];
  snprintf(name, sizeof name, "case_%zu", i);
  GemmFn f = (GemmFn)(uintptr_t)dlsym(dl, name);
  assert_non_null(f);
  f(A, B, (float)c.beta, C, c.m, c.n, c.k);
  for (int64_t r = 0; r < c.m; r++)
    for (int64_t j = 0; j < ldc && r * ldc + j < nc; j++) {
      float have = C[r * ldc + j];
      if (j >= c.n) {
        if (have != SENTINEL)
          fail_msg("case %zu: padding C[%lld, %lld] overwritten", i, (long long)r, (long long)j);
        continue;
      }
      double sum = 0, mag = 0;
      for (int64_t p = 0; p < c.k; p++) {
        double a = c.ta ? A[p * lda + r] : A[r * lda + p];
        double b = c.tb ? B[j * ldb + p] : B[p * ldb + j];
        sum += a * b;
        mag += fabs(a * b);
      }
      double old = c.beta == 0 ? 0 : C0[r * ldc + j];
      double want = c.alpha * sum + c.beta * old;
      double bound = (double)(c.k + 3) * 0x1p-24 * (fabs(c.alpha) * mag + fabs(c.beta * old));
      double tol = bound * 1.01 + 1e-30;  // second-order terms; exact zeros
      if (!(fabs(have - want) <= tol))
        fail_msg("case %zu (%c%c m %lld n %lld k %lld pad %lld alpha %g beta %g tile %dx%d%s%s): "
                 "C[%lld, %lld] = %.9g, want %.9g (tolerance %.3g)",
                 i, c.ta ? 't' : 'n', c.tb ? 't' : 'n', (long long)c.m, (long long)c.n,
                 (long long)c.k, (long long)c.pad, c.alpha, c.beta, c.tile.mr, 8 * c.tile.nv,
                 c.tile.pack ? " packed" : "", c.constant ? " constant" : "", (long long)r,
                 (long long)j, have, want, tol);
    }
  munmap(ma, la);
  munmap(mb, lb);
  munmap(mc, lc);
  free(C0);
}

// Cases by transposes: (ta, tb) = (case & 1, case >> 1 & 1).
static void check_transposes(int which) {
  for (size_t i = 0; i < NCASES; i++)
    if ((int)(i % 4) == which) check_case(i);
}

static void test_gemm_nn(void **state) {
  (void)state;
  check_transposes(0);
}

static void test_gemm_tn(void **state) {
  (void)state;
  check_transposes(1);
}

static void test_gemm_nt(void **state) {
  (void)state;
  check_transposes(2);
}

static void test_gemm_tt(void **state) {
  (void)state;
  check_transposes(3);
}

// kiln_cpu_sgemm's choice, read off the module: a call of cblas_sgemm or of a
// generated kernel. Sizes the rule cannot bound (a run-time row count, as the
// LSTM's) and long or wide products stay with OpenBLAS; attention's blocks,
// bounded by constants, a min of a constant (a ragged last block) and the leading
// dimensions, go to the generated kernel. Sizes: > 0 a constant, ROWS a run-time
// value, MIN32 min(32, a run-time value).
enum { ROWS = -1, MIN32 = -2 };

static LLVMValueRef size_value(KilnCg *cg, int64_t kind, LLVMValueRef x) {
  if (kind > 0) return kiln_cg_i64(cg, kind);
  if (kind == ROWS) return x;
  LLVMValueRef c32 = kiln_cg_i64(cg, 32);
  return LLVMBuildSelect(cg->b, LLVMBuildICmp(cg->b, LLVMIntSLT, c32, x, ""), c32, x, "");
}

static bool picks_generated(bool ta, bool tb, int64_t m, int64_t n, int64_t k, int64_t lda,
                            int64_t ldb, int64_t ldc) {
  KilnCg cg;
  kiln_cg_init(&cg, "pick", NULL);
  LLVMTypeRef params[] = {cg.ptr, cg.i64};
  cg.fn = LLVMAddFunction(cg.mod, "f", LLVMFunctionType(cg.v, params, 2, 0));
  LLVMPositionBuilderAtEnd(cg.b, LLVMAppendBasicBlockInContext(cg.ctx, cg.fn, "entry"));
  LLVMValueRef p = LLVMGetParam(cg.fn, 0), x = LLVMGetParam(cg.fn, 1);
  KilnGemm g = {.ta = ta, .tb = tb, .m = size_value(&cg, m, x), .n = size_value(&cg, n, x),
                .k = size_value(&cg, k, x), .alpha = 1, .a = p, .lda = lda, .b = p, .ldb = ldb,
                .beta = kiln_cg_f32(&cg, 0), .c = p, .ldc = ldc};
  kiln_cpu_sgemm(&cg, &g);
  LLVMBuildRetVoid(cg.b);
  bool blas = LLVMGetNamedFunction(cg.mod, "cblas_sgemm") != NULL;
  kiln_cpu_module_free(&cg);
  return !blas;
}

static void test_dispatch(void **state) {
  (void)state;
  // attention's S = Q K^T: 32 rows (a min), keys up to ldc = 128, head dim 64.
  assert_true(picks_generated(false, true, MIN32, ROWS, 64, 768, 768, 128));
  // Y = P V: keys (k) up to lda = 128.
  assert_true(picks_generated(false, false, MIN32, 64, ROWS, 128, 768, 256));
  // dV += P^T dY: keys (m) up to lda = 128 (A transposed), k a block's 32 rows.
  assert_true(picks_generated(true, false, ROWS, 64, MIN32, 128, 256, 768));
  // The LSTM's step: rows known only at run time.
  assert_false(picks_generated(false, false, ROWS, 1024, 256, 16384, 1024, 65536));
  // A weight gradient over 2048 rows: long k.
  assert_false(picks_generated(true, false, 64, 128, 2048, 256, 128, 128));
  // A wide product: n 1024.
  assert_false(picks_generated(false, false, MIN32, 1024, 64, 64, 1024, 1024));
  // A dense layer's input gradient dY W^T (B transposed) on a block of rows, and
  // the same sizes with B as it is.
  assert_true(picks_generated(false, true, MIN32, 256, 768, 768, 768, 256));
  assert_false(picks_generated(false, false, MIN32, 256, 768, 768, 256, 256));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_gemm_nn),
      cmocka_unit_test(test_gemm_tn),
      cmocka_unit_test(test_gemm_nt),
      cmocka_unit_test(test_gemm_tt),
      cmocka_unit_test(test_dispatch),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
