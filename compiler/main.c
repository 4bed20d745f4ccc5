// The kiln driver: parses the command line and runs a subcommand. Only this file
// calls exit.
#include <getopt.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "compiler/compiler.h"
#include "passes/passes.h"
#include "runtime/runtime.h"

#define MAX_DIMS 64

static void usage(FILE *f) {
  fputs("usage: kiln <command> [options] MODEL.yaml...\n"
        "\n"
        "commands:\n"
        "  check     parse, validate and shape a model; print its summary\n"
        "  build     compile a model into an executable or a static library\n"
        "  profile   build a model and print the time, FLOPs and roofline of each kernel\n"
        "  peak      this machine's FMA and memory peaks (the profile's roofline)\n"
        "  import    convert an ONNX model into a model file and its weights\n"
        "  weights   convert weights between PyTorch's layout and Kiln's\n"
        "  help      show this help\n"
        "  version   show the version\n"
        "\n"
        "Run 'kiln <command> --help' for a command's options.\n",
        f);
}

static void check_usage(FILE *f) {
  fputs("usage: kiln check [options] MODEL.yaml...\n"
        "\n"
        "Reads each model, reports every error as file:line:col with the source line,\n"
        "and for a valid model prints its values, shapes, parameters and FLOPs.\n"
        "\n"
        "options:\n"
        "  --dim NAME=VALUE       override a dim's default (repeatable)\n"
        "  --print-ir             print the IR text instead of the summary\n"
        "  --print-ir-after=PASS  print the IR after a pass ('all': after each)\n"
        "  --train                include the training graph (autodiff) in the IR\n"
        "  -O0 .. -O2             graph optimization level (default: -O2)\n"
        "  --time-passes          print how long each pass took\n"
        "  --emit=ir|dot|summary  what to write (default: summary)\n"
        "  -o, --output FILE      write it to FILE instead of standard output\n"
        "  -q, --quiet            print nothing for a valid model\n"
        "  -h, --help             show this help\n"
        "\n"
        "exit status: 0 if every model is valid, 1 if one is not, 2 on bad usage\n",
        f);
}

typedef enum { EMIT_SUMMARY, EMIT_IR, EMIT_DOT } Emit;

typedef struct {
  KilnDimOverride dims[MAX_DIMS];
  int ndims;
  Emit emit;
  const char *output, *print_after;
  bool quiet, train, time_passes;
  int level;
} CheckOpts;

static int parse_dim(const char *arg, KilnDimOverride *out) {
  const char *eq = strchr(arg, '=');
  if (!eq || eq == arg) return -1;
  char *end;
  long long v = strtoll(eq + 1, &end, 10);
  if (*end || end == eq + 1 || v < 1) return -1;
  out->name = strndup(arg, (size_t)(eq - arg));
  out->value = v;
  return out->name ? 0 : -1;
}

// -O0 .. -O3; the graph passes stop at 2, LLVM takes all four.
static int parse_level(const char *arg, int *out) {
  if (strlen(arg) != 1 || arg[0] < '0' || arg[0] > '3') {
    fprintf(stderr, "kiln: -O expects 0, 1, 2 or 3, got '%s'\n", arg);
    return -1;
  }
  *out = arg[0] - '0';
  return 0;
}

static int parse_check(int argc, char **argv, CheckOpts *o) {
  static const struct option longs[] = {
      {"dim", required_argument, NULL, 'D'},   {"print-ir", no_argument, NULL, 'P'},
      {"print-ir-after", required_argument, NULL, 'A'}, {"emit", required_argument, NULL, 'E'},
      {"output", required_argument, NULL, 'o'}, {"quiet", no_argument, NULL, 'q'},
      {"help", no_argument, NULL, 'h'},         {"train", no_argument, NULL, 't'},
      {"time-passes", no_argument, NULL, 'T'},  {0}};
  int c;
  o->level = 2;
  while ((c = getopt_long(argc, argv, "o:qhO:", longs, NULL)) != -1) {
    switch (c) {
    case 'D':
      if (o->ndims == MAX_DIMS || parse_dim(optarg, &o->dims[o->ndims]) != 0) {
        fprintf(stderr, "kiln: --dim expects NAME=VALUE with VALUE >= 1, got '%s'\n", optarg);
        return -1;
      }
      o->ndims++;
      break;
    case 'P': o->emit = EMIT_IR; break;
    case 'A': o->print_after = optarg; break;
    case 'E':
      if (strcmp(optarg, "ir") == 0) o->emit = EMIT_IR;
      else if (strcmp(optarg, "dot") == 0) o->emit = EMIT_DOT;
      else if (strcmp(optarg, "summary") == 0) o->emit = EMIT_SUMMARY;
      else {
        fprintf(stderr, "kiln: --emit expects ir, dot or summary, got '%s'\n", optarg);
        return -1;
      }
      break;
    case 'o': o->output = optarg; break;
    case 'q': o->quiet = true; break;
    case 't': o->train = true; break;
    case 'T': o->time_passes = true; break;
    case 'O':
      if (parse_level(optarg, &o->level) != 0) return -1;
      break;
    case 'h': check_usage(stdout); exit(0);
    default: check_usage(stderr); return -1;
    }
  }
  if (o->print_after && strcmp(o->print_after, "all") != 0) {
    bool known = false;
    for (int i = 0; kiln_pipeline_pass_name(i); i++)
      known |= strcmp(kiln_pipeline_pass_name(i), o->print_after) == 0;
    if (!known) {
      fprintf(stderr, "kiln: --print-ir-after: no pass named '%s'; passes:", o->print_after);
      for (int i = 0; kiln_pipeline_pass_name(i); i++)
        fprintf(stderr, " %s", kiln_pipeline_pass_name(i));
      fputs(" (or 'all')\n", stderr);
      return -1;
    }
  }
  if (optind >= argc) {
    fputs("kiln check: no model file given\n", stderr);
    check_usage(stderr);
    return -1;
  }
  return 0;
}

static int check_one(const char *path, const CheckOpts *o, FILE *out) {
  KilnDiag d;
  kiln_diag_init(&d, stderr);
  d.color = isatty(STDERR_FILENO);
  KilnModel m;
  int rc = kiln_model_load(&m, &d, path, o->dims, o->ndims);
  if (rc == 0) {
    KilnPipelineOpts po = {.print_after = o->print_after, .out = out,
                           .training = o->train && m.graph.loss >= 0, .level = o->level,
                           .time_passes = o->time_passes};
    rc = kiln_pipeline_run(&m.graph, &po, stderr);
  }
  if (rc == 0 && !o->quiet) {
    switch (o->emit) {
    case EMIT_SUMMARY: kiln_model_summary(&m, out); break;
    case EMIT_IR: kiln_graph_print(&m.graph, out); break;
    case EMIT_DOT: kiln_graph_dot(&m.graph, out); break;
    }
  }
  if (rc != 0)
    fprintf(stderr, "%s: %d error%s\n", path, d.nerrors, d.nerrors == 1 ? "" : "s");
  kiln_model_free(&m);
  return rc;
}

static int cmd_check(int argc, char **argv) {
  CheckOpts o = {0};
  if (parse_check(argc, argv, &o) != 0) return 2;
  FILE *out = stdout;
  if (o.output && !(out = fopen(o.output, "w"))) {
    perror(o.output);
    return 2;
  }
  int failed = 0;
  for (int i = optind; i < argc; i++) failed += check_one(argv[i], &o, out) != 0;
  for (int i = 0; i < o.ndims; i++) free((char *)o.dims[i].name);
  if (out != stdout && fclose(out) != 0) {
    perror(o.output);
    return 2;
  }
  return failed ? 1 : 0;
}

static void build_usage(FILE *f) {
  fputs("usage: kiln build [options] MODEL.yaml\n"
        "\n"
        "Compiles the model ahead of time for this CPU (or NVIDIA GPUs) and links it\n"
        "with the Kiln runtime into a standalone program (train, infer, info, bench),\n"
        "or archives it into a static library with a C header.\n"
        "\n"
        "options:\n"
        "  -o, --output PATH      the program (default: the model's name); with\n"
        "                         --emit=lib, DIR/NAME gives DIR/libNAME.a, DIR/NAME.h,\n"
        "                         DIR/NAME.pc\n"
        "  --emit=exe|lib|obj|asm|llvm|cuda   what to produce (default: exe); cuda:\n"
        "                         the kernels' CUDA source (--target=cuda)\n"
        "  --target=cpu|cuda      the target: this CPU (default) or NVIDIA GPUs, kernels\n"
        "                         compiled by NVRTC into the output (docs/cuda.md)\n"
        "  --gpu-arch=LIST        cuda: cubins for these architectures, plus PTX of the\n"
        "                         newest for newer GPUs (default: sm_80,sm_90)\n"
        "  --gpu-matmul=f32|bf16  cuda: matmuls in f32 (default), or on bf16 tensor\n"
        "                         cores with f32 accumulation, weights kept in f32\n"
        "                         (sm_80 or newer; docs/cuda.md)\n"
        "  --cuda-source=FILE     cuda: also write the kernels' CUDA source to FILE\n"
        "  --kernel-stats=FILE    cuda: registers, spills, stack and shared memory of\n"
        "                         every kernel per architecture ('-': standard output)\n"
        "  --cpu=NAME             CPU to optimize for: native (default) or an LLVM CPU\n"
        "                         name such as x86-64-v3 or skylake-avx512\n"
        "  -O0 .. -O3             optimization level: graph passes (-O1 clean-up, -O2\n"
        "                         fusion and scheduling too) and LLVM (default: -O3)\n"
        "  --time-passes          print how long each graph pass took\n"
        "  --graph-level=N        graph pass level alone (0..2), LLVM's level unchanged:\n"
        "                         measures what the graph passes (fusion) bring\n"
        "  --dim NAME=VALUE       override a dim's default (repeatable)\n"
        "  --mpi                  link MPI in: `mpirun -np N PROGRAM train` trains on N\n"
        "                         ranks (docs/distributed.md; with --target=cuda, one\n"
        "                         per GPU, over NCCL); run alone, it is one\n"
        "  --print-ir-after=PASS  print the IR after a pass ('all': after each)\n"
        "  -h, --help             show this help\n"
        "\n"
        "environment: CC and AR name the linker driver and archiver (cc, ar);\n"
        "KILN_RUNTIME_DIR the folder with libkiln_runtime.a and libkiln_cli.a;\n"
        "KILN_CACHE_DIR (default ~/.cache/kiln), KILN_CACHE=0 and KILN_CACHE_MAX_MB\n"
        "(512) for the kernel cache of --target=cuda (docs/cuda.md).\n",
        f);
}

static int parse_emit(const char *s, KilnBuildEmit *out) {
  static const char *const names[] = {"exe", "lib", "obj", "asm", "llvm", "cuda"};
  for (int i = 0; i < 6; i++)
    if (strcmp(s, names[i]) == 0) return *out = (KilnBuildEmit)i, 0;
  return -1;
}

static int cmd_build(int argc, char **argv) {
  static const struct option longs[] = {
      {"output", required_argument, NULL, 'o'}, {"emit", required_argument, NULL, 'E'},
      {"target", required_argument, NULL, 'T'}, {"cpu", required_argument, NULL, 'C'},
      {"dim", required_argument, NULL, 'D'},    {"print-ir-after", required_argument, NULL, 'A'},
      {"help", no_argument, NULL, 'h'},         {"time-passes", no_argument, NULL, 'P'},
      {"graph-level", required_argument, NULL, 'G'}, {"mpi", no_argument, NULL, 'M'},
      {"gpu-arch", required_argument, NULL, 'R'}, {"cuda-source", required_argument, NULL, 'S'},
      {"kernel-stats", required_argument, NULL, 'K'}, {"gpu-matmul", required_argument, NULL, 'U'},
      {0}};
  KilnDimOverride dims[MAX_DIMS];
  KilnBuildOpts o = {.cpu = "native", .opt_level = 3, .graph_level = -1, .dims = dims};
  int c, rc = 2;
  bool gpu_matmul = false;  // --gpu-matmul given
  while ((c = getopt_long(argc, argv, "o:O:h", longs, NULL)) != -1) {
    switch (c) {
    case 'o': o.output = optarg; break;
    case 'E':
      if (parse_emit(optarg, &o.emit) != 0) {
        fprintf(stderr, "kiln build: --emit expects exe, lib, obj, asm, llvm or cuda, got '%s'\n",
                optarg);
        goto out;
      }
      break;
    case 'T':
      if (strcmp(optarg, "cuda") == 0) o.cuda = true;
      else if (strcmp(optarg, "cpu") == 0) o.cuda = false;
      else {
        fprintf(stderr, "kiln build: unknown target '%s'; kiln compiles for: cpu, cuda\n", optarg);
        goto out;
      }
      break;
    case 'R': o.gpu_arch = optarg; break;
    case 'U':
      if (strcmp(optarg, "bf16") == 0) o.gpu_matmul_bf16 = true;
      else if (strcmp(optarg, "f32") == 0) o.gpu_matmul_bf16 = false;
      else {
        fprintf(stderr, "kiln build: --gpu-matmul expects f32 or bf16, got '%s'\n", optarg);
        goto out;
      }
      gpu_matmul = true;
      break;
    case 'S': o.cuda_source = optarg; break;
    case 'K': o.kernel_stats = optarg; break;
    case 'C': o.cpu = optarg; break;
    case 'O':
      if (parse_level(optarg, &o.opt_level) != 0) goto out;
      break;
    case 'P': o.time_passes = true; break;
    case 'G':
      if (parse_level(optarg, &o.graph_level) != 0 || o.graph_level > 2) {
        fprintf(stderr, "kiln build: --graph-level expects 0, 1 or 2\n");
        goto out;
      }
      break;
    case 'D':
      if (o.ndims == MAX_DIMS || parse_dim(optarg, &dims[o.ndims]) != 0) {
        fprintf(stderr, "kiln: --dim expects NAME=VALUE with VALUE >= 1, got '%s'\n", optarg);
        goto out;
      }
      o.ndims++;
      break;
    case 'A': o.print_after = optarg; break;
    case 'M': o.mpi = true; break;
    case 'h': build_usage(stdout); rc = 0; goto out;
    default: build_usage(stderr); goto out;
    }
  }
  if (optind != argc - 1) {
    fputs(optind >= argc ? "kiln build: no model file given\n" : "kiln build: give one model file\n", stderr);
    build_usage(stderr);
    goto out;
  }
  if (o.mpi && o.emit != KILN_BUILD_EXE) {
    fputs("kiln build: --mpi links a program: it goes with --emit=exe\n", stderr);
    goto out;
  }
  if (!o.cuda && (o.gpu_arch || gpu_matmul || o.cuda_source || o.kernel_stats || o.emit == KILN_BUILD_CUDA)) {
    fputs("kiln build: --gpu-arch, --gpu-matmul, --cuda-source, --kernel-stats and --emit=cuda go "
          "with --target=cuda\n", stderr);
    goto out;
  }
  o.model = argv[optind];
  char def[512];
  if (!o.output) {
    // The default output is named after the file; the model's own name may differ,
    // but reading the model twice to find it is not worth it.
    const char *base = strrchr(o.model, '/');
    base = base ? base + 1 : o.model;
    const char *dot = strrchr(base, '.');
    static const char *const ext[] = {"", "", ".o", ".s", ".ll", ".cu"};
    snprintf(def, sizeof def, "%.*s%s", dot ? (int)(dot - base) : (int)strlen(base), base, ext[o.emit]);
    o.output = def;
  }
  KilnDiag d;
  kiln_diag_init(&d, stderr);
  d.color = isatty(STDERR_FILENO);
  rc = kiln_build(&d, &o) == 0 ? 0 : 1;
out:
  for (int i = 0; i < o.ndims; i++) free((char *)dims[i].name);
  return rc;
}

static void profile_usage(FILE *f) {
  fputs("usage: kiln profile [options] MODEL.yaml\n"
        "\n"
        "Builds the model for this CPU and runs its default workload with every kernel\n"
        "timed: training steps (the whole step on a random batch) when the model has a\n"
        "loss, else forward passes. Prints a table per kernel: time, FLOPs, bytes,\n"
        "achieved GFLOP/s and GB/s, and percent of the roofline bound (docs/profiling.md).\n"
        "\n"
        "options:\n"
        "  --steps N              timed steps, after 2 warm-up steps (default: 10)\n"
        "  --threads N            threads (default: every CPU)\n"
        "  --profile-out FILE     also a Chrome trace (Perfetto, chrome://tracing)\n"
        "  --profile-csv FILE     also the table as CSV\n"
        "  --peak-gflops F        one core's FMA peak, GFLOP/s (default: `kiln peak`)\n"
        "  --peak-gbs F           memory bandwidth, GB/s (default: `kiln peak`)\n"
        "  --dim NAME=VALUE       override a dim's default (repeatable)\n"
        "  --cpu=NAME, -O0 .. -O3 as for kiln build\n"
        "  -h, --help             show this help\n",
        f);
}

static bool parse_int(const char *opt, const char *s, int min, int *out) {
  char *end;
  long v = strtol(s, &end, 10);
  if (!*s || *end || v < min || v > 1000000) {
    fprintf(stderr, "kiln profile: --%s takes a whole number >= %d, got '%s'\n", opt, min, s);
    return false;
  }
  *out = (int)v;
  return true;
}

static int cmd_profile(int argc, char **argv) {
  enum { STEPS = 256, THREADS, PASS };
  static const struct option longs[] = {
      {"steps", required_argument, NULL, STEPS}, {"threads", required_argument, NULL, THREADS},
      {"profile-out", required_argument, NULL, PASS}, {"profile-csv", required_argument, NULL, PASS},
      {"peak-gflops", required_argument, NULL, PASS}, {"peak-gbs", required_argument, NULL, PASS},
      {"dim", required_argument, NULL, 'D'},   {"cpu", required_argument, NULL, 'C'},
      {"help", no_argument, NULL, 'h'},        {0}};
  KilnDimOverride dims[MAX_DIMS];
  char *pass[16];
  KilnProfileRunOpts o = {.build = {.cpu = "native", .opt_level = 3, .graph_level = -1,
                                    .dims = dims},
                          .steps = 10, .pass = pass};
  int c, idx, rc = 2;
  while ((c = getopt_long(argc, argv, "O:h", longs, &idx)) != -1) {
    switch (c) {
    case STEPS: if (!parse_int("steps", optarg, 1, &o.steps)) goto out; break;
    case THREADS: if (!parse_int("threads", optarg, 0, &o.threads)) goto out; break;
    case PASS: {  // handed to the program as --NAME=VALUE
      size_t len = strlen(longs[idx].name) + strlen(optarg) + 4;
      char *arg = o.npass < 16 ? malloc(len) : NULL;
      if (!arg) goto out;
      snprintf(arg, len, "--%s=%s", longs[idx].name, optarg);
      pass[o.npass++] = arg;
      break;
    }
    case 'C': o.build.cpu = optarg; break;
    case 'O': if (parse_level(optarg, &o.build.opt_level) != 0) goto out; break;
    case 'D':
      if (o.build.ndims == MAX_DIMS || parse_dim(optarg, &dims[o.build.ndims]) != 0) {
        fprintf(stderr, "kiln: --dim expects NAME=VALUE with VALUE >= 1, got '%s'\n", optarg);
        goto out;
      }
      o.build.ndims++;
      break;
    case 'h': profile_usage(stdout); rc = 0; goto out;
    default: profile_usage(stderr); goto out;
    }
  }
  if (optind != argc - 1) {
    fputs(optind >= argc ? "kiln profile: no model file given\n" : "kiln profile: give one model file\n",
          stderr);
    profile_usage(stderr);
    goto out;
  }
  o.build.model = argv[optind];
  KilnDiag d;
  kiln_diag_init(&d, stderr);
  d.color = isatty(STDERR_FILENO);
  rc = kiln_profile_run(&d, &o) == 0 ? 0 : 1;
out:
  for (int i = 0; i < o.build.ndims; i++) free((char *)dims[i].name);
  for (int i = 0; i < o.npass; i++) free(pass[i]);
  return rc;
}

static int cmd_peak(int argc, char **argv) {
  bool measure = argc == 2 && !strcmp(argv[1], "--measure");
  if (argc > 1 && !measure) {
    bool help = !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h");
    fputs("usage: kiln peak [--measure]\n"
          "\nPrints this machine's peaks, the roofline of profiles: one core's f32 FMA\n"
          "throughput and the memory bandwidth (one thread, every CPU), measured once and\n"
          "cached; --measure measures again and rewrites the cache.\n", help ? stdout : stderr);
    return help ? 0 : 2;
  }
  KilnStatus st = {0};
  KilnPeak p;
  char path[4096];
  bool cached = kiln_peak_cache_path(path, sizeof path) == 0;
  int rc = measure ? kiln_peak_measure(&p, &st) : kiln_peak_get(&p, stderr, &st);
  if (rc == 0 && measure && cached) rc = kiln_peak_write(path, &p, &st);
  if (rc != 0) {
    fprintf(stderr, "kiln peak: error: %s\n", st.msg);
    return 1;
  }
  kiln_peak_print(&p, stdout);
  if (cached) printf("cache:      %s\n", path);
  return 0;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    usage(stderr);
    return 2;
  }
  const char *cmd = argv[1];
  if (!strcmp(cmd, "help") || !strcmp(cmd, "--help") || !strcmp(cmd, "-h")) {
    usage(stdout);
    return 0;
  }
  if (!strcmp(cmd, "version") || !strcmp(cmd, "--version")) {
    printf("kiln %s\n", KILN_VERSION);
    return 0;
  }
  if (!strcmp(cmd, "check")) return cmd_check(argc - 1, argv + 1);
  if (!strcmp(cmd, "build")) return cmd_build(argc - 1, argv + 1);
  if (!strcmp(cmd, "profile")) return cmd_profile(argc - 1, argv + 1);
  if (!strcmp(cmd, "peak")) return cmd_peak(argc - 1, argv + 1);
  if (!strcmp(cmd, "import")) return kiln_import_main(argc - 1, argv + 1);
  if (!strcmp(cmd, "weights")) return kiln_weights_main(argc - 1, argv + 1);
  fprintf(stderr, "kiln: unknown command '%s'\n", cmd);
  usage(stderr);
  return 2;
}
