// Writes the reference interpreter's results on seeded random inputs, for
// tests/interp_check.py to recompute with NumPy. Each case is a graph of source
// nodes and one op node (the last); several shapes per op, odd sizes (1, 3, 7, 17)
// and broadcasting among them. Into the folder named by argv[1] it writes
//   cNNNN_inK.npy  input K of the op node as the interpreter saw it (f8; i4 for i32)
//   cNNNN_out.npy  the op node's result (f8)
//   cases.jsonl    one JSON object per case: op, attributes, node index, options, files
//   ops.txt        every op of the table, one spelling a line
// and exits non-zero if the interpreter fails or an op of the table has no case.
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "ir/ir.h"

// How a source node is filled.
typedef enum {
  F_SIGNED,  // uniform in [-2, 2]
  F_WIDE,    // uniform in [-40, 40]: both branches of sigmoid, softmax stability
  F_POS,     // exp(uniform in [-5, 5]): log, sqrt, rsqrt, fractional pow
  F_AWAY,    // +-uniform in [0.5, 2]: divisors, negative exponents
  F_COND,    // 0 half of the time, else uniform in [-2, 2]: where's condition
  F_UNIT,    // uniform in [0, 1]: binary_cross_entropy labels
  F_INT,     // integers in [0, k): ids and labels
  F_SMALL,   // integers in [-50, 50]: i32 arithmetic and layout
} Fill;

// The case being built: one graph in its own arena.
static struct {
  KilnArena arena;
  KilnGraph g;
  Fill fill[KILN_MAX_INPUTS + 1];  // of each source node, by node index
  int64_t k[KILN_MAX_INPUTS + 1];  // F_INT's bound
  KilnInterpOpts opts;
} cur;

static const char *outdir;
static FILE *jsonl;
static int ncases;
static bool covered[KILN_OP_COUNT];
static uint64_t rng = 0x6b696c6e;  // "kiln"

_Noreturn __attribute__((format(printf, 1, 2))) static void die(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "interp_cases: ");
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  exit(1);
}

// SplitMix64 for the inputs; any good stream would do.
static uint64_t next_u64(void) {
  uint64_t z = (rng += UINT64_C(0x9e3779b97f4a7c15));
  z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
  z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
  return z ^ (z >> 31);
}

static double uniform(double lo, double hi) {
  return lo + (hi - lo) * (double)(next_u64() >> 11) * 0x1p-53;
}

static double draw(Fill f, int64_t k) {
  switch (f) {
  case F_SIGNED: return uniform(-2, 2);
  case F_WIDE: return uniform(-40, 40);
  case F_POS: return exp(uniform(-5, 5));
  case F_AWAY: return (next_u64() & 1 ? 1 : -1) * uniform(0.5, 2);
  case F_COND: return next_u64() & 1 ? 0.0 : uniform(-2, 2);
  case F_UNIT: return uniform(0, 1);
  case F_INT: return (double)(next_u64() % (uint64_t)k);
  case F_SMALL: return (double)((int64_t)(next_u64() % 101) - 50);
  }
  return 0;
}

//
// Building a case.
//
static void begin(void) {
  memset(&cur, 0, sizeof cur);
  kiln_graph_init(&cur.g, &cur.arena, "interp_case");
}

static const KilnLoc LOC = {"interp_cases", 1, 1};

// A node with the attribute defaults the front end gives.
static int32_t add_node(KilnOp op, const int32_t *in, int nin) {
  char name[16];
  snprintf(name, sizeof name, "n%d", cur.g.nnodes);
  int32_t id = kiln_graph_add(&cur.g, op, in, nin, name, LOC);
  KilnAttrs *a = &cur.g.nodes[id].attr;
  for (const KilnAttrSpec *s = kiln_op(op)->attrs; s->name; s++) {
    char *p = (char *)a + s->offset;
    switch (s->type) {
    case KILN_ATTR_INT: *(int64_t *)p = (int64_t)s->dflt; break;
    case KILN_ATTR_FLOAT: *(double *)p = s->dflt; break;
    case KILN_ATTR_BOOL: *(bool *)p = s->dflt != 0; break;
    case KILN_ATTR_INTS: a->nints = 0; break;
    }
  }
  return id;
}

// A source typed like "f32[3,17]" or "i32[]", filled as f says.
static int32_t src_k(const char *spec, Fill f, int64_t k) {
  int32_t id = add_node(KILN_OP_INPUT, NULL, 0);
  KilnNode *n = &cur.g.nodes[id];
  if (id > KILN_MAX_INPUTS) die("too many sources");
  n->dtype = strncmp(spec, "i32", 3) == 0 ? KILN_I32 : KILN_F32;
  for (const char *p = strchr(spec, '[') + 1; *p != ']'; p += *p == ',') {
    char *end;
    n->shape[n->rank++] = strtoll(p, &end, 10);
    p = end;
  }
  cur.fill[id] = f;
  cur.k[id] = k;
  return id;
}

static int32_t src(const char *spec, Fill f) { return src_k(spec, f, 0); }

static int32_t konst(double value) {
  int32_t id = add_node(KILN_OP_CONST, NULL, 0);
  cur.g.nodes[id].attr.value = value;
  return id;
}

#define COUNT(...) (int)(sizeof((const int32_t[]){__VA_ARGS__}) / sizeof(int32_t))
#define OP(op, ...) add_node(op, (const int32_t[]){__VA_ARGS__}, COUNT(__VA_ARGS__))

static KilnAttrs *A(int32_t id) { return &cur.g.nodes[id].attr; }

// Sets attr.ints of node id (evaluated once) to the listed values.
#define SET_INTS(id, ...)                                                           \
  do {                                                                              \
    const int64_t v_[] = {__VA_ARGS__};                                             \
    KilnAttrs *a_ = A(id);                                                          \
    a_->nints = (int)(sizeof v_ / sizeof v_[0]);                                    \
    memcpy(a_->ints, v_, sizeof v_);                                                \
  } while (0)

//
// Writing a case.
//
// A .npy file (format 1.0) of n's shape: doubles as '<f8', or int32 as '<i4'.
static void write_npy(const char *file, const KilnNode *n, const double *v, bool as_i32) {
  char path[512], dict[256], dims[160] = "(";
  snprintf(path, sizeof path, "%s/%s", outdir, file);
  FILE *f = fopen(path, "wb");
  if (!f) die("cannot write %s", path);
  for (int d = 0; d < n->rank; d++)
    snprintf(dims + strlen(dims), sizeof dims - strlen(dims), "%lld%s", (long long)n->shape[d],
             n->rank == 1 ? "," : d + 1 < n->rank ? ", " : "");
  strcat(dims, ")");
  int len = snprintf(dict, sizeof dict, "{'descr': '%s', 'fortran_order': False, 'shape': %s, }",
                     as_i32 ? "<i4" : "<f8", dims);
  int total = 10 + len + 1, pad = (64 - total % 64) % 64;  // header + '\n', to 64 bytes
  unsigned hlen = (unsigned)(len + pad + 1);
  fwrite("\x93NUMPY\x01\x00", 1, 8, f);
  fputc((int)(hlen & 0xff), f);
  fputc((int)(hlen >> 8), f);
  fprintf(f, "%s%*s\n", dict, pad, "");
  for (int64_t i = 0; i < kiln_node_numel(n); i++) {
    unsigned char b[8];
    if (as_i32) {
      uint32_t u = (uint32_t)(int32_t)v[i];
      for (int j = 0; j < 4; j++) b[j] = (unsigned char)(u >> (8 * j));
      fwrite(b, 1, 4, f);
    } else {
      uint64_t u;
      memcpy(&u, &v[i], 8);
      for (int j = 0; j < 8; j++) b[j] = (unsigned char)(u >> (8 * j));
      fwrite(b, 1, 8, f);
    }
  }
  if (fclose(f)) die("cannot write %s", path);
}

// A double as JSON (Python's json reads Infinity and NaN too).
static void json_num(double x) {
  if (isnan(x)) fputs("NaN", jsonl);
  else if (isinf(x)) fputs(x > 0 ? "Infinity" : "-Infinity", jsonl);
  else fprintf(jsonl, "%.17g", x);
}

static void json_attrs(const KilnAttrs *a) {
  fputs("{\"ints\": [", jsonl);
  for (int i = 0; i < a->nints; i++) fprintf(jsonl, "%s%lld", i ? ", " : "", (long long)a->ints[i]);
  fprintf(jsonl, "], \"axis\": %lld, \"start\": %lld, \"end\": %lld, \"heads\": %lld",
          (long long)a->axis, (long long)a->start, (long long)a->end, (long long)a->heads);
  fprintf(jsonl, ", \"key\": %lld, \"size\": %lld", (long long)a->key, (long long)a->size);
  const struct {
    const char *name;
    double v;
  } nums[] = {{"exponent", a->exponent}, {"lo", a->lo}, {"hi", a->hi},
              {"p", a->p},               {"eps", a->eps}, {"value", a->value}};
  for (size_t i = 0; i < sizeof nums / sizeof nums[0]; i++) {
    fprintf(jsonl, ", \"%s\": ", nums[i].name);
    json_num(nums[i].v);
  }
  fprintf(jsonl, ", \"keepdims\": %s, \"causal\": %s, \"trans_a\": %s, \"trans_b\": %s}",
          a->keepdims ? "true" : "false", a->causal ? "true" : "false",
          a->trans_a ? "true" : "false", a->trans_b ? "true" : "false");
}

// Infers every node, fills the sources, runs the interpreter and writes the case.
// For a source op alone (input, param) the "input" is the value given before the run.
static void finish(void) {
  char err[512], file[64];
  KilnGraph *g = &cur.g;
  int32_t last = g->nnodes - 1;
  for (int32_t i = 0; i <= last; i++)
    if (kiln_graph_infer(g, i, err, sizeof err)) die("case %d: node %d: %s", ncases, i, err);
  double **values = kiln_arena_alloc(&cur.arena, (size_t)g->nnodes * sizeof *values);
  for (int32_t i = 0; i <= last; i++) {
    const KilnNode *n = &g->nodes[i];
    values[i] = kiln_arena_alloc(&cur.arena, (size_t)kiln_node_numel(n) * sizeof(double));
    if (n->op == KILN_OP_INPUT || n->op == KILN_OP_PARAM)
      for (int64_t j = 0; j < kiln_node_numel(n); j++) values[i][j] = draw(cur.fill[i], cur.k[i]);
    if (n->op == KILN_OP_CONST) values[i][0] = n->attr.value;  // as the run will
  }
  const KilnNode *n = &g->nodes[last];
  double *given = kiln_arena_alloc(&cur.arena, (size_t)kiln_node_numel(n) * sizeof(double));
  memcpy(given, values[last], (size_t)kiln_node_numel(n) * sizeof(double));
  // Inputs are written before the run: decoding ops update their state inputs.
  bool source = kiln_op(n->op)->fuse == KILN_FUSE_SOURCE;
  int nin = source ? (n->op == KILN_OP_CONST ? 0 : 1) : n->nin;
  for (int k = 0; k < nin; k++) {
    const KilnNode *x = source ? n : &g->nodes[n->in[k]];
    snprintf(file, sizeof file, "c%04d_in%d.npy", ncases, k);
    write_npy(file, x, source ? given : values[n->in[k]], x->dtype == KILN_I32);
  }
  if (kiln_interp_run(g, values, &cur.opts, err, sizeof err))
    die("case %d (%s): %s", ncases, kiln_op(n->op)->name, err);

  fprintf(jsonl, "{\"case\": %d, \"op\": \"%s\", \"node\": %d, \"training\": %s, \"seed\": %llu",
          ncases, kiln_op(n->op)->name, last, cur.opts.training ? "true" : "false",
          (unsigned long long)cur.opts.seed);
  fputs(", \"inputs\": [", jsonl);
  for (int k = 0; k < nin; k++) fprintf(jsonl, "%s\"c%04d_in%d.npy\"", k ? ", " : "", ncases, k);
  snprintf(file, sizeof file, "c%04d_out.npy", ncases);
  write_npy(file, n, values[last], false);
  fprintf(jsonl, "], \"output\": \"%s\", \"out_shape\": [", file);
  for (int d = 0; d < n->rank; d++) fprintf(jsonl, "%s%lld", d ? ", " : "", (long long)n->shape[d]);
  fputs("], \"attrs\": ", jsonl);
  json_attrs(&n->attr);
  fputs("}\n", jsonl);

  covered[n->op] = true;
  ncases++;
  kiln_arena_free(&cur.arena);
}

//
// The cases.
//
static void source_cases(void) {
  begin();
  src("f32[3,7]", F_SIGNED);
  finish();
  begin();
  int32_t p = src("f32[17]", F_SIGNED);
  cur.g.nodes[p].op = KILN_OP_PARAM;
  finish();
  begin();
  konst(2.5);
  finish();
  begin();
  int32_t c = konst(-0.75);
  cur.g.nodes[c].rank = 2;
  cur.g.nodes[c].shape[0] = 3;
  cur.g.nodes[c].shape[1] = 1;
  finish();
}

// Every op of the table with scalar semantics and one input, on each shape, with
// its default attributes; then the attributes of pow and clamp, and dropout.
static void unary_cases(void) {
  static const char *const shapes[] = {"f32[]", "f32[1]", "f32[7]", "f32[3,17]", "f32[2,3,5]"};
  for (int op = 0; op < KILN_OP_COUNT; op++) {
    const KilnOpInfo *info = kiln_op((KilnOp)op);
    if (!info->scalar || info->min_in != 1) continue;
    bool pos = op == KILN_OP_LOG || op == KILN_OP_SQRT || op == KILN_OP_RSQRT || op == KILN_OP_POW;
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
      begin();
      int32_t y = OP((KilnOp)op, src(shapes[s], pos ? F_POS : F_SIGNED));
      if (op == KILN_OP_POW) A(y)->exponent = 0.5;
      finish();
    }
    begin();
    OP((KilnOp)op, src("f32[4,9]", pos ? F_POS : F_WIDE));
    if (op == KILN_OP_POW) A(cur.g.nnodes - 1)->exponent = 1.7;
    finish();
  }
  const struct {
    double e;
    Fill f;
  } pows[] = {{2, F_SIGNED}, {3, F_SIGNED}, {-1, F_AWAY}, {-2, F_AWAY}, {0, F_SIGNED},
              {-0.5, F_POS}, {2.5, F_POS}};
  for (size_t i = 0; i < sizeof pows / sizeof pows[0]; i++) {
    begin();
    A(OP(KILN_OP_POW, src("f32[3,7]", pows[i].f)))->exponent = pows[i].e;
    finish();
  }
  const double clamps[][2] = {{-0.5, 1}, {-HUGE_VAL, 0.3}, {0.2, HUGE_VAL}, {1, 1}};
  for (size_t i = 0; i < sizeof clamps / sizeof clamps[0]; i++) {
    begin();
    int32_t y = OP(KILN_OP_CLAMP, src("f32[17]", F_SIGNED));
    A(y)->lo = clamps[i][0];
    A(y)->hi = clamps[i][1];
    finish();
  }
}

// Inference (identity) and training, several p, seeds and keys (the stream is
// named by attr.key, never by the node's index: sources before x move the index
// and must change nothing).
static void dropout_cases(void) {
  const struct {
    const char *shape;
    double p;
    bool training;
    uint64_t seed;
    int64_t key;
    int extra;  // sources before x, to move the node index
  } cases[] = {{"f32[3,17]", 0.1, false, 0, 5, 0},
               {"f32[7]", 0.5, false, 9, -1, 1},
               {"f32[7]", 0.5, true, 1, 0, 0},
               {"f32[3,17]", 0.1, true, 42, 1, 2},
               {"f32[3,17]", 0.1, true, 42, 1, 0},
               {"f32[4,5,6]", 0.5, true, 7, -3, 1},
               {"f32[2,3,5]", 0, true, 3, 77, 0},
               {"f32[1]", 0.9, true, 0, INT64_MAX, 0},
               {"f32[17,17]", 0.25, true, UINT64_MAX, INT64_MIN, 3},
               {"f32[9,11]", 0.5, true, 12345, (int64_t)UINT64_C(0xcbf29ce484222325), 0}};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    begin();
    for (int e = 0; e < cases[i].extra; e++) src("f32[1]", F_SIGNED);
    KilnAttrs *a = A(OP(KILN_OP_DROPOUT, src(cases[i].shape, F_SIGNED)));
    a->p = cases[i].p;
    a->key = cases[i].key;
    cur.opts = (KilnInterpOpts){.training = cases[i].training, .seed = cases[i].seed};
    finish();
  }
}

// add sub mul div (the table's broadcasting two-input ops) on pairs of shapes that
// broadcast, and i32 operands for all but div.
static void binary_cases(void) {
  static const char *const pairs[][2] = {
      {"f32[3,17]", "f32[3,17]"}, {"f32[3,17]", "f32[17]"},   {"f32[17]", "f32[3,17]"},
      {"f32[3,1]", "f32[1,17]"},  {"f32[2,3,5]", "f32[3,1]"}, {"f32[]", "f32[4,7]"},
      {"f32[7]", "f32[]"},        {"f32[1]", "f32[7]"},       {"f32[2,1,5]", "f32[1,3,1]"},
      {"f32[]", "f32[]"},         {"f32[1,1,1]", "f32[1]"}};
  for (int op = 0; op < KILN_OP_COUNT; op++) {
    const KilnOpInfo *info = kiln_op((KilnOp)op);
    if (info->fuse != KILN_FUSE_BROADCAST || !info->scalar || info->min_in != 2) continue;
    Fill fb = op == KILN_OP_DIV ? F_AWAY : F_SIGNED;
    for (size_t i = 0; i < sizeof pairs / sizeof pairs[0]; i++) {
      begin();
      int32_t a = src(pairs[i][0], F_SIGNED), b = src(pairs[i][1], fb);
      OP((KilnOp)op, a, b);
      finish();
    }
    begin();  // a scalar constant operand, as `in: [x, 2]` makes
    int32_t x = src("f32[3,7]", F_SIGNED);
    OP((KilnOp)op, x, konst(op == KILN_OP_DIV ? 4.0 : 0.5));
    finish();
    if (op == KILN_OP_DIV) continue;  // i32 division is not defined yet
    begin();
    int32_t a = src("i32[3,7]", F_SMALL), b = src("i32[7]", F_SMALL);
    OP((KilnOp)op, a, b);
    finish();
  }
}

static void where_cases(void) {
  static const char *const triples[][3] = {{"f32[3,17]", "f32[3,17]", "f32[3,17]"},
                                            {"f32[3,1]", "f32[17]", "f32[]"},
                                            {"f32[2,1,5]", "f32[1,3,1]", "f32[5]"},
                                            {"f32[]", "f32[7]", "f32[1]"},
                                            {"f32[7]", "f32[]", "f32[]"}};
  for (size_t i = 0; i < sizeof triples / sizeof triples[0]; i++) {
    begin();
    int32_t c = src(triples[i][0], F_COND), a = src(triples[i][1], F_SIGNED);
    int32_t b = src(triples[i][2], F_SIGNED);
    OP(KILN_OP_WHERE, c, a, b);
    finish();
  }
}

// sum, mean, max over axis sets (none: all), with and without keepdims.
static void reduce_cases(void) {
  static const struct {
    const char *shape;
    int naxes;
    int64_t axes[4];
  } cases[] = {{"f32[7]", 0, {0}},          {"f32[1]", 1, {0}},         {"f32[3,17]", 1, {0}},
               {"f32[3,17]", 1, {1}},       {"f32[3,17]", 1, {-1}},     {"f32[3,17]", 0, {0}},
               {"f32[2,3,5]", 2, {0, 2}},   {"f32[2,3,5]", 1, {1}},     {"f32[2,3,5]", 2, {-3, -1}},
               {"f32[1,4,1,3]", 2, {0, 2}}, {"f32[2,3,4,5]", 2, {3, 1}}, {"f32[2,3,5]", 3, {2, 0, 1}},
               {"f32[]", 0, {0}}};
  static const KilnOp ops[] = {KILN_OP_SUM, KILN_OP_MEAN, KILN_OP_MAX};
  for (size_t o = 0; o < sizeof ops / sizeof ops[0]; o++) {
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
      for (int keep = 0; keep < 2; keep++) {
        begin();
        int32_t y = OP(ops[o], src(cases[i].shape, F_SIGNED));
        A(y)->nints = cases[i].naxes;
        memcpy(A(y)->ints, cases[i].axes, sizeof cases[i].axes);
        A(y)->keepdims = keep;
        finish();
      }
    }
  }
}

static void softmax_cases(void) {
  static const struct {
    const char *shape;
    int64_t axis;
    Fill f;
  } cases[] = {{"f32[7]", -1, F_SIGNED},    {"f32[1]", 0, F_SIGNED},    {"f32[3,17]", 0, F_SIGNED},
               {"f32[3,17]", -1, F_SIGNED}, {"f32[2,3,5]", 1, F_SIGNED}, {"f32[2,3,5]", -3, F_SIGNED},
               {"f32[4,9]", -1, F_WIDE},    {"f32[1,7,1]", 1, F_WIDE}};
  static const KilnOp ops[] = {KILN_OP_SOFTMAX, KILN_OP_LOG_SOFTMAX};
  for (size_t o = 0; o < 2; o++) {
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
      begin();
      A(OP(ops[o], src(cases[i].shape, cases[i].f)))->axis = cases[i].axis;
      finish();
    }
  }
}

static void layernorm_cases(void) {
  static const struct {
    const char *x, *d;
    double eps;
  } cases[] = {{"f32[7]", "f32[7]", 1e-5},       {"f32[3,17]", "f32[17]", 1e-5},
               {"f32[2,3,5]", "f32[5]", 0.1},    {"f32[4,1]", "f32[1]", 1e-5},
               {"f32[1,1,3]", "f32[3]", 0}};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    begin();
    int32_t x = src(cases[i].x, F_WIDE), gamma = src(cases[i].d, F_SIGNED);
    int32_t beta = src(cases[i].d, F_SIGNED);
    A(OP(KILN_OP_LAYERNORM, x, gamma, beta))->eps = cases[i].eps;
    finish();
  }
}

static void matmul_cases(void) {
  static const struct {
    const char *a, *b;
    bool ta, tb;
  } cases[] = {{"f32[3,5]", "f32[5,7]", 0, 0},          {"f32[5,3]", "f32[5,7]", 1, 0},
               {"f32[3,5]", "f32[7,5]", 0, 1},          {"f32[5,3]", "f32[7,5]", 1, 1},
               {"f32[1,1]", "f32[1,1]", 0, 0},          {"f32[1,17]", "f32[17,1]", 0, 0},
               {"f32[2,3,4]", "f32[4,5]", 0, 0},        {"f32[4,3]", "f32[2,3,5]", 0, 0},
               {"f32[2,3,4]", "f32[2,4,17]", 0, 0},     {"f32[2,1,3,4]", "f32[1,5,4,6]", 0, 0},
               {"f32[3,2,4,3]", "f32[2,6,4]", 1, 1},    {"f32[1,7,3]", "f32[3,1,7]", 1, 1},
               {"f32[2,3,2,7,1]", "f32[3,1,1,3]", 0, 0}};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    begin();
    int32_t a = src(cases[i].a, F_SIGNED), b = src(cases[i].b, F_SIGNED);
    int32_t y = OP(KILN_OP_MATMUL, a, b);
    A(y)->trans_a = cases[i].ta;
    A(y)->trans_b = cases[i].tb;
    finish();
  }
}

static void layout_cases(void) {
  begin();
  SET_INTS(OP(KILN_OP_RESHAPE, src("f32[3,17]", F_SIGNED)), 17, 3);
  finish();
  begin();
  SET_INTS(OP(KILN_OP_RESHAPE, src("f32[2,3,5]", F_SIGNED)), -1);
  finish();
  begin();
  SET_INTS(OP(KILN_OP_RESHAPE, src("f32[7]", F_SIGNED)), 7, 1, 1);
  finish();
  begin();
  SET_INTS(OP(KILN_OP_RESHAPE, src("i32[2,3,4]", F_SMALL)), 4, -1, 3);
  finish();
  begin();
  OP(KILN_OP_RESHAPE, src("f32[1]", F_SIGNED));  // to a scalar
  finish();

  begin();
  OP(KILN_OP_TRANSPOSE, src("f32[3,17]", F_SIGNED));  // default: reversed axes
  finish();
  begin();
  SET_INTS(OP(KILN_OP_TRANSPOSE, src("f32[2,3,5]", F_SIGNED)), 1, 2, 0);
  finish();
  begin();
  SET_INTS(OP(KILN_OP_TRANSPOSE, src("f32[2,3,5]", F_SIGNED)), 2, 0, 1);
  finish();
  begin();
  SET_INTS(OP(KILN_OP_TRANSPOSE, src("f32[1,3,1,7]", F_SIGNED)), 3, -4, 2, 1);
  finish();
  begin();
  SET_INTS(OP(KILN_OP_TRANSPOSE, src("i32[2,3,4,5,1,2]", F_SMALL)), 5, 3, 1, 0, 4, 2);
  finish();
  begin();
  OP(KILN_OP_TRANSPOSE, src("f32[7]", F_SIGNED));
  finish();

  begin();
  A(OP(KILN_OP_CONCAT, src("f32[3,5]", F_SIGNED), src("f32[3,7]", F_SIGNED)))->axis = -1;
  finish();
  begin();
  A(OP(KILN_OP_CONCAT, src("f32[2,3]", F_SIGNED), src("f32[1,3]", F_SIGNED),
       src("f32[4,3]", F_SIGNED)))->axis = 0;
  finish();
  begin();
  A(OP(KILN_OP_CONCAT, src("f32[2,1,5]", F_SIGNED), src("f32[2,3,5]", F_SIGNED),
       src("f32[2,7,5]", F_SIGNED)))->axis = 1;
  finish();
  begin();
  A(OP(KILN_OP_CONCAT, src("f32[3,17]", F_SIGNED)))->axis = 0;
  finish();
  begin();
  A(OP(KILN_OP_CONCAT, src("i32[3,2]", F_SMALL), src("i32[3,1]", F_SMALL)))->axis = -1;
  finish();

  static const struct {
    const char *shape;
    int64_t axis, start, end;
  } slices[] = {{"f32[17]", 0, 3, 10},      {"f32[3,17]", 0, 1, 3},
                {"f32[2,3,5]", -1, -3, 0},  {"f32[2,3,5]", 1, 0, 1},
                {"f32[7,3]", 0, 2, 100},    {"f32[1,7]", -1, -7, -1},
                {"i32[4,5]", 1, 1, 4}};
  for (size_t i = 0; i < sizeof slices / sizeof slices[0]; i++) {
    begin();
    int32_t y = OP(KILN_OP_SLICE, src(slices[i].shape, slices[i].shape[0] == 'i' ? F_SMALL : F_SIGNED));
    A(y)->axis = slices[i].axis;
    A(y)->start = slices[i].start;
    if (slices[i].end) A(y)->end = slices[i].end;
    finish();
  }

  begin();
  SET_INTS(OP(KILN_OP_BROADCAST, src("f32[1]", F_SIGNED)), 7);
  finish();
  begin();
  SET_INTS(OP(KILN_OP_BROADCAST, src("f32[3,1]", F_SIGNED)), 2, 3, 17);
  finish();
  begin();
  SET_INTS(OP(KILN_OP_BROADCAST, src("f32[]", F_SIGNED)), 4, 5);
  finish();
  begin();
  SET_INTS(OP(KILN_OP_BROADCAST, src("f32[17]", F_SIGNED)), 3, 17);
  finish();
  begin();
  SET_INTS(OP(KILN_OP_BROADCAST, src("f32[1,3,1]", F_SIGNED)), 2, 3, 5);
  finish();
  begin();
  SET_INTS(OP(KILN_OP_BROADCAST, src("i32[2,1]", F_SMALL)), 2, 2, 7);
  finish();
}

static void embedding_cases(void) {
  static const struct {
    const char *ids;
    int64_t v, d;
    const char *table;
  } cases[] = {{"i32[7]", 5, 3, "f32[5,3]"},       {"i32[2,3]", 17, 4, "f32[17,4]"},
               {"i32[]", 3, 7, "f32[3,7]"},        {"i32[1,3,5]", 1, 2, "f32[1,2]"},
               {"i32[17]", 2, 1, "f32[2,1]"}};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    begin();
    int32_t ids = src_k(cases[i].ids, F_INT, cases[i].v);
    OP(KILN_OP_EMBEDDING, ids, src(cases[i].table, F_SIGNED));
    finish();
  }
}

// Decoding ops from random states: lstm_step over 1 and 3 steps; attention_decode
// at positions 0, mid-cache and the last one.
static void decode_cases(void) {
  static const int64_t steps[][4] = {{1, 1, 2, 3}, {2, 3, 4, 2}};  // B, T, I, H
  for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++) {
    const int64_t *c = steps[i];
    char x[64], w_ih[64], w_hh[64], b[64], st[64];
    snprintf(x, sizeof x, "f32[%lld,%lld,%lld]", (long long)c[0], (long long)c[1], (long long)c[2]);
    snprintf(w_ih, sizeof w_ih, "f32[%lld,%lld]", (long long)c[2], (long long)(4 * c[3]));
    snprintf(w_hh, sizeof w_hh, "f32[%lld,%lld]", (long long)c[3], (long long)(4 * c[3]));
    snprintf(b, sizeof b, "f32[%lld]", (long long)(4 * c[3]));
    snprintf(st, sizeof st, "f32[2,%lld,%lld]", (long long)c[0], (long long)c[3]);
    begin();
    int32_t xs = src(x, F_SIGNED), wi = src(w_ih, F_SIGNED), wh = src(w_hh, F_SIGNED);
    int32_t bs = src(b, F_SIGNED);
    OP(KILN_OP_LSTM_STEP, xs, wi, wh, bs, src(st, F_SIGNED));
    finish();
  }
  static const int64_t att[][5] = {{1, 4, 6, 2, 1}, {2, 5, 6, 3, 5}, {1, 3, 4, 1, 3}};  // B, C, D, heads, pos bound
  for (size_t i = 0; i < sizeof att / sizeof att[0]; i++) {
    const int64_t *c = att[i];
    char one[64], cache[64];
    snprintf(one, sizeof one, "f32[%lld,1,%lld]", (long long)c[0], (long long)c[2]);
    snprintf(cache, sizeof cache, "f32[%lld,%lld,%lld]", (long long)c[0], (long long)c[1], (long long)c[2]);
    begin();
    int32_t q = src(one, F_SIGNED), k = src(one, F_SIGNED), v = src(one, F_SIGNED);
    int32_t kc = src(cache, F_SIGNED), vc = src(cache, F_SIGNED);
    int32_t y = OP(KILN_OP_ATTENTION_DECODE, q, k, v, kc, vc, src_k("i32[1,1]", F_INT, c[4]));
    A(y)->heads = c[3];
    A(y)->causal = true;
    finish();
  }
}

static void lstm_cases(void) {
  static const int64_t cases[][4] = {{1, 1, 1, 1}, {2, 3, 4, 5}, {3, 7, 2, 1}, {1, 5, 3, 2},
                                     {2, 17, 1, 3}};  // B, T, I, H
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    const int64_t *c = cases[i];
    char x[64], w_ih[64], w_hh[64], b[64];
    snprintf(x, sizeof x, "f32[%lld,%lld,%lld]", (long long)c[0], (long long)c[1], (long long)c[2]);
    snprintf(w_ih, sizeof w_ih, "f32[%lld,%lld]", (long long)c[2], (long long)(4 * c[3]));
    snprintf(w_hh, sizeof w_hh, "f32[%lld,%lld]", (long long)c[3], (long long)(4 * c[3]));
    snprintf(b, sizeof b, "f32[%lld]", (long long)(4 * c[3]));
    begin();
    int32_t xs = src(x, F_SIGNED), wi = src(w_ih, F_SIGNED), wh = src(w_hh, F_SIGNED);
    OP(KILN_OP_LSTM, xs, wi, wh, src(b, F_SIGNED));
    finish();
  }
}

static void attention_cases(void) {
  static const struct {
    int64_t b, t, d, heads;
    bool causal;
  } cases[] = {{1, 1, 4, 1, 0}, {2, 3, 6, 2, 0}, {2, 5, 6, 3, 1}, {1, 7, 8, 4, 1},
               {3, 4, 5, 1, 1}, {1, 17, 3, 1, 0}, {1, 1, 3, 3, 1}, {2, 7, 12, 3, 0}};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char s[64];
    snprintf(s, sizeof s, "f32[%lld,%lld,%lld]", (long long)cases[i].b, (long long)cases[i].t,
             (long long)cases[i].d);
    begin();
    int32_t q = src(s, F_SIGNED), k = src(s, F_SIGNED), v = src(s, F_SIGNED);
    int32_t y = OP(KILN_OP_ATTENTION, q, k, v);
    A(y)->heads = cases[i].heads;
    A(y)->causal = cases[i].causal;
    finish();
  }
}

static void loss_cases(void) {
  static const struct {
    const char *logits, *labels;
    int64_t c;
    Fill f;
  } ce[] = {{"f32[7,5]", "i32[7]", 5, F_SIGNED},      {"f32[2,3,4]", "i32[2,3]", 4, F_SIGNED},
            {"f32[3]", "i32[]", 3, F_SIGNED},         {"f32[1,1]", "i32[1]", 1, F_SIGNED},
            {"f32[17,7]", "i32[17]", 7, F_WIDE}};
  for (size_t i = 0; i < sizeof ce / sizeof ce[0]; i++) {
    begin();
    int32_t lg = src(ce[i].logits, ce[i].f);
    OP(KILN_OP_CROSS_ENTROPY, lg, src_k(ce[i].labels, F_INT, ce[i].c));
    finish();
  }
  static const char *const shapes[] = {"f32[7]", "f32[3,17]", "f32[]", "f32[2,3,5]", "f32[1]"};
  for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
    begin();
    int32_t p = src(shapes[i], F_SIGNED);
    OP(KILN_OP_MSE, p, src(shapes[i], F_SIGNED));
    finish();
    begin();
    int32_t x = src(shapes[i], i % 2 ? F_WIDE : F_SIGNED);
    OP(KILN_OP_BCE, x, src(shapes[i], F_UNIT));
    finish();
  }
}

//
// Gradient ops.
//
// The table's elementwise gradients (x, dy) on each shape; x wide as well, and
// clamp_grad with bounds, on integer-valued x that lands exactly on them.
static void grad_elem_cases(void) {
  static const char *const shapes[] = {"f32[]", "f32[1]", "f32[7]", "f32[3,17]", "f32[2,3,5]"};
  for (int op = 0; op < KILN_OP_COUNT; op++) {
    const KilnOpInfo *info = kiln_op((KilnOp)op);
    if (info->fuse != KILN_FUSE_ELEMWISE || !info->scalar || info->min_in != 2) continue;
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
      begin();
      int32_t x = src(shapes[s], F_SIGNED);
      OP((KilnOp)op, x, src(shapes[s], F_SIGNED));
      finish();
    }
    begin();
    int32_t x = src("f32[4,9]", F_WIDE);
    OP((KilnOp)op, x, src("f32[4,9]", F_SIGNED));
    finish();
  }
  const double clamps[][2] = {{-0.5, 1}, {-HUGE_VAL, 0.3}, {0.2, HUGE_VAL}, {1, 1}, {-3, 5}};
  for (size_t i = 0; i < sizeof clamps / sizeof clamps[0]; i++) {
    begin();
    int32_t x = src("f32[3,17]", i < 3 ? F_SIGNED : F_SMALL);
    int32_t y = OP(KILN_OP_CLAMP_GRAD, x, src("f32[3,17]", F_SIGNED));
    A(y)->lo = clamps[i][0];
    A(y)->hi = clamps[i][1];
    finish();
  }
}

static void layernorm_grad_cases(void) {
  static const struct {
    const char *x, *d;
    double eps;
  } cases[] = {{"f32[7]", "f32[7]", 1e-5},       {"f32[3,17]", "f32[17]", 1e-5},
               {"f32[2,3,5]", "f32[5]", 0.1},    {"f32[4,1]", "f32[1]", 1e-5},
               {"f32[1,1,3]", "f32[3]", 0}};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    begin();
    int32_t x = src(cases[i].x, F_WIDE), gamma = src(cases[i].d, F_SIGNED);
    A(OP(KILN_OP_LAYERNORM_DX, x, gamma, src(cases[i].x, F_SIGNED)))->eps = cases[i].eps;
    finish();
    begin();
    x = src(cases[i].x, F_WIDE);
    A(OP(KILN_OP_LAYERNORM_DGAMMA, x, src(cases[i].x, F_SIGNED)))->eps = cases[i].eps;
    finish();
  }
}

// Few rows and many positions, so ids repeat and rows collect several terms.
static void embedding_grad_cases(void) {
  static const struct {
    const char *ids, *dy;
    int64_t v;
  } cases[] = {{"i32[7]", "f32[7,3]", 5},       {"i32[2,3]", "f32[2,3,4]", 17},
               {"i32[]", "f32[7]", 3},          {"i32[1,3,5]", "f32[1,3,5,2]", 1},
               {"i32[17]", "f32[17,1]", 2},     {"i32[4,9]", "f32[4,9,5]", 3}};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    begin();
    int32_t ids = src_k(cases[i].ids, F_INT, cases[i].v);
    A(OP(KILN_OP_EMBEDDING_GRAD, ids, src(cases[i].dy, F_SIGNED)))->size = cases[i].v;
    finish();
  }
}

static void lstm_grad_cases(void) {
  static const int64_t cases[][4] = {{1, 1, 1, 1}, {2, 3, 4, 5}, {3, 7, 2, 1}, {1, 5, 3, 2},
                                     {2, 17, 1, 3}};  // B, T, I, H
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    const int64_t *c = cases[i];
    char x[64], w_ih[64], w_hh[64], b[64], dy[64];
    snprintf(x, sizeof x, "f32[%lld,%lld,%lld]", (long long)c[0], (long long)c[1], (long long)c[2]);
    snprintf(w_ih, sizeof w_ih, "f32[%lld,%lld]", (long long)c[2], (long long)(4 * c[3]));
    snprintf(w_hh, sizeof w_hh, "f32[%lld,%lld]", (long long)c[3], (long long)(4 * c[3]));
    snprintf(b, sizeof b, "f32[%lld]", (long long)(4 * c[3]));
    snprintf(dy, sizeof dy, "f32[%lld,%lld,%lld]", (long long)c[0], (long long)c[1], (long long)c[3]);
    begin();
    int32_t xs = src(x, F_SIGNED), wi = src(w_ih, F_SIGNED), wh = src(w_hh, F_SIGNED);
    int32_t bs = src(b, F_SIGNED);
    OP(KILN_OP_LSTM_GRAD, xs, wi, wh, bs, src(dy, F_SIGNED));
    finish();
  }
}

static void attention_grad_cases(void) {
  static const struct {
    int64_t b, t, d, heads;
    bool causal;
  } cases[] = {{1, 1, 4, 1, 0}, {2, 3, 6, 2, 0}, {2, 5, 6, 3, 1}, {1, 7, 8, 4, 1},
               {3, 4, 5, 1, 1}, {1, 17, 3, 1, 0}, {1, 1, 3, 3, 1}, {2, 7, 12, 3, 0}};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char s[64];
    snprintf(s, sizeof s, "f32[%lld,%lld,%lld]", (long long)cases[i].b, (long long)cases[i].t,
             (long long)cases[i].d);
    begin();
    int32_t q = src(s, F_SIGNED), k = src(s, F_SIGNED), v = src(s, F_SIGNED);
    int32_t y = OP(KILN_OP_ATTENTION_GRAD, q, k, v, src(s, F_SIGNED));
    A(y)->heads = cases[i].heads;
    A(y)->causal = cases[i].causal;
    finish();
  }
}

static void cross_entropy_grad_cases(void) {
  static const struct {
    const char *logits, *labels;
    int64_t c;
    Fill f;
  } ce[] = {{"f32[7,5]", "i32[7]", 5, F_SIGNED},      {"f32[2,3,4]", "i32[2,3]", 4, F_SIGNED},
            {"f32[3]", "i32[]", 3, F_SIGNED},         {"f32[1,1]", "i32[1]", 1, F_SIGNED},
            {"f32[17,7]", "i32[17]", 7, F_WIDE}};
  for (size_t i = 0; i < sizeof ce / sizeof ce[0]; i++) {
    begin();
    int32_t lg = src(ce[i].logits, ce[i].f);
    OP(KILN_OP_CROSS_ENTROPY_GRAD, lg, src_k(ce[i].labels, F_INT, ce[i].c));
    finish();
  }
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: interp_cases OUTDIR\n");
    return 2;
  }
  outdir = argv[1];
  char path[512];
  snprintf(path, sizeof path, "%s/cases.jsonl", outdir);
  if (!(jsonl = fopen(path, "w"))) die("cannot write %s", path);

  source_cases();
  unary_cases();
  dropout_cases();
  binary_cases();
  where_cases();
  reduce_cases();
  softmax_cases();
  layernorm_cases();
  matmul_cases();
  layout_cases();
  embedding_cases();
  lstm_cases();
  attention_cases();
  decode_cases();
  loss_cases();
  grad_elem_cases();
  layernorm_grad_cases();
  embedding_grad_cases();
  lstm_grad_cases();
  attention_grad_cases();
  cross_entropy_grad_cases();
  if (fclose(jsonl)) die("cannot write %s", path);

  snprintf(path, sizeof path, "%s/ops.txt", outdir);
  FILE *f = fopen(path, "w");
  if (!f) die("cannot write %s", path);
  int missing = 0;
  for (int op = 0; op < KILN_OP_COUNT; op++) {
    fprintf(f, "%s\n", kiln_op((KilnOp)op)->name);
    if (!covered[op]) {
      fprintf(stderr, "interp_cases: op '%s' has no case\n", kiln_op((KilnOp)op)->name);
      missing++;
    }
  }
  if (fclose(f)) die("cannot write %s", path);
  printf("interp_cases: %d cases in %s\n", ncases, outdir);
  return missing ? 1 : 0;
}
