// Kiln runtime: what compiled models link against. Small C, no LLVM; libc, libm,
// pthreads, jansson (safetensors headers) and CBLAS only.
//
// Sections follow the files of runtime/: status.c, safetensors.c, npy.c, csv.c,
// rng.c, pool.c, clock.c, context.c, cuda.c, profile.c, peak.c, data.c, generate.c,
// checkpoint.c, train.c, eval.c, lib.c, cli.c.
#ifndef KILN_RUNTIME_H
#define KILN_RUNTIME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#include "include/kiln/abi.h"

//
// status.c: errors as values. A failing call fills a KilnStatus with a message
// naming the file, the offset or line, and what was expected; only main prints.
//
typedef struct {
  int code;            // 0: ok
  char msg[512];
} KilnStatus;

int kiln_rt_fail(KilnStatus *st, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#define KILN_TRY(expr)            \
  do {                            \
    int rc_ = (expr);             \
    if (rc_ != 0) return rc_;     \
  } while (0)

// Writes a file atomically: data to PATH.tmp.PID, fsync, rename over PATH, fsync
// the folder. On failure PATH is untouched and the temporary file removed.
int kiln_rt_write_atomic(const char *path, const void *const *parts, const size_t *lens,
                         int nparts, KilnStatus *st);

// Reads exactly len bytes at offset off, retrying short reads and EINTR; -1 on
// failure, with errno 0 at an early end of file (kiln_rt_read_error words both).
int kiln_rt_read_at(int fd, void *buf, size_t len, off_t off);
const char *kiln_rt_read_error(void);

//
// safetensors.c: the safetensors format (8-byte little-endian header length, a
// JSON header, raw little-endian data), read strictly: every tensor's dtype, shape
// and byte range is checked against the header, the file size and the model.
//
typedef struct {
  char name[256];
  int32_t dtype;                     // KILN_ABI_F32 / KILN_ABI_I32
  int32_t rank;
  int64_t shape[KILN_ABI_MAX_RANK];
  int64_t begin, end;                // byte range within the data section
} KilnStEntry;

typedef struct {
  KilnStEntry *entries;
  int n;
  char *metadata_json;               // the "__metadata__" object as JSON text, or NULL
  unsigned char *data;               // the data section
  int64_t data_len;
} KilnStFile;

int kiln_st_read(const char *path, KilnStFile *out, KilnStatus *st);
void kiln_st_free(KilnStFile *f);
const KilnStEntry *kiln_st_find(const KilnStFile *f, const char *name);
// Writes tensors (descs[i] names, dtypes and shapes data[i]) atomically, with
// optional string metadata pairs (keys[i] -> vals[i]).
int kiln_st_write(const char *path, const KilnTensorDesc *descs, const void *const *data, int n,
                  const char *const *keys, const char *const *vals, int nmeta, KilnStatus *st);

//
// npy.c: NumPy .npy files, versions 1-3, little-endian f4/i4 (and f8/i8 read and
// converted when exact), C order. Header and sizes are validated before reading.
//
typedef struct {
  int32_t dtype;                     // after conversion: KILN_ABI_F32 or KILN_ABI_I32
  int32_t rank;
  int64_t shape[KILN_ABI_MAX_RANK];
  void *data;                        // malloc'd, rank-major C order
  int64_t count;
} KilnArray;

int kiln_npy_read(const char *path, KilnArray *out, KilnStatus *st);
int kiln_npy_write(const char *path, int32_t dtype, const int64_t *shape, int rank,
                   const void *data, KilnStatus *st);
void kiln_array_free(KilnArray *a);

//
// csv.c: numeric CSV, comma-separated, optional header line, every row the same
// width. An error names the file, line and column.
//
typedef struct {
  float *v;                          // rows * cols, row-major
  int64_t rows, cols;
} KilnCsv;

int kiln_csv_read(const char *path, bool header, KilnCsv *out, KilnStatus *st);
void kiln_csv_free(KilnCsv *c);
// Writes rows x cols floats with %.9g (round-trips f32) to f.
void kiln_csv_write(FILE *f, const float *v, int64_t rows, int64_t cols);

//
// rng.c: a counter-based generator (SplitMix64 / Philox-like streams) so every
// parameter's initial values depend only on the seed and the parameter's name.
//
typedef struct {
  uint64_t state;
} KilnRng;

void kiln_rng_seed(KilnRng *r, uint64_t seed, const char *stream);
uint64_t kiln_rng_next(KilnRng *r);
double kiln_rng_uniform(KilnRng *r);   // [0, 1)
double kiln_rng_normal(KilnRng *r);    // mean 0, std 1
// Fills a parameter per its descriptor's initializer.
void kiln_rng_init_param(const KilnTensorDesc *d, uint64_t seed, float *out);

//
// pool.c: a fixed pool of worker threads; the calling thread works too.
//
typedef struct KilnPool KilnPool;

KilnPool *kiln_pool_create(int threads);   // threads <= 1: no workers
void kiln_pool_destroy(KilnPool *p);
int kiln_pool_threads(const KilnPool *p);
// Runs fn(ctx, lo, hi) over [0, n) split into contiguous chunks, one per thread,
// and returns when all are done.
void kiln_pool_run(KilnPool *p, void (*fn)(void *ctx, int64_t lo, int64_t hi), void *ctx,
                   int64_t n);

//
// clock.c: monotonic time and medians.
//
double kiln_now(void);                     // seconds, CLOCK_MONOTONIC
double kiln_median(double *v, int n);      // sorts v

//
// context.c: one compiled model, ready to run: its weights block (parameters, then
// optimizer state) and planned arena (allocated once, 64-byte aligned), a thread
// pool, the training position, and the last error. A model built for CUDA keeps
// both blocks on the GPU too (cuda.c); the host copies are what the runtime reads
// and writes outside a step, and kiln_ctx_weights_changed / _sync keep the two
// sides in step.
//
typedef struct KilnCtx {
  const KilnModelDesc *d;
  char *weights;          // d->weights_bytes of parameters, then d->opt_bytes of state
  char *arena;            // d->arena_bytes; the step header at 0 when `header`
  KilnPool *pool;
  bool header;            // the plan reserves the step header (nothing else in [0, 64))
  // Training (train.c): what the next step needs.
  int64_t step;           // optimizer steps taken
  uint64_t seed;          // step seeds (dropout) and data order; default d->seed
  double lr;              // the schedule's base rate; default d->train->lr
  int64_t total_steps;    // the schedule's length; 0: unknown (cosine holds lr)
  KilnStatus st;          // last error, for the library API
  struct KilnProfile *prof;  // profile.c: kernel timings while profiling, else NULL
  struct KilnCtx *owner;  // a view (kiln_ctx_create_view): whose weights and pool these are
  struct KilnGen *gen;    // the library's generator, made at its first use
  struct KilnVocab *vocab;  // the library: the vocabulary of the weights loaded last
  struct KilnDist *dist;  // dist.c: the ranks this context trains with, or NULL
  struct KilnCuda *cuda;  // cuda.c: the device side of a model built for CUDA, else NULL
  KilnStatus fault;       // a step failed (code != 0, the message why): later steps do
                          // nothing, and kiln_ctx_check reports it to the caller
} KilnCtx;

// threads <= 0: all online CPUs (a CUDA model's context has no worker threads).
// Parameters are initialized from the model's seed. A CUDA model's context opens
// the GPU here, so a machine without one fails before any work.
KilnCtx *kiln_ctx_create(const KilnModelDesc *d, int threads, KilnStatus *st);
void kiln_ctx_destroy(KilnCtx *c);
// A context for d (a sub-model of owner's: decode, window) that uses owner's
// weights and threads and has an arena of its own. Destroy it before owner.
KilnCtx *kiln_ctx_create_view(const KilnModelDesc *d, KilnCtx *owner, KilnStatus *st);
// Initializes every parameter from seed and zeroes the optimizer state.
void kiln_ctx_init_params(KilnCtx *c, uint64_t seed);
// Checks a safetensors file against the model: every parameter (and, with opt,
// every optimizer state tensor) present with its dtype and shape; tensors that are
// neither are listed as unexpected. All mismatches go into one message.
int kiln_ctx_check_file(const KilnModelDesc *d, const KilnStFile *f, const char *path, bool opt,
                        KilnStatus *st);
// Loads every parameter from a safetensors file: names, dtypes and shapes must
// match the model exactly; missing and unexpected tensors are listed. Optimizer
// state in the file (a checkpoint) is allowed and ignored.
int kiln_ctx_load(KilnCtx *c, const char *path, KilnStatus *st);
int kiln_ctx_save(KilnCtx *c, const char *path, KilnStatus *st);
// Pointer to input or output i inside the arena.
void *kiln_ctx_input(KilnCtx *c, int i);
const void *kiln_ctx_output(const KilnCtx *c, int i);
// Checks i32 inputs against their index bounds (token ids, labels); all: every
// input (a training step reads them all), else only those the forward pass reads.
int kiln_ctx_check_inputs(KilnCtx *c, KilnStatus *st);
int kiln_ctx_check_all_inputs(KilnCtx *c, KilnStatus *st);
// Runs the forward pass (header.training = 0) on the inputs in the arena.
void kiln_ctx_forward(KilnCtx *c);
// Steps return nothing; one that failed (a CUDA error) leaves c->fault set. 0, or
// -1 with the failure copied into st. Every caller of a step checks it.
int kiln_ctx_check(const KilnCtx *c, KilnStatus *st);
// The host wrote the whole weights block (parameters and optimizer state: init,
// load, resume): a CUDA context uploads it before its next step. A writer of only
// part of the block calls kiln_ctx_weights_sync first.
void kiln_ctx_weights_changed(KilnCtx *c);
// The host is about to read (or partly rewrite) the weights block: a CUDA context
// whose train steps changed it on the device copies it back. CPU contexts: 0.
int kiln_ctx_weights_sync(KilnCtx *c, KilnStatus *st);
// Zeroes the decode state inputs (KILN_ABI_STATE), on the device too: the start of
// a sequence. A failure goes into c->fault like a step's.
void kiln_ctx_state_reset(KilnCtx *c);
// kiln_rt_parallel_for over iterations [lo, hi) of kernel.
void kiln_rt_launch(KilnCtx *c, KilnKernelFn kernel, char *weights, char *arena, int64_t lo,
                    int64_t hi, int64_t cost, int32_t index);

//
// cuda.c: the device side of a context of a model built with --target=cuda (the
// driver loaded with dlopen; see the file's head for the entry points it uses).
// The step functions of such a model call kiln_rt_cuda_step (include/kiln/abi.h).
//
typedef struct KilnCuda KilnCuda;

bool kiln_cuda_target(const KilnModelDesc *d);   // d->target is "cuda"
// Opens the GPU for c (a view, c->owner set, shares its owner's device weights):
// the driver, the device, the blocks, the stream, and the model's kernels.
int kiln_cuda_open(KilnCtx *c, KilnStatus *st);
void kiln_cuda_close(KilnCtx *c);
void kiln_cuda_weights_changed(KilnCtx *c);
int kiln_cuda_weights_sync(KilnCtx *c, KilnStatus *st);
int kiln_cuda_zero(KilnCtx *c, int64_t offset, int64_t bytes, KilnStatus *st);  // arena bytes
const char *kiln_cuda_device(const KilnCtx *c);  // "CUDA device 0 (NAME, compute ...)", or NULL
// The image of a program to load on a GPU of compute capability major.minor: the
// index, or -1 with the reason (what the program holds, what the GPU is) in err.
int kiln_cuda_pick_image(const KilnCudaImage *images, int n, int major, int minor, char *err,
                         size_t errlen);
// Data-parallel training: the device each rank opens is its place among the ranks
// on its machine (unless KILN_CUDA_DEVICE says), set before any context opens.
void kiln_cuda_rank_device(int local_rank);
// Ties c's train step to the ranks of d: its gradients are averaged by NCCL on a
// stream of their own as the backward pass finishes each one (the step's
// KilnCudaSync points).
int kiln_cuda_dist(KilnCtx *c, struct KilnDist *d, KilnStatus *st);

//
// nccl.c: NCCL, loaded with dlopen when a CUDA program trains on several ranks.
//
typedef struct KilnNccl KilnNccl;
// The communicator of d's ranks on device (for messages), bootstrapped over d's
// ops; the device's context must be current.
int kiln_nccl_open(struct KilnDist *d, const char *device, KilnNccl **out, KilnStatus *st);
// Enqueues on stream the in-place average over the ranks of count floats at buf.
int kiln_nccl_avg(KilnNccl *n, uint64_t buf, int64_t count, void *stream, KilnStatus *st);
// An error the communicator met since (a peer gone, a network failure).
int kiln_nccl_check(KilnNccl *n, KilnStatus *st);
// abort: without waiting for the peers (after an error).
void kiln_nccl_close(KilnNccl *n, bool abort);

//
// dist.c: data-parallel training. Every rank runs the same program on its share
// of each batch; the gradients are summed over the ranks as the backward pass
// finishes them (kiln_rt_grad_ready) and averaged before the update, so every
// rank takes the same step. A KilnCommOps moves the bytes: mpi.c's, linked into
// programs built with `kiln build --mpi`, else none and one rank. Collectives
// wait at most timeout seconds; a peer that died or hangs is an error then.
//
typedef struct {
  const char *name;   // "MPI"
  // Joins the job when the process was started by an MPI launcher (*size 1 and
  // nothing joined otherwise). local: ranks on this machine; local_rank: this
  // one's place among them.
  int (*init)(int *rank, int *size, int *local, int *local_rank, KilnStatus *st);
  void (*finalize)(void);
  void (*abort)(int code) __attribute__((noreturn));
  // Starts an in-place sum over the ranks of n floats.
  int (*isum_f32)(float *buf, int64_t n, KilnStatus *st);
  void (*poll)(void);  // lets started sums progress
  int (*wait)(double timeout, KilnStatus *st);  // every started sum
  // Blocking, in place: the sum (max: the maximum) of n doubles over the ranks.
  int (*reduce_f64)(double *v, int n, bool max, double timeout, KilnStatus *st);
  // Blocking: rank 0's bytes to every rank.
  int (*bcast)(void *buf, int bytes, double timeout, KilnStatus *st);
  // In place: rank r's run of floats [displ[r], displ[r] + count[r]) of base to
  // every rank (all) or to rank 0.
  int (*gather_f32)(float *base, const int64_t *count, const int64_t *displ, bool all,
                    double timeout, KilnStatus *st);
} KilnCommOps;

// mpi.c's ops in a program linked with it; NULL otherwise. The program's main
// calls it, so that the linker takes mpi.c's from libkiln_mpi.a when it is given.
const KilnCommOps *kiln_comm_mpi(void);

typedef struct KilnDist {
  const KilnCommOps *ops;
  int rank, size, local, local_rank;
  double timeout;           // seconds a collective may wait
  bool shard;               // each rank updates (and keeps the state of) its own parameters
  // Attached to a context (kiln_dist_attach):
  KilnCtx *c;
  int32_t *first;           // per gradient: the first one with its bytes (summed once)
  int64_t ulo, uhi;         // sharded: this rank's iterations of the update
  int64_t *wcount, *wdispl; // sharded, per rank: parameter floats from the weights block
  int64_t *ocount, *odispl; // sharded, per rank: optimizer-state floats from the weights block
  double comm_s;            // time spent waiting for gradients (grads_done), summed
} KilnDist;

// Joins the job an MPI launcher started the process in, through ops (NULL: none),
// if any: *out is NULL for one rank. A launch by mpirun without ops is an error.
int kiln_dist_init(const KilnCommOps *ops, KilnDist **out, KilnStatus *st);
// How many processes an MPI launcher started this one among (1 when it does not
// say); 0: no launcher started it.
long kiln_dist_launched(void);
void kiln_dist_finish(KilnDist *d);
// Prints st's error as this rank's (who: the program) and ends every rank.
void kiln_dist_die(KilnDist *d, const char *who, const KilnStatus *st) __attribute__((noreturn));
// Ties d to c (gradients, shards) and, sharded, drops the optimizer state of the
// other ranks' parameters.
int kiln_dist_attach(KilnDist *d, KilnCtx *c, KilnStatus *st);
// Sharded: the full optimizer state on rank 0 (before a checkpoint), and back to
// this rank's share after.
int kiln_dist_gather_state(KilnDist *d, KilnStatus *st);
void kiln_dist_drop_state(KilnDist *d);
// The same step everywhere: the loss averaged over the ranks, stop set when any
// rank was interrupted.
int kiln_dist_agree(KilnDist *d, float *loss, bool *stop, KilnStatus *st);
// Sums n doubles over the ranks, in place.
int kiln_dist_sum(KilnDist *d, double *v, int n, KilnStatus *st);
// Every rank's weights (and unsharded optimizer state) the same bits: refused if not.
int kiln_dist_check_same(KilnDist *d, KilnStatus *st);

//
// profile.c: kernel timings. While a context profiles, every kernel launch is timed
// (CLOCK_MONOTONIC around the launch: the wall time of the kernel on all its
// threads) and added to its kernel's totals; with a trace, each launch, each
// worker's chunk and each step is also kept as an event in a buffer allocated at
// begin, so a step still allocates nothing. At end the table goes to o.table,
// optionally as CSV, and the trace as Chrome trace event JSON. Off, the cost is
// one branch per launch.
//
typedef struct {
  FILE *table;            // the table (stderr), or NULL
  const char *csv;        // the table as CSV, or NULL
  const char *trace;      // Chrome trace event JSON, or NULL
  int64_t max_events;     // trace events kept (0: 1 << 20); later ones are counted, dropped
  double peak_gflops;     // > 0: one core's FMA peak, GFLOP/s, instead of the measured one
  double peak_gbs;        // > 0: memory bandwidth, GB/s, instead of the measured one
  bool no_peak;           // neither measure nor read the peaks: no roofline columns
} KilnProfileOpts;

typedef struct KilnProfile KilnProfile;

// Starts profiling c (restarting if it was). The peaks come from the options, the
// cache or a measurement (peak.c), announced on o->table when measured.
int kiln_rt_profile_begin(KilnCtx *c, const KilnProfileOpts *o, KilnStatus *st);
// Stops, writes the table and the files the options name, and frees the profile.
// Without a profile running, does nothing.
int kiln_rt_profile_end(KilnCtx *c, KilnStatus *st);
// Runs one step function of c's model; while profiling, the step is timed and
// kept (kind: "forward", "train_step", ...; a static string).
void kiln_rt_run_step(KilnCtx *c, KilnStepFn fn, const char *kind);
// One timed kernel launch of kiln_rt_launch: over the pool when parallel.
void kiln_prof_launch(KilnCtx *c, KilnKernelFn kernel, char *w, char *a, int64_t lo, int64_t hi,
                      bool parallel, int32_t index);
// A kernel timed elsewhere (cuda.c: by device events): on `threads` threads from t0
// to t1, CLOCK_MONOTONIC nanoseconds.
void kiln_prof_kernel(KilnCtx *c, int32_t index, int threads, int64_t t0, int64_t t1);

//
// peak.c: what this machine can do, for the roofline. One core's f32 FMA
// throughput (an AVX-512, AVX2 or scalar loop of independent FMAs, whichever the
// CPU has) and streaming bandwidth (a triad a = b + s c over arrays far larger
// than the caches), with one thread and with every CPU. Measured once and cached
// as JSON in $XDG_CACHE_HOME/kiln/peak.json (else ~/.cache/kiln/peak.json).
//
typedef struct {
  double gflops_core;     // one core's FMA peak, GFLOP/s
  double gbs_core;        // one thread streaming, GB/s
  double gbs;             // every CPU streaming, GB/s
  int cpus;               // the CPUs the last figure used
  char isa[16];           // the FMA loop's instructions: "avx512", "avx2", "scalar"
  char cpu[128];          // the CPU's model name, to tell a cache of another machine
} KilnPeak;

int kiln_peak_measure(KilnPeak *out, KilnStatus *st);
// The cache file's path into buf; -1 when neither XDG_CACHE_HOME nor HOME is set.
int kiln_peak_cache_path(char *buf, size_t len);
// The cached peaks when the cache holds this CPU's, else measured and cached (the
// measurement announced on note, if not NULL). A cache that cannot be written
// is not an error: the peaks are still measured.
int kiln_peak_get(KilnPeak *out, FILE *note, KilnStatus *st);
int kiln_peak_write(const char *path, const KilnPeak *p, KilnStatus *st);
void kiln_peak_print(const KilnPeak *p, FILE *f);

//
// data.c: training and evaluation data. A source is one line of KilnTrainDesc's
// format (csv, npy, text, tokens); it is read whole, checked (ragged rows, NaN and
// infinities, non-integers for i32 inputs, ids outside an input's bound: each error
// names the file and line or offset) and served as samples: rows of CSV and .npy,
// windows of text and tokens. Every input of the model must be fed.
//
typedef struct KilnVocab {
  int n;                    // symbols
  unsigned char sym[256];   // id -> byte, ascending
  int16_t id[256];          // byte -> id; -1: not in the vocabulary
} KilnVocab;

enum { KILN_DATA_CSV, KILN_DATA_NPY, KILN_DATA_TEXT, KILN_DATA_TOKENS };

typedef struct {
  const KilnModelDesc *d;
  int kind;                 // KILN_DATA_*
  char *what;               // the file (or first file) read, for messages
  int64_t n;                // samples
  // csv, npy: per model input, n x per[i] values of the input's dtype; NULL: not fed
  void **col;
  int64_t *per;             // values per sample of each input (its shape without batch)
  // text, tokens: sample k is ids[k*window, k*window + window) for `in` and the
  // same window one id later for `target`
  int32_t *ids;             // nids
  int64_t nids, window;
  int in, target;
  KilnVocab vocab;          // text: byte <-> id
} KilnData;

// Reads a source. vocab (text only): the vocabulary to map the text with, every
// byte of the text must be in it; NULL: the sorted set of the text's bytes.
int kiln_data_open(const KilnModelDesc *d, const char *source, const KilnVocab *vocab,
                   KilnData *out, KilnStatus *st);
void kiln_data_free(KilnData *dt);
// The source to read (malloc'd; NULL with st clear when there is none): the
// model's line with its file replaced by args (--data): FILE for csv, text and
// tokens; INPUT=FILE for npy. Without a model line the kind follows the file name:
// .csv (inputs in declaration order on consecutive columns), INPUT=FILE.npy, .txt
// (text), .bin (tokens; both feed the loss's target and the other input).
char *kiln_data_source(const KilnModelDesc *d, const char *line, const char *const *args,
                       int nargs, KilnStatus *st);
// Writes samples idx[0, n) into every input the data feeds, rows n..batch zeroed
// (0 is a valid id and label for every bound).
void kiln_data_fill(const KilnData *dt, KilnCtx *c, const int64_t *idx, int64_t n);
// Holds out round(frac * n) of samples [0, n) for validation, chosen with the
// stream (seed, "data.val_split"); both lists ascending, malloc'd.
int kiln_data_split(int64_t n, double frac, uint64_t seed, int64_t **out_train,
                    int64_t *out_ntrain, int64_t **out_val, int64_t *out_nval, KilnStatus *st);
// The shuffling stream of an epoch: (seed, "data.shuffle.EPOCH"); its state is what
// a checkpoint keeps as the data RNG.
uint64_t kiln_data_epoch_rng(uint64_t seed, int64_t epoch);
// Fisher-Yates over idx with the generator state rng.
void kiln_data_shuffle(int64_t *idx, int64_t n, uint64_t rng);
// The vocabulary as printable text: its bytes in order, '\\' doubled and bytes
// outside printable ASCII as \xHH. out holds at least 4 * 256 + 1 bytes.
void kiln_vocab_escape(const KilnVocab *v, char *out);
int kiln_vocab_parse(const char *s, KilnVocab *out);   // -1: not an escaped vocabulary
void kiln_vocab_from_bytes(const unsigned char *present, KilnVocab *out);  // present[256]

//
// generate.c: text from a language model (d->decode, d->window), token by token.
//
typedef struct {
  double temperature;     // 0: greedy, the most likely token every time
  int top_k;              // sample among the k most likely; 0: among all
  uint64_t seed;          // the sampling stream
} KilnSampling;

typedef struct KilnGen KilnGen;

// Generation with c's weights and threads: the decode model (one step per token,
// its state kept), or with window the window model (the context recomputed).
KilnGen *kiln_gen_create(KilnCtx *c, bool window, KilnStatus *st);
void kiln_gen_destroy(KilnGen *g);
KilnCtx *kiln_gen_ctx(KilnGen *g);  // the sub-model's context (to profile it)
// Reads the prompt, then makes count tokens, handing each to emit as it comes.
int kiln_gen_run(KilnGen *g, const int32_t *prompt, int64_t nprompt, int64_t count,
                 const KilnSampling *s, void (*emit)(int32_t id, void *user), void *user,
                 KilnStatus *st);
// The vocabulary of the weights file (its metadata) or else of the model's
// training text.
int kiln_gen_vocab(const KilnModelDesc *d, const char *weights, KilnVocab *out, KilnStatus *st);
// text's bytes as ids (ids holds strlen(text)); -1 naming a byte not in v.
int kiln_gen_encode(const KilnVocab *v, const char *text, int32_t *ids, KilnStatus *st);

//
// checkpoint.c: a checkpoint is one safetensors file: the parameters under their
// own names (so it also loads as weights), the optimizer state under the names of
// d->opt, and string metadata for the rest of the training state.
//
typedef struct {
  int64_t step, epoch, pos;   // steps taken; epoch (from 0) and batch within it
  uint64_t seed;              // the run's seed (data order, step seeds)
  uint64_t data_rng;          // the current epoch's shuffling stream
  int64_t samples;            // training samples per epoch, to refuse other data
  int64_t ranks;              // data-parallel ranks (a position counts their batches)
  int64_t total_steps;        // the schedule's length
  double lr;                  // the schedule's base rate
  bool has_vocab;
  KilnVocab vocab;            // text models: the training vocabulary
} KilnCkptState;

// Writes c's parameters and optimizer state with s atomically. Refuses (and keeps
// the old file) if any value is NaN or infinite.
int kiln_ckpt_save(KilnCtx *c, const char *path, const KilnCkptState *s, KilnStatus *st);
// Loads a checkpoint of this model into c (weights, state, c->step/seed/lr/
// total_steps) and s; a weights file without optimizer state is refused.
int kiln_ckpt_load(KilnCtx *c, const char *path, KilnCkptState *s, KilnStatus *st);
// The vocabulary stored in a weights or checkpoint file, if any (*found).
int kiln_ckpt_vocab(const char *path, KilnVocab *out, bool *found, KilnStatus *st);
// Takes PATH.lock with flock so that one trainer at a time writes PATH; refused
// when another holds it. Holding it, removes temporary files a killed writer left
// (PATH.tmp.PID). The lock file is removed on unlock.
int kiln_ckpt_lock(const char *path, int *out_fd, KilnStatus *st);
void kiln_ckpt_unlock(const char *path, int fd);

//
// train.c: the learning-rate schedule, one training step, and the loop of
// `NAME train`.
//
// The rate for step (from 0) of total: constant; step: lr * gamma^floor(step /
// every); cosine: lr * (step + 1) / warmup during warmup, then from lr down to
// min_lr along a half cosine, reached at step total (total 0: lr after warmup).
double kiln_train_lr(const KilnTrainDesc *t, double lr, int64_t step, int64_t total);
// The header seed of a step: output number `step` (from 0) of the stream (seed, "step").
uint64_t kiln_train_step_seed(uint64_t seed, int64_t step);
// Runs one optimizer step on the inputs in the arena: writes the header from c's
// step, seed and schedule, runs train_step, counts the step; returns the loss.
float kiln_ctx_train_step(KilnCtx *c);
// The loss of the inputs in the arena, without an update (header.training = 0).
float kiln_ctx_eval_step(KilnCtx *c);

typedef struct {
  int64_t epochs, steps;        // training length, counted from step 0; 0 and 0: the model's
  double lr;                    // base rate; 0: the model's (or the checkpoint's)
  bool has_seed;
  uint64_t seed;
  const char *save;             // final weights and state, and the checkpoint
  const char *resume;           // checkpoint to continue from
  const char *log;              // CSV, one row per step
  int64_t checkpoint_every;     // steps; 0: only at the end
  int64_t eval_every;           // steps; 0: only at the end
  int64_t stop_after;           // stop (and checkpoint) after this many steps of this run
  int64_t print_every;          // plain progress lines; 0: about 20 per run
  const char *data[16], *eval_data[16];  // --data / --eval-data overrides
  int ndata, neval;
  int threads;
  bool quiet;                   // no progress, only the summary
  bool bar;                     // a progress bar (a terminal), else plain lines
  const KilnProfileOpts *profile;  // profile every step of the run; NULL: off
  KilnDist *dist;               // data-parallel ranks (kiln_dist_init), or NULL
} KilnTrainOpts;

enum { KILN_TRAIN_INTERRUPTED = -2 };

// Trains d per o, writing progress and the summary to out. Returns 0, -1 with st
// filled, or KILN_TRAIN_INTERRUPTED (SIGINT; the checkpoint written).
int kiln_train(const KilnModelDesc *d, const KilnTrainOpts *o, FILE *out, KilnStatus *st);

//
// eval.c: loss and accuracy over a data set: the loss is the mean of the losses of
// every full batch; accuracy (cross-entropy models) counts every row, the last
// batch padded and only its real rows counted.
//
typedef struct {
  double loss;                  // NaN when there is no full batch
  int64_t batches;              // full batches in the loss
  int64_t correct, total;       // predictions; total 0: no accuracy
} KilnEvalResult;

int kiln_eval_data(KilnCtx *c, const KilnData *dt, const int64_t *idx, int64_t n,
                   KilnEvalResult *out, KilnStatus *st);

typedef struct {
  const char *weights;
  const char *data[16];
  int ndata;
  int threads;
} KilnEvalOpts;

int kiln_eval(const KilnModelDesc *d, const KilnEvalOpts *o, FILE *out, KilnStatus *st);

//
// lib.c: the C API of generated libraries; NAME_create and friends forward here
// with their model's descriptor.
//
KilnCtx *kiln_lib_create(const KilnModelDesc *d, int threads);
void kiln_lib_destroy(const KilnModelDesc *d, KilnCtx *c);
int kiln_lib_load(const KilnModelDesc *d, KilnCtx *c, const char *path);
int kiln_lib_save(const KilnModelDesc *d, KilnCtx *c, const char *path);
const char *kiln_lib_last_error(const KilnModelDesc *d, const KilnCtx *c);
// ins: the live inputs in declaration order; outs: every output.
int kiln_lib_forward(KilnCtx *c, const void *const *ins, void *const *outs);
// One optimizer step on a caller's batch. ins: every input (labels too) in
// declaration order. The context counts steps and takes the rate from the model's
// schedule (over train.steps; a model given in epochs has no known end, so a cosine
// schedule holds lr after warmup). A NaN or infinite loss is an error (the update
// happened). A model without a loss is refused.
int kiln_lib_train_step(KilnCtx *c, const void *const *ins, float *out_loss);
// Weights, optimizer state and the step count, in the checkpoint format.
int kiln_lib_save_state(const KilnModelDesc *d, KilnCtx *c, const char *path);
int kiln_lib_load_state(const KilnModelDesc *d, KilnCtx *c, const char *path);
// Profiling (profile.c) between begin and end: the table on standard error at end,
// and the CSV and trace files named at begin (NULL: none).
int kiln_lib_profile_begin(const KilnModelDesc *d, KilnCtx *c, const char *csv, const char *trace);
int kiln_lib_profile_end(const KilnModelDesc *d, KilnCtx *c);

#endif
