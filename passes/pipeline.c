// The pass pipeline, in one place, as plain consecutive calls (QBE's main.c): each
// entry names a pass so --print-ir-after can refer to it; the verifier runs after
// each pass when asked, and always in debug builds.
#include <string.h>
#include <time.h>

#include "passes/passes.h"

typedef struct {
  const char *name;
  int (*run)(KilnGraph *g, FILE *err);  // returns the number of problems
  bool training_only;
  int level;                            // runs at -O<level> and above
} Pass;

static const Pass passes[] = {
    {"shapes", kiln_pass_shapes, false, 0},
    {"autodiff", kiln_pass_autodiff, true, 0},
    {"simplify", kiln_pass_simplify, false, 1},
    {"fold", kiln_pass_fold, false, 1},
    {"cse", kiln_pass_cse, false, 1},
    {"dce", kiln_pass_dce, false, 1},
    {"schedule", kiln_pass_schedule, false, 2},
    {"fuse", kiln_pass_fuse, false, 2},  // last: it records groups by node index
};

const char *kiln_pipeline_pass_name(int i) {
  return i >= 0 && i < (int)(sizeof passes / sizeof passes[0]) ? passes[i].name : NULL;
}

int kiln_pipeline_run(KilnGraph *g, const KilnPipelineOpts *o, FILE *err) {
  bool verify = o->verify_each;
#ifndef NDEBUG
  verify = true;
#endif
  for (size_t i = 0; i < sizeof passes / sizeof passes[0]; i++) {
    if ((passes[i].training_only && !o->training) || passes[i].level > o->level) continue;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int before = g->nnodes;
    if (passes[i].run(g, err) != 0) {
      fprintf(err, "kiln: pass '%s' failed\n", passes[i].name);
      return -1;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    if (o->time_passes)
      fprintf(err, "pass %-10s %8.3f ms  %6d -> %d nodes\n", passes[i].name,
              (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6,
              before, g->nnodes);
    if (verify && kiln_graph_verify(g, err) != 0) {
      fprintf(err, "kiln: internal error: IR invalid after pass '%s'\n", passes[i].name);
      return -1;
    }
    if (o->print_after &&
        (strcmp(o->print_after, "all") == 0 || strcmp(o->print_after, passes[i].name) == 0)) {
      fprintf(o->out, "; IR after %s\n", passes[i].name);
      kiln_graph_print(g, o->out);
    }
  }
  return 0;
}
