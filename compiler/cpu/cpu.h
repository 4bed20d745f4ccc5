// The CPU backend: every kernel an LLVM function built with the LLVM C API over the
// static shapes of the IR, optimized for the target CPU and emitted as an object.
//
// Sections follow the files of compiler/cpu/: plan.c, loops.c, kernels.c, gemm.c, lstm.c,
// attention.c, train.c, module.c, target.c.
#ifndef KILN_CPU_H
#define KILN_CPU_H

#include <llvm-c/Core.h>
#include <llvm-c/TargetMachine.h>

#include "include/kiln/abi.h"
#include "ir/ir.h"
#include "passes/passes.h"

//
// plan.c: where every node lives. Params in the weights block, everything else
// in the activation arena, packed by memory planning (passes/memplan.c): values
// whose lifetimes do not overlap share bytes; nodes not needed get no storage.
//
typedef enum { KILN_LOC_NONE, KILN_LOC_WEIGHTS, KILN_LOC_ARENA } KilnLocKind;

typedef struct {
  KilnLocKind *where;   // per node
  int64_t *offset;      // per node, bytes into its block
  int64_t *scratch;     // per node, arena offset of its scratch space (lstm, attention), or -1
  int64_t *scratch_bytes;  // per node, bytes of that scratch space (0 without)
  int32_t *alias;       // per node: the node whose bytes it is (a view: reshape), or -1;
                        // its kernel need not run: the bytes are already there
  bool *live_fwd;       // per node: needed for the outputs (inference)
  bool *live_eval;      // per node: needed for the loss
  bool *live;           // per node: needed for any of it (with gradients when training)
  int64_t *state;       // per param: weights-block offset of its optimizer state, or -1
  int nstate;           // optimizer tensors per param (0, 1 or 2), each the param's size
  int64_t weights_bytes, opt_bytes, arena_bytes, arena_naive_bytes;
  KilnMemPlan mem;      // the arena's plan: buffers and their lifetimes
} KilnPlan;

// Plans storage for everything the graph computes: outputs, the loss, and after
// autodiff (g->grads set) the gradients, plus nstate optimizer tensors per param.
// The arena starts with the step header (include/kiln/abi.h).
void kiln_plan_build(const KilnGraph *g, KilnArena *a, int nstate, KilnPlan *out);

//
// loops.c: small helpers to build loop nests with the LLVM builder.
//
typedef struct KilnShared KilnShared;  // kernels.c: the kernel bodies built so far

typedef struct {
  LLVMContextRef ctx;
  LLVMModuleRef mod;
  LLVMBuilderRef b;
  LLVMTypeRef f32, i32, i64, i8, ptr, v;  // v: void
  LLVMValueRef fn;                        // function being built
  KilnShared *shared;                     // NULL until the first kernel; kiln_cpu_module_free frees it
} KilnCg;

typedef struct {
  LLVMValueRef index;       // the induction variable (i64)
  LLVMBasicBlockRef head, body, exit;
  LLVMValueRef phi;
} KilnLoop;

// A fresh context, module `name` and builder with c's types; with tm, the module
// takes its triple and data layout. kiln_cpu_module_free releases them.
void kiln_cg_init(KilnCg *c, const char *name, LLVMTargetMachineRef tm);
// for (i = lo; i < hi; i++) { body }: begin leaves the builder in the body.
KilnLoop kiln_cg_loop_begin(KilnCg *c, LLVMValueRef lo, LLVMValueRef hi, const char *name);
void kiln_cg_loop_end(KilnCg *c, KilnLoop *l);
LLVMValueRef kiln_cg_i64(KilnCg *c, int64_t v);
LLVMValueRef kiln_cg_i32(KilnCg *c, int64_t v);
// A module-private constant global holding v (tables, strings, images).
LLVMValueRef kiln_cg_private_const(KilnCg *c, LLVMValueRef v, const char *name);
LLVMValueRef kiln_cg_f32(KilnCg *c, double v);
// Typed pointer arithmetic: base + byte offset, then element index.
LLVMValueRef kiln_cg_gep(KilnCg *c, LLVMTypeRef elem, LLVMValueRef base, LLVMValueRef index);
LLVMValueRef kiln_cg_load(KilnCg *c, LLVMTypeRef t, LLVMValueRef base, LLVMValueRef index);
void kiln_cg_store(KilnCg *c, LLVMValueRef v, LLVMValueRef base, LLVMValueRef index);
// A call of an LLVM intrinsic (llvm.exp.f32, ...) or an external function.
LLVMValueRef kiln_cg_call1(KilnCg *c, const char *name, LLVMValueRef x);
LLVMValueRef kiln_cg_call2(KilnCg *c, const char *name, LLVMValueRef x, LLVMValueRef y);
LLVMValueRef kiln_cg_add(KilnCg *c, LLVMValueRef a, LLVMValueRef b);  // i64
LLVMValueRef kiln_cg_mul(KilnCg *c, LLVMValueRef a, LLVMValueRef b);  // i64
// exp and tanh from arithmetic (vectorizable; within a few ulp of libm).
LLVMValueRef kiln_cg_exp(KilnCg *c, LLVMValueRef x);
LLVMValueRef kiln_cg_tanh(KilnCg *c, LLVMValueRef x);
// Stack scalar accumulator helpers (promoted to registers by mem2reg).
LLVMValueRef kiln_cg_alloca(KilnCg *c, LLVMTypeRef t, const char *name);

//
// kernels.c: one kernel per live, non-source node.
//
// Kernels share bodies. A kernel `void kN(ptr w, ptr a, i64 lo, i64 hi)` is a
// wrapper that computes the pointers to its buffers (the plan's offsets into w or
// a) and calls an internal, noinline body `(ptr w, ptr a, ptr p0 .. pn-1, i64 lo,
// i64 hi)` that gets every buffer as a parameter, slot i the i-th distinct buffer
// (block and offset) the emitter asked for. Bodies that print the same IR are
// built once: the transformer's layers, forward and backward, then share one body
// per kernel kind, and LLVM optimizes each once. A slot is noalias when its bytes
// overlap no other slot's (an in-place output shares its input's bytes).
typedef struct {
  KilnLocKind where;  // KILN_LOC_WEIGHTS (w) or KILN_LOC_ARENA (a)
  int64_t off, bytes;
} KilnSlot;

typedef struct {
  LLVMValueRef w, a, lo, hi;  // the body's parameters (w and a for header reads only)
  int n, cap;
  KilnSlot *slot;             // the buffers asked for, in order
  LLVMValueRef *param;        // slot i's parameter; NULL in the first (collecting) pass
} KilnBody;

// Writes a kernel body: emitted twice (slots collected, then for real), it must
// ask for the same buffers in the same order both times. Returns what
// kiln_cpu_shared_kernel hands back (the kernel's parallel iterations).
typedef int64_t (*KilnBodyFn)(KilnCg *c, KilnBody *b, void *ctx);
// A pointer to bytes [off, off + bytes) of block `where` inside a body.
LLVMValueRef kiln_cpu_body_ptr(KilnCg *c, KilnBody *b, KilnLocKind where, int64_t off, int64_t bytes);
// The wrapper kernel `name` over the body `emit` writes (an identical earlier
// body reused); *out gets emit's result.
LLVMValueRef kiln_cpu_shared_kernel(KilnCg *c, const char *name, KilnBodyFn emit, void *ctx,
                                    int64_t *out);
// Releases c->shared.
void kiln_cpu_shared_free(KilnCg *c);

typedef struct KilnKernel KilnKernel;
struct KilnKernel {
  KilnCg *cg;
  const KilnGraph *g;
  const KilnPlan *plan;
  const KilnNode *n;
  int32_t id;
  LLVMValueRef w, a, lo, hi;  // body parameters (w, a: for the step header only)
  KilnBody *body;             // where kiln_cpu_ptr finds the buffers
  int32_t out;                // the node whose buffer receives the result (id, or the
                              // fusion group's root for a matmul with an epilogue)
  const KilnKernel *epi;      // the group root whose elementwise chain runs as the
                              // matmul's epilogue, or NULL
  int phase;                  // which of the node's kernels (kiln_cpu_kernel_phases)
};

// Emits the kernel for node id into the module; returns the function and the
// number of parallel iterations it splits (its outer loop) in *out_n, and a cost
// estimate (FLOPs or bytes) in *out_cost.
LLVMValueRef kiln_cpu_kernel(KilnCg *c, const KilnGraph *g, const KilnPlan *p, int32_t id,
                             int64_t *out_n, int64_t *out_cost);
// Most nodes run one kernel. A node whose work has parts that must not overlap in
// time (lstm_grad: back through time per sequence, then weight gradients summed
// over all sequences) runs several, one after the other, each split over the
// threads on its own. kiln_cpu_kernel builds phase 0; this builds phase `phase`.
#define KILN_CPU_MAX_PHASES 2
int kiln_cpu_kernel_phases(const KilnNode *n);
LLVMValueRef kiln_cpu_kernel_phase(KilnCg *c, const KilnGraph *g, const KilnPlan *p, int32_t id,
                                   int phase, int64_t *out_n, int64_t *out_cost);
// Scalar semantics of an elementwise op in LLVM IR, matching the op table's.
LLVMValueRef kiln_cpu_scalar(KilnCg *c, const KilnNode *n, LLVMValueRef *x);
// The case labels of every op that is not a scalar expression (each has kernels of
// its own; dropout is random and reads the step header), for the scalar emitters of
// both backends (kiln_cpu_scalar, kiln_cuda_scalar): listed once, and named case by
// case so that -Wswitch-enum still reports a new op that neither handles.
#define KILN_CASES_NOT_SCALAR                                                                  \
  case KILN_OP_DROPOUT: case KILN_OP_INPUT: case KILN_OP_PARAM: case KILN_OP_CONST:           \
  case KILN_OP_SUM: case KILN_OP_MEAN: case KILN_OP_MAX: case KILN_OP_SOFTMAX:                \
  case KILN_OP_LOG_SOFTMAX: case KILN_OP_LAYERNORM: case KILN_OP_MATMUL: case KILN_OP_RESHAPE: \
  case KILN_OP_TRANSPOSE: case KILN_OP_CONCAT: case KILN_OP_SLICE: case KILN_OP_EMBEDDING:    \
  case KILN_OP_LSTM: case KILN_OP_ATTENTION: case KILN_OP_CROSS_ENTROPY: case KILN_OP_MSE:    \
  case KILN_OP_BCE: case KILN_OP_LAYERNORM_DX: case KILN_OP_LAYERNORM_DGAMMA:                 \
  case KILN_OP_EMBEDDING_GRAD: case KILN_OP_LSTM_GRAD: case KILN_OP_ATTENTION_GRAD:           \
  case KILN_OP_CROSS_ENTROPY_GRAD: case KILN_OP_ATTENTION_DECODE: case KILN_OP_LSTM_STEP:     \
  case KILN_OP_COUNT:
// A pointer to node id's storage (weights or arena) inside a kernel.
LLVMValueRef kiln_cpu_ptr(KilnKernel *k, int32_t id);

// A call of cblas_sgemm: c = alpha op(a) op(b) + beta c, row-major. Sizes are i64
// values (blocks vary at run time), beta an f32 value.
typedef struct {
  bool ta, tb;
  LLVMValueRef m, n, k;
  double alpha;
  LLVMValueRef a;
  int64_t lda;
  LLVMValueRef b;
  int64_t ldb;
  LLVMValueRef beta, c;
  int64_t ldc;
} KilnGemm;
void kiln_cpu_sgemm(KilnCg *c, const KilnGemm *g);

//
// gemm.c: sgemm as generated code, a function per leading dimensions, transposes,
// alpha and tile: a register-blocked micro-kernel of mr x (8 nv) floats with
// packed panels of B where they pay. kiln_cpu_sgemm calls it for the shapes
// where it was measured faster than OpenBLAS (kiln_cpu_gemm_wins).
//
typedef struct {
  int mr, nv;  // tile: mr rows x nv vectors of 8 floats (mr <= 8, nv <= 3)
  bool pack;   // pack every panel of B (a transposed B is always packed)
} KilnGemmTile;
// Whether the generated kernel beats cblas_sgemm on g's layout (transposes,
// leading dimensions) with sizes up to m x n x k, and with which tile.
bool kiln_cpu_gemm_wins(const KilnGemm *g, int64_t m, int64_t n, int64_t k);
KilnGemmTile kiln_cpu_gemm_tile(const KilnGemm *g, int64_t m, int64_t n, int64_t k);
// A call of the generated kernel: same contract as kiln_cpu_sgemm.
void kiln_cpu_gemm(KilnCg *c, const KilnGemm *g, KilnGemmTile t);
// The call kiln_cpu_sgemm makes when the generated kernel wins on the sizes g's
// values can take (constants, or bounds from the leading dimensions); returns
// false, emitting nothing, where OpenBLAS stays.
bool kiln_cpu_gemm_try(KilnCg *c, const KilnGemm *g);

//
// lstm.c: the lstm layer and its gradient (two phases), products in cblas_sgemm
// (kernels.c dispatches to these).
//
int64_t kiln_cpu_lstm(KilnKernel *k);
int64_t kiln_cpu_lstm_grad(KilnKernel *k);
// Floats of scratch the kernel of node n (lstm or lstm_grad) needs.
int64_t kiln_cpu_lstm_scratch(const KilnGraph *g, const KilnNode *n);
// The lstm node whose kernel fills lstm_grad node j's scratch with the forward's
// gates and states (so j need not run the forward again), or -1.
int32_t kiln_cpu_lstm_kept_for(const KilnGraph *g, int32_t j);

//
// attention.c: scaled dot-product attention and its gradient, in blocks of
// query rows (kernels.c dispatches to these).
//
int64_t kiln_cpu_attention(KilnKernel *k);
int64_t kiln_cpu_attention_grad(KilnKernel *k);
// Floats of scratch the kernel of node n (attention or attention_grad) needs.
int64_t kiln_cpu_attention_scratch(const KilnNode *n);

//
// decode.c: kernels of the decoding ops (attention_decode, lstm_step).
//
int64_t kiln_cpu_emit_attention_decode(KilnKernel *k);
int64_t kiln_cpu_emit_lstm_step(KilnKernel *k);

//
// train.c: the gradient-norm kernel and the optimizer updates (after autodiff).
//
LLVMValueRef kiln_cpu_norm_kernel(KilnCg *c, const KilnGraph *g, const KilnPlan *p, double clip);
LLVMValueRef kiln_cpu_update_kernel(KilnCg *c, const KilnGraph *g, const KilnPlan *p, int32_t id,
                                    const KilnTrainDesc *t);
void kiln_cpu_update_work(const KilnTrainDesc *t, int nstate, int64_t *out_flops,
                          int64_t *out_tensors);

//
// module.c: the model's module: kernels, the forward step, the descriptor and
// (for libraries) the prefixed C API.
//
// What a backend's step builder hands the module (kiln_cpu_module): the step
// functions (void (ptr w, ptr a, ptr rt)), the gradients in the update's order, and
// the profiler's kernel table.
typedef struct {
  int n;
  int32_t *param;   // index into the descriptor's params
  int32_t *node;    // the gradient's value
  int32_t *ready;   // report after this node's kernels
} KilnGrads;

typedef struct {
  LLVMValueRef forward, eval, train;
  KilnGrads grads;       // the train step's, else n = 0
  int nkernels;
  KilnKernelCost *info;  // the profiler's kernel table, as the launches index it (malloc'd)
  int ninfo;
  LLVMValueRef program;  // the descriptor's `cuda` (a KilnCudaProgram), or NULL
} KilnSteps;

// Every gradient the update reads, in its order, with the node after whose kernels
// it is final (kiln_rt_grad_ready).
void kiln_cpu_find_grads(const KilnGraph *g, const KilnPlan *p, KilnGrads *out);
void kiln_cpu_grads_free(KilnGrads *gr);
// Appends the profiler's entries of the gradient norm and the optimizer update
// (over `params` elements) to out->info.
void kiln_cpu_train_costs(const KilnPlan *p, const KilnTrainDesc *train, int64_t params,
                          KilnSteps *out);

typedef struct {
  const char *kiln_version;
  bool library;            // emit NAME_create, NAME_forward, ... (else the exe's entry)
  uint64_t seed;
  LLVMTargetMachineRef tm; // its data layout and triple go into the module
  const KilnTrainDesc *train;  // optimizer and data; NULL: inference only
  // Generation (NULL: none): the one-token decode model, with its cache length, and
  // the batch-1 window model; both with the main model's parameter layout.
  const KilnGraph *decode, *window;
  const KilnPlan *decode_plan, *window_plan;
  int64_t context;
  // Another backend's steps (the CUDA target's): called for each model in place of
  // the CPU's kernels and step functions. NULL: the CPU's.
  const char *target;      // the descriptor's target name (NULL: "cpu")
  void (*steps)(KilnCg *c, const KilnGraph *g, const KilnPlan *p, const KilnTrainDesc *train,
                void *ctx, KilnSteps *out);
  void *steps_ctx;
} KilnModuleOpts;

// Builds the whole model into c->mod (created here with c->ctx, c->b).
void kiln_cpu_module(KilnCg *c, const KilnGraph *g, const KilnPlan *p, const KilnModuleOpts *o);
// Releases what kiln_cpu_module created.
void kiln_cpu_module_free(KilnCg *c);

//
// target.c: target machine, optimization and emission.
//
typedef enum { KILN_EMIT_OBJ, KILN_EMIT_ASM, KILN_EMIT_LLVM } KilnEmitKind;

typedef struct {
  const char *cpu;         // "native" (default), "x86-64-v3", "skylake-avx512", ...
  int opt_level;           // 0..3
} KilnTargetOpts;

// A target machine for the CPU named in t (the host's, with its features, for
// "native"). NULL with a message in err when LLVM does not know the CPU.
LLVMTargetMachineRef kiln_cpu_target(const KilnTargetOpts *t, char *err, size_t errlen);
// Optimizes the module (new pass manager, default<O0..3>) and writes it to path.
// Returns 0, or -1 with the LLVM message in err.
int kiln_cpu_emit(LLVMModuleRef m, LLVMTargetMachineRef tm, int opt_level, KilnEmitKind kind,
                  const char *path, char *err, size_t errlen);

#endif
