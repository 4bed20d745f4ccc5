// The contract between a compiled model and the Kiln runtime. The CPU and CUDA
// backends emit one KilnModelDesc per model as constant data; the runtime (the
// standalone program's main, or the static library's API) reads it and never
// needs to know the model at its own compile time.
//
// Everything here is plain C data. Changing a struct changes KILN_ABI_VERSION.
#ifndef KILN_ABI_H
#define KILN_ABI_H

#include <stdint.h>

#define KILN_ABI_VERSION 6
#define KILN_ABI_MAX_RANK 6

enum { KILN_ABI_F32 = 0, KILN_ABI_I32 = 1 };
enum {
  KILN_ABI_LIVE = 1,    // an input the forward pass reads
  KILN_ABI_STATE = 2,   // decode state (key/value cache, recurrent state): kept between
                        // calls in the arena, zeroed to start a sequence
};

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
  int32_t flags;      // KILN_ABI_LIVE, KILN_ABI_STATE (inputs only)
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
// index: the kernel's entry in the descriptor's kernel table (KilnKernelInfo), so
// the profiler knows which kernel ran.
void kiln_rt_parallel_for(void *rt, KilnKernelFn kernel, char *weights, char *arena, int64_t n,
                          int64_t cost, int32_t index);

// Data-parallel training. The train step calls kiln_rt_grad_ready(rt, k) as soon
// as gradient k (an index into the descriptor's grads) is final: no later kernel
// writes or reads it, so it may be summed over the ranks while the rest of the
// backward pass runs. kiln_rt_grads_done comes after the last of them, before the
// gradient norm. The optimizer update of every parameter goes through
// kiln_rt_update, which may run only this rank's slice of it (a sharded optimizer)
// and then exchange the updated parameters. Without ranks the first two return at
// once and the third is kiln_rt_parallel_for.
void kiln_rt_grad_ready(void *rt, int32_t grad);
void kiln_rt_grads_done(void *rt);
void kiln_rt_update(void *rt, KilnKernelFn kernel, char *weights, char *arena, int64_t n,
                    int64_t cost, int32_t index);

// One parameter's gradient in the arena. The grads table lists them in the order
// of the update kernel's iterations: parameter by parameter, elements end to end.
typedef struct {
  int32_t param;      // index into params
  int32_t pad_;
  int64_t offset;     // bytes from the start of the arena
  int64_t numel;
} KilnGradDesc;

// One kernel as the profiler reports it. The compiler counts its work from the
// shapes: FLOPs by the op table's rules over every node the kernel computes, bytes
// as its inputs read plus its outputs written, each buffer once.
typedef struct {
  const char *name;   // the node whose result it stores ("h.0.fc")
  const char *ops;    // the ops it computes, producers first ("matmul+add+gelu")
  const char *loc;    // where that node is written ("gpt.yaml:19:9"), or ""
  int64_t flops;      // per launch
  int64_t bytes;      // per launch
} KilnKernelInfo;

// The step header: the first KILN_ABI_HEADER_BYTES of the arena. The runtime
// writes it before each step; kernels read it (dropout's seed, the learning rate)
// and the gradient-norm kernel writes the clipping scale into it.
#define KILN_ABI_HEADER_BYTES 64
typedef struct {
  uint64_t seed;        // this step's random seed: mix of the model seed and the step
  int32_t training;     // 1 in training steps (dropout active), else 0
  int32_t step;         // optimizer steps taken before this one (Adam's t - 1)
  float lr;             // this step's learning rate, after the schedule
  float grad_scale;     // written by the norm kernel: min(1, clip / norm), or 1
  float bias1, bias2;   // Adam: 1 - beta1^t, 1 - beta2^t for this step's t
  double grad_norm;     // written by the norm kernel: global L2 norm of the gradients
  float loss;           // written by the train and eval steps
  float pad_[5];
} KilnStepHeader;
_Static_assert(sizeof(KilnStepHeader) == KILN_ABI_HEADER_BYTES, "the header fills its bytes");

enum { KILN_ABI_SGD = 0, KILN_ABI_ADAM = 1, KILN_ABI_ADAMW = 2 };
enum { KILN_ABI_SCHED_CONSTANT = 0, KILN_ABI_SCHED_STEP = 1, KILN_ABI_SCHED_COSINE = 2 };
enum { KILN_ABI_LOSS_NONE = -1, KILN_ABI_LOSS_CE = 0, KILN_ABI_LOSS_MSE = 1, KILN_ABI_LOSS_BCE = 2 };

// Training set-up from the model file: optimizer, schedule, length, data. The
// optimizer's hyper-parameters other than lr are compiled into the update kernels;
// the runtime computes lr per step from the schedule.
typedef struct {
  int32_t optimizer, schedule;
  double lr, momentum, weight_decay, beta1, beta2, eps;
  int32_t nesterov, shuffle;
  int64_t step_every;         // step schedule
  double gamma;
  int64_t warmup;             // cosine schedule
  double min_lr;
  int64_t epochs, steps;      // one of them is non-zero
  double clip_grad_norm;      // 0: off
  double val_split;
  // Data sources, one line each, tab-separated fields:
  //   csv PATH HEADER(0|1) INPUT:BEGIN:END ...     (columns [BEGIN, END))
  //   npy INPUT=PATH ...
  //   text PATH INPUT TARGET        tokens PATH INPUT TARGET
  // NULL when the model file names none. Paths are absolute.
  const char *data_train, *data_eval;
  int32_t loss_kind;          // KILN_ABI_LOSS_*
  int32_t loss_pred_output;   // index into outputs of the loss's logits/pred, or -1
  int32_t loss_target_input;  // index into inputs of its labels/target, or -1
  int32_t pad_;
} KilnTrainDesc;

typedef struct KilnModelDesc KilnModelDesc;
struct KilnModelDesc {
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
  KilnStepFn forward;         // inference: the outputs (header.training = 0)
  // Training; NULL/0 when the model has no loss.
  KilnStepFn train_step;      // forward, loss, backward, clipping, optimizer update
  KilnStepFn eval_step;       // forward with the loss (no update)
  int64_t loss_offset;        // the f32 loss in the arena
  int64_t opt_bytes;          // optimizer state, after the parameters in the weights block
  int32_t nopt, pad_;
  const KilnTensorDesc *opt;  // optimizer state tensors ("adam.m.NAME", "sgd.v.NAME", ...)
  const KilnTrainDesc *train;
  // Generation (language models: an i32 token input [batch, T] and logits
  // [batch, T, vocab]); NULL otherwise. Both share the parameter block's layout.
  // decode: one token at a time (inputs: the token [1, 1] and its position [1, 1],
  //         then the state tensors), its state in its own arena.
  // window: the forward pass for one sequence [1, T], recomputing everything.
  const KilnModelDesc *decode;
  const KilnModelDesc *window;
  int64_t context;            // decode: positions its state holds (the model's T)
  // Profiling: every kernel the step functions launch, indexed as their
  // kiln_rt_parallel_for calls name them.
  int32_t nkernel_info, pad2_;
  const KilnKernelInfo *kernel_info;
  // Training: every gradient the update reads (see kiln_rt_grad_ready).
  int32_t ngrads, pad3_;
  const KilnGradDesc *grads;
  // The CUDA target's kernels and launches (target "cuda"), the program its step
  // functions hand to kiln_rt_cuda_step; NULL for the CPU.
  const struct KilnCudaProgram *cuda;
};

// The CUDA target. Its step functions hand a program to the runtime: the kernels'
// images (cubins per architecture, PTX for newer GPUs) and, per step, the launches
// in order. The runtime (runtime/cuda.c) loads the driver with dlopen, keeps the
// weights block and the arena on the device at the offsets the descriptor gives,
// copies the `up` ranges of the arena to the device before a step and the `down`
// ranges back after it, and replays the launches (as a CUDA graph after the first).
#define KILN_ABI_CUDA_MAX_SLOTS 24
enum { KILN_ABI_CUDA_FORWARD = 0, KILN_ABI_CUDA_EVAL = 1, KILN_ABI_CUDA_TRAIN = 2 };
enum { KILN_ABI_BLOCK_WEIGHTS = 0, KILN_ABI_BLOCK_ARENA = 1 };

typedef struct {
  int32_t block;          // KILN_ABI_BLOCK_*
  int32_t pad_;
  int64_t offset;         // bytes into the block
} KilnCudaSlot;

// One kernel launch. Its only parameter is a KilnArgs (templates/prelude.cuh): the
// weights and arena device bases, then a pointer per slot.
typedef struct {
  int32_t function;       // index into the program's functions
  int32_t info;           // the kernel's entry in the descriptor's kernel_info
  uint32_t grid[3], block[3];
  uint32_t smem;          // dynamic shared memory bytes
  int32_t nslots;
  const KilnCudaSlot *slots;
} KilnCudaLaunch;

typedef struct {
  int64_t offset, bytes;  // of the arena
} KilnCudaRange;

// Data-parallel training on GPUs: where the train step hands its gradients to the
// ranks (the device side of kiln_rt_grad_ready and kiln_rt_grads_done). A point
// sits before launches[after]; grad k's buffer is final there (an index into the
// descriptor's grads), or grad is -1: every gradient must be summed before the
// launches from here on (the gradient norm, then the update).
typedef struct {
  int32_t after;
  int32_t grad;
} KilnCudaSync;

typedef struct {
  int32_t nlaunches, nup, ndown, training;
  const KilnCudaLaunch *launches;
  const KilnCudaRange *up;    // the host writes these before the step: header, inputs
  const KilnCudaRange *down;  // the host reads these after it: header, outputs
  int64_t loss_offset;        // the step's f32 loss in the arena (copied into the
                              // host's header.loss), or -1
  int32_t nsyncs, pad_;       // the train step's KilnCudaSync points, in order of after
  const KilnCudaSync *syncs;
} KilnCudaStep;

typedef struct {
  int32_t arch;           // 80: a cubin for sm_80; -90: PTX for compute_90 (JIT-compiled)
  int32_t pad_;
  const unsigned char *data;
  int64_t size;
} KilnCudaImage;

typedef struct KilnCudaProgram {
  int32_t nimages, nfunctions;
  const KilnCudaImage *images;
  const char *const *functions;   // the __global__ names in every image
  KilnCudaStep steps[3];          // KILN_ABI_CUDA_FORWARD, _EVAL, _TRAIN (empty: none)
} KilnCudaProgram;

// Called by the CUDA target's step functions; rt is the runtime's context.
void kiln_rt_cuda_step(void *rt, const KilnCudaProgram *program, int32_t step);

#endif
