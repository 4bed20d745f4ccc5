// A fixed pool of worker threads for data-parallel loops. A run publishes one job
// (fn, ctx, n) under a generation number and wakes the workers; worker i runs
// chunk i of [0, n), the caller runs chunk 0, and the caller sleeps until the
// count of outstanding chunks reaches zero. Everything the threads share is read
// and written under one mutex, so the pool is race-free by construction; the cost
// is a condition-variable wake per run, a few microseconds, small next to a kernel.
//
// One run at a time: kiln_pool_run is not reentrant (fn must not call it on the
// same pool) and two threads must not run the same pool at once. Both are caught
// and abort, rather than deadlock.
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#include "runtime/runtime.h"

// More threads than this is a configuration mistake, not a machine.
#define MAX_THREADS 1024

typedef struct {
  KilnPool *pool;
  int index;              // the chunk this worker runs: 1 .. threads-1
  pthread_t tid;
} Worker;

struct KilnPool {
  int threads;            // including the caller; fixed after create
  int nworkers;
  Worker *workers;        // [nworkers]
  pthread_mutex_t mu;
  pthread_cond_t go;      // workers: a new generation, or stop
  pthread_cond_t done;    // caller: pending reached 0
  // Under mu:
  uint64_t gen;           // bumped once per run
  int pending;            // chunks of this generation not yet finished by workers
  bool busy, stop;
  void (*fn)(void *ctx, int64_t lo, int64_t hi);
  void *ctx;
  int64_t n;
  int nchunks;            // min(threads, n)
};

// Chunk i of [0, n) in c nearly equal contiguous pieces; the first n % c are one
// longer. Written to avoid n * i, which could overflow.
static void chunk(int64_t n, int c, int i, int64_t *lo, int64_t *hi) {
  int64_t base = n / c, rem = n % c;
  *lo = i * base + (i < rem ? i : rem);
  *hi = *lo + base + (i < rem);
}

static void *worker_main(void *arg) {
  Worker *w = arg;
  KilnPool *p = w->pool;
  uint64_t seen = 0;
  pthread_mutex_lock(&p->mu);
  for (;;) {
    while (p->gen == seen && !p->stop) pthread_cond_wait(&p->go, &p->mu);
    if (p->stop) break;
    seen = p->gen;
    // A worker past the chunk count sits this generation out. It may even miss a
    // whole generation; that is harmless, since only participants are waited for.
    if (w->index >= p->nchunks) continue;
    void (*fn)(void *, int64_t, int64_t) = p->fn;
    void *ctx = p->ctx;
    int64_t lo, hi;
    chunk(p->n, p->nchunks, w->index, &lo, &hi);
    pthread_mutex_unlock(&p->mu);
    fn(ctx, lo, hi);
    pthread_mutex_lock(&p->mu);
    if (--p->pending == 0) pthread_cond_signal(&p->done);
  }
  pthread_mutex_unlock(&p->mu);
  return NULL;
}

KilnPool *kiln_pool_create(int threads) {
  if (threads < 1) threads = 1;
  if (threads > MAX_THREADS) threads = MAX_THREADS;
  KilnPool *p = calloc(1, sizeof *p);
  if (!p) return NULL;
  p->workers = calloc((size_t)threads, sizeof *p->workers);
  if (!p->workers) {
    free(p);
    return NULL;
  }
  pthread_mutex_init(&p->mu, NULL);
  pthread_cond_init(&p->go, NULL);
  pthread_cond_init(&p->done, NULL);
  // If the system refuses a thread, the pool is simply smaller.
  for (int i = 1; i < threads; i++) {
    Worker *w = &p->workers[p->nworkers];
    w->pool = p;
    w->index = i;
    if (pthread_create(&w->tid, NULL, worker_main, w) != 0) break;
    p->nworkers++;
  }
  p->threads = p->nworkers + 1;
  return p;
}

void kiln_pool_destroy(KilnPool *p) {
  if (!p) return;
  pthread_mutex_lock(&p->mu);
  p->stop = true;
  pthread_cond_broadcast(&p->go);
  pthread_mutex_unlock(&p->mu);
  for (int i = 0; i < p->nworkers; i++) pthread_join(p->workers[i].tid, NULL);
  pthread_cond_destroy(&p->done);
  pthread_cond_destroy(&p->go);
  pthread_mutex_destroy(&p->mu);
  free(p->workers);
  free(p);
}

int kiln_pool_threads(const KilnPool *p) {
  return p ? p->threads : 1;
}

void kiln_pool_run(KilnPool *p, void (*fn)(void *ctx, int64_t lo, int64_t hi), void *ctx,
                   int64_t n) {
  if (n <= 0) return;
  int c = kiln_pool_threads(p);
  if (c > n) c = (int)n;
  if (c == 1) {
    fn(ctx, 0, n);
    return;
  }
  pthread_mutex_lock(&p->mu);
  if (p->busy) {
    pthread_mutex_unlock(&p->mu);
    fprintf(stderr, "kiln runtime: kiln_pool_run called during a run of the same pool\n");
    abort();
  }
  p->busy = true;
  p->fn = fn;
  p->ctx = ctx;
  p->n = n;
  p->nchunks = c;
  p->pending = c - 1;
  p->gen++;
  pthread_cond_broadcast(&p->go);
  pthread_mutex_unlock(&p->mu);

  int64_t lo, hi;
  chunk(n, c, 0, &lo, &hi);
  fn(ctx, lo, hi);

  pthread_mutex_lock(&p->mu);
  while (p->pending > 0) pthread_cond_wait(&p->done, &p->mu);
  p->busy = false;
  pthread_mutex_unlock(&p->mu);
}
