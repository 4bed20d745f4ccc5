// `kiln profile`: builds a model into a temporary folder and runs its default
// workload under the profiler: training steps when the model has a loss (`bench
// --train`, the whole step on a random batch), else forward passes (`bench`). The
// program prints the table; kiln passes the profiling options through.
#include <errno.h>
#include <spawn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "compiler/compiler.h"

extern char **environ;

// Whether the model has a loss, so trains; -1 when it does not load (the
// errors are reported). Its own diagnostics: they remember the sources they have
// read, and this model is freed before the build reads it again.
static int has_loss(KilnDiag *d, const KilnBuildOpts *b) {
  KilnDiag own;
  kiln_diag_init(&own, d->out);
  own.color = d->color;
  KilnModel m;
  int rc = kiln_model_load(&m, &own, b->model, b->dims, b->ndims);
  d->nerrors += own.nerrors;
  int loss = rc == 0 ? m.graph.loss >= 0 : -1;
  kiln_model_free(&m);
  return loss;
}

static int run_program(KilnDiag *d, char *const *argv) {
  pid_t pid;
  int rc = posix_spawn(&pid, argv[0], NULL, NULL, argv, environ);
  if (rc != 0) {
    fprintf(d->out, "kiln profile: error: cannot run %s: %s\n", argv[0], strerror(rc));
    return -1;
  }
  int status;
  while (waitpid(pid, &status, 0) < 0)
    if (errno != EINTR) return -1;
  return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -1;
}

int kiln_profile_run(KilnDiag *d, const KilnProfileRunOpts *o) {
  int loss = has_loss(d, &o->build);
  if (loss < 0) return -1;
  char dir[] = "/tmp/kiln-profile-XXXXXX", exe[64], runs[32], threads[32];
  if (!mkdtemp(dir)) {
    fprintf(d->out, "kiln profile: error: cannot create a temporary folder: %s\n", strerror(errno));
    return -1;
  }
  snprintf(exe, sizeof exe, "%s/model", dir);
  KilnBuildOpts b = o->build;
  b.output = exe;
  b.emit = KILN_BUILD_EXE;
  int rc = kiln_build(d, &b);
  if (rc == 0) {
    snprintf(runs, sizeof runs, "%d", o->steps);
    snprintf(threads, sizeof threads, "%d", o->threads);
    char *argv[32] = {exe, "bench", "--runs", runs, "--warmup", "2", "--threads", threads,
                      "--profile"};
    int n = 9;
    if (loss) argv[n++] = "--train";
    for (int i = 0; i < o->npass && n < 31; i++) argv[n++] = o->pass[i];
    argv[n] = NULL;
    rc = run_program(d, argv);
  }
  unlink(exe);
  rmdir(dir);
  return rc;
}
