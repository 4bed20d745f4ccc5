// lstm and lstm_grad (ir/interp.c defines both): the matrix products go to
// cblas_sgemm, the gates to generated loops that vectorize (kiln_cg_exp and
// kiln_cg_tanh are arithmetic). Gate order i f g o; G = 4H gate columns.
//
// Forward, per block of sequences (batch rows [lo, hi), one thread's): x W_ih for
// every step of the block is one product into Z; then step by step the block's
// h_{t-1} W_hh is added to that step's rows of Z and the gates turn the sums into
// c_t and h_t. A thread owns whole sequences, so the recurrence needs no
// synchronisation, and its products have as many rows as it owns sequences.
//
// lstm_grad has two kernels (phases), run one after the other:
//   0. per block of sequences: every step's gates, c_t and h_t, kept in lstm_grad's
//      scratch by the lstm's own kernel when the two pair (kiln_cpu_lstm_kept_for;
//      the plan stretches that scratch back to the lstm's step), else the forward
//      again;
//      then back through time the gate pre-activation gradients dz_t (into
//      Z, over the gates), carrying dh = dz_t W_hh^T and dc = dc f to step t - 1;
//      then dx = dZ W_ih^T for the block's rows.
//   1. per block of gate columns: the weight gradients, sums over every sequence
//      and step, as products over all B*T rows: dW_ih = X^T dZ, dW_hh = Hprev^T dZ,
//      db = the column sums of dZ. Each column belongs to one iteration, so no two
//      threads add into one value, and each sum runs in the same order whatever
//      the split.
#include <string.h>

#include "compiler/cpu/cpu.h"

// Gate columns per iteration of lstm_grad's weight phase: wide enough for sgemm
// to run at speed, narrow enough to split over a few threads.
#define COL_BLOCK 128

// CBLAS's enum values (cblas.h): row-major storage, an operand as is or transposed.

static LLVMValueRef i64(KilnCg *c, int64_t v) { return kiln_cg_i64(c, v); }
static LLVMValueRef add(KilnCg *c, LLVMValueRef a, LLVMValueRef b) { return kiln_cg_add(c, a, b); }
static LLVMValueRef mul(KilnCg *c, LLVMValueRef a, int64_t b) { return kiln_cg_mul(c, a, i64(c, b)); }
static LLVMValueRef fadd(KilnCg *c, LLVMValueRef a, LLVMValueRef b) { return LLVMBuildFAdd(c->b, a, b, ""); }
static LLVMValueRef fsub(KilnCg *c, LLVMValueRef a, LLVMValueRef b) { return LLVMBuildFSub(c->b, a, b, ""); }
static LLVMValueRef fmul(KilnCg *c, LLVMValueRef a, LLVMValueRef b) { return LLVMBuildFMul(c->b, a, b, ""); }
static LLVMValueRef ld(KilnCg *c, LLVMValueRef base, LLVMValueRef idx) { return kiln_cg_load(c, c->f32, base, idx); }
static LLVMValueRef at(KilnCg *c, LLVMValueRef base, LLVMValueRef idx) { return kiln_cg_gep(c, c->f32, base, idx); }
static LLVMValueRef one_minus(KilnCg *c, LLVMValueRef x) { return fsub(c, kiln_cg_f32(c, 1), x); }

static LLVMValueRef sigmoid(KilnCg *c, LLVMValueRef x) {
  LLVMValueRef e = kiln_cg_exp(c, LLVMBuildFNeg(c->b, x, ""));
  return LLVMBuildFDiv(c->b, kiln_cg_f32(c, 1), fadd(c, kiln_cg_f32(c, 1), e), "");
}

static LLVMValueRef icmp(KilnCg *c, LLVMIntPredicate p, LLVMValueRef a, int64_t b) {
  return LLVMBuildICmp(c->b, p, a, i64(c, b), "");
}

static const KilnNode *in_node(const KilnKernel *k, int i) { return &k->g->nodes[k->n->in[i]]; }

// Part [floats, floats + n) of node id's scratch, as a buffer of its own: the body
// gets it as a separate, noalias parameter, so loops over two parts vectorize.
static LLVMValueRef scratch_part(KilnKernel *k, int32_t id, int64_t floats, int64_t n) {
  return kiln_cpu_body_ptr(k->cg, k->body, KILN_LOC_ARENA, k->plan->scratch[id] + floats * 4, n * 4);
}

// The lstm that keeps, in lstm_grad node j's scratch, the gates and states j would
// otherwise compute again: the earlier lstm with j's four inputs, when exactly one
// lstm and one lstm_grad have them; else -1. compiler/cpu/plan.c plans that scratch
// from the lstm's step on. Without the forward kept, the backward runs it again: a
// quarter of the training step's FLOPs.
int32_t kiln_cpu_lstm_kept_for(const KilnGraph *g, int32_t j) {
  const KilnNode *d = &g->nodes[j];
  if (d->op != KILN_OP_LSTM_GRAD) return -1;
  int32_t fwd = -1, grads = 0;
  for (int32_t i = 0; i < g->nnodes; i++) {
    const KilnNode *n = &g->nodes[i];
    if ((n->op != KILN_OP_LSTM && n->op != KILN_OP_LSTM_GRAD) || memcmp(n->in, d->in, 4 * sizeof *n->in))
      continue;
    if (n->op == KILN_OP_LSTM_GRAD) grads++;
    else if (i < j) fwd = fwd == -1 ? i : -2;
  }
  return grads == 1 && fwd >= 0 ? fwd : -1;
}

// The lstm_grad whose scratch lstm node id fills, or -1.
static int32_t grad_kept_in(const KilnGraph *g, int32_t id) {
  for (int32_t j = id + 1; j < g->nnodes; j++)
    if (kiln_cpu_lstm_kept_for(g, j) == id) return j;
  return -1;
}

// A row-major matrix operand of sgemm: its first element, leading dimension, and
// whether the product takes it transposed.
typedef struct {
  LLVMValueRef p;
  int64_t ld;
  bool trans;
} Mat;

// out = op(a) op(b) + beta out, op(a) [m, k], op(b) [k, n]; m, n, k are i64 values.
static void sgemm(KilnCg *c, LLVMValueRef m, LLVMValueRef n, LLVMValueRef k, Mat a, Mat b,
                  double beta, Mat out) {
  kiln_cpu_sgemm(c, &(KilnGemm){.ta = a.trans, .tb = b.trans, .m = m, .n = n, .k = k, .alpha = 1,
                                .a = a.p, .lda = a.ld, .b = b.p, .ldb = b.ld,
                                .beta = kiln_cg_f32(c, beta), .c = out.p, .ldc = out.ld});
}

// Starts code that runs only when cond holds; end_if closes it.
static LLVMBasicBlockRef begin_if(KilnCg *c, LLVMValueRef cond) {
  LLVMBasicBlockRef then = LLVMAppendBasicBlockInContext(c->ctx, c->fn, "then");
  LLVMBasicBlockRef done = LLVMAppendBasicBlockInContext(c->ctx, c->fn, "endif");
  LLVMBuildCondBr(c->b, cond, then, done);
  LLVMPositionBuilderAtEnd(c->b, then);
  return done;
}

static void end_if(KilnCg *c, LLVMBasicBlockRef done) {
  LLVMBuildBr(c->b, done);
  LLVMPositionBuilderAtEnd(c->b, done);
}

static void zero(KilnCg *c, LLVMValueRef base, LLVMValueRef lo, LLVMValueRef hi) {
  KilnLoop z = kiln_cg_loop_begin(c, lo, hi, "zero");
  kiln_cg_store(c, kiln_cg_f32(c, 0), base, z.index);
  kiln_cg_loop_end(c, &z);
}

// One layer over a block of sequences: the buffers and sizes both kernels share.
typedef struct {
  int64_t B, T, I, H;
  LLVMValueRef X, Wi, Wh, Bv;  // x [B,T,I], w_ih [I,G], w_hh [H,G], bias [G]
  LLVMValueRef Z;   // [B,T,G]: x W_ih + h W_hh per step; with keep, the gates then
  LLVMValueRef Hs;  // [B,T,H]: h_t (lstm: the output); with keep, 0 at t = T - 1
  LLVMValueRef Cs;  // [B,H] the running c; with keep, [B,T,H] every c_t
  LLVMValueRef Y;   // [B,T,H] or NULL: h_t besides Hs (an lstm keeping Hs for its gradient)
  bool keep;        // keep what the backward reads
} Seq;

// c_{t-1} of row (b, t) of Cs kept per step; 0 at t = 0 (the index is then
// moved onto the row itself so the load stays inside the buffer).
static LLVMValueRef c_prev(KilnCg *c, const Seq *s, LLVMValueRef row, LLVMValueRef t, LLVMValueRef u) {
  LLVMValueRef later = icmp(c, LLVMIntSGT, t, 0);
  LLVMValueRef prow = LLVMBuildSub(c->b, row, LLVMBuildZExt(c->b, later, c->i64, ""), "");
  LLVMValueRef v = ld(c, s->Cs, add(c, mul(c, prow, s->H), u));
  return LLVMBuildSelect(c->b, later, v, kiln_cg_f32(c, 0), "");
}

// Step t of rows [lo, hi): the gates from Z (+ bias), then c and h.
static void gates(KilnCg *c, const Seq *s, LLVMValueRef t, LLVMValueRef lo, LLVMValueRef hi) {
  int64_t H = s->H, G = 4 * H;
  KilnLoop b = kiln_cg_loop_begin(c, lo, hi, "b");
  LLVMValueRef row = add(c, mul(c, b.index, s->T), t);
  KilnLoop u = kiln_cg_loop_begin(c, i64(c, 0), i64(c, H), "u");
  LLVMValueRef gt[4];
  for (int q = 0; q < 4; q++) {
    LLVMValueRef col = add(c, u.index, i64(c, q * H));
    LLVMValueRef z = fadd(c, ld(c, s->Z, add(c, mul(c, row, G), col)), ld(c, s->Bv, col));
    gt[q] = q == 2 ? kiln_cg_tanh(c, z) : sigmoid(c, z);
    if (s->keep) kiln_cg_store(c, gt[q], s->Z, add(c, mul(c, row, G), col));
  }
  LLVMValueRef ci = add(c, mul(c, s->keep ? row : b.index, H), u.index);
  LLVMValueRef cp = s->keep ? c_prev(c, s, row, t, u.index) : ld(c, s->Cs, ci);
  LLVMValueRef cn = fadd(c, fmul(c, gt[1], cp), fmul(c, gt[0], gt[2]));
  kiln_cg_store(c, cn, s->Cs, ci);
  LLVMValueRef h = fmul(c, gt[3], kiln_cg_tanh(c, cn));
  if (s->Y) kiln_cg_store(c, h, s->Y, add(c, mul(c, row, H), u.index));
  if (s->keep)  // the last h feeds no product of the backward (see weight_grads)
    h = LLVMBuildSelect(c->b, icmp(c, LLVMIntSLT, t, s->T - 1), h, kiln_cg_f32(c, 0), "");
  kiln_cg_store(c, h, s->Hs, add(c, mul(c, row, H), u.index));
  kiln_cg_loop_end(c, &u);
  kiln_cg_loop_end(c, &b);
}

// The forward over sequences [lo, hi).
static void forward(KilnCg *c, const Seq *s, LLVMValueRef lo, LLVMValueRef hi) {
  int64_t T = s->T, H = s->H, G = 4 * H;
  LLVMValueRef rows = LLVMBuildSub(c->b, hi, lo, "rows"), r0 = mul(c, lo, T);
  // Z[rows] = X[rows] W_ih, every step at once.
  sgemm(c, mul(c, rows, T), i64(c, G), i64(c, s->I), (Mat){at(c, s->X, mul(c, r0, s->I)), s->I, false},
        (Mat){s->Wi, G, false}, 0, (Mat){at(c, s->Z, mul(c, r0, G)), G, false});
  if (!s->keep) zero(c, s->Cs, mul(c, lo, H), mul(c, hi, H));
  KilnLoop t = kiln_cg_loop_begin(c, i64(c, 0), i64(c, T), "t");
  // Z[:, t] += h_{t-1} W_hh, rows T apart in Hs and Z; h_{-1} = 0 adds nothing.
  LLVMBasicBlockRef done = begin_if(c, icmp(c, LLVMIntSGT, t.index, 0));
  LLVMValueRef prev = add(c, r0, LLVMBuildSub(c->b, t.index, i64(c, 1), ""));
  sgemm(c, rows, i64(c, G), i64(c, H), (Mat){at(c, s->Hs, mul(c, prev, H)), T * H, false},
        (Mat){s->Wh, G, false}, 1, (Mat){at(c, s->Z, mul(c, add(c, r0, t.index), G)), T * G, false});
  end_if(c, done);
  gates(c, s, t.index, lo, hi);
  kiln_cg_loop_end(c, &t);
}

static Seq seq_of(KilnKernel *k) {
  const KilnNode *x = in_node(k, 0);
  Seq s = {.B = x->shape[0], .T = x->shape[1], .I = x->shape[2], .H = in_node(k, 2)->shape[0]};
  s.X = kiln_cpu_ptr(k, k->n->in[0]);
  s.Wi = kiln_cpu_ptr(k, k->n->in[1]);
  s.Wh = kiln_cpu_ptr(k, k->n->in[2]);
  s.Bv = kiln_cpu_ptr(k, k->n->in[3]);
  return s;
}

typedef struct {
  LLVMValueRef dh, dc;  // [B,H]: carried from step t + 1
} Carry;

// lstm_grad's scratch, in kiln_cpu_lstm_scratch's order, in node id's: the
// lstm_grad's own, or the one an lstm keeps its forward in.
static void grad_parts(KilnKernel *k, int32_t id, Seq *s, Carry *cr) {
  int64_t bt = s->B * s->T, H = s->H, G = 4 * H;
  s->keep = true;
  s->Z = scratch_part(k, id, 0, bt * G);
  s->Hs = scratch_part(k, id, bt * G, bt * H);
  s->Cs = scratch_part(k, id, bt * (G + H), bt * H);
  if (cr) {
    cr->dh = scratch_part(k, id, bt * (G + 2 * H), s->B * H);
    cr->dc = scratch_part(k, id, bt * (G + 2 * H) + s->B * H, s->B * H);
  }
}

// lstm: parallel over sequences. Scratch: Z [B,T,G], then c [B,H], unused when the
// gates and states go to the gradient's scratch instead (the CUDA backend's lstm,
// which shares the plan, uses its own).
int64_t kiln_cpu_lstm(KilnKernel *k) {
  Seq s = seq_of(k);
  int64_t bt = s.B * s.T, G = 4 * s.H;
  int32_t grad = grad_kept_in(k->g, k->id);
  if (grad >= 0) {  // gates and states into the gradient's scratch, h also to the output
    grad_parts(k, grad, &s, NULL);
    s.Y = kiln_cpu_ptr(k, k->id);
  } else {
    s.Z = scratch_part(k, k->id, 0, bt * G);
    s.Cs = scratch_part(k, k->id, bt * G, s.B * s.H);
    s.Hs = kiln_cpu_ptr(k, k->id);
  }
  forward(k->cg, &s, k->lo, k->hi);
  return s.B;
}

// lstm: Z and c; lstm_grad: Z, Hs and Cs, each per step, then dh and dc.
int64_t kiln_cpu_lstm_scratch(const KilnGraph *g, const KilnNode *n) {
  const KilnNode *x = &g->nodes[n->in[0]];
  int64_t B = x->shape[0], bt = B * x->shape[1], H = g->nodes[n->in[2]].shape[0];
  if (n->op == KILN_OP_LSTM_GRAD) return bt * 6 * H + 2 * B * H;
  return bt * 4 * H + B * H;
}

// Step t of rows [lo, hi), backward: dz_t over the gates in Z (ir/interp.c's
// run_lstm_grad has the formulas), dc carried as dc f.
static void gate_grads(KilnCg *c, const Seq *s, const Carry *cr, LLVMValueRef dy, LLVMValueRef t,
                       LLVMValueRef lo, LLVMValueRef hi) {
  int64_t H = s->H, G = 4 * H;
  KilnLoop b = kiln_cg_loop_begin(c, lo, hi, "b");
  LLVMValueRef row = add(c, mul(c, b.index, s->T), t);
  KilnLoop u = kiln_cg_loop_begin(c, i64(c, 0), i64(c, H), "u");
  LLVMValueRef zi[4], gt[4];
  for (int q = 0; q < 4; q++) {
    zi[q] = add(c, mul(c, row, G), add(c, u.index, i64(c, q * H)));
    gt[q] = ld(c, s->Z, zi[q]);
  }
  LLVMValueRef gi = gt[0], gf = gt[1], gg = gt[2], go = gt[3];
  LLVMValueRef bu = add(c, mul(c, b.index, H), u.index), ru = add(c, mul(c, row, H), u.index);
  LLVMValueRef tc = kiln_cg_tanh(c, ld(c, s->Cs, ru)), cp = c_prev(c, s, row, t, u.index);
  LLVMValueRef dh = fadd(c, ld(c, cr->dh, bu), ld(c, dy, ru));
  LLVMValueRef dc = fadd(c, ld(c, cr->dc, bu), fmul(c, fmul(c, dh, go), one_minus(c, fmul(c, tc, tc))));
  LLVMValueRef dz[4] = {
      fmul(c, fmul(c, dc, gg), fmul(c, gi, one_minus(c, gi))),
      fmul(c, fmul(c, dc, cp), fmul(c, gf, one_minus(c, gf))),
      fmul(c, fmul(c, dc, gi), one_minus(c, fmul(c, gg, gg))),
      fmul(c, fmul(c, dh, tc), fmul(c, go, one_minus(c, go))),
  };
  for (int q = 0; q < 4; q++) kiln_cg_store(c, dz[q], s->Z, zi[q]);
  kiln_cg_store(c, fmul(c, dc, gf), cr->dc, bu);
  kiln_cg_loop_end(c, &u);
  kiln_cg_loop_end(c, &b);
}

// Phase 0 over sequences [lo, hi): the forward kept, back through time, dx.
static void backward(KilnKernel *k, Seq *s, LLVMValueRef lo, LLVMValueRef hi) {
  KilnCg *c = k->cg;
  int64_t T = s->T, H = s->H, G = 4 * H;
  Carry cr;
  grad_parts(k, k->id, s, &cr);
  LLVMValueRef dy = kiln_cpu_ptr(k, k->n->in[4]), dx = kiln_cpu_ptr(k, k->id);
  if (kiln_cpu_lstm_kept_for(k->g, k->id) < 0) forward(c, s, lo, hi);
  LLVMValueRef rows = LLVMBuildSub(c->b, hi, lo, "rows"), r0 = mul(c, lo, T);
  zero(c, cr.dh, mul(c, lo, H), mul(c, hi, H));
  zero(c, cr.dc, mul(c, lo, H), mul(c, hi, H));
  KilnLoop r = kiln_cg_loop_begin(c, i64(c, 0), i64(c, T), "r");
  LLVMValueRef t = LLVMBuildSub(c->b, i64(c, T - 1), r.index, "t");
  gate_grads(c, s, &cr, dy, t, lo, hi);
  // dh for step t - 1 = dz_t W_hh^T; none needed before step 0.
  LLVMBasicBlockRef done = begin_if(c, icmp(c, LLVMIntSGT, t, 0));
  sgemm(c, rows, i64(c, H), i64(c, G), (Mat){at(c, s->Z, mul(c, add(c, r0, t), G)), T * G, false},
        (Mat){s->Wh, G, true}, 0, (Mat){at(c, cr.dh, mul(c, lo, H)), H, false});
  end_if(c, done);
  kiln_cg_loop_end(c, &r);
  // dx = dZ W_ih^T, the output's first B*T*I values.
  sgemm(c, mul(c, rows, T), i64(c, s->I), i64(c, G), (Mat){at(c, s->Z, mul(c, r0, G)), G, false},
        (Mat){s->Wi, G, true}, 0, (Mat){at(c, dx, mul(c, r0, s->I)), s->I, false});
}

// Phase 1 over column blocks [lo, hi), as one product each for dW_ih and dW_hh:
// a call per block repacked X and Hs (the products' A) each time, 8 times over
// at one thread for the bundled model. Hs holds h_t with h_{T-1} = 0, so row r
// of Hs against row r + 1 of dZ pairs h_{t-1} with dz_t inside each sequence and
// adds nothing across the boundary between two: dW_hh is one product over the
// first B*T - 1 rows of Hs.
static void weight_grads(KilnKernel *k, Seq *s, LLVMValueRef lo, LLVMValueRef hi) {
  KilnCg *c = k->cg;
  int64_t bt = s->B * s->T, I = s->I, H = s->H, G = 4 * H;
  grad_parts(k, k->id, s, NULL);
  LLVMValueRef out = kiln_cpu_ptr(k, k->id);
  LLVMValueRef dwi = at(c, out, i64(c, bt * I)), dwh = at(c, out, i64(c, bt * I + I * G));
  LLVMValueRef db = at(c, out, i64(c, bt * I + (I + H) * G));
  LLVMValueRef j0 = mul(c, lo, COL_BLOCK), j1 = mul(c, hi, COL_BLOCK);
  j1 = LLVMBuildSelect(c->b, icmp(c, LLVMIntSGT, j1, G), i64(c, G), j1, "");
  LLVMValueRef n = LLVMBuildSub(c->b, j1, j0, "cols");
  sgemm(c, i64(c, I), n, i64(c, bt), (Mat){s->X, I, true}, (Mat){at(c, s->Z, j0), G, false}, 0,
        (Mat){at(c, dwi, j0), G, false});
  if (bt > 1) {
    sgemm(c, i64(c, H), n, i64(c, bt - 1), (Mat){s->Hs, H, true}, (Mat){at(c, s->Z, add(c, j0, i64(c, G))), G, false},
          0, (Mat){at(c, dwh, j0), G, false});
  } else {  // one sequence of one step: h_{-1} = 0
    KilnLoop r = kiln_cg_loop_begin(c, i64(c, 0), i64(c, H), "r");
    zero(c, at(c, dwh, add(c, mul(c, r.index, G), j0)), i64(c, 0), n);
    kiln_cg_loop_end(c, &r);
  }
  LLVMValueRef dbj = at(c, db, j0), zj = at(c, s->Z, j0);
  zero(c, dbj, i64(c, 0), n);
  KilnLoop r = kiln_cg_loop_begin(c, i64(c, 0), i64(c, bt), "row");
  KilnLoop q = kiln_cg_loop_begin(c, i64(c, 0), n, "col");
  LLVMValueRef sum = fadd(c, ld(c, dbj, q.index), ld(c, zj, add(c, mul(c, r.index, G), q.index)));
  kiln_cg_store(c, sum, dbj, q.index);
  kiln_cg_loop_end(c, &q);
  kiln_cg_loop_end(c, &r);
}

// lstm_grad: phase 0 parallel over sequences, phase 1 over blocks of gate columns.
int64_t kiln_cpu_lstm_grad(KilnKernel *k) {
  Seq s = seq_of(k);
  if (k->phase == 0) {
    backward(k, &s, k->lo, k->hi);
    return s.B;
  }
  weight_grads(k, &s, k->lo, k->hi);
  return (4 * s.H + COL_BLOCK - 1) / COL_BLOCK;
}
