// Helpers shared by the test programs.
#include <dlfcn.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "tests/helpers.h"
#ifdef KILN_TEST_CUDA_EMU
#include "compiler/cuda/cuda.h"
#endif

char *kiln_test_slurp(const char *path, size_t *out_len) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  rewind(f);
  char *s = n >= 0 ? malloc((size_t)n + 1) : NULL;
  if (s && fread(s, 1, (size_t)n, f) != (size_t)n) n = 0;
  if (s) s[n] = '\0';
  if (out_len) *out_len = s ? (size_t)n : 0;
  fclose(f);
  return s;
}

const char *kiln_test_join(const char *dir, const char *name) {
  static char buf[8][512];
  static int k;
  k = (k + 1) % 8;
  snprintf(buf[k], sizeof buf[k], "%s/%s", dir, name);
  return buf[k];
}

void kiln_test_write(const char *path, const void *data, size_t len) {
  FILE *f = fopen(path, "wb");
  if (!f) fail_msg("cannot write %s", path);
  assert_int_equal(fwrite(data, 1, len, f), len);
  assert_int_equal(fclose(f), 0);
}

void kiln_test_golden(const char *path, const char *text, size_t len) {
  if (getenv("KILN_UPDATE_GOLDEN")) {
    FILE *g = fopen(path, "w");
    assert_non_null(g);
    assert_int_equal(fwrite(text, 1, len, g), len);
    assert_int_equal(fclose(g), 0);
  }
  size_t glen = 0;
  char *want = kiln_test_slurp(path, &glen);
  if (!want) fail_msg("no golden file %s (KILN_UPDATE_GOLDEN=1 writes it)", path);
  if (glen != len || memcmp(want, text, len) != 0) {
    size_t i = 0, line = 1;
    while (i < len && i < glen && text[i] == want[i]) line += text[i++] == '\n';
    print_error("differs from %s at line %zu; got:\n%s\nexpected:\n%s\n", path, line, text, want);
    free(want);
    fail();
  }
  free(want);
}

// Links obj into so and loads it; returns the descriptor of model `name`.
static const KilnModelDesc *load_model(const char *obj, const char *so, const char *name,
                                       void **out_dl) {
  char cmd[1536];
  snprintf(cmd, sizeof cmd, "cc -shared -o %s %s -lopenblas -lm", so, obj);
  assert_int_equal(system(cmd), 0);
  void *dl = dlopen(so, RTLD_NOW | RTLD_LOCAL);
  if (!dl) fail_msg("%s", dlerror());
  char sym[256];
  snprintf(sym, sizeof sym, "kiln_model_%s", name);
  const KilnModelDesc *d = dlsym(dl, sym);
  assert_non_null(d);
  *out_dl = dl;
  return d;
}

const KilnModelDesc *kiln_test_compile(const KilnGraph *g, KilnArena *a, int nstate,
                                       const KilnTrainDesc *td, uint64_t seed, const char *dir,
                                       void **out_dl) {
  static int serial;
  KilnPlan plan;
  kiln_plan_build(g, a, nstate, &plan);
  char err[1024];
  KilnTargetOpts to = {"native", 3};
  LLVMTargetMachineRef tm = kiln_cpu_target(&to, err, sizeof err);
  assert_non_null(tm);
  KilnCg cg = {0};
  KilnModuleOpts mo = {"test", false, seed, tm, td};
  kiln_cpu_module(&cg, g, &plan, &mo);
  char obj[512], so[512];
  snprintf(obj, sizeof obj, "%s/m%d.o", dir, serial);
  snprintf(so, sizeof so, "%s/m%d.so", dir, serial++);
  int rc = kiln_cpu_emit(cg.mod, tm, 3, KILN_EMIT_OBJ, obj, err, sizeof err);
  kiln_cpu_module_free(&cg);
  LLVMDisposeTargetMachine(tm);
  if (rc != 0) fail_msg("%s", err);
  return load_model(obj, so, g->name, out_dl);
}

#ifdef KILN_TEST_CUDA_EMU
bool kiln_test_cuda_bf16;

const KilnModelDesc *kiln_test_compile_cuda(const KilnGraph *g, KilnArena *a, int nstate,
                                            const KilnTrainDesc *td, uint64_t seed,
                                            const char *dir, void **out_dl) {
  static int serial;
  KilnPlan plan;
  kiln_plan_build(g, a, nstate, &plan);
  static char err[1 << 16];
  KilnTargetOpts to = {"native", 3};
  LLVMTargetMachineRef tm = kiln_cpu_target(&to, err, sizeof err);
  assert_non_null(tm);
  char obj[512], so[512], src[512], kernels[512], cmd[2048];
  snprintf(obj, sizeof obj, "%s/g%d.o", dir, serial);
  snprintf(so, sizeof so, "%s/g%d.so", dir, serial);
  snprintf(src, sizeof src, "%s/g%d.cu", dir, serial);
  snprintf(kernels, sizeof kernels, "%s/g%d-kernels.so", dir, serial++);
  // One architecture: NVRTC's time per case is most of the test's; which image a
  // device picks is tests/cuda.sh's to check.
  static const int archs[] = {90};
  KilnCudaOpts co = {archs, 1, src, NULL};
  co.matmul = kiln_test_cuda_bf16 ? KILN_CUDA_MATMUL_BF16 : KILN_CUDA_MATMUL_F32;
  KilnCg cg = {0};
  KilnModuleOpts mo = {"test", false, seed, tm, td};
  if (kiln_cuda_module(&cg, g, &plan, &mo, &co, err, sizeof err) != 0) {
    LLVMDisposeTargetMachine(tm);
    fail_msg("%s: %s", g->name, err);
  }
  int rc = kiln_cpu_emit(cg.mod, tm, 3, KILN_EMIT_OBJ, obj, err, sizeof err);
  kiln_cpu_module_free(&cg);
  LLVMDisposeTargetMachine(tm);
  if (rc != 0) fail_msg("%s", err);
  snprintf(cmd, sizeof cmd, "%s -O1 -fPIC -shared -fvisibility=hidden -include %s -x c++ %s -x none -o %s %s",
           KILN_CXX, KILN_CUDA_EMU_HEADER, src, kernels, KILN_CUDA_EMU_DRIVER);
  if (system(cmd) != 0) fail_msg("%s: the kernels do not compile for the emulator: %s", g->name, cmd);
  setenv("KILN_CUDA_DRIVER", KILN_CUDA_EMU_DRIVER, 1);
  setenv("KILN_CUDA_EMU_KERNELS", kernels, 1);
  return load_model(obj, so, g->name, out_dl);
}
#endif
