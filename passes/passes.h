// Kiln passes: graph-to-graph transformations, one per file, run in order by
// pipeline.c. Sections follow the files: shapes.c, autodiff.c, simplify.c, fold.c,
// cse.c, dce.c, memplan.c, schedule.c, pipeline.c. Each pass returns the number
// of problems it reported.
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
// simplify.c, fold.c, cse.c, dce.c: clean-up.
//
int kiln_pass_simplify(KilnGraph *g, FILE *err);  // identities and chains
int kiln_pass_fold(KilnGraph *g, FILE *err);      // scalar constant expressions
int kiln_pass_cse(KilnGraph *g, FILE *err);       // repeated computations
int kiln_pass_dce(KilnGraph *g, FILE *err);       // values nothing uses

//
// fuse.c: groups of nodes computed by one kernel (sets g->fused_into).
//
int kiln_pass_fuse(KilnGraph *g, FILE *err);

//
// memplan.c: memory planning. Lifetimes over the node order, in-place reuse and
// views, and offset packing of every value into one arena; not a pass (the graph
// does not change): backends call it on the final graph.
//
// Steps: node i's kernel runs at step i; -1 is before the first kernel (the
// runtime writes the inputs), nnodes after the last (the runtime reads outputs,
// the loss and the gradients). After fusion (g->fused_into) a fused node has no
// storage (unless read outside its group: kiln_graph_fused_stored) and its inputs
// are read at its group root's step.
typedef struct {
  int32_t first, last;  // steps it must hold its bytes, inclusive
  int64_t bytes;
  int64_t offset;       // into the arena, base included
  int32_t node;         // the value that made it, or the node whose scratch it is
  bool scratch;
} KilnMemBuf;

typedef struct {
  const bool *store;      // per node: has a place in the arena
  const int64_t *bytes;   // per node: bytes of its value (64-aligned keeps offsets so)
  const int64_t *scratch; // per node: bytes its kernel needs during its own step; NULL: none
  const bool *keep;       // per node: holds to the end of the step (outputs, loss, gradients
                          // are read after the last kernel)
  int64_t base;           // first offset to use; what lies below is not planned
  bool inplace;           // KILN_OPF_INPLACE ops may take their first input's buffer
  const int32_t *scratch_from;  // per node: the first step its scratch holds (an earlier
                                // kernel writes it for this one); NULL, negative or
                                // not earlier than the node: its own step only
} KilnMemReq;

typedef struct {
  int64_t *offset;   // per node: offset of its value, or -1 without storage
  int64_t *scratch;  // per node: offset of its kernel's scratch, or -1
  int32_t *alias;    // per node: the value whose bytes it is (a view: its kernel must not
                     // run), or -1
  int64_t *shift;    // per node: a strided window's first byte in alias's bytes, or -1 (a
                     // view of the same bytes, or no view)
  int32_t *buf;      // per node: index of its buffer in bufs, or -1
  KilnMemBuf *bufs;  // every buffer: values' (several values may share one), then scratch
  int nbufs;
  int64_t peak;      // arena bytes: base + the packed extent
  int64_t naive;     // base + every value and every scratch apart
  int64_t bound;     // base + the most bytes live at one step (no packing does better)
} KilnMemPlan;

// Bytes of a node's value in the arena: 4 per element, rounded up to 64.
int64_t kiln_memplan_bytes(const KilnNode *n);
// Marks the values read after the last kernel: outputs, the loss, gradients.
void kiln_memplan_roots(const KilnGraph *g, bool *keep);
// The request for a graph's full step (training after autodiff): storage for what
// the roots need and for every input (params excluded: they live in the weights
// block); the roots and the inputs kept to the end; in-place allowed; no scratch.
// Arrays come from a.
void kiln_memplan_request(const KilnGraph *g, KilnArena *a, int64_t base, KilnMemReq *out);
// Plans r for g in its node order; the plan's arrays come from a.
void kiln_memplan(const KilnGraph *g, const KilnMemReq *r, KilnArena *a, KilnMemPlan *out);

//
// schedule.c: a node order with a lower planned peak.
//
// Reorders the nodes (a topological order; inputs and parameters first, in their
// order; the forward pass stays [0, nforward)) when a greedy memory-aware order
// plans a smaller arena than the current one; otherwise leaves the graph as is.
int kiln_pass_schedule(KilnGraph *g, FILE *err);

//
// pipeline.c: the ordered list of passes.
//
typedef struct {
  const char *print_after;  // pass name, "all", or NULL
  bool verify_each;         // run the verifier after every pass (debug builds: always)
  FILE *out;                // where printed IR goes
  bool training;            // differentiate the loss (autodiff runs)
  int level;                // -O level: 0 runs only what correctness needs
  bool time_passes;         // print each pass's time to err
} KilnPipelineOpts;

// Runs the pipeline; returns 0, or -1 after a pass or the verifier failed.
int kiln_pipeline_run(KilnGraph *g, const KilnPipelineOpts *o, FILE *err);
// Name of the i-th pass, or NULL past the end; for --help and option checks.
const char *kiln_pipeline_pass_name(int i);

#endif
