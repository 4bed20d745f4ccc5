// The model's LLVM module: every kernel, the forward step that runs them through
// the runtime's thread pool, the KilnModelDesc constant (include/kiln/abi.h) that
// tells the runtime everything else, and, for libraries, the prefixed C API.
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "compiler/cpu/cpu.h"
#include "include/kiln/abi.h"

typedef struct {
  LLVMTypeRef tensor, desc, train, kinfo, grad, kernel_fn, step_fn, parfor_fn, hook_fn, done_fn;
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
                        c->i64, c->i64, c->i32, c->i32, c->i32, c->i32, c->ptr, c->ptr, c->ptr, c->ptr,
                        c->ptr, c->ptr, c->i64, c->i64, c->i32, c->i32, c->ptr, c->ptr,
                        c->ptr, c->ptr, c->i64, c->i32, c->i32, c->ptr, c->i32, c->i32, c->ptr,
                        c->ptr};
  t->desc = LLVMStructCreateNamed(c->ctx, "KilnModelDesc");
  LLVMStructSetBody(t->desc, desc, 37, 0);
  LLVMTypeRef kinfo[] = {c->ptr, c->ptr, c->ptr, c->i64, c->i64};
  t->kinfo = LLVMStructCreateNamed(c->ctx, "KilnKernelInfo");
  LLVMStructSetBody(t->kinfo, kinfo, 5, 0);
  LLVMTypeRef grad[] = {c->i32, c->i32, c->i64, c->i64};
  t->grad = LLVMStructCreateNamed(c->ctx, "KilnGradDesc");
  LLVMStructSetBody(t->grad, grad, 4, 0);
  LLVMTypeRef train[] = {c->i32, c->i32, f64,    f64,    f64,    f64,    f64,    f64,
                         c->i32, c->i32, c->i64, f64,    c->i64, f64,    c->i64, c->i64,
                         f64,    f64,    c->ptr, c->ptr, c->i32, c->i32, c->i32, c->i32};
  t->train = LLVMStructCreateNamed(c->ctx, "KilnTrainDesc");
  LLVMStructSetBody(t->train, train, 24, 0);
  LLVMTypeRef kp[] = {c->ptr, c->ptr, c->i64, c->i64};
  t->kernel_fn = LLVMFunctionType(c->v, kp, 4, 0);
  LLVMTypeRef sp[] = {c->ptr, c->ptr, c->ptr};
  t->step_fn = LLVMFunctionType(c->v, sp, 3, 0);
  LLVMTypeRef pp[] = {c->ptr, c->ptr, c->ptr, c->ptr, c->i64, c->i64, c->i32};
  t->parfor_fn = LLVMFunctionType(c->v, pp, 7, 0);
  LLVMTypeRef hp[] = {c->ptr, c->i32};
  t->hook_fn = LLVMFunctionType(c->v, hp, 2, 0);
  t->done_fn = LLVMFunctionType(c->v, hp, 1, 0);
}

// The runtime function name of type ty, declared once per module.
static LLVMValueRef runtime_fn(KilnCg *c, const char *name, LLVMTypeRef ty) {
  LLVMValueRef fn = LLVMGetNamedFunction(c->mod, name);
  return fn ? fn : LLVMAddFunction(c->mod, name, ty);
}


static LLVMValueRef cstring(KilnCg *c, const char *s, const char *name) {
  LLVMValueRef str = LLVMConstStringInContext(c->ctx, s, (unsigned)strlen(s), 0);
  LLVMValueRef g = kiln_cg_private_const(c, str, name);
  LLVMSetUnnamedAddress(g, LLVMGlobalUnnamedAddr);
  return g;
}


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

// One KilnTensorDesc: the node's name, type and initializer, stored at offset.
static LLVMValueRef tensor_desc_of(KilnCg *c, const Types *t, const KilnNode *n, int64_t offset,
                                   int32_t flags, int64_t bound) {
  LLVMTypeRef f64 = LLVMDoubleTypeInContext(c->ctx);
  LLVMValueRef shape[KILN_ABI_MAX_RANK];
  for (int d = 0; d < KILN_ABI_MAX_RANK; d++) shape[d] = kiln_cg_i64(c, d < n->rank ? n->shape[d] : 0);
  bool param = n->op == KILN_OP_PARAM;
  LLVMValueRef f[] = {
      cstring(c, n->name, "name"), kiln_cg_i32(c, n->dtype == KILN_F32 ? KILN_ABI_F32 : KILN_ABI_I32),
      kiln_cg_i32(c, n->rank), LLVMConstArray(c->i64, shape, KILN_ABI_MAX_RANK), kiln_cg_i64(c, offset),
      kiln_cg_i64(c, kiln_node_numel(n) * 4), kiln_cg_i32(c, param ? (int)n->attr.init.kind : 0),
      kiln_cg_i32(c, flags), LLVMConstReal(f64, param ? n->attr.init.a : 0),
      LLVMConstReal(f64, param ? n->attr.init.b : 0), kiln_cg_i64(c, bound)};
  return LLVMConstNamedStruct(t->tensor, f, 11);
}

static LLVMValueRef tensor_desc(KilnCg *c, const Types *t, const KilnGraph *g, const KilnPlan *p,
                                int32_t id) {
  const KilnNode *n = &g->nodes[id];
  return tensor_desc_of(c, t, n, p->offset[id], p->live_fwd[id] ? KILN_ABI_LIVE : 0,
                        n->dtype == KILN_I32 ? index_bound(g, id) : 0);
}

static LLVMValueRef tensor_array(KilnCg *c, const Types *t, const KilnGraph *g, const KilnPlan *p,
                                 const int32_t *ids, int n, const char *name) {
  LLVMValueRef *v = calloc((size_t)(n ? n : 1), sizeof *v);
  for (int i = 0; i < n; i++) v[i] = tensor_desc(c, t, g, p, ids[i]);
  LLVMValueRef arr = LLVMConstArray(t->tensor, v, (unsigned)n);
  free(v);
  return kiln_cg_private_const(c, arr, name);
}

// Where the train step reports gradients final (kiln_rt_grad_ready): the grads
// the update reads, in its order, each with the node after whose kernels no
// kernel writes or reads its buffer again.

// The node whose kernel computes i, and the value whose bytes i's are.
static int32_t kernel_of(const KilnGraph *g, int32_t i) {
  return g->fused_into && g->fused_into[i] >= 0 ? g->fused_into[i] : i;
}
static int32_t bytes_of(const KilnPlan *p, int32_t i) {
  return p->alias && p->alias[i] >= 0 ? p->alias[i] : i;
}

void kiln_cpu_find_grads(const KilnGraph *g, const KilnPlan *p, KilnGrads *out) {
  int n = g->nnodes;
  int32_t *last = malloc((size_t)n * sizeof *last);
  for (int i = 0; i < n; i++) last[i] = -1;
  // The last kernel to touch each buffer: its writer, then every reader.
  for (int j = 0; j < n; j++) {
    if (!p->live[j]) continue;
    int32_t b = bytes_of(p, j), k = kernel_of(g, j);
    if (last[b] < k) last[b] = k;
    for (int x = 0; x < g->nodes[j].nin; x++) {
      b = bytes_of(p, g->nodes[j].in[x]);
      if (last[b] < k) last[b] = k;
    }
  }
  out->n = 0;
  out->param = calloc((size_t)n + 1, sizeof *out->param);
  out->node = calloc((size_t)n + 1, sizeof *out->node);
  out->ready = calloc((size_t)n + 1, sizeof *out->ready);
  // As the update kernel (update_group) walks them: only parameters have gradients.
  for (int i = 0, np = 0; i < g->nforward; i++) {
    KILN_ASSERT(g->grads[i] < 0 || g->nodes[i].op == KILN_OP_PARAM);
    if (g->nodes[i].op != KILN_OP_PARAM) continue;
    if (g->grads[i] >= 0) {
      out->param[out->n] = np;
      out->node[out->n] = g->grads[i];
      out->ready[out->n++] = last[bytes_of(p, g->grads[i])];
    }
    np++;
  }
  free(last);
}

void kiln_cpu_grads_free(KilnGrads *gr) {
  free(gr->param);
  free(gr->node);
  free(gr->ready);
}

// A step function: constants into the arena, then the kernels of the nodes in
// `live`, in order, each through the runtime's parallel-for. Kernels are built
// once (kern[]) and shared by the steps that need them; kern[ph * nnodes + i] is
// node i's phase ph (kiln_cpu_kernel_phases), run after its phase ph - 1. With
// gr (the train step), each gradient is reported after its ready node.
static LLVMValueRef build_step(KilnCg *c, const Types *t, const KilnGraph *g, const KilnPlan *p,
                               const char *name, const bool *live, LLVMValueRef *kern,
                               const int64_t *iters, const int64_t *cost, const int32_t *index,
                               int32_t training, const KilnGrads *gr) {
  LLVMValueRef fn = LLVMAddFunction(c->mod, name, t->step_fn);
  LLVMSetLinkage(fn, LLVMInternalLinkage);
  c->fn = fn;
  LLVMPositionBuilderAtEnd(c->b, LLVMAppendBasicBlockInContext(c->ctx, fn, "entry"));
  LLVMValueRef w = LLVMGetParam(fn, 0), a = LLVMGetParam(fn, 1), rt = LLVMGetParam(fn, 2);
  LLVMValueRef parfor = runtime_fn(c, "kiln_rt_parallel_for", t->parfor_fn);
  LLVMBuildStore(c->b, LLVMConstInt(c->i32, (unsigned long long)training, 0),
                 kiln_cg_gep(c, c->i8, a, kiln_cg_i64(c, offsetof(KilnStepHeader, training))));
  for (int i = 0; i < g->nnodes; i++) {
    const KilnNode *n = &g->nodes[i];
    if (!live[i]) continue;
    if (n->op == KILN_OP_CONST) {
      LLVMValueRef at = kiln_cg_gep(c, c->i8, a, kiln_cg_i64(c, p->offset[i]));
      LLVMBuildStore(c->b, kiln_cg_f32(c, n->attr.value), at);
    }
    for (int j = i; j < KILN_CPU_MAX_PHASES * g->nnodes && kern[j]; j += g->nnodes) {
      LLVMValueRef args[] = {rt, kern[j], w, a, kiln_cg_i64(c, iters[j]), kiln_cg_i64(c, cost[j]),
                             kiln_cg_i32(c, index[j])};
      LLVMBuildCall2(c->b, t->parfor_fn, parfor, args, 7, "");
    }
    for (int k = 0; gr && k < gr->n; k++)
      if (gr->ready[k] == i) {
        LLVMValueRef args[] = {rt, kiln_cg_i32(c, k)};
        LLVMBuildCall2(c->b, t->hook_fn, runtime_fn(c, "kiln_rt_grad_ready", t->hook_fn), args, 2, "");
      }
  }
  return fn;
}

static void parfor(KilnCg *c, const Types *t, LLVMValueRef fn, LLVMValueRef kernel, int64_t n,
                   int64_t cost, int32_t index) {
  LLVMValueRef args[] = {LLVMGetParam(fn, 2), kernel, LLVMGetParam(fn, 0), LLVMGetParam(fn, 1),
                         kiln_cg_i64(c, n), kiln_cg_i64(c, cost), kiln_cg_i32(c, index)};
  LLVMBuildCall2(c->b, t->parfor_fn, LLVMGetNamedFunction(c->mod, "kiln_rt_parallel_for"), args, 7, "");
}

// header.loss = the loss node's value.
static void store_loss(KilnCg *c, const KilnPlan *p, int32_t loss, LLVMValueRef fn) {
  LLVMValueRef a = LLVMGetParam(fn, 1);
  LLVMValueRef v = kiln_cg_load(c, c->f32, kiln_cg_gep(c, c->i8, a, kiln_cg_i64(c, p->offset[loss])),
                                kiln_cg_i64(c, 0));
  LLVMBuildStore(c->b, v, kiln_cg_gep(c, c->i8, a, kiln_cg_i64(c, offsetof(KilnStepHeader, loss))));
}

// Computed inside another node's kernel (passes/fuse.c): no kernel of its own.
static bool fused(const KilnGraph *g, int32_t i) { return g->fused_into && g->fused_into[i] >= 0; }


// The optimizer update of every parameter as one kernel: its iterations are the
// parameters' elements end to end, so the runtime splits them evenly over its
// threads in one dispatch. Chunk [lo, hi) runs each parameter's update on the
// part of its elements the chunk covers.
static LLVMValueRef update_group(KilnCg *c, const Types *t, const KilnGraph *g, LLVMValueRef *upd,
                                 int64_t *out_total) {
  LLVMValueRef fn = LLVMAddFunction(c->mod, "kiln_update", t->kernel_fn);
  LLVMSetLinkage(fn, LLVMInternalLinkage);
  c->fn = fn;
  LLVMPositionBuilderAtEnd(c->b, LLVMAppendBasicBlockInContext(c->ctx, fn, "entry"));
  LLVMValueRef lo = LLVMGetParam(fn, 2), hi = LLVMGetParam(fn, 3);
  int64_t start = 0;
  for (int i = 0; i < g->nforward; i++) {
    if (!upd[i]) continue;
    int64_t ne = kiln_node_numel(&g->nodes[i]);
    // local range: [max(lo - start, 0), min(hi - start, ne))
    LLVMValueRef l = LLVMBuildSub(c->b, lo, kiln_cg_i64(c, start), "");
    LLVMValueRef h = LLVMBuildSub(c->b, hi, kiln_cg_i64(c, start), "");
    l = LLVMBuildSelect(c->b, LLVMBuildICmp(c->b, LLVMIntSLT, l, kiln_cg_i64(c, 0), ""), kiln_cg_i64(c, 0), l, "");
    h = LLVMBuildSelect(c->b, LLVMBuildICmp(c->b, LLVMIntSGT, h, kiln_cg_i64(c, ne), ""), kiln_cg_i64(c, ne), h, "");
    LLVMBasicBlockRef run = LLVMAppendBasicBlockInContext(c->ctx, fn, "run");
    LLVMBasicBlockRef next = LLVMAppendBasicBlockInContext(c->ctx, fn, "next");
    LLVMBuildCondBr(c->b, LLVMBuildICmp(c->b, LLVMIntSLT, l, h, ""), run, next);
    LLVMPositionBuilderAtEnd(c->b, run);
    LLVMValueRef args[] = {LLVMGetParam(fn, 0), LLVMGetParam(fn, 1), l, h};
    LLVMBuildCall2(c->b, t->kernel_fn, upd[i], args, 4, "");
    LLVMBuildBr(c->b, next);
    LLVMPositionBuilderAtEnd(c->b, next);
    start += ne;
  }
  LLVMBuildRetVoid(c->b);
  *out_total = start;
  return fn;
}

// The profiler's entries for the training kernels: the gradient norm (a square and
// an add per gradient element) and the optimizer update of every parameter.
void kiln_cpu_train_costs(const KilnPlan *p, const KilnTrainDesc *train, int64_t params,
                          KilnSteps *out) {
  static const char *const opt[] = {"sgd", "adam", "adamw"};
  int64_t per, tensors;
  kiln_cpu_update_work(train, p->nstate, &per, &tensors);
  out->info[out->ninfo++] = (KilnKernelCost){"grad_norm", "norm", "", 2 * params, 4 * params};
  out->info[out->ninfo++] = (KilnKernelCost){
      "optimizer", opt[train->optimizer], "", per * params, 4 * tensors * params};
}

static void build_steps(KilnCg *c, const Types *t, const KilnGraph *g, const KilnPlan *p,
                        const KilnTrainDesc *train, KilnSteps *out) {
  int n = g->nnodes;
  size_t nk = (size_t)n * KILN_CPU_MAX_PHASES;
  LLVMValueRef *kern = calloc(nk, sizeof *kern);
  int64_t *iters = calloc(nk, sizeof *iters), *cost = calloc(nk, sizeof *cost);
  int32_t *index = calloc(nk, sizeof *index);
  out->nkernels = out->ninfo = 0;
  out->program = NULL;
  out->info = calloc((size_t)n + 2, sizeof *out->info);
  for (int i = 0; i < n; i++)
    if (p->live[i] && kiln_op(g->nodes[i].op)->fuse != KILN_FUSE_SOURCE && !fused(g, i) &&
        !(p->alias && p->alias[i] >= 0)) {
      kiln_kernel_cost(g, i, &out->info[out->ninfo]);
      // A node's phases share its row of the profiler's table.
      for (int ph = 0, j = i; ph < kiln_cpu_kernel_phases(&g->nodes[i]); ph++, j += n) {
        kern[j] = kiln_cpu_kernel_phase(c, g, p, i, ph, &iters[j], &cost[j]), out->nkernels++;
        index[j] = out->ninfo;
      }
      out->ninfo++;
    }
  out->forward = build_step(c, t, g, p, "kiln_forward", p->live_fwd, kern, iters, cost, index, 0, NULL);
  LLVMBuildRetVoid(c->b);
  out->eval = out->train = NULL;
  out->grads = (KilnGrads){0};
  if (g->loss >= 0) {
    out->eval = build_step(c, t, g, p, "kiln_eval", p->live_eval, kern, iters, cost, index, 0, NULL);
    store_loss(c, p, g->loss, out->eval);
    LLVMBuildRetVoid(c->b);
  }
  if (g->grads && train) {
    bool clip = train->clip_grad_norm > 0;
    LLVMValueRef norm = clip ? kiln_cpu_norm_kernel(c, g, p, train->clip_grad_norm) : NULL;
    LLVMValueRef *upd = calloc((size_t)n, sizeof *upd);
    for (int i = 0; i < g->nforward; i++)
      if (g->grads[i] >= 0) upd[i] = kiln_cpu_update_kernel(c, g, p, i, train), out->nkernels++;
    int64_t total = 0;
    LLVMValueRef all = update_group(c, t, g, upd, &total);
    kiln_cpu_find_grads(g, p, &out->grads);
    out->train = build_step(c, t, g, p, "kiln_train", p->live, kern, iters, cost, index, 1,
                            &out->grads);
    store_loss(c, p, g->loss, out->train);
    kiln_cpu_train_costs(p, train, total, out);
    LLVMValueRef rt = LLVMGetParam(out->train, 2);
    LLVMBuildCall2(c->b, t->done_fn, runtime_fn(c, "kiln_rt_grads_done", t->done_fn), &rt, 1, "");
    // Without clip_grad_norm nothing reads the norm (the runtime sets grad_scale
    // to 1 before each step, and the log's grad_norm column is empty): a serial
    // pass over every gradient, 2.5% of the MLP 784's step, is skipped.
    if (clip) parfor(c, t, out->train, norm, 1, 1, out->ninfo - 2);
    LLVMValueRef args[] = {rt, all, LLVMGetParam(out->train, 0), LLVMGetParam(out->train, 1),
                           kiln_cg_i64(c, total), kiln_cg_i64(c, 10 * total), kiln_cg_i32(c, out->ninfo - 1)};
    LLVMBuildCall2(c->b, t->parfor_fn, runtime_fn(c, "kiln_rt_update", t->parfor_fn), args, 7, "");
    LLVMBuildRetVoid(c->b);
    free(upd);
  }
  free(kern);
  free(iters);
  free(cost);
  free(index);
}

// FLOPs of one forward call: the nodes the outputs need, not the training graph.
static int64_t forward_flops(const KilnGraph *g, const KilnPlan *p) {
  int64_t total = 0;
  for (int i = 0; i < g->nnodes; i++)
    if (p->live_fwd[i]) total += kiln_op(g->nodes[i].op)->flops(g, &g->nodes[i]);
  return total;
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

// NAME_train_step(ctx, in0, ..., float *loss): every input (labels too), then
// kiln_lib_train_step(ctx, ins, loss).
static void train_wrapper(KilnCg *c, const char *model, int nin) {
  int n = 2 + nin;
  LLVMTypeRef *params = calloc((size_t)n, sizeof *params);
  for (int i = 0; i < n; i++) params[i] = c->ptr;
  char name[256];
  snprintf(name, sizeof name, "%s_train_step", model);
  LLVMValueRef fn = LLVMAddFunction(c->mod, name, LLVMFunctionType(c->i32, params, (unsigned)n, 0));
  c->fn = fn;
  LLVMPositionBuilderAtEnd(c->b, LLVMAppendBasicBlockInContext(c->ctx, fn, "entry"));
  LLVMValueRef ins = kiln_cg_alloca(c, LLVMArrayType(c->ptr, (unsigned)(nin ? nin : 1)), "ins");
  for (int i = 0; i < nin; i++)
    LLVMBuildStore(c->b, LLVMGetParam(fn, (unsigned)(1 + i)), kiln_cg_gep(c, c->ptr, ins, kiln_cg_i64(c, i)));
  LLVMTypeRef tp[] = {c->ptr, c->ptr, c->ptr};
  LLVMTypeRef tt = LLVMFunctionType(c->i32, tp, 3, 0);
  LLVMValueRef callee = LLVMAddFunction(c->mod, "kiln_lib_train_step", tt);
  LLVMValueRef args[] = {LLVMGetParam(fn, 0), ins, LLVMGetParam(fn, (unsigned)(1 + nin))};
  LLVMBuildRet(c->b, LLVMBuildCall2(c->b, tt, callee, args, 3, ""));
  free(params);
}

static void library_api(KilnCg *c, const KilnGraph *g, const KilnPlan *p, const int32_t *inputs,
                        int ninputs, LLVMValueRef desc, bool has_train, bool generate) {
  const char *m = g->name;
  LLVMTypeRef ptr1[] = {c->ptr}, ptr2[] = {c->ptr, c->ptr}, i32v[] = {c->i32};
  wrapper(c, m, "create", "kiln_lib_create", c->ptr, i32v, 1, desc);
  wrapper(c, m, "destroy", "kiln_lib_destroy", c->v, ptr1, 1, desc);
  wrapper(c, m, "load_weights", "kiln_lib_load", c->i32, ptr2, 2, desc);
  wrapper(c, m, "save_weights", "kiln_lib_save", c->i32, ptr2, 2, desc);
  wrapper(c, m, "last_error", "kiln_lib_last_error", c->ptr, ptr1, 1, desc);
  LLVMTypeRef ptr3[] = {c->ptr, c->ptr, c->ptr};
  wrapper(c, m, "profile_begin", "kiln_lib_profile_begin", c->i32, ptr3, 3, desc);
  wrapper(c, m, "profile_end", "kiln_lib_profile_end", c->i32, ptr1, 1, desc);
  int live = 0;
  for (int i = 0; i < ninputs; i++) live += p->live_fwd[inputs[i]];
  forward_wrapper(c, m, live, g->noutputs);
  if (generate) {  // (ctx, prompt, sampling, out, out_size)
    LLVMTypeRef gp[] = {c->ptr, c->ptr, c->ptr, c->ptr, c->i64};
    wrapper(c, m, "generate", "kiln_lib_generate", c->i32, gp, 5, desc);
  }
  if (!has_train) return;
  wrapper(c, m, "save_state", "kiln_lib_save_state", c->i32, ptr2, 2, desc);
  wrapper(c, m, "load_state", "kiln_lib_load_state", c->i32, ptr2, 2, desc);
  train_wrapper(c, m, ninputs);
}

// Optimizer state tensors: "adam.m.NAME" and "adam.v.NAME" (adam, adamw) or
// "sgd.v.NAME" (momentum), each shaped like its parameter, zero at the start.
static LLVMValueRef opt_array(KilnCg *c, const Types *t, const KilnGraph *g, const KilnPlan *p,
                              const KilnTrainDesc *train, int *out_n) {
  static const char *const names[3][2] = {{"sgd.v", NULL}, {"adam.m", "adam.v"}, {"adam.m", "adam.v"}};
  int cap = g->nnodes * 2 + 1, n = 0;
  LLVMValueRef *v = calloc((size_t)cap, sizeof *v);
  for (int i = 0; i < g->nnodes && train && p->nstate; i++) {
    const KilnNode *pn = &g->nodes[i];
    if (pn->op != KILN_OP_PARAM) continue;
    int64_t bytes = (kiln_node_numel(pn) * 4 + 63) & ~(int64_t)63;
    for (int k = 0; k < p->nstate; k++) {
      KilnNode s = *pn;
      s.name = kiln_arena_printf(g->arena, "%s.%s", names[train->optimizer][k], pn->name);
      s.attr.init = (KilnInit){KILN_INIT_ZEROS, 0, 0};
      v[n++] = tensor_desc_of(c, t, &s, p->state[i] + k * bytes, 0, 0);
    }
  }
  LLVMValueRef arr = LLVMConstArray(t->tensor, v, (unsigned)n);
  free(v);
  *out_n = n;
  return kiln_cg_private_const(c, arr, "opt");
}

// The descriptor's grads table (KilnGradDesc), in the update's order.
static LLVMValueRef grads_array(KilnCg *c, const Types *t, const KilnGraph *g, const KilnPlan *p,
                                const KilnGrads *gr) {
  LLVMValueRef *v = calloc((size_t)gr->n + 1, sizeof *v);
  for (int k = 0; k < gr->n; k++) {
    int32_t x = gr->node[k];
    LLVMValueRef f[] = {kiln_cg_i32(c, gr->param[k]), kiln_cg_i32(c, 0), kiln_cg_i64(c, p->offset[x]),
                        kiln_cg_i64(c, kiln_node_numel(&g->nodes[x]))};
    v[k] = LLVMConstNamedStruct(t->grad, f, 4);
  }
  LLVMValueRef arr = LLVMConstArray(t->grad, v, (unsigned)gr->n);
  free(v);
  return kiln_cg_private_const(c, arr, "grads");
}

static LLVMValueRef cstring_or_null(KilnCg *c, const char *s, const char *name) {
  return s ? cstring(c, s, name) : LLVMConstNull(c->ptr);
}

static LLVMValueRef train_desc(KilnCg *c, const Types *t, const KilnTrainDesc *d) {
  LLVMTypeRef f64 = LLVMDoubleTypeInContext(c->ctx);
#define F(x) LLVMConstReal(f64, x)
  LLVMValueRef f[] = {
      kiln_cg_i32(c, d->optimizer), kiln_cg_i32(c, d->schedule), F(d->lr), F(d->momentum), F(d->weight_decay),
      F(d->beta1), F(d->beta2), F(d->eps), kiln_cg_i32(c, d->nesterov), kiln_cg_i32(c, d->shuffle),
      kiln_cg_i64(c, d->step_every), F(d->gamma), kiln_cg_i64(c, d->warmup), F(d->min_lr),
      kiln_cg_i64(c, d->epochs), kiln_cg_i64(c, d->steps), F(d->clip_grad_norm), F(d->val_split),
      cstring_or_null(c, d->data_train, "data_train"), cstring_or_null(c, d->data_eval, "data_eval"),
      kiln_cg_i32(c, d->loss_kind), kiln_cg_i32(c, d->loss_pred_output), kiln_cg_i32(c, d->loss_target_input), kiln_cg_i32(c, 0)};
#undef F
  return kiln_cg_private_const(c, LLVMConstNamedStruct(t->train, f, 24), "train");
}

// The descriptor's kernel table (KilnKernelInfo), in launch-index order.
static LLVMValueRef kernel_info_array(KilnCg *c, const Types *t, const KilnKernelCost *k, int n) {
  LLVMValueRef *v = calloc((size_t)(n ? n : 1), sizeof *v);
  for (int i = 0; i < n; i++) {
    LLVMValueRef f[] = {cstring(c, k[i].name, "kernel_name"), cstring(c, k[i].ops, "kernel_ops"),
                        cstring(c, k[i].loc, "kernel_loc"), kiln_cg_i64(c, k[i].flops),
                        kiln_cg_i64(c, k[i].bytes)};
    v[i] = LLVMConstNamedStruct(t->kinfo, f, 5);
  }
  LLVMValueRef arr = LLVMConstArray(t->kinfo, v, (unsigned)n);
  free(v);
  return kiln_cg_private_const(c, arr, "kernel_info");
}

// One model's descriptor: its kernels, step functions and tables, as the constant
// `sym`. Sub-models (decode, window) share the module and its kernel bodies.
static LLVMValueRef model_desc(KilnCg *c, const Types *t, const KilnGraph *g, const KilnPlan *p,
                               const KilnModuleOpts *o, const KilnTrainDesc *train,
                               const char *sym, LLVMValueRef decode, LLVMValueRef window,
                               int64_t context, bool *has_train) {
  KilnSteps st;
  if (o->steps) o->steps(c, g, p, train, o->steps_ctx, &st);
  else build_steps(c, t, g, p, train, &st);
  int np = 0, ni = 0, nopt = 0, nopt_check = 0;
  int32_t *params = calloc((size_t)g->nnodes, sizeof *params), *inputs = calloc((size_t)g->nnodes, sizeof *inputs);
  for (int i = 0; i < g->nnodes; i++) {
    if (g->nodes[i].op == KILN_OP_PARAM) params[np++] = i, nopt += st.train ? p->nstate : 0;
    if (g->nodes[i].op == KILN_OP_INPUT) inputs[ni++] = i;
  }
  LLVMValueRef fields[] = {
      kiln_cg_i32(c, KILN_ABI_VERSION), kiln_cg_i32(c, 0), cstring(c, g->name, "model_name"),
      cstring(c, o->kiln_version, "kiln_version"), cstring(c, o->target ? o->target : "cpu", "target"),
      kiln_cg_i64(c, (int64_t)o->seed), kiln_cg_i64(c, batch_of(g, inputs, ni)),
      kiln_cg_i64(c, p->weights_bytes), kiln_cg_i64(c, p->arena_bytes),
      kiln_cg_i64(c, p->arena_naive_bytes), kiln_cg_i64(c, forward_flops(g, p)),
      kiln_cg_i32(c, np), kiln_cg_i32(c, ni), kiln_cg_i32(c, g->noutputs), kiln_cg_i32(c, st.nkernels),
      tensor_array(c, t, g, p, params, np, "params"), tensor_array(c, t, g, p, inputs, ni, "inputs"),
      tensor_array(c, t, g, p, g->outputs, g->noutputs, "outputs"), st.forward,
      st.train ? st.train : LLVMConstNull(c->ptr), st.eval ? st.eval : LLVMConstNull(c->ptr),
      kiln_cg_i64(c, g->loss >= 0 ? p->offset[g->loss] : 0), kiln_cg_i64(c, p->opt_bytes),
      kiln_cg_i32(c, nopt), kiln_cg_i32(c, 0), opt_array(c, t, g, p, train, &nopt_check),
      train ? train_desc(c, t, train) : LLVMConstNull(c->ptr),
      decode ? decode : LLVMConstNull(c->ptr), window ? window : LLVMConstNull(c->ptr),
      kiln_cg_i64(c, context), kiln_cg_i32(c, st.ninfo), kiln_cg_i32(c, 0),
      kernel_info_array(c, t, st.info, st.ninfo), kiln_cg_i32(c, st.grads.n), kiln_cg_i32(c, 0),
      grads_array(c, t, g, p, &st.grads), st.program ? st.program : LLVMConstNull(c->ptr)};
  LLVMValueRef desc = LLVMAddGlobal(c->mod, t->desc, sym);
  KILN_ASSERT(nopt_check == nopt);
  LLVMSetInitializer(desc, LLVMConstNamedStruct(t->desc, fields, 37));
  LLVMSetGlobalConstant(desc, 1);
  *has_train = st.train != NULL;
  free(params);
  free(inputs);
  free(st.info);
  kiln_cpu_grads_free(&st.grads);
  return desc;
}

void kiln_cpu_module(KilnCg *c, const KilnGraph *g, const KilnPlan *p, const KilnModuleOpts *o) {
  kiln_cg_init(c, g->name, o->tm);
  Types t;
  make_types(c, &t);
  char name[256];
  bool has_train;
  LLVMValueRef decode = NULL, window = NULL;
  if (o->decode) {
    snprintf(name, sizeof name, "kiln_model_%s_decode", g->name);
    decode = model_desc(c, &t, o->decode, o->decode_plan, o, NULL, name, NULL, NULL, o->context,
                        &has_train);
    LLVMSetLinkage(decode, LLVMPrivateLinkage);
    snprintf(name, sizeof name, "kiln_model_%s_window", g->name);
    window = model_desc(c, &t, o->window, o->window_plan, o, NULL, name, NULL, NULL, 0, &has_train);
    LLVMSetLinkage(window, LLVMPrivateLinkage);
  }
  snprintf(name, sizeof name, "kiln_model_%s", g->name);
  LLVMValueRef desc = model_desc(c, &t, g, p, o, o->train, name, decode, window, 0, &has_train);
  if (o->library) {
    int ni = 0;
    int32_t *inputs = calloc((size_t)g->nnodes, sizeof *inputs);
    for (int i = 0; i < g->nnodes; i++)
      if (g->nodes[i].op == KILN_OP_INPUT) inputs[ni++] = i;
    library_api(c, g, p, inputs, ni, desc, has_train, decode != NULL);
    free(inputs);
  } else {
    LLVMAddAlias2(c->mod, t.desc, 0, desc, "kiln_main_model");
  }
}

void kiln_cpu_module_free(KilnCg *c) {
  kiln_cpu_shared_free(c);
  LLVMDisposeBuilder(c->b);
  LLVMDisposeModule(c->mod);
  LLVMContextDispose(c->ctx);
}
