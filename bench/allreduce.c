// The cost of summing a gradient over the ranks: MPI_Allreduce (in place, f32,
// sum) of N floats, the median of R calls after a warm-up, printed by rank 0 as
// "allreduce N floats: MEDIAN us". bench/distributed.py runs it at the GPT's
// gradient size and at one float (the latency) to fit the cost model of its
// scaling estimate.
// usage: mpirun -np P allreduce N [R]
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  int rank;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  long n = argc > 1 ? atol(argv[1]) : 1;
  int runs = argc > 2 ? atoi(argv[2]) : 20;
  float *buf = calloc((size_t)n, sizeof *buf);
  double *t = calloc((size_t)runs, sizeof *t);
  if (n < 1 || runs < 1 || !buf || !t) MPI_Abort(MPI_COMM_WORLD, 2);
  for (int i = -3; i < runs; i++) {
    MPI_Barrier(MPI_COMM_WORLD);
    double t0 = MPI_Wtime();
    MPI_Allreduce(MPI_IN_PLACE, buf, (int)n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    if (i >= 0) t[i] = MPI_Wtime() - t0;
  }
  qsort(t, (size_t)runs, sizeof *t, cmp);
  if (rank == 0) printf("allreduce %ld floats: %.1f us\n", n, t[runs / 2] * 1e6);
  free(buf);
  free(t);
  MPI_Finalize();
  return 0;
}
