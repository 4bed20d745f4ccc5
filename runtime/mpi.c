// The MPI transport of data-parallel training (dist.c), in programs built with
// `kiln build --mpi`. A program only joins MPI when an MPI launcher started it
// (mpirun, mpiexec, srun with PMI): run by hand it is a one-process program and
// never touches MPI.
//
// Errors come back as return codes (MPI_ERRORS_RETURN) so they can name the call.
// Every wait polls with a deadline: a rank that died or hangs ends the others
// with a message instead of leaving them blocked forever.
#include <limits.h>
#include <mpi.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/runtime.h"

// MPI counts are ints: larger arrays go as several sums.
#define CHUNK (1 << 30)
#define MAX_REQS 4096

static MPI_Request reqs[MAX_REQS];
static int nreqs;
static bool joined;

static int mpi_fail(KilnStatus *st, const char *call, int rc) {
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(rc, msg, &len) != MPI_SUCCESS) snprintf(msg, sizeof msg, "error %d", rc);
  return kiln_rt_fail(st, "%s failed: %s (another rank has probably stopped)", call, msg);
}

static int mpi_init(int *rank, int *size, int *local, int *local_rank, KilnStatus *st) {
  *rank = 0, *size = 1, *local = 1, *local_rank = 0;
  if (!kiln_dist_launched()) return 0;
  int rc = MPI_Init(NULL, NULL);
  if (rc != MPI_SUCCESS) return mpi_fail(st, "MPI_Init", rc);
  joined = true;
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  MPI_Comm_rank(MPI_COMM_WORLD, rank);
  MPI_Comm_size(MPI_COMM_WORLD, size);
  MPI_Comm node;
  if (MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node) ==
      MPI_SUCCESS) {
    MPI_Comm_size(node, local);
    MPI_Comm_rank(node, local_rank);
    MPI_Comm_free(&node);
  }
  return 0;
}

static void mpi_finalize(void) {
  if (joined) MPI_Finalize();
  joined = false;
}

__attribute__((noreturn)) static void mpi_abort(int code) {
  MPI_Abort(MPI_COMM_WORLD, code);
  exit(code);
}

static int mpi_isum(float *buf, int64_t n, KilnStatus *st) {
  for (int64_t at = 0; at < n; at += CHUNK) {
    if (nreqs == MAX_REQS) return kiln_rt_fail(st, "more than %d sums in flight", MAX_REQS);
    int count = (int)(n - at < CHUNK ? n - at : CHUNK);
    int rc = MPI_Iallreduce(MPI_IN_PLACE, buf + at, count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD,
                            &reqs[nreqs]);
    if (rc != MPI_SUCCESS) return mpi_fail(st, "MPI_Iallreduce", rc);
    nreqs++;
  }
  return 0;
}

static void mpi_poll(void) {
  int done;
  if (nreqs) MPI_Testall(nreqs, reqs, &done, MPI_STATUSES_IGNORE);
}

// Polls every started request until all are done or timeout seconds pass.
static int wait_all(double timeout, const char *call, KilnStatus *st) {
  double end = kiln_now() + timeout;
  for (unsigned spin = 0;; spin++) {
    int done = 0;
    int rc = MPI_Testall(nreqs, reqs, &done, MPI_STATUSES_IGNORE);
    if (rc != MPI_SUCCESS) return nreqs = 0, mpi_fail(st, call, rc);
    if (done) break;
    if (spin % 1024 == 0 && kiln_now() > end)
      return kiln_rt_fail(st, "%s: no answer from the other ranks for %.0f s (one has died or "
                          "hangs; --comm-timeout sets the limit)", call, timeout);
    if (spin % 64 == 63) sched_yield();
  }
  nreqs = 0;
  return 0;
}

static int mpi_wait(double timeout, KilnStatus *st) {
  return wait_all(timeout, "MPI_Iallreduce", st);
}

static int mpi_reduce_f64(double *v, int n, bool max, double timeout, KilnStatus *st) {
  int rc = MPI_Iallreduce(MPI_IN_PLACE, v, n, MPI_DOUBLE, max ? MPI_MAX : MPI_SUM, MPI_COMM_WORLD,
                          &reqs[nreqs]);
  if (rc != MPI_SUCCESS) return mpi_fail(st, "MPI_Iallreduce", rc);
  nreqs++;
  return wait_all(timeout, "MPI_Iallreduce", st);
}

static int mpi_bcast(void *buf, int bytes, double timeout, KilnStatus *st) {
  int rc = MPI_Ibcast(buf, bytes, MPI_BYTE, 0, MPI_COMM_WORLD, &reqs[nreqs]);
  if (rc != MPI_SUCCESS) return mpi_fail(st, "MPI_Ibcast", rc);
  nreqs++;
  return wait_all(timeout, "MPI_Ibcast", st);
}

static int mpi_gather(float *base, const int64_t *count, const int64_t *displ, bool all,
                      double timeout, KilnStatus *st) {
  int size, rank;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  int *c = malloc((size_t)size * sizeof *c), *d = malloc((size_t)size * sizeof *d);
  if (!c || !d) return free(c), free(d), kiln_rt_fail(st, "out of memory");
  for (int r = 0; r < size; r++) {
    if (count[r] > INT_MAX || displ[r] > INT_MAX) {
      free(c), free(d);
      return kiln_rt_fail(st, "a shard of %lld floats is beyond what one MPI call moves",
                          (long long)count[r]);
    }
    c[r] = (int)count[r], d[r] = (int)displ[r];
  }
  int rc;
  const char *call = all ? "MPI_Iallgatherv" : "MPI_Igatherv";
  if (all)
    rc = MPI_Iallgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, base, c, d, MPI_FLOAT, MPI_COMM_WORLD,
                         &reqs[nreqs]);
  else if (rank == 0)
    rc = MPI_Igatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, base, c, d, MPI_FLOAT, 0, MPI_COMM_WORLD,
                      &reqs[nreqs]);
  else
    rc = MPI_Igatherv(base + d[rank], c[rank], MPI_FLOAT, NULL, NULL, NULL, MPI_FLOAT, 0,
                      MPI_COMM_WORLD, &reqs[nreqs]);
  free(c);
  free(d);
  if (rc != MPI_SUCCESS) return mpi_fail(st, call, rc);
  nreqs++;
  return wait_all(timeout, call, st);
}

static const KilnCommOps ops = {
    .name = "MPI",
    .init = mpi_init,
    .finalize = mpi_finalize,
    .abort = mpi_abort,
    .isum_f32 = mpi_isum,
    .poll = mpi_poll,
    .wait = mpi_wait,
    .reduce_f64 = mpi_reduce_f64,
    .bcast = mpi_bcast,
    .gather_f32 = mpi_gather,
};

const KilnCommOps *kiln_comm_mpi(void) { return &ops; }
