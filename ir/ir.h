// Kiln IR: the op table, nodes, graphs, arenas. Depends on libc only.
//
// A graph is a list of nodes in topological order; a node is a value: op, dtype,
// shape, inputs (indices of earlier nodes), attributes and the YAML location it
// came from. Every op is described once, in KILN_OPS below; passes ask the table
// about properties (fusion kind, flags, arity) and never test op names.
//
// Sections follow the files of ir/: arena.c, ops.c, shape.c, graph.c, print.c,
// dot.c, verify.c, cost.c.
#ifndef KILN_IR_H
#define KILN_IR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define KILN_MAX_RANK 6
#define KILN_MAX_INPUTS 8
// Largest element count of one tensor (2^31: 8 GiB of f32). Bigger is refused
// as absurd before anything is allocated.
#define KILN_MAX_ELEMS ((int64_t)1 << 31)

//
// arena.c: bump allocation with mark/rewind; memory lives per phase.
//
typedef struct KilnArenaBlock KilnArenaBlock;
typedef struct {
  KilnArenaBlock *head;
  size_t used_total;
} KilnArena;

typedef struct {
  KilnArenaBlock *block;
  size_t used;
} KilnArenaMark;

void *kiln_arena_alloc(KilnArena *a, size_t size);  // zeroed, 16-byte aligned
// Out of memory ends the compiler with a message and exit status 1, the status of
// any failed command, instead of a crash; these never return NULL.
_Noreturn void kiln_out_of_memory(size_t bytes);
void *kiln_xmalloc(size_t size);
void *kiln_xcalloc(size_t n, size_t size);
char *kiln_arena_strdup(KilnArena *a, const char *s);
char *kiln_arena_printf(KilnArena *a, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
KilnArenaMark kiln_arena_mark(KilnArena *a);
void kiln_arena_rewind(KilnArena *a, KilnArenaMark m);
void kiln_arena_free(KilnArena *a);

//
// ops.c: the op table.
//
typedef enum { KILN_F32, KILN_I32 } KilnDType;

// Fusion kinds, as TVM names them; fusion reads these, never op names.
typedef enum {
  KILN_FUSE_SOURCE,     // input, param, const: no computation
  KILN_FUSE_ELEMWISE,   // out[i] = f(in[i]) on equal shapes
  KILN_FUSE_BROADCAST,  // elementwise with numpy broadcasting
  KILN_FUSE_INJECTIVE,  // each output element reads one input element (layout)
  KILN_FUSE_REDUCE,     // reduces one or more axes
  KILN_FUSE_OPAQUE,     // matmul, lstm, attention, losses: own kernels
} KilnFuseKind;

enum {
  KILN_OPF_DIFF = 1 << 0,      // has a gradient with respect to its f32 inputs
  KILN_OPF_INPLACE = 1 << 1,   // output may reuse its first input's buffer
  KILN_OPF_COMMUTE = 1 << 2,   // binary op with f(a,b) == f(b,a)
  KILN_OPF_LOSS = 1 << 3,      // produces a scalar loss
  KILN_OPF_RANDOM = 1 << 4,    // draws random numbers (dropout)
  KILN_OPF_TRAIN_ONLY = 1 << 5, // identity outside training (dropout)
  KILN_OPF_INTERNAL = 1 << 6,   // made by passes (gradients); not written in models
  KILN_OPF_VIEW = 1 << 7,       // output is its first input's bytes, reinterpreted (same
                                // element count and order): memory planning shares the
                                // buffer and no kernel runs
  KILN_OPF_EPILOGUE = 1 << 8,   // its kernel can apply elementwise ops to its output rows
  KILN_OPF_STATE = 1 << 9,      // also writes its state inputs in place (a key/value cache,
                                // a recurrent state): decoding one token at a time
  KILN_OPF_STRIDED = 1 << 10,   // its kernel reads its inputs' rows with any stride, so
                                // a WINDOW of the last axis it reads needs no copy
  KILN_OPF_WINDOW = 1 << 11,    // output is a window of its first input along attr.axis,
                                // [attr.start, attr.end): of the last axis, the input's
                                // bytes read with the input's row stride
};

// Initializers of parameters.
typedef enum {
  KILN_INIT_ZEROS,
  KILN_INIT_ONES,
  KILN_INIT_NORMAL,   // a = std, b = mean
  KILN_INIT_UNIFORM,  // a = low, b = high
  KILN_INIT_XAVIER,   // uniform, bound sqrt(6 / (fan_in + fan_out))
  KILN_INIT_KAIMING,  // normal, std sqrt(2 / fan_in)
} KilnInitKind;

typedef struct {
  KilnInitKind kind;
  double a, b;
} KilnInit;

// Attributes of every op in one struct: each op uses the fields its schema names.
typedef struct {
  int nints;
  int64_t ints[KILN_MAX_RANK];  // reduce axes | transpose perm | reshape/broadcast shape
  int64_t axis;                 // softmax, log_softmax, concat, slice, layernorm
  int64_t start, end;           // slice: [start, end) along axis
  int64_t heads;                // attention
  double exponent;              // pow
  double lo, hi;                // clamp
  double p;                     // dropout probability
  double eps;                   // layernorm
  double value;                 // const
  int64_t key;                  // dropout: random stream key, stable across passes
  int64_t size;                 // embedding_grad: rows of the table
  bool keepdims;                // reductions
  bool causal;                  // attention
  bool trans_a, trans_b;        // matmul
  bool state;                   // input: decode state, kept between calls (KILN_OPF_STATE)
  KilnInit init;                // param
} KilnAttrs;

// Attribute schema, so the front end parses any op's attributes generically.
typedef enum {
  KILN_ATTR_INT,       // int64_t; YAML integer or dim expression
  KILN_ATTR_FLOAT,     // double
  KILN_ATTR_BOOL,      // bool
  KILN_ATTR_INTS,      // ints/nints; list of integers or dim expressions
} KilnAttrType;

typedef struct {
  const char *name;
  KilnAttrType type;
  size_t offset;       // into KilnAttrs
  bool required;
  double dflt;         // default for INT, FLOAT, BOOL when not required
} KilnAttrSpec;

typedef struct KilnNode KilnNode;
typedef struct KilnGraph KilnGraph;

// A shape rule reads the node's inputs and attributes, fills dtype, rank and shape,
// and returns 0; or writes a message to err and returns -1.
typedef int (*KilnShapeFn)(const KilnGraph *g, KilnNode *n, char *err, size_t errlen);
// Scalar semantics of elementwise ops (arity 1 to 3), for interpreters and folding.
typedef double (*KilnScalarFn)(const double *x, const KilnAttrs *a);
// Floating-point operations of one evaluation of the node.
typedef int64_t (*KilnFlopsFn)(const KilnGraph *g, const KilnNode *n);

// The op table. Columns: enum name, spelling in YAML and IR text, fewest and most
// inputs (-1: any number >= fewest), fusion kind, flags, shape rule, scalar
// semantics (elementwise only), FLOPs, attribute schema.
#define KILN_OPS(X)                                                                          \
  X(INPUT, "input", 0, 0, SOURCE, 0, shape_source, NULL, flops_zero, attrs_none)            \
  X(PARAM, "param", 0, 0, SOURCE, 0, shape_source, NULL, flops_zero, attrs_none)            \
  X(CONST, "const", 0, 0, SOURCE, 0, shape_source, NULL, flops_zero, attrs_none)            \
  X(NEG, "neg", 1, 1, ELEMWISE, DIFF | INPLACE, shape_unary, sc_neg, flops_elem, attrs_none) \
  X(EXP, "exp", 1, 1, ELEMWISE, DIFF | INPLACE, shape_unary, sc_exp, flops_elem, attrs_none) \
  X(LOG, "log", 1, 1, ELEMWISE, DIFF | INPLACE, shape_unary, sc_log, flops_elem, attrs_none) \
  X(SQRT, "sqrt", 1, 1, ELEMWISE, DIFF | INPLACE, shape_unary, sc_sqrt, flops_elem, attrs_none) \
  X(RSQRT, "rsqrt", 1, 1, ELEMWISE, DIFF | INPLACE, shape_unary, sc_rsqrt, flops_elem, attrs_none) \
  X(POW, "pow", 1, 1, ELEMWISE, DIFF | INPLACE, shape_unary, sc_pow, flops_elem, attrs_pow) \
  X(RELU, "relu", 1, 1, ELEMWISE, DIFF | INPLACE, shape_unary, sc_relu, flops_elem, attrs_none) \
  X(SIGMOID, "sigmoid", 1, 1, ELEMWISE, DIFF | INPLACE, shape_unary, sc_sigmoid, flops_elem4, attrs_none) \
  X(TANH, "tanh", 1, 1, ELEMWISE, DIFF | INPLACE, shape_unary, sc_tanh, flops_elem4, attrs_none) \
  X(GELU, "gelu", 1, 1, ELEMWISE, DIFF | INPLACE, shape_unary, sc_gelu, flops_elem8, attrs_none) \
  X(SILU, "silu", 1, 1, ELEMWISE, DIFF | INPLACE, shape_unary, sc_silu, flops_elem4, attrs_none) \
  X(CLAMP, "clamp", 1, 1, ELEMWISE, DIFF | INPLACE, shape_unary, sc_clamp, flops_elem, attrs_clamp) \
  X(DROPOUT, "dropout", 1, 1, ELEMWISE, DIFF | RANDOM | TRAIN_ONLY, shape_unary, NULL, flops_elem, attrs_dropout) \
  X(ADD, "add", 2, 2, BROADCAST, DIFF | INPLACE | COMMUTE, shape_binary, sc_add, flops_elem, attrs_none) \
  X(SUB, "sub", 2, 2, BROADCAST, DIFF | INPLACE, shape_binary, sc_sub, flops_elem, attrs_none) \
  X(MUL, "mul", 2, 2, BROADCAST, DIFF | INPLACE | COMMUTE, shape_binary, sc_mul, flops_elem, attrs_none) \
  X(DIV, "div", 2, 2, BROADCAST, DIFF | INPLACE, shape_binary, sc_div, flops_elem, attrs_none) \
  X(WHERE, "where", 3, 3, BROADCAST, DIFF, shape_where, sc_where, flops_zero, attrs_none) \
  X(SUM, "sum", 1, 1, REDUCE, DIFF, shape_reduce, NULL, flops_in, attrs_reduce) \
  X(MEAN, "mean", 1, 1, REDUCE, DIFF, shape_reduce, NULL, flops_in, attrs_reduce) \
  X(MAX, "max", 1, 1, REDUCE, DIFF, shape_reduce, NULL, flops_in, attrs_reduce) \
  X(SOFTMAX, "softmax", 1, 1, REDUCE, DIFF, shape_softmax, NULL, flops_softmax, attrs_axis) \
  X(LOG_SOFTMAX, "log_softmax", 1, 1, REDUCE, DIFF, shape_softmax, NULL, flops_softmax, attrs_axis) \
  X(LAYERNORM, "layernorm", 3, 3, REDUCE, DIFF, shape_layernorm, NULL, flops_layernorm, attrs_layernorm) \
  X(MATMUL, "matmul", 2, 2, OPAQUE, DIFF | EPILOGUE, shape_matmul, NULL, flops_matmul, attrs_matmul) \
  X(RESHAPE, "reshape", 1, 1, INJECTIVE, DIFF | INPLACE | VIEW, shape_reshape, NULL, flops_zero, attrs_reshape) \
  X(TRANSPOSE, "transpose", 1, 1, INJECTIVE, DIFF, shape_transpose, NULL, flops_zero, attrs_transpose) \
  X(CONCAT, "concat", 1, -1, INJECTIVE, DIFF, shape_concat, NULL, flops_zero, attrs_axis) \
  X(SLICE, "slice", 1, 1, INJECTIVE, DIFF | WINDOW, shape_slice, NULL, flops_zero, attrs_slice) \
  X(BROADCAST, "broadcast", 1, 1, INJECTIVE, DIFF, shape_broadcast, NULL, flops_zero, attrs_reshape) \
  X(EMBEDDING, "embedding", 2, 2, INJECTIVE, DIFF, shape_embedding, NULL, flops_zero, attrs_none) \
  X(LSTM, "lstm", 4, 4, OPAQUE, DIFF, shape_lstm, NULL, flops_lstm, attrs_none) \
  X(ATTENTION, "attention", 3, 3, OPAQUE, DIFF | STRIDED, shape_attention, NULL, flops_attention, attrs_attention) \
  X(CROSS_ENTROPY, "cross_entropy", 2, 2, OPAQUE, DIFF | LOSS, shape_cross_entropy, NULL, flops_softmax, attrs_none) \
  X(MSE, "mse", 2, 2, OPAQUE, DIFF | LOSS, shape_mse, NULL, flops_elem3, attrs_none) \
  X(BCE, "binary_cross_entropy", 2, 2, OPAQUE, DIFF | LOSS, shape_mse, NULL, flops_elem8, attrs_none) \
  /* Decoding, made by the front end for generation. */                                     \
  X(ATTENTION_DECODE, "attention_decode", 6, 6, OPAQUE, INTERNAL | STATE, shape_attention_decode, NULL, flops_attention_decode, attrs_attention) \
  X(LSTM_STEP, "lstm_step", 5, 5, OPAQUE, INTERNAL | STATE, shape_lstm_step, NULL, flops_lstm, attrs_none) \
  /* Gradient ops, made by autodiff. Elementwise ones take (x, dy). */                      \
  X(GELU_GRAD, "gelu_grad", 2, 2, ELEMWISE, INTERNAL | INPLACE, shape_grad_elem, sc_gelu_grad, flops_elem8, attrs_none) \
  X(SILU_GRAD, "silu_grad", 2, 2, ELEMWISE, INTERNAL | INPLACE, shape_grad_elem, sc_silu_grad, flops_elem8, attrs_none) \
  X(CLAMP_GRAD, "clamp_grad", 2, 2, ELEMWISE, INTERNAL | INPLACE, shape_grad_elem, sc_clamp_grad, flops_elem, attrs_clamp) \
  X(LAYERNORM_DX, "layernorm_dx", 3, 3, REDUCE, INTERNAL, shape_layernorm_dx, NULL, flops_layernorm, attrs_layernorm) \
  X(LAYERNORM_DGAMMA, "layernorm_dgamma", 2, 2, REDUCE, INTERNAL, shape_layernorm_dgamma, NULL, flops_layernorm, attrs_layernorm) \
  X(EMBEDDING_GRAD, "embedding_grad", 2, 2, OPAQUE, INTERNAL, shape_embedding_grad, NULL, flops_in, attrs_embedding_grad) \
  X(LSTM_GRAD, "lstm_grad", 5, 5, OPAQUE, INTERNAL, shape_lstm_grad, NULL, flops_lstm_grad, attrs_none) \
  X(ATTENTION_GRAD, "attention_grad", 4, 4, OPAQUE, INTERNAL | STRIDED, shape_attention_grad, NULL, flops_attention_grad, attrs_attention) \
  X(CROSS_ENTROPY_GRAD, "cross_entropy_grad", 2, 2, OPAQUE, INTERNAL, shape_cross_entropy_grad, NULL, flops_softmax, attrs_none)

typedef enum {
#define X(name, ...) KILN_OP_##name,
  KILN_OPS(X)
#undef X
  KILN_OP_COUNT
} KilnOp;

typedef struct {
  const char *name;
  int min_in, max_in;
  KilnFuseKind fuse;
  unsigned flags;
  KilnShapeFn shape;
  KilnScalarFn scalar;
  KilnFlopsFn flops;
  const KilnAttrSpec *attrs;  // terminated by an entry with name NULL
} KilnOpInfo;

extern const KilnOpInfo kiln_ops[KILN_OP_COUNT];

static inline const KilnOpInfo *kiln_op(KilnOp op) { return &kiln_ops[op]; }
static inline bool kiln_op_has(KilnOp op, unsigned flag) { return kiln_ops[op].flags & flag; }
bool kiln_op_lookup(const char *name, KilnOp *out_op);  // by YAML spelling
const char *kiln_dtype_name(KilnDType t);
const char *kiln_fuse_name(KilnFuseKind k);
const char *kiln_init_name(KilnInitKind k);

//
// graph.c: nodes and graphs.
//
typedef struct {
  const char *file;  // NULL for nodes a pass made
  int line, col;     // 1-based
} KilnLoc;

struct KilnNode {
  KilnOp op;
  KilnDType dtype;
  int rank;
  int64_t shape[KILN_MAX_RANK];
  int nin;
  int32_t in[KILN_MAX_INPUTS];  // indices of earlier nodes
  KilnAttrs attr;
  const char *name;             // unique in the graph; a valid C identifier with dots
  KilnLoc loc;
};

struct KilnGraph {
  KilnArena *arena;   // owns names and the node array
  const char *name;
  KilnNode *nodes;    // topological order
  int nnodes, cap;
  int32_t *outputs;   // inference outputs
  int noutputs;
  int32_t loss;       // scalar loss node, or -1
  // After autodiff: nodes [0, nforward) are the forward pass, the rest its
  // gradient; grads[i] (i < nforward) is dloss/d(node i) for every param, else -1.
  int nforward;
  int32_t *grads;
  // After fusion: fused_into[i] is the node whose kernel computes node i inline
  // (i then has no kernel of its own, and no buffer unless nodes outside the
  // group read it: kiln_graph_fused_stored), or -1. NULL before fusion.
  int32_t *fused_into;
};

void kiln_graph_init(KilnGraph *g, KilnArena *a, const char *name);
// Appends a node whose shape is not yet known; returns its index. The caller sets
// attributes, then calls kiln_graph_infer to run the op's shape rule.
int32_t kiln_graph_add(KilnGraph *g, KilnOp op, const int32_t *in, int nin, const char *name,
                       KilnLoc loc);
int kiln_graph_infer(KilnGraph *g, int32_t id, char *err, size_t errlen);
int32_t kiln_graph_find(const KilnGraph *g, const char *name);  // -1 when absent
void kiln_graph_add_output(KilnGraph *g, int32_t id);
int64_t kiln_node_numel(const KilnNode *n);
// "f32[10,5]" into buf; returns buf.
char *kiln_shape_str(const KilnNode *n, char *buf, size_t len);
int64_t kiln_graph_param_count(const KilnGraph *g);
// Replaces uses (map[i]: the earlier node taking i's place, or i) and keeps only the
// nodes marked in keep, renumbered in order; outputs, loss and grads follow.
void kiln_graph_rewrite(KilnGraph *g, const int32_t *map, const bool *keep);
int64_t kiln_graph_flops(const KilnGraph *g);  // forward pass, every node
// Whether node id, fused into another node's kernel, is stored by that kernel too
// (a node outside the group reads it).
bool kiln_graph_fused_stored(const KilnGraph *g, int32_t id);

//
// shape.c: helpers shared by shape rules and the front end.
//
// Multiplies dims with overflow and KILN_MAX_ELEMS checks; -1 on overflow.
int64_t kiln_numel(const int64_t *shape, int rank);
// Numpy broadcast of two shapes; -1 if they do not broadcast.
int kiln_broadcast_shapes(const int64_t *a, int ra, const int64_t *b, int rb, int64_t *out,
                          int *out_rank);
// Normalises a possibly negative axis; -1 if out of range.
int64_t kiln_norm_axis(int64_t axis, int rank);
// "[10,5]" into buf; returns buf.
char *kiln_dims_str(const int64_t *shape, int rank, char *buf, size_t len);

//
// print.c, dot.c: text form and Graphviz view.
//
void kiln_graph_print(const KilnGraph *g, FILE *f);
void kiln_graph_dot(const KilnGraph *g, FILE *f);

//
// verify.c: structural invariants; every pass leaves them true.
//
// Returns the number of problems found, each written as one line to f (if not NULL).
int kiln_graph_verify(const KilnGraph *g, FILE *f);

//
// cost.c: one kernel as the profiler shows it: the fusion group rooted at a node
// (the root and every node fused into it).
//
typedef struct {
  const char *name;   // the root's name
  const char *ops;    // the group's ops in graph order, '+'-joined ("matmul+add+gelu")
  const char *loc;    // the root's YAML location "file.yaml:LINE:COL", or ""
  int64_t flops;      // the op table's FLOPs of every node of the group
  int64_t bytes;      // inputs read from outside the group plus the root's output
} KilnKernelCost;

// Strings are allocated in g->arena.
void kiln_kernel_cost(const KilnGraph *g, int32_t root, KilnKernelCost *out);

//
// interp.c: the reference interpreter. Every op in plain C, in double precision,
// written for obviousness rather than speed: the oracle that generated kernels and
// gradients are checked against.
//
typedef struct {
  bool training;      // dropout active (else identity)
  uint64_t seed;      // dropout's random stream
} KilnInterpOpts;

// values[i] holds node i's elements (row-major, numel of its shape; i32 values
// stored exactly as doubles). The caller allocates every values[i] and fills the
// sources (input, param; const is filled here); the interpreter computes the rest
// in order. Returns 0, or -1 with a message (e.g. a label out of range).
int kiln_interp_run(const KilnGraph *g, double **values, const KilnInterpOpts *o, char *err,
                    size_t errlen);

// Internal invariants stay checked in release builds.
#define KILN_ASSERT(c)                                                              \
  do {                                                                              \
    if (!(c)) kiln_assert_fail(#c, __FILE__, __LINE__);                             \
  } while (0)
_Noreturn void kiln_assert_fail(const char *what, const char *file, int line);

// Checks that a name is usable as a C identifier and a file name once dots become
// underscores: [A-Za-z_][A-Za-z0-9_.]*, at most 64 characters, no "..". Returns
// NULL or the reason it is not.
const char *kiln_name_problem(const char *name);

#endif
