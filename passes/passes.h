// Kiln passes: graph-to-graph transformations, one per file, run in order by
// pipeline.c. Sections follow the files: shapes.c, autodiff.c, pipeline.c.
#ifndef KILN_PASSES_H
#define KILN_PASSES_H

#include "ir/ir.h"

//
// shapes.c: shape inference over a whole graph.
//
// Runs every node's shape rule in order and records the result. Returns the
// number of nodes whose rule failed, each reported to f as "node: message".
int kiln_pass_shapes(KilnGraph *g, FILE *f);

//
// autodiff.c: reverse-mode differentiation of the loss.
//
// Appends the backward graph; sets g->nforward and g->grads (dloss/dparam for
// every parameter). Returns the number of problems, reported to err.
int kiln_pass_autodiff(KilnGraph *g, FILE *err);

//
// pipeline.c: the ordered list of passes.
//
typedef struct {
  const char *print_after;  // pass name, "all", or NULL
  bool verify_each;         // run the verifier after every pass (debug builds: always)
  FILE *out;                // where printed IR goes
  bool training;            // differentiate the loss (autodiff runs)
} KilnPipelineOpts;

// Runs the pipeline; returns 0, or -1 after a pass or the verifier failed.
int kiln_pipeline_run(KilnGraph *g, const KilnPipelineOpts *o, FILE *err);
// Name of the i-th pass, or NULL past the end; for --help and option checks.
const char *kiln_pipeline_pass_name(int i);

#endif
