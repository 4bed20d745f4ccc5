// Random numbers for parameter initialization. SplitMix64 (Steele, Lea, Flood,
// "Fast splittable pseudorandom number generators", 2014): a 64-bit counter
// stepped by the golden-ratio constant and passed through a mixing function. Each
// parameter draws from its own stream, seeded from (seed, FNV-1a of its name), so
// its values depend on nothing else: not on the order parameters are declared or
// initialized in, nor on how many others there are.
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "runtime/runtime.h"

#define GOLDEN 0x9E3779B97F4A7C15ull
#define TWO_PI 6.283185307179586476925

// SplitMix64's output function: a bijection that spreads every input bit.
static uint64_t mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

static uint64_t fnv1a(const char *s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (; s && *s; s++) h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
  return h;
}

void kiln_rng_seed(KilnRng *r, uint64_t seed, const char *stream) {
  // Mixing the seed before combining keeps nearby seeds (42, 43) from giving
  // streams that differ in a few bits only.
  r->state = mix(mix(seed + GOLDEN) ^ fnv1a(stream));
}

uint64_t kiln_rng_next(KilnRng *r) {
  r->state += GOLDEN;
  return mix(r->state);
}

// The top 53 bits, scaled: every double in [0, 1) on a 2^-53 grid, equally likely.
double kiln_rng_uniform(KilnRng *r) {
  return (double)(kiln_rng_next(r) >> 11) * 0x1.0p-53;
}

// Box-Muller; the second value of each pair is dropped, so a stream is just a
// sequence of uniform pairs and needs no extra state.
double kiln_rng_normal(KilnRng *r) {
  double u1 = 1.0 - kiln_rng_uniform(r);  // (0, 1]: log(u1) is finite
  double u2 = kiln_rng_uniform(r);
  return sqrt(-2.0 * log(u1)) * cos(TWO_PI * u2);
}

// fan_in: the product of all dims but the last; fan_out: the last (weights are
// [in, out]). A vector counts its length as both; a scalar counts 1.
static void fans(const KilnTensorDesc *d, double *out_in, double *out_out) {
  double in = 1, out = 1;
  if (d->rank == 1) {
    in = out = (double)d->shape[0];
  } else if (d->rank > 1) {
    for (int i = 0; i < d->rank - 1; i++) in *= (double)d->shape[i];
    out = (double)d->shape[d->rank - 1];
  }
  *out_in = in > 0 ? in : 1;
  *out_out = out > 0 ? out : 1;
}

void kiln_rng_init_param(const KilnTensorDesc *d, uint64_t seed, float *out) {
  int64_t n = 1;
  for (int i = 0; i < d->rank; i++) n *= d->shape[i];
  KilnRng r;
  kiln_rng_seed(&r, seed, d->name);
  double fan_in, fan_out;
  fans(d, &fan_in, &fan_out);
  double a = d->init_a, b = d->init_b;
  switch (d->init) {
  case KILN_ABI_INIT_ZEROS:
  case KILN_ABI_INIT_ONES:
    for (int64_t i = 0; i < n; i++) out[i] = d->init == KILN_ABI_INIT_ONES ? 1.0f : 0.0f;
    return;
  case KILN_ABI_INIT_NORMAL:  // a = std, b = mean
    for (int64_t i = 0; i < n; i++) out[i] = (float)(b + a * kiln_rng_normal(&r));
    return;
  case KILN_ABI_INIT_UNIFORM:  // a = low, b = high
    for (int64_t i = 0; i < n; i++) out[i] = (float)(a + (b - a) * kiln_rng_uniform(&r));
    return;
  case KILN_ABI_INIT_XAVIER: {
    double bound = sqrt(6.0 / (fan_in + fan_out));
    for (int64_t i = 0; i < n; i++) out[i] = (float)(bound * (2.0 * kiln_rng_uniform(&r) - 1.0));
    return;
  }
  case KILN_ABI_INIT_KAIMING: {
    double std = sqrt(2.0 / fan_in);
    for (int64_t i = 0; i < n; i++) out[i] = (float)(std * kiln_rng_normal(&r));
    return;
  }
  default:
    // The compiler emits only the initializers above: anything else is a bug.
    fprintf(stderr, "kiln runtime: parameter '%s' has unknown initializer %d\n", d->name,
            (int)d->init);
    abort();
  }
}
