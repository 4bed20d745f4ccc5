// Training kernels: the global gradient norm (for clipping and the log) and one
// optimizer update per parameter. Hyper-parameters other than the learning rate
// are constants in the code; the learning rate, the clipping scale and Adam's
// bias corrections come from the step header the runtime writes each step.
#include <math.h>
#include <stddef.h>

#include "compiler/cpu/cpu.h"
#include "include/kiln/abi.h"

static LLVMValueRef header_f32(KilnCg *c, LLVMValueRef arena, size_t offset) {
  return LLVMBuildLoad2(c->b, c->f32, kiln_cg_gep(c, c->i8, arena, kiln_cg_i64(c, (int64_t)offset)), "");
}

static LLVMValueRef new_kernel(KilnCg *c, const char *name) {
  LLVMTypeRef params[] = {c->ptr, c->ptr, c->i64, c->i64};
  LLVMValueRef fn = LLVMAddFunction(c->mod, name, LLVMFunctionType(c->v, params, 4, 0));
  LLVMSetLinkage(fn, LLVMInternalLinkage);
  c->fn = fn;
  LLVMPositionBuilderAtEnd(c->b, LLVMAppendBasicBlockInContext(c->ctx, fn, "entry"));
  return fn;
}

static LLVMValueRef at(KilnCg *c, LLVMValueRef base, int64_t offset) {
  return kiln_cg_gep(c, c->i8, base, kiln_cg_i64(c, offset));
}

// Squares of n floats at base, added to acc (8 doubles, one sum per lane: lane l
// takes the elements at l mod 8) and, the last n mod 8, to tail (one double). The
// lanes are independent chains, so the loop runs at load speed where one serial
// double sum waited out an add's latency per element (about 1 ns: 8% of the MLP
// 784 step).
static void sum_squares(KilnCg *c, LLVMValueRef base, int64_t n, LLVMValueRef acc,
                        LLVMValueRef tail) {
  LLVMTypeRef f64 = LLVMDoubleTypeInContext(c->ctx);
  LLVMTypeRef v8 = LLVMVectorType(c->f32, 8), d8 = LLVMVectorType(f64, 8);
  KilnLoop l = kiln_cg_loop_begin(c, kiln_cg_i64(c, 0), kiln_cg_i64(c, n / 8), "e8");
  LLVMValueRef p8 = kiln_cg_gep(c, c->f32, base, kiln_cg_mul(c, l.index, kiln_cg_i64(c, 8)));
  LLVMValueRef x = LLVMBuildLoad2(c->b, v8, p8, "");
  LLVMSetAlignment(x, 4);
  LLVMValueRef d = LLVMBuildFPExt(c->b, x, d8, "");
  LLVMBuildStore(c->b, LLVMBuildFAdd(c->b, LLVMBuildLoad2(c->b, d8, acc, ""),
                                     LLVMBuildFMul(c->b, d, d, ""), ""), acc);
  kiln_cg_loop_end(c, &l);
  KilnLoop r = kiln_cg_loop_begin(c, kiln_cg_i64(c, n / 8 * 8), kiln_cg_i64(c, n), "e");
  LLVMValueRef v = LLVMBuildFPExt(c->b, kiln_cg_load(c, c->f32, base, r.index), f64, "");
  LLVMBuildStore(c->b, LLVMBuildFAdd(c->b, LLVMBuildLoad2(c->b, f64, tail, ""),
                                     LLVMBuildFMul(c->b, v, v, ""), ""), tail);
  kiln_cg_loop_end(c, &r);
}

// norm = sqrt(sum of every gradient element squared), accumulated in double in one
// thread (a few million adds: microseconds next to the step). The clipping scale
// is PyTorch's clip_grad_norm_: min(1, clip / (norm + 1e-6)).
LLVMValueRef kiln_cpu_norm_kernel(KilnCg *c, const KilnGraph *g, const KilnPlan *p, double clip) {
  LLVMValueRef fn = new_kernel(c, "kiln_grad_norm");
  LLVMValueRef a = LLVMGetParam(fn, 1);
  LLVMTypeRef f64 = LLVMDoubleTypeInContext(c->ctx), d8 = LLVMVectorType(f64, 8);
  LLVMValueRef acc = kiln_cg_alloca(c, d8, "acc"), tail = kiln_cg_alloca(c, f64, "tail");
  LLVMBuildStore(c->b, LLVMConstNull(d8), acc);
  LLVMBuildStore(c->b, LLVMConstReal(f64, 0), tail);
  for (int i = 0; i < g->nforward; i++) {
    if (g->grads[i] < 0) continue;
    int32_t gi = g->grads[i];
    sum_squares(c, at(c, a, p->offset[gi]), kiln_node_numel(&g->nodes[gi]), acc, tail);
  }
  // The lanes, then the tail, added in a fixed order.
  LLVMValueRef lanes = LLVMBuildLoad2(c->b, d8, acc, ""), sum = LLVMBuildLoad2(c->b, f64, tail, "");
  for (int l = 0; l < 8; l++)
    sum = LLVMBuildFAdd(c->b, sum, LLVMBuildExtractElement(c->b, lanes, kiln_cg_i32(c, l), ""), "");
  LLVMValueRef norm = kiln_cg_call1(c, "llvm.sqrt.f64", sum);
  LLVMBuildStore(c->b, norm, at(c, a, offsetof(KilnStepHeader, grad_norm)));
  LLVMValueRef scale = LLVMConstReal(f64, 1);
  if (clip > 0) {
    LLVMValueRef s = LLVMBuildFDiv(c->b, LLVMConstReal(f64, clip),
                                   LLVMBuildFAdd(c->b, norm, LLVMConstReal(f64, 1e-6), ""), "");
    LLVMValueRef lt = LLVMBuildFCmp(c->b, LLVMRealOLT, s, LLVMConstReal(f64, 1), "");
    scale = LLVMBuildSelect(c->b, lt, s, LLVMConstReal(f64, 1), "");
  }
  LLVMBuildStore(c->b, LLVMBuildFPTrunc(c->b, scale, c->f32, ""),
                 at(c, a, offsetof(KilnStepHeader, grad_scale)));
  LLVMBuildRetVoid(c->b);
  return fn;
}

static LLVMValueRef fmul(KilnCg *c, LLVMValueRef x, LLVMValueRef y) { return LLVMBuildFMul(c->b, x, y, ""); }
static LLVMValueRef fadd(KilnCg *c, LLVMValueRef x, LLVMValueRef y) { return LLVMBuildFAdd(c->b, x, y, ""); }
static LLVMValueRef k32(KilnCg *c, double v) { return kiln_cg_f32(c, v); }

typedef struct {
  const KilnGraph *g;
  const KilnPlan *p;
  int32_t id;
  const KilnTrainDesc *t;
} UpdateCtx;

// One parameter's update over elements [lo, hi), as PyTorch's optimizers define it:
//   g = grad * scale (+ wd * p for sgd and adam: L2 in the gradient)
//   sgd:   v = mu v + g;  g = nesterov ? g + mu v : v  (when mu > 0);  p -= lr g
//   adam:  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
//          p -= (lr / bias1) m / (sqrt(v) / sqrt(bias2) + eps)   (adamw: also p -= lr wd p)
// Adam's form is PyTorch's, with lr / bias1, 1 / sqrt(bias2) and lr wd the step's
// scalars: one division and one square root per element, where dividing m and v by
// the corrections took three divisions, which share the square root's unit (the
// update was half divider-bound).
// Its buffers are body parameters (kiln_cpu_shared_kernel): the parameters of a
// model share one body.
static int64_t update_body(KilnCg *c, KilnBody *b, void *ctx) {
  const UpdateCtx *x = ctx;
  const KilnGraph *g = x->g;
  const KilnPlan *p = x->p;
  const KilnTrainDesc *t = x->t;
  int32_t id = x->id;
  LLVMValueRef a = b->a;
  LLVMValueRef lr = header_f32(c, a, offsetof(KilnStepHeader, lr));
  LLVMValueRef scale = header_f32(c, a, offsetof(KilnStepHeader, grad_scale));
  const KilnNode *pn = &g->nodes[id];
  int64_t size = kiln_node_numel(pn) * 4, bytes = (size + 63) & ~(int64_t)63;
  LLVMValueRef P = kiln_cpu_body_ptr(c, b, KILN_LOC_WEIGHTS, p->offset[id], size);
  LLVMValueRef G = kiln_cpu_body_ptr(c, b, KILN_LOC_ARENA, p->offset[g->grads[id]], size);
  LLVMValueRef S0 = p->nstate > 0 ? kiln_cpu_body_ptr(c, b, KILN_LOC_WEIGHTS, p->state[id], size) : NULL;
  LLVMValueRef S1 = p->nstate > 1 ? kiln_cpu_body_ptr(c, b, KILN_LOC_WEIGHTS, p->state[id] + bytes, size) : NULL;
  LLVMValueRef step = NULL, inv_sqrt_b2 = NULL, decay = NULL;
  if (t->optimizer != KILN_ABI_SGD) {  // the step's scalars, in double, each rounded once
    LLVMTypeRef f64 = LLVMDoubleTypeInContext(c->ctx);
    LLVMValueRef b1c = LLVMBuildFPExt(c->b, header_f32(c, a, offsetof(KilnStepHeader, bias1)), f64, "");
    LLVMValueRef b2c = LLVMBuildFPExt(c->b, header_f32(c, a, offsetof(KilnStepHeader, bias2)), f64, "");
    LLVMValueRef lr64 = LLVMBuildFPExt(c->b, lr, f64, "");
    step = LLVMBuildFPTrunc(c->b, LLVMBuildFDiv(c->b, lr64, b1c, ""), c->f32, "");
    LLVMValueRef rs = LLVMBuildFDiv(c->b, LLVMConstReal(f64, 1), kiln_cg_call1(c, "llvm.sqrt.f64", b2c), "");
    inv_sqrt_b2 = LLVMBuildFPTrunc(c->b, rs, c->f32, "");
    LLVMValueRef wd = LLVMBuildFMul(c->b, lr64, LLVMConstReal(f64, t->weight_decay), "");
    decay = LLVMBuildFPTrunc(c->b, wd, c->f32, "");
  }
  KilnLoop l = kiln_cg_loop_begin(c, b->lo, b->hi, "e");
  LLVMValueRef pv = kiln_cg_load(c, c->f32, P, l.index);
  LLVMValueRef gv = fmul(c, kiln_cg_load(c, c->f32, G, l.index), scale);
  bool l2 = t->weight_decay > 0 && t->optimizer != KILN_ABI_ADAMW;
  if (l2) gv = fadd(c, gv, fmul(c, k32(c, t->weight_decay), pv));
  LLVMValueRef upd;
  if (t->optimizer == KILN_ABI_SGD) {
    upd = gv;
    if (t->momentum > 0) {
      LLVMValueRef v = fadd(c, fmul(c, k32(c, t->momentum), kiln_cg_load(c, c->f32, S0, l.index)), gv);
      kiln_cg_store(c, v, S0, l.index);
      upd = t->nesterov ? fadd(c, gv, fmul(c, k32(c, t->momentum), v)) : v;
    }
  } else {
    LLVMValueRef m = fadd(c, fmul(c, k32(c, t->beta1), kiln_cg_load(c, c->f32, S0, l.index)),
                          fmul(c, k32(c, 1 - t->beta1), gv));
    LLVMValueRef v = fadd(c, fmul(c, k32(c, t->beta2), kiln_cg_load(c, c->f32, S1, l.index)),
                          fmul(c, k32(c, 1 - t->beta2), fmul(c, gv, gv)));
    kiln_cg_store(c, m, S0, l.index);
    kiln_cg_store(c, v, S1, l.index);
    LLVMValueRef den = fadd(c, fmul(c, kiln_cg_call1(c, "llvm.sqrt.f32", v), inv_sqrt_b2),
                            k32(c, t->eps));
    upd = fmul(c, step, LLVMBuildFDiv(c->b, m, den, ""));  // lr times the update
    if (t->optimizer == KILN_ABI_ADAMW && t->weight_decay > 0) upd = fadd(c, upd, fmul(c, decay, pv));
  }
  if (t->optimizer == KILN_ABI_SGD) upd = fmul(c, lr, upd);
  kiln_cg_store(c, LLVMBuildFSub(c->b, pv, upd, ""), P, l.index);
  kiln_cg_loop_end(c, &l);
  return 0;
}

LLVMValueRef kiln_cpu_update_kernel(KilnCg *c, const KilnGraph *g, const KilnPlan *p, int32_t id,
                                    const KilnTrainDesc *t) {
  char name[64];
  snprintf(name, sizeof name, "kiln_update_%d", id);
  UpdateCtx x = {g, p, id, t};
  int64_t unused;
  return kiln_cpu_shared_kernel(c, name, update_body, &x, &unused);
}

// The update's work per parameter element, for the profiler: FLOPs as update_body
// writes them (a division or square root counts one), and the f32 tensors it
// streams: the gradient read, the parameter and each state tensor read and written.
void kiln_cpu_update_work(const KilnTrainDesc *t, int nstate, int64_t *out_flops,
                          int64_t *out_tensors) {
  int64_t f = 1 + 2;                                   // g * scale; p -= lr * upd
  if (t->weight_decay > 0) f += 2;                     // L2 in g, or adamw's decay
  if (t->optimizer == KILN_ABI_SGD) f += t->momentum > 0 ? (t->nesterov ? 4 : 2) : 0;
  else f += 3 + 4 + 5;                                 // m; v; bias corrections, sqrt, eps
  *out_flops = f;
  *out_tensors = 3 + 2 * (int64_t)nstate;
}
