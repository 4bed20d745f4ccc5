// The CUDA backend: every kernel CUDA C source instantiated from the templates in
// templates/ over the static shapes of the IR, compiled ahead of time by NVRTC for
// each requested architecture (cubins, plus PTX for newer GPUs). The host side (the
// descriptor, step functions that hand a launch table to the runtime, the embedded
// images) is an LLVM module like the CPU backend's, so the output links the same way.
//
// Memory is planned as for the CPU (kiln_plan_build): one weights block and one
// arena, on the device, at the same offsets. A kernel reaches its buffers through
// KilnArgs (templates/prelude.cuh): A.w and A.a are the blocks' device bases (the
// step header at A.a), A.p[i] the i-th buffer the kernel asked for. Offsets are
// launch data, not source, so the layers' identical kernels compile once.
//
// Sections follow the files of compiler/cuda/: source.c, elementwise.c, kernels.c,
// matmul.c, attention.c, lstm.c, train.c, nvrtc.c, module.c.
#ifndef KILN_CUDA_H
#define KILN_CUDA_H

#include <stdio.h>

#include "compiler/cpu/cpu.h"  // KilnPlan, KilnSlot, kiln_plan_build
#include "include/kiln/abi.h"
#include "ir/ir.h"

#define KILN_CUDA_MAX_SLOTS KILN_ABI_CUDA_MAX_SLOTS

// How matmul nodes multiply (--gpu-matmul): f32 CUDA cores, or bf16 tensor cores
// with f32 accumulation (operands rounded to bf16 in shared memory; sm_80 and newer).
typedef enum {
  KILN_CUDA_MATMUL_F32,
  KILN_CUDA_MATMUL_BF16,
} KilnCudaMatmul;

//
// source.c: one kernel's source and launch, and the per-node dispatch.
//
typedef struct {
  const KilnGraph *g;
  const KilnPlan *p;
  int32_t id;              // the node; its fusion group's root when it has one
  int phase;               // which of its kernels (kiln_cuda_kernel_phases)
  const char *name;        // the __global__ function to define; appears nowhere else
  FILE *out;               // the kernel's source goes here
  KilnArena *arena;        // strings returned below live here
  KilnCudaMatmul matmul;   // how matmul.c's kernels multiply
  int nslots;              // buffers asked for: slot i is A.p[i]
  KilnSlot slot[KILN_CUDA_MAX_SLOTS];
  // Launch geometry, set by the emitter.
  uint32_t grid[3], block[3];
  uint32_t smem;           // dynamic shared memory bytes (static __shared__ is preferred)
  char err[256];           // why the emitter failed (returns -1)
} KilnCudaKernel;

// The C expression of node id's storage in the kernel: "((float *)A.p[3])" (f32) or
// "((int *)A.p[3])" (i32), through aliases and windows as the CPU backend's
// kiln_cpu_ptr. Asks for the slot the first time.
const char *kiln_cuda_ptr(KilnCudaKernel *k, int32_t id);
// Bytes [off, off + bytes) of a block, as "((float *)A.p[i])" (scratch space).
const char *kiln_cuda_ptr_at(KilnCudaKernel *k, KilnLocKind where, int64_t off, int64_t bytes);
// printf into k->arena.
const char *kiln_cuda_fmt(KilnCudaKernel *k, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
// Blocks of `threads` threads to cover n items, capped for grid-stride loops.
uint32_t kiln_cuda_blocks(int64_t n, uint32_t threads);

// Most nodes run one kernel; lstm_grad runs two (as kiln_cpu_kernel_phases).
int kiln_cuda_kernel_phases(const KilnNode *n);
// Writes the kernel of node k->id, phase k->phase, and its launch geometry. 0, or -1
// with k->err.
int kiln_cuda_kernel(KilnCudaKernel *k);
// The kernel that stores the values of the const nodes in live[] (none: returns 0
// and writes nothing).
int kiln_cuda_const_kernel(KilnCudaKernel *k, const bool *live);

//
// elementwise.c: fused elementwise groups, dropout, layout ops (reshape copy,
// transpose, concat, slice, broadcast), embedding and its gradient.
//
// The fusion group rooted at `root` (an elementwise node) evaluated at one element
// of root: writes statements into k->out and returns the C expression (a local
// variable) holding root's value. row and col are C expressions of the element's
// row (leading dims flattened) and column (last dim) in root's shape. Node `given`
// has the value of the C expression given_expr (a matmul's accumulator; -1: none);
// every other member is computed inline from its inputs, and leaves outside the
// group are loaded from their buffers with numpy broadcasting. Members that
// kiln_graph_fused_stored says are read elsewhere are stored too.
const char *kiln_cuda_chain(KilnCudaKernel *k, int32_t root, const char *row, const char *col,
                            int32_t given, const char *given_expr);
// The op table's scalar semantics in CUDA C over argument expressions x[0..].
const char *kiln_cuda_scalar(KilnCudaKernel *k, const KilnNode *n, const char *const *x);
int kiln_cuda_emit_elementwise(KilnCudaKernel *k);  // matmul epilogues go to matmul.c
int kiln_cuda_emit_dropout(KilnCudaKernel *k);
int kiln_cuda_emit_copy(KilnCudaKernel *k);          // reshape that is not a view
int kiln_cuda_emit_transpose(KilnCudaKernel *k);
int kiln_cuda_emit_concat_slice(KilnCudaKernel *k);
int kiln_cuda_emit_embedding(KilnCudaKernel *k);
int kiln_cuda_emit_embedding_grad(KilnCudaKernel *k);

//
// kernels.c: reductions, softmax, layernorm, losses and their gradients.
//
int kiln_cuda_emit_reduce(KilnCudaKernel *k);
int kiln_cuda_emit_softmax(KilnCudaKernel *k);
int kiln_cuda_emit_layernorm(KilnCudaKernel *k);
int kiln_cuda_emit_layernorm_dx(KilnCudaKernel *k);
int kiln_cuda_emit_layernorm_dgamma(KilnCudaKernel *k);
int kiln_cuda_emit_loss(KilnCudaKernel *k);          // cross_entropy, mse, bce
int kiln_cuda_emit_cross_entropy_grad(KilnCudaKernel *k);

//
// matmul.c, attention.c, lstm.c: the opaque ops.
//
int kiln_cuda_emit_matmul(KilnCudaKernel *k);
// The matmul mm computed with the elementwise group rooted at k->id as its
// epilogue (kiln_cuda_chain with given = mm), stored to the root's buffer.
int kiln_cuda_emit_matmul_group(KilnCudaKernel *k, int32_t mm);
int kiln_cuda_emit_attention(KilnCudaKernel *k);
int kiln_cuda_emit_attention_grad(KilnCudaKernel *k);
int kiln_cuda_emit_attention_decode(KilnCudaKernel *k);
int kiln_cuda_emit_lstm(KilnCudaKernel *k);
int kiln_cuda_emit_lstm_grad(KilnCudaKernel *k);     // phases 0 and 1
int kiln_cuda_emit_lstm_step(KilnCudaKernel *k);

//
// train.c: the gradient norm (writes header.grad_norm and header.grad_scale) and
// the optimizer update of one parameter (reads lr, bias1, bias2, grad_scale from
// the header), as the CPU backend's compiler/cpu/train.c.
//
int kiln_cuda_norm_kernel(KilnCudaKernel *k, double clip);
int kiln_cuda_update_kernel(KilnCudaKernel *k, int32_t param, const KilnTrainDesc *t);

//
// nvrtc.c: compiling the model's source.
//
typedef struct {
  char name[128];
  int arch;                // 80, 90, ...
  int registers;
  int spill_stores, spill_loads;  // bytes
  int stack;               // bytes of stack frame
  int smem;                // bytes of static shared memory
} KilnCudaKernelStats;

typedef struct {
  int arch;                // 80, 90: a cubin for sm_ARCH; negative: PTX for compute_-ARCH
  unsigned char *data;
  size_t size;
} KilnCudaBinary;

typedef struct {
  KilnCudaBinary *bin;
  int nbin;
  KilnCudaKernelStats *stats;  // every kernel, every cubin arch
  int nstats;
  char *log;               // the last compile's log (errors, warnings)
  int ncached;             // architectures that came from the kernel cache
} KilnCudaCompiled;

// cache.c: NVRTC's output for one architecture, kept on disk by `kiln build`.
typedef struct {
  char *log;               // NVRTC's log, ptxas's report in it
  unsigned char *cubin;
  size_t cubin_size;
  unsigned char *ptx;      // NULL: none kept
  size_t ptx_size;
} KilnCudaCacheEntry;

// The folder (in buf) of the cache: $KILN_CACHE_DIR/nvrtc, else under
// $XDG_CACHE_HOME or ~/.cache; NULL when KILN_CACHE=0 or none can be named.
const char *kiln_cuda_cache_dir(char *buf, size_t len);
// The entry of key (every input NVRTC's output depends on): true with *e filled
// (malloc'd), false on a miss or a damaged entry.
bool kiln_cuda_cache_get(const char *dir, const char *key, size_t keylen, KilnCudaCacheEntry *e);
// Stores e under key, then trims the folder to limit bytes (least recently used
// first). Failures are silent: the cache only saves time.
void kiln_cuda_cache_put(const char *dir, int64_t limit, const char *key, size_t keylen,
                         const KilnCudaCacheEntry *e);

// The architectures of a --gpu-arch list ("sm_80,sm_90"); -1 with a message.
int kiln_cuda_parse_archs(const char *list, int *archs, int max, char *err, size_t errlen);
// Compiles src (named file) for each arch (cubins) plus PTX for the newest,
// through the kernel cache in cache_dir (NULL: none; limit: its size in bytes).
// 0; -1 with NVRTC's log in err (the caller maps its lines to the source); -2 with
// a message in err when NVRTC cannot be loaded.
int kiln_cuda_compile(const char *src, const char *file, const int *archs, int narchs,
                      const char *cache_dir, int64_t cache_limit, KilnCudaCompiled *out,
                      char *err, size_t errlen);
void kiln_cuda_compiled_free(KilnCudaCompiled *c);
// The full text of the templates, in order (templates/*.cuh, prelude first).
const char *kiln_cuda_templates(void);

//
// module.c: the model for the GPU: kernel source, NVRTC, host module.
//
typedef struct {
  const int *archs;        // cubins for these (sm_80, sm_90 by default)
  int narchs;
  const char *source_out;  // also write the kernel source here (--emit cuda), or NULL
  FILE *stats_out;         // register/spill report per kernel, or NULL
  const char *cache_dir;   // the kernel cache (kiln_cuda_cache_dir), or NULL: none
  int64_t cache_limit;     // its size limit, bytes
  FILE *time_out;          // NVRTC's time (--time-passes), or NULL
  KilnCudaMatmul matmul;   // matmul nodes' arithmetic (--gpu-matmul; zero: f32)
} KilnCudaOpts;

// Builds everything kiln_cpu_module builds, for the GPU, into c->mod. 0, or -1 with
// the message in err (a compile error names the kernel source line and its node;
// KILN_CUDA_MATMUL_BF16 with an architecture below sm_80 is refused).
int kiln_cuda_module(KilnCg *c, const KilnGraph *g, const KilnPlan *p, const KilnModuleOpts *o,
                     const KilnCudaOpts *co, char *err, size_t errlen);

#endif
