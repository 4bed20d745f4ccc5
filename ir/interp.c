// The reference interpreter: every op in plain C, in double precision, one small
// function per op kind. It is the oracle that generated CPU and CUDA kernels (and
// gradients, by finite differences) are checked against, so each function is
// written to be obviously right rather than fast, and its head comment is the
// op's definition that the backends must match.
//
// Tensors are row-major arrays of doubles (i32 values stored exactly). Shapes and
// attributes are trusted: the shape rules in shape.c checked them and normalised
// transpose's perm and slice's bounds; axes of reductions, softmax and concat may
// still be negative and are normalised here. The only errors are data-dependent
// (an embedding id or a label out of range).
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "ir/ir.h"

typedef struct {
  const KilnGraph *g;
  double *const *v;         // values[i]: node i's elements
  const KilnInterpOpts *o;
  char msg[256];            // a failing op's message, before the node is named
} Run;

//
// Helpers.
//
__attribute__((format(printf, 2, 3))) static int fail(Run *r, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(r->msg, sizeof r->msg, fmt, ap);
  va_end(ap);
  return -1;
}

static const KilnNode *arg(const Run *r, const KilnNode *n, int i) {
  KILN_ASSERT(i < n->nin);
  return &r->g->nodes[n->in[i]];
}

static const double *in(const Run *r, const KilnNode *n, int i) {
  KILN_ASSERT(i < n->nin);
  return r->v[n->in[i]];
}

static int64_t numel(const KilnNode *n) { return kiln_node_numel(n); }

// The row-major multi-index of flat position i in shape.
static void unravel(int64_t i, const int64_t *shape, int rank, int64_t *out_idx) {
  for (int d = rank - 1; d >= 0; d--) {
    out_idx[d] = i % shape[d];
    i /= shape[d];
  }
}

// Flat position, in a tensor of the given shape, of the element that result index
// idx (rank r) reads under numpy broadcasting: the tensor's axes align with the
// trailing axes of the result and its size-1 axes repeat.
static int64_t bcast_at(const int64_t *idx, int r, const int64_t *shape, int rank) {
  int64_t at = 0;
  for (int d = 0; d < rank; d++) at = at * shape[d] + (shape[d] == 1 ? 0 : idx[r - rank + d]);
  return at;
}

// The flat row-major position of multi-index idx in shape.
static int64_t ravel(const int64_t *idx, const int64_t *shape, int rank) {
  int64_t at = 0;
  for (int d = 0; d < rank; d++) at = at * shape[d] + idx[d];
  return at;
}

// Splits x around axis into [outer, len, inner]: element (o, j, k) is at
// (o * len + j) * inner + k.
static void split_at(const KilnNode *x, int64_t axis, int64_t *out_outer, int64_t *out_len,
                     int64_t *out_inner) {
  *out_outer = *out_inner = 1;
  for (int d = 0; d < axis; d++) *out_outer *= x->shape[d];
  for (int d = (int)axis + 1; d < x->rank; d++) *out_inner *= x->shape[d];
  *out_len = x->shape[axis];
}

// An axis the shape rule accepted, possibly negative, as 0..rank-1.
static int norm_axis(int64_t axis, int rank) {
  int64_t ax = kiln_norm_axis(axis, rank);
  KILN_ASSERT(ax >= 0);
  return (int)ax;
}

// The table's scalar semantics, for ops built from them (lstm's gates).
static const KilnAttrs no_attrs;
static double sigmoid(double x) { return kiln_op(KILN_OP_SIGMOID)->scalar(&x, &no_attrs); }
static double tanh_(double x) { return kiln_op(KILN_OP_TANH)->scalar(&x, &no_attrs); }

//
// Sources.
//
// const: every element (a const is normally a scalar) is attr.value.
static int run_const(Run *r, const KilnNode *n, double *out) {
  (void)r;
  for (int64_t i = 0; i < numel(n); i++) out[i] = n->attr.value;
  return 0;
}

//
// Elementwise.
//
// Every op with scalar semantics in the table (unary math, add sub mul div,
// where): out[i] = scalar(inputs at i), each input read through numpy
// broadcasting. The scalar functions are the table's, never restated here.
static int run_scalar(Run *r, const KilnNode *n, double *out) {
  KilnScalarFn f = kiln_op(n->op)->scalar;
  KILN_ASSERT(f && n->nin >= 1 && n->nin <= 3);
  int64_t idx[KILN_MAX_RANK];
  double x[3];
  for (int64_t i = 0; i < numel(n); i++) {
    unravel(i, n->shape, n->rank, idx);
    for (int k = 0; k < n->nin; k++) {
      const KilnNode *a = arg(r, n, k);
      x[k] = in(r, n, k)[bcast_at(idx, n->rank, a->shape, a->rank)];
    }
    out[i] = f(x, &n->attr);
  }
  return 0;
}

// SplitMix64 (Steele, Lea and Flood, 2014): the state advances by GAMMA per draw
// and each draw is mix64 of the new state, so draw i of a stream that starts at
// state s is mix64(s + (i + 1) * GAMMA) -- computable per element, in any order.
#define GAMMA UINT64_C(0x9e3779b97f4a7c15)

static uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
  z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
  return z ^ (z >> 31);
}

// dropout(x, p): the identity outside training. In training, element i (row-major)
// of a dropout whose attribute `key` is K draws
//   u_i = (mix64(s + (i + 1) * GAMMA) >> 11) * 2^-53  in [0, 1),  s = seed ^ mix64(K)
// (draw i of the SplitMix64 stream at state s, as 53 bits), keeps x_i / (1 - p)
// when u_i >= p (probability 1 - p) and writes 0 otherwise. The key, not the
// node's index, names the stream: the front end derives it from the node's name,
// so passes may renumber nodes, and dropout's gradient (the same op with the same
// key, applied to dy) draws the same mask. Generated code reads seed and training
// from the step header; KilnInterpOpts plays that role here.
static int run_dropout(Run *r, const KilnNode *n, double *out) {
  const double *x = in(r, n, 0);
  double p = n->attr.p;
  KILN_ASSERT(p >= 0 && p < 1);
  if (!r->o->training) {
    memcpy(out, x, (size_t)numel(n) * sizeof *out);
    return 0;
  }
  uint64_t s = r->o->seed ^ mix64((uint64_t)n->attr.key);
  for (int64_t i = 0; i < numel(n); i++) {
    double u = (double)(mix64(s + (uint64_t)(i + 1) * GAMMA) >> 11) * 0x1p-53;
    out[i] = u >= p ? x[i] / (1 - p) : 0.0;
  }
  return 0;
}

//
// Reductions.
//
// The larger of acc and x; a NaN (in either) wins and stays.
static double max_nan(double acc, double x) { return isnan(acc) || acc >= x ? acc : x; }

// sum, mean, max over the axes in attr.ints (none listed: every axis). keepdims
// changes only the shape, not the row-major order of the results. max starts at
// -inf and keeps a NaN once it meets one.
static int run_reduce(Run *r, const KilnNode *n, double *out) {
  const KilnNode *x = arg(r, n, 0);
  const double *xv = in(r, n, 0);
  bool red[KILN_MAX_RANK];
  for (int d = 0; d < x->rank; d++) red[d] = n->attr.nints == 0;
  for (int k = 0; k < n->attr.nints; k++) red[norm_axis(n->attr.ints[k], x->rank)] = true;
  bool is_max = n->op == KILN_OP_MAX;
  for (int64_t o = 0; o < numel(n); o++) out[o] = is_max ? -INFINITY : 0.0;
  int64_t idx[KILN_MAX_RANK];
  for (int64_t i = 0; i < numel(x); i++) {
    unravel(i, x->shape, x->rank, idx);
    int64_t o = 0;
    for (int d = 0; d < x->rank; d++)
      if (!red[d]) o = o * x->shape[d] + idx[d];
    out[o] = is_max ? max_nan(out[o], xv[i]) : out[o] + xv[i];
  }
  if (n->op == KILN_OP_MEAN) {
    double count = (double)(numel(x) / numel(n));
    for (int64_t o = 0; o < numel(n); o++) out[o] /= count;
  }
  return 0;
}

// softmax and log_softmax along attr.axis, stabilised by the row's maximum m:
//   softmax_j = exp(x_j - m) / sum_k exp(x_k - m)
//   log_softmax_j = x_j - m - log(sum_k exp(x_k - m))
static int run_softmax(Run *r, const KilnNode *n, double *out) {
  const KilnNode *x = arg(r, n, 0);
  const double *xv = in(r, n, 0);
  int64_t outer, len, inner;
  split_at(x, norm_axis(n->attr.axis, x->rank), &outer, &len, &inner);
  for (int64_t o = 0; o < outer; o++) {
    for (int64_t k = 0; k < inner; k++) {
      const double *row = xv + o * len * inner + k;  // row[j * inner]
      double *dst = out + o * len * inner + k;
      double m = -INFINITY, sum = 0;
      for (int64_t j = 0; j < len; j++) m = fmax(m, row[j * inner]);
      for (int64_t j = 0; j < len; j++) sum += exp(row[j * inner] - m);
      for (int64_t j = 0; j < len; j++)
        dst[j * inner] = n->op == KILN_OP_LOG_SOFTMAX ? row[j * inner] - m - log(sum)
                                                      : exp(row[j * inner] - m) / sum;
    }
  }
  return 0;
}

// The mean and rstd = 1 / sqrt(var + eps) of one row of d values, biased variance
// var = mean((x - mean)^2): layernorm's statistics.
static void row_stats(const double *row, int64_t d, double eps, double *out_mean,
                      double *out_rstd) {
  double mean = 0, var = 0;
  for (int64_t j = 0; j < d; j++) mean += row[j];
  mean /= (double)d;
  for (int64_t j = 0; j < d; j++) var += (row[j] - mean) * (row[j] - mean);
  var /= (double)d;
  *out_mean = mean;
  *out_rstd = 1.0 / sqrt(var + eps);
}

// layernorm(x, gamma [D], beta [D]) over the last axis (D), biased variance:
//   y = (x - mean) / sqrt(var + eps) * gamma + beta,  var = mean((x - mean)^2).
static int run_layernorm(Run *r, const KilnNode *n, double *out) {
  const KilnNode *x = arg(r, n, 0);
  const double *xv = in(r, n, 0), *gamma = in(r, n, 1), *beta = in(r, n, 2);
  int64_t d = x->shape[x->rank - 1], rows = numel(x) / d;
  for (int64_t i = 0; i < rows; i++) {
    const double *row = xv + i * d;
    double mean, inv;
    row_stats(row, d, n->attr.eps, &mean, &inv);
    for (int64_t j = 0; j < d; j++) out[i * d + j] = (row[j] - mean) * inv * gamma[j] + beta[j];
  }
  return 0;
}

//
// Matrix product.
//
// Element (row, col) of matrix operand x's last two axes after its optional
// transpose, in the matrix that starts at base.
static double mat_at(const KilnNode *x, const double *base, bool trans, int64_t row, int64_t col) {
  int64_t cols = x->shape[x->rank - 1];
  return trans ? base[col * cols + row] : base[row * cols + col];
}

// matmul(a [.., M, K], b [.., K, N]) -> [.., M, N]; trans_a / trans_b read an
// operand's last two axes swapped. The batch axes (all but the last two) broadcast
// numpy-style: out[batch] = a[batch'] x b[batch''].
static int run_matmul(Run *r, const KilnNode *n, double *out) {
  const KilnNode *a = arg(r, n, 0), *b = arg(r, n, 1);
  int rb = n->rank - 2;  // batch rank of the result
  int64_t m = n->shape[rb], cols = n->shape[rb + 1];
  int64_t k = a->shape[a->rank - (n->attr.trans_a ? 2 : 1)];
  int64_t batches = numel(n) / (m * cols), idx[KILN_MAX_RANK];
  for (int64_t t = 0; t < batches; t++) {
    unravel(t, n->shape, rb, idx);
    const double *ma = in(r, n, 0) + bcast_at(idx, rb, a->shape, a->rank - 2) * m * k;
    const double *mb = in(r, n, 1) + bcast_at(idx, rb, b->shape, b->rank - 2) * k * cols;
    for (int64_t i = 0; i < m; i++) {
      for (int64_t j = 0; j < cols; j++) {
        double acc = 0;
        for (int64_t l = 0; l < k; l++)
          acc += mat_at(a, ma, n->attr.trans_a, i, l) * mat_at(b, mb, n->attr.trans_b, l, j);
        out[(t * m + i) * cols + j] = acc;
      }
    }
  }
  return 0;
}

//
// Layout.
//
// reshape: the same elements in the same row-major order.
static int run_reshape(Run *r, const KilnNode *n, double *out) {
  memcpy(out, in(r, n, 0), (size_t)numel(n) * sizeof *out);
  return 0;
}

// transpose with the resolved perm in attr.ints: out dim i is input dim perm[i],
// so out[idx] = x[idx'] with idx'[perm[i]] = idx[i].
static int run_transpose(Run *r, const KilnNode *n, double *out) {
  const KilnNode *x = arg(r, n, 0);
  const double *xv = in(r, n, 0);
  KILN_ASSERT(n->attr.nints == x->rank);
  int64_t idx[KILN_MAX_RANK], src[KILN_MAX_RANK];
  for (int64_t i = 0; i < numel(n); i++) {
    unravel(i, n->shape, n->rank, idx);
    for (int d = 0; d < n->rank; d++) src[n->attr.ints[d]] = idx[d];
    out[i] = xv[ravel(src, x->shape, x->rank)];
  }
  return 0;
}

// concat along attr.axis: the inputs' slabs one after another on that axis.
static int run_concat(Run *r, const KilnNode *n, double *out) {
  int ax = norm_axis(n->attr.axis, n->rank);
  int64_t outer, len, inner;
  split_at(n, ax, &outer, &len, &inner);
  int64_t at = 0;  // start of the current input along the axis
  for (int k = 0; k < n->nin; k++) {
    int64_t lk = arg(r, n, k)->shape[ax];
    const double *xv = in(r, n, k);
    for (int64_t o = 0; o < outer; o++)
      for (int64_t j = 0; j < lk; j++)
        for (int64_t i = 0; i < inner; i++)
          out[(o * len + at + j) * inner + i] = xv[(o * lk + j) * inner + i];
    at += lk;
  }
  KILN_ASSERT(at == len);
  return 0;
}

// slice: indices [start, end) along attr.axis (normalised by the shape rule).
static int run_slice(Run *r, const KilnNode *n, double *out) {
  const KilnNode *x = arg(r, n, 0);
  const double *xv = in(r, n, 0);
  int64_t outer, len, inner, xlen = x->shape[n->attr.axis];
  split_at(n, n->attr.axis, &outer, &len, &inner);
  KILN_ASSERT(len == n->attr.end - n->attr.start);
  for (int64_t o = 0; o < outer; o++)
    for (int64_t j = 0; j < len; j++)
      for (int64_t i = 0; i < inner; i++)
        out[(o * len + j) * inner + i] = xv[(o * xlen + n->attr.start + j) * inner + i];
  return 0;
}

// broadcast: x repeated numpy-style to the node's shape.
static int run_broadcast(Run *r, const KilnNode *n, double *out) {
  const KilnNode *x = arg(r, n, 0);
  int64_t idx[KILN_MAX_RANK];
  for (int64_t i = 0; i < numel(n); i++) {
    unravel(i, n->shape, n->rank, idx);
    out[i] = in(r, n, 0)[bcast_at(idx, n->rank, x->shape, x->rank)];
  }
  return 0;
}

// embedding(ids i32 [...], table [V, D]) -> [..., D]: out[p, :] = table[ids[p], :].
// An id outside [0, V) is an error naming its position and value.
static int run_embedding(Run *r, const KilnNode *n, double *out) {
  const KilnNode *ids = arg(r, n, 0), *table = arg(r, n, 1);
  int64_t v = table->shape[0], d = table->shape[1], idx[KILN_MAX_RANK];
  for (int64_t p = 0; p < numel(ids); p++) {
    double id = in(r, n, 0)[p];
    if (!(id >= 0 && id < (double)v && id == floor(id))) {
      char where[160];
      unravel(p, ids->shape, ids->rank, idx);
      return fail(r, "id %g at position %s is outside [0, %lld)", id,
                  kiln_dims_str(idx, ids->rank, where, sizeof where), (long long)v);
    }
    memcpy(out + p * d, in(r, n, 1) + (int64_t)id * d, (size_t)d * sizeof *out);
  }
  return 0;
}

//
// Sequence ops.
//
// One lstm time step of one sequence, unit by unit, gate order i f g o:
//   z = x_t w_ih + h w_hh + b (hp NULL: h = 0)
//   i = sigmoid(z[0:H]), f = sigmoid(z[H:2H]), g = tanh(z[2H:3H]), o = sigmoid(z[3H:4H])
//   c = f * c + i * g;  ht = o * tanh(c).
static void lstm_cell(const double *xt, const double *hp, const double *w_ih, const double *w_hh,
                      const double *bias, int64_t ni, int64_t h, double *c, double *ht) {
  for (int64_t u = 0; u < h; u++) {
    double z[4];  // i f g o pre-activations of unit u
    for (int gate = 0; gate < 4; gate++) {
      int64_t col = gate * h + u;
      z[gate] = bias[col];
      for (int64_t k = 0; k < ni; k++) z[gate] += xt[k] * w_ih[k * 4 * h + col];
      for (int64_t k = 0; hp && k < h; k++) z[gate] += hp[k] * w_hh[k * 4 * h + col];
    }
    c[u] = sigmoid(z[1]) * c[u] + sigmoid(z[0]) * tanh_(z[2]);
    ht[u] = sigmoid(z[3]) * tanh_(c[u]);
  }
}

// lstm(x [B,T,I], w_ih [I,4H], w_hh [H,4H], b [4H]) -> [B,T,H]: h = c = 0, then
// lstm_cell for t = 0..T-1, out[:, t, :] = h.
static int run_lstm(Run *r, const KilnNode *n, double *out) {
  const KilnNode *x = arg(r, n, 0);
  const double *xv = in(r, n, 0), *w_ih = in(r, n, 1), *w_hh = in(r, n, 2), *bias = in(r, n, 3);
  int64_t nb = x->shape[0], nt = x->shape[1], ni = x->shape[2], h = n->shape[2];
  double *c = calloc((size_t)h, sizeof *c);  // [H]: the cell state of one sequence
  KILN_ASSERT(c != NULL);
  for (int64_t b = 0; b < nb; b++) {
    memset(c, 0, (size_t)h * sizeof *c);
    for (int64_t t = 0; t < nt; t++)
      lstm_cell(xv + (b * nt + t) * ni, t ? out + (b * nt + t - 1) * h : NULL, w_ih, w_hh, bias,
                ni, h, c, out + (b * nt + t) * h);
  }
  free(c);
  return 0;
}

// lstm_step(x, w_ih, w_hh, b, state [2,B,H]): as lstm, but h and c start from
// state[0, b] and state[1, b], and the last step's h and c are written back there.
static int run_lstm_step(Run *r, const KilnNode *n, double *out) {
  const KilnNode *x = arg(r, n, 0);
  const double *xv = in(r, n, 0), *w_ih = in(r, n, 1), *w_hh = in(r, n, 2), *bias = in(r, n, 3);
  double *st = r->v[n->in[4]];
  int64_t nb = x->shape[0], nt = x->shape[1], ni = x->shape[2], h = n->shape[2];
  for (int64_t b = 0; b < nb; b++) {
    double *hs = st + b * h, *c = st + (nb + b) * h;
    for (int64_t t = 0; t < nt; t++)
      lstm_cell(xv + (b * nt + t) * ni, t ? out + (b * nt + t - 1) * h : hs, w_ih, w_hh, bias, ni,
                h, c, out + (b * nt + t) * h);
    memcpy(hs, out + (b * nt + nt - 1) * h, (size_t)h * sizeof *hs);
  }
  return 0;
}

static double dot(const double *a, const double *b, int64_t n) {
  double s = 0;
  for (int64_t c = 0; c < n; c++) s += a[c] * b[c];
  return s;
}

// One query row of one head: keys and values j = 0..last sit `stride` apart, each
// dh wide. out = sum_j p_j v_j with p = softmax_j(q . k_j * scale), stabilised by
// the largest score.
static void attend(const double *q, const double *k, const double *v, int64_t stride,
                   int64_t last, int64_t dh, double scale, double *out) {
  double m = -INFINITY, sum = 0;
  for (int64_t j = 0; j <= last; j++) m = fmax(m, dot(q, k + j * stride, dh) * scale);
  for (int64_t c = 0; c < dh; c++) out[c] = 0;
  for (int64_t j = 0; j <= last; j++) {
    double e = exp(dot(q, k + j * stride, dh) * scale - m);
    sum += e;
    for (int64_t c = 0; c < dh; c++) out[c] += e * v[j * stride + c];
  }
  for (int64_t c = 0; c < dh; c++) out[c] /= sum;
}

// Multi-head scaled dot-product attention on q, k, v [B,T,D] with `heads` heads:
// dh = D / heads; head hd uses columns [hd*dh, (hd+1)*dh) of q, k, v and out.
//   s_ij = q_i . k_j / sqrt(dh), masked (left out) for j > i when causal;
//   p_ij = softmax over j of s_ij;  out_i = sum_j p_ij v_j.
static int run_attention(Run *r, const KilnNode *n, double *out) {
  int64_t nb = n->shape[0], nt = n->shape[1], d = n->shape[2], heads = n->attr.heads;
  int64_t dh = d / heads;
  for (int64_t b = 0; b < nb; b++) {
    for (int64_t hd = 0; hd < heads; hd++) {
      int64_t at = b * nt * d + hd * dh;  // row 0 of this sequence and head
      for (int64_t i = 0; i < nt; i++)
        attend(in(r, n, 0) + at + i * d, in(r, n, 1) + at, in(r, n, 2) + at, d,
               n->attr.causal ? i : nt - 1, dh, 1.0 / sqrt((double)dh), out + at + i * d);
    }
  }
  return 0;
}

// attention_decode(q, k, v [B,1,D], k_cache, v_cache [B,C,D], position [1,1]):
// with p the position (clamped to [0, C)), first k_cache[b, p] = k[b, 0] and
// v_cache[b, p] = v[b, 0]; then query q[b, 0] attends to cache positions 0..p,
// per head, as run_attention's row p does for a causal sequence.
static int run_attention_decode(Run *r, const KilnNode *n, double *out) {
  const KilnNode *kc = arg(r, n, 3);
  int64_t nb = kc->shape[0], nc = kc->shape[1], d = kc->shape[2], heads = n->attr.heads;
  int64_t dh = d / heads, p = (int64_t)in(r, n, 5)[0];
  p = p < 0 ? 0 : p >= nc ? nc - 1 : p;
  double *kv = r->v[n->in[3]], *vv = r->v[n->in[4]];
  for (int64_t b = 0; b < nb; b++) {
    memcpy(kv + (b * nc + p) * d, in(r, n, 1) + b * d, (size_t)d * sizeof *kv);
    memcpy(vv + (b * nc + p) * d, in(r, n, 2) + b * d, (size_t)d * sizeof *vv);
    for (int64_t hd = 0; hd < heads; hd++)
      attend(in(r, n, 0) + b * d + hd * dh, kv + b * nc * d + hd * dh, vv + b * nc * d + hd * dh, d,
             p, dh, 1.0 / sqrt((double)dh), out + b * d + hd * dh);
  }
  return 0;
}

//
// Losses: scalars.
//
// Label p of lb (value y) must be an integer in [0, c); else the error names it.
static int check_label(Run *r, const KilnNode *lb, double y, int64_t p, int64_t c) {
  if (y >= 0 && y < (double)c && y == floor(y)) return 0;
  char where[160];
  int64_t idx[KILN_MAX_RANK];
  unravel(p, lb->shape, lb->rank, idx);
  return fail(r, "label %g at position %s is outside [0, %lld)", y,
              kiln_dims_str(idx, lb->rank, where, sizeof where), (long long)c);
}

// cross_entropy(logits [..., C], labels i32 [...]): the mean over every position
// p of -log_softmax(logits[p, :])[labels[p]]. A label outside [0, C) is an error.
static int run_cross_entropy(Run *r, const KilnNode *n, double *out) {
  const KilnNode *lg = arg(r, n, 0), *lb = arg(r, n, 1);
  const double *x = in(r, n, 0), *y = in(r, n, 1);
  int64_t c = lg->shape[lg->rank - 1], rows = numel(lb);
  double total = 0;
  for (int64_t p = 0; p < rows; p++) {
    const double *row = x + p * c;
    if (check_label(r, lb, y[p], p, c)) return -1;
    double m = -INFINITY, sum = 0;
    for (int64_t j = 0; j < c; j++) m = fmax(m, row[j]);
    for (int64_t j = 0; j < c; j++) sum += exp(row[j] - m);
    total += m + log(sum) - row[(int64_t)y[p]];
  }
  out[0] = total / (double)rows;
  return 0;
}

// mse(pred, target): mean((pred - target)^2).
static int run_mse(Run *r, const KilnNode *n, double *out) {
  const KilnNode *a = arg(r, n, 0);
  const double *p = in(r, n, 0), *t = in(r, n, 1);
  double total = 0;
  for (int64_t i = 0; i < numel(a); i++) total += (p[i] - t[i]) * (p[i] - t[i]);
  out[0] = total / (double)numel(a);
  return 0;
}

// binary_cross_entropy(logits x, labels y in [0, 1]), sigmoid inside, stable form:
//   mean(max(x, 0) - x * y + log1p(exp(-|x|))).
static int run_bce(Run *r, const KilnNode *n, double *out) {
  const KilnNode *a = arg(r, n, 0);
  const double *x = in(r, n, 0), *y = in(r, n, 1);
  double total = 0;
  for (int64_t i = 0; i < numel(a); i++)
    total += fmax(x[i], 0) - x[i] * y[i] + log1p(exp(-fabs(x[i])));
  out[0] = total / (double)numel(a);
  return 0;
}

//
// Gradients: internal ops made by autodiff. Each is the gradient of a forward op
// above, dy being the gradient flowing back into that op's output; the elementwise
// ones (gelu_grad, silu_grad, clamp_grad) are the table's scalar functions.
//
// layernorm_dx(x [..., D], gamma [D], dy like x), attr eps: the gradient with
// respect to x of sum(dy * layernorm(x, gamma, beta)). Per row, with
// xhat = (x - mean) * rstd and g = dy * gamma, means over the row's D elements:
//   dx = rstd * (g - mean(g) - xhat * mean(g * xhat)).
static int run_layernorm_dx(Run *r, const KilnNode *n, double *out) {
  const KilnNode *x = arg(r, n, 0);
  const double *xv = in(r, n, 0), *gamma = in(r, n, 1), *dy = in(r, n, 2);
  int64_t d = x->shape[x->rank - 1], rows = numel(x) / d;
  for (int64_t i = 0; i < rows; i++) {
    const double *row = xv + i * d, *dyr = dy + i * d;
    double mean, rstd, mg = 0, mgx = 0;
    row_stats(row, d, n->attr.eps, &mean, &rstd);
    for (int64_t j = 0; j < d; j++) {
      double xhat = (row[j] - mean) * rstd, g = dyr[j] * gamma[j];
      mg += g;
      mgx += g * xhat;
    }
    mg /= (double)d;
    mgx /= (double)d;
    for (int64_t j = 0; j < d; j++) {
      double xhat = (row[j] - mean) * rstd, g = dyr[j] * gamma[j];
      out[i * d + j] = rstd * (g - mg - xhat * mgx);
    }
  }
  return 0;
}

// layernorm_dgamma(x [..., D], dy like x), attr eps -> [D]: the gradient with
// respect to gamma, the sum over rows of dy * xhat (xhat as in layernorm_dx).
static int run_layernorm_dgamma(Run *r, const KilnNode *n, double *out) {
  const KilnNode *x = arg(r, n, 0);
  const double *xv = in(r, n, 0), *dy = in(r, n, 1);
  int64_t d = x->shape[x->rank - 1], rows = numel(x) / d;
  for (int64_t j = 0; j < d; j++) out[j] = 0;
  for (int64_t i = 0; i < rows; i++) {
    double mean, rstd;
    row_stats(xv + i * d, d, n->attr.eps, &mean, &rstd);
    for (int64_t j = 0; j < d; j++) out[j] += dy[i * d + j] * (xv[i * d + j] - mean) * rstd;
  }
  return 0;
}

// embedding_grad(ids i32 [...], dy [..., D]), attr size = V -> [V, D]: the
// gradient with respect to embedding's table. Zeros, then row ids[p] += dy[p, :]
// for every position p (a repeated id collects every one of its rows). An id
// outside [0, V) is an error, as in embedding.
static int run_embedding_grad(Run *r, const KilnNode *n, double *out) {
  const KilnNode *ids = arg(r, n, 0);
  int64_t v = n->shape[0], d = n->shape[1], idx[KILN_MAX_RANK];
  memset(out, 0, (size_t)numel(n) * sizeof *out);
  for (int64_t p = 0; p < numel(ids); p++) {
    double id = in(r, n, 0)[p];
    if (!(id >= 0 && id < (double)v && id == floor(id))) {
      char where[160];
      unravel(p, ids->shape, ids->rank, idx);
      return fail(r, "id %g at position %s is outside [0, %lld)", id,
                  kiln_dims_str(idx, ids->rank, where, sizeof where), (long long)v);
    }
    for (int64_t j = 0; j < d; j++) out[(int64_t)id * d + j] += in(r, n, 1)[p * d + j];
  }
  return 0;
}

// lstm_grad(x [B,T,I], w_ih [I,4H], w_hh [H,4H], b [4H], dy [B,T,H]) -> the flat
// vector [dx | dw_ih | dw_hh | db], each row-major: the gradients of
// sum(dy * lstm(x, w_ih, w_hh, b)). Backpropagation through time: run_lstm's
// forward is recomputed per sequence (h = c = 0 before step 0) keeping each step's
// gates i f g o and cell state c_t; then for t = T-1 .. 0, with dh and dc carried
// back from step t + 1 (0 at the last step):
//   dh += dy_t;  dc += dh o (1 - tanh(c_t)^2)
//   dz = [dc g i (1 - i), dc c_{t-1} f (1 - f), dc i (1 - g^2), dh tanh(c_t) o (1 - o)]
//   dx_t = dz w_ih^T;  dw_ih += x_t^T dz;  dw_hh += h_{t-1}^T dz;  db += dz
//   carried back to step t - 1: dh = dz w_hh^T, dc = dc f.
static int run_lstm_grad(Run *r, const KilnNode *n, double *out) {
  const KilnNode *x = arg(r, n, 0);
  const double *xv = in(r, n, 0), *w_ih = in(r, n, 1), *w_hh = in(r, n, 2), *bias = in(r, n, 3);
  const double *dy = in(r, n, 4);
  int64_t nb = x->shape[0], nt = x->shape[1], ni = x->shape[2], h = arg(r, n, 2)->shape[0];
  double *dx = out, *dw_ih = dx + nb * nt * ni, *dw_hh = dw_ih + ni * 4 * h;
  double *db = dw_hh + h * 4 * h;
  memset(out, 0, (size_t)numel(n) * sizeof *out);
  // One sequence's forward: gates[t] [4H] (activated), cs[t + 1] and hs[t + 1] [H]
  // the state after step t (cs[0] = hs[0] = 0); and the backward's dh, dc [H], dz [4H].
  size_t floats = (size_t)(nt * 4 * h + 2 * (nt + 1) * h + 6 * h);
  double *gates = calloc(floats, sizeof *gates);
  KILN_ASSERT(gates != NULL);
  double *cs = gates + nt * 4 * h, *hs = cs + (nt + 1) * h, *dh = hs + (nt + 1) * h;
  double *dc = dh + h, *dz = dc + h;
  for (int64_t b = 0; b < nb; b++) {
    for (int64_t t = 0; t < nt; t++) {
      const double *xt = xv + (b * nt + t) * ni, *hp = hs + t * h, *cp = cs + t * h;
      double *gt = gates + t * 4 * h;
      for (int64_t col = 0; col < 4 * h; col++) {
        double z = bias[col];
        for (int64_t k = 0; k < ni; k++) z += xt[k] * w_ih[k * 4 * h + col];
        for (int64_t k = 0; k < h; k++) z += hp[k] * w_hh[k * 4 * h + col];
        gt[col] = col >= 2 * h && col < 3 * h ? tanh_(z) : sigmoid(z);
      }
      for (int64_t u = 0; u < h; u++) {
        cs[(t + 1) * h + u] = gt[h + u] * cp[u] + gt[u] * gt[2 * h + u];
        hs[(t + 1) * h + u] = gt[3 * h + u] * tanh_(cs[(t + 1) * h + u]);
      }
    }
    memset(dh, 0, (size_t)(2 * h) * sizeof *dh);  // dh and dc
    for (int64_t t = nt - 1; t >= 0; t--) {
      const double *gt = gates + t * 4 * h, *xt = xv + (b * nt + t) * ni, *hp = hs + t * h;
      for (int64_t u = 0; u < h; u++) {
        double i = gt[u], f = gt[h + u], g = gt[2 * h + u], o = gt[3 * h + u];
        double tc = tanh_(cs[(t + 1) * h + u]);
        dh[u] += dy[(b * nt + t) * h + u];
        dc[u] += dh[u] * o * (1 - tc * tc);
        dz[u] = dc[u] * g * i * (1 - i);
        dz[h + u] = dc[u] * cs[t * h + u] * f * (1 - f);
        dz[2 * h + u] = dc[u] * i * (1 - g * g);
        dz[3 * h + u] = dh[u] * tc * o * (1 - o);
        dc[u] *= f;
      }
      for (int64_t k = 0; k < ni; k++) {
        dx[(b * nt + t) * ni + k] = dot(dz, w_ih + k * 4 * h, 4 * h);
        for (int64_t col = 0; col < 4 * h; col++) dw_ih[k * 4 * h + col] += xt[k] * dz[col];
      }
      for (int64_t k = 0; k < h; k++) {
        dh[k] = dot(dz, w_hh + k * 4 * h, 4 * h);
        for (int64_t col = 0; col < 4 * h; col++) dw_hh[k * 4 * h + col] += hp[k] * dz[col];
      }
      for (int64_t col = 0; col < 4 * h; col++) db[col] += dz[col];
    }
  }
  free(gates);
  return 0;
}

// attention_grad(q, k, v, dy, each [B,T,D]), attrs heads, causal -> [B, T, 3D]:
// each row holds dq, dk, dv side by side, the gradients of
// sum(dy * attention(q, k, v)). Per sequence and head, with p_ij as run_attention
// computes it (pairs j > i left out when causal) and scale = 1 / sqrt(dh):
//   dv_j = sum_i p_ij dy_i;  dp_ij = dy_i . v_j;  ds_ij = p_ij (dp_ij - sum_l p_il dp_il)
//   dq_i = scale sum_j ds_ij k_j;  dk_j = scale sum_i ds_ij q_i.
static int run_attention_grad(Run *r, const KilnNode *n, double *out) {
  int64_t nb = n->shape[0], nt = n->shape[1], d = n->shape[2] / 3, heads = n->attr.heads;
  int64_t dh = d / heads, od = 3 * d;  // od: the output's row length
  double scale = 1.0 / sqrt((double)dh);
  const double *qv = in(r, n, 0), *kv = in(r, n, 1), *vv = in(r, n, 2), *dy = in(r, n, 3);
  double *dq = out, *dk = out + d, *dv = out + 2 * d;
  double *p = calloc((size_t)(2 * nt), sizeof *p), *dp = p + nt;  // one query's row
  KILN_ASSERT(p != NULL);
  memset(out, 0, (size_t)numel(n) * sizeof *out);
  for (int64_t b = 0; b < nb; b++) {
    for (int64_t hd = 0; hd < heads; hd++) {
      int64_t at = b * nt * d + hd * dh, ot = b * nt * od + hd * dh;  // row 0: input, output
      for (int64_t i = 0; i < nt; i++) {
        int64_t last = n->attr.causal ? i : nt - 1;
        const double *qi = qv + at + i * d, *dyi = dy + at + i * d;
        double m = -INFINITY, sum = 0, pdp = 0;
        for (int64_t j = 0; j <= last; j++) m = fmax(m, dot(qi, kv + at + j * d, dh) * scale);
        for (int64_t j = 0; j <= last; j++) sum += p[j] = exp(dot(qi, kv + at + j * d, dh) * scale - m);
        for (int64_t j = 0; j <= last; j++) {
          p[j] /= sum;
          dp[j] = dot(dyi, vv + at + j * d, dh);
          pdp += p[j] * dp[j];
        }
        for (int64_t j = 0; j <= last; j++) {
          double ds = p[j] * (dp[j] - pdp);
          for (int64_t c = 0; c < dh; c++) {
            dq[ot + i * od + c] += scale * ds * kv[at + j * d + c];
            dk[ot + j * od + c] += scale * ds * qi[c];
            dv[ot + j * od + c] += p[j] * dyi[c];
          }
        }
      }
    }
  }
  free(p);
  return 0;
}

// cross_entropy_grad(logits [..., C], labels i32 [...]) -> like logits: the
// gradient of cross_entropy, (softmax(logits[p, :]) - onehot(labels[p])) / P for
// every position p, P being the number of positions (the loss is their mean; its
// own upstream gradient is 1, the loss being the root). A label outside [0, C) is
// an error.
static int run_cross_entropy_grad(Run *r, const KilnNode *n, double *out) {
  const KilnNode *lg = arg(r, n, 0), *lb = arg(r, n, 1);
  const double *x = in(r, n, 0), *y = in(r, n, 1);
  int64_t c = lg->shape[lg->rank - 1], rows = numel(lb);
  for (int64_t p = 0; p < rows; p++) {
    const double *row = x + p * c;
    if (check_label(r, lb, y[p], p, c)) return -1;
    double m = -INFINITY, sum = 0;
    for (int64_t j = 0; j < c; j++) m = fmax(m, row[j]);
    for (int64_t j = 0; j < c; j++) sum += exp(row[j] - m);
    for (int64_t j = 0; j < c; j++)
      out[p * c + j] = (exp(row[j] - m) / sum - (j == (int64_t)y[p])) / (double)rows;
  }
  return 0;
}

//
// Dispatch.
//
static int run_node(Run *r, const KilnNode *n, double *out) {
  switch (n->op) {
  case KILN_OP_INPUT:
  case KILN_OP_PARAM: return 0;  // filled by the caller
  case KILN_OP_CONST: return run_const(r, n, out);
  case KILN_OP_NEG:
  case KILN_OP_EXP:
  case KILN_OP_LOG:
  case KILN_OP_SQRT:
  case KILN_OP_RSQRT:
  case KILN_OP_POW:
  case KILN_OP_RELU:
  case KILN_OP_SIGMOID:
  case KILN_OP_TANH:
  case KILN_OP_GELU:
  case KILN_OP_SILU:
  case KILN_OP_CLAMP:
  case KILN_OP_ADD:
  case KILN_OP_SUB:
  case KILN_OP_MUL:
  case KILN_OP_DIV:
  case KILN_OP_WHERE:
  case KILN_OP_GELU_GRAD:
  case KILN_OP_SILU_GRAD:
  case KILN_OP_CLAMP_GRAD: return run_scalar(r, n, out);
  case KILN_OP_DROPOUT: return run_dropout(r, n, out);
  case KILN_OP_SUM:
  case KILN_OP_MEAN:
  case KILN_OP_MAX: return run_reduce(r, n, out);
  case KILN_OP_SOFTMAX:
  case KILN_OP_LOG_SOFTMAX: return run_softmax(r, n, out);
  case KILN_OP_LAYERNORM: return run_layernorm(r, n, out);
  case KILN_OP_MATMUL: return run_matmul(r, n, out);
  case KILN_OP_RESHAPE: return run_reshape(r, n, out);
  case KILN_OP_TRANSPOSE: return run_transpose(r, n, out);
  case KILN_OP_CONCAT: return run_concat(r, n, out);
  case KILN_OP_SLICE: return run_slice(r, n, out);
  case KILN_OP_BROADCAST: return run_broadcast(r, n, out);
  case KILN_OP_EMBEDDING: return run_embedding(r, n, out);
  case KILN_OP_LSTM: return run_lstm(r, n, out);
  case KILN_OP_ATTENTION: return run_attention(r, n, out);
  case KILN_OP_CROSS_ENTROPY: return run_cross_entropy(r, n, out);
  case KILN_OP_MSE: return run_mse(r, n, out);
  case KILN_OP_BCE: return run_bce(r, n, out);
  case KILN_OP_ATTENTION_DECODE: return run_attention_decode(r, n, out);
  case KILN_OP_LSTM_STEP: return run_lstm_step(r, n, out);
  case KILN_OP_LAYERNORM_DX: return run_layernorm_dx(r, n, out);
  case KILN_OP_LAYERNORM_DGAMMA: return run_layernorm_dgamma(r, n, out);
  case KILN_OP_EMBEDDING_GRAD: return run_embedding_grad(r, n, out);
  case KILN_OP_LSTM_GRAD: return run_lstm_grad(r, n, out);
  case KILN_OP_ATTENTION_GRAD: return run_attention_grad(r, n, out);
  case KILN_OP_CROSS_ENTROPY_GRAD: return run_cross_entropy_grad(r, n, out);
  case KILN_OP_COUNT: break;
  }
  KILN_ASSERT(!"unknown op");
  return -1;
}

int kiln_interp_run(const KilnGraph *g, double **values, const KilnInterpOpts *o, char *err,
                    size_t errlen) {
  static const KilnInterpOpts inference = {.training = false, .seed = 0};
  Run r = {.g = g, .v = values, .o = o ? o : &inference};
  for (int i = 0; i < g->nnodes; i++) {
    const KilnNode *n = &g->nodes[i];
    KILN_ASSERT(values[i] != NULL);
    if (run_node(&r, n, values[i]) == 0) continue;
    if (n->loc.file)
      snprintf(err, errlen, "%s:%d:%d: node %%%s (%s): %s", n->loc.file, n->loc.line, n->loc.col,
               n->name, kiln_op(n->op)->name, r.msg);
    else
      snprintf(err, errlen, "node %%%s (%s): %s", n->name, kiln_op(n->op)->name, r.msg);
    return -1;
  }
  return 0;
}
