// The generated sgemm (compiler/cpu/gemm.c) against OpenBLAS's cblas_sgemm on the
// products the bundled models run, one thread, in one process: the kernels are
// generated and compiled as a model's are (LLVM module, -O3 for this CPU, object,
// shared object), then each product is timed with every tile and with OpenBLAS,
// the variants interleaved so that noise from other work falls on all of them.
// Driven by bench/gemm.py, which builds it against a Kiln build and formats the
// table; it prints one tab-separated line per product:
//   name ta tb m n k  then GFLOP/s median/best of tile0 tile1 tile2 openblas,
//   then what kiln_cpu_sgemm picks: 1 generated / 0 OpenBLAS, and the tile's index
//
// usage: gemm RUNS TMPDIR [NAME-PREFIX]   (only the products whose names start so)
#include <cblas.h>
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "compiler/cpu/cpu.h"

// A product as the model's kernel issues it. Causal attention runs one product
// per block of 32 query rows, over the keys the block sees (32, 64, 96, 128 for a
// context of 128): `grow` names the size that takes those values ('m', 'n' or
// 'k'; 0: fixed), and the time covers the four.
typedef struct {
  const char *name;
  bool ta, tb;
  int64_t m, n, k, lda, ldb, ldc;
  double alpha, beta;
  char grow;
  bool rows_vary;  // the model's m is a run-time value (a thread's share of sequences)
} Shape;

static const Shape shapes[] = {
    // GPT attention (context 128, head dim 64, q|k|v side by side: rows of 768).
    {"attn S=QK^T", false, true, 32, 128, 64, 768, 768, 128, 0.125, 0, 'n'},
    {"attn Y=PV", false, false, 32, 64, 128, 128, 768, 256, 1, 0, 'k'},
    {"attn dP=dY V^T", false, true, 32, 128, 64, 256, 768, 128, 1, 0, 'n'},
    {"attn dV+=P^T dY", true, false, 128, 64, 32, 128, 256, 768, 1, 1, 'm'},
    {"attn dQ=dS K", false, false, 32, 64, 128, 128, 768, 768, 1, 0, 'k'},
    {"attn dK+=dS^T Q", true, false, 128, 64, 32, 128, 768, 768, 1, 1, 'm'},
    // LSTM (batch 32, 64 steps, input 128, hidden 256): per step, then all steps.
    {"lstm step hW", false, false, 32, 1024, 256, 16384, 1024, 65536, 1, 1, 0, true},
    {"lstm step dZ W^T", false, true, 32, 256, 1024, 65536, 1024, 256, 1, 0, 0, true},
    {"lstm xW", false, false, 2048, 1024, 128, 128, 1024, 1024, 1, 0, 0, true},
    {"lstm dZ Wi^T", false, true, 2048, 128, 1024, 1024, 1024, 128, 1, 0, 0, true},
    {"lstm dWh=H^T dZ", true, false, 256, 128, 2047, 256, 1024, 1024, 1, 0, 0},
    {"lstm head dX", false, true, 64, 256, 96, 96, 96, 256, 1, 0, 0},
    // MLP 784-512-512-10, batch 128, in blocks of 64 rows.
    {"mlp 784>512", false, false, 64, 512, 784, 784, 512, 512, 1, 0, 0},
    {"mlp 512>512", false, false, 64, 512, 512, 512, 512, 512, 1, 0, 0},
    {"mlp 512>10", false, false, 64, 10, 512, 512, 10, 10, 1, 0, 0},
    {"mlp dX 512<512", false, true, 64, 512, 512, 512, 512, 512, 1, 0, 0},
    {"mlp dX 512<10", false, true, 64, 512, 10, 10, 10, 512, 1, 0, 0},
    {"mlp dW 784x512", true, false, 64, 512, 128, 784, 512, 512, 1, 0, 0},
    // The same layers as one call over all 128 rows of the batch (one thread's
    // share of the row blocks), and the weight gradients over all their rows.
    {"mlp128 784>512", false, false, 128, 512, 784, 784, 512, 512, 1, 0, 0},
    {"mlp128 512>512", false, false, 128, 512, 512, 512, 512, 512, 1, 0, 0},
    {"mlp128 dX 512<512", false, true, 128, 512, 512, 512, 512, 512, 1, 0, 0},
    {"mlp128 dX 512<10", false, true, 128, 512, 10, 10, 10, 512, 1, 0, 0},
    {"mlp128 dW 784x512", true, false, 784, 512, 128, 784, 512, 512, 1, 0, 0},
    {"mlp128 dW 512x512", true, false, 512, 512, 128, 512, 512, 512, 1, 0, 0},
    {"mlp128 dW 512x10", true, false, 512, 10, 128, 512, 10, 10, 1, 0, 0},
    // digits 64-128-10, batch 32: the hidden layer and its weight gradient.
    {"digits 64>128", false, false, 32, 128, 64, 64, 128, 128, 1, 0, 0},
    {"digits dW 64x128", true, false, 64, 128, 32, 64, 128, 128, 1, 0, 0},
    // GPT linears (16 x 128 rows, d 256), blocks of 64 rows.
    {"gpt qkv 256>768", false, false, 64, 768, 256, 256, 768, 768, 1, 0, 0},
    {"gpt proj 256>256", false, false, 64, 256, 256, 256, 256, 256, 1, 0, 0},
    {"gpt fc 256>1024", false, false, 64, 1024, 256, 256, 1024, 1024, 1, 0, 0},
    {"gpt fc2 1024>256", false, false, 64, 256, 1024, 1024, 256, 256, 1, 0, 0},
    {"gpt head 256>96", false, false, 64, 96, 256, 256, 96, 96, 1, 0, 0},
    {"gpt dX 1024<256", false, true, 64, 1024, 256, 256, 256, 1024, 1, 0, 0},
    {"gpt dX 256<1024", false, true, 64, 256, 1024, 1024, 1024, 256, 1, 0, 0},
    {"gpt dW 256x1024", true, false, 64, 1024, 2048, 256, 1024, 1024, 1, 0, 0},
    // No model's: one 6 x 16 tile over k = 256 with A (6 KiB) and B (16 KiB) in
    // L1 and nothing to pack. It times the 6 x 16 micro-kernel alone, the most
    // any product can get from it on this core.
    {"l1 6x16 tile", false, false, 6, 16, 256, 256, 16, 16, 1, 0, 0},
};
#define NSHAPES (sizeof shapes / sizeof shapes[0])

static const KilnGemmTile tiles[] = {{6, 2, false}, {4, 3, false}, {6, 2, true}};
#define NTILES (sizeof tiles / sizeof tiles[0])
#define NVAR (NTILES + 1)  // the tiles, then OpenBLAS

typedef void (*GemmFn)(const float *a, const float *b, float beta, float *c, int64_t m, int64_t n,
                       int64_t k);

// The sizes of call `blk` (of 4 when the shape grows with the causal block).
static void sizes(const Shape *s, int blk, int64_t *m, int64_t *n, int64_t *k) {
  *m = s->m, *n = s->n, *k = s->k;
  int64_t v = 32 * (blk + 1);
  if (s->grow == 'm') *m = v;
  if (s->grow == 'n') *n = v;
  if (s->grow == 'k') *k = v;
}

static int calls(const Shape *s) { return s->grow ? 4 : 1; }

static double flops(const Shape *s) {
  double f = 0;
  for (int b = 0; b < calls(s); b++) {
    int64_t m, n, k;
    sizes(s, b, &m, &n, &k);
    f += 2.0 * (double)m * (double)n * (double)k;
  }
  return f;
}

// `shape_i_t(a, b, beta, c, m, n, k)`: the generated kernel of shape i, tile t.
static void add_wrapper(KilnCg *cg, size_t i, size_t t) {
  const Shape *s = &shapes[i];
  LLVMTypeRef params[] = {cg->ptr, cg->ptr, cg->f32, cg->ptr, cg->i64, cg->i64, cg->i64};
  char name[32];
  snprintf(name, sizeof name, "shape_%zu_%zu", i, t);
  cg->fn = LLVMAddFunction(cg->mod, name, LLVMFunctionType(cg->v, params, 7, 0));
  LLVMPositionBuilderAtEnd(cg->b, LLVMAppendBasicBlockInContext(cg->ctx, cg->fn, "entry"));
  KilnGemm g = {.ta = s->ta, .tb = s->tb, .m = LLVMGetParam(cg->fn, 4),
                .n = LLVMGetParam(cg->fn, 5),
                .k = LLVMGetParam(cg->fn, 6), .alpha = s->alpha, .a = LLVMGetParam(cg->fn, 0),
                .lda = s->lda, .b = LLVMGetParam(cg->fn, 1), .ldb = s->ldb,
                .beta = LLVMGetParam(cg->fn, 2), .c = LLVMGetParam(cg->fn, 3), .ldc = s->ldc};
  kiln_cpu_gemm(cg, &g, tiles[t]);
  LLVMBuildRetVoid(cg->b);
}

// Builds every wrapper into dir/gemm.so and loads it.
static void *build(const char *dir) {
  char err[1024];
  KilnTargetOpts to = {"native", 3};
  LLVMTargetMachineRef tm = kiln_cpu_target(&to, err, sizeof err);
  if (!tm) {
    fprintf(stderr, "%s\n", err);
    exit(1);
  }
  KilnCg cg;
  kiln_cg_init(&cg, "gemm", tm);
  for (size_t i = 0; i < NSHAPES; i++)
    for (size_t t = 0; t < NTILES; t++) add_wrapper(&cg, i, t);
  char obj[512], so[512], cmd[1200];
  snprintf(obj, sizeof obj, "%s/gemm.o", dir);
  snprintf(so, sizeof so, "%s/gemm.so", dir);
  if (kiln_cpu_emit(cg.mod, tm, 3, KILN_EMIT_OBJ, obj, err, sizeof err) != 0) {
    fprintf(stderr, "%s\n", err);
    exit(1);
  }
  kiln_cpu_module_free(&cg);
  LLVMDisposeTargetMachine(tm);
  snprintf(cmd, sizeof cmd, "cc -shared -o %s %s", so, obj);
  if (system(cmd) != 0) exit(1);
  void *dl = dlopen(so, RTLD_NOW | RTLD_LOCAL);
  if (!dl) {
    fprintf(stderr, "%s\n", dlerror());
    exit(1);
  }
  return dl;
}

// The thread's CPU time, not the wall clock: on a machine shared with other work
// the scheduler takes the core away for whole time slices, which a wall clock
// would count against whichever variant was running.
static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

typedef struct {
  const Shape *s;
  GemmFn fn;  // NULL: OpenBLAS
  const float *a, *b;
  float *c;
} Run;

static void once(const Run *r) {
  const Shape *s = r->s;
  for (int blk = 0; blk < calls(s); blk++) {
    int64_t m, n, k;
    sizes(s, blk, &m, &n, &k);
    if (r->fn) {
      r->fn(r->a, r->b, (float)s->beta, r->c, m, n, k);
    } else {
      cblas_sgemm(CblasRowMajor, s->ta ? CblasTrans : CblasNoTrans,
                  s->tb ? CblasTrans : CblasNoTrans,
                  (int)m, (int)n, (int)k, (float)s->alpha, r->a, (int)s->lda, r->b, (int)s->ldb,
                  (float)s->beta, r->c, (int)s->ldc);
    }
  }
}

// Seconds per call of r: reps calls timed together.
static double timed(const Run *r, int reps) {
  double t0 = now();
  for (int i = 0; i < reps; i++) once(r);
  return (now() - t0) / reps;
}

static int cmp(const void *x, const void *y) {
  double a = *(const double *)x, b = *(const double *)y;
  return (a > b) - (a < b);
}

// Elements an operand of rows x cols with leading dimension ld spans.
static size_t span(int64_t rows, int64_t cols, int64_t ld) {
  return (size_t)((rows - 1) * ld + cols);
}

static void bench(void *dl, size_t i, int runs) {
  const Shape *s = &shapes[i];
  size_t na = s->ta ? span(s->k, s->m, s->lda) : span(s->m, s->k, s->lda);
  size_t nb = s->tb ? span(s->n, s->k, s->ldb) : span(s->k, s->n, s->ldb);
  size_t nc = span(s->m, s->n, s->ldc);
  float *a = malloc(na * 4), *b = malloc(nb * 4), *c = calloc(nc, 4);
  for (size_t j = 0; j < na; j++) a[j] = (float)((j * 7919) % 1000) / 1000.0f - 0.5f;
  for (size_t j = 0; j < nb; j++) b[j] = (float)((j * 104729) % 1000) / 1000.0f - 0.5f;
  Run r[NVAR];
  for (size_t t = 0; t < NVAR; t++) {
    char name[32];
    snprintf(name, sizeof name, "shape_%zu_%zu", i, t);
    r[t] = (Run){s, t < NTILES ? (GemmFn)(uintptr_t)dlsym(dl, name) : NULL, a, b, c};
  }
  // Calls per timing: about 5 ms of OpenBLAS. Short timings, many of them, in an
  // order that rotates, so a burst of other work lands on every variant alike.
  once(&r[NTILES]);
  int reps = (int)(0.005 / timed(&r[NTILES], 3)) + 1;
  double *t = malloc(sizeof(double) * (size_t)runs * NVAR);
  for (int k = 0; k < runs; k++)
    for (size_t j = 0; j < NVAR; j++) {
      size_t v = (j + (size_t)k) % NVAR;
      t[v * (size_t)runs + (size_t)k] = timed(&r[v], reps);
    }
  printf("%s\t%d\t%d\t%lld\t%lld\t%lld", s->name, s->ta, s->tb, (long long)s->m, (long long)s->n,
         (long long)s->k);
  for (size_t v = 0; v < NVAR; v++) {
    double *tv = t + v * (size_t)runs;
    qsort(tv, (size_t)runs, sizeof(double), cmp);
    printf("\t%.2f/%.2f", flops(s) / tv[runs / 2] * 1e-9, flops(s) / tv[0] * 1e-9);
  }
  // What kiln_cpu_sgemm picks, on the largest call of the shape: the generated
  // kernel or not, and which tile.
  KilnGemm g = {.ta = s->ta, .tb = s->tb, .alpha = s->alpha, .lda = s->lda, .ldb = s->ldb,
                .ldc = s->ldc};
  int64_t m = s->rows_vary ? INT64_MAX : s->m;
  KilnGemmTile rt = kiln_cpu_gemm_tile(&g, m, s->n, s->k);
  int tile = -1;
  for (size_t v = 0; v < NTILES; v++)
    if (tiles[v].mr == rt.mr && tiles[v].nv == rt.nv && (tiles[v].pack == rt.pack || s->tb))
      tile = (int)v;
  printf("\t%d\t%d\n", kiln_cpu_gemm_wins(&g, m, s->n, s->k), tile);
  fflush(stdout);
  free(t);
  free(a);
  free(b);
  free(c);
}

int main(int argc, char **argv) {
  if (argc != 3 && argc != 4) {
    fprintf(stderr, "usage: %s RUNS TMPDIR [NAME-PREFIX]\n", argv[0]);
    return 2;
  }
  openblas_set_num_threads(1);
  void *dl = build(argv[2]);
  for (size_t i = 0; i < NSHAPES; i++)
    if (argc == 3 || strncmp(shapes[i].name, argv[3], strlen(argv[3])) == 0)
      bench(dl, i, atoi(argv[1]));
  dlclose(dl);
  return 0;
}
