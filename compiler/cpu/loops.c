// Loop nests and typed memory access with the LLVM builder. Loops are built in the
// canonical rotated-free form (head with a phi, body, latch back to head) that
// LLVM's loop passes recognise and vectorize.
#include <math.h>

#include "compiler/cpu/cpu.h"

void kiln_cg_init(KilnCg *c, const char *name, LLVMTargetMachineRef tm) {
  *c = (KilnCg){0};
  c->ctx = LLVMContextCreate();
  c->mod = LLVMModuleCreateWithNameInContext(name, c->ctx);
  c->b = LLVMCreateBuilderInContext(c->ctx);
  c->f32 = LLVMFloatTypeInContext(c->ctx);
  c->i32 = LLVMInt32TypeInContext(c->ctx);
  c->i64 = LLVMInt64TypeInContext(c->ctx);
  c->i8 = LLVMInt8TypeInContext(c->ctx);
  c->ptr = LLVMPointerTypeInContext(c->ctx, 0);
  c->v = LLVMVoidTypeInContext(c->ctx);
  if (!tm) return;
  char *triple = LLVMGetTargetMachineTriple(tm);
  LLVMSetTarget(c->mod, triple);
  LLVMDisposeMessage(triple);
  LLVMTargetDataRef dl = LLVMCreateTargetDataLayout(tm);
  LLVMSetModuleDataLayout(c->mod, dl);
  LLVMDisposeTargetData(dl);
}

LLVMValueRef kiln_cg_i64(KilnCg *c, int64_t v) {
  return LLVMConstInt(c->i64, (unsigned long long)v, 1);
}

LLVMValueRef kiln_cg_i32(KilnCg *c, int64_t v) {
  return LLVMConstInt(c->i32, (unsigned long long)v, 1);
}

LLVMValueRef kiln_cg_private_const(KilnCg *c, LLVMValueRef v, const char *name) {
  LLVMValueRef gl = LLVMAddGlobal(c->mod, LLVMTypeOf(v), name);
  LLVMSetInitializer(gl, v);
  LLVMSetGlobalConstant(gl, 1);
  LLVMSetLinkage(gl, LLVMPrivateLinkage);
  return gl;
}

LLVMValueRef kiln_cg_f32(KilnCg *c, double v) { return LLVMConstReal(c->f32, v); }

KilnLoop kiln_cg_loop_begin(KilnCg *c, LLVMValueRef lo, LLVMValueRef hi, const char *name) {
  KilnLoop l;
  LLVMBasicBlockRef pre = LLVMGetInsertBlock(c->b);
  l.head = LLVMAppendBasicBlockInContext(c->ctx, c->fn, name);
  l.body = LLVMAppendBasicBlockInContext(c->ctx, c->fn, "body");
  l.exit = LLVMAppendBasicBlockInContext(c->ctx, c->fn, "exit");
  LLVMBuildBr(c->b, l.head);
  LLVMPositionBuilderAtEnd(c->b, l.head);
  l.phi = LLVMBuildPhi(c->b, c->i64, name);
  LLVMAddIncoming(l.phi, &lo, &pre, 1);
  LLVMValueRef cond = LLVMBuildICmp(c->b, LLVMIntSLT, l.phi, hi, "cond");
  LLVMBuildCondBr(c->b, cond, l.body, l.exit);
  LLVMPositionBuilderAtEnd(c->b, l.body);
  l.index = l.phi;
  return l;
}

void kiln_cg_loop_end(KilnCg *c, KilnLoop *l) {
  LLVMValueRef next = LLVMBuildNSWAdd(c->b, l->phi, kiln_cg_i64(c, 1), "next");
  LLVMBasicBlockRef latch = LLVMGetInsertBlock(c->b);
  LLVMAddIncoming(l->phi, &next, &latch, 1);
  LLVMBuildBr(c->b, l->head);
  LLVMPositionBuilderAtEnd(c->b, l->exit);
}

LLVMValueRef kiln_cg_gep(KilnCg *c, LLVMTypeRef elem, LLVMValueRef base, LLVMValueRef index) {
  return LLVMBuildInBoundsGEP2(c->b, elem, base, &index, 1, "p");
}

LLVMValueRef kiln_cg_load(KilnCg *c, LLVMTypeRef t, LLVMValueRef base, LLVMValueRef index) {
  return LLVMBuildLoad2(c->b, t, kiln_cg_gep(c, t, base, index), "v");
}

void kiln_cg_store(KilnCg *c, LLVMValueRef v, LLVMValueRef base, LLVMValueRef index) {
  LLVMBuildStore(c->b, v, kiln_cg_gep(c, LLVMTypeOf(v), base, index));
}

// Math functions of the argument's type: f32 or f64.
static LLVMValueRef callee(KilnCg *c, const char *name, LLVMTypeRef t, int nargs,
                           LLVMTypeRef *out_type) {
  LLVMTypeRef params[2] = {t, t};
  *out_type = LLVMFunctionType(t, params, (unsigned)nargs, 0);
  LLVMValueRef f = LLVMGetNamedFunction(c->mod, name);
  if (!f) f = LLVMAddFunction(c->mod, name, *out_type);
  return f;
}

LLVMValueRef kiln_cg_call1(KilnCg *c, const char *name, LLVMValueRef x) {
  LLVMTypeRef t;
  LLVMValueRef f = callee(c, name, LLVMTypeOf(x), 1, &t);
  return LLVMBuildCall2(c->b, t, f, &x, 1, "");
}

LLVMValueRef kiln_cg_call2(KilnCg *c, const char *name, LLVMValueRef x, LLVMValueRef y) {
  LLVMTypeRef t;
  LLVMValueRef f = callee(c, name, LLVMTypeOf(x), 2, &t);
  LLVMValueRef args[2] = {x, y};
  return LLVMBuildCall2(c->b, t, f, args, 2, "");
}

LLVMValueRef kiln_cg_add(KilnCg *c, LLVMValueRef a, LLVMValueRef b) {
  return LLVMBuildNSWAdd(c->b, a, b, "");
}

LLVMValueRef kiln_cg_mul(KilnCg *c, LLVMValueRef a, LLVMValueRef b) {
  return LLVMBuildNSWMul(c->b, a, b, "");
}

// Allocas go in the entry block so mem2reg promotes them.
LLVMValueRef kiln_cg_alloca(KilnCg *c, LLVMTypeRef t, const char *name) {
  LLVMBasicBlockRef cur = LLVMGetInsertBlock(c->b);
  LLVMBasicBlockRef entry = LLVMGetEntryBasicBlock(c->fn);
  LLVMValueRef first = LLVMGetFirstInstruction(entry);
  if (first) LLVMPositionBuilderBefore(c->b, first);
  else LLVMPositionBuilderAtEnd(c->b, entry);
  LLVMValueRef v = LLVMBuildAlloca(c->b, t, name);
  LLVMPositionBuilderAtEnd(c->b, cur);
  return v;
}

//
// exp and tanh built from arithmetic, so loops that use them vectorize (a call to
// libm's expf or tanhf keeps a loop scalar). Cephes' single-precision methods:
// both are within a few ulp of libm over the whole range.
//
static LLVMValueRef fmadd(KilnCg *c, LLVMValueRef a, LLVMValueRef b, double k) {
  return LLVMBuildFAdd(c->b, LLVMBuildFMul(c->b, a, b, ""), kiln_cg_f32(c, k), "");
}

static LLVMValueRef select_f(KilnCg *c, LLVMRealPredicate p, LLVMValueRef a, double k,
                             LLVMValueRef t, LLVMValueRef f) {
  return LLVMBuildSelect(c->b, LLVMBuildFCmp(c->b, p, a, kiln_cg_f32(c, k), ""), t, f, "");
}

// 2^n for an integer-valued float n in [-63, 64]: the exponent bits directly.
static LLVMValueRef pow2(KilnCg *c, LLVMValueRef n) {
  LLVMValueRef e = LLVMBuildAdd(c->b, LLVMBuildFPToSI(c->b, n, c->i32, ""),
                                LLVMConstInt(c->i32, 127, 0), "");
  return LLVMBuildBitCast(c->b, LLVMBuildShl(c->b, e, LLVMConstInt(c->i32, 23, 0), ""), c->f32, "");
}

// exp(x) = 2^n exp(r), n = round(x / ln 2), r = x - n ln 2 (ln 2 in two parts so r
// is exact), exp(r) by a degree-7 polynomial. 2^n is applied in two halves so
// n = 128 (x near 88.7) and n = -126 stay representable. Beyond the f32 range:
// inf above, 0 below; NaN stays NaN.
LLVMValueRef kiln_cg_exp(KilnCg *c, LLVMValueRef x) {
  LLVMValueRef xc = select_f(c, LLVMRealOGT, x, 88.7228, kiln_cg_f32(c, 88.7228), x);
  xc = select_f(c, LLVMRealOLT, xc, -87.3365, kiln_cg_f32(c, -87.3365), xc);
  LLVMValueRef n = kiln_cg_call1(c, "llvm.floor.f32", fmadd(c, xc, kiln_cg_f32(c, 1.44269504088896341), 0.5));
  LLVMValueRef r = LLVMBuildFSub(c->b, xc, LLVMBuildFMul(c->b, n, kiln_cg_f32(c, 0.693359375), ""), "");
  r = LLVMBuildFSub(c->b, r, LLVMBuildFMul(c->b, n, kiln_cg_f32(c, -2.12194440e-4), ""), "");
  LLVMValueRef p = kiln_cg_f32(c, 1.9875691500e-4);
  static const double coef[] = {1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1,
                                5.0000001201e-1};
  for (int i = 0; i < 5; i++) p = fmadd(c, p, r, coef[i]);
  LLVMValueRef r2 = LLVMBuildFMul(c->b, r, r, "");
  p = LLVMBuildFAdd(c->b, LLVMBuildFAdd(c->b, LLVMBuildFMul(c->b, p, r2, ""), r, ""), kiln_cg_f32(c, 1), "");
  LLVMValueRef half = kiln_cg_call1(c, "llvm.floor.f32", LLVMBuildFMul(c->b, n, kiln_cg_f32(c, 0.5), ""));
  LLVMValueRef y = LLVMBuildFMul(c->b, LLVMBuildFMul(c->b, p, pow2(c, half), ""),
                                 pow2(c, LLVMBuildFSub(c->b, n, half, "")), "");
  y = select_f(c, LLVMRealOGT, x, 88.7228, kiln_cg_f32(c, INFINITY), y);
  y = select_f(c, LLVMRealOLT, x, -87.3365, kiln_cg_f32(c, 0), y);
  return LLVMBuildSelect(c->b, LLVMBuildFCmp(c->b, LLVMRealUNO, x, x, ""), x, y, "");
}

// tanh: an odd polynomial for |x| < 0.625, else (1 - e) / (1 + e) with
// e = exp(-2|x|), signed; both are computed and one is selected, branch-free.
LLVMValueRef kiln_cg_tanh(KilnCg *c, LLVMValueRef x) {
  LLVMValueRef ax = kiln_cg_call1(c, "llvm.fabs.f32", x);
  LLVMValueRef e = kiln_cg_exp(c, LLVMBuildFMul(c->b, ax, kiln_cg_f32(c, -2), ""));
  LLVMValueRef big = LLVMBuildFDiv(c->b, LLVMBuildFSub(c->b, kiln_cg_f32(c, 1), e, ""),
                                   LLVMBuildFAdd(c->b, kiln_cg_f32(c, 1), e, ""), "");
  big = select_f(c, LLVMRealOLT, x, 0, LLVMBuildFNeg(c->b, big, ""), big);
  LLVMValueRef z = LLVMBuildFMul(c->b, x, x, ""), p = kiln_cg_f32(c, -5.70498872745e-3);
  static const double coef[] = {2.06390887954e-2, -5.37397155531e-2, 1.33314422036e-1,
                                -3.33332819422e-1};
  for (int i = 0; i < 4; i++) p = fmadd(c, p, z, coef[i]);
  LLVMValueRef small = LLVMBuildFAdd(c->b, LLVMBuildFMul(c->b, LLVMBuildFMul(c->b, p, z, ""), x, ""), x, "");
  return select_f(c, LLVMRealOLT, ax, 0.625, small, big);
}
