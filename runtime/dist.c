// Data-parallel training: what moves between the ranks, and when. The bytes move
// through a KilnCommOps (mpi.c), and on GPUs the gradients through NCCL (cuda.c,
// nccl.c); this file decides which:
//   - each gradient is summed over the ranks as soon as the backward pass has
//     finished it (kiln_rt_grad_ready), so the sums overlap the kernels after it,
//     and averaged once all are in (kiln_rt_grads_done);
//   - with a sharded optimizer (ZeRO stage 1) each rank owns a contiguous run of
//     parameters: it updates only those, keeps only their optimizer state, and
//     sends them to the others after the update (kiln_rt_update);
//   - the loss and an interrupt are agreed on after every step, so every rank
//     takes the same steps and stops at the same one.
#define _DEFAULT_SOURCE  // madvise
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "runtime/runtime.h"

// Programs linked without mpi.c have no transport.
__attribute__((weak)) const KilnCommOps *kiln_comm_mpi(void) { return NULL; }

// Open MPI's mpirun and Hydra (MPICH) say how many; PMIx (srun --mpi=pmix) only
// that a launcher started the process.
long kiln_dist_launched(void) {
  const char *names[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE"};
  for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
    const char *v = getenv(names[i]);
    if (!v || !*v) continue;
    long n = strtol(v, NULL, 10);
    return n > 0 ? n : 1;
  }
  return getenv("PMIX_RANK") || getenv("PMI_RANK") ? 1 : 0;
}

int kiln_dist_init(const KilnCommOps *ops, KilnDist **out, KilnStatus *st) {
  *out = NULL;
  if (!ops) {
    long n = kiln_dist_launched();
    if (n > 1)
      return kiln_rt_fail(st, "started by an MPI launcher as one of %ld processes, but this program "
                          "was built without MPI, so each would train alone; rebuild it with "
                          "`kiln build --mpi`", n);
    return 0;
  }
  int rank = 0, size = 1, local = 1, local_rank = 0;
  KILN_TRY(ops->init(&rank, &size, &local, &local_rank, st));
  if (size <= 1) {
    ops->finalize();
    return 0;
  }
  KilnDist *d = calloc(1, sizeof *d);
  if (!d) return kiln_rt_fail(st, "out of memory");
  *d = (KilnDist){.ops = ops, .rank = rank, .size = size, .local = local > 0 ? local : 1,
                  .local_rank = local_rank, .timeout = 300};
  kiln_cuda_rank_device(local_rank);  // one GPU per rank, if the program is for GPUs
  *out = d;
  return 0;
}

void kiln_dist_finish(KilnDist *d) {
  if (!d) return;
  d->ops->finalize();
  free(d->first);
  free(d->wcount);
  free(d->wdispl);
  free(d->ocount);
  free(d->odispl);
  free(d);
}

void kiln_dist_die(KilnDist *d, const char *who, const KilnStatus *st) {
  fprintf(stderr, "%s: error: rank %d of %d: %s\n", who, d->rank, d->size, st->msg);
  fflush(stderr);
  d->ops->abort(1);
}

// Rank r owns the parameters whose middle byte falls in the r-th of `size` equal
// parts of the parameter block: contiguous runs of whole parameters, balanced by
// bytes. Their state follows the same order in the optimizer block.
static int plan_shards(KilnDist *d, KilnStatus *st) {
  const KilnModelDesc *m = d->c->d;
  int np = m->nparams, ns = np ? m->nopt / np : 0;
  if (!np || !ns || ns * np != m->nopt)
    return kiln_rt_fail(st, "--shard-optimizer: model '%s' has no per-parameter optimizer state "
                        "to shard", m->name);
  for (int p = 1; p < np; p++)
    if (m->params[p].offset <= m->params[p - 1].offset)
      return kiln_rt_fail(st, "--shard-optimizer: the parameters of '%s' are not laid out in "
                          "order; rebuild it with this kiln", m->name);
  size_t n = (size_t)d->size;
  d->wcount = calloc(n, sizeof *d->wcount), d->wdispl = calloc(n, sizeof *d->wdispl);
  d->ocount = calloc(n, sizeof *d->ocount), d->odispl = calloc(n, sizeof *d->odispl);
  if (!d->wcount || !d->wdispl || !d->ocount || !d->odispl) return kiln_rt_fail(st, "out of memory");
  int64_t wend = m->weights_bytes, oend = m->weights_bytes + m->opt_bytes;
  int64_t iters = 0;  // update iterations before parameter p
  for (int p = 0, k = 0; p < np; p++) {
    int64_t lo = m->params[p].offset, hi = p + 1 < np ? m->params[p + 1].offset : wend;
    int r = (int)((lo + (hi - lo) / 2) * d->size / wend);
    int64_t olo = m->opt[p * ns].offset, ohi = p + 1 < np ? m->opt[(p + 1) * ns].offset : oend;
    if (!d->wcount[r]) d->wdispl[r] = lo / 4, d->odispl[r] = olo / 4;
    d->wcount[r] = hi / 4 - d->wdispl[r];
    d->ocount[r] = ohi / 4 - d->odispl[r];
    int64_t mine = 0;
    for (; k < m->ngrads && m->grads[k].param == p; k++) mine += m->grads[k].numel;
    if (r < d->rank) d->ulo = d->uhi = iters + mine;
    else if (r == d->rank) d->uhi = iters + mine;
    iters += mine;
  }
  return 0;
}

int kiln_dist_attach(KilnDist *d, KilnCtx *c, KilnStatus *st) {
  const KilnModelDesc *m = c->d;
  // On GPUs the optimizer state lives in the device's weights block, whose layout
  // every rank shares: a shard would save no device memory.
  if (c->cuda && d->shard)
    return kiln_rt_fail(st, "--shard-optimizer is for CPU programs: model '%s' is built for CUDA, "
                        "whose optimizer state stays whole on every GPU", m->name);
  d->c = c;
  c->dist = d;
  if (!(d->first = malloc((size_t)(m->ngrads ? m->ngrads : 1) * sizeof *d->first)))
    return kiln_rt_fail(st, "out of memory");
  // Two parameters may share one gradient buffer (their gradients are one value).
  for (int k = 0; k < m->ngrads; k++) {
    d->first[k] = k;
    for (int j = 0; j < k; j++)
      if (m->grads[j].offset == m->grads[k].offset) {
        d->first[k] = j;
        break;
      }
  }
  if (c->cuda) return kiln_cuda_dist(c, d, st);
  if (!d->shard) return 0;
  KILN_TRY(plan_shards(d, st));
  kiln_dist_drop_state(d);
  return 0;
}

// The other ranks' optimizer state is never read here: its pages go back to the
// system (they read as zeros if touched again), so each rank's memory holds only
// its own share.
void kiln_dist_drop_state(KilnDist *d) {
  if (!d->shard) return;
  uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
  for (int r = 0; r < d->size; r++) {
    if (r == d->rank || !d->ocount[r]) continue;
    uintptr_t lo = (uintptr_t)(d->c->weights + d->odispl[r] * 4);
    uintptr_t hi = lo + (uintptr_t)d->ocount[r] * 4;
    lo = (lo + page - 1) & ~(page - 1);
    hi &= ~(page - 1);
    if (hi > lo) madvise((void *)lo, hi - lo, MADV_DONTNEED);
  }
}

int kiln_dist_gather_state(KilnDist *d, KilnStatus *st) {
  if (!d->shard) return 0;
  return d->ops->gather_f32((float *)d->c->weights, d->ocount, d->odispl, false, d->timeout, st);
}

int kiln_dist_agree(KilnDist *d, float *loss, bool *stop, KilnStatus *st) {
  double v[2] = {*loss, *stop ? 1 : 0};
  KILN_TRY(d->ops->reduce_f64(v, 2, false, d->timeout, st));
  *loss = (float)(v[0] / d->size);
  *stop = v[1] > 0;
  return 0;
}

int kiln_dist_sum(KilnDist *d, double *v, int n, KilnStatus *st) {
  return d->ops->reduce_f64(v, n, false, d->timeout, st);
}

// FNV-1a over the bytes, in the 53 bits a double holds exactly.
static double hash_bytes(const unsigned char *p, int64_t n, uint64_t h) {
  for (int64_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001b3ull;
  return (double)(h >> 11);
}

int kiln_dist_check_same(KilnDist *d, KilnStatus *st) {
  const KilnModelDesc *m = d->c->d;
  int64_t n = m->weights_bytes + (d->shard ? 0 : m->opt_bytes);
  KILN_TRY(kiln_ctx_weights_sync(d->c, st));
  double h = hash_bytes((const unsigned char *)d->c->weights, n, 0xcbf29ce484222325ull);
  double v[2] = {h, -h};
  KILN_TRY(d->ops->reduce_f64(v, 2, true, d->timeout, st));
  if (v[0] != -v[1])
    return kiln_rt_fail(st, "after step %lld the ranks' weights differ (the gradient sums did "
                        "not give every rank the same bits)", (long long)d->c->step);
  return 0;
}

//
// Called by the compiled train step (include/kiln/abi.h).
//
void kiln_rt_grad_ready(void *rt, int32_t k) {
  KilnCtx *c = rt;
  KilnDist *d = c->dist;
  if (!d) return;
  if (d->first[k] == k) {
    const KilnGradDesc *g = &c->d->grads[k];
    KilnStatus st = {0};
    if (d->ops->isum_f32((float *)(c->arena + g->offset), g->numel, &st) != 0) kiln_dist_die(d, c->d->name, &st);
  }
  d->ops->poll();
}

void kiln_rt_grads_done(void *rt) {
  KilnCtx *c = rt;
  KilnDist *d = c->dist;
  if (!d) return;
  double t0 = kiln_now();
  KilnStatus st = {0};
  if (d->ops->wait(d->timeout, &st) != 0) kiln_dist_die(d, c->d->name, &st);
  d->comm_s += kiln_now() - t0;
  float scale = 1.0f / (float)d->size;
  for (int k = 0; k < c->d->ngrads; k++) {
    if (d->first[k] != k) continue;
    float *g = (float *)(c->arena + c->d->grads[k].offset);
    for (int64_t i = 0; i < c->d->grads[k].numel; i++) g[i] *= scale;
  }
}

void kiln_rt_update(void *rt, KilnKernelFn kernel, char *weights, char *arena, int64_t n,
                    int64_t cost, int32_t index) {
  KilnCtx *c = rt;
  KilnDist *d = c->dist;
  if (!d || !d->shard) {
    kiln_rt_launch(c, kernel, weights, arena, 0, n, cost, index);
    return;
  }
  int64_t mine = d->uhi - d->ulo;
  kiln_rt_launch(c, kernel, weights, arena, d->ulo, d->uhi, n ? cost / n * mine : 0, index);
  KilnStatus st = {0};
  if (d->ops->gather_f32((float *)weights, d->wcount, d->wdispl, true, d->timeout, &st) != 0)
    kiln_dist_die(d, c->d->name, &st);
}
