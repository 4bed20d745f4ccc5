// `kiln weights convert`: moves a weights file between PyTorch's conventions and
// Kiln's for one model. Two things differ (docs/onnx.md):
// - names: a Kiln name is an identifier, so the module path of a PyTorch
//   parameter ("net.0.weight") has its dots made underscores ("net_0.weight");
// - layout: a matrix that a matmul multiplies from the right (the weight of a
//   dense layer, an attention projection) is [in, out] in Kiln, [out, in] in
//   torch.nn.Linear, so such matrices are transposed.
// The converted tensors are checked against the model, with every missing, unexpected
// and misshapen one listed.
#include <getopt.h>
#include <stdlib.h>
#include <string.h>

#include "compiler/compiler.h"
#include "runtime/runtime.h"

char *kiln_torch_module_name(KilnArena *a, const char *path, size_t len) {
  char *s = kiln_arena_printf(a, "%s%.*s", len && path[0] >= '0' && path[0] <= '9' ? "_" : "",
                              (int)len, path);
  for (char *p = s; *p; p++)
    if (!(*p == '_' || (*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z')))
      *p = '_';
  return s;
}

// "net.0.weight" -> "net_0.weight": the module path mangled, the last part kept.
static char *kiln_name(KilnArena *a, const char *torch) {
  const char *dot = strrchr(torch, '.');
  if (!dot) return kiln_torch_module_name(a, torch, strlen(torch));
  return kiln_arena_printf(a, "%s%s", kiln_torch_module_name(a, torch, (size_t)(dot - torch)), dot);
}

// Whether param p is multiplied from the right by a matmul that reads it as is:
// stored [in, out] here, [out, in] by torch.nn.Linear.
static bool right_operand(const KilnGraph *g, int32_t p) {
  for (int i = 0; i < g->nnodes; i++) {
    const KilnNode *n = &g->nodes[i];
    if (n->op == KILN_OP_MATMUL && n->nin == 2 && n->in[1] == p && !n->attr.trans_b) return true;
  }
  return false;
}

typedef struct {
  KilnTensorDesc *params;   // the model's parameters, in graph order
  bool *transpose;          // per parameter: stored transposed by PyTorch
  int n;
} ParamList;

static void param_list(const KilnModel *m, ParamList *out) {
  const KilnGraph *g = &m->graph;
  KilnArena *a = (KilnArena *)&m->arena;
  out->params = kiln_arena_alloc(a, (size_t)(g->nnodes + 1) * sizeof *out->params);
  out->transpose = kiln_arena_alloc(a, (size_t)(g->nnodes + 1) * sizeof *out->transpose);
  out->n = 0;
  for (int i = 0; i < g->nnodes; i++) {
    const KilnNode *n = &g->nodes[i];
    if (n->op != KILN_OP_PARAM) continue;
    KilnTensorDesc *t = &out->params[out->n];
    *t = (KilnTensorDesc){.name = n->name, .dtype = KILN_ABI_F32, .rank = n->rank,
                          .bytes = kiln_node_numel(n) * (int64_t)sizeof(float)};
    memcpy(t->shape, n->shape, sizeof(int64_t) * (size_t)n->rank);
    out->transpose[out->n++] = n->rank == 2 && right_operand(g, i);
  }
}

static void transpose2(const float *in, float *out, int64_t rows, int64_t cols) {
  for (int64_t r = 0; r < rows; r++)
    for (int64_t c = 0; c < cols; c++) out[c * rows + r] = in[r * cols + c];
}

static int find_param(const ParamList *pl, const char *name) {
  for (int i = 0; i < pl->n; i++)
    if (strcmp(pl->params[i].name, name) == 0) return i;
  return -1;
}

// A checkpoint's optimizer state (compiler/cpu/module.c names it): PyTorch keeps
// it in the optimizer, not in a state_dict, so it stays behind.
static bool optimizer_state(const char *name) {
  return !strncmp(name, "adam.m.", 7) || !strncmp(name, "adam.v.", 7) || !strncmp(name, "sgd.v.", 6);
}

static int entry_order(const void *a, const void *b) {
  return strcmp(((const KilnStEntry *)a)->name, ((const KilnStEntry *)b)->name);
}

// The file's tensors in the model's terms (Kiln names, Kiln layout), in conv:
// entries renamed and transposed in a copy of the data.
static void to_kiln(KilnArena *a, const KilnStFile *in, const ParamList *pl, bool from_torch,
                    KilnStFile *conv) {
  *conv = (KilnStFile){.entries = kiln_arena_alloc(a, (size_t)(in->n + 1) * sizeof *conv->entries),
                       .n = in->n, .data = kiln_arena_alloc(a, (size_t)in->data_len + 1),
                       .data_len = in->data_len};
  conv->n = 0;
  for (int i = 0; i < in->n; i++) {
    if (!from_torch && optimizer_state(in->entries[i].name)) continue;
    KilnStEntry *e = &conv->entries[conv->n++];
    *e = in->entries[i];
    if (from_torch) snprintf(e->name, sizeof e->name, "%s", kiln_name(a, in->entries[i].name));
    const unsigned char *src = in->data + e->begin;
    int p = find_param(pl, e->name);
    if (from_torch && p >= 0 && pl->transpose[p] && e->rank == 2 && e->dtype == KILN_ABI_F32) {
      transpose2((const float *)src, (float *)(conv->data + e->begin), e->shape[0], e->shape[1]);
      int64_t r = e->shape[0];
      e->shape[0] = e->shape[1], e->shape[1] = r;
    } else {
      memcpy(conv->data + e->begin, src, (size_t)(e->end - e->begin));
    }
  }
  qsort(conv->entries, (size_t)conv->n, sizeof *conv->entries, entry_order);  // kiln_st_find
}

// Writes the parameters from conv (checked to fit) to path; to torch: transposed back.
static int write_out(KilnArena *a, const KilnStFile *conv, const ParamList *pl, bool to_torch,
                     const char *path, KilnStatus *st) {
  const void **data = kiln_arena_alloc(a, (size_t)(pl->n + 1) * sizeof *data);
  KilnTensorDesc *descs = kiln_arena_alloc(a, (size_t)(pl->n + 1) * sizeof *descs);
  for (int i = 0; i < pl->n; i++) {
    const KilnStEntry *e = kiln_st_find(conv, pl->params[i].name);
    descs[i] = pl->params[i];
    data[i] = conv->data + e->begin;
    if (to_torch && pl->transpose[i]) {
      float *t = kiln_arena_alloc(a, (size_t)descs[i].bytes);
      transpose2(data[i], t, e->shape[0], e->shape[1]);
      descs[i].shape[0] = e->shape[1], descs[i].shape[1] = e->shape[0];
      data[i] = t;
    }
  }
  return kiln_st_write(path, descs, data, pl->n, NULL, NULL, 0, st);
}

typedef struct {
  const char *model, *input, *output;
  bool from_torch;
  KilnDimOverride dims[64];
  int ndims;
} ConvertOpts;

static int convert(const ConvertOpts *o) {
  KilnDiag d;
  kiln_diag_init(&d, stderr);
  KilnModel m;
  KilnStFile in = {0};
  KilnStatus st = {0};
  int rc = kiln_model_load(&m, &d, o->model, o->dims, o->ndims) != 0 ? 1 : 0;
  if (rc == 0 && kiln_st_read(o->input, &in, &st) != 0) rc = 1;
  if (rc == 0) {
    ParamList pl;
    param_list(&m, &pl);
    KilnStFile conv;
    to_kiln(&m.arena, &in, &pl, o->from_torch, &conv);
    KilnModelDesc desc = {.name = m.name, .nparams = pl.n, .params = pl.params};
    if (kiln_ctx_check_file(&desc, &conv, o->input, false, &st) != 0 ||
        write_out(&m.arena, &conv, &pl, !o->from_torch, o->output, &st) != 0)
      rc = 1;
  }
  if (rc && st.msg[0]) fprintf(stderr, "kiln weights: error: %s\n", st.msg);
  if (rc && st.msg[0] && o->from_torch)
    fputs("kiln weights: note: names and shapes are after conversion to Kiln's (module dots\n"
          "  to '_', Linear weights transposed to [in, out])\n", stderr);
  kiln_st_free(&in);
  kiln_model_free(&m);
  return rc;
}

static void weights_usage(FILE *f) {
  fputs("usage: kiln weights convert --from torch|--to torch [options] MODEL.yaml IN -o OUT\n"
        "\n"
        "Converts a safetensors weights file for MODEL between PyTorch's conventions\n"
        "and Kiln's. --from torch: a state_dict's names ('net.0.weight') become Kiln's\n"
        "('net_0.weight') and Linear weights [out, in] become [in, out]; --to torch:\n"
        "the layout back, Kiln's names kept, a checkpoint's optimizer state left out.\n"
        "The result is checked against the model:\n"
        "missing, unexpected and misshapen tensors are all listed.\n"
        "\n"
        "options:\n"
        "  --from torch, --to torch   the direction\n"
        "  -o, --output FILE          the converted file (required)\n"
        "  --dim NAME=VALUE           override a dim of the model (repeatable)\n"
        "  -h, --help                 show this help\n",
        f);
}

static int dim_arg(const char *arg, KilnDimOverride *out) {
  const char *eq = strchr(arg, '=');
  char *end;
  if (!eq || eq == arg) return -1;
  long long v = strtoll(eq + 1, &end, 10);
  if (*end || end == eq + 1 || v < 1) return -1;
  out->name = strndup(arg, (size_t)(eq - arg));
  out->value = v;
  return out->name ? 0 : -1;
}

// Returns 0 to go on, -1 when help was shown, 2 on bad usage.
static int convert_args(int argc, char **argv, ConvertOpts *o) {
  static const struct option longs[] = {
      {"from", required_argument, NULL, 'F'}, {"to", required_argument, NULL, 'T'},
      {"output", required_argument, NULL, 'o'}, {"dim", required_argument, NULL, 'D'},
      {"help", no_argument, NULL, 'h'},       {0}};
  int c, dirs = 0;
  while ((c = getopt_long(argc, argv, "o:h", longs, NULL)) != -1) {
    switch (c) {
    case 'F':
    case 'T':
      if (strcmp(optarg, "torch") != 0) {
        fprintf(stderr, "kiln weights: --%s expects 'torch', got '%s'\n", c == 'F' ? "from" : "to",
                optarg);
        return 2;
      }
      o->from_torch = c == 'F';
      dirs++;
      break;
    case 'o': o->output = optarg; break;
    case 'D':
      if (o->ndims == 64 || dim_arg(optarg, &o->dims[o->ndims]) != 0) {
        fprintf(stderr, "kiln weights: --dim expects NAME=VALUE with VALUE >= 1, got '%s'\n", optarg);
        return 2;
      }
      o->ndims++;
      break;
    case 'h': weights_usage(stdout); return -1;
    default: weights_usage(stderr); return 2;
    }
  }
  const char *why = dirs != 1 ? "give one of --from torch and --to torch"
                    : !o->output ? "give the output file with -o"
                    : argc - optind != 2 ? "give the model file and the weights file" : NULL;
  if (why) {
    fprintf(stderr, "kiln weights convert: %s\n", why);
    weights_usage(stderr);
    return 2;
  }
  o->model = argv[optind];
  o->input = argv[optind + 1];
  return 0;
}

int kiln_weights_main(int argc, char **argv) {
  if (argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
    weights_usage(stdout);
    return 0;
  }
  if (argc < 2 || strcmp(argv[1], "convert") != 0) {
    fprintf(stderr, "kiln weights: expected the subcommand 'convert'\n");
    weights_usage(stderr);
    return 2;
  }
  ConvertOpts o = {0};
  int rc = convert_args(argc - 1, argv + 1, &o);
  if (rc == 0) rc = convert(&o);
  for (int i = 0; i < o.ndims; i++) free((char *)o.dims[i].name);
  return rc < 0 ? 0 : rc;
}
