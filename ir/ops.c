// The op table: KILN_OPS expanded into kiln_ops[], with the scalar semantics,
// FLOP counts and attribute schemas its columns name. Shape rules are in shape.c.
#include "ir/ir.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

// Shape rules live in shape.c as kiln_<column name>; only this table calls them.
// Declared from the table itself, so a new rule name cannot be forgotten here.
#define X(op, spelling, lo, hi, fuse, flags, shape, ...) \
  int kiln_##shape(const KilnGraph *g, KilnNode *n, char *err, size_t errlen);
KILN_OPS(X)
#undef X

//
// Scalar semantics of elementwise ops, in double so folding and reference
// interpreters lose nothing to the f32 kernels they check.
//
static double sc_neg(const double *x, const KilnAttrs *a) { (void)a; return -x[0]; }
static double sc_exp(const double *x, const KilnAttrs *a) { (void)a; return exp(x[0]); }
static double sc_log(const double *x, const KilnAttrs *a) { (void)a; return log(x[0]); }
static double sc_sqrt(const double *x, const KilnAttrs *a) { (void)a; return sqrt(x[0]); }
static double sc_rsqrt(const double *x, const KilnAttrs *a) { (void)a; return 1.0 / sqrt(x[0]); }
static double sc_pow(const double *x, const KilnAttrs *a) { return pow(x[0], a->exponent); }
static double sc_tanh(const double *x, const KilnAttrs *a) { (void)a; return tanh(x[0]); }

// Comparisons, not fmax: a NaN input stays NaN, as in the kernels.
static double sc_relu(const double *x, const KilnAttrs *a) {
  (void)a;
  return x[0] < 0 ? 0.0 : x[0];
}

// Two branches so exp never overflows: exp(-x) for x >= 0, exp(x) otherwise.
static double sigmoid(double x) {
  if (x >= 0) return 1.0 / (1.0 + exp(-x));
  double e = exp(x);
  return e / (1.0 + e);
}

static double sc_sigmoid(const double *x, const KilnAttrs *a) { (void)a; return sigmoid(x[0]); }
static double sc_silu(const double *x, const KilnAttrs *a) { (void)a; return x[0] * sigmoid(x[0]); }

// The tanh approximation (Hendrycks & Gimpel), as GPT-2 uses:
// 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
static double sc_gelu(const double *x, const KilnAttrs *a) {
  (void)a;
  const double k = 0.7978845608028654;  // sqrt(2/pi)
  double v = x[0];
  return 0.5 * v * (1.0 + tanh(k * (v + 0.044715 * v * v * v)));
}

static double sc_clamp(const double *x, const KilnAttrs *a) {
  if (x[0] < a->lo) return a->lo;
  if (x[0] > a->hi) return a->hi;
  return x[0];
}

static double sc_add(const double *x, const KilnAttrs *a) { (void)a; return x[0] + x[1]; }
static double sc_sub(const double *x, const KilnAttrs *a) { (void)a; return x[0] - x[1]; }
static double sc_mul(const double *x, const KilnAttrs *a) { (void)a; return x[0] * x[1]; }
static double sc_div(const double *x, const KilnAttrs *a) { (void)a; return x[0] / x[1]; }

// Gradient ops: x[0] is the forward input, x[1] the gradient flowing back.
// d/dx of the tanh-approximated gelu: with u = k (x + c x^3) and t = tanh(u),
// 0.5 (1 + t) + 0.5 x (1 - t^2) k (1 + 3 c x^2).
static double sc_gelu_grad(const double *x, const KilnAttrs *a) {
  (void)a;
  const double k = 0.7978845608028654, c = 0.044715;
  double v = x[0], t = tanh(k * (v + c * v * v * v));
  return x[1] * (0.5 * (1 + t) + 0.5 * v * (1 - t * t) * k * (1 + 3 * c * v * v));
}

// d/dx x sigmoid(x) = s (1 + x (1 - s)).
static double sc_silu_grad(const double *x, const KilnAttrs *a) {
  (void)a;
  double s = sigmoid(x[0]);
  return x[1] * s * (1 + x[0] * (1 - s));
}

// The gradient passes where min <= x <= max (as PyTorch's clamp), else 0.
static double sc_clamp_grad(const double *x, const KilnAttrs *a) {
  return x[0] >= a->lo && x[0] <= a->hi ? x[1] : 0.0;
}

// The condition is f32; any nonzero value (NaN included) selects a.
static double sc_where(const double *x, const KilnAttrs *a) {
  (void)a;
  return x[0] != 0 ? x[1] : x[2];
}

//
// FLOP counts: a rough, stable measure for `kiln check` summaries, not a cycle
// model. Products saturate at INT64_MAX instead of overflowing.
//
static int64_t mul(int64_t a, int64_t b) {
  if (a <= 0 || b <= 0) return 0;
  return a > INT64_MAX / b ? INT64_MAX : a * b;
}

static int64_t add(int64_t a, int64_t b) { return a > INT64_MAX - b ? INT64_MAX : a + b; }

static int64_t numel(const KilnNode *n) {
  int64_t c = kiln_numel(n->shape, n->rank);
  return c < 0 ? 0 : c;
}

static const KilnNode *arg(const KilnGraph *g, const KilnNode *n, int i) {
  KILN_ASSERT(i < n->nin && n->in[i] >= 0 && n->in[i] < g->nnodes);
  return &g->nodes[n->in[i]];
}

// Elementwise work is per element of the output, or of the first input when that
// is larger: the losses (mse, binary_cross_entropy) reduce to a scalar.
static int64_t elem(const KilnGraph *g, const KilnNode *n) {
  int64_t c = numel(n);
  if (n->nin > 0 && numel(arg(g, n, 0)) > c) c = numel(arg(g, n, 0));
  return c;
}

static int64_t flops_zero(const KilnGraph *g, const KilnNode *n) {
  (void)g, (void)n;
  return 0;
}
static int64_t flops_elem(const KilnGraph *g, const KilnNode *n) { return elem(g, n); }
static int64_t flops_elem3(const KilnGraph *g, const KilnNode *n) { return mul(3, elem(g, n)); }
static int64_t flops_elem4(const KilnGraph *g, const KilnNode *n) { return mul(4, elem(g, n)); }
static int64_t flops_elem8(const KilnGraph *g, const KilnNode *n) { return mul(8, elem(g, n)); }
static int64_t flops_in(const KilnGraph *g, const KilnNode *n) { return numel(arg(g, n, 0)); }

// max, subtract and exp, sum, divide (or log): about five per input element.
static int64_t flops_softmax(const KilnGraph *g, const KilnNode *n) {
  return mul(5, numel(arg(g, n, 0)));
}

// mean, centre, square, sum, scale by rsqrt, gamma, beta: about eight per element.
static int64_t flops_layernorm(const KilnGraph *g, const KilnNode *n) {
  return mul(8, numel(arg(g, n, 0)));
}

// A multiply and an add per inner-dimension step of each output element:
// 2 * K * (batch * M * N).
static int64_t flops_matmul(const KilnGraph *g, const KilnNode *n) {
  const KilnNode *a = arg(g, n, 0);
  if (a->rank < 2) return 0;
  int64_t k = n->attr.trans_a ? a->shape[a->rank - 2] : a->shape[a->rank - 1];
  return mul(2, mul(k, numel(n)));
}

// Per time step: x_t W_ih and h W_hh as one [B, I+H] x [I+H, 4H] product, then
// about ten elementwise operations per hidden unit (gate activations, c and h).
static int64_t flops_lstm(const KilnGraph *g, const KilnNode *n) {
  const KilnNode *x = arg(g, n, 0), *w_hh = arg(g, n, 2);
  if (x->rank != 3 || w_hh->rank != 2) return 0;
  int64_t b = x->shape[0], t = x->shape[1], i = x->shape[2], h = w_hh->shape[0];
  int64_t gemm = mul(2, mul(mul(b, add(i, h)), mul(4, h)));
  return mul(t, add(gemm, mul(10, mul(b, h))));
}

// Q K^T and P V each cost 2 * B * T * T * D summed over heads; the softmax about
// five per score, B * heads * T * T scores. A causal mask skips half the scores,
// but the count keeps the full square: kernels may compute it and mask after.
static int64_t flops_attention(const KilnGraph *g, const KilnNode *n) {
  const KilnNode *q = arg(g, n, 0);
  if (q->rank != 3) return 0;
  int64_t b = q->shape[0], t = q->shape[1], d = q->shape[2];
  int64_t square = mul(b, mul(t, t));
  return add(mul(4, mul(square, d)), mul(5, mul(square, n->attr.heads)));
}

// One query against every cached position (the cost at a full cache).
static int64_t flops_attention_decode(const KilnGraph *g, const KilnNode *n) {
  const KilnNode *kc = arg(g, n, 3);
  if (kc->rank != 3) return 0;
  int64_t cells = mul(kc->shape[0], kc->shape[1]);
  return add(mul(4, mul(cells, kc->shape[2])), mul(5, mul(cells, n->attr.heads)));
}

// Backward passes: about twice the forward's work (two products per forward one).
static int64_t flops_lstm_grad(const KilnGraph *g, const KilnNode *n) {
  const KilnNode *x = arg(g, n, 0), *whh = arg(g, n, 2);
  if (x->rank != 3 || whh->rank != 2) return 0;
  int64_t b = x->shape[0], t = x->shape[1], i = x->shape[2], h = whh->shape[0];
  return mul(3, mul(mul(b, t), add(mul(2, mul(add(i, h), mul(4, h))), mul(10, h))));
}

static int64_t flops_attention_grad(const KilnGraph *g, const KilnNode *n) {
  return mul(3, flops_attention(g, n));
}

//
// Attribute schemas: YAML name, type, field, required, default.
//
#define SPEC(name, type, field, req, dflt) \
  { name, KILN_ATTR_##type, offsetof(KilnAttrs, field), req, dflt }

// A slice's end defaults to "past the last element"; shape_slice clamps it to the
// dimension. 2^62, not INT64_MAX: the default travels as a double, and INT64_MAX
// rounds up to 2^63, which converts back to int64_t out of range (undefined).
#define SLICE_END_DEFAULT 4611686018427387904.0

static const KilnAttrSpec attrs_none[] = {{NULL}};
static const KilnAttrSpec attrs_pow[] = {SPEC("exponent", FLOAT, exponent, true, 0), {NULL}};
static const KilnAttrSpec attrs_clamp[] = {
    SPEC("min", FLOAT, lo, false, -HUGE_VAL), SPEC("max", FLOAT, hi, false, HUGE_VAL), {NULL}};
static const KilnAttrSpec attrs_dropout[] = {SPEC("p", FLOAT, p, false, 0.1), {NULL}};
// No axes: reduce over all of them.
static const KilnAttrSpec attrs_reduce[] = {
    SPEC("axes", INTS, ints, false, 0), SPEC("keepdims", BOOL, keepdims, false, 0), {NULL}};
static const KilnAttrSpec attrs_axis[] = {SPEC("axis", INT, axis, false, -1), {NULL}};
static const KilnAttrSpec attrs_layernorm[] = {SPEC("eps", FLOAT, eps, false, 1e-5), {NULL}};
static const KilnAttrSpec attrs_matmul[] = {SPEC("transpose_a", BOOL, trans_a, false, 0),
                                            SPEC("transpose_b", BOOL, trans_b, false, 0),
                                            {NULL}};
static const KilnAttrSpec attrs_reshape[] = {SPEC("shape", INTS, ints, true, 0), {NULL}};
// No perm: reverse the axes.
static const KilnAttrSpec attrs_transpose[] = {SPEC("perm", INTS, ints, false, 0), {NULL}};
static const KilnAttrSpec attrs_slice[] = {SPEC("axis", INT, axis, false, -1),
                                           SPEC("start", INT, start, false, 0),
                                           SPEC("end", INT, end, false, SLICE_END_DEFAULT),
                                           {NULL}};
static const KilnAttrSpec attrs_embedding_grad[] = {SPEC("size", INT, size, true, 0), {NULL}};
static const KilnAttrSpec attrs_attention[] = {
    SPEC("heads", INT, heads, true, 0), SPEC("causal", BOOL, causal, false, 0), {NULL}};

//
// The table.
//
// The flags column is written with short names; they exist only while the table
// expands.
#define DIFF KILN_OPF_DIFF
#define INPLACE KILN_OPF_INPLACE
#define COMMUTE KILN_OPF_COMMUTE
#define LOSS KILN_OPF_LOSS
#define RANDOM KILN_OPF_RANDOM
#define TRAIN_ONLY KILN_OPF_TRAIN_ONLY
#define INTERNAL KILN_OPF_INTERNAL
#define EPILOGUE KILN_OPF_EPILOGUE
#define VIEW KILN_OPF_VIEW
#define STATE KILN_OPF_STATE
#define STRIDED KILN_OPF_STRIDED
#define WINDOW KILN_OPF_WINDOW

const KilnOpInfo kiln_ops[] = {
#define X(op, spelling, lo, hi, fuse, flags, shape, scalar, flops, attrs) \
  [KILN_OP_##op] = {spelling, lo, hi, KILN_FUSE_##fuse, flags, kiln_##shape, scalar, flops, attrs},
    KILN_OPS(X)
#undef X
};

#undef DIFF
#undef INPLACE
#undef COMMUTE
#undef LOSS
#undef RANDOM
#undef TRAIN_ONLY
#undef INTERNAL
#undef EPILOGUE
#undef VIEW
#undef STATE
#undef STRIDED
#undef WINDOW

_Static_assert(sizeof kiln_ops / sizeof kiln_ops[0] == KILN_OP_COUNT,
               "kiln_ops must have one entry per KilnOp");

bool kiln_op_lookup(const char *name, KilnOp *out_op) {
  for (int i = 0; i < KILN_OP_COUNT; i++) {
    if (strcmp(kiln_ops[i].name, name) == 0) {
      *out_op = (KilnOp)i;
      return true;
    }
  }
  return false;
}

const char *kiln_dtype_name(KilnDType t) {
  switch (t) {
  case KILN_F32: return "f32";
  case KILN_I32: return "i32";
  }
  return "?";
}

const char *kiln_fuse_name(KilnFuseKind k) {
  switch (k) {
  case KILN_FUSE_SOURCE: return "source";
  case KILN_FUSE_ELEMWISE: return "elemwise";
  case KILN_FUSE_BROADCAST: return "broadcast";
  case KILN_FUSE_INJECTIVE: return "injective";
  case KILN_FUSE_REDUCE: return "reduce";
  case KILN_FUSE_OPAQUE: return "opaque";
  }
  return "?";
}

const char *kiln_init_name(KilnInitKind k) {
  switch (k) {
  case KILN_INIT_ZEROS: return "zeros";
  case KILN_INIT_ONES: return "ones";
  case KILN_INIT_NORMAL: return "normal";
  case KILN_INIT_UNIFORM: return "uniform";
  case KILN_INIT_XAVIER: return "xavier";
  case KILN_INIT_KAIMING: return "kaiming";
  }
  return "?";
}

//
// Internal errors and names.
//
_Noreturn void kiln_assert_fail(const char *what, const char *file, int line) {
  fprintf(stderr, "kiln: internal error at %s:%d: assertion failed: %s\n", file, line, what);
  fflush(stderr);
  abort();
}

static bool is_alpha(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}
static bool is_digit(char c) { return c >= '0' && c <= '9'; }

// Names become C identifiers and file names (dots turned into underscores), so
// ".." (a path component) and overly long names are refused too.
const char *kiln_name_problem(const char *name) {
  if (!name || !*name) return "the name is empty";
  if (!is_alpha(name[0])) return "a name must start with a letter or '_'";
  size_t len = 0;
  for (const char *p = name; *p; p++, len++) {
    if (!is_alpha(*p) && !is_digit(*p) && *p != '.')
      return "a name may hold only letters, digits, '_' and '.'";
    if (p[0] == '.' && p[1] == '.') return "a name must not contain \"..\"";
  }
  if (len > 64) return "a name must be at most 64 characters long";
  return NULL;
}
