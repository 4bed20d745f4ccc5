// Kiln compiler front end: diagnostics, YAML reading, dim expressions, the model
// (format version 1) and its lowering to IR, the summary `kiln check` prints.
//
// Sections follow the files of compiler/: diag.c, yaml.c, expr.c, model.c,
// values.c, lower.c, layers.c, config.c, build.c, workload.c, summary.c, onnx.c,
// weights.c (main.c is the driver).
#ifndef KILN_COMPILER_H
#define KILN_COMPILER_H

#include "ir/ir.h"

//
// diag.c: user-facing errors at file:line:col with the source line and a caret.
//
#define KILN_MAX_SOURCES 4

typedef struct {
  FILE *out;          // where messages go (stderr, or a memstream in tests)
  int nerrors, nwarnings;
  int max_errors;     // stop collecting after this many (default 20)
  bool color;         // not used for files; stderr on a terminal only
  struct {
    const char *file;
    const char *text;
    size_t len;
  } src[KILN_MAX_SOURCES];
  int nsrc;
} KilnDiag;

void kiln_diag_init(KilnDiag *d, FILE *out);
// Registers a file's text so messages can quote its lines.
void kiln_diag_source(KilnDiag *d, const char *file, const char *text, size_t len);
void kiln_error(KilnDiag *d, KilnLoc loc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void kiln_warning(KilnDiag *d, KilnLoc loc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
// "  hint: ..." under the message just printed.
void kiln_hint(KilnDiag *d, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
// True once max_errors errors were reported: callers stop early.
bool kiln_diag_full(const KilnDiag *d);
// The closest of candidates (NULL-terminated) to word by edit distance, if close
// enough to be a likely typo; else NULL. For "did you mean ...?" hints.
const char *kiln_suggest(const char *word, const char *const *candidates);

// Bytes of the line break at p (before end), or 0; as libyaml counts lines.
size_t kiln_break_len(const char *p, const char *end);

// Reads a whole file, refusing one over limit bytes. Returns NULL with an error
// reported (at file:0:0) on failure. The text is NUL-terminated.
char *kiln_read_file(KilnArena *a, KilnDiag *d, const char *path, size_t limit, size_t *out_len);

//
// yaml.c: libyaml events into a small tree of our own. Aliases, anchors, tags,
// duplicate keys, complex keys, several documents, deep nesting and oversized
// scalars are rejected while reading, so the tree is small and acyclic.
//
#define KILN_YAML_MAX_FILE (4u << 20)   // 4 MiB: a model file is a few KB
#define KILN_YAML_MAX_DEPTH 32
#define KILN_YAML_MAX_SCALAR 4096

typedef enum { KILN_YAML_SCALAR, KILN_YAML_SEQ, KILN_YAML_MAP } KilnYamlKind;

typedef struct KilnYaml KilnYaml;
struct KilnYaml {
  KilnYamlKind kind;
  KilnLoc loc;           // where the node starts
  const char *str;       // scalar text, NUL-terminated
  size_t len;
  bool plain;            // unquoted scalar: may be a number, bool or null
  int n;                 // items of a sequence, pairs of a map
  KilnYaml **items;      // sequence items, or map values
  KilnYaml **keys;       // map keys (scalars), parallel to items
};

// Parses one YAML document. Returns NULL after reporting errors to d.
KilnYaml *kiln_yaml_parse(KilnArena *a, KilnDiag *d, const char *file, const char *text,
                          size_t len);
// The value of key in a map, or NULL.
const KilnYaml *kiln_yaml_get(const KilnYaml *map, const char *key);
const char *kiln_yaml_kind_name(KilnYamlKind k);

//
// expr.c: integer expressions over dims: + - * / % and parentheses, e.g. "4*d",
// "(d/heads)". Division must be exact; overflow is an error.
//
typedef struct {
  const char *name;
  int64_t value;
  KilnLoc loc;
  bool overridden;       // set by --dim
} KilnDim;

typedef struct {
  KilnDim *dims;
  int ndims;
} KilnDimTable;

// Evaluates text; on error writes a message to err (with the byte offset of the
// problem in *out_pos) and returns -1.
int kiln_expr_eval(const char *text, const KilnDimTable *dims, int64_t *out_value, char *err,
                   size_t errlen, int *out_pos);

//
// model.c: the model file, format version 1, read and lowered to IR.
//
typedef enum { KILN_OPT_SGD, KILN_OPT_ADAM, KILN_OPT_ADAMW } KilnOptKind;
typedef enum { KILN_SCHED_CONSTANT, KILN_SCHED_STEP, KILN_SCHED_COSINE } KilnSchedKind;

typedef struct {
  bool present;
  KilnOptKind opt;
  double lr, momentum, weight_decay, beta1, beta2, eps;
  bool nesterov;
  KilnSchedKind sched;
  int64_t step_every;     // step schedule: multiply lr by gamma every N steps
  double gamma;
  int64_t warmup;         // cosine: linear warmup steps
  double min_lr;          // cosine: floor
  int64_t epochs, steps;  // exactly one is non-zero
  double clip_grad_norm;  // 0: off
  uint64_t seed;
} KilnTrainCfg;

typedef enum { KILN_SOURCE_CSV, KILN_SOURCE_NPY, KILN_SOURCE_TEXT, KILN_SOURCE_TOKENS } KilnDataKind;

#define KILN_MAX_BINDINGS 8

// Which model input a part of a data source feeds.
typedef struct {
  const char *input;         // model input name
  const char *path;          // npy: its file
  int64_t col_begin, col_end;  // csv: columns [begin, end); one column when end = begin + 1
  bool range;                // csv: written as [begin, end) rather than one column
} KilnDataBinding;

// One data source: a file (or, for npy, a file per input) and which model input
// each part feeds.
typedef struct {
  bool present;
  KilnDataKind kind;
  const char *path;            // csv, text, tokens: resolved against the model's folder
  int nbind;
  KilnDataBinding bind[KILN_MAX_BINDINGS];
  const char *input, *target;  // text, tokens: window and next-token inputs
  bool header;                 // csv: skip the first line
  KilnLoc loc;
} KilnDataSrc;

typedef struct {
  KilnDataSrc train, eval;
  double val_split;            // fraction of train held out when eval is absent
  bool shuffle;
} KilnDataCfg;

// Lowering for generation (compiler/build.c compiles a language model three times):
// DECODE takes one token per call at position `decode.position`, with a key/value
// cache per attention and h, c per LSTM kept as state inputs; WINDOW is the model
// for one sequence (batch 1), recomputing everything.
typedef enum { KILN_GEN_NONE, KILN_GEN_DECODE, KILN_GEN_WINDOW } KilnGenMode;

typedef struct {
  KilnArena arena;             // everything below lives here
  const char *path;            // the model file
  const char *dir;             // its folder, for data paths
  const char *name;            // model name: a C identifier
  KilnDimTable dims;
  KilnGraph graph;
  int32_t *inputs;             // input nodes in declaration order
  int ninputs;
  KilnTrainCfg train;
  KilnDataCfg data;
  KilnGenMode gen;
  int64_t context;             // DECODE: positions the caches hold
  int32_t position;            // DECODE: the position input, else -1
} KilnModel;

typedef struct {
  const char *name;
  int64_t value;
} KilnDimOverride;

// Reads, validates and lowers a model. Returns 0, or -1 with errors reported.
// The model must be freed with kiln_model_free whatever the result.
int kiln_model_load(KilnModel *m, KilnDiag *d, const char *path, const KilnDimOverride *ov,
                    int nov);
// The same for generation: every input gets batch 1 (DECODE: and one position);
// dims named by the token input's shape are overridden to match.
int kiln_model_load_gen(KilnModel *m, KilnDiag *d, const char *path, const KilnDimOverride *ov,
                        int nov, KilnGenMode gen, int64_t context);
void kiln_model_free(KilnModel *m);

//
// values.c: typed reading of YAML scalars, with errors at the scalar's location.
// Each returns 0, or -1 after reporting.
//
int kiln_val_int(KilnDiag *d, const KilnYaml *y, const KilnDimTable *dims, int64_t *out);
int kiln_val_float(KilnDiag *d, const KilnYaml *y, double *out);
int kiln_val_bool(KilnDiag *d, const KilnYaml *y, bool *out);
// A scalar that must be an identifier (what names a model, value, dim or block).
int kiln_val_ident(KilnDiag *d, const KilnYaml *y, const char *what, const char **out);
// A shape: a sequence of positive integers or dim expressions.
int kiln_val_shape(KilnDiag *d, const KilnYaml *y, const KilnDimTable *dims, int64_t *shape,
                   int *out_rank);
int kiln_val_init(KilnDiag *d, const KilnYaml *y, KilnInit *out);
// Reports every key of map not in allowed (NULL-terminated), with a suggestion:
// "unknown NOUN 'unit' of OWNER" (OWNER may be NULL). Returns the count.
int kiln_val_keys(KilnDiag *d, const KilnYaml *map, const char *const *allowed, const char *noun,
                  const char *owner);
// Expects y to be of kind k; reports "expected a mapping for 'what', got ..." else.
int kiln_val_kind(KilnDiag *d, const KilnYaml *y, KilnYamlKind k, const char *what);

//
// lower.c: graph lists, scopes, blocks and primitive ops into IR.
//
#define KILN_MAX_NODES 100000  // a GPT-2-sized model lowers to a few thousand
#define KILN_MAX_REPEAT 1024

typedef struct KilnScope KilnScope;
typedef struct KilnBlocks KilnBlocks;

// State while lowering one graph list (the model's or one block copy's).
typedef struct {
  KilnModel *m;
  KilnDiag *d;
  KilnScope *scope;          // names visible here
  const KilnBlocks *blocks;  // the model's block definitions
  int block_limit;           // blocks callable from here: those defined before this one
  const char *prefix;        // "" at top level, "h.0." inside copy 0 of call h
  int32_t prev;              // the previous node's output: the default `in`
  const KilnYaml *list;      // the graph list being lowered, and the item at hand,
  int item;                  // for use-before-definition and cycle messages
} KilnLower;

// Lowers the model's graph, params and outputs; returns 0 or -1.
int kiln_lower_model(KilnModel *m, KilnDiag *d, const KilnYaml *root);
// Adds a node with attributes, runs its shape rule, reports a failure at loc.
// local is the name without prefix. Returns the node, or -1.
int32_t kiln_lower_emit(KilnLower *l, KilnOp op, const int32_t *in, int nin, const char *local,
                        const KilnAttrs *attr, KilnLoc loc);
int32_t kiln_lower_param(KilnLower *l, const char *local, const int64_t *shape, int rank,
                         KilnInit init, KilnLoc loc);
// An input node; state: decode state the step reads and writes (DECODE only).
int32_t kiln_lower_input(KilnLower *l, const char *local, KilnDType dt, const int64_t *shape,
                         int rank, bool state, KilnLoc loc);

//
// layers.c: layer ops (dense, embedding, ...) that create parameters.
//
typedef struct {
  const char *name;
  const char *const *attrs;  // allowed attributes besides in and name
  int min_in, max_in;
  // Returns the output node, or -1 after reporting.
  int32_t (*lower)(KilnLower *l, const KilnYaml *attrs, const int32_t *in, int nin,
                   const char *name, KilnLoc loc);
} KilnLayer;

const KilnLayer *kiln_layer_lookup(const char *name);
// NULL-terminated list of layer names, for suggestions.
const char *const *kiln_layer_names(void);

//
// config.c: the train and data sections.
//
int kiln_config_train(KilnModel *m, KilnDiag *d, const KilnYaml *y);
int kiln_config_data(KilnModel *m, KilnDiag *d, const KilnYaml *y);

//
// build.c: `kiln build`: compile a model and link or archive it with the runtime.
//
typedef enum {
  KILN_BUILD_EXE,   // standalone program (runtime/cli.c)
  KILN_BUILD_LIB,   // DIR/libNAME.a + DIR/NAME.h + DIR/NAME.pc
  KILN_BUILD_OBJ,
  KILN_BUILD_ASM,
  KILN_BUILD_LLVM,
  KILN_BUILD_CUDA,  // the kernels' CUDA source (--target=cuda)
} KilnBuildEmit;

typedef struct {
  const char *model;        // the YAML file
  const char *output;       // file (exe, obj, asm, llvm) or DIR/NAME (lib)
  const char *cpu;          // target CPU: "native" or an LLVM CPU name
  const char *print_after;  // --print-ir-after
  KilnBuildEmit emit;
  int opt_level;            // 0..3: graph passes (at most 2) and LLVM
  int graph_level;          // -1, or the graph pass level alone (0..2)
  bool time_passes;
  bool mpi;                 // exe: link runtime/mpi.c and MPI (data-parallel training)
  bool cuda;                // --target=cuda: kernels for NVIDIA GPUs (compiler/cuda/)
  const char *gpu_arch;     // --gpu-arch: "sm_80,sm_90" by default
  bool gpu_matmul_bf16;     // --gpu-matmul=bf16: matmuls on bf16 tensor cores, f32 accumulation
  const char *cuda_source;  // also write the kernels' CUDA source here, or NULL
  const char *kernel_stats; // write registers/spills per kernel here ("-": stdout), or NULL
  const KilnDimOverride *dims;
  int ndims;
} KilnBuildOpts;

int kiln_build(KilnDiag *d, const KilnBuildOpts *o);

//
// workload.c: `kiln profile`: build, then run the model's default workload (training
// steps when it has a loss, else forward passes) with the profiler on.
//
typedef struct {
  KilnBuildOpts build;      // the model and how to compile it; output and emit are set
  int steps;                // timed steps (bench runs)
  int threads;              // 0: every CPU
  char *const *pass;        // options handed to the program (--profile-out FILE, ...)
  int npass;
} KilnProfileRunOpts;

int kiln_profile_run(KilnDiag *d, const KilnProfileRunOpts *o);

//
// summary.c: what `kiln check` prints for a valid model.
//
void kiln_model_summary(const KilnModel *m, FILE *f);

//
// onnx.c: `kiln import`: an ONNX model to a Kiln model file plus its weights.
//
typedef struct {
  const char *input;         // MODEL.onnx
  const char *output;        // the model file written
  const char *weights;       // the safetensors file written
  const char *name;          // the model's name
  const KilnDimOverride *dims;  // sizes of free (symbolic) input axes
  int ndims;
} KilnImportOpts;

int kiln_import_onnx(KilnDiag *d, const KilnImportOpts *o);
// The subcommand: parses argv (argv[0] is "import"); returns the exit status.
int kiln_import_main(int argc, char **argv);

//
// weights.c: `kiln weights`: converting weights between PyTorch's layout and Kiln's.
//
int kiln_weights_main(int argc, char **argv);
// A PyTorch module path as a Kiln layer name: characters outside [A-Za-z0-9_]
// become '_', and a leading digit gets '_' before it ("net.0" -> "net_0").
char *kiln_torch_module_name(KilnArena *a, const char *path, size_t len);

#endif
