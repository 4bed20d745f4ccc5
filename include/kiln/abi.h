// The contract between a compiled model and the Kiln runtime. The CPU and CUDA
// backends emit one KilnModelDesc per model as constant data; the runtime (the
// standalone program's main, or the static library's API) reads it and never
// needs to know the model at its own compile time.
//
// Everything here is plain C data. Changing a struct changes KILN_ABI_VERSION.
#ifndef KILN_ABI_H
#define KILN_ABI_H

#include <stdint.h>

#define KILN_ABI_VERSION 1
#define KILN_ABI_MAX_RANK 6

enum { KILN_ABI_F32 = 0, KILN_ABI_I32 = 1 };
enum { KILN_ABI_LIVE = 1 };

// Initializers, numbered as in the IR (zeros, ones, normal, uniform, xavier, kaiming).
enum {
  KILN_ABI_INIT_ZEROS = 0,
  KILN_ABI_INIT_ONES = 1,
  KILN_ABI_INIT_NORMAL = 2,   // a = std, b = mean
  KILN_ABI_INIT_UNIFORM = 3,  // a = low, b = high
  KILN_ABI_INIT_XAVIER = 4,   // uniform +-sqrt(6 / (fan_in + fan_out))
  KILN_ABI_INIT_KAIMING = 5,  // normal, std sqrt(2 / fan_in)
};

// One tensor: where it lives and what it holds. fan_in is the product of all dims
// but the last, fan_out the last dim (weights are [in, out]).
typedef struct {
  const char *name;
  int32_t dtype;
  int32_t rank;
  int64_t shape[KILN_ABI_MAX_RANK];
  int64_t offset;     // bytes from the start of its block (weights or arena)
  int64_t bytes;
  int32_t init;       // params only
  int32_t flags;      // KILN_ABI_LIVE: an input the forward pass reads
  double init_a, init_b;
  int64_t bound;      // i32 inputs used as indices: every value must be in [0, bound); 0: none
} KilnTensorDesc;

// A step function runs the compiled kernels of one pass over the model.
// weights: the parameter block; arena: the planned activation block (inputs and
// outputs live in it at their descriptors' offsets); rt: the runtime's context,
// passed back to runtime calls (thread pool, profiling).
typedef void (*KilnStepFn)(char *weights, char *arena, void *rt);

// A kernel processes iterations [lo, hi) of its outermost parallel loop.
typedef void (*KilnKernelFn)(char *weights, char *arena, int64_t lo, int64_t hi);

// Provided by the runtime, called by generated step functions: runs kernel over
// [0, n), split across the runtime's threads when n and cost make it worth it.
void kiln_rt_parallel_for(void *rt, KilnKernelFn kernel, char *weights, char *arena, int64_t n,
                          int64_t cost);

typedef struct {
  uint32_t abi_version;       // KILN_ABI_VERSION
  uint32_t flags;
  const char *name;           // model name
  const char *kiln_version;   // the kiln that compiled it
  const char *target;         // "cpu" or "cuda"
  uint64_t seed;              // the model's seed: default parameter initialization
  int64_t batch;              // leading dim of the inputs (rows per forward call)
  int64_t weights_bytes;      // size of the parameter block
  int64_t arena_bytes;        // planned activation block (peak)
  int64_t arena_naive_bytes;  // sum of all intermediates, for `info`
  int64_t flops;              // one forward pass
  int32_t nparams, ninputs, noutputs, nkernels;
  const KilnTensorDesc *params;
  const KilnTensorDesc *inputs;
  const KilnTensorDesc *outputs;
  KilnStepFn forward;
} KilnModelDesc;

#endif
