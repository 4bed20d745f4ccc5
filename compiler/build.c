// `kiln build`: model file -> IR -> passes -> CPU backend -> object, then linked
// with the runtime into an executable, or archived with it into a static library
// with a C header and a pkg-config file. Outputs appear whole or not at all: each
// is written under a temporary name and renamed into place.
#define _XOPEN_SOURCE 700  // realpath
#include <ctype.h>
#include <stdarg.h>
#include <errno.h>
#include <spawn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "compiler/compiler.h"
#include "compiler/cpu/cpu.h"
#ifdef KILN_HAVE_CUDA
#include "compiler/cuda/cuda.h"
#endif
#include "passes/passes.h"

extern char **environ;

#define TRY(expr)                \
  do {                           \
    if ((expr) != 0) return -1;  \
  } while (0)

// A temporary name beside path, so the final rename stays on one file system.
static void beside(char *buf, size_t len, const char *path) {
  snprintf(buf, len, "%s.tmp%ld", path, (long)getpid());
}

#ifndef KILN_RUNTIME_DIR
#define KILN_RUNTIME_DIR "."
#endif
#ifndef KILN_RUNTIME_RELDIR
#define KILN_RUNTIME_RELDIR "../lib/kiln"  // set by cmake/KilnInstall.cmake
#endif

static int build_error(KilnDiag *d, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int build_error(KilnDiag *d, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("kiln build: error: ", d->out);
  vfprintf(d->out, fmt, ap);
  fputc('\n', d->out);
  va_end(ap);
  d->nerrors++;
  return -1;
}

// Runs argv[0] (looked up on PATH) and waits; its own messages go to our stderr.
static int run(KilnDiag *d, char *const *argv) {
  pid_t pid;
  int rc = posix_spawnp(&pid, argv[0], NULL, NULL, argv, environ);
  if (rc != 0) return build_error(d, "cannot run %s: %s", argv[0], strerror(rc));
  int status;
  while (waitpid(pid, &status, 0) < 0)
    if (errno != EINTR) return build_error(d, "waiting for %s: %s", argv[0], strerror(errno));
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return 0;
  return build_error(d, "%s failed (%s %d)", argv[0], WIFEXITED(status) ? "exit status" : "signal",
                     WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
}

static bool has_runtime(const char *dir) {
  char path[4096];
  snprintf(path, sizeof path, "%s/libkiln_runtime.a", dir);
  return access(path, R_OK) == 0;
}

// The folder of the running kiln joined with rel, in buf; false if unknown, or
// when kiln runs from its build tree (whose archives are beside it).
static bool beside_exe(char *buf, size_t len, const char *rel) {
  char exe[4096];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n <= 0) return false;
  exe[n] = '\0';
  char *slash = strrchr(exe, '/');
  if (!slash) return false;
  *slash = '\0';
  if (strcmp(exe, KILN_RUNTIME_DIR) == 0) return false;
  return (size_t)snprintf(buf, len, "%s/%s", exe, rel) < len;
}

// Where libkiln_runtime.a and libkiln_cli.a are: $KILN_RUNTIME_DIR when set; else
// beside an installed kiln (BINDIR/KILN_RUNTIME_RELDIR, e.g. /usr/bin/../lib/kiln);
// else the build tree this kiln was built in.
static const char *runtime_dir(KilnDiag *d) {
  static char installed[4096];
  const char *dir = getenv("KILN_RUNTIME_DIR");
  if (!dir || !*dir) {
    dir = KILN_RUNTIME_DIR;
    if (beside_exe(installed, sizeof installed, KILN_RUNTIME_RELDIR) && has_runtime(installed))
      dir = installed;
  }
  if (!has_runtime(dir)) {
    build_error(d, "cannot find the Kiln runtime: %s/libkiln_runtime.a: %s", dir, strerror(errno));
    fputs("  hint: set KILN_RUNTIME_DIR to the folder holding libkiln_runtime.a\n", d->out);
    return NULL;
  }
  return dir;
}

static const char *env_or(const char *name, const char *dflt) {
  const char *v = getenv(name);
  return v && *v ? v : dflt;
}

#ifndef KILN_LINK_FLAG
#define KILN_LINK_FLAG "-lm"  // sanitizer builds pass their -fsanitize flag here
#endif

// With mpi, libkiln_mpi.a comes between the program's main and the runtime, so
// its MPI transport replaces the runtime's none, and MPI's libraries follow.
static int link_exe(KilnDiag *d, const char *obj, const char *out, bool mpi, bool cuda) {
  const char *rt = runtime_dir(d);
  if (!rt) return -1;
  char cli[4096], lib[4096], tmp[8192];
  snprintf(cli, sizeof cli, "%s/libkiln_cli.a", rt);
  snprintf(lib, sizeof lib, "%s/libkiln_runtime.a", rt);
  beside(tmp, sizeof tmp, out);
  char *argv[32] = {(char *)env_or("CC", "cc"), "-o", tmp, (char *)obj, cli};
  int n = 5;
  if (mpi) {
#ifdef KILN_MPI_LIBS
    static char mpilib[4096], mpilibs[] = KILN_MPI_LIBS;
    snprintf(mpilib, sizeof mpilib, "%s/libkiln_mpi.a", rt);
    if (access(mpilib, R_OK) != 0)
      return build_error(d, "--mpi: cannot read %s: %s", mpilib, strerror(errno));
    argv[n++] = mpilib;
    for (char *s = strtok(mpilibs, " "); s && n < 24; s = strtok(NULL, " ")) argv[n++] = s;
#else
    return build_error(d, "--mpi: this kiln was built without MPI; install libopenmpi-dev "
                          "(scripts/install-deps.sh) and rebuild kiln");
#endif
  }
  // A GPU program calls no BLAS: the runtime's OpenBLAS set-up is a weak reference.
  char *rest[] = {lib, "-lopenblas", "-ljansson", "-lpthread", "-lm", KILN_LINK_FLAG, NULL};
  char *rest_cuda[] = {lib, "-ljansson", "-lpthread", "-lm", KILN_LINK_FLAG, NULL};
  if (cuda) memcpy(argv + n, rest_cuda, sizeof rest_cuda);
  else memcpy(argv + n, rest, sizeof rest);
  if (run(d, argv) != 0) {
    unlink(tmp);
    return -1;
  }
  if (rename(tmp, out) != 0) {
    unlink(tmp);
    return build_error(d, "cannot write %s: %s", out, strerror(errno));
  }
  return 0;
}

// NAME_X_SIZE from a value name: upper case, dots to underscores.
static void macro_name(char *buf, size_t len, const char *model, const char *value,
                       const char *what) {
  size_t at = (size_t)snprintf(buf, len, "%s_%s_%s", model, value, what);
  for (size_t i = 0; i < at && i < len; i++)
    buf[i] = buf[i] == '.' ? '_' : (char)toupper((unsigned char)buf[i]);
}

static void c_ident(char *buf, size_t len, const char *name) {
  snprintf(buf, len, "%s", name);
  for (char *p = buf; *p; p++)
    if (*p == '.') *p = '_';
}

static void header_tensor(FILE *f, const char *model, const KilnNode *n) {
  char m[512], shape[160];
  fprintf(f, "/* %s %s: %s */\n", n->op == KILN_OP_INPUT ? "input" : "output", n->name,
          kiln_shape_str(n, shape, sizeof shape));
  macro_name(m, sizeof m, model, n->name, "SIZE");
  fprintf(f, "#define %s %lld\n", m, (long long)kiln_node_numel(n));
  macro_name(m, sizeof m, model, n->name, "RANK");
  fprintf(f, "#define %s %d\n", m, n->rank);
  macro_name(m, sizeof m, model, n->name, "SHAPE");
  fprintf(f, "#define %s {", m);
  for (int i = 0; i < n->rank; i++) fprintf(f, "%s%lld", i ? ", " : "", (long long)n->shape[i]);
  fputs("}\n", f);
}

static bool header_generate;  // the model was built with text generation

static void write_header(FILE *f, const KilnModel *m, const KilnPlan *p) {
  const KilnGraph *g = &m->graph;
  const char *n = m->name;
  char up[128];
  snprintf(up, sizeof up, "%s", n);
  for (char *q = up; *q; q++) *q = (char)toupper((unsigned char)*q);
  fprintf(f, "/* %s.h: C API of the model '%s', compiled by kiln %s from %s.\n"
             " * Link: lib%s.a plus the system BLAS, jansson, pthreads and libm\n"
             " * (pkg-config --libs %s). All functions return 0 on success or -1 with a\n"
             " * message in %s_last_error(). A context is used by one thread at a time. */\n",
          n, n, KILN_VERSION, m->path, n, n, n);
  fprintf(f, "#ifndef %s_H\n#define %s_H\n\n#include <stddef.h>\n#include <stdint.h>\n\n", up, up);
  fprintf(f, "#ifdef __cplusplus\nextern \"C\" {\n#endif\n\n");
  fprintf(f, "typedef struct %s_ctx %s_ctx;\n\n", n, n);
  for (int i = 0; i < m->ninputs; i++)
    if (p->live_fwd[m->inputs[i]] || g->grads) header_tensor(f, up, &g->nodes[m->inputs[i]]);
  for (int i = 0; i < g->noutputs; i++) header_tensor(f, up, &g->nodes[g->outputs[i]]);
  fprintf(f, "\n/* A context with parameters initialized from the model's seed; threads <= 0\n"
             " * uses every CPU. NULL on failure (%s_last_error(NULL) says why). */\n", n);
  fprintf(f, "%s_ctx *%s_create(int threads);\n", n, n);
  fprintf(f, "void %s_destroy(%s_ctx *ctx);\n", n, n);
  fprintf(f, "/* Weights in safetensors format, one tensor per parameter. */\n");
  fprintf(f, "int %s_load_weights(%s_ctx *ctx, const char *path);\n", n, n);
  fprintf(f, "int %s_save_weights(%s_ctx *ctx, const char *path);\n", n, n);
  fprintf(f, "const char *%s_last_error(const %s_ctx *ctx);\n", n, n);
  fprintf(f, "/* Profiling: from begin to end every kernel is timed; end prints a table\n"
             " * (time, FLOPs, bytes, roofline) on stderr and writes the table as CSV and a\n"
             " * Chrome trace to the files named at begin (NULL: none). docs/profiling.md. */\n");
  fprintf(f, "int %s_profile_begin(%s_ctx *ctx, const char *csv, const char *trace);\n", n, n);
  fprintf(f, "int %s_profile_end(%s_ctx *ctx);\n", n, n);
  fprintf(f, "/* Inference on one batch: inputs, then outputs, each a full tensor of the\n"
             " * size above (row-major). */\n");
  fprintf(f, "int %s_forward(%s_ctx *ctx", n, n);
  char id[256];
  for (int i = 0; i < m->ninputs; i++) {
    const KilnNode *x = &g->nodes[m->inputs[i]];
    if (!p->live_fwd[m->inputs[i]]) continue;
    c_ident(id, sizeof id, x->name);
    fprintf(f, ", const %s *%s", x->dtype == KILN_F32 ? "float" : "int32_t", id);
  }
  for (int i = 0; i < g->noutputs; i++) {
    c_ident(id, sizeof id, g->nodes[g->outputs[i]].name);
    fprintf(f, ", float *%s", id);
  }
  fprintf(f, ");\n");
  if (g->grads) {
    fprintf(f, "\n/* Training. train_step runs one optimizer step (forward, loss, backward,\n"
               " * update) on a batch of every input, labels included, and stores the loss.\n"
               " * The learning rate follows the model's schedule over the context's steps.\n"
               " * save_state/load_state write and read weights plus optimizer state and the\n"
               " * step count (a safetensors checkpoint). */\n");
    fprintf(f, "int %s_train_step(%s_ctx *ctx", n, n);
    for (int i = 0; i < m->ninputs; i++) {
      const KilnNode *x = &g->nodes[m->inputs[i]];
      c_ident(id, sizeof id, x->name);
      fprintf(f, ", const %s *%s", x->dtype == KILN_F32 ? "float" : "int32_t", id);
    }
    fprintf(f, ", float *loss);\n");
    fprintf(f, "int %s_save_state(%s_ctx *ctx, const char *path);\n", n, n);
    fprintf(f, "int %s_load_state(%s_ctx *ctx, const char *path);\n", n, n);
  }
  if (header_generate) {
    fprintf(f, "\n/* Text generation. The prompt's characters must be in the vocabulary of the\n"
               " * weights loaded last (train stores it there; without, the model's training\n"
               " * text gives it). Writes up to tokens characters, at most out_size - 1, and a\n"
               " * NUL to out; returns how many it wrote, or -1. Each token is one step over\n"
               " * the key/value caches or recurrent state. temperature 0: greedy; top_k 0:\n"
               " * sample among all. */\n");
    fprintf(f, "typedef struct {\n  int tokens;\n  double temperature;\n  int top_k;\n"
               "  uint64_t seed;\n} %s_sampling;\n", n);
    fprintf(f, "int %s_generate(%s_ctx *ctx, const char *prompt, const %s_sampling *s, char *out,\n"
               "    size_t out_size);\n", n, n, n);
  }
  fprintf(f, "\n#ifdef __cplusplus\n}\n#endif\n\n#endif\n");
}

static int write_text(KilnDiag *d, const char *path,
                      void (*fn)(FILE *, const KilnModel *, const KilnPlan *), const KilnModel *m,
                      const KilnPlan *p) {
  char tmp[8192];
  beside(tmp, sizeof tmp, path);
  FILE *f = fopen(tmp, "w");
  if (!f) return build_error(d, "cannot write %s: %s", tmp, strerror(errno));
  fn(f, m, p);
  if (fflush(f) != 0 || fsync(fileno(f)) != 0 || fclose(f) != 0)
    return build_error(d, "cannot write %s: %s", tmp, strerror(errno));
  if (rename(tmp, path) != 0) {
    unlink(tmp);
    return build_error(d, "cannot write %s: %s", path, strerror(errno));
  }
  return 0;
}

static const char *pc_dir;
static bool pc_cuda;  // the library is for --target=cuda

static void write_pc(FILE *f, const KilnModel *m, const KilnPlan *p) {
  (void)p;
  fprintf(f, "# pkg-config file for the Kiln-compiled model '%s'\n", m->name);
  fprintf(f, "prefix=%s\n\nName: %s\nDescription: model %s compiled by kiln %s\n", pc_dir, m->name,
          m->name, KILN_VERSION);
  fprintf(f, "Version: %s\nCflags: -I${prefix}\n", KILN_VERSION);
  // A GPU model calls no BLAS (its runtime loads the CUDA driver at run time).
  fprintf(f, "Libs: -L${prefix} -l%s%s -ljansson -lpthread -lm\n", m->name,
          pc_cuda ? "" : " -lopenblas");
}

// out is DIR/NAME: DIR/libNAME.a (runtime objects + the model), DIR/NAME.h, DIR/NAME.pc.
static int write_lib(KilnDiag *d, const KilnModel *m, const KilnPlan *p, const char *obj,
                     const char *out) {
  const char *rt = runtime_dir(d);
  if (!rt) return -1;
  char dir[2048], lib[4096], tmp[8192], src[4096], path[4096];
  const char *slash = strrchr(out, '/');
  snprintf(dir, sizeof dir, "%.*s", slash ? (int)(slash - out) : 1, slash ? out : ".");
  if (!*dir) snprintf(dir, sizeof dir, "/");
  struct stat st;
  if (stat(dir, &st) != 0 && mkdir(dir, 0777) != 0)
    return build_error(d, "cannot create %s: %s", dir, strerror(errno));
  snprintf(lib, sizeof lib, "%s/lib%s.a", dir, m->name);
  beside(tmp, sizeof tmp, lib);
  snprintf(src, sizeof src, "%s/libkiln_runtime.a", rt);
  char *cp[] = {"cp", src, tmp, NULL};
  char *ar[] = {(char *)env_or("AR", "ar"), "rs", tmp, (char *)obj, NULL};
  if (run(d, cp) != 0 || run(d, ar) != 0 || rename(tmp, lib) != 0) {
    unlink(tmp);
    return build_error(d, "cannot write %s", lib);
  }
  snprintf(path, sizeof path, "%s/%s.h", dir, m->name);
  TRY(write_text(d, path, write_header, m, p));
  char real[4096];
  pc_dir = realpath(dir, real) ? real : dir;
  snprintf(path, sizeof path, "%s/%s.pc", dir, m->name);
  return write_text(d, path, write_pc, m, p);
}

static int remove_tree(const char *dir) {
  char *argv[] = {"rm", "-rf", (char *)dir, NULL};
  pid_t pid;
  int status;
  if (posix_spawnp(&pid, "rm", NULL, NULL, argv, environ) != 0) return -1;
  return waitpid(pid, &status, 0) < 0 ? -1 : 0;
}

// One data source as the runtime reads it (include/kiln/abi.h): tab-separated.
static const char *data_line(KilnArena *a, const KilnDataSrc *s) {
  if (!s->present) return NULL;
  switch (s->kind) {
  case KILN_SOURCE_CSV: {
    char *line = kiln_arena_printf(a, "csv\t%s\t%d", s->path, s->header ? 1 : 0);
    for (int i = 0; i < s->nbind; i++)
      line = kiln_arena_printf(a, "%s\t%s:%lld:%lld", line, s->bind[i].input,
                               (long long)s->bind[i].col_begin, (long long)s->bind[i].col_end);
    return line;
  }
  case KILN_SOURCE_NPY: {
    char *line = "npy";
    for (int i = 0; i < s->nbind; i++)
      line = kiln_arena_printf(a, "%s\t%s=%s", line, s->bind[i].input, s->bind[i].path);
    return line;
  }
  case KILN_SOURCE_TEXT:
  case KILN_SOURCE_TOKENS:
    return kiln_arena_printf(a, "%s\t%s\t%s\t%s", s->kind == KILN_SOURCE_TEXT ? "text" : "tokens",
                             s->path, s->input, s->target);
  }
  return NULL;
}

static int index_of(const int32_t *ids, int n, int32_t id) {
  for (int i = 0; i < n; i++)
    if (ids[i] == id) return i;
  return -1;
}

// The training set-up the runtime reads: optimizer, schedule, length, data, loss.
static void train_desc(const KilnModel *m, KilnTrainDesc *t) {
  const KilnTrainCfg *c = &m->train;
  const KilnGraph *g = &m->graph;
  static const int32_t opt[] = {KILN_ABI_SGD, KILN_ABI_ADAM, KILN_ABI_ADAMW};
  static const int32_t sched[] = {KILN_ABI_SCHED_CONSTANT, KILN_ABI_SCHED_STEP, KILN_ABI_SCHED_COSINE};
  *t = (KilnTrainDesc){
      .optimizer = opt[c->opt], .schedule = sched[c->sched], .lr = c->lr, .momentum = c->momentum,
      .weight_decay = c->weight_decay, .beta1 = c->beta1, .beta2 = c->beta2, .eps = c->eps,
      .nesterov = c->nesterov, .shuffle = m->data.shuffle, .step_every = c->step_every,
      .gamma = c->gamma, .warmup = c->warmup, .min_lr = c->min_lr, .epochs = c->epochs,
      .steps = c->steps, .clip_grad_norm = c->clip_grad_norm, .val_split = m->data.val_split,
      .data_train = data_line((KilnArena *)&m->arena, &m->data.train),
      .data_eval = data_line((KilnArena *)&m->arena, &m->data.eval),
      .loss_kind = KILN_ABI_LOSS_NONE, .loss_pred_output = -1, .loss_target_input = -1};
  if (g->loss < 0) return;
  const KilnNode *l = &g->nodes[g->loss];
  t->loss_kind = l->op == KILN_OP_CROSS_ENTROPY ? KILN_ABI_LOSS_CE
                 : l->op == KILN_OP_MSE         ? KILN_ABI_LOSS_MSE
                                                : KILN_ABI_LOSS_BCE;
  t->loss_pred_output = index_of(g->outputs, g->noutputs, l->in[0]);
  t->loss_target_input = index_of(m->inputs, m->ninputs, l->in[1]);
}

// Optimizer tensors per parameter: Adam keeps two moments, SGD with momentum one.
static int opt_state_count(const KilnTrainCfg *c) {
  if (c->opt != KILN_OPT_SGD) return 2;
  return c->momentum > 0 ? 1 : 0;
}

//
// Generation. A language model (an i32 token input [batch, T] that an embedding
// reads, and logits [batch, T, vocab] as its first output) is lowered twice more
// (compiler.h, KilnGenMode): a decode model and a batch-1 window model, built into
// the same object with the main model's parameter layout.
//
typedef struct {
  KilnModel m;
  KilnPlan plan;
} GenModel;

// T of the token input when m is a language model, else 0.
static int64_t lm_context(const KilnModel *m) {
  const KilnGraph *g = &m->graph;
  if (g->noutputs < 1) return 0;
  const KilnNode *out = &g->nodes[g->outputs[0]];
  for (int i = 0; i < m->ninputs; i++) {
    const KilnNode *x = &g->nodes[m->inputs[i]];
    bool read = false;
    for (int j = 0; j < g->nnodes; j++)
      read |= g->nodes[j].op == KILN_OP_EMBEDDING && g->nodes[j].in[0] == m->inputs[i];
    if (read && x->dtype == KILN_I32 && x->rank == 2 && out->dtype == KILN_F32 && out->rank == 3 &&
        out->shape[0] == x->shape[0] && out->shape[1] == x->shape[1])
      return x->shape[1];
  }
  return 0;
}

// Gives the sub-model's parameters the main model's offsets (matched by name and
// shape); -1 when one has no match.
static int share_params(const KilnModel *main, const KilnPlan *mp, GenModel *sub, char *why,
                        size_t len) {
  const KilnGraph *g = &sub->m.graph;
  for (int i = 0; i < g->nnodes; i++) {
    const KilnNode *n = &g->nodes[i];
    if (n->op != KILN_OP_PARAM) continue;
    int32_t j = kiln_graph_find(&main->graph, n->name);
    const KilnNode *x = j >= 0 ? &main->graph.nodes[j] : NULL;
    if (!x || x->op != KILN_OP_PARAM || x->rank != n->rank ||
        memcmp(x->shape, n->shape, sizeof(int64_t) * (size_t)n->rank) != 0) {
      snprintf(why, len, "its parameter '%s' differs from the model's", n->name);
      return -1;
    }
    sub->plan.offset[i] = mp->offset[j];
  }
  sub->plan.weights_bytes = mp->weights_bytes;
  return 0;
}

// Lowers, optimizes and plans one generation model. A model that cannot generate
// (its layers cannot run one token at a time) still builds: a warning says why.
static int gen_model(KilnDiag *d, const KilnModel *main, const KilnPlan *mp,
                     const KilnBuildOpts *o, KilnGenMode mode, int64_t context, int level,
                     GenModel *out) {
  char *msg = NULL, why[512] = "";
  size_t len = 0;
  FILE *f = open_memstream(&msg, &len);
  if (!f) return -1;
  KilnDiag gd;
  kiln_diag_init(&gd, f);
  int rc = kiln_model_load_gen(&out->m, &gd, o->model, o->dims, o->ndims, mode, context);
  if (rc == 0) {
    out->m.graph.loss = -1;  // generation needs the logits only
    KilnPipelineOpts po = {.out = f, .training = false, .level = level};
    rc = kiln_pipeline_run(&out->m.graph, &po, f);
  }
  if (rc == 0) {
    kiln_plan_build(&out->m.graph, &out->m.arena, 0, &out->plan);
    rc = share_params(main, mp, out, why, sizeof why);
  }
  fclose(f);
  if (rc != 0) {
    if (!why[0] && msg) snprintf(why, sizeof why, "%.*s", (int)strcspn(msg, "\n"), msg);
    fprintf(d->out, "%s: warning: '%s' is built without text generation: %s\n", o->model,
            main->name, why);
  }
  free(msg);
  return rc;
}

static int emit(KilnDiag *d, KilnModel *m, const KilnPlan *pl, const KilnBuildOpts *o,
                const GenModel *dec, const GenModel *win, int64_t context);

static int compile(KilnDiag *d, KilnModel *m, const KilnBuildOpts *o) {
  // A model with a loss is compiled for training too: autodiff runs.
  bool training = m->graph.loss >= 0;
  if (training && !m->train.present) {
    // No train section: the documented defaults (sgd, lr 0.01, one epoch).
    m->train = (KilnTrainCfg){.present = false, .opt = KILN_OPT_SGD, .lr = 0.01, .beta1 = 0.9,
                              .beta2 = 0.999, .eps = 1e-8, .gamma = 0.1, .epochs = 1};
  }
  KilnPipelineOpts po = {.print_after = o->print_after, .out = stdout, .training = training,
                         .level = o->graph_level >= 0 ? o->graph_level
                                  : o->opt_level < 2 ? o->opt_level : 2,
                         .time_passes = o->time_passes};
  int64_t context = lm_context(m);
  TRY(kiln_pipeline_run(&m->graph, &po, d->out));
  KilnPlan plan;
  kiln_plan_build(&m->graph, &m->arena, opt_state_count(&m->train), &plan);
  GenModel dec = {0}, win = {0};
  bool gen = context > 0 &&
             gen_model(d, m, &plan, o, KILN_GEN_DECODE, context, po.level, &dec) == 0 &&
             gen_model(d, m, &plan, o, KILN_GEN_WINDOW, context, po.level, &win) == 0;
  int rc = emit(d, m, &plan, o, gen ? &dec : NULL, gen ? &win : NULL, context);
  kiln_model_free(&dec.m);
  kiln_model_free(&win.m);
  return rc;
}

// Code generation, then the object, executable or library.
static int emit(KilnDiag *d, KilnModel *m, const KilnPlan *pl, const KilnBuildOpts *o,
                const GenModel *dec, const GenModel *win, int64_t context) {
  bool training = m->graph.loss >= 0;
  KilnPlan plan = *pl;
  KilnTrainDesc td;
  train_desc(m, &td);
  char err[1024];
  KilnTargetOpts to = {o->cpu, o->opt_level};
  LLVMTargetMachineRef tm = kiln_cpu_target(&to, err, sizeof err);
  if (!tm) return build_error(d, "%s", err);
  KilnCg cg = {0};
  KilnModuleOpts mo = {KILN_VERSION, o->emit == KILN_BUILD_LIB, m->train.seed, tm,
                       training ? &td : NULL};
  if (dec)
    mo.decode = &dec->m.graph, mo.window = &win->m.graph, mo.decode_plan = &dec->plan,
    mo.window_plan = &win->plan, mo.context = context;
  if (o->cuda) {
#ifdef KILN_HAVE_CUDA
    int archs[8];
    int narchs = kiln_cuda_parse_archs(o->gpu_arch ? o->gpu_arch : "sm_80,sm_90", archs, 8, err,
                                       sizeof err);
    if (narchs < 0) {
      LLVMDisposeTargetMachine(tm);
      return build_error(d, "%s", err);
    }
    // The kernel cache: KILN_CACHE_MAX_MB bounds it (default 512 MiB).
    char cache_buf[4096];
    const char *cache = kiln_cuda_cache_dir(cache_buf, sizeof cache_buf), *max = getenv("KILN_CACHE_MAX_MB");
    char *end = NULL;
    long long mb = max && *max ? strtoll(max, &end, 10) : 512;
    if (max && *max && (*end || mb < 1 || mb > (1ll << 40))) {
      LLVMDisposeTargetMachine(tm);
      return build_error(d, "KILN_CACHE_MAX_MB=%s: expected a size in MiB, 1 or more", max);
    }
    FILE *stats = NULL;
    if (o->kernel_stats)
      stats = strcmp(o->kernel_stats, "-") == 0 ? stdout : fopen(o->kernel_stats, "w");
    if (o->kernel_stats && !stats) {
      LLVMDisposeTargetMachine(tm);
      return build_error(d, "cannot write %s: %s", o->kernel_stats, strerror(errno));
    }
    char *cerr = kiln_xmalloc(1 << 16), srcpath[8192];
    beside(srcpath, sizeof srcpath, o->output);
    bool src_only = o->emit == KILN_BUILD_CUDA;
    KilnCudaOpts co = {archs, narchs, src_only ? srcpath : o->cuda_source, stats, cache, mb << 20,
                       o->time_passes ? stderr : NULL,
                       o->gpu_matmul_bf16 ? KILN_CUDA_MATMUL_BF16 : KILN_CUDA_MATMUL_F32};
    int crc = kiln_cuda_module(&cg, &m->graph, &plan, &mo, &co, cerr, 1 << 16);
    if (stats && stats != stdout && fclose(stats) != 0 && crc == 0)
      crc = -1, snprintf(cerr, 1 << 16, "cannot write %s", o->kernel_stats);
    if (crc == 0 && src_only && rename(srcpath, o->output) != 0)
      crc = -1, snprintf(cerr, 1 << 16, "cannot write %s: %s", o->output, strerror(errno));
    if (crc != 0 || src_only) {
      if (src_only) unlink(srcpath);
      if (crc == 0) kiln_cpu_module_free(&cg);
      LLVMDisposeTargetMachine(tm);
      if (crc != 0) build_error(d, "%s", cerr);
      free(cerr);
      return crc;
    }
    free(cerr);
#else
    LLVMDisposeTargetMachine(tm);
    return build_error(d, "--target=cuda: this kiln was built without the CUDA toolkit (NVRTC); "
                          "install it and rebuild kiln (docs/cuda.md)");
#endif
  } else {
    kiln_cpu_module(&cg, &m->graph, &plan, &mo);
  }
  char tmpdir[] = "/tmp/kiln-build-XXXXXX", obj[4096];
  if (!mkdtemp(tmpdir)) {
    kiln_cpu_module_free(&cg);
    LLVMDisposeTargetMachine(tm);
    return build_error(d, "cannot create a temporary folder: %s", strerror(errno));
  }
  snprintf(obj, sizeof obj, "%s/%s.o", tmpdir, m->name);
  KilnEmitKind kind = o->emit == KILN_BUILD_ASM ? KILN_EMIT_ASM
                      : o->emit == KILN_BUILD_LLVM ? KILN_EMIT_LLVM : KILN_EMIT_OBJ;
  bool direct = o->emit == KILN_BUILD_OBJ || o->emit == KILN_BUILD_ASM || o->emit == KILN_BUILD_LLVM;
  char tmpout[8192];
  beside(tmpout, sizeof tmpout, o->output);
  int rc = kiln_cpu_emit(cg.mod, tm, o->opt_level, kind, direct ? tmpout : obj, err, sizeof err);
  kiln_cpu_module_free(&cg);
  LLVMDisposeTargetMachine(tm);
  if (rc != 0) build_error(d, "%s", err);
  else if (direct && rename(tmpout, o->output) != 0)
    rc = build_error(d, "cannot write %s: %s", o->output, strerror(errno));
  else if (o->emit == KILN_BUILD_EXE) rc = link_exe(d, obj, o->output, o->mpi, o->cuda);
  else if (o->emit == KILN_BUILD_LIB)
    header_generate = dec != NULL, pc_cuda = o->cuda, rc = write_lib(d, m, &plan, obj, o->output);
  if (rc != 0 && direct) unlink(tmpout);
  remove_tree(tmpdir);
  return rc;
}

int kiln_build(KilnDiag *d, const KilnBuildOpts *o) {
  KilnModel m;
  int rc = kiln_model_load(&m, d, o->model, o->dims, o->ndims);
  if (rc == 0) rc = compile(d, &m, o);
  kiln_model_free(&m);
  return rc;
}
