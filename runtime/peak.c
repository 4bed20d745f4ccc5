// The machine's peaks for the profiler's roofline: how many FLOPs one core can
// issue and how many bytes memory can stream. Both are measured, best of several
// short runs (a run can only be slowed down by other work, never sped up), and
// cached so a profile does not pay for them each time.
#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "runtime/runtime.h"

// Independent accumulators per loop (ACC, below): enough to cover an FMA's latency
// (4 cycles) times the FMA units (2) with room to spare, so the loop is
// throughput-bound.
#define FMA_ITERS 2000000      // one run: ~50M FMAs, ~10 ms at AVX-512 rates
#define RUNS 7
#define STREAM_FLOATS (1 << 24)  // 64 MiB per array: beyond any last-level cache

// ACC named accumulators, so the compiler keeps each in a register (an array is
// left in memory when the loop over it is not unrolled, and store-to-load latency
// then bounds the loop instead of the FMA units).
#define ACC 12
#define EACH(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11)

// x <- x * m + a in every accumulator; the sum keeps the work observable. VEC,
// SET1, FMA_OP and ADD_OP name the vector type and operations of each variant.
#define DECLARE(k) VEC acc##k = SET1((float)(k));
#define STEP(k) acc##k = FMA_OP(acc##k, m, a);
#define SUM(k) if (k) s = ADD_OP(s, acc##k);
#define FMA_LOOP                                       \
  const VEC m = SET1(0.9999999f), a = SET1(1e-7f);     \
  EACH(DECLARE)                                        \
  for (int64_t i = 0; i < iters; i++) { EACH(STEP) }   \
  VEC s = acc0;                                        \
  EACH(SUM)

#if defined(__x86_64__)
#define VEC __m512
#define SET1 _mm512_set1_ps
#define FMA_OP _mm512_fmadd_ps
#define ADD_OP _mm512_add_ps
__attribute__((target("avx512f"))) static float fma_avx512(int64_t iters) {
  FMA_LOOP
  return _mm512_reduce_add_ps(s);
}
#undef VEC
#undef SET1
#undef FMA_OP
#undef ADD_OP

#define VEC __m256
#define SET1 _mm256_set1_ps
#define FMA_OP _mm256_fmadd_ps
#define ADD_OP _mm256_add_ps
__attribute__((target("avx2,fma"))) static float fma_avx2(int64_t iters) {
  FMA_LOOP
  float out[8], sum = 0;
  _mm256_storeu_ps(out, s);
  for (int j = 0; j < 8; j++) sum += out[j];
  return sum;
}
#undef VEC
#undef SET1
#undef FMA_OP
#undef ADD_OP
#endif

// Without vector FMA: scalar multiply-adds, still ACC chains deep.
static float scalar_fma(float x, float m, float a) { return x * m + a; }
static float scalar_add(float x, float y) { return x + y; }
static float scalar_set1(float x) { return x; }

#define VEC float
#define SET1 scalar_set1
#define FMA_OP scalar_fma
#define ADD_OP scalar_add
static float fma_scalar(int64_t iters) {
  FMA_LOOP
  return s;
}
#undef VEC
#undef SET1
#undef FMA_OP
#undef ADD_OP

typedef struct {
  float (*fn)(int64_t);
  int lanes;
  const char *isa;
} FmaLoop;

static FmaLoop best_loop(void) {
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return (FmaLoop){fma_avx512, 16, "avx512"};
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
    return (FmaLoop){fma_avx2, 8, "avx2"};
#endif
  return (FmaLoop){fma_scalar, 1, "scalar"};
}

// Keeps results alive without printing them.
static volatile float sink;

static double measure_fma(FmaLoop l) {
  int64_t iters = l.lanes == 1 ? FMA_ITERS / 4 : FMA_ITERS;
  sink = l.fn(iters);  // warm-up: lets the core reach its vector clock
  double best = 0;
  for (int r = 0; r < RUNS; r++) {
    double t0 = kiln_now();
    sink = l.fn(iters);
    double dt = kiln_now() - t0;
    double gf = 2.0 * ACC * l.lanes * (double)iters / dt / 1e9;
    if (gf > best) best = gf;
  }
  return best;
}

typedef struct {
  float *a, *b, *c;
} Triad;

// a = b + s c over [lo, hi): 8 bytes read and 4 written per element.
static void triad(void *ctx, int64_t lo, int64_t hi) {
  Triad *t = ctx;
  for (int64_t i = lo; i < hi; i++) t->a[i] = t->b[i] + 3.0f * t->c[i];
}

static double measure_stream(KilnPool *pool, const Triad *t) {
  kiln_pool_run(pool, triad, (void *)t, STREAM_FLOATS);  // first touch, page faults
  double best = 0;
  for (int r = 0; r < RUNS; r++) {
    double t0 = kiln_now();
    kiln_pool_run(pool, triad, (void *)t, STREAM_FLOATS);
    double dt = kiln_now() - t0;
    double gbs = 12.0 * STREAM_FLOATS / dt / 1e9;
    if (gbs > best) best = gbs;
  }
  return best;
}

// The "model name" line of /proc/cpuinfo, or "unknown".
static void cpu_name(char *buf, size_t len) {
  snprintf(buf, len, "unknown");
  FILE *f = fopen("/proc/cpuinfo", "r");
  if (!f) return;
  char line[512];
  while (fgets(line, sizeof line, f)) {
    if (strncmp(line, "model name", 10) != 0) continue;
    const char *v = strchr(line, ':');
    if (!v) break;
    for (v++; *v == ' '; v++) continue;
    snprintf(buf, len, "%.*s", (int)strcspn(v, "\n"), v);
    break;
  }
  fclose(f);
}

int kiln_peak_measure(KilnPeak *out, KilnStatus *st) {
  memset(out, 0, sizeof *out);
  FmaLoop l = best_loop();
  snprintf(out->isa, sizeof out->isa, "%s", l.isa);
  cpu_name(out->cpu, sizeof out->cpu);
  out->gflops_core = measure_fma(l);
  Triad t = {malloc(STREAM_FLOATS * sizeof(float)), malloc(STREAM_FLOATS * sizeof(float)),
             malloc(STREAM_FLOATS * sizeof(float))};
  out->cpus = (int)sysconf(_SC_NPROCESSORS_ONLN);
  KilnPool *one = kiln_pool_create(1), *all = kiln_pool_create(out->cpus);
  int rc = 0;
  if (!t.a || !t.b || !t.c || !one || !all) {
    rc = kiln_rt_fail(st, "out of memory for the bandwidth measurement (%d MiB)",
                      3 * (int)(STREAM_FLOATS * sizeof(float) >> 20));
  } else {
    for (int64_t i = 0; i < STREAM_FLOATS; i++) t.b[i] = 1, t.c[i] = 2;
    out->gbs_core = measure_stream(one, &t);
    out->cpus = kiln_pool_threads(all);
    out->gbs = measure_stream(all, &t);
  }
  kiln_pool_destroy(one);
  kiln_pool_destroy(all);
  free(t.a);
  free(t.b);
  free(t.c);
  return rc;
}

int kiln_peak_cache_path(char *buf, size_t len) {
  const char *xdg = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
  if (xdg && *xdg) snprintf(buf, len, "%s/kiln/peak.json", xdg);
  else if (home && *home) snprintf(buf, len, "%s/.cache/kiln/peak.json", home);
  else return -1;
  return 0;
}

// The cache when it is readable and describes this CPU; anything else is a miss.
static bool read_cache(const char *path, KilnPeak *out) {
  json_t *j = json_load_file(path, 0, NULL);
  if (!j) return false;
  KilnPeak p = {0};
  const char *isa = NULL, *cpu = NULL;
  int ok = json_unpack(j, "{s:F, s:F, s:F, s:i, s:s, s:s}", "gflops_core", &p.gflops_core,
                       "gbs_core", &p.gbs_core, "gbs", &p.gbs, "cpus", &p.cpus, "isa", &isa,
                       "cpu", &cpu) == 0;
  if (ok) {
    snprintf(p.isa, sizeof p.isa, "%s", isa);
    snprintf(p.cpu, sizeof p.cpu, "%s", cpu);
  }
  json_decref(j);
  char here[128];
  cpu_name(here, sizeof here);
  ok = ok && strcmp(p.cpu, here) == 0 && p.cpus == (int)sysconf(_SC_NPROCESSORS_ONLN) &&
       p.gflops_core > 0 && p.gbs_core > 0 && p.gbs > 0;
  if (ok) *out = p;
  return ok;
}

// mkdir -p of path's folders.
static void make_dirs(const char *path) {
  char buf[4096];
  snprintf(buf, sizeof buf, "%s", path);
  for (char *p = buf + 1; *p; p++) {
    if (*p != '/') continue;
    *p = 0;
    if (mkdir(buf, 0777) != 0 && errno != EEXIST) return;
    *p = '/';
  }
}

int kiln_peak_write(const char *path, const KilnPeak *p, KilnStatus *st) {
  json_t *j = json_pack("{s:f, s:f, s:f, s:i, s:s, s:s}", "gflops_core", p->gflops_core,
                        "gbs_core", p->gbs_core, "gbs", p->gbs, "cpus", p->cpus, "isa", p->isa,
                        "cpu", p->cpu);
  char *text = j ? json_dumps(j, JSON_INDENT(2)) : NULL;
  json_decref(j);
  if (!text) return kiln_rt_fail(st, "%s: out of memory", path);
  make_dirs(path);
  const void *parts[] = {text, "\n"};
  size_t lens[] = {strlen(text), 1};
  int rc = kiln_rt_write_atomic(path, parts, lens, 2, st);
  free(text);
  return rc;
}

int kiln_peak_get(KilnPeak *out, FILE *note, KilnStatus *st) {
  char path[4096];
  bool cached = kiln_peak_cache_path(path, sizeof path) == 0;
  if (cached && read_cache(path, out)) return 0;
  if (note) fprintf(note, "measuring this machine's peaks (once; see `peak`)...\n");
  KILN_TRY(kiln_peak_measure(out, st));
  KilnStatus ignored = {0};
  if (cached && kiln_peak_write(path, out, &ignored) != 0 && note)
    fprintf(note, "note: cannot cache the peaks: %s\n", ignored.msg);
  return 0;
}

void kiln_peak_print(const KilnPeak *p, FILE *f) {
  fprintf(f, "cpu:        %s, %d CPUs\n", p->cpu, p->cpus);
  fprintf(f, "compute:    %.1f GFLOP/s per core (f32 FMA, %s)\n", p->gflops_core, p->isa);
  fprintf(f, "memory:     %.1f GB/s one thread, %.1f GB/s %d threads (triad)\n", p->gbs_core,
          p->gbs, p->cpus);
}
