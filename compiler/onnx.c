// `kiln import`: an ONNX model (read with protobuf-c, from the onnx.proto Debian
// ships) becomes a Kiln model file a person can read and edit, plus its weights as
// safetensors. Linear layers (Gemm, or MatMul by a constant with an optional bias
// Add and activation) become `dense`, Gather from a table `embedding`,
// LayerNormalization `layernorm`; other supported ops map one to one onto
// primitive ops. Layers are named after the PyTorch module that made them, so a
// state_dict maps across by name (docs/onnx.md).
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "compiler/compiler.h"
#include "onnx/onnx.pb-c.h"
#include "runtime/runtime.h"

#define MAX_FILE ((size_t)1 << 31)  // protobuf's own limit is 2 GiB
#define MAX_ITEM_IN 3

#define TRY_IMPORT(expr)         \
  do {                           \
    if ((expr) != 0) return -1;  \
  } while (0)

// One ONNX value: a graph input, a constant (initializer or Constant node) or
// the output of a node.
typedef struct {
  const char *onnx;            // its ONNX name
  const char *kiln;            // its Kiln name, once it needs one
  int rank;
  int64_t shape[KILN_MAX_RANK];
  const char *sym[KILN_MAX_RANK];  // graph inputs: the dim naming each axis, or NULL
  bool i32;                    // integer (token ids); Kiln reads them as i32
  float *data;                 // constant f32 values, row-major
  int64_t *ints;               // constant integer values (shapes, indices)
  const char *param;           // the `params:` entry a constant became
  bool input;                  // declared as a graph input
  int same_as;                 // Identity and Dropout: 1 + the value this one is, or 0
  int uses;                    // items and graph outputs that read it
} Val;

// One node of the Kiln graph being written.
typedef struct {
  const char *op;              // Kiln op
  char attrs[512];             // formatted attributes ("units: 16, activation: relu")
  int in[MAX_ITEM_IN];         // values read, or -1 for a literal
  char lit[MAX_ITEM_IN][32];   // literals (scalar constants)
  int nin;
  int out;                     // the value it defines
  const char *layer;           // layer ops: the layer's name (params NAME.weight, ...)
} Item;

// A tensor of the weights file.
typedef struct {
  const char *name;
  int rank;
  int64_t shape[KILN_MAX_RANK];
  const float *data;
} Weight;

typedef struct {
  KilnArena arena;
  KilnDiag *d;
  const char *path;
  const Onnx__GraphProto *g;
  const KilnDimOverride *dims;
  int ndims;
  Val *vals;
  int nvals;
  Item *items;
  int nitems;
  Weight *weights;
  int nweights;
  bool *done;                  // per ONNX node: folded into an earlier item
  const char **names;          // Kiln names taken, for uniqueness
  int nnames;
  FILE *unsupported;           // "Op (node NAME)" list
  int nunsupported;
  const char *dimnames[KILN_MAX_RANK * 16];
  int64_t dimvals[KILN_MAX_RANK * 16];
  int ndimnames;
} Importer;

// protobuf-c leaves an absent optional string NULL.
static const char *S(const char *s) { return s ? s : ""; }

static int fail(Importer *im, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int fail(Importer *im, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(im->d->out, "kiln import: %s: error: ", im->path);
  vfprintf(im->d->out, fmt, ap);
  fputc('\n', im->d->out);
  va_end(ap);
  im->d->nerrors++;
  return -1;
}

//
// Names. Kiln names are identifiers; ONNX and PyTorch names have dots, slashes and
// colons. Every character outside [A-Za-z0-9_] becomes '_', and a leading digit
// gets a '_' before it: "net.0" -> "net_0", "/fc1/Gemm_output_0" -> "fc1_Gemm".
//
static char *mangle(Importer *im, const char *s, size_t len) {
  char buf[65];
  size_t n = 0;
  if (len && isdigit((unsigned char)s[0])) buf[n++] = '_';
  for (size_t i = 0; i < len && n < 64; i++) {
    char c = isalnum((unsigned char)s[i]) ? s[i] : '_';
    if (c == '_' && n > 0 && buf[n - 1] == '_' && !isdigit((unsigned char)s[0])) continue;
    buf[n++] = c;
  }
  while (n > 1 && buf[n - 1] == '_') n--;
  size_t start = 0;
  while (start + 1 < n && buf[start] == '_' && !isdigit((unsigned char)buf[start + 1])) start++;
  buf[n] = '\0';
  return kiln_arena_strdup(&im->arena, n ? buf + start : "v");
}

static bool taken(const Importer *im, const char *name) {
  for (int i = 0; i < im->nnames; i++)
    if (strcmp(im->names[i], name) == 0) return true;
  return strcmp(name, "loss") == 0;
}

// A unique Kiln name from base: base, base_2, base_3, ...
static const char *claim(Importer *im, const char *base) {
  const char *name = base;
  for (int k = 2; taken(im, name); k++) name = kiln_arena_printf(&im->arena, "%.56s_%d", base, k);
  im->names[im->nnames++] = name;
  return name;
}

// A value's name from its ONNX name, without PyTorch's "_output_0" suffix.
static const char *value_name(Importer *im, const char *onnx) {
  size_t len = strlen(onnx);
  static const char suffix[] = "_output_0";
  if (len > sizeof suffix - 1 && strcmp(onnx + len - (sizeof suffix - 1), suffix) == 0)
    len -= sizeof suffix - 1;
  return claim(im, mangle(im, onnx, len));
}

// A layer's name: its parameter's module path ("net.0.weight" -> "net_0"), the
// mapping `kiln weights convert --from torch` applies too; else the node's
// ("/net/net.0/MatMul" -> "net_0"); else the op.
static const char *layer_name(Importer *im, const char *param, const char *suffix,
                              const Onnx__NodeProto *n, const char *op) {
  size_t pl = param ? strlen(param) : 0, sl = strlen(suffix);
  if (pl > sl && strcmp(param + pl - sl, suffix) == 0 && param[pl - sl - 1] == '.' && pl - sl <= 64)
    return claim(im, kiln_torch_module_name(&im->arena, param, pl - sl - 1));
  const char *last = strrchr(S(n->name), '/');
  if (last && last > S(n->name) && last - S(n->name) <= 64) {
    const char *first = last - 1;
    while (first > S(n->name) && first[-1] != '/') first--;
    return claim(im, kiln_torch_module_name(&im->arena, first, (size_t)(last - first)));
  }
  return claim(im, op);
}

//
// Values.
//
static int find_val(const Importer *im, const char *onnx) {
  for (int i = im->nvals - 1; i >= 0; i--)
    if (strcmp(im->vals[i].onnx, onnx) == 0) {
      while (im->vals[i].same_as) i = im->vals[i].same_as - 1;
      return i;
    }
  return -1;
}

static int new_val(Importer *im, const char *onnx) {
  Val *v = &im->vals[im->nvals];
  *v = (Val){.onnx = onnx ? onnx : ""};
  return im->nvals++;
}

static int64_t numel(const Val *v) {
  int64_t n = 1;
  for (int i = 0; i < v->rank; i++) n *= v->shape[i];
  return n;
}

static bool is_const(const Importer *im, int v) {
  return v >= 0 && (im->vals[v].data || im->vals[v].ints);
}

static int set_shape(Importer *im, Val *v, const int64_t *dims, size_t n) {
  if (n > KILN_MAX_RANK) return fail(im, "'%s' has rank %zu; Kiln allows %d", v->onnx, n, KILN_MAX_RANK);
  v->rank = (int)n;
  for (size_t i = 0; i < n; i++) {
    if (dims[i] < 1 || dims[i] > KILN_MAX_ELEMS)
      return fail(im, "'%s' has an axis of size %lld", v->onnx, (long long)dims[i]);
    v->shape[i] = dims[i];
  }
  if (kiln_numel(v->shape, v->rank) < 0) return fail(im, "'%s' is too large", v->onnx);
  return 0;
}

// The elements of a tensor, from raw_data or the typed field; f32 as float, the
// integer types as int64. Other types and external data are refused.
static int tensor_data(Importer *im, const Onnx__TensorProto *t, Val *v) {
  if (set_shape(im, v, t->dims, t->n_dims) != 0) return -1;
  int64_t n = numel(v);
  if (t->has_data_location && t->data_location == ONNX__TENSOR_PROTO__DATA_LOCATION__EXTERNAL)
    return fail(im, "tensor '%s' keeps its data in an external file; export it into one file",
                v->onnx);
  size_t raw = t->has_raw_data ? t->raw_data.len : 0;
  switch (t->data_type) {
  case ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT:
    if (raw ? raw != (size_t)n * 4 : t->n_float_data != (size_t)n)
      return fail(im, "tensor '%s' holds the wrong number of values", v->onnx);
    v->data = kiln_arena_alloc(&im->arena, (size_t)n * sizeof(float));
    memcpy(v->data, raw ? (const void *)t->raw_data.data : t->float_data, (size_t)n * 4);
    return 0;
  case ONNX__TENSOR_PROTO__DATA_TYPE__INT64:
  case ONNX__TENSOR_PROTO__DATA_TYPE__INT32: {
    bool i64 = t->data_type == ONNX__TENSOR_PROTO__DATA_TYPE__INT64;
    size_t have = raw ? raw / (i64 ? 8 : 4) : i64 ? t->n_int64_data : t->n_int32_data;
    if (have != (size_t)n || (raw && raw % (i64 ? 8 : 4)))
      return fail(im, "tensor '%s' holds the wrong number of values", v->onnx);
    v->ints = kiln_arena_alloc(&im->arena, (size_t)n * sizeof(int64_t) + 8);
    for (int64_t i = 0; i < n; i++) {
      if (raw && i64) memcpy(&v->ints[i], t->raw_data.data + 8 * i, 8);
      else if (raw) {
        int32_t x;
        memcpy(&x, t->raw_data.data + 4 * i, 4);
        v->ints[i] = x;
      } else v->ints[i] = i64 ? t->int64_data[i] : t->int32_data[i];
    }
    v->i32 = true;
    return 0;
  }
  default:
    return fail(im, "tensor '%s' has ONNX data type %d; Kiln reads float32 and integers",
                v->onnx, t->data_type);
  }
}

static int64_t dim_override(Importer *im, const char *name) {
  for (int i = 0; i < im->ndims; i++)
    if (strcmp(im->dims[i].name, name) == 0) return im->dims[i].value;
  return -1;
}

// A symbolic axis becomes a Kiln dim whose default the user gives with --dim.
static int input_axis(Importer *im, Val *v, int axis, const Onnx__TensorShapeProto__Dimension *dm) {
  if (dm->value_case == ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_VALUE && dm->dim_value > 0) {
    v->shape[axis] = dm->dim_value;
    return 0;
  }
  const char *sym = dm->value_case == ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_PARAM
                        ? dm->dim_param : "";
  const char *name = mangle(im, sym, strlen(sym));
  int64_t size = *sym ? dim_override(im, name) : -1;
  if (size < 1)
    return fail(im, "input '%s' has a free axis %d ('%s'): give its size with --dim %s=N",
                v->onnx, axis, sym, *sym ? name : "NAME");
  v->shape[axis] = size;
  v->sym[axis] = name;
  int i = 0;
  while (i < im->ndimnames && strcmp(im->dimnames[i], name) != 0) i++;
  if (i == im->ndimnames && i < (int)(sizeof im->dimnames / sizeof *im->dimnames))
    im->dimnames[im->ndimnames] = name, im->dimvals[im->ndimnames++] = size;
  return 0;
}

static int graph_input(Importer *im, const Onnx__ValueInfoProto *vi) {
  if (find_val(im, S(vi->name)) >= 0) return 0;  // an initializer listed as an input too
  const Onnx__TypeProto *t = vi->type;
  if (!t || t->value_case != ONNX__TYPE_PROTO__VALUE_TENSOR_TYPE || !t->tensor_type->shape)
    return fail(im, "input '%s' is not a tensor of known rank", S(vi->name));
  Val *v = &im->vals[new_val(im, S(vi->name))];
  v->input = true;
  int32_t et = t->tensor_type->elem_type;
  v->i32 = et == ONNX__TENSOR_PROTO__DATA_TYPE__INT64 || et == ONNX__TENSOR_PROTO__DATA_TYPE__INT32;
  if (!v->i32 && et != ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT)
    return fail(im, "input '%s' has ONNX data type %d; Kiln inputs are float32 or integer ids",
                S(vi->name), et);
  const Onnx__TensorShapeProto *s = t->tensor_type->shape;
  if (s->n_dim > KILN_MAX_RANK)
    return fail(im, "input '%s' has rank %zu; Kiln allows %d", S(vi->name), s->n_dim, KILN_MAX_RANK);
  v->rank = (int)s->n_dim;
  for (int i = 0; i < v->rank; i++) TRY_IMPORT(input_axis(im, v, i, s->dim[i]));
  v->kiln = claim(im, mangle(im, S(vi->name), strlen(S(vi->name))));
  return 0;
}

//
// Node attributes and operands.
//
static const Onnx__AttributeProto *attr(const Onnx__NodeProto *n, const char *name) {
  for (size_t i = 0; i < n->n_attribute; i++)
    if (strcmp(S(n->attribute[i]->name), name) == 0) return n->attribute[i];
  return NULL;
}

static int64_t attr_i(const Onnx__NodeProto *n, const char *name, int64_t dflt) {
  const Onnx__AttributeProto *a = attr(n, name);
  return a && a->has_i ? a->i : dflt;
}

static double attr_f(const Onnx__NodeProto *n, const char *name, double dflt) {
  const Onnx__AttributeProto *a = attr(n, name);
  return a && a->has_f ? a->f : dflt;
}

// Operand k of n: its value, -1 when absent (optional operands are ""), or -2
// after reporting an unknown name.
static int operand(Importer *im, const Onnx__NodeProto *n, size_t k) {
  if (k >= n->n_input || !n->input[k][0]) return -1;
  int v = find_val(im, n->input[k]);
  if (v < 0) fail(im, "node '%s' (%s) reads '%s', which nothing defines", S(n->name), S(n->op_type),
                  n->input[k]);
  return v < 0 ? -2 : v;
}

static void unsupported(Importer *im, const Onnx__NodeProto *n, const char *why) {
  fprintf(im->unsupported, "\n  %s (node '%s')%s%s", S(n->op_type), S(n->name),
          why ? ": " : "", why ? why : "");
  im->nunsupported++;
}

// ONNX nodes (and graph outputs) reading the value named onnx; the one reader in
// *out when there is exactly one node and no graph output.
static int readers(const Importer *im, const char *onnx, int *out) {
  int count = 0;
  *out = -1;
  for (size_t i = 0; i < im->g->n_node; i++)
    for (size_t k = 0; k < im->g->node[i]->n_input; k++)
      if (strcmp(im->g->node[i]->input[k], onnx) == 0) count++, *out = (int)i;
  for (size_t i = 0; i < im->g->n_output; i++)
    if (strcmp(S(im->g->output[i]->name), onnx) == 0) count += 2;
  return count;
}

//
// Items: the Kiln graph's nodes.
//
static Item *add_item(Importer *im, const char *op, const char *out_onnx) {
  Item *it = &im->items[im->nitems++];
  *it = (Item){.op = op, .out = new_val(im, out_onnx)};
  return it;
}

static void add_weight(Importer *im, const char *name, const Val *v, const float *data) {
  Weight *w = &im->weights[im->nweights++];
  *w = (Weight){.name = name, .rank = v->rank, .data = data};
  memcpy(w->shape, v->shape, sizeof w->shape);
}

static void fmt_float(char *buf, size_t len, double x) {
  snprintf(buf, len, "%.9g", x);
  if (!strpbrk(buf, ".eEni")) snprintf(buf + strlen(buf), len - strlen(buf), ".0");
}

// Reads value v: a scalar constant becomes a literal, any other constant a
// declared parameter that the weights file fills.
static int item_in(Importer *im, Item *it, int v) {
  int k = it->nin++;
  Val *x = &im->vals[v];
  it->in[k] = v;
  if (x->ints && !x->data) return fail(im, "integer constant '%s' used as a float operand", x->onnx);
  if (x->data && numel(x) == 1 && x->rank <= 1) {
    it->in[k] = -1;
    fmt_float(it->lit[k], sizeof it->lit[k], x->data[0]);
    return 0;
  }
  if (x->data && !x->param) {
    x->param = claim(im, mangle(im, x->onnx, strlen(x->onnx)));
    x->kiln = x->param;
    add_weight(im, x->param, x, x->data);
  }
  x->uses++;
  return 0;
}

static void same_shape(Importer *im, Item *it, int v) {
  Val *o = &im->vals[it->out];
  o->rank = im->vals[v].rank;
  memcpy(o->shape, im->vals[v].shape, sizeof o->shape);
}

// numpy broadcasting of a and b into the item's output.
static int broadcast(Importer *im, Item *it, int a, int b) {
  const Val *x = &im->vals[a], *y = &im->vals[b];
  Val *o = &im->vals[it->out];
  o->rank = x->rank > y->rank ? x->rank : y->rank;
  for (int i = 0; i < o->rank; i++) {
    int ix = x->rank - o->rank + i, iy = y->rank - o->rank + i;
    int64_t dx = ix >= 0 ? x->shape[ix] : 1, dy = iy >= 0 ? y->shape[iy] : 1;
    if (dx != dy && dx != 1 && dy != 1)
      return fail(im, "'%s' and '%s' do not broadcast", x->onnx, y->onnx);
    o->shape[i] = dx > dy ? dx : dy;
  }
  return 0;
}

static void append(char *buf, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static void append(char *buf, size_t len, const char *fmt, ...) {
  size_t at = strlen(buf);
  if (at >= len) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf + at, len - at, fmt, ap);
  va_end(ap);
}

static void append_list(char *buf, size_t len, const char *key, const int64_t *v, int n) {
  append(buf, len, "%s%s: [", *buf ? ", " : "", key);
  for (int i = 0; i < n; i++) append(buf, len, "%s%lld", i ? ", " : "", (long long)v[i]);
  append(buf, len, "]");
}

//
// Linear layers. x W (+ b) (then an activation) with W a constant matrix is a
// `dense` layer: Kiln stores its weight [in, out], so Gemm's transB weight (the
// [out, in] of torch.nn.Linear) is transposed here.
//
static const char *activation_of(const char *op_type) {
  if (!strcmp(op_type, "Relu")) return "relu";
  if (!strcmp(op_type, "Sigmoid")) return "sigmoid";
  if (!strcmp(op_type, "Tanh")) return "tanh";
  return NULL;
}

// A constant of n elements usable as a bias: [N], or [1, ..., 1, N].
static bool bias_like(const Importer *im, int v, int64_t n) {
  if (v < 0 || !im->vals[v].data) return false;
  const Val *b = &im->vals[v];
  return b->rank >= 1 && b->shape[b->rank - 1] == n && numel(b) == n;
}

static float *transposed(Importer *im, const float *w, int64_t rows, int64_t cols) {
  float *t = kiln_arena_alloc(&im->arena, (size_t)(rows * cols) * sizeof(float));
  for (int64_t r = 0; r < rows; r++)
    for (int64_t c = 0; c < cols; c++) t[c * rows + r] = w[r * cols + c];
  return t;
}

// The bias of a MatMul: its one reader is an Add of a constant [N]. Marks the Add
// done and returns the bias value, or -1.
static int matmul_bias(Importer *im, const Onnx__NodeProto *n, int64_t units, const char **out) {
  int r;
  if (readers(im, n->output[0], &r) != 1 || strcmp(S(im->g->node[r]->op_type), "Add") != 0) return -1;
  const Onnx__NodeProto *add = im->g->node[r];
  if (add->n_input != 2 || add->n_output < 1) return -1;
  int other = strcmp(add->input[0], n->output[0]) == 0 ? 1 : 0;
  int b = find_val(im, add->input[other]);
  if (!bias_like(im, b, units)) return -1;
  im->done[r] = true;
  *out = add->output[0];
  return b;
}

static int dense(Importer *im, const Onnx__NodeProto *n, int x, int w, bool trans, int b) {
  const Val *wv = &im->vals[w];
  int64_t in = wv->shape[trans ? 1 : 0], units = wv->shape[trans ? 0 : 1];
  const Val *xv = &im->vals[x];
  if (xv->shape[xv->rank - 1] != in)
    return fail(im, "node '%s': '%s' has %lld features, the weight '%s' expects %lld", S(n->name),
                xv->onnx, (long long)xv->shape[xv->rank - 1], wv->onnx, (long long)in);
  const char *out = n->output[0];
  if (b < 0 && strcmp(n->op_type, "MatMul") == 0) b = matmul_bias(im, n, units, &out);
  const char *act = NULL;
  int r;
  if (readers(im, out, &r) == 1 && (act = activation_of(S(im->g->node[r]->op_type)))) {
    im->done[r] = true;
    out = im->g->node[r]->output[0];
  }
  // PyTorch renames a MatMul's weight when it folds the transpose; the bias keeps
  // the module's name then.
  bool by_bias = b >= 0 && !strstr(wv->onnx, ".weight");
  const char *layer = layer_name(im, by_bias ? im->vals[b].onnx : wv->onnx,
                                 by_bias ? "bias" : "weight", n, "dense");
  Item *it = add_item(im, "dense", out);
  it->layer = layer;
  snprintf(it->attrs, sizeof it->attrs, "units: %lld", (long long)units);
  if (b < 0) append(it->attrs, sizeof it->attrs, ", bias: false");
  if (act) append(it->attrs, sizeof it->attrs, ", activation: %s", act);
  TRY_IMPORT(item_in(im, it, x));
  Val *o = &im->vals[it->out];
  same_shape(im, it, x);
  o->shape[o->rank - 1] = units;
  o->kiln = layer;
  Val wk = {.rank = 2, .shape = {in, units}};
  add_weight(im, kiln_arena_printf(&im->arena, "%s.weight", layer), &wk,
             trans ? transposed(im, wv->data, units, in) : wv->data);
  if (b >= 0) {
    Val bk = {.rank = 1, .shape = {units}};
    add_weight(im, kiln_arena_printf(&im->arena, "%s.bias", layer), &bk, im->vals[b].data);
  }
  return 0;
}

// A product of two computed values (or one not shaped like a layer's weight).
static int matmul(Importer *im, const Onnx__NodeProto *n, int a, int b, bool ta, bool tb, int c) {
  const Val *av = &im->vals[a], *bv = &im->vals[b];
  if (av->rank < 2 || bv->rank < 2) {
    unsupported(im, n, "operands of rank 1");
    return 0;
  }
  const char *out = c >= 0 ? kiln_arena_printf(&im->arena, "%s.matmul", n->output[0]) : n->output[0];
  Item *it = add_item(im, "matmul", out);
  if (ta) append(it->attrs, sizeof it->attrs, "transpose_a: true");
  if (tb) append(it->attrs, sizeof it->attrs, "%stranspose_b: true", ta ? ", " : "");
  TRY_IMPORT(item_in(im, it, a));
  TRY_IMPORT(item_in(im, it, b));
  Val *o = &im->vals[it->out];
  const Val *big = av->rank >= bv->rank ? av : bv;
  o->rank = big->rank;
  memcpy(o->shape, big->shape, sizeof o->shape);
  o->shape[o->rank - 2] = av->shape[av->rank - (ta ? 1 : 2)];
  o->shape[o->rank - 1] = bv->shape[bv->rank - (tb ? 2 : 1)];
  if (c < 0) return 0;
  int prod = it->out;
  Item *add = add_item(im, "add", n->output[0]);
  TRY_IMPORT(item_in(im, add, prod));
  TRY_IMPORT(item_in(im, add, c));
  return broadcast(im, add, prod, c);
}

static int gemm_or_matmul(Importer *im, const Onnx__NodeProto *n) {
  bool gemm = strcmp(n->op_type, "Gemm") == 0;
  int a = operand(im, n, 0), b = operand(im, n, 1), c = gemm ? operand(im, n, 2) : -1;
  if (a == -2 || b == -2 || c == -2) return -1;
  if (a < 0 || b < 0) {
    unsupported(im, n, "an operand is missing");
    return 0;
  }
  bool ta = gemm && attr_i(n, "transA", 0), tb = gemm && attr_i(n, "transB", 0);
  if (gemm && (attr_f(n, "alpha", 1) != 1 || attr_f(n, "beta", 1) != 1)) {
    unsupported(im, n, "alpha or beta other than 1");
    return 0;
  }
  const Val *bv = &im->vals[b];
  bool weight = bv->data && bv->rank == 2 && !ta && !is_const(im, a) && im->vals[a].rank >= 2;
  int64_t units = weight ? bv->shape[tb ? 0 : 1] : 0;
  if (weight && (c < 0 || bias_like(im, c, units))) return dense(im, n, a, b, tb, c);
  return matmul(im, n, a, b, ta, tb, c);
}

//
// Layers from tables: embedding and layernorm.
//
static int gather(Importer *im, const Onnx__NodeProto *n, const char *op) {
  int table = operand(im, n, 0), ids = operand(im, n, 1);
  if (table == -2 || ids == -2) return -1;
  if (table < 0 || ids < 0 || !im->vals[table].data || im->vals[table].rank != 2 ||
      attr_i(n, "axis", 0) != 0 || !im->vals[ids].input || !im->vals[ids].i32) {
    unsupported(im, n, "only rows of a constant table [vocab, dim] picked by integer ids that "
                       "are a graph input (an embedding)");
    return 0;
  }
  const Val *t = &im->vals[table];
  Item *it = add_item(im, op, n->output[0]);
  it->layer = layer_name(im, t->onnx, "weight", n, "embedding");
  snprintf(it->attrs, sizeof it->attrs, "vocab: %lld, dim: %lld", (long long)t->shape[0],
           (long long)t->shape[1]);
  TRY_IMPORT(item_in(im, it, ids));
  Val *o = &im->vals[it->out];
  same_shape(im, it, ids);
  o->shape[o->rank++] = t->shape[1];
  o->kiln = it->layer;
  add_weight(im, kiln_arena_printf(&im->arena, "%s.weight", it->layer), t, t->data);
  return o->rank > KILN_MAX_RANK ? fail(im, "node '%s': the result has too many axes", S(n->name)) : 0;
}

static int layernorm(Importer *im, const Onnx__NodeProto *n, const char *op) {
  int x = operand(im, n, 0), scale = operand(im, n, 1), bias = operand(im, n, 2);
  if (x == -2 || scale == -2 || bias == -2) return -1;
  int64_t d = x >= 0 && im->vals[x].rank > 0 ? im->vals[x].shape[im->vals[x].rank - 1] : 0;
  int64_t axis = attr_i(n, "axis", -1);
  if (x < 0 || is_const(im, x) || (axis != -1 && axis != im->vals[x].rank - 1) ||
      !bias_like(im, scale, d) || (bias >= 0 && !bias_like(im, bias, d)) || n->n_output > 1) {
    unsupported(im, n, "only over the last axis, with constant scale and bias");
    return 0;
  }
  double epsilon = attr_f(n, "epsilon", 1e-5);
  if (!(epsilon > 0 && epsilon < 1))
    return fail(im, "node '%s': epsilon %g is not between 0 and 1", S(n->name), epsilon);
  Item *it = add_item(im, op, n->output[0]);
  it->layer = layer_name(im, im->vals[scale].onnx, "weight", n, "layernorm");
  char eps[32];
  fmt_float(eps, sizeof eps, epsilon);
  snprintf(it->attrs, sizeof it->attrs, "eps: %s", eps);
  TRY_IMPORT(item_in(im, it, x));
  same_shape(im, it, x);
  im->vals[it->out].kiln = it->layer;
  Val v = {.rank = 1, .shape = {d}};
  float *b = bias >= 0 ? im->vals[bias].data : kiln_arena_alloc(&im->arena, (size_t)d * sizeof(float));
  add_weight(im, kiln_arena_printf(&im->arena, "%s.weight", it->layer), &v, im->vals[scale].data);
  add_weight(im, kiln_arena_printf(&im->arena, "%s.bias", it->layer), &v, b);
  return 0;
}

// Element i of a constant, as a float (integer constants too: PyTorch traces
// x.shape[-1] ** 0.5 as Pow of two constants).
static double const_at(const Val *v, int64_t i) {
  int64_t j = numel(v) == 1 ? 0 : i;
  return v->data ? v->data[j] : (double)v->ints[j];
}

// The Kiln ops fold() computes, in the order of apply's cases.
static const char *const foldable[] = {"add", "sub", "mul", "div", "pow", "neg", "exp", "sqrt",
                                       "log", NULL};

static double apply(int op, double a, double b) {
  switch (op) {
  case 0: return a + b;
  case 1: return a - b;
  case 2: return a * b;
  case 3: return a / b;
  case 4: return pow(a, b);
  case 5: return -a;
  case 6: return exp(a);
  case 7: return sqrt(a);
  default: return log(a);
  }
}

// An op of constants is computed here: elementwise, operands of one shape or
// scalars. Returns 1 when folded, 0 when it cannot be.
static int fold(Importer *im, const Onnx__NodeProto *n, const char *op, int a, int b) {
  const Val *x = &im->vals[a], *y = b >= 0 ? &im->vals[b] : x;
  if (!is_const(im, a) || !is_const(im, b >= 0 ? b : a)) return 0;
  const Val *big = numel(x) >= numel(y) ? x : y;
  int k = 0;
  while (foldable[k] && strcmp(foldable[k], op) != 0) k++;
  if (!foldable[k] || (numel(x) != numel(y) && numel(x) != 1 && numel(y) != 1)) return 0;
  Val *o = &im->vals[new_val(im, n->output[0])];
  o->rank = big->rank;
  memcpy(o->shape, big->shape, sizeof o->shape);
  o->data = kiln_arena_alloc(&im->arena, (size_t)numel(o) * sizeof(float) + 4);
  for (int64_t i = 0; i < numel(o); i++) o->data[i] = (float)apply(k, const_at(x, i), const_at(y, i));
  return 1;
}

//
// Ops that map one to one.
//
static int unary(Importer *im, const Onnx__NodeProto *n, const char *op) {
  int x = operand(im, n, 0);
  if (x == -2) return -1;
  if (x >= 0 && fold(im, n, op, x, -1)) return 0;
  if (x < 0 || is_const(im, x)) {
    unsupported(im, n, "on a constant");
    return 0;
  }
  Item *it = add_item(im, op, n->output[0]);
  TRY_IMPORT(item_in(im, it, x));
  same_shape(im, it, x);
  return 0;
}

static int binary(Importer *im, const Onnx__NodeProto *n, const char *op) {
  int a = operand(im, n, 0), b = operand(im, n, 1);
  if (a == -2 || b == -2) return -1;
  if (a >= 0 && b >= 0 && fold(im, n, op, a, b)) return 0;
  if (a < 0 || b < 0 || (is_const(im, a) && is_const(im, b))) {
    unsupported(im, n, "of two constants that are not elementwise");
    return 0;
  }
  Item *it = add_item(im, op, n->output[0]);
  TRY_IMPORT(item_in(im, it, a));
  TRY_IMPORT(item_in(im, it, b));
  return broadcast(im, it, a, b);
}

static int power(Importer *im, const Onnx__NodeProto *n, const char *op) {
  int x = operand(im, n, 0), e = operand(im, n, 1);
  if (x == -2 || e == -2) return -1;
  if (x >= 0 && e >= 0 && fold(im, n, op, x, e)) return 0;
  if (e < 0 || !is_const(im, e) || numel(&im->vals[e]) != 1) {
    unsupported(im, n, "only by a constant exponent");
    return 0;
  }
  TRY_IMPORT(unary(im, n, op));
  char f[32];
  fmt_float(f, sizeof f, const_at(&im->vals[e], 0));
  snprintf(im->items[im->nitems - 1].attrs, sizeof im->items[0].attrs, "exponent: %s", f);
  return 0;
}

static int opset;  // the model's default-domain opset version

// Softmax before opset 13 flattened from `axis` (default 1); that is Kiln's
// softmax only when the axis is the last one.
static int softmax(Importer *im, const Onnx__NodeProto *n, const char *op) {
  int x = operand(im, n, 0);
  if (x < 0) return x == -2 ? -1 : (unsupported(im, n, NULL), 0);
  int rank = im->vals[x].rank;
  int64_t axis = attr_i(n, "axis", opset < 13 ? 1 : -1);
  if (axis < -rank || axis >= rank)
    return fail(im, "node '%s': axis %lld is out of range for '%s' (rank %d)", S(n->name),
                (long long)axis, im->vals[x].onnx, rank);
  if (axis < 0) axis += rank;
  if (opset < 13 && axis != rank - 1) {
    unsupported(im, n, "before opset 13, only over the last axis");
    return 0;
  }
  TRY_IMPORT(unary(im, n, op));
  if (axis != rank - 1)
    snprintf(im->items[im->nitems - 1].attrs, sizeof im->items[0].attrs, "axis: %lld",
             (long long)axis);
  return 0;
}

static int reshape_to(Importer *im, const Onnx__NodeProto *n, int x, const int64_t *shape, int rank) {
  Item *it = add_item(im, "reshape", n->output[0]);
  TRY_IMPORT(item_in(im, it, x));
  Val *o = &im->vals[it->out];
  int64_t known = 1, total = numel(&im->vals[x]);
  int free_axis = -1;
  o->rank = rank;
  bool bad = false;
  for (int i = 0; i < rank && !bad; i++) {
    o->shape[i] = shape[i] == 0 && i < im->vals[x].rank ? im->vals[x].shape[i] : shape[i];
    if (o->shape[i] == -1 && free_axis < 0) free_axis = i;
    else if (o->shape[i] < 1 || o->shape[i] > total / known) bad = true;  // no overflow
    else known *= o->shape[i];
  }
  if (bad || (free_axis < 0 ? known != total : total % known))
    return fail(im, "node '%s': cannot reshape '%s' to the shape given", S(n->name), im->vals[x].onnx);
  if (free_axis >= 0) o->shape[free_axis] = total / known;
  // Written with -1 kept, so the reshape still holds when a dim is overridden.
  int64_t written[KILN_MAX_RANK];
  for (int i = 0; i < rank; i++) written[i] = i == free_axis ? -1 : o->shape[i];
  append_list(it->attrs, sizeof it->attrs, "shape", written, rank);
  return 0;
}

static int reshape(Importer *im, const Onnx__NodeProto *n, const char *op) {
  (void)op;
  int x = operand(im, n, 0), s = operand(im, n, 1);
  if (x == -2 || s == -2) return -1;
  if (x < 0 || s < 0 || is_const(im, x) || !im->vals[s].ints || numel(&im->vals[s]) > KILN_MAX_RANK) {
    unsupported(im, n, "only of a computed value to a constant shape");
    return 0;
  }
  return reshape_to(im, n, x, im->vals[s].ints, (int)numel(&im->vals[s]));
}

static int flatten(Importer *im, const Onnx__NodeProto *n, const char *op) {
  (void)op;
  int x = operand(im, n, 0);
  if (x < 0) return x == -2 ? -1 : (unsupported(im, n, NULL), 0);
  const Val *v = &im->vals[x];
  int64_t axis = attr_i(n, "axis", 1), outer = 1;
  if (axis < -v->rank || axis > v->rank)
    return fail(im, "node '%s': axis %lld is out of range for '%s' (rank %d)", S(n->name),
                (long long)axis, v->onnx, v->rank);
  if (axis < 0) axis += v->rank;
  for (int i = 0; i < axis && i < v->rank; i++) outer *= v->shape[i];
  int64_t shape[2] = {outer, -1};
  return reshape_to(im, n, x, shape, 2);
}

// A transpose of a constant (PyTorch's weight.T) is done here, on the data.
static int fold_transpose(Importer *im, const Onnx__NodeProto *n, int x, const int64_t *perm) {
  const Val *v = &im->vals[x];
  if (v->rank != 2 || perm[0] != 1) return unary(im, n, "transpose");
  Val *o = &im->vals[new_val(im, n->output[0])];
  *o = (Val){.onnx = v->onnx, .rank = 2, .shape = {v->shape[1], v->shape[0]},
             .data = transposed(im, v->data, v->shape[0], v->shape[1])};
  o->onnx = n->output[0];
  return 0;
}

static int transpose(Importer *im, const Onnx__NodeProto *n, const char *op) {
  int x = operand(im, n, 0);
  if (x < 0) return x == -2 ? -1 : (unsupported(im, n, NULL), 0);
  int rank = im->vals[x].rank;
  const Onnx__AttributeProto *a = attr(n, "perm");
  int64_t perm[KILN_MAX_RANK];
  if (a && a->n_ints != (size_t)rank)
    return fail(im, "node '%s': perm has %zu axes, '%s' has %d", S(n->name), a->n_ints,
                im->vals[x].onnx, rank);
  unsigned seen = 0;
  for (int i = 0; i < rank; i++) {
    perm[i] = a ? a->ints[i] : rank - 1 - i;
    if (perm[i] < 0 || perm[i] >= rank || seen & 1u << perm[i])
      return fail(im, "node '%s': perm is not a permutation of %d axes", S(n->name), rank);
    seen |= 1u << perm[i];
  }
  if (im->vals[x].data) return fold_transpose(im, n, x, perm);
  TRY_IMPORT(unary(im, n, op));
  Item *it = &im->items[im->nitems - 1];
  Val *o = &im->vals[it->out];
  for (int i = 0; i < rank; i++) o->shape[i] = im->vals[x].shape[perm[i]];
  append_list(it->attrs, sizeof it->attrs, "perm", perm, rank);
  return 0;
}

// Identity, and Dropout at inference: the output is the input.
static int same(Importer *im, const Onnx__NodeProto *n, const char *op) {
  (void)op;
  int x = operand(im, n, 0);
  int r;
  if (x < 0) return x == -2 ? -1 : (unsupported(im, n, NULL), 0);
  if (n->n_output > 1 && n->output[1][0] && readers(im, n->output[1], &r) > 0) {
    unsupported(im, n, "its mask is used");
    return 0;
  }
  Val *o = &im->vals[new_val(im, n->output[0])];
  if (!is_const(im, x)) {
    o->same_as = x + 1;
    return 0;
  }
  // PyTorch shares equal initializers (two fresh LayerNorms) through Identity: the
  // copy keeps its own name, which names its layer.
  const char *name = o->onnx;
  *o = im->vals[x];
  o->onnx = name;
  o->param = o->kiln = NULL;
  o->uses = 0;
  return 0;
}

static int constant(Importer *im, const Onnx__NodeProto *n, const char *op) {
  (void)op;
  const Onnx__AttributeProto *a = attr(n, "value");
  if (!a || !a->t) {
    unsupported(im, n, "only a 'value' tensor");
    return 0;
  }
  return tensor_data(im, a->t, &im->vals[new_val(im, n->output[0])]);
}

typedef int (*Handler)(Importer *im, const Onnx__NodeProto *n, const char *op);

static const struct {
  const char *onnx, *kiln;
  Handler fn;
} ops[] = {
    {"Relu", "relu", unary},       {"Sigmoid", "sigmoid", unary}, {"Tanh", "tanh", unary},
    {"Exp", "exp", unary},         {"Log", "log", unary},         {"Sqrt", "sqrt", unary},
    {"Neg", "neg", unary},         {"Add", "add", binary},        {"Sub", "sub", binary},
    {"Mul", "mul", binary},        {"Div", "div", binary},        {"Pow", "pow", power},
    {"Softmax", "softmax", softmax}, {"LogSoftmax", "log_softmax", softmax},
    {"Gather", "embedding", gather}, {"LayerNormalization", "layernorm", layernorm},
    {"Reshape", "reshape", reshape}, {"Flatten", "reshape", flatten},
    {"Transpose", "transpose", transpose}, {"Identity", NULL, same}, {"Dropout", NULL, same},
    {"Constant", NULL, constant},
};

static int translate(Importer *im, size_t i) {
  const Onnx__NodeProto *n = im->g->node[i];
  if (im->done[i]) return 0;
  if (!n->op_type) return fail(im, "node '%s' has no op type", S(n->name));
  if (n->domain && *n->domain && strcmp(n->domain, "ai.onnx") != 0) {
    unsupported(im, n, "not of the standard ONNX domain");
    return 0;
  }
  bool linear = !strcmp(n->op_type, "Gemm") || !strcmp(n->op_type, "MatMul");
  size_t k = 0;
  while (k < sizeof ops / sizeof *ops && strcmp(n->op_type, ops[k].onnx) != 0) k++;
  // After an unsupported node, values are missing: only the op types are checked.
  if (!linear && k == sizeof ops / sizeof *ops) unsupported(im, n, NULL);
  else if (im->nunsupported) return 0;
  else if (linear) return gemm_or_matmul(im, n);
  else return ops[k].fn(im, n, ops[k].kiln);
  return 0;
}

//
// Writing the model file. A value gets a name when something other than the next
// node reads it, or it is an output; layers are always named (their parameters are).
//
static const Val *first_input(const Importer *im) {
  for (int i = 0; i < im->nvals; i++)
    if (im->vals[i].input) return &im->vals[i];
  return NULL;
}

static bool read_implicitly(const Importer *im, int k) {
  const Item *it = &im->items[k], *next = k + 1 < im->nitems ? &im->items[k + 1] : NULL;
  return next && next->nin == 1 && next->in[0] == it->out && im->vals[it->out].uses == 1;
}

static void name_values(Importer *im) {
  for (int k = 0; k < im->nitems; k++) {
    Val *o = &im->vals[im->items[k].out];
    if (!o->kiln && !read_implicitly(im, k)) o->kiln = value_name(im, o->onnx);
  }
}

static void write_shape(FILE *f, const Val *v) {
  fputc('[', f);
  for (int i = 0; i < v->rank; i++)
    if (v->sym[i]) fprintf(f, "%s%s", i ? ", " : "", v->sym[i]);
    else fprintf(f, "%s%lld", i ? ", " : "", (long long)v->shape[i]);
  fputc(']', f);
}

static void write_item(FILE *f, const Importer *im, int k) {
  const Item *it = &im->items[k];
  const Val *prev = k ? &im->vals[im->items[k - 1].out] : first_input(im);
  char body[1024];
  snprintf(body, sizeof body, "%s", it->attrs);
  bool implicit = it->nin == 1 && it->in[0] >= 0 && prev == &im->vals[it->in[0]];
  if (!implicit) {
    append(body, sizeof body, "%sin: %s", *body ? ", " : "", it->nin > 1 ? "[" : "");
    for (int i = 0; i < it->nin; i++)
      append(body, sizeof body, "%s%s", i ? ", " : "",
             it->in[i] >= 0 ? im->vals[it->in[i]].kiln : it->lit[i]);
    if (it->nin > 1) append(body, sizeof body, "]");
  }
  const char *name = im->vals[it->out].kiln;
  if (name) append(body, sizeof body, "%sname: %s", *body ? ", " : "", name);
  if (*body) fprintf(f, "  - %s: {%s}\n", it->op, body);
  else fprintf(f, "  - %s\n", it->op);
}

// Text from the file into a comment line: printable ASCII, anything else '?' (a
// newline would end the comment, a control character is an error in YAML).
static void comment_text(FILE *f, const char *s) {
  for (; *s; s++) fputc(*s >= 0x20 && *s < 0x7f ? *s : '?', f);
}

static void write_model(FILE *f, const Importer *im, const Onnx__ModelProto *m, const char *name,
                        const char *weights) {
  fputs("# Imported from ", f);
  comment_text(f, im->path);
  fprintf(f, " by kiln %s", KILN_VERSION);
  if (m->producer_name && *m->producer_name) {
    fputs(" (made by ", f);
    comment_text(f, m->producer_name);
    fputc(' ', f);
    comment_text(f, S(m->producer_version));
    fprintf(f, ", ONNX opset %d)", opset);
  }
  fputs(".\n# Weights: ", f);
  comment_text(f, weights);
  fprintf(f, ". Run it with --weights that file.\nkiln: 1\nname: %s\n", name);
  if (im->ndimnames) {
    fputs("dims: {", f);
    for (int i = 0; i < im->ndimnames; i++)
      fprintf(f, "%s%s: %lld", i ? ", " : "", im->dimnames[i], (long long)im->dimvals[i]);
    fputs("}\n", f);
  }
  fputs("inputs:\n", f);
  for (int i = 0; i < im->nvals; i++)
    if (im->vals[i].input) {
      fprintf(f, "  %s: {shape: ", im->vals[i].kiln);
      write_shape(f, &im->vals[i]);
      fprintf(f, "%s}\n", im->vals[i].i32 ? ", dtype: i32" : "");
    }
  bool params = false;
  for (int i = 0; i < im->nvals; i++)
    if (im->vals[i].param) {
      fprintf(f, "%s  %s: {shape: ", params ? "" : "params:   # values from the weights file\n",
              im->vals[i].param);
      write_shape(f, &im->vals[i]);
      fputs("}\n", f);
      params = true;
    }
  fputs("graph:\n", f);
  for (int k = 0; k < im->nitems; k++) write_item(f, im, k);
  fputs("outputs: [", f);
  for (size_t i = 0; i < im->g->n_output; i++)
    fprintf(f, "%s%s", i ? ", " : "", im->vals[find_val(im, S(im->g->output[i]->name))].kiln);
  fputs("]\n", f);
}

//
// The importer's steps: read, translate, write.
//
static int read_model(Importer *im, Onnx__ModelProto **out) {
  FILE *f = fopen(im->path, "rb");
  if (!f) return fail(im, "cannot open: %s", strerror(errno));
  uint8_t *buf = NULL;
  size_t len = 0, cap = 0;
  for (;;) {
    if (len == cap) {
      if (cap >= MAX_FILE) {
        free(buf);
        fclose(f);
        return fail(im, "larger than 2 GiB, the most a protobuf message holds");
      }
      cap = cap ? 2 * cap : (size_t)1 << 16;
      uint8_t *grown = realloc(buf, cap);
      if (!grown) kiln_out_of_memory(cap);
      buf = grown;
    }
    size_t got = fread(buf + len, 1, cap - len, f);
    len += got;
    if (got == 0) break;
  }
  bool bad = ferror(f);
  fclose(f);
  *out = bad ? NULL : onnx__model_proto__unpack(NULL, len, buf);
  free(buf);
  if (bad) return fail(im, "cannot read: %s", strerror(errno));
  if (!*out || !(*out)->graph) return fail(im, "not an ONNX model (it does not parse as one)");
  return 0;
}

static void set_opset(const Onnx__ModelProto *m) {
  opset = 1;
  for (size_t i = 0; i < m->n_opset_import; i++) {
    const Onnx__OperatorSetIdProto *o = m->opset_import[i];
    if ((!o->domain || !*o->domain || !strcmp(o->domain, "ai.onnx")) && o->has_version)
      opset = (int)o->version;
  }
}

static void setup(Importer *im, const Onnx__GraphProto *g) {
  im->g = g;
  size_t nv = g->n_initializer + g->n_input + 3 * g->n_node + 8;
  im->vals = kiln_arena_alloc(&im->arena, nv * sizeof *im->vals);
  im->items = kiln_arena_alloc(&im->arena, (2 * g->n_node + 1) * sizeof *im->items);
  im->weights = kiln_arena_alloc(&im->arena, (3 * g->n_node + g->n_initializer + 1) * sizeof *im->weights);
  im->names = kiln_arena_alloc(&im->arena, (nv + 2 * g->n_node + 1) * sizeof *im->names);
  im->done = kiln_arena_alloc(&im->arena, (g->n_node + 1) * sizeof *im->done);
}

static int translate_graph(Importer *im) {
  const Onnx__GraphProto *g = im->g;
  for (size_t i = 0; i < g->n_initializer; i++) {
    Val *v = &im->vals[new_val(im, S(g->initializer[i]->name))];
    TRY_IMPORT(tensor_data(im, g->initializer[i], v));
  }
  for (size_t i = 0; i < g->n_input; i++) TRY_IMPORT(graph_input(im, g->input[i]));
  if (!first_input(im)) return fail(im, "the graph has no inputs");
  if (g->n_output == 0) return fail(im, "the graph has no outputs");
  // Nodes are folded into their producers (an activation into a dense) before
  // their turn comes: every one must have its output from the start.
  for (size_t i = 0; i < g->n_node; i++)
    if (g->node[i]->n_output < 1)
      return fail(im, "node '%s' (%s) has no output", S(g->node[i]->name), S(g->node[i]->op_type));
  char *list = NULL;
  size_t len = 0;
  im->unsupported = open_memstream(&list, &len);
  if (!im->unsupported) kiln_out_of_memory(0);
  int rc = 0;
  for (size_t i = 0; rc == 0 && i < g->n_node; i++) rc = translate(im, i);
  fclose(im->unsupported);
  if (rc == 0 && im->nunsupported)
    rc = fail(im, "%d node%s Kiln cannot import:%s", im->nunsupported,
              im->nunsupported == 1 ? "" : "s", list);
  free(list);
  for (size_t i = 0; rc == 0 && i < g->n_output; i++) {
    int v = find_val(im, S(g->output[i]->name));
    if (v < 0 || is_const(im, v) || im->vals[v].input)
      rc = fail(im, "output '%s' is not computed by the graph", S(g->output[i]->name));
    else im->vals[v].uses++;
    for (size_t j = 0; rc == 0 && j < i; j++)
      if (strcmp(S(g->output[i]->name), S(g->output[j]->name)) == 0)
        rc = fail(im, "output '%s' is listed twice", S(g->output[i]->name));
  }
  return rc;
}

static int write_weights(Importer *im, const char *path) {
  KilnTensorDesc *descs = kiln_arena_alloc(&im->arena, (size_t)(im->nweights + 1) * sizeof *descs);
  const void **data = kiln_arena_alloc(&im->arena, (size_t)(im->nweights + 1) * sizeof *data);
  for (int i = 0; i < im->nweights; i++) {
    const Weight *w = &im->weights[i];
    descs[i] = (KilnTensorDesc){.name = w->name, .dtype = KILN_ABI_F32, .rank = w->rank};
    memcpy(descs[i].shape, w->shape, sizeof descs[i].shape);
    descs[i].bytes = kiln_numel(w->shape, w->rank) * (int64_t)sizeof(float);
    data[i] = w->data;
  }
  KilnStatus st = {0};
  if (kiln_st_write(path, descs, data, im->nweights, NULL, NULL, 0, &st) != 0)
    return fail(im, "%s", st.msg);
  return 0;
}

static int write_yaml(Importer *im, const Onnx__ModelProto *m, const char *path, const char *name,
                      const char *weights) {
  char tmp[4200];
  snprintf(tmp, sizeof tmp, "%s.tmp%ld", path, (long)getpid());
  FILE *f = fopen(tmp, "w");
  if (!f) return fail(im, "cannot write %s: %s", tmp, strerror(errno));
  name_values(im);
  const char *base = strrchr(weights, '/');
  write_model(f, im, m, name, base ? base + 1 : weights);
  if (fflush(f) != 0 || fsync(fileno(f)) != 0 || fclose(f) != 0 || rename(tmp, path) != 0) {
    unlink(tmp);
    return fail(im, "cannot write %s: %s", path, strerror(errno));
  }
  return 0;
}

int kiln_import_onnx(KilnDiag *d, const KilnImportOpts *o) {
  Importer im = {.d = d, .path = o->input, .dims = o->dims, .ndims = o->ndims};
  Onnx__ModelProto *m = NULL;
  int rc = read_model(&im, &m);
  if (rc == 0) {
    set_opset(m);
    setup(&im, m->graph);
    rc = translate_graph(&im);
  }
  if (rc == 0) rc = write_weights(&im, o->weights);
  if (rc == 0) rc = write_yaml(&im, m, o->output, o->name, o->weights);
  if (m) onnx__model_proto__free_unpacked(m, NULL);
  kiln_arena_free(&im.arena);
  return rc;
}

//
// kiln import [options] MODEL.onnx
//
static void import_usage(FILE *f) {
  fputs("usage: kiln import [options] MODEL.onnx\n"
        "\n"
        "Converts an ONNX model into a Kiln model file and its weights (safetensors).\n"
        "Linear layers become dense, Gather from a table embedding, LayerNormalization\n"
        "layernorm, and Relu, Sigmoid, Tanh, Softmax, Add, Sub, Mul, Div, Reshape,\n"
        "Transpose, ... their Kiln ops; nodes of other ops are listed by op and name.\n"
        "\n"
        "options:\n"
        "  -o, --output FILE      the model file (default: MODEL.yaml)\n"
        "  --weights FILE         the weights (default: the model file's name with\n"
        "                         .safetensors)\n"
        "  --name NAME            the model's name (default: from the model file's name)\n"
        "  --dim NAME=VALUE       the size of a free (symbolic) input axis (repeatable)\n"
        "  -h, --help             show this help\n",
        f);
}

// path without its extension, then ext.
static char *with_ext(KilnArena *a, const char *path, const char *ext) {
  const char *slash = strrchr(path, '/'), *dot = strrchr(path, '.');
  size_t len = dot && (!slash || dot > slash) ? (size_t)(dot - path) : strlen(path);
  return kiln_arena_printf(a, "%.*s%s", (int)len, path, ext);
}

static const char *default_name(Importer *im, const char *output) {
  const char *slash = strrchr(output, '/'), *base = slash ? slash + 1 : output;
  const char *dot = strrchr(base, '.');
  return mangle(im, base, dot ? (size_t)(dot - base) : strlen(base));
}

static int parse_dim_arg(const char *arg, KilnDimOverride *out) {
  const char *eq = strchr(arg, '=');
  char *end;
  if (!eq || eq == arg) return -1;
  long long v = strtoll(eq + 1, &end, 10);
  if (*end || end == eq + 1 || v < 1 || v > KILN_MAX_ELEMS) return -1;
  out->name = strndup(arg, (size_t)(eq - arg));
  out->value = v;
  return out->name ? 0 : -1;
}

static int import_args(int argc, char **argv, KilnImportOpts *o, KilnDimOverride *dims, int max) {
  static const struct option longs[] = {
      {"output", required_argument, NULL, 'o'}, {"weights", required_argument, NULL, 'W'},
      {"name", required_argument, NULL, 'N'},   {"dim", required_argument, NULL, 'D'},
      {"help", no_argument, NULL, 'h'},         {0}};
  int c;
  while ((c = getopt_long(argc, argv, "o:h", longs, NULL)) != -1) {
    switch (c) {
    case 'o': o->output = optarg; break;
    case 'W': o->weights = optarg; break;
    case 'N': o->name = optarg; break;
    case 'D':
      if (o->ndims == max || parse_dim_arg(optarg, &dims[o->ndims]) != 0) {
        fprintf(stderr, "kiln import: --dim expects NAME=VALUE with VALUE >= 1, got '%s'\n", optarg);
        return 2;
      }
      o->ndims++;
      break;
    case 'h': import_usage(stdout); return -1;  // done: exit status 0
    default: import_usage(stderr); return 2;
    }
  }
  if (optind != argc - 1) {
    fputs(optind >= argc ? "kiln import: no ONNX file given\n" : "kiln import: give one ONNX file\n",
          stderr);
    import_usage(stderr);
    return 2;
  }
  o->input = argv[optind];
  return 0;
}

static bool ident(const char *s) {
  if (!*s || strlen(s) > 64 || !(isalpha((unsigned char)*s) || *s == '_')) return false;
  for (; *s; s++)
    if (!isalnum((unsigned char)*s) && *s != '_') return false;
  return true;
}

int kiln_import_main(int argc, char **argv) {
  KilnDimOverride dims[64];
  KilnImportOpts o = {.dims = dims};
  int rc = import_args(argc, argv, &o, dims, 64);
  Importer names = {0};
  if (rc == 0) {
    if (!o.output) o.output = with_ext(&names.arena, o.input, ".yaml");
    if (!o.weights) o.weights = with_ext(&names.arena, o.output, ".safetensors");
    if (!o.name) o.name = default_name(&names, o.output);
    if (!ident(o.name)) {
      fprintf(stderr, "kiln import: the model name '%s' is not an identifier "
                      "([A-Za-z_][A-Za-z0-9_]*, at most 64); give one with --name\n", o.name);
      rc = 2;
    }
  }
  if (rc == 0) {
    KilnDiag d;
    kiln_diag_init(&d, stderr);
    rc = kiln_import_onnx(&d, &o) == 0 ? 0 : 1;
  }
  for (int i = 0; i < o.ndims; i++) free((char *)dims[i].name);
  kiln_arena_free(&names.arena);
  return rc < 0 ? 0 : rc;
}
