// The standalone program `kiln build` makes: `NAME train|eval|infer|info|bench`.
// The model is whatever descriptor the generated object links in as kiln_main_model.
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "runtime/runtime.h"

extern const KilnModelDesc kiln_main_model;

static const KilnModelDesc *M = &kiln_main_model;

static void shape_str(const KilnTensorDesc *t, char *buf, size_t len) {
  size_t at = (size_t)snprintf(buf, len, "%s[", t->dtype == KILN_ABI_F32 ? "f32" : "i32");
  for (int i = 0; i < t->rank && at < len; i++)
    at += (size_t)snprintf(buf + at, len - at, "%s%lld", i ? "," : "", (long long)t->shape[i]);
  if (at < len) snprintf(buf + at, len - at, "]");
}

static void usage(FILE *f) {
  fprintf(f,
          "usage: %s <command> [options]\n"
          "\n"
          "Model '%s', compiled by kiln %s for %s.\n"
          "\n"
          "commands:\n"
          "  train   train on the model's data (or --data), saving weights and checkpoints\n"
          "  eval    loss and accuracy on evaluation data\n"
          "  infer   run the model on inputs from CSV or .npy files\n"
          "  info    parameters, FLOPs, inputs, outputs and planned memory\n"
          "  bench   forward latency and throughput (median of runs)\n"
          "  generate  continue a prompt, token by token (language models)\n"
          "  peak    this machine's FMA and memory peaks, for --profile's roofline\n"
          "\n"
          "Run '%s <command> --help' for a command's options.\n",
          M->name, M->name, M->kiln_version, M->target, M->name);
}

static int fail(const KilnStatus *st) {
  fprintf(stderr, "%s: error: %s\n", M->name, st->msg);
  return 1;
}

//
// Profiling options, shared by train, infer and bench (docs/profiling.md).
//
enum { PROFILE = 512, PROFILE_OUT, PROFILE_CSV, PEAK_GFLOPS, PEAK_GBS };
#define PROFILE_OPTIONS                                                                     \
  {"profile", no_argument, NULL, PROFILE}, {"profile-out", required_argument, NULL, PROFILE_OUT}, \
      {"profile-csv", required_argument, NULL, PROFILE_CSV},                                \
      {"peak-gflops", required_argument, NULL, PEAK_GFLOPS},                                \
      {"peak-gbs", required_argument, NULL, PEAK_GBS}
#define PROFILE_HELP                                                                        \
  "  --profile          time every kernel; the table goes to standard error\n"              \
  "  --profile-out FILE also a Chrome trace (Perfetto, chrome://tracing)\n"                 \
  "  --profile-csv FILE also the table as CSV\n"                                            \
  "  --peak-gflops F    one core's FMA peak in GFLOP/s (default: measured, see peak)\n"     \
  "  --peak-gbs F       memory bandwidth in GB/s (default: measured)\n"

typedef struct {
  bool on;
  KilnProfileOpts o;
} Profile;

// 1: opt was a profiling option, taken; 0: it is not one; -1: a bad value.
static int profile_option(Profile *p, int opt, const char *arg) {
  double *peak = opt == PEAK_GFLOPS ? &p->o.peak_gflops : &p->o.peak_gbs;
  char *end;
  switch (opt) {
  case PROFILE: break;
  case PROFILE_OUT: p->o.trace = arg; break;
  case PROFILE_CSV: p->o.csv = arg; break;
  case PEAK_GFLOPS:
  case PEAK_GBS:
    *peak = strtod(arg, &end);
    if (!*arg || *end || !(*peak > 0) || !isfinite(*peak)) {
      fprintf(stderr, "%s: --%s takes a positive number, got '%s'\n", M->name,
              opt == PEAK_GFLOPS ? "peak-gflops" : "peak-gbs", arg);
      return -1;
    }
    return 1;
  default: return 0;
  }
  p->on = true;
  p->o.table = stderr;
  return 1;
}

static int profile_begin(const Profile *p, KilnCtx *c, KilnStatus *st) {
  return p->on ? kiln_rt_profile_begin(c, &p->o, st) : 0;
}

//
// info
//
static void human_bytes(int64_t b, char *buf, size_t len) {
  const char *u[] = {"B", "KiB", "MiB", "GiB"};
  double v = (double)b;
  int i = 0;
  while (v >= 1024 && i < 3) v /= 1024, i++;
  snprintf(buf, len, i ? "%.2f %s" : "%.0f %s", v, u[i]);
}

static int cmd_info(void) {
  int64_t params = 0;
  for (int i = 0; i < M->nparams; i++) params += M->params[i].bytes / 4;
  char a[32], b[32], c[32], s[128];
  printf("model:       %s (kiln %s, target %s)\n", M->name, M->kiln_version, M->target);
  printf("parameters:  %lld in %d tensors (%s)\n", (long long)params, M->nparams,
         (human_bytes(M->weights_bytes, a, sizeof a), a));
  printf("forward:     %.3f MFLOP per call of %lld rows, %d kernels\n", (double)M->flops / 1e6,
         (long long)M->batch, M->nkernels);
  human_bytes(M->arena_bytes, b, sizeof b);
  human_bytes(M->arena_naive_bytes, c, sizeof c);
  printf("memory:      activations %s planned (every intermediate apart: %s), weights %s\n", b,
         c, a);
  for (int i = 0; i < M->ninputs; i++) {
    shape_str(&M->inputs[i], s, sizeof s);
    printf("input:       %-12s %s%s\n", M->inputs[i].name, s,
           M->inputs[i].flags & KILN_ABI_LIVE ? "" : "  (training only)");
  }
  for (int i = 0; i < M->noutputs; i++) {
    shape_str(&M->outputs[i], s, sizeof s);
    printf("output:      %-12s %s\n", M->outputs[i].name, s);
  }
  const KilnTrainDesc *t = M->train;
  if (t && M->train_step) {
    static const char *optim[] = {"sgd", "adam", "adamw"}, *sched[] = {"constant", "step", "cosine"};
    human_bytes(M->opt_bytes, b, sizeof b);
    printf("training:    %s, lr %g, %s schedule, ",
           (unsigned)t->optimizer < 3 ? optim[t->optimizer] : "?", t->lr,
           (unsigned)t->schedule < 3 ? sched[t->schedule] : "?");
    if (t->steps) printf("%lld steps", (long long)t->steps);
    else printf("%lld epochs", (long long)(t->epochs ? t->epochs : 1));
    printf(", optimizer state %s\n", b);
  }
  return 0;
}

//
// Reading inputs: a file per live input, as rows of its per-sample shape.
//
typedef struct {
  int input;          // index into M->inputs
  const char *path;
  float *f;           // rows x per (f32 inputs, or i32 read as floats and checked)
  int64_t rows, per;
} Feed;

static int64_t per_row(const KilnTensorDesc *t) {
  int64_t p = 1;
  for (int d = 1; d < t->rank; d++) p *= t->shape[d];
  return p;
}

static bool ends_with(const char *s, const char *suffix) {
  size_t n = strlen(s), m = strlen(suffix);
  return n >= m && strcmp(s + n - m, suffix) == 0;
}

static int read_feed(Feed *f, KilnStatus *st) {
  const KilnTensorDesc *t = &M->inputs[f->input];
  f->per = per_row(t);
  if (ends_with(f->path, ".npy")) {
    KilnArray a;
    KILN_TRY(kiln_npy_read(f->path, &a, st));
    int64_t rows = a.rank ? a.shape[0] : 1;
    if (a.count != rows * f->per) {
      kiln_array_free(&a);
      return kiln_rt_fail(st, "%s: %lld values per row, input '%s' needs %lld", f->path,
                          (long long)(rows ? a.count / rows : 0), t->name, (long long)f->per);
    }
    f->rows = rows;
    f->f = malloc((size_t)(a.count ? a.count : 1) * sizeof(float));
    for (int64_t i = 0; i < a.count; i++)
      f->f[i] = a.dtype == KILN_ABI_F32 ? ((float *)a.data)[i] : (float)((int32_t *)a.data)[i];
    kiln_array_free(&a);
    return 0;
  }
  KilnCsv c;
  KILN_TRY(kiln_csv_read(f->path, false, &c, st));
  if (c.cols != f->per) {
    kiln_csv_free(&c);
    return kiln_rt_fail(st, "%s: rows have %lld columns, input '%s' %s needs %lld", f->path,
                        (long long)c.cols, t->name, "per sample", (long long)f->per);
  }
  f->rows = c.rows;
  f->f = c.v;
  return 0;
}

// Copies rows [r0, r0 + n) of a feed into its input, padding to the batch with
// zeros (index 0 is valid for every bound).
static int fill_input(KilnCtx *c, const Feed *f, int64_t r0, int64_t n, KilnStatus *st) {
  const KilnTensorDesc *t = &M->inputs[f->input];
  void *dst = kiln_ctx_input(c, f->input);
  memset(dst, 0, (size_t)t->bytes);
  for (int64_t i = 0; i < n * f->per; i++) {
    float v = f->f[r0 * f->per + i];
    if (t->dtype == KILN_ABI_F32) {
      ((float *)dst)[i] = v;
    } else {
      if (v != floorf(v) || fabsf(v) > 2147483520.0f)
        return kiln_rt_fail(st, "%s: row %lld: input '%s' takes integers, got %g", f->path,
                            (long long)(r0 + i / f->per + 1), t->name, (double)v);
      ((int32_t *)dst)[i] = (int32_t)v;
    }
  }
  return 0;
}

static int find_input(const char *name) {
  for (int i = 0; i < M->ninputs; i++)
    if (strcmp(M->inputs[i].name, name) == 0) return i;
  return -1;
}

// --input FILE (the only live input) or --input NAME=FILE.
static int add_feed(Feed *feeds, int *n, const char *arg, KilnStatus *st) {
  const char *eq = strchr(arg, '=');
  int idx = -1;
  if (eq) {
    char name[256];
    snprintf(name, sizeof name, "%.*s", (int)(eq - arg), arg);
    idx = find_input(name);
    if (idx < 0) return kiln_rt_fail(st, "--input %s: the model has no input '%s'", arg, name);
    arg = eq + 1;
  } else {
    for (int i = 0; i < M->ninputs; i++)
      if (M->inputs[i].flags & KILN_ABI_LIVE) {
        if (idx >= 0) return kiln_rt_fail(st, "the model reads several inputs: use --input NAME=FILE");
        idx = i;
      }
  }
  if (*n >= 16) return kiln_rt_fail(st, "too many --input options");
  feeds[(*n)++] = (Feed){.input = idx, .path = arg};
  return 0;
}

static void write_rows(FILE *out, const KilnCtx *c, int64_t rows, bool argmax) {
  for (int64_t r = 0; r < rows; r++) {
    for (int o = 0; o < M->noutputs; o++) {
      const KilnTensorDesc *t = &M->outputs[o];
      int64_t per = per_row(t);
      const float *v = (const float *)kiln_ctx_output(c, o) + r * per;
      if (argmax) {
        int64_t best = 0;
        for (int64_t j = 1; j < per; j++)
          if (v[j] > v[best]) best = j;
        fprintf(out, "%s%lld", o ? "," : "", (long long)best);
        continue;
      }
      for (int64_t j = 0; j < per; j++) fprintf(out, "%s%.9g", o || j ? "," : "", (double)v[j]);
    }
    fputc('\n', out);
  }
}

// Rows [r0, r0 + n) of the single output into all[] (argmax: indices as i32).
static void gather_rows(const KilnCtx *c, int64_t r0, int64_t n, bool argmax, float *all) {
  const KilnTensorDesc *t = &M->outputs[0];
  int64_t per = per_row(t);
  const float *v = kiln_ctx_output(c, 0);
  for (int64_t r = 0; r < n; r++) {
    const float *row = v + r * per;
    if (!argmax) {
      memcpy(all + (r0 + r) * per, row, (size_t)per * sizeof(float));
      continue;
    }
    int32_t best = 0;
    for (int64_t j = 1; j < per; j++)
      if (row[j] > row[best]) best = (int32_t)j;
    memcpy(all + r0 + r, &best, sizeof best);
  }
}

static void infer_usage(FILE *f) {
  fprintf(f,
          "usage: %s infer [--weights FILE] --input [NAME=]FILE [options]\n"
          "\n"
          "Runs the model on every row of the input file(s) (CSV or .npy), %lld rows per\n"
          "call (the last call padded), and writes one line of outputs per row.\n"
          "\n"
          "options:\n"
          "  --weights FILE     safetensors weights (default: initialized from the seed)\n"
          "  --input [NAME=]FILE  input rows; NAME= is needed when the model has several\n"
          "  --output FILE      write there instead of standard output: CSV, or .npy\n"
          "                     (one output, shape [rows, ...]; with --argmax, i32)\n"
          "  --argmax           print the index of the largest output value per row\n"
          "  --threads N        threads (default: all CPUs)\n" PROFILE_HELP,
          M->name, (long long)M->batch);
}

static int cmd_infer(int argc, char **argv) {
  static const struct option opts[] = {{"weights", required_argument, NULL, 'w'},
                                       {"input", required_argument, NULL, 'i'},
                                       {"output", required_argument, NULL, 'o'},
                                       {"argmax", no_argument, NULL, 'a'},
                                       {"threads", required_argument, NULL, 't'},
                                       {"help", no_argument, NULL, 'h'},
                                       PROFILE_OPTIONS,
                                       {0}};
  const char *weights = NULL, *output = NULL;
  Profile prof = {0};
  bool argmax = false;
  int threads = 0, nfeeds = 0, opt;
  Feed feeds[16];
  KilnStatus st = {0};
  while ((opt = getopt_long(argc, argv, "w:i:o:t:h", opts, NULL)) != -1) {
    switch (opt) {
    case 'w': weights = optarg; break;
    case 'i': if (add_feed(feeds, &nfeeds, optarg, &st) != 0) return fail(&st); break;
    case 'o': output = optarg; break;
    case 'a': argmax = true; break;
    case 't': threads = atoi(optarg); break;
    case 'h': infer_usage(stdout); return 0;
    default: {
      int taken = profile_option(&prof, opt, optarg);
      if (taken < 0) return 2;
      if (taken == 0) return infer_usage(stderr), 2;
    }
    }
  }
  if (nfeeds == 0) {
    fprintf(stderr, "%s infer: no --input given\n", M->name);
    infer_usage(stderr);
    return 2;
  }
  for (int i = 0; i < M->ninputs; i++) {
    bool fed = false;
    for (int j = 0; j < nfeeds; j++) fed |= feeds[j].input == i;
    if (!fed && (M->inputs[i].flags & KILN_ABI_LIVE)) {
      fprintf(stderr, "%s infer: no --input for '%s'\n", M->name, M->inputs[i].name);
      return 2;
    }
  }
  int rc = 1;
  float *all = NULL;
  KilnCtx *c = kiln_ctx_create(M, threads, &st);
  FILE *out = stdout;
  if (!c || (weights && kiln_ctx_load(c, weights, &st) != 0)) goto done;
  int64_t rows = -1;
  for (int i = 0; i < nfeeds; i++) {
    if (read_feed(&feeds[i], &st) != 0) goto done;
    if (rows >= 0 && feeds[i].rows != rows) {
      kiln_rt_fail(&st, "%s has %lld rows, %s has %lld", feeds[0].path, (long long)rows,
                   feeds[i].path, (long long)feeds[i].rows);
      goto done;
    }
    rows = feeds[i].rows;
  }
  bool npy = output && ends_with(output, ".npy");
  if (npy && M->noutputs != 1) {
    kiln_rt_fail(&st, "--output %s: the model has %d outputs; .npy holds one (write CSV)", output,
                 M->noutputs);
    goto done;
  }
  if (output && !npy && !(out = fopen(output, "w"))) {
    kiln_rt_fail(&st, "cannot write %s", output);
    goto done;
  }
  // .npy: every row gathered, then written at once (atomically).
  int64_t per = argmax ? 1 : per_row(&M->outputs[0]);
  if (npy && !(all = malloc((size_t)(rows * per > 0 ? rows * per : 1) * sizeof(float)))) {
    kiln_rt_fail(&st, "out of memory for %lld outputs", (long long)(rows * per));
    goto done;
  }
  if (profile_begin(&prof, c, &st) != 0) goto done;
  for (int64_t r0 = 0; r0 < rows; r0 += M->batch) {
    int64_t n = rows - r0 < M->batch ? rows - r0 : M->batch;
    for (int i = 0; i < nfeeds; i++)
      if (fill_input(c, &feeds[i], r0, n, &st) != 0) goto done;
    if (kiln_ctx_check_inputs(c, &st) != 0) goto done;
    kiln_ctx_forward(c);
    if (kiln_ctx_check(c, &st) != 0) goto done;
    if (npy) gather_rows(c, r0, n, argmax, all);
    else write_rows(out, c, n, argmax);
  }
  if (npy) {
    const KilnTensorDesc *t = &M->outputs[0];
    int64_t shape[KILN_ABI_MAX_RANK] = {rows};
    int rank = argmax ? 1 : (t->rank ? t->rank : 1);
    for (int d = 1; !argmax && d < t->rank; d++) shape[d] = t->shape[d];
    if (kiln_npy_write(output, argmax ? KILN_ABI_I32 : KILN_ABI_F32, shape, rank, all, &st) != 0)
      goto done;
  }
  if (c && kiln_rt_profile_end(c, &st) != 0) goto done;
  rc = 0;
done:
  free(all);
  if (out != stdout && out && fclose(out) != 0 && rc == 0) rc = 1, kiln_rt_fail(&st, "cannot write %s", output);
  for (int i = 0; i < nfeeds; i++) free(feeds[i].f);
  kiln_ctx_destroy(c);
  return rc ? fail(&st) : 0;
}

//
// bench
//
static void random_inputs(KilnCtx *c) {
  KilnRng r;
  kiln_rng_seed(&r, 1, "bench");
  for (int i = 0; i < M->ninputs; i++) {
    const KilnTensorDesc *t = &M->inputs[i];
    void *p = kiln_ctx_input(c, i);
    for (int64_t j = 0; j < t->bytes / 4; j++) {
      if (t->dtype == KILN_ABI_F32) ((float *)p)[j] = (float)kiln_rng_normal(&r);
      else ((int32_t *)p)[j] = (int32_t)(kiln_rng_next(&r) % (uint64_t)(t->bound ? t->bound : 2));
    }
  }
}

// One timed call: a forward pass, or a training step on the same random batch
// (the weights move; the time of a step does not depend on them).
static void bench_call(KilnCtx *c, bool train) {
  if (train) kiln_ctx_train_step(c);
  else kiln_ctx_forward(c);
}

static int cmd_bench(int argc, char **argv) {
  static const struct option opts[] = {{"weights", required_argument, NULL, 'w'},
                                       {"runs", required_argument, NULL, 'r'},
                                       {"warmup", required_argument, NULL, 'u'},
                                       {"threads", required_argument, NULL, 't'},
                                       {"train", no_argument, NULL, 'T'},
                                       {"help", no_argument, NULL, 'h'},
                                       PROFILE_OPTIONS,
                                       {0}};
  const char *weights = NULL;
  int runs = 50, warmup = 5, threads = 0, opt;
  Profile prof = {0};
  bool train = false;
  while ((opt = getopt_long(argc, argv, "w:r:t:h", opts, NULL)) != -1) {
    switch (opt) {
    case 'T': train = true; break;
    case 'w': weights = optarg; break;
    case 'r': runs = atoi(optarg); break;
    case 'u': warmup = atoi(optarg); break;
    case 't': threads = atoi(optarg); break;
    case 'h':
      printf("usage: %s bench [--train] [--weights FILE] [--runs N] [--warmup N] [--threads N]\n"
             "                  [--profile] [--profile-out FILE] [--profile-csv FILE]\n"
             "\nTimes the forward pass (or with --train one optimizer step: forward, loss,\n"
             "backward, update) on random inputs: median, min and max of N runs (each of\n"
             "enough calls to last about a millisecond), after warm-up runs. With\n"
             "--profile, the timed runs are profiled.\n\n" PROFILE_HELP,
             M->name);
      return 0;
    default: {
      int taken = profile_option(&prof, opt, optarg);
      if (taken <= 0) return 2;
    }
    }
  }
  if (runs < 1 || warmup < 0) {
    fprintf(stderr, "%s bench: --runs must be >= 1 and --warmup >= 0\n", M->name);
    return 2;
  }
  KilnStatus st = {0};
  KilnCtx *c = kiln_ctx_create(M, threads, &st);
  if (!c) return fail(&st);
  if (weights && kiln_ctx_load(c, weights, &st) != 0) {
    kiln_ctx_destroy(c);
    return fail(&st);
  }
  if (train && !M->train_step) {
    fprintf(stderr, "%s bench: --train: the model has no loss to train\n", M->name);
    kiln_ctx_destroy(c);
    return 2;
  }
  random_inputs(c);
  for (int i = 0; i < warmup; i++) bench_call(c, train);
  // Calls per run: enough that one run lasts ~1 ms, so timer resolution is moot.
  double t0 = kiln_now();
  bench_call(c, train);
  double one = kiln_now() - t0;
  if (kiln_ctx_check(c, &st) != 0) {
    kiln_ctx_destroy(c);
    return fail(&st);
  }
  int reps = one > 1e-3 ? 1 : (int)(1e-3 / (one > 1e-8 ? one : 1e-8)) + 1;
  double *t = malloc((size_t)runs * sizeof *t);
  if (profile_begin(&prof, c, &st) != 0) {
    free(t);
    kiln_ctx_destroy(c);
    return fail(&st);
  }
  for (int i = 0; i < runs; i++) {
    double s = kiln_now();
    for (int j = 0; j < reps; j++) bench_call(c, train);
    t[i] = (kiln_now() - s) / reps;
  }
  int prc = kiln_rt_profile_end(c, &st);
  if (kiln_ctx_check(c, &st) != 0) {
    free(t);
    kiln_ctx_destroy(c);
    return fail(&st);
  }
  double med = kiln_median(t, runs);
  if (kiln_cuda_device(c))
    printf("model %s, batch %lld, on %s, %d runs x %d calls\n", M->name, (long long)M->batch,
           kiln_cuda_device(c), runs, reps);
  else
    printf("model %s, batch %lld, %d threads, %d runs x %d calls\n", M->name,
           (long long)M->batch, kiln_pool_threads(c->pool), runs, reps);
  printf("%s: median %.3f us, min %.3f us, max %.3f us\n", train ? "train step" : "forward",
         med * 1e6, t[0] * 1e6, t[runs - 1] * 1e6);
  printf("throughput: %.1f samples/s", (double)M->batch / med);
  if (!train) printf(", %.2f GFLOP/s", (double)M->flops / med / 1e9);
  printf("\n");
  free(t);
  kiln_ctx_destroy(c);
  return prc ? fail(&st) : 0;
}

//
// peak
//
static int cmd_peak(int argc, char **argv) {
  bool measure = argc > 1 && !strcmp(argv[1], "--measure");
  if (argc > 2 || (argc == 2 && !measure)) {
    bool help = !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h");
    fprintf(help ? stdout : stderr,
            "usage: %s peak [--measure]\n"
            "\nPrints this machine's peaks, the roofline of --profile: one core's f32 FMA\n"
            "throughput and the memory bandwidth (one thread, every CPU), measured once and\n"
            "cached; --measure measures again and rewrites the cache.\n", M->name);
    return help ? 0 : 2;
  }
  KilnStatus st = {0};
  KilnPeak p;
  char path[4096];
  bool cached = kiln_peak_cache_path(path, sizeof path) == 0;
  if (measure) {
    if (kiln_peak_measure(&p, &st) != 0 || (cached && kiln_peak_write(path, &p, &st) != 0))
      return fail(&st);
  } else if (kiln_peak_get(&p, stderr, &st) != 0) {
    return fail(&st);
  }
  kiln_peak_print(&p, stdout);
  if (cached) printf("cache:      %s\n", path);
  return 0;
}

//
// train and eval
//

// Whole numbers for counts and seeds: all digits, no sign, no overflow.
static bool parse_count(const char *opt, const char *s, int64_t min, int64_t *out) {
  char *end;
  errno = 0;
  long long v = strtoll(s, &end, 10);
  if (!*s || *end || errno || v < min || *s == '+' || *s == ' ') {
    fprintf(stderr, "%s: --%s takes a whole number >= %lld, got '%s'\n", M->name, opt,
            (long long)min, s);
    return false;
  }
  *out = v;
  return true;
}

static bool parse_seed(const char *s, uint64_t *out) {
  char *end;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 10);
  if (!*s || *end || errno || *s == '-' || *s == '+' || *s == ' ') {
    fprintf(stderr, "%s: --seed takes a whole number from 0 to 2^64-1, got '%s'\n", M->name, s);
    return false;
  }
  *out = v;
  return true;
}

static void train_usage(FILE *f) {
  fprintf(f,
          "usage: %s train [options]\n"
          "\n"
          "Trains on the model's training data (or --data), %lld samples per step.\n"
          "See docs/training.md for the data formats and checkpoint guarantees.\n"
          "\n"
          "options:\n"
          "  --epochs N            passes over the training data (default: the model's)\n"
          "  --steps N             optimizer steps instead; both count from step 0, so a\n"
          "                        resumed run stops where the uninterrupted one would\n"
          "  --lr F                base learning rate (overrides the model's; the schedule\n"
          "                        still applies)\n"
          "  --seed N              seed of initialization, data order and dropout\n"
          "  --save FILE           final weights and optimizer state (safetensors); also\n"
          "                        where checkpoints go\n"
          "  --checkpoint-every N  write the checkpoint every N steps\n"
          "  --resume FILE         continue from a checkpoint (saving back to it unless\n"
          "                        --save names another file)\n"
          "  --stop-after N        stop after N steps of this run, writing the checkpoint\n"
          "  --log FILE            CSV, one row per step: step,epoch,loss,lr,grad_norm,\n"
          "                        samples_per_s[,val_loss,val_acc]\n"
          "  --eval-every N        evaluate every N steps (and at the end)\n"
          "  --data FILE           training data instead of the model's (npy: INPUT=FILE,\n"
          "                        repeated per input)\n"
          "  --eval-data FILE      evaluation data instead of the model's or the held-out\n"
          "                        split\n"
          "  --print-every N       progress lines every N steps when not on a terminal\n"
          "  --threads N           threads (default: all CPUs; with ranks, the CPUs over\n"
          "                        the ranks on this machine)\n"
          "  --quiet               only the final summary\n"
          "\ndata-parallel training (a program built with `kiln build --mpi`, started by\n"
          "`mpirun -np N`; docs/distributed.md). Each rank takes %lld rows of every step:\n"
          "  --shard-optimizer     each rank keeps the optimizer state of its own share\n"
          "                        of the parameters and updates only those\n"
          "  --comm-timeout S      seconds to wait for the other ranks before giving up\n"
          "                        (default: 300)\n"
          "\nprofiling (every step, evaluation too):\n" PROFILE_HELP,
          M->name, (long long)M->batch, (long long)M->batch);
}

// Joins the ranks mpirun started (none: one process). Each rank gets the CPUs
// over the ranks on its machine, unless --threads says.
static int train_ranks(KilnTrainOpts *o, bool shard, double timeout, KilnStatus *st) {
  KILN_TRY(kiln_dist_init(kiln_comm_mpi(), &o->dist, st));
  if (!o->dist) return 0;
  o->dist->shard = shard;
  if (timeout > 0) o->dist->timeout = timeout;
  if (!o->threads) {
    long cpus = sysconf(_SC_NPROCESSORS_ONLN) / o->dist->local;
    o->threads = cpus > 1 ? (int)cpus : 1;
  }
  // Rank 0 speaks for the run (and profiles it); the others print only their errors.
  if (o->dist->rank != 0) o->quiet = true, o->bar = false, o->profile = NULL;
  return 0;
}

static int cmd_train(int argc, char **argv) {
  enum { EPOCHS = 256, STEPS, LR, SEED, SAVE, CKPT, RESUME, STOP, LOG, EVAL, DATA, EDATA, PRINT,
         THREADS, QUIET, SHARD, TIMEOUT, HELP };
  static const struct option opts[] = {
      {"epochs", required_argument, NULL, EPOCHS}, {"steps", required_argument, NULL, STEPS},
      {"lr", required_argument, NULL, LR}, {"seed", required_argument, NULL, SEED},
      {"save", required_argument, NULL, SAVE}, {"checkpoint-every", required_argument, NULL, CKPT},
      {"resume", required_argument, NULL, RESUME}, {"stop-after", required_argument, NULL, STOP},
      {"log", required_argument, NULL, LOG}, {"eval-every", required_argument, NULL, EVAL},
      {"data", required_argument, NULL, DATA}, {"eval-data", required_argument, NULL, EDATA},
      {"print-every", required_argument, NULL, PRINT},
      {"threads", required_argument, NULL, THREADS}, {"quiet", no_argument, NULL, QUIET},
      {"shard-optimizer", no_argument, NULL, SHARD}, {"comm-timeout", required_argument, NULL, TIMEOUT},
      {"help", no_argument, NULL, HELP}, PROFILE_OPTIONS, {0}};
  KilnTrainOpts o = {.bar = isatty(STDOUT_FILENO)};
  Profile prof = {0};
  int64_t threads = 0, timeout = 0;
  bool shard = false;
  int opt;
  while ((opt = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
    bool ok = true;
    switch (opt) {
    case EPOCHS: ok = parse_count("epochs", optarg, 1, &o.epochs); break;
    case SHARD: shard = true; break;
    case TIMEOUT: ok = parse_count("comm-timeout", optarg, 1, &timeout); break;
    case STEPS: ok = parse_count("steps", optarg, 1, &o.steps); break;
    case LR: {
      char *end;
      o.lr = strtod(optarg, &end);
      if (!*optarg || *end || !(o.lr > 0) || !isfinite(o.lr)) {
        fprintf(stderr, "%s: --lr takes a positive number, got '%s'\n", M->name, optarg);
        ok = false;
      }
      break;
    }
    case SEED:
      ok = parse_seed(optarg, &o.seed);
      o.has_seed = true;
      break;
    case SAVE: o.save = optarg; break;
    case CKPT: ok = parse_count("checkpoint-every", optarg, 1, &o.checkpoint_every); break;
    case RESUME: o.resume = optarg; break;
    case STOP: ok = parse_count("stop-after", optarg, 1, &o.stop_after); break;
    case LOG: o.log = optarg; break;
    case EVAL: ok = parse_count("eval-every", optarg, 1, &o.eval_every); break;
    case PRINT: ok = parse_count("print-every", optarg, 1, &o.print_every); break;
    case THREADS: ok = parse_count("threads", optarg, 0, &threads); break;
    case QUIET: o.quiet = true; break;
    case DATA:
    case EDATA: {
      int *n = opt == DATA ? &o.ndata : &o.neval;
      if (*n == 16) {
        fprintf(stderr, "%s: too many --%s options\n", M->name, opt == DATA ? "data" : "eval-data");
        return 2;
      }
      (opt == DATA ? o.data : o.eval_data)[(*n)++] = optarg;
      break;
    }
    case HELP: case 'h': train_usage(stdout); return 0;
    default: {
      int taken = profile_option(&prof, opt, optarg);
      if (taken < 0) return 2;
      if (taken == 0) return train_usage(stderr), 2;
    }
    }
    if (!ok) return 2;
  }
  if (optind < argc) {
    fprintf(stderr, "%s train: unexpected argument '%s'\n", M->name, argv[optind]);
    return 2;
  }
  if (o.epochs && o.steps) {
    fprintf(stderr, "%s train: give --epochs or --steps, not both\n", M->name);
    return 2;
  }
  o.threads = (int)(threads > 4096 ? 4096 : threads);
  o.profile = prof.on ? &prof.o : NULL;
  KilnStatus st = {0};
  if (train_ranks(&o, shard, (double)timeout, &st) != 0) return fail(&st);
  int rc = kiln_train(M, &o, stdout, &st);
  if (rc == KILN_TRAIN_INTERRUPTED) {
    if (!o.dist || o.dist->rank == 0) fprintf(stderr, "%s: %s\n", M->name, st.msg);
    kiln_dist_finish(o.dist);
    return 130;
  }
  if (rc && o.dist) kiln_dist_die(o.dist, M->name, &st);
  kiln_dist_finish(o.dist);
  return rc ? fail(&st) : 0;
}

static void eval_usage(FILE *f) {
  fprintf(f,
          "usage: %s eval [--weights FILE] [--data FILE] [--threads N]\n"
          "\n"
          "Prints the loss (the mean over every full batch of %lld) and, for classifiers,\n"
          "the accuracy (over every row). The data is --data, else the model's evaluation\n"
          "data, else the held-out split of its training data.\n"
          "\n"
          "options:\n"
          "  --weights FILE   weights or checkpoint (default: initialized from the seed)\n"
          "  --data FILE      evaluation data (npy: INPUT=FILE, repeated per input)\n"
          "  --threads N      threads (default: all CPUs)\n",
          M->name, (long long)M->batch);
}

static int cmd_eval(int argc, char **argv) {
  static const struct option opts[] = {{"weights", required_argument, NULL, 'w'},
                                       {"data", required_argument, NULL, 'd'},
                                       {"threads", required_argument, NULL, 't'},
                                       {"help", no_argument, NULL, 'h'},
                                       {0}};
  KilnEvalOpts o = {0};
  int64_t threads = 0;
  int opt;
  while ((opt = getopt_long(argc, argv, "w:d:t:h", opts, NULL)) != -1) {
    switch (opt) {
    case 'w': o.weights = optarg; break;
    case 'd':
      if (o.ndata == 16) {
        fprintf(stderr, "%s: too many --data options\n", M->name);
        return 2;
      }
      o.data[o.ndata++] = optarg;
      break;
    case 't': if (!parse_count("threads", optarg, 0, &threads)) return 2; break;
    case 'h': eval_usage(stdout); return 0;
    default: eval_usage(stderr); return 2;
    }
  }
  if (optind < argc) {
    fprintf(stderr, "%s eval: unexpected argument '%s'\n", M->name, argv[optind]);
    return 2;
  }
  o.threads = (int)(threads > 4096 ? 4096 : threads);
  KilnStatus st = {0};
  return kiln_eval(M, &o, stdout, &st) ? fail(&st) : 0;
}

//
// generate
//
static void generate_usage(FILE *f) {
  fprintf(f,
          "usage: %s generate [--weights FILE] [--prompt TEXT] [options]\n"
          "\n"
          "Writes the prompt and then --tokens more characters to standard output, each as it\n"
          "is made; timing goes to standard error. Each new token costs one step: the model's\n"
          "key/value caches (attention) or h and c (LSTM) carry the context.\n"
          "\n"
          "  --weights FILE     weights or checkpoint from train (also its vocabulary)\n"
          "  --prompt TEXT      text to continue (default: a newline)\n"
          "  --tokens N         characters to generate (default 200)\n"
          "  --temperature T    0: greedy, always the most likely (default 0.8)\n"
          "  --top-k K          sample among the K most likely (default 0: all)\n"
          "  --seed S           the sampling stream (default 1)\n"
          "  --no-cache         recompute the whole context for every token instead\n"
          "  --threads N        worker threads (default: every CPU)\n" PROFILE_HELP,
          M->name);
}

static void emit_char(int32_t id, void *user) {
  const KilnVocab *v = user;
  putchar(v->sym[id]);
  fflush(stdout);
}

static int cmd_generate(int argc, char **argv) {
  enum { NO_CACHE = 600, TOP_K, TEMPERATURE };
  static const struct option opts[] = {{"weights", required_argument, NULL, 'w'},
                                       {"prompt", required_argument, NULL, 'p'},
                                       {"tokens", required_argument, NULL, 'n'},
                                       {"temperature", required_argument, NULL, TEMPERATURE},
                                       {"top-k", required_argument, NULL, TOP_K},
                                       {"seed", required_argument, NULL, 's'},
                                       {"no-cache", no_argument, NULL, NO_CACHE},
                                       {"threads", required_argument, NULL, 't'},
                                       {"help", no_argument, NULL, 'h'},
                                       PROFILE_OPTIONS,
                                       {0}};
  const char *weights = NULL, *prompt = NULL;
  int64_t count = 200, top_k = 0, threads = 0;
  KilnSampling smp = {.temperature = 0.8, .seed = 1};
  bool window = false;
  Profile prof = {0};
  int opt;
  char *end;
  while ((opt = getopt_long(argc, argv, "w:p:n:s:t:h", opts, NULL)) != -1) {
    switch (opt) {
    case 'w': weights = optarg; break;
    case 'p': prompt = optarg; break;
    case 'n': if (!parse_count("tokens", optarg, 0, &count)) return 2; break;
    case TOP_K: if (!parse_count("top-k", optarg, 0, &top_k)) return 2; break;
    case 's': if (!parse_seed(optarg, &smp.seed)) return 2; break;
    case 't': if (!parse_count("threads", optarg, 1, &threads)) return 2; break;
    case NO_CACHE: window = true; break;
    case TEMPERATURE:
      smp.temperature = strtod(optarg, &end);
      if (!*optarg || *end || !(smp.temperature >= 0) || !isfinite(smp.temperature)) {
        fprintf(stderr, "%s: --temperature takes a number >= 0, got '%s'\n", M->name, optarg);
        return 2;
      }
      break;
    case 'h': generate_usage(stdout); return 0;
    default: {
      int taken = profile_option(&prof, opt, optarg);
      if (taken < 0) return 2;
      if (taken == 0) return generate_usage(stderr), 2;
    }
    }
  }
  if (optind < argc) {
    fprintf(stderr, "%s generate: unexpected argument '%s'\n", M->name, argv[optind]);
    return 2;
  }
  smp.top_k = top_k > INT32_MAX ? INT32_MAX : (int)top_k;
  KilnStatus st = {0};
  KilnVocab vocab;
  KilnCtx *c = NULL;
  KilnGen *g = NULL;
  int32_t *ids = NULL;
  int rc = 1;
  if (!(c = kiln_ctx_create(M, (int)threads, &st))) goto done;
  if (!(g = kiln_gen_create(c, window, &st))) goto done;
  if (weights && kiln_ctx_load(c, weights, &st) != 0) goto done;
  if (kiln_gen_vocab(M, weights, &vocab, &st) != 0) goto done;
  if (!prompt) prompt = vocab.id['\n'] >= 0 ? "\n" : (const char[]){(char)vocab.sym[0], 0};
  size_t np = strlen(prompt);
  if (np == 0) {
    kiln_rt_fail(&st, "--prompt is empty: generation continues at least one character");
    goto done;
  }
  if (!(ids = malloc(np * sizeof *ids))) {
    kiln_rt_fail(&st, "out of memory");
    goto done;
  }
  if (kiln_gen_encode(&vocab, prompt, ids, &st) != 0) goto done;
  if (profile_begin(&prof, kiln_gen_ctx(g), &st) != 0) goto done;
  fputs(prompt, stdout);
  double t0 = kiln_now();
  if (kiln_gen_run(g, ids, (int64_t)np, count, &smp, emit_char, &vocab, &st) != 0) goto done;
  double t = kiln_now() - t0;
  putchar('\n');
  fflush(stdout);
  if (kiln_rt_profile_end(kiln_gen_ctx(g), &st) != 0) goto done;
  fprintf(stderr,
          "%s: %zu prompt + %lld generated tokens in %.1f ms: %.3f ms per generated token (%s)\n",
          M->name, np, (long long)count, t * 1e3, count ? t * 1e3 / (double)count : 0.0,
          window ? "whole context recomputed" : "cached state");
  rc = 0;
done:
  free(ids);
  kiln_gen_destroy(g);
  kiln_ctx_destroy(c);
  return rc ? fail(&st) : 0;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    usage(stderr);
    return 2;
  }
  const char *cmd = argv[1];
  if (!strcmp(cmd, "--help") || !strcmp(cmd, "-h") || !strcmp(cmd, "help")) {
    usage(stdout);
    return 0;
  }
  if (!strcmp(cmd, "--version") || !strcmp(cmd, "version")) {
    printf("%s (model) compiled by kiln %s for %s\n", M->name, M->kiln_version, M->target);
    return 0;
  }
  if (!strcmp(cmd, "train")) return cmd_train(argc - 1, argv + 1);
  if (kiln_dist_launched() > 1) {
    fprintf(stderr, "%s: error: only train runs on several ranks; run %s alone\n", M->name, cmd);
    return 2;
  }
  if (!strcmp(cmd, "info")) return cmd_info();
  if (!strcmp(cmd, "eval")) return cmd_eval(argc - 1, argv + 1);
  if (!strcmp(cmd, "infer")) return cmd_infer(argc - 1, argv + 1);
  if (!strcmp(cmd, "bench")) return cmd_bench(argc - 1, argv + 1);
  if (!strcmp(cmd, "peak")) return cmd_peak(argc - 1, argv + 1);
  if (!strcmp(cmd, "generate")) return cmd_generate(argc - 1, argv + 1);
  fprintf(stderr, "%s: unknown command '%s'\n", M->name, cmd);
  usage(stderr);
  return 2;
}
