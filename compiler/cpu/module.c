// The model's LLVM module: every kernel, the forward step that runs them through
// the runtime's thread pool, the KilnModelDesc constant (include/kiln/abi.h) that
// tells the runtime everything else, and, for libraries, the prefixed C API.
#include <stdlib.h>
#include <string.h>

#include "compiler/cpu/cpu.h"
#include "include/kiln/abi.h"

typedef struct {
  LLVMTypeRef tensor, desc, kernel_fn, step_fn, parfor_fn;
} Types;

static void make_types(KilnCg *c, Types *t) {
  LLVMTypeRef shape = LLVMArrayType(c->i64, KILN_ABI_MAX_RANK);
  LLVMTypeRef f64 = LLVMDoubleTypeInContext(c->ctx);
  // Field for field as KilnTensorDesc and KilnModelDesc; the C layout rules and
  // LLVM's agree on x86-64 and AArch64 for these types.
  LLVMTypeRef tensor[] = {c->ptr, c->i32, c->i32, shape, c->i64, c->i64,
                          c->i32, c->i32, f64,   f64,   c->i64};
  t->tensor = LLVMStructCreateNamed(c->ctx, "KilnTensorDesc");
  LLVMStructSetBody(t->tensor, tensor, 11, 0);
  LLVMTypeRef desc[] = {c->i32, c->i32, c->ptr, c->ptr, c->ptr, c->i64, c->i64, c->i64, c->i64,
                        c->i64, c->i64, c->i32, c->i32, c->i32, c->i32, c->ptr, c->ptr, c->ptr, c->ptr};
  t->desc = LLVMStructCreateNamed(c->ctx, "KilnModelDesc");
  LLVMStructSetBody(t->desc, desc, 19, 0);
  LLVMTypeRef kp[] = {c->ptr, c->ptr, c->i64, c->i64};
  t->kernel_fn = LLVMFunctionType(c->v, kp, 4, 0);
  LLVMTypeRef sp[] = {c->ptr, c->ptr, c->ptr};
  t->step_fn = LLVMFunctionType(c->v, sp, 3, 0);
  LLVMTypeRef pp[] = {c->ptr, c->ptr, c->ptr, c->ptr, c->i64, c->i64};
  t->parfor_fn = LLVMFunctionType(c->v, pp, 6, 0);
}

static LLVMValueRef cstring(KilnCg *c, const char *s, const char *name) {
  LLVMValueRef str = LLVMConstStringInContext(c->ctx, s, (unsigned)strlen(s), 0);
  LLVMValueRef g = LLVMAddGlobal(c->mod, LLVMTypeOf(str), name);
  LLVMSetInitializer(g, str);
  LLVMSetGlobalConstant(g, 1);
  LLVMSetLinkage(g, LLVMPrivateLinkage);
  LLVMSetUnnamedAddress(g, LLVMGlobalUnnamedAddr);
  return g;
}

static LLVMValueRef i32c(KilnCg *c, int64_t v) { return LLVMConstInt(c->i32, (unsigned long long)v, 1); }

// The smallest index bound on an i32 input: rows of an embedding table it indexes,
// or classes of a cross-entropy it labels. 0 when it indexes nothing.
static int64_t index_bound(const KilnGraph *g, int32_t id) {
  int64_t bound = 0;
  for (int i = 0; i < g->nnodes; i++) {
    const KilnNode *n = &g->nodes[i];
    int64_t b = 0;
    if (n->op == KILN_OP_EMBEDDING && n->in[0] == id) b = g->nodes[n->in[1]].shape[0];
    if (n->op == KILN_OP_CROSS_ENTROPY && n->in[1] == id) {
      const KilnNode *x = &g->nodes[n->in[0]];
      b = x->shape[x->rank - 1];
    }
    if (b && (!bound || b < bound)) bound = b;
  }
  return bound;
}

static LLVMValueRef tensor_desc(KilnCg *c, const Types *t, const KilnGraph *g, const KilnPlan *p,
                                int32_t id) {
  const KilnNode *n = &g->nodes[id];
  LLVMTypeRef f64 = LLVMDoubleTypeInContext(c->ctx);
  LLVMValueRef shape[KILN_ABI_MAX_RANK];
  for (int d = 0; d < KILN_ABI_MAX_RANK; d++) shape[d] = kiln_cg_i64(c, d < n->rank ? n->shape[d] : 0);
  bool param = n->op == KILN_OP_PARAM;
  LLVMValueRef f[] = {
      cstring(c, n->name, "name"), i32c(c, n->dtype == KILN_F32 ? KILN_ABI_F32 : KILN_ABI_I32),
      i32c(c, n->rank), LLVMConstArray(c->i64, shape, KILN_ABI_MAX_RANK),
      kiln_cg_i64(c, p->offset[id]), kiln_cg_i64(c, kiln_node_numel(n) * 4),
      i32c(c, param ? (int)n->attr.init.kind : 0), i32c(c, p->live[id] ? KILN_ABI_LIVE : 0),
      LLVMConstReal(f64, param ? n->attr.init.a : 0), LLVMConstReal(f64, param ? n->attr.init.b : 0),
      kiln_cg_i64(c, n->dtype == KILN_I32 ? index_bound(g, id) : 0)};
  return LLVMConstNamedStruct(t->tensor, f, 11);
}

static LLVMValueRef tensor_array(KilnCg *c, const Types *t, const KilnGraph *g, const KilnPlan *p,
                                 const int32_t *ids, int n, const char *name) {
  LLVMValueRef *v = calloc((size_t)(n ? n : 1), sizeof *v);
  for (int i = 0; i < n; i++) v[i] = tensor_desc(c, t, g, p, ids[i]);
  LLVMValueRef arr = LLVMConstArray(t->tensor, v, (unsigned)n);
  free(v);
  LLVMValueRef gl = LLVMAddGlobal(c->mod, LLVMTypeOf(arr), name);
  LLVMSetInitializer(gl, arr);
  LLVMSetGlobalConstant(gl, 1);
  LLVMSetLinkage(gl, LLVMPrivateLinkage);
  return gl;
}

// forward(w, a, rt): constants into the arena, then every kernel in order.
static LLVMValueRef build_forward(KilnCg *c, const Types *t, const KilnGraph *g, const KilnPlan *p,
                                  int *out_nkernels) {
  int nk = 0;
  LLVMValueRef *kern = calloc((size_t)g->nnodes, sizeof *kern);
  int64_t *iters = calloc((size_t)g->nnodes, sizeof *iters), *cost = calloc((size_t)g->nnodes, sizeof *cost);
  for (int i = 0; i < g->nnodes; i++)
    if (p->live[i] && kiln_op(g->nodes[i].op)->fuse != KILN_FUSE_SOURCE)
      kern[i] = kiln_cpu_kernel(c, g, p, i, &iters[i], &cost[i]), nk++;
  LLVMValueRef fn = LLVMAddFunction(c->mod, "kiln_forward", t->step_fn);
  LLVMSetLinkage(fn, LLVMInternalLinkage);
  c->fn = fn;
  LLVMPositionBuilderAtEnd(c->b, LLVMAppendBasicBlockInContext(c->ctx, fn, "entry"));
  LLVMValueRef w = LLVMGetParam(fn, 0), a = LLVMGetParam(fn, 1), rt = LLVMGetParam(fn, 2);
  LLVMValueRef parfor = LLVMAddFunction(c->mod, "kiln_rt_parallel_for", t->parfor_fn);
  for (int i = 0; i < g->nnodes; i++) {
    const KilnNode *n = &g->nodes[i];
    if (n->op == KILN_OP_CONST && p->live[i]) {
      LLVMValueRef at = kiln_cg_gep(c, c->i8, a, kiln_cg_i64(c, p->offset[i]));
      LLVMBuildStore(c->b, kiln_cg_f32(c, n->attr.value), at);
    }
    if (!kern[i]) continue;
    LLVMValueRef args[] = {rt, kern[i], w, a, kiln_cg_i64(c, iters[i]), kiln_cg_i64(c, cost[i])};
    LLVMBuildCall2(c->b, t->parfor_fn, parfor, args, 6, "");
  }
  LLVMBuildRetVoid(c->b);
  free(kern);
  free(iters);
  free(cost);
  *out_nkernels = nk;
  return fn;
}

static int64_t batch_of(const KilnGraph *g, const int32_t *inputs, int n) {
  for (int i = 0; i < n; i++)
    if (g->nodes[inputs[i]].rank > 0) return g->nodes[inputs[i]].shape[0];
  return 1;
}

// A library function NAME_SUFFIX that forwards its arguments to a runtime function,
// inserting the descriptor first: NAME_create(t) -> kiln_lib_create(&desc, t).
static void wrapper(KilnCg *c, const char *model, const char *suffix, const char *target,
                    LLVMTypeRef ret, LLVMTypeRef *params, unsigned n, LLVMValueRef desc) {
  char name[256];
  snprintf(name, sizeof name, "%s_%s", model, suffix);
  LLVMValueRef fn = LLVMAddFunction(c->mod, name, LLVMFunctionType(ret, params, n, 0));
  LLVMTypeRef tp[8] = {c->ptr};
  for (unsigned i = 0; i < n; i++) tp[i + 1] = params[i];
  LLVMTypeRef tt = LLVMFunctionType(ret, tp, n + 1, 0);
  LLVMValueRef callee = LLVMGetNamedFunction(c->mod, target);
  if (!callee) callee = LLVMAddFunction(c->mod, target, tt);
  LLVMPositionBuilderAtEnd(c->b, LLVMAppendBasicBlockInContext(c->ctx, fn, "entry"));
  LLVMValueRef args[8] = {desc};
  for (unsigned i = 0; i < n; i++) args[i + 1] = LLVMGetParam(fn, i);
  LLVMValueRef r = LLVMBuildCall2(c->b, tt, callee, args, n + 1, "");
  if (LLVMGetTypeKind(ret) == LLVMVoidTypeKind) LLVMBuildRetVoid(c->b);
  else LLVMBuildRet(c->b, r);
}

// NAME_forward(ctx, in0, ..., out0, ...): gathers the pointers into two arrays and
// calls kiln_lib_forward(ctx, ins, outs).
static void forward_wrapper(KilnCg *c, const char *model, int nin, int nout) {
  int n = 1 + nin + nout;
  LLVMTypeRef *params = calloc((size_t)n, sizeof *params);
  for (int i = 0; i < n; i++) params[i] = c->ptr;
  char name[256];
  snprintf(name, sizeof name, "%s_forward", model);
  LLVMValueRef fn = LLVMAddFunction(c->mod, name, LLVMFunctionType(c->i32, params, (unsigned)n, 0));
  c->fn = fn;
  LLVMPositionBuilderAtEnd(c->b, LLVMAppendBasicBlockInContext(c->ctx, fn, "entry"));
  LLVMTypeRef ai = LLVMArrayType(c->ptr, (unsigned)(nin ? nin : 1));
  LLVMTypeRef ao = LLVMArrayType(c->ptr, (unsigned)(nout ? nout : 1));
  LLVMValueRef ins = kiln_cg_alloca(c, ai, "ins"), outs = kiln_cg_alloca(c, ao, "outs");
  for (int i = 0; i < nin; i++)
    LLVMBuildStore(c->b, LLVMGetParam(fn, (unsigned)(1 + i)), kiln_cg_gep(c, c->ptr, ins, kiln_cg_i64(c, i)));
  for (int i = 0; i < nout; i++)
    LLVMBuildStore(c->b, LLVMGetParam(fn, (unsigned)(1 + nin + i)), kiln_cg_gep(c, c->ptr, outs, kiln_cg_i64(c, i)));
  LLVMTypeRef tp[] = {c->ptr, c->ptr, c->ptr};
  LLVMTypeRef tt = LLVMFunctionType(c->i32, tp, 3, 0);
  LLVMValueRef callee = LLVMAddFunction(c->mod, "kiln_lib_forward", tt);
  LLVMValueRef args[] = {LLVMGetParam(fn, 0), ins, outs};
  LLVMBuildRet(c->b, LLVMBuildCall2(c->b, tt, callee, args, 3, ""));
  free(params);
}

static void library_api(KilnCg *c, const KilnGraph *g, const KilnPlan *p, const int32_t *inputs,
                        int ninputs, LLVMValueRef desc) {
  const char *m = g->name;
  LLVMTypeRef ptr1[] = {c->ptr}, ptr2[] = {c->ptr, c->ptr}, i32v[] = {c->i32};
  wrapper(c, m, "create", "kiln_lib_create", c->ptr, i32v, 1, desc);
  wrapper(c, m, "destroy", "kiln_lib_destroy", c->v, ptr1, 1, desc);
  wrapper(c, m, "load_weights", "kiln_lib_load", c->i32, ptr2, 2, desc);
  wrapper(c, m, "save_weights", "kiln_lib_save", c->i32, ptr2, 2, desc);
  wrapper(c, m, "last_error", "kiln_lib_last_error", c->ptr, ptr1, 1, desc);
  int live = 0;
  for (int i = 0; i < ninputs; i++) live += p->live[inputs[i]];
  forward_wrapper(c, m, live, g->noutputs);
}

void kiln_cpu_module(KilnCg *c, const KilnGraph *g, const KilnPlan *p, const KilnModuleOpts *o) {
  c->ctx = LLVMContextCreate();
  c->mod = LLVMModuleCreateWithNameInContext(g->name, c->ctx);
  c->b = LLVMCreateBuilderInContext(c->ctx);
  c->f32 = LLVMFloatTypeInContext(c->ctx);
  c->i32 = LLVMInt32TypeInContext(c->ctx);
  c->i64 = LLVMInt64TypeInContext(c->ctx);
  c->i8 = LLVMInt8TypeInContext(c->ctx);
  c->ptr = LLVMPointerTypeInContext(c->ctx, 0);
  c->v = LLVMVoidTypeInContext(c->ctx);
  if (o->tm) {
    char *triple = LLVMGetTargetMachineTriple(o->tm);
    LLVMSetTarget(c->mod, triple);
    LLVMDisposeMessage(triple);
    LLVMTargetDataRef dl = LLVMCreateTargetDataLayout(o->tm);
    LLVMSetModuleDataLayout(c->mod, dl);
    LLVMDisposeTargetData(dl);
  }
  Types t;
  make_types(c, &t);
  int nk = 0;
  LLVMValueRef fwd = build_forward(c, &t, g, p, &nk);

  int np = 0, ni = 0;
  int32_t *params = calloc((size_t)g->nnodes, sizeof *params), *inputs = calloc((size_t)g->nnodes, sizeof *inputs);
  for (int i = 0; i < g->nnodes; i++) {
    if (g->nodes[i].op == KILN_OP_PARAM) params[np++] = i;
    if (g->nodes[i].op == KILN_OP_INPUT) inputs[ni++] = i;
  }
  LLVMValueRef fields[] = {
      i32c(c, KILN_ABI_VERSION), i32c(c, 0), cstring(c, g->name, "model_name"),
      cstring(c, o->kiln_version, "kiln_version"), cstring(c, "cpu", "target"),
      kiln_cg_i64(c, (int64_t)o->seed), kiln_cg_i64(c, batch_of(g, inputs, ni)),
      kiln_cg_i64(c, p->weights_bytes), kiln_cg_i64(c, p->arena_bytes),
      kiln_cg_i64(c, p->arena_naive_bytes), kiln_cg_i64(c, kiln_graph_flops(g)),
      i32c(c, np), i32c(c, ni), i32c(c, g->noutputs), i32c(c, nk),
      tensor_array(c, &t, g, p, params, np, "params"), tensor_array(c, &t, g, p, inputs, ni, "inputs"),
      tensor_array(c, &t, g, p, g->outputs, g->noutputs, "outputs"), fwd};
  char name[256];
  snprintf(name, sizeof name, "kiln_model_%s", g->name);
  LLVMValueRef desc = LLVMAddGlobal(c->mod, t.desc, name);
  LLVMSetInitializer(desc, LLVMConstNamedStruct(t.desc, fields, 19));
  LLVMSetGlobalConstant(desc, 1);
  if (o->library) library_api(c, g, p, inputs, ni, desc);
  else LLVMAddAlias2(c->mod, t.desc, 0, desc, "kiln_main_model");
  free(params);
  free(inputs);
}

void kiln_cpu_module_free(KilnCg *c) {
  LLVMDisposeBuilder(c->b);
  LLVMDisposeModule(c->mod);
  LLVMContextDispose(c->ctx);
}
