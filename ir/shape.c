// Shape helpers and the shape rule of every op. A rule reads its node's inputs and
// attributes, fills dtype, rank and shape, and returns 0; or writes one precise
// message (with the shapes involved, as the user wrote them) and returns -1. The
// front end prefixes the message with the node's YAML location.
#include <stdarg.h>
#include <string.h>

#include "ir/ir.h"

// Matches the declarations ops.c makes from the table, so a rule's signature is
// checked against KilnShapeFn here too.
#define X(op, spelling, lo, hi, fuse, flags, shape, ...) \
  int kiln_##shape(const KilnGraph *g, KilnNode *n, char *err, size_t errlen);
KILN_OPS(X)
#undef X

// Room for "f32" and six 20-character dims with brackets and commas.
#define SHAPE_LEN 160

//
// Helpers shared with the front end.
//
int64_t kiln_numel(const int64_t *shape, int rank) {
  if (rank < 0) return -1;
  int64_t n = 1;
  for (int i = 0; i < rank; i++) {
    // n <= KILN_MAX_ELEMS, so checking against the bound first keeps n*d in range.
    if (shape[i] <= 0 || shape[i] > KILN_MAX_ELEMS / n) return -1;
    n *= shape[i];
  }
  return n;
}

// Numpy rules: align trailing axes; each pair is equal or one of them is 1.
int kiln_broadcast_shapes(const int64_t *a, int ra, const int64_t *b, int rb, int64_t *out,
                          int *out_rank) {
  int r = ra > rb ? ra : rb;
  if (ra < 0 || rb < 0 || r > KILN_MAX_RANK) return -1;
  int64_t tmp[KILN_MAX_RANK];  // out may alias a or b
  for (int i = 0; i < r; i++) {
    int64_t da = i < r - ra ? 1 : a[i - (r - ra)];
    int64_t db = i < r - rb ? 1 : b[i - (r - rb)];
    if (da != db && da != 1 && db != 1) return -1;
    tmp[i] = da == 1 ? db : da;
  }
  memcpy(out, tmp, (size_t)r * sizeof *out);
  *out_rank = r;
  return 0;
}

int64_t kiln_norm_axis(int64_t axis, int rank) {
  if (axis < -(int64_t)rank || axis >= rank) return -1;
  return axis < 0 ? axis + rank : axis;
}

// Shows at most KILN_MAX_RANK dims; callers check the rank first.
char *kiln_dims_str(const int64_t *shape, int rank, char *buf, size_t len) {
  char tmp[SHAPE_LEN] = "[";  // holds KILN_MAX_RANK dims of any value untruncated
  size_t at = 1;
  for (int i = 0; i < rank && i < KILN_MAX_RANK; i++)
    at += (size_t)snprintf(tmp + at, sizeof tmp - at, "%s%lld", i ? "," : "", (long long)shape[i]);
  snprintf(buf, len, "%s]", tmp);
  return buf;
}

//
// Helpers of the rules.
//
__attribute__((format(printf, 3, 4))) static int fail(char *err, size_t errlen, const char *fmt,
                                                      ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, errlen, fmt, ap);
  va_end(ap);
  return -1;
}

// Input i of n; the graph guarantees inputs are earlier nodes and arity fits.
static const KilnNode *arg(const KilnGraph *g, const KilnNode *n, int i) {
  KILN_ASSERT(i < n->nin && n->in[i] >= 0 && n->in[i] < g->nnodes);
  return &g->nodes[n->in[i]];
}

static const char *name(const KilnNode *n) { return kiln_op(n->op)->name; }

// Shape text, e.g. "f32[10,5]", returned by value: the array lives until the end
// of the full expression, so one message can show several shapes.
typedef struct {
  char s[SHAPE_LEN];
} Text;

static Text shape_text(const KilnNode *n) {
  Text t;
  kiln_shape_str(n, t.s, sizeof t.s);
  return t;
}

static Text dims_text(const int64_t *shape, int rank) {
  Text t;
  kiln_dims_str(shape, rank, t.s, sizeof t.s);
  return t;
}

#define str(n) shape_text(n).s
#define dims(shape, rank) dims_text(shape, rank).s

// Every rule ends here: the result must be a tensor we can allocate.
static int set(KilnNode *n, KilnDType t, const int64_t *shape, int rank, char *err,
               size_t errlen) {
  const char *what = kiln_op(n->op)->fuse == KILN_FUSE_SOURCE ? "" : " result";
  if (rank < 0 || rank > KILN_MAX_RANK)
    return fail(err, errlen, "%s%s has rank %d; at most %d is supported", name(n), what, rank,
                KILN_MAX_RANK);
  for (int i = 0; i < rank; i++)
    if (shape[i] <= 0)
      return fail(err, errlen, "%s%s %s%s has a dimension <= 0", name(n), what,
                  kiln_dtype_name(t), dims(shape, rank));
  if (kiln_numel(shape, rank) < 0)
    return fail(err, errlen, "tensor too large: %s%s %s%s has more than %lld elements", name(n),
                what, kiln_dtype_name(t), dims(shape, rank), (long long)KILN_MAX_ELEMS);
  if (rank) memmove(n->shape, shape, (size_t)rank * sizeof *shape);
  n->dtype = t;
  n->rank = rank;
  return 0;
}

static int want_f32(const KilnNode *n, const KilnNode *x, const char *what, char *err,
                    size_t errlen) {
  if (x->dtype == KILN_F32) return 0;
  return fail(err, errlen, "%s expects f32%s%s, got %s", name(n), what ? " " : "",
              what ? what : "", str(x));
}

static bool same_shape(const KilnNode *a, const KilnNode *b) {
  return a->rank == b->rank && memcmp(a->shape, b->shape, (size_t)a->rank * sizeof *a->shape) == 0;
}

//
// Rules.
//
// The front end set the shape from the model; it must still be one we can hold.
int kiln_shape_source(const KilnGraph *g, KilnNode *n, char *err, size_t errlen) {
  (void)g;
  return set(n, n->dtype, n->shape, n->rank, err, errlen);
}

// Elementwise math: f32 in, same shape out. Attribute ranges are checked here too,
// so a bad value is reported at its node.
int kiln_shape_unary(const KilnGraph *g, KilnNode *n, char *err, size_t errlen) {
  const KilnNode *x = arg(g, n, 0);
  if (want_f32(n, x, NULL, err, errlen)) return -1;
  if (n->op == KILN_OP_CLAMP && !(n->attr.lo <= n->attr.hi))
    return fail(err, errlen, "clamp needs min <= max, got min %g and max %g", n->attr.lo,
                n->attr.hi);
  if (n->op == KILN_OP_DROPOUT && !(n->attr.p >= 0 && n->attr.p < 1))
    return fail(err, errlen, "dropout probability p must be in [0, 1), got %g", n->attr.p);
  return set(n, KILN_F32, x->shape, x->rank, err, errlen);
}

int kiln_shape_binary(const KilnGraph *g, KilnNode *n, char *err, size_t errlen) {
  const KilnNode *a = arg(g, n, 0), *b = arg(g, n, 1);
  int64_t out[KILN_MAX_RANK];
  int r;
  if (a->dtype != b->dtype)
    return fail(err, errlen, "%s operands differ in type: %s and %s", name(n), str(a), str(b));
  if (kiln_broadcast_shapes(a->shape, a->rank, b->shape, b->rank, out, &r))
    return fail(err, errlen, "cannot broadcast %s with %s", str(a), str(b));
  return set(n, a->dtype, out, r, err, errlen);
}

// where(cond, a, b): all three f32 (cond nonzero = true), broadcast together.
int kiln_shape_where(const KilnGraph *g, KilnNode *n, char *err, size_t errlen) {
  static const char *const role[] = {"condition", "a", "b"};
  int64_t out[KILN_MAX_RANK];
  int r = 0;
  for (int i = 0; i < 3; i++) {
    const KilnNode *x = arg(g, n, i);
    if (want_f32(n, x, role[i], err, errlen)) return -1;
    if (kiln_broadcast_shapes(out, r, x->shape, x->rank, out, &r))
      return fail(err, errlen, "cannot broadcast where inputs %s, %s and %s",
                  str(arg(g, n, 0)), str(arg(g, n, 1)), str(arg(g, n, 2)));
  }
  return set(n, KILN_F32, out, r, err, errlen);
}

// Marks the reduced axes of x in out_mask; no axes means all of them.
static int reduce_mask(const KilnNode *n, const KilnNode *x, bool *out_mask, char *err,
                       size_t errlen) {
  KILN_ASSERT(n->attr.nints >= 0 && n->attr.nints <= KILN_MAX_RANK);
  for (int i = 0; i < KILN_MAX_RANK; i++) out_mask[i] = n->attr.nints == 0;
  for (int i = 0; i < n->attr.nints; i++) {
    int64_t ax = kiln_norm_axis(n->attr.ints[i], x->rank);
    if (ax < 0)
      return fail(err, errlen, "%s axis %lld is out of range for %s", name(n),
                  (long long)n->attr.ints[i], str(x));
    if (out_mask[ax])
      return fail(err, errlen, "%s axes name axis %lld twice (input %s)", name(n), (long long)ax,
                  str(x));
    out_mask[ax] = true;
  }
  return 0;
}

// sum, mean, max; the result may be a rank-0 scalar.
int kiln_shape_reduce(const KilnGraph *g, KilnNode *n, char *err, size_t errlen) {
  const KilnNode *x = arg(g, n, 0);
  bool mask[KILN_MAX_RANK];
  int64_t out[KILN_MAX_RANK];
  int r = 0;
  if (want_f32(n, x, NULL, err, errlen) || reduce_mask(n, x, mask, err, errlen)) return -1;
  for (int i = 0; i < x->rank; i++) {
    if (!mask[i]) out[r++] = x->shape[i];
    else if (n->attr.keepdims) out[r++] = 1;
  }
  return set(n, KILN_F32, out, r, err, errlen);
}

static int check_axis(const KilnNode *n, const KilnNode *x, char *err, size_t errlen) {
  if (kiln_norm_axis(n->attr.axis, x->rank) >= 0) return 0;
  return fail(err, errlen, "%s axis %lld is out of range for %s", name(n),
              (long long)n->attr.axis, str(x));
}

// softmax, log_softmax: same shape, along one valid axis.
int kiln_shape_softmax(const KilnGraph *g, KilnNode *n, char *err, size_t errlen) {
  const KilnNode *x = arg(g, n, 0);
  if (want_f32(n, x, NULL, err, errlen) || check_axis(n, x, err, errlen)) return -1;
  return set(n, KILN_F32, x->shape, x->rank, err, errlen);
}

// layernorm(x, gamma, beta) over x's last axis: gamma and beta are [D].
int kiln_shape_layernorm(const KilnGraph *g, KilnNode *n, char *err, size_t errlen) {
  const KilnNode *x = arg(g, n, 0);
  if (want_f32(n, x, NULL, err, errlen)) return -1;
  if (x->rank < 1) return fail(err, errlen, "layernorm needs rank >= 1, got %s", str(x));
  int64_t d = x->shape[x->rank - 1];
  for (int i = 1; i < 3; i++) {
    const KilnNode *p = arg(g, n, i);
    if (p->dtype != KILN_F32 || p->rank != 1 || p->shape[0] != d)
      return fail(err, errlen, "layernorm %s must be f32[%lld] to match input %s, got %s",
                  i == 1 ? "gamma" : "beta", (long long)d, str(x), str(p));
  }
  if (!(n->attr.eps >= 0))
    return fail(err, errlen, "layernorm eps must be >= 0, got %g", n->attr.eps);
  return set(n, KILN_F32, x->shape, x->rank, err, errlen);
}

// The last two dims of a matrix operand as [rows, cols], after its optional transpose.
static void mat_dims(const KilnNode *x, bool trans, int64_t *out_rows, int64_t *out_cols) {
  *out_rows = x->shape[x->rank - (trans ? 1 : 2)];
  *out_cols = x->shape[x->rank - (trans ? 2 : 1)];
}

// [.., M, K] x [.., K, N] -> [.., M, N]; batch axes broadcast numpy-style. A
// transposed operand is shown with ^T in messages.
int kiln_shape_matmul(const KilnGraph *g, KilnNode *n, char *err, size_t errlen) {
  const KilnNode *a = arg(g, n, 0), *b = arg(g, n, 1);
  if (want_f32(n, a, NULL, err, errlen) || want_f32(n, b, NULL, err, errlen)) return -1;
  if (a->rank < 2 || b->rank < 2)
    return fail(err, errlen, "matmul needs rank >= 2 on both sides: %s x %s", str(a), str(b));
  int64_t m, ka, kb, cols, out[KILN_MAX_RANK];
  mat_dims(a, n->attr.trans_a, &m, &ka);
  mat_dims(b, n->attr.trans_b, &kb, &cols);
  if (ka != kb)
    return fail(err, errlen, "matmul inner dimensions differ: %s%s x %s%s (%lld vs %lld)",
                str(a), n->attr.trans_a ? "^T" : "", str(b), n->attr.trans_b ? "^T" : "",
                (long long)ka, (long long)kb);
  int r;
  if (kiln_broadcast_shapes(a->shape, a->rank - 2, b->shape, b->rank - 2, out, &r))
    return fail(err, errlen, "matmul batch dimensions do not broadcast: %s x %s", str(a),
                str(b));
  out[r] = m;
  out[r + 1] = cols;
  return set(n, KILN_F32, out, r + 2, err, errlen);
}

// Resolves the one -1 entry of a reshape target; -1 if the target is invalid.
static int reshape_target(const KilnNode *n, int64_t count, int64_t *out) {
  int64_t known = 1;
  int free_at = -1;
  for (int i = 0; i < n->attr.nints; i++) {
    int64_t d = n->attr.ints[i];
    out[i] = d;
    if (d == -1 && free_at < 0) free_at = i;
    else if (d <= 0 || d > KILN_MAX_ELEMS / known) return -1;
    else known *= d;
  }
  if (free_at >= 0) {
    if (count % known) return -1;
    out[free_at] = count / known;
  }
  return kiln_numel(out, n->attr.nints) == count ? 0 : -1;
}

int kiln_shape_reshape(const KilnGraph *g, KilnNode *n, char *err, size_t errlen) {
  const KilnNode *x = arg(g, n, 0);
  int64_t out[KILN_MAX_RANK];
  KILN_ASSERT(n->attr.nints >= 0 && n->attr.nints <= KILN_MAX_RANK);
  int64_t count = kiln_numel(x->shape, x->rank);
  if (reshape_target(n, count, out))
    return fail(err, errlen, "cannot reshape %s (%lld elements) to %s", str(x), (long long)count,
                dims(n->attr.ints, n->attr.nints));
  return set(n, x->dtype, out, n->attr.nints, err, errlen);
}

// The resolved permutation (negative axes normalised, or the reversal when none
// was given) is written back, so later passes read one form.
int kiln_shape_transpose(const KilnGraph *g, KilnNode *n, char *err, size_t errlen) {
  const KilnNode *x = arg(g, n, 0);
  int64_t perm[KILN_MAX_RANK], out[KILN_MAX_RANK];
  bool seen[KILN_MAX_RANK] = {false};
  int np = n->attr.nints;
  KILN_ASSERT(np >= 0 && np <= KILN_MAX_RANK);
  if (np == 0)
    for (int i = 0; i < x->rank; i++) perm[i] = x->rank - 1 - i;
  else if (np != x->rank)
    return fail(err, errlen, "transpose perm %s has %d entries for %s", dims(n->attr.ints, np),
                np, str(x));
  for (int i = 0; i < np; i++) {
    perm[i] = kiln_norm_axis(n->attr.ints[i], x->rank);
    if (perm[i] < 0 || seen[perm[i]])
      return fail(err, errlen, "transpose perm %s is not a permutation of the axes of %s",
                  dims(n->attr.ints, np), str(x));
    seen[perm[i]] = true;
  }
  for (int i = 0; i < x->rank; i++) out[i] = x->shape[perm[i]];
  memcpy(n->attr.ints, perm, (size_t)x->rank * sizeof *perm);
  n->attr.nints = x->rank;
  return set(n, x->dtype, out, x->rank, err, errlen);
}

// Inputs agree in dtype, rank and every dimension but the axis; those add up.
int kiln_shape_concat(const KilnGraph *g, KilnNode *n, char *err, size_t errlen) {
  const KilnNode *x = arg(g, n, 0);
  if (check_axis(n, x, err, errlen)) return -1;
  int64_t ax = kiln_norm_axis(n->attr.axis, x->rank), out[KILN_MAX_RANK];
  memcpy(out, x->shape, (size_t)x->rank * sizeof *out);
  for (int i = 1; i < n->nin; i++) {
    const KilnNode *y = arg(g, n, i);
    bool fits = y->dtype == x->dtype && y->rank == x->rank;
    for (int k = 0; fits && k < x->rank; k++) fits = k == ax || y->shape[k] == x->shape[k];
    if (!fits)
      return fail(err, errlen, "cannot concat %s with %s along axis %lld", str(x), str(y),
                  (long long)ax);
    out[ax] += y->shape[ax];  // each <= 2^31, at most 8 inputs: no overflow
  }
  return set(n, x->dtype, out, x->rank, err, errlen);
}

// Python-style bounds: negatives count from the end and end clamps to the
// dimension, but an empty or inverted range is an error. The normalised axis,
// start and end are written back.
int kiln_shape_slice(const KilnGraph *g, KilnNode *n, char *err, size_t errlen) {
  const KilnNode *x = arg(g, n, 0);
  if (check_axis(n, x, err, errlen)) return -1;
  int64_t ax = kiln_norm_axis(n->attr.axis, x->rank), dim = x->shape[ax];
  int64_t start = n->attr.start, end = n->attr.end;
  if (start < 0) start += dim;
  if (end < 0) end += dim;
  if (end > dim) end = dim;
  if (start < 0 || start >= dim)
    return fail(err, errlen, "slice start %lld is out of range for axis %lld of %s",
                (long long)n->attr.start, (long long)ax, str(x));
  if (end <= start)
    return fail(err, errlen, "slice is empty: start %lld, end %lld along axis %lld of %s",
                (long long)n->attr.start, (long long)n->attr.end, (long long)ax, str(x));
  int64_t out[KILN_MAX_RANK];
  memcpy(out, x->shape, (size_t)x->rank * sizeof *out);
  out[ax] = end - start;
  n->attr.axis = ax;
  n->attr.start = start;
  n->attr.end = end;
  return set(n, x->dtype, out, x->rank, err, errlen);
}

// The input must broadcast to exactly the target shape.
int kiln_shape_broadcast(const KilnGraph *g, KilnNode *n, char *err, size_t errlen) {
  const KilnNode *x = arg(g, n, 0);
  const int64_t *to = n->attr.ints;
  int rt = n->attr.nints, r;
  int64_t out[KILN_MAX_RANK];
  KILN_ASSERT(rt >= 0 && rt <= KILN_MAX_RANK);
  if (kiln_broadcast_shapes(x->shape, x->rank, to, rt, out, &r) || r != rt ||
      memcmp(out, to, (size_t)r * sizeof *out) != 0)
    return fail(err, errlen, "cannot broadcast %s to %s", str(x), dims(to, rt));
  return set(n, x->dtype, out, r, err, errlen);
}

// embedding(ids i32 [...], table f32 [V, D]) -> f32 [..., D].
int kiln_shape_embedding(const KilnGraph *g, KilnNode *n, char *err, size_t errlen) {
  const KilnNode *ids = arg(g, n, 0), *t = arg(g, n, 1);
  if (ids->dtype != KILN_I32)
    return fail(err, errlen, "embedding ids must be i32, got %s", str(ids));
  if (t->dtype != KILN_F32 || t->rank != 2)
    return fail(err, errlen, "embedding table must be f32[vocab, dim], got %s", str(t));
  if (ids->rank + 1 > KILN_MAX_RANK)
    return fail(err, errlen, "embedding of %s would have rank %d; at most %d is supported",
                str(ids), ids->rank + 1, KILN_MAX_RANK);
  int64_t out[KILN_MAX_RANK];
  memcpy(out, ids->shape, (size_t)ids->rank * sizeof *out);
  out[ids->rank] = t->shape[1];
  return set(n, KILN_F32, out, ids->rank + 1, err, errlen);
}

// An f32 operand of rank 1 ([d0]) or 2 ([d0, d1]).
static bool is_f32(const KilnNode *x, int rank, int64_t d0, int64_t d1) {
  return x->dtype == KILN_F32 && x->rank == rank && x->shape[0] == d0 &&
         (rank < 2 || x->shape[1] == d1);
}

// lstm(x [B,T,I], w_ih [I,4H], w_hh [H,4H], bias [4H]) -> [B,T,H]; H from w_hh.
int kiln_shape_lstm(const KilnGraph *g, KilnNode *n, char *err, size_t errlen) {
  const KilnNode *x = arg(g, n, 0), *w_ih = arg(g, n, 1), *w_hh = arg(g, n, 2),
                 *bias = arg(g, n, 3);
  if (x->dtype != KILN_F32 || x->rank != 3)
    return fail(err, errlen, "lstm input must be f32[batch, time, features], got %s", str(x));
  int64_t i = x->shape[2], h = w_hh->rank == 2 ? w_hh->shape[0] : 0;
  if (h == 0 || !is_f32(w_hh, 2, h, 4 * h))
    return fail(err, errlen, "lstm weight_hh must be f32[H, 4H], got %s", str(w_hh));
  if (!is_f32(w_ih, 2, i, 4 * h))
    return fail(err, errlen, "lstm weight_ih must be f32%s for input %s and hidden %lld, got %s",
                dims(((int64_t[]){i, 4 * h}), 2), str(x), (long long)h, str(w_ih));
  if (!is_f32(bias, 1, 4 * h, 0))
    return fail(err, errlen, "lstm bias must be f32[%lld] for hidden %lld, got %s",
                (long long)(4 * h), (long long)h, str(bias));
  return set(n, KILN_F32, (int64_t[]){x->shape[0], x->shape[1], h}, 3, err, errlen);
}

// attention(q, k, v), each f32 [B,T,D]; heads split D evenly.
int kiln_shape_attention(const KilnGraph *g, KilnNode *n, char *err, size_t errlen) {
  const KilnNode *q = arg(g, n, 0), *k = arg(g, n, 1), *v = arg(g, n, 2);
  if (q->dtype != KILN_F32 || q->rank != 3)
    return fail(err, errlen, "attention query must be f32[batch, time, dim], got %s", str(q));
  if (!same_shape(q, k) || !same_shape(q, v) || k->dtype != KILN_F32 || v->dtype != KILN_F32)
    return fail(err, errlen, "attention q, k and v must have one shape: %s, %s, %s", str(q),
                str(k), str(v));
  int64_t h = n->attr.heads, d = q->shape[2];
  if (h < 1 || d % h)
    return fail(err, errlen, "attention heads %lld must be >= 1 and divide dim %lld of %s",
                (long long)h, (long long)d, str(q));
  return set(n, KILN_F32, q->shape, 3, err, errlen);
}

// attention_decode(q, k, v [B,1,D], k_cache, v_cache [B,C,D], position i32 [1,1]):
// one new query per sequence against a cache of C positions -> [B,1,D].
int kiln_shape_attention_decode(const KilnGraph *g, KilnNode *n, char *err, size_t errlen) {
  KilnNode one = *n;
  one.nin = 3;
  if (kiln_shape_attention(g, &one, err, errlen) != 0) return -1;
  const KilnNode *q = arg(g, n, 0), *kc = arg(g, n, 3), *vc = arg(g, n, 4), *pos = arg(g, n, 5);
  if (q->shape[1] != 1)
    return fail(err, errlen, "attention_decode takes one position at a time, got %s", str(q));
  if (kc->dtype != KILN_F32 || kc->rank != 3 || kc->shape[0] != q->shape[0] ||
      kc->shape[2] != q->shape[2] || !same_shape(kc, vc) || vc->dtype != KILN_F32)
    return fail(err, errlen, "attention_decode caches must be f32[%lld, positions, %lld], got %s and %s",
                (long long)q->shape[0], (long long)q->shape[2], str(kc), str(vc));
  if (pos->dtype != KILN_I32 || kiln_node_numel(pos) != 1)
    return fail(err, errlen, "attention_decode position must be one i32, got %s", str(pos));
  return set(n, KILN_F32, q->shape, 3, err, errlen);
}

// lstm_step(x [B,T,I], w_ih, w_hh, b, state f32 [2,B,H]): lstm from the state's
// h and c rather than zeros, leaving the last step's h and c in it -> [B,T,H].
int kiln_shape_lstm_step(const KilnGraph *g, KilnNode *n, char *err, size_t errlen) {
  KilnNode fwd = *n;
  fwd.nin = 4;
  if (kiln_shape_lstm(g, &fwd, err, errlen) != 0) return -1;
  const KilnNode *st = arg(g, n, 4);
  int64_t want[3] = {2, fwd.shape[0], fwd.shape[2]};
  if (st->dtype != KILN_F32 || st->rank != 3 || memcmp(st->shape, want, sizeof want) != 0)
    return fail(err, errlen, "lstm_step state must be f32%s, got %s", dims(want, 3), str(st));
  return set(n, KILN_F32, fwd.shape, 3, err, errlen);
}

// cross_entropy(logits f32 [..., C], labels i32 [...]) -> f32 scalar.
int kiln_shape_cross_entropy(const KilnGraph *g, KilnNode *n, char *err, size_t errlen) {
  const KilnNode *lg = arg(g, n, 0), *lb = arg(g, n, 1);
  if (lg->dtype != KILN_F32 || lg->rank < 1)
    return fail(err, errlen, "cross_entropy logits must be f32 with rank >= 1, got %s", str(lg));
  if (lb->dtype != KILN_I32 || lb->rank != lg->rank - 1 ||
      memcmp(lb->shape, lg->shape, (size_t)lb->rank * sizeof *lb->shape) != 0)
    return fail(err, errlen,
                "cross_entropy labels must be i32 with the logits' shape minus its last axis: "
                "logits %s, labels %s",
                str(lg), str(lb));
  return set(n, KILN_F32, NULL, 0, err, errlen);
}

// mse, binary_cross_entropy: two f32 tensors of one shape -> f32 scalar.
int kiln_shape_mse(const KilnGraph *g, KilnNode *n, char *err, size_t errlen) {
  const KilnNode *a = arg(g, n, 0), *b = arg(g, n, 1);
  if (want_f32(n, a, NULL, err, errlen) || want_f32(n, b, NULL, err, errlen)) return -1;
  if (!same_shape(a, b))
    return fail(err, errlen, "%s inputs must have one shape: %s vs %s", name(n), str(a), str(b));
  return set(n, KILN_F32, NULL, 0, err, errlen);
}

//
// Gradient ops (made by autodiff; their inputs were shaped by forward rules, so
// these rules check what autodiff promises rather than explain user mistakes).
//
// gelu_grad, silu_grad, clamp_grad (x, dy): f32 of one shape -> that shape.
int kiln_shape_grad_elem(const KilnGraph *g, KilnNode *n, char *err, size_t errlen) {
  const KilnNode *x = arg(g, n, 0), *dy = arg(g, n, 1);
  if (want_f32(n, x, NULL, err, errlen) || want_f32(n, dy, NULL, err, errlen)) return -1;
  if (!same_shape(x, dy))
    return fail(err, errlen, "%s inputs must have one shape: %s vs %s", name(n), str(x), str(dy));
  return set(n, KILN_F32, x->shape, x->rank, err, errlen);
}

// layernorm_dx(x [..., D], gamma [D], dy like x) -> like x.
int kiln_shape_layernorm_dx(const KilnGraph *g, KilnNode *n, char *err, size_t errlen) {
  const KilnNode *x = arg(g, n, 0), *gm = arg(g, n, 1), *dy = arg(g, n, 2);
  if (x->dtype != KILN_F32 || x->rank < 1 || !same_shape(x, dy) || dy->dtype != KILN_F32 ||
      !is_f32(gm, 1, x->shape[x->rank - 1], 0))
    return fail(err, errlen, "layernorm_dx needs x [..., D], gamma [D], dy like x: %s, %s, %s",
                str(x), str(gm), str(dy));
  return set(n, KILN_F32, x->shape, x->rank, err, errlen);
}

// layernorm_dgamma(x [..., D], dy like x) -> [D].
int kiln_shape_layernorm_dgamma(const KilnGraph *g, KilnNode *n, char *err, size_t errlen) {
  const KilnNode *x = arg(g, n, 0), *dy = arg(g, n, 1);
  if (x->dtype != KILN_F32 || x->rank < 1 || !same_shape(x, dy) || dy->dtype != KILN_F32)
    return fail(err, errlen, "layernorm_dgamma needs x [..., D] and dy like x: %s, %s", str(x),
                str(dy));
  return set(n, KILN_F32, &x->shape[x->rank - 1], 1, err, errlen);
}

// embedding_grad(ids i32 [...], dy f32 [..., D]) -> [size, D]: rows scatter-added.
int kiln_shape_embedding_grad(const KilnGraph *g, KilnNode *n, char *err, size_t errlen) {
  const KilnNode *ids = arg(g, n, 0), *dy = arg(g, n, 1);
  if (ids->dtype != KILN_I32 || dy->dtype != KILN_F32 || dy->rank != ids->rank + 1 ||
      memcmp(ids->shape, dy->shape, (size_t)ids->rank * sizeof *ids->shape) != 0 ||
      n->attr.size < 1)
    return fail(err, errlen, "embedding_grad needs ids [...] and dy [..., D] and size >= 1: %s, %s",
                str(ids), str(dy));
  return set(n, KILN_F32, (int64_t[]){n->attr.size, dy->shape[dy->rank - 1]}, 2, err, errlen);
}

// lstm_grad(x, w_ih, w_hh, bias, dy [B,T,H]) -> one vector holding dx, dw_ih, dw_hh,
// dbias in that order (flattened); slices take them apart.
int kiln_shape_lstm_grad(const KilnGraph *g, KilnNode *n, char *err, size_t errlen) {
  KilnNode fwd = *n;
  fwd.nin = 4;
  if (kiln_shape_lstm(g, &fwd, err, errlen) != 0) return -1;
  const KilnNode *dy = arg(g, n, 4);
  if (dy->dtype != KILN_F32 || dy->rank != 3 || memcmp(dy->shape, fwd.shape, 3 * sizeof(int64_t)))
    return fail(err, errlen, "lstm_grad dy must be f32%s, got %s", dims(fwd.shape, 3), str(dy));
  int64_t total = 0;
  for (int i = 0; i < 4; i++) total += kiln_node_numel(arg(g, n, i));
  return set(n, KILN_F32, &total, 1, err, errlen);
}

// attention_grad(q, k, v, dy), each [B,T,D] -> [B, T, 3D]: dq, dk, dv side by side
// in each row, the layout of the fused q|k|v projection they are the gradient of.
int kiln_shape_attention_grad(const KilnGraph *g, KilnNode *n, char *err, size_t errlen) {
  KilnNode fwd = *n;
  fwd.nin = 3;
  if (kiln_shape_attention(g, &fwd, err, errlen) != 0) return -1;
  const KilnNode *dy = arg(g, n, 3);
  if (dy->dtype != KILN_F32 || !same_shape(dy, &fwd))
    return fail(err, errlen, "attention_grad dy must be f32%s, got %s", dims(fwd.shape, 3), str(dy));
  return set(n, KILN_F32, (int64_t[]){fwd.shape[0], fwd.shape[1], 3 * fwd.shape[2]}, 3, err, errlen);
}

// cross_entropy_grad(logits, labels) -> like logits: (softmax - onehot) / positions.
int kiln_shape_cross_entropy_grad(const KilnGraph *g, KilnNode *n, char *err, size_t errlen) {
  if (kiln_shape_cross_entropy(g, n, err, errlen) != 0) return -1;
  const KilnNode *lg = arg(g, n, 0);
  return set(n, KILN_F32, lg->shape, lg->rank, err, errlen);
}
