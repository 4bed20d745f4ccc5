// Runtime utilities: the random generator and parameter initializers, the thread
// pool, time and medians.
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/runtime.h"

//
// rng
//

// SplitMix64's published first output for state 0 pins the generator: a change
// here would silently change every model's initial weights.
static void test_rng_reference(void **state) {
  (void)state;
  KilnRng r = {0};
  assert_true(kiln_rng_next(&r) == 0xE220A8397B1DCDAFull);
  assert_true(kiln_rng_next(&r) == 0x6E789E6AA1B965F4ull);
}

static void test_rng_streams(void **state) {
  (void)state;
  KilnRng a, b, c, d;
  kiln_rng_seed(&a, 42, "fc.weight");
  kiln_rng_seed(&b, 42, "fc.weight");
  kiln_rng_seed(&c, 42, "fc.bias");
  kiln_rng_seed(&d, 43, "fc.weight");
  int same_c = 0, same_d = 0;
  for (int i = 0; i < 1000; i++) {
    uint64_t x = kiln_rng_next(&a);
    assert_true(x == kiln_rng_next(&b));
    same_c += x == kiln_rng_next(&c);
    same_d += x == kiln_rng_next(&d);
  }
  assert_int_equal(same_c, 0);
  assert_int_equal(same_d, 0);

  // A parameter's values depend on (seed, name) only.
  KilnTensorDesc p = {.name = "w", .rank = 2, .shape = {8, 4}, .init = KILN_ABI_INIT_NORMAL,
                      .init_a = 1};
  float x[32], y[32], z[32];
  kiln_rng_init_param(&p, 7, x);
  kiln_rng_init_param(&(KilnTensorDesc){.name = "other", .rank = 1, .shape = {32},
                                        .init = KILN_ABI_INIT_NORMAL, .init_a = 1},
                      7, z);
  kiln_rng_init_param(&p, 7, y);
  assert_memory_equal(x, y, sizeof x);
  assert_memory_not_equal(x, z, sizeof x);
}

static void test_rng_uniform(void **state) {
  (void)state;
  KilnRng r;
  kiln_rng_seed(&r, 1, "u");
  enum { N = 100000 };
  double sum = 0, lo = 1, hi = 0;
  for (int i = 0; i < N; i++) {
    double u = kiln_rng_uniform(&r);
    sum += u;
    lo = fmin(lo, u);
    hi = fmax(hi, u);
  }
  assert_true(lo >= 0 && hi < 1);
  assert_true(lo < 1e-3 && hi > 1 - 1e-3);
  // Mean 1/2, standard error sqrt(1/12 / N); 4 standard errors as below.
  assert_true(fabs(sum / N - 0.5) < 4 * sqrt(1.0 / 12 / N));
}

// Mean and standard deviation over 100k samples, each within 4 standard errors
// of 0 and 1. The seed is fixed, so the test is deterministic; the tolerance is
// what a correct generator passes with probability 1 - 6e-5 for any seed, while a
// wrong scale or shift (a missing sqrt(2), a mean of 0.5) misses it by far.
// Standard errors: of the mean 1/sqrt(N); of the standard deviation of a normal
// sample about 1/sqrt(2N).
static void test_rng_normal(void **state) {
  (void)state;
  KilnRng r;
  kiln_rng_seed(&r, 2, "n");
  enum { N = 100000 };
  double sum = 0, sq = 0;
  for (int i = 0; i < N; i++) {
    double x = kiln_rng_normal(&r);
    assert_true(isfinite(x));
    sum += x;
    sq += x * x;
  }
  double mean = sum / N, sd = sqrt(sq / N - mean * mean);
  assert_true(fabs(mean) < 4 / sqrt(N));
  assert_true(fabs(sd - 1) < 4 / sqrt(2.0 * N));
}

static void init(KilnTensorDesc d, float *out, int64_t n, double *out_mean, double *out_sd,
                 double *out_maxabs) {
  kiln_rng_init_param(&d, 42, out);
  double s = 0, q = 0, m = 0;
  for (int64_t i = 0; i < n; i++) {
    s += out[i];
    q += (double)out[i] * out[i];
    m = fmax(m, fabs(out[i]));
  }
  *out_mean = s / n;
  *out_sd = sqrt(q / n - *out_mean * *out_mean);
  *out_maxabs = m;
}

static void test_rng_init(void **state) {
  (void)state;
  static float v[64 * 32];
  double mean, sd, m;

  // xavier: uniform in +-sqrt(6 / (fan_in + fan_out)) = +-0.25 for [64, 32].
  init((KilnTensorDesc){.name = "x", .rank = 2, .shape = {64, 32}, .init = KILN_ABI_INIT_XAVIER},
       v, 2048, &mean, &sd, &m);
  assert_true(m <= 0.25f && m > 0.24);
  // A rank-3 weight: fan_in = 4 * 16 = 64, fan_out = 32, same bound.
  init((KilnTensorDesc){.name = "x3", .rank = 3, .shape = {4, 16, 32},
                        .init = KILN_ABI_INIT_XAVIER},
       v, 2048, &mean, &sd, &m);
  assert_true(m <= 0.25f && m > 0.24);
  // A vector counts its length as both fans: +-sqrt(6 / 2048).
  init((KilnTensorDesc){.name = "x1", .rank = 1, .shape = {1024}, .init = KILN_ABI_INIT_XAVIER},
       v, 1024, &mean, &sd, &m);
  assert_true(m <= (float)sqrt(6.0 / 2048) && m > 0.95 * sqrt(6.0 / 2048));
  // A scalar counts 1 and 1: +-sqrt(3).
  init((KilnTensorDesc){.name = "x0", .rank = 0, .init = KILN_ABI_INIT_XAVIER}, v, 1, &mean, &sd,
       &m);
  assert_true(m <= (float)sqrt(3.0));

  // kaiming: normal with std sqrt(2 / fan_in) = 0.25 for fan_in 32; 2048 samples
  // give the std to within about 0.25 / sqrt(4096) = 0.004: 4 of those.
  init((KilnTensorDesc){.name = "k", .rank = 2, .shape = {32, 64}, .init = KILN_ABI_INIT_KAIMING},
       v, 2048, &mean, &sd, &m);
  assert_true(fabs(sd - 0.25) < 4 * 0.25 / sqrt(2 * 2048.0));
  assert_true(fabs(mean) < 4 * 0.25 / sqrt(2048.0));

  // normal: a = std, b = mean.
  init((KilnTensorDesc){.name = "n", .rank = 1, .shape = {2048}, .init = KILN_ABI_INIT_NORMAL,
                        .init_a = 0.02, .init_b = 1},
       v, 2048, &mean, &sd, &m);
  assert_true(fabs(mean - 1) < 4 * 0.02 / sqrt(2048.0));
  assert_true(fabs(sd - 0.02) < 4 * 0.02 / sqrt(2 * 2048.0));

  // uniform: a = low, b = high.
  init((KilnTensorDesc){.name = "u", .rank = 1, .shape = {2048}, .init = KILN_ABI_INIT_UNIFORM,
                        .init_a = -3, .init_b = -1},
       v, 2048, &mean, &sd, &m);
  for (int i = 0; i < 2048; i++) assert_true(v[i] >= -3 && v[i] <= -1);
  assert_true(fabs(mean + 2) < 0.05);

  init((KilnTensorDesc){.name = "z", .rank = 1, .shape = {16}, .init = KILN_ABI_INIT_ONES}, v, 16,
       &mean, &sd, &m);
  assert_true(mean == 1 && sd == 0);
  init((KilnTensorDesc){.name = "z", .rank = 1, .shape = {16}, .init = KILN_ABI_INIT_ZEROS}, v, 16,
       &mean, &sd, &m);
  assert_true(m == 0);
}

//
// pool
//

typedef struct {
  int64_t n;
  unsigned char *hits;      // [n]: how often each index was visited
  atomic_llong sum;         // of the indices
  atomic_int calls;
  atomic_int bad;           // chunks that were empty or out of range
} Job;

static void visit(void *ctx, int64_t lo, int64_t hi) {
  Job *j = ctx;
  // cmocka's asserts must stay on the test's thread: count here, check there.
  if (!(0 <= lo && lo < hi && hi <= j->n)) {  // never an empty chunk
    atomic_fetch_add(&j->bad, 1);
    return;
  }
  long long s = 0;
  for (int64_t i = lo; i < hi; i++) {
    j->hits[i]++;
    s += i;
  }
  atomic_fetch_add(&j->sum, s);
  atomic_fetch_add(&j->calls, 1);
}

static void check_run(KilnPool *p, int64_t n) {
  Job j = {.n = n, .hits = calloc((size_t)n + 1, 1)};
  atomic_init(&j.sum, 0);
  atomic_init(&j.calls, 0);
  atomic_init(&j.bad, 0);
  kiln_pool_run(p, visit, &j, n);
  assert_int_equal(atomic_load(&j.bad), 0);
  assert_true(atomic_load(&j.sum) == n * (n - 1) / 2);
  for (int64_t i = 0; i < n; i++) assert_int_equal(j.hits[i], 1);
  int threads = kiln_pool_threads(p);
  assert_int_equal(atomic_load(&j.calls), n < threads ? n : threads);
  free(j.hits);
}

static void test_pool_sums(void **state) {
  (void)state;
  static const int64_t sizes[] = {0, 1, 3, 1000};
  for (int t = 1; t <= 4; t++) {
    KilnPool *p = kiln_pool_create(t);
    assert_non_null(p);
    assert_int_equal(kiln_pool_threads(p), t);
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) check_run(p, sizes[k]);
    kiln_pool_destroy(p);
  }
  check_run(NULL, 5);  // no pool: the caller does it all
  assert_int_equal(kiln_pool_threads(NULL), 1);
  KilnPool *one = kiln_pool_create(0);
  assert_int_equal(kiln_pool_threads(one), 1);
  kiln_pool_destroy(one);
  kiln_pool_destroy(NULL);
}

// Many runs back to back on one pool, with sizes that leave some workers out of
// some runs: catches lost wake-ups, a generation run twice and early returns.
static void test_pool_repeated(void **state) {
  (void)state;
  KilnPool *p = kiln_pool_create(4);
  for (int i = 0; i < 1000; i++) check_run(p, i % 7 == 0 ? 2 : 1000);
  kiln_pool_destroy(p);
  // Created and destroyed at once: the workers may not have started waiting yet.
  for (int i = 0; i < 50; i++) kiln_pool_destroy(kiln_pool_create(4));
}

//
// clock
//

static void test_median(void **state) {
  (void)state;
  double odd[5] = {5, 1, 4, 2, 3};
  assert_true(kiln_median(odd, 5) == 3);
  assert_true(odd[0] == 1 && odd[4] == 5);  // sorted in place
  double even[4] = {10, -1, 4, 2};
  assert_true(kiln_median(even, 4) == 3);
  double one[1] = {7.5};
  assert_true(kiln_median(one, 1) == 7.5);
  assert_true(isnan(kiln_median(one, 0)));
}

static void test_now(void **state) {
  (void)state;
  double a = kiln_now(), b = kiln_now();
  assert_true(a > 0 && b >= a);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_rng_reference), cmocka_unit_test(test_rng_streams),
      cmocka_unit_test(test_rng_uniform),   cmocka_unit_test(test_rng_normal),
      cmocka_unit_test(test_rng_init),      cmocka_unit_test(test_pool_sums),
      cmocka_unit_test(test_pool_repeated), cmocka_unit_test(test_median),
      cmocka_unit_test(test_now),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
