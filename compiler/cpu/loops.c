// Loop nests and typed memory access with the LLVM builder. Loops are built in the
// canonical rotated-free form (head with a phi, body, latch back to head) that
// LLVM's loop passes recognise and vectorize.
#include "compiler/cpu/cpu.h"

LLVMValueRef kiln_cg_i64(KilnCg *c, int64_t v) {
  return LLVMConstInt(c->i64, (unsigned long long)v, 1);
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
