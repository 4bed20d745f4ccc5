// Kernels of the decoding ops: one new token per call, against state that stays
// in the arena between calls (a key/value cache per attention layer, h and c per
// LSTM layer). Semantics as ir/interp.c's run_attention_decode and run_lstm_step.
#include <math.h>

#include "compiler/cpu/cpu.h"

static LLVMValueRef scratch(KilnKernel *k) {
  return kiln_cpu_body_ptr(k->cg, k->body, KILN_LOC_ARENA, k->plan->scratch[k->id],
                           k->plan->scratch_bytes[k->id]);
}

static LLVMValueRef i64c(KilnCg *c, int64_t v) { return kiln_cg_i64(c, v); }

static KilnLoop upto(KilnCg *c, LLVMValueRef n, const char *name) {
  return kiln_cg_loop_begin(c, i64c(c, 0), n, name);
}

static LLVMValueRef ld(KilnCg *c, LLVMValueRef base, LLVMValueRef i) {
  return kiln_cg_load(c, c->f32, base, i);
}

// A stack accumulator (a register after mem2reg).
static LLVMValueRef acc(KilnCg *c, double init, const char *name) {
  LLVMValueRef a = kiln_cg_alloca(c, c->f32, name);
  LLVMBuildStore(c->b, kiln_cg_f32(c, init), a);
  return a;
}

static LLVMValueRef get(KilnCg *c, LLVMValueRef a) { return LLVMBuildLoad2(c->b, c->f32, a, ""); }

// The position, clamped to [0, n): the runtime never passes one outside, and a
// clamped one cannot write outside the cache.
static LLVMValueRef position(KilnKernel *k, int32_t id, int64_t n) {
  KilnCg *c = k->cg;
  LLVMValueRef p = LLVMBuildSExt(c->b, kiln_cg_load(c, c->i32, kiln_cpu_ptr(k, id), i64c(c, 0)), c->i64, "");
  LLVMValueRef neg = LLVMBuildICmp(c->b, LLVMIntSLT, p, i64c(c, 0), "");
  p = LLVMBuildSelect(c->b, neg, i64c(c, 0), p, "");
  LLVMValueRef big = LLVMBuildICmp(c->b, LLVMIntSGE, p, i64c(c, n), "");
  return LLVMBuildSelect(c->b, big, i64c(c, n - 1), p, "");
}

// attention_decode: parallel over (batch, head), which own disjoint columns of the
// caches and the output. Each writes its head's k and v at position p, then the
// query attends to positions 0..p: scores (scratch [C] per (batch, head)), max,
// exp, sum, and the weighted sum of the cached values.
int64_t kiln_cpu_emit_attention_decode(KilnKernel *k) {
  KilnCg *c = k->cg;
  const KilnNode *o = k->n, *kc = &k->g->nodes[o->in[3]];
  int64_t C = kc->shape[1], D = kc->shape[2], H = o->attr.heads, dh = D / H;
  LLVMValueRef Q = kiln_cpu_ptr(k, o->in[0]), K = kiln_cpu_ptr(k, o->in[1]);
  LLVMValueRef V = kiln_cpu_ptr(k, o->in[2]), KC = kiln_cpu_ptr(k, o->in[3]);
  LLVMValueRef VC = kiln_cpu_ptr(k, o->in[4]), Y = kiln_cpu_ptr(k, k->id), S = scratch(k);
  LLVMValueRef p = position(k, o->in[5], C);
  KilnLoop bh = kiln_cg_loop_begin(c, k->lo, k->hi, "bh");
  LLVMValueRef b = LLVMBuildSDiv(c->b, bh.index, i64c(c, H), "");
  LLVMValueRef col = kiln_cg_mul(c, LLVMBuildSRem(c->b, bh.index, i64c(c, H), ""), i64c(c, dh));
  LLVMValueRef qrow = kiln_cg_add(c, kiln_cg_mul(c, b, i64c(c, D)), col);  // q, k, v, y
  LLVMValueRef cache = kiln_cg_add(c, kiln_cg_mul(c, b, i64c(c, C * D)), col);  // position 0
  LLVMValueRef srow = kiln_cg_mul(c, bh.index, i64c(c, C));
  LLVMValueRef at = kiln_cg_add(c, cache, kiln_cg_mul(c, p, i64c(c, D)));
  KilnLoop w = upto(c, i64c(c, dh), "w");
  kiln_cg_store(c, ld(c, K, kiln_cg_add(c, qrow, w.index)), KC, kiln_cg_add(c, at, w.index));
  kiln_cg_store(c, ld(c, V, kiln_cg_add(c, qrow, w.index)), VC, kiln_cg_add(c, at, w.index));
  kiln_cg_loop_end(c, &w);
  LLVMValueRef n = kiln_cg_add(c, p, i64c(c, 1));
  LLVMValueRef mx = acc(c, -INFINITY, "max"), sum = acc(c, 0, "sum"), dot = acc(c, 0, "dot");
  KilnLoop j = upto(c, n, "j");
  LLVMValueRef krow = kiln_cg_add(c, cache, kiln_cg_mul(c, j.index, i64c(c, D)));
  LLVMBuildStore(c->b, kiln_cg_f32(c, 0), dot);
  KilnLoop d = upto(c, i64c(c, dh), "d");
  LLVMValueRef qk = LLVMBuildFMul(c->b, ld(c, Q, kiln_cg_add(c, qrow, d.index)),
                                  ld(c, KC, kiln_cg_add(c, krow, d.index)), "");
  LLVMBuildStore(c->b, LLVMBuildFAdd(c->b, get(c, dot), qk, ""), dot);
  kiln_cg_loop_end(c, &d);
  LLVMValueRef s = LLVMBuildFMul(c->b, get(c, dot), kiln_cg_f32(c, 1.0 / sqrt((double)dh)), "");
  kiln_cg_store(c, s, S, kiln_cg_add(c, srow, j.index));
  LLVMValueRef m = get(c, mx);
  LLVMBuildStore(c->b, LLVMBuildSelect(c->b, LLVMBuildFCmp(c->b, LLVMRealOGT, s, m, ""), s, m, ""), mx);
  kiln_cg_loop_end(c, &j);
  LLVMValueRef mval = get(c, mx);
  KilnLoop e = upto(c, n, "e");
  LLVMValueRef si = kiln_cg_add(c, srow, e.index);
  LLVMValueRef ev = kiln_cg_exp(c, LLVMBuildFSub(c->b, ld(c, S, si), mval, ""));
  kiln_cg_store(c, ev, S, si);
  LLVMBuildStore(c->b, LLVMBuildFAdd(c->b, get(c, sum), ev, ""), sum);
  kiln_cg_loop_end(c, &e);
  LLVMValueRef inv = LLVMBuildFDiv(c->b, kiln_cg_f32(c, 1), get(c, sum), "");
  KilnLoop z = upto(c, i64c(c, dh), "z");
  kiln_cg_store(c, kiln_cg_f32(c, 0), Y, kiln_cg_add(c, qrow, z.index));
  kiln_cg_loop_end(c, &z);
  KilnLoop v = upto(c, n, "v");
  LLVMValueRef pw = LLVMBuildFMul(c->b, ld(c, S, kiln_cg_add(c, srow, v.index)), inv, "");
  LLVMValueRef vrow = kiln_cg_add(c, cache, kiln_cg_mul(c, v.index, i64c(c, D)));
  KilnLoop dd = upto(c, i64c(c, dh), "dd");
  LLVMValueRef yi = kiln_cg_add(c, qrow, dd.index);
  LLVMValueRef y = LLVMBuildFAdd(c->b, ld(c, Y, yi),
                                 LLVMBuildFMul(c->b, pw, ld(c, VC, kiln_cg_add(c, vrow, dd.index)), ""), "");
  kiln_cg_store(c, y, Y, yi);
  kiln_cg_loop_end(c, &dd);
  kiln_cg_loop_end(c, &v);
  kiln_cg_loop_end(c, &bh);
  return kc->shape[0] * H;
}

static LLVMValueRef sigmoid(KilnCg *c, LLVMValueRef x) {
  LLVMValueRef one = kiln_cg_f32(c, 1);
  LLVMValueRef e = kiln_cg_exp(c, LLVMBuildFNeg(c->b, x, ""));
  return LLVMBuildFDiv(c->b, one, LLVMBuildFAdd(c->b, one, e, ""), "");
}

// lstm_step: parallel over batch rows. h and c live in the state [2, B, H] and are
// updated there; z [4H] per row in scratch. Per time step z is complete (it reads
// the old h) before the gates overwrite h.
int64_t kiln_cpu_emit_lstm_step(KilnKernel *k) {
  KilnCg *c = k->cg;
  const KilnNode *o = k->n;
  int64_t B = o->shape[0], T = o->shape[1], H = o->shape[2];
  int64_t I = k->g->nodes[o->in[0]].shape[2];
  LLVMValueRef X = kiln_cpu_ptr(k, o->in[0]), Wi = kiln_cpu_ptr(k, o->in[1]);
  LLVMValueRef Wh = kiln_cpu_ptr(k, o->in[2]), Bv = kiln_cpu_ptr(k, o->in[3]);
  LLVMValueRef St = kiln_cpu_ptr(k, o->in[4]), Y = kiln_cpu_ptr(k, k->id), S = scratch(k);
  KilnLoop b = kiln_cg_loop_begin(c, k->lo, k->hi, "b");
  LLVMValueRef hs = kiln_cg_mul(c, b.index, i64c(c, H));
  LLVMValueRef cs = kiln_cg_add(c, hs, i64c(c, B * H));
  LLVMValueRef zs = kiln_cg_mul(c, b.index, i64c(c, 4 * H));
  KilnLoop t = upto(c, i64c(c, T), "t");
  LLVMValueRef row = kiln_cg_add(c, kiln_cg_mul(c, b.index, i64c(c, T)), t.index);
  KilnLoop zi = upto(c, i64c(c, 4 * H), "zi");
  kiln_cg_store(c, ld(c, Bv, zi.index), S, kiln_cg_add(c, zs, zi.index));
  kiln_cg_loop_end(c, &zi);
  for (int pass = 0; pass < 2; pass++) {  // z += x_t W_ih, then z += h W_hh
    LLVMValueRef W = pass ? Wh : Wi;
    KilnLoop i = upto(c, i64c(c, pass ? H : I), "i");
    LLVMValueRef xv = pass ? ld(c, St, kiln_cg_add(c, hs, i.index))
                           : ld(c, X, kiln_cg_add(c, kiln_cg_mul(c, row, i64c(c, I)), i.index));
    LLVMValueRef wrow = kiln_cg_mul(c, i.index, i64c(c, 4 * H));
    KilnLoop j = upto(c, i64c(c, 4 * H), "j");
    LLVMValueRef zj = kiln_cg_add(c, zs, j.index);
    LLVMValueRef wv = ld(c, W, kiln_cg_add(c, wrow, j.index));
    kiln_cg_store(c, LLVMBuildFAdd(c->b, ld(c, S, zj), LLVMBuildFMul(c->b, xv, wv, ""), ""), S, zj);
    kiln_cg_loop_end(c, &j);
    kiln_cg_loop_end(c, &i);
  }
  KilnLoop u = upto(c, i64c(c, H), "u");
  LLVMValueRef g4[4];
  for (int q = 0; q < 4; q++) {
    LLVMValueRef zv = ld(c, S, kiln_cg_add(c, zs, kiln_cg_add(c, u.index, i64c(c, q * H))));
    g4[q] = q == 2 ? kiln_cg_tanh(c, zv) : sigmoid(c, zv);
  }
  LLVMValueRef ci = kiln_cg_add(c, cs, u.index);
  LLVMValueRef cn = LLVMBuildFAdd(c->b, LLVMBuildFMul(c->b, g4[1], ld(c, St, ci), ""),
                                  LLVMBuildFMul(c->b, g4[0], g4[2], ""), "");
  kiln_cg_store(c, cn, St, ci);
  LLVMValueRef hn = LLVMBuildFMul(c->b, g4[3], kiln_cg_tanh(c, cn), "");
  kiln_cg_store(c, hn, St, kiln_cg_add(c, hs, u.index));
  kiln_cg_store(c, hn, Y, kiln_cg_add(c, kiln_cg_mul(c, row, i64c(c, H)), u.index));
  kiln_cg_loop_end(c, &u);
  kiln_cg_loop_end(c, &t);
  kiln_cg_loop_end(c, &b);
  return B;
}
