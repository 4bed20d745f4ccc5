// Kiln runtime: what compiled models link against. Small C, no LLVM; libc, libm,
// pthreads, jansson (safetensors headers) and CBLAS only.
//
// Sections follow the files of runtime/: status.c, safetensors.c, npy.c, csv.c,
// rng.c, pool.c, clock.c, context.c, lib.c, cli.c.
#ifndef KILN_RUNTIME_H
#define KILN_RUNTIME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "include/kiln/abi.h"

//
// status.c: errors as values. A failing call fills a KilnStatus with a message
// naming the file, the offset or line, and what was expected; only main prints.
//
typedef struct {
  int code;            // 0: ok
  char msg[512];
} KilnStatus;

int kiln_rt_fail(KilnStatus *st, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#define KILN_TRY(expr)            \
  do {                            \
    int rc_ = (expr);             \
    if (rc_ != 0) return rc_;     \
  } while (0)

// Writes a file atomically: data to PATH.tmp.PID, fsync, rename over PATH, fsync
// the folder. On failure PATH is untouched and the temporary file removed.
int kiln_rt_write_atomic(const char *path, const void *const *parts, const size_t *lens,
                         int nparts, KilnStatus *st);

//
// safetensors.c: the safetensors format (8-byte little-endian header length, a
// JSON header, raw little-endian data), read strictly: every tensor's dtype, shape
// and byte range is checked against the header, the file size and the model.
//
typedef struct {
  char name[256];
  int32_t dtype;                     // KILN_ABI_F32 / KILN_ABI_I32
  int32_t rank;
  int64_t shape[KILN_ABI_MAX_RANK];
  int64_t begin, end;                // byte range within the data section
} KilnStEntry;

typedef struct {
  KilnStEntry *entries;
  int n;
  char *metadata_json;               // the "__metadata__" object as JSON text, or NULL
  unsigned char *data;               // the data section
  int64_t data_len;
} KilnStFile;

int kiln_st_read(const char *path, KilnStFile *out, KilnStatus *st);
void kiln_st_free(KilnStFile *f);
const KilnStEntry *kiln_st_find(const KilnStFile *f, const char *name);
// Writes tensors (descs[i] names, dtypes and shapes data[i]) atomically, with
// optional string metadata pairs (keys[i] -> vals[i]).
int kiln_st_write(const char *path, const KilnTensorDesc *descs, const void *const *data, int n,
                  const char *const *keys, const char *const *vals, int nmeta, KilnStatus *st);

//
// npy.c: NumPy .npy files, versions 1-3, little-endian f4/i4 (and f8/i8 read and
// converted when exact), C order. Header and sizes are validated before reading.
//
typedef struct {
  int32_t dtype;                     // after conversion: KILN_ABI_F32 or KILN_ABI_I32
  int32_t rank;
  int64_t shape[KILN_ABI_MAX_RANK];
  void *data;                        // malloc'd, rank-major C order
  int64_t count;
} KilnArray;

int kiln_npy_read(const char *path, KilnArray *out, KilnStatus *st);
int kiln_npy_write(const char *path, int32_t dtype, const int64_t *shape, int rank,
                   const void *data, KilnStatus *st);
void kiln_array_free(KilnArray *a);

//
// csv.c: numeric CSV, comma-separated, optional header line, every row the same
// width. An error names the file, line and column.
//
typedef struct {
  float *v;                          // rows * cols, row-major
  int64_t rows, cols;
} KilnCsv;

int kiln_csv_read(const char *path, bool header, KilnCsv *out, KilnStatus *st);
void kiln_csv_free(KilnCsv *c);
// Writes rows x cols floats with %.9g (round-trips f32) to f.
void kiln_csv_write(FILE *f, const float *v, int64_t rows, int64_t cols);

//
// rng.c: a counter-based generator (SplitMix64 / Philox-like streams) so every
// parameter's initial values depend only on the seed and the parameter's name.
//
typedef struct {
  uint64_t state;
} KilnRng;

void kiln_rng_seed(KilnRng *r, uint64_t seed, const char *stream);
uint64_t kiln_rng_next(KilnRng *r);
double kiln_rng_uniform(KilnRng *r);   // [0, 1)
double kiln_rng_normal(KilnRng *r);    // mean 0, std 1
// Fills a parameter per its descriptor's initializer.
void kiln_rng_init_param(const KilnTensorDesc *d, uint64_t seed, float *out);

//
// pool.c: a fixed pool of worker threads; the calling thread works too.
//
typedef struct KilnPool KilnPool;

KilnPool *kiln_pool_create(int threads);   // threads <= 1: no workers
void kiln_pool_destroy(KilnPool *p);
int kiln_pool_threads(const KilnPool *p);
// Runs fn(ctx, lo, hi) over [0, n) split into contiguous chunks, one per thread,
// and returns when all are done.
void kiln_pool_run(KilnPool *p, void (*fn)(void *ctx, int64_t lo, int64_t hi), void *ctx,
                   int64_t n);

//
// clock.c: monotonic time and medians.
//
double kiln_now(void);                     // seconds, CLOCK_MONOTONIC
double kiln_median(double *v, int n);      // sorts v

//
// context.c: one compiled model, ready to run: its weights and planned arena
// (allocated once, 64-byte aligned), a thread pool, and the last error.
//
typedef struct KilnCtx {
  const KilnModelDesc *d;
  char *weights;          // d->weights_bytes
  char *arena;            // d->arena_bytes
  KilnPool *pool;
  KilnStatus st;          // last error, for the library API
} KilnCtx;

// threads <= 0: all online CPUs. Parameters are initialized from the model's seed.
KilnCtx *kiln_ctx_create(const KilnModelDesc *d, int threads, KilnStatus *st);
void kiln_ctx_destroy(KilnCtx *c);
void kiln_ctx_init_params(KilnCtx *c, uint64_t seed);
// Loads every parameter from a safetensors file: names, dtypes and shapes must
// match the model exactly; missing and unexpected tensors are listed.
int kiln_ctx_load(KilnCtx *c, const char *path, KilnStatus *st);
int kiln_ctx_save(KilnCtx *c, const char *path, KilnStatus *st);
// Pointer to input or output i inside the arena.
void *kiln_ctx_input(KilnCtx *c, int i);
const void *kiln_ctx_output(const KilnCtx *c, int i);
// Checks i32 inputs against their index bounds (token ids, labels).
int kiln_ctx_check_inputs(KilnCtx *c, KilnStatus *st);
void kiln_ctx_forward(KilnCtx *c);

//
// lib.c: the C API of generated libraries; NAME_create and friends forward here
// with their model's descriptor.
//
KilnCtx *kiln_lib_create(const KilnModelDesc *d, int threads);
void kiln_lib_destroy(const KilnModelDesc *d, KilnCtx *c);
int kiln_lib_load(const KilnModelDesc *d, KilnCtx *c, const char *path);
int kiln_lib_save(const KilnModelDesc *d, KilnCtx *c, const char *path);
const char *kiln_lib_last_error(const KilnModelDesc *d, const KilnCtx *c);
// ins: the live inputs in declaration order; outs: every output.
int kiln_lib_forward(KilnCtx *c, const void *const *ins, void *const *outs);

#endif
